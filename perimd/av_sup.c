/*
 * av_sup.c - the supervisor of the scanner process (av_scanner =
 * libclamav): one thread that starts it by re-executing perimd
 * (posix_spawn, never a bare fork() of this threaded process), waits for
 * its engine, pings it, asks it to reload, restarts it when it dies or
 * stops answering (a hung scan is the scanner's own to end: it kills that
 * worker), and hands each io loop its new socket with ev_post(). The
 * requests themselves are av.c's; av_int.h is what the two share.
 */
#include "av.h"
#include "clock.h"
#include "av_int.h"
#include "conf.h"
#include "ev.h"
#include "log.h"
#include "scanner.h"
#include "stats.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* The supervisor's state: its thread, the process, its control socket. */
static struct {
	pthread_t tid;
	int running;
	int wake[2];
	pid_t pid;
	int ctl;
	char *dbdir, *tmpdir;
	long long threads;
	long long timeout;  /* atomic: av_timeout, for the hang check */
	pthread_mutex_t mu; /* guards limits: av_reload() writes them */
	char limits[192];   /* the scanner's LIMITS (scanner.h) */
	int stop, reload;   /* atomic */
	uint64_t started;
} sup = { .wake = { -1, -1 }, .pid = -1, .ctl = -1, .mu = PTHREAD_MUTEX_INITIALIZER };

int av_loading;
uint64_t av_load_end;

/* load_ended - an inplace load is over (or its scanner is gone). */
static void load_ended(void)
{
	if (__atomic_load_n(&av_loading, __ATOMIC_ACQUIRE)) {
		__atomic_store_n(&av_load_end, clock_ms(), __ATOMIC_RELEASE);
		__atomic_store_n(&av_loading, 0, __ATOMIC_RELEASE);
	}
}

/* av_scan_time - the MaxScanTime cf gives: av_max_scan_time, or with 0 a
 * second below av_timeout (half of it when that is 2 s or less). */
long long av_scan_time(const struct conf *cf)
{
	if (cf->av_max_scan_time > 0)
		return cf->av_max_scan_time;
	return cf->av_timeout > 2000 ? cf->av_timeout - 1000 : cf->av_timeout / 2;
}

/* limits_format - the LIMITS argument of the scanner (scanner.h) from cf. */
static void limits_format(const struct conf *cf, char *buf, size_t len)
{
	unsigned enc = 0;
	if (cf->av_alert_encrypted_e == AV_ENC_ARCHIVE || cf->av_alert_encrypted_e == AV_ENC_YES)
		enc |= SCANNER_ENC_ARCHIVE;
	if (cf->av_alert_encrypted_e == AV_ENC_DOCUMENT || cf->av_alert_encrypted_e == AV_ENC_YES)
		enc |= SCANNER_ENC_DOC;
	long long st = av_scan_time(cf);
	if (st >= cf->av_timeout) /* refused by -t; a reload may bring it */
		st = cf->av_timeout > 2000 ? cf->av_timeout - 1000 : cf->av_timeout / 2;
	snprintf(buf, len, "%lld %lld %lld %lld %lld %u %lld %d %lld", cf->av_max_recursion, cf->av_max_files,
		 cf->av_max_scan_size, cf->av_max_file_size, st, enc, cf->av_max_size,
		 cf->av_reload_mode_e == AV_RELOAD_INPLACE, cf->av_timeout + HANG_GRACE_MS);
}

/* ---- the supervisor --------------------------------------------------------- */

/* sup_spawn - start a scanner process; fills fds[nloops] with the loops'
 * ends of their sockets. Returns 0 or -1 with err. */
