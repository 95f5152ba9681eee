#!/usr/bin/env python3
"""tests/bench_sigdb.py - perimd's scanner process against clamd on a
signature database of real size (./build.sh bench sigdb; issue #19 part 2).

For each scale in SIGDB_SCALES ("0.1"; "0.1 1" adds the full size) it
writes tests/gen_sigdb.py's database, starts smtp-sink, a private clamd on
it (upstream defaults: MaxThreads 10; StreamMaxLength raised to 128M so
100 KB and larger pass) and two perimds relaying to the sink, one with
av_scanner = libclamav, one with av_scanner = clamd:SOCKET, and measures:

  - engine load: perimd's scanner's own figure (log), clamd from start to
    its first PONG; PSS of the scanner process and of clamd after load
  - EICAR refused (554) and a clean message relayed by both perimds
  - per size in SIGDB_SIZES ("512 102400"), SIGDB_REPS (3) rounds, the two
    alternating within a round: smtp-source with SIGDB_CONC (100) sessions
    and SIGDB_MSGS (2000) messages: messages/s, CPU ms per message of the
    scanner (the tree of perimd's scanner process / clamd) and of the whole system
    (perimd + its scanner / perimd + clamd); median and min-max
  - a reload under load: smtp-source runs (SIGDB_RELOAD_CONC sessions,
    512 B) while the database is reloaded (perimd: SIGHUP, with
    av_reload_mode = swap, then = inplace; clamd: RELOAD); messages whose
    scan failed or were not relayed (goal: none), load time, PSS before and
    peak during the reload (sampled every 50 ms)

The machine may be shared: compare ratios from the same run.
"""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERIMD = os.environ.get("PERIMD", os.path.join(ROOT, "build", "dev", "perimd"))
SCALES = os.environ.get("SIGDB_SCALES", "0.1").split()
SIZES = [int(s) for s in os.environ.get("SIGDB_SIZES", "512 102400").split()]
CONC = int(os.environ.get("SIGDB_CONC", "100"))
MSGS = int(os.environ.get("SIGDB_MSGS", "2000"))
REPS = int(os.environ.get("SIGDB_REPS", os.environ.get("REPS", "3")))
RELOAD_CONC = int(os.environ.get("SIGDB_RELOAD_CONC", "20"))
THREADS = os.environ.get("SIGDB_AV_THREADS", "0")
HZ = os.sysconf("SC_CLK_TCK")
EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()
PIDS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ticks(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def tree(pid):
    """pid and every process below it (perimd's scanner is a dispatcher,
    an engine generation and its scanning processes)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(open("/proc/%s/stat" % d).read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def tree_ticks(pid):
    """CPU ticks of pid's tree: each live process's own, plus those of the
    children each has reaped (a worker that was replaced)."""
    n = 0
    for p in tree(pid):
        try:
            f = open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        n += sum(int(x) for x in f[11:15])
    return n


def pss_one(pid):
    try:
        for line in open("/proc/%d/smaps_rollup" % pid):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid):
    """PSS of pid's whole tree (shared engine pages count once)."""
    return sum(pss_one(p) for p in tree(pid))


def wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    sys.exit("bench sigdb: %s: not within %d s" % (what, timeout))


def banner(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            if s.makefile("rb").readline().startswith(b"220 "):
                s.sendall(b"QUIT\r\n")
                return True
    except OSError:
        pass
    return False


def clamd_cmd(sock, cmd, timeout=5):
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(sock)
            s.sendall(b"z" + cmd + b"\0")
            return s.recv(256)
    except OSError:
        return b""


def start(argv, log):
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    PIDS.append(p)
    return p


def start_clamd(work, db):
    sock = os.path.join(work, "clamd.sock")
    conf = os.path.join(work, "clamd.conf")
    os.makedirs(os.path.join(work, "ctmp"), exist_ok=True)
    with open(conf, "w") as f:
        f.write("Foreground yes\nLocalSocket %s\nFixStaleSocket yes\nDatabaseDirectory %s\n"
                "TemporaryDirectory %s/ctmp\nLogFile %s/clamd.log\nUser root\nSelfCheck 0\n"
                "StreamMaxLength 128M\n" % (sock, db, work, work))
    t0 = time.monotonic()
    p = start(["/usr/sbin/clamd", "-c", conf], os.path.join(work, "clamd.out"))
    wait(lambda: clamd_cmd(sock, b"PING").startswith(b"PONG") or p.poll() is not None, 900, "clamd load")
    if p.poll() is not None:
        sys.exit("bench sigdb: clamd exited:\n" + open(os.path.join(work, "clamd.out")).read()[-2000:])
    return p, sock, time.monotonic() - t0


def start_perimd(work, name, sink_port, extra):
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "lib"), exist_ok=True)
    os.makedirs(os.path.join(d, "spool"), exist_ok=True)
    port = free_port()
    params = subprocess.run([PERIMD, "-d"], capture_output=True, text=True).stdout
    lines = ["smtpd_listen = 127.0.0.1:%d" % port, "relay_backends = [127.0.0.1]:%d" % sink_port,
             "relay_domains = bench.test", "myhostname = perimd.bench.test",
             "data_directory = %s/lib" % d, "body_spool_directory = %s/spool" % d,
             "mail_owner = %s" % __import__("pwd").getpwuid(os.geteuid()).pw_name,
             "max_sessions = 4000", "smtpd_client_connection_count_limit = 0", "log_to = stderr",
             "av_max_size = 100m", "av_timeout = 300s"]
    for k in ("stats_listen", "greylist", "reject_unknown_sender_domain"):
        if re.search(r"^%s\s*=" % k, params, re.M):
            lines.append("%s = %s" % (k, "" if k == "stats_listen" else "no"))
    lines += extra
    conf = os.path.join(d, "perimd.conf")
    with open(conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    log = os.path.join(d, "perimd.log")
    t0 = time.monotonic()
    p = start([PERIMD, "-f", "-c", conf], log)
    wait(lambda: banner(port) or p.poll() is not None, 900, "perimd %s start" % name)
    if p.poll() is not None:
        sys.exit("bench sigdb: perimd %s exited:\n%s" % (name, open(log).read()[-2000:]))
    return {"p": p, "port": port, "log": log, "conf": conf, "start_s": time.monotonic() - t0}


def smtp(port, body):
    """One message; the reply code to the final dot."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line or line[3:4] != b"-":
                    return int(line[:3] or 0)
        reply()
        for cmd in (b"EHLO c.bench.test", b"MAIL FROM:<a@c.bench.test>", b"RCPT TO:<r@bench.test>", b"DATA"):
            s.sendall(cmd + b"\r\n")
            reply()
        s.sendall(body + b"\r\n.\r\n")
        code = reply()
        s.sendall(b"QUIT\r\n")
        return code


def source(port, conc, msgs, size):
    t0 = time.monotonic()
    r = subprocess.run(["smtp-source", "-s", str(conc), "-m", str(msgs), "-l", str(size),
                        "-f", "a@client.bench.test", "-t", "rcpt@bench.test", "-M", "client.bench.test",
                        "127.0.0.1:%d" % port], capture_output=True, text=True, timeout=1800)
    return time.monotonic() - t0, r.returncode, (r.stdout + r.stderr)[-300:]


def av_counts(log, start):
    text = open(log).read()[start:]
    return (len(re.findall(r"av: clean", text)), len(re.findall(r"av: scan failed", text)),
            len(re.findall(r"av: not fully scanned|av: virus found", text)))


def scanner_pid(log):
    return int(re.findall(r"scanner process (\d+) ready", open(log).read())[-1])


def med(xs):
    return "%.3g [%.3g-%.3g]" % (statistics.median(xs), min(xs), max(xs))


def throughput(systems, size):
    """REPS alternating rounds; per system a list of (msg/s, scanner ms, system ms)."""
    res = {n: [] for n in systems}
    for rep in range(REPS):
        for name, s in systems.items():
            # perimd itself, then its scanner's tree (or clamd).
            probes = [lambda: ticks(s["p"].pid), lambda: tree_ticks(s["scan_pid"])]
            c0 = [f() for f in probes]
            el, rc, out = source(s["port"], CONC, MSGS, size)
            c1 = [f() for f in probes]
            if rc != 0:
                print("  %s rep %d: smtp-source rc=%d %s" % (name, rep + 1, rc, out))
            scan_ms = (c1[1] - c0[1]) * 1000.0 / HZ / MSGS
            sys_ms = (sum(c1) - sum(c0)) * 1000.0 / HZ / MSGS
            res[name].append((MSGS / el, scan_ms, sys_ms))
    return res


def reload_run(label, port, pid_pss, trigger, done_re, log, timeout=900):
    """smtp-source rounds while a reload runs; returns a result dict."""
    stop = threading.Event()
    sent, rcs, samples = [0], [], []

    def load():
        while not stop.is_set():
            el, rc, out = source(port, RELOAD_CONC, 200, 512)
            sent[0] += 200
            rcs.append(rc)

    def sample():
        while not stop.is_set():
            samples.append(pss_kb(pid_pss()))
            time.sleep(0.05)

    start = len(open(log).read())
    before = pss_kb(pid_pss())
    ts = [threading.Thread(target=load), threading.Thread(target=sample)]
    for t in ts:
        t.start()
    time.sleep(1)
    t0 = time.monotonic()
    trigger()
    deadline = time.monotonic() + timeout
    while not re.search(done_re, open(log).read()[start:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    took = time.monotonic() - t0
    time.sleep(1)
    stop.set()
    for t in ts:
        t.join(600)
    return {"label": label, "sent": sent[0], "rc_bad": sum(1 for r in rcs if r), "took": took,
            "before": before, "peak": max(samples or [0]), "start": start}


def bench_scale(scale, work, sink_port):
    db = os.path.join(work, "db-%s" % scale)
    t0 = time.monotonic()
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "gen_sigdb.py"), db, "--scale", scale],
                   check=True)
    print("database written in %.0f s: %s" % (time.monotonic() - t0,
          subprocess.run(["du", "-sh", db], capture_output=True, text=True).stdout.split()[0]))
    clamd, sock, clamd_load = start_clamd(work, db)
    av = ["av_threads = %s" % THREADS]
    lib = start_perimd(work, "libclamav-%s" % scale, sink_port,
                       av + ["av_scanner = libclamav", "clamav_database_directory = %s" % db])
    cd = start_perimd(work, "clamd-%s" % scale, sink_port, av + ["av_scanner = clamd:%s" % sock])
    m = re.search(r"ready: libclamav (\S+), (\d+) signatures from .* in (\d+) ms, (\d+) (?:threads|scanning processes)",
                  open(lib["log"]).read())
    lib["scan_pid"] = scanner_pid(lib["log"])
    cd["scan_pid"] = clamd.pid
    print("scale %s: %s signatures; load: perimd's scanner %.1f s (libclamav %s, %s scanning processes), clamd %.1f s "
          "(to its first PONG); PSS after load: scanner %d MB, clamd %d MB"
          % (scale, m.group(2), int(m.group(3)) / 1000.0, m.group(1), m.group(4), clamd_load,
             pss_kb(lib["scan_pid"]) // 1024, pss_kb(clamd.pid) // 1024))
    for name, s in (("libclamav", lib), ("clamd", cd)):
        e, c = smtp(s["port"], b"Subject: e\r\n\r\n" + EICAR), smtp(s["port"], b"Subject: c\r\n\r\nhello")
        print("  perimd %s: EICAR -> %d, clean -> %d%s" % (name, e, c, "" if (e, c) == (554, 250) else "  FAILED"))
    systems = {"libclamav": lib, "clamd": cd}
    for s in systems.values():
        source(s["port"], 10, 200, 512)  # warm-up
    print("  %d sessions x %d messages, %d rounds alternating; median [min-max]" % (CONC, MSGS, REPS))
    print("  %-7s %-9s %-24s %-24s %-24s" % ("bytes", "av", "msgs/s", "scanner CPU ms/msg", "system CPU ms/msg"))
    for size in SIZES:
        res = throughput(systems, size)
        for n in systems:
            r = res[n]
            print("  %-7d %-9s %-24s %-24s %-24s" % (size, n, med([x[0] for x in r]), med([x[1] for x in r]),
                                                       med([x[2] for x in r])))
        lr, cr = statistics.median(x[0] for x in res["libclamav"]), statistics.median(x[0] for x in res["clamd"])
        ls, cs = (statistics.median(x[1] for x in res[k]) for k in ("libclamav", "clamd"))
        print("  %-7d libclamav/clamd: msgs/s %.2fx, scanner CPU per msg %.2fx" % (size, lr / cr, ls / cs))
    # Reloads under load.
    # SIGHUP reloads whether or not a file changed, and brings the mode
    # with it; no file is touched here, or the scanner's own check of the
    # directory (every 5 s) could start the reload first, with the
    # previous mode.
    results = []
    for mode in ("swap", "inplace"):
        with open(lib["conf"], "a") as f:
            f.write("av_reload_mode = %s\n" % mode)
        r = reload_run("perimd libclamav, %s" % mode, lib["port"], lambda: scanner_pid(lib["log"]),
                       lambda: lib["p"].send_signal(signal.SIGHUP),
                       r"signatures reloaded: \d+ signatures in \d+ ms|reload failed", lib["log"])
        text = open(lib["log"]).read()[r["start"]:]
        ms = re.search(r"signatures reloaded: \d+ signatures in (\d+) ms", text)
        r["load"] = int(ms.group(1)) / 1000.0 if ms else float("nan")
        r["clean"], r["failed"], r["other"] = av_counts(lib["log"], r["start"])
        results.append(r)
    clog = os.path.join(work, "clamd.log")
    cstart = len(open(cd["log"]).read())
    r = reload_run("clamd (RELOAD)", cd["port"], lambda: clamd.pid, lambda: clamd_cmd(sock, b"RELOAD"),
                   r"Database correctly reloaded", clog)
    r["load"] = r["took"]
    r["clean"], r["failed"], r["other"] = av_counts(cd["log"], cstart)
    results.append(r)
    print("  reload under load (%d sessions, 512 B):" % RELOAD_CONC)
    print("  %-26s %8s %8s %8s %8s %10s %10s %6s" % ("", "load_s", "sent", "clean", "failed", "PSS_MB", "peak_MB",
                                                      "peak/x"))
    for r in results:
        print("  %-26s %8.1f %8d %8d %8d %10d %10d %6.2f%s" % (
            r["label"], r["load"], r["sent"], r["clean"], r["failed"], r["before"] // 1024, r["peak"] // 1024,
            r["peak"] / max(r["before"], 1), "" if not r["rc_bad"] else "  smtp-source failed %d times" % r["rc_bad"]))
    for s in (lib, cd):
        s["p"].terminate()
        s["p"].wait(60)
    clamd.terminate()
    clamd.wait(60)
    shutil.rmtree(db, ignore_errors=True)


def main():
    for tool in ("smtp-source", "smtp-sink"):
        if not shutil.which(tool):
            sys.exit("bench sigdb: %s missing (apt-get install postfix)" % tool)
    if not os.path.exists("/usr/sbin/clamd"):
        sys.exit("bench sigdb: clamd missing (apt-get install clamav-daemon)")
    work = tempfile.mkdtemp(prefix="perimd-bench-sigdb.")
    try:
        print("bench sigdb: scales %s, sizes %s, %d sessions, %d messages, %d rounds, %d CPUs, load average %s"
              % (SCALES, SIZES, CONC, MSGS, REPS, os.cpu_count(), open("/proc/loadavg").read().split()[:3]))
        sink_port = free_port()
        start(["smtp-sink", "-u", "nobody", "127.0.0.1:%d" % sink_port, "2000"] if os.geteuid() == 0 else
              ["smtp-sink", "127.0.0.1:%d" % sink_port, "2000"], os.path.join(work, "sink.log"))
        wait(lambda: banner(sink_port), 10, "smtp-sink")
        for scale in SCALES:
            bench_scale(scale, work, sink_port)
        print("load average after: %s" % open("/proc/loadavg").read().split()[:3])
    finally:
        for p in PIDS:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
