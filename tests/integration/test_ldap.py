"""test_ldap.py - ldap: maps (maps_ldap.c) against a real slapd started here
on loopback ports, with entries loaded by slapadd and a small schema of our
own for the Active Directory attribute proxyAddresses (multi-valued,
case-insensitive):

- relay_recipient_maps = ldap:...: a listed recipient is delivered (smtp-sink
  captures it), an unlisted one gets 550, case does not matter, a role
  account without an entry is accepted, a key with filter metacharacters
  matches nothing (RFC 4515 escaping);
- the Exchange query proxyAddresses=smtp:%s with result_attribute = mail;
- failover from a dead server_host URI to the next one;
- perimd -t: a wrong bind password is an error (and perimd does not start),
  an unreachable directory only a warning (exit 0), an unsupported setting
  an error with file:line, a bind_pw readable by others a warning;
- slapd stopped under smtp-source load: 451 (never 550) only from the stop
  until lookups resume, every accepted message at the sink, and lookups
  resume by themselves once slapd is back;
- ldaps:// and StartTLS with a test CA made here by openssl (and a server
  certificate from another CA refused);
- the counters on /metrics.
"""

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

from harness import PERIMD_BIN, Client, free_port, smtp_source, stop_proc, wait_for

SLAPD = shutil.which("slapd", path="/usr/sbin:/usr/bin") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd", path="/usr/sbin:/usr/bin") or "/usr/sbin/slapadd"
SCHEMA = "/etc/ldap/schema"
SUFFIX = "dc=example,dc=test"
BIND_DN = "cn=perimd,dc=example,dc=test"
BIND_PW = "s3cret-pw"

# proxyAddresses as Active Directory has it: a multi-valued string matched
# case-insensitively ("SMTP:" marks the primary address, "smtp:" the others).
# OIDs under 1.3.6.1.4.1.32473, the documentation arc (RFC 5612).
AD_SCHEMA = """\
attributetype ( 1.3.6.1.4.1.32473.1.1.1 NAME 'proxyAddresses'
	EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
	SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.32473.1.2.1 NAME 'perimdTestMailUser' SUP top AUXILIARY
	MAY ( proxyAddresses ) )
"""


def user(uid, mail, proxies=()):
    lines = ["dn: uid=%s,ou=people,%s" % (uid, SUFFIX), "objectClass: inetOrgPerson",
             "objectClass: perimdTestMailUser", "uid: " + uid, "cn: " + uid, "sn: " + uid,
             "mail: " + mail]
    lines += ["proxyAddresses: " + p for p in proxies]
    return "\n".join(lines) + "\n"


def domain_entry(domain, how):
    """A mail domain of the site (cosine's associatedDomain), for
    relay_domains and transport_maps; description says how it is routed."""
    return ("dn: cn=%s,ou=domains,%s\nobjectClass: applicationProcess\n"
            "objectClass: domainRelatedObject\ncn: %s\nassociatedDomain: %s\n"
            "description: %s\n" % (domain, SUFFIX, domain, domain, how))


ENTRIES = "\n".join([
    "dn: %s\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n"
    % SUFFIX,
    "dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n" % SUFFIX,
    "dn: %s\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
    "cn: perimd\nuserPassword: %s\n" % (BIND_DN, BIND_PW),
    user("alice", "alice@example.com",
         ["SMTP:Alice.Smith@example.com", "smtp:alice@example.com", "smtp:al@example.com",
          "X500:/o=Example/ou=Exchange/cn=alice"]),
    user("bob", "bob@example.com", ["SMTP:bob@example.com", "sip:bob@example.com"]),
    "dn: ou=domains,%s\nobjectClass: organizationalUnit\nou: domains\n" % SUFFIX,
    domain_entry("example.com", "routed"),
    domain_entry("example.net", "plain"),
] + [user("u%d" % i, "u%d@example.com" % i, ["SMTP:u%d@example.com" % i])
     for i in range(20)])


