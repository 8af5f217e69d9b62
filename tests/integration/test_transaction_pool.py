#!/usr/bin/python3
"""Transaction pooling: many clients share few servers, a server stays linked for a whole
transaction (and for unanswered requests: pipelines, Flush, suspended portals, COPY), errors and
disconnects leave the server clean for the next client, NOTICE and LISTEN/NOTIFY get through.

Pooled traffic goes to database app as user app; direct connections made for setup and
sampling use monitor_connect(), which count_backends() does not count."""

import io
import os
import select
import socket
import subprocess
import threading
import time

from lib import (BackendSampler, Background, FLUSH_MESSAGE, LIBPQ_CLIENT, Pgring, SYNC_MESSAGE,
                bind_message, check, check_eq, close_message, connect, data_row_values,
                describe_message, error_fields_in, execute_message, expect_error, fail,
                idle_in_transaction, log, login, message, monitor_connect, parse_message,
                pool_config, pool_count, pool_row, query, query_one, read_messages_until,
                read_until_ready, run_clients, run_tests, skip_test, wait_no_backends,
                wait_notifications, wait_until,
                PGHOST, PGPORT, backends)

DB, USER = "app", "app"


def app_connect(p, **kwargs):
    kwargs.setdefault("connect_timeout", 60)
    return connect(p.port, db=DB, user=USER, **kwargs)


def app_login(p):
    return login(p.port, user=USER, db=DB, timeout=30)


def one_shot(p, sql):
    """Connect through pgring, run one query, disconnect; return its single value."""
    conn = app_connect(p)
    try:
        return query_one(conn, sql)
    finally:
        conn.close()


def wait_queued(p, count=1, what="a client queued for a server"):
    """Wait until SHOW POOLS counts `count` clients of the app pool waiting for a server."""
    wait_until(lambda: pool_count(p.port, DB, "cl_waiting", user=USER) == count, 15,
               what=f"{what} (SHOW POOLS cl_waiting {count})",
               describe=lambda: pool_row(p.port, DB, user=USER))


def fresh_table(name, columns):
    setup = monitor_connect(db=DB, user=USER)
    query(setup, f"DROP TABLE IF EXISTS {name}")
    query(setup, f"CREATE TABLE {name} ({columns})")
    return setup


def test_many_clients_share_few_servers():
    clients, pool_size, rounds = 40, 3, 20
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    setup = fresh_table("pgring_tx_rows", "client int, n int, pid int")
    try:
        with Pgring(pool_config(pool_size=pool_size)) as p, BackendSampler(DB) as sampler:
            pids = set()

            def client(i):
                conn = app_connect(p)
                try:
                    for j in range(rounds):
                        kind = j % 3
                        if kind == 0:  # an explicit transaction, statement by statement
                            conn.autocommit = False
                            query(conn, "INSERT INTO pgring_tx_rows VALUES (%s, %s, "
                                        "pg_backend_pid())", (i, j))
                            n, pid = query(conn, "SELECT count(*), pg_backend_pid() FROM "
                                                 "pgring_tx_rows WHERE client = %s", (i,))[0]
                            conn.commit()
                            conn.autocommit = True
                        elif kind == 1:  # autocommit statements
                            query(conn, "INSERT INTO pgring_tx_rows VALUES (%s, %s, "
                                        "pg_backend_pid())", (i, j))
                            n, pid = query(conn, "SELECT count(*), pg_backend_pid() FROM "
                                                 "pgring_tx_rows WHERE client = %s", (i,))[0]
                        else:  # a whole transaction in one Query message
                            query(conn, "BEGIN; INSERT INTO pgring_tx_rows VALUES (%s, %s, "
                                        "pg_backend_pid()); COMMIT", (i, j))
                            n, pid = query(conn, "SELECT count(*), pg_backend_pid() FROM "
                                                 "pgring_tx_rows WHERE client = %s", (i,))[0]
                        if n != j + 1:
                            raise AssertionError(f"round {j}: sees {n} own rows, expected {j + 1}")
                        pids.add(pid)
                finally:
                    conn.close()

            started = time.monotonic()
            errors = run_clients(client, clients, timeout=180)
            elapsed = time.monotonic() - started
        log(f"{clients} clients x {rounds} transactions on pool_size {pool_size} in "
            f"{elapsed:.1f}s; backends: max {sampler.max} over {len(sampler.samples)} samples; "
            f"distinct backend pids seen by clients: {len(pids)}")
        check(not errors, f"{len(errors)} client errors:\n" + "\n".join(errors[:20]))
        sampler.check_max(pool_size)
        check(sampler.max >= 1, "never saw a server connection")
        check(len(pids) <= pool_size,
              f"clients ran on {len(pids)} different backends, pool_size is {pool_size}")
        check_eq(query_one(setup, "SELECT count(*) FROM pgring_tx_rows"), clients * rounds,
                 "rows committed")
        check_eq(query_one(setup, "SELECT count(DISTINCT (client, n)) FROM pgring_tx_rows"),
                 clients * rounds, "distinct (client, round) rows")
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_tx_rows")
        setup.close()
        monitor.close()


