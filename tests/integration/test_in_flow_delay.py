"""test_in_flow_delay.py - in_flow_delay (issue #19, part 4): while the
scans waiting or running reach twice the scanner's workers, DATA waits
before its 354, in arrival order, at most in_flow_delay; a scan's end lets
the first waiting DATA go on; a client that leaves while it waits costs
nothing; a pipelined MAIL, RCPT, DATA gets its 250s and waits for its
354; a DATA whose message ends without a scan passes its turn on at once;
in_flow_delay = 0 never waits; no message is refused or lost.

The real binary, its scanner process (libclamav, test_av.py's database)
with one worker, stopped with SIGSTOP so that scans pile up; smtp-sink as
the backend; the counters read from /metrics.
"""

import os
import select
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import expect, free_port, sink_message, wait_for  # noqa: E402
from test_av import CLEAN, EICAR, SIG_EICAR, libclamav, scanner_pid, send, session  # noqa: E402
from test_scanner_procs import metric, wait_workers  # noqa: E402


def waiting(p):
    return metric(p, "perimd_in_flow_waiting")


def delayed(p, end):
    return metric(p, 'perimd_in_flow_delayed_total{end="%s"}' % end)


def start(perimd_factory, sink, tmp_path, **params):
    """perimd with one scanning worker (backlog limit 2), that worker stopped."""
    conf = dict(av_threads=1, av_timeout="60s", stats_listen="127.0.0.1:%d" % free_port())
    conf.update(params)
    p, _ = libclamav(perimd_factory, sink, tmp_path, **conf)
    _, ws = wait_workers(scanner_pid(p), 1)
    os.kill(ws[0], signal.SIGSTOP)
    return p, ws[0]


def begin(port):
    """A session at its DATA command, sent; the client."""
    c = session(port)
    expect(c.cmd("MAIL FROM:<a@client.test>"), 250)
    expect(c.cmd("RCPT TO:<b@example.com>"), 250)
    c.line("DATA")
    return c


def body(c, data=CLEAN):
    """The body and the final dot after a 354."""
    c.send(data + b".\r\n")


def fill(p):
    """Two messages in the scanner's backlog (limit 2: one worker); their
    clients, waiting for their final replies."""
    held = [begin(p.port) for _ in range(2)]
    for c in held:
        expect(c.reply(), 354)
        body(c)
    return held


def silent(c, seconds=0.3):
    """Nothing came from the server on c (its 354 is held)."""
    return not select.select([c.sock], [], [], seconds)[0] and not c.buf


def test_data_waits_for_the_backlog(perimd_factory, sink, tmp_path):
    """Two messages in the scanner (one held by the stopped worker, one
    queued) fill the backlog: the next two DATA commands get no 354 and
    are counted; one of those clients leaves; once the worker goes on,
    both stored messages get 250, the waiting DATA its 354, then 250, and
    the turn of the one that left passes without harm.
    Nothing expired, and EICAR is still refused after."""
    p, worker = start(perimd_factory, sink, tmp_path, in_flow_delay="10s")
    a, b = begin(p.port), begin(p.port)
    for c in (a, b):
        expect(c.reply(), 354)
        body(c)
    # Both are in the scanner's backlog: the next DATA waits.
    c3 = begin(p.port)
    assert wait_for(lambda: waiting(p) == 1, 10)
    assert silent(c3), "354 while the backlog was full"
    c4 = begin(p.port)
    assert wait_for(lambda: waiting(p) == 2, 10)
    c4.close()  # leaves while it waits (unseen while its reading is paused)
    os.kill(worker, signal.SIGCONT)
    for c in (a, b):
        expect(c.reply(30), 250)
    expect(c3.reply(30), 354)
    body(c3)
    expect(c3.reply(30), 250)
    sink.wait_count(3, 30)
    # c4's turn came too: its 354 met a closed connection.
    assert wait_for(lambda: waiting(p) == 0, 10)
    assert (delayed(p, "released"), delayed(p, "expired")) == (2, 0)
    for c in (a, b, c3):
        c.close()
    with session(p.port) as c:
        expect(send(c, EICAR + b"\r\n"), 554, "5.7.1", SIG_EICAR)
        expect(send(c, CLEAN), 250)
    assert sink.count() == 4


def test_waits_in_arrival_order(perimd_factory, sink, tmp_path):
    """Three DATA commands wait; as the stopped worker's scans end one by
    one, they get their 354s in the order they came."""
    p, worker = start(perimd_factory, sink, tmp_path, in_flow_delay="10s")
    held = fill(p)
    queued = []
    for i in range(3):
        queued.append(begin(p.port))
        assert wait_for(lambda: waiting(p) == i + 1, 10)
    os.kill(worker, signal.SIGCONT)
    order = []
    deadline = time.monotonic() + 30
    while len(order) < 3:
        assert time.monotonic() < deadline, order
        socks = {c.sock: i for i, c in enumerate(queued) if i not in order}
        for s in select.select(list(socks), [], [], 0.5)[0]:
            i = socks[s]
            expect(queued[i].reply(), 354)
            order.append(i)
            body(queued[i])
    assert order == [0, 1, 2], order
    assert delayed(p, "released") == 3 and waiting(p) == 0
    for c in held + queued:
        expect(c.reply(30), 250)
        c.close()
    sink.wait_count(5, 30)


