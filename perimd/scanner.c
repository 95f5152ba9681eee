/*
 * scanner.c - the scanner process: one libclamav engine, av_threads worker
 * threads, the io loops' request sockets and the supervisor's control
 * socket (see scanner.h for the protocol).
 *
 * Invariants:
 * - This process holds no network socket and no key: it is started by
 *   re-executing perimd (so nothing of the threaded parent's state is
 *   inherited), closes every descriptor but its own sockets, and limits
 *   itself (no core files, bounded temporary file size, no new privileges).
 *   It dies with the thread that started it (PR_SET_PDEATHSIG).
 * - The engine in use is reference-counted: a scan holds a reference from
 *   start to end, so a reload swaps a new compiled engine in while scans in
 *   flight finish on the old one, which is freed by the last of them. A
 *   database that fails to load or compile leaves the old engine in place.
 * - With INPLACE (av_reload_mode = inplace) a reload takes the engine
 *   away first, waits for the scans on it to end, frees it and only then
 *   builds the new one: memory never holds two. Scans that arrive
 *   meanwhile wait (engine_get) and are not counted busy, so neither the
 *   hang check nor libclamav's scan time runs for them; av.c does not run
 *   av_timeout while the supervisor says "loading". A failed load leaves
 *   no engine: scans are answered SCANNER_ERROR until a reload (SIGHUP, a
 *   change in the directory) succeeds.
 * - Every request gets exactly one answer on its own socket; the main
 *   thread only reads requests and control messages, the workers scan and
 *   answer. A request's descriptor is not read after its answer is sent:
 *   perimd may then write the next message into the same memfd (spool.c).
 *   The process never exits through exit(): _exit() skips atexit work
 *   (and libclamav's global state) that the parent does not need.
 */
#ifndef PERIMD_NO_CLAMAV /* else scanner_none.c */
#include "scanner.h"
#include "clock.h"
#include "log.h"

#include <clamav.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define DIRCHECK_MS 5000
/* Messages up to this size are scanned from their worker's buffer (scan_fd). */
#define SCAN_BUF_MAX (1 << 20)

/* A worker's buffer for scan_fd, kept between scans. */
struct scan_buf {
	char *p;
	size_t cap;
};

struct engine {
	struct cl_engine *cl;
	unsigned sigs;
	unsigned heuristic; /* cl_scan_options.heuristic of scans on it */
	uint64_t max_file;  /* its MaxFileSize */
	int refs;           /* under eng_mu */
};

struct job {
	struct job *next;
	int sock;
	int fd;
	uint64_t id;
};

static const char *db_dir, *tmp_dir;
static int nthreads;

/* The limits the next engine is built with (scanner_limits_parse); the
 * main thread writes them on "reload LIMITS", a reload thread reads them. */
static pthread_mutex_t lim_mu = PTHREAD_MUTEX_INITIALIZER;
static struct scanner_limits limits;

static pthread_mutex_t eng_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t eng_cv = PTHREAD_COND_INITIALIZER;
static struct engine *engine; /* current; holds one reference; NULL in an inplace load */
static int live;              /* engines not yet freed, under eng_mu */
static int loading;           /* an inplace load runs, under eng_mu */

static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_cv = PTHREAD_COND_INITIALIZER;
static struct job *q_head, *q_tail;

static pthread_mutex_t ctl_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t *busy_since; /* per worker: ms when its scan began, 0 idle */
static int reloading;        /* atomic: a reload thread runs */
static int reload_again;     /* atomic: asked again while it ran */

/* ctl_send - one control message to the supervisor. */
static void ctl_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ctl_send(const char *fmt, ...)
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
	pthread_mutex_lock(&ctl_mu);
	while (send(SCANNER_CTL_FD, buf, (size_t)n, MSG_NOSIGNAL) < 0 && errno == EINTR)
		;
	pthread_mutex_unlock(&ctl_mu);
}

