"""test_dns.py - the DNS checks against a real DNS server: dnsmasq on a
loopback port, serving test zones (TESTING.md "DNS").

Clients connect from different 127.x addresses (all of 127/8 is local):
  127.0.0.2  PTR good.test, good.test A 127.0.0.2: confirmed (FCrDNS)
  127.0.0.3  PTR liar.test, liar.test A 127.9.9.9: does not confirm
  127.0.0.4  no PTR (NXDOMAIN); listed in bl.test with 127.255.255.254,
             a "query refused" code outside the filter: not listed
  127.0.0.6  listed in bl.test (127.0.0.2)
  127.0.0.5  listed in wl.test and in bl.test: the allow list wins
Backends: relay.test (MX 10 -> 127.0.0.7, MX 20 -> 127.0.0.1), self.test
(no MX, A 127.0.0.1: perimd's own address).
Sender domains: mx.test (MX), a-only.test (A only), nullmx.test (MX 0 "."),
nx.test (NXDOMAIN), slow.test (forwarded to a server that never answers).
dnsmasq's query log shows what reached the server, so the cache and the
coalescing of lookups can be asserted.
"""

import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from harness import PERIMD_BIN, Client, free_port, known_params, stop_proc

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq (dnsmasq-base) missing")


class Dnsmasq:
    """dnsmasq in the foreground on 127.0.0.1:port with the test zones."""

    def __init__(self, tmpdir):
        self.dir = os.fspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.log = os.path.join(self.dir, "dnsmasq.log")
        # A UDP socket nobody reads: questions forwarded there never get
        # an answer (the timeout path).
        self.hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.hole.bind(("127.0.0.1", 0))
        hole_port = self.hole.getsockname()[1]
        args = [
            DNSMASQ, "-k", "--port=%d" % self.port, "--listen-address=127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
            "--pid-file=",
            "--log-queries", "--log-facility=" + self.log, "--cache-size=0",
            "--local=/test/", "--local=/0.0.127.in-addr.arpa/",
            "--host-record=good.test,127.0.0.2",
            "--ptr-record=3.0.0.127.in-addr.arpa,liar.test",
            "--host-record=liar.test,127.9.9.9",
            "--mx-host=mx.test,mail.mx.test,10",
            "--host-record=mail.mx.test,192.0.2.25",
            "--host-record=a-only.test,192.0.2.26",
            "--mx-host=nullmx.test,.,0",
            "--host-record=nullmx.test,192.0.2.27",
            "--address=/6.0.0.127.bl.test/127.0.0.2",
            "--address=/5.0.0.127.bl.test/127.0.0.2",
            "--address=/4.0.0.127.bl.test/127.255.255.254",
            "--address=/5.0.0.127.wl.test/127.0.0.2",
            "--server=/slow.test/127.0.0.1#%d" % hole_port,
            # 127.0.0.8's PTR question goes to the hole too (more specific
            # than the --local zone above).
            "--server=/8.0.0.127.in-addr.arpa/127.0.0.1#%d" % hole_port,
            # Backends by MX: the preferred MX host has nothing listening.
            "--mx-host=relay.test,mx2.relay.test,20",
            "--mx-host=relay.test,mx1.relay.test,10",
            "--host-record=mx1.relay.test,127.0.0.7",
            "--host-record=mx2.relay.test,127.0.0.1",
            "--host-record=self.test,127.0.0.1",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")   # keep the right to write its log
        self.args = args
        self.proc = None

    def start(self):
        self.errf = open(os.path.join(self.dir, "dnsmasq.err"), "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.errf,
                                     stderr=self.errf)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("dnsmasq exited: %s" % open(self.errf.name).read())
            if os.path.exists(self.log) and "started" in open(self.log).read():
                return self
            time.sleep(0.05)
        raise AssertionError("dnsmasq did not start")

    def queries(self, qtype, name):
        """How many times the server was asked (type, name)."""
        text = open(self.log, errors="replace").read()
        return len(re.findall(r"query\[%s\] %s from" % (re.escape(qtype), re.escape(name)), text))

    def stop(self):
        stop_proc(self.proc, 5, 5)
        self.hole.close()
        self.errf.close()


@pytest.fixture
def dnsmasq(tmp_path):
    d = Dnsmasq(tmp_path / "dnsmasq").start()
    yield d
    d.stop()


class ClientFrom(Client):
    """A Client whose connection comes from a chosen 127.x address."""

    def __init__(self, port, source, timeout=10):
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""
        self.eof = False
        self.banner = self.reply()


def roles_built():
    """Role accounts are exempted by the rules step (role_accounts)."""
    return "role_accounts" in known_params()


def dns_perimd(perimd_factory, dnsmasq, **params):
    conf = {
        "dns_servers": "127.0.0.1:%d" % dnsmasq.port,
        "dns_timeout": "500ms",
        "dns_retries": "1",
        "relay_backends": "[127.0.0.1]:9",
    }
    conf.update(params)
    return perimd_factory(**conf)


def rcpt(p, source, sender="a@mx.test", to="user@example.com", helo="client.test"):
    """A dialogue from `source` up to RCPT; the RCPT reply."""
    with ClientFrom(p.port, source) as c:
        assert c.banner[0] == 220
        assert c.cmd("EHLO " + helo)[0] == 250
        assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
        code, text = c.cmd("RCPT TO:<%s>" % to)[:2]
        c.cmd("QUIT")
        return code, text


def test_fcrdns(perimd_factory, dnsmasq):
    p = dns_perimd(perimd_factory, dnsmasq, reject_unknown_client_hostname="yes",
                   reject_unknown_reverse_client_hostname="yes")
    assert rcpt(p, "127.0.0.2")[0] == 250
    code, text = rcpt(p, "127.0.0.3")
    assert code == 550
    assert text.startswith("5.7.25 ") and "cannot find your hostname, [127.0.0.3]" in text
    code, text = rcpt(p, "127.0.0.4")
    assert code == 550
    assert text.startswith("5.7.25 ") and "cannot find your reverse hostname, [127.0.0.4]" in text
    # Role accounts are exempt from the client checks.
    if roles_built():
        assert rcpt(p, "127.0.0.4", to="postmaster@example.com")[0] == 250
    # The second session from 127.0.0.4 was answered from the cache.
    assert dnsmasq.queries("PTR", "4.0.0.127.in-addr.arpa") == 1
    assert dnsmasq.queries("A", "liar.test") == 1
    # Only the reverse check: a PTR that does not confirm is enough.
    q = dns_perimd(perimd_factory, dnsmasq, reject_unknown_reverse_client_hostname="yes")
    assert rcpt(q, "127.0.0.3")[0] == 250
    assert rcpt(q, "127.0.0.4")[0] == 550


def test_sender_domain(perimd_factory, dnsmasq):
    p = dns_perimd(perimd_factory, dnsmasq, reject_unknown_sender_domain="yes")
    assert rcpt(p, "127.0.0.1", sender="a@mx.test")[0] == 250
    assert rcpt(p, "127.0.0.1", sender="a@a-only.test")[0] == 250
    code, text = rcpt(p, "127.0.0.1", sender="a@nullmx.test")
    assert code == 550 and text.startswith("5.7.27 "), text
    code, text = rcpt(p, "127.0.0.1", sender="a@nx.test")
    assert code == 550 and text.startswith("5.1.8 ") and "<a@nx.test>" in text, text
    # The null sender has no domain to check.
    assert rcpt(p, "127.0.0.1", sender="")[0] == 250
    # A second identical lookup comes from the cache: one question each.
    assert rcpt(p, "127.0.0.1", sender="b@mx.test")[0] == 250
    assert rcpt(p, "127.0.0.1", sender="b@nx.test")[0] == 550
    assert dnsmasq.queries("MX", "mx.test") == 1
    assert dnsmasq.queries("MX", "nx.test") == 1
    # MX, then A for a domain with only an address.
    assert dnsmasq.queries("A", "a-only.test") == 1
    # Role accounts are exempt.
    if roles_built():
        assert rcpt(p, "127.0.0.1", sender="a@nx.test", to="postmaster@example.com")[0] == 250


def test_sender_domain_timeout(perimd_factory, dnsmasq):
    p = dns_perimd(perimd_factory, dnsmasq, reject_unknown_sender_domain="yes")
    t0 = time.time()
    code, text = rcpt(p, "127.0.0.1", sender="a@slow.test")
    assert code == 450 and text.startswith("4.1.8 "), text
    # dns_timeout x (dns_retries + 1) = 1 s, give or take.
    assert 0.8 < time.time() - t0 < 5
    # A session that waits on a lookup does not hold up another one.
    with Client(p.port) as slow:
        assert slow.cmd("EHLO x.test")[0] == 250
        assert slow.cmd("MAIL FROM:<b@slow.test>")[0] == 250
        slow.send(b"RCPT TO:<user@example.com>\r\n")
        t1 = time.time()
        assert rcpt(p, "127.0.0.1", sender="a@mx.test")[0] == 250
        assert time.time() - t1 < 0.8
        assert slow.reply()[0] == 450
    # A client that leaves mid-lookup: the lookup is cancelled cleanly
    # (the sanitizers at stop() would report a use after free or a leak).
    with Client(p.port) as gone:
        gone.cmd("EHLO x.test")
        gone.cmd("MAIL FROM:<c@slow.test>")
        gone.send(b"RCPT TO:<user@example.com>\r\n")
    time.sleep(1.3)
    assert rcpt(p, "127.0.0.1", sender="a@mx.test")[0] == 250
    assert p.proc.poll() is None


def test_dnsbl(perimd_factory, dnsmasq):
    p = dns_perimd(perimd_factory, dnsmasq, dnsbl_sites="bl.test=127.0.0.[2..11]*2, other.test",
                   dnsbl_threshold="2", dnswl_sites="wl.test")
    code, text = rcpt(p, "127.0.0.6")
    assert code == 550
    assert text == "5.7.1 Service unavailable; client [127.0.0.6] blocked using bl.test", text
    # 127.255.255.254 is outside the filter: not listed.
    assert rcpt(p, "127.0.0.4")[0] == 250
    # On the allow list: neither DNSBL nor (where built) greylisting.
    assert rcpt(p, "127.0.0.5")[0] == 250
    # Not listed anywhere.
    assert rcpt(p, "127.0.0.1")[0] == 250
    # Role accounts are exempt.
    if roles_built():
        assert rcpt(p, "127.0.0.6", to="postmaster@example.com")[0] == 250
    # Second session from 127.0.0.6: cached.
    assert rcpt(p, "127.0.0.6")[0] == 550
    assert dnsmasq.queries("A", "6.0.0.127.bl.test") == 1
    # Weights: one list of weight 1 is below a threshold of 2.
    q = dns_perimd(perimd_factory, dnsmasq, dnsbl_sites="bl.test", dnsbl_threshold="2")
    assert rcpt(q, "127.0.0.6")[0] == 250


def test_dns_metrics(perimd_factory, dnsmasq):
    p = dns_perimd(perimd_factory, dnsmasq, reject_unknown_sender_domain="yes")
    for _ in range(3):
        assert rcpt(p, "127.0.0.1", sender="a@mx.test")[0] == 250
    import urllib.request
    body = urllib.request.urlopen("http://%s/metrics" % p.params["stats_listen"], timeout=5).read().decode()
    hits = int(re.search(r'perimd_dns_cache_total\{result="hit"\} (\d+)', body).group(1))
    queries = int(re.search(r"perimd_dns_queries_total (\d+)", body).group(1))
    assert hits >= 2
    assert queries == 1


def test_bad_dns_settings(perimd_factory, tmp_path):
    p = perimd_factory(start=False, dnsbl_sites="bl.test=127.0.0", dns_servers="127.0.0.1:5353")
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    assert r.returncode != 0
    assert b"dnsbl_sites" in r.stdout


def send_message(port, rcpt_to="user@example.com"):
    """A whole transaction; the reply to the final dot."""
    with Client(port) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<%s>" % rcpt_to)[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: mx\r\n\r\nrouted by MX\r\n.\r\n")
        r = c.reply(timeout=30)
        c.cmd("QUIT")
        return r


