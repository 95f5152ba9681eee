/*
 * relay.c - the SMTP client to the backends: targets, per-loop connection
 * pools with a process-wide limit per backend, requests and their
 * outcome, failover, callouts. The dialogue on one backend connection
 * (envelope, body, STARTTLS, replies) is relay_smtp.c's; relay_int.h is
 * what the two share.
 *
 * Invariants:
 * - A struct relay_dest exists once per backend address for the life of
 *   the process. `open` counts every connection to it that holds a slot
 *   (connecting, busy, idle), never more than its limit; the per-loop
 *   waiting/idle counts beside it are guarded by its mutex. Whoever lowers
 *   `open` calls dest_wake(), and whoever registers a waiter while
 *   connections sit idle on another loop asks that loop to shed one, so a
 *   waiter is never left waiting while a slot could be had.
 * - A backend connection (bconn) belongs to one loop. It is attached to at
 *   most one request; an unattached one is idle in its pool, sending RSET,
 *   or closing. A connection in an unknown protocol state (timeout, error,
 *   cancelled request, 421) is closed, never reused.
 * - A request (relay_req) calls done() exactly once, from a loop callback,
 *   never inside relay_send(); after relay_cancel() nothing runs for it and
 *   nothing touches its msg. Once the final dot is written the message is
 *   never replayed (RFC 5321 §4.1.1.4 leaves a lost reply ambiguous, and a
 *   duplicate is worse than a 451).
 * - Output during the body is kept near RELAY_WINDOW bytes (refilled from
 *   on_drain), and ".\r\n" leaves with the last chunk.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "conf.h"
#include "conn.h"
#include "dnsmx.h"
#include "ev.h"
#include "log.h"
#include "net.h"
#include "relay.h"
#include "relay_int.h"
#include "smtp_proto.h"
#include "spool.h"
#include "stats.h"
#include "tls.h"
#include "verify.h"

static void req_next_target(struct relay_req *r);
static void req_capmiss_final(struct relay_req *r);
static void req_acquire(struct relay_req *r);
static void pool_kick(void *arg);
static void rl_maybe_free(struct relay_loop *rl);

const char *const relay_bstate_name[] = { "connect",      "greeting",      "EHLO",    "HELO",
					  "STARTTLS",     "TLS handshake", "XCLIENT", "ready",
					  "XFORWARD",     "MAIL FROM",     "RCPT TO", "DATA",
					  "message body", "end of data",   "RSET",    "idle",
					  "moving",       "QUIT",          "BDAT",    "hold" };
/* The same as metric label values (snake_case). "hold": waiting for
 * relay_release(). */
const char *const relay_bstate_label[] = { "connect",      "greeting",      "ehlo",    "helo",
					   "starttls",     "tls_handshake", "xclient", "ready",
					   "xforward",     "mail_from",     "rcpt_to", "data",
					   "message_body", "end_of_data",   "rset",    "idle",
					   "moving",       "quit",          "bdat",    "hold" };

static pthread_mutex_t dests_mu = PTHREAD_MUTEX_INITIALIZER;
static struct relay_dest *dests;

/* ---- targets ------------------------------------------------------------ */

/* Postfix transports perimd cannot be, and what to write instead. */
static const struct {
	const char *name;
	const char *instead;
} foreign_transports[] = {
	{ "lmtp", "perimd relays over SMTP only: write smtp:[host]:port for an SMTP backend" },
	{ "local", "perimd delivers to no mailbox: route the domain to the mail server, smtp:[host]:port" },
	{ "virtual", "perimd delivers to no mailbox: route the domain to the mail server, smtp:[host]:port" },
	{ "pipe", "perimd runs no commands: route to an SMTP backend, smtp:[host]:port" },
	{ "uucp", "perimd relays over SMTP only: write smtp:[host]:port" },
	{ "maildrop", "perimd delivers to no mailbox: route to an SMTP backend, smtp:[host]:port" },
};

/*
 * relay_target_nexthop - see relay.h. Postfix's transport(5) value is
 * "transport:nexthop"; a first word that is no transport name but a
 * host ("mx.example.com:2525", "10.0.0.5:25") is perimd's own form.
 */
const char *relay_target_nexthop(const char *target, const char **why)
{
	target += strspn(target, " \t");
	size_t w = strspn(target, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-");
	if (w == 0 || target[w] != ':' || !isalpha((unsigned char)target[0]))
		return target;
	const char *rest = target + w + 1;
	if (*rest && strspn(rest, "0123456789") == strlen(rest))
		return target; /* host:port */
	if ((w == 4 && !strncasecmp(target, "smtp", 4)) || (w == 5 && !strncasecmp(target, "relay", 5))) {
		if (!*rest) {
			*why = "a transport without a next hop (Postfix's default, the recipient domain, "
			       "is perimd itself): write smtp:[host]:port";
			return NULL;
		}
		return rest;
	}
	if (strspn(target, "0123456789abcdefABCDEF") == w && strchr(rest, ':'))
		return target; /* a bare IPv6 address: target_parse says what to write */
	for (size_t i = 0; i < sizeof foreign_transports / sizeof foreign_transports[0]; i++)
		if (strlen(foreign_transports[i].name) == w &&
		    !strncasecmp(target, foreign_transports[i].name, w)) {
			*why = foreign_transports[i].instead;
			return NULL;
		}
	*why = "unknown transport (perimd knows smtp: and relay:, both SMTP): write smtp:[host]:port, "
	       "[host]:port or host:port";
	return NULL;
}

/* bracket_host - "[name]" or "[name]:port" with a host name (not an
 * address) inside: Postfix's "no MX lookup" form. 0 with host and port. */
static int bracket_host(const char *t, char *host, size_t hostlen, int *port)
{
	const char *close = t[0] == '[' ? strchr(t, ']') : NULL;
	char buf[300];
	if (!close || (size_t)(close - t) >= sizeof buf - 8 || (close[1] && close[1] != ':'))
		return -1;
	snprintf(buf, sizeof buf, "%.*s%s", (int)(close - t - 1), t + 1, close + 1);
	return dnsmx_target_host(buf, host, hostlen, port);
}

/* target_parse - "[addr]:port", "addr:port", "[addr]" (port 25) into a
 * socket address and its display name; -1 with *why on error. */
static int target_parse(const char *target, struct sockaddr_storage *ss, socklen_t *sslen, char *name,
			size_t namelen, const char **why)
{
	char host[128];
	const char *p = target, *portp = NULL;
	size_t hl;
	int port = 25, bracket = 0;
	struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
	char abuf[INET6_ADDRSTRLEN];

	if (!(p = relay_target_nexthop(p, why)))
		return -1;
	if (*p == '\0') {
		*why = "empty backend";
		return -1;
	}
	if (*p == '[') {
		const char *close = strchr(p, ']');

		if (!close) {
			*why = "missing ']'";
			return -1;
		}
		bracket = 1;
		p++;
		if (strncasecmp(p, "IPv6:", 5) == 0)
			p += 5;
		hl = (size_t)(close - p);
		if (close[1] == ':')
			portp = close + 2;
		else if (close[1] != '\0') {
			*why = "junk after ']' (write [address]:port)";
			return -1;
		}
	} else {
		const char *colon = strchr(p, ':');

		if (colon && strchr(colon + 1, ':')) {
			*why = "IPv6 addresses must be in brackets: [address]:port";
			return -1;
		}
		hl = colon ? (size_t)(colon - p) : strlen(p);
		if (colon)
			portp = colon + 1;
	}
	if (hl == 0 || hl >= sizeof(host)) {
		*why = "bad address";
		return -1;
	}
	memcpy(host, p, hl);
	host[hl] = '\0';
	if (portp && (port = net_parse_port(portp)) < 0) {
		*why = "bad port (1-65535)";
		return -1;
	}
	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		*sslen = sizeof(*s4);
		inet_ntop(AF_INET, &s4->sin_addr, abuf, sizeof(abuf));
		snprintf(name, namelen, "%s:%d", abuf, port);
		return 0;
	}
	if (bracket && inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		*sslen = sizeof(*s6);
		inet_ntop(AF_INET6, &s6->sin6_addr, abuf, sizeof(abuf));
		snprintf(name, namelen, "[%s]:%d", abuf, port);
		return 0;
	}
	*why = bracket ? "not an IPv4 or IPv6 address" : "not an address (host names are looked up by MX)";
	return -1;
}

