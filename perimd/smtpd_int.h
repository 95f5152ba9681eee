/*
 * smtpd_int.h - what smtpd.c (the session: connection, replies, the
 * command table and dispatch, HELO, STARTTLS and the other commands,
 * accept) and smtpd_txn.c (the mail transaction, struct txn: MAIL, RCPT
 * with its asynchronous policy verdicts, DATA, the scan and the relay)
 * share. Internal to those two files and their unit test
 * (tests/unit/test_smtpd_table.c); everyone else uses smtpd.h.
 */
#ifndef PERIMD_SMTPD_INT_H
#define PERIMD_SMTPD_INT_H

#include <arpa/inet.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "conf.h"
#include "ev.h"
#include "policy.h"
#include "relay.h"
#include "smtp_proto.h"

struct milter_txn;

#define DATA_CHUNK (64 * 1024)
#define WBACKLOG_MAX (64 * 1024)
#define RELAY_DEADLINE_MS (9 * 60 * 1000) /* RFC 5321 §4.5.3.2.6 gives 10 */
#define MAX_RECEIVED 50
/* A command "line" that never ends is garbage, not a command: each further
 * SKIP_ERROR_BYTES of it counts as one more error, so the hard error limit
 * ends the session (legitimate over-long lines get exactly one reply). */
#define SKIP_ERROR_BYTES (64 * 1024)

enum sstate { ST_CMD, ST_DATA, ST_BUSY, ST_CLOSING, ST_PROXY, ST_GREET };
enum data_err { DE_NONE, DE_TOO_BIG, DE_SPOOL_FULL, DE_IO };

struct smtpd_loop;

struct listener {
	struct ev_io io;
	struct ev_timer retry;
	struct smtpd_loop *sl;
	int fd;
};

struct smtpd_loop {
	struct ev_loop *loop;
	struct listener *lis;
	int nlis;
	struct session *sessions;
	int nsessions;
	int draining;
	int drain_cut;   /* shutdown_timeout passed: messages in flight finish, then 421 */
	uint64_t cut_at; /* ev_now() when it passed */
	struct ev_timer drain_timer;
};

struct rcpt {
	char *addr;
	char *notify;
	char *orcpt;
	int discard; /* an access map said DISCARD: accepted, not relayed */
};

/* A recipient between RCPT and its verdict (checks may be asynchronous). */
struct rcpt_pending {
	char *addr, *local, *domain, *notify, *orcpt, *route;
	struct policy_env env;
	struct policy_req *req;
	int discard;            /* transport_maps said discard: (accepted, not relayed) */
	struct policy_dom *dom; /* relay_domains / transport_maps lookup out */
};

/* The mail transaction (RFC 5321 §3.3): created by an accepted MAIL,
 * freed by smtpd_txn_reset() at its end (RSET, HELO/EHLO, STARTTLS, the
 * reply to the final dot, a refusal at DATA, the end of the session). */
struct txn {
	unsigned rcpt_tried : 1; /* a RCPT was sent, accepted or not */
	unsigned body8 : 1;
	unsigned smtputf8 : 1;
	unsigned grey_pass : 1; /* a recipient passed greylisting (grey.h) */
	char *sender;
	char *ret, *envid;
	struct rcpt *rcpts;
	int nrcpt, caprcpt;
	long long overshoot; /* RCPTs refused for smtpd_recipient_limit */
	int route_set;
	char *route; /* backend list text; NULL = relay_backends */
	struct rcpt_pending *rcpt_pending;
	struct milter_txn *milter; /* smtpd_milters of this transaction (milter.h) */
	unsigned discard : 1;      /* a milter discarded the message */
	char *prepend;             /* access maps' PREPEND headers ("Name: value\r\n"...) or NULL */
	struct psvc_txn *psvc;     /* smtpd_policy_services state (psvc.h) or NULL */

	/* DATA */
	struct spool *spool;
	struct smtp_data_parser dp;
	enum data_err data_err;
	char msgid[24];             /* the transaction's id (SMTPD_ID_LEN above) */
	uint64_t t_data_end;        /* the final dot; nonzero: counted in ST_inflight */
	uint64_t t_scanned;         /* the scanner's verdict (0: no scan) */
	unsigned scanned : 1;       /* a scan was started (counted by smtpd_flow) */
	unsigned overlap : 1;       /* relay_scan_overlap: relayed during the scan */
	unsigned stream : 1;        /* relay_while_receiving: s->relay has the body as it comes */
	unsigned stream_go : 1;     /* stream: every verdict clean, relay_release() said go */
	char *scan_refusal;         /* overlap: the scan refused, this reply */
	struct relay_result *early; /* overlap: the relay's outcome, before the scan's */

