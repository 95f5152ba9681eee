/*
 * fuzz_metrics.c - libFuzzer target for the /metrics reader of `perimd
 * stats ADDR...` (admin_metrics_sum): any body gives series with a
 * non-empty name without line breaks, each name once, and reading the
 * same body twice doubles every total, rounding apart (the second pass
 * adds, in the same order, nothing new).
 */
#include "admin.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* LLVMFuzzerTestOneInput - one body. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *a = malloc(size + 1), *b = malloc(size + 1);
	if (!a || !b)
		abort();
	memcpy(a, data, size);
	a[size] = 0;
	memcpy(b, a, size + 1);
	struct admin_series *v = NULL;
	int n = 0;
	admin_metrics_sum(a, &v, &n);
	double *once = calloc((size_t)n + 1, sizeof *once);
	if (!once)
		abort();
	for (int i = 0; i < n; i++) {
		if (!v[i].name[0] || strchr(v[i].name, '\n'))
			abort();
		for (int j = 0; j < i; j++)
			if (!strcmp(v[i].name, v[j].name))
				abort();
		once[i] = v[i].sum;
	}
	int n1 = n;
	admin_metrics_sum(b, &v, &n);
	if (n != n1)
		abort();
	for (int i = 0; i < n; i++)
		if (isfinite(once[i]) && isfinite(v[i].sum) &&
		    fabs(v[i].sum - 2 * once[i]) > 1e-9 * (1 + fabs(once[i])))
			abort();
	free(once);
	admin_series_free(v, n);
	free(a);
	free(b);
	return 0;
}
