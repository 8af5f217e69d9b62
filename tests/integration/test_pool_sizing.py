#!/usr/bin/python3
"""Pool sizing in transaction mode: min_pool_size opens (and keeps) idle server connections,
pool_size caps them however many clients wait, queued clients all get their turn,
reserve_pool_size adds a server once a client has waited timeouts.reserve_pool,
timeouts.query_wait ends a wait with an error, and max_db_connections caps the servers of a
database over all its pools.

No test asserts a duration: only completion, errors and backend counts (pg_stat_activity)."""

import time

from lib import (BackendSampler, Background, MONITOR_APP, PGHOST, PGPORT, Pgring, admin_rows,
                backend_pids, check, check_eq, connect, count_backends, error_fields_in, log, login, monitor_connect, pool_config,
                query, query_one, run_clients, run_tests, send_query_collect, wait_no_backends,
                wait_until)

DB, USER = "app", "app"


def app_connect(p, user=USER, **kwargs):
    kwargs.setdefault("connect_timeout", 60)
    return connect(p.port, db=DB, user=user, **kwargs)


def one_shot(p, sql):
    conn = app_connect(p)
    try:
        return query_one(conn, sql)
    finally:
        conn.close()


def test_min_pool_size_opens_servers():
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    with Pgring(pool_config(pool_size=5, min_pool_size=2)) as p:
        # The pool (app, app) exists once its first client logs in (with trust and no users:
        # section pgring cannot know the user before).
        a = app_connect(p)
        check_eq(query_one(a, "SELECT 1"), 1)
        wait_until(lambda: count_backends(monitor, DB, USER) >= 2, 10,
                   what="min_pool_size 2 server connections")
        # A second on: still exactly 2 (no more opened, none dropped), at every sample.
        with BackendSampler(DB, USER) as sampler:
            time.sleep(1.0)
        sampler.check_max(2)
        check_eq(min(sampler.samples), 2, "server connections with one idle client")
        a.close()
        with BackendSampler(DB, USER) as sampler:
            time.sleep(1.0)
        sampler.check_max(2)
        check_eq(min(sampler.samples), 2, "server connections kept after the client left")
    monitor.close()


def test_forced_user_pool_opens_at_start_and_is_shared():
    """A database with a forced user has one pool whoever logs in (as PgBouncer): min_pool_size
    opens it before the first client, pool_size counts its servers once, and each client still
    counts against its own user's max_user_client_connections."""
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    databases = {"app": {"host": PGHOST, "port": PGPORT, "user": "app", "min_pool_size": 2,
                         "pool_size": 2}}
    config = pool_config(databases=databases, max_user_client_connections=1,
                         users={"app": {}, "postgres": {}, "pgring_plain": {},
                                "pgring_admin": {}})
    with Pgring(config) as p:
        wait_until(lambda: count_backends(monitor, DB, "app") == 2, 15,
                   what="min_pool_size 2 server connections before any client")
        # Three client users, one pool of the forced user: never more than pool_size servers.
        with BackendSampler(DB) as sampler:
            def client(i):
                name = ["app", "postgres", "pgring_plain"][i]
                conn = app_connect(p, user=name)
                try:
                    conn.autocommit = False
                    check_eq(query_one(conn, "SELECT current_user FROM pg_sleep(0.2)"), "app")
                    conn.commit()
                finally:
                    conn.close()
            errors = run_clients(client, 3, timeout=60)
        check(not errors, "client errors:\n" + "\n".join(errors))
        sampler.check_max(2, "server connections of the forced user's one pool")
        pools = [r for r in admin_rows(p.port, "SHOW POOLS") if r["database"] == DB]
        check_eq([r["user"] for r in pools], ["app"], "SHOW POOLS: one pool, the forced user's")
        # max_user_client_connections 1 is per client user: a second "postgres" client is
        # refused while the first is connected, an "app" client is not.
        first = app_connect(p, user="postgres")
        try:
            rc = None
            try:
                app_connect(p, user="postgres").close()
            except Exception as e:  # noqa: BLE001 - the server's error is the point
                rc = str(e)
            check(rc is not None and "max_user_client_connections" in rc,
                  f"a second client of user postgres: {rc}")
            other = app_connect(p, user="app")
            check_eq(query_one(other, "SELECT 1"), 1)
            other.close()
        finally:
            first.close()
    monitor.close()


def test_min_pool_size_replaces_lost_servers():
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    with Pgring(pool_config(pool_size=5, min_pool_size=2)) as p:
        a = app_connect(p)
        check_eq(query_one(a, "SELECT 1"), 1)
        wait_until(lambda: count_backends(monitor, DB, USER) == 2, 10,
                   what="min_pool_size 2 server connections")
        old = backend_pids(monitor, DB, USER)
        for pid in old:
            query(monitor, "SELECT pg_terminate_backend(%s)", (pid,))

        def replaced():
            pids = backend_pids(monitor, DB, USER)
            return len(pids) == 2 and not (pids & old)
        wait_until(replaced, 15, interval=0.2,
                   what="two new server connections after both were terminated")
        # The client is fine too (the pool hands it a live server).
        check_eq(wait_until(lambda: query_one(a, "SELECT 2"), 10, what="a query after the "
                                                                       "terminations"), 2)
        a.close()
    monitor.close()


