/*
 * test_dnscache.c - the DNS cache (TTL expiry on a fake clock, clamping,
 * negative caching, LRU, threads), the DNS message parser (whole, every
 * truncation, compression loops), reverse names, DNSBL reply filters, and
 * the resolver on a real loop against a fake server on loopback:
 * coalescing of identical lookups, cancellation, the timeout path, and
 * coalescing across two loops on two threads.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf.h"
#include "dns.h"
#include "dnscache.h"
#include "dnscheck.h"
#include "ev.h"
#include "t.h"

static uint64_t fake_ms;
static uint64_t fake_clock(void) { return fake_ms; }

/* ---- building DNS messages ---------------------------------------------- */

struct msg {
	unsigned char b[1024];
	size_t n;
};

static void put8(struct msg *m, unsigned v) { m->b[m->n++] = (unsigned char)v; }
static void put16(struct msg *m, unsigned v) { put8(m, v >> 8); put8(m, v & 255); }
static void put32(struct msg *m, uint32_t v) { put16(m, v >> 16); put16(m, v & 0xffff); }

/* putname - uncompressed name ("" = root). */
static void putname(struct msg *m, const char *name)
{
	while (*name) {
		const char *dot = strchr(name, '.');
		size_t l = dot ? (size_t)(dot - name) : strlen(name);
		put8(m, (unsigned)l);
		memcpy(m->b + m->n, name, l);
		m->n += l;
		name += l + (dot ? 1 : 0);
	}
	put8(m, 0);
}

/* header - a response header with the question qname/qtype. */
static void header(struct msg *m, unsigned rcode, unsigned an, unsigned ns, const char *qname,
		   unsigned qtype)
{
	m->n = 0;
	put16(m, 0x1234);
	put16(m, 0x8180 | rcode);
	put16(m, 1);
	put16(m, an);
	put16(m, ns);
	put16(m, 0);
	putname(m, qname);
	put16(m, qtype);
	put16(m, 1);
}

/* rr - a record header owned by the question name (pointer to offset 12). */
static void rr(struct msg *m, unsigned type, uint32_t ttl, unsigned rdlen)
{
	put16(m, 0xc00c);
	put16(m, type);
	put16(m, 1);
	put32(m, ttl);
	put16(m, rdlen);
}

/* truncations_safe - every prefix of a message parses or fails cleanly. */
static int truncations_safe(const struct msg *m, enum dns_type t)
{
	for (size_t l = 0; l < m->n; l++) {
		unsigned char *copy = malloc(l ? l : 1);
		memcpy(copy, m->b, l);
		struct dns_result *r = NULL;
		int rc = dns_parse_response(copy, l, t, &r);
		free(copy);
		if (rc == 0) {
			dns_result_unref(r);
			return 0;    /* a cut message must never look whole */
		}
	}
	return 1;
}

TEST(test_parse_a)
{
	struct msg m;
	header(&m, 0, 2, 0, "mail.example.com", 1);
	rr(&m, 1, 300, 4);
	put32(&m, 0xc0000201);
	rr(&m, 1, 120, 4);
	put32(&m, 0xc0000202);
	struct dns_result *r;
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_A, &r), 0);
	CHECK_INT(r->status, DNS_OK);
	CHECK_INT(r->n, 2);
	CHECK_INT(r->ttl, 120);
	CHECK_STR(r->rr[0].data, "192.0.2.1");
	CHECK_STR(r->rr[1].data, "192.0.2.2");
	dns_result_unref(r);
	CHECK(truncations_safe(&m, DNS_T_A));
}

