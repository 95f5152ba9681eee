"""test_rules.py - client, sender and recipient rules through the real
binary: role accounts past a client the access map rejects, unknown
recipients from file:, sqlite: and mysql: maps (a real MariaDB started here)
and from a callout (cached: one callout for two RCPTs), map reload on SIGHUP
(a broken file keeps the old table), a stopped database gives 451 not 550,
RFC checks, the connection rate limit and early talkers."""

import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from harness import Client, free_port, stop_proc, swaks


def write(path, text):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def rcpt(port, to, helo="client.test", sender="<sender@client.test>", more=()):
    """EHLO, MAIL, RCPT to each of `to`; the RCPT replies (code, text)."""
    with Client(port) as c:
        assert c.cmd("EHLO " + helo)[0] == 250
        assert c.cmd("MAIL FROM:" + sender)[0] == 250
        out = [c.cmd("RCPT TO:<%s>" % t) for t in to]
        for line in more:
            out.append(c.cmd(line))
        c.cmd("QUIT")
        return out


def test_role_account_passes_where_client_is_rejected(tmp_path, perimd_factory, backend):
    cmap = tmp_path / "client_access"
    write(cmap, "127.0.0.0/8 REJECT you are listed here\n")
    smap = tmp_path / "sender_access"
    write(smap, "spammer.test REJECT\n")
    p = perimd_factory(relay_backends=backend.target, client_access_maps="file:%s" % cmap,
                       sender_access_maps="file:%s" % smap)
    # The same client: refused for a user, accepted for the role accounts.
    rc, out = swaks("--server", "127.0.0.1:%d" % p.port, "--from", "a@client.test",
                    "--to", "user@example.com", "--helo", "client.test")
    assert rc != 0 and "550 5.7.1 <user@example.com>: you are listed here" in out, out
    for role in ("postmaster", "Abuse", "hostmaster", "webmaster"):
        rc, out = swaks("--server", "127.0.0.1:%d" % p.port, "--from", "a@spammer.test",
                        "--to", "%s@example.com" % role, "--helo", "client.test")
        assert rc == 0, out
    assert len(backend.messages()) == 4
    # The sender verdict also waits for RCPT, and spares role accounts.
    write(cmap, "# nothing\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"map file:\S+client_access reloaded")
    r = rcpt(p.port, ["user@example.com", "abuse@example.com"], sender="<x@spammer.test>")
    assert r[0][0] == 550 and "Sender address <x@spammer.test> rejected" in r[0][1], r
    assert r[1][0] == 250, r
    # One log line per refusal, with client, helo, from, to and the rule.
    assert "reject: RCPT from [127.0.0.1]: 550 5.7.1 <user@example.com>" in p.log_text()


def test_invalid_helo_and_helo_required(perimd_factory, backend):
    p = perimd_factory(relay_backends=backend.target)
    r = rcpt(p.port, ["user@example.com", "postmaster@example.com"], helo="bad_name!")
    assert r[0][0] == 501 and "5.5.2" in r[0][1] and "invalid name" in r[0][1], r
    assert r[1][0] == 250, r
    assert rcpt(p.port, ["user@example.com"], helo="[127.0.0.1]")[0][0] == 250
    with Client(p.port) as c:
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 503
    # Address length limits (RFC 5321 §4.5.3.1) and strict envelopes.
    with Client(p.port) as c:
        c.cmd("EHLO client.test")
        assert c.cmd("MAIL FROM:<%s@client.test>" % ("x" * 65))[0] == 501
        assert c.cmd("MAIL FROM:a@client.test")[0] == 501
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
        assert c.cmd("RCPT TO:<%s@example.com>" % ("y" * 65))[0] == 501
    p2 = perimd_factory(relay_backends=backend.target, strict_rfc821_envelopes=False,
                        smtpd_helo_required=False)
    with Client(p2.port) as c:
        assert c.cmd("MAIL FROM:a@client.test")[0] == 250
        assert c.cmd("RCPT TO:user@example.com")[0] == 250


def test_file_map_unknown_reload_and_broken(tmp_path, perimd_factory, backend):
    m = tmp_path / "recipients"
    write(m, "alice@example.com\nold@example.com\n")
    p = perimd_factory(relay_backends=backend.target, relay_recipient_maps="file:%s" % m)
    r = rcpt(p.port, ["alice@example.com", "bob@example.com", "postmaster@example.com"])
    assert [x[0] for x in r] == [250, 550, 250], r
    assert r[1][1] == "5.1.1 <bob@example.com>: recipient unknown", r
    # Replaced while running, then SIGHUP: bob exists, old is gone.
    write(m, "alice@example.com\nbob@example.com\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"map file:\S+recipients reloaded")
    r = rcpt(p.port, ["bob@example.com", "old@example.com"])
    assert [x[0] for x in r] == [250, 550], r
    # A broken file: the error names file and line, the old table stays.
    write(m, "# carol\n\n  carol@example.com\n")
    os.utime(m, (time.time() + 5, time.time() + 5))
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"not reloaded, keeping the previous table: \S+recipients:3: continuation line")
    r = rcpt(p.port, ["bob@example.com", "carol@example.com"])
    assert [x[0] for x in r] == [250, 550], r


def test_sqlite_map(tmp_path, perimd_factory, backend):
    db = tmp_path / "rcpt.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE users (email TEXT PRIMARY KEY, active INT)")
    con.executemany("INSERT INTO users VALUES (?, ?)",
                    [("alice@example.com", 1), ("o'brien@example.com", 1)])
    con.commit()
    con.close()
    cf = tmp_path / "rcpt-sqlite.cf"
    write(cf, "dbpath = %s\nquery = SELECT active FROM users WHERE email = '%%s'\n" % db)
    p = perimd_factory(relay_backends=backend.target, relay_recipient_maps="sqlite:%s" % cf)
    r = rcpt(p.port, ["alice@example.com", "bob@example.com", "o'brien@example.com",
                      "x'or'1'='1@example.com"])
    assert [x[0] for x in r] == [250, 550, 250, 550], r
    assert r[1][1] == "5.1.1 <bob@example.com>: recipient unknown"


