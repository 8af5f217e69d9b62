"""Integration-test harness for pgring.

Every tests/integration/test_<feature>.py is a standalone program run with /usr/bin/python3
(Debian's python, which has python3-psycopg2 and python3-yaml). It imports this module, defines
functions named test_*, and ends with `run_tests(globals())`. Exit status: 0 pass, 1 fail,
77 skip (ctest's SKIP_RETURN_CODE).

Environment (set by ctest, see tests/CMakeLists.txt):
  PGRING_BIN            the pgring binary            (default: <source>/build/pgring)
  PGRING_TEST_PGHOST    the test PostgreSQL's host   (default: 127.0.0.1)
  PGRING_TEST_PGPORT    the test PostgreSQL's port   (default: 25432)
  PGRING_TEST_PGDATA    its data directory (only the server-restart test needs it)
  PGRING_LIBPQ_CLIENT   tests/integration/libpq_client.c built by CMake
  PGRING_SOURCE_DIR     the source tree              (default: two levels above this file)

The test PostgreSQL is the one scripts/pg-throwaway.sh creates: superuser postgres (trust over
TCP), roles app/secret (SCRAM), pgring_scram/scram_pw, pgring_md5/md5_pw, pgring_plain/plain_pw,
databases pgring_test and app.

Besides psql/psycopg2/pgbench, the harness has a tiny wire-protocol client (`RawConn`, `login`)
that does trust, cleartext, MD5 and SCRAM-SHA-256 itself, so tests can see exactly which
authentication request pgring sent and the SQLSTATE of errors raised during connection startup
(libpq, and so psql and psycopg2, report only the message text for those).
"""

import base64
import copy
import ctypes
import faulthandler
import hashlib
import hmac
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import psycopg2
import psycopg2.extensions
import yaml

SOURCE_DIR = os.environ.get("PGRING_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PGRING_BIN = os.environ.get("PGRING_BIN") or os.path.join(SOURCE_DIR, "build", "pgring")
PGHOST = os.environ.get("PGRING_TEST_PGHOST", "127.0.0.1")
PGPORT = int(os.environ.get("PGRING_TEST_PGPORT", "25432"))
# The fixture's DIR may be a symlink to the real data directory (scripts/pg-throwaway.sh does
# that when the postgres OS user cannot reach the build tree); pg_ctl wants the real one.
PGDATA = os.path.realpath(os.environ["PGRING_TEST_PGDATA"]) if os.environ.get(
    "PGRING_TEST_PGDATA") else ""
LIBPQ_CLIENT = os.environ.get("PGRING_LIBPQ_CLIENT", "")
PSQL = "/usr/bin/psql"
NO_PASSFILE = "/nonexistent/pgring-test-pgpass"  # keeps ~/.pgpass out of the tests

SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "ThreadSanitizer", "runtime error:")


class TestFailure(AssertionError):
    """A failed check; raised by the helpers below (any exception fails a test)."""


class Skip(Exception):
    """Raised by skip_test(): this one test is skipped, the others still run."""


def fail(message):
    raise TestFailure(message)


def check(condition, message="check failed"):
    if not condition:
        raise TestFailure(message)


def check_eq(actual, expected, what="value"):
    if actual != expected:
        raise TestFailure(f"{what}: expected {expected!r}, got {actual!r}")


def skip(reason):
    """Skip the whole program (every test in it): exit 77."""
    print(f"SKIP: {reason}", flush=True)
    sys.exit(77)


def skip_test(reason):
    """Skip only the current test."""
    raise Skip(reason)


def log(message):
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------
# Ports and processes

