/*
 * scanner.c - the scanner process: a single-threaded dispatcher between
 * the io loops' request sockets, the supervisor's control socket (see
 * scanner.h for the protocol) and generations of av_threads scanning
 * worker PROCESSES (scanner_gen.c): a generation process loads and
 * compiles one libclamav engine and forks its workers, which share the
 * engine's pages copy-on-write, scan the requests this process gives them
 * and answer on the request's own socket (see scanner_int.h).
 *
 * Why processes: libclamav maps and unmaps its file maps under one global
 * mutex, and in a threaded process every munmap interrupts the CPUs
 * running the other threads (TLB shootdown); single-threaded workers pay
 * neither. And a worker that crashes on a message ends only that message.
 *
 * Invariants:
 * - This process holds no network socket and no key: it is started by
 *   re-executing perimd (so nothing of the threaded parent's state is
 *   inherited), closes every descriptor but its own sockets, and limits
 *   itself (no core files, bounded temporary file size, no new
 *   privileges); its generations and workers inherit the limits. It dies
 *   with the thread that started it (PR_SET_PDEATHSIG), they with it.
 * - It never starts a thread, so it may fork: each generation is a fork
 *   of it, and only a generation (single-threaded too) forks workers.
 * - Every request gets exactly one answer on its own socket: from the
 *   worker it was given to, or, when that worker dies while its slot holds
 *   the request, SCANNER_ERROR from this process (a worker killed between
 *   its answer and clearing the slot gives a second answer, which perimd
 *   ignores). A worker has at most one request.
 * - A scan busy for the hang bound (scanner_limits.hang: av_timeout plus a
 *   grace, so perimd has failed the message already) has its worker
 *   killed (SIGKILL) by this process, which says "hung" to the supervisor
 *   and takes no new request to it; the request is answered when the
 *   worker's socket ends (the process is gone: nothing reads the message
 *   after), and the generation replaces it as after a crash. Only that
 *   scan ends; the supervisor restarts the whole scanner only when this
 *   process itself dies or stops answering. A request's descriptor is
 *   not read after its answer is sent: the worker reads and closes it
 *   first; perimd may then write the next message into the same memfd
 *   (spool.c).
 * - Requests go only to the workers of the current generation; a retired
 *   worker exits once it has answered what it was given. Requests waiting
 *   for a worker (in this process's queue) are not busy: the ping's age is
 *   that of the oldest given one. Stopping this process (SIGSTOP) holds
 *   every request not yet given.
 * - Reload, swap (the default): a new generation loads while the current
 *   one keeps scanning; once ready its workers start and the old ones are
 *   retired: they exit after their scan in flight, then the generation
 *   does. A failed load leaves the current generation in place.
 * - Reload, INPLACE (av_reload_mode = inplace): the current generation is
 *   retired first and the new one forked only when every generation has
 *   ended, so memory never holds two engines. Requests meanwhile wait, not
 *   busy, so neither the hang check nor libclamav's scan time runs for
 *   them; av.c does not run av_timeout while the supervisor says
 *   "loading". A failed load leaves no engine: requests are answered
 *   SCANNER_ERROR until a reload (SIGHUP, a change in the directory)
 *   succeeds.
 * - Processes exit through _exit(): no atexit work, no libclamav teardown.
 */
#ifndef PERIMD_NO_CLAMAV /* else scanner_none.c */
#include "scanner.h"
#include "clock.h"
#include "log.h"
#include "scanner_int.h"

#include <clamav.h>
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define DIRCHECK_MS 5000

/* The dispatcher's view of one worker. */
struct worker {
	int sock;        /* its socket; -1: none (ended, or not started yet) */
	pid_t pid;       /* its process */
	uint64_t killed; /* ms when killed for a hung scan; 0: not */
};

enum gen_state { GEN_LOADING, GEN_ACTIVE, GEN_RETIRED };

/* A generation: its process, its socket, its workers and their slots. */
struct gen {
	struct gen *next;
	pid_t pid;   /* 0 once reaped */
	int sock;    /* -1 once it has ended */
	int state;   /* enum gen_state */
	int inplace; /* loaded by an inplace reload */
	uint64_t t0; /* ms when it was started */
	struct worker *w;
	struct scanner_slot *slots; /* shared with the workers */
};

static const char *db_dir, *tmp_dir;
static int nworkers;

