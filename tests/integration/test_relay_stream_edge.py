"""test_relay_stream_edge.py - relay_while_receiving (issue 19 part 3)
attacked from outside: what a client, a backend or an admin can do to a
stream that test_relay_stream.py does not try. Each test holds the rule
of the feature: the bytes a backend gets are those of the usual path
(compared with a copy sent the usual way), and a message is completed at
a backend (final dot, BDAT LAST) once, and only when perimd says 250.

The backend is hostile_backend.py (records aborted transactions; its
delay, read_pause, die_in_bdat settings make it slow or fail on cue);
helpers are test_relay_stream.py's. Cases, most for BDAT and DATA streams:
- bytes: dot lines, a body of only dots starting with "..", lines of
  997..1001 and 2501 octets, command-like lines, in TCP segments cut
  between CR and LF, before a line's dot and between stuffed dots; the
  smuggling sequences cut mid-stream to a lenient backend; a body spilled
  to file while it streams; an empty body; over STARTTLS; with XFORWARD;
- verdicts: exactly message_size_limit and one octet over; body_spool_limit
  reached; undeclared 8-bit; BODY=8BITMIME to a backend without 8BITMIME;
  EICAR across the 16 KB read boundary with relay_scan_overlap;
- the client: the whole transaction in one write (fits, too big), two
  messages pipelined, QUIT pipelined, gone right after DATA, half-closed
  after its dot, BDAT (not offered: 502, its payload read as commands);
- the backend: recipients partly or all refused, a chunk refused (5xx,
  4xx), closing inside a chunk, not reading for 2.5 s (TCP backpressure)
  while the client sends at full speed, CHUNKING without PIPELINING,
  CHUNKING offered but BDAT answered 502 (stream, relay_scan_overlap);
- contention: a client dripping its body under the stall bound while a
  complete message waits for the only connection; three such streams and
  one waiter behind a slow RSET;
- the admin: SIGHUP mid-stream (and relay_while_receiving turned off),
  relay_backends moved mid-stream, SIGTERM with a stream mid-body or past
  its dot, SIGHUP twice then SIGTERM under six streaming clients.
"""

import os
import re
import signal
import socket
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import expect, wait_for  # noqa: E402
from test_av import EICAR, SIG_EICAR, write_db  # noqa: E402
from test_relay_stream import (CAPS, CHUNKING, PLAIN, begin, body_of, lasts, normal, raw_size,  # noqa: E402
                               resets, session, start, stopper, streamed, stuffed, warm)
from test_stats import metrics  # noqa: E402


def nodelay(c):
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def dotty_body():
    """About 100 KB that dot-stuffing and folding can get wrong: lines that
    are only dots, a body starting with "..", lines of exactly 998, 999 and
    1000 octets (smtp_line_length_limit 998), long lines that start with a
    dot (folded and stuffed), empty lines, all densely mixed so that every
    chunk and segment boundary falls near one of them."""
    lines = [b"Subject: dots", b"", b"..starts with two dots", b"."]
    pattern = [b".", b"..", b"...", b". x", b"", b".a", b"x.", b"." * 40, b"a",
               b"BDAT 12 LAST", b"MAIL FROM:<evil@attacker.test>", b"RSET"]
    n = 0
    while sum(len(x) + 2 for x in lines) < 100 * 1024:
        lines.append(pattern[n % len(pattern)])
        if n % 37 == 0:
            lines.append(b"." + b"L" * (996 + n % 5))  # 997..1001 octets
        if n % 101 == 0:
            lines.append(b"." + b"y" * 2500)  # folded at 998 twice
        n += 1
    lines += [b"..", b"."]
    return b"\r\n".join(lines) + b"\r\n"


