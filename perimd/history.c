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

/* history_is_counter - see history.h. */
int history_is_counter(int s)
{
	return s < HS_SESSIONS || s == HS_LDAP_LOOKUPS;
}

/* history_sample - see history.h. */
void history_sample(struct history *h, uint64_t now_min, const double cur[HS__COUNT], double last[HS__COUNT])
{
	size_t slot = now_min % HIST_MINUTES;
	if (h->minute[slot] != now_min) {
		h->minute[slot] = now_min;
		memset(h->v[slot], 0, sizeof h->v[slot]);
	}
	for (int i = 0; i < HS__COUNT; i++) {
		if (history_is_counter(i)) {
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
			double v[HS__COUNT] = { 0 };
			int n = 0, ok = sscanf(line, "%llu", &m) == 1 && m > 0;
			const char *q = line + strspn(line, "0123456789");
			/* HS__COUNT values, or the HS_V1_COUNT of an older file. */
			while (ok && *q && n < HS__COUNT) {
				char *e;
				if (*q != ' ')
					break;
				v[n] = strtod(q + 1, &e);
				ok = e != q + 1 && isfinite(v[n]) && v[n] >= 0;
				q = e;
				n++;
			}
			if (ok && !*q && (n == HS__COUNT || n == HS_V1_COUNT)) {
				size_t s = m % HIST_MINUTES;
				if (m >= h->minute[s]) {
					h->minute[s] = m;
					memcpy(h->v[s], v, sizeof v);
				}
			}
		}
		p += l + 1;
	}
	return 0;
}
