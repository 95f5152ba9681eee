/*
 * test_verify.c - the recipient verdict cache: which refusals are kept for
 * every sender (the mailbox allow-list) and which per (sender, recipient),
 * role accounts, the neutral reply texts, lifetimes on a fake clock against
 * the configured defaults (per-pair entries outlive Postfix's 4000 s
 * maximal_backoff_time), answered-once 4xx, callouts, keys (domains
 * case-insensitive, local parts not),
 * the size bound, and concurrent use from threads.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "t.h"
#include "verify.h"

static uint64_t fake_ms;
static uint64_t fake_clock(void) { return fake_ms; }
static char err[512];

/* defaults - the configuration perimd starts with when nothing is set. */
static struct conf *defaults(void)
{
	struct conf *c = conf_load(NULL, 0, NULL, 0, err, sizeof err);
	if (!c)
		fprintf(stderr, "conf_load: %s\n", err);
	return c;
}

/* with - defaults plus one override ("name=value"); NULL if refused. */
static struct conf *with(const char *o)
{
	char *ov[1] = { (char *)o };
	return conf_load(NULL, 0, ov, 1, err, sizeof err);
}

/* lookup - verify_lookup's verdict, its code and reply. */
static enum verify_verdict lookup(const char *sender, const char *rcpt, int role, int *code,
				  char *reply, size_t n)
{
	*code = 0;
	reply[0] = 0;
	return verify_lookup(sender, rcpt, role, code, reply, n);
}

/* test_enh - the enhanced code is taken only in RFC 3463's form and class. */
TEST(test_enh)
{
	static const struct { const char *reply, *enh; } cases[] = {
		{ "550 5.1.1 no such user", "5.1.1" },
		{ "550 5.1.10 null MX", "5.1.10" },
		{ "550-5.7.1 first line", "5.7.1" },
		{ "452 4.2.2", "4.2.2" },
		{ "250 2.1.5 ok", "2.1.5" },
		{ "550 4.1.1 wrong class", "" },
		{ "550 no enhanced code", "" },
		{ "550 5.1234.1 too many digits", "" },
		{ "550 5.1.1x glued", "" },
		{ "550 5.1 short", "" },
		{ "550 3.1.1 bad class", "" },
		{ "55", "" },
		{ "", "" },
	};
	char enh[16];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		verify_enh(cases[i].reply, enh, sizeof enh);
		CHECK_STR(enh, cases[i].enh);
	}
}

/* test_allow_list - only mailbox codes count; sender, policy, transaction
 * and greylisting codes never, nor a code of the wrong class or none. */
TEST(test_allow_list)
{
	const char *yes5[] = { "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10" };
	const char *no5[] = { "5.1.0", "5.1.7", "5.1.8", "5.7.1", "5.7.0", "5.7.27", "5.2.2",
			      "5.0.0", "5.1.11", "", "4.2.2" };
	const char *no4[] = { "4.5.3", "4.7.1", "4.7.0", "4.2.1", "4.1.1", "4.0.0", "", "5.1.1" };
	for (size_t i = 0; i < sizeof yes5 / sizeof *yes5; i++)
		CHECK_INT(verify_mailbox_code(550, yes5[i]), 1);
	for (size_t i = 0; i < sizeof no5 / sizeof *no5; i++)
		CHECK_INT(verify_mailbox_code(550, no5[i]), 0);
	CHECK_INT(verify_mailbox_code(452, "4.2.2"), 1);
	CHECK_INT(verify_mailbox_code(450, "4.2.2"), 1);
	for (size_t i = 0; i < sizeof no4 / sizeof *no4; i++)
		CHECK_INT(verify_mailbox_code(452, no4[i]), 0);
	CHECK_INT(verify_mailbox_code(550, NULL), 0);
}

/* test_mailbox_for_every_sender - a 5.1.1 learnt from one sender refuses
 * the recipient to others (any case), with perimd's text, never the
 * backend's; but not a role account, unless its own sender met it. */
