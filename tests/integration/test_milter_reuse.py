"""test_milter_reuse.py - a session's milter connection is kept for its
next transaction (milter.h: milter_txn_park, milter_txn_reuse): the real
binary, milter_peer.py (which logs each command with its connection) and
backend.py. One connection per session, SMFIC_ABORT for a transaction
that ends early, a new connection after HELO/EHLO or STARTTLS, after a
failure and after an idle spell longer than command_timeout (closed
then); SMFIC_QUIT when the session ends.
"""

import os
import ssl
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, wait_for  # noqa: E402
from test_milter import MSG, Peer, headers_of, start  # noqa: E402


@pytest.fixture
def peer(tmp_path):
    p = Peer(tmp_path)
    yield p
    p.stop()


def message(c, sender, rcpt="a@example.com", code=250):
    """One transaction on an open session; the reply to the final dot."""
    expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
    expect(c.cmd("RCPT TO:<%s>" % rcpt), 250)
    expect(c.cmd("DATA"), 354)
    c.send(MSG + b".\r\n")
    r = c.reply(timeout=20)
    assert r[0] == code, r
    return r


def cmds(peer, cmd):
    return [e for e in peer.events() if e["cmd"] == cmd]


def test_one_connection_per_session(perimd_factory, backend, peer):
    p = start(perimd_factory, backend, peer.spec)
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        for i in range(3):
            message(c, "plain%d@client.test" % i)
        # every message had the milter's verdict and its header
        assert wait_for(lambda: len(backend.messages()) == 3)
        assert all("X-Peer: seen" in headers_of(m.data) for m in backend.messages())
        ev = peer.events()
        assert len({e["conn"] for e in ev}) == 1, ev
        assert [e["cmd"] for e in ev if e["cmd"] in "OCHM"] == ["O", "C", "H", "M", "M", "M"]
        assert cmds(peer, "A") == []  # each ended at its end of message
        assert [e["args"][0] for e in cmds(peer, "M")] == ["<plain%d@client.test>" % i for i in range(3)]
        # the per-message macros are the message's
        ids = [e["macros"].get("i") for e in cmds(peer, "M")]
        assert len(set(ids)) == 3, ids
        assert cmds(peer, "Q") == []
        c.cmd("QUIT")
    # the session's end closes it
    assert wait_for(lambda: len(cmds(peer, "Q")) == 1)


def test_early_ends_abort_and_reuse(perimd_factory, backend, peer):
    """A recipient the milter refused, RSET mid-transaction, a MAIL the
    milter refused: each ends with SMFIC_ABORT, and the next message on
    the same connection is filtered as usual."""
    p = start(perimd_factory, backend, peer.spec)
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<rejectrcpt@client.test>"), 250)
        expect(c.cmd("RCPT TO:<a@example.com>"), 550, "5.7.1")
        expect(c.cmd("RSET"), 250)
        message(c, "plain@client.test")
        expect(c.cmd("MAIL FROM:<plain2@client.test>"), 250)
        expect(c.cmd("RCPT TO:<a@example.com>"), 250)
        expect(c.cmd("RSET"), 250)
        expect(c.cmd("MAIL FROM:<rejectmail@client.test>"), 550, "5.7.1")
        message(c, "mods@client.test")
        message(c, "tempfail@client.test", code=451)
        message(c, "plain3@client.test")
    assert wait_for(lambda: len(cmds(peer, "Q")) == 1)
    ev = peer.events()
    assert len({e["conn"] for e in ev}) == 1 and len(cmds(peer, "O")) == 1, ev
    seq = [e["cmd"] for e in ev if e["cmd"] in "MAEQ"]
    assert seq == ["M", "A", "M", "E", "M", "A", "M", "A", "M", "E", "M", "E", "M", "E", "Q"], seq
    msgs = backend.messages()
    assert len(msgs) == 3
    assert all(any(h.startswith("X-Peer") or h.startswith("X-Added") for h in headers_of(m.data))
               for m in msgs)
    # the body the milter saw after an abort is the next message's alone
    seen = [e for e in ev if e["cmd"] == "headers"]
    assert all(s["body"] == "original body\r\n" for s in seen), seen


