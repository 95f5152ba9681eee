"""harness.py - run the real perimd binary and real SMTP peers on loopback.

Everything here is bounded: every wait has a deadline, every process started
is remembered by PID and stopped by it.

    free_port()                       a free TCP port on 127.0.0.1
    Perimd(tmpdir, **params)          perimd with a generated config
    Sink(tmpdir)                      Postfix smtp-sink capturing each message to a file
    Client(port)                      a raw line-oriented SMTP client
    smtp_dialogue(port, lines, ...)   send lines, collect the parsed replies
    swaks(*args), smtp_source(*args)  run those tools with a time bound

perimd is started from PERIMD_BIN (default: <repo>/build/test/perimd, the
ASan+UBSan build); its stop() fails the test on any sanitizer report.
"""

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PERIMD_BIN = os.environ.get("PERIMD_BIN", os.path.join(REPO, "build", "test", "perimd"))

# Sanitizer reports in perimd's log that fail a test.
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def _tool(name):
    """Path of a Postfix/swaks tool; /usr/sbin may be missing from PATH."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") or name


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_next_port = [0]


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago, taken below the
    kernel's ephemeral range: a port from that range (bind to port 0) can
    be handed to some client's outgoing connection before the server the
    test starts binds it. Ports rotate per process (pid-based start) so
    concurrent test runs rarely meet."""
    lo, hi = 20000, min(_EPHEMERAL[0], 32768) - 1
    if hi - lo < 1000:   # an odd range: fall back to the kernel's choice
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    span = hi - lo + 1
    if not _next_port[0]:
        _next_port[0] = (os.getpid() * 7919) % span
    for _ in range(span):
        port = lo + _next_port[0] % span
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in %d-%d" % (lo, hi))


def _tail(text, n=60):
    return "\n".join(text.splitlines()[-n:])


# ---------------------------------------------------------------------------
# Reading SMTP replies


def parse_reply(lines):
    """(code, text) of one complete reply; the text of a multi-line reply is
    its lines' texts joined with "\\n" (e.g. EHLO: "name\\nPIPELINING\\n...")."""
    return int(lines[0][:3]), "\n".join(l[4:] for l in lines)


class Client:
    """A raw SMTP client on 127.0.0.1:port. Reads whole replies with a bound.

    c = Client(port)            connects and reads the greeting into c.banner
    c.cmd("EHLO x")             -> (code, text), or None if the peer closed
    c.send(b"raw bytes")        one write, exactly these bytes
    c.reply(timeout)            -> next complete reply, or None on EOF/timeout
    c.wait_closed(timeout)      -> True once the peer has closed the connection
    """

    def __init__(self, port, timeout=10, read_banner=True, source=None):
        self.timeout = timeout
        # source: a local address to connect from ("127.0.1.2": all of
        # 127.0.0.0/8 is local), for tests that tell clients apart.
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        self.eof = False
        self.banner = self.reply() if read_banner else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self, text):
        """Send one line; CRLF is added unless it already ends in LF."""
        if isinstance(text, str):
            text = text.encode()
        self.send(text if text.endswith(b"\n") else text + b"\r\n")

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def reply(self, timeout=None):
        """The next complete reply as (code, text); None on EOF or timeout
        (a partial reply stays buffered)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            lines = []
            pos = 0
            while True:
                nl = self.buf.find(b"\n", pos)
                if nl < 0:
                    break
                line = self.buf[pos:nl].rstrip(b"\r").decode("utf-8", "replace")
                pos = nl + 1
                lines.append(line)
                if len(line) < 4 or line[3] != "-":
                    self.buf = self.buf[pos:]
                    return parse_reply(lines)
            if self.eof or not self._fill(deadline):
                return None

    def cmd(self, text, timeout=None):
        self.line(text)
        return self.reply(timeout)

    def wait_closed(self, timeout=10):
        """True once the peer closed the connection (data before EOF is
        kept for reply()); False if it is still open at the deadline."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._fill(deadline) and not self.eof:
                return False
        return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is(line, word):
    return line.rstrip(b"\r\n").upper() == word


