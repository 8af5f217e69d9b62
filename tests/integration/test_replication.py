#!/usr/bin/python3
"""Replication connections (docs/transaction-pooling.md, "Replication connections"): a client
that asks for replication=true (pg_receivewal, physical) or replication=database (logical
decoding) gets a server connection of its own, opened with that parameter, passed through
whatever the pool's mode, and closed when it leaves (never reused). Each test runs the same
client directly against PostgreSQL first."""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import psycopg2
import psycopg2.extras

from lib import (ADMIN_USER, PGHOST, PGPORT, Pgring, check, check_eq, connect, direct_connect,
                 log, monitor_connect, pool_config, query, query_one, run_tests, skip_test,
                 wait_until)

PG_RECEIVEWAL = shutil.which("pg_receivewal") or next(
    (p for p in sorted(os.popen("ls -d /usr/lib/postgresql/*/bin/pg_receivewal 2>/dev/null")
                       .read().split(), reverse=True)), None)


def replication_config():
    config = pool_config(pool_mode="transaction", pool_size=2)
    # pg_receivewal names the database "replication" (PostgreSQL ignores it for physical
    # replication); pgring needs an entry for the name the client sends.
    config["databases"]["replication"] = {"host": PGHOST, "port": PGPORT}
    return config


def walsenders(monitor):
    return query_one(monitor, "SELECT count(*) FROM pg_stat_activity "
                              "WHERE backend_type = 'walsender'")


def receive_wal(port, directory):
    """pg_receivewal into `directory` until a whole segment arrived (a WAL switch is forced);
    returns the segment files it wrote."""
    os.makedirs(directory, exist_ok=True)
    proc = subprocess.Popen([PG_RECEIVEWAL, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                             "-D", directory, "--no-loop", "-w"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    monitor = monitor_connect()
    try:
        # (Streaming, not a file: right after a WAL switch there may be nothing to send yet.)
        wait_until(lambda: proc.poll() is not None or query_one(
            monitor, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") > 0,
                   20, what="pg_receivewal to start streaming")
        if proc.poll() is not None:
            check(False, f"pg_receivewal exited: {proc.stdout.read()}")
        setup = direct_connect()
        query(setup, "CREATE TABLE IF NOT EXISTS pgring_repl_wal(x int)")
        query(setup, "INSERT INTO pgring_repl_wal SELECT generate_series(1, 1000)")
        query(setup, "SELECT pg_switch_wal()")
        setup.close()
        wait_until(lambda: any(len(f) == 24 for f in os.listdir(directory)), 20,
                   what="a whole WAL segment")
    finally:
        monitor.close()
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    check_eq(proc.returncode, 0, f"pg_receivewal's exit status (output: {out})")
    return sorted(f for f in os.listdir(directory) if len(f) == 24)


def test_pg_receivewal_streams_through_pgring():
    if PG_RECEIVEWAL is None:
        skip_test("pg_receivewal is not installed")
    work = tempfile.mkdtemp(prefix="pgring-repl-")
    segments = receive_wal(PGPORT, os.path.join(work, "direct"))
    log(f"directly: {len(segments)} segment(s), e.g. {segments[-1]}")
    with Pgring(replication_config()) as p:
        app = connect(p.port)
        segments = receive_wal(p.port, os.path.join(work, "pgring"))
        log(f"through pgring: {len(segments)} segment(s), e.g. {segments[-1]}")
        size = os.path.getsize(os.path.join(work, "pgring", segments[-1]))
        check_eq(size, 16 << 20, "a whole segment's size")
        # Ordinary clients of the same pgring are served meanwhile and after.
        check_eq(query_one(app, "SELECT 1"), 1)
        app.close()
        # The walsender session ends with its client: never pooled.
        monitor = monitor_connect()
        wait_until(lambda: walsenders(monitor) == 0, 10, what="the walsender to end")
        monitor.close()
        p.wait_log(r"closed \(replication/postgres\): replication_ended")
    shutil.rmtree(work, ignore_errors=True)


def logical_changes(port, slot):
    """Connects for logical replication on `port`, streams `slot` (test_decoding) and returns
    the change lines of the two transactions the test makes."""
    conn = psycopg2.connect(host="127.0.0.1", port=port, dbname="pgring_test", user="postgres",
                            connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(slot_name=slot, decode=True)
    lines = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(1 for x in lines if x.startswith("COMMIT")) < 2:
        msg = cur.read_message()
        if msg is None:
            time.sleep(0.05)
            continue
        lines.append(msg.payload)
        msg.cursor.send_feedback(flush_lsn=msg.data_start)
    conn.close()
    return [line.split(" ")[0] if line.startswith(("BEGIN", "COMMIT")) else line
            for line in lines]


def test_logical_decoding_through_pgring():
    setup = direct_connect()
    query(setup, "DROP TABLE IF EXISTS pgring_repl_t")
    query(setup, "CREATE TABLE pgring_repl_t(id int primary key, note text)")
    slots = ["pgring_slot_direct", "pgring_slot_proxied"]
    for slot in slots:
        query(setup, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name = %s", (slot,))
    try:
        with Pgring(replication_config()) as p:
            # The replication protocol's own command, through pgring: CREATE_REPLICATION_SLOT.
            conn = psycopg2.connect(host="127.0.0.1", port=p.port, dbname="pgring_test",
                                    user="postgres",
                                    connection_factory=psycopg2.extras.LogicalReplicationConnection)
            conn.cursor().create_replication_slot(slots[1], output_plugin="test_decoding")
            # PgBouncer's console tells replication clients and servers apart, as PgBouncer does.
            console = connect(p.port, db="pgbouncer", user=ADMIN_USER)
            kinds = {(row[0], row[3]) for what in ("CLIENTS", "SERVERS")
                     for row in query(console, f"SHOW {what}")}
            console.close()
            check(("C", "logical") in kinds and ("S", "logical") in kinds,
                  f"SHOW CLIENTS/SERVERS replication column: {kinds}")
            conn.close()
            # replication=FALSE (any case, as PostgreSQL reads it) is an ordinary connection.
            plain = connect(p.port, replication="FALSE")
            check_eq(query_one(plain, "SELECT 1"), 1)
            console = connect(p.port, db="pgbouncer", user=ADMIN_USER)
            kinds = [row[3] for row in query(console, "SHOW CLIENTS") if row[2] == "pgring_test"]
            console.close()
            check_eq(kinds, ["none"], "replication=FALSE's replication column")
            plain.close()
            # A reload keeps the replication pool what it is (session, the parameter, no
            # timeouts): the stream below runs after one.
            p.reload()
            p.wait_log(r"reload")
            query(setup, "SELECT pg_create_logical_replication_slot(%s, 'test_decoding')",
                  (slots[0],))
            query(setup, "INSERT INTO pgring_repl_t VALUES (1, 'one'), (2, 'two')")
            query(setup, "UPDATE pgring_repl_t SET note = 'uno' WHERE id = 1")
            direct = logical_changes(PGPORT, slots[0])
            proxied = logical_changes(p.port, slots[1])
            log(f"directly: {direct}")
            check(any("INSERT: id[integer]:2" in line for line in direct), f"direct: {direct}")
            check_eq(proxied, direct, "the changes streamed through pgring")
            monitor = monitor_connect()
            wait_until(lambda: walsenders(monitor) == 0, 10, what="the walsenders to end")
            monitor.close()
    finally:
        for slot in slots:
            query(setup, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s", (slot,))
        query(setup, "DROP TABLE IF EXISTS pgring_repl_t")
        setup.close()


if __name__ == "__main__":
    run_tests(globals())
