/*
 * stats.c - the counters of every thread, summed on read; labelled series;
 * the Prometheus rendering; health; the per-minute history's clock and
 * file; the stats_listen request handler and the `perimd stats` command.
 *
 * Invariants:
 * - A thread writes only its own block (stats_tl), with relaxed stores;
 *   blocks are pushed on a global list under blocks_mu once and never
 *   removed, so a reader walks the list without a lock and sees every
 *   count at most a moment late. Gauges are sums of +1/-1 over threads.
 * - Labelled series (families) and the backend stage names are the slow
 *   path: a mutex, for events per connection or rarer.
 * - The history and the HTTP server live on io loop 0 only. The history
 *   file is written whole then renamed; a write never replaces a newer
 *   snapshot (sequence numbers), so the final save at exit wins over a
 *   periodic save still running on a worker.
 */
#include "stats.h"
#include "av.h"
#include "conf.h"
#include "ev.h"
#include "http.h"
#include "jobs.h"
#include "log.h"
#include "net.h"
#include "smtpd.h"
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_MS 5000            /* history sample period */
#define SAVE_TICKS 60           /* save every 5 minutes */

__thread struct stats_block *stats_tl;
static struct stats_block *blocks;     /* published with release stores */
static pthread_mutex_t blocks_mu = PTHREAD_MUTEX_INITIALIZER;

static const uint64_t bounds_ms[STATS_NBUCKETS] = {
	1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000,
};

static const struct {
	const char *name, *labels, *help;
	int gauge;
} rows[ST__COUNT] = {
#define STAT(id, type, name, labels, help) {name, labels, help, STATS_##type},
#define HIST(id, name, help)
#define STATS_COUNTER 0
#define STATS_GAUGE 1
#include "stats_names.h"
#undef STAT
#undef HIST
};

static const struct {
	const char *name, *help;
} hrows[SH__COUNT] = {
#define STAT(id, type, name, labels, help)
#define HIST(id, name, help) {name, help},
#include "stats_names.h"
#undef STAT
#undef HIST
};

/* ---- counting ----------------------------------------------------------- */

/* stats_block_new - this thread's block, registered once. */
struct stats_block *stats_block_new(void)
{
	if (stats_tl)
		return stats_tl;
	struct stats_block *b = xcalloc(1, sizeof *b);
	pthread_mutex_lock(&blocks_mu);
	b->next = blocks;
	__atomic_store_n(&blocks, b, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&blocks_mu);
	stats_tl = b;
	return b;
}

/* bump - a relaxed add to a slot of this thread's block. */
static inline void bump(uint64_t *slot, uint64_t n)
{
	__atomic_store_n(slot, *slot + n, __ATOMIC_RELAXED);
}

/* rd - a relaxed read of another thread's slot. */
static inline uint64_t rd(const uint64_t *slot)
{
	return __atomic_load_n(slot, __ATOMIC_RELAXED);
}

#define FOR_BLOCKS(b) \
	for (struct stats_block *b = __atomic_load_n(&blocks, __ATOMIC_ACQUIRE); b; b = b->next)

/* stats_observe - one histogram observation. */
void stats_observe(enum stats_hist h, uint64_t ms)
{
#ifndef PERIMD_NO_STATS
	struct stats_block *b = stats_tl ? stats_tl : stats_block_new();
	int i = 0;
	while (i < STATS_NBUCKETS && ms > bounds_ms[i])
		i++;
	bump(&b->hb[h][i], 1);
	bump(&b->hsum[h], ms);
#else
	(void)h;
	(void)ms;
#endif
}

static const char *stages[STATS_MAX_STAGES];
static int nstages;
static pthread_mutex_t stages_mu = PTHREAD_MUTEX_INITIALIZER;

