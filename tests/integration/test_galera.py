"""test_galera.py - the fleet on MariaDB Galera: three perimd boxes, each
listing the three nodes of a test-owned Galera cluster (galera.py) in
another order, share one greylist store.

- Concurrent first sightings of one triplet on the three boxes (Galera
  answers the conflicting writes with deadlock 1213) all get the greylist
  verdict, never "451 4.3.0 greylisting temporarily unavailable"; the
  triplet passes on another box after the delay.
- An injected retry: a TCP proxy in front of a node lets the insert of a
  new triplet commit, then cuts the connection before the answer; perimd
  tries again on the next node, and the retry must not count as a second
  sighting (greylist_delay = 1s: it would pass at once).
- One node SIGKILLed under load (smtp-source and tagged clients on every
  box): nothing accepted is lost or stored twice, no reply is 5xx, every
  known triplet passes and every new one is greylisted.

Skipped only where galera-4 (or mariadb-server, rsync) is not installed.
"""

import re
import socket
import subprocess
import threading
import time

import pytest

import galera
from backend import Backend
from harness import Client, _tool
from test_faults import TaggedLoad, grey_triplet_key, message_ids, metrics, wait_for

SENDER = "a@client.test"
DB = "greyfleet"
GREYLISTED = r"4\.7\.1 <[^>]+>: greylisted, try again in \d+ seconds$"


@pytest.fixture(scope="module")
def cluster():
    why = galera.missing()
    if why:
        pytest.skip(why)
    g = galera.Galera().start()
    try:
        g.sql(0, "CREATE DATABASE %s" % DB)
        yield g
    finally:
        g.stop()


def box_cf(tmp_path, name, ports):
    cf = tmp_path / ("%s.cf" % name)
    cf.write_text("hosts = %s\nuser = root\npassword =\ndbname = %s\n"
                  % (", ".join("127.0.0.1:%d" % p for p in ports), DB))
    return cf


def boxes(perimd_factory, tmp_path, cluster, backend, n=3, **params):
    """n perimd boxes, box i listing the nodes from node i on."""
    out = []
    for i in range(n):
        order = [cluster.port((i + j) % 3) for j in range(3)]
        cf = box_cf(tmp_path, "box%d" % i, order)
        conf = dict(relay_backends=backend.target, greylist="yes", greylist_delay="3s",
                    greylist_database="mysql:%s" % cf, greylist_fail_action="tempfail",
                    greylist_auto_whitelist_count="0", smtpd_client_connection_count_limit="0",
                    smtpd_client_connection_rate_limit="0")
        conf.update(params)
        out.append(perimd_factory(**conf))
    return out


def retries(p, reason):
    return metrics(p).get('perimd_greylist_db_retries_total{reason="%s"}' % reason, 0)


def rcpt_once(port, source, rcpt, sender=SENDER, data=False):
    with Client(port, source=source, timeout=30) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<%s>" % sender)[0] == 250
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        if data and r[0] == 250:
            assert c.cmd("DATA")[0] == 354
            d = c.cmd("Subject: fleet\r\n\r\nhello\r\n.")
            c.cmd("QUIT")
            return r, d
        c.cmd("QUIT")
        return r


