/*
 * rules.c - role accounts, recipient validation (maps, then a cached
 * callout), access maps and the delayed client/HELO/sender verdicts.
 *
 * Invariants:
 * - Client, HELO and sender verdicts are made once (the HELO check at
 *   HELO, the client lookup once per session, the sender lookup once per
 *   transaction) and given only at RCPT, only to recipients that are not
 *   exempt (role accounts, recipient_access_maps OK): postmaster@ and
 *   abuse@ can always be reached (RFC 2142, RFC 5321 §4.5.1).
 * - A recipient has at most one lookup or callout in flight; its handle is
 *   in the session state and the chain's cancel function drops it, so a
 *   session freed meanwhile is never called back.
 * - Infrastructure failures (a map that cannot answer, a callout that
 *   cannot complete) give 4xx, never 5xx: only an answer refuses for good.
 */
#include "rules.h"
#include "dnscheck.h"
#include "conf.h"
#include "log.h"
#include "maps.h"
#include "relay.h"
#include "smtp_proto.h"
#include "verify.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum policy_step lookup_next_fn(struct policy_req *r, int result, const char *value,
					struct policy_verdict *v);

/* ---- maps ------------------------------------------------------------------ */

/* open_one - one MAP parameter ("" = none), its values checked by check;
 * an error is added to err. */
static int open_one(const char *spec, struct map **m, const char *name, map_value_check_fn *check, char *err,
		    size_t errlen)
{
	char why[4096];
	*m = NULL;
	if (!spec[0])
		return 0;
	if (!(*m = map_open_checked(spec, check, why, sizeof why))) {
		log_err_add(err, errlen, "%s: %s", name, why);
		return -1;
	}
	return 0;
}

/* rules_load - see rules.h: every map is tried, every error reported. */
int rules_load(struct policy *p, char *err, size_t errlen)
{
	const struct conf *c = p->conf;
	int bad = 0;
	bad |= open_one(c->relay_recipient_maps, &p->rcpt_maps, "relay_recipient_maps", NULL, err, errlen);
	bad |= open_one(c->client_access_maps, &p->client_access, "client_access_maps", rules_access_check,
			err, errlen);
	bad |= open_one(c->sender_access_maps, &p->sender_access, "sender_access_maps", rules_access_check,
			err, errlen);
	bad |= open_one(c->recipient_access_maps, &p->rcpt_access, "recipient_access_maps",
			rules_access_check, err, errlen);
	bad |= open_one(c->header_checks, &p->header_checks, "header_checks", rules_header_check, err, errlen);
	if (p->header_checks && strncmp(c->header_checks, "regexp:", 7)) {
		log_err_add(err, errlen,
			    "header_checks = %s: takes a regexp: table (Postfix's header_checks(5))",
			    c->header_checks);
		bad = 1;
	}
	return bad ? -1 : 0;
}

/* rules_free - see rules.h. */
void rules_free(struct policy *p)
{
	map_free(p->rcpt_maps);
	map_free(p->client_access);
	map_free(p->sender_access);
	map_free(p->rcpt_access);
	map_free(p->header_checks);
}

/* ---- session state ------------------------------------------------------------ */

/* policy_session_new - see policy_step.h. */
struct policy_sess *policy_session_new(const struct policy *p, const char *session_id, const char *client_addr)
{
	struct policy_sess *ps = xcalloc(1, sizeof *ps);
	ps->pol = p;
	ps->session_id = session_id;
	ps->client_addr = client_addr;
	return ps;
}

/* policy_session_free - see policy_step.h. */
void policy_session_free(struct policy_sess *ps)
{
	if (!ps)
		return;
	map_cancel(ps->q);
	relay_verify_cancel(ps->callout);
	free(ps->client_name);
	free(ps->helo);
	free(ps->sender);
	free(ps);
}

/* set_delayed - a delayed verdict: code, enhanced code and text; the
 * reply is completed with the recipient at RCPT. */
