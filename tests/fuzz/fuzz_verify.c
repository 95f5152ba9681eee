/*
 * fuzz_verify.c - libFuzzer target for the recipient verdict cache: a
 * backend's reply line, sender, recipient and flags (input lines 1-4) go
 * through verify_enh, verify_learn and verify_lookup. Invariants: the
 * enhanced code is a prefix of the reply's text of the reply's class; only
 * allow-listed codes are answered to another sender, never to a role
 * account; a cached reply is "CODE ENH <rcpt>: " and perimd's text, which
 * names nobody (no '@'): never the sender that filled the entry.
 */
#include "conf.h"
#include "verify.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct conf *cf;

/* check_reply - out is "CODE ENH <rcpt>: text", text without an address. */
static void check_reply(const char *out, int code, const char *rcpt)
{
	char enh[16], pre[512];
	size_t n;

	verify_enh(out, enh, sizeof enh);
	if (code < 400 || code > 599 || !enh[0])
		abort();
	n = (size_t)snprintf(pre, sizeof pre, "%d %s <%.300s>: ", code, enh, rcpt);
	if (n >= sizeof pre || strncmp(out, pre, n) || strchr(out + n, '@') || !out[n])
		abort();
}

/* field - the n-th '\n'-separated line of data into out (cut to outlen). */
static void field(const char *data, size_t size, int n, char *out, size_t outlen)
{
	size_t i = 0, o = 0;

	while (n > 0 && i < size)
		if (data[i++] == '\n')
			n--;
	while (i < size && data[i] != '\n' && o + 1 < outlen)
		out[o++] = data[i++] ? data[i - 1] : ' ';
	out[o] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char reply[600], sender[700], rcpt[400], other[710], flagstr[8], enh[16], out[512];
	enum verify_kept kept;
	unsigned flags;
	int code = 0, role;

	if (!cf) {
		char err[256];

		cf = conf_load(NULL, 0, NULL, 0, err, sizeof err);
		if (!cf)
			abort();
		verify_init(256);
	}
	field((const char *)data, size, 0, reply, sizeof reply);
	field((const char *)data, size, 1, sender, sizeof sender);
	field((const char *)data, size, 2, rcpt, sizeof rcpt);
	field((const char *)data, size, 3, flagstr, sizeof flagstr);
	flags = flagstr[0] ? (unsigned)flagstr[0] & 3u : 0;
	role = flagstr[0] ? ((unsigned)flagstr[0] >> 2) & 1 : 0;
	if (reply[0] >= '1' && reply[0] <= '9' && reply[1] >= '0' && reply[1] <= '9' &&
	    reply[2] >= '0' && reply[2] <= '9')
		code = (reply[0] - '0') * 100 + (reply[1] - '0') * 10 + (reply[2] - '0');

	verify_enh(reply, enh, sizeof enh);
	if (enh[0] && (enh[0] != reply[0] || enh[1] != '.' || strlen(enh) > 9 ||
		       strncmp(reply + 4, enh, strlen(enh))))
		abort();
	if (verify_mailbox_code(code, enh) && !enh[0])
		abort();

	kept = verify_learn(sender, rcpt, code, reply, flags, cf);
	if (kept != VERIFY_NOT_KEPT && (code < 400 || code > 599 || code == 421))
		abort();
	if (kept == VERIFY_KEPT_RCPT && !verify_mailbox_code(code, enh))
		abort();
	/* Another sender: never this one, a case variant of it, nor any
	 * earlier input's sender (the cache outlives an input, and field()
	 * never yields a '\n', so no input can have filled an entry for it). */
	snprintf(other, sizeof other, "%s\nx", sender);
	for (int r = 0; r < 2; r++) {
		enum verify_verdict v = verify_lookup(other, rcpt, r, &code, out, sizeof out);

		if (v == VERIFY_REFUSED) {
			verify_enh(out, enh, sizeof enh);
			/* From another sender: only the allow-list, never a role. */
			if (r || !verify_mailbox_code(code, enh))
				abort();
			check_reply(out, code, rcpt);
		}
	}
	if (verify_lookup(sender, rcpt, role, &code, out, sizeof out) == VERIFY_REFUSED)
		check_reply(out, code, rcpt);
	return 0;
}