/* relay_target_valid - check a backend list entry. */
int relay_target_valid(const char *target, const char **why)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	char name[INET6_ADDRSTRLEN + 16];

	char host[256];
	int port;

	if (target_parse(target, &ss, &sl, name, sizeof(name), why) == 0)
		return 0;
	const char *t = relay_target_nexthop(target, why);
	if (!t)
		return -1;
	/* Without brackets a name is a host looked up by MX, then A/AAAA;
	 * in brackets, by A/AAAA only (as Postfix). */
	if (t[0] != '[' && dnsmx_target_host(t, host, sizeof(host), &port) == 0)
		return 0;
	if (bracket_host(t, host, sizeof(host), &port) == 0)
		return 0;
	return -1;
}

/* relay_route_refusal - see relay.h. */
int relay_route_refusal(const char *route, int *code, char *enh, size_t enhlen, char *text, size_t textlen)
{
	int retry = !strncasecmp(route, "retry:", 6);
	if (!retry && strncasecmp(route, "error:", 6))
		return 0;
	const char *t = route + 6;
	char cls = retry ? '4' : '5';
	size_t e = 0;
	if (t[0] == cls && t[1] == '.') {
		e = 2 + strspn(t + 2, "0123456789.");
		if (t[e] && t[e] != ' ')
			e = 0;
	}
	*code = retry ? 450 : 550;
	if (e && e < enhlen)
		snprintf(enh, enhlen, "%.*s", (int)e, t);
	else
		snprintf(enh, enhlen, "%c.0.0", cls);
	t += e && e < enhlen ? e : 0;
	t += strspn(t, " ");
	size_t j = 0;
	for (; *t && j + 1 < textlen && j < 300; t++)
		text[j++] = (*t >= ' ' && *t < 127) ? *t : '?';
	if (textlen)
		text[j] = 0;
	if (!j)
		snprintf(text, textlen, "%s", retry ? "try again later" : "recipient rejected");
	return 1;
}

/* relay_route_discard - see relay.h. */
int relay_route_discard(const char *route)
{
	return !strncasecmp(route, "discard:", 8);
}

/* relay_route_check - see relay.h. */
int relay_route_check(const char *value, char *why, size_t whylen)
{
	int code;
	char enh[16], text[8];
	if (relay_route_refusal(value, &code, enh, sizeof enh, text, sizeof text) || relay_route_discard(value))
		return 0;
	char item[300];
	const char *p = value;
	int n = 0;
	while (*p) {
		p += strspn(p, ", \t");
		size_t k = strcspn(p, ", \t");
		if (!k)
			break;
		const char *w = NULL;
		snprintf(item, sizeof item, "%.*s", (int)k, p);
		if (k >= sizeof item || relay_target_valid(item, &w) < 0) {
			snprintf(why, whylen, "backend \"%.100s\": %s", item, w ? w : "too long");
			return -1;
		}
		n++;
		p += k;
	}
	if (!n) {
		snprintf(why, whylen, "no backend: write smtp:[host]:port, [host]:port or host:port");
		return -1;
	}
	return 0;
}

/* dest_get - the process-wide record of a target, created on first use. */
static struct relay_dest *dest_get(const char *target, const char **why)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	char name[INET6_ADDRSTRLEN + 16];
	struct relay_dest *d;

	if (target_parse(target, &ss, &sl, name, sizeof(name), why) < 0)
		return NULL;
	pthread_mutex_lock(&dests_mu);
	for (d = dests; d; d = d->next)
		if (strcmp(d->name, name) == 0)
			break;
	if (!d) {
		d = xcalloc(1, sizeof(*d));
		relay_copy_str(d->name, sizeof(d->name), name);
		net_ntop((struct sockaddr *)&ss, d->addr, sizeof(d->addr));
		d->sa = ss;
		d->salen = sl;
		atomic_init(&d->open, 0);
		atomic_init(&d->limit, 1);
		atomic_init(&d->making, 0);
		atomic_init(&d->yielding, 0);
		pthread_mutex_init(&d->mu, NULL);
		d->next = dests;
		dests = d;
	}
	pthread_mutex_unlock(&dests_mu);
	return d;
}

/* dest_loop_get - this loop's counters in d (d->mu held). */
static struct dest_loop *dest_loop_get(struct relay_dest *d, struct ev_loop *loop)
{
	for (int i = 0; i < d->nloops; i++)
		if (d->loops[i].loop == loop)
			return &d->loops[i];
	if (d->nloops == d->caploops) {
		d->caploops = d->caploops ? 2 * d->caploops : 4;
		d->loops = xrealloc(d->loops, (size_t)d->caploops * sizeof(*d->loops));
	}
	d->loops[d->nloops] = (struct dest_loop){ .loop = loop };
	return &d->loops[d->nloops++];
}

struct dest_post {
	struct ev_loop *loop;
	struct relay_dest *dest;
	int shed;           /* 1: hand an idle conn to `to`; 0: serve waiters */
	struct ev_loop *to; /* the loop that waits (shed) */
};

static void dest_post_cb(void *arg);

/* dest_post_to - ask another loop to serve its waiters, or (shed) to
 * hand one of its idle connections to loop `to`. */
static void dest_post_to(struct ev_loop *loop, struct relay_dest *d, int shed, struct ev_loop *to)
{
	struct dest_post *p = xmalloc(sizeof(*p));

	p->loop = loop;
	p->dest = d;
	p->shed = shed;
	p->to = to;
	ev_post(loop, dest_post_cb, p);
}

/* dest_waiting - requests of every loop waiting for a connection to d
 * (d->mu held). */
static int dest_waiting(const struct relay_dest *d)
{
	int n = 0;

	for (int i = 0; i < d->nloops; i++)
		n += d->loops[i].waiting;
	return n;
}

/* dest_reserve - take a connection slot, for a new connection. A fresh
 * request (waiter == 0) queues behind existing waiters; with `waiter` the
 * caller already waits. While RELAY_CONNECT_BURST connections are being
 * set up and others are up, the request waits too: a burst of connects
 * can sit in a busy backend's listen queue for a second, while a
 * connection that is up comes free sooner.
 * On failure and register_wait, this loop's waiting count goes up and a
 * loop holding idle connections is asked to hand one over. */
static int dest_reserve(struct relay_dest *d, struct ev_loop *loop, int waiter, int register_wait)
{
	struct ev_loop *shed = NULL;
	int ok = 0, others;

	pthread_mutex_lock(&d->mu);
	others = dest_waiting(d);
	int nopen = atomic_load(&d->open), making = atomic_load(&d->making);

	if (nopen < atomic_load(&d->limit) && (making < RELAY_CONNECT_BURST || nopen == making) &&
	    (waiter || others == 0)) {
		atomic_fetch_add(&d->open, 1);
		atomic_fetch_add(&d->making, 1);
		ok = 1;
	} else if (register_wait) {
		dest_loop_get(d, loop)->waiting++;
		for (int i = 0; i < d->nloops; i++)
			if (d->loops[i].loop != loop && d->loops[i].idle > 0)
				shed = d->loops[i].loop;
	}
	pthread_mutex_unlock(&d->mu);
	if (shed)
		dest_post_to(shed, d, 1, loop);
	return ok;
}

