"""test_milter_hostile.py - what a milter that misbehaves at the end of
the message can make perimd write: a hostile milter speaking the wire
protocol on 127.0.0.1 (in this process, one thread per connection), the
real binary, backend.py as the backend. A milter's change must stay the
change it names: a header value with line breaks stays one header (no
header or body injection), a header name that is no field name breaks the
protocol (milter_default_action), and an added recipient or new sender
that is not one address is dropped and logged, never sent to a backend.
A milter that breaks before its verdict under milter_default_action =
accept leaves no change behind (not half a replaced body). A long
multi-line refusal stays a refusal (the lines that fit); a
replaced body past message_size_limit is refused (552 5.3.4) as a
message that grows beyond it in DATA; a milter's 421 closes the session,
as Postfix does.
"""

import os
import struct
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, wait_for  # noqa: E402
from listener import Listener  # noqa: E402


def pkt(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def z(*parts):
    return b"".join(p.encode() + b"\0" for p in parts)


# What the milter answers at the end of the message, by the sender's
# local part.
EOM = {
    "crlfvalue": pkt(b"h", z("X-A", "v\nBcc: injected@example.com")) + pkt(b"a"),
    "blankvalue": pkt(b"h", z("X-B", "v\n\n\r\nbody injected")) +
    pkt(b"m", struct.pack(">I", 1) + z("Subject", "new\r\nX-Evil: 1\n")) + pkt(b"a"),
    "badname": pkt(b"h", z("X-A: x\r\nBcc", "v")) + pkt(b"a"),
    "spacename": pkt(b"i", struct.pack(">I", 0) + z("X A", "v")) + pkt(b"a"),
    # 1.8 MB of body in 600 KB chunks, past message_size_limit (1 MB here)
    "bigbody": b"".join(pkt(b"b", b"y" * 599998 + b"\r\n") for _ in range(3)) + pkt(b"a"),
    # a reject in 30 lines (1.9 KB): more than a reply perimd keeps
    "longreply": pkt(b"y", z("\r\n".join("550-5.7.1 reason %02d %s" % (i, "x" * 50) for i in range(30)) +
                             "\r\n550 5.7.1 the end")),
    # changes, then a packet of length 0: broken before its verdict
    "brokenmods": pkt(b"b", b"half a bo") + pkt(b"h", z("X-Partial", "1")) +
    pkt(b"+", z("<added@example.com>")) + b"\0\0\0\0",
    # 50 added recipients, past smtpd_recipient_limit (5 here)
    "manyrcpts": b"".join(pkt(b"+", z("<r%02d@example.com>" % i)) for i in range(50)) + pkt(b"a"),
    # 1.2 MB of added recipients: more changes than message_size_limit bytes
    "rcptflood": b"".join(pkt(b"+", z("<r%06d-%s@example.com>" % (i, "p" * 80))) for i in range(12000)) +
    pkt(b"a"),
    "addresses": pkt(b"+", z("<a b@example.com>")) +
    pkt(b"+", z("<evil\r\nRCPT TO:<x>@example.com>")) +
    pkt(b"2", z("<a>b@example.com>", "NOTIFY=NEVER")) +
    pkt(b"+", z("<good@example.com>")) +
    pkt(b"e", z("<s\r\nRCPT TO:<y@example.com>@example.org>")) + pkt(b"a"),
}


class HostileMilter(Listener):
    """Negotiates every action, continues at each stage, answers the end
    of the message from EOM."""

    def __init__(self):
        Listener.__init__(self)
        self.spec = "inet:127.0.0.1:%d" % self.port
        self.start()

    @staticmethod
    def recvn(c, n):
        b = b""
        while len(b) < n:
            try:
                d = c.recv(n - len(b))
            except OSError:  # closed by stop()
                return None
            if not d:
                return None
            b += d
        return b

    def serve(self, c, no):
        mode = ""
        with c:
            while True:
                h = self.recvn(c, 4)
                d = h and self.recvn(c, struct.unpack(">I", h)[0])
                if not d:
                    return
                cmd, data = d[:1], d[1:]
                if cmd == b"O":
                    c.sendall(pkt(b"O", struct.pack(">III", 6, struct.unpack(">I", data[4:8])[0], 0)))
                elif cmd == b"M":
                    mode = data.split(b"\0")[0].strip(b"<>").split(b"@")[0].decode()
                    c.sendall(pkt(b"c"))
                elif cmd == b"R" and mode == "close421":
                    c.sendall(pkt(b"y", z("421 4.7.0 filter shutting down")))
                elif cmd == b"E" and mode == "bodyforever":
                    try:  # replaced body without end, until perimd hangs up
                        while True:
                            c.sendall(pkt(b"b", b"z" * 65000 + b"\r\n"))
                    except OSError:
                        return
                elif cmd == b"E":
                    c.sendall(EOM.get(mode, pkt(b"a")))
                elif cmd == b"Q":
                    return
                elif cmd not in (b"D", b"A"):
                    c.sendall(pkt(b"c"))



@pytest.fixture
def milter():
    m = HostileMilter()
    yield m
    m.stop()


BODY = b"Subject: hi\r\nFrom: a@client.test\r\n\r\nbody\r\n"


def send(port, sender, rcpt="u@example.com"):
    with Client(port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
        expect(c.cmd("RCPT TO:<%s>" % rcpt), 250)
        expect(c.cmd("DATA"), 354)
        c.send(BODY + b".\r\n")
        return c.reply(timeout=20)


def start(perimd_factory, backend, milter, action="tempfail"):
    return perimd_factory(relay_backends=backend.target, smtpd_milters=milter.spec,
                          milter_command_timeout="3s", milter_content_timeout="3s",
                          milter_default_action=action, message_size_limit="1000000",
                          smtpd_recipient_limit="5")


def header_lines(data):
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_header_changes_stay_headers(perimd_factory, backend, milter):
    p = start(perimd_factory, backend, milter)
    for sender in ("crlfvalue", "blankvalue"):
        r = send(p.port, sender + "@client.test")
        assert r[0] == 250, (sender, r)
    wait_for(lambda: len(backend.messages()) == 2)
    crlf, blank = backend.messages()
    # A line break in a value folds it: the rest is that header's, not a new one.
    lines = header_lines(crlf.data)
    assert b"X-A: v" in lines and b" Bcc: injected@example.com" in lines, lines
    assert not any(l.lower().startswith(b"bcc:") for l in lines), lines
    assert crlf.data.endswith(b"\r\n\r\nbody\r\n"), crlf.data
    # Empty lines in a value go: the header section does not end there.
    lines = header_lines(blank.data)
    assert b"X-B: v" in lines and b" body injected" in lines, lines
    assert b"Subject: new" in lines and b" X-Evil: 1" in lines, lines
    assert not any(l.startswith(b"X-Evil") for l in lines), lines
    assert blank.data.split(b"\r\n\r\n", 1)[1] == b"body\r\n", blank.data
    # A name that is no field name breaks the protocol: the default action.
    for sender in ("badname", "spacename"):
        r = send(p.port, sender + "@client.test")
        assert r[0] == 451 and "4.3.5" in r[1], (sender, r)
    p.wait_log(r"malformed packet \(command 0x69")
    assert len(backend.messages()) == 2


def test_milter_addresses_are_checked(perimd_factory, backend, milter):
    p = start(perimd_factory, backend, milter)
    r = send(p.port, "addresses@client.test")
    assert r[0] == 250, r
    wait_for(lambda: len(backend.messages()) == 1)
    m = backend.messages()[0]
    assert sorted(m.rcpts) == ["good@example.com", "u@example.com"], m.rcpts
    assert m.mail_from == "addresses@client.test", m.mail_from
    log = p.log_text()
    assert log.count("added recipient <") >= 3 and "refused" in log, log
    assert "sender <s" in log and "RCPT TO:<y@example.com>@example.org> refused" in log, log
    assert "RCPT TO:<x>" not in backend.log_text()


def test_replaced_body_past_the_size_limit(perimd_factory, backend, milter):
    p = start(perimd_factory, backend, milter)
    r = send(p.port, "bigbody@client.test")
    assert r[0] == 552 and "5.3.4" in r[1], r
    # A body that never ends is refused as soon as it passes the limit.
    t0 = time.monotonic()
    r = send(p.port, "bodyforever@client.test")
    assert r[0] == 552 and "5.3.4" in r[1], r
    assert time.monotonic() - t0 < 10
    r = send(p.port, "other@client.test")  # the next message goes through
    assert r[0] == 250, r
    wait_for(lambda: len(backend.messages()) == 1)
    assert backend.messages()[0].mail_from == "other@client.test"
    p.wait_log(r"exceeds message_size_limit")


def test_milter_421_closes_the_session(perimd_factory, backend, milter):
    p = start(perimd_factory, backend, milter)
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<close421@client.test>"), 250)
        r = c.cmd("RCPT TO:<u@example.com>")
        assert r[0] == 421 and "filter shutting down" in r[1], r
        assert c.wait_closed(timeout=5), "the session stayed open after a 421"
    p.wait_log(r"milter reply 421: session closed")
    r = send(p.port, "other@client.test")  # a new session is served
    assert r[0] == 250, r


def test_long_refusal_stays_a_refusal(perimd_factory, backend, milter):
    p = start(perimd_factory, backend, milter)
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<longreply@client.test>"), 250)
        expect(c.cmd("RCPT TO:<u@example.com>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(BODY + b".\r\n")
        r = c.reply(timeout=20)
        assert r[0] == 550, r  # the milter's verdict, not milter_default_action's 451
        assert r[1].startswith("5.7.1 reason 00 ") and "reason 10" in r[1], r
        expect(c.cmd("NOOP"), 250)  # every line of the reply was read: in step
    assert backend.messages() == []


def test_broken_milter_leaves_no_change(perimd_factory, backend, milter):
    p = start(perimd_factory, backend, milter, action="accept")
    r = send(p.port, "brokenmods@client.test")
    assert r[0] == 250, r  # accept: the message goes on without that milter
    wait_for(lambda: len(backend.messages()) == 1)
    m = backend.messages()[0]
    assert m.data.endswith(b"\r\n\r\nbody\r\n"), m.data  # the body as the client sent it
    assert b"X-Partial" not in m.data and b"half a bo" not in m.data, m.data
    assert m.rcpts == ["u@example.com"], m.rcpts
    p.wait_log(r"malformed packet|bad packet length")


def test_added_recipients_are_bounded(perimd_factory, backend, milter):
    p = start(perimd_factory, backend, milter)
    r = send(p.port, "manyrcpts@client.test")
    assert r[0] == 250, r
    wait_for(lambda: len(backend.messages()) == 1)
    m = backend.messages()[0]
    assert m.rcpts == ["u@example.com", "r00@example.com", "r01@example.com", "r02@example.com",
                       "r03@example.com"], m.rcpts
    assert p.log_text().count("past smtpd_recipient_limit (5) dropped, <r04@example.com> the first") == 1
    # A flood of changes breaks the protocol: milter_default_action.
    r = send(p.port, "rcptflood@client.test")
    assert r[0] == 451 and "4.3.5" in r[1], r
    p.wait_log(r"changes past message_size_limit bytes")
    assert len(backend.messages()) == 1
