/*
 * policy.h - what the configuration decides about an envelope: relay
 * control and routing (this file grows into the ordered checks of DESIGN.md).
 *
 * A policy is built from one configuration snapshot (maps opened, backend
 * lists checked) and is immutable afterwards; sessions hold a reference
 * for their lifetime, so a reload never changes a session mid-way.
 */
#ifndef PERIMD_POLICY_H
#define PERIMD_POLICY_H

#include <stddef.h>

struct conf;
struct conf_list;
struct dnscheck;
struct ev_loop;
struct map_req;
struct relay_verify;

struct policy {
	struct conf *conf;     /* the snapshot this policy was built from */
	/* private */
	struct map **relay_maps;
	int nrelay_maps;
	struct map *transport;
	struct map *rcpt_maps;         /* relay_recipient_maps */
	struct map *client_access, *sender_access, *rcpt_access;
	struct grey_policy *grey;      /* greylisting whitelists (grey.h) */
	int refs;
};

/* policy_load - build from c (takes over the caller's reference to c).
 * NULL with err filled when a map cannot be opened or a backend is bad. */
struct policy *policy_load(struct conf *c, char *err, size_t errlen);
void policy_install(struct policy *p);
struct policy *policy_acquire(void);
void policy_release(struct policy *p);

/* policy_relay_domain - 1: domain is ours to relay, 0: not, -1: a map
 * lookup failed (451 4.3.0). Case-insensitive; ".example.com" entries
 * match subdomains. */
int policy_relay_domain(const struct policy *p, const char *domain);

/* policy_route - backend list text for a recipient domain: the
 * transport_maps value, or NULL for the relay_backends default. *route
 * stays valid while p lives. Returns 0, or -1 on lookup failure. */
int policy_route(const struct policy *p, const char *domain, const char **route);

/* ---- verdicts at RCPT ------------------------------------------------ */

/* A verdict: code 0 = accept the recipient; else the reply to give. */
struct policy_verdict {
	int code;                  /* 0, or 4xx/5xx */
	char reply[512];           /* full reply line without CRLF */
	const char *rule;          /* short name of the check that decided */
};

struct policy_req;
enum policy_step { STEP_PASS, STEP_DECIDED, STEP_ASYNC };

/* ---- per-session state: delayed verdicts (rules.c) -------------------
 *
 * Client, HELO and sender checks run when their data arrives but refuse
 * only at RCPT (as Postfix's smtpd_delay_reject), so that role accounts
 * can be exempted. smtpd.c makes one policy_sess per session and tells it
 * what arrives. Touched by the session's loop thread only. */
struct policy_sess {
	const struct policy *pol;
	const char *session_id;
	const char *client_addr;   /* the session's (after any PROXY header) */
	char *client_name;         /* verified client host name (DNS), or NULL */
	char *helo;                /* NULL before HELO/EHLO */
	char *sender;              /* NULL outside a transaction; "" = <> */
	/* Delayed verdicts (code 0 = none). Each is settled once: the HELO
	 * check at HELO, the client and sender access lookups at the first
	 * RCPT that needs them (per session / per transaction). */
	int client_done, sender_done;
	int client_name_tried;     /* client_access_maps also asked by host name */
	struct policy_verdict client_v, helo_v, sender_v;
	/* An asynchronous map lookup or callout of the RCPT being checked. */
	struct map_req *q;
	struct relay_verify *callout;
	enum policy_step (*q_next)(struct policy_req *r, int result, const char *value,
				   struct policy_verdict *v);
	int stage;                 /* where the delayed-verdict step is */
};

/* policy_session_new - state for a new session; client_addr and
 * session_id MUST outlive it. */
struct policy_sess *policy_session_new(const struct policy *p, const char *session_id,
				       const char *client_addr);
/* policy_session_free - NULL is ignored; any RCPT chain of the session
 * MUST have been cancelled or finished first. */
void policy_session_free(struct policy_sess *ps);
/* policy_helo - HELO/EHLO name arrived (evaluated now, refused at RCPT). */
void policy_helo(struct policy_sess *ps, const char *helo);
/* policy_mail - a transaction starts with this sender ("" = <>), or ends
 * (NULL): the sender's verdict is forgotten. */
void policy_mail(struct policy_sess *ps, const char *sender);
/* policy_is_role - local part is one of role_accounts (any case). */
int policy_is_role(const struct policy *p, const char *local);
/* policy_addr_check - RFC 5321 §4.5.3.1 size limits of an address (local
 * part 64, domain 255, path 256 octets): NULL, or why it is refused. */
const char *policy_addr_check(const char *local, const char *domain);

/* What a check may read of the session and the recipient (read-only, valid
 * until the check's done() ran or it was cancelled). */
struct policy_env {
	struct policy_sess *sess;  /* the session's delayed verdicts, or NULL */
	const char *route;         /* the recipient's backends (transport_maps
				    * value), NULL for relay_backends */
	struct ev_loop *loop;
	const struct policy *pol;
	const char *session_id;
	const char *client_addr;   /* "192.0.2.1" / "2001:db8::1" */
	const char *helo;          /* "" before HELO/EHLO */
	const char *sender;        /* "" for the null sender */
	const char *rcpt;          /* "user@domain" or "Postmaster" */
	const char *rcpt_local;
	const char *rcpt_domain;   /* lower case; "" for bare Postmaster */
	struct dnscheck *dns;      /* the session's DNS checks (dnscheck.h) or NULL */
};


typedef void policy_done_fn(void *arg, const struct policy_verdict *v);

/* One recipient's run through the chain (private to policy.c and the
 * modules whose steps it calls). */
struct policy_req {
	const struct policy_env *env;
	policy_done_fn *done;
	void *arg;
	int step;                  /* next step to run */
	int async;                 /* a step is in flight */
	int exempt;                /* role account: skip DNSBL, greylisting, ... */
	int dnswl;                 /* client on a dnswl_sites list (set by the DNSBL
				    * step): greylisting skips it */
	int verified;              /* the verify cache says the backend takes it */
	void (*cancel)(void *handle);
	void *handle;
};

/* For asynchronous steps (see policy.c). */
void policy_step_async(struct policy_req *r, void (*cancel)(void *handle), void *handle);
void policy_step_done(struct policy_req *r, int decided, const struct policy_verdict *v);

/* policy_rcpt - run the ordered RCPT checks (DESIGN.md "The path of one
 * message": role accounts, recipient validation, client/HELO/sender
 * verdicts, DNSBL, greylisting). Returns 1 when decided at once (*v filled,
 * done() never called), or 0 when a check went asynchronous: done(arg, v)
 * then runs later on env->loop, unless policy_cancel(*req) came first.
 * env MUST stay valid until then. */
int policy_rcpt(const struct policy_env *env, struct policy_verdict *v,
		policy_done_fn *done, void *arg, struct policy_req **req);
void policy_cancel(struct policy_req *req);

/* policy_split_list - split "a, b c" into l (free with policy_list_free). */
void policy_split_list(const char *s, struct conf_list *l);
void policy_list_free(struct conf_list *l);

#endif
