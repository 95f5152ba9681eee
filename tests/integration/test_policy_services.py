"""test_policy_services.py - perimd as a client of Postfix policy services
(smtpd_policy_services, Postfix's check_policy_service), against real
services started by the test:

- a policy server written here in Python that records every request and
  the connection it came on: the attributes perimd sends, one pooled
  connection for many requests, an answer reused only for the very same
  request in one transaction, each action (PREPEND landing in the
  backend's copy above perimd's Received:, REJECT, DEFER_IF_PERMIT, 4NN/5NN
  with enhanced codes fixed, OK over perimd's own greylisting, WARN and
  unsupported actions logged, invalid ones 451 4.3.5, role accounts never
  refused), a slow service (timeout, tries, default action) and one that
  is not there (default action);
- postgrey (--inet, its own dbdir, --delay=2): a new triplet gets
  postgrey's 450, the retry after the delay passes and reaches the backend
  with postgrey's X-Greylist header; postgrey stopped, the default action;
- policyd-spf (postfix-policyd-spf-python) served on TCP through socat,
  each connection a policyd-spf process reading many requests, resolving
  through a dnsmasq the test starts: an SPF fail gets its 550 5.7.23, a
  pass its Received-SPF header.

dnsmasq also answers perimd's own lookups (dns_servers), so no question
leaves the machine."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

from harness import Client, free_port, stop_proc, wait_for
from listener import Listener

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
POSTGREY = shutil.which("postgrey") or "/usr/sbin/postgrey"
SOCAT = shutil.which("socat") or "/usr/bin/socat"
PYTHON = "/usr/bin/python3"
BODY = "Subject: psvc\r\n\r\nhello\r\n"

pytestmark = pytest.mark.skipif(not os.path.exists(DNSMASQ), reason="dnsmasq (dnsmasq-base) missing")


# ---------------------------------------------------------------------------
# the peers


class Dnsmasq:
    """dnsmasq on a loopback port: example.test's SPF record; every other
    name answered locally (NXDOMAIN), never forwarded."""

    def __init__(self, tmpdir):
        self.dir = os.fspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.log = os.path.join(self.dir, "dnsmasq.log")
        self.args = [DNSMASQ, "-k", "--port=%d" % self.port, "--listen-address=127.0.0.1",
                     "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                     "--pid-file=", "--log-queries", "--log-facility=" + self.log,
                     "--txt-record=example.test,v=spf1 ip4:127.0.0.2 -all", "--local=/#/"]
        if os.geteuid() == 0:
            self.args.append("--user=root")
        self.proc = None

    def start(self):
        self.errf = open(os.path.join(self.dir, "dnsmasq.err"), "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.errf,
                                     stderr=self.errf)
        ok = wait_for(lambda: self.proc.poll() is not None or
                      (os.path.exists(self.log) and "started" in open(self.log).read()), 10)
        assert ok and self.proc.poll() is None, "dnsmasq did not start"
        return self

    def stop(self):
        stop_proc(self.proc)
        self.errf.close()


class PolicyServer(Listener):
    """A policy server: every request (a dict, with '_conn' the number of
    the connection it came on) is recorded; decide(req) gives the action,
    after `delay` seconds. Runs in threads of the test process."""

    def __init__(self, decide, delay=0.0, close_after=False):
        self.decide = decide
        self.delay = delay
        # close_after: a connection answers one request; the next one sent
        # on it finds it closed (as a service that dropped an idle client)
        self.close_after = close_after
        self.requests = []
        self.open_now = self.max_open = 0
        Listener.__init__(self, port=free_port())
        self.start()

    def accepted(self, no):
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)

    def serve(self, c, no):
        try:
            self._serve(c, no)
        finally:
            with self.lock:
                self.open_now -= 1
            c.close()

    def _serve(self, c, no):
        buf = b""
        answered = 0
        c.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n\n" in buf:
                raw, buf = buf.split(b"\n\n", 1)
                if self.close_after and answered:
                    return
                answered += 1
                req = dict(line.split("=", 1) for line in raw.decode().split("\n"))
                req["_conn"] = no
                with self.lock:
                    self.requests.append(req)
                if self.stopping.wait(self.delay):
                    return
                try:
                    c.sendall(("action=%s\n\n" % self.decide(req)).encode())
                except OSError:
                    return

    def asked(self, rcpt):
        with self.lock:
            return [r for r in self.requests if r.get("recipient") == rcpt]


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory):
    d = Dnsmasq(tmp_path_factory.mktemp("dns")).start()
    yield d
    d.stop()


@pytest.fixture
def servers():
    made = []

    def make(decide, delay=0.0, close_after=False):
        s = PolicyServer(decide, delay, close_after)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def start(perimd_factory, sink, dnsmasq, services, **params):
    """perimd relaying to sink, asking `services`; one io thread, so that
    one pooled connection per service serves every session."""
    base = {"relay_backends": "[127.0.0.1]:%d" % sink.port, "io_threads": "1",
            "relay_domains": "example.com", "dns_servers": "127.0.0.1:%d" % dnsmasq.port,
            "smtpd_policy_services": services}
    base.update(params)
    return perimd_factory(**base)


def session(p, rcpts, sender="alice@sender.example", data=False, source=None, mail_extra=""):
    """One session, one transaction: the RCPT replies; with data=True and a
    recipient accepted, the message is sent and (replies, data reply)."""
    with Client(p.port, source=source) as c:
        assert c.banner and c.banner[0] == 220, c.banner
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<%s>%s" % (sender, mail_extra))[0] == 250
        replies = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
        if not data:
            c.cmd("QUIT")
            return replies
        assert any(r[0] == 250 for r in replies), replies
        assert c.cmd("DATA")[0] == 354
        d = c.cmd(BODY + ".")
        c.cmd("QUIT")
        return replies, d


def listening(port):
    """Something accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def metrics(p):
    url = "http://%s/metrics" % p.params["stats_listen"]
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


