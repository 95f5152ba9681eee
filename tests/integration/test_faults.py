"""test_faults.py - the moving parts die under load and come back: the
backend (killed and restarted during an smtp-source run), the DNS server
and clamd. Throughout, every message a client got 250 for is at the
backend, nothing is stored twice without a retry by the client (Message-Ids
are unique), refusals are temporary (4xx: the client will retry), and
perimd recovers without a restart.

The scanner process killed under load is test_av.py::test_scanner_killed.
MariaDB (the greylist store) is killed with SIGKILL during an smtp-source
run and restarted on the same port and datadir: with greylist_fail_action =
tempfail the RCPTs that need the database get 451 4.3.0 while it is down,
with accept they pass; either way perimd reconnects by itself.
"""

import hashlib
import os
import re
import socket
import subprocess
import threading
import time

import pytest

from backend import Backend
from harness import Client, _tool

SENDER = "a@client.test"
RCPT = "b@example.com"


def metrics(p):
    port = int(p.params["stats_listen"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    out = {}
    for line in data.split(b"\r\n\r\n", 1)[1].decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class TaggedLoad:
    """Client threads sending tagged messages until stopped; each result is
    (tag, stage, code, text) with stage "rcpt" or "data"."""

    def __init__(self, port, threads=3, sender=SENDER, rcpt=None, pause=0.0, prefix="t"):
        self.port, self.sender, self.prefix = port, sender, prefix
        # rcpt(tag) -> the recipient of that message; pause: seconds
        # between a thread's messages (bounds how many tags a run uses).
        self.rcpt = rcpt or (lambda tag: RCPT)
        self.pause = pause
        self.results, self.errors = [], []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]
        self.n = 0

    def _one(self, c, tag):
        if c.cmd("MAIL FROM:<%s>" % self.sender)[0] != 250:
            raise AssertionError("MAIL refused")
        r = c.cmd("RCPT TO:<%s>" % self.rcpt(tag), timeout=30)
        if r is None:
            raise AssertionError("no reply to RCPT (%s)" % tag)
        if r[0] != 250:
            c.cmd("RSET")
            return ("rcpt", r[0], r[1])
        r = c.cmd("DATA")
        if r is None or r[0] != 354:
            raise AssertionError("DATA -> %r" % (r,))
        r = c.cmd("Message-Id: <%s@faults.test>\r\nSubject: %s\r\n\r\nbody\r\n." % (tag, tag),
                  timeout=60)
        if r is None:
            raise AssertionError("no reply after the final dot (%s)" % tag)
        return ("data", r[0], r[1])

    def _run(self, w):
        i = 0
        while not self.stop_ev.is_set():
            try:
                with Client(self.port, timeout=30) as c:
                    if c.cmd("EHLO w%d.faults.test" % w)[0] != 250:
                        raise AssertionError("EHLO refused")
                    for _ in range(5):
                        tag = "%s%d-%d" % (self.prefix, w, i)
                        i += 1
                        stage, code, text = self._one(c, tag)
                        with self.lock:
                            self.results.append((tag, stage, code, text))
                        if self.stop_ev.wait(self.pause) if self.pause else self.stop_ev.is_set():
                            break
                    c.cmd("QUIT")
            except (OSError, AssertionError) as e:
                self.errors.append(repr(e))
                return

    def accepted(self):
        return [t for t, st, code, _ in self.results if st == "data" and code == 250]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for t in self.threads:
            t.join(90)

    def check(self):
        assert not [t for t in self.threads if t.is_alive()], "a client thread is stuck"
        assert not self.errors, self.errors[:5]
        permanent = [r for r in self.results if r[2] >= 500]
        assert not permanent, "permanent refusals during a fault: %r" % permanent[:5]


def message_ids(msgs):
    out = []
    for m in msgs:
        mm = re.search(rb"^Message-Id: (\S+)", m.data, re.I | re.M)
        assert mm, m.data[:300]
        out.append(mm.group(1).decode())
    return out


def test_backend_killed_and_restarted_during_smtp_source(perimd_factory, tmp_path):
    b1 = Backend(tmp_path, name="b1").start()
    p = perimd_factory(relay_backends=b1.target, smtpd_client_connection_count_limit="0",
                       relay_connect_timeout="2s", relay_timeout="5s",
                       relay_data_done_timeout="5s", relay_pool_wait="5s")
    n = 1200
    src = subprocess.Popen([_tool("smtp-source"), "-A", "-s", "10", "-m", str(n), "-l", "1024",
                            "-f", SENDER, "-t", RCPT, "-M", "client.test",
                            "127.0.0.1:%d" % p.port],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    b2 = None
    try:
        with TaggedLoad(p.port) as load:
            assert wait_for(lambda: len(b1.messages()) >= 150, 60), "backend got too little"
            b1.kill()
            time.sleep(1.0)
            # The same address and port, a fresh process (and spool).
            b2 = Backend(tmp_path, name="b2", port=b1.port).start()
            out, _ = src.communicate(timeout=300)
            # perimd recovered by itself: the tagged clients get through again.
            seen = len(load.accepted())
            assert wait_for(lambda: len(load.accepted()) > seen + 5, 30), \
                "no message accepted after the backend came back"
        load.check()
    finally:
        if src.poll() is None:
            src.kill()
            src.wait(10)
        b1.stop()
        if b2:
            b2.stop()
    assert src.returncode == 0, out.decode(errors="replace")[-2000:]
    stored = b1.messages() + b2.messages()
    ids = message_ids(stored)
    dups = {i for i in ids if ids.count(i) > 1}
    assert not dups, "stored twice: %r" % sorted(dups)[:5]
    # Every tagged message that got 250 is at a backend ...
    missing = set("<%s@faults.test>" % t for t in load.accepted()) - set(ids)
    assert not missing, sorted(missing)[:5]
    # ... and so is every 250 perimd gave (smtp-source's included): a
    # backend may hold a message whose 250 the kill cut off, never fewer.
    relayed = metrics(p)["perimd_messages_relayed_total"]
    assert len(stored) >= relayed, (len(stored), relayed)
    assert len(stored) - relayed <= 20, (len(stored), relayed)
    assert len(b2.messages()) > 0


def test_dns_server_killed_and_restarted(perimd_factory, sink, tmp_path):
    test_dns = pytest.importorskip("test_dns")
    if not os.path.exists(test_dns.DNSMASQ):
        pytest.skip("dnsmasq missing")
    d = test_dns.Dnsmasq(tmp_path / "dns").start()
    try:
        p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port,
                           dns_servers="127.0.0.1:%d" % d.port, dns_timeout="500ms",
                           dns_retries="1", dns_cache_size="0",
                           reject_unknown_sender_domain="yes")
        with TaggedLoad(p.port, sender="a@mx.test") as load:
            assert wait_for(lambda: len(load.accepted()) >= 10, 30)
            d.proc.kill()
            d.proc.wait(10)
            before = len(load.results)
            assert wait_for(lambda: len(load.results) >= before + 6, 30)
            d.start()
            seen = len(load.accepted())
            assert wait_for(lambda: len(load.accepted()) > seen + 5, 30), \
                "nothing accepted after the DNS server came back"
        load.check()
    finally:
        d.stop()
    temp = [r for r in load.results if r[1] == "rcpt" and 400 <= r[2] < 500]
    assert temp, "no temporary refusal while the DNS server was down"
    assert sink.wait_count(len(load.accepted()), 20)
    assert sink.count() == len(load.accepted())
    assert p.proc.poll() is None


def test_clamd_killed_and_restarted(perimd_factory, sink, tmp_path):
    test_av = pytest.importorskip("test_av")
    import shutil
    if not (shutil.which("clamd") or os.path.exists("/usr/sbin/clamd")):
        pytest.skip("clamd missing")
    c = test_av.Clamd(tmp_path, test_av.write_db(str(tmp_path / "clamdb"))).start()
    try:
        p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port,
                           av_scanner="clamd:127.0.0.1:%d" % c.port, av_timeout="5s")
        with TaggedLoad(p.port) as load:
            assert wait_for(lambda: len(load.accepted()) >= 10, 60)
            c.proc.kill()
            c.proc.wait(10)
            before = len(load.results)
            assert wait_for(lambda: len(load.results) >= before + 6, 30)
            c.start()
            seen = len(load.accepted())
            assert wait_for(lambda: len(load.accepted()) > seen + 5, 30), \
                "nothing accepted after clamd came back"
        load.check()
    finally:
        c.stop()
    down = [r for r in load.results if r[1] == "data" and r[2] == 451]
    assert down and all(r[3].startswith("4.3.0") for r in down), down[:3]
    assert sink.wait_count(len(load.accepted()), 20)
    assert sink.count() == len(load.accepted())