TEST(test_parse_mx_nullmx_ptr_aaaa)
{
	struct msg m;
	header(&m, 0, 2, 0, "Example.COM", 15);
	rr(&m, 15, 3600, 2 + 7);
	put16(&m, 20);
	put8(&m, 4);
	memcpy(m.b + m.n, "mail", 4);
	m.n += 4;
	put16(&m, 0xc00c);    /* mail.example.com, compressed */
	rr(&m, 15, 3600, 2 + 2);
	put16(&m, 10);
	put16(&m, 0xc00c);
	struct dns_result *r;
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_MX, &r), 0);
	CHECK_INT(r->n, 2);
	CHECK_INT(r->rr[0].pref, 20);
	CHECK_STR(r->rr[0].data, "mail.example.com");
	CHECK_INT(r->rr[1].pref, 10);
	CHECK_STR(r->rr[1].data, "example.com");
	dns_result_unref(r);
	CHECK(truncations_safe(&m, DNS_T_MX));

	header(&m, 0, 1, 0, "nullmx.example", 15);  /* RFC 7505: MX 0 "." */
	rr(&m, 15, 60, 3);
	put16(&m, 0);
	put8(&m, 0);
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_MX, &r), 0);
	CHECK_INT(r->n, 1);
	CHECK_INT(r->rr[0].pref, 0);
	CHECK_STR(r->rr[0].data, "");
	dns_result_unref(r);

	header(&m, 0, 1, 0, "1.2.0.192.in-addr.arpa", 12);
	rr(&m, 12, 60, 18);
	putname(&m, "host.example.net");
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_PTR, &r), 0);
	CHECK_STR(r->rr[0].data, "host.example.net");
	dns_result_unref(r);
	CHECK(truncations_safe(&m, DNS_T_PTR));

	header(&m, 0, 1, 0, "v6.example", 28);
	rr(&m, 28, 60, 16);
	unsigned char a6[16];
	inet_pton(AF_INET6, "2001:db8::25", a6);
	memcpy(m.b + m.n, a6, 16);
	m.n += 16;
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_AAAA, &r), 0);
	CHECK_STR(r->rr[0].data, "2001:db8::25");
	dns_result_unref(r);
	/* A record of the wrong length for its type: malformed. */
	header(&m, 0, 1, 0, "v6.example", 28);
	rr(&m, 28, 60, 4);
	put32(&m, 1);
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_AAAA, &r), -1);
}

TEST(test_parse_negative)
{
	struct msg m;
	/* NXDOMAIN with an SOA: TTL = min(SOA TTL, MINIMUM) (RFC 2308 §5). */
	header(&m, 3, 0, 1, "nope.example", 1);
	put16(&m, 0xc011);     /* "example" inside the question */
	put16(&m, 6);
	put16(&m, 1);
	put32(&m, 900);
	size_t lenpos = m.n;
	put16(&m, 0);
	size_t start = m.n;
	putname(&m, "ns.example");
	putname(&m, "admin.example");
	put32(&m, 1);
	put32(&m, 2);
	put32(&m, 3);
	put32(&m, 4);
	put32(&m, 600);
	m.b[lenpos] = (unsigned char)((m.n - start) >> 8);
	m.b[lenpos + 1] = (unsigned char)((m.n - start) & 255);
	struct dns_result *r;
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_A, &r), 0);
	CHECK_INT(r->status, DNS_NXDOMAIN);
	CHECK_INT(r->ttl, 600);
	dns_result_unref(r);
	CHECK(truncations_safe(&m, DNS_T_A));

	/* NODATA: the name has only another type; no SOA: TTL 0. */
	header(&m, 0, 1, 0, "only-a.example", 15);
	rr(&m, 1, 60, 4);
	put32(&m, 0x7f000001);
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_MX, &r), 0);
	CHECK_INT(r->status, DNS_NODATA);
	CHECK_INT(r->ttl, 0);
	dns_result_unref(r);

	header(&m, 2, 0, 0, "fail.example", 1);  /* SERVFAIL */
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_A, &r), 0);
	CHECK_INT(r->status, DNS_TEMPFAIL);
	dns_result_unref(r);

	/* A compression pointer to itself never ends: refused. */
	header(&m, 0, 1, 0, "loop.example", 12);
	rr(&m, 12, 60, 2);
	put16(&m, 0xc000 | (unsigned)m.n);
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_PTR, &r), -1);
	/* A query (QR = 0) is not an answer. */
	header(&m, 0, 0, 0, "q.example", 1);
	m.b[2] &= 0x7f;
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_A, &r), -1);
}

/* cname - a CNAME record owned by `owner` (uncompressed) naming target. */
static void cname(struct msg *m, const char *owner, const char *target)
{
	putname(m, owner);
	put16(m, 5);
	put16(m, 1);
	put32(m, 60);
	put16(m, (unsigned)strlen(target) + 2);
	putname(m, target);
}

/* test_parse_cname_loop - a CNAME chain that loops without a record is a
 * failure (TEMPFAIL, as a resolver's SERVFAIL), not NODATA; a chain that
 * ends at a name without the record is NODATA; a chain with the record
 * is the record. */
