/*
 * dnscache.c - the shared DNS answer cache (see dnscache.h).
 *
 * Invariants: a sharded cache (shcache.h) of DNSCACHE_SHARDS shards, each
 * with its own mutex, chains and LRU list (a hit makes an entry the most
 * recent; a full shard evicts its least recent). An entry holds one
 * reference to its immutable result, dropped when the entry goes, so a
 * reader that took its own reference under the lock keeps a valid result
 * after eviction. An entry is never served past its expiry (checked on
 * every get). Bounds are read with relaxed atomics: a reload changes them
 * without a lock.
 */
#include "dnscache.h"
#include "dns.h"
#include "clock.h"
#include "log.h"
#include "shcache.h"
#include "stats.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define DNSCACHE_SHARDS 64
#define DNSCACHE_BUCKETS 4096 /* per shard; chains grow past it */

static struct shcache *cache;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
static long long lim_size = 100000, lim_min = 30000, lim_max = 86400000;
static uint64_t (*clock_fn)(void);

/* now_ms - the cache's clock (fake in tests). */
static uint64_t now_ms(void)
{
	uint64_t (*f)(void) = __atomic_load_n(&clock_fn, __ATOMIC_ACQUIRE);
	return f ? f() : clock_coarse_ms();
}

/* unref - an entry goes: its reference to the result with it. */
static void unref(void *val)
{
	dns_result_unref(*(const struct dns_result **)val);
}

/* per_shard - each shard's share of size entries, at least one. */
static size_t per_shard(long long size)
{
	return size > 0 ? (size_t)((size + DNSCACHE_SHARDS - 1) / DNSCACHE_SHARDS) : 1;
}

/* cache_init - the cache, once. */
static void cache_init(void)
{
	const struct shcache_conf cf = { .shards = DNSCACHE_SHARDS,
					 .buckets = DNSCACHE_BUCKETS,
					 .valsize = sizeof(const struct dns_result *),
					 .max = per_shard(lim_size),
					 .evict = 1,
					 .touch = 1,
					 .drop = unref };
	cache = shcache_new(&cf);
}

/* dnscache_configure - new bounds. */
void dnscache_configure(long long size, long long min_ttl_ms, long long max_ttl_ms)
{
	pthread_once(&cache_once, cache_init);
	__atomic_store_n(&lim_size, size, __ATOMIC_RELAXED);
	__atomic_store_n(&lim_min, min_ttl_ms, __ATOMIC_RELAXED);
	__atomic_store_n(&lim_max, max_ttl_ms, __ATOMIC_RELAXED);
	shcache_set_max(cache, per_shard(size));
}

/* dnscache_set_clock - tests only. */
void dnscache_set_clock(uint64_t (*f)(void))
{
	__atomic_store_n(&clock_fn, f, __ATOMIC_RELEASE);
}

/* take - dnscache_get's callback: a reference to the cached result. */
static enum shcache_act take(void *val, uint64_t *expires, int fresh, void *arg)
{
	const struct dns_result *r = *(const struct dns_result **)val;
	(void)expires;
	(void)fresh;
	dns_result_ref(r);
	*(const struct dns_result **)arg = r;
	return SHCACHE_KEEP;
}

/* dnscache_get - cached answer or NULL. */
const struct dns_result *dnscache_get(const char *key)
{
	pthread_once(&cache_once, cache_init);
	const struct dns_result *r = NULL;
	shcache_update(cache, key, now_ms(), 0, take, &r);
	stats_inc(r ? ST_dns_cache_hits : ST_dns_cache_misses);
	return r;
}

/* What dnscache_put stores. */
struct put_arg {
	const struct dns_result *res;
	uint64_t expires;
};

/* put - dnscache_put's callback: the entry holds the result; one it held
 * (a put of a live key) is given back, not overwritten (a leaked
 * reference). */
static enum shcache_act put(void *val, uint64_t *expires, int fresh, void *arg)
{
	const struct put_arg *a = arg;
	if (!fresh)
		dns_result_unref(*(const struct dns_result **)val);
	*(const struct dns_result **)val = a->res;
	*expires = a->expires;
	return SHCACHE_KEEP;
}

/* dnscache_put - insert or replace, evicting the least recently used. */
void dnscache_put(const char *key, const struct dns_result *res)
{
	pthread_once(&cache_once, cache_init);
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
	uint64_t now = now_ms();
	struct put_arg a = { res, now + (uint64_t)ttl };
	dns_result_ref(res);
	shcache_put(cache, key, now, put, &a);
}

/* dnscache_shard - see dnscache.h. */
int dnscache_shard(const char *key)
{
	pthread_once(&cache_once, cache_init);
	return (int)shcache_shard(cache, key);
}

/* dnscache_count - entries held now. */
size_t dnscache_count(void)
{
	pthread_once(&cache_once, cache_init);
	return shcache_count(cache);
}

/* dnscache_flush - drop everything. */
void dnscache_flush(void)
{
	pthread_once(&cache_once, cache_init);
	shcache_clear(cache);
}

static pthread_mutex_t servers_mu = PTHREAD_MUTEX_INITIALIZER;
static char *servers_now; /* the servers the cached answers came from */

/* dnscache_servers - see dnscache.h. */
void dnscache_servers(const char *servers)
{
	pthread_mutex_lock(&servers_mu);
	if (!servers_now || strcmp(servers_now, servers)) {
		if (servers_now)
			log_info("dns: dns_servers changed: the DNS cache is emptied");
		free(servers_now);
		servers_now = xstrdup(servers);
		dnscache_flush();
	}
	pthread_mutex_unlock(&servers_mu);
}
