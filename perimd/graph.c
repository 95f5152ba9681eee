/*
 * graph.c - the per-minute history (history.c) drawn as inline SVG:
 * messages received, greylisted, rejected and viruses per minute, sessions
 * and in-flight transactions (maxima), LDAP lookups per minute and LDAP
 * connections open (maxima; as the seed graphed its directory's), over the
 * last hour, day and week (the minute ring), month (2-hour slots) and year
 * (daily slots).
 *
 * Drawing is pure (history and "now" in, text out) and self-contained: no
 * script, no external font or stylesheet, so the page works offline and
 * the SVGs parse as XML on their own. Each series' plotted values are also
 * in its data-values attribute (tests and curious admins read them).
 */
#include "graph.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const series_name[HS__COUNT] = {
	"received", "greylisted", "rejected",     "viruses",
	"sessions", "inflight",   "ldap_lookups", "ldap_connections",
};
static const char *const series_color[HS__COUNT] = {
	"#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#2ca02c", "#8c564b", "#17becf", "#bcbd22",
};

struct period {
	const char *name, *title;
	int points, step;    /* step: minutes per point */
	enum hist_ring ring; /* read from; step is a multiple of its slots */
	const char *tfmt;    /* strftime for the time axis */
};

static const struct period periods[] = {
	{ "hour", "last hour", 60, 1, HR_MINUTE, "%H:%M" },
	{ "day", "last day", 288, 5, HR_MINUTE, "%H:%M" },
	{ "week", "last week", 336, 30, HR_MINUTE, "%a %Hh" },
	{ "month", "last month", 360, HIST_2H_MIN, HR_2H, "%d %b" },
	{ "year", "last year", 365, HIST_DAY_MIN, HR_DAY, "%b %Y" },
};

/* value - one point of step minutes from minute `first` (a multiple of
 * the ring's slot): counters per minute (average over the step), gauges
 * the maximum; stale slots are zero. */
static double value(const struct history *h, const struct period *pd, uint64_t first, int s)
{
	unsigned res = history_ring(h, pd->ring).res;
	double acc = 0;
	for (uint64_t m = first; m < first + (uint64_t)pd->step; m += res) {
		double v = history_get(h, pd->ring, m / res, s);
		if (history_is_counter(s))
			acc += v;
		else if (v > acc)
			acc = v;
	}
	return history_is_counter(s) ? acc / pd->step : acc;
}

/* nice_max - a round upper bound for the y axis (1, 2, 2.5, 5 x 10^k). */
static double nice_max(double v)
{
	static const double m[] = { 1, 2, 2.5, 5, 10 };
	if (v <= 1)
		return 1;
	double e = 1;
	while (e * 10 < v)
		e *= 10;
	for (size_t k = 0; k < sizeof m / sizeof m[0]; k++)
		if (m[k] * e >= v)
			return m[k] * e;
	return 10 * e;
}