/* stage_index - the slot of a stage name (by pointer), added on first use. */
static __attribute__((unused)) int stage_index(const char *stage)
{
	int n = __atomic_load_n(&nstages, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++)
		if (stages[i] == stage)
			return i;
	pthread_mutex_lock(&stages_mu);
	int i;
	for (i = 0; i < nstages && stages[i] != stage; i++)
		;
	if (i == nstages) {
		if (nstages == STATS_MAX_STAGES) {
			i = -1;
		} else {
			stages[i] = stage;
			__atomic_store_n(&nstages, i + 1, __ATOMIC_RELEASE);
		}
	}
	pthread_mutex_unlock(&stages_mu);
	return i;
}

/* stats_backend_reply - count a backend reply by stage and class. */
void stats_backend_reply(const char *stage, int code)
{
#ifndef PERIMD_NO_STATS
	int i = stage_index(stage);
	if (i < 0)
		return;
	struct stats_block *b = stats_tl ? stats_tl : stats_block_new();
	bump(&b->breply[i][code < 400 ? 0 : code < 500 ? 1 : 2], 1);
#else
	(void)stage;
	(void)code;
#endif
}

/* stats_reject_rule - a policy refusal, by the rule's name. */
void stats_reject_rule(const char *rule)
{
	static const struct {
		const char *prefix;
		enum stats_id id;
	} map[] = {
		{"grey", ST_rej_greylist}, {"dnsbl", ST_rej_dnsbl},
		{"rbl", ST_rej_dnsbl}, {"access", ST_rej_access},
		{"recipient", ST_rej_unknown_recipient}, {"verify", ST_rej_unknown_recipient},
		{"virus", ST_rej_virus}, {"helo", ST_rej_rfc},
		{"tempfail", ST_rej_tempfail},
	};
	for (size_t i = 0; rule && i < sizeof map / sizeof map[0]; i++)
		if (!strncmp(rule, map[i].prefix, strlen(map[i].prefix))) {
			stats_inc(map[i].id);
			return;
		}
	stats_inc(ST_rej_policy);
}

/* stats_refusal - see stats.h. */
void stats_refusal(const char *reply)
{
	const char *enh = strchr(reply, ' ');
	enh = enh ? enh + 1 : "";
	if (!strncmp(enh, "5.3.4", 5))
		stats_inc(ST_rej_size);
	else if (!strncmp(enh, "5.5.2", 5))
		stats_inc(ST_rej_smuggling);
	else if (!strncmp(enh, "5.4.6", 5))
		stats_inc(ST_rej_loop);
	else if (!strncmp(enh, "4.3.1", 5))
		stats_inc(ST_rej_spool_full);
	else if (strcasestr(reply, "virus") || strcasestr(reply, "infected"))
		stats_inc(ST_rej_virus);
	else if (reply[0] == '4')
		stats_inc(ST_rej_tempfail);
	else
		stats_inc(ST_rej_policy);
}

/* stats_message_done - see stats.h. */
void stats_message_done(int code, uint64_t ms)
{
	stats_observe(SH_latency, ms);
	if (code < 300)
		stats_inc(ST_msg_relayed);
	else if (code < 500)
		stats_inc(ST_rej_backend_tempfail);
	else
		stats_inc(ST_rej_backend_reject);
}

/* stats_backend_connected - see stats.h. */
void stats_backend_connected(const char *name, int ok)
{
	stats_inc(ok ? ST_backend_connects : ST_backend_connect_fail);
	stats_family_set("perimd_backend_up", "backend", name, ok);
}

/* stats_observe_since - see stats.h. */
void stats_observe_since(enum stats_hist h, uint64_t start, uint64_t now)
{
	if (start && now >= start)
		stats_observe(h, now - start);
}

/* stats_value - a fixed metric summed over threads. */
int64_t stats_value(enum stats_id id)
{
	uint64_t s = 0;
	FOR_BLOCKS(b)
	s += rd(&b->v[id]);
	return (int64_t)s;
}

/* ---- labelled series ---------------------------------------------------- */

