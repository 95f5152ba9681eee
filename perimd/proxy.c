/*
 * proxy.c - PROXY protocol v1 (text) and v2 (binary) headers.
 *
 * Invariants: nothing is read past len; an incomplete header is AGAIN only
 * while it could still become valid, so a peer cannot hold a session with
 * bytes that are already wrong; addresses are validated with inet_pton and
 * rendered back canonically, so what the session logs and checks is never
 * the peer's raw text.
 */
#include "proxy.h"
#include "net.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char v2sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
					 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

/* canon_addr - validate an address of family af and write it canonically. */
static int canon_addr(int af, const char *in, char out[46])
{
	unsigned char bin[16];
	if (inet_pton(af, in, bin) != 1)
		return -1;
	return inet_ntop(af, bin, out, 46) ? 0 : -1;
}

/* parse_v1 - "PROXY TCP4|TCP6|UNKNOWN ... CRLF". */
static enum parse_result parse_v1(const unsigned char *buf, size_t len, struct proxy_hdr *h, size_t *consumed)
{
	size_t i;
	for (i = 0; i < len && i < PROXY_V1_MAX; i++) {
		if (buf[i] == '\n')
			break;
		if (buf[i] < 0x20 && buf[i] != '\r')
			return PARSE_BAD;
	}
	if (i == len)
		return len < PROXY_V1_MAX ? PARSE_AGAIN : PARSE_BAD;
	if (i >= PROXY_V1_MAX || i < 1 || buf[i - 1] != '\r')
		return PARSE_BAD;
	char line[PROXY_V1_MAX + 1];
	memcpy(line, buf, i - 1);
	line[i - 1] = 0;
	char *f[7];
	int n = 0;
	char *save, *tok = strtok_r(line, " ", &save);
	while (tok && n < 7) {
		f[n++] = tok;
		tok = strtok_r(NULL, " ", &save);
	}
	if (tok || n < 2 || strcmp(f[0], "PROXY"))
		return PARSE_BAD;
	memset(h, 0, sizeof *h);
	h->version = 1;
	if (!strcmp(f[1], "UNKNOWN")) {
		h->local = 1;
		*consumed = i + 1;
		return PARSE_OK;
	}
	int af;
	if (!strcmp(f[1], "TCP4"))
		af = AF_INET;
	else if (!strcmp(f[1], "TCP6"))
		af = AF_INET6;
	else
		return PARSE_BAD;
	if (n != 6 || canon_addr(af, f[2], h->src) < 0 || canon_addr(af, f[3], h->dst) < 0 ||
	    (h->sport = net_parse_port(f[4])) < 0 || (h->dport = net_parse_port(f[5])) < 0)
		return PARSE_BAD;
	*consumed = i + 1;
	return PARSE_OK;
}

/* parse_v2 - the binary header. */
static enum parse_result parse_v2(const unsigned char *buf, size_t len, struct proxy_hdr *h, size_t *consumed)
{
	if (len < 16)
		return PARSE_AGAIN;
	unsigned ver = buf[12] >> 4, cmd = buf[12] & 0x0f;
	unsigned fam = buf[13] >> 4, proto = buf[13] & 0x0f;
	size_t body = ((size_t)buf[14] << 8) | buf[15];
	if (ver != 2 || cmd > 1 || 16 + body > PROXY_V2_MAX)
		return PARSE_BAD;
	if (len < 16 + body)
		return PARSE_AGAIN;
	memset(h, 0, sizeof *h);
	h->version = 2;
	*consumed = 16 + body;
	if (cmd == 0) { /* LOCAL: the proxy's own connection (health check) */
		h->local = 1;
		return PARSE_OK;
	}
	const unsigned char *a = buf + 16;
	if (fam == 1 && proto == 1) {
		if (body < 12)
			return PARSE_BAD;
		inet_ntop(AF_INET, a, h->src, sizeof h->src);
		inet_ntop(AF_INET, a + 4, h->dst, sizeof h->dst);
		h->sport = (a[8] << 8) | a[9];
		h->dport = (a[10] << 8) | a[11];
	} else if (fam == 2 && proto == 1) {
		if (body < 36)
			return PARSE_BAD;
		inet_ntop(AF_INET6, a, h->src, sizeof h->src);
		inet_ntop(AF_INET6, a + 16, h->dst, sizeof h->dst);
		h->sport = (a[32] << 8) | a[33];
		h->dport = (a[34] << 8) | a[35];
	} else if (fam == 0) {
		h->local = 1; /* UNSPEC: no address information */
	} else {
		return PARSE_BAD; /* UNIX sockets or datagrams: not for SMTP */
	}
	return PARSE_OK;
}

/* proxy_parse - v1 or v2, by the first bytes. */
enum parse_result proxy_parse(const unsigned char *buf, size_t len, struct proxy_hdr *h, size_t *consumed)
{
	size_t n = len < 12 ? len : 12;
	if (n && !memcmp(buf, v2sig, n))
		return n < 12 ? PARSE_AGAIN : parse_v2(buf, len, h, consumed);
	n = len < 6 ? len : 6;
	if (memcmp(buf, "PROXY ", n))
		return PARSE_BAD;
	return n < 6 ? PARSE_AGAIN : parse_v1(buf, len, h, consumed);
}
