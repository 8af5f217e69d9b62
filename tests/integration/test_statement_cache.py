#!/usr/bin/python3
"""The statement cache (docs/transaction-pooling.md): named prepared statements in transaction mode, on
pools of 2-4 server connections shared by many clients, with zero errors.

- pgbench -M prepared, select-only and the default TPC-B-like script, 16 clients on pool_size 4.
- asyncpg with its default statement cache (named statements, LRU, its own Close messages):
  12 connections on pool_size 3; parameters of many types, type introspection (enum, domain,
  composite), executemany, conn.prepare() used across transactions, rollbacks, savepoints,
  cursors, copy_records_to_table.
- libpq (tests/integration/libpq_prepared.c, compiled here): PQprepare/PQexecPrepared across
  transactions, pipeline mode with an error in the middle, PQsendPrepare in a pipeline,
  DEALLOCATE; several processes on pool_size 2.
- DDL: ALTER TABLE .. ADD COLUMN while libpq clients keep running a cached SELECT * outside
  transactions (no error, new columns), and asyncpg's own handling of a changed result type:
  re-prepared outside a transaction, the error inside one, exactly as with PostgreSQL directly.
- Statement names, compared message by message with the same session run on PostgreSQL
  directly: Close then Parse again, a duplicate Parse (42P05, the batch skipped up to Sync),
  Bind of an unknown name (26000), DEALLOCATE name / ALL, DISCARD ALL; and clients that use
  the same names for different texts never see each other's statements.
- JDBC (Debian's libpostgresql-jdbc-java, the JDK's javac): PreparedStatement past the default
  prepareThreshold=5, 8 connections on pool_size 2.

The admin console's SHOW STATEMENTS lists the statements and /metrics counts cache hits.

Pooled traffic goes to database app as user app; setup uses direct connections."""

import asyncio
import atexit
import datetime
import decimal
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import uuid

from lib import (ADMIN_DB, ADMIN_USER, BackendSampler, PGHOST, PGPORT, Pgring, SYNC_MESSAGE,
                bind_exec, bind_message, check, check_eq, close_message, connect, data_row_values, describe_message,
                error_fields_in, execute_message, fail, free_port, log, login, message, metric_sum,
                monitor_connect, parse_message, pgbench, pool_config, query, query_one,
                q, read_until_ready, run_clients, run_tests, scrape, skip_test, step_replies,
                steps_while_busy,
                wait_no_backends)

try:
    import asyncpg
except ImportError:  # Debian's python3-asyncpg
    asyncpg = None

DB, USER = "app", "app"
IT_DIR = os.path.dirname(os.path.abspath(__file__))
JDBC_JAR = "/usr/share/java/postgresql.jar"


def cache_config(pool_size, mport=None, **defaults):
    return pool_config(pool_mode="transaction", pool_size=pool_size, metrics_port=mport,
                      **defaults)


def setup_conn():
    return monitor_connect(db=DB, user=USER)


def check_cache_used(p, mport, what, min_hits=1):
    """/metrics shows statement-cache hits, and SHOW STATEMENTS lists statements."""
    text = scrape(mport)
    values = {n: metric_sum(text, n) for n in (
        "pgring_statement_cache_hits_total", "pgring_statement_cache_parses_total",
        "pgring_statement_cache_injected_total", "pgring_statement_cache_evictions_total",
        "pgring_statement_cache_retries_total", "pgring_statement_cache_entries")}
    log(f"{what}: statement cache metrics {values}")
    hits = values["pgring_statement_cache_hits_total"]
    check(hits is not None and hits >= min_hits and values["pgring_statement_cache_entries"],
          f"{what}: pgring_statement_cache_hits_total is {hits}")
    statements = show_statements(p)
    check(statements, f"{what}: SHOW STATEMENTS lists nothing")
    return values, statements


def show_statements(p):
    """SHOW STATEMENTS on the admin console, as dicts (over the wire protocol: the query texts
    may span lines, which psql's unaligned output cannot delimit)."""
    admin = login(p.port, user=ADMIN_USER, db=ADMIN_DB)
    try:
        admin.send(message(b"Q", b"SHOW STATEMENTS\0"))
        msgs, _ = read_until_ready(admin)
    finally:
        admin.terminate()
    errors = error_fields_in(msgs)
    check(not errors, f"SHOW STATEMENTS: {errors}")
    names = []
    for kind, body in msgs:
        if kind == b"T":
            (n,) = struct.unpack("!H", body[:2])
            pos = 2
            for _ in range(n):
                end = body.index(b"\0", pos)
                names.append(body[pos:end].decode())
                pos = end + 1 + 18
    check(names, f"SHOW STATEMENTS sent no RowDescription: {[k for k, _ in msgs]}")
    return [dict(zip(names, data_row_values(body))) for kind, body in msgs if kind == b"D"]


def require_asyncpg():
    if asyncpg is None:
        skip_test("python3-asyncpg is not installed")


# ---------------------------------------------------------------------------------------------
# pgbench -M prepared

def run_pgbench(p, args):
    rc, out, err = pgbench(p.port, args, db=DB, user=USER, timeout=120)
    log(out.strip())
    check_eq(rc, 0, f"pgbench {' '.join(args)} exit status\n{out}\n{err}")
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    check(processed and int(processed.group(1)) > 0, f"no transactions processed:\n{out}")
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed:  # printed by pgbench 15 and later
        check_eq(int(failed.group(1)), 0, f"failed transactions\n{out}")
    check("error" not in err.lower(), f"pgbench reported errors:\n{err}")
    return int(processed.group(1))