def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _die_with_parent():
    # Runs in the child between fork and exec: if this test program dies (ctest timeout, a
    # crash), the kernel kills pgring too, so no daemon outlives its test.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    """Poll predicate() until it returns a true value; return that value or fail after timeout."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            fail(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def run_with_timeout(fn, seconds, what="operation"):
    """Run fn() in a thread; return its result, re-raise its exception, or fail if it is still
    running after `seconds` (a hang). Use for calls that block inside libpq, which a SIGALRM
    cannot interrupt."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        fail(f"{what} hung: no result after {seconds}s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# ---------------------------------------------------------------------------------------------
# The daemon

class Pgring:
    """Run pgring with a config dict for the duration of a `with` block.

        with Pgring({"auth": {"method": "trust"}}) as p:
            rc, out, err = psql(p.port, "SELECT 1")

    Defaults added when absent: listen on a free 127.0.0.1 port; databases: pgring_test -> the
    test PostgreSQL; timeouts.shutdown 5s (so a stuck shutdown shows up as a failure here rather
    than as a 30 s wait). On leaving the block pgring is stopped with SIGTERM and the test fails
    if it did not exit 0 or its log shows a sanitizer report.
    """

    def __init__(self, config=None, start_timeout=10.0, env=None):
        self.config = copy.deepcopy(config) if config else {}
        if "listen" not in self.config:
            self.config["listen"] = [f"127.0.0.1:{free_port()}"]
        self.port = self._first_tcp_port(self.config["listen"])
        self.config.setdefault("databases", {"pgring_test": {"host": PGHOST, "port": PGPORT}})
        timeouts = self.config.setdefault("timeouts", {})
        if isinstance(timeouts, dict):
            timeouts.setdefault("shutdown", "5s")
        self.start_timeout = start_timeout
        self.extra_env = env or {}
        self.dir = tempfile.mkdtemp(prefix="pgring-it-")
        self.config_path = os.path.join(self.dir, "pgring.yaml")
        self.log_path = os.path.join(self.dir, "pgring.log")
        self.proc = None
        self.exit_code = None
        self._problems = []

    @staticmethod
    def _first_tcp_port(listen):
        for entry in listen if isinstance(listen, list) else [listen]:
            entry = str(entry)
            if entry.startswith("/"):
                continue
            return int(entry.rsplit(":", 1)[1])
        fail("the config's listen: has no host:port entry")

    def write_config(self, config=None):
        """(Re)write the YAML file; use with reload() to test SIGHUP."""
        if config is not None:
            self.config = copy.deepcopy(config)
        # Most tests check what one pool does (which backend serves whom, one server slot
        # reused): they run one reactor unless they say otherwise. test_workers.py runs several,
        # and PGRING_IT_WORKERS=N runs every test that does not set workers with N.
        self.config.setdefault("workers", int(os.environ.get("PGRING_IT_WORKERS", "1")))
        with open(self.config_path, "w") as f:
            yaml.safe_dump(self.config, f, sort_keys=False, default_flow_style=False)

    def start(self):
        if not os.access(PGRING_BIN, os.X_OK):
            fail(f"pgring binary not found or not executable: {PGRING_BIN} (set PGRING_BIN)")
        self.write_config()
        env = dict(os.environ)
        # Sanitizer builds: report everything, with stacks, and make sure leaks are checked.
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:print_summary=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        env.setdefault("TSAN_OPTIONS", "halt_on_error=0:second_deadlock_stack=1")
        env.update(self.extra_env)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [PGRING_BIN, "--config", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
            env=env, cwd=self.dir, preexec_fn=_die_with_parent)
        # Ready when pgring logs "listening on HOST:PORT" for our port, or (for a binary that
        # logs differently) when the port accepts TCP. The log is preferred: a probe
        # connection would count as a client for a moment (max_client_conn tests).
        listening = re.compile(rf"listening on \S*:{self.port}\b")
        started = time.monotonic()
        deadline = started + self.start_timeout
        while True:
            if listening.search(self.log()):
                return self
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                self._close_log()
                self._print_log("pgring exited during startup")
                fail(f"pgring exited with status {self.exit_code} before accepting connections "
                     f"on port {self.port}")
            if time.monotonic() - started > 1.0 and port_accepts(self.port, timeout=0.2):
                return self
            if time.monotonic() >= deadline:
                self._kill()
                self._close_log()
                self._print_log("pgring did not start listening")
                fail(f"pgring did not accept connections on port {self.port} within "
                     f"{self.start_timeout}s")
            time.sleep(0.05)

    def log(self):
        """Everything pgring wrote to stdout/stderr so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        """Wait until the log matches the regular expression `pattern`; return the match."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout, what=f"log line /{pattern}/")

    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def reload(self, config=None):
        """Optionally rewrite the config, then send SIGHUP."""
        if config is not None:
            self.write_config(config)
        check(self.alive(), "pgring is not running")
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Stop pgring with `sig` and return its exit status; fail if it takes over `timeout` s."""
        if self.proc is None:
            return None
        timed_out = False
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                timed_out = True
        if timed_out:
            self.exit_code = self.proc.returncode
            self._close_log()
            self._problems.append(f"pgring did not exit within {timeout}s of "
                                  f"{signal.Signals(sig).name}; killed it")
            self._print_log("pgring did not stop")
            fail(self._problems[-1])
        self.exit_code = self.proc.returncode
        self._close_log()
        return self.exit_code

    def _kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _close_log(self):
        f = getattr(self, "_log_file", None)
        if f and not f.closed:
            f.close()

    def _print_log(self, title, max_lines=300):
        lines = self.log().splitlines()
        print(f"===== {title}: pgring log ({self.log_path}), last {min(len(lines), max_lines)} "
              f"of {len(lines)} lines =====", flush=True)
        for line in lines[-max_lines:]:
            print(line)
        print("===== end of pgring log =====", flush=True)

    def problems(self):
        """What is wrong with the finished process: exit status, sanitizer reports."""
        problems = list(self._problems)
        if self.exit_code is not None and self.exit_code != 0 and not problems:
            problems.append(f"pgring exited with status {self.exit_code}, expected 0")
        text = self.log()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                problems.append(f"pgring's log contains {marker!r}")
        return problems

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        try:
            if self.alive():
                self.stop()
        except TestFailure:
            if exc is None:
                raise
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self._kill()
            self._close_log()
        problems = self.problems()
        if exc is not None:
            # The test already failed: show the log to explain it, keep the original error.
            self._print_log(f"test failed ({exc_type.__name__})")
            for p in problems:
                print(f"also: {p}", flush=True)
            return False
        if problems:
            self._print_log("; ".join(problems))
            fail("; ".join(problems))
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


