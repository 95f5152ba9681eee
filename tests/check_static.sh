#!/usr/bin/env bash
# tests/check_static.sh - the static musl binary without libclamav
# (./build.sh static noclamav) is really static and runs alone: in an empty
# chroot (no /etc, /dev, /proc, /tmp) it prints its features, passes -t,
# drops to a numeric mail_owner (no /etc/passwd there), checks recipients
# with an ldap: map against a slapd on the host's loopback and relays a
# message to a sink there (the chroot shares the network namespace); as PID 1 of its own PID namespace, SIGTERM still stops it.
#
# The dependency build is cached (vendor/static.sh, keyed by vendor/):
# ./build.sh test builds it first, so this normally only relinks. Needs
# root (chroot, unshare; mount propagation left unchanged, as inside
# check-fresh's own chroot / is no mount point); elsewhere it says why and fails.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH=$PATH:/usr/sbin:/sbin
BIN=$ROOT/build/static-noclamav/perimd
T=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill -TERM "$p" 2>/dev/null && { timeout 10 tail --pid="$p" -f /dev/null || kill -KILL "$p"; }
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "check_static: FAIL: $*"; [ -f "$T/perimd.log" ] && tail -20 "$T/perimd.log"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root for chroot/unshare"
t0=$(date +%s)
if ! timeout -k 5 280 bash vendor/static.sh noclamav >"$T/build.log" 2>&1; then
	tail -30 "$T/build.log"
	fail "./build.sh static noclamav failed"
fi
echo "check_static: static build (cached deps) $(($(date +%s) - t0)) s"
grep '^static: .*bytes' "$T/build.log" || true

# 1. Static: no interpreter, no dynamic section.
info=$(file -b "$BIN")
case "$info" in
*"static-pie linked"* | *"statically linked"*) ;;
*) fail "not static: $info" ;;
esac
case "$info" in *interpreter*) fail "has an interpreter: $info" ;; esac
! readelf -l "$BIN" | grep -q INTERP || fail "PT_INTERP present"
! readelf -d "$BIN" 2>/dev/null | grep -q NEEDED || fail "NEEDED libraries present"

# 2. An empty root: only the binary and its config.
R=$T/root
mkdir -p "$R"
cp "$BIN" "$R/perimd"
v=$(timeout 20 unshare -m --propagation unchanged -p -f chroot "$R" /perimd -V) || fail "-V in the empty chroot"
grep -q '^build: static' <<<"$v" || fail "-V does not say static: $v"
grep -q '^libclamav: not built in' <<<"$v" || fail "-V does not say libclamav is absent: $v"
grep -q '^features:.* clamd' <<<"$v" || fail "-V features: $v"
# libldap is in (vendor/recipes/openldap.sh, TLS through OpenSSL).
grep -q '^libldap 2\.[0-9]*\.[0-9]* (OpenLDAP; ldap: maps, ldaps:// and StartTLS)' <<<"$v" ||
	fail "-V does not list libldap: $v"
grep -q '^features:.* ldap' <<<"$v" || fail "-V features without ldap: $v"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
SINK=$(free_port)
LDAP=$(free_port)

# A directory on the host's loopback: relay_recipient_maps = ldap: inside
# the chroot (no /etc/ldap, no /etc/hosts) lists b@example.com only.
mkdir -p "$T/slapd/db"
{
	for s in core cosine inetorgperson; do echo "include /etc/ldap/schema/$s.schema"; done
	echo "modulepath /usr/lib/ldap"
	echo "moduleload back_mdb"
	echo "database mdb"
	echo "suffix \"dc=example,dc=com\""
	echo "directory $T/slapd/db"
	echo "access to * by * read"
} >"$T/slapd/slapd.conf"
{
	printf 'dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\no: E\ndc: example\n\n'
	printf 'dn: uid=b,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: b\ncn: b\nsn: b\nmail: b@example.com\n'
} >"$T/slapd/users.ldif"
slapadd -q -f "$T/slapd/slapd.conf" -l "$T/slapd/users.ldif" >"$T/slapd/slapadd.log" 2>&1 ||
	fail "slapadd: $(cat "$T/slapd/slapadd.log")"
