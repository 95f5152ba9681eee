/*
 * ev.c - the per-thread event loop: epoll for fds, a binary heap of timers,
 * a FIFO of deferred calls, and an eventfd-woken queue for calls posted
 * from other threads.
 *
 * Invariants: only the owning thread touches a loop, except ev_post(),
 * which takes the post mutex. One iteration: run deferred calls, expired
 * timers, then wait for fd events (no wait while deferred calls are queued).
 * A watcher's callback may stop or free any watcher, including itself, and
 * other watchers in the same epoll batch: each event is re-checked against
 * the watcher's current registration through a generation-free scheme,
 * ev_io_stop() marks the fd dead for the rest of the batch.
 */
#include "ev.h"
#include "clock.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define EV_BATCH 256

struct post {
	struct post *next;
	ev_cb *cb;
	void *arg;
};

struct ev_loop {
	int index;
	int epfd;
	int stop;
	uint64_t now;
	/* timers: min-heap on `when` */
	struct ev_timer **heap;
	size_t nheap, capheap;
	/* deferred calls */
	struct ev_defer *dhead, *dtail;
	/* cross-thread posts */
	int postfd;
	struct ev_io postw;
	pthread_mutex_t postmu;
	struct post *phead, *ptail;
	/* events being dispatched: ev_io_stop() clears matching entries */
	struct epoll_event *batch;
	int nbatch;
	void *slots[EV_SLOT_COUNT];
};

/* ev_wallclock - seconds since the epoch. */
uint64_t ev_wallclock(void)
{
	return (uint64_t)time(NULL);
}

/* post_drain - run the calls other threads posted to this loop. */
static void post_drain(void *arg, unsigned events)
{
	struct ev_loop *loop = arg;
	uint64_t v;
	ssize_t r = read(loop->postfd, &v, sizeof v);
	(void)r;
	(void)events;
	pthread_mutex_lock(&loop->postmu);
	struct post *p = loop->phead;
	loop->phead = loop->ptail = NULL;
	pthread_mutex_unlock(&loop->postmu);
	while (p) {
		struct post *next = p->next;
		p->cb(p->arg);
		free(p);
		p = next;
	}
}

/* ev_loop_new - a loop with its epoll set and post channel. */
struct ev_loop *ev_loop_new(int index)
{
	struct ev_loop *loop = xcalloc(1, sizeof *loop);
	loop->index = index;
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0)
		fatal("epoll_create1: %s", strerror(errno));
	loop->postfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (loop->postfd < 0)
		fatal("eventfd: %s", strerror(errno));
	pthread_mutex_init(&loop->postmu, NULL);
	loop->batch = xcalloc(EV_BATCH, sizeof *loop->batch);
	loop->now = clock_ms();
	ev_io_init(&loop->postw, loop->postfd, post_drain, loop);
	ev_io_set(loop, &loop->postw, EV_READ);
	return loop;
}

/* ev_loop_free - release a stopped loop (its watchers must be gone). */
void ev_loop_free(struct ev_loop *loop)
{
	ev_io_stop(loop, &loop->postw);
	close(loop->postfd);
	close(loop->epfd);
	pthread_mutex_destroy(&loop->postmu);
	while (loop->phead) {
		struct post *p = loop->phead;
		loop->phead = p->next;
		free(p);
	}
	free(loop->heap);
	free(loop->batch);
	free(loop);
}

/* ev_loop_index - the io thread number. */
int ev_loop_index(const struct ev_loop *loop)
{
	return loop->index;
}

/* ev_slot - a module's per-loop pointer. */
void **ev_slot(struct ev_loop *loop, enum ev_slot s)
{
	return &loop->slots[s];
}

/* ev_now - cached monotonic ms. */
uint64_t ev_now(const struct ev_loop *loop)
{
	return loop->now;
}

/* ev_stop - make ev_run() return after this iteration. */
void ev_stop(struct ev_loop *loop)
{
	loop->stop = 1;
}

/* ---- fd watchers ------------------------------------------------------ */

/* ev_io_init - bind fd and callback. */
void ev_io_init(struct ev_io *w, int fd, ev_io_cb *cb, void *arg)
{
	w->fd = fd;
	w->want = 0;
	w->added = 0;
	w->cb = cb;
	w->arg = arg;
}

/* ev_io_set - register interest in exactly `events`. */
void ev_io_set(struct ev_loop *loop, struct ev_io *w, unsigned events)
{
	if (w->added && w->want == events)
		return;
	/* Interest 0 leaves the epoll set: EPOLLHUP/EPOLLERR are reported even
	 * with no events asked, and would spin a paused watcher. */
	if (events == 0) {
		ev_io_stop(loop, w);
		return;
	}
	struct epoll_event ee = { 0 };
	ee.events = (events & EV_READ ? EPOLLIN | EPOLLRDHUP : 0) | (events & EV_WRITE ? EPOLLOUT : 0);
	ee.data.ptr = w;
	int op = w->added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
	if (epoll_ctl(loop->epfd, op, w->fd, &ee) < 0)
		fatal("epoll_ctl(%d, fd %d): %s", op, w->fd, strerror(errno));
	w->added = 1;
	w->want = events;
}

/* ev_io_stop - unregister; pending events of this batch are dropped. */
void ev_io_stop(struct ev_loop *loop, struct ev_io *w)
{
	if (w->added) {
		epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
		w->added = 0;
		w->want = 0;
	}
	for (int i = 0; i < loop->nbatch; i++)
		if (loop->batch[i].data.ptr == w)
			loop->batch[i].data.ptr = NULL;
}

/* ---- timers (min-heap, slot = index + 1) ------------------------------ */