def tricky_pieces(wire, limit=400):
    """wire cut at the points a stuffing state machine can miss: between CR
    and LF, between a line end and a dot, between the two dots of a
    stuffed dot; at most limit pieces."""
    found = [m.start() for m in re.finditer(rb"\r\n\.", wire)]
    step = max(1, len(found) // limit)
    cuts = sorted(set(x + (1, 2, 3)[k % 3] for k, x in enumerate(found[::step])))
    cuts = [x for x in cuts if 0 < x < len(wire)]
    out, last = [], 0
    for x in cuts:
        out.append(wire[last:x])
        last = x
    out.append(wire[last:])
    return out


def send_pieces(c, pieces, pause=0.001):
    for piece in pieces:
        c.send(piece)
        time.sleep(pause)


def only_dots():
    """A body of nothing but dot lines, starting with "..": no header
    section, no blank line; every line is stuffed on the wire."""
    lines = [b"..", b"."]
    n = size = 7
    while size < 100 * 1024:
        lines.append(b"." * (1 + n % 5))
        size += 3 + n % 5
        n += 1
    return b"\r\n".join(lines) + b"\r\n"


@pytest.mark.parametrize("via", ["bdat", "data"])
@pytest.mark.parametrize("shape", ["dotty", "only_dots"])
def test_stuffing_and_folding_at_every_boundary(perimd_factory, hostile, via, shape):
    """A body of dot lines and long lines, sent in segments cut between CR
    and LF, before a line's dot and between stuffed dots: the streamed copy
    (sent while it arrives, in the pieces perimd got) is byte for byte the
    usual path's (the warm-up sent the same body), nothing stuffed twice
    nor missed (a missed "." line would end DATA early at the backend)."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b])
    body = dotty_body() if shape == "dotty" else only_dots()
    with session(p) as c:
        nodelay(c)
        first = warm(c, p, b, body)
        begin(c)
        wire = stuffed(body) + b".\r\n"
        before = raw_size(b)
        pieces = tricky_pieces(wire)
        half = len(pieces) // 2
        send_pieces(c, pieces[:half])
        sent = sum(map(len, pieces[:half]))
        assert sent > 40000
        assert wait_for(lambda: raw_size(b) > before + sent // 2, 10), "nothing streamed"
        send_pieces(c, pieces[half:])
        expect(c.reply(30), 250)
    m = b.messages[1]
    assert m["via"] == via.upper()
    assert normal(m["data"]) == normal(first["data"])
    assert m["wire"] == (m["data"] if via == "bdat" else stuffed(m["data"]) + b".\r\n")
    # folded as Postfix folds: no line over 998 octets, the dot lines intact
    assert max(len(x) for x in m["data"].split(b"\r\n")) <= 998
    if shape == "dotty":
        assert b"\r\n.\r\n..\r\n...\r\n" in m["data"] and m["data"].endswith(b"\r\n..\r\n.\r\n")
    else:
        assert m["data"].endswith(body)
    assert len(b.messages) == 2 and not b.aborted
    assert not [x for x in b.commands if "evil" in x or x.startswith("BDAT 12")]  # body stays body
    assert metrics(p)["perimd_relay_streamed_total"] == 1


def exact_body(size):
    """A body of exactly size octets (the size message_size_limit counts:
    the content as unstuffed, CRLFs included)."""
    head = b"Subject: exact\r\n\r\n"
    line = b"y" * 78 + b"\r\n"
    n, rest = divmod(size - len(head), len(line))
    assert rest >= 3 or rest == 0
    return head + line * n + (b"z" * (rest - 2) + b"\r\n" if rest else b"")


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_size_limit_exact_and_one_over(perimd_factory, hostile, via):
    """A body of exactly message_size_limit octets streams and completes;
    one octet more is refused (552 5.3.4) and its stream never completes:
    no second LAST, no second final dot."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], message_size_limit="100k")
    exact = exact_body(102400)
    assert len(exact) == 102400
    over = exact_body(102401)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, exact))
        expect(c.reply(30), 250)
        assert b.messages[1]["data"].endswith(exact) and b.messages[1]["via"] == via.upper()
        if via == "data":  # the stream's connection went back idle after its 250
            assert wait_for(lambda: metrics(p).get("perimd_relay_streamed_total") == 1, 5)
        begin(c)
        c.send(streamed(c, b, over, split=60000))
        expect(c.reply(30), 552, "5.3.4")
        assert wait_for(lambda: b.aborted, 10)
    assert len(b.messages) == 2 and len(lasts(b)) == (1 if via == "bdat" else 0)
    a = b.aborted[0]
    assert a["how"] == ("RSET" if via == "bdat" else "EOF") and len(a["data"]) > 20000
    mx = metrics(p)
    assert mx["perimd_relay_streamed_total"] == 1
    assert mx['perimd_relay_stream_abandoned_total{reason="refused"}'] == 1


@pytest.mark.parametrize("via", ["bdat", "data"])
@pytest.mark.parametrize("how", ["partly", "all"])
def test_backend_refuses_recipients(perimd_factory, hostile, via, how):
    """The backend refuses some (or all) recipients of a streamed message:
    no body goes out on the stream, nothing completes, and after the final
    dot the usual replay gets the same refusals: 451 (partly refused, the
    client retries) or the backend's 550 (all)."""
    ok, no = "250 2.1.5 Ok", "550 5.1.1 no such user here"
    # one RCPT for the warm-up, then two per attempt: stream, replay
    seq = [ok] + ([ok, no, ok, no] if how == "partly" else [no, no, no, no])
    b = hostile(caps=CAPS[via], reply={"rcpt": seq})
    p = start(perimd_factory, [b])
    with session(p) as c:
        warm(c, p, b)
        expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
        expect(c.cmd("RCPT TO:<b@example.com>"), 250)
        expect(c.cmd("RCPT TO:<c@example.com>"), 250)
        expect(c.cmd("DATA"), 354)
        w = stuffed(body_of(100)) + b".\r\n"
        c.send(w[:50000])
        assert wait_for(lambda: len(b.commands_of("RCPT")) >= 3, 10)  # the stream's envelope
        c.send(w[50000:])
        if how == "partly":
            expect(c.reply(30), 451, "4.5.0")
        else:
            expect(c.reply(30), 550, "5.1.1", "no such user")
    assert len(b.messages) == 1 and not lasts(b)
    assert not b.commands_of("BDAT") and len(b.commands_of("DATA")) == 1  # the warm-up's only
    assert len(b.commands_of("MAIL")) == 3
    mx = metrics(p)
    assert mx["perimd_relay_streamed_total"] == 0
    assert mx['perimd_relay_stream_abandoned_total{reason="backend"}'] == 1
    # the stream's attempt is not logged as the message's outcome
    what = "deferred" if how == "partly" else "rejected"
    assert len(re.findall(r"relay=\S+, rcpts=2, .*status=%s " % what, p.log_text())) == 1
    assert len(re.findall(r"status=unfinished \(%s: " % what, p.log_text())) == 1


