/*
 * rules_header.c - header_checks: a regexp: table (Postfix's
 * header_checks(5)) applied to each logical header of the stored message
 * after the final dot, before the virus scan and the relay (rules.h).
 *
 * Invariants: only the message's top-level header section is read (up to
 * the first empty line, at most HC_MAX_HEADER bytes; a longer section is
 * checked up to there); each logical header is matched once, its folded
 * lines joined by "\n" (CR removed), as Postfix's cleanup does. The first
 * REJECT or DISCARD ends the checks. The stored message is never changed
 * in place: IGNORE and PREPEND build a new spool (the headers rewritten,
 * the body copied), which the caller swaps in.
 */
#include "rules.h"
#include "buf.h"
#include "log.h"
#include "maps.h"
#include "spool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HC_MAX_HEADER (1024 * 1024)

/* read_headers - the header section of sp (through its empty line, or all
 * of the first HC_MAX_HEADER bytes) into h; its length, -1 on error. */
static ssize_t read_headers(struct spool *sp, struct strbuf *h)
{
	char buf[8192];
	uint64_t off = 0;
	while (off < HC_MAX_HEADER) {
		ssize_t n = spool_read(sp, off, buf, sizeof buf);
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		size_t from = h->len > 3 ? h->len - 3 : 0;
		sb_add(h, buf, (size_t)n);
		off += (uint64_t)n;
		if (h->len >= 2 && !memcmp(h->p, "\r\n", 2))
			return 0; /* no headers at all */
		char *e = memmem(h->p + from, h->len - from, "\r\n\r\n", 4);
		if (e)
			return (e - h->p) + 2; /* the headers, without the empty line */
	}
	return (ssize_t)(h->len < HC_MAX_HEADER ? h->len : HC_MAX_HEADER);
}

/* one_header - the logical header at h[0..n) (its CRLFs), as matched:
 * folded lines joined by "\n". */
static char *one_header(const char *h, size_t n)
{
	char *k = xmalloc(n + 1);
	size_t o = 0;
	for (size_t i = 0; i < n; i++)
		if (h[i] != '\r')
			k[o++] = h[i];
	while (o > 0 && k[o - 1] == '\n')
		o--;
	k[o] = 0;
	return k;
}

/* header_end - the end of the logical header starting at h[i] in the
 * section of length n (after its last CRLF). */
static size_t header_end(const char *h, size_t n, size_t i)
{
	while (i < n) {
		const char *nl = memmem(h + i, n - i, "\r\n", 2);
		i = nl ? (size_t)(nl - h) + 2 : n;
		if (i >= n || (h[i] != ' ' && h[i] != '\t'))
			return i;
	}
	return n;
}

/* rewrite - a new spool: the edited headers, then sp from off on. */
static struct spool *rewrite(struct spool *sp, const struct strbuf *head, uint64_t off)
{
	struct spool *ns = spool_new();
	char buf[16384];
	ssize_t n;
	if (head->len && spool_append(ns, head->p, head->len) < 0)
		goto fail;
	while ((n = spool_read(sp, off, buf, sizeof buf)) > 0) {
		if (spool_append(ns, buf, (size_t)n) < 0)
			goto fail;
		off += (uint64_t)n;
	}
	if (n < 0)
		goto fail;
	spool_finish(ns);
	return ns;
fail:
	spool_free(ns);
	return NULL;
}

/* apply - one header's answer: 1 when it ends the checks (out filled). */
static int apply(const char *value, const char *hdr, const char *raw, size_t rawlen, const char *msgid,
		 struct strbuf *head, int *changed, struct rules_hc *out)
{
	struct rules_action a;
	char why[300];
	if (rules_action_parse(value, RULES_HEADER, &a, why, sizeof why) < 0) {
		log_warn("%s: header_checks: value \"%s\": %s", msgid, value, why);
		sb_add(head, raw, rawlen);
		return 0;
	}
	switch (a.act) {
	case RA_REFUSE:
		log_info("%s: reject: header %.200s: %s", msgid, hdr, a.text[0] ? a.text : "(no text)");
		out->verdict = RULES_HC_REFUSE;
		snprintf(out->reply, sizeof out->reply, "%d %s %s", a.code, a.enh,
			 a.text[0] ? a.text : "message content rejected");
		return 1;
	case RA_DISCARD:
		log_info("%s: discard: header %.200s%s%s", msgid, hdr, a.text[0] ? ": " : "", a.text);
		out->verdict = RULES_HC_DISCARD;
		return 1;
	case RA_WARN: log_warn("%s: warning: header %.200s: %s", msgid, hdr, a.text); break;
	case RA_IGNORE: *changed = 1; return 0; /* the header is left out */
	case RA_PREPEND:
		sb_add(head, a.text, strlen(a.text));
		sb_add(head, "\r\n", 2);
		*changed = 1;
		break;
	default: break;
	}
	sb_add(head, raw, rawlen);
	return 0;
}

/* rules_header_checks - see rules.h. */
int rules_header_checks(const struct map *m, struct spool *sp, const char *msgid, struct rules_hc *out)
{
	struct strbuf h = { 0 }, head = { 0 };
	memset(out, 0, sizeof *out);
	ssize_t n = read_headers(sp, &h);
	if (n < 0) {
		sb_free(&h);
		return -1;
	}
	int changed = 0, done = 0;
	for (size_t i = 0; i < (size_t)n && !done;) {
		size_t e = header_end(h.p, (size_t)n, i);
		char *hdr = one_header(h.p + i, e - i);
		char val[1024], err[256];
		int r = map_query(m, MAP_KEY, hdr, val, sizeof val, err, sizeof err);
		if (r > 0)
			done = apply(val, hdr, h.p + i, e - i, msgid, &head, &changed, out);
		else
			sb_add(&head, h.p + i, e - i);
		free(hdr);
		i = e;
	}
	if (!done && changed) {
		out->rewritten = rewrite(sp, &head, (uint64_t)n);
		if (!out->rewritten) {
			sb_free(&h);
			sb_free(&head);
			return -1;
		}
	}
	sb_free(&h);
	sb_free(&head);
	return 0;
}
