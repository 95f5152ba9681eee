/*
 * policy_step.h - what the RCPT checks share, below the chain that runs
 * them: the policy snapshot, a recipient's environment and verdict, the
 * session's delayed verdicts (rules.c), and the contract of one step.
 * grey.h, rules.h and dnscheck.h build on this; policy.h (the chain and
 * the current snapshot) includes it and them, so nothing here includes
 * policy.h and the steps' modules never include one another through it.
 *
 * Step contract: a step returns STEP_PASS (go on), STEP_DECIDED (v filled:
 * the chain ends), or STEP_ASYNC: it started something, registered its
 * cancel function with policy_step_async(), and MUST call
 * policy_step_done() exactly once later on the same loop, unless the
 * chain was cancelled first (then its cancel function runs instead and it
 * MUST NOT call back).
 */
#ifndef PERIMD_POLICY_STEP_H
#define PERIMD_POLICY_STEP_H

#include <stddef.h>

struct conf;
struct conf_list;
struct dnscheck;
struct ev_loop;
struct map_req;
struct milter_set;
struct relay_verify;

struct policy {
	struct conf *conf; /* the snapshot this policy was built from */
	/* private */
	struct map **relay_maps;
	int nrelay_maps;
	struct map *transport;
	struct map *rcpt_maps; /* relay_recipient_maps */
	struct map *client_access, *sender_access, *rcpt_access;
	struct map *header_checks;  /* a regexp: table, after DATA (rules.h) */
	struct grey_policy *grey;   /* greylisting whitelists (grey.h) */
	unsigned shadow;            /* checks of shadow_checks (policy_shadow) */
	struct psvc_conf *psvc;     /* smtpd_policy_services (psvc.h) */
	struct milter_set *milters; /* smtpd_milters, parsed (milter.h) */
	int refs;
};

/* ---- verdicts at RCPT ------------------------------------------------ */

/* A verdict: code 0 = accept the recipient; else the reply to give. */
struct policy_verdict {
	int code;         /* 0, or 4xx/5xx */
	char reply[512];  /* full reply line without CRLF */
	const char *rule; /* short name of the check that decided */
	/* An access map's DEFER_IF_PERMIT / DEFER_IF_REJECT (delayed verdicts
	 * only): POLICY_IF_PERMIT gives this reply only to a recipient all
	 * other checks accept; POLICY_IF_REJECT only instead of a 5xx. */
	int cond;
	/* An accepted recipient (code 0): DISCARD (250, not relayed), and the
	 * PREPEND headers for the relayed copy ("Name: value\r\n" each). */
	int discard;
	char prepend[1024];
};
enum { POLICY_IF_PERMIT = 1, POLICY_IF_REJECT = 2 };

struct policy_req;
struct psvc_conf;
struct psvc_txn;
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
	const char *client_addr; /* the session's (after any PROXY header) */
	char *client_name;       /* verified client host name (DNS), or NULL */
	char *helo;              /* NULL before HELO/EHLO */
	char *sender;            /* NULL outside a transaction; "" = <> */
	/* Delayed verdicts (code 0 = none). Each is settled once: the HELO
	 * check at HELO, the client and sender access lookups at the first
	 * RCPT that needs them (per session / per transaction). */
	int client_done, sender_done;
	int client_name_tried; /* client_access_maps also asked by host name */
	struct policy_verdict client_v, helo_v, sender_v;
	/* An asynchronous map lookup or callout of the RCPT being checked. */
	struct map_req *q;
	struct relay_verify *callout;
	enum policy_step (*q_next)(struct policy_req *r, int result, const char *value,
				   struct policy_verdict *v);
	int stage; /* where the delayed-verdict step is */
};

/* policy_session_new - state for a new session; client_addr and
 * session_id MUST outlive it. */
