#!/usr/bin/python3
"""timeouts: in the YAML: each limit ends what it limits with its SQLSTATE (docs/operations.md,
"Timeouts") and leaves the pool healthy. The checks are on SQLSTATEs and outcomes; times are only
bounded generously so that a missing timeout shows up as a failure rather than a hang."""

import time

from lib import (Background, PGHOST, PGPORT, Pgring, RawConn, SilentListener, backend_pids, check,
                tcp_timers,
                check_eq, connect, direct_connect, error_fields_in, expect_closed_with,
                expect_error, idle_in_transaction, log, login, login_error, monitor_connect,
                pool_config, query, query_one, read_close, run_tests, send_query_collect,
                startup_packet, wait_no_backends, wait_until)


def with_table(fn):
    """Run fn(table) with a fresh table pgring_to_t on the test database; drop it afterwards."""
    setup = direct_connect()
    query(setup, "DROP TABLE IF EXISTS pgring_to_t")
    query(setup, "CREATE TABLE pgring_to_t(id int)")
    try:
        fn(setup)
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_to_t")
        setup.close()


def query_timeout(pool_mode):
    config = pool_config(pool_mode=pool_mode, pool_size=1, timeouts={"query": "500ms"})
    with Pgring(config) as p:
        conn = connect(p.port)
        pid = query_one(conn, "SELECT pg_backend_pid()")
        started = time.monotonic()
        expect_error(lambda: query(conn, "SELECT pg_sleep(10)"), "57014")
        elapsed = time.monotonic() - started
        log(f"{pool_mode}: query timeout 500ms: 57014 after {elapsed:.2f}s")
        check(elapsed < 9, f"the query ran {elapsed:.1f}s despite timeouts.query 500ms")
        # PostgreSQL signals a canceled backend twice (process, then process group); let a
        # late second SIGINT land on the idle backend rather than on the next query.
        time.sleep(0.3)
        # The same client goes on, on a healthy server (the only one: pool_size 1).
        check_eq(query_one(conn, "SELECT 1"), 1, "the next query on the same client")
        check_eq(query_one(conn, "SELECT pg_backend_pid()"), pid, "the server after the cancel")
        # A query under the limit is not touched.
        check_eq(query_one(conn, "SELECT 'short' FROM pg_sleep(0.1)"), "short")
        conn.close()
        # The next client gets the same (only) server, healthy.
        other = connect(p.port)
        check_eq(query_one(other, "SELECT 2"), 2, "another client after the timeout")
        check_eq(query_one(other, "SELECT pg_backend_pid()"), pid, "the next client's server")
        other.close()


def test_query_timeout_transaction_mode():
    query_timeout("transaction")


def test_query_timeout_session_mode():
    query_timeout("session")


def test_query_timeout_does_not_leak_into_next_query():
    # After a query ended by timeouts.query (pgring cancels it on the server), the client's
    # next query, sent at once, must run normally: the cancel is over by then.
    failures = []
    for mode, rounds in (("transaction", 30), ("session", 80)):
        config = pool_config(pool_mode=mode, pool_size=1, timeouts={"query": "100ms"})
        with Pgring(config) as p:
            conn = connect(p.port)
            hit = []
            for i in range(rounds):
                try:
                    query(conn, "SELECT pg_sleep(2)")
                except Exception as e:  # noqa: BLE001 - checked below
                    check_eq(getattr(e, "pgcode", None), "57014", f"round {i}: error ({e})")
                else:
                    # The cancel was lost (e.g. it reached PostgreSQL before the backend
                    # started the query, so PostgreSQL ignored it) and not sent again.
                    hit.append(f"round {i}: pg_sleep(2) was not ended by timeouts.query 100ms")
                    continue
                try:
                    query(conn, "SELECT pg_sleep(0.02)")
                except Exception as e:  # noqa: BLE001 - counted and reported
                    hit.append(f"round {i}: {getattr(e, 'pgcode', None)} {str(e).strip()}")
            conn.close()
        log(f"{mode}: {len(hit)} of {rounds} queries right after a timed-out one failed")
        if hit:
            failures.append(f"{mode} mode: {len(hit)} of {rounds}, e.g. {hit[0]}")
    check(not failures, "the query-timeout cancel hit the client's next query: "
                        + "; ".join(failures))


