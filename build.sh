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
#   ./build.sh bench ldap   relay_recipient_maps over LDAP: Postfix proxy:ldap: vs perimd ldap:,
#                         same slapd, 100 sessions, a recipient of its own per message
#   ./build.sh bench latency   client-side latency (final dot -> reply, p50/p99) and
#                         messages/s of direct, Postfix, Postfix with smtpd_proxy_filter to the
#                         sink (private instance), Haraka and perimd (tests/bench_latency.py)
#   ./build.sh bench seed   the seed's stack (private Postfix + smtpd_proxy_filter to amavisd-new
#                         + clamd, postgrey) beside perimd with greylisting and libclamav
#   ./build.sh bench cap    perimd vs direct at 512 sessions, per-backend connection limits
#   ./build.sh bench ab OLD NEW   two git revisions built and run alternately on the same
#                         load: msg/s and CPU ms/msg ratios NEW/OLD at 512 B and 100 KB
#   ./build.sh static     fully static musl binary from Debian sources (vendor/):
#                         build/static/perimd; `static noclamav`: without libclamav
#                         (clamd mode), build/static-noclamav/perimd
#   ./build.sh check-fresh  the README's test command in a fresh minbase Debian root
#                         (debootstrap chroot, a clean clone of HEAD, nothing else):
#                         proves build.sh installs everything the tests use. About
#                         twice the suite's time; not part of `test`
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
      mariadb-server libmariadb-dev libldap-dev slapd ldap-utils)
# Static build (vendor/static.sh): musl, the source unpacker and the build
# tools of the vendored libraries. Deployment tests: HAProxy (PROXY
# protocol), podman and runc (the FROM-scratch image).
DEPS+=(musl-tools cmake ninja-build tcl dpkg-dev file haproxy podman runc)
# Operations files (tests/integration/test_packaging.py): systemd-analyze,
# setpriv (util-linux), docker-compose (compose file), a real Prometheus and
# promtool, fail2ban-regex; swaks' STARTTLS needs Net::SSLeay.
DEPS+=(systemd util-linux docker-compose python3-yaml prometheus fail2ban libnet-ssleay-perl)
# Style checks (tests/check_style.sh).
DEPS+=(clang-format cppcheck)
# The fleet on MariaDB Galera (tests/integration/test_galera.py): the provider
# and the rsync state transfer of a joining node (its script uses ss).
DEPS+=(galera-4 rsync iproute2)
# The fleet's store against its peers (tests/bench_fleet.py): sqlgrey on MariaDB
# through DBD::mysql (postgrey: below).
DEPS+=(sqlgrey libdbd-mysql-perl)
# tests/run.sh: a per-test time bound (pytest --timeout).
DEPS+=(python3-pytest-timeout)
# Policy services (tests/integration/test_policy_services.py): postgrey, policyd-spf and socat to serve it;
# python3-dnspython by name: python3-spf depends on "python3-dns | python3-dnspython", apt takes
# python3-dns, and the test points dnspython's resolver at its dnsmasq (found by check-fresh).
DEPS+=(postgrey postfix-policyd-spf-python python3-dnspython socat)
# The migration guide's Postfix side (tests/integration/test_migration.py).
DEPS+=(clamav-milter)
# test_milter.py: real milters (rspamd proxy worker, opendkim sign/verify, clamav-milter with clamd)
DEPS+=(rspamd opendkim opendkim-tools clamav-milter)
# tests/bench_seed.py (./build.sh bench seed): the seed stack beside perimd
DEPS+=(amavisd-new clamav-daemon postgrey postfix)
# tests/bench.sh ldap: the peer, Postfix with proxy:ldap: (slapd is above).
DEPS+=(postfix-ldap)
# test_logs.py: the README's claim about pflogsumm, checked with Debian's.
DEPS+=(pflogsumm)
# test_dns_hostile.py: the hostile DNS server (dnspython builds its answers).
DEPS+=(python3-dnspython)

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

# check_fresh - run `./build.sh test` from a clean clone of HEAD in a new
# debootstrap --variant=minbase root of this machine's Debian release and
# mirror, with /proc, /sys and /dev from the host (the tests' network is the
# host's loopback). Everything the build and the tests call must then come
# from build.sh's own DEPS. Exit status: the suite's.
check_fresh() {
	[ "$(id -u)" -eq 0 ] || { echo "check-fresh: needs root (debootstrap, chroot)" >&2; exit 2; }
	local saved=("${DEPS[@]}")
	DEPS=(debootstrap git)
	deps
	DEPS=("${saved[@]}")
	local suite mirror root rc=0
	suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
	mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null)
	[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
	[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
	root=$(mktemp -d /var/tmp/perimd-fresh.XXXXXX)
	# mktemp makes it 0700; as the chroot's / it must be 0755, or the
	# unprivileged users the tests run (nobody for smtp-sink, mail_owner)
	# cannot reach /tmp or anything else.
	chmod 755 "$root"
	# shellcheck disable=SC2064
	trap "fresh_cleanup '$root'" EXIT
	echo "check-fresh: debootstrap --variant=minbase $suite $root $mirror"
	debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.debootstrap.log" 2>&1 || {
		tail -n 20 "$root.debootstrap.log"; echo "check-fresh: debootstrap failed"; exit 1; }
	# The host's apt sources (the release's updates and security suites);
	# build.sh adds deb-src itself where the static build needs it.
	if [ -f /etc/apt/sources.list.d/debian.sources ]; then
		cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
		rm -f "$root/etc/apt/sources.list"
	fi
	cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
	# The root a mount point of its own, as / is on a real machine:
	# podman/runc and the tests' mount namespaces remount / and fail
	# in a chroot whose / is only a directory of the host's file system.
	mount --bind "$root" "$root"
	mount --make-private "$root"
	mount -t proc proc "$root/proc"
	mount --rbind /sys "$root/sys"
	mount --rbind /dev "$root/dev"
	git clone -q "$ROOT" "$root/src"
	# shared/ beside the work tree, as CI lays it (benchmarks read it).
	[ -d "$ROOT/../shared" ] && cp -r "$ROOT/../shared" "$root/shared"
	echo "check-fresh: ./build.sh test in the chroot (clone of $(git -C "$ROOT" rev-parse --short HEAD))"
	chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" PERIMD_CHROOT=1 \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		bash -c 'cd /src && ./build.sh test </dev/null' || rc=$?
	exit "$rc"
}

# fresh_cleanup ROOT - unmount what check_fresh mounted and remove the root.
fresh_cleanup() {
	local root=$1
	umount -R "$root" 2>/dev/null || umount -lR "$root" 2>/dev/null || true
	# Only remove once nothing is mounted on or below it any more.
	if ! grep -q " $root[/ ]" /proc/mounts; then
		rm -rf "$root" "$root.debootstrap.log"
	fi
}

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
check-fresh)
	check_fresh
	;;
clean)
	rm -rf "$ROOT/build"
	;;
*)
	echo "usage: $0 [test|run|bench [MODE]|static [noclamav]|check-fresh|clean]" >&2
	exit 2
	;;
esac
