/*
 * bench_maps.c - micro-benchmark of file: maps (./build.sh bench maps):
 * write N recipients, time map_open() (load into the hash table), then
 * time map_lookup() of keys present (in a shuffled order, mixed case) and
 * absent, and map_query(MAP_ADDR) (the RCPT-time order: user@domain, user@,
 * domain). Usage: bench_maps DIR [N] [LOOKUPS]. Prints one line per figure.
 */
#include "maps.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* now - monotonic seconds. */
static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: bench_maps DIR [N] [LOOKUPS]\n");
		return 2;
	}
	long n = argc > 2 ? atol(argv[2]) : 1000000;
	long nl = argc > 3 ? atol(argv[3]) : 5000000;
	char path[512], spec[520], err[512], key[128], val[64];
	snprintf(path, sizeof path, "%s/recipients", argv[1]);
	FILE *f = fopen(path, "w");
	if (!f)
		return 1;
	for (long i = 0; i < n; i++)
		fprintf(f, "user%ld.%lx@example%ld.com OK\n", i, (unsigned long)i * 2654435761u, i % 97);
	fclose(f);
	snprintf(spec, sizeof spec, "file:%s", path);

	double t0 = now();
	struct map *m = map_open(spec, err, sizeof err);
	double t1 = now();
	if (!m) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	printf("load: %ld keys in %.3f s (%.0f keys/s)\n", n, t1 - t0, (double)n / (t1 - t0));

	/* The keys to look up, made before the clock starts. */
	char (*keys)[48] = malloc((size_t)65536 * sizeof *keys);
	unsigned long x = 88172645463325252ul;
	for (int i = 0; i < 65536; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		long k = (long)(x % (unsigned long)n);
		snprintf(keys[i], sizeof keys[i], "User%ld.%lx@Example%ld.com", k,
			 (unsigned long)k * 2654435761u, k % 97);
	}
	const char *v;
	long found = 0;
	t0 = now();
	for (long i = 0; i < nl; i++)
		found += map_lookup(m, keys[i & 65535], &v) == 1;
	t1 = now();
	printf("lookup (present, random order): %.0f lookups/s (%ld found of %ld)\n",
	       (double)nl / (t1 - t0), found, nl);
	found = 0;
	t0 = now();
	for (long i = 0; i < nl; i++) {
		keys[i & 65535][0] = 'x';
		found += map_lookup(m, keys[i & 65535], &v) == 1;
	}
	t1 = now();
	printf("lookup (absent): %.0f lookups/s (%ld found)\n", (double)nl / (t1 - t0), found);
	long nq = nl / 4;
	t0 = now();
	for (long i = 0; i < nq; i++) {
		snprintf(key, sizeof key, "%s", keys[i & 65535]);
		key[0] = 'u';
		found += map_query(m, MAP_ADDR, key, val, sizeof val, err, sizeof err) == 1;
	}
	t1 = now();
	printf("map_query(MAP_ADDR, present): %.0f queries/s\n", (double)nq / (t1 - t0));
	t0 = now();
	map_free(m);
	printf("free: %.3f s\n", now() - t0);
	free(keys);
	remove(path);
	return 0;
}
