#!/usr/bin/python3
"""The admin console (database "pgring", docs/operations.md) through psql: every SHOW command
answers with rows; stats users may only SHOW; other users are refused with 42501; PAUSE holds
new queries until RESUME; RELOAD applies a changed file; KILL db closes that database's clients
with 57P01; SHUTDOWN makes pgring exit cleanly."""

import time

from lib import (Background, Pgring, STATS_USER, SYNC_MESSAGE, admin_ok, admin_psql, admin_rows,
                bind_message, check, check_eq, connect, database_row, execute_message,
                expect_closed_with, expect_error, log, login, login_error, parse_message,
                pool_config, pool_count, pool_row, query, query_one, read_until_ready, run_tests,
                wait_exit, wait_until)

SHOW_COMMANDS = ["HELP", "POOLS", "CLIENTS", "SERVERS", "STATS", "DATABASES", "CONFIG",
                 "STATEMENTS", "VERSION", "HOSTS", "SOCKETS"]


def test_every_show_command_returns_rows():
    with Pgring(pool_config(pool_mode="transaction", pool_size=3)) as p:
        # Some traffic first, so the pool, server, client and statement lists are not empty.
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1)
        with c.cursor() as cur:  # a parameterised query: psycopg2 sends it as a simple Query
            cur.execute("SELECT %s::int", (5,))
        r = login(p.port)
        r.simple_query("SELECT 1")
        c.autocommit = False
        query(c, "SELECT 2")  # holds a server: SHOW SERVERS has an active one
        results = {}
        for what in SHOW_COMMANDS:
            rows = admin_rows(p.port, f"SHOW {what}")
            results[what] = rows
            log(f"SHOW {what}: {len(rows)} rows; first: {rows[0] if rows else None}")
        c.commit()
        for what in SHOW_COMMANDS:
            if what == "STATEMENTS":
                continue  # only prepared statements are listed; psql/psycopg2 prepare none
            check(results[what], f"SHOW {what} returned no rows")
        help_text = " ".join(r["command"] for r in results["HELP"])
        for word in ("POOLS", "PAUSE", "RESUME", "RELOAD", "KILL", "SHUTDOWN"):
            check(word in help_text, f"SHOW HELP does not mention {word}: {help_text!r}")
        check(results["VERSION"][0]["version"].startswith("pgring "),
              f"SHOW VERSION: {results['VERSION']}")
        pool = [r for r in results["POOLS"] if r["database"] == "pgring_test"]
        check(pool, f"SHOW POOLS has no pgring_test pool: {results['POOLS']}")
        check_eq(pool[0]["pool_size"], "3", "SHOW POOLS pool_size")
        check_eq(pool[0]["pool_mode"], "transaction", "SHOW POOLS pool_mode")
        check(int(pool[0]["sv_active"]) >= 1, f"SHOW POOLS while a transaction is open: {pool}")
        check(len([r for r in results["CLIENTS"] if r["database"] == "pgring_test"]) >= 2,
              f"SHOW CLIENTS: {results['CLIENTS']}")
        check(any(s["database"] == "pgring_test" and int(s["backend_pid"]) > 0
                  for s in results["SERVERS"]), f"SHOW SERVERS: {results['SERVERS']}")
        stats = [r for r in results["STATS"] if r["database"] == "pgring_test"]
        check(stats and int(stats[0]["queries"]) >= 3, f"SHOW STATS: {results['STATS']}")
        check_eq(sorted(r["name"] for r in results["DATABASES"]), ["app", "pgring_test"],
                 "SHOW DATABASES names")
        config = {r["key"]: r["value"] for r in results["CONFIG"]}
        check_eq(config.get("defaults.pool_size"), "3", "SHOW CONFIG defaults.pool_size")
        check_eq(config.get("defaults.pool_mode"), "transaction", "SHOW CONFIG pool_mode")
        sockets = results["SOCKETS"]
        check({"client", "server"} <= {r["type"] for r in sockets}, f"SHOW SOCKETS: {sockets}")
        check(all(int(r["fd"]) >= 0 for r in sockets), f"SHOW SOCKETS fds: {sockets}")
        hosts = [h for h in results["HOSTS"] if h["database"] == "pgring_test"]
        check(hosts and hosts[0]["state"] == "up" and int(hosts[0]["connections"]) >= 1,
              f"SHOW HOSTS: {results['HOSTS']}")

        # With a named prepared statement in use, SHOW STATEMENTS lists it.
        r.send(parse_message("SELECT 'admin-stmt'::text", name="s1") + bind_message(
            statement="s1") + execute_message() + SYNC_MESSAGE)
        _, status = read_until_ready(r)
        check_eq(status, "I", "transaction status after the prepared statement")
        stmts = admin_rows(p.port, "SHOW STATEMENTS")
        log(f"SHOW STATEMENTS after a prepared statement: {stmts}")
        check(any("admin-stmt" in s["query"] for s in stmts),
              f"SHOW STATEMENTS does not list the prepared statement: {stmts}")
        r.terminate()
        c.close()
        # Unknown commands are errors, not crashes.
        rc, _, err = admin_psql(p.port, "SHOW NONSENSE")
        check(rc != 0 and "unknown SHOW command" in err, f"SHOW NONSENSE: {rc} {err}")
        check_eq(admin_rows(p.port, "SHOW VERSION")[0]["version"],
                 results["VERSION"][0]["version"], "the console after an error")


