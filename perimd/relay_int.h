/*
 * relay_int.h - what relay.c (targets, pools, requests, failover) and
 * relay_smtp.c (the SMTP dialogue with one backend connection) share.
 * Internal to those two files; everyone else uses relay.h.
 */
#ifndef PERIMD_RELAY_INT_H
#define PERIMD_RELAY_INT_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include "ev.h"
#include "relay.h"
#include "smtp_proto.h"

#define RELAY_WINDOW (64 * 1024) /* body bytes kept in the output buffer */
#define RELAY_CHUNK (16 * 1024)  /* body bytes read per step */
#define RELAY_STALE_RETRIES 2    /* reused connections found dead */
/* New connections to one backend being set up at once, while others of
 * it are up (and will come free for the messages that wait meanwhile). */
#define RELAY_CONNECT_BURST 8
/* relay_while_receiving: a stream holds its backend connection only while
 * the client keeps sending. It is given up (the message then replayed
 * after the final dot) when no new body arrived for RELAY_STREAM_STALL_MS,
 * or the body is still arriving RELAY_STREAM_MAX_MS after DATA. */
#define RELAY_STREAM_STALL_MS 1000
#define RELAY_STREAM_MAX_MS 30000
/* Fewer body bytes than this wait for more before a BDAT chunk goes. */
#define RELAY_STREAM_MIN_CHUNK (8 * 1024)

/* ---- process-wide backend table ----------------------------------------- */

struct dest_loop {
	struct ev_loop *loop;
	int waiting;  /* requests waiting for a slot there */
	int idle;     /* idle pooled connections there */
	int incoming; /* connections on their way there from another loop */
};

struct relay_dest {
	struct relay_dest *next;
	char name[INET6_ADDRSTRLEN + 16]; /* "10.1.1.5:25", "[::1]:25" */
	char addr[INET6_ADDRSTRLEN];      /* "10.1.1.5", "::1" */
	struct sockaddr_storage sa;
	socklen_t salen;
	atomic_int open;     /* connections holding a slot */
	atomic_int limit;    /* relay_destination_concurrency_limit */
	atomic_int making;   /* of them being set up: connect to first MAIL */
	atomic_int yielding; /* given up by streams for waiters, not yet handed on */
	pthread_mutex_t mu;  /* guards loops[] */
	struct dest_loop *loops;
	int nloops, caploops;
};


/* ---- per-loop state ----------------------------------------------------- */

struct bconn;
TAILQ_HEAD(bconn_list, bconn);
TAILQ_HEAD(req_list, relay_req);

struct pool {
	struct pool *next;
	struct relay_loop *rl;
	struct relay_dest *dest;
	struct bconn_list idle;  /* most recently used first */
	struct req_list waiters; /* oldest first */
	struct ev_defer kick;
};

struct relay_loop {
	struct ev_loop *loop;
	struct pool *pools;
	int nconn; /* bconns alive on this loop */
	int nreq;  /* requests alive on this loop */
	int shutdown;
};

enum bstate {
	B_CONNECT,  /* TCP connect in progress */
	B_GREET,    /* waiting for 220 */
	B_EHLO,     /* waiting for the EHLO reply */
	B_HELO,     /* waiting for the HELO reply (EHLO refused) */
	B_STARTTLS, /* waiting for the reply to STARTTLS */
	B_TLS,      /* TLS handshake */
	B_XCLIENT,  /* waiting for the reply to XCLIENT */
	B_READY,    /* attached, between transactions */
	B_XFORWARD, /* waiting for XFORWARD replies */
	B_MAIL,     /* waiting for the MAIL reply */
	B_RCPT,     /* waiting for RCPT replies */
	B_DATA,     /* waiting for 354 */
	B_BODY,     /* sending the body */
	B_DOT,      /* waiting for the reply to the final dot */
	B_RSET,     /* unattached, waiting for 250 to RSET */
	B_IDLE,     /* unattached, in the pool */
	B_MOVE,     /* unattached, leaving for a loop with a waiter */
	B_QUIT,     /* closing */
	B_BDAT,     /* sending BDAT chunks, waiting for their replies */
	B_HOLD      /* all but the end sent: waiting for relay_release() */
};

/* bstate names for logs and metrics (relay.c) */
extern const char *const relay_bstate_name[];
extern const char *const relay_bstate_label[];

struct bconn {
	TAILQ_ENTRY(bconn) link; /* in pool->idle while B_IDLE */
	struct pool *pool;
	struct conn *c;
	struct relay_req *req;
	enum bstate state;
	unsigned caps;
	unsigned xfattrs; /* SMTP_XF_BIT()s its XFORWARD offers */
	int xf_refused;   /* it refused XFORWARD: not sent again */
	unsigned xcattrs; /* SMTP_XF_BIT()s its XCLIENT offers */
	int xclient;      /* 1: XCLIENT accepted (never pooled), -1 refused */
	int tls;          /* STARTTLS done (RFC 3207) */
	size_t rseen;     /* input bytes already seen to hold no
					 complete reply (a long one in bits) */
	int ntxn;         /* transactions started on it */
	int clean;   /* last transaction ended with 2xx to the final dot: another may follow without RSET */
	int skip;    /* B_RSET: replies still due before the RSET's (chunks) */
	int slot;    /* holds one of dest->open */
	int making;  /* counted in dest->making */
	int yielded; /* counted in dest->yielding */
	uint64_t idle_ms;           /* relay_idle_timeout of its last user */
	struct ev_timer tmr;        /* stage or idle timer */
	struct ev_defer mvd;        /* B_MOVE: detach once conn.c is off the stack */
	struct ev_loop *mv_to;      /* B_MOVE: where to */
	struct relay_dest *mv_dest; /* its backend while between loops */
};

