#!/usr/bin/python3
"""Faults around pgring: a server backend killed mid-transaction, PostgreSQL crashing
(pg_ctl stop -m immediate) and coming back under load, a server that accepts TCP and never
answers, a (fake) server that stalls in the middle of a message, clients that vanish mid-COPY or
while a long query runs, and (where the kernel has netem) a lossy, slow network between pgring
and PostgreSQL. Each test checks that the affected client gets an error rather than a hang,
that other clients are not affected, and that the pool is healthy afterwards: a fresh client's
query works and pgring's SHOW SERVERS matches pg_stat_activity, with nothing left active or
idle in transaction.

Pooled traffic goes to database app as user app; direct connections for setup and sampling use
monitor_connect(), which the backend counts skip."""

import ctypes
import os
import re
import socket
import struct
import subprocess
import threading
import time

import psycopg2

from lib import (Background, ConnectionClosed, FakeServer, PGHOST, PGPORT, PgError, Pgring, Relay,
                backends, check, check_eq, check_pool_healthy, connect, describe_fds,
                ensure_postgres_running, error_fields_in, fail, fd_count, have_pgdata, log, login,
                message, monitor_connect, parse_fields, percentile, pg_start, pg_stop_immediate,
                pool_config, query, query_one, read_messages_until, run_clients, run_tests,
                run_with_timeout, skip_test, wait_backend_gone, wait_fds_at_most, wait_no_backends,
                wait_until)

DB, USER = "app", "app"


def app_connect(p, **kwargs):
    kwargs.setdefault("connect_timeout", 30)
    return connect(p.port, db=DB, user=USER, **kwargs)


def app_login(p):
    return login(p.port, user=USER, db=DB, timeout=30)


def fresh_table(name, columns):
    setup = monitor_connect(db=DB, user=USER)
    query(setup, f"DROP TABLE IF EXISTS {name}")
    query(setup, f"CREATE TABLE {name} ({columns})")
    return setup


def abort_socket(sock, rst):
    """Close a client socket without a Terminate message: a FIN, or an RST (SO_LINGER 0)."""
    if rst:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class QueryLoop:
    """Another client running `SELECT n` in a loop on its own connection while a fault happens;
    it must not notice anything. .stop() returns (queries, errors, latencies in ms)."""

    def __init__(self, p, db=DB, user=USER):
        self.conn = connect(p.port, db=db, user=user, connect_timeout=30)
        self.done = threading.Event()
        self.count, self.errors, self.latencies = 0, [], []
        self.bg = Background(self._run)

    def _run(self):
        n = 0
        while not self.done.is_set():
            n += 1
            started = time.monotonic()
            try:
                got = query_one(self.conn, "SELECT %s::int", (n,))
                if got != n:
                    self.errors.append(f"SELECT {n} returned {got}")
            except Exception as e:  # noqa: BLE001 - reported by stop()
                self.errors.append(f"{type(e).__name__}: {str(e).strip()}")
                return
            self.latencies.append((time.monotonic() - started) * 1000)
            self.count += 1
            time.sleep(0.02)

    def stop(self, what="the other client"):
        self.done.set()
        self.bg.result(30, what)
        self.conn.close()
        log(f"{what}: {self.count} queries, {len(self.errors)} errors, latency p50 "
            f"{percentile(self.latencies, 0.5):.1f} ms, max "
            f"{max(self.latencies, default=float('nan')):.1f} ms")
        check(not self.errors, f"{what} was affected: {self.errors[:5]}")
        check(self.count > 0, f"{what} ran no query")
        return self.count


# ---------------------------------------------------------------------------------------------

def test_backend_killed_mid_transaction():
    monitor = monitor_connect(db=DB)
    wait_no_backends(monitor, DB)
    try:
        with Pgring(pool_config(pool_size=2)) as p:
            victim = app_connect(p)
            victim.autocommit = False
            pid = query_one(victim, "SELECT pg_backend_pid()")
            others = [QueryLoop(p) for _ in range(2)]
            time.sleep(0.5)
            check(query_one(monitor, "SELECT pg_terminate_backend(%s)", (pid,)),
                  f"pg_terminate_backend({pid}) returned false")
            wait_backend_gone(monitor, pid)

            started = time.monotonic()
            try:
                got = run_with_timeout(lambda: query_one(victim, "SELECT 1"), 20,
                                       "the next query of the client whose backend was killed")
                fail(f"the query after its backend was killed succeeded ({got})")
            except psycopg2.Error as e:
                log(f"victim got {type(e).__name__} (SQLSTATE {e.pgcode}): {str(e).strip()} "
                    f"after {time.monotonic() - started:.2f}s")
            victim.close()
            time.sleep(0.5)
            for i, o in enumerate(others):
                o.stop(f"other client {i}")
            pids = check_pool_healthy(p, monitor, DB, USER, pool_size=2)
            check(pid not in pids, f"the killed backend {pid} is still listed")
            log(f"backends afterwards: {sorted(pids)}")
    finally:
        monitor.close()


