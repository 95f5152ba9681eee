#!/usr/bin/python3
"""listener.py - a TCP server on 127.0.0.1 in threads of the test process,
the part the tests' in-process servers share (hostile_backend.py's SMTP
backend, test_policy_services.py's policy server):

    class Mine(Listener):
        def serve(self, conn, no):   # in a thread of its own per connection
            ...
    s = Mine().start()   ... s.port, s.connections ...   s.stop()

It accepts until stop(), counting connections (no is 1 for the first);
accepted() is called for each under self.lock before its thread starts;
stop() closes the listening socket and every connection and waits for the
accepting thread (bounded)."""

import socket
import threading


class Listener:
    def __init__(self, port=0, backlog=50):
        self.connections = 0
        self.conns = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.backlog = backlog
        self.thread = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]

    def start(self):
        self.sock.listen(self.backlog)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self

    def serve(self, conn, no):
        raise NotImplementedError

    def accepted(self, no):
        """Called under self.lock as connection no is taken."""

    def _accept(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                no = self.connections
                self.conns.append(c)
                self.accepted(no)
            threading.Thread(target=self.serve, args=(c, no), daemon=True).start()

    def stop(self):
        self.stopping.set()
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        if self.thread:
            self.thread.join(5)