/* graph_svg - see graph.h. */
int graph_svg(struct strbuf *out, const struct history *h, uint64_t now_min, const char *which,
	      const char *period)
{
	int first_s, last_s;
	const char *title, *unit;
	if (!strcmp(which, "messages")) {
		first_s = HS_RECEIVED, last_s = HS_VIRUSES;
		title = "Messages", unit = "per minute";
	} else if (!strcmp(which, "sessions")) {
		first_s = HS_SESSIONS, last_s = HS_INFLIGHT;
		title = "Sessions and transactions in flight", unit = "maximum";
	} else if (!strcmp(which, "ldap")) {
		first_s = last_s = HS_LDAP_LOOKUPS;
		title = "LDAP lookups (directory searches)", unit = "per minute";
	} else if (!strcmp(which, "ldapconn")) {
		first_s = last_s = HS_LDAP_CONNS;
		title = "LDAP connections open", unit = "maximum";
	} else {
		return -1;
	}
	const struct period *pd = NULL;
	for (size_t i = 0; i < sizeof periods / sizeof periods[0]; i++)
		if (!strcmp(periods[i].name, period))
			pd = &periods[i];
	if (!pd)
		return -1;

	enum { W = 720, H = 260, L = 64, R = 16, T = 34, B = 64 };
	const double pw = W - L - R, ph = H - T - B;
	int n = pd->points;
	/* Point i covers step minutes; the last one holds now. Points on a
	 * coarse ring start where its slots do. */
	uint64_t res = history_ring(h, pd->ring).res;
	uint64_t start = (now_min / res + 1) * res - (uint64_t)n * (uint64_t)pd->step;
	double *vals = xcalloc((size_t)n * HS__COUNT, sizeof *vals);
	double vmax = 0;
	for (int s = first_s; s <= last_s; s++)
		for (int i = 0; i < n; i++) {
			double v = value(h, pd, start + (uint64_t)i * (uint64_t)pd->step, s);
			vals[s * n + i] = v;
			if (v > vmax)
				vmax = v;
		}
	double ymax = nice_max(vmax);

	sb_printf(out,
		  "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
		  "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"11\" "
		  "data-graph=\"%s-%s\">\n<title>%s, %s</title>\n"
		  "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n"
		  "<text x=\"%d\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s, %s</text>\n",
		  W, H, W, H, which, period, title, pd->title, W, H, L, title, pd->title);
	/* Y axis: 5 grid lines with labels. */
	for (int k = 0; k <= 4; k++) {
		double y = T + ph - ph * k / 4.0;
		sb_printf(out,
			  "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#dddddd\"/>\n"
			  "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
			  L, y, L + pw, y, L - 6, y + 4, ymax * k / 4.0);
	}
	sb_printf(out, "<text transform=\"translate(14 %.0f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
		  T + ph / 2, unit);
	/* X axis: 6 time labels, local time. */
	for (int k = 0; k <= 5; k++) {
		double x = L + pw * k / 5.0;
		uint64_t m = start + (uint64_t)((double)(n * pd->step) * k / 5.0);
		time_t t = (time_t)(m * 60);
		struct tm tm;
		char lab[32];
		localtime_r(&t, &tm);
		strftime(lab, sizeof lab, pd->tfmt, &tm);
		sb_printf(out,
			  "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#eeeeee\"/>\n"
			  "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n",
			  x, T, x, T + ph, x, T + ph + 16, lab);
	}
	sb_printf(out,
		  "<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
		  "stroke=\"#888888\"/>\n",
		  L, T, pw, ph);
	/* The series, and a legend under the axis. */
	int lx = L;
	for (int s = first_s; s <= last_s; s++) {
		sb_printf(out,
			  "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" "
			  "data-series=\"%s\" data-values=\"",
			  series_color[s], series_name[s]);
		for (int i = 0; i < n; i++)
			sb_printf(out, "%s%g", i ? " " : "", vals[s * n + i]);
		sb_add(out, "\" points=\"", 10);
		for (int i = 0; i < n; i++) {
			double x = L + (n > 1 ? pw * i / (n - 1) : 0);
			double y = T + ph - ph * vals[s * n + i] / ymax;
			sb_printf(out, "%s%.1f,%.1f", i ? " " : "", x, y);
		}
		sb_add(out, "\"/>\n", 4);
		sb_printf(out,
			  "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" fill=\"%s\"/>"
			  "<text x=\"%d\" y=\"%d\">%s</text>\n",
			  lx, H - 22, series_color[s], lx + 14, H - 13, series_name[s]);
		lx += 110;
	}
	sb_add(out, "</svg>\n", 7);
	free(vals);
	return 0;
}

/* ldap_used - the last week has LDAP lookups or connections. */
static int ldap_used(const struct history *h, uint64_t now_min)
{
	for (size_t i = 0; i < HIST_MINUTES; i++)
		if (h->minute[i] && h->minute[i] + HIST_MINUTES > now_min &&
		    (h->v[i][HS_LDAP_LOOKUPS] > 0 || h->v[i][HS_LDAP_CONNS] > 0))
			return 1;
	return 0;
}

/* graph_page - see graph.h: every graph, inline (the LDAP ones once
 * ldap: maps were used in the last week). */
void graph_page(struct strbuf *out, const struct history *h, uint64_t now_min, int healthy)
{
	time_t t = (time_t)(now_min * 60);
	struct tm tm;
	char when[64];
	localtime_r(&t, &tm);
	strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
	sb_printf(out,
		  "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
		  "<title>perimd statistics</title>\n<style>body{font-family:sans-serif;"
		  "margin:1em 2em;color:#222}h2{margin-top:1.5em}svg{display:block;margin:.5em 0;"
		  "border:1px solid #ccc}</style></head>\n<body>\n<h1>perimd statistics</h1>\n"
		  "<p>As of %s. Most sessions open this minute: %lld. Health: <a href=\"/healthz\">%s</a>. "
		  "Counters: <a href=\"/metrics\">/metrics</a>.</p>\n",
		  when,
		  h->minute[now_min % HIST_MINUTES] == now_min
		      ? (long long)h->v[now_min % HIST_MINUTES][HS_SESSIONS]
		      : 0LL,
		  healthy ? "ok" : "not accepting mail");
	int ldap = ldap_used(h, now_min);
	for (size_t p = 0; p < sizeof periods / sizeof periods[0]; p++) {
		sb_printf(out, "<h2>The %s</h2>\n", periods[p].title);
		graph_svg(out, h, now_min, "messages", periods[p].name);
		graph_svg(out, h, now_min, "sessions", periods[p].name);
		if (ldap) {
			graph_svg(out, h, now_min, "ldap", periods[p].name);
			graph_svg(out, h, now_min, "ldapconn", periods[p].name);
		}
	}
	sb_printf(out, "</body></html>\n");
}
