/*
 * http.c - a deliberately small HTTP/1.x server for stats_listen, and the
 * blocking client of the `perimd stats` / `healthcheck` commands.
 *
 * Invariants:
 * - Server side: one request per connection. The head is parsed by the
 *   pure http_request_parse() over the bytes buffered so far; the answer
 *   is written whole, then conn_shutdown() closes after the flush. Input
 *   beyond HTTP_REQ_MAX, garbage, or a body (GET has none; refusing it
 *   leaves no request smuggling to argue about) is answered 400 and
 *   closed. At most HTTP_MAX_CONNS connections at once: a new one closes
 *   the oldest still waiting for its request (more are closed at accept
 *   only while all are answering). Every connection is closed
 *   HTTP_TIMEOUT_MS after its accept, however slowly its bytes come, so
 *   none can be held open.
 * - All connections are in the server's list and freed by
 *   http_server_stop(); nothing outlives the loop.
 */
#include "http.h"
#include "clock.h"
#include "conn.h"
#include "ev.h"
#include "log.h"
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HTTP_MAX_CONNS 64

/* ---- the request parser ------------------------------------------------- */

/* is_tchar - a token character (RFC 9110 §5.6.2). */
static int is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* line_end - the end of the line starting at p (index of LF), or -1. */
static long line_end(const char *buf, size_t len, size_t p)
{
	const char *nl = memchr(buf + p, '\n', len - p);
	return nl ? nl - buf : -1;
}

/* http_request_parse - see http.h. */
enum parse_result http_request_parse(const char *buf, size_t len, struct http_req *rq, size_t *consumed)
{
	size_t scan = len > HTTP_REQ_MAX ? HTTP_REQ_MAX : len;
	long e = line_end(buf, scan, 0);
	if (e < 0)
		return len >= HTTP_REQ_MAX ? PARSE_TOO_LONG : PARSE_AGAIN;
	/* Request line: method SP request-target SP HTTP-version (§3). */
	size_t l = (size_t)e;
	if (l && buf[l - 1] == '\r')
		l--;
	size_t i = 0;
	while (i < l && is_tchar((unsigned char)buf[i]))
		i++;
	if (i == 0 || i >= sizeof rq->method || i >= l || buf[i] != ' ')
		return PARSE_BAD;
	memcpy(rq->method, buf, i);
	rq->method[i] = 0;
	size_t t = ++i;
	while (i < l && buf[i] != ' ') {
		unsigned char c = (unsigned char)buf[i];
		if (c <= ' ' || c >= 127)
			return PARSE_BAD;
		i++;
	}
	size_t tlen = i - t;
	if (tlen == 0 || buf[t] != '/' || i >= l)
		return PARSE_BAD;
	size_t plen = tlen;
	const char *q = memchr(buf + t, '?', tlen);
	if (q)
		plen = (size_t)(q - (buf + t));
	if (plen >= sizeof rq->path)
		return PARSE_BAD;
	memcpy(rq->path, buf + t, plen);
	rq->path[plen] = 0;
	i++;
	if (l - i != 8 || memcmp(buf + i, "HTTP/1.", 7) || (buf[i + 7] != '0' && buf[i + 7] != '1'))
		return PARSE_BAD;
	rq->minor = buf[i + 7] - '0';
	/* Header fields (§5) up to the empty line. */
	size_t p = (size_t)e + 1;
	for (;;) {
		if (p >= scan)
			return len >= HTTP_REQ_MAX ? PARSE_TOO_LONG : PARSE_AGAIN;
		e = line_end(buf, scan, p);
		if (e < 0)
			return len >= HTTP_REQ_MAX ? PARSE_TOO_LONG : PARSE_AGAIN;
		size_t end = (size_t)e;
		if (end > p && buf[end - 1] == '\r')
			end--;
		if (end == p) {
			*consumed = (size_t)e + 1;
			return PARSE_OK;
		}
		/* field-name ":" OWS field-value OWS; no obsolete folding (§5.2). */
		size_t n = p;
		while (n < end && is_tchar((unsigned char)buf[n]))
			n++;
		if (n == p || n >= end || buf[n] != ':')
			return PARSE_BAD;
		for (size_t k = n + 1; k < end; k++) {
			unsigned char c = (unsigned char)buf[k];
			if ((c < ' ' && c != '\t') || c == 127)
				return PARSE_BAD;
		}
		size_t nlen = n - p;
		if ((nlen == 14 && !strncasecmp(buf + p, "Content-Length", 14)) ||
		    (nlen == 17 && !strncasecmp(buf + p, "Transfer-Encoding", 17))) {
			size_t v = n + 1;
			while (v < end && (buf[v] == ' ' || buf[v] == '\t'))
				v++;
			if (nlen == 17 || end - v != 1 || buf[v] != '0')
				return PARSE_BAD;
		}
		p = (size_t)e + 1;
	}
}

