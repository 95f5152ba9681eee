/*
 * conn.h - a buffered, non-blocking stream connection on an event loop,
 * used for client sessions and backend connections alike.
 *
 * Input: bytes read accumulate in an input buffer (allocated only while it
 * holds data, so idle connections cost little); on_read() is called while
 * reading is enabled and new data arrived; the owner consumes what it used
 * with conn_consume(). Output: conn_write() appends to an output buffer that
 * is flushed at the end of the current loop iteration, so replies to
 * pipelined commands leave in one write (RFC 2920 §3.1). on_drain() is
 * called once the output buffer is empty after having held data.
 *
 * Callbacks never run inside the conn_* call that caused them. After
 * conn_free() no callback runs. on_error(err) reports EOF (err 0), a socket
 * error (errno) or ETIMEDOUT (connect or idle timeout); the owner then
 * frees, except that after an idle timeout (reading was on) the owner may
 * still conn_write() a last reply and conn_shutdown() instead.
 */
#ifndef PERIMD_CONN_H
#define PERIMD_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct ev_loop;
struct conn;

struct conn_ops {
	void (*on_connect)(void *arg); /* conn_connect() completed */
	void (*on_read)(void *arg);
	void (*on_drain)(void *arg);          /* may be NULL */
	void (*on_error)(void *arg, int err); /* 0 = EOF, ETIMEDOUT, errno */
};

/* conn_new - wrap an accepted, non-blocking fd. Reading starts enabled. */
struct conn *conn_new(struct ev_loop *loop, int fd, const struct conn_ops *ops, void *arg);
/* conn_connect - non-blocking connect; on_connect or on_error(errno) follow
 * within timeout_ms (ETIMEDOUT). Returns NULL with errno set if the socket
 * cannot even be created. Sets TCP_NODELAY. */
struct conn *conn_connect(struct ev_loop *loop, const struct sockaddr *sa, socklen_t salen,
			  uint64_t timeout_ms, const struct conn_ops *ops, void *arg);
/* conn_free - close the fd and free; pending output is dropped. */
void conn_free(struct conn *c);

/* Input. */
const char *conn_rbuf(struct conn *c, size_t *len);
void conn_consume(struct conn *c, size_t n);
/* conn_read_enable - 0 pauses reading (asynchronous check in flight or
 * output backlog); 1 resumes; on resume on_read() runs again (deferred) if
 * unconsumed input is buffered. */
void conn_read_enable(struct conn *c, int on);
/* conn_discard_input - drop all buffered input (STARTTLS, RFC 3207 §4.2). */
void conn_discard_input(struct conn *c);

/* Output. */
void conn_write(struct conn *c, const void *data, size_t len);
void conn_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t conn_wpending(const struct conn *c);
/* conn_shutdown - stop reading; once pending output is flushed (or
 * after 10 s), on_error(0) is reported and the owner frees. */
void conn_shutdown(struct conn *c);

/* Timeouts: on_error(ETIMEDOUT) if no input arrives for ms while reading
 * is enabled (0 = none). Re-armed by every read. */
void conn_set_timeout(struct conn *c, uint64_t ms);

/* TLS (RFC 3207 STARTTLS, both sides). conn_starttls - from now on the
 * connection speaks TLS through engine t (tls.h), which it takes over (and
 * frees even on failure, returning -1). Output already queued leaves in
 * plaintext first; buffered input is discarded (RFC 3207 §4.2). During the
 * handshake the connection reads by itself, whatever conn_read_enable()
 * says, and the idle timeout bounds the handshake. Later cb(arg, 1, NULL)
 * reports success: on_read/conn_write then carry plaintext as before. Or
 * cb(arg, 0, why) reports failure (EOF, socket error, timeout, TLS alert):
 * no other callback follows and the owner frees. cb never runs inside
 * conn_starttls(). */
struct tls;
typedef void conn_tls_fn(void *arg, int ok, const char *why);
int conn_starttls(struct conn *c, struct tls *t, conn_tls_fn *cb);
/* conn_tls_describe - "TLSv1.2 with cipher ...", or "" without TLS. */
void conn_tls_describe(struct conn *c, char *buf, size_t len);
/* conn_tls_error - the BearSSL error code that ended TLS (0 = none, or the
 * failure was EOF, a socket error or a timeout); see tls_error_class(). */
int conn_tls_error(const struct conn *c);
/* conn_fd - the socket, for a last non-blocking read after an error. */
int conn_fd(const struct conn *c);

/* conn_detach - take an idle connection off its loop (call in that loop's
 * thread), so that another loop's thread can conn_attach() it: only when
 * nothing is buffered either way, no TLS handshake or close is under way,
 * it is not connecting, closing or reported, and no conn.c frame is on the
 * stack. 0 when detached (no callback runs until conn_attach), else -1
 * and nothing changed. */
int conn_detach(struct conn *c);
/* conn_attach - a detached connection now runs on loop (call in its
 * thread); reading as before. */
void conn_attach(struct conn *c, struct ev_loop *loop);

/* conn_peer - the peer address as text ("192.0.2.1" / "2001:db8::1"). */
const char *conn_peer(const struct conn *c);

#endif
