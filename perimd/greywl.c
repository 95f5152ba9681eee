/*
 * greywl.c - greylisting whitelists in the postgrey file format.
 *
 * One entry per line, '#' comments, blank lines ignored:
 *   /regex/           POSIX extended, case-insensitive: for clients it is
 *                     matched against the host name and the address, for
 *                     recipients against the whole address
 *   192.0.2.0/24, 2001:db8::/32, 192.0.2.7
 *                     a client address or network (CIDR)
 *   10.1.             a client address prefix (postgrey's partial address)
 *   example.com       a client host name equal to it or ending in
 *                     ".example.com"; for recipients a domain (and its
 *                     subdomains)
 *   postmaster@       a recipient local part in any domain
 *   user@example.com  one recipient
 * Invariants: a list is immutable after loading (matching from any thread;
 * glibc's regexec() is thread-safe); reloading builds a new one.
 */
#include "grey.h"
#include "log.h"
#include "net.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum wl_type { WL_REGEX, WL_CIDR, WL_PREFIX, WL_NAME, WL_LOCAL, WL_ADDR };

struct wl_ent {
	enum wl_type type;
	char *text;
	regex_t re;
};

struct greywl {
	struct wl_ent *e;
	int n;
};

/* is_cidr - 1 for a numeric address with an optional /bits, -1 for an
 * address whose /bits is no prefix length (not a digit string, or longer
 * than the address: such an entry would never match, or with "/" alone
 * match everything), 0 for anything else. */
static int is_cidr(const char *s)
{
	char buf[64];
	unsigned char a[16];
	size_t n = strlen(s);
	if (n >= sizeof buf)
		return 0;
	memcpy(buf, s, n + 1);
	char *slash = strchr(buf, '/');
	if (slash)
		*slash = 0;
	int maxbits = inet_pton(AF_INET, buf, a) == 1 ? 32 : inet_pton(AF_INET6, buf, a) == 1 ? 128 : 0;
	if (!maxbits)
		return 0;
	if (!slash)
		return 1;
	const char *b = slash + 1;
	size_t bl = strlen(b);
	if (bl == 0 || bl > 3 || strspn(b, "0123456789") != bl || atoi(b) > maxbits)
		return -1;
	return 1;
}

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
 * nodes in *nodes, *enodes, which greywl_parse() adds up per file): regcomp copies the operand of each '+' and {m,n} (a+ is aa*), so
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

/* greywl_free - free a list (NULL is fine). */
void greywl_free(struct greywl *w)
{
	if (!w)
		return;
	for (int i = 0; i < w->n; i++) {
		if (w->e[i].type == WL_REGEX)
			regfree(&w->e[i].re);
		free(w->e[i].text);
	}
	free(w->e);
	free(w);
}

/* greywl_parse - a list from text; NULL with err ("line N: ..."). */
struct greywl *greywl_parse(const char *text, size_t len, char *err, size_t errlen)
{
	struct greywl *w = xcalloc(1, sizeof *w);
	size_t pos = 0;
	int ln = 0;
	double file_nodes = 0, file_enodes = 0; /* all its regexes */
	while (pos < len) {
		size_t e = pos;
		while (e < len && text[e] != '\n')
			e++;
		ln++;
		char line[1024];
		size_t l = e - pos;
		if (l >= sizeof line) {
			snprintf(err, errlen, "line %d: too long", ln);
			greywl_free(w);
			return NULL;
		}
		memcpy(line, text + pos, l);
		line[l] = 0;
		pos = e + 1;
		/* A line with a NUL byte is ignored (not cut at the NUL: the
		 * text before it is not what the line says). */
		if (memchr(line, 0, l) != NULL)
			continue;
		char *h = strchr(line, '#');
		if (h && line[0] != '/')
			*h = 0;
		char *s = line;
		while (isspace((unsigned char)*s))
			s++;
		size_t sl = strlen(s);
		while (sl && isspace((unsigned char)s[sl - 1]))
			s[--sl] = 0;
		if (!sl)
			continue;
		struct wl_ent ent = { 0 };
		int cidr;
		if (s[0] == '/') {
			if (sl < 3 || s[sl - 1] != '/') {
				snprintf(err, errlen, "line %d: unterminated /regex/", ln);
				greywl_free(w);
				return NULL;
			}
			s[sl - 1] = 0;
			double nodes = 0, enodes = 0;
			const char *cost = re_too_costly(s + 1, &nodes, &enodes);
			if (!cost) {
				file_nodes += nodes;
				file_enodes += enodes;
				if (file_nodes > RE_FILE_COST_MAX || file_enodes > RE_FILE_EPS_MAX)
					cost = "too complex, with the regexes before it";
			}
			if (cost) {
				snprintf(err, errlen, "line %d: regex %s", ln, cost);
				greywl_free(w);
				return NULL;
			}
			int rc = regcomp(&ent.re, s + 1, REG_EXTENDED | REG_ICASE | REG_NOSUB);
			if (rc) {
				char why[128];
				regerror(rc, &ent.re, why, sizeof why);
				snprintf(err, errlen, "line %d: bad regex: %s", ln, why);
				greywl_free(w);
				return NULL;
			}
			ent.type = WL_REGEX;
		} else if ((cidr = is_cidr(s)) != 0) {
			if (cidr < 0) {
				snprintf(err, errlen, "line %d: bad network \"%s\"", ln, s);
				greywl_free(w);
				return NULL;
			}
			ent.type = WL_CIDR;
		} else if (s[sl - 1] == '.' && isdigit((unsigned char)s[0]) && strspn(s, "0123456789.") == sl) {
			ent.type = WL_PREFIX;
		} else if (s[sl - 1] == '@') {
			s[sl - 1] = 0;
			ent.type = WL_LOCAL;
		} else if (strchr(s, '@')) {
			ent.type = WL_ADDR;
		} else {
			ent.type = WL_NAME;
		}
		ent.text = xstrdup(s);
		w->e = xrealloc(w->e, (size_t)(w->n + 1) * sizeof *w->e);
		w->e[w->n++] = ent;
	}
	return w;
}

