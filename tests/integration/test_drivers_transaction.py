#!/usr/bin/python3
"""Real clients through pgring in transaction mode: psql (several commands), pgbench -S with
the simple and the extended protocol (16 clients on pool_size 4, no failed transaction), and
asyncpg (fetch, executemany, transactions, cursors, COPY), also many asyncpg connections at once
on a small pool; node-postgres (npm pg) and ruby-pg workloads with named prepared statements,
their results compared with the same workload run directly against PostgreSQL first.

These tests connect asyncpg with statement_cache_size=0 (unnamed statements only): its named
prepared statements, and pgbench -M prepared, are test_statement_cache.py's subject (the statement
cache, docs/transaction-pooling.md)."""

import asyncio
import io
import json
import os
import re
import shutil
import subprocess

from lib import (PGHOST, PGPORT, BackendSampler, Pgring, check, check_eq, log, monitor_connect,
                pgbench, pool_config, psql, psql_ok, query, run_tests, skip, skip_test,
                wait_no_backends)

try:
    import asyncpg
except ImportError:  # Debian's python3-asyncpg
    asyncpg = None

DB, USER = "app", "app"


def test_psql_commands():
    with Pgring(pool_config(pool_size=1)) as p:
        # Several statements in one -c: one Query, every result printed (psql 15).
        check_eq(psql_ok(p.port, "SELECT 1; SELECT 2", db=DB, user=USER), "1\n2",
                 "psql -c with two statements")
        # Several -c: separate Queries on one session; a SET in one holds for the next.
        out = psql_ok(p.port, "SET statement_timeout = '3s'", db=DB, user=USER,
                      extra_args=["-c", "SELECT 1", "-c", "SHOW statement_timeout"])
        check_eq(out.splitlines(), ["SET", "1", "3s"], "a SET across -c commands")
        # An explicit transaction over several -c commands keeps one backend.
        out = psql_ok(p.port, "BEGIN", db=DB, user=USER,
                      extra_args=["-c", "SELECT pg_backend_pid()", "-c", "SELECT 1",
                                  "-c", "SELECT pg_backend_pid()", "-c", "COMMIT"])
        lines = [line for line in out.splitlines() if line.isdigit()]
        check_eq(len(lines), 3, f"psql output {out!r}")
        check_eq(lines[0], lines[2], "backend pid within the transaction")
        # -1 (single transaction) with an error: nothing committed, and the next psql works
        # on the (only) server.
        rc, _, err = psql(p.port, "CREATE TABLE pgring_psql_t(x int)", db=DB, user=USER,
                          extra_args=["-1", "-c", "INSERT INTO pgring_psql_t VALUES (1)",
                                      "-c", "SELECT 1/0"])
        check(rc != 0 and "division by zero" in err, f"psql -1 with an error: {rc} {err}")
        check_eq(psql_ok(p.port, "SELECT to_regclass('pgring_psql_t') IS NULL", db=DB,
                         user=USER), "t", "the table of the rolled-back psql -1 run")
        # An error stops psql (ON_ERROR_STOP) and the server is fine for the next one.
        rc, _, err = psql(p.port, "SELECT 1/0", db=DB, user=USER)
        check(rc != 0 and "division by zero" in err, f"psql error: {rc} {err}")
        check_eq(psql_ok(p.port, "SELECT 'fine'", db=DB, user=USER), "fine")


def run_pgbench(p, args):
    rc, out, err = pgbench(p.port, args, db=DB, user=USER)
    log(out)
    check_eq(rc, 0, f"pgbench {' '.join(args)} exit status\n{out}\n{err}")
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    check(processed and int(processed.group(1)) > 0, f"no transactions processed:\n{out}")
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed:  # printed by pgbench 15 and later
        check_eq(int(failed.group(1)), 0, "failed transactions")
    check("error" not in err.lower(), f"pgbench reported errors:\n{err}")


def test_pgbench_select_only():
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    monitor.close()
    pool_size = 4
    with Pgring(pool_config(pool_size=pool_size)) as p:
        # Initialisation through pgring in transaction mode: DDL, COPY, VACUUM.
        rc, out, err = pgbench(p.port, ["-i", "-s", "1", "-q"], db=DB, user=USER)
        check_eq(rc, 0, f"pgbench -i exit status\n{out}\n{err}")
        with BackendSampler(DB) as sampler:
            for mode in ("simple", "extended"):
                run_pgbench(p, ["-S", "-M", mode, "-c", "16", "-j", "2", "-T", "5"])
        log(f"pgbench: max {sampler.max} backends on pool_size {pool_size}")
        sampler.check_max(pool_size)
        # A TPC-B-like run (explicit transactions with writes) in the simple protocol.
        run_pgbench(p, ["-M", "simple", "-c", "8", "-j", "2", "-T", "4"])
        out = psql_ok(p.port, "SELECT count(*) FROM pgbench_history", db=DB, user=USER)
        check(int(out) > 0, "no pgbench_history rows")
        psql_ok(p.port, "DROP TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, "
                        "pgbench_history", db=DB, user=USER)


