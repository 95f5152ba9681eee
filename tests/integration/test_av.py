"""test_av.py - pre-queue virus scanning (av_scanner), end to end: the real
binary with its scanner process (libclamav), or a real clamd started here,
smtp-sink as the backend.

The signature database is written by the tests (no download): the EICAR
test string, built at run time from pieces so no file of the repository
holds it, and a marker that only ever appears decoded (inside a base64 MIME
part, or deflated inside a zip), so a match proves that mail and archive
parsing are on. Verdicts are asserted as replies with their enhanced codes
(DESIGN.md "Replies") and as what the backend received.
"""

import base64
import io
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import zipfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, known_params, smtp_source, expect  # noqa: E402
from clamd_helper import EICAR, Clamd, write_ndb  # noqa: E402,F401 (Clamd: for the tests that import it)

MARKER = b"perimd-decoded-only-" + b"7f3a9c1e5b"
MARKER2 = b"perimd-after-reload-" + b"2c8d4e6f0a"
SIG_EICAR = "Perimd.Test.EICAR.UNOFFICIAL"
SIG_MARKER = "Perimd.Test.Marker.UNOFFICIAL"
SIG_MARKER2 = "Perimd.Test.Marker2.UNOFFICIAL"
CLEAN = b"Subject: clean\r\n\r\nnothing to see here\r\n"


def write_db(path, extra=()):
    """The test signature directory: EICAR, the marker and extra."""
    return write_ndb(path, [("Perimd.Test.EICAR", EICAR), ("Perimd.Test.Marker", MARKER)] + list(extra))


def attachment(data, filename, ctype="application/octet-stream"):
    """A multipart/mixed message with data as a base64 attachment."""
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"Subject: attachment\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b0undary\"\r\n\r\n"
            b"--b0undary\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--b0undary\r\nContent-Type: " + ctype.encode() + b"; name=\"" + filename.encode() +
            b"\"\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"" + filename.encode() + b"\"\r\n\r\n" +
            b64 + b"--b0undary--\r\n")


def zipped(name, data):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data * 4)
    return buf.getvalue()




def send(c, body, timeout=30):
    """One transaction on a greeted session; the reply to the final dot."""
    expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
    expect(c.cmd("RCPT TO:<b@example.com>"), 250)
    expect(c.cmd("DATA"), 354)
    lines = body.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)
    c.send(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    return c.reply(timeout)


def session(port):
    c = Client(port, timeout=30)
    expect(c.cmd("EHLO client.test"), 250)
    return c


def start(perimd_factory, sink, **params):
    base = {"relay_backends": "[127.0.0.1]:%d" % sink.port, "relay_domains": "example.com"}
    off = {"greylist": "no", "reject_unknown_sender_domain": "no", "stats_listen": ""}
    base.update({k: v for k, v in off.items() if k in known_params()})
    base.update(params)
    return perimd_factory(**base)


def libclamav(perimd_factory, sink, tmp_path, **params):
    db = write_db(str(tmp_path / "db"))
    p = dict(av_scanner="libclamav", clamav_database_directory=db, av_threads=2)
    p.update(params)
    return start(perimd_factory, sink, **p), db


def scanner_pid(p, nth=1, timeout=15):
    """PID of the nth scanner process perimd reported ready."""
    deadline = time.monotonic() + timeout
    while True:
        pids = re.findall(r"scanner process (\d+) ready", p.log_text())
        if len(pids) >= nth:
            return int(pids[nth - 1])
        assert time.monotonic() < deadline, "no scanner #%d:\n%s" % (nth, p.log_text()[-3000:])
        time.sleep(0.05)


INFECTED = [
    ("body", EICAR + b"\r\n", SIG_EICAR),
    ("base64 attachment", attachment(EICAR, "eicar.com"), SIG_EICAR),
    ("zip attachment", attachment(zipped("eicar.com", EICAR), "eicar.zip", "application/zip"),
     SIG_EICAR),
    ("decoded-only marker, base64", attachment(MARKER * 3, "notes.bin"), SIG_MARKER),
    ("decoded-only marker, zip", attachment(zipped("notes.txt", MARKER), "notes.zip",
                                            "application/zip"), SIG_MARKER),
]


def check_verdicts(p, sink, cases=INFECTED):
    """Every infected case gets 554 5.7.1 with its name in one session that
    goes on; the backend gets only the clean message, byte for byte."""
    with session(p.port) as c:
        for what, body, name in cases:
            r = send(c, b"Subject: " + what.encode() + b"\r\n" + body)
            expect(r, 554, "5.7.1", r"virus found: " + re.escape(name))
        expect(send(c, CLEAN), 250)
        expect(c.cmd("QUIT"), 221)
    assert sink.wait_count(1, 10)
    time.sleep(0.2)
    msgs = sink.messages()
    assert len(msgs) == 1, "the backend got %d messages" % len(msgs)
    assert b"nothing to see here" in msgs[0]


def test_libclamav_verdicts(perimd_factory, sink, tmp_path):
    """EICAR as body, base64 attachment and zip, and a signature only a
    decoder can see: 554 5.7.1, nothing relayed; clean mail is relayed."""
    p, _ = libclamav(perimd_factory, sink, tmp_path)
    check_verdicts(p, sink)
    log = p.log_text()
    assert re.search(r"av: virus found: %s, scan=" % re.escape(SIG_EICAR), log)
    assert re.search(r"av: clean, scan=", log)


def test_av_none_changes_nothing(perimd_factory, sink):
    """av_scanner = none (the default): no scan, EICAR is relayed."""
    p = start(perimd_factory, sink)
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 250)
    assert sink.wait_count(1, 10)
    assert "av:" not in p.log_text()