def test_pgbench_prepared():
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    monitor.close()
    pool_size, mport = 4, free_port()
    # The tables are made on PostgreSQL directly: pooled traffic before the sampler starts
    # would leave server connections it takes for an earlier test's.
    rc, out, err = pgbench(PGPORT, ["-i", "-s", "1", "-q"], db=DB, user=USER)
    check_eq(rc, 0, f"pgbench -i exit status\n{out}\n{err}")
    with Pgring(cache_config(pool_size, mport)) as p:
        try:
            with BackendSampler(DB) as sampler:
                select_only = run_pgbench(p, ["-M", "prepared", "-S", "-c", "16", "-j", "2",
                                              "-T", "5"])
                # The TPC-B script runs with a thread per client: pgbench prepares each
                # statement with a synchronous PQprepare() the first time a client runs it, so
                # with -j 2 a thread blocked preparing for one client (waiting for a server)
                # cannot finish the open transaction of another client that holds that server,
                # and the run hangs (PgBouncer 1.18 in transaction mode hangs the same way).
                tpcb = run_pgbench(p, ["-M", "prepared", "-c", "16", "-j", "16", "-T", "5"])
            log(f"pgbench -M prepared: {select_only} select-only and {tpcb} TPC-B transactions; "
                f"max {sampler.max} backends on pool_size {pool_size}")
            sampler.check_max(pool_size)
            values, statements = check_cache_used(p, mport, "pgbench -M prepared", min_hits=16)
            texts = [s["query"] for s in statements]
            for needle in ("SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                           "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2"):
                check(any(needle in t for t in texts),
                      f"SHOW STATEMENTS does not list {needle!r}: {texts}")
            # 16 clients x 7 statements on 4 servers: Parses sent are bounded by servers x
            # statements, not by clients x statements.
            check(values["pgring_statement_cache_parses_total"] <= pool_size * 7 + 8,
                  f"too many Parses reached the servers: {values}")
        finally:
            setup = setup_conn()
            query(setup, "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, "
                         "pgbench_tellers, pgbench_history")
            setup.close()


# ---------------------------------------------------------------------------------------------
# asyncpg with its default statement cache

APG_TYPES = """
DROP TABLE IF EXISTS stmt_apg;
DROP TYPE IF EXISTS stmt_mood, stmt_pair;
DROP DOMAIN IF EXISTS stmt_posint;
CREATE TYPE stmt_mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE stmt_pair AS (a int, b text);
CREATE DOMAIN stmt_posint AS int CHECK (VALUE > 0);
CREATE TABLE stmt_apg (conn int, id int, t text, n numeric, ts timestamptz, j jsonb,
                       arr int[], u uuid, mood stmt_mood, PRIMARY KEY (conn, id));
"""


def apg_row(i, id_):
    ts = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        minutes=i * 100 + id_)
    return (i, id_, f"text-{i}-{id_}", decimal.Decimal(f"{i}.{id_:04d}"), ts,
            json.dumps({"conn": i, "id": id_}), [i, id_, i + id_],
            uuid.UUID(int=i * 1_000_000 + id_), ["sad", "ok", "happy"][id_ % 3])


def apg_check_row(rec, i, id_, what):
    want = apg_row(i, id_)
    got = (rec["conn"], rec["id"], rec["t"], rec["n"], rec["ts"], json.loads(rec["j"]),
           list(rec["arr"]), rec["u"], rec["mood"])
    want = want[:5] + (json.loads(want[5]),) + want[6:]
    if got != want:
        raise AssertionError(f"{what}: row {got!r}, expected {want!r}")


async def apg_worker(port, i, rounds):
    # Default statement cache: no statement_cache_size argument.
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=USER, database=DB,
                                 timeout=60, command_timeout=60)
    try:
        # asyncpg names its statements __asyncpg_stmt_1__, _2_, ... in every connection: the
        # first ones differ per connection, so the same names stand for different texts.
        got = await conn.fetchval(f"SELECT {i} * 1000 + $1::int", 7)
        if got != i * 1000 + 7:
            raise AssertionError(f"per-connection statement: {got}")
        by_id = await conn.prepare("SELECT conn, id, t, n, ts, j, arr, u, mood FROM stmt_apg "
                                   "WHERE conn = $1 AND id = $2")
        count_own = await conn.prepare("SELECT count(*) FROM stmt_apg WHERE conn = $1")
        committed = set()
        for r in range(rounds):
            # Parameters and results of many types.
            ts = datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc)
            u = uuid.UUID(int=i * 7919 + r)
            row = await conn.fetchrow(
                "SELECT $1::int + 1 AS a, $2::text || '!' AS b, $3::numeric * 2 AS c, "
                "$4::timestamptz + interval '1 hour' AS d, ($5::jsonb -> 'k') AS e, "
                "array_append($6::int[], $1::int) AS f, $7::uuid AS g, $8::stmt_mood AS h, "
                "$9::bigint * 3 AS k, $10::float8 / 2 AS l, $11::bool AS m, $12::bytea AS o",
                r, f"c{i}", decimal.Decimal(f"{i}.5"), ts, json.dumps({"k": [i, r]}), [i, r],
                u, "happy", 2 ** 40 + r, 1.5, r % 2 == 0, bytes([i, r]))
            want = (r + 1, f"c{i}!", decimal.Decimal(f"{i}.5") * 2,
                    ts + datetime.timedelta(hours=1), [i, r], [i, r, r], u, "happy",
                    (2 ** 40 + r) * 3, 0.75, r % 2 == 0, bytes([i, r]))
            got = (row["a"], row["b"], row["c"], row["d"], json.loads(row["e"]), list(row["f"]),
                   row["g"], row["h"], row["k"], row["l"], row["m"], row["o"])
            if got != want:
                raise AssertionError(f"round {r}: typed row {got!r}, expected {want!r}")
            # Types asyncpg has to introspect (its introspection query is a prepared statement
            # too): a domain and a composite.
            if await conn.fetchval("SELECT $1::stmt_posint + 0", i + 1) != i + 1:
                raise AssertionError("domain parameter")
            pair = await conn.fetchval("SELECT ROW($1::int, $2::text)::stmt_pair", r, f"p{i}")
            if tuple(pair) != (r, f"p{i}"):
                raise AssertionError(f"composite: {tuple(pair)!r}")

            # executemany: a batch of Bind/Execute on one named statement.
            ids = list(range(r * 10, r * 10 + 5))
            await conn.executemany(
                "INSERT INTO stmt_apg (conn, id, t, n, ts, j, arr, u, mood) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", [apg_row(i, k) for k in ids])
            committed.update(ids)

            # A statement prepared once, used inside and outside transactions.
            if r % 2 == 0:
                async with conn.transaction():
                    for k in ids:
                        apg_check_row(await by_id.fetchrow(i, k), i, k, "prepared, in a tx")
            else:
                for k in ids:
                    apg_check_row(await by_id.fetchrow(i, k), i, k, "prepared, autocommit")

            # A transaction rolled back by an exception; a savepoint rolled back inside a
            # committed transaction.
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO stmt_apg (conn, id) VALUES ($1, $2)", i,
                                       10_000 + r)
                    await conn.fetchval("SELECT 1 / ($1::int - $1::int)", r)
            except asyncpg.exceptions.DivisionByZeroError:
                pass
            async with conn.transaction():
                await conn.execute("INSERT INTO stmt_apg (conn, id) VALUES ($1, $2)", i,
                                   20_000 + r)
                try:
                    async with conn.transaction():  # SAVEPOINT
                        await conn.execute("INSERT INTO stmt_apg (conn, id) VALUES ($1, $2)", i,
                                           30_000 + r)
                        await conn.execute("INSERT INTO stmt_apg (conn, id) VALUES ($1, $2)", i,
                                           20_000 + r)  # duplicate key
                except asyncpg.exceptions.UniqueViolationError:
                    pass
            committed.add(20_000 + r)
            gone = await conn.fetchval("SELECT count(*) FROM stmt_apg WHERE conn = $1 AND "
                                       "id IN ($2, $3)", i, 10_000 + r, 30_000 + r)
            if gone != 0:
                raise AssertionError(f"round {r}: {gone} rolled-back rows are visible")

            # Cursors live in a transaction (Execute with a row limit, several Syncs).
            async with conn.transaction():
                seen = [rec["id"] async for rec in conn.cursor(
                    "SELECT id FROM stmt_apg WHERE conn = $1 ORDER BY id", i, prefetch=3)]
                if seen != sorted(committed):
                    raise AssertionError(f"round {r}: cursor saw {seen}, expected "
                                         f"{sorted(committed)}")
                cur = await conn.cursor("SELECT id FROM stmt_apg WHERE conn = $1 ORDER BY id", i)
                first = await cur.fetch(2)
                if [rec["id"] for rec in first] != sorted(committed)[:2]:
                    raise AssertionError(f"round {r}: cur.fetch {first}")

            # Binary COPY of typed records.
            if r % 3 == 1:
                recs = [apg_row(i, 40_000 + r * 10 + k) for k in range(4)]
                await conn.copy_records_to_table(
                    "stmt_apg", records=recs,
                    columns=["conn", "id", "t", "n", "ts", "j", "arr", "u", "mood"])
                committed.update(rec[1] for rec in recs)
                apg_check_row(await by_id.fetchrow(i, recs[0][1]), i, recs[0][1], "copied row")

            n = await count_own.fetchval(i)
            if n != len(committed):
                raise AssertionError(f"round {r}: {n} rows, expected {len(committed)}")
        return len(committed)
    finally:
        await conn.close()


