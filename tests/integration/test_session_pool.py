#!/usr/bin/python3
"""Session pooling: queries and errors pass through, many clients share a small pool without
exceeding it, and a server is reset before the next client gets it."""

import io
import threading
import time

import psycopg2

from lib import (Pgring, check, check_eq, connect, count_backends, direct_connect, expect_error,
                fail, idle_in_transaction, log, login, message, pool_config, pool_count, pool_row,
                psql, psql_ok, query, query_one, run_tests, wait_until)


def session_config(pool_size=5, **defaults):
    return pool_config(pool_mode="session", pool_size=pool_size, **defaults)


def test_queries_and_errors_pass_through():
    with Pgring(session_config()) as p:
        check_eq(psql_ok(p.port, "SELECT 1"), "1")
        rc, _, err = psql(p.port, "SELECT 1/0")
        check(rc != 0 and "division by zero" in err, f"psql: {rc} {err}")

        conn = connect(p.port)
        check_eq(query_one(conn, "SELECT 1"), 1)
        e = expect_error(lambda: query(conn, "SELECT 1/0"), "22012")
        check("division by zero" in str(e), str(e))
        # The session goes on after an error, also after one inside a transaction block.
        check_eq(query_one(conn, "SELECT 2"), 2)
        conn.autocommit = False
        expect_error(lambda: query(conn, "SELECT 1/0"), "22012")
        expect_error(lambda: query(conn, "SELECT 1"), "25P02")  # current transaction is aborted
        conn.rollback()
        conn.autocommit = True
        check_eq(query_one(conn, "SELECT 3"), 3)

        # Parameters, NULLs, several result columns, a notice.
        check_eq(query(conn, "SELECT %s::int, %s::text, NULL::int", (7, "x")), [(7, "x", None)])
        query(conn, "DO $$ BEGIN RAISE NOTICE 'pgring notice'; END $$")
        check(any("pgring notice" in n for n in conn.notices), f"notices: {conn.notices}")

        # A result of a few MB: many DataRows that span receive buffers.
        rows = query(conn, "SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g")
        check_eq(len(rows), 30000, "row count")
        check_eq(rows[12344], (12345, "827ccb0eea8a706c4c34a16891f84e7b" * 4), "row 12345")

        # A large parameter (client -> server direction) and COPY both ways.
        big = "y" * 300000
        check_eq(query_one(conn, "SELECT length(%s)", (big,)), 300000)
        query(conn, "CREATE TEMP TABLE copy_t(a int, b text)")
        with conn.cursor() as cur:
            cur.copy_expert("COPY copy_t FROM STDIN",
                            io.StringIO("".join(f"{i}\trow{i}\n" for i in range(5000))))
            out = io.StringIO()
            cur.copy_expert("COPY (SELECT * FROM copy_t ORDER BY a) TO STDOUT", out)
        check_eq(len(out.getvalue().splitlines()), 5000, "COPY OUT lines")
        check_eq(query_one(conn, "SELECT sum(a) FROM copy_t"), sum(range(5000)))
        conn.close()


def count_app_backends(monitor):
    """Server connections pgring holds to database app (our monitor connection is to
    pgring_test, so it is not counted)."""
    return count_backends(monitor, "app")


def test_many_clients_share_small_pool():
    clients, pool_size, queries_each = 50, 5, 3
    monitor = direct_connect()
    wait_until(lambda: count_app_backends(monitor) == 0, 10,
               what="no leftover backends on database app")
    with Pgring(session_config(pool_size=pool_size)) as p:
        stop_sampling = threading.Event()
        samples = []

        def sample():
            while not stop_sampling.is_set():
                samples.append(count_app_backends(monitor))
                time.sleep(0.02)

        errors = []
        done = []

        def client(i):
            try:
                conn = connect(p.port, db="app", user="app", connect_timeout=60,
                               application_name=f"client{i}")
                for q in range(queries_each):
                    got = query(conn, "SELECT %s::int, pg_sleep(0.02)", (i * 100 + q,))
                    if got[0][0] != i * 100 + q:
                        raise AssertionError(f"client {i} got {got!r}")
                check_eq(query_one(conn, "SELECT current_database()"), "app")
                conn.close()
                done.append(i)
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(f"client {i}: {type(e).__name__}: {e}")

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - started
        stop_sampling.set()
        sampler.join(5)
        check(not any(t.is_alive() for t in threads), "some clients hung")
        check(not errors, "client errors:\n" + "\n".join(errors))
        check_eq(len(done), clients, "clients that finished")
        log(f"{clients} clients x {queries_each} queries on a pool of {pool_size} in "
            f"{elapsed:.1f}s; server connections seen: max {max(samples)} over "
            f"{len(samples)} samples")
        check(max(samples) <= pool_size,
              f"pgring opened {max(samples)} server connections, pool_size is {pool_size}")
        check(max(samples) >= 1, "never saw a server connection")
    monitor.close()


