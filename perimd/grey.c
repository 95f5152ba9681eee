/*
 * grey.c - the greylisting engine: keys, cache, decisions, the RCPT step.
 *
 * Invariants: a decision runs on the loop that asked, except the store
 * call, which runs on a job worker with that worker's own store connection
 * (thread-specific, closed when the worker exits). An operation belongs to
 * its caller until done() ran or grey_cancel() was called; a cancelled
 * operation is freed by its job's done step and never reports. The cache
 * only ever holds "passes" (passed triplets, auto-whitelisted networks),
 * each for at most GREY_CACHE_TTL, so a database outage cannot make it
 * refuse anything and a fleet sharing a store disagrees for that long at
 * most. The database state (up / failing) is logged once per change.
 */
#include "grey.h"
#include "conf.h"
#include "dnscheck.h"
#include "ev.h"
#include "jobs.h"
#include "log.h"
#include "stats.h"

#include <arpa/inet.h>
#include <bearssl.h>
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define GREY_CACHE_SIZE 65536 /* entries, direct-mapped */
#define GREY_CACHE_SHARDS 64
#define GREY_CACHE_TTL (10 * 60 * 1000LL) /* ms */
#define GREY_EXPIRE_PERIOD (60 * 1000LL)  /* ms between expiry runs */
#define GREY_EXPIRE_BATCH 1000            /* rows per DELETE */
#define GREY_EXPIRE_ROUNDS 100            /* DELETEs per run at most */
#define GREY_BATCH_JOBS 2                 /* batch jobs at a time */

/* ---- normalisation ------------------------------------------------------ */

/* skip_fields - the text after the n-th separator sep, or NULL. */
static const char *skip_fields(const char *s, const char *sep, int n)
{
	size_t sl = strlen(sep);
	for (int i = 0; i < n; i++) {
		const char *p = strstr(s, sep);
		if (!p)
			return NULL;
		s = p + sl;
	}
	return s;
}

/* srs_decode - "srs0=HASH=TT=domain=user" (the local part, lower case)
 * into user@domain; SRS1 carries its SRS0 part after "==". 1 if done. */
static int srs_decode(const char *local, char *out, size_t outlen)
{
	const char *p;
	if (!strncmp(local, "srs1", 4) && (local[4] == '=' || local[4] == '+' || local[4] == '-')) {
		/* SRS1=HASH=forwarder==HASH=TT=domain=user */
		p = strstr(local, "==");
		if (!p)
			return 0;
		p = skip_fields(p + 2, "=", 2);
	} else if (!strncmp(local, "srs0", 4) && (local[4] == '=' || local[4] == '+' || local[4] == '-')) {
		p = skip_fields(local + 5, "=", 2);
	} else {
		return 0;
	}
	if (!p)
		return 0;
	const char *eq = strchr(p, '=');
	if (!eq || eq == p || !eq[1])
		return 0;
	snprintf(out, outlen, "%s@%.*s", eq + 1, (int)(eq - p), p);
	return 1;
}

/* batv_strip - "prvs=TAG=user", "msprvs1=TAG=user", "btv1==TAG==user":
 * the user part, or local itself. */
static const char *batv_strip(const char *local)
{
	const char *p = NULL;
	if (!strncmp(local, "prvs=", 5))
		p = skip_fields(local + 5, "=", 1);
	else if (!strncmp(local, "msprvs1=", 8))
		p = skip_fields(local + 8, "=", 1);
	else if (!strncmp(local, "btv1==", 6))
		p = skip_fields(local + 6, "==", 1);
	return p && *p ? p : local;
}

