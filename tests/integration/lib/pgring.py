"""The Pgring fixture: run the daemon with a config for the duration of a `with` block, check
its exit and its log, and check that the test leaked nothing (see Pgring.check_no_leaks).
pool_config() builds the usual config."""

import copy
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import yaml

from .backends import backends
from .checks import TestFailure, check, fail, log, wait_until
from .clients import monitor_connect
from .env import PGHOST, PGPORT, PGRING_BIN, SANITIZER_MARKERS
from .ops import ADMIN_USER, STATS_USER
from .procfs import TcpSocket, fd_snapshot, ports_connected_to

__all__ = ["Pgring", "pool_config", "free_port", "port_accepts", "wait_exit", "send_signal",
           "check_running", "log_line_problem"]


def pool_config(pool_mode="transaction", pool_size=5, timeouts=None, users=None,
                databases=None, admin=True, metrics_port=None, **defaults):
    """A trust-auth config: databases pgring_test and app on the test PostgreSQL (or
    `databases`), `defaults:` {pool_mode, pool_size, **defaults}, the admin console for
    ADMIN_USER (admin) and STATS_USER (stats) unless admin=False, /metrics on `metrics_port` if
    given; `timeouts` and `users` are added if given. PGRING_IT_DEBUG_LOG=1 in the environment
    turns on pgring's debug log (every connection event)."""
    config = {
        "auth": {"method": "trust"},
        "defaults": {"pool_mode": pool_mode, "pool_size": pool_size, **defaults},
        "databases": databases if databases is not None else {
            "pgring_test": {"host": PGHOST, "port": PGPORT},
            "app": {"host": PGHOST, "port": PGPORT},
        },
    }
    if admin:
        config["admin"] = {"users": [ADMIN_USER], "stats_users": [STATS_USER]}
    if metrics_port is not None:
        config["metrics"] = {"listen": f"127.0.0.1:{metrics_port}"}
    if timeouts:
        config["timeouts"] = dict(timeouts)
    if users is not None:
        config["users"] = users
    if os.environ.get("PGRING_IT_DEBUG_LOG"):
        config["log"] = {"level": "debug"}
    return config


# ---------------------------------------------------------------------------------------------
# Ports and processes

_handed_out = []  # ports free_port() returned lately: a second call must not return one again


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this process was not
    given lately (a metrics port chosen before pgring binds its listen port could otherwise be
    the same one: 'Address already in use')."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            break
    _handed_out.append(port)
    del _handed_out[:-256]
    return port


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


# ---------------------------------------------------------------------------------------------
# The daemon

