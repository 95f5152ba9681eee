"""test_tls_close.py - a TLS client whose last commands arrive together
with its close_notify and FIN (what `openssl s_client` does when a line
of its input starts with Q): perimd runs them, cannot send their replies
any more (the peer closed TLS), and must end the session at once; the
replies were kept queued and held the session for 10 s (QUIT) or until
the idle timeout."""

import socket
import ssl
import subprocess
import time

import pytest

from harness import Client


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
                    "-days", "2", "-subj", "/CN=perimd.test"], cwd=d, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return str(d / "c.pem"), str(d / "k.pem")


def tls_then_close(port, lines):
    """STARTTLS, the handshake, then lines + close_notify + FIN in one
    write; seconds until perimd closes (None: not within 6 s)."""
    c = Client(port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("STARTTLS")[0] == 220
    s = c.sock
    s.settimeout(6)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="perimd.test")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            s.sendall(out.read())
            inc.write(s.recv(65536))
    s.sendall(out.read())
    tls.write(lines)
    try:
        tls.unwrap()   # our close_notify; perimd's is not awaited
    except ssl.SSLWantReadError:
        pass
    s.sendall(out.read())
    s.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    try:
        while s.recv(65536):
            pass
        return time.monotonic() - t0
    except socket.timeout:
        return None
    finally:
        s.close()


@pytest.mark.parametrize("lines", [b"EHLO y\r\nQUIT\r\n", b"NOOP\r\nMAIL FROM:<a@b.test>\r\n"])
def test_commands_with_close_notify_end_the_session(perimd_factory, cert, lines):
    p = perimd_factory(smtpd_tls_cert_file=cert[0], smtpd_tls_key_file=cert[1],
                       relay_backends="[127.0.0.1]:9")
    took = tls_then_close(p.port, lines)
    assert took is not None and took < 3, took
    p.wait_log(r"disconnect from \[127\.0\.0\.1\] commands=[45] ", timeout=3)
    # The next client is served as ever.
    with Client(p.port) as c:
        assert c.cmd("EHLO again.test")[0] == 250
    assert p.sanitizer_report() is None
