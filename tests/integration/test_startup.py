"""test_startup.py - start-up faults (issue 13, item 10), run against the
real binary:

- without -c, a missing default configuration file is an error for
  perimd, -t and -n (run in a mount namespace where /etc/perimd is hidden
  or absent, so the test does not depend on the machine);
- a second perimd on an address the first one listens on (smtpd_listen,
  stats_listen, policy_listen) refuses to start, naming the address, and
  the first keeps serving;
- a TLS key mail_owner cannot read is warned about at -t and at start;
- the certificate's notAfter and the last TLS (re)load's time and result
  are metrics."""

import calendar
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from harness import PERIMD_BIN, Client, Perimd, free_port, wait_for

DEFAULT_CONF = "/etc/perimd/perimd.conf"


def run(args, timeout=30, **kw):
    return subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
                          **kw)


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def not_after(cert):
    """The certificate's notAfter as Unix time, from openssl x509 -enddate."""
    out = subprocess.run(["openssl", "x509", "-enddate", "-noout", "-in", cert],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    when = out.strip().split("=", 1)[1]
    return calendar.timegm(time.strptime(when, "%b %d %H:%M:%S %Y %Z"))


def metrics(port):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    out = {}
    for line in data.decode("utf-8", "replace").split("\r\n\r\n", 1)[1].splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


# ---- (a) the default configuration file ----------------------------------


def in_namespace_without_default(args):
    """Run perimd ARGS (no -c) where /etc/perimd/perimd.conf does not exist:
    a private mount namespace with a tmpfs over /etc/perimd when the
    machine has that directory. Exit 99: the file could not be hidden."""
    script = ('[ -d /etc/perimd ] && { mount -t tmpfs perimd-test /etc/perimd || exit 98; }; '
              '[ -e %s ] && exit 99; exec "$@"' % DEFAULT_CONF)
    return run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                PERIMD_BIN] + args)


@pytest.fixture(scope="module")
def namespaces():
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    r = run(["unshare", "-m", "true"])
    if r.returncode != 0:
        pytest.skip("no mount namespaces here: %s" % r.stderr.decode(errors="replace"))


@pytest.mark.parametrize("args", [[], ["-t"], ["-n"], ["-f", "-o", "log_to=stderr"]])
def test_missing_default_config_is_an_error(namespaces, args):
    r = in_namespace_without_default(args)
    assert r.returncode not in (98, 99), r.stderr
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.decode()
    assert "the default configuration file %s does not exist" % DEFAULT_CONF in err, err
    assert "-c FILE" in err
    assert r.stdout == b""          # -n printed nothing: no defaults passed off as a config


def test_defaults_still_for_d_and_an_empty_file(namespaces, tmp_path):
    r = in_namespace_without_default(["-d"])
    assert r.returncode == 0 and b"smtpd_listen = " in r.stdout, r.stderr
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    r = run([PERIMD_BIN, "-t", "-c", str(empty)])
    assert r.returncode == 0, r.stderr
    r = run([PERIMD_BIN, "-n", "-c", "/dev/null"])
    assert r.returncode == 0 and r.stdout == b"", r.stderr


def test_explicit_missing_file_is_an_error(tmp_path):
    r = run([PERIMD_BIN, "-t", "-c", str(tmp_path / "nope.conf")])
    assert r.returncode == 1
    assert re.search(rb"nope\.conf: cannot open: No such file", r.stderr), r.stderr


# ---- (b) a second daemon on the same addresses ---------------------------


