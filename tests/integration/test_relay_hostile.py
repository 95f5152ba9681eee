"""test_relay_hostile.py - perimd's SMTP client against a backend that
misbehaves on purpose (tests/integration/hostile_backend.py), issue 13:

- item 4: capabilities: an EHLO reply of many KB keeps its keywords, one
  past the 64 KB bound fails over with a clear reason, a backend refusing
  EHLO is spoken to with HELO (and the TLS policy still holds), an 8-bit
  or SMTPUTF8 message goes to a backend that supports it and is refused
  only when none does;
- item 5: a reply of the wrong class (1yz, 354 where 2yz/4yz/5yz is due,
  2yz to DATA) is never passed on: failover before the final dot, 451
  after it, logged;
- item 6: after a failover the to= and summary lines name the backend that
  took the message;
- item 8: replies to the client carry no backend address unless
  relay_reply_show_backend = yes; the log always has it;
- item 11: lines over smtp_line_length_limit (998) reach the backend
  folded with CR LF SP, headers and body alike, as Postfix does.
Each test asserts the client's reply, the log, and what the backend got.
"""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, free_port, known_params, wait_for  # noqa: E402

SENDER = "a@client.test"
RCPT = "b@example.com"
BODY = b"Subject: hostile test\r\n\r\nline one\r\n.leading dot\r\n"
BODY8 = "Subject: caf\u00e9\r\n\r\nna\u00efve body\r\n".encode()


def start(perimd_factory, backends, **params):
    base = {"relay_backends": ", ".join(b if isinstance(b, str) else b.target for b in backends),
            "relay_domains": "example.com", "stats_listen": ""}
    base.update({k: v for k, v in {"greylist": "no", "reject_unknown_sender_domain": "no"}.items()
                 if k in known_params()})
    base.update(params)
    return perimd_factory(**base)


def stuff(body):
    return b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in body.split(b"\r\n"))


def send(port, body=BODY, mail_params="", rcpts=(RCPT,), sender=SENDER, timeout=30):
    """One message; (reply to the final dot, every reply of the session)."""
    seen = []
    with Client(port, timeout=timeout) as c:
        seen.append(c.banner)
        r = c.cmd("EHLO client.test")
        seen.append(r)
        expect(r, 250)
        r = c.cmd("MAIL FROM:<%s>%s" % (sender, mail_params))
        seen.append(r)
        expect(r, 250)
        for rc in rcpts:
            r = c.cmd("RCPT TO:<%s>" % rc)
            seen.append(r)
            expect(r, 250)
        r = c.cmd("DATA")
        seen.append(r)
        expect(r, 354)
        c.send(stuff(body) + b".\r\n")
        r = c.reply(timeout)
        seen.append(r)
    return r, seen


def msg_id(p, n=1):
    """perimd's ids of the messages logged so far (summary lines)."""
    ids = re.findall(r"(\S+): from=<", p.log_text())
    return ids


def no_address(seen, port):
    """No reply of the session names the backend's address."""
    for r in seen:
        assert r is not None
        assert "127.0.0.1" not in r[1] and ":%d" % port not in r[1], r


def down_target():
    """An address where nothing listens."""
    return "127.0.0.1:%d" % free_port()


# ---- item 4: capabilities -------------------------------------------------


def test_long_ehlo_keeps_keywords(perimd_factory, hostile):
    """~20 KB of EHLO keywords before 8BITMIME, SMTPUTF8, SIZE and
    PIPELINING: all of them are seen (they were lost past 1 KB)."""
    b = hostile(ehlo_filler=500, caps=["PIPELINING", "SIZE 10000000", "8BITMIME", "SMTPUTF8"])
    p = start(perimd_factory, [b])
    r, seen = send(p.port, body=BODY8, mail_params=" BODY=8BITMIME SMTPUTF8")
    expect(r, 250, "2.0.0")
    mail = b.commands_of("MAIL")
    assert len(mail) == 1 and "BODY=8BITMIME" in mail[0] and "SMTPUTF8" in mail[0] \
        and "SIZE=" in mail[0], mail
    assert b.messages[0]["data"].endswith(BODY8)
    assert sum(len(x) for x in b.raw[0]) > 0
    # and a second message (pooled connection or a new one: another loop's
    # pool, or the first still in RSET) still has them
    r, _ = send(p.port, body=BODY8, mail_params=" BODY=8BITMIME")
    expect(r, 250, "2.0.0")
    assert "BODY=8BITMIME" in b.commands_of("MAIL")[1]


