/*
 * fuzz_conf.c - libFuzzer target for the configuration file parser:
 * conf_load on the input as a file, and when it loads, the promise of
 * conf_dump that what it prints reads back to the same configuration, for
 * -n (changed values) and -d (all values). Two confs are compared by
 * their expanded values, every parameter formatted canonically, so "300"
 * and "5m" agree. (The expanded values themselves are not read back: an
 * expansion may begin with a space, "$empty x", which no file can write.)
 * conf_value_of (perimd healthcheck's one parameter) is run on every
 * input: NULL only with a reason, and the value conf_load gives when the
 * whole file loads.
 */
#include "conf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* text_fd - a memory file holding the n bytes of text, its path in path:
 * the parser takes a path, and a memfd needs no clean-up when we crash. */
static int text_fd(const char *text, size_t n, char *path, size_t pathlen)
{
	int fd = memfd_create("fuzz_conf", 0);

	if (fd < 0)
		abort();
	for (size_t off = 0; off < n;) {
		ssize_t w = write(fd, text + off, n - off);
		if (w <= 0)
			abort();
		off += (size_t)w;
	}
	snprintf(path, pathlen, "/proc/self/fd/%d", fd);
	return fd;
}

/* load_text - conf_load on n bytes of text. */
static struct conf *load_text(const char *text, size_t n, char *err, size_t errlen)
{
	char path[64];
	int fd = text_fd(text, n, path, sizeof path);
	struct conf *c = conf_load(path, 0, NULL, 0, err, errlen);
	close(fd);
	return c;
}

/* value_of - conf_value_of(stats_listen) on n bytes of text; it returns
 * NULL only with a reason. */
static char *value_of(const char *text, size_t n)
{
	char path[64], err[1024];
	int fd = text_fd(text, n, path, sizeof path);
	char *v = conf_value_of(path, 0, "stats_listen", err, sizeof err);
	close(fd);
	if (!v && err[0] == 0)
		abort();
	return v;
}

/* dump_text - conf_dump into a malloc'ed string (*n bytes). */
static char *dump_text(const struct conf *c, int defaults_too, size_t *n)
{
	char *s = NULL;
	FILE *f = open_memstream(&s, n);

	if (!f)
		abort();
	conf_dump(f, c, defaults_too);
	if (fclose(f) != 0)
		abort();
	return s;
}

/* values_text - every parameter's expanded value: the dump of a copy
 * without the raw text prints values, not what was written. */
static char *values_text(const struct conf *c, size_t *n)
{
	struct conf v = *c;

	v.raw = NULL;
	return dump_text(&v, 1, n);
}

/* round_trip - text printed from c must load into a conf with c's values. */
static void round_trip(const char *what, const char *text, size_t n,
		       const char *want, size_t wantn)
{
	char err[1024];
	struct conf *c2 = load_text(text, n, err, sizeof err);

	if (!c2) {
		fprintf(stderr, "fuzz_conf: %s output does not read back: %s\n--\n%.*s--\n",
			what, err, (int)n, text);
		abort();
	}
	size_t gotn;
	char *got = values_text(c2, &gotn);
	if (gotn != wantn || memcmp(got, want, gotn) != 0) {
		fprintf(stderr, "fuzz_conf: %s output reads back different values\n"
			"-- printed:\n%.*s-- before:\n%.*s-- after:\n%.*s--\n",
			what, (int)n, text, (int)wantn, want, (int)gotn, got);
		abort();
	}
	free(got);
	conf_release(c2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[1024];
	struct conf *c = load_text((const char *)data, size, err, sizeof err);
	char *listen = value_of((const char *)data, size);

	if (c && (!listen || strcmp(listen, c->stats_listen) != 0))
		abort();
	free(listen);
	if (!c) {
		/* every refusal names its reason */
		if (err[0] == 0)
			abort();
		return 0;
	}
	size_t vn, nn, dn, en;
	char *vals = values_text(c, &vn);
	char *changed = dump_text(c, 0, &nn);
	char *all = dump_text(c, 1, &dn);
	round_trip("-n", changed, nn, vals, vn);
	round_trip("-d", all, dn, vals, vn);
	/* -n of what -n printed prints the same again */
	struct conf *c2 = load_text(changed, nn, err, sizeof err);
	if (!c2)
		abort();
	char *again = dump_text(c2, 0, &en);
	if (en != nn || memcmp(again, changed, nn) != 0)
		abort();
	free(again);
	conf_release(c2);
	free(vals);
	free(changed);
	free(all);
	conf_release(c);
	return 0;
}
