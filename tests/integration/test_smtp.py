"""test_smtp.py - perimd's SMTP server behaviour, through the real binary.

Each test starts perimd relaying example.com to a Postfix smtp-sink and
talks to it with swaks, smtplib or raw sockets. Replies are asserted with
their exact code and RFC 3463 enhanced code (DESIGN.md, "Replies").
(SMTP smuggling through DATA has its own tests elsewhere.)
"""

import re
import smtplib
import time

from harness import Client, known_params, sink_message, smtp_dialogue, swaks, expect

SENDER = "a@client.test"
RCPT = "b@example.com"


def start(perimd_factory, sink, **params):
    """perimd relaying to sink; checks that need DNS or a database are
    turned off where the binary has them (the tests run without either)."""
    base = {"relay_backends": "[127.0.0.1]:%d" % sink.port, "relay_domains": "example.com"}
    off = {"greylist": "no", "reject_unknown_sender_domain": "no"}
    base.update({k: v for k, v in off.items() if k in known_params()})
    base.update(params)
    return perimd_factory(**base)




def ehlo(c, name="client.test"):
    r = c.cmd("EHLO " + name)
    expect(r, 250)
    return r


def begin(c, rcpts=(RCPT,)):
    """EHLO, MAIL, RCPTs, each must succeed."""
    ehlo(c)
    expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd("RCPT TO:<%s>" % r), 250, "2.1.5")


def send_data(c, body_lines, raw=None):
    """DATA (354), then the body lines with CRLF (or `raw` bytes as they
    are) and the final dot; the reply to the dot."""
    expect(c.cmd("DATA"), 354)
    if raw is None:
        raw = b"".join((l.encode() if isinstance(l, str) else l) + b"\r\n" for l in body_lines)
    c.send(raw + b".\r\n")
    return c.reply(30)


def message(subject, body="hello\r\n"):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n\r\n%s" % (SENDER, RCPT, subject, body)).encode()