def test_ehlo_over_bound_fails_over(perimd_factory, hostile):
    """An EHLO reply over 64 KB: a clear reason in the log, the next
    backend takes the message; alone, the client gets 451 4.4.1."""
    huge = hostile(ehlo_filler=2000)   # ~90 KB
    good = hostile()
    p = start(perimd_factory, [huge, good])
    r, seen = send(p.port)
    expect(r, 250, "2.0.0")
    p.wait_log(r"relay=%s, .*status=failover \(reply longer than 65536 bytes at EHLO\)"
               % re.escape(huge.target))
    assert huge.commands_of("MAIL") == [] and len(good.messages) == 1
    p2 = start(perimd_factory, [huge])
    r, seen = send(p2.port)
    expect(r, 451, "4.4.1", r"reply longer than 65536 bytes")
    no_address(seen, huge.port)


def test_ehlo_refused_helo_fallback(perimd_factory, hostile):
    """EHLO refused (500, 502): HELO, and a 7-bit message goes with no
    ESMTP parameters at all."""
    for code in ("500 5.5.1 command unrecognized", "502 5.5.2 not implemented"):
        b = hostile(reply={"ehlo": code})
        p = start(perimd_factory, [b])
        r, _ = send(p.port, mail_params=" BODY=7BIT")
        expect(r, 250, "2.0.0")
        assert b.commands_of("HELO") == ["HELO perimd.test"]
        mail = b.commands_of("MAIL")
        assert mail == ["MAIL FROM:<%s>" % SENDER], mail
        assert b.messages[0]["data"].endswith(BODY)


def test_ehlo_refused_tls_required(perimd_factory, hostile):
    """HELO offers no STARTTLS: with relay_tls_security_level = encrypt the
    message is never sent in plaintext (it was before)."""
    b = hostile(reply={"ehlo": "500 5.5.1 no EHLO"})
    p = start(perimd_factory, [b], relay_tls_security_level="encrypt")
    r, seen = send(p.port)
    expect(r, 451, "4.4.1", r"STARTTLS not offered")
    assert b.commands_of("HELO") and b.commands_of("MAIL") == [] and b.messages == []
    p.wait_log(r"relay=%s, .*status=failover \(STARTTLS not offered" % re.escape(b.target))


def test_8bit_goes_to_the_backend_that_has_8bitmime(perimd_factory, hostile):
    """The first backend refuses EHLO (so: no 8BITMIME), the second has
    it: the 8-bit message goes there, not a 554."""
    first = hostile(reply={"ehlo": "500 5.5.1 no EHLO"})
    second = hostile()
    p = start(perimd_factory, [first, second])
    r, seen = send(p.port, body=BODY8, mail_params=" BODY=8BITMIME")
    expect(r, 250, "2.0.0")
    assert first.commands_of("MAIL") == []
    assert len(second.messages) == 1 and "BODY=8BITMIME" in second.messages[0]["mail"]
    p.wait_log(r"relay=%s, .*status=skipped \(backend does not support 8BITMIME"
               % re.escape(first.target))
    # a 7-bit message still goes to the first backend
    r, _ = send(p.port)
    expect(r, 250, "2.0.0")
    assert len(first.messages) == 1


def test_smtputf8_goes_to_the_backend_that_has_it(perimd_factory, hostile):
    first = hostile(caps=["PIPELINING", "8BITMIME"])
    second = hostile(caps=["8BITMIME", "SMTPUTF8"])
    p = start(perimd_factory, [first, second])
    r, _ = send(p.port, body=BODY8, mail_params=" BODY=8BITMIME SMTPUTF8")
    expect(r, 250, "2.0.0")
    assert first.commands_of("MAIL") == [] and len(second.messages) == 1
    assert "SMTPUTF8" in second.messages[0]["mail"]


