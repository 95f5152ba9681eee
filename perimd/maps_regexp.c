/*
 * maps_regexp.c - regexp: maps, in the shape of Postfix's regexp_table(5)
 * (see maps_regexp.h for the syntax).
 *
 * Invariants: a table is immutable once parsed (glibc's regexec() is
 * thread-safe), so lookups need no lock. Every pattern passes recost's
 * limits (those of greylisting's whitelists) before regcomp() sees it,
 * and the patterns of one file together are bounded the same way. A file
 * with any bad line does not load; every bad line is reported.
 */
#include "maps_regexp.h"
#include "buf.h"
#include "log.h"
#include "recost.h"

#include <ctype.h>
#include <errno.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RX_MAX_RULES 10000
#define RX_MAX_DEPTH 32

struct rx_rule {
	regex_t re;
	int negate;   /* !/pattern/: matches when the pattern does not */
	int is_if;    /* an "if": when it does not match, go to skip */
	int skip;     /* index after the matching endif */
	char *result; /* NULL for an if */
	int line;
};

struct map_regexp {
	struct rx_rule *r;
	int n;
};

/* map_regexp_free - see maps_regexp.h. */
void map_regexp_free(struct map_regexp *t)
{
	if (!t)
		return;
	for (int i = 0; i < t->n; i++) {
		regfree(&t->r[i].re);
		free(t->r[i].result);
	}
	free(t->r);
	free(t);
}

/* pattern_end - the closing '/' of a pattern starting after the opening
 * one at p ('\' escapes the next byte), or NULL. */
static const char *pattern_end(const char *p)
{
	for (; *p; p++) {
		if (*p == '\\' && p[1])
			p++;
		else if (*p == '/')
			return p;
	}
	return NULL;
}

/* parse_pattern - "[!]/pattern/flags" at s into rule r; *rest is what
 * follows the flags. 0, or -1 with why. */
static int parse_pattern(const char *s, struct rx_rule *r, struct recost *cost, const char **rest, char *why,
			 size_t whylen)
{
	if (*s == '!') {
		r->negate = 1;
		s++;
	}
	if (*s != '/') {
		snprintf(why, whylen, "expected /pattern/ (perimd takes '/' as the only delimiter)");
		return -1;
	}
	const char *end = pattern_end(s + 1);
	if (!end) {
		snprintf(why, whylen, "unterminated /pattern/");
		return -1;
	}
	int cflags = REG_EXTENDED | REG_ICASE;
	const char *f = end + 1;
	for (; *f && !isspace((unsigned char)*f); f++) {
		if (*f == 'i')
			cflags ^= REG_ICASE;
		else if (*f == 'm')
			cflags |= REG_NEWLINE;
		else {
			snprintf(why, whylen, "flag '%c' not supported (i and m are)", *f);
			return -1;
		}
	}
	char *pat = xstrndup(s + 1, (size_t)(end - s - 1));
	const char *c = recost_add(cost, pat);
	int rc = c ? 0 : regcomp(&r->re, pat, r->negate ? cflags | REG_NOSUB : cflags);
	free(pat);
	if (c) {
		snprintf(why, whylen, "pattern %s", c);
		return -1;
	}
	if (rc) {
		char e[128];
		regerror(rc, &r->re, e, sizeof e);
		regfree(&r->re);
		snprintf(why, whylen, "bad pattern: %s", e);
		return -1;
	}
	*rest = f + strspn(f, " \t");
	return 0;
}

/* parse_line - one logical line: a rule, "if", or "endif" (the if stack
 * in stack/depth). 0, or -1 with why. */
static int parse_line(struct map_regexp *t, const char *s, int line, map_regexp_check_fn *check,
		      struct recost *cost, int *stack, int *depth, char *why, size_t whylen)
{
	size_t w = strcspn(s, " \t");
	if (w == 5 && !strncasecmp(s, "endif", 5)) {
		if (s[5 + strspn(s + 5, " \t")]) {
			snprintf(why, whylen, "endif takes nothing after it");
			return -1;
		}
		if (*depth == 0) {
			snprintf(why, whylen, "endif without if");
			return -1;
		}
		t->r[stack[--*depth]].skip = t->n;
		return 0;
	}
	if (t->n >= RX_MAX_RULES) {
		snprintf(why, whylen, "more than %d patterns", RX_MAX_RULES);
		return -1;
	}
	struct rx_rule r = { .line = line };
	const char *rest;
	int is_if = w == 2 && !strncasecmp(s, "if", 2);
	if (is_if && *depth >= RX_MAX_DEPTH) {
		snprintf(why, whylen, "if nested deeper than %d", RX_MAX_DEPTH);
		return -1;
	}
	if (parse_pattern(is_if ? s + 2 + strspn(s + 2, " \t") : s, &r, cost, &rest, why, whylen) < 0)
		return -1;
	const char *err = NULL;
	char cwhy[300];
	if (is_if && *rest)
		err = "if takes a pattern only; the result goes on the lines up to endif";
	else if (!is_if && !*rest)
		err = "a pattern without a result";
	else if (!is_if && check && check(rest, cwhy, sizeof cwhy) < 0)
		err = cwhy;
	if (err) {
		snprintf(why, whylen, "%s", err);
		regfree(&r.re);
		return -1;
	}
	r.is_if = is_if;
	r.result = is_if ? NULL : xstrdup(rest);
	t->r = xrealloc(t->r, (size_t)(t->n + 1) * sizeof *t->r);
	if (is_if)
		stack[(*depth)++] = t->n;
	t->r[t->n++] = r;
	return 0;
}

