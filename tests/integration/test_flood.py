#!/usr/bin/python3
"""A flood of 20,000 connection attempts leaves pgring serving. With max_client_conn 1000, a few
threads open TCP connections as fast as they can, each keeping a window of them open (more than
max_client_conn in total): most just connect and are closed later (FIN or RST), some send a
startup packet (and get logged in, or 53300 when over the limit), some an SSLRequest first, some
send garbage (an absurd packet length must be refused at once). Meanwhile a client connected
beforehand keeps querying. Afterwards: pgring is alive and serving, clients over the limit got
53300 (checked explicitly by filling the limit and reading the ErrorResponse of a few more), and
pgring's open files return to where they were.

PGRING_FLOOD_CONNECTIONS (default 20000) sets the number of attempts."""

import collections
import os
import random
import resource
import socket
import struct
import subprocess
import threading
import time

from lib import (Background, Pgring, check, check_eq, check_pool_healthy, check_running, connect,
                describe_fds, fail, fd_count, log, monitor_connect, parse_fields, percentile,
                pool_config, query_one, run_tests, skip_test, startup_packet, wait_fds_at_most,
                wait_no_backends)

DB, USER = "app", "app"
ATTEMPTS = int(os.environ.get("PGRING_FLOOD_CONNECTIONS", "20000"))
THREADS, WINDOW = 4, 300          # 4 x 300 held connections > max_client_conn
MAX_CLIENT_CONN = 1000
SSL_REQUEST = struct.pack("!II", 8, 80877103)


def raise_nofile(wanted):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def close_socket(s, rst):
    try:
        if rst:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass


def read_reply(s, timeout=10.0):
    """Read a startup reply: 'ok' once ReadyForQuery arrives, the SQLSTATE of an
    ErrorResponse, or 'closed'."""
    s.settimeout(timeout)
    buf = b""
    while True:
        while len(buf) >= 5:
            kind = buf[:1]
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            body, buf = buf[5:1 + length], buf[1 + length:]
            if kind == b"E":
                return parse_fields(body).get("C", "?")
            if kind == b"Z":
                return "ok"
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            return "timeout"
        except OSError:
            return "closed"
        if not chunk:
            return "closed"
        buf += chunk


def startup_and_classify(s):
    s.sendall(startup_packet(USER, DB))
    outcome = read_reply(s)
    if outcome == "ok":
        try:
            s.sendall(b"X\0\0\0\4")
        except OSError:
            pass
    return outcome


class Flooder:
    def __init__(self, port, seed):
        self.port = port
        self.seed = seed
        self.lock = threading.Lock()
        self.counts = collections.Counter()

    def count(self, what, n=1):
        with self.lock:
            self.counts[what] += n

    def run(self, t, attempts):
        rng = random.Random(self.seed * 100 + t)
        window = collections.deque()
        local = collections.Counter()
        for _ in range(attempts):
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(("127.0.0.1", self.port))
            except OSError as e:
                local[f"connect error {type(e).__name__}"] += 1
                s.close()
                continue
            local["connected"] += 1
            r = rng.random()
            try:
                if r < 0.55:                       # connect and hold (closed later)
                    window.append(s)
                    local["held"] += 1
                    if len(window) > WINDOW:
                        close_socket(window.popleft(), rst=rng.random() < 0.8)
                    continue
                if r < 0.65:                       # connect and reset at once
                    local["reset at once"] += 1
                elif r < 0.75:                     # startup packet, no waiting for the answer
                    s.sendall(startup_packet(USER, DB))
                    local["startup, closed"] += 1
                elif r < 0.85:                     # startup packet, read the answer
                    local[f"startup -> {startup_and_classify(s)}"] += 1
                elif r < 0.90:                     # SSLRequest, then startup
                    s.sendall(SSL_REQUEST)
                    answer = s.recv(1)
                    if answer != b"N":
                        local[f"SSLRequest answered {answer!r}"] += 1
                    else:
                        local[f"ssl+startup -> {startup_and_classify(s)}"] += 1
                elif r < 0.95:                     # garbage with an absurd packet length
                    junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60)))
                    s.sendall(b"\xff\xff\xff\xf0" + junk)
                    local[f"absurd length -> {read_reply(s)}"] += 1
                else:                              # random garbage (maybe an incomplete packet)
                    junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
                    s.sendall(junk)
                    if rng.random() < 0.3:
                        local[f"garbage -> {read_reply(s, timeout=1)}"] += 1
                    else:
                        local["garbage, closed"] += 1
            except OSError as e:
                local[f"io error {type(e).__name__}"] += 1
            close_socket(s, rst=rng.random() < 0.8)
        for s in window:
            close_socket(s, rst=rng.random() < 0.8)
        with self.lock:
            self.counts.update(local)


