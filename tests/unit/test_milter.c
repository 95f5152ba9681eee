/*
 * test_milter.c - the milter wire parser and the reply-code check
 * (milter_pkt_parse, milter_reply_text): what a milter may answer, what
 * perimd makes of it, what it refuses.
 */
#include "conf.h"
#include "conf_enum.h"
#include "milter.h"
#include "milter_int.h"
#include "t.h"

#include <sys/un.h>

#include <stdint.h>
#include <string.h>

/* parse - a packet payload given as a literal (its NULs kept). */
#define parse(lit, pk) milter_pkt_parse(lit, sizeof(lit) - 1, pk)

TEST(verdicts_and_optneg)
{
	struct milter_pkt pk;
	CHECK(parse("a", &pk) == 0 && pk.cmd == 'a');
	CHECK(parse("c", &pk) == 0 && pk.cmd == 'c');
	CHECK(parse("O\0\0\0\6\0\0\0\x21\0\0\x03\x42", &pk) == 0);
	CHECK_INT(pk.idx, 6);
	CHECK_INT(pk.actions, 0x21);
	CHECK_INT(pk.pflags, 0x342);
	CHECK(parse("O\0\0\0\6\0\0", &pk) < 0); /* short */
	CHECK(parse("Z", &pk) < 0);             /* unknown reply */
	CHECK(milter_pkt_parse("", 0, &pk) < 0);
}

TEST(changes)
{
	struct milter_pkt pk;
	CHECK(parse("hX-A\0v\0", &pk) == 0);
	CHECK_STR(pk.s1, "X-A");
	CHECK_STR(pk.s2, "v");
	CHECK(parse("h\0v\0", &pk) < 0);  /* no name */
	/* a name that is no field name would write other header lines */
	CHECK(parse("hX-A: x\r\nBcc\0v\0", &pk) < 0);
	CHECK(parse("hX A\0v\0", &pk) < 0);
	CHECK(parse("m\0\0\0\1Sub:ject\0v\0", &pk) < 0);
	CHECK(parse("i\0\0\0\1X-\xc3\xa9\0v\0", &pk) < 0);
	CHECK(parse("hX-A\0v", &pk) < 0); /* value not terminated */
	CHECK(parse("m\0\0\0\2Subject\0\0", &pk) == 0);
	CHECK_INT(pk.idx, 2);
	CHECK_STR(pk.s1, "Subject");
	CHECK_STR(pk.s2, ""); /* empty: delete */
	CHECK(parse("i\0\0\0", &pk) < 0);
	CHECK(parse("+<a@b>\0", &pk) == 0);
	CHECK_STR(pk.s1, "<a@b>");
	CHECK(parse("2<a@b>\0NOTIFY=NEVER\0", &pk) == 0);
	CHECK_STR(pk.s2, "NOTIFY=NEVER");
	CHECK(parse("e<s@t>\0", &pk) == 0 && pk.s2 == NULL);
	CHECK(parse("e<s@t>\0x", &pk) < 0);
	CHECK(parse("bbody\r\n", &pk) == 0);
	CHECK_INT(pk.datalen, 6);
}

TEST(reply_codes)
{
	char out[1024];
	CHECK_INT(milter_reply_text("550 5.7.1 no", out, sizeof out), 5);
	CHECK_STR(out, "550 5.7.1 no");
	CHECK_INT(milter_reply_text("451 later", out, sizeof out), 4);
	CHECK_STR(out, "451 4.7.1 later"); /* an enhanced code of its class added */
	CHECK_INT(milter_reply_text("550-5.7.1 a\r\n550 b", out, sizeof out), 5);
	CHECK_STR(out, "550-5.7.1 a\r\n550 5.7.1 b");
	CHECK_INT(milter_reply_text("554 4.7.1 wrong class", out, sizeof out), 5);
	CHECK_STR(out, "554 5.7.1 4.7.1 wrong class");
	CHECK_INT(milter_reply_text("550 5.7.1", out, sizeof out), 5);
	CHECK_STR(out, "550 5.7.1");
	CHECK(milter_reply_text("250 ok", out, sizeof out) < 0);         /* not 4xx/5xx */
	CHECK(milter_reply_text("550-a\r\n551 b", out, sizeof out) < 0); /* two codes */
	CHECK(milter_reply_text("55x no", out, sizeof out) < 0);
	CHECK(milter_reply_text("550Xno", out, sizeof out) < 0);
	CHECK(milter_reply_text("550 a\x01", out, sizeof out) < 0); /* control character */
	CHECK(milter_reply_text("", out, sizeof out) < 0);
}

