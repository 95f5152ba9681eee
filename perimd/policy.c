/*
 * policy.c - relay control and routing from one configuration snapshot.
 *
 * Invariants: a struct policy never changes after policy_load(); the
 * current one is swapped under a mutex and reference-counted, so readers
 * on any thread keep theirs valid as long as they hold it.
 */
#include "policy.h"
#include "conf.h"
#include "dnscheck.h"
#include "grey.h"
#include "log.h"
#include "maps.h"
#include "milter.h"
#include "net.h"
#include "psvc.h"
#include "relay.h"
#include "rules.h"
#include "verify.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static pthread_mutex_t policy_mu = PTHREAD_MUTEX_INITIALIZER;
static struct policy *policy_current;

/* is_map_spec - "type:path" rather than a domain. */
static int is_map_spec(const char *s)
{
	const char *c = strchr(s, ':');
	if (!c || c == s)
		return 0;
	for (const char *p = s; p < c; p++)
		if (!isalpha((unsigned char)*p))
			return 0;
	return 1;
}

/* policy_free - close maps, drop the conf. */
static void policy_free(struct policy *p)
{
	for (int i = 0; i < p->nrelay_maps; i++)
		map_free(p->relay_maps[i]);
	free(p->relay_maps);
	if (p->transport)
		map_free(p->transport);
	if (p->grey) {
		grey_policy_free(p->grey);
		free(p->grey);
	}
	if (p->psvc) {
		psvc_conf_free(p->psvc);
		free(p->psvc);
	}
	milter_set_release(p->milters);
	rules_free(p);
	conf_release(p->conf);
	free(p);
}

/* policy_load - open maps and check backends; every error is reported
 * (one line each in err), not only the first. */
struct policy *policy_load(struct conf *c, char *err, size_t errlen)
{
	struct policy *p = xcalloc(1, sizeof *p);
	p->conf = c;
	p->refs = 1;
	const char *why;
	char merr[4096], one[1024];
	int bad = 0;
	if (errlen)
		err[0] = 0;
	for (int i = 0; i < c->relay_domains.n; i++) {
		const char *item = c->relay_domains.v[i];
		if (!is_map_spec(item))
			continue;
		struct map *m = map_open(item, merr, sizeof merr);
		if (!m) {
			log_err_add(err, errlen, "relay_domains: %s", merr);
			bad = 1;
			continue;
		}
		p->relay_maps = xrealloc(p->relay_maps, (size_t)(p->nrelay_maps + 1) * sizeof *p->relay_maps);
		p->relay_maps[p->nrelay_maps++] = m;
	}
	if (c->transport_maps[0] &&
	    !(p->transport = map_open_checked(c->transport_maps, relay_route_check, merr, sizeof merr))) {
		log_err_add(err, errlen, "transport_maps: %s", merr);
		bad = 1;
	}
	if (rules_load(p, err, errlen) < 0)
		bad = 1;
	if (dnscheck_conf_check(c, one, sizeof one) < 0) {
		log_err_add(err, errlen, "%s", one);
		bad = 1;
	}
	if (policy_shadow_load(p, c, one, sizeof one) < 0) {
		log_err_add(err, errlen, "%s", one);
		bad = 1;
	}
	p->psvc = xcalloc(1, sizeof *p->psvc);
	if (psvc_load(c, p->psvc, one, sizeof one) < 0) {
		log_err_add(err, errlen, "%s", one);
		bad = 1;
	}
	if (!(p->milters = milter_set_load(c, one, sizeof one))) {
		log_err_add(err, errlen, "%s", one);
		bad = 1;
	}
	p->grey = xcalloc(1, sizeof *p->grey);
	if (grey_policy_load(c, p->grey, one, sizeof one) < 0) {
		log_err_add(err, errlen, "%s", one);
		bad = 1;
	}
	for (int i = 0; i < c->relay_backends.n; i++) {
		if (relay_target_valid(c->relay_backends.v[i], &why) < 0) {
			log_err_add(err, errlen, "relay_backends: %s: %s", c->relay_backends.v[i], why);
			bad = 1;
		}
	}
	/* An address or CIDR network matches its own address. */
	const struct conf_list *hosts[] = { &c->relay_xforward_hosts, &c->relay_xclient_hosts,
					    &c->smtpd_upstream_proxy_clients };
	static const char *const host_names[] = { "relay_xforward_hosts", "relay_xclient_hosts",
						  "smtpd_upstream_proxy_clients" };
	for (int k = 0; k < 3; k++) {
		for (int i = 0; i < hosts[k]->n; i++) {
			char a[64];
			const char *h = hosts[k]->v[i];
			snprintf(a, sizeof a, "%.*s", (int)strcspn(h, "/"), h);
			if (!net_addr_match(a, h)) {
				log_err_add(err, errlen, "%s: %s: not an address or CIDR network",
					    host_names[k], h);
				bad = 1;
			}
		}
	}
	if (!bad)
		return p;
	p->conf = NULL;
	policy_free(p);
	conf_release(c);
	return NULL;
}

