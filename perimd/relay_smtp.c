/*
 * relay_smtp.c - the SMTP dialogue with one backend connection: the
 * envelope replayed (pipelined when offered), the body streamed
 * dot-stuffed, STARTTLS on the way, and each reply turned into the next
 * step or the request's outcome. Routing, pools and failover are relay.c's
 * (relay_int.h is what the two share).
 *
 * Invariants (see also relay.c):
 * - Every reply is read in the state that asked for it; an unexpected one
 *   puts the connection in an unknown state, so it is closed, not pooled.
 * - The body is sent only after every RCPT reply is in, so a partly
 *   refused envelope never gets a body; once the final dot is written the
 *   message is never replayed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"
#include "conf.h"
#include "conn.h"
#include "log.h"
#include "net.h"
#include "relay_int.h"
#include "smtp_proto.h"
#include "spool.h"
#include "stats.h"
#include "tls.h"
#include "verify.h"

/* ---- the transaction ---------------------------------------------------- */

/* send_rcpt - RCPT TO with DSN parameters when offered (RFC 3461 §4). */
static void send_rcpt(struct bconn *b, const struct relay_rcpt *rc)
{
	if (b->caps & SMTP_CAP_DSN)
		conn_printf(b->c, "RCPT TO:<%s>%s%s%s%s\r\n", rc->addr, rc->notify ? " NOTIFY=" : "",
			    rc->notify ? rc->notify : "", rc->orcpt ? " ORCPT=" : "",
			    rc->orcpt ? rc->orcpt : "");
	else
		conn_printf(b->c, "RCPT TO:<%s>\r\n", rc->addr);
}

/* send_mail - MAIL FROM, and with PIPELINING every RCPT after it (RFC
 * 2920 §3.1: MAIL and RCPT may be grouped; DATA is sent only once every
 * RCPT reply is in, so a partly refused envelope never gets a body). */
static void send_mail(struct relay_req *r)
{
	struct bconn *b = r->b;
	const struct relay_msg *m = r->msg;
	char size[40] = "";

	if ((b->caps & SMTP_CAP_SIZE) && m->size) /* RFC 1870 §6; unknown yet for a stream */
		snprintf(size, sizeof(size), " SIZE=%llu", (unsigned long long)m->size);
	conn_printf(b->c, "MAIL FROM:<%s>%s%s%s%s%s%s%s\r\n", m->sender, size,
		    r->send_body8 ? " BODY=8BITMIME" : "", m->smtputf8 ? " SMTPUTF8" : "",
		    (b->caps & SMTP_CAP_DSN) && m->ret ? " RET=" : "",
		    (b->caps & SMTP_CAP_DSN) && m->ret ? m->ret : "",
		    (b->caps & SMTP_CAP_DSN) && m->envid ? " ENVID=" : "",
		    (b->caps & SMTP_CAP_DSN) && m->envid ? m->envid : "");
	if (b->caps & SMTP_CAP_PIPELINING)
		for (int i = 0; i < m->nrcpt; i++)
			send_rcpt(b, &m->rcpts[i]);
}

/* host_listed - is the backend in l (relay_xforward_hosts, relay_xclient_hosts)? */
static int host_listed(const struct conf_list *l, const struct relay_dest *d)
{
	for (int i = 0; i < l->n; i++)
		if (net_addr_match(d->addr, l->v[i]))
			return 1;
	return 0;
}

/* client_values - the client's attributes for XFORWARD and XCLIENT, by
 * enum smtp_xf_attr (addr and port hold the formatted values). */
static void client_values(const struct relay_req *r, const char *val[SMTP_XF_COUNT], char *addr,
			  size_t addrlen, char *port, size_t portlen)
{
	const struct relay_client *cl = r->msg->client;

	snprintf(addr, addrlen, "%s%s", cl->addr && strchr(cl->addr, ':') ? "IPv6:" : "",
		 cl->addr ? cl->addr : "");
	snprintf(port, portlen, "%d", cl->port);
	val[SMTP_XF_NAME] = cl->name;
	val[SMTP_XF_ADDR] = cl->addr ? addr : NULL;
	val[SMTP_XF_PORT] = cl->port > 0 ? port : NULL;
	val[SMTP_XF_PROTO] = cl->esmtp ? "ESMTP" : "SMTP";
	val[SMTP_XF_HELO] = cl->helo && cl->helo[0] ? cl->helo : NULL;
	val[SMTP_XF_IDENT] = r->msg->id;
	val[SMTP_XF_SOURCE] = "REMOTE";
}

/* xforward_usable - will this transaction send XFORWARD? */
static int xforward_usable(const struct bconn *b, const struct relay_req *r)
{
	return r->msg->client && (b->caps & SMTP_CAP_XFORWARD) && b->xfattrs && !b->xf_refused &&
	    host_listed(&r->msg->conf->relay_xforward_hosts, r->dest);
}

/* xforward_start - the client's attributes by XFORWARD before MAIL, when
 * the backend offers it and is allowed to get it (Postfix XFORWARD_README:
 * they are reset at the end of each transaction, so every transaction on
 * a pooled connection sends them again). With PIPELINING the commands,
 * MAIL and the RCPTs go together; without it one command at a time.
 * Returns 1 when XFORWARD went out (state B_XFORWARD), 0 when not. */