TEST(test_mailbox_for_every_sender)
{
	struct conf *c = defaults();
	char reply[512];
	int code;

	CHECK(c != NULL);
	verify_init(1000);
	CHECK_INT(verify_learn("evil@attacker.test", "Gone@Example.com", 550,
			       "550 5.1.1 <gone@example.com>: unknown, sent by evil@attacker.test",
			       0, c), VERIFY_KEPT_RCPT);
	CHECK_INT(lookup("good@client.test", "Gone@example.COM", 0, &code, reply, sizeof reply),
		  VERIFY_REFUSED);
	CHECK_INT(code, 550);
	CHECK_STR(reply, "550 5.1.1 <Gone@example.COM>: recipient unknown");
	/* The local part is kept as written (RFC 5321 §2.4): a backend that
	 * refuses Gone@ may take gone@. */
	CHECK_INT(lookup("good@client.test", "gone@example.com", 0, &code, reply, sizeof reply),
		  VERIFY_NONE);
	CHECK(strstr(reply, "evil") == NULL);
	CHECK_INT(lookup("", "Gone@Example.com", 0, &code, reply, sizeof reply), VERIFY_REFUSED);
	/* Role accounts: refused only on the same sender's retry. */
	verify_learn("evil@attacker.test", "postmaster@example.com", 550, "550 5.1.1 unknown", 0, c);
	CHECK_INT(lookup("good@client.test", "postmaster@example.com", 1, &code, reply, sizeof reply),
		  VERIFY_NONE);
	CHECK_INT(lookup("evil@ATTACKER.test", "postmaster@example.com", 1, &code, reply,
			 sizeof reply), VERIFY_REFUSED);
	CHECK_STR(reply, "550 5.1.1 <postmaster@example.com>: recipient unknown");
	/* Each allow-listed code gets its own text; the backend's code is kept. */
	verify_learn("a@b.test", "moved@example.com", 551, "551 5.1.6 moved to x@y", 0, c);
	lookup("c@d.test", "moved@example.com", 0, &code, reply, sizeof reply);
	CHECK_STR(reply, "551 5.1.6 <moved@example.com>: recipient has moved, no forwarding address");
	verify_learn("a@b.test", "x@nullmx.test", 556, "556 5.1.10 null MX", 0, c);
	lookup("c@d.test", "x@nullmx.test", 0, &code, reply, sizeof reply);
	CHECK_STR(reply, "556 5.1.10 <x@nullmx.test>: recipient domain accepts no mail (null MX)");
	conf_release(c);
}

/* test_sender_refusals_per_pair - 5.7.1, 5.1.8, 5.1.0, 5.1.7 and replies
 * without an enhanced code are kept for the sender that met them only. */
TEST(test_sender_refusals_per_pair)
{
	static const char *replies[] = {
		"550 5.7.1 <evil@attacker.test>: Sender address rejected: Access denied",
		"550 5.1.8 <evil@attacker.test>: Sender address rejected: Domain not found",
		"550 5.1.0 <evil@attacker.test>: Sender address rejected",
		"550 5.1.7 bad sender mailbox syntax",
		"554 Service unavailable; Client host [192.0.2.9] blocked",
		"550 5.7.27 sender domain has null MX",
	};
	struct conf *c = defaults();
	char reply[512], rcpt[64];
	int code;

	verify_init(1000);
	for (size_t i = 0; i < sizeof replies / sizeof *replies; i++) {
		snprintf(rcpt, sizeof rcpt, "ceo%zu@example.com", i);
		CHECK_INT(verify_learn("evil@attacker.test", rcpt, 550,
				       replies[i], 0, c), VERIFY_KEPT_PAIR);
		CHECK_INT(lookup("good@client.test", rcpt, 0, &code, reply, sizeof reply), VERIFY_NONE);
		CHECK_INT(lookup("", rcpt, 0, &code, reply, sizeof reply), VERIFY_NONE);
		CHECK_INT(lookup("evil@attacker.test", rcpt, 0, &code, reply, sizeof reply),
			  VERIFY_REFUSED);
		CHECK(strstr(reply, "evil") == NULL && strstr(reply, "192.0.2") == NULL);
		CHECK(strstr(reply, "recipient refused by the backend") != NULL);
		/* Answered every time for its lifetime, not once. */
		CHECK_INT(lookup("evil@attacker.test", rcpt, 0, &code, reply, sizeof reply),
			  VERIFY_REFUSED);
	}
	lookup("evil@attacker.test", "ceo1@example.com", 0, &code, reply, sizeof reply);
	CHECK_STR(reply, "550 5.1.8 <ceo1@example.com>: recipient refused by the backend");
	/* No enhanced code: the class's X.0.0. */
	verify_learn("evil@attacker.test", "ceo9@example.com", 554, "554 blocked", 0, c);
	lookup("evil@attacker.test", "ceo9@example.com", 0, &code, reply, sizeof reply);
	CHECK_INT(code, 554);
	CHECK_STR(reply, "554 5.0.0 <ceo9@example.com>: recipient refused by the backend");
	conf_release(c);
}

