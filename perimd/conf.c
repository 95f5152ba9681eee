/*
 * conf.c - the configuration: defaults from conf_params.h, then the file,
 * then -o overrides, then $name expansion, then typed parsing and bounds.
 *
 * Invariants: loading works on raw text first (one string per parameter,
 * with the place it was set, for error messages) and builds a struct conf
 * only when every value has expanded and parsed, so a struct conf is always
 * complete and valid: STR/ENUM/MAP fields are never NULL, lists always have
 * v[n] == NULL. A published struct conf is never modified; readers hold a
 * reference (atomic count) and the last conf_release() frees it. A conf
 * keeps each parameter's text before expansion: conf_dump() prints that
 * text (as Postfix's postconf does), so what it prints reads back to the
 * same configuration, and compares canonical forms ("300" = "5m") to tell
 * a changed value from a default.
 */
#include "conf.h"
#include "buf.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum ptype { T_BOOL, T_INT, T_TIME, T_SIZE, T_STR, T_ENUM, T_LIST, T_MAP, T_MAPLIST };

struct param {
	const char *name;
	enum ptype type;
	const char *def;
	long long min, max;
	const char *choices;
	size_t off;
	size_t eoff; /* ENUM: the offset of NAME_e */
};

/* The offset of an ENUM's NAME_e field (0 for other types). */
#define EOFF_BOOL(name) 0
#define EOFF_INT(name) 0
#define EOFF_TIME(name) 0
#define EOFF_SIZE(name) 0
#define EOFF_STR(name) 0
#define EOFF_ENUM(name) offsetof(struct conf, name##_e)
#define EOFF_LIST(name) 0
#define EOFF_MAP(name) 0
#define EOFF_MAPLIST(name) 0

static const struct param params[] = {
#define PARAM(type, name, def, min, max, choices, doc) \
	{ #name, T_##type, def, min, max, choices, offsetof(struct conf, name), EOFF_##type(name) },
#include "conf_params.h"
#undef PARAM
};

/* The restart-only parameters (RESTART column of conf_params.h): their
 * offsets. */
static const size_t restart_offs[] = {
#define PARAM(type, name, def, min, max, choices, doc)
#define RESTART(name) offsetof(struct conf, name),
#include "conf_params.h"
#undef RESTART
#undef PARAM
};

#define NPARAMS (sizeof params / sizeof params[0])

static const char *const param_names[] = {
#define PARAM(type, name, def, min, max, choices, doc) #name,
#include "conf_params.h"
#undef PARAM
	NULL
};

/* xasprintf - asprintf or die. */
static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		fatal("out of memory");
	va_end(ap);
	return s;
}

/* param_find - index of the parameter named by the n bytes at name, or -1. */
static int param_find(const char *name, size_t n)
{
	for (size_t i = 0; i < NPARAMS; i++)
		if (strlen(params[i].name) == n && memcmp(params[i].name, name, n) == 0)
			return (int)i;
	return -1;
}

/* is_name_char - whether c may appear in a parameter name. */
static int is_name_char(int c)
{
	return isalnum((unsigned char)c) || c == '_';
}

/* trim - strip leading and trailing whitespace in place; returns the start. */
static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	size_t n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		s[--n] = 0;
	return s;
}

/*
 * Loading state. raw[i] is the text of parameter i as last set (never
 * NULL), where[i] the error prefix naming where it was set, val[i] its
 * expansion once computed.
 */
struct loader {
	char *raw[NPARAMS];
	char *where[NPARAMS];
	char *val[NPARAMS];
	int busy[NPARAMS];
	int failed;
	char *err;
	size_t errlen;
};

/* lerr - record an error of a load: every one is kept, a line each (the
 * same line once), so `perimd -t` reports them all. */
