/*
 * recost.c - what a POSIX extended regex costs glibc, before regcomp()
 * sees it (recost.h). Pure: no allocation, no state. Shared by every
 * place that compiles regexes from an admin's file: greylisting's
 * whitelists (greywl.c) and regexp: maps (maps_regexp.c). The limits and
 * the reasons for each were found by fuzz_greywl.
 */
#include "recost.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#define RE_COST_MAX 10000 /* nodes: far above any real whitelist entry */
#define RE_EPS_MAX 1000   /* empty-matching nodes ('*', '?', '|', anchors, ...) */
#define RE_DEPTH_MAX 32
/* All the regexes of one file together: each compiled regex stays in
 * memory, and the worst one the limits above let through takes ~40 MB. */
#define RE_FILE_COST_MAX 100000
#define RE_FILE_EPS_MAX 5000

/*
 * re_too_costly - why glibc's regcomp() or regexec() would cost too much
 * on re (NULL when it will not, with its estimated nodes and empty-matching
 * nodes in *nodes, *enodes, which recost_add() adds up per file): regcomp copies the operand of each '+' and {m,n} (a+ is aa*), so
 * stacked or nested repetitions grow exponentially ("a++++++++++++++++++++++"
 * takes gigabytes, and regcomp crashes when malloc fails: found by
 * fuzz_greywl). Estimates the node count, a repeated operand counting once
 * per copy, and refuses past RE_COST_MAX or RE_DEPTH_MAX nested groups.
 * It also counts the nodes that match the empty string (each '*', '?',
 * '|', anchor and empty group, the star of '+' and {m,}, the optional
 * copies of {m,n}), copies included, and refuses past RE_EPS_MAX: regcomp
 * computes each node's epsilon closure, quadratic in them, so
 * "a*+*+*+*+*+*+*+*+*+*+*+" (4,000 nodes) took 2 s and 600 MB, "(){9000}"
 * over a gigabyte, and "a++*+++++++++++" a 10 s timeout in fuzz_greywl.
 * An unbounded repetition ('*', '+', {m,}) of an anchor is refused: its
 * closure takes regcomp exponential time ("(($)*){25}" 12 s, fuzz_greywl
 * found "(a|$)*"-like stacks). Back-references are refused: regexec()
 * backtracks on them without bound. Above all, a repetition may not apply
 * to something that already holds one: no stacked ("a{2}{3}", "a+*") and
 * no nested ("(a?){25}", "($()*){25}": exponential in regcomp, found by
 * CI's fuzz_greywl smoke run after the counts above let it through)
 * repetitions. Whitelist entries ("^mx[0-9]+\.example\.com$") need
 * neither, and without them the counts above bound the rest.
 */
