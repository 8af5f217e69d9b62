"""LISTEN and NOTIFY in transaction mode without pinning (listen: shared, the default): a lone
LISTEN between transactions makes the client a subscriber; one listening server connection per
pool and reactor LISTENs for all of them; notifications reach every subscriber with their
channel and payload, between transactions as PostgreSQL delivers them. Each behaviour is first
checked on direct connections."""

import threading
import time

from lib import (PGHOST, PGPORT, Background, Pgring, admin_ok, admin_rows, check, check_eq,
                 connect, log, monitor_connect, pool_config, pool_count, query, query_one,
                 run_tests, take_notifications, wait_notifications, wait_until)

DB, USER = "app", "app"


def app_connect(p, **kwargs):
    kwargs.setdefault("connect_timeout", 30)
    return connect(p.port, db=DB, user=USER, **kwargs)


def direct_app():
    return monitor_connect(db=DB, user=USER)


def received(conn, wait=0.0):
    """The notifications that reached `conn` within `wait` seconds, as (channel, payload)."""
    return [(n.channel, n.payload) for n in take_notifications(conn, wait)]


def wait_for(conn, expected, what):
    got = wait_notifications(conn, len(expected), what)
    check_eq(sorted((n.channel, n.payload) for n in got), sorted(expected), what)


def compare_with_direct(script, pool_size=2):
    """Runs script(a, b) on two direct sessions, then on two pgring clients (pool_size servers):
    the results must be the same. Returns the direct one."""
    a, b = direct_app(), direct_app()
    expected = script(a, b)
    a.close()
    b.close()
    with Pgring(pool_config(pool_size=pool_size)) as p:
        a, b = app_connect(p), app_connect(p)
        check_eq(script(a, b), expected, f"through pgring ({script.__name__})")
        a.close()
        b.close()
    return expected


def listening_servers(p):
    return [r for r in admin_rows(p.port, "SHOW SERVERS") if r["state"] == "listening"]


def share_script(a, b, c):
    """a and b LISTEN jobs, c LISTENs other; a third session notifies: who gets what."""
    query(a, "LISTEN jobs")
    query(b, 'LISTEN "jobs"')
    query(c, "LISTEN other")
    return a, b, c


def test_notifications_reach_every_subscriber():
    """Direct first: two sessions listening on a channel both get a NOTIFY, a third on another
    channel does not; then the same through pgring with pool_size 1, where the listeners hold no
    server: a fourth client's query runs at once (a pinned LISTEN would make it wait)."""
    sessions = [direct_app() for _ in range(4)]
    a, b, c, d = sessions
    share_script(a, b, c)
    query(d, "NOTIFY jobs, 'first'")
    query(d, "SELECT pg_notify('other', 'second')")
    wait_for(a, [("jobs", "first")], "direct: a")
    wait_for(b, [("jobs", "first")], "direct: b")
    wait_for(c, [("other", "second")], "direct: c")
    for s in sessions:
        s.close()

    with Pgring(pool_config(pool_size=1, timeouts={"query_wait": "5s"})) as p:
        a, b, c, d = (app_connect(p) for _ in range(4))
        share_script(a, b, c)
        # Nobody is pinned: the one server is free for d.
        check_eq(query_one(d, "SELECT 42"), 42, "a query while three clients listen")
        check_eq(len(listening_servers(p)), 1, "listening connections (one per pool and reactor)")
        query(d, "NOTIFY jobs, 'first'")
        query(d, "SELECT pg_notify('other', 'second')")
        wait_for(a, [("jobs", "first")], "through pgring: a")
        wait_for(b, [("jobs", "first")], "through pgring: b")
        wait_for(c, [("other", "second")], "through pgring: c")
        check_eq(received(a, 0.3), [], "a got nothing more")
        # A listener still runs queries of its own, on any server.
        check_eq(query_one(a, "SELECT 7"), 7, "a's own query")
        for s in (a, b, c, d):
            s.close()
        wait_until(lambda: not listening_servers(p), 10,
                   what="the listening connection to go with its last subscriber")


def transaction_script(a, d):
    """a LISTENs, then is inside a transaction when d notifies: what a sees during it and after
    COMMIT."""
    query(a, "LISTEN tx_chan")
    query(a, "BEGIN")
    query_one(a, "SELECT 1")
    query(d, "NOTIFY tx_chan, 'during'")
    time.sleep(0.3)
    query_one(a, "SELECT 2")
    during = received(a, 0.3)
    query(a, "COMMIT")
    after = []
    wait_until(lambda: after.extend(received(a, 0.1)) or after, 10,
               what="the notification after COMMIT")
    return during, after


