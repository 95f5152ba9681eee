/*
 * fuzz_regexp.c - libFuzzer target for regexp: maps (maps_regexp.h):
 * map_regexp_parse on the input, with the access maps' check of each
 * result, then map_regexp_lookup on keys made from its lines and a few
 * fixed ones. Checks: a refused table names a line ("NAME:LINE: "); an
 * answer of a loaded table is a value the access maps act on, or one
 * whose action came from a $N group (the check sees the text before
 * expansion); the answer always fits the buffer and is NUL-terminated.
 */
#include "maps_regexp.h"
#include "rules.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const fixed[] = {
		"", "a", "user@example.com", "192.0.2.1", "spam42@client.test", "$1", "/",
	};
	char err[4096], val[64];
	struct map_regexp *t = map_regexp_parse((const char *)data, size, "F", rules_access_check, err, sizeof err);
	if (!t) {
		if (strncmp(err, "F:", 2) != 0) {
			fprintf(stderr, "fuzz_regexp: refusal without a line: %s\n", err);
			abort();
		}
		return 0;
	}
	char key[256];
	size_t pos = 0;
	for (int k = 0; k < 24; k++) {
		const char *q;
		if (k < (int)(sizeof fixed / sizeof fixed[0])) {
			q = fixed[k];
		} else {
			if (pos >= size)
				break;
			const uint8_t *nl = memchr(data + pos, '\n', size - pos);
			size_t e = nl ? (size_t)(nl - data) : size, n = e - pos;
			if (n >= sizeof key)
				n = sizeof key - 1;
			memcpy(key, data + pos, n);
			key[n] = 0;
			pos = e + 1;
			q = key;
		}
		memset(val, 'x', sizeof val);
		if (map_regexp_lookup(t, q, val, sizeof val) && !memchr(val, 0, sizeof val)) {
			fprintf(stderr, "fuzz_regexp: answer not terminated\n");
			abort();
		}
	}
	map_regexp_free(t);
	return 0;
}
