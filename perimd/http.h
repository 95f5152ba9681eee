/*
 * http.h - the small HTTP/1.x server behind stats_listen, its request
 * parser, and the client `perimd stats` / `perimd healthcheck` use.
 *
 * The server answers one GET per connection (RFC 9110 §9.3.1) and closes:
 * a request is at most HTTP_REQ_MAX bytes, a malformed one gets 400, any
 * other method 405, and every connection is closed within HTTP_TIMEOUT_MS.
 * All server functions MUST be called on the loop's thread.
 */
#ifndef PERIMD_HTTP_H
#define PERIMD_HTTP_H

#include "smtp_proto.h" /* enum parse_result */
#include "buf.h"        /* struct strbuf */

#include <stddef.h>

struct ev_loop;

#define HTTP_REQ_MAX 8192
#define HTTP_TIMEOUT_MS 10000

struct http_req {
	char method[16];
	char path[512]; /* without the query */
	int minor;      /* HTTP/1.minor */
};

/* http_request_parse - one request head (RFC 9112 §2-§5): request line,
 * header fields, empty line. PARSE_OK with *consumed = head length;
 * PARSE_AGAIN: need more bytes; PARSE_TOO_LONG: no end within
 * HTTP_REQ_MAX; PARSE_BAD: malformed, or a request with a body. Accepts
 * CRLF or a bare LF as line end (RFC 9112 §2.2). Pure. */
enum parse_result http_request_parse(const char *buf, size_t len, struct http_req *rq, size_t *consumed);

/* A request handler: fills body, returns the status; *ctype is the
 * Content-Type (a static string). */
typedef int http_handler(const struct http_req *rq, struct strbuf *body, const char **ctype);

/* http_response - append the whole answer to out: status line, headers
 * (Content-Type ctype, Content-Length len, no caching, Connection: close;
 * Allow with 405) and, unless head_only, the len bytes of body. The one
 * writer of responses: the server's and admin.c's "starting" 503. */
void http_response(struct strbuf *out, int status, const char *ctype, const char *body, size_t len,
		   int head_only);

/* http_server_start - serve fd (listening, non-blocking) on loop. */
void http_server_start(struct ev_loop *loop, int fd, http_handler *h);
/* http_server_stop - close the listener and every open connection. */
void http_server_stop(struct ev_loop *loop);

/* http_get - blocking client (command line only, never on a loop):
 * GET path from addr ("127.0.0.1:9125", "[::1]:9125"; a wildcard address
 * is asked on loopback). Returns 0 with *status and body, or -1 + err. */
int http_get(const char *addr, const char *path, int timeout_ms, int *status, struct strbuf *body, char *err,
	     size_t errlen);

#endif
