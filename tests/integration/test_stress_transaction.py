#!/usr/bin/python3
"""Stress: 100 raw-protocol clients run randomized mixes of requests through a transaction-mode
pool of 4 server connections, and every reply each client gets must belong to its own request.

Every request carries its client id and a per-client sequence number, and every answer is checked
against them: simple queries (also several statements in one Query) return (client, seq) plus
the session settings the client set (application_name, work_mem, a custom pgring_it.tag), read
with current_setting(); SETs (simple, extended, inside committed and rolled-back transactions,
SET LOCAL, RESET); extended-protocol requests with the unnamed statement and with a named
statement "stress_q" that every client prepares under the same name with its own text (the
statement cache, squeezed by prepared_statements: 40, must never hand a client another's
statement); pipelines of several Parse/Bind/Execute/Sync batches sent at once in random pieces,
some with a division by zero in the middle of a batch (the rest of that batch is skipped, the
next batch works); errors (simple, multi-statement, inside a transaction, unknown table); COPY
FROM STDIN of rows tagged with the client (then a count check), COPY with bad data, CopyFail,
COPY inside a rolled-back transaction, COPY TO STDOUT; BEGIN..COMMIT and BEGIN..ROLLBACK with
INSERT .. RETURNING tagged rows (the backend must not change inside a transaction); and
disconnects mid-transaction (Terminate, a bare close, half a message, a query or a pipeline in
flight, mid-COPY) after which the client reconnects with a fresh session.

At the end: no reply mismatched, no unexpected error, the committed rows are exactly those the
clients committed (none of the rolled-back or abandoned ones), the COPY row counts match, and at
most 4 server connections were seen in pg_stat_activity for the database while the clients ran
(backends whose connection pgring had already closed but that were still finishing are told
apart by their TCP state, see LiveBackendSampler). pgring then still serves a fresh client
with a clean session, and (on leaving the Pgring block) exits 0 with no sanitizer report.

The random seed is fixed and printed; PGRING_STRESS_SEED=<n> replays another one,
PGRING_STRESS_OPS=<n> changes the number of operations per client (default 40)."""

import collections
import multiprocessing
import os
import random
import socket
import time

from lib import (PGHOST, PGPORT, Pgring, SYNC_MESSAGE, backends, bind_message, check, check_eq,
                close_message, connect, data_row_values, describe_message, error_fields_in,
                execute_message, idle_in_transaction, log, login, message, monitor_connect,
                parse_message, pool_config, query, query_one, read_messages_until,
                read_until_ready, run_clients, run_tests, wait_no_backends, wait_until)

DB, USER = "app", "app"
CLIENTS = 100
POOL_SIZE = 4
OPS_PER_CLIENT = int(os.environ.get("PGRING_STRESS_OPS", "40"))
SEED = int(os.environ.get("PGRING_STRESS_SEED", "20240607"))
STATE = ("current_setting('application_name'), current_setting('work_mem'), "
         "current_setting('pgring_it.tag', true)")
IGNORED = (b"N", b"S", b"A")  # notices, ParameterStatus, notifications: not part of a reply
INT4_OID = 23


class Mismatch(Exception):
    """A reply whose content does not belong to the request (another client's, another seq)."""


class Unexpected(Exception):
    """A reply of the wrong shape: an error nobody asked for, missing or extra messages."""


def kinds_of(msgs):
    return "".join(k.decode() for k, _ in msgs)


def rows_of(msgs):
    return [data_row_values(b) for k, b in msgs if k == b"D"]


def tags_of(msgs):
    return [b.rstrip(b"\0").decode() for k, b in msgs if k == b"C"]


def sqlstates_of(msgs):
    return [f.get("C") for f in error_fields_in(msgs)]


# ---------------------------------------------------------------------------------------------
# Server connections as PostgreSQL sees them

def _live_client_ports(server_port):
    """Local ports of TCP connections to 127.0.0.1:server_port whose client side is still open
    (ESTABLISHED, or CLOSE_WAIT: the server closed, the client has not yet)."""
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(remote.rsplit(":", 1)[1], 16) == server_port and state in ("01", "08"):
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _sample_backends(datname, limit, interval, use_tcp_state, stop, out):
    """The sampling loop of LiveBackendSampler, in its own process (the 100 client threads
    would otherwise starve it of the GIL). Sends (live, raw, worst, errors) through `out`."""
    live, raw, errors, worst = [], [], [], None
    try:
        monitor = monitor_connect()
        while not stop.is_set():
            rows = [(b.pid, b.client_port, b.state, b.query[:60])
                    for b in backends(monitor, datname)]
            alive = rows
            if use_tcp_state and len(rows) > limit:  # /proc/net/tcp can be long: only then
                ports = _live_client_ports(PGPORT)
                alive = [r for r in rows if r[1] in ports]
            raw.append(len(rows))
            live.append(len(alive))
            if worst is None or len(alive) > worst[0]:
                worst = (len(alive), rows)
            time.sleep(interval)
        monitor.close()
    except Exception as e:  # noqa: BLE001 - reported by check_max()
        errors.append(f"{type(e).__name__}: {e}")
    out.send((live, raw, worst, errors))
    out.close()


