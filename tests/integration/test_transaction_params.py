#!/usr/bin/python3
"""Transaction pooling keeps each client's session settings its own: a SET (reported like
TimeZone, or not reported like statement_timeout) follows its client from server to server and
never shows up for another client; SETs in rolled-back transactions do not stick; startup
parameters (options='-c ...', application_name) hold in every transaction; RESET ALL and
DISCARD ALL go back to the client's own defaults (which include its startup options, as in
PostgreSQL).

With pool_size 1 both clients provably share one backend (checked with pg_backend_pid); with
pool_size 2 their transactions are interleaved so that each runs on both backends."""

from lib import (PGPORT, Pgring, SYNC_MESSAGE, bind_message, check, check_eq, connect,
                data_row_values, direct_connect, error_fields_in, execute_message, expect_error,
                login, login_error, monitor_connect,
                parse_message, pool_config, query, query_one, read_until_ready, run_tests)

DB, USER = "app", "app"
TOKYO = "Asia/Tokyo"
TS = "SELECT '2020-01-01 00:00:00+00'::timestamptz::text"


def app_connect(p, **kwargs):
    kwargs.setdefault("connect_timeout", 30)
    return connect(p.port, db=DB, user=USER, **kwargs)


def server_defaults():
    """What a session that set nothing sees (straight from PostgreSQL)."""
    direct = monitor_connect(db=DB, user=USER)
    try:
        return {name: query_one(direct, f"SHOW {name}")
                for name in ("TimeZone", "statement_timeout", "lock_timeout", "DateStyle")}
    finally:
        direct.close()


def show(conn, name):
    return query_one(conn, f"SHOW {name}")


def on_each_backend(conn, blocker, fn, tries=10):
    """pool_size 2: run fn(conn) (autocommit statements) on each of the two backends. While the
    blocker holds a transaction on one backend, conn can only run on the other. pgring hands out
    the most recently used idle server (LIFO), so the blocker lets go of its server first and
    conn second: the blocker then takes conn's backend next time, and conn moves to the other."""
    seen = set()
    for _ in range(tries):
        blocker.autocommit = False
        held = query_one(blocker, "SELECT pg_backend_pid()")
        pid = query_one(conn, "SELECT pg_backend_pid()")
        check(pid != held, f"a client ran on backend {pid}, inside another client's transaction")
        fn(conn)
        conn.autocommit = False
        check_eq(query_one(conn, "SELECT pg_backend_pid()"), pid, "conn's backend in a transaction")
        blocker.commit()
        blocker.autocommit = True
        conn.commit()
        conn.autocommit = True
        seen.add(pid)
        if len(seen) == 2:
            return
    check(False, f"a client ran only on backends {seen} in {tries} tries (pool_size 2)")


def test_timezone_stays_with_its_client():
    defaults = server_defaults()
    default_tz = defaults["TimeZone"]
    check(default_tz != TOKYO, f"the test server's default TimeZone is already {TOKYO}")
    for pool_size in (1, 2):
        with Pgring(pool_config(pool_size=pool_size)) as p:
            a, b = app_connect(p), app_connect(p)
            if pool_size == 1:
                check_eq(query_one(a, "SELECT pg_backend_pid()"),
                         query_one(b, "SELECT pg_backend_pid()"), "the one shared backend")
            query(a, f"SET TimeZone = '{TOKYO}'")
            blocker = app_connect(p) if pool_size == 2 else None

            def check_a(conn, what):
                check_eq(show(conn, "TimeZone"), TOKYO, f"A's TimeZone ({what})")
                check_eq(query_one(conn, TS), "2020-01-01 09:00:00+09",
                         f"A's timestamptz ({what})")
                check_eq(conn.get_parameter_status("TimeZone"), TOKYO,
                         f"A's ParameterStatus TimeZone ({what})")

            def check_b(conn, what):
                check_eq(show(conn, "TimeZone"), default_tz, f"B's TimeZone ({what})")
                check_eq(query_one(conn, TS), "2020-01-01 00:00:00+00",
                         f"B's timestamptz ({what})")
                check_eq(conn.get_parameter_status("TimeZone"), default_tz,
                         f"B's ParameterStatus TimeZone ({what})")

            for round_ in range(3):
                what = f"pool_size {pool_size}, round {round_}"
                if blocker is None:
                    check_a(a, what)
                    check_b(b, what)
                else:
                    on_each_backend(a, blocker, lambda conn: check_a(conn, what))
                    on_each_backend(b, blocker, lambda conn: check_b(conn, what))
                # A's next transaction, explicit this time.
                a.autocommit = False
                check_eq(show(a, "TimeZone"), TOKYO, f"A's TimeZone in a transaction ({what})")
                a.commit()
                a.autocommit = True
            if blocker is not None:
                check_eq(show(blocker, "TimeZone"), default_tz, "the blocker's TimeZone")
                blocker.close()
            # A third client, fresh, sees the default too.
            c = app_connect(p)
            check_eq(show(c, "TimeZone"), default_tz, "a new client's TimeZone")
            for conn in (a, b, c):
                conn.close()


