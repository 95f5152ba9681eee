"""galera.py - a 3-node MariaDB Galera cluster on loopback ports, owned by
a test (packages mariadb-server, galera-4 and rsync for the rsync SST).

    g = Galera(nodes=3).start()     # in a fresh directory under /tmp   # node 1 bootstraps, 2 and 3 join
    g.port(i), g.sql(i, q), g.kill(i), g.restart(i), g.stop()

Each node has its own datadir, socket, SQL port and the three Galera ports
(group communication, IST, SST). Grants are skipped (no users to make):
the cluster listens on 127.0.0.1 only and lives as long as the test.
Every process is started by PID and stopped by it, node 1 last.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time

from harness import free_port

MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db")
PROVIDER = "/usr/lib/galera/libgalera_smm.so"


def missing():
    """Why the cluster cannot run here, or None."""
    if not INSTALL_DB or not os.path.exists(MARIADBD):
        return "mariadb-server is not installed"
    if not os.path.exists(PROVIDER):
        return "galera-4 is not installed (%s missing)" % PROVIDER
    if not shutil.which("rsync"):
        return "rsync (the SST method) is not installed"
    return None


class Node:
    def __init__(self, d, i):
        self.i = i
        self.dir = os.path.join(d, "node%d" % i)
        self.data = os.path.join(self.dir, "data")
        self.sock = os.path.join(self.dir, "mysqld.sock")
        self.log = os.path.join(self.dir, "mariadbd.log")
        self.cnf = os.path.join(self.dir, "my.cnf")
        self.port, self.gport, self.ist, self.sst = (free_port() for _ in range(4))
        self.proc = None


class Galera:
    def __init__(self, d=None, nodes=3):
        # The rsync SST's daemon on a joiner runs as nobody when started
        # by root: its datadir must be reachable and writable by nobody,
        # so the cluster lives in a directory of its own under /tmp (a
        # pytest tmp_path sits below a 0700 directory).
        self.dir = tempfile.mkdtemp(prefix="perimd-galera-", dir=d)
        os.chmod(self.dir, 0o711)
        self.nodes = [Node(self.dir, i) for i in range(nodes)]

    def _write_cnf(self, n):
        os.makedirs(n.data, exist_ok=True)
        os.chmod(n.dir, 0o711)
        if n.i and os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(n.data, nobody.pw_uid, nobody.pw_gid)
        gcomm = ",".join("127.0.0.1:%d" % m.gport for m in self.nodes)
        # The eviction timeouts are Galera's defaults (a SIGKILLed node
        # stalls commits ~5 s on the others), so perimd meets what a
        # site meets.
        lines = [
            "[mysqld]",
            "datadir=%s" % n.data, "socket=%s" % n.sock, "port=%d" % n.port,
            "bind-address=127.0.0.1", "pid-file=%s" % os.path.join(n.dir, "mariadbd.pid"),
            "log-error=%s" % n.log, "skip-grant-tables", "max-connections=100",
            "innodb-buffer-pool-size=16M", "innodb-log-file-size=16M",
            "binlog_format=ROW", "default_storage_engine=InnoDB", "innodb_autoinc_lock_mode=2",
            "wsrep_on=ON", "wsrep_provider=%s" % PROVIDER,
            "wsrep_cluster_name=perimd_test",
            "wsrep_cluster_address=gcomm://%s" % gcomm,
            "wsrep_node_address=127.0.0.1:%d" % n.gport,
            "wsrep_node_name=node%d" % n.i,
            "wsrep_provider_options=\"gmcast.listen_addr=tcp://127.0.0.1:%d;"
            "ist.recv_addr=127.0.0.1:%d;gcache.size=32M\"" % (n.gport, n.ist),
            "wsrep_sst_method=rsync",
            "wsrep_sst_receive_address=127.0.0.1:%d" % n.sst,
        ]
        if os.geteuid() == 0:
            lines.append("user=root")
        with open(n.cnf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def _spawn(self, n, bootstrap=False):
        args = [MARIADBD, "--defaults-file=" + n.cnf]
        if bootstrap:
            args.append("--wsrep-new-cluster")
        n.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, cwd=n.dir)

    def status(self, i, name):
        """A wsrep status variable of node i (None when it does not answer)."""
        r = self._client(i, "SHOW STATUS LIKE '%s'" % name, timeout=5)
        if r.returncode:
            return None
        parts = r.stdout.decode().split()
        return parts[1] if len(parts) >= 2 else None

    def _client(self, i, q, timeout=30, db=None):
        args = ["mariadb", "--no-defaults", "-S", self.nodes[i].sock, "-u", "root", "-N", "-B"]
        if db:
            args.append(db)
        return subprocess.run(args, input=q.encode(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)

    def sql(self, i, q, db=None):
        """Run q on node i; its tab-separated output."""
        r = self._client(i, q, db=db)
        assert r.returncode == 0, "node%d: %s: %s" % (i, q[:200], r.stdout.decode()[-2000:])
        return r.stdout.decode()

    def _wait_synced(self, i, timeout):
        n = self.nodes[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if n.proc.poll() is not None:
                raise AssertionError("node%d exited:\n%s" % (i, self.log_tail(i)))
            if self.status(i, "wsrep_local_state_comment") == "Synced":
                return
            time.sleep(0.2)
        raise AssertionError("node%d never synced:\n%s" % (i, self.log_tail(i)))

    def log_tail(self, i, n=3000):
        try:
            with open(self.nodes[i].log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def start(self, timeout=60):
        for n in self.nodes:
            self._write_cnf(n)
        first = self.nodes[0]
        subprocess.run([INSTALL_DB, "--no-defaults", "--datadir=" + first.data,
                        "--auth-root-authentication-method=normal", "--skip-test-db",
                        "--user=" + ("root" if os.geteuid() == 0 else os.environ.get("USER", ""))],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       timeout=120)
        self._spawn(first, bootstrap=True)
        self._wait_synced(0, timeout)
        # Joiners one at a time (each takes the datadir by rsync SST).
        for n in self.nodes[1:]:
            self._spawn(n)
            self._wait_synced(n.i, timeout)
        return self

    def port(self, i):
        return self.nodes[i].port

    def kill(self, i):
        """SIGKILL node i: no goodbye to its peers or clients."""
        n = self.nodes[i]
        n.proc.kill()
        n.proc.wait(10)
        n.proc = None

    def restart(self, i, timeout=60):
        """Start a killed node again: it rejoins (IST) and syncs."""
        self._spawn(self.nodes[i])
        self._wait_synced(i, timeout)

    def size(self, i):
        v = self.status(i, "wsrep_cluster_size")
        return int(v) if v else 0

    def stop(self):
        for n in reversed(self.nodes):
            if n.proc and n.proc.poll() is None:
                n.proc.terminate()
                try:
                    n.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(10)
            n.proc = None
        if not os.environ.get("GALERA_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