static struct gen *gens;  /* every generation not yet ended and reaped */
static struct gen *cur;   /* the one whose workers take requests, or NULL */
static struct gen *load;  /* the one loading, or NULL */
static int started;       /* the first generation was ready */
static int reload_want;   /* a reload waits to start */
static int draining;      /* inplace: waiting for every generation to end */
static uint64_t drain_t0; /* ms when that reload began */

/* A request not yet given to a worker. */
struct job {
	struct job *next;
	int loop; /* index of its socket */
	int fd;
	uint64_t id;
};
static struct job *q_head, *q_tail;

/* answer - send one answer on a request's socket. */
static void answer(int sock, uint64_t id, int status, const char *name)
{
	struct scanner_ans a;
	memset(&a, 0, sizeof a);
	a.id = id;
	a.status = status;
	snprintf(a.name, sizeof a.name, "%s", name ? name : "");
	while (send(sock, &a, sizeof a, MSG_NOSIGNAL) < 0 && errno == EINTR)
		;
}

/* no_engine - no generation takes requests and none is coming: this
 * process answers them itself. */
static int no_engine(void)
{
	return !cur && !load && !draining && !reload_want;
}

/* job_fail - answer a request SCANNER_ERROR and drop it. */
static void job_fail(struct job *j, const char *why)
{
	answer(SCANNER_LOOP_FD + j->loop, j->id, SCANNER_ERROR, why);
	close(j->fd);
	free(j);
}

/* give - hand a request to worker i of the current generation; 0, or -1
 * when the worker is gone (the request stays the caller's). */
static int give(int i, struct job *j)
{
	struct scanner_slot *sl = &cur->slots[i];
	sl->id = j->id;
	sl->loop = j->loop;
	sl->since = clock_ms();
	__atomic_store_n(&sl->busy, 1, __ATOMIC_SEQ_CST);
	struct scanner_job m = { j->id, j->loop, 0 };
	if (scanner_send_fd(cur->w[i].sock, &m, sizeof m, j->fd) < 0) {
		__atomic_store_n(&sl->busy, 0, __ATOMIC_SEQ_CST);
		return -1; /* its end is read (EOF) in the next round */
	}
	close(j->fd);
	free(j);
	return 0;
}

/* idle_worker - a worker of the current generation without a request, or
 * -1; from start on, round robin. */
static int idle_worker(int start)
{
	for (int k = 0; cur && k < nworkers; k++) {
		int i = (start + k) % nworkers;
		if (cur->w[i].sock >= 0 && !cur->w[i].killed &&
		    !__atomic_load_n(&cur->slots[i].busy, __ATOMIC_SEQ_CST))
			return i;
	}
	return -1;
}

/* dispatch - give queued requests to idle workers; with no engine and
 * none coming, answer them. While some wait, workers say when they are
 * done ("d"): backlog is set before the last look for an idle one. */
static void dispatch(void)
{
	static int next;
	while (q_head) {
		struct job *j = q_head;
		if (no_engine()) {
			q_head = j->next;
			job_fail(j, "no signatures loaded (reload failed)");
			continue;
		}
		int i = idle_worker(next);
		if (i < 0) {
			__atomic_store_n(&scanner_shared->backlog, 1, __ATOMIC_SEQ_CST);
			i = idle_worker(next);
		}
		if (i < 0)
			break;
		q_head = j->next;
		if (give(i, j) < 0) {
			j->next = q_head;
			q_head = j;
			break;
		}
		next = (i + 1) % nworkers;
	}
	if (!q_head) {
		q_tail = NULL;
		__atomic_store_n(&scanner_shared->backlog, 0, __ATOMIC_SEQ_CST);
	}
}

/* read_request - one request from loop socket i, queued; -1 when the
 * socket is closed. */
static int read_request(int i)
{
	int sock = SCANNER_LOOP_FD + i;
	struct scanner_req r;
	int fd;
	long n = scanner_recv_fd(sock, &r, sizeof r, &fd, 0);
	if (n < 0 && errno == EMSGSIZE) {
		answer(sock, 0, SCANNER_ERROR, "bad request");
		return 0;
	}
	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? 0 : -1;
	if (n == 0)
		return -1;
	if ((size_t)n != sizeof r || fd < 0) {
		if (fd >= 0)
			close(fd);
		answer(sock, (size_t)n >= sizeof r.id ? r.id : 0, SCANNER_ERROR, "bad request");
		return 0;
	}
	struct job *j = xcalloc(1, sizeof *j);
	j->loop = i;
	j->fd = fd;
	j->id = r.id;
	if (q_tail)
		q_tail->next = j;
	else
		q_head = j;
	q_tail = j;
	return 0;
}

