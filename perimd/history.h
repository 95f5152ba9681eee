/*
 * history.h - the per-minute history of the main counters over the last
 * week (history.c): what graph.c draws and admin.c samples and saves.
 */
#ifndef PERIMD_HISTORY_H
#define PERIMD_HISTORY_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

/* The series: counters (a sum per minute) and gauges (the minute's
 * maximum). New ones go at the end: a saved history holds them in this
 * order (a file from before they existed has only the first ones). */
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
#define HS_V1_COUNT 6 /* the series of a "perimd-history 1" line before the LDAP ones */
/* history_is_counter - s is summed per minute (else a gauge's maximum). */
int history_is_counter(int s);
#define HIST_MINUTES (7 * 24 * 60)
struct history {
	uint64_t minute[HIST_MINUTES]; /* the minute (epoch / 60) a slot holds; 0 = empty */
	double v[HIST_MINUTES][HS__COUNT];
};
/* history_sample - fold the counts since the last sample into the minute
 * `now_min` (sums for counters, maxima for gauges). Loop 0 only. */
void history_sample(struct history *h, uint64_t now_min, const double cur[HS__COUNT], double last[HS__COUNT]);
/* history_save / history_load - text, one "minute v0 v1 ..." line per slot. */
void history_serialize(const struct history *h, struct strbuf *out);
int history_parse(struct history *h, const char *text, size_t len);

#endif
