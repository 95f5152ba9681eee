"""test_shadow.py - shadow_checks: a check named there runs, logs and
counts (perimd_shadow_rejects_total{check}) what it would have refused, and
lets the recipient pass; the checks not named still refuse. DNSBL against a
real dnsmasq (test_dns.Dnsmasq), greylisting on SQLite (and through the
Postfix policy service), recipient maps and access maps from files; the
virus scanner and unknown names are refused by perimd -t."""

import os
import re
import signal
import socket
import sqlite3

import pytest

import test_dns
from harness import free_port
from test_faults import metrics
from test_grey_abuse import check


def shadowed(p, check):
    return metrics(p).get('perimd_shadow_rejects_total{check="%s"}' % check, 0)


def dialogue(p, source, to, sender="a@mx.test", helo="client.test", data=False):
    """From `source`: EHLO, MAIL, one RCPT per address in `to`; with data,
    the message when any was accepted. The replies to RCPT (and DATA)."""
    with test_dns.ClientFrom(p.port, source) as c:
        assert c.banner[0] == 220
        assert c.cmd("EHLO " + helo)[0] == 250
        assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
        out = [c.cmd("RCPT TO:<%s>" % t) for t in to]
        if data and any(r[0] == 250 for r in out):
            assert c.cmd("DATA")[0] == 354
            out.append(c.cmd("Subject: shadow\r\n\r\nhello\r\n."))
        c.cmd("QUIT")
        return out


@pytest.fixture
def dnsmasq(tmp_path):
    if not os.path.exists(test_dns.DNSMASQ):
        pytest.skip("dnsmasq (dnsmasq-base) missing")
    d = test_dns.Dnsmasq(tmp_path / "dnsmasq").start()
    yield d
    d.stop()


def test_dnsbl_in_shadow(perimd_factory, backend, dnsmasq):
    conf = dict(dns_servers="127.0.0.1:%d" % dnsmasq.port, dns_timeout="500ms", dns_retries="1",
                relay_backends=backend.target, dnsbl_sites="bl.test")
    p = perimd_factory(shadow_checks="dnsbl", **conf)
    # 127.0.0.6 is listed: the lookup runs, the refusal is only logged.
    r = dialogue(p, "127.0.0.6", ["user@example.com"], data=True)
    assert r[0][0] == 250 and r[1][0] == 250, r
    assert dnsmasq.queries("A", "6.0.0.127.bl.test") == 1
    p.wait_log(r"shadow: dnsbl would refuse RCPT from \[127\.0\.0\.6\]: 550 5\.7\.1 Service "
               r"unavailable; client \[127\.0\.0\.6\] blocked using bl\.test; from=<a@mx\.test> "
               r"to=<user@example\.com>")
    assert len(backend.messages()) == 1
    # Not listed: nothing to count.
    assert dialogue(p, "127.0.0.4", ["user@example.com"])[0][0] == 250
    m = metrics(p)
    assert m['perimd_shadow_rejects_total{check="dnsbl"}'] == 1
    assert m['perimd_shadow_rejects_total{check="greylist"}'] == 0
    assert m.get('perimd_messages_rejected_total{reason="dnsbl"}', 0) == 0
    # The same list on a box without shadow_checks refuses.
    q = perimd_factory(**conf)
    r = dialogue(q, "127.0.0.6", ["user@example.com"])
    assert r[0][0] == 550, r
    assert shadowed(q, "dnsbl") == 0
    # Shadowing another check does not soften the DNSBL.
    s = perimd_factory(shadow_checks="greylist, recipient_maps", **conf)
    assert dialogue(s, "127.0.0.6", ["user@example.com"])[0][0] == 550


