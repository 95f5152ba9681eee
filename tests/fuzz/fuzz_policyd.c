/*
 * fuzz_policyd.c - libFuzzer target for the policy delegation request
 * parser: policyd_parse on a stream of requests as the server reads them
 * (each request consumed, the next parsed from the rest), fed whole and
 * in chunks whose sizes come from the input (the two must see the same
 * requests), every prefix of a request (never an answer before its empty
 * line), the fields' bounds, and policyd_action on each recipient.
 */
#include "grey.h"
#include "policyd.h"
#include "smtp_proto.h"
#include "chunks.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAXREQ 64

/* check_field - a field is a NUL-terminated string without line breaks */
static void check_field(const char *f, size_t size)
{
	size_t n = strnlen(f, size);

	if (n >= size || memchr(f, '\n', n))
		abort();
}

/* check_req - an accepted request and its prefixes */
static void check_req(const char *buf, size_t len, const struct policyd_req *r, size_t used)
{
	struct policyd_req r2;
	size_t used2;

	if (used < 1 || used > len || used > POLICYD_MAX_REQUEST || buf[used - 1] != '\n')
		abort();
	check_field(r->request, sizeof r->request);
	check_field(r->protocol_state, sizeof r->protocol_state);
	check_field(r->client_address, sizeof r->client_address);
	check_field(r->client_name, sizeof r->client_name);
	check_field(r->sender, sizeof r->sender);
	check_field(r->recipient, sizeof r->recipient);
	/* prefixes: incomplete until the empty line (all of them when
	 * short, else a spread and the last one) */
	size_t step = used > 256 ? used / 64 + 1 : 1;
	for (size_t k = 0; k < used; k += step)
		if (policyd_parse(buf, k, &r2, &used2) != PARSE_AGAIN)
			abort();
	if (policyd_parse(buf, used - 1, &r2, &used2) != PARSE_AGAIN)
		abort();
	/* the answer does not depend on what follows */
	if (policyd_parse(buf, used, &r2, &used2) != PARSE_OK || used2 != used ||
	    memcmp(&r2, r, sizeof r2) != 0)
		abort();
	static const struct grey_result results[] = {
		{ GREY_DEFER, 300, 1, 0, 0 }, { GREY_PASSED, 0, 0, 0, 0 },
		{ GREY_FAIL, 0, 0, 1, 0 }, { GREY_FAIL, 0, 0, 0, 0 }, { GREY_OFF, 0, 0, 0, 0 },
		{ GREY_LIMIT, 0, 0, 0, 0 }, { GREY_LIMIT, 0, 0, 0, 1 },
	};
	for (size_t i = 0; i < sizeof results / sizeof results[0]; i++) {
		char out[1024];
		policyd_action(&results[i], r->recipient, out, sizeof out);
		if (strncmp(out, "action=", 7) != 0 || strchr(out, '\n'))
			abort();
	}
}

/* stream - the requests of buf[0..len) as pc_read takes them; returns
 * how many, and the last answer (OK when all was consumed). */
static int stream(const char *buf, size_t len, struct policyd_req *reqs, int *last,
		  size_t *consumed)
{
	int n = 0;
	size_t pos = 0, used;
	struct policyd_req r;

	for (;;) {
		*last = policyd_parse(buf + pos, len - pos, &r, &used);
		if (*last != PARSE_OK)
			break;
		check_req(buf + pos, len - pos, &r, used);
		if (n < MAXREQ)
			reqs[n] = r;
		n++;
		pos += used;
	}
	*consumed = pos;
	return n;
}

/* take_req - fuzz_take_fn: one request into reqs[n] (ctx). */
static int take_req(void *ctx, const char *buf, size_t len, size_t *used, int n)
{
	struct policyd_req r, *reqs = ctx;
	int rc = policyd_parse(buf, len, &r, used);
	if (rc == PARSE_OK && n < MAXREQ)
		reqs[n] = r;
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct policyd_req whole[MAXREQ], chunked[MAXREQ];
	const char *buf = (const char *)data;
	int last, nwhole;
	size_t consumed;
	char *copy = malloc(size ? size : 1);

	/* an exact-size copy: ASan sees any read past the input */
	memcpy(copy, buf, size);
	nwhole = stream(copy, size, whole, &last, &consumed);
	if (consumed > size)
		abort();

	/* Chunked, as reads arrive. */
	size_t start;
	int clast, nchunked = fuzz_chunks(copy, size, take_req, chunked, &start, &clast);
	/* the same requests, and the same end: a refusal at the same
	 * place (a line is refused only once complete, an over-long one
	 * once past the limit, whatever the chunks) */
	if (nchunked != nwhole || start != consumed)
		abort();
	for (int i = 0; i < nwhole && i < MAXREQ; i++)
		if (memcmp(&whole[i], &chunked[i], sizeof whole[i]) != 0)
			abort();
	if (clast != last)
		abort();
	free(copy);
	return 0;
}
