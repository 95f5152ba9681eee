/*
 * jobs.c - a pool of worker threads for blocking calls.
 *
 * A job is queued by a loop, run by a worker, then handed back to the same
 * loop with ev_post(), where done() runs. The job is freed after done().
 * jobs_cancel() only sets a flag (the submitter's thread owns that field
 * from then on being read by the done step, on the same thread), so no
 * lock is needed for it: work() never reads it.
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

static pthread_mutex_t jobs_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t jobs_cv = PTHREAD_COND_INITIALIZER;
static struct job *jobs_head, *jobs_tail;
static int jobs_quit;
static pthread_t *jobs_threads;
static int jobs_nthreads;

/* job_finish - on the submitting loop: report and free. */
static void job_finish(void *arg)
{
	struct job *j = arg;
	j->done(j->arg, j->cancelled);
	free(j);
}

/* job_worker - take jobs until told to quit and the queue is empty. */
static void *job_worker(void *unused)
{
	(void)unused;
	for (;;) {
		pthread_mutex_lock(&jobs_mu);
		while (!jobs_head && !jobs_quit)
			pthread_cond_wait(&jobs_cv, &jobs_mu);
		struct job *j = jobs_head;
		if (!j) {
			pthread_mutex_unlock(&jobs_mu);
			return NULL;
		}
		jobs_head = j->next;
		if (!jobs_head)
			jobs_tail = NULL;
		pthread_mutex_unlock(&jobs_mu);
		j->work(j->arg);
		ev_post(j->loop, job_finish, j);
	}
}

/* jobs_start - start n workers. */
void jobs_start(int n)
{
	jobs_nthreads = n < 1 ? 1 : n;
	jobs_threads = xcalloc((size_t)jobs_nthreads, sizeof *jobs_threads);
	for (int i = 0; i < jobs_nthreads; i++)
		if (pthread_create(&jobs_threads[i], NULL, job_worker, NULL) != 0)
			fatal("cannot start worker thread");
}

/* jobs_stop - drain the queue and join the workers. */
void jobs_stop(void)
{
	pthread_mutex_lock(&jobs_mu);
	jobs_quit = 1;
	pthread_cond_broadcast(&jobs_cv);
	pthread_mutex_unlock(&jobs_mu);
	for (int i = 0; i < jobs_nthreads; i++)
		pthread_join(jobs_threads[i], NULL);
	free(jobs_threads);
	jobs_threads = NULL;
	jobs_nthreads = 0;
	jobs_quit = 0;
}

/* jobs_submit - queue work for a worker. */
struct job *jobs_submit(struct ev_loop *loop, job_work_fn *work, job_done_fn *done, void *arg)
{
	struct job *j = xcalloc(1, sizeof *j);
	j->loop = loop;
	j->work = work;
	j->done = done;
	j->arg = arg;
	pthread_mutex_lock(&jobs_mu);
	if (jobs_tail)
		jobs_tail->next = j;
	else
		jobs_head = j;
	jobs_tail = j;
	pthread_cond_signal(&jobs_cv);
	pthread_mutex_unlock(&jobs_mu);
	return j;
}

/* jobs_cancel - the submitter no longer wants the result. */
void jobs_cancel(struct job *j)
{
	j->cancelled = 1;
}