/* scanner_limits_parse - "RECURSION FILES SCAN_SIZE FILE_SIZE SCAN_TIME_MS
 * ENCRYPTED MAX_SIZE" (as av_sup.c writes it) into l; 0 or -1. */
static int scanner_limits_parse(const char *s, struct scanner_limits *l)
{
	unsigned long long v[8];
	int end = 0;
	if (sscanf(s, "%llu %llu %llu %llu %llu %llu %llu %llu%n", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5],
		   &v[6], &v[7], &end) != 8 ||
	    s[end] != 0)
		return -1;
	if (!v[0] || v[0] > 1000 || !v[1] || v[1] > UINT32_MAX || !v[4] || v[4] > UINT32_MAX || v[5] > 3 ||
	    v[7] > 1)
		return -1;
	l->recursion = (uint32_t)v[0];
	l->files = (uint32_t)v[1];
	l->scan_size = v[2];
	l->file_size = v[3];
	l->scan_time = (uint32_t)v[4];
	l->encrypted = (unsigned)v[5];
	l->max_size = v[6];
	l->inplace = (unsigned)v[7];
	return 0;
}

/* engine_build - load and compile a new engine from db_dir. */
static struct engine *engine_build(char *err, size_t errlen)
{
	struct cl_engine *cl = cl_engine_new();
	if (!cl) {
		snprintf(err, errlen, "cl_engine_new failed");
		return NULL;
	}
	pthread_mutex_lock(&lim_mu);
	struct scanner_limits l = limits;
	pthread_mutex_unlock(&lim_mu);
	/* The supervisor has made the scan time limit shorter than
	 * av_timeout: a slow message ends as "not fully scanned"
	 * (Heuristics.Limits.Exceeded.MaxScanTime), not as a killed scanner. */
	cl_engine_set_num(cl, CL_ENGINE_MAX_SCANTIME, (long long)l.scan_time);
	cl_engine_set_num(cl, CL_ENGINE_MAX_FILESIZE, (long long)l.file_size);
	cl_engine_set_num(cl, CL_ENGINE_MAX_SCANSIZE, (long long)l.scan_size);
	cl_engine_set_num(cl, CL_ENGINE_MAX_RECURSION, (long long)l.recursion);
	cl_engine_set_num(cl, CL_ENGINE_MAX_FILES, (long long)l.files);
	if (*tmp_dir)
		cl_engine_set_str(cl, CL_ENGINE_TMPDIR, tmp_dir);
	unsigned sigs = 0;
	cl_error_t rc = cl_load(db_dir, cl, &sigs, CL_DB_STDOPT);
	if (rc == CL_SUCCESS)
		rc = cl_engine_compile(cl);
	if (rc != CL_SUCCESS) {
		snprintf(err, errlen, "%s: %s", db_dir, cl_strerror(rc));
		cl_engine_free(cl);
		return NULL;
	}
	if (sigs == 0) {
		snprintf(err, errlen, "%s: no signatures", db_dir);
		cl_engine_free(cl);
		return NULL;
	}
	struct engine *e = xcalloc(1, sizeof *e);
	e->cl = cl;
	e->sigs = sigs;
	/* A scan that stops at a limit is reported, never clean (clamd's
	 * AlertExceedsMax); encrypted content as av_alert_encrypted asks. */
	e->heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;
	if (l.encrypted & SCANNER_ENC_ARCHIVE)
		e->heuristic |= CL_SCAN_HEURISTIC_ENCRYPTED_ARCHIVE;
	if (l.encrypted & SCANNER_ENC_DOC)
		e->heuristic |= CL_SCAN_HEURISTIC_ENCRYPTED_DOC;
	e->max_file = l.file_size;
	e->refs = 1;
	return e;
}

/* engine_get - the current engine, with a reference; waits while an
 * inplace load runs. NULL: no engine (the last inplace load failed). */
