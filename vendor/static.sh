#!/usr/bin/env bash
# vendor/static.sh - the fully static (musl) perimd: ./build.sh static [noclamav]
#
#   ./build.sh static            BearSSL, c-ares, SQLite, Connector/C, libldap
#                                (with OpenSSL for ldaps:// and StartTLS), libclamav
#                                (and its zlib/bzip2/PCRE2/libxml2/json-c/libmspack)
#                                -> build/static/perimd
#   ./build.sh static noclamav   the same without libclamav (av_scanner = clamd
#                                only) -> build/static-noclamav/perimd
#
# Sources are Debian's (vendor/pins: exact versions, .dsc hashes); nothing of
# them is committed. Each library is built by vendor/recipes/NAME.sh into one
# prefix of static archives, $PERIMD_STATIC_CACHE/deps-HASH, where HASH covers
# the pins, the recipes and the toolchain part of this file: a rebuild with
# unchanged pins only relinks perimd. Every library leaves a stamp there, so
# the full build reuses what the noclamav one built.
#
# Environment: PERIMD_STATIC_CACHE (default /var/cache/perimd-static when
# writable, else build/static-cache), JOBS (default nproc).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(dirname "$HERE")
VARIANT=full
case "${1:-}" in
"") ;;
noclamav) VARIANT=noclamav ;;
*) echo "usage: ./build.sh static [noclamav]" >&2; exit 2 ;;
esac

if [ -z "${PERIMD_STATIC_CACHE:-}" ]; then
	if mkdir -p /var/cache/perimd-static 2>/dev/null && [ -w /var/cache/perimd-static ]; then
		PERIMD_STATIC_CACHE=/var/cache/perimd-static
	else
		PERIMD_STATIC_CACHE=$TOP/build/static-cache
	fi
