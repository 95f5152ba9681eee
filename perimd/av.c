/*
 * av.c - the scanner front: per-loop requests to the scanner process (fd
 * passing over a SOCK_SEQPACKET socket), or to a clamd over zINSTREAM, and
 * the supervisor thread that keeps the scanner process alive.
 *
 * Invariants:
 * - Only io loops talk to the scanner about messages, each over its own
 *   non-blocking socket; a loop never blocks on it. Requests that cannot
 *   be sent yet wait in the loop's queue; sent ones wait for their answer
 *   (matched by id) or for av_timeout, whichever comes first.
 * - Every request ends exactly once: answer, timeout, scanner death (EOF
 *   on the socket: all of that loop's requests get av_fail_action), or
 *   av_cancel(). Results known at once (oversize, no scanner) are still
 *   delivered through an ev_defer, never inside av_scan().
 * - The supervisor thread alone starts, pings, reloads and restarts the
 *   scanner process; it hands new sockets to the loops with ev_post(). A
 *   process is started by re-executing perimd (posix_spawn), never by a
 *   bare fork() of this threaded process.
 * - A verdict is never "clean" unless a scanner said so: oversize and
 *   failures follow av_oversize_action / av_fail_action and are logged.
 */
#include "av.h"
#include "stats.h"
#include "conf.h"
#include "conn.h"
#include "ev.h"
#include "log.h"
#include "net.h"
#include "scanner.h"
#include "spool.h"

#include <arpa/inet.h>
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
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CLAMD_CHUNK (64 * 1024)
#define CLAMD_WBUF (256 * 1024)
#define READY_WAIT_MS (600 * 1000)   /* a full signature set loads in ~1 min */
#define PONG_WAIT_MS 15000
#define HANG_GRACE_MS 5000
#define NAMES_MAX 256

extern char **environ;

enum av_kind { AVK_NONE, AVK_LIBCLAMAV, AVK_CLAMD, AVK_BAD };
enum av_outcome { AVO_CLEAN, AVO_VIRUS, AVO_FAIL, AVO_OVERSIZE };

struct av_list {
	struct av_req *head, *tail;
};

struct av_loop {
	struct ev_loop *loop;
	int fd;                  /* -1: no scanner */
	int registered;          /* io watcher in the loop */
	struct ev_io io;
	struct av_list queued, sent;
	uint64_t next_id;
};

struct av_req {
	struct av_req *next, *prev;
	struct av_list *list;    /* queued / sent, or NULL */
	struct av_loop *al;
	struct ev_loop *loop;
	const struct conf *cf;
	struct spool *sp;
	char msgid[16];
	uint64_t id, t0;
	long engine_us;          /* scanner's own time; -1 unknown */
	int fd;                  /* spool's, not ours */
	av_done_fn *done;
	void *arg;
	struct ev_timer timer;
	struct ev_defer defer;
	enum av_outcome dout;    /* deferred outcome */
	char text[SCANNER_NAME_MAX];
	char refusal[256];
	/* clamd */
	struct conn *c;
	uint64_t off;
	int sent_end;
	char rbuf[256];
	size_t rlen;
};

static struct av_loop *av_loops;
static int av_nloops;

static struct {
	pthread_t tid;
	int running;
	int wake[2];
	pid_t pid;
	int ctl;
	char *dbdir, *tmpdir;
	long long threads, max_size, timeout;
	int stop, reload;        /* atomic */
	uint64_t started;
} sup = { .wake = { -1, -1 }, .pid = -1, .ctl = -1 };

static struct av_counters counters;   /* atomic fields */
static pthread_mutex_t names_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char name[SCANNER_NAME_MAX];
	uint64_t n;
} names[NAMES_MAX];
static int nnames;

/* mono_ms - monotonic milliseconds. */
static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* av_parse - the kind of av_scanner, and clamd's address. */
static enum av_kind av_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	if (!strcmp(s, "none") || !*s)
		return AVK_NONE;
	if (!strcmp(s, "libclamav"))
		return AVK_LIBCLAMAV;
	if (strncmp(s, "clamd:", 6) != 0)
		return AVK_BAD;
	const char *a = s + 6;
	if (*a == '/') {
		struct sockaddr_un *un = (struct sockaddr_un *)ss;
		if (strlen(a) >= sizeof un->sun_path)
			return AVK_BAD;
		memset(un, 0, sizeof *un);
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, a);
		*len = (socklen_t)sizeof *un;
		return AVK_CLAMD;
	}
	const char *why;
	return net_parse_addr(a, -1, ss, len, &why) < 0 ? AVK_BAD : AVK_CLAMD;
}

