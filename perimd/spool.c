/*
 * spool.c - message bodies: memory first, then an unlinked file.
 *
 * Invariants: every byte appended is counted in spool_total until
 * spool_free(); an append that would push the total over the limit fails
 * with ENOSPC and counts nothing. A spilled body lives in an unlinked file
 * (O_TMPFILE, else mkstemp + unlink), so a crash leaves nothing behind and
 * the fd can be handed to a scanner.
 * A memfd that spool_fd() made is kept for the next body when its spool
 * is freed (up to SPOOL_POOL files of at most SPOOL_POOL_BYTES, shrunk to
 * the next body's size before anyone sees it): creating one, growing it
 * page by page and freeing it all again was ~10% of perimd's own CPU per
 * 100 KB message. Never one lent out (spool_lend) and not given back: a
 * scanner that may still read it must not see another message there.
 * Every write to a file is a pwrite() at the spool's own offset, so no
 * file position is ever relied on.
 */
#include "spool.h"
#include "buf.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct spool {
	char *mem;
	size_t len, cap; /* in memory */
	int fd;          /* -1 while in memory */
	uint64_t size;   /* total bytes */
	int failed;
	int finished;
	int memfd; /* fd is a memfd of spool_fd(), a candidate for the pool */
	int lent;  /* handed to other processes and not given back (spool_lend) */
};

#define SPOOL_POOL 8
#define SPOOL_POOL_BYTES (256 * 1024)

/* Kept memfds and their sizes (see the invariants). */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static int pool_fd[SPOOL_POOL];
static uint64_t pool_size[SPOOL_POOL];
static int pool_n;

static char *spool_dir;
static uint64_t spool_mem_limit = 1024 * 1024;
static uint64_t spool_total_limit = UINT64_MAX;
static uint64_t spool_total; /* atomic */

static int pool_take(uint64_t *size);

/* spool_global_init - limits and spill directory. */
void spool_global_init(const char *dir, uint64_t memory_limit, uint64_t total_limit)
{
	free(spool_dir);
	spool_dir = xstrdup(dir);
	spool_mem_limit = memory_limit;
	spool_total_limit = total_limit ? total_limit : UINT64_MAX;
}

/* spool_bytes_in_use - all bodies together. */
uint64_t spool_bytes_in_use(void)
{
	return __atomic_load_n(&spool_total, __ATOMIC_RELAXED);
}

/* spool_new - an empty body. */
struct spool *spool_new(void)
{
	struct spool *s = xcalloc(1, sizeof *s);
	s->fd = -1;
	return s;
}

