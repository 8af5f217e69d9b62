#!/usr/bin/python3
"""libpq through pgring: simple query, PQexecParams, PQprepare/PQexecPrepared and pipeline mode
(tests/integration/libpq_client.c)."""

import os
import subprocess

from lib import LIBPQ_CLIENT, PGHOST, PGPORT, Pgring, check, check_eq, fail, run_tests, skip


def run_client(conninfo, timeout=60):
    try:
        r = subprocess.run([LIBPQ_CLIENT, conninfo], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "prefer"})
    except subprocess.TimeoutExpired:
        fail(f"libpq_client hung for {timeout}s ({conninfo})")
    return r.returncode, (r.stdout + r.stderr).strip()


def check_client(conninfo):
    rc, out = run_client(conninfo)
    check(rc == 0 and out.endswith("ok"), f"libpq_client {conninfo!r} -> {rc}:\n{out}")


def test_client_against_postgres_directly():
    # The client itself must be right before it can judge pgring.
    check_client(f"host={PGHOST} port={PGPORT} dbname=pgring_test user=postgres")


def test_session_mode_trust():
    config = {"auth": {"method": "trust"}, "defaults": {"pool_mode": "session", "pool_size": 4}}
    with Pgring(config) as p:
        for _ in range(3):  # reuses the server connection: DISCARD ALL must not break anything
            check_client(f"host=127.0.0.1 port={p.port} dbname=pgring_test user=postgres")


def test_session_mode_scram():
    config = {
        "auth": {"method": "scram-sha-256"},
        "users": {"app": {"password": "secret"}},
        "defaults": {"pool_mode": "session", "pool_size": 2},
        "databases": {"app": {"host": PGHOST, "port": PGPORT}},
    }
    with Pgring(config) as p:
        check_client(f"host=127.0.0.1 port={p.port} dbname=app user=app password=secret")
        rc, out = run_client(f"host=127.0.0.1 port={p.port} dbname=app user=app password=bad")
        check_eq(rc, 1, f"wrong password exit status ({out})")
        check("pgring: " in out, f"wrong password output: {out}")


if __name__ == "__main__":
    if not LIBPQ_CLIENT or not os.access(LIBPQ_CLIENT, os.X_OK):
        skip("PGRING_LIBPQ_CLIENT is not set to the built libpq_client")
    run_tests(globals())