/* policy_install - make p current (takes the caller's reference). */
void policy_install(struct policy *p)
{
	pthread_mutex_lock(&policy_mu);
	struct policy *old = policy_current;
	policy_current = p;
	pthread_mutex_unlock(&policy_mu);
	if (old)
		policy_release(old);
}

/* policy_acquire - the current policy, with a reference. */
struct policy *policy_acquire(void)
{
	pthread_mutex_lock(&policy_mu);
	struct policy *p = policy_current;
	if (p)
		__atomic_add_fetch(&p->refs, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&policy_mu);
	return p;
}

/* policy_release - drop a reference. */
void policy_release(struct policy *p)
{
	if (p && __atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0)
		policy_free(p);
}

/* domain_in_list - exact, or subdomain of a ".example.com" entry. */
static int domain_in_list(const struct conf_list *l, const char *d)
{
	size_t dl = strlen(d);
	for (int i = 0; i < l->n; i++) {
		const char *e = l->v[i];
		if (is_map_spec(e))
			continue;
		if (e[0] == '.') {
			size_t el = strlen(e);
			if (dl > el && !strcasecmp(d + dl - el, e))
				return 1;
		} else if (!strcasecmp(e, d)) {
			return 1;
		}
	}
	return 0;
}

/* policy_relay_domain - is mail for this domain ours? */
int policy_relay_domain(const struct policy *p, const char *domain)
{
	if (!*domain)
		return 0;
	if (domain_in_list(&p->conf->relay_domains, domain))
		return 1;
	for (int i = 0; i < p->nrelay_maps; i++) {
		const char *v;
		int r = map_lookup_domain(p->relay_maps[i], domain, &v);
		if (r != 0)
			return r;
	}
	return 0;
}

/* policy_route - transport_maps value or the default backends (a
 * synchronous map; an asynchronous one answers -1). */
int policy_route(const struct policy *p, const char *domain, const char **route)
{
	*route = NULL;
	if (p->transport && *domain) {
		const char *v;
		int r = map_lookup_domain(p->transport, domain, &v);
		if (r < 0)
			return -1;
		if (r > 0)
			*route = v;
	}
	return 0;
}

/* ---- relay control and routing with asynchronous maps ------------------- */

struct policy_dom {
	const struct policy *p;
	char *domain;
	struct ev_loop *loop;
	policy_dom_fn *cb;
	void *arg;
	int next;          /* the map to ask next: relay maps, then transport */
	struct map_req *q; /* a lookup out */
	struct policy_dom_result res;
};

static int dom_step(struct policy_dom *d);

