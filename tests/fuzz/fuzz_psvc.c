/*
 * fuzz_psvc.c - libFuzzer target for the policy-service client's answer
 * parser and action interpreter (psvc.h): psvc_reply_parse on a stream of
 * answers as a pooled connection reads them, fed whole and in chunks whose
 * sizes come from the input (both must see the same answers), every prefix
 * of an answer (never complete before its empty line), and
 * psvc_action_parse on each action: a refusal is always a 4xx/5xx reply
 * line with an enhanced code of its class, texts carry no line break. The
 * input is also a service's { } settings (psvc_settings_parse): accepted
 * or refused with a reason, the values in their bounds.
 */
#include "psvc.h"
#include "smtp_proto.h"
#include "chunks.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAXANS 64

/* check_line - a NUL-terminated string of size without control characters */
static void check_line(const char *s, size_t size)
{
	size_t n = strnlen(s, size);

	if (n >= size)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 && s[i] != '\t')
			abort();
}

/* check_action - what an action means is well formed */
static void check_action(const char *action)
{
	static const char *const rcpts[] = {
		"bob@example.com", "Postmaster",
		"a-very-long-local-part-of-sixty-four-characters-xxxxxxxxxxxxxxx@"
		"example.com"
	};
	for (size_t i = 0; i < sizeof rcpts / sizeof rcpts[0]; i++) {
		struct psvc_action a;
		psvc_action_parse(action, rcpts[i], &a);
		check_line(a.reply, sizeof a.reply);
		check_line(a.text, sizeof a.text);
		if (!a.name)
			abort();
		switch (a.kind) {
		case PSVC_REFUSE:
		case PSVC_DEFER_IF_PERMIT:
		case PSVC_DEFER_IF_REJECT:
		case PSVC_INVALID:
			if (a.code < 400 || a.code > 599 || a.reply[0] != '0' + a.code / 100 ||
			    a.reply[3] != ' ' || a.reply[4] != a.reply[0] || a.reply[5] != '.')
				abort();
			break;
		case PSVC_PREPEND:
			if (!strchr(a.text, ':') || strlen(a.text) > 998)
				abort();
			break;
		default:
			if (a.code)
				abort();
		}
	}
}

/* check_answer - an accepted answer and its prefixes */
static void check_answer(const char *buf, size_t len, const char *action, size_t used)
{
	char a2[256];
	size_t used2;

	if (used < 2 || used > len || used > PSVC_MAX_REPLY || buf[used - 1] != '\n')
		abort();
	check_line(action, 256);
	check_action(action);
	size_t step = used > 256 ? used / 64 + 1 : 1;
	for (size_t k = 0; k < used; k += step)
		if (psvc_reply_parse(buf, k, a2, sizeof a2, &used2) != PARSE_AGAIN)
			abort();
	if (psvc_reply_parse(buf, used, a2, sizeof a2, &used2) != PARSE_OK || used2 != used ||
	    strcmp(a2, action) != 0)
		abort();
}

/* stream - the answers of buf[0..len) in turn; returns how many. */
static int stream(const char *buf, size_t len, char (*ans)[256], int *last, size_t *consumed)
{
	int n = 0;
	size_t pos = 0, used;
	char a[256];

	for (;;) {
		*last = psvc_reply_parse(buf + pos, len - pos, a, sizeof a, &used);
		if (*last != PARSE_OK)
			break;
		check_answer(buf + pos, len - pos, a, used);
		if (n < MAXANS)
			memcpy(ans[n], a, sizeof a);
		n++;
		pos += used;
	}
	*consumed = pos;
	return n;
}

/* take_answer - fuzz_take_fn: one answer's action into ans[n] (ctx). */
static int take_answer(void *ctx, const char *buf, size_t len, size_t *used, int n)
{
	char a[256], (*ans)[256] = ctx;
	int rc = psvc_reply_parse(buf, len, a, sizeof a, used);
	if (rc == PARSE_OK && n < MAXANS)
		memcpy(ans[n], a, sizeof a);
	return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char whole[MAXANS][256], chunked[MAXANS][256];
	int last, nwhole;
	size_t consumed;
	char *copy = malloc(size ? size : 1);

	memcpy(copy, data, size); /* exact size: ASan sees reads past it */
	nwhole = stream(copy, size, whole, &last, &consumed);
	if (consumed > size)
		abort();
	/* the whole input as one action value, too */
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = 0;
	for (char *p = s; p < s + size; p++)
		if (*p == '\n' || *p == '\r' || !*p)
			*p = ' ';
	check_action(s);
	struct psvc_service svc = { .name = "inet:127.0.0.1:9", .try_limit = 2, .timeout = 1000 };
	svc.default_action = strdup("DUNNO");
	svc.policy_context = strdup("");
	char err[512] = "";
	if (psvc_settings_parse(&svc, s, err, sizeof err) < 0) {
		if (!err[0])
			abort();
	} else if (svc.try_limit < 1 || svc.timeout < 100 || svc.request_limit < 0 || svc.retry_delay < 0) {
		abort();
	}
	free(svc.default_action);
	free(svc.policy_context);
	free(s);

	size_t start;
	int clast, nchunked = fuzz_chunks(copy, size, take_answer, chunked, &start, &clast);
	if (nchunked != nwhole || start != consumed || clast != last)
		abort();
	for (int i = 0; i < nwhole && i < MAXANS; i++)
		if (strcmp(whole[i], chunked[i]) != 0)
			abort();
	free(copy);
	return 0;
}
