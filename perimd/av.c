/*
 * av.c - the scanner front: per-loop requests to the scanner process (fd
 * passing over a SOCK_SEQPACKET socket), or to a clamd over zINSTREAM, and
 * the counters. The supervisor thread that keeps the scanner process alive
 * is av_sup.c's; av_int.h is what the two share.
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
 * - The supervisor thread (av_sup.c) alone starts, pings, reloads and
 *   restarts the scanner process; it hands new sockets to the loops with
 *   ev_post(). A process is started by re-executing perimd (posix_spawn),
 *   never by a bare fork() of this threaded process.
 * - A verdict is never "clean" unless a scanner said so: oversize and
 *   failures follow av_oversize_action / av_fail_action and are logged.
 * - A scan that stopped at a scanner limit (libclamav's or clamd's
 *   "Heuristics.Limits.Exceeded.*" name, clamd's StreamMaxLength) is "not
 *   fully scanned": neither clean nor a virus; it follows
 *   av_oversize_action and is counted per limit.
 */
#include "av.h"
#include "av_int.h"
#include "conf.h"
#include "conn.h"
#include "ev.h"
#include "log.h"
#include "net.h"
#include "scanner.h"
#include "spool.h"
#include "stats.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct av_loop *av_loops;
int av_nloops;

static struct av_counters counters; /* atomic fields */
static pthread_mutex_t names_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char name[SCANNER_NAME_MAX];
	uint64_t n;
} names[NAMES_MAX];
static int nnames;

/* The limits a scan can stop at: libclamav's heuristic names (after
 * SCANNER_LIMIT_PREFIX; "Email" covers its fixed mail parser limits
 * EmailHeaders, EmailMIMEPartsPerMessage, ...), clamd's StreamMaxLength,
 * and anything else. The label is perimd_av_incomplete_total's. */
enum {
	LIM_RECURSION,
	LIM_FILES,
	LIM_FILE_SIZE,
	LIM_SCAN_SIZE,
	LIM_SCAN_TIME,
	LIM_EMAIL,
	LIM_STREAM,
	LIM_OTHER,
	LIM_N
};
static const struct {
	const char *name, *label, *what;
} limits[LIM_N] = {
	{ "MaxRecursion", "max_recursion", "archive recursion limit" },
	{ "MaxFiles", "max_files", "file count limit" },
	{ "MaxFileSize", "max_file_size", "file size limit" },
	{ "MaxScanSize", "max_scan_size", "scan size limit" },
	{ "MaxScanTime", "max_scan_time", "scan time limit" },
	{ "Email", "email", "mail structure limit" },
	{ "", "stream_max_length", "clamd stream size limit" },
	{ "", "other", "scanner limit" },
};
static uint64_t incomplete[LIM_N]; /* atomic */

/* av_kind_parse - the kind of av_scanner, and clamd's address. */
enum av_kind av_kind_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len)
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

/* av_scanner parsed: once per loaded configuration and thread, not per
 * message (a conf's gen is unique and never 0). */
struct av_target {
	unsigned long long gen;
	enum av_kind kind;
	struct sockaddr_storage ss;
	socklen_t len;
};
static __thread struct av_target av_target_cur;

