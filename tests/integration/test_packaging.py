"""test_packaging.py - what ships beside the binary for operators, checked
with the real tools: the systemd unit (systemd-analyze verify, and its
capability bounding set really enough to bind port 25 and drop to
mail_owner), the compose file (docker-compose config), the Prometheus
alert rules (promtool check/test rules), a real Prometheus scraping a
running perimd with those rules loaded and every Grafana dashboard query
answered, and the fail2ban filter (fail2ban-regex on a log perimd wrote)."""

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from harness import PERIMD_BIN, free_port, smtp_dialogue, wait_banner, wait_for

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEPLOY = os.path.join(REPO, "deploy")
UNIT = os.path.join(DEPLOY, "systemd", "perimd.service")
COMPOSE = os.path.join(DEPLOY, "compose", "compose.yaml")
RULES = os.path.join(DEPLOY, "prometheus", "perimd-alerts.yml")
RULES_TEST = os.path.join(DEPLOY, "prometheus", "perimd-alerts.test.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "perimd-dashboard.json")
F2B_FILTER = os.path.join(DEPLOY, "fail2ban", "filter.d", "perimd.conf")

# The longest a stop may take with the defaults (perimd(8), SIGNALS):
# shutdown_timeout + relay_data_done_timeout.
LONGEST_STOP_S = 30 + 300


def run(*args, timeout=120, **kw):
    return subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout, text=True, **kw)


def unit_settings():
    """[Service] settings of the unit: {name: [values...]}."""
    out, section = {}, None
    with open(UNIT) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            k, v = line.split("=", 1)
            out.setdefault((section, k), []).append(v)
    return out


def seconds(text):
    m = re.fullmatch(r"(\d+)\s*(min|m|s|h)?", text.strip())
    assert m, text
    return int(m.group(1)) * {"min": 60, "m": 60, "h": 3600, "s": 1, None: 1}[m.group(2)]


# ---------------------------------------------------------------------------
# systemd


def test_systemd_unit_verifies(tmp_path):
    """systemd-analyze verify accepts the unit (with the binary path pointed
    at the build under test), and the unit checks the configuration before
    start, reloads with SIGHUP and waits long enough for the drain."""
    text = open(UNIT).read().replace("/usr/sbin/perimd", PERIMD_BIN)
    unit = tmp_path / "perimd.service"
    unit.write_text(text)
    r = run("systemd-analyze", "verify", "--man=no", str(unit))
    assert r.returncode == 0, r.stdout
    assert "perimd.service" not in r.stdout, r.stdout
    s = unit_settings()
    assert any(" -t " in v for v in s[("Service", "ExecStartPre")])
    assert s[("Service", "ExecReload")] == ["/bin/kill -HUP $MAINPID"]
    assert seconds(s[("Service", "TimeoutStopSec")][0]) > LONGEST_STOP_S
    assert s[("Service", "NoNewPrivileges")] == ["yes"]
    assert s[("Service", "ProtectSystem")] == ["strict"]
    # A unit with a broken directive fails: the check is real.
    bad = tmp_path / "bad.service"
    bad.write_text(text.replace("ExecStart=", "ExecStart=relative/path "))
    assert run("systemd-analyze", "verify", "--man=no", str(bad)).returncode != 0


def caps_of_unit():
    v = unit_settings()[("Service", "CapabilityBoundingSet")][0].split()
    return [c.lower() for c in v]


def start_with_caps(base, caps, addr, sink_port):
    """perimd as root under setpriv with exactly this bounding set and
    no_new_privs (what systemd's CapabilityBoundingSet= and
    NoNewPrivileges= do), listening on addr:25, mail_owner nobody, relaying
    to sink_port. Returns (proc, log path)."""
    # data_directory and the spool as a first start finds them: owned by
    # root, to be handed to mail_owner by perimd itself (CAP_CHOWN).
    lib, spool = os.path.join(base, "lib"), os.path.join(base, "spool")
    conf = os.path.join(base, "perimd.conf")
    with open(conf, "w") as f:
        f.write("\n".join([
            "smtpd_listen = %s:25" % addr,
            "stats_listen = 127.0.0.1:%d" % free_port(),
            "mail_owner = nobody",
            "data_directory = %s" % lib,
            "body_spool_directory = %s" % spool,
            "log_to = stderr",
            "myhostname = perimd.test",
            "io_threads = 1",
            "relay_domains = example.com",
            "relay_backends = 127.0.0.1:%d" % sink_port,
            "greylist = no",
            "reject_unknown_sender_domain = no",
            "shutdown_timeout = 3s",
            ""]))
    log = os.path.join(base, "perimd.log")
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")
    proc = subprocess.Popen(["setpriv", "--bounding-set", "-all," + ",".join("+" + c[4:] for c in caps),
                             "--inh-caps", "-all", "--no-new-privs",
                             PERIMD_BIN, "-f", "-c", conf],
                            stdin=subprocess.DEVNULL, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=env)
    return proc, log


