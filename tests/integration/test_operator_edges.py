"""test_operator_edges.py - what an admin coming from Postfix met at the
edges of perimd (outside-in QA: the configuration file, the command line,
the statistics server):

- a client that sends its request a byte at a time cannot hold a
  stats_listen connection past HTTP_TIMEOUT_MS, and clients that connect
  and say nothing cannot keep /healthz from a load balancer;
- a number too large to store is refused naming the bound it crossed,
  not as "not a number"; every time parameter has a maximum (3650d at
  most: 9223372036854775807ms passed -t and overflowed in grey.c);
- `perimd -V extra` is a usage error, as extra words are elsewhere;
- `perimd healthcheck` and `perimd stats` exit 1 on a bad command line
  (a container health check reads 2 as reserved);
- `check_policy_service` with no service after it is an error, not
  nothing;
- a Postfix-style list of maps in a one-map parameter is refused as
  such at -t;
- every -t error names the file and line (or the -o option) that set the
  parameter at fault, as perimd(8) promises, also for the checks made
  after the file is read (maps, milters, policy services, listen
  addresses); a SIGHUP refused for such an error logs the line too, and
  perimd_config_reload_success says 0 until a reload is taken;
- a greeting longer than RFC 5321's 512-byte reply line, or with a
  control character, is refused at -t (it was cut at 1021 bytes live);
- -c /dev/zero (or a file of NULs) is an error at once, not a read
  without end; a file saved with a UTF-8 byte order mark reads as
  without it;
- recipient_delimiter (Debian's main.cf sets "+"): a plus-addressed
  recipient of a listed user is not refused as unknown;
- `perimd healthcheck` and `perimd stats` read only stats_listen: a typo
  made in the file since the daemon read it does not make the running
  daemon look unhealthy (a container would be restarted into it);
- -t catches what only the start or the first PROXY client found: a bad
  smtpd_upstream_proxy_clients entry, a missing greylisting whitelist
  named by its parameter, and (as root, a warning) a mail_owner that is
  no user here;
- `perimd stats HOST:PORT...` takes host names, as perimd(8)'s
  "host:port" says (it took numeric addresses only);
- -t on a file with more errors than its report holds ends with a line
  saying so, not with a line cut in the middle;
- as root, -t warns when mail_owner cannot read the configuration file
  itself (every SIGHUP after the privilege drop would be refused);
- a Postfix parameter perimd does not have (Debian's inet_interfaces,
  postscreen_dnsbl_sites ...) is still an error, and says what to write;
- a relay domain or myhostname with an empty label or a label edged with
  '-' (example..com, -x.com: a typo that matched nothing) is refused.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from harness import PERIMD_BIN, free_port, known_params, smtp_dialogue  # noqa: E402
from postfix_instance import PostfixInstance, postfix_available  # noqa: E402
from test_stats import metrics, stats_port  # noqa: E402

HTTP_TIMEOUT = 10.0  # HTTP_TIMEOUT_MS


def check_file(path, *opts):
    """perimd -t -c path with -o opts: (exit status, stderr)."""
    cmd = [PERIMD_BIN, "-t", "-c", str(path)]
    for o in opts:
        cmd += ["-o", o]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return r.returncode, r.stderr.decode()


def check(p, *opts):
    """perimd -t with -o opts on p's file: (exit status, stderr)."""
    return check_file(p.conf_path, *opts)


