#!/usr/bin/env bash
# tests/bench.sh - throughput and memory of perimd on loopback (./build.sh bench).
# Never run by the tests; no figure here is asserted anywhere.
#
#   tests/bench.sh          smtp-source -> smtp-sink directly, then
#                           smtp-source -> perimd (build/dev) -> smtp-sink, same run,
#                           for each of CONC sessions x SIZES bytes; then 512 idle sessions
#   tests/bench.sh av       virus scanning (av_scanner = libclamav, a test database):
#                           SMTP throughput at AV_CONC sessions with scanning off and on
#                           (same run), scan latency p50/p99 (end of DATA to verdict)
#                           and engine time per message, scan capacity (messages/s and
#                           MB/s over av_threads), scanner CPU per message, and the
#                           scanner process's memory (VmHWM, engine included)
#   tests/bench.sh sigdb    a signature database of real size (tests/gen_sigdb.py) at
#                           SIGDB_SCALES ("0.1"; "0.1 1" adds the full size): perimd's
#                           scanner (libclamav) against clamd on the same database, same
#                           run: load time, PSS, EICAR/clean check, msgs/s and CPU per
#                           message at SIGDB_SIZES x SIGDB_CONC (100) x SIGDB_MSGS (2000),
#                           SIGDB_REPS (3) alternating rounds (median, min-max), then a
#                           reload under load (av_reload_mode swap and inplace, clamd
#                           RELOAD): failed scans, load time, peak PSS (tests/bench_sigdb.py);
#                           SIGDB_AV_THREADS (0) sets perimd's av_threads
#   tests/bench.sh stats    counting on vs compiled out, same run; /metrics render
#                           time with STATS_IDLE (10000) sessions open
#   tests/bench.sh tls      STARTTLS handshakes/s (ECDSA P-256, RSA-2048) and perimd CPU
#                           per handshake, throughput at TLS_CONC sessions with and
#                           without STARTTLS (same run), RSS per idle session with and
#                           without TLS (clients: tests/bench_tls.py)
#   tests/bench.sh grey     greylisting: raw store decisions/s on SQLite (WAL) and on a
#                           private MariaDB (tests/bench_grey.c, one thread), SMTP
#                           throughput with greylisting on and every triplet passed vs
#                           off (same run)
#   tests/bench.sh maps     file: maps: load time of 1,000,000 recipients and lookups/s
#                           (tests/bench_maps.c), Postfix postmap hash: as a peer
#   tests/bench.sh ldap     relay_recipient_maps over LDAP: a private Postfix instance
#                           (proxy:ldap:, postfix-ldap) vs perimd (ldap:), the same
#                           slapd and .cf, same run, LDAP_CONC (100) sessions, LDAP_MSGS
#                           (3000) messages each to a listed recipient of its own:
#                           delivered msgs/s, slapd searches per message, slapd CPU
#   tests/bench.sh threads  io_threads = 1 vs 2 (THREADS_LIST) at THREADS_CONC (100 512)
#                           sessions: messages/s, CPU and futex calls per message, and
#                           a perf profile (lock symbols) of the run with most threads
#   tests/bench.sh abuse    throughput at ABUSE_CONC (100) sessions alone and beside
#                           hostile clients (tests/bench_abuse.py: slowloris, floods
#                           that never read, garbage), same run; CPU and RSS
#   tests/bench.sh ab OLD NEW  "no slowdown" between two git revisions: builds each one's
#                           dev binary in a temporary worktree (git worktree, removed at
#                           exit), starts both beside one smtp-sink and runs the same
#                           smtp-source load on each in turn, alternating which goes
#                           first, AB_REPS (5) rounds of AB_MSGS (2000) messages over
#                           AB_CONC (10) sessions for each of AB_SIZES ("512 102400");
#                           prints per size msg/s and perimd CPU ms/msg (all threads,
#                           from /proc/PID/task/*/schedstat) of each, summed over the
#                           rounds, and the ratios NEW/OLD (> 1 msg/s, < 1 CPU: NEW is
#                           better), with the spread of the per-round CPU ratios;
#                           AB_CACHE=DIR keeps the binaries (DIR/COMMIT/perimd) for reuse;
#                           AB_AV=1 scans with libclamav (the test database below), and
#                           the CPU then includes the scanner's processes; AB_SPOOL=shm puts
#                           both perimds' body_spool_directory (and so libclamav's
#                           temporary files) under /dev/shm as perimd's default does
#                           (default: the work directory, on disk); AB_MILTER=opendkim:
#                           both with smtpd_milters = one opendkim started here
#                           (verify mode, the client external, an Authentication-Results
#                           header added to each message, so perimd applies a change),
#                           AB_MILTER=inet:HOST:PORT: a milter already running; the
#                           milter's own CPU is not counted. smtp-source sends one
#                           message per session; SOURCE_OPTS=-d (any mode) sends a
#                           session's messages over one connection instead
#   tests/bench.sh peers    ../shared/bench/peer-bench.sh (Postfix, Haraka, direct and
#                           perimd side by side), when that script exists. NOTE: it
#                           rewrites /etc/postfix/main.cf and master.cf (see its header).
#   tests/bench.sh peers-features  the same script in one run: direct, Postfix, and perimd
#                           with greylisting (every triplet passed) and ClamAV (libclamav,
#                           a test database) each off and on; PF_CONC (100), PF_SIZES,
#                           PF_MSGS (2000); a table with ratios against direct and Postfix
#   tests/bench.sh peers-av the same script in one run, scanning peers on the same test
#                           database: direct, Postfix, Postfix + clamav-milter + clamd
#                           (smtpd_milters, OnInfected Reject), perimd plain, perimd
#                           av_scanner = libclamav and = clamd:SOCKET (same clamd config);
#                           PA_CONC (100), PA_SIZES ("512 102400"), PA_MSGS (2000). clamd,
#                           clamav-milter and perimd's scanner count into their system's
#                           CPU and PSS; EICAR must be refused by each scanning system
#                           before the runs. Needs clamav-daemon and clamav-milter; puts
#                           /etc/postfix/main.cf and master.cf back as found.
#   tests/bench.sh milter   the same rspamd milter (proxy worker, milter mode) behind Postfix
#                           (smtpd_milters) and behind perimd (smtpd_milters), MI_CONC (100)
#                           sessions x MI_SIZES ("512 102400"), MI_MSGS (1000): delivered
#                           msgs/s, each system's CPU per message and rspamd's beside it
#                           (PEER_BENCH: the peer script; puts /etc/postfix back as found)
#   tests/bench.sh latency  client-side latency in one run, the same script doing setup,
#                           the sink (counting every message) and the peers: direct,
#                           Postfix, Haraka (smtp_forward) and perimd (as in `peers`),
#                           driven by tests/bench_latency.py standing in for smtp-source;
#                           final dot -> reply and MAIL -> final reply p50/p99 in ms,
#                           delivered and accepted messages/s; LAT_CONC ("10 100")
#                           sessions x LAT_SIZES ("512 102400") bytes, LAT_MSGS (20000
#                           per row, so that p99 rests on 200 messages; shorter runs
#                           say so), LAT_WARMUP (100); LAT_SINGLE=1: one message per connection
#                           (default: each session reuses its connection); LAT_SYSTEMS
#                           (direct postfix haraka perimd); LAT_HARAKA_NODELAY=1: Haraka
#                           with TCP_NODELAY (preloaded module; Haraka 3 keeps Nagle on
#                           and waits ~40 ms per small relayed message, but with it off
#                           100 KB messages got slower). Puts /etc/postfix/main.cf and
#                           master.cf back as found (the peer script rewrites them).
#                           LAT_PERIMD_CONF="name = value; ...": more perimd settings.
#                           LAT_PERIMD_BASE=/path/perimd: another binary (an older
#                           revision), same settings, as "perimd-base" in the same run.
#                           LAT_RATE=R: at most R messages/s in all (bench_latency.py --rate),
#                           so every system carries the same load; default: closed loop.
#                           LAT_STREAM=1 (default, when the binary has relay_while_receiving)
#                           adds "perimd-stream": the same perimd with relay_while_receiving.
#                           LAT_PROXY=1 (default) adds a row "postfix-proxy": a private Postfix
#                           (own config and queue directories, loopback ports; /etc/postfix
#                           untouched) with smtpd_proxy_filter to a second private Postfix
#                           smtpd that relays to the same sink, so it answers after the
#                           next hop as perimd does (tests/bench_proxy.py)
#   tests/bench.sh overlap  relay_scan_overlap off vs on (issue 19), same run: perimd
#                           with av_scanner = libclamav (the test database) relaying to a
#                           sink that offers CHUNKING (tests/bench_chunk_sink.py; smtp-sink
#                           does not); final dot -> reply p50/p99 and msgs/s from
#                           tests/bench_latency.py; OV_CONC ("10"), OV_SIZES ("102400"),
#                           OV_MSGS (1000), OV_ROUNDS (2, alternating which goes first),
#                           OV_WARMUP (50); OV_CHUNKING=0: the sink without CHUNKING
#   tests/bench.sh cap      relay_destination_concurrency_limit at CAP_CONC (512) sessions
#                           of CAP_SIZE (512) bytes: direct vs perimd with each limit of
#                           CAP_LIST ("100 1000"), CAP_ROUNDS (2) alternating, CAP_MSGS
#                           (5000): msgs/s, ratio, CPU/msg, pool waits per message
#   tests/bench.sh seed     the seed's stack (tests/bench_seed.py): private Postfix with
#                           smtpd_proxy_filter to amavisd-new ($max_servers = 16, the
#                           proxied smtpd's process limit 16) scanning through clamd,
#                           postgrey as policy service (primed, --delay=1, no auto-whitelist:
#                           every triplet passed, every message looked up) beside perimd
#                           (greylisting, every triplet passed; libclamav), same test
#                           signatures, same run, EICAR refused by both first; SEED_CONC
#                           ("100 512") x SEED_SIZES ("512 102400"), SEED_MSGS (2000),
#                           SEED_WARMUP (100): delivered msgs/s, whole-system CPU per
#                           message (cgroup), peak PSS sum, client p50/p99, ratios;
#                           SEED_BODY=mime: multipart messages with a base64 attachment,
#                           each unique (default text: one text part, the same in each);
#                           SEED_PERIMD_SPOOL=shm: perimd's spool (and libclamav's
#                           temporary files) in /dev/shm as by default (default work: disk);
#                           SEED_PERIMD_BASE=/path/perimd: an older perimd binary beside it
#                           in the same run ("perimd-base"), with the ratios over it
#                           Needs root, postfix, amavisd-new, clamav-daemon, postgrey;
#                           changes nothing under /etc.
#
# Knobs (environment): MSGS=5000 CONC="10 100" SIZES="512 102400" WARMUP=200
#   PEER_BENCH=../shared/bench/peer-bench.sh (modes peers*, latency)
#   IDLE=512 MIXED=0 RUN_TIMEOUT=600 PERIMD=build/dev/perimd IO_THREADS=0 (perimd's default)
#   MIXED=N: while the IDLE sessions are held, smtp-source runs MIXED_MSGS (5000)
#   messages of 512 B over N more sessions (idle and active mixed: IDLE=9400
#   MIXED=500 is 9,900 at once under max_sessions = IDLE + MIXED + 100 = 10000,
#   the 100 for sessions still closing when smtp-source reconnects), then
#   every idle session must still answer NOOP
#
# Printed per run: messages/s direct and through perimd, their ratio,
# perimd's CPU seconds for the run (utime+stime from /proc/PID/stat) and per
# message, its peak RSS so far (VmHWM). Then the RSS growth per idle session
# (IDLE connections greeted and held open, VmRSS delta / IDLE).
# The machine is shared: compare ratios and CPU per message, not absolute rates.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export PATH=$PATH:/usr/sbin:/sbin

MSGS=${MSGS:-5000}
CONC=${CONC:-"10 100"}
SIZES=${SIZES:-"512 102400"}
WARMUP=${WARMUP:-200}
IDLE=${IDLE:-512}
MIXED=${MIXED:-0}
MIXED_MSGS=${MIXED_MSGS:-5000}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
PERIMD=${PERIMD:-$ROOT/build/dev/perimd}
IO_THREADS=${IO_THREADS:-0}
PY=/usr/bin/python3
# The peer script (modes peers*, latency): shared/ beside the tree, as CI lays it.
PEER_BENCH=${PEER_BENCH:-$ROOT/../shared/bench/peer-bench.sh}
TICK=$(getconf CLK_TCK)

# ab builds its own binaries.
[ "${1:-}" = ab ] || [ -x "$PERIMD" ] || { echo "bench: $PERIMD missing (run ./build.sh first)" >&2; exit 1; }
PARAMS=$("$PERIMD" -d 2>/dev/null || true)

WORK=$(mktemp -d /tmp/perimd-bench.XXXXXX)
PIDS=()

PF_SAVED=""
PA_DIR=""
AB_SHM_DIR=""

# restore_postfix_conf - put back /etc/postfix/main.cf and master.cf as a
# mode found them (the peer script rewrites both; postconf -e adds the
# milter), once.
restore_postfix_conf() {
	[ -n "$PF_SAVED" ] && [ -d "$PF_SAVED" ] || return 0
	local f
	for f in main.cf master.cf main.cf.pre-peer-bench master.cf.pre-peer-bench; do
		if [ -f "$PF_SAVED/$f" ]; then
			cp -p "$PF_SAVED/$f" /etc/postfix/
		elif [ -f "$PF_SAVED/$f.absent" ]; then
			rm -f "/etc/postfix/$f"
		fi
	done
	PF_SAVED=""
}

# save_postfix_conf DIR - keep /etc/postfix/main.cf and master.cf (and the
# peer script's one-time copies of them) in DIR for restore_postfix_conf,
# noting those that do not exist (removed again on restore).
save_postfix_conf() {
	PF_SAVED=$1
	mkdir -p "$PF_SAVED"
	local f
	for f in main.cf master.cf main.cf.pre-peer-bench master.cf.pre-peer-bench; do
		if [ -f "/etc/postfix/$f" ]; then
			cp -p "/etc/postfix/$f" "$PF_SAVED/"
		else
			: >"$PF_SAVED/$f.absent"
		fi
	done
}

AB_TREES=()