fi
J=${JOBS:-$(nproc 2>/dev/null || echo 2)}
SRC=$PERIMD_STATIC_CACHE/src
KEY=$( { cat "$HERE/pins" "$HERE"/recipes/*.sh "$HERE/musl_glibc_shims.c";
	 sed -n '/^# >>> toolchain/,/^# <<< toolchain/p' "$0"; } | sha256sum | cut -c1-16)
P=$PERIMD_STATIC_CACHE/deps-$KEY
WORK=$PERIMD_STATIC_CACHE/work
mkdir -p "$SRC" "$P/lib" "$P/include" "$WORK"
# One static build at a time per cache (a test and a hand-run build share it).
exec 9>"$PERIMD_STATIC_CACHE/.lock"
flock -w 1800 9 || { echo "static: $PERIMD_STATIC_CACHE is locked by another build" >&2; exit 1; }
T0=$(date +%s)

# step NAME CMD... - run a build step with its output in a log; on failure
# show the log's tail and stop. errexit is re-armed inside the subshell
# (bash ignores it in functions called from a condition).
step() {
	local n=$1 s rc
	shift
	s=$(date +%s)
	set +e
	(set -e; "$@") >"$WORK/log.$n" 2>&1
	rc=$?
	set -e
	if [ $rc -ne 0 ]; then
		echo "static: FAILED $n (log: $WORK/log.$n)" >&2
		tail -25 "$WORK/log.$n" >&2
		exit 1
	fi
	echo "static: $n $(($(date +%s) - s)) s"
}

# pin NAME - "version sha256" of a pinned source package.
pin() { awk -v n="$1" '$1 == n { print $2, $3 }' "$HERE/pins"; }

# fetch NAME - download the pinned source (once), check the .dsc against its
# pin and every file against the .dsc; print the .dsc path.
fetch() {
	local name=$1 ver sum upver dsc
	read -r ver sum <<<"$(pin "$name")"
	[ -n "$ver" ] || { echo "static: $name is not in vendor/pins" >&2; return 1; }
	upver=${ver#*:}
	dsc=$SRC/${name}_$upver.dsc
	if [ ! -f "$dsc" ]; then
		(cd "$SRC" && apt-get source --download-only -q "$name=$ver") >&2 ||
			{ echo "static: apt-get source $name=$ver failed (deb-src entry? network?)" >&2; return 1; }
	fi
	echo "$sum  $dsc" | sha256sum -c --quiet - >&2 ||
		{ echo "static: $dsc does not match its pin in vendor/pins" >&2; return 1; }
	# The .dsc's own SHA-256 list covers the tarballs.
	awk '/^Checksums-Sha256:/ { on = 1; next } /^[^ ]/ { on = 0 } on && NF == 3 { print $1 "  " $3 }' "$dsc" |
		(cd "$SRC" && sha256sum -c --quiet -) >&2 ||
		{ echo "static: a file of $dsc does not match the .dsc" >&2; return 1; }
	echo "$dsc"
}

# unpack NAME - a fresh, patched source tree under $WORK; print its path.
unpack() {
	local dsc d
	dsc=$(fetch "$1")
	d=$WORK/$1
	rm -rf "$d"
	dpkg-source --no-check --no-copy -x "$dsc" "$d" >&2  # checksums verified by fetch
	echo "$d"
}

# >>> toolchain (hashed into the cache key)
CFL="-Os -fPIC -ffunction-sections -fdata-sections"
# musl-gcc has no Linux UAPI headers; expose linux/, asm/, asm-generic/ only
# (never the glibc headers in /usr/include).
mkdir -p "$P/kinc"
ln -sfn /usr/include/linux "$P/kinc/linux"
ln -sfn /usr/include/asm-generic "$P/kinc/asm-generic"
ln -sfn /usr/include/x86_64-linux-gnu/asm "$P/kinc/asm"
# <sys/queue.h> (BSD list macros, header only, no includes) is not in musl.
mkdir -p "$P/kinc/sys"
ln -sfn /usr/include/x86_64-linux-gnu/sys/queue.h "$P/kinc/sys/queue.h"
# Debian's musl-gcc.specs ignores -static-pie: the binary would keep an
# interpreter path (/lib/ld-musl-x86_64.so.1) and fail in a scratch image
# with "No such file". These specs start static-pie binaries with rcrt1.o
# and link them without a dynamic linker.
sed -e 's|^%{!shared: /usr/lib/x86_64-linux-musl/Scrt1.o}|%{static-pie: /usr/lib/x86_64-linux-musl/rcrt1.o} %{!static-pie:%{!shared: /usr/lib/x86_64-linux-musl/Scrt1.o}}|' \
    -e 's|^-dynamic-linker /lib/ld-musl-x86_64.so.1 -nostdlib %{shared:-shared} %{static:-static}|%{!static-pie:-dynamic-linker /lib/ld-musl-x86_64.so.1} -nostdlib %{shared:-shared} %{static:-static} %{static-pie:-static -pie --no-dynamic-linker -z text}|' \
    /usr/lib/x86_64-linux-musl/musl-gcc.specs >"$P/musl-spie.specs"
grep -q rcrt1.o "$P/musl-spie.specs" || { echo "static: musl-gcc.specs has an unexpected shape" >&2; exit 1; }
# CMake must not find glibc's headers and libraries in /usr.
cat >"$P/musl.cmake" <<EOF
set(CMAKE_C_COMPILER musl-gcc)
set(CMAKE_C_FLAGS_INIT "$CFL -I$P/kinc")
set(CMAKE_FIND_ROOT_PATH $P)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_LIBRARY_SUFFIXES .a)
set(BUILD_SHARED_LIBS OFF CACHE BOOL "")
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
EOF
CM="cmake -G Ninja --toolchain $P/musl.cmake -DCMAKE_BUILD_TYPE=MinSizeRel -DCMAKE_INSTALL_PREFIX=$P -DCMAKE_INSTALL_LIBDIR=lib"
# <<< toolchain

# debsrc - make `apt-get source` work: add a deb-src entry beside each
# Debian deb entry (deb822 .sources files, as Debian 12 installs, or the
# classic one-line sources.list), once, then refresh the index.
debsrc() {
	apt-cache showsrc bearssl 2>/dev/null | grep -q '^Package:' && return 0
	local sudo=() f
	[ "$(id -u)" -ne 0 ] && sudo=(sudo)
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -f "$f" ] && grep -q '^Types:.*\bdeb\b' "$f" && grep -q 'debian' "$f" || continue
		case "$f" in *perimd-deb-src*) continue ;; esac
		# Only Debian stanzas: blank-line separated, keep those naming debian.
		awk 'BEGIN { RS = ""; ORS = "\n\n" } /debian/ && /Types:[^\n]*deb/ {
			sub(/Types:[^\n]*/, "Types: deb-src"); print }' "$f"
	done | "${sudo[@]}" tee /etc/apt/sources.list.d/perimd-deb-src.sources >/dev/null
	if [ -f /etc/apt/sources.list ]; then
		sed -n 's/^deb \(.*debian.*\)/deb-src \1/p' /etc/apt/sources.list |
			"${sudo[@]}" tee /etc/apt/sources.list.d/perimd-deb-src.list >/dev/null
	fi
	echo "static: added deb-src entries (/etc/apt/sources.list.d/perimd-deb-src.*)"
	"${sudo[@]}" apt-get update -q >/dev/null
}
debsrc