@pytest.mark.parametrize("reply", ["554 5.6.0 chunk refused", "452 4.3.1 no room for the chunk"])
def test_backend_refuses_a_chunk(perimd_factory, hostile, reply):
    """The backend answers a mid-stream BDAT chunk with 5xx or 4xx: the
    stream ends unfinished (no LAST) and after the final dot the message
    is replayed the usual way, once; the client hears 250 only then."""
    b = hostile(caps=CHUNKING, reply={"bdat": ["250 2.0.0 ok", reply, "250 2.0.0 ok"]})
    p = start(perimd_factory, [b])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        w = stuffed(body) + b".\r\n"
        c.send(w[:60000])
        assert wait_for(lambda: b.aborted, 10) and b.aborted[0]["how"] == "refused"
        c.send(w[60000:])
        expect(c.reply(30), 250)
    assert len(b.messages) == 2 and b.messages[1]["via"] == "DATA" and b.messages[1]["data"].endswith(body)
    assert not lasts(b)
    # counted and logged as a stream given up, not as a refused message;
    # perimd_backend_transaction_seconds observes the warm-up and the
    # replay, the attempts that decided a message
    mx = metrics(p)
    assert mx['perimd_relay_stream_abandoned_total{reason="backend"}'] == 1
    assert mx["perimd_backend_transaction_seconds_count"] == 2
    log = p.log_text()
    assert "status=rejected" not in log and "status=deferred" not in log
    if reply.startswith("5"):
        assert "status=unfinished (rejected: %s; replayed after the final dot)" % reply in log


def test_backend_dies_mid_chunk(perimd_factory, hostile):
    """The backend closes the connection inside a BDAT chunk: the stream
    ends unfinished, and after the final dot the message is replayed (on a
    new connection), completed once."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        b.die_in_bdat = 12345
        begin(c)
        w = stuffed(body) + b".\r\n"
        c.send(w[:60000])
        assert wait_for(lambda: b.aborted, 10)
        c.send(w[60000:])
        expect(c.reply(30), 250)
    a = b.aborted[0]
    assert a["how"] == "EOF" and len(a["data"]) == 12345
    assert len(b.messages) == 2 and b.messages[1]["data"].endswith(body) and not lasts(b)
    assert b.connections == 2


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_slow_backend_fast_client(perimd_factory, hostile, via):
    """The backend stops reading for 2.5 s mid-stream (a small receive
    buffer: perimd's writes block) while the client sends 600 KB at full
    speed: the client is never held back by the backend, the stream is not
    mistaken for a stalled client, and the message completes once, intact."""
    b = hostile(caps=CAPS[via], rcvbuf=4096)
    b.read_pause = (30000, 2.5)
    p = start(perimd_factory, [b])
    body = body_of(600)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        w = stuffed(body) + b".\r\n"
        t0 = time.monotonic()
        c.send(w)
        sent = time.monotonic() - t0
        r = c.reply(30)
        waited = time.monotonic() - t0
        expect(r, 250)
    assert sent < 2.0, "the client waited for the backend (%.2fs)" % sent
    assert waited > 2.0  # the backend did pause
    assert len(b.messages) == 2 and b.messages[1]["data"].endswith(body)
    assert b.messages[1]["via"] == via.upper() and not b.aborted
    mx = metrics(p)
    assert mx["perimd_relay_streamed_total"] == 1
    assert not [k for k in mx if k.startswith("perimd_relay_stream_abandoned_total") and mx[k]]


def test_refused_on_chunking_without_pipelining(perimd_factory, hostile):
    """A CHUNKING backend without PIPELINING (one chunk per reply): a
    refused stream (too big) is dropped without completing, whatever reply
    was due, and the session's next message is relayed fine."""
    b = hostile(caps=["8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"], reply={"bdat": "250 2.0.0 ok"})
    b.delay = {"bdat": 0.05}
    p = start(perimd_factory, [b], message_size_limit="90k")
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, body_of(100)))
        expect(c.reply(30), 552, "5.3.4")
        assert wait_for(lambda: b.aborted, 10)
        begin(c)
        c.send(b"Subject: after\r\n\r\nfine\r\n.\r\n")
        expect(c.reply(30), 250)
    assert len(b.messages) == 2 and b.messages[1]["data"].endswith(b"fine\r\n") and not lasts(b)
    assert b.aborted[0]["chunks"] and b.aborted[0]["how"] in ("RSET", "EOF")