/* av_enabled - scanning on? */
int av_enabled(const struct conf *cf)
{
	return strcmp(cf->av_scanner, "none") != 0;
}

/* ---- counters ----------------------------------------------------------- */

/* count_time - one scan into the time histogram. */
static void count_time(uint64_t ms)
{
	static const uint64_t le[] = { 10, 50, 100, 500, 1000, 5000, 30000 };
	int i = 0;
	while (i < 7 && ms > le[i])
		i++;
	__atomic_add_fetch(&counters.ms_hist[i], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&counters.ms_sum, ms, __ATOMIC_RELAXED);
}

/* count_virus - one more find of name. */
static void count_virus(const char *name)
{
	pthread_mutex_lock(&names_mu);
	int i;
	for (i = 0; i < nnames; i++)
		if (!strcmp(names[i].name, name))
			break;
	if (i == nnames && nnames < NAMES_MAX) {
		snprintf(names[i].name, sizeof names[i].name, "%s", name);
		nnames++;
	}
	if (i < nnames)
		names[i].n++;
	pthread_mutex_unlock(&names_mu);
}

/* av_counters - a snapshot of the counters. */
void av_counters(struct av_counters *out)
{
	out->scanned = __atomic_load_n(&counters.scanned, __ATOMIC_RELAXED);
	out->viruses = __atomic_load_n(&counters.viruses, __ATOMIC_RELAXED);
	out->errors = __atomic_load_n(&counters.errors, __ATOMIC_RELAXED);
	out->oversize = __atomic_load_n(&counters.oversize, __ATOMIC_RELAXED);
	for (int i = 0; i < 8; i++)
		out->ms_hist[i] = __atomic_load_n(&counters.ms_hist[i], __ATOMIC_RELAXED);
	out->ms_sum = __atomic_load_n(&counters.ms_sum, __ATOMIC_RELAXED);
}

/* av_render_metrics - see av.h. Virus names come from signatures (and
 * clamd): label values are escaped as the exposition format asks. */
void av_render_metrics(struct strbuf *out)
{
	struct av_counters c;
	av_counters(&c);
	sb_printf(out, "# HELP perimd_av_scans_total messages scanned, by verdict\n"
		       "# TYPE perimd_av_scans_total counter\n"
		       "perimd_av_scans_total{verdict=\"clean\"} %llu\n"
		       "perimd_av_scans_total{verdict=\"virus\"} %llu\n",
		  (unsigned long long)(c.scanned - c.viruses), (unsigned long long)c.viruses);
	sb_printf(out, "# HELP perimd_av_errors_total scans that failed (scanner down, timeout, error)\n"
		       "# TYPE perimd_av_errors_total counter\nperimd_av_errors_total %llu\n",
		  (unsigned long long)c.errors);
	sb_printf(out, "# HELP perimd_av_oversize_total messages over av_max_size (not scanned)\n"
		       "# TYPE perimd_av_oversize_total counter\nperimd_av_oversize_total %llu\n",
		  (unsigned long long)c.oversize);
	sb_printf(out, "# HELP perimd_viruses_total viruses found, by name\n"
		       "# TYPE perimd_viruses_total counter\n");
	pthread_mutex_lock(&names_mu);
	for (int i = 0; i < nnames; i++) {
		char esc[2 * SCANNER_NAME_MAX + 1];
		size_t k = 0;
		for (const char *p = names[i].name; *p && k < sizeof esc - 3; p++) {
			if (*p == '\\' || *p == '"')
				esc[k++] = '\\';
			esc[k++] = *p == '\n' ? 'n' : *p;
		}
		esc[k] = 0;
		sb_printf(out, "perimd_viruses_total{name=\"%s\"} %llu\n", esc,
			  (unsigned long long)names[i].n);
	}
	pthread_mutex_unlock(&names_mu);
	static const char *const le[] = { "0.01", "0.05", "0.1", "0.5", "1", "5", "30", "+Inf" };
	sb_printf(out, "# HELP perimd_av_scan_seconds time to a scan verdict\n"
		       "# TYPE perimd_av_scan_seconds histogram\n");
	uint64_t cum = 0;
	for (int i = 0; i < 8; i++) {
		cum += c.ms_hist[i];
		sb_printf(out, "perimd_av_scan_seconds_bucket{le=\"%s\"} %llu\n", le[i],
			  (unsigned long long)cum);
	}
	sb_printf(out, "perimd_av_scan_seconds_sum %.3f\nperimd_av_scan_seconds_count %llu\n",
		  (double)c.ms_sum / 1000.0, (unsigned long long)cum);
}

