#!/usr/bin/python3
"""Configuration reload on SIGHUP (docs/operations.md, "Reload"): a changed pool_size applies live
without dropping connected clients; a broken file is reported, counted in
pgring_reload_failures_total and the running config stays; a database added by reload is
connectable; one removed by reload closes its clients."""

import copy
import os
import re
import time

from lib import (Background, PGHOST, PGPORT, Pgring, admin_rows, backend_pids, backends, check,
                check_eq, connect, database_row, expect_closed_with, expect_error, free_port, log,
                login, login_error, metric_sum, monitor_connect, pool_config, pool_count, pool_row,
                query, query_one, run_tests, scrape, wait_no_backends, wait_until)


def sighup(p, config):
    """Write `config`, send SIGHUP and wait until pgring logged the reload's outcome."""
    before = p.log().count("configuration reloaded")
    p.reload(config)
    wait_until(lambda: p.log().count("configuration reloaded") > before, 10,
               what="'configuration reloaded' in the log")


def test_sighup_pool_size_applies_live():
    monitor = monitor_connect()
    wait_no_backends(monitor, "app")
    mport = free_port()
    config = pool_config(pool_mode="transaction", pool_size=1, metrics_port=mport)
    with Pgring(config) as p:
        idle = connect(p.port, db="app")
        a = connect(p.port, db="app")
        b = connect(p.port, db="app")
        check_eq(query_one(idle, "SELECT 1"), 1)
        a.autocommit = False
        pid_a = query_one(a, "SELECT pg_backend_pid()")  # holds the only server
        check_eq(pool_row(p.port, "app")["pool_size"], "1")
        b.autocommit = False
        waiting = Background(lambda: query_one(b, "SELECT pg_backend_pid()"))
        wait_until(lambda: pool_count(p.port, "app", "cl_waiting") == 1, 15,
                   what="B waiting for the only server (SHOW POOLS cl_waiting)",
                   describe=lambda: pool_row(p.port, "app"))
        check(not waiting.done(), "B got a server although pool_size is 1 and A holds it")

        new = copy.deepcopy(config)
        new["defaults"]["pool_size"] = 3
        sighup(p, new)
        # B no longer waits for A: the pool may open a second server now.
        pid_b = waiting.result(10, "B's query after pool_size grew to 3")
        check(pid_b != pid_a, "B ran on A's server")
        check_eq(pool_row(p.port, "app")["pool_size"], "3", "SHOW POOLS pool_size after SIGHUP")
        check_eq(database_row(p.port, "app")["pool_size"], "3", "SHOW DATABASES pool_size")
        # Nobody was dropped: the transactions and the idle client go on.
        check_eq(query_one(a, "SELECT pg_backend_pid()"), pid_a, "A's transaction")
        a.commit()
        b.commit()
        check_eq(query_one(idle, "SELECT 2"), 2, "an idle client after SIGHUP")
        check_eq(metric_sum(scrape(mport), "pgring_reloads_total"), 1.0, "pgring_reloads_total")

        # Shrinking: surplus idle servers are closed, clients keep working.
        check(len(backend_pids(monitor, "app")) >= 2, "expected two servers before shrinking")
        new["defaults"]["pool_size"] = 1
        sighup(p, new)
        wait_until(lambda: len(backend_pids(monitor, "app")) <= 1, 10,
                   what="surplus servers closed after pool_size shrank to 1")
        check_eq(pool_row(p.port, "app")["pool_size"], "1", "SHOW POOLS after shrinking")
        for c in (a, b, idle):
            c.autocommit = True
            check_eq(query_one(c, "SELECT 3"), 3, "a client after shrinking")
            c.close()
        check_eq(metric_sum(scrape(mport), "pgring_reloads_total"), 2.0, "pgring_reloads_total")
    monitor.close()


