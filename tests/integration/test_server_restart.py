#!/usr/bin/python3
"""PostgreSQL restarts under pgring: a client whose server went away gets an error (no hang),
clients that arrive while PostgreSQL is down wait for it (up to query_wait, then they get the
error), and are served as soon as it is back; a server that refuses pgring's login gives its
clients PostgreSQL's own error at once.

Needs PGRING_TEST_PGDATA, the fixture cluster's data directory (tests/CMakeLists.txt)."""

import os
import time

import psycopg2

import copy

from lib import (Background, PGDATA, PGHOST, PGPORT, Pgring, check, check_eq, connect,
                 ensure_postgres_running, fail, log, login_error, pg_ctl, pg_isready, pool_config,
                 psql, query_one, run_tests, run_with_timeout, skip, wait_until)

CONFIG = {
    "auth": {"method": "trust"},
    "defaults": {"pool_mode": "session", "pool_size": 4},
    # Retry server logins quickly once PostgreSQL is back (the default is 15 s).
    "timeouts": {"server_login_retry": "1s", "server_connect": "5s"},
}


def restart_postgres():
    # -l: the restarted server's output must not go to our pipe (it would never close).
    rc, out = pg_ctl("restart", "-m", "fast", "-w", "-t", "60",
                     "-l", os.path.join(PGDATA, "log", "pg_ctl.log"))
    if rc != 0:
        fail(f"pg_ctl restart failed ({rc}): {out}")


def test_restart_under_pgring():
    try:
        with Pgring(CONFIG) as p:
            before = connect(p.port)
            pid_before = query_one(before, "SELECT pg_backend_pid()")
            idle = connect(p.port)  # a second session, idle during the restart
            query_one(idle, "SELECT 1")

            restart_postgres()
            check(pg_isready(), "PostgreSQL is not ready after the restart")

            # The server behind `before` was terminated: its next query must fail, promptly.
            def query_after_restart():
                return query_one(before, "SELECT pg_backend_pid()")
            started = time.monotonic()
            try:
                pid_after = run_with_timeout(query_after_restart, 30, "query after the restart")
                fail(f"a query on a session whose server was restarted succeeded "
                     f"(backend {pid_before} -> {pid_after})")
            except psycopg2.Error as e:
                log(f"client connected during the restart got: {type(e).__name__}: "
                    f"{str(e).strip()} after {time.monotonic() - started:.1f}s")
            before.close()
            try:
                run_with_timeout(lambda: query_one(idle, "SELECT 1"), 30, "idle session query")
            except psycopg2.Error:
                pass  # an error is expected; a hang is not
            idle.close()

            # New clients work again (pgring reconnects to the restarted server).
            def new_client_works():
                rc, out, err = psql(p.port, "SELECT 'back'", timeout=30)
                return rc == 0 and out == "back"
            wait_until(new_client_works, 15, interval=0.5, what="a new client after the restart")

            conn = connect(p.port)
            check(query_one(conn, "SELECT pg_backend_pid()") != pid_before,
                  "new session on the old backend pid")
            conn.close()
    finally:
        ensure_postgres_running()


def test_postgres_down_then_up():
    # Clients arriving while PostgreSQL stays down get an error after query_wait (not a hang);
    # after it comes back, clients work.
    config = copy.deepcopy(CONFIG)
    config["timeouts"]["query_wait"] = "3s"
    try:
        with Pgring(config) as p:
            rc, out = pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
            check(rc == 0, f"pg_ctl stop: {out}")
            started = time.monotonic()
            rc, out, err = psql(p.port, "SELECT 1", timeout=40)
            check(rc != 0, "a query succeeded while PostgreSQL was down")
            check(time.monotonic() - started < 30, "the error took too long")
            check("pgring: " in err, f"error should come from pgring: {err}")
            ensure_postgres_running()

            def new_client_works():
                rc, out, err = psql(p.port, "SELECT 'up'", timeout=30)
                return rc == 0 and out == "up"
            wait_until(new_client_works, 15, interval=0.5, what="a client after PostgreSQL is up")
    finally:
        ensure_postgres_running()


def test_clients_wait_through_a_restart():
    # A client that arrives while PostgreSQL is down waits and is served once it is back: no
    # error for a restart shorter than query_wait. pgring retries with a back-off meanwhile.
    config = copy.deepcopy(CONFIG)
    config["timeouts"]["query_wait"] = "60s"
    config["timeouts"]["server_login_retry"] = "2s"
    try:
        with Pgring(config) as p:
            rc, out = pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
            check(rc == 0, f"pg_ctl stop: {out}")
            waiting = Background(lambda: psql(p.port, "SELECT 'served'", timeout=90))
            # It waits (several attempts fail meanwhile) ...
            wait_until(lambda: p.log().count("server unavailable") >= 2, 20,
                       what="pgring to try the stopped server twice")
            check(not waiting.done(), "the client did not wait for PostgreSQL")
            ensure_postgres_running()
            # ... and is served once PostgreSQL is back.
            rc, out, err = waiting.result(60, "the client that waited")
            check_eq((rc, out), (0, "served"), f"the waiting client ({err})")
    finally:
        ensure_postgres_running()


def test_refused_login_gives_postgresql_error():
    # pgring's login is refused (a wrong password for the database's forced user): clients get
    # PostgreSQL's own error, code and message, at once and not only after query_wait.
    databases = {"app": {"host": PGHOST, "port": PGPORT, "user": "pgring_md5",
                         "password": "wrong"}}
    with Pgring(pool_config(databases=databases, timeouts={"query_wait": "60s"})) as p:
        for attempt in (1, 2):
            started = time.monotonic()
            e = login_error(p.port, db="app", timeout=30)
            elapsed = time.monotonic() - started
            check_eq(e.sqlstate, "28P01", f"SQLSTATE (attempt {attempt}: {e})")
            check_eq(e.fields.get("M"), 'password authentication failed for user "pgring_md5"',
                     "the message is PostgreSQL's")
            check(elapsed < 30, f"the error took {elapsed:.1f}s")


if __name__ == "__main__":
    if not PGDATA or not os.path.isfile(os.path.join(PGDATA, "PG_VERSION")):
        skip("PGRING_TEST_PGDATA must name the test PostgreSQL's data directory")
    if not pg_isready(PGHOST, PGPORT):
        skip(f"no test PostgreSQL at {PGHOST}:{PGPORT}")
    run_tests(globals())