/* dest_adjust - change this loop's waiting / idle counts. */
static void dest_adjust(struct relay_dest *d, struct ev_loop *loop, int dwait, int didle)
{
	pthread_mutex_lock(&d->mu);
	struct dest_loop *dl = dest_loop_get(d, loop);
	dl->waiting += dwait;
	dl->idle += didle;
	pthread_mutex_unlock(&d->mu);
}

/* dest_claim - the loop other than self (only `to`, when given) whose
 * waiters most outnumber the connections already on their way there,
 * counted as getting one more; NULL when no loop needs one. */
static struct ev_loop *dest_claim(struct relay_dest *d, const struct ev_loop *self, const struct ev_loop *to)
{
	struct ev_loop *pick = NULL;
	int best = 0;

	pthread_mutex_lock(&d->mu);
	for (int i = 0; i < d->nloops; i++) {
		struct dest_loop *dl = &d->loops[i];

		if (dl->loop == self || (to && dl->loop != to) || dl->waiting - dl->incoming <= best)
			continue;
		pick = dl->loop;
		best = dl->waiting - dl->incoming;
	}
	if (pick)
		dest_loop_get(d, pick)->incoming++;
	pthread_mutex_unlock(&d->mu);
	return pick;
}

/* dest_arrived - a connection claimed for loop arrived there or is gone. */
static void dest_arrived(struct relay_dest *d, struct ev_loop *loop)
{
	pthread_mutex_lock(&d->mu);
	dest_loop_get(d, loop)->incoming--;
	pthread_mutex_unlock(&d->mu);
}

/* pool_find - this loop's pool for d, or NULL. */
static struct pool *pool_find(const struct relay_loop *rl, const struct relay_dest *d)
{
	struct pool *p;

	for (p = rl->pools; p; p = p->next)
		if (p->dest == d)
			break;
	return p;
}

/* dest_wake - a slot may be free: let a waiting loop (this one first) use it. */
static void dest_wake(struct relay_dest *d, struct relay_loop *self)
{
	struct ev_loop *pick = NULL;

	pthread_mutex_lock(&d->mu);
	if (atomic_load(&d->open) < atomic_load(&d->limit)) {
		for (int i = 0; i < d->nloops; i++) {
			if (d->loops[i].waiting <= 0)
				continue;
			if (!pick || (self && d->loops[i].loop == self->loop))
				pick = d->loops[i].loop;
		}
	}
	pthread_mutex_unlock(&d->mu);
	if (!pick)
		return;
	if (self && pick == self->loop) {
		struct pool *p = pool_find(self, d);

		if (p && !self->shutdown)
			ev_defer(self->loop, &p->kick, pool_kick, p);
		return;
	}
	dest_post_to(pick, d, 0, NULL);
}

/* slot_release - a connection gives its slot back. */
static void slot_release(struct bconn *b)
{
	if (!b->slot)
		return;
	b->slot = 0;
	atomic_fetch_sub(&b->pool->dest->open, 1);
	dest_wake(b->pool->dest, b->pool->rl);
}

/* ---- per-loop pools ----------------------------------------------------- */

/* rl_get - this loop's relay state, created on first use. */
static struct relay_loop *rl_get(struct ev_loop *loop)
{
	void **slot = ev_slot(loop, EV_SLOT_RELAY);

	if (!*slot) {
		struct relay_loop *rl = xcalloc(1, sizeof(*rl));

		rl->loop = loop;
		*slot = rl;
	}
	return *slot;
}

/* pool_get - this loop's pool for d, created on first use. */
static struct pool *pool_get(struct relay_loop *rl, struct relay_dest *d)
{
	struct pool *p = pool_find(rl, d);

	if (!p) {
		p = xcalloc(1, sizeof(*p));
		p->rl = rl;
		p->dest = d;
		TAILQ_INIT(&p->idle);
		TAILQ_INIT(&p->waiters);
		p->next = rl->pools;
		rl->pools = p;
	}
	return p;
}

/* rl_maybe_free - after relay_loop_shutdown(), free when nothing is left. */
static void rl_maybe_free(struct relay_loop *rl)
{
	if (!rl->shutdown || rl->nconn || rl->nreq)
		return;
	while (rl->pools) {
		struct pool *p = rl->pools;

		rl->pools = p->next;
		ev_defer_cancel(rl->loop, &p->kick);
		free(p);
	}
	*ev_slot(rl->loop, EV_SLOT_RELAY) = NULL;
	free(rl);
}

/* ---- small helpers ------------------------------------------------------ */

/* relay_copy_str - bounded copy, always terminated, truncating. */
void relay_copy_str(char *dst, size_t dstlen, const char *src)
{
	size_t n = strlen(src);

	if (n >= dstlen)
		n = dstlen - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* req_remaining - ms left until the deadline, at most `stage`. */
uint64_t req_remaining(struct relay_req *r, uint64_t stage)
{
	uint64_t now = ev_now(r->rl->loop);

	if (now >= r->msg->deadline)
		return 0;
	return r->msg->deadline - now < stage ? r->msg->deadline - now : stage;
}

/* relay_reply_format - "550 5.1.1 text" on one line, control bytes replaced. */
void relay_reply_format(const struct smtp_reply *rep, char *out, size_t outlen)
{
	int k = snprintf(out, outlen, "%d %s%s", rep->code, rep->enh, rep->enh[0] ? " " : "");
	size_t n;

	if (k < 0 || (size_t)k >= outlen)
		k = 0;
	relay_copy_str(out + k, outlen - (size_t)k, rep->text);
	for (n = 0; out[n]; n++)
		if ((unsigned char)out[n] < 0x20 || out[n] == 0x7f)
			out[n] = ' ';
	/* A bare "250" has no text: no trailing blank ("said: 250 )"). */
	while (n > 0 && out[n - 1] == ' ')
		out[--n] = '\0';
}

/* relay_queue_id_parse - best-effort backend queue id from a 250 text:
 * Postfix "Ok: queued as X", Exchange "<id@host> Queued Mail for
 * delivery", Gmail "OK 1234 - gsmtp", else the last token with a digit. */
void relay_queue_id_parse(const char *text, char *out, size_t outlen)
{
	const char *p, *best = NULL;
	size_t n = 0;

	out[0] = '\0';
	if ((p = strcasestr(text, "queued as ")) != NULL) {
		best = p + 10;
		n = strcspn(best, " \t\n;,)");
	} else if (text[0] == '<' && (p = strchr(text, '>')) != NULL) {
		best = text + 1;
		n = (size_t)(p - best);
	} else if (strncasecmp(text, "ok ", 3) == 0 || strncasecmp(text, "ok: ", 4) == 0) {
		best = text + (text[2] == ':' ? 4 : 3);
		best += strspn(best, " ");
		n = strcspn(best, " \t\n;,");
	} else {
		for (p = text; *p;) {
			size_t w;

			p += strspn(p, " \t\n");
			w = strcspn(p, " \t\n");
			if (w && strpbrk(p, "0123456789") && strpbrk(p, "0123456789") < p + w) {
				best = p;
				n = w;
			}
			p += w;
		}
	}
	if (!best || n == 0)
		return;
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, best, n);
	out[n] = '\0';
}

/* req_body_has_8bit - does the stored message hold a byte >= 0x80 (RFC 6152)? */
int req_body_has_8bit(struct relay_req *r)
{
	struct spool *s = r->msg->body;
	uint64_t off = 0, size = spool_size(s);
	char buf[RELAY_CHUNK];

	while (off < size) {
		const void *p;
		size_t n = spool_peek(s, off, &p);

		if (n == 0) {
			ssize_t k = spool_read(s, off, buf, sizeof(buf));

			if (k <= 0)
				return 1; /* unreadable: assume the worst */
			p = buf;
			n = (size_t)k;
		}
		for (size_t i = 0; i < n; i++)
			if (((const unsigned char *)p)[i] & 0x80)
				return 1;
		off += n;
	}
	return 0;
}

