#!/usr/bin/python3
"""Session state in transaction mode (docs/transaction-pooling.md): state that cannot follow a client
from one server to another (temporary tables, SQL PREPARE, WITH HOLD cursors, session advisory
locks, LISTEN) never leaks silently. With session_state: pin (the default) the client keeps its
server for the rest of its session, and the server is clean before anyone else gets it; with
session_state: error the client gets SQLSTATE 0A000 and is disconnected."""


import psycopg2

from lib import (Background, Pgring, check, check_eq, connect, direct_connect, expect_error, fail,
                login, message,
                monitor_connect, parse_fields, pool_config, pool_count, pool_row, psql, query,
                query_one, run_tests, sqlstate_of, wait_until)

DB, USER = "app", "app"


def app_connect(p, **kwargs):
    kwargs.setdefault("connect_timeout", 30)
    return connect(p.port, db=DB, user=USER, **kwargs)


def hold_other_backend(p, pinned_pid, rounds=3):
    """pool_size 2: another client runs a few transactions, never on the pinned backend (the
    pinned client holds it even while idle). Returns that client."""
    other = app_connect(p)
    for k in range(rounds):
        check(query_one(other, "SELECT pg_backend_pid()") != pinned_pid,
              f"another client ran on the pinned backend {pinned_pid} (round {k})")
    return other


def test_temp_table_pins_the_client():
    with Pgring(pool_config(pool_size=2)) as p:
        a = app_connect(p)
        query(a, "CREATE TEMP TABLE pgring_tmp(x int)")
        pid = query_one(a, "SELECT pg_backend_pid()")
        other = hold_other_backend(p, pid)
        for k in range(5):
            query(a, "INSERT INTO pgring_tmp VALUES (%s)", (k,))
            check_eq(query_one(other, "SELECT to_regclass('pgring_tmp') IS NULL"), True,
                     "the other client sees A's temp table")
            check_eq(query_one(a, "SELECT pg_backend_pid()"), pid, f"A's backend (round {k})")
        a.autocommit = False
        check_eq(query_one(a, "SELECT sum(x) FROM pgring_tmp"), 10, "sum over the temp table")
        a.commit()
        a.close()
        other.close()


