/*
 * test_proxy.c - the PROXY protocol parser, fed whole and byte by byte.
 */
#include "proxy.h"
#include "t.h"

#include <stdint.h>

/* feed - whole, then byte by byte: every prefix shorter than the header
 * is AGAIN; for bad input no prefix is ever OK. */
static enum parse_result feed(const void *data, size_t len, struct proxy_hdr *h, size_t *used)
{
	enum parse_result whole = proxy_parse(data, len, h, used);
	size_t upto = whole == PARSE_OK ? *used : len;
	for (size_t i = 0; i < upto; i++) {
		struct proxy_hdr tmp;
		size_t u;
		enum parse_result r = proxy_parse(data, i, &tmp, &u);
		if (whole == PARSE_OK)
			CHECK(r == PARSE_AGAIN);
		else if (r == PARSE_OK)
			CHECK(0);
	}
	return whole;
}

TEST(v1_tcp4)
{
	const char in[] = "PROXY TCP4 192.0.2.7 198.51.100.1 5555 25\r\nEHLO x\r\n";
	struct proxy_hdr h;
	size_t used;
	CHECK(feed(in, sizeof in - 1, &h, &used) == PARSE_OK);
	CHECK_INT(used, strlen("PROXY TCP4 192.0.2.7 198.51.100.1 5555 25\r\n"));
	CHECK_STR(h.src, "192.0.2.7");
	CHECK_STR(h.dst, "198.51.100.1");
	CHECK_INT(h.sport, 5555);
	CHECK_INT(h.dport, 25);
	CHECK_INT(h.local, 0);
	CHECK_INT(h.version, 1);
}

TEST(v1_tcp6_and_unknown)
{
	const char in[] = "PROXY TCP6 2001:db8:0:0::1 ::1 4000 25\r\n";
	struct proxy_hdr h;
	size_t used;
	CHECK(feed(in, sizeof in - 1, &h, &used) == PARSE_OK);
	CHECK_STR(h.src, "2001:db8::1");
	const char un[] = "PROXY UNKNOWN\r\n";
	CHECK(feed(un, sizeof un - 1, &h, &used) == PARSE_OK);
	CHECK_INT(h.local, 1);
}

TEST(v1_bad)
{
	const char *bad[] = {
		"PROXY TCP4 192.0.2.777 1.2.3.4 1 2\r\n", "PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n",
		"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", "PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n",
		"PROXY TCP4 ::1 ::1 1 2\r\n", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
		"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "EHLO x\r\n", "PROXY\r\n",
		"PROXY TCP4 1.2.3.4\x01 1.2.3.4 1 2\r\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct proxy_hdr h;
		size_t used;
		CHECK(feed(bad[i], strlen(bad[i]), &h, &used) == PARSE_BAD);
	}
	/* A v1 line that never ends is BAD once it is longer than allowed. */
	char longl[200];
	memset(longl, 'a', sizeof longl);
	memcpy(longl, "PROXY ", 6);
	struct proxy_hdr h;
	size_t used;
	CHECK(proxy_parse((unsigned char *)longl, sizeof longl, &h, &used) == PARSE_BAD);
	CHECK(proxy_parse((unsigned char *)longl, 50, &h, &used) == PARSE_AGAIN);
}

static size_t v2(unsigned char *b, int cmd, int fam, const unsigned char *addr, size_t alen)
{
	static const unsigned char sig[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
					       0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };
	memcpy(b, sig, 12);
	b[12] = (unsigned char)(0x20 | cmd);
	b[13] = (unsigned char)fam;
	b[14] = (unsigned char)(alen >> 8);
	b[15] = (unsigned char)alen;
	memcpy(b + 16, addr, alen);
	return 16 + alen;
}

TEST(v2_inet_inet6_local)
{
	unsigned char b[128];
	const unsigned char a4[12] = { 198, 51, 100, 9, 127, 0, 0, 1, 0x11, 0x5c, 0, 25 };
	size_t n = v2(b, 1, 0x11, a4, sizeof a4);
	memcpy(b + n, "QUIT\r\n", 6);
	struct proxy_hdr h;
	size_t used;
	CHECK(feed(b, n + 6, &h, &used) == PARSE_OK);
	CHECK_INT(used, n);
	CHECK_STR(h.src, "198.51.100.9");
	CHECK_INT(h.sport, 4444);
	CHECK_INT(h.version, 2);
	unsigned char a6[36] = { 0x20, 0x01, 0x0d, 0xb8 };
	a6[15] = 1;
	a6[31] = 1;
	a6[33] = 80;
	n = v2(b, 1, 0x21, a6, sizeof a6);
	CHECK(feed(b, n, &h, &used) == PARSE_OK);
	CHECK_STR(h.src, "2001:db8::1");
	CHECK_STR(h.dst, "::1");
	n = v2(b, 0, 0x00, a6, 0);
	CHECK(feed(b, n, &h, &used) == PARSE_OK);
	CHECK_INT(h.local, 1);
	/* TLVs after the addresses are skipped. */
	unsigned char tlv[16] = { 198, 51, 100, 9, 127, 0, 0, 1, 0, 1, 0, 25, 0x04, 0, 1, 0 };
	n = v2(b, 1, 0x11, tlv, sizeof tlv);
	CHECK(feed(b, n, &h, &used) == PARSE_OK);
	CHECK_INT(used, n);
}

TEST(v2_bad)
{
	unsigned char b[2048];
	const unsigned char a4[12] = { 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2 };
	struct proxy_hdr h;
	size_t used;
	size_t n = v2(b, 1, 0x11, a4, 8);   /* too short for INET */
	CHECK(feed(b, n, &h, &used) == PARSE_BAD);
	n = v2(b, 2, 0x11, a4, 12);          /* unknown command */
	CHECK(proxy_parse(b, n, &h, &used) == PARSE_BAD);
	n = v2(b, 1, 0x31, a4, 12);          /* AF_UNIX */
	CHECK(proxy_parse(b, n, &h, &used) == PARSE_BAD);
	n = v2(b, 1, 0x11, a4, 12);
	b[12] = 0x11;                        /* version 1 in a v2 header */
	CHECK(proxy_parse(b, n, &h, &used) == PARSE_BAD);
	unsigned char big[1100] = { 0 };
	n = v2(b, 1, 0x11, big, sizeof big); /* over PROXY_V2_MAX */
	CHECK(proxy_parse(b, 16, &h, &used) == PARSE_BAD);
}

int main(void)
{
	RUN(v1_tcp4);
	RUN(v1_tcp6_and_unknown);
	RUN(v1_bad);
	RUN(v2_inet_inet6_local);
	RUN(v2_bad);
	return t_done();
}
