/*
 * milter.h - perimd as a milter host (Sendmail's milter protocol, version
 * 2 to 6, as Postfix's smtpd speaks it): the filters of smtpd_milters are
 * asked at each SMTP stage of a transaction, in order.
 *
 * A transaction's milters live in one struct milter_txn, created at the
 * session's first MAIL (a session that never sends MAIL holds no milter
 * connection): the first stage connects to each milter, negotiates
 * (SMFIC_OPTNEG) and replays connect and HELO before MAIL. At the
 * transaction's end the session parks it (milter_txn_park: SMFIC_ABORT
 * to a milter in the middle of a message) and its next MAIL reuses the
 * connections (milter_txn_reuse), as Postfix keeps one per session; a
 * new HELO/EHLO, STARTTLS, the session's end or an idle spell of
 * milter_txn_idle_ms closes them (smtpd_txn.c). The conversation runs
 * on the worker pool (jobs.h) with a deadline per read
 * (milter_connect/command/content_timeout), so no event loop ever waits
 * for a milter; done() runs on the loop that asked. One stage at a time
 * per transaction. A milter that is down, times out or
 * breaks the protocol gets milter_default_action.
 *
 * At end of message each milter in turn sees the copy the previous one
 * left: its header and body changes are applied to a new spool, so the
 * last milter's copy is what is scanned and relayed. Envelope changes
 * (add/delete recipient, change sender) are returned for the session to
 * check against relay control and routing.
 */
#ifndef PERIMD_MILTER_H
#define PERIMD_MILTER_H

#include <stddef.h>
#include <stdint.h>

struct conf;
struct ev_loop;
struct spool;
struct milter_txn;
struct milter_req;
struct milter_set;

enum milter_act {
	MILTER_CONTINUE, /* go on (also: every milter accepted) */
	MILTER_REJECT,   /* reply holds the 5xx */
	MILTER_TEMPFAIL, /* reply holds the 4xx */
	MILTER_DISCARD   /* the message is dropped: 250, nothing relayed */
};

/* An envelope change asked at end of message, in the order asked. */
struct milter_env_mod {
	char op;     /* '+' add recipient, '-' delete recipient, 'e' change sender */
	char *addr;  /* the address, angle brackets removed */
	char *which; /* the milter that asked */
};

#define MILTER_ADDR_MAX 256 /* a milter's address, NUL included */

struct milter_result {
	enum milter_act act;
	char reply[1024];    /* REJECT/TEMPFAIL: CRLF-separated lines, no final CRLF */
	char which[128];     /* the milter that decided, "" (its address, cut) */
	struct spool *spool; /* end of message: the modified copy, or NULL */
	struct milter_env_mod *mods;
	int nmods;
};

typedef void milter_done_fn(void *arg, struct milter_result *r);

/* One smtpd_milters item (milter_spec.c): its address and its settings,
 * Postfix 3.0's "{ inet:HOST:PORT, command_timeout=10s, ... }"; what it
 * does not set is the milter_* parameters'. */
struct milter_spec {
	char addr[MILTER_ADDR_MAX];                                  /* "inet:HOST:PORT" or "unix:/path" */
	long long connect_timeout, command_timeout, content_timeout; /* ms */
	int default_action;                                          /* enum conf_milter_default_action */
	int protocol;                                                /* 2 to 6 */
};
/* milter_action_names - default_action's words, by enum
 * conf_milter_default_action. */
extern const char *const milter_action_names[];
/* milter_spec_defaults - the milter_* parameters' settings. */
void milter_spec_defaults(const struct conf *cf, struct milter_spec *sp);
/* milter_spec_parse - an item over the settings in *sp (its address
 * set); 0, or -1 with err naming the item and what is wrong (an address
 * that is not inet:HOST:PORT or unix:/path, a '{' without '}', an unknown
 * setting, a value out of its bounds, default_action=quarantine). */
int milter_spec_parse(const char *item, struct milter_spec *sp, char *err, size_t errlen);

/* milter_enabled - smtpd_milters is set. */
int milter_enabled(const struct conf *cf);
/* milter_set_load - smtpd_milters of c, parsed once per configuration
 * (at start, perimd -t and each reload: policy_load): each item's
 * settings over the milter_* parameters, and its socket address unless
 * it names a host (looked up at each connect). The set holds a reference
 * on c. NULL with err when an item is not inet:HOST:PORT or unix:/path,
 * alone or with its settings in braces. */
struct milter_set *milter_set_load(struct conf *c, char *err, size_t errlen);
/* milter_set_release - drop a reference (the loader's, or a
 * transaction's); the last one frees. NULL is ignored. */
void milter_set_release(struct milter_set *ms);

