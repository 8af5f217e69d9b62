#!/usr/bin/env bash
# Build the container image from the Dockerfile and run it against a throwaway PostgreSQL:
# psql through the container, /health and /ready, the image's HEALTHCHECK, SIGTERM drains.
#
#   scripts/container-test.sh            (as root; ~4 minutes on 2 cores, most of it compiling)
#
# No image can be pulled on a machine without internet access: the Debian 12 base is built
# locally (debootstrap --variant=minbase bookworm, with the host's apt sources, imported with
# podman import as localhost/debian:12) and passed as the Dockerfile's BASE/RUNTIME_BASE.
# Kernels with cgroups in hybrid mode make crun refuse to create containers ("cgroups in hybrid
# mode not supported"): the build uses --isolation chroot, and so does the run (buildah run; see
# below why podman run cannot start it on such a sandbox).
# Not part of scripts/test.sh (CI's budget); run it by hand or in a job of its own.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=localhost/pgring:test
BASE_IMAGE=localhost/debian:12
PGPORT=${PGPORT:-25497} PORT=${PORT:-25498} MPORT=${MPORT:-25499}
WORK=$(mktemp -d -t pgring-container.XXXXXX)
CONTAINER=pgring-container-test-$$
step() { printf '[%s] %s\n' "$(date +%T)" "$*"; }
cleanup() {
  pkill -KILL -f '^/usr/local/bin/pgring --config /etc/pgring/pgring.yaml' 2>/dev/null || true
  buildah rm "$CONTAINER" >/dev/null 2>&1 || true
  "$ROOT/scripts/pg-throwaway.sh" stop "$WORK/pg" >/dev/null 2>&1 || true
  rm -rf -- "$WORK"
}
trap cleanup EXIT

missing=()
for pkg in podman buildah debootstrap uidmap postgresql-client curl procps; do
  dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -q installed || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

if ! podman image exists "$BASE_IMAGE"; then
  step "building the Debian 12 base (debootstrap --variant=minbase bookworm)"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null ||
           true)
  debootstrap --variant=minbase bookworm "$WORK/base" "${mirror:-http://deb.debian.org/debian}" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  # The image's apt uses the host's sources (a local mirror or proxy where there is one).
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    rm -f "$WORK/base/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$WORK/base/etc/apt/sources.list.d/"
  fi
  cp /etc/apt/apt.conf.d/*proxy* "$WORK/base/etc/apt/apt.conf.d/" 2>/dev/null || true
  tar -C "$WORK/base" -c . | podman import - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/base"
fi

step "building $IMAGE"
podman build --isolation chroot --format docker --network host \
  --build-arg BASE="$BASE_IMAGE" --build-arg RUNTIME_BASE="$BASE_IMAGE" \
  -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }

step "starting a throwaway PostgreSQL on $PGPORT"
"$ROOT/scripts/pg-throwaway.sh" start "$WORK/pg" "$PGPORT" >/dev/null
cat >"$WORK/pgring.yaml" <<YAML
listen: ["127.0.0.1:$PORT"]
workers: 1
metrics: {listen: "127.0.0.1:$MPORT"}
auth: {method: trust}
defaults: {pool_mode: transaction, pool_size: 2}
timeouts: {shutdown: 10s}
databases:
  app: {host: 127.0.0.1, port: $PGPORT, dbname: postgres}
YAML
chmod 644 "$WORK/pgring.yaml"

step "running the image (host network, buildah run --isolation chroot)"
# `podman run` cannot start containers on this kind of sandbox: crun refuses cgroups in hybrid
# mode, and with --cgroups=disabled (or runc) the runtime's prlimit() on the container process
# is refused ("error setting rlimits for ready process: operation not permitted"). buildah's
# chroot isolation runs the image's root filesystem without an OCI runtime: same image, same
# binary, same config path, host network.
CTR=$(buildah from --name "$CONTAINER" "$IMAGE")
buildah run --isolation chroot --network host -v "$WORK/pgring.yaml:/etc/pgring/pgring.yaml:ro" \
  --env PGRING_HEALTH_PORT="$MPORT" "$CTR" -- /usr/local/bin/pgring --config /etc/pgring/pgring.yaml \
  >"$WORK/pgring.log" 2>&1 &
RUNNER=$!
for _ in $(seq 50); do
  curl -fsS "http://127.0.0.1:$MPORT/health" >/dev/null 2>&1 && break
  sleep 0.2
done
fail() { echo "container-test: FAIL: $*" >&2; cat "$WORK/pgring.log" >&2 || true; exit 1; }

got=$(psql -h 127.0.0.1 -p "$PORT" -U postgres -d app -XAtc "SELECT 'through the container'")
[[ "$got" == "through the container" ]] || fail "psql through pgring: $got"
step "psql through the container: ok"
[[ "$(curl -fsS "http://127.0.0.1:$MPORT/health")" == ok ]] || fail "/health"
[[ "$(curl -fsS "http://127.0.0.1:$MPORT/ready")" == ready ]] || fail "/ready"
curl -fsS "http://127.0.0.1:$MPORT/metrics" | grep -q '^pgring_transactions_total' ||
  fail "/metrics"
step "/health, /ready and /metrics: ok"
# The image's own HEALTHCHECK command, run inside the image as Docker would.
check=$(podman image inspect --format '{{range $i, $a := .Config.Healthcheck.Test}}{{if gt $i 2}}{{$a}}{{end}}{{end}}' "$IMAGE")
[[ -n "$check" ]] || fail "the image has no HEALTHCHECK"
buildah run --isolation chroot --network host --env PGRING_HEALTH_PORT="$MPORT" "$CTR" -- \
  bash -c "$check" || fail "the image's HEALTHCHECK ($check)"
step "HEALTHCHECK (PGRING_HEALTH_PORT=$MPORT): ok"

# SIGTERM drains: a transaction in progress finishes, then pgring exits 0.
psql -h 127.0.0.1 -p "$PORT" -U postgres -d app -XAtc \
  "BEGIN; SELECT pg_sleep(2); SELECT 'finished'; COMMIT;" >"$WORK/drain.out" 2>&1 &
CLIENT=$!
sleep 0.5
pkill -TERM -f '^/usr/local/bin/pgring --config /etc/pgring/pgring.yaml' || fail "no pgring to stop"
wait "$CLIENT" || true
code=0
wait "$RUNNER" || code=$?
grep -q finished "$WORK/drain.out" || fail "the transaction in flight at SIGTERM: $(cat "$WORK/drain.out")"
[[ "$code" == 0 ]] || fail "exit status $code after SIGTERM"
grep -q "info stopped" "$WORK/pgring.log" || fail "no 'stopped' in the log"
step "SIGTERM: the transaction finished, exit status 0"
step "$(grep -o 'reactor threads\? serving (I/O engine: [a-z_]*)' "$WORK/pgring.log" | head -1)"
echo "container-test: ok"
