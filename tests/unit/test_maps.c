/*
 * test_maps.c - maps.c: file: maps (lookup, case-insensitive keys,
 * comments, continuation lines, duplicates keep the first entry), parent
 * domain lookups, and the errors for bad specs and missing files.
 */
#include "maps.h"
#include "t.h"

#include <stdlib.h>
#include <unistd.h>

static char tmpdir[64];
static char err[512];

/* write_map - write text to a fresh file; returns "file:PATH". */
static const char *write_map(const char *text)
{
	static char spec[160];
	static int seq;

	snprintf(spec, sizeof spec, "file:%s/m%d", tmpdir, ++seq);
	FILE *f = fopen(spec + 5, "w");
	fputs(text, f);
	fclose(f);
	return spec;
}

/* get - the value for key, "(none)" when not found. */
static const char *get(const struct map *m, const char *key)
{
	const char *v = NULL;
	int r = map_lookup(m, key, &v);
	return r == 1 ? v : r == 0 ? "(none)" : "(fail)";
}

/* getd - map_lookup_domain's value for domain, "(none)" when not found. */
static const char *getd(const struct map *m, const char *domain)
{
	const char *v = NULL;
	int r = map_lookup_domain(m, domain, &v);
	return r == 1 ? v : r == 0 ? "(none)" : "(fail)";
}

TEST(lookup_basic)
{
	const char *spec = write_map(
		"# relay recipients\n"
		"\n"
		"alice@example.com OK\n"
		"Bob@Example.COM   REJECT no such user here\n"
		"keyonly\n"
		"   # indented comment\n"
		"tab\tseparated\tvalue  \r\n");
	struct map *m = map_open(spec, err, sizeof err);
	CHECK(m != NULL);
	if (!m) {
		fprintf(stderr, "%s\n", err);
		return;
	}
	CHECK_STR(map_spec(m), spec);
	CHECK_STR(get(m, "alice@example.com"), "OK");
	CHECK_STR(get(m, "ALICE@example.com"), "OK");
	CHECK_STR(get(m, "bob@example.com"), "REJECT no such user here");
	CHECK_STR(get(m, "keyonly"), "");
	CHECK_STR(get(m, "tab"), "separated\tvalue");
	CHECK_STR(get(m, "carol@example.com"), "(none)");
	CHECK_STR(get(m, "#"), "(none)");
	CHECK_STR(get(m, "alice"), "(none)");
	map_free(m);
}

TEST(continuation)
{
	const char *spec = write_map("example.com [10.0.0.1]:25,\n"
				     "   [10.0.0.2]:25\n"
				     "# a comment does not end it\n"
				     "\t[10.0.0.3]:25\n"
				     "other.example [10.0.0.9]:25\n");
	struct map *m = map_open(spec, err, sizeof err);
	CHECK(m != NULL);
	if (!m)
		return;
	CHECK_STR(get(m, "example.com"), "[10.0.0.1]:25, [10.0.0.2]:25 [10.0.0.3]:25");
	CHECK_STR(get(m, "other.example"), "[10.0.0.9]:25");
	map_free(m);

	spec = write_map("\n  leading continuation\n");
	CHECK(map_open(spec, err, sizeof err) == NULL);
	char want[256];
	snprintf(want, sizeof want, "%s:2: continuation line", spec + 5);
	CHECK(strstr(err, want) != NULL);
}

TEST(duplicates_keep_first)
{
	/* As Postfix's postmap: a warning, and the first entry stays. */
	const char *spec = write_map("a@example.com first\nA@EXAMPLE.COM second\n");
	struct map *m = map_open(spec, err, sizeof err);
	CHECK(m != NULL);
	if (!m)
		return;
	CHECK_STR(get(m, "a@example.com"), "first");
	map_free(m);
}

TEST(many_keys)
{
	/* Enough entries to make the table grow several times. */
	char path[128];
	snprintf(path, sizeof path, "%s/big", tmpdir);
	FILE *f = fopen(path, "w");
	for (int i = 0; i < 5000; i++)
		fprintf(f, "User%d@Example.com v%d\n", i, i);
	fclose(f);
	char spec[140];
	snprintf(spec, sizeof spec, "file:%s", path);
	struct map *m = map_open(spec, err, sizeof err);
	CHECK(m != NULL);
	if (!m)
		return;
	int bad = 0;
	for (int i = 0; i < 5000; i++) {
		char k[64], v[32];
		snprintf(k, sizeof k, "user%d@EXAMPLE.COM", i);
		snprintf(v, sizeof v, "v%d", i);
		bad += strcmp(get(m, k), v) != 0;
	}
	CHECK_INT(bad, 0);
	CHECK_STR(get(m, "user5000@example.com"), "(none)");
	map_free(m);
}

TEST(parent_domains)
{
	const char *spec = write_map("example.com exact\n"
				     ".example.com sub\n"
				     ".deep.example.org deep\n"
				     "host.deep.example.org host\n");
	struct map *m = map_open(spec, err, sizeof err);
	CHECK(m != NULL);
	if (!m)
		return;
	CHECK_STR(getd(m, "example.com"), "exact");
	CHECK_STR(getd(m, "EXAMPLE.com."), "exact");
	CHECK_STR(getd(m, "a.example.com"), "sub");
	CHECK_STR(getd(m, "x.y.Example.COM"), "sub");
	CHECK_STR(getd(m, "badexample.com"), "(none)");
	CHECK_STR(getd(m, "host.deep.example.org"), "host");
	CHECK_STR(getd(m, "other.deep.example.org"), "deep");
	CHECK_STR(getd(m, "deep.example.org"), "(none)");
	CHECK_STR(getd(m, "example.org"), "(none)");
	CHECK_STR(getd(m, ""), "(none)");
	CHECK_STR(getd(m, "."), "(none)");
	CHECK_STR(getd(m, "com"), "(none)");
	map_free(m);
}

TEST(open_errors)
{
	CHECK(map_open("file:/nonexistent/map", err, sizeof err) == NULL);
	CHECK_STR(err, "/nonexistent/map: cannot open: No such file or directory");
	CHECK(map_open("sqlite:/etc/perimd/x.sqlite", err, sizeof err) == NULL);
	CHECK(strstr(err, "unknown map type \"sqlite\"") != NULL);
	CHECK(map_open("/etc/perimd/relay", err, sizeof err) == NULL);
	CHECK(strstr(err, "not a map (expected type:path)") != NULL);
	CHECK(map_open("file:", err, sizeof err) == NULL);
	CHECK(map_open(":x", err, sizeof err) == NULL);

	char path[128];
	snprintf(path, sizeof path, "%s/nul", tmpdir);
	FILE *f = fopen(path, "w");
	fwrite("ok 1\nbad\0key 2\n", 1, 15, f);
	fclose(f);
	char spec[140];
	snprintf(spec, sizeof spec, "file:%s", path);
	CHECK(map_open(spec, err, sizeof err) == NULL);
	char want[160];
	snprintf(want, sizeof want, "%s:2: NUL byte in line", path);
	CHECK_STR(err, want);

	const char *empty = write_map("# nothing\n");
	struct map *m = map_open(empty, err, sizeof err);
	CHECK(m != NULL);
	if (m)
		CHECK_STR(get(m, "x"), "(none)");
	map_free(m);
}

int main(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/test_maps.XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(lookup_basic);
	RUN(continuation);
	RUN(duplicates_keep_first);
	RUN(many_keys);
	RUN(parent_domains);
	RUN(open_errors);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	return t_done();
}
