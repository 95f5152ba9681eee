"""test_scan_overlap.py - relay_scan_overlap (issue 19 part 3): the relay
runs while the scan does, and no refused message ever completes a backend
transaction.

perimd's own scanner (libclamav) with a signature database the test writes
(test_av.py's EICAR, built from pieces); the backend is hostile_backend.py,
which offers CHUNKING (RFC 3030) or not and records everything it got,
aborted transactions included (how they ended: RSET, EOF ...). To hold a
verdict while the relay runs, the scanner process is stopped (SIGSTOP)
until the backend has what it can get before the verdict, then continued:
no timing guesses.
"""

import os
import re
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, known_params, wait_for  # noqa: E402
from test_av import EICAR, SIG_EICAR, scanner_pid, write_db  # noqa: E402
from test_milter import Peer  # noqa: E402
from test_stats import metrics  # noqa: E402

CHUNKING = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"]
PLAIN = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]


def pooled(p, n):
    """Wait until n of the backend's 250s to RSET came back: a connection is
    counted once it is idle in the pool again. A message relayed while the
    only connection still waits for its RSET reply would open a second one
    (a connection is not held back for one being reset)."""
    key = 'perimd_backend_replies_total{stage="rset",class="2xx"}'
    assert wait_for(lambda: metrics(p).get(key, 0) >= n, 10), metrics(p).get(key, 0)


def body_of(kb):
    """A message of about kb KB: several BDAT chunks, lines with a leading
    dot (stuffed for DATA, sent as they are in BDAT)."""
    lines = [b"Subject: overlap %d KB" % kb, b""]
    n = 0
    while sum(len(x) + 2 for x in lines) < kb * 1024:
        lines.append((b"." if n % 7 == 0 else b"") + b"line %06d " % n + b"x" * 60)
        n += 1
    return b"\r\n".join(lines) + b"\r\n"


VIRUS = b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n" + b"padding line\r\n" * 3000


def start(perimd_factory, tmp_path, backends, **params):
    conf = {"relay_backends": ", ".join(b.target for b in backends), "relay_domains": "example.com",
            "av_scanner": "libclamav", "av_threads": 1,
            "clamav_database_directory": write_db(str(tmp_path / "db")), "relay_scan_overlap": "yes"}
    conf.update({k: v for k, v in {"greylist": "no", "reject_unknown_sender_domain": "no"}.items()
                 if k in known_params()})
    conf.update(params)
    return perimd_factory(**conf)


def transaction(c, body):
    """MAIL, RCPT, DATA and the body with its final dot; the reply is read
    by the caller (so it can act while perimd holds it)."""
    expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
    expect(c.cmd("RCPT TO:<b@example.com>"), 250)
    expect(c.cmd("DATA"), 354)
    stuffed = b"\r\n".join(b"." + x if x.startswith(b".") else x for x in body.split(b"\r\n"))
    c.send(stuffed + b".\r\n")


def held(p, c, b, body, until):
    """Send body with the scanner stopped; continue it once until() holds
    (what backend b got before the verdict, never a LAST nor DATA); the
    client's reply."""
    pid = scanner_pid(p)
    os.kill(pid, signal.SIGSTOP)
    n_end = len(lasts(b)) + len(b.commands_of("DATA"))
    try:
        transaction(c, body)
        assert wait_for(until, 10), "the backend never got what it should before the verdict"
        assert c.reply(0.2) is None  # the client waits for the verdict
        assert len(lasts(b)) + len(b.commands_of("DATA")) == n_end, b.commands
    finally:
        os.kill(pid, signal.SIGCONT)
    return c.reply(30)


def session(p):
    c = Client(p.port, timeout=30)
    expect(c.cmd("EHLO client.test"), 250)
    return c


def lasts(b):
    return [x for x in b.commands if re.match(r"BDAT \d+ LAST", x, re.I)]


def relayed(b, body):
    """The one message b completed is body, byte for byte, after perimd's
    own header lines."""
    assert len(b.messages) == 1, b.messages
    data = b.messages[0]["data"]
    assert data.endswith(body)
    assert data.startswith(b"Received: ") and data[:-len(body)].endswith(b"\r\n")
    return b.messages[0]