def test_asyncpg_default_statement_cache():
    require_asyncpg()
    connections, pool_size, rounds = 12, 3, 4
    mport = free_port()
    setup = setup_conn()
    with setup.cursor() as cur:
        cur.execute(APG_TYPES)

    async def main(port):
        results = await asyncio.gather(*(apg_worker(port, i, rounds)
                                         for i in range(connections)), return_exceptions=True)
        return results

    try:
        with Pgring(cache_config(pool_size, mport)) as p, BackendSampler(DB) as sampler:
            started = time.monotonic()
            results = asyncio.run(asyncio.wait_for(main(p.port), 150))
            log(f"asyncpg: {connections} connections x {rounds} rounds in "
                f"{time.monotonic() - started:.1f}s; max {sampler.max} backends")
            errors = [f"connection {i}: {type(r).__name__} (SQLSTATE "
                      f"{getattr(r, 'sqlstate', None)}): {r}"
                      for i, r in enumerate(results) if isinstance(r, BaseException)]
            check(not errors, f"{len(errors)} asyncpg connections failed:\n" + "\n".join(errors))
            sampler.check_max(pool_size)
            for i, n in enumerate(results):
                check_eq(query_one(setup, "SELECT count(*) FROM stmt_apg WHERE conn = %s", (i,)),
                         n, f"rows of connection {i}")
            _, statements = check_cache_used(p, mport, "asyncpg", min_hits=connections)
            check(any("FROM stmt_apg" in s["query"] and "$2" in s["query"] for s in statements),
                  f"SHOW STATEMENTS does not list asyncpg's statements: "
                  f"{[s['query'] for s in statements][:20]}")
    finally:
        with setup.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS stmt_apg; DROP TYPE IF EXISTS stmt_mood, "
                        "stmt_pair; DROP DOMAIN IF EXISTS stmt_posint")
        setup.close()


# ---------------------------------------------------------------------------------------------
# libpq: PQprepare / PQexecPrepared / pipeline mode

_built = {}


def libpq_prepared_binary():
    """Compile tests/integration/libpq_prepared.c once per run into a temporary directory."""
    if "path" in _built:
        return _built["path"]
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        skip_test("no C compiler (gcc) to build libpq_prepared.c")
    include = "/usr/include/postgresql"
    pg_config = shutil.which("pg_config")
    if pg_config:
        r = subprocess.run([pg_config, "--includedir"], capture_output=True, text=True)
        if r.returncode == 0 and os.path.isdir(r.stdout.strip()):
            include = r.stdout.strip()
    if not os.path.exists(os.path.join(include, "libpq-fe.h")):
        skip_test(f"libpq-fe.h not found in {include} (libpq-dev)")
    out_dir = tempfile.mkdtemp(prefix="pgring-it-libpq-")
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    path = os.path.join(out_dir, "libpq_prepared")
    r = subprocess.run([gcc, "-O1", "-Wall", "-o", path, os.path.join(IT_DIR, "libpq_prepared.c"),
                        f"-I{include}", "-lpq"], capture_output=True, text=True, timeout=120)
    check(r.returncode == 0, f"compiling libpq_prepared.c failed:\n{r.stderr}")
    _built["path"] = path
    return path


def libpq_env():
    env = dict(os.environ)
    for k in ("PGPASSWORD", "PGSERVICE", "PGOPTIONS", "PGHOST", "PGPORT", "PGUSER",
              "PGDATABASE"):
        env.pop(k, None)
    env.update(PGCONNECT_TIMEOUT="10", PGSSLMODE="disable",
               PGPASSFILE="/nonexistent/pgring-test-pgpass")
    return env


def conninfo(port):
    return f"host=127.0.0.1 port={port} dbname={DB} user={USER}"


