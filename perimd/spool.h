/*
 * spool.h - one message body: in memory up to body_memory_limit, then
 * spilled to an unlinked file in body_spool_directory. All bodies together
 * are bounded by body_spool_limit (process-wide, atomic accounting).
 *
 * The content is the message as received, in canonical form: every line
 * ends in CRLF, no bare CR or LF, dot-unstuffed. A spool is used by one
 * thread at a time; after spool_finish() it is read-only and may be read by
 * a worker or the scanner through spool_fd().
 */
#ifndef PERIMD_SPOOL_H
#define PERIMD_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct spool;

/* spool_global_init - set limits and directory (from the configuration). */
void spool_global_init(const char *dir, uint64_t memory_limit, uint64_t total_limit);
/* spool_bytes_in_use - all spools together (for metrics and tests). */
uint64_t spool_bytes_in_use(void);

struct spool *spool_new(void);
/* spool_append - returns 0, or -1 with errno ENOSPC (over body_spool_limit)
 * or another errno (file error). After an error the spool is unusable. */
int spool_append(struct spool *s, const void *data, size_t len);
/* spool_finish - no more appends. */
void spool_finish(struct spool *s);
uint64_t spool_size(const struct spool *s);

/* spool_read - copy up to len bytes at offset off; returns bytes copied,
 * 0 at end, -1 on error. */
ssize_t spool_read(struct spool *s, uint64_t off, void *buf, size_t len);
/* spool_peek - zero-copy view at off when the body is in memory: sets *p
 * and returns the contiguous length available; returns 0 when on file. */
size_t spool_peek(struct spool *s, uint64_t off, const void **p);
/* spool_fd - the body as a readable file descriptor (an in-memory body
 * moves into a memfd first), owned by the spool: valid until spool_free(),
 * never to be closed by the caller; readers use pread() or their own dup.
 * Call after spool_finish(). Returns -1 with errno on failure. */
int spool_fd(struct spool *s);
/* spool_lend - spool_fd()'s descriptor was handed to another process
 * (the scanner), which may read it until spool_return(); a lent memfd is
 * closed by spool_free(), never kept for another body. */
void spool_lend(struct spool *s);
void spool_return(struct spool *s);
/* spool_free - releases memory, file and the accounted bytes. */
void spool_free(struct spool *s);

#endif
