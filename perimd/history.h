/*
 * history.h - the history of the main counters behind the graphs
 * (history.c), kept as rrdtool/cacti RRAs are: one ring per resolution,
 * per minute over the last week, per 2 hours over 35 days, per day over
 * 400 days. What graph.c draws and admin.c samples and saves.
 */
#ifndef PERIMD_HISTORY_H
#define PERIMD_HISTORY_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

/* The series: counters (a slot holds their sum) and gauges (a slot holds
 * their maximum). New ones go at the end: a saved history holds them in
 * this order (a file from before they existed has only the first ones). */
enum hist_series {
	HS_RECEIVED,
	HS_GREYLISTED,
	HS_REJECTED,
	HS_VIRUSES,
	HS_SESSIONS,
	HS_INFLIGHT,
	HS_LDAP_LOOKUPS, /* directory searches of ldap: maps (counter) */
	HS_LDAP_CONNS,   /* open LDAP connections, all servers (gauge) */
	HS__COUNT
};
#define HS_V1_COUNT 6 /* the series of a line written before the LDAP ones */
/* history_is_counter - s is summed per slot (else a gauge's maximum). */
int history_is_counter(int s);
#define HIST_MINUTES (7 * 24 * 60)
#define HIST_2H_MIN 120
#define HIST_2H_SLOTS (35 * 12)
#define HIST_DAY_MIN 1440
#define HIST_DAY_SLOTS 400
enum hist_ring { HR_MINUTE, HR_2H, HR_DAY, HR__COUNT };

struct history {
	/* A slot holds one period, the minute / resolution it says (0: empty);
	 * an older period in its slot is stale and reads as zero. */
	uint64_t minute[HIST_MINUTES];
	double v[HIST_MINUTES][HS__COUNT];
	uint64_t p2h[HIST_2H_SLOTS];
	double v2h[HIST_2H_SLOTS][HS__COUNT];
	uint64_t pday[HIST_DAY_SLOTS];
	double vday[HIST_DAY_SLOTS][HS__COUNT];
};

/* One ring seen whole: period key and values per slot. */
struct hist_view {
	unsigned res;  /* minutes per slot */
	size_t nslots; /* slots in the ring */
	const uint64_t *key;
	const double (*v)[HS__COUNT];
};
/* history_ring - ring r of h. */
struct hist_view history_ring(const struct history *h, enum hist_ring r);
/* history_get - the value of series s in period p of ring r (0 when the
 * ring no longer, or not yet, holds it). */
double history_get(const struct history *h, enum hist_ring r, uint64_t p, int s);

/* history_sample - fold the counts since the last sample into the minute
 * `now_min` of every ring (sums for counters, maxima for gauges). Loop 0
 * only. */
void history_sample(struct history *h, uint64_t now_min, const double cur[HS__COUNT], double last[HS__COUNT]);
/* history_serialize / history_parse - text: "perimd-history 2", then one
 * "RES PERIOD v0 v1 ..." line per slot (RES: minutes per slot). Version 1
 * files ("MINUTE v0 ..." lines, the minute ring only) are read too, their
 * minutes folded into the coarser rings. */
void history_serialize(const struct history *h, struct strbuf *out);
int history_parse(struct history *h, const char *text, size_t len);

#endif
