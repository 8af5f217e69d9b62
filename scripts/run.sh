#!/usr/bin/env bash
# Quick start: install what is missing, build, and run pgring in the foreground.
#
#   scripts/run.sh                 pgring in front of a throwaway PostgreSQL (deleted on exit)
#   scripts/run.sh my-pgring.yaml  pgring with your config, if one of its databases is reachable;
#                                  otherwise the throwaway PostgreSQL and its config, as above
#
# With the throwaway PostgreSQL (transaction pooling, the admin console, /metrics), try:
#   psql "postgresql://app:secret@127.0.0.1:6432/app"                       the application
#   psql "postgresql://pgring_admin:admin@127.0.0.1:6432/pgring" -c "SHOW POOLS"   the console
#   curl -s http://127.0.0.1:9930/metrics                                    the metrics
# Stop with Ctrl-C (or SIGTERM): pgring stops, and the throwaway PostgreSQL is stopped and deleted.
# PGRING_PORT and PGRING_METRICS_PORT change the ports of the generated config (6432, 9930).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPTS=$ROOT/scripts
PY=/usr/bin/python3  # Debian's python, with python3-yaml
LISTEN_PORT=${PGRING_PORT:-6432}
METRICS_PORT=${PGRING_METRICS_PORT:-9930}

CONFIG=${1:-}
if [[ -n "$CONFIG" ]]; then
  [[ -f "$CONFIG" ]] || { echo "run: no such config file: $CONFIG" >&2; exit 1; }
  CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
fi

# PGRING_BIN: run that binary, with no package installs and no build (tests/integration does).
if [[ -n "${PGRING_BIN:-}" ]]; then
  BIN=$PGRING_BIN
else
  "$SCRIPTS/deps.sh"
  "$SCRIPTS/build.sh" release
  BIN=$ROOT/build/pgring
fi
[[ -x "$BIN" ]] || { echo "run: $BIN was not built" >&2; exit 1; }

TMP=""
PGRING_PID=""
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n "$PGRING_PID" ]] && kill -0 "$PGRING_PID" 2>/dev/null; then
    kill -TERM "$PGRING_PID" 2>/dev/null || true
    wait "$PGRING_PID" 2>/dev/null || true
  fi
  if [[ -n "$TMP" ]]; then
    echo "run: stopping the throwaway PostgreSQL"
    "$SCRIPTS/pg-throwaway.sh" stop "$TMP/pg" || true
    rm -rf -- "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Prints "name host port" for each database in a pgring YAML file.
list_databases() {
  "$PY" - "$1" <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    config = yaml.safe_load(f) or {}
for name, db in (config.get("databases") or {}).items():
    db = db or {}
    print(name, db.get("host", "127.0.0.1"), db.get("port", 5432))
PY
}

reachable=0
if [[ -n "$CONFIG" ]]; then
  if ! "$BIN" --config "$CONFIG" --check; then
    echo "run: $CONFIG is not a valid pgring configuration" >&2
    exit 1
  fi
  while read -r name host port; do
    if pg_isready -q -h "$host" -p "$port" -t 3; then
      echo "run: database $name: $host:$port is reachable"
      reachable=$((reachable + 1))
    else
      echo "run: database $name: $host:$port is not reachable"
    fi
  done < <(list_databases "$CONFIG")
  if ((reachable == 0)); then
    echo "run: no database in $CONFIG is reachable; using a throwaway PostgreSQL instead"
  fi
fi

if ((reachable == 0)); then
  if (exec 3<>"/dev/tcp/127.0.0.1/$LISTEN_PORT") 2>/dev/null; then
    echo "run: port $LISTEN_PORT on 127.0.0.1 is already in use (a pgbouncer?);" \
      "stop that program or set PGRING_PORT" >&2
    exit 1
  fi
  if (exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT") 2>/dev/null; then
    echo "run: port $METRICS_PORT on 127.0.0.1 is already in use; set PGRING_METRICS_PORT" >&2
    exit 1
  fi
  TMP=$(mktemp -d -t pgring-run.XXXXXX)
  chmod 0755 "$TMP"  # the postgres OS user (when we are root) must reach $TMP/pg
  PGPORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$SCRIPTS/pg-throwaway.sh" start "$TMP/pg" "$PGPORT"
  CONFIG=$TMP/pgring.yaml
  cat >"$CONFIG" <<EOF
# Written by scripts/run.sh for the throwaway PostgreSQL in $TMP/pg (deleted on exit).
# The full reference of every key is config/pgring.yaml.
listen: ["127.0.0.1:$LISTEN_PORT"]
log: {level: info, format: text}
metrics: {listen: "127.0.0.1:$METRICS_PORT"}   # /metrics, /health, /ready
admin: {users: [pgring_admin]}                 # SHOW POOLS etc. on database "pgring"
auth:
  method: scram-sha-256
users:
  app: {password: secret}
  pgring_admin: {password: admin}
defaults:
  pool_mode: transaction                       # a server per transaction: many clients, few servers
  pool_size: 20
databases:
  app:
    host: 127.0.0.1
    port: $PGPORT
EOF
  echo
  echo "  Throwaway PostgreSQL on 127.0.0.1:$PGPORT, config in $CONFIG"
  echo "  Try:"
  echo "    psql \"postgresql://app:secret@127.0.0.1:$LISTEN_PORT/app\""
  echo "    psql \"postgresql://pgring_admin:admin@127.0.0.1:$LISTEN_PORT/pgring\" -c \"SHOW POOLS\""
  echo "    curl -s http://127.0.0.1:$METRICS_PORT/metrics"
  echo "  Stop with Ctrl-C."
  echo
else
  echo
  echo "  Config: $CONFIG"
  echo "  Stop with Ctrl-C."
  echo
fi

# pgring runs as a child so that Ctrl-C and SIGTERM reach it through us and the cleanup above
# always runs afterwards.
"$BIN" --config "$CONFIG" &
PGRING_PID=$!
echo "run: pgring running (pid $PGRING_PID; kill -HUP $PGRING_PID reloads the config)"
trap 'kill -TERM "$PGRING_PID" 2>/dev/null || true' INT TERM HUP
status=0
while :; do
  wait "$PGRING_PID" && status=0 || status=$?
  # Above 128: pgring died of a signal, or our wait was interrupted by one (forwarded above).
  if ((status > 128)); then
    if kill -0 "$PGRING_PID" 2>/dev/null; then
      continue  # still running (shutting down): wait again
    fi
    # It has just exited: collect its real status (127: already collected above).
    s=0
    wait "$PGRING_PID" 2>/dev/null || s=$?
    ((s == 127)) || status=$s
  fi
  break
done
PGRING_PID=""
echo "run: pgring exited with status $status"
exit "$status"
