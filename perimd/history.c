/*
 * history.c - the history behind the graphs (what the cacti graphs of old
 * showed, with rrdtool's round-robin archives): a ring per resolution --
 * per minute over a week, per 2 hours over 35 days, per day over 400
 * days --, sums for counters and maxima for gauges, and its text form for
 * the data directory.
 *
 * Invariants: a slot holds one period (minute / resolution, slot = period
 * % slots) and says which; a slot holding an older period is stale and
 * reads as zero. Every sample goes into every ring, so a coarse slot is
 * the sum (or maximum) of the minutes it covers. Pure: no clock, no I/O
 * (admin.c samples, saves and loads).
 */
#include "history.h"

#include <ctype.h>
#include <math.h> /* isfinite */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* history_is_counter - see history.h. */
int history_is_counter(int s)
{
	return s < HS_SESSIONS || s == HS_LDAP_LOOKUPS;
}

static const unsigned ring_res[HR__COUNT] = { 1, HIST_2H_MIN, HIST_DAY_MIN };

/* history_ring - see history.h. */
struct hist_view history_ring(const struct history *h, enum hist_ring r)
{
	switch (r) {
	case HR_2H: return (struct hist_view){ HIST_2H_MIN, HIST_2H_SLOTS, h->p2h, h->v2h };
	case HR_DAY: return (struct hist_view){ HIST_DAY_MIN, HIST_DAY_SLOTS, h->pday, h->vday };
	default: return (struct hist_view){ 1, HIST_MINUTES, h->minute, h->v };
	}
}

/* ring_slot - the writable slot of period p in ring r, emptied when it
 * held an older period; NULL when it holds a newer one. */
static double *ring_slot(struct history *h, enum hist_ring r, uint64_t p)
{
	struct hist_view w = history_ring(h, r);
	size_t i = p % w.nslots;
	uint64_t *key = (uint64_t *)w.key;
	double *v = (double *)w.v[i];
	if (key[i] > p)
		return NULL;
	if (key[i] != p) {
		key[i] = p;
		memset(v, 0, sizeof(double) * HS__COUNT);
	}
	return v;
}

/* fold - values of one minute (or a delta) into a slot. */
static void fold(double *slot, const double v[HS__COUNT])
{
	for (int i = 0; i < HS__COUNT; i++) {
		if (history_is_counter(i))
			slot[i] += v[i];
		else if (v[i] > slot[i])
			slot[i] = v[i];
	}
}

/* history_get - see history.h. */
double history_get(const struct history *h, enum hist_ring r, uint64_t p, int s)
{
	struct hist_view w = history_ring(h, r);
	size_t i = p % w.nslots;
	return w.key[i] == p ? w.v[i][s] : 0;
}

/* history_sample - see history.h. */
void history_sample(struct history *h, uint64_t now_min, const double cur[HS__COUNT], double last[HS__COUNT])
{
	double d[HS__COUNT];
	for (int i = 0; i < HS__COUNT; i++) {
		if (history_is_counter(i)) {
			/* Counters: what came since the last sample. */
			d[i] = cur[i] >= last[i] ? cur[i] - last[i] : cur[i];
			last[i] = cur[i];
		} else {
			d[i] = cur[i];
		}
	}
	for (int r = 0; r < HR__COUNT; r++) {
		double *slot = ring_slot(h, (enum hist_ring)r, now_min / ring_res[r]);
		if (slot)
			fold(slot, d);
	}
}

/* history_serialize - see history.h. */
void history_serialize(const struct history *h, struct strbuf *out)
{
	sb_printf(out, "perimd-history 2\n");
	for (int r = 0; r < HR__COUNT; r++) {
		struct hist_view w = history_ring(h, (enum hist_ring)r);
		for (size_t s = 0; s < w.nslots; s++) {
			if (!w.key[s])
				continue;
			sb_printf(out, "%u %llu", w.res, (unsigned long long)w.key[s]);
			for (int i = 0; i < HS__COUNT; i++)
				sb_printf(out, " %.17g", w.v[s][i]);
			sb_add(out, "\n", 1);
		}
	}
}

/* parse_line - one slot line: "[RES ]PERIOD v0 v1 ..." (RES only in
 * version 2), HS__COUNT values or the HS_V1_COUNT of a file written
 * before the LDAP series (those read as zero). */
static int parse_line(const char *line, int version, unsigned *res, unsigned long long *p, double v[HS__COUNT])
{
	int used = 0, n = 0;
	*res = 1;
	if (version == 2) {
		if (sscanf(line, "%u %n", res, &used) != 1)
			return -1;
		line += used;
	}
	if (sscanf(line, "%llu%n", p, &used) != 1 || *p == 0 || !isdigit((unsigned char)line[0]))
		return -1;
	line += used;
	memset(v, 0, sizeof(double) * HS__COUNT);
	while (*line == ' ' && n < HS__COUNT) {
		char *e;
		v[n] = strtod(line + 1, &e);
		if (e == line + 1 || !isfinite(v[n]) || v[n] < 0)
			return -1;
		line = e;
		n++;
	}
	return *line || (n != HS__COUNT && n != HS_V1_COUNT) ? -1 : 0;
}

/* store - a parsed slot into its ring, unless a newer period holds it;
 * version 1 minutes are folded into the coarse rings too. */
static void store(struct history *h, int version, unsigned res, unsigned long long p, const double v[HS__COUNT])
{
	for (int r = 0; r < HR__COUNT; r++) {
		if (ring_res[r] != res)
			continue;
		struct hist_view w = history_ring(h, (enum hist_ring)r);
		size_t s = p % w.nslots;
		if (p >= w.key[s]) {
			((uint64_t *)w.key)[s] = p;
			memcpy((double *)w.v[s], v, sizeof(double) * HS__COUNT);
		}
	}
	if (version == 1)
		for (int r = HR_2H; r < HR__COUNT; r++) {
			double *slot = ring_slot(h, (enum hist_ring)r, p / ring_res[r]);
			if (slot)
				fold(slot, v);
		}
}

/* history_parse - see history.h; lines that do not parse are skipped. */
int history_parse(struct history *h, const char *text, size_t len)
{
	const char *p = text, *end = text + len;
	const char *nl = memchr(p, '\n', len);
	int version;
	if (nl && (size_t)(nl - p) == 16 && !memcmp(p, "perimd-history 1", 16))
		version = 1;
	else if (nl && (size_t)(nl - p) == 16 && !memcmp(p, "perimd-history 2", 16))
		version = 2;
	else
		return -1;
	p = nl + 1;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		char line[512];
		unsigned res;
		unsigned long long period;
		double v[HS__COUNT];
		if (l < sizeof line) {
			memcpy(line, p, l);
			line[l] = 0;
			if (parse_line(line, version, &res, &period, v) == 0)
				store(h, version, res, period, v);
		}
		p += l + 1;
	}
	return 0;
}
