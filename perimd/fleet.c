/*
 * fleet.c - the fleet's shared state (fleet.h): the sync thread, what it
 * takes from the local tables and what it gives them.
 *
 * Invariants: RCPT lookups and connection limits never wait on the
 * database. verify, climit and crate call the publish hooks below (any
 * thread, no lock of theirs held); the news waits in pending tables (the
 * latest count per client, a bounded queue of verdicts: past
 * FLEET_QUEUE_MAX a verdict is dropped and counted) until the next sync,
 * which writes them all and reads the other boxes' news in one round trip
 * (grey_fleet_sync on this thread's own connection). The other boxes'
 * counts are swapped in whole after each sync; while syncs fail they are
 * kept for FLEET_STALE_ROUNDS rounds, then dropped (a box alone applies
 * its own limits: it fails open, never refuses on stale counts), and
 * what was not written is written by the next sync that works. Verdicts
 * read are put into verify's cache with the lifetime left in the table.
 */
#include "fleet.h"
#include "conf.h"
#include "climit.h"
#include "crate.h"
#include "ev.h"
#include "grey.h"
#include "hash.h"
#include "log.h"
#include "policy.h"
#include "stats.h"
#include "verify.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define FLEET_BUCKETS 4096
#define FLEET_QUEUE_MAX 10000   /* verdicts waiting for a sync */
#define FLEET_OVERLAP 10000     /* ms: verdicts read again (commit order) */
#define FLEET_STALE_ROUNDS 5    /* failed syncs before others' counts go */
#define FLEET_COUNTS_MAX 100000 /* counts written per sync at most */

/* A string-keyed table of counts. */
struct fent {
	struct fent *next;
	int n;
	char key[];
};
struct fmap {
	struct fent *b[FLEET_BUCKETS];
	int size;
};

/* fmap_find - the entry of key, or NULL. */
static struct fent *fmap_find(const struct fmap *m, const char *key)
{
	struct fent *e = m->b[hash_str32(key) % FLEET_BUCKETS];
	while (e && strcmp(e->key, key))
		e = e->next;
	return e;
}

/* fmap_set - key's count becomes n (added when missing). */
static void fmap_set(struct fmap *m, const char *key, int n)
{
	struct fent *e = fmap_find(m, key);
	if (!e) {
		size_t l = strlen(key);
		struct fent **pp = &m->b[hash_str32(key) % FLEET_BUCKETS];
		e = xmalloc(sizeof *e + l + 1);
		memcpy(e->key, key, l + 1);
		e->next = *pp;
		*pp = e;
		m->size++;
	}
	e->n = n;
}

/* fmap_clear - empty the table. */
static void fmap_clear(struct fmap *m)
{
	for (int i = 0; i < FLEET_BUCKETS; i++)
		while (m->b[i]) {
			struct fent *e = m->b[i];
			m->b[i] = e->next;
			free(e);
		}
	m->size = 0;
}

/* fmap_free - a table from xcalloc (NULL ignored). */
static void fmap_free(struct fmap *m)
{
	if (m) {
		fmap_clear(m);
		free(m);
	}
}

static pthread_mutex_t fleet_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fleet_cv = PTHREAD_COND_INITIALIZER;
static pthread_t fleet_tid;
static int fleet_running, fleet_stopping;

/* Under fleet_mu: this box's news, and the other boxes' counts. */
static struct fmap pend_conn, pend_rate;
static int64_t pend_minute;
static struct grey_fleet_rcpt *pend_rcpt;
static int npend_rcpt;
static struct fmap *remote_conn, *remote_rate;
static int64_t remote_minute;

/* ---- the hooks (any thread) ------------------------------------------- */

/* pub_rcpt - verify learned a per-recipient verdict. */
static void pub_rcpt(const char *rcpt, int code, const char *enh, uint64_t ttl)
{
	pthread_mutex_lock(&fleet_mu);
	if (npend_rcpt < FLEET_QUEUE_MAX) {
		struct grey_fleet_rcpt *r = &pend_rcpt[npend_rcpt++];
		snprintf(r->rcpt, sizeof r->rcpt, "%s", rcpt);
		r->code = code;
		snprintf(r->enh, sizeof r->enh, "%s", enh);
		r->ttl = (int64_t)ttl;
	} else {
		stats_inc(ST_fleet_dropped);
	}
	pthread_mutex_unlock(&fleet_mu);
}

