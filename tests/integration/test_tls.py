#!/usr/bin/python3
"""TLS on both sides: clients (SSLRequest, PostgreSQL 17's direct TLS with ALPN, tls.client.mode,
client certificates, certificate reload on SIGHUP, SCRAM-SHA-256-PLUS channel binding) and
servers (tls.server.mode prefer/require/verify-ca/verify-full against the test PostgreSQL, which
scripts/pg-throwaway.sh starts with ssl = on and a throwaway CA in $PGDATA/tls)."""

import hashlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading

from lib import (ConnectionClosed, PGDATA, PGHOST, PGPORT, PGRING_BIN, PgError, Pgring, RawConn,
                Relay, SOURCE_DIR, Scram, check, check_eq, connect, fail, find_pg_tool, free_port, http_get,
                login_error, message, metric_sum, parse_fields, psql, psql_ok, query, query_one, run_tests,
                skip_test, startup_packet)

AUTH_OK, AUTH_MD5, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL = 0, 5, 10, 11, 12
CERTS = tempfile.mkdtemp(prefix="pgring-tls-")


def make_certs(directory, *users):
    subprocess.run([os.path.join(SOURCE_DIR, "scripts", "gen-test-certs.sh"), directory, *users],
                   check=True, capture_output=True)


make_certs(CERTS, "app", "other")


def cert(name):
    return os.path.join(CERTS, name)


def tls_client(mode="allow", ca=True, directory=CERTS):
    section = {"mode": mode, "cert": os.path.join(directory, "server.crt"),
               "key": os.path.join(directory, "server.key")}
    if ca:
        section["ca"] = os.path.join(directory, "ca.crt")
    return section


def scram_config(mode="allow", **extra):
    config = {"auth": {"method": "scram-sha-256"}, "users": {"app": {"password": "secret"}},
              "databases": {"app": {"host": PGHOST, "port": PGPORT}},
              "tls": {"client": tls_client(mode)}}
    config.update(extra)
    return config


def psql_tls(port, sql, sslmode="require", user="app", db="app", password="secret", host="127.0.0.1",
             **options):
    """psql with a conninfo string (sslmode, sslrootcert, sslcert, channel_binding, ...)."""
    conninfo = f"host={host} port={port} dbname={db} user={user} sslmode={sslmode}"
    for k, v in options.items():
        conninfo += f" {k}={v}"
    return psql(port, sql, db=conninfo, user=user, password=password, host=host)


def tls_socket(port, alpn=("postgresql",), ca=None, hostname="localhost"):
    """Direct TLS: a TLS handshake as the very first bytes (PostgreSQL 17's sslnegotiation=direct)."""
    context = ssl.create_default_context(cafile=ca or cert("ca.crt"))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=hostname)


def upgrade(conn, hostname="localhost", ca=None):
    """SSLRequest on a RawConn, then a TLS handshake on its socket."""
    check_eq(conn.ssl_request(), b"S", "answer to SSLRequest")
    context = ssl.create_default_context(cafile=ca or cert("ca.crt"))
    conn.sock = context.wrap_socket(conn.sock, server_hostname=hostname)
    return conn


# ---- clients ------------------------------------------------------------------------------------