def test_transaction_keeps_its_server():
    with Pgring(pool_config(pool_size=2)) as p:
        a, b, c = app_connect(p), app_connect(p), app_connect(p)

        # Within BEGIN ... COMMIT the backend never changes, while others run queries.
        stop = threading.Event()

        def hammer():
            h = app_connect(p)
            try:
                while not stop.is_set():
                    query(h, "SELECT pg_sleep(0.005)")
            finally:
                h.close()

        hammers = [Background(hammer) for _ in range(2)]
        try:
            for _ in range(3):
                a.autocommit = False
                first = query_one(a, "SELECT pg_backend_pid()")
                for k in range(5):
                    time.sleep(0.03)
                    check_eq(query_one(a, "SELECT pg_backend_pid()"), first,
                             f"backend pid inside a transaction (statement {k + 2})")
                a.commit()
                a.autocommit = True
        finally:
            stop.set()
            for h in hammers:
                h.result(30, "hammer client")

        # Across transactions the backend may change. pool_size 2: A takes s1, B takes s2,
        # A commits, so C can only get s1; B commits, so A's next query can only get s2.
        a.autocommit = b.autocommit = c.autocommit = False
        s1 = query_one(a, "SELECT pg_backend_pid()")
        s2 = query_one(b, "SELECT pg_backend_pid()")
        check(s1 != s2, f"two open transactions share backend {s1}")
        a.commit()
        check_eq(query_one(c, "SELECT pg_backend_pid()"), s1, "C's backend (the only idle one)")
        b.commit()
        a.autocommit = True
        check_eq(query_one(a, "SELECT pg_backend_pid()"), s2,
                 "A's backend in its next transaction (C holds the other one)")
        c.commit()
        for conn in (a, b, c):
            conn.close()


def test_simple_query_forms():
    with Pgring(pool_config(pool_size=1)) as p:
        r = app_login(p)
        other = app_connect(p)
        # Several statements in one Query: one result per statement, one ReadyForQuery.
        check_eq(r.simple_query("SELECT 1; SELECT 2"), [["1"], ["2"]], "multi-statement rows")
        check_eq(query_one(other, "SELECT 3"), 3)

        # The empty query: EmptyQueryResponse, then ReadyForQuery 'I'.
        for sql in (b"", b"  ", b";"):
            r.send(message(b"Q", sql + b"\0"))
            msgs, status = read_until_ready(r)
            kinds = [k for k, _ in msgs]
            check(b"I" in kinds, f"query {sql!r}: no EmptyQueryResponse in {kinds}")
            check_eq(status, "I", f"query {sql!r}: transaction status")
            check_eq(query_one(other, "SELECT 4"), 4)

        # An error in the middle of a multi-statement query aborts the rest (implicit
        # transaction); the server is fine afterwards for this client and the other.
        r.send(message(b"Q", b"SELECT 1; SELECT 1/0; SELECT 3\0"))
        msgs, status = read_until_ready(r)
        rows = [data_row_values(b) for k, b in msgs if k == b"D"]
        errors = error_fields_in(msgs)
        check_eq(rows, [["1"]], "rows before the error")
        check_eq([e.get("C") for e in errors], ["22012"], "errors")
        check_eq(status, "I", "transaction status after the failed multi-statement query")
        check_eq(r.simple_query("SELECT 5"), [["5"]])
        check_eq(query_one(other, "SELECT 6"), 6)

        # A multi-statement query that leaves a transaction open keeps the server: the other
        # client (pool_size 1) waits until it ends.
        rows = r.simple_query("BEGIN; SELECT pg_backend_pid()")
        pid = rows[0][0]
        waiting = Background(lambda: one_shot(p, "SELECT 'other done'"))
        wait_queued(p, what="the other client waiting for the only server")
        check(not waiting.done(), "another client ran while a transaction held the only server")
        check_eq(r.simple_query("SELECT pg_backend_pid(); COMMIT"), [[pid]],
                 "backend after BEGIN in an earlier Query")
        check_eq(waiting.result(30, "the waiting client"), "other done")
        r.terminate()
        other.close()


