"""Faults and the reliability tests (test_faults, test_soak, test_flow_control, test_flood):
stopping and starting the test PostgreSQL, a Relay that forwards connections to it, a
SilentListener that accepts and never answers, and the "is the pool healthy" check that
compares pgring's SHOW SERVERS with pg_stat_activity."""

import os
import socket
import struct
import subprocess
import threading

from .backends import backends
from .checks import check, fail, log, wait_until
from .clients import connect, query_one
from .env import PGDATA, PGHOST, PGPORT, as_postgres_cmd, find_pg_tool
from .ops import pgring_servers, pool_rows
from .wire import SSL_REQUEST_CODE

__all__ = ["pg_isready", "pg_ctl", "pg_stop_immediate", "pg_start", "ensure_postgres_running",
           "have_pgdata", "check_pool_healthy", "Relay", "SilentListener"]


# ---------------------------------------------------------------------------------------------
# The test PostgreSQL (the fixture's data directory: PGRING_TEST_PGDATA)

def pg_isready(host=PGHOST, port=PGPORT):
    """Whether PostgreSQL accepts connections (pg_isready)."""
    r = subprocess.run([find_pg_tool("pg_isready"), "-q", "-h", host, "-p", str(port)],
                       stdin=subprocess.DEVNULL, capture_output=True)
    return r.returncode == 0


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
# pgring's pools against PostgreSQL's backends

def check_pool_healthy(p, monitor, database, user, pool_size, dbname=None, timeout=20,
                       what="the pool"):
    """"The pool is healthy": a fresh client's query works; then (waiting up to `timeout` s for
    closes to settle) pgring's SHOW SERVERS backend pids for `database` are exactly the
    PostgreSQL backends of that database and user, there are at most `pool_size` of them, all
    'idle' (none idle in transaction, none still running something), and SHOW POOLS shows no
    waiting or active clients and no server logging in, active or being reset. Call it when
    every other client of the pool is gone. Returns the backend pids."""
    dbname = dbname or database
    p.check_running(f" when checking {what}")
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
                     pools=pools, backends=[(b.pid, b.state, b.query) for b in rows],
                     pids={b.pid for b in rows})
        pgring_pids = {int(s["backend_pid"]) for s in servers}
        pg_pids = {b.pid for b in rows}
        busy = [b for b in rows if b.state != "idle"]
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
    return state["pids"]


# ---------------------------------------------------------------------------------------------
# Stand-ins for a server

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


# A TCP listener that accepts connections (the kernel completes the handshake) but never
# answers: a PostgreSQL that hangs during connect/login.

class SilentListener:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
