/*
 * fuzz_hdrchk.c - libFuzzer target for header_checks on a stored message
 * (rules_header_checks, rules.h): the input, made canonical (every line
 * ending in CRLF), is the message; a fixed regexp: table with every
 * action is applied. Checks: a refusal has a 5xx reply; when the headers
 * were rewritten, the new message ends with exactly the old body (all
 * after the first empty line) and no header the table IGNOREs is left.
 */
#include "maps.h"
#include "rules.h"
#include "spool.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char table[] = "/^X-Drop:/ IGNORE\n"
			    "/^Subject: .*reject/ REJECT 5.7.1 no\n"
			    "/^Subject: .*discard/ DISCARD\n"
			    "/^X-Tag:/ PREPEND X-Tagged: yes\n"
			    "/^From: .*warn/ WARN watch\n"
			    "/^X-Fold: a[[:space:]]+b/ IGNORE\n";

/* spool_text - the whole content of a spool (malloc'd, *n bytes). */
static char *spool_text(struct spool *sp, size_t *n)
{
	size_t len = (size_t)spool_size(sp);
	char *t = malloc(len + 1);
	ssize_t r = len ? spool_read(sp, 0, t, len) : 0;
	if (r < 0 || (size_t)r != len)
		abort();
	t[len] = 0;
	*n = len;
	return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct map *m;
	if (!m) {
		char path[] = "/tmp/fuzz_hdrchk.XXXXXX", spec[64], err[512];
		int fd = mkstemp(path);
		if (fd < 0 || write(fd, table, sizeof table - 1) != (ssize_t)(sizeof table - 1))
			abort();
		close(fd);
		snprintf(spec, sizeof spec, "regexp:%s", path);
		spool_global_init("/tmp", 1 << 20, 1 << 30);
		m = map_open_checked(spec, rules_header_check, err, sizeof err);
		unlink(path);
		if (!m)
			abort();
	}
	/* canonical form: CRLF line ends, no NUL (as smtp_data_feed stores) */
	char *msg = malloc(2 * size + 4);
	size_t n = 0;
	for (size_t i = 0; i < size; i++) {
		if (data[i] == '\r' || data[i] == 0)
			continue;
		if (data[i] == '\n')
			msg[n++] = '\r';
		msg[n++] = (char)data[i];
	}
	if (n == 0 || msg[n - 1] != '\n') {
		msg[n++] = '\r';
		msg[n++] = '\n';
	}
	msg[n] = 0;
	struct spool *sp = spool_new();
	if (spool_append(sp, msg, n) < 0)
		abort();
	spool_finish(sp);
	struct rules_hc hc;
	if (rules_header_checks(m, sp, "fuzz", &hc) < 0)
		abort();
	if (hc.verdict == RULES_HC_REFUSE && hc.reply[0] != '5')
		abort();
	if (hc.rewritten) {
		size_t nn;
		char *t = spool_text(hc.rewritten, &nn);
		/* the body: after the empty line (a message whose headers all
		 * went starts with it) */
		const char *ob = strstr(msg, "\r\n\r\n"), *nb = strstr(t, "\r\n\r\n");
		const char *nbody = !strncmp(t, "\r\n", 2) ? t + 2 : nb ? nb + 4 : NULL;
		if (ob && (!nbody || strcmp(ob + 4, nbody) != 0))
			abort();
		const char *hend = !strncmp(t, "\r\n", 2) ? t : nb ? nb : t + nn;
		for (const char *p = t; p && p < hend; p = strstr(p, "\r\n"), p = p ? p + 2 : p)
			if (!strncasecmp(p, "X-Drop:", 7))
				abort();
		free(t);
		spool_free(hc.rewritten);
	}
	spool_free(sp);
	free(msg);
	return 0;
}
