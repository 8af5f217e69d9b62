#!/usr/bin/python3
"""RESET, RESET ALL, DISCARD ALL and SET ... TO DEFAULT return to the client's own startup
parameters, through pgring exactly as on a direct connection, in session and in transaction mode.

One script of SET/RESET/SHOW statements runs with several sets of startup parameters (DateStyle
and TimeZone from PGDATESTYLE/PGTZ, `options=-c ...`, application_name, client_encoding), first
straight to PostgreSQL, then through pgring; the outputs are compared line by line. Two real
clients run it: psql (what the statements return, errors included) and psycopg2 (the
ParameterStatus values the client was told after each statement).

In session mode pool_size is 1 and the parameter sets alternate, so every client but the first
gets a server another client with other startup parameters used before, after its
server_reset_query. Session mode also compares what pg_settings says of each setting's reset
value and source (a session whose settings came from its startup packet says `client`)."""

import os
import subprocess
import tempfile
import threading

import psycopg2

from lib import (PGHOST, PGPORT, PSQL, Pgring, check, check_eq, client_env, fail, log,
                 pool_config, query, query_one, run_tests, wait_until)

DB, USER = "app", "app"

# The startup parameters of each client, as environment variables libpq sends in its startup
# packet. B spells its encoding the way PostgreSQL does not report it ('utf-8' is reported as
# UTF8); C sends nothing but psql's own application_name.
PARAMS = {
    "A": {"PGDATESTYLE": "Postgres, MDY", "PGTZ": "PST8PDT", "PGAPPNAME": "reset_a",
          "PGCLIENTENCODING": "LATIN1",
          "PGOPTIONS": "-c statement_timeout=5s -c search_path=pg_catalog,public"},
    "B": {"PGDATESTYLE": "SQL, DMY", "PGTZ": "Asia/Tokyo", "PGAPPNAME": "reset_b",
          "PGCLIENTENCODING": "utf-8",
          "PGOPTIONS": "-c lock_timeout=3s -c intervalstyle=postgres_verbose"},
    "C": {},
}

SHOW_ALL = ["SHOW DateStyle;", "SHOW TimeZone;", "SHOW application_name;",
            "SHOW client_encoding;", "SHOW statement_timeout;", "SHOW lock_timeout;",
            "SHOW IntervalStyle;", "SHOW search_path;",
            "SELECT '2020-01-02 03:04:05+00'::timestamptz, interval '1 day 2 hours 3 seconds';"]

CHANGE_ALL = ["SET datestyle = 'German';", "SET TIME ZONE 'America/Sao_Paulo';",
              "SET application_name = 'changed';", "SET client_encoding = 'SQL_ASCII';",
              "SET statement_timeout = '7s';", "SET lock_timeout = '9s';",
              "SET intervalstyle = 'iso_8601';", "SET search_path = public;"]

# One statement per line; psql sends each as its own Query.
SCRIPT = [
    *SHOW_ALL,
    "SET datestyle TO iso;", "RESET datestyle;", "SHOW DateStyle;",
    "SET TIME ZONE 'Europe/Paris';", "RESET TIME ZONE;", "SHOW TimeZone;",
    "SET TIME ZONE 'Europe/Paris';", "SET TIME ZONE DEFAULT;", "SHOW TimeZone;",
    "SET TIME ZONE 'Europe/Paris';", "SET TIME ZONE LOCAL;", "SHOW TimeZone;",
    "SET timezone TO 'UTC';", "SET timezone TO DEFAULT;", "SHOW TimeZone;",
    "SET SESSION application_name = 'changed';", "SET SESSION application_name = DEFAULT;",
    "SHOW application_name;",
    "SET statement_timeout = '1min';", "SET statement_timeout TO DEFAULT;",
    "SHOW statement_timeout;",
    "SET client_encoding TO 'SQL_ASCII';", "RESET client_encoding;", "SHOW client_encoding;",
    "SET search_path = public;", "RESET search_path;", "SHOW search_path;",
    "SET intervalstyle = 'sql_standard';", "SET intervalstyle = DEFAULT;",
    "SHOW IntervalStyle;",
    *CHANGE_ALL, "RESET ALL;", *SHOW_ALL,
    *CHANGE_ALL, "DISCARD ALL;", *SHOW_ALL,
    "BEGIN;", "SET LOCAL TIME ZONE 'UTC';", "SHOW TimeZone;", "COMMIT;", "SHOW TimeZone;",
    "SET SESSION datestyle = 'German';", "SET datestyle = DEFAULT;", "SHOW DateStyle;",
    "SET lock_timeout = 1000;", "RESET lock_timeout;", "SHOW lock_timeout;",
    "SET no_such.setting = 'x';", "RESET no_such.setting;", "SHOW no_such.setting;",
    "RESET no_such_setting;",
]

