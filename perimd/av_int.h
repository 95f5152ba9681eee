/*
 * av_int.h - what av.c (requests from the io loops to the scanner process
 * or clamd) and av_sup.c (the supervisor thread that starts, pings,
 * reloads and restarts the scanner process) share. Internal to the two;
 * everyone else uses av.h.
 */
#ifndef PERIMD_AV_INT_H
#define PERIMD_AV_INT_H

#include <stdint.h>
#include <sys/socket.h>

#include "av.h"
#include "conf.h"
#include "ev.h"
#include "scanner.h"

#define CLAMD_CHUNK (64 * 1024)
#define CLAMD_WBUF (256 * 1024)
#define READY_WAIT_MS (600 * 1000) /* a full signature set loads in ~1 min */
#define PONG_WAIT_MS 15000
#define HANG_GRACE_MS 5000
#define NAMES_MAX 256
/* av_names_cap_set - the most distinct virus names counted by name
 * (stats_virus_names_max, 1 to NAMES_MAX - 1: one slot stays for "other"). */
void av_names_cap_set(int cap);

enum av_kind { AVK_NONE, AVK_LIBCLAMAV, AVK_CLAMD, AVK_BAD };
enum av_outcome { AVO_CLEAN, AVO_VIRUS, AVO_FAIL, AVO_OVERSIZE, AVO_INCOMPLETE };

struct av_list {
	struct av_req *head, *tail;
};

struct av_loop {
	struct ev_loop *loop;
	int fd;         /* -1: no scanner */
	int registered; /* io watcher in the loop */
	struct ev_io io;
	struct av_list queued, sent;
	uint64_t next_id;
};

struct av_req {
	struct av_req *next, *prev;
	struct av_list *list; /* queued / sent, or NULL */
	struct av_loop *al;
	struct ev_loop *loop;
	const struct conf *cf;
	struct spool *sp;
	char msgid[24];
	uint64_t id, t0;
	long engine_us; /* scanner's own time; -1 unknown */
	int fd;         /* spool's, not ours */
	av_done_fn *done;
	void *arg;
	struct ev_timer timer;
	struct ev_defer defer;
	enum av_outcome dout; /* deferred outcome */
	char text[SCANNER_NAME_MAX];
	char refusal[256];
	/* clamd */
	struct conn *c;
	uint64_t off;
	int sent_end;
	char rbuf[256];
	size_t rlen;
};

/* the io loops' scanner state, indexed by ev_loop_index() (av.c) */
extern struct av_loop *av_loops;
extern int av_nloops;

/* ---- av_sup.c, for av.c ------------------------------------------------- */

/* An inplace signature load (av_reload_mode = inplace) runs: 1 while the
 * scanner has no engine; av_load_end, clock_ms() when the last one
 * ended. Scans do not time out while one runs (atomic). */
extern int av_loading;
extern uint64_t av_load_end;

long long av_scan_time(const struct conf *cf);

/* ---- av.c, for av_sup.c ------------------------------------------------- */

enum av_kind av_kind_parse(const char *s, struct sockaddr_storage *ss, socklen_t *len);
void av_list_del(struct av_req *r);
void av_loop_attach(void *arg);

#endif
