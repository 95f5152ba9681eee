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
 * - TLS (optional, after conn_starttls()) sits under both buffers: the
 *   owner reads and writes plaintext exactly as before; conn_tls_pump()
 *   moves bytes socket <-> engine <-> buffers. Input buffered when TLS
 *   starts is dropped (RFC 3207 §4.2, CVE-2011-0411), output queued before
 *   it leaves in plaintext first (the "220 Ready to start TLS"). The engine
 *   and its ~33 KB buffer exist only for TLS connections.
 */
#include "conn.h"
#include "buf.h"
#include "ev.h"
#include "log.h"
#include "tls.h"

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
	struct ev_defer flushd; /* flush output */
	struct ev_defer readd;  /* re-run on_read after resume / report eof */

	unsigned reading : 1; /* owner wants input */
	unsigned connecting : 1;
	unsigned eof : 1;        /* peer closed its side */
	unsigned shutting : 1;   /* conn_shutdown() called */
	unsigned wrshut : 1;     /* our write side is shut */
	unsigned had_output : 1; /* on_drain owed */
	unsigned dead : 1;       /* freed while busy */
	unsigned reported : 1;   /* on_error already called */
	int busy;
	int pending_err;          /* connect() failed at once: reported later */
	struct tls *tls;          /* NULL: plaintext */
	conn_tls_fn *tls_cb;      /* handshake outcome, owed while tls_hs */
	size_t tls_raw;           /* output bytes still to leave in plaintext */
	int tls_err;              /* BearSSL error of a failed session */
	unsigned tls_hs : 1;      /* handshake in progress */
	unsigned tls_closing : 1; /* close_notify queued */
	char peer[INET6_ADDRSTRLEN];
};

