"""PROXY protocol from a real load balancer: Debian's HAProxy in front of
perimd, sending v1 (send-proxy) and v2 (send-proxy-v2), with PROXY v2 LOCAL
health checks (check-send-proxy). Clients connect from 127.0.0.5/127.0.0.6
so the address perimd logs and greylists differs from HAProxy's own
(127.0.0.2, its `source`; the harness probes perimd from 127.0.0.1, which
must not be a PROXY client). Then what perimd refuses: a header from an address not in
smtpd_upstream_proxy_clients, a malformed header, no header in time.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from harness import Client, free_port

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")

needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (build.sh DEPS)")


class HAProxy:
    """haproxy in the foreground (-db) with its own config: a v1 and a v2
    frontend on free loopback ports, both to perimd on `target`; stopped by
    PID."""

    def __init__(self, tmpdir, target):
        self.dir = os.fspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        self.v1 = free_port()
        self.v2 = free_port()
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write("""global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe_v1
    bind 127.0.0.1:%(v1)d
    default_backend be_v1
backend be_v1
    server perimd %(t)s send-proxy source 127.0.0.2
frontend fe_v2
    bind 127.0.0.1:%(v2)d
    default_backend be_v2
backend be_v2
    option smtpchk HELO lb.test
    server perimd %(t)s send-proxy-v2 check check-send-proxy inter 500ms source 127.0.0.2
""" % {"v1": self.v1, "v2": self.v2, "t": target})
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.proc = None

    def start(self, timeout=10):
        check = subprocess.run([HAPROXY, "-c", "-f", self.cfg], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=30)
        assert check.returncode == 0, check.stdout.decode()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "haproxy exited: " + open(self.log_path).read()
            try:
                socket.create_connection(("127.0.0.1", self.v2), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not listen"
                time.sleep(0.05)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc:
            self._log.close()
        self.proc = None


@pytest.fixture
def haproxy_factory(tmp_path):
    made = []

    def make(target):
        h = HAProxy(tmp_path / ("haproxy%d" % len(made)), target)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        h.stop()


def send_mail(port, source, marker, rcpt="rcpt@example.com"):
    """One transaction from `source` through port; the replies by stage."""
    out = {}
    with Client(port, source=source) as c:
        out["banner"] = c.banner
        out["ehlo"] = c.cmd("EHLO client.test")
        out["mail"] = c.cmd("MAIL FROM:<sender@client.test>")
        out["rcpt"] = c.cmd("RCPT TO:<%s>" % rcpt)
        if out["rcpt"] and out["rcpt"][0] == 250:
            out["data"] = c.cmd("DATA")
            c.send(("Subject: %s\r\n\r\nbody %s\r\n.\r\n" % (marker, marker)).encode())
            out["dot"] = c.reply(30)
        c.cmd("QUIT")
    return out


@needs_haproxy
def test_haproxy_v1_v2_client_address(perimd_factory, sink, haproxy_factory, tmp_path):
    wl = tmp_path / "greylist_whitelist_clients"
    wl.write_text("127.0.0.5\n")
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port,
                       smtpd_upstream_proxy_protocol="haproxy",
                       smtpd_upstream_proxy_clients="127.0.0.2",
                       greylist="yes", greylist_ipv4_netmask="32",
                       greylist_whitelist_clients=str(wl))
    h = haproxy_factory("127.0.0.1:%d" % p.port)

    # v1 and v2: the whitelisted original client passes greylisting, and
    # the message carries its address, not HAProxy's.
    for ver, port in (("1", h.v1), ("2", h.v2)):
        marker = "via-proxy-v%s-%d" % (ver, os.getpid())
        r = send_mail(port, "127.0.0.5", marker)
        assert r["banner"][0] == 220, r
        assert r["rcpt"][0] == 250, r
        assert r["dot"][0] == 250, r
        p.wait_log(r"PROXY v%s from \[127\.0\.0\.2\]: client \[127\.0\.0\.5\]" % ver)
        assert sink.wait_count(1 if ver == "1" else 2, 15)
        msg = [m for m in sink.messages() if marker.encode() in m]
        assert len(msg) == 1
        # perimd's Received: line names the original client.
        assert b"127.0.0.5" in msg[0], msg[0][:600]

    # A client that is not whitelisted is greylisted under its own address.
    r = send_mail(h.v2, "127.0.0.6", "grey")
    assert r["rcpt"][0] == 451 and "greylisted" in r["rcpt"][1], r
    p.wait_log(r"reject: RCPT from \[127\.0\.0\.6\].*greylisted")
    assert "RCPT from [127.0.0.2]" not in p.log_text()

    # HAProxy's health checks (check-send-proxy with send-proxy-v2) come as
    # PROXY v2 LOCAL: accepted, answered as HAProxy's own session.
    p.wait_log(r"PROXY v2 LOCAL from \[127\.0\.0\.2\]", timeout=15)
    assert "bad PROXY header" not in p.log_text()


@needs_haproxy
def test_haproxy_header_from_unlisted_address(perimd_factory, sink, haproxy_factory):
    # HAProxy connects from 127.0.0.2, which is not allowed to send headers.
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port,
                       smtpd_upstream_proxy_protocol="haproxy",
                       smtpd_upstream_proxy_clients="127.0.0.9")
    h = haproxy_factory("127.0.0.1:%d" % p.port)
    with Client(h.v1, source="127.0.0.5") as c:
        assert c.wait_closed(10), "the connection stayed open"
    p.wait_log(r"PROXY header from \[127\.0\.0\.2\], which is not in smtpd_upstream_proxy_clients")
    assert "client [127.0.0.5]" not in p.log_text()
    assert sink.count() == 0


def test_proxy_malformed_and_slow_header(perimd_factory):
    p = perimd_factory(smtpd_upstream_proxy_protocol="haproxy",
                       smtpd_upstream_proxy_clients="127.0.0.2",
                       smtpd_upstream_proxy_timeout="1s")
    # Malformed: closed, logged, and no greeting was ever sent.
    with Client(p.port, read_banner=False, source="127.0.0.2") as c:
        c.send(b"PROXY TCP4 not-an-address 192.0.2.1 1 25\r\nEHLO x\r\n")
        assert c.wait_closed(10)
        assert b"220" not in c.buf
    p.wait_log(r"bad PROXY header from \[127\.0\.0\.2\]; disconnecting")
    # Slow: half a header, then nothing: closed after the timeout.
    t0 = time.monotonic()
    with Client(p.port, read_banner=False, source="127.0.0.2") as c:
        c.send(b"PROXY TCP4 192.0.2.1")
        assert c.wait_closed(10)
        assert b"220" not in c.buf
    assert time.monotonic() - t0 >= 0.8
    p.wait_log(r"no PROXY header from \[127\.0\.0\.2\] in time; disconnecting")
    # The listener is still fine for a proper header.
    with Client(p.port, read_banner=False, source="127.0.0.2") as c:
        c.send(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 25\r\n")
        r = c.reply(10)
        assert r and r[0] == 220, r
    p.wait_log(r"client \[192\.0\.2\.7\]:40000")
