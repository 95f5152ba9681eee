"""test_tls.py - STARTTLS on both sides (BearSSL): RFC 3207 server
behaviour, no plaintext injection (CVE-2011-0411), TLS to backends with
encrypt / verify, certificate reload on SIGHUP.

Certificates are made by openssl for the module: RSA-2048 and ECDSA P-256
self-signed server certificates, a CA and a backend certificate it signed
for backend.test."""

import os
import re
import signal
import socket
import ssl
import subprocess
import time

import pytest

from harness import Client, free_port, known_params, smtp_dialogue, swaks, sink_message
from tls_backend import TlsBackend


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rsa.key",
             "-out", "rsa.crt", "-days", "2", "-subj", "/CN=perimd.test", cwd=d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ec.key", "-out", "ec.crt", "-days", "2", "-subj", "/CN=perimd.test", cwd=d)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=perimd test CA",
             cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "backend.key", "-out",
             "backend.csr", "-subj", "/CN=backend.test", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName = DNS:backend.test\n")
    _openssl("x509", "-req", "-in", "backend.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "backend.crt", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return {k: str(d / k) for k in ("rsa.key", "rsa.crt", "ec.key", "ec.crt", "ca.crt",
                                     "backend.key", "backend.crt")} | {"dir": str(d)}


@pytest.fixture
def perimd_factory(perimd_factory):
    """conftest's factory, with no fixed statistics port (suites run side
    by side); a test that reads /metrics passes its own stats_listen."""
    def make(start=True, **params):
        if "stats_listen" in known_params():
            params.setdefault("stats_listen", "")
        return perimd_factory(start=start, **params)
    return make


def metrics(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                return data.decode("utf-8", "replace")
            data += d


def tls_params(certs, kind="rsa", **extra):
    p = {"smtpd_tls_cert_file": certs[kind + ".crt"], "smtpd_tls_key_file": certs[kind + ".key"]}
    p.update(extra)
    return p


def client_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def go_tls(c):
    """Wrap Client c's socket after the server's 220 (nothing buffered)."""
    assert c.buf == b"", c.buf
    c.sock = client_ctx().wrap_socket(c.sock, server_hostname="perimd.test")
    return c.sock


def ehlo_caps(text):
    return [l.split()[0].upper() for l in text.split("\n")[1:] if l]


# ---- server side ------------------------------------------------------------


def test_openssl_s_client_starttls_delivers(perimd_factory, sink, certs):
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, **tls_params(certs))
    script = (b"EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.com>\r\n"
              b"DATA\r\nSubject: over tls\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    out = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                          "127.0.0.1:%d" % p.port, "-quiet", "-ign_eof"], input=script,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30).stdout
    assert b"250 2.0.0 Ok: queued as" in out, out
    assert sink.wait_count(1)
    env, body = sink_message(sink.messages()[0])
    assert b"with ESMTPS id" in body
    assert re.search(rb"\(using TLSv1\.2 with cipher ECDHE-RSA-[A-Z0-9-]+\)", body), body
    p.wait_log(r"TLS established from \[127\.0\.0\.1\]: TLSv1\.2 with cipher ECDHE-RSA-")


def test_swaks_tls_with_ecdsa_key(perimd_factory, sink, certs):
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, **tls_params(certs, "ec"))
    rc, out = swaks("--tls", "--server", "127.0.0.1", "--port", p.port, "--from", "a@b.test",
                    "--to", "u@example.com", "--helo", "client.test")
    assert rc == 0, out
    assert "TLS started" in out, out
    assert sink.wait_count(1)
    p.wait_log(r"TLS established from .*ECDHE-ECDSA-")


