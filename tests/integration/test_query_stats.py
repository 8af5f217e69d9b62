#!/usr/bin/python3
"""Query families (stats.fingerprints, SHOW QUERIES): `... WHERE id = 5` and `... id = 7` are
one row; the same shape sent with the extended protocol (unnamed, and a named prepared
statement executed again without its Parse) joins it; the time a client waited for a server
is counted with its query's family; under 10,000 distinct shapes the number of families stays
within the bound, the rest in one "(other)" row."""

import time

from lib import (SYNC_MESSAGE, Background, Pgring, admin_rows, bind_message, check, check_eq,
                 connect, direct_connect, execute_message, log, login, parse_message,
                 pool_config, query, query_one, read_until_ready, run_tests)

FAMILY = "select * from query_stats_t where id = $1"


def config(limit):
    c = pool_config(pool_mode="transaction", pool_size=1)
    c["stats"] = {"fingerprints": limit}
    return c


def families(port, database="pgring_test"):
    return [r for r in admin_rows(port, "SHOW QUERIES") if r["database"] == database]


def test_one_family_for_one_shape():
    setup = direct_connect()
    query(setup, "DROP TABLE IF EXISTS query_stats_t; CREATE TABLE query_stats_t (id int)")
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
        # 10,000 distinct shapes: at most 20 families on this reactor, the rest in "(other)".
        c = connect(p.port)
        with c.cursor() as cur:
            for i in range(10000):
                cur.execute(f"SELECT {i} AS column_{i}")
        c.close()
        rows = families(p.port)
        other = [r for r in rows if r["query"].startswith("(other")]
        log(f"{len(rows)} rows after 10,000 distinct shapes; other: {other}")
        check(len(rows) <= 21, f"{len(rows)} rows for a bound of 20")
        check(other and int(other[0]["calls"]) >= 9980, f"the (other) row: {other}")


if __name__ == "__main__":
    run_tests(globals())
