#!/usr/bin/python3
"""Client authentication (trust, md5, scram-sha-256 against `users:`), its errors, and pgring's
own login to PostgreSQL with SCRAM, MD5 and cleartext passwords."""

import psycopg2

from lib import (PGHOST, PGPORT, Pgring, check, check_eq, connect, expect_error, login,
                login_error, md5_secret, psql, psql_ok, query_one, run_tests)

# RawConn.auth_requests codes: what pgring asked the client for.
AUTH_OK, AUTH_CLEARTEXT, AUTH_MD5, AUTH_SASL = 0, 3, 5, 10


def test_trust_accepts_any_user():
    # With method trust and no users: section, any user name is let in. The database logs in
    # to the server as postgres, so the client's user name does not need to exist there.
    config = {
        "auth": {"method": "trust"},
        "databases": {"pgring_test": {"host": PGHOST, "port": PGPORT, "user": "postgres"}},
    }
    with Pgring(config) as p:
        for user in ("postgres", "someone_else", "x" * 40):
            check_eq(psql_ok(p.port, "SELECT current_user", user=user), "postgres",
                     f"current_user for client {user!r}")
        c = login(p.port, user="nobody_in_particular")
        check_eq(c.auth_requests, [AUTH_OK], "trust asks for no password")
        check_eq(c.simple_query("SELECT 1"), [["1"]])
        c.terminate()
        conn = connect(p.port, user="psycopg_user")
        check_eq(query_one(conn, "SELECT 40 + 2"), 42)
        conn.close()


def test_trust_passes_client_user_to_server():
    # Without a database-level user, the server login uses the client's user name.
    with Pgring({"auth": {"method": "trust"}}) as p:
        check_eq(psql_ok(p.port, "SELECT current_user", user="app"), "app")
        check_eq(psql_ok(p.port, "SELECT current_user", user="postgres"), "postgres")


def md5_config():
    return {
        "auth": {"method": "md5"},
        "users": {"app": {"password": "secret"}},
        "databases": {"app": {"host": PGHOST, "port": PGPORT}},
    }


def test_md5_client_auth():
    with Pgring(md5_config()) as p:
        check_eq(psql_ok(p.port, "SELECT current_user", db="app", user="app", password="secret"),
                 "app")
        conn = connect(p.port, db="app", user="app", password="secret")
        check_eq(query_one(conn, "SELECT current_database()"), "app")
        conn.close()
        c = login(p.port, user="app", db="app", password="secret")
        check_eq(c.auth_requests, [AUTH_MD5, AUTH_OK], "md5 authentication exchange")
        c.terminate()


def test_md5_wrong_password():
    with Pgring(md5_config()) as p:
        check_eq(login_error(p.port, user="app", db="app", password="wrong").sqlstate, "28P01")
        rc, _, err = psql(p.port, "SELECT 1", db="app", user="app", password="wrong")
        check(rc != 0, "psql with a wrong password must fail")
        check("pgring: " in err, f"error should come from pgring: {err}")
        # Still serving after failed logins.
        check_eq(psql_ok(p.port, "SELECT 1", db="app", user="app", password="secret"), "1")


def scram_config():
    return {
        "auth": {"method": "scram-sha-256"},
        "users": {"app": {"password": "secret"}},
        "databases": {"app": {"host": PGHOST, "port": PGPORT}},
    }


def test_scram_client_auth():
    with Pgring(scram_config()) as p:
        check_eq(psql_ok(p.port, "SELECT current_user", db="app", user="app", password="secret"),
                 "app")
        conn = connect(p.port, db="app", user="app", password="secret")
        check_eq(query_one(conn, "SELECT 1"), 1)
        conn.close()
        c = login(p.port, user="app", db="app", password="secret")
        check_eq(c.auth_requests[0], AUTH_SASL, "first authentication request")
        check_eq(c.auth_requests[-1], AUTH_OK, "last authentication request")
        check_eq(c.simple_query("SELECT current_user"), [["app"]])
        c.terminate()


def test_scram_wrong_password():
    with Pgring(scram_config()) as p:
        e = login_error(p.port, user="app", db="app", password="not-the-secret")
        check_eq(e.sqlstate, "28P01")
        check(e.fields.get("M", "").startswith("pgring: "), f"message: {e.fields}")
        rc, _, err = psql(p.port, "SELECT 1", db="app", user="app", password="nope")
        check(rc != 0 and "pgring: " in err, f"psql: {rc} {err}")
        try:
            connect(p.port, db="app", user="app", password="nope").close()
            check(False, "psycopg2 login with a wrong password succeeded")
        except psycopg2.OperationalError as e:
            check("pgring: " in str(e), f"psycopg2 error: {e}")