def test_error_inside_transaction():
    setup = fresh_table("pgring_tx_err", "id int")
    try:
        with Pgring(pool_config(pool_size=1)) as p:
            a, b = app_connect(p), app_connect(p)
            a.autocommit = False
            query(a, "INSERT INTO pgring_tx_err VALUES (1)")
            expect_error(lambda: query(a, "SELECT 1/0"), "22012")
            expect_error(lambda: query(a, "SELECT 1"), "25P02")  # transaction aborted
            a.rollback()
            # The next transaction of A is fine; so is B on the same (only) server.
            query(a, "INSERT INTO pgring_tx_err VALUES (2)")
            check_eq(query_one(a, "SELECT count(*) FROM pgring_tx_err"), 1)
            a.commit()
            check_eq(query_one(b, "SELECT array_agg(id) FROM pgring_tx_err"), [2],
                     "rows seen by the next client")
            # An error in an autocommit statement.
            a.autocommit = True
            expect_error(lambda: query(a, "INSERT INTO pgring_tx_err VALUES ('x')"), "22P02")
            check_eq(query_one(b, "SELECT count(*) FROM pgring_tx_err"), 1)
            check_eq(query_one(a, "SELECT 7"), 7)
            # A syntax error inside an explicit transaction, then ROLLBACK as plain SQL.
            query(a, "BEGIN")
            expect_error(lambda: query(a, "SELEC 1"), "42601")
            query(a, "ROLLBACK")
            check_eq(query_one(b, "SELECT 8"), 8)
            a.close()
            b.close()
        check_eq(query(setup, "SELECT id FROM pgring_tx_err"), [(2,)], "committed rows")
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_tx_err")
        setup.close()


def test_libpq_pipelines():
    if not LIBPQ_CLIENT or not os.access(LIBPQ_CLIENT, os.X_OK):
        fail("PGRING_LIBPQ_CLIENT is not set to the built libpq_client")
    usage = subprocess.run([LIBPQ_CLIENT], capture_output=True, text=True, timeout=10)
    if "transaction" not in usage.stderr:
        skip_test(f"{LIBPQ_CLIENT} predates its 'transaction' mode: rebuild it (usage: "
                  f"{usage.stderr.strip()!r})")
    with Pgring(pool_config(pool_size=2)) as p:
        stop = threading.Event()

        def hammer():
            h = app_connect(p)
            try:
                n = 0
                while not stop.is_set():
                    query(h, "SELECT pg_sleep(0.01)")
                    n += 1
                return n
            finally:
                h.close()

        hammers = [Background(hammer) for _ in range(2)]
        try:
            for _ in range(2):
                r = subprocess.run(
                    [LIBPQ_CLIENT, f"host=127.0.0.1 port={p.port} dbname={DB} user={USER}",
                     "transaction"],
                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                    env={**os.environ, "PGCONNECT_TIMEOUT": "10", "PGSSLMODE": "disable"})
                out = (r.stdout + r.stderr).strip()
                check(r.returncode == 0 and out.endswith("ok"),
                      f"libpq_client transaction -> {r.returncode}:\n{out}")
        finally:
            stop.set()
            counts = [h.result(30, "hammer client") for h in hammers]
        check(all(n > 0 for n in counts), f"hammer clients made no progress: {counts}")


