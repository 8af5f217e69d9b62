#!/usr/bin/python3
"""Shutdown (docs/operations.md): SIGTERM stops accepting, closes idle clients right away with
57P01, lets open transactions finish within timeouts.shutdown (then closes those clients too)
and exits 0; a transaction still open at the deadline is cut off and rolled back; SIGINT exits
promptly, even with a query running."""

import signal
import time

from lib import (Pgring, backends, check, check_eq, direct_connect, expect_closed_with, log, login,
                monitor_connect, pool_config, port_accepts, query, query_one, read_close,
                run_tests, send_query_collect, still_open, wait_exit, wait_until)


# Every test here stops pgring itself (SIGTERM/SIGINT) with clients connected on purpose and
# checks that each of them is closed with 57P01; the leak check needs the running process, so
# it is skipped, and what the shutdown left behind shows in pgring's log instead ("shutdown:
# stopping with ... left", checked by the fixture).
SHUTDOWN_TEST = "the test stops pgring itself, with clients connected on purpose"


def with_table(fn):
    setup = direct_connect()
    query(setup, "DROP TABLE IF EXISTS pgring_shutdown_t")
    query(setup, "CREATE TABLE pgring_shutdown_t(id int)")
    try:
        fn(setup)
    finally:
        query(setup, "DROP TABLE IF EXISTS pgring_shutdown_t")
        setup.close()


def sigterm_with_open_transaction(pool_mode):
    def body(setup):
        config = pool_config(pool_mode=pool_mode, pool_size=3, timeouts={"shutdown": "10s"})
        with Pgring(config, skip_leak_check=SHUTDOWN_TEST) as p:
            busy = login(p.port, timeout=30)
            busy.simple_query("BEGIN")
            busy.simple_query("INSERT INTO pgring_shutdown_t VALUES (1)")
            idle = login(p.port, timeout=30)
            check_eq(idle.simple_query("SELECT 1"), [["1"]])

            p.proc.send_signal(signal.SIGTERM)
            # The idle client goes right away, while the transaction is still open.
            started = time.monotonic()
            expect_closed_with(idle, "57P01", timeout=5, what="an idle client at SIGTERM")
            log(f"{pool_mode}: idle client closed {time.monotonic() - started:.2f}s after SIGTERM")
            idle.close()
            check(p.alive(), "pgring exited with a transaction still open")
            check(not port_accepts(p.port), "pgring still accepts connections after SIGTERM")
            # The transaction goes on and commits.
            check(still_open(busy, 0.5), "the client in a transaction was closed at SIGTERM")
            check_eq(busy.simple_query("INSERT INTO pgring_shutdown_t VALUES (2)"), [],
                     "a statement inside the transaction after SIGTERM")
            check_eq(busy.simple_query("SELECT count(*) FROM pgring_shutdown_t"), [["2"]])
            check_eq(busy.simple_query("COMMIT"), [], "COMMIT after SIGTERM")
            # Then that client is closed too, and pgring exits 0.
            expect_closed_with(busy, "57P01", timeout=5, what="the client after its COMMIT")
            busy.close()
            status = wait_exit(p, 10)
            check_eq(status, 0, "pgring's exit status after SIGTERM")
            check_eq(query_one(setup, "SELECT count(*) FROM pgring_shutdown_t"), 2,
                     "rows committed during the graceful shutdown")
    with_table(body)


def test_sigterm_transaction_mode():
    sigterm_with_open_transaction("transaction")


def test_sigterm_session_mode():
    sigterm_with_open_transaction("session")


def test_sigterm_deadline_cuts_off_open_transaction():
    def body(setup):
        config = pool_config(pool_mode="transaction", pool_size=2, timeouts={"shutdown": "1s"})
        with Pgring(config, skip_leak_check=SHUTDOWN_TEST) as p:
            r = login(p.port, timeout=30)
            r.simple_query("BEGIN")
            r.simple_query("INSERT INTO pgring_shutdown_t VALUES (1)")
            p.proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            expect_closed_with(r, "57P01", timeout=15,
                               what="a client still in a transaction at the shutdown deadline")
            log(f"transaction cut off {time.monotonic() - started:.2f}s after SIGTERM "
                f"(shutdown 1s)")
            r.close()
            check_eq(wait_exit(p, 15), 0, "pgring's exit status")
        # The server connection was closed with the transaction open: rolled back.
        check_eq(query_one(setup, "SELECT count(*) FROM pgring_shutdown_t"), 0,
                 "rows of the cut-off transaction")
    with_table(body)


def test_sigint_exits_promptly():
    config = pool_config(pool_mode="transaction", pool_size=3, timeouts={"shutdown": "30s"})
    with Pgring(config, skip_leak_check=SHUTDOWN_TEST) as p:
        in_xact = login(p.port, timeout=30)
        in_xact.simple_query("BEGIN")
        running = login(p.port, timeout=30)
        sql = b"SELECT pg_sleep(20) /* sigint-sleep */\0"
        running.send(b"Q" + (len(sql) + 4).to_bytes(4, "big") + sql)
        idle = login(p.port, timeout=30)
        monitor = monitor_connect()
        wait_until(lambda: backends(monitor, state="active", query_like="%sigint-sleep%"), 10,
                   what="the pg_sleep(20) to run on the server")
        monitor.close()
        started = time.monotonic()
        p.proc.send_signal(signal.SIGINT)
        status = wait_exit(p, 10)
        elapsed = time.monotonic() - started
        log(f"SIGINT: exit status {status} after {elapsed:.2f}s")
        check_eq(status, 0, "pgring's exit status after SIGINT")
        for name, conn in (("in a transaction", in_xact), ("running a query", running),
                           ("idle", idle)):
            msgs, errors = read_close(conn, 5)
            log(f"client {name}: {[k for k, _ in msgs]} {errors}")
            check(errors, f"the client {name} was closed without an ErrorResponse")
            check_eq(errors[-1].get("C"), "57P01", f"SQLSTATE for the client {name}")
            conn.close()
        check(not port_accepts(p.port), "the port still accepts connections")
    # PostgreSQL notices the closed connection only after pg_sleep: end that backend now so
    # it does not linger into other tests.
    monitor = direct_connect()
    for b in backends(monitor, query_like="%sigint-sleep%"):
        query(monitor, "SELECT pg_terminate_backend(%s)", (b.pid,))
    monitor.close()


def test_new_connections_refused_during_graceful_shutdown():
    config = pool_config(pool_mode="transaction", pool_size=2, timeouts={"shutdown": "10s"})
    with Pgring(config, skip_leak_check=SHUTDOWN_TEST) as p:
        r = login(p.port, timeout=30)
        r.simple_query("BEGIN")
        p.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: not port_accepts(p.port), 10,
                   what="pgring to stop accepting connections after SIGTERM")
        check(p.alive(), "pgring exited with a transaction open")
        msgs, closed = send_query_collect(r, "SELECT 1")
        check(not closed and any(k == b"D" for k, _ in msgs),
              f"a query in the open transaction during shutdown: {[k for k, _ in msgs]}")
        check_eq(r.simple_query("ROLLBACK"), [], "ROLLBACK during shutdown")
        expect_closed_with(r, "57P01", timeout=5, what="the client after ROLLBACK")
        r.close()
        check_eq(wait_exit(p, 10), 0, "exit status")


if __name__ == "__main__":
    run_tests(globals())