def test_libpq_prepared_and_pipelines():
    binary = libpq_prepared_binary()
    workers, iterations, pool_size = 6, 40, 2
    mport = free_port()
    setup = setup_conn()
    query(setup, "DROP TABLE IF EXISTS stmt_libpq")
    query(setup, "CREATE TABLE stmt_libpq (worker int, i int)")
    try:
        with Pgring(cache_config(pool_size, mport)) as p, BackendSampler(DB) as sampler:
            procs = [subprocess.Popen([binary, conninfo(p.port), "work", str(w), str(iterations)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=libpq_env())
                     for w in range(1, workers + 1)]
            outputs = []
            for w, proc in enumerate(procs, 1):
                try:
                    out, _ = proc.communicate(timeout=90)
                except subprocess.TimeoutExpired:
                    for other in procs:
                        other.kill()
                    fail(f"libpq_prepared worker {w} hung")
                outputs.append((w, proc.returncode, out.strip()))
            bad = [f"worker {w}: status {rc}: {out}" for w, rc, out in outputs
                   if rc != 0 or not out.startswith("ok")]
            check(not bad, "libpq_prepared failed:\n" + "\n".join(bad))
            sampler.check_max(pool_size)
            for w, _, out in outputs:
                committed = int(re.search(r"committed=(\d+)", out).group(1))
                check_eq(query_one(setup, "SELECT count(*) FROM stmt_libpq WHERE worker = %s",
                                   (w,)), committed, f"rows committed by worker {w}")
            values, statements = check_cache_used(p, mport, "libpq", min_hits=workers)
            texts = [s["query"] for s in statements]
            for w in range(1, workers + 1):
                check(any(t == f"SELECT {w} * 100000 + $1::int" for t in texts),
                      f"SHOW STATEMENTS lacks worker {w}'s q_mine: {texts}")
            check(values["pgring_statement_cache_injected_total"] > 0,
                  "no Parse was ever injected, yet statements prepared on one server were "
                  "bound on another")
    finally:
        query(setup, "DROP TABLE IF EXISTS stmt_libpq")
        setup.close()


# ---------------------------------------------------------------------------------------------
# DDL changes the result type of cached statements

def test_ddl_with_cached_select_star_libpq():
    binary = libpq_prepared_binary()
    clients, alters, pool_size = 3, 8, 2
    mport = free_port()
    setup = setup_conn()
    query(setup, "DROP TABLE IF EXISTS stmt_ddl")
    query(setup, "CREATE TABLE stmt_ddl (c0 int)")
    query(setup, "INSERT INTO stmt_ddl VALUES (0)")
    stop_dir = tempfile.mkdtemp(prefix="pgring-it-ddl-")
    stop_file = os.path.join(stop_dir, "stop")
    try:
        with Pgring(cache_config(pool_size, mport)) as p:
            procs = [subprocess.Popen([binary, conninfo(p.port), "ddl", "stmt_ddl", stop_file],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=libpq_env())
                     for _ in range(clients)]
            try:
                time.sleep(0.5)
                for k in range(1, alters + 1):
                    query(setup, f"ALTER TABLE stmt_ddl ADD COLUMN c{k} int DEFAULT {k}")
                    time.sleep(0.25)
                    check(all(proc.poll() is None for proc in procs),
                          f"a client stopped after ALTER TABLE #{k}: "
                          + "; ".join(proc.stdout.read().strip() for proc in procs
                                      if proc.poll() is not None))
            finally:
                with open(stop_file, "w"):
                    pass
            outputs = []
            for proc in procs:
                try:
                    out, _ = proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    for other in procs:
                        other.kill()
                    fail("a libpq_prepared ddl client hung")
                outputs.append((proc.returncode, out.strip()))
            log(f"clients running SELECT * during {alters} ALTER TABLEs: {outputs}")
            for rc, out in outputs:
                check(rc == 0 and out.startswith("ok"), f"client failed: status {rc}: {out}")
                check_eq(int(re.search(r"columns=(\d+)", out).group(1)), alters + 1,
                         "columns in the last result")
                check(int(re.search(r"execs=(\d+)", out).group(1)) > alters,
                      f"too few executions: {out}")
            retries = metric_sum(scrape(mport), "pgring_statement_cache_retries_total")
            check(retries is not None and retries > 0,
                  f"pgring_statement_cache_retries_total is {retries} after {alters} ALTERs")
    finally:
        shutil.rmtree(stop_dir, ignore_errors=True)
        query(setup, "DROP TABLE IF EXISTS stmt_ddl")
        setup.close()


async def apg_schema_change_scenario(port, table, ddl):
    """asyncpg (default cache) runs a cached SELECT * after ALTER TABLEs, outside and inside a
    transaction. Returns what it saw: [(where, columns or exception class name, SQLSTATE)]."""
    seen = []
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=USER, database=DB,
                                 timeout=30)
    try:
        sql = f"SELECT * FROM {table}"
        seen.append(("before", len((await conn.fetch(sql))[0]), None))
        for k in range(3):
            # Other clients get a moment between two ALTERs: asyncpg retries a statement once,
            # and a second ALTER inside that retry fails it directly on PostgreSQL too.
            await asyncio.sleep(0.05)
            query(ddl, f"ALTER TABLE {table} ADD COLUMN extra{k} int DEFAULT {k}")
            try:
                rows = await conn.fetch(sql)
                seen.append((f"outside {k}", len(rows[0]), None))
            except Exception as e:  # noqa: BLE001 - compared below
                seen.append((f"outside {k}", type(e).__name__, getattr(e, "sqlstate", None)))
        # The statement is cached again (with the new columns); change the table once more and
        # run it inside a transaction.
        seen.append(("cached again", len((await conn.fetch(sql))[0]), None))
        await asyncio.sleep(0.05)
        query(ddl, f"ALTER TABLE {table} ADD COLUMN in_tx int DEFAULT 9")
        try:
            async with conn.transaction():
                rows = await conn.fetch(sql)
                seen.append(("inside", len(rows[0]), None))
        except Exception as e:  # noqa: BLE001 - compared below
            seen.append(("inside", type(e).__name__, getattr(e, "sqlstate", None)))
        seen.append(("after the transaction", len((await conn.fetch(sql))[0]), None))
        seen.append(("status", await conn.fetchval("SELECT 'usable'"), None))
    finally:
        await conn.close()
    return seen


def test_ddl_asyncpg_reprepares_like_postgres():
    # Several asyncpg connections keep the same SELECT * prepared on both servers while the
    # table is altered under them: each client is judged against the result type it was told
    # itself (a description another client got before or after the DDL does not count).
    require_asyncpg()
    mport = free_port()
    ddl = setup_conn()
    results = {}
    try:
        for target in ("postgres", "pgring"):
            query(ddl, "DROP TABLE IF EXISTS stmt_apg_ddl")
            query(ddl, "CREATE TABLE stmt_apg_ddl (id int, name text)")
            query(ddl, "INSERT INTO stmt_apg_ddl VALUES (1, 'one')")
            if target == "postgres":
                results[target] = asyncio.run(asyncio.wait_for(
                    apg_schema_change_scenario(PGPORT, "stmt_apg_ddl", ddl), 60))
                continue
            with Pgring(cache_config(2, mport)) as p:
                # Other connections keep the same query prepared on both servers.
                stop = threading.Event()

                async def others():
                    conns = [await asyncpg.connect(host="127.0.0.1", port=p.port, user=USER,
                                                   database=DB, timeout=30) for _ in range(2)]
                    errors = []
                    try:
                        while not stop.is_set():
                            for c in conns:
                                try:
                                    await c.fetch("SELECT * FROM stmt_apg_ddl")
                                except asyncpg.exceptions.InvalidCachedStatementError:
                                    errors.append("InvalidCachedStatementError outside a "
                                                  "transaction")
                            await asyncio.sleep(0.01)
                    finally:
                        for c in conns:
                            await c.close()
                    return errors

                holder = {}
                bg = threading.Thread(target=lambda: holder.update(
                    errors=_catch(lambda: asyncio.run(asyncio.wait_for(others(), 60)))),
                    daemon=True)
                bg.start()
                try:
                    time.sleep(0.3)
                    results[target] = asyncio.run(asyncio.wait_for(
                        apg_schema_change_scenario(p.port, "stmt_apg_ddl", ddl), 60))
                finally:
                    stop.set()
                    bg.join(30)
                check(not bg.is_alive(), "the other asyncpg connections hung")
                others_errors = holder.get("errors")
        log(f"asyncpg after ALTER TABLE: postgres {results['postgres']}")
        log(f"asyncpg after ALTER TABLE: pgring   {results['pgring']}")
        pg = results["postgres"]
        # What PostgreSQL itself gives (asyncpg re-prepares outside a transaction, raises the
        # error inside one) ...
        check_eq([s[1] for s in pg if s[0].startswith("outside")], [3, 4, 5],
                 "columns seen outside a transaction, directly on PostgreSQL")
        check(dict((s[0], s[1]) for s in pg)["inside"] == "InvalidCachedStatementError",
              f"asyncpg directly on PostgreSQL, inside a transaction: {pg}")
        # ... pgring gives exactly the same.
        check_eq(results["pgring"], pg, "what asyncpg saw through pgring vs. directly")
        # Meanwhile, two other connections ran the same query outside transactions: asyncpg
        # re-prepares by itself on 0A000, so with the ALTERs spaced they never fail directly,
        # and must not through pgring (whose servers keep copies prepared before the DDL).
        check_eq(others_errors, [], "errors of the other asyncpg connections running "
                                    "SELECT * during the ALTER TABLEs")
    finally:
        query(ddl, "DROP TABLE IF EXISTS stmt_apg_ddl")
        ddl.close()


