/*
 * buf.h - a growable text buffer, NUL-terminated, for output built piece
 * by piece (metrics, pages, configuration text). Ground floor: it uses
 * only log.h (xrealloc).
 *
 * A zeroed struct strbuf is an empty buffer; p is NULL until the first
 * add. Every add keeps p[len] == 0. Memory is the caller's to sb_free().
 */
#ifndef PERIMD_BUF_H
#define PERIMD_BUF_H

#include <stddef.h>

struct strbuf {
	char *p;
	size_t len, cap;
};

/* sb_add - append n bytes of s. */
void sb_add(struct strbuf *b, const char *s, size_t n);
/* sb_printf - append printf-formatted text. */
void sb_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* sb_str - the text built so far: "" (allocated) when nothing was added. */
char *sb_str(struct strbuf *b);
/* sb_read_file - append the whole file at path (any bytes); 0, or -1
 * with errno (what was read before an error stays in b). */
int sb_read_file(struct strbuf *b, const char *path);
/* sb_free - release the memory; b is empty again. */
void sb_free(struct strbuf *b);

/* Spare buffers: one per kind and thread, so that the large buffer one
 * message is done with serves the next instead of going back to the
 * allocator (musl's maps and unmaps every block of 128 KB or more and
 * gives smaller ones back with madvise: a handful of system calls and
 * page faults per 100 KB message). At most BUF_SPARE_MAX bytes per kind and
 * thread are kept, freed when the thread ends. */
enum buf_spare_kind { BUF_SPARE_READ, BUF_SPARE_BODY, BUF_SPARE_RELAY, BUF_SPARE_KINDS };
#define BUF_SPARE_MAX (256 * 1024)
/* buf_spare_take - this thread's spare of kind if it has at least want bytes
 * (its size in *cap; the caller owns it now), else NULL. */
void *buf_spare_take(enum buf_spare_kind kind, size_t want, size_t *cap);
/* buf_spare_give - p (cap bytes, from malloc; NULL is fine) becomes this
 * thread's spare of kind if larger than the one kept and at most
 * BUF_SPARE_MAX, else it is freed. */
void buf_spare_give(enum buf_spare_kind kind, void *p, size_t cap);

#endif