@pytest.mark.parametrize("params, code, enh, what", [
    (" BODY=8BITMIME", 554, "5.6.3", "8BITMIME"),
    (" BODY=8BITMIME SMTPUTF8", 553, "5.6.7", "SMTPUTF8"),
])
def test_no_backend_has_the_extension(perimd_factory, hostile, params, code, enh, what):
    """Refused only when every backend lacks it, and the reply says so."""
    a = hostile(caps=["PIPELINING"])
    b = hostile(reply={"ehlo": "502 5.5.2 no"})
    p = start(perimd_factory, [a, b])
    r, seen = send(p.port, body=BODY8, mail_params=params)
    expect(r, code, enh, r"no backend supports %s" % what)
    assert a.commands_of("MAIL") == [] and b.commands_of("MAIL") == []
    no_address(seen, a.port)
    p.wait_log(r"relay=%s, .*status=rejected \(no backend supports %s\)" % (re.escape(b.target), what))


def test_8bit_lacking_and_other_backend_down_is_temporary(perimd_factory, hostile):
    """One backend lacks 8BITMIME, the other is down (it may have it):
    451, not a permanent refusal."""
    a = hostile(caps=["PIPELINING"])
    p = start(perimd_factory, [a, down_target()])
    r, seen = send(p.port, body=BODY8, mail_params=" BODY=8BITMIME")
    expect(r, 451, "4.4.1")
    assert a.commands_of("MAIL") == []


# ---- item 5: replies of the wrong class -----------------------------------


@pytest.mark.parametrize("stage, bad", [
    ("rcpt", "354 go ahead"),
    ("rcpt", "354-go\n354 ahead"),
    ("mail", "150 wait"),
    ("mail", "334 VXNlcm5hbWU6"),
    ("data", "250 2.0.0 fine"),
    ("data", "150 still thinking"),
    ("greeting", "354 hello"),
    ("ehlo", "354 what"),
])
def test_wrong_class_before_dot_fails_over(perimd_factory, hostile, stage, bad):
    """Before the final dot a wrong-class reply is never passed on: the next
    backend is tried; alone, the client gets 451 4.4.1. Logged."""
    b = hostile(reply={stage: bad})
    good = hostile()
    p = start(perimd_factory, [b, good])
    r, seen = send(p.port)
    expect(r, 250, "2.0.0")
    assert b.messages == [] and len(good.messages) == 1
    p.wait_log(r"backend %s: reply of the wrong class at \S+" % re.escape(b.target))
    p2 = start(perimd_factory, [b])
    r, seen = send(p2.port)
    expect(r, 451, "4.4.1", r"reply of the wrong class")
    assert r[0] != int(bad[:3])
    no_address(seen, b.port)


def test_wrong_class_rcpt_no_pipelining(perimd_factory, hostile):
    """The same without PIPELINING, second recipient answered 354."""
    b = hostile(caps=["8BITMIME"], reply={"rcpt": ["250 2.1.5 ok", "354 go"]})
    p = start(perimd_factory, [b])
    r, seen = send(p.port, rcpts=(RCPT, "c@example.com"))
    expect(r, 451, "4.4.1", r"wrong class at RCPT TO: 354 go")
    assert b.commands_of("DATA") == []


@pytest.mark.parametrize("bad", ["354 send more", "150 hold on", "354-a\n354 b"])
def test_wrong_class_after_dot_is_451(perimd_factory, hostile, bad):
    """After the final dot: 451 4.5.0, never the 354/1yz, never replayed to
    the next backend (the first may have the message)."""
    b = hostile(reply={"eod": bad})
    other = hostile()
    p = start(perimd_factory, [b, other])
    r, seen = send(p.port)
    expect(r, 451, "4.5.0", r"unexpected reply from backend after end of data; not retried")
    assert len(b.messages) == 1 and other.messages == [] and other.connections == 0
    no_address(seen, b.port)
    p.wait_log(r"backend %s: reply of the wrong class at end of data: %s"
               % (re.escape(b.target), re.escape(bad.split("\n")[0][:3])))
    p.wait_log(r"to=<%s>, relay=%s, .*status=deferred \(reply of the wrong class after end of data"
               % (re.escape(RCPT), re.escape(b.target)))


def test_stall_after_dot(perimd_factory, hostile):
    """No reply after the dot: 451 4.4.2 at relay_data_done_timeout, no
    address in it, not replayed."""
    b = hostile(stall=["eod"])
    other = hostile()
    p = start(perimd_factory, [b, other], relay_data_done_timeout="2s")
    r, seen = send(p.port)
    expect(r, 451, "4.4.2", r"^4\.4\.2 no reply from backend after end of data; not retried$")
    no_address(seen, b.port)
    assert len(b.messages) == 1 and other.connections == 0
    p.wait_log(r"relay=%s, .*status=deferred \(timeout after end of data\)" % re.escape(b.target))