def test_reset_between_sessions():
    with Pgring(session_config(pool_size=1)) as p:
        a = connect(p.port)
        pid_a = query_one(a, "SELECT pg_backend_pid()")
        query(a, "SET statement_timeout = '123s'")
        query(a, "SET application_name = 'client_a'")
        check_eq(query_one(a, "SHOW statement_timeout"), "123s")
        query(a, "CREATE TEMP TABLE pgring_leak(x int)")
        query(a, "PREPARE pgring_leak_stmt AS SELECT 1")
        a.close()

        b = connect(p.port)
        # pool_size 1 in session mode: B gets the server A used, after the reset query.
        check_eq(query_one(b, "SELECT pg_backend_pid()"), pid_a, "server backend reused")
        check_eq(query_one(b, "SHOW statement_timeout"), "0", "statement_timeout after reset")
        check_eq(query_one(b, "SELECT to_regclass('pgring_leak')"), None,
                 "temp table of the previous client")
        check_eq(query_one(b, "SELECT count(*) FROM pg_prepared_statements"), 0,
                 "prepared statements of the previous client")
        check(query_one(b, "SHOW application_name") != "client_a",
              "application_name of the previous client leaked")
        b.close()


def test_disconnect_inside_transaction():
    setup = direct_connect()
    query(setup, "DROP TABLE IF EXISTS pgring_txn_t")
    query(setup, "CREATE TABLE pgring_txn_t(id int)")
    try:
        with Pgring(session_config(pool_size=1)) as p:
            # 1. A polite client: BEGIN, INSERT, then close (libpq sends Terminate).
            a = connect(p.port)
            a.autocommit = False
            query(a, "INSERT INTO pgring_txn_t VALUES (1)")
            a.close()

            # 2. A rude one: the socket just goes away mid-transaction (no Terminate).
            r = login(p.port)
            r.simple_query("BEGIN; INSERT INTO pgring_txn_t VALUES (2)")
            r.close()

            # 3. A client that sent half a message before vanishing.
            r = login(p.port)
            r.simple_query("BEGIN")
            r.send(message(b"Q", b"INSERT INTO pgring_txn_t VALUES (3)\0")[:10])
            r.close()

            # The next client gets the (only) server in a clean state.
            def next_client_works():
                c = connect(p.port)
                try:
                    check_eq(query_one(c, "SELECT 1"), 1)
                    check_eq(query_one(c, "SELECT count(*) FROM pgring_txn_t"), 0,
                             "rows visible through pgring")
                    query(c, "INSERT INTO pgring_txn_t VALUES (4)")  # not in a transaction
                    return True
                finally:
                    c.close()
            wait_until(next_client_works, 15, interval=0.2, what="a working next client")

            check_eq(query(setup, "SELECT id FROM pgring_txn_t ORDER BY id"), [(4,)],
                     "committed rows")
            check_eq(idle_in_transaction(setup, "pgring_test"), [],
                     "server connections left idle in transaction")
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_txn_t")
        setup.close()


def test_client_waits_for_busy_pool():
    # pool_size 1: a second client waits until the first one leaves, then runs.
    with Pgring(session_config(pool_size=1)) as p:
        a = connect(p.port)
        check_eq(query_one(a, "SELECT 1"), 1)
        result = {}

        def second():
            b = connect(p.port, connect_timeout=30)
            result["value"] = query_one(b, "SELECT 2")
            b.close()

        t = threading.Thread(target=second, daemon=True)
        t.start()
        wait_until(lambda: pool_count(p.port, "pgring_test", "cl_waiting") == 1, 15,
                   what="the second client waiting for the only server (SHOW POOLS cl_waiting)",
                   describe=lambda: pool_row(p.port, "pgring_test"))
        check("value" not in result, "second client ran while the only server was taken")
        a.close()
        t.join(30)
        check_eq(result.get("value"), 2, "second client's result")


def test_backend_pid_is_the_servers():
    """Session mode: the client keeps its server for the whole session, so BackendKeyData
    carries the server's real pid, as a direct connection does: pg_backend_pid() and
    pg_terminate_backend() agree with what the driver was told, and cancels still work (the
    secret stays pgring's), whichever reactor the cancel connection lands on."""
    config = pool_config(pool_mode="session", pool_size=4)
    config["workers"] = 2
    with Pgring(config) as p:
        for _ in range(4):  # clients land on both reactors
            c = connect(p.port)
            check_eq(c.get_backend_pid(), query_one(c, "SELECT pg_backend_pid()"),
                     "BackendKeyData pid vs pg_backend_pid()")
            c.close()
        c = connect(p.port)
        errors = []

        def sleeper():
            try:
                query(c, "SELECT pg_sleep(20)")
            except Exception as e:  # noqa: BLE001 - the cancel's error is what we want
                errors.append(e)
        t = threading.Thread(target=sleeper)
        t.start()
        time.sleep(0.5)
        for _ in range(3):  # SO_REUSEPORT: some of these land on the other reactor
            c.cancel()
            time.sleep(0.2)
        t.join(10)
        check(not t.is_alive(), "pg_sleep(20) was not canceled")
        check(errors and getattr(errors[0], "pgcode", None) == "57014",
              f"the canceled query's error: {errors}")
        check_eq(query_one(c, "SELECT 1"), 1, "the session after the cancel")
        # pg_terminate_backend() of the pid the client was told ends that client's session.
        monitor = direct_connect()
        check_eq(query_one(monitor, f"SELECT pg_terminate_backend({c.get_backend_pid()})"), True)
        monitor.close()
        # PostgreSQL's FATAL 57P01 reaches the idle client (test_errors.py compares it message
        # by message); libpq reports the closed session at the next query, as directly.
        try:
            query(c, "SELECT 1")
            fail("the session survived pg_terminate_backend() of its pid")
        except psycopg2.OperationalError:
            pass
        c.close()


if __name__ == "__main__":
    run_tests(globals())
