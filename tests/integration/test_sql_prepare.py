"""SQL-level prepared statements in transaction mode without pinning: PREPARE, EXECUTE,
EXPLAIN EXECUTE and DEALLOCATE share the statement cache with protocol-level statements, so a
client's statements follow it from one server to the next, and a name prepared one way works
the other way, as in PostgreSQL. Every step is first run on a direct session, and pgring must
answer message by message the same (errors with their SQLSTATE, message and position)."""

from lib import (PGHOST, PGPORT, Background, Pgring, SYNC_MESSAGE, admin_rows, bind_exec,
                 bind_message, check, check_eq, connect, describe_message, execute_message,
                 free_port, login, metric_sum, monitor_connect, parse_message, pool_config, q,
                 query, query_one, run_tests, scrape, step_replies, steps_while_busy, wait_until)

DB, USER = "app", "app"
TABLE = "pgring_sqlprep_t"

# (what, bytes, number of replies)
STEPS = [
    ("PREPARE with types", q("PREPARE double (int) AS SELECT $1 * 2 AS doubled"), 1),
    ("EXECUTE", q("EXECUTE double(21)"), 1),
    ("EXECUTE, the name in another case, a semicolon", q("execute DOUBLE (4);"), 1),
    ("EXPLAIN EXECUTE", q("EXPLAIN (COSTS off) EXECUTE double(1)"), 1),
    ("PREPARE of a name in use: 42P05", q("PREPARE double AS SELECT 1"), 1),
    ("EXECUTE with too many parameters", q("EXECUTE double(1, 2)"), 1),
    ("EXECUTE with a bad parameter: its position", q("EXECUTE double('x')"), 1),
    ("in a transaction: EXECUTE, a refused PREPARE fails the block",
     q("BEGIN") + q("EXECUTE double(3)") + q("PREPARE double AS SELECT 2") + q("SELECT 1")
     + q("ROLLBACK"), 5),
    ("PREPARE that fails: its position", q(f"PREPARE bad AS SELECT * FROM {TABLE}_none"), 1),
    ("the failed name is free again", q("PREPARE bad AS SELECT 5 AS five"), 1),
    ("EXECUTE it", q("EXECUTE bad"), 1),
    ("a statement reading a table", q(f"PREPARE reader AS SELECT count(*) FROM {TABLE}"), 1),
    ("EXECUTE it", q("EXECUTE reader"), 1),
    ("PREPARE in a failed transaction: 25P02, nothing prepared",
     q("BEGIN") + q("SELECT 1 / 0") + q("PREPARE late AS SELECT 1") + q("ROLLBACK")
     + q("EXECUTE late"), 5),
    ("EXECUTE in a failed transaction: 25P02",
     q("BEGIN") + q("SELECT 1 / 0") + q("EXECUTE double(1)") + q("ROLLBACK"), 4),
    # (Each answered before the next is sent: a DEALLOCATE behind requests in flight gives its
    # name up at once, see docs/transaction-pooling.md.)
    ("a failed transaction", q("BEGIN") + q("SELECT 1 / 0"), 2),
    ("DEALLOCATE in it: 25P02", q("DEALLOCATE bad"), 1),
    ("the statement stays", q("ROLLBACK") + q("EXECUTE bad"), 2),
    ("a quoted name", q('PREPARE "Mixed" AS SELECT \'m\'::text') + q('EXECUTE "Mixed"')
     + q("EXECUTE mixed"), 3),
    ("a protocol-level statement run from SQL",
     parse_message("SELECT $1::int * 3 AS tripled", "proto1") + SYNC_MESSAGE
     + q("EXECUTE proto1(5)"), 2),
    ("an SQL-level statement run by Bind", bind_exec("double", [8]), 1),
    ("an SQL-level statement run by Bind, in a pipeline with others",
     bind_exec("bad") + parse_message("SELECT 'p'::text", "proto2") + bind_exec("proto2")
     + bind_exec("double", [9]), 3),
    ("a Parse of EXECUTE (the extended protocol)",
     parse_message("EXECUTE double(6)") + bind_exec(""), 1),
    ("a Parse of EXPLAIN EXECUTE, then Describe of its portal",
     parse_message("EXPLAIN (COSTS off) EXECUTE double(6)") + bind_message()
     + describe_message(b"P") + execute_message() + SYNC_MESSAGE, 1),
    ("a named Parse of EXECUTE", parse_message("EXECUTE bad", "exec1") + bind_exec("exec1"), 1),
    ("an error in the extended protocol before a Query: the server skips the Query",
     parse_message("SELECT 1 / 0") + bind_message() + execute_message() + q("EXECUTE proto1(1)")
     + q("EXECUTE double(1)") + SYNC_MESSAGE, 1),
    ("both still run afterwards", q("EXECUTE proto1(2)") + q("EXECUTE double(2)"), 2),
    ("a dollar-quoted text with what looks like a comment",
     q("PREPARE dq AS SELECT $_$--$_$ || 'A'") + q("EXECUTE dq"), 2),
    ("the same up to that point: another statement",
     q("PREPARE dq2 AS SELECT $_$--$_$ || 'B'") + q("EXECUTE dq2") + q("EXECUTE dq"), 3),
    ("DEALLOCATE behind a request in flight, then PREPARE the name again",
     q("SELECT 1") + q("DEALLOCATE dq") + q("PREPARE dq AS SELECT 'again'") + q("EXECUTE dq"), 4),
    ("DEALLOCATE behind a request in flight, then EXECUTE: 26000",
     q("SELECT 1") + q("DEALLOCATE dq2") + q("EXECUTE dq2"), 3),
    ("DEALLOCATE", q("DEALLOCATE double"), 1),
    ("EXECUTE after DEALLOCATE: 26000", q("EXECUTE double(1)"), 1),
    ("DEALLOCATE of an unknown name: 26000", q("DEALLOCATE nope"), 1),
    ("DEALLOCATE PREPARE", q("DEALLOCATE PREPARE bad"), 1),
    ("PREPARE the name again, another text", q("PREPARE double AS SELECT 'two'::text"), 1),
    ("EXECUTE the new text", q("EXECUTE double"), 1),
    ("DEALLOCATE ALL", q("DEALLOCATE ALL"), 1),
    ("every name gone", q("EXECUTE double") + q("EXECUTE proto1(1)") + q("EXECUTE reader"), 3),
    ("PREPARE after DEALLOCATE ALL", q("PREPARE double AS SELECT 'three'::text")
     + q("EXECUTE double"), 2),
    # (Last: a PREPARE pgring does not take over is session state, and pins the client.)
    ("a reserved word as a name: PostgreSQL's syntax error",
     q("PREPARE select AS SELECT 1") + q("EXECUTE all"), 2),
]


