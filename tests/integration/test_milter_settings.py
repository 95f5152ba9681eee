"""test_milter_settings.py - Postfix 3.0's per-milter settings in
smtpd_milters ("{ inet:HOST:PORT, command_timeout=1s, default_action=accept
}", milter_spec.c): each milter gets its own default action, timeouts and
protocol, the milter_* parameters where it sets none; bad items are refused
by perimd -t with a message naming them. The milters are milter_peer.py
processes (test_milter.Peer) and a port nobody listens on.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import expect, free_port  # noqa: E402
from test_milter import MSG, Peer, headers_of, send, start  # noqa: E402


def peer_in(tmp_path, name):
    d = tmp_path / name
    d.mkdir()
    return Peer(d)


def test_each_milter_its_own_action_and_timeout(perimd_factory, backend, tmp_path):
    """A milter that is down with default_action=accept in braces is left
    out although milter_default_action is reject; the other, with
    command_timeout=1s and default_action=tempfail, times out after 1 s
    (not the global 20 s) and tempfails (not the global reject)."""
    peer = peer_in(tmp_path, "a")
    down = "inet:127.0.0.1:%d" % free_port()
    try:
        p = start(perimd_factory, backend,
                  "{ %s, default_action=accept }, { %s, command_timeout=1s, default_action = tempfail }"
                  % (down, peer.spec),
                  milter_default_action="reject", milter_command_timeout="20s")
        expect(send(p.port, "plain@client.test", ["a@example.com"], MSG), 250)
        assert "X-Peer: seen" in headers_of(backend.messages()[0].data)
        assert "milter %s: connect: " % down in p.log_text()
        assert "default_action = accept" in p.log_text()
        t0 = time.monotonic()
        expect(send(p.port, "hang@client.test", ["a@example.com"], MSG), 451, "4.3.5")
        took = time.monotonic() - t0
        assert took < 8, "the per-milter command_timeout (1 s) did not apply: %.1f s" % took
        assert "milter %s: read: timeout; default_action = tempfail" % peer.spec in p.log_text()
        assert len(backend.messages()) == 1
        # Without braces the same milter that is down gets the global
        # action: the per-milter one above was its own.
        q = start(perimd_factory, backend, "%s, %s" % (down, peer.spec), milter_default_action="reject")
        expect(send(q.port, "plain@client.test", ["a@example.com"], MSG), 550, "5.5.0")
    finally:
        peer.stop()


def test_each_milter_its_own_protocol(perimd_factory, backend, tmp_path):
    """protocol=2 in braces: that milter is offered version 2, the other
    one milter_protocol's 6; both see the message."""
    a, b = peer_in(tmp_path, "a"), peer_in(tmp_path, "b")
    try:
        p = start(perimd_factory, backend, "{%s,protocol=2} %s" % (a.spec, b.spec))
        expect(send(p.port, "plain@client.test", ["a@example.com"], MSG), 250)
        va = [e["version"] for e in a.events() if e["cmd"] == "O"]
        vb = [e["version"] for e in b.events() if e["cmd"] == "O"]
        assert va == [2] and vb == [6], (va, vb)
        assert "T" not in [e["cmd"] for e in a.events()]  # DATA came with version 4
        assert "T" in [e["cmd"] for e in b.events()]
        assert headers_of(backend.messages()[0].data).count("X-Peer: seen") == 2
    finally:
        a.stop()
        b.stop()


BAD = [
    ("{ inet:127.0.0.1:9, default_action=quarantine }", "quarantine is refused"),
    ("{ inet:127.0.0.1:9, foo=1 }", "foo: unknown setting"),
    ("{ inet:127.0.0.1:9, command_timeout=soon }", "command_timeout=soon: not a time"),
    ("{ inet:127.0.0.1:9, content_timeout=1h }", "above the maximum"),
    ("{ inet:127.0.0.1:9, protocol=7 }", "not a protocol version"),
    ("{ inet:127.0.0.1:9, command_timeout=10s", '"{" without "}"'),
    ("{ }", "names no milter"),
    ("{ inet:nowhere, protocol=6 }", "is not inet:HOST:PORT"),
]


def test_check_names_the_bad_item():
    from harness import PERIMD_BIN
    for item, why in BAD:
        r = subprocess.run([PERIMD_BIN, "-c", "/dev/null", "-t", "-o",
                            "smtpd_milters=inet:127.0.0.1:8891, %s" % item],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, (item, r.returncode, r.stderr)
        assert "smtpd_milters: " in r.stderr and why in r.stderr, (item, r.stderr)
        assert item.split(",")[0] in r.stderr, (item, r.stderr)
        assert "Sanitizer" not in r.stderr, r.stderr
    ok = subprocess.run([PERIMD_BIN, "-c", "/dev/null", "-t", "-o",
                         "smtpd_milters={ inet:127.0.0.1:8891, connect_timeout=10s, command_timeout=10s, "
                         "content_timeout=100s, default_action=accept, protocol=6 }, unix:/run/m.sock"],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
