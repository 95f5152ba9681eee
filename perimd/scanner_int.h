/*
 * scanner_int.h - what the scanner's dispatcher (scanner.c) and its
 * generations (scanner_gen.c) share: the generation's descriptors and the
 * messages on the generation socket.
 *
 * A generation process holds one compiled engine and forks the workers
 * that scan with it. On its socket (scanner_gen_fd() in the generation,
 * SEQPACKET) it sends the dispatcher "worker I PID" with the dispatcher's
 * end of worker I's socket attached (SCM_RIGHTS; again for a replacement),
 * then "ready SIGS" once every worker runs, or "failed TEXT" and exits.
 * The dispatcher sends "retire": no more replacements; the generation
 * exits when its last worker has.
 *
 * The dispatcher reads the requests from the io loops' sockets and gives
 * each to an idle worker of the current generation: a struct scanner_job
 * with the message's descriptor attached, on the worker's socket. The
 * worker answers on the loop socket itself (inherited; SEQPACKET, so
 * answers from several processes never mix) and marks its slot idle. The
 * slots (struct scanner_slot, MAP_SHARED, made by the dispatcher before
 * the fork) say which request each worker has: the dispatcher answers it
 * SCANNER_ERROR when the worker dies with its slot busy, and kills a
 * worker whose slot has been busy past the hang bound. A worker sends
 * the dispatcher "d" after an answer only while requests wait for a worker
 * (scanner_shared->backlog), so an idle dispatcher is woken once per
 * request, not twice. The dispatcher sends "retire" on a worker's socket:
 * the worker exits once it has answered what it was given before.
 */
#ifndef PERIMD_SCANNER_INT_H
#define PERIMD_SCANNER_INT_H

#include "scanner.h"

#include <stddef.h>
#include <sys/types.h>

/* A request given to a worker. */
struct scanner_job {
	uint64_t id;
	int32_t loop; /* index of the request's socket */
	int32_t pad;
};

/* A worker's request, written by the dispatcher before it gives one; busy
 * cleared by the worker after its answer is sent (a worker killed between
 * the two gets a second answer, which perimd ignores: no request has that
 * id any more). */
struct scanner_slot {
	uint64_t id;
	int32_t loop;
	int32_t busy;   /* atomic */
	uint64_t since; /* ms (clock_ms) when it was given */
};

/* Shared by the dispatcher and every worker (MAP_SHARED). */
struct scanner_shared {
	int backlog; /* atomic: requests wait for a worker */
};

/* The loop sockets' count; in a generation and in a worker the socket to
 * the dispatcher is at scanner_gen_fd() (SCANNER_CTL_FD stays in a
 * generation, for "log" lines), every other descriptor above is closed. */
extern int scanner_nloops;
#define scanner_gen_fd() (SCANNER_LOOP_FD + scanner_nloops)

/* The shared slots of the generation being forked (one per worker). */
extern struct scanner_slot *scanner_slots;
extern struct scanner_shared *scanner_shared;

/* The limits the next generation builds its engine with. */
extern struct scanner_limits scanner_limits;

/* scanner_gen_main - a generation: build an engine from db_dir (temporary
 * files in tmp_dir), fork nworkers workers, replace the ones that die
 * until retired. Runs in a process just forked by the single-threaded
 * dispatcher with its socket at SCANNER_GEN_FD; never returns. */
void scanner_gen_main(const char *db_dir, const char *tmp_dir, int nworkers) __attribute__((noreturn));

/* scanner_fork - fork a generation or a worker: in the child (0), which
 * dies with this process, sock is at scanner_gen_fd() and every
 * descriptor above it is closed; -1 with errno; the child's pid. */
pid_t scanner_fork(int sock);

/* scanner_tmp_clean - remove the workers' temporary directories (named
 * perimd-scan.PID) that a scanner killed as a whole left in tmp_dir. */
void scanner_tmp_clean(const char *tmp_dir);

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