def test_idle_transaction_timeout():
    def body(setup):
        config = pool_config(pool_mode="transaction", pool_size=1,
                            timeouts={"idle_transaction": "1s"})
        with Pgring(config) as p:
            r = login(p.port, timeout=30)
            r.simple_query("BEGIN")
            r.simple_query("INSERT INTO pgring_to_t VALUES (1)")
            started = time.monotonic()
            err = expect_closed_with(r, "25P03", timeout=20, what="client idle in transaction")
            log(f"idle_transaction 1s: closed after {time.monotonic() - started:.2f}s: {err}")
            check(err.get("M", "").startswith("pgring: "), f"message: {err}")
            r.close()
            # The server was rolled back: the INSERT is not committed.
            check_eq(query_one(setup, "SELECT count(*) FROM pgring_to_t"), 0, "committed rows")
            # The (only) server serves the next client, outside any transaction.
            c = connect(p.port)
            check_eq(query_one(c, "SELECT count(*) FROM pgring_to_t"), 0, "rows seen via pgring")
            check_eq(query_one(c, "SELECT now() = statement_timestamp()"), True,
                     "the next client runs outside the old transaction")
            # Idling outside a transaction is not limited by idle_transaction.
            time.sleep(1.5)
            check_eq(query_one(c, "SELECT 1"), 1, "a client idle outside a transaction")
            c.close()
            check_eq(idle_in_transaction(setup, "pgring_test"), [],
                     "server connections left idle in transaction")
    with_table(body)


def test_transaction_timeout():
    def body(setup):
        config = pool_config(pool_mode="transaction", pool_size=1,
                            timeouts={"transaction": "1500ms"})
        with Pgring(config) as p:
            r = login(p.port, timeout=30)
            r.simple_query("BEGIN")
            r.simple_query("INSERT INTO pgring_to_t VALUES (1)")
            # Busy all the time (never idle long): only the transaction limit can end it.
            started = time.monotonic()
            err = None
            while time.monotonic() - started < 20:
                msgs, closed = send_query_collect(r, "SELECT pg_sleep(0.2)")
                errors = error_fields_in(msgs)
                if closed or errors:
                    if not closed:
                        _, more = read_close(r, 10)
                        errors += more
                    check(errors, f"closed without an ErrorResponse: {[k for k, _ in msgs]}")
                    err = errors[-1]
                    break
            check(err is not None, "the transaction was not ended within 20 s")
            log(f"transaction 1500ms: ended after {time.monotonic() - started:.2f}s: {err}")
            check_eq(err.get("C"), "25P04", f"SQLSTATE ({err})")
            r.close()
            check_eq(query_one(setup, "SELECT count(*) FROM pgring_to_t"), 0, "committed rows")
            c = connect(p.port)
            check_eq(query_one(c, "SELECT 1"), 1, "the next client")
            # Many short transactions, each under the limit, are fine.
            c.autocommit = False
            for i in range(4):
                query(c, "SELECT pg_sleep(0.5)")
                c.commit()
            c.close()
    with_table(body)


def test_client_idle_timeout_transaction_mode():
    config = pool_config(pool_mode="transaction", pool_size=1, timeouts={"client_idle": "1s"})
    with Pgring(config) as p:
        busy = login(p.port, timeout=30)
        r = login(p.port, timeout=30)
        check_eq(r.simple_query("SELECT 1"), [["1"]])
        # `busy` keeps talking (every 0.3 s) and must not be closed meanwhile.
        started = time.monotonic()
        bg = Background(lambda: read_close(r, 20))
        while not bg.done() and time.monotonic() - started < 20:
            check_eq(busy.simple_query("SELECT 2"), [["2"]], "an active client")
            time.sleep(0.3)
        _, errors = bg.result(5, "the idle client's close")
        check(errors, "the idle client was closed without an ErrorResponse")
        log(f"client_idle 1s: closed after {time.monotonic() - started:.2f}s: {errors[-1]}")
        check_eq(errors[-1].get("C"), "57P05", f"SQLSTATE ({errors[-1]})")
        check_eq(busy.simple_query("SELECT 3"), [["3"]], "the active client afterwards")
        busy.terminate()
        r.close()


