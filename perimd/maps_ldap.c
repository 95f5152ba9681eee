/*
 * maps_ldap.c - ldap: maps: a .cf file of Postfix ldap_table(5) settings,
 * OpenLDAP's synchronous libldap on jobs.h worker threads, a bounded pool
 * of persistent connections per server, failover in server_host order.
 *
 * Invariants:
 * - The key reaches the directory only inside a filter, escaped as an RFC
 *   4515 assertion value (map_ldap_escape), so a key can never change the
 *   filter's structure ("*" is a literal star, not a wildcard).
 * - A connection (an LDAP handle) is used by one thread at a time: taken
 *   from its server's pool under l->mu, given back after a lookup that got
 *   an answer; after a connection-level error it is closed. A failed search
 *   on a pooled connection is retried once on a fresh one (the server may
 *   have closed an idle connection, or restarted), after closing the other
 *   idle connections of that server, which the same cause broke.
 * - A server whose connection or bind failed is skipped for a back-off
 *   (1 s, doubling to 30 s); the first lookup after it tries again, so a
 *   directory that comes back is used again without a reload. While every
 *   server is backing off, lookups fail at once (451 at RCPT) instead of
 *   tying up the worker threads for `timeout` each.
 * - Every wait on a server is bounded by `timeout` (connect, StartTLS, bind
 *   and search); waiting for a free pooled connection too.
 * - No server error ever becomes "not found": only a search that completed
 *   (or noSuchObject: the search base does not exist) answers 0.
 */
#include "maps_ldap.h"
#include "clock.h"
#include "conf.h"
#include "log.h"
#include "stats.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/time.h> /* struct timeval (musl) */
#include <time.h>

#ifndef PERIMD_NO_LDAP
#define LDAP_DEPRECATED 0
#include <ldap.h>
#endif

/* ---- the .cf parser (pure) ------------------------------------------------ */

/* Postfix ldap_table(5) settings perimd knows but does not implement: each
 * is refused with its line rather than silently ignored. */
static const char *const cf_unsupported[] = { "special_result_attribute",
					      "terminal_result_attribute",
					      "leaf_result_attribute",
					      "chase_referrals",
					      "expansion_limit",
					      "recursion_limit",
					      "debuglevel",
					      "cache",
					      "cache_expiry",
					      "cache_size",
					      "result_filter",
					      "sasl_mechs",
					      "sasl_realm",
					      "sasl_authz_id",
					      "sasl_minssf",
					      "tls_cert",
					      "tls_key",
					      "tls_random_file",
					      "tls_cipher_suite",
					      NULL };

struct cf_raw {
	char *hosts;
	int hosts_line, tls_line, version_line, bind_line, filter_line, format_line;
};

/* cf_bool - yes/no/true/false: 1, 0, or -1. */
static int cf_bool(const char *v)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true"))
		return 1;
	if (!strcasecmp(v, "no") || !strcasecmp(v, "false"))
		return 0;
	return -1;
}

/* cf_num - a non-negative decimal within max; 0 or -1. */
static int cf_num(const char *v, long long max, long long *out)
{
	char *end;
	errno = 0;
	long long x = strtoll(v, &end, 10);
	if (!*v || *end || errno || x < 0 || x > max || !isdigit((unsigned char)*v))
		return -1;
	*out = x;
	return 0;
}

/* cf_split - a list of words (whitespace or comma separated) into v. */
static int cf_split(const char *value, char **v, int max, int *n)
{
	for (int i = 0; i < *n; i++)
		free(v[i]);
	*n = 0;
	const char *p = value;
	for (;;) {
		p += strspn(p, " \t,");
		if (!*p)
			return 0;
		size_t w = strcspn(p, " \t,");
		if (*n == max)
			return -1;
		v[(*n)++] = xstrndup(p, w);
		p += w;
	}
}

