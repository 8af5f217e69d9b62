#!/usr/bin/python3
"""`pgring convert-pgbouncer`: PgBouncer's configuration as pgring's YAML. The example
configuration Debian's pgbouncer package ships converts into one `--check` accepts; a realistic
one (transaction mode, three databases, a user override, auth_type hba with its HBA file, the
auth_file, auth_query, TLS for clients) converts, and pgring then serves it: each database, each
rule, auth_query's lookup and TLS, through psql. Every setting without an equivalent is named in
the notes with its line."""

import os
import subprocess
import tempfile

import yaml

from lib import (PGHOST, PGPORT, PGRING_BIN, SOURCE_DIR, Pgring, check, check_eq, free_port,
                 psql, run_tests, skip_test)

DEBIAN_EXAMPLE = "/usr/share/doc/pgbouncer/examples"


def convert(*args):
    r = subprocess.run([PGRING_BIN, "convert-pgbouncer", *args], capture_output=True, text=True,
                       timeout=30)
    check_eq(r.returncode, 0, f"convert-pgbouncer exit status ({r.stderr})")
    return r.stdout, r.stderr


def check_config(path):
    r = subprocess.run([PGRING_BIN, "--config", path, "--check"], capture_output=True, text=True,
                       timeout=30)
    check_eq(r.returncode, 0, f"--check of the converted config: {r.stderr}")
    return r.stdout + r.stderr


def test_debian_example_converts():
    ini = os.path.join(DEBIAN_EXAMPLE, "pgbouncer.ini")
    if not os.path.exists(ini):
        skip_test(f"{ini} is not installed (Debian's pgbouncer package)")
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "pgring.yaml")
        _, notes = convert(ini, "--userlist", os.path.join(DEBIAN_EXAMPLE, "userlist.txt"),
                           "-o", out)
        result = check_config(out)
        check("configuration ok" in result, result)
        config = yaml.safe_load(open(out))
        # PgBouncer's own defaults where pgring's differ: session mode, md5, 100 clients.
        check_eq(config["defaults"]["pool_mode"], "session", "pool_mode")
        check_eq(config["auth"]["method"], "md5", "auth.method")
        check_eq(config["max_client_conn"], 100, "max_client_conn")
        check("127.0.0.1:6432" in config["listen"], f"listen: {config['listen']}")
        check(set(config["users"]) >= {"postgres", "marko"}, f"users: {config['users']}")
        for key in ("logfile", "pidfile"):
            check(f"{key}:" in notes, f"no note for {key}: {notes}")
        check_eq(config["log"]["file"], "/var/log/postgresql/pgbouncer.log", "log.file")


def test_realistic_config_is_served():
    port = free_port()
    d = tempfile.mkdtemp(prefix="pgring-convert-")
    subprocess.run([os.path.join(SOURCE_DIR, "scripts", "gen-test-certs.sh"), d], check=True,
                   capture_output=True)
    files = {
        "pgbouncer.ini": f"""
;; a transaction-mode PgBouncer in front of one PostgreSQL
[databases]
pgring_test = host={PGHOST} port={PGPORT}
app = host={PGHOST} port={PGPORT} pool_size=2
app_alias = host={PGHOST} port={PGPORT} dbname=app connect_query='SELECT 1'

[users]
pgring_md5 = pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = hba
auth_file = {d}/userlist.txt
auth_hba_file = {d}/hba.conf
auth_user = postgres
pool_mode = transaction
default_pool_size = 4
max_client_conn = 50
server_idle_timeout = 120
query_wait_timeout = 20
client_tls_sslmode = allow
client_tls_cert_file = {d}/server.crt
client_tls_key_file = {d}/server.key
ignore_startup_parameters = extra_float_digits
server_check_query = select 1
admin_users = postgres
""",
        "userlist.txt": '"app" "secret"\n"postgres" "unused"\n',
        "hba.conf": "host all app 127.0.0.1/32 scram-sha-256\n"
                    "hostssl all pgring_md5 127.0.0.1 255.255.255.255 md5\n"
                    "host all postgres 127.0.0.1/32 trust\n"
                    "host all all all reject\n",
    }
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    out = os.path.join(d, "pgring.yaml")
    _, notes = convert(os.path.join(d, "pgbouncer.ini"), "--userlist",
                       os.path.join(d, "userlist.txt"), "--hba", os.path.join(d, "hba.conf"),
                       "-o", out)
    for what in ("connect_query", "server_check_query"):
        check(what in notes, f"no note for {what}: {notes}")
    check("listen_port" not in notes and "default_pool_size" not in notes, notes)
    check_config(out)

    config = yaml.safe_load(open(out))
    check_eq(config["auth"]["query"]["user"], "postgres", "auth.query.user")
    # A [users] entry of a user auth_query looks up: its settings, no password.
    check_eq(config["users"]["pgring_md5"], {"pool_mode": "session"}, "users.pgring_md5")
    check_eq(len(config["auth"]["rules"]), 4, "auth.rules")
    check_eq(config["ignore_startup_parameters"], ["extra_float_digits"],
             "ignore_startup_parameters")
    with Pgring(config) as p:
        check_eq(p.port, port, "the converted listen port")
        # Each database, as app (scram-sha-256 by the first rule).
        for db, server_db in (("pgring_test", "pgring_test"), ("app", "app"),
                              ("app_alias", "app")):
            rc, out_, err = psql(p.port, "SELECT current_database()", db=db, user="app",
                                 password="secret")
            check_eq((rc, out_), (0, server_db), f"database {db} ({err})")
        # pgring_md5 is not in the auth_file: auth_query looks its secret up; the hostssl rule
        # lets it in over TLS only.
        rc, out_, err = psql(p.port, "SELECT current_user", user="pgring_md5",
                             password="md5_pw", db="host=127.0.0.1 dbname=app sslmode=require")
        check_eq((rc, out_), (0, "pgring_md5"), f"pgring_md5 over TLS ({err})")
        rc, _, err = psql(p.port, "SELECT 1", user="pgring_md5", password="md5_pw",
                          db="host=127.0.0.1 dbname=app sslmode=disable")
        check(rc != 0 and "auth.rules[3] rejects" in err, f"pgring_md5 without TLS: {rc} {err}")
        # The last rule rejects everyone else.
        rc, _, err = psql(p.port, "SELECT 1", user="pgring_scram", password="scram_pw", db="app")
        check(rc != 0 and "auth.rules[3] rejects" in err, f"pgring_scram: {rc} {err}")
        # The admin console, for admin_users.
        rc, out_, err = psql(p.port, "SHOW POOLS", db="pgring", user="postgres")
        check(rc == 0 and "app" in out_, f"SHOW POOLS: {rc} {err}")


if __name__ == "__main__":
    run_tests(globals())
