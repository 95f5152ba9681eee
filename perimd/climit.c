/*
 * climit.c - concurrent sessions per client address.
 *
 * A sharded cache (shcache.h) of one count per address; an entry exists
 * only while its count is positive, so the table holds at most one entry
 * per open session (no bound, no expiry).
 */
#include "climit.h"
#include "shcache.h"

#include <pthread.h>
#include <stddef.h>

static struct shcache *cl_cache;
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

/* cl_init - the table: 64 shards of 256 chains. */
static void cl_init(void)
{
	const struct shcache_conf cf = { .shards = 64, .buckets = 256, .valsize = sizeof(int) };
	cl_cache = shcache_new(&cf);
}

/* What climit_enter asks cl_enter. */
struct cl_arg {
	int limit;
	int others; /* the client's sessions on the other boxes (fleet) */
	int n;
};

/* cl_enter - count one more unless at the limit (a new entry at the limit
 * is dropped again). */
static enum shcache_act cl_enter(void *val, uint64_t *expires, int fresh, void *arg)
{
	int *count = val;
	struct cl_arg *a = arg;
	(void)expires;
	(void)fresh;
	if (a->limit > 0 && *count + a->others >= a->limit) {
		a->n = -1;
		return *count == 0 ? SHCACHE_DROP : SHCACHE_KEEP;
	}
	a->n = ++*count;
	return SHCACHE_KEEP;
}

/* climit_enter - count a session, or refuse past the limit. */
int climit_enter(const char *addr, int limit)
{
	pthread_once(&cl_once, cl_init);
	int (*rfn)(const char *) = __atomic_load_n(&cl_remote, __ATOMIC_ACQUIRE);
	struct cl_arg a = { limit, rfn ? rfn(addr) : 0, 0 };
	shcache_update(cl_cache, addr, 0, 1, cl_enter, &a);
	if (a.n > 0)
		cl_changed(addr, a.n);
	return a.n;
}

/* cl_leave - one less; the entry goes with its last session. */
static enum shcache_act cl_leave(void *val, uint64_t *expires, int fresh, void *arg)
{
	int *count = val;
	(void)expires;
	(void)fresh;
	*(int *)arg = --*count > 0 ? *count : 0;
	return *count <= 0 ? SHCACHE_DROP : SHCACHE_KEEP;
}

/* climit_leave - uncount a session. */
void climit_leave(const char *addr)
{
	pthread_once(&cl_once, cl_init);
	int n = -1;
	shcache_update(cl_cache, addr, 0, 0, cl_leave, &n);
	if (n >= 0)
		cl_changed(addr, n);
}
