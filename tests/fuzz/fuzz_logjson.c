/*
 * fuzz_logjson.c - libFuzzer target for log_format = json: any message
 * (byte 0 picks the level and the output size) gives one whole JSON
 * object: it starts with '{' and ends with '}' outside any string, every
 * string is closed, escapes are the JSON ones, no raw control character
 * or invalid UTF-8 is left, and the output fits the buffer.
 */
#include "log.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* utf8_ok - the whole buffer is valid UTF-8 (RFC 3629). */
static int utf8_ok(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t l = p[i] < 0x80 ? 1 : p[i] >= 0xf0 ? 4 : p[i] >= 0xe0 ? 3 : 2;
		if ((p[i] >= 0x80 && p[i] < 0xc2) || p[i] > 0xf4 || i + l > n)
			return 0;
		for (size_t k = 1; k < l; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				return 0;
		i += l;
	}
	return 1;
}

/* check - the structure of one object. */
static void check(const char *o, size_t n)
{
	int in = 0, depth = 0;
	if (n < 2 || o[0] != '{' || o[n - 1] != '}' || !utf8_ok((const unsigned char *)o, n))
		abort();
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)o[i];
		if (c < 0x20)
			abort();
		if (in) {
			if (c == '\\') {
				char e = o[++i];
				if (e == 'u') {
					if (i + 4 >= n)
						abort();
					i += 4;
				} else if (!strchr("\"\\/bfnrt", e)) {
					abort();
				}
			} else if (c == '"') {
				in = 0;
			}
		} else if (c == '"') {
			in = 1;
		} else if (c == '{') {
			depth++;
		} else if (c == '}') {
			if (--depth < 0 || (depth == 0 && i != n - 1))
				abort();
		}
	}
	if (in || depth)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t cap = 512 + (size_t)(data[0] >> 2) * 64;
	char *msg = malloc(size), *out = malloc(cap);
	memcpy(msg, data + 1, size - 1);
	msg[size - 1] = 0;
	size_t n = log_json_line(out, cap, (enum log_level)(data[0] & 3), msg);
	if (n >= cap)
		abort();
	check(out, n);
	free(msg);
	free(out);
	return 0;
}
