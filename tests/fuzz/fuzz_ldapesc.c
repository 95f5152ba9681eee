/*
 * fuzz_ldapesc.c - libFuzzer target for the RFC 4515 escaping of keys
 * (map_ldap_escape) and the query_filter expansion (map_ldap_expand):
 * any bytes as a key. Checks: the escaped value holds no '*', '(', ')',
 * NUL, control or non-ASCII byte, and every '\\' starts a two-digit hex
 * escape; unescaping it gives the key back; a short buffer gives -1 and
 * ""; in a filter "(mail=%s)" the key can add no parenthesis or wildcard.
 */
#include "maps_ldap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* hexval - a hex digit's value, -1 if it is none. */
static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 2000)
		return 0;
	const char *in = (const char *)data;
	size_t cap = size * 3 + 1;
	char *out = malloc(cap), *back = malloc(size + 1);
	size_t n = map_ldap_escape(in, size, out, cap);
	if (n == (size_t)-1 || strlen(out) != n)
		abort();
	size_t b = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)out[i];
		if (c == '*' || c == '(' || c == ')' || c < 0x20 || c > 0x7e)
			abort();
		if (c == '\\') {
			if (i + 2 >= n || hexval(out[i + 1]) < 0 || hexval(out[i + 2]) < 0)
				abort();
			back[b++] = (char)(hexval(out[i + 1]) * 16 + hexval(out[i + 2]));
			i += 2;
		} else {
			back[b++] = (char)c;
		}
	}
	if (b != size || memcmp(back, in, size) != 0)
		abort();
	if (size > 0) {
		if (map_ldap_escape(in, size, out, n) != (size_t)-1 || out[0])
			abort();
	}
	/* As a key in a filter (a NUL ends the key, as for a C string). */
	char key[2001];
	memcpy(key, in, size);
	key[size] = 0;
	char *f = malloc(cap + 16);
	int x = map_ldap_expand("(mail=%s)", key, NULL, 1, f, cap + 16);
	if (x != 1)
		abort();
	size_t fl = strlen(f);
	if (fl < 7 || strncmp(f, "(mail=", 6) || f[fl - 1] != ')')
		abort();
	for (size_t i = 6; i + 1 < fl; i++)
		if (f[i] == '(' || f[i] == ')' || f[i] == '*')
			abort();
	free(f);
	free(out);
	free(back);
	return 0;
}
