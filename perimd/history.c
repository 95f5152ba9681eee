/*
 * history.c - the per-minute history behind the graphs (what the cacti
 * graphs of old showed): one slot per minute of the last week, sums for
 * counters and maxima for gauges, and its text form for the data directory.
 *
 * Invariants: a history slot holds one minute (minute % HIST_MINUTES) and
 * says which; a slot holding an older minute is stale and reads as zero.
 * Pure: no clock, no I/O (admin.c samples, saves and loads).
 */
#include "history.h"

#include <math.h> /* isfinite */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* history_sample - see history.h. */
void history_sample(struct history *h, uint64_t now_min, const double cur[HS__COUNT], double last[HS__COUNT])
{
	size_t slot = now_min % HIST_MINUTES;
	if (h->minute[slot] != now_min) {
		h->minute[slot] = now_min;
		memset(h->v[slot], 0, sizeof h->v[slot]);
	}
	for (int i = 0; i < HS__COUNT; i++) {
		if (i < HS_SESSIONS) {
			/* Counters: what came since the last sample. */
			double d = cur[i] >= last[i] ? cur[i] - last[i] : cur[i];
			h->v[slot][i] += d;
			last[i] = cur[i];
		} else if (cur[i] > h->v[slot][i]) {
			h->v[slot][i] = cur[i];
		}
	}
}

/* history_serialize - see history.h. */
void history_serialize(const struct history *h, struct strbuf *out)
{
	sb_printf(out, "perimd-history 1\n");
	for (size_t s = 0; s < HIST_MINUTES; s++) {
		if (!h->minute[s])
			continue;
		sb_printf(out, "%llu", (unsigned long long)h->minute[s]);
		for (int i = 0; i < HS__COUNT; i++)
			sb_printf(out, " %.17g", h->v[s][i]);
		sb_add(out, "\n", 1);
	}
}

/* history_parse - see history.h; lines that do not parse are skipped. */
int history_parse(struct history *h, const char *text, size_t len)
{
	const char *p = text, *end = text + len;
	const char *nl = memchr(p, '\n', len);
	if (!nl || (size_t)(nl - p) != 16 || memcmp(p, "perimd-history 1", 16))
		return -1;
	p = nl + 1;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		char line[512];
		if (l < sizeof line) {
			memcpy(line, p, l);
			line[l] = 0;
			unsigned long long m;
			double v[HS__COUNT];
			int used = 0;
			if (sscanf(line, "%llu %lf %lf %lf %lf %lf %lf%n", &m, &v[0], &v[1], &v[2], &v[3],
				   &v[4], &v[5], &used) == 7 &&
			    line[used] == 0 && m > 0) {
				size_t s = m % HIST_MINUTES;
				int ok = 1;
				for (int i = 0; i < HS__COUNT; i++)
					ok &= isfinite(v[i]) && v[i] >= 0;
				if (ok && m >= h->minute[s]) {
					h->minute[s] = m;
					memcpy(h->v[s], v, sizeof v);
				}
			}
		}
		p += l + 1;
	}
	return 0;
}