def test_flush_and_suspended_portal_keep_the_server():
    with Pgring(pool_config(pool_size=1)) as p:
        r = app_login(p)
        # Execute with a row limit, then Flush (no Sync): PortalSuspended comes back, and the
        # server stays with this client until the Sync, so another client (pool_size 1) waits.
        r.send(parse_message("SELECT g FROM generate_series(1, 10) g") + bind_message()
               + execute_message(max_rows=3) + FLUSH_MESSAGE)
        msgs = read_messages_until(r, (b"s", b"E", b"Z"))
        kinds = [k for k, _ in msgs]
        check_eq(kinds, [b"1", b"2", b"D", b"D", b"D", b"s"], "messages up to PortalSuspended")
        waiting = Background(lambda: one_shot(p, "SELECT 'other done'"))
        wait_queued(p, what="the other client waiting while the portal is suspended")
        check(not waiting.done(), "another client ran while a portal was suspended on the only "
                                  "server (the link was released before the Sync)")
        r.send(execute_message(max_rows=0) + SYNC_MESSAGE)
        msgs, status = read_until_ready(r)
        rows = [data_row_values(b)[0] for k, b in msgs if k == b"D"]
        check_eq(rows, [str(i) for i in range(4, 11)], "rest of the portal")
        check(any(k == b"C" for k, _ in msgs), f"no CommandComplete: {msgs}")
        check_eq(status, "I", "status after the Sync")
        check_eq(waiting.result(30, "the waiting client"), "other done")

        # A named portal inside an explicit transaction, fetched over several Syncs (what
        # asyncpg's cursors do): the transaction keeps the server, so the portal survives.
        check_eq(r.simple_query("BEGIN"), [])
        r.send(parse_message("SELECT g FROM generate_series(1, 7) g") + bind_message(portal="cur")
               + execute_message("cur", 3) + SYNC_MESSAGE)
        msgs, status = read_until_ready(r)
        check_eq([k for k, _ in msgs], [b"1", b"2", b"D", b"D", b"D", b"s", b"Z"], "first batch")
        check_eq(status, "T", "status inside the transaction")
        other = Background(lambda: one_shot(p, "SELECT 'second other'"))
        wait_queued(p, what="the other client waiting while the transaction holds the server")
        got = [data_row_values(b)[0] for k, b in msgs if k == b"D"]
        for _ in range(3):
            time.sleep(0.1)
            r.send(execute_message("cur", 3) + SYNC_MESSAGE)
            msgs, status = read_until_ready(r)
            errors = error_fields_in(msgs)
            check(not errors, f"fetching from the portal: {errors}")
            got += [data_row_values(b)[0] for k, b in msgs if k == b"D"]
        check_eq(got, [str(i) for i in range(1, 8)], "rows fetched from the named portal")
        check(not other.done(), "another client ran inside this client's transaction")
        check_eq(r.simple_query("COMMIT"), [])
        check_eq(other.result(30, "the waiting client"), "second other")
        r.terminate()


def test_unnamed_statement_bound_after_a_sync():
    # In PostgreSQL the unnamed statement lives until the next Parse of it (or a simple Query),
    # across Syncs. asyncpg with statement_cache_size=0 relies on that: it sends Parse,
    # Describe, Flush; then, when it garbage-collects an old statement, Close + Sync; and only
    # then Bind, Execute, Sync. If pgring releases the server at that Sync's ReadyForQuery, the
    # Bind runs on another server: there it fails (no unnamed statement) or, worse, runs
    # another client's unnamed statement and returns that client's result.
    with Pgring(pool_config(pool_size=2)) as p:
        r = app_login(p)
        r.send(parse_message("SELECT 'mine'") + describe_message(b"S") + FLUSH_MESSAGE)
        msgs = read_messages_until(r, (b"T", b"n", b"E"))
        check_eq([k for k, _ in msgs], [b"1", b"t", b"T"], "Parse/Describe answers")
        r.send(close_message(b"S", "pgring_gone") + SYNC_MESSAGE)
        msgs, status = read_until_ready(r)
        check_eq([k for k, _ in msgs], [b"3", b"Z"], "Close/Sync answers")

        # Another client now holds a transaction with its own unnamed statement.
        other = app_login(p)
        check_eq(other.simple_query("BEGIN"), [])
        other.send(parse_message("SELECT 'other'") + bind_message() + execute_message()
                   + SYNC_MESSAGE)
        msgs, status = read_until_ready(other)
        check_eq([data_row_values(b) for k, b in msgs if k == b"D"], [["other"]])
        check_eq(status, "T", "the other client's transaction")

        r.send(bind_message() + execute_message() + SYNC_MESSAGE)
        msgs, status = read_until_ready(r)
        errors = error_fields_in(msgs)
        check(not errors, f"Bind of the unnamed statement after a Sync failed: {errors}")
        check_eq([data_row_values(b) for k, b in msgs if k == b"D"], [["mine"]],
                 "rows from the client's own unnamed statement")
        check_eq(other.simple_query("SELECT 'still other'; COMMIT"), [["still other"]])
        r.terminate()
        other.terminate()