/* envelope_clean - no CR/LF in anything that goes into a command line. */
static int envelope_clean(const struct relay_msg *m)
{
	const char *v[] = { m->sender, m->ret, m->envid };

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		if (v[i] && strpbrk(v[i], "\r\n"))
			return 0;
	for (int i = 0; i < m->nrcpt; i++) {
		const struct relay_rcpt *rc = &m->rcpts[i];

		if (!rc->addr || strpbrk(rc->addr, "\r\n") || (rc->notify && strpbrk(rc->notify, "\r\n")) ||
		    (rc->orcpt && strpbrk(rc->orcpt, "\r\n")))
			return 0;
	}
	return 1;
}

/* ---- requests: outcome -------------------------------------------------- */

/* req_set - fill the result for the client. */
void req_set(struct relay_req *r, int code, const char *enh, const char *fmt, ...)
{
	va_list ap;

	r->res.code = code;
	relay_copy_str(r->res.enh, sizeof(r->res.enh), enh);
	va_start(ap, fmt);
	vsnprintf(r->res.text, sizeof(r->res.text), fmt, ap);
	va_end(ap);
}

/* req_who - how a reply to the client names the backend: "" (the backend's
 * address stays in the log: issue 13, internal addresses are not told to
 * the internet), or " 10.1.1.5:25" with relay_reply_show_backend. */
const char *req_who(const struct relay_req *r)
{
	struct relay_req *w = (struct relay_req *)r;

	w->who[0] = '\0';
	if (r->dest && r->msg->conf->relay_reply_show_backend)
		snprintf(w->who, sizeof(w->who), " %s", r->dest->name);
	return w->who;
}

/* relay_class_ok - is a reply of this class due in this state? RFC 5321
 * §4.2.1 / §4.3.2: 354 (3yz) only to DATA, which has no 2yz; 1yz never
 * (no SMTP command here asks for a preliminary reply). Anything else is a
 * backend out of step with the dialogue. */
int relay_class_ok(enum bstate st, int code)
{
	int cls = code / 100;

	if (cls == 4 || cls == 5)
		return 1;
	if (st == B_DATA)
		return cls == 3;
	return cls == 2;
}

/* req_pass_on - the backend's reply, for the client: its code and enhanced
 * code (added when missing), a 421 turned into 451 4.4.2 (421 obliges us
 * to close, which the client must not take as ours, RFC 5321 §3.8). */
void req_pass_on(struct relay_req *r, const struct smtp_reply *rep, const char *said, const char *default_enh)
{
	char enh[16];

	if (rep->code == 421) {
		req_set(r, 451, "4.4.2", "backend%s said: %s", req_who(r), said);
		return;
	}
	if (rep->enh[0] && rep->enh[0] == '0' + rep->code / 100)
		relay_copy_str(enh, sizeof(enh), rep->enh);
	else if (default_enh && default_enh[0] == '0' + rep->code / 100)
		relay_copy_str(enh, sizeof(enh), default_enh);
	else
		snprintf(enh, sizeof(enh), "%d.0.0", rep->code / 100);
	req_set(r, rep->code, enh, "backend%s said: %s", req_who(r), said);
}

/* req_log - one line per delivery attempt outcome. A stream that ends
 * before its final dot was neither sent nor refused: the message is
 * replayed after the dot (whose outcome is the one logged as such), so
 * its "rejected" or "deferred" is logged as "unfinished". */
static void req_log(struct relay_req *r, const char *status, const char *reply)
{
	uint64_t now = ev_now(r->rl->loop);
	const char *was = "";

	if (r->msg->stream && !r->final_sent && (!strcmp(status, "rejected") || !strcmp(status, "deferred"))) {
		was = status;
		status = "unfinished";
	}
	log_info("%s: relay=%s, rcpts=%d, delay=%.3f, attempt=%.3f, status=%s (%s%s%s%s)",
		 r->msg->id ? r->msg->id : "-", r->dest ? r->dest->name : "none", r->msg->nrcpt,
		 (double)(now - r->t_start) / 1000.0, (double)(now - r->t_attempt) / 1000.0, status, was,
		 was[0] ? ": " : "", reply, was[0] ? "; replayed after the final dot" : "");
}

/* req_free - release a finished or cancelled request. */
static void req_free(struct relay_req *r)
{
	struct relay_loop *rl = r->rl;

	ev_defer_cancel(rl->loop, &r->startd);
	ev_defer_cancel(rl->loop, &r->mored);
	ev_timer_stop(rl->loop, &r->waitt);
	dnsmx_cancel(r->mxq);
	dnsmx_list_free(r->mx);
	if (r->waiting) {
		TAILQ_REMOVE(&r->waiting->waiters, r, wlink);
		dest_adjust(r->waiting->dest, rl->loop, -1, 0);
		r->waiting = NULL;
	}
	buf_spare_give(BUF_SPARE_RELAY, r->scratch, 3 * RELAY_CHUNK);
	free(r->xf_buf);
	free(r);
	rl->nreq--;
	rl_maybe_free(rl);
}

/* req_finish - give the result to the session (the connection was already
 * detached or handed on) and free the request. */
void req_finish(struct relay_req *r)
{
	/* The backend that answered last: after a failover, the one that
	 * took (or last refused) the message, not the first that failed. */
	if (r->dest)
		relay_copy_str(r->res.backend, sizeof(r->res.backend), r->dest->name);
	if (r->msg->stream && !r->final_sent) { /* unfinished: the session replays the message */
		r->res.code = 0;
		if (r->release >= 0) /* a refusal is counted by the session */
			stats_inc(r->stream_slow ? ST_stream_ab_slow : ST_stream_ab_backend);
	} else { /* an unfinished stream decided nothing: not observed */
		stats_observe_since(SH_backend, r->t_attempt, ev_now(r->rl->loop));
	}
	r->in_done = 1;
	r->done(r->arg, &r->res);
	req_free(r);
}

/* req_end - the outcome is set: take the connection off (pooled when
 * release, else closed), log the attempt and give the result. */
void req_end(struct relay_req *r, int release, const char *status, const char *reply)
{
	req_detach(r, release);
	req_log(r, status, reply);
	req_finish(r);
}

/* req_fail - finish without a backend's verdict. */
void req_fail(struct relay_req *r, int code, const char *enh, const char *text)
{
	req_set(r, code, enh, "%s", text);
	req_log(r, "deferred", text);
	req_finish(r);
}

/* req_abandon - the message was refused while it was being relayed
 * (relay_release(r, 0)): the transaction is dropped unfinished, by RSET
 * on a connection that has everything it was sent (RFC 3030 §2: RSET
 * clears the chunks sent before LAST; RFC 5321 §4.1.1.5), pooled after
 * its 250; done() gets code 0. */
void req_abandon(struct relay_req *r)
{
	req_set(r, 0, "", "abandoned: the message was refused");
	if (r->msg->stream) { /* inside DATA RSET would be body text: closed */
		req_stream_detach(r);
		req_log(r, "abandoned", "the message was refused during the relay");
		req_finish(r);
		return;
	}
	req_end(r, 1, "abandoned", "the message was refused during the relay");
}

/* req_stream_detach - take a stream's connection off, its transaction
 * unfinished: pooled after RSET where that is clean (nothing sent yet,
 * BDAT chunks all answered, or their replies still due on a PIPELINING
 * backend: RSET goes right after them and their replies are skipped),
 * else closed (inside DATA, or mid-envelope). 1 when kept. */
int req_stream_detach(struct relay_req *r)
{
	struct bconn *b = r->b;

	if (!b)
		return 0;
	int due = r->bdat_sent - r->bdat_acked;
	int pipelined = (b->caps & SMTP_CAP_PIPELINING) != 0;

	if (!r->final_sent && !r->in_data &&
	    (b->state == B_READY ||
	     (r->chunked && (b->state == B_HOLD || b->state == B_BDAT) && (due == 0 || pipelined)))) {
		b->skip = due; /* due > 0: B_BDAT, so the RSET path below */
		req_detach(r, 1);
		return 1;
	}
	req_detach(r, 0);
	return 0;
}