def test_undeclared_8bit(perimd_factory, hostile):
    """8-bit content the client did not declare: the stream went without
    BODY=8BITMIME, so it is abandoned at the dot and the replay carries
    BODY=8BITMIME; completed once."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b])
    body = body_of(100) + "caf\u00e9 cr\u00e8me\r\n".encode()
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, body))
        expect(c.reply(30), 250)
    assert len(b.messages) == 2 and b.messages[1]["data"].endswith(body) and not lasts(b)
    assert "BODY=8BITMIME" in b.messages[1]["mail"] and "BODY=8BITMIME" not in b.aborted[0]["mail"]
    assert b.aborted[0]["how"] == "RSET"


def test_declared_8bit_backend_without_8bitmime(perimd_factory, hostile):
    """BODY=8BITMIME declared, the backend lacks 8BITMIME: the stream
    cannot know yet whether the body is 7-bit, so it never starts a
    transaction; after the dot the replay finds the body 7-bit and relays
    it (RFC 6152 §3)."""
    b = hostile(caps=["PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING"])
    p = start(perimd_factory, [b])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        expect(c.cmd("MAIL FROM:<a@client.test> BODY=8BITMIME"), 250)
        expect(c.cmd("RCPT TO:<b@example.com>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(stuffed(body) + b".\r\n")
        expect(c.reply(30), 250)
    assert len(b.messages) == 2 and b.messages[1]["data"].endswith(body) and not b.aborted
    assert "BODY=" not in b.messages[1]["mail"] and b.messages[1]["via"] == "DATA"


def test_pipelined_messages_stream_back_to_back(perimd_factory, hostile):
    """A PIPELINING client sends a message's final dot and the next
    MAIL, RCPT and DATA in one write, and QUIT after the second dot with
    it: both stream over the connection the first left, each completes
    once, the replies come in order."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b])
    b1, b2 = body_of(60, b"Subject: one"), body_of(60, b"Subject: two")
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        w1 = stuffed(b1) + b".\r\n"
        c.send(w1[:30000])
        assert wait_for(lambda: raw_size(b) > 20000, 10)
        c.send(w1[30000:] + b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
        expect(c.reply(30), 250)
        expect(c.reply(10), 250)
        expect(c.reply(10), 250)
        expect(c.reply(10), 354)
        c.send(streamed(c, b, b2, split=30000) + b"QUIT\r\n")
        expect(c.reply(30), 250)
        expect(c.reply(10), 221)
    assert [m["data"][-len(b1):] for m in b.messages[1:]] == [b1, b2]
    assert lasts(b) == ["BDAT 0 LAST"] * 2 and not b.aborted and b.connections == 1
    assert metrics(p)["perimd_relay_streamed_total"] == 2


def test_client_bdat_is_not_chunking(perimd_factory, hostile):
    """perimd does not offer CHUNKING to clients: BDAT (with LAST, zero
    size, or a size that lies about the bytes after it, pipelined with
    QUIT) is refused 502 and never starts a stream or a backend
    transaction; the payload is read as commands, and refused as such."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b])
    with session(p) as c:
        ehlo = c.cmd("EHLO client.test")
        assert "CHUNKING" not in ehlo[1].upper()
        warm(c, p, b)
        expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
        expect(c.cmd("RCPT TO:<b@example.com>"), 250)
        expect(c.cmd("BDAT 0 LAST"), 502)
        c.send(b"BDAT 7\r\nSubject: x\r\n\r\nBDAT 1 LAST\r\nx\r\n")
        for _ in range(5):  # BDAT, 'Subject: x', '', BDAT, 'x'
            r = c.reply(10)
            assert r is not None and r[0] >= 500, r
        c.send(b"BDAT 100000 LAST\r\nQUIT\r\n")
        expect(c.reply(10), 502)
        expect(c.reply(10), 221)
    assert len(b.messages) == 1 and len(b.commands_of("MAIL")) == 1 and not b.aborted
    mx = metrics(p)
    assert mx["perimd_relay_streamed_total"] == 0 and mx["perimd_relay_stream_unavailable_total"] == 1


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_eicar_across_chunk_boundary_with_overlap(perimd_factory, hostile, tmp_path, via):
    """av_scanner and relay_scan_overlap on, EICAR placed across the relay's
    16 KB read boundary: refused (554 5.7.1), the streamed body reset
    (chunks) or cut (DATA), never completed; a clean message after it
    streams and completes."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], av_scanner="libclamav", av_threads=1, relay_scan_overlap="yes",
              clamav_database_directory=write_db(str(tmp_path / "db")))
    with session(p) as c:
        warm(c, p, b)  # the overlap's path (BDAT, or DATA after the verdict)
        first = b.messages[0]
        hdr = len(first["data"]) - len(b"Subject: warm\r\n\r\nwarm\r\n")  # our Received: field
        pad = b"Subject: eicar\r\n\r\n"
        fill = 16384 - 30 - hdr - len(pad)
        virus = pad + (b"p" * 70 + b"\r\n") * (fill // 72) + b"q" * (fill % 72) + b"\r\n" + EICAR + b"\r\n"
        virus += b"padding line\r\n" * 6000
        begin(c)
        c.send(streamed(c, b, virus, split=40000))
        expect(c.reply(30), 554, "5.7.1", re.escape(SIG_EICAR))
        assert wait_for(lambda: b.aborted, 10)
        if via == "bdat":
            assert wait_for(lambda: resets(p) >= 1, 10)
        else:  # the connection was closed: another is made and pooled
            warm(c, p, b)
        body = body_of(100)
        begin(c)
        c.send(streamed(c, b, body))
        expect(c.reply(30), 250)
    assert EICAR in b.aborted[0]["data"] and b.aborted[0]["how"] == ("RSET" if via == "bdat" else "EOF")
    assert b.messages[-1]["data"].endswith(body) and b.messages[-1]["via"] == via.upper()
    assert len(b.messages) == (2 if via == "bdat" else 3) and len(lasts(b)) == (2 if via == "bdat" else 0)
    assert all(EICAR not in m["data"] for m in b.messages)
    assert metrics(p)["perimd_relay_streamed_total"] == 1


def test_reload_mid_stream(perimd_factory, hostile):
    """SIGHUP while a message streams, twice (the second turning
    relay_while_receiving off): the message in flight completes once and
    the client hears 250; the next message, after the reload, is relayed
    the usual way."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        w = stuffed(body) + b".\r\n"
        c.send(w[:40000])
        assert wait_for(lambda: raw_size(b) > 30000, 10)
        os.kill(p.pid, signal.SIGHUP)
        p.wait_log(r"configuration reloaded", 10)
        c.send(w[40000:70000])
        with open(p.conf_path) as f:
            conf = f.read()
        with open(p.conf_path, "w") as f:
            f.write(conf.replace("relay_while_receiving = yes", "relay_while_receiving = no"))
        os.kill(p.pid, signal.SIGHUP)
        assert wait_for(lambda: p.log_text().count("configuration reloaded") >= 2, 10)
        c.send(w[70000:])
        expect(c.reply(30), 250)
    with session(p) as c:
        begin(c)
        c.send(stuffed(body) + b".\r\n")
        expect(c.reply(30), 250)
    assert len(b.messages) == 3 and all(m["data"].endswith(body) for m in b.messages[1:])
    assert b.messages[1]["via"] == "BDAT" and b.messages[2]["via"] == "DATA"
    assert lasts(b) == ["BDAT 0 LAST"] and not b.aborted
    assert metrics(p)["perimd_relay_streamed_total"] == 1


@pytest.mark.parametrize("when", ["mid_body", "after_dot"])
def test_shutdown_keeps_accepted_message(perimd_factory, hostile, when):
    """SIGTERM while a stream is in flight, the client finishing within
    shutdown_timeout (mid_body), or the backend slow to answer the
    completed stream (after_dot: 2 s to BDAT LAST, past the 1 s
    shutdown_timeout): the client hears 250 and the backend has the
    message once; perimd then exits cleanly."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b], shutdown_timeout="3s" if when == "mid_body" else "1s")
    stopper_thread, errors = stopper(p)
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        rest = streamed(c, b, body)
        if when == "mid_body":
            stopper_thread.start()
            p.wait_log(r"stopping: draining sessions", 10)
            c.send(rest)
        else:
            b.delay = {"eod": 2.0}
            c.send(rest)
            assert wait_for(lambda: lasts(b), 10)
            stopper_thread.start()
        expect(c.reply(30), 250)
    stopper_thread.join(40)
    assert not stopper_thread.is_alive() and not errors, errors
    assert len(b.messages) == 2 and b.messages[1]["data"].endswith(body)
    assert lasts(b) == ["BDAT 0 LAST"] and not b.aborted


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_dripping_stream_yields_to_waiting_message(perimd_factory, hostile, via):
    """An attacker's client drips its body (a line every 0.3 s, under the
    1 s stall bound) on a stream that holds the backend's only connection
    (relay_destination_concurrency_limit = 1): another client's complete
    message waiting for a connection gets it at once (the stream gives way
    to it, as streams never take a connection from complete messages)
    instead of 451 after relay_pool_wait; the dripper's message is relayed
    after its dot the usual way."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], relay_destination_concurrency_limit=1, relay_pool_wait="4s")
    with session(p) as a:
        warm(a, p, b)
        begin(a)
        a.send(b"Subject: drip\r\n\r\n")
        assert wait_for(lambda: len(b.commands_of("MAIL")) == 2, 10)  # the stream's envelope
        result = {}

        def other():
            with session(p) as c:
                begin(c)
                c.send(b"Subject: complete\r\n\r\nwaiting\r\n.\r\n")
                t0 = time.monotonic()
                result["reply"] = c.reply(30)
                result["took"] = time.monotonic() - t0

        t = threading.Thread(target=other)
        t.start()
        for i in range(20):  # 6 s of drip, longer than relay_pool_wait
            if "reply" in result:
                break
            a.send(b"drip line %d\r\n" % i)
            time.sleep(0.3)
        t.join(30)
        assert result.get("reply") and result["reply"][0] == 250, result
        assert result["took"] < 2.0, result
        a.send(b"the end\r\n.\r\n")
        expect(a.reply(30), 250)
    datas = [m["data"] for m in b.messages]
    assert len(datas) == 3 and datas[1].endswith(b"waiting\r\n") and b"the end\r\n" in datas[2]
    assert not lasts(b) or lasts(b) == []
    assert metrics(p)['perimd_relay_stream_abandoned_total{reason="slow_client"}'] == 1


@pytest.mark.parametrize("via", ["bdat", "data"])
@pytest.mark.parametrize("size", ["empty", "fits", "too_big"])
def test_whole_transaction_in_one_write(perimd_factory, hostile, via, size):
    """A client that does not wait for the 354 (MAIL, RCPT, DATA, the body
    and its dot in one write): the stream is set up and its verdict comes
    before the relay even started; a message that fits completes once,
    byte for byte; one over message_size_limit never starts a backend
    transaction's body, and the connection stays usable."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], message_size_limit="64k")
    body = {"empty": b"", "fits": body_of(40), "too_big": body_of(80)}[size]
    with session(p) as c:
        warm(c, p, b)
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n" + stuffed(body) + b".\r\n")
        expect(c.reply(10), 250)
        expect(c.reply(10), 250)
        expect(c.reply(10), 354)
        if size != "too_big":
            expect(c.reply(30), 250)
        else:
            expect(c.reply(30), 552, "5.3.4")
        begin(c)
        c.send(b"Subject: after\r\n\r\nfine\r\n.\r\n")
        expect(c.reply(30), 250)
    datas = [m["data"] for m in b.messages]
    if size != "too_big":
        assert len(datas) == 3 and datas[1].endswith(body) and datas[1].startswith(b"Received: ")
        assert datas[1].count(b"\r\n") == datas[0].count(b"\r\n") + body.count(b"\r\n") - 3
    else:
        assert len(datas) == 2 and all(b"line 000" not in x for x in datas)
        assert all(b"line 000" not in a["data"] for a in b.aborted)
    assert datas[-1].endswith(b"fine\r\n")
    assert metrics(p)["perimd_relay_streamed_total"] >= (size != "too_big")
    assert len(lasts(b)) == metrics(p)["perimd_relay_streamed_total"] * (via == "bdat")


def test_client_gone_right_after_data(perimd_factory, hostile):
    """The client sends DATA and a bit of body and closes at once (the
    stream just started): no backend transaction is completed (the
    connection, mid-envelope, is closed), and the next client's message is
    relayed fine, then streams on the connection that one left."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b])
    with session(p) as c:
        warm(c, p, b)
        c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nSubject: gone\r\n\r\nbye")
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(10)
    assert wait_for(lambda: metrics(p).get('perimd_relay_stream_abandoned_total{reason="client_gone"}') == 1
                    or metrics(p).get("perimd_relay_stream_unavailable_total") == 2, 10)
    body = body_of(100)
    with session(p) as c:
        begin(c)
        c.send(stuffed(body) + b".\r\n")
        expect(c.reply(30), 250)
        begin(c)
        c.send(streamed(c, b, body))
        expect(c.reply(30), 250)
    assert len(b.messages) == 3 and all(m["data"].endswith(body) for m in b.messages[1:])
    assert lasts(b) == ["BDAT 0 LAST"] and all(b"bye" not in a["data"] for a in b.aborted)
    assert not [m for m in b.messages if b"gone" in m["data"]]


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_spilled_body_streams_intact(perimd_factory, hostile, via):
    """A body past body_memory_limit spills to a file while it streams (the
    relay reads it from memory, then from the file): the backend gets it
    intact, once."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], body_memory_limit="64k")
    body = body_of(600)
    with session(p) as c:
        first = warm(c, p, b, body)
        begin(c)
        c.send(streamed(c, b, body, split=200000))
        expect(c.reply(30), 250)
    m = b.messages[1]
    assert m["via"] == via.upper() and normal(m["data"]) == normal(first["data"]) and not b.aborted
    assert metrics(p)["perimd_relay_streamed_total"] == 1


def test_spool_full_mid_stream(perimd_factory, hostile):
    """body_spool_limit reached while a message streams: 452 4.3.1 at its
    dot, the stream dropped at once, never completed."""
    b = hostile(caps=CHUNKING)
    p = start(perimd_factory, [b], body_spool_limit="150k")
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, body_of(300)))
        expect(c.reply(30), 452, "4.3.1")
        assert wait_for(lambda: b.aborted, 10)
        expect(c.cmd("RSET"), 250)
        begin(c)
        c.send(b"Subject: after\r\n\r\nfine\r\n.\r\n")
        expect(c.reply(30), 250)
    assert len(b.messages) == 2 and lasts(b) == ["BDAT 0 LAST"] and b.aborted[0]["how"] == "RSET"
    assert metrics(p)['perimd_relay_stream_abandoned_total{reason="refused"}'] == 1


