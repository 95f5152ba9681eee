"""The parameter table's RESTART column and ENUM choices, end to end.

A SIGHUP that changes a restart-only parameter (RESTART in
perimd/conf_params.h) logs one warning naming each one changed, reloads
the rest, and keeps the running value (the listening socket stays where
it was); a reloadable parameter's change is applied without a warning.
-t refuses an ENUM value outside its choices, naming them.
"""
import signal
import socket
import subprocess
import time

import pytest

from harness import PERIMD_BIN, free_port
from test_deploy import banner, rewrite_conf

WARN = "changed value takes effect after restart"


def hup_and_wait(p, n, timeout=20):
    """Send SIGHUP and wait until n reloads are logged in all."""
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while p.log_text().count("configuration reloaded") < n:
        assert time.monotonic() < deadline, "reload %d never logged:\n%s" % (n, p.log_text()[-2000:])
        time.sleep(0.05)


def test_sighup_warns_restart_only_changes(perimd_factory):
    p = perimd_factory(body_spool_limit="1g", max_sessions="100", io_threads="1")
    # Reloadable only: applied, no warning.
    rewrite_conf(p, max_sessions="50", smtpd_banner="$myhostname ESMTP one")
    hup_and_wait(p, 1)
    assert "one" in banner(p.port)[1]
    assert WARN not in p.log_text()
    # body_spool_limit is restart-only: named in a warning, the rest applies.
    rewrite_conf(p, body_spool_limit="2g", smtpd_banner="$myhostname ESMTP two")
    hup_and_wait(p, 2)
    log = p.log_text()
    assert "reload: body_spool_limit: %s" % WARN in log
    assert log.count(WARN) == 1, log
    assert "two" in banner(p.port)[1]
    # Nothing changed since: no new warning (the comparison is with the
    # running configuration, which now has 2g).
    hup_and_wait(p, 3)
    assert p.log_text().count(WARN) == 1
    # Two at once, each named; the old listener stays, the new is not bound.
    other = free_port()
    rewrite_conf(p, smtpd_listen="127.0.0.1:%d" % other, io_threads="2")
    hup_and_wait(p, 4)
    log = p.log_text()
    assert "reload: smtpd_listen: %s" % WARN in log
    assert "reload: io_threads: %s" % WARN in log
    assert "ESMTP" in banner(p.port)[1]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other), timeout=2).close()


def test_enum_refused_with_choices(perimd_factory):
    p = perimd_factory(start=False)
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path, "-o", "av_oversize_action=drop"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert '"drop" is not one of reject|tempfail|accept' in r.stderr + r.stdout
    r = subprocess.run([PERIMD_BIN, "-t", "-c", p.conf_path, "-o", "av_oversize_action=TEMPFAIL"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
