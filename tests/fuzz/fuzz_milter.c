/*
 * fuzz_milter.c - the milter reply parser on arbitrary bytes: the input
 * is a stream of packets as a milter sends them (a 32-bit big-endian
 * length, then the command byte and its data). Each packet is parsed by
 * milter_pkt_parse(); strings it returns lie inside the packet and end
 * there; an SMFIR_REPLYCODE text goes through milter_reply_text(), whose
 * output, when accepted, is lines "NNN-" ... "NNN " of the same 4xx or
 * 5xx code, each with an enhanced code of that class, printable,
 * CRLF-separated.
 */
#include "milter.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* inside - s is a NUL-terminated string within [p, p+n). */
static void inside(const char *s, const char *p, size_t n)
{
	if (!s)
		return;
	if (s < p || s >= p + n || !memchr(s, 0, (size_t)(p + n - s)))
		abort();
}

/* check_reply - the invariants of a normalized reply. */
static void check_reply(const char *out, int cls)
{
	const char *l = out;
	if (cls != 4 && cls != 5)
		abort();
	for (;;) {
		const char *e = strstr(l, "\r\n");
		size_t n = e ? (size_t)(e - l) : strlen(l);
		if (n < 9 || l[0] != '0' + cls || memcmp(l, out, 3) || l[3] != (e ? '-' : ' ') ||
		    l[4] != '0' + cls || l[5] != '.')
			abort();
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)l[i] < 32 && l[i] != '\t')
				abort();
		if (!e)
			break;
		l = e + 2;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;
	while (size - off >= 4) {
		uint32_t len = (uint32_t)data[off] << 24 | (uint32_t)data[off + 1] << 16 |
		    (uint32_t)data[off + 2] << 8 | data[off + 3];
		off += 4;
		if (len > size - off)
			len = (uint32_t)(size - off);
		char *p = malloc(len ? len : 1);
		memcpy(p, data + off, len);
		off += len;
		struct milter_pkt pk;
		if (milter_pkt_parse(p, len, &pk) == 0) {
			if (pk.cmd != p[0])
				abort();
			inside(pk.s1, p, len);
			inside(pk.s2, p, len);
			if (pk.data && (pk.data < p || pk.data + pk.datalen > p + len))
				abort();
			if (pk.cmd == 'y') {
				char out[1024];
				int cls = milter_reply_text(pk.s1, out, sizeof out);
				if (cls >= 0)
					check_reply(out, cls);
			}
		}
		free(p);
	}
	return 0;
}