# ---------------------------------------------------------------------------------------------
# Clients

def _client_env(password=None):
    env = dict(os.environ)
    for k in ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE", "PGHOST",
              "PGPORT", "PGUSER", "PGDATABASE", "PGAPPNAME"):
        env.pop(k, None)
    env["PGPASSFILE"] = NO_PASSFILE
    env["PGCONNECT_TIMEOUT"] = "10"
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def psql(port, sql, db="pgring_test", user="postgres", password=None, extra_args=(),
         host="127.0.0.1", timeout=120):
    """Run `psql -X -A -t -v ON_ERROR_STOP=1 -c SQL`; return (returncode, stdout, stderr) with
    stdout and stderr stripped. A psql that runs longer than `timeout` seconds fails the test."""
    cmd = [PSQL, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(port),
           "-U", user, "-d", db, "-c", sql, *extra_args]
    try:
        r = subprocess.run(cmd, env=_client_env(password), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"psql hung for {timeout}s: {sql!r} on port {port}")
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def psql_ok(port, sql, **kwargs):
    """psql() that must succeed; returns stdout."""
    rc, out, err = psql(port, sql, **kwargs)
    if rc != 0:
        fail(f"psql {sql!r} failed with status {rc}: {err}")
    return out


def connect(port, db="pgring_test", user="postgres", password=None, host="127.0.0.1",
            **kwargs):
    """A psycopg2 connection to pgring, autocommit on. kwargs go to psycopg2.connect
    (sslmode=..., connect_timeout=..., application_name=...)."""
    params = dict(host=host, port=port, dbname=db, user=user, connect_timeout=10,
                  passfile=NO_PASSFILE)
    if password is not None:
        params["password"] = password
    params.update(kwargs)
    conn = psycopg2.connect(**params)
    conn.autocommit = True
    return conn


def direct_connect(db="pgring_test", user="postgres", password=None, **kwargs):
    """A psycopg2 connection straight to the test PostgreSQL (not through pgring)."""
    return connect(PGPORT, db=db, user=user, password=password, host=PGHOST, **kwargs)