class Slapd:
    """slapd in the foreground on loopback ports, its own config and db."""

    def __init__(self, tmpdir, tls=None):
        self.dir = os.path.join(str(tmpdir), "slapd")
        os.makedirs(os.path.join(self.dir, "db"), exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.proc = None
        self.log = None
        with open(os.path.join(self.dir, "ad.schema"), "w") as f:
            f.write(AD_SCHEMA)
        conf = ["include %s/%s.schema" % (SCHEMA, s) for s in ("core", "cosine", "inetorgperson")]
        conf += ["include " + os.path.join(self.dir, "ad.schema"),
                 "pidfile " + os.path.join(self.dir, "slapd.pid")]
        if tls:
            conf += ["TLSCACertificateFile " + tls["ca"], "TLSCertificateFile " + tls["cert"],
                     "TLSCertificateKeyFile " + tls["key"]]
        conf += ["modulepath /usr/lib/ldap", "moduleload back_mdb", "database mdb",
                 'suffix "%s"' % SUFFIX, 'rootdn "cn=admin,%s"' % SUFFIX, "rootpw adminpw",
                 "directory " + os.path.join(self.dir, "db"),
                 "access to attrs=userPassword by anonymous auth by * none",
                 "access to * by * read"]
        self.conf = os.path.join(self.dir, "slapd.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        ldif = os.path.join(self.dir, "entries.ldif")
        with open(ldif, "w") as f:
            f.write(ENTRIES)
        subprocess.run([SLAPADD, "-f", self.conf, "-l", ldif], check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)

    @property
    def uri(self):
        return "ldap://127.0.0.1:%d" % self.port

    def start(self, timeout=20):
        urls = "ldap://127.0.0.1:%d/" % self.port
        if self.tls_port:
            urls += " ldaps://127.0.0.1:%d/" % self.tls_port
        self.log = open(os.path.join(self.dir, "slapd.log"), "ab")
        self.proc = subprocess.Popen([SLAPD, "-d", "0", "-f", self.conf, "-h", urls],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        import socket
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("slapd exited: %s" % self.proc.returncode)
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("slapd did not start")

    def stop(self):
        stop_proc(self.proc, 20)
        if self.log:
            self.log.close()
            self.log = None
        self.proc = None


@pytest.fixture(autouse=True)
def lsan_libldap(monkeypatch):
    """libldap's own leak when a server dies mid-answer (lsan_libldap.supp)."""
    supp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsan_libldap.supp")
    monkeypatch.setenv("LSAN_OPTIONS", "suppressions=" + supp)
    # Full stacks, so the suppressions see libldap's frames (the fast
    # unwinder stops in liblber, built without frame pointers).
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0")


@pytest.fixture
def slapd(tmp_path):
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed")
    s = Slapd(tmp_path)
    try:
        yield s.start()
    finally:
        s.stop()


def write_cf(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return str(path)


def cf_text(uri, **kv):
    """A .cf for the people of the test directory; kv overrides."""
    s = {"server_host": uri, "search_base": "ou=people," + SUFFIX,
         "query_filter": "(mail=%s)", "result_attribute": "mail",
         "bind_dn": BIND_DN, "bind_pw": BIND_PW, "timeout": "3",
         "cache_ttl": "0", "negative_cache_ttl": "0"}
    s.update(kv)
    return "".join("%s = %s\n" % (k, v) for k, v in s.items() if v is not None)


def rcpts(port, to):
    """EHLO, MAIL, one RCPT per address: the (code, text) replies."""
    with Client(port) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        out = [c.cmd("RCPT TO:<%s>" % t) for t in to]
        c.cmd("QUIT")
        return out


def send(port, to, marker, when=None):
    """One message to `to`: (RCPT code, final code or None); when (a list)
    gets the monotonic time the RCPT was sent."""
    with Client(port) as c:
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<sender@client.test>")[0] == 250
        if when is not None:
            when.append(time.monotonic())
        r = c.cmd("RCPT TO:<%s>" % to)
        if r[0] != 250:
            c.cmd("QUIT")
            return r[0], None
        assert c.cmd("DATA")[0] == 354
        c.send(("Subject: %s\r\nMessage-ID: <%s@client.test>\r\n\r\nbody\r\n.\r\n"
                % (marker, marker)).encode())
        final = c.reply()
        c.cmd("QUIT")
        return 250, final[0]


def check(conf_path):
    p = subprocess.run([PERIMD_BIN, "-t", "-c", conf_path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def metrics(p):
    port = int(p.params["stats_listen"].rsplit(":", 1)[1])
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def page(p, path):
    port = int(p.params["stats_listen"].rsplit(":", 1)[1])
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return r.read().decode()


def series(p, graph, name):
    """The plotted values of one series of /graph/GRAPH-hour.svg."""
    svg = page(p, "/graph/%s-hour.svg" % graph)
    m = re.search(r'data-series="%s" data-values="([^"]*)"' % name, svg)
    assert m, svg[:2000]
    return [float(x) for x in m.group(1).split()]


def test_ldap_recipients(tmp_path, perimd_factory, sink, slapd):
    cf = write_cf(tmp_path / "ldap-rcpt.cf", cf_text(slapd.uri))
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port,
                       relay_recipient_maps="ldap:" + cf)
    r = rcpts(p.port, ["alice@example.com", "nobody@example.com", "ALICE@Example.COM",
                       "postmaster@example.com", "*@example.com", "al*@example.com"])
    assert [x[0] for x in r] == [250, 550, 250, 250, 550, 550], r
    assert r[1][1] == "5.1.1 <nobody@example.com>: recipient unknown", r
    assert send(p.port, "bob@example.com", "ldap-listed-1") == (250, 250)
    assert sink.wait_count(1)
    assert b"ldap-listed-1" in sink.messages()[0]
    m = metrics(p)
    assert m['perimd_ldap_lookups_total{result="found"}'] >= 3, m
    assert m['perimd_ldap_lookups_total{result="notfound"}'] >= 1, m
    assert m['perimd_ldap_connections{server="%s"}' % slapd.uri] >= 1, m
    assert m['perimd_ldap_lookup_seconds_count'] >= 4, m


def test_ldap_active_directory_proxyaddresses(tmp_path, perimd_factory, slapd):
    # The Exchange example of perimd.conf(5): only the domains we relay are
    # looked up, the key is matched against every smtp: proxy address.
    cf = write_cf(tmp_path / "ldap-ad.cf", cf_text(
        slapd.uri, search_base=SUFFIX, domain="example.com",
        query_filter="(&(objectClass=perimdTestMailUser)(proxyAddresses=smtp:%s))"))
    p = perimd_factory(relay_backends="127.0.0.1:9", relay_recipient_maps="ldap:" + cf)
    r = rcpts(p.port, ["al@example.com", "Alice.Smith@EXAMPLE.com", "alice@example.com",
                       "bob@example.com", "sip-bob@example.com", "carol@example.com",
                       "abuse@example.com"])
    assert [x[0] for x in r] == [250, 250, 250, 250, 550, 550, 250], r
    # With `domain` set, an unknown recipient costs one search, not three
    # (no "user@" or bare domain keys).
    key = 'perimd_ldap_lookups_total{result="notfound"}'
    before = metrics(p)[key]
    assert rcpts(p.port, ["dave@example.com"])[0][0] == 550
    assert metrics(p)[key] == before + 1


def test_ldap_size_limit(tmp_path, perimd_factory, slapd):
    # More entries than size_limit: a lookup failure (451), not an answer.
    cf = write_cf(tmp_path / "ldap-size.cf", cf_text(
        slapd.uri, query_filter="(|(mail=%s)(uid=u1*))", size_limit="2", domain="example.com"))
    p = perimd_factory(relay_backends="127.0.0.1:9", relay_recipient_maps="ldap:" + cf)
    r = rcpts(p.port, ["alice@example.com", "postmaster@example.com"])
    assert [x[0] for x in r] == [451, 250], r
    p.wait_log(r"ldap-size\.cf: lookup of \"alice@example\.com\" failed: ldap://127\.0\.0\.1:\d+: "
               r"search: Size limit exceeded")


def test_ldap_failover_and_start_tls_refused_cleanly(tmp_path, perimd_factory, slapd):
    dead = "ldap://127.0.0.1:%d" % free_port()
    cf = write_cf(tmp_path / "ldap-fo.cf", cf_text("%s, %s" % (dead, slapd.uri)))
    p = perimd_factory(relay_backends="127.0.0.1:9", relay_recipient_maps="ldap:" + cf)
    assert re.search(r"ldap-fo\.cf: ldap://127\.0\.0\.1:\d+: connect: Can't contact LDAP "
                     r"server.*lookups through this server fail with 451", p.log_text())
    r = rcpts(p.port, ["alice@example.com", "nobody@example.com"])
    assert [x[0] for x in r] == [250, 550], r


def test_ldap_check_errors_and_warnings(tmp_path, perimd_factory, slapd):
    # A wrong password: an error at -t, and perimd does not start.
    bad = write_cf(tmp_path / "bad-pw.cf", cf_text(slapd.uri, bind_pw="wrong"))
    p = perimd_factory(start=False, relay_backends="127.0.0.1:9",
                       relay_recipient_maps="ldap:" + bad)
    rc, out = check(p.conf_path)
    assert rc == 1, out
    assert re.search(r"relay_recipient_maps: .*bad-pw\.cf: ldap://127\.0\.0\.1:\d+: bind as "
                     r"\"cn=perimd,dc=example,dc=test\" refused: Invalid credentials", out), out
    with pytest.raises(AssertionError, match="Invalid credentials"):
        p.start()
    # An unreachable directory: a warning only (boxes restart in an outage).
    down = write_cf(tmp_path / "down.cf", cf_text("ldap://127.0.0.1:%d" % free_port()))
    p = perimd_factory(start=False, relay_backends="127.0.0.1:9",
                       relay_recipient_maps="ldap:" + down)
    rc, out = check(p.conf_path)
    assert rc == 0, out
    assert "down.cf: ldap://127.0.0.1:" in out and "Can't contact LDAP server" in out, out
    # What perimd does not support is refused with its line.
    for extra, msg in [("bind = sasl", "SASL binds are not supported"),
                       ("chase_referrals = yes", "chase_referrals: not supported by perimd"),
                       ("special_result_attribute = member", "not supported by perimd"),
                       ("no_such_setting = 1", "no_such_setting: unknown setting"),
                       ("scope = children", "scope: expected sub, base or one")]:
        f = write_cf(tmp_path / "unsup.cf", cf_text(slapd.uri) + extra + "\n")
        p = perimd_factory(start=False, relay_backends="127.0.0.1:9",
                           relay_recipient_maps="ldap:" + f)
        rc, out = check(p.conf_path)
        assert rc == 1, out
        assert "unsup.cf:10: " in out and msg in out, out
    # bind_pw in a file others may read: a warning.
    loose = write_cf(tmp_path / "loose.cf", cf_text(slapd.uri), mode=0o644)
    p = perimd_factory(start=False, relay_backends="127.0.0.1:9",
                       relay_recipient_maps="ldap:" + loose)
    rc, out = check(p.conf_path)
    assert rc == 0, out
    assert "loose.cf: holds bind_pw but is readable by others than its owner (mode 0644)" in out


def test_ldap_outage_under_load(tmp_path, perimd_factory, sink, slapd):
    cf = write_cf(tmp_path / "ldap-rcpt.cf", cf_text(slapd.uri, timeout="2", connection_limit="1"))
    p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port,
                       relay_recipient_maps="ldap:" + cf)
    results = []          # (t, rcpt code, final code, marker)
    stop = threading.Event()
    runs = []

    def loader():
        # Background load: smtp-source to a listed recipient for the whole
        # test, started again whenever it ends (it gives up on a 451).
        while not stop.is_set():
            runs.append(smtp_source("-s", "2", "-m", "300", "-f", "load@client.test",
                                    "-t", "u1@example.com", "127.0.0.1:%d" % p.port)[0])

    def prober():
        i = 0
        while not stop.is_set():
            marker = "probe-%d" % i
            when = []
            try:
                rc, final = send(p.port, "u%d@example.com" % (i % 20), marker, when)
            except Exception as e:  # recorded: the assertions below show it
                rc, final = repr(e), None
            results.append((when[0] if when else time.monotonic(), rc, final, marker))
            i += 1

    th = threading.Thread(target=prober)
    th.start()
    load = threading.Thread(target=loader)
    load.start()
    try:
        assert wait_for(lambda: len(results) >= 20, 30)
        t_stop = time.monotonic()
        slapd.stop()
        assert wait_for(lambda: any(r[1] == 451 and r[0] > t_stop for r in results), 30)
        n_down = len(results)
        assert wait_for(lambda: len(results) >= n_down + 10 and time.monotonic() > t_stop + 3, 30)
        t_start = time.monotonic()
        slapd.start()
        # Lookups resume by themselves: a probe made after the restart is
        # accepted again within the longest back-off (30 s).
        assert wait_for(lambda: any(r[1] == 250 and r[0] > t_start for r in results), 40)
        t_ok = min(r[0] for r in results if r[1] == 250 and r[0] > t_start)
        p.wait_log(r"ldap-rcpt\.cf: ldap://127\.0\.0\.1:\d+ answers again \(after \d+ failed attempts\)")
        n_ok = len(results)
        assert wait_for(lambda: len(results) >= n_ok + 20, 30)
    finally:
        stop.set()
        th.join(60)
        load.join(120)
    codes = [r[1] for r in results]
    print("probes %d, 451s %d, stop %.2f start %.2f ok %.2f, smtp-source runs %s" % (len(results), codes.count(451), t_stop, t_start, t_ok, runs))
    assert 550 not in codes, results
    assert set(codes) <= {250, 451}, results
    # 451 only while the directory was down (until lookups resumed).
    for t, rc, _, _ in results:
        if rc == 451:
            assert t_stop - 0.5 <= t <= t_ok, (t_stop, t, t_ok)
        if t < t_stop - 0.5 or t > t_ok + 0.5:
            assert rc == 250, (t, rc, t_stop, t_ok)
    # Every probe message accepted at the end of DATA reached the sink.
    accepted = {r[3] for r in results if r[2] == 250}
    assert len(accepted) >= 40
    assert all(r[2] in (None, 250) for r in results), results

    def delivered():
        got = set()
        for m in sink.messages():
            for mk in re.findall(rb"Subject: (probe-\d+)", m):
                got.add(mk.decode())
        return got
    assert wait_for(lambda: accepted <= delivered(), 30), accepted - delivered()
    m = metrics(p)
    assert m['perimd_ldap_lookups_total{result="error"}'] >= 1, m
    assert m["perimd_ldap_errors_total"] >= 1, m
    # connection_limit = 1 held under load (two worker threads).
    assert m['perimd_ldap_connections{server="%s"}' % slapd.uri] == 1, m


def test_ldap_slow_directory(tmp_path, perimd_factory, slapd):
    # A directory that stops answering (SIGSTOP: connections still open,
    # no replies) costs at most `timeout` per try and gives 451, never 550;
    # once it answers again, lookups resume by themselves.
    cf = write_cf(tmp_path / "ldap-slow.cf", cf_text(slapd.uri, timeout="1"))
    p = perimd_factory(relay_backends="127.0.0.1:9", relay_recipient_maps="ldap:" + cf)
    assert [x[0] for x in rcpts(p.port, ["alice@example.com"])] == [250]
    os.kill(slapd.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = rcpts(p.port, ["alice@example.com", "nobody@example.com", "postmaster@example.com"])
        assert [x[0] for x in r] == [451, 451, 250], r
        assert time.monotonic() - t0 < 8
    finally:
        os.kill(slapd.proc.pid, signal.SIGCONT)
    assert wait_for(lambda: rcpts(p.port, ["alice@example.com", "nobody@example.com"])
                    == [(250, "2.1.5 Ok"), (550, "5.1.1 <nobody@example.com>: recipient unknown")]
                    or None, 40), rcpts(p.port, ["alice@example.com", "nobody@example.com"])


def test_loadtest_reports_ldap(tmp_path, slapd):
    # tests/loadtest.sh with the LDAP map kept: a line per step with the
    # directory's searches per second, p50/p99 and errors.
    cf = write_cf(tmp_path / "ldap-load.cf", cf_text(slapd.uri, domain="example.com"))
    conf = tmp_path / "perimd.conf"
    conf.write_text("myhostname = perimd.test\nrelay_domains = example.com\n"
                    "relay_recipient_maps = ldap:%s\ngreylist = no\n"
                    "reject_unknown_sender_domain = no\n" % cf)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, STEPS="1 4", STEP_MSGS="20", SIZE="1000", LOADTEST_CHECKS="keep",
               LOADTEST_RCPT="u1@example.com")
    p = subprocess.run(["bash", os.path.join(root, "tests", "loadtest.sh"), "-c", str(conf),
                        "-b", PERIMD_BIN], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    out = p.stdout.decode("utf-8", "replace")
    assert p.returncode == 0, out
    steps = re.findall(r"^(\d+) +\d+ +(\d+) +(\d+) ", out, re.M)
    assert [s[0] for s in steps] == ["1", "4"], out
    assert all(s[1] == "20" and s[2] == "0" for s in steps), out
    ldap = re.findall(r"^  ldap: (\d+) searches/s, p50 (\S+), p99 (\S+), (\d+) errors$", out, re.M)
    assert len(ldap) == 2 and all(int(x[0]) > 0 and x[3] == "0" for x in ldap), out


def test_ldap_relay_domains_and_transport_maps(tmp_path, perimd_factory, sink_factory, slapd):
    # relay_domains and transport_maps as ldap: maps (asynchronous lookups
    # before the verdict chain): a domain in the directory is ours, one
    # marked "routed" goes to its own backend, others to relay_backends;
    # a domain not there is relaying (550); a directory down is 451.
    main_sink, routed_sink = sink_factory(), sink_factory()
    dom = dict(search_base="ou=domains," + SUFFIX, result_attribute="associatedDomain")
    rd = write_cf(tmp_path / "ldap-domains.cf", cf_text(
        slapd.uri, query_filter="(&(objectClass=domainRelatedObject)(associatedDomain=%s))",
        **dom))
    tr = write_cf(tmp_path / "ldap-transport.cf", cf_text(
        slapd.uri, query_filter="(&(associatedDomain=%s)(description=routed))",
        result_format="127.0.0.1:%d" % routed_sink.port, **dom))
    p = perimd_factory(relay_backends="127.0.0.1:%d" % main_sink.port,
                       relay_domains="ldap:" + rd, transport_maps="ldap:" + tr)
    r = rcpts(p.port, ["a@example.com", "b@Example.COM", "c@example.net",
                       "d@nowhere.test", "e@sub.example.com"])
    # c@example.net: ours, but the transaction already goes to the routed
    # backend (one backend list per transaction).
    assert [x[0] for x in r] == [250, 250, 452, 550, 550], r
    assert r[3][1] == "5.7.1 <d@nowhere.test>: relay access denied", r
    assert send(p.port, "x@example.com", "ldap-routed") == (250, 250)
    assert send(p.port, "y@example.net", "ldap-plain") == (250, 250)
    assert routed_sink.wait_count(1) and main_sink.wait_count(1)
    assert b"ldap-routed" in routed_sink.messages()[0]
    assert b"ldap-plain" in main_sink.messages()[0]
    assert metrics(p)['perimd_ldap_lookups_total{result="found"}'] >= 6
    slapd.stop()
    r = rcpts(p.port, ["a@example.com", "postmaster"])
    assert [x[0] for x in r] == [451, 250], r
    assert r[0][1] == "4.3.0 <a@example.com>: temporary lookup failure", r


class SlowProxy:
    """A TCP proxy in front of slapd that holds every request chunk `delay`
    seconds before passing it on: a slow directory whose concurrency can be
    counted. `max_busy` is the most requests held at once (one per LDAP
    connection that has a search out), `max_conns` the most connections
    open at once, `conns` the connections ever accepted."""

    def __init__(self, target_port, delay):
        import socket
        self.delay, self.target = delay, target_port
        self.lock = threading.Lock()
        self.busy = self.max_busy = self.open = self.max_conns = self.conns = 0
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(256)
        self.port = self.lsock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self):
        return "ldap://127.0.0.1:%d" % self.port

    def _count(self, attr, d):
        with self.lock:
            v = getattr(self, attr) + d
            setattr(self, attr, v)
            top = "max_busy" if attr == "busy" else "max_conns"
            if d > 0 and v > getattr(self, top):
                setattr(self, top, v)

    def _accept(self):
        import socket
        while not self.stopped:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.target), 5)
            with self.lock:
                self.conns += 1
            self._count("open", 1)
            threading.Thread(target=self._pump, args=(c, s, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(s, c, False), daemon=True).start()

    def _pump(self, src, dst, slow):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if slow:
                    self._count("busy", 1)
                    time.sleep(self.delay)
                    self._count("busy", -1)
                dst.sendall(b)
        except OSError:
            pass
        finally:
            for x in (src, dst):
                try:
                    x.shutdown(2)
                except OSError:
                    pass
            if slow:
                self._count("open", -1)

    def stop(self):
        self.stopped = True
        self.lsock.close()


def test_ldap_lookups_run_concurrently(tmp_path, perimd_factory, sink, slapd):
    # A slow directory (every request held 0.25 s by SlowProxy) under
    # smtp-source load, 16 sessions: the lookups of one map run
    # connection_limit at a time over that many persistent connections
    # (not capped by the shared worker threads), the bound holds, and the
    # event loops stay free (a session that needs no lookup answers fast).
    proxy = SlowProxy(slapd.port, 0.25)
    try:
        cf = write_cf(tmp_path / "ldap-wide.cf", cf_text(proxy.uri, connection_limit="8"))
        p = perimd_factory(relay_backends="127.0.0.1:%d" % sink.port,
                           relay_recipient_maps="ldap:" + cf)
        out = {}

        def load():
            t0 = time.monotonic()
            out["rc"] = smtp_source("-s", "16", "-m", "64", "-f", "load@client.test",
                                    "-t", "u1@example.com", "127.0.0.1:%d" % p.port)
            out["t"] = time.monotonic() - t0
        th = threading.Thread(target=load)
        th.start()
        assert wait_for(lambda: proxy.busy >= 4, 20)
        t0 = time.monotonic()
        assert rcpts(p.port, ["postmaster@example.com"])[0][0] == 250
        quick = time.monotonic() - t0
        # The graphs of the status page move under the load.
        assert wait_for(lambda: sum(series(p, "ldap", "ldap_lookups")) >= 8, 20)
        during = sum(series(p, "ldap", "ldap_lookups"))
        th.join(120)
        assert out["rc"][0] == 0, out
        assert sink.wait_count(64, 30)
        m = metrics(p)
    finally:
        proxy.stop()
    print("64 lookups at 0.25 s: %.2f s, most at once %d, connections %d (max open %d), "
          "an EHLO..RCPT postmaster meanwhile %.3f s" % (out["t"], proxy.max_busy, proxy.conns,
                                                          proxy.max_conns, quick))
    assert proxy.max_busy == 8, proxy.max_busy          # as wide as connection_limit
    assert proxy.max_conns <= 8 and proxy.conns <= 8, (proxy.max_conns, proxy.conns)
    assert m['perimd_ldap_connections{server="%s"}' % proxy.uri] == 8, m
    assert m['perimd_ldap_lookups_total{result="found"}'] >= 64, m
    # 64 searches at 0.25 s: 16 s one at a time, 8 s two at a time (the
    # old shared workers), 2 s eight at a time.
    assert out["t"] < 6, out["t"]
    assert quick < 1.0, quick
    after = series(p, "ldap", "ldap_lookups")
    assert sum(after) > during and sum(after) >= 64, (during, after[-3:])
    assert max(series(p, "ldapconn", "ldap_connections")) == 8
    home = page(p, "/")
    assert 'data-graph="ldap-day"' in home and 'data-graph="ldapconn-week"' in home


# ---- TLS -------------------------------------------------------------------------


def make_ca(d, name):
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    os.makedirs(d, exist_ok=True)
    ca_key, ca = os.path.join(d, "ca.key"), os.path.join(d, "ca.pem")
    key, csr, cert = (os.path.join(d, n) for n in ("srv.key", "srv.csr", "srv.pem"))
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName = IP:127.0.0.1, DNS:localhost\n"
                "extendedKeyUsage = serverAuth\n")
    run = lambda *a: subprocess.run(["openssl", *a], check=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, timeout=60)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "2", "-subj", "/CN=%s test CA" % name)
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)
    return {"ca": ca, "cert": cert, "key": key}


