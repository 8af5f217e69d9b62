#!/usr/bin/python3
"""The reference configuration (config/pgring.yaml) cannot drift from the code: every key it
shows, set or commented out, is either exercised by a named integration test whose file sets
it, or marked as reserved with the reason. A key added to the reference without a test, a test
renamed or removed, or an entry left here for a key the reference no longer has fails this test.

Also here: the log keys (log.level, log.format), which no other test covers."""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import yaml

from lib import (PGRING_BIN, Pgring, check, check_eq, connect, free_port, log, log_line_problem,
                 login_error, pool_config, query_one, run_tests, wait_until)

SOURCE = os.environ.get("PGRING_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REFERENCE = os.path.join(SOURCE, "config", "pgring.yaml")
TESTS = os.path.join(SOURCE, "tests", "integration")

# Key path -> (test file, test function, a word that file must contain: how it sets the key).
# <database>/<user> stand for any entry of databases:/users:; rules[] for any auth rule.
EFFECTS = {
    "listen": ("test_auth_rules.py", "test_ipv4_clients_on_a_dual_stack_listener", '"listen"'),
    "workers": ("test_workers.py", "test_pool_size_is_global_with_64_clients", '"workers"'),
    "io.engine": ("test_seccomp.py", "test_without_io_uring_pgring_serves_on_epoll", '"engine"'),
    "max_client_conn": ("test_errors.py", "test_too_many_clients", "max_client_conn"),
    "max_concurrent_logins": ("test_errors.py", "test_logins_beyond_max_concurrent_logins_wait",
                              "max_concurrent_logins"),
    "max_concurrent_server_logins": ("test_hosts.py", "test_server_logins_per_host_are_capped",
                                     "max_concurrent_server_logins"),
    "ignore_startup_parameters": ("test_transaction_params.py",
                                  "test_ignore_startup_parameters", "ignore_startup_parameters"),
    "max_message_size": ("test_errors.py", "test_message_too_large", "max_message_size"),
    "tcp.keepalive": ("test_timeouts.py", "test_tcp_keepalive_on_client_and_server_sockets",
                      '"keepalive"'),
    "tcp.keepalive_idle": ("test_timeouts.py", "test_tcp_keepalive_on_client_and_server_sockets",
                           "keepalive_idle"),
    "tcp.keepalive_interval": ("test_timeouts.py",
                               "test_tcp_keepalive_on_client_and_server_sockets",
                               "keepalive_interval"),
    "tcp.keepalive_count": ("test_timeouts.py", "test_tcp_keepalive_on_client_and_server_sockets",
                            "keepalive_count"),
    "tcp.user_timeout": ("test_timeouts.py", "test_tcp_keepalive_on_client_and_server_sockets",
                         "user_timeout"),
    "log.level": ("test_reference_config.py", "test_log_level_and_json_format", '"level"'),
    "log.format": ("test_reference_config.py", "test_log_level_and_json_format", '"format"'),
    "log.connections": ("test_reference_config.py",
                        "test_log_connections_disconnections_and_file_reopened_on_sigusr1",
                        '"connections"'),
    "log.disconnections": ("test_reference_config.py",
                           "test_log_connections_disconnections_and_file_reopened_on_sigusr1",
                           '"disconnections"'),
    "log.file": ("test_reference_config.py",
                 "test_log_connections_disconnections_and_file_reopened_on_sigusr1", '"file"'),
    "metrics.listen": ("test_metrics.py", "test_health_and_ready", "metrics_port"),
    "upgrade.socket": ("test_upgrade.py", "test_upgrade_keeps_every_client", '"socket"'),
    "admin.users": ("test_admin_console.py", "test_every_show_command_returns_rows", "admin_rows"),
    "admin.stats_users": ("test_admin_console.py", "test_stats_user_may_only_show",
                          "STATS_USER"),
    "auth.method": ("test_auth.py", "test_md5_client_auth", '"method"'),
    "auth.rules": ("test_auth_rules.py", "test_rules_choose_the_method", '"rules"'),
    "auth.rules[].database": ("test_auth_rules.py", "test_rules_choose_the_method", '"database"'),
    "auth.rules[].user": ("test_auth_rules.py", "test_rules_choose_the_method", '"user"'),
    "auth.rules[].address": ("test_auth_rules.py", "test_rules_choose_the_method", '"address"'),
    "auth.rules[].tls": ("test_auth_rules.py", "test_rules_choose_the_method", '"tls"'),
    "auth.rules[].method": ("test_auth_rules.py", "test_rules_choose_the_method", '"method"'),
    "auth.query": ("test_auth_rules.py", "test_auth_query_scram_secret_and_pass_through",
                   "auth_query_config"),
    "auth.query.user": ("test_auth_rules.py", "test_auth_query_scram_secret_and_pass_through",
                        '"user"'),
    "auth.query.database": ("test_auth_rules.py",
                            "test_auth_query_secrets_belong_to_their_database", '"database"'),
    "auth.query.query": ("test_auth_rules.py", "test_auth_query_odd_results", '"query"'),
    "auth.query.cache": ("test_auth_rules.py", "test_auth_query_cache", '"cache"'),
    "tls.client.mode": ("test_tls.py", "test_mode_require_refuses_plain_clients", '"mode"'),
    "tls.client.cert": ("test_tls.py", "test_sslmode_require_and_verify_full", '"cert"'),
    "tls.client.key": ("test_tls.py", "test_sslmode_require_and_verify_full", '"key"'),
    "tls.client.ca": ("test_tls.py", "test_client_certificate_authentication", '"ca"'),
    "tls.client.min_version": ("test_tls.py", "test_min_version_and_ciphers", '"min_version"'),
    "tls.client.ciphers": ("test_tls.py", "test_min_version_and_ciphers", '"ciphers"'),
    "tls.server.mode": ("test_tls.py", "test_server_tls_modes", '"mode"'),
    "tls.server.ca": ("test_tls.py", "test_server_tls_modes", '"ca"'),
    "tls.server.cert": ("test_tls.py", "test_server_tls_client_certificate", '"cert"'),
    "tls.server.key": ("test_tls.py", "test_server_tls_client_certificate", '"key"'),
    "tls.server.min_version": ("test_tls.py", "test_server_min_version_and_ciphers",
                               '"min_version"'),
    "tls.server.ciphers": ("test_tls.py", "test_server_min_version_and_ciphers", '"ciphers"'),
    "users.<user>.password": ("test_auth.py", "test_md5_secret_in_config", '"password"'),
    "defaults.pool_mode": ("test_session_pool.py", "test_many_clients_share_small_pool",
                           "pool_mode"),
    "defaults.pool_size": ("test_pool_sizing.py",
                           "test_pool_size_respected_with_many_waiting_clients", "pool_size"),
    "defaults.min_pool_size": ("test_pool_sizing.py", "test_min_pool_size_opens_servers",
                               "min_pool_size"),
    "defaults.reserve_pool_size": ("test_pool_sizing.py", "test_reserve_pool",
                                   "reserve_pool_size"),
    "defaults.max_db_connections": ("test_pool_sizing.py", "test_max_db_connections",
                                    "max_db_connections"),
    "defaults.max_db_client_connections": ("test_errors.py",
                                           "test_per_database_and_per_user_client_limits",
                                           "max_db_client_connections"),
    "defaults.max_user_client_connections": ("test_errors.py",
                                             "test_per_database_and_per_user_client_limits",
                                             "max_user_client_connections"),
    "defaults.server_reset_query": ("test_session_reset.py",
                                    "test_session_mode_without_reset_query",
                                    "server_reset_query"),
    "defaults.prepared_statements": ("test_statement_cache.py", "test_same_names_different_texts",
                                     "prepared_statements"),
    "defaults.session_state": ("test_session_state.py", "test_error_policy_refuses_temp_table",
                               "session_state"),
    "defaults.listen": ("test_session_state.py", "test_pin_ends_with_the_state", 'listen="pin"'),
    "timeouts.client_login": ("test_timeouts.py", "test_client_login_timeout", "client_login"),
    "timeouts.server_connect": ("test_timeouts.py", "test_server_connect_timeout",
                                "server_connect"),
    "timeouts.server_login_retry": ("test_server_restart.py",
                                    "test_clients_wait_through_a_restart", "server_login_retry"),
    "timeouts.query_wait": ("test_timeouts.py", "test_query_wait_timeout", "query_wait"),
    "timeouts.reserve_pool": ("test_pool_sizing.py", "test_reserve_pool", '"reserve_pool"'),
    "timeouts.query": ("test_timeouts.py", "test_query_timeout_transaction_mode", '"query"'),
    "timeouts.transaction": ("test_timeouts.py", "test_transaction_timeout", '"transaction"'),
    "timeouts.idle_transaction": ("test_timeouts.py", "test_idle_transaction_timeout",
                                  "idle_transaction"),
    "timeouts.client_idle": ("test_timeouts.py", "test_client_idle_timeout_transaction_mode",
                             "client_idle"),
    "timeouts.server_idle": ("test_timeouts.py", "test_server_idle_timeout", "server_idle"),
    "timeouts.server_lifetime": ("test_timeouts.py", "test_server_lifetime_session_mode",
                                 "server_lifetime"),
    "timeouts.cancel_wait": ("test_faults.py", "test_server_stalls_mid_message", "cancel_wait"),
    "timeouts.shutdown": ("test_shutdown.py", "test_sigterm_deadline_cuts_off_open_transaction",
                          '"shutdown"'),
    "timeouts.autodb_idle": ("test_fallback_database.py",
                             "test_unused_pools_of_the_fallback_go_after_autodb_idle",
                             "autodb_idle"),
    "databases.<database>.host": ("test_tls.py", "test_server_tls_modes", '"host"'),
    "databases.<database>.port": ("test_auth.py", "test_server_login_with_database_credentials",
                                  '"port"'),
    "databases.<database>.hosts": ("test_hosts.py", "test_targets_route_writes_and_reads",
                                   '"hosts"'),
    "databases.<database>.target": ("test_hosts.py", "test_targets_route_writes_and_reads",
                                    '"target"'),
    "databases.<database>.load_balance": ("test_hosts.py", "test_targets_route_writes_and_reads",
                                          '"load_balance"'),
    "databases.<database>.max_replica_lag": ("test_hosts.py", "test_lagging_replica_is_skipped",
                                             '"max_replica_lag"'),
    "stats.fingerprints": ("test_query_stats.py", "test_wait_time_and_the_bound",
                           '"fingerprints"'),
    "stats.fingerprint_metrics": ("test_query_stats.py", "test_errors_rows_p99_order_and_metrics",
                                  '"fingerprint_metrics"'),
    "log.slow_query": ("test_query_stats.py", "test_slow_query_log", '"slow_query"'),
    "dns.ttl": ("test_hosts.py", "test_dns_change_is_followed", '"ttl"'),
    "health_check.interval": ("test_hosts.py", "test_replica_down_and_back", '"interval"'),
    "health_check.timeout": ("test_hosts.py", "test_replica_down_and_back", '"timeout"'),
    "health_check.query": ("test_hosts.py", "test_health_check_query_and_user", '"query"'),
    "health_check.user": ("test_hosts.py", "test_health_check_query_and_user", '"user"'),
    "health_check.password": ("test_hosts.py", "test_health_check_query_and_user",
                              '"password"'),
    "databases.<database>.dbname": ("test_auth.py", "test_server_login_with_database_credentials",
                                    '"dbname"'),
    "databases.<database>.user": ("test_pool_sizing.py",
                                  "test_forced_user_pool_opens_at_start_and_is_shared", '"user"'),
    "databases.<database>.password": ("test_auth.py",
                                      "test_server_login_with_database_credentials",
                                      '"password"'),
    "databases.<database>.pool_mode": ("test_session_reset.py",
                                       "test_pool_mode_change_retires_servers", "pool_mode"),
    "databases.<database>.pool_size": ("test_pool_sizing.py",
                                       "test_forced_user_pool_opens_at_start_and_is_shared",
                                       '"pool_size"'),
    "databases.<database>.timeouts": ("test_timeouts.py",
                                      "test_per_database_and_per_user_timeouts", '"timeouts"'),
}

# Keys the reference shows that have no effect yet, each with the reason. (None today.)
RESERVED = {}


def reference_keys():
    """Every key path in the reference: the set ones and the commented-out ones (a line
    `# key: ...` whose indentation, once uncommented, places it in the tree)."""
    paths = set()
    stack = []  # (indent, key) of the keys enclosing the current line
    for line in open(REFERENCE, encoding="utf-8"):
        m = re.match(r"^( *)(# )?( *)([a-z_]+):(\s|$)", line)
        if not m or (m.group(2) and not m.group(1) and not m.group(3)):
            continue  # not a key, or prose at column 0 ("# Durations: ...")
        indent = len(m.group(1)) + len(m.group(3))
        key = m.group(4)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = ".".join(k for _, k in stack)
        if parent == "auth.method":
            # The comment listing the keys of an auth rule, under auth.method's text.
            paths.add(f"auth.rules[].{key}")
            continue
        if parent in ("databases", "users"):
            key = "<database>" if parent == "databases" else "<user>"  # an example entry
        stack.append((indent, key))
        paths.add(".".join(k for _, k in stack))
    # A key with keys under it is a map, not a setting of its own (auth.query: is both).
    maps = {p.rsplit(".", 1)[0] for p in paths if "." in p}
    parsed = yaml.safe_load(open(REFERENCE, encoding="utf-8"))
    check(isinstance(parsed, dict), "the reference parses as a map")
    return {p for p in paths if p not in maps} | {"auth.query"}


def rule_keys_in_text():
    """The keys of an auth rule the reference lists in its comment (`key: ...` after `#   `)."""
    text = open(REFERENCE, encoding="utf-8").read()
    m = re.search(r"Keys of a rule[^\n]*\n((?:\s*#[^\n]*\n)+)", text)
    check(m is not None, "the reference lists the keys of an auth rule")
    return set(re.findall(r"\b([a-z_]+): ", m.group(1)))


def test_every_reference_key_has_an_effect():
    keys = reference_keys() | {f"auth.rules[].{k}" for k in rule_keys_in_text()}
    log(f"{len(keys)} keys in config/pgring.yaml")
    missing = sorted(k for k in keys if k not in EFFECTS and k not in RESERVED)
    check(not missing, "keys of config/pgring.yaml with no test named here (add one to EFFECTS "
                       "or RESERVED with the reason): " + ", ".join(missing))
    stale = sorted(k for k in list(EFFECTS) + list(RESERVED) if k not in keys)
    check(not stale, "entries here for keys config/pgring.yaml no longer has: " + ", ".join(stale))
    sources = {}
    for key, (file, function, word) in sorted(EFFECTS.items()):
        if file not in sources:
            path = os.path.join(TESTS, file)
            check(os.path.exists(path), f"{key}: {file} does not exist")
            text = open(path, encoding="utf-8").read()
            names = {n.name for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)}
            sources[file] = (text, names)
        text, names = sources[file]
        check(function in names, f"{key}: {file} has no {function}()")
        check(word in text, f"{key}: {file} never mentions {word}")


