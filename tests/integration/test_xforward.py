"""test_xforward.py - the client's attributes to the backends by XFORWARD
(Postfix's XFORWARD_README), under relay_xforward_hosts:

- a real Postfix backend (smtpd_authorized_xforward_hosts = 127.0.0.0/8)
  logs the original client's address and perimd's id (orig_client=,
  orig_queue_id=), and keeps the client's address, HELO and protocol, not
  perimd's: its own XFORWARD to the next hop (backend.py) carries them;
- tests/integration/backend.py shows every attribute and its xtext
  encoding, once per transaction on a pooled connection, with and
  without PIPELINING, only the attributes offered;
- a backend not in relay_xforward_hosts, or one that does not offer
  XFORWARD, gets no XFORWARD command and the message as before;
- a 5xx to XFORWARD is logged and the message goes on without it;
- XCLIENT (relay_xclient_hosts) only to a backend that does not take
  XFORWARD: EHLO again after its 220, the connection never pooled; a
  real Postfix then logs and stamps the client as its own;
- perimd -t refuses an entry that is no address or network."""

import re
import subprocess
import time

import pytest

from harness import PERIMD_BIN, Client, free_port, wait_for
from postfix_instance import PostfixInstance, postfix_available

ALL = "NAME ADDR PORT PROTO HELO IDENT SOURCE"
CLIENT_ADDR = "127.0.0.7"


def send(port, helo="client.test", n=1, ehlo=True, source=CLIENT_ADDR):
    """n messages on one session; returns (queue ids from perimd's 250s,
    the client's source port)."""
    ids = []
    with Client(port, timeout=30, source=source) as c:
        assert c.banner[0] == 220, c.banner
        r = c.cmd(("EHLO " if ehlo else "HELO ") + helo)
        assert r[0] == 250, r
        for i in range(n):
            assert c.cmd("MAIL FROM:<alice@sender.test>")[0] == 250
            r = c.cmd("RCPT TO:<bob@example.com>")
            assert r[0] == 250, r
            assert c.cmd("DATA")[0] == 354
            r = c.cmd("Subject: xforward %d\r\n\r\nhello\r\n." % i, timeout=30)
            assert r[0] == 250, r
            ids.append(re.search(r"queued as (\S+)", r[1]).group(1))
        sport = c.sock.getsockname()[1]
        c.cmd("QUIT")
    return ids, sport


@pytest.mark.parametrize("pipelining", [True, False])
def test_xforward_every_attribute_each_transaction(perimd_factory, backend_factory, pipelining):
    b = backend_factory(xforward=ALL, pipelining=pipelining)
    p = perimd_factory(relay_backends=b.target, relay_xforward_hosts="10.0.0.0/8, 127.0.0.0/8",
                       reject_invalid_helo_hostname="no", io_threads=1)  # one pool
    ids, sport = send(p.port, helo="we+ird=helo")
    # the connection is back in the pool once its RSET is answered
    assert wait_for(lambda: b.stats()["rset"] == 1, 10)
    time.sleep(0.2)
    ids2, sport2 = send(p.port, helo="we+ird=helo")
    msgs = b.messages()
    assert len(msgs) == 2
    for m, qid, sport in zip(msgs, ids + ids2, (sport, sport2)):
        assert m.xforward == {"NAME": "unknown", "ADDR": CLIENT_ADDR, "PORT": str(sport),
                              "PROTO": "ESMTP", "HELO": "we+ird=helo", "IDENT": qid,
                              "SOURCE": "REMOTE"}, m.xforward
        assert m.helo == "perimd.test"
    st = b.stats()
    # one pooled connection, XFORWARD again before the second MAIL
    assert st["connections"] == 1, st
    assert st["commands"]["XFORWARD"] == 2, st
    assert st["pipelining_violations"] == 0, st
    raw = [ln for ln in st["log"] if "> XFORWARD" in ln]
    assert all("HELO=we+2Bird+3Dhelo" in ln for ln in raw), raw


def test_xforward_only_offered_attributes_helo_proto(perimd_factory, backend_factory):
    b = backend_factory(xforward="addr Helo PROTO")
    p = perimd_factory(relay_backends=b.target, relay_xforward_hosts="127.0.0.1")
    send(p.port, helo="old.client.test", ehlo=False)
    (m,) = b.messages()
    assert m.xforward == {"ADDR": CLIENT_ADDR, "HELO": "old.client.test", "PROTO": "SMTP"}


