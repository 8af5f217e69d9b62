#!/usr/bin/env bash
# pgring's benchmark suite: pgring vs PgBouncer vs HAProxy (bare TCP hop) vs direct PostgreSQL.
#
#   loadtest/run.sh            full run (3 rounds of 4 s runs, ~15 min), results in docs/benchmarks/
#   loadtest/run.sh --quick    2 rounds of 1 s runs (~4 min), results in loadtest/build/results-quick/
#   loadtest/run.sh --tls      the same with TLS between the clients and every target (sslmode=require)
#
# Everything runs on 127.0.0.1: a throwaway PostgreSQL (scripts/pg-throwaway.sh), pgring, PgBouncer
# and HAProxy, all with one worker thread/process and the same pool settings (transaction mode,
# pool_size 20; HAProxy has no pool, it relays each client to its own server connection).
# Scenarios run round by round, each scenario against every target in turn, and the report takes
# medians over the rounds with their min-max spread. See loadtest/README.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LT=$ROOT/loadtest
COMMAND_LINE="loadtest/run.sh${*:+ $*}"

# ---------------------------------------------------------------------------------------------
# Options
QUICK=0
ROUNDS=""
DURATION=""
OUT=""
PORT_BASE=25470
AUTH=md5
POOL_SIZE=20
IDLE_N=10000
STORM_N=5000
SCALE=10
ONLY=""
TARGETS_OPT="direct pgring pgbouncer haproxy"
PGRING=$ROOT/build/pgring
KEEP=0
SERVE=0
NO_SYSCALLS=0
PGRING_PREFIX=""
PGRING_EXTRA=()
WORKERS=1
IO_ENGINE=auto
TLS=0

usage() {
  cat <<EOF
usage: loadtest/run.sh [options]
  --quick              2 rounds of 1 s runs (about 4 minutes); output in loadtest/build/results-quick
  --rounds N           rounds (default 3; quick 2)
  --duration S         seconds per pgbench run (default 4; quick 1; runs with 256 clients and
                       TPC-B at 64 clients get 1 s more when S < 3: connecting eats into -T)
  --out DIR            where README.md, charts and raw.jsonl go (default docs/benchmarks)
  --targets "LIST"     subset of: direct pgring pgbouncer haproxy (default: all four)
  --only REGEX         run only the scenarios whose id matches (ids: select-simple-8, tpcb-64,
                       idle, storm, ...; e.g. --only 'select-simple|idle')
  --auth METHOD        md5 (default) or scram-sha-256, for every target and for PostgreSQL
  --pool-size N        server connections per pool (default 20)
  --idle N             idle clients in the idle scenario (default 10000)
  --storm N            clients in the connection storm (default 5000)
  --port-base P        PostgreSQL on P, pgring P+1, PgBouncer P+2, HAProxy P+3 (default 25470)
  --pgring PATH        pgring binary (default build/pgring)
  --no-syscalls        skip the separate runs that count system calls per transaction (perf)
  --pgbouncer PATH     PgBouncer binary (default: /tmp/pgbouncer-1.25.2/bin/pgbouncer when
                       ../shared/anchors/build-pgbouncer has built it, else Debian's
                       /usr/sbin/pgbouncer 1.18)
  --workers N          pgring reactor threads (default 1, like PgBouncer's one process)
  --io-engine E        pgring's io.engine: auto (default), io_uring or epoll
  --tls                client TLS for every target: pgbench, psql and loadgen connect with
                       sslmode=require; pgring (tls.client.mode require) and PgBouncer
                       (client_tls_sslmode = require) terminate it with a throwaway certificate
                       (scripts/gen-test-certs.sh), PostgreSQL (direct, and through HAProxy, which
                       relays the bytes) with its own (ssl = on). Proxy-to-PostgreSQL stays plain TCP
  --keep               keep the work directory in /tmp (configs, logs) after the run
  --serve              start PostgreSQL and the targets with the benchmark configs, print how to
                       reach them, and wait (Ctrl-C stops and removes everything): for profiling
  --pgring-extra LINE  add a top-level YAML line to pgring's configuration (repeatable), e.g.
                       'stats: {fingerprints: 1000}' to measure what query families cost
  --pgring-prefix CMD  start pgring under CMD, e.g. "valgrind --tool=callgrind" or
                       "perf record -g -o /tmp/pgring.perf.data" (with --serve)
EOF
  exit "${1:-2}"
}

while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --out) OUT=$2; shift ;;
    --targets) TARGETS_OPT=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --auth) AUTH=$2; shift ;;
    --pool-size) POOL_SIZE=$2; shift ;;
    --idle) IDLE_N=$2; shift ;;
    --storm) STORM_N=$2; shift ;;
    --port-base) PORT_BASE=$2; shift ;;
    --pgring) PGRING=$2; shift ;;
    --pgbouncer) PGBOUNCER=$2; shift ;;
    --no-syscalls) NO_SYSCALLS=1 ;;
    --workers) WORKERS=$2; shift ;;
    --io-engine) IO_ENGINE=$2; shift ;;
    --tls) TLS=1 ;;
    --keep) KEEP=1 ;;
    --serve) SERVE=1 ;;
    --pgring-prefix) PGRING_PREFIX=$2; shift ;;
    --pgring-extra) PGRING_EXTRA+=("$2"); shift ;;
    -h|--help) usage 0 ;;
    *) echo "run: unknown option: $1" >&2; usage ;;
  esac
  shift
