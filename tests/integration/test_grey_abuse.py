"""test_grey_abuse.py - the greylist store under abuse, end to end: a
flood of new triplets from one /24 gets 451 past its quota while another
network is greylisted as usual; eviction under greylist_max_entries never
takes passed triplets or auto-whitelist rows (the database checked with
sqlite3, and with the mariadb client on a test-owned MariaDB when
mariadb-server is installed); perimd -t on stores that cannot work and on
a server that does not answer; an SQLite file deleted or replaced under a
running perimd; the fail action logged at start."""

import os
import re
import sqlite3
import subprocess
import time

import pytest

import test_grey as tg
from harness import PERIMD_BIN, Client, free_port, wait_for

SENDER = "flood@sender.example"


def start(perimd_factory, sink, **params):
    return tg.start(perimd_factory, sink, **params)


def rcpts(p, source, to, sender=SENDER):
    """One transaction from source with every recipient of `to`: their
    RCPT replies in order."""
    out = []
    with Client(tg.port(p), source=source) as c:
        assert c.banner and c.banner[0] == 220, c.banner
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
        for r in to:
            rep = c.cmd("RCPT TO:<%s>" % r)
            assert rep is not None, "no RCPT reply"
            out.append(rep)
        c.cmd("QUIT")
    return out


def db_path(p):
    return os.path.join(p.params["data_directory"], "greylist.db")


def sq(p, q):
    """One value from the running perimd's SQLite file (another connection)."""
    con = sqlite3.connect(db_path(p), timeout=10)
    try:
        return con.execute(q).fetchone()[0]
    finally:
        con.close()


GREYLISTED = r"^4\.7\.1 <[^>]+>: greylisted, try again in \d+ seconds$"
OVER_QUOTA = r"^4\.7\.1 <[^>]+>: too many new greylisting entries from your network, try again later$"


def test_flood_over_quota_and_other_network(perimd_factory, sink):
    p = start(perimd_factory, sink, greylist_new_triplet_limit="3")
    to = ["u%d@example.com" % i for i in range(8)]
    replies = rcpts(p, "127.0.0.2", to)
    for r in replies[:3]:
        assert r[0] == 451 and re.match(GREYLISTED, r[1]), replies
    for r in replies[3:]:
        assert r[0] == 451 and re.match(OVER_QUOTA, r[1]), replies
    # Another client of the same /24 shares the quota.
    r = rcpts(p, "127.0.0.77", ["v@example.com"])[0]
    assert r[0] == 451 and re.match(OVER_QUOTA, r[1]), r
    # Another network: the usual verdict.
    r = rcpts(p, "127.0.1.2", ["u0@example.com", "u5@example.com"])
    assert all(x[0] == 451 and re.match(GREYLISTED, x[1]) for x in r), r
    # Nothing was stored past the quota: 3 + 2 triplets.
    assert sq(p, "SELECT count(*) FROM grey") == 5
    # Known triplets of the flooding network still pass after the delay.
    time.sleep(2.2)
    r = rcpts(p, "127.0.0.2", ["u0@example.com", "u1@example.com", "u7@example.com"])
    assert r[0][0] == 250 and r[1][0] == 250, r
    assert r[2][0] == 451 and re.match(OVER_QUOTA, r[2][1]), r
    m = tg.metrics(p)
    assert m['perimd_greylist_decisions_total{result="over_quota"}'] == 7
    assert m['perimd_greylist_decisions_total{result="new"}'] == 5
    assert m['perimd_recipients_rejected_total{reason="greylist"}'] >= 12
    # Never a pass on the way: the backend got nothing.
    assert sink.files() == []


