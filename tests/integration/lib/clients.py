"""Clients of pgring (and of the test PostgreSQL): psql, psycopg2, pgbench."""

import hashlib
import os
import select
import subprocess
import time

import psycopg2
import psycopg2.extensions

from .checks import check, fail, sqlstate_of, wait_until
from .env import NO_PASSFILE, PGHOST, PGPORT, PSQL, find_pg_tool

__all__ = ["client_env", "psql", "psql_ok", "connect", "direct_connect",
           "MONITOR_APP", "monitor_connect", "query", "query_one", "expect_error", "pgbench",
           "md5_secret", "take_notifications", "wait_notifications"]

MONITOR_APP = "pgring_it_monitor"  # application_name of direct connections backends() skips


def client_env(password=None):
    env = dict(os.environ)
    for k in ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE", "PGHOST",
              "PGPORT", "PGUSER", "PGDATABASE", "PGAPPNAME"):
        env.pop(k, None)
    env["PGPASSFILE"] = NO_PASSFILE
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def psql(port, sql, db="pgring_test", user="postgres", password=None, extra_args=(),
         host="127.0.0.1", timeout=120):
    """Run `psql -X -A -t -v ON_ERROR_STOP=1 -c SQL`; return (returncode, stdout, stderr) with
    stdout and stderr stripped. A psql that runs longer than `timeout` seconds fails the test."""
    cmd = [PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port),
           "-U", user, "-d", db, "-c", sql, *extra_args]
    try:
        r = subprocess.run(cmd, env=client_env(password), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"psql hung for {timeout}s: {sql!r} on port {port}")
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def psql_ok(port, sql, **kwargs):
    """psql() that must succeed; returns stdout."""
    rc, out, err = psql(port, sql, **kwargs)
    if rc != 0:
        fail(f"psql {sql!r} failed with status {rc}: {err}")
    return out


def connect(port, db="pgring_test", user="postgres", password=None, host="127.0.0.1",
            **kwargs):
    """A psycopg2 connection to pgring, autocommit on. kwargs go to psycopg2.connect
    (sslmode=..., connect_timeout=..., application_name=...)."""
    params = dict(host=host, port=port, dbname=db, user=user, connect_timeout=10,
                  passfile=NO_PASSFILE)
    if password is not None:
        params["password"] = password
    params.update(kwargs)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    return conn


def direct_connect(db="pgring_test", user="postgres", password=None, **kwargs):
    """A psycopg2 connection straight to the test PostgreSQL (not through pgring)."""
    return connect(PGPORT, db=db, user=user, password=password, host=PGHOST, **kwargs)


def monitor_connect(db="pgring_test", user="postgres", **kwargs):
    """A direct connection to the test PostgreSQL that backends()/count_backends() do not
    count (application_name MONITOR_APP): for setup, sampling and checks."""
    return direct_connect(db=db, user=user, application_name=MONITOR_APP, **kwargs)


def query(conn, sql, params=None):
    """Run sql on a psycopg2 connection; return all rows (or None for commands without rows)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else None


def take_notifications(conn, wait=0.0):
    """The notifications (psycopg2 Notify: channel, payload, pid) that reached `conn` within
    `wait` seconds, taken off conn.notifies."""
    got = []
    deadline = time.monotonic() + wait
    while True:
        left = max(0.0, deadline - time.monotonic())
        if select.select([conn], [], [], left)[0]:
            conn.poll()
        got.extend(conn.notifies)
        conn.notifies.clear()
        if time.monotonic() >= deadline:
            return got


def wait_notifications(conn, count, what, timeout=10):
    """Waits until `count` notifications reached `conn`; returns them (Notify objects)."""
    got = []

    def arrived():
        got.extend(take_notifications(conn, 0.1))
        return len(got) >= count

    wait_until(arrived, timeout, what=what,
               describe=lambda: [(n.channel, n.payload) for n in got])
    return got


def query_one(conn, sql, params=None):
    rows = query(conn, sql, params)
    check(rows is not None and len(rows) == 1 and len(rows[0]) == 1,
          f"{sql!r}: expected one value, got {rows!r}")
    return rows[0][0]


def expect_error(fn, sqlstate, message_contains=None):
    """Call fn() and check that it raises an error carrying `sqlstate` (a string, or a tuple of
    acceptable ones). Returns the exception. Works with psycopg2 errors (pgcode), asyncpg errors
    (sqlstate) and PgError from RawConn/login. Note: libpq-based clients report errors during
    connection startup without their SQLSTATE; check those with login()."""
    wanted = (sqlstate,) if isinstance(sqlstate, str) else tuple(sqlstate)
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - inspected below
        code = sqlstate_of(e)
        if code not in wanted:
            fail(f"expected an error with SQLSTATE {'/'.join(wanted)}, got "
                 f"{type(e).__name__} (SQLSTATE {code}): {str(e).strip()}")
        if message_contains is not None and message_contains not in str(e):
            fail(f"error message {str(e).strip()!r} does not contain {message_contains!r}")
        return e
    fail(f"expected an error with SQLSTATE {'/'.join(wanted)}, but the call returned {value!r}")


def pgbench(port, args, db="pgring_test", user="postgres", password=None, timeout=300):
    """Run pgbench against port with extra `args` (a list); return (returncode, stdout, stderr)."""
    cmd = [find_pg_tool("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", user, *args, db]
    try:
        r = subprocess.run(cmd, env=client_env(password), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"pgbench {' '.join(args)} hung for {timeout}s")
    return r.returncode, r.stdout, r.stderr


def md5_secret(user, password):
    """The "md5..." form of a password as PostgreSQL (and pgring's users:) store it."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()
