/*
 * maps.c - lookup tables named "type:path": file: here, sqlite: and mysql:
 * through maps_sql.c, ldap: through maps_ldap.c; the registry that makes reloads safe; the lookup
 * orders; the asynchronous front with its answer cache.
 *
 * Invariants: a map is fully built by map_open() and never modified after
 * (except its answer cache, under its own mutex), so any number of threads
 * may look it up without locks. Reference counts and the registry (one
 * entry per spec: the newest map opened from it) are guarded by reg_mu. A
 * reload opens every map anew: an unchanged file (same device, inode, size
 * and mtime) gives the registered map back; a changed one is loaded, and if
 * that fails the registered map is given back and the error logged, so a
 * broken file never replaces a working table. Keys are stored lower-cased
 * (ASCII) and lookups fold case the same way, so "Postmaster" finds
 * "postmaster". A duplicate key keeps the first entry and logs a warning
 * naming both lines, as Postfix's postmap does.
 *
 * File syntax, as Postfix's source files for postmap: "key value" per
 * logical line (the value may be empty, or hold spaces); a line starting
 * with whitespace continues the previous logical line (joined with one
 * space); blank lines and lines whose first non-whitespace character is
 * '#' are ignored. A key "address/bits" is a CIDR block (RFC 4632).
 *
 * Asynchronous maps: a query takes a reference on the map, runs every
 * candidate key on a worker (jobs.h) and comes back on the loop; a cached
 * answer comes back through ev_defer. Lookup failures are never cached.
 * An ldap: map has a worker pool of its own, as wide as its connection
 * pool (connection_limit), so its lookups are neither capped by the
 * shared workers nor queued behind SQL statements.
 */
#include "maps.h"
#include "clock.h"
#include "ev.h"
#include "hash.h"
#include "jobs.h"
#include "log.h"
#include "maps_ldap.h"
#include "maps_regexp.h"
#include "maps_sql.h"
#include "shcache.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#define CACHE_BUCKETS 1024
#define CACHE_MAX 50000 /* answers per map; the oldest go past it */
#define KEY_MAX 1024

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct map *registry;

struct map_entry {
	char *key;   /* lower-cased */
	char *value; /* "" when the line had a key only */
	int line;    /* where it was defined, for duplicate warnings */
	uint32_t hash;
	uint32_t klen;
	struct map_entry *next; /* same bucket */
};

struct map_cidr {
	unsigned char addr[16]; /* IPv4 as ::ffff:a.b.c.d */
	int bits;               /* prefix length over the 128 bits */
	int order;              /* position in the file */
	char *value;
};

/* A cached answer of an sql/ldap map: the value of its answer cache, a
 * shcache keyed by the kind byte and the lower-cased key, expiring in
 * monotonic ms. */
struct cached {
	int result; /* 1 found, 0 not found */
	char *value;
};

struct map {
	char *spec;
	int refs;       /* under reg_mu */
	int registered; /* the registry's entry for spec */
	struct map *reg_next;
	dev_t dev; /* identity of the file it was loaded from */
	ino_t ino;
	off_t size;
	struct timespec mtime;
	struct stat seen; /* the file as maps_changed() last saw it (reg_mu) */
	/* file: */
	size_t nbuckets; /* a power of two */
	size_t n;
	struct map_entry **buckets;
	struct map_cidr *cidr; /* longest prefix first */
	int ncidr;
	/* regexp: */
	struct map_regexp *rx;
	/* sqlite: / mysql: */
	struct map_sql *sql;
	/* ldap: (also asynchronous: sql or ldap set means the answer cache is used) */
	struct map_ldap *ldap;
	struct jobs_pool *pool; /* ldap: its own workers, one per connection it may open */
	struct shcache *cache;
	/* the check its values passed: a map is shared (registry) only by
	 * users of the same check, so a file used as a transport map and an
	 * access map is checked as both */
	map_value_check_fn *checked;
	/* while loading: the caller's check of each value, and its verdicts */
	map_value_check_fn *check;
	char *err;
	size_t errlen;
	int nbad;
};

static struct shcache *cache_new(void);

/* map_find - the entry for the n bytes at key (any case), or NULL. */
static struct map_entry *map_find(const struct map *m, const char *key, size_t n)
{
	uint32_t h = hash_lower32(key, n);
	for (struct map_entry *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next)
		if (e->hash == h && e->klen == n && strncasecmp(e->key, key, n) == 0)
			return e;
	return NULL;
}

