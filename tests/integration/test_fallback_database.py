#!/usr/bin/python3
"""The fallback database `"*"` (config/pgring.yaml, databases): any database name without an
entry of its own is served from the fallback's server, under the name the client asked for, as
a direct connection would be; its pools go once unused for timeouts.autodb_idle. With auth.query
a sidecar then needs no list of databases or users at all."""

from lib import (PGHOST, PGPORT, Pgring, admin_rows, check, check_eq, log, login, login_error,
                 pool_config, run_tests, wait_until)


def fallback_config(**extra):
    config = pool_config(databases={"*": {"host": PGHOST, "port": PGPORT}})
    config.update(extra)
    return config


def test_any_database_name_is_served_like_a_direct_connection():
    with Pgring(fallback_config()) as p:
        for db in ("pgring_test", "postgres"):
            c = login(p.port, db=db)
            check_eq(c.simple_query("SELECT current_database()"), [[db]], f"database {db}")
            c.terminate()
        # A name the server does not have: PostgreSQL's own error, as directly.
        direct = login_error(PGPORT, db="pgring_no_such_db", host=PGHOST)
        through = login_error(p.port, db="pgring_no_such_db")
        log(f"direct: {direct.sqlstate} {direct.fields['M']!r}; "
            f"pgring: {through.sqlstate} {through.fields['M']!r}")
        check_eq((through.sqlstate, through.fields["M"]), (direct.sqlstate, direct.fields["M"]),
                 "the error for a database the server does not have")
        # SHOW DATABASES lists the names the fallback serves now, beside "*" itself.
        names = {r["name"]: r for r in admin_rows(p.port, "SHOW DATABASES")}
        check("*" in names and "pgring_test" in names and "postgres" in names,
              f"SHOW DATABASES: {sorted(names)}")
        check_eq(names["postgres"]["dbname"], "postgres")
        check_eq(names["postgres"]["port"], str(PGPORT))


def test_an_entry_of_its_own_wins_over_the_fallback():
    config = pool_config(databases={
        "app": {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test"},
        "*": {"host": PGHOST, "port": PGPORT, "dbname": "postgres"}})
    with Pgring(config) as p:
        c = login(p.port, db="app")
        check_eq(c.simple_query("SELECT current_database()"), [["pgring_test"]], "app")
        c.terminate()
        # A fallback with a dbname of its own sends every other name there.
        c = login(p.port, db="anything")
        check_eq(c.simple_query("SELECT current_database()"), [["postgres"]], "anything")
        c.terminate()


def test_unused_pools_of_the_fallback_go_after_autodb_idle():
    config = fallback_config(timeouts={"server_idle": "1s", "autodb_idle": "1s"})
    with Pgring(config) as p:
        c = login(p.port, db="postgres")
        check_eq(c.simple_query("SELECT 1"), [["1"]])
        check(any(r["database"] == "postgres" for r in admin_rows(p.port, "SHOW POOLS")),
              "a pool for postgres while its client is there")
        c.terminate()
        # The idle server goes after server_idle, then the pool after autodb_idle.
        wait_until(lambda: not any(r["database"] == "postgres"
                                   for r in admin_rows(p.port, "SHOW POOLS")), 10,
                   what="the unused pool of the fallback dropped")
        p.wait_log(r"pool postgres/postgres: unused for timeouts.autodb_idle; dropped")
        check("postgres" not in {r["name"] for r in admin_rows(p.port, "SHOW DATABASES")},
              "SHOW DATABASES still lists a name no pool serves")
        # And the name is served again at the next login.
        c = login(p.port, db="postgres")
        check_eq(c.simple_query("SELECT current_database()"), [["postgres"]])
        c.terminate()


def test_zero_configuration_sidecar_with_auth_query():
    # No database and no user listed: the fallback serves the database, auth.query finds the
    # user's secret in that database.
    config = {"auth": {"method": "scram-sha-256", "query": {"user": "postgres"}},
              "users": {"postgres": {"password": "unused"}},
              "databases": {"*": {"host": PGHOST, "port": PGPORT}}}
    with Pgring(config) as p:
        c = login(p.port, user="pgring_scram", password="scram_pw", db="postgres")
        check_eq(c.simple_query("SELECT current_user, current_database()"),
                 [["pgring_scram", "postgres"]])
        c.terminate()
        check_eq(login_error(p.port, user="pgring_scram", password="wrong",
                             db="postgres").sqlstate, "28P01", "a wrong password")


if __name__ == "__main__":
    run_tests(globals())