/* av_virus_count - finds of one virus name. */
uint64_t av_virus_count(const char *name)
{
	uint64_t n = 0;
	pthread_mutex_lock(&names_mu);
	for (int i = 0; i < nnames; i++)
		if (!strcmp(names[i].name, name))
			n = names[i].n;
	pthread_mutex_unlock(&names_mu);
	return n;
}

/* ---- requests ------------------------------------------------------------ */

/* list_add - append r to l. */
static void list_add(struct av_list *l, struct av_req *r)
{
	r->list = l;
	r->next = NULL;
	r->prev = l->tail;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
}

/* list_del - take r off its list, if any. */
static void list_del(struct av_req *r)
{
	struct av_list *l = r->list;
	if (!l)
		return;
	if (r->prev)
		r->prev->next = r->next;
	else
		l->head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		l->tail = r->prev;
	r->next = r->prev = NULL;
	r->list = NULL;
}

/* req_free - release a request (off every list, no callback pending). */
static void req_free(struct av_req *r)
{
	list_del(r);
	ev_timer_stop(r->loop, &r->timer);
	ev_defer_cancel(r->loop, &r->defer);
	if (r->c)
		conn_free(r->c);
	free(r);
}

/* clean_name - a virus name fit for a reply line. */
static void clean_name(char *s)
{
	for (; *s; s++)
		if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
		      strchr(".-_:/+", *s)))
			*s = '_';
}

/* finish - the verdict: apply the actions, log, count, call back, free. */
static void finish(struct av_req *r, enum av_outcome o, const char *text)
{
	const struct conf *cf = r->cf;
	double secs = (double)(ev_now(r->loop) - r->t0) / 1000.0;
	char eng[48] = "";
	if (r->engine_us >= 0)
		snprintf(eng, sizeof eng, ", engine=%.6f", (double)r->engine_us / 1e6);
	const char *refusal = NULL;
	count_time(ev_now(r->loop) - r->t0);
	switch (o) {
	case AVO_CLEAN:
		__atomic_add_fetch(&counters.scanned, 1, __ATOMIC_RELAXED);
		log_info("%s: av: clean, scan=%.3f%s", r->msgid, secs, eng);
		break;
	case AVO_VIRUS:
		__atomic_add_fetch(&counters.scanned, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&counters.viruses, 1, __ATOMIC_RELAXED);
		if (text != r->text)
			snprintf(r->text, sizeof r->text, "%s", text);
		clean_name(r->text);
		count_virus(r->text);
		log_info("%s: av: virus found: %s, scan=%.3f%s", r->msgid, r->text, secs, eng);
		snprintf(r->refusal, sizeof r->refusal, "554 5.7.1 message rejected: virus found: %s",
			 r->text);
		refusal = r->refusal;
		break;
	case AVO_FAIL:
		__atomic_add_fetch(&counters.errors, 1, __ATOMIC_RELAXED);
		log_warn("%s: av: scan failed: %s, scan=%.3f%s, av_fail_action=%s", r->msgid, text, secs,
			 eng, cf->av_fail_action);
		if (strcmp(cf->av_fail_action, "accept") != 0)
			refusal = "451 4.3.0 content scanner unavailable";
		break;
	case AVO_OVERSIZE:
		__atomic_add_fetch(&counters.oversize, 1, __ATOMIC_RELAXED);
		log_info("%s: av: not scanned: size %llu over av_max_size %lld, av_oversize_action=%s",
			 r->msgid, (unsigned long long)spool_size(r->sp), cf->av_max_size,
			 cf->av_oversize_action);
		if (!strcmp(cf->av_oversize_action, "reject"))
			refusal = "552 5.3.4 message size exceeds the content scanning limit";
		else if (!strcmp(cf->av_oversize_action, "tempfail"))
			refusal = "451 4.3.0 message too large for the content scanner";
		break;
	}
	list_del(r);
	ev_timer_stop(r->loop, &r->timer);
	ev_defer_cancel(r->loop, &r->defer);
	if (r->c) {
		conn_free(r->c);
		r->c = NULL;
	}
	r->done(r->arg, refusal);
	free(r);
}

