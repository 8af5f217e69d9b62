#!/usr/bin/python3
"""/metrics, /health and /ready (docs/operations.md): counters move under a pgbench load in
transaction mode, the exposition passes `promtool check metrics`, the statement cache counters
move with pgbench -M prepared, and disconnects are counted by reason."""

import os
import socket
import re
import shutil
import subprocess
import tempfile
import time

from lib import (Background, PGHOST, PGPORT, Pgring, Relay, check, check_eq, connect, expect_error,
                free_port, http_get, log, login, login_error, metric_sum, parse_metrics, pgbench,
                pool_config, query, query_one, run_tests, scrape, skip_test, wait_until)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def bench_script(text):
    """A pgbench script file (no tables needed, so no pgbench -i)."""
    d = tempfile.mkdtemp(prefix="pgring-it-bench-")
    path = os.path.join(d, "script.sql")
    with open(path, "w") as f:
        f.write(text)
    return path


SIMPLE_SCRIPT = "\\set x random(1, 100000)\nSELECT :x::int + 1;\nBEGIN;\nSELECT :x::int;\nEND;\n"
PREPARED_SCRIPT = "\\set x random(1, 100000)\nSELECT :x::int + 1;\nSELECT :x::int * 2, 'b';\n"


def run_bench(port, script, seconds, clients=4, mode="simple"):
    rc, out, err = pgbench(port, ["-n", "-c", str(clients), "-j", "2", "-T", str(seconds),
                                  "-M", mode, "-f", script], timeout=seconds + 120)
    check_eq(rc, 0, f"pgbench exit status\n{out}\n{err}")
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    check(processed and int(processed.group(1)) > 0, f"pgbench processed nothing:\n{out}")
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if failed:
        check_eq(int(failed.group(1)), 0, f"pgbench failed transactions\n{out}")
    return int(processed.group(1))


def test_counters_move_during_pgbench():
    mport = free_port()
    with Pgring(pool_config(pool_mode="transaction", pool_size=4, metrics_port=mport)) as p:
        script = bench_script(SIMPLE_SCRIPT)
        bench = Background(lambda: run_bench(p.port, script, 6))
        # First scrape once the load has started, second one a while later, both during it.
        wait_until(lambda: (metric_sum(scrape(mport), "pgring_transactions_total",
                                       database="pgring_test") or 0) > 0,
                   30, interval=0.1, what="pgring_transactions_total > 0 under pgbench")
        first = scrape(mport)
        time.sleep(1.5)
        check(not bench.done(), "pgbench finished before the second scrape")
        second = scrape(mport)
        processed = bench.result(60, "pgbench")
        for name in ("pgring_transactions_total", "pgring_queries_total",
                     "pgring_received_bytes_total", "pgring_sent_bytes_total"):
            a = metric_sum(first, name, database="pgring_test", user="postgres")
            b = metric_sum(second, name, database="pgring_test", user="postgres")
            log(f"{name}: {a} -> {b}")
            check(a is not None and b is not None, f"{name} missing from /metrics")
            check(b > a, f"{name} did not increase during pgbench: {a} -> {b}")
        final = scrape(mport)
        transactions = metric_sum(final, "pgring_transactions_total", database="pgring_test")
        queries = metric_sum(final, "pgring_queries_total", database="pgring_test")
        log(f"pgbench processed {processed} transactions (4 statements each); pgring counted "
            f"{transactions} transactions, {queries} queries")
        # Each run of the script: one implicit and one explicit transaction, 4 queries.
        check(transactions >= 2 * processed,
              f"transactions_total {transactions} < 2 x {processed}")
        check(queries >= 4 * processed, f"queries_total {queries} < 4 x {processed}")
        # Histograms and gauges are there too.
        check((metric_sum(final, "pgring_query_seconds_count", database="pgring_test") or 0) > 0,
              "pgring_query_seconds_count is 0")
        check(metric_sum(final, "pgring_servers", database="pgring_test") is not None,
              "pgring_servers missing")
        check(metric_sum(final, "pgring_clients", database="pgring_test",
                         state="active") is not None, "pgring_clients{state=active} missing")


def promtool_check(text):
    if not os.access(PROMTOOL, os.X_OK):
        skip_test("promtool not installed (Debian package prometheus)")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).strip()