# cleanup - stop what this script started, by PID.
cleanup() {
	local p t
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	restore_postfix_conf
	for t in "${AB_TREES[@]}"; do git -C "$ROOT" worktree remove --force "$t" 2>/dev/null || true; done
	[ -n "$PA_DIR" ] && rm -rf "$PA_DIR"
	[ -n "$AB_SHM_DIR" ] && rm -rf "$AB_SHM_DIR"
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# has_param NAME - the binary knows parameter NAME (unknown names are errors).
has_param() { grep -Eq "^$1 *=" <<<"$PARAMS"; }

free_port() {
	"$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_banner PORT - until a connect gets "220 ", at most 10 s.
wait_banner() {
	"$PY" - "$1" <<'EOF'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if s.makefile("rb").readline().startswith(b"220 "):
                s.sendall(b"QUIT\r\n")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit("no greeting on port %d" % port)
EOF
}

# cpu_ticks PID - utime+stime of a process, in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# status_kb PID FIELD - a kB figure from /proc/PID/status (VmRSS, VmHWM).
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
now() { echo "$EPOCHREALTIME"; }
fdiv() { awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN { if (b + 0 == 0) print "NA"; else printf f, a / b }'; }

# start_sink - smtp-sink that counts nothing and keeps nothing.
start_sink() {
	SINK_PORT=$(free_port)
	local user=()
	[ "$(id -u)" -eq 0 ] && user=(-u nobody)
	smtp-sink "${user[@]}" -m 2000 "127.0.0.1:$SINK_PORT" 2000 >"$WORK/sink.log" 2>&1 &
	SINK_PID=$!
	PIDS+=("$SINK_PID")
	wait_banner "$SINK_PORT"
}

# start_perimd - the dev build relaying bench.test to the sink.
start_perimd() {
	PERIMD_PORT=$(free_port)
	local d=$WORK/perimd.$PERIMD_PORT
	mkdir -p "$d/lib" "$d/spool"
	{
		echo "smtpd_listen = 127.0.0.1:$PERIMD_PORT"
		echo "relay_backends = [127.0.0.1]:$SINK_PORT"
		echo "relay_domains = bench.test"
		echo "myhostname = perimd.bench.test"
		echo "data_directory = $d/lib"
		echo "body_spool_directory = $d/spool"
		echo "mail_owner = $(id -un)"
		echo "io_threads = $IO_THREADS"
		echo "max_sessions = $((MIXED > 0 ? IDLE + MIXED + 100 : IDLE > 4000 ? IDLE + 100 : 4000))"
		echo "smtpd_client_connection_count_limit = 0"
		echo "log_to = stderr"
		# No fixed /metrics port (another perimd may hold 9125); modes that
		# read it set one in EXTRA_CONF, which comes later and wins.
		has_param stats_listen && echo "stats_listen ="
		# Checks that would need DNS or a database, where the binary has them.
		has_param greylist && echo "greylist = no"
		has_param reject_unknown_sender_domain && echo "reject_unknown_sender_domain = no"
		for l in "${EXTRA_CONF[@]}"; do echo "$l"; done
		true
	} >"$d/perimd.conf"
	"$PERIMD" -f -c "$d/perimd.conf" >"$d/perimd.log" 2>&1 &
	PERIMD_PID=$!
	PIDS+=("$PERIMD_PID")
	wait_banner "$PERIMD_PORT" || { tail -20 "$d/perimd.log" >&2; exit 1; }
}

# source PORT SESSIONS MESSAGES SIZE - smtp-source run; prints elapsed seconds.
source_run() {
	local t0 t1
	t0=$(now)
	# shellcheck disable=SC2086 # SOURCE_OPTS: words for smtp-source
	if ! timeout -k 5 "$RUN_TIMEOUT" smtp-source ${SOURCE_OPTS:-} -s "$2" -m "$3" -l "$4" \
		-f a@client.bench.test -t rcpt@bench.test -M client.bench.test \
		"127.0.0.1:$1" >"$WORK/source.out" 2>&1 </dev/null; then
		echo "bench: smtp-source failed on port $1:" >&2
		tail -5 "$WORK/source.out" >&2
		return 1
	fi
	t1=$(now)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# peer_conf DIR - the perimd settings every peer-bench mode shares: state
# under DIR/lib and DIR/spool, room for the idle tests, no /metrics port
# (the peer script owns 2525-2528), no sender-domain DNS (the peers do
# none); each mode adds its own lines after it.
peer_conf() {
	echo "data_directory = $1/lib"
	echo "body_spool_directory = $1/spool"
	echo "mail_owner = $(id -un)"
	echo "max_sessions = 10000"
	echo "smtpd_client_connection_count_limit = 0"
	echo "myhostname = perimd.bench.test"
	echo "io_threads = $IO_THREADS"
	has_param stats_listen && echo "stats_listen ="
	has_param reject_unknown_sender_domain && echo "reject_unknown_sender_domain = no"
	true
}

peers() {
	local peer=$PEER_BENCH
	if [ ! -f "$peer" ]; then
		echo "bench peers: $peer not found; skipped"
		return 0
	fi
	# The peer script's output directory lives on (results.txt), not $WORK.
	local d=/tmp/perimd-peer-conf.$$
	mkdir -p "$d/lib" "$d/spool"
	{
		peer_conf "$d"
		# No greylisting: the peers do none.
		has_param greylist && echo "greylist = no"
		true
	} >"$d/perimd.conf"
	export PERIMD_CMD="$PERIMD -f -c $d/perimd.conf -o smtpd_listen=127.0.0.1:{PORT} -o relay_backends=[127.0.0.1]:{SINK_PORT} -o relay_domains=bench.test"
	export OUT=${OUT:-/tmp/peer-bench.$(date +%Y%m%d-%H%M%S)}
	# Short runs by default: the machine is shared (PEER_* to change).
	export CONC=${PEER_CONC:-"10 100 512"} SIZES=${PEER_SIZES:-"512 102400"}
	export MSGS=${PEER_MSGS:-2000} REPS=${PEER_REPS:-1} WARMUP=${PEER_WARMUP:-100}
	export IDLE_COUNTS=${PEER_IDLE:-"512 2000"} IDLE_BATCH=${PEER_IDLE_BATCH:-100} IDLE_HOLD=${PEER_IDLE_HOLD:-5}
	echo "bench peers: $peer (results in $OUT; CONC=\"$CONC\" SIZES=\"$SIZES\" MSGS=$MSGS REPS=$REPS)"
	bash "$peer" setup
	bash "$peer" run direct postfix haraka perimd
	bash "$peer" idle postfix haraka perimd
	rm -rf "$d"
}

EXTRA_CONF=()

# cpu_ns PID - CPU time of all of a process's threads, in ns (schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ t += $1 } END { printf "%d", t }'; }

# ab_build REV TAG - the dev binary of git revision REV, built in a
# temporary worktree (removed at exit); its path in AB_BIN[TAG]. With
# AB_CACHE=DIR, binaries are kept as DIR/COMMIT/perimd and reused.
ab_build() {
	local t=$WORK/tree-$2 sha
	sha=$(git -C "$ROOT" rev-parse "$1^{commit}") || exit 1
	if [ -n "${AB_CACHE:-}" ] && [ -x "$AB_CACHE/$sha/perimd" ]; then
		AB_BIN[$2]=$AB_CACHE/$sha/perimd
		return
	fi
	git -C "$ROOT" worktree add --detach "$t" "$1" >/dev/null 2>&1 || { echo "bench ab: cannot check out $1" >&2; exit 1; }
	AB_TREES+=("$t")
	make -s -C "$t/perimd" -j"$(nproc)" BUILD="$t/build/dev" "$t/build/dev/perimd" >"$WORK/build-$2.log" 2>&1 ||
		{ tail -20 "$WORK/build-$2.log" >&2; echo "bench ab: build of $1 failed" >&2; exit 1; }
	if [ -n "${AB_CACHE:-}" ]; then
		mkdir -p "$AB_CACHE/$sha"
		cp "$t/build/dev/perimd" "$AB_CACHE/$sha/perimd"
		AB_BIN[$2]=$AB_CACHE/$sha/perimd
		return
	fi
	AB_BIN[$2]=$t/build/dev/perimd
}

# cpu_tree_ns PID - cpu_ns of PID and all its descendants (perimd's scanner
# process, its generation processes and their scanning processes).
cpu_tree_ns() {
	local c t
	t=$(cpu_ns "$1")
	for c in $(pgrep -P "$1"); do t=$((t + $(cpu_tree_ns "$c"))); done
	echo "$t"
}

# ab_run TAG SIZE - one round on perimd TAG: appends "secs cpu_ns
# perimd_ns" to a file (cpu_ns: perimd and its scanner; perimd_ns: perimd
# alone).
ab_run() {
	local port=${AB_PORT[$1]} pid=${AB_PID[$1]} c0 c1 p0 p1 t
	c0=$(cpu_tree_ns "$pid")
	p0=$(cpu_ns "$pid")
	t=$(source_run "$port" "$AB_CONC" "$AB_MSGS" "$2")
	c1=$(cpu_tree_ns "$pid")
	p1=$(cpu_ns "$pid")
	echo "$t $((c1 - c0)) $((p1 - p0))" >>"$WORK/ab-$1-$2"
}

# ab_opendkim - an opendkim in verify mode on a free port (the client
# external, AlwaysAddARHeader: a header added to each message); its
# "inet:127.0.0.1:PORT" in AB_MILTER (no subshell: PIDS must keep its pid).
ab_opendkim() {
	local port d=$WORK/opendkim
	command -v opendkim >/dev/null || [ -x /usr/sbin/opendkim ] ||
		{ echo "bench ab: opendkim missing (apt-get install opendkim)" >&2; exit 1; }
	port=$(free_port)
	mkdir -p "$d"
	echo 192.0.2.1 >"$d/internal"
	printf 'Socket inet:%s@127.0.0.1\nSyslog no\nPidFile %s\nMode v\nAlwaysAddARHeader yes\nAuthservID perimd.bench.test\nInternalHosts %s\nRequireSafeKeys no\n' \
		"$port" "$d/pid" "$d/internal" >"$d/opendkim.conf"
	/usr/sbin/opendkim -f -x "$d/opendkim.conf" </dev/null >"$d/out" 2>&1 &
	PIDS+=("$!")
	"$PY" - "$port" <<-'EOF' >&2 || { cat "$d/out" >&2; exit 1; }
	import socket, sys, time
	port, deadline = int(sys.argv[1]), time.monotonic() + 30
	while time.monotonic() < deadline:
	    try:
	        socket.create_connection(("127.0.0.1", port), timeout=2).close()
	        sys.exit(0)
	    except OSError:
	        time.sleep(0.1)
	sys.exit("opendkim not listening after 30 s")
	EOF
	AB_MILTER=inet:127.0.0.1:$port
}

# ab_bench OLD NEW - see the header.
ab_bench() {
	local old=${1:?usage: bench.sh ab OLD NEW} new=${2:?usage: bench.sh ab OLD NEW} tag r s first second
	AB_CONC=${AB_CONC:-10} AB_MSGS=${AB_MSGS:-2000} AB_REPS=${AB_REPS:-5} AB_SIZES=${AB_SIZES:-"512 102400"}
	declare -gA AB_PORT AB_PID AB_BIN
	ab_build "$old" old
	ab_build "$new" new
	echo "perimd bench ab: OLD=$old ($(git -C "$ROOT" rev-parse --short "$old")) NEW=$new ($(git -C "$ROOT" rev-parse --short "$new")); $AB_REPS rounds x $AB_MSGS messages x $AB_CONC sessions, sizes $AB_SIZES, AB_AV=${AB_AV:-0}, AB_SPOOL=${AB_SPOOL:-work}, on $(nproc) CPUs"
	start_sink
	if [ "${AB_AV:-0}" = 1 ]; then
		write_av_db "$WORK/ab-db"
		EXTRA_CONF=("av_scanner = libclamav" "clamav_database_directory = $WORK/ab-db")
	fi
	if [ "${AB_SPOOL:-work}" = shm ]; then
		AB_SHM_DIR=$(mktemp -d /dev/shm/perimd-ab.XXXXXX)
	fi
	if [ -n "${AB_MILTER:-}" ]; then
		[ "$AB_MILTER" = opendkim ] && ab_opendkim
		echo "bench ab: smtpd_milters = $AB_MILTER"
		EXTRA_CONF+=("smtpd_milters = $AB_MILTER" "milter_content_timeout = 120s")
	fi
	for tag in old new; do
		PERIMD=${AB_BIN[$tag]}
		PARAMS=$("$PERIMD" -d 2>/dev/null || true)
		if [ -n "$AB_SHM_DIR" ]; then
			mkdir -p "$AB_SHM_DIR/$tag"
			EXTRA_CONF+=("body_spool_directory = $AB_SHM_DIR/$tag")
		fi
		start_perimd
		AB_PORT[$tag]=$PERIMD_PORT
		AB_PID[$tag]=$PERIMD_PID
		source_run "$PERIMD_PORT" 10 "$WARMUP" 512 >/dev/null
	done
	for r in $(seq 1 "$AB_REPS"); do
		if [ $((r % 2)) -eq 1 ]; then first=old second=new; else first=new second=old; fi
		for s in $AB_SIZES; do
			ab_run "$first" "$s"
			ab_run "$second" "$s"
		done
	done
	printf '%-7s %10s %10s %8s %12s %12s %8s %s\n' bytes old_msg/s new_msg/s ratio old_cpu_ms new_cpu_ms ratio "cpu ratio per round (min..max)"
	for s in $AB_SIZES; do
		paste "$WORK/ab-old-$s" "$WORK/ab-new-$s" | awk -v m="$AB_MSGS" -v s="$s" -v av="${AB_AV:-0}" '
			{ to += $1; co += $2; po += $3; tn += $4; cn += $5; pn += $6; q = $5 / $2
			  if (NR == 1 || q < lo) lo = q; if (NR == 1 || q > hi) hi = q }
			END { n = NR * m
			      printf "%-7s %10.0f %10.0f %8.3f %12.4f %12.4f %8.3f %.3f..%.3f\n", s, n / to, n / tn,
				(n / tn) / (n / to), co / n / 1e6, cn / n / 1e6, cn / co, lo, hi
			      if (av == 1)
				printf "        of it perimd %.4f -> %.4f ms (%.3f), its scanner %.4f -> %.4f ms (%.3f)\n",
				  po / n / 1e6, pn / n / 1e6, pn / po, (co - po) / n / 1e6, (cn - pn) / n / 1e6,
				  (cn - pn) / (co - po) }'
	done
}

# write_av_db DIR - a test signature database (EICAR and a marker) in DIR.
write_av_db() {
	mkdir -p "$1"
	# The EICAR string is built here from pieces (no file holds it whole).
	"$PY" - "$1" <<'EOF'
import os, sys
e = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()
with open(os.path.join(sys.argv[1], "bench.ndb"), "w") as f:
    f.write("Bench.EICAR:0:*:%s\nBench.Marker:0:*:%s\n" % (e.hex(), b"perimd-bench-marker".hex()))
EOF
}

# peers_features - ../shared/bench/peer-bench.sh in one run: direct,
# Postfix, then perimd with greylisting (every triplet passed) and ClamAV
# (libclamav, the test database) each off and on (./build.sh bench
# peers-features; PF_CONC, PF_SIZES, PF_MSGS, PF_VARIANTS to change).
# smtp-source sends one triplet (127.0.0.1, bench@client.bench.test,
# rcpt@bench.test): it is passed beforehand by a priming perimd on the same
# data_directory (first sight 451, the pass after greylist_delay = 1s), so
# the measured runs look it up in SQLite once and then hit the pass cache.
peers_features() {
	local peer=$PEER_BENCH
	[ -f "$peer" ] || { echo "bench peers-features: $peer not found; skipped"; return 0; }
	local base=${OUT:-/tmp/peer-bench-features.$(date +%Y%m%d-%H%M%S)} d v port pid
	d=/tmp/perimd-peer-features.$$
	mkdir -p "$base" "$d"
	write_av_db "$d/avdb"
	export CONC=${PF_CONC:-100} SIZES=${PF_SIZES:-"512 102400"} MSGS=${PF_MSGS:-2000}
	export REPS=1 WARMUP=${PF_WARMUP:-100}
	local variants=${PF_VARIANTS:-"plain grey av grey+av"}
	for v in $variants; do
		mkdir -p "$d/$v/lib" "$d/$v/spool"
		{
			peer_conf "$d/$v"
			echo "log_to = stderr"
			case $v in
			*grey*) echo "greylist = yes"; echo "greylist_delay = 1s"
				echo "greylist_auto_whitelist_count = 0" ;;
			*) has_param greylist && echo "greylist = no" ;;
			esac
			case $v in
			*av*) echo "av_scanner = libclamav"; echo "clamav_database_directory = $d/avdb" ;;
			esac
			true
		} >"$d/$v/perimd.conf"
		case $v in *grey*) ;; *) continue ;; esac
		# Prime: pass the triplet smtp-source will send (RCPT only, no backend).
		port=$(free_port)
		"$PERIMD" -f -c "$d/$v/perimd.conf" -o "smtpd_listen=127.0.0.1:$port" \
			-o "relay_backends=[127.0.0.1]:9" -o relay_domains=bench.test \
			>"$d/$v/prime.log" 2>&1 &
		pid=$!
		PIDS+=("$pid")
		wait_banner "$port" || { tail -20 "$d/$v/prime.log" >&2; exit 1; }
		"$PY" "$ROOT/tests/bench_seed.py" prime "$port" 1.1 || { tail -20 "$d/$v/prime.log" >&2; exit 1; }
		kill -TERM "$pid"
		wait "$pid" 2>/dev/null || true
	done
	echo "bench peers-features: $peer (results under $base; CONC=\"$CONC\" SIZES=\"$SIZES\" MSGS=$MSGS REPS=1; variants: $variants)"
	bash "$peer" setup
	OUT=$base/peers bash "$peer" run direct postfix
	for v in $variants; do
		export PERIMD_CMD="$PERIMD -f -c $d/$v/perimd.conf -o smtpd_listen=127.0.0.1:{PORT} -o relay_backends=[127.0.0.1]:{SINK_PORT} -o relay_domains=bench.test"
		OUT=$base/perimd-$v bash "$peer" run perimd
	done
	rm -rf "$d"
	# One table: delivered messages/s, CPU ms per message, peak PSS; ratios
	# against direct and Postfix of the same run.
	"$PY" - "$base" $variants <<'EOF' | tee "$base/table.txt"
