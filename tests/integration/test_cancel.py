#!/usr/bin/python3
"""Query cancellation through pgring: a CancelRequest carrying pgring's own key (psycopg2's
conn.cancel() and psql's Ctrl-C, both libpq PQcancel) cancels the running query with 57014 in
transaction and session mode and the connection stays usable; a late cancel never hits another
client's query on the same server; a cancel for a client still queued for a server answers that
client with 57014."""

import signal
import struct
import subprocess
import time

from lib import (CANCEL_REQUEST_CODE, PGHOST, PGPORT, PROTOCOL_3_0, PROTOCOL_3_2, PSQL, Background,
                Pgring, RawConn, backends, check, check_eq, client_env, connect, error_fields_in,
                expect_error, fail, log, message, monitor_connect, pool_config, pool_row, query,
                query_one, read_until_ready, run_tests, wait_until)


def wait_running(monitor, marker, timeout=15):
    """Wait until a backend runs a query containing `marker`; return its pid."""
    def find():
        rows = backends(monitor, state="active", query_like=f"%{marker}%")
        return rows[0].pid if rows else None
    return wait_until(find, timeout, interval=0.05, what=f"a running query with {marker!r}")


def settle():
    """pgring closes a client's CancelRequest connection as soon as it has read it, before
    PostgreSQL has processed the cancel it forwards, and PostgreSQL signals the backend twice
    (the process, then its process group). So in session mode the second SIGINT can still be
    on its way when the client sends its next query (test_cancel_does_not_leak_into_next_query
    checks exactly that). The other tests wait a moment so that each checks one thing."""
    time.sleep(0.3)


def cancel_running_query(pool_mode):
    monitor = monitor_connect()
    with Pgring(pool_config(pool_mode=pool_mode, pool_size=2)) as p:
        conn = connect(p.port)
        check_eq(query_one(conn, "SELECT 1"), 1)

        def canceller():
            wait_running(monitor, "pg_sleep(10) /* cancel-me */")
            conn.cancel()

        bg = Background(canceller)
        started = time.monotonic()
        expect_error(lambda: query(conn, "SELECT pg_sleep(10) /* cancel-me */"), "57014",
                     "canceling statement due to user request")
        elapsed = time.monotonic() - started
        bg.result(10, "the canceller thread")
        settle()
        log(f"{pool_mode}: query canceled after {elapsed:.2f}s")
        check(elapsed < 9.5, f"the query ran {elapsed:.1f}s: it was not canceled")
        # The connection goes on, in and out of transactions.
        check_eq(query_one(conn, "SELECT 2"), 2, "the query after the cancel")
        conn.autocommit = False
        check_eq(query_one(conn, "SELECT 3"), 3)
        conn.commit()
        conn.autocommit = True
        # And a second cancel works as well as the first.
        bg = Background(canceller)
        expect_error(lambda: query(conn, "SELECT pg_sleep(10) /* cancel-me */"), "57014")
        bg.result(10, "the second canceller thread")
        settle()
        check_eq(query_one(conn, "SELECT 4"), 4, "the query after the second cancel")
        conn.close()
    monitor.close()


def test_cancel_transaction_mode():
    cancel_running_query("transaction")


def test_cancel_session_mode():
    cancel_running_query("session")


def cancel_then_query(conn, monitor, marker, rounds):
    """`rounds` times: cancel a running pg_sleep(10) as soon as it runs, then at once run a
    short query on the same connection. Returns how many of those short queries failed."""
    pid = query_one(conn, "SELECT pg_backend_pid()")
    hit = []
    for i in range(rounds):
        bg = Background(lambda: (wait_running(monitor, marker), conn.cancel()))
        expect_error(lambda: query(conn, f"SELECT pg_sleep(10) {marker}"), "57014")
        bg.result(10, "the canceller thread")
        try:
            query(conn, "SELECT pg_sleep(0.02)")
        except Exception as e:  # noqa: BLE001 - counted and reported
            hit.append(f"round {i}: {getattr(e, 'pgcode', None)} {str(e).strip()}")
    log(f"{marker}: backend {pid}: {len(hit)} of {rounds} follow-up queries failed {hit[:3]}")
    return hit


def test_cancel_does_not_leak_into_next_query():
    # libpq's PQcancel (psycopg2's conn.cancel()) returns once PostgreSQL has closed the cancel
    # connection, i.e. once the cancel is fully delivered: the next query on the connection is
    # never hit by it. Through pgring it must be the same, in every pool mode.
    rounds = 60
    monitor = monitor_connect()
    direct = connect(PGPORT, host=PGHOST)
    control = cancel_then_query(direct, monitor, "/* leak-direct */", rounds)
    direct.close()
    check(not control, f"control run straight to PostgreSQL: {len(control)} of {rounds} "
                       f"follow-up queries failed; this test cannot judge pgring here")
    failures = []
    for mode in ("transaction", "session"):
        with Pgring(pool_config(pool_mode=mode, pool_size=1)) as p:
            conn = connect(p.port)
            hit = cancel_then_query(conn, monitor, f"/* leak-{mode} */", rounds)
            conn.close()
        if hit:
            failures.append(f"{mode} mode: {len(hit)} of {rounds} queries sent right after a "
                            f"canceled one were canceled too, e.g. {hit[0]}")
    monitor.close()
    check(not failures, "a cancel leaked into the next query: " + "; ".join(failures))