/* dom_answer - one map's answer (result, value) for the current map. */
static void dom_answer(struct policy_dom *d, int result, const char *value)
{
	const struct policy *p = d->p;
	if (d->next < p->nrelay_maps) {
		d->next = result != 0 ? p->nrelay_maps : d->next + 1;
		d->res.relay = result;
		return;
	}
	d->next++;
	if (result < 0)
		d->res.route_failed = 1;
	else if (result > 0)
		snprintf(d->res.route, sizeof d->res.route, "%s", value);
	d->res.have_route = result > 0;
}

/* dom_done - an asynchronous lookup answered: go on, report when done. */
static void dom_done(void *arg, int result, const char *value)
{
	struct policy_dom *d = arg;
	d->q = NULL;
	dom_answer(d, result, value);
	if (dom_step(d))
		d->cb(d->arg, &d->res);
}

/* dom_step - ask the maps in order until one is asynchronous (0) or the
 * answer is complete (1): the relay maps until one answers, then, for a
 * domain we relay, transport_maps. */
static int dom_step(struct policy_dom *d)
{
	const struct policy *p = d->p;
	for (;;) {
		const struct map *m = NULL;
		if (d->next < p->nrelay_maps && d->res.relay == 0)
			m = p->relay_maps[d->next];
		else if (d->next <= p->nrelay_maps && d->res.relay == 1 && p->transport)
			m = p->transport, d->next = p->nrelay_maps;
		if (!m)
			return 1;
		if (map_is_async(m)) {
			d->q = map_query_async(m, MAP_DOMAIN, d->domain, d->loop, dom_done, d);
			return 0;
		}
		const char *v = NULL;
		int r = map_lookup_domain(m, d->domain, &v);
		dom_answer(d, r, v ? v : "");
	}
}

/* policy_domain - see policy.h. */
int policy_domain(const struct policy *p, const char *domain, struct ev_loop *loop, policy_dom_fn *cb,
		  void *arg, struct policy_dom_result *res, struct policy_dom **dp)
{
	struct policy_dom *d = xcalloc(1, sizeof *d);
	d->p = p;
	d->domain = xstrdup(domain);
	d->loop = loop;
	d->cb = cb;
	d->arg = arg;
	d->res.relay = domain[0] && domain_in_list(&p->conf->relay_domains, domain);
	*dp = NULL;
	if (!domain[0] || dom_step(d)) {
		*res = d->res;
		policy_domain_free(d);
		return 1;
	}
	*dp = d;
	return 0;
}

/* policy_domain_free - see policy.h. */
void policy_domain_free(struct policy_dom *d)
{
	if (!d)
		return;
	map_cancel(d->q);
	free(d->domain);
	free(d);
}

/* ---- the RCPT chain ----------------------------------------------------
 *
 * Steps run in table order, under the contract of policy_step.h; an
 * asynchronous step's policy_step_done() (policy_step.c) resumes the chain
 * through req->resume. req->exempt marks a recipient (role account) that later steps such as
 * DNSBL and greylisting skip.
 */

/* step_verify_cache - refusals a backend gave during replay (and callouts);
 * a callout's acceptance marks the recipient verified (no new callout). A
 * role account is refused only from what its own sender met (verify.h). */
static enum policy_step step_verify_cache(struct policy_req *r, struct policy_verdict *v)
{
	int code = 0;
	switch (verify_lookup(r->env->sender, r->env->rcpt, policy_is_role(r->env->pol, r->env->rcpt_local),
			      &code, v->reply, sizeof v->reply)) {
	case VERIFY_VERIFIED: r->verified = 1; return STEP_PASS;
	case VERIFY_REFUSED: {
		/* The rule names the kind, for the log and the counters. */
		char enh[16];
		verify_enh(v->reply, enh, sizeof enh);
		v->code = code;
		v->rule = code < 500                 ? "tempfail_verify_cache"
		    : verify_mailbox_code(code, enh) ? "verify_cache"
						     : "backend_cache";
		return STEP_DECIDED;
	}
	case VERIFY_NONE: break;
	}
	return STEP_PASS;
}

