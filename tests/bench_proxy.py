#!/usr/bin/python3
"""bench_proxy.py PORT NEXT_PORT - Postfix answering after the next hop.

A private Postfix instance (tests/integration/postfix_instance.py: its own
config_directory and queue, loopback only, /etc/postfix untouched) whose
smtpd on 127.0.0.1:PORT passes every transaction through smtpd_proxy_filter
to 127.0.0.1:NEXT_PORT (the bench's smtp-sink): the client gets the next
hop's reply to the final dot, as from perimd, and nothing is queued.
smtpd's process limit is PROXY_PROCS (1000, so that every session of the
bench gets one). Runs in the foreground until SIGTERM or SIGINT, then stops
the instance and removes its directory. Used by tests/bench.sh latency (its
"postfix-proxy" row, started as the peer script's PERIMD_CMD)."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "integration"))
from postfix_instance import PostfixInstance  # noqa: E402


def main():
    port, nxt = int(sys.argv[1]), int(sys.argv[2])
    procs = int(os.environ.get("PROXY_PROCS", "1000"))
    main_cf = """relay_domains = bench.test
mynetworks = 127.0.0.0/8
smtpd_proxy_filter = 127.0.0.1:{nxt}
smtpd_proxy_timeout = 300s
smtpd_client_connection_count_limit = 0
smtpd_peername_lookup = no
default_process_limit = {procs}
""".format(nxt=nxt, procs=procs)
    pf = PostfixInstance(port, main_cf)
    done = []
    signal.signal(signal.SIGTERM, lambda *a: done.append(1))
    signal.signal(signal.SIGINT, lambda *a: done.append(1))
    try:
        pf.start()
        print("bench_proxy: Postfix on 127.0.0.1:%d, smtpd_proxy_filter 127.0.0.1:%d, %s"
              % (port, nxt, pf.dir), flush=True)
        while not done:
            time.sleep(0.2)
    finally:
        pf.stop()


if __name__ == "__main__":
    main()
