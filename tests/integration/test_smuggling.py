"""test_smuggling.py - SMTP smuggling (DESIGN.md "Data integrity rules").

A client hides a second transaction inside DATA behind a non-standard end
of data ("\\n.\\n", "\\r.\\r\\n", a NUL before the dot, ...). perimd must end
DATA only on CRLF.CRLF, and what it replays must be such that even a
lenient backend, which ends data on any of those sequences, sees exactly
one message. The lenient backend (backend.py --lenient) counts the
transactions it sees: a split would show as two.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from backend import Backend  # noqa: E402
from harness import Client  # noqa: E402

HEAD = b"From: a@client.test\r\nTo: b@example.com\r\nSubject: one\r\n\r\nfirst message\r\n"
SMUGGLED = (b"MAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@example.com>\r\n"
            b"DATA\r\nFrom: ceo@example.com\r\nSubject: smuggled\r\n\r\nevil\r\n")

# Non-standard "end of data" sequences seen in SMTP smuggling research.
VARIANTS = [
    b"\n.\r\n", b"\n.\n", b"\r.\r\n", b"\r\n.\r\r\n", b"\r\n\x00.\r\n",
    b"\r\n.\n", b"\r.\r", b"\n.\r", b"\r\n.\r", b"\r.\n", b"\n\n.\n\n",
    b"\r\n.\x00\r\n", b"\r\r\n.\r\r\n",
]


@pytest.fixture
def lenient(tmp_path):
    b = Backend(tmp_path, name="lenient", lenient=True)
    b.start()
    yield b
    b.stop()


def smuggle(port, seq):
    """One session: a message with `seq` + a hidden transaction inside, then
    the real end of data and QUIT. Returns the replies after DATA's 354."""
    with Client(port, timeout=20) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(HEAD + b"before" + seq + SMUGGLED + b"\r\n.\r\n")
        end = c.reply(20)
        quit_ = c.cmd("QUIT")
        # Nothing else may come: no reply to a smuggled command.
        extra = c.reply(1)
        return end, quit_, extra


@pytest.mark.parametrize("seq", VARIANTS, ids=[repr(v) for v in VARIANTS])
def test_normalize_gives_one_message(perimd_factory, lenient, seq):
    p = perimd_factory(relay_backends=lenient.target, relay_domains="example.com",
                       smtpd_forbid_bare_newline="normalize")
    end, quit_, extra = smuggle(p.port, seq)
    assert end is not None and end[0] == 250, end
    assert quit_ is not None and quit_[0] == 221, quit_
    assert extra is None, extra
    msgs = lenient.messages()
    assert len(msgs) == 1, msgs
    st = lenient.stats()
    assert st["transactions"] == 1, st
    assert msgs[0].rcpts == ["b@example.com"]
    # The hidden commands arrived as body text of the one message ...
    assert b"MAIL FROM:<evil@attacker.test>" in msgs[0].data
    # ... and no NUL, stray CR or bare LF ever reaches the backend
    # (the lenient backend stores the message as it arrived).
    assert b"\x00" not in msgs[0].data


@pytest.mark.parametrize("seq", VARIANTS, ids=[repr(v) for v in VARIANTS])
def test_normalize_wire_is_canonical(perimd_factory, tmp_path, seq):
    """A strict backend records the exact bytes: every line ends CRLF."""
    b = Backend(tmp_path, name="strict")
    b.start()
    try:
        p = perimd_factory(relay_backends=b.target, relay_domains="example.com")
        end, _, _ = smuggle(p.port, seq)
        assert end[0] == 250, end
        (m,) = b.messages()
        data = m.data
        assert b"\x00" not in data
        stripped = data.replace(b"\r\n", b"")
        assert b"\r" not in stripped and b"\n" not in stripped, data
    finally:
        b.stop()


@pytest.mark.parametrize("seq", VARIANTS, ids=[repr(v) for v in VARIANTS])
def test_reject_mode_refuses(perimd_factory, lenient, seq):
    p = perimd_factory(relay_backends=lenient.target, relay_domains="example.com",
                       smtpd_forbid_bare_newline="reject")
    end, quit_, extra = smuggle(p.port, seq)
    assert end is not None and end[0] == 550 and end[1].startswith("5.5.2"), end
    assert quit_[0] == 221
    assert extra is None
    assert lenient.messages() == []
    assert lenient.stats()["transactions"] == 0


def test_clean_message_passes_reject_mode(perimd_factory, lenient):
    """reject mode refuses only what is malformed."""
    p = perimd_factory(relay_backends=lenient.target, relay_domains="example.com",
                       smtpd_forbid_bare_newline="reject")
    with Client(p.port, timeout=20) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.com>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(HEAD + b"..a stuffed dot line\r\n.\r\n")
        end = c.reply(20)
    assert end[0] == 250, end
    (m,) = lenient.messages()
    assert b"\r\n.a stuffed dot line\r\n" in m.data
