"""test_policy_hostile.py - a policy service that answers a request twice
(smtpd_policy_services): the second answer must never be taken as the
answer to the next request sent on that pooled connection. The real
binary, a policy server in this process that writes exactly the bytes the
test gives it, backend.py as the backend.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, wait_for  # noqa: E402
from listener import Listener  # noqa: E402


class RawPolicyServer(Listener):
    """Answers the n-th request (over all connections) with answers[n]
    (the last one repeated), bytes as given."""

    def __init__(self, answers):
        Listener.__init__(self)
        self.answers = answers
        self.asked = []
        self.spec = "inet:127.0.0.1:%d" % self.port
        self.start()

    def serve(self, c, no):
        buf = b""
        with c:
            while True:
                try:
                    d = c.recv(65536)
                except OSError:
                    return
                if not d:
                    return
                buf += d
                while b"\n\n" in buf:
                    raw, buf = buf.split(b"\n\n", 1)
                    req = dict(l.split(b"=", 1) for l in raw.split(b"\n"))
                    self.asked.append(req[b"recipient"].decode())
                    n = min(len(self.asked), len(self.answers)) - 1
                    c.sendall(self.answers[n])


@pytest.fixture
def server():
    made = []

    def make(answers):
        s = RawPolicyServer(answers)
        made.append(s)
        return s
    yield make
    for s in made:
        s.stop()


def test_second_answer_is_not_the_next_ones(perimd_factory, backend, server):
    # One segment: the answer, then another the service was never asked for.
    srv = server([b"action=DUNNO\n\naction=REJECT stale second answer\n\n", b"action=DUNNO\n\n"])
    p = perimd_factory(relay_backends=backend.target, io_threads="1",
                       smtpd_policy_services=srv.spec, smtpd_policy_service_timeout="3s",
                       smtpd_policy_service_try_limit="1")
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
        expect(c.cmd("RCPT TO:<u1@example.com>"), 250)
        expect(c.cmd("RCPT TO:<u2@example.com>"), 250)  # not the stale REJECT
        expect(c.cmd("DATA"), 354)
        expect(c.cmd("Subject: x\r\n\r\nbody\r\n."), 250)
    assert srv.asked == ["u1@example.com", "u2@example.com"], srv.asked
    assert srv.connections == 2, srv.connections  # the connection that answered twice was closed
    wait_for(lambda: len(backend.messages()) == 1)
    assert backend.messages()[0].rcpts == ["u1@example.com", "u2@example.com"]
    p.wait_log(r"more than one answer to a request: connection closed")