static const struct policy_step_def {
	const char *name;
	enum policy_step (*run)(struct policy_req *r, struct policy_verdict *v);
} policy_steps[] = {
	{ "verify_cache", step_verify_cache },
	{ "role_accounts", rules_step_role },  /* sets exempt */
	{ "recipient", rules_step_recipient }, /* relay_recipient_maps, callout */
	{ "delayed", rules_step_delayed },     /* access maps, client/HELO/sender */
	{ "client_dns", dnscheck_step_client },
	{ "sender_domain", dnscheck_step_sender },
	{ "dnsbl", dnscheck_step_dnsbl },
	{ "policy_services", psvc_step }, /* smtpd_policy_services */
	{ "greylist", grey_step },        /* last: only what all else accepts */
};
#define NSTEPS ((int)(sizeof policy_steps / sizeof policy_steps[0]))

/* The shadow check a step's refusal belongs to: by the step, and where a
 * step holds two checks by the verdict's rule (NULL: any). The delayed
 * step (access maps, HELO) asks policy_shadow() itself, per verdict. */
static const struct {
	const char *step, *rule, *check;
} shadow_of[] = {
	{ "dnsbl", NULL, "dnsbl" },
	{ "greylist", NULL, "greylist" },
	{ "client_dns", NULL, "client_hostname" },
	{ "sender_domain", NULL, "sender_domain" },
	{ "policy_services", NULL, "policy_services" },
	{ "recipient", "recipient_unknown", "recipient_maps" },
	{ "recipient", "tempfail_lookup", "recipient_maps" },
	{ "recipient", "verify_callout", "recipient_verify" },
	{ "recipient", "tempfail_verify", "recipient_verify" },
};

/* chain_shadowed - the step just run refused (v): 1 when its check is in
 * shadow_checks (logged and counted: the chain goes on). */
static int chain_shadowed(struct policy_req *r, const struct policy_verdict *v)
{
	if (!r->env->pol->shadow || !v->code || r->step < 1)
		return 0;
	const char *step = policy_steps[r->step - 1].name;
	for (size_t i = 0; i < sizeof shadow_of / sizeof shadow_of[0]; i++)
		if (!strcmp(shadow_of[i].step, step) &&
		    (!shadow_of[i].rule || (v->rule && !strcmp(shadow_of[i].rule, v->rule))))
			return policy_shadow(r, shadow_of[i].check, v);
	return 0;
}

/* chain_run - run steps from r->step on; 1 = decided (v final), 0 = async. */
static int chain_run(struct policy_req *r, struct policy_verdict *v)
{
	while (r->step < NSTEPS) {
		enum policy_step st = policy_steps[r->step].run(r, v);
		r->step++;
		if (st == STEP_DECIDED && chain_shadowed(r, v))
			continue;
		if (st == STEP_DECIDED)
			return 1;
		if (st == STEP_ASYNC) {
			r->async = 1;
			return 0;
		}
	}
	v->code = 0;
	v->reply[0] = 0;
	v->rule = "accept";
	return 1;
}

/* policy_rcpt - run the RCPT chain; see policy.h. */
int policy_rcpt(const struct policy_env *env, struct policy_verdict *v, policy_done_fn *done, void *arg,
		struct policy_req **req)
{
	struct policy_req *r = xcalloc(1, sizeof *r);
	r->env = env;
	r->done = done;
	r->arg = arg;
	r->resume = chain_run;
	r->shadowed = chain_shadowed;
	v->code = 0;
	v->reply[0] = 0;
	v->rule = "accept";
	if (chain_run(r, v)) {
		policy_step_final(r, v);
		free(r);
		*req = NULL;
		return 1;
	}
	*req = r;
	return 0;
}

/* policy_cancel - abandon the chain (the session is gone or reset). */
void policy_cancel(struct policy_req *r)
{
	if (!r)
		return;
	if (r->cancel)
		r->cancel(r->handle);
	free(r);
}
