#!/usr/bin/python3
"""bench_fleet.py - the greylisting store of a fleet, measured against its
peers (README "Benchmarks", the fleet).

One test-owned MariaDB (tests/integration/test_grey.MariaDB). Each target
answers Postfix policy requests (the same protocol for all, so the store
is what differs): perimd with N boxes (policy_listen, greylist_database =
mysql:, N = 1 and 3, the requests spread over the boxes), sqlgrey on the
same MariaDB, postgrey (its own Berkeley DB: no database figures). Every
target gets SESSIONS policy connections per box, each sending requests
one after the other: a mix of NEW triplets (never seen, from random
networks) and KNOWN ones (passed during the warm-up).

Printed per target: requests/s, database round trips per request (perimd:
its own counter, a multi-statement query being one, and how its
decisions were batched; sqlgrey: the server's
Questions, one statement per round trip through DBD::mysql), statements
per request (the server's Questions, each statement of a multi-statement
query counted), MariaDB CPU ms
per 1,000 requests (/proc of mariadbd), the target's own CPU ms per 1,000,
and the decision's p50 / p99 as the client sees it.

    /usr/bin/python3 tests/bench_fleet.py [--requests 4000] [--sessions 100]
        [--new 0.5] [--boxes 1,3] [--skip sqlgrey,postgrey]
PERIMD_BIN defaults to build/dev/perimd.
"""

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "integration"))
REPO = os.path.dirname(HERE)
os.environ.setdefault("PERIMD_BIN", os.path.join(REPO, "build", "dev", "perimd"))

import harness  # noqa: E402
import test_grey  # noqa: E402
from harness import Perimd, free_port  # noqa: E402

SENDER = "news@bench.example"


def cpu_ms(pid):
    """utime + stime of a process, ms."""
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def questions(m):
    r = subprocess.run(["mariadb", "--no-defaults", "-S", m.sock, "-u", "root", "-N", "-B", "-e",
                        "SHOW GLOBAL STATUS LIKE 'Questions'"], capture_output=True, timeout=30)
    return int(r.stdout.split()[1])


def request(client, rcpt, sender=SENDER):
    return ("request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            "client_address=%s\nclient_name=unknown\nhelo_name=bench.example\nsender=%s\n"
            "recipient=%s\ninstance=%x\n\n" % (client, sender, rcpt, random.getrandbits(48))).encode()


async def session(port, reqs, lat, answers):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        for q in reqs:
            t0 = time.perf_counter()
            w.write(q)
            await w.drain()
            buf = b""
            while not buf.endswith(b"\n\n"):
                data = await r.read(4096)
                if not data:
                    raise RuntimeError("policy server closed the connection")
                buf += data
            lat.append(time.perf_counter() - t0)
            answers.append(buf.split(b"\n", 1)[0])
    finally:
        w.close()


async def run_load(ports, per_session):
    """per_session: one list of requests per session, ports cycled."""
    lat, answers = [], []
    await asyncio.gather(*(session(ports[i % len(ports)], reqs, lat, answers)
                           for i, reqs in enumerate(per_session)))
    return lat, answers


def deferral(answer):
    """A greylisting answer: DEFER_IF_PERMIT (perimd, postgrey) or a 4xx
    action (sqlgrey's "action=451 ...")."""
    a = answer.split(b"=", 1)[-1].upper()
    return a.startswith(b"DEFER") or a[:1] == b"4"


def known_triplets(n):
    return [("192.0.2.%d" % (1 + i % 200), "k%d@bench.example" % i) for i in range(n)]


def workload(args, known, sessions):
    """The measured requests, split over the sessions."""
    out = [[] for _ in range(sessions)]
    for i in range(args.requests):
        if random.random() < args.new:
            client = "10.%d.%d.%d" % (random.randrange(256), random.randrange(256), 1 + random.randrange(250))
            rcpt = "n%d-%x@bench.example" % (i, random.getrandbits(32))
        else:
            client, rcpt = random.choice(known)
        out[i % sessions].append(request(client, rcpt))
    return out


