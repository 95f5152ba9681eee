"""test_relay_stream.py - relay_while_receiving (issue 19 part 4): the body
goes to the backend while the client sends it, over an idle pooled
connection, and the backend's transaction is completed (BDAT LAST, or the
final dot) only once every end-of-data verdict is clean.

The backend is hostile_backend.py, which offers CHUNKING (RFC 3030) or not
and records everything it got, unfinished transactions included (how they
ended: RSET, EOF ...). A stream needs an idle pooled connection at DATA, so
every session first sends one message the usual way (warm()), whose
connection then waits in the pool of that session's loop. The client sends
the body in two parts and the test waits, between them, until the backend
has part of it: the stream is seen, not guessed.
"""

import os
import re
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, wait_for  # noqa: E402
from test_av import EICAR, SIG_EICAR, write_db  # noqa: E402
from test_stats import metrics  # noqa: E402

CHUNKING = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"]
PLAIN = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
CAPS = {"bdat": CHUNKING, "data": PLAIN}


def body_of(kb, head=b"Subject: stream"):
    """About kb KB, with lines that start with a dot (stuffed on the wire
    for DATA, sent as they are in BDAT)."""
    lines = [head, b""]
    n = 0
    while sum(len(x) + 2 for x in lines) < kb * 1024:
        lines.append((b"." if n % 7 == 0 else b"") + b"line %06d " % n + b"x" * 60)
        n += 1
    return b"\r\n".join(lines) + b"\r\n"


def stuffed(body):
    return b"\r\n".join(b"." + x if x.startswith(b".") else x for x in body.split(b"\r\n"))


def start(perimd_factory, backends, **params):
    conf = {"relay_backends": ", ".join(b.target for b in backends), "relay_while_receiving": "yes"}
    conf.update(params)
    return perimd_factory(**conf)


def session(p):
    c = Client(p.port, timeout=30)
    expect(c.cmd("EHLO client.test"), 250)
    return c


def begin(c):
    expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
    expect(c.cmd("RCPT TO:<b@example.com>"), 250)
    expect(c.cmd("DATA"), 354)


def resets(p):
    """The backends' 250s to RSET perimd took in: each connection is back
    in the pool by the time it is counted."""
    return metrics(p).get('perimd_backend_replies_total{stage="rset",class="2xx"}', 0)


def warm(c, p, b, body=b"Subject: warm\r\n\r\nwarm\r\n"):
    """A message the usual way (there is no idle connection yet). With
    relay_while_receiving a connection whose transaction ended with a 2xx
    goes back to the pool without RSET, before the client hears its 250:
    idle in the pool of the session's loop from then on."""
    n = resets(p)
    begin(c)
    c.send(stuffed(body) + b".\r\n")
    expect(c.reply(30), 250)
    if p.params["relay_while_receiving"] == "yes":
        assert resets(p) == n and not b.commands_of("RSET")
    return b.messages[-1]


def raw_size(b):
    """Octets the backend received, all connections."""
    return sum(sum(map(len, x)) for x in b.raw)


