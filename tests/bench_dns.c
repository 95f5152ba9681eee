/*
 * bench_dns.c - cached DNS lookups per second across threads: each thread
 * builds a cache key and gets the answer from the shared cache (the path
 * every lookup after the first takes), over a set of warm keys.
 *
 *   bench_dns THREADS SECONDS KEYS
 * prints "THREADS threads: N lookups/s (hits H%)".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dns.h"
#include "dnscache.h"

static int nkeys;
static volatile int stop;

struct worker {
	pthread_t t;
	unsigned seed;
	unsigned long long n, hits;
} __attribute__((aligned(64)));

/* run - look names up until told to stop. */
static void *run(void *arg)
{
	struct worker *w = arg;
	char key[300], name[64];
	while (!stop) {
		for (int i = 0; i < 1000; i++) {
			w->seed = w->seed * 1103515245u + 12345u;
			snprintf(name, sizeof name, "host%u.example.com", (w->seed >> 8) % (unsigned)nkeys);
			dns_cache_key(name, DNS_T_A, key, sizeof key);
			const struct dns_result *r = dnscache_get(key);
			if (r) {
				w->hits++;
				dns_result_unref(r);
			}
			w->n++;
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int threads = argc > 1 ? atoi(argv[1]) : 2;
	double secs = argc > 2 ? atof(argv[2]) : 2;
	nkeys = argc > 3 ? atoi(argv[3]) : 10000;
	dnscache_configure(100000, 30000, 86400000);
	struct dns_result *res = dns_result_new(DNS_OK, 3600);
	for (int i = 0; i < nkeys; i++) {
		char key[300], name[64];
		snprintf(name, sizeof name, "host%d.example.com", i);
		dns_cache_key(name, DNS_T_A, key, sizeof key);
		dnscache_put(key, res);
	}
	struct worker *w = calloc((size_t)threads, sizeof *w);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < threads; i++) {
		w[i].seed = (unsigned)i * 7919u + 1;
		pthread_create(&w[i].t, NULL, run, &w[i]);
	}
	struct timespec d = { (time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9) };
	nanosleep(&d, NULL);
	stop = 1;
	unsigned long long n = 0, hits = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(w[i].t, NULL);
		n += w[i].n;
		hits += w[i].hits;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double el = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	printf("%d threads: %.0f lookups/s (hits %.1f%%)\n", threads, (double)n / el,
	       n ? 100.0 * (double)hits / (double)n : 0.0);
	dnscache_flush();
	dns_result_unref(res);
	free(w);
	return 0;
}
