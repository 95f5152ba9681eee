/*
 * scanner_gen.c - a generation of the scanner: one process that loads and
 * compiles a libclamav engine and forks the worker processes that scan
 * with it (see scanner_int.h for its messages, scanner.c for the
 * dispatcher that starts it).
 *
 * Invariants:
 * - A generation is forked by the single-threaded dispatcher and is
 *   single-threaded itself (libclamav starts no thread to load or
 *   compile), so its forks are safe. Its workers share the compiled
 *   engine's pages copy-on-write: memory holds one engine per generation,
 *   and each worker is a single-threaded process, so libclamav's global
 *   fmap mutex is never contended and an munmap interrupts no other CPU.
 * - Generation and workers die with their parent (PR_SET_PDEATHSIG) and
 *   keep the scanner's confinement (no new privileges, no core files,
 *   bounded temporary files: inherited through fork).
 * - A worker scans one request at a time, given by the dispatcher, and
 *   answers it on the request's loop socket after it has read the message
 *   and closed the descriptor; its shared slot names the request
 *   meanwhile. A worker that dies (a crash in libclamav) ends only its own
 *   request: the dispatcher answers it SCANNER_ERROR; the generation
 *   removes the worker's temporary directory (libclamav's files of the
 *   crashed scan) and forks a replacement unless it is retired.
 * - Processes exit through _exit(): no atexit work, no libclamav teardown.
 */
#ifndef PERIMD_NO_CLAMAV /* else scanner_none.c */
#include "scanner_int.h"
#include "clock.h"
#include "log.h"

#include <clamav.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* Messages up to this size are scanned from the worker's buffer (scan_fd). */
#define SCAN_BUF_MAX (1 << 20)
#define REPLACE_PER_S 5

struct scanner_limits scanner_limits;
int scanner_nloops;
struct scanner_slot *scanner_slots;
struct scanner_shared *scanner_shared;

/* The engine of this generation (a worker's copy-on-write view of it). */
static struct {
	struct cl_engine *cl;
	unsigned sigs;
	unsigned heuristic; /* cl_scan_options.heuristic of scans on it */
	uint64_t max_file;  /* its MaxFileSize */
} eng;

/* The generation's temporary directory (body_spool_directory); each
 * worker's libclamav writes in its own subdirectory (worker_tmpdir). */
static const char *gen_tmp;

/* A worker's buffer for scan_fd, kept between scans. */
static struct {
	char *p;
	size_t cap;
} sbuf;

/* scanner_ctl_send - one control message to the supervisor. */
void scanner_ctl_send(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof buf)
		n = sizeof buf - 1;
	while (send(SCANNER_CTL_FD, buf, (size_t)n, MSG_NOSIGNAL) < 0 && errno == EINTR)
		;
}

/* scanner_send_fd - one message with a descriptor attached. */
int scanner_send_fd(int sock, const void *buf, size_t len, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (fd >= 0) {
		memset(&cm, 0, sizeof cm);
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof cm.buf;
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof fd);
	}
	ssize_t n;
	while ((n = sendmsg(sock, &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	return n == (ssize_t)len ? 0 : -1;
}

/* scanner_recv_fd - one message and its descriptor, if any. */
long scanner_recv_fd(int sock, void *buf, size_t len, int *fd, int wait)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	struct iovec iov = { buf, len };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf
	};
	*fd = -1;
	ssize_t n;
	while ((n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT))) < 0 && errno == EINTR)
		;
	if (n < 0)
		return -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(fd, CMSG_DATA(c), sizeof *fd);
	if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		errno = EMSGSIZE;
		return -1;
	}
	return (long)n;
}

/* scanner_fsize_limit - temporary files bounded by what a scan may write:
 * the larger of the scan size and four times the message size (decoded
 * parts add up beyond the message), plus room. */
