#!/usr/bin/python3
"""hostile_backend.py - an SMTP backend that misbehaves on purpose, for
test_relay_hostile.py (issue 13: capabilities, reply classes, log names,
addresses in replies, long lines).

In-process, one thread per connection:
    b = HostileBackend(ehlo_filler=400, caps=["8BITMIME"]).start()
    ... b.target ("127.0.0.1:PORT"), b.messages, b.commands, b.raw ...
    b.stop()

Settings (attributes, changeable while it runs):
  caps         EHLO keywords after the greeting line (default PIPELINING,
               8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES)
  ehlo_filler  that many "X-FILLER-nnnn ..." keywords before caps (a reply
               of several KB)
  reply        {stage: "CODE text"} overriding the normal reply at stage
               greeting ehlo helo mail rcpt data eod rset; "\\n" separates
               the lines of a multi-line reply; a list is used one item per
               command (the last repeats)
  stall        stages where it never replies (it keeps reading until the
               peer closes)
  die_at_bdat  n: close the connection (no reply) on receiving its n-th
               BDAT chunk (test_scan_overlap: a backend dying mid-chunks)
  die_in_data  n: close the connection once n octets of a DATA body are in,
               before its final dot (test_relay_stream)
  die_in_bdat  n: close the connection once n octets of BDAT chunks are in
               on it, in the middle of a chunk (test_relay_stream_edge)
  delay        {stage: seconds}: wait that long before answering a stage
               (rcpt, bdat, eod ...): a slow backend
  read_pause   (octets, seconds): once a connection has received that many
               octets, stop reading from it for that long (TCP
               backpressure; with rcvbuf, the sender's writes block)
  rcvbuf       SO_RCVBUF of the listening socket (so of every connection),
               small to make read_pause felt at once (constructor only)
CHUNKING (RFC 3030): offered when "CHUNKING" is in caps (BDAT is answered
502 otherwise). Each `BDAT n` reads exactly n octets; stage "bdat" answers
a chunk, stage "eod" the one with LAST, which completes the transaction.
Recorded: raw (every byte received, per connection), commands (command
lines, all connections), messages (dicts: mail, rcpts, wire = the DATA
bytes exactly as received, dot-stuffing and all, up to the final dot;
data = the same unstuffed; via = "DATA" or "BDAT"; chunks = BDAT chunk
sizes), aborted (transactions that never completed, each a dict: mail,
rcpts, chunks, data = the chunks' bytes or the DATA bytes received, via =
"DATA" once DATA was answered 354, else None, how = "RSET", "QUIT",
"MAIL", "EOF" or "refused"), connections.
"""

import socket
import time

from listener import Listener

