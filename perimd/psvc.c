/*
 * psvc.c - the client of Postfix policy-delegation services (psvc.h): the
 * transaction's state, the pools of connections, the RCPT step (the pure
 * protocol and the configuration are psvc_proto.c's).
 *
 * Invariants: everything of a loop (its pools, connections, requests) is
 * touched by that loop's thread only. A connection answers one request at
 * a time, in order, as the protocol wants; a request whose session went
 * away leaves its connection "orphaned": the answer still comes and is
 * dropped, then the connection is pooled again (or closed when it does
 * not come in time), so no answer is ever taken for another request. A
 * request holds a timer for its try (waiting for a connection, connecting,
 * writing and reading all count) or for the delay before the next try.
 */
#include "psvc.h"
#include "buf.h"
#include "conf.h"
#include "conn.h"
#include "dnscheck.h"
#include "ev.h"
#include "log.h"
#include "smtp_proto.h"
#include "stats.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PSVC_MAX_CACHE 64   /* answers remembered per transaction */
#define PSVC_MAX_PREPEND 32 /* PREPEND headers per transaction */

/* ---- per transaction ------------------------------------------------------ */

/* An answer a service gave in this transaction, and to what. */
struct psvc_cached {
	struct psvc_cached *next;
	int svc;
	char *request;
	char *action;
};

/* psvc_txn_free - the transaction ended. */
void psvc_txn_free(struct psvc_txn *t)
{
	if (!t)
		return;
	while (t->cache) {
		struct psvc_cached *c = t->cache;
		t->cache = c->next;
		free(c->request);
		free(c->action);
		free(c);
	}
	for (int i = 0; i < t->nprepend; i++)
		free(t->prepend[i]);
	free(t->prepend);
	free(t);
}

/* cache_find - the answer of service svc to this very request, or NULL. */
static const char *cache_find(const struct psvc_txn *t, int svc, const char *req)
{
	for (const struct psvc_cached *c = t->cache; c; c = c->next)
		if (c->svc == svc && !strcmp(c->request, req))
			return c->action;
	return NULL;
}

/* cache_add - remember an answer (a bounded number per transaction). */
static void cache_add(struct psvc_txn *t, int svc, const char *req, const char *action)
{
	int n = 0;
	for (const struct psvc_cached *c = t->cache; c; c = c->next)
		n++;
	if (n >= PSVC_MAX_CACHE)
		return;
	struct psvc_cached *c = xcalloc(1, sizeof *c);
	c->svc = svc;
	c->request = xstrdup(req);
	c->action = xstrdup(action);
	c->next = t->cache;
	t->cache = c;
}

/* prepend_add - a header for the message (exact repeats once). */
static int prepend_add(struct psvc_txn *t, const char *h)
{
	for (int i = 0; i < t->nprepend; i++)
		if (!strcmp(t->prepend[i], h))
			return 0;
	if (t->nprepend >= PSVC_MAX_PREPEND)
		return -1;
	t->prepend = xrealloc(t->prepend, (size_t)(t->nprepend + 1) * sizeof *t->prepend);
	t->prepend[t->nprepend++] = xstrdup(h);
	return 0;
}

/* ---- pools of connections, per loop ------------------------------------- */

struct preq;

struct pconn {
	struct pconn *next;  /* on the idle list */
	struct pconn *anext; /* on the pool's list of all */
	struct pool *pool;
	struct conn *conn;
	struct preq *req; /* the request it answers, or NULL */
	uint64_t born;
	int nreq;      /* requests written on it */
	int connected; /* connect completed */
	int sent;      /* the current request is written */
	int orphan;    /* its request was cancelled: drop the answer */
	int idle;      /* on the idle list */
	size_t got;    /* bytes of the current answer so far */
	/* the limits of the configuration of its last request */
	uint64_t max_idle, max_ttl;
	long long req_limit;
};

