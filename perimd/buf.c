/*
 * buf.c - the growable text buffer (buf.h). Capacity doubles from 256
 * bytes, so appending n bytes one piece at a time costs O(n). Also the
 * per-thread spare buffers of conn.c, spool.c and the relay.
 */
#include "buf.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* sb_grow - room for n more bytes and a NUL. */
static void sb_grow(struct strbuf *b, size_t n)
{
	if (b->len + n + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + n + 1)
		cap *= 2;
	b->p = xrealloc(b->p, cap);
	b->cap = cap;
}

/* sb_add - see buf.h. */
void sb_add(struct strbuf *b, const char *s, size_t n)
{
	sb_grow(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

/* sb_printf - see buf.h; short texts go through a stack buffer. */
void sb_printf(struct strbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char tmp[512];
	int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof tmp) {
		sb_add(b, tmp, (size_t)n);
		return;
	}
	sb_grow(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

/* sb_str - see buf.h. */
char *sb_str(struct strbuf *b)
{
	if (!b->p)
		sb_add(b, "", 0);
	return b->p;
}

/* sb_free - see buf.h. */
void sb_free(struct strbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* sb_read_file - see buf.h. */
int sb_read_file(struct strbuf *b, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char chunk[8192];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
		sb_add(b, chunk, n);
	int e = ferror(f) ? EIO : 0;
	fclose(f);
	errno = e;
	return e ? -1 : 0;
}

/* This thread's spare buffers (buf.h), freed when it ends. */
struct spare {
	void *p;
	size_t cap;
};
static __thread struct spare spares[BUF_SPARE_KINDS];
static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;

/* spare_free_all - a thread ends: its spares go back. */
static void spare_free_all(void *arg)
{
	struct spare *sp = arg;
	for (int i = 0; i < BUF_SPARE_KINDS; i++) {
		free(sp[i].p);
		sp[i].p = NULL;
		sp[i].cap = 0;
	}
}

/* spare_key_make - the key whose destructor frees a thread's spares. */
static void spare_key_make(void)
{
	pthread_key_create(&spare_key, spare_free_all);
}

/* buf_spare_take - see buf.h. */
void *buf_spare_take(enum buf_spare_kind kind, size_t want, size_t *cap)
{
	if (!spares[kind].p || spares[kind].cap < want)
		return NULL;
	void *p = spares[kind].p;
	*cap = spares[kind].cap;
	spares[kind].p = NULL;
	spares[kind].cap = 0;
	return p;
}

/* buf_spare_give - see buf.h. */
void buf_spare_give(enum buf_spare_kind kind, void *p, size_t cap)
{
	if (!p)
		return;
	if (cap > BUF_SPARE_MAX || cap <= spares[kind].cap) {
		free(p);
		return;
	}
	if (!spares[kind].p) {
		pthread_once(&spare_once, spare_key_make);
		pthread_setspecific(spare_key, spares);
	}
	free(spares[kind].p);
	spares[kind].p = p;
	spares[kind].cap = cap;
}