def test_unknown_user():
    with Pgring(scram_config()) as p:
        check_eq(login_error(p.port, user="mallory", db="app", password="secret").sqlstate,
                 "28000")
        rc, _, err = psql(p.port, "SELECT 1", db="app", user="mallory", password="secret")
        check(rc != 0 and "pgring: " in err, f"psql: {rc} {err}")
    with Pgring(md5_config()) as p:
        check_eq(login_error(p.port, user="mallory", db="app", password="secret").sqlstate,
                 "28000")


def test_unknown_database():
    with Pgring(scram_config()) as p:
        e = login_error(p.port, user="app", db="no_such_db", password="secret")
        check_eq(e.sqlstate, "3D000")
        check(e.fields.get("M", "").startswith("pgring: "), f"message: {e.fields}")
        rc, _, err = psql(p.port, "SELECT 1", db="no_such_db", user="app", password="secret")
        check(rc != 0 and "pgring: " in err, f"psql: {rc} {err}")
    with Pgring({"auth": {"method": "trust"}}) as p:
        check_eq(login_error(p.port, user="postgres", db="no_such_db").sqlstate, "3D000")


def test_md5_secret_in_config():
    # users: may hold "md5" + md5(password + user) instead of the password.
    config = md5_config()
    config["users"] = {"app": {"password": md5_secret("app", "secret")}}
    with Pgring(config) as p:
        check_eq(psql_ok(p.port, "SELECT current_user", db="app", user="app", password="secret"),
                 "app")
        c = login(p.port, user="app", db="app", password="secret")
        check_eq(c.auth_requests, [AUTH_MD5, AUTH_OK], "md5 authentication exchange")
        c.terminate()
        check_eq(login_error(p.port, user="app", db="app", password="wrong").sqlstate, "28P01")


def server_login_config(user, password):
    # The client authenticates to pgring as `user`; pgring logs in to PostgreSQL as the same
    # user with the same password, which the test cluster's pg_hba.conf checks with the method
    # the role is named after.
    return {
        "auth": {"method": "scram-sha-256"},
        "users": {user: {"password": password}},
        "defaults": {"pool_mode": "session", "pool_size": 2},
    }


def check_server_login(user, password):
    with Pgring(server_login_config(user, password)) as p:
        check_eq(psql_ok(p.port, "SELECT current_user", user=user, password=password), user)
        conn = connect(p.port, user=user, password=password)
        check_eq(query_one(conn, "SELECT current_user"), user)
        check_eq(query_one(conn, "SELECT count(*) FROM pg_class WHERE relname = 'pg_class'"), 1)
        conn.close()


def test_server_login_scram():
    check_server_login("pgring_scram", "scram_pw")


def test_server_login_md5():
    check_server_login("pgring_md5", "md5_pw")


def test_server_login_cleartext():
    check_server_login("pgring_plain", "plain_pw")


def test_server_login_with_database_credentials():
    # databases.<db>.user/password: every client of that database logs in to the server as
    # that user (here with SCRAM), whoever the client is.
    config = {
        "auth": {"method": "trust"},
        "databases": {"scramdb": {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test",
                                  "user": "pgring_scram", "password": "scram_pw"}},
    }
    with Pgring(config) as p:
        check_eq(psql_ok(p.port, "SELECT current_user || '@' || current_database()",
                         db="scramdb", user="anyone"), "pgring_scram@pgring_test")


def test_server_login_failure_reported():
    # A configured password that the server rejects: the client gets an error, not a hang.
    config = server_login_config("pgring_scram", "scram_pw")
    config["databases"] = {"pgring_test": {"host": PGHOST, "port": PGPORT,
                                           "user": "pgring_scram", "password": "wrong_pw"}}
    with Pgring(config) as p:
        def attempt():
            c = login(p.port, user="pgring_scram", password="scram_pw", timeout=30)
            try:
                c.simple_query("SELECT 1")
            finally:
                c.close()
        e = expect_error(attempt, ("28P01", "08006", "28000"))
        check(e.fields.get("M", ""), "error without a message")


def test_forced_user_password_comes_from_users():
    """databases.<db>.user without a password logs in with that user's password from users:
    (it logged in with an empty one); the server checks it (pgring_md5 has md5 in pg_hba)."""
    config = {"auth": {"method": "trust"},
              "users": {"app": {"password": "secret"}, "pgring_md5": {"password": "md5_pw"}},
              "databases": {"forced": {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test",
                                       "user": "pgring_md5"}}}
    with Pgring(config) as p:
        check_eq(psql_ok(p.port, "SELECT current_user", user="app", db="forced"), "pgring_md5",
                 "the server login of a database with a forced user and no password")


if __name__ == "__main__":
    run_tests(globals())
