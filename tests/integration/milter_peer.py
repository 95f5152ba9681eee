"""milter_peer.py - a milter written for the tests: it speaks the milter
wire protocol (version 6) directly, no libmilter, and does what the
envelope tells it to, so test_milter.py can exercise every action.

    python3 milter_peer.py --port N|--unix PATH --events FILE [--pflags HEX] [--actions HEX]
                           [--at-connect accept|reject]

Prints "READY port=N" once listening. Every command it receives (with the
macros sent before it) is appended to FILE as one JSON line.

--at-connect: the answer to SMFIC_CONNECT (SMFIR_ACCEPT or SMFIR_REJECT)
instead of continue. After that, what it does is chosen by the sender's
local part (MAIL FROM):
    mods        at end of message: add, insert, change, delete headers,
                replace the body, add and delete a recipient, change sender
    discard     end of message: SMFIR_DISCARD
    discardmail MAIL: SMFIR_DISCARD
    reply       end of message: a multi-line SMFIR_REPLYCODE 550
    badreply    end of message: SMFIR_REPLYCODE "250 ok" (invalid)
    tempfail    end of message: SMFIR_TEMPFAIL
    rejectmail  MAIL: SMFIR_REJECT
    rejectrcpt  each RCPT: SMFIR_REJECT
    tempme      each RCPT: SMFIR_REPLYCODE 450
    rejectdata  DATA: SMFIR_REPLYCODE 554
    hang        MAIL: no answer for 60 s
    broken      MAIL: a packet with an impossible length
    brokenrcpt  first RCPT: the same, then the connection closes
    skip        first body chunk: SMFIR_SKIP
    relay       end of message: add <x@elsewhere.org> and <added@example.com>
    eicar       end of message: the body replaced by the EICAR test string
    otherroute  end of message: add <x@other.example>
    quarantine  end of message: SMFIR_QUARANTINE, then accept
anything else: continue at every stage, accept at end of message.
"""

import argparse
import itertools
import json
import socket
import socketserver
import struct
import sys
import threading
import time

LOCK = threading.Lock()
# The EICAR test string, from pieces so that no file holds it whole.
EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()


def pkt(cmd, data=b""):
    return struct.pack(">I", len(data) + 1) + cmd + data


def z(*parts):
    return b"".join(p.encode() + b"\0" for p in parts)


CONNS = itertools.count(1)  # each connection's number, in the events as conn


