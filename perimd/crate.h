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

#endif