def test_clean_via_bdat_and_virus_abandoned(perimd_factory, tmp_path, hostile):
    """CHUNKING backend: a clean 100 KB message goes as BDAT chunks while
    the scan is held, BDAT 0 LAST only after it, identical bytes (XFORWARD
    before MAIL as without overlap); EICAR: 554 5.7.1 to the client, the
    backend got chunks, never a LAST, then RSET; the connection is pooled
    and carries the next message."""
    b = hostile(caps=CHUNKING + ["XFORWARD NAME ADDR PROTO HELO"])
    p = start(perimd_factory, tmp_path, [b], relay_xforward_hosts="127.0.0.1")
    body = body_of(100)
    with session(p) as c:
        r = held(p, c, b, body, lambda: sum(x.startswith("BDAT") for x in b.commands) >= 5
                 and len(b.raw[0]) > 0 and sum(map(len, b.raw[0])) > 100 * 1024)
        expect(r, 250, "2.0.0")
        m = relayed(b, body)
        assert m["via"] == "BDAT" and len(m["chunks"]) >= 5
        assert lasts(b) == ["BDAT 0 LAST"]
        verbs = [x.split()[0].split(":")[0] for x in b.commands]
        assert verbs.index("XFORWARD") < verbs.index("MAIL") < verbs.index("BDAT")
        pooled(p, 1)

        ncmd = len(b.commands)
        r = held(p, c, b, VIRUS, lambda: any(x.startswith("BDAT") for x in b.commands[ncmd:]))
        expect(r, 554, "5.7.1", r"virus found: " + re.escape(SIG_EICAR))
        assert wait_for(lambda: b.aborted, 10)
        a = b.aborted[0]
        assert a["how"] == "RSET" and a["chunks"] and EICAR in a["data"], a
        assert len(b.messages) == 1 and len(lasts(b)) == 1
        pooled(p, 2)
        # the connection went back to the pool: the next message uses it
        transaction(c, b"Subject: after\r\n\r\nclean\r\n")
        expect(c.reply(30), 250)
    assert b.connections == 1 and len(b.messages) == 2
    assert re.search(r"status=abandoned", p.log_text())