def test_stats_user_may_only_show():
    with Pgring(pool_config()) as p:
        c = connect(p.port)  # so that the pgring_test pool and its stats exist
        check_eq(query_one(c, "SELECT 1"), 1)
        c.close()
        shown = {what: admin_rows(p.port, f"SHOW {what}", user=STATS_USER)
                 for what in ("POOLS", "STATS", "VERSION", "CONFIG")}
        pools = [r for r in shown["POOLS"] if r["database"] == "pgring_test"]
        check(pools and pools[0]["pool_size"] == "5", f"SHOW POOLS as a stats user: {shown}")
        stats = [r for r in shown["STATS"] if r["database"] == "pgring_test"]
        check(stats and int(stats[0]["queries"]) >= 1, f"SHOW STATS as a stats user: {shown}")
        check(shown["VERSION"] and shown["VERSION"][0]["version"].startswith("pgring "),
              f"SHOW VERSION as a stats user: {shown['VERSION']}")
        config = {r["key"]: r["value"] for r in shown["CONFIG"]}
        check_eq(config.get("defaults.pool_size"), "5", "SHOW CONFIG as a stats user")
        for cmd in ("PAUSE", "RESUME", "RELOAD", "KILL pgring_test", "SHUTDOWN"):
            rc, _, err = admin_psql(p.port, cmd, user=STATS_USER)
            check(rc != 0 and "permission denied" in err,
                  f"{cmd} as a stats user: status {rc}: {err}")
        # The SQLSTATE, seen on the wire.
        r = login(p.port, user=STATS_USER, db="pgring")
        e = expect_error(lambda: r.simple_query("PAUSE"), "42501")
        check(e.fields.get("M", "").startswith("pgring: "), f"message {e.fields}")
        check_eq(r.simple_query("SHOW VERSION")[0][0].split()[0], "pgring",
                 "SHOW after the refused PAUSE")
        r.terminate()
        check(p.alive(), "pgring stopped although SHUTDOWN was refused")
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1, "pgring_test after the refused commands")
        c.close()
        check_eq(pool_row(p.port, "pgring_test")["paused"], "no", "paused after a refused PAUSE")


def test_non_admin_user_refused():
    with Pgring(pool_config()) as p:
        e = login_error(p.port, user="postgres", db="pgring")
        check_eq(e.sqlstate, "42501", f"SQLSTATE for a non-admin user ({e})")
        e = login_error(p.port, user="app", db="pgring")
        check_eq(e.sqlstate, "42501", f"SQLSTATE for user app ({e})")
        rc, _, err = admin_psql(p.port, "SHOW POOLS", user="postgres")
        check(rc != 0 and "may not use the admin console" in err, f"psql: {rc} {err}")
        # The admin still gets in.
        check(admin_rows(p.port, "SHOW VERSION"), "SHOW VERSION as the admin")