/* LINE60 - 60 bytes of a reply line's text. */
#define LINE60 "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

/* long_reply - 30 lines "550-5.7.1 line NN x..." then last. */
static void long_reply(char *in, size_t len, const char *last)
{
	size_t n = 0;
	for (int i = 0; i < 30; i++)
		n += (size_t)snprintf(in + n, len - n, "550-5.7.1 line %02d %s\r\n", i, LINE60);
	snprintf(in + n, len - n, "%s", last);
}

/* A reply longer than its room keeps the lines that fit: the verdict and
 * its code stand (a reject is not turned into the default action). */
TEST(reply_codes_too_long)
{
	char in[4096], out[1024];
	long_reply(in, sizeof in, "550 5.7.1 the end");
	CHECK_INT(milter_reply_text(in, out, sizeof out), 5);
	size_t ol = strlen(out);
	CHECK(ol < sizeof out && ol > 900);
	CHECK(strstr(out, "550-5.7.1 line 00 ") == out);
	const char *lastl = strrchr(out, '\n');
	CHECK(lastl && !strncmp(lastl + 1, "550 5.7.1 line ", 15)); /* the last line kept ends it */
	CHECK(out[ol - 1] == 'x');
	/* one line alone too long: cut short */
	memset(in, 'y', 3000);
	memcpy(in, "451 ", 4);
	in[3000] = 0;
	CHECK_INT(milter_reply_text(in, out, sizeof out), 4);
	CHECK_INT(strlen(out), sizeof out - 1);
	CHECK(!strncmp(out, "451 4.7.1 yyy", 13));
	/* a bad line past the room is still a bad reply */
	long_reply(in, sizeof in, "450 other code");
	CHECK(milter_reply_text(in, out, sizeof out) < 0);
}

/* spec - parse item over the defaults (30s, 30s, 300s, tempfail, 6). */
static int spec(const char *item, struct milter_spec *sp, char *err, size_t errlen)
{
	*sp = (struct milter_spec){ .connect_timeout = 30000, .command_timeout = 30000,
				    .content_timeout = 300000, .default_action = MILTER_DEFAULT_TEMPFAIL,
				    .protocol = 6 };
	err[0] = 0;
	return milter_spec_parse(item, sp, err, errlen);
}

/* per_milter_settings - Postfix 3.0's { } items: each setting over the
 * defaults, blanks around '=' allowed; bad ones named. */
TEST(per_milter_settings)
{
	struct milter_spec sp;
	char err[512];
	CHECK_INT(spec("inet:127.0.0.1:8891", &sp, err, sizeof err), 0);
	CHECK_STR(sp.addr, "inet:127.0.0.1:8891");
	CHECK_INT(sp.command_timeout, 30000);
	CHECK_INT(spec("{ inet:127.0.0.1:8891, connect_timeout=10s, command_timeout=2s, content_timeout=100s, "
		       "default_action=accept, protocol=4 }",
		       &sp, err, sizeof err),
		  0);
	CHECK_STR(sp.addr, "inet:127.0.0.1:8891");
	CHECK_INT(sp.connect_timeout, 10000);
	CHECK_INT(sp.command_timeout, 2000);
	CHECK_INT(sp.content_timeout, 100000);
	CHECK_INT(sp.default_action, MILTER_DEFAULT_ACCEPT);
	CHECK_INT(sp.protocol, 4);
	CHECK_INT(spec("{unix:/run/m.sock default_action = reject}", &sp, err, sizeof err), 0);
	CHECK_STR(sp.addr, "unix:/run/m.sock");
	CHECK_INT(sp.default_action, MILTER_DEFAULT_REJECT);
	CHECK_INT(sp.command_timeout, 30000);
	static const char *const bad[][2] = {
		{ "{ inet:h:1, default_action=quarantine }", "quarantine is refused" },
		{ "{ inet:h:1, foo=1 }", "foo: unknown setting" },
		{ "{ inet:h:1, command_timeout=abc }", "command_timeout=abc: not a time" },
		{ "{ inet:h:1, command_timeout=50ms }", "below the minimum" },
		{ "{ inet:h:1, content_timeout=1h }", "above the maximum" },
		{ "{ inet:h:1, protocol=7 }", "protocol=7: not a protocol version" },
		{ "{ inet:h:1, command_timeout }", "expected name=value" },
		{ "{ inet:h:1", "\"{\" without \"}\"" },
		{ "{ }", "names no milter" },
		{ "{ inet:h, protocol=6 }", "\"inet:h\" is not inet:HOST:PORT" },
		{ "foo", "\"foo\" is not inet:HOST:PORT" },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		CHECK_INT(spec(bad[i][0], &sp, err, sizeof err), -1);
		CHECK(strstr(err, bad[i][1]) != NULL);
		CHECK(!strncmp(err, "\"", 1) && strstr(err, bad[i][0]) != NULL); /* names the item */
	}
}