static int xforward_start(struct relay_req *r)
{
	struct bconn *b = r->b;
	const struct relay_msg *m = r->msg;
	char addr[INET6_ADDRSTRLEN + 8], port[16];
	const char *val[SMTP_XF_COUNT];

	if (!xforward_usable(b, r))
		return 0;
	client_values(r, val, addr, sizeof(addr), port, sizeof(port));
	if (!r->xf_buf)
		r->xf_buf = xmalloc(SMTP_XFORWARD_BUF);
	r->xf_cmds = smtp_xforward_format("XFORWARD", val, b->xfattrs, r->xf_buf, SMTP_XFORWARD_BUF);
	r->xf_replies = 0;
	if (r->xf_cmds <= 0)
		return 0;
	if (b->caps & SMTP_CAP_PIPELINING) {
		conn_write(b->c, r->xf_buf, strlen(r->xf_buf));
		send_mail(r);
	} else {
		conn_write(b->c, r->xf_buf, strcspn(r->xf_buf, "\n") + 1);
	}
	bconn_stage(b, B_XFORWARD, req_remaining(r, (uint64_t)m->conf->relay_timeout));
	return 1;
}

/* xclient_start - after EHLO on a new connection: XCLIENT (Postfix
 * XCLIENT_README) when the backend offers it, is in relay_xclient_hosts
 * and does not take XFORWARD, which is preferred (XCLIENT makes the
 * backend judge the client itself, and the connection can serve no other
 * client). One command only: the backend's next one comes from the new
 * identity; HELO, then NAME, are left out when all does not fit in 512
 * octets. Returns 1 when XCLIENT went out (state B_XCLIENT). */
static int xclient_start(struct bconn *b, struct relay_req *r)
{
	const struct conf *cf = r->msg->conf;
	char addr[INET6_ADDRSTRLEN + 8], port[16], buf[SMTP_XFORWARD_BUF];
	const char *val[SMTP_XF_COUNT];
	unsigned attrs = b->xcattrs & ~(SMTP_XF_BIT(SMTP_XF_IDENT) | SMTP_XF_BIT(SMTP_XF_SOURCE));
	int n;

	if (!r->msg->client || b->xclient || !(b->caps & SMTP_CAP_XCLIENT) || !attrs ||
	    xforward_usable(b, r) || !host_listed(&cf->relay_xclient_hosts, r->dest))
		return 0;
	client_values(r, val, addr, sizeof(addr), port, sizeof(port));
	n = smtp_xforward_format("XCLIENT", val, attrs, buf, sizeof(buf));
	if (n > 1) {
		attrs &= ~SMTP_XF_BIT(SMTP_XF_HELO);
		n = smtp_xforward_format("XCLIENT", val, attrs, buf, sizeof(buf));
	}
	if (n > 1) {
		attrs &= ~SMTP_XF_BIT(SMTP_XF_NAME);
		n = smtp_xforward_format("XCLIENT", val, attrs, buf, sizeof(buf));
	}
	if (n != 1)
		return 0;
	conn_write(b->c, buf, strlen(buf));
	bconn_stage(b, B_XCLIENT, req_remaining(r, (uint64_t)cf->relay_timeout));
	return 1;
}

/* xclient_reply - the reply to XCLIENT: 220 is a new greeting, so EHLO
 * again; a refusal is logged and the message goes on without; 421 fails
 * over. Returns -1 when b is gone. */
static int xclient_reply(struct bconn *b, struct relay_req *r, const struct smtp_reply *rep, const char *said)
{
	const struct conf *cf = r->msg->conf;
	char why[600];

	if (rep->code == 421) {
		snprintf(why, sizeof(why), "XCLIENT: %s", said);
		req_failover(r, why);
		return -1;
	}
	if (rep->code / 100 == 2) {
		b->xclient = 1;
		conn_printf(b->c, "EHLO %s\r\n", cf->myhostname[0] ? cf->myhostname : "localhost");
		bconn_stage(b, B_EHLO, req_remaining(r, (uint64_t)cf->relay_timeout));
		return 0;
	}
	log_warn("%s: backend %s: XCLIENT refused, going on without it: %s", r->msg->id ? r->msg->id : "-",
		 r->dest->name, said);
	b->xclient = -1;
	b->state = B_READY;
	ev_timer_stop(r->rl->loop, &b->tmr);
	txn_start(r);
	return 0;
}

/* xforward_reply - one reply to XFORWARD. A refusal is logged and the
 * message goes on without (the backend then logs perimd as the client);
 * 421 means the backend is closing: the next backend is tried. Returns -1
 * when b is gone. */
