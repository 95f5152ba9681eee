/*
 * fuzz_data.c - libFuzzer target for the DATA parser. Bytes 0-1 choose the
 * mode and the random chunk splits; the rest is the client's DATA stream.
 * Fed whole, one byte at a time and in random chunks, the parser must give
 * the same result; its output must be canonical (CRLF only, no bare CR or
 * LF, no NUL), end DATA only at a literal CRLF "." CRLF, and survive
 * dot-stuffing and re-parsing unchanged, ending exactly at the new end.
 * A byte-at-a-time reference of the same rules (ref_parse, ref_stuff)
 * must agree with the parser's and stuffer's word-at-a-time fast paths.
 */
#include "smtp_proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct result {
	enum parse_result res;
	size_t consumed;
	size_t outlen;
	unsigned flags;
	unsigned received;
	uint64_t bytes;
	char *out;
};

/* feed - parse in[0..len) in chunks: step 0 = whole, 1 = byte by byte,
 * else random sizes from *seed; each chunk gets an exact-size out buffer
 * so ASan catches any write beyond the documented 2 * len + 2 */
static void feed(const char *in, size_t len, enum smtp_bare_mode mode,
		 int step, unsigned *seed, struct result *r)
{
	struct smtp_data_parser p;
	size_t pos = 0;

	smtp_data_init(&p, mode);
	r->out = malloc(2 * len + 8);
	if (!r->out)
		abort();
	r->outlen = 0;
	r->res = PARSE_AGAIN;
	while (pos < len) {
		size_t n = len - pos, c, o;
		char *chunk;

		if (step == 1)
			n = 1;
		else if (step) {
			*seed = *seed * 1103515245u + 12345u;
			n = 1 + (*seed >> 16) % 64;
			if (n > len - pos)
				n = len - pos;
		}
		chunk = malloc(2 * n + 2);
		if (!chunk)
			abort();
		r->res = smtp_data_feed(&p, in + pos, n, &c, chunk, &o);
		if (o > 2 * n + 2 || c > n)
			abort();
		memcpy(r->out + r->outlen, chunk, o);
		free(chunk);
		r->outlen += o;
		pos += c;
		if (r->res == PARSE_OK)
			break;
		if (r->res != PARSE_AGAIN || c != n)
			abort();
	}
	r->consumed = pos;
	r->flags = p.flags;
	r->received = p.received_count;
	r->bytes = p.bytes;
}

/* same - two runs agree on everything */
static int same(const struct result *a, const struct result *b)
{
	return a->res == b->res && a->consumed == b->consumed &&
	       a->outlen == b->outlen && a->flags == b->flags &&
	       a->received == b->received && a->bytes == b->bytes &&
	       memcmp(a->out, b->out, a->outlen) == 0;
}

/* ends_crlf - o[0..n) ends with CRLF */
static int ends_crlf(const char *o, size_t n)
{
	return n >= 2 && o[n - 2] == '\r' && o[n - 1] == '\n';
}

/* check_canonical - only CRLF pairs, no NUL; count the lines */
static size_t check_canonical(const char *o, size_t n)
{
	size_t lines = 0;

	for (size_t i = 0; i < n; i++) {
		if (o[i] == '\0')
			abort();
		if (o[i] == '\r' && (i + 1 >= n || o[i + 1] != '\n'))
			abort();
		if (o[i] == '\n') {
			if (i == 0 || o[i - 1] != '\r')
				abort();
			lines++;
		}
	}
	return lines;
}

/* check_reparse - stuff canon (which ends in CRLF or is empty), append
 * ".CRLF", parse: same bytes back, no flags, ends at the very end */
static void check_reparse(const char *canon, size_t n)
{
	char *wire = malloc(2 * n + 3);
	int ls = 1;
	size_t w;
	unsigned seed = 1;
	struct result r;

	if (!wire)
		abort();
	w = smtp_dot_stuff(canon, n, &ls, wire);
	if (w > 2 * n || ls != 1)
		abort();
	memcpy(wire + w, ".\r\n", 3);
	w += 3;
	feed(wire, w, SMTP_BARE_NORMALIZE, 2, &seed, &r);
	if (r.res != PARSE_OK || r.consumed != w || r.outlen != n ||
	    memcmp(r.out, canon, n) != 0 || (r.flags & ~SMTP_DATA_8BIT))
		abort();
	/* BDAT chunks (relay_scan_overlap): no stuffing, no fold at limit 0:
	 * the canonical bytes exactly, whatever the chunking. */
	struct smtp_stuff st = { .at_line_start = 1, .nodot = 1 };
	size_t used, o = 0, i = 0;
	while (i < n) {
		size_t step = 1 + (i * 7 + n) % 97;
		if (step > n - i)
			step = n - i;
		o += smtp_dot_stuff_fold(canon + i, step, &used, &st, 0, wire + o, 2 * n + 3 - o);
		if (used != step)
			abort();
		i += used;
	}
	if (o != n || memcmp(wire, canon, n) != 0)
		abort();
	free(r.out);
	free(wire);
}

/* ---- reference: the DATA rules one byte at a time, no fast path ---- */

struct ref {
	int state;        /* 0 line start, 1 after a first '.', 2 text, 3 done */
	int cr, real, junk, empty, hdr, rcv;
	unsigned flags, received;
	size_t o;
	char *out;
};

static void ref_emit(struct ref *r, char c)
{
	r->out[r->o++] = c;
	if (r->hdr && r->rcv != 9) {
		if (r->rcv < 8) {
			char l = c >= 'A' && c <= 'Z' ? (char)(c + 32) : c;
			r->rcv = l == "received"[r->rcv] ? r->rcv + 1 : 9;
		} else if (c == ':') {
			r->received++;
			r->rcv = 9;
		} else if (c != ' ' && c != '\t') {
			r->rcv = 9;
		}
	}
	r->empty = 0;
}

