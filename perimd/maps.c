/*
 * maps.c - lookup tables named "type:path"; the only type so far is file:.
 *
 * Invariants: a map is fully built by map_open() and never modified after,
 * so any number of threads may look it up without locks; a reload opens a
 * new map and frees the old one when no reader holds it. Keys are stored
 * lower-cased (ASCII) and lookups fold case the same way, so "Postmaster"
 * finds "postmaster". A duplicate key keeps the first entry and logs a
 * warning naming both lines, as Postfix's postmap does.
 *
 * File syntax, as Postfix's source files for postmap: "key value" per
 * logical line (the value may be empty, or hold spaces); a line starting
 * with whitespace continues the previous logical line (joined with one
 * space); blank lines and lines whose first non-whitespace character is
 * '#' are ignored.
 */
#include "maps.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct map_entry {
	char *key;               /* lower-cased */
	char *value;             /* "" when the line had a key only */
	int line;                /* where it was defined, for duplicate warnings */
	uint32_t hash;
	struct map_entry *next;  /* same bucket */
};

struct map {
	char *spec;
	size_t nbuckets;         /* a power of two */
	size_t n;
	struct map_entry **buckets;
};

/* key_hash - FNV-1a over the n bytes of key, folded to lower case. */
static uint32_t key_hash(const char *key, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++) {
		h ^= (uint32_t)tolower((unsigned char)key[i]);
		h *= 16777619u;
	}
	return h;
}

/* map_find - the entry for the n bytes at key (any case), or NULL. */
static struct map_entry *map_find(const struct map *m, const char *key, size_t n)
{
	uint32_t h = key_hash(key, n);
	for (struct map_entry *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->next)
		if (e->hash == h && strlen(e->key) == n && strncasecmp(e->key, key, n) == 0)
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

	struct map_entry *old = map_find(m, text, kn);
	if (old) {
		log_warn("%s:%d: duplicate key \"%.*s\": keeping the entry of line %d",
			 path, line, (int)kn, text, old->line);
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
	e->hash = key_hash(e->key, kn);
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
				snprintf(err, errlen,
					 "%s:%d: continuation line without a key line before it",
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
	free(cur);
	free(line);
	fclose(f);
	return rc;
}

/* map_open - see maps.h. */
struct map *map_open(const char *spec, char *err, size_t errlen)
{
	const char *colon = strchr(spec, ':');
	if (!colon || colon == spec || colon[1] == 0) {
		snprintf(err, errlen, "\"%s\": not a map (expected type:path)", spec);
		return NULL;
	}
	size_t tn = (size_t)(colon - spec);
	if (tn != 4 || strncmp(spec, "file", 4) != 0) {
		snprintf(err, errlen, "\"%s\": unknown map type \"%.*s\" (supported: file)",
			 spec, (int)tn, spec);
		return NULL;
	}
	struct map *m = xcalloc(1, sizeof *m);
	m->spec = xstrdup(spec);
	m->nbuckets = 16;
	m->buckets = xcalloc(m->nbuckets, sizeof *m->buckets);
	if (file_load(m, colon + 1, err, errlen) < 0) {
		map_free(m);
		return NULL;
	}
	return m;
}

/* map_lookup - see maps.h. */
int map_lookup(const struct map *m, const char *key, const char **value)
{
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

/* map_free - free a map and its entries (NULL is ignored). */
void map_free(struct map *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->nbuckets; i++) {
		struct map_entry *e = m->buckets[i], *next;
		for (; e; e = next) {
			next = e->next;
			free(e->key);
			free(e->value);
			free(e);
		}
	}
	free(m->buckets);
	free(m->spec);
	free(m);
}

/* map_spec - the "type:path" the map was opened with. */
const char *map_spec(const struct map *m)
{
	return m->spec;
}