DEFAULT_CAPS = ["PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]


class HostileBackend(Listener):
    def __init__(self, caps=None, ehlo_filler=0, reply=None, stall=(), rcvbuf=None):
        self.caps = list(DEFAULT_CAPS if caps is None else caps)
        self.ehlo_filler = ehlo_filler
        self.reply = dict(reply or {})
        self.stall = set(stall)
        self.raw = []
        self.commands = []
        self.messages = []
        self.aborted = []
        self.die_at_bdat = None
        self.die_in_data = None
        self.die_in_bdat = None
        self.delay = {}
        self.read_pause = None
        self._counts = {}
        Listener.__init__(self, backlog=64)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.target = "127.0.0.1:%d" % self.port

    # -- life: Listener's start() and stop() ------------------------------
    def serve(self, conn, no):
        self._session(conn)

    # -- helpers ---------------------------------------------------------
    def commands_of(self, verb):
        with self.lock:
            return [c for c in self.commands if c.upper().startswith(verb)]

    def _answer(self, stage, default):
        """The reply text for a stage: an override (one per command when a
        list), else the default."""
        v = self.reply.get(stage, default)
        if isinstance(v, list):
            with self.lock:
                i = self._counts.get(stage, 0)
                self._counts[stage] = i + 1
            v = v[min(i, len(v) - 1)]
        return v

    def _ehlo_text(self):
        lines = ["250 hostile.test greets you"]
        lines += ["250 X-FILLER-%04d some-parameter=%d" % (i, i) for i in range(self.ehlo_filler)]
        lines += ["250 " + c for c in self.caps]
        return "\n".join(lines)

    class _Conn:
        def __init__(self, sock, raw, pause=None):
            self.sock = sock
            self.buf = b""
            self.raw = raw
            self.pause = pause  # (octets, seconds), once
            self.got = 0

        def read(self):
            if self.pause and self.got >= self.pause[0]:
                time.sleep(self.pause[1])
                self.pause = None
            d = self.sock.recv(65536 if not self.pause else max(1, min(65536, self.pause[0] - self.got)))
            self.got += len(d)
            if not d:
                raise EOFError
            self.raw.append(d)
            self.buf += d

        def line(self):
            while b"\r\n" not in self.buf:
                self.read()
            ln, self.buf = self.buf.split(b"\r\n", 1)
            return ln

        def data(self):
            """Bytes up to and including CRLF . CRLF (the wire form)."""
            while True:
                i = (b"\r\n" + self.buf).find(b"\r\n.\r\n")
                if i >= 0:
                    end = i + 3  # in buf: through ".\r\n"
                    d, self.buf = self.buf[:end], self.buf[end:]
                    return d
                self.read()

        def exact(self, n):
            """n octets (a BDAT chunk), whatever they hold."""
            while len(self.buf) < n:
                self.read()
            d, self.buf = self.buf[:n], self.buf[n:]
            return d

        def send(self, text):
            out = b""
            lines = text.split("\n")
            for i, ln in enumerate(lines):
                sep = "-" if i + 1 < len(lines) else " "
                out += ("%s%s%s\r\n" % (ln[:3], sep, ln[4:])).encode()
            self.sock.sendall(out)

    def _say(self, conn, stage, default):
        if stage in self.delay:
            time.sleep(self.delay[stage])
        if stage in self.stall:
            while True:
                conn.read()
        conn.send(self._answer(stage, default))

    def _abort(self, tx, how):
        """Record an unfinished transaction (it had a MAIL)."""
        if tx["mail"] is not None:
            with self.lock:
                self.aborted.append({"mail": tx["mail"], "rcpts": tx["rcpts"], "chunks": tx["chunks"],
                                     "data": tx["data"], "how": how, "via": tx.get("via")})
        tx.update(mail=None, rcpts=[], chunks=[], data=b"", via=None)

    def _bdat(self, conn, tx, ln, nbdat):
        """One BDAT command (RFC 3030 §2): its chunk read whole; LAST
        completes the message. Returns False to close the connection."""
        args = ln.split()
        n = int(args[1]) if len(args) > 1 and args[1].isdigit() else -1
        last = len(args) > 2 and args[2].upper() == "LAST"
        if n < 0:
            conn.send("501 5.5.4 Syntax: BDAT size [LAST]")
            return True
        if self.die_in_bdat is not None:
            seen = sum(tx["chunks"])
            if seen + n > self.die_in_bdat:
                tx["data"] += conn.exact(max(0, self.die_in_bdat - seen))
                return False
        chunk = conn.exact(n)
        if self.die_at_bdat is not None and nbdat >= self.die_at_bdat:
            return False
        if "CHUNKING" not in self.caps or tx["mail"] is None or not tx["rcpts"]:
            conn.send("503 5.5.1 Error: BDAT out of sequence")
            return True
        tx["chunks"].append(n)
        tx["data"] += chunk
        if not last:
            ans = self._answer("bdat", "250 2.0.0 %d octets received" % n)
            if "bdat" in self.delay:
                time.sleep(self.delay["bdat"])
            if "bdat" in self.stall:
                self._say(conn, "bdat", ans)
            conn.send(ans)
            if not ans.startswith("2"):
                self._abort(tx, "refused")
            return True
        ans = self._answer("eod", None)
        if "eod" in self.delay:
            time.sleep(self.delay["eod"])
        if "eod" in self.stall:
            self._say(conn, "eod", "")  # reads until the peer closes
        if ans is not None and not ans.startswith("2"):
            conn.send(ans)
            self._abort(tx, "refused")
            return True
        with self.lock:
            self.messages.append({"mail": tx["mail"], "rcpts": tx["rcpts"], "wire": tx["data"],
                                  "data": tx["data"], "via": "BDAT", "chunks": tx["chunks"]})
            n_msgs = len(self.messages)
        tx.update(mail=None, rcpts=[], chunks=[], data=b"")
        conn.send(ans or "250 2.0.0 Ok: queued as H%d" % n_msgs)
        return True

    def _session(self, sock):
        raw = []
        with self.lock:
            self.raw.append(raw)
        conn = self._Conn(sock, raw, self.read_pause)
        tx = {"mail": None, "rcpts": [], "chunks": [], "data": b""}
        nbdat = 0
        how = "EOF"
        try:
            self._say(conn, "greeting", "220 hostile.test ESMTP")
            while not self.stopping.is_set():
                ln = conn.line().decode("utf-8", "replace")
                with self.lock:
                    self.commands.append(ln)
                verb = ln.split(" ", 1)[0].split(":", 1)[0].upper()
                if verb == "EHLO":
                    self._say(conn, "ehlo", self._ehlo_text())
                elif verb == "HELO":
                    self._say(conn, "helo", "250 hostile.test")
                elif verb == "MAIL":
                    self._abort(tx, "MAIL")
                    tx["mail"] = ln
                    self._say(conn, "mail", "250 2.1.0 Ok")
                elif verb == "RCPT":
                    tx["rcpts"].append(ln)
                    self._say(conn, "rcpt", "250 2.1.5 Ok")
                elif verb == "BDAT":
                    nbdat += 1
                    if not self._bdat(conn, tx, ln, nbdat):
                        return
                elif verb == "DATA":
                    ans = self._answer("data", "354 End data with <CR><LF>.<CR><LF>")
                    if "data" in self.stall:
                        self._say(conn, "data", ans)
                    conn.send(ans)
                    if not ans.startswith("354"):
                        continue
                    tx["via"] = "DATA"
                    try:
                        if self.die_in_data is not None:
                            while len(conn.buf) < self.die_in_data and b"\r\n.\r\n" not in conn.buf:
                                conn.read()
                            if b"\r\n.\r\n" not in conn.buf:
                                tx["data"] = conn.buf
                                return
                        wire = conn.data()
                    except EOFError:
                        tx["data"] = conn.buf
                        raise
                    body = wire[:-3]
                    data = b"\r\n".join(x[1:] if x.startswith(b".") else x
                                        for x in body.split(b"\r\n"))
                    with self.lock:
                        self.messages.append({"mail": tx["mail"], "rcpts": tx["rcpts"], "wire": wire,
                                              "data": data, "via": "DATA", "chunks": []})
                    tx.update(mail=None, rcpts=[], chunks=[], data=b"", via=None)
                    self._say(conn, "eod", "250 2.0.0 Ok: queued as H%d" % len(self.messages))
                elif verb == "RSET":
                    self._abort(tx, "RSET")
                    self._say(conn, "rset", "250 2.0.0 Ok")
                elif verb == "QUIT":
                    how = "QUIT"
                    conn.send("221 2.0.0 Bye")
                    return
                elif verb == "NOOP" or (verb == "XFORWARD" and any(
                        c.startswith("XFORWARD") for c in self.caps)):
                    conn.send("250 2.0.0 Ok")
                else:
                    conn.send("502 5.5.2 Error: command not recognized")
        except (EOFError, OSError):
            pass
        finally:
            self._abort(tx, how)
            try:
                sock.close()
            except OSError:
                pass