struct fseries {
	struct fseries *next;
	char *label, *value;
	int64_t v;
};

struct family {
	struct family *next;
	char *name, *type, *help;
	struct fseries *series;
};

static struct family *families;
static pthread_mutex_t fam_mu = PTHREAD_MUTEX_INITIALIZER;

/* family_get - find or make a family (fam_mu held). */
static struct family *family_get(const char *name, const char *type)
{
	struct family *f;
	for (f = families; f; f = f->next)
		if (!strcmp(f->name, name))
			return f;
	f = xcalloc(1, sizeof *f);
	f->name = xstrdup(name);
	f->type = xstrdup(type);
	f->help = xstrdup(name);
	/* Kept in name order, so the output is stable. */
	struct family **pp = &families;
	while (*pp && strcmp((*pp)->name, name) < 0)
		pp = &(*pp)->next;
	f->next = *pp;
	*pp = f;
	return f;
}

/* stats_family_declare - type and help of a labelled family. */
void stats_family_declare(const char *name, const char *type, const char *help)
{
	pthread_mutex_lock(&fam_mu);
	struct family *f = family_get(name, type);
	free(f->type);
	free(f->help);
	f->type = xstrdup(type);
	f->help = xstrdup(help);
	pthread_mutex_unlock(&fam_mu);
}

/* family_update - add to or set one series. */
static void family_update(const char *name, const char *type, const char *label,
			  const char *value, int64_t n, int set)
{
	pthread_mutex_lock(&fam_mu);
	struct family *f = family_get(name, type);
	struct fseries *s;
	for (s = f->series; s; s = s->next)
		if (!strcmp(s->label, label) && !strcmp(s->value, value))
			break;
	if (!s) {
		s = xcalloc(1, sizeof *s);
		s->label = xstrdup(label);
		s->value = xstrdup(value);
		struct fseries **pp = &f->series;
		while (*pp && strcmp((*pp)->value, value) < 0)
			pp = &(*pp)->next;
		s->next = *pp;
		*pp = s;
	}
	s->v = set ? n : s->v + n;
	pthread_mutex_unlock(&fam_mu);
}

void stats_family_add(const char *name, const char *label, const char *value, int64_t n)
{
	family_update(name, "counter", label, value, n, 0);
}

void stats_family_set(const char *name, const char *label, const char *value, int64_t v)
{
	family_update(name, "gauge", label, value, v, 1);
}

/* ---- health ------------------------------------------------------------- */

static int health = STATS_STARTING;
static int ready_holds;

void stats_health_set(enum stats_health h)
{
	__atomic_store_n(&health, (int)h, __ATOMIC_SEQ_CST);
}

enum stats_health stats_health_get(void)
{
	return (enum stats_health)__atomic_load_n(&health, __ATOMIC_SEQ_CST);
}

void stats_ready_hold(void)
{
	__atomic_add_fetch(&ready_holds, 1, __ATOMIC_SEQ_CST);
}

void stats_ready_release(void)
{
	__atomic_sub_fetch(&ready_holds, 1, __ATOMIC_SEQ_CST);
}

int stats_healthy(void)
{
	return stats_health_get() == STATS_UP && __atomic_load_n(&ready_holds, __ATOMIC_SEQ_CST) == 0;
}

/* ---- while starting ----------------------------------------------------- *
 * Until the io loops run (the virus engine may take minutes to load), a
 * small thread answers every request on the stats listener with 503, so a
 * load balancer's health check gets a clear "not yet" instead of a hang. */

static pthread_t starting_tid;
static int starting_fd = -1;
static int starting_stop;   /* atomic */