def test_callout_cached(perimd_factory, backend):
    backend.set(rcpt_reply={"nobody@*": "550 5.1.1 no such user"})
    p = perimd_factory(relay_backends=backend.target, relay_recipient_verify=True)
    r = rcpt(p.port, ["nobody@example.com", "nobody@example.com", "alice@example.com",
                      "alice@example.com", "postmaster@example.com"])
    assert [x[0] for x in r] == [550, 550, 250, 250, 250], r
    assert r[0][1] == r[1][1] == "5.1.1 <nobody@example.com>: recipient unknown", r
    st = backend.stats()
    # One callout per address (cached), none for the role account, no DATA.
    assert st["commands"].get("RCPT") == 2, st
    assert st["commands"].get("DATA", 0) == 0, st
    # A backend that cannot be reached: 451 4.4.1, never 550.
    p2 = perimd_factory(relay_backends="[127.0.0.1]:%d" % free_port(), relay_recipient_verify=True,
                        relay_connect_timeout="2s")
    r = rcpt(p2.port, ["someone@example.com"])
    assert r[0][0] == 451 and r[0][1].startswith("4.4.1"), r


def test_greet_pause_and_rate_limit(perimd_factory):
    p = perimd_factory(smtpd_greet_pause="1s", relay_backends="[127.0.0.1]:9")
    with Client(p.port, read_banner=False) as c:
        c.send("EHLO early.test\r\n")
        code, text = c.reply(5)
        assert code == 554 and text.startswith("5.5.1"), text
        assert c.wait_closed(5)
    p.wait_log(r"early talker")
    p2 = perimd_factory(smtpd_client_connection_rate_limit=3, relay_backends="[127.0.0.1]:9")
    codes = []
    for _ in range(5):
        with Client(p2.port) as c:
            codes.append(c.banner[0])
    # wait_banner of the harness used one connection already.
    assert codes.count(421) >= 2 and codes[0] == 220, codes


