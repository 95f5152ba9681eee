"""test_grey_batch.py - greylisting decisions that wait for a mysql: store
together go as one batch (grey.c, grey_mysql.c my_check_batch), on two
boxes sharing one MariaDB (test_grey.MariaDB) through the Postfix policy
protocol: a wave of new triplets from many networks is greylisted in
batches; one of them, from a network at its quota, gets the quota's 451
while the others of its batch are stored; new triplets of one network
together meet its quota as if they had come one after the other; the same wave on the other box
is an early retry; after the delay it passes there, and then on the
first box from the rows as they are: a passed triplet seen again soon is
read, never written again; the row count stays exact. Messages accepted
from one network within greylist_auto_whitelist_interval count toward
the auto-whitelist once, without a store call for the others; the
interval is the store's (every box's counts move it), so a box sends a
count the store would take even when it counted the network itself
less than an interval ago; a count that failed is sent again by the
next message."""

import re
import socket
import time

import test_grey as tg
from harness import free_port, wait_for
from test_grey import mariadb  # noqa: F401 (the fixture: a MariaDB)
from test_grey_abuse import my_value

SENDER = "batch@sender.example"
GREYLISTED = r"^action=DEFER_IF_PERMIT 4\.7\.1 <[^>]+>: greylisted, try again in \d+ seconds$"
OVER_QUOTA = ("action=DEFER_IF_PERMIT 4.7.1 <q2@example.com>: too many new greylisting "
              "entries from your network, try again later")


def request(client, rcpt):
    return ("request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
            "client_address=%s\nclient_name=unknown\nsender=%s\nrecipient=%s\n\n"
            % (client, SENDER, rcpt)).encode()


def wave(pport, reqs):
    """Every request on a connection of its own, all sent before any
    answer is read (so they wait for the store together): the answers."""
    socks = [socket.create_connection(("127.0.0.1", pport), timeout=10) for _ in reqs]
    try:
        for s, (client, rcpt) in zip(socks, reqs):
            s.sendall(request(client, rcpt))
        out = []
        for s in socks:
            buf = b""
            while not buf.endswith(b"\n\n"):
                data = s.recv(4096)
                assert data, "policy service closed the connection"
                buf += data
            out.append(buf.decode().split("\n")[0])
        return out
    finally:
        for s in socks:
            s.close()


def sql(m, q):
    return my_value(m, q, db="greybatch")


