#!/usr/bin/python3
"""Statement pooling: the server goes back to the pool after every statement; autocommit
statements work for many clients on a small pool, and a transaction block gets SQLSTATE 0A000
("transaction blocks are not allowed") while the connection stays usable and the server is
left outside any transaction."""

from lib import (BackendSampler, Pgring, SYNC_MESSAGE, bind_message, check, check_eq, connect,
                data_row_values, error_fields_in, execute_message, expect_error,
                idle_in_transaction, login, message, monitor_connect, parse_message, pool_config,
                query, query_one, read_until_ready, run_clients, run_tests, wait_no_backends)

DB, USER = "app", "app"
REFUSED = "transaction blocks are not allowed"


def app_connect(p, **kwargs):
    kwargs.setdefault("connect_timeout", 60)
    return connect(p.port, db=DB, user=USER, **kwargs)


def fresh_table(name, columns):
    setup = monitor_connect(db=DB, user=USER)
    query(setup, f"DROP TABLE IF EXISTS {name}")
    query(setup, f"CREATE TABLE {name} ({columns})")
    return setup


def test_autocommit_statements():
    clients, pool_size, rounds = 12, 2, 15
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    monitor.close()
    setup = fresh_table("pgring_stmt_rows", "client int, n int")
    try:
        with Pgring(pool_config("statement", pool_size=pool_size)) as p, \
                BackendSampler(DB) as sampler:
            def client(i):
                conn = app_connect(p)
                try:
                    for j in range(rounds):
                        query(conn, "INSERT INTO pgring_stmt_rows VALUES (%s, %s)", (i, j))
                        n = query_one(conn, "SELECT count(*) FROM pgring_stmt_rows "
                                            "WHERE client = %s", (i,))
                        if n != j + 1:
                            raise AssertionError(f"round {j}: {n} rows, expected {j + 1}")
                    # Several statements in one Query run as one implicit transaction.
                    got = query(conn, "SELECT 1; SELECT %s::int", (i,))
                    if got != [(i,)]:
                        raise AssertionError(f"multi-statement query returned {got!r}")
                finally:
                    conn.close()

            errors = run_clients(client, clients, timeout=120)
            # The extended protocol too.
            r = login(p.port, user=USER, db=DB)
            r.send(parse_message("SELECT count(*) FROM pgring_stmt_rows WHERE client = $1")
                   + bind_message([0]) + execute_message() + SYNC_MESSAGE)
            msgs, status = read_until_ready(r)
            check_eq([data_row_values(b) for k, b in msgs if k == b"D"], [[str(rounds)]],
                     "extended-protocol count")
            check_eq(status, "I", "status")
            r.terminate()
        check(not errors, "client errors:\n" + "\n".join(errors[:20]))
        sampler.check_max(pool_size)
        check_eq(query_one(setup, "SELECT count(*) FROM pgring_stmt_rows"), clients * rounds,
                 "rows committed")
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_stmt_rows")
        setup.close()


def test_transaction_block_refused():
    setup = fresh_table("pgring_stmt_tx", "id int")
    try:
        with Pgring(pool_config("statement", pool_size=1)) as p:
            a, b = app_connect(p), app_connect(p)
            for sql in ("BEGIN", "START TRANSACTION", "BEGIN ISOLATION LEVEL SERIALIZABLE"):
                expect_error(lambda: query(a, sql), "0A000", REFUSED)
                # The connection stays usable, and nobody is left inside a transaction.
                check_eq(query_one(a, "SELECT 1"), 1, f"A's next query after {sql}")
                query(b, "INSERT INTO pgring_stmt_tx VALUES (1)")
                check_eq(query_one(setup, "SELECT count(*) FROM pgring_stmt_tx"), 1,
                         f"B's autocommit INSERT after A's {sql} is committed")
                query(b, "DELETE FROM pgring_stmt_tx")
                check_eq(idle_in_transaction(setup, DB), [],
                         f"backends idle in transaction ({sql})")

            # psycopg2 without autocommit starts with BEGIN: refused, then usable again.
            a.autocommit = False
            expect_error(lambda: query(a, "SELECT 1"), "0A000", REFUSED)
            a.rollback()
            a.autocommit = True
            check_eq(query_one(a, "SELECT 2"), 2, "A after the refused implicit BEGIN")

            # A Query that opens a transaction and writes: refused, and the write undone.
            expect_error(lambda: query(a, "BEGIN; INSERT INTO pgring_stmt_tx VALUES (2)"),
                         "0A000", REFUSED)
            check_eq(query_one(a, "SELECT 3"), 3)
            check_eq(query_one(setup, "SELECT count(*) FROM pgring_stmt_tx"), 0,
                     "the refused transaction's INSERT was committed")
            check_eq(idle_in_transaction(setup, DB), [], "backends idle in transaction")

            # A raw client: ErrorResponse 0A000, then ReadyForQuery 'I', and it goes on.
            r = login(p.port, user=USER, db=DB)
            r.send(message(b"Q", b"BEGIN\0"))
            msgs, status = read_until_ready(r)
            errors = error_fields_in(msgs)
            check_eq([e.get("C") for e in errors], ["0A000"], "raw client's errors")
            check(errors[0].get("M", "").startswith("pgring: "), f"error: {errors[0]}")
            check_eq(status, "I", "ReadyForQuery status after the refused BEGIN")
            check_eq(r.simple_query("SELECT 4"), [["4"]])
            # ... also through the extended protocol.
            r.send(parse_message("BEGIN") + bind_message() + execute_message() + SYNC_MESSAGE)
            msgs, status = read_until_ready(r)
            check_eq([e.get("C") for e in error_fields_in(msgs)], ["0A000"],
                     "errors for an extended-protocol BEGIN")
            check_eq(status, "I", "status after the extended-protocol BEGIN")
            check_eq(r.simple_query("SELECT 5"), [["5"]])
            r.terminate()
            check_eq(query_one(b, "SELECT 6"), 6)
            check_eq(idle_in_transaction(setup, DB), [], "backends idle in transaction at the end")
            a.close()
            b.close()
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_stmt_tx")
        setup.close()


if __name__ == "__main__":
    run_tests(globals())