# ---- MariaDB ------------------------------------------------------------------

MARIADBD = shutil.which("mariadbd", path="/usr/sbin:/usr/bin") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
CLIENT = shutil.which("mariadb") or shutil.which("mysql") or "/usr/bin/mariadb"


class MariaDB:
    """mariadbd on a loopback port with its own datadir and socket."""

    def __init__(self, tmpdir):
        self.dir = os.path.join(str(tmpdir), "mariadb")
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "mysqld.sock")
        self.port = free_port()
        self.proc = None
        os.makedirs(self.data, exist_ok=True)

    def start(self, timeout=60):
        user = ["--user=root"] if os.geteuid() == 0 else []
        if not os.path.exists(os.path.join(self.data, "mysql")):
            subprocess.run([INSTALL_DB, "--no-defaults", "--datadir=" + self.data,
                            "--auth-root-authentication-method=normal", "--skip-test-db",
                            *user], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT, timeout=120)
        self.log = open(os.path.join(self.dir, "mariadbd.log"), "ab")
        self.proc = subprocess.Popen(
            [MARIADBD, "--no-defaults", "--datadir=" + self.data, "--socket=" + self.sock,
             "--port=%d" % self.port, "--bind-address=127.0.0.1", "--skip-name-resolve",
             "--pid-file=" + os.path.join(self.dir, "pid"), "--skip-log-bin",
             "--innodb-buffer-pool-size=16M", *user],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("mariadbd exited: %s" % self.proc.returncode)
            if self.sql("SELECT 1", check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise AssertionError("mariadbd did not start")

    def sql(self, text, check=True):
        return subprocess.run([CLIENT, "--no-defaults", "-uroot", "--socket=" + self.sock,
                               "-e", text], check=check, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30)

    def stop(self):
        stop_proc(self.proc, 30)
        if self.proc:
            self.log.close()
        self.proc = None


@pytest.fixture
def mariadb(tmp_path):
    if not os.path.exists(MARIADBD):
        pytest.skip("mariadb-server is not installed")
    db = MariaDB(tmp_path)
    try:
        db.start()
        yield db
    finally:
        db.stop()


def test_mysql_map_and_database_down(tmp_path, perimd_factory, backend, mariadb):
    mariadb.sql("CREATE DATABASE mail; CREATE USER 'perimd'@'127.0.0.1' IDENTIFIED BY 'pw';"
                "GRANT SELECT ON mail.* TO 'perimd'@'127.0.0.1';"
                "CREATE TABLE mail.rcpt (address VARCHAR(255) PRIMARY KEY, action VARCHAR(64));"
                "INSERT INTO mail.rcpt VALUES ('alice@example.com', 'OK'),"
                " ('@example.org', 'OK');")
    cf = tmp_path / "rcpt-mysql.cf"
    write(cf, "hosts = 127.0.0.1:%d\nuser = perimd\npassword = pw\ndbname = mail\n"
              "query = SELECT action FROM rcpt WHERE address = '%%s'\ntimeout = 3s\n"
              "cache_ttl = 0\n" % mariadb.port)
    p = perimd_factory(relay_backends=backend.target, relay_domains="example.com",
                       relay_recipient_maps="mysql:%s" % cf)
    r = rcpt(p.port, ["alice@example.com", "bob@example.com", "Alice@Example.com"])
    assert [x[0] for x in r] == [250, 550, 250], r
    assert r[1][1] == "5.1.1 <bob@example.com>: recipient unknown"
    mariadb.stop()
    r = rcpt(p.port, ["alice@example.com", "bob@example.com", "postmaster@example.com"])
    assert [x[0] for x in r] == [451, 451, 250], r
    assert r[0][1] == "4.3.0 <alice@example.com>: temporary lookup failure", r
