"""test_fleet_state.py - state two perimd boxes share through one MariaDB
(the greylist store, test_grey.MariaDB): recipient verdicts of callouts
(fleet_share_recipient_verdicts: one box learns that gone@ does not exist
or that alice@ does, the other answers from its cache, and the backend
gets one callout instead of one per box), and per-client session counts
and rates (fleet_share_client_limits: a client spread over two boxes meets
one limit). Off, each box counts alone."""

import time

from backend import Backend
from harness import Client
from test_faults import metrics, wait_for
from test_grey import mariadb  # noqa: F401 (the fixture: a MariaDB with database greytest)


def boxes(perimd_factory, tmp_path, mariadb, backend, **params):
    cf = tmp_path / "fleet.cf"
    cf.write_text("hosts = 127.0.0.1:%d\nuser = root\npassword =\ndbname = greytest\n" % mariadb.port)
    conf = dict(relay_backends=backend.target, greylist="no", greylist_database="mysql:%s" % cf,
                fleet_sync_interval="200ms")
    conf.update(params)
    return perimd_factory(**conf), perimd_factory(**conf)


def syncs(p):
    return metrics(p).get('perimd_fleet_syncs_total{result="ok"}', 0)


def synced(*ps):
    """Wait for two more syncs on every box (news written, then read)."""
    base = [syncs(p) for p in ps]
    assert wait_for(lambda: all(syncs(p) >= b + 2 for p, b in zip(ps, base)), 15), \
        "the boxes did not sync"


def rcpt(p, to, source="127.0.0.2"):
    with Client(p.port, source=source) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
        r = c.cmd("RCPT TO:<%s>" % to)
        c.cmd("QUIT")
        return r


def test_shared_recipient_verdicts(perimd_factory, tmp_path, mariadb):
    b = Backend(tmp_path, name="b", rcpt_reply={"gone@*": "550 5.1.1 no such user"}).start()
    try:
        a, c = boxes(perimd_factory, tmp_path, mariadb, b, relay_recipient_verify="yes",
                     fleet_share_recipient_verdicts="yes")
        r = rcpt(a, "gone@example.com")
        assert r[0] == 550 and r[1].startswith("5.1.1 <gone@example.com>"), r
        assert rcpt(a, "alice@example.com")[0] == 250
        assert b.stats()["commands"].get("RCPT", 0) == 2   # two callouts
        assert wait_for(lambda: metrics(c).get('perimd_fleet_verdicts_total{direction="read"}', 0)
                        >= 2, 15), "box 2 never read the verdicts"
        # Box 2 knows both without asking the backend.
        r = rcpt(c, "gone@example.com", source="127.0.1.2")
        assert r[0] == 550 and r[1] == "5.1.1 <gone@example.com>: recipient unknown", r
        assert rcpt(c, "alice@example.com", source="127.0.1.2")[0] == 250
        assert b.stats()["commands"].get("RCPT", 0) == 2
        m = metrics(a)
        assert m['perimd_fleet_verdicts_total{direction="written"}'] == 2
        assert m['perimd_fleet_syncs_total{result="failed"}'] == 0
        # Not shared: a third box calls out itself.
        d = boxes(perimd_factory, tmp_path, mariadb, b, relay_recipient_verify="yes")[0]
        assert rcpt(d, "gone@example.com")[0] == 550
        assert b.stats()["commands"].get("RCPT", 0) == 3
    finally:
        b.stop()


def hold(p, source, n):
    """n open sessions from source (greeted), or the refusal of the first
    one refused: (clients, refusal or None)."""
    out = []
    for _ in range(n):
        c = Client(p.port, source=source)
        if not c.banner or c.banner[0] != 220:
            c.close()
            return out, c.banner
        out.append(c)
    return out, None


