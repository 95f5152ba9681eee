/*
 * verify.c - the recipient verdict cache: recipient address (lower-cased)
 * to the reply a backend gave for it, until an expiry time.
 *
 * Invariants: the table is split into VERIFY_SHARDS shards, each with its
 * own mutex, hash chains and an insertion-ordered list; a shard never holds
 * more than its share of max_entries (the oldest entry is evicted first),
 * so memory is bounded whatever recipients the internet sends. Expired
 * entries are never returned and are dropped when met. Times come from
 * CLOCK_MONOTONIC, not from any loop, because every thread shares the
 * table. Nothing here blocks except on a shard mutex held for a few
 * pointer operations.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "verify.h"

#define VERIFY_SHARDS 64
#define VERIFY_DEFAULT_MAX 100000
#define VERIFY_KEY_MAX 600

struct ventry {
	struct ventry *chain;          /* hash bucket chain */
	struct ventry *older, *newer;  /* insertion order within the shard */
	uint64_t hash;
	uint64_t expires;              /* monotonic ms */
	int code;
	char *reply;
	char key[];                    /* lower-cased address */
};

struct vshard {
	pthread_mutex_t mu;
	struct ventry **buckets;
	size_t nbuckets;               /* power of two */
	size_t count, cap;
	struct ventry *oldest, *newest;
};

static struct vshard shards[VERIFY_SHARDS];
static int verify_ready;
static pthread_once_t verify_once = PTHREAD_ONCE_INIT;

/* verify_now - monotonic milliseconds. */
static uint64_t verify_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* verify_key - lower-case rcpt into key (truncated); returns its hash. */
static uint64_t verify_key(const char *rcpt, char *key, size_t keylen)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	size_t i;

	for (i = 0; rcpt[i] != '\0' && i + 1 < keylen; i++) {
		key[i] = (char)tolower((unsigned char)rcpt[i]);
		h ^= (unsigned char)key[i];
		h *= 1099511628211ULL;
	}
	key[i] = '\0';
	return h;
}

/* ventry_unlink - remove e from its shard's chain and order list, free it. */
static void ventry_unlink(struct vshard *s, struct ventry *e)
{
	struct ventry **pp = &s->buckets[(e->hash >> 6) & (s->nbuckets - 1)];

	while (*pp != e)
		pp = &(*pp)->chain;
	*pp = e->chain;
	if (e->older)
		e->older->newer = e->newer;
	else
		s->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		s->newest = e->older;
	s->count--;
	free(e->reply);
	free(e);
}

/* verify_clear - drop every entry of every shard (init / re-init only). */
static void verify_clear(void)
{
	for (int i = 0; i < VERIFY_SHARDS; i++) {
		struct vshard *s = &shards[i];

		while (s->oldest)
			ventry_unlink(s, s->oldest);
	}
}

/* verify_setup - size the shards for max_entries in all. */
static void verify_setup(size_t max_entries)
{
	size_t cap = max_entries / VERIFY_SHARDS;

	if (cap < 1)
		cap = 1;
	for (int i = 0; i < VERIFY_SHARDS; i++) {
		struct vshard *s = &shards[i];
		size_t nb = 16;

		if (!verify_ready)
			pthread_mutex_init(&s->mu, NULL);
		while (nb < cap && nb < ((size_t)1 << 20))
			nb <<= 1;
		free(s->buckets);
		s->buckets = xcalloc(nb, sizeof(*s->buckets));
		s->nbuckets = nb;
		s->cap = cap;
	}
	verify_ready = 1;
}

/* verify_default_init - used when nobody called verify_init() first. */
static void verify_default_init(void)
{
	if (!verify_ready)
		verify_setup(VERIFY_DEFAULT_MAX);
}

/* verify_init - (re)create an empty cache of at most max_entries; MUST NOT
 * run concurrently with other verify_* calls (start-up, tests). */
void verify_init(size_t max_entries)
{
	pthread_once(&verify_once, verify_default_init);
	verify_clear();
	verify_setup(max_entries);
}

/* verify_find - the live entry for key in s, dropping an expired one. */
static struct ventry *verify_find(struct vshard *s, const char *key,
				  uint64_t h, uint64_t now)
{
	struct ventry *e = s->buckets[(h >> 6) & (s->nbuckets - 1)];

	for (; e; e = e->chain) {
		if (e->hash == h && strcmp(e->key, key) == 0)
			break;
	}
	if (e && e->expires <= now) {
		ventry_unlink(s, e);
		e = NULL;
	}
	return e;
}

/* verify_put - remember `reply` ("550 5.1.1 ...") for rcpt until now+ttl. */
void verify_put(const char *rcpt, int code, const char *reply, uint64_t ttl_ms)
{
	char key[VERIFY_KEY_MAX];
	uint64_t h, now = verify_now();
	struct vshard *s;
	struct ventry *e;
	size_t klen;

	pthread_once(&verify_once, verify_default_init);
	if (ttl_ms == 0)
		return;
	h = verify_key(rcpt, key, sizeof(key));
	klen = strlen(key);
	s = &shards[h % VERIFY_SHARDS];
	pthread_mutex_lock(&s->mu);
	e = verify_find(s, key, h, now);
	if (e)
		ventry_unlink(s, e);
	/* Bounded: evict the oldest entries (expired or not) to make room. */
	while (s->count >= s->cap && s->oldest)
		ventry_unlink(s, s->oldest);
	e = xmalloc(sizeof(*e) + klen + 1);
	memcpy(e->key, key, klen + 1);
	e->hash = h;
	e->expires = now + ttl_ms;
	e->code = code;
	e->reply = xstrdup(reply ? reply : "");
	e->chain = s->buckets[(h >> 6) & (s->nbuckets - 1)];
	s->buckets[(h >> 6) & (s->nbuckets - 1)] = e;
	e->newer = NULL;
	e->older = s->newest;
	if (s->newest)
		s->newest->newer = e;
	else
		s->oldest = e;
	s->newest = e;
	s->count++;
	pthread_mutex_unlock(&s->mu);
}

/* verify_get - 1 and the cached reply if a live entry exists, else 0. */
int verify_get(const char *rcpt, int *code, char *reply, size_t replylen)
{
	char key[VERIFY_KEY_MAX];
	uint64_t h, now = verify_now();
	struct vshard *s;
	struct ventry *e;
	int found = 0;

	pthread_once(&verify_once, verify_default_init);
	h = verify_key(rcpt, key, sizeof(key));
	s = &shards[h % VERIFY_SHARDS];
	pthread_mutex_lock(&s->mu);
	e = verify_find(s, key, h, now);
	if (e) {
		found = 1;
		if (code)
			*code = e->code;
		if (reply && replylen > 0) {
			size_t n = strlen(e->reply);

			if (n >= replylen)
				n = replylen - 1;
			memcpy(reply, e->reply, n);
			reply[n] = '\0';
		}
	}
	pthread_mutex_unlock(&s->mu);
	return found;
}
