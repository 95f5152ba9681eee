/*
 * graph.h - the status page and its graphs (graph.c), drawn from the
 * history (per minute, 2 hours, day); pure: history and "now" in, text out.
 */
#ifndef PERIMD_GRAPH_H
#define PERIMD_GRAPH_H

#include "buf.h"
#include "history.h"

#include <stdint.h>

/* graph_page - the status page (HTML with inline SVG); healthy: what
 * /healthz says (1: 200). */
void graph_page(struct strbuf *out, const struct history *h, uint64_t now_min, int healthy);
/* graph_svg - one graph: which = "messages" or "sessions", period = "hour",
 * "day", "week", "month" or "year". Returns -1 for an unknown name. */
int graph_svg(struct strbuf *out, const struct history *h, uint64_t now_min, const char *which,
	      const char *period);

#endif