def test_shared_client_limits(perimd_factory, tmp_path, mariadb):
    b = Backend(tmp_path, name="b").start()
    held = []
    try:
        a, c = boxes(perimd_factory, tmp_path, mariadb, b, smtpd_client_connection_count_limit="3",
                     fleet_share_client_limits="yes")
        # Two sessions on box 1, then box 2 allows only one more.
        s, refused = hold(a, "127.0.5.5", 2)
        held += s
        assert refused is None, refused
        synced(a, c)
        s, refused = hold(c, "127.0.5.5", 2)
        held += s
        assert len(s) == 1 and refused and refused[0] == 421 and "too many connections" in refused[1], \
            (len(s), refused)
        # Another client is not concerned.
        s, refused = hold(c, "127.0.5.6", 3)
        held += s
        assert refused is None, refused
        # Box 1's sessions end: box 2 takes two more.
        for x in held[:2]:
            x.cmd("QUIT")
            x.close()
        synced(a, c)
        s, refused = hold(c, "127.0.5.5", 2)
        held += s
        assert refused is None, refused
        assert metrics(c)['perimd_connections_refused_total{reason="client_limit"}'] == 1
        # Off: each box counts alone.
        e, f = boxes(perimd_factory, tmp_path, mariadb, b, smtpd_client_connection_count_limit="3")
        s, refused = hold(e, "127.0.6.5", 3)
        held += s
        assert refused is None
        time.sleep(0.5)
        s, refused = hold(f, "127.0.6.5", 3)
        held += s
        assert refused is None
    finally:
        for x in held:
            x.close()
        b.stop()


def test_shared_client_rate(perimd_factory, tmp_path, mariadb):
    b = Backend(tmp_path, name="b").start()
    try:
        a, c = boxes(perimd_factory, tmp_path, mariadb, b, smtpd_client_connection_rate_limit="4",
                     fleet_share_client_limits="yes")
        # A minute boundary in the middle would reset the counts: start
        # early in a minute.
        if time.time() % 60 > 45:
            time.sleep(61 - time.time() % 60)
        for _ in range(3):
            with Client(a.port, source="127.0.7.7") as x:
                assert x.banner[0] == 220
                x.cmd("QUIT")
        synced(a, c)
        with Client(c.port, source="127.0.7.7") as x:
            assert x.banner[0] == 220
        with Client(c.port, source="127.0.7.7") as x:
            assert x.banner[0] == 421 and "too many connections" in x.banner[1], x.banner
        assert metrics(c)['perimd_connections_refused_total{reason="client_rate"}'] == 1
    finally:
        b.stop()


def test_sharing_needs_mysql(perimd_factory, tmp_path):
    import subprocess
    from harness import PERIMD_BIN
    p = perimd_factory(start=False, fleet_share_client_limits="yes")
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path], capture_output=True, timeout=30)
    assert r.returncode == 1
    assert b"fleet_share_client_limits: the fleet shares through the greylist store: " \
           b"greylist_database must be mysql:FILE" in r.stderr, r.stderr


def test_stats_of_a_fleet(perimd_factory, sink):
    import subprocess
    from harness import PERIMD_BIN, free_port
    a = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port)
    c = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port)
    for p, n in ((a, 1), (c, 2)):
        for _ in range(n):
            with Client(p.port) as x:
                assert x.cmd("EHLO client.test")[0] == 250
                assert x.cmd("MAIL FROM:<a@client.test>")[0] == 250
                assert x.cmd("RCPT TO:<b@example.com>")[0] == 250
                assert x.cmd("DATA")[0] == 354
                assert x.cmd("Subject: t\r\n\r\nx\r\n.")[0] == 250
                x.cmd("QUIT")
    assert sink.wait_count(3, 10)

    def stats(*addrs):
        r = subprocess.run([PERIMD_BIN, "stats"] + list(addrs), capture_output=True, timeout=30)
        table = {}
        for line in r.stdout.decode().splitlines():
            if not line.startswith("#"):
                k, v = line.rsplit(None, 1)
                table[k] = float(v)
        return r.returncode, r.stdout.decode(), r.stderr.decode(), table
    rc, out, err, t = stats(a.params["stats_listen"], "http://%s/metrics" % c.params["stats_listen"])
    assert rc == 0 and out.startswith("# 2 of 2 boxes answered"), (out, err)
    assert t["perimd_messages_relayed_total"] == 3
    assert t['perimd_connections_accepted_total'] >= 3
    # A box that does not answer: named, the others still summed.
    dead = "127.0.0.1:%d" % free_port()
    rc, out, err, t = stats(a.params["stats_listen"], dead)
    assert rc == 1 and dead in err and out.startswith("# 1 of 2 boxes answered"), (out, err)
    assert t["perimd_messages_relayed_total"] == 1
