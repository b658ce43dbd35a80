#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz in build-fuzz/ (clang 14,
# ASan + UBSan, a configuration of its own) and fuzzes each target for its
# share of the time, one after another (one core).
#
#   scripts/fuzz.sh MINUTES    a campaign of MINUTES in all, e.g. 60
#   scripts/fuzz.sh --ci       CI's fixed budget: 5 minutes in all
#   scripts/fuzz.sh --replay   build, then run every seed and kept crash once
#
# Every mode first replays the seeds (tests/fuzz/corpus) and the kept crash
# reproducers (tests/fuzz/crashes). Each target then fuzzes a scratch copy
# of its seeds under build-fuzz/runs/<time>/<target>/, so the repository's
# corpus is never written. Prints per target: executions, executions per
# second, coverage (cov, ft) and, for a crash, the path of its input and the
# report. Exits 1 if any target failed, 2 on a usage or build error.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

minutes=""
case "${1:-}" in
  --ci) minutes=5 ;;
  --replay) minutes=0 ;;
  '' | -h | --help) usage ;;
  *)
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || usage
    minutes="$1"
    ;;
esac

# name, share of the time (of 5), longest input. fuzz_messages gets two
# shares: it covers 23 decoders.
targets=(
  "fuzz_frame 1 4096"
  "fuzz_messages 2 4096"
  "fuzz_slot_header 1 4096"
  "fuzz_transport 1 4096"
)
shares=5

kvpool_install_deps

dir="${KVPOOL_FUZZ_BUILD_DIR:-$KVPOOL_ROOT/build-fuzz}"
build_start=$SECONDS
cmake -S "$KVPOOL_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DKVPOOL_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null || exit 2
# Just the fuzz targets and what they link, not the rest of the tree.
cmake --build "$dir" -j "${KVPOOL_BUILD_JOBS:-2}" --target fuzz || exit 2
echo "fuzz build: $((SECONDS - build_start)) s"

# Leaks are checked per input by libFuzzer; a UBSan report is a crash
# (-fno-sanitize-recover) and gets a stack.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"

# The report of a failed run, without libFuzzer's and libc's own frames.
report() {
  grep -E "fuzz check failed|ERROR:|SUMMARY|runtime error|#[0-9]+ 0x" "$1" |
    grep -vE " in (fuzzer::|__sanitizer_print_stack_trace|__libc_start|_start |main )|libc\.so|raise |abort |__pthread_kill" |
    head -30 || true
}

failed=0
for t in "${targets[@]}"; do
  read -r name _ _ <<<"$t"
  if ! "$KVPOOL_ROOT/tests/fuzz/replay.sh" "$dir/bin/$name" >"$dir/replay-$name.log" 2>&1; then
    echo "$name: FAILED replaying its seeds or kept crashes, at:"
    grep "^Running: " "$dir/replay-$name.log" | tail -1
    report "$dir/replay-$name.log"
    failed=1
  fi
done
echo "replayed seeds and kept crashes: $([ "$failed" = 0 ] && echo ok || echo FAILED)"
if [ "$minutes" = 0 ]; then exit "$failed"; fi

run="$dir/runs/$(date +%Y%m%d-%H%M%S)"
echo "fuzzing for $minutes min in all; scratch corpora, logs and crash inputs in $run"
total_s=$((minutes * 60))
for t in "${targets[@]}"; do
  read -r name share max_len <<<"$t"
  secs=$((total_s * share / shares))
  work="$run/$name"
  mkdir -p "$work/corpus" "$work/crashes"
  cp "$KVPOOL_ROOT/tests/fuzz/corpus/$name/"* "$work/corpus/"
  rc=0
  # -malloc_limit_mb: no decoder may allocate far beyond its input; the
  # largest legitimate allocation is FrameReader's 16 MiB frame buffer.
  "$dir/bin/$name" -max_total_time="$secs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=64 -print_final_stats=1 -artifact_prefix="$work/crashes/" "$work/corpus" \
    >"$work/log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$work/log" | tail -1 || true)
  printf '%-17s %4ss  execs %-10s exec/s %-7s %s\n' "$name" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-cov: ?}"
  if [ "$rc" -ne 0 ]; then
    failed=1
    echo "$name: CRASH (exit $rc); log $work/log"
    grep -E '(Test unit|artifact) written to' "$work/log" | sed "s/^/$name: /" || true
    report "$work/log"
  fi
done
if [ "$failed" -ne 0 ]; then
  echo "fuzz: FAILED; reproduce with $dir/bin/<target> <crash file> (tests/fuzz/README.md)"
else
  echo "fuzz: no crashes"
fi
exit "$failed"