/* greywl_load - read and parse a file. */
struct greywl *greywl_load(const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "%s: cannot open", path);
		return NULL;
	}
	char *buf = NULL;
	size_t len = 0, cap = 0, n;
	char chunk[8192];
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
		if (len + n > cap) {
			cap = (len + n) * 2;
			buf = xrealloc(buf, cap);
		}
		memcpy(buf + len, chunk, n);
		len += n;
	}
	fclose(f);
	char e[200];
	struct greywl *w = greywl_parse(buf ? buf : "", len, e, sizeof e);
	free(buf);
	if (!w)
		snprintf(err, errlen, "%s: %s", path, e);
	return w;
}

/* name_suffix - name equals suffix or ends in "." suffix. */
static int name_suffix(const char *name, const char *suffix)
{
	size_t nl = strlen(name), sl = strlen(suffix);
	if (nl == sl)
		return !strcasecmp(name, suffix);
	return nl > sl && name[nl - sl - 1] == '.' && !strcasecmp(name + nl - sl, suffix);
}

/* greywl_client - is the client listed? */
int greywl_client(const struct greywl *w, const char *addr, const char *name)
{
	if (!w)
		return 0;
	for (int i = 0; i < w->n; i++) {
		const struct wl_ent *e = &w->e[i];
		switch (e->type) {
		case WL_REGEX:
			if ((name && *name && !regexec(&e->re, name, 0, NULL, 0)) ||
			    !regexec(&e->re, addr, 0, NULL, 0))
				return 1;
			break;
		case WL_CIDR:
			if (net_addr_match(addr, e->text))
				return 1;
			break;
		case WL_PREFIX:
			if (!strncmp(addr, e->text, strlen(e->text)))
				return 1;
			break;
		case WL_NAME:
			if (name && *name && name_suffix(name, e->text))
				return 1;
			break;
		default: break;
		}
	}
	return 0;
}

/* greywl_rcpt - is the recipient listed? */
int greywl_rcpt(const struct greywl *w, const char *rcpt)
{
	if (!w)
		return 0;
	const char *at = strrchr(rcpt, '@');
	const char *domain = at ? at + 1 : "";
	size_t ll = at ? (size_t)(at - rcpt) : strlen(rcpt);
	for (int i = 0; i < w->n; i++) {
		const struct wl_ent *e = &w->e[i];
		switch (e->type) {
		case WL_REGEX:
			if (!regexec(&e->re, rcpt, 0, NULL, 0))
				return 1;
			break;
		case WL_LOCAL:
			if (strlen(e->text) == ll && !strncasecmp(rcpt, e->text, ll))
				return 1;
			break;
		case WL_ADDR:
			if (!strcasecmp(rcpt, e->text))
				return 1;
			break;
		case WL_NAME:
			if (*domain && name_suffix(domain, e->text))
				return 1;
			break;
		default: break;
		}
	}
	return 0;
}
