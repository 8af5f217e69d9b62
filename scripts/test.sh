#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run):
#
#   1. scripts/deps.sh                    install missing Debian packages
#   1b. format                            clang-format --dry-run --Werror over every C/C++ source
#   2. release build (build/)             unit + integration tests with ctest
#   3. sanitizer build (build-asan/)      the same tests under ASan + UBSan, then again with
#                                         every pgring on the epoll engine (PGRING_IT_IO_ENGINE)
#   3b. thread sanitizer (build-tsan/)    the tests labelled "workers" under TSan
#   4. fuzz smoke (build-fuzz/, clang)    each fuzz_* target for FUZZ_SECONDS (default 60) seconds,
#                                         starting from tests/fuzz/corpus/<name without fuzz_>
#
# The integration tests' PostgreSQL is started and stopped by ctest's fixtures
# (scripts/pg-throwaway.sh), on port 25432 for build/, 25433 for build-asan/ and 25434 for build-tsan/.
# Every step runs even if an earlier one failed (except deps); the exit status is 1 if any
# step failed. Environment: FUZZ_SECONDS, FUZZ_JOBS (parallel fuzzers, default 2),
# CTEST_JOBS (default 2), JOBS (build parallelism, default 2).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_JOBS=${FUZZ_JOBS:-2}
CTEST_JOBS=${CTEST_JOBS:-2}
LOGS=$(mktemp -d -t pgring-test.XXXXXX)
trap 'rm -rf -- "$LOGS"' EXIT

SUMMARY=()
FAILED_STEPS=0
TESTS_PASSED=0
TESTS_FAILED=0
TESTS_SKIPPED=0
SUITE_START=$SECONDS

banner() { printf '\n===== %s\n' "$*"; }

# step NAME COMMAND...: run a command as one named step; record ok/FAIL and its duration.
step() {
  local name=$1 start=$SECONDS rc=0
  shift
  banner "$name"
  "$@" || rc=$?
  if ((rc == 0)); then
    SUMMARY+=("ok    $name ($((SECONDS - start))s)")
  else
    SUMMARY+=("FAIL  $name (exit $rc, $((SECONDS - start))s)")
    FAILED_STEPS=$((FAILED_STEPS + 1))
  fi
  return "$rc"
}

run_ctest_epoll() {
  PGRING_IT_IO_ENGINE=epoll run_ctest "$@"
}

# Runs ctest in DIR and adds its counts to the totals.
run_ctest() {
  local dir=$1 log rc=0
  shift
  # Extra ctest arguments (the sanitizer build leaves out the long "slow" reliability tests,
  # which the release build runs).
  log=$LOGS/ctest-$(basename "$dir").log
  ctest --test-dir "$dir" --output-on-failure --no-tests=error -j "$CTEST_JOBS" "$@" 2>&1 | tee "$log" || rc=$?
  local line total failed skipped
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
  if [[ -n "$line" ]]; then
    failed=$(sed -E 's/.* ([0-9]+) tests? failed out of .*/\1/' <<<"$line")
    total=$(sed -E 's/.* out of ([0-9]+).*/\1/' <<<"$line")
    skipped=$(grep -cE '\(Skipped\)$' "$log" || true)
    TESTS_FAILED=$((TESTS_FAILED + failed))
    TESTS_SKIPPED=$((TESTS_SKIPPED + skipped))
    TESTS_PASSED=$((TESTS_PASSED + total - failed - skipped))
  elif ((rc != 0)); then
    TESTS_FAILED=$((TESTS_FAILED + 1))  # ctest itself failed (no tests found, bad build dir)
  fi
  return "$rc"
}

# --- fuzz smoke -------------------------------------------------------------------------------

FUZZ_DIR=$ROOT/build-fuzz

fuzz_build() {
  # (Called from step's `||` context, where set -e is off: every failure returns explicitly.)
  CC=clang CXX=clang++ cmake -S "$ROOT" -B "$FUZZ_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPGRING_FUZZ=ON -DPGRING_TESTS=OFF || return 1
  # Build only the fuzz targets, not the daemon.
  local targets
  targets=$(cmake --build "$FUZZ_DIR" --target help | grep -oE '\bfuzz_[A-Za-z0-9_]+' | sort -u || true)
  if [[ -z "$targets" ]]; then
    echo "fuzz: no fuzz_* targets defined in tests/fuzz" >&2
    return 1
  fi
  # shellcheck disable=SC2086  # one word per target
  cmake --build "$FUZZ_DIR" -j "${JOBS:-2}" --target $targets
}