@pytest.mark.parametrize("case", ["not_allowed", "not_offered", "unset"])
def test_no_xforward(perimd_factory, backend_factory, case):
    b = backend_factory(xforward="" if case == "not_offered" else ALL)
    hosts = {"not_allowed": "10.0.0.0/8, 127.0.0.2", "not_offered": "127.0.0.0/8",
             "unset": ""}[case]
    p = perimd_factory(relay_backends=b.target, relay_xforward_hosts=hosts)
    send(p.port)
    (m,) = b.messages()
    assert m.xforward == {}
    assert "XFORWARD" not in b.stats()["commands"]


@pytest.mark.parametrize("pipelining", [True, False])
def test_xforward_refused_goes_on_without(perimd_factory, backend_factory, pipelining):
    b = backend_factory(xforward=ALL, pipelining=pipelining,
                        reply={"xforward": "550 5.7.0 Error: insufficient authorization"})
    p = perimd_factory(relay_backends=b.target, relay_xforward_hosts="127.0.0.0/8",
                       io_threads=1)
    send(p.port)
    assert wait_for(lambda: b.stats()["rset"] == 1, 10)  # pooled again
    time.sleep(0.2)
    send(p.port)
    msgs = b.messages()
    assert len(msgs) == 2 and all(m.xforward == {} for m in msgs)
    p.wait_log(r"XFORWARD refused, going on without it: 550 5\.7\.0")
    # not asked again on the same connection
    st = b.stats()
    assert st["connections"] == 1 and st["commands"]["XFORWARD"] == 1, st


def test_xforward_421_fails_over(perimd_factory, backend_factory):
    b1 = backend_factory(xforward=ALL, reply={"xforward": "421 4.3.2 going away"})
    b2 = backend_factory(xforward=ALL)
    p = perimd_factory(relay_backends=[b1.target, b2.target],
                       relay_xforward_hosts="127.0.0.0/8")
    send(p.port)
    assert b1.messages() == []
    (m,) = b2.messages()
    assert m.xforward["ADDR"] == CLIENT_ADDR


def test_check_refuses_bad_entry(perimd_factory):
    p = perimd_factory(start=False, relay_xforward_hosts="127.0.0.0/33")
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0
    assert "relay_xforward_hosts: 127.0.0.0/33" in r.stderr, r.stderr


@pytest.mark.skipif(not postfix_available(), reason="postfix not installed")
def test_postfix_backend_logs_the_client(perimd_factory, backend_factory):
    # perimd -> Postfix (XFORWARD allowed) -> backend.py, which Postfix's own
    # client tells what it recorded of the client (smtp_send_xforward_command)
    nxt = backend_factory(xforward=ALL)
    pf = PostfixInstance(free_port(), """mynetworks = 127.0.0.0/8
relay_domains = example.com
relayhost = [127.0.0.1]:{nxt}
smtpd_authorized_xforward_hosts = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
smtp_send_xforward_command = yes
""".format(nxt=nxt.port))
    pf.start()
    try:
        p = perimd_factory(relay_backends="[127.0.0.1]:%d" % pf.port,
                           relay_xforward_hosts="127.0.0.0/8")
        ids, sport = send(p.port, helo="real-client.test")
        assert wait_for(lambda: nxt.messages(), 30), pf.log_text()[-2000:]
        (m,) = nxt.messages()
        # Postfix kept the client perimd forwarded, not perimd itself
        assert m.xforward["ADDR"] == CLIENT_ADDR, m.xforward
        assert m.xforward["HELO"] == "real-client.test", m.xforward
        assert m.xforward["PROTO"] == "ESMTP", m.xforward
        # Postfix's Received field names the connection (perimd): XFORWARD
        # changes the log and the attributes passed on, not the trace
        assert b"Received: from perimd.test (localhost [127.0.0.1])" in m.data
        # its log: the connection from perimd, the original client and id
        log = pf.log_text()
        assert re.search(r"client=localhost\[127\.0\.0\.1\], orig_queue_id=%s, "
                         r"orig_client=unknown\[%s\]" % (ids[0], re.escape(CLIENT_ADDR)),
                         log), log[-2000:]
    finally:
        pf.stop()


