"""test_av_limits.py - a scan that stops at a scanner limit is never clean
(issue 13, item 2): libclamav's limits (av_max_recursion, av_max_files,
av_max_file_size, av_max_scan_size, av_max_scan_time) set low, each case
built small, the virus placed past the limit; the reply says which limit,
the backend gets nothing, the log names the limit and the counter
perimd_av_incomplete_total counts it. Encrypted archives (av_alert_encrypted)
and the same guarantee through a real clamd (AlertExceedsMax,
StreamMaxLength) are here too.

Archives are made with python's zipfile, gzip and a ZipCrypto writer of
our own (no zip tool needed); EICAR is assembled at run time (test_av.py).
Members are deflated so that the signature is only ever visible to a
scanner that opened the archive: what passes the limit is truly unseen.
"""

import gzip
import io
import os
import re
import signal
import struct
import subprocess
import sys
import zipfile
import zlib

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import expect  # noqa: E402
from test_av import (CLEAN, EICAR, SIG_EICAR, Clamd, attachment, send, session,  # noqa: E402
                     write_db)
from test_stats import metrics  # noqa: E402

PERIMD_BIN = os.environ.get("PERIMD_BIN", "build/test/perimd")


def deflated(members):
    """A zip of (name, data) members, all deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def nested(depth, inner):
    """inner (EICAR.com) in depth zips, each inside the next."""
    data, name = inner, "eicar.com"
    for i in range(depth):
        data, name = deflated([(name, data)]), "level%d.zip" % i
    return data


def zip_mail(data, name="files.zip"):
    return attachment(data, name, "application/zip")


def zipcrypto(name, plain, password=b"infected"):
    """A one-member zip with traditional PKWARE encryption (APPNOTE 6.1),
    member stored: what mail-borne malware sends with the password in the
    body."""
    def crc_byte(k, b):
        return ~zlib.crc32(bytes([b]), ~k & 0xffffffff) & 0xffffffff

    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(b):
        keys[0] = crc_byte(keys[0], b)
        keys[1] = ((keys[1] + (keys[0] & 0xff)) * 134775813 + 1) & 0xffffffff
        keys[2] = crc_byte(keys[2], keys[1] >> 24)

    def stream_byte():
        t = (keys[2] | 2) & 0xffff
        return ((t * (t ^ 1)) >> 8) & 0xff

    for b in password:
        update(b)
    crc = zlib.crc32(plain) & 0xffffffff
    header = bytes(os.urandom(11)) + bytes([crc >> 24])
    out = bytearray()
    for b in header + plain:
        out.append(b ^ stream_byte())
        update(b)
    fname = name.encode()
    csize, usize = len(out), len(plain)
    local = struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 1, 0, 0, 0, crc, csize, usize,
                        len(fname), 0) + fname + bytes(out)
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 1, 0, 0, 0, crc, csize,
                          usize, len(fname), 0, 0, 0, 0, 0, 0) + fname
    end = struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


def start(perimd_factory, sink, tmp_path, **params):
    """perimd with the libclamav scanner, the test database and metrics on."""
    p = {"relay_backends": "[127.0.0.1]:%d" % sink.port, "relay_domains": "example.com",
         "av_scanner": "libclamav", "clamav_database_directory": write_db(str(tmp_path / "db")),
         "av_threads": 2}
    p.update(params)
    return perimd_factory(**p)


def nothing_relayed(sink, settle=0.3):
    """The backend got no message (bounded wait for a late one)."""
    assert not sink.wait_count(1, settle), "the backend got %d messages" % sink.count()


def incomplete(p, label):
    return metrics(p).get('perimd_av_incomplete_total{limit="%s"}' % label, 0)


# Each case: the limit set low, a message whose virus lies past it, the
# reply's words and the log's label.
LIMIT_CASES = [
    ("max_recursion", {"av_max_recursion": 3}, lambda: zip_mail(nested(5, EICAR)),
     "archive recursion limit", "Heuristics.Limits.Exceeded.MaxRecursion"),
    ("max_files", {"av_max_files": 4},
     lambda: zip_mail(deflated([("f%d.txt" % i, b"filler %d\n" % i) for i in range(10)] +
                               [("eicar.com", EICAR * 3)])),
     "file count limit", "Heuristics.Limits.Exceeded.MaxFiles"),
    # A gzip member decompressing past 1 MB, EICAR at its end.
    ("max_file_size", {"av_max_file_size": "1m"},
     lambda: attachment(gzip.compress(b"\0" * 2000000 + EICAR), "data.gz", "application/gzip"),
     "file size limit", "Heuristics.Limits.Exceeded.MaxFileSize"),
    # Members adding up past 1 MB, EICAR last.
    ("max_scan_size", {"av_max_scan_size": "1m"},
     lambda: zip_mail(deflated([("f%d.bin" % i, b"\0" * 600000) for i in range(3)] +
                               [("eicar.com", EICAR * 3)])),
     "scan size limit", "Heuristics.Limits.Exceeded.MaxScanSize"),
    # 1 ms against decompressing 20 MB in 200 members (each member checks
    # the clock): tens of milliseconds here, a margin of well over 10x.
    ("max_scan_time", {"av_max_scan_time": "1ms"},
     lambda: zip_mail(deflated([("f%03d.bin" % i, b"\0" * 100000) for i in range(200)] +
                               [("eicar.com", EICAR * 3)])),
     "scan time limit", "Heuristics.Limits.Exceeded.MaxScanTime"),
]


@pytest.mark.parametrize("label,params,body,what,name", LIMIT_CASES,
                         ids=[c[0] for c in LIMIT_CASES])
def test_limit_not_clean(perimd_factory, sink, tmp_path, label, params, body, what, name):
    """Past each limit: 554 5.7.0 naming the limit, nothing relayed, the
    limit logged and counted; the session goes on and clean mail passes."""
    p = start(perimd_factory, sink, tmp_path, **params)
    # With a 1 ms scan time even the clean message stops at the limit.
    clean_passes = label != "max_scan_time"
    with session(p.port) as c:
        expect(send(c, body()), 554, "5.7.0", r" message not fully scanned: %s$" % what)
        expect(c.cmd("RSET"), 250)
        if clean_passes:
            expect(send(c, CLEAN), 250)
    p.wait_log(r"av: not fully scanned: limit=%s \(%s\), scan=.*av_oversize_action=reject"
               % (label, re.escape(name)))
    if clean_passes:
        assert sink.wait_count(1, 10)
        msgs = sink.messages()
        assert len(msgs) == 1 and b"nothing to see here" in msgs[0], msgs
    else:
        nothing_relayed(sink)
    assert incomplete(p, label) == 1
    assert incomplete(p, "other") == 0
    # Counted as its own refusal reason, not as a virus or "policy".
    m = metrics(p)
    assert m['perimd_messages_rejected_total{reason="not_fully_scanned"}'] == 1
    assert m['perimd_messages_rejected_total{reason="virus"}'] == 0
    assert m['perimd_messages_rejected_total{reason="policy"}'] == 0


def test_within_limits(perimd_factory, sink, tmp_path):
    """The same low limits, each case just within them: the virus is found
    (554 5.7.1) and clean archives pass (250, relayed byte for byte)."""
    p = start(perimd_factory, sink, tmp_path, av_max_recursion=3, av_max_files=20,
              av_max_file_size="1m", av_max_scan_size="2m", av_max_scan_time="20s")
    clean_zip = zip_mail(deflated([("readme.txt", b"just text\n" * 50)]))
    clean_nested = zip_mail(nested(1, b"harmless\n" * 10))
    with session(p.port) as c:
        expect(send(c, zip_mail(nested(1, EICAR))), 554, "5.7.1", SIG_EICAR)
        expect(send(c, zip_mail(deflated([("f%d.txt" % i, b"filler %d\n" % i) for i in range(10)] +
                                         [("eicar.com", EICAR * 3)]))), 554, "5.7.1", SIG_EICAR)
        expect(send(c, attachment(gzip.compress(b"\0" * 500000 + EICAR), "d.gz",
                                  "application/gzip")), 554, "5.7.1", SIG_EICAR)
        expect(send(c, clean_zip), 250)
        expect(send(c, clean_nested), 250)
        expect(send(c, CLEAN), 250)
    assert sink.wait_count(3, 10)
    nothing_more = not sink.wait_count(4, 0.3)
    assert nothing_more and sink.count() == 3
    assert "not fully scanned" not in p.log_text()


def test_virus_beside_limit(perimd_factory, sink, tmp_path):
    """A message past a limit that also holds a virus libclamav did find:
    the virus is what the client hears (a limit does not hide a find)."""
    p = start(perimd_factory, sink, tmp_path, av_max_recursion=3)
    both = (b"Subject: both\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n" +
            zip_mail(nested(5, b"harmless\n")) + b"\r\n--outer\r\n" +
            zip_mail(nested(1, EICAR), "plain.zip") + b"\r\n--outer--\r\n")
    with session(p.port) as c:
        expect(send(c, both), 554, "5.7.1", SIG_EICAR)
    nothing_relayed(sink)


def test_limit_names(perimd_factory, sink, tmp_path):
    """Any "Heuristics.Limits.Exceeded." name is a limit, never a virus:
    libclamav's mail parser names (Email...) are the mail structure limit,
    names perimd does not know are "scanner limit" (counted as other).
    Built with signatures so named (a hostile clamd could answer the same)."""
    a, b = b"perimd-limit-name-" + b"a1b2c3", b"perimd-limit-name-" + b"d4e5f6"
    db = write_db(str(tmp_path / "db2"), [("Heuristics.Limits.Exceeded.EmailHeaders", a),
                                          ("Heuristics.Limits.Exceeded.SomethingNew", b)])
    p = start(perimd_factory, sink, tmp_path, clamav_database_directory=db)
    with session(p.port) as c:
        expect(send(c, b"Subject: a\r\n\r\n" + a + b"\r\n"), 554, "5.7.0",
               r" message not fully scanned: mail structure limit$")
        expect(send(c, b"Subject: b\r\n\r\n" + b + b"\r\n"), 554, "5.7.0",
               r" message not fully scanned: scanner limit$")
    nothing_relayed(sink)
    assert incomplete(p, "email") == 1 and incomplete(p, "other") == 1
    m = metrics(p)
    assert not [k for k in m if k.startswith("perimd_viruses_total{")], m


def test_message_over_file_size(perimd_factory, sink, tmp_path):
    """A message larger than av_max_file_size (but under av_max_size):
    libclamav 1.4 answers it "virus" with no name; it is a file size limit,
    not a virus called unknown."""
    p = start(perimd_factory, sink, tmp_path, av_max_file_size="1m")
    big = b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20000 + EICAR + b"\r\n"
    with session(p.port) as c:
        expect(send(c, big), 554, "5.7.0", r" message not fully scanned: file size limit$")
    nothing_relayed(sink)
    assert incomplete(p, "max_file_size") == 1


@pytest.mark.parametrize("action,code,enh", [("tempfail", 451, "4.7.0"), ("accept", 250, None)])
def test_limit_follows_oversize_action(perimd_factory, sink, tmp_path, action, code, enh):
    """av_oversize_action decides: tempfail 451 4.7.0 (nothing relayed),
    accept relays it, logged as not fully scanned."""
    p = start(perimd_factory, sink, tmp_path, av_max_recursion=3, av_oversize_action=action)
    with session(p.port) as c:
        r = send(c, zip_mail(nested(5, EICAR)))
        expect(r, code, enh)
        if action == "tempfail":
            expect(r, code, enh, r" message not fully scanned: archive recursion limit$")
    p.wait_log(r"av: not fully scanned: limit=max_recursion .*av_oversize_action=" + action)
    if action == "accept":
        assert sink.wait_count(1, 10)
    else:
        nothing_relayed(sink)
    assert incomplete(p, "max_recursion") == 1


def test_limits_reload(perimd_factory, sink, tmp_path):
    """SIGHUP hands new limits to the scanner: a nesting that was within
    av_max_recursion is past it after the reload."""
    p = start(perimd_factory, sink, tmp_path, av_max_recursion=8)
    with session(p.port) as c:
        expect(send(c, zip_mail(nested(5, EICAR))), 554, "5.7.1", SIG_EICAR)
    with open(p.conf_path, "a") as f:
        f.write("av_max_recursion = 3\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"signatures reloaded", timeout=20)
    with session(p.port) as c:
        expect(send(c, zip_mail(nested(5, EICAR))), 554, "5.7.0", "archive recursion limit")
    nothing_relayed(sink)


@pytest.mark.parametrize("timeout,scan_time,ok", [("10s", "10s", False), ("10s", "20s", False),
                                                  ("10s", "9s", True), ("1s", "0", True)])
def test_check_scan_time_below_timeout(tmp_path, timeout, scan_time, ok):
    """perimd -t refuses av_max_scan_time not below av_timeout (the scan
    would be ended as a failure before libclamav says "not fully
    scanned"); 0 (a second below av_timeout) is always fine."""
    conf = tmp_path / "perimd.conf"
    conf.write_text("smtpd_listen = 127.0.0.1:2525\nav_scanner = libclamav\n"
                    "av_timeout = %s\nav_max_scan_time = %s\n" % (timeout, scan_time))
    r = subprocess.run([PERIMD_BIN, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    if ok:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode != 0
        assert re.search(r"av_max_scan_time \(\d+ ms\) must be below av_timeout", r.stderr), r.stderr


def encrypted_pdf():
    """A one-page PDF encrypted with the standard handler (revision 2) and a
    user password that is not empty (random /U): nothing in it is readable."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
            b"<< /Length 40 >>\nstream\n" + os.urandom(40) + b"\nendstream",
            b"<< /Filter /Standard /V 1 /R 2 /O <" + os.urandom(32).hex().encode() +
            b"> /U <" + os.urandom(32).hex().encode() + b"> /P -44 >>"]
    out, offs = b"%PDF-1.4\n", []
    for i, o in enumerate(objs):
        offs.append(len(out))
        out += b"%d 0 obj\n" % (i + 1) + o + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offs)
    ident = os.urandom(16).hex().encode()
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 5 0 R /ID [<%s> <%s>] >>\n"
            b"startxref\n%d\n%%%%EOF\n" % (len(objs) + 1, ident, ident, xref))
    return out


@pytest.mark.parametrize("setting,zip_refused,pdf_refused",
                         [("archive", True, False), ("yes", True, True),
                          ("document", False, True), ("no", False, False)])
def test_encrypted(perimd_factory, sink, tmp_path, setting, zip_refused, pdf_refused):
    """An encrypted zip (EICAR inside, unseen) and an encrypted PDF: refused
    as unscannable as av_alert_encrypted says (archive, the default: the
    zip only), relayed otherwise."""
    params = {} if setting == "archive" else {"av_alert_encrypted": setting}
    p = start(perimd_factory, sink, tmp_path, **params)
    cases = [(zip_mail(zipcrypto("invoice.exe", EICAR), "invoice.zip"), zip_refused, "Zip"),
             (attachment(encrypted_pdf(), "statement.pdf", "application/pdf"), pdf_refused, "PDF")]
    with session(p.port) as c:
        for body, refused, kind in cases:
            r = send(c, body)
            if refused:
                expect(r, 554, "5.7.1",
                       r"encrypted content cannot be scanned: Heuristics\.Encrypted\.%s" % kind)
            else:
                expect(r, 250)
    passed = sum(1 for _, refused, _ in cases if not refused)
    if passed:
        assert sink.wait_count(passed, 10)
    assert not sink.wait_count(passed + 1, 0.3) and sink.count() == passed


def test_encrypted_default_is_archive():
    """The default, stated in perimd.conf(5): av_alert_encrypted = archive."""
    r = subprocess.run([PERIMD_BIN, "-d"], capture_output=True, text=True, timeout=30)
    assert re.search(r"^av_alert_encrypted = archive$", r.stdout, re.M), r.stdout[-2000:]


# ---- clamd ------------------------------------------------------------------


@pytest.fixture
def clamd_low(tmp_path):
    """A clamd with low limits, AlertExceedsMax and a tiny StreamMaxLength."""
    c = Clamd(tmp_path, write_db(str(tmp_path / "clamdb")))
    with open(c.conf) as f:
        text = f.read().replace("StreamMaxLength 50M\n", "")
    with open(c.conf, "w") as f:
        f.write(text + "StreamMaxLength 1M\nMaxRecursion 3\nAlertExceedsMax yes\n"
                "AlertEncryptedArchive yes\n")
    c.start()
    yield c
    c.stop()


@pytest.mark.parametrize("where", ["unix", "tcp"])
def test_clamd_limits(perimd_factory, sink, clamd_low, where):
    """Through clamd: "Heuristics.Limits.Exceeded.MaxRecursion FOUND" is
    not fully scanned (554 5.7.0), not a virus of that name; "INSTREAM
    size limit exceeded" (StreamMaxLength) is not fully scanned, not a
    failure answered 451 on every retry; an encrypted zip is refused as
    unscannable; clean mail passes and is the only message relayed."""
    target = "clamd:" + (clamd_low.sock if where == "unix" else "127.0.0.1:%d" % clamd_low.port)
    p = perimd_factory(relay_backends="[127.0.0.1]:%d" % sink.port, av_scanner=target)
    big = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 2000 + EICAR + b"\r\n"
    with session(p.port) as c:
        expect(send(c, zip_mail(nested(5, EICAR))), 554, "5.7.0",
               r" message not fully scanned: archive recursion limit$")
        expect(send(c, big), 554, "5.7.0", r" message not fully scanned: clamd stream size limit$")
        expect(send(c, zip_mail(zipcrypto("invoice.exe", EICAR), "invoice.zip")), 554, "5.7.1",
               r"encrypted content cannot be scanned")
        expect(send(c, zip_mail(nested(1, EICAR))), 554, "5.7.1", SIG_EICAR)
        expect(send(c, CLEAN), 250)
    assert sink.wait_count(1, 10)
    assert not sink.wait_count(2, 0.3) and sink.count() == 1
    log = p.log_text()
    assert re.search(r"not fully scanned: limit=max_recursion "
                     r"\(Heuristics\.Limits\.Exceeded\.MaxRecursion\)", log), log[-3000:]
    assert re.search(r"not fully scanned: limit=stream_max_length", log), log[-3000:]
    assert "scan failed" not in log
    m = metrics(p)
    assert m['perimd_av_incomplete_total{limit="max_recursion"}'] == 1
    assert m['perimd_av_incomplete_total{limit="stream_max_length"}'] == 1
    assert 'perimd_viruses_total{name="Heuristics.Limits.Exceeded.MaxRecursion"}' not in m
