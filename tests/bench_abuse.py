#!/usr/bin/python3
"""bench_abuse.py - hostile clients for `./build.sh bench abuse`, until
killed: SLOW slowloris connections (one byte of a command line each second,
reconnecting when closed), FLOOD connections pipelining NOOPs without ever
reading a reply, GARBAGE connections sending bytes with no line end. All
from 127.0.0.2-5 (the well-behaved smtp-source uses 127.0.0.1), all
non-blocking in one thread. Prints one status line per second to stderr.

    bench_abuse.py PORT SLOW FLOOD GARBAGE
"""

import errno
import os
import resource
import selectors
import socket
import sys
import time

port, n_slow, n_flood, n_garbage = (int(x) for x in sys.argv[1:5])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n_slow + 1000)), hard))

sel = selectors.DefaultSelector()
LINE = b"EHLO slowloris.bench.test\r\n"
FLOOD = b"NOOP\r\n" * 10000
GARBAGE = os.urandom(65536).replace(b"\n", b"x")
seq = 0
stats = {"opened": 0, "closed": 0}


def connect(kind):
    global seq
    seq += 1
    s = socket.socket()
    s.setblocking(False)
    s.bind(("127.0.0.%d" % (2 + seq % 4), 0))
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    st = {"kind": kind, "pos": 0}
    ev = selectors.EVENT_READ | (selectors.EVENT_WRITE if kind != "slow" else 0)
    sel.register(s, ev, st)
    stats["opened"] += 1


def drop(s):
    kind = sel.get_key(s).data["kind"]
    sel.unregister(s)
    s.close()
    stats["closed"] += 1
    connect(kind)


for _ in range(n_slow):
    connect("slow")
for _ in range(n_flood):
    connect("flood")
for _ in range(n_garbage):
    connect("garbage")

next_tick = time.monotonic() + 1
while True:
    for key, ev in sel.select(timeout=max(0, next_tick - time.monotonic())):
        s, st = key.fileobj, key.data
        try:
            if ev & selectors.EVENT_READ:
                if st["kind"] == "flood":
                    # A flooder never reads replies; readable means closed.
                    if s.recv(1, socket.MSG_PEEK) == b"":
                        drop(s)
                        continue
                    sel.modify(s, selectors.EVENT_WRITE, st)
                elif s.recv(65536) == b"":
                    drop(s)
                    continue
            if ev & selectors.EVENT_WRITE:
                s.send(FLOOD if st["kind"] == "flood" else GARBAGE)
        except OSError as e:
            if e.errno not in (errno.EAGAIN,):
                drop(s)
    now = time.monotonic()
    if now >= next_tick:
        next_tick = now + 1
        for key in list(sel.get_map().values()):
            st = key.data
            if st["kind"] == "slow":
                try:
                    key.fileobj.send(LINE[st["pos"] % len(LINE):st["pos"] % len(LINE) + 1])
                    st["pos"] += 1
                except OSError:
                    drop(key.fileobj)
        print("abuse: %d open, %d opened, %d closed by the server"
              % (len(sel.get_map()), stats["opened"], stats["closed"]), file=sys.stderr, flush=True)