def test_unreported_setting_stays_with_its_client():
    for pool_size in (1, 2):
        with Pgring(pool_config(pool_size=pool_size)) as p:
            a, b = app_connect(p), app_connect(p)
            query(a, "SET statement_timeout = '7s'")
            query(a, "SET lock_timeout TO '3s'")
            blocker = app_connect(p) if pool_size == 2 else None

            def check_a(conn, what):
                check_eq(show(conn, "statement_timeout"), "7s", f"A's statement_timeout ({what})")
                check_eq(show(conn, "lock_timeout"), "3s", f"A's lock_timeout ({what})")

            def check_b(conn, what):
                check_eq(show(conn, "statement_timeout"), "0", f"B's statement_timeout ({what})")
                check_eq(show(conn, "lock_timeout"), "0", f"B's lock_timeout ({what})")

            for round_ in range(3):
                what = f"pool_size {pool_size}, round {round_}"
                if blocker is None:
                    check_a(a, what)
                    check_b(b, what)
                else:
                    on_each_backend(a, blocker, lambda conn: check_a(conn, what))
                    on_each_backend(b, blocker, lambda conn: check_b(conn, what))
            if blocker is not None:
                check_eq(show(blocker, "statement_timeout"), "0", "the blocker's statement_timeout")
                blocker.close()

            # The setting is in force, not just displayed: A's short timeout cancels A's sleep,
            # and B's equally long sleep on the same backend(s) is not cancelled.
            query(a, "SET statement_timeout = '200ms'")
            expect_error(lambda: query(a, "SELECT pg_sleep(2)"), "57014")
            query(b, "SELECT pg_sleep(0.5)")
            check_eq(show(a, "statement_timeout"), "200ms", "A's statement_timeout after 57014")
            query(a, "RESET statement_timeout")
            check_eq(show(a, "statement_timeout"), "0", "A's statement_timeout after RESET")
            check_eq(show(a, "lock_timeout"), "3s", "A's lock_timeout after RESET of another")
            check_eq(show(b, "statement_timeout"), "0", "B's statement_timeout at the end")
            a.close()
            b.close()


def test_set_through_extended_protocol():
    with Pgring(pool_config(pool_size=1)) as p:
        r = login(p.port, user=USER, db=DB)
        b = app_connect(p)
        r.send(parse_message("SET statement_timeout = '6s'") + bind_message() + execute_message()
               + SYNC_MESSAGE)
        msgs, status = read_until_ready(r)
        check(not error_fields_in(msgs), f"extended SET: {error_fields_in(msgs)}")
        check_eq(status, "I", "status after the extended SET")
        check_eq(show(b, "statement_timeout"), "0", "B's statement_timeout")
        check_eq(r.simple_query("SHOW statement_timeout"), [["6s"]], "A's statement_timeout")
        r.send(parse_message("SHOW statement_timeout") + bind_message() + execute_message()
               + SYNC_MESSAGE)
        msgs, _ = read_until_ready(r)
        check_eq([data_row_values(body) for kind, body in msgs if kind == b"D"], [["6s"]],
                 "A's statement_timeout (extended protocol)")
        check_eq(show(b, "statement_timeout"), "0", "B's statement_timeout, again")
        r.terminate()
        b.close()