def test_smuggling_sequences_cut_mid_stream(perimd_factory, tmp_path):
    """SMTP smuggling through a stream: each non-standard end of data
    (test_smuggling's variants) sent in two TCP segments cut inside it,
    with a hidden transaction behind, to a lenient backend (ends DATA on
    any "." line, as vulnerable servers do) that sees the body while it
    arrives: it counts one transaction per message, the hidden commands
    are body text, and no stray CR, bare LF or NUL reaches it."""
    from backend import Backend
    from test_smuggling import HEAD, SMUGGLED, VARIANTS
    lb = Backend(tmp_path, name="lenient", lenient=True)
    lb.start()
    try:
        p = start(perimd_factory, [lb])
        with session(p) as c:
            nodelay(c)
            begin(c)
            c.send(b"Subject: warm\r\n\r\nwarm\r\n.\r\n")
            expect(c.reply(30), 250)
            for seq in VARIANTS:
                begin(c)
                cut = 1 + len(seq) // 2
                c.send(HEAD + b"x" * 9000 + b"\r\nbefore" + seq[:cut])
                time.sleep(0.05)
                c.send(seq[cut:] + SMUGGLED + b"\r\n.\r\n")
                expect(c.reply(30), 250)
        st = lb.stats()
        msgs = lb.messages()
        assert st["transactions"] == len(VARIANTS) + 1 and len(msgs) == len(VARIANTS) + 1, st
        for m in msgs[1:]:
            assert m.rcpts == ["b@example.com"] and b"MAIL FROM:<evil@attacker.test>" in m.data
            assert b"\x00" not in m.data
        assert metrics(p)["perimd_relay_streamed_total"] >= len(VARIANTS) // 2
    finally:
        lb.stop()


