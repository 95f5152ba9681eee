"""test_migration.py - the migration guide (man/perimd-migrate.7) holds:
its Postfix perimeter and its perimd configuration accept and refuse the
same mail.

Every configuration file is taken from the page's source (the literal
block after each '.\\" test: NAME' comment), so the guide and this test
cannot drift. Both run side by side: a private Postfix (smtpd, no
postscreen: no DNS here) with postgrey and clamav-milter in front of a
clamd, and perimd with the same clamd; each relays to its own recording
backend (backend.py). The site's values are replaced alike in both (subst() calls
below; the page's TESTING section lists them); a replacement that no longer finds
its text fails the test, so a changed guide is noticed. Each probe goes
to both from the same client address and must get the same reply class.
"""

import os
import pwd
import grp
import re
import shlex
import shutil
import socket
import subprocess
import time

import pytest

from harness import Client, free_port, stop_proc, wait_for
from postfix_instance import PostfixInstance, postfix_available
from clamd_helper import EICAR, Clamd
from test_av import write_db

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "man",
                    "perimd-migrate.7")
CLIENT = "127.0.0.9"
POSTGREY = shutil.which("postgrey") or "/usr/sbin/postgrey"
MILTER = shutil.which("clamav-milter") or "/usr/sbin/clamav-milter"
CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
DELAY = 2


def page_blocks():
    """{name: text} of the literal blocks marked '.\\" test: name'."""
    out, name, body = {}, None, None
    with open(PAGE) as f:
        for line in f.read().splitlines():
            m = re.match(r'^\.\\" test: (.+)$', line)
            if m:
                name = m.group(1).strip()
            elif name and body is None and line.startswith(".Bd -literal"):
                body = []
            elif body is not None and line == ".Ed":
                out[name] = "\n".join(body) + "\n"
                name, body = None, None
            elif body is not None:
                body.append(line.replace("\\&", "").replace("\\e", "\\"))
    return out


def subst(text, pairs):
    """Each (old, new) must be found: the guide changed otherwise."""
    for old, new in pairs:
        assert old in text, "the guide no longer has %r:\n%s" % (old, text)
        text = text.replace(old, new)
    return text


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Proc:
    """A helper daemon in the foreground, stopped at the end."""

    def __init__(self, argv, port, log):
        self.log = log
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                                     stderr=subprocess.STDOUT)
        if not wait_for(lambda: port_open(port) or self.proc.poll() is not None, 20) \
                or self.proc.poll() is not None:
            raise AssertionError("%s did not start:\n%s" % (argv[0], open(log).read()[-2000:]))

    def stop(self):
        stop_proc(self.proc)


def probe(port, rcpt, body=b"Subject: probe\r\n\r\nhello\r\n"):
    """One transaction from CLIENT: ("rcpt", code) when RCPT was refused,
    else ("data", code of the final dot)."""
    with Client(port, timeout=60, source=CLIENT) as c:
        assert c.banner[0] == 220, c.banner
        assert c.cmd("EHLO client.test")[0] == 250
        r = c.cmd("MAIL FROM:<sender@client.test>")
        assert r[0] == 250, r
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        if r[0] != 250:
            c.cmd("QUIT")
            return "rcpt", r[0], r[1]
        assert c.cmd("DATA")[0] == 354
        c.send(body + b".\r\n")
        r = c.reply(60)
        c.cmd("QUIT")
        return "data", r[0], r[1]


def ehlo_keywords(port):
    with Client(port, timeout=30, source=CLIENT) as c:
        r = c.cmd("EHLO client.test")
        c.cmd("QUIT")
    return [ln.split()[0].upper() for ln in r[1].split("\n") if ln.strip()]


@pytest.mark.skipif(not postfix_available(), reason="postfix not installed")
@pytest.mark.skipif(not all(os.path.exists(p) for p in (POSTGREY, MILTER, CLAMD)),
                    reason="postgrey, clamav-milter or clamd not installed")
