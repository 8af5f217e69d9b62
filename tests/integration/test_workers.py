#!/usr/bin/python3
"""workers: N runs N reactor threads, each with its own ring and SO_REUSEPORT listener, and the
pool limits stay limits for the process (docs/operations.md, "Workers"): pool_size 4 means 4 server
connections in pg_stat_activity whatever reactor the clients landed on; clients on every
reactor make progress (an idle server on one reactor is handed over when another's clients
wait); cancels reach the client's reactor whichever accepted them; the admin console, /metrics
and reloads cover every reactor."""

import os
import threading
import time

from lib import (Background, PGHOST, PGPORT, Pgring, admin_ok, admin_rows, backends, check,
                check_eq, connect, direct_connect, expect_error, free_port, log, metric_sum,
                monitor_connect, pool_config, query, query_one, run_tests, scrape, skip_test,
                wait_until)

ROLE = "pgring_workers"  # pgring logs in to PostgreSQL as this role: its backends are ours


def workers_config(workers, pool_size, metrics_port=None, timeouts=None, **defaults):
    config = pool_config(pool_mode="transaction", pool_size=pool_size, metrics_port=metrics_port,
                        timeouts=timeouts,
                        databases={"pgring_test": {"host": PGHOST, "port": PGPORT, "user": ROLE}},
                        **defaults)
    config["workers"] = workers
    return config


def our_backends(monitor):
    return len(backends(monitor, usename=ROLE, include_monitors=True))


class Sampler:
    """Counts our backends in pg_stat_activity every 20 ms; .peak is the largest count seen."""

    def __init__(self):
        self.monitor = direct_connect()
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, our_backends(self.monitor))
            time.sleep(0.02)

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        self.monitor.close()
        return self.peak


def setup_role():
    c = direct_connect()
    query(c, f"DO $$BEGIN CREATE ROLE {ROLE} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$")
    query(c, f"GRANT ALL ON SCHEMA public TO {ROLE}")
    c.close()


def run_clients(port, n, seconds, sql="SELECT pg_sleep(0.005)"):
    """n psycopg2 clients run `sql` in a loop for `seconds`. Returns [(queries, worst seconds,
    error or None)] per client."""
    results = [None] * n
    start = threading.Barrier(n)

    def client(i):
        worst, done = 0.0, 0
        try:
            c = connect(port, connect_timeout=30)
            start.wait(30)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                t = time.monotonic()
                query(c, sql)
                worst = max(worst, time.monotonic() - t)
                done += 1
            c.close()
            results[i] = (done, worst, None)
        except Exception as e:  # noqa: BLE001 - reported below
            results[i] = (done, worst, f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    return results


def test_pool_size_is_global_with_64_clients():
    setup_role()
    mport = free_port()
    with Pgring(workers_config(2, 4, metrics_port=mport)) as p:
        sampler = Sampler()
        try:
            # Hold the clients open while the admin console looks at them.
            results = run_clients(p.port, 64, 6)
        finally:
            peak = sampler.finish()
        errors = [r[2] for r in results if r is None or r[2]]
        check_eq(errors, [], "client errors")
        done = [r[0] for r in results]
        worst = max(r[1] for r in results)
        log(f"64 clients, pool_size 4, workers 2: {sum(done)} queries, fewest per client "
            f"{min(done)}, slowest query {worst:.3f}s, peak backends {peak}")
        check(peak <= 4, f"{peak} server connections in pg_stat_activity with pool_size 4")
        check(min(done) > 0, "a client made no progress")
        check(worst < 10, f"a query waited {worst:.1f}s for a server")
        text = scrape(mport)
        check_eq(metric_sum(text, "pgring_workers"), 2.0, "pgring_workers")
        served = metric_sum(text, "pgring_transactions_total")
        check(served is not None and served >= sum(done), f"transactions_total {served} < {sum(done)}")


def test_clients_on_every_reactor_and_handoff():
    """pool_size 1 over 2 reactors: the one server slot moves to whichever reactor has clients
    waiting (the idle server is closed there and opened here), so every client progresses."""
    setup_role()
    mport = free_port()
    with Pgring(workers_config(2, 1, metrics_port=mport)) as p:
        # Enough connections that both reactors get some (SO_REUSEPORT hashes the ports).
        held = [connect(p.port) for _ in range(12)]
        workers = {r["worker"] for r in admin_rows(p.port, "SHOW CLIENTS") if r["database"] == "pgring_test"}
        log(f"clients on workers {sorted(workers)}")
        check_eq(sorted(workers), ["0", "1"], "reactors holding clients")
        sampler = Sampler()
        stop = time.monotonic() + 5
        counts = [0] * len(held)
        worst = [0.0]
        errors = []

        def loop(i):
            try:
                while time.monotonic() < stop:
                    t = time.monotonic()
                    check_eq(query_one(held[i], "SELECT 1"), 1)
                    worst[0] = max(worst[0], time.monotonic() - t)
                    counts[i] += 1
                    time.sleep(0.01)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))
        threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(len(held))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        peak = sampler.finish()
        log(f"pool_size 1, 12 clients on 2 reactors: queries per client {counts}, slowest "
            f"{worst[0]:.3f}s, peak backends {peak}")
        check_eq(errors, [], "client errors")
        check(min(counts) > 0, f"a client starved: {counts}")
        check(peak <= 1, f"{peak} server connections with pool_size 1")
        handed = metric_sum(scrape(mport), "pgring_disconnects_total", reason="server_handed_over")
        log(f"server connections handed over: {handed}")
        check(handed and handed > 0, "the slot never moved between reactors")
        for c in held:
            c.close()


