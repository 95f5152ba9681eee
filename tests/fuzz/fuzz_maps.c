/*
 * fuzz_maps.c - libFuzzer target for file: maps. The input up to a line
 * "%%" is a map's source file, the rest (if any) a new version of the same
 * file: map_open on the first, then every lookup (map_lookup,
 * map_lookup_domain, map_query of each kind) on keys taken from the input
 * and a few fixed ones; then the reload path of the registry (the same
 * spec opened again on the changed file, while the first map is held).
 * Checks: every key line of a loaded map is found, by any case; a CIDR
 * key's own address finds an answer; map_query agrees with map_lookup.
 * Each input uses its own memfd, and every map is freed, so the registry
 * is empty between inputs.
 */
#include "log.h"
#include "maps.h"

#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NKEYS 24

/* put_text - make fd hold exactly n bytes of text. */
static void put_text(int fd, const char *text, size_t n)
{
	if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0)
		abort();
	for (size_t off = 0; off < n;) {
		ssize_t w = write(fd, text + off, n - off);
		if (w <= 0)
			abort();
		off += (size_t)w;
	}
}

/* key_lines - the key of each logical line, as maps.c splits them: the
 * first word of a line that is not indented, blank or a comment. */
static int key_lines(const char *text, size_t n, char **keys, int max)
{
	int nk = 0;
	size_t pos = 0;

	while (pos < n && nk < max) {
		const char *nl = memchr(text + pos, '\n', n - pos);
		size_t e = nl ? (size_t)(nl - text) : n;
		const char *line = text + pos;
		size_t ll = e - pos;

		pos = e + 1;
		if (ll == 0 || isspace((unsigned char)line[0]) || memchr(line, 0, ll))
			continue;
		/* the line is trimmed, then its key ends at ' ' or '\t' */
		while (ll > 0 && isspace((unsigned char)line[ll - 1]))
			ll--;
		size_t kn = 0;
		while (kn < ll && line[kn] != ' ' && line[kn] != '\t')
			kn++;
		if (kn == 0 || line[0] == '#')
			continue;
		keys[nk++] = strndup(line, kn);
	}
	return nk;
}

/* check_key - a key line of the map: found, by any case, by every path. */
static void check_key(const struct map *m, const char *key)
{
	const char *v = NULL, *v2 = NULL;
	char val[256], err[256];
	size_t kn = strlen(key);
	unsigned char a[16];
	int bits;

	if (strchr(key, '/') && map_cidr_parse(key, kn, a, &bits) == 0) {
		/* a CIDR block: its own address is in it */
		char ip[64];
		size_t an = (size_t)(strchr(key, '/') - key);
		if (an < sizeof ip) {
			memcpy(ip, key, an);
			ip[an] = 0;
			if (map_query(m, MAP_CLIENT, ip, val, sizeof val, err, sizeof err) != 1)
				abort();
		}
		return;
	}
	if (map_lookup(m, key, &v) != 1)
		abort();
	char *upper = strdup(key);
	for (char *p = upper; *p; p++)
		*p = (char)toupper((unsigned char)*p);
	if (map_lookup(m, upper, &v2) != 1 || v2 != v)
		abort();
	free(upper);
	if (kn < 1024) {
		if (map_query(m, MAP_KEY, key, val, sizeof val, err, sizeof err) != 1 ||
		    strncmp(val, v, sizeof val - 1) != 0)
			abort();
	}
}

/* probe - every lookup on key; the answers must be consistent. */
static void probe(const struct map *m, const char *key)
{
	const char *v;
	char val[256], err[256];
	int r = map_lookup(m, key, &v);

	if (r < 0)
		abort();
	if (map_lookup_domain(m, key, &v) < 0)
		abort();
	for (int kind = MAP_KEY; kind <= MAP_CLIENT; kind++) {
		int q = map_query(m, (enum map_kind)kind, key, val, sizeof val, err, sizeof err);
		if (q < 0 || strlen(val) >= sizeof val)
			abort();
		/* each kind tries the key itself first (MAP_DOMAIN without
		 * a trailing dot) */
		size_t kn = strlen(key);
		if (r == 1 && kn < 1024 && q != 1 &&
		    !(kind == MAP_DOMAIN && kn && key[kn - 1] == '.'))
			abort();
	}
}

/* probe_all - the keys of the input, variants of them, and fixed keys. */
static void probe_all(const struct map *m, char **keys, int nk)
{
	static const char *const fixed[] = {
		"192.0.2.1", "192.0.2", "2001:db8::1", "::ffff:192.0.2.1",
		"postmaster@example.com", "postmaster@", "a.b.example.com.",
		"example.com", ".", "", "@", "1.2.3.4.5",
	};
	char buf[512];

	for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
		probe(m, fixed[i]);
	for (int i = 0; i < nk; i++) {
		probe(m, keys[i]);
		snprintf(buf, sizeof buf, "user@%s", keys[i]);
		probe(m, buf);
		snprintf(buf, sizeof buf, "x.%s", keys[i]);
		probe(m, buf);
		snprintf(buf, sizeof buf, "%s.1", keys[i]);
		probe(m, buf);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int logs_off;
	const char *text = (const char *)data;
	char spec[64], err[512];
	char *keys[NKEYS];

	if (!logs_off) {
		/* duplicate-key warnings go to syslog: stderr is libFuzzer's */
		log_open("perimd-fuzz", 0, 0);
		logs_off = 1;
	}
	/* the first version ends at a line "%%" */
	size_t n1 = size, rest = size;
	for (size_t i = 0; i + 2 <= size; i++)
		if ((i == 0 || text[i - 1] == '\n') && text[i] == '%' && text[i + 1] == '%' &&
		    (i + 2 == size || text[i + 2] == '\n')) {
			n1 = i;
			rest = i + 2 < size ? i + 3 : size;
			break;
		}

	int fd = memfd_create("fuzz_maps", 0);
	if (fd < 0)
		abort();
	put_text(fd, text, n1);
	snprintf(spec, sizeof spec, "file:/proc/self/fd/%d", fd);

	struct map *m = map_open(spec, err, sizeof err);
	int nk = key_lines(text, n1, keys, NKEYS);
	if (m) {
		if (map_is_async(m) || strcmp(map_spec(m), spec) != 0)
			abort();
		for (int i = 0; i < nk; i++)
			check_key(m, keys[i]);
		probe_all(m, keys, nk);
		/* an unchanged file gives the same map back */
		struct map *same = map_open(spec, err, sizeof err);
		if (same != m)
			abort();
		map_free(same);
	} else if (err[0] == 0) {
		abort();
	}
	for (int i = 0; i < nk; i++)
		free(keys[i]);

	if (n1 < size) {
		/* The reload: a new version while the first is held. Its
		 * mtime may not have moved (coarse clock), so it may come
		 * back as the old map; either is a map to look up. */
		put_text(fd, text + rest, size - rest);
		struct map *m2 = map_open(spec, err, sizeof err);
		if (m2) {
			nk = key_lines(text + rest, size - rest, keys, NKEYS);
			probe_all(m2, keys, nk);
			for (int i = 0; i < nk; i++)
				free(keys[i]);
		} else if (m) {
			/* a broken reload keeps the registered table */
			abort();
		}
		map_free(m2);
	}
	map_free(m);
	close(fd);
	return 0;
}
