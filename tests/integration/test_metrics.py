"""test_metrics.py - /metrics for a fleet: refused recipients and refused
messages counted apart, every fixed label value in snake_case, the virus
name label set capped with an "other" bucket, perimd_build_info, the
standard process metrics and the configuration fingerprint (changes on
SIGHUP after a map edit, equal on two boxes with the same configuration),
checked by promtool.
"""

import os
import re
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import PERIMD_BIN, smtp_dialogue, wait_for  # noqa: E402
from test_stats import get, metrics, promtool, stats_port  # noqa: E402

# Labels whose values are names from outside (signatures, hosts, files).
FREE_LABELS = {"name", "backend", "file", "server", "le", "version", "fingerprint", "libclamav",
               "features", "revision", "compiler"}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(p):
    status, _, body = get(stats_port(p), "/metrics")
    assert status == 200
    text = body.decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, line
        out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out, text


def traffic(p):
    """Accepted mail, refused recipients (relay, syntax), refused messages
    (size at MAIL, backend 5xx) and a failed TLS-less command mix."""
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<x@other.test>",
                               "RCPT TO:<y@other.test>", "RCPT TO:<bad address>",
                               "RCPT TO:<b@example.com>", "DATA", "Subject: t", "", "x", ".",
                               "MAIL FROM:<a@client.test> SIZE=999999999999", "QUIT"])
    assert [x[0] for x in r] == [220, 250, 250, 550, 550, 501, 250, 354, 250, 552, 221], r


def test_recipient_and_message_refusals_apart_snake_case_labels(perimd_factory, sink):
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port, smtpd_error_sleep_time="0")
    traffic(p)
    m = metrics(p)
    assert m['perimd_recipients_rejected_total{reason="relay_denied"}'] == 2
    assert m['perimd_recipients_rejected_total{reason="rfc"}'] == 1
    assert m['perimd_messages_rejected_total{reason="size"}'] == 1
    assert m['perimd_messages_rejected_total{reason="rfc"}'] == 0
    assert sum(v for k, v in m.items() if k.startswith("perimd_recipients_rejected_total")) == 3
    assert sum(v for k, v in m.items() if k.startswith("perimd_messages_rejected_total")) == 1
    assert m['perimd_backend_replies_total{stage="mail_from",class="2xx"}'] == 1
    assert m['perimd_backend_replies_total{stage="rcpt_to",class="2xx"}'] == 1
    ss, _ = samples(p)
    seen = set()
    for name, labels, _v in ss:
        for k, v in labels.items():
            if k in FREE_LABELS:
                continue
            seen.add(k)
            assert re.fullmatch(r"[a-z0-9_]+", v), "%s{%s=%r}: not snake_case" % (name, k, v)
    assert {"reason", "stage", "class", "result"} <= seen, seen


def test_virus_names_capped_with_other_bucket(perimd_factory, sink, tmp_path):
    """stats_virus_names_max = 3 and 5 distinct signatures found: 3 named
    series, the other 2 finds in name="other"; the scans total stays 5."""
    db = tmp_path / "db"
    db.mkdir()
    marks = [("Perimd.Test.Cap%d" % i, ("perimd-cap-marker-%d-5e1f0c" % i).encode()) for i in range(5)]
    (db / "cap.ndb").write_text("".join("%s:0:*:%s\n" % (n, d.hex()) for n, d in marks))
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port, av_scanner="libclamav",
                       clamav_database_directory=str(db), av_threads=1, stats_virus_names_max=3)
    for _n, data in marks:
        r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<b@example.com>",
                                   "DATA", "Subject: v", "", data, ".", "QUIT"], timeout=30)
        assert r[-2][0] == 554, r
    m = metrics(p)
    named = {k: v for k, v in m.items() if k.startswith("perimd_viruses_total{")}
    assert named.pop('perimd_viruses_total{name="other"}') == 2, named
    assert len(named) == 3 and set(named.values()) == {1}, named
    assert all(re.search(r'name="Perimd\.Test\.Cap[0-4]\.UNOFFICIAL"', k) for k in named), named
    assert m['perimd_messages_rejected_total{reason="virus"}'] == 5