# ---- MariaDB (the greylist store) ----------------------------------------

def grey_triplet_key(net, sender, rcpt):
    """perimd's triplet key (grey.c key_hash, GREY_NORM_VERSION 1) for a
    sender that normalises to itself: SHA-256 over "1t" and the
    NUL-terminated network, sender and lower-cased recipient, 16 bytes."""
    h = hashlib.sha256(b"1t")
    for part in (net, sender, rcpt.lower()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:32].upper()


def mariadb_query(m, sql):
    """Run sql (read from stdin: no argument length limit) on m's socket;
    its tab-separated output."""
    r = subprocess.run(["mariadb", "--no-defaults", "-S", m.sock, "-u", "root", "-N", "-B",
                        "greyfault"], input=sql.encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    assert r.returncode == 0, r.stdout.decode(errors="replace")[-2000:]
    return r.stdout.decode()


@pytest.mark.parametrize("action", ["tempfail", "accept"])
def test_mariadb_killed_and_restarted_during_smtp_source(perimd_factory, tmp_path, action):
    test_grey = pytest.importorskip("test_grey")
    if not test_grey.INSTALL_DB or not os.path.exists(test_grey.MARIADBD):
        pytest.skip("mariadb-server is not installed")
    m = test_grey.MariaDB(tmp_path / "mariadb")
    m.install()
    m.start()
    m.sql("CREATE DATABASE greyfault")
    cf = tmp_path / "grey-mysql.cf"
    cf.write_text("hosts = 127.0.0.1\nport = %d\nuser = root\npassword =\ndbname = greyfault\n"
                  % m.port)
    b = Backend(tmp_path, name="b").start()
    src = None
    try:
        p = perimd_factory(relay_backends=b.target, smtpd_client_connection_count_limit="0",
                           greylist="yes", greylist_delay="1s",
                           greylist_database="mysql:%s" % cf, greylist_fail_action=action,
                           greylist_auto_whitelist_count="0")
        # smtp-source's triplet (127.0.0.1, SENDER, RCPT) passes the real
        # way: greylisted, then accepted after the delay.
        with Client(p.port) as c:
            assert c.cmd("EHLO client.test")[0] == 250
            assert c.cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
            r = c.cmd("RCPT TO:<%s>" % RCPT)
            assert r[0] == 451 and "greylisted" in r[1], r
            time.sleep(1.1)
            assert c.cmd("RSET")[0] == 250
            assert c.cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
            assert c.cmd("RCPT TO:<%s>" % RCPT)[0] == 250
            c.cmd("QUIT")
        net = "127.0.0.0/24"
        key = grey_triplet_key(net, SENDER, RCPT)
        assert mariadb_query(m, "SELECT HEX(k), passed FROM grey").split() == [key, "1"], \
            "the test's key derivation no longer matches grey.c"
        # The tagged clients' triplets (one recipient per message, so each
        # RCPT is a database round trip: perimd caches passes) are passed
        # beforehand, straight in the table.
        tags = ["t%d-%d" % (w, i) for w in range(3) for i in range(1500)]
        rows = ",".join("(X'%s', @n - 60000, @n - 60000, @n - 60000, 1, @n + 86400000)"
                        % grey_triplet_key(net, SENDER, "%s@example.com" % t) for t in tags)
        mariadb_query(m, "SET @n = CAST(ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED);"
                      "INSERT INTO grey (k, first, last, prev, passed, expires) VALUES %s;" % rows)
        n = 3000
        src = subprocess.Popen([_tool("smtp-source"), "-A", "-s", "10", "-m", str(n),
                                "-l", "1024", "-f", SENDER, "-t", RCPT, "-M", "client.test",
                                "127.0.0.1:%d" % p.port],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        with TaggedLoad(p.port, rcpt=lambda tag: "%s@example.com" % tag, pause=0.01) as load:
            assert wait_for(lambda: len(load.accepted()) >= 20 and len(b.messages()) >= 100, 30), \
                "too little got through before the kill"
            assert src.poll() is None, "smtp-source finished before the kill: raise n"
            m.proc.kill()   # SIGKILL: no goodbye to perimd's connections
            m.proc.wait(10)
            m.proc = None
            before = len(load.results)
            assert wait_for(lambda: len(load.results) >= before + 10, 30)
            p.wait_log(r"greylist database failing", timeout=10)
            # Back on the same port and datadir (InnoDB crash recovery).
            m.start()
            seen = len(load.accepted())
            assert wait_for(lambda: len(load.accepted()) > seen + 10, 30), \
                "nothing accepted after MariaDB came back"
            p.wait_log(r"greylist database working again", timeout=10)
            out, _ = src.communicate(timeout=120)
        load.check()
    finally:
        if src is not None and src.poll() is None:
            src.kill()
            src.wait(10)
        b.stop()
        m.stop()
    assert src.returncode == 0, out.decode(errors="replace")[-2000:]
    used = set(t for t, _, _, _ in load.results)
    assert used <= set(tags), "the load outran the passed triplets: raise the count"
    refused = [r for r in load.results if r[1] == "rcpt"]
    if action == "tempfail":
        # Only the outage refused anything, temporarily, as a database failure.
        assert refused, "no RCPT met the outage"
        assert all(r[2] == 451 and r[3].startswith("4.3.0") for r in refused), refused[:5]
    else:
        assert not refused, refused[:5]
    assert not [r for r in load.results if r[1] == "data" and r[2] != 250]
    # Every 250 is at the backend, once: smtp-source's n (it exits non-zero
    # on any refusal) and the tagged clients'.
    stored = b.messages()
    ids = message_ids(stored)
    dups = {i for i in ids if ids.count(i) > 1}
    assert not dups, "stored twice: %r" % sorted(dups)[:5]
    missing = set("<%s@faults.test>" % t for t in load.accepted()) - set(ids)
    assert not missing, sorted(missing)[:5]
    assert len(stored) == n + len(load.accepted()), (len(stored), n, len(load.accepted()))
    mt = metrics(p)
    assert mt["perimd_messages_relayed_total"] == len(stored)
    assert mt["perimd_greylist_db_errors_total"] >= max(1, len(refused))
    assert p.proc.poll() is None