/* milter_txn_new - a transaction's milters from ms, not yet connected;
 * it keeps a reference on ms (a reload meanwhile changes nothing for it)
 * until milter_txn_free. */
struct milter_txn *milter_txn_new(struct milter_set *ms);
/* milter_macro - set a macro's value (name without braces: "client_addr"
 * for {client_addr}, "i", "j"); NULL forgets it. Loop thread, between
 * stages. */
void milter_macro(struct milter_txn *mt, const char *name, const char *value);
/* milter_connect_info - what SMFIC_CONNECT and SMFIC_HELO tell: the client
 * as seen after PROXY. */
void milter_connect_info(struct milter_txn *mt, const char *client_name, const char *addr, int port,
			 const char *helo);

/* The stages; each returns the request (cancelled by milter_txn_free).
 * esmtp: the command's ESMTP arguments, "SIZE=123 BODY=8BITMIME" (may be
 * NULL), sent after the address as Postfix does. */
struct milter_req *milter_mail(struct ev_loop *loop, struct milter_txn *mt, const char *sender,
			       const char *esmtp, milter_done_fn *done, void *arg);
struct milter_req *milter_rcpt(struct ev_loop *loop, struct milter_txn *mt, const char *rcpt,
			       const char *esmtp, milter_done_fn *done, void *arg);
struct milter_req *milter_data(struct ev_loop *loop, struct milter_txn *mt, milter_done_fn *done, void *arg);
/* milter_eom - headers, end of headers, body, end of message of the
 * stored message sp (finished; read only). */
struct milter_req *milter_eom(struct ev_loop *loop, struct milter_txn *mt, struct spool *sp,
			      milter_done_fn *done, void *arg);
/* milter_result_free - what a result holds (the spool, the mods). */
void milter_result_free(struct milter_result *r);
/* milter_txn_free - quit and close, and free sp (the transaction's
 * spool, which a stage in flight may be reading); a stage in flight is
 * cancelled (its done() never runs) and all freed when it ends. */
void milter_txn_free(struct milter_txn *mt, struct spool *sp);

/* milter_txn_park - end the transaction but keep its connections for the
 * session's next one: SMFIC_ABORT to each milter in the middle of a
 * message; a milter that failed, or refused at connect/HELO, is closed
 * (the next transaction connects to it again, as a new one would); one
 * that accepted at connect/HELO is closed and skipped for the session.
 * Frees sp. Returns mt, or NULL when a stage was in flight (then
 * milter_txn_free'd). Loop thread. */
struct milter_txn *milter_txn_park(struct milter_txn *mt, struct spool *sp);
/* milter_txn_idle_ms - how long a parked transaction's connections may
 * wait for the next MAIL: the least command_timeout of the milters it
 * holds a connection to; 0 when it holds none. */
long long milter_txn_idle_ms(const struct milter_txn *mt);
/* milter_txn_reuse - a parked transaction taken for the session's next
 * MAIL: a connection parked longer than its milter's command_timeout,
 * or closed (or written to) by the milter meanwhile, is closed, and its
 * milter connected again at MAIL. Loop thread. */
void milter_txn_reuse(struct milter_txn *mt);

/* milter_stop - at shutdown, before jobs_stop(): conversations still on
 * a worker (their sessions are gone) end at once instead of waiting for
 * their timeouts. */
void milter_stop(void);

/* ---- the wire (pure; tests/fuzz/fuzz_milter.c) -------------------------- */

#define MILTER_PKT_MAX (1024 * 1024) /* largest packet accepted from a milter */

/* One packet from a milter, parsed: cmd is the reply code ('a', 'h', 'y',
 * 'O', ...); s1/s2 point into the packet (NUL-terminated there). */
struct milter_pkt {
	char cmd;
	uint32_t idx;        /* insheader/chgheader index; OPTNEG version */
	uint32_t actions;    /* OPTNEG */
	uint32_t pflags;     /* OPTNEG */
	const char *s1, *s2; /* header name/value, address/args, reply text */
	const char *data;    /* replbody: the bytes */
	size_t datalen;
};

/* milter_pkt_parse - parse payload p (the command byte and its data, the
 * length word removed) of n bytes; 0, or -1 when malformed. */
int milter_pkt_parse(const char *p, size_t n, struct milter_pkt *out);
/* milter_reply_text - check and normalize an SMFIR_REPLYCODE text: one or
 * more lines "NNN[ -]text" with the same 4xx or 5xx code, separated by
 * CRLF or LF; written to out as "NNN-...\r\nNNN ..." (last line with a
 * space), and an enhanced code added if missing; a reply longer than
 * out keeps the lines that fit (the first one cut short if need be).
 * Returns 4 or 5 (the class), or -1 when it is not a valid reply. */
int milter_reply_text(const char *in, char *out, size_t outlen);

#endif