@pytest.mark.skipif(os.geteuid() != 0, reason="binding port 25 and dropping privileges needs root")
def test_unit_capabilities_suffice(sink):
    """With the unit's bounding set and no_new_privs, perimd binds port 25,
    hands its directories to mail_owner, drops to it and relays a message;
    without CAP_NET_BIND_SERVICE the same start fails (the check can fail)."""
    import smtplib
    import socket
    caps = caps_of_unit()
    assert "cap_net_bind_service" in caps
    # Port 25 on an address of our own in 127/8: nothing else binds there.
    addr = "127.%d.%d.25" % (os.getpid() % 250 + 1, int(time.time()) % 250 + 1)
    # A directory mail_owner (nobody) can reach, as /var/lib is.
    base = tempfile.mkdtemp(prefix="perimd-caps-")
    os.chmod(base, 0o755)
    try:
        proc, log = start_with_caps(base, caps, addr, sink.port)
        try:
            def greets():
                try:
                    with socket.create_connection((addr, 25), timeout=2) as s:
                        return s.recv(100).startswith(b"220")
                except OSError:
                    return proc.poll() is not None
            assert wait_for(greets, 15), open(log).read()
            assert proc.poll() is None, open(log).read()
            with open("/proc/%d/status" % proc.pid) as f:
                status = f.read()
            nobody = pwd.getpwnam("nobody").pw_uid
            assert re.search(r"^Uid:\s+%d\s+%d\s+%d\s+%d" % ((nobody,) * 4), status, re.M), status
            assert re.search(r"^CapEff:\s+0+$", status, re.M), status
            assert os.stat(os.path.join(base, "lib")).st_uid == nobody
            with smtplib.SMTP(addr, 25, timeout=10) as c:
                c.sendmail("a@client.test", ["b@example.com"], "Subject: caps\r\n\r\nhello\r\n")
            assert sink.wait_count(1, 10) if hasattr(sink, "wait_count") else True
            assert sink.count() == 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        # Without the bind capability: a clear error, exit non-zero.
        sub = os.path.join(base, "nobind")
        os.mkdir(sub)
        os.chmod(sub, 0o755)
        proc, log = start_with_caps(sub, [c for c in caps if c != "cap_net_bind_service"],
                                    addr, sink.port)
        assert proc.wait(15) != 0
        assert re.search(r"%s:25" % re.escape(addr), open(log).read()), open(log).read()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------
# compose


def test_compose_file_valid():
    """docker-compose validates the file (schema, references); perimd gets
    a stop grace period longer than its longest drain; clamd shares its
    network namespace (av_scanner = clamd:127.0.0.1:3310); the perimd.conf
    it mounts passes perimd -t apart from the DNS name of the database."""
    r = run("docker-compose", "-f", COMPOSE, "config", cwd=os.path.dirname(COMPOSE))
    assert r.returncode == 0, r.stdout
    cfg = yaml.safe_load(r.stdout)
    p = cfg["services"]["perimd"]
    assert seconds(p["stop_grace_period"]) > LONGEST_STOP_S
    assert p["stop_signal"] == "SIGTERM"
    assert cfg["services"]["clamd"]["network_mode"] == "service:perimd"
    conf = open(os.path.join(os.path.dirname(COMPOSE), "perimd.conf")).read()
    assert "av_scanner = clamd:127.0.0.1:3310" in conf
    # The file is checked for real: a typo'd key is refused.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=os.path.dirname(COMPOSE)) as bad:
        bad.write(open(COMPOSE).read().replace("stop_grace_period: 10m", "stop_grace_priod: 10m"))
        bad.flush()
        assert run("docker-compose", "-f", bad.name, "config").returncode != 0