def asyncpg_connect(p, **kwargs):
    # statement_cache_size=0: see the module docstring.
    return asyncpg.connect(host="127.0.0.1", port=p.port, user=USER, database=DB,
                           statement_cache_size=0, timeout=30, **kwargs)


def require_asyncpg():
    if asyncpg is None:
        skip("python3-asyncpg is not installed")


def test_asyncpg_basics():
    require_asyncpg()
    setup = monitor_connect(db=DB, user=USER)
    query(setup, "DROP TABLE IF EXISTS pgring_apg")
    query(setup, "CREATE TABLE pgring_apg (id int PRIMARY KEY, name text, score float8)")

    async def main(p):
        conn = await asyncpg_connect(p)
        other = await asyncpg_connect(p)
        try:
            check_eq(await conn.fetchval("SELECT $1::int + 1", 41), 42, "fetchval")
            rows = await conn.fetch("SELECT g, g * 2 AS twice FROM generate_series(1, $1) g", 5)
            check_eq([(r["g"], r["twice"]) for r in rows], [(g, 2 * g) for g in range(1, 6)],
                     "fetch")
            check_eq(await conn.fetchrow("SELECT $1::text AS a, $2::int AS b", "x", None),
                     ("x", None), "fetchrow with a NULL")

            # executemany: one batch of Bind/Execute messages.
            await conn.executemany("INSERT INTO pgring_apg VALUES ($1, $2, $3)",
                                   [(i, f"name{i}", i / 2) for i in range(100)])
            check_eq(await other.fetchval("SELECT count(*) FROM pgring_apg"), 100,
                     "rows after executemany")

            # A transaction: one backend throughout, committed.
            async with conn.transaction():
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                await conn.execute("UPDATE pgring_apg SET score = score + 1 WHERE id < 10")
                check_eq(await other.fetchval("SELECT 1"), 1)
                check_eq(await conn.fetchval("SELECT pg_backend_pid()"), pid,
                         "backend inside the transaction")
            check_eq(await other.fetchval("SELECT sum(score) FROM pgring_apg WHERE id < 10"),
                     sum(i / 2 + 1 for i in range(10)), "committed update")

            # A transaction rolled back by an exception.
            try:
                async with conn.transaction():
                    await conn.execute("DELETE FROM pgring_apg")
                    await conn.fetchval("SELECT 1/0")
            except asyncpg.exceptions.DivisionByZeroError:
                pass
            check_eq(await other.fetchval("SELECT count(*) FROM pgring_apg"), 100,
                     "rows after the rolled-back transaction")
            check_eq(await conn.fetchval("SELECT 'after rollback'"), "after rollback")

            # Cursors (Execute with a row limit) inside a transaction.
            async with conn.transaction():
                total = 0
                async for rec in conn.cursor("SELECT g FROM generate_series(1, 1000) g",
                                             prefetch=50):
                    total += rec["g"]
                check_eq(total, 500500, "sum over an iterated cursor")
                cur = await conn.cursor("SELECT id FROM pgring_apg ORDER BY id")
                check_eq([r["id"] for r in await cur.fetch(10)], list(range(10)), "cur.fetch")
                check_eq(await cur.forward(5), 5, "cur.forward")
                check_eq((await cur.fetchrow())["id"], 15, "cur.fetchrow after forward")
                check_eq(await other.fetchval("SELECT 2"), 2)
                check_eq([r["id"] for r in await cur.fetch(3)], [16, 17, 18], "cur.fetch again")

            # COPY: records in (binary COPY), table and query out.
            await conn.copy_records_to_table(
                "pgring_apg", records=[(1000 + i, f"copied{i}", 0.5) for i in range(500)],
                columns=["id", "name", "score"])
            check_eq(await other.fetchval("SELECT count(*) FROM pgring_apg WHERE id >= 1000"),
                     500, "rows from copy_records_to_table")
            out = io.BytesIO()
            await conn.copy_from_query("SELECT id, name FROM pgring_apg WHERE id >= 1000 "
                                       "ORDER BY id", output=out, format="csv")
            lines = out.getvalue().decode().splitlines()
            check_eq(len(lines), 500, "COPY TO lines")
            check_eq(lines[0], "1000,copied0", "first COPY TO line")
            out = io.BytesIO()
            await conn.copy_from_table("pgring_apg", output=out)
            check_eq(len(out.getvalue().decode().splitlines()), 600, "copy_from_table lines")
            # asyncpg now closes the statements it no longer needs (Close + Sync) between the
            # Parse and the Bind of this query: see test_transaction_pool.py's
            # test_unnamed_statement_bound_after_a_sync.
            check_eq(await conn.fetchval("SELECT count(*) FROM pgring_apg"), 600,
                     "count(*) by conn after its COPYs")
        finally:
            await conn.close()
            await other.close()

    try:
        with Pgring(pool_config(pool_size=2)) as p:
            asyncio.run(asyncio.wait_for(main(p), 120))
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_apg")
        setup.close()