def test_reload_under_load_32_clients():
    """pool_size changes live (SHOW POOLS and pg_stat_activity) while 32 clients keep running
    transactions: zero errors, and the backend count follows the new limit."""
    import threading
    monitor = monitor_connect()
    wait_no_backends(monitor, "app")
    config = pool_config(pool_mode="transaction", pool_size=2)
    with Pgring(config) as p:
        stop = threading.Event()
        errors, done = [], [0]
        lock = threading.Lock()

        def client(i):
            try:
                conn = connect(p.port, db="app")
                n = 0
                while not stop.is_set():
                    conn.autocommit = False
                    check_eq(query_one(conn, "SELECT %s::int FROM pg_sleep(0.005)", (i,)), i)
                    conn.commit()
                    n += 1
                conn.close()
                with lock:
                    done[0] += n
            except Exception as e:  # noqa: BLE001 - collected below
                with lock:
                    errors.append(f"client {i}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(32)]
        for t in threads:
            t.start()
        samples = []
        for size in (2, 6, 3):
            new = copy.deepcopy(config)
            new["defaults"]["pool_size"] = size
            sighup(p, new)
            wait_until(lambda: pool_row(p.port, "app")["pool_size"] == str(size), 10,
                       what=f"SHOW POOLS pool_size {size}")
            # Wait for the pool to settle at the new size (a shrink closes the extra servers as
            # their transactions end), then sample the server connections.
            wait_until(lambda: len(backend_pids(monitor, "app")) <= size, 15,
                       what=f"the server connections to shrink to pool_size {size}",
                       describe=lambda: backends(monitor, "app"))
            seen = [len(backend_pids(monitor, "app")) for _ in range(20) if not time.sleep(0.02)]
            samples.append((size, max(seen)))
        stop.set()
        for t in threads:
            t.join(30)
        check(not errors, "client errors during reloads:\n" + "\n".join(errors))
        check(done[0] > 0, "no transaction completed")
        log(f"32 clients, {done[0]} transactions across reloads; (pool_size, max backends seen): {samples}")
        for size, seen in samples:
            check(seen <= size, f"pool_size {size}: saw {seen} server connections")
        check(samples[1][1] > 2, f"the pool did not grow after pool_size 6: {samples}")
    monitor.close()


def test_sighup_broken_file_keeps_running_config():
    mport = free_port()
    config = pool_config(pool_mode="transaction", pool_size=2, metrics_port=mport,
                        timeouts={"query": "0"})
    with Pgring(config) as p:
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1)
        cases = [
            ("YAML syntax error", "defaults: [this is not\n  yaml: at all\n"),
            ("invalid value", None),
        ]
        failures = 0
        for what, text in cases:
            if text is None:
                bad = copy.deepcopy(config)
                bad["defaults"]["pool_size"] = -5
                bad["defaults"]["pool_mode"] = "statement"
                p.write_config(bad)
            else:
                with open(p.config_path, "w") as f:
                    f.write(text)
            before = len(p.log())
            p.reload()
            m = wait_until(lambda: re.search(r"reload.*failed.*", p.log()[before:]),
                           10, what=f"a 'reload ... failed' log line for the {what}")
            failures += 1
            log(f"{what}: {m.group(0)}")
            check_eq(metric_sum(scrape(mport), "pgring_reload_failures_total"), float(failures),
                     f"pgring_reload_failures_total after the {what}")
            check_eq(metric_sum(scrape(mport), "pgring_reloads_total"), 0.0,
                     "pgring_reloads_total after failed reloads")
            check(p.alive(), f"pgring died on a reload of a file with a {what}")
            # The old config stays: same pool settings, clients work, new clients get in.
            row = pool_row(p.port, "pgring_test")
            check_eq((row["pool_size"], row["pool_mode"]), ("2", "transaction"),
                     f"pool settings after the {what}")
            check_eq(query_one(c, "SELECT 2"), 2, f"the connected client after the {what}")
            n = connect(p.port)
            check_eq(query_one(n, "SELECT 3"), 3, f"a new client after the {what}")
            n.close()
        # A good file afterwards is applied.
        good = copy.deepcopy(config)
        good["defaults"]["pool_size"] = 4
        sighup(p, good)
        check_eq(pool_row(p.port, "pgring_test")["pool_size"], "4", "pool_size after a good reload")
        check_eq(metric_sum(scrape(mport), "pgring_reloads_total"), 1.0, "pgring_reloads_total")
        check_eq(query_one(c, "SELECT 4"), 4)
        c.close()