	/* relay */
	struct relay_msg msg;
	struct relay_client client; /* for XFORWARD */
	struct relay_rcpt *rr;
	struct conf_list backends;
};

struct session {
	struct session *next, *prev;
	struct smtpd_loop *sl;
	struct ev_loop *loop;
	struct conn *conn;
	struct policy *pol;
	const struct conf *cf;
	char id[16];
	char addr[INET6_ADDRSTRLEN];
	int port;                        /* the client's (after any PROXY header) */
	char srv_addr[INET6_ADDRSTRLEN]; /* the address the client connected to */
	int srv_port;
	char *helo;
	unsigned esmtp : 1;
	unsigned skip_line : 1; /* discarding an over-long command line */
	size_t skipped;         /* bytes of it discarded since its last error */
	unsigned wblocked : 1;  /* paused until replies drain */
	unsigned counted : 1;   /* in climit */
	unsigned tls : 1;       /* STARTTLS done (RFC 3207) */
	unsigned need_ehlo : 1; /* after STARTTLS, until HELO/EHLO */
	enum sstate state;
	int errors;
	unsigned ncmds, nmsgs;
	unsigned ntx; /* transactions begun: the last one's number */
	struct ev_timer tarpit;
	char *pending; /* error reply held by the tarpit */
	int pending_close;

	struct txn *tx;                 /* the mail transaction; NULL outside one */
	struct milter_txn *milter_idle; /* the last transaction's milters, parked for the next MAIL */
	struct ev_timer milter_timer;   /* closes milter_idle after its command_timeout */

	struct relay_req *relay;        /* the relay of tx's message in flight */
	struct av_req *av;              /* content scan in flight, counted by smtpd_flow */
	struct smtpd_flow_ticket *flow; /* DATA waits its turn (in_flow_delay) */
	struct ev_timer flow_timer;     /* its in_flow_delay */
	struct dnscheck *dns;           /* PTR/FCrDNS, DNSBL, sender domain lookups */
	struct policy_sess *ps;         /* delayed client/HELO/sender verdicts (rules.c) */
	struct ev_timer greet;          /* smtpd_greet_pause (state ST_GREET) */
	struct ev_timer deadline;       /* smtpd_timeout per command (request_deadline) */
};


/* ---- the command table (smtpd.c) ----------------------------------------
 * Where a session is in its SMTP dialogue (RFC 5321 §4.1.4, RFC 3207
 * §4.2), as smtpd_phase() reads it from the session. */
enum smtpd_phase {
	PH_CONNECTED,   /* no HELO/EHLO yet */
	PH_TLS_STARTED, /* TLS began after STARTTLS; no EHLO since */
	PH_GREETED,     /* HELO/EHLO done, no transaction */
	PH_MAIL,        /* MAIL accepted, no RCPT yet */
	PH_RCPT_NONE,   /* RCPTs sent, none accepted (yet) */
	PH_RCPT,        /* at least one recipient accepted */
	PH_COUNT
};
#define PH_BIT(p) (1u << (p))
#define PH_ANY ((1u << PH_COUNT) - 1)
#define PH_TXN (PH_BIT(PH_MAIL) | PH_BIT(PH_RCPT_NONE) | PH_BIT(PH_RCPT))

/* Flags of a command (in the manner of Postfix's smtpd command table). */
#define CMD_F_NOARG 0x01u   /* takes no argument: arg_refusal if one is given */
#define CMD_F_NEEDARG 0x02u /* needs an argument: arg_refusal if none */
#define CMD_F_HELO_REQ \
	0x04u /* refused in PH_CONNECTED (refusal[PH_CONNECTED],
			       * logged) when smtpd_helo_required */
#define CMD_F_PRE_TLS \
	0x08u /* allowed before STARTTLS where TLS is required
			       * (RFC 3207 §4: NOOP, EHLO, STARTTLS, QUIT); no
			       * smtpd_tls_security_level requires TLS yet */
#define CMD_F_LAST \
	0x10u /* ends a pipelined group (RFC 2920 §3.1, RFC 3207
			       * §4); replies go out together at the end of the
			       * loop iteration whatever the command */
#define CMD_F_PAUSES \
	0x20u /* may pause reading for an asynchronous step
			       * (besides the tarpit, which any error may start) */

/* The session context smtpd_cmd_check() needs besides the phase. */
#define CMD_CTX_TLS 0x01u           /* TLS is active */
#define CMD_CTX_HELO_REQUIRED 0x02u /* smtpd_helo_required = yes */

struct session;