static struct engine *engine_get(void)
{
	pthread_mutex_lock(&eng_mu);
	while (!engine && loading)
		pthread_cond_wait(&eng_cv, &eng_mu);
	struct engine *e = engine;
	if (e)
		e->refs++;
	pthread_mutex_unlock(&eng_mu);
	return e;
}

/* engine_put - drop a reference; the last one frees the engine and gives
 * its memory back to the system. */
static void engine_put(struct engine *e)
{
	pthread_mutex_lock(&eng_mu);
	int last = --e->refs == 0;
	pthread_mutex_unlock(&eng_mu);
	if (!last)
		return;
	cl_engine_free(e->cl);
	free(e);
#ifdef __GLIBC__
	malloc_trim(0);
#endif
	pthread_mutex_lock(&eng_mu);
	live--;
	pthread_cond_broadcast(&eng_cv);
	pthread_mutex_unlock(&eng_mu);
}

/* engine_set - make e (NULL: none) the current engine; wake waiting scans. */
static void engine_set(struct engine *e)
{
	pthread_mutex_lock(&eng_mu);
	struct engine *old = engine;
	engine = e;
	if (e)
		live++;
	loading = 0;
	pthread_cond_broadcast(&eng_cv);
	pthread_mutex_unlock(&eng_mu);
	if (old)
		engine_put(old);
}

/* engine_drop - inplace: take the engine away and wait until every scan
 * on it has ended and it is freed; new scans wait for the next one. */
static void engine_drop(void)
{
	pthread_mutex_lock(&eng_mu);
	struct engine *old = engine;
	engine = NULL;
	loading = 1;
	pthread_mutex_unlock(&eng_mu);
	if (old)
		engine_put(old);
	pthread_mutex_lock(&eng_mu);
	while (live > 0)
		pthread_cond_wait(&eng_cv, &eng_mu);
	pthread_mutex_unlock(&eng_mu);
}

static void reload_start(void);

/* reload_main - build a new engine and swap it in; report the outcome. */
static void *reload_main(void *arg)
{
	char err[512];
	pthread_mutex_lock(&lim_mu);
	int inplace = limits.inplace != 0;
	pthread_mutex_unlock(&lim_mu);
	uint64_t t0 = clock_ms();
	if (inplace) {
		ctl_send("loading");
		engine_drop();
	}
	struct engine *e = engine_build(err, sizeof err);
	if (e)
		engine_set(e);
	else if (inplace)
		engine_set(NULL); /* scans fail (av_fail_action) until a load succeeds */
	if (!e)
		ctl_send("reload-failed %s%s", err,
			 inplace ? "; no engine: scans fail until a load succeeds" : "");
	else
		ctl_send("reloaded %u %llu", e->sigs, (unsigned long long)(clock_ms() - t0));
	__atomic_store_n(&reloading, 0, __ATOMIC_RELEASE);
	/* New limits that came while this engine was built get their own. */
	if (__atomic_exchange_n(&reload_again, 0, __ATOMIC_ACQ_REL))
		reload_start();
	return arg;
}

/* reload_start - start a reload unless one runs already. */
static void reload_start(void)
{
	if (__atomic_exchange_n(&reloading, 1, __ATOMIC_ACQ_REL)) {
		__atomic_store_n(&reload_again, 1, __ATOMIC_RELEASE);
		return;
	}
	pthread_t t;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &a, reload_main, NULL) != 0) {
		__atomic_store_n(&reloading, 0, __ATOMIC_RELEASE);
		ctl_send("reload-failed cannot start a thread");
	}
	pthread_attr_destroy(&a);
}

