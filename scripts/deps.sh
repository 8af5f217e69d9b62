#!/usr/bin/env bash
# Install the Debian 12 packages that pgring's build, tests and quick start need.
# Only missing packages are installed; when nothing is missing this does nothing (no apt-get).
# Runs apt-get directly as root, through sudo otherwise; without either it prints the command.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake pkg-config g++ clang clang-format
  liburing-dev libyaml-cpp-dev libcli11-dev doctest-dev libsystemd-dev libfmt-dev libssl-dev
  prometheus-cpp-dev   # metric families and the text serializer behind /metrics
  libpq-dev            # health checks of databases.<db>.hosts; the libpq integration-test client
  libclang-rt-14-dev   # libFuzzer and sanitizer runtimes for clang
  # tests, benchmarks and the quick start
  postgresql postgresql-contrib postgresql-client pgbouncer
  python3 python3-psycopg2 python3-asyncpg python3-yaml
  python3-seccomp      # tests/integration/seccomp_run.py: seccomp profiles without a container runtime
  systemd              # systemd-analyze verify for systemd/pgring.service
  prometheus           # promtool check metrics on /metrics
  curl
  openssl              # throwaway certificates for the TLS tests (scripts/gen-test-certs.sh)
  ruby-pg              # the ruby-pg driver workload (tests/integration/drivers/)
  nodejs               # the node-postgres workload (npm pg, installed by the test itself)
)
# npm comes with some nodejs builds (NodeSource's) and would conflict as a package there.
command -v npm >/dev/null 2>&1 || PACKAGES+=(npm)

export DEBIAN_FRONTEND=noninteractive

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  echo "deps: all ${#PACKAGES[@]} packages are installed"
  exit 0
fi
echo "deps: installing ${missing[*]}"

APT_OPTS=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
if [[ $EUID -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "deps: not root and sudo is not available; as root, run:" >&2
  echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install ${APT_OPTS[*]} ${missing[*]}" >&2
  exit 1
fi
as_root() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "$@"; }

# Keep package installs from starting services: the postgresql package would start a system
# cluster on 5432 and pgbouncer would take 6432 (the quick start's port). pgring never uses
# either; the tests run their own throwaway PostgreSQL. A policy-rc.d that denies every start is
# put in place for the install only, unless the machine already has one (containers often do).
POLICY=/usr/sbin/policy-rc.d
added_policy=0
remove_policy() {
  if ((added_policy)); then
    "${SUDO[@]}" rm -f "$POLICY" || true
  fi
}
if [[ ! -e "$POLICY" ]]; then
  trap remove_policy EXIT
  printf '#!/bin/sh\n# added by pgring scripts/deps.sh during apt-get install; removed afterwards\nexit 101\n' |
    "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod 0755 "$POLICY"
  added_policy=1
fi

as_root apt-get update -q
as_root apt-get install "${APT_OPTS[@]}" "${missing[@]}"

# On a machine booted with systemd, a freshly installed pgbouncer is enabled to start at boot on
# port 6432 (its socket unit too). We only need its binary for benchmarks: switch that off.
if [[ " ${missing[*]} " == *" pgbouncer "* && -d /run/systemd/system ]]; then
  "${SUDO[@]}" systemctl disable --now pgbouncer.service pgbouncer.socket >/dev/null 2>&1 || true
fi

echo "deps: done"
