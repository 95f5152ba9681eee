/*
 * jobs.c - pools of worker threads for blocking calls.
 *
 * A job is queued by a loop, run by a worker of its pool, then handed back
 * to the same loop with ev_post(), where done() runs. The job is freed
 * after done(). jobs_cancel() only sets a flag (the submitter's thread owns
 * that field from then on being read by the done step, on the same
 * thread), so no lock is needed for it: work() never reads it.
 *
 * The shared pool (jobs_start/jobs_submit) serves the SQL maps, greylisting
 * and the scanners; a pool of its own (jobs_pool_new) lets one kind of
 * work (an ldap: map: one thread per connection it may open) run as wide
 * as it may without waiting behind the others or capping them. A pool's
 * threads start with its first job, so a pool made at -t, or before the
 * process forks, has none.
 */
#include "jobs.h"
#include "ev.h"
#include "log.h"

#include <pthread.h>
#include <stdlib.h>

struct job {
	struct job *next;
	struct ev_loop *loop;
	job_work_fn *work;
	job_done_fn *done;
	void *arg;
	int cancelled;
};

struct jobs_pool {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *head, *tail;
	int quit;
	int want; /* threads to start with the first job */
	pthread_t *threads;
	int nthreads;
};

static struct jobs_pool shared = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

/* job_finish - on the submitting loop: report and free. */
static void job_finish(void *arg)
{
	struct job *j = arg;
	j->done(j->arg, j->cancelled);
	free(j);
}

/* job_worker - take jobs of pool p until told to quit and its queue is empty. */
static void *job_worker(void *arg)
{
	struct jobs_pool *p = arg;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (!p->head && !p->quit)
			pthread_cond_wait(&p->cv, &p->mu);
		struct job *j = p->head;
		if (!j) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		p->head = j->next;
		if (!p->head)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);
		j->work(j->arg);
		if (j->loop)
			ev_post(j->loop, job_finish, j);
		else
			job_finish(j);
	}
}

/* pool_run - start p's threads (under p->mu). */
static void pool_run(struct jobs_pool *p)
{
	p->threads = xcalloc((size_t)p->want, sizeof *p->threads);
	for (p->nthreads = 0; p->nthreads < p->want; p->nthreads++)
		if (pthread_create(&p->threads[p->nthreads], NULL, job_worker, p) != 0)
			fatal("cannot start worker thread");
}

/* pool_stop - drain p's queue and join its workers. */
static void pool_stop(struct jobs_pool *p)
{
	pthread_mutex_lock(&p->mu);
	p->quit = 1;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	free(p->threads);
	p->threads = NULL;
	p->nthreads = 0;
	p->quit = 0;
}

/* jobs_start - start n shared workers. */
void jobs_start(int n)
{
	pthread_mutex_lock(&shared.mu);
	shared.want = n < 1 ? 1 : n;
	pool_run(&shared);
	pthread_mutex_unlock(&shared.mu);
}

/* jobs_stop - drain the shared queue and join its workers. */
void jobs_stop(void)
{
	pool_stop(&shared);
}

/* jobs_pool_new - see jobs.h. */
struct jobs_pool *jobs_pool_new(int n)
{
	struct jobs_pool *p = xcalloc(1, sizeof *p);
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->want = n < 1 ? 1 : n;
	return p;
}

/* jobs_pool_free - see jobs.h. */
void jobs_pool_free(struct jobs_pool *p)
{
	if (!p)
		return;
	pool_stop(p);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}

/* jobs_pool_submit - see jobs.h: queue work on p (NULL: the shared pool). */
struct job *jobs_pool_submit(struct jobs_pool *p, struct ev_loop *loop, job_work_fn *work, job_done_fn *done,
			     void *arg)
{
	if (!p)
		p = &shared;
	struct job *j = xcalloc(1, sizeof *j);
	j->loop = loop;
	j->work = work;
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&p->mu);
	if (!p->threads && p != &shared)
		pool_run(p);
	if (p->tail)
		p->tail->next = j;
	else
		p->head = j;
	p->tail = j;
	pthread_cond_signal(&p->cv);
	pthread_mutex_unlock(&p->mu);
	return j;
}

/* jobs_submit - queue work for a shared worker. */
struct job *jobs_submit(struct ev_loop *loop, job_work_fn *work, job_done_fn *done, void *arg)
{
	return jobs_pool_submit(NULL, loop, work, done, arg);
}

/* jobs_cancel - the submitter no longer wants the result. */
void jobs_cancel(struct job *j)
{
	j->cancelled = 1;
}