def test_ldaps_and_start_tls(tmp_path, perimd_factory):
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed")
    tls = make_ca(tmp_path / "ca", "perimd")
    other = make_ca(tmp_path / "other", "other")
    s = Slapd(tmp_path, tls=tls)
    s.start()
    try:
        ldaps = "ldaps://127.0.0.1:%d" % s.tls_port
        cf = write_cf(tmp_path / "ldaps.cf", cf_text(ldaps, tls_ca_cert_file=tls["ca"]))
        # StartTLS on the plain port, as an access map: uid=%u, answer OK.
        cf2 = write_cf(tmp_path / "starttls.cf",
                       cf_text(s.uri, start_tls="yes", tls_ca_cert_file=tls["ca"],
                               query_filter="(&(objectClass=inetOrgPerson)(uid=%u))",
                               result_attribute="uid", result_format="OK"))
        p = perimd_factory(relay_backends="127.0.0.1:9", relay_recipient_maps="ldap:" + cf,
                           recipient_access_maps="ldap:" + cf2)
        r = rcpts(p.port, ["alice@example.com", "nobody@example.com"])
        assert [x[0] for x in r] == [250, 550], r
        m = metrics(p)
        assert m['perimd_ldap_connections{server="%s"}' % ldaps] >= 1, m
        assert m['perimd_ldap_connections{server="%s"}' % s.uri] >= 1, m
        # A CA that did not sign the server's certificate: no lookups (451),
        # never a 550; -t only warns (the handshake fails like an outage).
        cf3 = write_cf(tmp_path / "wrongca.cf", cf_text(ldaps, tls_ca_cert_file=other["ca"]))
        q = perimd_factory(start=False, relay_backends="127.0.0.1:9",
                           relay_recipient_maps="ldap:" + cf3)
        rc, out = check(q.conf_path)
        assert rc == 0 and "wrongca.cf: ldaps://127.0.0.1:" in out, out
        q.start()
        r = rcpts(q.port, ["alice@example.com", "nobody@example.com", "postmaster@example.com"])
        assert [x[0] for x in r] == [451, 451, 250], r
        assert r[0][1] == "4.3.0 <alice@example.com>: temporary lookup failure", r
        # The same server with tls_require_cert = no: the certificate is
        # not checked (Postfix's default; perimd's is yes).
        cf4 = write_cf(tmp_path / "nocheck.cf", cf_text(ldaps, tls_ca_cert_file=other["ca"],
                                                         tls_require_cert="no"))
        q2 = perimd_factory(relay_backends="127.0.0.1:9", relay_recipient_maps="ldap:" + cf4)
        r = rcpts(q2.port, ["alice@example.com", "nobody@example.com"])
        assert [x[0] for x in r] == [250, 550], r
    finally:
        s.stop()