# ---- XCLIENT: only where XFORWARD is not to be had ---------------------------

XCL = "NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT"


def test_xclient_when_no_xforward(perimd_factory, backend_factory):
    b = backend_factory(xclient=XCL)
    p = perimd_factory(relay_backends=b.target, relay_xclient_hosts="127.0.0.0/8", io_threads=1)
    ids, sport = send(p.port, helo="real-client.test")
    ids2, sport2 = send(p.port, helo="real-client.test", ehlo=False)
    m1, m2 = b.messages()
    assert m1.xclient == {"NAME": "unknown", "ADDR": CLIENT_ADDR, "PORT": str(sport),
                          "PROTO": "ESMTP", "HELO": "real-client.test"}, m1.xclient
    assert m2.xclient["PROTO"] == "SMTP" and m2.xclient["PORT"] == str(sport2)
    assert m1.xforward == {} and m1.helo == "perimd.test"  # EHLO again after the 220
    # a connection that took XCLIENT serves no other client: never pooled
    assert wait_for(lambda: b.stats()["commands"].get("QUIT") == 2, 10), b.stats()
    st = b.stats()
    assert st["connections"] == 2 and st["commands"]["XCLIENT"] == 2, st
    assert st["commands"]["EHLO"] == 4, st


@pytest.mark.parametrize("case", ["both_offered", "not_listed", "refused"])
def test_xclient_not_used(perimd_factory, backend_factory, case):
    opts = {"xclient": XCL}
    params = {"relay_xclient_hosts": "127.0.0.0/8"}
    if case == "both_offered":
        opts["xforward"] = ALL
        params["relay_xforward_hosts"] = "127.0.0.1"
    elif case == "not_listed":
        params["relay_xclient_hosts"] = "10.0.0.0/8"
    else:
        opts["reply"] = {"xclient": "550 5.7.0 Error: insufficient authorization"}
    b = backend_factory(**opts)
    p = perimd_factory(relay_backends=b.target, **params)
    send(p.port)
    (m,) = b.messages()
    assert m.xclient == {}
    if case == "both_offered":
        assert m.xforward["ADDR"] == CLIENT_ADDR  # XFORWARD preferred
        assert "XCLIENT" not in b.stats()["commands"]
    elif case == "not_listed":
        assert "XCLIENT" not in b.stats()["commands"]
    else:
        p.wait_log(r"XCLIENT refused, going on without it: 550 5\.7\.0")


def test_check_refuses_bad_xclient_entry(perimd_factory):
    p = perimd_factory(start=False, relay_xclient_hosts="example.com")
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and "relay_xclient_hosts: example.com" in r.stderr, r.stderr


@pytest.mark.skipif(not postfix_available(), reason="postfix not installed")
def test_postfix_backend_xclient(perimd_factory, backend_factory):
    # XCLIENT: Postfix takes the connection as the client's own (its log,
    # its Received field, and its restrictions: mynetworks must cover the
    # client for the relay to pass)
    nxt = backend_factory()
    pf = PostfixInstance(free_port(), """mynetworks = 127.0.0.0/8
relay_domains = example.com
relayhost = [127.0.0.1]:{nxt}
smtpd_authorized_xclient_hosts = 127.0.0.1
smtpd_recipient_restrictions = permit_mynetworks, reject
""".format(nxt=nxt.port))
    pf.start()
    try:
        p = perimd_factory(relay_backends="[127.0.0.1]:%d" % pf.port,
                           relay_xclient_hosts="127.0.0.0/8")
        send(p.port, helo="real-client.test")
        assert wait_for(lambda: nxt.messages(), 30), pf.log_text()[-2000:]
        (m,) = nxt.messages()
        assert b"Received: from real-client.test (unknown [%s])" % CLIENT_ADDR.encode() \
            in m.data, m.data[:800]
        assert re.search(r"\]: [0-9A-F]+: client=unknown\[%s\]" % re.escape(CLIENT_ADDR),
                         pf.log_text()), pf.log_text()[-2000:]
    finally:
        pf.stop()