def test_unheld_virus_never_completes(perimd_factory, tmp_path, hostile):
    """Without holding the scanner, whichever ends first: EICAR small and
    large, refused, and no LAST ever reached the backend for them."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, tmp_path, [b])
    with session(p) as c:
        for body in (b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n", VIRUS):
            transaction(c, body)
            expect(c.reply(30), 554, "5.7.1")
        transaction(c, b"Subject: clean\r\n\r\nclean\r\n")
        expect(c.reply(30), 250)
    assert len(b.messages) == 1 and b"clean" in b.messages[0]["data"]
    assert len(lasts(b)) == 1
    assert all(EICAR not in m["data"] for m in b.messages)


def test_no_chunking_envelope_only(perimd_factory, tmp_path, hostile):
    """A backend without CHUNKING: the envelope during the scan, DATA only
    after a clean verdict; a virus: RSET after the RCPTs, never DATA."""
    b = hostile(caps=PLAIN)
    p = start(perimd_factory, tmp_path, [b])
    body = body_of(20)
    with session(p) as c:
        r = held(p, c, b, body, lambda: b.commands_of("RCPT"))
        expect(r, 250)
        m = relayed(b, body)
        assert m["via"] == "DATA" and not b.commands_of("BDAT")
        pooled(p, 1)
        r = held(p, c, b, VIRUS, lambda: len(b.commands_of("RCPT")) == 2)
        expect(r, 554, "5.7.1")
        assert wait_for(lambda: b.aborted, 10)
        assert b.aborted[0]["how"] == "RSET" and not b.aborted[0]["chunks"]
    assert len(b.commands_of("DATA")) == 1 and b.connections == 1


@pytest.mark.parametrize("what", ["off", "header_checks", "milter"])
def test_no_overlap(perimd_factory, tmp_path, hostile, what):
    """relay_scan_overlap = no, or with header_checks or smtpd_milters set:
    the classic path; the backend sees nothing while the scan is held,
    then DATA, never BDAT."""
    b = hostile(caps=CHUNKING)
    params = {}
    peer = None
    if what == "off":
        params["relay_scan_overlap"] = "no"
    elif what == "header_checks":
        hc = tmp_path / "header_checks"
        hc.write_text("/^Subject: never-matches-this$/ REJECT no\n")
        params["header_checks"] = "regexp:%s" % hc
    else:
        peer = Peer(tmp_path)
        params.update(smtpd_milters=peer.spec, milter_command_timeout="5s",
                      milter_content_timeout="5s")
    try:
        p = start(perimd_factory, tmp_path, [b], **params)
        body = body_of(20)
        pid = scanner_pid(p)
        with session(p) as c:
            os.kill(pid, signal.SIGSTOP)
            try:
                transaction(c, body)
                assert c.reply(1.0) is None
                assert not b.commands_of("MAIL")
            finally:
                os.kill(pid, signal.SIGCONT)
            expect(c.reply(30), 250)
        assert b.messages and b.messages[0]["via"] == "DATA" and not b.commands_of("BDAT")
        # (a milter may add its own header lines: the body is compared)
        assert b.messages[0]["data"].endswith(body.split(b"\r\n\r\n", 1)[1])
    finally:
        if peer:
            peer.stop()


@pytest.mark.parametrize("stage,reply,code,enh", [
    ("eod", "554 5.7.1 content refused here", 554, "5.7.1"),
    ("bdat", ["250 2.0.0 ok", "552 5.3.4 chunk refused here"], 552, "5.3.4"),
    ("bdat", "452 4.3.1 chunk deferred here", 451, "4.4.1")])
def test_backend_refuses(perimd_factory, tmp_path, hostile, stage, reply, code, enh):
    """The backend refuses at BDAT LAST or at a chunk: a 5xx reaches the
    client, as a refusal of the final dot does without overlap; a 4xx at
    a chunk fails over (nothing was completed), so with one backend 451.
    The connection is reused for the next message when its replies are all
    in, and nothing was ever completed for the refused one."""
    b = hostile(caps=CHUNKING, reply={stage: reply})
    p = start(perimd_factory, tmp_path, [b])
    with session(p) as c:
        transaction(c, body_of(60))
        r = c.reply(30)
        expect(r, code, enh)
        if code != 451:
            assert "chunk" in r[1] or "content" in r[1], r
    assert not b.messages
    assert wait_for(lambda: b.aborted, 10) and b.aborted[0]["how"] in ("refused", "RSET", "EOF")
    if stage == "eod":
        assert lasts(b) == ["BDAT 0 LAST"]
    else:
        assert not lasts(b)


def test_backend_dies_mid_chunks(perimd_factory, tmp_path, hostile):
    """The only backend closes the connection mid-chunks: 451 to the
    client (its retry loses nothing). With a second backend: failover and
    a full replay there, byte for byte."""
    dead = hostile(caps=CHUNKING)
    dead.die_at_bdat = 2
    p = start(perimd_factory, tmp_path, [dead])
    body = body_of(60)
    with session(p) as c:
        transaction(c, body)
        r = c.reply(30)
        assert r is not None and r[0] == 451 and r[1].startswith("4."), r
    assert not dead.messages and dead.aborted and dead.aborted[0]["how"] == "EOF"
    assert not lasts(dead)

    good = hostile(caps=CHUNKING)
    p2 = start(perimd_factory, tmp_path, [dead, good])
    with session(p2) as c:
        transaction(c, body)
        expect(c.reply(30), 250)
    assert not dead.messages
    assert relayed(good, body)["via"] == "BDAT"



def test_shutdown_mid_overlap(perimd_factory, tmp_path, hostile):
    """SIGTERM past shutdown_timeout while a message is both scanned and
    relayed: the session keeps it (as without overlap), the client gets
    the outcome once the scan ends, the message is delivered once, and
    perimd exits cleanly."""
    import threading
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, tmp_path, [b], shutdown_timeout="1s")
    pid = scanner_pid(p)
    body = body_of(30)
    errors = []

    def stop():
        try:
            p.stop(timeout=30)
        except AssertionError as e:  # sanitizer report, unclean exit
            errors.append(str(e))

    stopper = threading.Thread(target=stop)
    with session(p) as c:
        os.kill(pid, signal.SIGSTOP)
        try:
            transaction(c, body)
            assert wait_for(lambda: b.commands_of("BDAT"), 10)
            stopper.start()
            p.wait_log(r"shutdown: message of client \S+ still being relayed; waiting", 10)
            assert not lasts(b)
        finally:
            os.kill(pid, signal.SIGCONT)
        expect(c.reply(30), 250)
    stopper.join(40)
    assert not stopper.is_alive() and not errors, errors
    assert relayed(b, body)["via"] == "BDAT" and lasts(b) == ["BDAT 0 LAST"]
