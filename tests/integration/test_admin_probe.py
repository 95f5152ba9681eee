"""test_admin_probe.py - cases found by trying perimd from outside as a mail
admin or an attacker would, with real clients (smtplib, raw sockets):

- a client that half-closes after its final dot (no QUIT) can still read
  its reply: the message is relayed and the client hears 250 (a FIN is not
  a disconnect; perimd never abandons a message the client may think sent);
- a client that pipelines QUIT after the dot and half-closes still gets
  both replies and its message delivered;
- sender-specified routing to a relay domain (user%remote@ours,
  remote!user@ours, "user@remote"@ours) is relay access denied, as Postfix
  refuses it by default (allow_untrusted_routing = no): a backend honouring
  the percent hack would otherwise relay it on;
- a malformed ESMTP parameter is 501 5.5.4, not a bad-address reply.
"""

import os
import smtplib
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from backend import Backend  # noqa: E402
from harness import Client, expect, known_params, wait_for  # noqa: E402

SENDER = "a@client.test"
RCPT = "b@example.com"


def start(perimd_factory, backends, **params):
    base = {
        "relay_backends": ", ".join(b.target if isinstance(b, Backend) else b for b in backends),
        "relay_domains": "example.com",
    }
    off = {"greylist": "no", "reject_unknown_sender_domain": "no", "stats_listen": ""}
    base.update({k: v for k, v in off.items() if k in known_params()})
    base.update(params)
    return perimd_factory(**base)


def begin(c, subject):
    """EHLO, MAIL, RCPT, DATA and the body with its dot on a greeted Client;
    the reply to the dot is left to the caller."""
    expect(c.cmd("EHLO probe.test"), 250)
    expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
    expect(c.cmd("RCPT TO:<%s>" % RCPT), 250)
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: " + subject + b"\r\n\r\nbody\r\n.\r\n")


def test_half_close_after_dot_still_delivered(perimd_factory, backend_factory):
    """A client that sends the dot and shuts down its sending side without
    QUIT (printf ... | nc -N) can still read: a half-close is not a
    disconnect. perimd relays the message, the client hears 250 and the
    backend has the message once (abandoning it would lose mail that such
    a client never sends again)."""
    b = backend_factory()
    p = start(perimd_factory, [b])
    with Client(p.port, timeout=30) as c:
        begin(c, b"halfclose")
        c.sock.shutdown(socket.SHUT_WR)
        expect(c.reply(30), 250, "2.0.0")
        assert c.wait_closed(10)
    subjects = [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in b.messages()]
    assert subjects == [b"halfclose"], subjects


def test_pipelined_quit_and_half_close_still_delivered(perimd_factory, backend_factory):
    """A client that sends the dot and QUIT in one write and shuts down its
    sending side, while the message waits for the only backend connection,
    still hears 250 then 221, and the message is delivered once."""
    b = backend_factory(hang=["data"])
    p = start(perimd_factory, [b], relay_destination_concurrency_limit=1,
              relay_pool_wait="60s", relay_timeout="2s")
    a = Client(p.port, timeout=30)
    try:
        begin(a, b"blocker")
        assert wait_for(lambda: b.stats()["commands"].get("DATA", 0) == 1), b.stats()
        b.set(hang=[])
        with Client(p.port, timeout=30) as c:
            expect(c.cmd("EHLO probe.test"), 250)
            expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            expect(c.cmd("RCPT TO:<%s>" % RCPT), 250)
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: half\r\n\r\nbody\r\n.\r\nQUIT\r\n")
            c.sock.shutdown(socket.SHUT_WR)
            # The blocker's DATA stage times out (2s), then ours runs.
            expect(c.reply(30), 250, "2.0.0")
            expect(c.reply(10), 221)
            assert c.wait_closed(10)
        expect(a.reply(20), 451, "4.4.1")
    finally:
        a.close()
    subjects = [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in b.messages()]
    assert subjects == [b"half"], subjects


