/*
 * conn.c - buffered non-blocking stream connections on an event loop.
 *
 * Invariants:
 * - The input buffer exists only while it holds unconsumed bytes, so an
 *   idle connection costs the struct alone. Input is read only while the
 *   owner has reading enabled, and at most CONN_RMAX bytes are held.
 * - Output is appended to one buffer and flushed from a deferred call at
 *   the end of the loop iteration (so pipelined replies leave in one write),
 *   then on EV_WRITE readiness until empty.
 * - Callbacks run only from loop callbacks (io, timer, defer), never inside
 *   a conn_* call, so the owner may free the connection in any callback.
 *   A `busy` guard keeps freeing safe while conn.c itself is still on the
 *   stack: conn_free() then only marks the connection dead.
 * - End of input from the peer is reported (on_error 0) only after the owner
 *   had the chance to process everything buffered before it.
 */
#include "conn.h"
#include "ev.h"
#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONN_RCHUNK (16 * 1024)
#define CONN_RMAX (256 * 1024)
#define CONN_SHUTDOWN_WAIT 2000

struct conn {
	struct ev_loop *loop;
	int fd;
	struct ev_io io;
	const struct conn_ops *ops;
	void *arg;

	char *rbuf;
	size_t rlen, rcap;
	char *wbuf;
	size_t wlen, woff, wcap;

	uint64_t timeout_ms;
	struct ev_timer tmr;
	struct ev_defer flushd;   /* flush output */
	struct ev_defer readd;    /* re-run on_read after resume / report eof */

	unsigned reading : 1;     /* owner wants input */
	unsigned connecting : 1;
	unsigned eof : 1;         /* peer closed its side */
	unsigned shutting : 1;    /* conn_shutdown() called */
	unsigned wrshut : 1;      /* our write side is shut */
	unsigned had_output : 1;  /* on_drain owed */
	unsigned dead : 1;        /* freed while busy */
	unsigned reported : 1;    /* on_error already called */
	int busy;
	int pending_err;          /* connect() failed at once: reported later */
	char peer[INET6_ADDRSTRLEN];
};

static void conn_io(void *arg, unsigned events);
static void conn_update(struct conn *c);

/* conn_release - free now, or when the outermost conn.c frame returns. */
static void conn_release(struct conn *c)
{
	if (c->busy) {
		c->dead = 1;
		return;
	}
	ev_io_stop(c->loop, &c->io);
	ev_timer_stop(c->loop, &c->tmr);
	ev_defer_cancel(c->loop, &c->flushd);
	ev_defer_cancel(c->loop, &c->readd);
	if (c->fd >= 0)
		close(c->fd);
	free(c->rbuf);
	free(c->wbuf);
	free(c);
}

/* conn_error - report once to the owner. */
static void conn_error(struct conn *c, int err)
{
	if (c->reported || c->dead)
		return;
	c->reported = 1;
	c->reading = 0;
	ev_timer_stop(c->loop, &c->tmr);
	if (c->fd >= 0)
		ev_io_stop(c->loop, &c->io);
	c->ops->on_error(c->arg, err);
}

/* conn_timeout - idle timer, connect timer, or shutdown wait. */
static void conn_timeout(void *arg)
{
	struct conn *c = arg;
	c->busy++;
	if (c->pending_err || c->shutting || c->connecting) {
		conn_error(c, c->pending_err ? c->pending_err : c->shutting ? 0 : ETIMEDOUT);
	} else if (!c->reported) {
		/* Idle timeout: the owner may still write a last reply and
		 * conn_shutdown(), or free. Reading stays off until told. */
		c->reading = 0;
		conn_update(c);
		c->ops->on_error(c->arg, ETIMEDOUT);
	}
	c->busy--;
	if (c->dead)
		conn_release(c);
}

/* conn_alloc - common part of conn_new / conn_connect. */
static struct conn *conn_alloc(struct ev_loop *loop, int fd,
			       const struct conn_ops *ops, void *arg)
{
	struct conn *c = xcalloc(1, sizeof *c);
	c->loop = loop;
	c->fd = fd;
	c->ops = ops;
	c->arg = arg;
	ev_io_init(&c->io, fd, conn_io, c);
	return c;
}

/* conn_fill_peer - the peer address as text. */
static void conn_fill_peer(struct conn *c)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	strcpy(c->peer, "unknown");
	if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) < 0)
		return;
	if (ss.ss_family == AF_INET)
		inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, c->peer, sizeof c->peer);
	else if (ss.ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, c->peer, sizeof c->peer);
}

/* conn_new - wrap an accepted socket. */
struct conn *conn_new(struct ev_loop *loop, int fd, const struct conn_ops *ops,
		      void *arg)
{
	struct conn *c = conn_alloc(loop, fd, ops, arg);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	conn_fill_peer(c);
	c->reading = 1;
	conn_update(c);
	return c;
}