def test_connection_flood():
    limit = raise_nofile(20000)
    if limit < 2 * MAX_CLIENT_CONN + 500:
        fail(f"RLIMIT_NOFILE is {limit}: too low for this test")
    monitor = monitor_connect(db=DB)
    try:
        wait_no_backends(monitor, DB)
        config = pool_config(pool_size=2)
        config["max_client_conn"] = MAX_CLIENT_CONN
        with Pgring(config) as p:   # pgring inherits the raised RLIMIT_NOFILE
            pid = p.pid()
            normal = connect(p.port, db=DB, user=USER)
            check_eq(query_one(normal, "SELECT 1"), 1, "the normal client's first query")
            fd_base = fd_count(pid)
            stop = threading.Event()
            latencies, errors = [], []

            def normal_loop():
                n = 0
                while not stop.is_set():
                    n += 1
                    t0 = time.monotonic()
                    try:
                        got = query_one(normal, "SELECT %s::int", (n,))
                        if got != n:
                            errors.append(f"SELECT {n} returned {got}")
                    except Exception as e:  # noqa: BLE001 - reported below
                        errors.append(f"{type(e).__name__}: {str(e).strip()}")
                        return
                    latencies.append((time.monotonic() - t0) * 1000)
                    time.sleep(0.01)
            normal_bg = Background(normal_loop)

            seed = random.randrange(1 << 30)
            flooder = Flooder(p.port, seed)
            started = time.monotonic()
            per_thread = ATTEMPTS // THREADS
            threads = [Background(lambda t=t: flooder.run(t, per_thread)) for t in range(THREADS)]
            for i, t in enumerate(threads):
                t.result(240, f"flood thread {i}")
            flood_secs = time.monotonic() - started
            fd_peak_note = fd_count(pid)
            counts = dict(sorted(flooder.counts.items()))
            log(f"flood: {per_thread * THREADS} attempts in {flood_secs:.1f}s "
                f"({per_thread * THREADS / flood_secs:.0f}/s; seed {seed}); outcomes {counts}")
            check_running(p, " after the flood")

            # Over the limit, explicitly: hold max_client_conn connections (the normal client
            # is one more), then a few more clients must get 53300.
            held = []
            try:
                for _ in range(MAX_CLIENT_CONN):
                    held.append(socket.create_connection(("127.0.0.1", p.port), timeout=10))
                time.sleep(0.3)
                outcomes = []
                for _ in range(8):
                    s = socket.create_connection(("127.0.0.1", p.port), timeout=10)
                    try:
                        outcomes.append(startup_and_classify(s))
                    finally:
                        s.close()
                fd_full = fd_count(pid)
            finally:
                for s in held:
                    close_socket(s, rst=True)
            log(f"with {MAX_CLIENT_CONN} connections held: 8 more clients got {outcomes}; "
                f"pgring fds {fd_full}")
            check(all(o == "53300" for o in outcomes),
                  f"clients over max_client_conn got {outcomes}, expected 53300 each")

            stop.set()
            normal_bg.result(30, "the normal client")
            log(f"normal client: {len(latencies)} queries during the flood, latency p50 "
                f"{percentile(latencies, 0.5):.2f} ms, p99 {percentile(latencies, 0.99):.2f} ms, "
                f"max {max(latencies, default=float('nan')):.1f} ms")
            check(not errors, f"the normal client failed during the flood: {errors[:3]}")
            check(len(latencies) > 10, f"the normal client ran only {len(latencies)} queries")
            check(counts.get("connected", 0) >= 0.95 * per_thread * THREADS,
                  f"only {counts.get('connected', 0)} of {per_thread * THREADS} connects "
                  f"succeeded: {counts}")
            logged_in = sum(v for k, v in counts.items() if k.endswith("-> ok"))
            check(logged_in > 0, f"no flood client logged in: {counts}")
            # (Random garbage may be the start of a packet pgring rightly waits for.)
            check(not any(k.endswith("-> timeout") and not k.startswith("garbage")
                          for k in counts),
                  f"some flood clients got no answer within 10 s: {counts}")
            absurd = {k: v for k, v in counts.items() if k.startswith("absurd length")}
            check(absurd and all(k.endswith(("-> 54000", "-> 08P01", "-> closed"))
                                 for k in absurd),
                  f"answers to a startup packet with an absurd length: {absurd}")
            odd = {k: v for k, v in counts.items() if "startup ->" in k
                   and not k.endswith(("-> ok", "-> 53300"))}
            check(not odd, f"startup outcomes other than a login or 53300: {odd}")

            normal.close()
            check_running(p, " at the end")
            check_pool_healthy(p, monitor, DB, USER, pool_size=2)
            fds = wait_fds_at_most(pid, fd_base + 3, timeout=30)
            log(f"pgring fds: {fd_base} before the flood, {fd_peak_note} right after it, "
                f"{fd_full} with the limit filled, {fds} at the end ({describe_fds(pid)})")
    finally:
        monitor.close()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_out_of_descriptors_accept_rests():
    # With no descriptor left, accept fails (EMFILE) while connections wait in the backlog.
    # Re-arming the accept at once would fail again on every loop turn and keep a core busy;
    # pgring rests the listener until its next sweep, then accepts what waited once
    # descriptors are free again.
    # (The epoll engine: its accept4 runs on the reactor thread, so a limit lowered with prlimit
    # applies at once; io_uring accepts on kernel workers created with the old limit.)
    if subprocess.run(["prlimit", "--version"], capture_output=True).returncode != 0:
        skip_test("prlimit (util-linux) is missing")
    config = pool_config(pool_size=1)
    config["io"] = {"engine": "epoll"}
    with Pgring(config) as p:
        pid = p.pid()
        c = connect(p.port, db=DB, user=USER)
        check_eq(query_one(c, "SELECT 1"), 1)
        # (The limit is on descriptor numbers: a few above the highest in use.)
        limit = max(int(fd) for fd in os.listdir(f"/proc/{pid}/fd")) + 4
        soft = subprocess.run(["prlimit", f"--pid={pid}", "--nofile", "--output=SOFT",
                               "--noheadings"], check=True, capture_output=True,
                              text=True).stdout.strip()
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)
        waiting = [socket.create_connection(("127.0.0.1", p.port)) for _ in range(30)]
        p.wait_log(r"accept on .* failed: .*(Too many open files|EMFILE)")
        before = cpu_ticks(pid)
        time.sleep(2)
        spent = cpu_ticks(pid) - before
        log(f"CPU while out of descriptors: {spent} ticks in 2 s")
        check(spent < 60, f"pgring kept a core busy out of descriptors: {spent} ticks in 2 s")
        for s in waiting:
            s.close()
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:"], check=True)
        late = connect(p.port, db=DB, user=USER)
        check_eq(query_one(late, "SELECT 2"), 2, "a client after descriptors are free again")
        late.close()
        check_eq(query_one(c, "SELECT 3"), 3, "the client that was there all along")
        c.close()


if __name__ == "__main__":
    run_tests(globals())