/* load - milter_set_load on a conf with smtpd_milters = list; the conf
 * itself released (the set keeps its own reference). */
static struct milter_set *load(const char *list, char *err, size_t errlen)
{
	char ov[1024], cerr[1024];
	snprintf(ov, sizeof ov, "smtpd_milters=%s", list);
	char *ovs[] = { ov, "milter_command_timeout=7s" };
	struct conf *c = conf_load(NULL, 0, ovs, 2, cerr, sizeof cerr);
	if (!c)
		return NULL;
	err[0] = 0;
	struct milter_set *ms = milter_set_load(c, err, errlen);
	conf_release(c);
	return ms;
}

/* set_once_per_conf - smtpd_milters parsed at load: each item's
 * settings over the parameters, the socket address of digits and of
 * unix: paths (a host name left to each connect); a bad item refused
 * with the item named; a transaction keeps the set after its loader
 * dropped it (ASan checks the frees). */
TEST(set_once_per_conf)
{
	char err[1024];
	struct milter_set *ms = load("inet:127.0.0.1:8891, { inet:[::1]:8892, command_timeout=2s }, "
				     "unix:/run/m.sock, inet:milter.example:8893",
				     err, sizeof err);
	CHECK(ms != NULL);
	if (!ms)
		return;
	CHECK_INT(ms->n, 4);
	CHECK_STR(ms->d[0].spec.addr, "inet:127.0.0.1:8891");
	CHECK_INT(ms->d[0].spec.command_timeout, 7000); /* the parameter */
	CHECK_INT(ms->d[0].ss.ss_family, AF_INET);
	CHECK(ms->d[0].sslen > 0);
	CHECK_INT(ms->d[1].spec.command_timeout, 2000); /* its own */
	CHECK_INT(ms->d[1].ss.ss_family, AF_INET6);
	CHECK_INT(ms->d[2].ss.ss_family, AF_UNIX);
	CHECK_STR(((struct sockaddr_un *)&ms->d[2].ss)->sun_path, "/run/m.sock");
	CHECK_INT(ms->d[3].sslen, 0); /* a name: looked up at each connect */
	struct milter_txn *mt = milter_txn_new(ms);
	milter_set_release(ms); /* the transaction's reference remains */
	CHECK_INT(mt->n, 4);
	CHECK_STR(mt->m[3].name, "inet:milter.example:8893");
	CHECK_INT(mt->m[1].fd, -1);
	CHECK_INT(mt->cf->milter_command_timeout, 7000); /* the set's conf lives on */
	milter_txn_free(mt, NULL);
	CHECK(load("inet:127.0.0.1:8891, { inet:127.0.0.1:9, foo=1 }", err, sizeof err) == NULL);
	CHECK(strstr(err, "smtpd_milters: \"{ inet:127.0.0.1:9, foo=1 }\": foo: unknown setting") != NULL);
	ms = load("", err, sizeof err);
	CHECK(ms != NULL && ms->n == 0);
	milter_set_release(ms);
}

int main(void)
{
	RUN(verdicts_and_optneg);
	RUN(changes);
	RUN(reply_codes);
	RUN(reply_codes_too_long);
	RUN(per_milter_settings);
	RUN(set_once_per_conf);
	return t_done();
}
