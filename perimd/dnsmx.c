/*
 * dnsmx.c - backends by MX (see dnsmx.h).
 *
 * Invariants: a request holds at most one MX lookup, then at most two
 * address lookups per MX host (A and AAAA, in parallel); `pending` counts
 * those still out, and the request finishes exactly once, from a DNS
 * callback (never inside dnsmx_resolve()), when it reaches 0. The order
 * of the result is MX preference (RFC 5321 §5.1; equal preferences keep
 * the server's order), then A before AAAA within a host.
 */
#include "dnsmx.h"
#include "conf.h"
#include "dns.h"
#include "log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_MX 8

struct dnsmx_req;

struct sub {
	struct dnsmx_req *q;
	struct dns_query *dq;
	const struct dns_result *res;
	int host;
};

struct dnsmx_req {
	struct ev_loop *loop;
	const struct conf *c;
	char host[256];
	int port;
	dnsmx_done_fn *done;
	void *arg;
	struct sub mx;
	char *names[MAX_MX];
	int nnames;
	struct sub addr[2 * MAX_MX]; /* [2i] A, [2i+1] AAAA of names[i] */
	int pending;
};

/* dnsmx_target_host - "host" or "host:port". */
int dnsmx_target_host(const char *target, char *host, size_t hostlen, int *port)
{
	while (*target == ' ' || *target == '\t')
		target++;
	const char *colon = strchr(target, ':');
	size_t hl = colon ? (size_t)(colon - target) : strlen(target);
	int alpha = 0;
	if (hl == 0 || hl > 253 || hl >= hostlen)
		return -1;
	for (size_t i = 0; i < hl; i++) {
		char ch = target[i];
		if (isalpha((unsigned char)ch))
			alpha = 1;
		else if (!isdigit((unsigned char)ch) && ch != '.' && ch != '-' && ch != '_')
			return -1;
		host[i] = (char)tolower((unsigned char)ch);
	}
	host[hl] = 0;
	if (!alpha || host[0] == '.' || host[0] == '-' || strstr(host, ".."))
		return -1;
	*port = 25;
	if (colon) {
		char *end;
		long p = strtol(colon + 1, &end, 10);
		if (end == colon + 1 || *end || p < 1 || p > 65535)
			return -1;
		*port = (int)p;
	}
	return 0;
}

/* is_local - can we bind this address (is it one of this host's)? */
static int is_local(int af, const void *a)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	socklen_t sl;
	if (af == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		memcpy(&s4->sin_addr, a, 4);
		sl = sizeof *s4;
	} else {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, a, 16);
		sl = sizeof *s6;
	}
	int fd = socket(af, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	int ok = bind(fd, (struct sockaddr *)&ss, sl) == 0;
	close(fd);
	return ok;
}

/* dnsmx_is_self - does (addr, port) reach one of our listeners? (A
 * wildcard listener matches every local address.) */
static int dnsmx_is_self(const struct conf *c, const char *addr, int port)
{
	unsigned char a[16], l[16];
	int af = strchr(addr, ':') ? AF_INET6 : AF_INET;
	if (inet_pton(af, addr, a) != 1)
		return 0;
	for (int i = 0; i < c->smtpd_listen.n; i++) {
		char buf[128];
		snprintf(buf, sizeof buf, "%s", c->smtpd_listen.v[i]);
		char *colon = strrchr(buf, ':');
		if (!colon || atoi(colon + 1) != port)
			continue;
		*colon = 0;
		char *h = buf;
		if (*h == '[') {
			h++;
			char *e = strchr(h, ']');
			if (e)
				*e = 0;
		}
		int laf = strchr(h, ':') ? AF_INET6 : AF_INET;
		if (laf != af || inet_pton(laf, h, l) != 1)
			continue;
		static const unsigned char zero[16];
		if (!memcmp(l, a, af == AF_INET ? 4 : 16))
			return 1;
		if (!memcmp(l, zero, af == AF_INET ? 4 : 16) && is_local(af, a))
			return 1;
	}
	return 0;
}