/* worker_closed - worker i of g has ended (its socket did): a request
 * it held gets SCANNER_ERROR. Only now, when the process is gone, so that
 * nothing reads the request's descriptor after its answer. */
static void worker_closed(struct gen *g, int i)
{
	struct scanner_slot *sl = &g->slots[i];
	if (__atomic_load_n(&sl->busy, __ATOMIC_SEQ_CST) && sl->loop >= 0 && sl->loop < scanner_nloops)
		answer(SCANNER_LOOP_FD + sl->loop, sl->id, SCANNER_ERROR,
		       g->w[i].killed ? "the scan hung; its process was killed" : "the scanning process died");
	__atomic_store_n(&sl->busy, 0, __ATOMIC_SEQ_CST);
	close(g->w[i].sock);
	g->w[i].sock = -1;
	g->w[i].killed = 0;
}

/* worker_kill - SIGKILL worker w, by a pidfd so that a pid reused after its
 * death is never hit: the pidfd is taken while w's socket shows w alive
 * (its peer end dies with it; the generation keeps no copy), so it names
 * w. 0 sent; -1 w is already gone (its socket's end follows). */
static int worker_kill(const struct worker *w)
{
	int pfd = (int)syscall(SYS_pidfd_open, w->pid, 0);
	if (pfd < 0)
		return errno == ENOSYS ? kill(w->pid, SIGKILL) : -1; /* kernels before 5.3 */
	struct pollfd p = { .fd = w->sock, .events = POLLRDHUP };
	int r = -1;
	if (poll(&p, 1, 0) == 0 || !(p.revents & (POLLHUP | POLLRDHUP | POLLERR)))
		r = (int)syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0);
	close(pfd);
	return r < 0 ? -1 : 0;
}

/* hang_check - kill (SIGKILL) every worker whose scan has been busy past
 * the hang bound: its request is answered when its socket ends
 * (worker_closed()), its generation replaces it. Returns the ms until the
 * next scan in flight reaches the bound (DIRCHECK_MS at most). */
static int hang_check(void)
{
	uint64_t now = clock_ms(), bound = scanner_limits.hang, wait = DIRCHECK_MS;
	for (struct gen *g = gens; g; g = g->next)
		for (int i = 0; i < nworkers; i++) {
			struct worker *w = &g->w[i];
			struct scanner_slot *sl = &g->slots[i];
			if (w->sock < 0 || w->killed || w->pid <= 0 ||
			    !__atomic_load_n(&sl->busy, __ATOMIC_SEQ_CST))
				continue;
			uint64_t age = now > sl->since ? now - sl->since : 0;
			if (age < bound) {
				if (bound - age < wait)
					wait = bound - age;
				continue;
			}
			if (worker_kill(w) < 0)
				continue; /* it ended meanwhile: worker_closed() answers */
			w->killed = now;
			scanner_ctl_send("hung %d %d %llu %llu", (int)w->pid, sl->loop,
					 (unsigned long long)sl->id, (unsigned long long)age);
		}
	return (int)wait;
}

/* worker_input - a worker is done while requests wait ("d"; dispatch()
 * follows), or it has ended. */
static void worker_input(struct gen *g, int i)
{
	char buf[16];
	ssize_t n;
	while ((n = recv(g->w[i].sock, buf, sizeof buf, MSG_DONTWAIT)) > 0)
		;
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
		worker_closed(g, i);
}

/* gen_retire - no new requests for g: its workers exit after the scan
 * they are on, if any; then the generation itself does. */
static void gen_retire(struct gen *g)
{
	g->state = GEN_RETIRED;
	if (g->sock >= 0)
		send(g->sock, "retire", 6, MSG_NOSIGNAL);
	for (int i = 0; i < nworkers; i++)
		if (g->w[i].sock >= 0)
			send(g->w[i].sock, "retire", 6, MSG_NOSIGNAL);
	if (cur == g)
		cur = NULL;
}

/* start_failed - a generation could not be set up (what failed, with
 * errno e): before the first one was ready the scanner exits with
 * "error", later the reload fails and the current generation stays. */
static void start_failed(const char *what, int e)
{
	if (!started) {
		scanner_ctl_send("error %s: %s", what, strerror(e));
		_exit(1);
	}
	scanner_ctl_send("reload-failed %s: %s", what, strerror(e));
}