def test_backend_by_mx(perimd_factory, dnsmasq, sink):
    # MX 10 (127.0.0.7) refuses the connection; MX 20 (127.0.0.1) is the sink.
    p = dns_perimd(perimd_factory, dnsmasq, relay_backends="relay.test:%d" % sink.port,
                   relay_reply_show_backend="yes")
    r = send_message(p.port)
    assert r[0] == 250, r
    assert sink.wait_count(1)
    assert "127.0.0.1:%d" % sink.port in r[1]
    log = p.log_text()
    assert log.index("127.0.0.7:%d" % sink.port) < log.index("127.0.0.1:%d" % sink.port), log
    assert send_message(p.port)[0] == 250
    assert sink.wait_count(2)
    assert dnsmasq.queries("MX", "relay.test") == 1   # the second one was cached


def test_backend_by_mx_loop(perimd_factory, dnsmasq):
    # self.test's address is perimd's own listener: refused, never relayed.
    port = free_port()
    p = dns_perimd(perimd_factory, dnsmasq, smtpd_listen="127.0.0.1:%d" % port,
                   relay_backends="self.test:%d" % port)
    r = send_message(p.port)
    assert r[0] == 451 and r[1].startswith("4.4.1 "), r
    assert "mail loop" in r[1], r
    assert "perimd itself" in p.log_text()
    # A host that does not exist.
    q = dns_perimd(perimd_factory, dnsmasq, relay_backends="nx.test:25")
    r = send_message(q.port)
    assert r[0] == 451 and "backend host: host not found" in r[1], r
    assert "nx.test" not in r[1], r   # the backend's name stays in the log
    assert "nx.test: host not found" in q.log_text()