def query(conn, sql, params=None):
    """Run sql on a psycopg2 connection; return all rows (or None for commands without rows)."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else None


def query_one(conn, sql, params=None):
    rows = query(conn, sql, params)
    check(rows is not None and len(rows) == 1 and len(rows[0]) == 1,
          f"{sql!r}: expected one value, got {rows!r}")
    return rows[0][0]


def sqlstate_of(error):
    """The SQLSTATE of an exception from psycopg2, asyncpg or this harness, else None."""
    for attr in ("pgcode", "sqlstate"):
        code = getattr(error, attr, None)
        if code:
            return code
    return None


def expect_error(fn, sqlstate, message_contains=None):
    """Call fn() and check that it raises an error carrying `sqlstate` (a string, or a tuple of
    acceptable ones). Returns the exception. Works with psycopg2 errors (pgcode), asyncpg errors
    (sqlstate) and PgError from RawConn/login. Note: libpq-based clients report errors during
    connection startup without their SQLSTATE; check those with login()."""
    wanted = (sqlstate,) if isinstance(sqlstate, str) else tuple(sqlstate)
    try:
        value = fn()
    except Exception as e:  # noqa: BLE001 - inspected below
        code = sqlstate_of(e)
        if code not in wanted:
            fail(f"expected an error with SQLSTATE {'/'.join(wanted)}, got "
                 f"{type(e).__name__} (SQLSTATE {code}): {str(e).strip()}")
        if message_contains is not None and message_contains not in str(e):
            fail(f"error message {str(e).strip()!r} does not contain {message_contains!r}")
        return e
    fail(f"expected an error with SQLSTATE {'/'.join(wanted)}, but the call returned {value!r}")


def find_pg_tool(name):
    """Path of a PostgreSQL program: /usr/lib/postgresql/15/bin, else the newest version there,
    else PATH."""
    preferred = f"/usr/lib/postgresql/15/bin/{name}"
    if os.access(preferred, os.X_OK):
        return preferred
    base = "/usr/lib/postgresql"
    if os.path.isdir(base):
        versions = sorted((d for d in os.listdir(base) if d.replace(".", "").isdigit()),
                          key=lambda v: [int(x) for x in v.split(".")], reverse=True)
        for v in versions:
            path = os.path.join(base, v, "bin", name)
            if os.access(path, os.X_OK):
                return path
    found = shutil.which(name)
    if not found:
        fail(f"{name} not found (install postgresql: scripts/deps.sh)")
    return found


def pgbench(port, args, db="pgring_test", user="postgres", password=None, timeout=300):
    """Run pgbench against port with extra `args` (a list); return (returncode, stdout, stderr)."""
    cmd = [find_pg_tool("pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", user, *args, db]
    try:
        r = subprocess.run(cmd, env=_client_env(password), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"pgbench {' '.join(args)} hung for {timeout}s")
    return r.returncode, r.stdout, r.stderr


def as_postgres_cmd(cmd):
    """Prefix a command so it runs as the postgres OS user when we are root (like the fixture)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return list(cmd)


def pg_isready(host=PGHOST, port=PGPORT):
    r = subprocess.run([find_pg_tool("pg_isready"), "-q", "-h", host, "-p", str(port)],
                       stdin=subprocess.DEVNULL, capture_output=True)
    return r.returncode == 0