def test_sslmode_require_and_verify_full():
    mport = free_port()
    with Pgring(scram_config("require", metrics={"listen": f"127.0.0.1:{mport}"})) as p:
        check_eq(psql_tls(p.port, "SELECT 1")[1], "1", "sslmode=require")
        rc, out, err = psql_tls(p.port, "SELECT 2", sslmode="verify-full", host="localhost",
                                sslrootcert=cert("ca.crt"))
        check(rc == 0 and out == "2", f"verify-full: {err}")
        conn = connect(p.port, db="app", user="app", password="secret", sslmode="verify-full",
                       sslrootcert=cert("ca.crt"), host="localhost")
        check(conn.info.ssl_in_use, "psycopg2 says TLS is in use")
        check_eq(conn.info.ssl_attribute("protocol"), "TLSv1.3")
        # A result of 4 MB and a COPY of 2 MB: many TLS records each way.
        check_eq(query_one(conn, "SELECT length(string_agg(md5(i::text), '')) FROM generate_series(1, 131072) i"),
                 131072 * 32)
        rows = query(conn, "SELECT repeat('x', 4000) FROM generate_series(1, 1000)")
        check_eq(len(rows), 1000)
        check(all(r[0] == "x" * 4000 for r in rows), "every row intact")
        conn.close()
        # A client trusting another CA refuses pgring's certificate (on the client side).
        other = tempfile.mkdtemp(prefix="pgring-tls-other-")
        make_certs(other)
        rc, _, err = psql_tls(p.port, "SELECT 3", sslmode="verify-full", host="localhost",
                              sslrootcert=os.path.join(other, "ca.crt"))
        check(rc != 0 and "certificate verify failed" in err, f"foreign CA refused: {err}")
        shutil.rmtree(other)
        # /metrics: the handshakes by peer and version, the refused one a tls_error close.
        _, text = http_get(mport, "/metrics")
        check(metric_sum(text, "pgring_tls_handshakes_total", peer="client",
                         version="TLSv1.3") >= 3, "client TLS handshakes in /metrics")


def test_mode_require_refuses_plain_clients():
    with Pgring(scram_config("require")) as p:
        rc, _, err = psql_tls(p.port, "SELECT 1", sslmode="disable")
        check(rc != 0 and "TLS is required" in err, f"plain client refused: {err}")
        e = login_error(p.port, user="app", db="app", password="secret")
        check_eq(e.sqlstate, "28000")
        check(p.wait_log(r"closed: tls_required"), "close reason logged")
        # The same client over TLS gets in.
        c = upgrade(RawConn(p.port)).startup("app", "app", password="secret")
        check_eq(c.simple_query("SELECT 5"), [["5"]])
        c.terminate()


def test_mode_allow_serves_both_and_disable_answers_n():
    with Pgring(scram_config("allow", admin={"users": ["app"]})) as p:
        check_eq(psql_tls(p.port, "SELECT 1", sslmode="disable")[1], "1", "plain client")
        check_eq(psql_tls(p.port, "SELECT 2", sslmode="require")[1], "2", "TLS client")
        # The admin console over TLS; SHOW CLIENTS and SHOW CONFIG tell TLS connections apart.
        plain = connect(p.port, db="app", user="app", password="secret", sslmode="disable")
        rc, out, err = psql_tls(p.port, "SHOW CLIENTS", db="pgring")
        check(rc == 0, f"SHOW CLIENTS over TLS: {err}")
        tls_column = [line.split("|")[-1] for line in out.splitlines()]
        check("TLSv1.3" in tls_column and "" in tls_column, f"one TLS and one plain client: {out}")
        rc, out, err = psql_tls(p.port, "SHOW CONFIG", db="pgring")
        check("tls.client.mode|allow" in out, f"SHOW CONFIG: {out}")
        plain.close()
    config = scram_config()
    del config["tls"]
    with Pgring(config) as p:
        c = RawConn(p.port)
        check_eq(c.ssl_request(), b"N", "no TLS configured: N")
        c.startup("app", "app", password="secret")
        check_eq(c.simple_query("SELECT 3"), [["3"]])
        c.terminate()
        rc, _, err = psql_tls(p.port, "SELECT 1", sslmode="require")
        check(rc != 0 and "does not support SSL" in err, f"sslmode=require against no TLS: {err}")


def test_min_version_and_ciphers():
    config = scram_config("require")
    config["tls"]["client"]["min_version"] = "TLSv1.3"
    with Pgring(config) as p:
        rc, _, err = psql_tls(p.port, "SELECT 1", ssl_max_protocol_version="TLSv1.2")
        check(rc != 0, f"a TLS 1.2 client is refused with min_version TLSv1.3: {err}")
        check_eq(psql_tls(p.port, "SELECT 2")[1], "2", "TLS 1.3 client")
    config = scram_config("require")
    config["tls"]["client"]["ciphers"] = "NO-SUCH-CIPHER"
    p = Pgring(config)
    p.write_config()
    r = subprocess.run([p_bin(), "--config", p.config_path, "--check"], capture_output=True, text=True)
    check(r.returncode != 0 and "tls.client.ciphers" in r.stderr, f"--check names the key: {r.stderr}")


