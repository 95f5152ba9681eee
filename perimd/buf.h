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

#endif
