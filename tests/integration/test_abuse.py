"""test_abuse.py - what the internet sends: slowloris, garbage, endless
pipelining, NUL bytes, 100,000 RCPTs, a huge EHLO, a connection flood,
half-open sockets. Each abusive client must get a bounded reply or a close,
asserted on the replies and on perimd's own counters (/metrics: close
reasons, sessions back to zero, spool bytes back to zero), while a
well-behaved client beside it keeps getting every message through.

Every wait is bounded; no timing is asserted (throughput and memory under
abuse are for the benchmark). smtpd_timeout is small here so the timeouts
come within seconds.
"""

import os
import re
import socket
import threading
import time

import pytest

from harness import Client, known_params

SENDER = "a@client.test"
RCPT = "b@example.com"
TIMEOUT_S = 3


# --- helpers -----------------------------------------------------------------


def metrics(p):
    """{'name{labels}': value} from perimd's /metrics."""
    port = int(p.params["stats_listen"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1].decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def closed(m, reason):
    return m.get('perimd_sessions_closed_total{reason="%s"}' % reason, 0)


def wait_idle(p, timeout=30):
    """Wait until perimd has no session and no spooled byte; return the
    last metrics. Fails with what was left at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(p)
        if m["perimd_sessions_active"] == 0 and m["perimd_spool_bytes"] == 0:
            return m
        if time.monotonic() > deadline:
            raise AssertionError("still %d sessions, %d spool bytes after %ss"
                                 % (m["perimd_sessions_active"], m["perimd_spool_bytes"], timeout))
        time.sleep(0.1)


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class GoodClient:
    """A well-behaved client sending one message after another from its
    own address (127.0.0.1) in a thread, for as long as the abuse lasts."""

    def __init__(self, port):
        self.port = port
        self.sent = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self):
        with Client(self.port, timeout=20) as c:
            steps = [("EHLO good.client.test", 250), ("MAIL FROM:<%s>" % SENDER, 250),
                     ("RCPT TO:<%s>" % RCPT, 250), ("DATA", 354)]
            if not c.banner or c.banner[0] != 220:
                return "banner %r" % (c.banner,)
            for line, code in steps:
                r = c.cmd(line)
                if not r or r[0] != code:
                    return "%s -> %r" % (line, r)
            r = c.cmd("Subject: good %d\r\n\r\nfine\r\n." % self.sent)
            if not r or r[0] != 250:
                return "end of data -> %r" % (r,)
            c.cmd("QUIT")
        return None

    def _run(self):
        while not self._stop.is_set():
            try:
                err = self._one()
            except OSError as e:
                err = "socket: %s" % e
            if err:
                self.failures.append(err)
            else:
                self.sent += 1
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)

    def check(self, sink):
        assert not self._thread.is_alive(), "good client wedged"
        assert not self.failures, "the well-behaved client failed: %r" % self.failures[:5]
        assert self.sent >= 1, "the well-behaved client sent nothing"
        assert sink.wait_count(self.sent, 20), "sink has %d of %d" % (sink.count(), self.sent)


@pytest.fixture
def site(perimd_factory, sink):
    params = {
        "relay_backends": "[127.0.0.1]:%d" % sink.port,
        "smtpd_timeout": "%ds" % TIMEOUT_S,
        "smtpd_soft_error_limit": "3",
        "smtpd_hard_error_limit": "6",
        "smtpd_error_sleep_time": "1s",
        "smtpd_client_connection_count_limit": "10",
    }
    p = perimd_factory(**params)
    return p, sink


def abusive(port, source="127.0.0.2", timeout=20, read_banner=True):
    """A raw client from another loopback address (so the per-client limit
    of the good client at 127.0.0.1 is not shared)."""
    return Client(port, timeout=timeout, read_banner=read_banner, source=source)


def replies_until_close(c, timeout=30):
    """Every reply until the server closes; None in the list marks a
    deadline reached with the connection still open."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.reply(max(0.1, deadline - time.monotonic()))
        if r is None:
            if c.eof:
                return out
            continue
        out.append(r)
    out.append(None)
    return out


def blast(sock, data, seconds, total=None):
    """Send data (repeated up to `total` bytes when given) from a thread
    until all is sent, the peer closes, or `seconds` pass (the peer may stop
    reading: sends then block). Returns (thread, {'sent': bytes})."""
    res = {"sent": 0}
    total = len(data) if total is None else total

    def run():
        sock.settimeout(0.5)
        deadline = time.monotonic() + seconds
        view = memoryview(data)
        while res["sent"] < total and time.monotonic() < deadline:
            off = res["sent"] % len(data)
            n = min(65536, len(data) - off, total - res["sent"])
            try:
                res["sent"] += sock.send(view[off:off + n])
            except socket.timeout:
                continue
            except OSError:
                break

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, res


# --- the abuse ---------------------------------------------------------------


def test_slowloris_gets_timeout(site):
    """One byte at a time, each within smtpd_timeout of the last: the idle
    timer never fires, the per-command deadline does."""
    p, sink = site
    before = metrics(p)
    with GoodClient(p.port) as good, abusive(p.port) as c:
        assert c.banner[0] == 220
        t0 = time.monotonic()
        line = b"EHLO slow.client.test\r\n"
        got = None
        for i in range(len(line)):
            try:
                c.send(line[i:i + 1])
            except OSError:
                break
            r = c.reply(1.0)
            if r is not None:
                got = r
                break
            if time.monotonic() - t0 > 4 * TIMEOUT_S:
                break
        if got is None:
            got = c.reply(TIMEOUT_S * 3)
        assert got is not None and got[0] == 421 and got[1].startswith("4.4.2"), got
        assert c.wait_closed(15), "slowloris still connected"
    good.check(sink)
    m = wait_idle(p)
    assert closed(m, "timeout") >= closed(before, "timeout") + 1


def test_garbage_without_newlines(site):
    """10 MB with no line end: 500 at once, then one more error per 64 KB,
    then the hard limit closes the session (what the client still sends
    during the bounded close is read and thrown away, so the last reply is
    not lost to a reset)."""
    p, sink = site
    before = metrics(p)
    garbage = os.urandom(1024 * 1024).replace(b"\n", b"x")
    total = 10 * 1024 * 1024
    with GoodClient(p.port) as good, abusive(p.port) as c:
        t, res = blast(c.sock, garbage, 40, total)
        rs = replies_until_close(c, 40)
        t.join(45)
    good.check(sink)
    assert rs and rs[-1] is not None, "still open: %r" % rs[-5:]
    codes = [r[0] for r in rs]
    assert codes[0] == 500 and rs[0][1].startswith("5.5.2"), rs[:3]
    assert codes[-1] == 421, rs[-3:]
    assert len(rs) <= 8, rs   # hard limit 6: each error once, then the 421
    m = wait_idle(p)
    assert closed(m, "error_limit") >= closed(before, "error_limit") + 1


def test_pipelining_without_reading(site):
    """A client that pipelines for ever and never reads a reply: perimd
    stops reading once its replies back up, its memory stays bounded, and
    the per-command deadline ends the session."""
    p, sink = site
    before = metrics(p)
    rss0 = rss_kb(p.pid)
    flood = b"NOOP\r\n" * (40 * 1024 * 1024 // 6)
    with GoodClient(p.port) as good, abusive(p.port) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        t, res = blast(c.sock, flood, 3 * TIMEOUT_S)
        t.join(4 * TIMEOUT_S)
        grown = rss_kb(p.pid) - rss0
        # The session ends within smtpd_timeout plus the 10 s flush bound.
        deadline = time.monotonic() + 3 * TIMEOUT_S + 15
        while time.monotonic() < deadline and metrics(p)["perimd_sessions_active"] > 0:
            time.sleep(0.2)
    good.check(sink)
    # perimd stopped taking commands once its replies backed up: the
    # kernel's socket buffers (a few MB of "250 2.0.0 Ok" lines, some
    # 300,000 replies) plus 64 KB of its own; the deadline then ended the
    # session. The flood held 7 million NOOPs. (What the client sends
    # during the bounded close is read and thrown away, so the bytes sent
    # say nothing.)
    m = re.search(r"timeout after (\d+) commands from \[127\.0\.0\.2\] \(client not reading replies\)",
                  p.log_text())
    assert m, "no deadline for the client that does not read"
    assert int(m.group(1)) < 1000000, "perimd ran %s commands for a client not reading" % m.group(1)
    # Socket buffers hold a few MB; perimd itself must not buffer the flood.
    assert grown < 64 * 1024, "perimd grew by %d kB under the flood" % grown
    m = wait_idle(p)
    assert closed(m, "timeout") >= closed(before, "timeout") + 1


def test_nul_bytes(site):
    p, sink = site
    with GoodClient(p.port) as good, abusive(p.port) as c:
        r = c.cmd(b"EH\x00LO nul.test")
        assert r[0] == 500 and r[1].startswith("5.5.2"), r
        assert c.cmd("EHLO nul.test")[0] == 250
        assert c.cmd(b"MAIL FROM:<a\x00b@client.test>")[0] == 500
        assert c.cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
        assert c.cmd("RCPT TO:<%s>" % RCPT)[0] == 250
        assert c.cmd("DATA")[0] == 354
        r = c.cmd(b"Subject: nul\r\n\r\nbody \x00 with nul\r\n\x00\x00\r\n.")
        assert r is not None and r[0] in (250, 550, 554), r
        assert c.cmd("QUIT")[0] == 221
        assert c.wait_closed(10)
    good.check(sink)
    wait_idle(p)


def test_hundred_thousand_recipients(site):
    """100,000 pipelined RCPTs: smtpd_recipient_limit accepted, then 452,
    then (overshoot) errors until the hard limit closes the session."""
    p, sink = site
    before = metrics(p)
    with GoodClient(p.port) as good, abusive(p.port) as c:
        c.cmd("EHLO many.test")
        assert c.cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
        lines = b"".join(b"RCPT TO:<r%d@example.com>\r\n" % i for i in range(100000))
        t, res = blast(c.sock, lines, 60)
        rs = replies_until_close(c, 90)
        t.join(65)
    good.check(sink)
    assert rs and rs[-1] is not None, "still open after %d replies" % len(rs)
    codes = [r[0] for r in rs]
    assert codes[:1000] == [250] * 1000, [c for c in codes[:1000] if c != 250][:5]
    assert codes[1000] == 452 and rs[1000][1].startswith("4.5.3"), rs[1000]
    assert codes[-1] == 421, rs[-3:]
    assert len(rs) < 3000, "%d replies before the close" % len(rs)
    m = wait_idle(p)
    assert closed(m, "error_limit") >= closed(before, "error_limit") + 1


def test_huge_ehlo(site):
    p, sink = site
    with GoodClient(p.port) as good, abusive(p.port) as c:
        r = c.cmd("EHLO " + "h" * 100000)
        assert r[0] == 500 and r[1].startswith("5.5.2"), r
        r = c.cmd("EHLO " + "h" * 300)
        assert r[0] == 501, r
        assert c.cmd("EHLO ok.test")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    good.check(sink)
    wait_idle(p)


def test_connection_flood_from_one_address(site):
    """60 connections from one address: 10 greeted (the per-client limit),
    the rest told 421 4.7.0 and closed; another address still served."""
    p, sink = site
    before = metrics(p)
    conns, codes = [], []
    with GoodClient(p.port) as good:
        try:
            for _ in range(60):
                c = abusive(p.port, source="127.0.0.3")
                conns.append(c)
                codes.append(c.banner[0] if c.banner else None)
        finally:
            for c in conns:
                c.close()
    good.check(sink)
    assert codes.count(220) == 10, codes
    assert codes.count(421) == 50, codes
    m = wait_idle(p)
    key = 'perimd_connections_refused_total{reason="client_limit"}'
    assert m[key] >= before[key] + 50


def test_half_open_silent_client(site):
    """Connects and never says a word: 421 at smtpd_timeout, closed."""
    p, sink = site
    before = metrics(p)
    with GoodClient(p.port) as good, abusive(p.port) as c:
        r = c.reply(TIMEOUT_S * 4)
        assert r is not None and r[0] == 421, r
        assert c.wait_closed(15)
    good.check(sink)
    m = wait_idle(p)
    assert closed(m, "timeout") >= closed(before, "timeout") + 1


def test_half_closed_mid_command_and_mid_data(site):
    """The client shuts down its sending side in the middle of a command,
    and another in the middle of DATA: perimd ends both sessions and the
    half-received body leaves the spool."""
    p, sink = site
    before = metrics(p)
    with GoodClient(p.port) as good:
        with abusive(p.port) as c:
            c.cmd("EHLO half.test")
            c.send(b"MAIL FROM:<a@cli")
            c.sock.shutdown(socket.SHUT_WR)
            assert c.wait_closed(15), "session kept after the client's FIN"
        with abusive(p.port) as c:
            c.cmd("EHLO half.test")
            assert c.cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
            assert c.cmd("RCPT TO:<%s>" % RCPT)[0] == 250
            assert c.cmd("DATA")[0] == 354
            c.send(b"Subject: cut\r\n\r\n" + b"x" * 200000)
            c.sock.shutdown(socket.SHUT_WR)
            assert c.wait_closed(15), "session kept after the client's FIN in DATA"
    good.check(sink)
    m = wait_idle(p)
    assert closed(m, "client_gone") >= closed(before, "client_gone") + 2
    # Nothing of the cut message reached the backend.
    assert not any(b"Subject: cut" in msg for msg in sink.messages())


def test_nofile_limit_below_max_sessions_warns(perimd_factory):
    """max_sessions above what the descriptor hard limit allows: perimd
    says so clearly at start (and still serves)."""
    import resource
    import shutil
    import signal
    import subprocess
    from harness import PERIMD_BIN, wait_banner
    p = perimd_factory(start=False, max_sessions="10000")
    cmd = [PERIMD_BIN, "-f", "-c", p.conf_path]
    if os.geteuid() == 0:
        # root could raise the hard limit itself: take that right away.
        setpriv = shutil.which("setpriv")
        if not setpriv:
            pytest.skip("setpriv (util-linux) missing")
        cmd = [setpriv, "--bounding-set=-sys_resource", "--inh-caps=-sys_resource"] + cmd

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    with open(p.log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=low_limit)
        try:
            wait_banner(p.port, 20, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    text = p.log_text()
    assert "file descriptor limit is 4096, below the" in text, text[-2000:]
    assert "max_sessions = 10000" in text and "raise the hard limit" in text, text[-2000:]
    assert p.sanitizer_report() is None, p.sanitizer_report()