def stream_client(p, b, no, outcomes):
    """One client streaming tagged messages until perimd goes away;
    outcomes gets (tag, reply code or None)."""
    try:
        c = session(p)
    except OSError:
        return
    try:
        warm(c, p, b)
        for k in range(50):
            tag = b"tag-%d-%d" % (no, k)
            expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
            expect(c.cmd("RCPT TO:<b@example.com>"), 250)
            r = c.cmd("DATA")
            if not r or r[0] != 354:
                return
            w = stuffed(body_of(40, b"Subject: " + tag)) + b".\r\n"
            step = len(w) // 4 + 1
            r = None
            for i in range(0, len(w), step):
                c.send(w[i:i + step])
                time.sleep(0.1)
            r = c.reply(30)
            outcomes.append((tag, r[0] if r else None))
            if not r or r[0] != 250:
                return
    except (OSError, AssertionError, TypeError):
        if "tag" in locals():
            outcomes.append((tag, None))
    finally:
        c.close()


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_reload_and_shutdown_under_streams(perimd_factory, hostile, via):
    """Six clients stream messages one after another; perimd gets SIGHUP
    twice, then SIGTERM (shutdown_timeout 1 s cuts the sessions still in
    DATA with 421): every message whose client heard 250 was completed at
    the backend exactly once, and none other was."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], shutdown_timeout="1s")
    outcomes = []
    threads = [threading.Thread(target=stream_client, args=(p, b, i, outcomes)) for i in range(6)]
    for t in threads:
        t.start()
    assert wait_for(lambda: metrics(p).get("perimd_relay_streamed_total", 0) >= 3, 20)
    os.kill(p.pid, signal.SIGHUP)
    time.sleep(0.4)
    os.kill(p.pid, signal.SIGHUP)
    time.sleep(0.4)
    p.stop(timeout=30)
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads)
    done = {}
    for m in b.messages:
        found = re.search(rb"Subject: (tag-\d+-\d+)", m["data"])
        if found:
            done[found.group(1)] = done.get(found.group(1), 0) + 1
    accepted = {tag for tag, code in outcomes if code == 250}
    assert accepted and any(code != 250 for tag, code in outcomes), outcomes
    assert all(n == 1 for n in done.values()), done
    assert set(done) == accepted, (sorted(set(done) ^ accepted), outcomes)


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_half_close_after_dot(perimd_factory, hostile, via):
    """The client writes its last body part and the dot, then shuts its
    sending side (as `nc -q` does): its EOF does not cut the stream it
    just completed; the client reads 250 and the backend has the message
    once."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, body))
        c.sock.shutdown(socket.SHUT_WR)
        expect(c.reply(30), 250)
    assert len(b.messages) == 2 and b.messages[1]["data"].endswith(body) and not b.aborted
    assert b.messages[1]["via"] == via.upper()