/* req_stream_end - give a stream up before its end (the backend failed or
 * refused it, or slow: the client is too slow): done() gets code 0 and the
 * message is replayed from the spool after the final dot. */
void req_stream_end(struct relay_req *r, int slow)
{
	r->stream_slow = slow;
	req_stream_detach(r);
	req_set(r, 0, "", "stream given up");
	req_log(r, "unfinished",
		slow ? "client too slow for relay_while_receiving; replayed after the final dot"
		     : "stream failed before the end; replayed after the final dot");
	req_finish(r);
}

/* req_detach - take the connection off the request: RSET and pool it
 * (release = 1), or close it. Straight after a 2xx to the final dot the
 * backend has already reset its state (RFC 5321 §4.1.1.4): a request of
 * this loop waiting for a connection gets it at once, without the RSET
 * round trip (which the backend answers slowly when it is busy). */
void req_detach(struct relay_req *r, int release)
{
	struct bconn *b = r->b;

	if (!b)
		return;
	r->b = NULL;
	b->req = NULL;
	ev_timer_stop(r->rl->loop, &b->tmr);
	/* After XCLIENT the backend takes it for this client's connection:
	 * no other client's message may use it. */
	if (!release || b->xclient > 0) {
		bconn_close(b, release);
		return;
	}
	int clean = b->clean && b->state == B_DOT;

	b->clean = 0;
	/* With relay_while_receiving a clean connection is idle at once too,
	 * so that the session's next message, a few round trips later, finds
	 * it for its stream. */
	if (b->state == B_READY ||
	    (clean && (!TAILQ_EMPTY(&b->pool->waiters) || r->msg->conf->relay_while_receiving))) {
		bconn_release_ok(b);
		return;
	}
	/* RFC 5321 §4.1.1.5: a clean slate for the next user. */
	conn_write(b->c, "RSET\r\n", 6);
	bconn_stage(b, B_RSET, (uint64_t)r->msg->conf->relay_timeout);
}

/* ---- backend connections ------------------------------------------------ */

static void bconn_on_connect(void *arg);
static void bconn_move(struct bconn *b, struct ev_loop *to);
static void bconn_move_cb(void *arg);
void bconn_on_read(void *arg);
static void bconn_on_drain(void *arg);
static void bconn_on_error(void *arg, int err);
static void bconn_timeout(void *arg);

static const struct conn_ops bconn_ops = {
	.on_connect = bconn_on_connect,
	.on_read = bconn_on_read,
	.on_drain = bconn_on_drain,
	.on_error = bconn_on_error,
};

/* bconn_stage - enter a state and arm its timer. */
void bconn_stage(struct bconn *b, enum bstate st, uint64_t ms)
{
	b->state = st;
	ev_timer_start(b->pool->rl->loop, &b->tmr, ms, bconn_timeout, b);
}

/* bconn_made - a new connection is set up (or gone): one more may be. */
void bconn_made(struct bconn *b)
{
	b->making = 0;
	atomic_fetch_sub(&b->pool->dest->making, 1);
	dest_wake(b->pool->dest, b->pool->rl);
}

/* bconn_unmove - a connection on its way to another loop is closed instead. */
static void bconn_unmove(struct bconn *b)
{
	ev_defer_cancel(b->pool->rl->loop, &b->mvd);
	dest_arrived(b->pool->dest, b->mv_to);
	b->mv_to = NULL;
	b->state = B_QUIT;
}

/* bconn_yield_done - a connection a stream gave up for a waiter is
 * handed on, or gone: no longer counted as on its way to one. */
static void bconn_yield_done(struct bconn *b)
{
	if (b->yielded) {
		b->yielded = 0;
		atomic_fetch_sub(&b->pool->dest->yielding, 1);
	}
}

/* bconn_free - the connection is gone for good. */
static void bconn_free(struct bconn *b)
{
	struct relay_loop *rl = b->pool->rl;

	bconn_yield_done(b);
	if (b->state == B_MOVE)
		bconn_unmove(b);
	if (b->state == B_IDLE) {
		TAILQ_REMOVE(&b->pool->idle, b, link);
		dest_adjust(b->pool->dest, rl->loop, 0, -1);
	}
	if (b->making) {
		b->making = 0;
		atomic_fetch_sub(&b->pool->dest->making, 1);
	}
	ev_timer_stop(rl->loop, &b->tmr);
	conn_free(b->c);
	slot_release(b);
	free(b);
	rl->nconn--;
	rl_maybe_free(rl);
}

/* bconn_close - stop using a connection: QUIT politely when it is in a
 * known state (RFC 5321 §4.1.1.10), else drop it. The slot is given back
 * when the socket is closed (after the backend's close, for QUIT), so the
 * backend never sees more connections than the limit. */
void bconn_close(struct bconn *b, int quit)
{
	struct relay_loop *rl = b->pool->rl;

	if (b->state == B_MOVE)
		bconn_unmove(b);
	if (b->state == B_IDLE) {
		TAILQ_REMOVE(&b->pool->idle, b, link);
		dest_adjust(b->pool->dest, rl->loop, 0, -1);
	}
	b->req = NULL;
	if (!quit || rl->shutdown) {
		b->state = B_QUIT;
		bconn_free(b);
		return;
	}
	b->state = B_QUIT;
	ev_timer_stop(rl->loop, &b->tmr);
	conn_write(b->c, "QUIT\r\n", 6);
	conn_shutdown(b->c); /* on_error(0) follows and frees */
}

/* bconn_release_ok - a clean connection: to a local waiter, else to
 * another loop where a request waits for one (moved there, not closed and
 * reopened: a new connection can wait long in a busy backend's listen
 * queue), else idle in the pool. */
void bconn_release_ok(struct bconn *b)
{
	struct pool *p = b->pool;
	struct relay_loop *rl = p->rl;
	struct relay_req *w = TAILQ_FIRST(&p->waiters);

	bconn_yield_done(b);
	b->req = NULL;
	b->skip = 0;
	if (w) {
		TAILQ_REMOVE(&p->waiters, w, wlink);
		w->waiting = NULL;
		w->res.waited_ms += ev_now(rl->loop) - w->t_attempt;
		ev_timer_stop(rl->loop, &w->waitt);
		dest_adjust(p->dest, rl->loop, -1, 0);
		w->b = b;
		b->req = w;
		b->state = B_READY;
		w->t_attempt = ev_now(rl->loop);
		txn_start(w);
		return;
	}
	if (rl->shutdown || b->idle_ms == 0) {
		bconn_close(b, 1);
		return;
	}
	struct ev_loop *to = dest_claim(p->dest, rl->loop, NULL);

	if (to) {
		bconn_move(b, to);
		return;
	}
	b->state = B_IDLE;
	TAILQ_INSERT_HEAD(&p->idle, b, link);
	dest_adjust(p->dest, rl->loop, 0, 1);
	ev_timer_start(rl->loop, &b->tmr, b->idle_ms, bconn_timeout, b);
}

static void bconn_arrive(void *arg);

/* bconn_move - send a clean, unattached connection to loop `to` (claimed
 * there with dest_claim), keeping its slot; detached at the end of this
 * iteration, when no conn.c frame is on the stack. */
static void bconn_move(struct bconn *b, struct ev_loop *to)
{
	struct relay_loop *rl = b->pool->rl;

	b->req = NULL;
	b->state = B_MOVE;
	b->mv_to = to;
	ev_timer_stop(rl->loop, &b->tmr);
	ev_defer(rl->loop, &b->mvd, bconn_move_cb, b);
}

/* bconn_move_cb - off this loop and posted to the other; closed instead
 * when it cannot be detached (input arrived, TLS busy) or we stop. */
