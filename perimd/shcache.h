/*
 * shcache.h - a sharded, string-keyed table of fixed-size values, shared
 * by all threads: the one implementation behind the per-client tables
 * (climit: sessions per client, crate: sessions per client per minute).
 * Plumbing floor: it uses log (x*alloc) and hash.
 *
 * Invariants: a key hashes (FNV-1a, hash.h) to one shard, each with its
 * own mutex, its bucket chains and an age list (oldest to newest: order of
 * insertion, or of use with touch). An entry whose expiry (in the caller's
 * units of now; 0 = never) is <= now is absent: a lookup does not see it
 * and an update starts it again, zeroed. A shard that holds max entries
 * makes room before adding: with evict it drops its oldest (a bounded
 * cache, O(1)); without, it sweeps its expired entries and grows when none
 * were (a table whose entries all expire, like crate's minutes). Values are
 * changed only inside the update callback, under the shard's lock; the
 * callback must not call into the same cache.
 */
#ifndef PERIMD_SHCACHE_H
#define PERIMD_SHCACHE_H

#include <stddef.h>
#include <stdint.h>

struct shcache;

struct shcache_conf {
	unsigned shards;  /* > 0 */
	unsigned buckets; /* chains per shard, > 0 */
	size_t valsize;   /* bytes of each value (zeroed when created) */
	size_t max;       /* entries per shard before a sweep; 0 = no bound */
	int evict;        /* full: 1 drop the oldest, 0 sweep the expired, or grow */
	int touch;        /* 1: an update makes the entry the newest (LRU) */
	/* drop: called with the value of each entry as it goes (dropped,
	 * evicted, expired, cleared), under the shard's lock; NULL = none */
	void (*drop)(void *val);
};

/* What an update callback leaves behind. */
enum shcache_act { SHCACHE_KEEP, SHCACHE_DROP };

/* An update callback: val is the entry's value (all zero when fresh);
 * *expires its expiry, to set or keep. Returns what to do with it. */
typedef enum shcache_act shcache_fn(void *val, uint64_t *expires, int fresh, void *arg);

/* shcache_new - an empty cache shaped by cf (copied). */
struct shcache *shcache_new(const struct shcache_conf *cf);
/* shcache_free - the cache and all its entries. */
void shcache_free(struct shcache *c);

/* shcache_update - find key's live entry (or, with create, add a zeroed
 * one) and call fn on it under the shard's lock. Returns 1 when fn ran,
 * 0 when the key was absent and create was 0. */
int shcache_update(struct shcache *c, const char *key, uint64_t now, int create, shcache_fn *fn, void *arg);
/* shcache_put - a new value for key: as shcache_del then shcache_update
 * with create (the entry becomes the newest, fn sets its expiry), without
 * freeing and allocating: when key was live, fn sees fresh = 0 and the old
 * value, and must release what the drop callback would. */
void shcache_put(struct shcache *c, const char *key, uint64_t now, shcache_fn *fn, void *arg);
/* shcache_get - copy key's live value into out (valsize bytes): 1, or 0
 * when absent. With touch, it becomes the newest. */
int shcache_get(struct shcache *c, const char *key, uint64_t now, void *out);
/* shcache_del - drop key's entry; 1 if there was one. */
int shcache_del(struct shcache *c, const char *key);
/* shcache_set_max - a new bound per shard (0 = none), applied as entries
 * are added. */
void shcache_set_max(struct shcache *c, size_t max);
/* shcache_shard - the shard key falls in (for tests). */
unsigned shcache_shard(const struct shcache *c, const char *key);
/* shcache_count - entries held now, expired ones included. */
size_t shcache_count(struct shcache *c);
/* shcache_clear - drop every entry. */
void shcache_clear(struct shcache *c);

#endif