/* answer - send one answer on the request's socket. */
static void answer(int sock, uint64_t id, int status, uint32_t us, const char *name)
{
	struct scanner_ans a;
	memset(&a, 0, sizeof a);
	a.id = id;
	a.status = status;
	a.us = us;
	snprintf(a.name, sizeof a.name, "%s", name ? name : "");
	while (send(sock, &a, sizeof a, MSG_NOSIGNAL) < 0 && errno == EINTR)
		;
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
 * is read with one pread() into its worker's buffer, kept from scan to
 * scan, and scanned as a memory map. cl_scandesc() instead maps fresh
 * anonymous pages per scan, touches each (the zero page) and then reads
 * into them: a copy-on-write fault per page, each flushing the TLB of
 * every CPU that runs another scanning thread (an IPI; ~8% of the
 * scanner's CPU at 100 KB with two threads), and an munmap per scan; with
 * musl's allocator a heap buffer would be fresh pages each time too.
 * Larger messages go to cl_scandesc(). Same scan otherwise: libclamav
 * scans a map either way. */
static cl_error_t scan_fd(int fd, const char **virname, struct engine *e, struct cl_scan_options *o,
			  struct scan_buf *b)
{
	unsigned long scanned = 0;
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size > SCAN_BUF_MAX ||
	    (uint64_t)st.st_size > e->max_file)
		return cl_scandesc(fd, NULL, virname, &scanned, e->cl, o);
	size_t len = (size_t)st.st_size;
	if (b->cap < len) {
		free(b->p);
		b->cap = (len + 65535) & ~(size_t)65535;
		b->p = xmalloc(b->cap);
	}
	cl_fmap_t *map = read_all(fd, b->p, len) == 0 ? cl_fmap_open_memory(b->p, len) : NULL;
	if (!map)
		return cl_scandesc(fd, NULL, virname, &scanned, e->cl, o);
	cl_error_t rc = cl_scanmap_callback(map, NULL, virname, &scanned, e->cl, o, NULL);
	cl_fmap_close(map);
	return rc;
}

/* scan_one - scan a descriptor with the current engine. */
static void scan_one(struct job *j, uint64_t *busy, struct scan_buf *b)
{
	struct cl_scan_options o;
	memset(&o, 0, sizeof o);
	/* Heuristics (phishing, broken media) as clamd's defaults; every
	 * parser, so MIME parts are decoded and archives opened. The whole
	 * message is scanned raw first by libclamav itself. */
	o.general = CL_SCAN_GENERAL_HEURISTICS;
	o.parse = ~0u;
	struct engine *e = engine_get(); /* an inplace load: waits, not busy */
	uint64_t t0 = clock_us();
	if (!e) {
		answer(j->sock, j->id, SCANNER_ERROR, 0, "no signatures loaded (reload failed)");
		return;
	}
	__atomic_store_n(busy, clock_ms(), __ATOMIC_RELAXED);
	o.heuristic = e->heuristic;
	const char *virname = NULL;
	cl_error_t rc = scan_fd(j->fd, &virname, e, &o, b);
	uint64_t us = clock_us() - t0;
	if (us > UINT32_MAX)
		us = UINT32_MAX;
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
		if (fstat(j->fd, &st) == 0 && (uint64_t)st.st_size > e->max_file)
			virname = SCANNER_LIMIT_PREFIX "MaxFileSize";
	}
	if (rc == CL_VIRUS)
		answer(j->sock, j->id, SCANNER_VIRUS, (uint32_t)us, virname ? virname : "unknown");
	else if (rc == CL_CLEAN)
		answer(j->sock, j->id, SCANNER_CLEAN, (uint32_t)us, NULL);
	else
		answer(j->sock, j->id, SCANNER_ERROR, (uint32_t)us, cl_strerror(rc));
	engine_put(e);
	__atomic_store_n(busy, 0, __ATOMIC_RELAXED);
}

/* worker_main - take requests off the queue and scan them. */
static void *worker_main(void *arg)
{
	uint64_t *busy = arg;
	struct scan_buf b = { NULL, 0 };
	for (;;) {
		pthread_mutex_lock(&q_mu);
		while (!q_head)
			pthread_cond_wait(&q_cv, &q_mu);
		struct job *j = q_head;
		q_head = j->next;
		if (!q_head)
			q_tail = NULL;
		pthread_mutex_unlock(&q_mu);
		scan_one(j, busy, &b);
		close(j->fd);
		free(j);
	}
	return NULL;
}