def start_second(tmp_path, name, **params):
    """A second perimd in the foreground: its exit status and output
    (it must refuse and exit; a started one is stopped and fails the test)."""
    p = Perimd(tmp_path / name, **params)
    proc = subprocess.Popen([PERIMD_BIN, "-f", "-c", p.conf_path], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        pytest.fail("the second perimd (%s) started instead of refusing" % name)
    return proc.returncode, out.decode("utf-8", "replace")


def still_serves(p, n=8):
    """n connections in a row all get p's banner and an answer."""
    for _ in range(n):
        with Client(p.port) as c:
            assert c.banner and c.banner[0] == 220, c.banner
            assert c.cmd("NOOP")[0] == 250
    assert p.proc.poll() is None


def test_second_instance_same_smtp_address_refused(perimd_factory, tmp_path):
    first = perimd_factory()
    addr = first.params["smtpd_listen"]
    rc, out = start_second(tmp_path, "second", smtpd_listen=addr)
    assert rc != 0, out
    assert re.search(r"smtpd_listen %s: cannot listen on \[127\.0\.0\.1\]:%d: Address already in use"
                     % (re.escape(addr), first.port), out), out
    assert "started" not in out
    still_serves(first)


def test_second_instance_any_address_overlap_refused(perimd_factory, tmp_path):
    """*:PORT overlaps the first one's 127.0.0.1:PORT."""
    first = perimd_factory()
    rc, out = start_second(tmp_path, "second", smtpd_listen="*:%d" % first.port)
    assert rc != 0 and "Address already in use" in out and "smtpd_listen *:%d" % first.port in out, out
    still_serves(first)


def test_second_instance_same_stats_or_policy_address_refused(perimd_factory, tmp_path):
    policy = "127.0.0.1:%d" % free_port()
    first = perimd_factory(policy_listen=policy)
    rc, out = start_second(tmp_path, "stats", stats_listen=first.params["stats_listen"])
    assert rc != 0, out
    assert "stats_listen %s: cannot listen on" % first.params["stats_listen"] in out, out
    assert "Address already in use" in out
    rc, out = start_second(tmp_path, "policy", policy_listen=policy)
    assert rc != 0, out
    assert "policy_listen %s: cannot listen on" % policy in out and "in use" in out, out
    still_serves(first)
    # The policy service of the first one still answers on its own.
    with socket.create_connection(("127.0.0.1", int(policy.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address=127.0.0.1\n"
                  b"sender=a@client.test\nrecipient=b@example.com\n\n")
        s.settimeout(10)
        assert s.recv(4096).startswith(b"action=")


def test_restart_on_the_same_address_after_stop(perimd_factory, tmp_path):
    """The probe does not get in the way of a plain restart."""
    first = perimd_factory()
    first.stop()
    again = perimd_factory(smtpd_listen=first.params["smtpd_listen"],
                           stats_listen=first.params["stats_listen"])
    still_serves(again, 2)


# ---- (c) TLS files, mail_owner and the metrics ---------------------------


@pytest.fixture
def world_dir():
    """A directory every user can traverse (pytest's tmp_path is 0700), for
    files mail_owner must reach; removed afterwards."""
    d = tempfile.mkdtemp(prefix="perimd-startup-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_cert(d, name, days):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", name + ".key", "-out", name + ".crt", "-days", str(days),
            "-subj", "/CN=perimd.test", cwd=d)
    os.chmod(os.path.join(d, name + ".crt"), 0o644)
    os.chmod(os.path.join(d, name + ".key"), 0o600)
    return os.path.join(d, name + ".crt"), os.path.join(d, name + ".key")


@pytest.fixture
def nobody():
    if os.geteuid() != 0:
        pytest.skip("needs root: mail_owner is taken only when started as root")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")


def test_key_unreadable_by_mail_owner_warned_at_check_and_start(nobody, world_dir):
    crt, key = make_cert(world_dir, "srv", 3)
    p = Perimd(os.path.join(world_dir, "p"), mail_owner="nobody", smtpd_tls_cert_file=crt,
               smtpd_tls_key_file=key)
    for d in (p.dir, p.params["data_directory"], p.params["body_spool_directory"]):
        os.chmod(d, 0o755)
    want = re.compile(r"mail_owner nobody cannot read smtpd_tls_key_file %s: Permission denied"
                      % re.escape(key))
    r = run([PERIMD_BIN, "-t", "-c", p.conf_path])
    assert r.returncode == 0, r.stderr            # a warning, not an error
    err = r.stderr.decode()
    assert want.search(err) and "warning" in err, err
    assert "smtpd_tls_cert_file" not in err, err  # the certificate is world-readable
    p.start()
    try:
        p.wait_log(want.pattern)
        assert "running as nobody" in p.log_text()
        # And the warning was right: a SIGHUP as nobody cannot reload the key.
        p.proc.send_signal(signal.SIGHUP)
        p.wait_log(r"TLS certificates and keys not reloaded")
    finally:
        p.stop()
    # Readable through its group: no warning.
    os.chown(key, 0, nobody.pw_gid)
    os.chmod(key, 0o640)
    r = run([PERIMD_BIN, "-t", "-c", p.conf_path])
    assert r.returncode == 0 and b"cannot read" not in r.stderr, r.stderr


def test_cert_expiry_and_reload_metrics(perimd_factory, world_dir):
    crt, key = make_cert(world_dir, "srv", 3)
    stats = free_port()
    t_start = int(time.time())
    p = perimd_factory(stats_listen="127.0.0.1:%d" % stats, smtpd_tls_cert_file=crt,
                       smtpd_tls_key_file=key)
    series = 'perimd_tls_certificate_expiry_timestamp_seconds{file="%s"}' % crt
    m = metrics(stats)
    old = not_after(crt)
    assert m[series] == old
    assert m["perimd_tls_reload_success"] == 1
    assert t_start <= m["perimd_tls_reload_last_timestamp_seconds"] <= time.time() + 1
    first = m["perimd_tls_reload_last_timestamp_seconds"]

    # A failing reload: a key that does not parse.
    with open(key, "wb") as f:
        f.write(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    time.sleep(1.1)   # the metric has 1 s resolution: let the second tick
    t_bad = int(time.time())
    p.proc.send_signal(signal.SIGHUP)
    p.wait_log(r"TLS certificates and keys not reloaded")
    m = wait_for(lambda: (lambda x: x if x["perimd_tls_reload_success"] == 0 else None)(
        metrics(stats)), 10)
    assert m, "perimd_tls_reload_success stayed 1 after a failed reload"
    assert m["perimd_tls_reload_last_timestamp_seconds"] >= t_bad > first
    assert m[series] == old                       # the old certificate stays

    # A succeeding reload with a new certificate (other notAfter).
    new_crt, new_key = make_cert(world_dir, "new", 10)
    shutil.copy(new_crt, crt)
    shutil.copy(new_key, key)
    time.sleep(1.1)
    t_good = int(time.time())
    p.proc.send_signal(signal.SIGHUP)
    m = wait_for(lambda: (lambda x: x if x["perimd_tls_reload_success"] == 1 else None)(
        metrics(stats)), 10)
    assert m, "perimd_tls_reload_success stayed 0 after a good reload"
    assert m["perimd_tls_reload_last_timestamp_seconds"] >= t_good
    assert m[series] == not_after(new_crt) != old