import os, sys
base, variants = sys.argv[1], sys.argv[2:]
def runs(path, name=None):
    out = {}
    for line in open(os.path.join(base, path, "results.txt")):
        if line.startswith("run "):
            d = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            out[(name or d["sut"], int(d["size"]), int(d["conc"]))] = d
    return out
def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
r = runs("peers")
for v in variants:
    r.update(runs("perimd-" + v, "perimd-" + v))
print("delivered msgs/s / SUT CPU ms per msg / peak PSS MB; ratios = perimd's msgs/s over direct's, Postfix's")
print("%-6s %5s %9s %-22s %-9s %-22s %8s %8s %s" % ("bytes", "sess", "direct/s", "Postfix", "perimd",
      "", "/direct", "/Postfix", "status"))
for (_, size, conc) in sorted(k for k in r if k[0] == "direct"):
    dm = f(r[("direct", size, conc)].get("deliver_mps"))
    pf = r.get(("postfix", size, conc), {})
    pm = f(pf.get("deliver_mps"))
    cell = lambda x: "%6.0f / %5s / %4.0f" % (f(x.get("deliver_mps")) or 0, x.get("sut_cpu_ms_per_msg", "-"),
                                             (f(x.get("sut_peak_pss_kb")) or 0) / 1024)
    first = True
    for v in variants:
        x = r.get(("perimd-" + v, size, conc))
        if not x:
            continue
        m = f(x.get("deliver_mps")) or 0
        print("%-6s %5s %9s %-22s %-9s %-22s %8s %8s %s" % (
            size if first else "", conc if first else "", "%.0f" % dm if first else "",
            cell(pf) if first and pf else "", v, cell(x),
            "%.2f" % (m / dm) if dm else "NA", "%.1fx" % (m / pm) if pm else "NA", x.get("status")))
        first = False
EOF
}

# peers_av - ../shared/bench/peer-bench.sh in one run with the fair peer for
# scanning: Postfix with clamav-milter (smtpd_milters) and clamd, all on the
# test database perimd uses (./build.sh bench peers-av; PA_CONC, PA_SIZES,
# PA_MSGS to change). Systems: direct, Postfix, Postfix + clamav-milter +
# clamd, perimd plain, perimd av_scanner = libclamav, perimd av_scanner =
# clamd:SOCKET (a clamd with the same configuration). clamd and clamav-milter
# are started inside the SUT's cgroup (by a `postfix` wrapper first in PATH
# for the Postfix run, by a wrapper around PERIMD_CMD for perimd's clamd run),
# so their CPU and PSS count into the system they serve and the peer script
# ends them with the SUT. The Postfix wrapper adds smtpd_milters and
# milter_default_action = tempfail with postconf -e after the peer script has
# written main.cf, then refuses to start unless EICAR is rejected (5xx) and a
# clean message accepted; perimd variants are checked the same way before the
# runs. /etc/postfix/main.cf and master.cf are put back as found.
peers_av() {
	local peer=$PEER_BENCH
	[ -f "$peer" ] || { echo "bench peers-av: $peer not found; skipped"; return 0; }
	local m
	for m in clamd clamav-milter postfix smtp-source; do
		command -v "$m" >/dev/null || { echo "bench peers-av: $m missing (apt-get install clamav-daemon clamav-milter postfix)" >&2; exit 1; }
	done
	local base=${OUT:-/tmp/peer-bench-av.$(date +%Y%m%d-%H%M%S)} d v port pid
	d=/tmp/perimd-peer-av.$$
	PA_DIR=$d
	mkdir -p "$base" "$d/tmp" "$d/pfbin"
	save_postfix_conf "$d/etc-postfix"
	write_av_db "$d/avdb"
	export POSTFIX_PORT=${POSTFIX_PORT:-2526}
	local milter_port
	milter_port=$(free_port)
	# clamd: upstream defaults (MaxThreads 10, MaxConnectionQueueLength 200,
	# StreamMaxLength 25M, every parser on) but the test database only; one
	# log line per scan, counted after the runs (did every message reach it?).
	cat >"$d/clamd.conf" <<-EOF
	Foreground yes
	LocalSocket $d/clamd.sock
	FixStaleSocket yes
	DatabaseDirectory $d/avdb
	TemporaryDirectory $d/tmp
	LogFile $d/clamd.log
	LogClean yes
	User root
	EOF
	# clamav-milter: reject infected mail, defer when clamd fails, no
	# X-Virus-* headers (perimd adds none either).
	cat >"$d/clamav-milter.conf" <<-EOF
	Foreground yes
	MilterSocket inet:$milter_port@127.0.0.1
	ClamdSocket unix:$d/clamd.sock
	OnClean Accept
	OnInfected Reject
	OnFail Defer
	AddHeader No
	ReadTimeout 120
	MaxFileSize 25M
	TemporaryDirectory $d/tmp
	LogFile $d/clamav-milter.log
	LogInfected Basic
	EOF
	# clamav-start.sh clamd|milter - start one in the background (log in $d),
	# print its PID, return once it answers (60 s at most).
	cat >"$d/clamav-start.sh" <<-EOF
	#!/usr/bin/env bash
	case \$1 in
	clamd) rm -f "$d/clamd.sock"; /usr/sbin/clamd -c "$d/clamd.conf" </dev/null >>"$d/clamd.out" 2>&1 & ;;
	milter) /usr/sbin/clamav-milter -c "$d/clamav-milter.conf" </dev/null >>"$d/clamav-milter.out" 2>&1 & ;;
	*) exit 2 ;;
	esac
	pid=\$!
	echo "\$pid"
	exec $PY - "\$1" "\$pid" "$d/clamd.sock" "$milter_port" <<'PYEOF'
	import os, socket, sys, time
	what, pid, sock, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
	deadline = time.monotonic() + 60
	while time.monotonic() < deadline:
	    try:
	        if what == "clamd":
	            with socket.socket(socket.AF_UNIX) as s:
	                s.settimeout(5); s.connect(sock); s.sendall(b"zPING\0")
	                if s.recv(16).startswith(b"PONG"):
	                    sys.exit(0)
	        else:
	            socket.create_connection(("127.0.0.1", port), timeout=5).close()
	            sys.exit(0)
	    except OSError:
	        pass
	    try:
	        os.kill(pid, 0)
	    except OSError:
	        sys.exit("clamav-start: %s exited (see its log)" % what)
	    time.sleep(0.1)
	sys.exit("clamav-start: %s not ready after 60 s" % what)
	PYEOF
	EOF
	# with-clamd.sh CMD... - clamd in the background, then exec CMD (perimd).
	cat >"$d/with-clamd.sh" <<-EOF
	#!/usr/bin/env bash
	"$d/clamav-start.sh" clamd >/dev/null || exit 1
	exec "\$@"
	EOF
	# pfbin/postfix - only "postfix start" differs: clamd and clamav-milter
	# first (same cgroup as Postfix), the milter settings on the main.cf the
	# peer script has just written, then Postfix, the EICAR/clean check, and
	# a wait for the clean message to leave the queue (so the sink's count
	# before the warm-up is settled).
	cat >"$d/pfbin/postfix" <<-EOF
	#!/usr/bin/env bash
	[ "\${1:-}" = start ] || exec /usr/sbin/postfix "\$@"
	"$d/clamav-start.sh" clamd >/dev/null && "$d/clamav-start.sh" milter >/dev/null || exit 1
	/usr/sbin/postconf -e "smtpd_milters = inet:127.0.0.1:$milter_port" "milter_default_action = tempfail" || exit 1
	/usr/sbin/postfix start || exit 1
	if ! $PY "$ROOT/tests/bench_avcheck.py" "$POSTFIX_PORT" "Postfix + clamav-milter" >>"$base/avcheck.txt" 2>&1; then
	  /usr/sbin/postfix stop; exit 1
	fi
	for i in \$(seq 1 300); do
	  /usr/sbin/postqueue -p 2>/dev/null | grep -q 'Mail queue is empty' && exit 0
	  sleep 0.1
	done
	echo "the check message is still queued after 30 s" >&2; /usr/sbin/postfix stop; exit 1
	EOF
	chmod 755 "$d/clamav-start.sh" "$d/with-clamd.sh" "$d/pfbin/postfix"
	local variants="plain libclamav clamd"
	for v in $variants; do
		mkdir -p "$d/$v/lib" "$d/$v/spool"
		{
			peer_conf "$d/$v"
			echo "log_to = stderr"
			has_param greylist && echo "greylist = no"
			case $v in
			libclamav) echo "av_scanner = libclamav"; echo "clamav_database_directory = $d/avdb" ;;
			clamd) echo "av_scanner = clamd:$d/clamd.sock" ;;
			esac
			true
		} >"$d/$v/perimd.conf"
	done
	# perimd scans: EICAR refused, a clean message relayed (own sink and clamd).
	: >"$base/avcheck.txt"
	start_sink
	pid=$("$d/clamav-start.sh" clamd) || { tail -20 "$d/clamd.log" >&2; exit 1; }
	PIDS+=("$pid")
	for v in libclamav clamd; do
		port=$(free_port)
		"$PERIMD" -f -c "$d/$v/perimd.conf" -o "smtpd_listen=127.0.0.1:$port" \
			-o "relay_backends=[127.0.0.1]:$SINK_PORT" -o relay_domains=bench.test \
			>"$d/$v/check.log" 2>&1 &
		PERIMD_PID=$!
		PIDS+=("$PERIMD_PID")
		wait_banner "$port" || { tail -20 "$d/$v/check.log" >&2; exit 1; }
		"$PY" "$ROOT/tests/bench_avcheck.py" "$port" "perimd av_scanner=$v" >>"$base/avcheck.txt" 2>&1 ||
			{ cat "$base/avcheck.txt"; tail -20 "$d/$v/check.log" >&2; exit 1; }
		kill -TERM "$PERIMD_PID"
		wait "$PERIMD_PID" 2>/dev/null || true
	done
	kill -TERM "$pid" "$SINK_PID"
	wait "$SINK_PID" 2>/dev/null || true
	for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	export CONC=${PA_CONC:-100} SIZES=${PA_SIZES:-"512 102400"} MSGS=${PA_MSGS:-2000}
	export REPS=1 WARMUP=${PA_WARMUP:-100}
	echo "bench peers-av: $peer (results under $base; CONC=\"$CONC\" SIZES=\"$SIZES\" MSGS=$MSGS REPS=1)"
	echo "bench peers-av: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$base/load.txt"
	bash "$peer" setup
	OUT=$base/peers bash "$peer" run direct postfix
	rm -f "$d/clamd.log"
	PATH=$d/pfbin:$PATH OUT=$base/postfix-clamav bash "$peer" run postfix
	mv "$d/clamd.log" "$d/clamav-milter.log" "$base/postfix-clamav/" 2>/dev/null || true
	for v in $variants; do
		export PERIMD_CMD="$PERIMD -f -c $d/$v/perimd.conf -o smtpd_listen=127.0.0.1:{PORT} -o relay_backends=[127.0.0.1]:{SINK_PORT} -o relay_domains=bench.test"
		[ "$v" = clamd ] && PERIMD_CMD="$d/with-clamd.sh $PERIMD_CMD"
		OUT=$base/perimd-$v bash "$peer" run perimd
	done
	mv "$d/clamd.log" "$base/perimd-clamd/" 2>/dev/null || true
	echo "bench peers-av: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$base/load.txt"
	cp "$d/clamd.conf" "$d/clamav-milter.conf" "$base/"
	cat "$base/avcheck.txt"
	restore_postfix_conf
	rm -rf "$d"
	PA_DIR=""
	# One table: per size, each system's delivered messages/s, SUT CPU ms per
	# message (clamd, clamav-milter and perimd's scanner included), peak PSS;
	# ratios against direct and against Postfix + ClamAV of the same run.
	"$PY" - "$base" "$(( $(wc -w <<<"$SIZES") * (WARMUP + MSGS) ))" <<'EOF' | tee "$base/table.txt"
import os, sys
base, expect = sys.argv[1], int(sys.argv[2])
systems = [("direct", "peers", "direct"), ("Postfix", "peers", "postfix"),
           ("Postfix+ClamAV", "postfix-clamav", "postfix"), ("perimd", "perimd-plain", "perimd"),
           ("perimd-libclamav", "perimd-libclamav", "perimd"), ("perimd-clamd", "perimd-clamd", "perimd")]