static int xforward_reply(struct bconn *b, const struct smtp_reply *rep, const char *said)
{
	struct relay_req *r = b->req;
	int pipelined = (b->caps & SMTP_CAP_PIPELINING) != 0;
	char why[600];

	r->xf_replies++;
	if (rep->code == 421) {
		snprintf(why, sizeof(why), "XFORWARD: %s", said);
		req_failover(r, why);
		return -1;
	}
	if (rep->code / 100 != 2 && !b->xf_refused) {
		log_warn("%s: backend %s: XFORWARD refused, going on without it: %s",
			 r->msg->id ? r->msg->id : "-", r->dest->name, said);
		b->xf_refused = 1;
	}
	if (r->xf_replies < r->xf_cmds) {
		if (!pipelined && !b->xf_refused) {
			/* the next command: after the r->xf_replies-th line */
			const char *p = r->xf_buf;

			for (int i = 0; i < r->xf_replies; i++)
				p = strchr(p, '\n') + 1;
			conn_write(b->c, p, strcspn(p, "\n") + 1);
		}
		if (pipelined || !b->xf_refused) {
			bconn_stage(b, B_XFORWARD, req_remaining(r, (uint64_t)r->msg->conf->relay_timeout));
			return 0;
		}
	}
	if (!pipelined)
		send_mail(r);
	bconn_stage(b, B_MAIL, req_remaining(r, (uint64_t)r->msg->conf->relay_timeout));
	return 0;
}

/* txn_start - replay the envelope on an attached, ready connection. */
void txn_start(struct relay_req *r)
{
	struct bconn *b = r->b;
	const struct relay_msg *m = r->msg;

	if (b->making)
		bconn_made(b);
	if (r->release < 0) { /* refused while a connection was set up */
		req_abandon(r);
		return;
	}
	r->nreplies = 0;
	r->naccept = 0;
	r->chunked = 0;
	r->in_data = r->final_sent = r->starved = 0;
	r->bdat_sent = r->bdat_acked = 0;
	b->idle_ms = (uint64_t)m->conf->relay_idle_timeout;
	r->first_refused = -1;
	r->body_off = 0;
	r->stuff = (struct smtp_stuff){ .at_line_start = 1 };
	/* A failed backend's reply is not this one's (the to= log lines). */
	r->res.backend_reply[0] = '\0';
	for (int i = 0; i < m->nrcpt; i++) {
		m->rcpts[i].code = 0;
		m->rcpts[i].reply[0] = '\0';
	}
	/* RFC 6531 §3.4: no SMTPUTF8 downgrade. RFC 6152 §3: 8-bit content
	 * only to a server that offers 8BITMIME. A backend without them is
	 * skipped for this message; the client is refused only when no
	 * backend has them (req_capmiss). */
	if (m->smtputf8 && !(b->caps & SMTP_CAP_SMTPUTF8)) {
		req_capmiss(r, SMTP_CAP_SMTPUTF8);
		return;
	}
	r->send_body8 = 0;
	if (m->body_8bit) {
		if (b->caps & SMTP_CAP_8BITMIME) {
			r->send_body8 = 1;
		} else {
			/* A body still arriving may yet hold 8-bit bytes. */
			if (r->has8bit < 0)
				r->has8bit = m->stream ? 1 : req_body_has_8bit(r);
			if (r->has8bit) {
				req_capmiss(r, SMTP_CAP_8BITMIME);
				return;
			}
		}
	}
	b->ntxn++;
	if (xforward_start(r))
		return;
	send_mail(r);
	bconn_stage(b, B_MAIL, req_remaining(r, (uint64_t)m->conf->relay_timeout));
}

/* body_next - the next stored bytes at r->body_off, at most RELAY_CHUNK
 * (in place, or read into r->scratch): their count, or 0 when the spool
 * cannot be read (the request has then failed). */
static size_t body_next(struct relay_req *r, const void **p)
{
	struct spool *s = r->msg->body;
	size_t n;

	if (!r->scratch)
		r->scratch = buf_spare_take(BUF_SPARE_RELAY, 3 * RELAY_CHUNK, &(size_t){ 0 });
	if (!r->scratch)
		r->scratch = xmalloc(3 * RELAY_CHUNK);
	n = spool_peek(s, r->body_off, p);
	if (n == 0) {
		ssize_t k = spool_read(s, r->body_off, r->scratch, RELAY_CHUNK);

		if (k <= 0) {
			req_detach(r, 0);
			req_fail(r, 451, "4.3.0", "local error reading the stored message");
			return 0;
		}
		*p = r->scratch;
		n = (size_t)k;
	}
	return n > RELAY_CHUNK ? RELAY_CHUNK : n;
}

/* stream_wait - a streamed body (relay_while_receiving) is sent as far as
 * it was received, or at least as far as a chunk is worth, and more is to
 * come: wait in state st for relay_stream_more(), no longer than
 * RELAY_STREAM_STALL_MS once the backend has all we sent (then the stall
 * is the client's: bconn_timeout gives the stream up), nor past
 * RELAY_STREAM_MAX_MS since it began. A stream waiting for its client
 * gives its connection up at once to a complete message waiting for one
 * (else a client dripping its body under the stall bound would hold it
 * and the waiting message get 451 at relay_pool_wait); one stream per
 * waiter: a connection reset for it is counted in dest->yielding until
 * handed on, one closed (inside DATA) frees a slot, which the waiter
 * takes (relay_dest_unserved). -1 when the request ended. */