static void heap_swap(struct ev_loop *loop, size_t a, size_t b)
{
	struct ev_timer *t = loop->heap[a];
	loop->heap[a] = loop->heap[b];
	loop->heap[b] = t;
	loop->heap[a]->slot = a + 1;
	loop->heap[b]->slot = b + 1;
}

static void heap_up(struct ev_loop *loop, size_t i)
{
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (loop->heap[p]->when <= loop->heap[i]->when)
			break;
		heap_swap(loop, i, p);
		i = p;
	}
}

static void heap_down(struct ev_loop *loop, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < loop->nheap && loop->heap[l]->when < loop->heap[m]->when)
			m = l;
		if (r < loop->nheap && loop->heap[r]->when < loop->heap[m]->when)
			m = r;
		if (m == i)
			break;
		heap_swap(loop, i, m);
		i = m;
	}
}

/* ev_timer_stop - disarm (no-op when not armed). */
void ev_timer_stop(struct ev_loop *loop, struct ev_timer *t)
{
	if (!t->slot)
		return;
	size_t i = t->slot - 1;
	t->slot = 0;
	loop->nheap--;
	if (i != loop->nheap) {
		loop->heap[i] = loop->heap[loop->nheap];
		loop->heap[i]->slot = i + 1;
		heap_down(loop, i);
		heap_up(loop, i);
	}
}

/* ev_timer_start - arm, replacing any earlier arming. */
void ev_timer_start(struct ev_loop *loop, struct ev_timer *t, uint64_t ms, ev_cb *cb, void *arg)
{
	ev_timer_stop(loop, t);
	t->when = loop->now + ms;
	t->cb = cb;
	t->arg = arg;
	if (loop->nheap == loop->capheap) {
		loop->capheap = loop->capheap ? 2 * loop->capheap : 64;
		loop->heap = xrealloc(loop->heap, loop->capheap * sizeof *loop->heap);
	}
	loop->heap[loop->nheap] = t;
	t->slot = ++loop->nheap;
	heap_up(loop, loop->nheap - 1);
}

/* run_timers - fire every timer due by now. */
static void run_timers(struct ev_loop *loop)
{
	while (loop->nheap && loop->heap[0]->when <= loop->now) {
		struct ev_timer *t = loop->heap[0];
		ev_timer_stop(loop, t);
		t->cb(t->arg);
	}
}

/* ---- deferred calls --------------------------------------------------- */

/* ev_defer - queue for the next iteration. */
void ev_defer(struct ev_loop *loop, struct ev_defer *d, ev_cb *cb, void *arg)
{
	d->cb = cb;
	d->arg = arg;
	if (d->queued)
		return;
	d->queued = 1;
	d->next = NULL;
	if (loop->dtail)
		loop->dtail->next = d;
	else
		loop->dhead = d;
	loop->dtail = d;
}

/* ev_defer_cancel - remove from the queue. */
void ev_defer_cancel(struct ev_loop *loop, struct ev_defer *d)
{
	if (!d->queued)
		return;
	struct ev_defer **pp = &loop->dhead, *prev = NULL;
	while (*pp && *pp != d) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (*pp) {
		*pp = d->next;
		if (loop->dtail == d)
			loop->dtail = prev;
	}
	d->queued = 0;
}

/* ev_defer_queued - d is queued and has not run yet. */
int ev_defer_queued(const struct ev_defer *d)
{
	return d->queued;
}

/* run_defers - run what was queued before this call (new ones wait). */
static void run_defers(struct ev_loop *loop)
{
	struct ev_defer *end = loop->dtail;
	while (loop->dhead) {
		struct ev_defer *d = loop->dhead;
		loop->dhead = d->next;
		if (!loop->dhead)
			loop->dtail = NULL;
		d->queued = 0;
		d->cb(d->arg);
		if (d == end)
			break;
	}
}

/* ev_post - from any thread: run cb(arg) on the loop. */
void ev_post(struct ev_loop *loop, ev_cb *cb, void *arg)
{
	struct post *p = xmalloc(sizeof *p);
	p->next = NULL;
	p->cb = cb;
	p->arg = arg;
	pthread_mutex_lock(&loop->postmu);
	if (loop->ptail)
		loop->ptail->next = p;
	else
		loop->phead = p;
	loop->ptail = p;
	pthread_mutex_unlock(&loop->postmu);
	uint64_t one = 1;
	ssize_t r = write(loop->postfd, &one, sizeof one);
	(void)r;
}

/* ---- the loop --------------------------------------------------------- */

/* ev_run - iterate until ev_stop(). */
void ev_run(struct ev_loop *loop)
{
	loop->stop = 0;
	while (!loop->stop) {
		loop->now = clock_ms();
		run_defers(loop);
		run_timers(loop);
		if (loop->stop)
			break;
		int timeout = -1;
		if (loop->dhead)
			timeout = 0;
		else if (loop->nheap) {
			uint64_t w = loop->heap[0]->when;
			timeout = w <= loop->now ? 0 : (int)(w - loop->now > 60000 ? 60000 : w - loop->now);
		}
		int n = epoll_wait(loop->epfd, loop->batch, EV_BATCH, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fatal("epoll_wait: %s", strerror(errno));
		}
		loop->now = clock_ms();
		loop->nbatch = n;
		for (int i = 0; i < n; i++) {
			struct ev_io *w = loop->batch[i].data.ptr;
			if (!w)
				continue;
			uint32_t e = loop->batch[i].events;
			unsigned ev = 0;
			if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				ev |= EV_READ;
			if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
				ev |= EV_WRITE;
			ev &= w->want;
			if (ev)
				w->cb(w->arg, ev);
		}
		loop->nbatch = 0;
	}
}