TEST(test_parse_cname_loop)
{
	struct msg m;
	struct dns_result *r;
	header(&m, 0, 2, 0, "loop.example", 15);
	cname(&m, "loop.example", "b.example");
	cname(&m, "B.example", "loop.example");
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_MX, &r), 0);
	CHECK_INT(r->status, DNS_TEMPFAIL);
	dns_result_unref(r);
	CHECK(truncations_safe(&m, DNS_T_MX));
	header(&m, 0, 1, 0, "self.example", 1);
	cname(&m, "self.example", "self.example");
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_A, &r), 0);
	CHECK_INT(r->status, DNS_TEMPFAIL);
	dns_result_unref(r);
	header(&m, 0, 2, 0, "chain.example", 1);
	cname(&m, "chain.example", "b.example");
	cname(&m, "b.example", "c.example");
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_A, &r), 0);
	CHECK_INT(r->status, DNS_NODATA);
	dns_result_unref(r);
	header(&m, 0, 2, 0, "chain.example", 1);
	cname(&m, "chain.example", "b.example");
	putname(&m, "b.example");
	put16(&m, 1);
	put16(&m, 1);
	put32(&m, 60);
	put16(&m, 4);
	put32(&m, 0xc0000207);
	CHECK_INT(dns_parse_response(m.b, m.n, DNS_T_A, &r), 0);
	CHECK_INT(r->status, DNS_OK);
	CHECK_STR(r->rr[0].data, "192.0.2.7");
	dns_result_unref(r);
}

/* test_name_to_ascii - U-labels into A-labels (RFC 3492 Punycode; the
 * expected forms are those of Python's punycode codec), ASCII labels
 * untouched, bad UTF-8 and labels past 63 octets refused. */
TEST(test_name_to_ascii)
{
	char out[256];
	CHECK_INT(dns_name_to_ascii("b\xc3\xbc" "cher.example", out, sizeof out), 0);
	CHECK_STR(out, "xn--bcher-kva.example");
	CHECK_INT(dns_name_to_ascii("m\xc3\xbc" "nchen.de", out, sizeof out), 0);
	CHECK_STR(out, "xn--mnchen-3ya.de");
	CHECK_INT(dns_name_to_ascii("mail.\xe4\xbe\x8b\xe3\x81\x88.\xe3\x83\x86\xe3\x82\xb9\xe3\x83\x88", out, sizeof out), 0);
	CHECK_STR(out, "mail.xn--r8jz45g.xn--zckzah");
	CHECK_INT(dns_name_to_ascii("\xce\xb4\xce\xbf\xce\xba\xce\xb9\xce\xbc\xce\xae.gr", out, sizeof out), 0);
	CHECK_STR(out, "xn--jxalpdlp.gr");
	CHECK_INT(dns_name_to_ascii("\xf0\x9f\x98\x80.ws", out, sizeof out), 0);
	CHECK_STR(out, "xn--e28h.ws");
	CHECK_INT(dns_name_to_ascii("a\xc3\xa9.example", out, sizeof out), 0);
	CHECK_STR(out, "xn--a-bga.example");
	CHECK_INT(dns_name_to_ascii("Plain.Example.COM", out, sizeof out), 0);
	CHECK_STR(out, "Plain.Example.COM");
	CHECK_INT(dns_name_to_ascii("bad\xc3(.example", out, sizeof out), -1);
	CHECK_INT(dns_name_to_ascii("over\xc0\xaf.example", out, sizeof out), -1);
	/* 8 and 30 scattered CJK ideographs: A-labels of 31 and 97 octets. */
	CHECK_INT(dns_name_to_ascii("\xe4\xb8\x80\xe6\xb3\xaf\xe8\xaf\x9e\xe5\xb2\xad\xe7\xae\x9c"
				    "\xe9\xaa\x8b\xe6\xad\x9a\xe8\xa9\x89.cn",
				    out, sizeof out),
		  0);
	CHECK_STR(out, "xn--4gqr17ab6kiqb008adeu5qc2w8b.cn");
	const char *big = "\xe4\xb8\x80\xe6\xb3\xaf\xe8\xaf\x9e\xe5\xb2\xad\xe7\xae\x9c\xe9\xaa\x8b\xe6\xad\x9a"
			  "\xe8\xa9\x89\xe5\xac\x98\xe7\xa8\x87\xe9\xa3\xb6\xe6\xa7\x85\xe8\xa2\xb4\xe5\xa6\x83"
			  "\xe7\xa1\xb2\xe9\x9d\xa1\xe6\xa0\xb0\xe8\x9c\x9f\xe5\x9f\xae\xe7\x9b\x9d\xe9\x97\x8c"
			  "\xe6\x9a\x9b\xe8\x96\x8a\xe5\x99\x99\xe7\x95\x88\xe9\x90\xb7\xe6\x94\x86\xe8\x8f\xb5"
			  "\xe5\x93\x84\xe7\x8e\xb3.cn";
	CHECK_INT(dns_name_to_ascii(big, out, sizeof out), -1);
	CHECK_INT(dns_name_to_ascii("b\xc3\xbc" "cher.example", out, 10), -1);
	/* 62 ASCII letters and one other: the basic code points alone
	 * overflow the A-label (the fuzzer's find: a write past its end). */
	char basic[80];
	memset(basic, 'a', 62);
	memcpy(basic + 62, "\xc3\xbc", 3);
	CHECK_INT(dns_name_to_ascii(basic, out, sizeof out), -1);
}