void scanner_fsize_limit(void)
{
	const struct scanner_limits *l = &scanner_limits;
	uint64_t want = l->scan_size > l->max_size * 4 ? l->scan_size : l->max_size * 4;
	struct rlimit rl;
	if (getrlimit(RLIMIT_FSIZE, &rl) < 0)
		return;
	want += 64u << 20;
	if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
		want = rl.rlim_max;
	rl.rlim_cur = (rlim_t)want;
	setrlimit(RLIMIT_FSIZE, &rl);
}

/* engine_build - load and compile this generation's engine from db_dir;
 * 0 or -1 with err. */
static int engine_build(const char *db_dir, const char *tmp_dir, char *err, size_t errlen)
{
	cl_error_t rc = cl_init(CL_INIT_DEFAULT);
	struct cl_engine *cl = rc == CL_SUCCESS ? cl_engine_new() : NULL;
	if (!cl) {
		snprintf(err, errlen, "%s", rc != CL_SUCCESS ? cl_strerror(rc) : "cl_engine_new failed");
		return -1;
	}
	const struct scanner_limits *l = &scanner_limits;
	/* The supervisor has made the scan time limit shorter than
	 * av_timeout: a slow message ends as "not fully scanned"
	 * (Heuristics.Limits.Exceeded.MaxScanTime), not as a killed scanner. */
	cl_engine_set_num(cl, CL_ENGINE_MAX_SCANTIME, (long long)l->scan_time);
	cl_engine_set_num(cl, CL_ENGINE_MAX_FILESIZE, (long long)l->file_size);
	cl_engine_set_num(cl, CL_ENGINE_MAX_SCANSIZE, (long long)l->scan_size);
	cl_engine_set_num(cl, CL_ENGINE_MAX_RECURSION, (long long)l->recursion);
	cl_engine_set_num(cl, CL_ENGINE_MAX_FILES, (long long)l->files);
	if (*tmp_dir)
		cl_engine_set_str(cl, CL_ENGINE_TMPDIR, tmp_dir);
	/* Every body pattern in the Aho-Corasick automaton, none in the
	 * Boyer-Moore matcher (clamscan's --dev-ac-only). The automaton walks
	 * every buffer anyway (libclamav's built-in file-type patterns are in
	 * it), and the Boyer-Moore pass shifts at most one byte at a time
	 * (its shortest pattern is 3 bytes, hashed in blocks of 3), so with
	 * both every scanned byte is walked twice. The same matches either
	 * way: both are exact matchers of the same patterns and offsets.
	 * README "Benchmarks" has the measurements. */
	cl_engine_set_num(cl, CL_ENGINE_AC_ONLY, 1);
	unsigned sigs = 0;
	rc = cl_load(db_dir, cl, &sigs, CL_DB_STDOPT);
	if (rc == CL_SUCCESS)
		rc = cl_engine_compile(cl);
	if (rc != CL_SUCCESS || sigs == 0) {
		snprintf(err, errlen, "%s: %s", db_dir, rc != CL_SUCCESS ? cl_strerror(rc) : "no signatures");
		return -1;
	}
	eng.cl = cl;
	eng.sigs = sigs;
	/* A scan that stops at a limit is reported, never clean (clamd's
	 * AlertExceedsMax); encrypted content as av_alert_encrypted asks. */
	eng.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;
	if (l->encrypted & SCANNER_ENC_ARCHIVE)
		eng.heuristic |= CL_SCAN_HEURISTIC_ENCRYPTED_ARCHIVE;
	if (l->encrypted & SCANNER_ENC_DOC)
		eng.heuristic |= CL_SCAN_HEURISTIC_ENCRYPTED_DOC;
	eng.max_file = l->file_size;
	return 0;
}

