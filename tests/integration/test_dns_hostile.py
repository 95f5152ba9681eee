"""test_dns_hostile.py - the DNS checks against a hostile DNS server: a
python3-dnspython UDP server on a loopback port that answers PTR
questions with names no host has (control characters, spaces, a NUL or a
dot inside a label) and confirms every one of them by its A records, so
only perimd's own checks stand between such a name and the milters, logs
and access maps that get the client's name.

Clients connect from 127.0.0.x; x picks the PTR answer (PTR_LABELS).
"""

import os
import signal
import socket
import struct
import threading

import pytest

from harness import Client

dns = pytest.importorskip("dns.message", reason="python3-dnspython missing")
import dns.flags  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402
import dns.rrset  # noqa: E402

# 127.0.0.x -> the labels of its PTR names (each a list of raw labels).
PTR_LABELS = {
    9: [[b"fine", b"ok", b"test"]],
    10: [[b"a\0b", b"ok", b"test"]],
    11: [[b"evil\r\nx-injected: yes", b"ok", b"test"]],
    12: [[b"has space", b"ok", b"test"]],
    13: [[b"good.test"]],
    14: [[b"\xff%s%n", b"ok", b"test"]],
    15: [[b"127", b"0", b"0", b"15"]],
    # A bad name first, a good one after it: the good one is the name.
    16: [[b"bad name", b"ok", b"test"], [b"second", b"ok", b"test"]],
    17: [[b"1", b"2", b"3", b"4", b"5"]],
}
CLIENTS = ["127.0.0.%d" % x for x in PTR_LABELS]


def name_wire(labels):
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def question_end(wire):
    """The offset just past the (single) question of a query."""
    p = 12
    while wire[p]:
        p += wire[p] + 1
    return p + 5


def ptr_answer(query, names):
    """A PTR answer built by hand (dnspython will not write such names)."""
    q = question_end(query)
    head = bytearray(query[:12])
    head[2] = 0x84 | (head[2] & 1)  # QR AA, RD echoed
    head[3] = 0
    head[4:12] = struct.pack(">HHHH", 1, len(names), 0, 0)
    out = bytes(head) + query[12:q]
    for labels in names:
        rd = name_wire(labels)
        out += b"\xc0\x0c" + struct.pack(">HHIH", 12, 1, 60, len(rd)) + rd
    return out


