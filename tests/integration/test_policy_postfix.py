"""test_policy_postfix.py - a real Postfix uses perimd as its greylisting
policy server (check_policy_service, the Postfix policy delegation
protocol): the first RCPT is deferred, the retry after greylist_delay is
accepted and the message reaches the sink behind Postfix.

The Postfix instance is private (postfix_instance.py): its own
config_directory, queue and data directories, smtpd on a loopback port,
logging to a file; started and stopped by the test."""

import time

import pytest

from harness import Client, free_port, known_params
from postfix_instance import PostfixInstance, postfix_available

SENDER = "alice@sender.example"
RCPT = "bob@example.com"


def PrivatePostfix(smtp_port, policy_port, relay_port):
    """A private Postfix that asks perimd's policy service at RCPT and
    relays to relay_port."""
    return PostfixInstance(smtp_port, """mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay}
smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:{policy}, permit_mynetworks, reject
""".format(relay=relay_port, policy=policy_port))


@pytest.fixture
def postfix_factory():
    made = []

    def make(*args):
        pf = PrivatePostfix(*args)
        made.append(pf)
        pf.start()
        return pf
    yield make
    for pf in made:
        pf.stop()


def rcpt(port):
    with Client(port, timeout=30) as c:
        assert c.banner[0] == 220, c.banner
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
        r = c.cmd("RCPT TO:<%s>" % RCPT, timeout=30)
        if r[0] == 250:
            assert c.cmd("DATA")[0] == 354
            d = c.cmd("Subject: via postfix\r\n\r\nhello\r\n.")
            assert d[0] == 250, d
        c.cmd("QUIT")
        return r


@pytest.mark.skipif(not postfix_available(), reason="postfix not installed")
def test_postfix_check_policy_service(perimd_factory, sink, postfix_factory):
    if "policy_listen" not in known_params():
        pytest.skip("perimd built without policy_listen")
    pport = free_port()
    perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, relay_domains="example.com",
                   greylist="yes", greylist_delay="2s", greylist_auto_whitelist_count="0",
                   policy_listen="127.0.0.1:%d" % pport)
    pf = postfix_factory(free_port(), pport, sink.port)
    first = rcpt(pf.port)
    assert first[0] == 450 and "greylisted" in first[1], first
    early = rcpt(pf.port)
    assert early[0] == 450, early
    time.sleep(2.2)   # greylist_delay: the retry must come after it
    assert rcpt(pf.port)[0] == 250
    # Postfix queued it and relays it to the sink.
    assert sink.wait_count(1, 30), pf.log_text()[-2000:]
    assert b"via postfix" in sink.messages()[0]
