"""Helpers shared by the reliability tests (test_faults, test_soak, test_flow_control,
test_flood): pgring's file descriptors and memory from /proc, stopping and starting the test
PostgreSQL, and "is the pool healthy" checks that compare pgring's SHOW SERVERS with
pg_stat_activity."""

import os
import socket
import struct
import subprocess
import threading
import time

from harness import (MONITOR_APP, PGDATA, PGHOST, PGPORT, SSL_REQUEST_CODE, as_postgres_cmd, check, connect, fail,
                     find_pg_tool, log, pg_isready, query, query_one, wait_until)
from ops_helpers import admin_rows

# ---------------------------------------------------------------------------------------------
# The pgring process, from /proc


def fd_count(pid):
    """Open file descriptors of process `pid`."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    """Resident set size (VmRSS) of process `pid` in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    fail(f"no VmRSS in /proc/{pid}/status")


def check_running(p, when=""):
    """Fail clearly if the pgring process is gone (crashed, or stopped by someone else)."""
    if p.alive():
        return
    lines = p.log().strip().splitlines()[-4:]
    note = ""
    if p.exit_code is None and any("SIGTERM" in ln or "SIGINT" in ln for ln in lines):
        note = ": it got a signal this test did not send (something outside the test stopped it)"
    fail(f"pgring (pid {p.pid()}) is no longer running{when}, exit status "
         f"{p.proc.returncode}{note}; its log ends with {lines}")


def wait_fds_at_most(pid, limit, timeout=15, what="pgring's open files"):
    """Wait until the process has at most `limit` open fds; return the count."""
    last = [None]

    def ok():
        last[0] = fd_count(pid)
        return last[0] <= limit

    try:
        wait_until(ok, timeout, interval=0.2, what=what)
    except AssertionError:
        fail(f"{what}: {last[0]} open fds after {timeout}s, expected at most {limit}: "
             f"{describe_fds(pid)}")
    return last[0]


def describe_fds(pid):
    """A short summary of what the fds of `pid` are (socket/pipe/anon_inode/file counts)."""
    kinds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.split(":", 1)[0] if ":" in target else "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


# ---------------------------------------------------------------------------------------------
# The test PostgreSQL (the fixture's data directory: PGRING_TEST_PGDATA)

