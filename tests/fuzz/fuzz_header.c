/*
 * fuzz_header.c - libFuzzer target for smtp_header_value: byte 0 picks
 * the field name and the output size; the value found is bounded, free of
 * control characters and of leading/trailing spaces, and the same when the
 * input is given with LF or CRLF line ends.
 */
#include "smtp_proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* check - the invariants of one answer */
static void check(int found, const char *out, size_t outlen)
{
	size_t n = strlen(out);
	if (n >= outlen || (!found && n))
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
			abort();
	if (n && (out[0] == ' ' || out[n - 1] == ' '))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const names[] = { "Message-ID", "Subject", "x", "Received" };
	if (size < 1)
		return 0;
	const char *name = names[data[0] & 3];
	size_t outlen = 1 + (data[0] >> 2);
	const char *in = (const char *)data + 1;
	size_t len = size - 1;
	char *out = malloc(outlen), *out2 = malloc(outlen);
	int f = smtp_header_value(in, len, name, out, outlen);
	check(f, out, outlen);
	/* LF line ends turned into CRLF: the same answer. */
	char *crlf = malloc(2 * len + 1);
	size_t k = 0;
	int bare = 1;
	for (size_t i = 0; i < len; i++) {
		if (in[i] == '\r')
			bare = 0;
		if (in[i] == '\n')
			crlf[k++] = '\r';
		crlf[k++] = in[i];
	}
	if (bare) {
		int g = smtp_header_value(crlf, k, name, out2, outlen);
		if (g != f || strcmp(out, out2))
			abort();
	}
	free(crlf);
	free(out);
	free(out2);
	return 0;
}
