/*
 * fuzz_http.c - libFuzzer target for the stats_listen request parser and
 * the history file parser: http_request_parse on the input and every
 * prefix of it (a prefix never gives an answer the whole would contradict:
 * OK and BAD are final), the fields of an accepted head, and
 * history_parse on the same bytes.
 */
#include "http.h"
#include "history.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static struct history hist;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct http_req rq;
	size_t used = 0;
	enum parse_result whole = http_request_parse(buf, size, &rq, &used);
	if (whole == PARSE_OK) {
		if (used == 0 || used > size || used > HTTP_REQ_MAX || buf[used - 1] != '\n' ||
		    rq.path[0] != '/' || strlen(rq.method) == 0 || (rq.minor != 0 && rq.minor != 1))
			abort();
	}
	/* Prefixes: a final answer (OK/BAD) on a prefix stays that answer. */
	size_t step = size > 512 ? size / 64 + 1 : 1;
	for (size_t n = 0; n < size; n += step) {
		size_t u;
		struct http_req r2;
		enum parse_result p = http_request_parse(buf, n, &r2, &u);
		if (p == PARSE_OK && (whole != PARSE_OK || u != used))
			abort();
		if (p == PARSE_BAD && whole != PARSE_BAD)
			abort();
	}
	history_parse(&hist, buf, size);
	return 0;
}