static void bconn_move_cb(void *arg)
{
	struct bconn *b = arg;
	struct relay_loop *rl = b->pool->rl;

	if (rl->shutdown || conn_detach(b->c) < 0) {
		bconn_close(b, 1);
		return;
	}
	b->mv_dest = b->pool->dest;
	b->pool = NULL;
	rl->nconn--;
	ev_post(b->mv_to, bconn_arrive, b);
	rl_maybe_free(rl);
}

/* bconn_arrive - a moved connection on its new loop: to the waiter there
 * (or idle); closed when this loop stops. */
static void bconn_arrive(void *arg)
{
	struct bconn *b = arg;
	struct relay_dest *d = b->mv_dest;
	struct ev_loop *loop = b->mv_to;
	struct relay_loop *rl = *ev_slot(loop, EV_SLOT_RELAY);

	dest_arrived(d, loop);
	b->mv_to = NULL;
	conn_attach(b->c, loop);
	if (!rl || rl->shutdown) {
		conn_free(b->c);
		free(b);
		atomic_fetch_sub(&d->open, 1);
		dest_wake(d, NULL);
		return;
	}
	b->pool = pool_get(rl, d);
	rl->nconn++;
	b->state = B_READY;
	bconn_release_ok(b);
}

/* bconn_open - a new connection to p->dest for r (r holds a slot). */
static int bconn_open(struct pool *p, struct relay_req *r)
{
	struct relay_loop *rl = p->rl;
	struct bconn *b = xcalloc(1, sizeof(*b));
	uint64_t ms = req_remaining(r, (uint64_t)r->msg->conf->relay_connect_timeout);

	b->pool = p;
	b->slot = 1;
	b->making = 1;
	b->req = r;
	b->state = B_CONNECT;
	rl->nconn++;
	b->c = conn_connect(rl->loop, (struct sockaddr *)&p->dest->sa, p->dest->salen, ms ? ms : 1,
			    &bconn_ops, b);
	if (!b->c) {
		snprintf(r->last_error, sizeof(r->last_error), "backend %s: socket: %s", p->dest->name,
			 strerror(errno));
		snprintf(r->last_why, sizeof(r->last_why), "socket: %s", strerror(errno));
		b->req = NULL;
		bconn_free(b);
		return -1;
	}
	r->b = b;
	return 0;
}

/* bconn_fail - the connection failed (error, EOF, timeout, garbage). */
void bconn_fail(struct bconn *b, const char *why)
{
	struct relay_req *r = b->req;
	char text[400];

	if (!r) {
		bconn_close(b, 0);
		return;
	}
	if (b->state == B_DOT) {
		/* The body is out: whatever happened, never replay it. */
		snprintf(r->res.backend_reply, sizeof(r->res.backend_reply), "%s after end of data", why);
		req_set(r, 451, "4.4.2", "no reply from backend%s after end of data; not retried", req_who(r));
		req_end(r, 0, "deferred", r->res.backend_reply);
		return;
	}
	snprintf(text, sizeof(text), "%s at %s", why, relay_bstate_name[b->state]);
	/* A pooled connection the backend closed while idle shows up as an
	 * error before its first reply: try the same backend again. */
	if (b->ntxn > 1 && !r->msg->stream &&
	    ((b->state == B_MAIL && r->nreplies == 0) || (b->state == B_XFORWARD && r->xf_replies == 0)) &&
	    r->stale < RELAY_STALE_RETRIES) {
		r->stale++;
		req_detach(r, 0);
		log_debug("%s: backend %s: reused connection dead (%s), retrying", r->msg->id, r->dest->name,
			  text);
		req_acquire(r);
		return;
	}
	req_failover(r, text);
}

/* bconn_on_connect - TCP is up: wait for the greeting (RFC 5321 §3.1). */
static void bconn_on_connect(void *arg)
{
	struct bconn *b = arg;
	struct relay_req *r = b->req;

	conn_read_enable(b->c, 1);
	stats_backend_connected(b->pool->dest->name, 1);
	bconn_stage(b, B_GREET, r ? req_remaining(r, (uint64_t)r->msg->conf->relay_connect_timeout) : 1000);
}

/* bconn_on_error - EOF, socket error or connect timeout from conn.c. */
static void bconn_on_error(void *arg, int err)
{
	struct bconn *b = arg;
	char why[128];

	if (b->state == B_QUIT) {
		bconn_free(b);
		return;
	}
	if (err == 0)
		snprintf(why, sizeof(why), "connection closed by backend");
	else if (err == ETIMEDOUT)
		snprintf(why, sizeof(why), "timeout");
	else
		relay_copy_str(why, sizeof(why), strerror(err));
	if (b->state == B_CONNECT)
		stats_backend_connected(b->pool->dest->name, 0);
	bconn_fail(b, why);
}

/* bconn_timeout - stage timer: no reply in time; or the idle timer. */
static void bconn_timeout(void *arg)
{
	struct bconn *b = arg;

	if (b->state == B_IDLE) {
		bconn_close(b, 1);
		return;
	}
	if (b->req && b->req->starved) { /* the client stalled, not the backend */
		req_stream_end(b->req, 1);
		return;
	}
	bconn_fail(b, "timeout");
}

/* bconn_on_drain - output flushed: refill the body window. */
static void bconn_on_drain(void *arg)
{
	struct bconn *b = arg;

	if (b->state == B_BODY && b->req)
		body_fill(b);
	else if (b->state == B_BDAT && b->req)
		bconn_bdat_fill(b);
}

/* ---- requests: routing and waiting -------------------------------------- */

/* req_wait_timeout - no connection came free within relay_pool_wait. */
static void req_wait_timeout(void *arg)
{
	struct relay_req *r = arg;
	char text[300];

	if (r->msg->conf->relay_reply_show_backend)
		snprintf(text, sizeof(text), "no backend connection available (%s)", r->dest->name);
	else
		snprintf(text, sizeof(text), "no backend connection available");
	log_info("%s: backend %s: no connection free within relay_pool_wait", r->msg->id ? r->msg->id : "-",
		 r->dest->name);
	stats_inc(ST_pool_timeouts);
	req_fail(r, 451, "4.4.5", text);
}

/* idle_claim - idle connection b of pool p is r's: out of the idle list
 * and its idle timer. */
static void idle_claim(struct pool *p, struct bconn *b, struct relay_req *r)
{
	TAILQ_REMOVE(&p->idle, b, link);
	dest_adjust(p->dest, p->rl->loop, 0, -1);
	ev_timer_stop(p->rl->loop, &b->tmr);
	b->req = r;
	b->state = B_READY;
	r->b = b;
}

/* idle_take - idle connection b of pool p serves r: claimed, the
 * transaction started. */
static void idle_take(struct pool *p, struct bconn *b, struct relay_req *r)
{
	idle_claim(p, b, r);
	txn_start(r);
}

/* req_acquire - a connection to r->dest: idle, new, or wait for one. */
static void req_acquire(struct relay_req *r)
{
	struct relay_loop *rl = r->rl;
	struct pool *p = pool_get(rl, r->dest);
	struct bconn *b = TAILQ_FIRST(&p->idle);

	atomic_store(&r->dest->limit, (int)r->msg->conf->relay_destination_concurrency_limit);
	r->t_attempt = ev_now(rl->loop);
	if (b) {
		idle_take(p, b, r);
		return;
	}
	if (dest_reserve(r->dest, rl->loop, 0, 1)) {
		if (bconn_open(p, r) < 0)
			req_next_target(r);
		return;
	}
	TAILQ_INSERT_TAIL(&p->waiters, r, wlink);
	r->waiting = p;
	stats_inc(ST_pool_waits);
	ev_timer_start(rl->loop, &r->waitt, req_remaining(r, (uint64_t)r->msg->conf->relay_pool_wait),
		       req_wait_timeout, r);
}

/* pool_kick - slots may be free: serve this pool's waiters in order, then
 * pass any slot left on to other loops. */
