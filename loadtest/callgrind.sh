#!/usr/bin/env bash
# Instructions per transaction of pgring, exactly: pgring runs under valgrind's callgrind while
# pgbench -S drives it; the counters are zeroed after a warm-up and dumped after the timed part,
# so the figure is pgring's user-space instructions per transaction. Unlike timings it repeats to
# the instruction whatever else the machine does: use it to compare two builds.
#
#   loadtest/callgrind.sh [--pgring BIN] [--mode simple|extended|prepared] [--clients N]
#                         [--transactions N] [--keep DIR] [--extra 'YAML LINE']
#
# --extra adds a top-level line to pgring's configuration (e.g. 'stats: {fingerprints: 1000}').
# Starts a throwaway PostgreSQL (scripts/pg-throwaway.sh, port 25495) and stops it afterwards.
# --keep DIR keeps the callgrind output (callgrind_annotate --auto=no DIR/callgrind.out).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$ROOT/build/pgring MODE=extended CLIENTS=1 TXNS=4000 KEEP="" EXTRA=""
while (($#)); do
  case $1 in
    --pgring) BIN=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    --transactions) TXNS=$2; shift 2 ;;
    --keep) KEEP=$2; shift 2 ;;
    --extra) EXTRA=$2; shift 2 ;;
    *) echo "usage: $0 [--pgring BIN] [--mode M] [--clients N] [--transactions N] [--keep DIR]" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
PGPORT=25495 PORT=25496
WORK=$(mktemp -d -t pgring-callgrind.XXXXXX)
VG=""
cleanup() {
  [[ -n "$VG" ]] && kill -INT "$VG" 2>/dev/null && wait "$VG" 2>/dev/null || true
  "$ROOT/scripts/pg-throwaway.sh" stop "$WORK/pg" >/dev/null 2>&1 || true
  rm -rf -- "$WORK"
}
trap cleanup EXIT
"$ROOT/scripts/pg-throwaway.sh" start "$WORK/pg" "$PGPORT" >/dev/null
pgbench -q -i -s 1 -h 127.0.0.1 -p "$PGPORT" -U postgres app >/dev/null 2>&1
cat >"$WORK/pgring.yaml" <<YAML
listen: ["127.0.0.1:$PORT"]
workers: 1
log: {level: warning}
auth: {method: trust}
databases:
  app: {host: 127.0.0.1, port: $PGPORT, pool_mode: transaction, pool_size: 20}
$EXTRA
YAML
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" "$BIN" --config "$WORK/pgring.yaml" \
  >"$WORK/pgring.log" 2>&1 &
VG=$!
for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.2; done
bench() { pgbench -n -S -M "$MODE" -c "$CLIENTS" -t "$1" -h 127.0.0.1 -p "$PORT" -U postgres app >/dev/null; }
bench 200
callgrind_control -z "$VG" >/dev/null 2>&1
bench $((TXNS / CLIENTS))
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 1
out=$(ls "$WORK"/callgrind.out.* | sort | tail -1)
ir=$(awk '/^summary:/ {print $2}' "$out")
echo "pgring $(basename "$BIN") -M $MODE -c $CLIENTS: $((ir / TXNS)) instructions per transaction ($TXNS transactions)"
if [[ -n "$KEEP" ]]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/callgrind.out"; fi