/* gen_start - fork a generation with the limits last received. */
static void gen_start(int inplace)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) < 0) {
		start_failed("socketpair", errno);
		return;
	}
	struct scanner_slot *slots = mmap(NULL, (size_t)nworkers * sizeof *slots, PROT_READ | PROT_WRITE,
					  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (slots == MAP_FAILED) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		start_failed("mmap", e);
		return;
	}
	scanner_slots = slots; /* the generation's workers find theirs here */
	pid_t pid = scanner_fork(sv[1]);
	if (pid == 0)
		scanner_gen_main(db_dir, tmp_dir, nworkers);
	close(sv[1]);
	if (pid < 0) {
		int e = errno;
		close(sv[0]);
		munmap(slots, (size_t)nworkers * sizeof *slots);
		start_failed("fork", e);
		return;
	}
	struct gen *g = xcalloc(1, sizeof *g);
	g->pid = pid;
	g->sock = sv[0];
	g->state = GEN_LOADING;
	g->inplace = inplace;
	g->t0 = inplace ? drain_t0 : clock_ms();
	g->slots = slots;
	g->w = xcalloc((size_t)nworkers, sizeof *g->w);
	for (int i = 0; i < nworkers; i++)
		g->w[i].sock = -1;
	g->next = gens;
	gens = g;
	load = g;
}

/* gen_ready - g has its engine and its workers: it takes the requests. */
static void gen_ready(struct gen *g, unsigned sigs)
{
	unsigned long long ms = clock_ms() - g->t0;
	load = NULL;
	if (cur)
		gen_retire(cur);
	cur = g;
	g->state = GEN_ACTIVE;
	if (!started)
		scanner_ctl_send("ready %u %llu %d", sigs, ms, nworkers);
	else
		scanner_ctl_send("reloaded %u %llu", sigs, ms);
	started = 1;
}

/* gen_failed - g could not load: say so; it ends by itself. */
static void gen_failed(struct gen *g, const char *why)
{
	if (!started) {
		scanner_ctl_send("error %s", why);
		_exit(1);
	}
	load = NULL;
	g->state = GEN_RETIRED;
	scanner_ctl_send("reload-failed %s%s", why,
			 g->inplace ? "; no engine: scans fail until a load succeeds" : "");
}

/* gen_ended - g's socket ended: reap it; a current generation that dies
 * takes the scanner with it (the supervisor restarts it). */