def test_asyncpg_many_connections_small_pool():
    require_asyncpg()
    connections, pool_size, rounds = 12, 3, 15
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    monitor.close()

    async def worker(p, i, errors):
        conn = await asyncpg_connect(p)
        try:
            for j in range(rounds):
                # Each connection's statement text differs, so a Bind that reached another
                # client's unnamed statement shows up as a wrong value.
                got = await conn.fetchval(f"SELECT {i} * 1000 + $1::int", j)
                if got != i * 1000 + j:
                    raise AssertionError(f"round {j}: got {got}, expected {i * 1000 + j}")
                got = await conn.fetch(f"SELECT {i} AS conn, g FROM generate_series(1, $1) g", 2)
                if [tuple(r) for r in got] != [(i, 1), (i, 2)]:
                    raise AssertionError(f"round {j}: fetch got {[tuple(r) for r in got]}")
                async with conn.transaction():
                    pid = await conn.fetchval("SELECT pg_backend_pid()")
                    rows = await conn.fetch("SELECT g FROM generate_series(1, $1) g", j + 1)
                    if len(rows) != j + 1:
                        raise AssertionError(f"round {j}: {len(rows)} rows")
                    if await conn.fetchval("SELECT pg_backend_pid()") != pid:
                        raise AssertionError(f"round {j}: backend changed in a transaction")
        except Exception as e:  # noqa: BLE001 - collected below
            errors.append(f"connection {i}: {type(e).__name__}: {e}")
        finally:
            await conn.close()

    async def main(p):
        errors = []
        await asyncio.gather(*(worker(p, i, errors) for i in range(connections)))
        return errors

    with Pgring(pool_config(pool_size=pool_size)) as p, BackendSampler(DB) as sampler:
        errors = asyncio.run(asyncio.wait_for(main(p), 120))
    check(not errors, f"{len(errors)} asyncpg errors:\n" + "\n".join(errors[:20]))
    sampler.check_max(pool_size)


# ---- node-postgres and ruby-pg -------------------------------------------------------------

DRIVERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers")
# npm packages are installed once here (from the npm registry), never into the source tree.
NODE_MODULES = os.environ.get("PGRING_TEST_NODE_DIR", "/var/cache/pgring-tests/node")


def fresh_driver_table(name):
    conn = monitor_connect(db=DB, user=USER)
    query(conn, f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id int PRIMARY KEY, v text)")
    conn.close()


def run_workload(cmd, port, table, env=None):
    """The workload against `port` (a fresh table first); its JSON line of results."""
    fresh_driver_table(table)
    r = subprocess.run(cmd + [str(port), USER, "secret", DB, table], capture_output=True,
                       text=True, timeout=180, env=env)
    check_eq(r.returncode, 0, f"{cmd[0]} workload against port {port}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare_with_direct(cmd, table, env=None):
    direct = run_workload(cmd, PGPORT, table, env)
    log(f"direct: {direct}")
    with Pgring(pool_config(pool_size=2)) as p, BackendSampler(DB) as sampler:
        through = run_workload(cmd, p.port, table, env)
    log(f"through pgring: {through}")
    check_eq(through, direct, f"{os.path.basename(cmd[-1])} through pgring vs direct")
    sampler.check_max(2)  # six clients on two servers: the statements moved between them
    fresh_driver_table(table)


def test_node_postgres_named_statements():
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        skip_test("node or npm is not installed (scripts/deps.sh installs nodejs and npm)")
    if not os.path.isdir(os.path.join(NODE_MODULES, "node_modules", "pg")):
        os.makedirs(NODE_MODULES, exist_ok=True)
        r = subprocess.run([npm, "install", "--prefix", NODE_MODULES, "--no-audit", "--no-fund",
                            "pg@8"], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            skip_test(f"npm install pg failed (no access to the npm registry?): "
                      f"{r.stderr.strip()[-300:]}")
    env = dict(os.environ, NODE_PATH=os.path.join(NODE_MODULES, "node_modules"))
    compare_with_direct([node, os.path.join(DRIVERS_DIR, "node_pg_workload.js")], "drv_node",
                        env)


def test_ruby_pg_named_statements():
    ruby = shutil.which("ruby")
    if ruby is None or subprocess.run([ruby, "-e", "require 'pg'"],
                                      capture_output=True).returncode != 0:
        skip_test("ruby-pg is not installed (scripts/deps.sh installs ruby-pg)")
    compare_with_direct([ruby, os.path.join(DRIVERS_DIR, "ruby_pg_workload.rb")], "drv_ruby")


if __name__ == "__main__":
    run_tests(globals())