def test_new_connection_after_helo_failure_and_idle(perimd_factory, backend, peer):
    """A new EHLO, a milter that failed, and an idle spell longer than
    milter_command_timeout each give the next MAIL a new connection."""
    p = start(perimd_factory, backend, peer.spec, milter_command_timeout="1s")
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        message(c, "plain@client.test")
        expect(c.cmd("EHLO other.test"), 250)
        assert wait_for(lambda: len(cmds(peer, "Q")) == 1)
        message(c, "plain2@client.test")
        expect(c.cmd("MAIL FROM:<broken@client.test>"), 451, "4.3.5")  # default_action
        message(c, "plain3@client.test")
        # idle: the connection is closed once command_timeout has passed
        t0 = time.monotonic()
        assert wait_for(lambda: len(cmds(peer, "Q")) == 2)
        assert time.monotonic() - t0 > 0.8
        message(c, "plain4@client.test")
    ev = peer.events()
    opts = [e["conn"] for e in ev if e["cmd"] == "O"]
    assert len(opts) == 4 and len(set(opts)) == 4, ev
    helo = [e["args"][0] for e in ev if e["cmd"] == "H"]
    assert helo == ["client.test", "other.test", "other.test", "other.test"], helo
    assert wait_for(lambda: len(backend.messages()) == 4)
    assert all("X-Peer: seen" in headers_of(m.data) for m in backend.messages())
    assert wait_for(lambda: len(cmds(peer, "Q")) >= 3)


def test_connect_verdicts(perimd_factory, backend, tmp_path):
    """A milter that accepts at connect is skipped for the rest of the
    session (its connection closed); one that rejects at connect refuses
    each MAIL, asked again on a new connection each time, as before."""
    (tmp_path / "acc").mkdir()
    (tmp_path / "rej").mkdir()
    acc = Peer(tmp_path / "acc", at_connect="accept")
    rej = Peer(tmp_path / "rej", at_connect="reject")
    try:
        p = start(perimd_factory, backend, acc.spec)
        with Client(p.port) as c:
            expect(c.cmd("EHLO client.test"), 250)
            message(c, "plain@client.test")
            assert wait_for(lambda: len(cmds(acc, "Q")) == 1)  # not kept
            message(c, "plain2@client.test")
        assert [e["cmd"] for e in acc.events()] == ["O", "C", "Q"]
        assert len(backend.messages()) == 2
        assert not any("X-Peer: seen" in headers_of(m.data) for m in backend.messages())
        p2 = start(perimd_factory, backend, rej.spec)
        with Client(p2.port) as c:
            expect(c.cmd("EHLO client.test"), 250)
            expect(c.cmd("MAIL FROM:<a@client.test>"), 550, "5.7.1")
            expect(c.cmd("MAIL FROM:<b@client.test>"), 550, "5.7.1")
        assert [e["cmd"] for e in rej.events()].count("O") == 2
        assert not cmds(rej, "M")
    finally:
        acc.stop()
        rej.stop()


def test_starttls_closes_the_milter_connection(perimd_factory, backend, peer, tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "2", "-subj",
                    "/CN=perimd.test"], cwd=tmp_path, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = start(perimd_factory, backend, peer.spec, smtpd_tls_cert_file=tmp_path / "c.pem",
              smtpd_tls_key_file=tmp_path / "k.pem")
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        message(c, "plain@client.test")
        expect(c.cmd("STARTTLS"), 220)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname="perimd.test")
        assert wait_for(lambda: len(cmds(peer, "Q")) == 1)
        expect(c.cmd("EHLO client.test"), 250)
        message(c, "plain2@client.test")
        message(c, "plain3@client.test")
    assert wait_for(lambda: len(cmds(peer, "Q")) == 2)
    ev = peer.events()
    conns = [e["conn"] for e in ev if e["cmd"] == "O"]
    assert len(conns) == 2 and conns[0] != conns[1], ev
    mails = [e for e in ev if e["cmd"] == "M"]
    assert [e["conn"] for e in mails] == [conns[0], conns[1], conns[1]]
    assert len(backend.messages()) == 3