static void pool_kick(void *arg)
{
	struct pool *p = arg;
	struct relay_loop *rl = p->rl;
	struct relay_req *w;

	while ((w = TAILQ_FIRST(&p->waiters)) != NULL) {
		struct bconn *b = TAILQ_FIRST(&p->idle);

		if (!b && !dest_reserve(p->dest, rl->loop, 1, 0))
			break;
		TAILQ_REMOVE(&p->waiters, w, wlink);
		w->waiting = NULL;
		ev_timer_stop(rl->loop, &w->waitt);
		dest_adjust(p->dest, rl->loop, -1, 0);
		if (b) {
			w->t_attempt = ev_now(rl->loop);
			idle_take(p, b, w);
			continue;
		}
		if (bconn_open(p, w) < 0)
			req_next_target(w);
	}
	dest_wake(p->dest, rl);
}

/* dest_post_cb - on the loop asked by another loop: shed or serve. */
static void dest_post_cb(void *arg)
{
	struct dest_post *dp = arg;
	struct relay_loop *rl = *ev_slot(dp->loop, EV_SLOT_RELAY);
	struct pool *p;

	if (!rl || rl->shutdown) {
		free(dp);
		return;
	}
	p = pool_find(rl, dp->dest);
	if (p && dp->shed) {
		struct bconn *b = TAILQ_LAST(&p->idle, bconn_list);

		if (b && dest_claim(dp->dest, rl->loop, dp->to)) {
			TAILQ_REMOVE(&p->idle, b, link);
			dest_adjust(p->dest, rl->loop, 0, -1);
			bconn_move(b, dp->to);
		}
	} else if (p) {
		pool_kick(p);
	} else if (!dp->shed) {
		dest_wake(dp->dest, NULL);
	}
	free(dp);
}

/* req_capmiss - the backend lacks an extension the message needs (RFC 6531
 * §3.4: no SMTPUTF8 downgrade; RFC 6152 §3: 8-bit content only with
 * 8BITMIME): its connection is clean, so it goes back to the pool, and the
 * next backend is tried; refused only when none can take it. */
void req_capmiss(struct relay_req *r, unsigned need)
{
	const char *what = need & SMTP_CAP_SMTPUTF8 ? "SMTPUTF8" : "8BITMIME";
	char why[100];

	r->capmiss |= need;
	snprintf(why, sizeof(why), "backend does not support %s; trying the next backend", what);
	req_log(r, "skipped", why);
	req_detach(r, 1);
	req_next_target(r);
}

/* req_capmiss_final - every backend reached lacked what the message needs. */
static void req_capmiss_final(struct relay_req *r)
{
	char why[100];

	if (r->capmiss & SMTP_CAP_SMTPUTF8)
		req_set(r, 553, "5.6.7", "SMTPUTF8 message, and no backend supports SMTPUTF8");
	else
		req_set(r, 554, "5.6.3", "8-bit message, and no backend supports 8BITMIME");
	snprintf(why, sizeof(why), "no backend supports %s",
		 r->capmiss & SMTP_CAP_SMTPUTF8 ? "SMTPUTF8" : "8BITMIME");
	relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), why);
	req_log(r, "rejected", why);
	req_finish(r);
}

/* req_failover - this backend failed before accepting the body: log, close,
 * and replay to the next one (DESIGN.md "Data integrity rules"). */
void req_failover(struct relay_req *r, const char *why)
{
	snprintf(r->last_error, sizeof(r->last_error), "backend %s: %s", r->dest->name, why);
	relay_copy_str(r->last_why, sizeof(r->last_why), why);
	relay_copy_str(r->res.backend, sizeof(r->res.backend), r->dest->name);
	relay_copy_str(r->res.backend_reply, sizeof(r->res.backend_reply), why);
	req_log(r, "failover", why);
	req_detach(r, 0);
	req_next_target(r);
}

static void req_mx_done(void *arg, struct dnsmx_list *mx);

/* req_next_target - move to the next usable backend (the next address of
 * a host-name backend first), or give up. */
static void req_next_target(struct relay_req *r)
{
	const struct conf_list *l = r->msg->backends;

	if (r->release < 0) { /* refused meanwhile: no other backend needs it */
		req_abandon(r);
		return;
	}
	if (r->msg->stream && r->target >= 0) { /* no failover: replayed later */
		req_stream_end(r, 0);
		return;
	}
	for (;;) {
		const char *why = NULL;
		const char *t = NULL;
		char host[256];
		int port;

		if (r->mx && r->mxi < r->mx->n) {
			t = r->mx->v[r->mxi++];
		} else {
			dnsmx_list_free(r->mx);
			r->mx = NULL;
			r->target++;
		}
		const char *last = r->msg->conf->relay_reply_show_backend ? r->last_error : r->last_why;

		if (ev_now(r->rl->loop) >= r->msg->deadline) {
			char text[400];

			snprintf(text, sizeof(text), "time limit reached%s%s", last[0] ? "; " : "", last);
			req_fail(r, 451, "4.4.1", text);
			return;
		}
		if (!t && (!l || r->target >= l->n)) {
			char text[400];

			if (r->capmiss && !r->last_error[0]) {
				req_capmiss_final(r);
				return;
			}
			if (!l || l->n == 0)
				snprintf(text, sizeof(text), "no backend configured");
			else
				snprintf(text, sizeof(text), "no backend accepted the message: %s",
					 last[0] ? last : "none usable");
			req_fail(r, 451, "4.4.1", text);
			return;
		}
		if (!t) {
			t = l->v[r->target];
			const char *nh = relay_target_nexthop(t, &why);
			int bracket = nh && bracket_host(nh, host, sizeof(host), &port) == 0;
			if (nh &&
			    (bracket ||
			     (nh[0] != '[' && dnsmx_target_host(nh, host, sizeof(host), &port) == 0))) {
				r->mxq = dnsmx_resolve(r->rl->loop, r->msg->conf, host, port, !bracket,
						       req_mx_done, r);
				return;
			}
		}
		r->dest = dest_get(t, &why);
		if (r->dest) {
			r->stale = 0;
			req_acquire(r);
			return;
		}
		snprintf(r->last_error, sizeof(r->last_error), "backend %s: %s", t, why);
		snprintf(r->last_why, sizeof(r->last_why), "backend not usable: %s", why);
		log_warn("%s: skipping backend %s: %s", r->msg->id, t, why);
	}
}

/* req_mx_done - a host-name backend's addresses, in MX order: try them,
 * or note why there are none and go on with the next entry. */
static void req_mx_done(void *arg, struct dnsmx_list *mx)
{
	struct relay_req *r = arg;

	r->mxq = NULL;
	if (mx->why[0] && mx->n == 0) {
		const char *colon = strstr(mx->why, ": ");

		snprintf(r->last_error, sizeof(r->last_error), "backend %.280s", mx->why);
		snprintf(r->last_why, sizeof(r->last_why), "backend host: %.280s", colon ? colon + 2 : mx->why);
		log_warn("%s: skipping backend %s", r->msg->id, mx->why);
	}
	r->mx = mx;
	r->mxi = 0;
	req_next_target(r);
}

/* req_start - deferred start, so done() never runs inside relay_send(). */
static void req_start(void *arg)
{
	struct relay_req *r = arg;

	if (!envelope_clean(r->msg)) {
		req_fail(r, 501, "5.5.4", "invalid envelope");
		return;
	}
	if (r->msg->nrcpt <= 0) {
		req_fail(r, 503, "5.5.1", "no valid recipients");
		return;
	}
	req_next_target(r);
}

/* ---- public interface --------------------------------------------------- */

/* req_new - a request of this loop's relay. */
static struct relay_req *req_new(struct relay_loop *rl, struct relay_msg *msg, relay_done_fn *done, void *arg)
{
	struct relay_req *r = xcalloc(1, sizeof(*r));

	r->rl = rl;
	r->msg = msg;
	r->done = done;
	r->arg = arg;
	r->target = -1;
	r->has8bit = -1;
	r->t_start = r->t_attempt = ev_now(rl->loop);
	rl->nreq++;
	return r;
}