def local_port(conn):
    import socket
    s = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return s.getsockname()[1]
    finally:
        s.close()


def test_idle_server_within_its_share_still_moves():
    """pool_size 2 over 2 reactors: reactor 0's client C holds one server in a transaction,
    reactor 1's client B finished its transaction (its server idles there, within reactor 1's
    fair share of 1), and reactor 0's client A needs a server. Reactor 1 must give up the server
    its clients are not using (within milliseconds, not after query_wait)."""
    setup_role()
    with Pgring(workers_config(2, 2, timeouts={"query_wait": "20s"})) as p:
        # The kernel spreads connections over the reactors by a hash of their ports: connect
        # until reactor 0 has two clients and reactor 1 one (10 were 1/9 about once in 100 runs).
        conns, on = [], {"0": [], "1": []}
        while len(conns) < 60 and (len(on["0"]) < 2 or len(on["1"]) < 1):
            conns.extend(connect(p.port) for _ in range(10))
            worker_of = {r["addr"].rsplit(":", 1)[1]: r["worker"]
                         for r in admin_rows(p.port, "SHOW CLIENTS")
                         if r["database"] == "pgring_test"}
            on = {"0": [], "1": []}
            for c in conns:
                on[worker_of[str(local_port(c))]].append(c)
        check(len(on["0"]) >= 2 and len(on["1"]) >= 1, f"clients per worker: "
              f"{ {w: len(v) for w, v in on.items()} }")
        a, c = on["0"][0], on["0"][1]
        b = on["1"][0]
        c.autocommit = b.autocommit = False
        query_one(c, "SELECT 1")  # C holds a server on reactor 0
        query_one(b, "SELECT 1")  # B holds the other on reactor 1
        b.commit()                # ... which now idles there
        started = time.monotonic()
        check_eq(query_one(a, "SELECT 2"), 2, "A's query")
        waited = time.monotonic() - started
        log(f"A waited {waited:.3f}s for the server idle on the other reactor")
        check(waited < 5, f"A waited {waited:.1f}s while a server idled on the other reactor")
        c.commit()
        for conn in conns:
            conn.close()


def clients_per_reactor(p, want0, want1, limit=120):
    """Connects until reactor 0 has `want0` clients and reactor 1 `want1` (the kernel spreads
    connections by a hash of their ports); returns (all, {"0": [...], "1": [...]})."""
    conns, on = [], {"0": [], "1": []}
    while len(conns) < limit and (len(on["0"]) < want0 or len(on["1"]) < want1):
        conns.extend(connect(p.port) for _ in range(10))
        worker_of = {r["addr"].rsplit(":", 1)[1]: r["worker"]
                     for r in admin_rows(p.port, "SHOW CLIENTS") if r["database"] == "pgring_test"}
        on = {"0": [], "1": []}
        for c in conns:
            on[worker_of[str(local_port(c))]].append(c)
    check(len(on["0"]) >= want0 and len(on["1"]) >= want1,
          f"clients per worker: { {w: len(v) for w, v in on.items()} }")
    return conns, on


