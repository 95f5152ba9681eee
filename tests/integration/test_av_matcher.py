"""test_av_matcher.py - perimd's scanner puts every body signature in
libclamav's Aho-Corasick matcher (CL_ENGINE_AC_ONLY, scanner_gen.c); clamd
keeps its default, plain signatures in the Boyer-Moore matcher. Both must
give the same verdict on every message: signatures of each form the
Boyer-Moore matcher took (plain hex strings anywhere, at an exact offset,
at an offset from the end, for mail only) and their near misses, through
perimd with its own scanner and through perimd asking a real clamd, the
same database. smtp-sink is the backend.
"""

import base64
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect  # noqa: E402
from clamd_helper import Clamd  # noqa: E402

# Markers built at run time; no file holds a whole one.
ANY = b"perimd-static-any-" + b"41c7e2"
START = b"perimd-static-start-" + b"9d03b8"
EOF_MARK = b"perimd-static-eof-" + b"5a66f1"
AT100 = b"perimd-static-at100-" + b"c2e719"
MAIL = b"perimd-static-mail-" + b"07fd4a"
EOF_BACK = 40   # EOF_MARK starts this many bytes before the end

SIGS = [
    ("Perimd.Static.Any", 0, "*", ANY),
    ("Perimd.Static.Start", 0, "0", START),
    ("Perimd.Static.Eof", 0, "EOF-%d" % EOF_BACK, EOF_MARK),
    ("Perimd.Static.At100", 0, "100", AT100),
    ("Perimd.Static.Mail", 4, "*", MAIL),
]


def write_db(path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "static.ndb"), "w") as f:
        for name, target, offset, data in SIGS:
            f.write("%s:%d:%s:%s\n" % (name, target, offset, data.hex()))
    return path


def attachment(data):
    b64 = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (b"Subject: matcher\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"mb\"\r\n\r\n"
            b"--mb\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--mb\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--mb--\r\n")


def filler(n, seed):
    """n bytes no marker can match (lower-case letters, never a '-')."""
    return bytes(97 + (seed * 7 + i * 13) % 26 for i in range(n))


def tail_at(mark, back, total):
    """total bytes with mark starting `back` bytes before the end."""
    head = total - back
    return filler(head, 3) + mark + filler(back - len(mark), 4)


# (what, message, the expected name or None for clean)
CASES = [
    ("any offset, plain body", b"Subject: a\r\n\r\nx " + ANY + b" y\r\n", "Perimd.Static.Any"),
    ("offset 0 of an attachment", attachment(START + filler(300, 1)), "Perimd.Static.Start"),
    ("offset 1: a near miss", attachment(b"z" + START + filler(300, 1)), None),
    ("EOF-n of an attachment", attachment(tail_at(EOF_MARK, EOF_BACK, 500)), "Perimd.Static.Eof"),
    ("EOF-(n+1): a near miss", attachment(tail_at(EOF_MARK, EOF_BACK + 1, 500)), None),
    ("offset 100 of an attachment", attachment(filler(100, 5) + AT100 + filler(200, 6)),
     "Perimd.Static.At100"),
    ("offset 99: a near miss", attachment(filler(99, 5) + AT100 + filler(201, 6)), None),
    ("mail target, in a header", b"Subject: " + MAIL + b"\r\n\r\nhello\r\n", "Perimd.Static.Mail"),
    ("mail target, only decoded", attachment(MAIL + filler(300, 2)), None),
    ("mail target in a plain file", attachment(filler(50, 7) + MAIL + filler(50, 8)), None),
]


def send(c, body):
    expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
    expect(c.cmd("RCPT TO:<b@example.com>"), 250)
    expect(c.cmd("DATA"), 354)
    lines = body.split(b"\r\n")
    stuffed = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines)
    c.send(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
    return c.reply(30)


def verdicts(port):
    """{what: the reply} for every case, one session."""
    out = {}
    c = Client(port, timeout=30)
    expect(c.cmd("EHLO client.test"), 250)
    for what, body, _ in CASES:
        out[what] = send(c, body)
    expect(c.cmd("QUIT"), 221)
    c.close()
    return out


def check(replies):
    for what, _, name in CASES:
        r = replies[what]
        if name:
            expect(r, 554, "5.7.1", re.escape(name) + r"\b")
        else:
            assert r is not None and r[0] == 250, (what, r)


@pytest.fixture
def clamd(tmp_path):
    c = Clamd(tmp_path, write_db(str(tmp_path / "clamdb")))
    c.start()
    yield c
    c.stop()


def start(perimd_factory, sink, **params):
    base = {"relay_backends": "[127.0.0.1]:%d" % sink.port, "relay_domains": "example.com",
            "greylist": "no", "reject_unknown_sender_domain": "no", "stats_listen": ""}
    base.update(params)
    return perimd_factory(**base)


def test_static_signatures_as_clamd(perimd_factory, sink_factory, clamd, tmp_path):
    """Every case, through perimd's scanner (Aho-Corasick only) and through
    clamd (its default matchers): the expected verdict from both."""
    sink = sink_factory()
    own = start(perimd_factory, sink, av_scanner="libclamav", av_threads=1,
                clamav_database_directory=write_db(str(tmp_path / "db")))
    asked = start(perimd_factory, sink, av_scanner="clamd:" + clamd.sock)
    mine, theirs = verdicts(own.port), verdicts(asked.port)
    check(theirs)
    check(mine)
    for what, _, _ in CASES:
        assert mine[what][0] == theirs[what][0], (what, mine[what], theirs[what])
    clean = sum(1 for _, _, name in CASES if not name)
    assert sink.wait_count(2 * clean, 15)