/* conn_connect - start a non-blocking connect. */
struct conn *conn_connect(struct ev_loop *loop, const struct sockaddr *sa,
			  socklen_t salen, uint64_t timeout_ms,
			  const struct conn_ops *ops, void *arg)
{
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return NULL;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct conn *c = conn_alloc(loop, fd, ops, arg);
	c->connecting = 1;
	if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS) {
		/* Report later: callbacks never run inside the call. */
		c->pending_err = errno;
		c->connecting = 0;
		close(fd);
		c->fd = -1;
		ev_timer_start(loop, &c->tmr, 0, conn_timeout, c);
		return c;
	}
	ev_io_set(loop, &c->io, EV_WRITE);
	ev_timer_start(loop, &c->tmr, timeout_ms, conn_timeout, c);
	return c;
}

/* conn_free - close and free; no callback after this. */
void conn_free(struct conn *c)
{
	if (!c)
		return;
	c->reported = 1;
	conn_release(c);
}

/* conn_set_owner - hand the connection to another owner. */
void conn_set_owner(struct conn *c, const struct conn_ops *ops, void *arg)
{
	c->ops = ops;
	c->arg = arg;
}

/* conn_update - epoll interest and idle timer from the current state. */
static void conn_update(struct conn *c)
{
	if (c->fd < 0 || c->reported || c->connecting)
		return;
	unsigned want = 0;
	int want_read = (c->reading || c->shutting) && !c->eof && c->rlen < CONN_RMAX;
	if (want_read)
		want |= EV_READ;
	if (c->wlen > c->woff)
		want |= EV_WRITE;
	ev_io_set(c->loop, &c->io, want);
	if (c->shutting)
		return;
	if (c->reading && c->timeout_ms && !c->eof) {
		if (!ev_timer_active(&c->tmr))
			ev_timer_start(c->loop, &c->tmr, c->timeout_ms, conn_timeout, c);
	} else {
		ev_timer_stop(c->loop, &c->tmr);
	}
}

/* conn_flush_now - write what we can; 0 ok, -1 error reported. */
static int conn_flush_now(struct conn *c)
{
	while (c->wlen > c->woff) {
		ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			conn_error(c, errno);
			return -1;
		}
		c->woff += (size_t)n;
	}
	if (c->woff == c->wlen) {
		c->woff = c->wlen = 0;
		if (c->wcap > 64 * 1024) {
			free(c->wbuf);
			c->wbuf = NULL;
			c->wcap = 0;
		}
	}
	return 0;
}

/* conn_after_flush - drain notification and shutdown progress. */
static void conn_after_flush(struct conn *c)
{
	if (c->wlen)
		return;
	if (c->shutting && !c->wrshut) {
		c->wrshut = 1;
		shutdown(c->fd, SHUT_WR);
		ev_timer_start(c->loop, &c->tmr, CONN_SHUTDOWN_WAIT, conn_timeout, c);
	}
	if (c->had_output && !c->shutting) {
		c->had_output = 0;
		if (c->ops->on_drain)
			c->ops->on_drain(c->arg);
	}
}

/* conn_flush_deferred - end-of-iteration flush. */
static void conn_flush_deferred(void *arg)
{
	struct conn *c = arg;
	c->busy++;
	if (!c->reported && conn_flush_now(c) == 0) {
		conn_update(c);
		conn_after_flush(c);
	}
	c->busy--;
	if (c->dead)
		conn_release(c);
}

/* conn_dispatch_read - give the owner the buffered input, then eof. */
static void conn_dispatch_read(struct conn *c)
{
	if (c->reported || c->dead)
		return;
	if (c->shutting) {
		/* Discard what the peer still sends; we are closing. */
		c->rlen = 0;
		if (c->eof)
			conn_error(c, 0);
		return;
	}
	if (c->rlen && c->reading)
		c->ops->on_read(c->arg);
	if (c->dead || c->reported)
		return;
	if (c->eof && c->reading)
		conn_error(c, 0);
}

/* conn_read_deferred - resume after conn_read_enable(1). */
static void conn_read_deferred(void *arg)
{
	struct conn *c = arg;
	c->busy++;
	conn_dispatch_read(c);
	c->busy--;
	if (c->dead)
		conn_release(c);
	else
		conn_update(c);
}