/* grey_normalize_sender - see grey.h. */
size_t grey_normalize_sender(const char *in, char *out, size_t outlen)
{
	char low[1024], dec[1024], local[1024];
	size_t n = 0;
	for (; in[n] && n < sizeof low - 1; n++)
		low[n] = (char)tolower((unsigned char)in[n]);
	low[n] = 0;
	const char *at = strrchr(low, '@');
	const char *domain = at ? at + 1 : "";
	size_t ll = at ? (size_t)(at - low) : n;
	snprintf(local, sizeof local, "%.*s", (int)ll, low);
	/* BATV first: a BATV-signed SRS address is rare, the reverse common. */
	const char *l = batv_strip(local);
	if (srs_decode(l, dec, sizeof dec)) {
		at = strrchr(dec, '@');
		snprintf(local, sizeof local, "%.*s", (int)(at - dec), dec);
		snprintf(low, sizeof low, "%s", at + 1);
		domain = low;
		l = batv_strip(local);
	}
	/* +extension (also VERP "list+user=example.org@"). */
	char user[1024];
	snprintf(user, sizeof user, "%s", l);
	char *plus = strchr(user, '+');
	if (plus && plus != user)
		*plus = 0;
	/* VERP-style numeric tags: a run of digits that is a whole word
	 * ("bounce-1234-x", "u.99") becomes "#", as postgrey does. */
	char tmp[1024];
	size_t j = 0;
	for (size_t i = 0; user[i] && j < sizeof tmp - 1;) {
		if (isdigit((unsigned char)user[i]) && (i == 0 || !isalnum((unsigned char)user[i - 1]))) {
			size_t k = i;
			while (isdigit((unsigned char)user[k]))
				k++;
			if (!isalpha((unsigned char)user[k])) {
				tmp[j++] = '#';
				i = k;
				continue;
			}
		}
		tmp[j++] = user[i++];
	}
	tmp[j] = 0;
	int w;
	if (!*in)
		w = snprintf(out, outlen, "%s", "");
	else if (*domain)
		w = snprintf(out, outlen, "%s@%s", tmp, domain);
	else
		w = snprintf(out, outlen, "%s", tmp);
	if (w < 0)
		w = 0;
	return outlen && (size_t)w >= outlen ? outlen - 1 : (size_t)w;
}

/* grey_client_net - mask the address to its network (text). */
int grey_client_net(const char *addr, int v4bits, int v6bits, char *out, size_t outlen)
{
	unsigned char a[16];
	char buf[INET6_ADDRSTRLEN];
	int af, bits, alen;
	if (inet_pton(AF_INET, addr, a) == 1) {
		af = AF_INET, bits = v4bits, alen = 4;
	} else if (inet_pton(AF_INET6, addr, a) == 1) {
		static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
		if (!memcmp(a, mapped, 12)) {
			/* ::ffff:192.0.2.1 is an IPv4 client. */
			memmove(a, a + 12, 4);
			af = AF_INET, bits = v4bits, alen = 4;
		} else {
			af = AF_INET6, bits = v6bits, alen = 16;
		}
	} else {
		return -1;
	}
	if (bits < 0)
		bits = 0;
	if (bits > alen * 8)
		bits = alen * 8;
	for (int i = 0; i < alen; i++) {
		int keep = bits - i * 8;
		if (keep <= 0)
			a[i] = 0;
		else if (keep < 8)
			a[i] &= (unsigned char)(0xff << (8 - keep));
	}
	inet_ntop(af, a, buf, sizeof buf);
	snprintf(out, outlen, "%s/%d", buf, bits);
	return 0;
}

/* key_hash - SHA-256 prefix over NUL-separated parts. */
static void key_hash(char kind, const char *const *parts, int n, struct grey_key *k)
{
	br_sha256_context c;
	unsigned char out[32];
	char head[2] = { (char)('0' + GREY_NORM_VERSION), kind };
	br_sha256_init(&c);
	br_sha256_update(&c, head, 2);
	for (int i = 0; i < n; i++)
		br_sha256_update(&c, parts[i], strlen(parts[i]) + 1);
	br_sha256_out(&c, out);
	memcpy(k->b, out, sizeof k->b);
}

/* grey_triplet_key - the key of (network, normalised sender, recipient). */
void grey_triplet_key(const char *net, const char *nsender, const char *rcpt, struct grey_key *k)
{
	char r[1024];
	size_t i = 0;
	for (; rcpt[i] && i < sizeof r - 1; i++)
		r[i] = (char)tolower((unsigned char)rcpt[i]);
	r[i] = 0;
	const char *parts[3] = { net, nsender, r };
	key_hash('t', parts, 3, k);
}

/* grey_net_key - the key of a client network (auto-whitelist). */
void grey_net_key(const char *net, struct grey_key *k)
{
	const char *parts[1] = { net };
	key_hash('n', parts, 1, k);
}

/* ---- the cache of passes ------------------------------------------------ */

struct cache_ent {
	struct grey_key k;
	int64_t until; /* wall ms; 0 = empty */
};
static struct cache_ent grey_cache[GREY_CACHE_SIZE];
static pthread_mutex_t grey_cache_mu[GREY_CACHE_SHARDS];
static pthread_once_t grey_once = PTHREAD_ONCE_INIT;
static pthread_key_t grey_tkey;

/* cache_slot - the slot of a key (its bytes are uniformly random). */
static size_t cache_slot(const struct grey_key *k)
{
	uint32_t v;
	memcpy(&v, k->b, sizeof v);
	return v % GREY_CACHE_SIZE;
}