def test_fresh_prepare_after_ddl_on_a_stale_copy():
    """Client A prepares SELECT * (asyncpg), the table gains a column, then client B prepares
    the same text for the first time. On PostgreSQL B's Parse is fresh and just works. Through
    pgring (pool_size 1) the server already holds the statement, prepared before the ALTER:
    answering B's Parse from it makes the Describe fail with 0A000, an error B could never get
    directly, so pgring prepares it afresh and describes again. A's next fetch gets the 0A000
    PostgreSQL gives it (its description is stale) and asyncpg re-prepares by itself."""
    require_asyncpg()
    ddl = setup_conn()
    seen = {}
    try:
        for target in ("postgres", "pgring"):
            query(ddl, "DROP TABLE IF EXISTS stmt_stale_copy")
            query(ddl, "CREATE TABLE stmt_stale_copy (id int, name text)")
            query(ddl, "INSERT INTO stmt_stale_copy VALUES (1, 'one')")
            mport = free_port()
            with (Pgring(cache_config(1, mport)) if target == "pgring" else _Nothing()) as p:
                port = p.port if target == "pgring" else PGPORT

                async def scenario():
                    sql = "SELECT * FROM stmt_stale_copy"
                    steps = []
                    a = await asyncpg.connect(host="127.0.0.1", port=port, user=USER,
                                              database=DB, timeout=30)
                    steps.append(("a before", len((await a.fetch(sql))[0])))
                    query(ddl, "ALTER TABLE stmt_stale_copy ADD COLUMN extra int DEFAULT 7")
                    b = await asyncpg.connect(host="127.0.0.1", port=port, user=USER,
                                              database=DB, timeout=30)
                    for who, conn in (("b", b), ("a", a), ("b", b)):
                        try:
                            row = (await conn.fetch(sql))[0]
                            steps.append((f"{who} after", len(row)))
                        except Exception as e:  # noqa: BLE001 - compared below
                            steps.append((f"{who} after", f"{type(e).__name__}: {e}"))
                    await a.close()
                    await b.close()
                    return steps

                seen[target] = asyncio.run(asyncio.wait_for(scenario(), 60))
                if target == "pgring":
                    retries = metric_sum(scrape(mport), "pgring_statement_cache_retries_total")
        log(f"postgres: {seen['postgres']}")
        log(f"pgring:   {seen['pgring']}")
        check_eq(seen["postgres"], [("a before", 2), ("b after", 3), ("a after", 3),
                                    ("b after", 3)], "directly on PostgreSQL")
        check_eq(seen["pgring"], seen["postgres"], "through pgring vs. directly")
        check(retries is not None and retries >= 1,
              f"pgring_statement_cache_retries_total is {retries}: the stale copy was not hit")
    finally:
        query(ddl, "DROP TABLE IF EXISTS stmt_stale_copy")
        ddl.close()


def test_described_statement_in_a_failed_transaction_elsewhere():
    """A client described a statement (so pgring checks its result shape wherever it is first
    prepared), then binds it inside a failed transaction on a server that never prepared it.
    The check's Parse fails there with 25P02 like everything in an aborted transaction: the
    client must get exactly PostgreSQL's answer (25P02, then ReadyForQuery 'E'), not wait for
    a check that will never be answered."""
    sessions = {}
    for target in ("postgres", "pgring"):
        steps = []
        with (Pgring(cache_config(2)) if target == "pgring" else _Nothing()) as p:
            port = p.port if target == "pgring" else PGPORT
            a = login(port, user=USER, db=DB, timeout=30)
            steps += step_replies(a, parse_message("SELECT 1 AS one", "s1")
                                  + describe_message(b"S", "s1") + SYNC_MESSAGE, 1)
            b = login(port, user=USER, db=DB, timeout=30)
            steps += step_replies(b, q("BEGIN"), 1)  # holds the server a prepared s1 on
            steps += step_replies(a, q("BEGIN") + q("SELECT 1/0"), 2)
            steps += step_replies(a, bind_exec("s1"), 1)
            steps += step_replies(a, q("ROLLBACK"), 1)
            steps += step_replies(a, bind_exec("s1"), 1)
            steps += step_replies(b, q("COMMIT"), 1)
            a.terminate()
            b.terminate()
        sessions[target] = steps
    for i, (want, have) in enumerate(zip(sessions["postgres"], sessions["pgring"])):
        log(f"step {i + 1}: postgres {want['kinds']} {want['errors']}; pgring {have['kinds']} "
            f"{have['errors']}")
    check_eq(sessions["pgring"], sessions["postgres"], "through pgring vs. PostgreSQL")


