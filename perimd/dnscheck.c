/*
 * dnscheck.c - the session's DNS checks: PTR + forward confirmation
 * (FCrDNS), DNSBL/DNSWL, sender domain (MX, else A/AAAA; null MX, RFC
 * 7505), and the RCPT steps that turn their results into verdicts.
 *
 * Invariants:
 * - Every lookup a dnscheck started is either finished (its handle NULL)
 *   or cancelled by dnscheck_free(); callbacks only record state, then
 *   wake the one step that may wait (at most one recipient's chain runs
 *   per session at a time).
 * - A check's state only moves from D_PENDING to a final state (OK, TEMP,
 *   HARD), except the sender, which a new MAIL restarts (its old lookup
 *   cancelled first).
 * - Verdicts are functions of the recorded state and the configuration
 *   only, so a step that waited decides exactly as one that did not.
 */
#include "dnscheck.h"
#include "conf.h"
#include "dns.h"
#include "ev.h"
#include "log.h"
#include "smtp_proto.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_PTR_NAMES 4

enum dstate { D_OFF, D_PENDING, D_OK, D_TEMP, D_HARD };
enum lkind { LK_PTR, LK_FWD, LK_SENDER, LK_LIST };
enum wait_for { W_NONE, W_CLIENT, W_SENDER, W_LISTS, W_NAME };

struct dnscheck;

/* One lookup in flight, and what it is for. */
struct lk {
	struct dnscheck *d;
	struct dns_query *q;
	enum lkind kind;
	int idx;
};

struct dnscheck {
	struct ev_loop *loop;
	const struct conf *cf;
	char addr[INET6_ADDRSTRLEN];
	unsigned char abin[16];
	int v6;
	/* client: rev = PTR found, fwd = a PTR name resolves back */
	enum dstate rev, fwd;
	char name[256];
	struct lk ptr;
	struct lk fwdq[MAX_PTR_NAMES];
	char *fname[MAX_PTR_NAMES];
	int nfwd, fwd_pending, fwd_temp;
	/* sender domain */
	enum dstate snd;
	int snd_nullmx;
	enum dns_type sphase;
	char sdomain[256];
	struct lk sq;
	/* DNSBL (sites[0..nbl)) and DNSWL (sites[nbl..nsites)) */
	enum dstate lists;
	struct dnsbl_site *sites;
	struct lk *lq;
	int nbl, nsites, lpending, score, wl;
	char bl_zone[256];
	/* the step waiting for a result */
	struct policy_req *waiter;
	enum wait_for wait_for;
	void (*name_resume)(struct policy_req *r); /* W_NAME */
};

/* ---- block list entries (pure) --------------------------------------------- */

/* bit_set - allow value v in octet o. */
static void bit_set(struct dnsbl_site *s, int o, unsigned v)
{
	s->allow[o][v >> 3] |= (unsigned char)(1u << (v & 7));
}

/* read_octet - a number 0..255 at *p; -1 when there is none. */
static int read_octet(const char **p)
{
	const char *q = *p;
	int v = 0, n = 0;
	while (isdigit((unsigned char)*q) && n < 4) {
		v = v * 10 + (*q++ - '0');
		n++;
	}
	if (!n || n > 3 || v > 255)
		return -1;
	*p = q;
	return v;
}