static int sup_spawn(int *fds, char *err, size_t errlen)
{
	int n = av_nloops;
	int(*sv)[2] = xcalloc((size_t)n + 1, sizeof *sv);
	int made = 0, rc = -1;
	for (; made <= n; made++)
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv[made]) < 0) {
			snprintf(err, errlen, "socketpair: %s", strerror(errno));
			goto out;
		}
	char a_threads[24], a_n[24], a_limits[sizeof sup.limits];
	snprintf(a_threads, sizeof a_threads, "%d", conf_per_cpu(sup.threads));
	snprintf(a_n, sizeof a_n, "%d", n);
	pthread_mutex_lock(&sup.mu);
	memcpy(a_limits, sup.limits, sizeof a_limits);
	pthread_mutex_unlock(&sup.mu);
	char *argv[] = { "perimd-scanner", SCANNER_ARG, sup.dbdir, sup.tmpdir, a_threads, a_n, a_limits, NULL };
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	/* Fixed descriptors in the child; dup2 clears their close-on-exec. A
	 * source that already sits on a target number is moved away first. */
	for (int i = 0; i <= n; i++) {
		int want = i == 0 ? SCANNER_CTL_FD : SCANNER_LOOP_FD + i - 1;
		if (sv[i][1] <= SCANNER_LOOP_FD + n) {
			int moved = fcntl(sv[i][1], F_DUPFD_CLOEXEC, SCANNER_LOOP_FD + n + 1);
			if (moved < 0) {
				snprintf(err, errlen, "fcntl: %s", strerror(errno));
				posix_spawn_file_actions_destroy(&fa);
				goto out;
			}
			close(sv[i][1]);
			sv[i][1] = moved;
		}
		posix_spawn_file_actions_adddup2(&fa, sv[i][1], want);
	}
	posix_spawnattr_t at;
	posix_spawnattr_init(&at);
	sigset_t none, all;
	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	pid_t pid;
	int e = posix_spawn(&pid, "/proc/self/exe", &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (e != 0) {
		snprintf(err, errlen, "cannot start the scanner process: %s", strerror(e));
		goto out;
	}
	sup.pid = pid;
	sup.ctl = sv[0][0];
	sup.started = clock_ms();
	for (int i = 0; i < n; i++) {
		fds[i] = sv[i + 1][0];
		fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
	}
	for (int i = 0; i <= n; i++)
		close(sv[i][1]);
	free(sv);
	return 0;
out:
	for (int i = 0; i < made; i++) {
		close(sv[i][0]);
		close(sv[i][1]);
	}
	free(sv);
	return rc;
}

