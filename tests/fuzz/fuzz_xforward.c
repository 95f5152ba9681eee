/*
 * fuzz_xforward.c - libFuzzer target for XFORWARD and XCLIENT (Postfix
 * XFORWARD_README, XCLIENT_README; the verb by the last byte's low bit):
 * smtp_xforward_attrs on the first input line (an EHLO
 * keyword's parameters), smtp_xforward_format on the values that follow
 * (one per line, in enum smtp_xf_attr order; a missing line is NULL).
 * The commands: each at most SMTP_XFORWARD_LINE_MAX octets with its CRLF,
 * the verb and " NAME=value" items only, every offered attribute once
 * and no other, each value [UNAVAILABLE] or valid xtext of at most
 * SMTP_XFORWARD_VALUE_MAX octets whose decoding is the input value with
 * the characters XFORWARD forbids turned into '?'. A smaller buffer gives
 * -1 or the same commands, never an overrun.
 */
#include "smtp_proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[SMTP_XF_COUNT] = { "NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE" };

/* hexval - an uppercase hex digit's value, or -1 */
static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* check_value - v[0..n) is the encoding of in (NULL: [UNAVAILABLE]) */
static void check_value(const char *v, size_t n, const char *in)
{
	size_t i = 0, k = 0;

	if (n == 13 && memcmp(v, "[UNAVAILABLE]", 13) == 0)
		return; /* allowed for any value: NULL, empty or too long */
	if (n == 0 || n > SMTP_XFORWARD_VALUE_MAX || !in)
		abort();
	while (i < n) {
		unsigned char c = (unsigned char)v[i];
		unsigned char want = (unsigned char)in[k];

		if (c == '+') {
			if (i + 2 >= n)
				abort();
			int h = hexval(v[i + 1]), l = hexval(v[i + 2]);

			if (h < 0 || l < 0)
				abort();
			c = (unsigned char)(h * 16 + l);
			i += 3;
		} else {
			if (c < '!' || c > '~' || c == '=')
				abort();
			i++;
		}
		if (want <= ' ' || want >= 127 || strchr("<>()\\\";@", want))
			want = '?';
		if (!in[k] || c != want)
			abort();
		k++;
	}
	if (in[k])
		abort();
}

/* check_commands - the commands in out for the values val, offered mask */
static void check_commands(const char *verb, const char *out, int ncmd, const char *const val[],
			   unsigned offered)
{
	size_t vl = strlen(verb);

	unsigned seen = 0;
	int lines = 0;
	const char *p = out;

	while (*p) {
		const char *crlf = strstr(p, "\r\n");

		if (!crlf || (size_t)(crlf - p) + 2 > SMTP_XFORWARD_LINE_MAX || strncmp(p, verb, vl) != 0 ||
		    p[vl] != ' ')
			abort();
		lines++;
		for (const char *q = p + vl; q < crlf;) {
			const char *item = q + 1, *eq, *end;

			if (*q != ' ')
				abort();
			end = memchr(item, ' ', (size_t)(crlf - item));
			if (!end)
				end = crlf;
			eq = memchr(item, '=', (size_t)(end - item));
			if (!eq)
				abort();
			int a;

			for (a = 0; a < SMTP_XF_COUNT; a++)
				if (strlen(names[a]) == (size_t)(eq - item) && !memcmp(item, names[a], (size_t)(eq - item)))
					break;
			if (a == SMTP_XF_COUNT || (seen & SMTP_XF_BIT(a)) || !(offered & SMTP_XF_BIT(a)))
				abort();
			seen |= SMTP_XF_BIT(a);
			check_value(eq + 1, (size_t)(end - eq - 1), val[a]);
			q = end;
		}
		p = crlf + 2;
	}
	if (lines != ncmd || seen != (offered & ((1u << SMTP_XF_COUNT) - 1)))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = malloc(size + 1), *lines[1 + SMTP_XF_COUNT] = { 0 };
	const char *val[SMTP_XF_COUNT] = { 0 };
	char out[SMTP_XFORWARD_BUF], small[SMTP_XFORWARD_BUF];
	int n = 0;

	memcpy(in, data, size);
	in[size] = '\0'; /* a NUL inside ends the value there */
	for (char *p = in; p && n < 1 + SMTP_XF_COUNT; n++) {
		lines[n] = p;
		p = strchr(p, '\n');
		if (p)
			*p++ = '\0';
	}
	unsigned offered = lines[0] ? smtp_xforward_attrs(lines[0], strlen(lines[0])) : 0;

	if (offered & ~((1u << SMTP_XF_COUNT) - 1))
		abort();
	for (int a = 0; a < SMTP_XF_COUNT; a++)
		val[a] = lines[1 + a];
	const char *verb = size && (data[size - 1] & 1) ? "XCLIENT" : "XFORWARD";
	int ncmd = smtp_xforward_format(verb, val, offered, out, sizeof(out));

	if (ncmd < 0 || (ncmd == 0) != (offered == 0) || ncmd > SMTP_XF_COUNT)
		abort();
	check_commands(verb, out, ncmd, val, offered);
	/* a buffer too small: -1 or the same, within its bounds */
	size_t cut = size ? (size_t)data[0] * 8 % sizeof(small) : 0;
	int k = smtp_xforward_format(verb, val, offered, small, cut);

	if (k >= 0 && (k != ncmd || strcmp(small, out) != 0))
		abort();
	free(in);
	return 0;
}