def test_ddl_asyncpg_many_alters():
    """Three asyncpg connections (default statement cache) keep running SELECT * through a pool
    of 2 while the table gains a column every 50 ms, 30 times. Each ALTER costs every client one
    0A000 that asyncpg handles itself by re-preparing; pgring's servers keep copies of the
    statement prepared before the latest ALTER, and a client's fresh Parse answered from such a
    copy must still behave like a fresh Parse on PostgreSQL: no error reaches the application."""
    require_asyncpg()
    ddl = setup_conn()
    try:
        query(ddl, "DROP TABLE IF EXISTS stmt_many_alters")
        query(ddl, "CREATE TABLE stmt_many_alters (id int, name text)")
        query(ddl, "INSERT INTO stmt_many_alters VALUES (1, 'one')")
        mport = free_port()
        with Pgring(cache_config(2, mport)) as p:
            stop = threading.Event()

            async def clients():
                conns = [await asyncpg.connect(host="127.0.0.1", port=p.port, user=USER,
                                               database=DB, timeout=30) for _ in range(3)]
                errors, fetches, widths = [], 0, set()
                try:
                    while not stop.is_set():
                        for c in conns:
                            try:
                                rows = await c.fetch("SELECT * FROM stmt_many_alters")
                                fetches += 1
                                widths.add(len(rows[0]))
                            except Exception as e:  # noqa: BLE001 - every error counts
                                errors.append(f"{type(e).__name__}: {e}")
                        await asyncio.sleep(0.005)
                finally:
                    for c in conns:
                        await c.close()
                return errors, fetches, widths

            holder = {}
            bg = threading.Thread(target=lambda: holder.update(
                result=_catch(lambda: asyncio.run(asyncio.wait_for(clients(), 90)))),
                daemon=True)
            bg.start()
            time.sleep(0.3)
            alters = 30
            for k in range(alters):
                query(ddl, f"ALTER TABLE stmt_many_alters ADD COLUMN c{k} int DEFAULT {k}")
                time.sleep(0.05)
            time.sleep(0.2)
            stop.set()
            bg.join(60)
            check(not bg.is_alive(), "the asyncpg connections hung")
            result = holder.get("result")
            check(isinstance(result, tuple), f"asyncpg clients failed: {result}")
            errors, fetches, widths = result
            log(f"{fetches} fetches over {alters} ALTERs; widths seen {sorted(widths)}; "
                f"errors {len(errors)}")
            check_eq(errors[:3], [], "errors seen by asyncpg through pgring")
            check(fetches > alters * 3, f"only {fetches} fetches")
            check(2 + alters in widths, f"the last column never showed: {sorted(widths)}")
            retries = metric_sum(scrape(mport), "pgring_statement_cache_retries_total")
            log(f"pgring_statement_cache_retries_total {retries}")
    finally:
        query(ddl, "DROP TABLE IF EXISTS stmt_many_alters")
        ddl.close()


def test_result_type_change_on_another_server():
    """A client prepared a statement and was told its result columns (Describe); then ALTER
    TABLE adds a column. PostgreSQL answers that client's next Bind of the statement with 0A000
    "cached plan must not change result type", in a transaction or not, so the client knows its
    row description is stale (asyncpg re-prepares on that error). Through pgring the Bind lands
    on a server connection that never prepared the statement (the only other one is taken by
    another client's transaction): pgring must not silently prepare the new shape there and
    send rows the client cannot decode; the client must get what PostgreSQL would give it."""
    setup = setup_conn()
    sessions = {}
    try:
        for target in ("postgres", "pgring"):
            query(setup, "DROP TABLE IF EXISTS stmt_shape")
            query(setup, "CREATE TABLE stmt_shape (a int, b text)")
            query(setup, "INSERT INTO stmt_shape VALUES (1, 'one')")
            steps = []
            with (Pgring(cache_config(2)) if target == "pgring" else _Nothing()) as p:
                port = p.port if target == "pgring" else PGPORT
                a = login(port, user=USER, db=DB, timeout=30)
                steps += step_replies(a, parse_message("SELECT * FROM stmt_shape", "s1")
                                      + describe_message(b"S", "s1") + SYNC_MESSAGE, 1)
                query(setup, "ALTER TABLE stmt_shape ADD COLUMN c int DEFAULT 3")
                b = login(port, user=USER, db=DB, timeout=30)
                steps += step_replies(b, q("BEGIN"), 1)  # holds the server a used
                # Bind + Execute without a Describe (what asyncpg sends for a cached statement).
                steps += step_replies(a, bind_exec("s1"), 1)
                steps += step_replies(a, q("BEGIN") + bind_exec("s1") + q("ROLLBACK"), 3)
                steps += step_replies(b, q("COMMIT"), 1)
                a.terminate()
                b.terminate()
            sessions[target] = steps
        for i, (want, have) in enumerate(zip(sessions["postgres"], sessions["pgring"])):
            log(f"step {i + 1}: postgres {want['kinds']} {want['errors']} {want['rows']}; "
                f"pgring {have['kinds']} {have['errors']} {have['rows']}")
        check_eq([s["kinds"] for s in sessions["postgres"]],
                 ["1tTZ", "CZ", "EZ", "CZ", "EZ", "CZ", "CZ"], "PostgreSQL directly")
        check_eq(sessions["pgring"], sessions["postgres"], "through pgring vs. PostgreSQL")
    finally:
        query(setup, "DROP TABLE IF EXISTS stmt_shape")
        setup.close()


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------------------------------------
# Statement names