def test_starttls_resets_state_and_is_not_offered_again(perimd_factory, sink, certs):
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, **tls_params(certs))
    with Client(p.port) as c:
        code, text = c.cmd("EHLO client.test")
        assert code == 250 and "STARTTLS" in ehlo_caps(text)
        assert c.cmd("MAIL FROM:<a@b.test>")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        go_tls(c)
        # RFC 3207 §4.2: the transaction and the EHLO are forgotten.
        assert c.cmd("MAIL FROM:<a@b.test>")[0] == 503
        code, text = c.cmd("EHLO client.test")
        assert code == 250 and "STARTTLS" not in ehlo_caps(text)
        assert c.cmd("RCPT TO:<u@example.com>")[0] == 503
        assert c.cmd("STARTTLS") == (503, "5.5.1 Error: TLS already active")
        assert c.cmd("MAIL FROM:<a@b.test>")[0] == 250
        assert c.cmd("RCPT TO:<u@example.com>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert c.reply()[0] == 250
        assert c.cmd("QUIT")[0] == 221
    assert sink.wait_count(1)


def test_starttls_argument_and_no_certificate(perimd_factory, certs):
    p = perimd_factory(**tls_params(certs))
    r = smtp_dialogue(p.port, ["EHLO x", "STARTTLS now", "QUIT"])
    assert r[2][0] == 501 and r[2][1].startswith("5.5.4"), r
    q = perimd_factory()
    r = smtp_dialogue(q.port, ["EHLO x", "STARTTLS", "QUIT"])
    assert "STARTTLS" not in ehlo_caps(r[1][1])
    assert r[2] == (502, "5.5.1 Error: command not implemented")
    n = perimd_factory(smtpd_tls_security_level="none", **tls_params(certs))
    r = smtp_dialogue(n.port, ["EHLO x", "STARTTLS", "QUIT"])
    assert "STARTTLS" not in ehlo_caps(r[1][1]) and r[2][0] == 502


@pytest.mark.parametrize("injected", [b"RSET\r\n", b"MAIL FROM:<x@evil.test>\r\n"])
def test_no_plaintext_injection(perimd_factory, certs, injected):
    """CVE-2011-0411: a command pipelined after STARTTLS in the same write
    must never be answered inside TLS."""
    p = perimd_factory(**tls_params(certs))
    with Client(p.port) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        c.send(b"STARTTLS\r\n" + injected)
        assert c.reply()[0] == 220
        go_tls(c)
        # Nothing may come on its own: the injected command was dropped.
        assert c.reply(timeout=0.5) is None and c.buf == b""
        # The first reply inside TLS is the EHLO's, not the injected one's.
        code, text = c.cmd("EHLO client.test")
        assert code == 250 and text.startswith("perimd.test"), text
        assert c.cmd("RCPT TO:<u@example.com>")[0] == 503  # no MAIL survived
    p.wait_log(r"TLS established")


def test_garbage_instead_of_client_hello(perimd_factory, sink, certs):
    sport = free_port()
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port,
                       stats_listen="127.0.0.1:%d" % sport, **tls_params(certs))
    other = Client(p.port)
    try:
        assert other.cmd("EHLO other.test")[0] == 250
        assert other.cmd("STARTTLS")[0] == 220
        go_tls(other)
        with Client(p.port) as bad:
            assert bad.cmd("EHLO bad.test")[0] == 250
            assert bad.cmd("STARTTLS")[0] == 220
            bad.send(b"GET / HTTP/1.0\r\n\r\n" + b"\x00" * 300)
            assert bad.wait_closed(10)
        p.wait_log(r"TLS handshake failed from \[127\.0\.0\.1\]: reason=(protocol|version)")
        # The session beside it goes on.
        assert other.cmd("EHLO other.test")[0] == 250
        assert other.cmd("MAIL FROM:<a@b.test>")[0] == 250
        assert other.cmd("RCPT TO:<u@example.com>")[0] == 250
        assert other.cmd("DATA")[0] == 354
        other.send(b"Subject: beside\r\n\r\nok\r\n.\r\n")
        assert other.reply()[0] == 250
        m = metrics(sport)
        assert re.search(r'perimd_tls_handshake_failures_total\{reason="(protocol|version)"\} 1', m), m
        assert re.search(r'perimd_tls_sessions_total\{side="client"\} 1', m), m
        assert re.search(r'perimd_tls_memory_bytes\{side="client"\} [1-9]', m), m
    finally:
        other.close()
    assert sink.wait_count(1)


def test_client_gone_during_handshake(perimd_factory, certs):
    p = perimd_factory(**tls_params(certs))
    with Client(p.port) as c:
        assert c.cmd("EHLO x")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        c.send(b"\x16\x03\x01\x00")  # half a record header, then EOF
    p.wait_log(r"TLS handshake failed .*reason=io \(connection closed during handshake\)")


def test_session_resumption(perimd_factory, certs, tmp_path):
    p = perimd_factory(io_threads=1, **tls_params(certs))
    sess = str(tmp_path / "sess.pem")
    base = ["openssl", "s_client", "-starttls", "smtp", "-connect", "127.0.0.1:%d" % p.port]
    out1 = subprocess.run(base + ["-sess_out", sess], input=b"QUIT\r\n", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30).stdout
    assert b"New, TLSv1.2" in out1, out1
    out2 = subprocess.run(base + ["-sess_in", sess], input=b"QUIT\r\n", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=30).stdout
    assert b"Reused, TLSv1.2" in out2, out2


def test_sighup_reloads_certificate_or_keeps_old(perimd_factory, certs, tmp_path):
    crt, key = tmp_path / "s.crt", tmp_path / "s.key"
    crt.write_bytes(open(certs["rsa.crt"], "rb").read())
    key.write_bytes(open(certs["rsa.key"], "rb").read())
    p = perimd_factory(smtpd_tls_cert_file=str(crt), smtpd_tls_key_file=str(key))

    def cipher():
        with Client(p.port) as c:
            c.cmd("EHLO x")
            assert c.cmd("STARTTLS")[0] == 220
            s = go_tls(c)
            assert c.cmd("EHLO x")[0] == 250
            return s.cipher()[0]

    assert "RSA" in cipher()
    crt.write_bytes(open(certs["ec.crt"], "rb").read())
    key.write_bytes(open(certs["ec.key"], "rb").read())
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"TLS certificates and keys reloaded")
    assert "ECDSA" in cipher()
    # A key that does not match: the running certificate stays.
    key.write_bytes(open(certs["rsa.key"], "rb").read())
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"not reloaded, keeping the old ones: .*does not match")
    assert "ECDSA" in cipher()


