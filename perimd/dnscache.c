/*
 * dnscache.c - the shared DNS answer cache (see dnscache.h).
 *
 * Invariants: DNSCACHE_SHARDS shards chosen by the key's hash; a shard's
 * hash chains, LRU list and count change only under its mutex. An entry
 * holds one reference to its immutable result, so a reader that took its
 * own reference under the lock keeps a valid result after eviction. An
 * entry is never served past its expiry (checked on every get). Bounds are
 * read with relaxed atomics: a reload changes them without a lock.
 */
#include "dnscache.h"
#include "dns.h"
#include "clock.h"
#include "hash.h"
#include "log.h"
#include "stats.h"

#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DNSCACHE_SHARDS 64
#define DNSCACHE_BUCKETS 4096 /* per shard; chains grow past it */

struct centry {
	struct centry *hnext;         /* hash chain */
	struct centry *lprev, *lnext; /* LRU: head = most recent */
	uint64_t hash;
	uint64_t expires; /* ms, monotonic */
	const struct dns_result *res;
	char key[];
};

struct shard {
	pthread_mutex_t mu;
	struct centry *buckets[DNSCACHE_BUCKETS];
	struct centry *head, *tail;
	size_t count;
} __attribute__((aligned(64)));

static struct shard *shards;
static pthread_once_t shards_once = PTHREAD_ONCE_INIT;
static long long lim_size = 100000, lim_min = 30000, lim_max = 86400000;
static uint64_t (*clock_fn)(void);

/* now_ms - the cache's clock (fake in tests). */
static uint64_t now_ms(void)
{
	uint64_t (*f)(void) = __atomic_load_n(&clock_fn, __ATOMIC_ACQUIRE);
	return f ? f() : clock_coarse_ms();
}

/* shards_init - allocate the shards once. */
static void shards_init(void)
{
	shards = xcalloc(DNSCACHE_SHARDS, sizeof *shards);
	for (int i = 0; i < DNSCACHE_SHARDS; i++)
		pthread_mutex_init(&shards[i].mu, NULL);
}

/* dnscache_configure - new bounds. */
void dnscache_configure(long long size, long long min_ttl_ms, long long max_ttl_ms)
{
	pthread_once(&shards_once, shards_init);
	__atomic_store_n(&lim_size, size, __ATOMIC_RELAXED);
	__atomic_store_n(&lim_min, min_ttl_ms, __ATOMIC_RELAXED);
	__atomic_store_n(&lim_max, max_ttl_ms, __ATOMIC_RELAXED);
}

/* dnscache_set_clock - tests only. */
void dnscache_set_clock(uint64_t (*f)(void))
{
	__atomic_store_n(&clock_fn, f, __ATOMIC_RELEASE);
}

/* lru_unlink - take e out of the LRU list (mu held). */
static void lru_unlink(struct shard *s, struct centry *e)
{
	if (e->lprev)
		e->lprev->lnext = e->lnext;
	else
		s->head = e->lnext;
	if (e->lnext)
		e->lnext->lprev = e->lprev;
	else
		s->tail = e->lprev;
	e->lprev = e->lnext = NULL;
}

/* lru_front - make e the most recently used (mu held). */
static void lru_front(struct shard *s, struct centry *e)
{
	e->lnext = s->head;
	e->lprev = NULL;
	if (s->head)
		s->head->lprev = e;
	s->head = e;
	if (!s->tail)
		s->tail = e;
}

/* entry_remove - unlink e from its chain and the LRU and free it (mu held). */
static void entry_remove(struct shard *s, struct centry *e)
{
	struct centry **pp = &s->buckets[e->hash % DNSCACHE_BUCKETS];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	lru_unlink(s, e);
	s->count--;
	dns_result_unref(e->res);
	free(e);
}