static int ref_eol(struct ref *r, int real)
{
	if (r->state == 1) {
		if (real && r->real && !r->junk) {
			r->state = 3;
			return 1;
		}
		ref_emit(r, '.');
	}
	if (r->empty)
		r->hdr = 0;
	r->out[r->o++] = '\r';
	r->out[r->o++] = '\n';
	r->state = 0;
	r->real = real;
	r->junk = 0;
	r->empty = 1;
	r->rcv = 0;
	return 0;
}

/* ref_parse - the whole input; returns bytes consumed (len if no end) */
static size_t ref_parse(const unsigned char *in, size_t len, struct ref *r)
{
	memset(r, 0, sizeof *r);
	r->real = r->empty = r->hdr = 1;
	r->out = malloc(2 * len + 8);
	if (!r->out)
		abort();
	for (size_t i = 0; i < len; i++) {
		unsigned char c = in[i];

		if (r->cr) {
			r->cr = 0;
			if (c == '\n') {
				if (ref_eol(r, 1))
					return i + 1;
				continue;
			}
			r->flags |= SMTP_DATA_BARE_CR;
			r->junk = 1;
		}
		if (c == '\r') {
			r->cr = 1;
		} else if (c == '\n') {
			r->flags |= SMTP_DATA_BARE_LF;
			ref_eol(r, 0);
		} else if (c == 0) {
			r->flags |= SMTP_DATA_NUL;
			r->junk = 1;
		} else {
			if (c >= 0x80)
				r->flags |= SMTP_DATA_8BIT;
			if (r->state == 0 && c == '.') {
				r->state = 1;
			} else {
				r->state = 2;
				ref_emit(r, (char)c);
			}
		}
	}
	return len;
}

/* ref_stuff - a '.' after a line feed (or at the start) is doubled */
static size_t ref_stuff(const char *in, size_t len, int ls, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < len; i++) {
		if (ls && in[i] == '.')
			out[o++] = '.';
		out[o++] = in[i];
		ls = in[i] == '\n';
	}
	return o;
}

/* check_reference - the parser and the stuffer agree with the reference */
static void check_reference(const char *in, size_t len, const struct result *w)
{
	struct ref r;
	size_t c = ref_parse((const unsigned char *)in, len, &r);

	if (c != w->consumed || r.o != w->outlen || r.flags != w->flags ||
	    r.received != w->received || memcmp(r.out, w->out, r.o) != 0 ||
	    (w->res == PARSE_OK) != (r.state == 3))
		abort();
	free(r.out);
	/* the stuffer on the raw input, from either line state */
	for (int ls = 0; ls < 2; ls++) {
		char *a = malloc(2 * len + 1), *b = malloc(2 * len + 1);
		int l2 = ls;

		if (!a || !b)
			abort();
		size_t na = ref_stuff(in, len, ls, a);
		size_t nb = smtp_dot_stuff(in, len, &l2, b);
		if (na != nb || memcmp(a, b, na) != 0 ||
		    l2 != (len ? in[len - 1] == '\n' : ls))
			abort();
		free(a);
		free(b);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data + 2;
	size_t len;
	enum smtp_bare_mode mode;
	unsigned seed;
	struct result whole, bytes, split, other;
	size_t lines;

	if (size < 2)
		return 0;
	len = size - 2;
	mode = data[0] & 1 ? SMTP_BARE_REJECT : SMTP_BARE_NORMALIZE;
	seed = data[1];

	feed(in, len, mode, 0, &seed, &whole);
	feed(in, len, mode, 1, &seed, &bytes);
	feed(in, len, mode, 2, &seed, &split);
	feed(in, len, mode == SMTP_BARE_REJECT ? SMTP_BARE_NORMALIZE
					     : SMTP_BARE_REJECT, 2, &seed, &other);
	if (!same(&whole, &bytes) || !same(&whole, &split) ||
	    !same(&whole, &other) || whole.bytes != whole.outlen)
		abort();
	if (mode == SMTP_BARE_NORMALIZE)
		check_reference(in, len, &whole);

	/* a header field is counted at its ':', maybe on an unfinished line */
	lines = check_canonical(whole.out, whole.outlen);
	if (whole.received > lines + 1)
		abort();
	if (whole.res == PARSE_OK) {
		size_t c = whole.consumed;

		/* the end is a literal CRLF "." CRLF, or ".CRLF" at the start */
		if (!(c == 3 && memcmp(in, ".\r\n", 3) == 0) &&
		    !(c >= 5 && memcmp(in + c - 5, "\r\n.\r\n", 5) == 0))
			abort();
		if (whole.outlen && !ends_crlf(whole.out, whole.outlen))
			abort();
		check_reparse(whole.out, whole.outlen);
	} else {
		/* no literal end marker may have gone unnoticed */
		if ((len >= 3 && memcmp(in, ".\r\n", 3) == 0) ||
		    memmem(in, len, "\r\n.\r\n", 5))
			abort();
		/* what came out so far, with its last line closed, is a
		 * message of its own */
		if (whole.outlen && !ends_crlf(whole.out, whole.outlen)) {
			char *closed = malloc(whole.outlen + 2);

			if (!closed)
				abort();
			memcpy(closed, whole.out, whole.outlen);
			memcpy(closed + whole.outlen, "\r\n", 2);
			check_reparse(closed, whole.outlen + 2);
			free(closed);
		} else {
			check_reparse(whole.out, whole.outlen);
		}
	}
	free(whole.out);
	free(bytes.out);
	free(split.out);
	free(other.out);
	return 0;
}
