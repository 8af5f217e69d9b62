#!/usr/bin/python3
"""Query families (stats.fingerprints, SHOW QUERIES): `... WHERE id = 5` and `... id = 7` are
one row; the same shape sent with the extended protocol (unnamed, and a named prepared
statement executed again without its Parse) joins it; the time a client waited for a server
is counted with its query's family; under 10,000 distinct shapes the number of families stays
within the bound, the rest in one "(other)" row. Each family counts rows, bytes, errors by
SQLSTATE class and a latency histogram (p99), SHOW QUERIES orders by any of them, /metrics
exports the top families with a bounded label set, and log.slow_query logs a slow call with its
family and durations, never its parameter values."""

import json
import os
import shutil
import subprocess
import time

from lib import (SYNC_MESSAGE, Background, Pgring, admin_psql, admin_rows,
                 bind_message, check, check_eq, connect, direct_connect, execute_message,
                 expect_error, free_port, http_get, log, login, metric_sum, parse_message,
                 parse_metrics, pool_config, query, query_one, read_until_ready, run_tests)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
FAMILY = "select * from query_stats_t where id = $1"


def config(limit):
    c = pool_config(pool_mode="transaction", pool_size=1)
    c["stats"] = {"fingerprints": limit}
    return c


def families(port, database="pgring_test"):
    return [r for r in admin_rows(port, "SHOW QUERIES") if r["database"] == database]


def test_one_family_for_one_shape():
    setup = direct_connect()
    query(setup, "DROP TABLE IF EXISTS query_stats_t; CREATE TABLE query_stats_t (id int); "
                 "INSERT INTO query_stats_t SELECT generate_series(1, 10)")
    setup.close()
    with Pgring(config(50)) as p:
        c = connect(p.port)
        query(c, "SELECT * FROM query_stats_t WHERE id = 5")
        query(c, "select *   from query_stats_t\n where id=7 -- again")
        c.close()
        rows = [r for r in families(p.port) if r["query"] == FAMILY]
        check_eq(len(rows), 1, f"rows of the family: {families(p.port)}")
        check_eq(rows[0]["calls"], "2", "calls after two simple queries")
        # The extended protocol: an unnamed statement, then a named one executed twice, the
        # second time without its Parse.
        r = login(p.port)
        r.send(parse_message("SELECT * FROM query_stats_t WHERE id = $1") +
               bind_message(["1"]) + execute_message() + SYNC_MESSAGE)
        read_until_ready(r)
        r.send(parse_message("SELECT * FROM query_stats_t WHERE id = $1", name="s1") +
               bind_message(["2"], statement="s1") + execute_message() + SYNC_MESSAGE)
        read_until_ready(r)
        r.send(bind_message(["3"], statement="s1") + execute_message() + SYNC_MESSAGE)
        read_until_ready(r)
        r.terminate()
        row = [x for x in families(p.port) if x["query"] == FAMILY][0]
        log(f"SHOW QUERIES row: {row}")
        check_eq(row["calls"], "5", "calls after 2 simple, 1 unnamed and 2 named executions")
        check(float(row["total_ms"]) > 0, f"time in PostgreSQL: {row}")
        # One row matched each of the five calls; the answers' bytes are counted.
        check_eq(row["rows"], "5", "rows of the five calls")
        check(int(row["bytes"]) > 0 and row["errors"] == "0", f"bytes and errors: {row}")


def test_wait_time_and_the_bound():
    with Pgring(config(20)) as p:
        holder = connect(p.port)
        holder.autocommit = False
        query_one(holder, "SELECT 1")  # holds the pool's only server
        bg = Background(lambda: query_one(connect(p.port), "SELECT 'waited'::text"))
        time.sleep(0.4)
        holder.commit()
        check_eq(bg.result(10, "the waiting query"), "waited")
        holder.close()
        row = [r for r in families(p.port) if r["query"] == "select $1 :: text"]
        check_eq(len(row), 1, f"the waiting query's family: {families(p.port)}")
        check(float(row[0]["wait_ms"]) >= 300, f"its wait for a server: {row[0]}")
        # A family that costs time, then 10,000 distinct shapes: at most 20 families on this
        # reactor, the rest in "(other)"; the costly family keeps its row (the least costly
        # give way to new ones).
        c = connect(p.port)
        query(c, "SELECT pg_sleep(0.05)")
        with c.cursor() as cur:
            for i in range(10000):
                cur.execute(f"SELECT {i} AS column_{i}")
        c.close()
        rows = families(p.port)
        other = [r for r in rows if r["query"].startswith("(other")]
        log(f"{len(rows)} rows after 10,000 distinct shapes; other: {other}")
        check(len(rows) <= 21, f"{len(rows)} rows for a bound of 20")
        check(other and int(other[0]["calls"]) >= 9900, f"the (other) row: {other}")
        check([r for r in rows if r["query"].startswith("select pg_sleep")],
              f"the costly family gave way to one-off texts: {rows}")