def run_steps(conn):
    return [(what, step_replies(conn, data, n, error_fields="CMP")) for what, data, n in STEPS]


def setup_table():
    monitor = monitor_connect(db=DB, user=USER)
    query(monitor, f"DROP TABLE IF EXISTS {TABLE}")
    query(monitor, f"CREATE TABLE {TABLE} (x int)")
    query(monitor, f"INSERT INTO {TABLE} VALUES (1), (2)")
    monitor.close()


def test_steps_as_direct():
    """The steps on a direct session, then through pgring (pool_size 2) while three other
    clients keep both servers busy running their own statements of the same names (other
    texts): the step client lands on one server, then another, and its statements go with it."""
    setup_table()
    direct = login(PGPORT, user=USER, db=DB, host=PGHOST)
    expected = run_steps(direct)
    direct.terminate()
    mport = free_port()
    with Pgring(pool_config(pool_size=2, metrics_port=mport)) as p:
        def hammer(k, stop):
            h = login(p.port, user=USER, db=DB, timeout=30)
            try:
                got = step_replies(h, q(f"PREPARE double AS SELECT 'hammer {k}'::text")
                                   + q(f"PREPARE bad AS SELECT {k} + $1::int"), 2)
                check_eq([g["kinds"] for g in got], ["CZ", "CZ"], f"hammer {k}: PREPARE")
                n = 0
                while not stop.is_set():
                    got = step_replies(h, q("EXECUTE double") + q(f"EXECUTE bad({n})"), 2)
                    if got[0]["rows"] != [[f"hammer {k}"]] or got[1]["rows"] != [[str(k + n)]]:
                        raise AssertionError(f"hammer {k} got {got}")
                    n += 1
                return n
            finally:
                h.terminate()

        steps_while_busy(p.port, USER, DB, hammer, run_steps, expected)
        # Statements went to servers that lacked them (prepared there first, in the same Query).
        injected = metric_sum(scrape(mport), "pgring_statement_cache_injected_total")
        check(injected and injected > 0, f"no statement prepared ahead of an EXECUTE: {injected}")