done
if ((QUICK)); then
  ROUNDS=${ROUNDS:-2}
  DURATION=${DURATION:-1}
  OUT=${OUT:-$LT/build/results-quick}
  MODE_NAME=quick
  STORM_TIMEOUT=6
else
  ROUNDS=${ROUNDS:-3}
  DURATION=${DURATION:-4}
  OUT=${OUT:-$ROOT/docs/benchmarks}
  MODE_NAME=full
  STORM_TIMEOUT=30
fi
case "$AUTH" in md5|scram-sha-256) ;; *) echo "run: --auth must be md5 or scram-sha-256" >&2; exit 2 ;; esac
read -r -a TARGETS <<<"$TARGETS_OPT"
for t in "${TARGETS[@]}"; do
  case "$t" in direct|pgring|pgbouncer|haproxy) ;; *) echo "run: unknown target $t" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ "$PGRING" == /* ]] || PGRING=$PWD/$PGRING
# libpq's sslmode for every client of the run (pgbench, psql, loadgen).
if ((TLS)); then SSLMODE=require; else SSLMODE=disable; fi

PGPORT=$PORT_BASE
METRICS_PORT=$((PORT_BASE + 4))  # pgring's /metrics (its ring and socket counters)
declare -A PORT=([direct]=$PORT_BASE [pgring]=$((PORT_BASE + 1)) [pgbouncer]=$((PORT_BASE + 2)) [haproxy]=$((PORT_BASE + 3)))
declare -A PID=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
T_START=$(date +%s)

[[ $EUID -eq 0 ]] || die "run as root (PostgreSQL and PgBouncer are started as the postgres OS user)"

# ---------------------------------------------------------------------------------------------
# Dependencies: the project's (scripts/deps.sh: PostgreSQL, pgbouncer, libpq, build tools), plus
# HAProxy and gnuplot, installed the same way (no services started) when missing.
"$ROOT/scripts/deps.sh" >&2
extra=()
for pkg in haproxy gnuplot-nox; do
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" == installed ]] || extra+=("$pkg")
done
if ((${#extra[@]})); then
  log "installing ${extra[*]}"
  added_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    added_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${extra[@]}" >&2
  ((added_policy)) && rm -f /usr/sbin/policy-rc.d
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now haproxy.service >/dev/null 2>&1 || true
  fi
fi
if [[ ! -x "$PGRING" ]]; then
  log "$PGRING is missing: building it (scripts/build.sh release)"
  "$ROOT/scripts/build.sh" release >&2
fi
[[ -x "$PGRING" ]] || die "no pgring binary at $PGRING"
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin | sort -V | tail -n 1)
for cmd in pgbench psql haproxy gnuplot g++ python3 setpriv; do
  command -v "$cmd" >/dev/null || die "$cmd is not installed"
done
# The newest PgBouncer is the fair anchor; Debian 12 ships 1.18.
if [[ -z ${PGBOUNCER:-} ]]; then
  PGBOUNCER=/usr/sbin/pgbouncer
  [[ -x /tmp/pgbouncer-1.25.2/bin/pgbouncer ]] && PGBOUNCER=/tmp/pgbouncer-1.25.2/bin/pgbouncer
fi
[[ -x $PGBOUNCER ]] || die "$PGBOUNCER is not installed"

# Load generator for the idle and storm scenarios.
mkdir -p "$LT/build"
LOADGEN=$LT/build/loadgen
if [[ ! -x "$LOADGEN" || "$LT/loadgen.cpp" -nt "$LOADGEN" ]]; then
  log "building $LOADGEN"
  g++ -O2 -std=c++20 -Wall -Wextra -o "$LOADGEN" "$LT/loadgen.cpp" -I/usr/include/postgresql -lpq
fi

# Open files: as many as allowed (10,000 idle clients need 10,000+ descriptors in the proxy and
# as many in the load generator). Every process started below inherits this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
((NOFILE >= IDLE_N + 100)) || log "warning: open files limit $NOFILE is below $IDLE_N idle clients + 100"
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------------------------
# Work directory, cleanup
WORK=$(mktemp -d /tmp/pgring-loadtest.XXXXXX)
chmod 0755 "$WORK"
mkdir -p "$WORK/lat" "$WORK/out"
RAW=$WORK/raw.jsonl
CMDS=$WORK/commands.txt
NOTES=$WORK/notes.txt
: >"$RAW"; : >"$CMDS"; : >"$NOTES"
LOADGEN_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n "$LOADGEN_PID" ]]; then kill -TERM "$LOADGEN_PID" 2>/dev/null || true; fi
  if declare -F stop_target >/dev/null; then
    for t in pgring pgbouncer haproxy; do stop_target "$t" quiet || true; done
  fi
  "$ROOT/scripts/pg-throwaway.sh" stop "$WORK/pg" >/dev/null 2>&1 || true
  if ((KEEP)) || ((rc != 0)); then
    log "work directory kept: $WORK"
  else
    rm -rf "$LT/build/last-run"
    mkdir -p "$LT/build/last-run"
    # Logs, configs and what report.py render needs to redraw the report:
    #   python3 loadtest/report.py render OUT/raw.jsonl OUT loadtest/build/last-run
    cp "$WORK"/*.log "$WORK"/*.yaml "$WORK"/*.cfg "$WORK"/*.txt "$WORK/pgbouncer/pgbouncer.ini" "$LT/build/last-run/" 2>/dev/null || true
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

note() { log "NOTE: $*"; printf '%s\n' "$*" >>"$NOTES"; }
# Each run's figures are written down as key=value arguments and turned into raw.jsonl at the end
# (report.py ingest parses pgbench's output and -l logs then), so no parsing competes with the runs.
REC_NO=0
mkdir -p "$WORK/rec"
record() {
  REC_NO=$((REC_NO + 1))
  printf '%s\0' "$@" tls="$TLS" >"$WORK/rec/$(printf %05d "$REC_NO")"
}
record_patch_last() { printf '%s\0' "$@" >>"$WORK/rec/$(printf %05d "$REC_NO")"; }
# Commands are written down once (round 1) for the report.
cmdlog() { if [[ "${ROUND:-1}" == 1 ]]; then printf '%s\n' "$*" >>"$CMDS"; fi; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for t in "${!PORT[@]}"; do port_free "${PORT[$t]}" || die "port ${PORT[$t]} ($t) is in use; pick another --port-base"; done

# utime+stime in clock ticks, all threads of the process.
cpu_ticks() {
  local stat rest f
  stat=$(<"/proc/$1/stat") || { echo 0; return; }
  rest=${stat##*) }
  read -r -a f <<<"$rest"
  echo $((f[11] + f[12]))
}
# PostgreSQL's CPU in clock ticks: the postmaster and every live child (backends, background
# workers), plus what exited children left in the postmaster's cutime/cstime. The difference
# over a run is what PostgreSQL spent on it, backends that came and went included.
pg_cpu_ticks() {
  local pm stat rest f total=0 child
  pm=$(head -n 1 "$PGDATA_REAL/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  stat=$(<"/proc/$pm/stat") || { echo 0; return; }
  rest=${stat##*) }
  read -r -a f <<<"$rest"
  total=$((f[11] + f[12] + f[13] + f[14]))
  for child in $(cat "/proc/$pm/task/"*/children 2>/dev/null); do
    stat=$(<"/proc/$child/stat") 2>/dev/null || continue
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------------------------------------
# PostgreSQL: throwaway cluster, role and database `bench`, pgbench tables.
log "starting PostgreSQL on 127.0.0.1:$PGPORT"
"$ROOT/scripts/pg-throwaway.sh" start "$WORK/pg" "$PGPORT" >&2
cmdlog "scripts/pg-throwaway.sh start $WORK/pg $PGPORT"
PGDATA_REAL=$(readlink -f "$WORK/pg")
as_pg() { (cd / && runuser -u postgres -- "$@"); }
as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PGDATA_REAL" -p "$PGPORT" -U postgres -d postgres <<SQL >&2
SET password_encryption = '$AUTH';
CREATE ROLE bench LOGIN PASSWORD 'bench';
CREATE DATABASE bench OWNER bench;
SQL
# bench authenticates over TCP with the same method everywhere (the cluster trusts the rest).
as_pg sed -i "1i host all bench 127.0.0.1/32 $AUTH" "$PGDATA_REAL/pg_hba.conf"
as_pg "$PG_BIN/psql" -X -q -h "$PGDATA_REAL" -p "$PGPORT" -U postgres -d postgres -c 'SELECT pg_reload_conf()' >/dev/null
export PGPASSWORD=bench PGSSLMODE=$SSLMODE PGGSSENCMODE=disable PGUSER=bench PGDATABASE=bench PGCONNECT_TIMEOUT=30
log "pgbench -i -s $SCALE"
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PGPORT" bench >"$WORK/pgbench-init.log" 2>&1 ||
  { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }
cmdlog "PGPASSWORD=bench pgbench -i -q -s $SCALE -h 127.0.0.1 -p $PGPORT -U bench bench"

# Client TLS (--tls): one throwaway CA and server certificate (localhost, 127.0.0.1) for both
# poolers. PgBouncer runs as postgres (setpriv, below) and must read the key; pgring runs as root.
if ((TLS)); then
  log "client TLS: certificates in $WORK/tls"
  "$ROOT/scripts/gen-test-certs.sh" "$WORK/tls" >&2
  chmod 0755 "$WORK/tls"
  chown -R postgres: "$WORK/tls"
  cmdlog "scripts/gen-test-certs.sh $WORK/tls"
fi

# ---------------------------------------------------------------------------------------------
# Proxy configurations: one worker/thread each, transaction pooling, pool size $POOL_SIZE.
# Both poolers accept up to 20000 clients, or what the open files limit allows.
MAX_CLIENT_CONN=$(( NOFILE - 200 < 20000 ? NOFILE - 200 : 20000 ))
cat >"$WORK/pgring.yaml" <<EOF
listen: ["127.0.0.1:${PORT[pgring]}"]
workers: $WORKERS
max_client_conn: $MAX_CLIENT_CONN
log: {level: warning}
auth: {method: $AUTH}
users: {bench: {password: bench}}
defaults: {pool_mode: transaction, pool_size: $POOL_SIZE}
databases: {bench: {host: 127.0.0.1, port: $PGPORT}}
metrics: {listen: "127.0.0.1:$METRICS_PORT"}
EOF
if ((TLS)); then
  echo "tls: {client: {mode: require, cert: $WORK/tls/server.crt, key: $WORK/tls/server.key}}" >>"$WORK/pgring.yaml"