class Pgring:
    """Run pgring with a config dict for the duration of a `with` block.

        with Pgring({"auth": {"method": "trust"}}) as p:
            rc, out, err = psql(p.port, "SELECT 1")

    Defaults added when absent: listen on a free 127.0.0.1 port; databases: pgring_test -> the
    test PostgreSQL; timeouts.shutdown 5s (so a stuck shutdown shows up as a failure here rather
    than as a 30 s wait); workers 1 (or $PGRING_IT_WORKERS).

    When the block ends without an exception, check_no_leaks() runs first: every client the
    test opened must be closed by then (pgring's view), and pgring must be back to the fds it
    had right after start, with only idle server connections in its pools. Then pgring is
    stopped with SIGTERM and the test fails if it did not exit 0, its log shows a sanitizer
    report, or its shutdown gave up on leftover connections.

    A test that cannot meet the leak check says why: Pgring(config, skip_leak_check="pgring is
    killed with SIGKILL"). A test that stops pgring itself inside the block (the check needs
    the running process) either calls p.check_no_leaks() before it does, or says why not."""

    def __init__(self, config=None, start_timeout=10.0, env=None, skip_leak_check=None,
                 leak_timeout=15.0, launcher=(), args=()):
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
        self.launcher = list(launcher)  # a command pgring runs under (taskset -c 0, ...)
        self.args = list(args)  # more command-line arguments (--takeover)
        if skip_leak_check is not None and not (isinstance(skip_leak_check, str)
                                                and skip_leak_check.strip()):
            fail("skip_leak_check needs the reason, as a string")
        self.skip_leak_check = skip_leak_check
        self.leak_timeout = leak_timeout
        self._final_leak_check_done = False
        self._leak_checks_passed = 0
        self.dir = tempfile.mkdtemp(prefix="pgring-it-")
        self.config_path = os.path.join(self.dir, "pgring.yaml")
        self.log_path = os.path.join(self.dir, "pgring.log")
        self.proc = None
        self.exit_code = None
        self._baseline = None
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
        # PGRING_IT_IO_ENGINE=epoll runs every test that does not choose its engine on epoll.
        if os.environ.get("PGRING_IT_IO_ENGINE") and "io" not in self.config:
            self.config["io"] = {"engine": os.environ["PGRING_IT_IO_ENGINE"]}
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
            self.launcher + [PGRING_BIN, "--config", self.config_path] + self.args,
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
                break
            if self.proc.poll() is not None:
                self.exit_code = self.proc.returncode
                self._close_log()
                self._print_log("pgring exited during startup")
                fail(f"pgring exited with status {self.exit_code} before accepting connections "
                     f"on port {self.port}")
            if time.monotonic() - started > 1.0 and port_accepts(self.port, timeout=0.2):
                break
            if time.monotonic() >= deadline:
                self._kill()
                self._close_log()
                self._print_log("pgring did not start listening")
                fail(f"pgring did not accept connections on port {self.port} within "
                     f"{self.start_timeout}s")
            time.sleep(0.05)
        self._take_baseline()
        return self

    def _take_baseline(self):
        """The fds the leak check compares with: taken once every reactor thread listens
        (pgring logs "N reactor threads serving"; the first "listening on" comes from the
        first reactor only)."""
        serving = re.compile(r"reactor threads? serving")
        deadline = time.monotonic() + 5.0
        while not serving.search(self.log()) and time.monotonic() < deadline and self.alive():
            time.sleep(0.02)
        if self.alive():
            self._baseline = fd_snapshot(self.pid())

    def reset_leak_baseline(self):
        """Take the leak check's fd baseline again now (after a reload that legitimately
        opened something: a new listener, ...)."""
        self._baseline = fd_snapshot(self.pid())

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

    def check_running(self, when=""):
        """Fail clearly if the pgring process is gone (crashed, or stopped by someone else)."""
        if self.alive():
            return
        lines = self.log().strip().splitlines()[-4:]
        note = ""
        if self.exit_code is None and any("SIGTERM" in ln or "SIGINT" in ln for ln in lines):
            note = (": it got a signal this test did not send (something outside the test "
                    "stopped it)")
        fail(f"pgring (pid {self.pid()}) is no longer running{when}, exit status "
             f"{self.proc.returncode}{note}; its log ends with {lines}")

    def reload(self, config=None):
        """Optionally rewrite the config, then send SIGHUP."""
        if config is not None:
            self.write_config(config)
        check(self.alive(), "pgring is not running")
        self.proc.send_signal(signal.SIGHUP)

    # -----------------------------------------------------------------------------------------
    # The leak check

    def leak_state(self):
        """(problems, FdSnapshot) right now: what check_no_leaks() would complain about."""
        snap = fd_snapshot(self.pid())
        problems = []
        if snap.clients:
            problems.append(f"{len(snap.clients)} client connection(s) still open: "
                            f"{[str(c) for c in snap.clients]}")
        tcp_servers = [s for s in snap.servers if isinstance(s, TcpSocket)]
        half_closed = [str(s) for s in tcp_servers if s.state != "ESTABLISHED"]
        if half_closed:
            problems.append(f"server connection(s) not established (closed by the peer but "
                            f"not by pgring?): {half_closed}")
        if self._baseline is not None:
            extra = snap.baseline_count() - self._baseline.baseline_count()
            if extra > 0:
                problems.append(
                    f"{extra} fd(s) more than right after start, client and server "
                    f"connections aside: listeners {snap.listeners}, other {snap.other}; "
                    f"after start: listeners {self._baseline.listeners}, other "
                    f"{self._baseline.other}")
        # On the test PostgreSQL: pgring's server connections (found by their client port) must
        # be idle outside a transaction, and no backend whose client is gone (no live TCP
        # connection from its client port: pgring closed that server connection) may still
        # run a query or hold a transaction.
        ports = {s.local_port for s in tcp_servers
                 if s.remote_port == PGPORT and s.state == "ESTABLISHED"}
        monitor = monitor_connect(connect_timeout=5)
        try:
            rows = backends(monitor)
            live = ports_connected_to(PGPORT, self.pid())
        finally:
            monitor.close()

        def show(b):
            return (b.pid, b.datname, b.usename, b.state, b.query[:100])
        dirty = [show(b) for b in rows if b.client_port in ports
                 and (b.state != "idle" or b.xact_start is not None)]
        if dirty:
            problems.append(f"pooled server connection(s) not idle on PostgreSQL (pid, "
                            f"database, user, state, query): {dirty}")
        orphans = [show(b) for b in rows
                   if b.client_port is not None and b.client_port > 0
                   and b.client_port not in live and b.state not in ("idle", "")]
        if orphans:
            problems.append(f"PostgreSQL backend(s) still busy for a server connection that is "
                            f"gone (pid, database, user, state, query): {orphans}")
        return problems, snap

    def check_no_leaks(self, timeout=None):
        """Fail unless, within `timeout` s (pgring closes things asynchronously, so this polls):
          - no client connection is open on pgring's listeners (TCP or unix, /metrics too):
            every client the test opened has been closed and pgring has closed its side;
          - pgring has no more fds than right after start, client and server connections
            aside (no pipe, eventfd, file, ... left behind);
          - every server connection pgring keeps is ESTABLISHED (none half-closed) and, if it
            goes to the test PostgreSQL, is 'idle' outside any transaction in pg_stat_activity
            (found by its client port): nothing is left running or idle in transaction;
          - no backend of the test PostgreSQL whose client connection is gone (a server
            connection pgring closed) still runs a query or holds a transaction.
        Runs by itself at the end of the `with` block; call it earlier to check a phase."""
        timeout = self.leak_timeout if timeout is None else timeout
        check(self.alive(), "the leak check needs pgring running")
        last = {}

        def settled():
            last["problems"], last["snap"] = self.leak_state()
            return not last["problems"]

        started = time.monotonic()
        try:
            wait_until(settled, timeout, interval=0.1, what="pgring to have no leftovers")
        except TestFailure:
            problems = last.get("problems") or ["(no state read)"]
            fail(f"leak check failed after {timeout}s: " + "; ".join(problems))
        self._leak_checks_passed += 1
        snap = last["snap"]
        after_start = self._baseline.baseline_count() if self._baseline else "?"
        log(f"leak check ok after {time.monotonic() - started:.1f}s: {len(snap.servers)} idle "
            f"server connection(s), {snap.baseline_count()} other fds (after start: "
            f"{after_start})")

    # -----------------------------------------------------------------------------------------
    # Stopping

    def final_leak_check(self):
        """The leak check the end of the block (or stop()) runs, once; returns the failure
        message or None."""
        if self._final_leak_check_done:
            return None
        self._final_leak_check_done = True
        if self.skip_leak_check is not None:
            log(f"leak check skipped: {self.skip_leak_check}")
            return None
        if not self.alive():
            if self._leak_checks_passed:
                return None  # the test ran check_no_leaks() itself before it stopped pgring
            return ("the leak check could not run: pgring was no longer running at the end of "
                    "the test (a test that stops pgring itself says so: "
                    "Pgring(..., skip_leak_check='why'))")
        try:
            self.check_no_leaks()
        except TestFailure as e:
            return str(e)
        return None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Stop pgring with `sig` and return its exit status; fail if it takes over `timeout` s.
        While it still runs, the leak check runs first (once; unless skip_leak_check)."""
        if self.proc is None:
            return None
        if self.alive():
            leak_error = self.final_leak_check()
            if leak_error:
                fail(leak_error)
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
        """What is wrong with the finished process: exit status, sanitizer reports, a shutdown
        that gave up on connections that were never freed (pgring then logs "shutdown:
        stopping with ... left": every connection must be gone by the time pgring stops)."""
        problems = list(self._problems)
        if self.exit_code is not None and self.exit_code != 0 and not problems:
            problems.append(f"pgring exited with status {self.exit_code}, expected 0")
        text = self.log()
        for marker in SANITIZER_MARKERS:
            if marker in text:
                problems.append(f"pgring's log contains {marker!r}")
        for line in text.splitlines():
            if "shutdown: stopping with" in line:
                problems.append(f"pgring's shutdown gave up on leftover connections: {line}")
        if not any(marker in text for marker in SANITIZER_MARKERS):
            bad = [line for line in text.splitlines() if line and log_line_problem(line)]
            if bad:
                problems.append(f"{len(bad)} log line(s) a machine cannot read, e.g. "
                                f"{bad[0]!r}: {log_line_problem(bad[0])}")
        return problems

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            self._final_leak_check_done = True  # the test failed already: no leak check
        leak_error = self.final_leak_check()
        try:
            if self.alive():
                self.stop()
        except TestFailure:
            if exc is None and leak_error is None:
                raise
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self._kill()
            self._close_log()
        problems = self.problems()
        if leak_error:
            problems.insert(0, leak_error)
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


# Every line pgring writes, in either log.format, checked for every pgring the suite runs (the
# issue: logs a machine can read). Text: "<ts> <level> <message>". JSON: one object with ts,
# level and msg, and the connection-event fields with their types (docs/operations.md, "Logs").
_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (debug|info|warning|error) \S")
_JSON_TYPES = {"ts": str, "level": str, "msg": str, "event": str, "client": int, "server": int,
               "database": str, "user": str, "peer": str, "reason": str, "sqlstate": str,
               "fingerprint": str, "query": str, "duration_ms": (int, float),
               "wait_ms": (int, float)}
_EVENTS = {"client_login", "client_close", "server_close", "server_unavailable", "slow_query"}


def log_line_problem(line):
    """None for a well-formed log line, else what is wrong with it."""
    if not line.startswith("{"):
        return None if _TEXT_LINE.match(line) else "not '<ts> <level> <message>'"
    try:
        entry = json.loads(line)
    except ValueError as e:
        return f"not JSON: {e}"
    if not isinstance(entry, dict) or not {"ts", "level", "msg"} <= set(entry):
        return "a JSON line without ts, level and msg"
    for key, value in entry.items():
        want = _JSON_TYPES.get(key)
        if want is None:
            return f"unknown key {key!r}"
        if not isinstance(value, want) or isinstance(value, bool):
            return f"{key} is a {type(value).__name__}"
    if entry["level"] not in ("debug", "info", "warning", "error"):
        return f"level {entry['level']!r}"
    if "event" in entry and entry["event"] not in _EVENTS:
        return f"event {entry['event']!r}"
    return None


def check_running(p, when=""):
    """Fail clearly if the pgring process is gone (crashed, or stopped by someone else)."""
    p.check_running(when)


def wait_exit(p, timeout):
    """Wait for the pgring process to exit on its own; fail if it is still running after
    `timeout` s. Returns the exit status (and records it so Pgring.__exit__ checks it)."""
    try:
        p.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        fail(f"pgring still running {timeout}s later")
    return p.stop()


def send_signal(p, sig):
    check(p.alive(), "pgring is not running")
    p.proc.send_signal(sig)