def f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
r = {}
for name, path, sut in systems:
    try:
        lines = open(os.path.join(base, path, "results.txt"))
    except OSError:
        continue
    for line in lines:
        if line.startswith("run "):
            d = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            if d.get("sut") == sut:
                r[(name, int(d["size"]), int(d["conc"]))] = d
print("delivered msgs/s, SUT CPU ms per msg, peak PSS MB (clamd, clamav-milter, perimd's scanner counted in);")
print("/direct = msgs/s over direct's; vs Pf+AV = msgs/s and CPU per msg over Postfix+ClamAV's")
print("%-6s %5s %-17s %8s %8s %7s %5s %8s %9s %10s %5s %s" % ("bytes", "sess", "system", "msgs/s", "CPUms/m",
      "PSS_MB", "procs", "/direct", "vsPf+AV/s", "vsPf+AVcpu", "lost", "status"))
for (_, size, conc) in sorted(k for k in r if k[0] == "direct"):
    dm = f(r[("direct", size, conc)].get("deliver_mps"))
    pa = r.get(("Postfix+ClamAV", size, conc), {})
    pam, pac = f(pa.get("deliver_mps")), f(pa.get("sut_cpu_ms_per_msg"))
    first = True
    for name, _, _ in systems:
        x = r.get((name, size, conc))
        if not x:
            continue
        m, c, p = f(x.get("deliver_mps")), f(x.get("sut_cpu_ms_per_msg")), f(x.get("sut_peak_pss_kb"))
        print("%-6s %5s %-17s %8s %8s %7s %5s %8s %9s %10s %5s %s" % (
            size if first else "", conc if first else "", name, "%.0f" % m if m else "NA",
            "%.3f" % c if c is not None else "-", "%.1f" % (p / 1024) if p is not None else "-",
            x.get("sut_peak_procs", "-"),
            "%.2f" % (m / dm) if m and dm else "-",
            "%.2fx" % (m / pam) if m and pam and name.startswith("perimd-") else "",
            "%.2fx" % (c / pac) if c and pac and name.startswith("perimd-") else "",
            x.get("lost"), x.get("status")))
        first = False
# Scans clamd logged (LogClean): warm-up, measured and check messages of every
# size; fewer clean scans than messages means some were not scanned.
for name, path in (("Postfix+ClamAV", "postfix-clamav"), ("perimd-clamd", "perimd-clamd")):
    try:
        log = open(os.path.join(base, path, "clamd.log"), errors="replace").read().splitlines()
    except OSError:
        log = []
    ok = sum(1 for l in log if l.endswith(": OK"))
    found = sum(1 for l in log if l.endswith(" FOUND"))
    print("clamd scans during %s: %d clean, %d infected (messages sent: %d)%s" % (
        name, ok, found, expect, "" if ok >= expect else "  WARNING: not every message was scanned"))
EOF
}

# latency_bench - client-side latency of every peer in one run (./build.sh
# bench latency; LAT_CONC, LAT_SIZES, LAT_MSGS, LAT_WARMUP, LAT_SINGLE to
# change). ../shared/bench/peer-bench.sh does the setup, starts smtp-sink
# (-c, backlog 1024), Postfix (relayhost = the sink), Haraka (smtp_forward
# to the sink) and perimd (configured as in `peers`), counts every message
# at the sink and stops what it started; tests/bench_latency.py stands in
# for smtp-source (first in PATH under that name), so each run's source.out
# holds its latency line. Sessions reuse their connection unless
# LAT_SINGLE=1 (one message per connection). LAT_SYSTEMS picks the systems;
# LAT_HARAKA_NODELAY=1 preloads into Haraka (NODE_OPTIONS, which the peer
# script passes through) a module that sets TCP_NODELAY on every socket:
# Haraka 3 leaves Nagle on, and its relayed final dot then waits for the
# sink's delayed ACK (about 40 ms per message at one session). Off by
# default (stock Haraka): with it, 512 B messages went 4-5x faster, 100 KB
# ones 2x slower (Haraka then sends the body in many small segments).
latency_bench() {
	local peer=$PEER_BENCH
	[ -f "$peer" ] || { echo "bench latency: $peer not found; skipped"; return 0; }
	local base=${OUT:-/tmp/perimd-bench-latency.$(date +%Y%m%d-%H%M%S)} d
	d=/tmp/perimd-latency.$$
	PA_DIR=$d
	mkdir -p "$base" "$d/lib" "$d/spool" "$d/bin"
	save_postfix_conf "$d/etc-postfix"
	{
		peer_conf "$d"
		has_param greylist && echo "greylist = no"
		# LAT_PERIMD_CONF: more lines for perimd, separated by ";".
		tr ';' '\n' <<<"${LAT_PERIMD_CONF:-}" | sed 's/^ *//; /^$/d'
		true
	} >"$d/perimd.conf"
	local flags=""
	[ "${LAT_SINGLE:-0}" = 1 ] && flags=-1
	# LAT_RATE: every system at the same offered load (messages/s in all).
	[ -n "${LAT_RATE:-}" ] && flags="$flags --rate=$LAT_RATE"
	printf '#!/bin/sh\nexec %s %s %s "$@"\n' "$PY" "$ROOT/tests/bench_latency.py" "$flags" >"$d/bin/smtp-source"
	chmod 755 "$d/bin/smtp-source"
	local nodelay=${LAT_HARAKA_NODELAY:-0}
	if [ "$nodelay" = 1 ]; then
		cat >"$d/nodelay.js" <<-'EOF'
		// bench latency: TCP_NODELAY on every socket Haraka opens or accepts.
		const net = require('net');
		const connect = net.Socket.prototype.connect;
		net.Socket.prototype.connect = function (...a) { this.setNoDelay(true); return connect.apply(this, a); };
		const emit = net.Server.prototype.emit;
		net.Server.prototype.emit = function (ev, s, ...r) {
		    if (ev === 'connection' && s && s.setNoDelay) s.setNoDelay(true);
		    return emit.call(this, ev, s, ...r);
		};
		EOF
		export NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--require $d/nodelay.js"
	fi
	local systems=${LAT_SYSTEMS:-"direct postfix haraka perimd"}
	export PERIMD_CMD="$PERIMD -f -c $d/perimd.conf -o smtpd_listen=127.0.0.1:{PORT} -o relay_backends=[127.0.0.1]:{SINK_PORT} -o relay_domains=bench.test"
	export CONC=${LAT_CONC:-"10 100"} SIZES=${LAT_SIZES:-"512 102400"} MSGS=${LAT_MSGS:-20000}
	export REPS=1 WARMUP=${LAT_WARMUP:-100}
	# Free ports for the sink, Haraka and perimd; Postfix keeps the peer
	# script's (its master.cf names it).
	export SINK_PORT=${SINK_PORT:-$(free_port)} HARAKA_PORT=${HARAKA_PORT:-$(free_port)}
	export PERIMD_PORT=${PERIMD_PORT:-$(free_port)}
	echo "bench latency: $peer (results under $base; $systems; CONC=\"$CONC\" SIZES=\"$SIZES\" MSGS=$MSGS WARMUP=$WARMUP conn=$([ "${LAT_SINGLE:-0}" = 1 ] && echo single || echo reuse) rate=${LAT_RATE:-max} haraka_nodelay=$nodelay)"
	# The peer script's setup installs and configures Haraka too: only when
	# it is measured (Postfix's main.cf is rewritten before each start anyway).
	case " $systems " in *" haraka "*) OUT=$base/setup bash "$peer" setup ;; esac
	echo "bench latency: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$base/load.txt"
	# shellcheck disable=SC2086
	PATH=$d/bin:$PATH OUT=$base/peers bash "$peer" run $systems
	if [ "${LAT_PROXY:-1}" = 1 ]; then
		# Postfix answering after the next hop: smtpd_proxy_filter to the sink,
		# a private instance started as the peer script's "perimd" command.
		PERIMD_CMD="$PY $ROOT/tests/bench_proxy.py {PORT} {SINK_PORT}" PATH=$d/bin:$PATH \
			OUT=$base/proxy bash "$peer" run perimd
	fi
	if [ -n "${LAT_PERIMD_BASE:-}" ]; then
		# Another perimd binary (an older revision) with the same settings,
		# its rows beside this one's as "perimd-base".
		PERIMD_CMD="${PERIMD_CMD/#$PERIMD /$LAT_PERIMD_BASE }" PATH=$d/bin:$PATH \
			OUT=$base/base bash "$peer" run perimd
	fi
	if [ "${LAT_STREAM:-1}" = 1 ] && has_param relay_while_receiving && [[ " $systems " == *" perimd "* ]]; then
		# The same perimd relaying the body while it is received, its rows
		# beside as "perimd-stream".
		PERIMD_CMD="$PERIMD_CMD -o relay_while_receiving=yes" PATH=$d/bin:$PATH \
			OUT=$base/stream bash "$peer" run perimd
	fi
	echo "bench latency: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$base/load.txt"
	restore_postfix_conf
	rm -rf "$d"
	PA_DIR=""
	"$PY" - "$base" "$nodelay" <<'EOF' | tee "$base/table.txt"
import os, sys
top, nodelay = sys.argv[1], sys.argv[2] == "1"
systems = [("direct", "direct"), ("Postfix", "postfix"), ("Postfix-proxy", "postfix-proxy"),
           ("Haraka, TCP_NODELAY" if nodelay else "Haraka", "haraka"), ("perimd", "perimd"),
           ("perimd-stream", "perimd-stream"), ("perimd-base", "perimd-base")]
def kv(line):
    return dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
runs, lat, dirs = {}, {}, {}
for sub, rename in (("peers", None), ("proxy", "postfix-proxy"), ("stream", "perimd-stream"),
                    ("base", "perimd-base")):
    try:
        lines = open(os.path.join(top, sub, "results.txt")).readlines()
    except OSError:
        continue
    for line in lines:
        if line.startswith("run "):
            d = kv(line)
            k = (rename or d["sut"], int(d["size"]), int(d["conc"]))
            runs[k] = d
            dirs[k] = os.path.join(top, sub, "%s-s%d-l%d-r%s" % (d["sut"], k[2], k[1], d["rep"]))
systems = [s for s in systems if any(k[0] == s[1] for k in runs)]
for k, d in runs.items():
    try:
        for line in open(os.path.join(dirs[k], "source.out")):
            if line.startswith("latency "):
                lat[k] = kv(line)
    except OSError:
        pass
keys = sorted({(s, c) for (_, s, c) in runs})
def row(title, cols):
    print(title)
    print("%-7s %4s" % ("bytes", "sess") + "".join(" | %-22s" % n for n, _ in systems))
    print("%-7s %4s" % ("", "") + "".join(" | %6s %6s %8s" % cols[0] for _ in systems))
    for size, conc in keys:
        out = "%-7d %4d" % (size, conc)
        for _, sut in systems:
            r, l = runs.get((sut, size, conc), {}), lat.get((sut, size, conc))
            if not l:
                out += " | %6s %6s %8s" % ("-", "-", "-")
                continue
            a, b, c = cols[1](r, l)
            out += " | %6s %6s %8s" % (a, b, c)
        print(out)
def num(x, f="%.1f"):
    try:
        return f % float(x)
    except (TypeError, ValueError):
        return "NA"
row("dot -> final reply latency (ms, p50 / p99) and delivered msgs/s (all at the sink)",
    (("p50", "p99", "dlv/s"), lambda r, l: (num(l.get("dot_p50_ms")), num(l.get("dot_p99_ms")),
                                            num(r.get("deliver_mps"), "%.0f"))))
print()
row("whole transaction, MAIL .. final reply (ms, p50 / p99) and msgs/s as the client saw them",
    (("p50", "p99", "acc/s"), lambda r, l: (num(l.get("txn_p50_ms")), num(l.get("txn_p99_ms")),
                                            num(l.get("mps"), "%.0f"))))
bad = []
for k in sorted(runs):
    r, l = runs[k], lat.get(k, {})
    if r.get("status") != "ok" or r.get("lost") != "0" or l.get("errors") != "0":
        bad.append("%s %s B %s sessions: status=%s lost=%s client errors=%s %s" % (
            k[0], k[1], k[2], r.get("status"), r.get("lost"), l.get("errors", "NA"), l.get("first_error", "")))
print()
conn = next(iter(lat.values())).get("conn") if lat else None
rate = next(iter(lat.values())).get("rate") if lat else None
print("%s messages per row after a warm-up, %s; every message counted at the sink." % (
      next(iter(runs.values()))["msgs"] if runs else "?",
      "one message per connection" if conn == "single" else "each session reuses its connection"))
if rate and rate != "max":
    print("Offered load: at most %s messages/s in all (LAT_RATE); a system slower than that ran at its own pace." % rate)
print("Postfix answers 250 once the message is queued, before it is delivered: its latency does")
print("not include the relay to the sink, its dlv/s does. Postfix-proxy (smtpd_proxy_filter to the")
print("sink, nothing queued), Haraka (smtp_forward) and perimd answer after the sink's 250. perimd-stream is")
print("perimd with relay_while_receiving (the body relayed while received, as the proxy does).")
print("Client: tests/bench_latency.py (Python asyncio, one core); its own")
print("event-loop delay is in every figure, the direct row shows that floor.")
if nodelay:
    print("Haraka ran with TCP_NODELAY set on its sockets by a preloaded module (LAT_HARAKA_NODELAY=1).")
for b in bad:
    print("NOT CLEAN: " + b)
if not bad:
    print("all runs clean: no client errors, nothing lost at the sink")
# perimd's own split of each message's delay (its log, -f: stderr, kept as
# perimd.log): final dot to reply as perimd measured it, then scan, wait
# for a backend connection, and the rest (relay transaction, hand-offs).
import re
for k in sorted(k for k in runs if k[0] in ("perimd", "perimd-base")):
    try:
        text = open(os.path.join(dirs[k], "perimd.log"), errors="replace").read()
    except OSError:
        continue
    rows = [tuple(float(x) for x in m) for m in
            re.findall(r"delay=([0-9.]+), delays=([0-9.]+)/([0-9.]+)/([0-9.]+)", text)]
    if not rows:
        continue
    def pc(i, p):
        v = sorted(r[i] for r in rows)
        return v[min(len(v) - 1, max(0, int(p / 100.0 * len(v) + 0.999) - 1))] * 1000
    print("%s %d B %d sessions, own delays over %d messages (ms, p50/p99): total %.1f/%.1f "
          "scan %.1f/%.1f pool wait %.1f/%.1f relay+rest %.1f/%.1f" % (
              k[0], k[1], k[2], len(rows), pc(0, 50), pc(0, 99), pc(1, 50), pc(1, 99), pc(2, 50),
              pc(2, 99), pc(3, 50), pc(3, 99)))
EOF
}