/* deferred - deliver an outcome known at av_scan() time. */
static void deferred(void *arg)
{
	struct av_req *r = arg;
	finish(r, r->dout, r->text);
}

/* finish_later - finish on the next loop iteration. */
static void finish_later(struct av_req *r, enum av_outcome o, const char *text)
{
	r->dout = o;
	snprintf(r->text, sizeof r->text, "%s", text);
	ev_defer(r->loop, &r->defer, deferred, r);
}

/* on_timeout - av_timeout passed without a verdict. */
static void on_timeout(void *arg)
{
	finish(arg, AVO_FAIL, "timed out");
}

/* ---- the scanner process, seen from a loop ------------------------------- */

/* al_down - the scanner socket is gone: every request of this loop fails. */
static void al_down(struct av_loop *al, const char *why)
{
	if (al->fd >= 0) {
		if (al->registered)
			ev_io_stop(al->loop, &al->io);
		close(al->fd);
		al->fd = -1;
		al->registered = 0;
	}
	struct av_list *ls[2] = { &al->sent, &al->queued };
	for (int i = 0; i < 2; i++)
		while (ls[i]->head)
			finish(ls[i]->head, AVO_FAIL, why);
}

/* al_flush - send queued requests until the socket is full. */
static void al_flush(struct av_loop *al)
{
	while (al->fd >= 0 && al->queued.head) {
		struct av_req *r = al->queued.head;
		struct scanner_req m = { .id = r->id };
		union {
			char buf[CMSG_SPACE(sizeof(int))];
			struct cmsghdr align;
		} cm;
		memset(&cm, 0, sizeof cm);
		struct iovec iov = { &m, sizeof m };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
				     .msg_control = cm.buf, .msg_controllen = sizeof cm.buf };
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &r->fd, sizeof(int));
		if (sendmsg(al->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == ENOBUFS) {
				ev_io_set(al->loop, &al->io, EV_READ | EV_WRITE);
				return;
			}
			char why[128];
			snprintf(why, sizeof why, "scanner socket: %s", strerror(errno));
			al_down(al, why);
			return;
		}
		list_del(r);
		list_add(&al->sent, r);
	}
	if (al->fd >= 0)
		ev_io_set(al->loop, &al->io, EV_READ);
}

/* al_io - answers arrived, or the socket can take more requests. */
static void al_io(void *arg, unsigned events)
{
	struct av_loop *al = arg;
	if (events & EV_WRITE)
		al_flush(al);
	while (al->fd >= 0) {
		struct scanner_ans a;
		ssize_t n = recv(al->fd, &a, sizeof a, MSG_DONTWAIT);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			al_down(al, n == 0 ? "scanner process ended" : strerror(errno));
			return;
		}
		if ((size_t)n != sizeof a)
			continue;
		a.name[sizeof a.name - 1] = 0;
		struct av_req *r = al->sent.head;
		while (r && r->id != a.id)
			r = r->next;
		if (!r)
			continue;   /* cancelled or timed out meanwhile */
		r->engine_us = a.us;
		finish(r, a.status == SCANNER_VIRUS ? AVO_VIRUS : a.status == SCANNER_CLEAN ? AVO_CLEAN : AVO_FAIL,
		       a.name);
	}
}

/* al_attach - on the loop: a restarted scanner's socket replaces the old. */
static void al_attach(void *arg)
{
	int *p = arg;
	struct av_loop *al = &av_loops[p[0]];
	al_down(al, "scanner restarted");
	al->fd = p[1];
	free(p);
	log_debug("av: loop %d attached to the scanner", ev_loop_index(al->loop));
}