def test_set_inside_transactions():
    defaults = server_defaults()
    with Pgring(pool_config(pool_size=1)) as p:
        a, b = app_connect(p), app_connect(p)
        query(a, "SET statement_timeout = '7s'")

        # Rolled back: does not stick.
        query(a, "BEGIN")
        query(a, "SET statement_timeout = '9s'")
        check_eq(show(a, "statement_timeout"), "9s", "inside the transaction")
        query(a, "ROLLBACK")
        check_eq(show(a, "statement_timeout"), "7s", "after ROLLBACK")
        check_eq(show(b, "statement_timeout"), "0", "B after A's ROLLBACK")
        check_eq(show(a, "statement_timeout"), "7s", "after ROLLBACK, next transaction")

        # Rolled back after an error in the transaction.
        query(a, "BEGIN")
        query(a, "SET statement_timeout = '9s'")
        expect_error(lambda: query(a, "SELECT 1/0"), "22012")
        query(a, "ROLLBACK")
        check_eq(show(b, "statement_timeout"), "0", "B after A's failed transaction")
        check_eq(show(a, "statement_timeout"), "7s", "after a failed transaction")

        # Committed: sticks, for A only.
        query(a, "BEGIN")
        query(a, "SET statement_timeout = '11s'")
        query(a, "COMMIT")
        check_eq(show(b, "statement_timeout"), "0", "B after A's COMMIT")
        check_eq(show(a, "statement_timeout"), "11s", "after COMMIT")

        # SET LOCAL ends with its transaction.
        query(a, "BEGIN")
        query(a, "SET LOCAL statement_timeout = '13s'")
        check_eq(show(a, "statement_timeout"), "13s", "SET LOCAL inside the transaction")
        query(a, "COMMIT")
        check_eq(show(b, "statement_timeout"), "0", "B after A's SET LOCAL")
        check_eq(show(a, "statement_timeout"), "11s", "after a SET LOCAL transaction")

        # A reported parameter: rolled back, then committed.
        query(a, "BEGIN")
        query(a, f"SET TimeZone = '{TOKYO}'")
        query(a, "ROLLBACK")
        check_eq(show(a, "TimeZone"), defaults["TimeZone"], "A's TimeZone after ROLLBACK")
        check_eq(a.get_parameter_status("TimeZone"), defaults["TimeZone"],
                 "A's ParameterStatus TimeZone after ROLLBACK")
        check_eq(show(b, "TimeZone"), defaults["TimeZone"], "B's TimeZone")
        query(a, "BEGIN; SET TimeZone = 'Europe/Paris'; COMMIT")
        check_eq(show(b, "TimeZone"), defaults["TimeZone"], "B's TimeZone after A's COMMIT")
        check_eq(show(a, "TimeZone"), "Europe/Paris", "A's TimeZone after COMMIT")
        check_eq(b.get_parameter_status("TimeZone"), defaults["TimeZone"],
                 "B's ParameterStatus TimeZone")
        a.close()
        b.close()


def test_set_in_rolled_back_savepoint():
    # PostgreSQL undoes a SET made after a savepoint that is rolled back to, even though the
    # transaction then commits.
    with Pgring(pool_config(pool_size=1)) as p:
        a, b = app_connect(p), app_connect(p)
        query(a, "SET statement_timeout = '7s'")
        query(a, "BEGIN")
        query(a, "SAVEPOINT s1")
        query(a, "SET statement_timeout = '9s'")
        query(a, "ROLLBACK TO SAVEPOINT s1")
        query(a, "COMMIT")
        check_eq(show(b, "statement_timeout"), "0", "B's statement_timeout")
        check_eq(show(a, "statement_timeout"), "7s", "A's statement_timeout after the "
                                                     "savepoint was rolled back")
        a.close()
        b.close()


