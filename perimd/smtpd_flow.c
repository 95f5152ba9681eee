/*
 * smtpd_flow.c - in_flow_delay: DATA waits for the scanner's backlog.
 *
 * As Postfix's in_flow_delay pauses a new message while mail arrives
 * faster than it is delivered: when the scans waiting or running reach
 * av_backlog_limit() (twice the scanner's workers), a DATA waits its turn
 * before its 354, at most in_flow_delay, then goes on regardless. The
 * wait then happens before the body is sent, not after the final dot:
 * the client's wait for the final reply (where a lost connection means a
 * duplicate delivery, RFC 1047) stays about one scan and one relay long,
 * and bodies are not stored while nothing can scan them. A burst of DATA
 * commands that finds the backlog with room goes on at once.
 *
 * Invariants:
 * - One gate for the process: flow.scanning counts the scans of every
 *   loop; waiting DATA commands are one FIFO of tickets, in arrival order;
 *   both under flow.mu.
 * - A session is touched by its own loop only. The end of a scan, on any
 *   loop, hands the first ticket's turn over with ev_post() to the
 *   ticket's loop; other threads see the ticket, never the session.
 * - A ticket ends exactly once: QUEUED -> released (POSTED, then run on
 *   its loop), expired (its session's timer, on its loop), or cancelled
 *   (the session ends). A released ticket whose session is gone passes
 *   its turn on to the next.
 */
#include "av.h"
#include "conf.h"
#include "ev.h"
#include "log.h"
#include "smtpd_int.h"
#include "stats.h"

#include <pthread.h>
#include <stdlib.h>

enum { T_QUEUED, T_POSTED };

struct smtpd_flow_ticket {
	struct smtpd_flow_ticket *next;
	struct ev_loop *loop;
	struct session *s; /* NULL: the session ended after its release */
	ev_cb *go;
	int state;
};

static struct {
	pthread_mutex_t mu;
	int scanning; /* scans waiting for a worker or running */
	int limit;    /* av_backlog_limit() of the latest configuration seen */
	struct smtpd_flow_ticket *head, *tail;
} flow = { .mu = PTHREAD_MUTEX_INITIALIZER, .limit = 2 };

/* unlink_locked - take t out of the FIFO (it is there). */
static void unlink_locked(struct smtpd_flow_ticket *t)
{
	struct smtpd_flow_ticket **pp = &flow.head, *prev = NULL;
	while (*pp != t) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	*pp = t->next;
	if (flow.tail == t)
		flow.tail = prev;
	t->next = NULL;
}

static void posted(void *arg);

/* release_locked - the backlog has room: the first waiting ticket's
 * turn, run on its loop. */
static void release_locked(void)
{
	struct smtpd_flow_ticket *t = flow.head;
	if (!t || flow.scanning >= flow.limit)
		return;
	unlink_locked(t);
	t->state = T_POSTED;
	ev_post(t->loop, posted, t);
}

/* posted - on the ticket's loop: its turn came. */
static void posted(void *arg)
{
	struct smtpd_flow_ticket *t = arg;
	pthread_mutex_lock(&flow.mu);
	struct session *s = t->s;
	if (s)
		s->flow = NULL;
	else
		release_locked(); /* its session ended: the next one's turn */
	pthread_mutex_unlock(&flow.mu);
	if (s) {
		ev_timer_stop(s->loop, &s->flow_timer);
		stats_add(ST_flow_waiting, -1);
		stats_inc(ST_flow_released);
		t->go(s);
	}
	free(t);
}

/* expired - in_flow_delay passed: go on, unless released meanwhile. */
static void expired(void *arg)
{
	struct session *s = arg;
	pthread_mutex_lock(&flow.mu);
	struct smtpd_flow_ticket *t = s->flow;
	int queued = t && t->state == T_QUEUED;
	if (queued) {
		unlink_locked(t);
		s->flow = NULL;
	}
	pthread_mutex_unlock(&flow.mu);
	if (!queued)
		return; /* posted() runs next */
	stats_add(ST_flow_waiting, -1);
	stats_inc(ST_flow_expired);
	t->go(s);
	free(t);
}

/* smtpd_flow_wait - see smtpd_int.h. */
int smtpd_flow_wait(struct session *s, ev_cb *go)
{
	const struct conf *cf = s->cf;
	if (cf->in_flow_delay <= 0 || !av_enabled(cf))
		return 0;
	pthread_mutex_lock(&flow.mu);
	flow.limit = av_backlog_limit(cf);
	if (!flow.head && flow.scanning < flow.limit) {
		pthread_mutex_unlock(&flow.mu);
		return 0;
	}
	struct smtpd_flow_ticket *t = xcalloc(1, sizeof *t);
	t->loop = s->loop;
	t->s = s;
	t->go = go;
	t->state = T_QUEUED;
	if (flow.tail)
		flow.tail->next = t;
	else
		flow.head = t;
	flow.tail = t;
	s->flow = t;
	pthread_mutex_unlock(&flow.mu);
	smtpd_session_pause(s);
	stats_inc(ST_flow_waiting);
	ev_timer_start(s->loop, &s->flow_timer, (uint64_t)cf->in_flow_delay, expired, s);
	return 1;
}

/* smtpd_flow_leave - see smtpd_int.h. */
void smtpd_flow_leave(struct session *s)
{
	ev_timer_stop(s->loop, &s->flow_timer);
	pthread_mutex_lock(&flow.mu);
	struct smtpd_flow_ticket *t = s->flow;
	if (t && t->state == T_QUEUED) {
		unlink_locked(t);
		free(t);
	} else if (t) {
		t->s = NULL; /* posted() frees it and passes the turn on */
	}
	s->flow = NULL;
	pthread_mutex_unlock(&flow.mu);
	if (t)
		stats_add(ST_flow_waiting, -1);
}

/* smtpd_flow_scan_begin - see smtpd_int.h. */
void smtpd_flow_scan_begin(void)
{
	pthread_mutex_lock(&flow.mu);
	flow.scanning++;
	pthread_mutex_unlock(&flow.mu);
}

/* smtpd_flow_scan_end - see smtpd_int.h. */
void smtpd_flow_scan_end(const struct conf *cf)
{
	pthread_mutex_lock(&flow.mu);
	flow.scanning--;
	flow.limit = av_backlog_limit(cf);
	release_locked();
	pthread_mutex_unlock(&flow.mu);
}

/* smtpd_flow_kick - see smtpd_int.h. */
void smtpd_flow_kick(void)
{
	pthread_mutex_lock(&flow.mu);
	release_locked();
	pthread_mutex_unlock(&flow.mu);
}
