/*
 * test_buf.c - the growable text buffer (buf.c): appends keep the text
 * NUL-terminated, printf output longer than the stack buffer is whole,
 * sb_str of an empty buffer is "", sb_free leaves an empty buffer; a
 * spare buffer is handed back only when large enough, the larger of two
 * is kept, one over BUF_SPARE_MAX never.
 */
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "t.h"

/* test_add_printf - pieces and formatted text end up in order. */
TEST(test_add_printf)
{
	struct strbuf b = {0};
	sb_add(&b, "abc", 3);
	CHECK_INT(b.len, 3);
	CHECK_STR(b.p, "abc");
	sb_add(&b, "dxyz", 1);
	sb_printf(&b, "-%d-%s", 42, "q");
	CHECK_STR(b.p, "abcd-42-q");
	CHECK_INT(b.len, strlen("abcd-42-q"));
	sb_add(&b, "", 0);
	CHECK_STR(b.p, "abcd-42-q");
	sb_free(&b);
	CHECK(b.p == NULL);
	CHECK_INT(b.len, 0);
	CHECK_INT(b.cap, 0);
}

/* test_long - growth past the first block and past sb_printf's 512-byte
 * stack buffer; one byte at a time gives the same text as one piece. */
TEST(test_long)
{
	char big[5000];
	for (size_t i = 0; i < sizeof big - 1; i++)
		big[i] = (char)('a' + i % 26);
	big[sizeof big - 1] = 0;
	struct strbuf a = {0}, b = {0};
	sb_printf(&a, "<%s>", big);
	CHECK_INT(a.len, strlen(big) + 2);
	CHECK(a.p[0] == '<' && a.p[a.len - 1] == '>' && a.p[a.len] == 0);
	CHECK(memcmp(a.p + 1, big, strlen(big)) == 0);
	sb_add(&b, "<", 1);
	for (size_t i = 0; big[i]; i++)
		sb_add(&b, big + i, 1);
	sb_add(&b, ">", 1);
	CHECK_STR(a.p, b.p);
	CHECK(b.cap >= b.len + 1);
	sb_free(&a);
	sb_free(&b);
}

/* test_str - sb_str never returns NULL and returns the text built. */
TEST(test_str)
{
	struct strbuf b = {0};
	CHECK_STR(sb_str(&b), "");
	CHECK(b.p != NULL);
	sb_add(&b, "x", 1);
	CHECK_STR(sb_str(&b), "x");
	char *s = sb_str(&b);
	CHECK(s == b.p);
	free(s);   /* the text is the caller's (conf.c hands it on) */
}

/* test_spare - this thread's spare buffers (buf_spare_take/give). */
TEST(test_spare)
{
	size_t cap = 0;
	CHECK(buf_spare_take(BUF_SPARE_READ, 1, &cap) == NULL);
	char *a = malloc(1000);
	buf_spare_give(BUF_SPARE_READ, a, 1000);
	CHECK(buf_spare_take(BUF_SPARE_BODY, 1, &cap) == NULL); /* kinds apart */
	CHECK(buf_spare_take(BUF_SPARE_READ, 2000, &cap) == NULL);
	CHECK(buf_spare_take(BUF_SPARE_READ, 500, &cap) == a);
	CHECK_INT(cap, 1000);
	CHECK(buf_spare_take(BUF_SPARE_READ, 1, &cap) == NULL); /* taken */
	buf_spare_give(BUF_SPARE_READ, a, 1000);
	buf_spare_give(BUF_SPARE_READ, malloc(10), 10); /* smaller: freed */
	char *b = malloc(4000);
	buf_spare_give(BUF_SPARE_READ, b, 4000); /* larger: replaces a */
	buf_spare_give(BUF_SPARE_READ, malloc(BUF_SPARE_MAX + 1), BUF_SPARE_MAX + 1);
	buf_spare_give(BUF_SPARE_READ, NULL, 0);
	CHECK(buf_spare_take(BUF_SPARE_READ, 1, &cap) == b);
	CHECK_INT(cap, 4000);
	free(b);
}

int main(void)
{
	RUN(test_add_printf);
	RUN(test_long);
	RUN(test_str);
	RUN(test_spare);
	return t_done();
}