static const char *re_too_costly(const char *re, double *nodes, double *enodes)
{
	/* per group level: nodes, and empty-matching nodes, of the whole
	 * level (sum, esum) and of its last atom (last, elast) */
	double sum[RE_DEPTH_MAX + 1] = { 0 }, last[RE_DEPTH_MAX + 1] = { 0 };
	double esum[RE_DEPTH_MAX + 1] = { 0 }, elast[RE_DEPTH_MAX + 1] = { 0 };
	/* the level, and its last atom, hold an anchor */
	int anch[RE_DEPTH_MAX + 1] = { 0 }, lanch[RE_DEPTH_MAX + 1] = { 0 };
	/* the level, and its last atom, hold a repetition */
	int rep[RE_DEPTH_MAX + 1] = { 0 }, lrep[RE_DEPTH_MAX + 1] = { 0 };
	int d = 0;

	for (const char *p = re; *p; p++) {
		double k = 0, ek = 0;
		int eps = 0;    /* an atom that matches the empty string */
		int anchor = 0; /* an atom that is an anchor */
		int star = 0;   /* a repetition without an upper bound */
		switch (*p) {
		case '(':
			if (++d > RE_DEPTH_MAX)
				return "too complex";
			sum[d] = last[d] = esum[d] = elast[d] = 0;
			anch[d] = lanch[d] = 0;
			rep[d] = lrep[d] = 0;
			continue;
		case ')':
			if (d == 0)
				break;
			last[d - 1] = sum[d] + 1;
			sum[d - 1] += last[d - 1];
			/* an empty group keeps its two (empty) group nodes */
			elast[d - 1] = esum[d] + (sum[d] == 0 ? 2 : 0);
			esum[d - 1] += elast[d - 1];
			lanch[d - 1] = anch[d];
			anch[d - 1] |= anch[d];
			lrep[d - 1] = rep[d];
			rep[d - 1] |= rep[d];
			d--;
			goto check;
		case '|':
			last[d] = elast[d] = 0;
			lanch[d] = lrep[d] = 0;
			esum[d] += 1;
			goto check;
		case '*':
			if (lanch[d])
				return "too complex";
			/* fall through */
		case '?':
			if (lrep[d])
				return "too complex"; /* stacked or nested */
			lrep[d] = rep[d] = 1;
			elast[d] += 1;
			esum[d] += 1;
			goto check;
		case '^':
		case '$': eps = anchor = 1; break;
		case '+':
			k = 2;
			ek = 1;
			star = 1;
			break;
		case '{': {
			/* an interval {m}, {m,}, {m,n} or {,n} (glibc reads
			 * it as {0,n}): the operand copied up to max(m, n)
			 * times. The '}' is part of it, not a new atom, so a
			 * repetition after it repeats the same operand
			 * ("a{100}{100}{100}{10}"). Anything else is a
			 * literal '{'. */
			const char *q = p + 1;
			double lo = 0, hi;
			if (!isdigit((unsigned char)q[0]) && !(q[0] == ',' && isdigit((unsigned char)q[1])))
				break;
			if (isdigit((unsigned char)q[0])) {
				lo = strtod(q, NULL);
				q += strspn(q, "0123456789");
			}
			hi = lo;
			if (*q == ',') {
				q++;
				if (isdigit((unsigned char)*q)) {
					hi = strtod(q, NULL);
					q += strspn(q, "0123456789");
				} else {
					star = 1;
				}
			}
			if (*q != '}')
				break;
			k = (hi > lo ? hi : lo) + 1;
			ek = (hi > lo ? hi - lo : 0) + 1;
			p = q;
			break;
		}
		case '\\':
			if (!p[1])
				break;
			p++;
			/* glibc takes \1..\9 as back-references even in an
			 * ERE, and matching them backtracks without bound:
			 * "(x*)(\1){4000}" ran for minutes on one name */
			if (*p >= '1' && *p <= '9')
				return "back-references are not supported";
			eps = anchor = strchr("bB<>`'", *p) != NULL;
			break;
		case '[':
			/* a bracket expression is one node: skip to its ']' (a
			 * ']' first, after an optional '^', is a member) */
			p += 1 + (p[1] == '^');
			p += (*p == ']');
			while (*p && *p != ']')
				p += (*p == '[' && (p[1] == ':' || p[1] == '.' || p[1] == '=') &&
				      strchr(p + 2, ']'))
				    ? (size_t)(strchr(p + 2, ']') - p) + 1
				    : 1;
			if (!*p)
				return NULL; /* unterminated: regcomp refuses it */
			break;
		default: break;
		}
		if (k > 0) {
			/* a repetition: its operand, the last atom, k times,
			 * and ek empty-matching nodes of its own; a star over
			 * an anchor makes regcomp's closure exponential */
			if ((star && lanch[d]) || lrep[d])
				return "too complex";
			lrep[d] = rep[d] = 1;
			sum[d] += last[d] * (k - 1);
			last[d] *= k;
			esum[d] += elast[d] * (k - 1) + ek;
			elast[d] = elast[d] * k + ek;
		} else {
			last[d] = 1;
			sum[d] += 1;
			elast[d] = eps;
			esum[d] += eps;
			lanch[d] = anchor;
			anch[d] |= anchor;
			lrep[d] = 0;
		}
	check:
		if (sum[d] > RE_COST_MAX || last[d] > RE_COST_MAX || esum[d] > RE_EPS_MAX ||
		    elast[d] > RE_EPS_MAX)
			return "too complex";
	}
	/* unclosed groups count too (regcomp refuses them anyway) */
	for (*nodes = *enodes = 0; d >= 0; d--) {
		*nodes += sum[d];
		*enodes += esum[d];
	}
	return NULL;
}

/* recost_add - see recost.h. */
const char *recost_add(struct recost *f, const char *re)
{
	double nodes = 0, enodes = 0;
	const char *cost = re_too_costly(re, &nodes, &enodes);
	if (cost)
		return cost;
	f->nodes += nodes;
	f->enodes += enodes;
	if (f->nodes > RE_FILE_COST_MAX || f->enodes > RE_FILE_EPS_MAX)
		return "too complex, with the regexes before it";
	return NULL;
}
