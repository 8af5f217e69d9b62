#!/usr/bin/python3
"""A primary and its replica behind one pgring (databases.<db>.hosts, target, health checks):
writes through a target-primary database reach the primary and reads through a target-replica
one the replica (checked against what each server says of itself on a direct connection);
with the replica stopped, prefer-replica falls back to the primary and replica waits, then
errors; the replica's return is noticed without a reload. Promoting the replica under a running
write load moves every write after the switch to the new primary, with no "read-only
transaction" error, and the failover time is printed. A host name whose address changes (a
hosts file this test controls, bind-mounted over /etc/hosts in pgring's own mount namespace)
is followed without a reload.

The test makes its own two clusters (the fixture's is not stopped or promoted): a primary from
scripts/pg-throwaway.sh and a streaming replica of it from pg_basebackup -R."""

import os
import shutil
import subprocess
import tempfile
import threading
import time

import psycopg2

from lib import (ADMIN_USER, PGPORT, SOURCE_DIR, Pgring, SilentListener, admin_rows,
                 as_postgres_cmd, check, check_eq, connect, expect_error, fail, fd_snapshot,
                 find_pg_tool, free_port, log, metric_value, query_one, run_tests, skip,
                 wait_notifications, wait_until)

PRIMARY_PORT = PGPORT + 100
REPLICA_PORT = PGPORT + 200
THROWAWAY = os.path.join(SOURCE_DIR, "scripts", "pg-throwaway.sh")

cluster = {}