/* cf_set - one "name = value"; NULL, or the reason it is refused. */
static const char *cf_set(struct ldap_cf *cf, struct cf_raw *raw, int line, const char *name, const char *v)
{
	char **str = NULL;
	int b;
	long long x;
	if (!strcmp(name, "server_host")) {
		free(raw->hosts);
		raw->hosts = xstrdup(v);
		raw->hosts_line = line;
		return NULL;
	}
	if (!strcmp(name, "server_port")) {
		if (cf_num(v, 65535, &cf->port) < 0 || cf->port == 0)
			return "expected a port number";
		return NULL;
	}
	if (!strcmp(name, "search_base"))
		str = &cf->search_base;
	else if (!strcmp(name, "query_filter"))
		str = &cf->query_filter, raw->filter_line = line;
	else if (!strcmp(name, "result_format"))
		str = &cf->result_format, raw->format_line = line;
	else if (!strcmp(name, "bind_dn"))
		str = &cf->bind_dn;
	else if (!strcmp(name, "bind_pw"))
		str = &cf->bind_pw;
	else if (!strcmp(name, "tls_ca_cert_file"))
		str = &cf->tls_ca_cert_file;
	else if (!strcmp(name, "tls_ca_cert_dir"))
		str = &cf->tls_ca_cert_dir;
	if (str) {
		free(*str);
		*str = xstrdup(v);
		return NULL;
	}
	if (!strcmp(name, "scope")) {
		if (!strcmp(v, "sub"))
			cf->scope = LDAP_CF_SUB;
		else if (!strcmp(v, "base"))
			cf->scope = LDAP_CF_BASE;
		else if (!strcmp(v, "one"))
			cf->scope = LDAP_CF_ONE;
		else
			return "expected sub, base or one";
		return NULL;
	}
	if (!strcmp(name, "result_attribute")) {
		if (cf_split(v, cf->attrs, LDAP_CF_MAX_ATTRS, &cf->nattrs) < 0)
			return "too many attributes";
		for (int i = 0; i < cf->nattrs; i++)
			for (const char *p = cf->attrs[i]; *p; p++)
				if (!isalnum((unsigned char)*p) && *p != '-' && *p != ';' && *p != '.')
					return "not an attribute name";
		return NULL;
	}
	if (!strcmp(name, "domain")) {
		if (cf_split(v, cf->domains, LDAP_CF_MAX_DOMAINS, &cf->ndomains) < 0)
			return "too many domains";
		for (int i = 0; i < cf->ndomains; i++)
			if (strchr(cf->domains[i], ':') || strchr(cf->domains[i], '/') ||
			    strchr(cf->domains[i], '@'))
				return "only domain names are supported (no files or tables)";
		return NULL;
	}
	if (!strcmp(name, "bind")) {
		if (!strcasecmp(v, "sasl"))
			return "SASL binds are not supported (bind = yes: a simple bind)";
		if ((b = cf_bool(v)) < 0)
			return "expected yes or no";
		cf->bind = b;
		raw->bind_line = line;
		return NULL;
	}
	if (!strcmp(name, "version")) {
		if (strcmp(v, "2") && strcmp(v, "3"))
			return "expected 2 or 3";
		cf->version = v[0] - '0';
		raw->version_line = line;
		return NULL;
	}
	if (!strcmp(name, "timeout") || !strcmp(name, "cache_ttl") || !strcmp(name, "negative_cache_ttl")) {
		long long *t = name[0] == 't' ? &cf->timeout_ms
		    : name[0] == 'c'          ? &cf->cache_ttl_ms
					      : &cf->negative_cache_ttl_ms;
		if (conf_parse_time(v, t) < 0 || *t > 86400000LL)
			return "expected a time (\"10\" seconds, \"500ms\", \"1m\")";
		if (name[0] == 't' && *t == 0)
			return "must be more than 0";
		return NULL;
	}
	if (!strcmp(name, "start_tls") || !strcmp(name, "tls_require_cert")) {
		if ((b = cf_bool(v)) < 0)
			return "expected yes or no";
		if (name[0] == 's') {
			cf->start_tls = b;
			raw->tls_line = line;
		} else {
			cf->tls_require_cert = b;
		}
		return NULL;
	}
	if (!strcmp(name, "size_limit")) {
		if (cf_num(v, 1000000000, &cf->size_limit) < 0)
			return "expected a number";
		return NULL;
	}
	if (!strcmp(name, "dereference")) {
		if (cf_num(v, 3, &x) < 0)
			return "expected 0 (never), 1 (searching), 2 (finding) or 3 (always)";
		cf->dereference = (int)x;
		return NULL;
	}
	if (!strcmp(name, "connection_limit")) {
		if (cf_num(v, 1000, &cf->connection_limit) < 0 || cf->connection_limit == 0)
			return "expected 1 to 1000";
		return NULL;
	}
	for (int i = 0; cf_unsupported[i]; i++)
		if (!strcmp(name, cf_unsupported[i]))
			return "not supported by perimd";
	if (!strncmp(name, "tls_", 4) || !strncmp(name, "sasl_", 5))
		return "not supported by perimd";
	return "unknown setting";
}

/* host_ok - a host name, an IPv4 address or a bracketed IPv6 literal. */
static int host_ok(const char *h, size_t n)
{
	if (n == 0 || n > 255)
		return 0;
	if (h[0] == '[') {
		if (n < 3 || h[n - 1] != ']')
			return 0;
		for (size_t i = 1; i + 1 < n; i++)
			if (!isxdigit((unsigned char)h[i]) && h[i] != ':' && h[i] != '.')
				return 0;
		return 1;
	}
	for (size_t i = 0; i < n; i++)
		if (!isalnum((unsigned char)h[i]) && h[i] != '.' && h[i] != '-' && h[i] != '_')
			return 0;
	return 1;
}

/* uri_norm - one server_host item into "scheme://host:port"; NULL, or why not. */
static const char *uri_norm(const char *item, long long port, char *out, size_t outlen)
{
	const char *scheme = "ldap", *p = item;
	if (!strncasecmp(p, "ldaps://", 8))
		scheme = "ldaps", p += 8, port = 636;
	else if (!strncasecmp(p, "ldap://", 7))
		p += 7;
	else if (strstr(p, "://"))
		return "server_host: only ldap:// and ldaps:// URIs are supported";
	size_t n = strlen(p);
	if (n > 0 && p[n - 1] == '/')
		n--;
	if (memchr(p, '/', n) || memchr(p, '?', n))
		return "server_host: a DN or options in the URI are not supported";
	/* host, host:port, [v6], [v6]:port */
	const char *close = p[0] == '[' ? memchr(p, ']', n) : NULL;
	const char *colon =
	    close ? (close + 1 < p + n && close[1] == ':' ? close + 1 : NULL) : memchr(p, ':', n);
	size_t hn = colon ? (size_t)(colon - p) : n;
	if (colon) {
		char pb[8];
		size_t pn = n - hn - 1;
		if (pn == 0 || pn >= sizeof pb)
			return "server_host: bad port";
		memcpy(pb, colon + 1, pn);
		pb[pn] = 0;
		if (cf_num(pb, 65535, &port) < 0 || port == 0)
			return "server_host: bad port";
	}
	if (!host_ok(p, hn))
		return "server_host: bad host name";
	if ((size_t)snprintf(out, outlen, "%s://%.*s:%lld", scheme, (int)hn, p, port) >= outlen)
		return "server_host: too long";
	return NULL;
}