@pytest.mark.parametrize("action,code,enh", [("reject", 552, "5.3.4"), ("accept", 250, None),
                                             ("tempfail", 451, "4.3.0")])
def test_oversize(perimd_factory, sink, tmp_path, action, code, enh):
    """Over av_max_size: not scanned, av_oversize_action applies, logged."""
    p, _ = libclamav(perimd_factory, sink, tmp_path, av_max_size="2k", av_oversize_action=action)
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40 + EICAR + b"\r\n"
    with session(p.port) as c:
        expect(send(c, big), code, enh)
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1")   # small: scanned
    p.wait_log(r"av: not scanned: size \d+ over av_max_size 2048, av_oversize_action=" + action)
    assert sink.wait_count(1 if action == "accept" else 0, 5)
    time.sleep(0.3)
    assert sink.count() == (1 if action == "accept" else 0)


def test_scanner_killed(perimd_factory, sink, tmp_path):
    """A scanner hung with a message in flight, then SIGKILLed: that message
    gets 451 4.3.0, a message of a client that left is dropped, the scanner
    is back within seconds and the same sessions go on, under load.
    in_flow_delay = 0: the DATA commands below must get their 354 while
    the scanner hangs with the load's scans (test_in_flow_delay.py has
    that wait)."""
    p, _ = libclamav(perimd_factory, sink, tmp_path, in_flow_delay="0")
    pid = scanner_pid(p)
    # Load: sessions that keep sending clean mail through the kill.
    stop = threading.Event()
    results, errors = [], []

    def load():
        try:
            with session(p.port) as c:
                while not stop.is_set():
                    r = send(c, CLEAN)
                    results.append(r)
                    assert r is not None and (r[0] == 250 or (r[0] == 451 and
                                                              r[1].startswith("4.3.0 "))), r
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        os.kill(pid, signal.SIGSTOP)
        with session(p.port) as c, session(p.port) as gone:
            # gone: its message is in flight when the client leaves.
            expect(gone.cmd("MAIL FROM:<a@client.test>"), 250)
            expect(gone.cmd("RCPT TO:<b@example.com>"), 250)
            expect(gone.cmd("DATA"), 354)
            gone.send(EICAR + b"\r\n.\r\n")
            expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
            expect(c.cmd("RCPT TO:<b@example.com>"), 250)
            expect(c.cmd("DATA"), 354)
            c.send(CLEAN + b".\r\n")
            assert c.reply(0.5) is None   # held while the scanner hangs
            # Reading is paused while a message is scanned: the reset is
            # seen, and the session cleaned up, once the scan has ended.
            gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone.close()
            ended = p.log_text().count("disconnect from")
            os.kill(pid, signal.SIGKILL)
            expect(c.reply(10), 451, "4.3.0", "content scanner unavailable")
            deadline = time.monotonic() + 10
            while p.log_text().count("disconnect from") <= ended:
                assert time.monotonic() < deadline, "the session that left was not cleaned up"
                time.sleep(0.05)
            new = scanner_pid(p, 2, timeout=10)
            assert new != pid
            # The same session goes on with the new scanner.
            expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
            expect(send(c, CLEAN), 250)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    assert len(results) > 4 and sum(1 for r in results if r[0] == 250) > 0
    p.wait_log(r"scanner process %d: ended \(signal 9\); restarting it" % pid)