struct pool {
	struct pool *next;
	struct psvc_loop *pl;
	char *name;
	struct sockaddr_storage sa;
	socklen_t salen;
	struct pconn *idle;
	struct pconn *all;                  /* every open one (freed at shutdown) */
	int nconn;                          /* open: idle, busy or connecting */
	struct preq *wait_head, *wait_tail; /* requests waiting for one */
};

struct psvc_loop {
	struct ev_loop *loop;
	struct pool *pools;
};

/* One recipient's questions to the services, in order. */
struct preq {
	struct policy_req *r;
	const struct policy_env *env;
	const struct conf *cf;
	const struct psvc_conf *sc;
	struct psvc_txn *tx;
	char *text; /* the request to the current service */
	size_t len;
	int svc;   /* the service being asked */
	int tries; /* of this service */
	int stale_retried;
	struct pool *pool;
	struct pconn *pc;
	struct preq *wnext;
	int waiting;
	enum { T_NONE, T_TRY, T_DELAY, T_FAIL } tstate;
	struct ev_timer timer;
	int fail_err;
	/* what the answers so far leave pending */
	int has_dip, has_dir;
	char dip[512], dir[512];
};

/* SVC - the service q asks now, with its settings. */
#define SVC(q) (&(q)->sc->v[(q)->svc])

static void try_start(struct preq *q);
enum fail { F_CONNECT, F_TIMEOUT, F_CLOSED, F_PROTOCOL };
static void try_failed(struct preq *q, enum fail f, const char *why);
static void answer(struct preq *q, const char *action, int failed);
static void on_timer(void *arg);

static const struct conn_ops pconn_ops;

/* psvc_loop_get - this loop's pools, made on first use. */
static struct psvc_loop *psvc_loop_get(struct ev_loop *loop)
{
	void **slot = ev_slot(loop, EV_SLOT_PSVC);
	if (!*slot) {
		struct psvc_loop *pl = xcalloc(1, sizeof *pl);
		pl->loop = loop;
		*slot = pl;
	}
	return *slot;
}

/* pool_get - the loop's pool for service s (same name and address). */
static struct pool *pool_get(struct psvc_loop *pl, const struct psvc_service *s)
{
	for (struct pool *p = pl->pools; p; p = p->next)
		if (!strcmp(p->name, s->name) && p->salen == s->salen && !memcmp(&p->sa, &s->sa, s->salen))
			return p;
	struct pool *p = xcalloc(1, sizeof *p);
	p->pl = pl;
	p->name = xstrdup(s->name);
	memcpy(&p->sa, &s->sa, s->salen);
	p->salen = s->salen;
	p->next = pl->pools;
	pl->pools = p;
	return p;
}

/* idle_unlink - take pc off its pool's idle list. */
static void idle_unlink(struct pconn *pc)
{
	if (!pc->idle)
		return;
	for (struct pconn **pp = &pc->pool->idle; *pp; pp = &(*pp)->next)
		if (*pp == pc) {
			*pp = pc->next;
			break;
		}
	pc->idle = 0;
	pc->next = NULL;
}

static void pool_kick(struct pool *p);

/* pconn_drop - close and free a connection (off every list). */
static void pconn_drop(struct pconn *pc)
{
	struct pool *p = pc->pool;
	idle_unlink(pc);
	for (struct pconn **pp = &p->all; *pp; pp = &(*pp)->anext)
		if (*pp == pc) {
			*pp = pc->anext;
			break;
		}
	conn_free(pc->conn);
	p->nconn--;
	free(pc);
}

/* pconn_close - close a connection; waiting requests may open another. */
static void pconn_close(struct pconn *pc)
{
	struct pool *p = pc->pool;
	pconn_drop(pc);
	pool_kick(p);
}

/* pconn_open - a new connection for p. NULL (errno set) when the socket
 * cannot even be made. */
static struct pconn *pconn_open(struct pool *p, uint64_t timeout)
{
	struct pconn *pc = xcalloc(1, sizeof *pc);
	pc->pool = p;
	pc->born = ev_now(p->pl->loop);
	pc->conn =
	    conn_connect(p->pl->loop, (const struct sockaddr *)&p->sa, p->salen, timeout, &pconn_ops, pc);
	if (!pc->conn) {
		free(pc);
		return NULL;
	}
	p->nconn++;
	pc->anext = p->all;
	p->all = pc;
	return pc;
}

