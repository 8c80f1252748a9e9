#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz/) in a clang build of their own and runs each for a
# bounded time from its seed corpus. Fails on the first crash, leak, sanitizer report, slow
# input or out-of-memory. ctest's fuzz_smoke runs it (tests/CMakeLists.txt).
#
#   tests/fuzz/run_fuzz.sh [BUILD_DIR]      default: build-fuzz in the repository
#
# The build (-DAGENTD_FUZZ=ON) holds only what the fuzz targets link, compiled with coverage,
# ASan and UBSan at -O1; it is kept between runs, so only the first one compiles everything.
# Inputs found while fuzzing go to BUILD_DIR/corpus/<target>/ (kept, so later runs start
# where earlier ones stopped), crashing inputs to BUILD_DIR/artifacts/.
#
# Environment:
#   FUZZ_SECONDS=60                  fuzzing time per target
#   FUZZ_TARGETS="policy_fuzz jwt_fuzz"
#   FUZZ_JOBS=2                      build parallelism
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${1:-$ROOT/build-fuzz}
SECS=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-policy_fuzz jwt_fuzz}
JOBS=${FUZZ_JOBS:-2}

log() { echo "[fuzz] $*" >&2; }
die() { echo "[fuzz] FAILED: $*" >&2; exit 1; }

[[ $SECS =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS must be a positive integer (got '$SECS')"
command -v clang++ >/dev/null || die "clang++ not found; 'make deps' installs clang"

start=$(date +%s)
mkdir -p "$BUILD"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  log "configuring $BUILD"
  CXX=clang++ cmake -S "$ROOT" -B "$BUILD" -DAGENTD_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" > "$BUILD/configure.log" 2>&1 ||
    { tail -30 "$BUILD/configure.log" >&2; die "configure (log: $BUILD/configure.log)"; }
fi
log "building $TARGETS"
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "$JOBS" --target $TARGETS > "$BUILD/build.log" 2>&1 ||
  { tail -40 "$BUILD/build.log" >&2; die "build (log: $BUILD/build.log)"; }
log "built in $(( $(date +%s) - start )) s"

# UBSan reports are errors: stop at the first, so that libFuzzer sees a crash.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
for t in $TARGETS; do
  seeds=$ROOT/tests/fuzz/${t%_fuzz}_corpus
  work=$BUILD/corpus/$t
  mkdir -p "$work" "$BUILD/artifacts"
  log "$t: ${SECS} s from $seeds"
  if ! "$BUILD/bin/$t" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=20000 \
        -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$t-" "$work" "$seeds" \
        > "$BUILD/$t.log" 2>&1; then
    grep -v '^#[0-9]' "$BUILD/$t.log" | tail -60 >&2
    die "$t (log: $BUILD/$t.log; the input that failed is in $BUILD/artifacts/)"
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$BUILD/$t.log" | sed "s/^/[fuzz] $t: /" >&2 || true
done
log "passed in $(( $(date +%s) - start )) s"
