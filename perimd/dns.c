/*
 * dns.c - c-ares driven by the event loop, the cache in front of it, and
 * coalescing of identical lookups (see dns.h).
 *
 * Invariants:
 * - One struct dns_loop per io loop (EV_SLOT_DNS), touched by that thread
 *   only. Its channel's sockets are watched through the sock-state
 *   callback (one ev_io each, allocated singly so epoll's pointers stay
 *   valid) and its timeouts through one ev_timer re-armed from
 *   ares_timeout() after every call into c-ares. ares_process_fd() runs
 *   only on readiness or that timer: nothing blocks the loop.
 * - A flight is one question sent to the servers for (type, name); every
 *   lookup for the same key made while it is in flight waits on it instead
 *   of sending another, on this loop directly and from other loops
 *   through the process-wide table of questions out (flights_out, one mutex,
 *   taken only on cache misses): another loop makes a follower flight,
 *   which sends nothing and is ended by the owner posting the result to
 *   its loop (ev_post), so waiters are still told on their own thread. A flight ends once, when c-ares
 *   answers or its deadline (dns_timeout x (dns_retries + 1), bounding
 *   c-ares's exponential back-off) passes; c-ares may still call back
 *   after the deadline, and only then is the flight freed.
 * - A waiter (struct dns_query) is told through its own ev_defer, so
 *   done() never runs inside dns_lookup() or inside c-ares; dns_cancel()
 *   unlinks it wherever it is.
 */
#include "dns.h"
#include "conf.h"
#include "dnscache.h"
#include "ev.h"
#include "log.h"
#include "stats.h"

#include <ares.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLIGHT_BUCKETS 256

struct dns_loop;

struct sockw {
	struct sockw *next;
	struct dns_loop *dl;
	struct ev_io io;
};

struct flight {
	struct flight *hnext;
	struct dns_loop *dl;
	struct dns_query *waiters;
	struct ev_timer deadline;
	int ended; /* waiters told; c-ares may still answer */
	/* cross-loop coalescing, under out_mu (flights_out) */
	struct flight *onext;            /* in flights_out[]: the owner of a question */
	struct flight *followers;        /* owner: flights of other loops waiting */
	struct flight *fnext;            /* follower: next in the owner's list */
	struct flight *owner;            /* follower: whose list, until posted to */
	int follower;                    /* sends nothing; freed when posted to */
	int registered;                  /* owner: in flights_out[] */
	const struct dns_result *posted; /* follower: the owner's result */
	char key[];
};

/* The questions out in the whole process, by key bucket: owner flights. */
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static struct flight *flights_out[FLIGHT_BUCKETS];

struct dns_query {
	struct dns_query *next, *prev; /* in the flight's waiters */
	struct dns_loop *dl;
	struct flight *fl; /* NULL once the result is known */
	const struct dns_result *res;
	struct ev_defer tell;
	dns_done_fn *done;
	void *arg;
};

struct dns_loop {
	struct ev_loop *loop;
	ares_channel ch;
	int have_ch;
	char *servers; /* settings the channel was made with */
	long long timeout, retries;
	int inflight; /* c-ares queries outstanding */
	struct sockw *socks;
	struct ev_timer tmr;
	struct flight *flights[FLIGHT_BUCKETS];
};

/* ---- results ------------------------------------------------------------- */

/* dns_result_ref - one more holder. */
void dns_result_ref(const struct dns_result *r)
{
	__atomic_add_fetch(&((struct dns_result *)r)->refs, 1, __ATOMIC_RELAXED);
}

/* dns_result_unref - one holder fewer; the last frees it. */
void dns_result_unref(const struct dns_result *r)
{
	if (r && __atomic_sub_fetch(&((struct dns_result *)r)->refs, 1, __ATOMIC_ACQ_REL) == 0)
		free((void *)r);
}

/* dns_result_new - a result without records. */
struct dns_result *dns_result_new(enum dns_status st, uint32_t ttl)
{
	struct dns_result *r = xcalloc(1, sizeof *r);
	r->refs = 1;
	r->status = st;
	r->ttl = ttl;
	return r;
}

/* ---- the pure parts: names and messages ---------------------------------- */