def error_skip_script(conn):
    """An Execute fails before the client's Sync; the client then sends a simple Query and a
    cached-looking Parse before that Sync, then a Query after it. Returns the message types of
    each answer and the rows of the last Query."""
    conn.send(parse_message("SELECT 1/0") + bind_message() + execute_message() + FLUSH_MESSAGE)
    first = [k for k, _ in read_messages_until(conn, (b"E",))]
    # PostgreSQL skips everything up to the Sync, the Query and the Parse included.
    conn.send(message(b"Q", b"SELECT 'skipped'\0") + parse_message("SELECT 2", name="s_skip")
              + SYNC_MESSAGE)
    msgs, status = read_until_ready(conn)
    second = [k for k, _ in msgs]
    conn.send(message(b"Q", b"SELECT 'after'\0"))
    msgs, _ = read_until_ready(conn)
    rows = [data_row_values(b) for k, b in msgs if k == b"D"]
    return first, second, status, rows


def test_messages_skipped_after_an_error_get_no_reply():
    # After an error in the extended protocol PostgreSQL discards every message up to the next
    # Sync, a simple Query among them: the ReadyForQuery that follows answers the Sync. pgring
    # must not take it for the Query's and then wait for a second one.
    direct = login(PGPORT, user=USER, db=DB, password="secret", timeout=30)
    expected = error_skip_script(direct)
    direct.terminate()
    check_eq(expected, ([b"1", b"E"], [b"Z"], "I", [["after"]]), "direct PostgreSQL")
    with Pgring(pool_config(pool_size=1)) as p:
        r = app_login(p)
        check_eq(error_skip_script(r), expected, "through pgring, as PostgreSQL")
        # Every request was answered: the server went back to the pool, clean, and another
        # client gets it.
        wait_until(lambda: pool_count(p.port, DB, "sv_idle", user=USER) == 1, 15,
                   what="the server back in the pool (SHOW POOLS sv_idle 1)",
                   describe=lambda: pool_row(p.port, DB, user=USER))
        check_eq(one_shot(p, "SELECT 'next client'"), "next client")
        r.terminate()


def failed_parse_script(conn):
    """Names whose Parse failed or was skipped after an error, then prepared again. Returns each
    answer as message types (with the SQLSTATE of errors) and the rows of the last."""
    def answer(data):
        conn.send(data)
        msgs, _ = read_until_ready(conn)
        kinds = [k if k != b"E" else error_fields_in([(k, b)])[0].get("C") for k, b in msgs]
        return kinds, [data_row_values(b) for k, b in msgs if k == b"D"]

    out = []
    # A Parse that fails: PostgreSQL never creates the name.
    out.append(answer(parse_message("SELEC 1", name="s_fix") + SYNC_MESSAGE))
    # A text prepared once (pgring keeps it on the server), then the same text under a second
    # name in a batch that fails before it: skipped, so that name does not exist either.
    out.append(answer(parse_message("SELECT 3", name="s_once") + SYNC_MESSAGE))
    out.append(answer(parse_message("SELEC 2") + parse_message("SELECT 2", name="s_skipped")
                      + parse_message("SELECT 3", name="s_same") + SYNC_MESSAGE))
    # Every name is free: prepared again and run.
    run = b""
    for name, sql in (("s_fix", "SELECT 1"), ("s_skipped", "SELECT 2"), ("s_same", "SELECT 3")):
        run += parse_message(sql, name=name) + bind_message(statement=name) + execute_message()
    out.append(answer(run + SYNC_MESSAGE))
    return out