def test_busy_reactor_gives_slots_to_a_starving_one():
    """pool_size 4 over 2 reactors: twelve clients of reactor 0 loop transactions and hold all
    four servers, with clients always waiting there; then clients of reactor 1 ask. Reactor 0
    gives up slots although its own clients wait (before, reactor 1's clients waited until
    reactor 0's queue happened to be empty: under this load, until query_wait), and only until
    the two hold two each: slots do not go back and forth while both stay busy."""
    setup_role()
    mport = free_port()
    with Pgring(workers_config(2, 4, metrics_port=mport, timeouts={"query_wait": "30s"})) as p:
        conns, on = clients_per_reactor(p, 12, 4)
        stop = threading.Event()
        errors = []
        done = {"0": 0, "1": 0}

        def loop(conn, worker):
            try:
                while not stop.is_set():
                    query(conn, "SELECT pg_sleep(0.005)")
                    done[worker] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        loopers = [threading.Thread(target=loop, args=(c, "0")) for c in on["0"][:12]]
        for t in loopers:
            t.start()
        sampler = None
        try:
            monitor = monitor_connect()
            wait_until(lambda: our_backends(monitor) == 4, 10, what="reactor 0 to open all 4")
            monitor.close()
            time.sleep(0.3)
            started = time.monotonic()
            check_eq(query_one(on["1"][0], "SELECT 2"), 2, "reactor 1's client")
            waited = time.monotonic() - started
            log(f"reactor 1's client waited {waited:.3f}s while reactor 0's clients kept all "
                "servers busy")
            check(waited < 5, f"reactor 1's client waited {waited:.1f}s for a server")
            # Both reactors busy now: the slots settle at two each and stay there.
            more = [threading.Thread(target=loop, args=(c, "1")) for c in on["1"][:4]]
            for t in more:
                t.start()
            loopers += more
            time.sleep(1)
            sampler = Sampler()
            before = metric_sum(scrape(mport), "pgring_disconnects_total",
                                reason="server_handed_over") or 0
            counted = dict(done)
            time.sleep(3)
            moved = (metric_sum(scrape(mport), "pgring_disconnects_total",
                                reason="server_handed_over") or 0) - before
            progress = {w: done[w] - counted[w] for w in done}
            log(f"both reactors busy for 3 s: transactions {progress}, slots moved {moved:.0f}")
            check(moved <= 2, f"{moved:.0f} servers closed to move their slot while both reactors "
                  "stayed busy (they should settle)")
            check(progress["0"] > 0 and progress["1"] > 0, f"a reactor made no progress: {progress}")
        finally:
            stop.set()
            for t in loopers:
                t.join(10)
            peak = sampler.finish() if sampler else 0
        check(not errors, f"looping clients failed: {errors[:3]}")
        check(peak <= 4, f"{peak} server connections with pool_size 4")
        for conn in conns:
            conn.close()


def test_cancel_reaches_the_right_reactor():
    setup_role()
    with Pgring(workers_config(2, 16)) as p:
        conns = [connect(p.port) for _ in range(16)]
        workers = {r["worker"] for r in admin_rows(p.port, "SHOW CLIENTS") if r["database"] == "pgring_test"}
        check_eq(sorted(workers), ["0", "1"], "reactors holding clients")
        # Each client sleeps; its cancel (a new connection, on whichever reactor the kernel
        # picks) must end exactly that sleep.
        sleepers = [Background(lambda c=c: expect_error(lambda: query(c, "SELECT pg_sleep(30)"),
                                                        "57014")) for c in conns]
        monitor = monitor_connect()
        wait_until(lambda: len(backends(monitor, usename=ROLE, state="active",
                                        query_like="SELECT pg_sleep(30)")) == 16, 15,
                   what="the 16 sleeps to run on the servers")
        monitor.close()
        started = time.monotonic()
        for c in conns:
            c.cancel()
        for b in sleepers:
            b.result(20, "a canceled sleep")
        elapsed = time.monotonic() - started
        log(f"16 cancels over 2 reactors answered in {elapsed:.2f}s")
        check(elapsed < 15, f"cancels took {elapsed:.1f}s")
        for c in conns:
            check_eq(query_one(c, "SELECT 7"), 7, "a client after its cancel")
            c.close()