def test_log_level_and_json_format():
    # log.format json: every line is one JSON object with ts, level and msg; log.level debug
    # adds the connection events, warning leaves out info.
    config = pool_config()
    config["log"] = {"level": "debug", "format": "json"}
    with Pgring(config) as p:
        conn = connect(p.port, db="app")
        check_eq(query_one(conn, "SELECT 1"), 1)
        conn.close()
        p.wait_log(r'C-1 closed')
        lines = [line for line in p.log().splitlines() if line.strip()]
    check(len(lines) >= 3, f"log lines: {lines}")
    levels = set()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            check(False, f"not JSON: {line!r}")
        check(isinstance(entry, dict) and {"ts", "level", "msg"} <= set(entry),
              f"a JSON log line without ts/level/msg: {line!r}")
        levels.add(entry["level"])
    check("debug" in levels, f"log.level debug logged no debug line: {levels}")
    # The check the harness runs on every line of every pgring of the suite (lib/pgring.py)
    # passes these and refuses what a log pipeline could not read.
    check(all(log_line_problem(line) is None for line in lines), "the harness's line check")
    for bad in ('{"ts":"t","level":"info"}', '{"ts":"t","level":"info","msg":"m","client":"1"}',
                '{"ts":"t","level":"info","msg":"m","extra":1}', "pgring: something",
                '{"ts":"t","level":"loud","msg":"m"}', '{"ts": "t", "level": "info", "msg": "m"'):
        check(log_line_problem(bad) is not None, f"the line check accepted {bad!r}")
    # Connection events carry their fields as keys (issue: logs a machine can read).
    entries = [json.loads(line) for line in lines]
    login = [e for e in entries if e.get("event") == "client_login"]
    check(login and login[0].get("client") == 1 and login[0].get("database") == "app" and
          login[0].get("user") == "postgres" and login[0].get("peer", "").startswith("127.0.0.1:"),
          f"client_login fields: {login}")
    close = [e for e in entries if e.get("event") == "client_close"]
    check(close and close[0].get("client") == 1 and close[0].get("reason") in
          ("client_terminate", "client_eof") and close[0].get("database") == "app",
          f"client_close fields: {close}")
    # server_unavailable and server_close, from a pool whose server is down.
    down_config = dict(config, databases={"down": {"host": "127.0.0.1", "port": free_port()}},
                       timeouts={"query_wait": "1s", "server_login_retry": "30s"})
    with Pgring(down_config) as p:
        check_eq(login_error(p.port, db="down").sqlstate, "08006", "a login to a server down")
        p.wait_log('"event":"server_unavailable"')
        entries = [json.loads(line) for line in p.log().splitlines() if line.strip()]
    down = [e for e in entries if e.get("event") == "server_unavailable"]
    check(down[0].get("database") == "down" and down[0].get("reason") == "server_unreachable",
          f"server_unavailable fields: {down}")
    closed = [e for e in entries if e.get("event") == "server_close"]
    check(closed and closed[0].get("server", 0) >= 1 and closed[0].get("database") == "down",
          f"server_close fields: {closed}")
    config["log"] = {"level": "warning", "format": "text"}
    with Pgring(config) as p:
        conn = connect(p.port, db="app")
        check_eq(query_one(conn, "SELECT 1"), 1)
        conn.close()
        text = p.log()
    check(" info " not in text and " debug " not in text,
          f"log.level warning logged info or debug lines: {text[:500]}")
    check(not text.lstrip().startswith("{"), "log.format text logged JSON")


