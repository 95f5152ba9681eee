/*
 * test_conf.c - conf.c: every value type with its bounds, file syntax
 * (comments, continuation lines), $name expansion, -o overrides, error
 * messages naming FILE:LINE, dumps that read back, and the reference-counted
 * snapshot under concurrent readers.
 */
#include "conf.h"
#include "t.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static char tmpdir[64];
static char err[512];

/* write_conf - write text to a fresh file in tmpdir; returns its path. */
static const char *write_conf(const char *text)
{
	static char path[128];
	static int seq;

	snprintf(path, sizeof path, "%s/c%d.conf", tmpdir, ++seq);
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

/* load_text - conf_load of a file holding text. */
static struct conf *load_text(const char *text)
{
	return conf_load(write_conf(text), 0, NULL, 0, err, sizeof err);
}

/* load_o - conf_load of defaults plus one override. */
static struct conf *load_o(const char *o)
{
	char *ov[1] = { (char *)o };
	return conf_load(NULL, 0, ov, 1, err, sizeof err);
}

/* dump_str - conf_dump into a malloc'd string. */
static char *dump_str(const struct conf *c, int defaults_too)
{
	char *s = NULL;
	size_t n = 0;
	FILE *f = open_memstream(&s, &n);
	conf_dump(f, c, defaults_too);
	fclose(f);
	return s;
}

/* err_has - the last error contains s (prints it otherwise). */
static int err_has(const char *s)
{
	if (strstr(err, s))
		return 1;
	fprintf(stderr, "error \"%s\" lacks \"%s\"\n", err, s);
	return 0;
}

TEST(defaults)
{
	char host[256] = "";
	gethostname(host, sizeof host);
	struct conf *c = conf_load(NULL, 0, NULL, 0, err, sizeof err);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK_STR(c->path, "");
	CHECK_INT(c->smtpd_timeout, 300000);
	CHECK_INT(c->message_size_limit, 25LL * 1024 * 1024);
	CHECK_INT(c->body_spool_limit, 1024LL * 1024 * 1024);
	CHECK_INT(c->max_sessions, 512);
	CHECK_INT(c->smtpd_listen.n, 2);
	CHECK_STR(c->smtpd_listen.v[0], "0.0.0.0:25");
	CHECK_STR(c->smtpd_listen.v[1], "[::]:25");
	CHECK(c->smtpd_listen.v[2] == NULL);
	CHECK_INT(c->relay_domains.n, 0);
	CHECK(c->relay_domains.v != NULL && c->relay_domains.v[0] == NULL);
	CHECK_STR(c->transport_maps, "");
	CHECK_STR(c->myhostname, host);
	char banner[300];
	snprintf(banner, sizeof banner, "%s ESMTP", host);
	CHECK_STR(c->smtpd_banner, banner);
	CHECK_STR(c->smtpd_forbid_bare_newline, "normalize");
	CHECK_STR(c->log_to, "syslog");
	/* Defaults differ from nothing: -n prints nothing. */
	char *d = dump_str(c, 0);
	CHECK_STR(d, "");
	free(d);
	conf_release(c);
}

TEST(bool_values)
{
	/* No BOOL parameter is in the table yet: test the syntax directly. */
	static const struct { const char *s; int v; } ok[] = {
		{ "yes", 1 }, { "YES", 1 }, { "true", 1 }, { "1", 1 },
		{ "no", 0 },  { "No", 0 },  { "false", 0 }, { "0", 0 },
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		int v = -1;
		CHECK_INT(conf_parse_bool(ok[i].s, &v), 0);
		CHECK_INT(v, ok[i].v);
	}
	int v;
	CHECK_INT(conf_parse_bool("maybe", &v), -1);
	CHECK_INT(conf_parse_bool("", &v), -1);
	CHECK_INT(conf_parse_bool("yess", &v), -1);
	long long n;
	CHECK(conf_parse_time("2w", &n) == 0 && n == 2 * 604800000LL);
	CHECK(conf_parse_time("-1s", &n) == -1);
	CHECK(conf_parse_time("1 s", &n) == -1);
	CHECK(conf_parse_size("25M", &n) == 0 && n == 25LL << 20);
	CHECK(conf_parse_size("1kb", &n) == -1);
	/* Too large to hold: -2 (perimd -t then names the maximum), however
	 * it overflows; a bad suffix stays -1. */
	CHECK(conf_parse_size("99999999999g", &n) == -2);
	CHECK(conf_parse_size("99999999999999999999", &n) == -2);
	CHECK(conf_parse_time("99999999999999999999s", &n) == -2);
	CHECK(conf_parse_time("9999999999999w", &n) == -2);
	CHECK(conf_parse_time("99999999999999999999x", &n) == -1);
	CHECK(conf_parse_time("1.5m", &n) == -1);

	const char *const *names = conf_param_names();
	int k = 0;
	while (names[k])
		k++;
	CHECK(k > 20);
	CHECK_STR(names[0], "smtpd_listen");
}

TEST(int_values)
{
	struct conf *c = load_o("max_sessions=2000");
	CHECK(c && c->max_sessions == 2000);
	conf_release(c);
	CHECK(load_o("max_sessions=0") == NULL);
	CHECK(err_has("-o max_sessions=0: 0 is below the minimum 1"));
	CHECK(load_o("max_sessions=1000001") == NULL);
	CHECK(err_has("above the maximum 1000000"));
	CHECK(load_o("max_sessions=12x") == NULL);
	CHECK(err_has("\"12x\" is not a whole number"));
	CHECK(load_o("max_sessions=") == NULL);
	CHECK(load_o("max_sessions=-5") == NULL);
	CHECK(err_has("-5 is below the minimum 1"));
	CHECK(load_o("max_sessions=99999999999999999999999") == NULL);
	c = load_o("io_threads=0");
	CHECK(c && c->io_threads == 0);
	conf_release(c);
}

TEST(time_values)
{
	static const struct { const char *o; long long ms; } ok[] = {
		{ "smtpd_timeout=300", 300000 }, { "smtpd_timeout=300s", 300000 },
		{ "smtpd_timeout=5m", 300000 },  { "smtpd_timeout=2h", 7200000 },
		{ "smtpd_timeout=1d", 86400000 }, { "relay_verify_negative_ttl=1w", 604800000 },
		{ "relay_verify_negative_ttl=2d", 172800000 },
		{ "relay_connect_timeout=100ms", 100 }, { "smtpd_timeout=5M", 300000 },
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		struct conf *c = load_o(ok[i].o);
		CHECK(c != NULL);
		if (!c)
			continue;
		long long v = strstr(ok[i].o, "negative") ? c->relay_verify_negative_ttl
			    : strstr(ok[i].o, "connect") ? c->relay_connect_timeout
							 : c->smtpd_timeout;
		CHECK_INT(v, ok[i].ms);
		conf_release(c);
	}
	CHECK(load_o("smtpd_timeout=5y") == NULL);
	CHECK(err_has("-o smtpd_timeout=5y: \"5y\" is not a time"));
	CHECK(load_o("smtpd_timeout=s") == NULL);
	CHECK(load_o("smtpd_timeout=0") == NULL);
	CHECK(err_has("0s is below the minimum 1s"));
	CHECK(load_o("smtpd_timeout=2d") == NULL);
	CHECK(err_has("2d is above the maximum 1d"));
	CHECK(load_o("relay_connect_timeout=50ms") == NULL);
	CHECK(err_has("50ms is below the minimum 100ms"));
	CHECK(load_o("relay_verify_negative_ttl=99999999999999999w") == NULL);
}

TEST(size_values)
{
	struct conf *c = load_o("message_size_limit=10k");
	CHECK(c && c->message_size_limit == 10240);
	conf_release(c);
	c = load_o("message_size_limit=1g");
	CHECK(c && c->message_size_limit == 1024LL * 1024 * 1024);
	conf_release(c);
	c = load_o("message_size_limit=2048");
	CHECK(c && c->message_size_limit == 2048);
	conf_release(c);
	c = load_o("body_memory_limit=0");
	CHECK(c && c->body_memory_limit == 0);
	conf_release(c);
	c = load_o("body_spool_limit=100g");
	CHECK(c && c->body_spool_limit == 100LL << 30);
	conf_release(c);
	CHECK(load_o("message_size_limit=1000") == NULL);
	CHECK(err_has("1000 is below the minimum 1k"));
	CHECK(load_o("message_size_limit=5g") == NULL);
	CHECK(err_has("5g is above the maximum"));
	CHECK(load_o("message_size_limit=5t") == NULL);
	CHECK(err_has("\"5t\" is not a size"));
}

TEST(enum_values)
{
	struct conf *c = load_o("smtpd_forbid_bare_newline=REJECT");
	CHECK(c && strcmp(c->smtpd_forbid_bare_newline, "reject") == 0);
	conf_release(c);
	c = load_o("log_to=stderr");
	CHECK(c && strcmp(c->log_to, "stderr") == 0);
	conf_release(c);
	CHECK(load_o("log_to=file") == NULL);
	CHECK(err_has("-o log_to=file: \"file\" is not one of syslog|stderr"));
}

TEST(list_and_map_values)
{
	struct conf *c = load_o("relay_backends=[10.1.1.5]:25, [10.1.1.6]:25 host,,x");
	CHECK(c != NULL);
	if (c) {
		CHECK_INT(c->relay_backends.n, 4);
		CHECK_STR(c->relay_backends.v[0], "[10.1.1.5]:25");
		CHECK_STR(c->relay_backends.v[1], "[10.1.1.6]:25");
		CHECK_STR(c->relay_backends.v[2], "host");
		CHECK_STR(c->relay_backends.v[3], "x");
		CHECK(c->relay_backends.v[4] == NULL);
		CHECK(conf_list_has(&c->relay_backends, "HOST"));
		CHECK(!conf_list_has(&c->relay_backends, "hos"));
		conf_release(c);
	}
	c = load_o("relay_domains=Example.com, .sub.example.org file:/etc/perimd/domains");
	CHECK(c && c->relay_domains.n == 3);
	CHECK(c && conf_list_has(&c->relay_domains, "example.COM"));
	CHECK(c && strcmp(c->relay_domains.v[2], "file:/etc/perimd/domains") == 0);
	conf_release(c);
	CHECK(load_o("relay_domains=user@example.com") == NULL);
	CHECK(err_has("\"user@example.com\" is neither a domain nor a map"));
	CHECK(load_o("relay_domains=example.com, File:x") == NULL);
	c = load_o("transport_maps=file:/etc/perimd/transport");
	CHECK(c && strcmp(c->transport_maps, "file:/etc/perimd/transport") == 0);
	conf_release(c);
	CHECK(load_o("transport_maps=/etc/perimd/transport") == NULL);
	CHECK(err_has("is not a map (type:path)"));
	CHECK(load_o("transport_maps=file:") == NULL);
}

TEST(file_syntax)
{
	struct conf *c = load_text(
		"# perimd.conf\n"
		"\n"
		"smtpd_banner = hello\n"
		"   world   # part of the value\n"
		"  # an indented comment does not end the logical line\n"
		"\tagain\n"
		"relay_domains = a.example,\n"
		"\tb.example\r\n"
		"  c.example\n"
		"max_sessions=7\n"
		"max_sessions = 8\n"
		"   \t\n"
		"log_to = stderr");
	CHECK(c != NULL);
	if (!c) {
		fprintf(stderr, "%s\n", err);
		return;
	}
	CHECK_STR(c->smtpd_banner, "hello world   # part of the value again");
	CHECK_INT(c->relay_domains.n, 3);
	CHECK_STR(c->relay_domains.v[2], "c.example");
	CHECK_INT(c->max_sessions, 8); /* the last setting wins, as in main.cf */
	CHECK_STR(c->log_to, "stderr");
	CHECK(strstr(c->path, tmpdir) == c->path);
	conf_release(c);
}

TEST(file_errors)
{
	const char *p = write_conf("# x\nmax_sessions = 5\n\nbogus_name = 1\n");
	CHECK(conf_load(p, 0, NULL, 0, err, sizeof err) == NULL);
	char want[256];
	snprintf(want, sizeof want, "%s:4: unknown parameter bogus_name", p);
	CHECK_STR(err, want);

	p = write_conf("max_sessions = 5\nsmtpd_timeout =\n  10x\n");
	CHECK(conf_load(p, 0, NULL, 0, err, sizeof err) == NULL);
	snprintf(want, sizeof want, "%s:2: smtpd_timeout: \"10x\" is not a time", p);
	CHECK(err_has(want));

	p = write_conf("  max_sessions = 5\n");
	CHECK(conf_load(p, 0, NULL, 0, err, sizeof err) == NULL);
	snprintf(want, sizeof want, "%s:1: continuation line", p);
	CHECK(err_has(want));

	p = write_conf("max_sessions 5\n");
	CHECK(conf_load(p, 0, NULL, 0, err, sizeof err) == NULL);
	CHECK(err_has(":1: syntax error"));

	p = write_conf("max sessions = 5\n");
	CHECK(conf_load(p, 0, NULL, 0, err, sizeof err) == NULL);
	CHECK(err_has(":1: bad parameter name \"max sessions\""));

	CHECK(conf_load("/nonexistent/perimd.conf", 0, NULL, 0, err, sizeof err) == NULL);
	CHECK(err_has("/nonexistent/perimd.conf: cannot open: No such file"));
	struct conf *c = conf_load("/nonexistent/perimd.conf", 1, NULL, 0, err, sizeof err);
	CHECK(c && strcmp(c->path, "") == 0 && c->max_sessions == 512);
	conf_release(c);
}

TEST(expansion)
{
	struct conf *c = load_text("smtpd_banner = $myhostname ESMTP\n"
				   "myhostname = mx.example.com\n"
				   "data_directory = /srv/perimd\n"
				   "body_spool_directory = ${data_directory}/spool\n"
				   "mail_owner = $$user\n");
	CHECK(c != NULL);
	if (c) {
		CHECK_STR(c->smtpd_banner, "mx.example.com ESMTP");
		CHECK_STR(c->body_spool_directory, "/srv/perimd/spool");
		CHECK_STR(c->mail_owner, "$user");
		conf_release(c);
	}
	/* The default banner follows an overridden myhostname. */
	c = load_o("myhostname=o.example");
	CHECK(c && strcmp(c->smtpd_banner, "o.example ESMTP") == 0);
	conf_release(c);
	/* Numbers expand too, then parse. */
	c = load_text("smtpd_hard_error_limit = 30\nsmtpd_soft_error_limit = $smtpd_hard_error_limit\n");
	CHECK(c && c->smtpd_soft_error_limit == 30);
	conf_release(c);

	const char *p = write_conf("max_sessions = 5\nsmtpd_banner = $nope ESMTP\n");
	CHECK(conf_load(p, 0, NULL, 0, err, sizeof err) == NULL);
	char want[256];
	snprintf(want, sizeof want, "%s:2: smtpd_banner: unknown parameter $nope", p);
	CHECK_STR(err, want);
	CHECK(load_o("smtpd_banner=${myhostname") == NULL);
	CHECK(err_has("-o smtpd_banner=${myhostname: \"${\" without \"}\""));
	CHECK(load_o("smtpd_banner=cost $ 5") == NULL);
	CHECK(err_has("'$' must be followed by"));
	CHECK(load_o("myhostname=$smtpd_banner") == NULL);
	CHECK(err_has("refers back to itself"));
}

TEST(overrides)
{
	const char *p = write_conf("max_sessions = 5\nmyhostname = file.example\n");
	char *ov[] = { "max_sessions=9", " myhostname = o.example ", "smtpd_listen=127.0.0.1:2525" };
	struct conf *c = conf_load(p, 0, ov, 3, err, sizeof err);
	CHECK(c != NULL);
	if (c) {
		CHECK_INT(c->max_sessions, 9);
		CHECK_STR(c->myhostname, "o.example");
		CHECK_STR(c->smtpd_banner, "o.example ESMTP");
		CHECK_INT(c->smtpd_listen.n, 1);
		conf_release(c);
	}
	CHECK(load_o("nope=1") == NULL);
	CHECK_STR(err, "-o nope=1: unknown parameter nope");
	CHECK(load_o("max_sessions") == NULL);
	CHECK_STR(err, "-o max_sessions: expected NAME=VALUE");
	CHECK(load_o("smtpd_banner=a\nb") == NULL);
	CHECK(load_o("max_sessions=lots") == NULL);
	CHECK_STR(err, "-o max_sessions=lots: \"lots\" is not a whole number");
}

/* roundtrip - dump c, read it back, dump again: the same text. */
static void roundtrip(struct conf *c, int defaults_too)
{
	char *a = dump_str(c, defaults_too);
	const char *p = write_conf(a);
	struct conf *c2 = conf_load(p, 0, NULL, 0, err, sizeof err);
	CHECK(c2 != NULL);
	if (!c2) {
		fprintf(stderr, "%s\n---\n%s---\n", err, a);
		free(a);
		return;
	}
	char *b = dump_str(c2, defaults_too);
	CHECK_STR(a, b);
	free(a);
	free(b);
	conf_release(c2);
}

TEST(dump_roundtrip)
{
	struct conf *c = load_text(
		"myhostname = mx.example.com\n"
		"smtpd_banner = $myhostname ESMTP  ready, willing # and able\n"
		"mail_owner = odd$$name\n"
		"smtpd_listen = 127.0.0.1:10025 [::1]:10025\n"
		"relay_domains = example.com,\n .example.org, file:/etc/perimd/relay domains\n"
		"relay_backends = [127.0.0.1]:10026\n"
		"smtpd_timeout = 600\n"
		"shutdown_timeout = 30\n"           /* = the default 30s: not printed */
		"relay_connect_timeout = 1500ms\n"
		"message_size_limit = 10240k\n"
		"body_memory_limit = 1024k\n"       /* = the default 1m: not printed */
		"body_spool_limit = 100000\n"
		"smtpd_forbid_bare_newline = reject\n"
		"data_directory = /srv/perimd\n"
		"body_spool_directory = ${data_directory}/spool\n"
		"transport_maps = file:$data_directory/transport\n");
	CHECK(c != NULL);
	if (!c) {
		fprintf(stderr, "%s\n", err);
		return;
	}
	/* -n: what was written, before expansion; lists as written too (a
	 * continuation line joined with one space), since "$relay_domains"
	 * elsewhere expands to that text. */
	char *n = dump_str(c, 0);
	CHECK(strstr(n, "myhostname = mx.example.com\n"));
	CHECK(strstr(n, "smtpd_banner = $myhostname ESMTP  ready, willing # and able\n"));
	CHECK(strstr(n, "mail_owner = odd$$name\n"));
	CHECK(strstr(n, "smtpd_listen = 127.0.0.1:10025 [::1]:10025\n"));
	CHECK(strstr(n, "relay_domains = example.com, .example.org, file:/etc/perimd/relay domains\n"));
	CHECK(strstr(n, "smtpd_timeout = 600\n"));
	CHECK(strstr(n, "relay_connect_timeout = 1500ms\n"));
	CHECK(strstr(n, "message_size_limit = 10240k\n"));
	CHECK(strstr(n, "body_spool_limit = 100000\n"));
	CHECK(strstr(n, "body_spool_directory = ${data_directory}/spool\n"));
	CHECK(strstr(n, "transport_maps = file:$data_directory/transport\n"));
	CHECK(!strstr(n, "max_sessions"));
	CHECK(!strstr(n, "shutdown_timeout"));
	CHECK(!strstr(n, "body_memory_limit"));
	free(n);
	roundtrip(c, 0);
	roundtrip(c, 1);
	conf_release(c);

	/* Setting a parameter to its default text, or myhostname's expansion
	 * alone, changes nothing -n shows. */
	c = load_text("smtpd_banner = $myhostname ESMTP\nsmtpd_listen = 0.0.0.0:25 [::]:25\n"
		      "smtpd_timeout = 5m\n");
	n = c ? dump_str(c, 0) : NULL;
	CHECK_STR(n, "");
	free(n);
	conf_release(c);

	/* -d: every parameter once, with the table's text, and it reads back. */
	c = conf_load(NULL, 0, NULL, 0, err, sizeof err);
	char *d = dump_str(c, 1);
	const char *const *names = conf_param_names();
	int lines = 0;
	for (const char *q = d; (q = strchr(q, '\n')); q++)
		lines++;
	int k = 0;
	for (; names[k]; k++) {
		char line[128];
		snprintf(line, sizeof line, "\n%s =", names[k]);
		CHECK(strncmp(d, line + 1, strlen(line + 1)) == 0 || strstr(d, line));
	}
	CHECK_INT(lines, k);
	CHECK(strstr(d, "\nsmtpd_timeout = 300s\n"));
	CHECK(strstr(d, "\nmyhostname =\n"));
	CHECK(strstr(d, "\nsmtpd_banner = $myhostname ESMTP\n"));
	CHECK(strstr(d, "smtpd_listen = 0.0.0.0:25, [::]:25\n"));
	CHECK(strstr(d, "\nrelay_domains =\n"));
	free(d);
	roundtrip(c, 1);
	conf_release(c);
}

/* A conf built by hand (no raw text) dumps its expanded values. */
TEST(dump_without_raw)
{
	struct conf *c = load_o("smtpd_timeout=600");
	CHECK(c != NULL);
	if (!c)
		return;
	char **raw = c->raw;
	c->raw = NULL;
	char *n = dump_str(c, 0);
	CHECK(strstr(n, "smtpd_timeout = 10m\n"));
	CHECK(strstr(n, "smtpd_banner = ")); /* expanded: differs from "$myhostname ESMTP" */
	CHECK(!strstr(n, "max_sessions"));
	free(n);
	c->raw = raw;
	conf_release(c);
}

static volatile int stop_readers;

/* reader - acquire and release the current conf in a loop, reading it. */
static void *reader(void *arg)
{
	long long *sum = arg;
	while (!__atomic_load_n(&stop_readers, __ATOMIC_RELAXED)) {
		struct conf *c = conf_acquire();
		if (c) {
			*sum += c->max_sessions + (long long)strlen(c->smtpd_banner);
			conf_release(c);
		}
	}
	return NULL;
}

TEST(snapshot_refcount)
{
	struct conf *a = load_o("max_sessions=1"), *b = load_o("max_sessions=2");
	CHECK(a && b);
	if (!a || !b)
		return;
	conf_install(a);
	struct conf *held = conf_acquire();
	CHECK(held == a);
	conf_install(b);
	/* The old snapshot stays valid while held. */
	CHECK_INT(held->max_sessions, 1);
	conf_release(held);
	held = conf_acquire();
	CHECK(held == b);
	conf_release(held);

	pthread_t th[4];
	long long sums[4] = { 0 };
	for (int i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, reader, &sums[i]);
	for (int i = 0; i < 2000; i++) {
		char o[32];
		snprintf(o, sizeof o, "max_sessions=%d", i + 1);
		struct conf *c = load_o(o);
		CHECK(c != NULL);
		conf_install(c);
	}
	__atomic_store_n(&stop_readers, 1, __ATOMIC_RELAXED);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	held = conf_acquire();
	CHECK(held && held->max_sessions == 2000);
	conf_release(held);
	conf_install(NULL);
	CHECK(conf_acquire() == NULL);
}

/* brace_groups - a list item "{ ... }" is one item, braces and all;
 * an unclosed '{' or one glued to text is split as text. */
TEST(brace_groups)
{
	struct conf_list l = conf_list_split("{ inet:h:1, a=b } , unix:/x {daemon_name} j");
	CHECK_INT(l.n, 4);
	if (l.n == 4) {
		CHECK_STR(l.v[0], "{ inet:h:1, a=b }");
		CHECK_STR(l.v[1], "unix:/x");
		CHECK_STR(l.v[2], "{daemon_name}");
		CHECK_STR(l.v[3], "j");
	}
	struct conf_list in;
	CHECK_INT(conf_brace_items(l.v[0], &in), 0);
	CHECK_INT(in.n, 2);
	if (in.n == 2)
		CHECK_STR(in.v[1], "a=b");
	conf_list_free(&in);
	CHECK_INT(conf_brace_items(l.v[1], &in), -1);
	conf_list_free(&l);
	l = conf_list_split("{ a, b {a}x, }y z");
	CHECK_INT(l.n, 6);
	if (l.n == 6) {
		CHECK_STR(l.v[0], "{");
		CHECK_STR(l.v[3], "{a}x");
		CHECK_STR(l.v[4], "}y");
	}
	conf_list_free(&l);
}

int main(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/test_conf.XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	RUN(defaults);
	RUN(bool_values);
	RUN(int_values);
	RUN(time_values);
	RUN(size_values);
	RUN(enum_values);
	RUN(list_and_map_values);
	RUN(file_syntax);
	RUN(file_errors);
	RUN(expansion);
	RUN(overrides);
	RUN(dump_roundtrip);
	RUN(dump_without_raw);
	RUN(snapshot_refcount);
	RUN(brace_groups);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmpdir);
	return t_done();
}