static void gen_ended(struct gen *g)
{
	close(g->sock);
	g->sock = -1;
	int st = 0;
	while (waitpid(g->pid, &st, 0) < 0 && errno == EINTR)
		;
	g->pid = 0;
	if (g->state == GEN_LOADING)
		gen_failed(g, "the engine process died while loading");
	if (g->state == GEN_ACTIVE) {
		scanner_ctl_send("log engine process ended (%s %d)", WIFSIGNALED(st) ? "signal" : "status",
				 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
		_exit(1);
	}
}

/* gen_input - a message from a generation, or its end. */
static void gen_input(struct gen *g)
{
	char buf[512];
	int fd;
	long n = scanner_recv_fd(g->sock, buf, sizeof buf - 1, &fd, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		gen_ended(g);
		return;
	}
	buf[n] = 0;
	int i = -1, pid = 0;
	unsigned sigs = 0;
	if (sscanf(buf, "worker %d %d", &i, &pid) == 2 && fd >= 0 && i >= 0 && i < nworkers &&
	    g->state != GEN_RETIRED) {
		/* A replacement: the generation has reaped the worker before,
		 * even if its socket's end has not been read here yet. */
		if (g->w[i].sock >= 0)
			worker_closed(g, i);
		g->w[i].sock = fd;
		g->w[i].pid = pid;
		g->w[i].killed = 0;
		return;
	}
	if (fd >= 0)
		close(fd);
	if (g->state == GEN_LOADING && sscanf(buf, "ready %u", &sigs) == 1)
		gen_ready(g, sigs);
	else if (g->state == GEN_LOADING && !strncmp(buf, "failed ", 7))
		gen_failed(g, buf + 7);
}

/* gens_reap - free the generations that have ended with all their
 * workers; returns how many are left. */
static int gens_reap(void)
{
	int left = 0;
	for (struct gen **pg = &gens; *pg;) {
		struct gen *g = *pg;
		int open = g->sock >= 0;
		for (int i = 0; i < nworkers && !open; i++)
			open = g->w[i].sock >= 0;
		if (!open && g->pid == 0) {
			*pg = g->next;
			munmap(g->slots, (size_t)nworkers * sizeof *g->slots);
			free(g->w);
			free(g);
			continue;
		}
		left++;
		pg = &g->next;
	}
	return left;
}

/* reload_step - start a reload that waits, when it can. */
static void reload_step(void)
{
	if (load)
		return;
	if (!draining && reload_want) {
		reload_want = 0;
		if (!scanner_limits.inplace) {
			gen_start(0);
			return;
		}
		scanner_ctl_send("loading");
		drain_t0 = clock_ms();
		draining = 1;
		if (cur)
			gen_retire(cur);
	}
	if (draining && gens_reap() == 0) {
		draining = 0;
		gen_start(1);
	}
}

/* scanner_limits_parse - "RECURSION FILES SCAN_SIZE FILE_SIZE SCAN_TIME_MS
 * ENCRYPTED MAX_SIZE INPLACE HANG_MS" (as av_sup.c writes it) into l; 0
 * or -1. */
static int scanner_limits_parse(const char *s, struct scanner_limits *l)
{
	unsigned long long v[9];
	int end = 0;
	if (sscanf(s, "%llu %llu %llu %llu %llu %llu %llu %llu %llu%n", &v[0], &v[1], &v[2], &v[3], &v[4],
		   &v[5], &v[6], &v[7], &v[8], &end) != 9 ||
	    s[end] != 0)
		return -1;
	if (!v[0] || v[0] > 1000 || !v[1] || v[1] > UINT32_MAX || !v[4] || v[4] > UINT32_MAX || v[5] > 3 ||
	    v[7] > 1 || v[8] < 1000 || v[8] > UINT32_MAX)
		return -1;
	l->recursion = (uint32_t)v[0];
	l->files = (uint32_t)v[1];
	l->scan_size = v[2];
	l->file_size = v[3];
	l->scan_time = (uint32_t)v[4];
	l->encrypted = (unsigned)v[5];
	l->max_size = v[6];
	l->inplace = (unsigned)v[7];
	l->hang = (uint32_t)v[8];
	return 0;
}

/* pong - "pong AGE INFLIGHT" over every generation's busy workers. */
static void pong(void)
{
	uint64_t now = clock_ms(), oldest = 0;
	int inflight = 0;
	for (struct gen *g = gens; g; g = g->next)
		for (int i = 0; i < nworkers; i++) {
			uint64_t since = g->slots[i].since;
			if (__atomic_load_n(&g->slots[i].busy, __ATOMIC_SEQ_CST)) {
				inflight++;
				if (now > since && now - since > oldest)
					oldest = now - since;
			}
		}
	scanner_ctl_send("pong %llu %d", (unsigned long long)oldest, inflight);
}

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
		pong();
	} else if (!strncmp(buf, "reload ", 7)) {
		/* "reload LIMITS": the next engine is built with these. */
		struct scanner_limits l;
		if (scanner_limits_parse(buf + 7, &l) == 0) {
			scanner_limits = l;
			scanner_fsize_limit();
		} else {
			scanner_ctl_send("log bad limits in reload: %s; keeping the old ones", buf + 7);
		}
		reload_want = 1;
	} else if (!strcmp(buf, "reload")) {
		reload_want = 1;
	}
	return 0;
}

/* confine - drop what a scanner does not need. */
static void confine(void)
{
	/* Only our sockets (and stdio for the log) stay open. The raw system
	 * call: musl (the static build) has no close_range() wrapper. */
	syscall(SYS_close_range, SCANNER_LOOP_FD + (unsigned)scanner_nloops, ~0u, 0u);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	struct rlimit rl = { 0, 0 };
	setrlimit(RLIMIT_CORE, &rl);
	/* Temporary files of decoded parts: bounded; EFBIG instead of a
	 * signal. Only the soft limit: a reload with larger scan limits
	 * raises it again (scanner_fsize_limit()). */
	signal(SIGXFSZ, SIG_IGN);
	scanner_fsize_limit();
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGINT, SIG_IGN);
}

/* heap_tune - keep libclamav's per-scan allocations (match state sized
 * by the signature count: megabytes with a full database) in the heap
 * instead of an mmap, zeroed pages and munmap per scan: 15-20% less CPU per
 * 512 B message on a 436,000-signature database. Set here, inherited by
 * every generation and worker. */
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

/* The poll set: what each entry is. */
struct pref {
	struct gen *g; /* NULL: ctl (i < 0) or loop i */
	int i;         /* loop or worker index; -1: ctl or the generation */
};

