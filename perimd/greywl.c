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
#include "buf.h"
#include "log.h"
#include "net.h"
#include "recost.h"

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
	struct recost file_cost = { 0, 0 }; /* all its regexes */
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
			const char *cost = recost_add(&file_cost, s + 1);
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
	struct strbuf text = { 0 };
	if (sb_read_file(&text, path) < 0) {
		snprintf(err, errlen, "%s: cannot open", path);
		sb_free(&text);
		return NULL;
	}
	char e[200];
	struct greywl *w = greywl_parse(text.p ? text.p : "", text.len, e, sizeof e);
	sb_free(&text);
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