/* dnsbl_site_parse - "zone[=filter][*weight]". */
int dnsbl_site_parse(const char *item, struct dnsbl_site *s, const char **why)
{
	memset(s, 0, sizeof *s);
	s->weight = 1;
	const char *eq = strchr(item, '='), *star = strrchr(item, '*');
	if (star && eq && star < eq)
		star = NULL;
	const char *zend = eq ? eq : star ? star : item + strlen(item);
	size_t zl = (size_t)(zend - item);
	if (zl == 0 || zl > 253) {
		*why = "bad zone";
		return -1;
	}
	for (size_t i = 0; i < zl; i++) {
		char c = item[i];
		if (!isalnum((unsigned char)c) && c != '.' && c != '-' && c != '_') {
			*why = "bad zone";
			return -1;
		}
		s->zone[i] = (char)tolower((unsigned char)c);
	}
	if (star) {
		char *end;
		long w = strtol(star + 1, &end, 10);
		if (end == star + 1 || *end || w < -1000000 || w > 1000000) {
			*why = "bad weight (write *N)";
			return -1;
		}
		s->weight = (int)w;
	}
	if (!eq)
		return 0;
	s->filtered = 1;
	const char *p = eq + 1, *fend = star ? star : eq + strlen(eq);
	for (int o = 0; o < 4; o++) {
		if (p < fend && *p == '[') {
			p++;
			for (;;) {
				int lo = read_octet(&p), hi;
				if (lo < 0)
					goto bad;
				hi = lo;
				if (p + 1 < fend && p[0] == '.' && p[1] == '.') {
					p += 2;
					if ((hi = read_octet(&p)) < lo)
						goto bad;
				}
				for (int v = lo; v <= hi; v++)
					bit_set(s, o, (unsigned)v);
				if (p < fend && *p == ';') {
					p++;
					continue;
				}
				if (p < fend && *p == ']') {
					p++;
					break;
				}
				goto bad;
			}
		} else {
			int v = read_octet(&p);
			if (v < 0)
				goto bad;
			bit_set(s, o, (unsigned)v);
		}
		if (p > fend)
			goto bad;
		if (o < 3) {
			if (p >= fend || *p != '.')
				goto bad;
			p++;
		}
	}
	if (p != fend)
		goto bad;
	return 0;
bad:
	*why = "bad reply filter (write 127.0.0.2, 127.0.0.[2..11] or 127.0.0.[2;4;8])";
	return -1;
}

/* dnsbl_site_match - does this A answer count as listed? */
int dnsbl_site_match(const struct dnsbl_site *s, const char *addr)
{
	unsigned char b[4];
	if (inet_pton(AF_INET, addr, b) != 1)
		return 0;
	if (!s->filtered) /* 127/8 but the lists' error codes 127.255.255/24 */
		return b[0] == 127 && !(b[1] == 255 && b[2] == 255);
	for (int o = 0; o < 4; o++)
		if (!(s->allow[o][b[o] >> 3] & (1u << (b[o] & 7))))
			return 0;
	return 1;
}

/* dnscheck_conf_check - the DNS parameters' syntax. */
int dnscheck_conf_check(const struct conf *c, char *err, size_t errlen)
{
	struct dnsbl_site s;
	const char *why;
	for (int i = 0; i < c->dnsbl_sites.n; i++)
		if (dnsbl_site_parse(c->dnsbl_sites.v[i], &s, &why) < 0) {
			snprintf(err, errlen, "dnsbl_sites: %s: %s", c->dnsbl_sites.v[i], why);
			return -1;
		}
	for (int i = 0; i < c->dnswl_sites.n; i++)
		if (dnsbl_site_parse(c->dnswl_sites.v[i], &s, &why) < 0) {
			snprintf(err, errlen, "dnswl_sites: %s: %s", c->dnswl_sites.v[i], why);
			return -1;
		}
	return dns_conf_check(c, err, errlen);
}

/* ---- waking a waiting step --------------------------------------------------- */

static int decide_client(struct dnscheck *d, struct policy_req *r, struct policy_verdict *v);
static int decide_sender(struct dnscheck *d, struct policy_req *r, struct policy_verdict *v);
static int decide_lists(struct dnscheck *d, struct policy_req *r, struct policy_verdict *v);
static int decide_name(const struct dnscheck *d);

/* wake - a result came: if the waiting step waited for it, it decides now. */
static void wake(struct dnscheck *d, enum wait_for what)
{
	/* A step waiting for the client's name waits on the client lookups. */
	if (!d->waiter || (d->wait_for != what && !(d->wait_for == W_NAME && what == W_CLIENT)))
		return;
	struct policy_req *r = d->waiter;
	struct policy_verdict v;
	memset(&v, 0, sizeof v);
	what = d->wait_for;
	if (what == W_NAME) {
		if (decide_name(d) == STEP_ASYNC)
			return;
		d->waiter = NULL;
		d->wait_for = W_NONE;
		d->name_resume(r); /* the waiting step goes on by itself */
		return;
	}
	int st = what == W_CLIENT ? decide_client(d, r, &v)
	    : what == W_SENDER    ? decide_sender(d, r, &v)
				  : decide_lists(d, r, &v);
	if (st == STEP_ASYNC)
		return; /* still waiting (the other half of FCrDNS) */
	d->waiter = NULL;
	d->wait_for = W_NONE;
	policy_step_done(r, st == STEP_DECIDED, &v);
}

