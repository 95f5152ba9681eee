/*
 * relay.h - the SMTP client to the backends: routing targets, per-backend
 * connection pools, replay of one stored message, failover.
 *
 * A session hands a finished, stored message to relay_send(). The relay
 * takes a pooled connection to the first usable backend (waiting at most
 * relay_pool_wait for a free one), replays MAIL and the RCPTs (pipelined
 * when the backend offers PIPELINING), sends the body dot-stuffed, and
 * calls done() with the outcome to give the client. A backend that is
 * unreachable or fails before it accepted the body is replaced by the next
 * one with a full replay; so is one that lacks 8BITMIME or SMTPUTF8 for a
 * message that needs it (refused only when every backend lacks it), or
 * that answers with a reply of the wrong class. Once the final dot went
 * out the message is never sent again. All of it finishes before
 * msg->deadline. Replies for the client name no backend address unless
 * relay_reply_show_backend is set; the log always does.
 *
 * Pools: one per backend address per loop for idle connections; the
 * relay_destination_concurrency_limit is process-wide (atomic count).
 * Connections are reused (RSET), TCP_NODELAY, closed after
 * relay_idle_timeout unused.
 */
#ifndef PERIMD_RELAY_H
#define PERIMD_RELAY_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct spool;
struct conf;
struct conf_list;

struct relay_rcpt {
	const char *addr;   /* "user@domain" */
	const char *notify; /* DSN NOTIFY= value or NULL */
	const char *orcpt;  /* DSN ORCPT= value or NULL */
	/* out: the backend's reply to this RCPT (0 = not tried) */
	int code;
	char reply[256]; /* "550 5.1.1 text" as the backend said it */
};

/* The client a message came from, for backends allowed XFORWARD
 * (relay_xforward_hosts, before each MAIL) or, where XFORWARD is not to be
 * had, XCLIENT (relay_xclient_hosts, once per connection, which is then
 * not pooled). NULL strings are sent as [UNAVAILABLE]. */
struct relay_client {
	const char *name; /* confirmed (FCrDNS) host name, or "unknown" */
	const char *addr; /* numeric address, without brackets */
	int port;         /* its TCP port, 0 = unknown */
	const char *helo; /* its HELO/EHLO argument */
	int esmtp;        /* it said EHLO (PROTO=ESMTP), else SMTP */
};

struct relay_msg {
	const char *id;     /* perimd message id, for logs */
	const char *sender; /* "" for the null sender */
	uint64_t size;      /* spool size, for SIZE= */
	int body_8bit;      /* client declared BODY=8BITMIME */
	int smtputf8;       /* client declared SMTPUTF8 */
	const char *ret;    /* DSN RET= or NULL */
	const char *envid;  /* DSN ENVID= or NULL */
	int nrcpt;
	struct relay_rcpt *rcpts;
	struct spool *body;               /* finished spool, canonical form */
	const struct conf_list *backends; /* targets in failover order */
	uint64_t deadline;                /* ev_now() ms by which done() MUST have run */
	const struct conf *conf;
	int verify_only;                   /* a callout: MAIL, RCPT, then RSET; no DATA */
	const struct relay_client *client; /* for XFORWARD, or NULL */
	int hold;                          /* relay_scan_overlap: stop short of ending the transaction
		     until relay_release() (see there) */
	int stream;                        /* relay_while_receiving: sent with relay_stream(), see there */
	int growing;                       /* stream: the session still appends to body (size 0: no SIZE=) */
};

struct relay_result {
	int code;                /* for the client: 250, 451, 550 ... */
	char enh[16];            /* enhanced status code for the client */
	char text[512];          /* reply text for the client (no code) */
	char backend[128];       /* backend that answered last ("" if none) */
	char backend_reply[512]; /* its reply to the final dot or the failure */
	char queue_id[64];       /* backend queue id parsed from its 250, or "" */
	uint64_t waited_ms;      /* time spent waiting for a free backend connection */
};

typedef void relay_done_fn(void *arg, const struct relay_result *r);

/* relay_target_valid - check a backend list entry ("[addr]:port",
 * "addr:port", "[addr]" = port 25, "host[:port]" looked up by MX,
 * "[host][:port]" by A/AAAA only, each optionally in Postfix's
 * transport(5) form "smtp:..." or "relay:..."). Returns 0 or -1 with a
 * reason that says what to write instead. */
int relay_target_valid(const char *target, const char **why);
/* relay_target_nexthop - target without a Postfix "smtp:"/"relay:"
 * transport; NULL with *why for a transport perimd cannot be (lmtp:,
 * local:, error:, discard: ...) or none at all. */
