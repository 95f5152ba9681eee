#!/usr/bin/python3
"""bench_latency.py - client-side SMTP latency on loopback (tests/bench.sh latency).

Opens SESSIONS concurrent SMTP sessions to HOST:PORT (asyncio, standard
library only) and sends MSGS messages of SIZE body bytes in all, each
session taking the next message as soon as its previous one got its final
reply. Per session: greeting, EHLO once, then MAIL, RCPT, DATA, body, "."
for each message (no PIPELINING, no RSET after a 2xx; RSET after a refused
MAIL or RCPT). With -1, one message per connection (connect, greeting, EHLO,
message, QUIT) instead.

Measured per message, in milliseconds:
  dot   from handing the final ".\\r\\n" to the kernel (the body before it is
        already written) to reading the complete final reply
  txn   from sending MAIL to reading the final reply (whole transaction)
Messages with any non-2xx/3xx-as-expected reply (or a dropped connection)
count as errors and are not in the latency figures.

Options are a subset of smtp-source's, so the script can stand in for it
(tests/bench.sh latency puts it first in PATH as "smtp-source" for
../shared/bench/peer-bench.sh):
  -s SESSIONS (1)  -m MSGS (100)  -l SIZE (body bytes, headers not counted,
  before dot-stuffing; 512)  -f FROM  -t TO  -M HELO-NAME  -1 (one message
  per connection; default: connections are reused, as an MTA does)
  --timeout SECONDS (per reply, 120)  HOST:PORT (host defaults to 127.0.0.1)
  --rate R: at most R messages per second in all: message i (in the order
  the sessions take them) starts no earlier than i / R seconds after the
  first, so systems of different speed are compared at the same offered
  load (without it each session sends as fast as it is answered, and a
  faster system carries more load; the latencies are taken from MAIL or
  the dot, the wait for a start time is in neither)
  -K KIND: the body: "text" (default: 80-byte text lines, one part, no
  MIME) or "mime" (what mail more often is: multipart/mixed with a short
  text/plain and text/html alternative and a base64 attachment of
  pseudo-random bytes filling the rest of SIZE)
  -u: every message unique: a 12-digit serial replaces a placeholder in the
  body (in the text, or inside the attachment's base64, so its decoded bytes
  differ too), counted from a random start so that separate runs differ
  too; without it every message has the same body, which a
  scanner's cache of clean results may recognise
  --rcpt-from=K: TO holds "%d", and message i (0, 1, ... in the order the
  sessions take them) goes to TO with K + i in its place, so every message
  has a recipient of its own (tests/bench.sh ldap: no cache hits)
smtp-source's other options (-c -d -N -o -v -4 -6, -C -L -r -R -S -T -w with
their argument) are accepted and ignored.

Output: one line on stdout,
  latency sessions=.. size=.. msgs=.. ok=.. errors=.. conn=reuse|single
  elapsed_s=.. mps=.. dot_p50_ms dot_p90_ms dot_p99_ms dot_max_ms
  txn_p50_ms txn_p90_ms txn_p99_ms txn_max_ms [first_error=..]
(percentiles: nearest rank over the messages that got 250). Exit status 1
when any message failed, 2 on usage errors.
"""
import asyncio
import base64
import getopt
import math
import random
import sys
import time

SERIAL = b"000000000000"   # -u: replaced by each message's serial


def build_body(size, sender, rcpt):
    """Headers plus `size` body bytes (before stuffing), dot-stuffed, with CRLF
    line ends, lines of at most 80 bytes (some starting with "." so that
    stuffing is exercised), ending in CRLF (the final dot is sent apart)."""
    hdr = ("From: <%s>\r\nTo: <%s>\r\nSubject: bench_latency\r\n"
           "Message-ID: <bench-latency@client.bench.test>\r\n\r\n" % (sender, rcpt)).encode()
    lines = []
    left, n = size, 0
    while left > 0:
        width = min(78, left - 2) if left >= 3 else 0
        if width <= 0:
            lines.append(b"\r\n")          # 1-2 bytes left: one short (empty) line
            left -= 2
            continue
        fill = b"0123456789abcdefghijklmnopqrstuvwxyz" * 4
        line = fill[n % 36:n % 36 + width]
        if n % 10 == 3:
            line = b"." + line[1:]          # stuffed on the wire
        lines.append(line + b"\r\n")
        left -= width + 2
        n += 1
    body = b"".join(b"." + l if l.startswith(b".") else l for l in lines)
    return hdr + body


