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

#endif
