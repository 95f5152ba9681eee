#!/usr/bin/env bash
# tests/run.sh - run every test of the ASan+UBSan build and end with exactly
# one line "N passed, N failed" (exit 1 if anything failed).
#
#   build/test/unit/test_*       C unit tests; each "ok NAME" / "FAIL NAME" line
#                                counts, a crash or a missing summary is a failure
#   build/test/replay/replay_X   fuzz corpus tests/fuzz/corpus/X/ replayed: one test
#   tests/check_*.sh             one test each (exit 0 = pass)
#   tests/integration/           pytest against the real binary (build/test/perimd)
#
# Expects `make -C perimd MODE=test` to have run (./build.sh test does both).
# Every program runs under a time bound so a hang is a failure, not a stall.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=$ROOT/build/test
export PERIMD_BIN=${PERIMD_BIN:-$BUILD/perimd}
# smtp-source / smtp-sink live in /usr/sbin, which a non-root PATH may lack.
export PATH=$PATH:/usr/sbin:/sbin

# abort_on_error turns every sanitizer finding into a non-zero exit (SIGABRT).
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# LeakSanitizer cannot run under ptrace (strace, gdb, some container
# sandboxes): it then dies with "LeakSanitizer has encountered a fatal
# error" on every exit. Probe once with a leak-free program and, if it is
# so, run without leak detection (the other ASan checks still run).
probe=$(mktemp -d)
if printf 'int main(void){return 0;}\n' >"$probe/p.c" &&
	cc -fsanitize=address -o "$probe/p" "$probe/p.c" 2>/dev/null &&
	! "$probe/p" >/dev/null 2>&1; then
	export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
	echo "note: LeakSanitizer unusable here (ptrace/container); leak detection off"
fi
rm -rf "$probe"

passed=0
failed=0
failures=()

# fail NAME - record one failed test.
fail() {
	failed=$((failed + 1))
	failures+=("$1")
	echo "FAIL $1"
}

# --- C unit tests --------------------------------------------------------
for t in "$BUILD"/unit/test_*; do
	[ -x "$t" ] || continue
	name=unit/$(basename "$t")
	out=$(timeout -k 5 120 "$t" 2>&1)
	rc=$?
	ok=$(grep -c '^ok ' <<<"$out")
	bad=$(grep -c '^FAIL ' <<<"$out")
	passed=$((passed + ok))
	failed=$((failed + bad))
	while read -r _ tname; do
		failures+=("$name: $tname")
	done < <(grep '^FAIL ' <<<"$out")
	if ! tail -n 1 <<<"$out" | grep -Eq '^[0-9]+ passed, [0-9]+ failed$'; then
		# Crashed, hung or exited early: the summary line never came.
		fail "$name (rc=$rc, no summary line: crash or early exit)"
	elif [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
		fail "$name (rc=$rc with no FAIL line)"
	fi
	if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then
		echo "--- $name output:"
		echo "$out"
		echo "---"
	fi
done

# --- fuzz corpora, replayed by plain programs ----------------------------
for r in "$BUILD"/replay/replay_*; do
	[ -x "$r" ] || continue
	target=${r##*/replay_}
	name=replay/$target
	corpus=$ROOT/tests/fuzz/corpus/$target
	files=()
	if [ -d "$corpus" ]; then
		mapfile -t files < <(find "$corpus" -type f | sort)
	fi
	if [ ${#files[@]} -eq 0 ]; then
		fail "$name (no corpus in tests/fuzz/corpus/$target/)"
		continue
	fi
	if out=$(timeout -k 5 300 "$r" "${files[@]}" 2>&1); then
		passed=$((passed + 1))
	else
		fail "$name (rc=$?)"
		tail -n 40 <<<"$out"
	fi
done

# --- shell checks --------------------------------------------------------
for c in "$ROOT"/tests/check_*.sh; do
	[ -f "$c" ] || continue
	name=$(basename "$c")
	if out=$(timeout -k 5 600 bash "$c" </dev/null 2>&1); then
		passed=$((passed + 1))
	else
		fail "$name (rc=$?)"
		echo "$out"
	fi
done

# --- integration tests (pytest) ------------------------------------------
if compgen -G "$ROOT/tests/integration/test_*.py" >/dev/null; then
	junit=$(mktemp)
	# --timeout: one hung test fails alone (pytest-timeout) instead of the
	# whole run hitting the outer bound; --durations shows where time goes.
	timeout -k 10 1500 /usr/bin/python3 -m pytest -q -p no:cacheprovider \
		-rfEs --timeout=300 --durations=15 --junitxml="$junit" \
		tests/integration </dev/null
	rc=$?
	# The JUnit report names every test with its outcome.
	counts=$(/usr/bin/python3 - "$junit" 2>"$junit.names" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception:
    print("0 0 -"); sys.exit()
# A test that errors in teardown has a second <testcase> of the same name:
# one outcome per name, failed if any of its entries failed or errored.
outcome = {}
for tc in root.iter("testcase"):
    name = tc.get("classname", "") + "::" + tc.get("name", "")
    kinds = {c.tag for c in tc}
    o = "fail" if kinds & {"failure", "error"} else "skip" if "skipped" in kinds else "pass"
    prev = outcome.get(name)
    if prev is None or o == "fail" or (o == "pass" and prev == "skip"):
        outcome[name] = o
for name, o in outcome.items():
    if o == "fail":
        print("FAILNAME", name, file=sys.stderr)
    elif o == "skip":
        print("SKIPNAME", name, file=sys.stderr)
print(sum(o == "pass" for o in outcome.values()), sum(o == "fail" for o in outcome.values()), "+")
EOF
)
	read -r py_pass py_fail parsed <<<"$counts"
	passed=$((passed + py_pass))
	failed=$((failed + py_fail))
	while read -r kind tname; do
		case $kind in
		FAILNAME) failures+=("pytest: $tname") ;;
		SKIPNAME) echo "skipped: $tname" ;;
		esac
	done <"$junit.names"
	if [ "$parsed" != "+" ]; then
		fail "pytest (rc=$rc, no report: crashed or timed out)"
	elif [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && [ "$py_fail" -eq 0 ]; then
		# 2..4: interrupted, internal or usage error; 124: timeout.
		fail "pytest (rc=$rc with no failed test)"
	fi
	rm -f "$junit" "$junit.names"
fi

if [ ${#failures[@]} -gt 0 ]; then
	echo "failed tests:"
	printf '  %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
