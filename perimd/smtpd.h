/*
 * smtpd.h - the SMTP server sessions of one event loop.
 *
 * Each io thread calls smtpd_loop_start() with its own listening sockets;
 * the sessions it accepts live on that loop until they end. All functions
 * MUST be called on the loop's thread.
 */
#ifndef PERIMD_SMTPD_H
#define PERIMD_SMTPD_H

#include <stdint.h>

struct ev_loop;

/* smtpd_loop_start - accept on fds (listening, non-blocking) from now on. */
void smtpd_loop_start(struct ev_loop *loop, const int *fds, int nfds);

/* smtpd_loop_drain - stop accepting; sessions get timeout_ms to finish,
 * then 421 4.3.2; when none is left, ev_stop(loop). */
void smtpd_loop_drain(struct ev_loop *loop, uint64_t timeout_ms);

/* smtpd_sessions - sessions open in the whole process. */
int smtpd_sessions(void);
/* smtpd_sessions_peak - most sessions open at once since the last call. */
int smtpd_sessions_peak(void);

#endif
