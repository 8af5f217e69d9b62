#!/usr/bin/python3
"""Errors pgring raises itself: too many clients, hostile or oversized packets, an unreachable
server, and SSL negotiation (pgring has no TLS: it answers 'N'); and where PostgreSQL's own
error or clean close must come through as it is (a backend terminated under its client, a
Terminate right behind the startup packet)."""

import random
import struct
import threading
import time

import psycopg2

from lib import (PGHOST, PGPORT, PROTOCOL_3_0, PgError, Pgring, RawConn, backends, check, check_eq,
                connect, direct_connect, expect_error, fail, free_port, login, login_error,
                message, metric_value, monitor_connect, parse_fields, pool_config, psql_ok, query,
                query_one, run_tests, startup_packet, wait_backend_gone, wait_until)


def trust_config(**extra):
    return {"auth": {"method": "trust"},
            "defaults": {"pool_mode": "session", "pool_size": 10},
            **extra}


def error_then_close(conn, timeout=10.0):
    """Read everything pgring sends until it closes the connection; return the fields of its
    ErrorResponse. Fails if there is none or the connection stays open."""
    conn.sock.settimeout(timeout)
    try:
        messages = conn.read_until_close()
    except TimeoutError:
        fail(f"pgring did not close the connection within {timeout}s")
    errors = [parse_fields(body) for kind, body in messages if kind == b"E"]
    check(errors, f"no ErrorResponse before the close; got {[k for k, _ in messages]}")
    fields = errors[-1]
    check(fields.get("M", "").startswith("pgring: "), f"message should start 'pgring: ': {fields}")
    return fields


def still_serving(port):
    check_eq(psql_ok(port, "SELECT 'still serving'"), "still serving")


def logins(port, n):
    """n logged-in raw connections. A 53300 is retried for a moment: a connection that just
    closed (another test step's) may still count until pgring has seen its EOF."""
    conns = []
    for _ in range(n):
        def attempt():
            try:
                return login(port)
            except PgError as e:
                if e.sqlstate == "53300":
                    return None
                raise
        conns.append(wait_until(attempt, 5, interval=0.1, what="a client slot"))
    return conns


def test_too_many_clients():
    with Pgring(trust_config(max_client_conn=3)) as p:
        conns = logins(p.port, 3)
        for c in conns:
            check_eq(c.simple_query("SELECT 1"), [["1"]])
        e = login_error(p.port)
        check_eq(e.sqlstate, "53300", f"4th client: {e}")
        check(e.fields.get("M", "").startswith("pgring: "), f"message: {e.fields}")
        # The first three are unaffected; once one leaves, a new client gets in.
        check_eq(conns[0].simple_query("SELECT 2"), [["2"]])
        conns.pop().terminate()

        def new_client():
            c = login(p.port)
            c.simple_query("SELECT 1")
            c.terminate()
            return True
        wait_until(new_client, 5, interval=0.2, what="a client after one left")
        for c in conns:
            c.terminate()


def test_logins_beyond_max_concurrent_logins_wait():
    """max_concurrent_logins: a login under way holds a turn from its first bytes until it is
    authenticated (or gone); a client beyond the cap waits, its bytes kept, and goes on as soon
    as a turn frees: a queue, not a refusal. A connection that sent nothing holds no turn."""
    mport = free_port()
    with Pgring(trust_config(max_concurrent_logins=1, timeouts={"client_login": "30s"},
                             metrics={"listen": f"127.0.0.1:{mport}"})) as p:
        silent = RawConn(p.port)  # connected, nothing sent: no turn
        (first,) = logins(p.port, 1)
        first.terminate()
        holder = RawConn(p.port)
        check_eq(holder.ssl_request(), b"N", "SSLRequest answer")  # the turn is held now
        waiting = []

        def second():
            c = login(p.port)
            waiting.append(c.simple_query("SELECT 2"))
            c.terminate()
        t = threading.Thread(target=second, daemon=True)
        t.start()
        time.sleep(1.0)
        check_eq(waiting, [], "a login beyond the cap, while the turn is held")
        check(t.is_alive(), "the second client waits (no refusal)")
        check_eq(metric_value(mport, "pgring_login_waiting_clients"), 1.0,
                 "pgring_login_waiting_clients while it waits")
        holder.send(startup_packet("postgres", "pgring_test"))  # the holder logs in: turn free
        t.join(10)
        check_eq(waiting, [[["2"]]], "the waiting client, once the turn is free")
        check_eq(metric_value(mport, "pgring_login_waiting_clients"), 0.0,
                 "pgring_login_waiting_clients afterwards")
        holder.sock.close()
        silent.sock.close()