def fingerprint(p):
    m = metrics(p)
    fp = [(k, v) for k, v in m.items() if k.startswith("perimd_config_fingerprint{")]
    assert len(fp) == 1, fp
    return fp[0]


def test_build_process_metrics_and_fingerprint(perimd_factory, sink, tmp_path):
    """perimd_build_info, the process_* metrics Prometheus' client libraries
    export (checked against /proc and by promtool check metrics), and the
    fingerprint: the same for the same configuration on another box (here:
    the same file copied elsewhere, after the first stopped), changed by a
    SIGHUP after a map edit, back when the edit is undone."""
    amap = tmp_path / "access"
    amap.write_text("192.0.2.1 REJECT\n")
    params = dict(relay_backends="127.0.0.1:%d" % sink.port,
                  client_access_maps="file:%s" % amap)
    p = perimd_factory(**params)
    ss, text = samples(p)
    by = {n: (lab, v) for n, lab, v in ss}
    lab, v = by["perimd_build_info"]
    assert v == 1 and re.fullmatch(r"\d+\.\d+\.\d+\S*", lab["version"]) and lab["build"] in (
        "static", "dynamic"), lab
    out = subprocess.run([PERIMD_BIN, "-V"], capture_output=True, text=True, timeout=10).stdout
    assert ("perimd %s" % lab["version"]) in out
    # Process metrics: sane against what the kernel says of the process.
    start = by["process_start_time_seconds"][1]
    assert abs(start - os.stat("/proc/%d" % p.pid).st_mtime) < 120 or start > 1.7e9
    rss_kb = int(re.search(r"VmRSS:\s+(\d+) kB", open("/proc/%d/status" % p.pid).read()).group(1))
    assert 0.5 < by["process_resident_memory_bytes"][1] / (rss_kb * 1024) < 2
    nfd = len(os.listdir("/proc/%d/fd" % p.pid))
    assert abs(by["process_open_fds"][1] - nfd) <= 4, (by["process_open_fds"], nfd)
    assert by["process_max_fds"][1] >= by["process_open_fds"][1]
    assert by["process_virtual_memory_bytes"][1] >= by["process_resident_memory_bytes"][1]
    assert by["process_cpu_seconds_total"][1] >= 0
    tool = promtool()
    assert tool, "promtool (Debian package prometheus, build.sh DEPS) not found"
    if tool:
        r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    # The fingerprint: equal for the same configuration elsewhere.
    key1, val1 = fingerprint(p)
    assert re.fullmatch(r'perimd_config_fingerprint\{fingerprint="[0-9a-f]{16}"\}', key1)
    assert val1 == int(re.search(r'"([0-9a-f]{16})"', key1).group(1), 16) & ((1 << 53) - 1)
    p.stop()
    q = perimd_factory(start=False, **params)
    with open(p.conf_path) as f:
        conf = f.read()
    with open(q.conf_path, "w") as f:
        f.write(conf)  # the same file: same ports, same directories
    q.port, q.params = p.port, p.params
    q.start()
    assert fingerprint(q) == (key1, val1)
    # A map edit and SIGHUP: another fingerprint; undone: the first again.
    amap.write_text("192.0.2.1 REJECT\n192.0.2.2 REJECT\n")
    q.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: fingerprint(q)[0] != key1, 10)
    key2 = fingerprint(q)[0]
    amap.write_text("192.0.2.1 REJECT\n")
    q.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: fingerprint(q)[0] == key1, 10), (fingerprint(q), key1, key2)
    # A parameter change too (a reloadable one).
    with open(q.conf_path, "a") as f:
        f.write("smtpd_error_sleep_time = 2s\n")
    q.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: fingerprint(q)[0] not in (key1, key2), 10)
