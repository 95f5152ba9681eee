#!/usr/bin/env bash
# tests/check_conf_roundtrip.sh - the configuration through the real binary:
# conf/perimd.conf passes -t; what -n prints reads back to the same -n
# output; -d reads back as all defaults; a bad file or -o exits 1 naming
# FILE:LINE (or the -o option) and the parameter on stderr.
# Run from the top of the tree; PERIMD_BIN defaults to build/test/perimd.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
PERIMD_BIN=${PERIMD_BIN:-build/test/perimd}
status=0

# bad REASON - report one failure; the script fails at the end.
bad() {
	echo "check_conf_roundtrip: $*"
	status=1
}

if [ ! -x "$PERIMD_BIN" ]; then
	echo "check_conf_roundtrip: $PERIMD_BIN is missing: build it first (make -C perimd MODE=test)"
	exit 1
fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

# expect_fail WHAT WANT ARGS... - perimd ARGS exits 1 with WANT on stderr.
expect_fail() {
	local what=$1 want=$2 rc
	shift 2
	"$PERIMD_BIN" "$@" >"$tmp/out" 2>"$tmp/err"
	rc=$?
	if [ "$rc" -ne 1 ]; then
		bad "$what: exit status $rc, expected 1"
	elif ! grep -qF -- "$want" "$tmp/err"; then
		bad "$what: stderr lacks \"$want\":"
		cat "$tmp/err"
	fi
}

"$PERIMD_BIN" -t -c conf/perimd.conf >"$tmp/t.out" 2>&1 ||
	{ bad "perimd -t -c conf/perimd.conf failed:"; cat "$tmp/t.out"; }

if "$PERIMD_BIN" -n -c conf/perimd.conf >"$tmp/a" 2>"$tmp/a.err"; then
	[ -s "$tmp/a" ] || bad "perimd -n -c conf/perimd.conf printed nothing"
	if "$PERIMD_BIN" -n -c "$tmp/a" >"$tmp/b" 2>"$tmp/b.err"; then
		cmp -s "$tmp/a" "$tmp/b" ||
			{ bad "-n output does not read back the same:"; diff -u "$tmp/a" "$tmp/b"; }
	else
		bad "perimd -n -c <its own -n output> failed:"
		cat "$tmp/b.err"
	fi
else
	bad "perimd -n -c conf/perimd.conf failed:"
	cat "$tmp/a.err"
fi

# Overrides show in -n and survive the round trip as well.
if "$PERIMD_BIN" -n -c conf/perimd.conf -o 'smtpd_banner=$myhostname ESMTP hi there' \
	-o 'relay_domains=a.example b.example' >"$tmp/o1" 2>&1 &&
	"$PERIMD_BIN" -n -c "$tmp/o1" >"$tmp/o2" 2>&1; then
	grep -qx 'smtpd_banner = $myhostname ESMTP hi there' "$tmp/o1" ||
		{ bad "-o smtpd_banner not in -n output:"; cat "$tmp/o1"; }
	grep -qx 'relay_domains = a.example b.example' "$tmp/o1" ||
		{ bad "-o relay_domains not in -n output:"; cat "$tmp/o1"; }
	cmp -s "$tmp/o1" "$tmp/o2" || { bad "-n with -o does not read back the same:"; diff -u "$tmp/o1" "$tmp/o2"; }
else
	bad "perimd -n with -o failed:"
	cat "$tmp/o1" "$tmp/o2" 2>/dev/null
fi

# -d is all defaults: read back, nothing differs from the defaults.
if "$PERIMD_BIN" -d >"$tmp/d" 2>"$tmp/d.err" &&
	"$PERIMD_BIN" -n -c "$tmp/d" >"$tmp/dn" 2>"$tmp/dn.err"; then
	[ -s "$tmp/dn" ] && { bad "-d output read back is not all defaults:"; cat "$tmp/dn"; }
else
	bad "perimd -d, or reading its output back, failed:"
	cat "$tmp/d.err" "$tmp/dn.err" 2>/dev/null
fi

printf '# a typo\nmax_sessions = 10\n\nsmtpd_tiemout = 60s\n' >"$tmp/unknown.conf"
expect_fail "unknown parameter" "$tmp/unknown.conf:4: unknown parameter smtpd_tiemout" \
	-t -c "$tmp/unknown.conf"
printf 'max_sessions = 10\nsmtpd_timeout =\n    10x\n' >"$tmp/badval.conf"
expect_fail "bad value" "$tmp/badval.conf:2: smtpd_timeout:" -t -c "$tmp/badval.conf"
expect_fail "bad -o" "-o max_sessions=0: 0 is below the minimum 1" \
	-t -c conf/perimd.conf -o max_sessions=0
expect_fail "missing file" "$tmp/nonexistent.conf" -t -c "$tmp/nonexistent.conf"

[ "$status" -eq 0 ] && echo "check_conf_roundtrip: ok"
exit "$status"
