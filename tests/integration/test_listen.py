"""LISTEN and NOTIFY in transaction mode without pinning (listen: shared, the default): a lone
LISTEN between transactions makes the client a subscriber; one listening server connection per
pool and reactor LISTENs for all of them; notifications reach every subscriber with their
channel and payload, between transactions as PostgreSQL delivers them. Each behaviour is first
checked on direct connections."""

import threading
import time

from lib import (FLUSH_MESSAGE, PGHOST, PGPORT, SYNC_MESSAGE, Background, Pgring, admin_ok,
                 admin_rows, bind_exec, bind_message, check, check_eq, close_message, connect,
                 describe_message, execute_message, log, login, monitor_connect, parse_message,
                 pool_config, pool_count, q, query, query_one, run_tests, step_replies,
                 take_notifications, wait_notifications, wait_until)

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


def extended_script(a, b):
    """LISTEN and UNLISTEN through the extended protocol (`a`, raw), in the shapes drivers send
    them: unnamed Parse/Bind/Describe/Execute/Sync (JDBC, psycopg 3), a named Parse and Describe
    with a Flush, then Bind/Execute/Sync (asyncpg), a Bind of a statement parsed earlier; `b`
    notifies. The replies, message by message, and the notifications that reach `a`."""
    out = []

    def step(what, data, replies=1, error_fields="CM"):
        out.append((what, step_replies(a, data, replies, error_fields)))

    def flushed(what, data, count):
        a.send(data)
        out.append((what, "".join(a.read_message()[0].decode() for _ in range(count))))

    def notes(what, notifies, by=b):
        """NOTIFYs (the last one the marker): what reaches a up to the marker."""
        for channel, payload in notifies:
            query(by, f"NOTIFY {channel}, '{payload}'")
        got = []
        while not got or got[-1][1] != notifies[-1][1]:
            kind, body = a.read_message()
            if kind == b"A":
                channel, payload = body[4:].split(b"\0")[:2]
                got.append((channel.decode(), payload.decode()))
        out.append((what, got))

    step("unnamed Parse, Bind, Describe, Execute, Sync",
         parse_message("LISTEN e1") + bind_message() + describe_message(b"P") + execute_message()
         + SYNC_MESSAGE)
    notes("e1 is heard", [("e1", "one")])
    flushed("named Parse, Describe, Flush",
            parse_message('LISTEN "E2"', "l2") + describe_message(b"S", "l2") + FLUSH_MESSAGE, 3)
    step("then Bind, Execute, Sync", bind_exec("l2"))
    step("Describe of it, Sync", describe_message(b"S", "l2") + SYNC_MESSAGE)
    notes("both are heard", [('"E2"', "two"), ("e1", "m1")])
    step("the name in use: 42P05", parse_message("LISTEN e3", "l2") + SYNC_MESSAGE)
    step("UNLISTEN parsed, bound to a portal, run",
         parse_message('UNLISTEN "E2"', "u2") + bind_message(portal="p", statement="u2")
         + describe_message(b"P", "p") + execute_message("p") + SYNC_MESSAGE)
    notes("E2 no more", [('"E2"', "gone"), ("e1", "m2")])
    step("a Bind of the LISTEN statement again", bind_exec("l2"))
    notes("E2 again", [('"E2"', "back"), ("e1", "m3")])
    step("Close of it", close_message(b"S", "l2") + SYNC_MESSAGE)
    step("UNLISTEN * in the extended protocol", parse_message("UNLISTEN *") + bind_exec(""))
    step("LISTEN again, in a Query", q("LISTEN e1"))
    step("it destroyed the unnamed statement: 26000", bind_exec(""))
    notes("only e1 after UNLISTEN *", [('"E2"', "unheard"), ("e1", "m4")])
    return out


def pinned_script(a, b):
    """After the steps above, a LISTEN in a pipeline with another statement runs on a's server
    (pinning a), and a Bind that fails."""
    out = []
    out.append(step_replies(a, parse_message("LISTEN e4", "l4") + bind_message(statement="l4")
                            + execute_message() + parse_message("SELECT 7") + bind_message()
                            + execute_message() + SYNC_MESSAGE, 1))
    query(b, "NOTIFY e4, 'four'")
    kind = None
    while kind != b"A":
        kind, body = a.read_message()
    out.append(body[4:].split(b"\0")[:2])
    out.append(step_replies(a, bind_exec("l4", [1]), 1, error_fields="C"))
    return out


def test_extended_protocol_listen_as_direct():
    """LISTEN through the extended protocol is a subscription too: each step answers as
    directly and the notifications are the same, on pool_size 1 (a pinned client would hold the
    only server, and the other client's NOTIFYs would wait forever)."""
    a, b = login(PGPORT, user=USER, db=DB, host=PGHOST), direct_app()
    expected = extended_script(a, b) + pinned_script(a, b)
    a.terminate()
    b.close()
    with Pgring(pool_config(pool_size=1)) as p:
        a, b = login(p.port, user=USER, db=DB), app_connect(p)
        got = extended_script(a, b)
        pinned = [r["pinned"] for r in admin_rows(p.port, "SHOW CLIENTS")]
        check(all(x in ("", "0", "no", None) for x in pinned), f"a pinned client: {pinned}")
        # (The pipelined LISTEN pins a: b's NOTIFY comes from a direct session.)
        d = direct_app()
        got += pinned_script(a, d)
        d.close()
        check_eq(got, expected, "through pgring")
        a.terminate()
        b.close()


def test_asyncpg_add_listener_pins_nothing():
    """asyncpg's add_listener and remove_listener (a named Parse and Describe with a Flush, then
    Bind/Execute/Sync) through pgring with pool_size 1: the callback gets what it gets directly,
    and another client's queries are served meanwhile."""
    import asyncio

    import asyncpg

    async def script(port, host, notifier):
        got = []
        conn = await asyncpg.connect(host=host, port=port, user=USER, database=DB)
        try:
            heard = asyncio.Queue()
            def callback(connection, pid, channel, payload):
                heard.put_nowait((channel, payload))
            await conn.add_listener("jobs", callback)
            await conn.add_listener("Other Jobs", callback)
            await asyncio.to_thread(notifier, ["NOTIFY jobs, 'j1'", "NOTIFY \"Other Jobs\", 'o1'"])
            got.append(sorted([await asyncio.wait_for(heard.get(), 10) for _ in range(2)]))
            await conn.remove_listener("jobs", callback)
            await asyncio.to_thread(notifier, ["NOTIFY jobs, 'unheard'",
                                               "NOTIFY \"Other Jobs\", 'o2'"])
            got.append(await asyncio.wait_for(heard.get(), 10))
            # Listening again: asyncpg binds the statement it prepared before.
            await conn.add_listener("jobs", callback)
            await asyncio.to_thread(notifier, ["NOTIFY jobs, 'j2'"])
            got.append(await asyncio.wait_for(heard.get(), 10))
            got.append(await conn.fetchval("SELECT 40 + 2"))
        finally:
            await conn.close()
        return got

    def notifier_on(conn):
        def notify(statements):
            for sql in statements:
                query(conn, sql)
        return notify

    d = direct_app()
    expected = asyncio.run(script(PGPORT, PGHOST, notifier_on(d)))
    d.close()
    with Pgring(pool_config(pool_size=1)) as p:
        other = app_connect(p)  # its NOTIFYs need the pool's only server
        check_eq(asyncio.run(script(p.port, "127.0.0.1", notifier_on(other))), expected,
                 "asyncpg through pgring")
        other.close()


if __name__ == "__main__":
    run_tests(globals())