/* cache_get - 1 when k is cached as passed at now. */
static int cache_get(const struct grey_key *k, int64_t now)
{
	size_t i = cache_slot(k);
	pthread_mutex_t *mu = &grey_cache_mu[i % GREY_CACHE_SHARDS];
	pthread_mutex_lock(mu);
	int hit = grey_cache[i].until > now && !memcmp(&grey_cache[i].k, k, sizeof *k);
	pthread_mutex_unlock(mu);
	return hit;
}

/* cache_put - remember k as passed until `until`. */
static void cache_put(const struct grey_key *k, int64_t until)
{
	size_t i = cache_slot(k);
	pthread_mutex_t *mu = &grey_cache_mu[i % GREY_CACHE_SHARDS];
	pthread_mutex_lock(mu);
	grey_cache[i].k = *k;
	grey_cache[i].until = until;
	pthread_mutex_unlock(mu);
}

/* ---- networks whose accepted message counted lately ------------------- */

/* A network's accepted message counts toward the auto-whitelist at most
 * once per greylist_auto_whitelist_interval, timed by the store (shared
 * by a fleet: every box's counts move it). After a count succeeded the
 * network is marked here until the store would take one again (its last
 * count plus the interval, as it answered); messages before that are not
 * sent to it (no write for each message). A failed count marks nothing:
 * the next message tries again. */
#define GREY_AWL_SEEN_SIZE 4096
static struct cache_ent grey_awl_seen[GREY_AWL_SEEN_SIZE];

/* awl_entry - the mark slot of k, its shard locked. */
static struct cache_ent *awl_entry(const struct grey_key *k, pthread_mutex_t **mu)
{
	size_t i = cache_slot(k) % GREY_AWL_SEEN_SIZE;
	*mu = &grey_cache_mu[i % GREY_CACHE_SHARDS];
	pthread_mutex_lock(*mu);
	return &grey_awl_seen[i];
}

/* awl_seen - 1 when the store would not count net's message at now. */
static int awl_seen(const struct grey_key *k, int64_t now)
{
	pthread_mutex_t *mu;
	struct cache_ent *e = awl_entry(k, &mu);
	int seen = e->until > now && !memcmp(&e->k, k, sizeof *k);
	pthread_mutex_unlock(mu);
	return seen;
}

/* awl_mark - the store counts net's messages again from `until` on. */
static void awl_mark(const struct grey_key *k, int64_t until)
{
	pthread_mutex_t *mu;
	struct cache_ent *e = awl_entry(k, &mu);
	e->k = *k;
	e->until = until;
	pthread_mutex_unlock(mu);
}

/* ---- per-worker store connections --------------------------------------- */

struct grey_tls {
	struct grey_store *st;
	char *spec;
	int64_t retry_at; /* after a failed open, wall ms */
};

/* tls_free - a worker exits: close its connection. */
static void tls_free(void *p)
{
	struct grey_tls *t = p;
	if (t->st)
		t->st->ops->close(t->st);
	free(t->spec);
	free(t);
}

/* grey_init_once - mutexes and the thread-specific key. */
static void grey_init_once(void)
{
	for (int i = 0; i < GREY_CACHE_SHARDS; i++)
		pthread_mutex_init(&grey_cache_mu[i], NULL);
	pthread_key_create(&grey_tkey, tls_free);
}

/* grey_store_open - by scheme. */
struct grey_store *grey_store_open(const char *spec, char *err, size_t errlen)
{
	if (!strncmp(spec, "sqlite:", 7))
		return grey_sqlite_open(spec + 7, err, errlen);
	if (!strncmp(spec, "mysql:", 6))
		return grey_mysql_open(spec + 6, err, errlen);
	snprintf(err, errlen, "greylist_database: %s: expected sqlite:PATH or mysql:FILE", spec);
	return NULL;
}

/* worker_store - this worker's connection to spec (opened, or reopened
 * when the configuration named another store); NULL with err. */
static struct grey_store *worker_store(const char *spec, char *err, size_t errlen)
{
	struct grey_tls *t = pthread_getspecific(grey_tkey);
	if (!t) {
		t = xcalloc(1, sizeof *t);
		pthread_setspecific(grey_tkey, t);
	}
	if (t->st && strcmp(t->spec, spec)) {
		t->st->ops->close(t->st);
		t->st = NULL;
	}
	if (!t->st) {
		int64_t now = (int64_t)ev_wallclock() * 1000;
		if (t->spec && !strcmp(t->spec, spec) && now < t->retry_at) {
			snprintf(err, errlen, "store not open (retrying)");
			return NULL;
		}
		free(t->spec);
		t->spec = xstrdup(spec);
		t->st = grey_store_open(spec, err, errlen);
		if (!t->st)
			t->retry_at = now + 1000;
	}
	return t->st;
}