def test_bad_key_at_start_is_an_error(perimd_factory, certs):
    p = perimd_factory(start=False, smtpd_tls_cert_file=certs["rsa.crt"],
                       smtpd_tls_key_file=certs["ec.key"])
    from harness import PERIMD_BIN
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    assert r.returncode != 0 and b"does not match" in r.stdout, r.stdout


# ---- client side: TLS to the backends ------------------------------------------


def deliver(port, rcpt="u@example.com"):
    return smtp_dialogue(port, ["EHLO client.test", "MAIL FROM:<a@b.test>", "RCPT TO:<%s>" % rcpt,
                                "DATA", "Subject: t\r\n\r\nbody\r\n.", "QUIT"])


@pytest.fixture
def tls_backend_factory():
    made = []

    def make(certfile, keyfile, **kw):
        b = TlsBackend(certfile, keyfile, **kw).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_backend_encrypt(perimd_factory, tls_backend_factory, certs):
    b = tls_backend_factory(certs["rsa.crt"], certs["rsa.key"])
    p = perimd_factory(relay_backends=b.target, relay_tls_security_level="encrypt")
    r = deliver(p.port)
    assert r[5][0] == 250, r
    assert b.wait_messages(1) and b.messages[0]["tls"]
    # After STARTTLS the client said EHLO again (RFC 3207 §4.2).
    verbs = [c.split()[0].upper() for c in b.commands]
    assert verbs[:3] == ["EHLO", "STARTTLS", "EHLO"], b.commands
    p.wait_log(r"backend 127\.0\.0\.1:%d: TLS established: TLSv1\.2" % b.port)


def test_backend_verify(perimd_factory, tls_backend_factory, certs):
    b = tls_backend_factory(certs["backend.crt"], certs["backend.key"])
    p = perimd_factory(relay_backends=b.target, relay_tls_security_level="verify",
                       relay_tls_CAfile=certs["ca.crt"], relay_tls_verify_name="backend.test")
    r = deliver(p.port)
    assert r[5][0] == 250, r
    assert b.wait_messages(1) and b.messages[0]["tls"]


def test_backend_verify_wrong_name_fails_over(perimd_factory, tls_backend_factory, sink, certs):
    b = tls_backend_factory(certs["backend.crt"], certs["backend.key"])
    params = dict(relay_tls_security_level="verify", relay_tls_CAfile=certs["ca.crt"],
                  relay_tls_verify_name="other.test")
    alone = perimd_factory(relay_backends=b.target, **params)
    r = deliver(alone.port)
    assert r[5][0] == 451 and r[5][1].startswith("4.4.1"), r
    assert "certificate name mismatch" in r[5][1], r
    assert not b.messages


def test_backend_verify_failover_to_good_backend(perimd_factory, tls_backend_factory, certs):
    bad = tls_backend_factory(certs["rsa.crt"], certs["rsa.key"])  # not signed by the CA
    good = tls_backend_factory(certs["backend.crt"], certs["backend.key"])
    p = perimd_factory(relay_backends=[bad.target, good.target], relay_tls_security_level="verify",
                       relay_tls_CAfile=certs["ca.crt"], relay_tls_verify_name="backend.test")
    r = deliver(p.port)
    assert r[5][0] == 250, r
    assert good.wait_messages(1) and not bad.messages


def test_backend_encrypt_without_starttls_offered(perimd_factory, sink, tls_backend_factory, certs):
    b = tls_backend_factory(certs["rsa.crt"], certs["rsa.key"], offer_starttls=False,
                            require_tls=False)
    p = perimd_factory(relay_backends=[b.target, "[127.0.0.1]:%d" % sink.port],
                       relay_tls_security_level="encrypt")
    r = deliver(p.port)
    assert r[5][0] == 451, r  # smtp-sink offers no STARTTLS either
    assert "STARTTLS not offered" in r[5][1]
    q = perimd_factory(relay_backends=b.target, relay_tls_security_level="may")
    r = deliver(q.port)
    assert r[5][0] == 250, r
    assert b.wait_messages(1) and not b.messages[0]["tls"]


def test_backend_may_uses_tls_when_offered(perimd_factory, tls_backend_factory, certs):
    b = tls_backend_factory(certs["ec.crt"], certs["ec.key"])
    p = perimd_factory(relay_backends=b.target, io_threads=1)  # default level: may
    for _ in range(2):
        assert deliver(p.port)[5][0] == 250
    assert b.wait_messages(2) and all(m["tls"] for m in b.messages)
    # The second message reused the pooled TLS connection: one handshake.
    assert [c.upper() for c in b.commands].count("STARTTLS") == 1