def smtp_dialogue(port, lines, timeout=10, pipelined=False):
    """Connect, send `lines` and return every complete reply as (code, text),
    the greeting first.

    Each line is str or bytes; CRLF is appended unless it already ends in
    LF (so b"bare\\n" goes out as is). Lines after a DATA that got 354, up to
    ".", are the body and get no reply of their own.

    pipelined=False: lock step, one write per line; a command line waits for
    its reply before the next is sent (body lines do not wait).
    pipelined=True: all lines in one write (RFC 2920), then replies are read
    until one per command has come, assuming DATA gets 354.

    If the last line is QUIT, replies are read until the server closes the
    connection, so an extra reply would show. Reading stops at EOF or at the
    deadline (`timeout` seconds in all): a missing reply shows as a shorter
    list, never as a hang.
    """
    raw = []
    for l in lines:
        b = l.encode() if isinstance(l, str) else l
        raw.append(b if b.endswith(b"\n") else b + b"\r\n")
    deadline = time.monotonic() + timeout
    replies = []
    c = Client(port, timeout=timeout, read_banner=False)
    try:
        r = c.reply(max(0.0, deadline - time.monotonic()))
        if r is None:
            return replies
        replies.append(r)
        if pipelined:
            c.send(b"".join(raw))
            expected, in_data = 0, False
            for b in raw:
                if in_data:
                    if _is(b, b"."):
                        expected += 1
                        in_data = False
                else:
                    expected += 1
                    in_data = _is(b, b"DATA")
            while len(replies) - 1 < expected:
                r = c.reply(max(0.0, deadline - time.monotonic()))
                if r is None:
                    break
                replies.append(r)
        else:
            in_data = False
            for b in raw:
                try:
                    c.send(b)
                except OSError:
                    break
                if in_data:
                    if not _is(b, b"."):
                        continue
                    in_data = False
                r = c.reply(max(0.0, deadline - time.monotonic()))
                if r is None:
                    break
                replies.append(r)
                if _is(b, b"DATA") and r[0] == 354:
                    in_data = True
        if raw and _is(raw[-1], b"QUIT"):
            while True:
                r = c.reply(max(0.0, deadline - time.monotonic()))
                if r is None:
                    break
                replies.append(r)
        return replies
    finally:
        c.close()


