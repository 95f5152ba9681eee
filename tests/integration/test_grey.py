"""test_grey.py - greylisting end to end: the real perimd (greylist_delay
= 2s, SQLite in WAL mode) between clients bound to different 127.x.y.z
source addresses and a smtp-sink backend; whitelist files and their
reload; the database failing; and, when mariadb-server is installed, two
perimd instances sharing a real MariaDB server that is stopped and
restarted mid-run."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request

import pytest

from harness import Client, free_port, known_params, stop_proc, wait_for

SENDER = "alice@sender.example"
RCPT = "bob@example.com"
BODY = "Subject: grey\r\n\r\nhello\r\n"


def start(perimd_factory, sink, **params):
    """perimd relaying to sink with greylisting on (delay 2s)."""
    base = {"relay_backends": "[127.0.0.1]:%d" % sink.port, "relay_domains": "example.com",
            "greylist": "yes", "greylist_delay": "2s", "greylist_auto_whitelist_count": "0"}
    if "reject_unknown_sender_domain" in known_params():
        base["reject_unknown_sender_domain"] = "no"
    base.update(params)
    return perimd_factory(**base)


def port(p):
    return int(p.params["smtpd_listen"].rsplit(":", 1)[1])


def rcpt(p, source, sender=SENDER, to=RCPT, data=False):
    """One transaction from `source`: the RCPT reply (code, text); with
    data=True and a 250, the message is sent and its reply returned too."""
    with Client(port(p), source=source) as c:
        assert c.banner and c.banner[0] == 220, c.banner
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
        r = c.cmd("RCPT TO:<%s>" % to)
        assert r is not None, "no RCPT reply"
        if not data or r[0] != 250:
            c.cmd("QUIT")
            return r
        assert c.cmd("DATA")[0] == 354
        d = c.cmd(BODY + ".")
        c.cmd("QUIT")
        return r, d


def metrics(p):
    """{'name{labels}': value} from /metrics."""
    url = "http://%s/metrics" % p.params["stats_listen"]
    with urllib.request.urlopen(url, timeout=5) as f:
        body = f.read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def grey_count(p, result):
    return metrics(p).get('perimd_greylist_decisions_total{result="%s"}' % result, 0)




def test_delay_neighbour_and_other_network(perimd_factory, sink):
    p = start(perimd_factory, sink)
    r = rcpt(p, "127.0.0.2")
    assert r[0] == 451, r
    assert re.match(r"4\.7\.1 <bob@example\.com>: greylisted, try again in [12] seconds$", r[1]), r
    t0 = time.monotonic()
    time.sleep(1.0)
    r = rcpt(p, "127.0.0.2")
    assert r[0] == 451 and "4.7.1" in r[1], r
    time.sleep(max(0.0, 2.2 - (time.monotonic() - t0)))
    r, d = rcpt(p, "127.0.0.2", data=True)
    assert r[0] == 250, r
    assert d[0] == 250, d
    assert wait_for(lambda: len(sink.files()) == 1), "the message never reached the backend"
    assert b"hello" in sink.messages()[0]
    # A neighbour in the same /24, same sender and recipient: passes.
    assert rcpt(p, "127.0.0.3")[0] == 250
    # The same sender seen through a +extension and BATV: same triplet.
    assert rcpt(p, "127.0.0.4", sender="prvs=0123456789=Alice+x@Sender.example")[0] == 250
    # Another /24: greylisted.
    assert rcpt(p, "127.0.1.2")[0] == 451
    # Another recipient from the passed network: its own triplet.
    assert rcpt(p, "127.0.0.2", to="carol@example.com")[0] == 451
    m = metrics(p)
    assert m['perimd_greylist_decisions_total{result="new"}'] == 3
    assert m['perimd_greylist_decisions_total{result="early"}'] == 1
    assert m['perimd_greylist_decisions_total{result="passed"}'] == 3
    assert m['perimd_recipients_rejected_total{reason="greylist"}'] == 4
    # The SQLite file is in WAL mode.
    db = os.path.join(p.params["data_directory"], "greylist.db")
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT count(*) FROM grey").fetchone()[0] == 3
    finally:
        con.close()


def test_role_accounts_and_off(perimd_factory, sink):
    p = start(perimd_factory, sink)
    if "role_accounts" in known_params():
        assert rcpt(p, "127.0.0.2", to="postmaster@example.com")[0] == 250
    assert rcpt(p, "127.0.0.2")[0] == 451
    q = start(perimd_factory, sink, greylist="no")
    assert rcpt(q, "127.0.0.2")[0] == 250


def test_auto_whitelist(perimd_factory, sink):
    p = start(perimd_factory, sink, greylist_delay="1s", greylist_auto_whitelist_count="2",
              greylist_auto_whitelist_interval="0")
    assert rcpt(p, "127.0.0.5")[0] == 451
    time.sleep(1.2)
    # The null sender passes greylisting too, but never counts.
    assert rcpt(p, "127.0.0.5", sender="")[0] == 451
    time.sleep(1.2)
    r, d = rcpt(p, "127.0.0.5", sender="", data=True)
    assert r[0] == 250 and d[0] == 250
    for _ in range(2):
        r, d = rcpt(p, "127.0.0.5", data=True)
        assert r[0] == 250 and d[0] == 250, (r, d)
    assert wait_for(lambda: len(sink.files()) == 3)
    # Two accepted messages: the network is trusted, any triplet passes.
    assert wait_for(lambda: rcpt(p, "127.0.0.6", sender="new@other.example",
                                 to="x%d@example.com" % time.monotonic_ns())[0] == 250)
    assert grey_count(p, "auto_whitelisted") >= 1
    # Not another network.
    assert rcpt(p, "127.0.1.6", sender="new@other.example")[0] == 451


def test_null_sender_alone_never_whitelists(perimd_factory, sink):
    p = start(perimd_factory, sink, greylist_delay="1s", greylist_auto_whitelist_count="1",
              greylist_auto_whitelist_interval="0")
    assert rcpt(p, "127.0.0.7", sender="")[0] == 451
    time.sleep(1.2)
    r, d = rcpt(p, "127.0.0.7", sender="", data=True)
    assert r[0] == 250 and d[0] == 250
    time.sleep(0.5)
    assert rcpt(p, "127.0.0.7", sender="x@y.example")[0] == 451


def test_whitelist_files_and_reload(perimd_factory, sink, tmp_path):
    clients = tmp_path / "wl_clients"
    rcpts = tmp_path / "wl_rcpts"
    clients.write_text("# test\n127.0.2.0/24\n/^127\\.0\\.4\\./\n")
    rcpts.write_text("vip@\nopen.example.com\n")
    p = start(perimd_factory, sink, greylist_whitelist_clients=str(clients),
              greylist_whitelist_recipients=str(rcpts),
              relay_domains="example.com, open.example.com")
    assert rcpt(p, "127.0.2.9")[0] == 250
    assert rcpt(p, "127.0.4.9")[0] == 250
    assert rcpt(p, "127.0.0.2", to="vip@example.com")[0] == 250
    assert rcpt(p, "127.0.0.2", to="any@open.example.com")[0] == 250
    assert rcpt(p, "127.0.3.9")[0] == 451
    assert grey_count(p, "whitelisted") == 4
    clients.write_text("127.0.3.0/24\n")
    os.kill(p.pid, signal.SIGHUP)
    p.wait_log(r"configuration reloaded")
    assert rcpt(p, "127.0.3.10", to="new@example.com")[0] == 250
    assert rcpt(p, "127.0.2.10", to="new@example.com")[0] == 451
    # A broken file is refused at reload; the running lists stay.
    clients.write_text("/(unclosed/\n")
    os.kill(p.pid, signal.SIGHUP)
    p.wait_log(r"reload refused.*wl_clients.*line 1")
    assert rcpt(p, "127.0.3.11", to="new2@example.com")[0] == 250


@pytest.mark.parametrize("action", ["tempfail", "accept"])
def test_database_failure(perimd_factory, sink, action):
    # A path that cannot be opened stops the start (test_grey_abuse.py):
    # here the file becomes a directory under the running perimd.
    p = start(perimd_factory, sink, greylist_fail_action=action)
    assert rcpt(p, "127.0.0.2", to="first@example.com")[0] == 451
    db = os.path.join(p.params["data_directory"], "greylist.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    os.mkdir(db)
    n = iter(range(1000))
    want = (451, "4.3.0") if action == "tempfail" else (250, "2.")
    assert wait_for(lambda: rcpt(p, "127.0.1.2", to="x%d@example.com" % next(n))[:1] == want[:1]
                    and "greylist database failing" in p.log_text(), timeout=15)
    time.sleep(1.1)   # every worker's connection looks at the path once a second
    for _ in range(3):
        r = rcpt(p, "127.0.0.2")
        if action == "tempfail":
            assert r[0] == 451 and r[1].startswith("4.3.0"), r
        else:
            assert r[0] == 250, r
    assert len(re.findall(r"greylist database failing", p.log_text())) == 1
    assert metrics(p)["perimd_greylist_db_errors_total"] >= 3


# ---- MariaDB, shared by two perimd instances ----------------------------

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db")


class MariaDB:
    """A private mariadbd on 127.0.0.1:<free port>, datadir under tmp."""

    def __init__(self, d):
        self.dir = str(d)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        self.proc = None
        self.log = os.path.join(self.dir, "mariadbd.log")

    def install(self):
        os.makedirs(self.data, exist_ok=True)
        subprocess.run([INSTALL_DB, "--no-defaults", "--datadir=" + self.data,
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        "--user=" + ("root" if os.geteuid() == 0 else os.environ.get("USER", ""))],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=120)

    def start(self, timeout=60):
        args = [MARIADBD, "--no-defaults", "--datadir=" + self.data, "--socket=" + self.sock,
                "--port=%d" % self.port, "--bind-address=127.0.0.1",
                "--pid-file=" + os.path.join(self.dir, "mariadbd.pid"),
                "--log-error=" + self.log, "--skip-log-bin", "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=16M", "--skip-grant-tables", "--max-connections=50"]
        if os.geteuid() == 0:
            args.append("--user=root")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("mariadbd exited:\n" + open(self.log).read()[-3000:])
            if self.sql("SELECT 1", check=False) == 0:
                return self
            time.sleep(0.2)
        raise AssertionError("mariadbd did not start")

    def sql(self, q, check=True):
        r = subprocess.run(["mariadb", "--no-defaults", "-S", self.sock, "-u", "root", "-e", q],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        if check:
            assert r.returncode == 0, "mariadb: %s failed" % q
        return r.returncode

    def stop(self):
        stop_proc(self.proc, 30)
        self.proc = None


@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    if not INSTALL_DB or not os.path.exists(MARIADBD):
        pytest.skip("mariadb-server is not installed")
    m = MariaDB(tmp_path_factory.mktemp("mariadb"))
    m.install()
    m.start()
    m.sql("CREATE DATABASE greytest")
    yield m
    m.stop()


def test_mariadb_shared_and_restart(perimd_factory, sink, mariadb, tmp_path):
    cf = tmp_path / "grey-mysql.cf"
    cf.write_text("# test server\nhosts = 127.0.0.1\nport = %d\nuser = root\npassword =\n"
                  "dbname = greytest\n" % mariadb.port)
    params = {"greylist_database": "mysql:%s" % cf, "greylist_fail_action": "tempfail"}
    a = start(perimd_factory, sink, **params)
    b = start(perimd_factory, sink, **params)
    r = rcpt(a, "127.0.0.2")
    assert r[0] == 451 and "greylisted" in r[1], r
    # The other instance shares the triplet: still early there.
    r = rcpt(b, "127.0.0.3")
    assert r[0] == 451 and "greylisted" in r[1], r
    time.sleep(2.2)
    r, d = rcpt(b, "127.0.0.4", data=True)
    assert r[0] == 250 and d[0] == 250, (r, d)
    assert grey_count(a, "new") == 1 and grey_count(b, "early") == 1
    # The server goes away: the fail action applies, nothing crashes.
    mariadb.stop()
    r = rcpt(a, "127.0.0.2", to="dave@example.com")
    assert r[0] == 451 and r[1].startswith("4.3.0"), r
    # Cached passes still pass while the database is down.
    assert rcpt(b, "127.0.0.9")[0] == 250
    a.wait_log(r"greylist database failing")
    # Back: perimd reconnects by itself.
    mariadb.start()
    n = iter(range(1000))
    assert wait_for(lambda: "greylisted" in rcpt(a, "127.0.0.2", to="f%d@example.com" % next(n))[1],
                    timeout=15), "perimd never reconnected"
    a.wait_log(r"greylist database working again")
    assert a.proc.poll() is None and b.proc.poll() is None


# ---- Postfix policy delegation protocol ---------------------------------

def policy_request(sock, **attrs):
    """Send one policy request; the action line of the answer."""
    req = {"request": "smtpd_access_policy", "protocol_state": "RCPT",
           "protocol_name": "ESMTP", "client_address": "127.0.0.2",
           "client_name": "unknown", "sender": SENDER, "recipient": RCPT}
    req.update(attrs)
    sock.sendall(("".join("%s=%s\n" % kv for kv in req.items()) + "\n").encode())
    buf = b""
    deadline = time.monotonic() + 10
    while not buf.endswith(b"\n\n"):
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        data = sock.recv(4096)
        assert data, "policy service closed the connection"
        buf += data
    lines = buf.decode().split("\n")
    assert lines[1:] == ["", ""], buf
    return lines[0]


def test_policy_protocol_raw(perimd_factory, sink):
    import socket
    pport = free_port()
    p = start(perimd_factory, sink, policy_listen="127.0.0.1:%d" % pport)
    with socket.create_connection(("127.0.0.1", pport), timeout=10) as s:
        a = policy_request(s)
        assert re.match(r"action=DEFER_IF_PERMIT 4\.7\.1 <bob@example\.com>: greylisted, "
                        r"try again in [12] seconds$", a), a
        assert policy_request(s).startswith("action=DEFER_IF_PERMIT"), "early retry"
        assert policy_request(s, protocol_state="DATA") == "action=DUNNO"
        time.sleep(2.1)
        # One request split over several writes, with CRLF line ends.
        raw = ("request=smtpd_access_policy\r\nprotocol_state=RCPT\r\nclient_address=127.0.0.9\r\n"
               "sender=%s\r\nrecipient=%s\r\n\r\n" % (SENDER, RCPT)).encode()
        for i in range(0, len(raw), 7):
            s.sendall(raw[i:i + 7])
            time.sleep(0.01)
        buf = b""
        while not buf.endswith(b"\n\n"):
            buf += s.recv(4096)
        assert buf.startswith(b"action=PREPEND X-Greylist:"), buf
    # The SMTP side shares the engine: the triplet passed there too.
    assert rcpt(p, "127.0.0.2")[0] == 250
    # A malformed request closes only that connection.
    with socket.create_connection(("127.0.0.1", pport), timeout=10) as s:
        s.sendall(b"no equals sign\n\n")
        s.settimeout(5)
        assert s.recv(100) == b""
    p.wait_log(r"policy client .*malformed request")
    with socket.create_connection(("127.0.0.1", pport), timeout=10) as s:
        assert policy_request(s, recipient="new@example.com").startswith("action=DEFER_IF_PERMIT")
