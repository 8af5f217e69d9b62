#!/usr/bin/python3
"""systemd (docs/operations.md): systemd/pgring.service passes `systemd-analyze verify` when
its ExecStart/ExecStartPre name the real binary, declares what the design asks for, and pgring
speaks the notify protocol it declares (READY=1, RELOADING=1 on SIGHUP, STOPPING=1, WATCHDOG=1)."""

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from lib import (PGRING_BIN, Pgring, SOURCE_DIR, check, check_eq, connect, fail, log, pool_config,
                query, query_one, run_tests, skip_test, wait_exit)

UNIT = os.path.join(SOURCE_DIR, "systemd", "pgring.service")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_with_binary(binary):
    with open(UNIT) as f:
        text = f.read()
    check("/usr/local/bin/pgring" in text, "the unit does not run /usr/local/bin/pgring")
    d = tempfile.mkdtemp(prefix="pgring-it-unit-")
    path = os.path.join(d, "pgring.service")
    with open(path, "w") as f:
        f.write(text.replace("/usr/local/bin/pgring", binary))
    return path


def verify(path):
    if not SYSTEMD_ANALYZE:
        skip_test("systemd-analyze is not installed")
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", path], capture_output=True, text=True,
                       timeout=60, cwd=os.path.dirname(path))
    return r.returncode, (r.stdout + r.stderr).strip()


def test_unit_passes_systemd_analyze_verify():
    check(os.access(PGRING_BIN, os.X_OK), f"pgring binary not found: {PGRING_BIN}")
    path = unit_with_binary(os.path.realpath(PGRING_BIN))
    rc, out = verify(path)
    log(f"systemd-analyze verify: status {rc}: {out or '(no output)'}")
    check_eq(rc, 0, f"systemd-analyze verify failed:\n{out}")
    # Warnings (a misspelt key or value) do not change the status: there must be none.
    complaints = [ln for ln in out.splitlines() if "pgring.service" in ln]
    check(not complaints, "systemd-analyze verify complains:\n" + "\n".join(complaints))
    # The check has teeth: a unit whose binary does not exist fails it.
    rc, out = verify(unit_with_binary("/nonexistent/pgring-it/pgring"))
    check(rc != 0 and "not executable" in out,
          f"verify of a unit with a missing binary: status {rc}: {out}")
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_unit_declares_design_settings():
    settings = {}
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    one = {k: v[-1] for k, v in settings.items()}
    check_eq(one.get("Type"), "notify", "Type")
    # An upgrade in place (SIGUSR2) hands the service to a new process, which says MAINPID=.
    check_eq(one.get("NotifyAccess"), "all", "NotifyAccess")
    check(one.get("WatchdogSec"), "no WatchdogSec: the reactors' watchdog pings go unused")
    check(re.search(r"kill\s+-HUP\s+\$MAINPID", one.get("ExecReload", "")),
          f"ExecReload does not send SIGHUP: {one.get('ExecReload')}")
    check_eq(one.get("KillSignal", "SIGTERM"), "SIGTERM", "KillSignal")
    check("--check" in one.get("ExecStartPre", ""), "ExecStartPre does not validate the config")
    check(int(one.get("LimitNOFILE", "0")) >= 10100, "LimitNOFILE below max_client_conn + 100")
    stop = one.get("TimeoutStopSec", "90")
    m = re.fullmatch(r"(\d+)\s*(s|sec|min|m)?", stop)
    check(m, f"TimeoutStopSec {stop!r} not understood by this test")
    seconds = int(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)
    check(seconds > 30, f"TimeoutStopSec {stop} does not leave room for timeouts.shutdown (30s)")
    filters = " ".join(settings.get("SystemCallFilter", []))
    for call in ("io_uring_setup", "io_uring_enter", "io_uring_register"):
        check(call in filters, f"SystemCallFilter does not allow {call}")
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "RestrictAddressFamilies"):
        check(key in one, f"hardening option {key} missing")