def pg_ctl(*args, timeout=90):
    cmd = as_postgres_cmd([find_pg_tool("pg_ctl"), *args, "-D", PGDATA])
    r = subprocess.run(cmd, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, (r.stdout + r.stderr).strip()


def pg_stop_immediate():
    rc, out = pg_ctl("stop", "-m", "immediate", "-w", "-t", "60")
    if rc != 0:
        fail(f"pg_ctl stop -m immediate failed ({rc}): {out}")


def pg_start():
    # -l: the server's output must not go to our pipe (it would never close).
    rc, out = pg_ctl("start", "-w", "-t", "60", "-l", os.path.join(PGDATA, "log", "pg_ctl.log"))
    if rc != 0:
        fail(f"pg_ctl start failed ({rc}): {out}")
    wait_until(pg_isready, 60, interval=0.2, what="PostgreSQL to accept connections")


def ensure_postgres_running():
    """Leave the fixture usable for the tests after this one, whatever happened here."""
    if pg_isready():
        return
    log("PostgreSQL is down; starting it again")
    pg_ctl("start", "-w", "-t", "60", "-l", os.path.join(PGDATA, "log", "pg_ctl.log"))
    wait_until(pg_isready, 60, interval=0.5, what="PostgreSQL to accept connections")


def have_pgdata():
    return bool(PGDATA) and os.path.isfile(os.path.join(PGDATA, "PG_VERSION"))


# ---------------------------------------------------------------------------------------------
# Backends on the test PostgreSQL and pgring's view of them

def backends(monitor, datname, usename=None):
    """[(pid, state, query)] of the client backends of `datname` (and `usename`), not counting
    monitor_connect() connections."""
    sql = ("SELECT pid, coalesce(state, ''), coalesce(query, '') FROM pg_stat_activity "
           "WHERE backend_type = 'client backend' AND datname = %s "
           "AND pid <> pg_backend_pid() AND application_name IS DISTINCT FROM %s")
    params = [datname, MONITOR_APP]
    if usename is not None:
        sql += " AND usename = %s"
        params.append(usename)
    return [tuple(r) for r in query(monitor, sql + " ORDER BY pid", params)]


def pgring_servers(port, database):
    """SHOW SERVERS rows of pgring for `database` (the name clients use)."""
    return [r for r in admin_rows(port, "SHOW SERVERS") if r["database"] == database]


def pool_rows(port, database):
    return [r for r in admin_rows(port, "SHOW POOLS") if r["database"] == database]


def check_pool_healthy(p, monitor, database, user, pool_size, dbname=None, timeout=20,
                       what="the pool"):
    """"The pool is healthy": a fresh client's query works; then (waiting up to `timeout` s for
    closes to settle) pgring's SHOW SERVERS backend pids for `database` are exactly the
    PostgreSQL backends of that database and user, there are at most `pool_size` of them, all
    'idle' (none idle in transaction, none still running something), and SHOW POOLS shows no
    waiting or active clients and no server logging in, active or being reset. Call it when
    every other client of the pool is gone. Returns the backend pids."""
    dbname = dbname or database
    check_running(p, f" when checking {what}")
    fresh = connect(p.port, db=database, user=user, connect_timeout=30)
    try:
        check(query_one(fresh, "SELECT 41 + 1") == 42, f"{what}: a fresh client's query")
    finally:
        fresh.close()

    state = {}

    def settled():
        servers = pgring_servers(p.port, database)
        pools = pool_rows(p.port, database)
        rows = backends(monitor, dbname, user)
        state.update(servers=[(s["id"], s["state"], s["backend_pid"]) for s in servers],
                     pools=pools, backends=rows)
        pgring_pids = {int(s["backend_pid"]) for s in servers}
        pg_pids = {pid for pid, _, _ in rows}
        busy = [r for r in rows if r[1] != "idle"]
        pool_busy = [r for r in pools if any(int(r[k]) != 0 for k in (
            "cl_waiting", "cl_active", "sv_active", "sv_login", "sv_resetting"))]
        return (pgring_pids == pg_pids and len(pg_pids) <= pool_size and not busy
                and not pool_busy)

    try:
        wait_until(settled, timeout, interval=0.3, what=f"{what} to settle")
    except AssertionError:
        fail(f"{what} is not healthy after {timeout}s: pgring servers {state.get('servers')}, "
             f"PostgreSQL backends {state.get('backends')}, pools {state.get('pools')} "
             f"(pool_size {pool_size})")
    return {pid for pid, _, _ in state["backends"]}


def wait_backend_gone(monitor, pid, timeout=15):
    wait_until(lambda: query_one(monitor, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)) == 0, timeout, what=f"backend {pid} to exit")


class Stopwatch:
    def __init__(self):
        self.started = time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.started


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Relay:
    """Forwards every connection accepted on `listener` to PostgreSQL. With refuse_tls, a
    connection that starts with an SSLRequest gets 'N' (a server without TLS) and the rest is
    relayed, so pgring logs in to the real PostgreSQL in plain text."""

    def __init__(self, listener, refuse_tls=False):
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.refuse_tls = refuse_tls
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                first = b""
                if self.refuse_tls:
                    first = down.recv(8)
                    if first == struct.pack("!II", 8, SSL_REQUEST_CODE):
                        down.sendall(b"N")
                        first = b""
                up = socket.create_connection((PGHOST, PGPORT), timeout=10)
                up.settimeout(None)
                up.sendall(first)
            except OSError:
                down.close()
                continue
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()