fi
# (Only when asked: builds older than io.engine do not know the key.)
[[ $IO_ENGINE == auto ]] || echo "io: {engine: $IO_ENGINE}" >>"$WORK/pgring.yaml"
for line in "${PGRING_EXTRA[@]}"; do echo "$line" >>"$WORK/pgring.yaml"; done
"$PGRING" --config "$WORK/pgring.yaml" --check >&2 || die "pgring rejects $WORK/pgring.yaml"

mkdir -p "$WORK/pgbouncer"
cat >"$WORK/pgbouncer/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[pgbouncer]}
unix_socket_dir =
listen_backlog = 4096
auth_type = $AUTH
auth_file = $WORK/pgbouncer/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $MAX_CLIENT_CONN
max_db_connections = 0
pidfile = $WORK/pgbouncer/pgbouncer.pid
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
ignore_startup_parameters = extra_float_digits
EOF
# PgBouncer 1.21+ tracks protocol-level prepared statements in transaction mode (1.18 cannot).
PGBOUNCER_VERSION=$("$PGBOUNCER" -V 2>&1 | head -n 1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1)
PGBOUNCER_PREPARED=0
if [[ $(printf '%s\n' 1.21 "$PGBOUNCER_VERSION" | sort -V | head -n 1) == 1.21 ]]; then
  PGBOUNCER_PREPARED=1
  echo "max_prepared_statements = 200" >>"$WORK/pgbouncer/pgbouncer.ini"
fi
if ((TLS)); then
  cat >>"$WORK/pgbouncer/pgbouncer.ini" <<EOF
client_tls_sslmode = require
client_tls_cert_file = $WORK/tls/server.crt
client_tls_key_file = $WORK/tls/server.key
EOF
fi
echo '"bench" "bench"' >"$WORK/pgbouncer/userlist.txt"
chown -R postgres: "$WORK/pgbouncer"
chmod 0600 "$WORK/pgbouncer/userlist.txt"

# HAProxy needs two descriptors per connection and refuses a maxconn the open files limit cannot
# hold; it never sees more than 256 clients here.
HAPROXY_MAXCONN=$(( (NOFILE - 100) / 2 < 20000 ? (NOFILE - 100) / 2 : 20000 ))
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn $HAPROXY_MAXCONN
    nbthread 1

defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h

frontend pg
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend pg

backend pg
    server pg 127.0.0.1:$PGPORT
EOF

start_cmd() {
  case "$1" in
    pgring) echo "${PGRING_PREFIX:+$PGRING_PREFIX }$PGRING --config $WORK/pgring.yaml" ;;
    pgbouncer) echo "setpriv --reuid=postgres --regid=postgres --init-groups $PGBOUNCER $WORK/pgbouncer/pgbouncer.ini" ;;
    haproxy) echo "haproxy -f $WORK/haproxy.cfg -db" ;;
  esac
}

start_target() {
  local t=$1 i
  [[ $t == direct ]] && return 0
  # Each proxy's stderr goes to WORK/<target>.log; setpriv execs, so $! is pgbouncer itself.
  # shellcheck disable=SC2046
  (cd / && exec $(start_cmd "$t")) 2>>"$WORK/$t.log" >&2 &
  PID[$t]=$!
  cmdlog "$(start_cmd "$t")"
  for ((i = 0; i < 300; i++)); do
    if ! port_free "${PORT[$t]}"; then break; fi
    kill -0 "${PID[$t]}" 2>/dev/null || { tail -n 20 "$WORK/$t.log" >&2; die "$t exited at startup"; }
    sleep 0.1
  done
  port_free "${PORT[$t]}" && die "$t is not listening on ${PORT[$t]}"
  psql -X -q -h 127.0.0.1 -p "${PORT[$t]}" -c 'SELECT 1' >/dev/null 2>>"$WORK/$t.log" ||
    { tail -n 20 "$WORK/$t.log" >&2; die "SELECT 1 through $t failed"; }
}

