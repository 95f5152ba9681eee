#!/usr/bin/python3
"""backend.py - a controllable SMTP backend for perimd's integration tests.

Run as a process:
    /usr/bin/python3 tests/integration/backend.py --port N --spool DIR [options]
or from a test:
    from backend import Backend
    b = Backend(tmpdir, no_pipelining=True); b.start(); ...; b.messages(); b.stop()

Every accepted message is written to DIR as NNNNNN.msg: one JSON line
(envelope: mail_from, mail_params, rcpts [[addr, params]...], helo, conn,
queue_id) then the message data exactly as received after the end-of-data
line was removed and dot-unstuffing was done. The file is complete (written,
then renamed) before the 250 goes out, so "250 seen by perimd" implies "file
on disk".

Behaviour, settable on the command line and at run time (control port, JSON
lines: {"op": "set", ...}, {"op": "stats"}, {"op": "reset_stats"}), or via a
JSON control file re-read when it changes (--control-file):
  reply   {stage: "CODE text"}  for stage in greeting ehlo helo mail rcpt data
                                eod rset ("\n" separates lines of a multi-line reply;
                                in a 2xx eod reply "{qid}" is the stored queue id)
  rcpt_reply {fnmatch-pattern: "CODE text"}  per recipient (first match wins)
  hang    [stage...]   never reply at that stage (stages above plus "body":
                       after the first chunk of the body)
  drop    [stage...]   close the connection instead of replying
  pipelining / eightbitmime / smtputf8 / dsn / size: bool, advertised in EHLO
  xforward: "" or the attribute names offered ("NAME ADDR PORT PROTO HELO
           IDENT SOURCE"): the XFORWARD keyword in EHLO; the attributes
           received (xtext decoded) go into the envelope as "xforward" and
           are reset after each transaction (DATA end, RSET), as Postfix does;
           its reply is reply["xforward"] (default 250)
  xclient: "" or the attribute names offered: the XCLIENT keyword in EHLO;
           the attributes received go into every later envelope of the
           connection as "xclient"; reply["xclient"] (default a new 220
           greeting, after which the client must EHLO again)
  lenient: bool - like vulnerable servers, end lines on CR, LF or CRLF and end
           DATA on "." alone on any such line; transactions are counted so a
           test can see a split happen.
Stats: connections, open, max_open (most open at once), transactions (DATA
ends seen), accepted, commands (verb
counts), rset, pipelining_violations (commands sent ahead without PIPELINING),
log (recent command lines).
"""

import argparse
import asyncio
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import time

LINE_END = re.compile(b"[\r\n]")
STAGES = ("greeting", "ehlo", "helo", "xforward", "xclient", "mail", "rcpt", "data", "body", "eod", "rset")

DEFAULTS = {
    "reply": {},
    "rcpt_reply": {},
    "hang": [],
    "drop": [],
    "pipelining": True,
    "eightbitmime": True,
    "smtputf8": True,
    "dsn": True,
    "size": True,
    "lenient": False,
    "xforward": "",
    "xclient": "",
}


class State:
    """The behaviour settings and counters shared by all connections."""

    def __init__(self, spool, opts, control_file=None):
        self.spool = spool
        self.opts = json.loads(json.dumps(DEFAULTS))
        self.apply(opts)
        self.control_file = control_file
        self.control_mtime = None
        self.seq = 0
        self.conn_seq = 0
        self.reset_stats()

    def reset_stats(self):
        self.stats = {"connections": 0, "open": 0, "max_open": 0, "transactions": 0,
                      "accepted": 0, "commands": {}, "rset": 0,
                      "pipelining_violations": 0, "log": []}

    def apply(self, opts):
        for k, v in opts.items():
            if k not in DEFAULTS:
                raise ValueError("unknown option %r" % k)
            self.opts[k] = v

    def reload(self):
        """Re-read the control file when it changed."""
        if not self.control_file:
            return
        try:
            m = os.stat(self.control_file).st_mtime_ns
        except OSError:
            return
        if m == self.control_mtime:
            return
        self.control_mtime = m
        try:
            with open(self.control_file) as f:
                self.apply(json.load(f))
        except (OSError, ValueError) as e:
            print("control file: %s" % e, flush=True)

    def log(self, conn, line):
        entry = "%d %s" % (conn, line)
        self.stats["log"].append(entry)
        del self.stats["log"][:-500]
        print(entry, flush=True)

    def store(self, env, data):
        self.seq += 1
        qid = "Q%06d" % self.seq
        env = dict(env, queue_id=qid)
        name = os.path.join(self.spool, "%06d.msg" % self.seq)
        with open(name + ".tmp", "wb") as f:
            f.write(json.dumps(env).encode() + b"\n")
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(name + ".tmp", name)
        return qid