def test_exposition_passes_promtool():
    mport = free_port()
    with Pgring(pool_config(pool_mode="transaction", pool_size=2, metrics_port=mport)) as p:
        # Traffic of every kind first: queries, an error, a wrong database, a prepared statement.
        c = connect(p.port)
        check_eq(query_one(c, "SELECT 1"), 1)
        expect_error(lambda: query(c, "SELECT 1/0"), "22012")
        login_error(p.port, db="no_such_db")
        run_bench(p.port, bench_script(PREPARED_SCRIPT), 1, clients=2, mode="prepared")
        text = scrape(mport)
        c.close()
        rc, out = promtool_check(text)
        log(f"promtool check metrics: status {rc}: {out or '(no output)'}")
        check_eq(rc, 0, f"promtool check metrics failed:\n{out}")
        names = {n for n, _, _ in parse_metrics(text)}
        for n in names:
            check(n.startswith("pgring_"), f"metric {n} does not start with pgring_")
        # (label "class" is a Python keyword: looked up by hand)
        errors = sum(v for n, l, v in parse_metrics(text)
                     if n == "pgring_errors_total" and l.get("class") == "22")
        check(errors >= 1, f"pgring_errors_total{{class=\"22\"}} is {errors}")
        status, _ = http_get(mport, "/metrics")
        check_eq(status, 200)


def test_health_and_ready():
    mport = free_port()
    with Pgring(pool_config(metrics_port=mport)) as p:
        status, body = http_get(mport, "/health")
        check_eq((status, body.strip()), (200, "ok"), "/health")
        status, body = http_get(mport, "/ready")
        check_eq(status, 200, f"/ready ({body!r})")
        status, _ = http_get(mport, "/nonexistent")
        check_eq(status, 404, "an unknown path")
        check(p.alive(), "pgring died answering HTTP")
    # Not ready while the only database's server is known to be down.
    closed_port = free_port()
    config = pool_config(metrics_port=(mport := free_port()),
                        databases={"down": {"host": "127.0.0.1", "port": closed_port}},
                        timeouts={"server_connect": "2s", "server_login_retry": "30s",
                                  "query_wait": "3s"})
    with Pgring(config) as p:
        check_eq(http_get(mport, "/ready")[0], 200, "/ready before any server was tried")
        e = login_error(p.port, db="down")
        check_eq(e.sqlstate, "08006", f"login to a database whose server is down ({e})")
        status, body = http_get(mport, "/ready")
        log(f"/ready with the only server down: {status} {body.strip()!r}")
        check_eq(status, 503, "/ready with the only server down")
        status, body = http_get(mport, "/health")
        check_eq((status, body.strip()), (200, "ok"), "/health with the server down")
        # pgring_disconnects_total{reason="server_unreachable"} counted it.
        n = metric_sum(scrape(mport), "pgring_disconnects_total", reason="server_unreachable")
        check(n is not None and n >= 1, f"disconnects{{reason=server_unreachable}} = {n}")


def test_ready_again_without_a_client():
    # A readiness gate sends no traffic to a pod that is not ready: the pool whose server was
    # down must find out by itself that it answers again (no client login to clear it).
    closed_port = free_port()
    config = pool_config(metrics_port=(mport := free_port()),
                         databases={"down": {"host": "127.0.0.1", "port": closed_port,
                                             "dbname": "pgring_test"}},
                         timeouts={"server_connect": "2s", "server_login_retry": "1s",
                                   "query_wait": "2s"})
    with Pgring(config) as p:
        e = login_error(p.port, db="down")
        check_eq(e.sqlstate, "08006", f"login to a database whose server is down ({e})")
        check_eq(http_get(mport, "/ready")[0], 503, "/ready with the only server down")
        listener = socket.create_server(("127.0.0.1", closed_port))
        relay = Relay(listener)  # the server is back: PostgreSQL behind that port
        try:
            wait_until(lambda: http_get(mport, "/ready")[0] == 200, 10,
                       what="/ready once the server answers again, with no client")
            check(relay.connections >= 1, "no server connection was tried")
            # And the pool serves: the next client logs in and queries.
            c = connect(p.port, db="down")
            check_eq(query_one(c, "SELECT current_database()"), "pgring_test")
            c.close()
        finally:
            relay.close()