def wait_banner(port, timeout=10, proc=None):
    """Wait until 127.0.0.1:port greets with a "220 " line; then QUIT and
    wait for the server to close, so the probe session is gone on return.
    Raises AssertionError at the deadline or if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = "no connection"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError("process exited with status %s before greeting" % proc.returncode)
        try:
            c = Client(port, timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        except OSError as e:
            last = str(e)
            time.sleep(0.05)
            continue
        try:
            if c.banner and c.banner[0] == 220:
                try:
                    c.line("QUIT")
                    c.wait_closed(max(0.1, deadline - time.monotonic()))
                except OSError:
                    pass
                return c.banner
            last = "greeting %r" % (c.banner,)
        finally:
            c.close()
        time.sleep(0.05)
    raise AssertionError("no 220 greeting on port %d within %ss (%s)" % (port, timeout, last))


# ---------------------------------------------------------------------------
# perimd


def _conf_value(v):
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


class Perimd:
    """perimd on 127.0.0.1 with a generated config in tmpdir.

    Defaults (each overridable by a keyword): smtpd_listen and stats_listen
    on free ports,
    data_directory=tmpdir/lib, body_spool_directory=tmpdir/spool,
    log_to=stderr, myhostname=perimd.test, io_threads=2,
    relay_domains=example.com, shutdown_timeout=3s (so stop() is not held by
    a client a test left open), mail_owner = the user running the tests (so
    the test directories stay usable when run as root), greylist=no and
    reject_unknown_sender_domain=no (where the binary has them).
    """

    def __init__(self, tmpdir, **params):
        self.dir = os.fspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        conf = {
            "smtpd_listen": "127.0.0.1:%d" % free_port(),
            "data_directory": os.path.join(self.dir, "lib"),
            "body_spool_directory": os.path.join(self.dir, "spool"),
            "log_to": "stderr",
            "myhostname": "perimd.test",
            "io_threads": "2",
            "relay_domains": "example.com",
            "stats_listen": "127.0.0.1:%d" % free_port(),
            "shutdown_timeout": "3s",
            "mail_owner": pwd.getpwuid(os.geteuid()).pw_name,
        }
        # Mail passes at once unless a test turns greylisting on.
        if "greylist" in known_params():
            conf["greylist"] = "no"
        # The test senders' domains (client.test ...) are in no DNS: the
        # sender-domain check is off unless a test turns it on.
        if "reject_unknown_sender_domain" in known_params():
            conf["reject_unknown_sender_domain"] = "no"
        conf.update({k: _conf_value(v) for k, v in params.items()})
        self.params = conf
        for key in ("data_directory", "body_spool_directory"):
            os.makedirs(conf[key], exist_ok=True)
        first = conf["smtpd_listen"].replace(",", " ").split()[0]
        self.port = int(first.rsplit(":", 1)[1])
        self.conf_path = os.path.join(self.dir, "perimd.conf")
        with open(self.conf_path, "w") as f:
            for k, v in conf.items():
                f.write("%s = %s\n" % (k, v))
        self.log_path = os.path.join(self.dir, "perimd.log")
        self.proc = None
        self._log = None
        self._stopped = False

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self, timeout=10):
        """Run perimd in the foreground and wait for its 220 greeting.
        Returns self; a second call on a running instance does nothing."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self._log = open(self.log_path, "ab")
        self._stopped = False
        self.proc = subprocess.Popen(
            [PERIMD_BIN, "-f", "-c", self.conf_path],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env, cwd=self.dir)
        try:
            wait_banner(self.port, timeout, self.proc)
        except AssertionError as e:
            self.kill()
            raise AssertionError("perimd did not start: %s\n--- perimd.log:\n%s"
                                 % (e, _tail(self.log_text()))) from None
        return self

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, regex, timeout=10):
        """The first re.search match of regex (multi-line) in the log,
        waiting up to timeout seconds; AssertionError if it never shows."""
        pat = re.compile(regex, re.M)
        deadline = time.monotonic() + timeout
        while True:
            m = pat.search(self.log_text())
            if m:
                return m
            if time.monotonic() >= deadline:
                raise AssertionError("log never matched %r within %ss\n--- perimd.log:\n%s"
                                     % (regex, timeout, _tail(self.log_text())))
            time.sleep(0.05)

    def sanitizer_report(self):
        text = self.log_text()
        for m in SANITIZER_MARKERS:
            i = text.find(m)
            if i >= 0:
                return text[max(0, i - 2000):i + 6000]
        return None

    def stop(self, timeout=10):
        """SIGTERM, wait up to timeout s (then SIGKILL and fail); fail if
        perimd died on its own before, exited badly, or a sanitizer spoke."""
        if self.proc is None or self._stopped:
            return
        self._stopped = True
        problems = []
        rc = self.proc.poll()
        if rc is not None:
            problems.append("perimd exited on its own with status %s" % rc)
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
                if rc not in (0, -signal.SIGTERM):
                    problems.append("perimd exited with status %s after SIGTERM" % rc)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                problems.append("perimd still running %ss after SIGTERM: killed" % timeout)
        self._close_log()
        report = self.sanitizer_report()
        if report:
            problems.append("sanitizer report:\n" + report)
        if problems:
            if not report:
                problems.append("--- perimd.log (tail):\n" + _tail(self.log_text()))
            raise AssertionError("\n".join(problems))

    def kill(self):
        """SIGKILL, no checks (for tests that kill on purpose)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stopped = True
        self._close_log()

    def _close_log(self):
        if self._log:
            self._log.close()
            self._log = None


# ---------------------------------------------------------------------------
# smtp-sink


class Sink:
    """Postfix smtp-sink on 127.0.0.1:<free port>, one file per message.

    The capture directory is made under /tmp (smtp-sink runs as nobody when
    started as root, and pytest's directories are private to their owner);
    stop() removes it. Captured files start with smtp-sink's own X-* and
    Received: lines, then the message, then an empty line (man smtp-sink).
    """

    def __init__(self, tmpdir, extra_args=()):
        self.dir = os.fspath(tmpdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.extra_args = list(extra_args)
        self.dump_dir = tempfile.mkdtemp(prefix="perimd-sink-")
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dump_dir, nobody.pw_uid, nobody.pw_gid)
        self.log_path = os.path.join(self.dir, "sink-%d.log" % self.port)
        self.proc = None
        self._log = None

    def start(self, timeout=10):
        args = [_tool("smtp-sink")]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += ["-m", "1000", "-d", self.dump_dir + "/%M."] + self.extra_args
        args += ["127.0.0.1:%d" % self.port, "1000"]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_banner(self.port, timeout, self.proc)
        except AssertionError as e:
            self.stop()
            raise AssertionError("smtp-sink did not start: %s" % e) from None
        return self

    def files(self):
        try:
            names = os.listdir(self.dump_dir)
        except FileNotFoundError:
            return []
        return sorted(os.path.join(self.dump_dir, n) for n in names)

    def messages(self):
        """Contents (bytes) of every captured message, in file-name order."""
        out = []
        for p in self.files():
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    def count(self):
        return len(self.files())

    def wait_count(self, n, timeout=10):
        """True once at least n messages were captured, False at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if self.count() >= n:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def stop(self):
        stop_proc(self.proc)
        if self._log:
            self._log.close()
            self._log = None
        shutil.rmtree(self.dump_dir, ignore_errors=True)


def sink_message(raw):
    """Split a smtp-sink capture into (envelope dict, message bytes).

    envelope: {"helo": str, "mail": str, "rcpt": [str, ...]}. The message is
    what the client sent after DATA, with CRLF turned into LF by smtp-sink,
    without smtp-sink's own header block and the final empty line."""
    env = {"helo": None, "mail": None, "rcpt": []}
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines):
        l = lines[i]
        if l.startswith(b"X-Helo-Args: "):
            env["helo"] = l[13:].decode("utf-8", "replace")
        elif l.startswith(b"X-Mail-Args: "):
            env["mail"] = l[13:].decode("utf-8", "replace")
        elif l.startswith(b"X-Rcpt-Args: "):
            env["rcpt"].append(l[13:].decode("utf-8", "replace"))
        elif l.startswith(b"Received: ") and b"(smtp-sink)" in b"".join(lines[i:i + 3]):
            i += 3  # smtp-sink's own three-line Received: ends its block
            break
        i += 1
    body = b"\n".join(lines[i:])
    if body.endswith(b"\n\n"):
        body = body[:-1]
    return env, body