/* pconn_send - write the attached request once connected. */
static void pconn_send(struct pconn *pc)
{
	struct preq *q = pc->req;
	if (!q || !pc->connected || pc->sent)
		return;
	pc->sent = 1;
	pc->nreq++;
	conn_write(pc->conn, q->text, q->len);
}

/* attach - q is answered on pc. */
static void attach(struct preq *q, struct pconn *pc)
{
	idle_unlink(pc);
	pc->req = q;
	pc->sent = 0;
	pc->got = 0;
	pc->max_idle = (uint64_t)SVC(q)->max_idle;
	pc->max_ttl = (uint64_t)SVC(q)->max_ttl;
	pc->req_limit = SVC(q)->request_limit;
	q->pc = pc;
	conn_set_timeout(pc->conn, 0); /* q's timer bounds it now */
	pconn_send(pc);
}

/* pconn_release - pc answered: pool it again, unless worn out. */
static void pconn_release(struct pconn *pc)
{
	pc->req = NULL;
	pc->sent = 0;
	pc->orphan = 0;
	struct pool *p = pc->pool;
	uint64_t age = ev_now(p->pl->loop) - pc->born;
	if ((pc->req_limit && pc->nreq >= pc->req_limit) || age >= pc->max_ttl) {
		pconn_close(pc);
		return;
	}
	pc->idle = 1;
	pc->next = p->idle;
	p->idle = pc;
	conn_set_timeout(pc->conn, pc->max_idle);
	pool_kick(p);
}

/* acquire - a connection for q now, or a place in the queue. */
static void acquire(struct preq *q)
{
	struct pool *p = q->pool;
	while (p->idle) {
		struct pconn *pc = p->idle;
		if (ev_now(p->pl->loop) - pc->born >= (uint64_t)SVC(q)->max_ttl) {
			pconn_drop(pc);
			continue;
		}
		attach(q, pc);
		return;
	}
	if (p->nconn < q->cf->smtpd_policy_service_connection_limit) {
		struct pconn *pc = pconn_open(p, (uint64_t)SVC(q)->timeout);
		if (!pc) {
			/* Reported from the loop, never inside the step. */
			q->fail_err = errno;
			q->tstate = T_FAIL;
			ev_timer_start(p->pl->loop, &q->timer, 0, on_timer, q);
			return;
		}
		attach(q, pc);
		return;
	}
	q->waiting = 1;
	q->wnext = NULL;
	if (p->wait_tail)
		p->wait_tail->wnext = q;
	else
		p->wait_head = q;
	p->wait_tail = q;
}

/* wait_unlink - take q out of its pool's queue. */
static void wait_unlink(struct preq *q)
{
	struct pool *p = q->pool;
	struct preq *prev = NULL;
	for (struct preq *w = p->wait_head; w; prev = w, w = w->wnext)
		if (w == q) {
			if (prev)
				prev->wnext = w->wnext;
			else
				p->wait_head = w->wnext;
			if (p->wait_tail == w)
				p->wait_tail = prev;
			break;
		}
	q->waiting = 0;
}

/* pool_kick - give free or new connections to waiting requests. */
static void pool_kick(struct pool *p)
{
	while (p->wait_head && (p->idle || p->nconn < p->wait_head->cf->smtpd_policy_service_connection_limit)) {
		struct preq *q = p->wait_head;
		wait_unlink(q);
		acquire(q);
	}
}

/* pconn_connected - the service took the connection. */
static void pconn_connected(void *arg)
{
	struct pconn *pc = arg;
	pc->connected = 1;
	if (pc->req)
		pconn_send(pc);
	else /* its request was cancelled before anything was written */
		pconn_release(pc);
}

