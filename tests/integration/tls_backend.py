"""tls_backend.py - a small SMTP backend that speaks STARTTLS (python ssl),
for perimd's TLS tests.

    b = TlsBackend(certfile, keyfile, require_tls=True).start()
    ... b.messages -> [{"tls": bool, "cipher": str, "mail": str, "rcpts": [...], "data": bytes}]
    b.stop()

Runs in a thread of the test process on 127.0.0.1; every socket has a
timeout, so nothing waits for ever. With require_tls, MAIL before STARTTLS
gets 530 5.7.0 (RFC 3207 §4).
"""

import socket
import socketserver
import ssl
import threading
import time


class _Handler(socketserver.StreamRequestHandler):
    timeout = 20

    def handle(self):
        srv = self.server.owner
        sock = self.request
        tls = False
        cipher = ""
        rfile, wfile = self.rfile, self.wfile

        def send(line):
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        send("220 tlsbackend ESMTP")
        mail, rcpts = None, []
        while True:
            line = rfile.readline(4096)
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd[:4].upper()
            srv.commands.append(cmd)
            if verb in ("EHLO", "HELO"):
                mail, rcpts = None, []
                caps = ["tlsbackend", "PIPELINING", "8BITMIME"]
                if not tls and srv.offer_starttls:
                    caps.append("STARTTLS")
                for c in caps[:-1]:
                    send("250-" + c)
                send("250 " + caps[-1])
            elif cmd.upper() == "STARTTLS":
                if tls or not srv.offer_starttls:
                    send("503 5.5.1 no")
                    continue
                send("220 2.0.0 go ahead")
                try:
                    sock = srv.ctx.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    srv.tls_errors.append(str(e))
                    return
                tls = True
                cipher = sock.cipher()[0]
                rfile = sock.makefile("rb")
                wfile = sock.makefile("wb")
                mail, rcpts = None, []
            elif verb == "MAIL":
                if srv.require_tls and not tls:
                    send("530 5.7.0 Must issue a STARTTLS command first")
                    continue
                mail, rcpts = cmd[10:], []
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(cmd[8:])
                send("250 2.1.5 ok")
            elif verb == "DATA":
                send("354 go")
                data = b""
                while True:
                    l = rfile.readline(65536)
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b".") else l
                srv.messages.append({"tls": tls, "cipher": cipher, "mail": mail,
                                     "rcpts": rcpts, "data": data})
                send("250 2.0.0 Ok: queued as TLS%d" % len(srv.messages))
            elif verb == "RSET":
                mail, rcpts = None, []
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                return
            else:
                send("250 2.0.0 ok")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class TlsBackend:
    def __init__(self, certfile, keyfile, require_tls=True, offer_starttls=True):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certfile, keyfile)
        self.require_tls = require_tls
        self.offer_starttls = offer_starttls
        self.messages = []
        self.commands = []
        self.tls_errors = []
        self.server = None
        self.port = None

    @property
    def target(self):
        return "[127.0.0.1]:%d" % self.port

    def start(self):
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.owner = self
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return self

    def wait_messages(self, n, timeout=10):
        deadline = time.monotonic() + timeout
        while len(self.messages) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