def md5_secret(user, password):
    """The "md5..." form of a password as PostgreSQL (and pgring's users:) store it."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# A minimal wire-protocol client: exact control over bytes, and SQLSTATEs of startup errors.

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class PgError(Exception):
    """An ErrorResponse: .fields maps field codes to values ('C' SQLSTATE, 'M' message, ...)."""

    def __init__(self, fields):
        self.fields = fields
        self.sqlstate = fields.get("C")
        self.pgcode = self.sqlstate
        super().__init__(f"{fields.get('S', 'ERROR')} {self.sqlstate}: {fields.get('M', '')}")


class ConnectionClosed(Exception):
    """The peer closed the connection (EOF or reset) before the expected message."""


def parse_fields(body):
    """ErrorResponse/NoticeResponse body -> {code: value}."""
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def startup_packet(user, database, protocol=PROTOCOL_3_0, **params):
    body = struct.pack("!I", protocol)
    items = {"user": user, "database": database, **params}
    for k, v in items.items():
        if v is not None:
            body += k.encode() + b"\0" + str(v).encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(kind, body=b""):
    """A regular protocol message: type byte, int32 length, body."""
    return kind + struct.pack("!I", len(body) + 4) + body


class RawConn:
    """A raw socket to pgring (or PostgreSQL) with helpers to read whole messages.

        c = RawConn(port)            # just the TCP connection
        c.send(bytes); c.read_message() -> (type, body); c.read_until_close() -> [(type, body)]
    """

    def __init__(self, port, host="127.0.0.1", timeout=10.0, source=None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.auth_requests = []   # authentication request codes seen (0 ok, 3, 5, 10, ...)
        self.parameters = {}
        self.backend_key = None
        self.notices = []

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as e:
                raise ConnectionClosed(f"connection reset ({e})") from e
            if not chunk:
                raise ConnectionClosed(f"connection closed by peer ({len(self.buf)} bytes "
                                       f"buffered, wanted {n})")
            self.buf += chunk

    def read_byte(self):
        """One byte (the answer to SSLRequest / GSSENCRequest)."""
        self._fill(1)
        b, self.buf = self.buf[:1], self.buf[1:]
        return b

    def read_message(self):
        """(type byte, body) of the next message."""
        self._fill(5)
        kind = self.buf[:1]
        (length,) = struct.unpack("!I", self.buf[1:5])
        if length < 4 or length > (1 << 30):
            raise ConnectionClosed(f"bad message length {length} for type {kind!r}")
        self._fill(1 + length)
        body = self.buf[5:1 + length]
        self.buf = self.buf[1 + length:]
        return kind, body

    def read_until_close(self, max_messages=1000):
        """Every message until the peer closes the connection."""
        messages = []
        while len(messages) < max_messages:
            try:
                messages.append(self.read_message())
            except ConnectionClosed:
                return messages
        fail(f"peer did not close the connection after {max_messages} messages")

    def is_closed(self, timeout=5.0):
        """True if the peer closes the connection within `timeout` without sending more."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return data == b""

    def ssl_request(self):
        """Send SSLRequest; return the one-byte answer (b'N' or b'S')."""
        self.send(struct.pack("!II", 8, SSL_REQUEST_CODE))
        return self.read_byte()

    def gssenc_request(self):
        self.send(struct.pack("!II", 8, GSSENC_REQUEST_CODE))
        return self.read_byte()

    def startup(self, user, database, password=None, **params):
        """Send a StartupMessage and complete authentication (trust, cleartext, MD5 or
        SCRAM-SHA-256) up to ReadyForQuery. Raises PgError on an ErrorResponse."""
        self.send(startup_packet(user, database, **params))
        scram = None
        while True:
            kind, body = self.read_message()
            if kind == b"E":
                raise PgError(parse_fields(body))
            if kind == b"R":
                (code,) = struct.unpack("!I", body[:4])
                self.auth_requests.append(code)
                if code == 0:
                    continue
                if password is None:
                    fail(f"server asked for authentication (request {code}) but no password "
                         f"was given")
                if code == 3:    # cleartext
                    self.send(message(b"p", password.encode() + b"\0"))
                elif code == 5:  # MD5, with a 4-byte salt
                    inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                    outer = "md5" + hashlib.md5(inner + body[4:8]).hexdigest()
                    self.send(message(b"p", outer.encode() + b"\0"))
                elif code == 10:  # SASL: mechanism list
                    mechanisms = [m.decode() for m in body[4:].split(b"\0") if m]
                    check("SCRAM-SHA-256" in mechanisms, f"no SCRAM-SHA-256 in {mechanisms}")
                    scram = _Scram(password)
                    first = scram.client_first().encode()
                    self.send(message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first))
                                      + first))
                elif code == 11:  # SASLContinue
                    check(scram is not None, "SASLContinue before SASL")
                    self.send(message(b"p", scram.client_final(body[4:].decode()).encode()))
                elif code == 12:  # SASLFinal
                    check(scram is not None, "SASLFinal before SASL")
                    scram.verify_server_final(body[4:].decode())
                else:
                    fail(f"unsupported authentication request {code}")
            elif kind == b"S":
                k, v, _ = body.split(b"\0", 2)
                self.parameters[k.decode()] = v.decode()
            elif kind == b"K":
                self.backend_key = body
            elif kind == b"N":
                self.notices.append(parse_fields(body))
            elif kind == b"Z":
                return self
            else:
                fail(f"unexpected message {kind!r} during startup")

    def simple_query(self, sql):
        """Send a simple Query; return the rows (lists of str/None) of all its results.
        Raises PgError (after reading up to ReadyForQuery) if the server reported an error."""
        self.send(message(b"Q", sql.encode() + b"\0"))
        rows, error = [], None
        while True:
            kind, body = self.read_message()
            if kind == b"D":
                (n,) = struct.unpack("!H", body[:2])
                pos, row = 2, []
                for _ in range(n):
                    (ln,) = struct.unpack("!i", body[pos:pos + 4])
                    pos += 4
                    if ln < 0:
                        row.append(None)
                    else:
                        row.append(body[pos:pos + ln].decode())
                        pos += ln
                rows.append(row)
            elif kind == b"E":
                error = PgError(parse_fields(body))
            elif kind == b"N":
                self.notices.append(parse_fields(body))
            elif kind == b"Z":
                if error is not None:
                    raise error
                return rows

    def terminate(self):
        try:
            self.send(message(b"X"))
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class _Scram:
    """Client side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it. `gs2` is the header
    ("n,,", "y,," or "p=tls-server-end-point,,"); `cbind` the binding data that goes with "p"."""

    def __init__(self, password, gs2="n,,", cbind=b""):
        self.gs2 = gs2
        self.cbind = cbind
        self.password = password.encode()
        self.nonce = base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = None

    def client_first(self):
        return self.gs2 + self.first_bare

    def client_final(self, server_first):
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        check(attrs["r"].startswith(self.nonce), "SCRAM server nonce does not extend ours")
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self.password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        binding = base64.b64encode(self.gs2.encode() + self.cbind).decode()
        without_proof = f"c={binding},r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first},{without_proof}".encode()
        client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        self.server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
        return f"{without_proof},p={base64.b64encode(proof).decode()}"

    def verify_server_final(self, server_final):
        attrs = dict(kv.split("=", 1) for kv in server_final.split(","))
        check("v" in attrs, f"SCRAM server-final without verifier: {server_final!r}")
        check(base64.b64decode(attrs["v"]) == self.server_signature,
              "SCRAM server signature does not verify")