/* One row per command verb. */
struct smtpd_cmd {
	const char *name;
	unsigned phases;               /* PH_BIT()s in which it runs */
	unsigned flags;                /* CMD_F_* */
	const char *arg_refusal;       /* the 501 of CMD_F_NOARG / CMD_F_NEEDARG */
	const char *refusal[PH_COUNT]; /* the reply where it is refused (503 ...) */
	const char *tls_refusal;       /* set: refused so once TLS is active */
	void (*run)(struct session *s, char *arg);
};

enum smtpd_check {
	CMD_OK,            /* run it */
	CMD_BAD_ARG,       /* 501: argument given or missing */
	CMD_BAD_PHASE,     /* out of sequence: refusal[phase] */
	CMD_HELO_REQUIRED, /* MAIL before HELO/EHLO under smtpd_helo_required */
	CMD_TLS_ACTIVE     /* not once TLS is active */
};

/* smtpd_cmd_find - the row of a verb; NULL for one we do not know. */
const struct smtpd_cmd *smtpd_cmd_find(enum smtp_verb v);
/* smtpd_cmd_check - may c run now (in phase ph, context CMD_CTX_*, with
 * this argument)? Anything but CMD_OK sets *reply to the refusal. */
enum smtpd_check smtpd_cmd_check(const struct smtpd_cmd *c, enum smtpd_phase ph, unsigned ctx,
				 const char *arg, const char **reply);
/* smtpd_phase - the session's phase (from HELO, STARTTLS and s->tx). */
enum smtpd_phase smtpd_phase(const struct session *s);

/* ---- smtpd.c, for smtpd_txn.c ------------------------------------------- */

void smtpd_reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void smtpd_reply_error(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* smtpd_session_close - the last reply is out: flush it and disconnect
 * (resuming the session is a no-op from then on). */
void smtpd_session_close(struct session *s);
/* Session ids are SMTPD_ID_LEN characters; a transaction's id is its
 * session's, a dot and its number in the session in 4 digits (modulo
 * 10000), "4XKQ2F1B7CDM.0001": fixed widths, so no id is a prefix of
 * another. Log lines carry one or the other. */
#define SMTPD_ID_LEN 12
void smtpd_gen_id(char out[16]);
void smtpd_log_reject(struct session *s, const char *stage, const char *what, const char *to);
void smtpd_deadline_arm(struct session *s);
void smtpd_enter_state(struct session *s, enum sstate st);
void smtpd_session_pause(struct session *s);
void smtpd_session_resume(struct session *s);
uint64_t smtpd_drain_deadline(const struct session *s);

/* ---- smtpd_txn.c, for smtpd.c ------------------------------------------- */

void smtpd_data_input(struct session *s, const char *buf, size_t len);
void smtpd_cmd_data(struct session *s, char *arg);
void smtpd_cmd_mail(struct session *s, char *arg);
void smtpd_cmd_rcpt(struct session *s, char *arg);
void smtpd_rcpt_pending_free(struct rcpt_pending *rp);
void smtpd_txn_reset(struct session *s);
/* smtpd_milter_close - close the milter connections parked for the next
 * transaction (HELO/EHLO, STARTTLS, the session's end). */
void smtpd_milter_close(struct session *s);
/* smtpd_stream_drop - abandon a relay_while_receiving stream unfinished
 * (gone: the client is gone, else the message refused); no-op without one. */
void smtpd_stream_drop(struct session *s, int gone);
/* smtpd_scan_cancel - the session ends during its scan: forget it (the
 * loop's backlog shrinks, a waiting DATA may go on). */
void smtpd_scan_cancel(struct session *s);

/* ---- smtpd_flow.c: in_flow_delay, the scanner's backlog before DATA ------ */

struct smtpd_flow_ticket;
/* smtpd_flow_wait - DATA of s: 0 if it may go on now; 1 if it waits
 * (paused), and go(s) then runs on s's loop once, when a scan ended or
 * in_flow_delay passed, unless the session ended first. */
int smtpd_flow_wait(struct session *s, ev_cb *go);
/* smtpd_flow_leave - the session ends: forget its turn. */
void smtpd_flow_leave(struct session *s);
/* smtpd_flow_scan_begin / _end - a scan of a stored message starts, ends
 * (verdict or cancel), on any loop. */
void smtpd_flow_scan_begin(void);
void smtpd_flow_scan_end(const struct conf *cf);
/* smtpd_flow_kick - a transaction that reached DATA ended: if the backlog
 * has room (its message was not scanned: refused, discarded, the client
 * gone), the next waiting DATA goes on. */
void smtpd_flow_kick(void);

#endif