# (what, bytes, number of replies, expected kinds of each reply, expected SQLSTATEs, rows)
NAME_STEPS = [
    ("Parse s1", parse_message("SELECT 1 AS v", "s1") + SYNC_MESSAGE, 1, ["1Z"]),
    ("Bind s1", bind_exec("s1"), 1, ["2DCZ"]),
    ("Close s1", close_message(b"S", "s1") + SYNC_MESSAGE, 1, ["3Z"]),
    ("Parse s1 again, other text", parse_message("SELECT 'two'::text AS v", "s1")
     + bind_exec("s1"), 1, ["12DCZ"]),
    ("Parse of an existing name: 42P05, the rest skipped up to Sync",
     parse_message("SELECT 3", "s1") + bind_message(statement="s1") + execute_message()
     + describe_message(b"S", "s1") + SYNC_MESSAGE, 1, ["EZ"]),
    ("s1 unchanged after the failed Parse", bind_exec("s1"), 1, ["2DCZ"]),
    ("Bind of an unknown name", bind_exec("nope"), 1, ["EZ"]),
    ("Describe of an unknown name", describe_message(b"S", "nope") + SYNC_MESSAGE, 1, ["EZ"]),
    ("Bind after errors", bind_exec("s1"), 1, ["2DCZ"]),
    ("DEALLOCATE s1", q("DEALLOCATE s1"), 1, ["CZ"]),
    ("Bind of the deallocated s1", bind_exec("s1"), 1, ["EZ"]),
    ("Parse s1 + Sync + Bind s1 in one write", parse_message("SELECT 'again'::text", "s1")
     + SYNC_MESSAGE + bind_exec("s1"), 2, ["1Z", "2DCZ"]),
    ("Parse s2 with a parameter, Describe", parse_message("SELECT $1::int * 2 AS twice", "s2")
     + describe_message(b"S", "s2") + SYNC_MESSAGE, 1, ["1tTZ"]),
    ("Bind s2", bind_exec("s2", [21]), 1, ["2DCZ"]),
    ("DEALLOCATE PREPARE s2", q("DEALLOCATE PREPARE s2"), 1, ["CZ"]),
    ("Parse s2, s3", parse_message("SELECT 'second'::text", "s2")
     + parse_message("SELECT 'third'::text", "s3") + SYNC_MESSAGE, 1, ["11Z"]),
    ("DEALLOCATE ALL", q("DEALLOCATE ALL"), 1, ["CZ"]),
    ("every name gone after DEALLOCATE ALL", bind_exec("s1") + bind_exec("s2")
     + bind_exec("s3"), 3, ["EZ", "EZ", "EZ"]),
    ("Parse s1 after DEALLOCATE ALL", parse_message("SELECT 'after all'::text", "s1")
     + bind_exec("s1"), 1, ["12DCZ"]),
    ("Parse s4", parse_message("SELECT 'four'::text", "s4") + SYNC_MESSAGE, 1, ["1Z"]),
    ("DISCARD ALL", q("DISCARD ALL"), 1, ["CZ"]),
    ("every name gone after DISCARD ALL", bind_exec("s1") + bind_exec("s4"), 2, ["EZ", "EZ"]),
    ("Parse s1 after DISCARD ALL", parse_message("SELECT 'after discard'::text", "s1")
     + bind_exec("s1"), 1, ["12DCZ"]),
    ("Parse s5 inside a transaction", q("BEGIN") + parse_message("SELECT 'five'::text", "s5")
     + SYNC_MESSAGE + bind_exec("s5") + q("COMMIT"), 4, ["CZ", "1Z", "2DCZ", "CZ"]),
    ("s5 after its transaction", bind_exec("s5"), 1, ["2DCZ"]),
    ("Close s5 inside a transaction that rolls back", q("BEGIN")
     + close_message(b"S", "s5") + SYNC_MESSAGE + q("ROLLBACK"), 3, ["CZ", "3Z", "CZ"]),
    ("s5 after the rollback", bind_exec("s5"), 1, ["EZ"]),
    ("a statement that fails at Bind", parse_message("SELECT 1 / 0", "s6")
     + bind_exec("s6"), 1, ["1EZ"]),
    ("it still exists", bind_exec("s6"), 1, ["EZ"]),
    ("DEALLOCATE of an unknown name", q("DEALLOCATE nope"), 1, ["EZ"]),
    ("Close of an unknown name", close_message(b"S", "nope") + SYNC_MESSAGE, 1, ["3Z"]),
    ("the session goes on", bind_exec("s1"), 1, ["2DCZ"]),
]


def run_name_steps(conn):
    return [(what, step_replies(conn, data, n)) for what, data, n, _ in NAME_STEPS]


def test_statement_names():
    pool_size, mport = 2, free_port()
    direct = login(PGPORT, user=USER, db=DB, host=PGHOST)
    expected = run_name_steps(direct)
    direct.terminate()
    # PostgreSQL itself answers as the step list says (so the comparison below is meaningful).
    for (what, replies), (_, _, _, kinds) in zip(expected, NAME_STEPS):
        check_eq([r["kinds"] for r in replies], kinds, f"PostgreSQL directly, step {what!r}")
    with Pgring(cache_config(pool_size, mport)) as p:
        # Other clients keep both servers busy with their own statements named s1..s3, so the
        # steps land on different servers.
        def hammer(k, stop):
            h = login(p.port, user=USER, db=DB, timeout=30)
            try:
                h.send(parse_message(f"SELECT 'hammer {k}'::text", "s1")
                       + parse_message(f"SELECT {k} + $1::int", "s2") + SYNC_MESSAGE)
                read_until_ready(h)
                n = 0
                while not stop.is_set():
                    got = step_replies(h, bind_exec("s1") + bind_exec("s2", [n]), 2)
                    if got[0]["rows"] != [[f"hammer {k}"]] or got[1]["rows"] != [[str(k + n)]]:
                        raise AssertionError(f"hammer {k} got {got}")
                    n += 1
                return n
            finally:
                h.terminate()

        steps_while_busy(p.port, USER, DB, hammer, run_name_steps, expected)


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported by the caller
        return f"{type(e).__name__}: {e}"


def test_same_names_different_texts():
    """Many clients use the same statement names for different texts, on 2 servers; each only
    ever runs its own. Now and then a client closes a name and prepares it with a new text."""
    clients, rounds, pool_size, mport = 10, 30, 2, free_port()
    with Pgring(cache_config(pool_size, mport, prepared_statements=8)) as p:
        def client(i):
            c = login(p.port, user=USER, db=DB, timeout=60)
            try:
                version = 0

                def prepare():
                    return (parse_message(f"SELECT {i}::int AS who, {version}::int AS version, "
                                          f"$1::int AS n", "shared", param_oids=(23,))
                            + parse_message(f"SELECT 'client {i} v{version}'::text", "other"))

                got = step_replies(c, prepare() + SYNC_MESSAGE, 1)
                check_eq(got[0]["kinds"], "11Z", f"client {i}: Parse")
                for n in range(rounds):
                    in_tx = n % 3 == 1
                    data = (q("BEGIN") if in_tx else b"") + bind_exec("shared", [n]) \
                        + describe_message(b"S", "other") + bind_exec("other") \
                        + (q("COMMIT") if in_tx else b"")
                    got = step_replies(c, data, 4 if in_tx else 2)
                    if in_tx:
                        got = got[1:3]
                    if got[0]["rows"] != [[str(i), str(version), str(n)]] or \
                            got[1]["rows"] != [[f"client {i} v{version}"]]:
                        raise AssertionError(f"client {i} round {n} (version {version}): {got}")
                    if n % 7 == 6:  # re-prepare under the same names with new texts
                        version += 1
                        got = step_replies(c, close_message(b"S", "shared")
                                           + close_message(b"S", "other") + prepare()
                                           + SYNC_MESSAGE, 1)
                        check_eq(got[0]["kinds"], "3311Z", f"client {i}: Close + Parse")
            finally:
                c.terminate()

        errors = run_clients(client, clients, timeout=90)
        check(not errors, "\n".join(errors))
        # Every client's texts are its own: Parses are not shared (no hits to expect), but
        # statements are injected on servers that lack them, and evicted past 8 per server.
        values, statements = check_cache_used(p, mport, "same names", min_hits=0)
        check(values["pgring_statement_cache_injected_total"] > 0,
              f"no Parse injected: {values}")
        check(values["pgring_statement_cache_evictions_total"] > 0,
              f"prepared_statements: 8 but no eviction: {values}")


# ---------------------------------------------------------------------------------------------
# JDBC

# ---- types dropped and re-created ----------------------------------------------------------

TYPE_TEXT = "SELECT $1::stmt_tmood::text, pg_typeof($1::stmt_tmood)::oid::int"