/* cancel_wait - the chain was abandoned (policy_cancel). */
static void cancel_wait(void *handle)
{
	struct dnscheck *d = handle;
	d->waiter = NULL;
	d->wait_for = W_NONE;
}

/* ---- lookups ----------------------------------------------------------------- */

static void on_answer(void *arg, const struct dns_result *res);

/* start - look name up for l. */
static void start(struct dnscheck *d, struct lk *l, enum lkind kind, int idx, const char *name,
		  enum dns_type type)
{
	l->d = d;
	l->kind = kind;
	l->idx = idx;
	l->q = dns_lookup(d->loop, d->cf, name, type, on_answer, l);
}

/* fwd_done - every forward lookup of the PTR names has answered. */
static void fwd_settle(struct dnscheck *d)
{
	if (d->fwd == D_PENDING && d->fwd_pending == 0)
		d->fwd = d->fwd_temp ? D_TEMP : D_HARD;
}

/* host_name_ok - can a PTR name be the client's name? A host name
 * (letters, digits, '-', '_' in labels of 1..63, as smtp_domain_valid)
 * that is not all digits and dots, as an IPv4 address in disguise
 * (Postfix's valid_hostname and valid_hostaddr): a PTR name with spaces, control characters (CR LF),
 * other bytes or a dot inside a label would reach milters, logs and
 * access maps as a name that is not one. */
static int host_name_ok(const char *n)
{
	if (!n[0] || n[0] == '[' || !smtp_domain_valid(n, strlen(n), 0))
		return 0;
	return strspn(n, "0123456789.") != strlen(n); /* not numeric, as 192.0.2.1 */
}

/* on_ptr - the client's PTR names: look each one up again. Names that
 * are not host names are ignored (logged); none left is no PTR name. */
static void on_ptr(struct dnscheck *d, const struct dns_result *res)
{
	if (res->status != DNS_OK) {
		d->rev = d->fwd = res->status == DNS_TEMPFAIL ? D_TEMP : D_HARD;
		return;
	}
	d->rev = D_HARD;
	int bad = 0;
	for (int i = 0; i < res->n && d->nfwd < MAX_PTR_NAMES; i++) {
		if (!host_name_ok(res->rr[i].data)) {
			if (!bad++) /* one line per client, however many */
				log_info("dns: [%s]: PTR name \"%s\" is not a host name: ignored", d->addr,
					 res->rr[i].data);
			continue;
		}
		if (d->rev != D_OK)
			snprintf(d->name, sizeof d->name, "%s", res->rr[i].data);
		d->rev = D_OK;
		d->fwd_pending++;
		int k = d->nfwd++;
		d->fname[k] = xstrdup(res->rr[i].data);
		start(d, &d->fwdq[k], LK_FWD, k, res->rr[i].data, d->v6 ? DNS_T_AAAA : DNS_T_A);
	}
	fwd_settle(d);
}

/* on_fwd - one PTR name's addresses: does one of them equal the client? */
static void on_fwd(struct dnscheck *d, int idx, const struct dns_result *res)
{
	d->fwd_pending--;
	if (res->status == DNS_TEMPFAIL)
		d->fwd_temp = 1;
	for (int i = 0; res->status == DNS_OK && i < res->n && d->fwd == D_PENDING; i++) {
		unsigned char b[16];
		if (inet_pton(d->v6 ? AF_INET6 : AF_INET, res->rr[i].data, b) == 1 &&
		    !memcmp(b, d->abin, d->v6 ? 16 : 4)) {
			d->fwd = D_OK;
			snprintf(d->name, sizeof d->name, "%s", d->fname[idx]);
		}
	}
	fwd_settle(d);
}