def test_startup_parameters():
    with Pgring(pool_config(pool_size=1)) as p:
        x = app_connect(p, options="-c statement_timeout=5s", application_name="x")
        y = app_connect(p)
        check_eq(x.get_parameter_status("application_name"), "x", "x's application_name status")
        for round_ in range(3):
            what = f"round {round_}"
            check_eq(show(x, "statement_timeout"), "5s", f"x's statement_timeout ({what})")
            check_eq(show(x, "application_name"), "x", f"x's application_name ({what})")
            check_eq(show(y, "statement_timeout"), "0", f"y's statement_timeout ({what})")
            app_name = show(y, "application_name")
            check(app_name != "x", f"y sees x's application_name ({what})")
            check_eq(app_name, "", f"y's application_name ({what})")
            check(y.get_parameter_status("application_name") != "x",
                  f"y's ParameterStatus application_name is x's ({what})")
            x.autocommit = False
            check_eq(show(x, "statement_timeout"), "5s", f"x's statement_timeout in a "
                                                         f"transaction ({what})")
            check_eq(show(x, "application_name"), "x", f"x's application_name in a "
                                                       f"transaction ({what})")
            x.commit()
            x.autocommit = True
        # x's own server-side view in pg_stat_activity matches.
        check_eq(query_one(x, "SELECT application_name FROM pg_stat_activity "
                              "WHERE pid = pg_backend_pid()"), "x", "x in pg_stat_activity")
        x.close()
        y.close()


def test_reset_all_and_discard_all():
    defaults = server_defaults()
    for command in ("RESET ALL", "DISCARD ALL"):
        with Pgring(pool_config(pool_size=2)) as p:
            a, b = app_connect(p), app_connect(p)
            query(a, f"SET TimeZone = '{TOKYO}'")
            query(a, "SET statement_timeout = '7s'")

            def before(conn):
                check_eq(show(conn, "TimeZone"), TOKYO, f"A's TimeZone before {command}")
                check_eq(show(conn, "statement_timeout"), "7s",
                         f"A's statement_timeout before {command}")

            on_each_backend(a, b, before)
            query(a, command)

            def after(conn):
                what = f"after {command}"
                check_eq(show(conn, "TimeZone"), defaults["TimeZone"], f"A's TimeZone {what}")
                check_eq(conn.get_parameter_status("TimeZone"), defaults["TimeZone"],
                         f"A's ParameterStatus TimeZone {what}")
                check_eq(show(conn, "statement_timeout"), "0", f"A's statement_timeout {what}")

            on_each_backend(a, b, after)
            check_eq(show(b, "TimeZone"), defaults["TimeZone"], f"B's TimeZone after {command}")
            a.close()
            b.close()


def test_reset_all_returns_to_startup_options():
    # In PostgreSQL, RESET ALL and DISCARD ALL go back to the values the session started with,
    # which include the startup packet's options and application_name.
    for command in ("RESET ALL", "DISCARD ALL"):
        with Pgring(pool_config(pool_size=1)) as p:
            x = app_connect(p, options="-c statement_timeout=5s", application_name="x")
            y = app_connect(p)
            query(x, "SET statement_timeout = '8s'")
            query(x, "SET application_name = 'changed'")
            check_eq(show(y, "application_name"), "", "y's application_name")
            check_eq(show(x, "statement_timeout"), "8s", "x's statement_timeout after SET")
            query(x, command)
            check_eq(show(y, "statement_timeout"), "0", f"y's statement_timeout after x's "
                                                        f"{command}")
            check_eq(show(x, "statement_timeout"), "5s", f"x's statement_timeout after {command}")
            check_eq(show(x, "application_name"), "x", f"x's application_name after {command}")
            check_eq(x.get_parameter_status("application_name"), "x",
                     f"x's ParameterStatus application_name after {command}")
            x.close()
            y.close()


