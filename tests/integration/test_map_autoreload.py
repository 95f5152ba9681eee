"""test_map_autoreload.py - a file: map edited while perimd runs is picked
up without SIGHUP (maps_changed() is polled every 2 s by the main thread);
a broken version keeps the old table and is reported once, not on every
poll."""

import os
import time

from harness import Client


def write(path, text, mtime_offset=0):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    if mtime_offset:
        t = time.time() + mtime_offset
        os.utime(tmp, (t, t))
    os.replace(tmp, path)


def rcpt_code(port, to):
    with Client(port) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        r = c.cmd("RCPT TO:<%s>" % to)
        c.cmd("QUIT")
        return r[0]


def wait_code(port, to, want, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        got = rcpt_code(port, to)
        if got == want or time.monotonic() >= deadline:
            return got
        time.sleep(0.2)


def test_edited_map_reloads_without_sighup(tmp_path, perimd_factory, backend):
    m = tmp_path / "recipients"
    write(m, "alice@example.com\n")
    p = perimd_factory(relay_backends=backend.target, relay_recipient_maps="file:%s" % m)
    assert rcpt_code(p.port, "bob@example.com") == 550
    write(m, "alice@example.com\nbob@example.com\n", mtime_offset=2)
    assert wait_code(p.port, "bob@example.com", 250) == 250
    p.wait_log(r"a map file changed: reloading")
    # A broken version: the old table stays, the error is logged once.
    write(m, "# dave\n\n  dave@example.com\n", mtime_offset=4)
    p.wait_log(r"not reloaded, keeping the previous table: \S+recipients:3")
    assert rcpt_code(p.port, "bob@example.com") == 250
    assert rcpt_code(p.port, "dave@example.com") == 550
    # Two more polls pass: no second report for the same broken file.
    time.sleep(4.5)
    assert p.log_text().count("keeping the previous table") == 1
