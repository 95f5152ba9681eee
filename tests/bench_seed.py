#!/usr/bin/python3
"""bench_seed.py - the seed's stack beside perimd (./build.sh bench seed).

The stack of the original talk, built from Debian packages as private
instances (nothing under /etc is read for configuration or changed):

  client -> Postfix smtpd (127.0.0.1:P, process limit SEED_SERVERS = 16,
            smtpd_proxy_filter = amavisd, check_policy_service = postgrey)
         -> amavisd-new ($max_servers = SEED_SERVERS, spam checks off,
            ClamAV through clamd's socket, viruses rejected: D_REJECT)
         -> Postfix smtpd on a reinjection port (no filter) -> queue
         -> Postfix smtp -> smtp-sink

  client -> perimd (greylisting on, libclamav) -> smtp-sink

Both scan with the same test database (EICAR and a marker, as tests/bench.sh
writes it); both must refuse EICAR before the runs (tests/bench_avcheck.py).
Greylisting passes every triplet in both, both primed the same way: the
triplet the client sends is deferred once and passed before the runs, so
each message is a lookup of a passed triplet. postgrey runs with --delay=1
(--delay=0 is taken as its default, 300),
--auto-whitelist-clients=0 (the client is never whitelisted, the triplet
lookups go on) and empty whitelist files; perimd with greylist_delay = 1s
and greylist_auto_whitelist_count = 0.

The client is tests/bench_latency.py (connections reused, no PIPELINING,
a reply timeout of 300 s), one run per cell: first "direct" (client to the
sink, no system: the floor of the tools), then the two systems. Per run:
delivered messages/s (client start -> the sink has counted every message;
Postfix answers once queued, perimd after the sink's 250), CPU per message
of the whole system (cgroup v1 cpuacct.usage: every process it needs and
every child that exited: Postfix's master and daemons, amavisd and its
children, clamd, postgrey; perimd and its scanner process), the peak of
the sum of PSS over those processes (sampled every SEED_SAMPLE s), and the
client's final-dot-to-reply and whole-transaction (MAIL to final reply)
p50/p99 in ms.

Environment: SEED_CONC ("100 512") SEED_SIZES ("512 102400") SEED_MSGS
(2000) SEED_WARMUP (100) SEED_SERVERS (16) SEED_SAMPLE (0.25) PERIMD
(build/dev/perimd) OUT (/tmp/perimd-bench-seed.<time>: table.txt, logs).
SEED_BODY: "text" (default: the same 80-byte text lines in every message,
one part) or "mime" (multipart with a text/HTML alternative and a base64
attachment, every message unique: bench_latency.py -K mime -u; a cache of
clean results then saves neither system a scan). SEED_PERIMD_SPOOL: "work"
(default: perimd's body_spool_directory, where libclamav also writes its
temporary files, in the work directory on disk, as amavisd's and clamd's
temporary directories are) or "shm" (under /dev/shm, as perimd's default
/dev/shm/perimd is). SEED_PERIMD_BASE=/path/perimd: another perimd binary
(an older revision), same settings and spool kind, measured in the same
run as "perimd-base" (its own cgroup, data and spool directories), with
the ratios of perimd over it.
Needs root (cgroups, users amavis and postgrey) and the packages postfix,
amavisd-new, clamav-daemon, postgrey. `bench_seed.py prime PORT PAUSE` only
primes a greylisting server on 127.0.0.1:PORT (tests/bench.sh peers-features).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from postfix_instance import PostfixInstance  # noqa: E402
from clamd_helper import EICAR, Clamd, write_ndb  # noqa: E402

PY = "/usr/bin/python3"
CG = "/sys/fs/cgroup/cpuacct"
SENDER, RCPT = "bench@client.bench.test", "rcpt@bench.test"

CONC = [int(x) for x in os.environ.get("SEED_CONC", "100 512").split()]
SIZES = [int(x) for x in os.environ.get("SEED_SIZES", "512 102400").split()]
MSGS = int(os.environ.get("SEED_MSGS", "2000"))
WARMUP = int(os.environ.get("SEED_WARMUP", "100"))
SERVERS = int(os.environ.get("SEED_SERVERS", "16"))
SAMPLE = float(os.environ.get("SEED_SAMPLE", "0.25"))
BODY = os.environ.get("SEED_BODY", "text")
SPOOL = os.environ.get("SEED_PERIMD_SPOOL", "work")
PERIMD = os.environ.get("PERIMD", os.path.join(ROOT, "build", "dev", "perimd"))
PERIMD_BASE = os.environ.get("SEED_PERIMD_BASE", "")
OUT = os.environ.get("OUT") or "/tmp/perimd-bench-seed." + time.strftime("%Y%m%d-%H%M%S")

started = []      # Popen objects, ended by PID at exit
cgroups = {}      # name -> cgroup directory
postfix = None
spools = []       # SEED_PERIMD_SPOOL=shm: directories removed at exit


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, seconds, what):
    """Poll pred until true, at most `seconds`; raise naming `what`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise RuntimeError("bench seed: timed out waiting for " + what)