def test_reload_moves_backends_mid_stream(perimd_factory, hostile):
    """The admin points relay_backends elsewhere (SIGHUP) while a message
    streams to the old backend: that message completes there, once; the
    next session's message goes to the new backend; the old backend's
    pooled connection is not used for it."""
    old, new = hostile(caps=CHUNKING), hostile(caps=CHUNKING)
    p = start(perimd_factory, [old])
    body = body_of(100)
    with session(p) as c:
        warm(c, p, old)
        begin(c)
        rest = streamed(c, old, body)
        with open(p.conf_path) as f:
            conf = f.read()
        with open(p.conf_path, "w") as f:
            f.write(conf.replace("relay_backends = %s" % old.target, "relay_backends = %s" % new.target))
        os.kill(p.pid, signal.SIGHUP)
        p.wait_log(r"configuration reloaded", 10)
        c.send(rest)
        expect(c.reply(30), 250)
    with session(p) as c:
        begin(c)
        c.send(stuffed(body) + b".\r\n")
        expect(c.reply(30), 250)
    assert len(old.messages) == 2 and old.messages[1]["data"].endswith(body) and lasts(old) == ["BDAT 0 LAST"]
    assert len(new.messages) == 1 and new.messages[0]["data"].endswith(body)
    assert not old.aborted and not new.aborted