# overlap_bench - relay_scan_overlap off and on in one run (./build.sh
# bench overlap): the same perimd build, test signatures and sink, rounds
# alternating which setting goes first; client-side final dot -> reply.
overlap_bench() {
	local conc=${OV_CONC:-10} sizes=${OV_SIZES:-102400} msgs=${OV_MSGS:-1000} rounds=${OV_ROUNDS:-2}
	local warm=${OV_WARMUP:-50} db=$WORK/avdb sinkout=$WORK/chunk-sink.out flag=""
	[ "${OV_CHUNKING:-1}" = 0 ] && flag=--no-chunking
	write_av_db "$db"
	SINK_PORT=$(free_port)
	"$PY" "$ROOT/tests/bench_chunk_sink.py" "$SINK_PORT" $flag >"$sinkout" 2>&1 &
	SINK_PID=$!
	PIDS+=("$SINK_PID")
	wait_banner "$SINK_PORT"
	echo "perimd bench overlap: $conc sessions, $msgs messages x $rounds rounds per setting, SIZES=\"$sizes\", sink CHUNKING=${OV_CHUNKING:-1}, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
	printf '%-8s %-6s %-8s %9s %9s %9s %8s %7s\n' bytes round overlap p50_ms p90_ms p99_ms msgs/s errors
	local s r o order line sent=0
	for s in $sizes; do
		for r in $(seq 1 "$rounds"); do
			order="no yes"
			[ $((r % 2)) -eq 0 ] && order="yes no"
			for o in $order; do
				EXTRA_CONF=("av_scanner = libclamav" "clamav_database_directory = $db" "relay_scan_overlap = $o")
				start_perimd
				"$PY" "$ROOT/tests/bench_latency.py" -s "$conc" -m "$warm" -l "$s" -t rcpt@bench.test \
					"127.0.0.1:$PERIMD_PORT" >/dev/null || true
				line=$("$PY" "$ROOT/tests/bench_latency.py" -s "$conc" -m "$msgs" -l "$s" -t rcpt@bench.test \
					"127.0.0.1:$PERIMD_PORT" || true)
				sent=$((sent + warm + msgs))
				printf '%-8s %-6s %-8s %9s %9s %9s %8s %7s\n' "$s" "$r" "$o" \
					"$(sed -n 's/.*dot_p50_ms=\([^ ]*\).*/\1/p' <<<"$line")" \
					"$(sed -n 's/.*dot_p90_ms=\([^ ]*\).*/\1/p' <<<"$line")" \
					"$(sed -n 's/.*dot_p99_ms=\([^ ]*\).*/\1/p' <<<"$line")" \
					"$(sed -n 's/.* mps=\([^ ]*\).*/\1/p' <<<"$line")" \
					"$(sed -n 's/.* errors=\([^ ]*\).*/\1/p' <<<"$line")"
				kill -TERM "$PERIMD_PID"
				wait "$PERIMD_PID" 2>/dev/null || true
			done
		done
	done
	kill -TERM "$SINK_PID"
	wait "$SINK_PID" 2>/dev/null || true
	echo "sent $sent (warm-up included); $(grep '^sink ' "$sinkout" || echo 'sink: no count')"
	echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# av_bench - scanning off and on, same run (./build.sh bench av).
av_bench() {
	local conc=${AV_CONC:-100} msgs=${AV_MSGS:-3000} threads=${AV_THREADS:-0} db=$WORK/avdb
	write_av_db "$db"
	local common=("max_sessions = 4000")
	has_param stats_listen && common+=("stats_listen =")
	echo "perimd bench av: $conc sessions, $msgs messages per size, SIZES=\"$SIZES\", av_threads=$threads, $(nproc) CPUs"
	start_sink
	printf '%-8s %9s %9s %6s %8s %8s %9s %10s %9s %14s %14s\n' bytes off/s on/s ratio \
		p50_ms p99_ms engine_ms scan_msg/s scan_MB/s scanner_cpu_ms scanner_hwm_kB
	local s toff ton log spid nthr skip c0 c1 p50 p99 eng
	for s in $SIZES; do
		EXTRA_CONF=("${common[@]}")
		start_perimd
		source_run "$PERIMD_PORT" 10 "$WARMUP" "$s" >/dev/null
		toff=$(source_run "$PERIMD_PORT" "$conc" "$msgs" "$s")
		kill -TERM "$PERIMD_PID"
		wait "$PERIMD_PID" 2>/dev/null || true
		EXTRA_CONF=("${common[@]}" "av_scanner = libclamav" "clamav_database_directory = $db"
			"av_threads = $threads")
		start_perimd
		log=$WORK/perimd.$PERIMD_PORT/perimd.log
		spid=$(sed -n 's/.*scanner process \([0-9]*\) ready.*/\1/p' "$log" | head -1)
		nthr=$(sed -n 's/.*scanner process .* ms, \([0-9]*\) threads.*/\1/p' "$log" | head -1)
		source_run "$PERIMD_PORT" 10 "$WARMUP" "$s" >/dev/null
		skip=$(grep -c 'av: clean' "$log" || true)
		c0=$(cpu_ticks "$spid")
		ton=$(source_run "$PERIMD_PORT" "$conc" "$msgs" "$s")
		c1=$(cpu_ticks "$spid")
		# Latency: end of DATA to verdict (queueing included); engine: the scan itself.
		tail -n +"$((skip + 1))" "$log" | grep 'av: clean' |
			sed 's/.*scan=\([0-9.]*\), engine=\([0-9.]*\).*/\1 \2/' | sort -n >"$WORK/lat"
		read -r p50 p99 eng <<<"$(awk '{ l[NR] = $1 * 1000; e += $2 * 1000 } END {
			if (!NR) { print "NA NA NA"; exit }
			i50 = int(NR * 0.5); i99 = int(NR * 0.99); if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1
			printf "%.1f %.1f %.3f\n", l[i50], l[i99], e / NR }' "$WORK/lat")"
		printf '%-8s %9s %9s %6s %8s %8s %9s %10s %9s %14s %14s\n' "$s" \
			"$(fdiv "$msgs" "$toff")" "$(fdiv "$msgs" "$ton")" "$(fdiv "$toff" "$ton" %.2f)" \
			"$p50" "$p99" "$eng" "$(fdiv $((nthr * 1000)) "$eng" %.0f)" \
			"$(awk -v t="$nthr" -v e="$eng" -v b="$s" 'BEGIN { if (e + 0 == 0) print "NA"; else printf "%.1f", t * 1000 / e * b / 1048576 }')" \
			"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.3f)" "$(status_kb "$spid" VmHWM)"
		kill -TERM "$PERIMD_PID"
		wait "$PERIMD_PID" 2>/dev/null || true
	done
	echo "ratio = on/s over off/s; scan_msg/s, scan_MB/s = scanner threads / mean engine time (the scanner alone)"
}

# tls_bench - STARTTLS handshakes/s with an ECDSA P-256 and an RSA-2048
# key, SMTP throughput at TLS_CONC sessions with and without STARTTLS (same
# perimd, same run), and RSS per idle session with and without TLS
# (./build.sh bench tls; clients in tests/bench_tls.py).
tls_bench() {
	local conc=${TLS_CONC:-100} msgs=${TLS_MSGS:-5000} secs=${TLS_SECS:-10} idle=${TLS_IDLE:-500}
	local kind plain tls
	echo "perimd bench tls: $conc sessions, $msgs messages of ~500 bytes, handshakes for ${secs}s, $(nproc) CPUs"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/rsa.key" -out "$WORK/rsa.crt" \
		-days 2 -subj /CN=perimd.bench.test >/dev/null 2>&1
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/ec.key" \
		-out "$WORK/ec.crt" -days 2 -subj /CN=perimd.bench.test >/dev/null 2>&1
	start_sink
	for kind in ec rsa; do
		EXTRA_CONF=("smtpd_tls_cert_file = $WORK/$kind.crt" "smtpd_tls_key_file = $WORK/$kind.key")
		has_param stats_listen && EXTRA_CONF+=("stats_listen =")
		start_perimd
		local c0 c1
		c0=$(cpu_ticks "$PERIMD_PID")
		local hs
		hs=$("$PY" "$ROOT/tests/bench_tls.py" handshakes "$PERIMD_PORT" "$secs" 4)
		c1=$(cpu_ticks "$PERIMD_PID")
		echo "$kind: handshakes/s $hs; perimd CPU per handshake $(fdiv "$(( (c1 - c0) * 1000 ))" "$(awk -v h="$hs" -v s="$secs" 'BEGIN{print h*s*'"$TICK"'}')" %.2f) ms"
		if [ "$kind" = ec ]; then
			plain=$("$PY" "$ROOT/tests/bench_tls.py" throughput "$PERIMD_PORT" "$msgs" "$conc" plain)
			tls=$("$PY" "$ROOT/tests/bench_tls.py" throughput "$PERIMD_PORT" "$msgs" "$conc" tls)
			echo "throughput at $conc sessions: plaintext $plain msg/s, STARTTLS $tls msg/s, ratio $(fdiv "${tls%% *}" "${plain%% *}" %.2f)"
			kill -TERM "$PERIMD_PID"
			wait "$PERIMD_PID" 2>/dev/null || true
			start_perimd
			plain=$("$PY" "$ROOT/tests/bench_tls.py" idle "$PERIMD_PID" "$PERIMD_PORT" "$idle" plain)
			tls=$("$PY" "$ROOT/tests/bench_tls.py" idle "$PERIMD_PID" "$PERIMD_PORT" "$idle" tls)
			echo "idle sessions ($idle each): plaintext $plain kB, TLS $tls kB of RSS per session"
		fi
		kill -TERM "$PERIMD_PID"
		wait "$PERIMD_PID" 2>/dev/null || true
	done
	EXTRA_CONF=()
	echo "the Python clients share the 2 CPUs with perimd: compare the ratio and perimd's CPU per handshake"
}

# stats_bench - counting on vs compiled out (-DPERIMD_NO_STATS), alternated
# in the same run; then /metrics render time with STATS_IDLE sessions open
# (./build.sh bench stats).
stats_bench() {
	local conc=${STATS_CONC:-50} msgs=${STATS_MSGS:-4000} rounds=${STATS_ROUNDS:-3}
	local idle=${STATS_IDLE:-10000} nostats=$ROOT/build/nostats/perimd
	make -s -C "$ROOT/perimd" BUILD=../build/nostats EXTRA_CFLAGS=-DPERIMD_NO_STATS >/dev/null
	local on_bin=$PERIMD
	echo "perimd bench stats: $conc sessions, $msgs messages of 512 bytes, $rounds rounds each, $(nproc) CPUs"
	start_sink
	printf '%-6s %-9s %10s %11s\n' round counting msgs/s cpu_ms/msg
	local r mode t c0 c1 sum_on=0 sum_off=0 cpu_on=0 cpu_off=0
	for r in $(seq 1 "$rounds"); do
		for mode in on off; do
			EXTRA_CONF=("stats_listen = 127.0.0.1:$(free_port)")
			if [ "$mode" = on ]; then PERIMD=$on_bin; else PERIMD=$nostats; fi
			start_perimd
			source_run "$PERIMD_PORT" 10 "$WARMUP" 512 >/dev/null
			c0=$(cpu_ticks "$PERIMD_PID")
			t=$(source_run "$PERIMD_PORT" "$conc" "$msgs" 512)
			c1=$(cpu_ticks "$PERIMD_PID")
			printf '%-6s %-9s %10s %11s\n' "$r" "$mode" "$(fdiv "$msgs" "$t")" \
				"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.4f)"
			if [ "$mode" = on ]; then
				sum_on=$(awk -v a="$sum_on" -v b="$t" 'BEGIN { print a + b }')
				cpu_on=$((cpu_on + c1 - c0))
			else
				sum_off=$(awk -v a="$sum_off" -v b="$t" 'BEGIN { print a + b }')
				cpu_off=$((cpu_off + c1 - c0))
			fi
			kill -TERM "$PERIMD_PID"
			wait "$PERIMD_PID" 2>/dev/null || true
		done
	done
	PERIMD=$on_bin
	echo "throughput on/off: $(fdiv "$sum_off" "$sum_on" %.3f) (1.000 = no cost); CPU on/off: $(fdiv "$cpu_on" "$cpu_off" %.3f)"
	# /metrics with many sessions open.
	local sp
	sp=$(free_port)
	EXTRA_CONF=("stats_listen = 127.0.0.1:$sp" "max_sessions = $((idle + 100))")
	start_perimd
	"$PY" - "$PERIMD_PORT" "$sp" "$idle" <<'EOF'
import resource, socket, statistics, sys, time
port, sp, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
socks = []
for _ in range(n):
    socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
for s in socks:
    s.recv(512)
def get():
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", sp), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    return (time.perf_counter() - t0) * 1000, data
ms = []
for _ in range(50):
    t, data = get()
    ms.append(t)
line = [l for l in data.decode().splitlines() if l.startswith("perimd_sessions_active ")]
print("/metrics with %s: median %.2f ms, max %.2f ms over 50 GETs (%d bytes; round trip on loopback)"
      % (line[0] if line else "?", statistics.median(ms), max(ms), len(data)))
for s in socks:
    s.close()
EOF
	kill -TERM "$PERIMD_PID"
	wait "$PERIMD_PID" 2>/dev/null || true
}