def test_notification_waits_for_the_transaction_end():
    expected = compare_with_direct(transaction_script)
    check_eq(expected, ([], [("tx_chan", "during")]), "direct: nothing during, one after")


def unlisten_script(a, d):
    query(a, "LISTEN u1")
    query(a, "LISTEN u2")
    query(a, "UNLISTEN u1")
    query(d, "NOTIFY u1, 'gone'")
    query(d, "NOTIFY u2, 'kept'")
    first = received(a, 0.5)
    query(a, "UNLISTEN *")
    query(d, "NOTIFY u2, 'gone too'")
    return first, received(a, 0.5)


def test_unlisten_stops_delivery():
    expected = compare_with_direct(unlisten_script)
    check_eq(expected, ([("u2", "kept")], []), "direct")
    # With no channel left, the listening connection goes; the client stays.
    with Pgring(pool_config(pool_size=2)) as p:
        a = app_connect(p)
        query(a, "LISTEN u3")
        check_eq(len(listening_servers(p)), 1, "listening connections")
        query(a, "UNLISTEN *")
        wait_until(lambda: not listening_servers(p), 10,
                   what="the listening connection to go after UNLISTEN *")
        check_eq(query_one(a, "SELECT 1"), 1, "the client after UNLISTEN *")
        a.close()


def test_listening_connection_comes_back():
    """PostgreSQL ends the listening connection (pg_terminate_backend): the subscribers stay
    connected and subscribed, another listening connection is opened and LISTENs again, and
    later notifications arrive."""
    with Pgring(pool_config(pool_size=2)) as p:
        a, d = app_connect(p), app_connect(p)
        query(a, "LISTEN back_chan")
        monitor = monitor_connect(db=DB)
        try:
            def listener_pid():
                # pgring's listening connection (SHOW SERVERS: not another backend that LISTENs,
                # such as one of an earlier test still exiting), once idle after its LISTEN:
                # committed, so a NOTIFY from now on reaches it.
                pids = [int(r["backend_pid"]) for r in listening_servers(p)]
                if len(pids) != 1:
                    return None
                idle = query(monitor, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND "
                                      "query LIKE 'LISTEN%%' AND state = 'idle'", (pids[0],))
                return pids[0] if idle else None

            first = wait_until(listener_pid, 10, what="the listening backend")
            query(monitor, "SELECT pg_terminate_backend(%s)", (first,))
            wait_until(lambda: listener_pid() not in (None, first), 15,
                       what="a new listening backend")
        finally:
            monitor.close()
        query(d, "NOTIFY back_chan, 'again'")
        wait_for(a, [("back_chan", "again")], "after the listening connection came back")
        check_eq(query_one(a, "SELECT 3"), 3, "the subscriber's connection")
        a.close()
        d.close()


def test_listening_connection_outlives_idle_session_timeout():
    """A database whose sessions end after 1 s idle (idle_session_timeout, checked directly
    first): the listening connection, idle by design, is not ended by it; a notification sent
    after 2.5 s arrives through the same listening backend."""
    monitor = monitor_connect()
    query(monitor, "DROP DATABASE IF EXISTS pgring_listen_idle")
    query(monitor, "CREATE DATABASE pgring_listen_idle OWNER app")
    query(monitor, "ALTER DATABASE pgring_listen_idle SET idle_session_timeout = '1s'")
    try:
        direct = monitor_connect(db="pgring_listen_idle", user=USER)
        time.sleep(2)
        try:
            query(direct, "SELECT 1")
            check(False, "idle_session_timeout did not end a direct session")
        except Exception:  # noqa: BLE001 - the session was ended, as expected
            pass
        databases = {"pgring_listen_idle": {"host": PGHOST, "port": PGPORT}}
        with Pgring(pool_config(pool_size=2, databases=databases)) as p:
            a = connect(p.port, db="pgring_listen_idle", user=USER, connect_timeout=30)
            query(a, "LISTEN idle_chan")
            pids = wait_until(lambda: [r["backend_pid"] for r in listening_servers(p)], 10,
                              what="the listening connection")
            time.sleep(2.5)
            d = monitor_connect(db="pgring_listen_idle", user=USER)
            query(d, "NOTIFY idle_chan, 'still here'")
            d.close()
            wait_for(a, [("idle_chan", "still here")], "after 2.5 s")
            check_eq([r["backend_pid"] for r in listening_servers(p)], pids,
                     "the listening backend (not ended and replaced)")
            a.close()
    finally:
        query(monitor, "DROP DATABASE IF EXISTS pgring_listen_idle WITH (FORCE)")
        monitor.close()