def test_prepare_pins_nothing():
    """pool_size 1: a client that prepared a statement holds no server between transactions (a
    pinned client would make the second wait forever); its EXECUTE runs on whichever server
    its transaction gets, including a new one after its first server is gone."""
    with Pgring(pool_config(pool_size=1)) as p:
        a = connect(p.port, db=DB, user=USER)
        query(a, "PREPARE q (int, text) AS SELECT $1 + 1, upper($2)")
        b = connect(p.port, db=DB, user=USER, connect_timeout=10)
        other = Background(lambda: query_one(b, "SELECT 41 + 1"))
        check_eq(other.result(10, "another client's query"), 42,
                 "another client with pool_size 1")
        check_eq(query(a, "EXECUTE q(1, 'a')"), [(2, "A")], "EXECUTE")
        # The server goes away under the pool: the next transaction runs on a new one, which
        # prepares the statement first.
        pid = query_one(b, "SELECT pg_backend_pid()")
        monitor = monitor_connect()
        query(monitor, f"SELECT pg_terminate_backend({pid})")
        monitor.close()
        wait_until(lambda: all(r["backend_pid"] != str(pid)
                               for r in admin_rows(p.port, "SHOW SERVERS")), 10,
                   what="pgring to notice its server was terminated")
        check_eq(query(a, "EXECUTE q(2, 'b')"), [(3, "B")], "EXECUTE on a new server")
        check(query_one(a, "SELECT pg_backend_pid()") != pid, "still on the terminated backend")
        rows = admin_rows(p.port, "SHOW CLIENTS")
        check(all(r["pinned"] in ("", "0", "no", None) for r in rows), f"a pinned client: {rows}")
        a.close()
        b.close()


def test_psycopg2_like_direct():
    """psycopg2 (simple queries with client-side parameters) PREPAREs and EXECUTEs; the results
    and errors, with two clients interleaving on pool_size 1, are those of direct sessions."""

    def script(a, b):
        seen = []
        query(a, "PREPARE ins (int) AS INSERT INTO %s VALUES ($1) RETURNING x" % TABLE)
        query(b, "PREPARE ins (int) AS SELECT -$1")
        seen.append(query(a, "EXECUTE ins(%s)", (10,)))
        seen.append(query(b, "EXECUTE ins(%s)", (10,)))
        a.autocommit = False
        seen.append(query(a, "EXECUTE ins(%s)", (11,)))
        a.rollback()
        a.autocommit = True
        seen.append(query(a, "SELECT count(*) FROM %s WHERE x >= 10" % TABLE))
        seen.append(query(b, "EXPLAIN (COSTS off) EXECUTE ins(1)"))
        try:
            query(a, "EXECUTE ins('ten')")
        except Exception as e:  # noqa: BLE001 - compared below
            seen.append((e.pgcode, e.diag.message_primary, e.diag.statement_position))
        query(a, "DELETE FROM %s WHERE x >= 10" % TABLE)
        return seen

    setup_table()
    a, b = monitor_connect(db=DB, user=USER), monitor_connect(db=DB, user=USER)
    expected = script(a, b)
    a.close()
    b.close()
    with Pgring(pool_config(pool_size=1)) as p:
        a, b = connect(p.port, db=DB, user=USER), connect(p.port, db=DB, user=USER)
        check_eq(script(a, b), expected, "through pgring")
        a.close()
        b.close()


def test_asyncpg_like_direct():
    """asyncpg sends its queries through the extended protocol (a Parse of `EXECUTE q(7)`),
    with its own protocol-level statement cache on: results and errors as on direct sessions,
    two connections interleaving on pool_size 1."""
    import asyncio

    import asyncpg

    async def script(port, host):
        a = await asyncpg.connect(host=host, port=port, user=USER, database=DB)
        b = await asyncpg.connect(host=host, port=port, user=USER, database=DB)
        seen = []
        try:
            await a.execute("PREPARE q (int) AS SELECT $1 * 3 AS tripled")
            await b.execute("PREPARE q AS SELECT 'b'::text AS who")
            for k in range(3):
                seen.append([tuple(r) for r in await a.fetch(f"EXECUTE q({k})")])
                seen.append(await b.fetchval("EXECUTE q"))
            seen.append(await a.fetchval("EXPLAIN (COSTS off) EXECUTE q(1)"))
            async with a.transaction():
                seen.append(await a.fetchval("EXECUTE q(5)"))
            stmt = await a.prepare("SELECT $1::int + 100")  # a protocol-level statement
            seen.append(await stmt.fetchval(1))
            seen.append(await a.fetchval(f"EXECUTE {stmt.get_name()}(2)"))
            await a.execute("DEALLOCATE q")
            try:
                await a.fetch("EXECUTE q(1)")
            except asyncpg.PostgresError as e:
                seen.append((e.sqlstate, str(e).splitlines()[0]))
        finally:
            await a.close()
            await b.close()
        return seen

    expected = asyncio.run(script(PGPORT, PGHOST))
    with Pgring(pool_config(pool_size=1)) as p:
        check_eq(asyncio.run(script(p.port, "127.0.0.1")), expected, "asyncpg through pgring")


if __name__ == "__main__":
    run_tests(globals())
