"""test_shutdown.py - SIGTERM while a message is in flight (issue 13,
item 7): a message with the relay when shutdown_timeout passes is not cut
by it; the client hears the backend's own answer (or 451 when the relay's
deadline, relay_data_done_timeout, passes), never 421 while the backend may
have the message, and the outcome is logged under the message id.

The backend is purpose-written: a small SMTP server that stores what it
gets and then stalls after the final dot until the test releases it (or
for ever)."""

import re
import socket
import threading
import time

from harness import Client, expect, wait_for

SENDER = "a@client.test"
RCPT = "b@example.com"


class StallBackend:
    """An SMTP server on 127.0.0.1 that stalls after the final dot until
    release() (then answers `eod`), or never when eod is None."""

    def __init__(self, eod="250 2.0.0 Ok: queued as STALL1"):
        self.eod = eod
        self.got_dot = threading.Event()
        self.released = threading.Event()
        self.messages = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.stop_ev = threading.Event()
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            c.sendall(b"220 stall.test ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    c.sendall(b"250-stall.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                              b"250 ENHANCEDSTATUSCODES\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go ahead\r\n")
                    body = []
                    while True:
                        ln = f.readline()
                        if not ln:
                            return
                        if ln == b".\r\n":
                            break
                        body.append(ln)
                    self.messages.append(b"".join(body))
                    self.got_dot.set()
                    if self.eod is None:
                        self.stop_ev.wait()
                        return
                    # Stall after the dot: the message is ours, the answer late.
                    while not self.released.wait(0.1):
                        if self.stop_ev.is_set():
                            return
                    c.sendall(self.eod.encode() + b"\r\n")
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:  # MAIL, RCPT, RSET, NOOP
                    c.sendall(b"250 2.0.0 ok\r\n")
        except OSError:
            return
        finally:
            c.close()

    def release(self):
        self.released.set()

    def stop(self):
        self.stop_ev.set()
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        self.thread.join(5)


def send_until_dot(c, subject):
    expect(c.cmd("EHLO client.test"), 250)
    expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
    expect(c.cmd("RCPT TO:<%s>" % RCPT), 250)
    expect(c.cmd("DATA"), 354)
    c.send(("Subject: %s\r\n\r\nbody\r\n.\r\n" % subject).encode())


def stop_in_background(p, timeout):
    """SIGTERM now, p.stop() in a thread (it checks the exit status);
    returns (thread, errors list)."""
    errors = []

    def run():
        try:
            p.stop(timeout=timeout)
        except AssertionError as e:
            errors.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    return t, errors


def summary_line(p, code):
    """The message's summary line (from=..., result=CODE ...): its id."""
    m = p.wait_log(r"^.*?([\w.]+): from=<%s>, size=\d+, nrcpt=1, .*result=%d " %
                   (re.escape(SENDER), code), timeout=15)
    return m.group(1)


def test_backend_answers_after_drain_limit(perimd_factory):
    """The backend has the message and stalls past shutdown_timeout; when it
    answers 250 the client gets that 250 (not 421), then 421 and the close;
    perimd exits 0 and logs the outcome under the message id."""
    b = StallBackend()
    try:
        p = perimd_factory(relay_backends="127.0.0.1:%d" % b.port, shutdown_timeout="1s",
                           relay_data_done_timeout="30s")
        c = Client(p.port, timeout=30)
        try:
            send_until_dot(c, "stalled")
            assert b.got_dot.wait(10)
            t0 = time.monotonic()
            stopper, errors = stop_in_background(p, 40)
            # The drain limit passes while the backend still stalls.
            m = p.wait_log(r"([\w.]+): shutdown: message of client \[127\.0\.0\.1\] still being "
                           r"relayed; waiting for its outcome", timeout=10)
            assert time.monotonic() - t0 >= 0.9
            assert p.proc.poll() is None, "perimd stopped with the message in flight"
            b.release()
            r = c.reply(15)
            expect(r, 250, "2.0.0", r"queued as STALL1")
            r = c.reply(10)
            expect(r, 421, "4.3.2", r"shutting down")
            assert c.wait_closed(10)
            stopper.join(30)
            assert not stopper.is_alive() and not errors, errors
        finally:
            c.close()
        assert summary_line(p, 250) == m.group(1)
        assert re.search(r"%s: from=<%s>.*backend_id=STALL1, result=250 " %
                         (m.group(1), re.escape(SENDER)), p.log_text())
        assert len(b.messages) == 1 and b"stalled" in b.messages[0]
    finally:
        b.stop()


