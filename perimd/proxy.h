/*
 * proxy.h - the PROXY protocol header a load balancer puts before the SMTP
 * stream (HAProxy's proxy-protocol.txt, versions 1 and 2). Pure parser.
 */
#ifndef PERIMD_PROXY_H
#define PERIMD_PROXY_H

#include <stddef.h>

#include "smtp_proto.h" /* enum parse_result */

#define PROXY_V1_MAX 107  /* longest v1 line, CRLF included */
#define PROXY_V2_MAX 1024 /* our bound on a v2 header with its TLVs */

struct proxy_hdr {
	int version;  /* 1 or 2 */
	int local;    /* v2 LOCAL or v1 UNKNOWN: use the connection's own address */
	char src[46]; /* original client address (when !local) */
	int sport;
	char dst[46]; /* address the client connected to */
	int dport;
};

/* proxy_parse - parse the header at the start of buf. PARSE_OK: *consumed
 * bytes are the header (the SMTP stream follows); PARSE_AGAIN: incomplete;
 * PARSE_BAD: not a valid PROXY header (including a v1 line over
 * PROXY_V1_MAX or a v2 header over PROXY_V2_MAX). */
enum parse_result proxy_parse(const unsigned char *buf, size_t len, struct proxy_hdr *h, size_t *consumed);

#endif
