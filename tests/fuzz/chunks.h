/*
 * chunks.h - the harnesses' chunked feed (fuzz_policyd.c, fuzz_psvc.c): a
 * stream parser given the input as reads arrive, in chunks whose sizes
 * come from the input, must see what it sees given the input whole. A
 * header, not a .c: the libFuzzer build compiles each target alone.
 */
#ifndef PERIMD_FUZZ_CHUNKS_H
#define PERIMD_FUZZ_CHUNKS_H

#include "smtp_proto.h"

#include <stddef.h>

/* fuzz_take_fn - parse one item at buf[0..len): PARSE_OK with *used
 * bytes taken (item number n, 0 first, the callee's to keep), or another
 * answer that ends the round (PARSE_AGAIN: wait for more). */
typedef int (*fuzz_take_fn)(void *ctx, const char *buf, size_t len, size_t *used, int n);

/* fuzz_chunks - feed buf[0..size) in chunks of 1..97 bytes (sizes from a
 * generator seeded by size); after each chunk take every item buffered;
 * a final answer (OK, BAD, TOO_LONG) ends the feed. Returns the number of
 * items, *consumed the bytes they took, *last the last answer. */
static inline int fuzz_chunks(const char *buf, size_t size, fuzz_take_fn take, void *ctx, size_t *consumed,
			      int *last)
{
	size_t have = 0, start = 0;
	int n = 0, clast = PARSE_AGAIN;
	unsigned seed = (unsigned)size * 2654435761u;
	while (have < size) {
		seed = seed * 1103515245u + 12345u;
		size_t c = 1 + (seed >> 16) % 97;
		have = have + c > size ? size : have + c;
		for (;;) {
			size_t used;
			clast = take(ctx, buf + start, have - start, &used, n);
			if (clast != PARSE_OK)
				break;
			n++;
			start += used;
		}
		if (clast != PARSE_AGAIN)
			break;
	}
	*consumed = start;
	*last = clast;
	return n;
}

#endif
