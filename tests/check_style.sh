#!/usr/bin/env bash
# tests/check_style.sh - perimd/ is formatted as .clang-format says and
# cppcheck finds nothing (STYLE.md). Exit 0 = clean.
#
#   bash tests/check_style.sh           check both
#   bash tests/check_style.sh --fix     format perimd/ in place first
#                                       (clang-format -i perimd/*.c perimd/*.h)
#
# clang-format: --dry-run --Werror over perimd/*.c and perimd/*.h; the
# files that differ are listed (see one with `clang-format F | diff F -`).
# cppcheck: severities warning and portability (real defects; the "style"
# class mostly asks for C89 declarations at the top of a scope, which
# perimd does not follow), with tests/cppcheck/perimd.cfg (what cppcheck
# cannot see in our headers) and tests/cppcheck/suppressions.txt (findings
# checked and kept, each with its reason).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
status=0
for tool in clang-format cppcheck; do
	if ! command -v "$tool" >/dev/null; then
		echo "check_style: $tool is not installed (build.sh DEPS)"
		exit 1
	fi
done

if [ "${1:-}" = --fix ]; then
	clang-format -i perimd/*.c perimd/*.h
fi

# 1. Formatting.
bad=()
for f in perimd/*.c perimd/*.h; do
	clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -gt 0 ]; then
	echo "check_style: ${#bad[@]} files are not formatted as .clang-format says:"
	printf '  %s\n' "${bad[@]}"
	echo "check_style: format with: clang-format -i perimd/*.c perimd/*.h (or $0 --fix)"
	status=1
fi

# 2. cppcheck. The suppressions file has comments; cppcheck wants bare lines.
supp=$(mktemp)
trap 'rm -f "$supp"' EXIT
grep -v '^#' tests/cppcheck/suppressions.txt | grep . >"$supp"
if ! cppcheck -q -j2 --std=c11 --enable=warning,portability --error-exitcode=1 --inline-suppr \
	--library=tests/cppcheck/perimd.cfg --suppressions-list="$supp" \
	-D_GNU_SOURCE -D__GNUC__ --max-configs=1 -I perimd perimd/; then
	echo "check_style: cppcheck found the above"
	status=1
fi

[ $status -eq 0 ] && echo "check_style: ok (clang-format, cppcheck)"
exit $status