/* filter_check - the parentheses of a filter balance (RFC 4515 §3). */
static int filter_check(const char *f)
{
	int depth = 0;
	for (; *f; f++) {
		if (*f == '\\' && f[1])
			f++;
		else if (*f == '(')
			depth++;
		else if (*f == ')' && --depth < 0)
			return -1;
	}
	return depth == 0 ? 0 : -1;
}

/* map_ldap_cf_free - see maps_ldap.h. */
void map_ldap_cf_free(struct ldap_cf *cf)
{
	for (int i = 0; i < cf->nuris; i++)
		free(cf->uris[i]);
	for (int i = 0; i < cf->nattrs; i++)
		free(cf->attrs[i]);
	for (int i = 0; i < cf->ndomains; i++)
		free(cf->domains[i]);
	free(cf->search_base);
	free(cf->query_filter);
	free(cf->result_format);
	free(cf->bind_dn);
	free(cf->bind_pw);
	free(cf->tls_ca_cert_file);
	free(cf->tls_ca_cert_dir);
	memset(cf, 0, sizeof *cf);
}

/* map_ldap_cf_parse - see maps_ldap.h. The file has main.cf's syntax: a
 * line starting with whitespace continues the previous one, '#' lines and
 * blank lines are ignored; values are taken literally (no $expansion). */
int map_ldap_cf_parse(struct ldap_cf *cf, const char *path, const char *text, size_t n, char *err, size_t errlen)
{
	memset(cf, 0, sizeof *cf);
	cf->port = 389;
	cf->bind = 1;
	cf->version = 3;
	cf->timeout_ms = 10000;
	cf->tls_require_cert = 1;
	cf->connection_limit = 8;
	cf->cache_ttl_ms = 60000;
	cf->negative_cache_ttl_ms = 10000;
	struct cf_raw raw = { 0 };
	char *cur = NULL;
	size_t curlen = 0;
	int lineno = 0, start = 0, rc = 0;
	const char *why = NULL;
	size_t pos = 0;
	/* One pass over the lines, plus one step to flush the last setting. */
	for (;;) {
		const char *line = NULL;
		size_t ll = 0;
		if (pos < n) {
			const char *nl = memchr(text + pos, '\n', n - pos);
			ll = nl ? (size_t)(nl - text) - pos : n - pos;
			line = text + pos;
			pos += ll + (nl ? 1 : 0);
			lineno++;
			if (memchr(line, 0, ll)) {
				snprintf(err, errlen, "%s:%d: NUL byte in line", path, lineno);
				rc = -1;
				break;
			}
		}
		size_t ts = 0, te = ll;
		while (line && ts < ll && isspace((unsigned char)line[ts]))
			ts++;
		while (te > ts && isspace((unsigned char)line[te - 1]))
			te--;
		if (line && (ts == te || line[ts] == '#'))
			continue;
		if (line && ts > 0) {
			if (!start) {
				snprintf(err, errlen, "%s:%d: continuation line without a setting before it",
					 path, lineno);
				rc = -1;
				break;
			}
			cur = xrealloc(cur, curlen + (te - ts) + 2);
			cur[curlen++] = ' ';
			memcpy(cur + curlen, line + ts, te - ts);
			curlen += te - ts;
			cur[curlen] = 0;
			continue;
		}
		if (start) {
			/* The logical line that began at `start` is complete. */
			char *eq = strchr(cur, '=');
			if (!eq) {
				snprintf(err, errlen, "%s:%d: expected \"name = value\"", path, start);
				rc = -1;
				break;
			}
			char *ne = eq;
			while (ne > cur && isspace((unsigned char)ne[-1]))
				ne--;
			*ne = 0;
			const char *v = eq + 1 + strspn(eq + 1, " \t");
			if (!cur[0]) {
				snprintf(err, errlen, "%s:%d: expected \"name = value\"", path, start);
				rc = -1;
				break;
			}
			if ((why = cf_set(cf, &raw, start, cur, v))) {
				snprintf(err, errlen, "%s:%d: %.64s: %s", path, start, cur, why);
				rc = -1;
				break;
			}
			start = 0;
		}
		if (!line)
			break;
		cur = xrealloc(cur, te - ts + 1);
		memcpy(cur, line + ts, te - ts);
		curlen = te - ts;
		cur[curlen] = 0;
		start = lineno;
	}
	free(cur);
	if (rc < 0)
		goto out;
	rc = -1;
	/* Defaults of ldap_table(5). */
	if (!cf->search_base)
		cf->search_base = xstrdup("");
	if (!cf->query_filter)
		cf->query_filter = xstrdup("(mailacceptinggeneralid=%s)");
	if (!cf->result_format)
		cf->result_format = xstrdup("%s");
	if (cf->nattrs == 0)
		cf->attrs[cf->nattrs++] = xstrdup("maildrop");
	char *hosts = raw.hosts ? raw.hosts : xstrdup("localhost");
	char *items[LDAP_CF_MAX_HOSTS];
	int nitems = 0;
	if (cf_split(hosts, items, LDAP_CF_MAX_HOSTS, &nitems) < 0)
		why = "server_host: too many servers";
	else if (nitems == 0)
		why = "server_host: no server";
	for (int i = 0; !why && i < nitems; i++) {
		char u[300];
		if (!(why = uri_norm(items[i], cf->port, u, sizeof u)))
			cf->uris[cf->nuris++] = xstrdup(u);
	}
	for (int i = 0; i < nitems; i++)
		free(items[i]);
	if (hosts != raw.hosts)
		free(hosts);
	if (why) {
		snprintf(err, errlen, "%s:%d: %s", path, raw.hosts_line, why);
		goto out;
	}
	char probe[1024];
	const char *f = cf->query_filter;
	if (!f[0] || filter_check(f) < 0 || map_ldap_expand(f, "u@d", NULL, 1, probe, sizeof probe) < 0) {
		snprintf(err, errlen,
			 "%s:%d: query_filter: not a filter with %%s, %%u, %%d "
			 "(and %%%% for a %%)",
			 path, raw.filter_line);
		goto out;
	}
	int has_key = 0;
	for (const char *p = f; *p; p++)
		if (*p == '%') {
			p++;
			if (*p && strchr("sudSUD", *p))
				has_key = 1;
			if (*p == 'd' || *p == 'D')
				cf->filter_needs_domain = 1;
		}
	if (!has_key) {
		snprintf(err, errlen,
			 "%s:%d: query_filter: no %%s, %%u or %%d: every key would "
			 "give the same answer",
			 path, raw.filter_line);
		goto out;
	}
	if (map_ldap_expand(cf->result_format, "u@d", "v@w", 0, probe, sizeof probe) < 0) {
		snprintf(err, errlen,
			 "%s:%d: result_format: only %%s %%u %%d %%S %%U %%D and %%%% "
			 "are supported",
			 path, raw.format_line);
		goto out;
	}
	if (cf->start_tls && cf->version < 3) {
		snprintf(err, errlen, "%s:%d: start_tls needs version = 3", path, raw.tls_line);
		goto out;
	}
	for (int i = 0; cf->start_tls && i < cf->nuris; i++)
		if (!strncmp(cf->uris[i], "ldaps:", 6)) {
			snprintf(err, errlen, "%s:%d: start_tls with an ldaps:// server (TLS twice)", path,
				 raw.tls_line);
			goto out;
		}
	if (!cf->bind && (cf->bind_dn || cf->bind_pw)) {
		snprintf(err, errlen, "%s:%d: bind = no, but bind_dn or bind_pw is set", path, raw.bind_line);
		goto out;
	}
	if (cf->bind_pw && !cf->bind_dn) {
		snprintf(err, errlen, "%s: bind_pw without bind_dn", path);
		goto out;
	}
	rc = 0;
out:
	free(raw.hosts);
	return rc;
}