def test_greylist_in_shadow(perimd_factory, backend):
    p = perimd_factory(relay_backends=backend.target, greylist="yes", greylist_delay="1h",
                       greylist_auto_whitelist_count="0", shadow_checks="greylist",
                       policy_listen="127.0.0.1:%d" % free_port())
    r = dialogue(p, "127.0.0.2", ["bob@example.com"], sender="alice@client.test", data=True)
    assert r[0][0] == 250 and r[1][0] == 250, r
    p.wait_log(r"shadow: greylist would refuse RCPT from \[127\.0\.0\.2\]: 451 4\.7\.1 "
               r"<bob@example\.com>: greylisted, try again in 3600 seconds")
    # The check ran: the triplet is stored, and the next RCPT is an early
    # retry (counted as such), still let through.
    db = sqlite3.connect(os.path.join(p.params["data_directory"], "greylist.db"))
    try:
        assert db.execute("SELECT count(*) FROM grey").fetchone()[0] == 1
    finally:
        db.close()
    r = dialogue(p, "127.0.0.2", ["bob@example.com"], sender="alice@client.test")
    assert r[0][0] == 250, r
    m = metrics(p)
    assert m['perimd_greylist_decisions_total{result="new"}'] == 1
    assert m['perimd_greylist_decisions_total{result="early"}'] == 1
    assert m['perimd_shadow_rejects_total{check="greylist"}'] == 2
    assert m.get('perimd_messages_rejected_total{reason="greylist"}', 0) == 0
    assert len(backend.messages()) == 1
    # The Postfix policy service: DUNNO instead of DEFER_IF_PERMIT.
    port = int(p.params["policy_listen"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.5.2\n"
                  b"sender=x@client.test\nrecipient=carol@example.com\n\n")
        buf = b""
        while not buf.endswith(b"\n\n"):
            data = s.recv(4096)
            assert data, "the policy service closed the connection"
            buf += data
    assert buf == b"action=DUNNO\n\n", buf
    p.wait_log(r"policy client .*: shadow: greylist would refuse <carol@example\.com>: 4\.7\.1 "
               r"<carol@example\.com>: greylisted")
    assert shadowed(p, "greylist") == 3


def test_recipient_and_access_maps_in_shadow(perimd_factory, backend, tmp_path):
    rmap = tmp_path / "recipients"
    rmap.write_text("alice@example.com\n")
    cmap = tmp_path / "client_access"
    cmap.write_text("127.0.7.0/24 REJECT listed here\n")
    smap = tmp_path / "sender_access"
    smap.write_text("spammer.test REJECT\n")
    conf = dict(relay_backends=backend.target, relay_recipient_maps="file:%s" % rmap,
                client_access_maps="file:%s" % cmap, sender_access_maps="file:%s" % smap)
    p = perimd_factory(shadow_checks="recipient_maps, client_access", **conf)
    # bob is not in the map, the client is listed: both only logged.
    r = dialogue(p, "127.0.7.2", ["alice@example.com", "bob@example.com"], data=True)
    assert [x[0] for x in r] == [250, 250, 250], r
    p.wait_log(r"shadow: recipient_maps would refuse RCPT from \[127\.0\.7\.2\]: 550 5\.1\.1 "
               r"<bob@example\.com>: recipient unknown")
    p.wait_log(r"shadow: client_access would refuse RCPT from \[127\.0\.7\.2\]: 550 5\.7\.1 "
               r"<alice@example\.com>: listed here")
    msgs = backend.messages()
    assert len(msgs) == 1 and sorted(msgs[0].rcpts) == \
        ["alice@example.com", "bob@example.com"]
    m = metrics(p)
    assert m['perimd_shadow_rejects_total{check="recipient_maps"}'] == 1
    assert m['perimd_shadow_rejects_total{check="client_access"}'] == 2
    # A shadowed client verdict does not hide the sender's, which is not
    # shadowed: later delayed verdicts still refuse.
    r = dialogue(p, "127.0.7.2", ["alice@example.com"], sender="x@spammer.test")
    assert r[0][0] == 550 and "Sender address <x@spammer.test> rejected" in r[0][1], r
    # Without shadow_checks the same maps refuse.
    q = perimd_factory(**conf)
    r = dialogue(q, "127.0.0.2", ["alice@example.com", "bob@example.com"])
    assert [x[0] for x in r] == [250, 550], r
    assert dialogue(q, "127.0.7.2", ["alice@example.com"])[0][0] == 550
    assert shadowed(q, "recipient_maps") == 0 and shadowed(q, "client_access") == 0


def test_scanner_never_shadowed_and_unknown_names(perimd_factory):
    p = perimd_factory(start=False)
    assert check(p, shadow_checks="dnsbl, greylist, recipient_maps, recipient_verify, helo, "
                                  "client_access, sender_access, recipient_access, "
                                  "client_hostname, sender_domain") == (0, "")
    for name in ("av", "virus", "av_scanner", "clamav"):
        rc, err = check(p, shadow_checks="dnsbl, %s" % name)
        assert rc == 1 and re.search(r"shadow_checks: %s: the virus scanner is never a shadow "
                                     r"check" % name, err), (name, err)
    rc, err = check(p, shadow_checks="dnsbl, rbl")
    assert rc == 1 and "shadow_checks: rbl: unknown check (known: dnsbl, greylist," in err, err
    # A reload that names the scanner is refused; the running list stays.
    q = perimd_factory(shadow_checks="dnsbl")
    with open(q.conf_path) as f:
        text = f.read()
    with open(q.conf_path, "w") as f:
        f.write(text.replace("shadow_checks = dnsbl", "shadow_checks = dnsbl, av"))
    q.proc.send_signal(signal.SIGHUP)
    q.wait_log(r"reload refused.*shadow_checks: av: the virus scanner is never a shadow check")
    assert q.proc.poll() is None


def test_policy_service_in_shadow(perimd_factory, backend):
    """A policy service that refuses everything, in shadow: logged and
    counted, the recipient passes; without shadow it is refused."""
    import threading
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    port = srv.getsockname()[1]
    asked = []

    def serve(c):
        buf = b""
        with c:
            while True:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n\n" in buf:
                    req, buf = buf.split(b"\n\n", 1)
                    asked.append(req)
                    c.sendall(b"action=REJECT not today\n\n")

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    try:
        conf = dict(relay_backends=backend.target, smtpd_policy_services="inet:127.0.0.1:%d" % port)
        p = perimd_factory(shadow_checks="policy_services", **conf)
        r = dialogue(p, "127.0.0.2", ["user@example.com"], data=True)
        assert r[0][0] == 250 and r[1][0] == 250, r
        assert asked, "the policy service was never asked"
        p.wait_log(r"shadow: policy_services would refuse RCPT from \[127\.0\.0\.2\]: 554 5\.7\.1 "
                   r"<user@example\.com>: Recipient address rejected: not today")
        assert shadowed(p, "policy_services") == 1
        q = perimd_factory(**conf)
        assert dialogue(q, "127.0.0.2", ["user@example.com"])[0][0] == 554
    finally:
        srv.close()