/* conn_do_read - read from the socket into the input buffer. */
static void conn_do_read(struct conn *c)
{
	for (int rounds = 0; rounds < 4 && c->rlen < CONN_RMAX; rounds++) {
		if (c->rcap - c->rlen < CONN_RCHUNK / 2) {
			size_t ncap = c->rcap ? c->rcap * 2 : CONN_RCHUNK;
			while (ncap - c->rlen < CONN_RCHUNK / 2)
				ncap *= 2;
			c->rbuf = xrealloc(c->rbuf, ncap);
			c->rcap = ncap;
		}
		size_t space = c->rcap - c->rlen;
		ssize_t n = recv(c->fd, c->rbuf + c->rlen, space, 0);
		if (n > 0) {
			c->rlen += (size_t)n;
			if ((size_t)n < space)
				break; /* socket drained */
			continue;
		}
		if (n == 0) {
			c->eof = 1;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		conn_error(c, errno);
		return;
	}
	if (c->rlen == 0 && c->rbuf && !c->eof) {
		free(c->rbuf);
		c->rbuf = NULL;
		c->rcap = 0;
	}
	if (c->timeout_ms && c->reading && !c->shutting)
		ev_timer_start(c->loop, &c->tmr, c->timeout_ms, conn_timeout, c);
	conn_dispatch_read(c);
}

/* conn_io - readiness on the socket. */
static void conn_io(void *arg, unsigned events)
{
	struct conn *c = arg;
	c->busy++;
	if (c->connecting) {
		int err = 0;
		socklen_t sl = sizeof err;
		getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
		c->connecting = 0;
		ev_timer_stop(c->loop, &c->tmr);
		if (err) {
			conn_error(c, err);
		} else {
			conn_fill_peer(c);
			c->reading = 1;
			conn_update(c);
			c->ops->on_connect(c->arg);
		}
		goto out;
	}
	if ((events & EV_WRITE) && !c->reported) {
		if (conn_flush_now(c) == 0)
			conn_after_flush(c);
	}
	if ((events & EV_READ) && !c->reported && !c->dead)
		conn_do_read(c);
out:
	c->busy--;
	if (c->dead)
		conn_release(c);
	else
		conn_update(c);
}

/* conn_rbuf - the unconsumed input. */
const char *conn_rbuf(struct conn *c, size_t *len)
{
	*len = c->rlen;
	return c->rbuf;
}

/* conn_consume - drop n bytes of input. */
void conn_consume(struct conn *c, size_t n)
{
	if (n >= c->rlen) {
		c->rlen = 0;
		free(c->rbuf);
		c->rbuf = NULL;
		c->rcap = 0;
	} else {
		memmove(c->rbuf, c->rbuf + n, c->rlen - n);
		c->rlen -= n;
	}
}

/* conn_discard_input - drop everything buffered (RFC 3207 §4.2). */
void conn_discard_input(struct conn *c)
{
	conn_consume(c, c->rlen);
}

/* conn_read_enable - pause or resume the owner's input. */
void conn_read_enable(struct conn *c, int on)
{
	if (c->reading == (unsigned)!!on)
		return;
	c->reading = !!on;
	if (on && (c->rlen || c->eof))
		ev_defer(c->loop, &c->readd, conn_read_deferred, c);
	if (!c->busy)
		conn_update(c);
}

/* conn_write - queue output, flushed at the end of the iteration. */
void conn_write(struct conn *c, const void *data, size_t len)
{
	if (c->reported || c->shutting || !len)
		return;
	if (c->wcap - c->wlen < len) {
		if (c->woff) {
			memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
			c->wlen -= c->woff;
			c->woff = 0;
		}
		size_t ncap = c->wcap ? c->wcap : 1024;
		while (ncap - c->wlen < len)
			ncap *= 2;
		if (ncap != c->wcap) {
			c->wbuf = xrealloc(c->wbuf, ncap);
			c->wcap = ncap;
		}
	}
	memcpy(c->wbuf + c->wlen, data, len);
	c->wlen += len;
	c->had_output = 1;
	ev_defer(c->loop, &c->flushd, conn_flush_deferred, c);
}

/* conn_printf - formatted output. */
void conn_printf(struct conn *c, const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof buf) {
		char *big = xmalloc((size_t)n + 1);
		va_start(ap, fmt);
		vsnprintf(big, (size_t)n + 1, fmt, ap);
		va_end(ap);
		conn_write(c, big, (size_t)n);
		free(big);
		return;
	}
	conn_write(c, buf, (size_t)n);
}

/* conn_wpending - bytes not yet written. */
size_t conn_wpending(const struct conn *c)
{
	return c->wlen - c->woff;
}

/* conn_shutdown - flush, close our side, wait briefly for the peer. */
void conn_shutdown(struct conn *c)
{
	if (c->shutting || c->reported)
		return;
	c->shutting = 1;
	c->reading = 0;
	ev_timer_start(c->loop, &c->tmr, 10000, conn_timeout, c);
	ev_defer(c->loop, &c->flushd, conn_flush_deferred, c);
}

/* conn_set_timeout - idle timeout while reading (0 = none). */
void conn_set_timeout(struct conn *c, uint64_t ms)
{
	c->timeout_ms = ms;
	if (c->reading && !c->shutting && !c->reported && !c->connecting) {
		if (ms)
			ev_timer_start(c->loop, &c->tmr, ms, conn_timeout, c);
		else
			ev_timer_stop(c->loop, &c->tmr);
	}
}

/* conn_fd - the socket. */
int conn_fd(const struct conn *c)
{
	return c->fd;
}

/* conn_peer - peer address text. */
const char *conn_peer(const struct conn *c)
{
	return c->peer;
}