def test_compose_perimd_conf_passes_check(tmp_path):
    """The compose perimd.conf is a configuration perimd -t accepts (the
    greylisting .cf pointed at a local copy; the database need not be up:
    -t only warns about an unreachable server)."""
    d = os.path.dirname(COMPOSE)
    conf = open(os.path.join(d, "perimd.conf")).read()
    shutil.copy(os.path.join(d, "greylist-mysql.cf"), tmp_path / "greylist-mysql.cf")
    conf = conf.replace("/etc/perimd/greylist-mysql.cf", str(tmp_path / "greylist-mysql.cf"))
    conf = conf.replace("/var/lib/perimd", str(tmp_path / "lib")).replace(
        "/var/spool/perimd", str(tmp_path / "spool"))
    (tmp_path / "perimd.conf").write_text(conf)
    r = run(PERIMD_BIN, "-t", "-c", str(tmp_path / "perimd.conf"))
    assert r.returncode == 0, r.stdout


# ---------------------------------------------------------------------------
# Prometheus


def test_alert_rules_check_and_unit_tests():
    r = run("promtool", "check", "rules", RULES)
    assert r.returncode == 0, r.stdout
    assert "SUCCESS: 12 rules found" in r.stdout, r.stdout
    r = run("promtool", "test", "rules", RULES_TEST, cwd=os.path.dirname(RULES_TEST))
    assert r.returncode == 0, r.stdout
    assert "SUCCESS" in r.stdout


def prom_get(port, path, **q):
    url = "http://127.0.0.1:%d%s?%s" % (port, path, urllib.parse.urlencode(q))
    with urllib.request.urlopen(url, timeout=10) as f:
        return json.load(f)


def dashboard_queries():
    d = json.load(open(DASHBOARD))
    for p in d["panels"]:
        for t in p["targets"]:
            yield p["title"], t["expr"]


def metric_names(expr):
    return set(re.findall(r"\b(perimd_[a-z_]+?)(?:_bucket)?\b(?=[{\[ )]|$)", expr))


def test_prometheus_scrapes_perimd(tmp_path, perimd_factory, sink):
    """A real Prometheus scrapes a running perimd (TLS on, a clamd scanner
    configured), loads the alert rules without error, and answers every
    query of the Grafana dashboard, each metric it names exported."""
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "30", "-subj", "/CN=perimd.test"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port, smtpd_tls_cert_file=str(cert),
                       smtpd_tls_key_file=str(key))
    for _ in range(3):
        r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<b@example.com>",
                                   "DATA", "Subject: t", "", "x", ".", "QUIT"])
        assert [x[0] for x in r][-2:] == [250, 221], r
    stats_port = int(p.params["stats_listen"].rsplit(":", 1)[1])
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % stats_port, timeout=10) as f:
        exported = f.read().decode()
    exported_names = set(re.findall(r"^(perimd_[a-z_]+?)(?:_bucket|_sum|_count)?[{ ]", exported, re.M))
    for title, expr in dashboard_queries():
        missing = metric_names(expr) - exported_names
        assert not missing, "%s: %s not exported" % (title, missing)

    rules = tmp_path / "rules.yml"
    shutil.copy(RULES, rules)
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "perimd",
                            "static_configs": [{"targets": ["127.0.0.1:%d" % stats_port]}]}],
    }))
    prom = subprocess.Popen(["prometheus", "--config.file", str(tmp_path / "prometheus.yml"),
                             "--storage.tsdb.path", str(tmp_path / "tsdb"),
                             "--web.listen-address", "127.0.0.1:%d" % port],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "wb"))
    try:
        def scraped():
            try:
                r = prom_get(port, "/api/v1/query", query='perimd_messages_relayed_total{job="perimd"}')
            except OSError:
                return False
            res = r["data"]["result"]
            return bool(res) and float(res[0]["value"][1]) == 3
        assert wait_for(scraped, 60), open(tmp_path / "prom.log").read()[-3000:]
        up = prom_get(port, "/api/v1/query", query='up{job="perimd"}')["data"]["result"]
        assert up and up[0]["value"][1] == "1"
        groups = prom_get(port, "/api/v1/rules")["data"]["groups"]
        rules_loaded = [r for g in groups for r in g["rules"]]
        assert len(rules_loaded) == 12
        assert all(r["health"] != "err" for r in rules_loaded), rules_loaded
        for title, expr in dashboard_queries():
            q = expr.replace("$instance", ".*").replace("$__rate_interval", "1m")
            r = prom_get(port, "/api/v1/query", query=q)
            assert r["status"] == "success", (title, q, r)
        # Build, process and configuration metrics, as Prometheus stored them.
        for q in ('perimd_build_info{job="perimd"} == 1', 'process_open_fds{job="perimd"} > 0',
                  'process_resident_memory_bytes{job="perimd"} > 0',
                  'time() - process_start_time_seconds{job="perimd"} < 3600',
                  'count(count by (fingerprint) (perimd_config_fingerprint{job="perimd"})) == 1'):
            res = prom_get(port, "/api/v1/query", query=q)["data"]["result"]
            assert len(res) == 1, (q, res)
        # A query the dashboard must show data for: the relayed messages.
        cert_days = prom_get(port, "/api/v1/query",
                             query="(perimd_tls_certificate_expiry_timestamp_seconds - time()) / 86400")
        days = float(cert_days["data"]["result"][0]["value"][1])
        assert 29 < days <= 30
    finally:
        prom.terminate()
        prom.wait(20)