static int stream_wait(struct relay_req *r, enum bstate st)
{
	struct bconn *b = r->b;
	uint64_t now = ev_now(r->rl->loop);

	if (now - r->t_start > RELAY_STREAM_MAX_MS) {
		req_stream_end(r, 1);
		return -1;
	}
	r->starved = conn_wpending(b->c) == 0;
	if (r->starved && relay_dest_unserved(r->dest)) {
		log_info("%s: backend %s: the stream gives its connection to a message waiting for one",
			 r->msg->id ? r->msg->id : "-", r->dest->name);
		b->yielded = 1;
		atomic_fetch_add(&r->dest->yielding, 1);
		req_stream_end(r, 1);
		return -1;
	}
	bconn_stage(
	    b, st,
	    req_remaining(r, r->starved ? RELAY_STREAM_STALL_MS : (uint64_t)r->msg->conf->relay_timeout));
	return 0;
}

/* stream_end_point - a streamed body in DATA is all sent: wait for more,
 * for the verdict (B_HOLD), abandon it (the connection closed: RSET would
 * be body text), or go on to the final dot (0). Not a stream: 0. */
static int stream_end_point(struct relay_req *r)
{
	const struct relay_msg *m = r->msg;

	if (!m->stream)
		return 0;
	if (r->release < 0) {
		req_abandon(r);
		return -1;
	}
	if (m->growing) {
		stream_wait(r, B_BODY);
		return -1;
	}
	if (r->release == 0) {
		bconn_stage(r->b, B_HOLD, req_remaining(r, UINT64_MAX));
		return -1;
	}
	return 0;
}

/* body_fill - stream the stored body, dot-stuffed (RFC 5321 §4.5.2), keeping
 * about RELAY_WINDOW bytes queued; the final ".\r\n" goes with the last
 * chunk (for a stream: once the body is whole and relay_release() said go).
 * Each refill re-arms the stage timer. */
void body_fill(struct bconn *b)
{
	struct relay_req *r = b->req;
	uint64_t size = spool_size(r->msg->body);
	const struct conf *cf = r->msg->conf;

	r->starved = 0;
	if (r->msg->stream && r->release < 0) {
		req_abandon(r);
		return;
	}
	while (conn_wpending(b->c) < RELAY_WINDOW && r->body_off < size) {
		const void *p;
		size_t n = body_next(r, &p), used;

		if (n == 0)
			return;
		/* Lines over smtp_line_length_limit are folded on the way. */
		size_t out = smtp_dot_stuff_fold(p, n, &used, &r->stuff, (size_t)cf->smtp_line_length_limit,
						 r->scratch + RELAY_CHUNK, 2 * RELAY_CHUNK);
		conn_write(b->c, r->scratch + RELAY_CHUNK, out);
		r->body_off += used;
	}
	if (r->body_off < size) {
		bconn_stage(b, B_BODY, req_remaining(r, (uint64_t)cf->relay_timeout));
		return;
	}
	if (stream_end_point(r) < 0)
		return;
	/* The canonical body ends in CRLF; one that does not gets it, so the
	 * dot is on a line of its own (RFC 5321 §4.1.1.4). */
	if (!r->stuff.at_line_start)
		conn_write(b->c, "\r\n.\r\n", 5);
	else
		conn_write(b->c, ".\r\n", 3);
	r->final_sent = 1;
	bconn_stage(b, B_DOT, req_remaining(r, (uint64_t)cf->relay_data_done_timeout));
}

/* txn_complete - the verdict is clean: end the transaction. With CHUNKING
 * `BDAT 0 LAST` (RFC 3030 §2; a CRLF the canonical body lacked goes in it,
 * as the DATA path adds one before the dot); else DATA, then the body. */
static void txn_complete(struct relay_req *r)
{
	struct bconn *b = r->b;
	const struct conf *cf = r->msg->conf;

	if (r->in_data) { /* a stream inside DATA: the final dot */
		body_fill(b);
		return;
	}
	if (!r->chunked) {
		conn_write(b->c, "DATA\r\n", 6);
		bconn_stage(b, B_DATA, req_remaining(r, (uint64_t)cf->relay_timeout));
		return;
	}
	if (!r->stuff.at_line_start)
		conn_write(b->c, "BDAT 2 LAST\r\n\r\n", 15);
	else
		conn_write(b->c, "BDAT 0 LAST\r\n", 13);
	r->final_sent = 1;
	bconn_stage(b, B_DOT, req_remaining(r, (uint64_t)cf->relay_data_done_timeout));
}

/* req_hold_point - see relay_int.h. The wait has no timer but the
 * message's deadline: the scan has its own (av_timeout). */
int req_hold_point(struct relay_req *r)
{
	if (r->release < 0) {
		req_abandon(r);
		return -1;
	}
	if (r->release == 0) {
		bconn_stage(r->b, B_HOLD, req_remaining(r, UINT64_MAX));
		return 0;
	}
	txn_complete(r);
	return 0;
}