/* read_request - one request from a loop socket; -1 when it is closed. */
static int read_request(int sock)
{
	struct scanner_req r;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	struct iovec iov = { &r, sizeof r };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf
	};
	ssize_t n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -1;
	if (n == 0)
		return -1;
	int fd = -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
		    c->cmsg_len == CMSG_LEN(sizeof(int)))
			memcpy(&fd, CMSG_DATA(c), sizeof fd);
	if ((size_t)n != sizeof r || fd < 0 || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		if (fd >= 0)
			close(fd);
		answer(sock, (size_t)n >= sizeof r.id ? r.id : 0, SCANNER_ERROR, 0, "bad request");
		return 0;
	}
	struct job *j = xcalloc(1, sizeof *j);
	j->sock = sock;
	j->fd = fd;
	j->id = r.id;
	pthread_mutex_lock(&q_mu);
	if (q_tail)
		q_tail->next = j;
	else
		q_head = j;
	q_tail = j;
	pthread_cond_signal(&q_cv);
	pthread_mutex_unlock(&q_mu);
	return 0;
}

static void fsize_limit(void);

/* control - one message from the supervisor; -1 when it is gone. */
static int control(void)
{
	char buf[256];
	ssize_t n = recv(SCANNER_CTL_FD, buf, sizeof buf - 1, MSG_DONTWAIT);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -1;
	if (n == 0)
		return -1;
	buf[n] = 0;
	if (!strcmp(buf, "ping")) {
		uint64_t now = clock_ms(), oldest = 0;
		int inflight = 0;
		for (int i = 0; i < nthreads; i++) {
			uint64_t b = __atomic_load_n(&busy_since[i], __ATOMIC_RELAXED);
			if (b) {
				inflight++;
				if (now - b > oldest)
					oldest = now - b;
			}
		}
		ctl_send("pong %llu %d", (unsigned long long)oldest, inflight);
	} else if (!strncmp(buf, "reload ", 7)) {
		/* "reload LIMITS": the next engine is built with these. */
		struct scanner_limits l;
		if (scanner_limits_parse(buf + 7, &l) == 0) {
			pthread_mutex_lock(&lim_mu);
			limits = l;
			pthread_mutex_unlock(&lim_mu);
			fsize_limit();
		} else {
			ctl_send("log bad limits in reload: %s; keeping the old ones", buf + 7);
		}
		reload_start();
	} else if (!strcmp(buf, "reload")) {
		reload_start();
	}
	return 0;
}

/* fsize_limit - temporary files bounded by what a scan may write: the
 * larger of the scan size and four times the message size (decoded parts
 * add up beyond the message), plus room. */
static void fsize_limit(void)
{
	pthread_mutex_lock(&lim_mu);
	uint64_t want = limits.scan_size > limits.max_size * 4 ? limits.scan_size : limits.max_size * 4;
	pthread_mutex_unlock(&lim_mu);
	struct rlimit rl;
	if (getrlimit(RLIMIT_FSIZE, &rl) < 0)
		return;
	want += 64u << 20;
	if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
		want = rl.rlim_max;
	rl.rlim_cur = (rlim_t)want;
	setrlimit(RLIMIT_FSIZE, &rl);
}

/* confine - drop what a scanner does not need. */
static void confine(int nfds)
{
	/* Only our sockets (and stdio for the log) stay open. The raw system
	 * call: musl (the static build) has no close_range() wrapper. */
	syscall(SYS_close_range, SCANNER_LOOP_FD + (unsigned)nfds, ~0u, 0u);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	struct rlimit rl = { 0, 0 };
	setrlimit(RLIMIT_CORE, &rl);
	/* Temporary files of decoded parts: bounded; EFBIG instead of a
	 * signal. Only the soft limit: a reload with larger scan limits
	 * raises it again (fsize_limit()). */
	signal(SIGXFSZ, SIG_IGN);
	fsize_limit();
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGINT, SIG_IGN);
}