def streamed(c, b, body, split=60000):
    """The first `split` octets of body, then wait until the backend has a
    good part of them (before the client's final dot); returns the rest
    to send."""
    w = stuffed(body) + b".\r\n"
    before = raw_size(b)
    c.send(w[:split])
    assert wait_for(lambda: raw_size(b) > before + split // 2, 10), ("nothing streamed before the final dot", " ".join(b.commands[-12:]), len(b.raw), [sum(map(len, x)) for x in b.raw])
    return w[split:]


def lasts(b):
    return [x for x in b.commands if re.match(r"BDAT \d+ LAST", x, re.I)]


def normal(data):
    """A relayed message with its Received: field's id and date blanked."""
    return re.sub(rb"id [A-Z0-9]+\.\d+", b"id X", re.sub(rb"; [^\r]*\r\n", b"; D\r\n", data, count=1), count=1)


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_streamed_identical(perimd_factory, hostile, via):
    """The body reaches the backend before the client's final dot (BDAT
    chunks, or inside DATA dot-stuffed), the transaction completes only
    after it, the client's 250 follows the backend's, and the bytes are
    those of the usual path (the warm-up sent the same body), Received:
    field included; counted."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b])
    body = body_of(100)
    with session(p) as c:
        first = warm(c, p, b, body)
        begin(c)
        rest = streamed(c, b, body)
        assert len(b.messages) == 1
        c.send(rest)
        r = c.reply(30)
        expect(r, 250, "2.0.0", "H2")
    m = b.messages[1]
    assert m["via"] == via.upper() and first["via"] == "DATA"
    assert normal(m["data"]) == normal(first["data"]) and m["data"].endswith(body)
    assert m["data"] != first["data"]  # its own id: really a second copy
    if via == "bdat":
        assert len(m["chunks"]) >= 3 and lasts(b) == ["BDAT 0 LAST"]
    else:
        assert m["wire"] == stuffed(m["data"]) + b".\r\n"
    assert b.connections == 1 and not b.aborted
    assert not [x for x in b.commands if x.startswith("MAIL") and "SIZE=" in x]
    mx = metrics(p)
    assert mx["perimd_relay_streamed_total"] == 1
    assert mx["perimd_relay_stream_unavailable_total"] == 1  # the warm-up


def refuse_body(what):
    if what == "loop":
        return b"".join(b"Received: from h%d by h%d\r\n" % (i, i) for i in range(51)) + body_of(100)
    if what == "bare_lf":
        return body_of(100) + b"a bare\nLF\r\n"
    return body_of(100)


REFUSALS = {"size": (552, "5.3.4"), "bare_lf": (550, "5.5.2"), "loop": (554, "5.4.6")}


@pytest.mark.parametrize("via", ["bdat", "data"])
@pytest.mark.parametrize("what", ["size", "bare_lf", "loop", "disconnect", "timeout"])
def test_refused_never_completes(perimd_factory, hostile, via, what):
    """A message refused at its end (over message_size_limit, a bare LF
    under smtpd_forbid_bare_newline = reject, more than 50 Received:), or
    whose client went away or timed out mid-DATA, never completes a backend
    transaction: with CHUNKING the chunks are dropped by RSET and the
    connection serves the next message; inside DATA it is closed."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], message_size_limit="90k" if what == "size" else "1m",
              smtpd_forbid_bare_newline="reject", smtpd_timeout="3s")
    c = session(p)
    warm(c, p, b)
    begin(c)
    rest = streamed(c, b, refuse_body(what))
    if what in REFUSALS:
        c.send(rest)
        expect(c.reply(30), *REFUSALS[what])
    elif what == "disconnect":
        c.close()
    else:
        r = c.reply(10)  # the client says nothing more: smtpd_timeout
        assert r is not None and r[0] == 421, r
    assert wait_for(lambda: b.aborted, 10)
    a = b.aborted[0]
    assert len(b.messages) == 1 and not lasts(b)
    assert len(a["data"]) > 20000 and b"line" in a["data"]
    if via == "bdat":
        assert a["how"] == "RSET" and a["chunks"], a
    else:
        assert a["how"] == "EOF" and a["via"] == "DATA", a
    if what in REFUSALS:  # the session goes on: the next message is fine
        if via == "bdat":  # over the same connection, once it is reset
            assert wait_for(lambda: resets(p) >= 1, 10)
        begin(c)
        c.send(b"Subject: after\r\n\r\nfine\r\n.\r\n")
        expect(c.reply(30), 250)
        assert len(b.messages) == 2
        assert b.connections == (1 if via == "bdat" else 2)
    c.close()
    # A silent client stalls the stream first (1 s < smtpd_timeout).
    reason = {"disconnect": "client_gone", "timeout": "slow_client"}.get(what, "refused")
    assert wait_for(lambda: metrics(p).get('perimd_relay_stream_abandoned_total{reason="%s"}' % reason) == 1,
                    10)
    # (the message after a refusal streams when the connection was kept)
    assert metrics(p)["perimd_relay_streamed_total"] == (via == "bdat" and what in REFUSALS)


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_virus_never_completes(perimd_factory, hostile, tmp_path, via):
    """av_scanner on: the body streams while it arrives, the scan starts at
    the final dot, and EICAR is refused (554 5.7.1) without the backend
    ever completing it; a clean message next streams and completes."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], av_scanner="libclamav", av_threads=1,
              clamav_database_directory=write_db(str(tmp_path / "db")))
    virus = b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n" + b"padding line\r\n" * 6000
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, virus))
        expect(c.reply(30), 554, "5.7.1", re.escape(SIG_EICAR))
        assert wait_for(lambda: b.aborted, 10)
        a = b.aborted[0]
        assert EICAR in a["data"] and len(b.messages) == 1 and not lasts(b)
        assert a["how"] == ("RSET" if via == "bdat" else "EOF"), a
        if via == "bdat":
            assert wait_for(lambda: resets(p) >= 1, 10)
        else:  # a new connection is made, then pooled: wait for it to be idle
            warm(c, p, b)
        body = body_of(100)
        begin(c)
        c.send(streamed(c, b, body))
        expect(c.reply(30), 250)
    assert b.messages[-1]["data"].endswith(body) and b.messages[-1]["via"] == via.upper()
    assert metrics(p)["perimd_relay_streamed_total"] == 1


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_backend_dies_mid_stream(perimd_factory, hostile, via):
    """The backend closes the connection mid-stream, before the final dot:
    nothing was completed, so after the client's final dot the message is
    replayed from the spool the usual way (the next backend first here,
    failover unchanged), byte for byte, and the client hears 250 once."""
    dead = hostile(caps=CAPS[via])
    good = hostile(caps=CAPS[via])
    p = start(perimd_factory, [dead, good])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, dead)
        dead.die_at_bdat = 2
        dead.die_in_data = 30000
        dead.reply = {"greeting": "421 4.3.2 not now"}  # its replay fails over
        begin(c)
        w = stuffed(body) + b".\r\n"
        c.send(w[:60000])
        assert wait_for(lambda: dead.aborted, 10)
        assert dead.aborted[0]["how"] == "EOF" and not good.messages
        c.send(w[60000:])
        expect(c.reply(30), 250)
    assert len(dead.messages) == 1 and not lasts(dead)
    assert len(good.messages) == 1 and good.messages[0]["data"].endswith(body)
    assert good.messages[0]["via"] == "DATA"  # the usual replay
    assert metrics(p)['perimd_relay_stream_abandoned_total{reason="backend"}'] == 1


@pytest.mark.parametrize("via", ["bdat", "data"])
@pytest.mark.parametrize("reply,code,enh", [("554 5.7.1 content refused here", 554, "5.7.1"),
                                            ("451 4.3.0 try again later", 451, "4.3.0")])
def test_backend_refuses_at_end(perimd_factory, hostile, via, reply, code, enh):
    """The backend refuses the completed stream (5xx or 4xx to BDAT LAST or
    the final dot): the client hears it, and the message, whose final dot
    went out, is never sent again."""
    b = hostile(caps=CAPS[via], reply={"eod": ["250 2.0.0 Ok", reply]})
    p = start(perimd_factory, [b])
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, body_of(100)))
        r = c.reply(30)
        expect(r, code, enh)
        assert "refused here" in r[1] or "again later" in r[1]
    # (hostile_backend records a DATA message before its reply to the dot)
    assert len(b.messages) == (1 if via == "bdat" else 2) and len(b.commands_of("MAIL")) == 2
    assert len(lasts(b)) == (1 if via == "bdat" else 0)
    assert metrics(p)["perimd_relay_streamed_total"] == 1


def test_slow_client_gives_up(perimd_factory, hostile):
    """A client that stops sending for longer than the stall bound (1 s)
    does not hold the backend connection: the stream is abandoned (RSET),
    and after the final dot the message is replayed the usual way."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        rest = streamed(c, b, body)
        p.wait_log(r"client too slow for relay_while_receiving", 10)
        assert wait_for(lambda: b.aborted, 10) and b.aborted[0]["how"] == "RSET"
        c.send(rest)
        expect(c.reply(30), 250)
    assert len(b.messages) == 2 and b.messages[1]["via"] == "DATA"
    assert b.messages[1]["data"].endswith(body) and not lasts(b)
    assert metrics(p)['perimd_relay_stream_abandoned_total{reason="slow_client"}'] == 1


