"""test_stats.py - observability end to end: /metrics counts a known mix of
traffic exactly and passes `promtool check metrics`; /healthz says 200 while
perimd accepts mail and 503 while it drains; the backend reachability
gauge follows the backend; the per-minute history survives a restart; the
SVG graphs parse and hold their series; headless Chromium renders the
status page; malformed requests get 400; `perimd stats` and
`perimd healthcheck` ask the running daemon.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import PERIMD_BIN, REPO, Client, smtp_dialogue  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"
BODY = b"Subject: stats\r\n\r\nhello\r\n"


def http(port, raw, timeout=10):
    """Send raw bytes to 127.0.0.1:port, return (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if isinstance(raw, str):
            raw = raw.encode()
        s.sendall(raw)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    assert m, "not an HTTP answer: %r" % data[:200]
    return int(m.group(1)), head.decode("latin-1"), body


def get(port, path):
    return http(port, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path)


def stats_port(p):
    return int(p.params["stats_listen"].rsplit(":", 1)[1])


def metrics(p):
    """{'name{labels}': value} of one /metrics answer."""
    status, head, body = get(stats_port(p), "/metrics")
    assert status == 200
    out = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def send(port, rcpts=("b@example.com",), mail="MAIL FROM:<a@client.test>", body=BODY):
    """One transaction; returns the replies from MAIL on."""
    lines = ["EHLO client.test", mail] + ["RCPT TO:<%s>" % r for r in rcpts]
    lines += ["DATA", body.rstrip(b"\r\n"), ".", "QUIT"]
    return [r[0] for r in smtp_dialogue(port, lines)][2:]


def start(perimd_factory, backends, **params):
    base = {"relay_backends": ", ".join(b.target for b in backends)}
    base.update(params)
    return perimd_factory(**base)


def promtool():
    """promtool from Debian's prometheus package, unpacked (never started)
    into build/promtool; None when it cannot be had."""
    cache = os.path.join(REPO, "build", "promtool")
    tool = os.path.join(cache, "usr", "bin", "promtool")
    if os.path.exists(tool):
        return tool
    if shutil.which("promtool"):
        return shutil.which("promtool")
    os.makedirs(cache, exist_ok=True)
    dl = tempfile.mkdtemp(prefix="perimd-prom-")
    try:
        subprocess.run(["apt-get", "download", "prometheus"], cwd=dl, timeout=240,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        debs = [f for f in os.listdir(dl) if f.endswith(".deb")]
        if not debs:
            return None
        subprocess.run(["dpkg-deb", "-x", os.path.join(dl, debs[0]), cache], timeout=120,
                       check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    return tool if os.path.exists(tool) else None


def test_metrics_count_known_traffic(perimd_factory, backend_factory):
    b = backend_factory()
    p = start(perimd_factory, [b], message_size_limit="100k")
    base = metrics(p)
    assert base["perimd_messages_received_total"] == 0
    # 3 accepted messages; 2 relay-denied recipients; 1 size refusal at
    # MAIL; 1 message the backend refuses with 554.
    for _ in range(3):
        assert send(p.port) == [250, 250, 354, 250, 221]
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@c.test>", "RCPT TO:<x@other.test>",
                               "RCPT TO:<y@other.test>", "QUIT"])
    assert [x[0] for x in r] == [220, 250, 250, 550, 550, 221]
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@c.test> SIZE=900000", "QUIT"])
    assert [x[0] for x in r] == [220, 250, 552, 221]
    b.set(reply={"eod": "554 5.7.1 not today"})
    assert send(p.port) == [250, 250, 354, 554, 221]
    m = metrics(p)
    assert m["perimd_messages_received_total"] == 4
    assert m["perimd_messages_relayed_total"] == 3
    # Refused recipients and refused messages are counted apart.
    rej = {k: v for k, v in m.items() if k.startswith("perimd_recipients_rejected_total")}
    assert rej.pop('perimd_recipients_rejected_total{reason="relay_denied"}') == 2
    assert set(rej.values()) == {0}, rej
    rej = {k: v for k, v in m.items() if k.startswith("perimd_messages_rejected_total")}
    assert rej.pop('perimd_messages_rejected_total{reason="size"}') == 1
    assert rej.pop('perimd_messages_rejected_total{reason="backend_reject"}') == 1
    assert set(rej.values()) == {0}, rej
    # Sessions: the 6 above (the start-up probe came before `base`).
    accepted = m["perimd_connections_accepted_total"] - base["perimd_connections_accepted_total"]
    assert accepted == 6
    assert m["perimd_message_latency_seconds_count"] == 4
    assert m['perimd_message_latency_seconds_bucket{le="+Inf"}'] == 4
    assert m["perimd_transactions_in_flight"] == 0
    assert m['perimd_backend_replies_total{stage="end_of_data",class="2xx"}'] == 3
    assert m['perimd_backend_replies_total{stage="end_of_data",class="5xx"}'] == 1
    assert m['perimd_backend_up{backend="127.0.0.1:%d"}' % b.port] == 1
    assert m['perimd_backend_connections_total{result="failed"}'] == 0
    assert m["perimd_sessions_active"] == 0
    assert m["perimd_accepting_mail"] == 1


def test_promtool_accepts_metrics(perimd_factory, backend_factory, tmp_path):
    tool = promtool()
    if not tool:
        pytest.skip("promtool (Debian prometheus package) cannot be had here")
    b = backend_factory()
    p = start(perimd_factory, [b])
    assert send(p.port) == [250, 250, 354, 250, 221]
    status, head, body = get(stats_port(p), "/metrics")
    assert status == 200 and "text/plain; version=0.0.4" in head
    r = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert r.returncode == 0, (r.stdout + r.stderr).decode()
    # promtool does fail on a broken exposition (the check can fail).
    bad = body.replace(b"# TYPE perimd_messages_relayed_total counter",
                       b"# TYPE perimd_messages_relayed_total nonsense")
    r = subprocess.run([tool, "check", "metrics"], input=bad, capture_output=True, timeout=60)
    assert r.returncode != 0


def test_backend_reachability_follows_backend(perimd_factory, backend_factory):
    b = backend_factory()
    p = start(perimd_factory, [b], relay_idle_timeout="0s", relay_connect_timeout="2s")
    key = 'perimd_backend_up{backend="127.0.0.1:%d"}' % b.port
    assert send(p.port) == [250, 250, 354, 250, 221]
    assert metrics(p)[key] == 1
    b.stop()
    assert send(p.port)[3] == 451
    m = metrics(p)
    assert m[key] == 0
    assert m['perimd_backend_connections_total{result="failed"}'] >= 1
    assert m['perimd_messages_rejected_total{reason="backend_tempfail"}'] == 1
    b.start()
    assert send(p.port) == [250, 250, 354, 250, 221]
    assert metrics(p)[key] == 1


def test_healthz_503_while_draining(perimd_factory, backend_factory):
    b = backend_factory()
    p = start(perimd_factory, [b], shutdown_timeout="30s")
    sp = stats_port(p)
    assert get(sp, "/healthz")[0] == 200
    hc = subprocess.run([PERIMD_BIN, "healthcheck", "-c", p.conf_path], capture_output=True,
                        timeout=30)
    assert hc.returncode == 0, hc.stderr
    c = Client(p.port)
    assert c.banner[0] == 220
    assert c.cmd("EHLO held.test")[0] == 250
    p.proc.send_signal(signal.SIGTERM)
    p.wait_log(r"stopping: draining sessions")
    status, _, body = get(sp, "/healthz")
    assert status == 503 and b"draining" in body
    # Still answering a while later: the held session keeps perimd draining.
    time.sleep(0.5)
    assert get(sp, "/healthz")[0] == 503
    assert p.proc.poll() is None
    hc = subprocess.run([PERIMD_BIN, "healthcheck", "-c", p.conf_path], capture_output=True,
                        timeout=30)
    assert hc.returncode == 1
    # The session may still finish its business during the drain.
    assert c.cmd("QUIT")[0] == 221
    c.close()
    assert p.proc.wait(15) == 0
    p.kill()  # already gone: only marks it stopped
    assert p.sanitizer_report() is None


def svg_series(svg_bytes):
    """{series: [values]} of one SVG graph (which must parse as XML)."""
    root = ET.fromstring(svg_bytes)
    assert root.tag == SVG + "svg"
    assert root.find(SVG + "title") is not None
    out = {}
    for pl in root.iter(SVG + "polyline"):
        vals = [float(x) for x in pl.get("data-values").split()]
        assert len(vals) == len(pl.get("points").split())
        out[pl.get("data-series")] = vals
    return out


def test_graphs_and_history_survive_restart(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    data = str(tmp_path / "shared-lib")
    p = start(perimd_factory, [b], data_directory=data)
    for _ in range(2):
        assert send(p.port) == [250, 250, 354, 250, 221]
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@c.test>", "RCPT TO:<x@other.test>", "QUIT"])
    assert [x[0] for x in r] == [220, 250, 250, 550, 221]
    expect = {("messages", "hour"): 60, ("messages", "day"): 288, ("messages", "week"): 336,
              ("messages", "month"): 360, ("messages", "year"): 365,
              ("sessions", "hour"): 60, ("sessions", "day"): 288, ("sessions", "week"): 336,
              ("sessions", "month"): 360, ("sessions", "year"): 365}
    for (which, period), n in expect.items():
        status, head, body = get(stats_port(p), "/graph/%s-%s.svg" % (which, period))
        assert status == 200 and "image/svg+xml" in head
        series = svg_series(body)
        want = ({"received", "greylisted", "rejected", "viruses"} if which == "messages"
                else {"sessions", "inflight"})
        assert set(series) == want
        assert all(len(v) == n for v in series.values())
    hour = svg_series(get(stats_port(p), "/graph/messages-hour.svg")[2])
    assert sum(hour["received"]) == 2 and sum(hour["rejected"]) == 1
    assert max(svg_series(get(stats_port(p), "/graph/sessions-hour.svg")[2])["sessions"]) >= 0
    assert get(stats_port(p), "/graph/nothing-hour.svg")[0] == 404
    p.stop()
    assert os.path.exists(os.path.join(data, "stats.history"))
    # A new daemon on the same data_directory shows the earlier minutes.
    p2 = start(perimd_factory, [b], data_directory=data)
    assert metrics(p2)["perimd_messages_received_total"] == 0
    hour = svg_series(get(stats_port(p2), "/graph/messages-hour.svg")[2])
    assert sum(hour["received"]) == 2 and sum(hour["rejected"]) == 1
    # The month (2-hour points) and year (daily points) views hold them too
    # (per minute: 2 received in a 120- or 1440-minute point).
    month = svg_series(get(stats_port(p2), "/graph/messages-month.svg")[2])
    assert round(sum(month["received"]) * 120, 3) == 2, month["received"][-3:]
    year = svg_series(get(stats_port(p2), "/graph/messages-year.svg")[2])
    assert round(sum(year["received"]) * 1440, 2) == 2, year["received"][-3:]
    # The page holds all ten graphs inline: hour, day, week, month, year.
    status, head, page = get(stats_port(p2), "/")
    assert status == 200 and page.count(b"<svg ") == 10 and b"<script" not in page
    for period in (b"last month", b"last year"):
        assert page.count(period) >= 2, period


def test_malformed_requests_get_400(perimd_factory):
    p = perimd_factory()
    sp = stats_port(p)
    bad = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ]
    for raw in bad:
        assert http(sp, raw)[0] == 400, raw[:60]
    assert http(sp, b"POST /metrics HTTP/1.1\r\n\r\n")[0] == 405
    assert get(sp, "/nothing")[0] == 404
    # A request trickled in byte by byte is still answered.
    with socket.create_connection(("127.0.0.1", sp), timeout=10) as s:
        for ch in b"GET /healthz?x=1 HTTP/1.0\r\n\r\n":
            s.sendall(bytes([ch]))
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
    assert get(sp, "/healthz")[0] == 200


def test_stats_command_prints_live_counters(perimd_factory, backend_factory):
    b = backend_factory()
    p = start(perimd_factory, [b])
    assert send(p.port) == [250, 250, 354, 250, 221]
    r = subprocess.run([PERIMD_BIN, "stats", "-c", p.conf_path], capture_output=True,
                       timeout=30, text=True)
    assert r.returncode == 0, r.stderr
    rows = dict(line.rsplit(None, 1) for line in r.stdout.splitlines())
    assert rows["perimd_messages_received_total"] == "1"
    assert rows["perimd_messages_relayed_total"] == "1"
    assert not any(k.startswith("#") for k in rows)
    p.stop()
    r = subprocess.run([PERIMD_BIN, "healthcheck", "-c", p.conf_path], capture_output=True,
                       timeout=30)
    assert r.returncode == 1
    r = subprocess.run([PERIMD_BIN, "stats", "-c", p.conf_path], capture_output=True, timeout=30)
    assert r.returncode == 1


def chromium():
    """The chromium binary, installed from Debian if missing (as root);
    None when that cannot be done."""
    path = shutil.which("chromium")
    if path:
        return path
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), timeout=600,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return shutil.which("chromium")