/* scan_local - hand the message to the scanner process. */
static void scan_local(struct av_req *r)
{
	struct av_loop *al = &av_loops[ev_loop_index(r->loop)];
	if (al->fd < 0) {
		finish_later(r, AVO_FAIL, "scanner not running");
		return;
	}
	r->fd = spool_fd(r->sp);
	if (r->fd < 0) {
		char why[128];
		snprintf(why, sizeof why, "body file: %s", strerror(errno));
		finish_later(r, AVO_FAIL, why);
		return;
	}
	if (!al->registered) {
		ev_io_init(&al->io, al->fd, al_io, al);
		al->registered = 1;
	}
	r->al = al;
	r->id = ++al->next_id;
	list_add(&al->queued, r);
	al_flush(al);
}

/* ---- clamd (zINSTREAM) ---------------------------------------------------- */

/* clamd_pump - queue body chunks, then the zero-length end, as output drains. */
static void clamd_pump(struct av_req *r)
{
	char buf[CLAMD_CHUNK];
	uint64_t size = spool_size(r->sp);
	while (!r->sent_end && conn_wpending(r->c) < CLAMD_WBUF) {
		if (r->off < size) {
			const void *p;
			size_t n = spool_peek(r->sp, r->off, &p);
			if (!n) {
				ssize_t k = spool_read(r->sp, r->off, buf, sizeof buf);
				if (k <= 0) {
					finish(r, AVO_FAIL, "cannot read the body");
					return;
				}
				p = buf;
				n = (size_t)k;
			}
			if (n > CLAMD_CHUNK)
				n = CLAMD_CHUNK;
			uint32_t be = htonl((uint32_t)n);
			conn_write(r->c, &be, sizeof be);
			conn_write(r->c, p, n);
			r->off += n;
		} else {
			uint32_t zero = 0;
			conn_write(r->c, &zero, sizeof zero);
			r->sent_end = 1;
		}
	}
}

/* clamd_connected - send the command and start the stream. */
static void clamd_connected(void *arg)
{
	struct av_req *r = arg;
	conn_write(r->c, "zINSTREAM", 10);   /* with its NUL */
	clamd_pump(r);
}

/* clamd_drain - room for more of the body. */
static void clamd_drain(void *arg)
{
	struct av_req *r = arg;
	if (!r->sent_end)
		clamd_pump(r);
}

/* clamd_read - the reply: "stream: OK" or "stream: NAME FOUND", NUL-ended. */
static void clamd_read(void *arg)
{
	struct av_req *r = arg;
	size_t len;
	const char *p = conn_rbuf(r->c, &len);
	size_t take = len < sizeof r->rbuf - 1 - r->rlen ? len : sizeof r->rbuf - 1 - r->rlen;
	memcpy(r->rbuf + r->rlen, p, take);
	r->rlen += take;
	conn_consume(r->c, len);
	r->rbuf[r->rlen] = 0;
	if (strlen(r->rbuf) == r->rlen && r->rlen < sizeof r->rbuf - 1)
		return;   /* no NUL yet */
	char *t = r->rbuf;
	t[strcspn(t, "\r\n")] = 0;
	if (!strncmp(t, "stream: ", 8))
		t += 8;
	size_t tl = strlen(t);
	if (!strcmp(t, "OK")) {
		finish(r, AVO_CLEAN, "");
	} else if (tl > 6 && !strcmp(t + tl - 6, " FOUND")) {
		t[tl - 6] = 0;
		finish(r, AVO_VIRUS, t);
	} else {
		char why[300];
		snprintf(why, sizeof why, "clamd: %s", t);
		finish(r, AVO_FAIL, why);
	}
}

/* clamd_error - connection failed or closed before the reply. */
static void clamd_error(void *arg, int err)
{
	struct av_req *r = arg;
	char why[128];
	snprintf(why, sizeof why, "clamd %s: %s", r->cf->av_scanner + 6,
		 err ? strerror(err) : "connection closed");
	finish(r, AVO_FAIL, why);
}