def test_failed_parse_forgets_the_name():
    direct = login(PGPORT, user=USER, db=DB, password="secret", timeout=30)
    expected = failed_parse_script(direct)
    direct.terminate()
    check_eq(expected[0][0], ["42601", b"Z"], "direct PostgreSQL: the failed Parse")
    check_eq(expected[-1][1], [["1"], ["2"], ["3"]], "direct PostgreSQL: every name prepared again")
    with Pgring(pool_config(pool_size=1)) as p:
        r = app_login(p)
        check_eq(failed_parse_script(r), expected, "through pgring, as PostgreSQL")
        r.terminate()


def test_named_cursor_in_transaction():
    # psycopg2 named cursors: DECLARE, then FETCH FORWARD itersize, inside one transaction.
    with Pgring(pool_config(pool_size=2)) as p:
        conns = [app_connect(p) for _ in range(3)]

        def fetch_all(i):
            conn = conns[i]
            conn.autocommit = False
            pid = query_one(conn, "SELECT pg_backend_pid()")
            cur = conn.cursor(name=f"pgring_cur_{i}")
            cur.itersize = 100
            cur.execute("SELECT g, pg_backend_pid() FROM generate_series(1, 2000) g")
            total, pids = 0, set()
            for g, backend in cur:
                total += g
                pids.add(backend)
            cur.close()
            check_eq(pids, {pid}, "backends that served the cursor")
            conn.commit()
            check_eq(total, 2000 * 2001 // 2, "sum over the cursor")

        errors = run_clients(fetch_all, len(conns), timeout=60)
        check(not errors, "\n".join(errors))
        for conn in conns:
            conn.close()


def test_copy_in_and_out():
    setup = fresh_table("pgring_tx_copy", "a int, b text")
    try:
        with Pgring(pool_config(pool_size=1)) as p:
            a, b = app_connect(p), app_connect(p)
            with a.cursor() as cur:
                # COPY FROM STDIN, text, as an autocommit statement.
                cur.copy_expert("COPY pgring_tx_copy FROM STDIN",
                                io.StringIO("".join(f"{i}\trow{i}\n" for i in range(3000))))
                check_eq(cur.rowcount, 3000, "rows copied in")
            check_eq(query_one(b, "SELECT count(*) FROM pgring_tx_copy"), 3000)
            with a.cursor() as cur:
                out = io.StringIO()
                cur.copy_expert("COPY (SELECT * FROM pgring_tx_copy ORDER BY a) TO STDOUT", out)
            lines = out.getvalue().splitlines()
            check_eq(len(lines), 3000, "COPY OUT lines")
            check_eq(lines[1234], "1234\trow1234", "line 1234")

            # Binary both ways.
            with a.cursor() as cur:
                binary = io.BytesIO()
                cur.copy_expert("COPY (SELECT * FROM pgring_tx_copy WHERE a < 1000) TO STDOUT "
                                "(FORMAT binary)", binary)
            check(binary.getvalue().startswith(b"PGCOPY\n\xff\r\n\0"),
                  f"binary COPY header: {binary.getvalue()[:11]!r}")
            check_eq(query_one(b, "SELECT 1"), 1)
            with a.cursor() as cur:
                binary.seek(0)
                cur.copy_expert("COPY pgring_tx_copy FROM STDIN (FORMAT binary)", binary)
            check_eq(query_one(b, "SELECT count(*) FROM pgring_tx_copy"), 4000)
            check_eq(query_one(b, "SELECT count(*) FROM pgring_tx_copy WHERE a < 1000"), 2000)

            # COPY inside an explicit transaction, rolled back.
            a.autocommit = False
            with a.cursor() as cur:
                cur.copy_expert("COPY pgring_tx_copy FROM STDIN", io.StringIO("-1\tgone\n"))
            check_eq(query_one(a, "SELECT count(*) FROM pgring_tx_copy WHERE a = -1"), 1)
            a.rollback()
            a.autocommit = True
            check_eq(query_one(b, "SELECT count(*) FROM pgring_tx_copy WHERE a = -1"), 0)

            # Bad COPY data: an error, and the server is fine afterwards.
            def bad_copy():
                with a.cursor() as cur:
                    cur.copy_expert("COPY pgring_tx_copy FROM STDIN",
                                    io.StringIO("1\tok\nnot-a-number\tbad\n"))
            expect_error(bad_copy, "22P02")
            check_eq(query_one(a, "SELECT count(*) FROM pgring_tx_copy"), 4000)
            check_eq(query_one(b, "SELECT count(*) FROM pgring_tx_copy"), 4000)
            a.close()
            b.close()
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_tx_copy")
        setup.close()


def test_notices():
    with Pgring(pool_config(pool_size=1)) as p:
        a, b = app_connect(p), app_connect(p)
        query(a, "DO $$ BEGIN RAISE NOTICE 'pgring notice one'; END $$")
        check(any("pgring notice one" in n for n in a.notices), f"A's notices: {a.notices}")
        a.autocommit = False
        query(a, "DO $$ BEGIN RAISE NOTICE 'pgring notice two'; END $$")
        query(a, "DO $$ BEGIN RAISE WARNING 'pgring warning three'; END $$")
        a.commit()
        text = "".join(a.notices)
        check("pgring notice two" in text and "pgring warning three" in text,
              f"A's notices: {a.notices}")
        check_eq(query_one(b, "SELECT 1"), 1)
        check(not b.notices, f"B got notices meant for A: {b.notices}")
        a.close()
        b.close()


def test_listen_notify():
    with Pgring(pool_config(pool_size=2)) as p:
        listener, sender = app_connect(p), app_connect(p)
        query(listener, "LISTEN pgring_chan")
        pid = query_one(listener, "SELECT pg_backend_pid()")
        # Other clients keep the rest of the pool busy; the listener stays on its backend.
        for k in range(5):
            check_eq(query_one(sender, "SELECT 1"), 1)
            check_eq(query_one(listener, "SELECT pg_backend_pid()"), pid,
                     f"listener's backend (query {k}) after LISTEN")
        query(sender, "NOTIFY pgring_chan, 'through pgring'")
        direct = monitor_connect(db=DB, user=USER)
        query(direct, "NOTIFY pgring_chan, 'directly'")
        direct.close()

        payloads = []

        def got_both():
            if select.select([listener], [], [], 0.2)[0]:
                listener.poll()
            while listener.notifies:
                payloads.append(listener.notifies.pop(0).payload)
            return "through pgring" in payloads and "directly" in payloads

        wait_until(got_both, 10, what="both notifications at the idle listener")
        check_eq(sorted(payloads), ["directly", "through pgring"], "notifications received")
        # A notification also arrives with the reply to the listener's next query.
        query(sender, "NOTIFY pgring_chan, 'third'")
        time.sleep(0.2)
        check_eq(query_one(listener, "SELECT 9"), 9)

        def got_third():
            got_both()
            return "third" in payloads

        wait_until(got_third, 5, what="the third notification")
        listener.close()
        sender.close()


def own_notification_pid(conn):
    """LISTEN, NOTIFY on the same session, wait for it: (notification pid, the session's pid as
    libpq knows it from BackendKeyData)."""
    query(conn, "LISTEN pgring_self_chan")
    query(conn, "NOTIFY pgring_self_chan, 'myself'")
    got = wait_notifications(conn, 1, "the session's own notification")
    return got[0].pid, conn.get_backend_pid()


def test_own_notification_carries_the_client_pid():
    # Drivers tell their own notifications from others' by comparing the pid with the one
    # BackendKeyData gave them. Directly they are equal; through pgring (in transaction mode
    # the LISTEN pins the client to one server) the server's pid is rewritten to the client's.
    direct = monitor_connect(db=DB, user=USER)
    direct.autocommit = True
    notified, own = own_notification_pid(direct)
    direct.close()
    check_eq(notified, own, "direct: the pid of a session's own notification")
    with Pgring(pool_config(pool_size=2)) as p:
        conn = app_connect(p)
        conn.autocommit = True
        notified, own = own_notification_pid(conn)
        check_eq(notified, own, "through pgring: the pid of the client's own notification")
        conn.close()


def test_disconnect_mid_transaction():
    setup = fresh_table("pgring_tx_disc", "id int")
    try:
        with Pgring(pool_config(pool_size=1)) as p:
            # 1. psycopg2 closes without committing (libpq sends Terminate).
            a = app_connect(p)
            a.autocommit = False
            query(a, "INSERT INTO pgring_tx_disc VALUES (1)")
            a.close()

            # 2. A raw socket goes away mid-transaction (no Terminate).
            r = app_login(p)
            r.simple_query("BEGIN; INSERT INTO pgring_tx_disc VALUES (2)")
            r.close()

            # 3. Half a message, then gone.
            r = app_login(p)
            r.simple_query("BEGIN")
            r.simple_query("INSERT INTO pgring_tx_disc VALUES (3)")
            r.send(message(b"Q", b"INSERT INTO pgring_tx_disc VALUES (33)\0")[:12])
            r.close()

            # 4. Gone while the server is busy with its query, inside a transaction.
            r = app_login(p)
            r.simple_query("BEGIN; INSERT INTO pgring_tx_disc VALUES (4)")
            r.send(message(b"Q", b"SELECT pg_sleep(1)\0"))
            r.sock.shutdown(socket.SHUT_RDWR)
            r.close()

            # 5. Gone in the middle of COPY FROM STDIN.
            r = app_login(p)
            r.send(message(b"Q", b"COPY pgring_tx_disc FROM STDIN\0"))
            kind, _ = r.read_message()
            check_eq(kind, b"G", "CopyInResponse")
            r.send(message(b"d", b"5\n"))
            r.close()

            # The next client gets the (only) server, clean: nothing above was committed, no
            # transaction is open (its autocommit INSERT is committed at once).
            def next_client_works():
                c = app_connect(p, connect_timeout=10)
                try:
                    check_eq(query_one(c, "SELECT count(*) FROM pgring_tx_disc"), 0,
                             "rows visible through pgring")
                    check_eq(query_one(c, "SELECT now() = statement_timestamp()"), True,
                             "a fresh transaction for the next client")
                    query(c, "INSERT INTO pgring_tx_disc VALUES (100)")
                    return True
                finally:
                    c.close()
            wait_until(next_client_works, 20, interval=0.3, what="a working next client")
            check_eq(query(setup, "SELECT id FROM pgring_tx_disc ORDER BY id"), [(100,)],
                     "committed rows")
            check_eq(idle_in_transaction(setup, DB), [],
                     "server connections left idle in transaction")
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_tx_disc")
        setup.close()


def test_database_commands_with_pooled_servers():
    """DROP DATABASE x, ALTER DATABASE x RENAME and CREATE DATABASE ... TEMPLATE x need x to
    themselves (55006 "being accessed by other users" otherwise): pgring's own idle servers of x,
    on both reactors, must not be what stands in the way."""
    monitor = monitor_connect()
    monitor.autocommit = True
    for name in ("pgring_dropme", "pgring_dropme_copy", "pgring_dropme_renamed"):
        query(monitor, f"DROP DATABASE IF EXISTS {name}")
    query(monitor, "CREATE DATABASE pgring_dropme")
    config = pool_config(pool_size=4, databases={
        "pgring_test": {"host": PGHOST, "port": PGPORT},
        "pgring_dropme": {"host": PGHOST, "port": PGPORT}})
    config["workers"] = 2
    try:
        with Pgring(config) as p:
            def park_servers():
                # Clients of pgring_dropme come and go; their servers stay idle in the pools
                # (clients are spread over both reactors).
                clients = [connect(p.port, db="pgring_dropme") for _ in range(4)]
                for c in clients:
                    query_one(c, "SELECT 1")
                for c in clients:
                    c.close()
                wait_until(lambda: len(backends(monitor, "pgring_dropme")) > 0, 10,
                           what="pgring's idle servers in pgring_dropme")

            admin = connect(p.port, db="pgring_test")
            for command in ("CREATE DATABASE pgring_dropme_copy TEMPLATE pgring_dropme",
                            "ALTER DATABASE pgring_dropme RENAME TO pgring_dropme_renamed",
                            "ALTER DATABASE pgring_dropme_renamed RENAME TO pgring_dropme",
                            "DROP DATABASE pgring_dropme"):
                if "RENAME TO pgring_dropme" not in command:
                    park_servers()
                query(admin, command)
            names = {r[0] for r in query(monitor, "SELECT datname FROM pg_database")}
            check("pgring_dropme" not in names and "pgring_dropme_copy" in names,
                  f"databases after the commands: {sorted(names)}")
            admin.close()
    finally:
        for name in ("pgring_dropme", "pgring_dropme_copy", "pgring_dropme_renamed"):
            query(monitor, f"DROP DATABASE IF EXISTS {name}")
        monitor.close()


if __name__ == "__main__":
    run_tests(globals())