# ---------------------------------------------------------------------------
# Client tools


def swaks(*args, timeout=60):
    """Run swaks with args; (returncode, stdout+stderr as text)."""
    p = subprocess.run([_tool("swaks"), *map(str, args)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def smtp_source(*args, timeout=300):
    """Run Postfix's smtp-source with args; (returncode, output text)."""
    p = subprocess.run([_tool("smtp-source"), *map(str, args)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return p.returncode, p.stdout.decode("utf-8", "replace")


_KNOWN_PARAMS = None


def known_params():
    """Names of the parameters the binary knows (from `perimd -d`); empty
    if it cannot say. For tests that turn a feature off only where the
    binary has it (unknown names are configuration errors)."""
    global _KNOWN_PARAMS
    if _KNOWN_PARAMS is None:
        names = set()
        try:
            p = subprocess.run([PERIMD_BIN, "-d"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
            for line in p.stdout.decode("utf-8", "replace").splitlines():
                m = re.match(r"([a-z0-9_]+)\s*=", line)
                if m:
                    names.add(m.group(1))
        except (OSError, subprocess.TimeoutExpired):
            pass
        _KNOWN_PARAMS = names
    return _KNOWN_PARAMS


def expect(reply, code, enh=None, text=None):
    """Assert a (code, text) reply: code, enhanced code, optional text
    (a regex searched in the text after the enhanced code)."""
    assert reply is not None, "no reply (connection closed or timed out)"
    assert reply[0] == code, "expected %d %s, got %r" % (code, enh or "", reply)
    if enh is not None:
        assert reply[1].split(" ", 1)[0] == enh, "expected %d %s, got %r" % (code, enh, reply)
    if text is not None:
        assert re.search(text, reply[1]), "expected /%s/ in %r" % (text, reply)


def stop_proc(proc, grace=10, after_kill=10):
    """Stop a process the test started (its Popen; None or ended: nothing):
    SIGTERM, SIGKILL when it has not gone after grace seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(after_kill)


def wait_for(cond, timeout=10.0):
    """Poll cond() until it is true or the timeout passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(0.05)