/* bconn_bdat_fill - the body as BDAT chunks (RFC 3030 §2): not dot-stuffed,
 * folded as the DATA path folds (smtp_line_length_limit), about
 * RELAY_WINDOW bytes queued; pipelined with PIPELINING (RFC 3030 §2),
 * else one chunk per reply. Once every chunk is answered the transaction
 * waits at its hold point: LAST only goes with a clean verdict. */
int bconn_bdat_fill(struct bconn *b)
{
	struct relay_req *r = b->req;
	const struct relay_msg *m = r->msg;
	uint64_t size = spool_size(m->body);
	const struct conf *cf = m->conf;
	int pipelined = (b->caps & SMTP_CAP_PIPELINING) != 0;

	r->starved = 0;
	/* Once refused (relay_release(r, 0)) no more chunks: RSET comes as
	 * soon as those sent are answered. A body still arriving goes in
	 * chunks of RELAY_STREAM_MIN_CHUNK at least. */
	while (conn_wpending(b->c) < RELAY_WINDOW && r->body_off < size && r->release >= 0 &&
	       (pipelined || r->bdat_sent == r->bdat_acked) &&
	       !(m->growing && size - r->body_off < RELAY_STREAM_MIN_CHUNK)) {
		const void *p;
		size_t n = body_next(r, &p), used;

		if (n == 0)
			return -1;
		size_t out = smtp_dot_stuff_fold(p, n, &used, &r->stuff, (size_t)cf->smtp_line_length_limit,
						 r->scratch + RELAY_CHUNK, 2 * RELAY_CHUNK);
		conn_printf(b->c, "BDAT %zu\r\n", out);
		conn_write(b->c, r->scratch + RELAY_CHUNK, out);
		r->body_off += used;
		r->bdat_sent++;
	}
	if (((r->body_off >= size && !m->growing) || r->release < 0) && r->bdat_acked == r->bdat_sent)
		return req_hold_point(r);
	if (m->growing && r->bdat_acked == r->bdat_sent &&
	    (r->body_off >= size || size - r->body_off < RELAY_STREAM_MIN_CHUNK))
		return stream_wait(r, B_BDAT);
	bconn_stage(b, B_BDAT, req_remaining(r, (uint64_t)cf->relay_timeout));
	return 0;
}

/* bdat_reply - the reply to one BDAT chunk. A refusal ends the message:
 * 5xx is passed on, 4xx fails over (nothing was completed); the
 * connection is reset and pooled only when no other chunk's reply is
 * still due. 500 to 504 (RFC 5321 §4.2.3: syntax, not implemented, bad
 * sequence) say the backend does not take BDAT although it offered
 * CHUNKING, nothing about the message: they fail over as 4xx does, never
 * bounce it. Returns -1 when the request ended. */
static int bdat_reply(struct bconn *b, const struct smtp_reply *rep, const char *said)
{
	struct relay_req *r = b->req;
	char why[600];

	r->bdat_acked++;
	if (rep->code / 100 == 2)
		return bconn_bdat_fill(b);
	if (rep->code > 504) {
		req_pass_on(r, rep, said, NULL);
		relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), said);
		req_end(r, r->bdat_acked == r->bdat_sent, "rejected", said);
		return -1;
	}
	snprintf(why, sizeof(why), "BDAT: %s", said);
	req_failover(r, why);
	return -1;
}

/* rcpts_done - every RCPT reply is in: DATA, or the verdict. */
static void rcpts_done(struct bconn *b)
{
	struct relay_req *r = b->req;
	struct relay_msg *m = r->msg;
	const struct conf *cf = m->conf;

	if (m->verify_only) {
		/* A callout: the RCPT reply is the verdict; RSET and pool. */
		if (r->naccept == m->nrcpt)
			req_set(r, 250, "2.1.5", "recipient verified by backend%s", req_who(r));
		else
			req_pass_on(r, &r->refusal, m->rcpts[0].reply, NULL);
		req_detach(r, r->naccept == m->nrcpt || m->rcpts[0].code != 421);
		req_finish(r);
		return;
	}
	if (r->naccept == m->nrcpt && (m->hold || m->stream)) {
		/* relay_scan_overlap, relay_while_receiving: the body goes now
		 * as BDAT chunks, which RSET can still take back. Without
		 * CHUNKING the overlap's DATA waits for the verdict; a stream
		 * goes inside DATA (abandoned by closing the connection). */
		if (b->caps & SMTP_CAP_CHUNKING) {
			r->chunked = 1;
			r->stuff = (struct smtp_stuff){ .at_line_start = 1, .nodot = 1 };
			bconn_bdat_fill(b);
			return;
		}
		if (m->hold) {
			req_hold_point(r);
			return;
		}
	}
	if (r->naccept == m->nrcpt) {
		conn_write(b->c, "DATA\r\n", 6);
		bconn_stage(b, B_DATA, req_remaining(r, (uint64_t)cf->relay_timeout));
		return;
	}
	/* Refusals are cached so the client's retry meets them at RCPT
	 * (DESIGN.md "Replies"; what is kept for whom: verify.h). */
	for (int i = 0; i < m->nrcpt; i++)
		verify_learn(m->sender, m->rcpts[i].addr, m->rcpts[i].code, m->rcpts[i].reply,
			     r->naccept > 0 ? VERIFY_OTHERS_ACCEPTED : 0, cf);
	if (r->naccept > 0) {
		req_set(r, 451, "4.5.0", "some recipients were refused by the backend%s; retry", req_who(r));
		req_end(r, 1, "deferred", "recipients partly refused");
		return;
	}
	/* All refused: pass the first refusal on. */
	struct relay_rcpt *rc = &m->rcpts[r->first_refused];
	req_pass_on(r, &r->refusal, rc->reply, rc->code == 550 ? "5.1.1" : NULL);
	relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), rc->reply);
	req_end(r, rc->code != 421, rc->code >= 500 ? "rejected" : "deferred", rc->reply);
}