def test_client_idle_timeout_session_mode():
    config = pool_config(pool_mode="session", pool_size=2, timeouts={"client_idle": "1s"})
    with Pgring(config) as p:
        r = login(p.port, timeout=30)
        check_eq(r.simple_query("SELECT 1"), [["1"]])
        err = expect_closed_with(r, "57P05", timeout=20, what="idle session-mode client")
        check(err.get("M", "").startswith("pgring: "), f"message: {err}")
        r.close()
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 2"), 2, "the next client")
        c.close()


def test_query_wait_timeout():
    config = pool_config(pool_mode="transaction", pool_size=1, timeouts={"query_wait": "1s"})
    with Pgring(config) as p:
        holder = connect(p.port)
        holder.autocommit = False
        check_eq(query_one(holder, "SELECT 1"), 1)  # holds the only server in a transaction
        r = login(p.port, timeout=30)
        started = time.monotonic()
        msgs, closed = send_query_collect(r, "SELECT 'ran'")
        waited = time.monotonic() - started
        errors = error_fields_in(msgs)
        log(f"query_wait 1s: after {waited:.2f}s: {[k for k, _ in msgs]} closed={closed} "
            f"{errors}")
        check(not any(k == b"D" for k, _ in msgs), "the waiting client's query ran")
        check(errors, "no ErrorResponse for the query_wait timeout")
        check_eq(errors[-1].get("C"), "57014", f"SQLSTATE ({errors[-1]})")
        if not closed:
            _, more = read_close(r, 10)
        check(r.is_closed(5), "the client was not closed after the query_wait timeout")
        r.close()
        check_eq(query_one(holder, "SELECT 2"), 2, "the holder's transaction")
        holder.commit()
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 3"), 3, "a new client after the holder committed")
        c.close()
        holder.close()


def test_client_login_timeout():
    config = pool_config(timeouts={"client_login": "1s"})
    with Pgring(config) as p:
        # 1. Connects and sends nothing.
        r = RawConn(p.port, timeout=30)
        started = time.monotonic()
        err = expect_closed_with(r, "08P01", timeout=20, what="a silent client")
        log(f"client_login 1s: silent client closed after {time.monotonic() - started:.2f}s: "
            f"{err}")
        r.close()
        # 2. Sends half a startup packet.
        r = RawConn(p.port, timeout=30)
        r.send(startup_packet("postgres", "pgring_test")[:6])
        expect_closed_with(r, "08P01", timeout=20, what="a client with half a startup packet")
        r.close()
        # A normal client is not affected.
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1)
        time.sleep(1.5)
        check_eq(query_one(c, "SELECT 2"), 2, "a logged-in client after client_login passed")
        c.close()


def test_client_login_timeout_during_auth():
    config = {
        "auth": {"method": "scram-sha-256"},
        "users": {"app": {"password": "secret"}},
        "defaults": {"pool_mode": "transaction", "pool_size": 2},
        "databases": {"app": {"host": PGHOST, "port": PGPORT}},
        "timeouts": {"client_login": "1s"},
    }
    with Pgring(config) as p:
        r = RawConn(p.port, timeout=30)
        r.send(startup_packet("app", "app"))
        kind, body = r.read_message()
        check_eq(kind, b"R", "pgring's first answer")
        # Never answers the SASL request.
        expect_closed_with(r, "08P01", timeout=20, what="a client stuck in authentication")
        r.close()
        c = login(p.port, user="app", db="app", password="secret")
        check_eq(c.simple_query("SELECT current_user"), [["app"]])
        c.terminate()


def test_server_connect_timeout():
    with SilentListener() as silent:
        databases = {
            "pgring_test": {"host": PGHOST, "port": PGPORT},
            "stalled": {"host": "127.0.0.1", "port": silent.port, "dbname": "pgring_test"},
        }
        config = pool_config(pool_mode="transaction", pool_size=2, databases=databases,
                            timeouts={"server_connect": "1s", "server_login_retry": "1s",
                                      "query_wait": "3s"})
        with Pgring(config) as p:
            started = time.monotonic()
            e = login_error(p.port, db="stalled", timeout=30)
            elapsed = time.monotonic() - started
            log(f"server_connect 1s: {e} after {elapsed:.2f}s")
            check_eq(e.sqlstate, "08006", f"SQLSTATE ({e})")
            check(e.fields.get("M", "").startswith("pgring: "), f"message: {e.fields}")
            check(elapsed < 10, f"the client waited {elapsed:.1f}s with server_connect 1s")
            # The other database is not affected.
            c = connect(p.port)
            check_eq(query_one(c, "SELECT 1"), 1, "a client of the healthy database")
            c.close()
            # A later attempt also fails cleanly (no hang).
            time.sleep(1.2)
            e = login_error(p.port, db="stalled", timeout=30)
            check_eq(e.sqlstate, "08006", f"SQLSTATE of the second attempt ({e})")