def test_sender_specified_routing_is_relay_denied(perimd_factory, backend_factory):
    """user%remote@ours, remote!user@ours and "user@remote"@ours: 550 5.7.1
    relay access denied; plain local parts (with + and =) still pass."""
    b = backend_factory()
    p = start(perimd_factory, [b])
    s = smtplib.SMTP("127.0.0.1", p.port, timeout=20)
    try:
        s.ehlo("probe.test")
        assert s.mail(SENDER)[0] == 250
        for rcpt in ("u%victim.test@example.com", "victim.test!u@example.com",
                     '"u@victim.test"@example.com', "@relay.test:u%victim.test@example.com"):
            code, text = s.rcpt(rcpt)
            assert (code, text.split(b" ", 1)[0]) == (550, b"5.7.1"), (rcpt, code, text)
            assert b"relay access denied" in text, (rcpt, text)
        assert s.rcpt("u+tag=x@example.com")[0] == 250
        assert s.rcpt("Postmaster")[0] == 250
        s.data(b"Subject: routed\r\n\r\nbody\r\n")
        s.quit()
    finally:
        s.close()
    (m,) = b.messages()
    assert m.rcpts == ["u+tag=x@example.com", "Postmaster"]
    assert "relay access denied" in p.log_text()


def test_malformed_esmtp_parameter_is_5_5_4(perimd_factory, backend_factory):
    """An empty or ill-formed ESMTP parameter is a parameter error (501
    5.5.4), not 'bad sender/recipient address' (5.1.7 / 5.1.3)."""
    b = backend_factory()
    p = start(perimd_factory, [b])
    s = smtplib.SMTP("127.0.0.1", p.port, timeout=20)
    try:
        s.ehlo("probe.test")
        for args in ("<%s> SIZE=" % SENDER, "<%s> =x" % SENDER, "<%s> SIZE=1=2" % SENDER):
            code, text = s.docmd("MAIL FROM:" + args)
            assert code == 501 and text.startswith(b"5.5.4 Syntax error in parameters"), (args, code, text)
        code, text = s.docmd("MAIL FROM:<a b@client.test>")
        assert code == 501 and text.startswith(b"5.1.7"), (code, text)
        assert s.mail(SENDER)[0] == 250
        code, text = s.docmd("RCPT TO:<%s> NOTIFY=" % RCPT)
        assert code == 501 and text.startswith(b"5.5.4 Syntax error in parameters"), (code, text)
        code, text = s.docmd("RCPT TO:<b@exa mple.com>")
        assert code == 501 and text.startswith(b"5.1.3"), (code, text)
        s.quit()
    finally:
        s.close()