def build_mime(size, sender, rcpt):
    """Headers plus a multipart/mixed body of about `size` bytes: a text and
    HTML alternative, then a base64 attachment (pseudo-random bytes, fixed
    seed) filling the rest; CRLF line ends, base64 lines of 76 characters,
    SERIAL once near the attachment's start (12 valid base64 digits)."""
    hdr = ("From: <%s>\r\nTo: <%s>\r\nSubject: bench_latency\r\n"
           "Message-ID: <bench-latency@client.bench.test>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=\"=b1\"\r\n\r\n" % (sender, rcpt)).encode()
    text = b"Hello,\r\n\r\nplease find the quarterly report attached.\r\n\r\nRegards,\r\nBench\r\n"
    html = (b"<html><body><p>Hello,</p><p>please find the quarterly report attached.</p>"
            b"<p>Regards,<br>Bench</p></body></html>\r\n")
    head = (b"--=b1\r\nContent-Type: multipart/alternative; boundary=\"=b2\"\r\n\r\n"
            b"--=b2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + text +
            b"--=b2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html + b"--=b2--\r\n"
            b"--=b1\r\nContent-Type: application/octet-stream; name=\"report.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=\"report.bin\"\r\n\r\n")
    tail = b"--=b1--\r\n"
    room = max(0, size - len(head) - len(tail))
    nraw = max(12, room * 57 // 78)       # 76 characters + CRLF per 57 bytes
    rnd = random.Random(1)
    b64 = base64.encodebytes(bytes(rnd.getrandbits(8) for _ in range(nraw)))
    b64 = b64.replace(b"\n", b"\r\n")
    b64 = b64[:4] + SERIAL + b64[16:]
    return hdr + head + b64 + tail


def build_text(size, sender, rcpt):
    """build_body, with SERIAL at the start of its last 80-byte line."""
    body = build_body(size, sender, rcpt)
    cut = body.rfind(b"\r\n", 0, len(body) - 2) + 2
    if len(body) - cut >= len(SERIAL) + 2 and body[cut:cut + 1] != b".":
        body = body[:cut] + SERIAL + body[cut + len(SERIAL):]
    return body


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, math.ceil(p / 100.0 * len(sorted_vals)) - 1)
    return sorted_vals[k]


