#!/usr/bin/env bash
# tests/loadtest.sh - load test a perimd configuration before production:
# Postfix's smtp-source drives perimd (your configuration file), perimd
# relays to Postfix's smtp-sink, concurrency ramps up step by step, and a
# capacity report is printed. Everything runs on 127.0.0.1; nothing is sent
# to your real backends.
#
#   tests/loadtest.sh [-c /etc/perimd/perimd.conf] [-b PERIMD_BINARY]
#
# perimd runs with your file plus these overrides (so the test neither binds
# your ports nor touches your state): smtpd_listen, relay_backends (the
# sink), stats_listen, data_directory, body_spool_directory (a scratch
# directory), max_sessions (at least the largest step) and, unless
# LOADTEST_CHECKS=keep, the checks that would refuse test mail turned off:
# relay_domains = loadtest.test, no recipient maps, no greylisting, no
# sender-domain DNS, no per-client limit (every session comes from
# 127.0.0.1). Virus scanning, DNSBL and the rest stay as you configured them,
# so the figures include them. With LOADTEST_CHECKS=keep, set LOADTEST_RCPT
# and LOADTEST_FROM to addresses your rules accept. With an ldap: map
# kept this way, each step also prints the directory's share: LDAP
# searches per second, their p50/p99 (perimd's histogram) and errors; give
# the map's .cf cache_ttl = 0 and negative_cache_ttl = 0 (a copy of it) to
# see the directory's worst case rather than perimd's cache.
#
# Knobs (environment):
#   STEPS="1 10 50 100 200 500 1000"  concurrent sessions per step
#   STEP_MSGS=2000        messages per step (at least 2 per session)
#   SIZE=4096             message size in bytes (smtp-source -l)
#   RCPTS=1               recipients per message (smtp-source -r)
#   REUSE=0               1: several messages per connection (smtp-source -d)
#   STEP_TIMEOUT=600      seconds per step
#   STOP_DROP=0.7         stop ramping once throughput falls below this
#                         fraction of the best step so far
# Output, one line per step: sessions, messages/s, messages relayed and
# refused (perimd's counters), p50/p99 latency from the final dot
# to perimd's reply (perimd's own histogram, bucket bounds), perimd CPU per
# message, RSS; then the capacity: the best step, and the point where
# throughput stopped growing. The machine running this also runs
# smtp-source and smtp-sink: on a production-sized box the real figures are
# higher; run it on the hardware you will deploy on.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH=$PATH:/usr/sbin:/sbin
CONF=/etc/perimd/perimd.conf
PERIMD=${PERIMD:-$ROOT/build/dev/perimd}
while getopts "c:b:h" o; do
	case $o in
	c) CONF=$OPTARG ;;
	b) PERIMD=$OPTARG ;;
	*) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 2 ;;
	esac
done
STEPS=${STEPS:-"1 10 50 100 200 500 1000"}
STEP_MSGS=${STEP_MSGS:-2000}
SIZE=${SIZE:-4096}
RCPTS=${RCPTS:-1}
REUSE=${REUSE:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-600}
STOP_DROP=${STOP_DROP:-0.7}
CHECKS=${LOADTEST_CHECKS:-off}
PY=/usr/bin/python3
TICK=$(getconf CLK_TCK)

for t in smtp-source smtp-sink; do
	command -v "$t" >/dev/null || { echo "loadtest: $t missing (Debian package postfix)" >&2; exit 1; }
