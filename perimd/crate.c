/*
 * crate.c - connection rate per client address: a count per fixed
 * one-minute window (as Postfix anvil's smtpd_client_connection_rate_limit,
 * with a window of a minute).
 *
 * Invariants: a sharded cache (shcache.h) keyed by address, whose clock is
 * the minute: an entry counts for one minute and expires at the next, when
 * it starts again from zero. A shard past CR_SWEEP entries drops every
 * entry of an older minute before adding, so memory stays bounded by the
 * clients of the last minute (the cache never evicts a live count).
 */
#include "crate.h"
#include "shcache.h"

#include <pthread.h>
#include <stddef.h>

#define CR_SWEEP 4096

/* One address's count and the minute it counts for. */
struct cr_count {
	uint64_t minute;
	int count;
};

static struct shcache *cr_cache;
static pthread_once_t cr_once = PTHREAD_ONCE_INIT;
static void (*cr_publish)(const char *addr, uint64_t minute, int count);
static int (*cr_remote)(const char *addr, uint64_t minute);

/* crate_set_fleet - see crate.h. */
void crate_set_fleet(void (*publish)(const char *addr, uint64_t minute, int count),
		     int (*remote)(const char *addr, uint64_t minute))
{
	__atomic_store_n(&cr_publish, publish, __ATOMIC_RELEASE);
	__atomic_store_n(&cr_remote, remote, __ATOMIC_RELEASE);
}

/* cr_init - the table: 64 shards of 256 chains, swept past CR_SWEEP. */
static void cr_init(void)
{
	const struct shcache_conf cf = {
		.shards = 64, .buckets = 256, .valsize = sizeof(struct cr_count), .max = CR_SWEEP
	};
	cr_cache = shcache_new(&cf);
}

/* What crate_hit asks cr_hit. */
struct cr_arg {
	int limit;
	uint64_t minute;
	int others; /* the other boxes' count this minute (fleet) */
	int n;
};

/* cr_hit - count one more in this minute unless at the limit (another
 * minute, even an earlier one after a clock step, starts from zero). */
static enum shcache_act cr_hit(void *val, uint64_t *expires, int fresh, void *arg)
{
	struct cr_count *c = val;
	struct cr_arg *a = arg;
	(void)fresh;
	if (c->minute != a->minute) {
		c->minute = a->minute;
		c->count = 0;
	}
	*expires = a->minute + 1;
	if (a->limit > 0 && c->count + a->others >= a->limit)
		a->n = -1;
	else
		a->n = ++c->count;
	return SHCACHE_KEEP;
}

/* crate_hit - see crate.h. */
int crate_hit(const char *addr, int limit, uint64_t minute)
{
	pthread_once(&cr_once, cr_init);
	int (*rfn)(const char *, uint64_t) = __atomic_load_n(&cr_remote, __ATOMIC_ACQUIRE);
	struct cr_arg a = { limit, minute, rfn ? rfn(addr, minute) : 0, 0 };
	shcache_update(cr_cache, addr, minute, 1, cr_hit, &a);
	void (*pfn)(const char *, uint64_t, int) = __atomic_load_n(&cr_publish, __ATOMIC_ACQUIRE);
	if (a.n > 0 && pfn)
		pfn(addr, minute, a.n);
	return a.n;
}