slapd -d 0 -f "$T/slapd/slapd.conf" -h "ldap://127.0.0.1:$LDAP/" >"$T/slapd/slapd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$LDAP") 2>/dev/null && break; sleep 0.1; done
{
	echo "server_host = ldap://127.0.0.1:$LDAP"
	echo "search_base = dc=example,dc=com"
	echo "query_filter = (mail=%s)"
	echo "result_attribute = mail"
	echo "bind = no"
} >"$R/ldap.cf"
mkdir -p "$T/sink"
chmod 711 "$T"   # smtp-sink runs as nobody
chown nobody "$T/sink"
smtp-sink -u nobody -d "$T/sink/%M." 127.0.0.1:"$SINK" 100 >"$T/sink.log" 2>&1 &
pids+=($!)

cat >"$R/perimd.conf" <<EOF
smtpd_listen = 127.0.0.1:$PORT
myhostname = static.test
io_threads = 1
relay_domains = example.com
relay_backends = 127.0.0.1:$SINK
data_directory = /var/lib/perimd
body_spool_directory = /spool
body_memory_limit = 0
mail_owner = 65534:65534
log_to = stderr
stats_listen =
greylist = no
reject_unknown_sender_domain = no
shutdown_timeout = 2s
relay_recipient_maps = ldap:/ldap.cf
EOF
timeout 20 unshare -m --propagation unchanged -p -f chroot "$R" /perimd -t -c /perimd.conf || fail "-t in the chroot"
if timeout 20 unshare -m --propagation unchanged -p -f chroot "$R" /perimd -t -c /perimd.conf -o av_scanner=libclamav 2>"$T/t.err"; then
	fail "-t accepted av_scanner = libclamav in a build without it"
fi
grep -q 'built without libclamav' "$T/t.err" || fail "no clear error for libclamav: $(cat "$T/t.err")"

# 3. Run it (PID 1 of a new PID namespace) and relay one message.
unshare -m --propagation unchanged -p -f chroot "$R" /perimd -f -c /perimd.conf >"$T/perimd.log" 2>&1 &
upid=$!
pids+=($upid)
for _ in $(seq 100); do
	grep -q 'started' "$T/perimd.log" && break
	kill -0 $upid 2>/dev/null || fail "perimd exited"
	sleep 0.1
done
grep -q 'started' "$T/perimd.log" || fail "perimd did not start"
ppid=$(pgrep -P $upid | head -1)
[ -n "$ppid" ] || fail "no perimd under unshare"
grep -q 'running as 65534' "$T/perimd.log" || fail "no privilege drop to uid 65534"
uid=$(awk '/^Uid:/ { print $2 }' /proc/"$ppid"/status)
[ "$uid" = 65534 ] || fail "perimd runs as uid $uid"
[ -d "$R/var/lib/perimd" ] || fail "data_directory not created in the chroot"

marker="static-$$-$RANDOM"
timeout 30 swaks --server 127.0.0.1 --port "$PORT" --from a@client.test --to b@example.com \
	--helo client.test --header "Subject: $marker" --body "body $marker" >"$T/swaks.log" 2>&1 ||
	{ cat "$T/swaks.log"; fail "swaks through the chrooted perimd"; }
grep -q '^<-  250 .*queued as' "$T/swaks.log" || fail "no 250 for the message"
# A recipient the directory does not list: 550 (the lookup answered).
timeout 30 swaks --server 127.0.0.1 --port "$PORT" --from a@client.test --to nobody@example.com \
	--helo client.test --quit-after RCPT >"$T/swaks2.log" 2>&1 || true # swaks exits 24 on the 550
grep -q '^<\*\* 550 5\.1\.1 <nobody@example.com>: recipient unknown' "$T/swaks2.log" ||
	{ cat "$T/swaks2.log"; fail "no 550 from the ldap: map for an unlisted recipient"; }
n=0
for _ in $(seq 50); do
	n=$(grep -l "$marker" "$T/sink"/* 2>/dev/null | wc -l)
	[ "$n" -ge 1 ] && break
	sleep 0.1
done
[ "$n" = 1 ] || fail "the sink has $n copies of the message"

# 4. SIGTERM to PID 1 of the namespace: drains and exits.
kill -TERM "$ppid"
for _ in $(seq 100); do kill -0 $upid 2>/dev/null || break; sleep 0.1; done
kill -0 $upid 2>/dev/null && fail "perimd (PID 1 in its namespace) ignored SIGTERM"
grep -q 'stopped' "$T/perimd.log" || fail "no clean stop"
echo "check_static: ok ($(stat -c %s "$BIN") bytes, $(($(date +%s) - t0)) s)"