# ---------------------------------------------------------------------------
# a policy server of the test's own


def test_attributes_pooling_cache_prepend(perimd_factory, sink, dnsmasq, servers):
    """The attributes are Postfix's, one connection serves every request,
    the very same request in one transaction is asked once, and PREPEND
    lands in the backend's copy above perimd's Received:."""
    srv = servers(lambda r: "PREPEND X-Policy-Test: seen %s" % r["recipient"]
                  if r["recipient"].startswith("pre") else "DUNNO")
    p = start(perimd_factory, sink, dnsmasq,
              "{ inet:127.0.0.1:%d, policy_context = perimeter mx }" % srv.port)
    with Client(p.port) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<alice@sender.example> SIZE=1234")[0] == 250
        assert c.cmd("RCPT TO:<pre@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<pre@example.com>")[0] == 250      # same request: cached
        assert c.cmd("RCPT TO:<other@example.com>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        d = c.cmd(BODY + ".")
        assert d[0] == 250, d
        client_port = c.sock.getsockname()[1]
        assert c.cmd("MAIL FROM:<alice@sender.example>")[0] == 250
        assert c.cmd("RCPT TO:<pre@example.com>")[0] == 250      # new transaction: asked
        c.cmd("QUIT")
    for _ in range(3):
        assert session(p, ["other@example.com"])[0][0] == 250
    assert len(srv.asked("pre@example.com")) == 2, srv.requests
    r = srv.asked("pre@example.com")[0]
    expect = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
              "helo_name": "client.test", "sender": "alice@sender.example",
              "recipient": "pre@example.com", "client_address": "127.0.0.1",
              "client_port": str(client_port), "client_name": "unknown",
              "reverse_client_name": "unknown", "server_address": "127.0.0.1",
              "server_port": str(p.port), "size": "1234", "recipient_count": "0",
              "encryption_protocol": "", "stress": "", "policy_context": "perimeter mx"}
    for k, v in expect.items():
        assert r.get(k) == v, (k, r)
    for k in ("instance", "queue_id", "sasl_username", "ccert_subject", "encryption_cipher"):
        assert k in r, (k, r)
    assert re.fullmatch(r"[0-9A-Z]{12}\.\d{4}", r["queue_id"]), r  # the transaction id
    # instance: one per transaction
    first = [q for q in srv.requests if q["sender"] and q.get("size") == "1234"]
    assert len({q["instance"] for q in first}) == 1, first
    assert srv.asked("pre@example.com")[1]["instance"] != r["instance"]
    assert len({q["instance"] for q in srv.requests}) == 5, srv.requests
    # pooling: 6 requests (the repeated one not asked), one connection
    assert len(srv.requests) == 6, srv.requests
    assert srv.connections == 1, srv.connections
    # PREPEND: in the relayed copy, once, above perimd's Received:
    assert sink.wait_count(1)
    msg = sink.messages()[0].decode()
    assert msg.count("X-Policy-Test: seen pre@example.com") == 1, msg
    assert msg.index("X-Policy-Test:") < msg.index("by perimd.test (perimd)"), msg
    # the queue id the service was told is the message's id in the log
    p.wait_log(r"%s: to=<pre@example.com>" % r["queue_id"])
    m = metrics(p)
    key = 'perimd_policy_service_requests_total{service="inet:127.0.0.1:%d",result="prepend"}' % srv.port
    assert m.get(key) == 2, {k: v for k, v in m.items() if "policy_service" in k}
    assert m.get("perimd_policy_service_cached_total") == 1