def p_bin():
    return PGRING_BIN


def test_direct_tls_needs_alpn_postgresql():
    with Pgring(scram_config("require")) as p:
        c = RawConn(p.port)
        c.sock = tls_socket(p.port)
        check_eq(c.sock.selected_alpn_protocol(), "postgresql")
        c.startup("app", "app", password="secret")
        check_eq(c.simple_query("SELECT 'direct'"), [["direct"]])
        c.terminate()
        # ALPN offering only another protocol: the handshake itself fails.
        try:
            tls_socket(p.port, alpn=("http/1.1",)).close()
            fail("direct TLS with ALPN http/1.1 was accepted")
        except (ssl.SSLError, ConnectionError):
            pass
        # No ALPN at all: the handshake completes, then pgring closes (PostgreSQL does the same).
        c = RawConn(p.port)
        c.sock = tls_socket(p.port, alpn=())
        c.send(startup_packet("app", "app"))
        messages = c.read_until_close()
        check(all(kind == b"E" for kind, _ in messages), f"nothing but an error: {messages}")
        c.close()
        check(p.wait_log(r"direct TLS connection without ALPN"), "reason logged")
    config = scram_config()
    del config["tls"]
    with Pgring(config) as p:
        try:
            tls_socket(p.port).close()
            fail("direct TLS accepted with TLS disabled")
        except (ssl.SSLError, ConnectionError):
            pass


