"""test_stats_mix.py - the whole mix the issue names at once: accepted,
greylisted, rejected and virus traffic through one perimd with
greylisting and libclamav scanning on; /metrics shows exactly those
counts (viruses by name, scans by verdict, the scan time histogram) and
promtool accepts the exposition."""

import subprocess

import pytest

from harness import Client, known_params
from test_av import EICAR, SIG_EICAR, write_db
from test_stats import metrics, promtool

CLEAN = b"Subject: clean\r\n\r\nnothing to see\r\n"


def transaction(c, rcpt, body):
    """MAIL, RCPT; if accepted DATA and body. The last reply's code."""
    assert c.cmd("MAIL FROM:<a@client.test>")[0] == 250
    r = c.cmd("RCPT TO:<%s>" % rcpt)
    if r[0] != 250:
        c.cmd("RSET")
        return r[0]
    assert c.cmd("DATA")[0] == 354
    c.send(body + b".\r\n")
    return c.reply(30)[0]


def test_known_mix_counts_exactly(perimd_factory, sink, tmp_path):
    if "av_scanner" not in known_params() or "greylist" not in known_params():
        pytest.skip("built without scanning or greylisting")
    db = write_db(str(tmp_path / "db"))
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, relay_domains="example.com",
                       greylist="yes", greylist_delay="1h", av_scanner="libclamav",
                       clamav_database_directory=db, av_threads=1)
    with Client(p.port, timeout=30) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        # Role accounts skip greylisting: two clean messages are relayed.
        assert transaction(c, "postmaster@example.com", CLEAN) == 250
        assert transaction(c, "abuse@example.com", CLEAN) == 250
        # A new triplet, then its early retry: greylisted twice.
        assert transaction(c, "bob@example.com", CLEAN) == 451
        assert transaction(c, "bob@example.com", CLEAN) == 451
        # Relay denied.
        assert transaction(c, "x@elsewhere.test", CLEAN) == 550
        # A virus, to a role account (scanning is never exempted).
        assert transaction(c, "hostmaster@example.com",
                           b"Subject: eicar\r\n\r\n" + EICAR + b"\r\n") == 554
    assert sink.wait_count(2, 10)
    m = metrics(p)
    want = {
        "perimd_messages_relayed_total": 2,
        'perimd_recipients_rejected_total{reason="greylist"}': 2,
        'perimd_recipients_rejected_total{reason="relay_denied"}': 1,
        'perimd_messages_rejected_total{reason="virus"}': 1,
        'perimd_greylist_decisions_total{result="new"}': 1,
        'perimd_greylist_decisions_total{result="early"}': 1,
        'perimd_viruses_total{name="%s"}' % SIG_EICAR: 1,
        'perimd_av_scans_total{verdict="clean"}': 2,
        'perimd_av_scans_total{verdict="virus"}': 1,
        "perimd_av_errors_total": 0,
        "perimd_av_scan_seconds_count": 3,
        'perimd_av_scan_seconds_bucket{le="+Inf"}': 3,
    }
    got = {k: m.get(k) for k in want}
    assert got == want, got
    tool = promtool()
    if tool:
        import urllib.request
        body = urllib.request.urlopen("http://%s/metrics" % p.params["stats_listen"],
                                      timeout=10).read()
        r = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_healthz_503_while_loading_signatures(perimd_factory, sink, tmp_path):
    """/healthz answers 503 "starting" while the virus engine loads (a
    database of 300,000 signatures the test writes), then 200."""
    if "av_scanner" not in known_params():
        pytest.skip("built without scanning")
    import hashlib
    import socket
    import threading
    import time
    db = write_db(str(tmp_path / "db"))
    with open(tmp_path / "db" / "big.hdb", "w") as f:
        for i in range(300000):
            f.write("%s:%d:Perimd.Big.%d\n" % (hashlib.md5(str(i).encode()).hexdigest(),
                                                1000 + i % 5000, i))
    p = perimd_factory(start=False, relay_backends="[127.0.0.1]:%d" % sink.port,
                       relay_domains="example.com", av_scanner="libclamav",
                       clamav_database_directory=db, av_threads=1)
    port = int(p.params["stats_listen"].rsplit(":", 1)[1])
    starter = threading.Thread(target=lambda: p.start(timeout=60))
    starter.start()
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                data = b""
                while True:
                    d = s.recv(4096)
                    if not d:
                        break
                    data += d
            code = int(data.split(b" ")[1])
            if not seen or seen[-1] != code:
                seen.append(code)
            if code == 200:
                break
        except (OSError, IndexError, ValueError):
            pass   # not bound yet
        time.sleep(0.01)
    starter.join(60)
    assert seen and seen[0] == 503 and seen[-1] == 200, seen
    assert "no mail is accepted until it is ready" in p.log_text()


def test_sessions_peak_between_samples(perimd_factory, sink):
    """The graphs' per-minute sessions maximum sees a burst that opened and
    closed between two history samples (taken every 5 s)."""
    import re
    import time
    import urllib.request
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, relay_domains="example.com")
    clients = [Client(p.port) for _ in range(12)]
    for c in clients:
        assert c.banner[0] == 220
    for c in clients:
        c.cmd("QUIT")
        c.close()
    url = "http://%s/" % p.params["stats_listen"]
    deadline = time.monotonic() + 15
    most = 0
    while time.monotonic() < deadline:
        page = urllib.request.urlopen(url, timeout=5).read().decode()
        m = re.search(r"Most sessions open this minute: (\d+)", page)
        most = int(m.group(1)) if m else 0
        if most >= 12:
            break
        time.sleep(0.2)
    assert most >= 12, most
