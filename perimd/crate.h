/*
 * crate.h - new sessions per client address per minute, shared by all io
 * threads (sharded locks), for smtpd_client_connection_rate_limit.
 */
#ifndef PERIMD_CRATE_H
#define PERIMD_CRATE_H

#include <stdint.h>

/* crate_hit - count one new session of addr in the minute `minute`
 * (epoch seconds / 60); returns the count so far in that minute, or -1
 * when limit > 0 and it is already reached (the session is not counted). */
int crate_hit(const char *addr, int limit, uint64_t minute);

/* crate_set_fleet - the fleet (fleet.c) shares the counts: publish(addr,
 * minute, count) after every counted session (no lock held), remote(addr,
 * minute) the sessions other boxes counted in that minute, added before
 * the limit is applied. NULLs stop it. */
void crate_set_fleet(void (*publish)(const char *addr, uint64_t minute, int count),
		     int (*remote)(const char *addr, uint64_t minute));

#endif
