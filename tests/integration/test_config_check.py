#!/usr/bin/python3
"""`pgring --config FILE --check`: a good file passes; errors name the YAML path and line, and an
unknown key suggests the nearest known one. Also --version."""

import os
import re
import subprocess
import tempfile

from lib import PGRING_BIN, SOURCE_DIR, check, check_eq, fail, run_tests

GOOD = """\
listen: ["127.0.0.1:6432"]
workers: 2
max_client_conn: 100
log: {level: info, format: text}
auth:
  method: scram-sha-256
users:
  app: {password: "secret"}
defaults:
  pool_mode: session
  pool_size: 10
  server_reset_query: DISCARD ALL
timeouts: {query_wait: 30s, server_idle: 10m}
databases:
  app:
    host: 127.0.0.1
    port: 5432
    dbname: app
"""

BAD_POOL_SIZE = """\
listen: ["127.0.0.1:6432"]
auth:
  method: trust
databases:
  app:
    host: 127.0.0.1
    pool_size: 0
"""
BAD_POOL_SIZE_LINE = 7

TYPO = """\
listen: ["127.0.0.1:6432"]
auth:
  method: trust
defaults:
  pool_sise: 10
databases:
  app: {host: 127.0.0.1}
"""
TYPO_LINE = 5


def run_pgring(*args, timeout=30):
    if not os.access(PGRING_BIN, os.X_OK):
        fail(f"pgring binary not found: {PGRING_BIN}")
    try:
        r = subprocess.run([PGRING_BIN, *args], stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        fail(f"pgring {' '.join(args)} did not exit within {timeout}s")
    return r.returncode, (r.stdout + r.stderr).strip()


def check_file(text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="pgring-check-") as f:
        f.write(text)
        f.flush()
        return run_pgring("--config", f.name, "--check")


def test_good_config():
    rc, out = check_file(GOOD)
    check_eq(rc, 0, f"--check exit status ({out})")
    check("configuration ok" in out, f"output: {out}")


def test_reference_config():
    path = os.path.join(SOURCE_DIR, "config", "pgring.yaml")
    rc, out = run_pgring("--config", path, "--check")
    check_eq(rc, 0, f"--check of config/pgring.yaml ({out})")


def test_pool_size_zero():
    rc, out = check_file(BAD_POOL_SIZE)
    check(rc != 0, f"pool_size 0 accepted: {out}")
    check("databases.app.pool_size" in out, f"error does not name the key: {out}")
    check(re.search(rf"line\s*{BAD_POOL_SIZE_LINE}\b", out),
          f"error does not name line {BAD_POOL_SIZE_LINE}: {out}")
    check("configuration ok" not in out, out)


def test_unknown_key_suggestion():
    rc, out = check_file(TYPO)
    check(rc != 0, f"unknown key accepted: {out}")
    check("pool_sise" in out, f"error does not name the unknown key: {out}")
    check("pool_size" in out, f"error does not suggest pool_size: {out}")
    check(re.search(rf"line\s*{TYPO_LINE}\b", out), f"error does not name line {TYPO_LINE}: {out}")


def test_bad_yaml_and_missing_file():
    rc, out = check_file("listen: [unclosed\n")
    check(rc != 0, f"malformed YAML accepted: {out}")
    rc, out = run_pgring("--config", "/nonexistent/pgring.yaml", "--check")
    check(rc != 0, f"missing file accepted: {out}")
    check("/nonexistent/pgring.yaml" in out, f"error does not name the file: {out}")


def test_config_that_serves_nothing_warns():
    for text in ("", "# only a comment\n", 'listen: ["127.0.0.1:6432"]\n'):
        rc, out = check_file(text)
        check_eq(rc, 0, f"--check of {text!r} ({out})")
        check("warning: databases: none configured" in out, f"no warning for {text!r}: {out}")
        check("configuration ok (with warnings)" in out, f"output for {text!r}: {out}")


def test_pgbouncer_spellings_point_to_pgring_keys():
    rc, out = check_file("default_pool_size: 20\n")
    check(rc != 0 and "PgBouncer's default_pool_size is defaults.pool_size in pgring" in out,
          f"default_pool_size: {out}")
    rc, out = check_file("pool_mode: transaction\n")
    check(rc != 0 and "defaults.pool_mode" in out, f"top-level pool_mode: {out}")
    rc, out = check_file("databases:\n  app:\n\thost: x\n")
    check(rc != 0 and "indents with a tab" in out, f"a tab: {out}")


def test_version():
    rc, out = run_pgring("--version")
    check_eq(rc, 0, f"--version exit status ({out})")
    check(re.search(r"\d+\.\d+\.\d+", out), f"no version number in {out!r}")


if __name__ == "__main__":
    run_tests(globals())