/* ---- escaping and expansions (pure) ------------------------------------- */

/* map_ldap_escape - see maps_ldap.h (RFC 4515 §3: valueencoding). */
size_t map_ldap_escape(const char *in, size_t n, char *out, size_t outlen)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;
	if (outlen == 0)
		return (size_t)-1;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c < 0x20 || c > 0x7e || c == '*' || c == '(' || c == ')' || c == '\\') {
			if (o + 3 >= outlen)
				goto full;
			out[o++] = '\\';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		} else {
			if (o + 1 >= outlen)
				goto full;
			out[o++] = (char)c;
		}
	}
	out[o] = 0;
	return o;
full:
	out[0] = 0;
	return (size_t)-1;
}

/* key_part - the whole of s ('s'), its local part ('u': all of it without
 * '@') or its domain ('d'); 0 when there is no such part. */
static int key_part(const char *s, char kind, const char **p, size_t *n)
{
	const char *at = strrchr(s, '@');
	size_t len = strlen(s);
	if (kind == 'u') {
		*p = s;
		*n = at ? (size_t)(at - s) : len;
		if (*n == 0) /* "@domain": no query on an empty local part, as Postfix */
			return 0;
	} else if (kind == 'd') {
		if (!at || !at[1])
			return 0;
		*p = at + 1;
		*n = len - (size_t)(at + 1 - s);
	} else {
		*p = s;
		*n = len;
	}
	return 1;
}

/* map_ldap_expand - see maps_ldap.h. */
int map_ldap_expand(const char *fmt, const char *key, const char *res, int filter, char *out, size_t outlen)
{
	size_t o = 0;
	if (outlen == 0)
		return -1;
	out[0] = 0;
	for (const char *f = fmt; *f; f++) {
		if (*f != '%') {
			if (o + 1 >= outlen)
				return -1;
			out[o++] = *f;
			continue;
		}
		char c = *++f;
		if (c == '%') {
			if (o + 1 >= outlen)
				return -1;
			out[o++] = '%';
			continue;
		}
		if (!c || !strchr("sudSUD", c))
			return -1;
		/* Lower case: the key in a filter, the value in a result. */
		const char *src = (filter || isupper((unsigned char)c)) ? key : res;
		const char *p;
		size_t n;
		if (!src)
			return -1;
		if (!key_part(src, (char)tolower((unsigned char)c), &p, &n)) {
			out[0] = 0;
			return 0;
		}
		if (filter) {
			size_t w = map_ldap_escape(p, n, out + o, outlen - o);
			if (w == (size_t)-1)
				return -1;
			o += w;
		} else {
			if (o + n >= outlen)
				return -1;
			memcpy(out + o, p, n);
			o += n;
		}
	}
	out[o] = 0;
	return 1;
}

