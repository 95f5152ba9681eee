"""test_verify_cache.py - the recipient verdict cache against a hostile
backend (issue 13, items 1 and 3): a backend that refuses at RCPT for
reasons about the SENDER (550 5.7.1 for one sender, 550 5.1.8 for an
unknown sender domain, as Postfix's smtpd_delay_reject does), refuses
unknown mailboxes (550 5.1.1), answers 452 4.2.2 for one mailbox every
time, 452 4.5.3 past two recipients and 450 4.7.1 (its own greylisting) for
another, and refuses callouts' null sender for one mailbox.

What must hold (README "When a backend refuses a recipient",
perimd.conf(5) relay_verify_*): one sender's refusal closes no mailbox,
role accounts included, for anyone else; cached replies never repeat the
backend's text (the attacker's address); mailbox codes are answered at RCPT
to every sender but role accounts; a 4xx for one recipient no longer holds
back its co-recipients: they are delivered once on the retry; callouts
report only mailbox codes as unknown recipients.
"""

import os
import socketserver
import subprocess
import sys
import threading

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import PERIMD_BIN, Client, expect, free_port, known_params  # noqa: E402

GOOD = "good@client.test"
OTHER = "other@client.test"
EVIL = "evil@attacker.test"
NODOMAIN = "someone@nodomain.test"
BODY = b"Subject: verify cache\r\n\r\nhello\r\n"


