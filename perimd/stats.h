/*
 * stats.h - counters, gauges and histograms of every module, and the health
 * state: the ground floor every module may count into (it uses only log.h
 * and buf.h). admin.c serves them on stats_listen: /metrics, /healthz, and
 * the graphs of the history.
 *
 * Adding a metric to your module (one line each):
 *   - a fixed counter or gauge: one STAT(...) row in stats_names.h, then
 *       stats_inc(ST_my_counter);          or stats_add(ST_my_gauge, -1);
 *   - a histogram of milliseconds: one HIST(...) row, then
 *       stats_observe(SH_my_hist, ms);
 *   - a series labelled at run time (viruses by name, per-backend state):
 *       stats_family_add("perimd_viruses_total", "name", virus_name, 1);
 *       stats_family_set("perimd_backend_up", "backend", "10.1.1.5:25", 1);
 *     (declare its type and help once, from any thread, before or after:
 *       stats_family_declare("perimd_viruses_total", "counter", "viruses found");
 *     these take a mutex: for events counted per message or rarer).
 *   - a refusal at RCPT from a policy check: smtpd.c counts it by the
 *     verdict's rule name into perimd_recipients_rejected_total
 *     (stats_reject_rule(): "greylist...", "dnsbl...", "rbl...",
 *     "access...", "recipient...", "verify...", "helo...", "tempfail...";
 *     any other name counts as reason="policy"). Refusals of a whole
 *     message (MAIL, DATA, the final dot) go to
 *     perimd_messages_rejected_total (stats_refusal()).
 *
 * Cost: stats_inc() is a plain add into the calling thread's own block (no
 * lock, no atomic read-modify-write: a relaxed store the reader may see a
 * moment late); a thread's block is made and registered (under a mutex)
 * on its first count. Readers sum the blocks of every thread. Building
 * with -DPERIMD_NO_STATS turns every count into nothing (tests/bench.sh
 * measures the difference).
 */
#ifndef PERIMD_STATS_H
#define PERIMD_STATS_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

enum stats_id {
#define STAT(id, type, name, labels, help) ST_##id,
#define HIST(id, name, help)
#include "stats_names.h"
#undef STAT
#undef HIST
	ST__COUNT
};

enum stats_hist {
#define STAT(id, type, name, labels, help)
#define HIST(id, name, help) SH_##id,
#include "stats_names.h"
#undef STAT
#undef HIST
	SH__COUNT
};

/* Histogram buckets (upper bounds, ms); one more for +Inf. */
#define STATS_NBUCKETS 16
/* Backend reply stages known to stats_backend_reply(). */
#define STATS_MAX_STAGES 16

/* A thread's counters. Private: use the functions below. */
struct stats_block {
	struct stats_block *next;
	uint64_t v[ST__COUNT];
	uint64_t hb[SH__COUNT][STATS_NBUCKETS + 1];
	uint64_t hsum[SH__COUNT];
	uint64_t breply[STATS_MAX_STAGES][3]; /* 2xx-3xx, 4xx, 5xx */
};

extern __thread struct stats_block *stats_tl;
/* stats_block_new - this thread's block (made and registered once). */
struct stats_block *stats_block_new(void);

/* stats_add - add n (may be negative, for gauges) to a fixed metric. */
static inline void stats_add(enum stats_id id, int64_t n)
{
#ifndef PERIMD_NO_STATS
	struct stats_block *b = stats_tl ? stats_tl : stats_block_new();
	__atomic_store_n(&b->v[id], b->v[id] + (uint64_t)n, __ATOMIC_RELAXED);
#else
	(void)id;
	(void)n;
#endif
}
#define stats_inc(id) stats_add((id), 1)

/* stats_observe - one observation of ms milliseconds. */
void stats_observe(enum stats_hist h, uint64_t ms);
/* stats_backend_reply - a backend's reply code at a stage; `stage` MUST be
 * a string that lives for the process (relay.c's state names). */
void stats_backend_reply(const char *stage, int code);
/* stats_reject_rule - count a RCPT refusal decided by a policy rule. */
void stats_reject_rule(const char *rule);
/* stats_refusal - count a refusal at the final dot by its enhanced code
 * ("552 5.3.4 ..." is size, 5.5.2 smuggling, 5.4.6 loop, 4.3.1 spool full,
 * 5.7.x with "virus" in the text a virus, other 4.x.x tempfail). */
void stats_refusal(const char *reply);
/* stats_message_done - the client got the relay's verdict on a message,
 * ms after its final dot: latency, and relayed or refused by the backend. */
void stats_message_done(int code, uint64_t ms);
/* stats_backend_connected - a backend connection came up (ok = 1) or
 * failed to; sets perimd_backend_up{backend=name}. */
void stats_backend_connected(const char *name, int ok);
/* stats_observe_since - observe now - start (nothing when start is 0). */
void stats_observe_since(enum stats_hist h, uint64_t start, uint64_t now);

/* Labelled series (mutex; see above). value is a counter delta or the
 * gauge's new value. Label values are escaped on output. */
void stats_family_declare(const char *name, const char *type, const char *help);
void stats_family_add(const char *name, const char *label, const char *value, int64_t n);
void stats_family_set(const char *name, const char *label, const char *value, int64_t v);
/* stats_family_add2 - a counter series with two labels ("service", "result"). */
void stats_family_add2(const char *name, const char *label, const char *value, const char *label2,
		       const char *value2, int64_t n);

/* stats_value - a fixed metric summed over threads. */
int64_t stats_value(enum stats_id id);

/* stats_gauge_set - set a fixed GAUGE row to v, from the only thread that
 * writes it: adds the difference. */
static inline void stats_gauge_set(enum stats_id id, int64_t v)
{
	stats_add(id, v - stats_value(id));
}

/* Health (/healthz): 200 only while UP. */
enum stats_health { STATS_STARTING, STATS_UP, STATS_DRAINING };
void stats_health_set(enum stats_health h);
enum stats_health stats_health_get(void);
/* stats_healthy - 1 when /healthz says 200. */
int stats_healthy(void);

/* stats_render_metrics - the Prometheus text exposition format (0.0.4). */
void stats_render_metrics(struct strbuf *out);

/* Metrics kept outside stats (gauges read on demand, av.c's counters) are
 * rendered by functions registered once, before the threads start; they
 * appear after the fixed metrics or after the histograms, in the order
 * registered. stats_render_head() writes a metric's HELP and TYPE lines. */
typedef void stats_render_fn(struct strbuf *out);
enum stats_render_at { STATS_AFTER_FIXED, STATS_AFTER_HISTOGRAMS };
void stats_render_register(enum stats_render_at at, stats_render_fn *fn);
void stats_render_head(struct strbuf *out, const char *name, const char *type, const char *help);
/* stats_escape_label - append v as a label value of the exposition format
 * (backslash, double quote and newline escaped; the quotes are the
 * caller's). Every label value that is not a constant goes through it. */
void stats_escape_label(struct strbuf *out, const char *v);

#endif