# grey_bench - raw store decisions/s on SQLite (WAL, a file in $WORK) and on
# a private MariaDB (when mariadb-server is installed), one thread each;
# then SMTP throughput with greylisting on and every triplet already passed
# vs greylisting off, alternated in the same run (./build.sh bench grey).
grey_bench() {
	local n=${GREY_N:-200000} keys=${GREY_KEYS:-50000} myn=${GREY_MYSQL_N:-20000}
	local conc=${GREY_CONC:-50} msgs=${GREY_MSGS:-4000} rounds=${GREY_ROUNDS:-3}
	local bin=$WORK/bench_grey libs
	# The store code of the perimd under test (its build's library).
	libs=$(make -s -C "$ROOT/perimd" -pn 2>/dev/null | sed -n 's/^LIBS := //p')
	# shellcheck disable=SC2086
	cc -std=gnu11 -O2 -D_GNU_SOURCE -I"$ROOT/perimd" -o "$bin" "$ROOT/tests/bench_grey.c" \
		"$(dirname "$PERIMD")/libperimd.a" $libs
	echo "perimd bench grey: $(nproc) CPUs"
	printf 'store   sqlite (WAL):  %s\n' "$("$bin" "sqlite:$WORK/greylist.db" "$n" "$keys")"
	if command -v mariadb-install-db >/dev/null && [ -x /usr/sbin/mariadbd ]; then
		local md=$WORK/mariadb myport user=()
		myport=$(free_port)
		mkdir -p "$md/data"
		[ "$(id -u)" -eq 0 ] && user=(--user=root)
		mariadb-install-db --no-defaults --datadir="$md/data" --skip-test-db "${user[@]}" \
			>"$md/install.log" 2>&1
		/usr/sbin/mariadbd --no-defaults --datadir="$md/data" --socket="$md/sock" \
			--port="$myport" --bind-address=127.0.0.1 --pid-file="$md/pid" \
			--log-error="$md/err.log" --skip-log-bin --skip-grant-tables \
			--innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=2 "${user[@]}" &
		PIDS+=("$!")
		for _ in $(seq 1 300); do
			mariadb --no-defaults -S "$md/sock" -u root -e "CREATE DATABASE IF NOT EXISTS grey" \
				2>/dev/null && break
			sleep 0.2
		done
		printf 'hosts = 127.0.0.1\nport = %s\nuser = root\npassword =\ndbname = grey\n' \
			"$myport" >"$md/grey.cf"
		printf 'store   mariadb:       %s\n' "$("$bin" "mysql:$md/grey.cf" "$myn" "$((myn / 4))")"
		echo "        (innodb_flush_log_at_trx_commit = 2; each decision is one round trip)"
	else
		echo "store   mariadb:       skipped (mariadb-server not installed)"
	fi
	start_sink
	printf '%-6s %-9s %10s %11s\n' round greylist msgs/s cpu_ms/msg
	local r mode t c0 c1 sum_on=0 sum_off=0 cpu_on=0 cpu_off=0
	for r in $(seq 1 "$rounds"); do
		for mode in on off; do
			EXTRA_CONF=("stats_listen = 127.0.0.1:$(free_port)")
			[ "$mode" = on ] && EXTRA_CONF+=("greylist = yes" "greylist_delay = 0"
				"greylist_auto_whitelist_count = 0")
			start_perimd
			if [ "$mode" = on ]; then
				# First sight of the one triplet (451), then its pass.
				timeout 30 smtp-source -A -s 1 -m 2 -f a@client.bench.test -t rcpt@bench.test \
					-M client.bench.test "127.0.0.1:$PERIMD_PORT" >/dev/null 2>&1 || true
				sleep 1.1
			fi
			source_run "$PERIMD_PORT" 10 "$WARMUP" 512 >/dev/null
			c0=$(cpu_ticks "$PERIMD_PID")
			t=$(source_run "$PERIMD_PORT" "$conc" "$msgs" 512)
			c1=$(cpu_ticks "$PERIMD_PID")
			printf '%-6s %-9s %10s %11s\n' "$r" "$mode" "$(fdiv "$msgs" "$t")" \
				"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.4f)"
			if [ "$mode" = on ]; then
				sum_on=$(awk -v a="$sum_on" -v b="$t" 'BEGIN { print a + b }')
				cpu_on=$((cpu_on + c1 - c0))
				grep -q "greylist" "$WORK/perimd.$PERIMD_PORT/perimd.log" ||
					echo "bench grey: no greylisting seen in the log" >&2
			else
				sum_off=$(awk -v a="$sum_off" -v b="$t" 'BEGIN { print a + b }')
				cpu_off=$((cpu_off + c1 - c0))
			fi
			kill -TERM "$PERIMD_PID"
			wait "$PERIMD_PID" 2>/dev/null || true
		done
	done
	echo "SMTP throughput greylisting on (all passed) / off: $(fdiv "$sum_off" "$sum_on" %.3f) (target >= 0.90); CPU on/off: $(fdiv "$cpu_on" "$cpu_off" %.3f)"
}

# dns_bench - cached lookups/s across threads (tests/bench_dns.c), then
# SMTP throughput at 512 sessions with PTR/FCrDNS and sender-domain checks
# on (against dnsmasq on a loopback port) and off, with the cache hit rate.
dns_bench() {
	local conc=${DNS_CONC:-512} msgs=${DNS_MSGS:-6000} rounds=${DNS_ROUNDS:-3}
	local bin=$WORK/bench_dns libs
	libs=$(make -s -C "$ROOT/perimd" -pn 2>/dev/null | sed -n 's/^LIBS := //p')
	# shellcheck disable=SC2086
	cc -std=gnu11 -O2 -D_GNU_SOURCE -I"$ROOT/perimd" -o "$bin" "$ROOT/tests/bench_dns.c" \
		"$(dirname "$PERIMD")/libperimd.a" $libs
	echo "perimd bench dns: $(nproc) CPUs"
	local t
	for t in 1 "$(nproc)" 8; do
		printf 'cache   %s\n' "$("$bin" "$t" 2 10000)"
	done
	echo "        (target >= 1000000 lookups/s across threads)"
	local dport dlog user=()
	dport=$(free_port)
	dlog=$WORK/dnsmasq.log
	[ "$(id -u)" -eq 0 ] && user=(--user=root)
	dnsmasq -k --port="$dport" --listen-address=127.0.0.1 --bind-interfaces --no-resolv \
		--no-hosts --conf-file=/dev/null --pid-file= --log-queries --log-facility="$dlog" \
		--local=/bench.test/ --host-record=client.bench.test,127.0.0.1 \
		--mx-host=client.bench.test,mail.client.bench.test,10 \
		--host-record=mail.client.bench.test,192.0.2.25 "${user[@]}" >"$WORK/dnsmasq.out" 2>&1 &
	PIDS+=("$!")
	sleep 0.5
	start_sink
	printf '%-6s %-9s %10s %11s %9s\n' round dns msgs/s cpu_ms/msg hit_rate
	local r mode tt c0 c1 sum_on=0 sum_off=0 cpu_on=0 cpu_off=0 sport hr
	for r in $(seq 1 "$rounds"); do
		for mode in on off; do
			sport=$(free_port)
			EXTRA_CONF=("stats_listen = 127.0.0.1:$sport")
			[ "$mode" = on ] && EXTRA_CONF+=("dns_servers = 127.0.0.1:$dport"
				"reject_unknown_sender_domain = yes" "reject_unknown_client_hostname = yes"
				"reject_unknown_reverse_client_hostname = yes")
			start_perimd
			source_run "$PERIMD_PORT" 10 "$WARMUP" 512 >/dev/null
			c0=$(cpu_ticks "$PERIMD_PID")
			tt=$(source_run "$PERIMD_PORT" "$conc" "$msgs" 512)
			c1=$(cpu_ticks "$PERIMD_PID")
			hr=$("$PY" - "$sport" <<'EOF'
import re, sys, urllib.request
t = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
h = re.search(r'perimd_dns_cache_total\{result="hit"\} (\d+)', t)
m = re.search(r'perimd_dns_cache_total\{result="miss"\} (\d+)', t)
h, m = int(h.group(1)) if h else 0, int(m.group(1)) if m else 0
print("%.4f" % (h / (h + m)) if h + m else "-")
EOF
)
			printf '%-6s %-9s %10s %11s %9s\n' "$r" "$mode" "$(fdiv "$msgs" "$tt")" \
				"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.4f)" "$hr"
			if [ "$mode" = on ]; then
				sum_on=$(awk -v a="$sum_on" -v b="$tt" 'BEGIN { print a + b }')
				cpu_on=$((cpu_on + c1 - c0))
			else
				sum_off=$(awk -v a="$sum_off" -v b="$tt" 'BEGIN { print a + b }')
				cpu_off=$((cpu_off + c1 - c0))
			fi
			kill -TERM "$PERIMD_PID"
			wait "$PERIMD_PID" 2>/dev/null || true
		done
	done
	echo "queries that reached dnsmasq: $(grep -c 'query\[' "$dlog")"
	echo "SMTP throughput DNS checks on / off at $conc sessions: $(fdiv "$sum_off" "$sum_on" %.3f) (target >= 0.80); CPU on/off: $(fdiv "$cpu_on" "$cpu_off" %.3f)"
}

# maps_bench - file: maps (tests/bench_maps.c on the build's libperimd.a):
# load time of MAPS_N recipients (issue target < 2 s) and lookups/s (target
# >= 1,000,000), best of MAPS_ROUNDS; then Postfix's postmap on the same
# keys as a peer in the same run (building hash:, and `postmap -q -` over
# MAPS_PEER_Q keys: a process reading keys from a pipe, so the ratio shows
# in-process lookups against a table server's, not like for like).
maps_bench() {
	local n=${MAPS_N:-1000000} nl=${MAPS_LOOKUPS:-5000000} rounds=${MAPS_ROUNDS:-3}
	local pq=${MAPS_PEER_Q:-200000} bin=$WORK/bench_maps libs r
	libs=$(make -s -C "$ROOT/perimd" -pn 2>/dev/null | sed -n 's/^LIBS := //p')
	# shellcheck disable=SC2086
	cc -std=gnu11 -O2 -D_GNU_SOURCE -I"$ROOT/perimd" -o "$bin" "$ROOT/tests/bench_maps.c" \
		"$(dirname "$PERIMD")/libperimd.a" $libs -lsqlite3 -lmariadb -lcares -lbearssl -lclamav -lpthread
	echo "perimd bench maps: $(nproc) CPUs, $n recipients, load average $(cut -d' ' -f1 /proc/loadavg)"
	for r in $(seq 1 "$rounds"); do
		echo "round $r:"
		"$bin" "$WORK" "$n" "$nl" | sed 's/^/  /'
	done
	if command -v postmap >/dev/null; then
		awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++)
			printf "user%d.%x@example%d.com OK\n", i, (i * 2654435761) % 4294967296, i % 97 }' \
			>"$WORK/peer"
		local t0 t1
		t0=$(date +%s.%N)
		postmap -c /etc/postfix "hash:$WORK/peer" 2>/dev/null || postmap "hash:$WORK/peer"
		t1=$(date +%s.%N)
		echo "peer postmap hash: build $n keys in $(fdiv "$(echo "$t1 - $t0" | bc)" 1 %.3f) s"
		awk -v q="$pq" -v n="$n" 'BEGIN { srand(1); for (i = 0; i < q; i++) { k = int(rand() * n);
			printf "user%d.%x@example%d.com\n", k, (k * 2654435761) % 4294967296, k % 97 } }' \
			>"$WORK/peer.q"
		t0=$(date +%s.%N)
		postmap -q - "hash:$WORK/peer" <"$WORK/peer.q" | wc -l | sed 's/^/peer postmap -q -: found /'
		t1=$(date +%s.%N)
		echo "peer postmap -q -: $(fdiv "$pq" "$(echo "$t1 - $t0" | bc)" %.0f) lookups/s"
	fi
}

if [ "${1:-}" = maps ]; then
	maps_bench
	exit 0
fi

# ldap_slapd DIR N - a private slapd on a loopback port (LDAP_PORT) with N
# users uI@bench.test (I from 0), its stats log (one line per operation)
# in DIR/slapd.log; LDAP_SLAPD_PID.
ldap_slapd() {
	local d=$1 n=$2 s
	mkdir -p "$d/db"
	LDAP_PORT=$(free_port)
	{
		for s in core cosine inetorgperson; do echo "include /etc/ldap/schema/$s.schema"; done
		echo "pidfile $d/slapd.pid"
		echo "modulepath /usr/lib/ldap"
		echo "moduleload back_mdb"
		echo "database mdb"
		echo "suffix \"dc=bench,dc=test\""
		echo "rootdn \"cn=admin,dc=bench,dc=test\""
		echo "directory $d/db"
		echo "maxsize 1073741824"
		echo "index objectClass eq"
		echo "index mail eq"
		echo "access to * by * read"
	} >"$d/slapd.conf"
	{
		printf 'dn: dc=bench,dc=test\nobjectClass: dcObject\nobjectClass: organization\no: Bench\ndc: bench\n\n'
		printf 'dn: ou=people,dc=bench,dc=test\nobjectClass: organizationalUnit\nou: people\n\n'
		awk -v n="$n" 'BEGIN { for (i = 0; i < n; i++)
			printf "dn: uid=u%d,ou=people,dc=bench,dc=test\nobjectClass: inetOrgPerson\nuid: u%d\ncn: u%d\nsn: u%d\nmail: u%d@bench.test\n\n", i, i, i, i, i }'
	} >"$d/users.ldif"
	slapadd -q -f "$d/slapd.conf" -l "$d/users.ldif" >"$d/slapadd.log" 2>&1 ||
		{ cat "$d/slapadd.log" >&2; return 1; }
	# -d 256: the stats log on stderr, one "SRCH base=" line per search.
	slapd -d 256 -f "$d/slapd.conf" -h "ldap://127.0.0.1:$LDAP_PORT/" >"$d/slapd.log" 2>&1 &
	LDAP_SLAPD_PID=$!
	PIDS+=("$LDAP_SLAPD_PID")
	for _ in $(seq 1 100); do
		(exec 3<>"/dev/tcp/127.0.0.1/$LDAP_PORT") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "bench: slapd did not start" >&2
	tail -5 "$d/slapd.log" >&2
	return 1
}

# ldap_postfix DIR PORT CF - a private Postfix instance (its own
# config_directory DIR/etc, queue_directory DIR/spool; /etc/postfix is not
# touched) on 127.0.0.1:PORT relaying bench.test to the sink, with
# relay_recipient_maps = proxy:ldap:CF.
ldap_postfix() {
	local d=$1 port=$2 cf=$3
	mkdir -p "$d/etc" "$d/spool" "$d/data"
	chown postfix "$d/data"
	{
		echo "compatibility_level = 3.6"
		echo "queue_directory = $d/spool"
		echo "data_directory = $d/data"
		echo "mail_owner = postfix"
		echo "setgid_group = postdrop"
		echo "myhostname = postfix.bench.test"
		echo "mydestination ="
		echo "inet_interfaces = 127.0.0.1"
		echo "inet_protocols = ipv4"
		echo "mynetworks = 127.0.0.0/8"
		echo "relay_domains = bench.test"
		echo "relay_recipient_maps = proxy:ldap:$cf"
		echo "relayhost = [127.0.0.1]:$SINK_PORT"
		echo "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination"
		echo "smtpd_client_connection_count_limit = 0"
		echo "smtpd_client_connection_rate_limit = 0"
		echo "default_process_limit = 250"
		echo "default_destination_concurrency_limit = 100"
		echo "alias_maps ="
		echo "alias_database ="
		echo "local_recipient_maps ="
		echo "smtp_tls_security_level = none"
		echo "smtpd_tls_security_level = none"
		echo "maillog_file_prefixes = $d"
		echo "maillog_file = $d/maillog"
	} >"$d/etc/main.cf"
	cat >"$d/etc/master.cf" <<MASTER
127.0.0.1:$port inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
MASTER
	postfix -c "$d/etc" check >"$d/check.log" 2>&1 || { cat "$d/check.log" >&2; return 1; }
	postfix -c "$d/etc" start >"$d/start.log" 2>&1 || { cat "$d/start.log" "$d/maillog" >&2; return 1; }
	LDAP_PF_DIR=$d
	wait_banner "$port"
}

# ldap_queue_len DIR - messages in a Postfix queue not yet delivered.
ldap_queue_len() {
	find "$1/spool/maildrop" "$1/spool/incoming" "$1/spool/active" "$1/spool/deferred" \
		"$1/spool/hold" -type f 2>/dev/null | wc -l
}

# ldap_searches LOG - searches slapd logged so far.
ldap_searches() { grep -c ' SRCH base=' "$1" || true; }