def deliver_marker(port, sink, n_before, subject):
    """Send one good message in a new session and wait until the sink has
    n_before + 1 messages: proves what the sink holds is complete (perimd
    answers 250 only after the backend did)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as s:
        s.sendmail(SENDER, [RCPT], message(subject))
    assert sink.wait_count(n_before + 1, 10)


def greeted(port, timeout=10):
    """A Client that got 220. A session the harness (or an earlier step)
    just closed is freed only when perimd reads its EOF, so right after it a
    limit may still count it: retry while refused, within the bound."""
    deadline = time.monotonic() + timeout
    while True:
        c = Client(port)
        if c.banner and c.banner[0] == 220:
            return c
        c.close()
        assert time.monotonic() < deadline, "never greeted: %r" % (c.banner,)
        time.sleep(0.05)


def headers_of(msg):
    """Unfolded header lines of a message (bytes, LF line ends)."""
    head = msg.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    return re.sub(r"\n[ \t]+", " ", head).split("\n")


# --- greeting, EHLO, HELO ------------------------------------------------


def test_banner(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        expect(c.banner, 220)
        assert c.banner[1].startswith("perimd.test "), c.banner
        assert "ESMTP" in c.banner[1]


def test_ehlo_capabilities(perimd_factory, sink):
    p = start(perimd_factory, sink, message_size_limit="10m")
    with Client(p.port) as c:
        r = ehlo(c)
        lines = r[1].split("\n")
        assert lines[0].startswith("perimd.test"), r
        caps = {l.upper() for l in lines[1:]}
        for cap in ("PIPELINING", "SIZE 10485760", "8BITMIME", "ENHANCEDSTATUSCODES",
                    "SMTPUTF8", "DSN"):
            assert cap in caps, "%s missing from EHLO reply %r" % (cap, r)
        assert not any(l.startswith("CHUNKING") for l in caps), r
        # No certificate configured: STARTTLS must not be offered.
        assert "STARTTLS" not in caps, r


def test_helo(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        r = c.cmd("HELO client.test")
        expect(r, 250)
        assert r[1].startswith("perimd.test"), r
        assert "\n" not in r[1], "HELO reply must be one line: %r" % (r,)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")


def test_ehlo_address_literal(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        expect(c.cmd("EHLO [127.0.0.1]"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
    with Client(p.port) as c:
        expect(c.cmd("EHLO [IPv6:::1]"), 250)


# --- a whole message -------------------------------------------------------


def test_message_through_swaks(perimd_factory, sink):
    p = start(perimd_factory, sink)
    body = "first line\n.a line with a leading dot\n..two dots\n\ttabbed\nlast line"
    rc, out = swaks("--server", "127.0.0.1:%d" % p.port, "--ehlo", "client.test",
                    "--from", SENDER, "--to", RCPT, "--header", "Subject: swaks test",
                    "--body", body)
    assert rc == 0, out
    assert re.search(r"<-\s+250 2\.\d\.\d", out.split("-> .", 1)[-1]), out
    assert sink.wait_count(1, 10)
    env, msg = sink_message(sink.messages()[0])
    assert env["mail"].split()[0] == "<%s>" % SENDER, env
    assert [r.split()[0] for r in env["rcpt"]] == ["<%s>" % RCPT], env
    head, text = msg.split(b"\n\n", 1)
    assert text.decode().startswith(body + "\n"), text
    hdrs = headers_of(msg)
    # perimd's own trace header comes first (RFC 5321 section 4.4).
    assert hdrs[0].startswith("Received: from client.test"), hdrs[:2]
    assert "[127.0.0.1]" in hdrs[0] and "by perimd.test" in hdrs[0], hdrs[0]
    assert sum(h.startswith("Received:") for h in hdrs) == 1, hdrs
    assert "Subject: swaks test" in hdrs


def test_big_body_spilled_to_file_arrives_intact(perimd_factory, sink):
    p = start(perimd_factory, sink, body_memory_limit="10k")
    # 200 KB of distinct lines, so a lost, doubled or reordered chunk shows.
    lines = ["%06d %s" % (i, "abcdefghij" * 7) for i in range(2800)]
    body = "\r\n".join(lines) + "\r\n"
    assert len(body) > 200 * 1024
    with smtplib.SMTP("127.0.0.1", p.port, local_hostname="client.test", timeout=30) as s:
        s.sendmail(SENDER, [RCPT], message("big", body))
    assert sink.wait_count(1, 10)
    _, msg = sink_message(sink.messages()[0])
    assert msg.split(b"\n\n", 1)[1] == body.replace("\r\n", "\n").encode()


def test_bodies_in_pieces_on_one_connection(perimd_factory, sink):
    """Several messages, large and small, on one connection, each body
    sent in pieces cut inside lines, inside a dot-stuffed line and inside
    the final CRLF.CRLF: each arrives whole and alone (the read and body
    buffers one message leaves are reused for the next, and reads take up
    to a quarter of a megabyte at once)."""
    p = start(perimd_factory, sink)
    sizes = (150000, 300, 270000, 2000, 120000)
    sent = {}
    c = greeted(p.port)
    ehlo(c)
    for n, size in enumerate(sizes):
        lines = ["%d-%06d %s" % (n, i, "xyz" * 20) for i in range(size // 70 + 1)]
        lines[len(lines) // 2] = "..stuffed %d" % n  # ".stuffed N" after unstuffing
        subject = "pieces-%d" % n
        raw = message(subject, "".join(l + "\r\n" for l in lines)) + b".\r\n"
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        expect(c.cmd("DATA"), 354)
        mid = raw.index(b"..stuffed") + 1
        cuts = sorted({1, 4097, mid, len(raw) - 4, len(raw) - 2, len(raw) - 1})
        prev = 0
        for cut in cuts + [len(raw)]:
            c.send(raw[prev:cut])
            prev = cut
        expect(c.reply(30), 250)
        body = "".join(l + "\n" for l in lines).replace("\n..stuffed", "\n.stuffed")
        sent[subject] = body.encode()
    c.cmd("QUIT")
    assert sink.wait_count(len(sizes), 10)
    got = {}
    for raw in sink.messages():
        _, msg = sink_message(raw)
        subj = [h for h in headers_of(msg) if h.startswith("Subject: ")][0][9:]
        got[subj] = msg.split(b"\n\n", 1)[1]
    assert sorted(got) == sorted(sent)
    for subject, body in sent.items():
        assert got[subject] == body, subject


# --- simple commands -------------------------------------------------------


def test_rset_noop_vrfy_help_quit(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        begin(c)
        expect(c.cmd("RSET"), 250, "2.0.0")
        # RSET ended the transaction: RCPT needs a new MAIL.
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 503, "5.5.1")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        r = c.cmd("VRFY b@example.com")
        expect(r, 252)
        assert r[1].startswith("2."), r
        r = c.cmd("HELP")
        assert r is not None and r[0] in (211, 214), r
        assert r[1].startswith("2.0.0"), r
        expect(c.cmd("QUIT"), 221, "2.0.0")
        assert c.wait_closed(10), "connection still open after QUIT"


def test_unknown_command(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        ehlo(c)
        expect(c.cmd("FROBNICATE now"), 500, "5.5.2")
        expect(c.cmd("NOOP"), 250, "2.0.0")


def test_bad_sequence(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        ehlo(c)
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 503, "5.5.1")
        expect(c.cmd("DATA"), 503, "5.5.1")
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 503, "5.5.1")  # nested MAIL
        expect(c.cmd("DATA"), 503, "5.5.1")  # no recipient yet
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        expect(send_data(c, ["Subject: after errors", "", "ok"]), 250)
    assert sink.wait_count(1, 10)


def test_syntax_errors(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        expect(c.cmd("EHLO"), 501, "5.5.4")
        ehlo(c)
        expect(c.cmd("MAIL FROM:<a@client.test"), 501, "5.1.7")
        expect(c.cmd("MAIL TO:<a@client.test>"), 501, "5.5.4")
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<b@example.com"), 501, "5.1.3")
        expect(c.cmd("RCPT TO:"), 501, "5.1.3")
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")


def test_unknown_esmtp_parameter(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        ehlo(c)
        expect(c.cmd("MAIL FROM:<%s> FOO=bar" % SENDER), 555, "5.5.4")
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<%s> XYZZY" % RCPT), 555, "5.5.4")


def test_command_line_too_long(perimd_factory, sink):
    p = start(perimd_factory, sink, smtpd_command_line_limit="512")
    with Client(p.port) as c:
        ehlo(c)
        expect(c.cmd("NOOP " + "x" * 600), 500, "5.5.2")
        expect(c.cmd("NOOP"), 250, "2.0.0")
        # Far over the limit, across many reads: still one reply.
        expect(c.cmd("MAIL FROM:<" + "y" * 20000 + "@client.test>"), 500, "5.5.2")
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        expect(send_data(c, ["Subject: after a long line", "", "ok"]), 250)
    assert sink.wait_count(1, 10)


# --- envelope rules --------------------------------------------------------


def test_postmaster_without_domain(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        ehlo(c)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<Postmaster>"), 250, "2.1.5")


def test_relay_denied(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        ehlo(c)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<x@other.test>"), 550, "5.7.1",
               r"^5\.7\.1 <x@other\.test>: relay access denied")
        expect(c.cmd("RCPT TO:<x@sub.example.com.evil.test>"), 550, "5.7.1")
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")


def test_size_declared_over_limit(perimd_factory, sink):
    p = start(perimd_factory, sink, message_size_limit="100k")
    with Client(p.port) as c:
        ehlo(c)
        expect(c.cmd("MAIL FROM:<%s> SIZE=200000" % SENDER), 552, "5.3.4")
        expect(c.cmd("MAIL FROM:<%s> SIZE=2000" % SENDER), 250, "2.1.0")


def test_body_over_limit(perimd_factory, sink):
    p = start(perimd_factory, sink, message_size_limit="10k")
    with Client(p.port) as c:
        begin(c)
        big = ["%05d %s" % (i, "z" * 70) for i in range(300)]  # ~23 KB
        expect(send_data(c, ["Subject: too big", ""] + big), 552, "5.3.4")
        # The session goes on, and a small message still passes.
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250, "2.1.5")
        expect(send_data(c, ["Subject: small", "", "ok"]), 250)
    assert sink.wait_count(1, 10)
    msgs = sink.messages()
    assert len(msgs) == 1 and b"Subject: small" in msgs[0], msgs


def test_recipient_limit(perimd_factory, sink):
    p = start(perimd_factory, sink, smtpd_recipient_limit="2")
    with Client(p.port) as c:
        begin(c, ["r1@example.com", "r2@example.com"])
        expect(c.cmd("RCPT TO:<r3@example.com>"), 452, "4.5.3")
        expect(send_data(c, ["Subject: two", "", "ok"]), 250)
    assert sink.wait_count(1, 10)
    env, _ = sink_message(sink.messages()[0])
    assert [r.split()[0] for r in env["rcpt"]] == ["<r1@example.com>", "<r2@example.com>"]


# --- session limits --------------------------------------------------------


def test_max_sessions(perimd_factory, sink):
    p = start(perimd_factory, sink, max_sessions="2")
    c1 = greeted(p.port)
    c2 = greeted(p.port)
    try:
        with Client(p.port) as c3:
            expect(c3.banner, 421, "4.3.2")
            assert c3.wait_closed(10)
        # A freed slot is usable again.
        c1.close()
        greeted(p.port).close()
    finally:
        c1.close()
        c2.close()


def test_client_connection_count_limit(perimd_factory, sink):
    p = start(perimd_factory, sink, smtpd_client_connection_count_limit="1")
    with greeted(p.port) as c1:
        with Client(p.port) as c2:
            expect(c2.banner, 421, "4.7.0", r"too many connections from 127\.0\.0\.1")
            assert c2.wait_closed(10)
        ehlo(c1)


def test_idle_timeout(perimd_factory, sink):
    p = start(perimd_factory, sink, smtpd_timeout="2s")
    with Client(p.port) as c:
        ehlo(c)
        t0 = time.monotonic()
        expect(c.reply(15), 421, "4.4.2")
        assert time.monotonic() - t0 >= 1.5, "timed out before smtpd_timeout"
        assert c.wait_closed(10), "connection still open after the 421"


def test_error_limit_closes_session(perimd_factory, sink):
    p = start(perimd_factory, sink, smtpd_soft_error_limit="2", smtpd_hard_error_limit="4",
              smtpd_error_sleep_time="1s")
    with Client(p.port) as c:
        ehlo(c)
        replies = []
        t0 = time.monotonic()
        for _ in range(8):
            try:
                c.line("BOGUS")
            except OSError:
                pass  # closed: a 421 may still be buffered
            r = c.reply(10)
            if r is None:
                break
            replies.append(r)
            if r[0] == 421:
                break
        elapsed = time.monotonic() - t0
        codes = [r[0] for r in replies]
        assert 421 in codes, "no 421 after %d errors: %r" % (len(replies), replies)
        # The errors below the hard limit get their normal reply ...
        assert codes[:3] == [500, 500, 500], replies
        # ... and the 421 comes at the hard limit, not later.
        assert len(replies) <= 5, replies
        assert replies[-1][1].startswith("4."), replies[-1]
        assert c.wait_closed(10), "connection still open after the 421"
        # Past the soft limit the error replies were delayed (tarpit).
        assert elapsed >= 1.0, "no error reply was delayed (%.2f s in all)" % elapsed


# --- pipelining (RFC 2920) -------------------------------------------------


def test_pipelined_transaction(perimd_factory, sink):
    p = start(perimd_factory, sink)
    with Client(p.port) as c:
        c.send("EHLO client.test\r\nMAIL FROM:<%s>\r\nRCPT TO:<r1@example.com>\r\n"
               "RCPT TO:<r2@example.com>\r\nDATA\r\n" % SENDER)
        replies = [c.reply(10) for _ in range(5)]
        assert [r and r[0] for r in replies] == [250, 250, 250, 250, 354], replies
        expect(replies[1], 250, "2.1.0")
        expect(replies[2], 250, "2.1.5")
        expect(replies[3], 250, "2.1.5")
        c.send(b"Subject: pipelined\r\n\r\nbody\r\n.\r\n")
        expect(c.reply(30), 250)
        expect(c.cmd("QUIT"), 221, "2.0.0")
        assert c.wait_closed(10)
        assert c.buf == b"", "extra bytes after QUIT reply: %r" % c.buf
    assert sink.wait_count(1, 10)
    env, _ = sink_message(sink.messages()[0])
    assert [r.split()[0] for r in env["rcpt"]] == ["<r1@example.com>", "<r2@example.com>"]


def test_pipelined_all_in_one_write(perimd_factory, sink):
    p = start(perimd_factory, sink)
    lines = ["EHLO client.test", "MAIL FROM:<%s>" % SENDER, "RCPT TO:<r1@example.com>",
             "RCPT TO:<nobody@other.test>", "RCPT TO:<r2@example.com>", "DATA",
             "Subject: one write", "", "body", ".", "NOOP", "QUIT"]
    replies = smtp_dialogue(p.port, lines, timeout=30, pipelined=True)
    codes = [r[0] for r in replies]
    assert codes == [220, 250, 250, 250, 550, 250, 354, 250, 250, 221], replies
    assert sink.wait_count(1, 10)
    env, _ = sink_message(sink.messages()[0])
    assert [r.split()[0] for r in env["rcpt"]] == ["<r1@example.com>", "<r2@example.com>"]


# --- DATA content rules ----------------------------------------------------


def test_bare_lf_rejected(perimd_factory, sink):
    p = start(perimd_factory, sink, smtpd_forbid_bare_newline="reject")
    with Client(p.port) as c:
        begin(c)
        r = send_data(c, None, raw=b"Subject: bare\r\n\r\nline one\nline two\r\n")
        expect(r, 550, "5.5.2")
    deliver_marker(p.port, sink, 0, "marker")
    msgs = sink.messages()
    assert len(msgs) == 1 and b"Subject: marker" in msgs[0], msgs


def test_mail_loop_rejected(perimd_factory, sink):
    p = start(perimd_factory, sink)
    hops = ["Received: from hop%d.example.net by hop%d.example.net; "
            "Thu, 1 Jan 2026 00:00:00 +0000" % (i, i + 1) for i in range(51)]
    with Client(p.port) as c:
        begin(c)
        expect(send_data(c, hops + ["Subject: loop", "", "looping"]), 554, "5.4.6")
    deliver_marker(p.port, sink, 0, "marker")
    assert len(sink.messages()) == 1


def test_body_spool_limit(perimd_factory, sink):
    p = start(perimd_factory, sink, body_spool_limit="1024")
    body = ["%04d %s" % (i, "s" * 60) for i in range(64)]  # 4 KB
    with Client(p.port) as c:
        begin(c)
        r = c.cmd("DATA")
        if r and r[0] == 354:
            c.send("".join(l + "\r\n" for l in ["Subject: spool"] + [""] + body) + ".\r\n")
            r = c.reply(30)
        expect(r, 452, "4.3.1")
    # Nothing reached the backend: a small message, under the limit, does.
    with Client(p.port) as c:
        begin(c)
        expect(send_data(c, ["Subject: tiny", "", "x"]), 250)
    assert sink.wait_count(1, 10)
    msgs = sink.messages()
    assert len(msgs) == 1 and b"Subject: tiny" in msgs[0], msgs


# --- routing ---------------------------------------------------------------


def _two_backends(perimd_factory, sink_factory, tmp_path):
    s1, s2 = sink_factory(), sink_factory()
    tmap = tmp_path / "transport"
    tmap.write_text("# domain  backends\nother.example  [127.0.0.1]:%d\n" % s2.port)
    p = start(perimd_factory, s1, relay_domains="example.com, other.example",
              transport_maps="file:%s" % tmap)
    return p, s1, s2


def test_transport_maps_route(perimd_factory, sink_factory, tmp_path):
    p, s1, s2 = _two_backends(perimd_factory, sink_factory, tmp_path)
    with smtplib.SMTP("127.0.0.1", p.port, local_hostname="client.test", timeout=30) as s:
        s.sendmail(SENDER, ["x@other.example"], message("to other"))
        s.sendmail(SENDER, [RCPT], message("to default"))
    assert s2.wait_count(1, 10) and s1.wait_count(1, 10)
    assert b"Subject: to other" in s2.messages()[0]
    assert b"Subject: to default" in s1.messages()[0]
    assert s1.count() == 1 and s2.count() == 1


def test_two_backends_in_one_transaction(perimd_factory, sink_factory, tmp_path):
    p, s1, s2 = _two_backends(perimd_factory, sink_factory, tmp_path)
    with Client(p.port) as c:
        begin(c, [RCPT])
        expect(c.cmd("RCPT TO:<x@other.example>"), 452, "4.5.3")
        expect(c.cmd("RCPT TO:<c@example.com>"), 250, "2.1.5")
        expect(send_data(c, ["Subject: split", "", "ok"]), 250)
        # The refused recipient goes in a new transaction, to its backend.
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<x@other.example>"), 250, "2.1.5")
        expect(send_data(c, ["Subject: second", "", "ok"]), 250)
    assert s1.wait_count(1, 10) and s2.wait_count(1, 10)
    env, _ = sink_message(s1.messages()[0])
    assert [r.split()[0] for r in env["rcpt"]] == ["<%s>" % RCPT, "<c@example.com>"]
    env, _ = sink_message(s2.messages()[0])
    assert [r.split()[0] for r in env["rcpt"]] == ["<x@other.example>"]