def healthz(port, timeout=5):
    """The status line of GET /healthz, or the exception's name."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                b = s.recv(4096)
                if not b:
                    break
                data += b
            return data.split(b"\r\n", 1)[0].decode()
    except OSError as e:
        return type(e).__name__


def test_trickling_http_client_is_cut_at_the_deadline(perimd_factory):
    """One byte every 0.5 s re-arms an idle timer forever; the connection
    must still be closed within HTTP_TIMEOUT_MS of its accept."""
    p = perimd_factory()
    s = socket.create_connection(("127.0.0.1", stats_port(p)), timeout=5)
    start = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\n" + b"X-Slow: y\r\n" * 400
    closed_at = None
    try:
        for ch in head:
            s.send(bytes([ch]))
            time.sleep(0.5)
            if time.monotonic() - start > HTTP_TIMEOUT + 8:
                break
    except OSError:
        closed_at = time.monotonic() - start
    if closed_at is None:
        s.settimeout(1)
        try:
            closed_at = time.monotonic() - start if s.recv(100) == b"" else None
        except OSError:
            closed_at = time.monotonic() - start
    s.close()
    assert closed_at is not None, "a trickling client held the stats connection %.0f s" % (
        time.monotonic() - start)
    assert closed_at < HTTP_TIMEOUT + 3, closed_at


def test_idle_http_clients_do_not_lock_out_the_health_check(perimd_factory):
    """200 connections that send nothing (more than the server keeps):
    /healthz still answers 200 at once, each time."""
    p = perimd_factory()
    port = stats_port(p)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(200)]
    try:
        for _ in range(5):
            assert healthz(port) == "HTTP/1.1 200 OK"
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    finally:
        for s in idle:
            s.close()
    assert p.proc.poll() is None


def test_overflowing_numbers_name_the_bound(perimd_factory):
    """99999999999999999999 is a whole number, only too large: the error
    names the maximum, for a number, a time and a size."""
    p = perimd_factory(start=False)
    cases = [
        ("max_sessions=99999999999999999999", "is above the maximum 1000000"),
        ("smtpd_timeout=99999999999999999999", "is above the maximum 1d"),
        ("smtpd_timeout=9999999999999w", "is above the maximum 1d"),
        ("message_size_limit=99999999999g", "is above the maximum"),
        ("relay_verify_positive_ttl=99999999999999w", "is above the maximum 3650d"),
        ("body_spool_limit=99999999999999999999", "is too large"),
    ]
    for opt, want in cases:
        rc, err = check(p, opt)
        assert rc == 1, (opt, err)
        assert "-o %s: " % opt in err and want in err, (opt, err)
        assert "not a" not in err, (opt, err)
    rc, err = check(p, "smtpd_timeout=1.5m")
    assert rc == 1 and '"1.5m" is not a time' in err, err


def test_every_time_has_a_maximum(perimd_factory):
    """greylist_auto_whitelist_interval = 9223372036854775807ms fits a long
    long, passed -t, and overflowed (UBSan abort in grey.c) at the first
    accepted message; every time parameter now has a maximum, 3650d at
    most."""
    p = perimd_factory(start=False)
    for name in ("relay_verify_positive_ttl", "relay_verify_negative_ttl", "relay_verify_pair_ttl",
                 "relay_verify_defer_ttl", "greylist_max_age", "greylist_retention",
                 "greylist_auto_whitelist_interval", "greylist_new_triplet_interval"):
        rc, err = check(p, "%s=9223372036854775807ms" % name)
        assert rc == 1 and "is above the maximum 3650d" in err, (name, err)
        rc, err = check(p, "%s=3650d" % name)
        assert rc == 0, (name, err)


def test_admin_commands_bad_usage_exits_1(perimd_factory):
    """perimd(8): healthcheck exits 0 or 1 (Docker's HEALTHCHECK reserves
    2); a bad command line is an error, exit 1 with the usage."""
    for args in (["healthcheck", "extra"], ["healthcheck", "-x"], ["stats", "-c"], ["stats", "-x"]):
        r = subprocess.run([PERIMD_BIN] + args, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert b"usage:" in r.stderr, (args, r.stderr)


def test_version_takes_no_operands():
    """perimd -V prints the version; words after it are a usage error, as
    after -t (they were ignored)."""
    r = subprocess.run([PERIMD_BIN, "-V"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith(b"perimd "), r
    r = subprocess.run([PERIMD_BIN, "-V", "extra"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert r.returncode == 1 and b"usage:" in r.stderr and not r.stdout, r


def test_check_policy_service_without_a_service(perimd_factory):
    """A check_policy_service keyword must be followed by its service, as
    in Postfix: alone, last, or before another keyword it is an error."""
    p = perimd_factory(start=False)
    for value in ("check_policy_service",
                  "check_policy_service inet:127.0.0.1:10023, check_policy_service",
                  "check_policy_service check_policy_service inet:127.0.0.1:10023"):
        rc, err = check(p, "smtpd_policy_services=" + value)
        assert rc == 1, (value, err)
        assert "check_policy_service without a service" in err, (value, err)
    rc, err = check(p, "smtpd_policy_services=check_policy_service inet:127.0.0.1:10023, "
                    "inet:127.0.0.1:10024")
    assert rc == 0, err


def test_list_of_maps_in_a_one_map_parameter(perimd_factory, tmp_path):
    """Postfix takes several maps in relay_recipient_maps; perimd takes one:
    -t says so and names the parameter, rather than trying to open a file
    called "a, file:b"."""
    p = perimd_factory(start=False)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("alice@example.com OK\n")
    b.write_text("bob@example.com OK\n")
    for sep in (", ", " ", ",\t"):
        opt = "relay_recipient_maps=file:%s%sfile:%s" % (a, sep, b)
        rc, err = check(p, opt)
        assert rc == 1, (opt, err)
        assert "-o %s: " % opt in err and "one map" in err, (opt, err)
        assert "cannot open" not in err, err
    rc, err = check(p, "relay_recipient_maps=file:%s" % a)
    assert rc == 0, err


def test_later_checks_name_the_file_and_line(perimd_factory, tmp_path):
    """-t: a map, a milter, a policy service and a listen address that
    the file's parser took but a later check refused are each named by the
    line that set them; an -o by the option; a reload refused logs it."""
    p = perimd_factory(start=False)
    conf = tmp_path / "bad.conf"
    conf.write_text("relay_domains = example.com\n"
                    "relay_recipient_maps = hash:/etc/postfix/relay_recipients\n"
                    "# a comment\n"
                    "smtpd_milters = inet:127.0.0.1:8891,\n"
                    "    unix:private/rspamd\n"
                    "smtpd_policy_services = permit_mynetworks\n"
                    "smtpd_listen = 127.0.0.1:99999\n"
                    "stats_listen = 127.0.0.1:99999\n")
    rc, err = check_file(conf, "transport_maps=file:" + str(tmp_path / "none"))
    assert rc == 1, err
    for want in ("%s:2: relay_recipient_maps: " % conf,
                 "%s:4: smtpd_milters: " % conf,
                 "%s:6: smtpd_policy_services: " % conf,
                 "%s:7: smtpd_listen: 127.0.0.1:99999: bad port" % conf,
                 "%s:8: stats_listen: 127.0.0.1:99999: bad port" % conf,
                 "-o transport_maps=file:%s: transport_maps: " % (tmp_path / "none")):
        assert want in err, (want, err)
    # Every line is blamed on a place.
    for line in err.splitlines():
        assert re.match(r"perimd: (%s:\d+|-o \S+): " % re.escape(str(conf)), line), line

    p.start()
    assert metrics(p)["perimd_config_reload_success"] == 1
    good = open(p.conf_path).read()
    with open(p.conf_path, "a") as f:
        f.write("sender_access_maps = btree:/etc/postfix/sender_access\n")
    nlines = sum(1 for _ in open(p.conf_path))
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"reload refused, keeping the running configuration: %s:%d: sender_access_maps: "
               % (re.escape(p.conf_path), nlines))
    assert p.proc.poll() is None
    # The refusal is on /metrics too (perimd(8)), for an alert; a good
    # reload sets it back.
    assert metrics(p)["perimd_config_reload_success"] == 0
    with open(p.conf_path, "w") as f:
        f.write(good)
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"configuration reloaded from")
    assert metrics(p)["perimd_config_reload_success"] == 1
    assert metrics(p)["perimd_config_reload_last_timestamp_seconds"] > time.time() - 60


def test_banner_longer_than_a_reply_line(perimd_factory):
    """smtpd_banner after expansion: 506 bytes fit "220 " + CRLF in 512;
    507 do not, nor does a control character."""
    p = perimd_factory(start=False)
    rc, err = check(p, "smtpd_banner=" + "b" * 506)
    assert rc == 0, err
    rc, err = check(p, "smtpd_banner=" + "b" * 507)
    assert rc == 1 and ": 507 bytes: the greeting line" in err, err
    rc, err = check(p, "smtpd_banner=$smtpd_tls_cert_file x", "smtpd_tls_cert_file=" + "/c" * 300)
    assert rc == 1 and ": 602 bytes: the greeting line" in err, err
    rc, err = check(p, "smtpd_banner=mx\x01 ESMTP")
    assert rc == 1 and "control character 0x01" in err, err


def test_endless_or_bom_files(tmp_path):
    """The reader stops at the first NUL (/dev/zero was read into memory
    without end) and skips a UTF-8 BOM before the first line."""
    r = subprocess.run([PERIMD_BIN, "-t", "-c", "/dev/zero"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=20)
    assert r.returncode == 1 and b"/dev/zero:1: NUL byte in line" in r.stderr, r.stderr
    conf = tmp_path / "bom.conf"
    conf.write_bytes(b"\xef\xbb\xbfmax_sessions = 7\r\nrelay_domains = a.example,\r\n  b.example\r\n")
    r = subprocess.run([PERIMD_BIN, "-n", "-c", str(conf)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=20)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["max_sessions = 7", "relay_domains = a.example, b.example"], r.stdout


def test_recipient_delimiter_finds_the_listed_user(perimd_factory, tmp_path):
    """user+ext@domain is looked up whole, then as user@domain, then as
    @domain (Postfix's order); without recipient_delimiter it is unknown."""
    rr = tmp_path / "relay_recipients"
    rr.write_text("alice@example.com OK\nbob-list@example.com OK\ncarol+vip@example.com REJECT\n"
                  "@example.net OK\n")
    base = {"relay_domains": "example.com, example.net", "relay_backends": "127.0.0.1:9",
            "relay_recipient_maps": "file:%s" % rr}
    base.update({k: v for k, v in {"greylist": "no", "reject_unknown_sender_domain": "no",
                                   "stats_listen": ""}.items() if k in known_params()})

    def rcpt_codes(p, rcpts):
        lines = ["EHLO probe.test", "MAIL FROM:<s@example.org>"] + ["RCPT TO:<%s>" % a for a in rcpts] + ["QUIT"]
        return [code for code, _ in smtp_dialogue(p.port, lines)[3:3 + len(rcpts)]]

    rcpts = ["alice+news@example.com", "alice@example.com", "alice-x@example.com", "+alice@example.com",
             "bob-list+x@example.com", "carol+vip@example.com", "carol+x@example.com",
             "dave+x@example.com", "dave+x@example.net"]
    p = perimd_factory(recipient_delimiter="+", **base)
    assert rcpt_codes(p, rcpts) == [250, 250, 550, 550, 250, 550, 550, 550, 250]
    p.stop()
    # The extension starts at the first of the characters: bob-list+x is bob.
    p = perimd_factory(recipient_delimiter="+-", **base)
    assert rcpt_codes(p, rcpts) == [250, 250, 250, 550, 550, 550, 550, 550, 250]
    p.stop()
    p = perimd_factory(**base)
    assert rcpt_codes(p, rcpts) == [550, 250, 550, 550, 550, 550, 550, 550, 250]
    p.stop()
    rc, err = check(p, "recipient_delimiter=@")
    assert rc == 1 and "characters of a local part" in err, err

    # Postfix itself, with the same table and delimiter, answers the same.
    if not postfix_available():
        pytest.skip("postfix is not installed (build.sh DEPS)")
    pf = PostfixInstance(free_port(), """relay_domains = example.com, example.net
relay_recipient_maps = hash:{dir}/relay_recipients
recipient_delimiter = +
mynetworks = 127.0.0.1/32
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient
unknown_relay_recipient_reject_code = 550
""", files={"relay_recipients": rr.read_text()})
    pf.postmap("relay_recipients")
    pf.start()
    try:
        lines = (["EHLO probe.test", "MAIL FROM:<s@example.org>"] + ["RCPT TO:<%s>" % a for a in rcpts]
                 + ["QUIT"])
        got = [code for code, _ in smtp_dialogue(pf.port, lines)[3:3 + len(rcpts)]]
    finally:
        pf.stop()
    # carol+vip's REJECT value is perimd's own (perimd.conf(5)); Postfix
    # takes any entry as a known recipient.
    assert got == [250, 250, 550, 550, 250, 250, 550, 550, 250], got


def test_healthcheck_ignores_a_typo_elsewhere_in_the_file(perimd_factory):
    """The daemon runs; the admin then breaks an unrelated line of the file
    (not yet reloaded). healthcheck still says 0 and stats still prints;
    a broken stats_listen itself is still an error, naming the line."""
    p = perimd_factory()
    with open(p.conf_path, "a") as f:
        f.write("max_sessions = 10x\nsmtpd_bogus = 1\n")

    def run(*args):
        return subprocess.run([PERIMD_BIN] + list(args) + ["-c", p.conf_path], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)
    r = run("healthcheck")
    assert r.returncode == 0 and r.stdout.startswith(b"ok"), (r.returncode, r.stdout, r.stderr)
    r = run("stats")
    assert r.returncode == 0 and b"perimd_connections_accepted_total" in r.stdout, r.stderr
    with open(p.conf_path, "a") as f:
        f.write("stats_listen = $no_such_parameter\n")
    nlines = sum(1 for _ in open(p.conf_path))
    r = run("healthcheck")
    assert r.returncode == 1, r.stdout
    assert ("%s:%d: stats_listen: unknown parameter $no_such_parameter" % (p.conf_path, nlines)).encode() \
        in r.stderr, r.stderr


def test_check_finds_what_only_the_start_found(perimd_factory, tmp_path):
    """smtpd_upstream_proxy_clients = 300.1.1.1/99 passed -t and matched no
    client; a missing whitelist file was named without its parameter; an
    unknown mail_owner passed -t and stopped the start as root."""
    p = perimd_factory(start=False)
    rc, err = check(p, "smtpd_upstream_proxy_protocol=haproxy", "smtpd_upstream_proxy_clients=10.0.0.1, 300.1.1.1/99")
    assert rc == 1, err
    assert "smtpd_upstream_proxy_clients: 300.1.1.1/99: not an address or CIDR network" in err, err
    rc, err = check(p, "smtpd_upstream_proxy_clients=10.0.0.0/8, ::1, 2001:db8::/32")
    assert rc == 0, err
    missing = str(tmp_path / "missing")
    rc, err = check(p, "greylist_whitelist_clients=" + missing)
    assert rc == 1 and "-o greylist_whitelist_clients=%s: greylist_whitelist_clients: %s: cannot open" % (
        missing, missing) in err, err
    if os.geteuid() != 0:
        return
    rc, err = check(p, "mail_owner=no_such_user_here")
    assert rc == 0, err
    assert "warning: -o mail_owner=no_such_user_here: mail_owner: no_such_user_here: no such user here" in err, err


def test_fleet_stats_takes_host_names(perimd_factory):
    """perimd stats localhost:PORT asks the box by name (each address of
    the name in turn); an unknown name is an error naming it."""
    p = perimd_factory()
    port = stats_port(p)
    r = subprocess.run([PERIMD_BIN, "stats", "localhost:%d" % port, "http://127.0.0.1:%d/metrics" % port],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"# 2 of 2 boxes answered"), r.stdout[:200]
    r = subprocess.run([PERIMD_BIN, "stats", "localhost:%d" % port, "127.0.0.1:1"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert r.returncode == 1 and r.stdout.startswith(b"# 1 of 2 boxes answered"), (r.stdout[:200], r.stderr)
    assert r.stderr.decode().count("127.0.0.1:1") == 1, r.stderr
    r = subprocess.run([PERIMD_BIN, "stats", "https://127.0.0.1:%d" % port, ""], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    assert r.returncode == 1, r
    assert "https://127.0.0.1:%d: stats_listen speaks plain HTTP" % port in r.stderr.decode(), r.stderr
    assert "no address: write host:port" in r.stderr.decode(), r.stderr


def test_too_many_errors_end_with_a_whole_line(tmp_path):
    """2000 bad lines: every line printed is whole, and the last says that
    more were not shown."""
    conf = tmp_path / "many.conf"
    conf.write_text("".join("bogus_%d = 1\n" % i for i in range(2000)) + "max_sessions = x\n")
    rc, err = check_file(conf)
    assert rc == 1
    lines = err.splitlines()
    assert len(lines) > 100, lines[:3]
    assert lines[-1] == "perimd: ... more errors not shown: fix these and check again", lines[-3:]
    for k, line in enumerate(lines[:-1]):
        assert line == "perimd: %s:%d: unknown parameter bogus_%d" % (conf, k + 1, k), line


def test_check_warns_of_a_conf_mail_owner_cannot_read():
    """perimd -t as root, mail_owner nobody, the file mode 600: a warning
    (exit 0) that every SIGHUP would be refused; mode 644: none."""
    import pwd
    import shutil
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("needs root: mail_owner is taken only when started as root")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    d = tempfile.mkdtemp(prefix="perimd-owner-")
    try:
        os.chmod(d, 0o755)
        conf = os.path.join(d, "perimd.conf")
        with open(conf, "w") as f:
            f.write("mail_owner = nobody\nstats_listen =\ndata_directory = %s\nbody_spool_directory = %s\n"
                    % (d, d))
        os.chmod(conf, 0o600)
        rc, err = check_file(conf)
        assert rc == 0, err
        assert ("warning: mail_owner nobody cannot read the configuration file %s: Permission denied; "
                "every SIGHUP will be refused" % conf) in err, err
        os.chmod(conf, 0o644)
        rc, err = check_file(conf)
        assert rc == 0 and "cannot read" not in err, err
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_postfix_parameter_names_say_what_to_write(tmp_path):
    """Lines of a Postfix main.cf are unknown parameters with a hint; an
    unknown name of no Postfix meaning stays plain."""
    conf = tmp_path / "pf.conf"
    conf.write_text("inet_interfaces = all\npostscreen_dnsbl_sites = zen.spamhaus.org*3\n"
                    "smtpd_recipient_restrictions = permit_mynetworks,\n  reject_unauth_destination\n"
                    "smtpd_bogus = 1\n")
    rc, err = check_file(conf, "mynetworks=127.0.0.0/8")
    assert rc == 1, err
    for want in ("%s:1: unknown parameter inet_interfaces (Postfix's: write smtpd_listen)" % conf,
                 "%s:2: unknown parameter postscreen_dnsbl_sites (Postfix's: write dnsbl_sites)" % conf,
                 "%s:3: unknown parameter smtpd_recipient_restrictions (Postfix's: " % conf,
                 "-o mynetworks=127.0.0.0/8: unknown parameter mynetworks (Postfix's: "):
        assert want in err, (want, err)
    assert "%s:5: unknown parameter smtpd_bogus\n" % conf in err, err


def test_domains_and_host_names_are_label_shaped(perimd_factory):
    """relay_domains = example..com passed -t and never matched a recipient
    (every message "relay access denied"); myhostname = a..b went into the
    banner. Both are refused; .sub, '_' and 63-octet labels are fine."""
    p = perimd_factory(start=False)
    for opt in ("relay_domains=example..com", "relay_domains=example.com, -bad.example",
                "relay_domains=example.com.", "relay_domains=%s.com" % ("a" * 64),
                "myhostname=mx..example.com", "myhostname=-mx.example.com", "myhostname=mx-.example.com"):
        rc, err = check(p, opt)
        assert rc == 1, (opt, err)
        assert "neither a domain nor a map" in err or "is not a host name" in err, (opt, err)
    for opt in ("relay_domains=example.com, .sub.example.org, a_b.example, %s.com" % ("a" * 63),
                "myhostname=mx_1.example.com"):
        rc, err = check(p, opt)
        assert rc == 0, (opt, err)