# ldap_run NAME PORT FIRST - LDAP_WARMUP then LDAP_MSGS messages through
# PORT at LDAP_CONC sessions, each to a recipient of its own (uFIRST...):
# prints a result row. For Postfix (LDAP_PF_DIR set) a message counts as
# delivered when its queue is empty again.
ldap_run() {
	local name=$1 port=$2 first=$3 n=$LDAP_MSGS out t0 t1 s0 s1 c0 c1 q
	$PY "$ROOT/tests/bench_latency.py" -s 10 -m "$LDAP_WARMUP" -l 512 -t "u%d@bench.test" \
		--rcpt-from=$((first + n)) "127.0.0.1:$port" >"$WORK/warm.$name" ||
		{ echo "bench: warm-up of $name failed: $(cat "$WORK/warm.$name")" >&2; return 1; }
	if [ -n "${LDAP_PF_DIR:-}" ]; then
		for _ in $(seq 1 300); do [ "$(ldap_queue_len "$LDAP_PF_DIR")" -eq 0 ] && break; sleep 0.1; done
	fi
	s0=$(ldap_searches "$WORK/slapd/slapd.log")
	c0=$(cpu_ticks "$LDAP_SLAPD_PID")
	t0=$(now)
	out=$($PY "$ROOT/tests/bench_latency.py" -s "$LDAP_CONC" -m "$n" -l 512 -t "u%d@bench.test" \
		--rcpt-from="$first" "127.0.0.1:$port") || echo "bench: $name: $out" >&2
	if [ -n "${LDAP_PF_DIR:-}" ]; then
		for _ in $(seq 1 6000); do
			q=$(ldap_queue_len "$LDAP_PF_DIR")
			[ "$q" -eq 0 ] && break
			sleep 0.05
		done
	fi
	t1=$(now)
	c1=$(cpu_ticks "$LDAP_SLAPD_PID")
	sleep 0.5 # slapd writes its last log lines
	s1=$(ldap_searches "$WORK/slapd/slapd.log")
	local el ok
	el=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
	ok=$(sed -n 's/.* ok=\([0-9]*\) .*/\1/p' <<<"$out")
	printf '%-8s %9s %8s %10s %13s %12s %14s %10s\n' "$name" "${ok:-0}" "$el" "$(fdiv "${ok:-0}" "$el")" \
		"$(fdiv $((s1 - s0)) "${ok:-0}" %.2f)" "$(fdiv $(((c1 - c0) * 1000)) "$TICK" %.0f)" \
		"$(fdiv $(((c1 - c0) * 1000)) $((TICK * ${ok:-1})) %.3f)" \
		"$(sed -n 's/.* txn_p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")"
	eval "LDAP_MPS_$name=$(fdiv "${ok:-0}" "$el")"
}

# ldap_bench - relay_recipient_maps over LDAP (./build.sh bench ldap):
# Postfix with proxy:ldap: (a private instance, postfix-ldap) against
# perimd with ldap:, the same slapd and .cf, same run, LDAP_CONC (100)
# sessions, LDAP_MSGS (3000) messages of 512 bytes each to a listed
# recipient of its own (no cache can answer), relayed to smtp-sink:
# delivered messages/s, LDAP searches per message (slapd's stats log),
# slapd CPU in all and per message, client-side p99 of a transaction.
ldap_bench() {
	LDAP_MSGS=${LDAP_MSGS:-3000}
	LDAP_CONC=${LDAP_CONC:-100}
	LDAP_WARMUP=${LDAP_WARMUP:-200}
	command -v slapd >/dev/null || { echo "bench ldap: slapd is not installed" >&2; return 1; }
	[ -f /usr/lib/postfix/postfix-ldap.so ] || { echo "bench ldap: postfix-ldap is not installed" >&2; return 1; }
	chmod 755 "$WORK"
	echo "perimd bench ldap: $LDAP_MSGS messages of 512 bytes at $LDAP_CONC sessions, each to its own" \
		"listed recipient; $(nproc) CPUs (shared: compare within this run), load $(cut -d' ' -f1 /proc/loadavg)"
	ldap_slapd "$WORK/slapd" $((2 * (LDAP_MSGS + LDAP_WARMUP)))
	start_sink
	local cf=$WORK/ldap-recipients.cf
	{
		echo "server_host = ldap://127.0.0.1:$LDAP_PORT"
		echo "search_base = ou=people,dc=bench,dc=test"
		echo "query_filter = (mail=%s)"
		echo "result_attribute = mail"
		echo "domain = bench.test"
		echo "version = 3"
		echo "timeout = 10"
	} >"$cf"
	chmod 644 "$cf"
	printf '%-8s %9s %8s %10s %13s %12s %14s %10s\n' system delivered seconds msgs/s ldap_srch/msg \
		slapd_cpu_ms slapd_ms/msg p99_ms
	local pfport
	pfport=$(free_port)
	ldap_postfix "$WORK/pf" "$pfport" "$cf" || return 1
	ldap_run postfix "$pfport" 0
	postfix -c "$WORK/pf/etc" stop >/dev/null 2>&1 || true
	LDAP_PF_DIR=
	EXTRA_CONF=("relay_recipient_maps = ldap:$cf")
	start_perimd
	ldap_run perimd "$PERIMD_PORT" $((LDAP_MSGS + LDAP_WARMUP))
	kill -TERM "$PERIMD_PID"
	wait "$PERIMD_PID" 2>/dev/null || true
	echo "perimd/postfix: $(fdiv "$LDAP_MPS_perimd" "$LDAP_MPS_postfix" %.2f)x messages/s" \
		"(both with the Python client tests/bench_latency.py, which shares the CPUs)"
}

if [ "${1:-}" = ldap ]; then
	ldap_bench
	exit 0
fi

if [ "${1:-}" = dns ]; then
	dns_bench
	exit 0
fi

# threads_bench - the same load with io_threads = 1, then 2 (THREADS_LIST),
# at THREADS_CONC sessions: messages/s, perimd CPU per message, futex
# system calls per message (a lock that contends shows up here: an
# uncontended mutex never enters the kernel), then a perf profile of the
# last run with the share of lock and atomic symbols (./build.sh bench threads).
threads_bench() {
	local conc=${THREADS_CONC:-"100 512"} msgs=${THREADS_MSGS:-3000} list=${THREADS_LIST:-"1 2"}
	local t c tm c0 c1 perfout futex
	echo "perimd bench threads: $msgs messages of 512 bytes, io_threads in ($list), $(nproc) CPUs"
	start_sink
	printf '%-10s %-9s %10s %11s %12s\n' io_threads sessions msgs/s cpu_ms/msg futex/msg
	for t in $list; do
		IO_THREADS=$t
		EXTRA_CONF=("stats_listen =")
		start_perimd
		source_run "$PERIMD_PORT" 10 "$WARMUP" 512 >/dev/null
		for c in $conc; do
			perfout=$WORK/perf.$t.$c
			futex=NA
			if command -v perf >/dev/null; then
				perf stat -x, -e syscalls:sys_enter_futex -p "$PERIMD_PID" -o "$perfout" &
				local pp=$!
				sleep 0.2
			fi
			c0=$(cpu_ticks "$PERIMD_PID")
			tm=$(source_run "$PERIMD_PORT" "$c" "$msgs" 512)
			c1=$(cpu_ticks "$PERIMD_PID")
			if [ -n "${pp:-}" ]; then
				kill -INT "$pp" 2>/dev/null
				wait "$pp" 2>/dev/null || true
				futex=$(awk -F, -v m="$msgs" '/sys_enter_futex/ { printf "%.3f", $1 / m }' "$perfout")
				pp=
			fi
			printf '%-10s %-9s %10s %11s %12s\n' "$t" "$c" "$(fdiv "$msgs" "$tm")" \
				"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.3f)" "${futex:-NA}"
		done
		if [ "$t" = "${list##* }" ] && command -v perf >/dev/null; then
			# Where the time goes with the most threads, at the most sessions.
			perf record -q -g -o "$WORK/perf.data" -p "$PERIMD_PID" 2>/dev/null &
			local pr=$!
			sleep 0.2
			source_run "$PERIMD_PORT" "${conc##* }" "$msgs" 512 >/dev/null
			kill -INT "$pr" 2>/dev/null
			wait "$pr" 2>/dev/null || true
			perf report -q -i "$WORK/perf.data" --no-children -g none --sort symbol 2>/dev/null |
				grep -v '^$' >"$WORK/perf.txt" || true
			echo "perf profile (io_threads=$t, ${conc##* } sessions), top symbols:"
			head -15 "$WORK/perf.txt"
			echo "lock/atomic symbols (mutex, futex, spin, rwlock, __lll):"
			grep -Ei 'mutex|futex|spin|rwlock|__lll' "$WORK/perf.txt" | head -10 || echo "  none above perf's threshold"
		fi
		kill -TERM "$PERIMD_PID"
		wait "$PERIMD_PID" 2>/dev/null || true
	done
	IO_THREADS=0
	echo "smtp-source and smtp-sink share the $(nproc) CPUs with perimd: compare io_threads rows in this run only"
}

# abuse_bench - smtp-source throughput at ABUSE_CONC sessions alone, then
# with hostile clients beside it (tests/bench_abuse.py: ABUSE_SLOW
# slowloris, ABUSE_FLOOD pipelining flooders that never read, ABUSE_GARBAGE
# garbage streams), same perimd (smtpd_timeout = 10s), same run; perimd's
# CPU per relayed message and RSS (./build.sh bench abuse).
abuse_bench() {
	local conc=${ABUSE_CONC:-100} msgs=${ABUSE_MSGS:-10000} slow=${ABUSE_SLOW:-1000}
	local flood=${ABUSE_FLOOD:-4} garbage=${ABUSE_GARBAGE:-4}
	local t0 t1 c0 c1 c2 c3 ap r0 r1
	echo "perimd bench abuse: $msgs messages of 512 bytes at $conc sessions; abuse: $slow slowloris," \
		"$flood flooders, $garbage garbage streams; $(nproc) CPUs"
	start_sink
	EXTRA_CONF=("stats_listen =" "smtpd_timeout = 10s" "max_sessions = $((slow + conc + 500))")
	start_perimd
	source_run "$PERIMD_PORT" 10 "$WARMUP" 512 >/dev/null
	c0=$(cpu_ticks "$PERIMD_PID")
	t0=$(source_run "$PERIMD_PORT" "$conc" "$msgs" 512)
	c1=$(cpu_ticks "$PERIMD_PID")
	r0=$(status_kb "$PERIMD_PID" VmRSS)
	"$PY" "$ROOT/tests/bench_abuse.py" "$PERIMD_PORT" "$slow" "$flood" "$garbage" 2>"$WORK/abuse.log" &
	ap=$!
	PIDS+=("$ap")
	# Past smtpd_timeout: the first slowloris have been cut and come back,
	# the garbage streams have reached the error limit and reconnected.
	sleep 12
	c2=$(cpu_ticks "$PERIMD_PID")
	local a0 a1
	a0=$(cpu_ticks "$ap")
	t1=$(source_run "$PERIMD_PORT" "$conc" "$msgs" 512)
	c3=$(cpu_ticks "$PERIMD_PID")
	a1=$(cpu_ticks "$ap")
	r1=$(status_kb "$PERIMD_PID" VmRSS)
	kill -TERM "$ap" 2>/dev/null
	wait "$ap" 2>/dev/null || true
	printf '%-14s %10s %11s %9s\n' "" msgs/s cpu_ms/msg rss_kB
	printf '%-14s %10s %11s %9s\n' alone "$(fdiv "$msgs" "$t0")" \
		"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.3f)" "$r0"
	printf '%-14s %10s %11s %9s\n' "under abuse" "$(fdiv "$msgs" "$t1")" \
		"$(fdiv $(((c3 - c2) * 1000)) $((TICK * msgs)) %.3f)" "$r1"
	echo "throughput under abuse / alone: $(fdiv "$t0" "$t1" %.2f); abusers: $(tail -1 "$WORK/abuse.log")"
	echo "(CPU under abuse includes serving the abusers; the Python abuser used" \
		"$(fdiv $((a1 - a0)) "$TICK" %.2f) CPU s of the $(fdiv "$t1" 1 %.2f) s run on the same CPUs)"
	kill -TERM "$PERIMD_PID"
	wait "$PERIMD_PID" 2>/dev/null || true
}

# cap_bench - relay_destination_concurrency_limit (connections per backend)
# at CAP_CONC (512) sessions of CAP_SIZE (512) bytes: direct, then perimd
# with each limit of CAP_LIST ("100 1000"; 100 is the default), ROUNDS
# (CAP_ROUNDS, 2) alternating in one run, CAP_MSGS (5000) messages per run:
# msgs/s, the ratio to the direct run just before, perimd's CPU per
# message, and the pool waits per message (perimd_backend_pool_waits_total
# on /metrics: a message that found every connection of the backend busy)
# and the backend connections open at the end (./build.sh bench cap).
cap_bench() {
	local conc=${CAP_CONC:-512} size=${CAP_SIZE:-512} msgs=${CAP_MSGS:-5000}
	local list=${CAP_LIST:-"100 1000"} rounds=${CAP_ROUNDS:-2} r cap td tp c0 c1 w0 w1 sport conns
	echo "perimd bench cap: $msgs messages of $size bytes at $conc sessions, limits ($list), $rounds rounds, $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg)"
	start_sink
	printf '%-6s %-7s %10s %10s %7s %11s %11s %9s\n' round cap direct/s perimd/s ratio cpu_ms/msg waits/msg conns
	for r in $(seq 1 "$rounds"); do
		for cap in $list; do
			sport=$(free_port)
			EXTRA_CONF=("stats_listen = 127.0.0.1:$sport" "relay_destination_concurrency_limit = $cap")
			start_perimd
			source_run "$PERIMD_PORT" 10 "$WARMUP" "$size" >/dev/null
			td=$(source_run "$SINK_PORT" "$conc" "$msgs" "$size")
			w0=$(metric "$sport" perimd_backend_pool_waits_total)
			c0=$(cpu_ticks "$PERIMD_PID")
			tp=$(source_run "$PERIMD_PORT" "$conc" "$msgs" "$size")
			c1=$(cpu_ticks "$PERIMD_PID")
			w1=$(metric "$sport" perimd_backend_pool_waits_total)
			conns=$(ss -Htn state established "( dport = :$SINK_PORT )" 2>/dev/null | wc -l)
			printf '%-6s %-7s %10s %10s %7s %11s %11s %9s\n' "$r" "$cap" "$(fdiv "$msgs" "$td")" \
				"$(fdiv "$msgs" "$tp")" "$(fdiv "$td" "$tp" %.2f)" \
				"$(fdiv $(((c1 - c0) * 1000)) $((TICK * msgs)) %.3f)" \
				"$(fdiv "$((w1 - w0))" "$msgs" %.3f)" "$conns"
			kill -TERM "$PERIMD_PID"
			wait "$PERIMD_PID" 2>/dev/null || true
		done
	done
	echo "shared machine (smtp-source, smtp-sink and perimd on the same $(nproc) CPUs): compare ratios within a round"
}

