"""Operating pgring: the admin console (database "pgring") through psql, and the /metrics,
/health and /ready endpoints. pool_config() enables the console for ADMIN_USER (admin) and
STATS_USER (SHOW only) unless told admin=False."""

import http.client
import re
import subprocess

from .checks import check, fail
from .clients import client_env
from .env import PSQL

__all__ = ["ADMIN_DB", "ADMIN_USER", "STATS_USER", "admin_psql", "admin_rows", "admin_ok",
           "pool_row", "pool_rows", "pool_count", "database_row", "pgring_servers", "http_get",
           "scrape", "parse_metrics", "metric_sum", "metric_value"]

ADMIN_DB = "pgring"
ADMIN_USER = "pgring_admin"
STATS_USER = "monitor"


def admin_psql(port, sql, user=ADMIN_USER, timeout=30):
    """Run one admin command with psql (unaligned, field separator \\x1f, header kept, no
    footer). Returns (returncode, stdout, stderr)."""
    cmd = [PSQL, "-X", "-A", "-F", "\x1f", "-P", "footer=off", "-v", "ON_ERROR_STOP=1",
           "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", ADMIN_DB, "-c", sql]
    try:
        r = subprocess.run(cmd, env=client_env(), stdin=subprocess.DEVNULL,
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


def pool_count(port, database, column, user="postgres"):
    """One numeric column of a SHOW POOLS row (cl_waiting, sv_active, ...); 0 if the pool does
    not exist yet."""
    row = pool_row(port, database, user)
    return int(row[column]) if row else 0


def database_row(port, name):
    for row in admin_rows(port, "SHOW DATABASES"):
        if row["name"] == name:
            return row
    return None


def pgring_servers(port, database):
    """SHOW SERVERS rows of pgring for `database` (the name clients use)."""
    return [r for r in admin_rows(port, "SHOW SERVERS") if r["database"] == database]


def pool_rows(port, database):
    return [r for r in admin_rows(port, "SHOW POOLS") if r["database"] == database]


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
