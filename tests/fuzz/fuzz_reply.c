/*
 * fuzz_reply.c - libFuzzer target for backend replies: smtp_reply_feed on
 * a stream of replies (each parsed again from its start, as the relay
 * does), its prefixes (never a different answer than AGAIN before the end
 * of a reply), the fields' invariants, and smtp_ehlo_caps on each reply:
 * the capabilities collected line by line (whatever the reply's length,
 * up to SMTP_REPLY_MAX) equal those read from the text whenever the text
 * was not cut; past SMTP_REPLY_MAX the answer is PARSE_TOO_LONG.
 */
#include "smtp_proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* check_reply - the fields of an accepted reply */
static void check_reply(const struct smtp_reply *r, const char *buf,
			size_t consumed)
{
	size_t tl = strnlen(r->text, sizeof(r->text));
	uint64_t size;
	unsigned caps;

	if (r->code < 100 || r->code > 599 || r->nlines < 1 || consumed > SMTP_REPLY_MAX + 2 ||
	    tl >= sizeof(r->text) || consumed < 4 || buf[consumed - 1] != '\n')
		abort();
	for (size_t i = 0; i < tl; i++) {
		unsigned char c = (unsigned char)r->text[i];

		if ((c < 32 && c != '\t' && c != '\n') || c == 127)
			abort();
	}
	if (r->enh[0]) {
		/* class.subject.detail, class = the reply's first digit */
		const char *e = r->enh;
		size_t n = strnlen(e, sizeof(r->enh));

		if (n < 5 || n > 9 || e[0] != buf[0] || e[1] != '.')
			abort();
	}
	caps = smtp_ehlo_caps(r, &size);
	if (r->code != 250 && (caps || size))
		abort();
	if (size && !(caps & SMTP_CAP_SIZE))
		abort();
	if (r->code == 250 && !r->text_full && tl < sizeof(r->text) - 1) {
		/* nothing cut: the per-line collection and the text agree */
		uint64_t tsize;

		if (smtp_ehlo_caps_text(r->text, &tsize) != caps || tsize != size)
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	size_t pos = 0;
	struct smtp_reply r, r2;

	smtp_reply_init(&r);
	while (pos < size) {
		size_t c = 0, c2;
		enum parse_result res = smtp_reply_feed(&r, buf + pos, size - pos, &c);
		unsigned seed = (unsigned)size;

		if (res == PARSE_OK && (c == 0 || c > size - pos))
			abort();
		if (res != PARSE_OK && c != 0)
			abort();
		/* a reply over the bound is refused as such, not half-read */
		if (res == PARSE_TOO_LONG && size - pos <= SMTP_REPLY_MAX)
			abort();
		/* some prefixes, and the one just before the end */
		for (int i = 0; i < 8; i++) {
			enum parse_result pr;
			size_t k;

			seed = seed * 1103515245u + 12345u;
			k = (seed >> 8) % (size - pos + 1);
			if (i == 0 && res == PARSE_OK)
				k = c - 1;
			pr = smtp_reply_feed(&r2, buf + pos, k, &c2);
			if (res == PARSE_OK && k < c && pr != PARSE_AGAIN)
				abort();
			if (res == PARSE_OK && k >= c &&
			    (pr != PARSE_OK || c2 != c || r2.code != r.code ||
			     strcmp(r2.text, r.text) != 0))
				abort();
			if (res == PARSE_AGAIN && pr != PARSE_AGAIN)
				abort();
			if (pr == PARSE_TOO_LONG && res != PARSE_TOO_LONG && res != PARSE_BAD)
				abort();
			if (res == PARSE_BAD && pr == PARSE_OK)
				abort();
		}
		if (res != PARSE_OK)
			break;
		check_reply(&r, buf + pos, c);
		pos += c;
	}
	return 0;
}