def test_server_idle_timeout():
    monitor = monitor_connect()
    wait_no_backends(monitor, "app")
    config = pool_config(pool_mode="transaction", pool_size=3, timeouts={"server_idle": "1s"})
    with Pgring(config) as p:
        clients = [connect(p.port, db="app") for _ in range(3)]
        # Three transactions at once: three server connections.
        for c in clients:
            c.autocommit = False
            query(c, "SELECT 1")
        check_eq(len(backend_pids(monitor, "app")), 3, "server connections while 3 transactions "
                                                       "are open")
        for c in clients:
            c.commit()
        # Idle now: they go after server_idle; the clients stay connected.
        started = time.monotonic()
        wait_until(lambda: len(backend_pids(monitor, "app")) == 0, 15, interval=0.1,
                   what="idle server connections to be closed after server_idle 1s")
        log(f"server_idle 1s: servers closed after {time.monotonic() - started:.2f}s")
        check("server_idle_timeout" in p.log(), "no server_idle_timeout in pgring's log")
        # The clients go on: a new server is opened for them.
        for i, c in enumerate(clients):
            c.autocommit = True
            check_eq(query_one(c, "SELECT %s::int", (i,)), i, f"client {i} after server_idle")
            c.close()
    monitor.close()


def test_server_lifetime():
    monitor = monitor_connect()
    wait_no_backends(monitor, "app")
    config = pool_config(pool_mode="transaction", pool_size=1,
                        timeouts={"server_lifetime": "2s", "server_idle": "60s"})
    with Pgring(config) as p:
        c = connect(p.port, db="app")
        first = query_one(c, "SELECT pg_backend_pid()")
        # A transaction longer than the lifetime keeps its server to the end.
        c.autocommit = False
        check_eq(query_one(c, "SELECT pg_backend_pid()"), first)
        time.sleep(2.5)
        check_eq(query_one(c, "SELECT pg_backend_pid()"), first,
                 "the server inside a transaction older than server_lifetime")
        c.commit()
        c.autocommit = True
        # Between transactions the old server is retired and a new one takes over.
        seen = set()

        def retired():
            seen.add(query_one(c, "SELECT pg_backend_pid()"))
            time.sleep(0.2)
            return first not in backend_pids(monitor, "app")
        wait_until(retired, 15, interval=0.05, what="the old server to be retired")
        check_eq(query_one(c, "SELECT 1"), 1, "the client after its server was retired")
        pid = query_one(c, "SELECT pg_backend_pid()")
        check(pid != first, f"still on the old backend {first}")
        log(f"server_lifetime 2s: backends used {sorted(seen | {pid})}")
        check("server_lifetime" in p.log(), "no server_lifetime close in pgring's log")
        c.close()
    monitor.close()


def test_server_lifetime_session_mode():
    """A session-mode client keeps its server for the whole session, however old (closing it
    would end the client's session); the server is retired once the client leaves."""
    monitor = monitor_connect()
    wait_no_backends(monitor, "app")
    config = pool_config(pool_mode="session", pool_size=2,
                        timeouts={"server_lifetime": "1s", "server_idle": "60s"})
    with Pgring(config) as p:
        c = connect(p.port, db="app")
        first = query_one(c, "SELECT pg_backend_pid()")
        time.sleep(2.0)
        check_eq(query_one(c, "SELECT pg_backend_pid()"), first,
                 "a session's server older than server_lifetime")
        c.close()
        wait_until(lambda: first not in backend_pids(monitor, "app"), 15,
                   what="the old server to be retired after its client left")
        check("server_lifetime" in p.log(), "no server_lifetime close in pgring's log")
    monitor.close()


