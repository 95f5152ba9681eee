"""test_scanner_procs.py - the scanner's workers are processes (issue #19):
av_threads single-threaded worker processes under a generation process
that loaded the engine, below the scanner process; a worker that dies on a
message ends only that message (451, av_fail_action = tempfail) and is
replaced; workers keep the scanner's confinement and die with it; reloads
(swap and inplace) under smtp-source load refuse nothing and replace the
generation; a failed inplace load leaves no engine (451) until a good one;
a worker whose scan hangs is killed and replaced, the other scans go on.

The real binary, its scanner and libclamav with test_av.py's signature
database; smtp-sink as the backend.
"""

import base64
import os
import re
import signal
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import expect, free_port  # noqa: E402
from test_av import (CLEAN, EICAR, MARKER2, SIG_EICAR, SIG_MARKER2, libclamav,  # noqa: E402
                     scanner_pid, send, session, sighup_under_source)


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


def slow_message(parts=6000):
    """A message libclamav takes a good part of a second to scan: thousands
    of small base64 attachments, each decoded to a temporary file."""
    blob = base64.encodebytes(b"\x00\x01 not much in here " * 12).replace(b"\n", b"\r\n")
    out = [b"Subject: many parts\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"]
    for i in range(parts):
        out.append(b"--b\r\nContent-Type: application/octet-stream; name=\"f%d.bin\"\r\n"
                   b"Content-Transfer-Encoding: base64\r\n\r\n" % i + blob)
    out.append(b"--b--\r\n")
    return b"".join(out)


def holds_message(pid, min_size):
    """A worker holds a message of at least min_size bytes (the request's
    descriptor: perimd's memfd or spool file) while it scans it."""
    try:
        fds = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return False
    for fd in fds:
        try:
            if os.stat("/proc/%d/fd/%s" % (pid, fd)).st_size >= min_size:
                return True
        except OSError:
            pass
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
        # The scanner's confinement holds in each (inherited through fork).
        with open("/proc/%d/status" % pid) as f:
            assert re.search(r"^NoNewPrivs:\s+1$", f.read(), re.M), pid
        with open("/proc/%d/limits" % pid) as f:
            assert re.search(r"^Max core file size\s+0\s+0 ", f.read(), re.M), pid
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
        for _ in range(6):
            expect(send(c, CLEAN), 250)
    assert sink.wait_count(6, 10)