def test_pause_and_resume():
    with Pgring(pool_config(pool_mode="transaction", pool_size=2)) as p:
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1)
        check_eq(admin_ok(p.port, "PAUSE"), "PAUSE", "PAUSE's command tag")
        check_eq(pool_row(p.port, "pgring_test")["paused"], "yes", "SHOW POOLS paused")
        started = time.monotonic()
        bg = Background(lambda: query_one(c, "SELECT 'after resume'"))
        wait_until(lambda: pool_count(p.port, "pgring_test", "cl_waiting") == 1, 10,
                   what="the query held by PAUSE (SHOW POOLS cl_waiting 1)",
                   describe=lambda: pool_row(p.port, "pgring_test"))
        check(not bg.done(), "a query ran while pgring was paused")
        check_eq(admin_ok(p.port, "RESUME"), "RESUME", "RESUME's command tag")
        check_eq(bg.result(10, "the held query after RESUME"), "after resume")
        log(f"query held by PAUSE for {time.monotonic() - started:.2f}s")
        check_eq(pool_row(p.port, "pgring_test")["paused"], "no", "SHOW POOLS after RESUME")

        # PAUSE of one database holds only that database.
        a = connect(p.port, db="app")
        check_eq(query_one(a, "SELECT 1"), 1)
        admin_ok(p.port, "PAUSE app")
        bg = Background(lambda: query_one(a, "SELECT 'app after resume'"))
        check_eq(query_one(c, "SELECT 2"), 2, "a query on a database that is not paused")
        wait_until(lambda: pool_count(p.port, "app", "cl_waiting") == 1, 10,
                   what="the app query held by PAUSE app (SHOW POOLS cl_waiting 1)",
                   describe=lambda: pool_row(p.port, "app"))
        check(not bg.done(), "a query of the paused database ran")
        admin_ok(p.port, "RESUME app")
        check_eq(bg.result(10, "the held app query"), "app after resume")
        rc, _, err = admin_psql(p.port, "PAUSE no_such_db")
        check(rc != 0 and "no_such_db" in err, f"PAUSE no_such_db: {rc} {err}")
        a.close()
        c.close()


def test_reload_command():
    config = pool_config(pool_mode="transaction", pool_size=2)
    with Pgring(config) as p:
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1)
        check_eq(pool_row(p.port, "pgring_test")["pool_size"], "2")
        check_eq(database_row(p.port, "pgring_test")["pool_size"], "2")
        config["defaults"]["pool_size"] = 7
        p.write_config(config)
        check_eq(admin_ok(p.port, "RELOAD"), "RELOAD", "RELOAD's command tag")
        check_eq(pool_row(p.port, "pgring_test")["pool_size"], "7", "SHOW POOLS after RELOAD")
        check_eq(database_row(p.port, "pgring_test")["pool_size"], "7",
                 "SHOW DATABASES after RELOAD")
        check_eq(query_one(c, "SELECT 2"), 2, "the connected client after RELOAD")
        # A broken file: RELOAD fails with an error, the running config stays.
        with open(p.config_path, "w") as f:
            f.write("defaults: [this is not\n")
        rc, _, err = admin_psql(p.port, "RELOAD")
        check(rc != 0 and "reload failed" in err, f"RELOAD of a broken file: {rc} {err}")
        check_eq(pool_row(p.port, "pgring_test")["pool_size"], "7", "pool_size after a bad RELOAD")
        check_eq(query_one(c, "SELECT 3"), 3, "the client after a failed RELOAD")
        p.write_config(config)  # leave a good file behind
        c.close()


def test_kill_database():
    with Pgring(pool_config(pool_mode="transaction", pool_size=2)) as p:
        victims = [login(p.port, timeout=30) for _ in range(2)]
        for v in victims:
            check_eq(v.simple_query("SELECT 1"), [["1"]])
        victims[1].simple_query("BEGIN")  # one inside a transaction, linked to a server
        bystander = login(p.port, db="app", timeout=30)
        check_eq(bystander.simple_query("SELECT 1"), [["1"]])
        check_eq(admin_ok(p.port, "KILL pgring_test"), "KILL", "KILL's command tag")
        for i, v in enumerate(victims):
            expect_closed_with(v, "57P01", timeout=10, what=f"client {i} of the killed database")
            v.close()
        check_eq(bystander.simple_query("SELECT 2"), [["2"]], "a client of another database")
        bystander.terminate()
        # The database itself stays configured: new clients get in.
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 3"), 3, "a new client after KILL")
        c.close()
        rc, _, err = admin_psql(p.port, "KILL no_such_db")
        check(rc != 0, f"KILL no_such_db succeeded: {err}")


