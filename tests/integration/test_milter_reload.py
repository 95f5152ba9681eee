"""test_milter_reload.py - smtpd_milters is parsed once per configuration
(milter_set_load, at start and at each reload) and every transaction keeps
the milters it started with: a SIGHUP that changes smtpd_milters applies to
the transactions of new sessions, while one in the middle of DATA ends on
its own milter, and a stage waiting on a milter during the reload ends on
that milter's own settings. The build under test has ASan: a use
of the freed set or configuration fails the test at stop. The milters are
milter_peer.py processes (test_milter.Peer).
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, wait_for  # noqa: E402
from test_milter import MSG, Peer, headers_of, send, start  # noqa: E402


def peer_in(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    return Peer(d)


def senders(peer, cmd="M"):
    """The senders a peer saw at MAIL (cmd M), or those whose transaction
    reached end of message (cmd E: the i macro is not the sender, so the
    connection's MAIL is looked up)."""
    ev = peer.events()
    mail = {e["conn"]: e["args"][0] for e in ev if e["cmd"] == "M"}
    if cmd == "M":
        return sorted(mail.values())
    return sorted(mail[e["conn"]] for e in ev if e["cmd"] == cmd and e["conn"] in mail)


def txn(c, sender):
    """One whole transaction on an open session; the reply to its dot."""
    expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
    expect(c.cmd("RCPT TO:<a@example.com>"), 250)
    expect(c.cmd("DATA"), 354)
    c.send(MSG + b".\r\n")
    return c.reply(timeout=20)


def reload(p, line, n):
    """Append a setting to the configuration and SIGHUP; wait for the n-th
    "configuration reloaded"."""
    with open(p.conf_path, "a") as f:
        f.write(line + "\n")
    p.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: p.log_text().count("configuration reloaded") >= n, timeout=20), p.log_text()


def test_reload_mid_data_keeps_the_transactions_milter(perimd_factory, backend, tmp_path):
    """A transaction past DATA on milter a; SIGHUP sets smtpd_milters to b;
    a new session goes through b while the first is still open; the first
    ends on a (end of message on a, nothing of it on b), both delivered."""
    a, b = peer_in(tmp_path, "a"), peer_in(tmp_path, "b")
    try:
        p = start(perimd_factory, backend, a.spec)
        c = Client(p.port)
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<first@client.test>"), 250)
        expect(c.cmd("RCPT TO:<a@example.com>"), 250)
        expect(c.cmd("DATA"), 354)
        head, body = MSG.split(b"\r\n\r\n", 1)
        c.send(head + b"\r\n\r\n")  # mid-DATA: the headers, not the body
        reload(p, "smtpd_milters = %s" % b.spec, 1)
        expect(send(p.port, "second@client.test", ["a@example.com"], MSG), 250)
        c.send(body + b".\r\n")
        expect(c.reply(timeout=20), 250)
        c.close()
        assert senders(a) == ["<first@client.test>"], a.events()
        assert senders(a, "E") == ["<first@client.test>"], a.events()
        assert senders(b) == ["<second@client.test>"], b.events()
        assert senders(b, "E") == ["<second@client.test>"], b.events()
        msgs = backend.messages()
        assert len(msgs) == 2
        for m in msgs:
            assert "X-Peer: seen" in headers_of(m.data), m.data
        # A reload that drops the milters: mail passes unfiltered.
        reload(p, "smtpd_milters =", 2)
        expect(send(p.port, "third@client.test", ["a@example.com"], MSG), 250)
        assert "<third@client.test>" not in senders(a) + senders(b)
        assert "X-Peer: seen" not in headers_of(backend.messages()[2].data)
        p.stop()  # ASan and the leak check speak here
    finally:
        a.stop()
        b.stop()


def test_reload_while_a_stage_waits_on_its_milter(perimd_factory, backend, tmp_path):
    """MAIL waits on milter a (in braces: command_timeout=1s,
    default_action=reject) when a SIGHUP sets smtpd_milters to b: the
    stage ends on a's own settings (550 5.5.0 after its timeout). The
    session keeps the configuration it started with, as for every other
    setting: its next transaction goes to a again; a new session to b."""
    a, b = peer_in(tmp_path, "a"), peer_in(tmp_path, "b")
    try:
        p = start(perimd_factory, backend, "{ %s, command_timeout=1s, default_action=reject }" % a.spec)
        c = Client(p.port)
        expect(c.cmd("EHLO client.test"), 250)
        c.send(b"MAIL FROM:<hang@client.test>\r\n")
        assert wait_for(lambda: "<hang@client.test>" in senders(a), timeout=10), a.events()
        reload(p, "smtpd_milters = %s" % b.spec, 1)
        expect(c.reply(timeout=15), 550, "5.5.0")
        assert "milter %s: read: timeout; default_action = reject" % a.spec in p.log_text()
        expect(c.cmd("RSET"), 250)
        expect(txn(c, "same@client.test"), 250)
        c.close()
        expect(send(p.port, "new@client.test", ["a@example.com"], MSG), 250)
        assert senders(a) == ["<hang@client.test>", "<same@client.test>"], a.events()
        assert senders(b) == ["<new@client.test>"], b.events()
        p.stop()
    finally:
        a.stop()
        b.stop()


def test_no_nagle_waits(perimd_factory, backend, tmp_path):
    """A milter's conversation is many small packets, each waited on, and
    a change at end of message is followed by the verdict in a second
    write: with Nagle on perimd's side, or its ACK delayed, each such
    packet waited ~40 ms (about 0.5 s per message with opendkim). With
    TCP_NODELAY, whole-packet writes and TCP_QUICKACK after a change,
    messages through milter_peer (which adds a header, then accepts) take
    well under 40 ms each: the median of 20 (a delayed ACK alone is at
    least 40 ms on Linux, for every message; before the fix, 700 ms)."""
    import time
    a = peer_in(tmp_path, "a")
    try:
        p = start(perimd_factory, backend, a.spec)
        n = 20
        with Client(p.port) as c:
            expect(c.cmd("EHLO client.test"), 250)
            took = []
            for i in range(n):
                t0 = time.monotonic()
                expect(txn(c, "plain@client.test"), 250)
                took.append(time.monotonic() - t0)
        med = sorted(took)[n // 2]
        assert len(backend.messages()) == n
        assert "X-Peer: seen" in headers_of(backend.messages()[0].data)
        print("per message: median %.1f ms, max %.1f ms" % (med * 1000, max(took) * 1000))
        assert med < 0.035, "median %.0f ms per message: a Nagle or delayed-ACK wait is back" % (med * 1000)
    finally:
        a.stop()
