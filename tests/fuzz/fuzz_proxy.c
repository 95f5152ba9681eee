/*
 * fuzz_proxy.c - the PROXY header parser on arbitrary bytes: never reads
 * past the input, consumed within bounds, addresses always printable.
 */
#include "proxy.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxy_hdr h;
	size_t used = 0;
	unsigned char *copy = malloc(size ? size : 1);
	memcpy(copy, data, size);
	if (proxy_parse(copy, size, &h, &used) == PARSE_OK) {
		if (used == 0 || used > size)
			abort();
		if (!h.local && (strlen(h.src) == 0 || strlen(h.src) >= sizeof h.src))
			abort();
	}
	free(copy);
	return 0;
}