stop_target() {
  local t=$1 pid=${PID[$1]:-} i
  [[ -n "$pid" ]] || return 0
  PID[$t]=""
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    [[ ${2:-} == quiet ]] || note "$t (pid $pid) did not exit within 10 s of SIGTERM; killed"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# Checks the proxy is still running after a run; if not, notes it (with its log tail) and
# restarts it so the other scenarios still run.
check_alive() {
  local t=$1 what=$2 rc
  [[ $t == direct ]] && return 0
  if ! kill -0 "${PID[$t]}" 2>/dev/null; then
    rc=0; wait "${PID[$t]}" 2>/dev/null || rc=$?
    local why=""
    ((rc == 0)) && why=" (a clean exit: it got SIGTERM/SIGINT, and not from this script)"
    ((rc > 128)) && why=" (killed by signal $((rc - 128)))"
    note "$t exited with status $rc$why during $what; last log lines: $(tail -n 5 "$WORK/$t.log" | tr '\n' '|')"
    PID[$t]=""
    start_target "$t"
    warm "$t"
  fi
}

# A short run that opens the pool's server connections.
warm() {
  [[ $1 == haproxy || $1 == direct ]] && return 0
  pgbench -n -S -c "$POOL_SIZE" -j 2 -T 1 -h 127.0.0.1 -p "${PORT[$1]}" bench >/dev/null 2>&1 || true
}

restart_target() { stop_target "$1"; start_target "$1"; warm "$1"; }

# With --tls, proves each target speaks TLS to its clients: the poolers must refuse a plain
# connection (they require TLS); PostgreSQL, directly or through HAProxy, must report the session
# as TLS in pg_stat_ssl.
tls_check() {
  local t=$1 ssl
  case "$t" in
    pgring|pgbouncer)
      if psql -X -q "host=127.0.0.1 port=${PORT[$t]} sslmode=disable" -c 'SELECT 1' >/dev/null 2>>"$WORK/tls-check.log"; then
        die "client TLS: $t accepted a connection without TLS"
      fi
      ;;
    direct|haproxy)
      ssl=$(psql -X -At -h 127.0.0.1 -p "${PORT[$t]}" -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>>"$WORK/tls-check.log" || true)
      [[ $ssl == t ]] || die "client TLS: PostgreSQL through $t does not see a TLS session (pg_stat_ssl.ssl = '${ssl}')"
      ;;
  esac
  psql -X -At -h 127.0.0.1 -p "${PORT[$t]}" -c 'SELECT 1' >/dev/null 2>>"$WORK/tls-check.log" ||
    die "client TLS: sslmode=require through $t failed (see $WORK/tls-check.log)"
}

for t in "${TARGETS[@]}"; do start_target "$t"; done
if ((TLS)); then
  for t in "${TARGETS[@]}"; do tls_check "$t"; done
  log "client TLS: on for ${TARGETS[*]} (sslmode=require accepted; the poolers refuse sslmode=disable)"
fi
for t in "${TARGETS[@]}"; do warm "$t"; done

if ((SERVE)); then
  {
    echo
    echo "serving (work directory $WORK: configs and logs, removed on exit unless --keep):"
    for t in "${TARGETS[@]}"; do
      printf '  %-10s 127.0.0.1:%s%s\n' "$t" "${PORT[$t]}" "${PID[$t]:+  pid ${PID[$t]}}"
    done
    echo "  user bench, password bench, database bench ($AUTH), client TLS $( ((TLS)) && echo on || echo off); e.g."
    echo "  PGPASSWORD=bench PGSSLMODE=$SSLMODE pgbench -n -S -M simple -c 8 -j 2 -T 10 -h 127.0.0.1 -p ${PORT[pgring]} -U bench bench"
    echo "Ctrl-C (or SIGTERM to this script, pid $$) stops everything."
  } >&2
  while :; do
    for t in "${TARGETS[@]}"; do
      if [[ -n "${PID[$t]:-}" ]] && ! kill -0 "${PID[$t]}" 2>/dev/null; then
        log "$t exited; last log lines:"; tail -n 20 "$WORK/$t.log" >&2; PID[$t]=""
      fi
    done
    sleep 1
  done
fi

# ---------------------------------------------------------------------------------------------
# Scenarios
SCENARIOS=()
for mode in simple extended prepared; do
  for c in 1 8 64 256; do SCENARIOS+=("select-$mode-$c"); done
done
SCENARIOS+=(tpcb-8 tpcb-64 idle storm)
if [[ -n "$ONLY" ]]; then
  sel=()
  for s in "${SCENARIOS[@]}"; do [[ $s =~ $ONLY ]] && sel+=("$s"); done
  SCENARIOS=("${sel[@]}")