static const struct conn_ops clamd_ops = {
	.on_connect = clamd_connected,
	.on_read = clamd_read,
	.on_drain = clamd_drain,
	.on_error = clamd_error,
};

/* scan_clamd - stream the message to clamd. */
static void scan_clamd(struct av_req *r, const struct sockaddr_storage *ss, socklen_t len)
{
	r->c = conn_connect(r->loop, (const struct sockaddr *)ss, len, (uint64_t)r->cf->av_timeout,
			    &clamd_ops, r);
	if (!r->c) {
		char why[128];
		snprintf(why, sizeof why, "clamd: %s", strerror(errno));
		finish_later(r, AVO_FAIL, why);
	}
}

/* av_scan - start scanning a stored message. */
struct av_req *av_scan(struct ev_loop *loop, const struct conf *cf, struct spool *sp,
		       const char *msgid, av_done_fn *done, void *arg)
{
	struct av_req *r = xcalloc(1, sizeof *r);
	r->loop = loop;
	r->cf = cf;
	r->sp = sp;
	r->fd = -1;
	r->done = done;
	r->arg = arg;
	r->t0 = ev_now(loop);
	r->engine_us = -1;
	snprintf(r->msgid, sizeof r->msgid, "%s", msgid);
	ev_timer_start(loop, &r->timer, (uint64_t)cf->av_timeout, on_timeout, r);
	struct sockaddr_storage ss;
	socklen_t len = 0;
	enum av_kind k = av_parse(cf->av_scanner, &ss, &len);
	if (spool_size(sp) > (uint64_t)cf->av_max_size)
		finish_later(r, AVO_OVERSIZE, "");
	else if (k == AVK_LIBCLAMAV && av_loops && ev_loop_index(loop) < av_nloops)
		scan_local(r);
	else if (k == AVK_CLAMD)
		scan_clamd(r, &ss, len);
	else
		finish_later(r, AVO_FAIL, "scanner not running (av_scanner changed: restart perimd)");
	return r;
}

/* av_cancel - forget a request whose session is gone. */
void av_cancel(struct av_req *r)
{
	req_free(r);
}

/* ---- the supervisor --------------------------------------------------------- */

/* sup_spawn - start a scanner process; fills fds[nloops] with the loops'
 * ends of their sockets. Returns 0 or -1 with err. */