/* mail_refused - the MAIL reply was not 2xx (all replies consumed). */
static void mail_refused(struct bconn *b)
{
	struct relay_req *r = b->req;
	char why[600];

	/* 5xx is the backend's verdict on the sender: pass it on. 4xx (421
	 * too) says nothing about the message: another backend may take it. */
	if (r->mail_rep.code >= 500) {
		req_pass_on(r, &r->mail_rep, r->mail_said, NULL);
		relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), r->mail_said);
		req_end(r, 1, "rejected", r->mail_said);
		return;
	}
	snprintf(why, sizeof(why), "MAIL FROM refused: %s", r->mail_said);
	req_failover(r, why);
}

/* bconn_tls_begin - after EHLO: STARTTLS per relay_tls_security_level.
 * Returns 1 when STARTTLS was sent, 0 to go on in plaintext, -1 when the
 * request failed over. */
static int bconn_tls_begin(struct bconn *b, struct relay_req *r)
{
	const struct conf *cf = r->msg->conf;
	enum tls_level lv = tls_level_of(cf->relay_tls_security_level_e);

	if (lv == TLS_NONE)
		return 0;
	if (!(b->caps & SMTP_CAP_STARTTLS)) {
		if (lv == TLS_MAY)
			return 0;
		req_failover(r, "STARTTLS not offered, and relay_tls_security_level requires TLS");
		return -1;
	}
	conn_write(b->c, "STARTTLS\r\n", 10);
	bconn_stage(b, B_STARTTLS, req_remaining(r, (uint64_t)cf->relay_timeout));
	return 1;
}

/* bconn_tls_done - the handshake with the backend ended: EHLO again
 * (RFC 3207 §4.2: the server forgot everything), or fail over. */
static void bconn_tls_done(void *arg, int ok, const char *why)
{
	struct bconn *b = arg;
	struct relay_req *r = b->req;
	char text[300];

	if (!ok) {
		int err = conn_tls_error(b->c);

		log_info("%s: backend %s: TLS handshake failed: reason=%s (%s)",
			 r && r->msg->id ? r->msg->id : "-", b->pool->dest->name,
			 err ? tls_error_class(err) : "io", why);
		tls_count(0, 0, err ? tls_error_class(err) : "io");
		snprintf(text, sizeof(text), "TLS handshake failed: %s", why);
		bconn_fail(b, text);
		return;
	}
	b->tls = 1;
	b->rseen = 0; /* what was buffered before the handshake is gone */
	tls_count(0, 1, NULL);
	conn_tls_describe(b->c, text, sizeof(text));
	log_info("%s: backend %s: TLS established: %s", r && r->msg->id ? r->msg->id : "-",
		 b->pool->dest->name, text);
	if (!r) {
		bconn_close(b, 0);
		return;
	}
	conn_printf(b->c, "EHLO %s\r\n", r->msg->conf->myhostname[0] ? r->msg->conf->myhostname : "localhost");
	bconn_stage(b, B_EHLO, req_remaining(r, (uint64_t)r->msg->conf->relay_timeout));
}

/* bconn_tls_reply - the reply to STARTTLS: start the handshake (anything
 * the backend sent after its 220 is dropped), go on in plaintext (may), or
 * fail over. Returns 0 to read on, -1 to stop reading. */
static int bconn_tls_reply(struct bconn *b, struct relay_req *r, const struct smtp_reply *rep, const char *said)
{
	const struct conf *cf = r->msg->conf;
	enum tls_level lv = tls_level_of(cf->relay_tls_security_level_e);
	char why[600];

	if (rep->code != 220) {
		if (lv == TLS_MAY) {
			b->state = B_READY;
			ev_timer_stop(r->rl->loop, &b->tmr);
			txn_start(r);
			return 0;
		}
		snprintf(why, sizeof(why), "STARTTLS: %s", said);
		req_failover(r, why);
		return -1;
	}
	if (lv == TLS_VERIFY && !cf->relay_tls_verify_name[0]) {
		req_failover(r, "no name to verify the certificate against (set relay_tls_verify_name)");
		return -1;
	}
	struct tls_client *tc = tls_client_acquire();

	if (!tc) {
		req_failover(r, "TLS is not configured");
		return -1;
	}
	struct tls *t =
	    tls_new_client(tc, lv == TLS_VERIFY ? TLS_VERIFY : TLS_ENCRYPT, cf->relay_tls_verify_name);

	tls_client_release(tc);
	bconn_stage(b, B_TLS, req_remaining(r, (uint64_t)cf->relay_timeout));
	if (conn_starttls(b->c, t, bconn_tls_done) < 0) {
		req_failover(r, "cannot start TLS");
		return -1;
	}
	return -1;
}