class HostileDns:
    """UDP on 127.0.0.1:port: PTR from PTR_LABELS; A for every name
    (however odd) under ok.test: all the test clients' addresses."""

    def __init__(self, nx_all=False):
        self.nx_all = nx_all  # a wrong resolver: NXDOMAIN for everything
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)  # so serve() sees stop() soon
        self.running = True
        self.port = self.sock.getsockname()[1]
        self.asked = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def answer(self, wire):
        req = dns.message.from_wire(wire)
        q = req.question[0]
        self.asked.append((dns.rdatatype.to_text(q.rdtype), q.name.to_wire()))
        resp = dns.message.make_response(req)
        resp.flags |= dns.flags.AA
        labels = q.name.labels
        if self.nx_all:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            return resp.to_wire()
        if q.rdtype == dns.rdatatype.PTR and labels[1:] == (b"0", b"0", b"127", b"in-addr", b"arpa", b""):
            x = int(labels[0])
            if x in PTR_LABELS:
                return ptr_answer(wire[:question_end(wire)], PTR_LABELS[x])
        if labels[0] == b"loop":  # loop.test -> loop2.test -> loop.test
            resp.answer.append(dns.rrset.from_text(q.name, 60, "IN", "CNAME", "loop2.test."))
            resp.answer.append(dns.rrset.from_text("loop2.test.", 60, "IN", "CNAME", q.name.to_text()))
            return resp.to_wire()
        if labels[0] == b"chain" and q.rdtype == dns.rdatatype.MX:
            resp.answer.append(dns.rrset.from_text(q.name, 60, "IN", "CNAME", "c2.test."))
            resp.answer.append(dns.rrset.from_text("c2.test.", 60, "IN", "MX", "10 mx.c2.test."))
            return resp.to_wire()
        if labels == (b"xn--bcher-kva", b"test", b"") and q.rdtype == dns.rdatatype.MX:
            resp.answer.append(dns.rrset.from_text(q.name, 60, "IN", "MX", "10 mx.example."))
            return resp.to_wire()
        if q.rdtype == dns.rdatatype.A and (labels[-3:] == (b"ok", b"test", b"") or labels[0] == b"1"):
            resp.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", *CLIENTS))
            return resp.to_wire()
        resp.set_rcode(dns.rcode.NXDOMAIN)
        return resp.to_wire()

    def serve(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.sock.sendto(self.answer(data), peer)
            except Exception:  # a question it cannot parse: no answer
                pass

    def stop(self):
        self.running = False
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def hostile_dns():
    d = HostileDns()
    yield d
    d.stop()


def rcpt_from(p, source, sender="a@example.org"):
    """EHLO, MAIL, RCPT from source; the RCPT reply."""
    c = Client(p.port, source=source)
    try:
        assert c.banner[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
        return c.cmd("RCPT TO:<user@example.com>")[:2]
    finally:
        c.cmd("QUIT")
        c.close()


def test_ptr_names_that_are_not_host_names(perimd_factory, hostile_dns):
    """A PTR name with a CR LF, a space, a NUL, a dot inside a label,
    bytes outside ASCII, or only digits and dots (127.0.0.15, 1.2.3.4.5)
    is not a host name (Postfix: valid_hostname, valid_hostaddr): it is
    ignored, logged, and never the client's confirmed name, however its
    A records answer; a good name beside it still counts."""
    p = perimd_factory(dns_servers="127.0.0.1:%d" % hostile_dns.port, dns_timeout="1s",
                       dns_retries="1", relay_backends="[127.0.0.1]:9",
                       reject_unknown_client_hostname="yes")
    assert rcpt_from(p, "127.0.0.9")[0] == 250
    assert rcpt_from(p, "127.0.0.16")[0] == 250
    for x in (10, 11, 12, 13, 14, 15, 17):
        code, text = rcpt_from(p, "127.0.0.%d" % x)
        assert code == 550, (x, code, text)
        assert text.startswith("5.7.25 ") and "cannot find your hostname, [127.0.0.%d]" % x in text
    p.wait_log(r'dns: \[127\.0\.0\.11\]: PTR name "evil\?\?x-injected: yes\.ok\.test" is not a host name')
    p.wait_log(r'dns: \[127\.0\.0\.13\]: PTR name "good\?test" is not a host name')
    p.wait_log(r'dns: \[127\.0\.0\.10\]: PTR name "a\?b\.ok\.test" is not a host name')
    # The bad names were never looked up again; the good ones were.
    forward = [n for t, n in hostile_dns.asked if t == "A"]
    assert b"\x06second\x02ok\x04test\x00" in forward
    assert not any(b" " in n or b"\r" in n for n in forward), forward
    # With only the reverse check, a client whose PTR names are all bad
    # has none: 550 "cannot find your reverse hostname".
    q = perimd_factory(dns_servers="127.0.0.1:%d" % hostile_dns.port, dns_timeout="1s",
                       dns_retries="1", relay_backends="[127.0.0.1]:9",
                       reject_unknown_reverse_client_hostname="yes")
    code, text = rcpt_from(q, "127.0.0.11")
    assert code == 550 and "cannot find your reverse hostname, [127.0.0.11]" in text, text
    assert rcpt_from(q, "127.0.0.16")[0] == 250
    for s in (p, q):
        assert s.sanitizer_report() is None


def test_sender_domain_cname_loop_is_temporary(perimd_factory, hostile_dns):
    """A sender domain whose answer is a CNAME loop without a record is a
    DNS failure (RFC 1034 §3.6.2; a resolver says SERVFAIL): 450 4.1.8,
    never the 550 of a domain that does not exist, and not cached; a
    CNAME chain that ends at an MX is the MX."""
    p = perimd_factory(dns_servers="127.0.0.1:%d" % hostile_dns.port, dns_timeout="1s",
                       dns_retries="1", relay_backends="[127.0.0.1]:9",
                       reject_unknown_sender_domain="yes")
    for _ in range(2):
        code, text = rcpt_from(p, "127.0.0.9", sender="a@loop.test")
        assert code == 450 and text.startswith("4.1.8 <a@loop.test>"), (code, text)
    # The failure was not kept: the second session asked again.
    assert [n for t, n in hostile_dns.asked if t == "MX"].count(b"\x04loop\x04test\x00") == 2
    assert rcpt_from(p, "127.0.0.9", sender="a@chain.test")[0] == 250
    assert p.sanitizer_report() is None


def test_new_dns_servers_empty_the_cache(perimd_factory, hostile_dns):
    """Answers are cached by name and type: a reload to other dns_servers
    empties the cache, so the NXDOMAIN of a wrong resolver does not keep
    refusing a sender domain (550 5.1.8) after the reload that fixed it."""
    wrong = HostileDns(nx_all=True)
    try:
        p = perimd_factory(dns_servers="127.0.0.1:%d" % wrong.port, dns_timeout="1s",
                           dns_retries="1", relay_backends="[127.0.0.1]:9",
                           reject_unknown_sender_domain="yes")
        code, text = rcpt_from(p, "127.0.0.9", sender="a@chain.test")
        assert code == 550 and text.startswith("5.1.8 "), (code, text)
        with open(p.conf_path, "a") as f:
            f.write("dns_servers = 127.0.0.1:%d\n" % hostile_dns.port)
        os.kill(p.pid, signal.SIGHUP)
        p.wait_log(r"configuration reloaded")
        assert rcpt_from(p, "127.0.0.9", sender="a@chain.test")[0] == 250
        p.wait_log(r"dns: dns_servers changed: the DNS cache is emptied")
        assert p.sanitizer_report() is None
    finally:
        wrong.stop()


def test_utf8_sender_domain_is_looked_up_by_its_a_labels(perimd_factory, hostile_dns):
    """An SMTPUTF8 sender's domain is looked up as its zone holds it, by
    its A-labels (RFC 5891: b\u00fccher.test is xn--bcher-kva.test): its
    UTF-8 bytes are no name in the DNS, and their NXDOMAIN refused a real
    domain with 550 5.1.8."""
    p = perimd_factory(dns_servers="127.0.0.1:%d" % hostile_dns.port, dns_timeout="1s",
                       dns_retries="1", relay_backends="[127.0.0.1]:9",
                       reject_unknown_sender_domain="yes")
    c = Client(p.port, source="127.0.0.9")
    try:
        assert c.cmd("EHLO client.test")[0] == 250
        c.send("MAIL FROM:<j\u00f6rg@b\u00fccher.test> SMTPUTF8\r\n".encode())
        assert c.reply()[0] == 250
        code, text = c.cmd("RCPT TO:<user@example.com>")[:2]
        assert code == 250, (code, text)
    finally:
        c.cmd("QUIT")
        c.close()
    assert ("MX", b"\x0dxn--bcher-kva\x04test\x00") in hostile_dns.asked, hostile_dns.asked
    assert p.sanitizer_report() is None
