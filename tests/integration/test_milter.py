"""test_milter.py - perimd as a milter host (smtpd_milters), end to end:
the real binary, a milter written for the test (milter_peer.py, the wire
protocol spoken directly) and real filters (clamav-milter with clamd,
opendkim, rspamd) started here, backend.py as the backend. What the
backend stores is compared with what each milter asked for.
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Client, expect, wait_for  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Peer:
    """milter_peer.py as a process; events() are the commands it saw."""

    def __init__(self, tmp_path, pflags="0", actions="1ff", unix=False, at_connect=None):
        self.events_path = str(tmp_path / ("milter-events-%s-%d.jsonl" % (pflags, unix)))
        open(self.events_path, "w").close()
        sock = str(tmp_path / "milter.sock")
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(HERE, "milter_peer.py"), "--events",
             self.events_path, "--pflags", pflags, "--actions", actions] +
            (["--unix", sock] if unix else []) + (["--at-connect", at_connect] if at_connect else []),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        assert line.startswith("READY port="), line
        self.port = int(line.split("=")[1])
        self.spec = "unix:" + sock if unix else "inet:127.0.0.1:%d" % self.port

    def events(self):
        with open(self.events_path) as f:
            return [json.loads(l) for l in f if l.strip()]

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def peer(tmp_path):
    p = Peer(tmp_path)
    yield p
    p.stop()


def start(perimd_factory, backend, milters, **params):
    conf = dict(relay_backends=backend.target, smtpd_milters=milters,
                milter_command_timeout="2s", milter_content_timeout="3s",
                milter_connect_timeout="2s")
    conf.update(params)
    return perimd_factory(**conf)


def send(port, sender, rcpts, body, expect_rcpt=None):
    """One session, one transaction; the reply to the final dot (or to the
    command that ended it)."""
    with Client(port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        r = c.cmd("MAIL FROM:<%s>" % sender)
        if r[0] != 250:
            return r
        ok = 0
        for i, rc in enumerate(rcpts):
            r = c.cmd("RCPT TO:<%s>" % rc)
            if expect_rcpt:
                assert r[0] == expect_rcpt[i], (rc, r)
            ok += r[0] == 250
        if not ok:
            return r
        expect(c.cmd("DATA"), 354)
        c.send(body + b".\r\n")
        return c.reply(timeout=20)


MSG = (b"Subject: hello\r\nX-Folded: a\r\n\tb\r\n  c\r\nX-Remove-Me: bye\r\nX-Twice: one\r\nX-Twice: two\r\n"
       b"From: a@client.test\r\n\r\noriginal body\r\n")


def headers_of(data):
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    return head.split("\r\n")


def metric(p, name):
    port = p.params["stats_listen"].rsplit(":", 1)[1]
    text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % port, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_every_modification(perimd_factory, backend, peer):
    p = start(perimd_factory, backend, peer.spec)
    r = send(p.port, "mods@client.test", ["keep@example.com", "del@example.com"], MSG)
    expect(r, 250)
    msgs = backend.messages()
    assert len(msgs) == 1
    m = msgs[0]
    assert m.mail_from == "newsender@example.org"
    assert sorted(m.rcpts) == ["added@example.com", "keep@example.com", "par@example.com"]
    hdrs = headers_of(m.data)
    assert hdrs[0] == "X-Inserted: at the top"
    assert hdrs[1].startswith("Received: from client.test")
    assert "Subject: changed subject" in hdrs
    assert "Subject: hello" not in hdrs
    assert not any(h.startswith("X-Remove-Me") for h in hdrs)
    assert "X-Twice: one" in hdrs and "X-Twice: second changed" in hdrs
    assert hdrs[-1] == "X-Added: yes, added"
    body = m.data.split(b"\r\n\r\n", 1)[1]
    assert body == b"replaced body line 1\r\nreplaced body line 2\r\n.leading dot\r\n"
    log = p.log_text()
    for what in ("add header X-Added", "insert header 0 X-Inserted", "change header 1 Subject",
                 "delete header 1 X-Remove-Me", "replace body", "add recipient <added@example.com>",
                 "delete recipient <del@example.com>", "change sender <newsender@example.org>"):
        assert what in log, what
    # The milter saw the stages in order, with perimd's macros, and the
    # transaction's end (SMFIC_QUIT, sent once the client has its reply).
    assert wait_for(lambda: peer.events()[-1]["cmd"] == "Q")
    ev = peer.events()
    cmds = [e["cmd"] for e in ev]
    assert cmds[:4] == ["O", "C", "H", "M"], cmds
    assert cmds[4:7] == ["R", "R", "T"] and cmds[7] == "L" and cmds[-4:] == ["B", "E", "headers", "Q"], cmds
    assert cmds.index("N") > cmds.index("L") and cmds.index("B") > cmds.index("N")
    mail = ev[3]
    msgid = mail["macros"]["i"]
    assert mail["args"][0] == "<mods@client.test>"
    assert mail["macros"]["{mail_addr}"] == "mods@client.test"
    assert ("%s: milter" % msgid) in log
    conn = next(e for e in ev if e["cmd"] == "C")
    assert conn["macros"]["j"] == "perimd.test"
    assert conn["macros"]["{daemon_addr}"] == "127.0.0.1"
    assert "[127.0.0.1]" in conn["macros"]["_"]
    rcpt = [e for e in ev if e["cmd"] == "R"]
    assert [e["macros"]["{rcpt_addr}"] for e in rcpt] == ["keep@example.com", "del@example.com"]
    seen = next(e for e in ev if e["cmd"] == "headers")
    assert ["Subject", "hello"] in seen["headers"]
    assert seen["body"] == "original body\r\n"
    assert ["X-Folded", "a\n\tb\n  c"] in seen["headers"]  # folded lines joined by LF
    assert b"\r\nX-Folded: a\r\n\tb\r\n  c\r\nX-Twice: one\r\n" in m.data  # kept as received


def test_verdicts(perimd_factory, backend, peer):
    p = start(perimd_factory, backend, peer.spec)
    # discard: 250, nothing relayed, counted
    expect(send(p.port, "discard@client.test", ["a@example.com"], MSG), 250)
    expect(send(p.port, "discardmail@client.test", ["a@example.com"], MSG), 250)
    assert wait_for(lambda: metric(p, "perimd_messages_discarded_total") == 2)
    assert "discarded by milter" in p.log_text()
    # custom multi-line reply
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<reply@client.test>"), 250)
        expect(c.cmd("RCPT TO:<a@example.com>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(MSG + b".\r\n")
        r = c.reply(timeout=20)
        assert r == (550, "5.7.1 first line\n5.7.1 second line"), r
    # tempfail at end of message; reject at MAIL
    expect(send(p.port, "tempfail@client.test", ["a@example.com"], MSG), 451, "4.7.1")
    expect(send(p.port, "rejectmail@client.test", ["a@example.com"], MSG), 550, "5.7.1")
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<rejectdata@client.test>"), 250)
        expect(c.cmd("RCPT TO:<a@example.com>"), 250)
        expect(c.cmd("DATA"), 554, "5.7.0", "no data today")
        expect(c.cmd("RSET"), 250)
    # an invalid reply code is a broken milter: milter_default_action
    expect(send(p.port, "badreply@client.test", ["a@example.com"], MSG), 451, "4.3.5")
    # quarantine: perimd has no queue to hold it in, so it is refused
    expect(send(p.port, "quarantine@client.test", ["a@example.com"], MSG), 554, "5.7.1",
           "quarantined")
    assert backend.messages() == []
    # RCPT refusals, pipelined, and the role account exemption
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        c.send(b"MAIL FROM:<rejectrcpt@client.test>\r\nRCPT TO:<a@example.com>\r\n"
               b"RCPT TO:<postmaster@example.com>\r\nDATA\r\n")
        expect(c.reply(), 250)
        expect(c.reply(), 550, "5.7.1")
        expect(c.reply(), 250)
        expect(c.reply(), 354)
        c.send(MSG + b".\r\n")
        expect(c.reply(timeout=20), 250)
    msgs = backend.messages()
    assert len(msgs) == 1 and msgs[0].rcpts == ["postmaster@example.com"]
    assert any(h == "X-Peer: seen" for h in headers_of(msgs[0].data))
    r = send(p.port, "tempme@client.test", ["a@example.com"], MSG)
    expect(r, 450, "4.2.0")


def test_added_recipient_relay_control(perimd_factory, backend, peer):
    p = start(perimd_factory, backend, peer.spec)
    expect(send(p.port, "relay@client.test", ["a@example.com"], MSG), 250)
    m = backend.messages()[0]
    assert sorted(m.rcpts) == ["a@example.com", "added@example.com"]
    assert "added recipient <x@elsewhere.org> refused: relay access denied" in p.log_text()



def test_added_recipient_other_backend(perimd_factory, backend_factory, peer, tmp_path):
    b1, b2 = backend_factory(), backend_factory()
    tmap = tmp_path / "transport"
    tmap.write_text("other.example  %s\n" % b2.target)
    p = start(perimd_factory, b1, peer.spec, relay_domains="example.com, other.example",
              transport_maps="file:%s" % tmap)
    expect(send(p.port, "otherroute@client.test", ["a@example.com"], MSG), 451, "4.3.5",
           "routes to another backend")
    assert b1.messages() == [] and b2.messages() == []


def test_failures_default_action(perimd_factory, backend, peer, tmp_path):
    p = start(perimd_factory, backend, peer.spec)
    t0 = time.monotonic()
    expect(send(p.port, "hang@client.test", ["a@example.com"], MSG), 451, "4.3.5")
    assert time.monotonic() - t0 < 10
    expect(send(p.port, "broken@client.test", ["a@example.com"], MSG), 451, "4.3.5")
    log = p.log_text()
    assert "read: timeout" in log and "bad packet length" in log
    assert metric(p, "perimd_milter_errors_total") == 2
    # broken at the first RCPT (a role account: exempt); the milter stays
    # failed for the transaction: the next RCPT and the message get the
    # default action too, nothing passes unfiltered
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<brokenrcpt@client.test>"), 250)
        expect(c.cmd("RCPT TO:<postmaster@example.com>"), 250)
        expect(c.cmd("RCPT TO:<a@example.com>"), 451, "4.3.5")
        expect(c.cmd("DATA"), 451, "4.3.5")
    assert backend.messages() == []
    # a milter that is not there: tempfail, reject, accept
    from harness import free_port
    down = "inet:127.0.0.1:%d" % free_port()
    p2 = start(perimd_factory, backend, down)
    expect(send(p2.port, "a@client.test", ["a@example.com"], MSG), 451, "4.3.5")
    p3 = start(perimd_factory, backend, down, milter_default_action="reject")
    expect(send(p3.port, "a@client.test", ["a@example.com"], MSG), 550, "5.5.0")
    p4 = start(perimd_factory, backend, down + ", " + peer.spec, milter_default_action="accept")
    expect(send(p4.port, "a@client.test", ["a@example.com"], MSG), 250)
    assert any("X-Peer: seen" == h for h in headers_of(backend.messages()[0].data))
    assert backend.messages()[0].rcpts == ["a@example.com"]


def test_negotiated_skips(perimd_factory, backend, tmp_path):
    # NOCONNECT|NOHELO|NOBODY|NOHDRS + NR_RCPT: those stages are not sent,
    # RCPT gets no reply read
    peer = Peer(tmp_path, pflags=hex(0x1 | 0x2 | 0x10 | 0x20 | 0x8000)[2:])
    try:
        p = start(perimd_factory, backend, peer.spec)
        expect(send(p.port, "plain@client.test", ["a@example.com", "b@example.com"], MSG), 250)
        cmds = [e["cmd"] for e in peer.events()]
        assert "C" not in cmds and "H" not in cmds and "B" not in cmds and "L" not in cmds
        assert cmds.count("R") == 2 and "E" in cmds and "N" in cmds
        assert sorted(backend.messages()[0].rcpts) == ["a@example.com", "b@example.com"]
    finally:
        peer.stop()


def test_protocol_version_2(perimd_factory, backend, peer):
    # milter_protocol = 2: version 2 offered with its stages only (no
    # no-reply flags), and no DATA command (it came with version 4)
    p = start(perimd_factory, backend, peer.spec, milter_protocol="2")
    expect(send(p.port, "plain@client.test", ["a@example.com"], MSG), 250)
    ev = peer.events()
    opt = ev[0]
    assert opt["cmd"] == "O" and opt["version"] == 2 and opt["pflags"] == 0x7f, opt
    cmds = [e["cmd"] for e in ev]
    assert "T" not in cmds and "M" in cmds and "E" in cmds, cmds
    assert "X-Peer: seen" in headers_of(backend.messages()[0].data)


def test_idle_sessions_hold_no_milter(perimd_factory, backend, peer):
    p = start(perimd_factory, backend, peer.spec)
    clients = [Client(p.port) for _ in range(20)]
    for c in clients:
        expect(c.cmd("EHLO client.test"), 250)
    assert [e for e in peer.events() if e["cmd"] == "O"] == []
    for c in clients:
        c.close()


# ---- real filters --------------------------------------------------------


def wait_port(port, proc, logf, timeout=60):
    """Until something listens on 127.0.0.1:port (proc must stay alive)."""
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("exited %s:\n%s" % (proc.returncode, _tail(logf)))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("not listening on %d:\n%s" % (port, _tail(logf)))


def _tail(path):
    try:
        return open(path, errors="replace").read()[-3000:]
    except OSError:
        return ""


def stop_proc(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_clamav_milter(perimd_factory, backend, tmp_path):
    from harness import free_port
    from test_av import Clamd, EICAR, write_db
    clamd = Clamd(tmp_path, write_db(str(tmp_path / "clamdb"))).start()
    d = tmp_path / "clamav-milter"
    d.mkdir()
    port = free_port()
    conf, log = str(d / "clamav-milter.conf"), str(d / "clamav-milter.log")
    with open(conf, "w") as f:
        f.write("Foreground yes\nMilterSocket inet:%d@127.0.0.1\nClamdSocket unix:%s\n"
                "OnInfected Reject\nOnFail Defer\nAddHeader Replace\nLogFile %s\n"
                "LogVerbose yes\nPidFile %s\n%s"
                % (port, clamd.sock, log, d / "pid", "User root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen(["/usr/sbin/clamav-milter", "-c", conf], stdin=subprocess.DEVNULL,
                            stdout=open(str(d / "out"), "w"), stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, str(d / "out"))
        p = start(perimd_factory, backend, "inet:127.0.0.1:%d" % port,
                  milter_content_timeout="30s")
        r = send(p.port, "a@client.test", ["a@example.com"],
                 b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n")
        expect(r, 550)
        assert backend.messages() == []
        expect(send(p.port, "a@client.test", ["a@example.com"], MSG), 250)
        m = backend.messages()
        assert len(m) == 1
        hdrs = headers_of(m[0].data)
        assert any(h.startswith("X-Virus-Scanned: clamav-milter") for h in hdrs), hdrs
        assert any(h.startswith("X-Virus-Status: Clean") for h in hdrs), hdrs
    finally:
        stop_proc(proc)
        clamd.stop()


def test_scan_sees_the_milters_copy(perimd_factory, backend, peer, tmp_path):
    """Milters first, then the scan of the copy they left: a body a milter
    replaces with EICAR is refused by av_scanner (a real clamd); the
    original copy passes."""
    from test_av import Clamd, write_db
    clamd = Clamd(tmp_path, write_db(str(tmp_path / "clamdb"))).start()
    try:
        p = start(perimd_factory, backend, peer.spec, av_scanner="clamd:" + clamd.sock)
        expect(send(p.port, "eicar@client.test", ["a@example.com"], MSG), 554, "5.7.1", "virus")
        assert backend.messages() == []
        expect(send(p.port, "plain@client.test", ["a@example.com"], MSG), 250)
        assert len(backend.messages()) == 1
    finally:
        clamd.stop()


def dkim_keys(d):
    """A key pair from opendkim-genkey; the TXT record's text."""
    import re
    subprocess.run(["/usr/sbin/opendkim-genkey", "-D", str(d), "-d", "signed.test", "-s", "sel",
                    "-b", "1024"], check=True, timeout=60)
    txt = open(str(d / "sel.txt")).read()
    return "".join(re.findall(r'"([^"]*)"', txt))