def test_per_database_and_per_user_client_limits():
    """max_db_client_connections (over all pools of a database) and max_user_client_connections
    (over all pools of a user) refuse one more client with 53300 naming the limit; the clients
    already in are untouched and a slot that frees up is usable again."""
    setup = direct_connect()
    query(setup, "DROP ROLE IF EXISTS pgring_limited")
    query(setup, "CREATE ROLE pgring_limited LOGIN")
    config = trust_config()
    config["databases"] = {
        "pgring_test": {"host": PGHOST, "port": PGPORT, "max_db_client_connections": 3},
        "other": {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test"},
    }
    config["users"] = {"postgres": {}, "pgring_limited": {"max_user_client_connections": 2}}
    try:
        with Pgring(config) as p:
            # Database limit: 3 clients of pgring_test, whichever user (two pools).
            conns = [login(p.port), login(p.port), login(p.port, user="pgring_limited")]
            e = login_error(p.port)
            check_eq(e.sqlstate, "53300", f"4th client of pgring_test: {e}")
            check("max_db_client_connections 3" in e.fields.get("M", ""), f"message: {e.fields}")
            # Another database is not limited by it.
            extra = login(p.port, db="other")
            check_eq(extra.simple_query("SELECT 1"), [["1"]])
            # User limit: pgring_limited already has one client (on pgring_test); one more on
            # "other" fits, the next does not, wherever it goes.
            second = login(p.port, db="other", user="pgring_limited")
            e = login_error(p.port, db="other", user="pgring_limited")
            check_eq(e.sqlstate, "53300", f"3rd client of pgring_limited: {e}")
            check("max_user_client_connections 2" in e.fields.get("M", ""), f"message: {e.fields}")
            for c in conns + [extra, second]:
                check_eq(c.simple_query("SELECT 2"), [["2"]], "a client already in")
            # A slot freed is a slot usable.
            conns.pop(0).terminate()

            def new_client():
                try:
                    c = login(p.port)
                except PgError as err:
                    if err.sqlstate == "53300":
                        return None
                    raise
                c.simple_query("SELECT 1")
                c.terminate()
                return True
            wait_until(new_client, 5, interval=0.1, what="a pgring_test client after one left")
            for c in conns + [extra, second]:
                c.terminate()
    finally:
        wait_no_backends_of(setup, "pgring_limited")
        query(setup, "DROP ROLE IF EXISTS pgring_limited")
        setup.close()


def wait_no_backends_of(conn, role):
    wait_until(lambda: not backends(conn, usename=role, include_monitors=True), 10,
               interval=0.1, what=f"no backends of {role}")


def test_too_many_clients_seen_by_libpq():
    # libpq (15.10 and later) sends SSLRequest first with the default sslmode=prefer and no
    # longer reports an error that arrives in reply to it ("server sent an error response
    # during SSL exchange"). So pgring must answer the SSLRequest and read the startup packet
    # before refusing a client, as PostgreSQL does, or psql users never see the reason.
    with Pgring(trust_config(max_client_conn=1)) as p:
        (first,) = logins(p.port, 1)
        for sslmode in ("prefer", "disable"):
            try:
                connect(p.port, sslmode=sslmode).close()
                check(False, f"a 2nd client (sslmode={sslmode}) was accepted")
            except psycopg2.OperationalError as err:
                check("pgring: " in str(err), f"sslmode={sslmode}: libpq did not see pgring's "
                                              f"error: {str(err).strip()}")
        first.terminate()


def test_huge_startup_length():
    with Pgring(trust_config()) as p:
        c = RawConn(p.port)
        c.send(struct.pack("!II", 100000, PROTOCOL_3_0) + b"user\0postgres\0")
        fields = error_then_close(c)
        check(fields.get("C") in ("08P01", "54000"), f"SQLSTATE: {fields}")
        c.close()
        still_serving(p.port)


def test_garbage_startup_packets():
    with Pgring(trust_config()) as p:
        # A plausible length and protocol 3.0, but parameters that are not NUL-terminated pairs.
        c = RawConn(p.port)
        junk = bytes(random.Random(7).randrange(1, 256) for _ in range(56))
        c.send(struct.pack("!II", 64, PROTOCOL_3_0) + junk)
        check_eq(error_then_close(c).get("C"), "08P01", "garbage parameters")
        c.close()

        # A length too small to hold a protocol version.
        c = RawConn(p.port)
        c.send(struct.pack("!I", 4))
        check_eq(error_then_close(c).get("C"), "08P01", "startup length 4")
        c.close()

        # Random bytes. Their first four are the length: make it the packet's own length (so
        # pgring has the whole packet: an unknown protocol code and junk) or a huge one (refused
        # from the length alone). A length between the two would just wait for more bytes.
        rng = random.Random(20240601)
        for i in range(6):
            body = bytes(rng.randrange(256) for _ in range(252))
            length = 256 if i % 2 == 0 else rng.randrange(1 << 20, 1 << 31)
            c = RawConn(p.port)
            c.send(struct.pack("!I", length) + body)
            code = error_then_close(c).get("C")
            check(code in ("08P01", "54000", "0A000"), f"random packet {i}: SQLSTATE {code}")
            c.close()
        still_serving(p.port)


def test_garbage_after_login():
    with Pgring(trust_config()) as p:
        c = login(p.port)
        c.send(b"\x07\x00\x00\x00\x02")  # unknown message type with a length below 4
        fields = error_then_close(c)
        check_eq(fields.get("C"), "08P01", f"bad message: {fields}")
        c.close()
        still_serving(p.port)


def test_message_too_large():
    config = trust_config(max_message_size="1KiB")
    with Pgring(config) as p:
        # Within the limit: fine.
        conn = connect(p.port)
        check_eq(query_one(conn, "SELECT length(%s)", ("a" * 500,)), 500)
        conn.close()

        # A 10 KiB query: refused from its header, before the body is read.
        c = login(p.port)
        sql = b"SELECT '" + b"x" * 10240 + b"'\0"
        c.send(message(b"Q", sql)[:5])
        fields = error_then_close(c)
        check_eq(fields.get("C"), "54000", f"oversized message: {fields}")
        c.close()

        # Through libpq, the whole message sent at once.
        conn = connect(p.port)
        try:
            query_one(conn, "SELECT '" + "x" * 10240 + "'")
            check(False, "a 10 KiB query passed max_message_size 1KiB")
        except psycopg2.Error as e:
            # pgring closes right after the error; libpq usually reads the ErrorResponse
            # (54000) but may see the connection drop first.
            check(e.pgcode in ("54000", None), f"{e.pgcode}: {e}")
        finally:
            conn.close()
        still_serving(p.port)


def test_unreachable_server():
    dead_port = free_port()
    config = trust_config(databases={
        "dead": {"host": "127.0.0.1", "port": dead_port},
        "pgring_test": {"host": PGHOST, "port": PGPORT},
    }, timeouts={"server_connect": "5s", "client_login": "30s", "query_wait": "5s"})
    with Pgring(config) as p:
        started = time.monotonic()

        def attempt():
            c = login(p.port, db="dead", timeout=30)
            try:
                c.simple_query("SELECT 1")  # a server may be needed only for the first query
            finally:
                c.close()
        e = expect_error(attempt, "08006")
        elapsed = time.monotonic() - started
        check(elapsed < 20, f"the error took {elapsed:.1f}s")
        check(e.fields.get("M", "").startswith("pgring: "), f"message: {e.fields}")
        # Other databases are unaffected.
        still_serving(p.port)


def test_ssl_request_refused():
    with Pgring(trust_config()) as p:
        c = RawConn(p.port)
        check_eq(c.ssl_request(), b"N", "answer to SSLRequest")
        c.startup("postgres", "pgring_test")  # plain startup on the same connection
        check_eq(c.simple_query("SELECT 1"), [["1"]])
        c.terminate()

        conn = connect(p.port, sslmode="prefer")
        check_eq(query_one(conn, "SELECT 1"), 1)
        conn.close()
        conn = connect(p.port, sslmode="disable")
        check_eq(query_one(conn, "SELECT 1"), 1)
        conn.close()
        try:
            connect(p.port, sslmode="require").close()
            check(False, "sslmode=require connected to pgring, which has no TLS")
        except psycopg2.OperationalError as e:
            check("SSL" in str(e), f"unexpected error: {e}")
        still_serving(p.port)


def test_gssenc_request_refused():
    with Pgring(trust_config()) as p:
        c = RawConn(p.port)
        check_eq(c.gssenc_request(), b"N", "answer to GSSENCRequest")
        c.startup("postgres", "pgring_test")
        check_eq(c.simple_query("SELECT 1"), [["1"]])
        c.terminate()


def killed_in_transaction(port, monitor, mode_note):
    """A client inside a transaction whose backend pg_terminate_backend() ends: every message it
    then reads, as (type, fields) until the connection closes."""
    conn = login(port, user="app", db="app", password="secret", timeout=30)
    conn.simple_query("BEGIN")
    pid = int(conn.simple_query("SELECT pg_backend_pid()")[0][0])
    check(query_one(monitor, "SELECT pg_terminate_backend(%s)", (pid,)),
          f"pg_terminate_backend({pid}) ({mode_note})")
    wait_backend_gone(monitor, pid)
    conn.sock.settimeout(10)
    got = [(kind, parse_fields(body) if kind in (b"E", b"N") else body)
           for kind, body in conn.read_until_close()]
    conn.close()
    return got


def test_terminated_backend_error_reaches_its_client():
    """PostgreSQL's FATAL 57P01 "terminating connection due to administrator command" is what the
    client reads, and nothing after it, in transaction and session mode alike."""
    monitor = monitor_connect(db="app")
    try:
        expected = killed_in_transaction(PGPORT, monitor, "direct")
        check_eq([(k, f.get("C")) for k, f in expected], [(b"E", "57P01")],
                 "what PostgreSQL sends the client of a terminated backend")
        for mode in ("transaction", "session"):
            with Pgring(pool_config(pool_mode=mode, pool_size=2)) as p:
                check_eq(killed_in_transaction(p.port, monitor, mode), expected,
                         f"what the client of a terminated backend reads through pgring ({mode})")
    finally:
        monitor.close()


def test_terminate_right_after_the_startup_packet():
    """A client that sends Terminate right behind its startup packet (it gave up at once) gets no
    error: PostgreSQL answers the login and closes; pgring closes."""
    def sent_back(port):
        conn = RawConn(port)
        conn.send(startup_packet("app", "app") + message(b"X"))
        conn.sock.settimeout(10)
        kinds = [kind for kind, _ in conn.read_until_close()]
        conn.close()
        return kinds

    direct = sent_back(PGPORT)
    check(b"E" not in direct and direct[-1:] == [b"Z"], f"PostgreSQL's answer: {direct}")
    with Pgring(pool_config(pool_size=2)) as p:
        got = sent_back(p.port)
        check(b"E" not in got, f"pgring sent an error to a client that left at once: {got}")
        after = connect(p.port, db="app", user="app")
        check_eq(query_one(after, "SELECT 1"), 1, "the next client")
        after.close()


if __name__ == "__main__":
    run_tests(globals())