def test_stream_over_tls(perimd_factory, tmp_path):
    """A backend reached over STARTTLS (relay_tls_security_level =
    encrypt): the pooled TLS connection carries the stream, the body is the
    usual path's, completed once."""
    import subprocess
    from tls_backend import TlsBackend
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem",
                    "-out", "c.pem", "-days", "2", "-subj", "/CN=backend.test"], cwd=tmp_path,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tb = TlsBackend(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")).start()
    try:
        p = perimd_factory(relay_backends=tb.target, relay_while_receiving="yes",
                           relay_tls_security_level="encrypt")
        body = dotty_body()
        with session(p) as c:
            begin(c)
            c.send(stuffed(body) + b".\r\n")
            expect(c.reply(30), 250)
            begin(c)
            w = stuffed(body) + b".\r\n"
            c.send(w[:60000])
            # the stream's envelope, before the final dot
            assert wait_for(lambda: len([x for x in tb.commands if x.upper().startswith("MAIL")]) == 2, 10)
            c.send(w[60000:])
            expect(c.reply(30), 250)
        assert len(tb.messages) == 2 and all(m["tls"] for m in tb.messages)
        assert normal(tb.messages[1]["data"]) == normal(tb.messages[0]["data"])
        assert metrics(p)["perimd_relay_streamed_total"] == 1
        assert len([x for x in tb.commands if x.upper() == "STARTTLS"]) == 1
    finally:
        tb.stop()


@pytest.mark.parametrize("via", ["bdat", "data"])
def test_one_stream_yields_per_waiting_message(perimd_factory, hostile, via):
    """Three clients drip their bodies on streams that hold all three
    connections of the backend (relay_destination_concurrency_limit = 3),
    whose RSET replies are slow (1 s, a busy backend; inside DATA the
    yielding stream's connection is closed and a new one made); one
    complete message waits: one stream gives its connection up for it, not
    all three while the first one's is on its way; the other two complete
    streamed."""
    b = hostile(caps=CAPS[via])
    p = start(perimd_factory, [b], relay_destination_concurrency_limit=3, relay_pool_wait="10s",
              io_threads=1)
    cs = [session(p) for _ in range(3)]
    try:
        for c in cs:  # three messages at once: three connections, then idle
            begin(c)
        for c in cs:
            c.send(b"Subject: warm\r\n\r\nwarm\r\n.\r\n")
        for c in cs:
            expect(c.reply(30), 250)
        assert b.connections == 3
        b.delay = {"rset": 1.0, "greeting": 1.0}
        for c in cs:
            begin(c)
            c.send(b"Subject: drip\r\n\r\n")
        assert wait_for(lambda: len(b.commands_of("MAIL")) == 6, 10)  # three streams
        result = {}

        def other():
            with session(p) as c:
                begin(c)
                c.send(b"Subject: complete\r\n\r\nwaiting\r\n.\r\n")
                result["reply"] = c.reply(30)

        t = threading.Thread(target=other)
        t.start()
        for i in range(12):  # 2.4 s of drip
            for c in cs:
                c.send(b"drip line %d\r\n" % i)
            time.sleep(0.2)
        t.join(30)
        assert result.get("reply") and result["reply"][0] == 250, result
        for c in cs:
            c.send(b"the end\r\n.\r\n")
        for c in cs:
            expect(c.reply(30), 250)
    finally:
        for c in cs:
            c.close()
    mx = metrics(p)
    assert mx['perimd_relay_stream_abandoned_total{reason="slow_client"}'] == 1
    assert mx["perimd_relay_streamed_total"] == 2
    assert len(b.messages) == 7 and len([m for m in b.messages if m["data"].endswith(b"the end\r\n")]) == 3


def test_stream_with_xforward(perimd_factory, hostile):
    """A backend allowed XFORWARD (relay_xforward_hosts): the stream's
    transaction carries the client's attributes before its MAIL, as the
    usual path's does; a refused stream's RSET leaves the connection to the
    next message, which sends them again."""
    b = hostile(caps=CHUNKING + ["XFORWARD NAME ADDR PORT PROTO HELO"])
    p = start(perimd_factory, [b], relay_xforward_hosts="127.0.0.1", message_size_limit="90k")
    body = body_of(60)
    with session(p) as c:
        warm(c, p, b)
        begin(c)
        c.send(streamed(c, b, body, split=30000))
        expect(c.reply(30), 250)
        begin(c)
        c.send(streamed(c, b, body_of(100)))
        expect(c.reply(30), 552)
        assert wait_for(lambda: resets(p) >= 1, 10)
        begin(c)
        c.send(streamed(c, b, body, split=30000))
        expect(c.reply(30), 250)
    cmds = [x.split()[0].upper() for x in b.commands if x.split()[0].upper() in ("XFORWARD", "MAIL")]
    # each MAIL after its XFORWARD: warm-up, stream, refused stream, stream
    assert cmds.count("MAIL") == 4 and all(cmds[i - 1] == "XFORWARD" for i, v in enumerate(cmds) if v == "MAIL")
    assert len(b.messages) == 3 and lasts(b) == ["BDAT 0 LAST"] * 2
    assert metrics(p)["perimd_relay_streamed_total"] == 2


@pytest.mark.parametrize("path", ["stream", "overlap"])
def test_chunking_offered_but_bdat_refused(perimd_factory, hostile, tmp_path, path):
    """A backend that offers CHUNKING but answers BDAT 502 (a proxy in
    front, mixed versions behind a balancer): it says nothing about the
    message, so the client never gets a 5xx it would bounce; a stream is
    replayed after the dot, relay_scan_overlap's chunks fail over to the
    next backend; the message is completed once."""
    liar = hostile(caps=CHUNKING, reply={"bdat": "502 5.5.1 Error: command not implemented"})
    good = hostile(caps=PLAIN)
    params = {}
    if path == "overlap":
        params = dict(av_scanner="libclamav", av_threads=1, relay_scan_overlap="yes",
                      relay_while_receiving="no", clamav_database_directory=write_db(str(tmp_path / "db")))
    p = start(perimd_factory, [liar, good], **params)
    body = body_of(60)
    with session(p) as c:
        if path == "stream":
            warm(c, p, liar)
        begin(c)
        c.send(stuffed(body) + b".\r\n")
        expect(c.reply(30), 250)
    done = liar.messages + good.messages
    assert len([m for m in done if m["data"].endswith(body)]) == 1 and not lasts(liar)
    assert liar.commands_of("BDAT")