def test_client_access_by_host_name(tmp_path, perimd_factory, dnsmasq):
    """client_access_maps keys may be host names (and parent domains): they
    match the client's confirmed (FCrDNS) name, never an unconfirmed PTR."""
    m = tmp_path / "client_access"
    m.write_text("good.test REJECT listed by host name\nliar.test REJECT never used\n"
                 "127.0.0.6 REJECT listed by address\n")
    p = dns_perimd(perimd_factory, dnsmasq, client_access_maps="file:%s" % m)
    code, text = rcpt(p, "127.0.0.2")
    assert code == 550 and "listed by host name" in text, (code, text)
    # 127.0.0.3's PTR says liar.test, which does not resolve back to it.
    assert rcpt(p, "127.0.0.3")[0] == 250
    code, text = rcpt(p, "127.0.0.6")
    assert code == 550 and "listed by address" in text, (code, text)
    # A parent-domain key.
    m.write_text(".test REJECT whole domain\n")
    q = dns_perimd(perimd_factory, dnsmasq, client_access_maps="file:%s" % m)
    assert rcpt(q, "127.0.0.2")[0] == 550
    if roles_built():
        assert rcpt(q, "127.0.0.2", to="postmaster@example.com")[0] == 250


def test_client_ptr_timeout_is_temporary(perimd_factory, dnsmasq):
    """A PTR lookup that times out is a temporary failure: 450 4.7.25."""
    p = dns_perimd(perimd_factory, dnsmasq, reject_unknown_reverse_client_hostname="yes")
    code, text = rcpt(p, "127.0.0.8")
    assert code == 450, (code, text)
    assert text.startswith("4.7.25 ") and "[127.0.0.8]" in text, text
    # A client beside it is not held up by the lookup that hangs.
    assert rcpt(p, "127.0.0.2")[0] == 250