export P J CFL CM SRC WORK HERE
export -f fetch unpack pin

# lib NAME - build one library unless its stamp is there.
lib() {
	local name=$1
	[ -f "$P/.stamp-$name" ] && return 0
	step "$name" bash -c "set -euo pipefail; d=\$(unpack $name); cd \"\$d\"; source \"$HERE/recipes/$name.sh\"; build"
	rm -rf "${WORK:?}/$name"
	touch "$P/.stamp-$name"
}

# Dependency builds for other pins or recipes are stale: drop them.
for d in "$PERIMD_STATIC_CACHE"/deps-*; do
	[ "$d" = "$P" ] || rm -rf "$d"
done

BASE="bearssl c-ares sqlite3 zlib mariadb openssl openldap"
CLAM="bzip2 pcre2 libxml2 json-c libmspack clamav"
for l in $BASE; do lib "$l"; done
if [ "$VARIANT" = full ]; then
	command -v cargo >/dev/null || { echo "static: libclamav needs Rust (cargo); try ./build.sh static noclamav" >&2; exit 1; }
	for l in $CLAM; do lib "$l"; done
fi
TD=$(date +%s)

# Link perimd: the Makefile's static mode with the musl compiler and this
# prefix. -lclamav and -lmariadb resolve to linker scripts the recipes
# install (libclamav.a, libmariadb.a), which pull in their own dependencies
# in the right order.
OUT=$TOP/build/static
MK=(MODE=static CC="gcc -specs=$P/musl-spie.specs"
    EXTRA_CFLAGS="-I$P/include -I$P/include/mariadb -I$P/kinc"
    EXTRA_LDFLAGS="-static-pie -L$P/lib -Wl,--gc-sections")
if [ "$VARIANT" = noclamav ]; then
	OUT=$TOP/build/static-noclamav
	MK+=(NO_CLAMAV=1)
else
	# libclamav's Rust part unwinds through Debian's libgcc_eh, which
	# needs the frame header and these pthread symbols kept.
	MK+=(EXTRA_LIBS="-Wl,--eh-frame-hdr -Wl,-u,pthread_once -Wl,-u,pthread_mutex_lock -Wl,-u,pthread_mutex_unlock -Wl,-u,pthread_key_create -Wl,-u,pthread_getspecific -Wl,-u,pthread_setspecific")
fi
# pkg-config must not answer with the host's (glibc) Connector/C.
export PKG_CONFIG_LIBDIR=$P/mariadb/lib/pkgconfig PKG_CONFIG_PATH=
step "perimd-$VARIANT" make -C "$TOP/perimd" -j"$J" BUILD="$OUT" "${MK[@]}" "$OUT/perimd"
strip "$OUT/perimd"
info=$(file -b "$OUT/perimd")
case "$info" in
*"interpreter"* | *"dynamically linked"*)
	echo "static: $OUT/perimd is not static: $info" >&2; exit 1 ;;
esac
echo "static: $OUT/perimd: $(stat -c %s "$OUT/perimd") bytes; $info"
echo "static: dependencies $((TD - T0)) s, link $(($(date +%s) - TD)) s (cache $P)"