TEST(test_reverse_names)
{
	char out[300];
	CHECK_INT(dns_reverse_name("192.0.2.1", NULL, out, sizeof out), 0);
	CHECK_STR(out, "1.2.0.192.in-addr.arpa");
	CHECK_INT(dns_reverse_name("127.0.0.2", "bl.example", out, sizeof out), 0);
	CHECK_STR(out, "2.0.0.127.bl.example");
	CHECK_INT(dns_reverse_name("2001:db8::1", NULL, out, sizeof out), 0);
	CHECK_STR(out, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
	CHECK_INT(dns_reverse_name("not an address", NULL, out, sizeof out), -1);
	CHECK_INT(dns_reverse_name("192.0.2.1", NULL, out, 10), -1);
	char key[300];
	dns_cache_key("Mail.Example.COM.", DNS_T_MX, key, sizeof key);
	CHECK_STR(key, "15:mail.example.com");
}

TEST(test_dnsbl_filters)
{
	struct dnsbl_site s;
	const char *why;
	CHECK_INT(dnsbl_site_parse("zen.example.net=127.0.0.[2..11]*2", &s, &why), 0);
	CHECK_STR(s.zone, "zen.example.net");
	CHECK_INT(s.weight, 2);
	CHECK(dnsbl_site_match(&s, "127.0.0.2"));
	CHECK(dnsbl_site_match(&s, "127.0.0.11"));
	CHECK(!dnsbl_site_match(&s, "127.0.0.12"));
	CHECK(!dnsbl_site_match(&s, "127.255.255.254"));
	CHECK_INT(dnsbl_site_parse("bl.example.org", &s, &why), 0);
	CHECK_INT(s.weight, 1);
	CHECK(dnsbl_site_match(&s, "127.0.0.4"));
	CHECK(!dnsbl_site_match(&s, "127.255.255.254"));   /* the lists' error codes */
	CHECK(!dnsbl_site_match(&s, "10.0.0.1"));
	CHECK_INT(dnsbl_site_parse("l.example=127.0.[0;1].[2;4;8]", &s, &why), 0);
	CHECK(dnsbl_site_match(&s, "127.0.1.4"));
	CHECK(!dnsbl_site_match(&s, "127.0.1.3"));
	CHECK_INT(dnsbl_site_parse("w.example*-3", &s, &why), 0);
	CHECK_INT(s.weight, -3);
	const char *bad[] = { "", "=127.0.0.2", "x.example=127.0.0", "x.example=127.0.0.256",
			      "x.example=127.0.0.[5..2]", "x.example=127.0.0.[2..", "x.example*",
			      "x.example*2x", "bad zone", "x.example=127.0.0.2.", "x.example=a.b.c.d" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (dnsbl_site_parse(bad[i], &s, &why) == 0) {
			fprintf(stderr, "accepted: %s\n", bad[i]);
			CHECK(0);
		}
	}
}

/* ---- the cache ------------------------------------------------------------ */

/* result_a - a positive A answer with ttl. */
static struct dns_result *result_a(uint32_t ttl)
{
	struct msg m;
	header(&m, 0, 1, 0, "x.example", 1);
	rr(&m, 1, ttl, 4);
	put32(&m, 0xc0000201);
	struct dns_result *r = NULL;
	dns_parse_response(m.b, m.n, DNS_T_A, &r);
	return r;
}

TEST(test_cache_ttl)
{
	dnscache_set_clock(fake_clock);
	dnscache_configure(1000, 30000, 86400000);
	dnscache_flush();
	fake_ms = 1000000;
	struct dns_result *r = result_a(3600);
	dnscache_put("1:a.example", r);
	dns_result_unref(r);
	const struct dns_result *g = dnscache_get("1:a.example");
	CHECK(g != NULL);
	if (g) {
		CHECK_STR(g->rr[0].data, "192.0.2.1");
		dns_result_unref(g);
	}
	fake_ms += 3599 * 1000;
	g = dnscache_get("1:a.example");
	CHECK(g != NULL);
	dns_result_unref(g);
	fake_ms += 1000;             /* the TTL is over */
	CHECK(dnscache_get("1:a.example") == NULL);
	CHECK_INT(dnscache_count(), 0);

	/* A 5 s TTL is kept for dns_cache_min_ttl (30 s); a week for max. */
	r = result_a(5);
	dnscache_put("1:short.example", r);
	dns_result_unref(r);
	fake_ms += 29 * 1000;
	g = dnscache_get("1:short.example");
	CHECK(g != NULL);
	dns_result_unref(g);
	fake_ms += 1000;
	CHECK(dnscache_get("1:short.example") == NULL);
	dnscache_configure(1000, 30000, 60000);
	r = result_a(604800);
	dnscache_put("1:long.example", r);
	dns_result_unref(r);
	fake_ms += 60 * 1000;
	CHECK(dnscache_get("1:long.example") == NULL);

	/* A re-put replaces the answer and its expiry, one entry, the old
	 * answer given back (a leak would fail the sanitizer's exit check). */
	dnscache_configure(1000, 30000, 86400000);
	r = result_a(60);
	dnscache_put("1:again.example", r);
	dns_result_unref(r);
	fake_ms += 50 * 1000;
	size_t n = dnscache_count();
	r = result_a(60);
	dnscache_put("1:again.example", r);
	CHECK_INT(dnscache_count(), n);
	fake_ms += 50 * 1000; /* past the first answer's TTL, not the second's */
	g = dnscache_get("1:again.example");
	CHECK(g == r);
	if (g)
		dns_result_unref(g);
	dns_result_unref(r);

	/* A temporary failure is never cached. */
	r = dns_result_new(DNS_TEMPFAIL, 0);
	dnscache_put("1:fail.example", r);
	dns_result_unref(r);
	CHECK(dnscache_get("1:fail.example") == NULL);
	dnscache_configure(1000, 30000, 86400000);
	dnscache_set_clock(NULL);
}

TEST(test_cache_negative)
{
	dnscache_set_clock(fake_clock);
	dnscache_configure(1000, 1000, 86400000);
	dnscache_flush();
	fake_ms = 5000000;
	/* NXDOMAIN with SOA minimum 600 s: kept 600 s. */
	struct dns_result *r = dns_result_new(DNS_NXDOMAIN, 600);
	dnscache_put("15:nx.example", r);
	dns_result_unref(r);
	fake_ms += 599 * 1000;
	const struct dns_result *g = dnscache_get("15:nx.example");
	CHECK(g != NULL && g->status == DNS_NXDOMAIN && g->n == 0);
	dns_result_unref(g);
	fake_ms += 1000;
	CHECK(dnscache_get("15:nx.example") == NULL);
	/* NODATA without an SOA: the minimum TTL. */
	r = dns_result_new(DNS_NODATA, 0);
	dnscache_put("15:nodata.example", r);
	dns_result_unref(r);
	g = dnscache_get("15:nodata.example");
	CHECK(g != NULL && g->status == DNS_NODATA);
	dns_result_unref(g);
	fake_ms += 1000;
	CHECK(dnscache_get("15:nodata.example") == NULL);
	dnscache_set_clock(NULL);
	dnscache_configure(1000, 30000, 86400000);
}

TEST(test_cache_lru)
{
	/* 64 shards x 2 entries: keys of one shard evict by recency. */
	dnscache_configure(128, 30000, 86400000);
	dnscache_flush();
	char keys[3][64];
	int found = 0, shard = -1;
	for (int i = 0; found < 3 && i < 100000; i++) {
		char k[64];
		snprintf(k, sizeof k, "1:h%d.example", i);
		if (shard < 0)
			shard = dnscache_shard(k);
		if (dnscache_shard(k) == shard)
			snprintf(keys[found++], sizeof keys[0], "%s", k);
	}
	CHECK_INT(found, 3);
	struct dns_result *r = result_a(3600);
	dnscache_put(keys[0], r);
	dnscache_put(keys[1], r);
	const struct dns_result *g = dnscache_get(keys[0]);   /* keys[0] now most recent */
	CHECK(g != NULL);
	dns_result_unref(g);
	dnscache_put(keys[2], r);                             /* evicts keys[1] */
	g = dnscache_get(keys[0]);
	CHECK(g != NULL);
	dns_result_unref(g);
	CHECK(dnscache_get(keys[1]) == NULL);
	g = dnscache_get(keys[2]);
	CHECK(g != NULL);
	dns_result_unref(g);
	/* The bound holds over many keys. */
	for (int i = 0; i < 5000; i++) {
		char k[64];
		snprintf(k, sizeof k, "1:bulk%d.example", i);
		dnscache_put(k, r);
	}
	CHECK(dnscache_count() <= 128);
	CHECK(dnscache_count() >= 64);
	dns_result_unref(r);
	/* Size 0: nothing is kept. */
	dnscache_configure(0, 30000, 86400000);
	dnscache_flush();
	r = result_a(3600);
	dnscache_put("1:none.example", r);
	dns_result_unref(r);
	CHECK(dnscache_get("1:none.example") == NULL);
	dnscache_configure(100000, 30000, 86400000);
}

/* cache_hammer - a thread of gets and puts over shared keys. */
static void *cache_hammer(void *arg)
{
	struct dns_result *r = arg;
	for (int i = 0; i < 20000; i++) {
		char k[64];
		snprintf(k, sizeof k, "1:t%d.example", i % 500);
		const struct dns_result *g = dnscache_get(k);
		if (g)
			dns_result_unref(g);
		else
			dnscache_put(k, r);
	}
	return NULL;
}

TEST(test_cache_threads)
{
	dnscache_configure(256, 30000, 86400000);
	dnscache_flush();
	struct dns_result *r = result_a(3600);
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, cache_hammer, r);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	CHECK(dnscache_count() <= 256);
	dnscache_flush();
	CHECK_INT(r->refs, 1);   /* every reference the cache took was given back */
	dns_result_unref(r);
	dnscache_configure(100000, 30000, 86400000);
}