/* dns_cache_key - "TYPE:name", lower case, without a trailing dot. */
void dns_cache_key(const char *name, enum dns_type type, char *out, size_t outlen)
{
	int n = snprintf(out, outlen, "%d:", (int)type);
	size_t i = n > 0 ? (size_t)n : 0;
	for (; *name && i + 1 < outlen; name++)
		out[i++] = (char)tolower((unsigned char)*name);
	if (i > 0 && out[i - 1] == '.' && (i < 2 || out[i - 2] != ':'))
		i--;
	if (outlen)
		out[i < outlen ? i : outlen - 1] = 0;
}

/* utf8_next - the code point at *p (well-formed UTF-8, RFC 3629), moving
 * *p past it; -1 when malformed. */
static long utf8_next(const unsigned char **p, const unsigned char *end)
{
	const unsigned char *s = *p;
	unsigned c = s[0];
	int n = c < 0x80             ? 0
	    : c >= 0xc2 && c <= 0xdf ? 1
	    : c >= 0xe0 && c <= 0xef ? 2
	    : c >= 0xf0 && c <= 0xf4 ? 3
				     : -1;
	if (n < 0 || end - s <= n)
		return -1;
	long cp = n ? c & (0x3f >> n) : c;
	for (int i = 1; i <= n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return -1;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	static const long min[] = { 0, 0x80, 0x800, 0x10000 };
	if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*p = s + n + 1;
	return cp;
}

/* puny_adapt - RFC 3492 §6.1 bias adaptation. */
static unsigned long puny_adapt(unsigned long delta, unsigned long points, int first)
{
	unsigned long k = 0;
	delta = first ? delta / 700 : delta / 2;
	delta += delta / points;
	while (delta > (36 - 1) * 26 / 2) {
		delta /= 36 - 1;
		k += 36;
	}
	return k + (36 - 1 + 1) * delta / (delta + 38);
}

/* puny_label - "xn--" and the RFC 3492 §6.3 encoding of one label's code
 * points into out; its length, or -1 past 63 octets (RFC 1035 §2.3.4). */
static int puny_label(const long *cp, int n, char *out)
{
	int o = 0, h, b;
	memcpy(out, "xn--", 4);
	o = 4;
	for (int i = 0; i < n; i++) {
		if (cp[i] >= 0x80)
			continue;
		if (o >= 63)
			return -1;
		out[o++] = (char)tolower((int)cp[i]);
	}
	h = b = o - 4;
	if (b > 0) {
		if (o >= 63)
			return -1;
		out[o++] = '-';
	}
	unsigned long nn = 0x80, delta = 0, bias = 72;
	while (h < n) {
		unsigned long m = 0x110000;
		for (int i = 0; i < n; i++)
			if ((unsigned long)cp[i] >= nn && (unsigned long)cp[i] < m)
				m = (unsigned long)cp[i];
		delta += (m - nn) * (unsigned long)(h + 1);
		nn = m;
		for (int i = 0; i < n; i++) {
			if ((unsigned long)cp[i] < nn)
				delta++;
			if ((unsigned long)cp[i] != nn)
				continue;
			unsigned long q = delta;
			for (unsigned long k = 36;; k += 36) {
				unsigned long t = k <= bias ? 1 : k >= bias + 26 ? 26 : k - bias;
				if (q < t)
					break;
				unsigned long d = t + (q - t) % (36 - t);
				if (o >= 63)
					return -1;
				out[o++] = (char)(d < 26 ? 'a' + d : '0' + d - 26);
				q = (q - t) / (36 - t);
			}
			if (o >= 63)
				return -1;
			out[o++] = (char)(q < 26 ? 'a' + q : '0' + q - 26);
			bias = puny_adapt(delta, (unsigned long)h + 1, h == b);
			delta = 0;
			h++;
		}
		delta++;
		nn++;
	}
	return o;
}

/* dns_name_to_ascii - see dns.h. */
int dns_name_to_ascii(const char *name, char *out, size_t outlen)
{
	const unsigned char *p = (const unsigned char *)name, *end = p + strlen(name);
	size_t o = 0;
	while (p < end) {
		const unsigned char *dot = memchr(p, '.', (size_t)(end - p));
		const unsigned char *le = dot ? dot : end;
		long cp[64];
		int n = 0, ascii = 1;
		char label[64];
		int ll;
		for (const unsigned char *q = p; q < le;) {
			long c = utf8_next(&q, le);
			if (c < 0 || n == 63)
				return -1;
			ascii &= c < 0x80;
			cp[n++] = c;
		}
		if (ascii) {
			ll = (int)(le - p);
			if (ll > 63)
				return -1;
			memcpy(label, p, (size_t)ll);
		} else if ((ll = puny_label(cp, n, label)) < 0) {
			return -1;
		}
		if (o + (size_t)ll + 2 > outlen)
			return -1;
		memcpy(out + o, label, (size_t)ll);
		o += (size_t)ll;
		if (dot)
			out[o++] = '.';
		p = dot ? dot + 1 : end;
	}
	if (o >= outlen)
		return -1;
	out[o] = 0;
	return 0;
}

/* dns_reverse_name - RFC 1035 §3.5 / RFC 3596 §2.5 reverse names. */
int dns_reverse_name(const char *addr, const char *zone, char *out, size_t outlen)
{
	unsigned char b[16];
	int n;
	if (inet_pton(AF_INET, addr, b) == 1) {
		n = snprintf(out, outlen, "%u.%u.%u.%u.%s", b[3], b[2], b[1], b[0],
			     zone ? zone : "in-addr.arpa");
	} else if (inet_pton(AF_INET6, addr, b) == 1) {
		static const char hex[] = "0123456789abcdef";
		char tmp[80];
		size_t j = 0;
		for (int i = 15; i >= 0; i--) {
			tmp[j++] = hex[b[i] & 15];
			tmp[j++] = '.';
			tmp[j++] = hex[b[i] >> 4];
			tmp[j++] = '.';
		}
		tmp[j] = 0;
		n = snprintf(out, outlen, "%s%s", tmp, zone ? zone : "ip6.arpa");
	} else {
		return -1;
	}
	return n > 0 && (size_t)n < outlen ? 0 : -1;
}

/* get16 / get32 - big-endian reads. */
static unsigned get16(const unsigned char *p)
{
	return (unsigned)p[0] << 8 | p[1];
}
static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* name_read - the (possibly compressed, RFC 1035 §4.1.4) name at *off:
 * text into out (lower case, dot separated, "" for the root) unless out
 * is NULL; *off moves past it. -1 when malformed. */
static int name_read(const unsigned char *m, size_t len, size_t *off, char *out, size_t outlen)
{
	size_t p = *off, o = 0;
	int jumped = 0, hops = 0;
	for (;;) {
		if (p >= len)
			return -1;
		unsigned l = m[p];
		if ((l & 0xc0) == 0xc0) {
			if (p + 1 >= len || ++hops > 64)
				return -1;
			if (!jumped)
				*off = p + 2;
			jumped = 1;
			p = (l & 0x3f) << 8 | m[p + 1];
			continue;
		}
		if (l & 0xc0)
			return -1;
		p++;
		if (l == 0)
			break;
		if (p + l > len || o + l + 2 > 256)
			return -1;
		if (out) {
			if (o + l + 2 > outlen)
				return -1;
			if (o)
				out[o++] = '.';
			/* A NUL or a dot inside a label has no text form:
			 * '?' (a name no host has), never a shorter or
			 * another name. */
			for (unsigned i = 0; i < l; i++)
				out[o++] = m[p + i] && m[p + i] != '.' ? (char)tolower(m[p + i]) : '?';
		} else {
			o += l + 1;
		}
		p += l;
	}
	if (!jumped)
		*off = p;
	if (out)
		out[o] = 0;
	return 0;
}

/* The CNAME records of an answer, for cname_loop. */
#define DNS_MAX_CNAME 16
struct cnames {
	char from[DNS_MAX_CNAME][256], to[DNS_MAX_CNAME][256];
	int n, over;
};

/* cname_loop - does the chain of CNAMEs from qname come back on itself
 * (or run longer than the answer can hold)? RFC 1034 §3.6.2: a loop is
 * an error, which resolvers answer with SERVFAIL; an answer that has one
 * and no record is a failure, not "no such record". */
static int cname_loop(const struct cnames *cn, const char *qname)
{
	const char *cur = qname;
	if (cn->over)
		return 1;
	for (int hops = 0; hops <= cn->n; hops++) {
		int i = 0;
		while (i < cn->n && strcmp(cn->from[i], cur))
			i++;
		if (i == cn->n)
			return 0; /* the chain ends: nothing at its end */
		cur = cn->to[i];
	}
	return 1;
}

/* dns_parse_response - see dns.h. */
int dns_parse_response(const unsigned char *m, size_t len, enum dns_type type, struct dns_result **out)
{
	char names[DNS_MAX_RR][256], qname[256] = "";
	unsigned prefs[DNS_MAX_RR];
	struct cnames cn;
	int n = 0;
	cn.n = cn.over = 0;
	uint32_t ttl = UINT32_MAX, negttl = 0;
	int have_soa = 0;
	if (len < 12)
		return -1;
	unsigned rcode = m[3] & 15, qd = get16(m + 4), an = get16(m + 6), ns = get16(m + 8);
	if (!(m[2] & 0x80))
		return -1; /* not a response */
	size_t off = 12;
	for (unsigned i = 0; i < qd; i++) {
		if (name_read(m, len, &off, i ? NULL : qname, sizeof qname) < 0 || off + 4 > len)
			return -1;
		off += 4;
	}
	for (unsigned i = 0; i < an + ns; i++) {
		int answer = i < an;
		char owner[256];
		if (name_read(m, len, &off, owner, sizeof owner) < 0 || off + 10 > len)
			return -1;
		unsigned t = get16(m + off), cls = get16(m + off + 2);
		uint32_t rttl = get32(m + off + 4);
		unsigned rdlen = get16(m + off + 8);
		off += 10;
		if (off + rdlen > len)
			return -1;
		size_t rd = off, end = off + rdlen;
		off = end;
		if (rttl > 0x7fffffff) /* RFC 2181 §8 */
			rttl = 0;
		if (cls != 1)
			continue;
		if (!answer) {
			if (t == 6) { /* SOA: MNAME RNAME SERIAL REFRESH RETRY EXPIRE MINIMUM */
				size_t p = rd;
				if (name_read(m, end, &p, NULL, 0) < 0 ||
				    name_read(m, end, &p, NULL, 0) < 0 || p + 20 > end)
					return -1;
				uint32_t mn = get32(m + p + 16);
				negttl = mn < rttl ? mn : rttl;
				have_soa = 1;
			}
			continue;
		}
		if (t == 5) { /* CNAME: its TTL bounds the answer's */
			if (rttl < ttl)
				ttl = rttl;
			size_t p = rd;
			if (cn.n == DNS_MAX_CNAME) {
				cn.over = 1;
			} else {
				if (name_read(m, len, &p, cn.to[cn.n], sizeof cn.to[0]) < 0 || p > end)
					return -1;
				memcpy(cn.from[cn.n++], owner, sizeof owner);
			}
			continue;
		}
		if (t != (unsigned)type || n == DNS_MAX_RR)
			continue;
		prefs[n] = 0;
		if (type == DNS_T_A || type == DNS_T_AAAA) {
			unsigned want = type == DNS_T_A ? 4 : 16;
			if (rdlen != want)
				return -1;
			if (!inet_ntop(type == DNS_T_A ? AF_INET : AF_INET6, m + rd, names[n], sizeof names[n]))
				return -1;
		} else {
			size_t p = rd;
			if (type == DNS_T_MX) {
				if (rdlen < 3)
					return -1;
				prefs[n] = get16(m + rd);
				p += 2;
			}
			if (name_read(m, len, &p, names[n], sizeof names[n]) < 0 || p > end)
				return -1;
		}
		if (rttl < ttl)
			ttl = rttl;
		n++;
	}
	struct dns_result *r;
	if (rcode == 0 && n == 0 && cn.n && cname_loop(&cn, qname)) {
		r = dns_result_new(DNS_TEMPFAIL, 0);
	} else if (rcode == 3 || (rcode == 0 && n == 0)) {
		r = dns_result_new(rcode == 3 ? DNS_NXDOMAIN : DNS_NODATA, have_soa ? negttl : 0);
	} else if (rcode != 0) {
		r = dns_result_new(DNS_TEMPFAIL, 0);
	} else {
		size_t strs = 0;
		for (int i = 0; i < n; i++)
			strs += strlen(names[i]) + 1;
		r = xcalloc(1, sizeof *r + (size_t)n * sizeof r->rr[0] + strs);
		r->refs = 1;
		r->status = DNS_OK;
		r->ttl = ttl;
		r->n = n;
		char *s = (char *)&r->rr[n];
		for (int i = 0; i < n; i++) {
			size_t l = strlen(names[i]) + 1;
			memcpy(s, names[i], l);
			r->rr[i].data = s;
			r->rr[i].pref = prefs[i];
			s += l;
		}
	}
	*out = r;
	return 0;
}

/* ---- the loop's channel ---------------------------------------------------- */

static void dl_arm(struct dns_loop *dl);

/* on_sock - a c-ares socket is ready. */
static void on_sock(void *arg, unsigned events)
{
	struct sockw *w = arg;
	struct dns_loop *dl = w->dl;
	int fd = w->io.fd;
	ares_process_fd(dl->ch, (events & EV_READ) ? fd : ARES_SOCKET_BAD,
			(events & EV_WRITE) ? fd : ARES_SOCKET_BAD);
	dl_arm(dl);
}

/* on_timeout - c-ares's next timeout came: let it retry or give up. */
static void on_timeout(void *arg)
{
	struct dns_loop *dl = arg;
	ares_process_fd(dl->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
	dl_arm(dl);
}

/* dl_arm - re-arm the timer from c-ares's idea of its next timeout. */
static void dl_arm(struct dns_loop *dl)
{
	struct timeval tv, *tvp;
	if (!dl->have_ch || dl->inflight == 0) {
		ev_timer_stop(dl->loop, &dl->tmr);
		return;
	}
	tvp = ares_timeout(dl->ch, NULL, &tv);
	if (!tvp) {
		ev_timer_stop(dl->loop, &dl->tmr);
		return;
	}
	uint64_t ms = (uint64_t)tvp->tv_sec * 1000 + ((uint64_t)tvp->tv_usec + 999) / 1000;
	ev_timer_start(dl->loop, &dl->tmr, ms ? ms : 1, on_timeout, dl);
}

/* sock_state - c-ares opens, changes or closes a socket (it calls this
 * with 0, 0 before close()). */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
	struct dns_loop *dl = data;
	struct sockw **pp = &dl->socks;
	while (*pp && (*pp)->io.fd != fd)
		pp = &(*pp)->next;
	unsigned ev = (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0);
	if (!ev) {
		struct sockw *w = *pp;
		if (w) {
			ev_io_stop(dl->loop, &w->io);
			*pp = w->next;
			free(w);
		}
		return;
	}
	if (!*pp) {
		struct sockw *w = xcalloc(1, sizeof *w);
		w->dl = dl;
		ev_io_init(&w->io, fd, on_sock, w);
		w->next = dl->socks;
		dl->socks = w;
		pp = &dl->socks;
	}
	ev_io_set(dl->loop, &(*pp)->io, ev);
}

/* servers_csv - "127.0.0.1:5353, [::1]:53" into c-ares's CSV form. */
static char *servers_csv(const struct conf_list *l)
{
	size_t len = 1;
	for (int i = 0; i < l->n; i++)
		len += strlen(l->v[i]) + 1;
	char *s = xcalloc(1, len);
	for (int i = 0; i < l->n; i++) {
		if (i)
			strcat(s, ",");
		strcat(s, l->v[i]);
	}
	return s;
}

static pthread_once_t ares_once = PTHREAD_ONCE_INIT;

/* ares_init_once - c-ares's global init (not thread-safe itself). */
static void ares_init_once(void)
{
	ares_library_init(ARES_LIB_INIT_ALL);
}

/* channel_open - a channel with c's settings; -1 on failure. */
static int channel_open(struct dns_loop *dl, const struct conf *c)
{
	pthread_once(&ares_once, ares_init_once);
	struct ares_options o;
	memset(&o, 0, sizeof o);
	o.sock_state_cb = sock_state;
	o.sock_state_cb_data = dl;
	o.timeout = (int)c->dns_timeout;
	o.tries = (int)c->dns_retries + 1;
	int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
	int rc = ares_init_options(&dl->ch, &o, mask);
	if (rc != ARES_SUCCESS) {
		log_err("dns: cannot start the resolver: %s", ares_strerror(rc));
		return -1;
	}
	char *csv = servers_csv(&c->dns_servers);
	if (*csv && (rc = ares_set_servers_ports_csv(dl->ch, csv)) != ARES_SUCCESS) {
		log_err("dns: dns_servers = %s: %s", csv, ares_strerror(rc));
		ares_destroy(dl->ch);
		free(csv);
		return -1;
	}
	dl->have_ch = 1;
	dnscache_servers(csv);
	free(dl->servers);
	dl->servers = csv;
	dl->timeout = c->dns_timeout;
	dl->retries = c->dns_retries;
	return 0;
}

/* dl_get - this loop's state, its channel matching c (a changed
 * configuration gets a new channel once the old one is idle). */
static struct dns_loop *dl_get(struct ev_loop *loop, const struct conf *c)
{
	void **slot = ev_slot(loop, EV_SLOT_DNS);
	struct dns_loop *dl = *slot;
	if (!dl) {
		dl = xcalloc(1, sizeof *dl);
		dl->loop = loop;
		*slot = dl;
	}
	if (dl->have_ch && dl->inflight == 0) {
		char *csv = servers_csv(&c->dns_servers);
		int same = !strcmp(csv, dl->servers) && dl->timeout == c->dns_timeout &&
		    dl->retries == c->dns_retries;
		free(csv);
		if (!same) {
			ares_destroy(dl->ch);
			dl->have_ch = 0;
		}
	}
	if (!dl->have_ch)
		channel_open(dl, c);
	return dl;
}

/* ---- flights and waiters --------------------------------------------------- */

/* key_bucket - hash of a cache key into the loop's flight table. */
static unsigned key_bucket(const char *k)
{
	unsigned h = 5381;
	for (; *k; k++)
		h = h * 33 + (unsigned char)*k;
	return h % FLIGHT_BUCKETS;
}

/* tell - deliver a waiter's result (its own deferred call). */
static void tell(void *arg)
{
	struct dns_query *q = arg;
	const struct dns_result *r = q->res;
	dns_done_fn *done = q->done;
	void *a = q->arg;
	free(q);
	done(a, r);
	dns_result_unref(r);
}

/* flight_unlink - take fl out of the loop's table. */
static void flight_unlink(struct flight *fl)
{
	struct flight **pp = &fl->dl->flights[key_bucket(fl->key)];
	while (*pp && *pp != fl)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = fl->hnext;
}

static void follower_posted(void *arg);

/* out_release - an owner's question is answered (or given up): out of the
 * process-wide table, and res posted to every follower's loop. */
static void out_release(struct flight *fl, const struct dns_result *res)
{
	pthread_mutex_lock(&out_mu);
	struct flight *f = NULL;
	if (fl->registered) {
		struct flight **pp = &flights_out[key_bucket(fl->key)];
		while (*pp && *pp != fl)
			pp = &(*pp)->onext;
		if (*pp)
			*pp = fl->onext;
		fl->registered = 0;
		f = fl->followers;
		fl->followers = NULL;
		for (struct flight *x = f; x; x = x->fnext)
			x->owner = NULL;
	}
	pthread_mutex_unlock(&out_mu);
	while (f) {
		struct flight *next = f->fnext;
		dns_result_ref(res);
		f->posted = res;
		ev_post(f->dl->loop, follower_posted, f);
		f = next;
	}
}

/* flight_end - give res to every waiter; the key is no longer in flight. */
static void flight_end(struct flight *fl, const struct dns_result *res)
{
	fl->ended = 1;
	flight_unlink(fl);
	if (!fl->follower)
		out_release(fl, res);
	ev_timer_stop(fl->dl->loop, &fl->deadline);
	while (fl->waiters) {
		struct dns_query *q = fl->waiters;
		fl->waiters = q->next;
		q->next = q->prev = NULL;
		q->fl = NULL;
		q->res = res;
		dns_result_ref(res);
		ev_defer(q->dl->loop, &q->tell, tell, q);
	}
}

/* flight_expired - the lookup took dns_timeout x (dns_retries + 1). */
static void flight_expired(void *arg)
{
	struct flight *fl = arg;
	stats_inc(ST_dns_timeouts);
	struct dns_result *r = dns_result_new(DNS_TEMPFAIL, 0);
	flight_end(fl, r);
	dns_result_unref(r);
}

/* follower_posted - on the follower's loop: the owner's result. A follower
 * whose own deadline already ended it is only freed. */
static void follower_posted(void *arg)
{
	struct flight *fl = arg;
	const struct dns_result *r = fl->posted;
	if (!fl->ended)
		flight_end(fl, r);
	dns_result_unref(r);
	free(fl);
}

/* ares_done - c-ares's answer (or failure) for a flight. */
static void ares_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
	struct flight *fl = arg;
	struct dns_result *r = NULL;
	(void)timeouts;
	fl->dl->inflight--;
	int type = atoi(fl->key);
	if ((status == ARES_SUCCESS || status == ARES_ENOTFOUND || status == ARES_ENODATA) && abuf &&
	    dns_parse_response(abuf, (size_t)alen, (enum dns_type)type, &r) == 0) {
		if (r->status == DNS_TEMPFAIL)
			stats_inc(ST_dns_failures);
		dnscache_put(fl->key, r);
	} else {
		if (status == ARES_ETIMEOUT)
			stats_inc(ST_dns_timeouts);
		else if (status != ARES_EDESTRUCTION && status != ARES_ECANCELLED)
			stats_inc(ST_dns_failures);
		if (status == ARES_SUCCESS || status == ARES_ENOTFOUND || status == ARES_ENODATA)
			log_warn("dns: malformed answer for %s", fl->key);
		r = dns_result_new(DNS_TEMPFAIL, 0);
	}
	if (!fl->ended)
		flight_end(fl, r);
	dns_result_unref(r);
	free(fl);
}