done
[ -x "$PERIMD" ] || { echo "loadtest: $PERIMD missing (./build.sh builds it)" >&2; exit 1; }
[ -r "$CONF" ] || { echo "loadtest: cannot read $CONF (-c FILE)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/perimd-loadtest.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_banner() {
	"$PY" - "$1" <<'EOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if s.makefile("rb").readline().startswith(b"220 "):
                s.sendall(b"QUIT\r\n")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit("no greeting on port %d" % port)
EOF
}
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }
fdiv() { awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN { if (b + 0 == 0) print "NA"; else printf f, a / b }'; }

max_step=0
for s in $STEPS; do [ "$s" -gt "$max_step" ] && max_step=$s; done
ulimit -n $((max_step * 2 + 2048)) 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null

SINK_PORT=$(free_port)
user=()
[ "$(id -u)" -eq 0 ] && user=(-u nobody)
smtp-sink "${user[@]}" -m $((max_step + 100)) "127.0.0.1:$SINK_PORT" 4096 >"$WORK/sink.log" 2>&1 &
PIDS+=("$!")
wait_banner "$SINK_PORT" || exit 1

PORT=$(free_port)
STATS=$(free_port)
mkdir -p "$WORK/lib" "$WORK/spool"
ov=(-o "smtpd_listen=127.0.0.1:$PORT" -o "relay_backends=[127.0.0.1]:$SINK_PORT"
	-o "stats_listen=127.0.0.1:$STATS" -o "data_directory=$WORK/lib"
	-o "body_spool_directory=$WORK/spool" -o "log_to=stderr")
cur_max=$("$PERIMD" -n -c "$CONF" 2>/dev/null | sed -n 's/^max_sessions *= *//p')
[ "${cur_max:-512}" -lt "$max_step" ] && ov+=(-o "max_sessions=$((max_step + 10))")
[ "$(id -u)" -eq 0 ] && ov+=(-o "mail_owner=$(id -un)")
RCPT=${LOADTEST_RCPT:-user@loadtest.test}
FROM=${LOADTEST_FROM:-loadtest@client.loadtest.test}
if [ "$CHECKS" != keep ]; then
	params=$("$PERIMD" -d 2>/dev/null)
	has() { grep -Eq "^$1 *=" <<<"$params"; }
	ov+=(-o "relay_domains=loadtest.test" -o "smtpd_client_connection_count_limit=0")
	for kv in greylist=no reject_unknown_sender_domain=no relay_recipient_maps= \
		recipient_access_maps= sender_access_maps= client_access_maps= \
		relay_recipient_verify=no smtpd_client_connection_rate_limit=0 transport_maps=; do
		has "${kv%%=*}" && ov+=(-o "$kv")
	done
fi
"$PERIMD" -t -c "$CONF" "${ov[@]}" || { echo "loadtest: configuration refused (above)" >&2; exit 1; }
"$PERIMD" -f -c "$CONF" "${ov[@]}" >"$WORK/perimd.log" 2>&1 &
PID=$!
PIDS+=("$PID")
wait_banner "$PORT" || { tail -20 "$WORK/perimd.log" >&2; exit 1; }

# metrics WHAT - from perimd's /metrics: "hist" = the end-of-data latency
# histogram as "bound count" lines; "relayed" = messages a backend took.
metrics() {
	"$PY" - "$STATS" "$1" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
data = b""
while True:
    c = s.recv(65536)
    if not c:
        break
    data += c
for line in data.decode().splitlines():
    if sys.argv[2] == "hist" and line.startswith('perimd_message_latency_seconds_bucket{le="'):
        print(line.split('"')[1], line.rsplit(" ", 1)[1])
    elif sys.argv[2] == "relayed" and line.startswith("perimd_messages_relayed_total "):
        print(line.split()[1])
    elif sys.argv[2] == "ldaphist" and line.startswith('perimd_ldap_lookup_seconds_bucket{le="'):
        print(line.split('"')[1], line.rsplit(" ", 1)[1])
    elif sys.argv[2] == "ldaperr" and line.startswith('perimd_ldap_lookups_total{result="error"}'):
        print(line.split()[1])
EOF
}
latency_hist() { metrics hist; }
relayed() { metrics relayed; }
# quantiles BEFORE AFTER - p50 and p99 (ms, bucket upper bounds) of the difference.
quantiles() {
	"$PY" - "$1" "$2" <<'EOF'
import sys
def load(p):
    return [(float(a) if a != "+Inf" else float("inf"), int(b))
            for a, b in (l.split() for l in open(p) if l.strip())]
b, a = load(sys.argv[1]), load(sys.argv[2])
d = [(le, y - x) for (le, x), (_, y) in zip(b, a)]
n = d[-1][1] if d else 0
def q(f):
    for le, c in d:
        if c >= f * n:
            return "<=%gms" % (le * 1000) if le != float("inf") else ">max"
    return "NA"
print(q(0.5), q(0.99)) if n else print("NA NA")
EOF
}

echo "perimd load test: $CONF, $(nproc) CPUs, $($PERIMD -V 2>/dev/null | head -1)"
echo "steps: $STEPS sessions; $STEP_MSGS messages of $SIZE bytes, $RCPTS recipient(s) each; checks: $CHECKS"
printf '%-9s %9s %8s %8s %10s %10s %11s %9s\n' sessions msgs/s relayed refused p50 p99 cpu_ms/msg rss_MB
best=0 best_at=0 knee=
opts=(-s 1 -m 1 -l "$SIZE" -r "$RCPTS" -f "$FROM" -t "$RCPT" -M loadtest.client.test)
[ "$REUSE" = 1 ] && opts+=(-d)
for step in $STEPS; do
	msgs=$STEP_MSGS
	[ "$msgs" -lt $((step * 2)) ] && msgs=$((step * 2))
	opts[1]=$step
	opts[3]=$msgs
	latency_hist >"$WORK/h0"
	metrics ldaphist >"$WORK/l0"
	le0=$(metrics ldaperr)
	c0=$(cpu_ticks "$PID")
	t0=$EPOCHREALTIME
	rel0=$(relayed)
	timeout -k 5 "$STEP_TIMEOUT" smtp-source -A -c "${opts[@]}" "127.0.0.1:$PORT" \
		>"$WORK/src.out" 2>"$WORK/src.err" </dev/null
	rc=$?
	t1=$EPOCHREALTIME
	c1=$(cpu_ticks "$PID")
	latency_hist >"$WORK/h1"
	metrics ldaphist >"$WORK/l1"
	le1=$(metrics ldaperr)
	el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
	mps=$(fdiv "$msgs" "$el" %.0f)
	rel=$(($(relayed) - rel0))
	read -r p50 p99 <<<"$(quantiles "$WORK/h0" "$WORK/h1")"
	printf '%-9s %9s %8s %8s %10s %10s %11s %9s\n' "$step" "$mps" "$rel" "$((msgs - rel))" "$p50" "$p99" \
		"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.3f)" "$(fdiv "$(rss_kb "$PID")" 1024 %.1f)"
	# The directory's share, when ldap: maps searched during the step.
	ln=$(($(awk 'END { print $2 + 0 }' "$WORK/l1") - $(awk 'END { print $2 + 0 }' "$WORK/l0")))
	if [ "$ln" -gt 0 ]; then
		read -r l50 l99 <<<"$(quantiles "$WORK/l0" "$WORK/l1")"
		echo "  ldap: $(fdiv "$ln" "$el" %.0f) searches/s, p50 $l50, p99 $l99, $((${le1:-0} - ${le0:-0})) errors"
	fi
	if [ "$rc" -ne 0 ]; then
		echo "  smtp-source ended with status $rc: $(tail -1 "$WORK/src.err")"
		break
	fi
	if [ "$mps" != NA ] && [ "$mps" -gt "$best" ]; then
		best=$mps best_at=$step
	elif [ -z "$knee" ] && [ "$mps" != NA ]; then
		knee=$step
	fi
	if [ "$mps" != NA ] && awk -v m="$mps" -v b="$best" -v f="$STOP_DROP" 'BEGIN { exit !(m < b * f) }'; then
		echo "  throughput fell below ${STOP_DROP} of the best: stopping the ramp"
		break
	fi
done
echo "capacity: $best messages/s at $best_at concurrent sessions${knee:+; no gain beyond $best_at (first flat or lower step: $knee)}"
echo "msgs/s counts every message answered; refused = answered without a backend's 250 (your checks, or overload: see perimd's log)"
warn=$(grep -c 'warning' "$WORK/perimd.log" || true)
[ "$warn" -gt 0 ] && { echo "perimd warnings ($warn):"; grep 'warning' "$WORK/perimd.log" | sort | uniq -c | sort -rn | head -5; }
exit 0
