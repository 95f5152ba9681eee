#!/usr/bin/python3
"""bench_tls.py - TLS figures for tests/bench.sh (never run by the tests).

  bench_tls.py handshakes PORT SECONDS WORKERS      STARTTLS handshakes/s
  bench_tls.py throughput PORT MSGS SESSIONS tls|plain   messages/s
  bench_tls.py idle PID PORT N tls|plain            kB of perimd RSS per idle session

The clients are processes (handshakes) or threads with Python's ssl; every
socket has a timeout and every loop a bound."""

import multiprocessing
import socket
import ssl
import sys
import threading
import time

CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def reply(f):
    """Read one SMTP reply; its code."""
    while True:
        l = f.readline()
        if not l:
            raise EOFError
        if len(l) < 4 or l[3:4] != b"-":
            return int(l[:3])


def session(port, tls):
    """A greeted session, after EHLO (and STARTTLS + EHLO with tls)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = s.makefile("rb")
    assert reply(f) == 220
    s.sendall(b"EHLO bench.test\r\n")
    assert reply(f) == 250
    if tls:
        s.sendall(b"STARTTLS\r\n")
        assert reply(f) == 220
        s = CTX.wrap_socket(s, server_hostname="perimd.bench.test")
        f = s.makefile("rb")
        s.sendall(b"EHLO bench.test\r\n")
        assert reply(f) == 250
    return s, f


def hs_worker(port, seconds, out):
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        s, f = session(port, True)
        s.sendall(b"QUIT\r\n")
        reply(f)
        s.close()
        n += 1
    out.put(n)


def handshakes(port, seconds, workers):
    q = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=hs_worker, args=(port, seconds, q)) for _ in range(workers)]
    t0 = time.monotonic()
    for p in ps:
        p.start()
    total = sum(q.get(timeout=seconds + 60) for _ in ps)
    for p in ps:
        p.join(10)
    print("%.1f" % (total / (time.monotonic() - t0)))


def throughput(port, msgs, sessions, tls):
    body = b"Subject: bench\r\n\r\n" + b"x" * 500 + b"\r\n.\r\n"
    left = [msgs]
    lock = threading.Lock()
    errors = []

    def run():
        try:
            s, f = session(port, tls)
            while True:
                with lock:
                    if left[0] <= 0:
                        break
                    left[0] -= 1
                s.sendall(b"MAIL FROM:<a@client.bench.test>\r\nRCPT TO:<rcpt@bench.test>\r\nDATA\r\n")
                codes = [reply(f), reply(f), reply(f)]
                s.sendall(body)
                codes.append(reply(f))
                if codes != [250, 250, 354, 250]:
                    errors.append(codes)
                    break
            s.sendall(b"QUIT\r\n")
            s.close()
        except Exception as e:  # noqa: BLE001 - a figure, not a test
            errors.append(repr(e))

    ts = [threading.Thread(target=run) for _ in range(sessions)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    dt = time.monotonic() - t0
    print("%.1f%s" % ((msgs - max(left[0], 0)) / dt, " (errors: %s)" % errors[:3] if errors else ""))


def idle(pid, port, n, tls):
    def rss():
        for l in open("/proc/%d/status" % pid):
            if l.startswith("VmRSS:"):
                return int(l.split()[1])
    before = rss()
    held = [session(port, tls) for _ in range(n)]
    time.sleep(0.5)
    after = rss()
    print("%.1f" % ((after - before) / n))
    for s, _ in held:
        s.close()


if __name__ == "__main__":
    cmd, a = sys.argv[1], sys.argv[2:]
    if cmd == "handshakes":
        handshakes(int(a[0]), float(a[1]), int(a[2]))
    elif cmd == "throughput":
        throughput(int(a[0]), int(a[1]), int(a[2]), a[3] == "tls")
    elif cmd == "idle":
        idle(int(a[0]), int(a[1]), int(a[2]), a[3] == "tls")