/* test_lifetimes - on the fake clock, with the default configuration: a
 * per-pair refusal outlives 4000 s (Postfix's maximal_backoff_time) and
 * ends after relay_verify_pair_ttl; a mailbox code lasts
 * relay_verify_negative_ttl; a 4xx relay_verify_defer_ttl (> 4000 s). */
TEST(test_lifetimes)
{
	struct conf *c = defaults();
	char reply[512];
	int code;

	CHECK(c != NULL);
	CHECK(c->relay_verify_pair_ttl > 4000 * 1000LL);
	CHECK(c->relay_verify_defer_ttl > 4000 * 1000LL);
	verify_set_clock(fake_clock);
	fake_ms = 1000000;
	verify_init(1000);
	verify_learn("s@x.test", "p@example.com", 550, "550 5.7.1 policy", 0, c);
	verify_learn("s@x.test", "m@example.com", 550, "550 5.1.1 unknown", 0, c);
	verify_learn("s@x.test", "full@example.com", 452, "452 4.2.2 over quota", 0, c);
	fake_ms += 4001 * 1000;
	CHECK_INT(lookup("s@x.test", "p@example.com", 0, &code, reply, sizeof reply), VERIFY_REFUSED);
	CHECK_INT(lookup("o@x.test", "m@example.com", 0, &code, reply, sizeof reply), VERIFY_REFUSED);
	CHECK_INT(lookup("o@x.test", "full@example.com", 0, &code, reply, sizeof reply),
		  VERIFY_REFUSED);
	fake_ms = 1000000 + (uint64_t)c->relay_verify_defer_ttl;
	CHECK_INT(lookup("o@x.test", "full@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	fake_ms = 1000000 + (uint64_t)c->relay_verify_pair_ttl - 1;
	CHECK_INT(lookup("s@x.test", "p@example.com", 0, &code, reply, sizeof reply), VERIFY_REFUSED);
	fake_ms += 1;
	CHECK_INT(lookup("s@x.test", "p@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	fake_ms = 1000000 + (uint64_t)c->relay_verify_negative_ttl;
	CHECK_INT(lookup("o@x.test", "m@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	conf_release(c);
	/* A short negative TTL does not shorten the sender's own pair entry:
	 * its retry still meets the 5.1.1 (no 451 loop). */
	c = with("relay_verify_negative_ttl=10m");
	CHECK(c != NULL);
	fake_ms = 1000000;
	verify_learn("s@x.test", "m2@example.com", 550, "550 5.1.1 unknown", 0, c);
	fake_ms += 4001 * 1000;
	CHECK_INT(lookup("o@x.test", "m2@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	CHECK_INT(lookup("s@x.test", "m2@example.com", 0, &code, reply, sizeof reply), VERIFY_REFUSED);
	conf_release(c);
	verify_set_clock(NULL);
	/* The configuration refuses lifetimes a retry could outrun. */
	CHECK(with("relay_verify_pair_ttl=3600s") == NULL);
	CHECK(with("relay_verify_defer_ttl=4000s") == NULL);
	c = with("relay_verify_defer_ttl=4001s");
	CHECK(c != NULL);
	conf_release(c);
}

/* test_temporary - 4.2.2 is kept for every sender (not once); other 4xx
 * only when co-recipients were accepted, for the pair, answered once;
 * 421 never. */
TEST(test_temporary)
{
	struct conf *c = defaults();
	char reply[512];
	int code;

	verify_init(1000);
	CHECK_INT(verify_learn("s@x.test", "full@example.com", 452,
			       "452 4.2.2 <full@example.com>: quota of s@x.test's friend exceeded", 0, c),
		  VERIFY_KEPT_RCPT);
	for (int i = 0; i < 3; i++) {
		CHECK_INT(lookup("o@x.test", "full@example.com", 0, &code, reply, sizeof reply),
			  VERIFY_REFUSED);
		CHECK_STR(reply, "452 4.2.2 <full@example.com>: mailbox full, try again later");
	}
	/* Without co-recipients accepted, another 4xx reached the client whole. */
	CHECK_INT(verify_learn("s@x.test", "grey@example.com", 450, "450 4.7.1 greylisted", 0, c),
		  VERIFY_NOT_KEPT);
	CHECK_INT(lookup("s@x.test", "grey@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	static const char *tmp[] = { "450 4.7.1 greylisted, see http://x/?from=s@x.test",
				     "452 4.5.3 too many recipients", "451 local error" };
	for (size_t i = 0; i < sizeof tmp / sizeof *tmp; i++) {
		int cd = (tmp[i][0] - '0') * 100 + (tmp[i][1] - '0') * 10 + (tmp[i][2] - '0');
		CHECK_INT(verify_learn("s@x.test", "grey@example.com", cd, tmp[i],
				       VERIFY_OTHERS_ACCEPTED, c), VERIFY_KEPT_PAIR);
		CHECK_INT(lookup("o@x.test", "grey@example.com", 0, &code, reply, sizeof reply),
			  VERIFY_NONE);
		CHECK_INT(lookup("s@x.test", "grey@example.com", 0, &code, reply, sizeof reply),
			  VERIFY_REFUSED);
		CHECK_INT(code, cd);
		CHECK(strstr(reply, "recipient deferred by the backend, try again later") != NULL);
		CHECK(strstr(reply, "s@x.test") == NULL);
		CHECK_INT(lookup("s@x.test", "grey@example.com", 0, &code, reply, sizeof reply),
			  VERIFY_NONE);
	}
	CHECK_INT(verify_learn("s@x.test", "a@example.com", 421, "421 4.3.2 bye",
			       VERIFY_OTHERS_ACCEPTED, c), VERIFY_NOT_KEPT);
	CHECK_INT(verify_learn("s@x.test", "a@example.com", 250, "250 2.1.5 ok", 0, c),
		  VERIFY_NOT_KEPT);
	CHECK_INT(verify_learn("s@x.test", "a@example.com", 0, "", 0, c), VERIFY_NOT_KEPT);
	CHECK_INT(lookup("s@x.test", "a@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	conf_release(c);
}

/* test_callout - a callout (asked as <>) keeps only mailbox codes, for
 * every sender; its 5.7.1 or 5.1.8 is not kept at all; an acceptance
 * marks the recipient verified (not for a role account's lookup). */
TEST(test_callout)
{
	struct conf *c = defaults();
	char reply[512];
	int code;

	verify_init(1000);
	CHECK_INT(verify_learn("ignored@x.test", "ceo@example.com", 550, "550 5.7.1 no null sender",
			       VERIFY_CALLOUT, c), VERIFY_NOT_KEPT);
	CHECK_INT(verify_learn("", "ceo@example.com", 550, "550 5.1.8 sender domain",
			       VERIFY_CALLOUT, c), VERIFY_NOT_KEPT);
	CHECK_INT(verify_learn("", "ceo@example.com", 550, "550 no such user", VERIFY_CALLOUT, c),
		  VERIFY_NOT_KEPT);
	CHECK_INT(lookup("", "ceo@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	CHECK_INT(verify_learn("", "nobody@example.com", 550, "550 5.1.1 no such user",
			       VERIFY_CALLOUT, c), VERIFY_KEPT_RCPT);
	CHECK_INT(lookup("a@b.test", "nobody@example.com", 0, &code, reply, sizeof reply),
		  VERIFY_REFUSED);
	CHECK_STR(reply, "550 5.1.1 <nobody@example.com>: recipient unknown");
	/* Not filled by any sender of a transaction: never for a role account. */
	CHECK_INT(lookup("", "nobody@example.com", 1, &code, reply, sizeof reply), VERIFY_NONE);
	verify_accepted("alice@example.com", c);
	CHECK_INT(lookup("a@b.test", "alice@Example.COM", 0, &code, reply, sizeof reply),
		  VERIFY_VERIFIED);
	CHECK_INT(lookup("a@b.test", "ALICE@example.com", 0, &code, reply, sizeof reply),
		  VERIFY_NONE);
	/* A replay refusal for a pair overrides the recipient's verification. */
	verify_learn("evil@attacker.test", "alice@example.com", 550, "550 5.7.1 no", 0, c);
	CHECK_INT(lookup("evil@attacker.test", "alice@example.com", 0, &code, reply, sizeof reply),
		  VERIFY_REFUSED);
	CHECK_INT(lookup("a@b.test", "alice@example.com", 0, &code, reply, sizeof reply),
		  VERIFY_VERIFIED);
	conf_release(c);
}

/* test_long_pair - a pair too long for a key is not kept (never cut to a
 * prefix another sender shares). */
TEST(test_long_pair)
{
	struct conf *c = defaults();
	char s1[700], s2[700], reply[512];
	int code;

	memset(s1, 'a', sizeof s1 - 20);
	strcpy(s1 + sizeof s1 - 20, "1@attacker.test");
	memcpy(s2, s1, sizeof s1);
	s2[sizeof s1 - 20] = '2';
	verify_init(1000);
	CHECK_INT(verify_learn(s1, "ceo@example.com", 550, "550 5.7.1 x", 0, c), VERIFY_KEPT_PAIR);
	CHECK_INT(lookup(s2, "ceo@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	CHECK_INT(lookup(s1, "ceo@example.com", 0, &code, reply, sizeof reply), VERIFY_NONE);
	conf_release(c);
}

/* test_truncated_reply - a short caller buffer gets a terminated prefix. */
TEST(test_truncated_reply)
{
	struct conf *c = defaults();
	char reply[8];
	int code = 0;

	verify_init(1000);
	verify_learn("s@x", "a@b", 550, "550 5.1.1 long text here", 0, c);
	CHECK_INT(verify_lookup("o@x", "a@b", 0, &code, reply, sizeof(reply)), VERIFY_REFUSED);
	CHECK_STR(reply, "550 5.1");
	conf_release(c);
}

/* test_replace - a second verdict for the same key replaces the first. */
TEST(test_replace)
{
	struct conf *c = defaults();
	char reply[128];
	int code = 0;

	verify_init(1000);
	verify_learn("s@x", "u@example.com", 550, "550 5.1.1 first", 0, c);
	verify_learn("s@x", "u@EXAMPLE.com", 553, "553 5.1.3 second", 0, c);
	CHECK_INT(verify_lookup("o@x", "u@example.com", 0, &code, reply, sizeof(reply)),
		  VERIFY_REFUSED);
	CHECK_INT(code, 553);
	CHECK_STR(reply, "553 5.1.3 <u@example.com>: bad recipient address syntax");
	conf_release(c);
}

/* test_bounded - never more than max_entries live; the newest survive. */
TEST(test_bounded)
{
	struct conf *c = defaults();
	char addr[64];
	int live = 0;

	verify_init(640); /* 10 per shard */
	for (int i = 0; i < 10000; i++) {
		snprintf(addr, sizeof(addr), "user%d@example.com", i);
		verify_learn("", addr, 550, "550 5.1.1 x", VERIFY_CALLOUT, c);
	}
	for (int i = 0; i < 10000; i++) {
		snprintf(addr, sizeof(addr), "user%d@example.com", i);
		live += verify_lookup("", addr, 0, NULL, NULL, 0) == VERIFY_REFUSED;
	}
	CHECK(live <= 640);
	CHECK(live >= 320);
	CHECK_INT(verify_lookup("", "user9999@example.com", 0, NULL, NULL, 0), VERIFY_REFUSED);
	CHECK_INT(verify_lookup("", "user0@example.com", 0, NULL, NULL, 0), VERIFY_NONE);
	conf_release(c);
}

static struct conf *hammer_conf;

static void *hammer(void *arg)
{
	char addr[64];
	long t = (long)arg;

	for (int i = 0; i < 20000; i++) {
		snprintf(addr, sizeof(addr), "u%ld-%d@example.com", t, i % 500);
		if (i % 3 == 0)
			verify_learn(i % 2 ? "s@x" : "", addr, i % 5 ? 550 : 452,
				     i % 5 ? "550 5.7.1 x" : "452 4.5.3 x", VERIFY_OTHERS_ACCEPTED,
				     hammer_conf);
		else
			verify_lookup("s@x", addr, (int)(i & 1), NULL, NULL, 0);
	}
	return NULL;
}

/* test_threads - concurrent learns and lookups (run under ASan/TSan builds). */
TEST(test_threads)
{
	pthread_t th[8];

	hammer_conf = defaults();
	verify_init(1000);
	for (long i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, hammer, (void *)i);
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	CHECK_INT(verify_lookup("s@x", "u0-499@example.com", 0, NULL, NULL, 0) <= VERIFY_VERIFIED, 1);
	conf_release(hammer_conf);
}

int main(void)
{
	RUN(test_enh);
	RUN(test_allow_list);
	RUN(test_mailbox_for_every_sender);
	RUN(test_sender_refusals_per_pair);
	RUN(test_lifetimes);
	RUN(test_temporary);
	RUN(test_callout);
	RUN(test_long_pair);
	RUN(test_truncated_reply);
	RUN(test_replace);
	RUN(test_bounded);
	RUN(test_threads);
	return t_done();
}
