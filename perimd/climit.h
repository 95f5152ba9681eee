/*
 * climit.h - per-client-address session counts, shared by all io threads
 * (sharded locks), for smtpd_client_connection_count_limit.
 */
#ifndef PERIMD_CLIMIT_H
#define PERIMD_CLIMIT_H

/* climit_enter - count one more session for addr; returns the new count.
 * If limit > 0 and the count would exceed it, nothing is counted and -1 is
 * returned. */
int climit_enter(const char *addr, int limit);
/* climit_leave - one session of addr ended. */
void climit_leave(const char *addr);

/* climit_set_fleet - the fleet (fleet.c) shares the counts: publish(addr,
 * count) after every change of a count here (no lock held), remote(addr)
 * the sessions other boxes hold, added before the limit is applied.
 * NULLs stop it. */
void climit_set_fleet(void (*publish)(const char *addr, int count), int (*remote)(const char *addr));

#endif