/* pub_conn - a client's session count here changed. */
static void pub_conn(const char *addr, int count)
{
	pthread_mutex_lock(&fleet_mu);
	if (pend_conn.size < FLEET_COUNTS_MAX || fmap_find(&pend_conn, addr))
		fmap_set(&pend_conn, addr, count);
	else
		stats_inc(ST_fleet_dropped);
	pthread_mutex_unlock(&fleet_mu);
}

/* pub_rate - a client's sessions this minute here. */
static void pub_rate(const char *addr, uint64_t minute, int count)
{
	pthread_mutex_lock(&fleet_mu);
	if ((int64_t)minute != pend_minute) {
		fmap_clear(&pend_rate);
		pend_minute = (int64_t)minute;
	}
	if (pend_rate.size < FLEET_COUNTS_MAX || fmap_find(&pend_rate, addr))
		fmap_set(&pend_rate, addr, count);
	else
		stats_inc(ST_fleet_dropped);
	pthread_mutex_unlock(&fleet_mu);
}

/* others_conn - sessions the other boxes hold for addr. */
static int others_conn(const char *addr)
{
	pthread_mutex_lock(&fleet_mu);
	const struct fent *e = remote_conn ? fmap_find(remote_conn, addr) : NULL;
	int n = e ? e->n : 0;
	pthread_mutex_unlock(&fleet_mu);
	return n;
}

/* others_rate - sessions the other boxes counted for addr in minute. */
static int others_rate(const char *addr, uint64_t minute)
{
	pthread_mutex_lock(&fleet_mu);
	const struct fent *e =
	    remote_rate && (int64_t)minute == remote_minute ? fmap_find(remote_rate, addr) : NULL;
	int n = e ? e->n : 0;
	pthread_mutex_unlock(&fleet_mu);
	return n;
}

/* ---- the sync ----------------------------------------------------------- */

/* A sync's batch and what it reads. */
struct fleet_batch {
	struct grey_fleet_sync fs;
	struct grey_fleet_rcpt *rcpts;
	struct grey_fleet_count *conns, *rates;
	struct fmap *in_conn, *in_rate;
	int installed; /* verdicts read */
};

/* in_rcpt - another box's verdict: into the verify cache. */
static void in_rcpt(void *arg, const char *rcpt, int code, const char *enh, int64_t ttl)
{
	struct fleet_batch *b = arg;
	if (ttl > 0) {
		verify_remote(rcpt, code, enh, (uint64_t)ttl);
		b->installed++;
	}
}

/* in_conn, in_rate - the other boxes' counts. */
static void in_conn(void *arg, const char *addr, int n)
{
	fmap_set(((struct fleet_batch *)arg)->in_conn, addr, n);
}
static void in_rate(void *arg, const char *addr, int n)
{
	fmap_set(((struct fleet_batch *)arg)->in_rate, addr, n);
}

/* counts_of - a pending table as an array (allocated). */
static struct grey_fleet_count *counts_of(const struct fmap *m, int *n)
{
	struct grey_fleet_count *v = xcalloc((size_t)m->size + 1, sizeof *v);
	*n = 0;
	for (int i = 0; i < FLEET_BUCKETS; i++)
		for (const struct fent *e = m->b[i]; e; e = e->next) {
			snprintf(v[*n].addr, sizeof v[*n].addr, "%s", e->key);
			v[(*n)++].n = e->n;
		}
	return v;
}

/* take_pending - move this box's news into the batch. */
static void take_pending(struct fleet_batch *b, int verdicts, int limits, int64_t minute)
{
	pthread_mutex_lock(&fleet_mu);
	if (verdicts) {
		b->rcpts = pend_rcpt;
		b->fs.nrcpts = npend_rcpt;
		pend_rcpt = xcalloc(FLEET_QUEUE_MAX, sizeof *pend_rcpt);
		npend_rcpt = 0;
	}
	if (limits) {
		b->conns = counts_of(&pend_conn, &b->fs.nconns);
		b->rates = pend_minute == minute ? counts_of(&pend_rate, &b->fs.nrates) : NULL;
		if (!b->rates)
			b->fs.nrates = 0;
		fmap_clear(&pend_conn);
		fmap_clear(&pend_rate);
	}
	pthread_mutex_unlock(&fleet_mu);
	b->fs.rcpts = b->rcpts;
	b->fs.conns = b->conns;
	b->fs.rates = b->rates;
}