class HostileBackend:
    """An SMTP server on 127.0.0.1 refusing at RCPT by sender and by
    recipient (see rcpt_reply). Records accepted messages and every RCPT."""

    def __init__(self):
        self.refuse_null_sender = False   # 550 5.7.1 to MAIL FROM:<>
        self.messages = []     # (sender, [rcpts])
        self.rcpts = []        # (sender, rcpt, reply code) of every RCPT
        self.lock = threading.Lock()
        backend = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                backend.session(self.rfile, self.wfile)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.target = "[127.0.0.1]:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def rcpt_reply(sender, rcpt, n):
        """The reply to RCPT rcpt (n-th of the transaction) from sender."""
        local = rcpt.split("@")[0].lower()
        if sender.endswith("@attacker.test"):
            # Names the attacker and a third party, as real texts do.
            return ("550 5.7.1 <%s>: Sender address rejected: Access denied "
                    "(complaint by victim@third.test)" % sender)
        if sender.endswith("@nodomain.test"):
            return "550 5.1.8 <%s>: Sender address rejected: Domain not found" % sender
        if sender.endswith("@partner.test") and local == "ceo":
            # Exchange-style per-recipient sender restriction.
            return ("550 5.7.1 <%s>: %s is not authorized to send to this recipient"
                    % (rcpt, sender))
        if sender == "" and local == "guarded":
            return "550 5.7.1 <>: null sender not accepted for this list"
        if sender == "" and local == "callgrey":
            return "450 4.7.1 <>: greylisted, try later"
        if sender == "" and local == "sdomain":
            return "550 5.1.8 <>: sender address rejected"
        if rcpt.split("@")[0] == "CEO":
            # Case-sensitive local parts (RFC 5321 §2.4): only ceo@ exists.
            return "550 5.1.1 <%s>: User unknown" % rcpt
        if local.startswith("unknown") or local == "webmaster":
            return ("550 5.1.1 <%s>: Recipient address rejected: User unknown in "
                    "virtual mailbox table (asked by %s)" % (rcpt, sender or "<>"))
        if local == "full":
            return "452 4.2.2 <%s>: Mailbox full (message from %s)" % (rcpt, sender)
        if local == "grey":
            return "450 4.7.1 <%s>: greylisted, sender %s" % (rcpt, sender)
        if local.startswith("many") and n > 2:
            return "452 4.5.3 Error: too many recipients"
        return "250 2.1.5 Ok"

    def session(self, rf, wf):
        def out(s):
            wf.write(s.encode() + b"\r\n")
            wf.flush()

        out("220 hostile.test ESMTP")
        sender, rcpts, n = None, [], 0
        while True:
            line = rf.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                out("250-hostile.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                    "250-ENHANCEDSTATUSCODES\r\n250 SIZE 100000000")
            elif verb == "MAIL":
                # smtpd_delay_reject: MAIL always passes, refusals come at RCPT.
                sender = cmd[cmd.index("<") + 1:cmd.index(">")]
                rcpts, n = [], 0
                if sender == "" and self.refuse_null_sender:
                    sender = None
                    out("550 5.7.1 <>: null sender refused here")
                    continue
                out("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpt = cmd[cmd.index("<") + 1:cmd.index(">")]
                n += 1
                reply = self.rcpt_reply(sender, rcpt, n)
                with self.lock:
                    self.rcpts.append((sender, rcpt, int(reply[:3])))
                if reply.startswith("250"):
                    rcpts.append(rcpt)
                out(reply)
            elif verb == "DATA":
                if not rcpts:
                    out("554 5.5.1 Error: no valid recipients")
                    continue
                out("354 End data with <CR><LF>.<CR><LF>")
                while True:
                    line = rf.readline()
                    if not line or line in (b".\r\n", b".\n"):
                        break
                with self.lock:
                    self.messages.append((sender, list(rcpts)))
                out("250 2.0.0 Ok: queued as Q%d" % len(self.messages))
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                out("250 2.0.0 Ok")
            elif verb == "QUIT":
                out("221 2.0.0 Bye")
                return
            else:
                out("250 2.0.0 Ok")

    def rcpt_count(self, rcpt, sender=None):
        with self.lock:
            return sum(1 for s, r, _ in self.rcpts
                       if r.lower() == rcpt.lower() and (sender is None or s == sender))

    def delivered(self):
        with self.lock:
            return list(self.messages)


@pytest.fixture
def hostile():
    b = HostileBackend()
    yield b
    b.stop()


def start(perimd_factory, backend, **params):
    base = {"relay_backends": backend.target, "relay_domains": "example.com"}
    base.update({k: v for k, v in {"greylist": "no", "reject_unknown_sender_domain": "no",
                                   "stats_listen": ""}.items() if k in known_params()})
    base.update(params)
    return perimd_factory(**base)


def attempt(port, sender, rcpts):
    """One transaction: MAIL, every RCPT, and DATA when one was accepted.
    Returns ({rcpt: (code, text)}, reply to the final dot or None)."""
    with Client(port, timeout=30) as c:
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % sender), 250)
        got = {r: c.cmd("RCPT TO:<%s>" % r) for r in rcpts}
        final = None
        if any(v[0] == 250 for v in got.values()):
            expect(c.cmd("DATA"), 354)
            c.send(BODY + b".\r\n")
            final = c.reply(30)
        c.cmd("QUIT")
        return got, final


def test_sender_refusal_closes_nothing_for_others(perimd_factory, hostile):
    """The attacker's 5.7.1 / 5.1.8 (about its sender) are kept for its
    sender only: ceo@ and postmaster@ stay open to a good sender, and the
    attacker's retry is refused at RCPT with a text naming nobody."""
    p = start(perimd_factory, hostile)
    for bad, enh in ((EVIL, "5.7.1"), (NODOMAIN, "5.1.8")):
        got, final = attempt(p.port, bad, ["ceo@example.com", "postmaster@example.com"])
        assert got["ceo@example.com"][0] == 250 and got["postmaster@example.com"][0] == 250
        # All refused: the backend's own refusal of this very transaction.
        expect(final, 550, enh)
        # The same sender's retry meets it at RCPT, role account included.
        got, final = attempt(p.port, bad, ["ceo@example.com", "postmaster@example.com",
                                           "abuse@example.com"])
        for r in ("ceo@example.com", "postmaster@example.com"):
            expect(got[r], 550, enh, r"^%s <%s>: recipient refused by the backend$" % (enh, r))
            assert "attacker" not in got[r][1] and "nodomain" not in got[r][1]
            assert "third.test" not in got[r][1] and "Sender address" not in got[r][1]
        # abuse@ was not in the first message: asked, refused by the backend.
        assert got["abuse@example.com"][0] == 250
        expect(final, 550, enh)
    assert hostile.delivered() == []
    # A good sender: every one of them open, delivered once.
    for sender in (GOOD, ""):
        got, final = attempt(p.port, sender, ["ceo@example.com", "postmaster@example.com",
                                              "abuse@example.com"])
        assert all(v[0] == 250 for v in got.values()), got
        expect(final, 250, "2.0.0")
    assert hostile.delivered() == [
        (GOOD, ["ceo@example.com", "postmaster@example.com", "abuse@example.com"]),
        ("", ["ceo@example.com", "postmaster@example.com", "abuse@example.com"])]