/* pconn_read - (part of) an answer arrived. */
static void pconn_read(void *arg)
{
	struct pconn *pc = arg;
	size_t len, used = 0;
	const char *buf = conn_rbuf(pc->conn, &len);
	if (!pc->req && !pc->orphan) { /* talking out of turn */
		pconn_close(pc);
		return;
	}
	char action[1024];
	int rc = psvc_reply_parse(buf, len, action, sizeof action, &used);
	pc->got = len;
	if (rc == PARSE_AGAIN)
		return;
	struct preq *q = pc->req;
	if (rc != PARSE_OK) {
		if (q) {
			q->pc = NULL;
			log_warn("policy service %s: malformed answer", pc->pool->name);
		}
		pconn_close(pc);
		if (q) {
			try_failed(q, F_PROTOCOL, "malformed answer");
		}
		return;
	}
	conn_consume(pc->conn, used);
	/* More after the answer: a service that answers twice. Never kept:
	 * the rest would be read as the answer to the next request. */
	int extra = len > used;
	if (extra)
		log_warn("policy service %s: more than one answer to a request: connection closed",
			 pc->pool->name);
	if (q) {
		q->pc = NULL;
		ev_timer_stop(q->pool->pl->loop, &q->timer);
		q->tstate = T_NONE;
	}
	if (extra)
		pconn_close(pc);
	else
		pconn_release(pc); /* (an answer to a cancelled request: dropped) */
	if (q)
		answer(q, action, 0);
}

/* pconn_error - closed, reset, or (idle, orphaned) timed out. */
static void pconn_error(void *arg, int err)
{
	struct pconn *pc = arg;
	struct preq *q = pc->req;
	int stale = q && pc->nreq > 1 && pc->got == 0 && err != ETIMEDOUT;
	if (q)
		q->pc = NULL;
	pconn_close(pc);
	if (!q)
		return;
	if (stale && !q->stale_retried) {
		/* A pooled connection the service had closed meanwhile: ask
		 * again on a new one, without counting a try. */
		q->stale_retried = 1;
		ev_timer_stop(q->pool->pl->loop, &q->timer);
		q->tries--;
		try_start(q);
		return;
	}
	char why[128];
	snprintf(why, sizeof why, "%s", err == 0 ? "connection closed" : strerror(err));
	try_failed(q, err == ETIMEDOUT ? F_TIMEOUT : err == 0 ? F_CLOSED : F_CONNECT, why);
}

static const struct conn_ops pconn_ops = {
	.on_connect = pconn_connected,
	.on_read = pconn_read,
	.on_error = pconn_error,
};

/* psvc_loop_shutdown - see psvc.h. */
void psvc_loop_shutdown(struct ev_loop *loop)
{
	void **slot = ev_slot(loop, EV_SLOT_PSVC);
	struct psvc_loop *pl = *slot;
	if (!pl)
		return;
	while (pl->pools) {
		struct pool *p = pl->pools;
		pl->pools = p->next;
		while (p->all) /* idle ones, and any a cancelled request left */
			pconn_drop(p->all);
		free(p->name);
		free(p);
	}
	*slot = NULL;
	free(pl);
}

/* ---- asking the services ------------------------------------------------- */