class Bench:
    def __init__(self, host, port, sessions, msgs, size, sender, rcpt, helo, single, timeout,
                 kind="text", unique=False):
        self.host, self.port = host, port
        self.sessions, self.msgs = sessions, msgs
        self.sender, self.rcpt, self.helo = sender, rcpt, helo
        self.single, self.timeout = single, timeout
        self.size = size
        if kind == "mime":
            self.body = build_mime(size, sender, rcpt)
        elif unique:
            self.body = build_text(size, sender, rcpt)
        else:
            self.body = build_body(size, sender, rcpt)
        # -u: serials start at a random point, so that two runs (a warm-up
        # and the run, or two cells against the same scanner) never send
        # the same message: a cache of clean results would recognise it.
        self.unique = unique
        self.serial = random.SystemRandom().randrange(10 ** 11) if unique else 0
        self.next = 0
        self.rate, self.t_first = None, None  # --rate: start times i / rate
        self.rcpt_from = None  # set: self.rcpt is a "%d" template
        self.dot, self.txn = [], []
        self.errors = 0
        self.first_error = None

    def take(self):
        """The next message's recipient, or None when all are taken."""
        if self.next >= self.msgs:
            return None
        self.next += 1
        if self.rcpt_from is None:
            return self.rcpt
        return self.rcpt % (self.rcpt_from + self.next - 1)

    def fail(self, what):
        self.errors += 1
        if self.first_error is None:
            self.first_error = what

    async def reply(self, r):
        line = await asyncio.wait_for(r.readline(), self.timeout)
        code = line[:3]
        while line[3:4] == b"-":
            line = await asyncio.wait_for(r.readline(), self.timeout)
        if not line.endswith(b"\n"):
            raise ConnectionError("connection closed")
        return code, line

    async def connect(self):
        r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        # drain() returns only when everything is with the kernel, so the time
        # taken just before the dot is written is when the dot leaves.
        w.transport.set_write_buffer_limits(0)
        code, line = await self.reply(r)
        if code != b"220":
            raise ConnectionError("greeting: " + line.decode("latin-1").strip())
        w.write(b"EHLO " + self.helo.encode() + b"\r\n")
        code, line = await self.reply(r)
        if code != b"250":
            raise ConnectionError("EHLO: " + line.decode("latin-1").strip())
        return r, w

    async def message(self, r, w, rcpt):
        """One transaction; True when the final reply was 250."""
        now = time.perf_counter
        t0 = now()
        w.write(b"MAIL FROM:<" + self.sender.encode() + b">\r\n")
        code, line = await self.reply(r)
        if code[:1] != b"2":
            self.fail("MAIL: " + line.decode("latin-1").strip())
            w.write(b"RSET\r\n")
            await self.reply(r)
            return False
        w.write(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
        code, line = await self.reply(r)
        if code[:1] != b"2":
            self.fail("RCPT: " + line.decode("latin-1").strip())
            w.write(b"RSET\r\n")
            await self.reply(r)
            return False
        w.write(b"DATA\r\n")
        code, line = await self.reply(r)
        if code != b"354":
            self.fail("DATA: " + line.decode("latin-1").strip())
            w.write(b"RSET\r\n")
            await self.reply(r)
            return False
        body = self.body
        if self.unique:
            self.serial += 1
            body = body.replace(SERIAL, b"%012d" % self.serial, 1)
        w.write(body)
        await w.drain()
        t1 = now()
        w.write(b".\r\n")
        code, line = await self.reply(r)
        t2 = now()
        if code[:1] != b"2":
            self.fail("dot: " + line.decode("latin-1").strip())
            return False
        self.dot.append(t2 - t1)
        self.txn.append(t2 - t0)
        return True

    async def close(self, r, w, quit=True):
        try:
            if quit:
                w.write(b"QUIT\r\n")
                await asyncio.wait_for(self.reply(r), 5)
        except (OSError, ConnectionError, asyncio.TimeoutError):
            pass
        w.close()
        try:
            await w.wait_closed()
        except (OSError, ConnectionError):
            pass

    async def session(self):
        conn = None
        while True:
            rcpt = self.take()
            if rcpt is None:
                break
            if self.rate:
                if self.t_first is None:
                    self.t_first = time.perf_counter()
                wait = self.t_first + (self.next - 1) / self.rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            counted = self.errors
            try:
                if conn is None:
                    conn = await self.connect()
                await self.message(*conn, rcpt)
                if self.single:
                    await self.close(*conn)
                    conn = None
            except (OSError, ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                # The message in flight is lost (counted once, also when the
                # connection broke on the RSET after a refusal); the next one
                # gets a new connection.
                if self.errors == counted:
                    self.fail("%s: %s" % (type(e).__name__, e))
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            await self.close(*conn)

    async def run(self):
        t0 = time.perf_counter()
        await asyncio.gather(*(self.session() for _ in range(self.sessions)))
        return time.perf_counter() - t0


def main(argv):
    try:
        opts, args = getopt.getopt(argv, "146cdNovus:m:l:f:t:M:C:L:r:R:S:T:w:K:",
                                   ["single", "timeout=", "rcpt-from=", "rate="])
    except getopt.GetoptError as e:
        sys.stderr.write("bench_latency: %s\n" % e)
        return 2
    o = dict(opts)
    if len(args) != 1:
        sys.stderr.write("usage: bench_latency.py [-1] [-s sessions] [-m msgs] [-l size] "
                         "[-f from] [-t to] [-M helo] [-K text|mime] [-u] [--timeout s] host:port\n")
        return 2
    host, _, port = args[0].rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host.startswith("inet:"):
        host = host[5:]
    sessions, msgs = int(o.get("-s", 1)), int(o.get("-m", 100))
    size = int(o.get("-l", 512))
    if o.get("-K", "text") not in ("text", "mime"):
        sys.stderr.write("bench_latency: -K takes text or mime\n")
        return 2
    b = Bench(host, int(port), max(1, min(sessions, msgs)), msgs, size,
              o.get("-f", "bench@client.bench.test"), o.get("-t", "rcpt@bench.test"),
              o.get("-M", "client.bench.test"), "-1" in o or "--single" in o,
              float(o.get("--timeout", 120)), o.get("-K", "text"), "-u" in o)
    if "--rcpt-from" in o:
        b.rcpt_from = int(o["--rcpt-from"])
    if "--rate" in o:
        b.rate = float(o["--rate"])
    elapsed = asyncio.run(b.run())
    ok = len(b.dot)
    out = ["latency", "sessions=%d" % sessions, "rate=%s" % (o.get("--rate") or "max"), "size=%d" % size, "msgs=%d" % msgs,
           "ok=%d" % ok, "errors=%d" % b.errors, "conn=%s" % ("single" if b.single else "reuse"),
           "elapsed_s=%.3f" % elapsed, "mps=%.1f" % (ok / elapsed if elapsed > 0 else 0)]
    for name, vals in (("dot", b.dot), ("txn", b.txn)):
        vals.sort()
        for p in (50, 90, 99):
            out.append("%s_p%d_ms=%.2f" % (name, p, pct(vals, p) * 1000))
        out.append("%s_max_ms=%.2f" % (name, (vals[-1] if vals else float("nan")) * 1000))
    if b.first_error:
        out.append("first_error=%s" % b.first_error.replace(" ", "_"))
    print(" ".join(out), flush=True)
    return 1 if b.errors or ok != msgs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
