"""Helpers shared by the operational-feature tests (cancel, timeouts, admin console, metrics,
reload, shutdown): the admin console through psql, /metrics scraping and parsing, waiting for
the error a server-side close sends, and a TCP listener that never answers."""

import http.client
import os
import re
import socket
import subprocess
import time

from harness import PSQL, ConnectionClosed, Pgring, _client_env, check, fail, parse_fields

ADMIN_DB = "pgring"
ADMIN_USER = "pgring_admin"
STATS_USER = "monitor"


def ops_config(pool_mode="transaction", pool_size=5, timeouts=None, metrics_port=None,
               admin=True, databases=None, **defaults):
    """A trust-auth config: databases pgring_test and app on the test PostgreSQL, the admin
    console for pgring_admin (admin) and monitor (stats), optionally /metrics."""
    from harness import PGHOST, PGPORT
    config = {
        "auth": {"method": "trust"},
        "defaults": {"pool_mode": pool_mode, "pool_size": pool_size, **defaults},
        "databases": databases if databases is not None else {
            "pgring_test": {"host": PGHOST, "port": PGPORT},
            "app": {"host": PGHOST, "port": PGPORT},
        },
    }
    if admin:
        config["admin"] = {"users": [ADMIN_USER], "stats_users": [STATS_USER]}
    if metrics_port is not None:
        config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    if timeouts:
        config["timeouts"] = dict(timeouts)
    if os.environ.get("PGRING_IT_DEBUG_LOG"):  # set it to see every connection event
        config["log"] = {"level": "debug"}
    return config


class OpsPgring(Pgring):
    """Pgring that also fails the test when the shutdown at the end of the block had to give up
    on connections that were never freed (pgring then logs "shutdown: stopping with ...
    left"): every connection must be gone by the time pgring stops."""

    def problems(self):
        problems = super().problems()
        for line in self.log().splitlines():
            if "shutdown: stopping with" in line:
                problems.append(f"pgring's shutdown gave up on leftover connections: {line}")
        return problems


# ---------------------------------------------------------------------------------------------
# The admin console through psql

def admin_psql(port, sql, user=ADMIN_USER, timeout=30):
    """Run one admin command with psql (unaligned, field separator \\x1f, header kept, no
    footer). Returns (returncode, stdout, stderr)."""
    cmd = [PSQL, "-X", "-A", "-F", "\x1f", "-P", "footer=off", "-v", "ON_ERROR_STOP=1",
           "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", ADMIN_DB, "-c", sql]
    try:
        r = subprocess.run(cmd, env=_client_env(), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"psql (admin) hung for {timeout}s: {sql!r} on port {port}")
    return r.returncode, r.stdout, r.stderr.strip()


def admin_rows(port, sql, user=ADMIN_USER):
    """An admin SHOW command that must succeed: its rows as dicts keyed by column name."""
    rc, out, err = admin_psql(port, sql, user=user)
    if rc != 0:
        fail(f"admin {sql!r} as {user} failed with status {rc}: {err}")
    lines = [ln for ln in out.split("\n") if ln != ""]
    check(lines, f"admin {sql!r}: no output at all (not even a header)")
    header = lines[0].split("\x1f")
    rows = []
    for ln in lines[1:]:
        values = ln.split("\x1f")
        check(len(values) == len(header), f"admin {sql!r}: row {ln!r} does not match {header}")
        rows.append(dict(zip(header, values)))
    return rows


def admin_ok(port, sql, user=ADMIN_USER):
    """A non-SHOW admin command that must succeed; returns psql's stdout (the command tag)."""
    rc, out, err = admin_psql(port, sql, user=user)
    if rc != 0:
        fail(f"admin {sql!r} as {user} failed with status {rc}: {err}")
    return out.strip()


def pool_row(port, database, user="postgres"):
    """The SHOW POOLS row of one pool, or None."""
    for row in admin_rows(port, "SHOW POOLS"):
        if row["database"] == database and row["user"] == user:
            return row
    return None


def database_row(port, name):
    for row in admin_rows(port, "SHOW DATABASES"):
        if row["name"] == name:
            return row
    return None


# ---------------------------------------------------------------------------------------------
# /metrics, /health, /ready

def http_get(port, path, timeout=10):
    """GET http://127.0.0.1:port/path -> (status, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def scrape(port):
    status, body = http_get(port, "/metrics")
    check(status == 200, f"GET /metrics: status {status}: {body[:200]!r}")
    return body


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Exposition text -> list of (name, {label: value}, float)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        check(m is not None, f"unparsable metrics line {line!r}")
        labels = dict(_LABEL.findall(m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def metric_sum(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`; None if there is none."""
    total, seen = 0.0, False
    for n, l, v in parse_metrics(text):
        if n == name and all(l.get(k) == str(val) for k, val in labels.items()):
            total += v
            seen = True
    return total if seen else None


def metric_value(port, name, **labels):
    return metric_sum(scrape(port), name, **labels)


# ---------------------------------------------------------------------------------------------
# Errors sent by pgring before it closes a connection

def read_close(conn, timeout=30.0):
    """Read from a RawConn until the peer closes it (or `timeout` passes: a failure).
    Returns (messages, error fields of each ErrorResponse)."""
    conn.sock.settimeout(timeout)
    msgs = []
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            fail(f"the connection was not closed within {timeout}s; got {[k for k, _ in msgs]}")
        try:
            kind, body = conn.read_message()
        except ConnectionClosed:
            break
        except socket.timeout:
            fail(f"the connection was not closed within {timeout}s; got {[k for k, _ in msgs]}")
        msgs.append((kind, body))
    return msgs, [parse_fields(b) for k, b in msgs if k == b"E"]


def expect_closed_with(conn, sqlstate, timeout=30.0, what="connection"):
    """The peer sends an ErrorResponse with `sqlstate` and closes; returns its fields."""
    msgs, errors = read_close(conn, timeout)
    check(errors, f"{what}: closed without an ErrorResponse (messages {[k for k, _ in msgs]})")
    check(errors[-1].get("C") == sqlstate,
          f"{what}: expected SQLSTATE {sqlstate}, got {errors[-1]}")
    return errors[-1]


def still_open(conn, seconds):
    """True if a RawConn receives nothing and stays open for `seconds`."""
    conn.sock.settimeout(seconds)
    try:
        conn.sock.recv(1, socket.MSG_PEEK)
    except socket.timeout:
        return True
    except OSError:
        return False
    return False  # EOF (b"") or a message arrived


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Misc

def wait_exit(p, timeout):
    """Wait for the pgring process to exit on its own; fail if it is still running after
    `timeout` s. Returns the exit status (and records it so Pgring.__exit__ checks it)."""
    try:
        p.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        fail(f"pgring still running {timeout}s later")
    return p.stop()


def send_signal(p, sig):
    check(p.alive(), "pgring is not running")
    p.proc.send_signal(sig)
