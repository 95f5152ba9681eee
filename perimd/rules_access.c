/*
 * rules_access.c - the actions of Postfix's access(5) and header_checks(5)
 * tables, parsed into what perimd does with them (rules.h). Pure: no map,
 * no session; the RCPT rules (rules.c) and the header checks use it, and
 * map loading calls it on every value (rules_access_check), so a value
 * that passes `perimd -t` is one perimd acts on at RCPT or after DATA.
 *
 * What there is no queue for (HOLD), and what would send mail elsewhere
 * (FILTER, REDIRECT, BCC), is refused with what to write instead.
 */
#include "rules.h"
#include "log.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* copy_text - reply or log text: printable ASCII only, at most 400 bytes. */
static void copy_text(char *dst, size_t dstlen, const char *src)
{
	size_t j = 0;
	for (; *src && j + 1 < dstlen && j < 400; src++)
		dst[j++] = (*src >= ' ' && *src < 127) ? *src : '?';
	if (dstlen)
		dst[j] = 0;
}

/* word_is - the n bytes at w are the word s (any case). */
static int word_is(const char *w, size_t n, const char *s)
{
	return strlen(s) == n && !strncasecmp(w, s, n);
}

/* enh_code - the length of an RFC 3463 code "c.sss.ddd" of class c at s
 * (followed by a blank or the end), or 0. */
static size_t enh_code(const char *s, char c)
{
	if (s[0] != c || s[1] != '.')
		return 0;
	size_t i = 2, d = strspn(s + i, "0123456789");
	if (d < 1 || d > 3 || s[i + d] != '.')
		return 0;
	i += d + 1;
	d = strspn(s + i, "0123456789");
	if (d < 1 || d > 3 || (s[i + d] && s[i + d] != ' ' && s[i + d] != '\t'))
		return 0;
	return i + d;
}

/* header_ok - "Name: value": a field name of printable ASCII without
 * blanks or ':' (RFC 5322 §2.2), a colon, and printable text. */
static int header_ok(const char *h)
{
	size_t n = 0;
	while (h[n] > ' ' && h[n] < 127 && h[n] != ':')
		n++;
	if (n == 0 || h[n] != ':')
		return 0;
	for (const char *p = h + n; *p; p++)
		if ((*p < ' ' && *p != '\t') || *p == 127)
			return 0;
	return strlen(h) < 900;
}

/* set_reply - a refusal: code, enhanced code (given, or the default of
 * its class) and text (given, or dflt). */
static void set_reply(struct rules_action *a, int code, const char *rest, const char *dflt)
{
	char cls = (char)('0' + code / 100);
	size_t e = enh_code(rest, cls);
	a->code = code;
	if (e) {
		snprintf(a->enh, sizeof a->enh, "%.*s", (int)e, rest);
		rest += e;
		rest += strspn(rest, " \t");
	} else {
		snprintf(a->enh, sizeof a->enh, "%c.7.1", cls);
	}
	copy_text(a->text, sizeof a->text, *rest ? rest : dflt);
}

/* refused_action - why perimd cannot take action word w, with what to write. */
static const char *refused_action(const char *w, size_t n)
{
	if (word_is(w, n, "HOLD"))
		return "HOLD: perimd has no queue to hold mail in; write DEFER text (the sender retries), "
		       "DISCARD or REJECT text";
	if (word_is(w, n, "FILTER") || word_is(w, n, "REDIRECT") || word_is(w, n, "BCC"))
		return "FILTER, REDIRECT and BCC are not supported: perimd relays each message to its "
		       "recipients' backends only; route with transport_maps";
	if (word_is(w, n, "REPLACE") || word_is(w, n, "STRIP"))
		return "REPLACE and STRIP are not supported: write IGNORE (delete the header) or PREPEND";
	return NULL;
}