def opendkim(d, name, port, extra):
    conf = str(d / (name + ".conf"))
    with open(conf, "w") as f:
        f.write("Socket inet:%d@127.0.0.1\nSyslog no\nPidFile %s\n"
                "Canonicalization relaxed/relaxed\nRequireSafeKeys no\n%s"
                % (port, d / (name + ".pid"), extra))
    out = str(d / (name + ".out"))
    proc = subprocess.Popen(["/usr/sbin/opendkim", "-f", "-x", conf], stdin=subprocess.DEVNULL,
                            stdout=open(out, "w"), stderr=subprocess.STDOUT)
    wait_port(port, proc, out)
    return proc


def dkim_chain(tmp_path, procs):
    """Two opendkims started (appended to procs): one signing for
    signed.test, one verifying it (its key in TestDNSData); their ports."""
    from harness import free_port
    d = tmp_path / "dkim"
    d.mkdir()
    txt = dkim_keys(d)
    (d / "dns").write_text("sel._domainkey.signed.test %s\n" % txt)
    (d / "internal").write_text("192.0.2.1\n")
    sp, vp = free_port(), free_port()
    procs.append(opendkim(d, "sign", sp, "Mode s\nDomain signed.test\nSelector sel\n"
                          "KeyFile %s\n" % (d / "sel.private")))
    procs.append(opendkim(d, "verify", vp, "Mode v\nAlwaysAddARHeader yes\n"
                          "AuthservID perimd.test\nInternalHosts %s\nTestDNSData file:%s\n"
                          % (d / "internal", d / "dns")))
    return sp, vp


