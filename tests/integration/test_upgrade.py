#!/usr/bin/python3
"""Upgrade in place (docs/operations.md, "Upgrading in place"): `pgring --takeover` started
beside a running pgring with the same configuration takes its listening sockets and, as each
goes idle between transactions, its clients with their sessions (settings, prepared statements,
cancel key). Clients never notice: no failed transaction, no reconnect; the old process exits
once it has nothing left, and a second upgrade can follow at once."""

import asyncio
import os
import signal
import socket
import tempfile
import threading
import time

import asyncpg
import psycopg2

import subprocess

import psycopg2.errors

from lib import (PGHOST, PGPORT, PGRING_BIN, SOURCE_DIR, Background, Pgring, backends, check,
                 check_eq, connect, log, monitor_connect, pool_config, port_accepts, query,
                 query_one, run_tests, wait_exit, wait_notifications, wait_until)

# The old process exits by itself once its clients are handed over: the leak check needs the
# running process, so the old side skips it (the new side, which the test stops, runs it).
OLD_SIDE = "the old process of an upgrade exits by itself"

SIMPLE_CLIENTS = 16  # psycopg2: simple protocol, a SET per session, BEGIN/COMMIT
ASYNC_CLIENTS = 16   # asyncpg: extended protocol, named prepared statements, transactions


# Fewer servers than clients, as in production: after an upgrade every client arrives in the
# new process at once, and one reactor may take every slot first; the other reactor's clients
# get theirs from it (Pool::slot_wanted_by), not only after query_wait.
POOL_SIZE = 6


def upgrade_config(control):
    config = pool_config(pool_mode="transaction", pool_size=POOL_SIZE,
                         timeouts={"shutdown": "30s"})
    config["upgrade"] = {"socket": control}
    config["workers"] = 2
    return config


class Workload:
    """32 clients looping transactions through pgring on their own connections; any error is
    recorded (a client never reconnects: a dropped connection shows up as an error)."""

    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.errors = []
        self.counts = [0] * (SIMPLE_CLIENTS + ASYNC_CLIENTS)
        self.local_ports = {}
        self.threads = []
        self.cancel_keys = {}

    def start(self):
        for i in range(SIMPLE_CLIENTS):
            self.threads.append(threading.Thread(target=self.simple_client, args=(i,)))
        self.threads.append(threading.Thread(target=self.async_clients))
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(60)
        check(not any(t.is_alive() for t in self.threads), "a workload client did not finish")

    def total(self):
        return sum(self.counts)

    def simple_client(self, i):
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=self.port, dbname="pgring_test",
                                    user="postgres", application_name=f"upgrade-s{i}",
                                    connect_timeout=10)
            conn.autocommit = True
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            self.local_ports[i] = sock.getsockname()[1]
            sock.close()
            self.cancel_keys[i] = conn.get_backend_pid()
            cur = conn.cursor()
            cur.execute(f"SET statement_timeout = '{30001 + 2 * i}ms'")
            while not self.stop.is_set():
                cur.execute("BEGIN")
                cur.execute("SELECT current_setting('application_name'), "
                            "current_setting('statement_timeout'), %s::int", (i,))
                row = cur.fetchone()
                if row != (f"upgrade-s{i}", f"{30001 + 2 * i}ms", i):
                    self.errors.append(f"s{i}: wrong session after {self.counts[i]} "
                                       f"transactions: {row}")
                    return
                cur.execute("COMMIT")
                self.counts[i] += 1
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            if sock.getsockname()[1] != self.local_ports[i]:
                self.errors.append(f"s{i}: its connection changed")
            sock.close()
            conn.close()
        except Exception as e:  # noqa: BLE001 - every failure of a client is the finding
            self.errors.append(f"s{i} after {self.counts[i]} transactions: {e!r}")

    def async_clients(self):
        asyncio.run(self._async_main())

    async def _async_main(self):
        await asyncio.gather(*(self._async_client(SIMPLE_CLIENTS + k)
                               for k in range(ASYNC_CLIENTS)))

    async def _async_client(self, i):
        try:
            conn = await asyncpg.connect(host="127.0.0.1", port=self.port, database="pgring_test",
                                         user="postgres", timeout=10,
                                         server_settings={"application_name": f"upgrade-a{i}"})
            # A named prepared statement, prepared once and executed in every transaction.
            stmt = await conn.prepare("SELECT $1::int + 1 AS n, "
                                      "current_setting('application_name') AS name")
            while not self.stop.is_set():
                async with conn.transaction():
                    row = await stmt.fetchrow(i)
                    # asyncpg's own statement cache (named statements too).
                    text = await conn.fetchval("SELECT $1::text || 'x'", str(i))
                if row["n"] != i + 1 or row["name"] != f"upgrade-a{i}" or text != f"{i}x":
                    self.errors.append(f"a{i}: wrong answer after {self.counts[i]} "
                                       f"transactions: {tuple(row)} {text}")
                    return
                self.counts[i] += 1
                await asyncio.sleep(0)
            await conn.close()
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"a{i} after {self.counts[i]} transactions: {e!r}")