static void set_delayed(struct policy_verdict *dv, int code, const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void set_delayed(struct policy_verdict *dv, int code, const char *rule, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(dv->reply, sizeof dv->reply, fmt, ap);
	va_end(ap);
	dv->code = code;
	dv->rule = rule;
}

/* helo_valid - a domain (RFC 5321 §4.1.1.1) or an address literal, the
 * only forms a HELO name may take. */
static int helo_valid(const char *h)
{
	size_t n = strlen(h);
	if (n > 0 && h[n - 1] == '.') /* an absolute name */
		n--;
	return n > 0 && smtp_domain_valid(h, n, 0);
}

/* policy_helo - see policy_step.h. */
void policy_helo(struct policy_sess *ps, const char *helo)
{
	free(ps->helo);
	ps->helo = xstrdup(helo);
	ps->helo_v.code = 0;
	if (ps->pol->conf->reject_invalid_helo_hostname && !helo_valid(helo))
		set_delayed(&ps->helo_v, 501, "helo_invalid",
			    "5.5.2 Helo command rejected: invalid name <%.255s>", helo);
}

/* policy_mail - see policy_step.h. */
void policy_mail(struct policy_sess *ps, const char *sender)
{
	free(ps->sender);
	ps->sender = sender ? xstrdup(sender) : NULL;
	ps->sender_done = 0;
	memset(&ps->sender_v, 0, sizeof ps->sender_v);
}

/* policy_is_role - local part is one of role_accounts (any case). */
int policy_is_role(const struct policy *p, const char *local)
{
	return conf_list_has(&p->conf->role_accounts, local);
}

/* policy_addr_check - see policy_step.h (RFC 5321 §4.5.3.1.1-3). */
const char *policy_addr_check(const char *local, const char *domain)
{
	size_t ln = strlen(local), dn = strlen(domain);
	if (ln > 64)
		return "local part longer than 64 octets";
	if (dn > 255)
		return "domain longer than 255 octets";
	if (ln + (dn ? dn + 1 : 0) + 2 > 256)
		return "path longer than 256 octets";
	return NULL;
}

/* ---- lookups in the chain ---------------------------------------------------- */

/* lookup_cancel - the chain was abandoned while a lookup ran. */
static void lookup_cancel(void *handle)
{
	struct policy_sess *ps = handle;
	map_cancel(ps->q);
	ps->q = NULL;
}

/* lookup_done - an asynchronous lookup answered: continue the step. */
static void lookup_done(void *arg, int result, const char *value)
{
	struct policy_req *r = arg;
	struct policy_sess *ps = r->env->sess;
	struct policy_verdict v = { 0 };
	ps->q = NULL;
	enum policy_step st = ps->q_next(r, result, value, &v);
	if (st != STEP_ASYNC)
		policy_step_done(r, st == STEP_DECIDED, &v);
}

/* lookup - key in m, then next(r, result, value, v): at once for an
 * in-memory map, else asynchronously (STEP_ASYNC). */
static enum policy_step lookup(struct policy_req *r, const struct map *m, enum map_kind kind, const char *key,
			       lookup_next_fn *next, struct policy_verdict *v)
{
	struct policy_sess *ps = r->env->sess;
	if (!map_is_async(m) || !ps) {
		char val[1024], err[256];
		int res = map_query(m, kind, key, val, sizeof val, err, sizeof err);
		if (res < 0)
			log_warn("%s: map %s: lookup of \"%s\" failed: %s", r->env->session_id, map_spec(m),
				 key, err);
		return next(r, res, val, v);
	}
	ps->q_next = next;
	ps->q = map_query_async(m, kind, key, r->env->loop, lookup_done, r);
	policy_step_async(r, lookup_cancel, ps);
	return STEP_ASYNC;
}

/* decide - fill the verdict: "CODE ENH <rcpt>: text". */
static enum policy_step decide(struct policy_req *r, struct policy_verdict *v, int code, const char *enh,
			       const char *rule, const char *text)
{
	v->code = code;
	v->rule = rule;
	snprintf(v->reply, sizeof v->reply, "%d %.15s <%.300s>: %.180s", code, enh, r->env->rcpt, text);
	return STEP_DECIDED;
}

/* decide_delayed - give a delayed verdict ("ENH text") for this rcpt. */
static enum policy_step decide_delayed(struct policy_req *r, struct policy_verdict *v,
				       const struct policy_verdict *dv)
{
	char enh[16];
	const char *sp = strchr(dv->reply, ' ');
	size_t n = sp ? (size_t)(sp - dv->reply) : 0;
	if (n >= sizeof enh)
		n = 0;
	memcpy(enh, dv->reply, n);
	enh[n] = 0;
	return decide(r, v, dv->code, enh, dv->rule, sp ? sp + 1 : dv->reply);
}

/* tempfail - a map could not answer (DESIGN.md: 451 4.3.0, never 5xx). */
static enum policy_step tempfail(struct policy_req *r, struct policy_verdict *v)
{
	return decide(r, v, 451, "4.3.0", "tempfail_lookup", "temporary lookup failure");
}

/* ---- role accounts ------------------------------------------------------------ */

/* rules_step_role - see rules.h. Relay control already ran in smtpd.c, so
 * the domain is ours (or the recipient is the bare Postmaster). */
enum policy_step rules_step_role(struct policy_req *r, struct policy_verdict *v)
{
	(void)v;
	if (policy_is_role(r->env->pol, r->env->rcpt_local))
		r->exempt = 1;
	return STEP_PASS;
}

/* ---- recipient validation ----------------------------------------------------- */

/* unknown - the recipient does not exist (DESIGN.md "Replies"). */
static enum policy_step unknown(struct policy_req *r, struct policy_verdict *v, const char *rule)
{
	return decide(r, v, 550, "5.1.1", rule, "recipient unknown");
}

/* callout_cancel - the chain was abandoned during a callout. */
static void callout_cancel(void *handle)
{
	struct policy_sess *ps = handle;
	relay_verify_cancel(ps->callout);
	ps->callout = NULL;
}

/* callout_done - the backend's answer to RCPT (0: no answer). An
 * acceptance is cached for relay_verify_positive_ttl; a refusal whose
 * enhanced code names the mailbox (verify.h's allow-list) is the verdict
 * for every sender, cached. Any other 5xx was said to MAIL FROM:<>, not to
 * this sender (5.7.1, 5.1.8 ... are about the sender or client): the
 * recipient goes on unverified and the replay, with the real sender, gets
 * the backend's real answer. Anything else is 451 4.4.1, not cached. */
static void callout_done(void *arg, int code, const char *reply)
{
	struct policy_req *r = arg;
	const struct policy_env *env = r->env;
	const struct conf *cf = env->pol->conf;
	struct policy_verdict v = { 0 };
	env->sess->callout = NULL;
	if (code >= 200 && code < 300) {
		log_info("%s: callout: <%s> accepted by the backend", env->session_id, env->rcpt);
		verify_accepted(env->rcpt, cf);
		policy_step_done(r, 0, &v);
		return;
	}
	if (code >= 400 && code != 421 &&
	    verify_learn("", env->rcpt, code, reply, VERIFY_CALLOUT, cf) == VERIFY_KEPT_RCPT) {
		char enh[16];
		log_info("%s: callout: <%s> refused by the backend: %s", env->session_id, env->rcpt, reply);
		verify_enh(reply, enh, sizeof enh);
		v.code = code;
		v.rule = code >= 500 ? "verify_callout" : "tempfail_verify";
		verify_format(code, enh, env->rcpt, v.reply, sizeof v.reply);
		policy_step_done(r, 1, &v);
		return;
	}
	if (code >= 500) {
		log_info("%s: callout: <%s> refused to MAIL FROM:<> without a mailbox code, "
			 "left to the replay: %s",
			 env->session_id, env->rcpt, reply);
		policy_step_done(r, 0, &v);
		return;
	}
	log_warn("%s: callout for <%s> did not complete: %s", env->session_id, env->rcpt, code ? reply : reply);
	decide(r, &v, 451, "4.4.1", "tempfail_verify", "recipient verification failed, try again later");
	policy_step_done(r, 1, &v);
}

/* callout - verify the recipient at its backend (STEP_ASYNC). */
static enum policy_step callout(struct policy_req *r, struct policy_verdict *v)
{
	const struct policy_env *env = r->env;
	const struct conf *cf = env->pol->conf;
	struct conf_list route = { 0, NULL };
	if (!env->sess)
		return unknown(r, v, "recipient_unknown");
	if (env->route)
		policy_split_list(env->route, &route);
	env->sess->callout = relay_verify(env->loop, env->route ? &route : &cf->relay_backends, env->rcpt, cf,
					  env->session_id, callout_done, r);
	if (env->route)
		policy_list_free(&route);
	policy_step_async(r, callout_cancel, env->sess);
	return STEP_ASYNC;
}

/* recipient_found - relay_recipient_maps answered. A value starting with
 * REJECT settles the recipient as unknown; any other entry as known; no
 * entry leaves it to the callout when relay_recipient_verify is on. */
static enum policy_step recipient_found(struct policy_req *r, int result, const char *value,
					struct policy_verdict *v)
{
	if (result < 0)
		return tempfail(r, v);
	if (result > 0) {
		size_t n = strcspn(value, " \t");
		if (n == 6 && !strncasecmp(value, "REJECT", 6))
			return unknown(r, v, "recipient_unknown");
		return STEP_PASS;
	}
	if (r->env->pol->conf->relay_recipient_verify)
		return callout(r, v);
	return unknown(r, v, "recipient_unknown");
}

/* rcpt_noext - the recipient without its address extension
 * (recipient_delimiter: "user+ext@domain" is "user@domain") into buf;
 * 0, or -1 when it has none (no delimiter set or found, or one that
 * starts the local part, as Postfix leaves those whole). */
static int rcpt_noext(const struct policy_req *r, char *buf, size_t len)
{
	const char *delims = r->env->pol->conf->recipient_delimiter, *rcpt = r->env->rcpt;
	const char *at = strrchr(rcpt, '@');
	if (!delims[0] || !at)
		return -1;
	size_t base = strcspn(rcpt, delims);
	if (base == 0 || base >= (size_t)(at - rcpt))
		return -1;
	return snprintf(buf, len, "%.*s%s", (int)base, rcpt, at) < (int)len ? 0 : -1;
}

/* recipient_found_whole - the whole user+ext@domain was not listed: ask
 * for user@domain (then @domain), Postfix's order; else as found. */
static enum policy_step recipient_found_whole(struct policy_req *r, int result, const char *value,
					      struct policy_verdict *v)
{
	char key[600];
	if (result != 0 || rcpt_noext(r, key, sizeof key) < 0)
		return recipient_found(r, result, value, v);
	return lookup(r, r->env->pol->rcpt_maps, MAP_RCPT, key, recipient_found, v);
}

/* rules_step_recipient - see rules.h. Role accounts are accepted without
 * a lookup (even when the maps do not list them, or cannot answer) and are
 * never called out. A recipient with an address extension is looked up
 * whole, then without it (recipient_found_whole). */
enum policy_step rules_step_recipient(struct policy_req *r, struct policy_verdict *v)
{
	const struct policy *p = r->env->pol;
	char key[600];
	if (r->exempt || r->verified || !r->env->rcpt_domain[0])
		return STEP_PASS;
	if (p->rcpt_maps && rcpt_noext(r, key, sizeof key) == 0)
		return lookup(r, p->rcpt_maps, MAP_KEY, r->env->rcpt, recipient_found_whole, v);
	if (p->rcpt_maps)
		return lookup(r, p->rcpt_maps, MAP_RCPT, r->env->rcpt, recipient_found, v);
	if (p->conf->relay_recipient_verify)
		return callout(r, v);
	return STEP_PASS;
}

/* ---- access maps and delayed verdicts ------------------------------------------- */

enum { DS_RCPT, DS_CLIENT, DS_HELO, DS_SENDER, DS_END };

static enum policy_step delayed_run(struct policy_req *r, struct policy_verdict *v);

/* access_result - an access map's answer into a verdict: 1 OK, 0 DUNNO or
 * not found, 2 a verdict in dv (a refusal, a conditional DEFER_IF_*, or an
 * acceptance with DISCARD or PREPEND), 3 lookup failure. A value a file:
 * map could not hold (maps of databases and directories are not checked
 * at load) is a configuration error: 451 4.3.5, logged. */
static int access_result(const struct policy_req *r, int result, const char *value, const char *what,
			 const char *rule, const char *map, struct policy_verdict *dv)
{
	struct rules_action a;
	char why[300];
	if (result < 0)
		return 3;
	if (result == 0)
		return 0;
	if (rules_action_parse(value, RULES_ACCESS, &a, why, sizeof why) < 0) {
		log_warn("%s: %s: value \"%s\": %s", r->env->session_id, map, value, why);
		set_delayed(dv, 451, "tempfail_config", "4.3.5 server configuration error");
		return 2;
	}
	switch (a.act) {
	case RA_OK: return 1;
	case RA_DUNNO: return 0;
	case RA_WARN:
		log_warn("%s: warn: %s: %s from [%s]: %s", r->env->session_id, rule, map, r->env->client_addr,
			 a.text);
		return 0;
	case RA_REFUSE:
	case RA_DEFER_IF_PERMIT:
	case RA_DEFER_IF_REJECT:
		set_delayed(dv, a.code, rule, "%s %s", a.enh, a.text[0] ? a.text : what);
		dv->cond = a.act == RA_DEFER_IF_PERMIT ? POLICY_IF_PERMIT
		    : a.act == RA_DEFER_IF_REJECT      ? POLICY_IF_REJECT
						       : 0;
		return 2;
	case RA_DISCARD:
		dv->discard = 1;
		dv->rule = rule;
		log_info("%s: discard: %s: %s%s%s", r->env->session_id, rule, map, a.text[0] ? ": " : "",
			 a.text);
		return 2;
	case RA_PREPEND: snprintf(dv->prepend, sizeof dv->prepend, "%.900s\r\n", a.text); return 2;
	case RA_IGNORE: return 0;
	}
	return 0;
}

/* take_delayed - a delayed verdict dv of check for this recipient: a
 * refusal ends the chain (STEP_DECIDED) unless check is in shadow_checks
 * (logged and counted, the chain goes on); DEFER_IF_*, DISCARD and
 * PREPEND are noted in r for policy_step_final and the checks go on
 * (STEP_PASS). */
static enum policy_step take_delayed(struct policy_req *r, struct policy_verdict *v,
				     const struct policy_verdict *dv, const char *check)
{
	if (dv->discard)
		r->discard = 1;
	if (dv->prepend[0] && !strstr(r->prepend, dv->prepend) &&
	    strlen(r->prepend) + strlen(dv->prepend) < sizeof r->prepend)
		strcat(r->prepend, dv->prepend);
	if (!dv->code)
		return STEP_PASS;
	if (!dv->cond) {
		decide_delayed(r, v, dv);
		return policy_shadow(r, check, v) ? STEP_PASS : STEP_DECIDED;
	}
	struct policy_verdict *keep = dv->cond == POLICY_IF_PERMIT ? &r->if_permit : &r->if_reject;
	if (!keep->code)
		decide_delayed(r, keep, dv);
	return STEP_PASS;
}

/* rcpt_access_done - recipient_access_maps answered. */
static enum policy_step rcpt_access_done(struct policy_req *r, int result, const char *value,
					 struct policy_verdict *v)
{
	struct policy_verdict dv = { 0 };
	switch (access_result(r, result, value, "Recipient address rejected: access denied",
			      "access_recipient", map_spec(r->env->pol->rcpt_access), &dv)) {
	case 1:
		r->exempt = 1; /* as a role account: later checks skip it */
		return STEP_PASS;
	case 2:
		if (take_delayed(r, v, &dv, "recipient_access") == STEP_DECIDED)
			return STEP_DECIDED;
		break;
	case 3: return tempfail(r, v);
	}
	r->env->sess->stage = DS_CLIENT;
	return delayed_run(r, v);
}

static enum policy_step client_name_lookup(struct policy_req *r, struct policy_verdict *v);
static void client_name_resume(struct policy_req *r);

/* client_access_done - client_access_maps answered (once per session):
 * first for the address, then (not listed) for the host name. */
static enum policy_step client_access_done(struct policy_req *r, int result, const char *value,
					   struct policy_verdict *v)
{
	struct policy_sess *ps = r->env->sess;
	char what[128];
	snprintf(what, sizeof what, "Client host [%s] rejected: access denied", ps->client_addr);
	int a = access_result(r, result, value, what, "access_client", map_spec(r->env->pol->client_access),
			      &ps->client_v);
	if (a == 3)
		return tempfail(r, v);
	if (a == 0 && !ps->client_name_tried && r->env->dns) {
		/* Not listed by address: then by the client's confirmed host
		 * name and its parent domains, once the lookups settled. */
		ps->client_name_tried = 1;
		enum policy_step st = dnscheck_wait_client_name(r, client_name_resume);
		if (st == STEP_ASYNC)
			return st;
		return client_name_lookup(r, v);
	}
	ps->client_done = 1;
	ps->stage = DS_CLIENT; /* gives client_v, if any */
	return delayed_run(r, v);
}

/* client_name_lookup - client_access_maps by host name (when confirmed). */
static enum policy_step client_name_lookup(struct policy_req *r, struct policy_verdict *v)
{
	const char *name = dnscheck_client_name(r->env->dns);
	if (!name)
		return client_access_done(r, 0, NULL, v);
	return lookup(r, r->env->pol->client_access, MAP_DOMAIN, name, client_access_done, v);
}

/* client_name_resume - the client's name lookups settled: go on. */
static void client_name_resume(struct policy_req *r)
{
	struct policy_verdict v = { 0 };
	enum policy_step st = client_name_lookup(r, &v);
	if (st != STEP_ASYNC)
		policy_step_done(r, st == STEP_DECIDED, &v);
}

/* sender_access_done - sender_access_maps answered (once per transaction). */
static enum policy_step sender_access_done(struct policy_req *r, int result, const char *value,
					   struct policy_verdict *v)
{
	struct policy_sess *ps = r->env->sess;
	char what[400];
	snprintf(what, sizeof what, "Sender address <%.300s> rejected: access denied",
		 ps->sender ? ps->sender : "");
	int a = access_result(r, result, value, what, "access_sender", map_spec(r->env->pol->sender_access),
			      &ps->sender_v);
	if (a == 3)
		return tempfail(r, v);
	ps->sender_done = 1;
	ps->stage = DS_END;
	return delayed_run(r, v);
}

/* delayed_run - the stages from ps->stage on: recipient access, then the
 * client, HELO and sender verdicts (Postfix's order, with smtpd_delay_reject). */
static enum policy_step delayed_run(struct policy_req *r, struct policy_verdict *v)
{
	struct policy_sess *ps = r->env->sess;
	const struct policy *p = r->env->pol;
	for (;;) {
		switch (ps->stage) {
		case DS_RCPT:
			ps->stage = DS_CLIENT;
			if (p->rcpt_access)
				return lookup(r, p->rcpt_access, MAP_ADDR_PARENT, r->env->rcpt,
					      rcpt_access_done, v);
			break;
		case DS_CLIENT:
			if (!ps->client_done && p->client_access)
				return lookup(r, p->client_access, MAP_CLIENT, ps->client_addr,
					      client_access_done, v);
			ps->client_done = 1;
			ps->stage = DS_HELO;
			if (take_delayed(r, v, &ps->client_v, "client_access") == STEP_DECIDED)
				return STEP_DECIDED;
			break;
		case DS_HELO:
			if (take_delayed(r, v, &ps->helo_v, "helo") == STEP_DECIDED)
				return STEP_DECIDED;
			ps->stage = DS_SENDER;
			break;
		case DS_SENDER:
			/* The null sender is looked up as "<>", as Postfix's
			 * smtpd_null_access_lookup_key. */
			if (!ps->sender_done && p->sender_access && ps->sender)
				return lookup(r, p->sender_access, MAP_ADDR_PARENT,
					      ps->sender[0] ? ps->sender : "<>", sender_access_done, v);
			ps->sender_done = 1;
			ps->stage = DS_END;
			break;
		default: return take_delayed(r, v, &ps->sender_v, "sender_access");
		}
	}
}

/* rules_step_delayed - see rules.h. */
enum policy_step rules_step_delayed(struct policy_req *r, struct policy_verdict *v)
{
	if (r->exempt || !r->env->sess)
		return STEP_PASS;
	r->env->sess->stage = DS_RCPT;
	return delayed_run(r, v);
}
