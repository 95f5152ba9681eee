"""test_scanner_procs.py - the scanner's workers are processes (issue #19):
av_threads single-threaded worker processes under a generation process
that loaded the engine, below the scanner process; a worker that dies on a
message ends only that message (451, av_fail_action = tempfail) and is
replaced; reloads (swap and inplace) under smtp-source load refuse nothing
and replace the generation.

The real binary, its scanner and libclamav with test_av.py's signature
database; smtp-sink as the backend; `ss` (iproute2) to see that a stopped
worker holds a request.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import expect, smtp_source  # noqa: E402
from test_av import (CLEAN, EICAR, MARKER2, SIG_EICAR, SIG_MARKER2, libclamav,  # noqa: E402
                     scanner_pid, send, session, write_db)


def children(pid):
    """The pids whose parent is pid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def workers(spid):
    """{generation pid: [worker pids]} below the scanner process spid."""
    return {g: sorted(w for w in children(g) if comm(w) == "perimd-scan")
            for g in children(spid) if comm(g) == "perimd-engine"}


def wait_workers(spid, n, not_in=(), timeout=20):
    """Wait until exactly one generation with n workers, none of not_in, runs;
    returns (generation pid, worker pids)."""
    deadline = time.monotonic() + timeout
    while True:
        gens = workers(spid)
        if len(gens) == 1:
            g, ws = next(iter(gens.items()))
            if len(ws) == n and not set(ws) & set(not_in):
                return g, ws
        assert time.monotonic() < deadline, "scanner %d: generations %r" % (spid, gens)
        time.sleep(0.05)


def has_request(pid):
    """A worker's socket holds a request it has not read (ss: Recv-Q)."""
    out = subprocess.run(["ss", "-x", "-a", "-n", "-p"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, timeout=10).stdout.decode()
    for line in out.splitlines():
        if "pid=%d," % pid in line:
            f = line.split()
            if len(f) > 2 and f[2].isdigit() and int(f[2]) > 0:
                return True
    return False


def test_workers_are_processes(perimd_factory, sink, tmp_path):
    """av_threads workers, each a single-threaded process named perimd-scan,
    children of one perimd-engine process below the scanner; they scan."""
    p, _ = libclamav(perimd_factory, sink, tmp_path, av_threads=3)
    spid = scanner_pid(p)
    assert comm(spid) == "perimd-scanner"
    gen, ws = wait_workers(spid, 3)
    for pid in [spid, gen] + ws:
        assert len(os.listdir("/proc/%d/task" % pid)) == 1, "process %d has threads" % pid
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
        for _ in range(6):
            expect(send(c, CLEAN), 250)
    assert sink.wait_count(6, 10)


def test_killed_worker(perimd_factory, sink, tmp_path, monkeypatch):
    """Both workers stopped, one request each; one dies (SIGSEGV): its
    message gets 451 4.3.0, the other's 250; it is replaced, and later
    messages pass and EICAR is still refused."""
    # The test build's ASan would catch the SIGSEGV, report and abort: a
    # crash as in a production build instead.
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1:handle_segv=0")
    p, _ = libclamav(perimd_factory, sink, tmp_path, av_threads=2)
    spid = scanner_pid(p)
    gen, ws = wait_workers(spid, 2)
    replies = {}

    def client(i):
        with session(p.port) as c:
            replies[i] = send(c, b"Subject: m%d\r\n\r\nmessage %d\r\n" % (i, i), timeout=60)

    for w in ws:
        os.kill(w, signal.SIGSTOP)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while not all(has_request(w) for w in ws):
            assert time.monotonic() < deadline, "the stopped workers got no request each"
            time.sleep(0.05)
        os.kill(ws[0], signal.SIGSEGV)  # delivered when it runs again
    finally:
        for w in ws:
            os.kill(w, signal.SIGCONT)
        for t in threads:
            t.join(60)
    codes = sorted(r[0] for r in replies.values())
    assert codes == [250, 451], replies
    bad = [r for r in replies.values() if r[0] == 451][0]
    expect(bad, 451, "4.3.0")
    p.wait_log(r"scanning process %d killed by signal 11; replacing it" % ws[0])
    p.wait_log(r"av: scan failed: the scanning process died")
    _, now = wait_workers(spid, 2, not_in=[ws[0]])
    assert ws[1] in now
    with session(p.port) as c:
        for _ in range(4):
            expect(send(c, CLEAN), 250)
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
    assert sink.wait_count(5, 10)
    assert scanner_pid(p) == spid and "restarting it" not in p.log_text()


def reload_under_source(p, sink, db, spid, n=300):
    """SIGHUP (a signature added) while smtp-source sends n messages: every
    one is delivered; the new signature is in force after."""
    with session(p.port) as c:
        expect(send(c, b"Subject: m2\r\n\r\n" + MARKER2 + b"\r\n"), 250)  # not known yet
    assert sink.wait_count(1, 10)
    old_gen, old = wait_workers(spid, 2)
    out = {}

    def source():
        out["rc"], out["text"] = smtp_source("-s", "10", "-m", str(n), "-l", "2000",
                                             "-f", "a@client.test", "-t", "b@example.com",
                                             "127.0.0.1:%d" % p.port, timeout=120)

    t = threading.Thread(target=source)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while sink.count() < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        write_db(db, [("Perimd.Test.Marker2", MARKER2)])
        p.proc.send_signal(signal.SIGHUP)
        p.wait_log(r"signatures reloaded: 3 signatures", timeout=30)
    finally:
        t.join(150)
    assert out.get("rc") == 0, out
    assert sink.wait_count(n + 1, 20), "backend got %d of %d" % (sink.count(), n + 1)
    log = p.log_text()
    assert "scan failed" not in log and "451" not in out["text"], log[-3000:]
    # The old generation retired: a new engine process, new workers.
    gen, _ = wait_workers(spid, 2, not_in=old)
    assert gen != old_gen
    with session(p.port) as c:
        expect(send(c, b"Subject: m2\r\n\r\n" + MARKER2 + b"\r\n"), 554, "5.7.1", SIG_MARKER2)
        expect(send(c, CLEAN), 250)
    return log


def test_reload_swap_under_load(perimd_factory, sink, tmp_path):
    p, db = libclamav(perimd_factory, sink, tmp_path, av_threads=2)
    log = reload_under_source(p, sink, db, scanner_pid(p))
    assert "scans wait for the new ones" not in log


def test_reload_inplace_under_load(perimd_factory, sink, tmp_path):
    p, db = libclamav(perimd_factory, sink, tmp_path, av_threads=2, av_reload_mode="inplace")
    log = reload_under_source(p, sink, db, scanner_pid(p))
    assert re.search(r"scans wait for the new ones", log)
