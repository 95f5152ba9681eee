/*
 * stats.c - the counters of every thread, summed on read; labelled series;
 * the Prometheus rendering; health. The ground floor: it calls nothing of
 * perimd but log.c and buf.c; what it serves and samples is admin.c's.
 *
 * Invariants:
 * - A thread writes only its own block (stats_tl), with relaxed stores;
 *   blocks are pushed on a global list under blocks_mu once and never
 *   removed, so a reader walks the list without a lock and sees every
 *   count at most a moment late. Gauges are sums of +1/-1 over threads.
 * - Labelled series (families) and the backend stage names are the slow
 *   path: a mutex, for events per connection or rarer.
 * - Renderers of metrics kept elsewhere are registered before the threads
 *   start and never change afterwards, so rendering reads them unlocked.
 */
#include "stats.h"
#include "buf.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__thread struct stats_block *stats_tl;
static struct stats_block *blocks; /* published with release stores */
static pthread_mutex_t blocks_mu = PTHREAD_MUTEX_INITIALIZER;

static const uint64_t bounds_ms[STATS_NBUCKETS] = {
	1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000,
};

static const struct {
	const char *name, *labels, *help;
	int gauge;
} rows[ST__COUNT] = {
#define STAT(id, type, name, labels, help) { name, labels, help, STATS_##type },
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
#define HIST(id, name, help) { name, help },
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

#define FOR_BLOCKS(b) for (struct stats_block *b = __atomic_load_n(&blocks, __ATOMIC_ACQUIRE); b; b = b->next)

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
		{ "grey", ST_rej_greylist },
		{ "dnsbl", ST_rej_dnsbl },
		{ "rbl", ST_rej_dnsbl },
		{ "access", ST_rej_access },
		{ "recipient", ST_rej_unknown_recipient },
		{ "verify", ST_rej_unknown_recipient },
		{ "virus", ST_rej_virus },
		{ "helo", ST_rej_rfc },
		{ "tempfail", ST_rej_tempfail },
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
	else if (strcasestr(reply, "not fully scanned") || strcasestr(reply, "cannot be scanned"))
		stats_inc(ST_rej_unscanned); /* av.c: a scanner limit, encrypted content */
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
	char *label2, *value2; /* a second label, or NULL */
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

/* series_cmp - order of series: by value, then second value. */
static int series_cmp(const struct fseries *s, const char *value, const char *value2)
{
	int c = strcmp(s->value, value);
	if (c || (!s->value2 && !value2))
		return c;
	return strcmp(s->value2 ? s->value2 : "", value2 ? value2 : "");
}

/* family_update - add to or set one series (label2 NULL: one label). */
static void family_update(const char *name, const char *type, const char *label, const char *value,
			  const char *label2, const char *value2, int64_t n, int set)
{
	pthread_mutex_lock(&fam_mu);
	struct family *f = family_get(name, type);
	struct fseries *s;
	for (s = f->series; s; s = s->next)
		if (!strcmp(s->label, label) && !series_cmp(s, value, value2))
			break;
	if (!s) {
		s = xcalloc(1, sizeof *s);
		s->label = xstrdup(label);
		s->value = xstrdup(value);
		if (label2) {
			s->label2 = xstrdup(label2);
			s->value2 = xstrdup(value2);
		}
		struct fseries **pp = &f->series;
		while (*pp && series_cmp(*pp, value, value2) < 0)
			pp = &(*pp)->next;
		s->next = *pp;
		*pp = s;
	}
	s->v = set ? n : s->v + n;
	pthread_mutex_unlock(&fam_mu);
}

void stats_family_add(const char *name, const char *label, const char *value, int64_t n)
{
	family_update(name, "counter", label, value, NULL, NULL, n, 0);
}

void stats_family_set(const char *name, const char *label, const char *value, int64_t v)
{
	family_update(name, "gauge", label, value, NULL, NULL, v, 1);
}

void stats_family_add2(const char *name, const char *label, const char *value, const char *label2,
		       const char *value2, int64_t n)
{
	family_update(name, "counter", label, value, label2, value2, n, 0);
}

/* ---- health ------------------------------------------------------------- */

static int health = STATS_STARTING;

void stats_health_set(enum stats_health h)
{
	__atomic_store_n(&health, (int)h, __ATOMIC_SEQ_CST);
}

enum stats_health stats_health_get(void)
{
	return (enum stats_health)__atomic_load_n(&health, __ATOMIC_SEQ_CST);
}

int stats_healthy(void)
{
	return stats_health_get() == STATS_UP;
}

/* ---- rendering ---------------------------------------------------------- */

#define MAX_RENDERERS 8
static stats_render_fn *renderers[2][MAX_RENDERERS];
static int nrenderers[2];

/* stats_render_register - see stats.h; called before the threads start. */
void stats_render_register(enum stats_render_at at, stats_render_fn *fn)
{
	if (nrenderers[at] == MAX_RENDERERS)
		fatal("stats_render_register: more than %d renderers", MAX_RENDERERS);
	renderers[at][nrenderers[at]++] = fn;
}

/* stats_escape_label - see stats.h. */
void stats_escape_label(struct strbuf *out, const char *v)
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

/* stats_render_head - the HELP and TYPE lines of one metric. */
void stats_render_head(struct strbuf *out, const char *name, const char *type, const char *help)
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
			stats_render_head(out, rows[i].name, rows[i].gauge ? "gauge" : "counter", rows[i].help);
		int64_t v = stats_value((enum stats_id)i);
		if (rows[i].labels[0])
			sb_printf(out, "%s{%s} %lld\n", rows[i].name, rows[i].labels, (long long)v);
		else
			sb_printf(out, "%s %lld\n", rows[i].name, (long long)v);
	}
	for (int k = 0; k < nrenderers[STATS_AFTER_FIXED]; k++)
		renderers[STATS_AFTER_FIXED][k](out);

	for (int h = 0; h < SH__COUNT; h++) {
		uint64_t cnt[STATS_NBUCKETS + 1] = { 0 }, sum = 0;
		FOR_BLOCKS(b)
		{
			for (int k = 0; k <= STATS_NBUCKETS; k++)
				cnt[k] += rd(&b->hb[h][k]);
			sum += rd(&b->hsum[h]);
		}
		stats_render_head(out, hrows[h].name, "histogram", hrows[h].help);
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

	for (int k = 0; k < nrenderers[STATS_AFTER_HISTOGRAMS]; k++)
		renderers[STATS_AFTER_HISTOGRAMS][k](out);

	stats_render_head(out, "perimd_backend_replies_total", "counter", "backend replies by stage and class");
	static const char *const cls[3] = { "2xx", "4xx", "5xx" };
	int n = __atomic_load_n(&nstages, __ATOMIC_ACQUIRE);
	for (int i = 0; i < n; i++)
		for (int k = 0; k < 3; k++) {
			uint64_t s = 0;
			FOR_BLOCKS(b)
			s += rd(&b->breply[i][k]);
			sb_add(out, "perimd_backend_replies_total{stage=\"", 36);
			stats_escape_label(out, stages[i]);
			sb_printf(out, "\",class=\"%s\"} %llu\n", cls[k], (unsigned long long)s);
		}

	pthread_mutex_lock(&fam_mu);
	for (struct family *f = families; f; f = f->next) {
		stats_render_head(out, f->name, f->type, f->help);
		for (struct fseries *s = f->series; s; s = s->next) {
			sb_printf(out, "%s{%s=\"", f->name, s->label);
			stats_escape_label(out, s->value);
			if (s->label2) {
				sb_printf(out, "\",%s=\"", s->label2);
				stats_escape_label(out, s->value2);
			}
			sb_printf(out, "\"} %lld\n", (long long)s->v);
		}
	}
	pthread_mutex_unlock(&fam_mu);
}