def greets(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            ok = s.makefile("rb").readline().startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


# --- cgroups: every process a system needs is started inside its own --------

def cg_make(name):
    d = os.path.join(CG, "perimd-seed.%d" % os.getpid(), name)
    os.makedirs(d)
    cgroups[name] = d


def cg_enter(name):
    """Move this process into cgroup `name` (None: back to the root), so that
    what it starts next is counted there."""
    d = cgroups[name] if name else CG
    with open(os.path.join(d, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def cg_cpu_s(name):
    with open(os.path.join(cgroups[name], "cpuacct.usage")) as f:
        return int(f.read()) / 1e9


def cg_pids(name):
    try:
        with open(os.path.join(cgroups[name], "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PssPeak(threading.Thread):
    """Peak of the sum of PSS over a cgroup's processes, and the most
    processes seen at once, sampled until stop()."""

    def __init__(self, name):
        super().__init__(daemon=True)
        self.name_, self.peak, self.procs = name, 0, 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            pids = cg_pids(self.name_)
            self.procs = max(self.procs, len(pids))
            self.peak = max(self.peak, sum(pss_kb(p) for p in pids))
            self.done.wait(SAMPLE)

    def stop(self):
        self.done.set()
        self.join()
        return self.peak


def spawn(argv, log, cg, **kw):
    """Start argv in cgroup cg, output to log; remembered for the cleanup."""
    cg_enter(cg)
    try:
        p = subprocess.Popen(argv, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, **kw)
    finally:
        cg_enter(None)
    started.append(p)
    return p


# --- the sink ----------------------------------------------------------------

class Sink:
    """smtp-sink -c: counts every message it is handed."""

    def __init__(self, work):
        self.port, self.out = free_port(), os.path.join(work, "sink.out")
        self.p = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", "127.0.0.1:%d" % self.port,
                                   "1024"], stdout=open(self.out, "wb"), stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        started.append(self.p)
        wait_until(lambda: greets(self.port), 10, "smtp-sink")

    def count(self):
        with open(self.out, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 256))
            tail = f.read()
        m = re.findall(rb"mesg=(\d+)", tail)
        return int(m[-1]) if m else 0

    def wait(self, n, seconds):
        wait_until(lambda: self.count() >= n, seconds, "the sink to count %d messages" % n)


# --- the seed's stack --------------------------------------------------------

def write_db(work):
    return write_ndb(os.path.join(work, "avdb"), [("Bench.EICAR", EICAR),
                                                  ("Bench.Marker", b"perimd-bench-marker")], "bench.ndb")


def start_clamd(work, db):
    """clamd in the seed's cgroup, output to clamd.out; its socket."""
    out = os.path.join(work, "clamd.out")
    c = Clamd(work, db, extra="LocalSocketMode 666\nFixStaleSocket yes\nLogClean yes\n",
              popen=lambda argv: spawn(argv, out, "seed"))
    return c.start().sock


def start_postgrey(work):
    port = free_port()
    d = os.path.join(work, "postgrey")
    os.makedirs(d)
    shutil.chown(d, "postgrey", "postgrey")
    for n in ("wl_clients", "wl_rcpts"):
        open(os.path.join(work, n), "w").close()
    spawn(["/usr/sbin/postgrey", "--inet=127.0.0.1:%d" % port, "--dbdir=" + d, "--delay=1",
           "--auto-whitelist-clients=0", "--whitelist-clients=%s/wl_clients" % work,
           "--whitelist-recipients=%s/wl_rcpts" % work, "--pidfile=%s/postgrey.pid" % d],
          os.path.join(work, "postgrey.out"), "seed")

    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_until(up, 30, "postgrey")
    return port


def start_amavisd(work, clamd_sock, reinject):
    port = free_port()
    home = os.path.join(work, "amavis")
    for sub in ("", "tmp", "db", "var"):
        os.makedirs(os.path.join(home, sub), exist_ok=True)
        shutil.chown(os.path.join(home, sub), "amavis", "amavis")
    conf = os.path.join(work, "amavisd.conf")
    with open(conf, "w") as f:
        f.write("""use strict;
$MYHOME = '{home}';
$TEMPBASE = "$MYHOME/tmp";
$db_home = "$MYHOME/db";
$helpers_home = "$MYHOME/var";
$pid_file = "$MYHOME/amavisd.pid";
$lock_file = "$MYHOME/amavisd.lock";
$daemon_user = 'amavis';
$daemon_group = 'amavis';
$myhostname = 'amavis.bench.test';
$mydomain = 'bench.test';
@local_domains_acl = ('bench.test');
@mynetworks = qw(127.0.0.0/8);
$max_servers = {servers};
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = {port};
$unix_socketname = undef;
$protocol = 'SMTP';
$forward_method = 'smtp:[127.0.0.1]:{reinject}';
$notify_method = $forward_method;
$enable_db = 0;
$enable_zmq = 0;
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
@bypass_spam_checks_maps = (1);
$final_virus_destiny = D_REJECT;
$final_banned_destiny = D_PASS;
$final_spam_destiny = D_PASS;
$final_bad_header_destiny = D_PASS;
$virus_admin = undef;
$do_syslog = 0;
$LOGFILE = "$MYHOME/amavis.log";
$log_level = 0;
@av_scanners = (['ClamAV-clamd', \\&ask_daemon, ["CONTSCAN {{}}\\n", '{sock}'],
  qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ]);
@av_scanners_backup = ();
1;
""".format(home=home, servers=SERVERS, port=port, reinject=reinject, sock=clamd_sock))
    spawn(["/usr/sbin/amavisd", "-c", conf, "foreground"], os.path.join(work, "amavisd.out"),
          "seed")
    wait_until(lambda: greets(port), 120, "amavisd (see %s/amavisd.out)" % work)
    return port


def start_postfix(work, sink_port, pg_port, amavis_port, reinject):
    global postfix
    port = free_port()
    main = """relay_domains = bench.test
relayhost = [127.0.0.1]:{sink}
mynetworks = 127.0.0.0/8
smtpd_proxy_filter = 127.0.0.1:{amavis}
smtpd_recipient_restrictions = reject_unauth_destination, check_policy_service inet:127.0.0.1:{pg}
smtpd_client_connection_count_limit = 0
smtpd_peername_lookup = no
default_process_limit = 1024
""".format(sink=sink_port, amavis=amavis_port, pg=pg_port)
    extra = """127.0.0.1:{r} inet n - n - - smtpd
  -o smtpd_proxy_filter=
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_client_restrictions=
  -o smtpd_helo_restrictions=
  -o smtpd_sender_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
  -o smtpd_relay_restrictions=permit_mynetworks,reject
  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
""".format(r=reinject)
    # default_process_limit: Postfix sizes its listen backlog by it (the
    # proxied smtpd keeps its own limit below); with the stock 100, connects
    # past the backlog at 512 sessions were dropped after the client saw
    # them established, and those clients hung until their timeout.
    postfix = PostfixInstance(port, main, master_extra=extra)
    mcf = os.path.join(postfix.etc, "master.cf")
    with open(mcf) as f:
        text = f.read()
    # The proxied smtpd: as many processes as amavisd has servers.
    text = text.replace("127.0.0.1:%d inet n - n - - smtpd" % port,
                        "127.0.0.1:%d inet n - n - %d smtpd" % (port, SERVERS))
    with open(mcf, "w") as f:
        f.write(text)
    cg_enter("seed")
    try:
        postfix.start()
    finally:
        cg_enter(None)
    return port


def queue_empty():
    r = subprocess.run(["/usr/sbin/postqueue", "-c", postfix.etc, "-p"], capture_output=True,
                       text=True, timeout=30)
    return "Mail queue is empty" in r.stdout


# --- perimd ------------------------------------------------------------------

def start_perimd(work, db, sink_port, name="perimd", binary=PERIMD):
    """perimd `binary` as system `name` (its cgroup, work/NAME)."""
    port = free_port()
    d = os.path.join(work, name)
    for sub in ("lib", "spool"):
        os.makedirs(os.path.join(d, sub))
    spool = os.path.join(d, "spool")
    if SPOOL == "shm":
        spool = tempfile.mkdtemp(prefix="perimd-seed-spool-", dir="/dev/shm")
        spools.append(spool)
    conf = os.path.join(d, "perimd.conf")
    with open(conf, "w") as f:
        f.write("""smtpd_listen = 127.0.0.1:{port}
relay_backends = [127.0.0.1]:{sink}
relay_domains = bench.test
myhostname = perimd.bench.test
data_directory = {d}/lib
body_spool_directory = {spool}
mail_owner = root
max_sessions = 10000
smtpd_client_connection_count_limit = 0
stats_listen =
reject_unknown_sender_domain = no
log_to = stderr
greylist = yes
greylist_delay = 1s
greylist_auto_whitelist_count = 0
av_scanner = libclamav
clamav_database_directory = {db}
""".format(port=port, sink=sink_port, d=d, db=db, spool=spool))
    for line in os.environ.get("SEED_PERIMD_CONF", "").split(";"):
        if line.strip():
            with open(conf, "a") as f:
                f.write(line.strip() + "\n")
    spawn([binary, "-f", "-c", conf], os.path.join(d, "perimd.log"), name)
    wait_until(lambda: greets(port), 60, "perimd (see %s/perimd.log)" % d)
    return port


def rcpt_reply(port):
    """One RCPT of the client's triplet; the reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")

        def cmd(line):
            if line:
                s.sendall(line.encode() + b"\r\n")
            while True:
                r = f.readline().decode()
                if r[3:4] != "-":
                    return r
        cmd(None)
        cmd("EHLO client.bench.test")
        cmd("MAIL FROM:<%s>" % SENDER)
        r = cmd("RCPT TO:<%s>" % RCPT)
        cmd("QUIT")
        return r


def prime(port, label, pause):
    """Defer the triplet once, then wait for it to pass (after `pause` s)."""
    first = rcpt_reply(port)
    if not first.startswith("45"):
        raise RuntimeError("%s did not greylist a new triplet: %s" % (label, first.strip()))
    time.sleep(pause)
    wait_until(lambda: rcpt_reply(port).startswith("250"), 10, "the primed triplet to pass")


# --- runs --------------------------------------------------------------------

def client(port, conc, msgs, size):
    """tests/bench_latency.py; its key=value line as a dict."""
    r = subprocess.run([PY, os.path.join(ROOT, "tests", "bench_latency.py"), "-s", str(conc),
                        "-m", str(msgs), "-l", str(size), "-f", SENDER, "-t", RCPT,
                        "-M", "client.bench.test", "--timeout", "300", "-K", BODY]
                       + (["-u"] if BODY == "mime" else []) + ["127.0.0.1:%d" % port],
                       capture_output=True, text=True, timeout=3600)
    line = (r.stdout.strip().splitlines() or [""])[-1]
    d = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    d["rc"] = r.returncode
    if r.returncode != 0:
        d["stderr"] = r.stderr[-300:]
    return d


def measure(sink, system, port, conc, size):
    """One measured run of MSGS messages; a dict of figures ("direct": the
    client straight to the sink, no system: the floor of the tools)."""
    base = sink.count()
    cg = system if system in cgroups else None
    cpu0, t0 = cg_cpu_s(cg) if cg else 0, time.monotonic()
    mon = PssPeak(cg) if cg else None
    if mon:
        mon.start()
    c = client(port, conc, MSGS, size)
    ok = int(c.get("ok", 0))
    try:
        sink.wait(base + ok, 600)
        lost = 0
    except RuntimeError:
        lost = base + ok - sink.count()
    t1 = time.monotonic()
    cpu1 = cg_cpu_s(cg) if cg else 0
    peak = mon.stop() if mon else 0
    return {"mps": ok / (t1 - t0), "cpu_ms": (cpu1 - cpu0) * 1000 / max(ok, 1),
            "pss_mb": peak / 1024, "procs": mon.procs if mon else 0, "p50": c.get("dot_p50_ms", "NA"),
            "p99": c.get("dot_p99_ms", "NA"), "t50": c.get("txn_p50_ms", "NA"),
            "t99": c.get("txn_p99_ms", "NA"), "ok": ok, "errors": c.get("errors", "?"),
            "lost": lost, "first_error": c.get("first_error", "")}


def avcheck(port, label, sink):
    base = sink.count()
    r = subprocess.run([PY, os.path.join(ROOT, "tests", "bench_avcheck.py"), str(port), label],
                       capture_output=True, text=True, timeout=300)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        raise RuntimeError("bench seed: %s does not refuse EICAR or accept clean mail: %s %s"
                           % (label, r.stdout, r.stderr))
    sink.wait(base + 1, 120)


def cleanup():
    if postfix is not None:
        try:
            postfix.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    for p in started:
        if p.poll() is None:
            p.terminate()
    for p in started:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    # Children left behind (amavisd's, clamd's): by PID, from our cgroups only.
    for name in cgroups:
        for pid in cg_pids(name):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    for name, d in cgroups.items():
        deadline = time.monotonic() + 15
        while cg_pids(name) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in cg_pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except OSError:
                time.sleep(0.1)
    try:
        os.rmdir(os.path.dirname(next(iter(cgroups.values()))))
    except (OSError, StopIteration):
        pass


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def table(rows):
    """The results, a line per cell and system, ratios perimd / seed."""
    out = ["delivered msgs/s, whole-system CPU ms/msg, peak PSS MB (sum over its processes),",
           "client final-dot->reply p50/p99 ms, whole transaction (MAIL->final reply) p50/p99 ms;",
           "ratios perimd over seed (msgs/s, CPU, PSS)",
           "%-7s %5s %-7s %8s %8s %7s %5s %8s %8s %8s %8s %6s %5s" % (
               "bytes", "sess", "system", "msgs/s", "CPUms/m", "PSS_MB", "procs", "p50_ms",
               "p99_ms", "txn_p50", "txn_p99", "errors", "lost")]
    for (size, conc), r in rows:
        for name in [n for n in ("direct", "seed", "perimd", "perimd-base") if n in r]:
            x = r[name]
            out.append("%-7s %5s %-7s %8.1f %8.3f %7.1f %5d %8s %8s %8s %8s %6s %5s" % (
                size, conc, name, x["mps"], x["cpu_ms"], x["pss_mb"], x["procs"], x["p50"],
                x["p99"], x["t50"], x["t99"], x["errors"], x["lost"]))
        s, p = r["seed"], r["perimd"]
        d = r["direct"]
        out.append("%-7s %5s %-7s msgs/s %.1fx  CPU/msg %.3fx  PSS %.3fx  p99 %s  (perimd/direct %.2f)" % (
            "", "", "ratio", p["mps"] / s["mps"] if s["mps"] else 0,
            p["cpu_ms"] / s["cpu_ms"] if s["cpu_ms"] else 0,
            p["pss_mb"] / s["pss_mb"] if s["pss_mb"] else 0,
            "%.2fx" % (float(p["p99"]) / float(s["p99"]))
            if s["p99"] not in ("NA", "0", "0.0") and p["p99"] != "NA" else "NA",
            p["mps"] / d["mps"] if d["mps"] else 0))
        if "perimd-base" in r:
            b = r["perimd-base"]
            out.append("%-7s %5s %-7s msgs/s %.3fx  CPU/msg %.3fx  PSS %.3fx  (perimd over perimd-base; "
                       "perimd-base over seed: CPU/msg %.3fx)" % (
                           "", "", "vs base", p["mps"] / b["mps"] if b["mps"] else 0,
                           p["cpu_ms"] / b["cpu_ms"] if b["cpu_ms"] else 0,
                           p["pss_mb"] / b["pss_mb"] if b["pss_mb"] else 0,
                           b["cpu_ms"] / s["cpu_ms"] if s["cpu_ms"] else 0))
    return "\n".join(out)


def stop(signum, frame):
    """SIGTERM, SIGINT: leave through the cleanup."""
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if BODY not in ("text", "mime") or SPOOL not in ("work", "shm"):
        sys.exit("bench seed: SEED_BODY is text or mime, SEED_PERIMD_SPOOL work or shm")
    if os.geteuid() != 0:
        sys.exit("bench seed: needs root (cgroups, the amavis and postgrey users)")
    for b in ("/usr/sbin/amavisd", "/usr/sbin/postgrey", "/usr/sbin/clamd", "/usr/sbin/postfix",
              PERIMD):
        if not os.access(b, os.X_OK):
            sys.exit("bench seed: %s missing (apt-get install postfix amavisd-new clamav-daemon "
                     "postgrey; ./build.sh)" % b)
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="perimd-seed-")
    os.chmod(work, 0o755)
    cg_make("seed")
    cg_make("perimd")
    if PERIMD_BASE:
        cg_make("perimd-base")
    try:
        print("bench seed: SEED_CONC=%s SEED_SIZES=%s SEED_MSGS=%d servers=%d SEED_BODY=%s "
              "SEED_PERIMD_SPOOL=%s; %d CPUs, load %s (shared machine: compare the ratios)"
              % (CONC, SIZES, MSGS, SERVERS, BODY, SPOOL, os.cpu_count(), load()), flush=True)
        db = write_db(work)
        sink = Sink(work)
        sock = start_clamd(work, db)
        pg = start_postgrey(work)
        reinject = free_port()
        am = start_amavisd(work, sock, reinject)
        seed_port = start_postfix(work, sink.port, pg, am, reinject)
        perimd_port = start_perimd(work, db, sink.port)
        prime(seed_port, "postgrey", 1.1)
        prime(perimd_port, "perimd", 1.1)
        avcheck(seed_port, "seed (Postfix + amavisd-new + clamd + postgrey)", sink)
        avcheck(perimd_port, "perimd (greylist + libclamav)", sink)
        ports = {"direct": sink.port, "seed": seed_port, "perimd": perimd_port}
        if PERIMD_BASE:
            ports["perimd-base"] = start_perimd(work, db, sink.port, "perimd-base", PERIMD_BASE)
            prime(ports["perimd-base"], "perimd-base", 1.1)
            avcheck(ports["perimd-base"], "perimd-base (greylist + libclamav)", sink)
        rows = []
        for size in SIZES:
            for conc in CONC:
                r = {}
                # perimd and perimd-base take turns going first, cell by cell.
                order = ("direct", "seed") + (("perimd", "perimd-base") if len(rows) % 2 == 0
                                              else ("perimd-base", "perimd"))
                for name in [n for n in order if n in ports]:
                    if name != "direct":
                        base = sink.count()
                        w = client(ports[name], 10, WARMUP, size)
                        sink.wait(base + int(w.get("ok", 0)), 300)
                    r[name] = measure(sink, name, ports[name], conc, size)
                    print("run system=%s size=%d conc=%d %s load=%s" % (
                        name, size, conc, " ".join("%s=%s" % kv for kv in sorted(r[name].items())),
                        load().split()[0]), flush=True)
                rows.append(((size, conc), r))
        t = table(rows)
        print(t)
        with open(os.path.join(OUT, "table.txt"), "w") as f:
            f.write(t + "\nload after: %s\n" % load())
        # clamd logs one line per message amavisd hands it (LogClean).
        log = os.path.join(work, "clamd", "clamd.log")
        n = sum(1 for line in open(log, errors="replace") if line.rstrip().endswith(("OK", "FOUND"))) \
            if os.path.exists(log) else 0
        sent = len(SIZES) * len(CONC) * (MSGS + WARMUP) + 2
        print("clamd scan results logged during the seed runs: %d (messages sent to the seed: %d)"
              % (n, sent))
        print("bench seed: load after: %s; results in %s" % (load(), OUT))
    finally:
        for n in ("amavisd.out", "clamd.out", "postgrey.out", "perimd/perimd.log",
                  "perimd-base/perimd.log", "sink.out"):
            src = os.path.join(work, n)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(OUT, n.replace("/perimd.log", ".log")))
        if postfix is not None:
            shutil.copy(postfix.log, os.path.join(OUT, "postfix.log")) \
                if os.path.exists(postfix.log) else None
        cleanup()
        shutil.rmtree(work, ignore_errors=True)
        for d in spools:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["prime"]:
        # bench_seed.py prime PORT PAUSE: the priming alone (tests/bench.sh
        # peers-features primes its perimd so).
        try:
            prime(int(sys.argv[2]), "127.0.0.1:" + sys.argv[2], float(sys.argv[3]))
        except (RuntimeError, OSError) as e:
            sys.exit("bench prime: %s" % e)
    else:
        main()