/* wrong_class - a reply of a class not due now (a 354 to RCPT or after the
 * final dot, any 1yz): the backend is out of step, so nothing it said is
 * passed on and the connection is closed. Before the final dot the next
 * backend is tried (nothing was delivered); after it, the client gets 451
 * and the message is not sent again (RFC 5321 §4.1.1.4 leaves its fate at
 * the backend unknown). Always -1. */
static int wrong_class(struct bconn *b, const char *said)
{
	struct relay_req *r = b->req;
	char why[600];

	log_warn("%s: backend %s: reply of the wrong class at %s: %s", r->msg->id ? r->msg->id : "-",
		 r->dest->name, relay_bstate_name[b->state], said);
	if (b->state == B_DOT) {
		snprintf(r->res.backend_reply, sizeof(r->res.backend_reply),
			 "reply of the wrong class after end of data: %.400s", said);
		req_set(r, 451, "4.5.0", "unexpected reply from backend%s after end of data; not retried",
			req_who(r));
		req_end(r, 0, "deferred", r->res.backend_reply);
		return -1;
	}
	snprintf(why, sizeof(why), "reply of the wrong class at %s: %s", relay_bstate_name[b->state], said);
	req_failover(r, why);
	return -1;
}

/* txn_reply - one backend reply while attached. Returns -1 when b is gone. */
static int txn_reply(struct bconn *b, const struct smtp_reply *rep, const char *said)
{
	struct relay_req *r = b->req;
	struct relay_msg *m = r->msg;
	const struct conf *cf = m->conf;
	char why[600];
	int pipelined = (b->caps & SMTP_CAP_PIPELINING) != 0;

	stats_backend_reply(relay_bstate_label[b->state], rep->code);
	if (!relay_class_ok(b->state, rep->code))
		return wrong_class(b, said);

	switch (b->state) {
	case B_GREET:
		if (rep->code != 220) {
			snprintf(why, sizeof(why), "greeting: %s", said);
			req_failover(r, why);
			return -1;
		}
		conn_printf(b->c, "EHLO %s\r\n", cf->myhostname[0] ? cf->myhostname : "localhost");
		bconn_stage(b, B_EHLO, req_remaining(r, (uint64_t)cf->relay_timeout));
		return 0;
	case B_EHLO:
		if (rep->code == 250) {
			uint64_t maxsize; /* the backend's own SIZE check decides */
			int t;

			b->caps = smtp_ehlo_caps(rep, &maxsize);
			b->xfattrs = rep->xforward;
			b->xcattrs = rep->xclient;
			if (!b->tls && (t = bconn_tls_begin(b, r)) != 0)
				return t > 0 ? 0 : -1;
			if (xclient_start(b, r))
				return 0;
			b->state = B_READY;
			ev_timer_stop(r->rl->loop, &b->tmr);
			txn_start(r);
			return 0;
		}
		if (rep->code >= 500 && rep->code != 554) {
			/* RFC 5321 §3.2: fall back to HELO. */
			conn_printf(b->c, "HELO %s\r\n", cf->myhostname[0] ? cf->myhostname : "localhost");
			bconn_stage(b, B_HELO, req_remaining(r, (uint64_t)cf->relay_timeout));
			return 0;
		}
		snprintf(why, sizeof(why), "EHLO: %s", said);
		req_failover(r, why);
		return -1;
	case B_STARTTLS: return bconn_tls_reply(b, r, rep, said);
	case B_XFORWARD: return xforward_reply(b, rep, said);
	case B_XCLIENT: return xclient_reply(b, r, rep, said);
	case B_HELO:
		if (rep->code != 250) {
			snprintf(why, sizeof(why), "HELO: %s", said);
			req_failover(r, why);
			return -1;
		}
		/* No extensions after HELO, so no STARTTLS: a policy that
		 * requires TLS fails over (bconn_tls_begin), never plaintext. */
		b->caps = 0;
		b->xfattrs = 0;
		if (!b->tls) {
			int t = bconn_tls_begin(b, r);

			if (t != 0)
				return t > 0 ? 0 : -1;
		}
		b->state = B_READY;
		ev_timer_stop(r->rl->loop, &b->tmr);
		txn_start(r);
		return 0;
	case B_MAIL:
		r->nreplies = 1;
		r->mail_rep = *rep;
		relay_copy_str(r->mail_said, sizeof(r->mail_said), said);
		if (pipelined && m->nrcpt > 0) {
			bconn_stage(b, B_RCPT, req_remaining(r, (uint64_t)cf->relay_timeout));
			return 0;
		}
		if (rep->code / 100 != 2) {
			mail_refused(b);
			return -1;
		}
		send_rcpt(b, &m->rcpts[0]);
		bconn_stage(b, B_RCPT, req_remaining(r, (uint64_t)cf->relay_timeout));
		return 0;
	case B_RCPT: {
		int i = r->nreplies - 1;

		r->nreplies++;
		if (rep->code == 421 && r->mail_rep.code / 100 == 2) {
			/* RFC 5321 §3.8: the backend is closing; what it said
			 * about the other recipients no longer counts. */
			req_pass_on(r, rep, said, NULL);
			relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), said);
			m->rcpts[i].code = rep->code;
			relay_copy_str(m->rcpts[i].reply, sizeof(m->rcpts[i].reply), said);
			req_end(r, 0, "deferred", said);
			return -1;
		}
		if (r->mail_rep.code / 100 == 2) {
			struct relay_rcpt *rc = &m->rcpts[i];

			rc->code = rep->code;
			relay_copy_str(rc->reply, sizeof(rc->reply), said);
			if (rep->code / 100 == 2) {
				r->naccept++;
			} else if (r->first_refused < 0) {
				r->first_refused = i;
				r->refusal = *rep;
			}
		}
		if (i + 1 < m->nrcpt) {
			if (!pipelined)
				send_rcpt(b, &m->rcpts[i + 1]);
			bconn_stage(b, B_RCPT, req_remaining(r, (uint64_t)cf->relay_timeout));
			return 0;
		}
		if (r->mail_rep.code / 100 != 2) {
			mail_refused(b);
			return -1;
		}
		rcpts_done(b);
		return -1;
	}
	case B_DATA:
		if (rep->code == 354) {
			b->state = B_BODY;
			r->in_data = m->stream;
			body_fill(b);
			return -1;
		}
		if (rep->code >= 500) {
			req_pass_on(r, rep, said, NULL);
			relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), said);
			req_end(r, 1, "rejected", said);
			return -1;
		}
		snprintf(why, sizeof(why), "DATA: %s", said);
		req_failover(r, why);
		return -1;
	case B_BDAT: return bdat_reply(b, rep, said);
	case B_HOLD:
		/* Unasked (a 421 at the backend's own timeout): nothing was
		 * completed, so the next backend may have the message. */
		snprintf(why, sizeof(why), "reply while waiting for the verdict: %s", said);
		req_failover(r, why);
		return -1;
	case B_BODY:
		/* A reply before the dot: the backend gave up on the body. */
		snprintf(why, sizeof(why), "reply during the message body: %s", said);
		req_failover(r, why);
		return -1;
	case B_DOT:
		relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), said);
		if (rep->code / 100 == 2) {
			relay_queue_id_parse(rep->text, r->res.queue_id, sizeof(r->res.queue_id));
			req_set(r, 250, "2.0.0", "Ok: queued as %s (backend%s said: %s)", m->id ? m->id : "?",
				req_who(r), said);
			b->clean = 1;
			req_end(r, 1, "sent", said);
			return -1;
		}
		req_pass_on(r, rep, said, NULL);
		req_end(r, rep->code != 421, rep->code >= 500 ? "rejected" : "deferred", said);
		return -1;
	default: bconn_fail(b, "unexpected reply"); return -1;
	}
}

