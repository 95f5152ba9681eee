/*
 * av.h - content scanning of a stored message before any backend sees it:
 * the front end of the scanner process (av_scanner = libclamav) or of a
 * clamd (av_scanner = clamd:/path or clamd:HOST:PORT, zINSTREAM).
 *
 * av_scan() MUST be called on the session's loop thread; done() runs later
 * on that thread (never inside av_scan()), exactly once unless av_cancel()
 * came first, after which nothing runs and nothing is touched. The verdict
 * is given as the refusal the client must hear (NULL = pass the message
 * on): the parameters av_fail_action and av_oversize_action are already
 * applied, and av.c has logged the verdict with the message id.
 */
#ifndef PERIMD_AV_H
#define PERIMD_AV_H

#include <stddef.h>
#include <stdint.h>

struct conf;
struct ev_loop;
struct spool;
struct av_req;

typedef void av_done_fn(void *arg, const char *refusal);

/* av_enabled - whether cf asks for scanning (av_scanner != none). */
int av_enabled(const struct conf *cf);

/* av_check - is cf's av_scanner usable by this build (perimd -t)? Returns
 * 0, or -1 with err filled (bad syntax; libclamav in a build without it). */
int av_check(const struct conf *cf, char *err, size_t errlen);
/* av_start - before the io loops run: with av_scanner = libclamav, start
 * the scanner process and wait (bounded) until its engine is loaded, then
 * supervise it (restart on crash or hang). loops[i] is the loop with
 * ev_loop_index() i. Returns 0, or -1 with err filled. */
int av_start(const struct conf *cf, struct ev_loop **loops, int nloops, char *err, size_t errlen);
/* av_reload - SIGHUP: the scanner builds a new engine and swaps it in. */
void av_reload(const struct conf *cf);
/* av_stop - after the io loops have ended: stop the scanner. */
void av_stop(void);

/* av_scan - scan the finished spool sp of message msgid per cf. */
struct av_req *av_scan(struct ev_loop *loop, const struct conf *cf, struct spool *sp, const char *msgid,
		       av_done_fn *done, void *arg);
/* av_cancel - the session is going away: forget the request. */
void av_cancel(struct av_req *r);
/* av_backlog_limit - how many scans waiting or running keep the scanner
 * busy (in_flow_delay): twice its scanning workers (av_threads, or one
 * per CPU; a clamd is taken to have as many). */
int av_backlog_limit(const struct conf *cf);

/* Counters, process-wide (summed over loops). */
struct av_counters {
	uint64_t scanned, viruses, errors, oversize;
	uint64_t ms_hist[8]; /* scan time <=10, 50, 100, 500 ms, 1, 5, 30 s, more */
	uint64_t ms_sum;     /* all scan times together */
};
/* av_render_metrics - the scanning counters, viruses by name and the scan
 * time histogram in the Prometheus text format (registered by admin.c). */
struct strbuf;
void av_render_metrics(struct strbuf *out);

#endif