def login(port, user="postgres", db="pgring_test", password=None, host="127.0.0.1",
          timeout=10.0, source=None, **params):
    """Open a RawConn (from address `source`, if given) and log in; returns it ready for
    simple_query(). Raises PgError."""
    conn = RawConn(port, host=host, timeout=timeout, source=source)
    try:
        return conn.startup(user, db, password=password, **params)
    except BaseException:
        conn.close()
        raise


def login_error(port, user="postgres", db="pgring_test", password=None, **kwargs):
    """Log in expecting failure; return the PgError. Fails if the login succeeds."""
    try:
        conn = login(port, user=user, db=db, password=password, **kwargs)
    except PgError as e:
        return e
    conn.terminate()
    fail(f"login as {user!r} to {db!r} succeeded but should have failed")


# ---------------------------------------------------------------------------------------------
# The runner

def run_tests(namespace, timeout=240):
    """Run every function named test_* in `namespace` (pass globals()) in definition order.
    Command-line arguments, if any, select tests by name. Prints PASS/FAIL/SKIP per test and a
    summary; exits 0 when all ran tests passed, 1 otherwise, 77 when every test was skipped.
    A test still running after `timeout` seconds aborts the program with a traceback dump."""
    tests = [(name, fn) for name, fn in namespace.items()
             if name.startswith("test_") and callable(fn)]
    selected = sys.argv[1:]
    if selected:
        unknown = set(selected) - {name for name, _ in tests}
        if unknown:
            print(f"unknown tests: {', '.join(sorted(unknown))}", flush=True)
            sys.exit(1)
        tests = [(n, f) for n, f in tests if n in selected]
    program = os.path.basename(sys.argv[0])
    passed, failed, skipped = [], [], []
    for name, fn in tests:
        print(f"----- {program}: {name}", flush=True)
        # A hang inside C code (libpq) cannot be interrupted; dump every thread and exit.
        faulthandler.dump_traceback_later(timeout, exit=True)
        started = time.monotonic()
        try:
            fn()
        except Skip as e:
            skipped.append(name)
            print(f"SKIP {name}: {e}", flush=True)
        except Exception:  # noqa: BLE001 - any exception is a failure
            failed.append(name)
            traceback.print_exc(file=sys.stdout)
            print(f"FAIL {name} ({time.monotonic() - started:.1f}s)", flush=True)
        else:
            passed.append(name)
            print(f"PASS {name} ({time.monotonic() - started:.1f}s)", flush=True)
        finally:
            faulthandler.cancel_dump_traceback_later()
    summary = f"{program}: {len(passed)} passed, {len(failed)} failed"
    if skipped:
        summary += f", {len(skipped)} skipped"
    print(summary, flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
        sys.exit(1)
    if tests and len(skipped) == len(tests):
        sys.exit(77)
    sys.exit(0)


# ---------------------------------------------------------------------------------------------
# Helpers for pooling tests (transaction/statement mode, pool sizing)

MONITOR_APP = "pgring_it_monitor"  # application_name of direct connections count_backends skips


def pool_config(pool_mode="transaction", pool_size=5, timeouts=None, users=None, **defaults):
    """A trust-auth config with databases pgring_test and app (both on the test PostgreSQL) and
    `defaults:` {pool_mode, pool_size, **defaults}; `timeouts` and `users` are added if given."""
    config = {
        "auth": {"method": "trust"},
        "defaults": {"pool_mode": pool_mode, "pool_size": pool_size, **defaults},
        "databases": {
            "pgring_test": {"host": PGHOST, "port": PGPORT},
            "app": {"host": PGHOST, "port": PGPORT},
        },
    }
    if timeouts:
        config["timeouts"] = dict(timeouts)
    if users is not None:
        config["users"] = users
    return config


def monitor_connect(db="pgring_test", user="postgres", **kwargs):
    """A direct connection to the test PostgreSQL that count_backends() does not count."""
    return direct_connect(db=db, user=user, application_name=MONITOR_APP, **kwargs)


def count_backends(monitor, datname, usename=None):
    """Client backends on the test PostgreSQL for database `datname` (and user `usename`), not
    counting connections opened with monitor_connect() (nor `monitor` itself)."""
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
           "AND datname = %s AND pid <> pg_backend_pid() "
           "AND application_name IS DISTINCT FROM %s")
    params = [datname, MONITOR_APP]
    if usename is not None:
        sql += " AND usename = %s"
        params.append(usename)
    return query_one(monitor, sql, params)