def test_statement_cache_counters_with_prepared():
    mport = free_port()
    with Pgring(pool_config(pool_mode="transaction", pool_size=2, metrics_port=mport)) as p:
        before = scrape(mport)
        check_eq(metric_sum(before, "pgring_statement_cache_hits_total"), 0.0, "hits at start")
        processed = run_bench(p.port, bench_script(PREPARED_SCRIPT), 3, clients=4,
                              mode="prepared")
        after = scrape(mport)
        values = {n: metric_sum(after, n) for n in (
            "pgring_statement_cache_hits_total", "pgring_statement_cache_parses_total",
            "pgring_statement_cache_injected_total", "pgring_statement_cache_entries")}
        log(f"pgbench -M prepared: {processed} transactions; {values}")
        check(values["pgring_statement_cache_hits_total"] > 0,
              f"pgring_statement_cache_hits_total is {values['pgring_statement_cache_hits_total']}")
        check(values["pgring_statement_cache_parses_total"] > 0, "no Parse sent to a server")
        check(values["pgring_statement_cache_entries"] >= 2,
              "the script's 2 statements are not in the registry")
        # 4 clients x 2 statements, on at most 2 servers: most Parses are answered from cache.
        check(values["pgring_statement_cache_parses_total"] <= 4 * 2 + 2 * 2,
              f"too many Parses sent: {values}")


def test_ring_and_socket_counters():
    # The counters a sidecar's CPU is explained by: wake-ups (io_uring_enter), operations and
    # completions, and sends per peer. One Query per round trip is one send each way: pgring
    # writes a message it forwards in one send, not in pieces.
    mport = free_port()
    with Pgring(pool_config(pool_mode="transaction", pool_size=1, metrics_port=mport)) as p:
        conn = connect(p.port)
        conn.autocommit = True
        query_one(conn, "SELECT 1")  # the pool's server is open and linked once
        names = ("pgring_io_uring_enters_total", "pgring_io_uring_sqes_total",
                 "pgring_io_uring_cqes_total")

        def counters():
            text = scrape(mport)
            values = {n: metric_sum(text, n) for n in names}
            for peer in ("client", "server"):
                values[f"sends_{peer}"] = metric_sum(text, "pgring_socket_sends_total", peer=peer)
                values[f"receives_{peer}"] = metric_sum(text, "pgring_socket_receives_total",
                                                        peer=peer)
            return values
        before = counters()
        n = 200
        for i in range(n):
            check_eq(query_one(conn, f"SELECT {i}"), i)
        after = counters()
        conn.close()
        delta = {k: after[k] - before[k] for k in before}
        log(f"{n} round trips: {delta}")
        check(n <= delta["sends_server"] <= n + 2, f"sends to the server: {delta}")
        check(n <= delta["receives_client"] <= n + 2, f"receives from the client: {delta}")
        # A reply may arrive in more than one piece; each piece is sent on at most once. The
        # scrapes themselves are HTTP, not client sends.
        check(n <= delta["sends_client"] <= delta["receives_server"] + 2,
              f"sends to the client: {delta}")
        check(delta["pgring_io_uring_enters_total"] >= n, f"io_uring_enter calls: {delta}")
        check(delta["pgring_io_uring_cqes_total"] >= 2 * n, f"completions: {delta}")
        check(delta["pgring_io_uring_sqes_total"] > 0, f"operations: {delta}")


def test_disconnects_by_reason():
    mport = free_port()
    config = {
        "auth": {"method": "scram-sha-256"},
        "users": {"app": {"password": "secret"}},
        "defaults": {"pool_mode": "transaction", "pool_size": 2},
        "databases": {"app": {"host": PGHOST, "port": PGPORT}},
        "metrics": {"listen": f"127.0.0.1:{mport}"},
    }
    with Pgring(config) as p:
        def reason(name):
            return metric_sum(scrape(mport), "pgring_disconnects_total", reason=name)
        check_eq(reason("auth_failed"), 0.0, "auth_failed at start")
        e = login_error(p.port, user="app", db="app", password="wrong")
        check_eq(e.sqlstate, "28P01", f"wrong password ({e})")
        check_eq(reason("auth_failed"), 1.0, "disconnects{reason=auth_failed} after one bad "
                                             "password")
        e = login_error(p.port, user="app", db="app", password="wrong")
        check_eq(reason("auth_failed"), 2.0, "disconnects{reason=auth_failed} after two")
        e = login_error(p.port, user="nobody", db="app", password="x")
        check(e.sqlstate in ("28000", "28P01"), f"unknown user ({e})")
        e = login_error(p.port, user="app", db="no_such_db", password="secret")
        check_eq(e.sqlstate, "3D000", f"unknown database ({e})")
        check_eq(reason("unknown_database"), 1.0, "disconnects{reason=unknown_database}")
        # A good login and a polite goodbye.
        c = login(p.port, user="app", db="app", password="secret")
        check_eq(c.simple_query("SELECT 1"), [["1"]])
        c.terminate()
        wait_until(lambda: reason("client_terminate") == 1.0, 5,
                   what="disconnects{reason=client_terminate} = 1")
        check_eq(reason("auth_failed"), 2.0, "auth_failed after a good login")


if __name__ == "__main__":
    run_tests(globals())