/* on_sender - MX, then A, then AAAA for the sender domain. */
static void on_sender(struct dnscheck *d, const struct dns_result *res)
{
	if (res->status == DNS_TEMPFAIL) {
		d->snd = D_TEMP;
		return;
	}
	if (res->status == DNS_NXDOMAIN) {
		d->snd = D_HARD;
		return;
	}
	if (res->status == DNS_OK) {
		/* RFC 7505 §3: a single MX whose exchange is the root. */
		if (d->sphase == DNS_T_MX && res->n == 1 && !res->rr[0].data[0]) {
			d->snd = D_HARD;
			d->snd_nullmx = 1;
		} else {
			d->snd = D_OK;
		}
		return;
	}
	if (d->sphase == DNS_T_AAAA) {
		d->snd = D_HARD;
		return;
	}
	d->sphase = d->sphase == DNS_T_MX ? DNS_T_A : DNS_T_AAAA;
	start(d, &d->sq, LK_SENDER, 0, d->sdomain, d->sphase);
}

/* on_list - one DNSBL or DNSWL answer. */
static void on_list(struct dnscheck *d, int idx, const struct dns_result *res)
{
	const struct dnsbl_site *s = &d->sites[idx];
	int listed = 0;
	for (int i = 0; res->status == DNS_OK && i < res->n && !listed; i++)
		listed = dnsbl_site_match(s, res->rr[i].data);
	if (res->status == DNS_OK && !listed)
		log_info("dnsbl: %s answered %s for [%s], outside its filter: not counted", s->zone,
			 res->rr[0].data, d->addr);
	if (listed && idx < d->nbl) {
		d->score += s->weight;
		if (!d->bl_zone[0])
			snprintf(d->bl_zone, sizeof d->bl_zone, "%s", s->zone);
	} else if (listed) {
		d->wl = 1;
	}
	if (--d->lpending == 0)
		d->lists = D_OK;
}

/* on_answer - a lookup of this session finished. */
static void on_answer(void *arg, const struct dns_result *res)
{
	struct lk *l = arg;
	struct dnscheck *d = l->d;
	l->q = NULL;
	switch (l->kind) {
	case LK_PTR:
		on_ptr(d, res);
		wake(d, W_CLIENT);
		break;
	case LK_FWD:
		on_fwd(d, l->idx, res);
		wake(d, W_CLIENT);
		break;
	case LK_SENDER:
		on_sender(d, res);
		if (d->snd != D_PENDING)
			wake(d, W_SENDER);
		break;
	case LK_LIST:
		on_list(d, l->idx, res);
		if (d->lists != D_PENDING)
			wake(d, W_LISTS);
		break;
	}
}

/* dnscheck_connect - start PTR/FCrDNS and the lists, as configured. */
struct dnscheck *dnscheck_connect(struct ev_loop *loop, const struct conf *c, const char *client_addr)
{
	struct dnscheck *d = xcalloc(1, sizeof *d);
	d->loop = loop;
	d->cf = c;
	snprintf(d->addr, sizeof d->addr, "%s", client_addr);
	if (inet_pton(AF_INET, client_addr, d->abin) != 1) {
		if (inet_pton(AF_INET6, client_addr, d->abin) != 1)
			return d; /* not an address: nothing to look up */
		d->v6 = 1;
	}
	char rname[300];
	/* The client's name is looked up when a check needs it: the
	 * reject_unknown_* rules, host-name keys of client_access_maps,
	 * host-name entries of greylist_whitelist_clients and the requests
	 * to smtpd_policy_services (client_name, reverse_client_name). */
	if (c->reject_unknown_client_hostname || c->reject_unknown_reverse_client_hostname ||
	    c->client_access_maps[0] || (c->greylist && c->greylist_whitelist_clients[0]) ||
	    c->smtpd_policy_services.n) {
		if (dns_reverse_name(client_addr, NULL, rname, sizeof rname) == 0) {
			d->rev = d->fwd = D_PENDING;
			start(d, &d->ptr, LK_PTR, 0, rname, DNS_T_PTR);
		}
	}
	int n = c->dnsbl_sites.n + c->dnswl_sites.n;
	if (n) {
		d->sites = xcalloc((size_t)n, sizeof *d->sites);
		d->lq = xcalloc((size_t)n, sizeof *d->lq);
		const char *why;
		for (int i = 0; i < c->dnsbl_sites.n; i++)
			if (dnsbl_site_parse(c->dnsbl_sites.v[i], &d->sites[d->nsites], &why) == 0)
				d->nsites++;
		d->nbl = d->nsites;
		for (int i = 0; i < c->dnswl_sites.n; i++)
			if (dnsbl_site_parse(c->dnswl_sites.v[i], &d->sites[d->nsites], &why) == 0)
				d->nsites++;
		/* DNS block lists are IPv4 lists; IPv6 clients are looked up in
		 * nibble form (RFC 5782 §2.4), which lists that support it answer. */
		d->lists = d->nsites ? D_PENDING : D_OFF;
		d->lpending = d->nsites;
		for (int i = 0; i < d->nsites; i++) {
			if (dns_reverse_name(client_addr, d->sites[i].zone, rname, sizeof rname) < 0) {
				if (--d->lpending == 0)
					d->lists = D_OK;
				continue;
			}
			start(d, &d->lq[i], LK_LIST, i, rname, DNS_T_A);
		}
	}
	return d;
}

