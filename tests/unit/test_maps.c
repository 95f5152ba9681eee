/*
 * test_maps.c - maps.c: file: maps (lookup, case-insensitive keys,
 * comments, continuation lines, duplicates keep the first entry), parent
 * domain lookups, and the errors for bad specs and missing files.
 */
#include "maps.h"
#include "maps_regexp.h"
#include "rules.h"
#include "t.h"

#include <stdlib.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
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
	CHECK(map_open("pgsql:/etc/perimd/x.cf", err, sizeof err) == NULL);
	CHECK(strstr(err, "unknown map type \"pgsql\"") != NULL);
	CHECK(map_open("ldap:/nonexistent/x.cf", err, sizeof err) == NULL);
	CHECK(strstr(err, "/nonexistent/x.cf: cannot open") != NULL);
	CHECK(map_open("sqlite:/nonexistent/x.sqlite", err, sizeof err) == NULL);
	CHECK(map_open("mysql:/nonexistent/x.cf", err, sizeof err) == NULL);
	CHECK(strstr(err, "/nonexistent/x.cf: cannot open") != NULL);
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

/* q - map_query's value for kind/key, "(none)" or "(fail)". */
static const char *q(const struct map *m, enum map_kind kind, const char *key)
{
	static char val[256];
	char e[128];
	int r = map_query(m, kind, key, val, sizeof val, e, sizeof e);
	return r == 1 ? val : r == 0 ? "(none)" : "(fail)";
}

TEST(lookup_orders)
{
	struct map *m = map_open(write_map("a@example.com full\n"
					   "postmaster@ user-any-domain\n"
					   "example.org domain\n"
					   ".example.net parent\n"
					   "192.0.2.7 exact\n"
					   "192.0.2.0/24 net24\n"
					   "192.0.0.0/16 net16\n"
					   "198.51 octets\n"
					   "2001:db8::/32 v6net\n"
					   "@catch.test all\n"),
				 err, sizeof err);
	CHECK(m != NULL);
	if (!m)
		return;
	CHECK_STR(q(m, MAP_ADDR, "A@Example.com"), "full");
	CHECK_STR(q(m, MAP_ADDR, "postmaster@example.com"), "user-any-domain");
	CHECK_STR(q(m, MAP_ADDR, "b@example.org"), "domain");
	CHECK_STR(q(m, MAP_ADDR, "b@x.example.net"), "(none)");
	CHECK_STR(q(m, MAP_ADDR_PARENT, "b@x.example.net"), "parent");
	/* Postfix's order: the domain (and its parents) before user@ */
	CHECK_STR(q(m, MAP_ADDR, "postmaster@example.org"), "domain");
	CHECK_STR(q(m, MAP_ADDR_PARENT, "postmaster@x.example.net"), "parent");
	CHECK_STR(q(m, MAP_ADDR, "postmaster@x.example.net"), "user-any-domain");
	CHECK_STR(q(m, MAP_RCPT, "a@example.com"), "full");
	CHECK_STR(q(m, MAP_RCPT, "b@example.org"), "(none)");
	CHECK_STR(q(m, MAP_RCPT, "anyone@catch.test"), "all");
	CHECK_STR(q(m, MAP_RCPT, "postmaster@x.test"), "(none)");
	CHECK_STR(q(m, MAP_CLIENT, "192.0.2.7"), "exact");
	CHECK_STR(q(m, MAP_CLIENT, "192.0.2.8"), "net24");
	CHECK_STR(q(m, MAP_CLIENT, "192.0.3.8"), "net16");
	CHECK_STR(q(m, MAP_CLIENT, "198.51.100.1"), "octets");
	CHECK_STR(q(m, MAP_CLIENT, "2001:db8::25"), "v6net");
	CHECK_STR(q(m, MAP_CLIENT, "2001:db9::25"), "(none)");
	CHECK_STR(q(m, MAP_CLIENT, "203.0.113.1"), "(none)");
	map_free(m);
	unsigned char a[16];
	int bits;
	CHECK_INT(map_cidr_parse("10.0.0.0/8", 10, a, &bits), 0);
	CHECK_INT(bits, 104);
	CHECK_INT(map_cidr_parse("10.0.0.0/33", 11, a, &bits), -1);
	CHECK_INT(map_cidr_parse("10.0.0.0/", 9, a, &bits), -1);
	CHECK_INT(map_cidr_parse("x/8", 3, a, &bits), -1);
}

TEST(reload_keeps_old_on_error)
{
	const char *spec = write_map("k1 v1\n");
	char path[160];
	snprintf(path, sizeof path, "%s", spec + 5);
	struct map *a = map_open(spec, err, sizeof err);
	struct map *b = map_open(spec, err, sizeof err);
	CHECK(a != NULL && a == b);   /* unchanged file: the same table */
	FILE *f = fopen(path, "w");
	fputs("  continuation first\n", f);
	fclose(f);
	struct timespec ts[2] = { { 0, UTIME_NOW }, { time(NULL) + 10, 0 } };
	utimensat(AT_FDCWD, path, ts, 0);
	struct map *c = map_open(spec, err, sizeof err);
	CHECK(c == a);               /* broken: the old table stays */
	if (c)
		CHECK_STR(get(c, "k1"), "v1");
	f = fopen(path, "w");
	fputs("k2 v2\n", f);
	fclose(f);
	ts[1].tv_sec += 10;
	utimensat(AT_FDCWD, path, ts, 0);
	struct map *d = map_open(spec, err, sizeof err);
	CHECK(d != NULL && d != a);
	if (d)
		CHECK_STR(get(d, "k2"), "v2");
	map_free(a);
	map_free(b);
	map_free(c);
	map_free(d);
}