/* dns_lookup - cached, joined, or sent. */
struct dns_query *dns_lookup(struct ev_loop *loop, const struct conf *c, const char *name, enum dns_type type,
			     dns_done_fn *done, void *arg)
{
	char key[300];
	struct dns_query *q = xcalloc(1, sizeof *q);
	q->done = done;
	q->arg = arg;
	dnscache_configure(c->dns_cache_size, c->dns_cache_min_ttl, c->dns_cache_max_ttl);
	struct dns_loop *dl = dl_get(loop, c);
	q->dl = dl;
	dns_cache_key(name, type, key, sizeof key);
	const struct dns_result *r = dnscache_get(key);
	if (r || !dl->have_ch || strlen(name) > 253) {
		q->res = r ? r : dns_result_new(DNS_TEMPFAIL, 0);
		ev_defer(loop, &q->tell, tell, q);
		return q;
	}
	unsigned b = key_bucket(key);
	struct flight *fl = dl->flights[b];
	while (fl && strcmp(fl->key, key))
		fl = fl->hnext;
	if (!fl) {
		size_t kl = strlen(key);
		fl = xcalloc(1, sizeof *fl + kl + 1);
		memcpy(fl->key, key, kl + 1);
		fl->dl = dl;
		fl->hnext = dl->flights[b];
		dl->flights[b] = fl;
		ev_timer_start(loop, &fl->deadline, (uint64_t)(c->dns_timeout * (c->dns_retries + 1)),
			       flight_expired, fl);
		fl->waiters = q;
		q->fl = fl;
		/* Out already from another loop: follow it. Else own it. */
		pthread_mutex_lock(&out_mu);
		struct flight *o = flights_out[b];
		while (o && strcmp(o->key, key))
			o = o->onext;
		if (o) {
			fl->follower = 1;
			fl->owner = o;
			fl->fnext = o->followers;
			o->followers = fl;
		} else {
			fl->registered = 1;
			fl->onext = flights_out[b];
			flights_out[b] = fl;
		}
		pthread_mutex_unlock(&out_mu);
		if (fl->follower) {
			stats_inc(ST_dns_joined);
			return q;
		}
		stats_inc(ST_dns_queries);
		dl->inflight++;
		/* May call ares_done() at once (bad name, no servers): the
		 * waiter is then told through its deferred call all the same. */
		ares_query(dl->ch, strchr(key, ':') + 1, 1 /* C_IN */, (int)type, ares_done, fl);
		dl_arm(dl);
		return q;
	}
	stats_inc(ST_dns_joined);
	q->fl = fl;
	q->next = fl->waiters;
	if (fl->waiters)
		fl->waiters->prev = q;
	fl->waiters = q;
	return q;
}

