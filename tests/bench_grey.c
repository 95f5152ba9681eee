/*
 * bench_grey.c - raw greylist store decisions per second on one thread
 * (tests/bench.sh grey): N decisions over K distinct triplets, through
 * the store vtable exactly as a job worker calls it.
 *
 *   bench_grey sqlite:/tmp/x.db 200000 50000
 *   bench_grey mysql:/tmp/grey-mysql.cf 20000 5000
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grey.h"

/* mono - monotonic seconds. */
static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: bench_grey SPEC N KEYS\n");
		return 2;
	}
	long n = atol(argv[2]), keys = atol(argv[3]);
	char err[256];
	struct grey_store *st = grey_store_open(argv[1], err, sizeof err);
	if (!st) {
		fprintf(stderr, "bench_grey: %s\n", err);
		return 1;
	}
	struct grey_query q = { .delay = 300000, .max_age = 2 * 86400000LL,
				.retention = 35 * 86400000LL };
	grey_net_key("192.0.2.0/24", &q.net);
	long states[3] = { 0, 0, 0 };
	double t0 = mono();
	for (long i = 0; i < n; i++) {
		char rcpt[64];
		snprintf(rcpt, sizeof rcpt, "user%ld@example.com", i % keys);
		grey_triplet_key("192.0.2.0/24", "sender@example.net", rcpt, &q.triplet);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		q.now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
		struct grey_answer a;
		if (st->ops->check(st, &q, &a, err, sizeof err) < 0) {
			fprintf(stderr, "bench_grey: %s\n", err);
			return 1;
		}
		states[a.state]++;
	}
	double t = mono() - t0;
	printf("%.0f decisions/s (%ld in %.2f s; new %ld, early %ld, pass %ld)\n", (double)n / t, n, t,
	       states[GREY_NEW], states[GREY_EARLY], states[GREY_PASS]);
	st->ops->close(st);
	return 0;
}
