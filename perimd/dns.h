/*
 * dns.h - asynchronous DNS on the event loop (c-ares), with a TTL cache
 * shared by all loops (dnscache.c) and coalescing of identical lookups.
 *
 * Each io loop has its own c-ares channel, created on its first lookup,
 * whose sockets and timeout are driven by the loop (never a blocking
 * ares_process). A lookup is answered from the cache when it can be; else
 * it joins a query already in flight for the same name and type on this
 * loop, or sends one. done() runs later on the same loop, exactly once,
 * never inside dns_lookup(), unless dns_cancel() came first.
 *
 * Results are immutable and reference-counted: the one given to done()
 * is valid only during the call (take dns_result_ref() to keep it).
 */
#ifndef PERIMD_DNS_H
#define PERIMD_DNS_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;
struct conf;

/* RFC 1035 §3.2.2, RFC 3596 §2.1 */
enum dns_type { DNS_T_A = 1, DNS_T_PTR = 12, DNS_T_MX = 15, DNS_T_AAAA = 28 };

enum dns_status {
	DNS_OK,       /* n >= 1 records */
	DNS_NXDOMAIN, /* the name does not exist (RFC 1035 RCODE 3) */
	DNS_NODATA,   /* the name exists, no record of this type (RFC 2308 §2.2) */
	DNS_TEMPFAIL  /* timeout, SERVFAIL, refused, malformed: try again later */
};

/* One record: A/AAAA the address as text ("192.0.2.1", "2001:db8::1");
 * PTR/MX the target name, lower case, no trailing dot ("" = the root, as
 * in a null MX, RFC 7505); pref is the MX preference. */
struct dns_rr {
	unsigned pref;
	const char *data;
};

struct dns_result {
	int refs; /* private */
	enum dns_status status;
	uint32_t ttl; /* seconds: answer TTL, or SOA minimum */
	int n;
	struct dns_rr rr[];
};

#define DNS_MAX_RR 32 /* records kept per answer */

typedef void dns_done_fn(void *arg, const struct dns_result *res);
struct dns_query;

/* dns_lookup - look name up (type A, AAAA, PTR or MX); conf gives
 * dns_servers, dns_timeout, dns_retries and the cache bounds. */
struct dns_query *dns_lookup(struct ev_loop *loop, const struct conf *c, const char *name, enum dns_type type,
			     dns_done_fn *done, void *arg);
/* dns_cancel - done() will not run; the query itself may still finish
 * (its answer then goes to the cache and to other waiters). */
void dns_cancel(struct dns_query *q);
/* dns_loop_shutdown - destroy this loop's channel (after its sessions). */
void dns_loop_shutdown(struct ev_loop *loop);

/* dns_conf_check - dns_servers syntax (for -t and reloads); 0 or -1. */
int dns_conf_check(const struct conf *c, char *err, size_t errlen);

void dns_result_ref(const struct dns_result *r);
void dns_result_unref(const struct dns_result *r);
/* dns_result_new - a result with no records (status, ttl). */
struct dns_result *dns_result_new(enum dns_status st, uint32_t ttl);

/* dns_parse_response - pure: the records of `type` in a DNS message
 * (RFC 1035 §4.1), following the answer section whatever the owner name
 * (CNAME chains are resolved by the server; one that loops, without a
 * record, is DNS_TEMPFAIL as the server's SERVFAIL); NXDOMAIN / NODATA with the
 * negative TTL of RFC 2308 §5 (min of the SOA's TTL and MINIMUM, 0 when
 * there is no SOA). Returns 0 with *out (one reference), or -1 when the
 * message is malformed or truncated. */
int dns_parse_response(const unsigned char *buf, size_t len, enum dns_type type, struct dns_result **out);

/* dns_name_to_ascii - a domain with UTF-8 labels (U-labels, RFC 6531)
 * in the form the DNS holds: each non-ASCII label as "xn--" and its
 * Punycode (RFC 3492; RFC 5891 §4.4), ASCII labels as they are. The
 * labels are taken as they come (IDNA2008: already lower case, NFC); no
 * mapping is done. 0, or -1 when malformed UTF-8, a label past 63
 * octets or out too small. */
int dns_name_to_ascii(const char *name, char *out, size_t outlen);

/* dns_reverse_name - "d.c.b.a.ZONE" for IPv4, 32 nibbles for IPv6 (RFC
 * 3596 §2.5); zone NULL = in-addr.arpa / ip6.arpa. 0 or -1. */
int dns_reverse_name(const char *addr, const char *zone, char *out, size_t outlen);

/* dns_cache_key - "TYPE:name" lower case, for the cache. */
void dns_cache_key(const char *name, enum dns_type type, char *out, size_t outlen);

#endif