/* read_all - len bytes at offset 0 of fd into buf; 0 or -1. */
static int read_all(int fd, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = pread(fd, buf + got, len - got, (off_t)got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

/* scan_fd - scan the message behind fd. A message of up to SCAN_BUF_MAX
 * is read with one pread() into the worker's buffer, kept from scan to
 * scan, and scanned as a memory map: cl_scandesc() instead maps fresh
 * anonymous pages per scan, faults each in and unmaps them again (with
 * musl's allocator a heap buffer would be fresh pages each time too).
 * Larger messages go to cl_scandesc(). Same scan otherwise: libclamav
 * scans a map either way. */
static cl_error_t scan_fd(int fd, const char **virname, struct cl_scan_options *o)
{
	unsigned long scanned = 0;
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size > SCAN_BUF_MAX ||
	    (uint64_t)st.st_size > eng.max_file)
		return cl_scandesc(fd, NULL, virname, &scanned, eng.cl, o);
	size_t len = (size_t)st.st_size;
	if (sbuf.cap < len) {
		free(sbuf.p);
		sbuf.cap = (len + 65535) & ~(size_t)65535;
		sbuf.p = xmalloc(sbuf.cap);
	}
	cl_fmap_t *map = read_all(fd, sbuf.p, len) == 0 ? cl_fmap_open_memory(sbuf.p, len) : NULL;
	if (!map)
		return cl_scandesc(fd, NULL, virname, &scanned, eng.cl, o);
	cl_error_t rc = cl_scanmap_callback(map, NULL, virname, &scanned, eng.cl, o, NULL);
	cl_fmap_close(map);
	return rc;
}

/* scan_one - scan the message behind fd into a (fd is closed here, before
 * the answer goes out). */
static void scan_one(int fd, struct scanner_ans *a)
{
	struct cl_scan_options o;
	memset(&o, 0, sizeof o);
	/* Heuristics (phishing, broken media) as clamd's defaults; every
	 * parser, so MIME parts are decoded and archives opened. The whole
	 * message is scanned raw first by libclamav itself. */
	o.general = CL_SCAN_GENERAL_HEURISTICS;
	o.parse = ~0u;
	o.heuristic = eng.heuristic;
	uint64_t t0 = clock_us();
	const char *virname = NULL;
	cl_error_t rc = scan_fd(fd, &virname, &o);
	uint64_t us = clock_us() - t0;
	a->us = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
	/* Limits reached on a path that returns an error instead of the
	 * heuristic's name are the same "not fully scanned" (av.c). */
	if (rc == CL_ETIMEOUT)
		virname = SCANNER_LIMIT_PREFIX "MaxScanTime";
	else if (rc == CL_EMAXREC)
		virname = SCANNER_LIMIT_PREFIX "MaxRecursion";
	else if (rc == CL_EMAXFILES)
		virname = SCANNER_LIMIT_PREFIX "MaxFiles";
	else if (rc == CL_EMAXSIZE)
		virname = SCANNER_LIMIT_PREFIX "MaxScanSize";
	if (rc == CL_ETIMEOUT || rc == CL_EMAXREC || rc == CL_EMAXFILES || rc == CL_EMAXSIZE)
		rc = CL_VIRUS;
	if (rc == CL_VIRUS && !virname) {
		/* libclamav 1.4 answers a message larger than MaxFileSize
		 * itself with CL_VIRUS but no name. */
		struct stat st;
		if (fstat(fd, &st) == 0 && (uint64_t)st.st_size > eng.max_file)
			virname = SCANNER_LIMIT_PREFIX "MaxFileSize";
	}
	close(fd);
	a->status = rc == CL_VIRUS ? SCANNER_VIRUS : rc == CL_CLEAN ? SCANNER_CLEAN : SCANNER_ERROR;
	if (rc == CL_VIRUS)
		snprintf(a->name, sizeof a->name, "%s", virname ? virname : "unknown");
	else if (rc != CL_CLEAN)
		snprintf(a->name, sizeof a->name, "%s", cl_strerror(rc));
}

/* worker_answer - answer a job on its loop socket, then free the slot;
 * wake the dispatcher if requests wait. */
static void worker_answer(const struct scanner_job *j, struct scanner_ans *a, struct scanner_slot *slot)
{
	if (j->loop >= 0 && j->loop < scanner_nloops)
		while (send(SCANNER_LOOP_FD + j->loop, a, sizeof *a, MSG_NOSIGNAL) < 0 && errno == EINTR)
			;
	/* With the dispatcher's store of backlog then load of busy: one of
	 * the two sees the other's store (both sequentially consistent). */
	__atomic_store_n(&slot->busy, 0, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&scanner_shared->backlog, __ATOMIC_SEQ_CST))
		send(scanner_gen_fd(), "d", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* worker_main - a worker: scan the jobs the dispatcher gives until it
 * says "retire" or its socket ends. */
static void __attribute__((noreturn)) worker_main(struct scanner_slot *slot)
{
	for (;;) {
		struct scanner_job j;
		int fd;
		long n = scanner_recv_fd(scanner_gen_fd(), &j, sizeof j, &fd, 1);
		if (n < 0 && errno == EMSGSIZE)
			continue;
		if (n != (long)sizeof j || fd < 0) {
			if (fd >= 0)
				close(fd);
			_exit(0); /* "retire", or the dispatcher is gone */
		}
		struct scanner_ans a;
		memset(&a, 0, sizeof a);
		a.id = j.id;
		scan_one(fd, &a);
		worker_answer(&j, &a, slot);
	}
}

/* scanner_fork - fork; in the child, sock at scanner_gen_fd(). */
pid_t scanner_fork(int sock)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(0);
	if (dup2(sock, scanner_gen_fd()) < 0)
		_exit(1);
	syscall(SYS_close_range, scanner_gen_fd() + 1u, ~0u, 0u);
	return 0;
}

/* worker_tmpdir - the temporary directory of worker pid. */
static void worker_tmpdir(pid_t pid, char *buf, size_t len)
{
	snprintf(buf, len, "%s/perimd-scan.%d", gen_tmp, (int)pid);
}

/* rm_entry - nftw(): remove one entry, depth first. */
static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *f)
{
	(void)st;
	(void)type;
	(void)f;
	remove(path);
	return 0;
}