def test_expires_after_in_flow_delay(perimd_factory, sink, tmp_path):
    """With the worker kept stopped, a waiting DATA gets its 354 once
    in_flow_delay (1 s) passed, counted as expired; its message is scanned
    and relayed when the worker goes on."""
    p, worker = start(perimd_factory, sink, tmp_path, in_flow_delay="1s")
    held = fill(p)
    c3 = begin(p.port)
    t0 = time.monotonic()
    expect(c3.reply(15), 354)
    waited = time.monotonic() - t0
    assert (delayed(p, "expired"), delayed(p, "released"), waiting(p)) == (1, 0, 0)
    assert waited >= 0.8, waited
    body(c3)
    os.kill(worker, signal.SIGCONT)
    for c in held + [c3]:
        expect(c.reply(30), 250)
        c.close()
    sink.wait_count(3, 30)


def test_zero_never_waits(perimd_factory, sink, tmp_path):
    """in_flow_delay = 0: DATA gets its 354 however full the backlog."""
    p, worker = start(perimd_factory, sink, tmp_path, in_flow_delay="0")
    cs = [begin(p.port) for _ in range(4)]
    for c in cs:
        expect(c.reply(10), 354)
        body(c)
    assert (waiting(p), delayed(p, "released"), delayed(p, "expired")) == (0, 0, 0)
    os.kill(worker, signal.SIGCONT)
    for c in cs:
        expect(c.reply(30), 250)
        c.close()
    sink.wait_count(4, 30)


def test_pipelined_data_waits(perimd_factory, sink, tmp_path):
    """A client pipelining MAIL, RCPT and DATA (RFC 2920, as Postfix's smtp
    client does) while the backlog is full gets its two 250s at once and
    its 354 only when a scan ended; its message is then relayed whole."""
    p, worker = start(perimd_factory, sink, tmp_path, in_flow_delay="10s")
    held = fill(p)
    c = session(p.port)
    c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n")
    expect(c.reply(10), 250)
    expect(c.reply(10), 250)
    assert wait_for(lambda: waiting(p) == 1, 10)
    assert silent(c), "354 while the backlog was full"
    os.kill(worker, signal.SIGCONT)
    expect(c.reply(30), 354)
    body(c, b"Subject: pipelined\r\n\r\n.leading dot\r\n".replace(b"\r\n.", b"\r\n.."))
    expect(c.reply(30), 250)
    for h in held:
        expect(h.reply(30), 250)
        h.close()
    c.close()
    sink.wait_count(3, 30)
    bodies = [sink_message(m)[1] for m in sink.messages()]
    assert any(b.endswith(b"Subject: pipelined\n\n.leading dot\n") for b in bodies), bodies


def test_turn_without_a_scan_passes_on(perimd_factory, sink, tmp_path):
    """A DATA that had its turn and whose message ends without a scan
    (refused at the final dot: over message_size_limit) lets the next
    waiting DATA go on at once, not after in_flow_delay. The worker stays
    stopped: a's scan ends by av_timeout (451), b's a second later; c4's
    354 must come between the two, from c3's refusal alone."""
    p, worker = start(perimd_factory, sink, tmp_path, in_flow_delay="30s", av_timeout="3s",
                      message_size_limit="4096")
    a, b = begin(p.port), begin(p.port)
    expect(a.reply(), 354)
    expect(b.reply(), 354)
    body(a)
    time.sleep(1.5)  # b's scan starts later than a's: its timeout comes 1.5 s after
    body(b)
    c3 = begin(p.port)
    assert wait_for(lambda: waiting(p) == 1, 10)
    c4 = begin(p.port)
    assert wait_for(lambda: waiting(p) == 2, 10)
    expect(a.reply(30), 451, "4.3.0")  # a's scan timed out: c3's turn
    expect(c3.reply(10), 354)
    body(c3, b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 80)
    expect(c3.reply(10), 552, "5.3.4")
    expect(c4.reply(1.0), 354)  # before b's scan times out
    assert b.reply(0) is None, "b's scan ended first: the test proves nothing"
    expect(b.reply(30), 451, "4.3.0")
    assert (delayed(p, "released"), delayed(p, "expired")) == (2, 0)
    os.kill(worker, signal.SIGCONT)
    body(c4)
    expect(c4.reply(30), 250)
    for c in (a, b, c3, c4):
        c.close()