def test_admin_metrics_and_reload_cover_every_reactor():
    setup_role()
    mport = free_port()
    config = workers_config(2, 2, metrics_port=mport)
    with Pgring(config) as p:
        held = [connect(p.port) for _ in range(10)]
        for c in held:
            query_one(c, "SELECT 1")
        pools = [r for r in admin_rows(p.port, "SHOW POOLS") if r["database"] == "pgring_test"]
        check_eq(len(pools), 1, f"one merged row per pool: {pools}")
        check_eq(int(pools[0]["cl_idle"]) + int(pools[0]["cl_active"]), 10, f"clients in SHOW POOLS {pools}")
        check_eq(metric_sum(scrape(mport), "pgring_clients", database="pgring_test"), 10.0,
                 "pgring_clients over both reactors")
        # A reload reaches both reactors: pool_size 2 -> 3, then a burst never exceeds 3.
        config["defaults"]["pool_size"] = 3
        p.write_config(config)
        admin_ok(p.port, "RELOAD")
        wait_until(lambda: all(r["pool_size"] == "3" for r in admin_rows(p.port, "SHOW POOLS")
                               if r["database"] == "pgring_test"), 10,
                   what="SHOW POOLS pool_size 3 after RELOAD")
        sampler = Sampler()
        results = run_clients(p.port, 24, 3, "SELECT pg_sleep(0.02)")
        peak = sampler.finish()
        check_eq([r[2] for r in results if r[2]], [], "client errors after the reload")
        log(f"after RELOAD to pool_size 3: peak backends {peak}")
        check(peak <= 3, f"{peak} server connections after reloading pool_size 3")
        check(peak == 3, f"only {peak} server connections under load with pool_size 3")
        # PAUSE and RESUME reach both reactors too.
        admin_ok(p.port, "PAUSE pgring_test")
        paused = [r for r in admin_rows(p.port, "SHOW POOLS") if r["database"] == "pgring_test"]
        check_eq(paused[0]["paused"], "yes", "SHOW POOLS after PAUSE")
        admin_ok(p.port, "RESUME pgring_test")
        for c in held:
            check_eq(query_one(c, "SELECT 2"), 2, "a client after RESUME")
            c.close()


def cpu_quota_cgroup():
    """A new cgroup limited to 1 CPU (v2 cpu.max, or v1 cpu.cfs_quota_us), as (directory, file
    its processes are written to), or None where this machine does not let us make one."""
    name = f"pgring-it-{os.getpid()}"
    candidates = [("/sys/fs/cgroup", True), ("/sys/fs/cgroup/cpu", False),
                  ("/sys/fs/cgroup/cpu,cpuacct", False)]
    for base, v2 in candidates:
        if v2:
            try:
                with open(os.path.join(base, "cgroup.controllers")) as f:
                    if "cpu" not in f.read().split():
                        continue
            except OSError:
                continue
        elif not os.path.exists(os.path.join(base, "cpu.cfs_quota_us")):
            continue
        path = os.path.join(base, name)
        try:
            os.mkdir(path)
            if v2:
                with open(os.path.join(path, "cpu.max"), "w") as f:
                    f.write("100000 100000")
            else:
                with open(os.path.join(path, "cpu.cfs_period_us"), "w") as f:
                    f.write("100000")
                with open(os.path.join(path, "cpu.cfs_quota_us"), "w") as f:
                    f.write("100000")
            return path
        except OSError as e:
            log(f"cannot make a cgroup with a CPU quota in {base}: {e}")
            try:
                os.rmdir(path)
            except OSError:
                pass
    return None


def test_workers_auto_uses_the_cpus_it_may_use():
    # workers: auto counts the affinity mask and the cgroup CPU quota, not the host's CPUs.
    if len(os.sched_getaffinity(0)) < 2:
        skip_test("one CPU: auto would choose 1 whatever it counts")
    config = pool_config()
    config["workers"] = "auto"

    def served(p, expected, why):
        check(p.wait_log(rf"workers: auto = {expected} \(.*{why}"), f"auto = {expected}: {why}")
        check(p.wait_log(rf"\b{expected} reactor threads? serving"), f"{expected} reactors")
        c = connect(p.port, db="app")
        check_eq(query_one(c, "SELECT 1"), 1)
        c.close()

    cpus = len(os.sched_getaffinity(0))
    with Pgring(config) as p:
        served(p, min(cpus, 64), "CPUs in the affinity mask")
    with Pgring(config, launcher=["taskset", "-c", "0"]) as p:
        served(p, 1, "1 CPUs in the affinity mask")
    cgroup = cpu_quota_cgroup()
    if cgroup is None:
        log("no cgroup with a CPU quota could be made here: the quota part is not checked")
        return
    try:
        enter = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh"]
        with Pgring(config, launcher=enter) as p:
            served(p, 1, f"a quota of 1 in {cgroup}")
    finally:
        os.rmdir(cgroup)


if __name__ == "__main__":
    run_tests(globals())
