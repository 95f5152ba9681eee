/*
 * shcache.c - the sharded string-keyed cache (shcache.h).
 */
#include "shcache.h"
#include "hash.h"
#include "log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct shc_entry {
	struct shc_entry *chain;         /* bucket chain */
	struct shc_entry *older, *newer; /* the shard's age list */
	uint64_t expires;                /* caller's units; 0 = never */
	uint32_t hash;
	unsigned char data[] __attribute__((aligned(16))); /* value, then key */
};

struct shc_shard {
	pthread_mutex_t mu;
	size_t count;
	struct shc_entry *oldest, *newest;
	struct shc_entry **b;
} __attribute__((aligned(64)));

struct shcache {
	struct shcache_conf cf;
	size_t valspace; /* valsize rounded up to 16: the key follows */
	struct shc_shard *sh;
};

/* shcache_new - see shcache.h. */
struct shcache *shcache_new(const struct shcache_conf *cf)
{
	struct shcache *c = xcalloc(1, sizeof *c);
	c->cf = *cf;
	c->valspace = (cf->valsize + 15) & ~(size_t)15;
	if (posix_memalign((void **)&c->sh, 64, cf->shards * sizeof *c->sh))
		fatal("out of memory");
	for (unsigned i = 0; i < cf->shards; i++) {
		struct shc_shard *s = &c->sh[i];
		memset(s, 0, sizeof *s);
		pthread_mutex_init(&s->mu, NULL);
		s->b = xcalloc(cf->buckets, sizeof *s->b);
	}
	return c;
}

/* key_of - the key stored after the value. */
static const char *key_of(const struct shcache *c, const struct shc_entry *e)
{
	return (const char *)e->data + c->valspace;
}

/* bucket - the chain head of hash h in its shard. */
static struct shc_entry **bucket(const struct shcache *c, struct shc_shard *s, uint32_t h)
{
	return &s->b[(h / c->cf.shards) % c->cf.buckets];
}

/* age_unlink - take e out of its shard's age list. */
static void age_unlink(struct shc_shard *s, struct shc_entry *e)
{
	if (e->older)
		e->older->newer = e->newer;
	else
		s->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		s->newest = e->older;
}

/* age_push - make e the newest of its shard. */
static void age_push(struct shc_shard *s, struct shc_entry *e)
{
	e->newer = NULL;
	e->older = s->newest;
	if (s->newest)
		s->newest->newer = e;
	else
		s->oldest = e;
	s->newest = e;
}

/* entry_drop - unlink e (its chain slot is pp, or NULL to find it), free it. */
static void entry_drop(struct shcache *c, struct shc_shard *s, struct shc_entry **pp, struct shc_entry *e)
{
	if (!pp)
		for (pp = bucket(c, s, e->hash); *pp != e; pp = &(*pp)->chain)
			;
	*pp = e->chain;
	age_unlink(s, e);
	s->count--;
	if (c->cf.drop)
		c->cf.drop(e->data);
	free(e);
}

/* shard_make_room - before adding to a full shard: with evict, drop the
 * oldest until there is room (O(1) each, expired or not); without, sweep
 * the expired entries (O(shard)) and grow if none were. */
static void shard_make_room(struct shcache *c, struct shc_shard *s, uint64_t now)
{
	size_t max = __atomic_load_n(&c->cf.max, __ATOMIC_RELAXED);
	if (!max || s->count < max)
		return;
	if (c->cf.evict) {
		while (s->count >= max && s->oldest)
			entry_drop(c, s, NULL, s->oldest);
		return;
	}
	for (unsigned i = 0; i < c->cf.buckets; i++)
		for (struct shc_entry **pp = &s->b[i]; *pp;) {
			struct shc_entry *e = *pp;
			if (e->expires && e->expires <= now)
				entry_drop(c, s, pp, e);
			else
				pp = &e->chain;
		}
}

/* find - key's entry in s (chain slot in *ppp), expired or not, or NULL. */
static struct shc_entry *find(const struct shcache *c, struct shc_shard *s, const char *key, uint32_t h,
			      struct shc_entry ***ppp)
{
	struct shc_entry **pp = bucket(c, s, h);
	for (; *pp; pp = &(*pp)->chain)
		if ((*pp)->hash == h && !strcmp(key_of(c, *pp), key))
			break;
	*ppp = pp;
	return *pp;
}

/* entry_new - a zeroed entry for key, added to s as the newest. */
static struct shc_entry *entry_new(struct shcache *c, struct shc_shard *s, const char *key, uint32_t h,
				   uint64_t now)
{
	shard_make_room(c, s, now);
	size_t kl = strlen(key);
	struct shc_entry *e = xcalloc(1, sizeof *e + c->valspace + kl + 1);
	memcpy(e->data + c->valspace, key, kl + 1);
	e->hash = h;
	struct shc_entry **pp = bucket(c, s, h);
	e->chain = *pp;
	*pp = e;
	age_push(s, e);
	s->count++;
	return e;
}