def test_backend_never_answers_451_at_relay_deadline(perimd_factory):
    """The backend has the message and never answers: the client gets 451
    when relay_data_done_timeout passes (not 421 at shutdown_timeout), and
    perimd stops within shutdown_timeout + relay_data_done_timeout."""
    b = StallBackend(eod=None)
    try:
        p = perimd_factory(relay_backends="127.0.0.1:%d" % b.port, shutdown_timeout="1s",
                           relay_data_done_timeout="4s")
        c = Client(p.port, timeout=30)
        try:
            send_until_dot(c, "never-answered")
            assert b.got_dot.wait(10)
            t0 = time.monotonic()
            stopper, errors = stop_in_background(p, 30)
            r = c.reply(20)
            elapsed = time.monotonic() - t0
            expect(r, 451, "4.4.2", r"after end of data")
            assert 2.0 <= elapsed < 10, elapsed   # the relay's 4 s, not the drain's 1 s
            expect(c.reply(10), 421, "4.3.2")
            stopper.join(30)
            assert not stopper.is_alive() and not errors, errors
            assert time.monotonic() - t0 < 1 + 4 + 5
        finally:
            c.close()
        msgid = summary_line(p, 451)
        assert re.search(r"%s: shutdown: message of client .* still being relayed" % msgid,
                         p.log_text())
    finally:
        b.stop()


def test_message_in_data_at_drain_limit_is_logged(perimd_factory):
    """A client still sending DATA when shutdown_timeout passes gets 421; the
    message (no backend has it) is logged under its id with the reason."""
    b = StallBackend()
    try:
        p = perimd_factory(relay_backends="127.0.0.1:%d" % b.port, shutdown_timeout="1s")
        c = Client(p.port, timeout=30)
        try:
            expect(c.cmd("EHLO client.test"), 250)
            expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
            expect(c.cmd("RCPT TO:<%s>" % RCPT), 250)
            expect(c.cmd("DATA"), 354)
            c.send(b"Subject: half\r\n\r\nfirst line\r\n")
            stopper, errors = stop_in_background(p, 20)
            expect(c.reply(10), 421, "4.3.2")
            stopper.join(30)
            assert not stopper.is_alive() and not errors, errors
        finally:
            c.close()
        assert re.search(r"\w+: from=<%s>, .*backend=none, backend_id=-, result=421 4\.3\.2 "
                         r"Service shutting down \(DATA cut at shutdown\)" % re.escape(SENDER),
                         p.log_text())
        assert b.messages == []
    finally:
        b.stop()


def test_new_message_after_relay_outcome_is_not_taken(perimd_factory):
    """After the in-flight message's answer, the session is closed with 421:
    no new transaction starts past the drain limit."""
    b = StallBackend()
    try:
        p = perimd_factory(relay_backends="127.0.0.1:%d" % b.port, shutdown_timeout="1s",
                           relay_data_done_timeout="30s")
        c = Client(p.port, timeout=30)
        try:
            send_until_dot(c, "first")
            assert b.got_dot.wait(10)
            # Pipelined behind the dot: must never be answered 250.
            c.send(b"MAIL FROM:<%s>\r\n" % SENDER.encode())
            stopper, errors = stop_in_background(p, 40)
            p.wait_log(r"still being relayed; waiting for its outcome", timeout=10)
            b.release()
            expect(c.reply(15), 250, "2.0.0")
            expect(c.reply(10), 421, "4.3.2")
            assert c.wait_closed(10)
            stopper.join(30)
            assert not stopper.is_alive() and not errors, errors
        finally:
            c.close()
        assert wait_for(lambda: len(b.messages) == 1, 5)
    finally:
        b.stop()