/* dnscheck_mail - the sender domain's lookup, for this transaction. */
void dnscheck_mail(struct dnscheck *d, const char *sender)
{
	if (!d)
		return;
	dns_cancel(d->sq.q);
	d->sq.q = NULL;
	d->snd = D_OFF;
	d->snd_nullmx = 0;
	if (!d->cf->reject_unknown_sender_domain || !sender)
		return;
	const char *at = strrchr(sender, '@');
	if (!at || !at[1] || at[1] == '[' || strlen(at + 1) > 253)
		return; /* null sender, or an address literal: no domain */
	/* A UTF-8 domain (SMTPUTF8) is looked up by its A-labels, the form
	 * its zone has; one that has none (a label past 63 octets) cannot
	 * be in the DNS. */
	if (dns_name_to_ascii(at + 1, d->sdomain, sizeof d->sdomain) < 0 || strlen(d->sdomain) > 253) {
		d->snd = D_HARD;
		return;
	}
	d->snd = D_PENDING;
	d->sphase = DNS_T_MX;
	start(d, &d->sq, LK_SENDER, 0, d->sdomain, DNS_T_MX);
}

/* dnscheck_free - cancel everything. */
void dnscheck_free(struct dnscheck *d)
{
	if (!d)
		return;
	dns_cancel(d->ptr.q);
	for (int i = 0; i < d->nfwd; i++) {
		dns_cancel(d->fwdq[i].q);
		free(d->fname[i]);
	}
	dns_cancel(d->sq.q);
	for (int i = 0; i < d->nsites; i++)
		dns_cancel(d->lq[i].q);
	free(d->sites);
	free(d->lq);
	free(d);
}

/* dnscheck_client_name - the confirmed name, if any. */
const char *dnscheck_client_name(const struct dnscheck *d)
{
	return d && d->fwd == D_OK ? d->name : NULL;
}

/* ---- verdicts ------------------------------------------------------------- */

/* dnscheck_reverse_name - the PTR name, if any. */
const char *dnscheck_reverse_name(const struct dnscheck *d)
{
	return d && d->rev == D_OK && d->name[0] ? d->name : NULL;
}

/* decide_host - one of decide_client's lookups in state st: waited for,
 * passed, or refused as "cannot find your WHAT" under rule. */
static int decide_host(const struct dnscheck *d, enum dstate st, const char *what, const char *rule,
		       struct policy_verdict *v)
{
	if (st == D_PENDING)
		return STEP_ASYNC;
	if (st == D_OK)
		return STEP_PASS;
	int t = st == D_TEMP;
	v->code = t ? 450 : 550;
	snprintf(v->reply, sizeof v->reply, "%s Client host rejected: cannot find your %s, [%s]",
		 t ? "450 4.7.25" : "550 5.7.25", what, d->addr);
	v->rule = rule;
	return STEP_DECIDED;
}

/* decide_client - reject_unknown_reverse_client_hostname, then
 * reject_unknown_client_hostname (Postfix's replies, RFC 8601's 7.25). */