/* find - the entry for key in s, or NULL (mu held). */
static struct centry *find(struct shard *s, uint64_t h, const char *key)
{
	for (struct centry *e = s->buckets[h % DNSCACHE_BUCKETS]; e; e = e->hnext)
		if (e->hash == h && !strcmp(e->key, key))
			return e;
	return NULL;
}

/* dnscache_get - cached answer or NULL. */
const struct dns_result *dnscache_get(const char *key)
{
	pthread_once(&shards_once, shards_init);
	uint64_t h = hash_str64(key);
	struct shard *s = &shards[(h >> 32) % DNSCACHE_SHARDS];
	const struct dns_result *r = NULL;
	uint64_t now = now_ms();
	pthread_mutex_lock(&s->mu);
	struct centry *e = find(s, h, key);
	if (e && e->expires <= now) {
		entry_remove(s, e);
		e = NULL;
	}
	if (e) {
		if (s->head != e) {
			lru_unlink(s, e);
			lru_front(s, e);
		}
		r = e->res;
		dns_result_ref(r);
	}
	pthread_mutex_unlock(&s->mu);
	stats_inc(r ? ST_dns_cache_hits : ST_dns_cache_misses);
	return r;
}

/* dnscache_put - insert or replace, evicting the least recently used. */
void dnscache_put(const char *key, const struct dns_result *res)
{
	pthread_once(&shards_once, shards_init);
	long long size = __atomic_load_n(&lim_size, __ATOMIC_RELAXED);
	long long mn = __atomic_load_n(&lim_min, __ATOMIC_RELAXED);
	long long mx = __atomic_load_n(&lim_max, __ATOMIC_RELAXED);
	if (size <= 0 || res->status == DNS_TEMPFAIL)
		return;
	long long ttl = (long long)res->ttl * 1000;
	if (ttl < mn)
		ttl = mn;
	if (mx > 0 && ttl > mx)
		ttl = mx;
	if (ttl <= 0)
		return;
	/* Each shard gets its share, at least one entry. */
	size_t per = (size_t)((size + DNSCACHE_SHARDS - 1) / DNSCACHE_SHARDS);
	uint64_t h = hash_str64(key);
	struct shard *s = &shards[(h >> 32) % DNSCACHE_SHARDS];
	size_t kl = strlen(key);
	struct centry *ne = xmalloc(sizeof *ne + kl + 1);
	memset(ne, 0, sizeof *ne);
	memcpy(ne->key, key, kl + 1);
	ne->hash = h;
	ne->res = res;
	dns_result_ref(res);
	pthread_mutex_lock(&s->mu);
	ne->expires = now_ms() + (uint64_t)ttl;
	struct centry *old = find(s, h, key);
	if (old)
		entry_remove(s, old);
	while (s->count >= per && s->tail)
		entry_remove(s, s->tail);
	ne->hnext = s->buckets[h % DNSCACHE_BUCKETS];
	s->buckets[h % DNSCACHE_BUCKETS] = ne;
	lru_front(s, ne);
	s->count++;
	pthread_mutex_unlock(&s->mu);
}

/* dnscache_shard - see dnscache.h. */
int dnscache_shard(const char *key)
{
	return (int)((hash_str64(key) >> 32) % DNSCACHE_SHARDS);
}

/* dnscache_count - entries held now (summed without a global lock). */
size_t dnscache_count(void)
{
	pthread_once(&shards_once, shards_init);
	size_t n = 0;
	for (int i = 0; i < DNSCACHE_SHARDS; i++) {
		pthread_mutex_lock(&shards[i].mu);
		n += shards[i].count;
		pthread_mutex_unlock(&shards[i].mu);
	}
	return n;
}

/* dnscache_flush - drop everything. */
void dnscache_flush(void)
{
	pthread_once(&shards_once, shards_init);
	for (int i = 0; i < DNSCACHE_SHARDS; i++) {
		struct shard *s = &shards[i];
		pthread_mutex_lock(&s->mu);
		while (s->head)
			entry_remove(s, s->head);
		pthread_mutex_unlock(&s->mu);
	}
}