/* grey_fleet_sync - see grey.h. */
int grey_fleet_sync(const char *spec, struct grey_fleet_sync *fs, char *err, size_t errlen)
{
	pthread_once(&grey_once, grey_init_once);
	struct grey_store *st = worker_store(spec, err, errlen);
	if (!st)
		return -1;
	if (!st->ops->fleet_sync) {
		snprintf(err, errlen, "%s: only a mysql: store is shared by a fleet", spec);
		return -1;
	}
	return st->ops->fleet_sync(st, fs, err, errlen);
}

/* ---- database health: one log line per change --------------------------- */

static int grey_db_failing; /* atomic */

/* db_state - record the outcome of a store call. */
static void db_state(int failed, const char *err)
{
	int was = __atomic_exchange_n(&grey_db_failing, failed, __ATOMIC_ACQ_REL);
	if (failed)
		stats_inc(ST_grey_db_errors);
	if (failed && !was)
		log_err("greylist database failing: %s", err);
	else if (!failed && was)
		log_info("greylist database working again");
}

static int grey_store_full; /* atomic */

/* full_state - a new triplet found the store full (or not): one log line
 * per change. Only passed triplets are left then: greylist_max_entries is
 * too small for this site. */
static void full_state(int full)
{
	int was = __atomic_exchange_n(&grey_store_full, full, __ATOMIC_ACQ_REL);
	if (full && !was)
		log_err("greylist database full of passed triplets (greylist_max_entries): new "
			"triplets get 451 4.7.1 until entries expire");
	else if (!full && was)
		log_info("greylist database has room again");
}

/* now_ms - the wall clock in milliseconds. */
static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- expiry in the background ------------------------------------------- */

static int64_t grey_next_expire; /* atomic, wall ms */

struct expire_job {
	char *spec;
	int64_t now;
};

/* expire_work - bounded DELETE ... LIMIT rounds on a worker. */
static void expire_work(void *arg)
{
	struct expire_job *e = arg;
	char err[256];
	struct grey_store *st = worker_store(e->spec, err, sizeof err);
	if (!st)
		return;
	long total = 0;
	for (int i = 0; i < GREY_EXPIRE_ROUNDS; i++) {
		int n = st->ops->expire(st, e->now, GREY_EXPIRE_BATCH, err, sizeof err);
		if (n < 0) {
			log_warn("greylist expiry: %s", err);
			break;
		}
		total += n;
		if (n < GREY_EXPIRE_BATCH)
			break;
	}
	if (total)
		log_info("greylist expiry: %ld entries removed", total);
}

/* expire_done - free the job. */
static void expire_done(void *arg, int cancelled)
{
	(void)cancelled;
	struct expire_job *e = arg;
	free(e->spec);
	free(e);
}