/* starting_main - accept, read a little, answer 503, close; until told. */
static void *starting_main(void *arg)
{
	(void)arg;
	static const char ans[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
				  "Content-Length: 9\r\nConnection: close\r\n\r\nstarting\n";
	while (!__atomic_load_n(&starting_stop, __ATOMIC_SEQ_CST)) {
		struct pollfd pf = { .fd = starting_fd, .events = POLLIN };
		if (poll(&pf, 1, 100) <= 0)
			continue;
		int c = accept4(starting_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		/* The request is not parsed: every answer is the same. */
		struct pollfd cf = { .fd = c, .events = POLLIN };
		char buf[2048];
		if (poll(&cf, 1, 1000) > 0) {
			ssize_t n = recv(c, buf, sizeof buf, MSG_DONTWAIT);
			(void)n;
		}
		ssize_t w = send(c, ans, sizeof ans - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)w;
		close(c);
	}
	return NULL;
}

/* stats_starting_begin - see stats.h. */
void stats_starting_begin(int listen_fd)
{
	if (listen_fd < 0)
		return;
	starting_fd = listen_fd;
	if (pthread_create(&starting_tid, NULL, starting_main, NULL) != 0)
		starting_fd = -1;
}

/* stats_starting_end - see stats.h. */
void stats_starting_end(void)
{
	if (starting_fd < 0)
		return;
	__atomic_store_n(&starting_stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(starting_tid, NULL);
	starting_fd = -1;
}

/* ---- text buffers ------------------------------------------------------- */

/* sb_grow - room for n more bytes and a NUL. */
static void sb_grow(struct strbuf *b, size_t n)
{
	if (b->len + n + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n + 1)
		cap *= 2;
	b->p = xrealloc(b->p, cap);
	b->cap = cap;
}

void sb_add(struct strbuf *b, const char *s, size_t n)
{
	sb_grow(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

void sb_printf(struct strbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char tmp[512];
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof tmp) {
		sb_add(b, tmp, (size_t)n);
		return;
	}
	sb_grow(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void sb_free(struct strbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* ---- rendering ---------------------------------------------------------- */

/* escape_label - a label value as the exposition format wants it. */
static void escape_label(struct strbuf *out, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			sb_printf(out, "\\%c", *v);
		else if (*v == '\n')
			sb_add(out, "\\n", 2);
		else
			sb_add(out, v, 1);
	}
}

/* head - the HELP and TYPE lines of one metric. */
static void head(struct strbuf *out, const char *name, const char *type, const char *help)
{
	sb_printf(out, "# HELP %s ", name);
	for (const char *h = help; *h; h++) {
		if (*h == '\\')
			sb_add(out, "\\\\", 2);
		else if (*h == '\n')
			sb_add(out, "\\n", 2);
		else
			sb_add(out, h, 1);
	}
	sb_printf(out, "\n# TYPE %s %s\n", name, type);
}

/* stats_render_metrics - every metric, text exposition format 0.0.4. */
void stats_render_metrics(struct strbuf *out)
{
	for (int i = 0; i < ST__COUNT; i++) {
		if (i == 0 || strcmp(rows[i].name, rows[i - 1].name))
			head(out, rows[i].name, rows[i].gauge ? "gauge" : "counter", rows[i].help);
		int64_t v = stats_value((enum stats_id)i);
		if (rows[i].labels[0])
			sb_printf(out, "%s{%s} %lld\n", rows[i].name, rows[i].labels, (long long)v);
		else
			sb_printf(out, "%s %lld\n", rows[i].name, (long long)v);
	}
	head(out, "perimd_sessions_active", "gauge", "SMTP sessions open");
	sb_printf(out, "perimd_sessions_active %d\n", smtpd_sessions());
	head(out, "perimd_spool_bytes", "gauge", "message bodies held in memory and spool files");
	sb_printf(out, "perimd_spool_bytes %llu\n", (unsigned long long)spool_bytes_in_use());
	head(out, "perimd_accepting_mail", "gauge", "1 while /healthz says 200");
	sb_printf(out, "perimd_accepting_mail %d\n", stats_healthy());

	for (int h = 0; h < SH__COUNT; h++) {
		uint64_t cnt[STATS_NBUCKETS + 1] = {0}, sum = 0;
		FOR_BLOCKS(b)
		{
			for (int k = 0; k <= STATS_NBUCKETS; k++)
				cnt[k] += rd(&b->hb[h][k]);
			sum += rd(&b->hsum[h]);
		}
		head(out, hrows[h].name, "histogram", hrows[h].help);
		uint64_t acc = 0;
		for (int k = 0; k < STATS_NBUCKETS; k++) {
			acc += cnt[k];
			sb_printf(out, "%s_bucket{le=\"%g\"} %llu\n", hrows[h].name,
				  (double)bounds_ms[k] / 1000.0, (unsigned long long)acc);
		}
		acc += cnt[STATS_NBUCKETS];
		sb_printf(out, "%s_bucket{le=\"+Inf\"} %llu\n", hrows[h].name, (unsigned long long)acc);
		sb_printf(out, "%s_sum %.3f\n", hrows[h].name, (double)sum / 1000.0);
		sb_printf(out, "%s_count %llu\n", hrows[h].name, (unsigned long long)acc);
	}

	av_render_metrics(out);   /* content scanning: av.c owns those counters */

	head(out, "perimd_backend_replies_total", "counter", "backend replies by stage and class");
	static const char *const cls[3] = {"2xx", "4xx", "5xx"};
	int n = __atomic_load_n(&nstages, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++)
		for (int k = 0; k < 3; k++) {
			uint64_t s = 0;
			FOR_BLOCKS(b)
			s += rd(&b->breply[i][k]);
			sb_add(out, "perimd_backend_replies_total{stage=\"", 36);
			escape_label(out, stages[i]);
			sb_printf(out, "\",class=\"%s\"} %llu\n", cls[k], (unsigned long long)s);
		}

	pthread_mutex_lock(&fam_mu);
	for (struct family *f = families; f; f = f->next) {
		head(out, f->name, f->type, f->help);
		for (struct fseries *s = f->series; s; s = s->next) {
			sb_printf(out, "%s{%s=\"", f->name, s->label);
			escape_label(out, s->value);
			sb_printf(out, "\"} %lld\n", (long long)s->v);
		}
	}
	pthread_mutex_unlock(&fam_mu);
}

/* ---- history, on loop 0 ------------------------------------------------- */

static struct history *hist;
static double hist_last[HS__COUNT];
static char *hist_path;
static pthread_mutex_t save_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t save_seq, saved_seq;
static int loops_running;
static struct ev_loop *loop0;
static struct ev_timer tick_timer;
static int ticks;

/* current - the values the history samples now. */
static void current(double cur[HS__COUNT])
{
	int64_t rej = 0;
	for (int i = ST_rej_relay_denied; i <= ST_rej_backend_tempfail; i++)
		rej += stats_value((enum stats_id)i);
	cur[HS_RECEIVED] = (double)stats_value(ST_msg_received);
	cur[HS_GREYLISTED] = (double)stats_value(ST_rej_greylist);
	cur[HS_REJECTED] = (double)rej;
	cur[HS_VIRUSES] = (double)stats_value(ST_rej_virus);
	cur[HS_SESSIONS] = smtpd_sessions_peak();   /* bursts between samples too */
	cur[HS_INFLIGHT] = (double)stats_value(ST_inflight);
}

/* sample_now - fold the counts since the last sample into this minute. */
static void sample_now(void)
{
	if (!hist)
		return;
	double cur[HS__COUNT];
	current(cur);
	history_sample(hist, ev_wallclock() / 60, cur, hist_last);
}

struct save {
	uint64_t seq;
	struct strbuf text;
};

/* save_write - write a snapshot (tmp + rename) unless a newer one was. */
static void save_write(void *arg)
{
	struct save *s = arg;
	pthread_mutex_lock(&save_mu);
	if (s->seq > saved_seq) {
		char tmp[4200];
		snprintf(tmp, sizeof tmp, "%s.tmp", hist_path);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0) {
			log_warn("statistics history %s: %s", tmp, strerror(errno));
		} else {
			size_t off = 0;
			while (off < s->text.len) {
				ssize_t w = write(fd, s->text.p + off, s->text.len - off);
				if (w <= 0)
					break;
				off += (size_t)w;
			}
			if (close(fd) < 0 || off != s->text.len || rename(tmp, hist_path) < 0)
				log_warn("statistics history %s: cannot write: %s", hist_path, strerror(errno));
			else
				saved_seq = s->seq;
		}
	}
	pthread_mutex_unlock(&save_mu);
}

/* save_done - the snapshot's memory goes. */
static void save_done(void *arg, int cancelled)
{
	(void)cancelled;
	struct save *s = arg;
	sb_free(&s->text);
	free(s);
}

/* snapshot - the history as text, numbered. */
static struct save *snapshot(void)
{
	struct save *s = xcalloc(1, sizeof *s);
	s->seq = ++save_seq;
	history_serialize(hist, &s->text);
	return s;
}

/* tick - sample; every few minutes, save on a worker. */
static void tick(void *arg)
{
	(void)arg;
	sample_now();
	if (++ticks % SAVE_TICKS == 0)
		jobs_submit(loop0, save_write, save_done, snapshot());
	ev_timer_start(loop0, &tick_timer, TICK_MS, tick, NULL);
}

/* ---- HTTP --------------------------------------------------------------- */

/* handle - the stats_listen pages. */
static int handle(const struct http_req *rq, struct strbuf *body, const char **ctype)
{
	if (!strcmp(rq->path, "/metrics")) {
		*ctype = "text/plain; version=0.0.4; charset=utf-8";
		stats_render_metrics(body);
		return 200;
	}
	if (!strcmp(rq->path, "/healthz")) {
		if (stats_healthy()) {
			sb_printf(body, "ok\n");
			return 200;
		}
		sb_printf(body, "%s\n", stats_health_get() == STATS_DRAINING ? "draining" : "starting");
		return 503;
	}
	uint64_t now_min = ev_wallclock() / 60;
	if (!strcmp(rq->path, "/") && hist) {
		sample_now();
		*ctype = "text/html; charset=utf-8";
		graph_page(body, hist, now_min);
		return 200;
	}
	char which[32], period[32];
	if (hist && sscanf(rq->path, "/graph/%31[a-z]-%31[a-z].sv%*[g]", which, period) == 2 &&
	    strlen(rq->path) == 7 + strlen(which) + 1 + strlen(period) + 4) {
		sample_now();
		if (graph_svg(body, hist, now_min, which, period) == 0) {
			*ctype = "image/svg+xml";
			return 200;
		}
		sb_free(body);
	}
	sb_printf(body, "not found\n");
	return 404;
}

/* ---- life cycle --------------------------------------------------------- */

/* stats_check - see stats.h. */
int stats_check(const struct conf *c, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	if (c->stats_listen[0] && net_parse_addr(c->stats_listen, 9125, &ss, &sl, &why) < 0) {
		snprintf(err, errlen, "%s: stats_listen: %s: %s", c->path, c->stats_listen, why);
		return -1;
	}
	return 0;
}

/* stats_init - see stats.h. */
void stats_init(const struct conf *c, int nloops)
{
	stats_family_declare("perimd_backend_up", "gauge",
			     "1 after a successful connection to the backend, 0 after a failed one");
	loops_running = nloops;
	hist = xcalloc(1, sizeof *hist);
	size_t n = strlen(c->data_directory) + 16;
	hist_path = xmalloc(n);
	snprintf(hist_path, n, "%s/stats.history", c->data_directory);
	FILE *f = fopen(hist_path, "re");
	if (!f)
		return;
	struct strbuf text = {0};
	char buf[65536];
	size_t r;
	while ((r = fread(buf, 1, sizeof buf, f)) > 0 && text.len < (64u << 20))
		sb_add(&text, buf, r);
	fclose(f);
	if (history_parse(hist, text.p ? text.p : "", text.len) < 0)
		log_warn("statistics history %s: unreadable, starting afresh", hist_path);
	sb_free(&text);
}

/* stats_listen_open - see stats.h. */
int stats_listen_open(const struct conf *c)
{
	if (!c->stats_listen[0])
		return -1;
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	if (net_parse_addr(c->stats_listen, 9125, &ss, &sl, &why) < 0)
		fatal("stats_listen %s: %s", c->stats_listen, why);
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0)
		fatal("stats_listen %s: %s", c->stats_listen, strerror(errno));
	return fd;
}

/* stats_loop_start - see stats.h. */
void stats_loop_start(struct ev_loop *loop, int listen_fd, int nloops)
{
	(void)nloops;
	__atomic_store_n(&loop0, loop, __ATOMIC_SEQ_CST);
	if (listen_fd >= 0)
		http_server_start(loop, listen_fd, handle);
	ev_timer_start(loop, &tick_timer, TICK_MS, tick, NULL);
}

/* stop_loop0 - posted by the last io loop to drain. */
static void stop_loop0(void *arg)
{
	ev_stop(arg);
}

/* stats_loop_finished - see stats.h. */
void stats_loop_finished(struct ev_loop *loop)
{
	int left = __atomic_sub_fetch(&loops_running, 1, __ATOMIC_SEQ_CST);
	if (ev_loop_index(loop) != 0) {
		if (left == 0)
			ev_post(__atomic_load_n(&loop0, __ATOMIC_SEQ_CST), stop_loop0, loop0);
		return;
	}
	if (left > 0)
		ev_run(loop);  /* /healthz keeps saying 503 until all have drained */
	http_server_stop(loop);
	ev_timer_stop(loop, &tick_timer);
	if (hist) {
		sample_now();
		struct save *s = snapshot();
		save_write(s);
		save_done(s, 0);
	}
}

/* ---- the command line --------------------------------------------------- */

/* stats_command - see stats.h. */
int stats_command(int argc, char **argv, const char *default_conf)
{
	const char *path = NULL;
	int hc = !strcmp(argv[0], "healthcheck");
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c") && i + 1 < argc) {
			path = argv[++i];
		} else {
			fprintf(stderr, "usage: perimd %s [-c FILE]\n", argv[0]);
			return 2;
		}
	}
	char err[1024];
	struct conf *c = conf_load(path ? path : default_conf, path == NULL, NULL, 0, err, sizeof err);
	if (!c) {
		fprintf(stderr, "perimd: %s\n", err);
		return 1;
	}
	if (!c->stats_listen[0]) {
		fprintf(stderr, "perimd: stats_listen is empty: no statistics to ask for\n");
		conf_release(c);
		return 1;
	}
	int status = 0;
	struct strbuf body = {0};
	int r = http_get(c->stats_listen, hc ? "/healthz" : "/metrics", 5000, &status, &body,
			 err, sizeof err);
	conf_release(c);
	int rc = 1;
	if (r < 0) {
		fprintf(stderr, "perimd: %s\n", err);
	} else if (hc) {
		printf("%s", body.p ? body.p : "");
		rc = status == 200 ? 0 : 1;
	} else if (status != 200) {
		fprintf(stderr, "perimd: /metrics answered %d\n", status);
	} else {
		/* The table: one line per series, the name padded to a column. */
		char *save = NULL;
		for (char *ln = strtok_r(body.p, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
			if (ln[0] == '#' || !ln[0])
				continue;
			char *sp = strrchr(ln, ' ');
			if (!sp)
				continue;
			*sp = 0;
			printf("%-64s %s\n", ln, sp + 1);
		}
		rc = 0;
	}
	sb_free(&body);
	return rc;
}
