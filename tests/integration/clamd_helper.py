#!/usr/bin/python3
"""clamd_helper.py - ClamAV for the tests and benchmarks: the EICAR test
string (assembled at run time), a signature directory, and a clamd of our
own (test_av.py and the tests that import it, tests/bench_seed.py).

    db = write_ndb(path, [("Name", b"bytes"), ...])
    c = Clamd(tmp_path, db).start()   ... c.sock, c.port ...   c.stop()
"""

import os
import shutil
import socket
import subprocess
import time

from harness import free_port, stop_proc

EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()


def write_ndb(path, sigs, name="perimd.ndb"):
    """A signature directory: .ndb lines Name:0:*:HEX (0 = any file) for
    each (name, bytes) of sigs in path/name; returns path."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name), "w") as f:
        for sig, data in sigs:
            f.write("%s:0:*:%s\n" % (sig, data.hex()))
    return path


def _popen(argv):
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


class Clamd:
    """A clamd of our own in tmp_path/clamd: foreground, its own config
    (the lines of extra after the common ones), database db, a unix socket
    and a loopback TCP port; popen(argv) starts it (a Popen)."""

    def __init__(self, tmp_path, db, extra="StreamMaxLength 50M\nMaxThreads 4\n", popen=_popen):
        self.dir = os.path.join(str(tmp_path), "clamd")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "clamd.sock")
        self.port = free_port()
        self.conf = os.path.join(self.dir, "clamd.conf")
        self.log = os.path.join(self.dir, "clamd.log")
        self.popen = popen
        with open(self.conf, "w") as f:
            f.write("Foreground yes\nLocalSocket %s\nTCPSocket %d\nTCPAddr 127.0.0.1\n"
                    "DatabaseDirectory %s\nTemporaryDirectory %s\nLogFile %s\n"
                    % (self.sock, self.port, db, self.dir, self.log) + extra)
            if os.geteuid() == 0:
                f.write("User root\n")
        self.proc = None

    def start(self, timeout=60):
        clamd = shutil.which("clamd") or "/usr/sbin/clamd"
        self.proc = self.popen([clamd, "-c", self.conf])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "clamd exited:\n" + self._logtext()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"zPING\0")
                    if s.recv(16).startswith(b"PONG") and os.path.exists(self.sock):
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("clamd not ready:\n" + self._logtext())

    def _logtext(self):
        try:
            return open(self.log).read()[-3000:]
        except OSError:
            return ""

    def stop(self):
        stop_proc(self.proc)
