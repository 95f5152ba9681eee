/*
 * admin.h - the operator's view, the top floor beside main.c: the HTTP
 * endpoints on stats_listen (/metrics, /healthz, /, /graph/NAME.svg), the
 * per-minute history behind the graphs, and the `perimd stats` and
 * `perimd healthcheck` commands. It reads the counters (stats.h) and the
 * getters of smtpd, spool and av; nothing includes it but main.c.
 */
#ifndef PERIMD_ADMIN_H
#define PERIMD_ADMIN_H

#include <stddef.h>

struct conf;
struct ev_loop;

/* admin_check - is stats_listen usable (for -t)? 0, or -1 with err. */
int admin_check(const struct conf *c, char *err, size_t errlen);
/* admin_init - from main, before the io threads: nloops io loops will
 * run; register the renderers of the gauges kept outside stats.c,
 * remember the data directory and load the saved history (a missing file
 * is no error). */
void admin_init(const struct conf *c, int nloops);
/* admin_listen_open - bind stats_listen (before dropping privileges; no
 * SO_REUSEPORT, so a second daemon cannot silently share the port).
 * Returns the fd, -1 when stats_listen is empty; fatal() on failure. */
int admin_listen_open(const struct conf *c);
/* admin_command - `perimd stats [-c FILE]` / `perimd healthcheck [-c FILE]`
 * (argv[0] is the command); returns the exit status. */
int admin_command(int argc, char **argv, const char *default_conf);
/* admin_starting_begin - from main, before the slow part of the start
 * (loading the virus engine): a thread answers 503 "starting" on
 * listen_fd (-1: none) until admin_starting_end(), called before the io
 * loops take the listener over. */
void admin_starting_begin(int listen_fd);
void admin_starting_end(void);
/* admin_loop_start - on io loop 0: history ticks, the HTTP server on
 * listen_fd (-1: none); nloops io loops run in all. */
void admin_loop_start(struct ev_loop *loop, int listen_fd, int nloops);
/* admin_loop_finished - every io thread, after its ev_run() returned. On
 * loop 0 it keeps the loop running (HTTP answering 503) until every io
 * loop has drained, then saves the history and closes the listener. */
void admin_loop_finished(struct ev_loop *loop);

/* perimd stats ADDR...: a fleet's totals. admin_metrics_sum - add each
 * series ("name{labels} value" lines; comments, blank and malformed lines
 * skipped) of a /metrics body (changed in place) to v[0..n), in first-seen
 * order; admin_series_free - the totals. */
struct admin_series {
	char *name; /* name{labels} */
	double sum;
};
void admin_metrics_sum(char *body, struct admin_series **v, int *n);
void admin_series_free(struct admin_series *v, int n);

#endif