/* ---- the server --------------------------------------------------------- */

struct hconn {
	struct hconn *next, *prev; /* newest first */
	struct http_server *srv;
	struct conn *c;
	struct ev_timer deadline; /* HTTP_TIMEOUT_MS from accept, however it trickles */
	int answered;
};

struct http_server {
	struct ev_loop *loop;
	struct ev_io io;
	int fd;
	http_handler *handler;
	struct hconn *conns;
	int nconns;
};

/* One server per process (stats_listen): kept here for http_server_stop. */
static struct http_server *server;

static const char *reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 400: return "Bad Request";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 503: return "Service Unavailable";
	default: return "Error";
	}
}

/* hconn_free - close and forget one connection. */
static void hconn_free(struct hconn *h)
{
	struct http_server *s = h->srv;
	ev_timer_stop(s->loop, &h->deadline);
	conn_free(h->c);
	if (h->prev)
		h->prev->next = h->next;
	else
		s->conns = h->next;
	if (h->next)
		h->next->prev = h->prev;
	s->nconns--;
	free(h);
}

/* http_response - see http.h. */
void http_response(struct strbuf *out, int status, const char *ctype, const char *body, size_t len,
		   int head_only)
{
	sb_printf(out,
		  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		  "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
		  status, reason(status), ctype, len, status == 405 ? "Allow: GET, HEAD\r\n" : "");
	if (!head_only && len)
		sb_add(out, body, len);
}

/* respond - the whole answer, then close once it is flushed. */
static void respond(struct hconn *h, int status, const char *ctype, const struct strbuf *body, int head_only)
{
	struct strbuf ans = { 0 };
	http_response(&ans, status, ctype, body->p, body->len, head_only);
	conn_write(h->c, ans.p, ans.len);
	sb_free(&ans);
	h->answered = 1;
	conn_shutdown(h->c);
}

/* respond_text - a short plain-text answer. */
static void respond_text(struct hconn *h, int status, const char *text)
{
	struct strbuf b = { 0 };
	sb_printf(&b, "%s\n", text);
	respond(h, status, "text/plain; charset=utf-8", &b, 0);
	sb_free(&b);
}

/* hconn_read - parse what came; answer once the head is complete. */
static void hconn_read(void *arg)
{
	struct hconn *h = arg;
	size_t len, used = 0;
	const char *buf = conn_rbuf(h->c, &len);
	if (h->answered) {
		conn_consume(h->c, len);
		return;
	}
	struct http_req rq;
	enum parse_result r = http_request_parse(buf, len, &rq, &used);
	if (r == PARSE_AGAIN)
		return;
	conn_consume(h->c, len);
	if (r != PARSE_OK) {
		respond_text(h, 400, "bad request");
		return;
	}
	int head = !strcmp(rq.method, "HEAD");
	if (strcmp(rq.method, "GET") && !head) {
		respond_text(h, 405, "only GET");
		return;
	}
	struct strbuf body = { 0 };
	const char *ctype = "text/plain; charset=utf-8";
	int status = h->srv->handler(&rq, &body, &ctype);
	respond(h, status, ctype, &body, head);
	sb_free(&body);
}

/* hconn_error - EOF, error, timeout, or closed after the answer. */
static void hconn_error(void *arg, int err)
{
	(void)err;
	hconn_free(arg);
}

static const struct conn_ops hconn_ops = {
	.on_read = hconn_read,
	.on_error = hconn_error,
};

/* hconn_deadline - the connection's whole time is up: close it, even if
 * bytes keep trickling in (the idle timeout alone would let a client
 * that sends a byte every few seconds hold it for hours). */
static void hconn_deadline(void *arg)
{
	hconn_free(arg);
}

/* make_room - at HTTP_MAX_CONNS, close the oldest connection still
 * waiting for its request, so that idle or trickling clients cannot keep
 * a health check out; 0 if there is room, -1 if every one is answering. */