def test_pool_size_respected_with_many_waiting_clients():
    clients, pool_size = 20, 4
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    monitor.close()
    with Pgring(pool_config(pool_size=pool_size)) as p, BackendSampler(DB, settle=True) as sampler:
        def client(i):
            conn = app_connect(p)
            try:
                for j in range(3):
                    conn.autocommit = False
                    check_eq(query_one(conn, "SELECT %s::int FROM pg_sleep(0.1)", (i * 10 + j,)),
                             i * 10 + j, f"client {i} round {j}")
                    conn.commit()
                    conn.autocommit = True
            finally:
                conn.close()

        errors = run_clients(client, clients, timeout=120)
    log(f"{clients} clients on pool_size {pool_size}: max {sampler.max} backends over "
        f"{len(sampler.samples)} samples")
    check(not errors, "client errors:\n" + "\n".join(errors))
    sampler.check_max(pool_size)
    check_eq(sampler.max, pool_size, "server connections in use with 20 clients queued")


def test_queued_clients_all_complete():
    # pool_size 1, five clients each wanting the one server for a pg_sleep(0.2) transaction.
    with Pgring(pool_config(pool_size=1)) as p, BackendSampler(DB, settle=True) as sampler:
        conns = [app_connect(p) for _ in range(5)]
        finished = []

        def client(i):
            conn = conns[i]
            conn.autocommit = False
            query(conn, "SELECT pg_sleep(0.2)")
            pid = query_one(conn, "SELECT pg_backend_pid()")
            conn.commit()
            finished.append((i, pid))

        errors = run_clients(client, len(conns), timeout=60)
        for conn in conns:
            conn.close()
    check(not errors, "client errors:\n" + "\n".join(errors))
    check_eq(sorted(i for i, _ in finished), list(range(5)), "clients that finished")
    check_eq(len({pid for _, pid in finished}), 1, "backends used with pool_size 1")
    sampler.check_max(1)


def test_reserve_pool():
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    config = pool_config(pool_size=1, reserve_pool_size=1,
                         timeouts={"reserve_pool": "500ms", "query_wait": "30s"})
    with Pgring(config) as p:
        holder = app_connect(p)
        holder.autocommit = False
        held = query_one(holder, "SELECT pg_backend_pid()")  # the only regular server, held
        # The waiter's query counts the backends while it runs: the held one and its own.
        waiter = Background(lambda: query(app_connect(p), (
            "SELECT pg_backend_pid(), (SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND datname = %s AND usename = %s "
            "AND application_name IS DISTINCT FROM %s)"), (DB, USER, MONITOR_APP))[0])
        # The waiter gets the reserve server (before the holder commits).
        pid, backends = waiter.result(20, "the query of the client waiting for the reserve pool")
        check(pid != held, f"the waiting client ran on the held backend {held}")
        check_eq(backends, 2, "server connections while the reserve server runs a query")
        check(count_backends(monitor, DB, USER) <= 2, "more than pool_size + reserve servers")
        check_eq(query_one(holder, "SELECT pg_backend_pid()"), held, "the holder's backend")
        holder.commit()
        # A third client while nothing is held: no third server.
        check_eq(one_shot(p, "SELECT 1"), 1, "a query with the pool free")
        check(count_backends(monitor, DB, USER) <= 2, "more than pool_size + reserve servers")
        holder.close()
    monitor.close()


def test_query_wait_timeout():
    config = pool_config(pool_size=1, timeouts={"query_wait": "1s"})
    with Pgring(config) as p:
        holder = app_connect(p)
        holder.autocommit = False
        check_eq(query_one(holder, "SELECT 1"), 1)  # holds the only server
        r = login(p.port, user=USER, db=DB, timeout=30)
        started = time.monotonic()
        msgs, closed = send_query_collect(r, "SELECT 'should have waited'")
        waited = time.monotonic() - started
        r.close()
        errors = error_fields_in(msgs)
        log(f"query_wait 1s: after {waited:.1f}s got {[k for k, _ in msgs]}, closed={closed}, "
            f"errors {errors}")
        check(not any(k == b"D" for k, _ in msgs),
              "the query ran although the only server was held")
        check(errors, f"no ErrorResponse for the query_wait timeout: {[k for k, _ in msgs]}")
        check_eq(errors[0].get("C"), "57014", f"SQLSTATE of the query_wait timeout "
                                              f"({errors[0]})")
        check(errors[0].get("M", "").startswith("pgring: "), f"error: {errors[0]}")
        holder.commit()
        check_eq(query_one(holder, "SELECT 2"), 2, "the holder after the timeout")
        holder.close()


def test_max_db_connections():
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    monitor.close()
    # Two pools on database app (users app and postgres, both trust on the test server).
    config = pool_config(pool_size=5, max_db_connections=2,
                         users={"app": {}, "postgres": {}})
    with Pgring(config) as p, BackendSampler(DB, settle=True) as sampler:
        def client(i):
            conn = app_connect(p, user="app" if i % 2 == 0 else "postgres")
            try:
                conn.autocommit = False
                check_eq(query_one(conn, "SELECT %s::int FROM pg_sleep(0.3)", (i,)), i)
                conn.commit()
                conn.autocommit = True
                check_eq(query_one(conn, "SELECT current_user"),
                         "app" if i % 2 == 0 else "postgres")
            finally:
                conn.close()

        errors = run_clients(client, 6, timeout=60)
    log(f"max_db_connections 2: max {sampler.max} backends on database app")
    check(not errors, "client errors:\n" + "\n".join(errors))
    sampler.check_max(2, "server connections over both pools")


if __name__ == "__main__":
    run_tests(globals())