# Every spelling PostgreSQL accepts for "back to the session's default" (which is the startup
# value when the client gave one).
RESET_SPELLINGS = {
    "TimeZone": ["RESET TIME ZONE", "SET TIME ZONE DEFAULT", "SET TIME ZONE LOCAL",
                 "SET timezone TO DEFAULT", "SET SESSION timezone = DEFAULT", "RESET timezone"],
    "statement_timeout": ["SET statement_timeout TO DEFAULT", "SET SESSION statement_timeout = "
                          "default", "RESET statement_timeout"],
}
RESET_OPTIONS = "-c TimeZone=PST8PDT -c statement_timeout=5s"


def reset_spelling_script(conn, other, name, command):
    """`conn` (started with RESET_OPTIONS) changes `name`, then returns to its default with
    `command`; `other` runs in between. Returns what conn sees after, and its ParameterStatus."""
    query(conn, "SET TIME ZONE 'Europe/Paris'")
    query(conn, "SET statement_timeout = '8s'")
    query_one(other, "SELECT 1")
    query(conn, command)
    query_one(other, "SELECT 1")
    return show(conn, name), conn.get_parameter_status("TimeZone")


def test_reset_spellings_return_to_startup_values():
    for name, commands in RESET_SPELLINGS.items():
        for command in commands:
            x = direct_connect(db=DB, user=USER, password="secret", options=RESET_OPTIONS)
            y = direct_connect(db=DB, user=USER, password="secret")
            expected = reset_spelling_script(x, y, name, command)
            x.close()
            y.close()
            with Pgring(pool_config(pool_size=1)) as p:
                x = app_connect(p, options=RESET_OPTIONS)
                y = app_connect(p)
                check_eq(reset_spelling_script(x, y, name, command), expected,
                         f"{name} after {command!r} through pgring, as PostgreSQL")
                x.close()
                y.close()


# Startup parameters spelled otherwise than PostgreSQL reports them.
SPELLED = {"client_encoding": "utf-8", "DateStyle": "iso, dmy", "IntervalStyle": "SQL_STANDARD",
           "TimeZone": "utc", "application_name": "spelled"}


def login_as_spelled(port):
    """Log in with SPELLED: what the client is told (every ParameterStatus) and what it sees."""
    conn = login(port, user=USER, db=DB, password="secret", timeout=30, **SPELLED)
    try:
        shown = conn.simple_query("SELECT current_setting('client_encoding'), "
                                  "current_setting('DateStyle'), current_setting('TimeZone'), "
                                  "now()::date::text = to_char(now(), 'DD/MM/YYYY')")
        return dict(conn.parameters), shown
    finally:
        conn.terminate()


def test_reported_parameters_are_postgresql_s():
    """client_encoding 'utf-8' is reported as 'UTF8', DateStyle 'iso, dmy' as 'ISO, DMY': a client
    gets PostgreSQL's values in its welcome, whether it is the pool's first client, the first
    with these parameters (pgring learns them from a server), or a later one (pgring knows)."""
    expected = login_as_spelled(PGPORT)
    check_eq(expected[0]["client_encoding"], "UTF8", "PostgreSQL's own client_encoding report")
    with Pgring(pool_config(pool_size=1)) as p:
        check_eq(login_as_spelled(p.port), expected, "the pool's first client")
    with Pgring(pool_config(pool_size=1)) as p:
        plain = app_connect(p)  # the pool knows the server's defaults from now on
        query_one(plain, "SELECT 1")
        check_eq(login_as_spelled(p.port), expected, "the first client with these parameters")
        check_eq(login_as_spelled(p.port), expected, "a later client with the same parameters")
        # Known parameters need no server: a login completes while the one server is busy.
        plain.autocommit = False
        query_one(plain, "SELECT 1")
        known = login(p.port, user=USER, db=DB, password="secret", timeout=5, **SPELLED)
        check_eq(dict(known.parameters), expected[0], "a login while the pool's server is busy")
        known.terminate()
        plain.commit()
        plain.autocommit = True
        check_eq(show(plain, "client_encoding"), "UTF8", "the other client's client_encoding")
        plain.close()