/* dns_cancel - forget the waiter. */
void dns_cancel(struct dns_query *q)
{
	if (!q)
		return;
	if (q->fl) {
		if (q->prev)
			q->prev->next = q->next;
		else
			q->fl->waiters = q->next;
		if (q->next)
			q->next->prev = q->prev;
	} else {
		ev_defer_cancel(q->dl->loop, &q->tell);
		dns_result_unref(q->res);
	}
	free(q);
}

/* dns_loop_shutdown - destroy the channel; c-ares calls back every
 * outstanding query with ARES_EDESTRUCTION, which frees the flights. */
void dns_loop_shutdown(struct ev_loop *loop)
{
	void **slot = ev_slot(loop, EV_SLOT_DNS);
	struct dns_loop *dl = *slot;
	if (!dl)
		return;
	if (dl->have_ch)
		ares_destroy(dl->ch);
	dl->have_ch = 0;
	/* Followers still on an owner's list: off it, so nothing is posted
	 * here any more, and freed (one already posted to is freed when that
	 * post runs, if this loop runs again). */
	for (int b = 0; b < FLIGHT_BUCKETS; b++) {
		struct flight **pp = &dl->flights[b];
		while (*pp) {
			struct flight *fl = *pp;
			int drop = 0;
			if (fl->follower) {
				pthread_mutex_lock(&out_mu);
				if (fl->owner) {
					struct flight **fp = &fl->owner->followers;
					while (*fp && *fp != fl)
						fp = &(*fp)->fnext;
					if (*fp)
						*fp = fl->fnext;
					fl->owner = NULL;
					drop = 1;
				}
				pthread_mutex_unlock(&out_mu);
			}
			if (!drop) {
				pp = &fl->hnext;
				continue;
			}
			*pp = fl->hnext;
			ev_timer_stop(loop, &fl->deadline);
			while (fl->waiters) {
				struct dns_query *q = fl->waiters;
				fl->waiters = q->next;
				q->fl = NULL;
				q->res = dns_result_new(DNS_TEMPFAIL, 0);
				ev_defer(loop, &q->tell, tell, q);
			}
			free(fl);
		}
	}
	ev_timer_stop(loop, &dl->tmr);
	while (dl->socks) {
		struct sockw *w = dl->socks;
		dl->socks = w->next;
		ev_io_stop(loop, &w->io);
		free(w);
	}
	free(dl->servers);
	free(dl);
	*slot = NULL;
}

/* dns_conf_check - can c-ares take dns_servers? */
int dns_conf_check(const struct conf *c, char *err, size_t errlen)
{
	ares_channel ch;
	struct ares_options o;
	memset(&o, 0, sizeof o);
	if (c->dns_servers.n == 0)
		return 0;
	pthread_once(&ares_once, ares_init_once);
	/* No resolv.conf reading needed for a syntax check. */
	o.nservers = 0;
	if (ares_init_options(&ch, &o, ARES_OPT_SERVERS) != ARES_SUCCESS) {
		snprintf(err, errlen, "dns: cannot start the resolver");
		return -1;
	}
	char *csv = servers_csv(&c->dns_servers);
	int rc = ares_set_servers_ports_csv(ch, csv);
	ares_destroy(ch);
	if (rc != ARES_SUCCESS) {
		snprintf(err, errlen, "dns_servers: %s: %s (write address or address:port, [IPv6]:port)", csv,
			 ares_strerror(rc));
		free(csv);
		return -1;
	}
	free(csv);
	return 0;
}