def backend_pids(monitor, datname, usename=None):
    """The pids count_backends() would count, as a set."""
    sql = ("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
           "AND datname = %s AND pid <> pg_backend_pid() "
           "AND application_name IS DISTINCT FROM %s")
    params = [datname, MONITOR_APP]
    if usename is not None:
        sql += " AND usename = %s"
        params.append(usename)
    return {row[0] for row in query(monitor, sql, params)}


def wait_no_backends(monitor, datname, usename=None, timeout=15):
    """Wait until no (leftover) backend of an earlier pgring is connected to `datname`."""
    wait_until(lambda: count_backends(monitor, datname, usename) == 0, timeout,
               what=f"no leftover backends on database {datname}")


class BackendSampler:
    """Samples count_backends() from its own monitor connection every `interval` seconds while
    the `with` block runs:  with BackendSampler("app") as s: ...;  then s.max, s.samples."""

    def __init__(self, datname, usename=None, interval=0.02, settle=False):
        self.datname, self.usename, self.interval = datname, usename, interval
        self.settle = settle
        self.samples = []
        self.errors = []
        self._stop = threading.Event()
        self._monitor = monitor_connect()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.samples.append(count_backends(self._monitor, self.datname, self.usename))
            except Exception as e:  # noqa: BLE001 - reported by check_max()
                self.errors.append(str(e))
                return
            time.sleep(self.interval)

    @property
    def max(self):
        return max(self.samples) if self.samples else 0

    def check_max(self, limit, what="server connections"):
        check(not self.errors, f"sampling pg_stat_activity failed: {self.errors}")
        check(self.samples, "no pg_stat_activity samples taken")
        check(self.max <= limit, f"saw {self.max} {what} on database {self.datname} "
                                 f"(limit {limit}) over {len(self.samples)} samples")

    def __enter__(self):
        # settle=True: backends of an earlier pgring may still be exiting (slowly on a loaded
        # machine); sample only once they are gone, so the limit is this pgring's alone. Only
        # for a sampler started before this pgring opened any server connection.
        if self.settle:
            wait_no_backends(self._monitor, self.datname, self.usename)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self._monitor.close()
        return False