/* maybe_expire - at most once per period, process-wide. */
static void maybe_expire(struct ev_loop *loop, const struct conf *c, int64_t now)
{
	int64_t next = __atomic_load_n(&grey_next_expire, __ATOMIC_RELAXED);
	if (now < next)
		return;
	if (!__atomic_compare_exchange_n(&grey_next_expire, &next, now + GREY_EXPIRE_PERIOD, 0,
					 __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
		return;
	if (next == 0)
		return; /* the first decision only arms the period */
	struct expire_job *e = xcalloc(1, sizeof *e);
	e->spec = xstrdup(c->greylist_database);
	e->now = now;
	jobs_submit(loop, expire_work, expire_done, e);
}

/* ---- decisions ----------------------------------------------------------- */

struct grey_op {
	struct grey_op *next; /* in the queue of decisions (grey_q) */
	struct ev_loop *loop; /* the loop that asked: done() runs there */
	int cancelled;        /* atomic: set by grey_cancel on loop */
	char *spec;
	struct grey_query q;
	struct grey_answer a;
	int rc;
	char err[256];
	int awl_count, tempfail, null_sender;
	int64_t cache_ttl;
	grey_done_fn *done;
	void *arg;
};

/* The decisions waiting for the store: a worker takes the compatible
 * ones waiting (up to GREY_BATCH_MAX, each of another triplet) as one
 * store call, so under load many RCPTs share a transaction and a round
 * trip, and an idle box still sends each decision at once. At most
 * GREY_BATCH_JOBS jobs take from the queue at a time; each takes one
 * batch and queues its successor while decisions wait, so other work on
 * the shared workers (maps, scanners) is not held up behind greylisting. */
static pthread_mutex_t grey_q_mu = PTHREAD_MUTEX_INITIALIZER;
static struct grey_op *grey_q_head, **grey_q_tail = &grey_q_head;
static int grey_q_jobs; /* batch jobs queued or running */
static int grey_q_len;  /* decisions waiting */

/* op_free - release an operation. */
static void op_free(struct grey_op *op)
{
	free(op->spec);
	free(op);
}

/* answer_result - the store's answer as a result; fills the cache. */
static void answer_result(struct grey_op *op, struct grey_result *res)
{
	memset(res, 0, sizeof *res);
	if (op->rc < 0) {
		db_state(1, op->err);
		res->outcome = GREY_FAIL;
		res->tempfail = op->tempfail;
		return;
	}
	db_state(0, NULL);
	int64_t wall = now_ms();
	int64_t until = wall + op->cache_ttl;
	const struct grey_answer *a = &op->a;
	if (op->awl_count > 0 && a->awl_count >= op->awl_count) {
		cache_put(&op->q.net, until);
		stats_inc(ST_grey_awl);
		res->outcome = GREY_AWL;
		return;
	}
	if (a->evicted > 0)
		stats_add(ST_grey_evicted, a->evicted);
	if (a->state == GREY_PASS) {
		cache_put(&op->q.triplet, until);
		stats_inc(ST_grey_passed);
		res->outcome = GREY_PASSED;
		return;
	}
	if (a->state == GREY_OVER_QUOTA || a->state == GREY_FULL) {
		res->outcome = GREY_LIMIT;
		res->full = a->state == GREY_FULL;
		stats_inc(res->full ? ST_grey_full : ST_grey_quota);
		full_state(res->full);
		return;
	}
	if (a->state == GREY_NEW)
		full_state(0);
	res->outcome = GREY_DEFER;
	res->first = a->state == GREY_NEW;
	int64_t left = a->first + op->q.delay - a->now;
	res->wait = left <= 0 ? 1 : (left + 999) / 1000;
	stats_inc(res->first ? ST_grey_new : ST_grey_early);
}

/* op_finish - back on the loop that asked: report, unless cancelled. */
static void op_finish(void *arg)
{
	struct grey_op *op = arg;
	if (!__atomic_load_n(&op->cancelled, __ATOMIC_ACQUIRE)) {
		struct grey_result res;
		answer_result(op, &res);
		op->done(op->arg, &res);
	}
	op_free(op);
}

/* same_config - decisions b can share a store call with a. */
static int same_config(const struct grey_op *a, const struct grey_op *b)
{
	const struct grey_query *x = &a->q, *y = &b->q;
	return !strcmp(a->spec, b->spec) && x->delay == y->delay && x->max_age == y->max_age &&
	    x->retention == y->retention && x->new_limit == y->new_limit &&
	    x->new_interval == y->new_interval && x->max_entries == y->max_entries && x->awl == y->awl;
}

/* batch_fits - op can join the batch b[0..n): same configuration, and
 * another triplet than each. */
static int batch_fits(struct grey_op *const *b, int n, const struct grey_op *op)
{
	if (n && !same_config(b[0], op))
		return 0;
	for (int i = 0; i < n; i++)
		if (!memcmp(&b[i]->q.triplet, &op->q.triplet, sizeof op->q.triplet))
			return 0;
	return 1;
}

/* batch_take - unlink the next batch from the queue (under grey_q_mu);
 * cancelled decisions go to gone[], unasked. Returns the batch's size. */
static int batch_take(struct grey_op **b, struct grey_op **gone, int *ngone)
{
	int n = 0;
	*ngone = 0;
	struct grey_op **pp = &grey_q_head;
	while (*pp && n < GREY_BATCH_MAX && *ngone < GREY_BATCH_MAX) {
		struct grey_op *op = *pp;
		int cancelled = __atomic_load_n(&op->cancelled, __ATOMIC_ACQUIRE);
		if (!cancelled && !batch_fits(b, n, op)) {
			pp = &op->next;
			continue;
		}
		*pp = op->next;
		if (cancelled)
			gone[(*ngone)++] = op;
		else
			b[n++] = op;
	}
	grey_q_len -= n + *ngone;
	grey_q_tail = &grey_q_head;
	while (*grey_q_tail)
		grey_q_tail = &(*grey_q_tail)->next;
	return n;
}

/* batch_store - run a batch on this worker's store connection. */
static void batch_store(struct grey_op **b, int n)
{
	struct grey_store *st = worker_store(b[0]->spec, b[0]->err, sizeof b[0]->err);
	if (!st) {
		for (int i = 0; i < n; i++) {
			b[i]->rc = -1;
			if (i)
				snprintf(b[i]->err, sizeof b[i]->err, "%s", b[0]->err);
		}
		return;
	}
	if (!st->ops->check_batch) {
		for (int i = 0; i < n; i++)
			b[i]->rc = st->ops->check(st, &b[i]->q, &b[i]->a, b[i]->err, sizeof b[i]->err);
		return;
	}
	struct grey_call calls[GREY_BATCH_MAX];
	for (int i = 0; i < n; i++)
		calls[i] = (struct grey_call){ &b[i]->q, &b[i]->a, 0, b[i]->err, sizeof b[i]->err };
	st->ops->check_batch(st, calls, n);
	for (int i = 0; i < n; i++)
		b[i]->rc = calls[i].rc;
	stats_inc(ST_grey_db_batches);
	stats_add(ST_grey_db_batched, n);
}

static void batch_done(void *arg, int cancelled);

/* batch_work - on a worker: one batch from the queue, its answers posted
 * to the loops that asked; the successor job queued while any wait. */
static void batch_work(void *arg)
{
	(void)arg;
	struct grey_op *b[GREY_BATCH_MAX], *gone[GREY_BATCH_MAX];
	int ngone;
	pthread_mutex_lock(&grey_q_mu);
	int n = batch_take(b, gone, &ngone);
	pthread_mutex_unlock(&grey_q_mu);
	if (n)
		batch_store(b, n);
	for (int i = 0; i < n; i++)
		ev_post(b[i]->loop, op_finish, b[i]);
	for (int i = 0; i < ngone; i++)
		ev_post(gone[i]->loop, op_finish, gone[i]);
	pthread_mutex_lock(&grey_q_mu);
	int again = grey_q_head != NULL;
	if (!again)
		grey_q_jobs--;
	pthread_mutex_unlock(&grey_q_mu);
	if (again)
		jobs_submit(NULL, batch_work, batch_done, NULL);
}

/* batch_done - a batch job reports to no loop: nothing to free. */
static void batch_done(void *arg, int cancelled)
{
	(void)arg;
	(void)cancelled;
}

/* queue_op - the decision waits for a batch; a batch job is queued when
 * fewer than GREY_BATCH_JOBS are. */
static void queue_op(struct grey_op *op)
{
	pthread_mutex_lock(&grey_q_mu);
	*grey_q_tail = op;
	grey_q_tail = &op->next;
	grey_q_len++;
	int start = !grey_q_jobs || (grey_q_jobs < GREY_BATCH_JOBS && grey_q_len >= GREY_BATCH_MAX);
	if (start)
		grey_q_jobs++;
	pthread_mutex_unlock(&grey_q_mu);
	if (start)
		jobs_submit(NULL, batch_work, batch_done, NULL);
}

/* grey_decide - whitelists, cache, then the store; see grey.h. */
int grey_decide(struct ev_loop *loop, const struct policy *pol, const char *client_addr,
		const char *client_name, const char *sender, const char *rcpt, struct grey_result *res,
		grey_done_fn *done, void *arg, struct grey_op **op)
{
	const struct conf *c = pol->conf;
	pthread_once(&grey_once, grey_init_once);
	memset(res, 0, sizeof *res);
	*op = NULL;
	if (!c->greylist) {
		res->outcome = GREY_OFF;
		return 1;
	}
	const struct grey_policy *gp = pol->grey;
	if (gp &&
	    ((gp->clients && greywl_client(gp->clients, client_addr, client_name)) ||
	     (gp->rcpts && greywl_rcpt(gp->rcpts, rcpt)))) {
		stats_inc(ST_grey_whitelisted);
		res->outcome = GREY_WHITELISTED;
		return 1;
	}
	char net[64], ns[1024];
	if (grey_client_net(client_addr, (int)c->greylist_ipv4_netmask, (int)c->greylist_ipv6_netmask, net,
			    sizeof net) < 0)
		snprintf(net, sizeof net, "%s", client_addr);
	grey_normalize_sender(sender, ns, sizeof ns);
	struct grey_op *o = xcalloc(1, sizeof *o);
	grey_net_key(net, &o->q.net);
	grey_triplet_key(net, ns, rcpt, &o->q.triplet);
	int64_t wall = now_ms();
	maybe_expire(loop, c, wall);
	if ((c->greylist_auto_whitelist_count > 0 && cache_get(&o->q.net, wall))) {
		stats_inc(ST_grey_awl);
		res->outcome = GREY_AWL;
		free(o);
		return 1;
	}
	if (cache_get(&o->q.triplet, wall)) {
		stats_inc(ST_grey_passed);
		res->outcome = GREY_PASSED;
		free(o);
		return 1;
	}
	o->spec = xstrdup(c->greylist_database);
	o->q.now = wall;
	o->q.delay = c->greylist_delay;
	o->q.max_age = c->greylist_max_age;
	o->q.retention = c->greylist_retention;
	o->q.new_limit = c->greylist_new_triplet_limit;
	o->q.new_interval = c->greylist_new_triplet_interval;
	o->q.max_entries = c->greylist_max_entries;
	o->awl_count = (int)c->greylist_auto_whitelist_count;
	o->tempfail = c->greylist_fail_action_e == GREY_FAIL_TEMPFAIL;
	o->null_sender = !*sender;
	o->cache_ttl = c->greylist_retention < GREY_CACHE_TTL ? c->greylist_retention : GREY_CACHE_TTL;
	o->done = done;
	o->arg = arg;
	o->q.awl = o->awl_count > 0;
	o->loop = loop;
	queue_op(o);
	*op = o;
	return 0;
}

/* grey_cancel - the caller is gone: op_finish frees op, unreported. */
void grey_cancel(struct grey_op *op)
{
	if (op)
		__atomic_store_n(&op->cancelled, 1, __ATOMIC_RELEASE);
}

/* ---- the RCPT step ------------------------------------------------------- */

/* result_verdict - a result as the chain sees it: 1 decided (v filled). */
static int result_verdict(const struct policy_req *r, const struct grey_result *res, struct policy_verdict *v)
{
	switch (res->outcome) {
	case GREY_PASSED:
		v->code = 0;
		v->reply[0] = 0;
		v->rule = GREY_RULE_PASS;
		return 1;
	case GREY_DEFER:
		v->code = 451;
		snprintf(v->reply, sizeof v->reply, "451 4.7.1 <%s>: greylisted, try again in %lld seconds",
			 r->env->rcpt, (long long)res->wait);
		v->rule = res->first ? "greylist" : "greylist_early";
		return 1;
	case GREY_LIMIT:
		v->code = 451;
		if (res->full)
			snprintf(v->reply, sizeof v->reply,
				 "451 4.7.1 <%s>: greylisting cannot take new entries now, try again later",
				 r->env->rcpt);
		else
			snprintf(v->reply, sizeof v->reply,
				 "451 4.7.1 <%s>: too many new greylisting entries from your network, "
				 "try again later",
				 r->env->rcpt);
		v->rule = res->full ? "greylist_full" : "greylist_quota";
		return 1;
	case GREY_FAIL:
		if (!res->tempfail)
			return 0;
		v->code = 451;
		snprintf(v->reply, sizeof v->reply, "451 4.3.0 <%s>: greylisting temporarily unavailable",
			 r->env->rcpt);
		v->rule = "greylist_dbfail";
		return 1;
	default: return 0;
	}
}

/* step_done - the store answered for a recipient in the chain. */
static void step_done(void *arg, const struct grey_result *res)
{
	struct policy_req *r = arg;
	struct policy_verdict v = { 0 };
	int decided = result_verdict(r, res, &v);
	policy_step_done(r, decided, &v);
}

/* step_cancel - the chain was abandoned. */
static void step_cancel(void *handle)
{
	grey_cancel(handle);
}

/* grey_step - greylisting as the last RCPT step. */
enum policy_step grey_step(struct policy_req *r, struct policy_verdict *v)
{
	const struct policy_env *env = r->env;
	/* Role accounts (RFC 2142) are never greylisted, nor clients on a
	 * dnswl_sites list (r->dnswl, set by the DNSBL step). */
	if (r->exempt || r->dnswl || !env->pol->conf->greylist)
		return STEP_PASS;
	struct grey_result res;
	struct grey_op *op;
	const char *name = env->dns ? dnscheck_client_name(env->dns) : NULL;
	if (grey_decide(env->loop, env->pol, env->client_addr, name, env->sender, env->rcpt, &res, step_done,
			r, &op))
		return result_verdict(r, &res, v) ? STEP_DECIDED : STEP_PASS;
	policy_step_async(r, step_cancel, op);
	return STEP_ASYNC;
}

/* ---- auto-whitelist: accepted messages ----------------------------------- */

struct awl_job {
	char *spec;
	struct grey_key net;
	int64_t now, interval, retention, count, wait, threshold, cache_ttl;
	int rc;
	char err[256];
};

/* awl_work - count the pass on a worker. */
static void awl_work(void *arg)
{
	struct awl_job *j = arg;
	struct grey_store *st = worker_store(j->spec, j->err, sizeof j->err);
	j->rc = st ? st->ops->awl_pass(st, &j->net, j->now, j->interval, j->retention, &j->count, &j->wait,
				       j->err, sizeof j->err)
		   : -1;
}

/* awl_done - on the loop: a network that reached the count is cached;
 * after a count, its messages skip the store until it counts again (the
 * wait from the store's now, taken from the job's start: never later). */
static void awl_done(void *arg, int cancelled)
{
	(void)cancelled;
	struct awl_job *j = arg;
	if (j->rc < 0) {
		db_state(1, j->err);
	} else {
		if (j->interval > 0 && j->wait > 0)
			awl_mark(&j->net, j->now + j->wait);
		if (j->count >= j->threshold)
			cache_put(&j->net, now_ms() + j->cache_ttl);
	}
	free(j->spec);
	free(j);
}

/* grey_accepted - see grey.h. */
void grey_accepted(struct ev_loop *loop, const struct policy *pol, const char *client_addr, const char *sender)
{
	const struct conf *c = pol->conf;
	if (!c->greylist || c->greylist_auto_whitelist_count <= 0 || !sender || !*sender)
		return;
	pthread_once(&grey_once, grey_init_once);
	char net[64];
	if (grey_client_net(client_addr, (int)c->greylist_ipv4_netmask, (int)c->greylist_ipv6_netmask, net,
			    sizeof net) < 0)
		return;
	struct grey_key nk;
	grey_net_key(net, &nk);
	int64_t now = now_ms();
	if (c->greylist_auto_whitelist_interval > 0 && awl_seen(&nk, now)) {
		stats_inc(ST_grey_awl_skipped);
		return;
	}
	struct awl_job *j = xcalloc(1, sizeof *j);
	j->spec = xstrdup(c->greylist_database);
	j->net = nk;
	j->now = now;
	j->interval = c->greylist_auto_whitelist_interval;
	j->retention = c->greylist_retention;
	j->threshold = c->greylist_auto_whitelist_count;
	j->cache_ttl = c->greylist_retention < GREY_CACHE_TTL ? c->greylist_retention : GREY_CACHE_TTL;
	jobs_submit(loop, awl_work, awl_done, j);
}

/* ---- configuration check and start ---------------------------------------- */

/* grey_check - see grey.h. */
int grey_check(const struct conf *c, char *err, size_t errlen)
{
	if (!c->greylist)
		return 0;
	const char *spec = c->greylist_database;
	if (!strncmp(spec, "sqlite:", 7))
		return grey_sqlite_check(spec + 7, c->data_directory, err, errlen);
	if (!strncmp(spec, "mysql:", 6)) {
		char e[512];
		if (grey_mysql_check(spec + 6, e, sizeof e) == 0)
			return 0;
		snprintf(err, errlen, "greylist_database: %s", e);
		return -1;
	}
	snprintf(err, errlen, "greylist_database: %s: expected sqlite:PATH or mysql:FILE", spec);
	return -1;
}

/* grey_announce - see grey.h. */
void grey_announce(const struct conf *c)
{
	if (!c->greylist)
		return;
	log_info("greylisting: database %s; greylist_fail_action = %s (%s)", c->greylist_database,
		 c->greylist_fail_action,
		 c->greylist_fail_action_e == GREY_FAIL_TEMPFAIL
		     ? "while the database fails, recipients get 451 4.3.0"
		     : "while the database fails, recipients are accepted without greylisting");
}

/* ---- whitelists of the policy snapshot ----------------------------------- */

/* grey_policy_load - open the whitelist files named by c. */
int grey_policy_load(const struct conf *c, struct grey_policy *gp, char *err, size_t errlen)
{
	char why[1024];
	memset(gp, 0, sizeof *gp);
	if (c->greylist_whitelist_clients[0] &&
	    !(gp->clients = greywl_load(c->greylist_whitelist_clients, why, sizeof why))) {
		snprintf(err, errlen, "greylist_whitelist_clients: %s", why);
		return -1;
	}
	if (c->greylist_whitelist_recipients[0] &&
	    !(gp->rcpts = greywl_load(c->greylist_whitelist_recipients, why, sizeof why))) {
		snprintf(err, errlen, "greylist_whitelist_recipients: %s", why);
		grey_policy_free(gp);
		return -1;
	}
	return 0;
}

/* grey_policy_free - close the whitelists. */
void grey_policy_free(struct grey_policy *gp)
{
	greywl_free(gp->clients);
	greywl_free(gp->rcpts);
	gp->clients = gp->rcpts = NULL;
}