def test_listening_connection_keeps_its_unit_through_reconnect():
    """max_db_connections 2, pool_size 2: the listening connection holds one unit, the pool's
    only server the other, and clients always wait for it. RECONNECT retires the listening
    connection: its successor opens with the retired one's unit at once (were the unit set free,
    the waiting clients' pool would take it and keep it while the load lasts), and notifications
    arrive again while the load goes on."""
    with Pgring(pool_config(pool_size=2, max_db_connections=2)) as p:
        a = app_connect(p)
        query(a, "LISTEN unit_chan")
        first = wait_until(lambda: [r["backend_pid"] for r in listening_servers(p)], 10,
                           what="the listening connection")
        stop = threading.Event()

        def worker():
            c = app_connect(p)
            n = 0
            try:
                while not stop.is_set():
                    query(c, "SELECT pg_sleep(0.01)")
                    n += 1
            finally:
                c.close()
            return n

        workers = [Background(worker) for _ in range(4)]
        try:
            wait_until(lambda: pool_count(p.port, DB, "cl_waiting", user=USER) > 0, 10,
                       what="clients waiting for the pool's one server")
            admin_ok(p.port, "RECONNECT")
            again = wait_until(lambda: [r["backend_pid"] for r in listening_servers(p)
                                        if r["backend_pid"] not in first], 5,
                               what="a new listening connection while the load goes on")
            log(f"listening backend {first} -> {again}")
            monitor = monitor_connect(db=DB)
            query(monitor, "NOTIFY unit_chan, 'under load'")
            monitor.close()
            wait_for(a, [("unit_chan", "under load")], "a notification under load")
        finally:
            stop.set()
            done = [w.result(30, "a worker") for w in workers]
        check(all(n > 0 for n in done), f"workers' transactions: {done}")
        a.close()


def test_listen_in_a_multi_statement_query_pins():
    """A LISTEN inside a multi-statement Query is not taken over: it runs on the client's server,
    which the client keeps (session state, as before), and its notifications still arrive."""
    with Pgring(pool_config(pool_size=2)) as p:
        a, d = app_connect(p), app_connect(p)
        rows = query(a, "LISTEN pipe_chan; SELECT 5")  # one Query, two statements: pinned way
        check_eq(rows, [(5,)], "a multi-statement LISTEN goes to a server as before")
        query(d, "NOTIFY pipe_chan, 'p'")
        wait_for(a, [("pipe_chan", "p")], "the pinned client's notification")
        a.close()
        d.close()


def names_script(a, d):
    """Channel names that need quoting: a keyword, a dot, a double quote, upper case."""
    for name in ('"select"', '"app.events"', '"say ""hi"""', '"Mixed"', "plain"):
        query(a, f"LISTEN {name}")
    for channel in ("select", "app.events", 'say "hi"', "Mixed", "plain"):
        query(d, "SELECT pg_notify(%s, 'x')", (channel,))
    got = []
    wait_until(lambda: got.extend(received(a, 0.1)) or len(got) >= 5, 10,
               what="five notifications", describe=lambda: got)
    return sorted(got)


def test_channel_names_that_need_quoting():
    compare_with_direct(names_script)


def own_pid_script(a, b):
    """a's own notification, then (after a while) b's on the same channel: the pids, as (a's
    own one is a's BackendKeyData pid, b's is not)."""
    query(a, "LISTEN pid_chan")
    query(a, "NOTIFY pid_chan, 'mine'")
    got = wait_notifications(a, 1, "a's own notification")
    time.sleep(1.2)
    query(b, "NOTIFY pid_chan, 'theirs'")
    got += wait_notifications(a, 1, "b's notification")
    mine = a.get_backend_pid()
    return [(n.payload, n.pid == mine) for n in got]


def test_own_notification_pid_and_others():
    """Drivers skip their own notifications by the pid: a's own carries a's BackendKeyData pid;
    another client's (through pgring run on the same single server) does not."""
    expected = compare_with_direct(own_pid_script, pool_size=1)
    check_eq(expected, [("mine", True), ("theirs", False)], "direct")


def test_pinned_subscriber_still_gets_notifications():
    """A subscriber that later pins itself to a server (a temporary table) keeps getting its
    notifications between transactions, without sending anything."""
    with Pgring(pool_config(pool_size=2)) as p:
        a, d = app_connect(p), app_connect(p)
        query(a, "LISTEN pinned_chan")
        query(a, "CREATE TEMP TABLE pinned_here(x int)")
        query(d, "NOTIFY pinned_chan, 'while pinned'")
        wait_for(a, [("pinned_chan", "while pinned")], "the pinned subscriber")
        a.close()
        d.close()


if __name__ == "__main__":
    run_tests(globals())