def test_cancel_inside_explicit_transaction():
    monitor = monitor_connect()
    with Pgring(pool_config(pool_mode="transaction", pool_size=2)) as p:
        conn = connect(p.port)
        conn.autocommit = False
        query(conn, "CREATE TEMP TABLE cancel_t(x int)")
        query(conn, "INSERT INTO cancel_t VALUES (1)")
        bg = Background(lambda: (wait_running(monitor, "/* cancel-in-xact */"), conn.cancel()))
        expect_error(lambda: query(conn, "SELECT pg_sleep(10) /* cancel-in-xact */"), "57014")
        bg.result(10, "the canceller thread")
        settle()
        # The transaction is aborted, as on PostgreSQL itself; ROLLBACK ends it.
        expect_error(lambda: query(conn, "SELECT 1"), "25P02")
        conn.rollback()
        conn.autocommit = True
        check_eq(query_one(conn, "SELECT 5"), 5, "the query after ROLLBACK")
        conn.close()
    monitor.close()


def test_psql_ctrl_c():
    # psql sends a CancelRequest (PQcancel) with the key pgring gave it when it gets SIGINT.
    monitor = monitor_connect()
    with Pgring(pool_config(pool_mode="transaction", pool_size=2)) as p:
        cmd = [PSQL, "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres",
               "-d", "pgring_test", "-c", "SELECT pg_sleep(10) /* psql-cancel */"]
        proc = subprocess.Popen(cmd, env=client_env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_running(monitor, "/* psql-cancel */")
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            fail("psql did not finish within 15 s of SIGINT: the cancel did not work")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        elapsed = time.monotonic() - started
        log(f"psql after SIGINT: status {proc.returncode} in {elapsed:.2f}s: {err.strip()}")
        check(proc.returncode != 0, f"psql succeeded after SIGINT: {out!r}")
        check("canceling statement due to user request" in err, f"psql stderr: {err!r}")
        check(elapsed < 9, f"psql took {elapsed:.1f}s after SIGINT")
        settle()
        # The server connection went back to the pool clean: a new client works.
        check_eq(query_one(connect(p.port), "SELECT 6"), 6)
    monitor.close()


def test_late_cancel_does_not_hit_other_client():
    # pool_size 1 in transaction mode: A and B take turns on the same server. A's cancel,
    # sent while A is idle and B's query runs there, must not cancel B's query.
    monitor = monitor_connect()
    with Pgring(pool_config(pool_mode="transaction", pool_size=1)) as p:
        a = connect(p.port)
        b = connect(p.port)
        pid_a = query_one(a, "SELECT pg_backend_pid()")
        pid_b = query_one(b, "SELECT pg_backend_pid()")
        check_eq(pid_b, pid_a, "A and B share the only server")

        bg = Background(lambda: query_one(b, "SELECT 'b done' FROM pg_sleep(1.5) /* b-sleep */"))
        backend = wait_running(monitor, "/* b-sleep */")
        check_eq(backend, pid_a, "B's query runs on the server A used")
        a.cancel()  # A is idle: nothing of A's runs anywhere
        check_eq(bg.result(15, "B's query"), "b done", "B's query result")
        # Everyone is fine afterwards.
        check_eq(query_one(a, "SELECT 7"), 7, "A after its stray cancel")
        check_eq(query_one(b, "SELECT 8"), 8, "B afterwards")
        a.close()
        b.close()
    monitor.close()


def test_cancel_with_unknown_key_is_ignored():
    monitor = monitor_connect()
    with Pgring(pool_config(pool_mode="transaction", pool_size=1)) as p:
        conn = connect(p.port)
        bg = Background(lambda: query_one(conn, "SELECT 'kept' FROM pg_sleep(1) /* kept */"))
        wait_running(monitor, "/* kept */")
        with RawConn(p.port) as r:
            r.send(struct.pack("!IIII", 16, CANCEL_REQUEST_CODE, 12345, 67890))
            check(r.is_closed(5), "pgring did not close the cancel connection")
        check_eq(bg.result(15, "the query"), "kept", "query after a bogus CancelRequest")
        conn.close()
    monitor.close()


def test_cancel_client_waiting_for_server():
    # pool_size 1: the holder keeps the only server inside a transaction; W's query waits in
    # the queue. W's cancel answers W with 57014 without touching the holder's server.
    with Pgring(pool_config(pool_mode="transaction", pool_size=1)) as p:
        holder = connect(p.port)
        w = connect(p.port)  # logs in while the server is free
        holder.autocommit = False
        check_eq(query_one(holder, "SELECT 1"), 1)  # BEGIN is open: the server is held

        bg = Background(lambda: query_one(w, "SELECT 42"))
        wait_until(lambda: int((pool_row(p.port, "pgring_test") or {}).get("cl_waiting", 0)) == 1,
                   10, interval=0.1, what="W waiting for a server (SHOW POOLS cl_waiting)")
        check(not bg.done(), "W's query finished while the only server was held")
        w.cancel()
        try:
            bg.result(10, "W's queued query after cancel")
        except Exception as e:  # noqa: BLE001 - checked below
            check_eq(getattr(e, "pgcode", None), "57014", f"W's error ({e})")
        else:
            fail("W's queued query succeeded although it was canceled")
        # The holder's transaction was not affected.
        check_eq(query_one(holder, "SELECT 2"), 2, "the holder's transaction after W's cancel")
        holder.commit()
        # W stays usable: its next query gets the server.
        check_eq(run_query(w, "SELECT 43"), 43, "W after the cancel")
        holder.close()
        w.close()


def run_query(conn, sql):
    return Background(lambda: query_one(conn, sql)).result(15, f"query {sql!r}")


def raw_login(port, protocol, **params):
    r = RawConn(port)
    r.startup("postgres", "pgring_test", protocol=protocol, **params)
    return r


def cancel_with(port, key):
    """A CancelRequest carrying `key` (BackendKeyData's body: pid, then the secret)."""
    with RawConn(port) as c:
        c.send(struct.pack("!II", 8 + len(key), CANCEL_REQUEST_CODE) + key)
        check(c.is_closed(5), "the cancel connection was not closed")


def test_protocol_3_2_long_cancel_keys():
    # PostgreSQL 18's protocol 3.2 changes one thing: the cancel secret is 4..256 bytes. This
    # machine's PostgreSQL 15 negotiates a 3.2 request down to 3.0 (checked first); pgring
    # speaks 3.2 with its clients whatever the server speaks, with a 32-byte secret, and
    # routes their long-key cancels.
    direct = raw_login(PGPORT, PROTOCOL_3_2)
    check_eq(direct.negotiated, (PROTOCOL_3_0, []), "PostgreSQL 15 answering a 3.2 startup")
    direct.close()
    monitor = monitor_connect()
    with Pgring(pool_config(pool_mode="transaction", pool_size=1)) as p:
        r = raw_login(p.port, PROTOCOL_3_2)
        check_eq(r.negotiated, None, "pgring answering 3.2: no NegotiateProtocolVersion")
        check_eq(len(r.backend_key), 4 + 32, "BackendKeyData of a 3.2 client: pid + 32 bytes")
        for key in (r.backend_key[:8],                                  # a 3.0-length prefix
                    r.backend_key[:-1] + bytes([r.backend_key[-1] ^ 1])):  # last byte wrong
            r.send(message(b"Q", b"SELECT 'kept' FROM pg_sleep(0.5) /* long-key kept */\0"))
            wait_running(monitor, "/* long-key kept */")
            cancel_with(p.port, key)
            msgs, _ = read_until_ready(r)
            check(not error_fields_in(msgs), f"a wrong long key canceled the query: {msgs}")
        r.send(message(b"Q", b"SELECT pg_sleep(10) /* long-key canceled */\0"))
        wait_running(monitor, "/* long-key canceled */")
        cancel_with(p.port, r.backend_key)
        msgs, _ = read_until_ready(r)
        check_eq([e.get("C") for e in error_fields_in(msgs)], ["57014"],
                 "the query canceled with the 3.2 key")
        check_eq(r.simple_query("SELECT 1"), [["1"]], "the client after its cancel")
        r.close()
        # A newer minor is negotiated down to 3.2, with the options pgring does not know.
        r = raw_login(p.port, PROTOCOL_3_2 + 7, **{"_pq_.grease": "1"})
        check_eq(r.negotiated, (PROTOCOL_3_2, ["_pq_.grease"]), "a 3.9 startup")
        check_eq(len(r.backend_key), 4 + 32, "its BackendKeyData")
        r.close()
        # 3.0 (and 3.1, reserved and never used) keep the 4-byte secret.
        for protocol, negotiated in ((PROTOCOL_3_0, None), (PROTOCOL_3_0 + 1, (PROTOCOL_3_0, []))):
            r = raw_login(p.port, protocol)
            check_eq((r.negotiated, len(r.backend_key)), (negotiated, 8), f"protocol {protocol}")
            r.close()
    monitor.close()


if __name__ == "__main__":
    run_tests(globals())