/* rx - the regexp table text's answer for key: its value, "(none)", or
 * "(error)" when the table does not parse. */
static const char *rx(const char *text, const char *key)
{
	static char val[256];
	struct map_regexp *t = map_regexp_parse(text, strlen(text), "t", rules_access_check, err, sizeof err);
	if (!t)
		return "(error)";
	int r = map_regexp_lookup(t, key, val, sizeof val);
	map_regexp_free(t);
	return r ? val : "(none)";
}

TEST(regexp_table)
{
	const char *tab = "# comment\n"
			  "/^spam([0-9]+)@/ 554 5.7.1 no spam number $1\n"
			  "if /@example\\.net$/\n"
			  "/^info@/ OK\n"
			  "!/^vip/ REJECT not on the list\n"
			  "endif\n"
			  "/CASE@/i DISCARD\n"
			  "/^long@/ WARN one\n"
			  "   two\n";
	CHECK_STR(rx(tab, "spam42@x.test"), "554 5.7.1 no spam number 42");
	CHECK_STR(rx(tab, "SPAM7@x.test"), "554 5.7.1 no spam number 7");
	CHECK_STR(rx(tab, "info@example.net"), "OK");
	CHECK_STR(rx(tab, "bob@example.net"), "REJECT not on the list");
	CHECK_STR(rx(tab, "vipbob@example.net"), "(none)");
	CHECK_STR(rx(tab, "info@example.org"), "(none)");
	CHECK_STR(rx(tab, "CASE@x"), "DISCARD");
	CHECK_STR(rx(tab, "case@x"), "(none)");
	CHECK_STR(rx(tab, "long@x"), "WARN one two");
	/* every bad line is named */
	CHECK_STR(rx("/a/ HOLD\n/(/ OK\n/a++++++++++++++++++/ OK\n/x/\nif /y/\n/ok/ OK\n", "a"), "(error)");
	CHECK(strstr(err, "t:1: ") && strstr(err, "HOLD"));
	CHECK(strstr(err, "t:2: bad pattern"));
	CHECK(strstr(err, "t:3: pattern too complex"));
	CHECK(strstr(err, "t:4: a pattern without a result"));
	CHECK(strstr(err, "t:5: if without endif"));
	CHECK(!strstr(err, "t:6:"));
	CHECK_STR(rx("endif\n", "a"), "(error)");
	CHECK_STR(rx("|x| OK\n", "a"), "(error)");
	CHECK_STR(rx("/(a)\\1/ OK\n", "aa"), "(error)");
	/* through maps.h: the key whole, whatever the kind */
	char spec[200], val[64];
	snprintf(spec, sizeof spec, "regexp:%s", write_map("/^192\\.0\\.2\\./ REJECT\n") + 5);
	struct map *m = map_open_checked(spec, rules_access_check, err, sizeof err);
	CHECK(m != NULL);
	if (m) {
		CHECK_INT(map_query(m, MAP_CLIENT, "192.0.2.9", val, sizeof val, err, sizeof err), 1);
		CHECK_STR(val, "REJECT");
		CHECK_INT(map_query(m, MAP_ADDR_PARENT, "x@192.0.2.9", val, sizeof val, err, sizeof err), 0);
		map_free(m);
	}
}

TEST(sqlite_map)
{
	char db[128], cf[128], cmd[512];
	snprintf(db, sizeof db, "%s/t.sqlite", tmpdir);
	snprintf(cf, sizeof cf, "%s/t.cf", tmpdir);
	snprintf(cmd, sizeof cmd,
		 "sqlite3 %s \"CREATE TABLE map (key TEXT, value TEXT);"
		 "INSERT INTO map VALUES ('a@example.com', 'OK'), ('example.org', 'REJECT go');\"",
		 db);
	if (system(cmd) != 0) {
		fprintf(stderr, "sqlite3 not available; skipped\n");
		return;
	}
	char spec[160];
	snprintf(spec, sizeof spec, "sqlite:%s", db);
	struct map *m = map_open(spec, err, sizeof err);
	CHECK(m != NULL);
	if (m) {
		CHECK(map_is_async(m));
		CHECK_STR(q(m, MAP_ADDR, "a@example.com"), "OK");
		CHECK_STR(q(m, MAP_ADDR, "b@example.org"), "REJECT go");
		CHECK_STR(q(m, MAP_ADDR, "x' OR '1'='1"), "(none)");
		map_free(m);
	}
	FILE *f = fopen(cf, "w");
	fprintf(f, "dbpath = %s\nquery = SELECT value FROM map WHERE key = '%%u@%%d'\n", db);
	fclose(f);
	snprintf(spec, sizeof spec, "sqlite:%s", cf);
	CHECK(map_open(spec, err, sizeof err) == NULL);   /* two params, one placeholder: bad SQL */
	f = fopen(cf, "w");
	fprintf(f, "dbpath = %s\nquery = SELECT value FROM map WHERE key = %%s\nbogus = 1\n", db);
	fclose(f);
	CHECK(map_open(spec, err, sizeof err) == NULL);
	CHECK(strstr(err, "t.cf:3: bogus") != NULL);
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
	RUN(lookup_orders);
	RUN(reload_keeps_old_on_error);
	RUN(sqlite_map);
	RUN(regexp_table);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	return t_done();
}