def test_partial_refusal_no_loop(perimd_factory, hostile):
    """A recipient refused for this sender (5.7.1) or unknown (5.1.1) while
    the backend took the others: 451 4.5.0 now, refused at RCPT on the
    retry, the others delivered once (no 451 loop); the 5.7.1 is not
    answered to another sender."""
    p = start(perimd_factory, hostile)
    partner = "boss@partner.test"
    got, final = attempt(p.port, partner, ["alice@example.com", "ceo@example.com",
                                           "unknown1@example.com"])
    expect(final, 451, "4.5.0")
    assert hostile.delivered() == []
    got, final = attempt(p.port, partner, ["alice@example.com", "ceo@example.com",
                                           "unknown1@example.com"])
    expect(got["ceo@example.com"], 550, "5.7.1",
           r"^5\.7\.1 <ceo@example\.com>: recipient refused by the backend$")
    expect(got["unknown1@example.com"], 550, "5.1.1",
           r"^5\.1\.1 <unknown1@example\.com>: recipient unknown$")
    expect(final, 250, "2.0.0")
    assert hostile.delivered() == [(partner, ["alice@example.com"])]
    # Another sender: ceo@ open, unknown1@ refused for everyone.
    got, final = attempt(p.port, GOOD, ["ceo@example.com", "unknown1@example.com"])
    assert got["ceo@example.com"][0] == 250
    expect(got["unknown1@example.com"], 550, "5.1.1")
    expect(final, 250, "2.0.0")
    assert hostile.delivered()[1] == (GOOD, ["ceo@example.com"])


def test_mailbox_code_for_every_sender(perimd_factory, hostile):
    """5.1.1 is the mailbox: answered at RCPT to every sender, with
    perimd's text (not the backend's, which names the first sender), and
    without asking the backend again."""
    p = start(perimd_factory, hostile)
    got, final = attempt(p.port, GOOD, ["alice@example.com", "Unknown2@example.com"])
    expect(final, 451, "4.5.0")
    asked = hostile.rcpt_count("unknown2@example.com")
    for sender in (OTHER, "", EVIL):
        got, final = attempt(p.port, sender, ["Unknown2@EXAMPLE.com"])
        expect(got["Unknown2@EXAMPLE.com"], 550, "5.1.1",
               r"^5\.1\.1 <Unknown2@EXAMPLE\.com>: recipient unknown$")
        assert GOOD not in got["Unknown2@EXAMPLE.com"][1]
        assert final is None
    assert hostile.rcpt_count("unknown2@example.com") == asked


def test_case_variant_closes_nothing(perimd_factory, hostile):
    """A backend with case-sensitive local parts refuses CEO@ (5.1.1) but
    has ceo@: the refusal of the variant does not close ceo@ (the cache
    folds the domain's case, not the local part's)."""
    p = start(perimd_factory, hostile)
    got, final = attempt(p.port, "x@case.test", ["CEO@example.com", "alice@example.com"])
    expect(final, 451, "4.5.0")
    got, final = attempt(p.port, OTHER, ["CEO@example.com"])
    expect(got["CEO@example.com"], 550, "5.1.1")
    got, final = attempt(p.port, GOOD, ["ceo@example.com"])
    assert got["ceo@example.com"][0] == 250, got
    expect(final, 250, "2.0.0")
    assert hostile.delivered() == [(GOOD, ["ceo@example.com"])]