def stopper(p):
    """A thread that stops perimd (SIGTERM, then its bounded wait), not yet
    started, and the list its failures go to."""
    errors = []

    def stop():
        try:
            p.stop(timeout=30)
        except AssertionError as e:
            errors.append(str(e))

    return threading.Thread(target=stop), errors


def test_shutdown_mid_stream(perimd_factory, hostile):
    """SIGTERM while a message streams: at shutdown_timeout the client in
    DATA gets 421 as without streaming, the backend's transaction is
    abandoned unfinished, and perimd exits cleanly."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b], shutdown_timeout="1s")
    stopper_thread, errors = stopper(p)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        streamed(c, b, body_of(100))
        stopper_thread.start()
        r = c.reply(10)
        assert r is not None and r[0] == 421, r
    stopper_thread.join(40)
    assert not stopper_thread.is_alive() and not errors, errors
    assert len(b.messages) == 1 and not lasts(b)
    assert wait_for(lambda: b.aborted, 10) and b.aborted[0]["chunks"]


@pytest.mark.parametrize("what", ["off", "header_checks"])
def test_not_streamed(perimd_factory, hostile, tmp_path, what):
    """relay_while_receiving = no, or header_checks set (the message may
    change at its end): the backend sees nothing of a message before its
    final dot."""
    b = hostile(caps=CHUNKING)
    params = {}
    if what == "off":
        params["relay_while_receiving"] = "no"
    else:
        hc = tmp_path / "header_checks"
        hc.write_text("/^Subject: never-matches-this$/ REJECT no\n")
        params["header_checks"] = "regexp:%s" % hc
    p = start(perimd_factory, [b], **params)
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        nmail = len(b.commands_of("MAIL"))
        begin(c)
        w = stuffed(body) + b".\r\n"
        c.send(w[:60000])
        assert c.reply(1.0) is None  # no reply before the final dot; time to stream
        assert len(b.commands_of("MAIL")) == nmail
        c.send(w[60000:])
        expect(c.reply(30), 250)
    assert b.messages[-1]["via"] == "DATA" and not b.commands_of("BDAT")
    assert metrics(p)["perimd_relay_streamed_total"] == 0


def test_with_scan_overlap(perimd_factory, hostile, tmp_path):
    """relay_scan_overlap on as well: a message that finds no idle
    connection at DATA takes the overlap (BDAT chunks during the scan), the
    next one streams; each is completed once, and EICAR is never."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b], av_scanner="libclamav", av_threads=1, relay_scan_overlap="yes",
              clamav_database_directory=write_db(str(tmp_path / "db")))
    body = body_of(100)
    with session(p) as c:
        begin(c)
        c.send(stuffed(body) + b".\r\n")  # no idle connection yet: the overlap
        expect(c.reply(30), 250)
        assert b.messages[0]["via"] == "BDAT" and lasts(b) == ["BDAT 0 LAST"]
        begin(c)
        c.send(streamed(c, b, body))
        expect(c.reply(30), 250)
        begin(c)
        c.send(streamed(c, b, b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n" + b"padding line\r\n" * 6000))
        expect(c.reply(30), 554, "5.7.1")
    assert len(b.messages) == 2 and len(lasts(b)) == 2 and b.connections == 1
    assert all(m["data"].endswith(body) for m in b.messages)
    assert wait_for(lambda: b.aborted, 10) and EICAR in b.aborted[0]["data"]
    m = metrics(p)
    assert m["perimd_relay_streamed_total"] == 1 and m["perimd_relay_stream_unavailable_total"] == 1
    assert m['perimd_relay_stream_abandoned_total{reason="refused"}'] == 1