def test_postgres_crash_restart_under_load():
    if not have_pgdata():
        skip_test("PGRING_TEST_PGDATA must name the test PostgreSQL's data directory")
    clients, pool_size, op_bound = 8, 4, 30.0
    setup = fresh_table("pgring_fault_restart", "client int, n int")
    setup.close()
    config = pool_config(pool_size=pool_size,
                        timeouts={"server_login_retry": "1s", "server_connect": "5s"})
    try:
        with Pgring(config) as p:
            pgring_pid = p.pid()
            fd_base = fd_count(pgring_pid)
            stop = threading.Event()
            lock = threading.Lock()
            successes = [[] for _ in range(clients)]   # monotonic times of committed transactions
            errors = [[] for _ in range(clients)]      # (time, sqlstate, message)
            longest = [0.0]

            def client(i):
                conn, n = None, 0
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        if conn is None:
                            conn = app_connect(p, connect_timeout=10)
                            conn.autocommit = False
                        n += 1
                        query(conn, "INSERT INTO pgring_fault_restart VALUES (%s, %s)", (i, n))
                        query_one(conn, "SELECT count(*) FROM pgring_fault_restart "
                                        "WHERE client = %s", (i,))
                        conn.commit()
                        successes[i].append(time.monotonic())
                    except psycopg2.Error as e:
                        errors[i].append((time.monotonic(), e.pgcode, str(e).strip()[:200]))
                        if conn is not None:
                            conn.close()
                            conn = None
                        time.sleep(0.2)
                    with lock:
                        longest[0] = max(longest[0], time.monotonic() - started)
                if conn is not None:
                    conn.close()

            threads = [Background(lambda i=i: client(i)) for i in range(clients)]
            try:
                wait_until(lambda: all(len(s) >= 3 for s in successes), 30,
                           what="every client to commit a few transactions")
                fd_loaded = fd_count(pgring_pid)
                t_down = time.monotonic()
                pg_stop_immediate()
                log(f"PostgreSQL stopped (immediate) {time.monotonic() - t_down:.1f}s")
                time.sleep(3)
                pg_start()
                t_up = time.monotonic()
                log(f"PostgreSQL up again {t_up - t_down:.1f}s after the stop")
                wait_until(lambda: all(any(t > t_up for t in s) for s in successes), 20,
                           interval=0.2, what="every client to commit again after the restart")
                t_recovered = time.monotonic()
                time.sleep(2)
            finally:
                stop.set()
                for i, t in enumerate(threads):
                    t.result(op_bound + 15, f"client {i}")
            all_errors = [e for errs in errors for e in errs]
            outage = [e for e in all_errors if t_down <= e[0] <= t_recovered]
            late = [e for e in all_errors if e[0] > t_recovered]
            early = [e for e in all_errors if e[0] < t_down]
            states = sorted({str(e[1]) for e in all_errors})
            log(f"{sum(len(s) for s in successes)} transactions committed; errors: "
                f"{len(early)} before the stop, {len(outage)} during the outage, {len(late)} "
                f"after recovery; SQLSTATEs seen {states}; recovered "
                f"{t_recovered - t_up:.1f}s after PostgreSQL was up; longest operation "
                f"{longest[0]:.1f}s; pgring fds: {fd_base} idle, {fd_loaded} under load")
            for e in all_errors[:6]:
                log(f"  e.g. {e[1]}: {e[2]}")
            check(not early, f"errors before PostgreSQL was stopped: {early[:5]}")
            check(outage, "no client saw an error while PostgreSQL was down")
            check(not late, f"errors after every client had recovered: {late[:5]}")
            check(longest[0] < op_bound, f"an operation took {longest[0]:.1f}s (a hang)")

            monitor = monitor_connect(db=DB)
            try:
                check_pool_healthy(p, monitor, DB, USER, pool_size)
            finally:
                monitor.close()
            fds = wait_fds_at_most(pgring_pid, fd_base + pool_size + 2)
            log(f"pgring fds after the clients left: {fds} (idle baseline {fd_base}): "
                f"{describe_fds(pgring_pid)}")
    finally:
        ensure_postgres_running()
        cleanup = monitor_connect(db=DB, user=USER)
        query(cleanup, "DROP TABLE IF EXISTS pgring_fault_restart")
        cleanup.close()