def test_role_account_not_closed_by_other_sender(perimd_factory, hostile):
    """webmaster@ does not exist at the backend (5.1.1). Another sender's
    entry never refuses it: each sender learns it on its own, and each one's
    co-recipients are delivered once on its retry."""
    p = start(perimd_factory, hostile)
    for sender in (GOOD, OTHER):
        got, final = attempt(p.port, sender, ["webmaster@example.com", "alice@example.com"])
        assert got["webmaster@example.com"][0] == 250, got
        expect(final, 451, "4.5.0")
    for sender in (GOOD, OTHER):
        got, final = attempt(p.port, sender, ["webmaster@example.com", "alice@example.com"])
        expect(got["webmaster@example.com"], 550, "5.1.1",
               r"<webmaster@example\.com>: recipient unknown$")
        expect(final, 250, "2.0.0")
    # A third sender is still let through to the backend for webmaster@.
    got, final = attempt(p.port, "third@client.test", ["webmaster@example.com"])
    assert got["webmaster@example.com"][0] == 250
    expect(final, 550, "5.1.1")
    assert hostile.delivered() == [(GOOD, ["alice@example.com"]), (OTHER, ["alice@example.com"])]


def test_mailbox_full_does_not_hold_back_corecipients(perimd_factory, hostile):
    """452 4.2.2 for one mailbox every time: 451 4.5.0 once, then the
    mailbox gets 452 at RCPT (for every sender) and the co-recipients are
    delivered once."""
    p = start(perimd_factory, hostile)
    got, final = attempt(p.port, GOOD, ["alice@example.com", "full@example.com",
                                        "bob@example.com"])
    expect(final, 451, "4.5.0")
    assert hostile.delivered() == []
    got, final = attempt(p.port, GOOD, ["alice@example.com", "full@example.com",
                                        "bob@example.com"])
    expect(got["full@example.com"], 452, "4.2.2",
           r"^4\.2\.2 <full@example\.com>: mailbox full, try again later$")
    assert "message from" not in got["full@example.com"][1]
    expect(final, 250, "2.0.0")
    assert hostile.delivered() == [(GOOD, ["alice@example.com", "bob@example.com"])]
    got, final = attempt(p.port, OTHER, ["full@example.com"])
    expect(got["full@example.com"], 452, "4.2.2")
    assert GOOD not in got["full@example.com"][1]
    # The client's retry of that recipient alone: still 452 at RCPT.
    got, final = attempt(p.port, GOOD, ["full@example.com"])
    expect(got["full@example.com"], 452, "4.2.2")


def test_other_4xx_answered_once(perimd_factory, hostile):
    """A 4xx that is not about the mailbox for everyone (the backend's own
    greylisting 4.7.1, 4.5.3 too many recipients) is kept for the sender
    and answered once: the co-recipients are delivered on the retry, the
    recipient's next try goes to the backend, other senders never see it."""
    p = start(perimd_factory, hostile)
    got, final = attempt(p.port, GOOD, ["alice@example.com", "grey@example.com"])
    expect(final, 451, "4.5.0")
    got, final = attempt(p.port, OTHER, ["grey@example.com"])
    assert got["grey@example.com"][0] == 250      # not this sender's entry
    expect(final, 450, "4.7.1")                   # the backend's own answer
    got, final = attempt(p.port, GOOD, ["alice@example.com", "grey@example.com"])
    expect(got["grey@example.com"], 450, "4.7.1",
           r"^4\.7\.1 <grey@example\.com>: recipient deferred by the backend, try again later$")
    assert GOOD not in got["grey@example.com"][1]
    expect(final, 250, "2.0.0")
    asked = hostile.rcpt_count("grey@example.com", GOOD)
    got, final = attempt(p.port, GOOD, ["grey@example.com"])
    assert got["grey@example.com"][0] == 250      # answered once: asked again
    expect(final, 450, "4.7.1")
    assert hostile.rcpt_count("grey@example.com", GOOD) == asked + 1
    # 4.5.3 past two recipients: the third waits, the two go through once,
    # then the third alone goes through.
    got, final = attempt(p.port, GOOD, ["many1@example.com", "many2@example.com",
                                        "many3@example.com"])
    expect(final, 451, "4.5.0")
    got, final = attempt(p.port, GOOD, ["many1@example.com", "many2@example.com",
                                        "many3@example.com"])
    expect(got["many3@example.com"], 452, "4.5.3")
    expect(final, 250, "2.0.0")
    got, final = attempt(p.port, GOOD, ["many3@example.com"])
    expect(final, 250, "2.0.0")
    assert hostile.delivered() == [(GOOD, ["alice@example.com"]),
                                   (GOOD, ["many1@example.com", "many2@example.com"]),
                                   (GOOD, ["many3@example.com"])]