/* map_ldap_key_eligible - see maps_ldap.h. */
int map_ldap_key_eligible(const struct ldap_cf *cf, const char *key)
{
	if (!key[0])
		return 0;
	const char *at = strrchr(key, '@');
	if (cf->filter_needs_domain && (!at || !at[1]))
		return 0;
	if (cf->ndomains == 0)
		return 1;
	if (!at || at == key || !at[1])
		return 0;
	for (int i = 0; i < cf->ndomains; i++)
		if (!strcasecmp(at + 1, cf->domains[i]))
			return 1;
	return 0;
}

#ifdef PERIMD_NO_LDAP

/* Without libldap (make NO_LDAP=1): the parser stays (and is fuzzed),
 * an ldap: map is refused when it is opened, at -t as at start-up. */
struct map_ldap {
	int unused;
};

struct map_ldap *map_ldap_open(const char *path, char *err, size_t errlen)
{
	snprintf(err, errlen,
		 "%s: ldap: maps are not built into this perimd "
		 "(a build without libldap; see perimd -V)",
		 path);
	return NULL;
}

int map_ldap_lookup(struct map_ldap *l, const char *key, size_t keylen, char *val, size_t vallen, char *err,
		    size_t errlen)
{
	snprintf(err, errlen, "ldap: not built in");
	return -1;
}

long long map_ldap_cache_ttl(const struct map_ldap *l, int result)
{
	return 0;
}

int map_ldap_workers(const struct map_ldap *l)
{
	return 1;
}

void map_ldap_free(struct map_ldap *l)
{
	free(l);
}

#else

/* ---- connections ----------------------------------------------------------- */

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 30000
#define FILTER_MAX 4096

struct ldap_conn {
	struct ldap_conn *next;
	LDAP *ld;
};

struct ldap_server {
	const char *uri;
	struct ldap_conn *idle;
	int nopen;           /* idle + in use */
	int fails;           /* consecutive connection failures */
	uint64_t down_until; /* monotonic ms: skipped before this */
};

struct map_ldap {
	struct ldap_cf cf;
	char *path;
	pthread_mutex_t mu;
	pthread_cond_t freed; /* a connection went back or was closed */
	struct ldap_server srv[LDAP_CF_MAX_HOSTS];
};

/* Open connections per server URI, over all maps (the gauge
 * perimd_ldap_connections{server=URI}). */
struct srv_count {
	struct srv_count *next;
	int n;
	char uri[];
};
static pthread_mutex_t count_mu = PTHREAD_MUTEX_INITIALIZER;
static struct srv_count *counts;

/* count_conn - one connection to uri more (+1) or less (-1). */
static void count_conn(const char *uri, int delta)
{
	pthread_mutex_lock(&count_mu);
	struct srv_count *c = counts;
	while (c && strcmp(c->uri, uri))
		c = c->next;
	if (!c) {
		c = xcalloc(1, sizeof *c + strlen(uri) + 1);
		strcpy(c->uri, uri);
		c->next = counts;
		counts = c;
	}
	c->n += delta;
	stats_family_set("perimd_ldap_connections", "server", uri, c->n);
	stats_add(ST_ldap_conns, delta);
	pthread_mutex_unlock(&count_mu);
}

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

/* lib_init - libldap's global state, once, before any thread uses it
 * (its first use initialises global options, which is not thread-safe). */
static void lib_init(void)
{
	int v = LDAP_VERSION3;
	ldap_set_option(NULL, LDAP_OPT_PROTOCOL_VERSION, &v);
	stats_family_declare("perimd_ldap_connections", "gauge",
			     "open connections to each LDAP server (ldap: maps)");
}

/* ld_error - a readable reason for rc on ld. */
static void ld_error(LDAP *ld, int rc, const char *what, const char *uri, char *err, size_t errlen)
{
	char *diag = NULL;
	if (ld)
		ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag);
	snprintf(err, errlen, "%s: %s: %s%s%s", uri, what, ldap_err2string(rc), diag && *diag ? ": " : "",
		 diag && *diag ? diag : "");
	ldap_memfree(diag);
}

/* conn_open - connect, StartTLS, bind; NULL with err and *rcp (the LDAP
 * result code: LDAP_INVALID_CREDENTIALS tells a refused bind). */
