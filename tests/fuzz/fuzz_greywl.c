/*
 * fuzz_greywl.c - libFuzzer target for the postgrey-format whitelists:
 * greywl_parse on the input, then greywl_client and greywl_rcpt on
 * addresses, names and recipients made from its lines and a few fixed
 * ones. Checks: a refusal names its reason; every entry that is not a
 * /regex/ matches what it names (its address, its name or domain, its
 * recipient), so no accepted line is dead.
 */
#include "grey.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* entry_text - line's entry as greywl.c reads it: '#' starts a comment
 * (except on a /regex/ line), whitespace trimmed; "" when none. */
static void entry_text(const char *line, size_t ll, char *out, size_t outlen)
{
	out[0] = 0;
	if (ll >= outlen || memchr(line, 0, ll))
		return;
	memcpy(out, line, ll);
	out[ll] = 0;
	char *h = strchr(out, '#');
	if (h && out[0] != '/')
		*h = 0;
	char *s = out;
	while (isspace((unsigned char)*s))
		s++;
	size_t sl = strlen(s);
	while (sl && isspace((unsigned char)s[sl - 1]))
		s[--sl] = 0;
	memmove(out, s, sl + 1);
}

/* check_entry - a non-regex entry s matches what it names */
static void check_entry(const struct greywl *w, const char *s)
{
	char addr[1100], rcpt[1200];
	const char *slash = strchr(s, '/');
	size_t an = slash ? (size_t)(slash - s) : strlen(s);

	memcpy(addr, s, an);
	addr[an] = 0;
	snprintf(rcpt, sizeof rcpt, "postmaster@%s", s);
	if (!greywl_client(w, addr, s) && !greywl_rcpt(w, s) && !greywl_rcpt(w, rcpt)) {
		fprintf(stderr, "fuzz_greywl: entry \"%s\" matches nothing\n", s);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const addrs[] = {
		"192.0.2.1", "10.1.2.3", "2001:db8::1", "::1", "127.0.0.1",
	};
	static const char *const names[] = {
		NULL, "", "mail.example.com", "EXAMPLE.COM", "x",
	};
	static const char *const rcpts[] = {
		"postmaster@example.com", "user@sub.example.com", "@", "", "a@b@c",
	};
	const char *text = (const char *)data;
	char err[256] = "";
	char line[1100];
	struct greywl *w = greywl_parse(text, size, err, sizeof err);

	if (!w) {
		if (err[0] == 0)
			abort();
		return 0;
	}
	for (size_t i = 0; i < sizeof addrs / sizeof addrs[0]; i++)
		for (size_t j = 0; j < sizeof names / sizeof names[0]; j++)
			(void)greywl_client(w, addrs[i], names[j]);
	for (size_t i = 0; i < sizeof rcpts / sizeof rcpts[0]; i++)
		(void)greywl_rcpt(w, rcpts[i]);
	size_t pos = 0;
	for (int k = 0; pos < size && k < 64; k++) {
		const char *nl = memchr(text + pos, '\n', size - pos);
		size_t e = nl ? (size_t)(nl - text) : size;

		entry_text(text + pos, e - pos, line, sizeof line);
		pos = e + 1;
		if (!line[0])
			continue;
		/* each line as a client address, a name and a recipient */
		(void)greywl_client(w, line, line);
		(void)greywl_rcpt(w, line);
		if (line[0] != '/')
			check_entry(w, line);
	}
	greywl_free(w);
	return 0;
}