/* map_grow - double the bucket array and rehash. */
static void map_grow(struct map *m)
{
	size_t nb = m->nbuckets * 2;
	struct map_entry **b = xcalloc(nb, sizeof *b);
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct map_entry *e = m->buckets[i], *next;
		for (; e; e = next) {
			next = e->next;
			e->next = b[e->hash & (nb - 1)];
			b[e->hash & (nb - 1)] = e;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = nb;
}

/* map_add - enter one "key value" logical line (whitespace already trimmed). */
static void map_add(struct map *m, const char *path, int line, const char *text)
{
	size_t kn = strcspn(text, " \t");
	const char *v = text + kn;
	v += strspn(v, " \t");
	char why[400];

	if (m->check && m->check(v, why, sizeof why) < 0) {
		log_err_add(m->err, m->errlen, "%s:%d: %.*s: %s", path, line, (int)(kn > 200 ? 200 : kn),
			    text, why);
		m->nbad++;
		return;
	}
	unsigned char a[16];
	int bits;
	if (memchr(text, '/', kn) && map_cidr_parse(text, kn, a, &bits) == 0) {
		m->cidr = xrealloc(m->cidr, (size_t)(m->ncidr + 1) * sizeof *m->cidr);
		struct map_cidr *c = &m->cidr[m->ncidr++];
		memcpy(c->addr, a, 16);
		c->bits = bits;
		c->order = m->ncidr;
		c->value = xstrdup(v);
		return;
	}
	struct map_entry *old = map_find(m, text, kn);
	if (old) {
		log_warn("%s:%d: duplicate key \"%.*s\": keeping the entry of line %d", path, line, (int)kn,
			 text, old->line);
		return;
	}
	if (m->n >= m->nbuckets)
		map_grow(m);
	struct map_entry *e = xmalloc(sizeof *e);
	e->key = xstrndup(text, kn);
	for (char *k = e->key; *k; k++)
		*k = (char)tolower((unsigned char)*k);
	e->value = xstrdup(v);
	e->line = line;
	e->hash = hash_lower32(e->key, kn);
	e->klen = (uint32_t)kn;
	e->next = m->buckets[e->hash & (m->nbuckets - 1)];
	m->buckets[e->hash & (m->nbuckets - 1)] = e;
	m->n++;
}

/* file_load - read a file: map's source lines into m; 0, or -1 with err. */
static int file_load(struct map *m, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	char *line = NULL, *cur = NULL;
	size_t cap = 0, curlen = 0;
	ssize_t len;
	int lineno = 0, start = 0, rc = 0;

	while ((len = getline(&line, &cap, f)) >= 0) {
		lineno++;
		if (strlen(line) != (size_t)len) {
			snprintf(err, errlen, "%s:%d: NUL byte in line", path, lineno);
			rc = -1;
			break;
		}
		/* Trim both ends; line[0] still tells whether it was indented. */
		char *t = line + strspn(line, " \t\r\n\f\v");
		size_t tn = strlen(t);
		while (tn > 0 && isspace((unsigned char)t[tn - 1]))
			t[--tn] = 0;
		if (tn == 0 || *t == '#')
			continue;
		if (isspace((unsigned char)line[0])) {
			if (!start) {
				snprintf(err, errlen, "%s:%d: continuation line without a key line before it",
					 path, lineno);
				rc = -1;
				break;
			}
			cur = xrealloc(cur, curlen + tn + 2);
			cur[curlen++] = ' ';
			memcpy(cur + curlen, t, tn + 1);
			curlen += tn;
			continue;
		}
		if (start)
			map_add(m, path, start, cur);
		cur = xrealloc(cur, tn + 1);
		memcpy(cur, t, tn + 1);
		curlen = tn;
		start = lineno;
	}
	if (rc == 0 && ferror(f)) {
		snprintf(err, errlen, "%s: read error: %s", path, strerror(errno));
		rc = -1;
	}
	if (rc == 0 && start)
		map_add(m, path, start, cur);
	if (rc == 0 && m->nbad)
		rc = -1;
	free(cur);
	free(line);
	fclose(f);
	return rc;
}


/* map_cidr_parse - see maps.h. */
int map_cidr_parse(const char *text, size_t n, unsigned char addr[16], int *bits)
{
	char buf[64];
	const char *slash = memchr(text, '/', n);
	if (!slash || (size_t)(slash - text) >= sizeof buf || slash + 1 == text + n)
		return -1;
	memcpy(buf, text, (size_t)(slash - text));
	buf[slash - text] = 0;
	int b = 0;
	for (const char *p = slash + 1; p < text + n; p++) {
		if (!isdigit((unsigned char)*p) || b > 128)
			return -1;
		b = b * 10 + (*p - '0');
	}
	memset(addr, 0, 16);
	if (inet_pton(AF_INET, buf, addr + 12) == 1) {
		if (b > 32)
			return -1;
		addr[10] = addr[11] = 0xff;
		b += 96;
	} else if (inet_pton(AF_INET6, buf, addr) != 1 || b > 128) {
		return -1;
	}
	*bits = b;
	return 0;
}

/* ip_parse - an address as 16 bytes (IPv4 mapped); -1 if it is none. */
static int ip_parse(const char *ip, unsigned char addr[16])
{
	memset(addr, 0, 16);
	if (inet_pton(AF_INET, ip, addr + 12) == 1) {
		addr[10] = addr[11] = 0xff;
		return 0;
	}
	return inet_pton(AF_INET6, ip, addr) == 1 ? 0 : -1;
}

/* prefix_match - the first bits of a and b agree. */
static int prefix_match(const unsigned char *a, const unsigned char *b, int bits)
{
	int full = bits / 8, rest = bits % 8;
	if (memcmp(a, b, (size_t)full) != 0)
		return 0;
	if (!rest)
		return 1;
	unsigned char mask = (unsigned char)(0xff << (8 - rest));
	return (a[full] & mask) == (b[full] & mask);
}

/* cidr_cmp - longer prefixes first, else file order. */
static int cidr_cmp(const void *a, const void *b)
{
	const struct map_cidr *x = a, *y = b;
	if (x->bits != y->bits)
		return y->bits - x->bits;
	return x->order - y->order;
}

/* file_stat - the identity of path; 0 or -1 with err. */
static int file_stat(const char *path, struct stat *st, char *err, size_t errlen)
{
	if (stat(path, st) < 0) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

/* same_file - the map was loaded from exactly this version of the file. */
static int same_file(const struct map *m, const struct stat *st)
{
	return m->dev == st->st_dev && m->ino == st->st_ino && m->size == st->st_size &&
	    m->mtime.tv_sec == st->st_mtim.tv_sec && m->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

/* map_destroy - free a map that nobody holds. */
static void map_destroy(struct map *m)
{
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct map_entry *e = m->buckets[i], *next;
		for (; e; e = next) {
			next = e->next;
			free(e->key);
			free(e->value);
			free(e);
		}
	}
	for (int i = 0; i < m->ncidr; i++)
		free(m->cidr[i].value);
	free(m->cidr);
	free(m->buckets);
	map_regexp_free(m->rx);
	if (m->sql || m->ldap) {
		jobs_pool_free(m->pool);
		map_sql_free(m->sql);
		map_ldap_free(m->ldap);
		shcache_free(m->cache);
	}
	free(m->spec);
	free(m);
}

/* map_load - build a new map from spec's file; NULL with err. */
static struct map *map_load(const char *spec, const char *type, const char *path, const struct stat *st,
			    map_value_check_fn *check, char *err, size_t errlen)
{
	struct map *m = xcalloc(1, sizeof *m);
	m->check = check;
	m->checked = check;
	m->err = err;
	m->errlen = errlen;
	if (errlen)
		err[0] = 0;
	m->spec = xstrdup(spec);
	m->refs = 1;
	m->dev = st->st_dev;
	m->ino = st->st_ino;
	m->size = st->st_size;
	m->mtime = st->st_mtim;
	m->seen = *st;
	m->nbuckets = 16;
	m->buckets = xcalloc(m->nbuckets, sizeof *m->buckets);
	if (!strcmp(type, "file")) {
		int rc = file_load(m, path, err, errlen);
		m->check = NULL;
		m->err = NULL;
		if (rc < 0) {
			map_destroy(m);
			return NULL;
		}
		if (m->ncidr > 1)
			qsort(m->cidr, (size_t)m->ncidr, sizeof *m->cidr, cidr_cmp);
		return m;
	}
	if (!strcmp(type, "regexp")) {
		m->rx = map_regexp_open(path, check, err, errlen);
		m->check = NULL;
		m->err = NULL;
		if (!m->rx) {
			map_destroy(m);
			return NULL;
		}
		return m;
	}
	if (!strcmp(type, "ldap"))
		m->ldap = map_ldap_open(path, err, errlen);
	else
		m->sql = map_sql_open(type, path, err, errlen);
	if (!m->sql && !m->ldap) {
		map_destroy(m);
		return NULL;
	}
	m->cache = cache_new();
	if (m->ldap)
		m->pool = jobs_pool_new(map_ldap_workers(m->ldap));
	return m;
}

/* foreign_type - what to write instead of a Postfix map type perimd does
 * not read, or NULL. */
static const char *foreign_type(const char *type)
{
	static const char *const indexed[] = { "hash", "btree", "cdb", "lmdb", "dbm", "sdbm", "texthash" };
	for (size_t i = 0; i < sizeof indexed / sizeof indexed[0]; i++)
		if (!strcmp(type, indexed[i]))
			return "write file: and the source text file that postmap reads (not the .db), "
			       "e.g. file:/etc/postfix/transport";
	if (!strcmp(type, "pcre"))
		return "write regexp: (POSIX extended regexes; PCRE-only syntax such as \\d or "
		       "lookarounds does not match as in PCRE)";
	if (!strcmp(type, "proxy"))
		return "drop the proxy: prefix (perimd keeps its own connection pool): ldap:, mysql:";
	if (!strcmp(type, "cidr"))
		return "write file: (a file: map takes address/bits keys for client_access_maps)";
	return NULL;
}

/* map_open - see maps.h. */
struct map *map_open(const char *spec, char *err, size_t errlen)
{
	return map_open_checked(spec, NULL, err, errlen);
}

/* map_open_checked - see maps.h. */
struct map *map_open_checked(const char *spec, map_value_check_fn *check, char *err, size_t errlen)
{
	const char *colon = strchr(spec, ':');
	if (!colon || colon == spec || colon[1] == 0) {
		snprintf(err, errlen, "\"%s\": not a map (expected type:path)", spec);
		return NULL;
	}
	char type[16];
	size_t tn = (size_t)(colon - spec);
	if (tn >= sizeof type) {
		snprintf(err, errlen, "\"%s\": unknown map type", spec);
		return NULL;
	}
	memcpy(type, spec, tn);
	type[tn] = 0;
	if (strcmp(type, "file") && strcmp(type, "regexp") && strcmp(type, "sqlite") &&
	    strcmp(type, "mysql") && strcmp(type, "ldap")) {
		const char *instead = foreign_type(type);
		if (instead) {
			snprintf(err, errlen, "\"%s\": map type \"%s\" is Postfix's: %s", spec, type, instead);
			return NULL;
		}
		snprintf(err, errlen,
			 "\"%s\": unknown map type \"%s\" (supported: file, regexp, sqlite, mysql, ldap)",
			 spec, type);
		return NULL;
	}
	const char *path = colon + 1;
	struct stat st;
	int have = file_stat(path, &st, err, errlen) == 0;

	pthread_mutex_lock(&reg_mu);
	struct map *old = registry;
	while (old && (strcmp(old->spec, spec) || old->checked != check))
		old = old->reg_next;
	if (old && have && same_file(old, &st)) {
		old->refs++;
		pthread_mutex_unlock(&reg_mu);
		return old;
	}
	pthread_mutex_unlock(&reg_mu);

	struct map *m = have ? map_load(spec, type, path, &st, check, err, errlen) : NULL;

	pthread_mutex_lock(&reg_mu);
	struct map **pp = &registry;
	while (*pp && (strcmp((*pp)->spec, spec) || (*pp)->checked != check))
		pp = &(*pp)->reg_next;
	if (!m) {
		if (*pp) {
			/* A reload with a broken file: keep serving the table we have. */
			for (const char *e = err; *e;) {
				size_t n = strcspn(e, "\n");
				log_err("map %s not reloaded, keeping the previous table: %.*s", spec, (int)n,
					e);
				e += n + (e[n] == '\n');
			}
			(*pp)->refs++;
			m = *pp;
		}
		pthread_mutex_unlock(&reg_mu);
		return m;
	}
	if (*pp) {
		struct map *prev = *pp;
		*pp = prev->reg_next;
		prev->registered = 0;
		prev->reg_next = NULL;
	}
	m->registered = 1;
	m->reg_next = registry;
	registry = m;
	pthread_mutex_unlock(&reg_mu);
	if (old)
		log_info("map %s reloaded", spec);
	return m;
}

/* map_ref - one more holder. */
static void map_ref(const struct map *cm)
{
	struct map *m = (struct map *)cm;
	pthread_mutex_lock(&reg_mu);
	m->refs++;
	pthread_mutex_unlock(&reg_mu);
}

/* map_free - drop a holder; the last one frees the map (NULL is ignored). */
void map_free(struct map *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&reg_mu);
	if (--m->refs > 0) {
		pthread_mutex_unlock(&reg_mu);
		return;
	}
	if (m->registered) {
		struct map **pp = &registry;
		while (*pp != m)
			pp = &(*pp)->reg_next;
		*pp = m->reg_next;
	}
	pthread_mutex_unlock(&reg_mu);
	map_destroy(m);
}

/* map_spec - the "type:path" the map was opened with. */
const char *map_spec(const struct map *m)
{
	return m->spec;
}

/* map_is_async - see maps.h. */
int map_is_async(const struct map *m)
{
	return m->sql != NULL || m->ldap != NULL;
}

/* map_lookup - see maps.h. */
int map_lookup(const struct map *m, const char *key, const char **value)
{
	if (m->sql || m->ldap || m->rx)
		return -1;
	struct map_entry *e = map_find(m, key, strlen(key));
	if (!e)
		return 0;
	*value = e->value;
	return 1;
}

/*
 * map_lookup_domain - see maps.h: "a.b.example.com" tries that key, then
 * ".b.example.com", ".example.com", ".com". A trailing dot on the query
 * (an absolute name) is ignored.
 */
int map_lookup_domain(const struct map *m, const char *domain, const char **value)
{
	if (m->sql || m->ldap || m->rx)
		return -1;
	size_t n = strlen(domain);
	if (n > 0 && domain[n - 1] == '.')
		n--;
	if (n == 0)
		return 0;
	struct map_entry *e = map_find(m, domain, n);
	for (size_t i = 1; !e && i < n; i++)
		if (domain[i] == '.' && i + 1 < n)
			e = map_find(m, domain + i, n - i);
	if (!e)
		return 0;
	*value = e->value;
	return 1;
}

/* ---- lookup orders -------------------------------------------------------- */

struct probe {
	const struct map *m;
	char *val;
	size_t vallen;
	char *err;
	size_t errlen;
};

/* probe_key - one candidate key: 1 found (value copied), 0, -1. */
static int probe_key(struct probe *p, const char *k, size_t kn)
{
	if (kn == 0 || kn >= KEY_MAX)
		return 0;
	if (p->m->sql)
		return map_sql_lookup(p->m->sql, k, kn, p->val, p->vallen, p->err, p->errlen);
	if (p->m->ldap)
		return map_ldap_lookup(p->m->ldap, k, kn, p->val, p->vallen, p->err, p->errlen);
	struct map_entry *e = map_find(p->m, k, kn);
	if (!e)
		return 0;
	snprintf(p->val, p->vallen, "%s", e->value);
	return 1;
}

/* probe_parents - ".b.example.com", ".example.com", ".com" of domain d. */
static int probe_parents(struct probe *p, const char *d, size_t n)
{
	for (size_t i = 1; i < n; i++)
		if (d[i] == '.' && i + 1 < n) {
			int r = probe_key(p, d + i, n - i);
			if (r)
				return r;
		}
	return 0;
}

/* probe_client - IP: itself, CIDR blocks, IPv4 octet prefixes. */
static int probe_client(struct probe *p, const char *ip)
{
	size_t n = strlen(ip);
	int r = probe_key(p, ip, n);
	if (r)
		return r;
	unsigned char a[16];
	if (p->m->ncidr && ip_parse(ip, a) == 0)
		for (int i = 0; i < p->m->ncidr; i++)
			if (prefix_match(a, p->m->cidr[i].addr, p->m->cidr[i].bits)) {
				snprintf(p->val, p->vallen, "%s", p->m->cidr[i].value);
				return 1;
			}
	if (strchr(ip, ':'))
		return 0;
	for (size_t i = n; i > 0; i--)
		if (ip[i - 1] == '.' && (r = probe_key(p, ip, i - 1)) != 0)
			return r;
	return 0;
}

/* map_query - see maps.h. */
int map_query(const struct map *m, enum map_kind kind, const char *key, char *val, size_t vallen, char *err,
	      size_t errlen)
{
	struct probe p = { m, val, vallen, err, errlen };
	size_t n = strlen(key);
	int r;
	if (vallen)
		val[0] = 0;
	/* A regexp: table is asked once, with the whole key, whatever the
	 * kind (as Postfix's regexp tables in access(5)). */
	if (m->rx)
		return n < KEY_MAX ? map_regexp_lookup(m->rx, key, val, vallen) : 0;
	switch (kind) {
	case MAP_KEY: return probe_key(&p, key, n);
	case MAP_DOMAIN:
		if (n > 0 && key[n - 1] == '.')
			n--;
		if ((r = probe_key(&p, key, n)) != 0)
			return r;
		return probe_parents(&p, key, n);
	case MAP_ADDR:
	case MAP_ADDR_PARENT: {
		/* Postfix access(5): user@domain, domain (and its parents),
		 * then user@. */
		if ((r = probe_key(&p, key, n)) != 0)
			return r;
		const char *at = strrchr(key, '@');
		if (!at)
			return 0;
		const char *d = at + 1;
		size_t dn = strlen(d);
		if ((r = probe_key(&p, d, dn)) != 0)
			return r;
		if (kind == MAP_ADDR_PARENT && (r = probe_parents(&p, d, dn)) != 0)
			return r;
		return probe_key(&p, key, (size_t)(at - key) + 1);
	}
	case MAP_CLIENT: return probe_client(&p, key);
	case MAP_RCPT: {
		if ((r = probe_key(&p, key, n)) != 0)
			return r;
		const char *at = strrchr(key, '@');
		return at && at != key && at[1] ? probe_key(&p, at, strlen(at)) : 0;
	}
	}
	return 0;
}

/* ---- the asynchronous front ------------------------------------------------ */

struct map_req {
	const struct map *m;
	struct ev_loop *loop;
	map_done_fn *cb;
	void *arg;
	struct job *job;
	struct ev_defer d; /* a cached answer */
	enum map_kind kind;
	int result;
	char *key;
	char val[1024];
	char err[256];
};

/* cache_key - the kind byte and the key folded to lower case, into buf
 * when it fits, else allocated (the caller frees what is not buf). */
static char *cache_key(enum map_kind kind, const char *key, char *buf, size_t buflen)
{
	size_t kn = strlen(key);
	char *k = kn + 2 <= buflen ? buf : xmalloc(kn + 2);
	k[0] = (char)kind;
	for (size_t i = 0; i <= kn; i++)
		k[i + 1] = (char)tolower((unsigned char)key[i]);
	return k;
}

/* What cache_get and cache_put pass to their callbacks. */
struct cache_arg {
	int result;
	const char *value; /* cache_put */
	uint64_t expires;  /* cache_put */
	char *out;         /* cache_get */
	size_t outlen;
};

/* cache_read - cache_get's callback: copy the answer out. */
static enum shcache_act cache_read(void *val, uint64_t *expires, int fresh, void *arg)
{
	const struct cached *c = val;
	struct cache_arg *a = arg;
	(void)expires;
	(void)fresh;
	a->result = c->result;
	snprintf(a->out, a->outlen, "%s", c->value);
	return SHCACHE_KEEP;
}

/* cache_get - a live cached answer for (kind, key): 1 with result/val. */
static int cache_get(struct map *m, enum map_kind kind, const char *key, int *result, char *val, size_t vallen)
{
	char buf[512], *k = cache_key(kind, key, buf, sizeof buf);
	struct cache_arg a = { .out = val, .outlen = vallen };
	int hit = shcache_update(m->cache, k, clock_ms(), 0, cache_read, &a);
	if (k != buf)
		free(k);
	if (hit)
		*result = a.result;
	return hit;
}

/* cache_write - cache_put's callback: the entry gets the answer; a live
 * one (another thread's answer for the key) gives its value back first. */
static enum shcache_act cache_write(void *val, uint64_t *expires, int fresh, void *arg)
{
	struct cached *c = val;
	const struct cache_arg *a = arg;
	if (!fresh)
		free(c->value);
	c->result = a->result;
	c->value = xstrdup(a->value);
	*expires = a->expires;
	return SHCACHE_KEEP;
}

/* cache_drop - an answer goes: its value with it. */
static void cache_drop(void *val)
{
	free(((struct cached *)val)->value);
}

/* cache_new - the answer cache of one map: 16 shards of 64 chains, at most
 * CACHE_MAX answers, the oldest evicted first. */
static struct shcache *cache_new(void)
{
	const struct shcache_conf cf = { .shards = 16,
					 .buckets = CACHE_BUCKETS / 16,
					 .valsize = sizeof(struct cached),
					 .max = CACHE_MAX / 16,
					 .evict = 1,
					 .drop = cache_drop };
	return shcache_new(&cf);
}

/* cache_put - remember an answer (never a failure) for cache_ttl,
 * replacing an older answer for the same key. */
static void cache_put(struct map *m, enum map_kind kind, const char *key, int result, const char *val)
{
	if (result < 0)
		return;
	long long ttl = m->ldap ? map_ldap_cache_ttl(m->ldap, result) : map_sql_cache_ttl(m->sql);
	if (ttl <= 0)
		return;
	char buf[512], *k = cache_key(kind, key, buf, sizeof buf);
	uint64_t now = clock_ms();
	struct cache_arg a = { .result = result, .value = val, .expires = now + (uint64_t)ttl };
	shcache_put(m->cache, k, now, cache_write, &a);
	if (k != buf)
		free(k);
}

/* req_free - drop the request and its hold on the map. */
static void req_free(struct map_req *q)
{
	map_free((struct map *)q->m);
	free(q->key);
	free(q);
}

/* req_work - on a worker: every candidate key against the database. */
static void req_work(void *arg)
{
	struct map_req *q = arg;
	q->result = map_query(q->m, q->kind, q->key, q->val, sizeof q->val, q->err, sizeof q->err);
	cache_put((struct map *)q->m, q->kind, q->key, q->result, q->val);
}

/* req_done - back on the loop: report, unless cancelled. */
static void req_done(void *arg, int cancelled)
{
	struct map_req *q = arg;
	if (!cancelled) {
		if (q->result < 0)
			log_warn("map %s: lookup of \"%s\" failed: %s", q->m->spec, q->key, q->err);
		q->cb(q->arg, q->result, q->val);
	}
	req_free(q);
}

/* req_cached - a cached or synchronous answer, one iteration later. */
static void req_cached(void *arg)
{
	struct map_req *q = arg;
	q->cb(q->arg, q->result, q->val);
	req_free(q);
}

/* map_query_async - see maps.h. */
struct map_req *map_query_async(const struct map *m, enum map_kind kind, const char *key,
				struct ev_loop *loop, map_done_fn *cb, void *arg)
{
	struct map_req *q = xcalloc(1, sizeof *q);
	map_ref(m);
	q->m = m;
	q->loop = loop;
	q->cb = cb;
	q->arg = arg;
	q->kind = kind;
	q->key = xstrdup(key);
	if (!map_is_async(m)) {
		q->result = map_query(m, kind, key, q->val, sizeof q->val, q->err, sizeof q->err);
		ev_defer(loop, &q->d, req_cached, q);
	} else if (cache_get((struct map *)m, kind, key, &q->result, q->val, sizeof q->val)) {
		ev_defer(loop, &q->d, req_cached, q);
	} else {
		q->job = jobs_pool_submit(((const struct map *)m)->pool, loop, req_work, req_done, q);
	}
	return q;
}

/* map_cancel - see maps.h. */
void map_cancel(struct map_req *q)
{
	if (!q)
		return;
	if (q->job) {
		jobs_cancel(q->job); /* req_done frees it */
		return;
	}
	ev_defer_cancel(q->loop, &q->d);
	req_free(q);
}

/* maps_changed - has a file behind a registered map changed since it was
 * loaded, or since the last call saw it? Each version of a file is
 * reported once, so a broken file is retried once per change, not forever. */
int maps_changed(void)
{
	int changed = 0;
	pthread_mutex_lock(&reg_mu);
	for (struct map *m = registry; m; m = m->reg_next) {
		const char *colon = strchr(m->spec, ':');
		struct stat st;
		if (!colon || (strncmp(m->spec, "file:", 5) && strncmp(m->spec, "regexp:", 7)) ||
		    stat(colon + 1, &st) < 0)
			continue;
		if (st.st_dev != m->seen.st_dev || st.st_ino != m->seen.st_ino ||
		    st.st_size != m->seen.st_size || st.st_mtim.tv_sec != m->seen.st_mtim.tv_sec ||
		    st.st_mtim.tv_nsec != m->seen.st_mtim.tv_nsec) {
			m->seen = st;
			changed = 1;
		}
	}
	pthread_mutex_unlock(&reg_mu);
	return changed;
}