# A RESET inside a transaction, read in the same transaction: transaction mode's servers reset to
# the server's defaults there, and the client's startup value holds from the next transaction on
# (a difference docs/transaction-pooling.md names). Session mode is compared on it too.
IN_TRANSACTION_RESET = ["BEGIN;", "SET TIME ZONE 'UTC';", "RESET TIME ZONE;", "SHOW TimeZone;",
                        "SET datestyle TO DEFAULT;", "SHOW DateStyle;", "COMMIT;",
                        "SHOW TimeZone;", "SHOW DateStyle;"]

# What PostgreSQL says of a setting: its reset value and where that came from. Only a server
# that got the settings in its startup packet says `client` here, so transaction mode (which
# applies them with SET on shared servers) is not compared on this.
PG_SETTINGS = ("SELECT name, setting, reset_val, source FROM pg_settings WHERE name IN "
               "('DateStyle', 'TimeZone', 'application_name', 'client_encoding', "
               "'statement_timeout', 'lock_timeout', 'IntervalStyle', 'search_path') "
               "ORDER BY name;")

REPORTED = ("DateStyle", "TimeZone", "application_name", "client_encoding", "IntervalStyle")


def run_psql(port, params, script):
    """The script's output through psql (errors included, psql goes on after them)."""
    env = client_env()
    env.update(params)
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write("\n".join(script) + "\n")
        f.flush()
        r = subprocess.run([PSQL, "-X", "-A", "-t", "-h", PGHOST if port == PGPORT else
                            "127.0.0.1", "-p", str(port), "-U", USER, "-d", DB, "-f", f.name],
                           env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=60)
    out = (r.stdout + r.stderr).replace(f.name, "SCRIPT")
    if "could not connect" in out or "server closed the connection" in out:
        fail(f"psql on port {port} with {params}: {out}")
    return out.splitlines()


def run_psycopg2(port, params, script):
    """After each statement: the statement and the reported parameters the client holds (from
    the ParameterStatus messages it received)."""
    saved = {k: os.environ.get(k) for k in ("PGDATESTYLE", "PGTZ")}
    for k in saved:
        os.environ.pop(k, None)
    kwargs = {}
    if "PGDATESTYLE" in params:
        os.environ["PGDATESTYLE"] = params["PGDATESTYLE"]
    if "PGTZ" in params:
        os.environ["PGTZ"] = params["PGTZ"]
    if "PGAPPNAME" in params:
        kwargs["application_name"] = params["PGAPPNAME"]
    if "PGCLIENTENCODING" in params:
        kwargs["client_encoding"] = params["PGCLIENTENCODING"]
    if "PGOPTIONS" in params:
        kwargs["options"] = params["PGOPTIONS"]
    try:
        conn = psycopg2.connect(host=PGHOST if port == PGPORT else "127.0.0.1", port=port,
                                dbname=DB, user=USER, connect_timeout=10, **kwargs)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    conn.autocommit = True
    # Date/time values as PostgreSQL wrote them (their text follows DateStyle, the point here).
    as_text = psycopg2.extensions.new_type((1082, 1083, 1114, 1184, 1186, 1266), "AS_TEXT",
                                           lambda value, cursor: value)
    psycopg2.extensions.register_type(as_text, conn)
    lines = ["connected: " + ", ".join(f"{n}={conn.get_parameter_status(n)}" for n in REPORTED)]
    try:
        with conn.cursor() as cur:
            for sql in script:
                if sql in ("BEGIN;", "COMMIT;"):
                    continue  # psycopg2 in autocommit: the block's statements run one by one
                try:
                    cur.execute(sql)
                    result = cur.fetchall() if cur.description else cur.statusmessage
                except psycopg2.Error as e:
                    result = f"{e.pgcode}"
                lines.append(f"{sql} -> {result}; " + ", ".join(
                    f"{n}={conn.get_parameter_status(n)}" for n in REPORTED))
    finally:
        conn.close()
    return lines


def compare(what, got, want):
    if got == want:
        return
    diff = [f"  line {i + 1}: pgring {g!r}\n          direct {w!r}"
            for i, (g, w) in enumerate(zip(got, want)) if g != w]
    if len(got) != len(want):
        diff.append(f"  pgring gave {len(got)} lines, direct {len(want)}")
    fail(f"{what} differs from a direct connection:\n" + "\n".join(diff[:12]))


def compare_runs(p, script, order, mode):
    want = {}
    for name in dict.fromkeys(order):
        params = PARAMS[name]
        want[name] = (run_psql(PGPORT, params, script), run_psycopg2(PGPORT, params, script))
    for step, name in enumerate(order):
        params = PARAMS[name]
        log(f"{mode} mode, client {step + 1}: parameters {name}")
        compare(f"{mode} mode, client {step + 1} ({name}), psql",
                run_psql(p.port, params, script), want[name][0])
        compare(f"{mode} mode, client {step + 1} ({name}), ParameterStatus",
                run_psycopg2(p.port, params, script), want[name][1])


