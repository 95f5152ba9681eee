/*
 * fuzz_access.c - libFuzzer target for the actions of access(5) and
 * header_checks(5) tables (rules_action_parse, rules.h): the input as a
 * value of each kind. Checks: a refusal says why; a refusal action has a
 * 4xx or 5xx code (never 421) and an enhanced code of its class; text is
 * printable ASCII and terminated; PREPEND holds "Name:"; IGNORE only in
 * header_checks. The same input as a transport_maps value
 * (relay_route_check, relay_route_refusal): a refusal says why; an error:
 * or retry: value gives a 550/450 with a terminated text.
 */
#include "relay.h"
#include "rules.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* bad - report and abort. */
static void bad(const char *what, const char *value)
{
	fprintf(stderr, "fuzz_access: %s: \"%s\"\n", what, value);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 4096 || memchr(data, 0, size))
		return 0;
	char *value = malloc(size + 1);
	memcpy(value, data, size);
	value[size] = 0;
	for (int kind = RULES_ACCESS; kind <= RULES_HEADER; kind++) {
		struct rules_action a;
		char why[300];
		if (rules_action_parse(value, kind, &a, why, sizeof why) < 0) {
			if (!why[0])
				bad("refused without a reason", value);
			continue;
		}
		if (!memchr(a.text, 0, sizeof a.text) || !memchr(a.enh, 0, sizeof a.enh))
			bad("unterminated", value);
		if (a.act == RA_REFUSE || a.act == RA_DEFER_IF_PERMIT || a.act == RA_DEFER_IF_REJECT) {
			if (a.code < 400 || a.code > 599 || a.code == 421 || a.enh[0] != '0' + a.code / 100 ||
			    a.enh[1] != '.')
				bad("bad code", value);
			for (const char *p = a.text; *p; p++)
				if (*p < ' ' || *p > '~')
					bad("unprintable reply text", value);
		}
		if (a.act == RA_PREPEND && !strchr(a.text, ':'))
			bad("PREPEND without a header name", value);
		if (a.act == RA_IGNORE && kind != RULES_HEADER)
			bad("IGNORE in an access map", value);
	}
	char why[300] = "";
	if (relay_route_check(value, why, sizeof why) < 0 && !why[0])
		bad("transport value refused without a reason", value);
	int code = 0;
	char enh[16], text[64];
	if (relay_route_refusal(value, &code, enh, sizeof enh, text, sizeof text) &&
	    ((code != 550 && code != 450) || !memchr(text, 0, sizeof text) || !memchr(enh, 0, sizeof enh)))
		bad("bad error: route", value);
	free(value);
	return 0;
}