struct relay_req {
	TAILQ_ENTRY(relay_req) wlink; /* in pool->waiters */
	struct relay_loop *rl;
	struct relay_msg *msg;
	relay_done_fn *done;
	void *arg;
	struct ev_defer startd;
	struct ev_defer mored; /* stream: relay_stream_more(), relay_release() */
	struct ev_timer waitt; /* pool wait */
	struct pool *waiting;  /* the pool whose waiters hold us */
	struct bconn *b;
	struct relay_dest *dest;
	int target;     /* index in msg->backends */
	int stale;      /* retries after a dead reused conn */
	int has8bit;    /* -1 unknown, else body has 8-bit bytes */
	int send_body8; /* BODY=8BITMIME goes with MAIL */
	/* the current transaction */
	int xf_cmds, xf_replies;    /* XFORWARD commands sent, answered */
	char *xf_buf;               /* the XFORWARD commands, while unsent */
	int nreplies;               /* MAIL + RCPT replies received */
	struct smtp_reply mail_rep; /* the reply to MAIL */
	char mail_said[512];
	struct smtp_reply refusal; /* the first refused RCPT's reply */
	int naccept, first_refused;
	uint64_t body_off;
	int release;               /* relay_release(): 0 not yet, 1 go, -1 abandon */
	int chunked;               /* the body goes as BDAT chunks (RFC 3030) */
	int in_data;               /* stream: DATA accepted, the body goes dot-stuffed */
	int final_sent;            /* the final dot or BDAT LAST went out */
	int starved;               /* stream: everything received is sent; waiting */
	int stream_slow;           /* stream: given up as the client was too slow */
	int bdat_sent, bdat_acked; /* BDAT chunks written, answered */
	struct smtp_stuff stuff;   /* dot-stuffing and smtp_line_length_limit */
	unsigned capmiss;          /* SMTP_CAP_* a skipped backend lacked */
	char *scratch;             /* RELAY_CHUNK in + 2 * RELAY_CHUNK out */
	uint64_t t_start, t_attempt;
	char last_error[300];            /* for the log: "backend X: why" */
	char last_why[300];              /* the same without X, for the client */
	char who[INET6_ADDRSTRLEN + 20]; /* req_who()'s answer */
	int in_done;
	struct dnsmx_req *mxq; /* a host-name backend being resolved */
	struct dnsmx_list *mx; /* its addresses, tried before the next entry */
	int mxi;
	struct relay_result res;
};

/* ---- relay.c, for relay_smtp.c ------------------------------------------ */

/* relay_dest_unserved - requests of every loop waiting for a connection to
 * d that cannot open one (every slot taken), less the connections streams
 * gave up for them that are on their way (dest->yielding); 0 when none. */
int relay_dest_unserved(struct relay_dest *d);
void bconn_close(struct bconn *b, int quit);
void bconn_fail(struct bconn *b, const char *why);
void bconn_release_ok(struct bconn *b);
void bconn_stage(struct bconn *b, enum bstate st, uint64_t ms);
void bconn_made(struct bconn *b);
int req_body_has_8bit(struct relay_req *r);
void relay_copy_str(char *dst, size_t dstlen, const char *src);
void relay_queue_id_parse(const char *text, char *out, size_t outlen);
uint64_t req_remaining(struct relay_req *r, uint64_t stage);
void relay_reply_format(const struct smtp_reply *rep, char *out, size_t outlen);
const char *req_who(const struct relay_req *r);
void req_capmiss(struct relay_req *r, unsigned need);
int relay_class_ok(enum bstate st, int code);
void req_detach(struct relay_req *r, int release);
void req_fail(struct relay_req *r, int code, const char *enh, const char *text);
void req_failover(struct relay_req *r, const char *why);
void req_finish(struct relay_req *r);
void req_end(struct relay_req *r, int release, const char *status, const char *reply);
void req_pass_on(struct relay_req *r, const struct smtp_reply *rep, const char *said, const char *default_enh);
void req_abandon(struct relay_req *r);
void req_stream_end(struct relay_req *r, int slow);
int req_stream_detach(struct relay_req *r);
void req_set(struct relay_req *r, int code, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- relay_smtp.c, for relay.c ------------------------------------------ */

/* txn_start - replay the envelope on an attached, ready connection. */
void txn_start(struct relay_req *r);
/* body_fill - keep the body flowing (on_drain of a connection in B_BODY). */
void body_fill(struct bconn *b);
/* req_hold_point - everything but the end of the transaction is at the
 * backend: end it, abandon it, or wait (relay_release()); -1 when the
 * request ended. */
int req_hold_point(struct relay_req *r);
/* bconn_bdat_fill - keep the chunks flowing (on_drain in B_BDAT); -1 when the
 * request ended. */
int bconn_bdat_fill(struct bconn *b);
/* bconn_on_read - backend replies, by connection state (conn on_read). */
void bconn_on_read(void *arg);

#endif