fi
((${#SCENARIOS[@]})) || die "--only '$ONLY' matches no scenario"

RUN_NO=0

# pgbench run: select-MODE-C or tpcb-C against target T.
run_pgbench() {
  local sc=$1 t=$2 extra_json=("${@:3}") script mode clients jobs pid cpu0 cpu1 rc out prefix
  case "$sc" in
    select-*) script=select; mode=${sc#select-}; mode=${mode%-*}; clients=${sc##*-} ;;
    tpcb-*) script=tpcb; mode=simple; clients=${sc##*-} ;;
    idle) script=select; mode=simple; clients=8 ;;
  esac
  jobs=$((clients < 2 ? clients : 2))
  # pgbench's -T clock includes connecting the clients, which takes a good part of a second at
  # 256 clients (and for TPC-B at 64, which also waits on row locks): give short runs 1 s more.
  local dur=$DURATION
  if ((DURATION < 3)) && { ((clients >= 256)) || [[ $sc == tpcb-64 ]]; }; then dur=$((DURATION + 1)); fi
  RUN_NO=$((RUN_NO + 1))
  out=$WORK/out/run$RUN_NO.txt
  prefix=$WORK/lat/run$RUN_NO
  local args=(-n -M "$mode" -c "$clients" -j "$jobs" -T "$dur" -l "--log-prefix=$prefix"
              -h 127.0.0.1 -p "${PORT[$t]}" -U bench)
  [[ $script == select ]] && args=(-S "${args[@]}")
  pid=${PID[$t]:-}
  cpu0=0; [[ -n "$pid" ]] && cpu0=$(cpu_ticks "$pid")
  local pg0 pg1
  pg0=$(pg_cpu_ticks)
  cmdlog "pgbench ${args[*]} bench   # $sc -> $t"
  rc=0
  timeout --kill-after=10 $((dur + 120)) pgbench "${args[@]}" bench >"$out" 2>&1 || rc=$?
  # Without a pool the run's backends exit with pgbench: let the postmaster reap them (their
  # CPU moves to its cutime) before reading it.
  [[ $t == direct || $t == haproxy ]] && sleep 0.5
  pg1=$(pg_cpu_ticks)
  cpu1=0; local rss=0
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then cpu1=$(cpu_ticks "$pid"); rss=$(rss_kib "$pid"); fi
  record round="$ROUND" scenario="$sc" target="$t" clients="$clients" mode="$mode" script="$script" \
    duration="$dur" rc="$rc" pgbench_out="$out" latlog="$prefix" cpu_ticks=$((cpu1 - cpu0)) clk_tck="$CLK_TCK" \
    pg_cpu_ticks=$((pg1 - pg0)) \
    rss_kib="$rss" proxy="$([[ -n $pid ]] && echo 1 || echo 0)" "${extra_json[@]}"
  if ((rc != 0)) || grep -qiE 'error|abort' "$out"; then
    note "round $ROUND $sc -> $t: pgbench exit $rc: $(grep -iE 'error|abort' "$out" | head -n 3 | tr '\n' '|')"
  fi
  check_alive "$t" "round $ROUND $sc"
}

CONNINFO() { echo "host=127.0.0.1 port=${PORT[$1]} dbname=bench user=bench password=bench sslmode=$SSLMODE gssencmode=disable connect_timeout=60"; }

run_idle() {
  local t=$1 pid rss0 rss1 line done_line lg_out=$WORK/out/idle-$ROUND-$t.txt i
  restart_target "$t"
  pid=${PID[$t]}
  sleep 0.5
  rss0=$(rss_kib "$pid")
  cmdlog "loadtest/build/loadgen idle -n $IDLE_N -k 500 -q 'SELECT 1' '$(CONNINFO "$t")'   # idle -> $t (held during the pgbench run below)"
  : >"$lg_out"
  "$LOADGEN" idle -n "$IDLE_N" -k 500 -q 'SELECT 1' --timeout 180 "$(CONNINFO "$t")" >"$lg_out" 2>&1 &
  LOADGEN_PID=$!
  for ((i = 0; i < 2000; i++)); do
    grep -q '^ready ' "$lg_out" && break
    kill -0 "$LOADGEN_PID" 2>/dev/null || break
    sleep 0.1
  done
  line=$(grep -m1 '^ready ' "$lg_out" || true)
  if [[ -z "$line" || "$line" != *" complete=1 "* || "$line" != *" failed=0 "* ]]; then
    note "round $ROUND idle -> $t: idle clients did not all log in: ${line:-$(tail -n 3 "$lg_out" | tr '\n' '|')}"
  fi
  sleep 1
  rss1=$(rss_kib "$pid")
  run_pgbench idle "$t" rss_before_kib="$rss0" rss_idle_kib="$rss1" idle_n="$IDLE_N" loadgen="$line"
  kill -TERM "$LOADGEN_PID" 2>/dev/null || true
  wait "$LOADGEN_PID" 2>/dev/null || true
  LOADGEN_PID=""
  done_line=$(grep -m1 '^done ' "$lg_out" || true)
  record_patch_last idle_done="$done_line"
  if [[ -n "$line" && "$done_line" != *" dropped=0 "* ]]; then
    note "round $ROUND idle -> $t: idle clients dropped by the proxy: ${done_line:-(no report)}"
  fi
  sleep 1
}


run_storm() {
  local t=$1 pid rss0 rss1 cpu0 cpu1 rc lg_out=$WORK/out/storm-$ROUND-$t.txt line
  restart_target "$t"
  pid=${PID[$t]}
  sleep 0.5
  rss0=$(rss_kib "$pid"); cpu0=$(cpu_ticks "$pid")
  cmdlog "loadtest/build/loadgen storm -n $STORM_N -q 'SELECT 1' --timeout $STORM_TIMEOUT '$(CONNINFO "$t")'   # storm -> $t"
  rc=0
  "$LOADGEN" storm -n "$STORM_N" -q 'SELECT 1' --timeout "$STORM_TIMEOUT" "$(CONNINFO "$t")" >"$lg_out" 2>&1 || rc=$?
  cpu1=$(cpu_ticks "$pid"); rss1=$(rss_kib "$pid")
  line=$(grep -m1 '^storm ' "$lg_out" || true)
  record round="$ROUND" scenario=storm target="$t" clients="$STORM_N" rc="$rc" loadgen="$line" \
    cpu_ticks=$((cpu1 - cpu0)) clk_tck="$CLK_TCK" rss_before_kib="$rss0" rss_kib="$rss1" proxy=1
  if ((rc != 0)); then
    note "round $ROUND storm -> $t: loadgen exit $rc: ${line:-$(tail -n 3 "$lg_out" | tr '\n' '|')}"
  fi
  check_alive "$t" "round $ROUND storm"
  sleep 1
}

# ---------------------------------------------------------------------------------------------
# Rounds: every scenario against every target, targets interleaved.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  log "round $ROUND/$ROUNDS"
  if ((ROUND > 1)); then
    # A fresh pooler per round (HAProxy keeps no state worth resetting).
    for t in "${TARGETS[@]}"; do [[ $t == pgring || $t == pgbouncer ]] && restart_target "$t"; done
  fi
  for sc in "${SCENARIOS[@]}"; do
    case "$sc" in
      idle|storm)
        for t in "${TARGETS[@]}"; do
          if [[ $t == direct || $t == haproxy ]]; then
            # Without a pool every client needs its own PostgreSQL backend (max_connections 400).
            record round="$ROUND" scenario="$sc" target="$t" status=n/a \
              reason="no pooling: each client needs its own PostgreSQL backend (max_connections 400)"
            continue
          fi
          log "  $sc -> $t"
          "run_$sc" "$t"
        done
        ;;
      *)
        for t in "${TARGETS[@]}"; do
          if [[ $sc == select-prepared-* && $t == pgbouncer ]] && ((!PGBOUNCER_PREPARED)); then
            record round="$ROUND" scenario="$sc" target="$t" status=n/a \
              reason="PgBouncer 1.18 does not support protocol-level prepared statements in transaction mode"
            continue
          fi
          log "  $sc -> $t"
          run_pgbench "$sc" "$t"
        done
        ;;
    esac
  done
