"""postfix_instance.py - a private Postfix instance for tests: its own
config_directory, queue and data directories under /tmp (the postfix user
must reach them, which pytest's private tmp_path does not allow), smtpd on
a loopback port, nothing chrooted, logging to a file (maillog_file).

    pf = PostfixInstance(smtp_port, main_cf_text, files={"name": text})
    pf.start(); ...; pf.log_text(); pf.stop()

main_cf_text is appended to the instance's own settings (directories,
loopback, logging); "{dir}" in it and in the files is the instance's
directory, where files= are written first (maps, access tables)."""

import os
import re
import shutil
import socket
import subprocess
import tempfile

from harness import wait_for

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"
MASTER_PROTO = "/etc/postfix/master.cf.proto"


def postfix_available():
    return os.path.exists(MASTER_PROTO) and os.path.exists(POSTFIX)


class PostfixInstance:
    def __init__(self, smtp_port, main_cf, files=None, master_extra=""):
        self.dir = tempfile.mkdtemp(prefix="perimd-pf-")
        os.chmod(self.dir, 0o755)
        self.etc = os.path.join(self.dir, "etc")
        self.log = os.path.join(self.dir, "maillog")
        self.port = smtp_port
        for d in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.dir, d))
        shutil.chown(os.path.join(self.dir, "data"), "postfix")
        for name, text in (files or {}).items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text.replace("{dir}", self.dir))
        with open(MASTER_PROTO) as f:
            master = f.read()
        master = re.sub(r"(?m)^smtp\s+inet\s.*$",
                        "127.0.0.1:%d inet n - n - - smtpd" % smtp_port, master)
        master = re.sub(r"(?m)^(\S+\s+(?:unix|unix-dgram|fifo|pass)\s+\S+\s+\S+\s+)y\b", r"\1n",
                        master)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(master + master_extra)
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write("""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
maillog_file = {log}
maillog_file_prefixes = /tmp
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pf.test
mydestination =
smtp_dns_support_level = disabled
""".format(d=self.dir, log=self.log) + main_cf.replace("{dir}", self.dir))

    def postmap(self, name):
        """postmap(1) a file written by files= (for hash: maps)."""
        subprocess.run([POSTMAP, "-c", self.etc, os.path.join(self.dir, name)], check=True,
                       capture_output=True, timeout=30)

    def start(self):
        r = subprocess.run([POSTFIX, "-c", self.etc, "start"], capture_output=True, text=True,
                           timeout=60, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise RuntimeError("postfix start: %s %s %s" % (r.stdout, r.stderr, self.log_text()))

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    return s.recv(100).startswith(b"220")
            except OSError:
                return False
        if not wait_for(up, 20):
            raise RuntimeError("postfix smtpd not answering: %s" % self.log_text()[-2000:])
        return self

    def log_text(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        subprocess.run([POSTFIX, "-c", self.etc, "stop"], capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)