def test_flood_over_quota_ipv6_network(perimd_factory, sink):
    """IPv6 clients are grouped per greylist_ipv6_netmask: ::1 is alone in
    its /64 here, so the quota applies to it as one network."""
    import socket
    v6 = free_port()
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as e:
        pytest.skip("no IPv6 loopback: %s" % e)
    p = start(perimd_factory, sink, smtpd_listen="127.0.0.1:%d, [::1]:%d" % (free_port(), v6),
              greylist_new_triplet_limit="2")
    s = socket.create_connection(("::1", v6), timeout=10)
    f = s.makefile("rwb")

    def cmd(line):
        f.write(line.encode() + b"\r\n")
        f.flush()
        while True:
            x = f.readline().decode()
            if x[3:4] != "-":
                return int(x[:3]), x[4:].strip()

    assert f.readline().startswith(b"220")
    assert cmd("EHLO v6.test")[0] == 250
    assert cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
    got = [cmd("RCPT TO:<w%d@example.com>" % i) for i in range(4)]
    s.close()
    assert [g[0] for g in got] == [451] * 4, got
    assert re.match(GREYLISTED, got[1][1]) and re.match(OVER_QUOTA, got[2][1]), got


def test_policy_protocol_over_quota(perimd_factory, sink):
    import socket
    pport = free_port()
    p = start(perimd_factory, sink, policy_listen="127.0.0.1:%d" % pport,
              greylist_new_triplet_limit="1")
    with socket.create_connection(("127.0.0.1", pport), timeout=10) as s:
        assert tg.policy_request(s, recipient="a@example.com").startswith(
            "action=DEFER_IF_PERMIT 4.7.1 <a@example.com>: greylisted")
        a = tg.policy_request(s, recipient="b@example.com")
        assert a == ("action=DEFER_IF_PERMIT 4.7.1 <b@example.com>: too many new greylisting "
                     "entries from your network, try again later"), a
    assert p.proc.poll() is None


def test_eviction_keeps_passed_and_awl(perimd_factory, sink):
    p = start(perimd_factory, sink, greylist_delay="1s", greylist_new_triplet_limit="2",
              greylist_max_entries="4", greylist_auto_whitelist_count="1",
              greylist_auto_whitelist_interval="0")
    # P (127.0.0.0/24): a passed triplet, a message accepted (awl row).
    assert rcpts(p, "127.0.0.2", ["p@example.com"])[0][0] == 451
    time.sleep(1.2)
    r, d = tg.rcpt(p, "127.0.0.2", sender=SENDER, to="p@example.com", data=True)
    assert r[0] == 250 and d[0] == 250, (r, d)
    assert wait_for(lambda: sq(p, "SELECT count(*) FROM awl") == 1), "no auto-whitelist row"
    # A (127.0.1.0/24) floods: two stored, the rest over quota.
    r = rcpts(p, "127.0.1.2", ["a%d@example.com" % i for i in range(5)])
    assert [x[0] for x in r] == [451] * 5
    assert sum(1 for x in r if re.match(OVER_QUOTA, x[1])) == 3, r
    assert sq(p, "SELECT count(*) FROM grey") == 3
    anet = sq(p, "SELECT hex(net) FROM grey WHERE passed = 0 LIMIT 1")
    # B (127.0.2.0/24): one retried entry, then new ones fill the store.
    assert rcpts(p, "127.0.2.2", ["b0@example.com"])[0][0] == 451
    assert rcpts(p, "127.0.2.2", ["b0@example.com"])[0][0] == 451   # early retry
    assert sq(p, "SELECT count(*) FROM grey") == 4
    # Full: A's unpassed entries go first, one per new triplet here.
    for i in (1, 2):
        r = rcpts(p, "127.0.3.2", ["c%d@example.com" % i])[0]
        assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
        assert sq(p, "SELECT count(*) FROM grey WHERE hex(net) = '%s'" % anet) == 2 - i
        assert sq(p, "SELECT count(*) FROM grey") == 4
    # Then never retried ones (c1, c2), not the retried b0.
    r = rcpts(p, "127.0.4.2", ["d@example.com"])[0]
    assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
    assert sq(p, "SELECT count(*) FROM grey WHERE prev > 0 AND passed = 0") == 1
    # Passed triplet and auto-whitelist row are still there.
    assert sq(p, "SELECT count(*) FROM grey WHERE passed = 1") == 1
    assert sq(p, "SELECT count(*) FROM awl") == 1
    m = tg.metrics(p)
    assert m["perimd_greylist_evicted_total"] == 3
    # P is still trusted: any triplet passes, past its quota too.
    r = rcpts(p, "127.0.0.9", ["new%d@example.com" % i for i in range(4)], sender="x@other.example")
    assert [x[0] for x in r] == [250] * 4, r