def run_clients(fn, count, timeout=120, what="client"):
    """Run fn(i) for i in range(count), each in its own thread, and wait for all (failing the
    test if one is still running after `timeout` s). Returns the list of error strings."""
    errors = []
    lock = threading.Lock()

    def target(i):
        try:
            fn(i)
        except Exception as e:  # noqa: BLE001 - collected for the caller
            with lock:
                errors.append(f"{what} {i}: {type(e).__name__} (SQLSTATE {sqlstate_of(e)}): "
                              f"{str(e).strip()}")

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    hung = sum(1 for t in threads if t.is_alive())
    if hung:
        fail(f"{hung} of {count} {what}s still running after {timeout}s; errors so far: {errors}")
    return errors


class Background:
    """Run fn() in a daemon thread; .result(timeout) returns its value or re-raises its error,
    failing the test if it has not finished by then. .done() tells whether it finished."""

    def __init__(self, fn):
        self._out = {}
        self._finished = threading.Event()

        def target():
            try:
                self._out["value"] = fn()
            except BaseException as e:  # noqa: BLE001 - handed to result()
                self._out["error"] = e
            finally:
                self._finished.set()

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def done(self):
        return self._finished.is_set()

    def result(self, timeout=30, what="background operation"):
        if not self._finished.wait(timeout):
            fail(f"{what} did not finish within {timeout}s")
        if "error" in self._out:
            raise self._out["error"]
        return self._out.get("value")


# Extended-protocol messages for RawConn.send() (frontend side).

def parse_message(sql, name="", param_oids=()):
    body = name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", len(param_oids))
    for oid in param_oids:
        body += struct.pack("!I", oid)
    return message(b"P", body)


def bind_message(params=(), portal="", statement=""):
    """Bind with text-format parameters (None is NULL) and text-format results."""
    body = portal.encode() + b"\0" + statement.encode() + b"\0"
    body += struct.pack("!H", 0)  # all parameters in text format
    body += struct.pack("!H", len(params))
    for p in params:
        if p is None:
            body += struct.pack("!i", -1)
        else:
            data = str(p).encode()
            body += struct.pack("!i", len(data)) + data
    body += struct.pack("!H", 0)  # all results in text format
    return message(b"B", body)


def describe_message(kind=b"P", name=""):
    return message(b"D", kind + name.encode() + b"\0")


def execute_message(portal="", max_rows=0):
    return message(b"E", portal.encode() + b"\0" + struct.pack("!I", max_rows))


def close_message(kind=b"S", name=""):
    return message(b"C", kind + name.encode() + b"\0")


SYNC_MESSAGE = message(b"S")
FLUSH_MESSAGE = message(b"H")


def data_row_values(body):
    """A DataRow body -> list of str/None."""
    (n,) = struct.unpack("!H", body[:2])
    pos, row = 2, []
    for _ in range(n):
        (ln,) = struct.unpack("!i", body[pos:pos + 4])
        pos += 4
        if ln < 0:
            row.append(None)
        else:
            row.append(body[pos:pos + ln].decode())
            pos += ln
    return row


def read_messages_until(conn, kinds, max_messages=100000):
    """Read messages from a RawConn up to and including the first whose type is in `kinds`
    (e.g. b"Z" or (b"s", b"C")); return them as a list of (type, body)."""
    out = []
    while len(out) < max_messages:
        kind, body = conn.read_message()
        out.append((kind, body))
        if kind in kinds:
            return out
    fail(f"no message of type {kinds!r} within {max_messages} messages")


def read_until_ready(conn):
    """Read up to ReadyForQuery; return (messages, transaction status 'I'/'T'/'E')."""
    msgs = read_messages_until(conn, (b"Z",))
    return msgs, msgs[-1][1][:1].decode()


def error_fields_in(messages):
    """The fields of every ErrorResponse among `messages`."""
    return [parse_fields(body) for kind, body in messages if kind == b"E"]


def send_query_collect(conn, sql):
    """Send a simple Query on a RawConn; read up to ReadyForQuery or until the peer closes.
    Returns (messages, closed): closed is True when the connection ended before a
    ReadyForQuery (e.g. an error pgring sends before disconnecting)."""
    conn.send(message(b"Q", sql.encode() + b"\0"))
    msgs = []
    while True:
        try:
            kind, body = conn.read_message()
        except ConnectionClosed:
            return msgs, True
        msgs.append((kind, body))
        if kind == b"Z":
            return msgs, False