def test_batches_on_two_boxes(perimd_factory, sink, mariadb, tmp_path):
    mariadb.sql("CREATE DATABASE greybatch")
    cf = tmp_path / "grey-mysql.cf"
    cf.write_text("hosts = 127.0.0.1:%d\nuser = root\npassword =\ndbname = greybatch\n"
                  % mariadb.port)
    ports = [free_port(), free_port()]
    a, b = (tg.start(perimd_factory, sink, greylist_database="mysql:%s" % cf,
                     greylist_delay="2s", greylist_new_triplet_limit="2",
                     greylist_fail_action="tempfail", policy_listen="127.0.0.1:%d" % pp)
            for pp in ports)
    # Network Q uses its quota of two new triplets, one at a time.
    for i in range(2):
        r = wave(ports[0], [("10.200.0.1", "q%d@example.com" % i)])[0]
        assert re.match(GREYLISTED, r), r
    reqs = [("10.%d.%d.5" % (1 + i // 200, i % 200), "w%d@example.com" % i) for i in range(40)]
    r = wave(ports[0], reqs + [("10.200.0.1", "q2@example.com")])
    assert all(re.match(GREYLISTED, x) for x in r[:-1]), r
    assert r[-1] == OVER_QUOTA, r[-1]
    m = tg.metrics(a)
    assert m["perimd_greylist_db_batched_total"] > m["perimd_greylist_db_batches_total"], \
        "no batch held more than one decision"
    assert sql(mariadb, "SELECT COUNT(*) FROM grey") == "42"
    # Four new triplets of network R together: two within its quota, two
    # over it, as if they had come one after the other.
    r = wave(ports[0], [("10.201.0.%d" % (i + 1), "r%d@example.com" % i) for i in range(4)])
    assert sorted(bool(re.match(GREYLISTED, x)) for x in r) == [False, False, True, True], r
    assert sum("too many new greylisting entries" in x for x in r) == 2, r
    assert sql(mariadb, "SELECT COUNT(*) FROM grey") == "44"
    # The other box: early retries (each row now retried once).
    r = wave(ports[1], reqs)
    assert all(re.match(GREYLISTED, x) for x in r), r
    assert sql(mariadb, "SELECT COUNT(*) FROM grey WHERE prev > 0 AND passed = 0") == "40"
    # A second early retry changes no row.
    before = sql(mariadb, "SELECT SUM(last), SUM(att) FROM grey")
    r = wave(ports[1], reqs)
    assert all(re.match(GREYLISTED, x) for x in r), r
    assert sql(mariadb, "SELECT SUM(last), SUM(att) FROM grey") == before
    time.sleep(2.1)
    r = wave(ports[1], reqs)
    assert all(x.startswith("action=PREPEND X-Greylist:") for x in r), r
    assert sql(mariadb, "SELECT COUNT(*) FROM grey WHERE passed = 1") == "40"
    # The first box has not cached these passes: it reads them, and
    # writes nothing (their expiry is fresh).
    before = sql(mariadb, "SELECT SUM(expires), SUM(last), SUM(att) FROM grey")
    q0 = tg.metrics(a)["perimd_greylist_db_queries_total"]
    r = wave(ports[0], reqs)
    assert all(x.startswith("action=PREPEND X-Greylist:") for x in r), r
    assert sql(mariadb, "SELECT SUM(expires), SUM(last), SUM(att) FROM grey") == before
    assert tg.metrics(a)["perimd_greylist_db_queries_total"] - q0 <= 40
    assert sql(mariadb, "SELECT SUM(until) FROM grey_meta WHERE name LIKE 'rows%'") == "44"
    assert wait_for(lambda: a.proc.poll() is None and b.proc.poll() is None, 1)


def test_accepted_messages_count_once_per_interval(perimd_factory, sink, mariadb, tmp_path):
    """Messages accepted from one network within
    greylist_auto_whitelist_interval count once: the later ones are not
    sent to the store at all."""
    mariadb.sql("CREATE DATABASE greyawl")
    cf = tmp_path / "grey-awl.cf"
    cf.write_text("hosts = 127.0.0.1:%d\nuser = root\npassword =\ndbname = greyawl\n"
                  % mariadb.port)
    p = tg.start(perimd_factory, sink, greylist_database="mysql:%s" % cf, greylist_delay="1s",
                 greylist_auto_whitelist_count="3", greylist_auto_whitelist_interval="1h")
    assert tg.rcpt(p, "127.0.0.5")[0] == 451
    time.sleep(1.1)
    for i in range(3):
        r, d = tg.rcpt(p, "127.0.0.5", data=True)
        assert r[0] == 250 and d[0] == 250, (r, d)
        if i == 0:   # the box skips only after the store answered
            assert wait_for(lambda: awl_row(mariadb, "greyawl") == "1", 10)
    assert wait_for(lambda: tg.metrics(p).get("perimd_greylist_awl_counts_skipped_total") == 2, 10)
    assert my_value(mariadb, "SELECT cnt FROM awl", db="greyawl") == "1"


def awl_row(m, db, cols="cnt"):
    return my_value(m, "SELECT %s FROM awl" % cols, db=db)


def store_cf(m, tmp_path, db):
    m.sql("CREATE DATABASE %s" % db)
    cf = tmp_path / ("%s.cf" % db)
    cf.write_text("hosts = 127.0.0.1:%d\nuser = root\npassword =\ndbname = %s\n" % (m.port, db))
    return "mysql:%s" % cf


def accept(p, source):
    r, d = tg.rcpt(p, source, data=True)
    assert r[0] == 250 and d[0] == 250, (r, d)


def skipped(p):
    return tg.metrics(p).get("perimd_greylist_awl_counts_skipped_total", 0)


def test_awl_interval_is_the_stores(perimd_factory, sink, mariadb, tmp_path):
    """Box A counts network N at t0; box B's message at t0 + I/2 is not
    counted by the store (B learns: again from t0 + I); B's message at
    t0 + I + a bit is counted -- the second count, so N is auto-whitelisted
    after two counts the store's way, not an interval later (B marking
    itself until t1 + I would skip it)."""
    iv = 4.0
    db = store_cf(mariadb, tmp_path, "greyfleetawl")
    a, b = (tg.start(perimd_factory, sink, greylist_database=db, greylist_delay="1s",
                     greylist_auto_whitelist_count="2",
                     greylist_auto_whitelist_interval="%ds" % iv) for _ in range(2))
    assert tg.rcpt(a, "127.0.0.5")[0] == 451
    time.sleep(1.1)
    accept(a, "127.0.0.5")
    assert wait_for(lambda: awl_row(mariadb, "greyfleetawl") == "1", 10)
    t0 = time.monotonic()
    att_a = awl_row(mariadb, "greyfleetawl", "att")
    time.sleep(iv / 2)
    accept(b, "127.0.0.6")   # the same /24: within the store's interval
    assert wait_for(lambda: awl_row(mariadb, "greyfleetawl", "att") != att_a, 10)
    assert awl_row(mariadb, "greyfleetawl") == "1"
    time.sleep(max(0.0, t0 + iv + 0.3 - time.monotonic()))
    accept(b, "127.0.0.7")
    assert wait_for(lambda: awl_row(mariadb, "greyfleetawl") == "2", 10), \
        "box B skipped a count the store would take"
    assert skipped(b) == 0
    # Two counts: N is auto-whitelisted on both boxes, any triplet passes.
    for p in (b, a):
        assert wait_for(lambda: tg.rcpt(p, "127.0.0.8", sender="new@other.example",
                                        to="x%d@example.com" % time.monotonic_ns())[0] == 250, 10)
    assert tg.grey_count(a, "auto_whitelisted") >= 1 and tg.grey_count(b, "auto_whitelisted") >= 1


def test_failed_awl_count_is_retried(perimd_factory, sink, mariadb, tmp_path):
    """A count the store refuses (a trigger on awl fails every write)
    marks nothing: the next message from the network sends it again."""
    db = store_cf(mariadb, tmp_path, "greyawlfail")
    p = tg.start(perimd_factory, sink, greylist_database=db, greylist_delay="1s",
                 greylist_auto_whitelist_count="3", greylist_auto_whitelist_interval="1h")
    assert tg.rcpt(p, "127.0.0.5")[0] == 451
    time.sleep(1.1)
    my_value(mariadb, "CREATE TRIGGER awl_fault BEFORE INSERT ON awl FOR EACH ROW "
             "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'awl fault'", db="greyawlfail")
    errors = tg.metrics(p).get("perimd_greylist_db_errors_total", 0)
    accept(p, "127.0.0.5")
    assert wait_for(lambda: tg.metrics(p).get("perimd_greylist_db_errors_total", 0) > errors, 10)
    assert p.wait_log(r"greylist database failing: .*awl fault")
    assert awl_row(mariadb, "greyawlfail") == ""
    my_value(mariadb, "DROP TRIGGER awl_fault", db="greyawlfail")
    accept(p, "127.0.0.5")
    assert wait_for(lambda: awl_row(mariadb, "greyawlfail") == "1", 10), \
        "the failed count was not sent again"
    assert skipped(p) == 0
    # Counted now: a third message within the interval is skipped.
    accept(p, "127.0.0.5")
    assert wait_for(lambda: skipped(p) == 1, 10)