def test_per_database_and_per_user_timeouts():
    """timeouts: set per database and per user (users win over databases, which win over the
    top-level section). pgring_test has a 500 ms query timeout; database "other" (the same
    PostgreSQL database) has none but a 500 ms idle_transaction; user pgring_patient turns the
    query timeout off again on pgring_test."""
    setup = direct_connect()
    query(setup, "DROP ROLE IF EXISTS pgring_patient")
    query(setup, "CREATE ROLE pgring_patient LOGIN")
    config = pool_config(pool_mode="transaction", pool_size=2, timeouts={"query_wait": "30s"},
                        databases={
                            "pgring_test": {"host": PGHOST, "port": PGPORT,
                                            "timeouts": {"query": "500ms"}},
                            "other": {"host": PGHOST, "port": PGPORT, "dbname": "pgring_test",
                                      "timeouts": {"idle_transaction": "500ms"}},
                        })
    config["users"] = {"postgres": {}, "pgring_patient": {"timeouts": {"query": 0}}}
    try:
        with Pgring(config) as p:
            limited = connect(p.port)
            started = time.monotonic()
            expect_error(lambda: query(limited, "SELECT pg_sleep(10)"), "57014")
            elapsed = time.monotonic() - started
            log(f"pgring_test (query 500ms): 57014 after {elapsed:.2f}s")
            check(elapsed < 9, f"the query ran {elapsed:.1f}s despite the database's 500ms")
            time.sleep(0.3)  # PostgreSQL's second SIGINT lands on the idle backend
            check_eq(query_one(limited, "SELECT 1"), 1, "the same client afterwards")
            # The same database, a user whose own setting turns the limit off.
            patient = connect(p.port, user="pgring_patient")
            check_eq(query_one(patient, "SELECT 'slept' FROM pg_sleep(1.2)"), "slept",
                     "pgring_patient's query (timeouts.query 0 for the user)")
            # Another database: no query limit, but idle in transaction is.
            other = connect(p.port, db="other")
            check_eq(query_one(other, "SELECT 'slept' FROM pg_sleep(1.2)"), "slept",
                     "a query on database other (no query timeout)")
            r = login(p.port, db="other", timeout=30)
            r.simple_query("BEGIN")
            expect_closed_with(r, "25P03", timeout=20, what="idle in transaction on other")
            r.close()
            check_eq(query_one(other, "SELECT 3"), 3, "database other afterwards")
            for c in (limited, patient, other):
                c.close()
    finally:
        query(setup, "DROP ROLE IF EXISTS pgring_patient")
        setup.close()


def keepalive_timers(p, client_port):
    """The kernel's timers on pgring's end of the client's connection and of its servers'."""
    timers = tcp_timers(p.pid())
    client = [t for (local, remote), t in timers.items()
              if local[1] == p.port and remote[1] == client_port]
    servers = [t for (local, remote), t in timers.items() if remote[1] == PGPORT]
    return client, servers


def test_tcp_keepalive_on_client_and_server_sockets():
    """tcp.keepalive_idle: pgring's sockets to its clients and to PostgreSQL carry a keepalive
    timer that fires within that idle time (the kernel's default is two hours); with
    tcp.keepalive: false they carry none."""
    config = pool_config(pool_size=1)
    config["tcp"] = {"keepalive_idle": "7s", "keepalive_interval": "2s", "keepalive_count": 3,
                     "user_timeout": "20s"}
    with Pgring(config) as p:
        c = connect(p.port, db="app", user="app")
        query_one(c, "SELECT 1")
        mine = [local[1] for local, remote in tcp_timers() if remote[1] == p.port]
        check(mine, "the test's own socket to pgring")
        def armed():
            client, servers = keepalive_timers(p, mine[0])
            return (client and client[0][0] == 2 and 0 < client[0][1] <= 7 and servers and
                    all(t == 2 and 0 < when <= 7 for t, when in servers))
        # (Right after the query a retransmit timer may still be pending: it is acked at once.)
        wait_until(armed, 5, what="keepalive timers within 7 s on pgring's sockets",
                   describe=lambda: keepalive_timers(p, mine[0]))
        c.close()
    config["tcp"] = {"keepalive": False}
    with Pgring(config) as p:
        c = connect(p.port, db="app", user="app")
        query_one(c, "SELECT 1")
        mine = [local[1] for local, remote in tcp_timers() if remote[1] == p.port]
        def unarmed():
            client, servers = keepalive_timers(p, mine[0])
            return client and servers and all(t == 0 for t, _ in client + servers)
        wait_until(unarmed, 5,
                   what="no timer on pgring's sockets with keepalive off",
                   describe=lambda: keepalive_timers(p, mine[0]))
        c.close()


if __name__ == "__main__":
    run_tests(globals())
