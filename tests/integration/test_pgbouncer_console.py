#!/usr/bin/python3
"""The admin console on database "pgbouncer" answers in PgBouncer 1.25's columns: the queries
pgbouncer_exporter runs (SHOW DATABASES, STATS, POOLS, LISTS, CONFIG, VERSION) and SHOW
CLIENTS/SERVERS, with the numbers a pool under load has (a client in a transaction, one waiting
for the one server). A configured database named "pgbouncer" is a database, not the console."""

import re
import threading
import time

import psycopg2

from lib import (ADMIN_USER, PGHOST, PGPORT, STATS_USER, Pgring, check, check_eq, connect,
                 pool_config, query, query_one, run_tests)

COLUMNS = {
    "POOLS": ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req",
              "cl_waiting_cancel_req", "sv_active", "sv_active_cancel", "sv_being_canceled",
              "sv_idle", "sv_used", "sv_tested", "sv_login", "maxwait", "maxwait_us",
              "pool_mode", "load_balance_hosts"],
    "STATS": ["database", "total_server_assignment_count", "total_xact_count",
              "total_query_count", "total_received", "total_sent", "total_xact_time",
              "total_query_time", "total_wait_time", "total_client_parse_count",
              "total_server_parse_count", "total_bind_count", "avg_server_assignment_count",
              "avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time",
              "avg_query_time", "avg_wait_time", "avg_client_parse_count",
              "avg_server_parse_count", "avg_bind_count"],
    "DATABASES": ["name", "host", "port", "database", "force_user", "pool_size",
                  "min_pool_size", "reserve_pool_size", "server_lifetime", "pool_mode",
                  "load_balance_hosts", "max_connections", "current_connections",
                  "max_client_connections", "current_client_connections", "paused",
                  "disabled"],
    "LISTS": ["list", "items"],
    "CONFIG": ["key", "value", "default", "changeable"],
    "VERSION": ["version"],
    "CLIENTS": ["type", "user", "database", "replication", "state", "addr", "port",
                "local_addr", "local_port", "connect_time", "request_time", "wait", "wait_us",
                "close_needed", "ptr", "link", "remote_pid", "tls", "application_name",
                "prepared_statements", "id"],
}
COLUMNS["SERVERS"] = COLUMNS["CLIENTS"]
COLUMNS["STATS_TOTALS"] = COLUMNS["STATS"][:12]
COLUMNS["STATS_AVERAGES"] = COLUMNS["STATS"][:1] + COLUMNS["STATS"][12:]
COLUMNS["TOTALS"] = ["name", "value"]
COLUMNS["USERS"] = ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                    "current_connections", "max_user_client_connections",
                    "current_client_connections"]
COLUMNS["STATE"] = ["key", "value"]


def console(p, user=ADMIN_USER):
    return connect(p.port, db="pgbouncer", user=user)


def show(conn, what):
    """SHOW `what` as the exporter reads it: rows keyed by column name, the columns checked."""
    with conn.cursor() as cur:
        cur.execute(f"SHOW {what};")
        names = [d.name for d in cur.description]
        check_eq(names, COLUMNS[what], f"SHOW {what} columns")
        return [dict(zip(names, row)) for row in cur.fetchall()]


