#!/usr/bin/python3
"""Flow control (docs/operations.md): a client SELECTs ~2 GB of generated rows and reads them at
about 1 MB/s; pgring must stop reading from that server instead of buffering the result, so its
RSS stays under 64 MiB, PostgreSQL's backend ends up waiting to write (ClientWrite), and another
client's queries go on as usual (their latency is printed, not asserted). When the slow client
goes away, its server is cancelled/drained or closed, and the pool is healthy again.

PGRING_FLOW_SECONDS (default 15) sets how long the slow client reads."""

import os
import threading
import time

from lib import (Background, Pgring, check, check_pool_healthy, check_running, connect, log, login,
                message, monitor_connect, percentile, pool_config, query, query_one, rss_kib,
                run_tests, wait_no_backends, wait_until)

DB, USER = "app", "app"
SECONDS = float(os.environ.get("PGRING_FLOW_SECONDS", "15"))
RSS_LIMIT_KIB = 64 * 1024
ROWS, WIDTH = 2_000_000, 1000   # ~2 GB of DataRows
MARKER = "pgring_flow_big"
CHUNK, TICK = 64 * 1024, 0.05   # 64 KiB per 50 ms: ~1.3 MB/s


class RssSampler:
    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(rss_kib(self.pid))
            except (OSError, AssertionError):
                return
            time.sleep(self.interval)

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        return max(self.samples) if self.samples else 0


def big_query_activity(monitor):
    """(state, wait_event) of the backend running the big SELECT, or None."""
    rows = query(monitor, "SELECT state, coalesce(wait_event, '') FROM pg_stat_activity "
                          "WHERE pid <> pg_backend_pid() AND query LIKE %s",
                 (f"%{MARKER}%",))
    return tuple(rows[0]) if rows else None


def test_slow_reader_of_huge_result():
    monitor = monitor_connect(db=DB)
    try:
        wait_no_backends(monitor, DB)
        with Pgring(pool_config(pool_size=2)) as p:
            pid = p.pid()
            # The other client, and its latency before the slow reader starts.
            fast = connect(p.port, db=DB, user=USER)
            baseline = []
            for _ in range(100):
                t0 = time.monotonic()
                query_one(fast, "SELECT 1")
                baseline.append((time.monotonic() - t0) * 1000)
            rss_start = rss_kib(pid)

            slow = login(p.port, user=USER, db=DB, timeout=30)
            slow.send(message(b"Q", f"SELECT repeat('x', {WIDTH}) AS {MARKER} FROM "
                                    f"generate_series(1, {ROWS})\0".encode()))
            sampler = RssSampler(pid)
            stop_fast = threading.Event()
            latencies, fast_errors = [], []

            def fast_loop():
                while not stop_fast.is_set():
                    t0 = time.monotonic()
                    try:
                        if query_one(fast, "SELECT 1") != 1:
                            fast_errors.append("SELECT 1 returned something else")
                    except Exception as e:  # noqa: BLE001 - reported below
                        fast_errors.append(f"{type(e).__name__}: {e}")
                        return
                    latencies.append((time.monotonic() - t0) * 1000)
                    time.sleep(0.01)
            fast_bg = Background(fast_loop)

            waits = {}

            def watch_server():
                while not stop_fast.is_set():
                    a = big_query_activity(watcher)
                    if a is not None:
                        waits[a] = waits.get(a, 0) + 1
                    time.sleep(0.2)
            watcher = monitor_connect(db=DB)
            watch_bg = Background(watch_server)

            # Read slowly: 64 KiB per 50 ms.
            received = 0
            started = time.monotonic()
            slow.sock.settimeout(10)
            while time.monotonic() - started < SECONDS:
                tick = time.monotonic()
                got = 0
                while got < CHUNK:
                    data = slow.sock.recv(CHUNK - got)
                    check(data, f"pgring closed the slow client after {received + got} bytes")
                    got += len(data)
                received += got
                time.sleep(max(0.0, TICK - (time.monotonic() - tick)))
            read_for = time.monotonic() - started
            stop_fast.set()
            fast_bg.result(30, "the fast client")
            watch_bg.result(30, "the pg_stat_activity watcher")
            watcher.close()
            rss_max = sampler.stop()
            check_running(p, " after the slow read")
            log(f"slow client read {received / 1e6:.1f} MB in {read_for:.1f}s "
                f"({received / 1e6 / read_for:.2f} MB/s) of a ~{ROWS * (WIDTH + 11) / 1e9:.1f} GB "
                f"result; pgring VmRSS {rss_start} KiB before, max {rss_max} KiB during "
                f"({len(sampler.samples)} samples; limit {RSS_LIMIT_KIB} KiB)")
            log(f"the big query's backend (state, wait_event) samples: {waits}")
            log(f"fast client: {len(latencies)} queries during the slow read, latency p50 "
                f"{percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms, "
                f"max {max(latencies, default=float('nan')):.2f} ms (before: p50 "
                f"{percentile(baseline, 0.5):.2f} ms, p99 {percentile(baseline, 0.99):.2f} ms)")
            check(rss_max < RSS_LIMIT_KIB, f"pgring's RSS reached {rss_max} KiB "
                                           f"(limit {RSS_LIMIT_KIB} KiB)")
            check(not fast_errors, f"the fast client failed: {fast_errors[:3]}")
            check(len(latencies) >= 10, f"the fast client ran only {len(latencies)} queries")
            check(received >= SECONDS * 0.5e6,
                  f"the slow client got only {received} bytes in {read_for:.0f}s")
            check(any(w == "ClientWrite" for (_, w) in waits),
                  f"PostgreSQL's backend was never seen waiting to write (ClientWrite): pgring "
                  f"does not seem to push back on the server; samples {waits}")

            # The slow client goes away: its server is cancelled/drained or closed.
            log_before = len(p.log().splitlines())
            slow.sock.close()
            gone = time.monotonic()
            after = {}

            def stopped():
                a = big_query_activity(monitor)
                if a is not None:
                    after[a] = after.get(a, 0) + 1
                return a is None or a[0] != "active"
            wait_until(stopped, 30, interval=0.1, what="the big query to stop on the server")
            stop_secs = time.monotonic() - gone
            check_running(p, " after the slow client left")
            pgring_log = p.log().splitlines()[log_before:][:12]
            log(f"the big query stopped {stop_secs:.2f}s after the slow client left (samples "
                f"meanwhile: {after}); pgring VmRSS now {rss_kib(pid)} KiB; pgring's log:")
            for line in pgring_log:
                log(f"  {line}")
            fast.close()
            # Whatever happened to that server, the pool is healthy now.
            check_pool_healthy(p, monitor, DB, USER, pool_size=2)
            stuck = after and all(w == "ClientWrite" for (_, w) in after)
            check(stop_secs < 5,
                  f"the abandoned 2 GB query ran on for {stop_secs:.1f}s after its client left "
                  f"(backend samples {after})"
                  + (": the backend stayed blocked writing (ClientWrite) all along, so pgring "
                     "stopped reading from that server after its client left, and PostgreSQL "
                     "never got to act on the cancel (it does only once its pending write "
                     "completes); pgring closed the server only when cancel_wait ran out"
                     if stuck else ""))
    finally:
        monitor.close()


if __name__ == "__main__":
    run_tests(globals())