def test_underscore_in_helo_and_sender_domain_accepted(perimd_factory, backend_factory):
    """Real mail carries '_' in HELO names and sender domains (Windows host
    names, mail_out.example.org). Postfix accepts them; so does perimd, even
    with reject_invalid_helo_hostname on. Other junk is still refused."""
    b = backend_factory()
    p = start(perimd_factory, [b], reject_invalid_helo_hostname="yes")
    with Client(p.port, timeout=30) as c:
        expect(c.cmd("EHLO win_host.corp.example"), 250)
        expect(c.cmd("MAIL FROM:<b@mail_out.example.org>"), 250)
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: underscore\r\n\r\nbody\r\n.\r\n")
        expect(c.reply(30), 250, "2.0.0")
        expect(c.cmd("MAIL FROM:<b@mail+out.example.org>"), 501, "5.1.7")
    assert len(b.messages()) == 1
    with Client(p.port, timeout=30) as c:
        expect(c.cmd("EHLO bad!name"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 501, "5.5.2")


def test_sighup_without_tls_does_not_claim_certificates_reloaded(perimd_factory, backend_factory):
    """SIGHUP on a configuration with no certificate and no CA file: the
    log says the configuration was reloaded, and no TLS reload it did not
    do; mail still passes."""
    import signal
    b = backend_factory()
    p = start(perimd_factory, [b])
    os.kill(p.pid, signal.SIGHUP)
    p.wait_log(r"configuration reloaded from ")
    assert "TLS certificates and keys reloaded" not in p.log_text()
    with Client(p.port, timeout=30) as c:
        begin(c, b"after reload")
        expect(c.reply(30), 250, "2.0.0")


def test_backend_reply_without_text_passed_on_cleanly(perimd_factory, backend_factory):
    """A backend answering the final dot with a bare "250" (no text, legal
    per RFC 5321 §4.2): the client's 250 quotes it without a stray blank."""
    b = backend_factory(reply={"eod": "250"})
    p = start(perimd_factory, [b])
    with Client(p.port, timeout=30) as c:
        begin(c, b"bare")
        expect(c.reply(30), 250, "2.0.0", r"\(backend said: 250\)$")
    p.wait_log(r"status=sent \(250\)")


def test_check_names_the_tls_parameter_at_fault(perimd_factory, tmp_path):
    """perimd -t with a missing or wrong TLS file: exit 1, and the reason
    names the parameter to fix, not only the file."""
    import subprocess
    from harness import PERIMD_BIN
    p = perimd_factory(start=False)
    pem = tmp_path / "junk.pem"
    pem.write_text("not a PEM file\n")
    cases = [
        ({"smtpd_tls_cert_file": str(tmp_path / "missing.pem"),
          "smtpd_tls_key_file": str(pem)}, "smtpd_tls_cert_file: "),
        ({"smtpd_tls_cert_file": str(pem), "smtpd_tls_key_file": str(pem)},
         "smtpd_tls_cert_file: %s: no PEM object" % pem),
        ({"relay_tls_CAfile": str(tmp_path / "missing.pem")}, "relay_tls_CAfile: "),
    ]
    for params, want in cases:
        cmd = [PERIMD_BIN, "-t", "-c", p.conf_path]
        for k, v in params.items():
            cmd += ["-o", "%s=%s" % (k, v)]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        err = r.stderr.decode()
        assert r.returncode == 1, (params, r.returncode, err)
        assert want in err, (params, err)


def test_check_blames_the_option_for_a_bad_listen_address(perimd_factory):
    """perimd -t -o smtpd_listen=...:99999: the reason names the -o option,
    not the configuration file (whose own smtpd_listen is fine)."""
    import subprocess
    from harness import PERIMD_BIN
    p = perimd_factory(start=False)
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path, "-o", "smtpd_listen=127.0.0.1:99999"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "-o smtpd_listen=127.0.0.1:99999: smtpd_listen: 127.0.0.1:99999: bad port" in err, err
    assert p.conf_path not in err, err


def test_check_names_the_parameter_for_bad_values(perimd_factory, tmp_path):
    """perimd -t: a map that cannot be opened names relay_domains or
    transport_maps; a myhostname with a blank is refused (it would go into
    the banner and every Received:); '-o =x' says the name is missing."""
    import subprocess
    from harness import PERIMD_BIN
    p = perimd_factory(start=False)
    missing = str(tmp_path / "missing")
    cases = [
        (["relay_domains=example.com, file:" + missing], "relay_domains: %s: cannot open" % missing),
        (["transport_maps=file:" + missing], "transport_maps: %s: cannot open" % missing),
        (["myhostname=mx example.com"], '-o myhostname=mx example.com: "mx example.com" is not a host name'),
        (["=x"], "-o =x: no parameter name before '='"),
    ]
    for opts, want in cases:
        cmd = [PERIMD_BIN, "-t", "-c", p.conf_path]
        for o in opts:
            cmd += ["-o", o]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        err = r.stderr.decode()
        assert r.returncode == 1, (opts, r.returncode, err)
        assert want in err, (opts, err)
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path, "-o", "myhostname=mx_1.example.com"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_rset_with_an_argument_is_a_syntax_error(perimd_factory, backend_factory):
    """RSET takes no parameters (RFC 5321 §4.1.1.5): 'RSET x' gets 501
    5.5.4 and leaves the transaction alone; a plain RSET resets it."""
    b = backend_factory()
    p = start(perimd_factory, [b])
    with Client(p.port, timeout=30) as c:
        expect(c.cmd("EHLO probe.test"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        expect(c.cmd("RSET now"), 501, "5.5.4")
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 503, "5.5.1")
        expect(c.cmd("RSET"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
