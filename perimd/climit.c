/*
 * climit.c - concurrent sessions per client address.
 *
 * A hash table split into shards, each with its own mutex and chains of
 * entries; an entry exists only while its count is positive, so the table
 * holds at most one entry per open session.
 */
#include "climit.h"
#include "log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CL_SHARDS 64
#define CL_BUCKETS 256

struct cl_entry {
	struct cl_entry *next;
	int count;
	char addr[];
};

static struct cl_shard {
	pthread_mutex_t mu;
	struct cl_entry *b[CL_BUCKETS];
} cl_shards[CL_SHARDS];
static pthread_once_t cl_once = PTHREAD_ONCE_INIT;
static void (*cl_publish)(const char *addr, int count);
static int (*cl_remote)(const char *addr);

/* climit_set_fleet - see climit.h. */
void climit_set_fleet(void (*publish)(const char *addr, int count), int (*remote)(const char *addr))
{
	__atomic_store_n(&cl_publish, publish, __ATOMIC_RELEASE);
	__atomic_store_n(&cl_remote, remote, __ATOMIC_RELEASE);
}

/* cl_changed - a count changed: tell the fleet. */
static void cl_changed(const char *addr, int count)
{
	void (*fn)(const char *, int) = __atomic_load_n(&cl_publish, __ATOMIC_ACQUIRE);
	if (fn)
		fn(addr, count);
}

/* cl_init - mutexes. */
static void cl_init(void)
{
	for (int i = 0; i < CL_SHARDS; i++)
		pthread_mutex_init(&cl_shards[i].mu, NULL);
}

/* cl_hash - FNV-1a. */
static unsigned cl_hash(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* climit_enter - count a session, or refuse past the limit. */
int climit_enter(const char *addr, int limit)
{
	pthread_once(&cl_once, cl_init);
	unsigned h = cl_hash(addr);
	struct cl_shard *sh = &cl_shards[h % CL_SHARDS];
	struct cl_entry **pp = &sh->b[(h / CL_SHARDS) % CL_BUCKETS];
	int n;
	int (*rfn)(const char *) = __atomic_load_n(&cl_remote, __ATOMIC_ACQUIRE);
	int others = rfn ? rfn(addr) : 0;
	pthread_mutex_lock(&sh->mu);
	struct cl_entry *e = *pp;
	while (e && strcmp(e->addr, addr))
		e = e->next;
	if (!e) {
		size_t l = strlen(addr);
		e = xmalloc(sizeof *e + l + 1);
		memcpy(e->addr, addr, l + 1);
		e->count = 0;
		e->next = *pp;
		*pp = e;
	}
	if (limit > 0 && e->count + others >= limit) {
		n = -1;
		if (e->count == 0) {
			*pp = e->next;
			free(e);
		}
	} else {
		n = ++e->count;
	}
	pthread_mutex_unlock(&sh->mu);
	if (n > 0)
		cl_changed(addr, n);
	return n;
}

/* climit_leave - uncount a session. */
void climit_leave(const char *addr)
{
	pthread_once(&cl_once, cl_init);
	unsigned h = cl_hash(addr);
	struct cl_shard *sh = &cl_shards[h % CL_SHARDS];
	struct cl_entry **pp = &sh->b[(h / CL_SHARDS) % CL_BUCKETS];
	pthread_mutex_lock(&sh->mu);
	while (*pp && strcmp((*pp)->addr, addr))
		pp = &(*pp)->next;
	struct cl_entry *e = *pp;
	int n = -1;
	if (e && (n = --e->count) <= 0) {
		*pp = e->next;
		free(e);
		n = 0;
	}
	pthread_mutex_unlock(&sh->mu);
	if (n >= 0)
		cl_changed(addr, n);
}