def test_errors_rows_p99_order_and_metrics():
    mport = free_port()
    c = config(50)
    c["metrics"] = {"listen": f"127.0.0.1:{mport}"}
    with Pgring(c) as p:
        conn = connect(p.port)
        conn.autocommit = True
        for _ in range(3):
            expect_error(lambda: query(conn, "SELECT 1/0"), "22012")
        expect_error(lambda: query(conn, "SELECT * FROM no_such_table_qs"), "42P01")
        query(conn, "SELECT pg_sleep(0.3)")
        check_eq(len(query(conn, "SELECT generate_series(1, 40)")), 40)
        conn.close()
        # A LATIN1 client: its text is not UTF-8, its family's text is made so ('?' for what
        # is not), and /metrics stays valid (promtool below).
        latin1 = connect(p.port)
        latin1.set_client_encoding("LATIN1")
        check_eq(query(latin1, 'SELECT 7 AS "größe"'), [(7,)], "a LATIN1 query")
        latin1.close()
        rows = {r["query"]: r for r in families(p.port)}
        log(f"SHOW QUERIES: {list(rows.values())}")
        division = rows.get("select $1 / $2")
        check(division is not None, f"the division's family: {list(rows)}")
        check_eq((division["calls"], division["errors"]), ("3", "3"), "three calls, three errors")
        sleep = [r for q, r in rows.items() if q.startswith("select pg_sleep")]
        check(sleep and float(sleep[0]["p99_ms"]) >= 290 and
              float(sleep[0]["p99_ms"]) <= float(sleep[0]["mean_ms"]) + 0.001 and
              float(sleep[0]["mean_ms"]) >= 290,
              f"p99 and mean of one 0.3 s call: {sleep}")
        series = [r for q, r in rows.items() if q.startswith("select generate_series")]
        check(series and series[0]["rows"] == "40", f"rows of generate_series: {series}")
        # Ordered by the column asked for, largest first.
        check('select $1 as "gr??e"' in rows, f"the LATIN1 family's text: {list(rows)}")
        check_eq(admin_rows(p.port, "SHOW QUERIES errors")[0]["query"], "select $1 / $2",
                 "first row of SHOW QUERIES errors")
        check(admin_rows(p.port, "SHOW QUERIES p99")[0]["query"].startswith("select pg_sleep"),
              "first row of SHOW QUERIES p99")
        check_eq(admin_rows(p.port, "SHOW QUERIES rows")[0]["rows"], "40",
                 "first row of SHOW QUERIES rows")
        rc, _, err = admin_psql(p.port, "SHOW QUERIES sideways")
        check(rc != 0 and "orders by total" in err, f"an unknown order: {rc} {err}")
        # /metrics: the same families, labelled by fingerprint; the text once, in _info.
        status, text = http_get(mport, "/metrics")
        check_eq(status, 200)
        fp = division["id"]
        labels = dict(database="pgring_test", fingerprint=fp)
        check_eq(metric_sum(text, "pgring_query_family_seconds_count", **labels), 3.0,
                 "calls of the division in /metrics")
        check_eq(metric_sum(text, "pgring_query_family_errors_total", **labels, **{"class": "22"}),
                 3.0, "its errors of class 22")
        info = [l for n, l, v in parse_metrics(text) if n == "pgring_query_family_info"
                and l.get("fingerprint") == fp]
        check(info and info[0]["query"] == "select $1 / $2", f"the family's text sample: {info}")
        check_eq(metric_sum(text, "pgring_query_family_rows_total", database="pgring_test",
                            fingerprint=series[0]["id"]), 40.0, "rows in /metrics")
        if os.access(PROMTOOL, os.X_OK):
            r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                               text=True, timeout=60)
            check_eq(r.returncode, 0, f"promtool check metrics: {r.stdout}{r.stderr}")
    # stats.fingerprint_metrics bounds the exported families (the most time first).
    c["stats"]["fingerprint_metrics"] = 2
    with Pgring(c) as p:
        conn = connect(p.port)
        for i in range(30):
            query(conn, f"SELECT {i} AS c{i}")
        query(conn, "SELECT pg_sleep(0.05)")
        conn.close()
        _, text = http_get(mport, "/metrics")
        ids = {l["fingerprint"] for n, l, v in parse_metrics(text)
               if n == "pgring_query_family_info"}
        check_eq(len(ids), 2, f"exported families with fingerprint_metrics 2: {ids}")
        slept = [l for n, l, v in parse_metrics(text) if n == "pgring_query_family_info"
                 and l["query"].startswith("select pg_sleep")]
        check(slept, "the family with the most time is among those exported")


def test_slow_query_log():
    # log.slow_query without stats.fingerprints: the families are kept for it anyway.
    c = pool_config(pool_mode="transaction", pool_size=1)
    c["log"] = {"format": "json", "slow_query": "200ms"}
    with Pgring(c) as p:
        conn = connect(p.port)
        query(conn, "SELECT pg_sleep(0.3), 'secret-value-42'::text")
        query(conn, "SELECT pg_sleep(0.01)")
        conn.close()
        p.wait_log('"event":"slow_query"')
        time.sleep(0.2)
        lines = [json.loads(line) for line in p.log().splitlines() if line.strip()]
    slow = [e for e in lines if e.get("event") == "slow_query"]
    log(f"slow_query lines: {slow}")
    check_eq(len(slow), 1, "one call over 200 ms")
    e = slow[0]
    check(e["query"].startswith("select pg_sleep ($1), $2 :: text"), f"its family's text: {e}")
    check(e["duration_ms"] >= 290 and e["wait_ms"] >= 0 and e.get("fingerprint") and
          e.get("client", 0) >= 1 and e.get("server", 0) >= 1 and e["database"] == "pgring_test",
          f"its fields: {e}")
    check(all("secret-value-42" not in json.dumps(x) for x in lines),
          "a parameter value reached the log")
    check(e["level"] == "warning", f"level of a slow query: {e}")
    closes = [x for x in lines if x.get("event") == "client_close"]
    check(closes and closes[0].get("duration_ms", -1) >= 300, f"client_close duration: {closes}")


if __name__ == "__main__":
    run_tests(globals())
