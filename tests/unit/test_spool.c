/*
 * test_spool.c - message bodies (spool.c): a memfd of spool_fd() is kept
 * for the next body when its spool is freed, and the next body sees
 * exactly its own bytes there (a smaller one is not followed by the old
 * tail); a lent memfd not given back, or one over the pool's size, is
 * never reused; a body spilled to a file is whole after appends on both
 * sides of the spill.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"
#include "t.h"

/* body - n bytes of a pattern that differs per seed. */
static char *body(size_t n, int seed)
{
	char *p = malloc(n);
	for (size_t i = 0; i < n; i++)
		p[i] = (char)('a' + (i * 7 + (size_t)seed) % 26);
	return p;
}

/* with_fd - a finished spool of n bytes (pattern seed) and its fd's
 * inode in *ino. */
static struct spool *with_fd(size_t n, int seed, int *fd, ino_t *ino)
{
	struct spool *s = spool_new();
	char *b = body(n, seed);
	CHECK_INT(spool_append(s, b, n), 0);
	free(b);
	spool_finish(s);
	*fd = spool_fd(s);
	CHECK(*fd >= 0);
	struct stat st;
	CHECK_INT(fstat(*fd, &st), 0);
	CHECK_INT(st.st_size, n);
	*ino = st.st_ino;
	return s;
}

/* same_bytes - the file behind fd holds exactly n bytes of pattern seed. */
static int same_bytes(int fd, size_t n, int seed)
{
	struct stat st;
	if (fstat(fd, &st) < 0 || (size_t)st.st_size != n)
		return 0;
	char *want = body(n, seed), *got = malloc(n + 1);
	ssize_t k = pread(fd, got, n + 1, 0);
	int ok = k == (ssize_t)n && memcmp(want, got, n) == 0;
	free(want);
	free(got);
	return ok;
}

/* test_reuse_smaller - the kept memfd serves a smaller body: its own
 * bytes and size, nothing of the old one. */
TEST(test_reuse_smaller)
{
	int fd1, fd2;
	ino_t i1, i2;
	struct spool *a = with_fd(200000, 1, &fd1, &i1);
	CHECK(same_bytes(fd1, 200000, 1));
	spool_free(a);
	struct spool *b = with_fd(1000, 2, &fd2, &i2);
	CHECK(i2 == i1);
	CHECK(same_bytes(fd2, 1000, 2));
	CHECK_INT(spool_size(b), 1000);
	char buf[16];
	CHECK_INT(spool_read(b, 1000, buf, sizeof buf), 0);
	spool_free(b);
	/* ... and then a larger one again. */
	struct spool *c = with_fd(150000, 3, &fd1, &i1);
	CHECK(i1 == i2);
	CHECK(same_bytes(fd1, 150000, 3));
	spool_free(c);
}

/* test_lent - lent and not given back: closed, not reused; lent and given
 * back: reused. */
TEST(test_lent)
{
	int fd;
	ino_t i1, i2, i3;
	struct spool *a = with_fd(5000, 4, &fd, &i1);
	spool_lend(a);
	spool_free(a);
	struct spool *b = with_fd(5000, 5, &fd, &i2);
	CHECK(i2 != i1);
	spool_lend(b);
	spool_lend(b);
	spool_return(b);
	spool_return(b);
	spool_free(b);
	struct spool *c = with_fd(100, 6, &fd, &i3);
	CHECK(i3 == i2);
	CHECK(same_bytes(fd, 100, 6));
	spool_free(c);
}

/* test_too_large - a body over the pool's size limit is not kept. */
TEST(test_too_large)
{
	int fd;
	ino_t i1, i2;
	struct spool *a = with_fd(600000, 7, &fd, &i1);
	spool_free(a);
	struct spool *b = with_fd(10, 8, &fd, &i2);
	CHECK(i2 != i1);
	CHECK(same_bytes(fd, 10, 8));
	spool_free(b);
}

/* test_spill - appends before and after the spill to a file end up in
 * order in the file, and spool_fd() is that file. */
TEST(test_spill)
{
	spool_global_init("/tmp", 4096, 0);
	struct spool *s = spool_new();
	char *b = body(20000, 9);
	for (size_t off = 0; off < 20000; off += 3000)
		CHECK_INT(spool_append(s, b + off, off + 3000 > 20000 ? 20000 - off : 3000), 0);
	spool_finish(s);
	int fd = spool_fd(s);
	CHECK(fd >= 0);
	CHECK(same_bytes(fd, 20000, 9));
	char got[100];
	CHECK_INT(spool_read(s, 19950, got, sizeof got), 50);
	CHECK(memcmp(got, b + 19950, 50) == 0);
	free(b);
	spool_free(s);
	CHECK_INT(spool_bytes_in_use(), 0);
	spool_global_init("/tmp", 1024 * 1024, 0);
}

int main(void)
{
	RUN(test_reuse_smaller);
	RUN(test_lent);
	RUN(test_too_large);
	RUN(test_spill);
	return t_done();
}
