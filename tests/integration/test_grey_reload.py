"""test_grey_reload.py - a reload (SIGHUP) that points greylist_database
at a store that cannot work (a missing directory, a missing MySQL file)
is refused like such a start, and greylisting goes on with the running
store; with greylist_fail_action = accept, taking it would have let every
recipient through without greylisting until someone read the log."""

import os
import re
import signal

from harness import Client

RCPT = "bob@example.com"
GREYLISTED = r"4\.7\.1 <%s>: greylisted, try again in \d+ seconds" % re.escape(RCPT)


def rcpt(p, to=RCPT):
    with Client(p.port, source="127.0.0.2") as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<alice@sender.example>")[0] == 250
        r = c.cmd("RCPT TO:<%s>" % to)
        c.cmd("QUIT")
        return r[:2]


def reload_with(p, **params):
    """Rewrite perimd.conf with params changed, SIGHUP, and wait for the
    reload's verdict (the log line it adds)."""
    conf = dict(p.params, **params)
    with open(p.conf_path, "w") as f:
        for k, v in conf.items():
            f.write("%s = %s\n" % (k, v))
    n = len(re.findall(r"configuration reloaded|reload refused", p.log_text()))
    os.kill(p.pid, signal.SIGHUP)
    p.wait_log(r"(?s)((configuration reloaded|reload refused).*){%d}" % (n + 1))


def test_reload_to_an_unusable_greylist_database_is_refused(perimd_factory, sink, tmp_path):
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, greylist="yes",
                       greylist_delay="60s", greylist_auto_whitelist_count="0",
                       greylist_fail_action="accept")
    code, text = rcpt(p)
    assert code == 451 and re.match(GREYLISTED, text), text
    missing = tmp_path / "missing" / "dir"
    reload_with(p, greylist_database="sqlite:%s/g.db" % missing)
    p.wait_log(r"reload refused, keeping the running configuration: (\S+:\d+: )?"
               r"greylist_database: %s/g\.db: cannot be created" % re.escape(str(missing)))
    code, text = rcpt(p)
    assert code == 451 and re.match(GREYLISTED, text), text
    reload_with(p, greylist_database="mysql:%s/none.cf" % tmp_path)
    p.wait_log(r"reload refused, keeping the running configuration: (\S+:\d+: )?"
               r"greylist_database: mysql: .*none\.cf")
    code, text = rcpt(p)
    assert code == 451 and re.match(GREYLISTED, text), text
    assert "greylist database failing" not in p.log_text()
    # A store that works is taken: a new database, the triplet new in it.
    other = tmp_path / "other.db"
    reload_with(p, greylist_database="sqlite:%s" % other)
    p.wait_log(r"configuration reloaded")
    code, text = rcpt(p, to="carol@example.com")
    assert code == 451 and "greylisted" in text, text
    assert other.exists()
    assert p.sanitizer_report() is None