done

# ---------------------------------------------------------------------------------------------
# System calls per transaction where a sidecar lives (1 and 8 clients), in a separate run per
# case, never in the timed rounds: perf counts the syscall tracepoints of the proxy's threads
# and of the pool's PostgreSQL backends; pgring's /metrics adds its ring and socket counters.
pgring_counter() {  # pgring_counter NAME [LABELS]: the value summed over the series matching
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
    awk -v n="$1" -v l="${2:-}" '$1 ~ "^"n"({|$)" && index($1, l) {s += $2} END {printf "%d", s}'
}
perf_count() {  # perf_count FILE EVENT
  awk -F, -v e="$2" '$3 == e {printf "%d", $1; found = 1} END {if (!found) printf "0"}' "$1"
}
run_syscalls() {
  local sc=$1 t=$2 mode clients jobs pid out pm pgpids p1 p2 rc=0 m0=() m1=() k
  mode=${sc#select-}; mode=${mode%-*}; clients=${sc##*-}
  jobs=$((clients < 2 ? clients : 2))
  pid=${PID[$t]}
  out=$WORK/out/syscalls-$sc-$t.txt
  pm=$(head -n 1 "$PGDATA_REAL/postmaster.pid")
  # The pool's backends (pgring and PgBouncer keep them open between runs).
  pgpids=$(cat "/proc/$pm/task/"*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' | paste -sd, -)
  perf stat -x, -e raw_syscalls:sys_enter -e syscalls:sys_enter_io_uring_enter \
    -e syscalls:sys_enter_sendto -e syscalls:sys_enter_recvfrom -e syscalls:sys_enter_epoll_wait \
    -p "$pid" -o "$WORK/out/perf-$sc-$t.csv" >/dev/null 2>&1 &
  p1=$!
  perf stat -x, -e raw_syscalls:sys_enter -p "$pgpids" -o "$WORK/out/perf-pg-$sc-$t.csv" >/dev/null 2>&1 &
  p2=$!
  sleep 0.5
  if [[ $t == pgring ]]; then
    for k in pgring_io_uring_enters_total pgring_io_uring_cqes_total; do m0+=("$(pgring_counter "$k")"); done
    m0+=("$(pgring_counter pgring_socket_sends_total 'peer="client"')" "$(pgring_counter pgring_socket_sends_total 'peer="server"')")
  fi
  cmdlog "perf stat -e raw_syscalls:sys_enter,... -p PID -- pgbench -n -S -M $mode -c $clients -j $jobs -T $DURATION   # syscalls $sc -> $t"
  pgbench -n -S -M "$mode" -c "$clients" -j "$jobs" -T "$DURATION" -h 127.0.0.1 -p "${PORT[$t]}" -U bench bench >"$out" 2>&1 || rc=$?
  if [[ $t == pgring ]]; then
    for k in pgring_io_uring_enters_total pgring_io_uring_cqes_total; do m1+=("$(pgring_counter "$k")"); done
    m1+=("$(pgring_counter pgring_socket_sends_total 'peer="client"')" "$(pgring_counter pgring_socket_sends_total 'peer="server"')")
  fi
  kill -INT "$p1" "$p2" 2>/dev/null || true
  wait "$p1" "$p2" 2>/dev/null || true
  local f=$WORK/out/perf-$sc-$t.csv g=$WORK/out/perf-pg-$sc-$t.csv extra=()
  if [[ $t == pgring ]]; then
    extra=(ring_enters=$((m1[0] - m0[0])) ring_cqes=$((m1[1] - m0[1])) sends_to_client=$((m1[2] - m0[2])) sends_to_server=$((m1[3] - m0[3])))
  fi
  record round=0 scenario="syscalls-$sc" target="$t" clients="$clients" mode="$mode" rc="$rc" pgbench_out="$out" \
    syscalls="$(perf_count "$f" raw_syscalls:sys_enter)" io_uring_enter="$(perf_count "$f" syscalls:sys_enter_io_uring_enter)" \
    sendto="$(perf_count "$f" syscalls:sys_enter_sendto)" recvfrom="$(perf_count "$f" syscalls:sys_enter_recvfrom)" \
    epoll_wait="$(perf_count "$f" syscalls:sys_enter_epoll_wait)" pg_syscalls="$(perf_count "$g" raw_syscalls:sys_enter)" \
    "${extra[@]}"
}
if ((!NO_SYSCALLS)) && command -v perf >/dev/null; then
  log "system calls per transaction (separate runs, perf stat)"
  for sc in "${SCENARIOS[@]}"; do
    [[ $sc == select-*-1 || $sc == select-*-8 ]] || continue
    for t in pgring pgbouncer haproxy; do
      [[ " ${TARGETS[*]} " == *" $t "* ]] || continue
      [[ $sc == select-prepared-* && $t == pgbouncer ]] && ((!PGBOUNCER_PREPARED)) && continue
      log "  syscalls $sc -> $t"
      run_syscalls "$sc" "$t"
    done
  done
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
T_END=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Report: machine, versions, commands, configs, then tables and charts.
META=$WORK/meta.txt
{
  echo "mode	$MODE_NAME"
  echo "command	$COMMAND_LINE"
  echo "date	$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "rounds	$ROUNDS"
  echo "duration	$DURATION"
  echo "elapsed_s	$((T_END - T_START))"
  echo "nproc	$(nproc)"
  echo "cpu	$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "kernel	$(uname -r)"
  echo "os	$(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "memory	$(awk '/^MemTotal:/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "loadavg_before	$LOAD_BEFORE"
  echo "loadavg_after	$LOAD_AFTER"
  echo "nofile	$NOFILE"
  echo "auth	$AUTH"
  echo "tls	$( ((TLS)) && echo on || echo off)"
  echo "sslmode	$SSLMODE"
  echo "pool_size	$POOL_SIZE"
  echo "idle_n	$IDLE_N"
  echo "storm_n	$STORM_N"
  echo "storm_timeout	$STORM_TIMEOUT"
  echo "scale	$SCALE"
  echo "pgring	$(git -C "$ROOT" describe --always --dirty --tags 2>/dev/null || echo unknown) ($(grep -m1 '^CMAKE_BUILD_TYPE' "$(dirname "$PGRING")/CMakeCache.txt" 2>/dev/null | cut -d= -f2 || echo '?'))"
  echo "pgbouncer	$($PGBOUNCER -V 2>&1 | head -n 1)"
  echo "haproxy	$(haproxy -v 2>&1 | head -n 1)"
  echo "postgres	$("$PG_BIN/postgres" -V)"
  echo "pgbench	$(pgbench --version)"
  echo "gnuplot	$(gnuplot --version)"
} >"$META"
cp "$WORK/pgbouncer/pgbouncer.ini" "$WORK/"
# pgring's own log (level warning): anything in it is worth a look.
grep -v '^\s*$' "$WORK/pgring.log" 2>/dev/null | head -n 40 >"$WORK/pgring-log-excerpt.txt" || true
python3 "$LT/report.py" ingest "$RAW" "$WORK/rec"
python3 "$LT/report.py" render "$RAW" "$OUT" "$WORK" >&2
log "done in $((T_END - T_START)) s: $OUT/README.md"