static void lerr(struct loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lerr(struct loader *L, const char *fmt, ...)
{
	va_list ap;
	char line[1024];

	L->failed = 1;
	if (L->errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	for (const char *p = L->err; (p = strstr(p, line)); p++)
		if ((p == L->err || p[-1] == '\n') && (p[strlen(line)] == 0 || p[strlen(line)] == '\n'))
			return;
	log_err_add(L->err, L->errlen, "%s", line);
}

/* lset - give parameter i the raw value v, set at the place named by where. */
static void lset(struct loader *L, int i, const char *v, char *where)
{
	free(L->raw[i]);
	free(L->where[i]);
	L->raw[i] = xstrdup(v);
	L->where[i] = where;
}

/* Postfix main.cf parameters a migrating admin brings along, and what
 * perimd has in their place (perimd-migrate(7) walks them). */
static const struct {
	const char *postfix, *instead;
} postfix_names[] = {
	{ "inet_interfaces", "write smtpd_listen" },
	{ "postscreen_dnsbl_sites", "write dnsbl_sites" },
	{ "postscreen_dnsbl_threshold", "write dnsbl_threshold" },
	{ "postscreen_greet_action", "smtpd_greet_pause does its work" },
	{ "postscreen_upstream_proxy_protocol", "write smtpd_upstream_proxy_protocol" },
	{ "smtpd_recipient_restrictions", "its checks are parameters of their own: perimd-migrate(7)" },
	{ "smtpd_relay_restrictions", "only relay_domains are relayed: perimd-migrate(7)" },
	{ "mynetworks", "perimd relays for no client: perimd-migrate(7)" },
	{ "mydestination", "perimd delivers nothing locally: leave it out" },
	{ "non_smtpd_milters", "perimd has no local submission: leave it out" },
	{ "content_filter", "write av_scanner or smtpd_milters: perimd-migrate(7)" },
	{ "smtpd_proxy_filter", "write av_scanner or smtpd_milters: perimd-migrate(7)" },
};

/* postfix_hint - for a Postfix parameter perimd lacks, the text to add to
 * "unknown parameter" ("" for other names). */
static const char *postfix_hint(const char *name, size_t n)
{
	for (size_t k = 0; k < sizeof postfix_names / sizeof postfix_names[0]; k++)
		if (strlen(postfix_names[k].postfix) == n && !strncmp(postfix_names[k].postfix, name, n))
			return postfix_names[k].instead;
	return "";
}

/* load_line - apply one logical "name = value" line of a file. */
static void load_line(struct loader *L, const char *path, int lineno, char *line)
{
	char *eq = strchr(line, '=');

	if (!eq) {
		lerr(L, "%s:%d: syntax error: expected \"name = value\"", path, lineno);
		return;
	}
	*eq = 0;
	char *name = trim(line), *value = trim(eq + 1);
	size_t n = strlen(name);
	for (size_t k = 0; k < n; k++)
		if (!is_name_char(name[k])) {
			lerr(L, "%s:%d: bad parameter name \"%s\"", path, lineno, name);
			return;
		}
	if (n == 0) {
		lerr(L, "%s:%d: syntax error: no parameter name before '='", path, lineno);
		return;
	}
	int i = param_find(name, n);
	if (i < 0) {
		const char *hint = postfix_hint(name, n);
		lerr(L, "%s:%d: unknown parameter %s%s%s%s", path, lineno, name, *hint ? " (Postfix's: " : "",
		     hint, *hint ? ")" : "");
		return;
	}
	lset(L, i, value, xasprintf("%s:%d: %s", path, lineno, name));
}

#define CONF_LINE_MAX (16 << 20) /* bytes in one physical line */

/* read_line - the next physical line of f, without its LF, into b: 1, 0
 * at the end of the file, -1 on a NUL byte or a line over CONF_LINE_MAX
 * (*why says which), found as they come: -c /dev/zero is an error, not a
 * read without end. */
static int read_line(FILE *f, struct strbuf *b, const char **why)
{
	char chunk[4096];
	size_t n = 0;
	int ch, any = 0;

	b->len = 0;
	while ((ch = getc_unlocked(f)) != EOF && ch != '\n') {
		any = 1;
		if (ch == 0) {
			*why = "NUL byte in line";
			return -1;
		}
		chunk[n++] = (char)ch;
		if (n == sizeof chunk) {
			sb_add(b, chunk, n);
			n = 0;
			if (b->len > CONF_LINE_MAX) {
				*why = "line longer than 16 MB";
				return -1;
			}
		}
	}
	sb_add(b, chunk, n);
	return any || ch == '\n';
}

/*
 * load_file - read a main.cf-shaped file: a logical line starts with
 * non-whitespace text and continues on the following lines that start
 * with whitespace (joined with one space). Blank lines and lines whose
 * first non-whitespace character is '#' are ignored and do not end a
 * logical line. '#' elsewhere is part of the value, as in Postfix. A
 * UTF-8 byte order mark before the first line (a Windows editor's) is
 * skipped. Returns 0, 1 if the file is missing and missing_ok, -1 on
 * error.
 */
static int load_file(struct loader *L, const char *path, int missing_ok)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		if (errno == ENOENT && missing_ok)
			return 1;
		lerr(L, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	struct strbuf raw = { 0 }, cur = { 0 };
	const char *why = NULL;
	int lineno = 0, start = 0, r;

	while ((r = read_line(f, &raw, &why)) != 0) {
		lineno++;
		if (r < 0) {
			lerr(L, "%s:%d: %s", path, lineno, why);
			break;
		}
		char *line = sb_str(&raw);
		if (lineno == 1 && !strncmp(line, "\xef\xbb\xbf", 3))
			line += 3;
		char *t = trim(line);
		if (*t == 0 || *t == '#')
			continue;
		if (isspace((unsigned char)line[0])) {
			if (!start) {
				lerr(L, "%s:%d: continuation line without a parameter line before it", path,
				     lineno);
				continue;
			}
			sb_add(&cur, " ", 1);
			sb_add(&cur, t, strlen(t));
			continue;
		}
		if (start)
			load_line(L, path, start, sb_str(&cur));
		cur.len = 0;
		sb_add(&cur, t, strlen(t));
		start = lineno;
	}
	if (ferror(f))
		lerr(L, "%s: read error: %s", path, strerror(errno));
	else if (start && r == 0)
		load_line(L, path, start, sb_str(&cur));
	sb_free(&cur);
	sb_free(&raw);
	fclose(f);
	return L->failed ? -1 : 0;
}

/* load_override - apply one -o "name=value". */
static void load_override(struct loader *L, const char *o)
{
	const char *eq = strchr(o, '=');
	if (!eq) {
		lerr(L, "-o %s: expected NAME=VALUE", o);
		return;
	}
	if (strpbrk(o, "\r\n")) {
		lerr(L, "-o %s: line break in value", o);
		return;
	}
	char *name = xstrndup(o, (size_t)(eq - o)), *n = trim(name);
	char *value = xstrdup(eq + 1);
	int i = param_find(n, strlen(n));
	if (!*n)
		lerr(L, "-o %s: no parameter name before '='", o);
	else if (i < 0) {
		const char *hint = postfix_hint(n, strlen(n));
		lerr(L, "-o %s: unknown parameter %s%s%s%s", o, n, *hint ? " (Postfix's: " : "", hint,
		     *hint ? ")" : "");
	} else
		lset(L, i, trim(value), xasprintf("-o %s", o));
	free(name);
	free(value);
}

/*
 * expand - the value of parameter i with "$name", "${name}" replaced by the
 * (expanded) value of that parameter and "$$" by "$". NULL on error (an
 * unknown name, a reference loop, a stray '$'). An empty myhostname
 * becomes the system host name here, so $myhostname sees it too.
 */
static const char *expand(struct loader *L, size_t i)
{
	if (L->val[i])
		return L->val[i];
	if (L->busy[i]) {
		lerr(L, "%s: $%s refers back to itself", L->where[i], params[i].name);
		return NULL;
	}
	L->busy[i] = 1;
	struct strbuf out = { 0 };
	const char *p = L->raw[i];
	while (*p) {
		const char *d = strchr(p, '$');
		if (!d) {
			sb_add(&out, p, strlen(p));
			break;
		}
		sb_add(&out, p, (size_t)(d - p));
		p = d + 1;
		if (*p == '$') {
			sb_add(&out, "$", 1);
			p++;
			continue;
		}
		const char *name = p;
		size_t n;
		if (*p == '{') {
			const char *end = strchr(++name, '}');
			if (!end) {
				lerr(L, "%s: \"${\" without \"}\"", L->where[i]);
				goto fail;
			}
			n = (size_t)(end - name);
			p = end + 1;
		} else {
			while (is_name_char(*p))
				p++;
			n = (size_t)(p - name);
		}
		if (n == 0) {
			lerr(L, "%s: '$' must be followed by a parameter name, {name} or '$'", L->where[i]);
			goto fail;
		}
		int j = param_find(name, n);
		if (j < 0) {
			lerr(L, "%s: unknown parameter $%.*s", L->where[i], (int)n, name);
			goto fail;
		}
		const char *v = expand(L, (size_t)j);
		if (!v)
			goto fail;
		sb_add(&out, v, strlen(v));
	}
	if (params[i].off == offsetof(struct conf, myhostname) && out.len == 0) {
		char host[256];
		if (gethostname(host, sizeof host) != 0) {
			lerr(L, "%s: cannot get the system host name: %s", L->where[i], strerror(errno));
			goto fail;
		}
		host[sizeof host - 1] = 0;
		sb_add(&out, host, strlen(host));
	}
	L->busy[i] = 0;
	L->val[i] = sb_str(&out);
	return L->val[i];
fail:
	L->busy[i] = 0;
	sb_free(&out);
	return NULL;
}

/* parse_number - a non-negative decimal number and what follows it:
 * 0, -1 if s does not start with a digit, -2 if the digits overflow (*v
 * is then LLONG_MAX and *rest still after them). */
static int parse_number(const char *s, long long *v, const char **rest)
{
	if (!isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	char *end;
	long long n = strtoll(s, &end, 10);
	*v = n;
	*rest = end;
	return errno == ERANGE ? -2 : 0;
}

/* scale - v * mult into *out, -2 on overflow. */
static int scale(long long v, long long mult, long long *out)
{
	if (v > LLONG_MAX / mult)
		return -2;
	*out = v * mult;
	return 0;
}

/* parse_unit - the number at s with one of the n suffixes of units (any
 * case), in base units: 0, -1 malformed, -2 too large. */
static int parse_unit(const char *s, const char *const *sfx, const long long *mult, size_t n, long long *out)
{
	long long v;
	const char *rest;
	int r = parse_number(s, &v, &rest);

	if (r == -1)
		return -1;
	for (size_t k = 0; k < n; k++)
		if (strcasecmp(rest, sfx[k]) == 0)
			return r < 0 ? r : scale(v, mult[k], out);
	return -1;
}

static const char *const time_sfx[] = { "w", "d", "h", "m", "s", "ms", "" };
static const long long time_ms[] = { 604800000LL, 86400000LL, 3600000LL, 60000LL, 1000LL, 1LL, 1000LL };
static const char *const size_sfx[] = { "g", "m", "k", "" };
static const long long size_n[] = { 1024LL * 1024 * 1024, 1024LL * 1024, 1024LL, 1LL };

/* conf_parse_time - "300", "300s", "5m", "2h", "2d", "1w", "500ms" into ms. */
int conf_parse_time(const char *s, long long *ms)
{
	return parse_unit(s, time_sfx, time_ms, sizeof time_ms / sizeof time_ms[0], ms);
}

/* conf_parse_size - "1000", "10k", "25m", "1g" into bytes (1024 multiples). */
int conf_parse_size(const char *s, long long *bytes)
{
	return parse_unit(s, size_sfx, size_n, sizeof size_n / sizeof size_n[0], bytes);
}

/* conf_per_cpu - see conf.h. */
int conf_per_cpu(long long n)
{
	if (n > 0)
		return (int)n;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	return cpus > 0 ? (int)cpus : 1;
}

/* conf_parse_bool - yes/no/true/false/1/0, any case. */
int conf_parse_bool(const char *s, int *v)
{
	if (!strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcmp(s, "1"))
		*v = 1;
	else if (!strcasecmp(s, "no") || !strcasecmp(s, "false") || !strcmp(s, "0"))
		*v = 0;
	else
		return -1;
	return 0;
}

/* format_time - ms in the largest unit that expresses it exactly. */
static char *format_time(long long ms)
{
	if (ms == 0)
		return xstrdup("0s");
	for (size_t k = 0; k < 6; k++)
		if (ms % time_ms[k] == 0)
			return xasprintf("%lld%s", ms / time_ms[k], time_sfx[k]);
	return xasprintf("%lldms", ms);
}

/* format_size - bytes in the largest unit that expresses it exactly. */
static char *format_size(long long n)
{
	if (n == 0)
		return xstrdup("0");
	for (size_t k = 0; k < 3; k++)
		if (n % size_n[k] == 0)
			return xasprintf("%lld%s", n / size_n[k], size_sfx[k]);
	return xasprintf("%lld", n);
}

/* format_num - a number of parameter p's type, as the admin writes it. */
static char *format_num(const struct param *p, long long v)
{
	if (p->type == T_TIME)
		return format_time(v);
	if (p->type == T_SIZE)
		return format_size(v);
	return xasprintf("%lld", v);
}

/* brace_len - the length of the group "{ ... }" at s (its braces
 * matched, nested ones counted), 0 when s starts none or it is unclosed. */
static size_t brace_len(const char *s)
{
	if (*s != '{')
		return 0;
	int depth = 0;
	for (size_t i = 0; s[i]; i++) {
		if (s[i] == '{')
			depth++;
		else if (s[i] == '}' && --depth == 0)
			return i + 1;
	}
	return 0;
}

/* conf_list_split - see conf.h. */
struct conf_list conf_list_split(const char *s)
{
	struct conf_list l = { 0, NULL };
	int cap = 0;

	for (;;) {
		s += strspn(s, ", \t\r\n");
		if (!*s)
			break;
		size_t n = brace_len(s);
		if (!n || (s[n] && !strchr(", \t\r\n", s[n])))
			n = strcspn(s, ", \t\r\n");
		if (l.n + 2 > cap) {
			cap = cap ? cap * 2 : 4;
			l.v = xrealloc(l.v, (size_t)cap * sizeof *l.v);
		}
		l.v[l.n++] = xstrndup(s, n);
		s += n;
	}
	if (!l.v)
		l.v = xmalloc(sizeof *l.v);
	l.v[l.n] = NULL;
	return l;
}

/* conf_list_free - see conf.h. */
void conf_list_free(struct conf_list *l)
{
	if (!l->v)
		return;
	for (int k = 0; k < l->n; k++)
		free(l->v[k]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* conf_brace_items - see conf.h. */
int conf_brace_items(const char *item, struct conf_list *l)
{
	size_t n = brace_len(item);
	if (!n || item[n])
		return -1;
	char *in = xstrndup(item + 1, n - 2);
	*l = conf_list_split(in);
	free(in);
	return 0;
}

/* map_spec_ok - "type:path" with a lower-case type word and a non-empty path. */
static int map_spec_ok(const char *s)
{
	const char *colon = strchr(s, ':');
	if (!colon || colon == s || colon[1] == 0)
		return 0;
	for (const char *q = s; q < colon; q++)
		if (!islower((unsigned char)*q) && !isdigit((unsigned char)*q) && *q != '_')
			return 0;
	return 1;
}

/* labels_ok - s is dot-separated labels of letters, digits, '-' and '_',
 * each 1 to 63 long and neither starting nor ending with '-' (RFC 1035's
 * shape, '_' allowed as in the wild): "example..com", "-x.com" and
 * "a.com." are not. */
static int labels_ok(const char *s)
{
	size_t n = 0;
	for (const char *q = s;; q++) {
		if (*q == '.' || *q == 0) {
			if (n == 0 || n > 63 || q[-1] == '-' || q[-(long)n] == '-')
				return 0;
			if (*q == 0)
				return q - s <= 253;
			n = 0;
		} else if (isalnum((unsigned char)*q) || *q == '-' || *q == '_') {
			n++;
		} else {
			return 0;
		}
	}
}

/* domain_ok - a domain for a MAPLIST item (".sub" for the subdomains). */
static int domain_ok(const char *s)
{
	return labels_ok(s + (*s == '.'));
}

/* too_large - why for the number text s that overflows a long long: the
 * bound it crossed (the minimum when neg), as for any value out of range. */
static int too_large(const struct param *p, const char *s, int neg, char *why, size_t wl)
{
	if (neg || p->max) {
		char *b = format_num(p, neg ? p->min : p->max);
		snprintf(why, wl, "\"%s\" is %s the %s %s", s, neg ? "below" : "above",
			 neg ? "minimum" : "maximum", b);
		free(b);
	} else {
		snprintf(why, wl, "\"%s\" is too large", s);
	}
	return -1;
}

/*
 * parse_value - parse the expanded text s for parameter p into its
 * field(s) of c. Returns 0, or -1 with why filled.
 */
static int parse_value(const struct param *p, const char *s, struct conf *c, char *why, size_t wl)
{
	void *dst = (char *)c + p->off;
	long long v = 0;
	const char *rest;
	int e;
	char text[128];

	/* myhostname goes into the banner, EHLO and Received: a host name
	 * of labels (labels_ok), never text with blanks. */
	if (p->off == offsetof(struct conf, myhostname) && !labels_ok(s)) {
		snprintf(why, wl, "\"%s\" is not a host name", s);
		return -1;
	}
	/* recipient_delimiter: characters of a local part, never its end. */
	if (p->off == offsetof(struct conf, recipient_delimiter) && s[strcspn(s, "@\"<> \t,")]) {
		snprintf(why, wl,
			 "\"%s\": the delimiters are characters of a local part (not @, quotes, "
			 "brackets, blanks or commas)",
			 s);
		return -1;
	}
	/* smtpd_banner is the text of the 220 line: with "220 " and CRLF at
	 * most 512 bytes (RFC 5321 4.5.3.1.5), printable. */
	if (p->off == offsetof(struct conf, smtpd_banner) && strlen(s) > 506) {
		snprintf(why, wl,
			 "%zu bytes: the greeting line \"220 TEXT\" is at most 512 (RFC 5321 4.5.3.1.5)",
			 strlen(s));
		return -1;
	}
	if (p->off == offsetof(struct conf, smtpd_banner))
		for (const char *q = s; *q; q++)
			if ((unsigned char)*q < 0x20 && *q != '\t') {
				snprintf(why, wl, "control character 0x%02x in the greeting",
					 (unsigned char)*q);
				return -1;
			}
	switch (p->type) {
	case T_BOOL:
		if (conf_parse_bool(s, dst) < 0) {
			snprintf(why, wl, "\"%s\" is not yes or no", s);
			return -1;
		}
		return 0;
	case T_INT:
		if ((e = parse_number(s + (*s == '-'), &v, &rest)) == -1 || *rest) {
			snprintf(why, wl, "\"%s\" is not a whole number", s);
			return -1;
		}
		if (e == -2)
			return too_large(p, s, *s == '-', why, wl);
		if (*s == '-')
			v = -v;
		break;
	case T_TIME:
		if ((e = conf_parse_time(s, &v)) == -2)
			return too_large(p, s, 0, why, wl);
		if (e < 0) {
			snprintf(why, wl,
				 "\"%s\" is not a time (a number with "
				 "ms, s, m, h, d or w; a bare number is seconds)",
				 s);
			return -1;
		}
		break;
	case T_SIZE:
		if ((e = conf_parse_size(s, &v)) == -2)
			return too_large(p, s, 0, why, wl);
		if (e < 0) {
			snprintf(why, wl,
				 "\"%s\" is not a size (a number with "
				 "k, m or g; a bare number is bytes)",
				 s);
			return -1;
		}
		break;
	case T_STR: *(char **)dst = xstrdup(s); return 0;
	case T_ENUM:
		if ((e = conf_enum_parse(p->choices, s)) < 0) {
			snprintf(why, wl, "\"%s\" is not one of %s", s, p->choices);
			return -1;
		}
		*(char **)dst = xstrdup(conf_enum_text(p->choices, e, text, sizeof text));
		*(int *)(void *)((char *)c + p->eoff) = e;
		return 0;
	case T_MAP:
		/* Postfix takes a list of maps here; perimd one (a path with a
		 * blank or comma would be a list written that way). */
		if (*s && s[strcspn(s, ", \t")]) {
			snprintf(why, wl,
				 "\"%s\": takes one map, not a list (merge the tables into one "
				 "file)",
				 s);
			return -1;
		}
		if (*s && !map_spec_ok(s)) {
			snprintf(why, wl, "\"%s\" is not a map (type:path)", s);
			return -1;
		}
		*(char **)dst = xstrdup(s);
		return 0;
	case T_LIST:
	case T_MAPLIST: {
		struct conf_list l = conf_list_split(s);
		for (int k = 0; p->type == T_MAPLIST && k < l.n; k++)
			if (strchr(l.v[k], ':') ? !map_spec_ok(l.v[k]) : !domain_ok(l.v[k])) {
				snprintf(why, wl, "\"%s\" is neither a domain nor a map (type:path)", l.v[k]);
				conf_list_free(&l);
				return -1;
			}
		*(struct conf_list *)dst = l;
		return 0;
	}
	}
	if (p->min || p->max) {
		long long bound = v < p->min ? p->min : p->max;
		if (v < p->min || (p->max && v > p->max)) {
			char *a = format_num(p, v), *b = format_num(p, bound);
			snprintf(why, wl, "%s is %s the %s %s", a, v < p->min ? "below" : "above",
				 v < p->min ? "minimum" : "maximum", b);
			free(a);
			free(b);
			return -1;
		}
	}
	*(long long *)dst = v;
	return 0;
}

/* escape_dollar - s with each '$' doubled, so it reads back unexpanded. */
static void escape_dollar(struct strbuf *b, const char *s)
{
	const char *d;

	while ((d = strchr(s, '$'))) {
		sb_add(b, s, (size_t)(d - s));
		sb_add(b, "$$", 2);
		s = d + 1;
	}
	sb_add(b, s, strlen(s));
}

/* format_value - the canonical text of a value of parameter p stored at src. */
static char *format_value(const struct param *p, const void *src)
{
	struct strbuf b = { 0 };

	switch (p->type) {
	case T_BOOL: return xstrdup(*(const int *)src ? "yes" : "no");
	case T_INT:
	case T_TIME:
	case T_SIZE: return format_num(p, *(const long long *)src);
	case T_STR:
	case T_ENUM:
	case T_MAP: escape_dollar(&b, *(char *const *)src); break;
	case T_LIST:
	case T_MAPLIST: {
		const struct conf_list *l = src;
		for (int k = 0; k < l->n; k++) {
			if (k)
				sb_add(&b, ", ", 2);
			escape_dollar(&b, l->v[k]);
		}
		break;
	}
	}
	return sb_str(&b);
}

/* free_value - free what a value of parameter p stored at f owns. */
static void free_value(const struct param *p, void *f)
{
	switch (p->type) {
	case T_STR:
	case T_ENUM:
	case T_MAP:
		free(*(char **)f);
		*(char **)f = NULL;
		break;
	case T_LIST:
	case T_MAPLIST: conf_list_free(f); break;
	default: break;
	}
}

/*
 * print_text - raw text as conf_dump prints it: exactly as written (one
 * logical line, trimmed). Lists are not re-joined: another parameter may
 * use this one as "$name", and its expansion is the text as written.
 */
static char *print_text(const struct param *p, const char *raw)
{
	(void)p;
	return xstrdup(raw);
}

/*
 * canon_text - raw text in a form where equal values compare equal, to
 * tell a default from a changed value: text without '$' is parsed and
 * formatted ("300" and "5m" are the same time); text with references
 * stays as printed, since its value depends on other parameters.
 */
static char *canon_text(const struct param *p, const char *raw)
{
	struct conf scratch; /* only p's field is used */
	void *f = (char *)&scratch + p->off;
	char why[256];

	if (*raw == 0 || strchr(raw, '$') || parse_value(p, raw, &scratch, why, sizeof why) < 0)
		return print_text(p, raw);
	char *t = format_value(p, f);
	free_value(p, f);
	return t;
}

/* conf_free - free a conf and everything in it (fields may be unset). */
static void conf_free(struct conf *c)
{
	for (size_t i = 0; i < NPARAMS; i++) {
		free_value(&params[i], (char *)c + params[i].off);
		if (c->raw)
			free(c->raw[i]);
		if (c->where)
			free(c->where[i]);
	}
	free(c->raw);
	free(c->where);
	free(c->path);
	free(c);
}

static unsigned long long conf_gen; /* atomic: the last conf's gen */

/* where_of - the place in a loader's where text ("FILE:LINE: NAME",
 * "-o NAME=VALUE", "NAME (default)") without the name; NULL for a
 * default. */
static char *where_of(const char *where, const char *name)
{
	size_t n = strlen(where), k = strlen(name);
	if (n > k + 2 && !strcmp(where + n - k, name) && !strncmp(where + n - k - 2, ": ", 2))
		return xstrndup(where, n - k - 2);
	if (!strncmp(where, "-o ", 3))
		return xstrdup(where);
	return NULL;
}

/* conf_load - see conf.h. */
struct conf *conf_load(const char *path, int missing_ok, char **overrides, int n_overrides, char *err,
		       size_t errlen)
{
	struct loader L = { .err = err, .errlen = errlen };
	struct conf *c = NULL;
	int missing = 0;

	if (errlen)
		err[0] = 0;
	for (size_t i = 0; i < NPARAMS; i++)
		lset(&L, (int)i, params[i].def, xasprintf("%s (default)", params[i].name));
	if (path)
		missing = load_file(&L, path, missing_ok) == 1;
	for (int k = 0; k < n_overrides; k++)
		load_override(&L, overrides[k]);
	for (size_t i = 0; i < NPARAMS; i++)
		expand(&L, i);
	c = xcalloc(1, sizeof *c);
	for (size_t i = 0; i < NPARAMS; i++) {
		char why[512];
		if (L.val[i] && parse_value(&params[i], L.val[i], c, why, sizeof why) < 0)
			lerr(&L, "%s: %s", L.where[i], why);
	}
	if (L.failed) {
		conf_free(c);
		c = NULL;
	}
	if (c) {
		c->path = xstrdup(path && !missing ? path : "");
		c->refs = 1;
		c->gen = __atomic_add_fetch(&conf_gen, 1, __ATOMIC_RELAXED);
		c->raw = xcalloc(NPARAMS, sizeof *c->raw);
		c->where = xcalloc(NPARAMS, sizeof *c->where);
		for (size_t i = 0; i < NPARAMS; i++) {
			c->raw[i] = L.raw[i];
			L.raw[i] = NULL;
			c->where[i] = where_of(L.where[i], params[i].name);
		}
	}
	for (size_t i = 0; i < NPARAMS; i++) {
		free(L.raw[i]);
		free(L.where[i]);
		free(L.val[i]);
	}
	return c;
}

/* conf_value_of - see conf.h. The file's other lines are read (for
 * $name) but their errors not kept: L.errlen is 0 until the one
 * parameter is expanded and checked. */
char *conf_value_of(const char *path, int missing_ok, const char *name, char *err, size_t errlen)
{
	struct loader L = { 0 };
	int i = param_find(name, strlen(name));
	char *out = NULL;

	if (errlen)
		err[0] = 0;
	if (i < 0) {
		snprintf(err, errlen, "%s: unknown parameter", name);
		return NULL;
	}
	for (size_t k = 0; k < NPARAMS; k++)
		lset(&L, (int)k, params[k].def, xasprintf("%s (default)", params[k].name));
	FILE *f = fopen(path, "r");
	if (!f && !(errno == ENOENT && missing_ok)) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
	} else {
		if (f) {
			fclose(f);
			load_file(&L, path, missing_ok);
		}
		L.err = err;
		L.errlen = errlen;
		const char *v = expand(&L, (size_t)i);
		struct conf scratch; /* only parameter i's field is used */
		char why[512];
		if (v && parse_value(&params[i], v, &scratch, why, sizeof why) == 0) {
			free_value(&params[i], (char *)&scratch + params[i].off);
			out = xstrdup(v);
		} else if (v) {
			lerr(&L, "%s: %s", L.where[i], why);
		}
	}
	for (size_t k = 0; k < NPARAMS; k++) {
		free(L.raw[k]);
		free(L.where[k]);
		free(L.val[k]);
	}
	return out;
}

/* dump_one - "name = value" of parameter i; unless defaults_too, only
 * when it differs from the default. */
static void dump_one(FILE *out, const struct conf *c, size_t i, int defaults_too)
{
	const struct param *p = &params[i];
	char *v = c->raw ? print_text(p, c->raw[i]) : format_value(p, (const char *)c + p->off);
	int show = defaults_too;
	if (!show) {
		char *cv = c->raw ? canon_text(p, c->raw[i]) : xstrdup(v);
		char *dv = canon_text(p, p->def);
		show = strcmp(cv, dv) != 0;
		free(cv);
		free(dv);
	}
	if (show)
		fprintf(out, "%s =%s%s\n", p->name, *v ? " " : "", v);
	free(v);
}

/*
 * conf_dump - see conf.h. A conf not made by conf_load() (no raw text) is
 * printed from its values, after expansion; that reads back the same
 * unless a value begins with white space, which no file can express
 * (only conf_load() output is dumped by perimd itself).
 */
void conf_dump(FILE *out, const struct conf *c, int defaults_too)
{
	for (size_t i = 0; i < NPARAMS; i++)
		dump_one(out, c, i, defaults_too);
}

/* conf_dump_names - see conf.h. */
int conf_dump_names(FILE *out, const struct conf *c, int defaults_too, char *const *names, int n)
{
	int bad = 0;
	for (int k = 0; k < n; k++)
		if (param_find(names[k], strlen(names[k])) < 0) {
			fprintf(stderr, "perimd: %s: unknown parameter\n", names[k]);
			bad = 1;
		}
	for (int k = 0; !bad && k < n; k++)
		dump_one(out, c, (size_t)param_find(names[k], strlen(names[k])), defaults_too);
	return bad ? -1 : 0;
}

static pthread_mutex_t conf_cur_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conf *conf_cur;

/* conf_install - see conf.h; the previous configuration loses our reference. */
void conf_install(struct conf *c)
{
	pthread_mutex_lock(&conf_cur_lock);
	struct conf *old = conf_cur;
	conf_cur = c;
	pthread_mutex_unlock(&conf_cur_lock);
	conf_release(old);
}

/* conf_ref - see conf.h. */
void conf_ref(struct conf *c)
{
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

/* conf_acquire - see conf.h; NULL before the first conf_install(). */
struct conf *conf_acquire(void)
{
	pthread_mutex_lock(&conf_cur_lock);
	struct conf *c = conf_cur;
	if (c)
		__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&conf_cur_lock);
	return c;
}

/* conf_release - drop a reference; the last one frees (NULL is ignored). */
void conf_release(struct conf *c)
{
	if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
		conf_free(c);
}

/* conf_list_has - see conf.h. */
int conf_list_has(const struct conf_list *l, const char *s)
{
	for (int k = 0; l && k < l->n; k++)
		if (strcasecmp(l->v[k], s) == 0)
			return 1;
	return 0;
}

/* conf_param_names - see conf.h. */
const char *const *conf_param_names(void)
{
	return param_names;
}

/* conf_param_restart - whether parameter i is restart-only. */
static int conf_param_restart(size_t i)
{
	for (size_t k = 0; k < sizeof restart_offs / sizeof restart_offs[0]; k++)
		if (restart_offs[k] == params[i].off)
			return 1;
	return 0;
}

/* conf_restart_changes - see conf.h. */
int conf_restart_changes(const struct conf *old, const struct conf *c, void (*fn)(const char *name))
{
	int n = 0;
	for (size_t i = 0; i < NPARAMS; i++) {
		if (!conf_param_restart(i))
			continue;
		char *a = format_value(&params[i], (const char *)old + params[i].off);
		char *b = format_value(&params[i], (const char *)c + params[i].off);
		if (strcmp(a, b)) {
			fn(params[i].name);
			n++;
		}
		free(a);
		free(b);
	}
	return n;
}

/* conf_blame - see conf.h. */
const char *conf_blame(const struct conf *c, const char *line)
{
	size_t n = 0;
	while (is_name_char(line[n]))
		n++;
	if (!c->where || n == 0 || (line[n] != ':' && line[n] != '=' && line[n] != ' '))
		return NULL;
	int i = param_find(line, n);
	return i < 0 ? NULL : c->where[i];
}

/* conf_is_restart - see conf.h. */
int conf_is_restart(const char *name)
{
	int i = param_find(name, strlen(name));
	return i >= 0 && conf_param_restart((size_t)i);
}

/* conf_enum_check - see conf.h. */
int conf_enum_check(char *err, size_t errlen)
{
	for (size_t i = 0; i < NPARAMS; i++) {
		const struct param *p = &params[i];
		if (p->type != T_ENUM)
			continue;
		int n = conf_enum_size(p->name), want = conf_enum_count(p->choices);
		if (n != want) {
			snprintf(err, errlen, "%s: %d choices (%s), enum conf_%s has %d", p->name, want,
				 p->choices, p->name, n);
			return -1;
		}
	}
	return 0;
}