# fuzz_one BINARY: one target for FUZZ_SECONDS on a copy of its corpus; writes "name rc" to
# $LOGS/fuzz-results and keeps crash inputs in build-fuzz/artifacts/<name>/.
fuzz_one() {
  local bin=$1 name corpus work artifacts rc=0
  name=$(basename "$bin")
  corpus=$ROOT/tests/fuzz/corpus/${name#fuzz_}
  work=$(mktemp -d -t "pgring-$name.XXXXXX")
  artifacts=$FUZZ_DIR/artifacts/$name
  rm -rf -- "$artifacts"
  mkdir -p "$artifacts"
  if [[ -d "$corpus" ]]; then
    cp -R "$corpus/." "$work/"
  else
    echo "fuzz: $name: no corpus at tests/fuzz/corpus/${name#fuzz_}; starting empty"
  fi
  "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$work" >"$LOGS/fuzz-$name.log" 2>&1 || rc=$?
  rm -rf -- "$work"
  echo "$name $rc" >>"$LOGS/fuzz-results"
}

fuzz_run() {
  local bins=() bin
  while IFS= read -r bin; do
    bins+=("$bin")
  done < <(find "$FUZZ_DIR" -path "$FUZZ_DIR/CMakeFiles" -prune -o -type f -perm -u+x -name 'fuzz_*' -print | sort)
  if ((${#bins[@]} == 0)); then
    echo "fuzz: no fuzz_* executables were built" >&2
    return 1
  fi
  : >"$LOGS/fuzz-results"
  echo "fuzz: ${#bins[@]} targets, ${FUZZ_SECONDS}s each, $FUZZ_JOBS at a time"
  for bin in "${bins[@]}"; do
    while (($(jobs -rp | wc -l) >= FUZZ_JOBS)); do
      wait -n || true
    done
    echo "fuzz: running $(basename "$bin")"
    fuzz_one "$bin" &
  done
  wait || true

  local name rc runs failed=0
  for bin in "${bins[@]}"; do
    name=$(basename "$bin")
    rc=$(awk -v n="$name" '$1 == n {print $2}' "$LOGS/fuzz-results")
    if [[ "$rc" == 0 ]]; then
      runs=$(awk '/^stat::number_of_executed_units/ {print $2}' "$LOGS/fuzz-$name.log")
      echo "fuzz: $name ok (${runs:-?} runs)"
      TESTS_PASSED=$((TESTS_PASSED + 1))
    else
      failed=$((failed + 1))
      TESTS_FAILED=$((TESTS_FAILED + 1))
      echo "fuzz: $name FAILED (exit ${rc:-unknown}); crash inputs in $FUZZ_DIR/artifacts/$name/"
      if [[ -f "$LOGS/fuzz-$name.log" ]]; then
        echo "----- last lines of its output -----"
        tail -n 60 "$LOGS/fuzz-$name.log"
      fi
    fi
  done
  ((failed == 0))
}

# --- the suite ----------------------------------------------------------------------------------

if ! step "deps" "$ROOT/scripts/deps.sh"; then
  echo "test: installing dependencies failed; nothing else can run" >&2
  exit 1
fi

# Every C and C++ source of the repository is formatted by .clang-format (clang-format 14).
format_check() {
  local files
  mapfile -t files < <(git -C "$ROOT" ls-files --cached --others --exclude-standard '*.cpp' '*.hpp' '*.c' '*.h')
  ((${#files[@]} > 0)) || return 0
  (cd "$ROOT" && clang-format --dry-run --Werror "${files[@]}")
}
step "format" format_check || true

for mode in release asan tsan; do
  dir=build
  [[ $mode == asan ]] && dir=build-asan
  [[ $mode == tsan ]] && dir=build-tsan
  extra=()
  [[ $mode == asan ]] && extra=(-LE slow)
  [[ $mode == tsan ]] && extra=(-L workers)
  if step "build $mode" "$ROOT/scripts/build.sh" "$mode"; then
    step "ctest $mode" run_ctest "$ROOT/$dir" "${extra[@]}" || true
    # The epoll engine (io.engine: epoll, where containers forbid io_uring): the same tests,
    # under the sanitizers.
    [[ $mode == asan ]] && { step "ctest $mode, epoll engine" run_ctest_epoll "$ROOT/$dir" "${extra[@]}" || true; }
  else
    SUMMARY+=("skip  ctest $mode (build failed)")
  fi
done

if ! command -v clang++ >/dev/null 2>&1; then
  SUMMARY+=("skip  fuzz (clang++ not installed)")
elif [[ ! -f "$ROOT/tests/fuzz/CMakeLists.txt" ]]; then
  SUMMARY+=("skip  fuzz (no tests/fuzz/CMakeLists.txt)")
elif step "fuzz build" fuzz_build; then
  step "fuzz ${FUZZ_SECONDS}s per target" fuzz_run || true
else
  SUMMARY+=("skip  fuzz run (build failed)")
fi

banner "summary ($((SECONDS - SUITE_START))s)"
printf '  %s\n' "${SUMMARY[@]}"
summary="tests: $TESTS_PASSED passed, $TESTS_FAILED failed"
((TESTS_SKIPPED > 0)) && summary+=", $TESTS_SKIPPED skipped"
echo "$summary"
if ((FAILED_STEPS > 0)); then
  echo "test: $FAILED_STEPS step(s) failed"
  exit 1
fi