def test_killed_worker(perimd_factory, sink, tmp_path, monkeypatch):
    """A worker killed (SIGSEGV) while it scans a slow message: that message
    gets 451 4.3.0, the messages the other worker scans meanwhile 250; it is
    replaced, its temporary files are removed, and later messages pass and
    EICAR is still refused."""
    # The test build's ASan would catch the SIGSEGV, report and abort: a
    # crash as in a production build instead.
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1:handle_segv=0")
    p, _ = libclamav(perimd_factory, sink, tmp_path, av_threads=2)
    spid = scanner_pid(p)
    _, ws = wait_workers(spid, 2)
    slow = slow_message()
    killed, replies, others = None, {}, []
    stop = threading.Event()

    def slow_client():
        with session(p.port) as c:
            replies["slow"] = send(c, slow, timeout=90)

    def other_client():
        with session(p.port) as c:
            while not stop.is_set():
                others.append(send(c, CLEAN))

    # A scan can end before the kill lands: then another try.
    for attempt in range(4):
        threads = [threading.Thread(target=slow_client), threading.Thread(target=other_client)]
        stop.clear()
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 60
            while killed is None and time.monotonic() < deadline and threads[0].is_alive():
                for w in ws:
                    if holds_message(w, len(slow) // 2):
                        os.kill(w, signal.SIGSEGV)
                        killed = w
                        break
                time.sleep(0.005)
            threads[0].join(90)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        if killed is not None and replies["slow"][0] == 451:
            break
        if killed is not None:
            _, ws = wait_workers(spid, 2, not_in=[killed])
            killed = None
    assert killed is not None, "no worker seen scanning the slow message"
    expect(replies["slow"], 451, "4.3.0")
    assert others and all(r[0] == 250 for r in others), others
    p.wait_log(r"scanning process %d killed by signal 11; replacing it" % killed)
    p.wait_log(r"av: scan failed: the scanning process died")
    _, now = wait_workers(spid, 2, not_in=[killed])
    # What libclamav had written for the killed scan is removed.
    spool = p.params["body_spool_directory"]
    assert not os.path.exists(os.path.join(spool, "perimd-scan.%d" % killed)), os.listdir(spool)
    assert all(os.path.isdir(os.path.join(spool, "perimd-scan.%d" % w)) for w in now)
    with session(p.port) as c:
        for _ in range(4):
            expect(send(c, CLEAN), 250)
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
    assert scanner_pid(p) == spid and "restarting it" not in p.log_text()


def test_workers_die_with_the_scanner(perimd_factory, sink, tmp_path):
    """The scanner killed: its engine process and workers go with it
    (PR_SET_PDEATHSIG); the restarted scanner has new ones that scan."""
    p, _ = libclamav(perimd_factory, sink, tmp_path, av_threads=2)
    spid = scanner_pid(p)
    gen, ws = wait_workers(spid, 2)
    os.kill(spid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while any(os.path.exists("/proc/%d" % x) and comm(x) in ("perimd-engine", "perimd-scan")
              for x in [gen] + ws):
        assert time.monotonic() < deadline, "the scanner's processes outlived it"
        time.sleep(0.05)
    new = scanner_pid(p, 2, timeout=20)
    _, now = wait_workers(new, 2)
    assert not set(now) & set(ws)
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
        expect(send(c, CLEAN), 250)


def reload_under_source(p, sink, db, spid, n=300):
    """SIGHUP (a signature added) while smtp-source sends n messages: every
    one is delivered; the new signature is in force after."""
    with session(p.port) as c:
        expect(send(c, b"Subject: m2\r\n\r\n" + MARKER2 + b"\r\n"), 250)  # not known yet
    assert sink.wait_count(1, 10)
    old_gen, old = wait_workers(spid, 2)
    text = sighup_under_source(p, sink, db, n, 30)
    log = p.log_text()
    assert "scan failed" not in log and "451" not in text, log[-3000:]
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


def test_reload_inplace_fails_then_loads(perimd_factory, sink, tmp_path):
    """inplace with a database that fails to load: no engine process is
    left, messages get 451 4.3.0 (never refused for good); the next good
    reload brings an engine and its workers back."""
    p, db = libclamav(perimd_factory, sink, tmp_path, av_threads=2, av_reload_mode="inplace")
    spid = scanner_pid(p)
    _, old = wait_workers(spid, 2)
    broken = os.path.join(db, "broken.ndb")
    with open(broken, "w") as f:
        f.write("this is not a signature\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"signature reload failed: .*no engine: scans fail until a load succeeds", timeout=20)
    deadline = time.monotonic() + 10
    while workers(spid):
        assert time.monotonic() < deadline, workers(spid)
        time.sleep(0.05)
    with session(p.port) as c:
        expect(send(c, CLEAN), 451, "4.3.0")
    os.unlink(broken)
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"signatures reloaded: 2 signatures", timeout=20)
    wait_workers(spid, 2, not_in=old)
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
        expect(send(c, CLEAN), 250)


def metric(p, name):
    """The value of a metric on perimd's stats_listen (a labelled one with its
    labels: name{label="value"})."""
    url = "http://%s/metrics" % p.params["stats_listen"]
    body = urllib.request.urlopen(url, timeout=10).read().decode()
    m = re.search(r"^%s (\d+)$" % re.escape(name), body, re.M)
    assert m, "%s not in /metrics" % name
    return int(m.group(1))


def test_hung_worker(perimd_factory, sink, tmp_path):
    """A worker that hangs (stopped: SIGSTOP) on the request it is given:
    that message gets 451 4.3.0 at av_timeout; the scanner kills the worker
    once the scan has run av_timeout + 5 s, logs it and counts it, and the
    generation replaces it. Meanwhile the other worker scans every other
    message (250, never 451); the scanner process itself is not restarted,
    and EICAR is still refused after."""
    p, _ = libclamav(perimd_factory, sink, tmp_path, av_threads=2, av_timeout="1s",
                     stats_listen="127.0.0.1:%d" % free_port())
    spid = scanner_pid(p)
    gen, ws = wait_workers(spid, 2)
    hung = ws[0]
    os.kill(hung, signal.SIGSTOP)
    replies, errors = [], []
    stop = threading.Event()

    def client():
        try:
            with session(p.port) as c:
                while not stop.is_set():
                    replies.append((time.monotonic(), send(c, CLEAN)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client) for _ in range(2)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        line = p.wait_log(r"scanning process %d killed: its scan \(request=(\d+/\d+)\) "
                          r"ran (\d+) ms, past av_timeout \+ 5 s" % hung, timeout=30)
        killed_at = time.monotonic()
        p.wait_log(r"scanning process %d killed by signal 9; replacing it" % hung)
        g2, now = wait_workers(spid, 2, not_in=[hung])
        # More messages after the replacement, on both workers.
        n = len(replies)
        deadline = time.monotonic() + 20
        while len(replies) < n + 6:
            assert time.monotonic() < deadline and not errors, errors
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert g2 == gen and ws[1] in now and hung not in now, (gen, ws, g2, now)
    codes = [r[1][0] for r in replies]
    # The one message given to the stopped worker, and only it, failed.
    assert codes.count(451) == 1 and codes.count(250) == len(codes) - 1, codes
    fail_t, fail = next(r for r in replies if r[1][0] == 451)
    expect(fail, 451, "4.3.0", "content scanner unavailable")
    assert fail_t - t0 < 10, "the hung message was not failed at av_timeout"
    # The other worker went on scanning while the first hung.
    assert sum(1 for t, r in replies if fail_t < t < killed_at and r[0] == 250) > 0, replies
    assert 6000 <= int(line.group(2)) < 12000, line.group(0)
    # The message's own line names the same request.
    p.wait_log(r"av: scan failed: timed out, scan=[\d.]+, request=%s, av_fail_action=tempfail"
               % line.group(1))
    assert metric(p, "perimd_av_scans_killed_total") == 1
    assert metric(p, "perimd_av_scanner_restarts_total") == 0
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
        expect(send(c, CLEAN), 250)
    assert scanner_pid(p) == spid and "restarting it" not in p.log_text()
