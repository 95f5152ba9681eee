/*
 * fuzz_cmd.c - libFuzzer target for the command side: smtp_line_find over
 * a stream (byte 0 picks the line limit), fed whole and one byte at a time
 * into a simulated session buffer (the two must find the same lines), then
 * smtp_cmd_parse on each line and smtp_path_parse on MAIL/RCPT arguments,
 * checking that what the parsers accept is well-formed and stable.
 */
#include "smtp_proto.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* mix - fold one value into an FNV-1a style hash of the line results */
static uint64_t mix(uint64_t h, uint64_t v)
{
	for (int i = 0; i < 8; i++) {
		h ^= (v >> (8 * i)) & 0xff;
		h *= 1099511628211ull;
	}
	return h;
}

/* check_path - accepted paths must be bounded, consistent, re-parsable */
static void check_path(const char *args, size_t len, int strict)
{
	static char buf[8192], again[SMTP_PATH_MAX + 8];
	struct smtp_path p, q;
	const char *why = NULL;
	enum parse_result r;
	size_t al, ll, dl;

	if (len >= sizeof(buf))
		return;
	memcpy(buf, args, len);
	buf[len] = '\0';
	r = smtp_path_parse(buf, strict, &p, &why);
	if (r != PARSE_OK) {
		if (r != PARSE_BAD || !why || !*why)
			abort();
		return;
	}
	al = strlen(p.addr);
	ll = strlen(p.local);
	dl = strlen(p.domain);
	if (al > SMTP_PATH_MAX || p.nparams < 0 || p.nparams > SMTP_MAX_PARAMS)
		abort();
	if (dl) {
		if (al != ll + 1 + dl || memcmp(p.addr, p.local, ll) != 0 ||
		    p.addr[ll] != '@' || strcmp(p.addr + ll + 1, p.domain) != 0 ||
		    !smtp_domain_valid(p.domain, dl, 1))
			abort();
	} else if (strcmp(p.addr, p.local) != 0 ||
		   (al && strcmp(p.addr, "Postmaster") != 0)) {
		abort();
	}
	for (size_t i = 0; i < al; i++)
		if ((unsigned char)p.addr[i] >= 0x80 && !p.utf8)
			abort();
	for (int i = 0; i < p.nparams; i++) {
		const char *k = p.params[i].key, *v = p.params[i].value;

		if (!k[0] || strchr(k, ' ') || strchr(k, '='))
			abort();
		if (v && (!v[0] || strchr(v, ' ') || strchr(v, '=')))
			abort();
		if (v)
			smtp_xtext_valid(v);
	}
	/* the canonical address, bracketed, parses to itself */
	snprintf(again, sizeof(again), "<%s>", p.addr);
	if (smtp_path_parse(again, 1, &q, &why) != PARSE_OK ||
	    strcmp(q.addr, p.addr) != 0 || strcmp(q.local, p.local) != 0 ||
	    strcmp(q.domain, p.domain) != 0 || q.utf8 != p.utf8 || q.nparams)
		abort();
}

/* on_line - parse one found command line; returns a hash of the result */
static uint64_t on_line(const char *line, size_t len)
{
	enum smtp_verb v;
	const char *args;
	size_t alen;
	enum parse_result r = smtp_cmd_parse(line, len, &v, &args, &alen);

	if (args < line || args + alen > line + len || v >= SMTP_VERB_COUNT)
		abort();
	if (r == PARSE_OK && (v == SMTP_MAIL || v == SMTP_RCPT)) {
		check_path(args, alen, 1);
		check_path(args, alen, 0);
	}
	if (r == PARSE_OK && (v == SMTP_HELO || v == SMTP_EHLO))
		smtp_domain_valid(args, alen, v == SMTP_EHLO);
	return mix(mix((uint64_t)r, (uint64_t)v), len);
}

/* run - find lines in data fed in steps of `step` bytes (0 = all at once)
 * through a session-like buffer; returns a hash of all results */
static uint64_t run(const char *data, size_t size, size_t limit, size_t step)
{
	char *buf = malloc(size + 1);
	size_t blen = 0, pos = 0;
	int discarding = 0;
	uint64_t h = 14695981039346656037ull;

	if (!buf)
		abort();
	while (pos < size) {
		size_t n = step && step < size - pos ? step : size - pos;

		memcpy(buf + blen, data + pos, n);
		blen += n;
		pos += n;
		for (;;) {
			size_t ll, c;

			if (discarding) {
				char *lf = memchr(buf, '\n', blen);

				if (!lf) {
					blen = 0;
					break;
				}
				c = (size_t)(lf - buf) + 1;
				discarding = 0;
			} else {
				enum parse_result r =
					smtp_line_find(buf, blen, limit, &ll, &c);
				if (r == PARSE_AGAIN) {
					if (c != 0 || blen > limit + 1)
						abort();
					break;
				}
				if (c == 0 || c > blen)
					abort();
				if (r == PARSE_OK) {
					if (ll > limit || ll >= c)
						abort();
					h = mix(h, on_line(buf, ll));
				} else if (r == PARSE_TOO_LONG) {
					/* SIZE_MAX iff consumed through the LF */
					if ((ll == SIZE_MAX) != (buf[c - 1] == '\n') ||
					    (ll != SIZE_MAX && (ll != 0 || c != blen)))
						abort();
					h = mix(h, 0xdead);
					discarding = ll != SIZE_MAX;
				} else {
					abort();
				}
			}
			memmove(buf, buf + c, blen - c);
			blen -= c;
		}
	}
	free(buf);
	return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t limit;

	if (size < 1)
		return 0;
	limit = 4 + data[0];
	if (run((const char *)data + 1, size - 1, limit, 0) !=
	    run((const char *)data + 1, size - 1, limit, 1))
		abort();
	return 0;
}