static void conn_io(void *arg, unsigned events);
static void conn_update(struct conn *c);
static void conn_tls_fail(struct conn *c, int err, const char *why);
static int conn_tls_pump(struct conn *c, int can_read);
static int conn_out_pending(struct conn *c);

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
	buf_spare_give(BUF_SPARE_READ, c->rbuf, c->rcap);
	free(c->wbuf);
	tls_free(c->tls);
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
	if (c->tls_hs && !c->reported && !c->shutting) {
		conn_tls_fail(c, 0, "timeout");
	} else if (c->pending_err || c->shutting || c->connecting) {
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
static struct conn *conn_alloc(struct ev_loop *loop, int fd, const struct conn_ops *ops, void *arg)
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
struct conn *conn_new(struct ev_loop *loop, int fd, const struct conn_ops *ops, void *arg)
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
struct conn *conn_connect(struct ev_loop *loop, const struct sockaddr *sa, socklen_t salen,
			  uint64_t timeout_ms, const struct conn_ops *ops, void *arg)
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

/* conn_update - epoll interest and idle timer from the current state. */
static void conn_update(struct conn *c)
{
	if (c->fd < 0 || c->reported || c->connecting)
		return;
	unsigned want = 0;
	/* While closing, input is read (and dropped) only once our last reply
	 * is out, to see the peer's EOF: a peer that does not read its replies
	 * gets nothing more read from it. */
	int want_read =
	    (c->reading || (c->shutting && c->wrshut) || c->tls_hs) && !c->eof && c->rlen < CONN_RMAX;
	if (c->tls) {
		unsigned st = br_ssl_engine_current_state(tls_engine(c->tls));
		if (want_read && (st & (BR_SSL_RECVREC | BR_SSL_CLOSED)))
			want |= EV_READ;
		if (c->tls_raw || (st & BR_SSL_SENDREC))
			want |= EV_WRITE;
	} else {
		if (want_read)
			want |= EV_READ;
		/* Output queued for the end-of-iteration flush needs no
		 * EPOLLOUT: that flush writes it and comes back here; only what
		 * the socket did not take waits for EV_WRITE (two epoll_ctl
		 * calls per reply less). */
		if (c->wlen > c->woff && !ev_defer_queued(&c->flushd))
			want |= EV_WRITE;
	}
	ev_io_set(c->loop, &c->io, want);
	if (c->shutting)
		return;
	if ((c->reading || c->tls_hs) && c->timeout_ms && !c->eof) {
		if (!ev_timer_active(&c->tmr))
			ev_timer_start(c->loop, &c->tmr, c->timeout_ms, conn_timeout, c);
	} else {
		ev_timer_stop(c->loop, &c->tmr);
	}
}

/* conn_flush_now - write what we can; 0 ok, -1 error reported. */
static int conn_flush_now(struct conn *c)
{
	if (c->tls)
		return conn_tls_pump(c, 0);
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
	if (conn_out_pending(c))
		return;
	if (c->shutting && !c->wrshut && c->tls && !c->tls_closing && !c->tls_hs) {
		/* RFC 5246 §7.2.1: close_notify before our FIN. */
		c->tls_closing = 1;
		br_ssl_engine_close(tls_engine(c->tls));
		if (conn_tls_pump(c, 0) < 0 || conn_out_pending(c))
			return;
	}
	if (c->shutting && !c->wrshut) {
		c->wrshut = 1;
		shutdown(c->fd, SHUT_WR);
		if (c->eof) { /* the peer's EOF came first: nothing to wait for */
			conn_error(c, 0);
			return;
		}
		ev_timer_start(c->loop, &c->tmr, CONN_SHUTDOWN_WAIT, conn_timeout, c);
		conn_update(c); /* now read, to see the peer's EOF */
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
		if (!c->rbuf)
			c->rbuf = buf_spare_take(BUF_SPARE_READ, CONN_RCHUNK, &c->rcap);
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
		buf_spare_give(BUF_SPARE_READ, c->rbuf, c->rcap);
		c->rbuf = NULL;
		c->rcap = 0;
	}
	if (c->timeout_ms && c->reading && !c->shutting)
		ev_timer_start(c->loop, &c->tmr, c->timeout_ms, conn_timeout, c);
	conn_dispatch_read(c);
}

/* ---- TLS ---------------------------------------------------------------- */

/* conn_out_pending - output not yet handed to the kernel. */
static int conn_out_pending(struct conn *c)
{
	if (c->wlen)
		return 1;
	if (!c->tls)
		return 0;
	return c->tls_raw || (br_ssl_engine_current_state(tls_engine(c->tls)) & BR_SSL_SENDREC);
}

/* conn_tls_fail - the handshake failed: tell the owner, who frees. */
static void conn_tls_fail(struct conn *c, int err, const char *why)
{
	char buf[64];
	if (!c->tls_hs || c->reported)
		return;
	c->tls_err = err;
	c->tls_hs = 0;
	c->reported = 1;
	c->reading = 0;
	ev_timer_stop(c->loop, &c->tmr);
	ev_io_stop(c->loop, &c->io);
	conn_tls_fn *cb = c->tls_cb;
	c->tls_cb = NULL;
	cb(c->arg, 0, why ? why : tls_error_text(err, buf, sizeof buf));
}

/* conn_tls_ioerr - a socket error under TLS. */
static void conn_tls_ioerr(struct conn *c, int err)
{
	if (c->tls_hs)
		conn_tls_fail(c, 0, strerror(err));
	else
		conn_error(c, err);
}

/* conn_tls_append - decrypted input into the input buffer. */
static void conn_tls_append(struct conn *c, const unsigned char *p, size_t n)
{
	if (c->rcap - c->rlen < n) {
		size_t ncap = c->rcap ? c->rcap : CONN_RCHUNK;
		while (ncap - c->rlen < n)
			ncap *= 2;
		c->rbuf = xrealloc(c->rbuf, ncap);
		c->rcap = ncap;
	}
	memcpy(c->rbuf + c->rlen, p, n);
	c->rlen += n;
}

/* conn_tls_pump - move bytes socket <-> engine <-> buffers until nothing
 * moves (BearSSL's four-buffer state machine, bearssl_ssl.h). Reads from
 * the socket only with can_read. Returns -1 once an error was reported or
 * the owner freed the connection. */
static int conn_tls_pump(struct conn *c, int can_read)
{
	br_ssl_engine_context *eng = tls_engine(c->tls);
	for (;;) {
		int progress = 0;
		if (c->tls_raw) {
			/* Plaintext queued before STARTTLS (the 220) goes first. */
			ssize_t n = send(c->fd, c->wbuf + c->woff, c->tls_raw, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN)
					return 0;
				conn_tls_ioerr(c, errno);
				return -1;
			}
			c->woff += (size_t)n;
			c->tls_raw -= (size_t)n;
			if (c->woff == c->wlen)
				c->woff = c->wlen = 0;
			continue;
		}
		unsigned st = br_ssl_engine_current_state(eng);
		if (st & BR_SSL_CLOSED) {
			int err = br_ssl_engine_last_error(eng);
			if (c->tls_hs) {
				conn_tls_fail(c, err, err ? NULL : "closed during handshake");
				return -1;
			}
			/* A closed engine sends no more application data:
			 * output still queued (replies to commands that came
			 * with the peer's close_notify) can never leave, and
			 * kept, it held the session until conn_shutdown's 10 s
			 * (or the idle timeout) ran out. */
			c->woff = c->wlen = 0;
			if (c->shutting) {
				/* Our close_notify is out: wait for the peer's FIN. */
				char tmp[4096];
				ssize_t n = -1;
				while (can_read && (n = recv(c->fd, tmp, sizeof tmp, 0)) != 0) {
					if (n < 0 && errno != EINTR)
						break;
				}
				if (can_read && n == 0)
					c->eof = 1;
				return 0;
			}
			if (err && !c->reported) {
				c->tls_err = err;
				conn_error(c, EPROTO);
				return -1;
			}
			c->eof = 1; /* close_notify from the peer */
			return 0;
		}
		if (c->tls_hs && (st & (BR_SSL_SENDAPP | BR_SSL_RECVAPP))) {
			c->tls_hs = 0;
			conn_tls_fn *cb = c->tls_cb;
			c->tls_cb = NULL;
			cb(c->arg, 1, NULL);
			if (c->dead || c->reported)
				return -1;
			continue;
		}
		if (st & BR_SSL_SENDREC) {
			size_t len;
			unsigned char *buf = br_ssl_engine_sendrec_buf(eng, &len);
			ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
			if (n > 0) {
				br_ssl_engine_sendrec_ack(eng, (size_t)n);
				progress = 1;
			} else if (n < 0 && errno == EINTR) {
				progress = 1;
			} else if (n < 0 && errno != EAGAIN) {
				conn_tls_ioerr(c, errno);
				return -1;
			}
		}
		if (st & BR_SSL_RECVAPP) {
			size_t len;
			unsigned char *buf = br_ssl_engine_recvapp_buf(eng, &len);
			conn_tls_append(c, buf, len);
			br_ssl_engine_recvapp_ack(eng, len);
			progress = 1;
		}
		if ((st & BR_SSL_SENDAPP) && c->wlen > c->woff) {
			size_t len;
			unsigned char *buf = br_ssl_engine_sendapp_buf(eng, &len);
			if (len > c->wlen - c->woff)
				len = c->wlen - c->woff;
			memcpy(buf, c->wbuf + c->woff, len);
			br_ssl_engine_sendapp_ack(eng, len);
			c->woff += len;
			if (c->woff == c->wlen) {
				c->woff = c->wlen = 0;
				br_ssl_engine_flush(eng, 0);
			}
			progress = 1;
		}
		if (can_read && (st & BR_SSL_RECVREC) && !c->eof &&
		    (c->rlen < CONN_RMAX || c->tls_hs || c->shutting)) {
			size_t len;
			unsigned char *buf = br_ssl_engine_recvrec_buf(eng, &len);
			ssize_t n = recv(c->fd, buf, len, 0);
			if (n > 0) {
				br_ssl_engine_recvrec_ack(eng, (size_t)n);
				progress = 1;
			} else if (n == 0) {
				if (c->tls_hs) {
					conn_tls_fail(c, 0, "connection closed during handshake");
					return -1;
				}
				c->eof = 1;
			} else if (errno == EINTR) {
				progress = 1;
			} else if (errno == EAGAIN) {
				can_read = 0;
			} else {
				conn_tls_ioerr(c, errno);
				return -1;
			}
		}
		if (!progress)
			break;
	}
	if (c->wlen == 0 && c->wcap > 64 * 1024) {
		free(c->wbuf);
		c->wbuf = NULL;
		c->wcap = 0;
	}
	return 0;
}