def wait_progress(work, what, each=3, timeout=20):
    """Every client does `each` more transactions (all of them are still served)."""
    base = list(work.counts)
    done = lambda: work.errors or all(c >= b + each for c, b in zip(work.counts, base))  # noqa
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
    stuck = [f"{'s' if i < SIMPLE_CLIENTS else 'a'}{i} at {c}"
             for i, (c, b) in enumerate(zip(work.counts, base)) if c < b + each]
    check(done(), f"clients that did not run {each} transactions {what} within {timeout} s: "
          f"{stuck}")
    check(not work.errors, f"client errors {what}: {work.errors[:5]}")


# The processes a test started with --takeover (their logs are shown when the test fails).
generations = []


def upgrade(old, config, number):
    """Starts a pgring with --takeover; returns it once the old one exited, and the time that
    took."""
    started = time.monotonic()
    new = Pgring(config, args=["--takeover"])
    new.start()
    generations.append(new)
    status = wait_exit(old, 25)
    took = time.monotonic() - started
    check_eq(status, 0, f"the old process's exit status (upgrade {number})")
    handed = old.wait_log(r"upgrade: (\d+) clients handed over")
    log(f"upgrade {number}: {handed.group(1)} clients handed over; the old process exited "
        f"{took:.2f} s after the new one started")
    return new, took, int(handed.group(1))


def test_upgrade_keeps_every_client():
    control = os.path.join(tempfile.mkdtemp(prefix="pgring-upgrade-"), "control")
    first = Pgring(upgrade_config(control), skip_leak_check=OLD_SIDE)
    config = dict(first.config)  # the same listen port for every generation
    generations.clear()
    with first:
        work = Workload(first.port)
        work.start()
        try:
            wait_progress(work, "before the upgrade", each=20)
            before = work.total()
            second, took1, handed1 = upgrade(first, config, 1)
            second.skip_leak_check = OLD_SIDE
            wait_progress(work, "after the first upgrade")
            check_eq(handed1, SIMPLE_CLIENTS + ASYNC_CLIENTS, "clients handed over by the first")
            # A second upgrade right after the first.
            third, took2, handed2 = upgrade(second, config, 2)
            try:
                wait_progress(work, "after the second upgrade")
                check_eq(handed2, SIMPLE_CLIENTS + ASYNC_CLIENTS,
                         "clients handed over by the second")
                during = work.total() - before
            finally:
                work.finish()
            check(not work.errors, f"client errors: {work.errors[:5]}")
            log(f"{len(work.counts)} clients, {work.total()} transactions, {during} of them "
                f"across two upgrades ({took1:.2f} s and {took2:.2f} s), 0 failed, 0 reconnects")
            # Nothing of the old processes stays on PostgreSQL: only the new one's servers.
            monitor = monitor_connect()
            try:
                wait_until(lambda: len(backends(monitor, "pgring_test")) <= POOL_SIZE, 10,
                           what="PostgreSQL to see at most pool_size server connections")
            finally:
                monitor.close()
            third.check_no_leaks()
            third.stop()
            check_eq(third.exit_code, 0, "the last process's exit status")
            for p in (first, second, third):
                problems = p.problems()
                check(not problems, f"pgring pid {p.pid()}: {problems}")
        except BaseException:
            for p in generations:
                p._print_log(f"pgring --takeover, pid {p.pid()}")
            raise
        finally:
            work.stop.set()
            for p in generations:
                if p.alive():
                    p._kill()


def taken_over(p):
    return p.log().count(" taken over (was C-")