/* av_target_of - cf's av_scanner, parsed when cf is new to this thread. */
static const struct av_target *av_target_of(const struct conf *cf)
{
	struct av_target *t = &av_target_cur;
	if (t->gen != cf->gen || !cf->gen) {
		t->len = 0;
		t->kind = av_kind_parse(cf->av_scanner, &t->ss, &t->len);
		t->gen = cf->gen;
	}
	return t;
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

/* limit_of - which limit a "Heuristics.Limits.Exceeded." name reports. */
static int limit_of(const char *name)
{
	const char *n = name + strlen(SCANNER_LIMIT_PREFIX);
	for (int i = 0; i < LIM_STREAM; i++)
		if (!strncmp(n, limits[i].name, strlen(limits[i].name)))
			return i;
	return LIM_OTHER;
}

/* The most virus names perimd_viruses_total keeps (av_names_cap_set());
 * finds of names beyond it count as name="other", so a flood of distinct
 * names cannot grow the metrics without bound. */
static int names_cap = NAMES_MAX;

/* av_names_cap_set - see av_int.h. */
void av_names_cap_set(int cap)
{
	__atomic_store_n(&names_cap,
			 cap < 1                   ? 1
			     : cap > NAMES_MAX - 1 ? NAMES_MAX - 1
						   : cap,
			 __ATOMIC_RELAXED);
}

/* count_virus - one more find of name ("other" once the set is full). */
static void count_virus(const char *name)
{
	pthread_mutex_lock(&names_mu);
	int i;
	for (i = 0; i < nnames; i++)
		if (!strcmp(names[i].name, name))
			break;
	if (i == nnames && nnames >= __atomic_load_n(&names_cap, __ATOMIC_RELAXED)) {
		name = "other";
		for (i = 0; i < nnames && strcmp(names[i].name, name); i++)
			;
	}
	if (i == nnames && nnames < NAMES_MAX) {
		snprintf(names[i].name, sizeof names[i].name, "%s", name);
		nnames++;
	}
	if (i < nnames)
		names[i].n++;
	pthread_mutex_unlock(&names_mu);
}

/* av_counters - a snapshot of the counters. */
static void av_counters(struct av_counters *out)
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
	sb_printf(out,
		  "# HELP perimd_av_scans_total messages scanned, by verdict\n"
		  "# TYPE perimd_av_scans_total counter\n"
		  "perimd_av_scans_total{verdict=\"clean\"} %llu\n"
		  "perimd_av_scans_total{verdict=\"virus\"} %llu\n",
		  (unsigned long long)(c.scanned - c.viruses), (unsigned long long)c.viruses);
	sb_printf(out,
		  "# HELP perimd_av_errors_total scans that failed (scanner down, timeout, error)\n"
		  "# TYPE perimd_av_errors_total counter\nperimd_av_errors_total %llu\n",
		  (unsigned long long)c.errors);
	sb_printf(out,
		  "# HELP perimd_av_oversize_total messages over av_max_size (not scanned)\n"
		  "# TYPE perimd_av_oversize_total counter\nperimd_av_oversize_total %llu\n",
		  (unsigned long long)c.oversize);
	sb_printf(out,
		  "# HELP perimd_av_incomplete_total messages not fully scanned (a scanner "
		  "limit reached), by limit; they follow av_oversize_action\n"
		  "# TYPE perimd_av_incomplete_total counter\n");
	for (int i = 0; i < LIM_N; i++)
		sb_printf(out, "perimd_av_incomplete_total{limit=\"%s\"} %llu\n", limits[i].label,
			  (unsigned long long)__atomic_load_n(&incomplete[i], __ATOMIC_RELAXED));
	sb_printf(out,
		  "# HELP perimd_viruses_total viruses found, by name\n"
		  "# TYPE perimd_viruses_total counter\n");
	pthread_mutex_lock(&names_mu);
	for (int i = 0; i < nnames; i++) {
		sb_add(out, "perimd_viruses_total{name=\"", strlen("perimd_viruses_total{name=\""));
		stats_escape_label(out, names[i].name);
		sb_printf(out, "\"} %llu\n", (unsigned long long)names[i].n);
	}
	pthread_mutex_unlock(&names_mu);
	static const char *const le[] = { "0.01", "0.05", "0.1", "0.5", "1", "5", "30", "+Inf" };
	sb_printf(out,
		  "# HELP perimd_av_scan_seconds time to a scan verdict\n"
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

/* av_list_del - take r off its list, if any. */
void av_list_del(struct av_req *r)
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
	av_list_del(r);
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
	char eng[96] = "";
	if (r->engine_us >= 0)
		snprintf(eng, sizeof eng, ", engine=%.6f", (double)r->engine_us / 1e6);
	else if (o == AVO_FAIL && r->al && r->list == &r->al->sent)
		/* The scanner's name for it (loop/id): its line about a scan
		 * it had to end later names the same. */
		snprintf(eng, sizeof eng, ", request=%d/%llu", ev_loop_index(r->loop),
			 (unsigned long long)r->id);
	const char *refusal = NULL;
	count_time(ev_now(r->loop) - r->t0);
	if (o == AVO_VIRUS || o == AVO_INCOMPLETE) {
		/* Names come from signatures or a clamd: fit for a reply line. */
		if (text != r->text)
			snprintf(r->text, sizeof r->text, "%s", text);
		clean_name(r->text);
		text = r->text;
		/* A limit's heuristic name is not a virus: the scanner stopped early. */
		if (!strncmp(text, SCANNER_LIMIT_PREFIX, strlen(SCANNER_LIMIT_PREFIX)))
			o = AVO_INCOMPLETE;
	}
	switch (o) {
	case AVO_CLEAN:
		__atomic_add_fetch(&counters.scanned, 1, __ATOMIC_RELAXED);
		log_info("%s: av: clean, scan=%.3f%s", r->msgid, secs, eng);
		break;
	case AVO_VIRUS:
		__atomic_add_fetch(&counters.scanned, 1, __ATOMIC_RELAXED);
		__atomic_add_fetch(&counters.viruses, 1, __ATOMIC_RELAXED);
		count_virus(r->text);
		log_info("%s: av: virus found: %s, scan=%.3f%s", r->msgid, r->text, secs, eng);
		if (!strncmp(r->text, "Heuristics.Encrypted.", 21))
			/* av_alert_encrypted (clamd: AlertEncrypted): what cannot be
			 * decrypted cannot be scanned. */
			snprintf(r->refusal, sizeof r->refusal,
				 "554 5.7.1 message rejected: encrypted content cannot be scanned: %s",
				 r->text);
		else
			snprintf(r->refusal, sizeof r->refusal, "554 5.7.1 message rejected: virus found: %s",
				 r->text);
		refusal = r->refusal;
		break;
	case AVO_INCOMPLETE: {
		/* text: a SCANNER_LIMIT_PREFIX name, or "" for clamd's StreamMaxLength */
		int lim = *text ? limit_of(text) : LIM_STREAM;
		__atomic_add_fetch(&incomplete[lim], 1, __ATOMIC_RELAXED);
		log_warn("%s: av: not fully scanned: limit=%s (%s), scan=%.3f%s, av_oversize_action=%s",
			 r->msgid, limits[lim].label, *text ? text : "clamd: INSTREAM size limit exceeded",
			 secs, eng, cf->av_oversize_action);
		if (cf->av_oversize_action_e == AV_OVERSIZE_REJECT)
			snprintf(r->refusal, sizeof r->refusal, "554 5.7.0 message not fully scanned: %s",
				 limits[lim].what);
		else if (cf->av_oversize_action_e == AV_OVERSIZE_TEMPFAIL)
			snprintf(r->refusal, sizeof r->refusal, "451 4.7.0 message not fully scanned: %s",
				 limits[lim].what);
		if (cf->av_oversize_action_e != AV_OVERSIZE_ACCEPT)
			refusal = r->refusal;
		break;
	}
	case AVO_FAIL:
		__atomic_add_fetch(&counters.errors, 1, __ATOMIC_RELAXED);
		log_warn("%s: av: scan failed: %s, scan=%.3f%s, av_fail_action=%s", r->msgid, text, secs, eng,
			 cf->av_fail_action);
		if (cf->av_fail_action_e != AV_FAIL_ACCEPT)
			refusal = "451 4.3.0 content scanner unavailable";
		break;
	case AVO_OVERSIZE:
		__atomic_add_fetch(&counters.oversize, 1, __ATOMIC_RELAXED);
		log_info("%s: av: not scanned: size %llu over av_max_size %lld, av_oversize_action=%s",
			 r->msgid, (unsigned long long)spool_size(r->sp), cf->av_max_size,
			 cf->av_oversize_action);
		if (cf->av_oversize_action_e == AV_OVERSIZE_REJECT)
			refusal = "552 5.3.4 message size exceeds the content scanning limit";
		else if (cf->av_oversize_action_e == AV_OVERSIZE_TEMPFAIL)
			refusal = "451 4.3.0 message too large for the content scanner";
		break;
	}
	av_list_del(r);
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

/* on_timeout - av_timeout passed without a verdict. A scan waiting on
 * the scanner's inplace signature load gets its whole av_timeout after
 * the load ends: the time does not run while the engine loads. */
static void on_timeout(void *arg)
{
	struct av_req *r = arg;
	uint64_t now = ev_now(r->loop), tmo = (uint64_t)r->cf->av_timeout;
	if (r->al && __atomic_load_n(&av_loading, __ATOMIC_ACQUIRE)) {
		ev_timer_start(r->loop, &r->timer, tmo, on_timeout, r);
		return;
	}
	uint64_t end = __atomic_load_n(&av_load_end, __ATOMIC_ACQUIRE);
	if (r->al && end > r->t0 && end + tmo > now) {
		ev_timer_start(r->loop, &r->timer, end + tmo - now, on_timeout, r);
		return;
	}
	finish(r, AVO_FAIL, "timed out");
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
		struct msghdr mh = {
			.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cm.buf, .msg_controllen = sizeof cm.buf
		};
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
		spool_lend(r->sp);
		av_list_del(r);
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
			continue;    /* cancelled or timed out meanwhile */
		spool_return(r->sp); /* the scanner reads it no more */
		r->engine_us = a.us;
		finish(r,
		       a.status == SCANNER_VIRUS       ? AVO_VIRUS
			   : a.status == SCANNER_CLEAN ? AVO_CLEAN
						       : AVO_FAIL,
		       a.name);
	}
}

/* av_loop_attach - on the loop: a restarted scanner's socket replaces the old. */
void av_loop_attach(void *arg)
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
	conn_write(r->c, "zINSTREAM", 10); /* with its NUL */
	clamd_pump(r);
}