def test_kill_client_reconnect_disable_enable():
    """PgBouncer's KILL_CLIENT id, RECONNECT [db], DISABLE db / ENABLE db."""
    with Pgring(pool_config(pool_mode="transaction", pool_size=2)) as p:
        victim = login(p.port, timeout=30)
        check_eq(victim.simple_query("SELECT 1"), [["1"]])
        bystander = login(p.port, timeout=30)
        check_eq(bystander.simple_query("SELECT 1"), [["1"]])
        ids = [r["id"] for r in admin_rows(p.port, "SHOW CLIENTS")
               if r["database"] == "pgring_test"]
        check_eq(len(ids), 2, "clients of pgring_test")
        victim_id = ids[0]
        check_eq(admin_ok(p.port, f"KILL_CLIENT {victim_id}"), "KILL_CLIENT", "command tag")
        expect_closed_with(victim, "57P01", timeout=10, what="the client KILL_CLIENT named")
        victim.close()
        check_eq(bystander.simple_query("SELECT 2"), [["2"]], "the other client")
        rc, _, err = admin_psql(p.port, "KILL_CLIENT C-999999")
        check(rc != 0 and "no client" in err, f"KILL_CLIENT of nobody: {rc} {err}")

        # RECONNECT: the server a client used is replaced; the client does not notice.
        pid_before = int(bystander.simple_query("SELECT pg_backend_pid()")[0][0])
        check_eq(admin_ok(p.port, "RECONNECT pgring_test"), "RECONNECT", "command tag")
        pid_after = int(bystander.simple_query("SELECT pg_backend_pid()")[0][0])
        check(pid_after != pid_before, f"RECONNECT kept backend {pid_before}")

        # DISABLE: new clients are refused as PostgreSQL refuses them (55000); ENABLE undoes it.
        check_eq(admin_ok(p.port, "DISABLE pgring_test"), "DISABLE", "command tag")
        e = login_error(p.port)
        check_eq(e.sqlstate, "55000", f"a new client of a disabled database: {e}")
        check_eq(bystander.simple_query("SELECT 3"), [["3"]], "a client already in")
        check_eq(admin_ok(p.port, "ENABLE pgring_test"), "ENABLE", "command tag")
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 4"), 4, "a new client after ENABLE")
        c.close()
        bystander.terminate()


def test_pause_waits_for_transactions_and_wait_close():
    """PAUSE answers once the transactions under way are over (as PgBouncer's); WAIT_CLOSE once
    the server connections RECONNECT retired are gone."""
    with Pgring(pool_config(pool_mode="transaction", pool_size=2)) as p:
        c = connect(p.port)
        c.autocommit = False
        check_eq(query_one(c, "SELECT 1"), 1)  # a transaction stays open: its server is busy
        bg = Background(lambda: admin_ok(p.port, "PAUSE pgring_test"))
        time.sleep(0.5)
        check(not bg.done(), "PAUSE answered while a transaction was open")
        c.commit()
        check_eq(bg.result(10, "PAUSE after the commit"), "PAUSE", "PAUSE's command tag")
        admin_ok(p.port, "RESUME pgring_test")

        check_eq(query_one(c, "SELECT 2"), 2)  # a transaction again
        admin_ok(p.port, "RECONNECT pgring_test")
        bg = Background(lambda: admin_ok(p.port, "WAIT_CLOSE pgring_test"))
        time.sleep(0.5)
        check(not bg.done(), "WAIT_CLOSE answered while a retired server was still in use")
        c.commit()
        check_eq(bg.result(10, "WAIT_CLOSE after the commit"), "WAIT_CLOSE", "command tag")
        check_eq(admin_ok(p.port, "WAIT_CLOSE"), "WAIT_CLOSE", "nothing to wait for")
        c.close()


def test_shutdown_command():
    # SHUTDOWN ends pgring inside the block, with an idle client connected on purpose (it must
    # get 57P01); that the shutdown left nothing behind is checked from pgring's log.
    with Pgring(pool_config(), skip_leak_check="SHUTDOWN stops pgring, a client connected") as p:
        c = login(p.port, timeout=30)
        check_eq(c.simple_query("SELECT 1"), [["1"]])
        rc, out, err = admin_psql(p.port, "SHUTDOWN")
        log(f"SHUTDOWN via psql: status {rc}, {out.strip()!r} {err!r}")
        status = wait_exit(p, 15)
        check_eq(status, 0, "pgring's exit status after SHUTDOWN")
        expect_closed_with(c, "57P01", timeout=5, what="an idle client at SHUTDOWN")
        c.close()
        check("SHUTDOWN" in p.log(), "SHUTDOWN is not in pgring's log")


if __name__ == "__main__":
    run_tests(globals())
