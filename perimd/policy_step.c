/*
 * policy_step.c - the floor under the RCPT chain: lists of the policy's
 * parameters, and the end of an asynchronous step (policy_step.h), which
 * hands the request back to the chain's runner without knowing the steps.
 */
#include "policy_step.h"
#include "conf.h"
#include "log.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

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
	if (decided) {
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