/* relay_send - start delivery; done() runs later, exactly once. */
struct relay_req *relay_send(struct ev_loop *loop, struct relay_msg *msg, relay_done_fn *done, void *arg)
{
	struct relay_loop *rl = rl_get(loop);
	struct relay_req *r = req_new(rl, msg, done, arg);

	ev_defer(loop, &r->startd, req_start, r);
	return r;
}

/* dest_unwaited - no loop has a request waiting for a connection to d. */
static int dest_unwaited(struct relay_dest *d)
{
	pthread_mutex_lock(&d->mu);
	int waiting = dest_waiting(d);
	pthread_mutex_unlock(&d->mu);
	return waiting == 0;
}

/* relay_dest_unserved - see relay_int.h. */
int relay_dest_unserved(struct relay_dest *d)
{
	pthread_mutex_lock(&d->mu);
	int n =
	    atomic_load(&d->open) < atomic_load(&d->limit) ? 0 : dest_waiting(d) - atomic_load(&d->yielding);
	pthread_mutex_unlock(&d->mu);
	return n > 0 ? n : 0;
}

/* stream_begin - deferred, so done() never runs inside relay_stream(). */
static void stream_begin(void *arg)
{
	struct relay_req *r = arg;

	txn_start(r);
}

/* relay_stream - see relay.h. */
struct relay_req *relay_stream(struct ev_loop *loop, struct relay_msg *msg, relay_done_fn *done, void *arg)
{
	struct relay_loop *rl = rl_get(loop);
	const struct conf_list *l = msg->backends;
	const char *why = NULL;
	struct relay_dest *d;
	struct pool *p;
	struct bconn *b;

	if (rl->shutdown || !l || l->n == 0 || msg->nrcpt <= 0 || !envelope_clean(msg))
		return NULL;
	struct sockaddr_storage ss;
	socklen_t sl;
	char name[INET6_ADDRSTRLEN + 16];

	/* Addresses only: a host name would have to be looked up first. */
	if (target_parse(l->v[0], &ss, &sl, name, sizeof(name), &why) < 0 || !(d = dest_get(l->v[0], &why)))
		return NULL;
	if (!(p = pool_find(rl, d)) || !(b = TAILQ_FIRST(&p->idle)) || !dest_unwaited(d))
		return NULL;
	struct relay_req *r = req_new(rl, msg, done, arg);

	r->target = 0;
	r->dest = d;
	idle_claim(p, b, r);
	ev_defer(loop, &r->startd, stream_begin, r);
	return r;
}

/* stream_kick - more body, or the verdict, for a stream: go on where it
 * waits. */
static void stream_kick(void *arg)
{
	struct relay_req *r = arg;
	struct bconn *b = r->b;

	if (!b)
		return;
	if (b->state == B_HOLD)
		req_hold_point(r);
	else if (b->state == B_BDAT)
		bconn_bdat_fill(b);
	else if (b->state == B_BODY)
		body_fill(b);
}

/* relay_stream_more - see relay.h. */
void relay_stream_more(struct relay_req *r)
{
	if (r && !r->in_done)
		ev_defer(r->rl->loop, &r->mored, stream_kick, r);
}

/* relay_stream_drop - see relay.h. */
int relay_stream_drop(struct relay_req *r)
{
	if (!r || r->in_done)
		return 0;
	int kept = req_stream_detach(r);

	req_log(r, "abandoned",
		kept ? "the message was not completed; the connection was reset"
		     : "the message was not completed; the connection was closed");
	req_free(r);
	return kept;
}

/* req_release_cb - relay_release()'s verdict, applied from the loop: at
 * once when the request waits at its hold point, or when it holds no
 * connection and is refused; else when it reaches the hold point. */
static void req_release_cb(void *arg)
{
	struct relay_req *r = arg;

	if (r->b && r->b->state == B_HOLD)
		req_hold_point(r);
	else if (!r->b && r->release < 0)
		req_abandon(r);
}

/* relay_release - see relay.h. */
void relay_release(struct relay_req *r, int go)
{
	if (!r || r->in_done || r->release)
		return;
	r->release = go ? 1 : -1;
	if (r->msg->stream)
		ev_defer(r->rl->loop, &r->mored, stream_kick, r);
	else
		ev_defer(r->rl->loop, &r->startd, req_release_cb, r);
}

/* relay_cancel - the session is gone: abandon the request. */
void relay_cancel(struct relay_req *r)
{
	if (!r || r->in_done)
		return;
	if (r->b) {
		/* Mid-transaction or mid-setup: the state is unknown to a
		 * future user, so the connection is closed, not pooled. */
		req_detach(r, 0);
	}
	req_free(r);
}

/* relay_loop_shutdown - close this loop's idle pooled connections. */
void relay_loop_shutdown(struct ev_loop *loop)
{
	struct relay_loop *rl = *ev_slot(loop, EV_SLOT_RELAY);

	if (!rl)
		return;
	rl->shutdown = 1;
	for (struct pool *p = rl->pools; p; p = p->next) {
		ev_defer_cancel(loop, &p->kick);
		while (!TAILQ_EMPTY(&p->idle)) {
			rl->nreq++; /* keep rl alive while closing */
			bconn_close(TAILQ_FIRST(&p->idle), 0);
			rl->nreq--;
		}
	}
	rl_maybe_free(rl);
}

/* ---- callouts ------------------------------------------------------------ */

struct relay_verify {
	struct relay_msg msg;
	struct relay_rcpt rc;
	struct conf_list backends;
	char *addr;
	char *id;
	struct relay_req *req;
	relay_verify_fn *done;
	void *arg;
};

/* verify_free - a finished or cancelled callout. */
static void verify_free(struct relay_verify *v)
{
	for (int i = 0; i < v->backends.n; i++)
		free(v->backends.v[i]);
	free(v->backends.v);
	free(v->addr);
	free(v->id);
	free(v);
}

/* verify_done - the relay's outcome, as the RCPT reply or 0. */
static void verify_done(void *arg, const struct relay_result *res)
{
	struct relay_verify *v = arg;
	int code = v->rc.code;
	char why[600];

	if (code >= 200 && code < 600) {
		v->done(v->arg, code, v->rc.reply);
	} else {
		snprintf(why, sizeof(why), "%d %s %s", res->code, res->enh, res->text);
		v->done(v->arg, 0, why);
	}
	verify_free(v);
}

/* relay_verify - see relay.h. */
struct relay_verify *relay_verify(struct ev_loop *loop, const struct conf_list *backends, const char *rcpt,
				  const struct conf *conf, const char *id, relay_verify_fn *done, void *arg)
{
	struct relay_verify *v = xcalloc(1, sizeof(*v));

	v->backends.n = backends->n;
	v->backends.v = xcalloc((size_t)backends->n + 1, sizeof(char *));
	for (int i = 0; i < backends->n; i++)
		v->backends.v[i] = xstrdup(backends->v[i]);
	v->addr = xstrdup(rcpt);
	v->id = xstrdup(id ? id : "callout");
	v->done = done;
	v->arg = arg;
	v->rc.addr = v->addr;
	v->msg.id = v->id;
	v->msg.sender = "";
	v->msg.nrcpt = 1;
	v->msg.rcpts = &v->rc;
	v->msg.backends = &v->backends;
	v->msg.conf = conf;
	v->msg.verify_only = 1;
	v->msg.deadline = ev_now(loop) + (uint64_t)conf->relay_connect_timeout + (uint64_t)conf->relay_timeout;
	v->req = relay_send(loop, &v->msg, verify_done, v);
	return v;
}

/* relay_verify_cancel - the session is gone: abandon the callout. */
void relay_verify_cancel(struct relay_verify *v)
{
	if (!v)
		return;
	relay_cancel(v->req);
	verify_free(v);
}
