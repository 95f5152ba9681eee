"""test_volume.py - many messages, many sessions: smtp-source -> perimd ->
smtp-sink, and every message must arrive exactly once with its bytes intact.

smtp-source's payload (-l) is the same for every message it sends, so one
message sent straight to the sink is the reference each relayed message is
compared with. No timing is asserted (that is ./build.sh bench); every wait
is bounded.
"""

import re

import pytest

from harness import Sink, known_params, sink_message, smtp_source

SENDER = "a@client.test"
RCPT = "b@example.com"
LENGTH = 2048


def payload(msg):
    """Text after the header block of a message captured by the sink."""
    return msg.split(b"\n\n", 1)[1]


@pytest.fixture
def reference(tmp_path):
    """smtp-source's payload for -l LENGTH, captured without perimd."""
    s = Sink(tmp_path / "ref").start()
    try:
        rc, out = smtp_source("-m", "1", "-l", LENGTH, "-f", SENDER, "-t", RCPT,
                              "-M", "client.test", "127.0.0.1:%d" % s.port, timeout=60)
        assert rc == 0, out
        assert s.wait_count(1, 10)
        return payload(sink_message(s.messages()[0])[1])
    finally:
        s.stop()


def relay(perimd_factory, sink):
    params = {
        "relay_backends": "[127.0.0.1]:%d" % sink.port,
        "relay_domains": "example.com",
        # All sessions come from 127.0.0.1; the per-client limit (50)
        # would count sessions smtp-source has already closed.
        "smtpd_client_connection_count_limit": "0",
    }
    off = {"greylist": "no", "reject_unknown_sender_domain": "no"}
    params.update({k: v for k, v in off.items() if k in known_params()})
    return perimd_factory(**params)


def run_volume(perimd_factory, sink, reference, n, args, rcpts):
    p = relay(perimd_factory, sink)
    rc, out = smtp_source("-m", n, "-l", LENGTH, "-f", SENDER, "-t", RCPT,
                          "-M", "client.test", *args, "127.0.0.1:%d" % p.port, timeout=400)
    assert rc == 0, "smtp-source failed (rc %d):\n%s\n--- perimd.log:\n%s" % (
        rc, out, p.log_text()[-3000:])
    assert not re.search(r"error|fatal|warning", out, re.I), out
    # perimd said 250 only after the sink did: all are there already; the
    # bounded wait only covers the sink closing its capture files.
    assert sink.wait_count(n, 30), "sink has %d of %d messages" % (sink.count(), n)
    msgs = sink.messages()
    assert len(msgs) == n, "sink has %d messages, expected %d" % (len(msgs), n)

    ids = set()
    for raw in msgs:
        env, msg = sink_message(raw)
        assert env["mail"].split()[0] == "<%s>" % SENDER, env
        assert sorted(r.split()[0] for r in env["rcpt"]) == sorted(rcpts), env
        head = msg.split(b"\n\n", 1)[0]
        assert head.startswith(b"Received: from client.test"), head[:200]
        assert head.count(b"\nReceived:") == 0, "more than one Received: %r" % head
        assert payload(msg) == reference, "payload differs (%d bytes vs %d)" % (
            len(payload(msg)), len(reference))
        m = re.search(rb"\nMessage-Id: (\S+)", head, re.I)
        assert m, head
        ids.add(m.group(1))
    assert len(ids) == n, "%d distinct Message-Ids among %d messages" % (len(ids), n)


def test_volume_new_connection_per_message(perimd_factory, sink, reference):
    run_volume(perimd_factory, sink, reference, 2000, ["-s", "50"], ["<%s>" % RCPT])


def test_volume_reused_connections(perimd_factory, sink, reference):
    run_volume(perimd_factory, sink, reference, 2000, ["-s", "50", "-d"], ["<%s>" % RCPT])


def test_volume_three_recipients(perimd_factory, sink, reference):
    # smtp-source -r 3 sends to b@, 2b@ and 3b@ the -t domain.
    rcpts = ["<%s>" % RCPT, "<2%s>" % RCPT, "<3%s>" % RCPT]
    run_volume(perimd_factory, sink, reference, 1000, ["-s", "20", "-d", "-r", "3"], rcpts)
