/*
 * jobs.h - worker threads for blocking work (database statements, file
 * reads, scans), results delivered back on the loop that asked.
 *
 * work(arg) runs on a worker thread and MUST NOT touch loop state. done(arg,
 * cancelled) then runs on the submitting loop's thread. If the submitter
 * called jobs_cancel() first, done() still runs (cancelled = 1) so arg can
 * be freed, but it MUST NOT use the (gone) submitter.
 */
#ifndef PERIMD_JOBS_H
#define PERIMD_JOBS_H

struct ev_loop;
struct job;

typedef void job_work_fn(void *arg);
typedef void job_done_fn(void *arg, int cancelled);

/* jobs_start - start n worker threads (n >= 1). */
void jobs_start(int n);
/* jobs_stop - finish queued work and join the workers. */
void jobs_stop(void);

/* jobs_submit - queue work; returns a handle valid until done() has run.
 * loop NULL: done() runs on the worker, right after work() (a job that
 * reports to no loop, such as one that hands its results out itself). */
struct job *jobs_submit(struct ev_loop *loop, job_work_fn *work, job_done_fn *done, void *arg);
/* jobs_pool_new - a pool of n workers of its own (n >= 1), started with
 * its first job. jobs_pool_free - drain its queue, join its workers; never
 * from one of them. */
struct jobs_pool;
struct jobs_pool *jobs_pool_new(int n);
void jobs_pool_free(struct jobs_pool *p);
/* jobs_pool_submit - jobs_submit on pool p (NULL: the shared pool). */
struct job *jobs_pool_submit(struct jobs_pool *p, struct ev_loop *loop, job_work_fn *work, job_done_fn *done,
			     void *arg);
/* jobs_cancel - from the submitting loop's thread only. */
void jobs_cancel(struct job *j);

#endif