/* write_all - write len bytes at off or fail. */
static int write_all(int fd, const char *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* spool_move_to - the in-memory bytes go to fd, which the spool then owns
 * (fd is closed on failure). */
static int spool_move_to(struct spool *s, int fd)
{
	if (write_all(fd, s->mem, s->len, 0) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	buf_spare_give(BUF_SPARE_BODY, s->mem, s->cap);
	s->mem = NULL;
	s->len = s->cap = 0;
	s->fd = fd;
	return 0;
}

/* spool_spill - move the in-memory part to an unlinked file. */
static int spool_spill(struct spool *s)
{
	const char *dir = spool_dir ? spool_dir : "/tmp";
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0) {
		char path[4096];
		snprintf(path, sizeof path, "%s/perimd.XXXXXX", dir);
		fd = mkostemp(path, O_CLOEXEC);
		if (fd < 0)
			return -1;
		unlink(path);
	}
	if (spool_move_to(s, fd) < 0)
		return -1;
	return 0;
}

/* spool_append - add bytes, spilling to file past the memory limit. */
int spool_append(struct spool *s, const void *data, size_t len)
{
	if (s->failed || s->finished) {
		errno = EINVAL;
		return -1;
	}
	if (!len)
		return 0;
	uint64_t total = __atomic_add_fetch(&spool_total, len, __ATOMIC_RELAXED);
	if (total > spool_total_limit) {
		__atomic_sub_fetch(&spool_total, len, __ATOMIC_RELAXED);
		s->failed = 1;
		errno = ENOSPC;
		return -1;
	}
	s->size += len;
	if (s->fd < 0 && s->size > spool_mem_limit && spool_spill(s) < 0)
		goto fail;
	if (s->fd >= 0) {
		if (write_all(s->fd, data, len, s->size - len) < 0)
			goto fail;
		return 0;
	}
	if (!s->mem)
		s->mem = buf_spare_take(BUF_SPARE_BODY, len, &s->cap);
	if (s->cap - s->len < len) {
		size_t ncap = s->cap ? s->cap : 4096;
		while (ncap - s->len < len)
			ncap *= 2;
		s->mem = xrealloc(s->mem, ncap);
		s->cap = ncap;
	}
	memcpy(s->mem + s->len, data, len);
	s->len += len;
	return 0;
fail:
	s->failed = 1;
	return -1;
}

/* spool_finish - no more appends. */
void spool_finish(struct spool *s)
{
	s->finished = 1;
}

/* spool_size - bytes stored. */
uint64_t spool_size(const struct spool *s)
{
	return s->size;
}

/* spool_read - copy bytes at an offset. */
ssize_t spool_read(struct spool *s, uint64_t off, void *buf, size_t len)
{
	if (off >= s->size)
		return 0;
	if (len > s->size - off)
		len = (size_t)(s->size - off);
	if (s->fd < 0) {
		memcpy(buf, s->mem + off, len);
		return (ssize_t)len;
	}
	for (;;) {
		ssize_t n = pread(s->fd, buf, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		return n;
	}
}

/* spool_peek - zero-copy view of an in-memory body. */
size_t spool_peek(struct spool *s, uint64_t off, const void **p)
{
	if (s->fd >= 0 || off >= s->len)
		return 0;
	*p = s->mem + off;
	return s->len - (size_t)off;
}

/* spool_fd - the body as a file: a spilled body is already one; an
 * in-memory body moves into a memfd (its heap copy is freed, so the bytes
 * are not held twice while a scanner reads them). */
int spool_fd(struct spool *s)
{
	if (s->fd >= 0)
		return s->fd;
	if (s->failed) {
		errno = EINVAL;
		return -1;
	}
	uint64_t had = 0;
	int fd = pool_take(&had);
	if (fd >= 0 && had > s->len && ftruncate(fd, (off_t)s->len) < 0) {
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		fd = memfd_create("perimd-body", MFD_CLOEXEC);
	if (fd < 0)
		return -1;
	if (spool_move_to(s, fd) < 0)
		return -1;
	s->memfd = 1;
	return fd;
}

/* spool_lend - the fd went to another process (see the invariants). */
void spool_lend(struct spool *s)
{
	s->lent++;
}

/* spool_return - that process is done with it. */
void spool_return(struct spool *s)
{
	if (s->lent > 0)
		s->lent--;
}

/* pool_take - a kept memfd and its size in *size, or -1. */
static int pool_take(uint64_t *size)
{
	int fd = -1;
	pthread_mutex_lock(&pool_mu);
	if (pool_n > 0) {
		pool_n--;
		fd = pool_fd[pool_n];
		*size = pool_size[pool_n];
	}
	pthread_mutex_unlock(&pool_mu);
	return fd;
}

/* pool_keep - keep s's memfd for the next body; 0 when kept. */
static int pool_keep(struct spool *s)
{
	if (!s->memfd || s->lent || s->failed || s->size > SPOOL_POOL_BYTES)
		return -1;
	int kept = -1;
	pthread_mutex_lock(&pool_mu);
	if (pool_n < SPOOL_POOL) {
		pool_fd[pool_n] = s->fd;
		pool_size[pool_n] = s->size;
		pool_n++;
		kept = 0;
	}
	pthread_mutex_unlock(&pool_mu);
	return kept;
}

/* spool_free - release everything and the accounted bytes. */
void spool_free(struct spool *s)
{
	if (!s)
		return;
	__atomic_sub_fetch(&spool_total, s->size, __ATOMIC_RELAXED);
	if (s->fd >= 0 && pool_keep(s) < 0)
		close(s->fd);
	buf_spare_give(BUF_SPARE_BODY, s->mem, s->cap);
	free(s);
}