/* ---- the resolver on a loop, against a fake server -------------------------- */

struct fake {
	struct ev_loop *loop;
	struct ev_io io;
	int fd, port, queries, answered;
	int results, tempfails;
	char last[64];
};

/* udp_server - a UDP socket on 127.0.0.1, a port of the kernel's
 * choosing in *port; flags such as SOCK_NONBLOCK. */
static int udp_server(int flags, int *port)
{
	int fd = socket(AF_INET, SOCK_DGRAM | flags, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	CHECK_INT(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	socklen_t sl = sizeof sa;
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	*port = ntohs(sa.sin_port);
	return fd;
}

/* resolver_conf - the defaults with dns_servers = that port, dns_timeout
 * and dns_retries; NULL (the reason printed) if it does not load. */
static struct conf *resolver_conf(int port, const char *timeout, int retries)
{
	char o1[64], o2[64], o3[64], err[256];
	snprintf(o1, sizeof o1, "dns_servers=127.0.0.1:%d", port);
	snprintf(o2, sizeof o2, "dns_timeout=%s", timeout);
	snprintf(o3, sizeof o3, "dns_retries=%d", retries);
	char *ov[] = { o1, o2, o3 };
	struct conf *c = conf_load(NULL, 1, ov, 3, err, sizeof err);
	CHECK(c != NULL);
	if (!c)
		fprintf(stderr, "%s\n", err);
	return c;
}

/* answer_a - turn the question in b[0..n) into its answer, one A record
 * 192.0.2.7 (TTL 300); returns the answer's length (b has 32 spare). */
static size_t answer_a(unsigned char *b, size_t n)
{
	static const unsigned char ans[] = { 0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 7 };
	b[2] |= 0x80;
	b[3] = 0x80;
	b[6] = 0;
	b[7] = 1;
	memcpy(b + n, ans, sizeof ans);
	return n + sizeof ans;
}

/* fake_read - answer A questions with 192.0.2.7 (TTL 300), except names
 * starting with "slow", which never get an answer. */
static void fake_read(void *arg, unsigned ev)
{
	struct fake *f = arg;
	(void)ev;
	unsigned char b[512];
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	ssize_t n;
	while ((n = recvfrom(f->fd, b, sizeof b - 32, 0, (struct sockaddr *)&ss, &sl)) > 12) {
		f->queries++;
		if (!memcmp(b + 13, "slow", 4))
			continue;
		size_t o = answer_a(b, (size_t)n);
		sendto(f->fd, b, o, 0, (struct sockaddr *)&ss, sl);
		f->answered++;
	}
}

static struct fake fk;

/* on_result - a lookup's answer in the test. */
static void on_result(void *arg, const struct dns_result *res)
{
	struct fake *f = arg;
	f->results++;
	if (res->status == DNS_TEMPFAIL)
		f->tempfails++;
	else if (res->status == DNS_OK)
		snprintf(f->last, sizeof f->last, "%s", res->rr[0].data);
}

static void stop_loop(void *arg) { ev_stop(arg); }

/* run_for - run the loop ms milliseconds. */
static void run_for(struct ev_loop *loop, uint64_t ms)
{
	struct ev_timer t = { 0 };
	ev_timer_start(loop, &t, ms, stop_loop, loop);
	ev_run(loop);
	ev_timer_stop(loop, &t);
}

static int in_callback_guard;
static void flag_result(void *arg, const struct dns_result *res)
{
	(void)res;
	*(int *)arg = in_callback_guard ? -1 : 1;
}

TEST(test_resolver_coalescing)
{
	memset(&fk, 0, sizeof fk);
	fk.fd = udp_server(SOCK_NONBLOCK, &fk.port);
	struct conf *c = resolver_conf(fk.port, "200ms", 1);
	if (!c)
		return;
	dnscache_flush();
	struct ev_loop *loop = ev_loop_new(0);
	fk.loop = loop;
	ev_io_init(&fk.io, fk.fd, fake_read, &fk);
	ev_io_set(loop, &fk.io, EV_READ);

	/* Three identical lookups and a cancelled fourth: one question. */
	int sync = 0;
	in_callback_guard = 1;
	struct dns_query *q[4];
	for (int i = 0; i < 3; i++)
		q[i] = dns_lookup(loop, c, "Co.Example", DNS_T_A, on_result, &fk);
	struct dns_query *qc = dns_lookup(loop, c, "co.example.", DNS_T_A, flag_result, &sync);
	in_callback_guard = 0;
	dns_cancel(qc);
	CHECK_INT(fk.results, 0);            /* never inside dns_lookup() */
	run_for(loop, 300);
	CHECK_INT(fk.queries, 1);
	CHECK_INT(fk.results, 3);
	CHECK_STR(fk.last, "192.0.2.7");
	CHECK_INT(sync, 0);                  /* the cancelled one never ran */

	/* Now cached: no question, and still not synchronous. */
	in_callback_guard = 1;
	q[3] = dns_lookup(loop, c, "co.example", DNS_T_A, flag_result, &sync);
	in_callback_guard = 0;
	(void)q;
	run_for(loop, 50);
	CHECK_INT(sync, 1);
	CHECK_INT(fk.queries, 1);

	/* A server that never answers: TEMPFAIL after timeout x tries. */
	fk.results = fk.tempfails = 0;
	uint64_t t0 = ev_now(loop);
	dns_lookup(loop, c, "slow.example", DNS_T_A, on_result, &fk);
	dns_lookup(loop, c, "slow.example", DNS_T_A, on_result, &fk);
	run_for(loop, 1200);
	CHECK_INT(fk.results, 2);
	CHECK_INT(fk.tempfails, 2);
	CHECK(ev_now(loop) - t0 >= 400);
	CHECK(dnscache_get("1:slow.example") == NULL);   /* failures not cached */

	/* A lookup cancelled while its question is out: nothing runs. */
	sync = 0;
	struct dns_query *qs = dns_lookup(loop, c, "slow2.example", DNS_T_A, flag_result, &sync);
	run_for(loop, 20);
	dns_cancel(qs);
	run_for(loop, 600);
	CHECK_INT(sync, 0);

	dns_loop_shutdown(loop);
	ev_io_stop(loop, &fk.io);
	close(fk.fd);
	ev_loop_free(loop);
	conf_release(c);
	dnscache_flush();
}

/* ---- two loops, two threads, one question ------------------------------- */

struct slow_server {
	int fd, port, queries;
	int stop;
};

/* slow_server_main - answer A questions with 192.0.2.7 after 200 ms, so
 * lookups made on both loops in the meantime overlap one question. */
static void *slow_server_main(void *arg)
{
	struct slow_server *sv = arg;
	while (!__atomic_load_n(&sv->stop, __ATOMIC_ACQUIRE)) {
		struct pollfd pf = { .fd = sv->fd, .events = POLLIN };
		if (poll(&pf, 1, 50) <= 0)
			continue;
		unsigned char b[512];
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		ssize_t n = recvfrom(sv->fd, b, sizeof b - 32, 0, (struct sockaddr *)&ss, &sl);
		if (n <= 12)
			continue;
		__atomic_add_fetch(&sv->queries, 1, __ATOMIC_RELAXED);
		struct timespec ts = { 0, 200 * 1000000L };
		nanosleep(&ts, NULL);
		size_t o = answer_a(b, (size_t)n);
		sendto(sv->fd, b, o, 0, (struct sockaddr *)&ss, sl);
	}
	return NULL;
}

struct two {
	struct ev_loop *loop;
	struct conf *c;
	int results, ok;      /* atomic */
};

static void two_result(void *arg, const struct dns_result *res)
{
	struct two *t = arg;
	if (res->status == DNS_OK && !strcmp(res->rr[0].data, "192.0.2.7"))
		__atomic_add_fetch(&t->ok, 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&t->results, 1, __ATOMIC_RELEASE);
}

/* two_ask - on the loop's own thread: five lookups of one name. */
static void two_ask(void *arg)
{
	struct two *t = arg;
	for (int i = 0; i < 5; i++)
		dns_lookup(t->loop, t->c, "both.example", DNS_T_A, two_result, t);
}

static void *two_run(void *arg)
{
	ev_run(arg);
	return NULL;
}

TEST(test_resolver_coalescing_across_loops)
{
	struct slow_server sv = { 0 };
	sv.fd = udp_server(0, &sv.port);
	struct conf *c = resolver_conf(sv.port, "2s", 0);
	if (!c)
		return;
	dnscache_flush();
	pthread_t st, lt[2];
	pthread_create(&st, NULL, slow_server_main, &sv);
	struct two t[2];
	for (int i = 0; i < 2; i++) {
		t[i] = (struct two){ .loop = ev_loop_new(i), .c = c };
		pthread_create(&lt[i], NULL, two_run, t[i].loop);
	}
	for (int i = 0; i < 2; i++)
		ev_post(t[i].loop, two_ask, &t[i]);
	/* Both loops' lookups are made within the server's 200 ms delay. */
	for (int w = 0; w < 300; w++) {
		if (__atomic_load_n(&t[0].results, __ATOMIC_ACQUIRE) == 5 &&
		    __atomic_load_n(&t[1].results, __ATOMIC_ACQUIRE) == 5)
			break;
		struct timespec ts = { 0, 10 * 1000000L };
		nanosleep(&ts, NULL);
	}
	CHECK_INT(t[0].results, 5);
	CHECK_INT(t[1].results, 5);
	CHECK_INT(t[0].ok, 5);
	CHECK_INT(t[1].ok, 5);
	CHECK_INT(__atomic_load_n(&sv.queries, __ATOMIC_RELAXED), 1);
	for (int i = 0; i < 2; i++) {
		ev_post(t[i].loop, stop_loop, t[i].loop);
		pthread_join(lt[i], NULL);
		dns_loop_shutdown(t[i].loop);
		ev_loop_free(t[i].loop);
	}
	__atomic_store_n(&sv.stop, 1, __ATOMIC_RELEASE);
	pthread_join(st, NULL);
	close(sv.fd);
	conf_release(c);
	dnscache_flush();
}

int main(void)
{
	RUN(test_parse_a);
	RUN(test_parse_mx_nullmx_ptr_aaaa);
	RUN(test_parse_negative);
	RUN(test_parse_cname_loop);
	RUN(test_name_to_ascii);
	RUN(test_reverse_names);
	RUN(test_dnsbl_filters);
	RUN(test_cache_ttl);
	RUN(test_cache_negative);
	RUN(test_cache_lru);
	RUN(test_cache_threads);
	RUN(test_resolver_coalescing);
	RUN(test_resolver_coalescing_across_loops);
	return t_done();
}
