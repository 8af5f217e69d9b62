#!/usr/bin/python3
"""Authentication beyond `users:` and one method: auth rules (pg_hba-like, by database, user,
address and TLS), auth.query (secrets looked up on the server, with a cache), and SCRAM
pass-through (pgring keeps only SCRAM secrets, yet logs in to a PostgreSQL that accepts nothing
but scram-sha-256 for that role: pgring_scram in scripts/pg-throwaway.sh's pg_hba.conf)."""

import time

import base64
import re
import struct

from lib import (PGHOST, PGPORT, Pgring, RawConn, check, check_eq, connect, direct_connect,
                free_port, login, login_error, message, psql, psql_ok, query_one, run_tests,
                startup_packet)

AUTH_OK, AUTH_MD5, AUTH_SASL = 0, 5, 10


def pg_secret(role):
    conn = direct_connect(db="postgres")
    try:
        return query_one(conn, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
    finally:
        conn.close()


def test_rules_choose_the_method():
    config = {
        "auth": {"method": "scram-sha-256", "rules": [
            {"user": "blocked", "method": "reject"},
            {"database": "trusted", "method": "trust"},
            {"database": "pgring_test", "user": ["app", "postgres"], "address": "127.0.0.0/8", "method": "md5"},
            {"database": "pgring_test", "address": "10.0.0.0/8", "method": "trust"},
            {"database": "app", "address": "127.0.0.1", "tls": False, "method": "scram-sha-256"},
        ]},
        "users": {"app": {"password": "secret"}, "postgres": {"password": "pw"}, "blocked": {"password": "x"}},
        "databases": {"pgring_test": {"host": PGHOST, "port": PGPORT},
                      "app": {"host": PGHOST, "port": PGPORT},
                      "trusted": {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test"}},
    }
    with Pgring(config) as p:
        c = login(p.port, user="app", db="pgring_test", password="secret")
        check_eq(c.auth_requests, [AUTH_MD5, AUTH_OK], "rule 2: md5")
        c.terminate()
        c = login(p.port, user="app", db="app", password="secret")
        check_eq(c.auth_requests, [AUTH_SASL, 11, 12, AUTH_OK], "rule 4: scram-sha-256")
        c.terminate()
        c = login(p.port, user="postgres", db="trusted")
        check_eq(c.auth_requests, [AUTH_OK], "rule 1: trust")
        check_eq(c.simple_query("SELECT current_database()"), [["pgring_test"]])
        c.terminate()
        e = login_error(p.port, user="blocked", db="trusted", password="x")
        check_eq(e.sqlstate, "28000")
        check("auth.rules[0] rejects" in e.fields["M"], e.fields["M"])
        # Rule 0 catches user blocked on every database.
        e = login_error(p.port, user="blocked", db="pgring_test", password="x")
        check_eq(e.sqlstate, "28000")
        e = login_error(p.port, user="postgres", db="app", password="pw", source="127.0.0.2")
        check_eq(e.sqlstate, "28000")
        check("no auth rule allows" in e.fields["M"], e.fields["M"])
        # A wrong password under the md5 rule is still a wrong password.
        check_eq(login_error(p.port, user="app", db="pgring_test", password="nope").sqlstate, "28P01")
        check(p.wait_log(r"closed: auth_rejected"), "close reason logged")


def passthrough_config(secret):
    return {"auth": {"method": "scram-sha-256"},
            "users": {"pgring_scram": {"password": secret}},
            "databases": {"pgring_test": {"host": PGHOST, "port": PGPORT}}}


def test_scram_pass_through_with_stored_secret():
    secret = pg_secret("pgring_scram")
    check(secret.startswith("SCRAM-SHA-256$"), f"pgring_scram has a SCRAM secret: {secret[:14]}")
    with Pgring(passthrough_config(secret)) as p:
        check_eq(psql_ok(p.port, "SELECT current_user", user="pgring_scram", password="scram_pw"), "pgring_scram")
        conn = connect(p.port, user="pgring_scram", password="scram_pw")
        check_eq(query_one(conn, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'pgring_scram'") >= 1, True)
        conn.close()
        check_eq(login_error(p.port, user="pgring_scram", password="wrong").sqlstate, "28P01")
        check("scram_pw" not in p.log() and secret not in p.log(), "no password or secret in the log")
    # A secret with another salt than the server's: pgring checks the client fine, but cannot
    # log in to PostgreSQL with it, and says why.
    with Pgring(passthrough_config(make_secret("scram_pw"))) as p:
        rc, _, err = psql(p.port, "SELECT 1", user="pgring_scram", password="scram_pw")
        check(rc != 0 and "same secret" in err, f"mismatched secret: {err}")


def make_secret(password, salt=b"0123456789abcdef", iterations=4096):
    import base64
    import hashlib
    import hmac
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def auth_query_config(method="scram-sha-256", cache="60s", query=None):
    q = {"user": "postgres", "cache": cache}
    if query:
        q["query"] = query
    return {"auth": {"method": method, "query": q},
            "users": {"postgres": {"password": "unused"}},
            "databases": {"pgring_test": {"host": PGHOST, "port": PGPORT}}}


def test_auth_query_scram_secret_and_pass_through():
    with Pgring(auth_query_config()) as p:
        # pgring_scram is not in users:. Its SCRAM secret comes from pg_shadow, the client's
        # proof is checked against it, and the ClientKey logs in to the server.
        c = login(p.port, user="pgring_scram", password="scram_pw")
        check_eq(c.auth_requests, [AUTH_SASL, 11, 12, AUTH_OK])
        check_eq(c.simple_query("SELECT current_user"), [["pgring_scram"]])
        c.terminate()
        check_eq(psql_ok(p.port, "SELECT current_user", user="pgring_scram", password="scram_pw"), "pgring_scram")
        check_eq(login_error(p.port, user="pgring_scram", password="wrong").sqlstate, "28P01")
        # Unknown users go through the same exchange and fail the same way.
        c_unknown = login_error(p.port, user="no_such_role", password="x")
        check_eq(c_unknown.sqlstate, "28P01")
        check("password authentication failed" in c_unknown.fields["M"], c_unknown.fields["M"])
        # md5 secret under method scram-sha-256: refused, like PostgreSQL.
        check_eq(login_error(p.port, user="pgring_md5", password="md5_pw").sqlstate, "28P01")
        check(p.wait_log(r"has an md5 secret, which auth method scram-sha-256 cannot use"), "why, in the log")
        log_text = p.log()
        check("scram_pw" not in log_text and "SCRAM-SHA-256$" not in log_text, "no secret in the log")
    with Pgring(auth_query_config(method="md5")) as p:
        c = login(p.port, user="pgring_md5", password="md5_pw")
        check_eq(c.auth_requests, [AUTH_MD5, AUTH_OK], "an md5 secret answers md5")
        check_eq(c.simple_query("SELECT current_user"), [["pgring_md5"]])
        c.terminate()
        # A SCRAM secret under method md5 runs SCRAM (as PostgreSQL does).
        c = login(p.port, user="pgring_scram", password="scram_pw")
        check_eq(c.auth_requests[0], AUTH_SASL)
        c.terminate()


def test_auth_query_cache():
    admin = direct_connect(db="postgres")
    try:
        config = auth_query_config(cache="1s")
        config["workers"] = 1  # each reactor keeps its own cache: this test follows one
        with Pgring(config) as p:
            check_eq(psql_ok(p.port, "SELECT 1", user="pgring_scram", password="scram_pw"), "1")
            query_one(admin, "SELECT 1 FROM (SELECT set_config('password_encryption', 'scram-sha-256', false)) s")
            admin.cursor().execute("ALTER ROLE pgring_scram PASSWORD 'changed_pw'")
            # Within the cache time the old secret still decides; after it, the new one.
            check_eq(psql(p.port, "SELECT 1", user="pgring_scram", password="changed_pw")[0] != 0, True,
                     "new password refused while the old secret is cached")
            time.sleep(1.2)
            rc, out, err = psql(p.port, "SELECT current_user", user="pgring_scram", password="changed_pw")
            check(rc == 0 and out == "pgring_scram", f"new password after the cache expired: {err}")
            check_eq(psql(p.port, "SELECT 1", user="pgring_scram", password="scram_pw")[0] != 0, True,
                     "old password refused")
    finally:
        admin.cursor().execute("ALTER ROLE pgring_scram PASSWORD 'scram_pw'")
        admin.close()


def test_users_entry_without_password_is_looked_up():
    # A users: entry with only settings (as PgBouncer's [users] section): the secret comes from
    # auth.query, the settings apply to the user's pool.
    config = auth_query_config()
    config["users"]["pgring_scram"] = {"pool_mode": "session", "pool_size": 3}
    config["admin"] = {"users": ["postgres"]}
    with Pgring(config) as p:
        c = login(p.port, user="pgring_scram", password="scram_pw")
        check_eq(c.simple_query("SELECT current_user"), [["pgring_scram"]])
        rc, out, err = psql(p.port, "SHOW POOLS", db="pgring", user="postgres", password="unused")
        check(rc == 0, f"SHOW POOLS: {err}")
        row = [line for line in out.splitlines() if line.startswith("pgring_test|pgring_scram|")]
        check(row and row[0].split("|")[2] == "session", f"the entry's pool_mode applies: {out}")
        c.terminate()
        check_eq(login_error(p.port, user="pgring_scram", password="wrong").sqlstate, "28P01")


def test_auth_query_errors():
    with Pgring(auth_query_config(query="SELECT usename, passwd FROM no_such_table WHERE usename = $1")) as p:
        e = login_error(p.port, user="pgring_scram", password="scram_pw")
        check_eq(e.sqlstate, "08006")
        # The client (not authenticated yet) is told nothing about the server; the log says why.
        check("could not be looked up" in e.fields["M"] and "no_such_table" not in e.fields["M"], e.fields["M"])
        check(p.wait_log(r"auth.query for user \"pgring_scram\" failed: .*no_such_table"), "details in the log")
        # The lookup's server connection is fine afterwards: a configured user still logs in.
        check_eq(psql_ok(p.port, "SELECT 7", user="postgres", password="unused"), "7")
    # The server is down: the lookup fails with a clear error, not a hang.
    config = auth_query_config()
    config["databases"]["pgring_test"]["port"] = 1
    config["timeouts"] = {"server_connect": "1s", "client_login": "5s"}
    with Pgring(config) as p:
        started = time.monotonic()
        e = login_error(p.port, user="pgring_scram", password="scram_pw")
        check_eq(e.sqlstate, "08006")
        check(time.monotonic() - started < 4.5, "failed before the login timeout")


def scram_salt(port, user, db="pgring_test"):
    """The salt pgring's server-first-message shows for `user` (the exchange is then dropped)."""
    c = RawConn(port)
    c.send(startup_packet(user, db))
    kind, body = c.read_message()
    check_eq((kind, struct.unpack("!I", body[:4])[0]), (b"R", AUTH_SASL), "SASL offered")
    first = b"n,,n=,r=abcdefghijklmnop"
    c.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first))
    kind, body = c.read_message()
    check_eq(kind, b"R")
    attrs = dict(kv.split("=", 1) for kv in body[4:].decode().split(","))
    c.close()
    return attrs["s"], attrs["i"]


def test_unknown_users_look_like_known_ones():
    with Pgring(auth_query_config()) as p:
        a1, a2, b = scram_salt(p.port, "ghost_a"), scram_salt(p.port, "ghost_a"), scram_salt(p.port, "ghost_b")
        check_eq(a1, a2, "the same unknown user shows the same salt each time, as a real one does")
        check(a1[0] != b[0], "another unknown user shows another salt")
        check_eq(len(base64.b64decode(a1[0])), 16)
        real = scram_salt(p.port, "pgring_scram")
        check_eq(real, scram_salt(p.port, "pgring_scram"), "a real user's salt is stable")
        # Unknown databases are not revealed before authentication either.
        e = login_error(p.port, user="pgring_scram", db="no_such_db", password="scram_pw")
        check_eq(e.sqlstate, "28P01")


def test_auth_query_secrets_belong_to_their_database():
    config = auth_query_config()
    config["log"] = {"level": "debug"}
    config["databases"]["other"] = {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test"}
    with Pgring(config) as p:
        check_eq(psql_ok(p.port, "SELECT 1", user="pgring_scram", password="scram_pw"), "1")
        check_eq(psql_ok(p.port, "SELECT 2", db="other", user="pgring_scram", password="scram_pw"), "2")
        # Two databases may be two clusters: the secret looked up in one never serves the other.
        lookups = re.findall(r"looking up user pgring_scram", p.log())
        check_eq(len(lookups), 2, "one lookup per database")
    config["auth"]["query"]["database"] = "pgring_test"
    with Pgring(config) as p:
        check_eq(psql_ok(p.port, "SELECT 1", user="pgring_scram", password="scram_pw"), "1")
        check_eq(psql_ok(p.port, "SELECT 2", db="other", user="pgring_scram", password="scram_pw"), "2")
        check_eq(len(re.findall(r"looking up user pgring_scram", p.log())), 1,
                 "auth.query.database: one secret for every database")


def test_auth_query_odd_results():
    secret = pg_secret("pgring_scram")
    # The first row decides: a NULL secret there means no password, whatever follows.
    first_null = ("SELECT * FROM (VALUES ($1::text, NULL::text, 1), ($1::text, '" + secret +
                  "', 2)) v(u, p, o) ORDER BY o")
    with Pgring(auth_query_config(query=first_null)) as p:
        check_eq(login_error(p.port, user="pgring_scram", password="scram_pw").sqlstate, "28P01")
    # A secret PostgreSQL would store but pgring's parser refuses (iterations "04096"): a
    # failed login, not a crash.
    odd = secret.replace("SCRAM-SHA-256$4096:", "SCRAM-SHA-256$04096:")
    with Pgring(auth_query_config(query=f"SELECT $1::text, '{odd}'::text")) as p:
        check_eq(login_error(p.port, user="pgring_scram", password="scram_pw").sqlstate, "28P01")
        check(p.wait_log(r"malformed SCRAM secret"), "logged for the operator")
        check(p.alive(), "still running")


def test_admin_console_never_uses_looked_up_roles():
    config = auth_query_config()
    config["admin"] = {"users": ["pgring_scram"]}
    with Pgring(config) as p:
        e = login_error(p.port, user="pgring_scram", db="pgring", password="scram_pw")
        check_eq(e.sqlstate, "28000")


def test_ipv4_clients_on_a_dual_stack_listener():
    port = free_port()
    config = {"listen": [f"[::]:{port}"],
              "auth": {"method": "scram-sha-256", "rules": [{"address": "127.0.0.1/32", "method": "trust"}]},
              "databases": {"pgring_test": {"host": PGHOST, "port": PGPORT}}}
    with Pgring(config) as p:
        c = login(p.port, user="postgres")  # over IPv4: ::ffff:127.0.0.1 on the listener
        check_eq(c.auth_requests, [0], "the IPv4 rule matched")
        c.terminate()
        e = login_error(p.port, user="postgres", host="::1")
        check_eq(e.sqlstate, "28000")


if __name__ == "__main__":
    run_tests(globals())