/* bconn_on_read - parse every complete reply buffered. */
void bconn_on_read(void *arg)
{
	struct bconn *b = arg;
	struct smtp_reply rep;
	char said[512];

	for (;;) {
		size_t len, used = 0;
		const char *buf = conn_rbuf(b->c, &len);
		enum parse_result pr;

		if (len == 0)
			return;
		if (b->state == B_QUIT) {
			conn_consume(b->c, len);
			return;
		}
		/* A reply arriving in many bits is parsed again only once a
		 * line is complete (the parser restarts at its first line). */
		if (b->rseen == len ||
		    (b->rseen && b->rseen < len && !memchr(buf + b->rseen, '\n', len - b->rseen)))
			return;
		smtp_reply_init(&rep);
		pr = smtp_reply_feed(&rep, buf, len, &used);
		if (pr == PARSE_AGAIN) {
			b->rseen = len;
			return;
		}
		b->rseen = 0;
		if (pr == PARSE_TOO_LONG) {
			char why[80];

			snprintf(why, sizeof(why), "reply longer than %d bytes", SMTP_REPLY_MAX);
			bconn_fail(b, why);
			return;
		}
		if (pr != PARSE_OK) {
			bconn_fail(b, "malformed reply");
			return;
		}
		conn_consume(b->c, used);
		relay_reply_format(&rep, said, sizeof(said));
		if (b->state == B_RSET) {
			if (b->skip > 0) { /* a chunk's reply, due before the RSET's */
				b->skip--;
				continue;
			}
			/* Counted before the connection is pooled: once the count
			 * shows, the connection is idle (tests wait on it). */
			stats_backend_reply(relay_bstate_label[B_RSET], rep.code);
			if (rep.code == 250) {
				ev_timer_stop(b->pool->rl->loop, &b->tmr);
				bconn_release_ok(b);
				continue;
			}
			bconn_close(b, 0);
			return;
		}
		if (!b->req || b->state == B_IDLE) {
			/* Unsolicited (e.g. 421 on an idle connection): drop it. */
			bconn_close(b, 0);
			return;
		}
		if (txn_reply(b, &rep, said) < 0)
			return;
	}
}