/* rm_tree - remove a directory and everything under it. */
static void rm_tree(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* worker_tmp_remove - the temporary files a dead worker left (a crash
 * skips libclamav's own cleanup). */
static void worker_tmp_remove(pid_t pid)
{
	char dir[4096];
	if (!*gen_tmp)
		return;
	worker_tmpdir(pid, dir, sizeof dir);
	rm_tree(dir);
}

/* scanner_tmp_clean - remove the workers' temporary directories a scanner
 * killed as a whole left in tmp_dir. */
void scanner_tmp_clean(const char *tmp_dir)
{
	DIR *d = *tmp_dir ? opendir(tmp_dir) : NULL;
	if (!d)
		return;
	struct dirent *e;
	char path[4096];
	while ((e = readdir(d)))
		if (!strncmp(e->d_name, "perimd-scan.", 12)) {
			snprintf(path, sizeof path, "%s/%s", tmp_dir, e->d_name);
			rm_tree(path);
		}
	closedir(d);
}

/* worker_fork - start worker i; sends the dispatcher its socket. Returns
 * the pid, or -1. */
static pid_t worker_fork(int i, const sigset_t *old)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0)
		return -1;
	pid_t pid = scanner_fork(sv[1]);
	if (pid == 0) {
		prctl(PR_SET_NAME, "perimd-scan");
		signal(SIGCHLD, SIG_DFL);
		sigprocmask(SIG_SETMASK, old, NULL);
		close(SCANNER_CTL_FD);
		char dir[4096];
		worker_tmpdir(getpid(), dir, sizeof dir);
		/* Its copy of the engine only (copy-on-write). */
		if (*gen_tmp && mkdir(dir, 0700) == 0)
			cl_engine_set_str(eng.cl, CL_ENGINE_TMPDIR, dir);
		worker_main(&scanner_slots[i]);
	}
	close(sv[1]);
	if (pid < 0) {
		close(sv[0]);
		return -1;
	}
	char msg[64];
	int n = snprintf(msg, sizeof msg, "worker %d %d", i, (int)pid);
	scanner_send_fd(scanner_gen_fd(), msg, (size_t)n, sv[0]);
	close(sv[0]);
	return pid;
}