def test_opendkim(perimd_factory, backend, tmp_path):
    """Two real opendkims as a chain: the first signs for signed.test, the
    second verifies what the first left (the changed copy goes on) and
    adds Authentication-Results; the backend gets both headers."""
    procs = []
    try:
        sp, vp = dkim_chain(tmp_path, procs)
        p = start(perimd_factory, backend, "inet:127.0.0.1:%d, inet:127.0.0.1:%d" % (sp, vp),
                  milter_content_timeout="30s")
        body = (b"From: someone@signed.test\r\nTo: a@example.com\r\nSubject: signed\r\n"
                b"Date: Thu, 03 Dec 2026 06:00:00 +0000\r\nMessage-ID: <1@signed.test>\r\n\r\n"
                b"a signed body\r\n")
        expect(send(p.port, "someone@signed.test", ["a@example.com"], body), 250)
        m = backend.messages()[0]
        head = m.data.split(b"\r\n\r\n", 1)[0].decode()
        assert "DKIM-Signature:" in head, head
        ar = [h for h in head.split("\r\n") if h.startswith("Authentication-Results:")]
        assert ar, head
        unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ")
        assert "dkim=pass" in unfolded, unfolded
        # a message without a signature: the AR header still comes (AlwaysAddARHeader)
        p2 = start(perimd_factory, backend, "inet:127.0.0.1:%d" % vp)
        expect(send(p2.port, "a@client.test", ["a@example.com"], MSG), 250)
        m2 = backend.messages()[1]
        head2 = m2.data.split(b"\r\n\r\n", 1)[0].decode()
        assert "Authentication-Results: perimd.test" in head2, head2
    finally:
        for pr in procs:
            stop_proc(pr)


GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


# rspamd compiles its hyperscan databases (the TLD list alone takes half a
# minute on this machine) into hs_cache_dir; kept between runs, keyed by
# content, so only the first run pays.
RSPAMD_HS_CACHE = "/var/tmp/perimd-test-rspamd-hs"


class Rspamd:
    """rspamd with a configuration written here: its proxy worker in milter
    mode scanning by itself (self_scan), no normal worker, no fuzzy, its
    controller on a free port, DNS lookups kept short (no network)."""

    def __init__(self, tmp_path):
        os.makedirs(RSPAMD_HS_CACHE, exist_ok=True)
        from harness import free_port
        self.dir = tmp_path / "rspamd"
        for sub in ("local.d", "override.d", "db", "run"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        files = {
            "local.d/worker-proxy.inc":
                'bind_socket = "127.0.0.1:%d";\nmilter = yes;\ntimeout = 30s;\n'
                'upstream "local" { default = yes; self_scan = yes; }\ncount = 1;\n' % self.port,
            "override.d/worker-normal.inc": "enabled = false;\n",
            "override.d/worker-fuzzy.inc": "enabled = false;\n",
            "override.d/worker-controller.inc": 'bind_socket = "127.0.0.1:%d";\n' % free_port(),
            "local.d/logging.inc": 'type = "file";\nfilename = "%s";\nlevel = "info";\n'
                                   % (self.dir / "rspamd.log"),
            "local.d/options.inc": "dns { timeout = 0.3s; retransmits = 1; }\nlocal_addrs = [];\n"
                                   'hs_cache_dir = "%s";\n' % RSPAMD_HS_CACHE,
            "local.d/milter_headers.conf":
                'use = ["x-spamd-result", "x-spam-status"];\nskip_local = false;\n'
                'skip_authenticated = false;\n',
        }
        for name, text in files.items():
            (self.dir / name).write_text(text)
        self.proc = None

    def start(self, timeout=120):
        d = str(self.dir)
        out = str(self.dir / "out")
        self.proc = subprocess.Popen(
            ["/usr/bin/rspamd", "-f", "-i", "-u", "root", "-g", "root",
             "--var=LOCAL_CONFDIR=" + d, "--var=DBDIR=" + d + "/db", "--var=RUNDIR=" + d + "/run",
             "--var=LOGDIR=" + d],
            stdin=subprocess.DEVNULL, stdout=open(out, "w"), stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc, str(self.dir / "rspamd.log"), timeout=timeout)
        return self

    def stop(self):
        stop_proc(self.proc)


@pytest.mark.skipif(os.geteuid() != 0, reason="rspamd -u root: the test runs it as root")
def test_rspamd(perimd_factory, backend, tmp_path):
    rs = Rspamd(tmp_path).start()
    try:
        p = start(perimd_factory, backend, "inet:127.0.0.1:%d" % rs.port,
                  milter_content_timeout="60s", milter_command_timeout="30s")
        r = send(p.port, "a@client.test", ["a@example.com"],
                 b"Subject: gtube\r\nFrom: a@client.test\r\n\r\n" + GTUBE + b"\r\n")
        expect(r, 554, "5.7.1")
        assert backend.messages() == []
        clean = (b"From: a@client.test\r\nTo: a@example.com\r\nSubject: lunch\r\n"
                 b"Date: Thu, 03 Dec 2026 06:00:00 +0000\r\nMessage-ID: <2@client.test>\r\n\r\n"
                 b"Shall we have lunch at noon?\r\n")
        expect(send(p.port, "a@client.test", ["a@example.com"], clean), 250)
        head = backend.messages()[0].data.split(b"\r\n\r\n", 1)[0].decode()
        assert "X-Spamd-Result:" in head and "X-Spam-Status:" in head, head
        # rspamd gone: milter_default_action (tempfail), then accept
        rs.stop()
        expect(send(p.port, "a@client.test", ["a@example.com"], clean), 451, "4.3.5")
        p2 = start(perimd_factory, backend, "inet:127.0.0.1:%d" % rs.port,
                   milter_default_action="accept")
        expect(send(p2.port, "a@client.test", ["a@example.com"], clean), 250)
        assert len(backend.messages()) == 2
    finally:
        rs.stop()


def test_stop_with_a_hung_milter(perimd_factory, backend, peer):
    """A session waiting for a hung milter (timeouts far away): the client
    goes, SIGTERM ends perimd promptly, the worker does not wait out the
    milter's timeout."""
    p = start(perimd_factory, backend, peer.spec, milter_command_timeout="300s",
              milter_content_timeout="300s")
    c = Client(p.port)
    expect(c.cmd("EHLO client.test"), 250)
    c.line("MAIL FROM:<hang@client.test>")
    assert wait_for(lambda: any(e["cmd"] == "M" for e in peer.events()))
    c.close()
    t0 = time.monotonic()
    p.stop(timeout=15)
    assert time.monotonic() - t0 < 8


def test_body_chunks_skip_and_proxy(perimd_factory, backend, peer):
    """Body chunks of at most 65535 bytes; SMFIR_SKIP stops them (end of
    message still comes); connect names the client of the PROXY header."""
    p = start(perimd_factory, backend, peer.spec, smtpd_upstream_proxy_protocol="haproxy",
              smtpd_upstream_proxy_clients="127.0.0.2")
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200
    with Client(p.port, read_banner=False, source="127.0.0.2") as c:
        c.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
        expect(c.reply(), 220)
        expect(c.cmd("EHLO client.test"), 250)
        for sender in ("plain@client.test", "skip@client.test"):
            expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
            expect(c.cmd("RCPT TO:<a@example.com>"), 250)
            expect(c.cmd("DATA"), 354)
            c.send(big + b".\r\n")
            expect(c.reply(timeout=20), 250)
    # one milter connection for the session's two messages, quit at its end
    assert wait_for(lambda: [e["cmd"] for e in peer.events()].count("Q") == 1)
    ev = peer.events()
    conns = [e for e in ev if e["cmd"] == "C"]
    assert len(conns) == 1 and "[192.0.2.7]" in conns[0]["macros"]["_"], conns
    mails = [i for i, e in enumerate(ev) if e["cmd"] == "M"]
    first, second = ev[:mails[1]], ev[mails[1]:]
    chunks = [e for e in first if e["cmd"] == "B"]
    assert len(chunks) == 4  # 200,000 bytes of body in chunks of 65535
    seen = next(e for e in first if e["cmd"] == "headers")
    assert len(seen["body"]) == 200 * 1000
    assert [e["cmd"] for e in second].count("B") == 1 and "E" in [e["cmd"] for e in second]
    assert len(backend.messages()) == 2
    assert all(m.data.endswith(b"x" * 998 + b"\r\n") for m in backend.messages())


def test_unix_socket(perimd_factory, backend, tmp_path):
    peer = Peer(tmp_path, unix=True)
    try:
        p = start(perimd_factory, backend, peer.spec)
        expect(send(p.port, "plain@client.test", ["a@example.com"], MSG), 250)
        assert "X-Peer: seen" in headers_of(backend.messages()[0].data)
    finally:
        peer.stop()


@pytest.mark.parametrize("param,value", [
    ("smtpd_milters", "foo"), ("smtpd_milters", "inet:host"), ("smtpd_milters", "unix:relative"),
    ("milter_default_action", "quarantine"), ("milter_protocol", "7")])
def test_check_refuses(param, value):
    from harness import PERIMD_BIN
    r = subprocess.run([PERIMD_BIN, "-c", "/dev/null", "-t", "-o", "%s=%s" % (param, value)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and param in r.stderr, r.stderr


def test_esmtp_arguments(perimd_factory, backend, peer):
    """MAIL and RCPT reach the milter with their ESMTP arguments after the
    address, as Postfix sends them."""
    p = start(perimd_factory, backend, peer.spec)
    with Client(p.port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<plain@client.test> SIZE=100 BODY=8BITMIME"), 250)
        expect(c.cmd("RCPT TO:<a@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.com"), 250)
        expect(c.cmd("RCPT TO:<b@example.com>"), 250)
        expect(c.cmd("DATA"), 354)
        c.send(MSG + b".\r\n")
        expect(c.reply(timeout=20), 250)
    ev = peer.events()
    assert next(e for e in ev if e["cmd"] == "M")["args"] == [
        "<plain@client.test>", "SIZE=100", "BODY=8BITMIME"]
    assert [e["args"] for e in ev if e["cmd"] == "R"] == [
        ["<a@example.com>", "NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;a@example.com"],
        ["<b@example.com>"]]
