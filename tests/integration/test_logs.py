"""test_logs.py - logs a site can use: one message traced end to end by
one grep (session id, transaction ids that begin with it, fixed widths so
no id matches the next session), message-id= from the header, the status
words (sent, deferred, rejected; never bounced), and log_format = json
(every line one object that json.loads parses, under odd input).
"""

import json
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import REPO, Client, smtp_dialogue, wait_for  # noqa: E402

ID = r"[0-9B-DF-HJ-NP-TV-Z]{12}"  # smtpd_gen_id's alphabet, fixed width


class ProxySMTP(smtplib.SMTP):
    """smtplib.SMTP that sends a PROXY v1 header before the greeting."""

    proxy_src = "203.0.113.7"

    def _get_socket(self, host, port, timeout):
        s = socket.create_connection((host, port), timeout, source_address=("127.0.0.2", 0))
        s.sendall(("PROXY TCP4 %s 127.0.0.1 40000 25\r\n" % self.proxy_src).encode())
        return s


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(d / "k.pem"), "-out",
                    str(d / "c.pem"), "-days", "30", "-subj", "/CN=perimd.test"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return str(d / "c.pem"), str(d / "k.pem")


def lines_with(log, needle):
    return [ln for ln in log.splitlines() if needle in ln]


def test_one_message_traced_by_one_grep(perimd_factory, backend_factory, cert):
    """A session through PROXY and STARTTLS with two transactions: one
    grep of the session id finds connect, PROXY, TLS, EHLO, the refusal,
    the client= / message-id= / to= / from= lines of both messages and the
    relay's line, and the disconnect; nothing of the next session. A grep
    of a transaction id finds that transaction only. The recipient the
    backend refused is status=rejected, the accepted one status=sent."""
    b = backend_factory(rcpt_reply={"nobody@*": "550 5.1.1 no such user"})
    # PROXY from 127.0.0.2 only: the harness's start probe (127.0.0.1) goes without.
    p = perimd_factory(relay_backends=b.target, smtpd_upstream_proxy_protocol="haproxy",
                       smtpd_upstream_proxy_clients="127.0.0.2",
                       smtpd_tls_cert_file=cert[0], smtpd_tls_key_file=cert[1])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with ProxySMTP("127.0.0.1", p.port, timeout=20) as c:
        c.ehlo("client.test")
        c.starttls(context=ctx)
        c.ehlo("client.test")
        c.mail("a@client.test")
        assert c.rcpt("x@other.test")[0] == 550  # relay denied: a refusal line
        assert c.rcpt("b@example.com")[0] == 250
        assert c.rcpt("nobody@example.com")[0] == 250  # perimd does not know
        c.data(b"Message-ID: <trace-1@client.test>\r\nSubject: one\r\n\r\nhello\r\n")
        c.mail("a@client.test")
        c.rcpt("b@example.com")
        c.data(b"Subject: two, no message-id\r\n\r\nhello\r\n")
    # The next session: many sessions later, its id must not match.
    for _ in range(3):
        smtp_dialogue(p.port, ["EHLO next.test", "QUIT"])
    m = p.wait_log(r"^.*(%s): disconnect from \[203\.0\.113\.7\]" % ID)
    assert wait_for(lambda: p.log_text().count("ehlo=<next.test>") == 3)
    sid = m.group(1)
    log = p.log_text()
    mine = lines_with(log, sid)
    text = "\n".join(mine)
    for what in (r"%s: connect from \[127\.0\.0\.2\]" % sid,
                 r"%s: PROXY v1 from \[127\.0\.0\.2\]: client \[203\.0\.113\.7\]" % sid,
                 r"%s: ehlo=<client\.test> from \[203\.0\.113\.7\]" % sid,
                 r"%s: TLS established from \[203\.0\.113\.7\]" % sid,
                 r"%s\.0001: client=\[203\.0\.113\.7\], helo=<client\.test>, from=<a@client\.test>" % sid,
                 r"%s\.0001: reject: RCPT from \[203\.0\.113\.7\]: 550 5\.7\.1 .*to=<x@other\.test>" % sid,
                 r"%s\.0001: message-id=<trace-1@client\.test>" % sid,
                 # Not all recipients taken: the client gets a 451 for all.
                 r"%s\.0001: to=<b@example\.com>, relay=.*status=deferred" % sid,
                 r"%s\.0001: to=<nobody@example\.com>, relay=.*status=rejected \(550 5\.1\.1 no such user\)"
                 % sid,
                 r"%s\.0001: relay=\S+, rcpts=2, .*status=deferred" % sid,
                 r"%s\.0001: from=<a@client\.test>, size=\d+, nrcpt=2, client=\[203\.0\.113\.7\]" % sid,
                 r"%s\.0002: message-id=<>" % sid,
                 r"%s\.0002: to=<b@example\.com>, .*status=sent \(250" % sid,
                 r"%s: disconnect from \[203\.0\.113\.7\] commands=\d+ messages=1" % sid):
        assert re.search(what, text), "%r not in the session's lines:\n%s" % (what, text)
    # Nothing else matches: not the next sessions, and no line that is not ours.
    assert "next.test" not in text
    for ln in mine:
        assert re.search(r"perimd\[\d+\]: (?:warning: )?%s(?:\.\d{4})?: " % sid, ln), ln
    # The first transaction's grep is that transaction only.
    t1 = lines_with(log, sid + ".0001")
    assert t1 and not any("message-id=<>" in ln for ln in t1)
    assert not re.search(r"status=bounced", log)
    # Every session id in the log has the same width.
    ids = set(re.findall(r"perimd\[\d+\]: (?:warning: )?([0-9A-Z]+)(?:\.\d{4})?: ", log))
    assert ids and all(re.fullmatch(ID, i) for i in ids), ids
    assert len(ids) >= 5  # the start probe, ours, the next 3