# ---------------------------------------------------------------------------
# fail2ban


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_fail2ban_filter_counts_refusals(tmp_path, perimd_factory, sink, log_format):
    """fail2ban-regex with the shipped filter on a log perimd wrote, in
    either log_format: every permanent refusal (at RCPT and at
    END-OF-MESSAGE) and the error-limit cut count, with the client's
    address; greylisting, size refusals and accepted mail do not."""
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port, smtpd_hard_error_limit=3,
                       smtpd_forbid_bare_newline="reject", log_format=log_format)
    # Accepted: 2 messages.
    for _ in range(2):
        r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<b@example.com>",
                                   "DATA", "Subject: ok", "", "x", ".", "QUIT"])
        assert [x[0] for x in r][-2:] == [250, 221]
    # Counted: 2 relay denials, a bare LF refused at the end of the
    # message (550 5.5.2 at END-OF-MESSAGE), and an error-limit cut.
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<x@other.test>",
                               "RCPT TO:<y@other.test>", "QUIT"])
    assert [x[0] for x in r] == [220, 250, 250, 550, 550, 221]
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<b@example.com>",
                               "DATA", b"Subject: lf\nbare\r\n", ".", "QUIT"])
    assert [x[0] for x in r][-2:] == [550, 221], r
    r = smtp_dialogue(p.port, ["EHLO c", "BOGUS1", "BOGUS2", "BOGUS3", "BOGUS4", "QUIT"])
    # Not counted: a size refusal at MAIL.
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test> SIZE=999999999999", "QUIT"])
    assert [x[0] for x in r] == [220, 250, 552, 221]
    p.wait_log(r"too many errors from \[127\.0\.0\.1\]")
    log = p.log_text()
    refusals = len(re.findall(r"reject: RCPT from \[127\.0\.0\.1\]: 550 ", log))
    assert refusals == 2
    assert len(re.findall(r"reject: END-OF-MESSAGE from \[127\.0\.0\.1\]: 550 5\.5\.2", log)) == 1
    if log_format == "json":
        assert all(ln.startswith("{") for ln in log.splitlines() if ln)
    # The filter as installed: beside fail2ban's own common.conf.
    fdir = tmp_path / "fail2ban" / "filter.d"
    fdir.mkdir(parents=True)
    shutil.copy("/etc/fail2ban/filter.d/common.conf", fdir)
    shutil.copy(F2B_FILTER, fdir / "perimd.conf")
    r = run("fail2ban-regex", "--print-all-matched", "--print-all-missed",
            p.log_path, str(fdir / "perimd.conf"), timeout=120)
    assert r.returncode == 0, r.stdout
    m = re.search(r"^Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", r.stdout, re.M)
    assert m, r.stdout
    assert int(m.group(3)) == 4, r.stdout
    assert re.search(r"^\|\s+127\.0\.0\.1\s", r.stdout, re.M) or "127.0.0.1" in r.stdout
    matched = r.stdout.split("|- Matched line(s):", 1)[1].split("|- Missed line(s):", 1)[0]
    assert "552" not in matched and "status=sent" not in matched and "relay=" not in matched