/* dnsmx_list_free - free a result list. */
void dnsmx_list_free(struct dnsmx_list *l)
{
	if (!l)
		return;
	for (int i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	free(l);
}

/* req_free - release the lookups' results and names. */
static void req_free(struct dnsmx_req *q)
{
	dns_cancel(q->mx.dq);
	for (int i = 0; i < 2 * q->nnames; i++) {
		dns_cancel(q->addr[i].dq);
		dns_result_unref(q->addr[i].res);
	}
	for (int i = 0; i < q->nnames; i++)
		free(q->names[i]);
	free(q);
}

/* finish - hand the list over and free the request. */
static void finish(struct dnsmx_req *q, struct dnsmx_list *l)
{
	dnsmx_done_fn *done = q->done;
	void *arg = q->arg;
	req_free(q);
	done(arg, l);
}

/* fail - no address at all. */
static void fail(struct dnsmx_req *q, int temp, const char *why)
{
	struct dnsmx_list *l = xcalloc(1, sizeof *l);
	l->temp = temp;
	snprintf(l->why, sizeof l->why, "%.200s: %s", q->host, why);
	finish(q, l);
}

/* assemble - every address lookup answered: the list in order. */
static void assemble(struct dnsmx_req *q)
{
	struct dnsmx_list *l = xcalloc(1, sizeof *l);
	int temp = 0, self = 0;
	for (int i = 0; i < 2 * q->nnames; i++) {
		const struct dns_result *r = q->addr[i].res;
		if (!r || r->status == DNS_TEMPFAIL) {
			temp = 1;
			continue;
		}
		for (int k = 0; r->status == DNS_OK && k < r->n; k++) {
			const char *a = r->rr[k].data;
			if (dnsmx_is_self(q->c, a, q->port)) {
				self = 1;
				log_warn("relay: backend %s resolves to [%s]:%d, which is perimd itself "
					 "(a mail loop): skipped",
					 q->host, a, q->port);
				continue;
			}
			char t[INET6_ADDRSTRLEN + 16];
			snprintf(t, sizeof t, "[%s]:%d", a, q->port);
			int dup = 0;
			for (int j = 0; j < l->n && !dup; j++)
				dup = !strcmp(l->v[j], t);
			if (dup)
				continue;
			l->v = xrealloc(l->v, (size_t)(l->n + 2) * sizeof *l->v);
			l->v[l->n++] = xstrdup(t);
			l->v[l->n] = NULL;
		}
	}
	if (l->n == 0) {
		l->temp = temp && !self;
		snprintf(l->why, sizeof l->why, "%.200s: %s", q->host,
			 self       ? "resolves to perimd itself (mail loop)"
			     : temp ? "address lookup failed"
				    : "no address for its MX hosts");
	} else if (self) {
		snprintf(l->why, sizeof l->why, "%.200s: an address of perimd itself left out", q->host);
	}
	finish(q, l);
}

/* on_addr - one A or AAAA answer. */
static void on_addr(void *arg, const struct dns_result *res)
{
	struct sub *s = arg;
	struct dnsmx_req *q = s->q;
	s->dq = NULL;
	dns_result_ref(res);
	s->res = res;
	if (--q->pending == 0)
		assemble(q);
}

/* add_name - an MX host (or the name itself) to look up. */
static void add_name(struct dnsmx_req *q, const char *name)
{
	for (int i = 0; i < q->nnames; i++)
		if (!strcmp(q->names[i], name))
			return;
	if (q->nnames == MAX_MX)
		return;
	q->names[q->nnames++] = xstrdup(name);
}

static void lookup_names(struct dnsmx_req *q);

/* on_mx - the MX answer: sort by preference, look the hosts up. */
static void on_mx(void *arg, const struct dns_result *res)
{
	struct dnsmx_req *q = ((struct sub *)arg)->q;
	q->mx.dq = NULL;
	switch (res->status) {
	case DNS_TEMPFAIL: fail(q, 1, "MX lookup failed"); return;
	case DNS_NXDOMAIN: fail(q, 0, "host not found"); return;
	case DNS_NODATA:
		add_name(q, q->host); /* RFC 5321 §5.1: the implicit MX */
		break;
	case DNS_OK: {
		if (res->n == 1 && !res->rr[0].data[0]) {
			fail(q, 0, "null MX: the domain accepts no mail (RFC 7505)");
			return;
		}
		int order[DNS_MAX_RR], n = 0;
		for (int i = 0; i < res->n; i++) {
			int j = n++;
			while (j > 0 && res->rr[order[j - 1]].pref > res->rr[i].pref) {
				order[j] = order[j - 1];
				j--;
			}
			order[j] = i;
		}
		for (int i = 0; i < n; i++)
			if (res->rr[order[i]].data[0])
				add_name(q, res->rr[order[i]].data);
		break;
	}
	}
	if (q->nnames == 0) {
		fail(q, 0, "no MX host");
		return;
	}
	lookup_names(q);
}

/* lookup_names - the A and AAAA lookups of every name in q. */
static void lookup_names(struct dnsmx_req *q)
{
	q->pending = 2 * q->nnames;
	for (int i = 0; i < q->nnames; i++) {
		for (int k = 0; k < 2; k++) {
			struct sub *s = &q->addr[2 * i + k];
			s->q = q;
			s->host = i;
			s->dq = dns_lookup(q->loop, q->c, q->names[i], k ? DNS_T_AAAA : DNS_T_A, on_addr, s);
		}
	}
}

/* dnsmx_resolve - start with the MX lookup (or the host's addresses). */
struct dnsmx_req *dnsmx_resolve(struct ev_loop *loop, const struct conf *c, const char *host, int port,
				int mx, dnsmx_done_fn *done, void *arg)
{
	struct dnsmx_req *q = xcalloc(1, sizeof *q);
	q->loop = loop;
	q->c = c;
	snprintf(q->host, sizeof q->host, "%s", host);
	q->port = port;
	q->done = done;
	q->arg = arg;
	q->mx.q = q;
	if (!mx) {
		add_name(q, q->host);
		lookup_names(q);
		return q;
	}
	q->mx.dq = dns_lookup(loop, c, host, DNS_T_MX, on_mx, &q->mx);
	return q;
}

/* dnsmx_cancel - abandon; done() will not run. */
void dnsmx_cancel(struct dnsmx_req *q)
{
	if (q)
		req_free(q);
}