def milter_conns(port):
    """Established TCP connections to 127.0.0.1:port, seen from the milter's side."""
    out = subprocess.run(["ss", "-Htn", "state", "established", "( sport = :%d )" % port],
                         capture_output=True, text=True, timeout=10).stdout
    return len([l for l in out.splitlines() if l.strip()])


def test_opendkim_one_connection(perimd_factory, backend, tmp_path):
    """Real libmilter filters: opendkim signing then verifying, three
    messages and an RSET on one session: one connection to each, every
    message signed and verified."""
    from test_milter import dkim_chain, stop_proc
    procs = []
    try:
        sp, vp = dkim_chain(tmp_path, procs)
        p = start(perimd_factory, backend, "inet:127.0.0.1:%d, inet:127.0.0.1:%d" % (sp, vp),
                  milter_content_timeout="30s", milter_command_timeout="30s")
        with Client(p.port) as c:
            expect(c.cmd("EHLO client.test"), 250)
            for i in range(3):
                body = (b"From: someone@signed.test\r\nTo: a@example.com\r\nSubject: signed %d\r\n"
                        b"Date: Thu, 03 Dec 2026 06:00:00 +0000\r\nMessage-ID: <%d@signed.test>\r\n\r\n"
                        b"a signed body %d\r\n" % (i, i, i))
                expect(c.cmd("MAIL FROM:<someone@signed.test>"), 250)
                expect(c.cmd("RCPT TO:<a@example.com>"), 250)
                if i == 1:  # an abandoned transaction in between
                    expect(c.cmd("RSET"), 250)
                    expect(c.cmd("MAIL FROM:<someone@signed.test>"), 250)
                    expect(c.cmd("RCPT TO:<a@example.com>"), 250)
                expect(c.cmd("DATA"), 354)
                c.send(body + b".\r\n")
                expect(c.reply(timeout=30), 250)
            assert milter_conns(sp) == 1 and milter_conns(vp) == 1
            c.cmd("QUIT")
        msgs = backend.messages()
        assert len(msgs) == 3
        for m in msgs:
            head = m.data.split(b"\r\n\r\n", 1)[0].decode()
            unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ")
            assert "DKIM-Signature:" in head and "dkim=pass" in unfolded, unfolded
        # the session's end closes both
        assert wait_for(lambda: milter_conns(sp) == 0 and milter_conns(vp) == 0)
    finally:
        for pr in procs:
            stop_proc(pr)


@pytest.mark.skipif(os.geteuid() != 0, reason="rspamd -u root: the test runs it as root")
def test_rspamd_one_connection(perimd_factory, backend, tmp_path):
    """rspamd's own milter code (not libmilter): a GTUBE message refused,
    then a clean one on the same connection passes with its headers."""
    from test_milter import GTUBE, Rspamd
    rs = Rspamd(tmp_path).start()
    try:
        p = start(perimd_factory, backend, "inet:127.0.0.1:%d" % rs.port,
                  milter_content_timeout="60s", milter_command_timeout="30s")
        clean = (b"From: a@client.test\r\nTo: a@example.com\r\nSubject: lunch\r\n"
                 b"Date: Thu, 03 Dec 2026 06:00:00 +0000\r\nMessage-ID: <2@client.test>\r\n\r\n"
                 b"Shall we have lunch at noon?\r\n")
        with Client(p.port) as c:
            expect(c.cmd("EHLO client.test"), 250)
            for body, code in ((b"Subject: gtube\r\nFrom: a@client.test\r\n\r\n" + GTUBE + b"\r\n", 554),
                               (clean, 250), (clean, 250)):
                expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
                expect(c.cmd("RCPT TO:<a@example.com>"), 250)
                expect(c.cmd("DATA"), 354)
                c.send(body + b".\r\n")
                expect(c.reply(timeout=60), code)
            assert milter_conns(rs.port) == 1
            c.cmd("QUIT")
        msgs = backend.messages()
        assert len(msgs) == 2
        for m in msgs:
            head = m.data.split(b"\r\n\r\n", 1)[0].decode()
            assert "X-Spamd-Result:" in head and "X-Spam-Status:" in head, head
        assert wait_for(lambda: milter_conns(rs.port) == 0)
    finally:
        rs.stop()