def test_exporter_queries_and_columns():
    with Pgring(pool_config(pool_size=1)) as p:
        app = connect(p.port, db="app", user="app", password="secret")
        query(app, "SELECT 1")
        holder = connect(p.port, db="app", user="app", password="secret")
        holder.autocommit = False
        query(holder, "SELECT 1")  # a transaction holds the one server
        waited = {}

        def waiter():
            started = time.monotonic()
            waited["value"] = query_one(app, "SELECT 42")
            waited["seconds"] = time.monotonic() - started

        t = threading.Thread(target=waiter)
        t.start()
        c = console(p)
        # The waiting client shows up, and its wait grows past a second.
        deadline = time.monotonic() + 10
        while True:
            pools = {(r["database"], r["user"]): r for r in show(c, "POOLS")}
            row = pools.get(("app", "app"))
            if row and int(row["maxwait"]) >= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        check(row is not None, f"no app/app pool in {pools}")
        check_eq((row["cl_active"], row["cl_waiting"], row["sv_active"], row["sv_idle"],
                  row["pool_mode"]), ("1", "1", "1", "0", "transaction"), "SHOW POOLS app/app")
        check(int(row["maxwait"]) >= 1 and 0 <= int(row["maxwait_us"]) < 1_000_000,
              f"maxwait {row['maxwait']} s {row['maxwait_us']} us")
        clients = show(c, "CLIENTS")
        states = sorted(r["state"] for r in clients if r["database"] == "app")
        check_eq(states, ["active", "waiting"], "SHOW CLIENTS states of app's clients")
        servers = show(c, "SERVERS")
        check_eq([(r["database"], r["state"]) for r in servers], [("app", "active")],
                 "SHOW SERVERS")
        check(int(servers[0]["remote_pid"]) > 0, f"remote_pid {servers[0]['remote_pid']}")
        holder.commit()
        t.join(10)
        check_eq(waited.get("value"), 42, "the waiting client's query")

        stats = {r["database"]: r for r in show(c, "STATS")}
        s = stats["app"]
        check(int(s["total_xact_count"]) >= 3 and int(s["total_query_count"]) >= 3, str(s))
        check(int(s["total_server_assignment_count"]) >= 3, str(s))
        check(int(s["total_wait_time"]) >= 1_000_000, f"total_wait_time {s['total_wait_time']}")
        check(int(s["total_received"]) > 0 and int(s["total_sent"]) > 0, str(s))
        check(int(s["avg_wait_time"]) > 0, str(s))

        totals = {r["database"]: r for r in show(c, "STATS_TOTALS")}
        check_eq(totals["app"]["total_xact_count"], s["total_xact_count"], "SHOW STATS_TOTALS")
        averages = {r["database"]: r for r in show(c, "STATS_AVERAGES")}
        check_eq(averages["app"]["avg_wait_time"], s["avg_wait_time"], "SHOW STATS_AVERAGES")
        overall = {r["name"]: int(r["value"]) for r in show(c, "TOTALS")}
        check_eq(overall["total_xact_count"],
                 sum(int(r["total_xact_count"]) for r in stats.values()), "SHOW TOTALS")
        users = {r["name"]: r for r in show(c, "USERS")}
        check_eq((users["app"]["current_connections"], users["app"]["current_client_connections"],
                  users["app"]["pool_mode"]), ("1", "2", ""), "SHOW USERS app")
        check_eq({r["key"]: r["value"] for r in show(c, "STATE")},
                 {"active": "yes", "paused": "no", "suspended": "no"}, "SHOW STATE")
        dbs = {r["name"]: r for r in show(c, "DATABASES")}
        check_eq((dbs["app"]["pool_size"], dbs["app"]["current_connections"],
                  dbs["app"]["pool_mode"], dbs["app"]["paused"]),
                 ("1", "1", "transaction", "0"), "SHOW DATABASES app")
        lists = {r["list"]: int(r["items"]) for r in show(c, "LISTS")}
        check(lists["databases"] == 2 and lists["pools"] >= 1 and lists["used_clients"] >= 3,
              f"SHOW LISTS {lists}")
        config = {r["key"]: r["value"] for r in show(c, "CONFIG")}
        check_eq((config["default_pool_size"], config["pool_mode"]), ("1", "transaction"),
                 "SHOW CONFIG")
        version = show(c, "VERSION")[0]["version"]
        check(re.match(r"^PgBouncer (\d+)\.(\d+)\.(\d+)", version), f"version {version!r}")
        # The console's own commands work here too; stats users may SHOW, not PAUSE.
        check_eq(query(c, "SHOW HELP")[0][0].split("|")[0], "SHOW HELP", "SHOW HELP")
        s_conn = console(p, user=STATS_USER)
        show(s_conn, "POOLS")
        try:
            query(s_conn, "PAUSE")
            check(False, "a stats user paused pgring")
        except psycopg2.Error as e:
            check_eq(e.pgcode, "42501", "PAUSE as a stats user")
        for conn in (s_conn, c, app, holder):
            conn.close()


def test_auth_rules_for_pgring_guard_pgbouncer_too():
    # One console, one set of rules: a rule for database "pgring" applies under its other name.
    config = pool_config()
    config["auth"]["rules"] = [{"database": "pgring", "method": "reject"}, {"method": "trust"}]
    with Pgring(config) as p:
        for db in ("pgring", "pgbouncer"):
            try:
                connect(p.port, db=db, user=ADMIN_USER).close()
                check(False, f"the rule rejecting database pgring let {ADMIN_USER} into {db}")
            except psycopg2.OperationalError as e:
                check("rejects" in str(e), f"{db}: {e}")


def test_configured_database_named_pgbouncer_is_a_database():
    databases = {"pgbouncer": {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test"},
                 "app": {"host": PGHOST, "port": PGPORT}}
    with Pgring(pool_config(databases=databases)) as p:
        conn = connect(p.port, db="pgbouncer", user="postgres")
        check_eq(query_one(conn, "SELECT current_database()"), "pgring_test",
                 "database pgbouncer")
        conn.close()


if __name__ == "__main__":
    run_tests(globals())