def test_backend_tempfail_is_deferred(perimd_factory, backend_factory):
    b = backend_factory(rcpt_reply={"later@*": "451 4.3.0 try later"})
    p = perimd_factory(relay_backends=b.target)
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<later@example.com>",
                               "DATA", "Subject: t", "", "x", ".", "QUIT"])
    assert r[-2][0] == 451, r
    p.wait_log(r"to=<later@example\.com>, .*status=deferred \(451 4\.3\.0 try later\)")


ODD_HELO = [b'q"uo\\te.test', "h\u00e9llo-\u4e16\u754c.test".encode(), b"bad\xff\xfeutf8.test",
            b"ctl\x01\x1b[31m\x7f.test", b"tab\there.test",
            b'\x01"\\\xff' * 60 + b".test"]  # 245 bytes, up to 4x once escaped


def test_json_log_lines_parse_under_odd_input(perimd_factory, backend_factory):
    """log_format = json: every line of a run with quotes, backslashes,
    control characters, valid and invalid UTF-8 in HELO, addresses,
    Message-ID and refusals parses with json.loads (the file read as strict
    UTF-8) and carries the text line's fields: id, msg, from, to, status,
    relay, message-id, client."""
    b = backend_factory(rcpt_reply={"nobody@*": "550 5.1.1 no \"such\" user"})
    p = perimd_factory(relay_backends=b.target, log_format="json", reject_invalid_helo_hostname=False,
                       smtpd_error_sleep_time="0")
    def one(i, helo):
        r = smtp_dialogue(p.port, [
            b"EHLO " + helo,
            b'MAIL FROM:<"we\\"ird\\\\x"@client.test>',
            b"RCPT TO:<x\x01y@other.test>",
            b'RCPT TO:<"q\\"x"@other.test>',
            "RCPT TO:<\u00fc\u00e9@other.test> SMTPUTF8".encode(),
            b"RCPT TO:<b@example.com>",
            b"DATA",
            b"Message-ID: <odd-" + str(i).encode() + b'-"q"\\\x02\xc3\xa9\xff@client.test>',
            b"Subject: odd", b"", b"x", b".",
            b"MAIL FROM:<a@client.test>", b"RCPT TO:<nobody@example.com>", b"DATA",
            b"Subject: refused", b"", b"x", b".", b"QUIT"], timeout=30)
        assert 250 in [x[0] for x in r]
    # Under load: the sessions at once (each line is one write, so lines
    # from different threads never mix).
    helos = ODD_HELO * 4
    with ThreadPoolExecutor(max_workers=8) as ex:
        list(ex.map(lambda a: one(*a), [(i % len(ODD_HELO), h) for i, h in enumerate(helos)]))
    sent = len(helos)
    assert wait_for(lambda: p.log_text().count('"msg":"disconnect from') >= sent + 1, 20)
    p.stop()
    raw = open(p.log_path, "rb").read()
    objs = []
    for ln in raw.split(b"\n"):
        if not ln:
            continue
        if b"AddressSanitizer" in ln or b"runtime error" in ln:
            pytest.fail(ln.decode("utf-8", "replace"))
        o = json.loads(ln.decode("utf-8"))  # strict: every byte valid UTF-8
        assert isinstance(o, dict)
        for k in ("time", "level", "ident", "pid", "msg"):
            assert k in o, o
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["time"])
        objs.append(o)
    assert len(objs) > 50
    helos = [o["msg"] for o in objs if o["msg"].startswith("ehlo=")]
    assert any('q"uo\\te.test' in h for h in helos), helos
    assert any("h\u00e9llo-\u4e16\u754c.test" in h for h in helos), helos
    assert any("bad\ufffd\ufffdutf8.test" in h for h in helos), helos
    assert any("ctl\x01\x1b[31m\x7f.test" in h for h in helos), helos
    assert any(('\x01"\\\ufffd' * 60 + ".test") in h for h in helos), helos
    ids = {o.get("id") for o in objs if "id" in o}
    assert all(re.fullmatch(ID + r"(\.\d{4})?", i) for i in ids), ids
    sent_lines = [o for o in objs if o.get("status") == "sent" and "to" in o]
    assert len(sent_lines) == sent
    for o in sent_lines:
        assert o["to"] == "b@example.com" and o["relay"] and o["status_detail"].startswith("250")
        assert re.fullmatch(ID + r"\.0001", o["id"])
    # The backend's refusal; then the verdict cache refuses at RCPT.
    rej = [o for o in objs if o.get("status") == "rejected" and "to" in o]
    assert len(rej) >= 1 and all(o["to"] == "nobody@example.com" for o in rej)
    assert all(o["status_detail"] == '550 5.1.1 no "such" user' for o in rej), rej
    mids = [o["message-id"] for o in objs
            if o["msg"].startswith("message-id=")]
    assert len([m for m in mids if m.startswith("odd-")]) == sent, mids
    assert all(m.endswith('-"q"\\?\u00e9\ufffd@client.test') for m in mids if m), mids
    refusals = [o for o in objs if o["msg"].startswith("reject: RCPT")]
    assert len([o for o in refusals if o.get("to") == '"q\\"x"@other.test']) == sent, refusals
    clients = [o for o in objs if o["msg"].startswith("client=")]
    assert len(clients) == 2 * sent and all(o["client"] == "127.0.0.1" for o in clients)
    assert len([o for o in clients if o["from"] == '"we\\"ird\\\\x"@client.test']) == sent