/* give_back - a failed sync: its news waits for the next one, unless
 * newer news came meanwhile. */
static void give_back(struct fleet_batch *b)
{
	pthread_mutex_lock(&fleet_mu);
	for (int i = 0; i < b->fs.nrcpts && npend_rcpt < FLEET_QUEUE_MAX; i++)
		pend_rcpt[npend_rcpt++] = b->rcpts[i];
	for (int i = 0; i < b->fs.nconns; i++)
		if (!fmap_find(&pend_conn, b->conns[i].addr))
			fmap_set(&pend_conn, b->conns[i].addr, b->conns[i].n);
	if (pend_minute == b->fs.minute)
		for (int i = 0; i < b->fs.nrates; i++)
			if (!fmap_find(&pend_rate, b->rates[i].addr))
				fmap_set(&pend_rate, b->rates[i].addr, b->rates[i].n);
	pthread_mutex_unlock(&fleet_mu);
}

/* set_remote - the other boxes' counts become these (NULLs: none). */
static void set_remote(struct fmap *conn, struct fmap *rate, int64_t minute)
{
	pthread_mutex_lock(&fleet_mu);
	struct fmap *oc = remote_conn, *orate = remote_rate;
	remote_conn = conn;
	remote_rate = rate;
	remote_minute = minute;
	pthread_mutex_unlock(&fleet_mu);
	fmap_free(oc);
	fmap_free(orate);
}

/* The sync thread's own state. */
static char fleet_box[17];
static int64_t fleet_since; /* db ms: verdicts read up to here */
static int fleet_failing, fleet_failed_rounds;

/* hooks - plug the sharing the configuration asks for in or out. */
static void hooks(int verdicts, int limits)
{
	verify_set_publish(verdicts ? pub_rcpt : NULL);
	climit_set_fleet(limits ? pub_conn : NULL, limits ? others_conn : NULL);
	crate_set_fleet(limits ? pub_rate : NULL, limits ? others_rate : NULL);
	if (!limits)
		set_remote(NULL, NULL, 0);
}

/* sync_once - one round: the batch, the round trip, the swap. */
static void sync_once(const struct conf *c, int verdicts, int limits)
{
	struct fleet_batch b = { 0 };
	int64_t minute = (int64_t)(ev_wallclock() / 60);
	take_pending(&b, verdicts, limits, minute);
	snprintf(b.fs.box, sizeof b.fs.box, "%s", fleet_box);
	b.fs.minute = minute;
	b.fs.rcpt_since = fleet_since;
	b.fs.want_rcpts = verdicts;
	b.fs.want_limits = limits;
	b.fs.stale = 3 * c->fleet_sync_interval > 3000 ? 3 * c->fleet_sync_interval : 3000;
	b.fs.rcpt_in = in_rcpt;
	b.fs.conn_in = in_conn;
	b.fs.rate_in = in_rate;
	b.fs.arg = &b;
	b.in_conn = xcalloc(1, sizeof *b.in_conn);
	b.in_rate = xcalloc(1, sizeof *b.in_rate);
	char err[256];
	if (grey_fleet_sync(c->greylist_database, &b.fs, err, sizeof err) < 0) {
		stats_inc(ST_fleet_sync_failed);
		if (!fleet_failing)
			log_err("fleet: sync with the database failing: %s", err);
		fleet_failing = 1;
		give_back(&b);
		fmap_free(b.in_conn);
		fmap_free(b.in_rate);
		if (++fleet_failed_rounds == FLEET_STALE_ROUNDS)
			set_remote(NULL, NULL, 0);
	} else {
		stats_inc(ST_fleet_sync_ok);
		if (fleet_failing)
			log_info("fleet: sync with the database working again");
		fleet_failing = fleet_failed_rounds = 0;
		if (verdicts && b.fs.now > FLEET_OVERLAP)
			fleet_since = b.fs.now - FLEET_OVERLAP;
		stats_add(ST_fleet_verdicts_read, b.installed);
		stats_add(ST_fleet_verdicts_written, b.fs.nrcpts);
		if (limits) {
			set_remote(b.in_conn, b.in_rate, minute);
		} else {
			fmap_free(b.in_conn);
			fmap_free(b.in_rate);
		}
	}
	free(b.rcpts);
	free(b.conns);
	free(b.rates);
}

