#!/usr/bin/env python3
"""bench_avcheck.py PORT LABEL - does the SMTP server on 127.0.0.1:PORT scan?

Used by tests/bench.sh peers-av before measuring: one session, two
transactions from bench@client.bench.test to rcpt@bench.test (the sender
and recipient smtp-source uses). The first body carries the EICAR test
string and must be refused with a 5xx reply to the end of DATA; the second
is clean and must get a 2xx. Prints both replies; exit status 0 only if
both are as expected. (The EICAR string is built from pieces, so no file
holds it whole.)
"""
import socket
import sys

EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*")


def main():
    port, label = int(sys.argv[1]), sys.argv[2]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline().decode("latin-1")
                if not line:
                    return "(connection closed)"
                if line[3:4] != "-":
                    return line.strip()

        def cmd(line):
            s.sendall(line.encode() + b"\r\n")
            return reply()

        def send(subject, body):
            for c in ("MAIL FROM:<bench@client.bench.test>", "RCPT TO:<rcpt@bench.test>", "DATA"):
                r = cmd(c)
                if not r[:1] in "23":
                    return "%s -> %s" % (c, r)
            msg = ("From: <bench@client.bench.test>\r\nTo: <rcpt@bench.test>\r\n"
                   "Subject: %s\r\n\r\n%s\r\n.\r\n" % (subject, body))
            s.sendall(msg.encode())
            return reply()

        reply()
        cmd("EHLO client.bench.test")
        infected = send("bench eicar", EICAR)
        if not infected.startswith("221"):
            cmd("RSET")
        clean = send("bench clean", "a clean test message\r\n")
        cmd("QUIT")
    print("%s: EICAR -> %s; clean -> %s" % (label, infected, clean))
    ok = infected.startswith("5") and clean.startswith("2")
    if not ok:
        print("%s: does not scan as expected (EICAR must get 5xx, a clean message 2xx)" % label,
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
