/*
 * psvc.h - perimd as a client of Postfix policy-delegation services
 * (Postfix's SMTPD_POLICY_README): smtpd_policy_services, asked at RCPT
 * in order, the first answer other than DUNNO deciding, as Postfix's
 * check_policy_service does.
 *
 * One RCPT step (psvc_step, in policy.c's table before greylisting). A
 * request is "name=value" lines and an empty line; the answer is
 * "action=..." and an empty line. Connections are per service and per io
 * loop, pooled (at most smtpd_policy_service_connection_limit each; more
 * requests wait in order), persistent (closed after
 * smtpd_policy_service_max_idle idle, not reused past
 * smtpd_policy_service_max_ttl or smtpd_policy_service_request_limit
 * requests) and non-blocking on the loop (conn.h). A service that does
 * not answer within smtpd_policy_service_timeout, closes, or answers
 * garbage is asked again (smtpd_policy_service_try_limit tries,
 * smtpd_policy_service_retry_delay apart); then its answer is
 * smtpd_policy_service_default_action.
 *
 * An answer is reused only for a request with the very same attributes in
 * the same transaction (struct psvc_txn). Role accounts (r->exempt) are
 * asked, but never refused by an answer: the refusal is logged.
 */
#ifndef PERIMD_PSVC_H
#define PERIMD_PSVC_H

#include "policy_step.h"

#include <stddef.h>
#include <sys/socket.h>

struct conf;
struct ev_loop;

/* ---- the configured services (part of the policy snapshot) ----------- */

/* One service with its settings: the smtpd_policy_service_* parameters,
 * or what its Postfix-style { } settings say. */
struct psvc_service {
	char *name; /* "inet:127.0.0.1:10023", "unix:/path" as written */
	struct sockaddr_storage sa;
	socklen_t salen;
	long long timeout, max_idle, max_ttl, retry_delay; /* ms */
	long long request_limit, try_limit;
	char *default_action;
	char *policy_context; /* "" unless set in { } */
};

struct psvc_conf {
	struct psvc_service *v;
	int n;
};

/* psvc_load - parse smtpd_policy_services (inet:HOST:PORT, unix:/path,
 * HOST:PORT; the word check_policy_service before an item is allowed, as
 * Postfix's restriction lists write it; host names are resolved now),
 * each item alone or as Postfix 3.0's "{ SERVICE, name = value, ... }"
 * with timeout, default_action, max_idle, max_ttl, request_limit,
 * retry_delay, try_limit and policy_context, and the
 * smtpd_policy_service_* defaults. 0, or -1 with err filled. */
int psvc_load(const struct conf *c, struct psvc_conf *pc, char *err, size_t errlen);
void psvc_conf_free(struct psvc_conf *pc);
/* psvc_settings_parse - a service's { } settings, "name = value ..." (the
 * items joined by spaces; a value runs to the next setting's name) into
 * s (name, default_action and policy_context set, freed by the caller).
 * 0, or -1 with err filled. Pure; fuzzed. */
int psvc_settings_parse(struct psvc_service *s, const char *text, char *err, size_t errlen);

/* ---- per transaction --------------------------------------------------- */

/* What the SMTP session knows of a transaction that the requests carry,
 * and what the answers leave for the message (PREPEND). smtpd_txn.c makes
 * one per transaction when services are configured. */
struct psvc_txn {
	char instance[48];         /* unique per transaction */
	char queue_id[24];         /* the transaction's id (smtpd_int.h) */
	const char *protocol_name; /* "SMTP" / "ESMTP" */
	int client_port;
	char server_address[46];
	int server_port;
	unsigned long long size; /* MAIL SIZE=, 0 if none */
	char tls_protocol[24], tls_cipher[64];
	int tls_bits;
	struct psvc_cached *cache; /* answers given in this transaction */
	char **prepend;            /* header lines (no CRLF) for the message */
	int nprepend;
};

void psvc_txn_free(struct psvc_txn *t);

/* ---- the RCPT step ----------------------------------------------------- */

/* psvc_step - ask the services (env->psvc and the policy's services);
 * the step contract of policy_step.h. */
enum policy_step psvc_step(struct policy_req *r, struct policy_verdict *v);

/* psvc_loop_shutdown - close this loop's pooled connections (the loop has
 * ended; no request is left). */
void psvc_loop_shutdown(struct ev_loop *loop);

/* ---- the protocol (pure; fuzzed by tests/fuzz/fuzz_psvc.c) ------------- */

#define PSVC_MAX_REPLY 4096 /* an answer longer than this is a protocol error */

/* psvc_attr_next - the next line of a Postfix attribute message
 * ("name=value" lines, then an empty line) in buf[*pos..len), for the
 * client here and the server (policyd.c): PARSE_OK, *pos moved past the
 * line, with the name and value (not terminated; *nlen = 0 for the empty
 * line that ends the message); PARSE_AGAIN (no line end yet, len <=
 * limit); PARSE_TOO_LONG (the message runs past limit bytes); PARSE_BAD
 * (no '=', an empty name, or a NUL). Lines end in LF or CRLF. */
int psvc_attr_next(const char *buf, size_t len, size_t *pos, size_t limit, const char **name, size_t *nlen,
		   const char **value, size_t *vlen);

/* psvc_reply_parse - one answer from buf[0..len): PARSE_OK (the action
 * value, NUL-terminated and without control characters, in action, which
 * holds alen >= 2 bytes; *used = bytes through the empty line), PARSE_AGAIN,
 * PARSE_TOO_LONG (no end within PSVC_MAX_REPLY) or PARSE_BAD (a line
 * without '=', a NUL, no action attribute). Lines end in LF or CRLF;
 * other attributes are ignored, as Postfix does. */
int psvc_reply_parse(const char *buf, size_t len, char *action, size_t alen, size_t *used);

enum psvc_kind {
	PSVC_DUNNO,
	PSVC_OK,
	PSVC_REFUSE,          /* REJECT, DEFER, 4NN/5NN text: reply */
	PSVC_DEFER_IF_PERMIT, /* reply, if the end result is to accept */
	PSVC_DEFER_IF_REJECT, /* reply, if a later answer refuses with 5xx */
	PSVC_PREPEND,         /* text: a header for the message */
	PSVC_WARN,            /* text: logged */
	PSVC_INFO,            /* text: logged */
	PSVC_UNSUPPORTED,     /* FILTER HOLD DISCARD REDIRECT BCC ...: logged, DUNNO */
	PSVC_INVALID          /* anything else: 451 4.3.5 (reply), as Postfix */
};

struct psvc_action {
	enum psvc_kind kind;
	int code;         /* of reply, PSVC_REFUSE / DEFER_IF_* / INVALID */
	char reply[512];  /* the SMTP reply, without CRLF */
	char text[1000];  /* PREPEND header / WARN, INFO text / unsupported action */
	const char *name; /* result name for counters and logs */
};

/* psvc_action_parse - the meaning of an action value for recipient rcpt,
 * as Postfix's access(5) (case-insensitive verbs; texts may start with an
 * RFC 3463 enhanced code, whose class is made to match the reply's).
 * Replies read "CODE X.Y.Z <rcpt>: Recipient address rejected: TEXT".
 * Pure. */
void psvc_action_parse(const char *action, const char *rcpt, struct psvc_action *a);

#endif