# Startup parameters PostgreSQL refuses at login.
REFUSED = [{"client_encoding": "no-such-encoding"},
           {"options": "-c statement_timeout=bogus"},
           {"no_such_parameter": "1"},
           {"DateStyle": "iso", "TimeZone": "Mars/Olympus_Mons"}]


def test_refused_startup_parameters_fail_the_login():
    """PostgreSQL refuses these at login with its own error: so does pgring (not at the first
    query, and not with an error of its own), and the server it tried them on stays in use."""
    with Pgring(pool_config(pool_size=1)) as p:
        plain = app_connect(p)
        first = query_one(plain, "SELECT pg_backend_pid()")
        for params in REFUSED:
            expected = login_error(PGPORT, user=USER, db=DB, password="secret", **params)
            got = login_error(p.port, user=USER, db=DB, password="secret", **params)
            what = f"login with {params}"
            check_eq((got.fields.get("S"), got.sqlstate, got.fields.get("M")),
                     (expected.fields.get("S"), expected.sqlstate, expected.fields.get("M")),
                     f"{what}: the error, as PostgreSQL's")
            check_eq(query_one(plain, "SELECT pg_backend_pid()"), first,
                     f"after the {what}: the pool's one server")
            check_eq(show(plain, "statement_timeout"), "0", f"after the {what}: its session")
        plain.close()


def test_ignore_startup_parameters():
    """ignore_startup_parameters (PgBouncer's setting): the listed parameters are dropped from
    the startup packet: a parameter PostgreSQL would refuse no longer fails the login, and one it
    would apply is not applied (the session has the server's default, as if never sent)."""
    refused = {"no_such_parameter": "1"}
    check_eq(login_error(PGPORT, user=USER, db=DB, password="secret", **refused).sqlstate,
             "42704", "PostgreSQL refuses the parameter")
    direct = login(PGPORT, user=USER, db=DB, password="secret", extra_float_digits="3")
    check_eq(direct.simple_query("SHOW extra_float_digits"), [["3"]], "direct: applied")
    direct.terminate()
    plain = direct_connect()
    default = query_one(plain, "SHOW extra_float_digits")
    plain.close()
    for mode in ("transaction", "session"):
        config = pool_config(pool_mode=mode, pool_size=2)
        config["ignore_startup_parameters"] = ["no_such_parameter", "extra_float_digits",
                                               "options"]
        with Pgring(config) as p:
            c = login(p.port, user=USER, db=DB, password="secret", extra_float_digits="3",
                      options="-c extra_float_digits=2", **refused)
            check_eq(c.simple_query("SHOW extra_float_digits"), [[default]],
                     f"{mode} mode: ignored parameters not applied")
            check("extra_float_digits" not in c.parameters or
                  c.parameters.get("extra_float_digits") == default,
                  f"{mode} mode: reported {c.parameters.get('extra_float_digits')}")
            c.terminate()
            # Parameters not in the list still apply.
            c = login(p.port, user=USER, db=DB, password="secret", application_name="kept")
            check_eq(c.simple_query("SHOW application_name"), [["kept"]], f"{mode} mode")
            c.terminate()
        # Ignoring only one name inside `options` keeps the others (transaction mode parses
        # options; session mode forwards `options` whole unless "options" itself is listed).
    config = pool_config(pool_size=2)
    config["ignore_startup_parameters"] = ["extra_float_digits"]
    with Pgring(config) as p:
        c = login(p.port, user=USER, db=DB, password="secret",
                  options="-c extra_float_digits=2 -c statement_timeout=1234")
        check_eq(c.simple_query("SHOW extra_float_digits"), [[default]], "in options: ignored")
        check_eq(c.simple_query("SHOW statement_timeout"), [["1234ms"]], "in options: kept")
        c.terminate()


if __name__ == "__main__":
    run_tests(globals())