# ---- item 6: log names after a failover -----------------------------------


@pytest.mark.parametrize("first", ["mail451", "down", "greeting554", "wrongclass"])
def test_log_names_the_backend_that_took_it(perimd_factory, hostile, first):
    if first == "down":
        bad = down_target()
    else:
        bad = hostile(reply={"mail451": {"mail": "451 4.3.0 busy"},
                             "greeting554": {"greeting": "554 5.3.2 not now"},
                             "wrongclass": {"rcpt": "354 nope"}}[first])
    good = hostile()
    p = start(perimd_factory, [bad, good])
    r, _ = send(p.port, rcpts=(RCPT, "c@example.com"))
    expect(r, 250, "2.0.0")
    badname = bad if isinstance(bad, str) else bad.target
    mid = re.search(r"queued as (\S+) ", r[1]).group(1)
    p.wait_log(r"%s: relay=%s, .*status=failover" % (re.escape(mid), re.escape(badname)))
    for rc in (RCPT, "c@example.com"):
        p.wait_log(r"%s: to=<%s>, relay=%s, .*status=sent \(250 2\.0\.0 Ok: queued as H1\)"
                   % (re.escape(mid), re.escape(rc), re.escape(good.target)))
    p.wait_log(r"%s: from=<%s>, .*backend=%s, backend_id=H1, result=250"
               % (re.escape(mid), re.escape(SENDER), re.escape(good.target)))
    assert not re.search(r"to=<[^>]*>, relay=%s" % re.escape(badname), p.log_text())


def test_log_names_the_last_backend_when_it_refuses(perimd_factory, hostile):
    """First fails over, second refuses the recipient: the to= line names
    the second with its refusal, not the first's failure."""
    bad = hostile(reply={"mail": "421 4.3.2 going away"})
    refuser = hostile(reply={"rcpt": "550 5.1.1 no such user"})
    p = start(perimd_factory, [bad, refuser])
    r, seen = send(p.port)
    expect(r, 550, "5.1.1", r"^5\.1\.1 backend said: 550 5\.1\.1 no such user$")
    p.wait_log(r"to=<%s>, relay=%s, .*status=rejected \(550 5\.1\.1 no such user\)"
               % (re.escape(RCPT), re.escape(refuser.target)))
    p.wait_log(r"backend=%s, backend_id=-, result=550" % re.escape(refuser.target))


# ---- item 8: no backend addresses in client replies -----------------------


def test_no_address_in_replies(perimd_factory, hostile):
    """Accepted, refused, partly refused, temporary failure: the client
    hears the backend's text, never its address; the log has it."""
    b = hostile(reply={"rcpt": ["250 2.1.5 ok", "550 5.1.1 unknown"]})
    p = start(perimd_factory, [b])
    r, seen = send(p.port, rcpts=(RCPT, "c@example.com"))
    expect(r, 451, "4.5.0", r"^4\.5\.0 some recipients were refused by the backend; retry$")
    no_address(seen, b.port)
    # (refused recipients are remembered: each case has its own)
    b.reply = {"rcpt": "550 5.1.1 unknown"}
    r, seen = send(p.port, rcpts=("d@example.com",))
    expect(r, 550, "5.1.1", r"backend said: 550 5\.1\.1 unknown$")
    no_address(seen, b.port)
    b.reply = {}
    r, seen = send(p.port, rcpts=("e@example.com",))
    expect(r, 250, "2.0.0", r"\(backend said: 250 2\.0\.0 Ok: queued as H\d+\)$")
    no_address(seen, b.port)
    b.reply = {"eod": "421 4.3.2 bye"}
    r, seen = send(p.port, rcpts=("f@example.com",))
    expect(r, 451, "4.4.2", r"^4\.4\.2 backend said: 421 4\.3\.2 bye$")
    no_address(seen, b.port)
    assert re.search(r"relay=%s, " % re.escape(b.target), p.log_text())


def test_no_address_when_all_backends_fail(perimd_factory, hostile):
    b = hostile(reply={"mail": "451 4.3.0 busy"})
    dead = down_target()
    p = start(perimd_factory, [dead, b])
    r, seen = send(p.port)
    expect(r, 451, "4.4.1", r"no backend accepted the message: MAIL FROM refused: 451 4\.3\.0 busy")
    no_address(seen, b.port)
    assert dead not in r[1]
    p.wait_log(r"relay=%s, .*status=failover" % re.escape(dead))