def test_timeout_fail_action(perimd_factory, sink, tmp_path):
    """No verdict within av_timeout: av_fail_action (accept here: relayed,
    logged as a failure)."""
    p, _ = libclamav(perimd_factory, sink, tmp_path, av_timeout="1s", av_fail_action="accept")
    pid = scanner_pid(p)
    os.kill(pid, signal.SIGSTOP)
    try:
        with session(p.port) as c:
            t0 = time.monotonic()
            expect(send(c, CLEAN), 250)
            assert time.monotonic() - t0 >= 0.9
    finally:
        os.kill(pid, signal.SIGCONT)
    p.wait_log(r"av: scan failed: timed out, .*av_fail_action=accept")
    assert sink.wait_count(1, 5)


def sighup_under_source(p, sink, db, n, reload_timeout):
    """smtp-source sends n messages of 2000 bytes at 10 sessions to p; once
    40 arrived at the sink, MARKER2's signature is added to db and p gets
    SIGHUP. Every message must be delivered; returns smtp-source's output
    (after one message already at the sink)."""
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
        p.wait_log(r"signatures reloaded: 3 signatures", timeout=reload_timeout)
    finally:
        t.join(150)
    assert out.get("rc") == 0, out
    assert sink.wait_count(n + 1, 20), "backend got %d of %d" % (sink.count(), n + 1)
    return out["text"]


def test_reload_under_load(perimd_factory, sink, tmp_path):
    """SIGHUP while smtp-source sends: nothing is lost, and a signature
    added to the database is in force after the reload."""
    p, db = libclamav(perimd_factory, sink, tmp_path)
    with session(p.port) as c:
        expect(send(c, b"Subject: m2\r\n\r\n" + MARKER2 + b"\r\n"), 250)   # not known yet
    assert sink.wait_count(1, 10)
    sighup_under_source(p, sink, db, 300, 20)
    with session(p.port) as c:
        expect(send(c, b"Subject: m2\r\n\r\n" + MARKER2 + b"\r\n"), 554, "5.7.1", SIG_MARKER2)


def test_reload_bad_database_keeps_engine(perimd_factory, sink, tmp_path):
    """A database that fails to load keeps the old engine (logged)."""
    p, db = libclamav(perimd_factory, sink, tmp_path)
    with open(os.path.join(db, "broken.ndb"), "w") as f:
        f.write("this is not a signature\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"signature reload failed, keeping the old engine", timeout=20)
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)


# ---- clamd ------------------------------------------------------------------


@pytest.fixture
def clamd(tmp_path):
    c = Clamd(tmp_path, write_db(str(tmp_path / "clamdb")))
    c.start()
    yield c
    c.stop()


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_clamd(perimd_factory, sink_factory, clamd, where):
    """The same verdicts through a real clamd (zINSTREAM), then clamd
    stopped: 451 4.3.0 with tempfail, relayed with accept."""
    target = "clamd:" + (clamd.sock if where == "unix" else "127.0.0.1:%d" % clamd.port)
    sink = sink_factory()
    p = start(perimd_factory, sink, av_scanner=target)
    check_verdicts(p, sink, INFECTED[:1] + INFECTED[2:3] + INFECTED[4:])
    # A body over one INSTREAM chunk, spilled to a file by the spool.
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1500 + EICAR + b"\r\n"
    with session(p.port) as c:
        expect(send(c, big), 554, "5.7.1", SIG_EICAR)
    clamd.stop()
    sink2 = sink_factory()
    tempfail = start(perimd_factory, sink2, av_scanner=target)
    accept = start(perimd_factory, sink2, av_scanner=target, av_fail_action="accept")
    with session(tempfail.port) as c:
        expect(send(c, CLEAN), 451, "4.3.0", "content scanner unavailable")
    with session(accept.port) as c:
        expect(send(c, CLEAN), 250)
    assert sink2.wait_count(1, 5)
    time.sleep(0.2)
    assert sink2.count() == 1
    accept.wait_log(r"av: scan failed: clamd .*av_fail_action=accept")
