#!/usr/bin/env bash
# check_fuzz_smoke.sh - a short libFuzzer run of every tests/fuzz/fuzz_*.c
# target: build them (make -C perimd fuzz), then fuzz each for
# FUZZ_SECONDS (default 15, within FUZZ_BUDGET) on a scratch copy of its seed corpus
# tests/fuzz/corpus/NAME/, so the committed corpus is never modified.
# The random seed is fixed (FUZZ_SEED, default 1) so that a failure in CI
# can be replayed; FUZZ_SEED=0 lets libFuzzer pick one per run. One input
# may take 25 s (a loaded CI machine runs the sanitizer build slowly; the
# long runs in the README use 10 s and catch slow inputs).
# Exit status 1 on a build failure or any crash, leak, timeout or abort;
# the input that did it is kept under build/fuzz/artifacts/. Skipped
# (status 0) when clang cannot build libFuzzer programs here.
# Run from the repository root. Long runs are the same command with a
# bigger FUZZ_SECONDS, or build/fuzz/fuzz_X DIR by hand.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
# FUZZ_SECONDS unset: 15 s each, but no more than FUZZ_BUDGET (160 s) for
# all targets together, and at least 5 s each (the suite has a time
# bound; the long runs in the README are where depth comes from).
ntargets=$(ls tests/fuzz/fuzz_*.c | wc -l)
budget=${FUZZ_BUDGET:-160}
each=$((budget / (ntargets > 0 ? ntargets : 1)))
[ "$each" -gt 15 ] && each=15
[ "$each" -lt 5 ] && each=5
SECONDS_EACH=${FUZZ_SECONDS:-$each}
SEED=${FUZZ_SEED:-1}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Does clang link a libFuzzer program on this machine?
printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
	>"$scratch/probe.c"
if ! command -v clang >/dev/null ||
	! clang -fsanitize=fuzzer -o "$scratch/probe" "$scratch/probe.c" 2>/dev/null; then
	echo "skip: clang with libFuzzer is not available"
	exit 0
fi

if ! make -C perimd fuzz -j"$(nproc 2>/dev/null || echo 2)" >"$scratch/build.log" 2>&1; then
	echo "FAIL: make -C perimd fuzz"
	tail -n 40 "$scratch/build.log"
	exit 1
fi

artifacts=$ROOT/build/fuzz/artifacts
mkdir -p "$artifacts"
failed=0
for src in tests/fuzz/fuzz_*.c; do
	name=$(basename "$src" .c)
	target=${name#fuzz_}
	bin=$ROOT/build/fuzz/$name
	corpus=$scratch/corpus-$target
	mkdir -p "$corpus"
	if [ -d "tests/fuzz/corpus/$target" ]; then
		cp -r "tests/fuzz/corpus/$target/." "$corpus/"
	fi
	if [ ! -x "$bin" ]; then
		echo "FAIL $name: not built"
		failed=1
		continue
	fi
	log=$scratch/$name.log
	"$bin" -seed="$SEED" -max_total_time="$SECONDS_EACH" -timeout=25 -rss_limit_mb=2048 \
		-print_final_stats=1 -artifact_prefix="$artifacts/$name-" \
		"$corpus" >"$log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
	if [ "$rc" -ne 0 ]; then
		echo "FAIL $name (rc=$rc, ${execs:-?} runs)"
		grep -E 'ERROR|SUMMARY|Test unit written|^==' "$log" | head -n 20
		failed=1
	else
		echo "ok $name: ${execs:-?} runs in ${SECONDS_EACH}s, corpus $(find "$corpus" -type f | wc -l) inputs"
	fi
done
exit "$failed"