static struct ldap_conn *conn_open(struct map_ldap *l, const char *uri, int *rcp, char *err, size_t errlen)
{
	const struct ldap_cf *cf = &l->cf;
	LDAP *ld = NULL;
	int rc = ldap_initialize(&ld, uri);
	if (rc != LDAP_SUCCESS) {
		ld_error(NULL, rc, "initialize", uri, err, errlen);
		*rcp = rc;
		return NULL;
	}
	struct timeval tv = { (time_t)(cf->timeout_ms / 1000), (suseconds_t)(cf->timeout_ms % 1000) * 1000 };
	int v = cf->version, deref = cf->dereference, size = (int)cf->size_limit;
	ldap_set_option(ld, LDAP_OPT_PROTOCOL_VERSION, &v);
	ldap_set_option(ld, LDAP_OPT_NETWORK_TIMEOUT, &tv); /* connect */
	ldap_set_option(ld, LDAP_OPT_TIMEOUT, &tv);         /* every synchronous call */
	ldap_set_option(ld, LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
	ldap_set_option(ld, LDAP_OPT_DEREF, &deref);
	ldap_set_option(ld, LDAP_OPT_SIZELIMIT, &size);
	int tls = cf->start_tls || !strncmp(uri, "ldaps:", 6);
	if (tls) {
		int req = cf->tls_require_cert ? LDAP_OPT_X_TLS_DEMAND : LDAP_OPT_X_TLS_NEVER;
		if (cf->tls_ca_cert_file)
			ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTFILE, cf->tls_ca_cert_file);
		if (cf->tls_ca_cert_dir)
			ldap_set_option(ld, LDAP_OPT_X_TLS_CACERTDIR, cf->tls_ca_cert_dir);
		ldap_set_option(ld, LDAP_OPT_X_TLS_REQUIRE_CERT, &req);
		int zero = 0; /* a context of this handle's own, with these settings */
		ldap_set_option(ld, LDAP_OPT_X_TLS_NEWCTX, &zero);
	}
	const char *what = "connect";
	if (cf->start_tls) {
		what = "StartTLS";
		rc = ldap_start_tls_s(ld, NULL, NULL);
	} else {
		rc = ldap_connect(ld);
	}
	if (rc == LDAP_SUCCESS && cf->bind) {
		/* A simple bind (RFC 4513 §5.1); without bind_dn an anonymous one. */
		struct berval cred = { 0, NULL };
		if (cf->bind_pw) {
			cred.bv_val = cf->bind_pw;
			cred.bv_len = strlen(cf->bind_pw);
		}
		what = cf->bind_dn ? "bind" : "anonymous bind";
		rc = ldap_sasl_bind_s(ld, cf->bind_dn ? cf->bind_dn : "", LDAP_SASL_SIMPLE, &cred, NULL, NULL,
				      NULL);
	}
	if (rc != LDAP_SUCCESS) {
		if (rc == LDAP_INVALID_CREDENTIALS && cf->bind_dn)
			snprintf(err, errlen, "%s: bind as \"%s\" refused: %s (check bind_dn and bind_pw)",
				 uri, cf->bind_dn, ldap_err2string(rc));
		else
			ld_error(ld, rc, what, uri, err, errlen);
		ldap_unbind_ext_s(ld, NULL, NULL);
		*rcp = rc;
		return NULL;
	}
	struct ldap_conn *c = xcalloc(1, sizeof *c);
	c->ld = ld;
	count_conn(uri, 1);
	return c;
}

/* conn_close - close one connection of server s (not in its pool). */
static void conn_close(struct map_ldap *l, struct ldap_server *s, struct ldap_conn *c)
{
	ldap_unbind_ext_s(c->ld, NULL, NULL);
	free(c);
	count_conn(s->uri, -1);
	pthread_mutex_lock(&l->mu);
	s->nopen--;
	pthread_cond_broadcast(&l->freed);
	pthread_mutex_unlock(&l->mu);
}

/* conn_put - give a good connection back to its pool (the server
 * answered: its back-off ends). */
static void conn_put(struct map_ldap *l, struct ldap_server *s, struct ldap_conn *c)
{
	pthread_mutex_lock(&l->mu);
	c->next = s->idle;
	s->idle = c;
	int fails = s->fails;
	s->fails = 0;
	s->down_until = 0;
	pthread_cond_broadcast(&l->freed);
	pthread_mutex_unlock(&l->mu);
	if (fails)
		log_info("%s: %s answers again (after %d failed attempts)", l->path, s->uri, fails);
}

/* pool_drain - close s's idle connections: one of them broke, so the
 * others (opened before the same restart or network cut) are suspect. */
static void pool_drain(struct map_ldap *l, struct ldap_server *s)
{
	pthread_mutex_lock(&l->mu);
	struct ldap_conn *c = s->idle;
	s->idle = NULL;
	pthread_mutex_unlock(&l->mu);
	while (c) {
		struct ldap_conn *next = c->next;
		conn_close(l, s, c);
		c = next;
	}
}

/* server_failed - a connection to s could not be made or broke: back off. */
static void server_failed(struct map_ldap *l, struct ldap_server *s)
{
	pthread_mutex_lock(&l->mu);
	uint64_t wait = BACKOFF_MIN_MS;
	for (int i = 0; i < s->fails && wait < BACKOFF_MAX_MS; i++)
		wait *= 2;
	if (wait > BACKOFF_MAX_MS)
		wait = BACKOFF_MAX_MS;
	s->fails++;
	s->down_until = clock_ms() + wait;
	pthread_mutex_unlock(&l->mu);
}

/* conn_get - a connection to s: an idle one (*pooled = 1), else a new one
 * while fewer than connection_limit are open, else wait (up to timeout)
 * for one. NULL with err: the server is backing off, cannot be reached,
 * or the pool stayed full. */