/* poll_build - the poll set of this round; returns its length. */
static int poll_build(struct pollfd **pf, struct pref **pr, int *cap, const int *loop_fd)
{
	int n = 1 + scanner_nloops;
	for (struct gen *g = gens; g; g = g->next)
		n += 1 + nworkers;
	if (n > *cap) {
		*cap = n * 2;
		free(*pf);
		free(*pr);
		*pf = xcalloc((size_t)*cap, sizeof **pf);
		*pr = xcalloc((size_t)*cap, sizeof **pr);
	}
	int k = 0;
	(*pf)[k] = (struct pollfd){ SCANNER_CTL_FD, POLLIN, 0 };
	(*pr)[k++] = (struct pref){ NULL, -1 };
	for (int i = 0; i < scanner_nloops; i++) {
		(*pf)[k] = (struct pollfd){ loop_fd[i], POLLIN, 0 };
		(*pr)[k++] = (struct pref){ NULL, i };
	}
	for (struct gen *g = gens; g; g = g->next) {
		(*pf)[k] = (struct pollfd){ g->sock, POLLIN, 0 };
		(*pr)[k++] = (struct pref){ g, -1 };
		for (int i = 0; i < nworkers; i++) {
			(*pf)[k] = (struct pollfd){ g->w[i].sock, POLLIN, 0 };
			(*pr)[k++] = (struct pref){ g, i };
		}
	}
	return k;
}

/* dispatcher - the main loop: requests in, answers out, reloads. */
static void __attribute__((noreturn)) dispatcher(void)
{
	int *loop_fd = xcalloc((size_t)scanner_nloops, sizeof *loop_fd);
	for (int i = 0; i < scanner_nloops; i++)
		loop_fd[i] = SCANNER_LOOP_FD + i;
	struct pollfd *pf = NULL;
	struct pref *pr = NULL;
	int cap = 0;
	struct cl_stat dirstat;
	memset(&dirstat, 0, sizeof dirstat);
	cl_statinidir(db_dir, &dirstat);
	uint64_t next_check = clock_ms() + DIRCHECK_MS;
	for (;;) {
		int n = poll_build(&pf, &pr, &cap, loop_fd);
		if (poll(pf, (nfds_t)n, hang_check()) < 0 && errno != EINTR)
			_exit(1);
		/* Handlers close sockets but free nothing: gens_reap() does,
		 * after the round. */
		for (int k = 0; k < n; k++) {
			if (!pf[k].revents || pf[k].fd < 0)
				continue;
			struct pref r = pr[k];
			if (!r.g && r.i < 0 && control() < 0)
				_exit(0); /* the supervisor is gone */
			else if (!r.g && r.i >= 0 && read_request(r.i) < 0)
				loop_fd[r.i] = -1;
			else if (r.g && r.i < 0 && r.g->sock == pf[k].fd)
				gen_input(r.g);
			else if (r.g && r.i >= 0 && r.g->w[r.i].sock == pf[k].fd)
				worker_input(r.g, r.i);
		}
		if (clock_ms() >= next_check) {
			next_check = clock_ms() + DIRCHECK_MS;
			/* A changed database directory reloads, as SIGHUP does. */
			if (cl_statchkdir(&dirstat) == 1) {
				cl_statfree(&dirstat);
				cl_statinidir(db_dir, &dirstat);
				scanner_ctl_send("log %s changed, reloading signatures", db_dir);
				reload_want = 1;
			}
		}
		reload_step();
		dispatch();
		gens_reap();
	}
}

/* scanner_main - the scanner process (see scanner.h). */
int scanner_main(int argc, char **argv)
{
	if (argc != 7 || scanner_limits_parse(argv[6], &scanner_limits) < 0) {
		fprintf(stderr, "perimd: %s is internal\n", SCANNER_ARG);
		_exit(2);
	}
	db_dir = argv[2];
	tmp_dir = argv[3];
	nworkers = atoi(argv[4]);
	scanner_nloops = atoi(argv[5]);
	if (scanner_nloops < 1 || scanner_nloops > 1024 || nworkers < 1 || nworkers > 1024)
		_exit(2);
	confine();
	heap_tune();
	prctl(PR_SET_NAME, "perimd-scanner");
	if (getppid() == 1)
		_exit(0);
	scanner_tmp_clean(tmp_dir);
	scanner_shared =
	    mmap(NULL, sizeof *scanner_shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (scanner_shared == MAP_FAILED) {
		scanner_ctl_send("error mmap: %s", strerror(errno));
		_exit(1);
	}
	gen_start(0);
	dispatcher();
}
#endif /* PERIMD_NO_CLAMAV */