def pg_run(*cmd, check_rc=True, timeout=120):
    r = subprocess.run(as_postgres_cmd(list(cmd)), cwd="/", stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    if check_rc and r.returncode != 0:
        fail(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def pg_ctl(data, *args):
    return pg_run(find_pg_tool("pg_ctl"), *args, "-D", data, "-w", "-t", "60",
                  check_rc=False)


def start_replica():
    r = pg_ctl(cluster["replica"], "start", "-l",
               os.path.join(cluster["replica"], "log", "pg_ctl.log"))
    check(r.returncode == 0, f"the replica did not start: {r.stdout}{r.stderr}")


def make_clusters():
    base = tempfile.mkdtemp(prefix="pgring-hosts-")
    os.chmod(base, 0o755)
    primary = os.path.join(base, "primary")
    replica = os.path.join(base, "replica")
    cluster.update(base=base, primary=primary, replica=replica)
    r = subprocess.run([THROWAWAY, "start", primary, str(PRIMARY_PORT)], capture_output=True,
                       text=True, timeout=180)
    if r.returncode != 0:
        fail(f"pg-throwaway start failed: {r.stdout}{r.stderr}")
    primary = os.path.realpath(primary)
    cluster["primary"] = primary
    # Replication connections are not "all" in pg_hba.conf.
    with open(os.path.join(primary, "pg_hba.conf"), "a") as f:
        f.write("host replication all 127.0.0.1/32 trust\n")
    pg_ctl(primary, "reload")
    if os.geteuid() == 0:
        subprocess.run(["chown", "postgres:", base], check=True)
    pg_run(find_pg_tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(PRIMARY_PORT), "-U",
           "postgres", "-D", replica, "-R", "-X", "stream", "-c", "fast")
    with open(os.path.join(replica, "postgresql.auto.conf"), "a") as f:
        f.write(f"port = {REPLICA_PORT}\nunix_socket_directories = ''\n")
    os.makedirs(os.path.join(replica, "log"), exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "postgres:", replica], check=True)
    start_replica()
    c = connect(REPLICA_PORT, connect_timeout=5)
    check_eq(query_one(c, "SELECT pg_is_in_recovery()"), True, "the replica is in recovery")
    c.close()


def drop_clusters():
    for name in ("replica", "primary"):
        if name in cluster and os.path.isdir(cluster[name]):
            pg_ctl(cluster[name], "stop", "-m", "immediate")
    if "base" in cluster:
        shutil.rmtree(cluster["base"], ignore_errors=True)


def hosts(*ports):
    return [f"127.0.0.1:{p}" for p in ports]


# The forced user postgres (trust) is also who the health checks log in as.
def config(**extra):
    c = {
        "auth": {"method": "trust"},
        "admin": {"users": [ADMIN_USER]},
        "health_check": {"interval": "500ms", "timeout": "2s"},
        "timeouts": {"server_login_retry": "1s", "server_connect": "3s"},
        "databases": {
            # The replica first: a target, not the order, decides.
            "app": {"hosts": hosts(REPLICA_PORT, PRIMARY_PORT), "target": "primary",
                    "dbname": "pgring_test", "user": "postgres"},
            "app_ro": {"hosts": hosts(PRIMARY_PORT, REPLICA_PORT), "target": "replica",
                       "dbname": "pgring_test", "user": "postgres",
                       "timeouts": {"query_wait": "2s"}},
            "app_pref": {"hosts": hosts(PRIMARY_PORT, REPLICA_PORT),
                         "target": "prefer-standby", "dbname": "pgring_test",
                         "user": "postgres"},
            "app_any": {"hosts": hosts(PRIMARY_PORT, REPLICA_PORT), "dbname": "pgring_test",
                        "user": "postgres", "load_balance": "round_robin"},
        },
    }
    c.update(extra)
    return c


def server_of(port, db):
    c = connect(port, db=db, connect_timeout=10)
    try:
        cur = c.cursor()
        cur.execute("SELECT inet_server_port(), pg_is_in_recovery()")
        return tuple(cur.fetchone())
    finally:
        c.close()


def test_targets_route_writes_and_reads():
    # Direct first: what each server says of itself.
    check_eq(server_of(PRIMARY_PORT, "pgring_test"), (PRIMARY_PORT, False), "the primary, direct")
    check_eq(server_of(REPLICA_PORT, "pgring_test"), (REPLICA_PORT, True), "the replica, direct")
    with Pgring(config()) as p:
        check_eq(server_of(p.port, "app"), (PRIMARY_PORT, False), "target primary")
        check_eq(server_of(p.port, "app_ro"), (REPLICA_PORT, True), "target replica")
        check_eq(server_of(p.port, "app_pref"), (REPLICA_PORT, True), "target prefer-standby")
        # A write through app lands on the primary and is read back through app_ro.
        c = connect(p.port, db="app")
        c.autocommit = True
        c.cursor().execute("DROP TABLE IF EXISTS hosts_t; CREATE TABLE hosts_t (v int)")
        c.cursor().execute("INSERT INTO hosts_t VALUES (42)")
        c.close()
        ro = connect(p.port, db="app_ro")
        wait_until(lambda: query_one(ro, "SELECT count(*) FROM hosts_t WHERE v = 42") == 1
                   if query_one(ro, "SELECT to_regclass('hosts_t') IS NOT NULL") else False,
                   10, what="the write to reach the replica")
        # A write through app_ro is refused by the replica, as on a direct connection.
        ro.autocommit = True
        expect_error(lambda: ro.cursor().execute("INSERT INTO hosts_t VALUES (1)"), "25006")
        ro.close()
        # Both hosts serve a database without a target, in turn.
        seen = set()
        held = []
        for _ in range(4):  # held open: each needs a server connection of its own
            c = connect(p.port, db="app_any")
            c.autocommit = False
            cur = c.cursor()
            cur.execute("SELECT inet_server_port()")
            seen.add(cur.fetchone()[0])
            held.append(c)
        for c in held:
            c.rollback()
            c.close()
        check_eq(seen, {PRIMARY_PORT, REPLICA_PORT}, "servers of a database without a target")


def test_listen_goes_to_the_primary():
    """A standby refuses LISTEN (25006, checked directly first) and NOTIFY is only sent on the
    primary: a pool whose queries go to the replica (prefer-standby) LISTENs for its clients on
    the primary, and they get the primary's notifications between their transactions."""
    direct = connect(REPLICA_PORT, connect_timeout=5)
    expect_error(lambda: direct.cursor().execute("LISTEN hosts_ch"), "25006")
    direct.close()
    with Pgring(config()) as p:
        c = connect(p.port, db="app_pref")
        check_eq(query_one(c, "SELECT pg_is_in_recovery()"), True, "the pool's queries")
        c.cursor().execute("LISTEN hosts_ch")
        notifier = connect(PRIMARY_PORT, connect_timeout=5)
        notifier.cursor().execute("NOTIFY hosts_ch, 'from the primary'")
        notifier.close()
        got = wait_notifications(c, 1, "the primary's notification")
        check_eq([(n.channel, n.payload) for n in got], [("hosts_ch", "from the primary")],
                 "notifications")
        check_eq(query_one(c, "SELECT pg_is_in_recovery()"), True, "still served by the replica")
        c.close()


def host_row(port, database, host_port):
    rows = [r for r in admin_rows(port, "SHOW HOSTS")
            if r["database"] == database and r["port"] == str(host_port)]
    check_eq(len(rows), 1, f"SHOW HOSTS rows of {database} on port {host_port}")
    return rows[0]


def test_replica_down_and_back():
    mport = free_port()
    with Pgring(config(metrics={"listen": f"127.0.0.1:{mport}"})) as p:
        check_eq(server_of(p.port, "app_pref"), (REPLICA_PORT, True), "prefer-standby, both up")
        row = host_row(p.port, "app_ro", REPLICA_PORT)
        check_eq((row["role"], row["state"], row["address"], row["target"]),
                 ("replica", "up", "127.0.0.1", "replica"), "SHOW HOSTS: the replica")
        row = host_row(p.port, "app", PRIMARY_PORT)
        check_eq((row["role"], row["state"], row["target"]), ("primary", "up", "primary"),
                 "SHOW HOSTS: the primary")
        replica = f"127.0.0.1:{REPLICA_PORT}"
        check_eq(metric_value(mport, "pgring_host_up", database="app_ro", host=replica), 1.0,
                 "pgring_host_up of the replica")
        check_eq(metric_value(mport, "pgring_host_role", database="app_ro", host=replica,
                              role="replica"), 1.0, "pgring_host_role of the replica")
        check_eq(pg_ctl(cluster["replica"], "stop", "-m", "fast").returncode, 0, "replica stop")
        try:
            # prefer-standby falls back to the primary once the replica is seen gone.
            wait_until(lambda: server_of(p.port, "app_pref") == (PRIMARY_PORT, False), 15,
                       interval=0.3, what="prefer-standby to fall back to the primary")
            # target replica never reads from the primary: its clients wait
            # (query_wait 2s) and get the error.
            started = time.monotonic()
            expect_error(lambda: server_of(p.port, "app_ro"), ("08006", "57014", None))
            log(f"target replica without a replica: error after "
                f"{time.monotonic() - started:.1f}s")
            check(p.wait_log(r"hosts: 127\.0\.0\.1:%d .*failed its health check" % REPLICA_PORT,
                             10), "the health check saw the replica go")
            check_eq(host_row(p.port, "app_ro", REPLICA_PORT)["state"], "down",
                     "SHOW HOSTS: the stopped replica")
            check_eq(metric_value(mport, "pgring_host_up", database="app_ro", host=replica),
                     0.0, "pgring_host_up of the stopped replica")
            check(metric_value(mport, "pgring_host_checks_failed_total", database="app_ro",
                               host=replica) >= 1, "pgring_host_checks_failed_total counts")
        finally:
            start_replica()
        # Back without a reload.
        wait_until(lambda: server_of(p.port, "app_ro") == (REPLICA_PORT, True), 20,
                   interval=0.3, what="target replica to use the replica again")
        wait_until(lambda: server_of(p.port, "app_pref") == (REPLICA_PORT, True), 20,
                   interval=0.3, what="prefer-standby to go back to the replica")


def test_lagging_replica_is_skipped():
    cfg = config()
    cfg["databases"]["app_pref"]["max_replica_lag"] = "1s"
    r = connect(REPLICA_PORT, connect_timeout=5)
    r.autocommit = True
    w = connect(PRIMARY_PORT, connect_timeout=5)
    w.autocommit = True
    try:
        with Pgring(cfg) as p:
            check_eq(server_of(p.port, "app_pref"), (REPLICA_PORT, True), "a replica in step")
            # Replay paused while the primary writes: the replica falls behind.
            r.cursor().execute("SELECT pg_wal_replay_pause()")
            w.cursor().execute("DROP TABLE IF EXISTS lag_t; CREATE TABLE lag_t (v int)")

            def behind():
                w.cursor().execute("INSERT INTO lag_t VALUES (1)")
                return server_of(p.port, "app_pref") == (PRIMARY_PORT, False)
            wait_until(behind, 15, interval=0.3, what="a lagging replica to be skipped")
            r.cursor().execute("SELECT pg_wal_replay_resume()")
            wait_until(lambda: server_of(p.port, "app_pref") == (REPLICA_PORT, True), 15,
                       interval=0.3, what="the replica, caught up, to serve again")
    finally:
        r.cursor().execute("SELECT pg_wal_replay_resume()")
        r.close()
        w.close()


def test_health_check_query_and_user():
    # txid_current() cannot run on a replica: the check fails there and takes it out, so the
    # database without a target is served by the primary alone.
    cfg = config(health_check={"interval": "500ms", "timeout": "2s",
                               "query": "SELECT txid_current()",
                               "user": "pgring_plain", "password": "plain_pw"})
    with Pgring(cfg) as p:
        p.wait_log(r"hosts: 127\.0\.0\.1:%d of database app_any failed its health check: "
                   r"health_check\.query failed" % REPLICA_PORT, 10)
        for _ in range(4):
            check_eq(server_of(p.port, "app_any")[0], PRIMARY_PORT, "app_any's server")
        m = connect(PRIMARY_PORT, connect_timeout=5)
        users = query_one(m, "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity "
                             "WHERE application_name = 'pgring health check'")
        m.close()
        check_eq(users, "pgring_plain", "who the health checks log in as")


class Writer:
    """One client inserting in a loop through `db`, reconnecting after an error: each result is
    (time, the server's port or None, SQLSTATE or None)."""

    def __init__(self, port, db="app"):
        self.port, self.db = port, db
        self.results = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = connect(self.port, db=self.db, connect_timeout=10)
                    conn.autocommit = True
                cur = conn.cursor()
                cur.execute("INSERT INTO failover_t (at) VALUES (extract(epoch from now())) "
                            "RETURNING inet_server_port()")
                self.results.append((time.monotonic(), cur.fetchone()[0], None))
            except psycopg2.Error as e:
                self.results.append((time.monotonic(), None, e.pgcode or "connection"))
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass
                conn = None
                time.sleep(0.05)
            time.sleep(0.01)
        if conn is not None:
            conn.close()

    def on(self, port):
        return sum(1 for r in self.results if r[1] == port)

    def finish(self):
        self.stop.set()
        self.thread.join(30)
        return self.results


def failover_table():
    c = connect(PRIMARY_PORT, connect_timeout=5)
    c.autocommit = True
    c.cursor().execute("DROP TABLE IF EXISTS failover_t; CREATE TABLE failover_t "
                       "(id serial PRIMARY KEY, at float8)")
    c.close()
    # The table must be on the replica before it becomes the primary.
    r = connect(REPLICA_PORT, connect_timeout=5)
    wait_until(lambda: query_one(r, "SELECT to_regclass('failover_t') IS NOT NULL"), 10,
               what="the table to reach the replica")
    r.close()


def report(results, switch, what):
    first_new = next(r[0] for r in results if r[1] == REPLICA_PORT)
    after = [r for r in results if r[0] >= first_new]
    failed = [r for r in results if r[0] >= switch and r[1] is None]
    log(f"{what}: switch -> first write on the new primary {first_new - switch:.2f}s; "
        f"{len(failed)} failed transaction(s) during it ({sorted(set(r[2] for r in failed))}); "
        f"{sum(1 for r in results if r[1] == PRIMARY_PORT)} writes before, "
        f"{sum(1 for r in after if r[1] == REPLICA_PORT)} after")
    check_eq([r for r in results if r[2] == "25006"], [], "writes refused as read-only")
    check_eq([r for r in after if r[1] == PRIMARY_PORT], [],
             "writes on the old primary after the first on the new one")
    check(first_new - switch < 20, "the write load resumed")


def test_failover_under_write_load():
    failover_table()
    with Pgring(config(), skip_leak_check="the old primary is stopped under pgring") as p:
        w = Writer(p.port)
        wait_until(lambda: w.on(PRIMARY_PORT) >= 20, 15, what="writes on the old primary")
        # The switch: promote the replica, then stop the old primary.
        switch = time.monotonic()
        check_eq(pg_run(find_pg_tool("pg_ctl"), "promote", "-D", cluster["replica"], "-w",
                        check_rc=False).returncode, 0, "pg_ctl promote")
        check_eq(pg_ctl(cluster["primary"], "stop", "-m", "fast").returncode, 0,
                 "old primary stop")
        wait_until(lambda: w.on(REPLICA_PORT) >= 20, 30, what="writes on the new primary")
        report(w.finish(), switch, "failover (promote, then stop the old primary)")
        p.wait_log(r"hosts: 127\.0\.0\.1:%d .* is a primary" % REPLICA_PORT, 5)


def test_failover_after_the_primary_crashed():
    # The other order: the primary dies (SIGKILL-like: pg_ctl -m immediate) with the writer
    # running, and the replica is promoted a second later. The writer's transactions fail
    # meanwhile with a clean error and go on on the new primary.
    drop_clusters()
    make_clusters()
    failover_table()
    with Pgring(config(), skip_leak_check="the old primary is stopped under pgring") as p:
        w = Writer(p.port)
        wait_until(lambda: w.on(PRIMARY_PORT) >= 20, 15, what="writes on the primary")
        switch = time.monotonic()
        check_eq(pg_ctl(cluster["primary"], "stop", "-m", "immediate").returncode, 0,
                 "primary crash")
        time.sleep(1.0)
        check_eq(pg_run(find_pg_tool("pg_ctl"), "promote", "-D", cluster["replica"], "-w",
                        check_rc=False).returncode, 0, "pg_ctl promote")
        wait_until(lambda: w.on(REPLICA_PORT) >= 20, 30, what="writes on the new primary")
        results = w.finish()
        report(results, switch, "failover (primary crashed, promote 1 s later)")
        failed = {r[2] for r in results if r[1] is None}
        check(failed <= {"08006", "57P01", "57014", "connection"},
              f"the errors clients saw during the failover: {failed}")


def test_dns_change_is_followed():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        skip("needs root and unshare (a mount namespace for a private /etc/hosts)")
    tmp = tempfile.mkdtemp(prefix="pgring-dns-")
    hosts_file = os.path.join(tmp, "hosts")
    name = "pgring-test-db.invalid"

    def point(address):
        with open(hosts_file, "w") as f:  # rewritten in place: the bind mount follows the inode
            f.write(f"127.0.0.1 localhost\n{address} {name}\n")
    point("127.0.0.1")
    launcher = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                f'mount --bind {hosts_file} /etc/hosts && exec "$@"', "sh"]
    # The fixture PostgreSQL listens on 127.0.0.1 and 127.0.0.2: the server's own address
    # (inet_server_addr()) says which one pgring connected to.
    cfg = {"auth": {"method": "trust"}, "dns": {"ttl": "1s"},
           "databases": {"pgring_test": {"host": name, "port": PGPORT}}}
    try:
        with Pgring(cfg, launcher=launcher) as p:
            c = connect(p.port)
            check_eq(query_one(c, "SELECT host(inet_server_addr())"), "127.0.0.1", "before")
            c.close()
            point("127.0.0.2")
            def moved():
                c = connect(p.port)
                try:
                    return query_one(c, "SELECT host(inet_server_addr())") == "127.0.0.2"
                finally:
                    c.close()
            wait_until(moved, 15, interval=0.3, what="pgring to follow the new address")
            p.wait_log(r"hosts: %s:%d is .*127\.0\.0\.2" % (name.replace(".", r"\."), PGPORT), 5)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_server_logins_per_host_are_capped():
    # A host that accepts TCP and never answers: every login to it stays under way until
    # server_connect. Eight clients want a server; at most max_concurrent_server_logins logins
    # are under way at once (without the cap: all eight).
    def logins_under_way(cap):
        with SilentListener() as silent:
            cfg = {"auth": {"method": "trust"}, "max_concurrent_server_logins": cap,
                   "timeouts": {"server_connect": "4s", "query_wait": "3s",
                                "server_login_retry": "5s"},
                   "databases": {"slow": {"host": "127.0.0.1", "port": silent.port,
                                          "pool_size": 10, "user": "postgres"}}}
            with Pgring(cfg, skip_leak_check="the silent host's sockets stay in its backlog") as p:
                def client(_):
                    try:
                        connect(p.port, db="slow", connect_timeout=10).close()
                    except psycopg2.Error:
                        pass
                threads = [threading.Thread(target=client, args=(i,), daemon=True)
                           for i in range(8)]
                for t in threads:
                    t.start()
                most = 0
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    snap = fd_snapshot(p.pid())
                    most = max(most, sum(1 for s in snap.servers
                                         if getattr(s, "remote_port", None) == silent.port))
                    time.sleep(0.05)
                for t in threads:
                    t.join(15)
                return most
    capped = logins_under_way(3)
    uncapped = logins_under_way(0)
    log(f"logins under way at once to a host that never answers, 8 clients: cap 3 -> {capped}, "
        f"no cap -> {uncapped}")
    check_eq(capped, 3, "logins under way with max_concurrent_server_logins 3")
    check_eq(uncapped, 8, "logins under way without a cap")


if __name__ == "__main__":
    try:
        make_clusters()
        run_tests(globals(), timeout=300)
    finally:
        drop_clusters()