/* conn_tls_io - readiness on a TLS connection. */
static void conn_tls_io(struct conn *c, unsigned events)
{
	size_t before = c->rlen;
	int was_eof = c->eof;
	if (conn_tls_pump(c, (events & EV_READ) != 0) < 0)
		return;
	if (c->shutting)
		c->rlen = 0;
	if (c->rlen == 0 && c->rbuf) {
		buf_spare_give(BUF_SPARE_READ, c->rbuf, c->rcap);
		c->rbuf = NULL;
		c->rcap = 0;
	}
	if ((events & EV_READ) && c->timeout_ms && (c->reading || c->tls_hs) && !c->shutting)
		ev_timer_start(c->loop, &c->tmr, c->timeout_ms, conn_timeout, c);
	conn_after_flush(c);
	if (c->dead || c->reported)
		return;
	if (c->rlen != before || c->eof != was_eof || (c->shutting && c->eof))
		conn_dispatch_read(c);
}

/* conn_starttls - TLS from now on (see conn.h). */
int conn_starttls(struct conn *c, struct tls *t, conn_tls_fn *cb)
{
	if (c->tls || c->reported || c->shutting || c->connecting || c->fd < 0) {
		tls_free(t);
		return -1;
	}
	c->tls = t;
	c->tls_cb = cb;
	c->tls_hs = 1;
	c->tls_raw = c->wlen - c->woff;
	/* RFC 3207 §4.2 / CVE-2011-0411: nothing read before the handshake
	 * may be taken as a command inside TLS. */
	conn_discard_input(c);
	ev_defer(c->loop, &c->flushd, conn_flush_deferred, c);
	if (!c->busy)
		conn_update(c);
	return 0;
}