def test_relay_before_the_dot_bounded_from_drain_limit(perimd_factory, backend_factory):
    """The relay is still before the dot (the first backend hangs at MAIL)
    when shutdown_timeout ends: its deadline becomes relay_data_done_timeout
    from then, so when the stage in progress times out there is no failover
    to the second backend; the client gets 451 4.4.1 (no backend has the
    message), not 421 and not a late 250; both outcomes are logged."""
    b1 = backend_factory(hang=["mail"])
    b2 = backend_factory()
    p = perimd_factory(relay_backends="%s, %s" % (b1.target, b2.target), shutdown_timeout="1s",
                       relay_timeout="4s", relay_data_done_timeout="1s")
    c = Client(p.port, timeout=30)
    try:
        send_until_dot(c, "before-dot")
        assert wait_for(lambda: b1.stats()["commands"].get("MAIL", 0) == 1)
        t0 = time.monotonic()
        stopper, errors = stop_in_background(p, 30)
        r = c.reply(20)
        expect(r, 451, "4.4.1", r"time limit")
        assert time.monotonic() - t0 < 8
        expect(c.reply(10), 421, "4.3.2")
        stopper.join(30)
        assert not stopper.is_alive() and not errors, errors
    finally:
        c.close()
    msgid = summary_line(p, 451)
    assert re.search(r"%s: shutdown: message of client .* still being relayed" % msgid,
                     p.log_text())
    assert b2.stats()["connections"] == 0 and b2.messages() == []


def test_client_gone_during_data_is_logged(perimd_factory):
    """A client that disconnects in the middle of DATA: the message's
    summary line says so under its id."""
    b = StallBackend()
    try:
        p = perimd_factory(relay_backends="127.0.0.1:%d" % b.port)
        c = Client(p.port, timeout=10)
        expect(c.cmd("EHLO client.test"), 250)
        expect(c.cmd("MAIL FROM:<%s>" % SENDER), 250)
        expect(c.cmd("RCPT TO:<%s>" % RCPT), 250)
        expect(c.cmd("DATA"), 354)
        c.send(b"Subject: half\r\n\r\nfirst line\r\n")
        c.close()
        p.wait_log(r"\w+: from=<%s>, .*backend=none, backend_id=-, result=none \(client gone "
                   r"during DATA; not relayed\)" % re.escape(SENDER))
        assert b.messages == []
    finally:
        b.stop()


class StallClamd:
    """A clamd on 127.0.0.1 (zINSTREAM only) that holds its verdict until
    release(), then says the stream is clean."""

    def __init__(self):
        self.got_stream = threading.Event()
        self.released = threading.Event()
        self.stop_ev = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop_ev.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _read(self, f, n):
        data = f.read(n)
        if len(data) != n:
            raise OSError("short read")
        return data

    def _serve(self, c):
        f = c.makefile("rb")
        try:
            cmd = b""
            while not cmd.endswith(b"\0"):
                cmd += self._read(f, 1)
            if cmd != b"zINSTREAM\0":
                c.sendall(b"UNKNOWN COMMAND\0")
                return
            while True:
                n = int.from_bytes(self._read(f, 4), "big")
                if n == 0:
                    break
                self._read(f, n)
            self.got_stream.set()
            while not self.released.wait(0.1):
                if self.stop_ev.is_set():
                    return
            c.sendall(b"stream: OK\0")
        except OSError:
            return
        finally:
            c.close()

    def stop(self):
        self.stop_ev.set()
        self.sock.close()
        self.thread.join(5)


def test_message_being_scanned_at_drain_limit_is_relayed(perimd_factory):
    """The scanner holds its verdict past shutdown_timeout: the scan is not
    cancelled; once clean, the message is relayed and the client gets the
    backend's 250, then 421."""
    b = StallBackend()
    b.release()          # the backend answers at once
    av = StallClamd()
    try:
        p = perimd_factory(relay_backends="127.0.0.1:%d" % b.port, shutdown_timeout="1s",
                           av_scanner="clamd:127.0.0.1:%d" % av.port)
        c = Client(p.port, timeout=30)
        try:
            send_until_dot(c, "scanned")
            assert av.got_stream.wait(10)
            stopper, errors = stop_in_background(p, 40)
            m = p.wait_log(r"([\w.]+): shutdown: message of client \[127\.0\.0\.1\] still being "
                           r"scanned; waiting for its outcome", timeout=10)
            assert p.proc.poll() is None
            av.released.set()
            expect(c.reply(15), 250, "2.0.0", r"queued as STALL1")
            expect(c.reply(10), 421, "4.3.2")
            stopper.join(30)
            assert not stopper.is_alive() and not errors, errors
        finally:
            c.close()
        assert summary_line(p, 250) == m.group(1)
        assert len(b.messages) == 1 and b"scanned" in b.messages[0]
    finally:
        av.stop()
        b.stop()