def test_show_backend_for_testing(perimd_factory, hostile):
    """relay_reply_show_backend = yes puts the address back."""
    b = hostile(reply={"rcpt": "550 5.1.1 unknown"})
    p = start(perimd_factory, [b], relay_reply_show_backend="yes")
    r, _ = send(p.port, rcpts=("d@example.com",))
    expect(r, 550, "5.1.1", r"backend %s said: 550 5\.1\.1 unknown" % re.escape(b.target))
    b.reply = {}
    r, _ = send(p.port)
    expect(r, 250, "2.0.0", r"\(backend %s said: 250 " % re.escape(b.target))
    b.reply = {"mail": "451 4.3.0 busy"}
    r, _ = send(p.port)
    expect(r, 451, "4.4.1", r"no backend accepted the message: backend %s: MAIL FROM refused"
           % re.escape(b.target))


# ---- item 11: long lines ----------------------------------------------------


def wire_lines(m):
    return m["wire"][:-3].split(b"\r\n")


def test_long_body_line_folded(perimd_factory, hostile):
    """A 2,500-octet body line: folded at 998 with CR LF SP (998, then
    SP + 997, then SP + 505); no wire line over 998; lines of exactly 998
    untouched; 999 folded."""
    b = hostile()
    p = start(perimd_factory, [b])
    long = b"x" * 2500
    exact = b"y" * 998
    over = b"z" * 999
    body = b"Subject: long\r\n\r\n" + long + b"\r\n" + exact + b"\r\n" + over + b"\r\nend\r\n"
    r, _ = send(p.port, body=body)
    expect(r, 250, "2.0.0")
    m = b.messages[0]
    lines = wire_lines(m)
    assert max(len(x) for x in lines) <= 998
    i = lines.index(b"x" * 998)
    assert lines[i + 1] == b" " + b"x" * 997 and lines[i + 2] == b" " + b"x" * 505
    assert lines[i + 3] == exact
    assert lines[i + 4] == b"z" * 998 and lines[i + 5] == b" z"
    assert lines[i + 6] == b"end"
    # folding only inserted CR LF SP
    assert m["data"].replace(b"\r\n ", b"").endswith(body)


def test_long_header_folded(perimd_factory, hostile):
    """A 1,500-octet header field: the fold makes a continuation line
    (RFC 5322 §2.2.3), so the header section stays a header section."""
    b = hostile()
    p = start(perimd_factory, [b])
    hdr = b"X-Long: " + b"h" * 1492
    body = b"Subject: hdr\r\n" + hdr + b"\r\n\r\nbody\r\n"
    r, _ = send(p.port, body=body)
    expect(r, 250, "2.0.0")
    data = b.messages[0]["data"]
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"X-Long: " + b"h" * 990 + b"\r\n " + b"h" * 502 + b"\r\n" in head + b"\r\n"
    assert data.split(b"\r\n\r\n", 1)[1] == b"body\r\n"


def test_long_dot_line_folded(perimd_factory, hostile):
    """A long line starting with '.': the doubled dot is not counted
    (RFC 5321 §4.5.3.1.6), and the backend unstuffs it back."""
    b = hostile()
    p = start(perimd_factory, [b])
    line = b"." + b"d" * 1200
    r, _ = send(p.port, body=b"Subject: d\r\n\r\n" + line + b"\r\n")
    expect(r, 250, "2.0.0")
    lines = wire_lines(b.messages[0])
    i = lines.index(b".." + b"d" * 997)
    assert lines[i + 1] == b" " + b"d" * 203
    assert b"\r\n." + b"d" * 997 + b"\r\n " + b"d" * 203 + b"\r\n" in b.messages[0]["data"]


@pytest.mark.parametrize("limit, folded", [("0", False), ("100", True)])
def test_line_length_limit_parameter(perimd_factory, hostile, limit, folded):
    b = hostile()
    p = start(perimd_factory, [b], smtp_line_length_limit=limit)
    body = b"Subject: p\r\n\r\n" + b"q" * 1500 + b"\r\n"
    r, _ = send(p.port, body=body)
    expect(r, 250, "2.0.0")
    lines = wire_lines(b.messages[0])
    if folded:
        assert max(len(x) for x in lines) == 100 and b" " + b"q" * 99 in lines
    else:
        assert b"q" * 1500 in lines