class HoldingListener:
    """A "server" that accepts TCP connections (in a thread) and holds them, never sending a
    byte: a PostgreSQL hung before its first message."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted.append(conn)

    def open_count(self):
        """How many accepted connections the peer (pgring) has not closed."""
        n = 0
        with self.lock:
            conns = list(self.accepted)
        for c in conns:
            try:
                data = c.recv(65536, socket.MSG_DONTWAIT)
                if data:  # bytes (a startup packet): still open; drain and count
                    n += 1
            except BlockingIOError:
                n += 1
            except OSError:
                pass  # reset: closed
        return n

    def close(self):
        self.sock.close()
        with self.lock:
            for c in self.accepted:
                c.close()


def attempt_error(p, db, user="postgres"):
    """Log in to `db` and run a query; return (SQLSTATE of the error pgring sent, seconds)."""
    started = time.monotonic()
    try:
        c = login(p.port, user=user, db=db, timeout=30)
    except PgError as e:
        return e.sqlstate, time.monotonic() - started, "login"
    try:
        c.send(message(b"Q", b"SELECT 1\0"))
        msgs = []
        while True:
            try:
                kind, body = c.read_message()
            except ConnectionClosed:
                break
            msgs.append((kind, body))
            if kind == b"Z":
                break
        errors = error_fields_in(msgs)
        return (errors[-1].get("C") if errors else None), time.monotonic() - started, "query"
    finally:
        c.close()


def test_server_accepts_and_never_answers():
    listener = HoldingListener()
    databases = {
        DB: {"host": PGHOST, "port": PGPORT},
        "hung": {"host": "127.0.0.1", "port": listener.port, "dbname": DB},
    }
    # (Clients wait for a server that is down up to query_wait, then get its error.)
    config = pool_config(pool_size=2, databases=databases,
                        timeouts={"server_connect": "2s", "server_login_retry": "1s",
                                  "query_wait": "4s"})
    monitor = monitor_connect(db=DB)
    try:
        with Pgring(config) as p:
            fd_base = fd_count(p.pid())
            other = QueryLoop(p)
            for attempt in (1, 2):
                sqlstate, elapsed, phase = Background(lambda: attempt_error(p, "hung")).result(
                    30, "a client of the hung server")
                log(f"attempt {attempt}: SQLSTATE {sqlstate} at {phase} after {elapsed:.2f}s; "
                    f"the hung server accepted {len(listener.accepted)} connections")
                check_eq(sqlstate, "08006", f"SQLSTATE for a server that never answers "
                                            f"(attempt {attempt})")
                check(elapsed < 10, f"the error took {elapsed:.1f}s with server_connect 2s")
                time.sleep(1.2)  # past server_login_retry
            check(listener.accepted, "pgring never connected to the hung server")
            # pgring gave up on those server connections: it must have closed them.
            wait_until(lambda: listener.open_count() == 0, 10,
                       what="pgring to close its connections to the hung server")
            other.stop("a client of the healthy database")
            check_pool_healthy(p, monitor, DB, USER, pool_size=2)
            fds = wait_fds_at_most(p.pid(), fd_base + 2 + 1)
            log(f"pgring fds: {fd_base} at start, {fds} at the end")
    finally:
        listener.close()
        monitor.close()


def read_raw_until_close(sock, timeout):
    """Every byte the peer sends until it closes or `timeout` s pass; (bytes, closed)."""
    sock.settimeout(0.5)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if data and _ends_with_error_and_ready(data):
                return data, False
            continue
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def _split_messages(data):
    """Whole messages at the start of `data` and the leftover bytes."""
    msgs, pos = [], 0
    while len(data) - pos >= 5:
        (length,) = struct.unpack("!I", data[pos + 1:pos + 5])
        if length < 4 or len(data) - pos < 1 + length:
            break
        msgs.append((data[pos:pos + 1], data[pos + 5:pos + 1 + length]))
        pos += 1 + length
    return msgs, data[pos:]


def _ends_with_error_and_ready(data):
    msgs, rest = _split_messages(data)
    return not rest and msgs and msgs[-1][0] == b"Z"


def stalled_query_outcome(p, fake, what):
    """Send a query the fake server stalls on mid-DataRow, through a raw connection; return
    (outcome text, seconds). Fails unless the client gets, within 10 s, either a well-framed
    ErrorResponse 57014/08006 or a close of the connection right after a prefix of the
    server's own bytes. Bytes pgring adds in the middle of the server's DataRow (an
    ErrorResponse spliced into it) are a protocol violation: the client reads them as row
    data."""
    c = login(p.port, user="postgres", db="fake", timeout=30)
    try:
        c.send(message(b"Q", b"SELECT stall\0"))
        started = time.monotonic()
        data, closed = read_raw_until_close(c.sock, 20)
        elapsed = time.monotonic() - started
    finally:
        c.close()
    msgs, _ = _split_messages(data)
    check(msgs and msgs[0][0] == b"T", f"{what}: expected a RowDescription first, got "
                                       f"{data[:40]!r}")
    after = data[5 + len(msgs[0][1]):]
    row = fake.stalled_row()
    sent = row[:len(row) - (fake.stall_missing if fake.stall_missing is not None
                            else len(row) // 2)]
    if after == b"" or (row.startswith(after) and len(after) <= len(sent)):
        check(closed, f"{what}: no error and no close within 20 s of the stall "
                      f"({len(after)} bytes of the DataRow forwarded)")
        outcome = f"closed after {len(after)} of the DataRow's {len(row)} bytes (no ErrorResponse)"
    else:
        tail, rest = _split_messages(after)
        errors = [parse_fields(b) for k, b in tail if k == b"E"]
        if rest or not errors or any(k not in (b"E", b"N", b"Z") for k, _ in tail):
            spliced = after[len(sent):] if after.startswith(sent) else after
            fail(f"{what}: after the RowDescription the client got {len(after)} bytes that are "
                 f"neither whole messages nor a prefix of the server's DataRow: the first "
                 f"{min(len(after), len(sent))} bytes are the {len(sent)} the server sent of "
                 f"its {len(row)}-byte DataRow ({after.startswith(sent)}), then pgring added "
                 f"{spliced[:80]!r} "
                 f"({len(spliced)} bytes) inside that DataRow before closing: an ErrorResponse "
                 f"spliced into a message the client reads as row data")
        check(errors[-1].get("C") in ("57014", "08006"),
              f"{what}: SQLSTATE {errors[-1].get('C')}, expected 57014 or 08006")
        outcome = f"ErrorResponse {errors[-1].get('C')}: {errors[-1].get('M')}"
    log(f"{what}: {outcome} after {elapsed:.2f}s")
    check(elapsed < 10, f"{what}: the outcome came after {elapsed:.1f}s")
    return outcome, elapsed


def test_server_stalls_mid_message():
    with FakeServer(stall_value_size=4000) as fake:
        databases = {
            DB: {"host": PGHOST, "port": PGPORT},
            "fake": {"host": "127.0.0.1", "port": fake.port},
        }
        config = pool_config(pool_size=2, databases=databases,
                            timeouts={"query": "2s", "cancel_wait": "2s"})
        monitor = monitor_connect(db=DB)
        try:
            with Pgring(config) as p:
                c = connect(p.port, db="fake")
                check_eq(query_one(c, "SELECT 'hello'"), "ok", "the fake server's answer")
                other = QueryLoop(p)

                # A libpq client (psycopg2) and a raw one stall at the same time, each on its
                # own server connection: half of a 4000-byte DataRow.
                def libpq_client():
                    started = time.monotonic()
                    try:
                        rows = query(c, "SELECT stall")
                        return f"rows {rows!r}", time.monotonic() - started
                    except psycopg2.Error as e:
                        return (f"{type(e).__name__} (SQLSTATE {e.pgcode}): "
                                f"{str(e).strip().splitlines()[0]}", time.monotonic() - started)
                libpq = Background(libpq_client)
                failures = []
                try:
                    stalled_query_outcome(p, fake, "raw client, half a DataRow")
                except AssertionError as e:
                    failures.append(str(e))
                outcome, elapsed = libpq.result(30, "the stalled psycopg2 query")
                log(f"psycopg2 client: {outcome} after {elapsed:.2f}s")
                check(not outcome.startswith("rows"), f"the stalled query returned {outcome}")
                check(elapsed < 10, f"psycopg2 got its error after {elapsed:.1f}s")
                c.close()
                log(f"the fake server got {fake.cancels} cancel requests, "
                    f"{fake.stalls} sessions stalled")
                # pgring does not reuse a server that stalled mid-message: it closes it.
                wait_until(lambda: fake.stalled == 0, 10,
                           what="pgring to close the stalled server connections")

                # A DataRow missing only its last 8 bytes: bytes pgring spliced in would
                # complete it and reach the client as row data.
                fake.stall_value_size, fake.stall_missing = 100, 8
                try:
                    stalled_query_outcome(p, fake, "raw client, all but 8 bytes of a DataRow")
                except AssertionError as e:
                    failures.append(str(e))
                wait_until(lambda: fake.stalled == 0, 10,
                           what="pgring to close the stalled server connection")

                other.stop("a client of the real database")
                # The fake pool serves new clients (on a fresh server connection).
                d = login(p.port, user="postgres", db="fake", timeout=30)
                check_eq(d.simple_query("SELECT 3"), [["ok"]], "a new client of the fake database")
                d.terminate()
                check_pool_healthy(p, monitor, DB, USER, pool_size=2)
                check(not failures, "\n".join(failures))
        finally:
            monitor.close()


def copy_data(rows):
    return b"".join(message(b"d", f"{i}\trow {i}\n".encode()) for i in rows)


def test_client_vanishes_mid_copy():
    setup = fresh_table("pgring_fault_copy", "id int, t text")
    monitor = monitor_connect(db=DB)
    try:
        wait_no_backends(monitor, DB)
        with Pgring(pool_config(pool_size=1)) as p:
            first = app_login(p)
            pid = int(first.simple_query("SELECT pg_backend_pid()")[0][0])
            first.terminate()
            for variant in ("FIN", "RST", "FIN inside BEGIN", "RST after CopyDone inside BEGIN"):
                c = app_login(p)
                in_tx = "BEGIN" in variant
                if in_tx:
                    c.simple_query("BEGIN")
                    c.simple_query("INSERT INTO pgring_fault_copy VALUES (0, 'before the COPY')")
                c.send(message(b"Q", b"COPY pgring_fault_copy FROM STDIN\0"))
                msgs = read_messages_until(c, (b"G", b"E", b"Z"))
                check_eq(msgs[-1][0], b"G", f"{variant}: reply to COPY FROM STDIN")
                c.send(copy_data(range(1, 2001)))
                if "CopyDone" in variant:
                    # CopyDone of a COPY inside a transaction: the rows are in, not committed.
                    c.send(message(b"c"))
                    msgs = read_messages_until(c, (b"Z",))
                    check_eq(msgs[-1][1], b"T", f"{variant}: status after CopyDone")
                else:
                    c.send(copy_data(range(2001, 2101)))
                    wait_until(lambda: any(b.query.startswith("COPY") for b in
                                           backends(monitor, DB, USER)), 10,
                               what="the COPY to show in pg_stat_activity")
                    time.sleep(0.2)
                abort_socket(c.sock, rst=variant.startswith("RST"))
                started = time.monotonic()

                def settled():
                    rows = backends(monitor, DB, USER)
                    return rows if [(b.pid, b.state) for b in rows] == [(pid, "idle")] else None
                try:
                    wait_until(settled, 15, interval=0.1, what="the server to be idle again")
                except AssertionError:
                    fail(f"{variant}: backends after the client vanished: "
                         f"{backends(monitor, DB, USER)} (expected only {pid}, idle)")
                log(f"{variant}: the server is idle again after "
                    f"{time.monotonic() - started:.2f}s")
                check_eq(query_one(monitor, "SELECT count(*) FROM pgring_fault_copy"), 0,
                         f"{variant}: rows committed")
                nxt = app_login(p)
                check_eq(nxt.simple_query("SELECT pg_backend_pid(), "
                                          "(SELECT count(*) FROM pgring_fault_copy), "
                                          "current_setting('transaction_isolation')"),
                         [[str(pid), "0", "read committed"]],
                         f"{variant}: the next client's backend and rows")
                check_eq(nxt.simple_query("BEGIN; INSERT INTO pgring_fault_copy VALUES (-1); "
                                          "ROLLBACK; SELECT 'clean'"), [["clean"]],
                         f"{variant}: a transaction of the next client")
                nxt.terminate()
            pids = check_pool_healthy(p, monitor, DB, USER, pool_size=1)
            check_eq(pids, {pid}, "backends at the end (the same single server throughout)")
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_fault_copy")
        setup.close()
        monitor.close()


def test_client_disconnects_during_long_query():
    monitor = monitor_connect(db=DB)
    try:
        wait_no_backends(monitor, DB)
        with Pgring(pool_config(pool_size=1)) as p:
            pid = None
            for variant in ("FIN", "RST"):
                c = app_login(p)
                mine = int(c.simple_query("SELECT pg_backend_pid()")[0][0])
                if pid is None:
                    pid = mine
                check_eq(mine, pid, f"{variant}: backend (pool_size 1)")
                marker = f"pgring_fault_sleep_{variant}"
                c.send(message(b"Q", f"SELECT pg_sleep(30) AS {marker}\0".encode()))

                def running():
                    return [b.pid for b in backends(monitor, state="active",
                                                     query_like=f"%{marker}%")] == [pid]
                wait_until(running, 10, what="pg_sleep to run on the server")
                abort_socket(c.sock, rst=variant == "RST")
                started = time.monotonic()
                wait_until(lambda: not running(), 15, interval=0.05,
                           what="the abandoned pg_sleep(30) to stop on the server")
                elapsed = time.monotonic() - started
                log(f"{variant}: the abandoned query stopped {elapsed:.2f}s after the client left")
                check(elapsed < 5, f"{variant}: the query ran on {elapsed:.1f}s after its client "
                                   f"disconnected")
                nxt = app_login(p)
                check_eq(nxt.simple_query("SELECT pg_backend_pid()"), [[str(pid)]],
                         f"{variant}: the next client's backend (reused)")
                nxt.terminate()
            pids = check_pool_healthy(p, monitor, DB, USER, pool_size=1)
            check_eq(pids, {pid}, "backends at the end")
    finally:
        monitor.close()


# ---------------------------------------------------------------------------------------------
# A lossy, slow network: pgring in the root network namespace, PostgreSQL reached through a
# veth pair into a private namespace with netem on both ends. The throwaway PostgreSQL listens
# on 127.0.0.1 only, so a relay in this process listens inside the namespace (a socket created
# by a thread that joined it with setns) and forwards each connection to PostgreSQL.

CLONE_NEWNET = 0x40000000
NETEM = os.environ.get("PGRING_IT_NETEM", "delay 50ms loss 5%")  # "none": plumbing only
# Kernels without sch_netem: a token bucket with a short queue instead (delay by queueing,
# loss by tail drop), so the link is still slow and lossy.
TBF = "rate 20mbit burst 16kb latency 4ms"


def _run(*cmd, check_rc=True):
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {(r.stdout + r.stderr).strip()}")
    return r


class LossyLink:
    def __init__(self):
        tag = os.getpid() % 100000
        self.ns = f"pgring-it-{tag}"
        self.host_if, self.ns_if = f"pgrh{tag}", f"pgrn{tag}"
        a, b = 10 + tag % 200, (tag // 200) % 250
        self.host_ip, self.ns_ip = f"10.{a}.{b}.1", f"10.{a}.{b}.2"
        self.created = False
        self.impairment = None

    def setup(self):
        _run("ip", "netns", "add", self.ns)
        self.created = True
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.ns_ip}/30",
             "dev", self.ns_if)
        _run("ip", "netns", "exec", self.ns, "ip", "link", "set", self.ns_if, "up")
        _run("ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up")
        if NETEM == "none":
            self.impairment = "none"
            return
        for kind, args in (("netem", NETEM), ("tbf", TBF)):
            r = _run("tc", "qdisc", "add", "dev", self.host_if, "root", kind, *args.split(),
                     check_rc=False)
            if r.returncode == 0:
                _run("ip", "netns", "exec", self.ns, "tc", "qdisc", "add", "dev", self.ns_if,
                     "root", kind, *args.split())
                self.impairment = f"{kind} {args}"
                return
            log(f"tc qdisc {kind} {args}: {(r.stdout + r.stderr).strip()}")
        raise RuntimeError("neither netem nor tbf qdiscs work here")

    def drops(self):
        """Packets dropped by the qdiscs on both ends (tc -s)."""
        total = 0
        for cmd in (["tc", "-s", "qdisc", "show", "dev", self.host_if],
                    ["ip", "netns", "exec", self.ns, "tc", "-s", "qdisc", "show", "dev",
                     self.ns_if]):
            out = _run(*cmd, check_rc=False).stdout
            for m in re.finditer(r"dropped (\d+)", out):
                total += int(m.group(1))
        return total

    def teardown(self):
        if self.created:
            _run("ip", "link", "del", self.host_if, check_rc=False)
            _run("ip", "netns", "del", self.ns, check_rc=False)

    def listen_inside(self):
        """A listening TCP socket on ns_ip inside the namespace."""
        out = {}
        libc = ctypes.CDLL("libc.so.6", use_errno=True)

        def target():
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            other = os.open(f"/var/run/netns/{self.ns}", os.O_RDONLY)
            try:
                if libc.setns(other, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into the test namespace")
                try:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.bind((self.ns_ip, 0))
                    s.listen(64)
                    out["sock"] = s
                finally:
                    if libc.setns(own, CLONE_NEWNET) != 0:
                        out["error"] = OSError(ctypes.get_errno(), "setns back")
            except Exception as e:  # noqa: BLE001 - handed to the caller
                out["error"] = e
            finally:
                os.close(own)
                os.close(other)

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["sock"]


def test_lossy_network_to_server():
    if os.geteuid() != 0:
        skip_test("needs root for ip netns / tc")
    link = LossyLink()
    try:
        try:
            link.setup()
            listener = link.listen_inside()
        except (RuntimeError, OSError, FileNotFoundError) as e:
            skip_test(f"cannot set up a network namespace with an impaired veth link: {e}")
        relay = Relay(listener)
        clients, pool_size, seconds = 6, 3, 12
        setup = fresh_table("pgring_fault_netem", "client int, n int")
        databases = {DB: {"host": link.ns_ip, "port": relay.port}}
        config = pool_config(pool_size=pool_size, databases=databases,
                            timeouts={"server_connect": "15s", "server_login_retry": "1s"})
        monitor = monitor_connect(db=DB)
        try:
            with Pgring(config) as p:
                committed = [0] * clients
                latencies = []

                def client(i):
                    conn = app_connect(p, connect_timeout=60)
                    conn.autocommit = False
                    deadline = time.monotonic() + seconds
                    n = 0
                    while time.monotonic() < deadline:
                        n += 1
                        started = time.monotonic()
                        query(conn, "INSERT INTO pgring_fault_netem VALUES (%s, %s)", (i, n))
                        got = query_one(conn, "SELECT count(*) FROM pgring_fault_netem WHERE "
                                              "client = %s", (i,))
                        if got != n:
                            raise AssertionError(f"client {i} sees {got} rows, expected {n}")
                        if n % 5 == 0:  # a result of many segments
                            rows = query(conn, "SELECT repeat('x', 100000) || g "
                                               "FROM generate_series(1, 10) g")
                            size = sum(len(r[0]) for r in rows)
                            if size != 1000011 or rows[9][0][-2:] != "10":
                                raise AssertionError(f"big result: {size} bytes")
                        conn.commit()
                        committed[i] = n
                        latencies.append(time.monotonic() - started)
                    conn.close()

                errors = run_clients(client, clients, timeout=seconds + 90)
                total = sum(committed)
                log(f"through {link.impairment}: {total} transactions by {clients} clients in "
                    f"{seconds}s, latency p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                    f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms; relay connections "
                    f"{relay.connections}; packets dropped by the qdiscs {link.drops()}")
                check(not errors, f"client errors over the lossy link: {errors[:5]}")
                check_eq(query_one(setup, "SELECT count(*) FROM pgring_fault_netem"), total,
                         "rows committed")
                check(total >= clients, "hardly any transaction completed")
                check_pool_healthy(p, monitor, DB, USER, pool_size, timeout=40)
        finally:
            query(setup, "DROP TABLE IF EXISTS pgring_fault_netem")
            setup.close()
            monitor.close()
            relay.close()
    finally:
        link.teardown()


if __name__ == "__main__":
    run_tests(globals())