static int decide_client(struct dnscheck *d, struct policy_req *r, struct policy_verdict *v)
{
	(void)r;
	const struct conf *c = d->cf;
	int rc = STEP_PASS;
	if (c->reject_unknown_reverse_client_hostname && d->rev != D_OFF)
		rc = decide_host(d, d->rev, "reverse hostname", "client_reverse_hostname", v);
	if (rc == STEP_PASS && c->reject_unknown_client_hostname && d->fwd != D_OFF)
		rc = decide_host(d, d->fwd, "hostname", "client_hostname", v);
	return rc;
}

/* decide_sender - reject_unknown_sender_domain (RFC 7505 §4 for null MX). */
static int decide_sender(struct dnscheck *d, struct policy_req *r, struct policy_verdict *v)
{
	const char *sender = r->env->sender ? r->env->sender : "";
	switch (d->snd) {
	case D_PENDING: return STEP_ASYNC;
	case D_TEMP:
		v->code = 450;
		snprintf(v->reply, sizeof v->reply,
			 "450 4.1.8 <%s>: Sender address rejected: Domain not found", sender);
		break;
	case D_HARD:
		v->code = 550;
		if (d->snd_nullmx)
			snprintf(
			    v->reply, sizeof v->reply,
			    "550 5.7.27 <%s>: Sender address rejected: Domain does not accept mail (null MX)",
			    sender);
		else
			snprintf(v->reply, sizeof v->reply,
				 "550 5.1.8 <%s>: Sender address rejected: Domain not found", sender);
		break;
	default: return STEP_PASS;
	}
	v->rule = "sender_domain";
	return STEP_DECIDED;
}

/* decide_lists - DNSWL first (a listed client skips DNSBL and
 * greylisting), then the DNSBL score against dnsbl_threshold. */
static int decide_lists(struct dnscheck *d, struct policy_req *r, struct policy_verdict *v)
{
	if (d->lists == D_PENDING)
		return STEP_ASYNC;
	if (d->wl) {
		r->dnswl = 1;
		return STEP_PASS;
	}
	if (d->nbl && d->score >= d->cf->dnsbl_threshold) {
		v->code = 550;
		snprintf(v->reply, sizeof v->reply,
			 "550 5.7.1 Service unavailable; client [%s] blocked using %s", d->addr, d->bl_zone);
		v->rule = "dnsbl";
		return STEP_DECIDED;
	}
	return STEP_PASS;
}

/* decide_name - the client's name is settled (confirmed, or not to be had). */
static int decide_name(const struct dnscheck *d)
{
	return d->rev == D_PENDING || d->fwd == D_PENDING ? STEP_ASYNC : STEP_PASS;
}

/* dnscheck_wait_client_name - see dnscheck.h. */
enum policy_step dnscheck_wait_client_name(struct policy_req *r, void (*resume)(struct policy_req *r))
{
	struct dnscheck *d = r->env->dns;
	if (!d || decide_name(d) == STEP_PASS)
		return STEP_PASS;
	d->waiter = r;
	d->wait_for = W_NAME;
	d->name_resume = resume;
	policy_step_async(r, cancel_wait, d);
	return STEP_ASYNC;
}

/* run_step - decide now, or wait for the lookup. */
static enum policy_step run_step(struct policy_req *r, struct policy_verdict *v, enum wait_for what)
{
	struct dnscheck *d = r->env->dns;
	if (!d || r->exempt)
		return STEP_PASS;
	int st = what == W_CLIENT ? decide_client(d, r, v)
	    : what == W_SENDER    ? decide_sender(d, r, v)
				  : decide_lists(d, r, v);
	if (st == STEP_ASYNC) {
		d->waiter = r;
		d->wait_for = what;
		policy_step_async(r, cancel_wait, d);
	}
	return (enum policy_step)st;
}

/* dnscheck_step_client - see dnscheck.h. */
enum policy_step dnscheck_step_client(struct policy_req *r, struct policy_verdict *v)
{
	return run_step(r, v, W_CLIENT);
}

/* dnscheck_step_sender - see dnscheck.h. */
enum policy_step dnscheck_step_sender(struct policy_req *r, struct policy_verdict *v)
{
	return run_step(r, v, W_SENDER);
}

/* dnscheck_step_dnsbl - see dnscheck.h. */
enum policy_step dnscheck_step_dnsbl(struct policy_req *r, struct policy_verdict *v)
{
	return run_step(r, v, W_LISTS);
}