def test_clients_that_cannot_move_stay_until_they_leave():
    # An idle client goes at once (and its cancel key still cancels, in the new process); a
    # client inside a transaction goes when it ends; TLS, session-mode and pinned clients stay
    # with the old process, which serves them until they leave and then exits.
    directory = tempfile.mkdtemp(prefix="pgring-upgrade-")
    subprocess.run([os.path.join(SOURCE_DIR, "scripts", "gen-test-certs.sh"), directory],
                   check=True, capture_output=True)
    config = upgrade_config(os.path.join(directory, "control"))
    config["workers"] = 1
    config["tls"] = {"client": {"mode": "allow", "cert": os.path.join(directory, "server.crt"),
                                "key": os.path.join(directory, "server.key")}}
    config["databases"]["app"] = {"host": PGHOST, "port": PGPORT, "pool_mode": "session"}
    first = Pgring(config, skip_leak_check=OLD_SIDE)
    with first:
        idle = connect(first.port, sslmode="disable")
        check_eq(query_one(idle, "SELECT 1"), 1)
        busy = connect(first.port, sslmode="disable")
        query(busy, "BEGIN")
        xid = query_one(busy, "SELECT txid_current()")
        session = connect(first.port, db="app", sslmode="disable")
        check_eq(query_one(session, "SELECT 2"), 2)
        tls = connect(first.port, sslmode="require")
        check_eq(query_one(tls, "SELECT 3"), 3)
        pinned = connect(first.port, sslmode="disable")
        query(pinned, "CREATE TEMP TABLE upgrade_pinned(x int)")
        second = Pgring(first.config, args=["--takeover"])  # (the same listen port)
        with second:
            wait_until(lambda: taken_over(second) == 1, 10, what="the idle client to move")
            # Its cancel key (from its BackendKeyData in the old process) cancels here.
            sleeper = Background(lambda: query(idle, "SELECT pg_sleep(20)"))
            time.sleep(0.5)
            started = time.monotonic()
            idle.cancel()
            error = None
            try:
                sleeper.result(10, what="the cancelled pg_sleep")
            except psycopg2.errors.QueryCanceled as e:
                error = e
            check(error is not None, "the cancel after the upgrade did not cancel")
            log(f"a cancel with the old key took {time.monotonic() - started:.2f} s")
            check_eq(query_one(idle, "SELECT 4"), 4)
            # The transaction goes on where it began, then the client moves.
            check_eq(query_one(busy, "SELECT txid_current()"), xid, "the same transaction")
            query(busy, "COMMIT")
            check_eq(query_one(busy, "SELECT 5"), 5)
            wait_until(lambda: taken_over(second) == 2, 10, what="the client to move at COMMIT")
            # The others stay, and are served, by the old process.
            check(first.alive(), "the old process left with clients it had to keep")
            check_eq(query_one(session, "SELECT 6"), 6)
            check_eq(query_one(tls, "SELECT 7"), 7)
            check_eq(query_one(pinned, "SELECT count(*) FROM upgrade_pinned"), 0)
            check_eq(taken_over(second), 2, "clients taken over")
            for conn in (session, tls, pinned):
                conn.close()
            check_eq(wait_exit(first, 10), 0, "the old process, once its clients left")
            check_eq(query_one(idle, "SELECT 8"), 8)
            idle.close()
            busy.close()


def test_subscriptions_move_with_the_client():
    """A client with LISTEN subscriptions (listen: shared) moves like any idle client: the new
    process LISTENs its channels, and a notification sent after the move reaches it."""
    directory = tempfile.mkdtemp(prefix="pgring-upgrade-")
    config = upgrade_config(os.path.join(directory, "control"))
    config["workers"] = 1
    first = Pgring(config, skip_leak_check=OLD_SIDE)
    with first:
        listener = connect(first.port)
        query(listener, "LISTEN up_chan")
        query(listener, 'LISTEN "Up Chan"')
        second = Pgring(first.config, args=["--takeover"])
        with second:
            wait_until(lambda: taken_over(second) == 1, 10, what="the subscribed client to move")
            check_eq(wait_exit(first, 10), 0, "the old process, once its client moved")
            sender = connect(second.port)
            query(sender, "NOTIFY up_chan, 'moved'")
            query(sender, "SELECT pg_notify('Up Chan', 'too')")
            got = wait_notifications(listener, 2, "the notifications after the move")
            check_eq(sorted((n.channel, n.payload) for n in got),
                     [("Up Chan", "too"), ("up_chan", "moved")], "notifications")
            check_eq(query_one(listener, "SELECT 1"), 1)
            sender.close()
            listener.close()


def process_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")  # (a zombie nobody reaps)
    except FileNotFoundError:
        return True