ACTIONS = {
    "reject": "REJECT go away",
    "rejectcode": "REJECT 5.7.26 spoofed",
    "deferif": "DEFER_IF_PERMIT 4.2.0 try later",
    "defer": "defer",
    "nnn": "550 5.1.1 no such user here",
    "mismatch": "451 5.7.1 class fixed",
    "warn": "WARN suspicious",
    "hold": "HOLD",
    "bogus": "FROBNICATE",
    "ok": "OK",
    "postmaster": "REJECT not even postmaster",
}


def test_actions(perimd_factory, sink, dnsmasq, servers):
    """Each action as Postfix's smtpd gives it; the second service is asked
    only when the first said DUNNO (or a non-deciding action)."""
    actions = dict(ACTIONS)
    first = servers(lambda r: actions.get(r["recipient"].split("@")[0], "DUNNO"))
    second = servers(lambda r: "REJECT second says no" if r["recipient"].startswith("second") else
                     "DUNNO")
    p = start(perimd_factory, sink, dnsmasq,
              "check_policy_service inet:127.0.0.1:%d, check_policy_service 127.0.0.1:%d"
              % (first.port, second.port), greylist="yes", greylist_delay="1h")
    got = dict(zip(actions, session(p, ["%s@example.com" % k for k in actions])))
    assert got["reject"] == (554, "5.7.1 <reject@example.com>: Recipient address rejected: go away")
    assert got["rejectcode"] == (554, "5.7.26 <rejectcode@example.com>: Recipient address rejected: spoofed")
    assert got["deferif"] == (450, "4.2.0 <deferif@example.com>: Recipient address rejected: try later")
    assert got["defer"] == (450, "4.7.1 <defer@example.com>: Recipient address rejected: Access denied")
    assert got["nnn"] == (550, "5.1.1 <nnn@example.com>: Recipient address rejected: no such user here")
    assert got["mismatch"] == (451, "4.7.1 <mismatch@example.com>: Recipient address rejected: class fixed")
    assert got["bogus"] == (451, "4.3.5 Server configuration error")
    assert got["ok"][0] == 250, got["ok"]  # OK: perimd's own greylisting skipped
    assert got["postmaster"][0] == 250, got["postmaster"]  # role account
    # WARN and HOLD go on to perimd's greylisting (delay 1h): deferred there
    assert got["warn"][0] // 100 == 4 and "greylisted" in got["warn"][1], got["warn"]
    assert got["hold"][0] // 100 == 4 and "greylisted" in got["hold"][1], got["hold"]
    p.wait_log(r"warn: RCPT from policy service inet:127.0.0.1:%d: suspicious" % first.port)
    p.wait_log(r'answered "HOLD", which perimd does not support: treated as DUNNO')
    p.wait_log(r'invalid action "FROBNICATE"')
    p.wait_log(r"would refuse: 554 5\.7\.1 <postmaster@example.com>.*role account, accepted")
    # deciding answers stop the list: the second service heard only the others
    asked2 = {r["recipient"].split("@")[0] for r in second.requests}
    assert asked2 == {"warn", "hold", "postmaster", "deferif"}, asked2
    # DEFER_IF_REJECT then a 5xx from the next service: 450; DEFER_IF_PERMIT then OK: 450
    actions["second"] = "DEFER_IF_REJECT 4.7.9 maybe"
    r = session(p, ["second@example.com"])[0]
    assert r == (450, "4.7.9 <second@example.com>: Recipient address rejected: maybe"), r