def test_pinned_server_is_clean_for_the_next_client():
    # pool_size 1: B waits while A is pinned, then gets A's old server without A's state.
    with Pgring(pool_config(pool_size=1)) as p:
        a = app_connect(p)
        query(a, "CREATE TEMP TABLE pgring_tmp_leak(x int)")
        query(a, "PREPARE pgring_leak_stmt AS SELECT 'pgring_leak'")
        query(a, "SELECT pg_advisory_lock(4711)")
        query(a, "LISTEN pgring_leak_chan")
        pid = query_one(a, "SELECT pg_backend_pid()")

        def b_client():
            b = app_connect(p, connect_timeout=30)
            try:
                return query(b, "SELECT pg_backend_pid(), to_regclass('pgring_tmp_leak'), "
                                "(SELECT count(*) FROM pg_prepared_statements "
                                "WHERE name = 'pgring_leak_stmt' OR statement LIKE '%pgring_leak%'), "
                                "(SELECT count(*) FROM pg_listening_channels()), "
                                "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                "AND pid = pg_backend_pid())")[0]
            finally:
                b.close()

        waiting = Background(b_client)
        wait_until(lambda: pool_count(p.port, DB, "cl_waiting", user=USER) == 1, 15,
                   what="B waiting for the only server (SHOW POOLS cl_waiting)",
                   describe=lambda: pool_row(p.port, DB, user=USER))
        # A keeps its server while B waits (a pinned client never releases it).
        for k in range(3):
            check_eq(query_one(a, "SELECT count(*) FROM pgring_tmp_leak"), 0)
            check(not waiting.done(), f"B ran while A was pinned to the only server (round {k})")
        a.close()
        b_pid, tmp, prepared, channels, locks = waiting.result(30, "B's query")
        # Whether B got A's old backend (cleaned) or a new one, none of A's state is there.
        check_eq(tmp, None, f"A's temp table seen by B (A's backend {pid}, B's {b_pid})")
        check_eq(prepared, 0, "A's prepared statements seen by B")
        check_eq(channels, 0, "A's LISTEN seen by B")
        check_eq(locks, 0, "A's advisory lock held on B's backend")
        monitor = monitor_connect()
        check_eq(query_one(monitor, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND objid = 4711"), 0, "A's advisory lock still held")
        monitor.close()


def test_sql_prepare_pins_the_client_without_the_statement_cache():
    """prepared_statements: 0 turns the statement cache off: an SQL-level PREPARE is session
    state again, and pins (with the cache it is shared: test_sql_prepare.py)."""
    with Pgring(pool_config(pool_size=2, prepared_statements=0)) as p:
        a = app_connect(p)
        query(a, "PREPARE pgring_double(int) AS SELECT $1 * 2")
        pid = query_one(a, "SELECT pg_backend_pid()")
        other = hold_other_backend(p, pid)
        for k in range(5):
            check_eq(query_one(a, "EXECUTE pgring_double(%s)", (k,)), 2 * k, f"EXECUTE #{k}")
            check_eq(query_one(other, "SELECT count(*) FROM pg_prepared_statements"), 0,
                     "the other client sees A's prepared statement")
        a.autocommit = False
        check_eq(query_one(a, "EXECUTE pgring_double(21)"), 42, "EXECUTE in a transaction")
        a.commit()
        a.autocommit = True
        query(a, "DEALLOCATE pgring_double")
        expect_error(lambda: query(a, "EXECUTE pgring_double(1)"), "26000")
        a.close()
        other.close()


def test_advisory_lock_pins_the_client():
    with Pgring(pool_config(pool_size=2)) as p:
        a = app_connect(p)
        check_eq(query_one(a, "SELECT pg_advisory_lock(4242) IS NOT NULL"), True)
        pid = query_one(a, "SELECT pg_backend_pid()")
        other = hold_other_backend(p, pid)
        check_eq(query_one(other, "SELECT pg_try_advisory_lock(4242)"), False,
                 "another client got A's advisory lock")
        check_eq(query_one(a, "SELECT pg_backend_pid()"), pid, "A's backend")
        check_eq(query_one(a, "SELECT pg_advisory_unlock(4242)"), True,
                 "A unlocks its lock in a later transaction")
        check_eq(query_one(other, "SELECT pg_try_advisory_lock(4242)"), True,
                 "the lock after A released it")
        check_eq(query_one(other, "SELECT pg_advisory_unlock(4242)"), True)
        a.close()
        other.close()


def test_with_hold_cursor_pins_the_client():
    with Pgring(pool_config(pool_size=2)) as p:
        a = app_connect(p)
        a.autocommit = False
        query(a, "DECLARE pgring_hold CURSOR WITH HOLD FOR SELECT g FROM generate_series(1, 9) g")
        a.commit()
        a.autocommit = True
        pid = query_one(a, "SELECT pg_backend_pid()")
        other = hold_other_backend(p, pid)
        got = []
        for _ in range(3):
            got += [r[0] for r in query(a, "FETCH 3 FROM pgring_hold")]
        check_eq(got, list(range(1, 10)), "rows fetched from the WITH HOLD cursor")
        query(a, "CLOSE pgring_hold")
        a.close()
        other.close()


def error_policy_config(**defaults):
    return pool_config(pool_size=1, session_state="error", **defaults)


def check_refused(p, sql, what):
    """`sql` is refused with 0A000 and the connection closed, as seen by a raw client, by psql
    and by psycopg2 (which reports a FATAL error followed by a closed socket only as
    "server closed the connection unexpectedly", without the SQLSTATE, also from PostgreSQL
    itself, so it can only check that the query failed and the connection is gone)."""
    r = login(p.port, user=USER, db=DB)
    check_eq(r.simple_query("SELECT 1"), [["1"]])
    r.send(message(b"Q", sql.encode() + b"\0"))
    msgs = r.read_until_close()  # fails the test if the connection stays open
    r.close()
    errors = [parse_fields(body) for kind, body in msgs if kind == b"E"]
    check(errors, f"{what}: no ErrorResponse before the connection closed; got "
                  f"{[k for k, _ in msgs]}")
    check_eq(errors[0].get("C"), "0A000", f"{what}: SQLSTATE of the raw client's error "
                                          f"({errors[0]})")
    check(errors[0].get("M", "").startswith("pgring: "),
          f"{what}: the error does not come from pgring: {errors[0]}")
    check(not any(kind in (b"C", b"Z") for kind, _ in msgs),
          f"{what}: the statement ran: {[k for k, _ in msgs]}")

    rc, _, err = psql(p.port, f"SELECT 1; {sql}", db=DB, user=USER,
                      extra_args=["-v", "VERBOSITY=verbose"])
    check(rc != 0 and "0A000" in err, f"{what}: psql exit {rc}, stderr: {err}")

    conn = app_connect(p)
    check_eq(query_one(conn, "SELECT 1"), 1)
    try:
        query(conn, sql)
    except psycopg2.Error as e:
        check(sqlstate_of(e) in (None, "0A000"), f"{what}: psycopg2 error {e}")
    else:
        fail(f"{what}: {sql!r} succeeded for psycopg2 under session_state: error")
    check(conn.closed != 0, f"{what}: psycopg2's connection is still open after the error")
    conn.close()


def next_client_is_clean(p):
    b = app_connect(p)
    try:
        check_eq(query(b, "SELECT to_regclass('pgring_refused'), "
                          "(SELECT count(*) FROM pg_prepared_statements), "
                          "(SELECT count(*) FROM pg_listening_channels())"), [(None, 0, 0)],
                 "session state left on the server for the next client")
    finally:
        b.close()


def test_error_policy_refuses_temp_table():
    with Pgring(error_policy_config()) as p:
        check_refused(p, "CREATE TEMP TABLE pgring_refused(x int)", "CREATE TEMP TABLE")
        next_client_is_clean(p)
        check_refused(p, "CREATE TEMPORARY TABLE pgring_refused AS SELECT 1 AS x",
                      "CREATE TEMPORARY TABLE AS")
        next_client_is_clean(p)


def test_error_policy_refuses_other_session_state():
    statements = {
        # (A lone PREPARE is shared through the statement cache: only one among other
        # statements is session state.)
        "PREPARE": "SELECT 1; PREPARE pgring_refused_stmt AS SELECT 1",
        "LISTEN": "LISTEN pgring_refused_chan",
        "advisory lock": "SELECT pg_advisory_lock(4343)",
        "WITH HOLD cursor": "DECLARE pgring_refused_cur CURSOR WITH HOLD FOR SELECT 1",
    }
    # (listen: pin: a lone LISTEN is session state again; with listen: shared it is no state of
    # the server's at all: test_listen.py.)
    with Pgring(error_policy_config(listen="pin")) as p:
        for what, sql in statements.items():
            check_refused(p, sql, what)
            next_client_is_clean(p)
        monitor = monitor_connect()
        wait_until(lambda: query_one(monitor, "SELECT count(*) FROM pg_locks WHERE "
                                              "locktype = 'advisory' AND objid = 4343") == 0,
                   5, what="the refused advisory lock to be gone")
        monitor.close()
        # Plain transactions still work under the error policy.
        c = app_connect(p)
        c.autocommit = False
        check_eq(query_one(c, "SELECT 41 + 1"), 42)
        c.commit()
        c.close()


# State that pins a client, and the statement that ends it (the pin goes with it).
PIN_AND_RELEASE = [("LISTEN pgring_channel", "UNLISTEN *"),
                   ("CREATE TEMP TABLE pgring_gone(x int)", "DISCARD TEMP"),
                   ("SELECT pg_advisory_lock(7)", "SELECT pg_advisory_unlock_all()"),
                   ("DECLARE pgring_held CURSOR WITH HOLD FOR SELECT 1", "CLOSE ALL"),
                   ("LISTEN pgring_channel", "DISCARD ALL")]


def test_pin_ends_with_the_state():
    """pool_size 1: a pinned client keeps the one server, so another client waits; once the
    state is gone (UNLISTEN *, DISCARD TEMP, pg_advisory_unlock_all(), CLOSE ALL, DISCARD ALL)
    the server is shared again, at the end of that statement's transaction. (listen: pin: with
    listen: shared a lone LISTEN pins nothing.)"""
    with Pgring(pool_config(pool_size=1, listen="pin")) as p:
        for pin, release in PIN_AND_RELEASE:
            a = app_connect(p)
            b = app_connect(p)
            query(a, pin)
            waiting = Background(lambda: query_one(b, "SELECT 1"))
            wait_until(lambda: pool_count(p.port, DB, "cl_waiting", user=USER) == 1, 15,
                       what=f"the other client waiting while {pin!r} pins the server",
                       describe=lambda: pool_row(p.port, DB, user=USER))
            check(not waiting.done(), f"the other client ran while {pin!r} pinned the server")
            query(a, release)
            check_eq(waiting.result(15, f"the other client after {release!r}"), 1,
                     f"the other client after {release!r}")
            check_eq(query_one(a, "SELECT 2"), 2, f"the first client after {release!r}")
            a.close()
            b.close()


def compare_two_sessions(script, config):
    """script(a, b) on two direct autocommit sessions, then on two pgring clients (`config`):
    the results must be the same."""
    a = direct_connect(db=DB, user=USER, password="secret")
    b = direct_connect(db=DB, user=USER, password="secret")
    a.autocommit = b.autocommit = True
    expected = script(a, b)
    a.close()
    b.close()
    with Pgring(config) as p:
        a = app_connect(p)
        b = app_connect(p)
        check_eq(script(a, b), expected, "through pgring, as direct sessions")
        a.close()
        b.close()


def settings_and_temp_script(a, b):
    """a creates session state two ways PostgreSQL allows besides SET and CREATE TEMP; b holds
    a transaction open meanwhile, so that in transaction mode a's next transaction could only
    run on another server. What each sees."""
    query(a, "SELECT set_config('statement_timeout', '5s', false)")
    query(a, "SELECT 41 AS x INTO TEMP pgring_into")
    b.autocommit = False
    seen = [query_one(b, "SHOW statement_timeout")]
    seen.append(query_one(a, "SHOW statement_timeout"))
    seen.append(query_one(a, "SELECT x + 1 FROM pgring_into"))
    b.commit()
    b.autocommit = True
    seen.append(query_one(b, "SHOW statement_timeout"))
    return seen


def test_set_config_and_select_into_temp_pin_the_client():
    """set_config(name, value, false) and SELECT ... INTO TEMP create session state as SET and
    CREATE TEMP do: the client keeps its server (the other client never sees the setting), as
    two direct sessions would behave."""
    compare_two_sessions(settings_and_temp_script, pool_config(pool_size=2))


def on_commit_drop_script(a, b):
    """a uses temporary tables that drop when their transaction ends (in a transaction block,
    and alone); then b needs a server: what each sees."""
    a.autocommit = False
    query(a, "CREATE TEMP TABLE pgring_ocd(x int) ON COMMIT DROP")
    query(a, "INSERT INTO pgring_ocd VALUES (1), (2)")
    seen = [query_one(a, "SELECT sum(x) FROM pgring_ocd")]
    a.commit()
    a.autocommit = True
    query(a, "CREATE TEMP TABLE pgring_ocd2 ON COMMIT DROP AS SELECT 1 AS x")
    seen.append(query_one(b, "SELECT 40 + 2"))
    seen.append(query_one(a, "SELECT to_regclass('pgring_ocd') IS NULL "
                             "AND to_regclass('pgring_ocd2') IS NULL"))
    return seen


def test_temp_table_on_commit_drop_pins_nothing():
    """A temporary table ON COMMIT DROP is gone with its transaction: no session state, so the
    client keeps no server (pool_size 1: b is served at once; a pinned a would make b wait until
    query_wait), and both see what two direct sessions see."""
    compare_two_sessions(on_commit_drop_script,
                         pool_config(pool_size=1, timeouts={"query_wait": "5s"}))


if __name__ == "__main__":
    run_tests(globals())