/* conn_tls_describe - negotiated protocol and cipher, or "". */
void conn_tls_describe(struct conn *c, char *buf, size_t len)
{
	if (!c->tls || c->tls_hs) {
		if (len)
			buf[0] = 0;
		return;
	}
	tls_describe(c->tls, buf, len);
}

/* conn_tls_error - the BearSSL error that ended TLS (0: none, or a
 * socket error / timeout / EOF). */
int conn_tls_error(const struct conn *c)
{
	return c->tls_err;
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
	if (c->tls) {
		if (!c->reported && !c->dead)
			conn_tls_io(c, events);
		goto out;
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
		buf_spare_give(BUF_SPARE_READ, c->rbuf, c->rcap);
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

/* conn_detach - off this loop, for conn_attach() on another. */
int conn_detach(struct conn *c)
{
	if (c->busy || c->dead || c->reported || c->shutting || c->connecting || c->eof || c->fd < 0 ||
	    c->pending_err || c->tls_hs || c->tls_closing || c->rlen || conn_out_pending(c))
		return -1;
	ev_io_stop(c->loop, &c->io);
	ev_timer_stop(c->loop, &c->tmr);
	ev_defer_cancel(c->loop, &c->flushd);
	ev_defer_cancel(c->loop, &c->readd);
	c->had_output = 0;
	c->loop = NULL;
	return 0;
}

/* conn_attach - a detached connection joins loop. */
void conn_attach(struct conn *c, struct ev_loop *loop)
{
	c->loop = loop;
	conn_update(c);
}

/* conn_fd - the socket (av.c reads clamd's last words after a failed write). */
int conn_fd(const struct conn *c)
{
	return c->fd;
}

/* conn_peer - peer address text. */
const char *conn_peer(const struct conn *c)
{
	return c->peer;
}