static int sup_spawn(int *fds, char *err, size_t errlen)
{
	int n = av_nloops;
	int (*sv)[2] = xcalloc((size_t)n + 1, sizeof *sv);
	int made = 0, rc = -1;
	for (; made <= n; made++)
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv[made]) < 0) {
			snprintf(err, errlen, "socketpair: %s", strerror(errno));
			goto out;
		}
	char a_threads[24], a_max[24], a_timeout[24], a_n[24];
	snprintf(a_threads, sizeof a_threads, "%lld", sup.threads);
	snprintf(a_max, sizeof a_max, "%lld", sup.max_size);
	snprintf(a_timeout, sizeof a_timeout, "%lld", sup.timeout);
	snprintf(a_n, sizeof a_n, "%d", n);
	char *argv[] = { "perimd-scanner", SCANNER_ARG, sup.dbdir, sup.tmpdir, a_threads,
			 a_max, a_timeout, a_n, NULL };
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
	sup.started = mono_ms();
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
	uint64_t deadline = mono_ms() + READY_WAIT_MS;
	while (!__atomic_load_n(&sup.stop, __ATOMIC_RELAXED)) {
		uint64_t now = mono_ms();
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
				 "%d threads", (int)sup.pid, scanner_version(), sigs, sup.dbdir, ms, th);
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
	sup_reap(why);
	int *fds = xcalloc((size_t)av_nloops, sizeof *fds);
	while (!__atomic_load_n(&sup.stop, __ATOMIC_RELAXED)) {
		/* No faster than one start a second when it keeps dying. */
		uint64_t since = mono_ms() - sup.started;
		if (since < 1000)
			sup_wait((int)(1000 - since));
		char err[512];
		if (sup_spawn(fds, err, sizeof err) < 0) {
			log_err("%s", err);
			sup.started = mono_ms();
			continue;
		}
		if (sup_ready(err, sizeof err) == 0) {
			for (int i = 0; i < av_nloops; i++) {
				int *p = xmalloc(2 * sizeof *p);
				p[0] = i;
				p[1] = fds[i];
				ev_post(av_loops[i].loop, al_attach, p);
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
	uint64_t last_ping = 0, last_pong = mono_ms();
	while (!__atomic_load_n(&sup.stop, __ATOMIC_RELAXED)) {
		int readable = sup_wait(1000);
		if (__atomic_load_n(&sup.stop, __ATOMIC_RELAXED))
			break;
		const char *dead = NULL;
		char buf[512];
		if (__atomic_exchange_n(&sup.reload, 0, __ATOMIC_ACQ_REL)) {
			log_info("scanner: reloading signatures from %s", sup.dbdir);
			send(sup.ctl, "reload", 6, MSG_NOSIGNAL);
		}
		if (readable) {
			ssize_t n = recv(sup.ctl, buf, sizeof buf - 1, MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				dead = "ended";
			if (n > 0) {
				buf[n] = 0;
				unsigned long long age = 0, ms = 0;
				unsigned sigs = 0;
				int inflight = 0;
				if (sscanf(buf, "pong %llu %d", &age, &inflight) == 2) {
					last_pong = mono_ms();
					if (age > (unsigned long long)sup.timeout + HANG_GRACE_MS)
						dead = "a scan hangs past av_timeout";
				} else if (sscanf(buf, "reloaded %u %llu", &sigs, &ms) == 2) {
					log_info("scanner: signatures reloaded: %u signatures in %llu ms", sigs, ms);
				} else if (!strncmp(buf, "reload-failed ", 14)) {
					log_err("scanner: signature reload failed, keeping the old engine: %s", buf + 14);
				} else if (!strncmp(buf, "log ", 4)) {
					log_info("scanner: %s", buf + 4);
				}
			}
		}
		uint64_t now = mono_ms();
		if (!dead && now - last_pong > PONG_WAIT_MS)
			dead = "not answering";
		if (!dead && now - last_ping >= 1000) {
			send(sup.ctl, "ping", 4, MSG_NOSIGNAL);
			last_ping = now;
		}
		if (dead) {
			sup_restart(dead);
			last_pong = mono_ms();
		}
	}
	return arg;
}

/* av_check - av_scanner's syntax, and whether this build can honour it. */
int av_check(const struct conf *cf, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	enum av_kind k = av_parse(cf->av_scanner, &ss, &len);
	if (k == AVK_BAD) {
		snprintf(err, errlen, "av_scanner = %s: expected none, libclamav, clamd:/path or "
			 "clamd:HOST:PORT", cf->av_scanner);
		return -1;
	}
#ifdef PERIMD_NO_CLAMAV
	/* Refused at -t and at start, never discovered at the first message. */
	if (k == AVK_LIBCLAMAV) {
		snprintf(err, errlen, "av_scanner = libclamav: this perimd is built without libclamav "
			 "(perimd -V); use clamd:/path/to/socket or clamd:HOST:PORT");
		return -1;
	}
#endif
	return 0;
}

/* av_start - start and supervise the scanner (av_scanner = libclamav). */
int av_start(const struct conf *cf, struct ev_loop **loops, int nloops, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (av_check(cf, err, errlen) < 0)
		return -1;
	enum av_kind k = av_parse(cf->av_scanner, &ss, &len);
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
	sup.max_size = cf->av_max_size;
	sup.timeout = cf->av_timeout;
	if (pipe2(sup.wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	int *fds = xcalloc((size_t)nloops, sizeof *fds);
	log_info("scanner: loading signatures from %s; no mail is accepted until it is ready",
		 sup.dbdir);
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
	if (!sup.running) {
		if (!strcmp(cf->av_scanner, "libclamav"))
			log_warn("reload: av_scanner = libclamav needs a restart of perimd");
		return;
	}
	if (strcmp(cf->av_scanner, "libclamav") || strcmp(cf->clamav_database_directory, sup.dbdir) ||
	    cf->av_threads != sup.threads)
		log_warn("reload: av_scanner, clamav_database_directory and av_threads changes need a "
			 "restart; reloading the signatures of %s", sup.dbdir);
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
				list_del(r);
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