const char *relay_target_nexthop(const char *target, const char **why);
/* relay_route_refusal - a transport_maps value in the form of Postfix's
 * error(8) ("error:5.1.1 text", "retry:4.4.1 text"): 1 with the RCPT
 * reply to give (550 or 450, the enhanced code given or x.0.0, the
 * text), else 0. */
int relay_route_refusal(const char *route, int *code, char *enh, size_t enhlen, char *text, size_t textlen);
/* relay_route_discard - a transport_maps value "discard:[text]"
 * (Postfix's discard(8)): its recipients are accepted, relayed to nobody. */
int relay_route_discard(const char *route);
/* relay_route_check - a transport_maps value: a list of targets, each
 * relay_target_valid (map_value_check_fn of maps.h). */
int relay_route_check(const char *value, char *why, size_t whylen);

/* relay_send - start delivery; done() runs later, exactly once, unless
 * relay_cancel() was called first. msg and everything it points to MUST
 * stay valid until then. */
struct relay_req *relay_send(struct ev_loop *loop, struct relay_msg *msg, relay_done_fn *done, void *arg);
/* relay_stream - relay_while_receiving: start relaying a message whose
 * body is still being received (msg->stream and msg->growing set, body a
 * spool the session appends to), but only over an idle pooled connection
 * to the first backend of msg->backends that this loop has right now and
 * no other request waits for: NULL otherwise (nothing waits, nothing is
 * opened). The envelope is replayed, then the body goes as it arrives
 * (relay_stream_more()): BDAT chunks to a backend offering CHUNKING, else
 * DATA and the body dot-stuffed. The transaction is completed (`BDAT 0
 * LAST` or the final dot) only after the session cleared msg->growing and
 * called relay_release(r, 1). There is no failover: whatever ends the
 * stream before the final dot went out (a backend failure or refusal, a
 * client slower than RELAY_STREAM_STALL_MS between two pieces of body or
 * still sending after RELAY_STREAM_MAX_MS) makes done() run with code 0,
 * and the message is then to be relayed from the spool as usual
 * (relay_send()). Once the final dot went out done() has the outcome as
 * relay_send()'s would. */
struct relay_req *relay_stream(struct ev_loop *loop, struct relay_msg *msg, relay_done_fn *done, void *arg);
/* relay_stream_more - the session appended to a streamed body, or
 * cleared msg->growing: the relay sends what is new (from the loop). */
void relay_stream_more(struct relay_req *r);
/* relay_stream_drop - the session no longer wants a streamed message
 * (refused, client gone, session closed): the transaction is abandoned
 * unfinished and done() never runs; msg is not touched after this call.
 * With CHUNKING the connection is reset (RSET after the chunks sent are
 * answered) and pooled; inside DATA it is closed (RSET there would be
 * body text). Returns 1 when the connection is kept. */
int relay_stream_drop(struct relay_req *r);
/* relay_release - the verdict on a message sent with msg->hold (the
 * scan ran while the relay did): go = 1 ends the transaction (`BDAT 0
 * LAST` after the chunks, or DATA and the body when the backend lacks
 * CHUNKING), go = 0 abandons it: RSET at the next point where the backend
 * has all it was sent (the connection is then pooled), and no backend
 * ever completes the transaction. done() runs later either way, exactly
 * once (after an abandon with code 0); call it at most once, and never
 * after done(). Until then the request waits, envelope replayed and with
 * CHUNKING the body sent, without a timer of its own but msg->deadline. */
void relay_release(struct relay_req *r, int go);
/* relay_cancel - the session is gone: abandon the request (its backend
 * connection is closed, not reused, if mid-transaction). */
void relay_cancel(struct relay_req *r);

/* relay_verify - a callout for one recipient (RCPT at the recipient's
 * backend over a pooled connection: MAIL FROM:<>, RCPT, RSET; no DATA), with
 * the same failover as relay_send(). done(arg, code, reply) runs later,
 * exactly once, unless relay_verify_cancel() came first: code is the
 * backend's reply to RCPT (2xx accepted, 4xx/5xx refused, reply its line),
 * or 0 when the callout could not complete (reply says why). backends is
 * copied; id names the session in logs. */
struct relay_verify;
typedef void relay_verify_fn(void *arg, int code, const char *reply);
struct relay_verify *relay_verify(struct ev_loop *loop, const struct conf_list *backends, const char *rcpt,
				  const struct conf *conf, const char *id, relay_verify_fn *done, void *arg);
void relay_verify_cancel(struct relay_verify *v);

/* relay_loop_shutdown - close this loop's idle pooled connections. */
void relay_loop_shutdown(struct ev_loop *loop);

#endif
