/*
 * fuzz_dns.c - libFuzzer target for DNS answers from the network:
 * dns_parse_response on the input as each record type perimd asks (A,
 * AAAA, MX, PTR). A result's invariants: a status, no more than
 * DNS_MAX_RR records, each a NUL-terminated name or address of at most
 * 255 characters; a result other than DNS_OK has no records. The
 * first half of the input is parsed too (a cut answer never crashes).
 * The input as a domain name goes through dns_name_to_ascii too: what
 * it gives is ASCII (an ASCII name unchanged), within its buffer.
 */
#include "dns.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* check - the invariants of one parsed result. */
static void check(const struct dns_result *r)
{
	if (r->status != DNS_OK && r->status != DNS_NXDOMAIN && r->status != DNS_NODATA &&
	    r->status != DNS_TEMPFAIL)
		abort();
	if (r->n < 0 || r->n > DNS_MAX_RR || (r->status != DNS_OK && r->n != 0) ||
	    (r->status == DNS_OK && r->n == 0))
		abort();
	for (int i = 0; i < r->n; i++)
		if (strnlen(r->rr[i].data, 256) > 255)
			abort();
}

/* parse_as - parse as type; check a result when there is one. */
static void parse_as(const unsigned char *data, size_t size, enum dns_type t)
{
	struct dns_result *r = NULL;
	if (dns_parse_response(data, size, t, &r) == 0) {
		check(r);
		dns_result_unref(r);
	}
}

/* to_ascii - dns_name_to_ascii on the input as a name. */
static void to_ascii(const uint8_t *data, size_t size)
{
	char in[512], out[256];
	if (size >= sizeof in)
		return;
	memcpy(in, data, size);
	in[size] = 0;
	if (dns_name_to_ascii(in, out, sizeof out) < 0)
		return;
	int ascii = 1;
	for (const unsigned char *p = (const unsigned char *)in; *p; p++)
		ascii &= *p < 0x80;
	if (ascii && strcmp(in, out)) /* ASCII names pass as they are */
		abort();
	for (const unsigned char *p = (const unsigned char *)out; *p; p++)
		if (*p >= 0x80)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	to_ascii(data, size);
	static const enum dns_type types[] = { DNS_T_A, DNS_T_AAAA, DNS_T_MX, DNS_T_PTR };
	if (size > 65535)
		return 0;
	for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
		parse_as(data, size, types[i]);
	if (size > 12)
		parse_as(data, size / 2, DNS_T_MX);
	return 0;
}