def warm(ports, known, sessions, delay):
    """Each known triplet seen, then again after the delay: passed."""
    reqs = [request(c, r) for c, r in known]
    split = [reqs[i::sessions] for i in range(sessions)]
    asyncio.run(run_load(ports, split))
    time.sleep(delay + 0.5)
    lat, answers = asyncio.run(run_load(ports, split))
    bad = [a for a in answers if deferral(a)]
    if bad:
        raise RuntimeError("warm-up: %d known triplets still deferred: %r" % (len(bad), bad[:2]))


def measure(name, m, ports, pids, args, known, sessions, counter=None):
    work = workload(args, known, sessions)
    q0, d0 = questions(m), cpu_ms(m.proc.pid)
    t0 = [cpu_ms(p) for p in pids]
    c0 = counter() if counter else None
    w0 = time.perf_counter()
    lat, answers = asyncio.run(run_load(ports, work))
    if os.environ.get("BENCH_DEBUG"):
        print(sorted(set(a[:40] for a in answers))[:8])
    wall = time.perf_counter() - w0
    q1, d1 = questions(m), cpu_ms(m.proc.pid)
    t1 = [cpu_ms(p) for p in pids]
    n = len(lat)
    lat.sort()
    rt = ((counter() - c0) / n) if counter else (q1 - q0 - 2) / n
    deferred = sum(1 for a in answers if deferral(a))
    print("%-18s %6d req %7.0f req/s  %5.2f db round trips/req  %5.2f statements/req  "
          "db CPU %7.1f ms/1000  own CPU %7.1f ms/1000  p50 %6.2f ms  p99 %7.2f ms  deferred %d"
          % (name, n, n / wall, rt, (q1 - q0 - 2) / n, (d1 - d0) * 1000 / n,
             (sum(t1) - sum(t0)) * 1000 / n,
             lat[n // 2] * 1000, lat[min(n - 1, int(n * 0.99))] * 1000, deferred), flush=True)


def bench_perimd(m, d, args, nbox):
    db = "bench_perimd%d" % nbox
    m.sql("CREATE DATABASE %s" % db)
    cf = os.path.join(d, "%s.cf" % db)
    with open(cf, "w") as f:
        f.write("hosts = 127.0.0.1:%d\nuser = root\npassword =\ndbname = %s\n" % (m.port, db))
    boxes = []
    try:
        for i in range(nbox):
            boxes.append(Perimd(os.path.join(d, "box%d-%d" % (nbox, i)), greylist="yes",
                                greylist_delay="1s", greylist_database="mysql:%s" % cf,
                                greylist_auto_whitelist_count="0", log_to="stderr",
                                policy_listen="127.0.0.1:%d" % free_port(),
                                max_sessions="2000", relay_backends="[127.0.0.1]:9").start())
        ports = [int(b.params["policy_listen"].rsplit(":", 1)[1]) for b in boxes]
        known = known_triplets(args.known)
        warm(ports, known, min(args.sessions, 50), 1.0)

        def metrics():
            import urllib.request
            total = {}
            for b in boxes:
                body = urllib.request.urlopen("http://%s/metrics" % b.params["stats_listen"],
                                              timeout=10).read().decode()
                for line in body.splitlines():
                    if line.startswith("perimd_greylist_db"):
                        name, v = line.rsplit(" ", 1)
                        total[name] = total.get(name, 0) + float(v)
            return total

        def counter():
            return metrics().get("perimd_greylist_db_queries_total", 0)
        m0 = metrics()
        measure("perimd x%d" % nbox, m, ports, [b.pid for b in boxes], args, known,
                args.sessions * nbox, counter)
        m1 = metrics()
        d = {k: m1[k] - m0.get(k, 0) for k in m1}
        nb = d.get("perimd_greylist_db_batches_total", 0)
        print("%-18s %d decisions sent to the database in %d batches (%.1f per batch), "
              "%d round trips, %d retries" % (
                  "", d.get("perimd_greylist_db_batched_total", 0), nb,
                  d.get("perimd_greylist_db_batched_total", 0) / nb if nb else 0,
                  d.get("perimd_greylist_db_queries_total", 0),
                  sum(v for k, v in d.items() if k.startswith("perimd_greylist_db_retries"))),
              flush=True)
    finally:
        for b in boxes:
            b.stop()


def wait_port(port, proc, what, timeout=30):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited (%s)" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("%s did not listen" % what)


def bench_daemon(m, d, args, name, cmd, port):
    """A peer's policy daemon: start it, warm it, measure it, stop it."""
    log = open(os.path.join(d, "%s.log" % cmd[0]), "wb")
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        wait_port(port, p, cmd[0])
        known = known_triplets(args.known)
        warm([port], known, min(args.sessions, 50), 1.0)
        measure(name, m, [port], [p.pid], args, known, args.sessions)
    finally:
        p.terminate()
        p.wait(10)
        log.close()


def bench_sqlgrey(m, d, args):
    if not shutil.which("sqlgrey"):
        print("sqlgrey: not installed (Debian package sqlgrey, libdbd-mysql-perl)")
        return
    m.sql("CREATE DATABASE bench_sqlgrey")
    port = free_port()
    conf = os.path.join(d, "sqlgrey.conf")
    sd = os.path.join(d, "sqlgrey")
    os.makedirs(sd, exist_ok=True)
    for f in ("clients_ip_whitelist", "clients_fqdn_whitelist"):
        open(os.path.join(sd, f), "w").close()
    with open(conf, "w") as f:
        f.write("conf_dir = %s\ninet = %d\nuser = root\ngroup = root\npidfile = %s/sqlgrey.pid\n"
                "db_type = mysql\ndb_name = bench_sqlgrey\ndb_host = 127.0.0.1\ndb_port = %d\n"
                "db_user = root\ndb_pass = x\nreconnect_delay = 0\nmax_connect_age = 24\n"
                "awl_age = 60\ngroup_domain_level = 1000000\nlog_override = whitelist:0,grey:0,"
                "spam:0\nadmin_mail = \nclean_method = sync\n" % (sd, port, sd, m.port))
    bench_daemon(m, d, args, "sqlgrey", ["sqlgrey", "-f", conf], port)


def bench_postgrey(m, d, args):
    if not shutil.which("postgrey"):
        print("postgrey: not installed")
        return
    port = free_port()
    pg = os.path.join(d, "pg")
    os.makedirs(pg, exist_ok=True)
    shutil.chown(pg, "postgrey", "postgrey")
    empty = os.path.join(d, "empty")
    open(empty, "w").close()
    bench_daemon(m, d, args, "postgrey (BDB)",
                 ["postgrey", "--inet=127.0.0.1:%d" % port, "--dbdir=" + pg, "--delay=1",
                  "--user=postgrey", "--group=postgrey", "--whitelist-clients=" + empty,
                  "--whitelist-recipients=" + empty, "--auto-whitelist-clients=0"], port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--known", type=int, default=500)
    ap.add_argument("--new", type=float, default=0.5)
    ap.add_argument("--boxes", default="1,3")
    ap.add_argument("--skip", default="")
    args = ap.parse_args()
    random.seed(1)
    d = tempfile.mkdtemp(prefix="perimd-bench-fleet-")
    os.chmod(d, 0o755)
    m = test_grey.MariaDB(os.path.join(d, "mariadb"))
    m.install()
    m.start()
    print("mix: %.0f%% new triplets, %.0f%% known (passed in the warm-up, %d of them); %d "
          "sessions per box" % (args.new * 100, (1 - args.new) * 100, args.known, args.sessions))
    try:
        for n in (int(x) for x in args.boxes.split(",") if x):
            bench_perimd(m, d, args, n)
        if "sqlgrey" not in args.skip:
            bench_sqlgrey(m, d, args)
        if "postgrey" not in args.skip:
            bench_postgrey(m, d, args)
    finally:
        m.stop()
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    harness.PERIMD_BIN = os.environ["PERIMD_BIN"]
    main()