/* heap_tune - keep libclamav's per-scan allocations (match state sized
 * by the signature count: megabytes with a full database) in the heap
 * instead of an mmap, zeroed pages and munmap per scan: 15-20% less CPU per
 * 512 B message on a 436,000-signature database. Freed engines are still
 * given back (malloc_trim() in engine_put()). */
static void heap_tune(void)
{
#ifdef __GLIBC__
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

/* scanner_version - the libclamav version. */
const char *scanner_version(void)
{
	return cl_retver();
}

/* scanner_main - the scanner process (see scanner.h). */
int scanner_main(int argc, char **argv)
{
	if (argc != 7 || scanner_limits_parse(argv[6], &limits) < 0) {
		fprintf(stderr, "perimd: %s is internal\n", SCANNER_ARG);
		_exit(2);
	}
	db_dir = argv[2];
	tmp_dir = argv[3];
	nthreads = atoi(argv[4]);
	int nloops = atoi(argv[5]);
	if (nthreads <= 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		nthreads = n > 0 ? (int)n : 1;
	}
	if (nloops < 1 || nloops > 1024)
		_exit(2);
	confine(nloops);
	heap_tune();
	if (getppid() == 1)
		_exit(0);

	char err[512];
	uint64_t t0 = clock_ms();
	cl_error_t rc = cl_init(CL_INIT_DEFAULT);
	if (rc != CL_SUCCESS) {
		ctl_send("error cl_init: %s", cl_strerror(rc));
		_exit(1);
	}
	struct engine *first = engine_build(err, sizeof err);
	if (!first) {
		ctl_send("error %s", err);
		_exit(1);
	}
	engine_set(first);
	struct cl_stat dirstat;
	memset(&dirstat, 0, sizeof dirstat);
	cl_statinidir(db_dir, &dirstat);

	busy_since = xcalloc((size_t)nthreads, sizeof *busy_since);
	for (int i = 0; i < nthreads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, worker_main, &busy_since[i]) != 0) {
			ctl_send("error cannot start scanning threads");
			_exit(1);
		}
	}
	ctl_send("ready %u %llu %d", first->sigs, (unsigned long long)(clock_ms() - t0), nthreads);

	struct pollfd *pf = xcalloc((size_t)nloops + 1, sizeof *pf);
	pf[0].fd = SCANNER_CTL_FD;
	pf[0].events = POLLIN;
	for (int i = 0; i < nloops; i++) {
		pf[i + 1].fd = SCANNER_LOOP_FD + i;
		pf[i + 1].events = POLLIN;
	}
	uint64_t next_check = clock_ms() + DIRCHECK_MS;
	for (;;) {
		int n = poll(pf, (nfds_t)nloops + 1, DIRCHECK_MS);
		if (n < 0 && errno != EINTR)
			_exit(1);
		if (pf[0].revents && control() < 0)
			_exit(0); /* the supervisor is gone */
		for (int i = 1; i <= nloops; i++)
			if (pf[i].revents && pf[i].fd >= 0 && read_request(pf[i].fd) < 0)
				pf[i].fd = -1;
		if (clock_ms() >= next_check) {
			next_check = clock_ms() + DIRCHECK_MS;
			/* A changed database directory reloads, as SIGHUP does. */
			if (cl_statchkdir(&dirstat) == 1) {
				cl_statfree(&dirstat);
				cl_statinidir(db_dir, &dirstat);
				ctl_send("log %s changed, reloading signatures", db_dir);
				reload_start();
			}
		}
	}
}
#endif /* PERIMD_NO_CLAMAV */