def test_plaintext_after_sslrequest_is_refused():
    # CVE-2021-23222: bytes that arrive with the SSLRequest, before the TLS handshake, could
    # have been injected; they must never be read as if they came through TLS.
    with Pgring(scram_config("allow")) as p:
        c = RawConn(p.port)
        c.send(struct.pack("!II", 8, 80877103) + startup_packet("app", "app"))
        check(c.read_byte() in (b"S", b""), "answer")
        check(closes(c), "connection closed")
        check(p.wait_log(r"unencrypted data after SSLRequest"), "reason logged")
        # Garbage instead of a handshake: closed, pgring stays up.
        c = RawConn(p.port)
        check_eq(c.ssl_request(), b"S")
        c.send(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
        check(closes(c), "bad handshake closed")
        check_eq(psql_tls(p.port, "SELECT 1")[1], "1", "still serving")


def closes(conn, timeout=5.0):
    """True when the peer closes the connection within `timeout` (whatever it sends first, such
    as a TLS alert)."""
    conn.sock.settimeout(timeout)
    try:
        while conn.sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return False
    return True


def test_client_certificate_authentication():
    config = scram_config("allow")
    config["auth"]["rules"] = [
        {"user": "app", "tls": True, "method": "cert"},
        {"user": "app", "method": "reject"},
    ]
    config["users"]["other"] = {"password": "x"}
    with Pgring(config) as p:
        rc, out, err = psql_tls(p.port, "SELECT current_user", sslmode="verify-full", host="localhost",
                                sslrootcert=cert("ca.crt"), sslcert=cert("app.crt"), sslkey=cert("app.key"),
                                password=None)
        check(rc == 0 and out == "app", f"certificate of app logs in as app: {err}")
        # A valid certificate of another user.
        rc, _, err = psql_tls(p.port, "SELECT 1", sslcert=cert("other.crt"), sslkey=cert("other.key"),
                              password=None)
        check(rc != 0 and "certificate authentication failed" in err, f"other's certificate: {err}")
        # No certificate at all.
        rc, _, err = psql_tls(p.port, "SELECT 1", password=None, sslcert="/nonexistent", sslkey="/nonexistent")
        check(rc != 0 and "certificate authentication failed" in err, f"no certificate: {err}")
        # Plain text: the reject rule.
        e = login_error(p.port, user="app", db="app", password="secret")
        check_eq(e.sqlstate, "28000")
        check("auth.rules[1] rejects" in e.fields["M"], e.fields["M"])
        # A certificate from a CA pgring does not trust: the handshake fails.
        other = tempfile.mkdtemp(prefix="pgring-tls-other-")
        make_certs(other, "app")
        rc, _, err = psql_tls(p.port, "SELECT 1", password=None, sslcert=os.path.join(other, "app.crt"),
                              sslkey=os.path.join(other, "app.key"))
        check(rc != 0, f"foreign client certificate refused: {err}")
        shutil.rmtree(other)
        check(p.wait_log(r"closed: cert_auth_failed"), "close reason logged")


def test_certificate_reload_keeps_clients():
    current = tempfile.mkdtemp(prefix="pgring-tls-live-")
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(cert(name), os.path.join(current, name))
    config = scram_config("require")
    config["tls"]["client"] = tls_client("require", directory=current)
    with Pgring(config) as p:
        conn = connect(p.port, db="app", user="app", password="secret", sslmode="require")
        check_eq(query_one(conn, "SELECT 1"), 1)
        # A renewed certificate from a new CA, then SIGHUP.
        renewed = tempfile.mkdtemp(prefix="pgring-tls-renewed-")
        make_certs(renewed)
        for name in ("server.crt", "server.key", "ca.crt"):
            shutil.copy(os.path.join(renewed, name), os.path.join(current, name))
        p.reload()
        p.wait_log(r"configuration reloaded")
        check_eq(query_one(conn, "SELECT 2"), 2, "the connected client goes on")
        rc, out, err = psql_tls(p.port, "SELECT 3", sslmode="verify-full", host="localhost",
                                sslrootcert=os.path.join(renewed, "ca.crt"))
        check(rc == 0 and out == "3", f"new connections get the renewed certificate: {err}")
        rc, _, err = psql_tls(p.port, "SELECT 4", sslmode="verify-full", host="localhost",
                              sslrootcert=cert("ca.crt"))
        check(rc != 0, "the old CA no longer verifies new connections")
        # A broken key on reload: refused with the YAML path, the running certificate stays.
        with open(os.path.join(current, "server.key"), "w") as f:
            f.write("not a key\n")
        p.reload()
        check(p.wait_log(r"reload of .* failed.*tls\.client\.key"), "reload failure names tls.client.key")
        check_eq(query_one(conn, "SELECT 5"), 5)
        check_eq(psql_tls(p.port, "SELECT 6")[1], "6", "still serving TLS")
        conn.close()
        shutil.rmtree(renewed)
    shutil.rmtree(current)


def test_scram_channel_binding():
    with Pgring(scram_config("allow")) as p:
        rc, out, err = psql_tls(p.port, "SELECT 'bound'", channel_binding="require")
        check(rc == 0 and out == "bound", f"channel_binding=require over TLS: {err}")
        rc, _, err = psql_tls(p.port, "SELECT 1", sslmode="disable", channel_binding="require")
        check(rc != 0 and "channel binding" in err, f"channel_binding=require without TLS: {err}")
        check_eq(psql_tls(p.port, "SELECT 'plain'", channel_binding="disable")[1], "plain")

        # By hand: over TLS pgring offers SCRAM-SHA-256-PLUS first.
        def sasl_offer(conn):
            conn.send(startup_packet("app", "app"))
            kind, body = conn.read_message()
            check_eq(kind, b"R")
            check_eq(struct.unpack("!I", body[:4])[0], AUTH_SASL)
            return [m.decode() for m in body[4:].split(b"\0") if m]

        c = upgrade(RawConn(p.port))
        check_eq(sasl_offer(c), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
        # Binding to the certificate pgring presented: tls-server-end-point = SHA-256 of its DER.
        der = c.sock.getpeercert(binary_form=True)
        end_point = hashlib.sha256(der).digest()
        check_eq(scram_login(c, "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", end_point), "ok")
        check_eq(c.simple_query("SELECT 'plus'"), [["plus"]])
        c.terminate()
        # Binding data of another certificate (what a man in the middle would present).
        c = upgrade(RawConn(p.port))
        sasl_offer(c)
        e = scram_login(c, "SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,", b"\0" * 32)
        check_eq(e.sqlstate, "28P01")
        # "y": the client can bind but believes pgring cannot, though -PLUS was offered: a downgrade.
        c = upgrade(RawConn(p.port))
        sasl_offer(c)
        e = scram_login(c, "SCRAM-SHA-256", "y,,")
        check_eq(e.sqlstate, "28P01")
        check("channel binding" in e.fields["M"], e.fields["M"])
        # Without TLS only SCRAM-SHA-256 is offered, and "y" is fine there.
        c = RawConn(p.port)
        check_eq(sasl_offer(c), ["SCRAM-SHA-256"])
        check_eq(scram_login(c, "SCRAM-SHA-256", "y,,"), "ok")
        c.terminate()


def scram_login(conn, mechanism, gs2, cbind=b""):
    """Finish a SCRAM exchange after the SASL offer; "ok" or the PgError."""
    scram = Scram("secret", gs2=gs2, cbind=cbind)
    first = scram.client_first().encode()
    conn.send(message(b"p", mechanism.encode() + b"\0" + struct.pack("!I", len(first)) + first))
    try:
        while True:
            kind, body = conn.read_message()
            if kind == b"E":
                return PgError(parse_fields(body))
            if kind == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == AUTH_SASL_CONTINUE:
                    conn.send(message(b"p", scram.client_final(body[4:].decode()).encode()))
                elif code == AUTH_SASL_FINAL:
                    scram.verify_server_final(body[4:].decode())
            if kind == b"Z":
                return "ok"
    except ConnectionClosed as e:
        fail(f"closed without an error: {e}")


def test_drivers_over_tls():
    # asyncpg and pgbench through TLS, in transaction mode, with prepared statements.
    try:
        import asyncio

        import asyncpg
    except ImportError:
        skip_test("python3-asyncpg is not installed")
    # Two reactors: TLS sessions on both threads share one SSL_CTX (ThreadSanitizer runs this).
    with Pgring(scram_config("require", workers=2)) as p:
        async def work():
            context = ssl.create_default_context(cafile=cert("ca.crt"))
            conns = [await asyncpg.connect(host="localhost", port=p.port, user="app", password="secret",
                                           database="app", ssl=context) for _ in range(4)]
            total = 0
            for round_ in range(50):
                results = await asyncio.gather(*(c.fetchval("SELECT $1::int * 2", round_ + i)
                                                 for i, c in enumerate(conns)))
                total += sum(results)
            for c in conns:
                await c.close()
            return total
        total = asyncio.run(work())
        check_eq(total, sum(2 * (r + i) for r in range(50) for i in range(4)))
        env = dict(os.environ, PGSSLMODE="require", PGPASSWORD="secret")
        r = subprocess.run([find_pg_tool("pgbench"), "-h", "127.0.0.1", "-p", str(p.port), "-U", "app", "-n",
                            "-c", "4", "-t", "100", "-M", "prepared", "-f", "/dev/stdin", "app"],
                           input="SELECT 1;\n", capture_output=True, text=True, env=env, timeout=120)
        check(r.returncode == 0, f"pgbench over TLS: {r.stderr}")
        check("number of failed transactions: 0" in r.stdout or "failed" not in r.stdout, r.stdout)


def test_tls_under_load_and_abuse():
    config = scram_config("require", timeouts={"client_login": "1s"})
    with Pgring(config) as p:
        # A client that stops halfway through its handshake is closed at client_login.
        stalled = RawConn(p.port)
        check_eq(stalled.ssl_request(), b"S")
        stalled.send(b"\x16\x03\x01\x02\x00")  # a ClientHello header, and nothing more
        check(closes(stalled, timeout=5), "stalled handshake closed")
        check(p.wait_log(r"closed: login_timeout"), "login_timeout logged")
        # 40 TLS logins at once, each with a query.
        errors = []

        def one(i):
            try:
                conn = connect(p.port, db="app", user="app", password="secret", sslmode="require")
                if query_one(conn, "SELECT %s::int", (i,)) != i:
                    errors.append(f"client {i}: wrong answer")
                conn.close()
            except Exception as e:  # noqa: BLE001 - collected and reported below
                errors.append(f"client {i}: {e}")
        threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        check_eq(errors, [], "parallel TLS logins")
        # COPY FROM STDIN of 8 MB through TLS (client to server: flow control over decrypted input).
        conn = connect(p.port, db="app", user="app", password="secret", sslmode="require")
        cur = conn.cursor()
        cur.execute("CREATE TEMP TABLE copied (line text)")
        import io
        data = "".join(f"{i:08d}{'y' * 120}\n" for i in range(65536))
        cur.copy_expert("COPY copied FROM STDIN", io.StringIO(data))
        check_eq(query_one(conn, "SELECT count(*) FROM copied"), 65536)
        check_eq(query_one(conn, "SELECT sum(length(line)) FROM copied"), 65536 * 128)
        conn.close()


# ---- servers ------------------------------------------------------------------------------------

def server_config(mode, host="127.0.0.1", ca=True):
    tls = {"mode": mode}
    if ca:
        tls["ca"] = os.path.join(PGDATA, "tls", "ca.crt")
    return {"auth": {"method": "scram-sha-256"}, "users": {"pgring_tls": {"password": "tls_pw"}},
            "timeouts": {"server_connect": "3s", "query_wait": "3s", "server_login_retry": "1s"},
            "databases": {"app": {"host": host, "port": PGPORT, "dbname": "pgring_test"}},
            "tls": {"server": tls}}


def server_ssl(port):
    return psql_tls(port, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    sslmode="disable", user="pgring_tls", password="tls_pw")


def test_server_tls_modes():
    if not PGDATA or not os.path.exists(os.path.join(PGDATA, "tls", "ca.crt")):
        skip_test("the test PostgreSQL has no TLS (PGRING_TEST_PGDATA/tls/ca.crt)")
    # pgring_tls may only log in over TLS (pg_hba hostssl / hostnossl reject).
    for mode, host in (("prefer", "127.0.0.1"), ("require", "127.0.0.1"), ("require", "127.0.0.2"),
                       ("verify-ca", "127.0.0.1"), ("verify-ca", "127.0.0.2"), ("verify-full", "127.0.0.1")):
        with Pgring(server_config(mode, host, ca=mode.startswith("verify"))) as p:
            rc, out, err = server_ssl(p.port)
            check(rc == 0 and out.startswith("t|TLSv1"), f"{mode} to {host}: {out} {err}")
    # Over TLS pgring binds its SCRAM login to PostgreSQL's certificate (SCRAM-SHA-256-PLUS),
    # with a password and with SCRAM pass-through alike.
    config = server_config("verify-full")
    config["log"] = {"level": "debug"}
    with Pgring(config) as p:
        check(server_ssl(p.port)[1].startswith("t|"), "logged in")
        check(p.wait_log(r"SCRAM login with SCRAM-SHA-256-PLUS"), "channel binding used")
    conn = connect(PGPORT, db="postgres", host=PGHOST)
    secret = query_one(conn, "SELECT rolpassword FROM pg_authid WHERE rolname = 'pgring_tls'")
    conn.close()
    config["users"]["pgring_tls"]["password"] = secret
    with Pgring(config) as p:
        rc, out, err = server_ssl(p.port)
        check(rc == 0 and out.startswith("t|"), f"pass-through over TLS with channel binding: {err}")
        check(p.wait_log(r"SCRAM login with SCRAM-SHA-256-PLUS"), "channel binding used")
    # The certificate names 127.0.0.1, not 127.0.0.2: verify-full refuses it.
    with Pgring(server_config("verify-full", "127.0.0.2")) as p:
        rc, _, err = server_ssl(p.port)
        check(rc != 0 and "IP address mismatch" in err, f"verify-full, wrong host: {err}")
        check(p.wait_log(r"server_login_failed: TLS handshake failed: certificate verify failed"), "logged")
    # verify-ca with a CA that did not sign the server's certificate.
    config = server_config("verify-ca")
    config["tls"]["server"]["ca"] = cert("ca.crt")
    with Pgring(config) as p:
        rc, _, err = server_ssl(p.port)
        check(rc != 0 and "certificate verify failed" in err, f"verify-ca, foreign CA: {err}")
    # disable: PostgreSQL's hostnossl rule refuses pgring_tls.
    with Pgring(server_config("disable", ca=False)) as p:
        rc, _, err = server_ssl(p.port)
        check(rc != 0 and "no encryption" in err, f"disable: {err}")


def test_server_tls_client_certificate():
    """tls.server.cert/key: pgring logs in with its own certificate where PostgreSQL asks for
    one (pg_hba cert for pgring_cert), and without it is refused with PostgreSQL's own error."""
    tls_dir = os.path.join(PGDATA or "", "tls")
    if not PGDATA or not os.path.exists(os.path.join(tls_dir, "pgring_cert.crt")):
        skip_test("the test PostgreSQL has no client certificate (PGDATA/tls/pgring_cert.crt)")
    config = {"auth": {"method": "trust"},
              "timeouts": {"server_connect": "3s", "query_wait": "3s", "server_login_retry": "1s"},
              "databases": {"app": {"host": "127.0.0.1", "port": PGPORT, "dbname": "pgring_test",
                                    "user": "pgring_cert"}},
              "tls": {"server": {"mode": "verify-full", "ca": os.path.join(tls_dir, "ca.crt"),
                                 "cert": os.path.join(tls_dir, "pgring_cert.crt"),
                                 "key": os.path.join(tls_dir, "pgring_cert.key")}}}
    with Pgring(config) as p:
        check_eq(psql_ok(p.port, "SELECT current_user || ' ' || ssl FROM pg_stat_ssl "
                                 "WHERE pid = pg_backend_pid()", db="app"),
                 "pgring_cert true", "logged in with the client certificate")
    del config["tls"]["server"]["cert"], config["tls"]["server"]["key"]
    with Pgring(config) as p:
        rc, _, err = psql(p.port, "SELECT 1", db="app")
        check(rc != 0 and "certificate" in err, f"no client certificate: {err}")


def test_server_min_version_and_ciphers():
    """tls.server.min_version and ciphers reach pgring's TLS client context: TLSv1.3 is what
    PostgreSQL then reports, and a cipher list OpenSSL rejects is an error naming the key."""
    if not PGDATA or not os.path.exists(os.path.join(PGDATA, "tls", "ca.crt")):
        skip_test("the test PostgreSQL has no TLS (PGRING_TEST_PGDATA/tls/ca.crt)")
    config = server_config("verify-full")
    config["tls"]["server"]["min_version"] = "TLSv1.3"
    config["tls"]["server"]["ciphers"] = "HIGH:!aNULL"
    with Pgring(config) as p:
        rc, out, err = server_ssl(p.port)
        check(rc == 0 and out == "t|TLSv1.3", f"min_version TLSv1.3: {out} {err}")
    config["tls"]["server"]["ciphers"] = "NO-SUCH-CIPHER"
    p = Pgring(config)
    p.write_config()
    r = subprocess.run([p_bin(), "--config", p.config_path, "--check"], capture_output=True, text=True)
    check(r.returncode != 0 and "tls.server.ciphers" in r.stderr, f"--check names the key: {r.stderr}")


def test_server_tls_refused_downgrade():
    # A server that answers 'N' (no TLS): prefer goes on in plain text, require never does.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    relay = Relay(listener, refuse_tls=True)
    port = relay.port
    try:
        base = {"auth": {"method": "trust"},
                "timeouts": {"server_connect": "3s", "query_wait": "2s", "server_login_retry": "1s"},
                "databases": {"pgring_test": {"host": "127.0.0.1", "port": port}}}
        config = dict(base, tls={"server": {"mode": "prefer"}})
        with Pgring(config) as p:
            check_eq(psql_ok(p.port, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"), "f",
                     "prefer falls back to plain text")
        config = dict(base, tls={"server": {"mode": "require"}})
        with Pgring(config) as p:
            rc, _, err = psql(p.port, "SELECT 1")
            check(rc != 0 and "server does not support TLS" in err, f"require refuses 'N': {err}")
    finally:
        relay.close()


if __name__ == "__main__":
    run_tests(globals())