def test_log_connections_disconnections_and_file_reopened_on_sigusr1():
    # log.connections / log.disconnections (PgBouncer's log_connections/log_disconnections):
    # on, each login and each close is at info; off, an ordinary login and goodbye are debug.
    config = pool_config()
    config["log"] = {"level": "info", "connections": False, "disconnections": False}
    with Pgring(config) as p:
        conn = connect(p.port, db="app")
        check_eq(query_one(conn, "SELECT 1"), 1)
        conn.close()
        time.sleep(0.3)
        text = p.log()
    check(" login db=app" not in text and "closed: client_" not in text,
          f"connections/disconnections false still logged them: {text[-600:]}")
    work = tempfile.mkdtemp(prefix="pgring-it-logfile-")
    path = os.path.join(work, "pgring.log")
    config["log"] = {"level": "info", "connections": True, "disconnections": True, "file": path}
    try:
        with Pgring(config) as p:
            conn = connect(p.port, db="app")
            conn.close()
            wait_until(lambda: "closed: client_" in open(path).read(), 5,
                       what="the close in log.file")
            text = open(path).read()
            check(" login db=app user=postgres" in text, f"no login line in log.file: {text}")
            # logrotate: the file is moved away, SIGUSR1 makes pgring write a new one there.
            os.rename(path, path + ".1")
            p.proc.send_signal(signal.SIGUSR1)
            wait_until(lambda: os.path.exists(path), 5, what="a new log.file after SIGUSR1")
            conn = connect(p.port, db="app")
            conn.close()
            wait_until(lambda: "closed: client_" in open(path).read(), 5,
                       what="the next close in the new file")
            old = open(path + ".1").read()
            check("SIGUSR1: log file reopened" in open(path).read() + old,
                  "the reopen was not logged")
            check(old.count(" login db=app") == 1, f"the old file got the second login: {old}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # A log.file that cannot be opened: a clear error at start.
    config["log"] = {"file": "/nonexistent-dir/pgring.log"}
    bad = os.path.join(tempfile.mkdtemp(prefix="pgring-it-badlog-"), "pgring.yaml")
    with open(bad, "w") as f:
        f.write(yaml.safe_dump(config))
    r = subprocess.run([PGRING_BIN, "--config", bad], capture_output=True, text=True,
                       timeout=10)
    check(r.returncode != 0 and "log.file" in r.stderr and "nonexistent-dir" in r.stderr,
          f"start with an unopenable log.file: status {r.returncode}, {r.stderr!r}")
    shutil.rmtree(os.path.dirname(bad), ignore_errors=True)


if __name__ == "__main__":
    run_tests(globals())