def test_direct_sessions_differ():
    # The comparison means something only if the parameter sets lead to different outputs.
    a = run_psql(PGPORT, PARAMS["A"], SHOW_ALL)
    b = run_psql(PGPORT, PARAMS["B"], SHOW_ALL)
    c = run_psql(PGPORT, PARAMS["C"], SHOW_ALL)
    check(a != b and b != c and a != c, f"startup parameters made no difference: {a} {b} {c}")
    check("PST8PDT" in a and "Postgres, MDY" in a, f"A's startup parameters: {a}")


def test_session_mode_is_a_direct_session():
    with Pgring(pool_config(pool_mode="session", pool_size=1)) as p:
        compare_runs(p, SCRIPT + IN_TRANSACTION_RESET + [PG_SETTINGS],
                     ["A", "B", "A", "C", "B", "B"], "session")


def test_transaction_mode_matches_direct():
    with Pgring(pool_config(pool_mode="transaction", pool_size=1)) as p:
        compare_runs(p, SCRIPT, ["A", "B", "A", "C"], "transaction")


def test_session_mode_without_reset_query():
    # server_reset_query '' keeps a session's state for the next client of the same startup
    # parameters (PgBouncer's behaviour, a documented choice); startup parameters still hold.
    with Pgring(pool_config(pool_mode="session", pool_size=1, server_reset_query="")) as p:
        compare_runs(p, SHOW_ALL, ["A", "B", "C", "A"], "session, no reset query,")


def test_waiting_client_with_other_parameters_gets_a_server():
    # pool_size 1: a client waits while another, with other startup parameters, holds the one
    # server; when that one leaves, the waiting client is served (on a server of its own).
    with Pgring(pool_config(pool_mode="session", pool_size=1)) as p:
        first = psycopg2.connect(host="127.0.0.1", port=p.port, dbname=DB, user=USER,
                                 application_name="holder", connect_timeout=10)
        first.autocommit = True
        holder_pid = query_one(first, "SELECT pg_backend_pid()")
        result = {}

        def second():
            conn = psycopg2.connect(host="127.0.0.1", port=p.port, dbname=DB, user=USER,
                                    application_name="waiter", options="-c lock_timeout=4s",
                                    connect_timeout=20)
            conn.autocommit = True
            result["row"] = query(conn, "SELECT current_setting('application_name'), "
                                        "current_setting('lock_timeout'), pg_backend_pid()")[0]
            conn.close()

        t = threading.Thread(target=second)
        t.start()
        t.join(1.0)
        check(t.is_alive(), "the second client got a server while pool_size 1 was in use")
        first.close()
        t.join(20)
        check(not t.is_alive(), "the waiting client never got a server")
        app, lock_timeout, pid = result["row"]
        check_eq((app, lock_timeout), ("waiter", "4s"), "the waiting client's settings")
        check(pid != holder_pid, "the server opened for other startup parameters was reused")


def test_pool_mode_change_retires_servers():
    # A reload from session to transaction mode (and back): the servers opened with one
    # client's startup parameters must not serve the other mode's clients, and vice versa.
    with Pgring(pool_config(pool_mode="session", pool_size=1)) as p:
        compare_runs(p, SHOW_ALL, ["A"], "session")
        for mode, order in (("transaction", ["C", "B"]), ("session", ["C", "A"])):
            before = p.log().count("configuration reloaded")
            p.reload(pool_config(pool_mode=mode, pool_size=1))
            wait_until(lambda: p.log().count("configuration reloaded") > before, 10,
                       what="'configuration reloaded' in the log")
            compare_runs(p, SHOW_ALL, order, f"{mode} (after a reload)")


def test_refused_startup_parameter_fails_only_that_client():
    # A startup parameter PostgreSQL refuses fails that login with PostgreSQL's own error; the
    # pool is not taken for a failing server and the next client logs in.
    with Pgring(pool_config(pool_mode="session", pool_size=2)) as p:
        errors = {}
        for port in (PGPORT, p.port):
            try:
                psycopg2.connect(host=PGHOST if port == PGPORT else "127.0.0.1", port=port,
                                 dbname=DB, user=USER, options="-c DateStyle=nonsense",
                                 connect_timeout=10).close()
                fail(f"a client with DateStyle=nonsense logged in on port {port}")
            except psycopg2.OperationalError as e:
                errors[port] = str(e).split(" failed: ", 1)[-1]  # (names host and port)
        check("invalid value for parameter" in errors[PGPORT], f"direct: {errors[PGPORT]}")
        check_eq(errors[p.port], errors[PGPORT], "the login error (message and detail)")
        conn = psycopg2.connect(host="127.0.0.1", port=p.port, dbname=DB, user=USER,
                                connect_timeout=10)
        check_eq(query_one(conn, "SELECT 1"), 1)
        conn.close()


if __name__ == "__main__":
    run_tests(globals())