/* replace_pace - at most REPLACE_PER_S replacements a second: a worker
 * that dies at once (a broken engine, no memory) is not forked in a loop. */
static void replace_pace(void)
{
	static uint64_t last;
	uint64_t now = clock_ms(), gap = 1000 / REPLACE_PER_S;
	if (last && now - last < gap)
		usleep((useconds_t)((gap - (now - last)) * 1000));
	last = clock_ms();
}

/* gen_reap - reap the workers that ended; replace them unless retired.
 * Returns how many workers still run. */
static int gen_reap(pid_t *pids, int nworkers, int retired, const sigset_t *old)
{
	int st;
	pid_t pid;
	while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
		for (int i = 0; i < nworkers; i++) {
			if (pids[i] != pid)
				continue;
			pids[i] = 0;
			worker_tmp_remove(pid);
			if (WIFSIGNALED(st))
				scanner_ctl_send("log scanning process %d killed by signal %d%s", (int)pid,
						 WTERMSIG(st), retired ? "" : "; replacing it");
			if (!retired)
				replace_pace();
			if (!retired && (pids[i] = worker_fork(i, old)) < 0) {
				pids[i] = 0;
				scanner_ctl_send("log cannot start a scanning process: %s", strerror(errno));
			}
		}
	}
	int alive = 0;
	for (int i = 0; i < nworkers; i++)
		alive += pids[i] > 0;
	return alive;
}

/* gen_run - fork the workers, then replace the ones that die until the
 * dispatcher retires this generation; exit when the last has ended. */
static void __attribute__((noreturn)) gen_run(int nworkers)
{
	sigset_t chld, old;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &old);
	int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	pid_t *pids = xcalloc((size_t)nworkers, sizeof *pids);
	for (int i = 0; i < nworkers; i++)
		if ((pids[i] = worker_fork(i, &old)) < 0) {
			scanner_ctl_send("log cannot start a scanning process: %s", strerror(errno));
			pids[i] = 0;
		}
	char msg[64];
	int n = snprintf(msg, sizeof msg, "ready %u", eng.sigs);
	scanner_send_fd(scanner_gen_fd(), msg, (size_t)n, -1);
	int retired = 0;
	for (;;) {
		struct pollfd pf[2] = { { sfd, POLLIN, 0 }, { retired ? -1 : scanner_gen_fd(), POLLIN, 0 } };
		if (poll(pf, 2, sfd < 0 ? 200 : -1) < 0 && errno != EINTR)
			_exit(1);
		if (pf[1].revents) {
			char buf[64];
			ssize_t r = recv(scanner_gen_fd(), buf, sizeof buf, MSG_DONTWAIT);
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR) ||
			    (r == 6 && !memcmp(buf, "retire", 6)))
				retired = 1;
		}
		if (sfd >= 0 && pf[0].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) > 0)
				;
		}
		if (gen_reap(pids, nworkers, retired, &old) == 0 && retired)
			_exit(0);
	}
}

/* scanner_gen_main - a generation (see scanner_int.h). */
void scanner_gen_main(const char *db_dir, const char *tmp_dir, int nworkers)
{
	prctl(PR_SET_NAME, "perimd-engine");
	gen_tmp = tmp_dir;
	scanner_fsize_limit();
	char err[400];
	if (engine_build(db_dir, tmp_dir, err, sizeof err) < 0) {
		char msg[420];
		int n = snprintf(msg, sizeof msg, "failed %s", err);
		scanner_send_fd(scanner_gen_fd(), msg,
				(size_t)(n < (int)sizeof msg ? n : (int)sizeof msg - 1), -1);
		_exit(0);
	}
	gen_run(nworkers);
}
#endif /* PERIMD_NO_CLAMAV */
