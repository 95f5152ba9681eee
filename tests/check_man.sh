#!/usr/bin/env bash
# tests/check_man.sh - the manual pages (man/*.N) are `mandoc -Tlint` clean (nothing
# ignored), and man/perimd.conf.5 documents exactly the parameters that
# `perimd -d` prints, each once, with the default of perimd/conf_params.h.
# Run from the top of the tree; PERIMD_BIN defaults to build/test/perimd.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
PERIMD_BIN=${PERIMD_BIN:-build/test/perimd}
PAGE=man/perimd.conf.5
status=0

# bad REASON - report one failure; the script fails at the end.
bad() {
	echo "check_man: $*"
	status=1
}

if ! command -v mandoc >/dev/null; then
	echo "check_man: mandoc is not installed"
	exit 1
fi
lint=$(mandoc -Tlint man/*.[1-9] 2>&1)
rc=$?
if [ "$rc" -ne 0 ] || [ -n "$lint" ]; then
	bad "mandoc -Tlint is not clean (rc=$rc):"
	echo "$lint"
fi

if [ ! -x "$PERIMD_BIN" ]; then
	echo "check_man: $PERIMD_BIN is missing: build it first (make -C perimd MODE=test)"
	exit 1
fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT

if ! "$PERIMD_BIN" -d >"$tmp/d" 2>"$tmp/d.err"; then
	echo "check_man: $PERIMD_BIN -d failed:"
	cat "$tmp/d.err"
	exit 1
fi
sed -n 's/^\([A-Za-z0-9_]*\) =.*/\1/p' "$tmp/d" | sort >"$tmp/code"
[ -s "$tmp/code" ] || bad "$PERIMD_BIN -d printed no parameter"

# The documented parameters: ".It Cm NAME Pq DEFAULT" in the PARAMETERS
# section (other sections may use .It Cm for other things).
awk '/^\.Sh /{ p = ($2 == "PARAMETERS") } p && /^\.It Cm /' "$PAGE" >"$tmp/items"
sed -n 's/^\.It Cm \([A-Za-z0-9_]*\).*/\1/p' "$tmp/items" | sort >"$tmp/man"
dups=$(uniq -d "$tmp/man")
[ -z "$dups" ] || bad "documented more than once in $PAGE:" $dups
if ! diff -u <(sort -u "$tmp/code") <(sort -u "$tmp/man") >"$tmp/diff"; then
	bad "parameters of '$PERIMD_BIN -d' (-) and $PAGE (+) differ:"
	grep '^[-+][^-+]' "$tmp/diff"
fi
if grep -v -q '^\.It Cm [A-Za-z0-9_]* Pq ' "$tmp/items"; then
	bad "entries without the form '.It Cm NAME Pq DEFAULT':"
	grep -v '^\.It Cm [A-Za-z0-9_]* Pq ' "$tmp/items"
fi

# Defaults: the table's text, "empty" for an empty one ("system host name"
# for myhostname, which then falls back to gethostname()).
sed -n 's/^PARAM([A-Z]*, *\([A-Za-z0-9_]*\), *"\([^"]*\)".*/\1 \2/p' perimd/conf_params.h |
	sed 's/^myhostname $/myhostname system host name/; s/^\([A-Za-z0-9_]*\) $/\1 empty/' |
	sort >"$tmp/tabdef"
sed -n 's/^\.It Cm \([A-Za-z0-9_]*\) Pq \(Qq \)\{0,1\}\(.*\)$/\1 \3/p' "$tmp/items" |
	sort >"$tmp/mandef"
if ! diff -u "$tmp/tabdef" "$tmp/mandef" >"$tmp/ddiff"; then
	bad "defaults in perimd/conf_params.h (-) and $PAGE (+) differ:"
	grep '^[-+][^-+]' "$tmp/ddiff"
fi

# The RESTART column: each restart-only parameter's entry says a change
# takes effect at restart.
for p in $(sed -n 's/^PARAM(.*) RESTART(\([A-Za-z0-9_]*\)).*/\1/p' perimd/conf_params.h); do
	awk -v p="$p" '/^\.It Cm / { on = $3 == p } on && /takes effect at restart/ { found = 1 }
		END { exit !found }' "$PAGE" ||
		bad "$p is RESTART in perimd/conf_params.h, but its entry in $PAGE does not say 'takes effect at restart'"
done

[ "$status" -eq 0 ] && echo "check_man: ok ($(wc -l <"$tmp/man") parameters documented)"
exit "$status"
