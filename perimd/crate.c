/*
 * crate.c - connection rate per client address: a count per fixed
 * one-minute window (as Postfix anvil's smtpd_client_connection_rate_limit,
 * with a window of a minute).
 *
 * Invariants: a hash table split into shards, each with its own mutex; an
 * entry holds the minute it counts for and is reset when a later minute
 * comes. A shard past CR_SWEEP entries drops every entry of an older
 * minute, so memory stays bounded by the clients of the last minute.
 */
#include "crate.h"
#include "log.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define CR_SHARDS 64
#define CR_BUCKETS 256
#define CR_SWEEP 4096

struct cr_entry {
	struct cr_entry *next;
	uint64_t minute;
	int count;
	char addr[];
};

static struct cr_shard {
	pthread_mutex_t mu;
	int n;
	struct cr_entry *b[CR_BUCKETS];
} cr_shards[CR_SHARDS];
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

/* cr_init - mutexes. */
static void cr_init(void)
{
	for (int i = 0; i < CR_SHARDS; i++)
		pthread_mutex_init(&cr_shards[i].mu, NULL);
}

/* cr_hash - FNV-1a. */
static unsigned cr_hash(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* cr_sweep - drop the entries of minutes before `minute`. */
static void cr_sweep(struct cr_shard *sh, uint64_t minute)
{
	for (int i = 0; i < CR_BUCKETS; i++)
		for (struct cr_entry **pp = &sh->b[i]; *pp;) {
			struct cr_entry *e = *pp;
			if (e->minute < minute) {
				*pp = e->next;
				free(e);
				sh->n--;
			} else {
				pp = &e->next;
			}
		}
}

/* crate_hit - see crate.h. */
int crate_hit(const char *addr, int limit, uint64_t minute)
{
	pthread_once(&cr_once, cr_init);
	unsigned h = cr_hash(addr);
	struct cr_shard *sh = &cr_shards[h % CR_SHARDS];
	struct cr_entry **pp = &sh->b[(h / CR_SHARDS) % CR_BUCKETS];
	int n;
	int (*rfn)(const char *, uint64_t) = __atomic_load_n(&cr_remote, __ATOMIC_ACQUIRE);
	int others = rfn ? rfn(addr, minute) : 0;
	pthread_mutex_lock(&sh->mu);
	struct cr_entry *e = *pp;
	while (e && strcmp(e->addr, addr))
		e = e->next;
	if (!e) {
		if (sh->n >= CR_SWEEP)
			cr_sweep(sh, minute);
		size_t l = strlen(addr);
		e = xmalloc(sizeof *e + l + 1);
		memcpy(e->addr, addr, l + 1);
		e->minute = minute;
		e->count = 0;
		e->next = *pp;
		*pp = e;
		sh->n++;
	}
	if (e->minute != minute) {
		e->minute = minute;
		e->count = 0;
	}
	if (limit > 0 && e->count + others >= limit)
		n = -1;
	else
		n = ++e->count;
	pthread_mutex_unlock(&sh->mu);
	void (*pfn)(const char *, uint64_t, int) = __atomic_load_n(&cr_publish, __ATOMIC_ACQUIRE);
	if (n > 0 && pfn)
		pfn(addr, minute, n);
	return n;
}