def test_guide_same_verdicts(perimd_factory, backend_factory, tmp_path):
    blocks = page_blocks()
    for name in ("postfix main.cf", "postfix master.cf", "postfix role_accounts",
                 "relay_recipients", "postfix transport", "postgrey", "clamav-milter.conf",
                 "perimd.conf", "perimd transport"):
        assert name in blocks, "no block %r in %s" % (name, PAGE)
    # the master.cf shown is Postfix's own syntax: service type private
    # unpriv chroot wakeup maxproc command
    for ln in blocks["postfix master.cf"].splitlines():
        assert len(ln.split()) == 8, ln

    # the site's things, the same on both sides
    clamd = Clamd(tmp_path, write_db(str(tmp_path / "clamdb")))
    clamd.start()
    procs = [clamd]
    pf = None
    try:
        pg_port, milter_port = free_port(), free_port()
        certdir = tmp_path / "tls"
        certdir.mkdir()
        cert, key = str(certdir / "mx1.pem"), str(certdir / "mx1.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=mx1.example.com"],
                       check=True, capture_output=True, timeout=60)
        site = [("/etc/ssl/certs/mx1.pem", cert), ("/etc/ssl/private/mx1.key", key),
                ("message_size_limit = 26214400", "message_size_limit = 100000")]
        back_pf, back_pd = backend_factory(), backend_factory()

        # --- the Postfix perimeter: milter, postgrey, Postfix ------------
        mconf = str(tmp_path / "clamav-milter.conf")
        with open(mconf, "w") as f:
            f.write(subst(blocks["clamav-milter.conf"],
                          [("inet:7357@", "inet:%d@" % milter_port),
                           ("tcp:127.0.0.1:3310", "tcp:127.0.0.1:%d" % clamd.port)]) +
                    "Foreground yes\nLogFile %s\n" % (tmp_path / "milter.log"))
        procs.append(Proc([MILTER, "-c", mconf], milter_port, str(tmp_path / "milter.out")))
        opts = re.match(r'POSTGREY_OPTS="(.*)"', blocks["postgrey"]).group(1)
        opts = subst(opts, [("--inet=127.0.0.1:2525", "--inet=127.0.0.1:%d" % pg_port),
                            ("--delay=300", "--delay=%d" % DELAY)])
        pgdir = tmp_path / "postgrey"
        pgdir.mkdir()
        procs.append(Proc([POSTGREY] + shlex.split(opts) + [
            "--dbdir=%s" % pgdir, "--pidfile=%s" % (pgdir / "pid"),
            "--user=%s" % pwd.getpwuid(os.geteuid()).pw_name,
            "--group=%s" % grp.getgrgid(os.getegid()).gr_name], pg_port,
            str(tmp_path / "postgrey.out")))
        main_cf = subst(blocks["postfix main.cf"], site + [
            ("mynetworks = 127.0.0.0/8", "mynetworks = 127.0.0.1/32"),
            ("/etc/postfix/", "{dir}/"),
            ("inet:127.0.0.1:2525", "inet:127.0.0.1:%d" % pg_port),
            ("inet:127.0.0.1:7357", "inet:127.0.0.1:%d" % milter_port)])
        pf = PostfixInstance(free_port(), main_cf, files={
            "role_accounts": blocks["postfix role_accounts"],
            "relay_recipients": blocks["relay_recipients"],
            "transport": subst(blocks["postfix transport"],
                               [("[10.0.0.5]:25", "[127.0.0.1]:%d" % back_pf.port)])})
        for m in ("role_accounts", "relay_recipients", "transport"):
            pf.postmap(m)
        pf.start()

        # --- perimd, from the guide's perimd.conf ------------------------
        etc = tmp_path / "etc-perimd"
        etc.mkdir()
        (etc / "relay_recipients").write_text(blocks["relay_recipients"])
        (etc / "transport").write_text(subst(blocks["perimd transport"], [
            ("[10.0.0.5]:25", "[127.0.0.1]:%d" % back_pd.port)]))
        conf = subst(blocks["perimd.conf"], site + [
            ("/etc/perimd/", str(etc) + "/"),
            ("clamd:127.0.0.1:3310", "clamd:127.0.0.1:%d" % clamd.port),
            ("greylist_delay = 300s", "greylist_delay = %ds" % DELAY)])
        params = dict(ln.split(" = ", 1) for ln in conf.splitlines() if ln.strip())
        del params["smtpd_listen"]  # the harness's loopback port
        del params["dnsbl_sites"]   # no DNS here
        pd = perimd_factory(**params)

        ports = {"postfix": pf.port, "perimd": pd.port}

        def both(rcpt, body=b"Subject: probe\r\n\r\nhello\r\n"):
            got = {k: probe(p, rcpt, body) for k, p in ports.items()}
            a, b = got["postfix"], got["perimd"]
            print("%s: postfix %s / perimd %s" % (rcpt, a, b))
            assert a[0] == b[0] and a[1] // 100 == b[1] // 100, \
                "%s: postfix %s, perimd %s" % (rcpt, a, b)
            return a[0], a[1] // 100

        # TLS offered by both
        for k, p in ports.items():
            assert "STARTTLS" in ehlo_keywords(p), k
        # a known recipient: greylisted by both (the clock starts here)
        t0 = time.monotonic()
        assert both("alice@example.com") == ("rcpt", 4)
        # role account: past greylisting at once
        assert both("postmaster@example.com") == ("data", 2)
        # refused at RCPT by both
        assert both("nobody@example.com") == ("rcpt", 5)
        assert both("hostmaster@example.com") == ("rcpt", 5)
        assert both("user@elsewhere.test") == ("rcpt", 5)
        # refused at the end of DATA by both
        big = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 1600
        assert both("abuse@example.com", big) == ("data", 5)
        virus = b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n"
        assert both("abuse@example.com", virus) == ("data", 5)
        # the greylisted recipient, retried after the delay
        time.sleep(max(0.0, t0 + DELAY + 1.2 - time.monotonic()))
        assert both("alice@example.com") == ("data", 2)

        # what reached each backend: the same recipients, nothing refused
        def rcpts(b):
            return sorted(r for m in b.messages() for r in m.rcpts)
        want = ["alice@example.com", "postmaster@example.com"]
        assert wait_for(lambda: rcpts(back_pf) == want, 30), \
            (rcpts(back_pf), pf.log_text()[-3000:])
        assert rcpts(back_pd) == want
    finally:
        if pf:
            pf.stop()
        for p in reversed(procs):
            p.stop()
