"""test_postfix_forms.py - configuration a migrating Postfix admin writes
(issue 17, "Configuration that passes -t must work live"): what `perimd -t`
accepts works for real mail, end to end (swaks and the harness Client ->
perimd -> tests/integration/backend.py), and what perimd cannot do is
refused by -t with file:line and the form to write instead.

  - transport values in Postfix's form (smtp:[addr]:port, relay:[addr],
    [addr], smtp:addr:port) and perimd's own;
  - a "@domain" catch-all key in relay_recipient_maps;
  - access(5) actions: 4NN/5NN text, DEFER, DEFER_IF_PERMIT,
    DEFER_IF_REJECT, PERMIT, WARN, DISCARD, PREPEND (and HOLD, FILTER,
    REDIRECT, BCC refused);
  - every error of a configuration reported by one -t run.
"""

import os
import re
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import PERIMD_BIN, Client, expect, known_params, swaks, wait_for  # noqa: E402

BODY = b"Subject: forms\r\n\r\nhello\r\n"


def conf_for(backend, **params):
    """perimd parameters relaying to backend, checks needing DNS off."""
    base = {"relay_backends": backend.target}
    off = {"greylist": "no", "reject_unknown_sender_domain": "no"}
    base.update({k: v for k, v in off.items() if k in known_params()})
    base.update(params)
    return base


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def check(conf_path):
    """perimd -t on a configuration file: (exit status, stderr text)."""
    p = subprocess.run([PERIMD_BIN, "-t", "-c", conf_path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    return p.returncode, p.stderr.decode("utf-8", "replace")


def send(port, sender, rcpts, body=BODY):
    """One transaction on a new session: the replies to each RCPT and to
    the final dot (None when no RCPT was accepted)."""
    with Client(port) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
        rr = [c.cmd("RCPT TO:<%s>" % r) for r in rcpts]
        if not any(r[0] == 250 for r in rr):
            c.cmd("QUIT")
            return rr, None
        expect(c.cmd("DATA"), 354)
        c.send(body + b".\r\n")
        final = c.reply(20)
        c.cmd("QUIT")
        return rr, final


def metric(p, name):
    """A counter of perimd's /metrics (0 when absent)."""
    url = "http://%s/metrics" % p.params["stats_listen"]
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    m = re.search(r"^%s(?:\{\})? (\d+)" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else 0


# ---- transport values ---------------------------------------------------

def test_transport_postfix_forms_deliver(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    forms = {
        "a.example": "smtp:[127.0.0.1]:%d" % b.port,
        "b.example": "relay:[127.0.0.1]:%d" % b.port,
        "c.example": "[127.0.0.1]:%d" % b.port,          # perimd's own
        "d.example": "smtp:127.0.0.1:%d" % b.port,       # an address: no MX lookup either
        "e.example": "SMTP:[IPv6:127.0.0.1]:%d, [127.0.0.1]:%d" % (b.port, b.port),
    }
    tmap = write(tmp_path, "transport", "".join("%s %s\n" % kv for kv in forms.items()))
    p = perimd_factory(**conf_for(b, relay_domains=", ".join(forms), transport_maps="file:" + tmap,
                                  relay_backends="[127.0.0.1]:1"))
    rc, out = check(p.conf_path)
    assert rc == 0, out
    # swaks, as the admin would try it
    rc, out = swaks("--server", "127.0.0.1", "--port", p.port, "--from", "a@client.test",
                    "--to", "user@a.example", "--helo", "client.test")
    assert rc == 0 and re.search(r"<-  250 2.0.0 Ok: queued", out), out
    for dom in list(forms)[1:]:
        rr, final = send(p.port, "a@client.test", ["user@" + dom])
        expect(final, 250)
    got = sorted(m.rcpts[0] for m in b.messages())
    assert got == sorted("user@" + d for d in forms)


def test_transport_refused_forms_at_t(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    tmap = write(tmp_path, "transport",
                 "ok.example smtp:[127.0.0.1]:%d\n"
                 "l.example lmtp:unix:/var/run/lmtp\n"
                 "e.example error:5.1.1 mailbox unavailable\n"
                 "d.example discard:\n"
                 "n.example smtp:\n"
                 "v6.example ::1:25\n"
                 "ok2.example smtp:[::1]:25\n"
                 "ok3.example [mx.example.net]\n" % b.port)
    p = perimd_factory(start=False, **conf_for(b, transport_maps="file:" + tmap))
    rc, err = check(p.conf_path)
    assert rc != 0
    # every bad line, with its file:line and what to write instead
    for line, word in ((2, "smtp:\\[host\\]:port"), (5, "next hop"), (6, "brackets")):
        assert re.search(r"%s:%d: .*%s" % (re.escape(tmap), line, word), err), (line, err)
    for line in (1, 3, 4, 7, 8):
        assert "%s:%d:" % (tmap, line) not in err, err


def test_transport_error_and_retry(perimd_factory, backend_factory, tmp_path):
    """Postfix's error: and retry: transports: refused at RCPT (perimd
    never bounces), with the code and text written."""
    b = backend_factory()
    tmap = write(tmp_path, "transport",
                 "gone.example error:5.1.1 this domain is gone\n"
                 "later.example retry:4.4.1 moving house\n"
                 "plain.example error:\n"
                 "void.example discard:\n")
    p = perimd_factory(**conf_for(b, relay_domains="gone.example, later.example, plain.example, "
                                  "void.example, example.com", transport_maps="file:" + tmap))
    rr, final = send(p.port, "a@client.test", ["x@gone.example", "x@later.example",
                                                "x@plain.example", "x@example.com"])
    expect(rr[0], 550, "5.1.1", "this domain is gone")
    expect(rr[1], 450, "4.4.1", "moving house")
    expect(rr[2], 550, "5.0.0", "recipient rejected")
    expect(final, 250)
    assert [m.rcpts for m in b.messages()] == [["x@example.com"]]
    # discard: (Postfix's discard(8)): 250, relayed to nobody, counted
    rr, final = send(p.port, "a@client.test", ["x@void.example"])
    expect(rr[0], 250)
    expect(final, 250)
    p.wait_log(r"discard: RCPT from .*<x@void\.example>: transport_maps")
    assert len(b.messages()) == 1
    assert metric(p, "perimd_messages_discarded_total") == 1


def test_relay_backends_postfix_form(perimd_factory, backend_factory):
    b = backend_factory()
    p = perimd_factory(**conf_for(b, relay_backends="relay:[127.0.0.1]:%d" % b.port))
    rr, final = send(p.port, "a@client.test", ["x@example.com"])
    expect(final, 250)
    assert [m.rcpts for m in b.messages()] == [["x@example.com"]]


# ---- recipient maps: the @domain catch-all ------------------------------

def test_recipient_catchall(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    rmap = write(tmp_path, "rcpts", "user@example.com OK\n@example.net OK\n"
                 "gone@example.net REJECT\n")
    p = perimd_factory(**conf_for(b, relay_domains="example.com, example.net",
                                  relay_recipient_maps="file:" + rmap))
    rr, final = send(p.port, "a@client.test",
                     ["anyone@example.net", "user@example.com", "nobody@example.com",
                      "gone@example.net", "postmaster@example.com"])
    assert [r[0] for r in rr] == [250, 250, 550, 550, 250], rr
    expect(rr[2], 550, "5.1.1")
    expect(final, 250)
    assert b.messages()[0].rcpts == ["anyone@example.net", "user@example.com",
                                     "postmaster@example.com"]


# ---- access(5) actions ----------------------------------------------------

ACCESS = (
    "s554@client.test 554 5.7.1 go away\n"
    "s450@client.test 450 come back later\n"
    "sdefer@client.test DEFER busy\n"
    "sdip@client.test DEFER_IF_PERMIT not yet\n"
    "sdir@client.test DEFER_IF_REJECT maybe\n"
    "spermit@client.test PERMIT\n"
    "swarn@client.test WARN looks odd\n"
    "sdiscard@client.test DISCARD into the void\n"
    "sprepend@client.test PREPEND X-Perim-Tag: migrated\n"
    "sreject@client.test REJECT\n"
)


def test_access_actions_live(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    smap = write(tmp_path, "sender_access", ACCESS)
    rmap = write(tmp_path, "rcpt_access", "void@example.com DISCARD\n")
    p = perimd_factory(**conf_for(b, sender_access_maps="file:" + smap,
                                  recipient_access_maps="file:" + rmap))
    rc, err = check(p.conf_path)
    assert rc == 0, err
    cases = {
        "s554": (554, "5.7.1", "go away"),
        "s450": (450, "4.7.1", "come back later"),
        "sdefer": (450, "4.7.1", "busy"),
        "sdip": (450, "4.7.1", "not yet"),
        "sreject": (550, "5.7.1", "access denied"),
    }
    for who, (code, enh, text) in cases.items():
        rr, final = send(p.port, who + "@client.test", ["user@example.com", "postmaster@example.com"])
        expect(rr[0], code, enh, text)
        expect(rr[1], 250)    # role accounts keep their exemption
        expect(final, 250)
    assert "server configuration error" not in p.log_text()
    n = len(b.messages())
    assert n == len(cases) and all(m.rcpts == ["postmaster@example.com"] for m in b.messages())
    # accepted and relayed
    for who in ("spermit", "swarn", "sdir"):
        rr, final = send(p.port, who + "@client.test", ["user@example.com"])
        expect(final, 250)
    p.wait_log(r"warn: access_sender: .*looks odd")
    assert len(b.messages()) == n + 3
    # PREPEND: the header is on the relayed copy
    rr, final = send(p.port, "sprepend@client.test", ["user@example.com"])
    expect(final, 250)
    msg = b.messages()[-1]
    head = msg.data.split(b"\r\n\r\n", 1)[0]
    assert b"X-Perim-Tag: migrated\r\n" in head
    assert head.index(b"X-Perim-Tag") < head.index(b"Received:")
    # DISCARD: 250 to the client, nothing to the backend, logged and counted
    before = len(b.messages())
    rr, final = send(p.port, "sdiscard@client.test", ["user@example.com"])
    expect(rr[0], 250)
    expect(final, 250)
    p.wait_log(r"discarded: from=<sdiscard@client.test>")
    assert len(b.messages()) == before
    assert metric(p, "perimd_messages_discarded_total") == 1
    # DISCARD of one recipient: the others are relayed
    rr, final = send(p.port, "a@client.test", ["void@example.com", "user@example.com"])
    expect(final, 250)
    assert b.messages()[-1].rcpts == ["user@example.com"]


def test_access_refused_actions_at_t(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    smap = write(tmp_path, "sender_access",
                 "a@x.test OK\nb@x.test HOLD\nc@x.test FILTER smtp:[10.0.0.1]\n"
                 "d@x.test REDIRECT x@y.test\ne@x.test BCC x@y.test\nf@x.test permit_mynetworks\n"
                 "g@x.test PREPEND nonsense\n")
    cmap = write(tmp_path, "client_access", "192.0.2.1 HOLD\n")
    p = perimd_factory(start=False, **conf_for(b, sender_access_maps="file:" + smap,
                                               client_access_maps="file:" + cmap))
    rc, err = check(p.conf_path)
    assert rc != 0
    for line in range(2, 8):
        assert "%s:%d:" % (smap, line) in err, (line, err)
    assert "%s:1:" % smap not in err
    assert re.search(r"%s:1: .*HOLD.*DEFER" % re.escape(cmap), err), err
    # and a running perimd refuses the same file at reload, keeping the old one
    write(tmp_path, "sender_access", "a@x.test REJECT first\n")
    write(tmp_path, "client_access", "192.0.2.1 OK\n")
    p.start()
    write(tmp_path, "sender_access", "a@x.test HOLD\n")
    os.kill(p.pid, 1)
    p.wait_log(r"not reloaded, keeping the previous table: .*sender_access:1: .*HOLD")
    rr, final = send(p.port, "a@x.test", ["user@example.com"])
    expect(rr[0], 550, "5.7.1", "first")
    wait_for(lambda: True)


# ---- policy_listen in Postfix's check_policy_service forms ---------------

def ask_policy(sock):
    """One Postfix policy delegation request (SMTPD_POLICY_README): the
    action line of the answer."""
    sock.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=192.0.2.7\n"
                 b"sender=a@client.test\nrecipient=user@example.com\n\n")
    buf = b""
    while not buf.endswith(b"\n\n"):
        chunk = sock.recv(4096)
        assert chunk, buf
        buf += chunk
    return buf.decode().split("\n")[0]


def test_policy_listen_inet_and_unix(perimd_factory, backend_factory, tmp_path):
    import socket
    from harness import free_port
    b = backend_factory()
    pport = free_port()
    p = perimd_factory(**conf_for(b, policy_listen="inet:127.0.0.1:%d" % pport, greylist="yes"))
    with socket.create_connection(("127.0.0.1", pport), timeout=10) as s:
        assert ask_policy(s).startswith("action=DEFER_IF_PERMIT"), "greylisted"
    path = str(tmp_path / "policy.sock")
    q = perimd_factory(**conf_for(b, policy_listen="unix:" + path, greylist="yes"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        assert ask_policy(s).startswith("action=DEFER_IF_PERMIT")
    # forms that cannot work are refused by -t, saying what to write
    r = perimd_factory(start=False, **conf_for(b, policy_listen="inet:127.0.0.1"))
    rc, err = check(r.conf_path)
    assert rc != 0 and "inet:127.0.0.1:2525" in err, err
    r = perimd_factory(start=False, **conf_for(b, policy_listen="unix:private/policy"))
    rc, err = check(r.conf_path)
    assert rc != 0 and "absolute path" in err, err
    del p, q


# ---- -t reports every error; -d/-n NAME ----------------------------------

def test_check_reports_every_error(tmp_path):
    amap = write(tmp_path, "access", "a@x.test HOLD\nb@x.test OK\nc@x.test BOGUS\n")
    conf = write(tmp_path, "perimd.conf",
                 "smtpd_timeout = soon\n"
                 "no_such_parameter = 1\n"
                 "relay_domains = example.com\n"
                 "sender_access_maps = file:%s\n"
                 "relay_backends = lmtp:[127.0.0.1]:24\n"
                 "message_size_limit = 1\n"
                 "policy_listen = inet:127.0.0.1\n" % amap)
    rc, err = check(conf)
    assert rc != 0
    # the file's own errors, each with its line
    for line in (1, 2, 6):
        assert "%s:%d:" % (conf, line) in err, (line, err)
    # with those fixed, the errors found past the parameters: all of them
    conf = write(tmp_path, "perimd.conf",
                 "relay_domains = example.com\n"
                 "sender_access_maps = file:%s\n"
                 "relay_backends = lmtp:[127.0.0.1]:24\n"
                 "policy_listen = inet:127.0.0.1\n" % amap)
    rc, err = check(conf)
    assert rc != 0
    assert "%s:1:" % amap in err and "%s:3:" % amap in err and "%s:2:" % amap not in err, err
    assert "relay_backends: lmtp:" in err and "policy_listen" in err, err
    assert all(ln.startswith("perimd: ") for ln in err.splitlines()), err
    # one file as two kinds of map: checked as each
    both = write(tmp_path, "both", "x.test HOLD\n")
    conf = write(tmp_path, "perimd.conf", "relay_domains = example.com\n"
                 "transport_maps = file:%s\nsender_access_maps = file:%s\n" % (both, both))
    rc, err = check(conf)
    assert rc != 0 and re.search(r"sender_access_maps: %s:1: .*HOLD" % re.escape(both), err), err
    # Postfix's map types: what to write instead
    conf = write(tmp_path, "perimd.conf",
                 "relay_domains = example.com\ntransport_maps = hash:/etc/postfix/transport\n"
                 "sender_access_maps = pcre:/etc/postfix/sender.pcre\n"
                 "client_access_maps = proxy:ldap:/etc/postfix/ldap.cf\n")
    rc, err = check(conf)
    assert rc != 0
    assert re.search(r"transport_maps: .*hash.*write file: .*source text file", err), err
    assert re.search(r"sender_access_maps: .*pcre.*write regexp:", err), err
    assert re.search(r"client_access_maps: .*proxy.*drop the proxy: prefix", err), err


def run(*args):
    p = subprocess.run([PERIMD_BIN, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_print_named_parameters(tmp_path):
    rc, out, err = run("-d", "smtpd_timeout", "relay_domains")
    assert rc == 0 and out == "smtpd_timeout = 300s\nrelay_domains =\n", (out, err)
    rc, out, err = run("-d", "smtpd_timeout", "no_such_thing")
    assert rc == 1 and out == "" and "no_such_thing: unknown parameter" in err
    conf = write(tmp_path, "perimd.conf", "relay_domains = example.com\nsmtpd_timeout = 5m\n")
    rc, out, err = run("-n", "-c", conf, "relay_domains", "smtpd_timeout", "myhostname")
    assert rc == 0 and out == "relay_domains = example.com\n", (out, err)
    rc, out, err = run("-n", "-c", conf, "bogus")
    assert rc == 1 and "bogus: unknown parameter" in err


# ---- regexp: maps in access maps ------------------------------------------

def test_regexp_access_map(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    smap = write(tmp_path, "sender_access.regexp",
                 "# Postfix regexp_table(5)\n"
                 "/^spam([0-9]+)@client\\.test$/ 554 5.7.1 spammer number $1\n"
                 "if /@client\\.test$/\n"
                 "!/^(a|spam[0-9]+|tag)@/ REJECT only a@ here\n"
                 "endif\n"
                 "/^tag@/ PREPEND X-Regexp: tagged\n")
    cmap = write(tmp_path, "client_access.regexp", "/^127\\.0\\.0\\.1$/ WARN loopback client\n")
    p = perimd_factory(**conf_for(b, sender_access_maps="regexp:" + smap,
                                  client_access_maps="regexp:" + cmap))
    rr, final = send(p.port, "spam12@client.test", ["user@example.com"])
    expect(rr[0], 554, "5.7.1", "spammer number 12")
    rr, final = send(p.port, "other@client.test", ["user@example.com", "abuse@example.com"])
    expect(rr[0], 550, "5.7.1", "only a@ here")
    expect(rr[1], 250)
    rr, final = send(p.port, "a@client.test", ["user@example.com"])
    expect(final, 250)
    rr, final = send(p.port, "tag@client.test", ["user@example.com"])
    expect(final, 250)
    assert b"X-Regexp: tagged\r\n" in b.messages()[-1].data
    p.wait_log(r"warn: access_client: regexp:.* from \[127\.0\.0\.1\]: loopback client")
    # refused at -t with every bad line: syntax, cost (greylisting's limits), action
    write(tmp_path, "sender_access.regexp",
          "/ok/ OK\n/a{2}{3}/ OK\n/[/ OK\n/x/ HOLD\nif /y/\n")
    rc, err = check(p.conf_path)
    assert rc != 0
    for line, what in ((2, "too complex"), (3, "bad pattern"), (4, "HOLD"), (5, "if without endif")):
        assert re.search(r"%s:%d: .*%s" % (re.escape(smap), line, what), err), (line, err)
    assert "%s:1:" % smap not in err


# ---- header_checks --------------------------------------------------------

HEADER_CHECKS = (
    "/^Subject: .*viagra/ REJECT 5.7.1 no pills here\n"
    "/^Subject: .*lottery/ DISCARD\n"
    "/^X-Internal-Secret:/ IGNORE\n"
    "/^Subject: .*invoice/ PREPEND X-Checked: invoice\n"
    "/^X-Mailer: .*oldmailer/ WARN old mailer\n"
    "/^X-Folded: a[[:space:]]+b$/ REJECT folded header seen whole\n"
)


def test_header_checks(perimd_factory, backend_factory, tmp_path):
    b = backend_factory()
    hc = write(tmp_path, "header_checks", HEADER_CHECKS)
    p = perimd_factory(**conf_for(b, header_checks="regexp:" + hc))
    # REJECT: 5xx at the final dot, nothing reaches the backend
    rr, final = send(p.port, "a@client.test", ["user@example.com"],
                     b"Subject: cheap viagra\r\n\r\nbody\r\n")
    expect(final, 550, "5.7.1", "no pills here")
    rr, final = send(p.port, "a@client.test", ["user@example.com"],
                     b"Subject: x\r\nX-Folded: a\r\n b\r\n\r\nbody\r\n")
    expect(final, 550, "5.7.1", "folded header seen whole")
    assert b.messages() == []
    # DISCARD: 250, nothing relayed, counted
    rr, final = send(p.port, "a@client.test", ["user@example.com"],
                     b"Subject: you won the lottery\r\n\r\nbody\r\n")
    expect(final, 250)
    p.wait_log(r"discarded: .*header_checks DISCARD")
    assert b.messages() == []
    assert metric(p, "perimd_messages_discarded_total") == 1
    # IGNORE, PREPEND, WARN: relayed, headers edited, body intact
    body = (b"Subject: your invoice\r\nX-Internal-Secret: 42\r\n\tcontinued\r\n"
            b"X-Mailer: oldmailer 1.0\r\n\r\nline one\r\nX-Internal-Secret: in the body stays\r\n")
    rr, final = send(p.port, "a@client.test", ["user@example.com"], body)
    expect(final, 250)
    data = b.messages()[-1].data
    head, _, rest = data.partition(b"\r\n\r\n")
    assert b"X-Internal-Secret: 42" not in head and b"continued" not in head
    assert b"X-Checked: invoice\r\nSubject: your invoice\r\n" in head + b"\r\n"
    assert rest == b"line one\r\nX-Internal-Secret: in the body stays\r\n"
    p.wait_log(r"warning: header X-Mailer: oldmailer 1\.0: old mailer")
    # HOLD and friends refused at -t with file:line; a file: map is no header_checks table
    write(tmp_path, "header_checks", "/^Subject:/ HOLD\n/^From:/ REDIRECT x@y.test\n")
    rc, err = check(p.conf_path)
    assert rc != 0 and "%s:1:" % hc in err and "%s:2:" % hc in err, err
    q = perimd_factory(start=False, **conf_for(b, header_checks="file:" + hc))
    write(tmp_path, "header_checks", "/^Subject:/ REJECT\n")
    rc, err = check(q.conf_path)
    assert rc != 0 and "takes a regexp: table" in err, err


# ---- [host]: A/AAAA only, no MX lookup (needs dnsmasq, as test_dns.py) -----

def test_bracketed_host_skips_mx(perimd_factory, backend_factory, tmp_path):
    import shutil as _sh
    import pytest
    from test_dns import DNSMASQ, Dnsmasq
    if not os.path.exists(DNSMASQ) and not _sh.which("dnsmasq"):
        pytest.skip("dnsmasq (dnsmasq-base) missing")
    d = Dnsmasq(tmp_path / "dnsmasq").start()
    try:
        b = backend_factory()
        tmap = write(tmp_path, "transport",
                     "a.example smtp:[mx2.relay.test]:%d\n"     # A 127.0.0.1: the backend
                     "b.example relay:[relay.test]:%d\n" % (b.port, b.port))  # MX only, no A
        p = perimd_factory(**conf_for(b, relay_domains="a.example, b.example",
                                      transport_maps="file:" + tmap,
                                      dns_servers="127.0.0.1:%d" % d.port, dns_timeout="500ms"))
        rr, final = send(p.port, "a@client.test", ["user@a.example"])
        expect(final, 250)
        rr, final = send(p.port, "a@client.test", ["user@b.example"])
        assert final[0] == 451, final
        assert [m.rcpts for m in b.messages()] == [["user@a.example"]]
        assert d.queries("A", "mx2.relay.test") >= 1
        assert d.queries("MX", "mx2.relay.test") == 0 and d.queries("MX", "relay.test") == 0
    finally:
        d.stop()