# metric PORT NAME - the value of an unlabelled counter on /metrics (0 if absent).
metric() {
	"$PY" - "$1" "$2" <<'PYEOF'
import sys, urllib.request
t = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
v = [l.split()[-1] for l in t.splitlines() if l.split(" ")[0] == sys.argv[2]]
print(int(float(v[0])) if v else 0)
PYEOF
}

if [ "${1:-}" = cap ]; then
	cap_bench
	exit 0
fi

if [ "${1:-}" = abuse ]; then
	abuse_bench
	exit 0
fi

if [ "${1:-}" = threads ]; then
	threads_bench
	exit 0
fi

if [ "${1:-}" = grey ]; then
	grey_bench
	exit 0
fi

if [ "${1:-}" = stats ]; then
	stats_bench
	exit 0
fi

if [ "${1:-}" = sigdb ]; then
	PERIMD=$PERIMD exec "$PY" "$ROOT/tests/bench_sigdb.py"
fi

if [ "${1:-}" = av ]; then
	av_bench
	exit 0
fi

if [ "${1:-}" = overlap ]; then
	overlap_bench
	exit 0
fi

if [ "${1:-}" = tls ]; then
	tls_bench
	exit 0
fi

if [ "${1:-}" = peers-features ]; then
	peers_features
	exit 0
fi

# milter_bench - the same rspamd milter behind Postfix (smtpd_milters) and
# behind perimd (smtpd_milters), one run (./build.sh bench milter; MI_CONC
# (100), MI_SIZES ("512 102400"), MI_MSGS (1000), MI_WARMUP (50)). The peer
# script (../shared/bench/peer-bench.sh, or PEER_BENCH) does the setup, the
# sink and the SUT's CPU accounting (its cgroup); rspamd (proxy worker in
# milter mode, self_scan, a configuration written here, DNS kept short:
# loopback only) runs outside the SUT, and its own CPU per message (master
# and workers, /proc) is reported beside each system's. Postfix gets the
# milter through a `postfix` wrapper first in PATH (postconf -e after the
# peer script wrote main.cf). /etc/postfix/main.cf and master.cf are put
# back as found. The machine is shared: compare same-run ratios.
milter_bench() {
	local peer=${PEER_BENCH:-$ROOT/../shared/bench/peer-bench.sh}
	[ -f "$peer" ] || { echo "bench milter: $peer not found; skipped (PEER_BENCH=...)"; return 0; }
	local m
	for m in rspamd postfix smtp-source; do
		command -v "$m" >/dev/null || { echo "bench milter: $m missing (apt-get install rspamd postfix)" >&2; exit 1; }
	done
	local base=${OUT:-/tmp/perimd-bench-milter.$(date +%Y%m%d-%H%M%S)} d rport size sys t0 t1
	d=/tmp/perimd-milter-bench.$$
	PA_DIR=$d
	mkdir -p "$base" "$d/rs/local.d" "$d/rs/override.d" "$d/rs/db" "$d/rs/run" "$d/pfbin" "$d/p/lib" "$d/p/spool"
	# /etc/postfix as found: main.cf put back, or removed if there was none.
	save_postfix_conf "$d/etc-postfix"
	rport=$(free_port)
	cat >"$d/rs/local.d/worker-proxy.inc" <<-EOF
	bind_socket = "127.0.0.1:$rport";
	milter = yes;
	timeout = 120s;
	upstream "local" { default = yes; self_scan = yes; }
	count = 1;
	EOF
	echo "enabled = false;" >"$d/rs/override.d/worker-normal.inc"
	echo "enabled = false;" >"$d/rs/override.d/worker-fuzzy.inc"
	echo "bind_socket = \"127.0.0.1:$(free_port)\";" >"$d/rs/override.d/worker-controller.inc"
	printf 'type = "file";\nfilename = "%s";\nlevel = "warning";\n' "$d/rs/rspamd.log" >"$d/rs/local.d/logging.inc"
	# hs_cache_dir: rspamd's compiled hyperscan databases, kept between runs
	# (the tests use the same directory; keyed by content).
	mkdir -p /var/tmp/perimd-test-rspamd-hs
	printf 'dns { timeout = 0.3s; retransmits = 1; }\nlocal_addrs = [];\nhs_cache_dir = "%s";\n' \
		/var/tmp/perimd-test-rspamd-hs >"$d/rs/local.d/options.inc"
	printf 'use = ["x-spamd-result", "x-spam-status"];\nskip_local = false;\nskip_authenticated = false;\n' \
		>"$d/rs/local.d/milter_headers.conf"
	rspamd -f -i -u root -g root "--var=LOCAL_CONFDIR=$d/rs" "--var=DBDIR=$d/rs/db" \
		"--var=RUNDIR=$d/rs/run" "--var=LOGDIR=$d/rs" </dev/null >"$d/rs/out" 2>&1 &
	local rpid=$!
	PIDS+=("$rpid")
	"$PY" - "$rport" "$rpid" <<-'EOF' || { tail -20 "$d/rs/rspamd.log" >&2; exit 1; }
	import os, socket, sys, time
	port, pid, deadline = int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + 180
	while time.monotonic() < deadline:
	    try:
	        socket.create_connection(("127.0.0.1", port), timeout=2).close()
	        sys.exit(0)
	    except OSError:
	        os.kill(pid, 0)
	        time.sleep(0.2)
	sys.exit("rspamd not listening after 180 s")
	EOF
	# rs_ticks - CPU ticks of rspamd's master and its workers.
	rs_ticks() {
		"$PY" - "$rpid" <<-'EOF'
		import os, sys
		master, total = int(sys.argv[1]), 0
		for p in os.listdir("/proc"):
		    if not p.isdigit():
		        continue
		    try:
		        f = open("/proc/%s/stat" % p).read().rsplit(")", 1)[1].split()
		    except OSError:
		        continue
		    if int(p) == master or int(f[1]) == master:
		        total += int(f[11]) + int(f[12])
		print(total)
		EOF
	}
	cat >"$d/pfbin/postfix" <<-EOF
	#!/usr/bin/env bash
	[ "\${1:-}" = start ] || exec /usr/sbin/postfix "\$@"
	/usr/sbin/postconf -e "smtpd_milters = inet:127.0.0.1:$rport" "milter_default_action = tempfail" \
	  "milter_content_timeout = 120s" || exit 1
	exec /usr/sbin/postfix start
	EOF
	chmod 755 "$d/pfbin/postfix"
	{
		peer_conf "$d/p"
		echo "log_to = stderr"
		has_param greylist && echo "greylist = no"
		echo "smtpd_milters = inet:127.0.0.1:$rport"
		echo "milter_content_timeout = 120s"
	} >"$d/p/perimd.conf"
	export PERIMD_CMD="$PERIMD -f -c $d/p/perimd.conf -o smtpd_listen=127.0.0.1:{PORT} -o relay_backends=[127.0.0.1]:{SINK_PORT} -o relay_domains=bench.test"
	export CONC=${MI_CONC:-100} MSGS=${MI_MSGS:-1000} REPS=1 WARMUP=${MI_WARMUP:-50} NO_INSTALL=1
	# Free ports, not the peer script's fixed 2525-2528 (the machine is shared).
	export SINK_PORT=${SINK_PORT:-$(free_port)} POSTFIX_PORT=${POSTFIX_PORT:-$(free_port)}
	export PERIMD_PORT=${PERIMD_PORT:-$(free_port)} HARAKA_PORT=${HARAKA_PORT:-$(free_port)}
	local sizes=${MI_SIZES:-"512 102400"}
	echo "bench milter: $peer, rspamd on 127.0.0.1:$rport (results under $base; CONC=$CONC SIZES=\"$sizes\" MSGS=$MSGS)"
	echo "bench milter: load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$base/load.txt"
	: >"$base/rspamd_cpu.txt"
	for size in $sizes; do
		for sys in postfix perimd; do
			t0=$(rs_ticks)
			if [ "$sys" = postfix ]; then
				PATH=$d/pfbin:$PATH SIZES=$size OUT=$base/$sys-$size bash "$peer" run postfix
			else
				SIZES=$size OUT=$base/$sys-$size bash "$peer" run perimd
			fi
			t1=$(rs_ticks)
			echo "$sys $size $((t1 - t0))" >>"$base/rspamd_cpu.txt"
		done
	done
	echo "bench milter: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$base/load.txt"
	restore_postfix_conf
	"$PY" - "$base" "$TICK" "$WARMUP" "$MSGS" <<-'EOF' | tee "$base/table.txt"
	import os, sys
	base, hz, warm, msgs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
	rs = {}
	for l in open(os.path.join(base, "rspamd_cpu.txt")):
	    s, size, t = l.split()
	    rs[(s, int(size))] = int(t)
	print("delivered msgs/s; SUT CPU ms per msg (rspamd excluded); rspamd CPU ms per msg (warm-up included)")
	print("%-6s %-8s %8s %9s %11s %9s %5s %s" % ("bytes", "system", "msgs/s", "SUTcpu", "rspamdcpu", "vsPf_cpu", "lost", "status"))
	rows = {}
	for (s, size) in sorted(rs, key=lambda k: (k[1], k[0] != "postfix")):
	    try:
	        lines = open(os.path.join(base, "%s-%d" % (s, size), "results.txt"))
	    except OSError:
	        continue
	    for line in lines:
	        if line.startswith("run "):
	            dd = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
	            if dd.get("sut") == s:
	                rows[(s, size)] = dd
	for (s, size) in sorted(rows, key=lambda k: (k[1], k[0] != "postfix")):
	    x = rows[(s, size)]
	    c = float(x.get("sut_cpu_ms_per_msg", "nan"))
	    pf = rows.get(("postfix", size), {})
	    pc = float(pf.get("sut_cpu_ms_per_msg", "nan"))
	    r = rs[(s, size)] / hz * 1000 / (warm + msgs)
	    print("%-6d %-8s %8s %9.3f %11.3f %9s %5s %s" % (size, s, x.get("deliver_mps"), c, r,
	          "%.2fx" % (c / pc) if s != "postfix" and pc == pc and pc else "", x.get("lost"), x.get("status")))
	EOF
	kill -TERM "$rpid" 2>/dev/null || true
	for _ in $(seq 1 100); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
	rm -rf "$d" 2>/dev/null || true
	PA_DIR=""
}

if [ "${1:-}" = milter ]; then
	milter_bench
	exit 0
fi

if [ "${1:-}" = peers-av ]; then
	peers_av
	exit 0
fi

if [ "${1:-}" = peers ]; then
	peers
	exit 0
fi

if [ "${1:-}" = seed ]; then
	rm -rf "$WORK"
	exec "$PY" "$ROOT/tests/bench_seed.py"
fi

if [ "${1:-}" = ab ]; then
	shift
	ab_bench "$@"
	exit 0
fi

if [ "${1:-}" = latency ]; then
	latency_bench
	exit 0
fi

echo "perimd bench: MSGS=$MSGS CONC=\"$CONC\" SIZES=\"$SIZES\" on $(nproc) CPUs, $($PERIMD -V 2>/dev/null | head -1 || true)"
start_sink
start_perimd
# Warm-up (pools, allocator), not measured.
source_run "$PERIMD_PORT" 10 "$WARMUP" 512 >/dev/null

printf '%-9s %-7s %11s %11s %7s %9s %11s %12s\n' sessions bytes direct/s perimd/s ratio cpu_s cpu_ms/msg peak_rss_kB
for c in $CONC; do
	for s in $SIZES; do
		td=$(source_run "$SINK_PORT" "$c" "$MSGS" "$s")
		c0=$(cpu_ticks "$PERIMD_PID")
		tp=$(source_run "$PERIMD_PORT" "$c" "$MSGS" "$s")
		c1=$(cpu_ticks "$PERIMD_PID")
		direct=$(fdiv "$MSGS" "$td")
		via=$(fdiv "$MSGS" "$tp")
		cpu=$(fdiv $((c1 - c0)) "$TICK" %.2f)
		printf '%-9s %-7s %11s %11s %7s %9s %11s %12s\n' "$c" "$s" "$direct" "$via" \
			"$(fdiv "$via" "$direct" %.2f)" "$cpu" "$(fdiv $(((c1 - c0) * 1000)) $((TICK * MSGS)) %.3f)" \
			"$(status_kb "$PERIMD_PID" VmHWM)"
	done
done

# Idle sessions on a fresh perimd, so the heap of the runs above does not hide them.
kill -TERM "$PERIMD_PID"
wait "$PERIMD_PID" 2>/dev/null || true
start_perimd
"$PY" - "$PERIMD_PID" "$PERIMD_PORT" "$IDLE" "$MIXED" "$MIXED_MSGS" "$RUN_TIMEOUT" <<'EOF'
import os, resource, socket, subprocess, sys, time
pid, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
mixed, mixed_msgs, run_timeout = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
# IDLE=10000 needs the descriptors (and client ports: 4 source addresses).
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
def rss():
    for l in open("/proc/%d/status" % pid):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
before = rss()
socks = []
deadline = time.monotonic() + 60
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=max(1, deadline - time.monotonic()),
                                 source_address=("127.0.0.%d" % (2 + len(socks) % 4), 0))
    socks.append(s)
greeted = 0
for s in socks:
    if s.makefile("rb").readline().startswith(b"220"):
        greeted += 1
time.sleep(0.5)  # let the loops settle; RSS is sampled, not asserted
after = rss()
print("idle sessions: %d greeted of %d; RSS %d kB -> %d kB; %.1f kB per session"
      % (greeted, n, before, after, (after - before) / n))
if mixed:
    # Active sessions beside the idle ones: smtp-source over more client
    # addresses, while every idle session stays open.
    def ticks():
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    c0, t0 = ticks(), time.monotonic()
    r = subprocess.run(["timeout", "-k", "5", str(run_timeout), "smtp-source", "-s", str(mixed),
                        "-m", str(mixed_msgs), "-l", "512", "-f", "a@client.bench.test",
                        "-t", "rcpt@bench.test", "-M", "client.bench.test",
                        "127.0.0.1:%d" % port], capture_output=True, text=True)
    t1, c1 = time.monotonic(), ticks()
    peak = 0
    for l in open("/proc/%d/status" % pid):
        if l.startswith("VmHWM:"):
            peak = int(l.split()[1])
    alive = 0
    for s in socks:
        try:
            s.sendall(b"NOOP\r\n")
            if s.makefile("rb").readline().startswith(b"250"):
                alive += 1
        except OSError:
            pass
    hz = float(os.sysconf("SC_CLK_TCK"))
    print("mixed: %d idle + %d active sessions (%d at once); smtp-source %s: %d messages in %.1f s = %.0f/s, "
          "perimd CPU %.3f ms/msg, RSS %d kB now, peak %d kB; idle sessions answering NOOP after: %d of %d"
          % (n, mixed, n + mixed, "ok" if r.returncode == 0 else "FAILED rc=%d %s" % (r.returncode, (r.stdout + r.stderr)[-300:]),
             mixed_msgs, t1 - t0, mixed_msgs / (t1 - t0), (c1 - c0) / hz * 1000 / mixed_msgs, rss(), peak, alive, n))
for s in socks:
    s.close()
EOF
