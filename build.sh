#!/usr/bin/env bash
# build.sh - build, test, run and benchmark perimd on Debian 12.
#
#   ./build.sh            install missing build/test packages, dev build (build/dev/perimd)
#   ./build.sh test       ASan+UBSan build (build/test/), then every test (tests/run.sh)
#   ./build.sh run        dev build, then perimd in the foreground (conf/perimd.conf)
#   ./build.sh bench      throughput and memory figures (tests/bench.sh; never run by tests)
#   ./build.sh bench peers   also run ../shared/bench/peer-bench.sh with perimd, if present
#   ./build.sh bench peers-features   the same, at 100 sessions: direct, Postfix, perimd with
#                         greylisting (all passed) and ClamAV (test signatures) off and on
#   ./build.sh bench peers-av   direct, Postfix, Postfix + clamav-milter + clamd, perimd
#                         plain, with libclamav and with the same clamd (test signatures)
#   ./build.sh bench latency   client-side latency (final dot -> reply, p50/p99) and
#                         messages/s of direct, Postfix, Haraka and perimd (tests/bench_latency.py)
#   ./build.sh static     fully static musl binary from Debian sources (vendor/):
#                         build/static/perimd; `static noclamav`: without libclamav
#                         (clamd mode), build/static-noclamav/perimd
#   ./build.sh clean      remove build/
#
# Packages are installed only when missing (dpkg-query), so a prepared machine
# never touches the network. Needs root (or sudo) the first time only.
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)

# Build: compilers, sanitizer runtimes, libraries perimd links. Tests: the
# real peers (Postfix's smtp-source/smtp-sink, swaks, clamd, openssl) and
# pytest with Debian's python3.
DEPS=(build-essential clang libclang-rt-14-dev mandoc pkg-config
      libsqlite3-dev libc-ares-dev libbearssl-dev libclamav-dev
      postfix swaks clamav-daemon openssl python3-aiosmtpd python3-pytest dnsmasq-base
      mariadb-server libmariadb-dev)
# Static build (vendor/static.sh): musl, the source unpacker and the build
# tools of the vendored libraries. Deployment tests: HAProxy (PROXY
# protocol), podman and runc (the FROM-scratch image).
DEPS+=(musl-tools cmake ninja-build tcl dpkg-dev haproxy podman runc)
# Style checks (tests/check_style.sh).
DEPS+=(clang-format cppcheck)

# deps - install the Debian packages that are not installed yet.
deps() {
	local missing=() p
	for p in "${DEPS[@]}"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
			grep -q 'install ok installed'; then
			missing+=("$p")
		fi
	done
	[ ${#missing[@]} -eq 0 ] && return 0

	echo "build.sh: installing ${missing[*]}"
	local sudo=()
	[ "$(id -u)" -ne 0 ] && sudo=(sudo)
	# Postfix asks which mail setup to create; we only want its tools
	# (smtp-source, smtp-sink), so no configuration and no service.
	echo "postfix postfix/main_mailer_type select No configuration" |
		"${sudo[@]}" debconf-set-selections
	# clamav-daemon is only a test peer (tests start their own clamd):
	# policy-rc.d keeps apt from starting a system clamd or freshclam.
	local prc=/usr/sbin/policy-rc.d made_prc=
	if [ ! -e "$prc" ]; then
		printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$prc" >/dev/null
		"${sudo[@]}" chmod 755 "$prc"
		made_prc=1
	fi
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
	[ -z "$made_prc" ] || "${sudo[@]}" rm -f "$prc"
}

ncpu() { nproc 2>/dev/null || echo 2; }

build_dev() { make -C perimd -j"$(ncpu)"; }
build_test() { make -C perimd MODE=test -j"$(ncpu)"; }

cmd=${1:-}
case "$cmd" in
"")
	deps
	build_dev
	;;
test)
	deps
	# A build that fails is one failed test, so the output still ends
	# with the summary line CI reads.
	if ! build_test; then
		echo "FAIL build (make -C perimd MODE=test)"
		echo "0 passed, 1 failed"
		exit 1
	fi
	# tests/check_static.sh needs the static noclamav binary: its musl
	# dependency build takes minutes the first time (then it is cached,
	# vendor/static.sh), longer than one check may run. A failure here
	# shows as check_static.sh failing.
	s=$(date +%s)
	if bash vendor/static.sh noclamav >build/static-noclamav.log 2>&1; then
		echo "static noclamav build: $(($(date +%s) - s)) s"
	else
		echo "static noclamav build failed (build/static-noclamav.log)"
	fi
	exec bash tests/run.sh
	;;
run)
	deps
	build_dev
	mkdir -p var/lib var/spool
	args=()
	if [ "$(id -u)" -eq 0 ]; then
		# perimd drops root for mail_owner (default: perimd) after binding.
		id perimd >/dev/null 2>&1 ||
			useradd --system --no-create-home --home-dir /nonexistent \
				--shell /usr/sbin/nologin perimd
		# A checkout the perimd user cannot reach (under /root, say):
		# keep root for this development run, and say so.
		if ! runuser -u perimd -- test -x "$ROOT/var" 2>/dev/null; then
			echo "build.sh: $ROOT/var is not reachable by user perimd; running as root" >&2
			args=(-o mail_owner=root)
		fi
	fi
	exec build/dev/perimd -f -c conf/perimd.conf "${args[@]}"
	;;
bench)
	deps
	build_dev
	shift
	exec bash tests/bench.sh "$@"
	;;
static)
	deps
	shift
	exec bash vendor/static.sh "$@"
	;;
clean)
	rm -rf "$ROOT/build"
	;;
*)
	echo "usage: $0 [test|run|bench [peers|peers-features]|static [noclamav]|clean]" >&2
	exit 2
	;;
esac