class Session:
    """One SMTP connection."""

    def __init__(self, st, reader, writer):
        self.st = st
        self.r = reader
        self.w = writer
        self.buf = b""
        self.eof = False
        st.conn_seq += 1
        self.id = st.conn_seq
        self.helo = None
        self.xforward = {}
        self.xclient = {}
        self.reset()

    def reset(self):
        self.mail_from = None
        self.mail_params = []
        self.rcpts = []

    # -- input ---------------------------------------------------------
    async def fill(self):
        data = await self.r.read(65536)
        if not data:
            self.eof = True
        self.buf += data

    def _split(self):
        """(line, rest) if a full line is buffered, else None."""
        if self.st.opts["lenient"]:
            m = LINE_END.search(self.buf)
            if not m:
                return None
            i = m.start()
            if self.buf[i] == 0x0A:
                return self.buf[:i], self.buf[i + 1:]
            if i + 1 == len(self.buf) and not self.eof:
                return None  # CR at the end: wait for a possible LF
            j = i + 2 if self.buf[i + 1:i + 2] == b"\n" else i + 1
            return self.buf[:i], self.buf[j:]
        i = self.buf.find(b"\r\n")
        if i < 0:
            return None
        return self.buf[:i], self.buf[i + 2:]

    async def line(self):
        while True:
            s = self._split()
            if s is not None:
                self.buf = s[1]
                return s[0]
            if self.eof:
                return None
            await self.fill()

    # -- output --------------------------------------------------------
    def reply_for(self, stage, default):
        return self.st.opts["reply"].get(stage, default)

    async def act(self, stage, text):
        """Reply `text` unless the settings say hang or drop at this stage.
        False: the connection is over."""
        o = self.st.opts
        if stage in o["drop"]:
            self.st.log(self.id, "drop at %s" % stage)
            self.w.transport.abort()
            return False
        if stage in o["hang"]:
            self.st.log(self.id, "hang at %s" % stage)
            while not self.eof:  # read and ignore until the peer gives up
                self.buf = b""
                await self.fill()
            return False
        await self.send(text)
        if text.startswith("421"):
            self.w.close()
            return False
        return True

    async def send(self, text):
        lines = text.split("\n")
        out = b""
        for i, ln in enumerate(lines):
            code, rest = ln[:3], ln[4:]
            sep = "-" if i + 1 < len(lines) else " "
            out += ("%s%s%s\r\n" % (code, sep, rest)).encode()
        self.w.write(out)
        await self.w.drain()

    # -- the session ---------------------------------------------------
    async def run(self):
        st = self.st
        st.stats["connections"] += 1
        st.stats["open"] += 1
        st.stats["max_open"] = max(st.stats["max_open"], st.stats["open"])
        try:
            st.reload()
            if not await self.act("greeting", self.reply_for(
                    "greeting", "220 backend.test ESMTP test backend")):
                return
            while True:
                ln = await self.line()
                if ln is None:
                    return
                st.reload()
                if self.buf and not st.opts["pipelining"]:
                    st.stats["pipelining_violations"] += 1
                text = ln.decode("utf-8", "replace")
                st.log(self.id, "> " + text)
                verb = text.split(" ", 1)[0].upper()
                if verb.startswith("MAIL") or verb.startswith("RCPT"):
                    verb = verb.split(":")[0]
                st.stats["commands"][verb] = st.stats["commands"].get(verb, 0) + 1
                if not await self.command(verb, text):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            st.stats["open"] -= 1
            try:
                self.w.close()
            except Exception:
                pass

    async def command(self, verb, text):
        o = self.st.opts
        arg = text[len(verb):].strip() if verb not in ("MAIL", "RCPT") else \
            text.split(":", 1)[1].strip() if ":" in text else ""
        if verb == "EHLO":
            self.helo = arg
            caps = ["backend.test"]
            if o["pipelining"]:
                caps.append("PIPELINING")
            if o["size"]:
                caps.append("SIZE 52428800")
            if o["eightbitmime"]:
                caps.append("8BITMIME")
            if o["smtputf8"]:
                caps.append("SMTPUTF8")
            if o["dsn"]:
                caps.append("DSN")
            caps.append("ENHANCEDSTATUSCODES")
            if o["xforward"]:
                caps.append("XFORWARD " + o["xforward"])
            if o["xclient"] and not self.xclient:
                caps.append("XCLIENT " + o["xclient"])
            return await self.act("ehlo", self.reply_for(
                "ehlo", "\n".join("250 " + c for c in caps)))
        if verb == "HELO":
            self.helo = arg
            return await self.act("ehlo", self.reply_for("helo", "250 backend.test"))
        if verb == "MAIL":
            self.reset()
            path, _, params = arg.partition(" ")
            self.mail_from = path.strip("<>")
            self.mail_params = params.split()
            return await self.act("mail", self.reply_for("mail", "250 2.1.0 Ok"))
        if verb == "RCPT":
            if self.mail_from is None:
                await self.send("503 5.5.1 need MAIL")
                return True
            path, _, params = arg.partition(" ")
            addr = path.strip("<>")
            rep = None
            for pat, r in o["rcpt_reply"].items():
                if fnmatch.fnmatch(addr.lower(), pat.lower()):
                    rep = r
                    break
            if rep is None:
                rep = self.reply_for("rcpt", "250 2.1.5 Ok")
            if rep.startswith("2"):
                self.rcpts.append([addr, params.split()])
            return await self.act("rcpt", rep)
        if verb == "DATA":
            if not self.rcpts:
                await self.send("503 5.5.1 no valid recipients")
                return True
            r = self.reply_for("data", "354 End data with <CR><LF>.<CR><LF>")
            if not await self.act("data", r):
                return False
            if not r.startswith("354"):
                return True
            return await self.data()
        if verb == "XFORWARD" and o["xforward"]:
            rep = self.reply_for("xforward", "250 2.0.0 Ok")
            if rep.startswith("2"):
                for item in arg.split():
                    k, _, v = item.partition("=")
                    self.xforward[k.upper()] = re.sub(
                        r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), v)
            return await self.act("xforward", rep)
        if verb == "XCLIENT" and o["xclient"]:
            rep = self.reply_for("xclient", "220 backend.test ESMTP after XCLIENT")
            if rep.startswith("2"):
                self.helo = None
                self.reset()
                for item in arg.split():
                    k, _, v = item.partition("=")
                    self.xclient[k.upper()] = re.sub(
                        r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), v)
            return await self.act("xclient", rep)
        if verb == "RSET":
            self.st.stats["rset"] += 1
            self.xforward = {}
            self.reset()
            return await self.act("rset", self.reply_for("rset", "250 2.0.0 Ok"))
        if verb == "NOOP":
            await self.send("250 2.0.0 Ok")
            return True
        if verb == "QUIT":
            await self.send("221 2.0.0 Bye")
            return False
        await self.send("502 5.5.2 command not recognized")
        return True

    async def data(self):
        o = self.st.opts
        lines = []
        first = True
        while True:
            if first and "body" in o["drop"] + o["hang"]:
                while not self.buf and not self.eof:
                    await self.fill()
                if not await self.act("body", ""):
                    return False
            first = False
            ln = await self.line()
            if ln is None:
                return False
            if ln == b".":
                break
            if ln.startswith(b"."):
                ln = ln[1:]
            lines.append(ln)
        self.st.stats["transactions"] += 1
        self.st.log(self.id, "end of data (%d lines)" % len(lines))
        data = b"".join(x + b"\r\n" for x in lines)
        env = {"mail_from": self.mail_from, "mail_params": self.mail_params,
               "rcpts": self.rcpts, "helo": self.helo, "conn": self.id,
               "xforward": self.xforward, "xclient": self.xclient}
        self.xforward = {}
        eod = self.reply_for("eod", "250 2.0.0 Ok: queued as {qid}")
        if "eod" in o["drop"] + o["hang"] or not eod.startswith("2"):
            self.reset()
            return await self.act("eod", eod)
        qid = self.st.store(env, data)
        self.st.stats["accepted"] += 1
        self.reset()
        return await self.act("eod", eod.replace("{qid}", qid))