def test_concurrent_first_sightings_on_three_boxes(perimd_factory, tmp_path, cluster):
    b = Backend(tmp_path, name="b").start()
    try:
        ps = boxes(perimd_factory, tmp_path, cluster, b)
        rounds = 12
        results = []
        lock = threading.Lock()

        def one(p, source, rcpt, barrier):
            with Client(p.port, source=source, timeout=30) as c:
                assert c.cmd("EHLO client.test")[0] == 250
                assert c.cmd("MAIL FROM:<%s>" % SENDER)[0] == 250
                barrier.wait(10)
                r = c.cmd("RCPT TO:<%s>" % rcpt)
                c.cmd("QUIT")
            with lock:
                results.append((p.port, rcpt, r))

        for i in range(rounds):
            barrier = threading.Barrier(3)
            # One client network per round (and so one quota row, written
            # by all three boxes at once), one triplet.
            ts = [threading.Thread(target=one, args=(p, "127.0.%d.%d" % (10 + i, 2 + j),
                                                     "c%d@example.com" % i, barrier))
                  for j, p in enumerate(ps)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(40)
            assert not [t for t in ts if t.is_alive()], "a client is stuck"
        assert len(results) == 3 * rounds, results
        bad = [r for r in results if r[2] is None or r[2][0] != 451 or not re.match(GREYLISTED, r[2][1])]
        assert not bad, "not the greylist verdict: %r" % bad[:5]
        conflicts = sum(retries(p, "conflict") for p in ps)
        print("write conflicts retried: %d in %d concurrent sightings" % (conflicts, 3 * rounds))
        assert sum(metrics(p).get("perimd_greylist_db_errors_total", 0) for p in ps) == 0
        # One row per triplet, whatever the races.
        assert cluster.sql(1, "SELECT COUNT(*) FROM grey", db=DB).split() == [str(rounds)]
        # Greylisted on box 0 only, passed on box 1 after the delay: the
        # fleet shares the store.
        r = rcpt_once(ps[0].port, "127.0.99.2", "shared@example.com")
        assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
        time.sleep(3.2)
        r, d = rcpt_once(ps[1].port, "127.0.99.3", "shared@example.com", data=True)
        assert r[0] == 250 and d[0] == 250, (r, d)
        assert wait_for(lambda: len(b.messages()) == 1, 10)
    finally:
        b.stop()


class CutProxy:
    """A TCP proxy to a node that, once armed with a pattern, forwards the
    client's packet holding it, waits `hold` seconds (the statement commits
    on the node) and closes both sides: the answer never arrives."""

    def __init__(self, target_port, hold=1.5):
        self.target = target_port
        self.hold = hold
        self.pattern = None
        self.cuts = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.stopping = False
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                c.close()
                continue
            s.settimeout(None)
            self.socks += [c, s]
            held = threading.Event()   # set: the node's answers are dropped
            threading.Thread(target=self._pipe, args=(c, s, held, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(s, c, held, False), daemon=True).start()

    def _pipe(self, src, dst, held, upstream):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                pat = self.pattern
                if upstream and pat and all(p in data for p in pat):
                    self.pattern = None
                    held.set()
                    dst.sendall(data)
                    time.sleep(self.hold)
                    self.cuts += 1
                    break
                if held.is_set():
                    continue
                dst.sendall(data)
        except OSError:
            pass
        for x in (src, dst):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()

    def stop(self):
        self.stopping = True
        self.lsock.close()
        for x in self.socks:
            try:
                x.close()
            except OSError:
                pass


def test_injected_retry_is_not_a_second_sighting(perimd_factory, tmp_path, cluster):
    proxy = CutProxy(cluster.port(0))
    b = Backend(tmp_path, name="b").start()
    cf = box_cf(tmp_path, "cut", [proxy.port, cluster.port(1), cluster.port(2)])

    def box():
        # A fresh box per cut: a cut moves the worker's connection to the
        # next host, and both workers must start on the proxy.
        return perimd_factory(relay_backends=b.target, greylist="yes", greylist_delay="1s",
                              greylist_database="mysql:%s" % cf, greylist_fail_action="tempfail",
                              greylist_auto_whitelist_count="0")

    def row(key):
        return cluster.sql(2, "SET SESSION wsrep_sync_wait = 1; SELECT prev > 0, passed FROM grey "
                              "WHERE k = X'%s'" % key, db=DB).split()
    try:
        # A new triplet: the insert commits, the answer is lost, the
        # decision is made again on the next node more than
        # greylist_delay later: still a first sighting.
        p = box()
        key = grey_triplet_key("127.0.51.0/24", SENDER, "new@example.com").lower()
        proxy.pattern = (b"INSERT IGNORE INTO grey", key.encode())
        t0 = time.monotonic()
        r = rcpt_once(p.port, "127.0.51.2", "new@example.com")
        assert proxy.cuts == 1, "the insert never went through the proxy"
        assert time.monotonic() - t0 >= 1.0
        assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
        assert row(key) == ["0", "0"]
        assert retries(p, "node") == 1
        p.wait_log(r"greylist database 127\.0\.0\.1:%d: .*\(trying the next host\)" % proxy.port)
        # An early retry by the client: its update commits, the answer is
        # lost; the decision made again after the delay must not count as
        # the retry that passes.
        p = box()
        key = grey_triplet_key("127.0.52.0/24", SENDER, "new2@example.com").lower()
        r = rcpt_once(p.port, "127.0.52.2", "new2@example.com")
        assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
        proxy.pattern = (b"UPDATE grey SET", key.encode())
        r = rcpt_once(p.port, "127.0.52.2", "new2@example.com")
        assert proxy.cuts == 2, "the update never went through the proxy"
        assert r[0] == 451 and re.match(GREYLISTED, r[1]), r
        assert row(key) == ["1", "0"]
        assert retries(p, "node") == 1
        # The client's real retry after the delay passes.
        time.sleep(1.1)
        r, d = rcpt_once(p.port, "127.0.52.2", "new2@example.com", data=True)
        assert r[0] == 250 and d[0] == 250, (r, d)
        assert row(key) == ["1", "1"]
    finally:
        b.stop()
        proxy.stop()


def fleet_rcpt(tag):
    """Even tags: a recipient whose triplet passed beforehand (250 wanted);
    odd tags: a new one (the greylist 451 wanted)."""
    n = int(tag.rsplit("-", 1)[1])
    return "%s%s@example.com" % ("p" if n % 2 == 0 else "n", tag)


def fleet_load(box, port):
    """Client threads on one box sending tagged messages (b<box>w<n>-<i>)
    until stopped (test_faults.TaggedLoad)."""
    return TaggedLoad(port, threads=2, sender=SENDER, rcpt=fleet_rcpt, pause=0.02,
                      prefix="b%dw" % box)


def test_node_killed_under_load(perimd_factory, tmp_path, cluster):
    b = Backend(tmp_path, name="b").start()
    loads, src = [], None
    try:
        # The tagged clients' even triplets and smtp-source's are passed
        # beforehand, straight in the table (each even RCPT still costs a
        # database round trip: its triplet is not in perimd's cache yet).
        net = "127.0.0.0/24"
        keys = [grey_triplet_key(net, SENDER, fleet_rcpt("b%dw%d-%d" % (bx, w, i)))
                for bx in range(3) for w in range(2) for i in range(0, 1200, 2)]
        keys.append(grey_triplet_key(net, SENDER, "src@example.com"))
        rows = ",".join("(X'%s', @n - 60000, @n - 60000, @n - 60000, 1, @n + 86400000)" % k
                        for k in keys)
        cluster.sql(2, "SET @n = CAST(ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED);"
                       "INSERT INTO grey (k, first, last, prev, passed, expires) VALUES %s;" % rows,
                    db=DB)
        ps = boxes(perimd_factory, tmp_path, cluster, b, greylist_delay="300s")
        n = 300
        src = subprocess.Popen([_tool("smtp-source"), "-s", "4", "-m", str(n), "-l", "512",
                                "-f", SENDER, "-t", "src@example.com", "-M", "client.test",
                                "127.0.0.1:%d" % ps[1].port],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        loads = [fleet_load(i, p.port).__enter__() for i, p in enumerate(ps)]
        assert wait_for(lambda: all(len(ld.results) >= 10 for ld in loads), 30), \
            "too little got through before the kill"
        assert src.poll() is None, "smtp-source finished before the kill: raise n"
        # Node 1: box 1's first host; boxes 0 and 2 meet the stall of the
        # commits until the cluster evicts it.
        cluster.kill(1)
        seen = [len(ld.results) for ld in loads]
        assert wait_for(lambda: all(len(ld.results) > s + 10 for ld, s in zip(loads, seen)), 40), \
            "the fleet did not go on after the kill"
        out, _ = src.communicate(timeout=120)
        assert cluster.size(0) == 2
    finally:
        for ld in loads:
            ld.stop_ev.set()
        for ld in loads:
            ld.__exit__(None, None, None)
            assert not [t for t in ld.threads if t.is_alive()], "a client thread is stuck"
        if src is not None and src.poll() is None:
            src.kill()
            src.wait(10)
        b.stop()
    assert src.returncode == 0, out.decode(errors="replace")[-2000:]
    results = [r for ld in loads for r in ld.results]
    errors = [e for ld in loads for e in ld.errors]
    assert not errors, errors[:5]
    assert not [r for r in results if r[2] >= 500], "5xx: %r" % [r for r in results if r[2] >= 500][:5]
    even = [r for r in results if int(r[0].rsplit("-", 1)[1]) % 2 == 0]
    odd = [r for r in results if int(r[0].rsplit("-", 1)[1]) % 2 == 1]
    assert len(even) + len(odd) == len(results) and even and odd
    assert len(even) <= 3 * 2 * 600, "the load outran the passed triplets: raise the count"
    wrong = [r for r in even if (r[1], r[2]) != ("data", 250)]
    assert not wrong, "a passed triplet not accepted: %r" % wrong[:5]
    wrong = [r for r in odd if r[1] != "rcpt" or r[2] != 451 or not re.match(GREYLISTED, r[3])]
    assert not wrong, "a new triplet not greylisted: %r" % wrong[:5]
    # Every 250 is at the backend, once.
    stored = b.messages()
    ids = message_ids(stored)
    dups = {i for i in ids if ids.count(i) > 1}
    assert not dups, "stored twice: %r" % sorted(dups)[:5]
    missing = set("<%s@faults.test>" % r[0] for r in even) - set(ids)
    assert not missing, sorted(missing)[:5]
    assert len(stored) == n + len(even), (len(stored), n, len(even))
    assert sum(metrics(p)["perimd_messages_relayed_total"] for p in ps) == len(stored)
    assert sum(metrics(p).get("perimd_greylist_db_errors_total", 0) for p in ps) == 0
    print("RCPTs: %d (%d passed, %d greylisted); retries: node %d, conflict %d"
          % (len(results), len(even), len(odd), sum(retries(p, "node") for p in ps),
             sum(retries(p, "conflict") for p in ps)))
    # A second node killed: node 0 alone is no primary component and
    # answers every statement with 1047 ("WSREP has not yet prepared
    # node"); no host is usable: greylist_fail_action (451 4.3.0), no 5xx.
    cluster.kill(2)
    assert wait_for(lambda: cluster.status(0, "wsrep_cluster_status") == "non-Primary", 30)
    r = rcpt_once(ps[0].port, "127.0.77.2", "lone@example.com")
    assert r[0] == 451 and r[1].startswith("4.3.0"), r
    ps[0].wait_log(r"greylist database .*127\.0\.0\.1:%d: .*WSREP has not yet prepared node"
                   % cluster.port(0))