def test_service_down_default_action(perimd_factory, sink, dnsmasq):
    """Nothing listens: after the tries, smtpd_policy_service_default_action."""
    dead = free_port()
    p = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % dead,
              smtpd_policy_service_retry_delay="100ms")
    t = time.monotonic()
    r = session(p, ["bob@example.com"])[0]
    assert r == (451, "4.3.5 <bob@example.com>: Recipient address rejected: Server configuration problem"), r
    assert time.monotonic() - t < 5
    p.wait_log(r"policy service inet:127.0.0.1:%d: .*\(try 2 of 2\); default action" % dead)
    m = metrics(p)
    assert m.get('perimd_policy_service_errors_total{reason="connect"}') == 2, m
    assert m.get('perimd_policy_service_failed_tries_total{service="inet:127.0.0.1:%d",reason="connect"}'
                 % dead) == 2, m
    assert m.get("perimd_policy_service_default_actions_total") == 1
    p.stop()
    # Postfix 3.0's per-service settings: this one passes mail when down,
    # the second keeps the global default, with a text of its own
    dead2 = free_port()
    p2 = start(perimd_factory, sink, dnsmasq,
               "check_policy_service { inet:127.0.0.1:%d, default_action = DUNNO, try_limit=1 }, "
               "check_policy_service { inet:127.0.0.1:%d, try_limit = 1, "
               "default_action = 450 4.7.0 Try again later }" % (dead, dead2))
    r = session(p2, ["bob@example.com"])[0]
    assert r == (450, "4.7.0 <bob@example.com>: Recipient address rejected: Try again later"), r
    p2.wait_log(r"policy service inet:127.0.0.1:%d: .*\(try 1 of 1\); default action" % dead)
    p2.stop()
    p3 = start(perimd_factory, sink, dnsmasq, "{ inet:127.0.0.1:%d, default_action=DUNNO }" % dead)
    replies, d = session(p3, ["bob@example.com"], data=True)
    assert replies[0][0] == 250 and d[0] == 250, (replies, d)


def test_slow_service_timeout(perimd_factory, sink, dnsmasq, servers):
    """A service slower than smtpd_policy_service_timeout: each try times
    out, then the default action; its late answer is never taken for
    another request, and the loop serves other sessions meanwhile."""
    slow = servers(lambda r: "REJECT too late", delay=3.0)
    p = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % slow.port,
              smtpd_policy_service_timeout="1s", smtpd_policy_service_retry_delay="0s",
              smtpd_policy_service_default_action="450 4.3.2 policy service unavailable")
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("r", session(p, ["bob@example.com"])))
    t = time.monotonic()
    th.start()
    # the loop is not blocked: another session gets its banner and EHLO at once
    with Client(p.port) as c:
        assert c.cmd("EHLO other.test")[0] == 250
    th.join(15)
    took = time.monotonic() - t
    r = box["r"][0]
    assert r == (450, "4.3.2 <bob@example.com>: Recipient address rejected: policy service unavailable"), r
    assert 1.8 < took < 6, took
    p.wait_log(r"policy service inet:127.0.0.1:%d: timeout \(try 2 of 2\); default action" % slow.port)
    assert metrics(p).get('perimd_policy_service_errors_total{reason="timeout"}') == 2


