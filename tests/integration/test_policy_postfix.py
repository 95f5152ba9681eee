"""test_policy_postfix.py - a real Postfix uses perimd as its greylisting
policy server (check_policy_service, the Postfix policy delegation
protocol): the first RCPT is deferred, the retry after greylist_delay is
accepted and the message reaches the sink behind Postfix.

The Postfix instance is private: its own config_directory, queue and data
directories, smtpd on a loopback port, logging to a file; started and
stopped by the test (`postfix -c DIR start|stop`)."""

import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from harness import Client, free_port, known_params, wait_for

SENDER = "alice@sender.example"
RCPT = "bob@example.com"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"




class PrivatePostfix:
    """A Postfix instance under /tmp (the postfix user must reach its
    directories, which pytest's private tmp_path does not allow)."""

    def __init__(self, smtp_port, policy_port, relay_port):
        self.dir = tempfile.mkdtemp(prefix="perimd-pf-")
        os.chmod(self.dir, 0o755)
        self.etc = os.path.join(self.dir, "etc")
        self.log = os.path.join(self.dir, "maillog")
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        with open("/etc/postfix/master.cf.proto") as f:
            master = f.read()
        # smtpd on a loopback port, nothing chrooted (the queue is under /tmp)
        master = re.sub(r"(?m)^smtp\s+inet\s.*$",
                        "127.0.0.1:%d inet n - n - - smtpd" % smtp_port, master)
        master = re.sub(r"(?m)^(\S+\s+(?:unix|unix-dgram|fifo|pass)\s+\S+\s+\S+\s+)y\b", r"\1n",
                        master)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(master)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write("""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
maillog_file = {log}
maillog_file_prefixes = /tmp
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay}
smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:{policy}, permit_mynetworks, reject
""".format(d=self.dir, log=self.log, relay=relay_port, policy=policy_port))
        self.port = smtp_port

    def start(self):
        r = subprocess.run([POSTFIX, "-c", self.etc, "start"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("postfix start: %s %s %s" % (r.stdout, r.stderr, self.log_text()))
        import socket

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    return s.recv(100).startswith(b"220")
            except OSError:
                return False
        if not wait_for(up, 20):
            raise RuntimeError("postfix smtpd not answering: %s" % self.log_text()[-2000:])

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        subprocess.run([POSTFIX, "-c", self.etc, "stop"], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)


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


@pytest.mark.skipif(not os.path.exists("/etc/postfix/master.cf.proto"), reason="postfix not installed")
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