def readme_reports():
    """The report commands of the README (the indented block after
    "checks its answer):"), each (comment, command)."""
    text = open(os.path.join(REPO, "README")).read()
    block = text.split("checks its answer):\n\n", 1)[1]
    out, comment = [], None
    for ln in block.splitlines():
        if not ln.startswith("    "):
            break
        ln = ln.strip()
        if ln.startswith("#"):
            comment = ln
        else:
            out.append((comment, ln))
    return out


def test_reports_pflogsumm_and_readme_greps(perimd_factory, backend_factory, tmp_path):
    """README's claim about pflogsumm (Debian's, on the log as rsyslog
    writes it: every figure 0) and its grep recipes, each run on a log of
    known traffic and checked."""
    b = backend_factory(rcpt_reply={"nobody@*": "550 5.1.1 no such user",
                                    "later@*": "451 4.3.0 try later"})
    p = perimd_factory(relay_backends=b.target, relay_domains="example.com, example.net")

    def msg(rcpt):
        return smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<%s>" % rcpt,
                                      "DATA", "Subject: r", "", "x" * 100, ".", "QUIT"])[-2][0]
    assert [msg(r) for r in ("b@example.com", "c@example.com", "d@example.net")] == [250] * 3
    assert msg("nobody@example.com") == 550
    assert msg("later@example.com") == 451
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test>", "RCPT TO:<x@other.test>",
                               "RCPT TO:<y@other.test>", "QUIT"])
    assert [x[0] for x in r] == [220, 250, 250, 550, 550, 221]
    r = smtp_dialogue(p.port, ["EHLO c", "MAIL FROM:<a@client.test> SIZE=999999999999", "QUIT"])
    assert r[2][0] == 552
    p.stop()
    log = p.log_path
    text = open(log).read()
    sizes = [int(x) for x in re.findall(r": from=<.*, size=(\d+), .*, result=250 ", text)]
    assert len(sizes) == 3
    want = {
        "2": "3", "4": "1", "5": "1",
        "refusals": "2 RCPT 550 5.7.1\n1 MAIL 552 5.3.4",
        "clients": "6 : client=[127.0.0.1]",
        "domains": "2 example.com\n1 example.net",
        "bytes": str(sum(sizes)),
    }
    cmds = readme_reports()
    assert len(cmds) == 7, cmds
    got = []
    for comment, cmd in cmds:
        r = subprocess.run(["bash", "-c", cmd.replace(" LOG", " " + log)], capture_output=True,
                           text=True, timeout=30)
        got.append("\n".join(" ".join(ln.split()) for ln in r.stdout.strip().splitlines()))
    assert got[0:3] == [want["2"], want["4"], want["5"]], got
    assert got[3] == want["refusals"], got[3]
    assert got[4] == want["clients"], got[4]
    assert got[5] == want["domains"], got[5]
    assert got[6] == want["bytes"], got[6]
    # pflogsumm, on the same lines as rsyslog writes them (with a host).
    if not shutil.which("pflogsumm"):
        pytest.skip("pflogsumm (build.sh DEPS) is not installed")
    syslog = tmp_path / "mail.log"
    syslog.write_text(re.sub(r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d) ", r"\1 mx1 ", text, flags=re.M))
    for extra in ([], ["--syslog-name=perimd"]):
        r = subprocess.run(["pflogsumm", *extra, str(syslog)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        for what in ("received", "delivered", "deferred", "bounced", "rejected"):
            m = re.search(r"^\s+(\d+)\s+%s\b" % what, r.stdout, re.M)
            assert m and m.group(1) == "0", (what, r.stdout[:1500])


def test_json_and_text_say_the_same(perimd_factory, backend_factory):
    """The same traffic through a text and a json perimd: the same lines
    (level, id, message; compared as multisets, ids and numbers aside, as
    threads interleave differently), and every key=value of a message is
    a field of its object."""
    b = backend_factory(rcpt_reply={"nobody@*": "550 5.1.1 no such user"})
    logs = {}
    for fmt in ("text", "json"):
        p = perimd_factory(relay_backends=b.target, log_format=fmt)
        for rcpt in ("b@example.com", "nobody@example.com"):
            smtp_dialogue(p.port, ["EHLO c.test", "MAIL FROM:<a@client.test>",
                                   "RCPT TO:<x@other.test>", "RCPT TO:<%s>" % rcpt, "DATA",
                                   "Message-ID: <same@client.test>", "", "x", ".", "QUIT"])
        assert wait_for(lambda: p.log_text().count("disconnect from") >= 3)
        p.stop()
        logs[fmt] = p.log_text().splitlines()
    text = [re.match(r"^\w{3} [ \d]\d [\d:]{8} perimd\[\d+\]: (?:(warning|error|debug): )?(.*)$", ln)
            for ln in logs["text"]]
    assert all(text), logs["text"]
    objs = [json.loads(ln) for ln in logs["json"]]
    assert len(text) == len(objs)

    def norm(s):  # ids, ports, delays and queue ids differ between the runs
        s = re.sub(ID + r"(\.\d{4})?", "ID", s)
        return re.sub(r"\d+(\.\d+)?", "N", s)
    # Threads interleave differently in the two runs: compare as multisets.
    tkeys = Counter()
    for t in text:
        msg, tid = t.group(2), re.match(r"^(%s(?:\.\d{4})?): (.*)$" % ID, t.group(2))
        if tid:
            msg = tid.group(2)
        tkeys[(t.group(1) or "info", bool(tid), norm(msg))] += 1
    okeys = Counter((o["level"], "id" in o, norm(o["msg"])) for o in objs)
    assert tkeys == okeys, (tkeys - okeys, okeys - tkeys)
    for o in objs:
        if "id" in o:
            assert re.fullmatch(ID + r"(\.\d{4})?", o["id"]), o
        for k, v in re.findall(r"(?:^|[ ,;])([a-z_-]+)=(<[^>]*>|\[[^]]*\]|[^ ,;]*)", o["msg"]):
            want = v[1:-1] if v[:1] in "<[" and v[-1:] in ">]" else v
            assert k in o, (k, o)
            if k not in ("time", "level", "ident", "pid", "id", "msg"):
                assert o[k] == want, (k, o[k], want, o)


def test_refused_at_connect_has_an_id(perimd_factory):
    """A connection refused for max_sessions is a session of one line,
    with an id like any other."""
    p = perimd_factory(max_sessions=1)
    held = []

    def hold():  # the start probe's session may not be gone yet: retry
        c = Client(p.port)
        if c.banner and c.banner[0] == 220:
            held.append(c)
            return True
        c.close()
        return False
    assert wait_for(hold, 10)
    with held[0] as c:
        c2 = Client(p.port, read_banner=False)
        assert c2.wait_closed(10)
        c2.close()
        m = p.wait_log(r"perimd\[\d+\]: warning: (\S+): refused connection from \[127\.0\.0\.1\]: "
                       r"max_sessions \(1\) reached")
        assert all(re.fullmatch(ID, i) for i in re.findall(
            r"warning: (\S+): refused connection from \[127\.0\.0\.1\]: max_sessions",
            p.log_text())), m.group(0)
        c.cmd("QUIT")