def test_tls_and_proxy_attributes(perimd_factory, sink, dnsmasq, servers, tmp_path):
    """After STARTTLS the requests carry the protocol and cipher; behind a
    PROXY header, the client's and the server's addresses and ports the
    header names."""
    import ssl
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", "k.pem", "-out", "c.pem", "-days", "2", "-subj",
                    "/CN=perimd.test"], cwd=tmp_path, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    srv = servers(lambda r: "DUNNO")
    p = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % srv.port,
              smtpd_tls_cert_file=tmp_path / "c.pem", smtpd_tls_key_file=tmp_path / "k.pem",
              smtpd_upstream_proxy_protocol="haproxy", smtpd_upstream_proxy_clients="127.0.0.2",
              smtpd_policy_service_policy_context="edge")
    with Client(p.port) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname="perimd.test")
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<alice@sender.example>")[0] == 250
        assert c.cmd("RCPT TO:<tls@example.com>")[0] == 250
        c.cmd("QUIT")
    r = srv.asked("tls@example.com")[0]
    assert r["encryption_protocol"] == "TLSv1.2" and r["policy_context"] == "edge", r
    assert "ECDHE-ECDSA" in r["encryption_cipher"] and r["encryption_keysize"] in ("128", "256"), r
    with Client(p.port, source="127.0.0.2", read_banner=False) as c:
        c.send(b"PROXY TCP4 192.0.2.7 192.0.2.25 4567 2525\r\n")
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<alice@sender.example>")[0] == 250
        assert c.cmd("RCPT TO:<proxied@example.com>")[0] == 250
        c.cmd("QUIT")
    r = srv.asked("proxied@example.com")[0]
    assert (r["client_address"], r["client_port"], r["server_address"], r["server_port"]) == \
        ("192.0.2.7", "4567", "192.0.2.25", "2525"), r
    assert r["encryption_protocol"] == "" and r["encryption_keysize"] == "0", r


def test_cancelled_request_pool_limits(perimd_factory, sink, dnsmasq, servers):
    """A client that leaves while its request is out: the answer still
    comes, is dropped, and the connection serves the next request (one
    connection allowed); concurrent sessions wait their turn for the
    bounded connections."""
    srv = servers(lambda r: "DUNNO", delay=0.8)
    p = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % srv.port,
              smtpd_policy_service_connection_limit=2)
    c = Client(p.port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<alice@sender.example>")[0] == 250
    c.line("RCPT TO:<gone@example.com>")
    assert wait_for(lambda: srv.asked("gone@example.com"), 5)
    c.close()
    p.wait_log(r"disconnect from \[127\.0\.0\.1\]")
    box = []
    ths = [threading.Thread(target=lambda i=i: box.append(session(p, ["u%d@example.com" % i])[0]))
           for i in range(6)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(20)
    assert box == [(250, "2.1.5 Ok")] * 6, box
    assert srv.max_open <= 2 and srv.connections == 2, (srv.max_open, srv.connections)
    assert len(srv.requests) == 7


def test_connection_lifetime(perimd_factory, sink, dnsmasq, servers):
    """smtpd_policy_service_request_limit and _max_idle close connections;
    a pooled connection the service closed is replaced at once without
    using up a try."""
    srv = servers(lambda r: "DUNNO")
    p = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % srv.port,
              smtpd_policy_service_request_limit=2, smtpd_policy_service_max_idle="1s")
    for i in range(4):
        assert session(p, ["a%d@example.com" % i])[0][0] == 250
    assert srv.connections == 2, srv.connections
    assert wait_for(lambda: srv.open_now == 0, 5)      # closed after 2 requests
    assert session(p, ["b@example.com"])[0][0] == 250
    assert srv.connections == 3
    assert wait_for(lambda: srv.open_now == 0, 5)      # closed after max_idle
    p.stop()
    closer = servers(lambda r: "REJECT closer", close_after=True)
    p2 = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % closer.port,
               smtpd_policy_service_try_limit=1)
    for i in range(3):
        r = session(p2, ["c%d@example.com" % i])[0]
        assert r[0] == 554, r
    assert closer.connections == 3 and len(closer.requests) == 3
    m = metrics(p2)
    assert m.get("perimd_policy_service_default_actions_total", 0) == 0
    assert m.get('perimd_policy_service_errors_total{reason="closed"}', 0) == 0, m