class Handler(socketserver.BaseRequestHandler):
    def record(self, cmd, **kw):
        if not hasattr(self, "conn"):
            self.conn = next(CONNS)  # unique: an id() is reused once freed
        ev = dict(conn=self.conn, cmd=cmd, **kw)
        with LOCK, open(self.server.events, "a") as f:
            f.write(json.dumps(ev) + "\n")

    def read(self):
        hdr = self.recvn(4)
        if hdr is None:
            return None, None
        n = struct.unpack(">I", hdr)[0]
        data = self.recvn(n)
        if data is None:
            return None, None
        return data[:1], data[1:]

    def recvn(self, n):
        buf = b""
        while len(buf) < n:
            d = self.request.recv(n - len(buf))
            if not d:
                return None
            buf += d
        return buf

    def send(self, cmd, data=b""):
        self.request.sendall(pkt(cmd, data))

    def handle(self):
        self.mode = ""
        self.pf = 0
        macros = {}
        body = b""
        headers = []
        while True:
            cmd, data = self.read()
            if cmd is None:
                return
            if cmd == b"O":
                ver, act, pf = struct.unpack(">III", data[:12])
                self.record("O", version=ver, actions=act, pflags=pf)
                self.pf = self.server.pflags & pf
                self.send(b"O", struct.pack(">III", 6, self.server.actions & act, self.pf))
                continue
            if cmd == b"D":
                parts = data[1:].split(b"\0")
                macros = {parts[i].decode(): parts[i + 1].decode()
                          for i in range(0, len(parts) - 1, 2)}
                continue
            if cmd == b"Q":
                self.record("Q")
                return
            if cmd == b"A":  # the message is over: ready for the next MAIL
                self.record("A")
                headers, body = [], b""
                continue
            args = [a.decode("utf-8", "replace") for a in data.split(b"\0")[:-1]]
            if cmd == b"L":
                headers.append(args)
            if cmd == b"B":
                body += data
                if self.mode == "skip":  # SMFIR_SKIP: no more body, please
                    self.record("B", args=[], size=len(data), macros={})
                    self.send(b"s")
                    continue
            self.record(cmd.decode(), args=args if cmd not in (b"B", b"C") else [],
                        macros=macros)
            macros = {}
            if cmd == b"C" and self.server.at_connect:
                self.send(b"a" if self.server.at_connect == "accept" else b"r")
                continue
            if cmd == b"M":
                self.mode = args[0].strip("<>").split("@")[0]
                if self.mode == "hang":
                    time.sleep(60)
                    return
                if self.mode == "broken":
                    self.request.sendall(b"\xff\xff\xff\xffgarbage")
                    continue
                if self.mode == "rejectmail":
                    self.send(b"r")
                    continue
                if self.mode == "discardmail":
                    self.send(b"d")
                    continue
            if cmd == b"R":
                if self.mode == "brokenrcpt":
                    self.request.sendall(b"\xff\xff\xff\xffgarbage")
                    return
                if self.mode == "rejectrcpt":
                    self.send(b"r")
                    continue
                if self.mode == "tempme":
                    self.send(b"y", z("450 4.2.0 <%s> try later" % args[0].strip("<>")))
                    continue
            if cmd == b"T" and self.mode == "rejectdata":
                self.send(b"y", z("554 5.7.0 no data today"))
                continue
            if cmd == b"E":
                self.record("headers", headers=headers, body=body.decode("utf-8", "replace"))
                self.eom()
                headers, body = [], b""
                continue
            nr = {b"C": 0x1000, b"H": 0x2000, b"M": 0x4000, b"R": 0x8000, b"T": 0x10000,
                  b"L": 0x80, b"N": 0x40000, b"B": 0x80000}
            if cmd in nr and not self.pf & nr[cmd]:  # SMFIP_NR_*: no reply
                self.send(b"c")

    def eom(self):
        m = self.mode
        if m == "mods":
            self.send(b"h", z("X-Added", "yes, added"))
            self.send(b"i", struct.pack(">I", 0) + z("X-Inserted", "at the top"))
            self.send(b"m", struct.pack(">I", 1) + z("Subject", "changed subject"))
            self.send(b"m", struct.pack(">I", 1) + z("X-Remove-Me", ""))
            self.send(b"m", struct.pack(">I", 2) + z("X-Twice", "second changed"))
            self.send(b"b", b"replaced body line 1\r\n")
            self.send(b"b", b"replaced body line 2\n.leading dot\r\n")
            self.send(b"+", z("<added@example.com>"))
            self.send(b"2", z("<par@example.com>", "NOTIFY=NEVER"))
            self.send(b"-", z("<del@example.com>"))
            self.send(b"e", z("<newsender@example.org>"))
            self.send(b"c")
        elif m == "discard":
            self.send(b"d")
        elif m == "reply":
            self.send(b"y", z("550-5.7.1 first line\r\n550 5.7.1 second line"))
        elif m == "badreply":
            self.send(b"y", z("250 ok"))
        elif m == "tempfail":
            self.send(b"t")
        elif m == "relay":
            self.send(b"+", z("<x@elsewhere.org>"))
            self.send(b"+", z("<added@example.com>"))
            self.send(b"a")
        elif m == "eicar":
            self.send(b"b", EICAR + b"\r\n")
            self.send(b"c")
        elif m == "otherroute":
            self.send(b"+", z("<x@other.example>"))
            self.send(b"a")
        elif m == "quarantine":
            self.send(b"q", z("held"))
            self.send(b"a")
        else:
            self.send(b"h", z("X-Peer", "seen"))
            self.send(b"a")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--events", required=True)
    ap.add_argument("--pflags", default="0")
    ap.add_argument("--actions", default="1ff")
    ap.add_argument("--unix", help="listen on this unix socket instead")
    ap.add_argument("--at-connect", choices=["accept", "reject"])
    a = ap.parse_args()
    srv = UnixServer(a.unix, Handler) if a.unix else Server(("127.0.0.1", a.port), Handler)
    srv.events = a.events
    srv.pflags = int(a.pflags, 16)
    srv.actions = int(a.actions, 16)
    srv.at_connect = a.at_connect
    print("READY port=%d" % (0 if a.unix else srv.server_address[1]), flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