/* attr - one "name=value" line; values lose control characters. */
static void attr(struct strbuf *sb, const char *name, const char *value)
{
	sb_printf(sb, "%s=", name);
	for (const char *p = value ? value : ""; *p; p++) {
		char ch = (unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p;
		sb_add(sb, &ch, 1);
	}
	sb_add(sb, "\n", 1);
}

/* build_request - the attributes Postfix's smtpd sends at RCPT. */
static char *build_request(const struct policy_env *e, const struct psvc_txn *t, const char *context,
			   size_t *len)
{
	struct strbuf sb = { 0 };
	const char *cname = dnscheck_client_name(e->dns);
	const char *rname = dnscheck_reverse_name(e->dns);
	char num[32];
	attr(&sb, "request", "smtpd_access_policy");
	attr(&sb, "protocol_state", "RCPT");
	attr(&sb, "protocol_name", t->protocol_name);
	attr(&sb, "helo_name", e->helo);
	attr(&sb, "queue_id", t->queue_id);
	attr(&sb, "sender", e->sender);
	attr(&sb, "recipient", e->rcpt);
	attr(&sb, "recipient_count", "0");
	attr(&sb, "client_address", e->client_addr);
	attr(&sb, "client_name", cname ? cname : "unknown");
	snprintf(num, sizeof num, "%d", t->client_port);
	attr(&sb, "client_port", num);
	attr(&sb, "reverse_client_name", rname ? rname : "unknown");
	attr(&sb, "instance", t->instance);
	attr(&sb, "sasl_method", "");
	attr(&sb, "sasl_username", "");
	attr(&sb, "sasl_sender", "");
	snprintf(num, sizeof num, "%llu", t->size);
	attr(&sb, "size", num);
	attr(&sb, "ccert_subject", "");
	attr(&sb, "ccert_issuer", "");
	attr(&sb, "ccert_fingerprint", "");
	attr(&sb, "ccert_pubkey_fingerprint", "");
	attr(&sb, "encryption_protocol", t->tls_protocol);
	attr(&sb, "encryption_cipher", t->tls_cipher);
	snprintf(num, sizeof num, "%d", t->tls_bits);
	attr(&sb, "encryption_keysize", num);
	attr(&sb, "etrn_domain", "");
	attr(&sb, "stress", "");
	attr(&sb, "server_address", t->server_address);
	snprintf(num, sizeof num, "%d", t->server_port);
	attr(&sb, "server_port", num);
	attr(&sb, "policy_context", context);
	sb_add(&sb, "\n", 1);
	*len = sb.len;
	return sb_str(&sb);
}

/* preq_free - q is done or cancelled: stop its timer, leave its queue. */
static void preq_free(struct preq *q)
{
	if (q->pool)
		ev_timer_stop(q->pool->pl->loop, &q->timer);
	if (q->waiting)
		wait_unlink(q);
	free(q->text);
	free(q);
}

/* psvc_cancel - the session or transaction went away (policy_step.h). */
static void psvc_cancel(void *handle)
{
	struct preq *q = handle;
	struct pconn *pc = q->pc;
	if (pc) {
		/* Still connecting: pooled once up. Sent: the answer may
		 * still come, and is dropped (or the connection closed
		 * when it does not come in time). */
		pc->req = NULL;
		if (pc->sent) {
			pc->orphan = 1;
			conn_set_timeout(pc->conn, (uint64_t)SVC(q)->timeout);
		}
	}
	preq_free(q);
}

/* count - a service's answer by result: the totals and the series of
 * that service. */
static void count(const struct preq *q, const char *result)
{
	stats_family_add2("perimd_policy_service_requests_total", "service", q->sc->v[q->svc].name, "result",
			  result, 1);
}

/* LOG_CTX - session, service, what, sender and recipient for a log line. */
#define LOG_CTX(q, what) \
	(q)->env->session_id, (q)->sc->v[(q)->svc].name, (what), (q)->env->sender, (q)->env->rcpt

/* apply - one service's action (how = ANS_*). 1 = decided (v filled),
 * 0 = ask the next. */
enum { ANS_ANSWER, ANS_FAILED, ANS_CACHED };
static int apply(struct preq *q, const char *action, int how, struct policy_verdict *v)
{
	struct psvc_action a;
	psvc_action_parse(action, q->env->rcpt, &a);
	if (how != ANS_CACHED) /* the cached one was counted when it came */
		count(q, how == ANS_FAILED ? "failed" : a.name);
	switch (a.kind) {
	case PSVC_DUNNO: return 0;
	case PSVC_OK:
		if (q->has_dip)
			break; /* DEFER_IF_PERMIT: accepting means deferring */
		v->code = 0;
		v->reply[0] = 0;
		v->rule = "policy_service_ok";
		return 1;
	case PSVC_DEFER_IF_PERMIT:
		if (!q->has_dip) {
			q->has_dip = 1;
			snprintf(q->dip, sizeof q->dip, "%s", a.reply);
		}
		return 0;
	case PSVC_DEFER_IF_REJECT:
		if (!q->has_dir) {
			q->has_dir = 1;
			snprintf(q->dir, sizeof q->dir, "%s", a.reply);
		}
		return 0;
	case PSVC_PREPEND:
		if (prepend_add(q->tx, a.text) < 0)
			log_warn("%s: policy service %s: too many PREPEND headers, dropped: %s",
				 q->env->session_id, q->sc->v[q->svc].name, a.text);
		return 0;
	case PSVC_WARN:
	case PSVC_INFO:
		log_msg(a.kind == PSVC_WARN ? LOG_LVL_WARN : LOG_LVL_INFO,
			"%s: %s: RCPT from policy service %s: %s; from=<%s> to=<%s>", q->env->session_id,
			a.kind == PSVC_WARN ? "warn" : "info", q->sc->v[q->svc].name, a.text, q->env->sender,
			q->env->rcpt);
		return 0;
	case PSVC_UNSUPPORTED:
		log_warn("%s: policy service %s answered \"%s\", which perimd does not support: treated as "
			 "DUNNO; from=<%s> to=<%s>",
			 LOG_CTX(q, a.text));
		return 0;
	case PSVC_INVALID:
		log_warn("%s: policy service %s: invalid action \"%s\"; from=<%s> to=<%s>", LOG_CTX(q, a.text));
		break;
	case PSVC_REFUSE: break;
	}
	/* A refusal (or the deferral DEFER_IF_PERMIT leaves for an accept). */
	const char *reply = a.kind == PSVC_OK ? q->dip : a.reply;
	int code = a.kind == PSVC_OK ? 450 : a.code;
	if (code >= 500 && q->has_dir) {
		reply = q->dir;
		code = 450;
	}
	if (q->r->exempt) {
		log_info("%s: policy service %s would refuse: %s; from=<%s> to=<%s>: role account, accepted",
			 q->env->session_id, q->sc->v[q->svc].name, reply, q->env->sender, q->env->rcpt);
		q->has_dip = 0;
		return 0;
	}
	log_info("%s: policy service %s refuses <%s>: \"%s\"", q->env->session_id, SVC(q)->name, q->env->rcpt,
		 action);
	v->code = code;
	snprintf(v->reply, sizeof v->reply, "%s", reply);
	v->rule = "policy_service";
	return 1;
}

/* finish - every service was asked: a DEFER_IF_PERMIT left decides. */
static enum policy_step finish(struct preq *q, struct policy_verdict *v)
{
	enum policy_step st = STEP_PASS;
	if (q->has_dip && !q->r->exempt) {
		v->code = 450;
		snprintf(v->reply, sizeof v->reply, "%s", q->dip);
		v->rule = "policy_service";
		st = STEP_DECIDED;
	}
	preq_free(q);
	return st;
}

/* run - ask the services from q->svc on: answers this transaction
 * already had are used again; the first that must be asked makes the
 * step asynchronous. */
static enum policy_step run(struct preq *q, struct policy_verdict *v)
{
	while (q->svc < q->sc->n) {
		free(q->text); /* the same but for the service's policy_context */
		q->text = build_request(q->env, q->tx, SVC(q)->policy_context, &q->len);
		const char *cached = cache_find(q->tx, q->svc, q->text);
		if (!cached) {
			q->tries = 0;
			q->stale_retried = 0;
			q->pool = pool_get(psvc_loop_get(q->env->loop), &q->sc->v[q->svc]);
			policy_step_async(q->r, psvc_cancel, q);
			try_start(q);
			return STEP_ASYNC;
		}
		stats_inc(ST_psvc_cached);
		if (apply(q, cached, ANS_CACHED, v)) {
			preq_free(q);
			return STEP_DECIDED;
		}
		q->svc++;
	}
	return finish(q, v);
}

/* answer - the action of the service asked (or its default action). */
static void answer(struct preq *q, const char *action, int failed)
{
	struct policy_req *r = q->r;
	struct policy_verdict v = { 0 };
	if (!failed)
		cache_add(q->tx, q->svc, q->text, action);
	enum policy_step st;
	if (apply(q, action, failed ? ANS_FAILED : ANS_ANSWER, &v)) {
		preq_free(q);
		st = STEP_DECIDED;
	} else {
		q->svc++;
		st = run(q, &v);
	}
	if (st != STEP_ASYNC)
		policy_step_done(r, st == STEP_DECIDED, &v);
}

/* on_timer - the try's time is up, the retry delay passed, or the
 * connection could not even be made. */
static void on_timer(void *arg)
{
	struct preq *q = arg;
	int what = q->tstate;
	q->tstate = T_NONE;
	if (what == T_DELAY) {
		try_start(q);
		return;
	}
	if (what == T_FAIL) {
		try_failed(q, F_CONNECT, strerror(q->fail_err));
		return;
	}
	if (q->waiting)
		wait_unlink(q);
	if (q->pc) {
		struct pconn *pc = q->pc;
		q->pc = NULL;
		pc->req = NULL;
		pconn_close(pc);
	}
	try_failed(q, F_TIMEOUT, "timeout");
}

/* try_start - one try at the current service. */
static void try_start(struct preq *q)
{
	q->tries++;
	q->tstate = T_TRY;
	ev_timer_start(q->pool->pl->loop, &q->timer, (uint64_t)SVC(q)->timeout, on_timer, q);
	acquire(q);
}

/* try_failed - no answer this time (counted by why, in all and for the
 * service): try again, or the default action. */
static void try_failed(struct preq *q, enum fail f, const char *why)
{
	static const enum stats_id ids[] = { ST_psvc_err_connect, ST_psvc_err_timeout, ST_psvc_err_closed,
					     ST_psvc_err_protocol };
	static const char *const names[] = { "connect", "timeout", "closed", "protocol" };
	stats_inc(ids[f]);
	stats_family_add2("perimd_policy_service_failed_tries_total", "service", SVC(q)->name, "reason",
			  names[f], 1);
	ev_timer_stop(q->pool->pl->loop, &q->timer);
	q->tstate = T_NONE;
	long long limit = SVC(q)->try_limit;
	log_warn("%s: policy service %s: %s (try %d of %lld)%s", q->env->session_id, q->sc->v[q->svc].name,
		 why, q->tries, limit, q->tries < limit ? "" : "; default action");
	if (q->tries < limit) {
		q->tstate = T_DELAY;
		ev_timer_start(q->pool->pl->loop, &q->timer, (uint64_t)SVC(q)->retry_delay, on_timer, q);
		return;
	}
	stats_inc(ST_psvc_default);
	answer(q, SVC(q)->default_action, 1);
}

/* start - the client's names are settled: ask. */
static enum policy_step start(struct policy_req *r, struct policy_verdict *v)
{
	struct preq *q = xcalloc(1, sizeof *q);
	q->r = r;
	q->env = r->env;
	q->cf = r->env->pol->conf;
	q->sc = r->env->pol->psvc;
	q->tx = r->env->psvc;
	return run(q, v);
}

/* name_resume - the client's name lookups settled while the step waited. */
static void name_resume(struct policy_req *r)
{
	struct policy_verdict v = { 0 };
	enum policy_step st = start(r, &v);
	if (st != STEP_ASYNC)
		policy_step_done(r, st == STEP_DECIDED, &v);
}

/* psvc_step - see psvc.h. */
enum policy_step psvc_step(struct policy_req *r, struct policy_verdict *v)
{
	const struct psvc_conf *sc = r->env->pol->psvc;
	if (!sc || !sc->n || !r->env->psvc)
		return STEP_PASS;
	/* client_name and reverse_client_name are part of the request. */
	if (dnscheck_wait_client_name(r, name_resume) == STEP_ASYNC)
		return STEP_ASYNC;
	return start(r, v);
}