def test_shutdown_with_request_out(perimd_factory, sink, dnsmasq, servers):
    """SIGTERM while a request waits on a slow service: perimd drains
    (shutdown_timeout), exits cleanly and leaks nothing (ASan)."""
    slow = servers(lambda r: "DUNNO", delay=30.0)
    p = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % slow.port, shutdown_timeout="1s")
    c = Client(p.port)
    assert c.cmd("EHLO client.test")[0] == 250
    assert c.cmd("MAIL FROM:<alice@sender.example>")[0] == 250
    c.line("RCPT TO:<bob@example.com>")
    assert wait_for(lambda: slow.asked("bob@example.com"), 5)
    t = time.monotonic()
    p.stop()   # fails on a sanitizer report or an unclean exit
    assert time.monotonic() - t < 8
    c.close()


def test_unix_socket_and_bad_config(perimd_factory, sink, dnsmasq, tmp_path):
    """unix:/path services; a bad service or default action stops perimd -t."""
    path = str(tmp_path / "policy.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(5)
    seen = []

    def serve():
        c, _ = srv.accept()
        with c:
            buf = b""
            while b"\n\n" not in buf:
                buf += c.recv(4096)
            seen.append(buf.decode())
            c.sendall(b"action=REJECT over unix\n\n")
    th = threading.Thread(target=serve, daemon=True)
    th.start()
    p = start(perimd_factory, sink, dnsmasq, "unix:" + path)
    r = session(p, ["bob@example.com"])[0]
    assert r == (554, "5.7.1 <bob@example.com>: Recipient address rejected: over unix"), r
    th.join(5)
    srv.close()
    assert "recipient=bob@example.com" in seen[0]
    from harness import PERIMD_BIN
    for bad in ("smtpd_policy_services = inet:127.0.0.1", "smtpd_policy_services = private/policy",
                "smtpd_policy_service_default_action = FROB",
                "smtpd_policy_services = { inet:127.0.0.1:9, frob = 1 }",
                "smtpd_policy_services = { inet:127.0.0.1:9, timeout = 10x }",
                "smtpd_policy_services = { inet:127.0.0.1:9, default_action = HOLD }",
                "smtpd_policy_services = { inet:127.0.0.1:9, try_limit = 0 }",
                "smtpd_policy_services = { inet:127.0.0.1:9"):
        conf = tmp_path / "bad.conf"
        conf.write_text("relay_domains = example.com\nrelay_backends = [127.0.0.1]:25\n%s\n" % bad)
        r = subprocess.run([PERIMD_BIN, "-t", "-c", str(conf)], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode != 0, (bad, r.stdout, r.stderr)
        assert "smtpd_policy_service" in r.stdout + r.stderr, (bad, r.stdout, r.stderr)


# ---------------------------------------------------------------------------
# postgrey


@pytest.mark.skipif(not os.path.exists(POSTGREY), reason="postgrey not installed")
def test_postgrey(perimd_factory, sink, dnsmasq, tmp_path):
    """A new triplet gets postgrey's 450; after --delay the retry passes
    and reaches the backend with postgrey's X-Greylist header."""
    import pwd
    import tempfile
    # postgrey runs as its own user: its directory must be reachable,
    # which pytest's private tmp_path is not
    top = tempfile.mkdtemp(prefix="perimd-pg-")
    os.chmod(top, 0o755)
    dbdir = os.path.join(top, "db")
    os.mkdir(dbdir)
    empty = os.path.join(top, "empty")
    open(empty, "w").close()
    pg = pwd.getpwnam("postgrey")
    os.chown(dbdir, pg.pw_uid, pg.pw_gid)
    port = free_port()
    log = open(tmp_path / "postgrey.log", "wb")
    proc = subprocess.Popen([POSTGREY, "--inet=127.0.0.1:%d" % port, "--dbdir=%s" % dbdir, "--delay=2",
                             "--user=postgrey", "--group=postgrey",
                             "--whitelist-clients=%s" % empty, "--whitelist-recipients=%s" % empty,
                             "--auto-whitelist-clients=0"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: listening(port), 20), open(tmp_path / "postgrey.log").read()
        p = start(perimd_factory, sink, dnsmasq, "check_policy_service inet:127.0.0.1:%d" % port,
                  smtpd_policy_service_retry_delay="200ms")
        r = session(p, ["bob@example.com"])[0]
        assert r[0] == 450 and "Greylisted" in r[1], r
        assert r[1].startswith("4."), r
        time.sleep(2.5)  # postgrey's own --delay must pass: nothing to poll
        replies, d = session(p, ["bob@example.com"], data=True)
        assert replies[0][0] == 250 and d[0] == 250, (replies, d)
        assert sink.wait_count(1)
        msg = sink.messages()[0].decode()
        assert re.search(r"(?m)^X-Greylist: delayed \d+ seconds by postgrey", msg), msg
        # postgrey stopped: the default action
        stop_proc(proc)
        r = session(p, ["carol@example.com"])[0]
        assert r == (451, "4.3.5 <carol@example.com>: Recipient address rejected: "
                          "Server configuration problem"), r
    finally:
        stop_proc(proc)
        log.close()
        shutil.rmtree(top, ignore_errors=True)


# ---------------------------------------------------------------------------
# policyd-spf

SPF_WRAPPER = """
import sys
import dns.resolver
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = %(port)d
r.lifetime = 5
dns.resolver.default_resolver = r
sys.argv = ["policyd-spf", %(conf)r]
from spf_engine.policyd_spf import main
sys.exit(main())
"""


@pytest.mark.skipif(not shutil.which("policyd-spf") or not os.path.exists(SOCAT),
                    reason="policyd-spf (postfix-policyd-spf-python) or socat missing")
def test_policyd_spf(perimd_factory, sink, dnsmasq, tmp_path):
    """An SPF fail gets policyd-spf's 550 5.7.23; a pass gets through with
    its Received-SPF header; both over one pooled connection."""
    conf = tmp_path / "policyd-spf.conf"
    conf.write_text("debugLevel = 1\nTestOnly = 1\nHELO_reject = Fail\nMail_From_reject = Fail\n"
                    "PermError_reject = False\nTempError_Defer = False\n"
                    "skip_addresses = 192.0.2.0/24\n")
    wrapper = tmp_path / "spf_wrapper.py"
    wrapper.write_text(SPF_WRAPPER % {"port": dnsmasq.port, "conf": str(conf)})
    port = free_port()
    proc = subprocess.Popen([SOCAT, "TCP-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % port,
                             "EXEC:%s %s" % (PYTHON, wrapper)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "socat.err", "wb"))
    try:
        assert wait_for(lambda: listening(port), 10)
        p = start(perimd_factory, sink, dnsmasq, "inet:127.0.0.1:%d" % port)
        r = session(p, ["bob@example.com"], sender="someone@example.test", source="127.0.0.9")[0]
        assert r[0] == 550 and r[1].startswith("5.7.23 <bob@example.com>: Recipient address rejected:"), r
        assert "SPF fail" in r[1], r
        replies, d = session(p, ["bob@example.com"], sender="someone@example.test", data=True,
                             source="127.0.0.2")
        assert replies[0][0] == 250 and d[0] == 250, (replies, d)
        assert sink.wait_count(1)
        msg = sink.messages()[0].decode()
        assert re.search(r"(?m)^Received-SPF: Pass ", msg), msg
        key = 'perimd_policy_service_requests_total{service="inet:127.0.0.1:%d",result="reject"}' % port
        assert metrics(p).get(key) == 1
    finally:
        stop_proc(proc)