def test_sigusr2_starts_the_takeover():
    # The systemd way (systemd/pgring.service, NotifyAccess=all): SIGUSR2 makes pgring start its
    # own binary with --takeover; the new process tells the service manager it is the main one
    # (MAINPID=) and the old one exits once its clients moved.
    directory = tempfile.mkdtemp(prefix="pgring-upgrade-")
    notify_path = os.path.join(directory, "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(0.2)
    messages = []

    def main_pids():
        while True:
            try:
                messages.extend(notify.recv(4096).decode().split("\n"))
            except socket.timeout:
                break
        return [int(m.split("=", 1)[1]) for m in messages if m.startswith("MAINPID=")]

    config = upgrade_config(os.path.join(directory, "control"))
    config["workers"] = 1
    first = Pgring(config, env={"NOTIFY_SOCKET": notify_path}, skip_leak_check=OLD_SIDE)
    new_pid = None
    try:
        with first:
            wait_until(lambda: first.pid() in main_pids(), 10, what="READY=1 with MAINPID")
            conn = connect(first.port, application_name="usr2")
            check_eq(query_one(conn, "SELECT 1"), 1)
            first.proc.send_signal(signal.SIGUSR2)
            check_eq(wait_exit(first, 15), 0, "the old process's exit status")
            pids = [pid for pid in main_pids() if pid != first.pid()]
            check(pids, f"no MAINPID= from the new process: {messages}")
            new_pid = pids[-1]
            check(not process_gone(new_pid), "the new process is not running")
            check_eq(query_one(conn, "SELECT current_setting('application_name')"), "usr2",
                     "the client's session in the new process")
            conn.close()
            check(" taken over (was C-" in first.log(), "the new process's log (same output)")
    finally:
        if new_pid is not None and not process_gone(new_pid):
            os.kill(new_pid, signal.SIGTERM)
            wait_until(lambda: process_gone(new_pid), 15, what="the new process to exit")
        notify.close()


def test_a_takeover_that_dies_leaves_the_old_process_serving():
    # The new process is killed right after it took the listening sockets: the old one notices,
    # listens anew and goes on serving the clients it still has (and new ones), and can be
    # upgraded again.
    directory = tempfile.mkdtemp(prefix="pgring-upgrade-")
    config = upgrade_config(os.path.join(directory, "control"))
    config["workers"] = 1
    first = Pgring(config)
    with first:
        busy = connect(first.port)
        query(busy, "BEGIN")
        check_eq(query_one(busy, "SELECT 1"), 1)
        doomed = Pgring(first.config, args=["--takeover"], skip_leak_check="killed on purpose")
        doomed.start()
        first.wait_log(r"accepts connections: handing clients over")
        doomed._kill()
        doomed._close_log()
        first.wait_log(r"the new process is gone .* this process serves again")
        check_eq(query_one(busy, "SELECT 2"), 2, "the transaction goes on in the old process")
        query(busy, "COMMIT")
        check_eq(query_one(busy, "SELECT 3"), 3, "after COMMIT (not handed over to nobody)")
        wait_until(lambda: port_accepts(first.port), 5, what="the old process to listen again")
        fresh = connect(first.port)
        check_eq(query_one(fresh, "SELECT 4"), 4, "a new client of the old process")
        fresh.close()
        busy.close()
        # Serving again left nothing behind (listeners and control socket replaced, not added).
        first.check_no_leaks()
        busy, fresh = connect(first.port), connect(first.port)
        check_eq(query_one(busy, "SELECT 1"), 1)
        # And a real upgrade afterwards.
        second = Pgring(first.config, args=["--takeover"])
        with second:
            check_eq(wait_exit(first, 15), 0, "the old process, after the second takeover")
            check_eq(query_one(busy, "SELECT 5"), 5)
            check_eq(query_one(fresh, "SELECT 6"), 6)
            busy.close()
            fresh.close()


def test_shutdown_timeout_zero_still_hands_idle_clients_over():
    # timeouts.shutdown 0 means no waiting for transactions; idle clients still move.
    directory = tempfile.mkdtemp(prefix="pgring-upgrade-")
    config = upgrade_config(os.path.join(directory, "control"))
    config["workers"] = 1
    config["timeouts"]["shutdown"] = "0s"
    first = Pgring(config, skip_leak_check=OLD_SIDE)
    with first:
        idle = connect(first.port, application_name="zero")
        check_eq(query_one(idle, "SELECT 1"), 1)
        second = Pgring(first.config, args=["--takeover"])
        with second:
            check_eq(wait_exit(first, 10), 0, "the old process")
            check_eq(taken_over(second), 1, "clients taken over")
            check_eq(query_one(idle, "SELECT current_setting('application_name')"), "zero")
            idle.close()


def test_takeover_needs_a_running_pgring():
    control = os.path.join(tempfile.mkdtemp(prefix="pgring-upgrade-"), "control")
    p = Pgring(upgrade_config(control), args=["--takeover"], skip_leak_check="it never starts")
    p.write_config()
    out = subprocess.run([PGRING_BIN, "--config", p.config_path, "--takeover"],
                         capture_output=True, text=True, timeout=20)
    check_eq(out.returncode, 1, f"exit status of --takeover with nobody to take over from: {out}")
    check(f"no pgring answers at {control}" in out.stdout + out.stderr,
          f"the error names the control socket: {out.stderr}")
    check(not port_accepts(p.port), "it must not listen")


if __name__ == "__main__":
    run_tests(globals())