class LiveBackendSampler:
    """Samples pg_stat_activity's client backends of `datname` (not monitor connections) every
    `interval` s while the `with` block runs. When pgring closes a server connection (one it
    cannot clean up, e.g. after a client left in the middle of a message), the backend stays in
    pg_stat_activity for a moment, until it notices the EOF and exits, while pgring may already
    have opened the replacement. That backend is no longer one of pgring's server connections,
    and its TCP connection's client side is closed: `live` counts only backends whose client
    side (pgring's socket, seen in /proc/net/tcp) is still open; `raw` counts all."""

    def __init__(self, datname, limit, interval=0.02):
        self.datname, self.limit, self.interval = datname, limit, interval
        self.live, self.raw, self.errors, self.worst = [], [], [], None
        use_tcp_state = PGHOST in ("127.0.0.1", "localhost") and os.path.exists("/proc/net/tcp")
        ctx = multiprocessing.get_context("fork")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_sample_backends, daemon=True,
                                 args=(datname, limit, interval, use_tcp_state, self._stop,
                                       send))

    def check_max(self):
        limit = self.limit
        check(not self.errors, f"sampling pg_stat_activity failed: {self.errors}")
        check(self.live, "no pg_stat_activity samples taken")
        check(max(self.live) <= limit,
              f"saw {max(self.live)} server connections on database {self.datname} (limit "
              f"{limit}) over {len(self.live)} samples; backends then: {self.worst[1]}")

    def __enter__(self):
        self._proc.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._recv.poll(15):
            self.live, self.raw, self.worst, self.errors = self._recv.recv()
        else:
            self.errors.append("the sampling process sent no result")
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
        return False


# ---------------------------------------------------------------------------------------------
# One client