def prepare_and_run(port, value, name="", describe=False):
    """Parse (+ Describe) + Bind + Execute + Sync on a fresh connection: what a new session
    gets for TYPE_TEXT. Returns (rows or error fields, the ParameterDescription's OIDs)."""
    c = login(port, db="pgring_test")
    try:
        out = parse_message(TYPE_TEXT, name=name)
        if describe:
            out += describe_message(b"S", name)
        c.send(out + bind_message([value], statement=name) + execute_message() + SYNC_MESSAGE)
        msgs, _ = read_until_ready(c)
        params = [body for kind, body in msgs if kind == b"t"]
        oids = list(struct.unpack(f"!{len(params[0][2:]) // 4}I", params[0][2:])) if params else []
        errors = error_fields_in(msgs)
        if errors:
            return ("error", errors[0].get("C"), errors[0].get("M")), oids
        return [data_row_values(body) for kind, body in msgs if kind == b"D"], oids
    finally:
        c.terminate()


def recreate_type(conn_query):
    conn_query("DROP TYPE IF EXISTS stmt_tmood; CREATE TYPE stmt_tmood AS ENUM ('a', 'b', 'c')")


def test_type_dropped_and_recreated():
    # PostgreSQL fixes a prepared statement's parameter types (OIDs) when it is prepared. A
    # statement pgring keeps prepared on a server from before DROP TYPE / CREATE TYPE must not
    # serve a new client's Parse: a new session would look the type up again. Each case runs
    # against PostgreSQL directly first; the DDL runs through pgring, then directly on
    # PostgreSQL (unseen by pgring).
    setup = connect(PGPORT, db="pgring_test", host=PGHOST)
    setup.autocommit = True
    query(setup, "DROP TYPE IF EXISTS stmt_tmood; CREATE TYPE stmt_tmood AS ENUM ('a', 'b')")
    direct_first, _ = prepare_and_run(PGPORT, "a")
    recreate_type(lambda sql: query(setup, sql))
    new_oid = query_one(setup, "SELECT 'stmt_tmood'::regtype::oid::int")
    direct_after, direct_oids = prepare_and_run(PGPORT, "c", describe=True)
    check_eq(direct_after, [["c", str(new_oid)]], "direct: a new session after the DDL")
    check_eq(direct_oids, [new_oid], "direct: the ParameterDescription after the DDL")
    for ddl_through_pgring in (True, False):
        query(setup, "DROP TYPE IF EXISTS stmt_tmood; CREATE TYPE stmt_tmood AS ENUM ('a', 'b')")
        with Pgring(pool_config(pool_mode="transaction", pool_size=1)) as p:
            check_eq(prepare_and_run(p.port, "a")[0][0][0], "a", "before the DDL")
            check_eq(prepare_and_run(p.port, "b", name="s1", describe=True)[0][0][0], "b",
                     "a named statement, described, before the DDL")
            if ddl_through_pgring:
                c = connect(p.port, db="pgring_test")
                c.autocommit = True
                recreate_type(lambda sql: query(c, sql))
                c.close()
            else:
                recreate_type(lambda sql: query(setup, sql))
            new_oid = query_one(setup, "SELECT 'stmt_tmood'::regtype::oid::int")
            where = "through pgring" if ddl_through_pgring else "directly on PostgreSQL"
            got, _ = prepare_and_run(p.port, "c")
            check_eq(got, [["c", str(new_oid)]],
                     f"a new client's Parse after the DDL {where}")
            got, oids = prepare_and_run(p.port, "c", name="s1", describe=True)
            check_eq(got, [["c", str(new_oid)]],
                     f"a named statement, described, after the DDL {where}")
            if ddl_through_pgring:
                check_eq(oids, [new_oid], f"its ParameterDescription after the DDL {where}")
            else:
                # Unseen DDL: this first Describe came from the server's old copy (the type's
                # old OID: PostgreSQL describes a statement without re-checking its parameter
                # types); its Bind failed with "cache lookup failed for type" and was re-run on
                # a fresh copy. From then on every Parse prepares afresh.
                log(f"first Describe after unseen DDL: {oids} (new type {new_oid})")
                got, oids = prepare_and_run(p.port, "c", name="s1", describe=True)
                check_eq((got, oids), ([["c", str(new_oid)]], [new_oid]),
                         "the next client after the DDL directly on PostgreSQL")
    check_eq(direct_first[0][0], "a", "direct before the DDL")
    query(setup, "DROP TYPE IF EXISTS stmt_tmood")
    setup.close()


def test_jdbc_prepared_statements():
    javac, java = shutil.which("javac"), shutil.which("java")
    if javac is None or java is None:
        skip_test("no JDK (javac/java)")
    if not os.path.exists(JDBC_JAR):
        skip_test(f"{JDBC_JAR} is missing (apt-get install libpostgresql-jdbc-java)")
    source = os.path.join(IT_DIR, "jdbc", "PreparedStress.java")
    build = tempfile.mkdtemp(prefix="pgring-it-jdbc-")
    try:
        r = subprocess.run([javac, "-nowarn", "-cp", JDBC_JAR, "-d", build, source],
                           capture_output=True, text=True, timeout=120)
        check(r.returncode == 0, f"javac failed:\n{r.stdout}{r.stderr}")
        connections, uses, pool_size, mport = 8, 20, 2, free_port()
        setup = setup_conn()
        query(setup, "DROP TABLE IF EXISTS stmt_jdbc")
        query(setup, "CREATE TABLE stmt_jdbc (conn int, i int)")
        try:
            with Pgring(cache_config(pool_size, mport)) as p, BackendSampler(DB) as sampler:
                url = f"jdbc:postgresql://127.0.0.1:{p.port}/{DB}?sslmode=disable"
                r = subprocess.run([java, "-cp", f"{build}:{JDBC_JAR}", "PreparedStress", url,
                                    USER, str(connections), str(uses)],
                                   capture_output=True, text=True, timeout=120,
                                   stdin=subprocess.DEVNULL)
                out = (r.stdout + r.stderr).strip()
                log(out)
                check(r.returncode == 0 and out.splitlines()[-1] == "ok",
                      f"PreparedStress: status {r.returncode}:\n{out}")
                sampler.check_max(pool_size)
                committed = {c: n for c, n in query(
                    setup, "SELECT conn, count(*) FROM stmt_jdbc GROUP BY conn")}
                want = {int(m.group(1)): int(m.group(2))
                        for m in re.finditer(r"connection (\d+) committed (\d+)", out)}
                check_eq(committed, want, "rows per connection")
                check_eq(len(want), connections, "connections that reported")
                _, statements = check_cache_used(p, mport, "JDBC", min_hits=connections)
                check(any("FROM stmt_jdbc" in s["query"] or "stmt_jdbc" in s["query"]
                          for s in statements),
                      f"SHOW STATEMENTS lacks the JDBC statements: "
                      f"{[s['query'] for s in statements]}")
        finally:
            query(setup, "DROP TABLE IF EXISTS stmt_jdbc")
            setup.close()
    finally:
        shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    run_tests(globals())