def test_callout_only_mailbox_codes_unknown(perimd_factory, hostile):
    """relay_recipient_verify: the callout asks as MAIL FROM:<>. Its 5.7.1
    and 5.1.8 are not "recipient unknown": the recipient is accepted and the
    relay with the real sender decides; 5.1.1 is unknown for every sender,
    cached; 4.2.2 is mailbox full."""
    p = start(perimd_factory, hostile, relay_recipient_verify="yes")
    for rcpt in ("guarded@example.com", "sdomain@example.com"):
        got, final = attempt(p.port, GOOD, [rcpt])
        assert got[rcpt][0] == 250, got
        assert "unknown" not in got[rcpt][1]
        expect(final, 250, "2.0.0")
        assert hostile.rcpt_count(rcpt, "") >= 1      # the callout was made
    assert hostile.delivered() == [(GOOD, ["guarded@example.com"]),
                                   (GOOD, ["sdomain@example.com"])]
    got, _ = attempt(p.port, GOOD, ["unknown3@example.com"])
    expect(got["unknown3@example.com"], 550, "5.1.1",
           r"^5\.1\.1 <unknown3@example\.com>: recipient unknown$")
    got, _ = attempt(p.port, OTHER, ["unknown3@example.com"])
    expect(got["unknown3@example.com"], 550, "5.1.1")
    assert hostile.rcpt_count("unknown3@example.com") == 1  # cached
    got, _ = attempt(p.port, GOOD, ["full@example.com"])
    expect(got["full@example.com"], 452, "4.2.2", r"mailbox full")
    assert "(message from" not in got["full@example.com"][1]
    # A callout that gets another 4xx, or whose MAIL FROM:<> is refused,
    # did not complete: 451 4.4.1, never 5xx, not cached.
    got, _ = attempt(p.port, GOOD, ["callgrey@example.com"])
    expect(got["callgrey@example.com"], 451, "4.4.1")
    hostile.refuse_null_sender = True
    got, _ = attempt(p.port, GOOD, ["newbie@example.com"])
    expect(got["newbie@example.com"], 451, "4.4.1")
    hostile.refuse_null_sender = False
    got, final = attempt(p.port, GOOD, ["newbie@example.com"])
    assert got["newbie@example.com"][0] == 250
    expect(final, 250, "2.0.0")
    # The attacker's own refusal at relay time still stays its own.
    got, final = attempt(p.port, EVIL, ["ceo@example.com"])
    expect(final, 550, "5.7.1")
    got, final = attempt(p.port, GOOD, ["ceo@example.com"])
    assert got["ceo@example.com"][0] == 250
    expect(final, 250, "2.0.0")


@pytest.mark.parametrize("param", ["relay_verify_pair_ttl", "relay_verify_defer_ttl"])
def test_lifetime_shorter_than_retry_refused(tmp_path, param):
    """perimd -t refuses a per-sender lifetime a retry could outrun (Postfix
    retries up to maximal_backoff_time = 4000 s apart); 4001s passes."""
    conf = tmp_path / "perimd.conf"
    conf.write_text("relay_domains = example.com\nrelay_backends = [127.0.0.1]:25\n"
                    "%s = 4000s\n" % param)
    r = subprocess.run([PERIMD_BIN, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and param in r.stdout + r.stderr, r
    conf.write_text("relay_domains = example.com\nrelay_backends = [127.0.0.1]:25\n"
                    "%s = 4001s\n" % param)
    r = subprocess.run([PERIMD_BIN, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r