def test_store_full_of_passed(perimd_factory, sink):
    p = start(perimd_factory, sink, greylist_delay="1s", greylist_max_entries="1")
    assert rcpts(p, "127.0.0.2", ["p@example.com"])[0][0] == 451
    time.sleep(1.2)
    assert rcpts(p, "127.0.0.2", ["p@example.com"])[0][0] == 250
    r = rcpts(p, "127.0.1.2", ["q@example.com"])[0]
    assert r == (451, "4.7.1 <q@example.com>: greylisting cannot take new entries now, "
                      "try again later"), r
    p.wait_log(r"greylist database full of passed triplets")
    assert sq(p, "SELECT count(*) FROM grey WHERE passed = 1") == 1
    assert tg.metrics(p)['perimd_greylist_decisions_total{result="store_full"}'] == 1
    assert rcpts(p, "127.0.0.2", ["p@example.com"])[0][0] == 250


# ---- perimd -t and the start -------------------------------------------

def check(p, **over):
    cmd = [PERIMD_BIN, "-t", "-c", p.conf_path]
    for k, v in over.items():
        cmd += ["-o", "%s=%s" % (k, v)]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    return r.returncode, r.stderr.decode()


def test_check_sqlite_that_cannot_work(perimd_factory, tmp_path):
    p = perimd_factory(start=False, greylist="yes")
    junk = tmp_path / "junk.db"
    junk.write_text("this is not a database\n")
    cases = [
        ("sqlite:/nonexistent-dir/grey.db",
         "greylist_database: /nonexistent-dir/grey.db: cannot be created: /nonexistent-dir: "
         "No such file or directory"),
        ("sqlite:%s" % tmp_path, "greylist_database: %s: not a regular file" % tmp_path),
        ("sqlite:%s" % junk, "greylist_database: %s: not an SQLite database" % junk),
        ("sqlite:%s/f/grey.db" % junk, "greylist_database: %s/f/grey.db: " % junk),
        ("postgres:x", "greylist_database: postgres:x: expected sqlite:PATH or mysql:FILE"),
    ]
    for spec, want in cases:
        rc, err = check(p, greylist_database=spec)
        assert rc == 1, (spec, rc, err)
        assert want in err, (spec, err)
    # The start refuses the same, with the same words.
    q = perimd_factory(start=False, greylist="yes",
                       greylist_database="sqlite:/nonexistent-dir/grey.db")
    r = subprocess.run([PERIMD_BIN, "-f", "-c", q.conf_path], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    assert r.returncode == 1 and b"/nonexistent-dir/grey.db: cannot be created" in r.stderr, r
    # Fine: the default (data_directory made at start, even when missing),
    # and a file that exists; -t creates nothing.
    missing = tmp_path / "not-yet" / "lib"
    rc, err = check(p, data_directory=str(missing))
    assert rc == 0, err
    assert not missing.exists()
    rc, err = check(p, greylist_database="sqlite:%s" % (tmp_path / "new.db"))
    assert rc == 0, err
    assert not (tmp_path / "new.db").exists()
    # Greylisting off: the database is not looked at.
    rc, err = check(p, greylist="no", greylist_database="sqlite:/nonexistent-dir/grey.db")
    assert rc == 0, err


def test_check_mysql_cf(perimd_factory, sink, tmp_path):
    p = perimd_factory(start=False, greylist="yes")
    dead = free_port()   # nothing listens there
    good = "hosts = 127.0.0.1\nport = %d\nuser = u\npassword = p\ndbname = grey\n" % dead
    cases = [
        ("hosts = 127.0.0.1\ndbname = grey\nthis line has no equals sign\n",
         ":3: expected name = value"),
        ("hosts = 127.0.0.1\ndbname = grey\ndatabase = x\n", ":3: unknown name database"),
        ("hosts = 127.0.0.1\nport = 33o6\ndbname = grey\n", ":2: port 33o6: expected 1-65535"),
        ("user = u\n", "hosts and dbname are required"),
    ]
    for text, want in cases:
        cf = tmp_path / "grey.cf"
        cf.write_text(text)
        rc, err = check(p, greylist_database="mysql:%s" % cf)
        assert rc == 1, (text, err)
        assert "greylist_database: mysql: %s" % cf in err and want in err, (text, err)
    rc, err = check(p, greylist_database="mysql:%s" % (tmp_path / "missing.cf"))
    assert rc == 1 and "missing.cf: cannot open: No such file or directory" in err, err
    # A server that does not answer: a warning, exit 0.
    cf = tmp_path / "dead.cf"
    cf.write_text(good)
    rc, err = check(p, greylist_database="mysql:%s" % cf)
    assert rc == 0, err
    assert re.search(r"warning: greylist database %s: mysql: 127\.0\.0\.1:%d: .*perimd starts "
                     r"anyway" % (re.escape(str(cf)), dead), err), err
    # And perimd starts; the fail action applies, and is logged at start.
    q = start(perimd_factory, sink, greylist_database="mysql:%s" % cf,
              greylist_fail_action="tempfail")
    q.wait_log(r"greylisting: database mysql:.*greylist_fail_action = tempfail")
    r = rcpts(q, "127.0.0.2", ["x@example.com"])[0]
    assert r[0] == 451 and r[1].startswith("4.3.0"), r


def test_fail_action_logged_at_start(perimd_factory, sink):
    p = start(perimd_factory, sink)
    p.wait_log(r"greylisting: database sqlite:.*greylist\.db; greylist_fail_action = accept "
               r"\(while the database fails, recipients are accepted without greylisting\)")


# ---- the SQLite file deleted or replaced under a running perimd ---------

def rm_db(path):
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def test_deleted_database_is_reopened(perimd_factory, sink):
    p = start(perimd_factory, sink, greylist_delay="1s")
    path = db_path(p)
    assert rcpts(p, "127.0.0.2", ["a@example.com"])[0][0] == 451
    assert sq(p, "SELECT count(*) FROM grey") == 1
    rm_db(path)
    n = iter(range(1000))
    # Each decision looks at the path once a second at most: until it
    # notices, decisions go to the deleted file.
    assert wait_for(lambda: (rcpts(p, "127.0.1.2", ["n%d@example.com" % next(n)]),
                             "was deleted or replaced" in p.log_text())[1], timeout=15)
    p.wait_log(r"warning: greylist database %s was deleted or replaced: opened it anew"
               % re.escape(path))
    assert os.path.exists(path)
    # Greylisting goes on in the new file: new, then passed.
    r = rcpts(p, "127.0.0.2", ["a@example.com"])[0]
    assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
    time.sleep(1.2)
    assert wait_for(lambda: rcpts(p, "127.0.0.2", ["a@example.com"])[0][0] == 250, timeout=5)
    assert sq(p, "SELECT count(*) FROM grey WHERE passed = 1") == 1
    assert "greylist database failing" not in p.log_text()


@pytest.mark.parametrize("action", ["tempfail", "accept"])
def test_replaced_by_junk_then_by_a_database(perimd_factory, sink, tmp_path, action):
    p = start(perimd_factory, sink, greylist_fail_action=action)
    path = db_path(p)
    assert rcpts(p, "127.0.0.2", ["a@example.com"])[0][0] == 451
    # Replaced (rename over it) by a file that is no database: the fail
    # action applies, logged once.
    junk = tmp_path / "junk"
    junk.write_text("not a database\n" * 10)
    os.rename(str(junk), path)
    want = (451, "4.3.0") if action == "tempfail" else (250, "2.")
    n = iter(range(1000))

    def failed():
        r = rcpts(p, "127.0.1.2", ["j%d@example.com" % next(n)])[0]
        return r[0] == want[0] and r[1].startswith(want[1])
    assert wait_for(failed, timeout=15)
    # Every worker's connection looks at the path once a second at most.
    time.sleep(1.1)
    for _ in range(3):
        r = rcpts(p, "127.0.1.2", ["j%d@example.com" % next(n)])[0]
        assert r[0] == want[0] and r[1].startswith(want[1]), r
    assert len(re.findall(r"greylist database failing", p.log_text())) == 1
    assert tg.metrics(p)["perimd_greylist_db_errors_total"] >= 3
    # Replaced by a real (empty) database: working again.
    good = tmp_path / "good.db"
    sqlite3.connect(str(good)).close()
    os.rename(str(good), path)
    assert wait_for(lambda: re.match(GREYLISTED,
                                     rcpts(p, "127.0.1.2", ["k%d@example.com" % next(n)])[0][1]),
                    timeout=15)
    p.wait_log(r"greylist database working again")
    assert sq(p, "SELECT count(*) FROM grey") >= 1


# ---- MariaDB: the same bounds in a shared store --------------------------

@pytest.fixture(scope="module")
def mariadb(tmp_path_factory):
    if not tg.INSTALL_DB or not os.path.exists(tg.MARIADBD):
        pytest.skip("mariadb-server is not installed")
    m = tg.MariaDB(tmp_path_factory.mktemp("mariadb"))
    m.install()
    m.start()
    m.sql("CREATE DATABASE greyabuse")
    yield m
    m.stop()


def my_value(m, q, db="greyabuse"):
    r = subprocess.run(["mariadb", "--no-defaults", "-S", m.sock, "-u", "root", "-N", "-B",
                        db, "-e", q], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().strip()


def test_mariadb_quota_and_eviction(perimd_factory, sink, mariadb, tmp_path):
    cf = tmp_path / "grey-mysql.cf"
    cf.write_text("hosts = 127.0.0.1\nport = %d\nuser = root\npassword =\ndbname = greyabuse\n"
                  % mariadb.port)
    rc, err = check(perimd_factory(start=False, greylist="yes"),
                    greylist_database="mysql:%s" % cf)
    assert rc == 0 and "warning" not in err, err
    p = start(perimd_factory, sink, greylist_database="mysql:%s" % cf, greylist_delay="1s",
              greylist_new_triplet_limit="2", greylist_max_entries="4",
              greylist_auto_whitelist_count="1", greylist_auto_whitelist_interval="0",
              greylist_fail_action="tempfail")
    # P: a passed triplet and an awl row.
    assert rcpts(p, "127.0.0.2", ["p@example.com"])[0][0] == 451
    time.sleep(1.2)
    r, d = tg.rcpt(p, "127.0.0.2", sender=SENDER, to="p@example.com", data=True)
    assert r[0] == 250 and d[0] == 250, (r, d)
    assert wait_for(lambda: my_value(mariadb, "SELECT count(*) FROM awl") == "1")
    # A floods: two stored, three over quota; B is greylisted as usual.
    r = rcpts(p, "127.0.1.2", ["a%d@example.com" % i for i in range(5)])
    assert [x[0] for x in r] == [451] * 5
    assert [bool(re.match(OVER_QUOTA, x[1])) for x in r] == [False, False, True, True, True], r
    r = rcpts(p, "127.0.2.2", ["b0@example.com"])[0]
    assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
    assert rcpts(p, "127.0.2.2", ["b0@example.com"])[0][0] == 451   # early retry
    assert my_value(mariadb, "SELECT count(*) FROM grey") == "4"
    anet = my_value(mariadb, "SELECT hex(net) FROM grey WHERE passed = 0 AND prev = 0 LIMIT 1")
    assert my_value(mariadb, "SELECT count(*) FROM grey WHERE hex(net) = '%s'" % anet) == "2"
    # Full: A's entries go first.
    for i in (1, 2):
        r = rcpts(p, "127.0.3.2", ["c%d@example.com" % i])[0]
        assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
        assert my_value(mariadb, "SELECT count(*) FROM grey WHERE hex(net) = '%s'" % anet) \
            == str(2 - i)
        assert my_value(mariadb, "SELECT count(*) FROM grey") == "4"
    r = rcpts(p, "127.0.4.2", ["d@example.com"])[0]
    assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
    assert my_value(mariadb, "SELECT count(*) FROM grey WHERE prev > 0 AND passed = 0") == "1"
    assert my_value(mariadb, "SELECT count(*) FROM grey WHERE passed = 1") == "1"
    assert my_value(mariadb, "SELECT count(*) FROM awl") == "1"
    assert my_value(mariadb, "SELECT SUM(until) FROM grey_meta WHERE name LIKE 'rows%'") == "4"
    m = tg.metrics(p)
    assert m["perimd_greylist_evicted_total"] == 3
    assert m['perimd_greylist_decisions_total{result="over_quota"}'] == 3
    # -t with the server down: a warning, exit 0.
    mariadb.stop()
    try:
        rc, err = check(p, greylist_database="mysql:%s" % cf)
        assert rc == 0 and "warning: greylist database" in err, err
    finally:
        mariadb.start()


def test_mariadb_old_schema_gets_the_new_column(perimd_factory, sink, mariadb, tmp_path):
    """A grey table made before the abuse bounds: the net column and the
    row count are added at connect, the old rows are kept and counted."""
    mariadb.sql("CREATE DATABASE greyold")
    mariadb.sql("CREATE TABLE greyold.grey (k BINARY(16) NOT NULL PRIMARY KEY,"
                " first BIGINT NOT NULL, last BIGINT NOT NULL, prev BIGINT NOT NULL,"
                " passed TINYINT NOT NULL, expires BIGINT NOT NULL, KEY grey_expires (expires))"
                " ENGINE=InnoDB")
    mariadb.sql("INSERT INTO greyold.grey VALUES (X'00', 1, 1, 0, 1, 9000000000000000),"
                " (X'01', 1, 1, 0, 0, 9000000000000000)")
    cf = tmp_path / "old.cf"
    cf.write_text("hosts = 127.0.0.1\nport = %d\nuser = root\npassword =\ndbname = greyold\n"
                  % mariadb.port)
    p = start(perimd_factory, sink, greylist_database="mysql:%s" % cf,
              greylist_fail_action="tempfail", greylist_max_entries="3")
    r = rcpts(p, "127.0.0.2", ["x@example.com"])[0]
    assert r[0] == 451 and re.match(GREYLISTED, r[1]), r

    def val(q):
        out = subprocess.run(["mariadb", "--no-defaults", "-S", mariadb.sock, "-u", "root", "-N",
                              "-B", "greyold", "-e", q], capture_output=True, timeout=30)
        return out.stdout.decode().strip()
    assert val("SELECT count(*) FROM grey WHERE net IS NOT NULL") == "1"
    assert val("SELECT SUM(until) FROM grey_meta WHERE name LIKE 'rows%'") == "3"
    # Full at 3: an unpassed row goes (old or new), the old passed one stays.
    r = rcpts(p, "127.0.0.2", ["y@example.com"])[0]
    assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
    assert val("SELECT count(*) FROM grey") == "3"
    assert val("SELECT count(*) FROM grey WHERE hex(k) = '%s' AND passed = 1" % ('0' * 32)) == "1"
    assert val("SELECT count(*) FROM grey WHERE passed = 0") == "2"
    assert tg.metrics(p)["perimd_greylist_evicted_total"] == 1
