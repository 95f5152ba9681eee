#!/usr/bin/env bash
# tests/check_conf_examples.sh - the shipped example configurations pass
# `perimd -t`: conf/perimd.conf (development, commented) and
# deploy/perimd.conf (the container image's default).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${PERIMD_BIN:-build/test/perimd}
for f in conf/perimd.conf deploy/perimd.conf; do
	"$BIN" -t -c "$f" || { echo "check_conf_examples: $f fails perimd -t"; exit 1; }
done
# And -t does fail on a bad one (the check can fail).
! "$BIN" -t -c /dev/null -o no_such_parameter=1 2>/dev/null
echo "check_conf_examples: ok"
