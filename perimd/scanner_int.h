/*
 * scanner_int.h - what the scanner's dispatcher (scanner.c) and its
 * generations (scanner_gen.c) share: the generation's descriptors and the
 * messages on the generation socket.
 *
 * A generation process holds one compiled engine and forks the workers
 * that scan with it. On its socket (SCANNER_GEN_FD in the generation,
 * SEQPACKET) it sends the dispatcher "worker I PID" with the dispatcher's
 * end of worker I's socket attached (SCM_RIGHTS; again for a replacement),
 * then "ready SIGS" once every worker runs, or "failed TEXT" and exits.
 * The dispatcher sends "retire": no more replacements; the generation
 * exits when its last worker has. On a worker's socket the dispatcher
 * sends a struct scanner_req with the message's descriptor attached and
 * the worker answers a struct scanner_ans; one request at a time. A
 * worker exits when its socket is closed.
 */
#ifndef PERIMD_SCANNER_INT_H
#define PERIMD_SCANNER_INT_H

#include "scanner.h"

#include <stddef.h>

/* In a generation: the socket to the dispatcher (SCANNER_CTL_FD stays, for
 * "log" lines). In a worker: its socket to the dispatcher. */
#define SCANNER_GEN_FD SCANNER_LOOP_FD
#define SCANNER_WORKER_FD SCANNER_LOOP_FD

/* The limits the next generation builds its engine with. */
extern struct scanner_limits scanner_limits;

/* scanner_gen_main - a generation: build an engine from db_dir (temporary
 * files in tmp_dir), fork nworkers workers, replace the ones that die
 * until retired. Runs in a process just forked by the single-threaded
 * dispatcher with its socket at SCANNER_GEN_FD; never returns. */
void scanner_gen_main(const char *db_dir, const char *tmp_dir, int nworkers) __attribute__((noreturn));

/* scanner_fsize_limit - the soft RLIMIT_FSIZE from scanner_limits. */
void scanner_fsize_limit(void);

/* scanner_ctl_send - one control message to the supervisor. */
void scanner_ctl_send(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* scanner_send_fd - one SEQPACKET message with a descriptor attached
 * (fd < 0: none); 0 or -1. */
int scanner_send_fd(int sock, const void *buf, size_t len, int fd);

/* scanner_recv_fd - one message and the descriptor attached, if any
 * (*fd = -1 when none), without waiting: the length, 0 at the end, -1
 * with errno (EAGAIN: nothing yet). */
long scanner_recv_fd(int sock, void *buf, size_t len, int *fd, int wait);

#endif