def test_reload_adds_and_removes_databases():
    config = pool_config(pool_mode="transaction", pool_size=2,
                        databases={"pgring_test": {"host": PGHOST, "port": PGPORT}})
    with Pgring(config) as p:
        e = login_error(p.port, db="added")
        check_eq(e.sqlstate, "3D000", f"database 'added' before the reload ({e})")
        keep = connect(p.port)
        check_eq(query_one(keep, "SELECT 1"), 1)

        new = copy.deepcopy(config)
        new["databases"]["added"] = {"host": PGHOST, "port": PGPORT, "dbname": "app"}
        sighup(p, new)
        c = connect(p.port, db="added")
        check_eq(query_one(c, "SELECT current_database()"), "app", "database behind 'added'")
        check(database_row(p.port, "added") is not None, "SHOW DATABASES lacks 'added'")
        check_eq(query_one(keep, "SELECT 2"), 2, "a client of the old database")
        c.close()

        # Removing it again closes its clients (57P01) and refuses new ones.
        r = login(p.port, db="added", timeout=30)
        check_eq(r.simple_query("SELECT 1"), [["1"]])
        sighup(p, config)
        expect_closed_with(r, "57P01", timeout=10, what="a client of a removed database")
        r.close()
        e = login_error(p.port, db="added")
        check_eq(e.sqlstate, "3D000", f"database 'added' after its removal ({e})")
        check_eq(query_one(keep, "SELECT 3"), 3, "a client of the database that stays")
        check_eq([r["name"] for r in admin_rows(p.port, "SHOW DATABASES")], ["pgring_test"],
                 "SHOW DATABASES after the removal")
        keep.close()


def test_reload_changes_timeouts():
    config = pool_config(pool_mode="transaction", pool_size=2)
    with Pgring(config) as p:
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 'slept' FROM pg_sleep(1)"), "slept", "no query timeout yet")
        new = copy.deepcopy(config)
        new["timeouts"] = {"query": "300ms", "shutdown": "5s"}
        sighup(p, new)
        expect_error(lambda: query(c, "SELECT pg_sleep(5)"), "57014")
        time.sleep(0.3)  # see test_cancel.settle(): PostgreSQL's second SIGINT
        check_eq(query_one(c, "SELECT 1"), 1, "the client after its query was timed out")
        config_rows = {r["key"]: r["value"] for r in admin_rows(p.port, "SHOW CONFIG")}
        check_eq(config_rows.get("timeouts.query"), "300ms", "SHOW CONFIG timeouts.query")
        c.close()


def test_reload_names_what_needs_a_restart():
    # Listeners, workers, the I/O engine and the metrics endpoint are set up once: a reload that
    # changes them says so, applies the rest, and pgring keeps serving on what it has.
    config = pool_config(pool_size=2)
    with Pgring(config) as p:
        new = copy.deepcopy(config)
        new["workers"] = 2
        # (The suite's second run starts every pgring on epoll: change to the other one.)
        running = os.environ.get("PGRING_IT_IO_ENGINE", "auto")
        new["io"] = {"engine": "io_uring" if running == "epoll" else "epoll"}
        new["metrics"] = {"listen": f"127.0.0.1:{free_port()}"}
        new["defaults"]["pool_size"] = 3
        sighup(p, new)
        for what in ("workers", "io.engine", "metrics.listen"):
            p.wait_log(f"reload: {what} changed; it takes effect after a restart")
        config_rows = {r["key"]: r["value"] for r in admin_rows(p.port, "SHOW CONFIG")}
        check_eq(config_rows.get("defaults.pool_size"), "3", "SHOW CONFIG defaults.pool_size")
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1, "a client after the reload")
        c.close()


if __name__ == "__main__":
    run_tests(globals())
