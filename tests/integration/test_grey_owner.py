"""test_grey_owner.py - a greylist SQLite file that mail_owner cannot
write (left behind by a run as root: owned by root, mode 0600) fails
`perimd -t` and the start, naming the file and the user, as the man page
promises for a database that cannot be opened; it used to pass both (the
checks ran as root) and then every greylisting decision failed
(greylist_fail_action for every recipient). Its -wal file too. The file
given to mail_owner passes."""

import os
import sqlite3
import subprocess

import pytest

from harness import PERIMD_BIN, Client, Perimd
from test_startup import nobody, world_dir  # noqa: F401 - fixtures, shared


def check(p):
    return subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=30)


def test_greylist_file_mail_owner_cannot_write(nobody, world_dir):
    p = Perimd(os.path.join(world_dir, "p"), mail_owner="nobody", greylist="yes",
               relay_backends="[127.0.0.1]:9",
               greylist_delay="60s", greylist_fail_action="tempfail")
    for d in (p.dir, p.params["data_directory"], p.params["body_spool_directory"]):
        os.chmod(d, 0o755)
    db = os.path.join(p.params["data_directory"], "greylist.db")
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE left_by_root (x)")
    con.commit()
    con.close()
    os.chmod(db, 0o600)   # root's
    want = "mail_owner nobody cannot open greylist_database file %s for writing" % db
    r = check(p)
    assert r.returncode == 1 and want in r.stderr.decode(), r.stderr
    with pytest.raises(AssertionError, match="perimd did not start"):
        p.start(timeout=5)
    assert want in p.log_text()
    # Given to mail_owner, but a -wal only root may write: refused too.
    os.chown(db, nobody.pw_uid, nobody.pw_gid)
    with open(db + "-wal", "wb"):
        pass
    os.chmod(db + "-wal", 0o600)
    r = check(p)
    assert r.returncode == 1 and (want.replace(db, db + "-wal")) in r.stderr.decode(), r.stderr
    os.chown(db + "-wal", nobody.pw_uid, nobody.pw_gid)
    r = check(p)
    assert r.returncode == 0, r.stderr
    p.start()
    try:
        with Client(p.port) as c:
            assert c.cmd("EHLO client.test")[0] == 250
            assert c.cmd("MAIL FROM:<alice@sender.example>")[0] == 250
            code, text = c.cmd("RCPT TO:<bob@example.com>")[:2]
            assert code == 451 and "greylisted" in text, (code, text)
        assert "greylist database failing" not in p.log_text()
    finally:
        p.stop()
