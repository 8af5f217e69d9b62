#!/usr/bin/env bash
# Configure and build pgring.
#
#   scripts/build.sh [release|asan|tsan] [extra cmake -D options...]
#
#   release (default)  build/       RelWithDebInfo, warnings are errors
#   asan               build-asan/  Debug with AddressSanitizer + UBSan, warnings are errors;
#                                   its integration tests use PostgreSQL port 25433 so both builds
#                                   can be tested on one machine
#   tsan               build-tsan/  RelWithDebInfo with ThreadSanitizer, for the tests labelled
#                                   "workers" (several reactor threads); PostgreSQL port 25434
#
# JOBS (default 2) sets the build parallelism.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=${1:-release}
shift || true

case "$MODE" in
  release)
    DIR=$ROOT/build
    ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGRING_WERROR=ON)
    ;;
  asan)
    DIR=$ROOT/build-asan
    ARGS=(-DCMAKE_BUILD_TYPE=Debug -DPGRING_SANITIZE=ON -DPGRING_WERROR=ON -DPGRING_TEST_PGPORT=25433)
    ;;
  tsan)
    DIR=$ROOT/build-tsan
    ARGS=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGRING_TSAN=ON -DPGRING_WERROR=ON -DPGRING_TEST_PGPORT=25434)
    ;;
  *)
    echo "usage: $0 [release|asan|tsan] [cmake options...]" >&2
    exit 2
    ;;
esac

echo "build: $MODE -> $DIR"
cmake -S "$ROOT" -B "$DIR" "${ARGS[@]}" "$@"
cmake --build "$DIR" -j "${JOBS:-2}"
echo "build: $MODE ok ($DIR)"