class NotifySocket:
    """A NOTIFY_SOCKET (unix datagram) that collects what pgring sends with sd_notify."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pgring-it-notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []

    def collect(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                return self.messages
            self.messages.extend(data.decode().split("\n"))

    def wait_for(self, item, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if item in self.collect():
                return
        fail(f"no {item!r} on NOTIFY_SOCKET within {timeout}s; got {self.messages}")

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_sd_notify_protocol():
    ns = NotifySocket()
    try:
        env = {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"}
        with Pgring(pool_config(), env=env) as p:
            ns.wait_for("READY=1")
            c = connect(p.port)
            check_eq(query_one(c, "SELECT 1"), 1)
            c.close()
            ns.wait_for("WATCHDOG=1", timeout=5)
            pings_before = ns.collect().count("WATCHDOG=1")
            time.sleep(1.0)
            pings = ns.collect().count("WATCHDOG=1") - pings_before
            check(pings >= 2, f"{pings} WATCHDOG=1 pings in 1 s with WatchdogSec 0.4 s")
            ns.messages.clear()
            p.proc.send_signal(signal.SIGHUP)
            ns.wait_for("RELOADING=1")
            ns.wait_for("READY=1")
            p.check_no_leaks()  # before the test stops pgring itself
            p.proc.send_signal(signal.SIGTERM)
            check_eq(wait_exit(p, 10), 0, "exit status")
            ns.wait_for("STOPPING=1", timeout=2)
            log(f"sd_notify messages after SIGHUP: {[m for m in ns.messages if m]}")
    finally:
        ns.close()


# ptrace(2) requests: a seized thread can be stopped alone (PTRACE_INTERRUPT), the rest of the
# process runs on: one stalled reactor of several, as a bug or a blocking call would leave it.
PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 17, 0x4206, 0x4207, 0x40000000


def thread_id(pid, name):
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() == name:
                return int(tid)
    fail(f"no thread named {name!r} in pgring ({os.listdir(f'/proc/{pid}/task')})")


def test_watchdog_notices_one_stalled_reactor():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    ns = NotifySocket()
    try:
        env = {"NOTIFY_SOCKET": ns.path, "WATCHDOG_USEC": "400000"}
        config = pool_config()
        config["workers"] = 2
        with Pgring(config, env=env) as p:
            ns.wait_for("WATCHDOG=1", timeout=5)
            tid = thread_id(p.proc.pid, "reactor-1")
            if libc.ptrace(PTRACE_SEIZE, tid, None, None) != 0:
                skip_test(f"ptrace(PTRACE_SEIZE) failed: {os.strerror(ctypes.get_errno())}")
            try:
                check_eq(libc.ptrace(PTRACE_INTERRUPT, tid, None, None), 0, "PTRACE_INTERRUPT")
                os.waitpid(tid, WALL)  # reactor 1 is stopped; reactor 0 runs on
                time.sleep(0.4)  # pings already on their way
                ns.messages.clear()
                ns.collect()
                ns.messages.clear()
                time.sleep(1.0)
                pings = ns.collect().count("WATCHDOG=1")
                log(f"WATCHDOG=1 pings in 1 s with reactor 1 stopped: {pings}")
                check_eq(pings, 0, "pings while one reactor is stopped")
            finally:
                libc.ptrace(PTRACE_DETACH, tid, None, None)
            ns.wait_for("WATCHDOG=1", timeout=2)  # it turns again: the pings resume
            p.wait_log("reactor 1 has not turned", timeout=2)
            c = connect(p.port)
            check_eq(query_one(c, "SELECT 1"), 1)
            c.close()
    finally:
        ns.close()


def test_stopping_when_shutdown_starts():
    # STOPPING=1 goes out when the drain begins (systemd shows "deactivating" and stops the
    # watchdog), not when it is over.
    ns = NotifySocket()
    try:
        env = {"NOTIFY_SOCKET": ns.path}
        with Pgring(pool_config(timeouts={"shutdown": "20s"}), env=env,
                    skip_leak_check="the test stops pgring itself") as p:
            ns.wait_for("READY=1")
            c = connect(p.port)
            c.autocommit = False
            query(c, "SELECT 1")  # a transaction open: the drain waits for it
            p.proc.send_signal(signal.SIGTERM)
            ns.wait_for("STOPPING=1", timeout=2)
            check(p.proc.poll() is None, "pgring stopped without waiting for the transaction")
            c.commit()
            c.close()
            check_eq(wait_exit(p, 10), 0, "exit status")
    finally:
        ns.close()


if __name__ == "__main__":
    run_tests(globals())