struct policy_sess *policy_session_new(const struct policy *p, const char *session_id, const char *client_addr);
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
	struct policy_sess *sess; /* the session's delayed verdicts, or NULL */
	const char *route;        /* the recipient's backends (transport_maps
				    * value), NULL for relay_backends */
	struct ev_loop *loop;
	const struct policy *pol;
	const char *session_id;
	const char *client_addr; /* "192.0.2.1" / "2001:db8::1" */
	const char *helo;        /* "" before HELO/EHLO */
	const char *sender;      /* "" for the null sender */
	const char *rcpt;        /* "user@domain" or "Postmaster" */
	const char *rcpt_local;
	const char *rcpt_domain; /* lower case; "" for bare Postmaster */
	struct dnscheck *dns;    /* the session's DNS checks (dnscheck.h) or NULL */
	struct psvc_txn *psvc;   /* the transaction's policy-service state
				  * (psvc.h), NULL without smtpd_policy_services */
};


typedef void policy_done_fn(void *arg, const struct policy_verdict *v);

/* One recipient's run through the chain (private to policy.c and the
 * modules whose steps it calls). */
struct policy_req {
	const struct policy_env *env;
	policy_done_fn *done;
	void *arg;
	int step;     /* next step to run */
	int async;    /* a step is in flight */
	int exempt;   /* role account: skip DNSBL, greylisting, ... */
	int dnswl;    /* client on a dnswl_sites list (set by the DNSBL
				    * step): greylisting skips it */
	int verified; /* the verify cache says the backend takes it */
	/* What access maps left for the end of the chain (policy_step_final). */
	struct policy_verdict if_permit, if_reject;
	int discard;
	char prepend[1024];
	void (*cancel)(void *handle);
	void *handle;
	/* The chain's runner (policy.c): policy_step_done() goes on with it,
	 * so this floor needs no knowledge of the steps. 1 = decided. */
	int (*resume)(struct policy_req *r, struct policy_verdict *v);
	/* ... and asks it whether a step's refusal is shadowed: 1 = it was
	 * (policy_step_done() then resumes the chain instead of ending it). */
	int (*shadowed)(struct policy_req *r, const struct policy_verdict *v);
};

/* For asynchronous steps: policy_step_async() registers how to undo the
 * running step; policy_step_done() reports its end (decided = 1: v is the
 * verdict; 0: it passed) and runs the rest of the chain. */
void policy_step_async(struct policy_req *r, void (*cancel)(void *handle), void *handle);
void policy_step_done(struct policy_req *r, int decided, const struct policy_verdict *v);
/* policy_step_final - the chain's verdict v, amended by what access maps
 * left in r: DEFER_IF_PERMIT on an acceptance, DEFER_IF_REJECT on a 5xx,
 * DISCARD and PREPEND on an acceptance. */
void policy_step_final(const struct policy_req *r, struct policy_verdict *v);

/* ---- shadow checks ----------------------------------------------------
 *
 * A check named in shadow_checks runs as usual, but a refusal it decides
 * is only logged and counted (perimd_shadow_rejects_total{check}); the
 * recipient goes on through the chain as if the check had passed. The
 * names: dnsbl, greylist, recipient_maps, recipient_verify, client_access,
 * sender_access, recipient_access, helo, client_hostname, sender_domain,
 * policy_services.
 * The virus scanner is never one. */

/* policy_shadow_load - p->shadow from c's shadow_checks: 0, or -1 with err
 * (an unknown name, or the virus scanner). */
int policy_shadow_load(struct policy *p, const struct conf *c, char *err, size_t errlen);
/* policy_shadow - v is a refusal by check: 1 when check is shadowed (it
 * was logged and counted; the caller goes on as if it passed), else 0. */
int policy_shadow(const struct policy_req *r, const char *check, const struct policy_verdict *v);
/* policy_shadow_on - check is in p's shadow_checks; policy_shadow_count -
 * count one refusal of check in shadow (for callers without a chain: the
 * Postfix policy service, which logs its own line). */
int policy_shadow_on(const struct policy *p, const char *check);
void policy_shadow_count(const char *check);

/* policy_split_list - split "a, b c" into l (free with policy_list_free). */
void policy_split_list(const char *s, struct conf_list *l);
void policy_list_free(struct conf_list *l);

#endif
