/*
 * ev.h - per-thread event loop: fd readiness (epoll), timers, deferred calls,
 * and cross-thread posts.
 *
 * One struct ev_loop per io thread. Every function here except ev_post()
 * MUST be called from the thread that runs the loop. Watchers are owned and
 * embedded by the caller (no allocation in the loop for them); a watcher MUST
 * be stopped before its memory is freed. Callbacks never run synchronously
 * inside the call that registered them.
 */
#ifndef PERIMD_EV_H
#define PERIMD_EV_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;

#define EV_READ 1u
#define EV_WRITE 2u

typedef void ev_io_cb(void *arg, unsigned events);
typedef void ev_cb(void *arg);

/* An fd watcher. Fields are private; embed it, zero it, use ev_io_*(). */
struct ev_io {
	int fd;
	unsigned want; /* EV_READ|EV_WRITE currently registered */
	int added;     /* registered in the epoll set */
	ev_io_cb *cb;
	void *arg;
};

/* A one-shot timer. Fields are private. */
struct ev_timer {
	uint64_t when; /* ms, monotonic */
	size_t slot;   /* index in the heap + 1; 0 = not armed */
	ev_cb *cb;
	void *arg;
};

/* A deferred call: runs once, on the next loop iteration. Fields private. */
struct ev_defer {
	struct ev_defer *next;
	int queued;
	ev_cb *cb;
	void *arg;
};

/* ev_loop_new - create a loop; fatal() on failure. */
struct ev_loop *ev_loop_new(int index);
void ev_loop_free(struct ev_loop *loop);
/* ev_loop_index - which io thread this loop belongs to (0..io_threads-1). */
int ev_loop_index(const struct ev_loop *loop);

/* ev_run - run until ev_stop(). */
void ev_run(struct ev_loop *loop);
void ev_stop(struct ev_loop *loop);

/* ev_now - cached monotonic milliseconds, updated once per iteration. */
uint64_t ev_now(const struct ev_loop *loop);
/* ev_wallclock - CLOCK_REALTIME seconds. */
uint64_t ev_wallclock(void);

/* ev_io_init - bind a watcher to fd and callback (not yet watching). */
void ev_io_init(struct ev_io *w, int fd, ev_io_cb *cb, void *arg);
/* ev_io_set - watch for exactly `events` (0 = stop watching, keep fd). */
void ev_io_set(struct ev_loop *loop, struct ev_io *w, unsigned events);
/* ev_io_stop - remove from the loop; MUST be called before close(fd). */
void ev_io_stop(struct ev_loop *loop, struct ev_io *w);

/* ev_timer_start - (re)arm to fire after ms milliseconds. */
void ev_timer_start(struct ev_loop *loop, struct ev_timer *t, uint64_t ms, ev_cb *cb, void *arg);
void ev_timer_stop(struct ev_loop *loop, struct ev_timer *t);
static inline int ev_timer_active(const struct ev_timer *t)
{
	return t->slot != 0;
}

/* ev_defer - queue cb(arg) for the next iteration; no-op if already queued. */
void ev_defer(struct ev_loop *loop, struct ev_defer *d, ev_cb *cb, void *arg);
void ev_defer_cancel(struct ev_loop *loop, struct ev_defer *d);
/* ev_defer_queued - d is queued and has not run yet. */
int ev_defer_queued(const struct ev_defer *d);

/* Per-loop state of other modules, without globals: each module owns one
 * slot and stores its per-loop pointer there. */
enum ev_slot {
	EV_SLOT_RELAY,
	EV_SLOT_SMTPD,
	EV_SLOT_DNS,
	EV_SLOT_STATS,
	EV_SLOT_TLS,
	EV_SLOT_PSVC,
	EV_SLOT_COUNT
};
void **ev_slot(struct ev_loop *loop, enum ev_slot s);

/* ev_post - thread-safe: run cb(arg) on loop's thread soon. Allocates. */
void ev_post(struct ev_loop *loop, ev_cb *cb, void *arg);

#endif