static struct ldap_conn *conn_get(struct map_ldap *l, struct ldap_server *s, int *pooled, char *err,
				  size_t errlen)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += (time_t)(l->cf.timeout_ms / 1000);
	until.tv_nsec += (long)(l->cf.timeout_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&l->mu);
	for (;;) {
		if (s->down_until > clock_ms()) {
			pthread_mutex_unlock(&l->mu);
			snprintf(err, errlen, "%s: not tried: failed %d times in a row, backing off", s->uri,
				 s->fails);
			return NULL;
		}
		if (s->idle) {
			struct ldap_conn *c = s->idle;
			s->idle = c->next;
			pthread_mutex_unlock(&l->mu);
			*pooled = 1;
			return c;
		}
		if (s->nopen < l->cf.connection_limit)
			break;
		if (pthread_cond_timedwait(&l->freed, &l->mu, &until) == ETIMEDOUT) {
			pthread_mutex_unlock(&l->mu);
			snprintf(err, errlen, "%s: all %lld connections busy for the whole timeout", s->uri,
				 l->cf.connection_limit);
			return NULL;
		}
	}
	s->nopen++;
	pthread_mutex_unlock(&l->mu);
	*pooled = 0;
	int rc;
	struct ldap_conn *c = conn_open(l, s->uri, &rc, err, errlen);
	if (!c) {
		stats_inc(ST_ldap_errors);
		pthread_mutex_lock(&l->mu);
		s->nopen--;
		pthread_cond_broadcast(&l->freed);
		pthread_mutex_unlock(&l->mu);
		server_failed(l, s);
	}
	return c;
}

/* conn_error - rc means the connection is no longer usable. */
static int conn_error(int rc)
{
	return rc == LDAP_SERVER_DOWN || rc == LDAP_TIMEOUT || rc == LDAP_CONNECT_ERROR ||
	    rc == LDAP_UNAVAILABLE || rc == LDAP_BUSY || rc == LDAP_LOCAL_ERROR ||
	    rc == LDAP_ENCODING_ERROR || rc == LDAP_DECODING_ERROR || rc == LDAP_TIMELIMIT_EXCEEDED;
}

/* append - one result value into val, comma-separated (Postfix's joining). */
static void append(char *val, size_t vallen, size_t *o, const char *v)
{
	size_t n = strlen(v);
	if (*o > 0 && *o + 1 < vallen)
		val[(*o)++] = ',';
	if (*o + n >= vallen)
		n = *o < vallen ? vallen - 1 - *o : 0;
	memcpy(val + *o, v, n);
	*o += n;
	val[*o] = 0;
}

/* search - one search on c: 1, 0, or -1 with *rcp the result code. */
static int search(struct map_ldap *l, struct ldap_conn *c, const char *uri, const char *filter,
		  const char *key, char *val, size_t vallen, int *rcp, char *err, size_t errlen)
{
	const struct ldap_cf *cf = &l->cf;
	static const int scopes[] = { LDAP_SCOPE_SUBTREE, LDAP_SCOPE_BASE, LDAP_SCOPE_ONELEVEL };
	struct timeval tv = { (time_t)(cf->timeout_ms / 1000), (suseconds_t)(cf->timeout_ms % 1000) * 1000 };
	LDAPMessage *res = NULL;
	int rc = ldap_search_ext_s(c->ld, cf->search_base, scopes[cf->scope], filter, (char **)cf->attrs, 0,
				   NULL, NULL, &tv, (int)cf->size_limit, &res);
	*rcp = rc;
	if (rc == LDAP_NO_SUCH_OBJECT) {
		/* The search base does not exist: no entry (Postfix: not found). */
		ldap_msgfree(res);
		return 0;
	}
	if (rc != LDAP_SUCCESS) {
		ld_error(c->ld, rc, "search", uri, err, errlen);
		ldap_msgfree(res);
		return -1;
	}
	size_t o = 0;
	int found = 0;
	val[0] = 0;
	for (LDAPMessage *e = ldap_first_entry(c->ld, res); e; e = ldap_next_entry(c->ld, e))
		for (int a = 0; a < cf->nattrs; a++) {
			struct berval **vals = ldap_get_values_len(c->ld, e, cf->attrs[a]);
			for (int i = 0; vals && vals[i]; i++) {
				char v[1024], out[2048];
				size_t n = vals[i]->bv_len < sizeof v - 1 ? vals[i]->bv_len : sizeof v - 1;
				if (n < vals[i]->bv_len) /* every map's values end at 1023 bytes */
					log_warn("ldap %s: value of %s for <%s> is %lu bytes; only its first "
						 "%zu used",
						 uri, cf->attrs[a], key, (unsigned long)vals[i]->bv_len, n);
				memcpy(v, vals[i]->bv_val, n);
				v[n] = 0;
				if (strlen(v) != n) /* a NUL inside: not a mail value */
					continue;
				if (map_ldap_expand(cf->result_format, key, v, 0, out, sizeof out) == 1) {
					append(val, vallen, &o, out);
					found = 1;
				}
			}
			ldap_value_free_len(vals);
		}
	ldap_msgfree(res);
	return found;
}