/* update - shcache_update, and with renew the entry is made the newest
 * even when it was there (shcache_put). */
static int update(struct shcache *c, const char *key, uint64_t now, int create, int renew, shcache_fn *fn,
		  void *arg)
{
	uint32_t h = hash_str32(key);
	struct shc_shard *s = &c->sh[h % c->cf.shards];
	struct shc_entry **pp;
	int fresh = 0;
	pthread_mutex_lock(&s->mu);
	struct shc_entry *e = find(c, s, key, h, &pp);
	if (e && e->expires && e->expires <= now) {
		if (!create) {
			entry_drop(c, s, pp, e);
			e = NULL;
		} else {
			if (c->cf.drop)
				c->cf.drop(e->data);
			memset(e->data, 0, c->cf.valsize);
			e->expires = 0;
			fresh = 1;
		}
	}
	if (!e && create) {
		e = entry_new(c, s, key, h, now);
		fresh = 1;
	}
	if (!e) {
		pthread_mutex_unlock(&s->mu);
		return 0;
	}
	if ((c->cf.touch && !fresh) || renew) {
		age_unlink(s, e);
		age_push(s, e);
	}
	if (fn(e->data, &e->expires, fresh, arg) == SHCACHE_DROP)
		entry_drop(c, s, NULL, e);
	pthread_mutex_unlock(&s->mu);
	return 1;
}

/* shcache_update - see shcache.h. */
int shcache_update(struct shcache *c, const char *key, uint64_t now, int create, shcache_fn *fn, void *arg)
{
	return update(c, key, now, create, 0, fn, arg);
}

/* shcache_put - see shcache.h. */
void shcache_put(struct shcache *c, const char *key, uint64_t now, shcache_fn *fn, void *arg)
{
	update(c, key, now, 1, 1, fn, arg);
}

/* What shcache_get asks get_copy for. */
struct get_arg {
	void *out;
	size_t n;
};

/* get_copy - shcache_get's callback: copy the value out. */
static enum shcache_act get_copy(void *val, uint64_t *expires, int fresh, void *arg)
{
	(void)expires;
	(void)fresh;
	const struct get_arg *a = arg;
	memcpy(a->out, val, a->n);
	return SHCACHE_KEEP;
}

/* shcache_get - see shcache.h. */
int shcache_get(struct shcache *c, const char *key, uint64_t now, void *out)
{
	struct get_arg a = { out, c->cf.valsize };
	return shcache_update(c, key, now, 0, get_copy, &a);
}

/* shcache_del - see shcache.h. */
int shcache_del(struct shcache *c, const char *key)
{
	uint32_t h = hash_str32(key);
	struct shc_shard *s = &c->sh[h % c->cf.shards];
	struct shc_entry **pp;
	pthread_mutex_lock(&s->mu);
	struct shc_entry *e = find(c, s, key, h, &pp);
	if (e)
		entry_drop(c, s, pp, e);
	pthread_mutex_unlock(&s->mu);
	return e != NULL;
}

/* shcache_set_max - see shcache.h. */
void shcache_set_max(struct shcache *c, size_t max)
{
	__atomic_store_n(&c->cf.max, max, __ATOMIC_RELAXED);
}

/* shcache_shard - see shcache.h. */
unsigned shcache_shard(const struct shcache *c, const char *key)
{
	return hash_str32(key) % c->cf.shards;
}

/* shcache_count - see shcache.h. */
size_t shcache_count(struct shcache *c)
{
	size_t n = 0;
	for (unsigned i = 0; i < c->cf.shards; i++)
		n += __atomic_load_n(&c->sh[i].count, __ATOMIC_RELAXED);
	return n;
}

/* shcache_clear - see shcache.h. */
void shcache_clear(struct shcache *c)
{
	for (unsigned i = 0; i < c->cf.shards; i++) {
		struct shc_shard *s = &c->sh[i];
		pthread_mutex_lock(&s->mu);
		while (s->oldest)
			entry_drop(c, s, NULL, s->oldest);
		pthread_mutex_unlock(&s->mu);
	}
}

/* shcache_free - see shcache.h. */
void shcache_free(struct shcache *c)
{
	if (!c)
		return;
	shcache_clear(c);
	for (unsigned i = 0; i < c->cf.shards; i++) {
		pthread_mutex_destroy(&c->sh[i].mu);
		free(c->sh[i].b);
	}
	free(c->sh);
	free(c);
}