static int make_room(struct http_server *s)
{
	if (s->nconns < HTTP_MAX_CONNS)
		return 0;
	struct hconn *oldest = NULL;
	for (struct hconn *h = s->conns; h; h = h->next)
		if (!h->answered)
			oldest = h;
	if (!oldest)
		return -1;
	hconn_free(oldest);
	return 0;
}

/* http_accept - take pending connections. */
static void http_accept(void *arg, unsigned events)
{
	struct http_server *s = arg;
	(void)events;
	for (int i = 0; i < 64; i++) {
		int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		if (make_room(s) < 0) {
			close(fd);
			continue;
		}
		struct hconn *h = xcalloc(1, sizeof *h);
		h->srv = s;
		h->c = conn_new(s->loop, fd, &hconn_ops, h);
		conn_set_timeout(h->c, HTTP_TIMEOUT_MS);
		ev_timer_start(s->loop, &h->deadline, HTTP_TIMEOUT_MS, hconn_deadline, h);
		h->next = s->conns;
		if (h->next)
			h->next->prev = h;
		s->conns = h;
		s->nconns++;
	}
}

/* http_server_start - see http.h. */
void http_server_start(struct ev_loop *loop, int fd, http_handler *h)
{
	struct http_server *s = xcalloc(1, sizeof *s);
	s->loop = loop;
	s->fd = fd;
	s->handler = h;
	ev_io_init(&s->io, fd, http_accept, s);
	ev_io_set(loop, &s->io, EV_READ);
	server = s;
}

/* http_server_stop - see http.h. */
void http_server_stop(struct ev_loop *loop)
{
	struct http_server *s = server;
	if (!s)
		return;
	ev_io_stop(loop, &s->io);
	close(s->fd);
	while (s->conns)
		hconn_free(s->conns);
	free(s);
	server = NULL;
}

/* ---- the client --------------------------------------------------------- */

/* wait_fd - poll one fd until the deadline; 0 ready, -1 timeout/error. */
static int wait_fd(int fd, short ev, long long deadline)
{
	for (;;) {
		long long left = deadline - clock_ms();
		if (left <= 0)
			return -1;
		struct pollfd p = { .fd = fd, .events = ev };
		int r = poll(&p, 1, (int)left);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

/* http_get - see http.h. */
int http_get(const char *addr, const char *path, int timeout_ms, int *status, struct strbuf *body, char *err,
	     size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	if (net_parse_addr(addr, 9125, &ss, &sl, &why) < 0) {
		snprintf(err, errlen, "%s: %s", addr, why);
		return -1;
	}
	/* A wildcard listener is asked on loopback. */
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		if (a->sin_addr.s_addr == htonl(INADDR_ANY))
			a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
			a->sin6_addr = in6addr_loopback;
	}
	long long deadline = clock_ms() + timeout_ms;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	int rc = -1;
	struct strbuf in = { 0 };
	if (connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS) {
		snprintf(err, errlen, "connect %s: %s", addr, strerror(errno));
		goto out;
	}
	int soerr = 0;
	socklen_t elen = sizeof soerr;
	if (wait_fd(fd, POLLOUT, deadline) < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &elen) < 0 ||
	    soerr) {
		snprintf(err, errlen, "connect %s: %s", addr, soerr ? strerror(soerr) : "timeout");
		goto out;
	}
	char req[1024];
	int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: perimd\r\n\r\n", path);
	if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		snprintf(err, errlen, "send to %s: %s", addr, strerror(errno));
		goto out;
	}
	for (;;) {
		char buf[16384];
		if (wait_fd(fd, POLLIN, deadline) < 0) {
			snprintf(err, errlen, "%s: no answer in time", addr);
			goto out;
		}
		ssize_t r = recv(fd, buf, sizeof buf, 0);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (r < 0) {
			snprintf(err, errlen, "recv from %s: %s", addr, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		if (in.len + (size_t)r > 64u << 20) {
			snprintf(err, errlen, "%s: answer too large", addr);
			goto out;
		}
		sb_add(&in, buf, (size_t)r);
	}
	const char *hdr_end = in.p ? strstr(in.p, "\r\n\r\n") : NULL;
	if (!hdr_end || in.len < 12 || strncmp(in.p, "HTTP/1.", 7) || in.p[8] != ' ') {
		snprintf(err, errlen, "%s: not an HTTP answer", addr);
		goto out;
	}
	*status = atoi(in.p + 9);
	hdr_end += 4;
	sb_add(body, hdr_end, in.len - (size_t)(hdr_end - in.p));
	rc = 0;
out:
	sb_free(&in);
	close(fd);
	return rc;
}