/* rules_action_parse - see rules.h. */
int rules_action_parse(const char *value, int kind, struct rules_action *a, char *why, size_t whylen)
{
	const char *v = value + strspn(value, " \t");
	size_t n = strcspn(v, " \t");
	const char *rest = v + n + strspn(v + n, " \t");
	const char *no;
	memset(a, 0, sizeof *a);
	if (why && whylen)
		why[0] = 0;
	if ((no = refused_action(v, n))) {
		snprintf(why, whylen, "%s", no);
		return -1;
	}
	if (word_is(v, n, "DUNNO") || (kind == RULES_HEADER && word_is(v, n, "OK"))) {
		a->act = RA_DUNNO;
	} else if (kind == RULES_ACCESS && (word_is(v, n, "OK") || word_is(v, n, "PERMIT"))) {
		a->act = RA_OK;
	} else if (word_is(v, n, "REJECT")) {
		a->act = RA_REFUSE;
		set_reply(a, 550, rest, "");
	} else if (kind == RULES_ACCESS && word_is(v, n, "DEFER")) {
		a->act = RA_REFUSE;
		set_reply(a, 450, rest, "");
	} else if (kind == RULES_ACCESS && word_is(v, n, "DEFER_IF_PERMIT")) {
		a->act = RA_DEFER_IF_PERMIT;
		set_reply(a, 450, rest, "");
	} else if (kind == RULES_ACCESS && word_is(v, n, "DEFER_IF_REJECT")) {
		a->act = RA_DEFER_IF_REJECT;
		set_reply(a, 450, rest, "");
	} else if (kind == RULES_ACCESS && n == 3 && !strncmp(v, "421", 3)) {
		snprintf(why, whylen, "421 closes the session, which an access map cannot: write 450 text");
		return -1;
	} else if (kind == RULES_ACCESS && n == 3 && (v[0] == '4' || v[0] == '5') &&
		   isdigit((unsigned char)v[1]) && isdigit((unsigned char)v[2])) {
		a->act = RA_REFUSE;
		set_reply(a, (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0'), rest, "");
	} else if (word_is(v, n, "WARN") || word_is(v, n, "INFO")) {
		a->act = RA_WARN;
		copy_text(a->text, sizeof a->text, rest);
	} else if (word_is(v, n, "DISCARD")) {
		a->act = RA_DISCARD;
		copy_text(a->text, sizeof a->text, rest);
	} else if (word_is(v, n, "PREPEND")) {
		if (!header_ok(rest)) {
			snprintf(why, whylen, "PREPEND needs a header, \"PREPEND Name: value\"");
			return -1;
		}
		a->act = RA_PREPEND;
		snprintf(a->text, sizeof a->text, "%s", rest);
		return 0;
	} else if (kind == RULES_HEADER && word_is(v, n, "IGNORE")) {
		a->act = RA_IGNORE;
	} else {
		snprintf(why, whylen,
			 kind == RULES_ACCESS
			     ? "\"%.40s\" is no action perimd takes; write OK, PERMIT, DUNNO, REJECT "
			       "[text], DEFER [text], DEFER_IF_PERMIT [text], DEFER_IF_REJECT [text], "
			       "4NN text, 5NN text, WARN text, DISCARD [text] or PREPEND header: value"
			     : "\"%.40s\" is no action perimd takes; write REJECT [text], WARN text, "
			       "IGNORE, PREPEND header: value, DISCARD [text] or DUNNO",
			 v);
		return -1;
	}
	if ((a->act == RA_OK || a->act == RA_DUNNO || a->act == RA_IGNORE) && *rest) {
		snprintf(why, whylen, "%.*s takes no text", (int)n, v);
		return -1;
	}
	return 0;
}

/* rules_access_check - see rules.h. */
int rules_access_check(const char *value, char *why, size_t whylen)
{
	struct rules_action a;
	return rules_action_parse(value, RULES_ACCESS, &a, why, whylen);
}

/* rules_header_check - see rules.h. */
int rules_header_check(const char *value, char *why, size_t whylen)
{
	struct rules_action a;
	return rules_action_parse(value, RULES_HEADER, &a, why, whylen);
}