def test_chromium_renders_status_page(perimd_factory, backend_factory, tmp_path):
    browser = chromium()
    if not browser:
        pytest.skip("chromium is not installed and cannot be installed here")
    b = backend_factory()
    p = start(perimd_factory, [b])
    assert send(p.port) == [250, 250, 354, 250, 221]
    shot = str(tmp_path / "page.png")
    profile = tempfile.mkdtemp(prefix="perimd-chromium-")
    try:
        r = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--user-data-dir=" + profile, "--window-size=800,2400", "--screenshot=" + shot,
             "http://127.0.0.1:%d/" % stats_port(p)],
            capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert os.path.exists(shot), r.stderr.decode(errors="replace")[-2000:]
    with open(shot, "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # A blank page compresses to a few kB; ten labelled graphs do not.
    assert len(png) > 20000, len(png)


def test_month_and_year_views_from_old_history(perimd_factory, backend_factory, tmp_path):
    """A history file of the previous format (minutes only) with traffic
    20 and 200 days ago: the week view no longer shows it, the month view
    shows the first, the year view both, and after a restart (the file now
    in the new format) the same."""
    b = backend_factory()
    data = tmp_path / "old-lib"
    data.mkdir()
    now_min = int(time.time()) // 60
    m20, m200 = now_min - 20 * 1440, now_min - 200 * 1440
    (data / "stats.history").write_text(
        "perimd-history 1\n%d 240 0 12 0 30 2\n%d 1440 0 0 0 5 0\n" % (m20, m200))
    for restart in range(2):
        p = start(perimd_factory, [b], data_directory=str(data))
        week = svg_series(get(stats_port(p), "/graph/messages-week.svg")[2])
        assert sum(week["received"]) == 0
        month = svg_series(get(stats_port(p), "/graph/messages-month.svg")[2])
        assert [round(v * 120) for v in month["received"] if v] == [240], restart
        assert [round(v * 120) for v in month["rejected"] if v] == [12]
        sess = svg_series(get(stats_port(p), "/graph/sessions-month.svg")[2])
        assert max(sess["sessions"]) == 30
        year = svg_series(get(stats_port(p), "/graph/messages-year.svg")[2])
        assert sorted(round(v * 1440) for v in year["received"] if v) == [240, 1440], restart
        # The first point of the year view is 364 days back, the last today.
        assert len(year["received"]) == 365
        i20 = [i for i, v in enumerate(year["received"]) if round(v * 1440) == 240][0]
        assert 364 - i20 in (19, 20, 21), i20
        p.stop()
    assert (data / "stats.history").read_text().startswith("perimd-history 2\n")