/* map_ldap_lookup - see maps_ldap.h. */
int map_ldap_lookup(struct map_ldap *l, const char *key, size_t keylen, char *val, size_t vallen, char *err,
		    size_t errlen)
{
	char k[1024], filter[FILTER_MAX];
	if (keylen >= sizeof k)
		return 0;
	/* Keys folded to lower case, as Postfix's ldap: tables do. */
	for (size_t i = 0; i < keylen; i++)
		k[i] = (char)tolower((unsigned char)key[i]);
	k[keylen] = 0;
	if (vallen)
		val[0] = 0;
	if (strlen(k) != keylen || !map_ldap_key_eligible(&l->cf, k))
		return 0;
	int x = map_ldap_expand(l->cf.query_filter, k, NULL, 1, filter, sizeof filter);
	if (x == 0)
		return 0;
	if (x < 0) {
		snprintf(err, errlen, "%s: query_filter: the key makes the filter too long", l->path);
		stats_inc(ST_ldap_error);
		return -1;
	}
	uint64_t t0 = clock_ms();
	int result = -1;
	snprintf(err, errlen, "%s: no server", l->path);
	for (int i = 0; i < l->cf.nuris && result < 0; i++) {
		struct ldap_server *s = &l->srv[i];
		for (int attempt = 0; attempt < 2; attempt++) {
			int pooled, rc;
			struct ldap_conn *c = conn_get(l, s, &pooled, err, errlen);
			if (!c)
				break; /* the next server */
			result = search(l, c, s->uri, filter, k, val, vallen, &rc, err, errlen);
			if (result >= 0 || !conn_error(rc)) {
				conn_put(l, s, c);
				if (result < 0)
					stats_inc(ST_ldap_errors);
				i = l->cf.nuris; /* an answer, or an error every server would give */
				break;
			}
			stats_inc(ST_ldap_errors);
			conn_close(l, s, c);
			if (!pooled) {
				server_failed(l, s);
				break;
			}
			pool_drain(l, s);
			/* A pooled connection may simply have been closed by the
			 * server (idle timeout, restart): once more on a new one. */
		}
	}
	stats_observe(SH_ldap_lookup, clock_ms() - t0);
	stats_inc(result > 0 ? ST_ldap_found : result == 0 ? ST_ldap_notfound : ST_ldap_error);
	return result;
}

/* map_ldap_open - see maps_ldap.h. */
struct map_ldap *map_ldap_open(const char *path, char *err, size_t errlen)
{
	pthread_once(&lib_once, lib_init);
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	char *text = NULL;
	size_t cap = 0, n = 0;
	if (fstat(fileno(f), &st) < 0 || st.st_size > 1 << 20) {
		snprintf(err, errlen, "%s: not a .cf file (over 1 MB or unreadable)", path);
		fclose(f);
		return NULL;
	}
	for (;;) {
		if (n + 4096 > cap)
			text = xrealloc(text, cap = n + 8192);
		size_t r = fread(text + n, 1, cap - n, f);
		n += r;
		if (r == 0)
			break;
	}
	int rerr = ferror(f);
	fclose(f);
	struct map_ldap *l = xcalloc(1, sizeof *l);
	int rc = rerr ? -1 : map_ldap_cf_parse(&l->cf, path, text, n, err, errlen);
	if (rerr)
		snprintf(err, errlen, "%s: read error", path);
	free(text);
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->freed, NULL);
	l->path = xstrdup(path);
	if (rc < 0) {
		map_ldap_free(l);
		return NULL;
	}
	for (int i = 0; i < l->cf.nuris; i++)
		l->srv[i].uri = l->cf.uris[i];
	/* The password must stay between the file's owner (mail_owner) and perimd. */
	if (l->cf.bind_pw && (st.st_mode & 077))
		log_warn("%s: holds bind_pw but is readable by others than its owner (mode %04o): "
			 "chown it to mail_owner and chmod 600 it",
			 path, (unsigned)(st.st_mode & 07777));
	/* Try the servers now: a refused bind is a configuration error; an
	 * unreachable directory is not (an outage must not stop a restart). */
	char why[512] = "";
	for (int i = 0; i < l->cf.nuris; i++) {
		int lrc;
		struct ldap_conn *c = conn_open(l, l->srv[i].uri, &lrc, why, sizeof why);
		if (c) {
			pthread_mutex_lock(&l->mu);
			l->srv[i].nopen++;
			pthread_mutex_unlock(&l->mu);
			conn_put(l, &l->srv[i], c);
			return l;
		}
		if (lrc == LDAP_INVALID_CREDENTIALS || lrc == LDAP_INAPPROPRIATE_AUTH ||
		    lrc == LDAP_UNWILLING_TO_PERFORM || lrc == LDAP_CONFIDENTIALITY_REQUIRED ||
		    lrc == LDAP_STRONG_AUTH_REQUIRED || lrc == LDAP_INSUFFICIENT_ACCESS ||
		    lrc == LDAP_PROTOCOL_ERROR) {
			snprintf(err, errlen, "%s: %s", path, why);
			map_ldap_free(l);
			return NULL;
		}
		log_warn("%s: %s (lookups through this server fail with 451 until it answers)", path, why);
	}
	return l;
}

/* map_ldap_cache_ttl - see maps_ldap.h. */
long long map_ldap_cache_ttl(const struct map_ldap *l, int result)
{
	return result > 0 ? l->cf.cache_ttl_ms : l->cf.negative_cache_ttl_ms;
}

/* map_ldap_workers - see maps_ldap.h. */
int map_ldap_workers(const struct map_ldap *l)
{
	return (int)l->cf.connection_limit;
}

/* map_ldap_free - close the pools, free the settings. */
void map_ldap_free(struct map_ldap *l)
{
	if (!l)
		return;
	for (int i = 0; i < l->cf.nuris; i++) {
		struct ldap_server *s = &l->srv[i];
		while (s->idle) {
			struct ldap_conn *c = s->idle;
			s->idle = c->next;
			conn_close(l, s, c);
		}
	}
	map_ldap_cf_free(&l->cf);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->freed);
	free(l->path);
	free(l);
}

#endif
