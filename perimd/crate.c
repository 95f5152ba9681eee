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
#include "hash.h"
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

/* cr_init - mutexes. */
static void cr_init(void)
{
	for (int i = 0; i < CR_SHARDS; i++)
		pthread_mutex_init(&cr_shards[i].mu, NULL);
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
	unsigned h = hash_str32(addr);
	struct cr_shard *sh = &cr_shards[h % CR_SHARDS];
	struct cr_entry **pp = &sh->b[(h / CR_SHARDS) % CR_BUCKETS];
	int n;
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
	if (limit > 0 && e->count >= limit)
		n = -1;
	else
		n = ++e->count;
	pthread_mutex_unlock(&sh->mu);
	return n;
}