/* sup_reap - the scanner is dead or must die: kill, wait, log. */
static void sup_reap(const char *why)
{
	if (sup.ctl >= 0)
		close(sup.ctl);
	sup.ctl = -1;
	if (sup.pid <= 0)
		return;
	kill(sup.pid, SIGKILL);
	int st = 0;
	while (waitpid(sup.pid, &st, 0) < 0 && errno == EINTR)
		;
	if (why)
		log_err("scanner process %d: %s (%s %d); restarting it", (int)sup.pid, why,
			WIFSIGNALED(st) ? "signal" : "exit status",
			WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	sup.pid = -1;
}

/* sup_wait - poll the control socket and the wake pipe up to ms; returns
 * 1 if ctl is readable (or hung up), 0 otherwise. */
static int sup_wait(int ms)
{
	struct pollfd pf[2] = { { sup.ctl, POLLIN, 0 }, { sup.wake[0], POLLIN, 0 } };
	if (poll(pf, 2, ms) <= 0)
		return 0;
	if (pf[1].revents) {
		char b[64];
		while (read(sup.wake[0], b, sizeof b) > 0)
			;
	}
	return pf[0].revents != 0;
}

/* sup_ready - wait (bounded) for "ready"; 0 or -1 with err. */
static int sup_ready(char *err, size_t errlen)
{
	uint64_t deadline = clock_ms() + READY_WAIT_MS;
	while (!__atomic_load_n(&sup.stop, __ATOMIC_RELAXED)) {
		uint64_t now = clock_ms();
		if (now >= deadline) {
			snprintf(err, errlen, "the scanner did not load %s within %d s", sup.dbdir,
				 READY_WAIT_MS / 1000);
			return -1;
		}
		if (!sup_wait((int)(deadline - now < 1000 ? deadline - now : 1000)))
			continue;
		char buf[512];
		ssize_t n = recv(sup.ctl, buf, sizeof buf - 1, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0) {
			snprintf(err, errlen, "the scanner process ended while loading %s", sup.dbdir);
			return -1;
		}
		buf[n] = 0;
		unsigned sigs = 0;
		unsigned long long ms = 0;
		int th = 0;
		if (sscanf(buf, "ready %u %llu %d", &sigs, &ms, &th) == 3) {
			log_info("scanner process %d ready: libclamav %s, %u signatures from %s in %llu ms, "
				 "%d scanning processes",
				 (int)sup.pid, scanner_version(), sigs, sup.dbdir, ms, th);
			return 0;
		}
		if (!strncmp(buf, "error ", 6)) {
			snprintf(err, errlen, "scanner: %s", buf + 6);
			return -1;
		}
	}
	snprintf(err, errlen, "stopping");
	return -1;
}

/* sup_restart - replace a dead scanner; the loops get the new sockets. */
static void sup_restart(const char *why)
{
	stats_inc(ST_av_scanner_restarts);
	sup_reap(why);
	int *fds = xcalloc((size_t)av_nloops, sizeof *fds);
	while (!__atomic_load_n(&sup.stop, __ATOMIC_RELAXED)) {
		/* No faster than one start a second when it keeps dying. */
		uint64_t since = clock_ms() - sup.started;
		if (since < 1000)
			sup_wait((int)(1000 - since));
		char err[512];
		if (sup_spawn(fds, err, sizeof err) < 0) {
			log_err("%s", err);
			sup.started = clock_ms();
			continue;
		}
		if (sup_ready(err, sizeof err) == 0) {
			for (int i = 0; i < av_nloops; i++) {
				int *p = xmalloc(2 * sizeof *p);
				p[0] = i;
				p[1] = fds[i];
				ev_post(av_loops[i].loop, av_loop_attach, p);
			}
			break;
		}
		log_err("%s", err);
		for (int i = 0; i < av_nloops; i++)
			close(fds[i]);
		sup_reap(NULL);
	}
	free(fds);
}

/* sup_main - the supervisor thread: ping, reload, restart. */
static void *sup_main(void *arg)
{
	uint64_t last_ping = 0, last_pong = clock_ms();
	while (!__atomic_load_n(&sup.stop, __ATOMIC_RELAXED)) {
		int readable = sup_wait(1000);
		if (__atomic_load_n(&sup.stop, __ATOMIC_RELAXED))
			break;
		const char *dead = NULL;
		char buf[512];
		if (__atomic_exchange_n(&sup.reload, 0, __ATOMIC_ACQ_REL)) {
			char cmd[16 + sizeof sup.limits];
			pthread_mutex_lock(&sup.mu);
			snprintf(cmd, sizeof cmd, "reload %s", sup.limits);
			pthread_mutex_unlock(&sup.mu);
			log_info("scanner: reloading signatures from %s", sup.dbdir);
			send(sup.ctl, cmd, strlen(cmd), MSG_NOSIGNAL);
		}
		if (readable) {
			ssize_t n = recv(sup.ctl, buf, sizeof buf - 1, MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				dead = "ended";
			if (n > 0) {
				buf[n] = 0;
				unsigned long long age = 0, ms = 0;
				unsigned sigs = 0;
				int inflight = 0, wpid = 0, wloop = 0;
				unsigned long long wid = 0;
				if (sscanf(buf, "pong %llu %d", &age, &inflight) == 2) {
					last_pong = clock_ms();
					/* The scanner kills a worker whose scan hangs
					 * (HANG_MS); one still busy long after is the
					 * last resort's. */
					if (age > (unsigned long long)__atomic_load_n(&sup.timeout,
										      __ATOMIC_RELAXED) +
						HANG_GRACE_MS + PONG_WAIT_MS)
						dead = "a scan hangs past av_timeout and its process was not "
						       "ended";
				} else if (sscanf(buf, "hung %d %d %llu %llu", &wpid, &wloop, &wid, &age) == 4) {
					stats_inc(ST_av_scans_killed);
					log_warn(
					    "scanner: scanning process %d killed: its scan (request=%d/%llu) "
					    "ran "
					    "%llu ms, past av_timeout + %d s; the other scans go on, the "
					    "process is replaced",
					    wpid, wloop, wid, age, HANG_GRACE_MS / 1000);
				} else if (!strcmp(buf, "loading")) {
					__atomic_store_n(&av_loading, 1, __ATOMIC_RELEASE);
					log_info("scanner: old signatures freed (av_reload_mode = inplace); "
						 "scans wait for the new ones");
				} else if (sscanf(buf, "reloaded %u %llu", &sigs, &ms) == 2) {
					load_ended();
					log_info("scanner: signatures reloaded: %u signatures in %llu ms",
						 sigs, ms);
				} else if (!strncmp(buf, "reload-failed ", 14)) {
					load_ended();
					/* inplace: the old engine is gone already */
					log_err("scanner: signature reload failed%s: %s",
						strstr(buf, "; no engine:") ? "" : ", keeping the old engine",
						buf + 14);
				} else if (!strncmp(buf, "log ", 4)) {
					log_info("scanner: %s", buf + 4);
				}
			}
		}
		uint64_t now = clock_ms();
		if (!dead && now - last_pong > PONG_WAIT_MS)
			dead = "not answering";
		if (!dead && now - last_ping >= 1000) {
			send(sup.ctl, "ping", 4, MSG_NOSIGNAL);
			last_ping = now;
		}
		if (dead) {
			load_ended();
			sup_restart(dead);
			last_pong = clock_ms();
		}
	}
	return arg;
}

/* av_check - av_scanner's syntax, and whether this build can honour it. */
int av_check(const struct conf *cf, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	enum av_kind k = av_kind_parse(cf->av_scanner, &ss, &len);
	if (k == AVK_BAD) {
		snprintf(err, errlen,
			 "av_scanner = %s: expected none, libclamav, clamd:/path or "
			 "clamd:HOST:PORT",
			 cf->av_scanner);
		return -1;
	}
#ifdef PERIMD_NO_CLAMAV
	/* Refused at -t and at start, never discovered at the first message. */
	if (k == AVK_LIBCLAMAV) {
		snprintf(err, errlen,
			 "av_scanner = libclamav: this perimd is built without libclamav "
			 "(perimd -V); use clamd:/path/to/socket or clamd:HOST:PORT");
		return -1;
	}
#endif
	/* libclamav must give up (and say so) before av.c's own deadline
	 * and the supervisor's hang check end the scan as a failure. */
	if (k != AVK_NONE && av_scan_time(cf) >= cf->av_timeout) {
		snprintf(err, errlen,
			 "av_max_scan_time (%lld ms) must be below av_timeout (%lld ms): a "
			 "longer scan is ended as a failure first",
			 av_scan_time(cf), cf->av_timeout);
		return -1;
	}
	return 0;
}

/* av_start - start and supervise the scanner (av_scanner = libclamav). */
int av_start(const struct conf *cf, struct ev_loop **loops, int nloops, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (av_check(cf, err, errlen) < 0)
		return -1;
	av_names_cap_set((int)cf->stats_virus_names_max);
	enum av_kind k = av_kind_parse(cf->av_scanner, &ss, &len);
	if (k != AVK_LIBCLAMAV)
		return 0;
	av_nloops = nloops;
	av_loops = xcalloc((size_t)nloops, sizeof *av_loops);
	for (int i = 0; i < nloops; i++) {
		av_loops[i].loop = loops[i];
		av_loops[i].fd = -1;
	}
	sup.dbdir = xstrdup(cf->clamav_database_directory);
	sup.tmpdir = xstrdup(cf->body_spool_directory);
	sup.threads = cf->av_threads;
	sup.timeout = cf->av_timeout;
	limits_format(cf, sup.limits, sizeof sup.limits);
	if (pipe2(sup.wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	int *fds = xcalloc((size_t)nloops, sizeof *fds);
	log_info("scanner: loading signatures from %s; no mail is accepted until it is ready", sup.dbdir);
	if (sup_spawn(fds, err, errlen) < 0 || sup_ready(err, errlen) < 0) {
		free(fds);
		sup_reap(NULL);
		return -1;
	}
	for (int i = 0; i < nloops; i++)
		av_loops[i].fd = fds[i];
	free(fds);
	if (pthread_create(&sup.tid, NULL, sup_main, NULL) != 0) {
		snprintf(err, errlen, "cannot start the scanner supervisor thread");
		return -1;
	}
	sup.running = 1;
	return 0;
}

/* av_reload - SIGHUP: new signatures, in the background. */
void av_reload(const struct conf *cf)
{
	av_names_cap_set((int)cf->stats_virus_names_max);
	if (!sup.running) {
		if (!strcmp(cf->av_scanner, "libclamav"))
			log_warn("reload: av_scanner = libclamav needs a restart of perimd");
		return;
	}
	if (strcmp(cf->av_scanner, "libclamav") || strcmp(cf->clamav_database_directory, sup.dbdir) ||
	    cf->av_threads != sup.threads)
		log_warn("reload: av_scanner, clamav_database_directory and av_threads changes need a "
			 "restart; reloading the signatures of %s",
			 sup.dbdir);
	if (av_scan_time(cf) >= cf->av_timeout)
		log_err("reload: av_max_scan_time (%lld ms) is not below av_timeout (%lld ms); the scanner "
			"uses %lld ms",
			av_scan_time(cf), cf->av_timeout,
			cf->av_timeout > 2000 ? cf->av_timeout - 1000 : cf->av_timeout / 2);
	/* The new limits go with the reload: the next engine is built with them. */
	pthread_mutex_lock(&sup.mu);
	limits_format(cf, sup.limits, sizeof sup.limits);
	pthread_mutex_unlock(&sup.mu);
	__atomic_store_n(&sup.timeout, cf->av_timeout, __ATOMIC_RELAXED);
	__atomic_store_n(&sup.reload, 1, __ATOMIC_RELEASE);
	if (write(sup.wake[1], "r", 1) < 0 && errno != EAGAIN)
		log_warn("av: cannot wake the supervisor: %s", strerror(errno));
}

/* av_stop - stop the supervisor and the scanner; free the loops' state. */
void av_stop(void)
{
	if (sup.running) {
		__atomic_store_n(&sup.stop, 1, __ATOMIC_RELEASE);
		if (write(sup.wake[1], "s", 1) < 0)
			log_warn("av: cannot wake the supervisor: %s", strerror(errno));
		pthread_join(sup.tid, NULL);
		sup.running = 0;
	}
	sup_reap(NULL);
	for (int i = 0; i < av_nloops; i++) {
		struct av_loop *al = &av_loops[i];
		/* The loops have ended; what is left is only freed. */
		struct av_list *ls[2] = { &al->sent, &al->queued };
		for (int j = 0; j < 2; j++)
			while (ls[j]->head) {
				struct av_req *r = ls[j]->head;
				av_list_del(r);
				free(r);
			}
		if (al->fd >= 0)
			close(al->fd);
	}
	free(av_loops);
	av_loops = NULL;
	av_nloops = 0;
	free(sup.dbdir);
	free(sup.tmpdir);
	sup.dbdir = sup.tmpdir = NULL;
	if (sup.wake[0] >= 0) {
		close(sup.wake[0]);
		close(sup.wake[1]);
		sup.wake[0] = sup.wake[1] = -1;
	}
}