/* clamd_drain - room for more of the body. */
static void clamd_drain(void *arg)
{
	struct av_req *r = arg;
	if (!r->sent_end)
		clamd_pump(r);
}

static void clamd_answer(struct av_req *r);

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
		return; /* no NUL yet */
	clamd_answer(r);
}

/* clamd_answer - the reply in rbuf: "stream: OK", "stream: NAME FOUND" (a
 * "Heuristics.Limits.Exceeded.*" NAME is a limit: finish() knows), or an
 * error; "INSTREAM size limit exceeded" is clamd's StreamMaxLength, a
 * message too large for that clamd: not fully scanned, not a failure
 * answered 451 on every retry. */
static void clamd_answer(struct av_req *r)
{
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
	} else if (!strncmp(t, "INSTREAM size limit exceeded", 28)) {
		finish(r, AVO_INCOMPLETE, "");
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
	if (err == EPIPE || err == ECONNRESET) {
		/* clamd answers StreamMaxLength and closes while we still send:
		 * our write fails before its answer is read. Read it now. */
		ssize_t n;
		while (r->rlen < sizeof r->rbuf - 1 &&
		       ((n = recv(conn_fd(r->c), r->rbuf + r->rlen, sizeof r->rbuf - 1 - r->rlen,
				  MSG_DONTWAIT)) > 0 ||
			(n < 0 && errno == EINTR)))
			if (n > 0)
				r->rlen += (size_t)n;
	}
	r->rbuf[r->rlen] = 0;
	const char *t = !strncmp(r->rbuf, "stream: ", 8) ? r->rbuf + 8 : r->rbuf;
	if (!strncmp(t, "INSTREAM size limit exceeded", 28)) {
		/* Only that answer is taken from a connection that failed: a
		 * cut "stream: OK" is no verdict. */
		clamd_answer(r);
		return;
	}
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
struct av_req *av_scan(struct ev_loop *loop, const struct conf *cf, struct spool *sp, const char *msgid,
		       av_done_fn *done, void *arg)
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
	const struct av_target *t = av_target_of(cf);
	if (spool_size(sp) > (uint64_t)cf->av_max_size)
		finish_later(r, AVO_OVERSIZE, "");
	else if (t->kind == AVK_LIBCLAMAV && av_loops && ev_loop_index(loop) < av_nloops)
		scan_local(r);
	else if (t->kind == AVK_CLAMD)
		scan_clamd(r, &t->ss, t->len);
	else
		finish_later(r, AVO_FAIL, "scanner not running (av_scanner changed: restart perimd)");
	return r;
}

/* av_backlog_limit - see av.h. */
int av_backlog_limit(const struct conf *cf)
{
	return 2 * conf_per_cpu(cf->av_threads);
}

/* av_cancel - forget a request whose session is gone. */
void av_cancel(struct av_req *r)
{
	req_free(r);
}