/* map_regexp_parse - see maps_regexp.h. */
struct map_regexp *map_regexp_parse(const char *text, size_t len, const char *name,
				    map_regexp_check_fn *check, char *err, size_t errlen)
{
	struct map_regexp *t = xcalloc(1, sizeof *t);
	struct recost cost = { 0, 0 };
	int stack[RX_MAX_DEPTH], depth = 0, bad = 0, lineno = 0, start = 0;
	char why[400];
	char *cur = NULL;
	size_t curlen = 0;
	if (errlen)
		err[0] = 0;
	for (size_t pos = 0; pos <= len;) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t e = nl ? (size_t)(nl - text) : len;
		const char *l = text + pos;
		size_t ll = e - pos;
		int last = !nl;
		pos = e + 1;
		lineno++;
		if (memchr(l, 0, ll)) {
			log_err_add(err, errlen, "%s:%d: NUL byte in line", name, lineno);
			bad = 1;
			ll = 0;
		}
		size_t lead = 0;
		while (lead < ll && isspace((unsigned char)l[lead]))
			lead++;
		while (ll > lead && isspace((unsigned char)l[ll - 1]))
			ll--;
		int blank = ll == lead || l[lead] == '#';
		if (!blank && lead > 0 && start) { /* a continuation line */
			cur = xrealloc(cur, curlen + (ll - lead) + 2);
			cur[curlen++] = ' ';
			memcpy(cur + curlen, l + lead, ll - lead);
			cur[curlen += ll - lead] = 0;
		} else if (!blank && lead > 0) {
			log_err_add(err, errlen, "%s:%d: continuation line without a pattern line before it",
				    name, lineno);
			bad = 1;
		}
		if ((!blank && lead == 0) || last) {
			if (start &&
			    parse_line(t, cur, start, check, &cost, stack, &depth, why, sizeof why) < 0) {
				log_err_add(err, errlen, "%s:%d: %s", name, start, why);
				bad = 1;
			}
			start = 0;
			if (!blank && lead == 0) {
				cur = xrealloc(cur, ll + 1);
				memcpy(cur, l, ll);
				cur[curlen = ll] = 0;
				start = lineno;
			}
		}
		if (last)
			break;
	}
	if (start && parse_line(t, cur, start, check, &cost, stack, &depth, why, sizeof why) < 0) {
		log_err_add(err, errlen, "%s:%d: %s", name, start, why);
		bad = 1;
	}
	free(cur);
	if (depth > 0) {
		log_err_add(err, errlen, "%s:%d: if without endif", name, t->r[stack[depth - 1]].line);
		bad = 1;
	}
	if (bad) {
		map_regexp_free(t);
		return NULL;
	}
	return t;
}

/* map_regexp_open - see maps_regexp.h. */
struct map_regexp *map_regexp_open(const char *path, map_regexp_check_fn *check, char *err, size_t errlen)
{
	struct strbuf text = { 0 };
	struct map_regexp *t = NULL;
	if (sb_read_file(&text, path) < 0)
		snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
	else
		t = map_regexp_parse(text.p ? text.p : "", text.len, path, check, err, errlen);
	sb_free(&text);
	return t;
}

/* expand - result with $N / ${N} replaced by the match's group N, "$$"
 * by "$", into val (cut at vallen). */
static void expand(const char *result, const char *key, const regmatch_t *m, char *val, size_t vallen)
{
	size_t o = 0;
	for (const char *p = result; *p && o + 1 < vallen; p++) {
		int g = -1;
		if (p[0] == '$' && p[1] == '$') {
			val[o++] = '$';
			p++;
			continue;
		}
		if (p[0] == '$' && isdigit((unsigned char)p[1])) {
			g = p[1] - '0';
			p++;
		} else if (p[0] == '$' && p[1] == '{' && isdigit((unsigned char)p[2]) && p[3] == '}') {
			g = p[2] - '0';
			p += 3;
		}
		if (g < 0) {
			val[o++] = *p;
			continue;
		}
		if (m[g].rm_so < 0)
			continue;
		for (regoff_t i = m[g].rm_so; i < m[g].rm_eo && o + 1 < vallen; i++)
			val[o++] = key[i];
	}
	if (vallen)
		val[o] = 0;
}

/* map_regexp_lookup - see maps_regexp.h. */
int map_regexp_lookup(const struct map_regexp *t, const char *key, char *val, size_t vallen)
{
	regmatch_t m[10];
	for (int i = 0; i < t->n;) {
		const struct rx_rule *r = &t->r[i];
		int hit = regexec(&r->re, key, r->negate ? 0 : 10, r->negate ? NULL : m, 0) == 0;
		if (r->negate)
			hit = !hit;
		if (r->is_if) {
			i = hit ? i + 1 : r->skip;
			continue;
		}
		if (hit) {
			if (r->negate)
				snprintf(val, vallen, "%s", r->result);
			else
				expand(r->result, key, m, val, vallen);
			return 1;
		}
		i++;
	}
	return 0;
}
