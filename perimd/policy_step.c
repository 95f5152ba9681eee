/*
 * policy_step.c - the floor under the RCPT chain: lists of the policy's
 * parameters, and the end of an asynchronous step (policy_step.h), which
 * hands the request back to the chain's runner without knowing the steps.
 */
#include "policy_step.h"
#include "conf.h"
#include "log.h"
#include "stats.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The checks shadow_checks may name, with their counters. */
static const struct {
	const char *name;
	enum stats_id stat;
} shadow_names[] = {
	{ "dnsbl", ST_shadow_dnsbl },
	{ "greylist", ST_shadow_greylist },
	{ "recipient_maps", ST_shadow_recipient_maps },
	{ "recipient_verify", ST_shadow_recipient_verify },
	{ "client_access", ST_shadow_client_access },
	{ "sender_access", ST_shadow_sender_access },
	{ "recipient_access", ST_shadow_recipient_access },
	{ "helo", ST_shadow_helo },
	{ "client_hostname", ST_shadow_client_hostname },
	{ "sender_domain", ST_shadow_sender_domain },
	{ "policy_services", ST_shadow_policy_services },
};
#define NSHADOW (sizeof shadow_names / sizeof shadow_names[0])

/* policy_shadow_load - see policy_step.h. */
int policy_shadow_load(struct policy *p, const struct conf *c, char *err, size_t errlen)
{
	p->shadow = 0;
	for (int i = 0; i < c->shadow_checks.n; i++) {
		const char *n = c->shadow_checks.v[i];
		static const char *const scanner[] = { "av",        "av_scanner", "virus",
						       "antivirus", "clamav",     "scanner" };
		for (size_t j = 0; j < sizeof scanner / sizeof scanner[0]; j++)
			if (!strcasecmp(n, scanner[j])) {
				snprintf(
				    err, errlen,
				    "shadow_checks: %s: the virus scanner is never a shadow check (a virus "
				    "found is always refused)",
				    n);
				return -1;
			}
		size_t k = 0;
		while (k < NSHADOW && strcasecmp(n, shadow_names[k].name))
			k++;
		if (k == NSHADOW) {
			char known[256] = "";
			for (size_t j = 0; j < NSHADOW; j++)
				snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
					 j ? ", " : "", shadow_names[j].name);
			snprintf(err, errlen, "shadow_checks: %s: unknown check (known: %s)", n, known);
			return -1;
		}
		p->shadow |= 1u << k;
	}
	return 0;
}

/* shadow_index - the index of check in shadow_names, or -1. */
static int shadow_index(const char *check)
{
	for (size_t k = 0; k < NSHADOW; k++)
		if (!strcmp(check, shadow_names[k].name))
			return (int)k;
	return -1;
}

/* policy_shadow_on - see policy_step.h. */
int policy_shadow_on(const struct policy *p, const char *check)
{
	int k = shadow_index(check);
	return k >= 0 && (p->shadow & (1u << k));
}

/* policy_shadow_count - see policy_step.h. */
void policy_shadow_count(const char *check)
{
	int k = shadow_index(check);
	if (k >= 0)
		stats_inc(shadow_names[k].stat);
}

/* policy_shadow - see policy_step.h. */
int policy_shadow(const struct policy_req *r, const char *check, const struct policy_verdict *v)
{
	const struct policy_env *env = r->env;
	if (!v->code || !policy_shadow_on(env->pol, check))
		return 0;
	policy_shadow_count(check);
	log_info("%s: shadow: %s would refuse RCPT from [%s]: %s; from=<%s> to=<%s>", env->session_id, check,
		 env->client_addr, v->reply, env->sender, env->rcpt);
	return 1;
}

/* policy_split_list - comma/space separated items. */
void policy_split_list(const char *s, struct conf_list *l)
{
	l->n = 0;
	l->v = xcalloc(1, sizeof *l->v);
	while (*s) {
		while (*s == ',' || isspace((unsigned char)*s))
			s++;
		if (!*s)
			break;
		const char *e = s;
		while (*e && *e != ',' && !isspace((unsigned char)*e))
			e++;
		l->v = xrealloc(l->v, (size_t)(l->n + 2) * sizeof *l->v);
		l->v[l->n++] = xstrndup(s, (size_t)(e - s));
		l->v[l->n] = NULL;
		s = e;
	}
}

/* policy_list_free - free a split list. */
void policy_list_free(struct conf_list *l)
{
	for (int i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* policy_step_async - the running step went asynchronous; cancel(handle)
 * undoes it if the session goes away first. */
void policy_step_async(struct policy_req *r, void (*cancel)(void *handle), void *handle)
{
	r->cancel = cancel;
	r->handle = handle;
}

/* policy_step_done - an asynchronous step finished: decided (v filled) or
 * passed (decided = 0); the chain goes on and may finish now. */
void policy_step_done(struct policy_req *r, int decided, const struct policy_verdict *v)
{
	struct policy_verdict out;
	r->cancel = NULL;
	r->handle = NULL;
	r->async = 0;
	if (decided && !(r->shadowed && r->shadowed(r, v))) {
		out = *v;
	} else if (!r->resume(r, &out)) {
		return; /* the next step went asynchronous */
	}
	policy_step_final(r, &out);
	policy_done_fn *done = r->done;
	void *arg = r->arg;
	free(r);
	done(arg, &out);
}

/* policy_step_final - see policy_step.h. */
void policy_step_final(const struct policy_req *r, struct policy_verdict *v)
{
	if (v->code >= 500 && r->if_reject.code) {
		*v = r->if_reject;
		v->cond = 0;
	} else if (v->code == 0 && r->if_permit.code) {
		*v = r->if_permit;
		v->cond = 0;
	} else if (v->code == 0) {
		v->discard = r->discard;
		memcpy(v->prepend, r->prepend, sizeof v->prepend);
	}
}