/* fleet_main - the sync thread: a round per fleet_sync_interval. */
static void *fleet_main(void *arg)
{
	(void)arg;
	int verdicts = -1, limits = -1;
	pthread_mutex_lock(&fleet_mu);
	while (!fleet_stopping) {
		pthread_mutex_unlock(&fleet_mu);
		struct policy *pol = policy_acquire();
		if (!pol) {
			pthread_mutex_lock(&fleet_mu);
			struct timespec soon;
			clock_gettime(CLOCK_REALTIME, &soon);
			soon.tv_sec++;
			if (!fleet_stopping)
				pthread_cond_timedwait(&fleet_cv, &fleet_mu, &soon);
			continue;
		}
		const struct conf *c = pol->conf;
		int mysql = !strncmp(c->greylist_database, "mysql:", 6);
		int v = mysql && c->fleet_share_recipient_verdicts, l = mysql && c->fleet_share_client_limits;
		if (v != verdicts || l != limits) {
			hooks(v, l);
			verdicts = v;
			limits = l;
		}
		if (v || l)
			sync_once(c, v, l);
		int64_t ms = c->fleet_sync_interval;
		policy_release(pol);
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += (time_t)(ms / 1000);
		until.tv_nsec += (long)(ms % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&fleet_mu);
		if (!fleet_stopping)
			pthread_cond_timedwait(&fleet_cv, &fleet_mu, &until);
	}
	pthread_mutex_unlock(&fleet_mu);
	hooks(0, 0);
	return NULL;
}

/* fleet_check - see fleet.h. */
int fleet_check(const struct conf *c, char *err, size_t errlen)
{
	if ((c->fleet_share_recipient_verdicts || c->fleet_share_client_limits) &&
	    strncmp(c->greylist_database, "mysql:", 6)) {
		snprintf(err, errlen,
			 "fleet_share_%s: the fleet shares through the greylist store: "
			 "greylist_database must be mysql:FILE",
			 c->fleet_share_recipient_verdicts ? "recipient_verdicts" : "client_limits");
		return -1;
	}
	return 0;
}

/* fleet_start - see fleet.h. */
void fleet_start(void)
{
	unsigned char id[8] = { 0 };
	if (getrandom(id, sizeof id, 0) != sizeof id) {
		uint64_t t = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
		memcpy(id, &t, sizeof id);
	}
	for (int i = 0; i < 8; i++)
		snprintf(fleet_box + 2 * i, 3, "%02x", id[i]);
	pend_rcpt = xcalloc(FLEET_QUEUE_MAX, sizeof *pend_rcpt);
	fleet_stopping = 0;
	if (pthread_create(&fleet_tid, NULL, fleet_main, NULL) != 0)
		fatal("cannot start the fleet thread");
	fleet_running = 1;
}

/* fleet_stop - see fleet.h. */
void fleet_stop(void)
{
	if (!fleet_running)
		return;
	pthread_mutex_lock(&fleet_mu);
	fleet_stopping = 1;
	pthread_cond_signal(&fleet_cv);
	pthread_mutex_unlock(&fleet_mu);
	pthread_join(fleet_tid, NULL);
	fleet_running = 0;
	pthread_mutex_lock(&fleet_mu);
	fmap_clear(&pend_conn);
	fmap_clear(&pend_rate);
	free(pend_rcpt);
	pend_rcpt = NULL;
	npend_rcpt = 0;
	pthread_mutex_unlock(&fleet_mu);
	set_remote(NULL, NULL, 0);
}