async def control_client(st, reader, writer):
    """JSON-lines control: set, stats, reset_stats, ping."""
    try:
        while True:
            ln = await reader.readline()
            if not ln:
                break
            try:
                req = json.loads(ln)
                op = req.pop("op")
                if op == "set":
                    st.apply(req)
                    rep = {"ok": True}
                elif op == "stats":
                    rep = {"ok": True, "stats": st.stats}
                elif op == "reset_stats":
                    st.reset_stats()
                    rep = {"ok": True}
                elif op == "ping":
                    rep = {"ok": True}
                else:
                    rep = {"ok": False, "error": "unknown op"}
            except (ValueError, KeyError) as e:
                rep = {"ok": False, "error": str(e)}
            writer.write(json.dumps(rep).encode() + b"\n")
            await writer.drain()
    finally:
        writer.close()


async def serve(args, opts):
    os.makedirs(args.spool, exist_ok=True)
    st = State(args.spool, opts, args.control_file)

    async def smtp_client(reader, writer):
        await Session(st, reader, writer).run()

    srv = await asyncio.start_server(smtp_client, args.host, args.port,
                                     limit=1 << 20, backlog=1024)
    ctl = await asyncio.start_server(lambda r, w: control_client(st, r, w),
                                     args.host, args.control_port)
    port = srv.sockets[0].getsockname()[1]
    cport = ctl.sockets[0].getsockname()[1]
    print("READY port=%d control=%d" % (port, cport), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


def parse_args(argv):
    ap = argparse.ArgumentParser(description="controllable SMTP test backend")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--control-file")
    ap.add_argument("--spool", required=True)
    ap.add_argument("--reply", action="append", default=[], metavar="STAGE=CODE TEXT")
    ap.add_argument("--rcpt-reply", action="append", default=[], metavar="PATTERN=CODE TEXT")
    ap.add_argument("--hang", action="append", default=[], choices=STAGES)
    ap.add_argument("--drop", action="append", default=[], choices=STAGES)
    ap.add_argument("--no-pipelining", action="store_true")
    ap.add_argument("--no-8bitmime", action="store_true")
    ap.add_argument("--no-smtputf8", action="store_true")
    ap.add_argument("--no-dsn", action="store_true")
    ap.add_argument("--no-size", action="store_true")
    ap.add_argument("--lenient", action="store_true")
    ap.add_argument("--xforward", default="", metavar="ATTRS")
    ap.add_argument("--xclient", default="", metavar="ATTRS")
    args = ap.parse_args(argv)
    opts = {
        "reply": dict(x.split("=", 1) for x in args.reply),
        "rcpt_reply": dict(x.split("=", 1) for x in args.rcpt_reply),
        "hang": args.hang, "drop": args.drop,
        "pipelining": not args.no_pipelining,
        "eightbitmime": not args.no_8bitmime,
        "smtputf8": not args.no_smtputf8,
        "dsn": not args.no_dsn, "size": not args.no_size,
        "lenient": args.lenient,
        "xforward": args.xforward,
        "xclient": args.xclient,
    }
    for s in opts["reply"]:
        if s not in STAGES:
            ap.error("unknown stage %r" % s)
    return args, opts


# ---- the Python API for tests --------------------------------------------

class Message:
    """One stored message: envelope fields and the data bytes."""

    def __init__(self, path):
        with open(path, "rb") as f:
            head, _, self.data = f.read().partition(b"\n")
        env = json.loads(head)
        self.path = path
        self.mail_from = env["mail_from"]
        self.mail_params = env["mail_params"]
        self.rcpts = [r[0] for r in env["rcpts"]]
        self.rcpt_params = {r[0]: r[1] for r in env["rcpts"]}
        self.helo = env["helo"]
        self.conn = env["conn"]
        self.queue_id = env["queue_id"]
        self.xforward = env.get("xforward", {})
        self.xclient = env.get("xclient", {})

    def __repr__(self):
        return "Message(%s from=%s to=%s %d bytes)" % (
            self.queue_id, self.mail_from, self.rcpts, len(self.data))


def _opts_to_args(opts):
    """Backend(...) keyword options as command-line arguments."""
    out = []
    for k, v in opts.items():
        if k == "reply":
            out += sum((["--reply", "%s=%s" % kv] for kv in v.items()), [])
        elif k == "rcpt_reply":
            out += sum((["--rcpt-reply", "%s=%s" % kv] for kv in v.items()), [])
        elif k in ("hang", "drop"):
            out += sum((["--" + k, s] for s in ([v] if isinstance(v, str) else v)), [])
        elif k in ("pipelining", "eightbitmime", "smtputf8", "dsn", "size"):
            if not v:
                out.append("--no-" + {"eightbitmime": "8bitmime"}.get(k, k))
        elif k == "lenient":
            if v:
                out.append("--lenient")
        elif k in ("xforward", "xclient"):
            out += ["--" + k, v]
        else:
            raise ValueError("unknown backend option %r" % k)
    return out


class Backend:
    """A backend process under test control (start/stop/messages/set)."""

    def __init__(self, tmpdir, name="backend", port=0, **opts):
        self.dir = os.path.join(str(tmpdir), name)
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(self.spool, exist_ok=True)
        self.logfile = os.path.join(self.dir, "backend.log")
        self.want_port = port
        self.opts = opts
        self.proc = None
        self.port = None
        self.control_port = None

    @property
    def target(self):
        """This backend as a relay_backends entry."""
        return "[127.0.0.1]:%d" % self.port

    def start(self, timeout=10.0):
        cmd = ["/usr/bin/python3", os.path.abspath(__file__),
               "--port", str(self.want_port), "--spool", self.spool] + \
            _opts_to_args(self.opts)
        self._log = open(self.logfile, "ab")
        start = os.path.getsize(self.logfile)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.logfile, "rb") as f:
                f.seek(start)
                for ln in f.read().decode("utf-8", "replace").splitlines():
                    if ln.startswith("READY "):
                        kv = dict(x.split("=") for x in ln.split()[1:])
                        self.port = int(kv["port"])
                        self.control_port = int(kv["control"])
                        self.want_port = self.port  # a restart keeps the port
                        return self
            if self.proc.poll() is not None:
                raise RuntimeError("backend exited: %s" % self.log_text()[-2000:])
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("backend did not start within %.1fs" % timeout)

    def _control(self, req, timeout=5.0):
        import socket
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=timeout) as s:
            s.sendall(json.dumps(req).encode() + b"\n")
            f = s.makefile("rb")
            rep = json.loads(f.readline())
        if not rep.get("ok"):
            raise RuntimeError("backend control: %s" % rep.get("error"))
        return rep

    def set(self, **opts):
        """Change behaviour at run time (same keys as the constructor)."""
        self._control(dict(opts, op="set"))
        self.opts.update(opts)

    def stats(self):
        return self._control({"op": "stats"})["stats"]

    def reset_stats(self):
        self._control({"op": "reset_stats"})

    def messages(self):
        """Stored messages, oldest first."""
        names = sorted(n for n in os.listdir(self.spool) if n.endswith(".msg"))
        return [Message(os.path.join(self.spool, n)) for n in names]

    def log_text(self):
        with open(self.logfile, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def kill(self):
        """SIGKILL, as a crash (no goodbye to the connections)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout=5.0):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        if self.proc:
            self._log.close()
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv):
    args, opts = parse_args(argv)
    try:
        asyncio.run(serve(args, opts))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