def test_version_lists_ldap():
    # perimd -V: the ldap feature and the libldap it was built with.
    out = subprocess.run([PERIMD_BIN, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=30).stdout.decode()
    features = re.search(r"^features: (.*)$", out, re.M).group(1).split()
    assert "ldap" in features, out
    assert re.search(r"^libldap 2\.\d+\.\d+ \(OpenLDAP; ldap: maps, ldaps:// and StartTLS\)$", out,
                     re.M), out


def test_ldap_value_over_the_map_bound_is_logged(tmp_path, perimd_factory, slapd):
    """A value longer than a map value holds (1023 bytes, every map type)
    is used up to that bound, and the log says so, naming the attribute,
    the key and the length; the recipient is still found."""
    long_value = "x" * 1500
    ldif = ("dn: uid=alice,ou=people,%s\nchangetype: modify\nreplace: description\n"
            "description: %s\n" % (SUFFIX, long_value))
    subprocess.run(["ldapmodify", "-x", "-H", slapd.uri, "-D", "cn=admin," + SUFFIX, "-w", "adminpw"],
                   input=ldif.encode(), check=True, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT, timeout=30)
    cf = write_cf(tmp_path / "ldap-long.cf", cf_text(slapd.uri, result_attribute="description"))
    p = perimd_factory(relay_backends="127.0.0.1:%d" % free_port(), relay_recipient_maps="ldap:" + cf)
    r = rcpts(p.port, ["alice@example.com"])
    assert r[0][0] == 250, r
    p.wait_log(r"ldap %s: value of description for <alice@example.com> is 1500 bytes; "
               r"only its first 1023 used" % re.escape(slapd.uri))
