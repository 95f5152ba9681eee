#!/usr/bin/env bash
# check_loadtest.sh - the operators' load-test kit (tests/loadtest.sh) still
# runs end to end: a tiny ramp against the test build with conf/perimd.conf;
# every message relayed, a capacity line printed. No figure is checked.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${PERIMD_BIN:-build/test/perimd}
[ -x "$bin" ] || { echo "FAIL: $bin missing"; exit 1; }
out=$(STEPS="1 5" STEP_MSGS=20 SIZE=1000 timeout 120 bash tests/loadtest.sh -c conf/perimd.conf -b "$bin" 2>&1)
rc=$?
echo "$out"
[ "$rc" -eq 0 ] || { echo "FAIL: loadtest.sh exited $rc"; exit 1; }
grep -Eq '^capacity: [0-9]+ messages/s at [0-9]+ concurrent sessions' <<<"$out" ||
	{ echo "FAIL: no capacity line"; exit 1; }
# Both steps relayed all of their messages (20 each, refused 0).
[ "$(grep -Ec '^[0-9]+ +[0-9]+ +20 +0 ' <<<"$out")" -eq 2 ] ||
	{ echo "FAIL: a step did not relay every message"; exit 1; }
echo "ok: loadtest.sh"