class StressClient:
    def __init__(self, p, cid, default_work_mem):
        self.p, self.cid = p, cid
        self.rng = random.Random(SEED * 1000 + cid)
        self.default_work_mem = default_work_mem
        self.seq = 0
        self.generation = 0
        self.conn = None
        self.committed = set()  # (seq, k) rows of stress_tx this client committed
        self.aborted = set()    # (seq, k) rows it inserted in transactions that did not commit
        self.copied = {}        # seq -> rows of stress_copy it committed
        self.mismatches, self.errors = [], []
        self.ops = collections.Counter()
        self.op = ""

    # -- session --------------------------------------------------------------------------------

    def connect(self):
        self.generation += 1
        self.startup_app = f"stress_c{self.cid}_g{self.generation}"
        self.conn = login(self.p.port, user=USER, db=DB, timeout=60,
                          application_name=self.startup_app)
        self.app = self.startup_app
        self.work_mem = self.default_work_mem
        self.tag = None  # never set in this session: NULL or '' (after someone's RESET)
        # Every client prepares "stress_q" with its own text.
        self.conn.send(parse_message(
            f"SELECT {self.cid}::int AS client, $1::int AS seq, "
            f"current_setting('application_name') AS app", name="stress_q",
            param_oids=(INT4_OID,)) + SYNC_MESSAGE)
        self.reply("1Z", "I", "Parse of stress_q")

    def drop(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def next_seq(self):
        self.seq += 1
        return self.seq

    def state(self):
        return [self.app, self.work_mem, self.tag]

    # -- checks ---------------------------------------------------------------------------------

    def mismatch(self, what, got, want):
        raise Mismatch(f"client {self.cid} seq {self.seq} ({self.op}) {what}: got {got!r}, "
                       f"expected {want!r}")

    def check_rows(self, got, want, what="rows"):
        # want: list of rows; a state column of None in a row means "never set": NULL or ''.
        if len(got) != len(want):
            self.mismatch(f"{what} (count)", got, want)
        for g, w in zip(got, want):
            if len(g) != len(w):
                self.mismatch(what, got, want)
            for gv, wv in zip(g, w):
                if wv is None and gv in (None, ""):
                    continue
                if gv != (None if wv is None else str(wv)):
                    self.mismatch(what, got, want)

    def reply(self, want_kinds, want_status, what, allowed=None):
        """Read one reply (up to ReadyForQuery) and check its message kinds and the transaction
        status; `allowed` lists other acceptable kind strings. Returns the messages."""
        msgs, status = read_until_ready(self.conn)
        msgs = [(k, b) for k, b in msgs if k not in IGNORED]
        kinds = kinds_of(msgs)
        if kinds != want_kinds and kinds not in (allowed or ()):
            raise Unexpected(f"client {self.cid} seq {self.seq} ({self.op}) {what}: messages "
                             f"{kinds!r}, expected {want_kinds!r}; errors "
                             f"{error_fields_in(msgs)}")
        if status != want_status:
            raise Unexpected(f"client {self.cid} seq {self.seq} ({self.op}) {what}: "
                             f"transaction status {status!r}, expected {want_status!r}")
        return msgs

    def expect_sqlstate(self, msgs, sqlstate, what):
        got = sqlstates_of(msgs)
        if got != [sqlstate]:
            raise Unexpected(f"client {self.cid} seq {self.seq} ({self.op}) {what}: errors "
                             f"{error_fields_in(msgs)}, expected one {sqlstate}")

    def simple(self, sql, want_kinds, status="I", what=None, allowed=None):
        self.conn.send(message(b"Q", sql.encode() + b"\0"))
        return self.reply(want_kinds, status, what or sql[:60], allowed)

    def check_state(self, status="I"):
        s = self.seq
        msgs = self.simple(f"SELECT {self.cid}, {s}, {STATE}", "TDCZ", status, "state check")
        self.check_rows(rows_of(msgs), [[self.cid, s, *self.state()]], "state check")

    def send_in_pieces(self, payload):
        """Send bytes in 1-4 random pieces with tiny pauses: messages split across reads."""
        cuts = sorted(self.rng.sample(range(1, len(payload)), min(len(payload) - 1,
                                                                   self.rng.randint(0, 3))))
        start = 0
        for cut in cuts + [len(payload)]:
            self.conn.send(payload[start:cut])
            start = cut
            if cut != len(payload) and self.rng.random() < 0.5:
                time.sleep(self.rng.random() * 0.002)

    # -- operations -----------------------------------------------------------------------------

    def op_simple(self):
        s = self.next_seq()
        if self.rng.random() < 0.3:
            msgs = self.simple(f"SELECT {self.cid}, {s}, 1, {STATE}; SELECT {self.cid}, {s}, 2",
                               "TDCTDCZ")
            self.check_rows(rows_of(msgs), [[self.cid, s, 1, *self.state()],
                                            [self.cid, s, 2]], "two-statement query")
        else:
            msgs = self.simple(f"SELECT {self.cid} AS client, {s} AS seq, {STATE}", "TDCZ")
            self.check_rows(rows_of(msgs), [[self.cid, s, *self.state()]])
            check_eq(tags_of(msgs), ["SELECT 1"], "tag")

    def _set_sql(self, s):
        """A random SET and the state it leads to."""
        which = self.rng.randrange(3)
        if which == 0:
            value = f"c{self.cid}s{s}"
            return f"SET application_name = '{value}'", ("app", value)
        if which == 1:
            kb = 1100 + self.cid * 10 + s % 9
            if kb % 1024 == 0:
                kb += 1
            return f"SET work_mem = '{kb}kB'", ("work_mem", f"{kb}kB")
        value = f"t{self.cid}_{s}"
        return f"SET pgring_it.tag = '{value}'", ("tag", value)

    def op_set(self):
        s = self.next_seq()
        variant = self.rng.choice(["simple", "simple", "extended", "reset", "tx_commit",
                                   "tx_rollback", "set_local", "one_query_tx"])
        self.op = f"set/{variant}"
        if variant == "reset":
            which = self.rng.choice(["application_name", "work_mem", "pgring_it.tag"])
            self.op += f"/{which}"
            msgs = self.simple(f"RESET {which}", "CZ")
            check_eq(tags_of(msgs), ["RESET"], "RESET tag")
            if which == "application_name":
                self.app = self.startup_app  # RESET returns to the startup packet's value
            elif which == "work_mem":
                self.work_mem = self.default_work_mem
            else:
                self.tag = None
            self.check_state()
            return
        sql, (attr, value) = self._set_sql(s)
        self.op += f"/{attr}"
        if variant == "simple":
            msgs = self.simple(sql, "CZ")
            check_eq(tags_of(msgs), ["SET"], "SET tag")
            setattr(self, attr, value)
        elif variant == "extended":
            self.send_in_pieces(parse_message(sql) + bind_message() + execute_message()
                                + SYNC_MESSAGE)
            msgs = self.reply("12CZ", "I", "extended SET")
            setattr(self, attr, value)
        elif variant == "one_query_tx":
            # Only a reported parameter: another SET inside a multi-statement Query is one
            # pgring cannot replay, and pins the client to its server (session_state: pin).
            value = f"q{self.cid}s{s}"
            self.simple(f"BEGIN; SET application_name = '{value}'; COMMIT", "CCCZ")
            self.app = value
        else:
            self.simple("BEGIN", "CZ", "T")
            before = getattr(self, attr)
            local = variant == "set_local"
            self.simple(sql.replace("SET ", "SET LOCAL ", 1) if local else sql, "CZ", "T")
            setattr(self, attr, value)
            self.check_state("T")
            if variant == "tx_commit":
                self.simple("COMMIT", "CZ")
            else:
                self.simple("ROLLBACK" if variant == "tx_rollback" else "COMMIT", "CZ")
                setattr(self, attr, before)  # rolled back, or SET LOCAL: gone at the end
        self.check_state()

    def op_extended(self):
        s = self.next_seq()
        self.send_in_pieces(
            parse_message(f"SELECT $1::int AS client, $2::int AS seq, {STATE}")
            + bind_message([self.cid, s]) + describe_message(b"P") + execute_message()
            + SYNC_MESSAGE)
        msgs = self.reply("12TDCZ", "I", "extended query")
        self.check_rows(rows_of(msgs), [[self.cid, s, *self.state()]])

    def op_named(self):
        s = self.next_seq()
        if self.rng.random() < 0.5:
            self.send_in_pieces(bind_message([s], statement="stress_q") + execute_message()
                                + SYNC_MESSAGE)
            msgs = self.reply("2DCZ", "I", "Bind of stress_q")
        else:
            self.send_in_pieces(describe_message(b"S", "stress_q")
                                + bind_message([s], statement="stress_q")
                                + describe_message(b"P") + execute_message() + SYNC_MESSAGE)
            msgs = self.reply("tT2TDCZ", "I", "Describe + Bind of stress_q")
        self.check_rows(rows_of(msgs), [[self.cid, s, self.app]], "stress_q rows")

    def op_pipeline(self):
        n = self.rng.randint(3, 8)
        error_at = self.rng.randrange(n) if self.rng.random() < 0.5 else None
        payload, plans = b"", []
        for j in range(n):
            s = self.next_seq()
            if j == error_at:
                payload += (parse_message("SELECT $1::int, $2::int, 'before'")
                            + bind_message([self.cid, s]) + execute_message()
                            + parse_message("SELECT $1::int / ($2::int - $2::int)")
                            + bind_message([self.cid, s]) + execute_message()
                            + parse_message("SELECT $1::int, $2::int, 'after'")
                            + bind_message([self.cid, s]) + execute_message() + SYNC_MESSAGE)
                # The division is folded at Bind (a custom plan with the parameter values).
                plans.append(("12DC1EZ", [[self.cid, s, "before"]], "22012"))
            elif self.rng.random() < 0.5:
                payload += (bind_message([s], statement="stress_q") + execute_message()
                            + SYNC_MESSAGE)
                plans.append(("2DCZ", [[self.cid, s, self.app]], None))
            else:
                payload += (parse_message(f"SELECT $1::int, $2::int, {j}")
                            + bind_message([self.cid, s]) + execute_message() + SYNC_MESSAGE)
                plans.append(("12DCZ", [[self.cid, s, j]], None))
        self.send_in_pieces(payload)
        for j, (want_kinds, want_rows, sqlstate) in enumerate(plans):
            msgs = self.reply(want_kinds, "I", f"pipeline batch {j + 1}/{n}",
                              allowed=("12DC12EZ",) if sqlstate else None)
            self.check_rows(rows_of(msgs), want_rows, f"pipeline batch {j + 1}/{n} rows")
            if sqlstate:
                self.expect_sqlstate(msgs, sqlstate, f"pipeline batch {j + 1}/{n}")

    def op_error(self):
        s = self.next_seq()
        variant = self.rng.choice(["simple", "multi", "in_tx", "extended_parse"])
        self.op = f"error/{variant}"
        if variant == "simple":
            msgs = self.simple(f"SELECT {self.cid}, {s}, 1/({s} - {s})", "EZ", allowed=("TEZ",))
            self.expect_sqlstate(msgs, "22012", "division by zero")
        elif variant == "multi":
            msgs = self.simple(f"SELECT {self.cid}, {s}; SELECT 1/0; SELECT {self.cid}, {s} + 1",
                               "TDCEZ", allowed=("TDCTEZ",))
            self.expect_sqlstate(msgs, "22012", "division by zero")
            self.check_rows(rows_of(msgs), [[self.cid, s]], "rows before the error")
        elif variant == "in_tx":
            self.simple("BEGIN", "CZ", "T")
            msgs = self.simple(f"INSERT INTO stress_tx VALUES ({self.cid}, {s}, 0) "
                               f"RETURNING client, seq, k", "TDCZ", "T")
            self.check_rows(rows_of(msgs), [[self.cid, s, 0]], "INSERT RETURNING")
            self.aborted.add((s, 0))
            msgs = self.simple("SELECT 1/0", "EZ", "E", allowed=("TEZ",))
            self.expect_sqlstate(msgs, "22012", "division by zero in a transaction")
            msgs = self.simple(f"SELECT {self.cid}", "EZ", "E")
            self.expect_sqlstate(msgs, "25P02", "statement in an aborted transaction")
            msgs = self.simple("ROLLBACK", "CZ")
            check_eq(tags_of(msgs), ["ROLLBACK"], "ROLLBACK tag")
        else:
            self.send_in_pieces(parse_message("SELECT * FROM stress_no_such_table")
                                + bind_message() + execute_message() + SYNC_MESSAGE)
            msgs = self.reply("EZ", "I", "Parse of an unknown table")
            self.expect_sqlstate(msgs, "42P01", "unknown table")
        self.check_state()

    def _copy_in(self, s, lines, status="I", how="done"):
        """COPY FROM STDIN; returns the reply after CopyDone/CopyFail."""
        self.conn.send(message(b"Q", b"COPY stress_copy (client, seq, n) FROM STDIN\0"))
        msgs = read_messages_until(self.conn, (b"G", b"E", b"Z"))
        if msgs[-1][0] != b"G":
            raise Unexpected(f"client {self.cid} seq {s} ({self.op}): no CopyInResponse: "
                             f"{kinds_of(msgs)} {error_fields_in(msgs)}")
        data = "".join(lines).encode()
        pieces = self.rng.randint(1, 3)
        step = max(1, len(data) // pieces + 1)
        for i in range(0, len(data), step):
            self.conn.send(message(b"d", data[i:i + step]))
        if how == "fail":
            self.conn.send(message(b"f", b"stress test gives up\0"))
        else:
            self.conn.send(message(b"c"))
        return msgs

    def op_copy(self):
        s = self.next_seq()
        m = self.rng.randint(1, 60)
        lines = [f"{self.cid}\t{s}\t{n}\n" for n in range(m)]
        variant = self.rng.choice(["in", "in", "in_tx_rollback", "bad", "fail", "out"])
        if variant == "in":
            self._copy_in(s, lines)
            msgs = self.reply("CZ", "I", "COPY FROM STDIN")
            check_eq(tags_of(msgs), [f"COPY {m}"], "COPY tag")
            self.copied[s] = m
            msgs = self.simple(f"SELECT count(*), min(client), max(client), sum(n) FROM "
                               f"stress_copy WHERE client = {self.cid} AND seq = {s}", "TDCZ")
            self.check_rows(rows_of(msgs), [[m, self.cid, self.cid, m * (m - 1) // 2]],
                            "rows copied in")
        elif variant == "in_tx_rollback":
            self.simple("BEGIN", "CZ", "T")
            self._copy_in(s, lines)
            self.reply("CZ", "T", "COPY in a transaction")
            msgs = self.simple(f"SELECT count(*) FROM stress_copy WHERE client = {self.cid} "
                               f"AND seq = {s}", "TDCZ", "T")
            self.check_rows(rows_of(msgs), [[m]], "rows copied in the transaction")
            self.simple("ROLLBACK", "CZ")
        elif variant in ("bad", "fail"):
            if variant == "bad":
                lines.insert(self.rng.randrange(len(lines) + 1), f"{self.cid}\tnot-a-seq\t0\n")
            self._copy_in(s, lines, how=variant)
            msgs = self.reply("EZ", "I", f"COPY ({variant})")
            self.expect_sqlstate(msgs, "22P02" if variant == "bad" else "57014", "COPY error")
            msgs = self.simple(f"SELECT count(*) FROM stress_copy WHERE client = {self.cid} "
                               f"AND seq = {s}", "TDCZ")
            self.check_rows(rows_of(msgs), [[0]], "rows of a failed COPY")
        else:
            msgs = self.simple(f"COPY (SELECT {self.cid}, {s}, g FROM generate_series(1, {m}) g) "
                               f"TO STDOUT", "H" + "d" * m + "cCZ")
            got = [b.decode() for k, b in msgs if k == b"d"]
            want = [f"{self.cid}\t{s}\t{g}\n" for g in range(1, m + 1)]
            if got != want:
                self.mismatch("COPY TO STDOUT data", got[:3], want[:3])

    def _transaction(self, s, outcome):
        """BEGIN, INSERTs tagged (client, s, k), checks, then COMMIT or ROLLBACK."""
        self.simple("BEGIN", "CZ", "T")
        msgs = self.simple(f"SELECT pg_backend_pid(), {self.cid}, {s}", "TDCZ", "T")
        pid, client, seq = rows_of(msgs)[0]
        self.check_rows([[client, seq]], [[self.cid, s]], "SELECT in the transaction")
        inserted = []
        for k in range(self.rng.randint(1, 4)):
            if self.rng.random() < 0.5:
                msgs = self.simple(f"INSERT INTO stress_tx VALUES ({self.cid}, {s}, {k}) "
                                   f"RETURNING client, seq, k, pg_backend_pid()", "TDCZ", "T")
            else:
                self.send_in_pieces(
                    parse_message("INSERT INTO stress_tx VALUES ($1, $2, $3) "
                                  "RETURNING client, seq, k, pg_backend_pid()")
                    + bind_message([self.cid, s, k]) + execute_message() + SYNC_MESSAGE)
                msgs = self.reply("12DCZ", "T", "extended INSERT")
            self.check_rows(rows_of(msgs), [[self.cid, s, k, pid]],
                            "INSERT RETURNING (same backend throughout the transaction)")
            check_eq(tags_of(msgs), ["INSERT 0 1"], "INSERT tag")
            inserted.append((s, k))
            if self.rng.random() < 0.3:
                time.sleep(self.rng.random() * 0.003)  # hold the server a little
        if outcome == "commit" and self.rng.random() < 0.3:
            self.check_state("T")
        msgs = self.simple(f"SELECT count(*), pg_backend_pid() FROM stress_tx WHERE client = "
                           f"{self.cid} AND seq = {s}", "TDCZ", "T")
        self.check_rows(rows_of(msgs), [[len(inserted), pid]], "own rows in the transaction")
        return inserted

    def op_tx_commit(self):
        s = self.next_seq()
        if self.rng.random() < 0.25:
            # A whole transaction in one Query.
            msgs = self.simple(f"BEGIN; INSERT INTO stress_tx VALUES ({self.cid}, {s}, 0); "
                               f"INSERT INTO stress_tx VALUES ({self.cid}, {s}, 1) "
                               f"RETURNING client, seq; COMMIT", "CCTDCCZ")
            self.check_rows(rows_of(msgs), [[self.cid, s]], "one-Query transaction")
            self.committed.update({(s, 0), (s, 1)})
            return
        inserted = self._transaction(s, "commit")
        msgs = self.simple("COMMIT", "CZ")
        check_eq(tags_of(msgs), ["COMMIT"], "COMMIT tag")
        self.committed.update(inserted)

    def op_tx_rollback(self):
        s = self.next_seq()
        inserted = self._transaction(s, "rollback")
        self.aborted.update(inserted)
        msgs = self.simple("ROLLBACK", "CZ")
        check_eq(tags_of(msgs), ["ROLLBACK"], "ROLLBACK tag")

    def op_disconnect(self):
        s = self.next_seq()
        how = self.rng.choice(["terminate", "close", "half", "inflight", "pipeline", "copy",
                               "outside"])
        if how != "outside":
            self.simple("BEGIN", "CZ", "T")
            msgs = self.simple(f"INSERT INTO stress_tx VALUES ({self.cid}, {s}, 0) "
                               f"RETURNING client, seq, k", "TDCZ", "T")
            self.check_rows(rows_of(msgs), [[self.cid, s, 0]], "INSERT before disconnecting")
            self.aborted.add((s, 0))
        if how in ("terminate", "outside"):
            self.conn.send(message(b"X"))
        elif how == "half":
            self.conn.send(message(b"Q", f"INSERT INTO stress_tx VALUES ({self.cid}, {s}, 1)\0"
                                   .encode())[:self.rng.randint(1, 20)])
            self.aborted.add((s, 1))
        elif how == "inflight":
            self.conn.send(message(b"Q", f"/* stress-abandoned */ INSERT INTO stress_tx VALUES "
                                         f"({self.cid}, {s}, 1); SELECT pg_sleep(0.1)\0".encode()))
            self.aborted.add((s, 1))
        elif how == "pipeline":
            self.conn.send(parse_message("INSERT INTO stress_tx VALUES ($1, $2, $3)")
                           + bind_message([self.cid, s, 2]) + execute_message() + SYNC_MESSAGE
                           + bind_message([s], statement="stress_q") + execute_message()
                           + SYNC_MESSAGE)
            self.aborted.add((s, 2))
        elif how == "copy":
            self.conn.send(message(b"Q", b"COPY stress_copy (client, seq, n) FROM STDIN\0"))
            read_messages_until(self.conn, (b"G",))
            self.conn.send(message(b"d", f"{self.cid}\t{s}\t0\n".encode()))
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.drop()
        self.connect()
        self.check_state()  # a fresh session: startup values, nothing of the old one

    OPS = [("simple", 14), ("set", 10), ("extended", 10), ("named", 10), ("pipeline", 12),
           ("error", 8), ("copy", 10), ("tx_commit", 12), ("tx_rollback", 6), ("disconnect", 6)]

    def run(self):
        self.connect()
        names = [n for n, _ in self.OPS]
        weights = [w for _, w in self.OPS]
        for _ in range(OPS_PER_CLIENT):
            self.op = self.rng.choices(names, weights)[0]
            self.ops[self.op] += 1
            try:
                getattr(self, "op_" + self.op)()
            except Mismatch as e:
                self.mismatches.append(str(e))
            except Exception as e:  # noqa: BLE001 - every other failure is an unexpected error
                self.errors.append(f"client {self.cid} seq {self.seq} ({self.op}): "
                                   f"{type(e).__name__}: {e}")
            else:
                continue
            # After a failed check the session's state is unknown: start a new one.
            self.drop()
            try:
                self.connect()
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"client {self.cid}: reconnect failed: {type(e).__name__}: {e}")
                return
        try:
            self.conn.terminate()
        except Exception:  # noqa: BLE001
            pass


# ---------------------------------------------------------------------------------------------

def test_stress_transaction_pool():
    log(f"stress seed {SEED} (PGRING_STRESS_SEED), {CLIENTS} clients x {OPS_PER_CLIENT} "
        f"operations, pool_size {POOL_SIZE}")
    monitor = monitor_connect()
    wait_no_backends(monitor, DB)
    setup = monitor_connect(db=DB, user=USER)
    query(setup, "DROP TABLE IF EXISTS stress_tx, stress_copy")
    query(setup, "CREATE TABLE stress_tx (client int NOT NULL, seq int NOT NULL, k int NOT NULL)")
    query(setup, "CREATE TABLE stress_copy (client int NOT NULL, seq int NOT NULL, n int)")
    default_work_mem = query_one(setup, "SELECT current_setting('work_mem')")
    config = pool_config(pool_size=POOL_SIZE, prepared_statements=40)
    try:
        with Pgring(config) as p:
            clients = [StressClient(p, cid, default_work_mem) for cid in range(CLIENTS)]
            started = time.monotonic()
            with LiveBackendSampler(DB, POOL_SIZE) as sampler:
                crashed = run_clients(lambda i: clients[i].run(), CLIENTS, timeout=150,
                                      what="stress client")
            elapsed = time.monotonic() - started
            ops = collections.Counter()
            for c in clients:
                ops.update(c.ops)
            mismatches = [m for c in clients for m in c.mismatches]
            errors = crashed + [e for c in clients for e in c.errors]
            log(f"{sum(ops.values())} operations in {elapsed:.1f}s: {dict(sorted(ops.items()))}")
            log(f"server connections in pg_stat_activity: max {max(sampler.live, default=0)} "
                f"live, max {max(sampler.raw, default=0)} including backends pgring had "
                f"already closed, over {len(sampler.live)} samples")
            for title, items in (("replies that did not belong to their request", mismatches),
                                 ("unexpected errors", errors)):
                if items:
                    log(f"seed {SEED}: {len(items)} {title}:\n" + "\n".join(items[:25]))
            check(not mismatches and not errors,
                  f"seed {SEED}: {len(mismatches)} replies did not belong to their request, "
                  f"{len(errors)} unexpected errors (listed above); first: "
                  f"{(mismatches + errors)[0] if mismatches or errors else ''}")
            sampler.check_max()
            check(max(sampler.live) >= 1, "never saw a server connection")

            # Committed rows: exactly what each client committed, none it rolled back or
            # abandoned.
            present = collections.defaultdict(set)
            for client, seq, k in query(setup, "SELECT client, seq, k FROM stress_tx"):
                present[client].add((seq, k))
            problems = []
            for c in clients:
                missing = c.committed - present[c.cid]
                aborted = c.aborted & present[c.cid]
                unknown = present[c.cid] - c.committed - c.aborted
                if missing or aborted or unknown:
                    problems.append(f"client {c.cid}: committed rows missing {sorted(missing)}, "
                                    f"rolled-back/abandoned rows present {sorted(aborted)}, "
                                    f"rows nobody inserted {sorted(unknown)}")
            check(not problems, "stress_tx:\n" + "\n".join(problems[:20]))
            check(sum(len(c.committed) for c in clients) > 0, "no transaction committed")
            check(sum(len(c.aborted) for c in clients) > 0, "no transaction rolled back")
            copied = collections.defaultdict(dict)
            for client, seq, n in query(setup, "SELECT client, seq, count(*) FROM stress_copy "
                                               "GROUP BY client, seq"):
                copied[client][seq] = n
            problems = [f"client {c.cid}: COPY rows per seq {copied[c.cid]}, expected {c.copied}"
                        for c in clients if copied[c.cid] != c.copied]
            check(not problems, "stress_copy:\n" + "\n".join(problems[:20]))
            log(f"{sum(len(c.committed) for c in clients)} committed rows, "
                f"{sum(len(c.aborted) for c in clients)} rolled back or abandoned, "
                f"{sum(sum(c.copied.values()) for c in clients)} copied")

            # No server left inside a transaction, and pgring still serves a fresh client with
            # a clean session.
            wait_until(lambda: not idle_in_transaction(monitor, DB), 10,
                       what="no server idle in transaction")
            check(p.alive(), "pgring died")
            fresh = connect(p.port, db=DB, user=USER, application_name="stress_fresh")
            try:
                row = query(fresh, f"SELECT 42, {STATE}")[0]
                check(row[:3] == (42, "stress_fresh", default_work_mem) and row[3] in (None, ""),
                      f"a fresh client's session: {row}")
                check_eq(query_one(fresh, "SELECT count(*) FROM stress_tx"),
                         sum(len(c.committed) for c in clients), "rows seen through pgring")
            finally:
                fresh.close()
            raw = login(p.port, user=USER, db=DB)
            raw.send(bind_message([1], statement="stress_q") + execute_message() + SYNC_MESSAGE)
            msgs, status = read_until_ready(raw)
            check_eq(sqlstates_of(msgs), ["26000"], "a fresh client binding stress_q (never "
                                                    "prepared in its session)")
            check_eq(status, "I", "status after the failed Bind")
            check_eq(raw.simple_query("SELECT 'still fine'"), [["still fine"]])
            raw.send(close_message(b"S", "stress_q") + SYNC_MESSAGE)
            msgs, _ = read_until_ready(raw)
            check_eq(kinds_of(msgs), "3Z", "Close of a name the client never used")
            raw.terminate()
    finally:
        query(setup, "DROP TABLE IF EXISTS stress_tx, stress_copy")
        setup.close()
        monitor.close()


def test_session_settings_after_departures():
    """The stress test's session checks, one at a time on a single server connection: a client
    leaving inside a failed transaction, or with a query running inside a transaction, must not
    make pgring lose track of the next client's SETs (which would leak them to later clients);
    RESET of a parameter given in the startup packet returns to that value, as in PostgreSQL."""
    q = "SELECT current_setting('work_mem'), current_setting('application_name')"
    setup = monitor_connect(db=DB, user=USER)
    default_work_mem = query_one(setup, "SELECT current_setting('work_mem')")
    setup.close()
    problems = []
    with Pgring(pool_config(pool_size=1)) as p:
        for how in ("failed transaction", "query running in a transaction", "plain transaction"):
            a = login(p.port, user=USER, db=DB, application_name="A")
            a.simple_query("BEGIN")
            if how == "failed transaction":
                a.send(message(b"Q", b"SELECT 1/0\0"))
                read_until_ready(a)
            elif how == "query running in a transaction":
                a.send(message(b"Q", b"SELECT pg_sleep(0.3)\0"))
                time.sleep(0.05)
            a.close()
            b = login(p.port, user=USER, db=DB, application_name="B")
            c = login(p.port, user=USER, db=DB, application_name="C")
            b.simple_query("SET work_mem = '1111kB'")
            seen_c = c.simple_query(q)
            seen_b = b.simple_query(q)
            if seen_c != [[default_work_mem, "C"]] or seen_b != [["1111kB", "B"]]:
                problems.append(f"after a client left in a {how}: B ran SET work_mem = "
                                f"'1111kB'; then C sees {seen_c} (expected "
                                f"{[[default_work_mem, 'C']]}), B sees {seen_b} (expected "
                                f"{[['1111kB', 'B']]})")
            b.terminate()
            c.terminate()
        a = login(p.port, user=USER, db=DB, application_name="startup_name")
        a.simple_query("SET application_name = 'changed'")
        a.simple_query("RESET application_name")
        got = a.simple_query("SELECT current_setting('application_name')")
        if got != [["startup_name"]]:
            problems.append(f"RESET application_name gives {got}; PostgreSQL returns to the "
                            f"startup packet's value [['startup_name']]")
        a.terminate()
    check(not problems, "\n".join(problems))


if __name__ == "__main__":
    run_tests(globals())
