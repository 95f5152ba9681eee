/*
 * test_rules.c - golden tests of the RCPT verdicts in the style of
 * Postfix's smtpd_check tests: a script of client / helo / mail / rcpt
 * steps, each rcpt with the verdict expected, run through the real policy
 * code (policy_load, policy_session_*, policy_relay_domain, policy_rcpt)
 * with file: maps. Also rules_access_action and policy_addr_check.
 */
#include "conf.h"
#include "policy.h"
#include "rules.h"
#include "t.h"

#include <ctype.h>
#include <stdlib.h>
#include <unistd.h>

static char tmpdir[64];

/* write_file - tmpdir/name holds text; returns "file:PATH" (static). */
static const char *write_file(const char *name, const char *text)
{
	static char spec[4][160];
	static int n;
	char *s = spec[n++ % 4];
	snprintf(s, 160, "file:%s/%s", tmpdir, name);
	FILE *f = fopen(s + 5, "w");
	fputs(text, f);
	fclose(f);
	return s;
}

/* The script: "client IP", "helo NAME", "mail ADDR" ("" = <>), "rcpt ADDR
 * => VERDICT" where VERDICT is OK or the reply line. "#" lines are notes. */
static const char *const script[] = {
	"# a client the access map refuses: only role accounts get through",
	"client 192.0.2.7",
	"helo mail.client.test",
	"mail a@client.test",
	"rcpt user@example.com => 550 5.7.1 <user@example.com>: listed here",
	"rcpt postmaster@example.com => OK",
	"rcpt Abuse@example.com => OK",
	"rcpt user@elsewhere.test => 550 5.7.1 <user@elsewhere.test>: relay access denied",
	"# CIDR: a longer prefix wins; OK ends the client check",
	"client 192.0.2.99",
	"helo mail.client.test",
	"mail a@client.test",
	"rcpt user@example.com => OK",
	"# unknown recipients; role accounts need no map entry",
	"client 203.0.113.5",
	"helo mail.client.test",
	"mail a@client.test",
	"rcpt nobody@example.com => 550 5.1.1 <nobody@example.com>: recipient unknown",
	"rcpt gone@example.com => 550 5.1.1 <gone@example.com>: recipient unknown",
	"rcpt hostmaster@example.com => OK",
	"rcpt user@example.com => OK",
	"# recipient access: REJECT with text; OK exempts from delayed verdicts",
	"rcpt blocked@example.com => 550 5.7.1 <blocked@example.com>: no mail for you",
	"# sender access (parent domains, the null sender as <>)",
	"mail x@mx.spammer.test",
	"rcpt user@example.com => 550 5.7.1 <user@example.com>: Sender address <x@mx.spammer.test> rejected: access denied",
	"rcpt webmaster@example.com => OK",
	"rcpt vip@example.com => OK",
	"mail ",
	"rcpt user@example.com => 550 5.7.1 <user@example.com>: no bounces",
	"mail b@friend.test",
	"rcpt user@example.com => OK",
	"# an invalid HELO: refused at RCPT, 501 5.5.2, role accounts pass",
	"client 203.0.113.6",
	"helo not_a!name",
	"mail a@client.test",
	"rcpt user@example.com => 501 5.5.2 <user@example.com>: Helo command rejected: invalid name <not_a!name>",
	"rcpt postmaster@example.com => OK",
	"helo [203.0.113.6]",
	"mail a@client.test",
	"rcpt user@example.com => OK",
	"# Postfix access(5) actions beyond OK/REJECT/DUNNO",
	"client 198.51.100.1",
	"helo mail.client.test",
	"mail a@client.test",
	"rcpt user@example.com => 450 4.7.1 <user@example.com>: try later",
	"rcpt abuse@example.com => OK",
	"client 198.51.100.2",
	"helo mail.client.test",
	"mail a@client.test",
	"rcpt user@example.com => 554 5.7.1 <user@example.com>: go away",
	"rcpt abuse@example.com => OK",
	"client 198.51.100.3",
	"helo mail.client.test",
	"mail a@client.test",
	"rcpt user@example.com => OK",
	"# DEFER_IF_REJECT: a later 5xx becomes its 450; an acceptance stays",
	"client 198.51.100.5",
	"helo not_a!name",
	"mail a@client.test",
	"rcpt user@example.com => 450 4.7.1 <user@example.com>: maybe later",
	"helo mail.client.test",
	"mail a@client.test",
	"rcpt user@example.com => OK",
	NULL,
};

/* run_rcpt - relay control as in smtpd.c, then the chain; the verdict. */
static void run_rcpt(const struct policy *p, struct policy_sess *ps, const char *addr,
		     char *out, size_t outlen)
{
	char local[256], domain[256];
	const char *at = strrchr(addr, '@');
	snprintf(local, sizeof local, "%.*s", at ? (int)(at - addr) : (int)strlen(addr), addr);
	snprintf(domain, sizeof domain, "%s", at ? at + 1 : "");
	for (char *d = domain; *d; d++)
		*d = (char)tolower((unsigned char)*d);
	if (domain[0] && policy_relay_domain(p, domain) != 1) {
		snprintf(out, outlen, "550 5.7.1 <%s>: relay access denied", addr);
		return;
	}
	struct policy_env env = {
		.sess = ps, .pol = p, .session_id = "test", .client_addr = ps->client_addr,
		.helo = ps->helo ? ps->helo : "", .sender = ps->sender ? ps->sender : "",
		.rcpt = addr, .rcpt_local = local, .rcpt_domain = domain,
	};
	struct policy_verdict v;
	struct policy_req *req;
	if (!policy_rcpt(&env, &v, NULL, NULL, &req)) {
		policy_cancel(req);
		snprintf(out, outlen, "(asynchronous)");
		return;
	}
	snprintf(out, outlen, "%s", v.code ? v.reply : "OK");
}

TEST(golden)
{
	char err[512];
	char *ov[16];
	int n = 0;
	char buf[8][300];
	snprintf(buf[0], 300, "client_access_maps=%s",
		 write_file("client", "192.0.2.0/24 REJECT listed here\n"
				      "192.0.2.96/28 OK\n"
				      "198.51.100.1 DEFER_IF_PERMIT try later\n"
				      "198.51.100.2 554 5.7.1 go away\n"
				      "198.51.100.3 WARN watch this one\n"

				      "198.51.100.5 DEFER_IF_REJECT maybe later\n"));
	snprintf(buf[1], 300, "sender_access_maps=%s",
		 write_file("sender", ".spammer.test REJECT\n<> REJECT no bounces\n"
				      "friend.test OK\n"));
	snprintf(buf[2], 300, "recipient_access_maps=%s",
		 write_file("rcpt_access", "vip@example.com OK\n"
					   "blocked@example.com REJECT no mail for you\n"));
	snprintf(buf[3], 300, "relay_recipient_maps=%s",
		 write_file("rcpts", "user@example.com\nvip@example.com\nblocked@example.com\n"
				     "gone@example.com REJECT\n"));
	for (int i = 0; i < 4; i++)
		ov[n++] = buf[i];
	ov[n++] = "relay_domains=example.com";
	ov[n++] = "relay_backends=[127.0.0.1]:25";
	ov[n++] = "greylist=no";   /* greylisting has its own tests */
	struct conf *c = conf_load(NULL, 1, ov, n, err, sizeof err);
	if (!c && strstr(err, "unknown parameter greylist"))
		c = conf_load(NULL, 1, ov, n - 1, err, sizeof err);
	CHECK(c != NULL);
	if (!c) {
		fprintf(stderr, "%s\n", err);
		return;
	}
	struct policy *p = policy_load(c, err, sizeof err);
	CHECK(p != NULL);
	if (!p) {
		fprintf(stderr, "%s\n", err);
		return;
	}
	struct policy_sess *ps = NULL;
	char client[64] = "";
	for (int i = 0; script[i]; i++) {
		const char *l = script[i];
		if (l[0] == '#')
			continue;
		if (!strncmp(l, "client ", 7)) {
			policy_session_free(ps);
			snprintf(client, sizeof client, "%s", l + 7);
			ps = policy_session_new(p, "test", client);
		} else if (!strncmp(l, "helo ", 5)) {
			policy_helo(ps, l + 5);
		} else if (!strncmp(l, "mail ", 5)) {
			policy_mail(ps, l + 5);
		} else if (!strncmp(l, "rcpt ", 5)) {
			const char *arrow = strstr(l, " => ");
			char addr[256], got[600];
			snprintf(addr, sizeof addr, "%.*s", (int)(arrow - l - 5), l + 5);
			run_rcpt(p, ps, addr, got, sizeof got);
			if (strcmp(got, arrow + 4)) {
				t_cur_failed = 1;
				fprintf(stderr, "script line %d: %s\n   got: %s\n", i + 1, l, got);
			}
		}
	}
	policy_session_free(ps);
	policy_release(p);
}

/* act - parse value as an access (or header) action: the act, or -1. */
static int act(const char *value, int kind, struct rules_action *a)
{
	char why[300];
	return rules_action_parse(value, kind, a, why, sizeof why) < 0 ? -1 : (int)a->act;
}

TEST(access_actions)
{
	struct rules_action a;
	CHECK_INT(act("OK", RULES_ACCESS, &a), RA_OK);
	CHECK_INT(act("ok", RULES_ACCESS, &a), RA_OK);
	CHECK_INT(act("PERMIT", RULES_ACCESS, &a), RA_OK);
	CHECK_INT(act("DUNNO", RULES_ACCESS, &a), RA_DUNNO);
	CHECK_INT(act("REJECT", RULES_ACCESS, &a), RA_REFUSE);
	CHECK_INT(a.code, 550);
	CHECK_STR(a.enh, "5.7.1");
	CHECK_STR(a.text, "");
	CHECK_INT(act("reject go\x01 away", RULES_ACCESS, &a), RA_REFUSE);
	CHECK_STR(a.text, "go? away");
	CHECK_INT(act("554 5.7.1 no thanks", RULES_ACCESS, &a), RA_REFUSE);
	CHECK_INT(a.code, 554);
	CHECK_STR(a.enh, "5.7.1");
	CHECK_STR(a.text, "no thanks");
	CHECK_INT(act("450 try later", RULES_ACCESS, &a), RA_REFUSE);
	CHECK_INT(a.code, 450);
	CHECK_STR(a.enh, "4.7.1");
	CHECK_STR(a.text, "try later");
	CHECK_INT(act("550 4.1.1 class mismatch", RULES_ACCESS, &a), RA_REFUSE);
	CHECK_STR(a.enh, "5.7.1"); /* a 4.x.x code is no enhanced code of a 550 */
	CHECK_STR(a.text, "4.1.1 class mismatch");
	CHECK_INT(act("DEFER busy", RULES_ACCESS, &a), RA_REFUSE);
	CHECK_INT(a.code, 450);
	CHECK_INT(act("DEFER_IF_PERMIT x", RULES_ACCESS, &a), RA_DEFER_IF_PERMIT);
	CHECK_INT(act("DEFER_IF_REJECT", RULES_ACCESS, &a), RA_DEFER_IF_REJECT);
	CHECK_INT(act("WARN look", RULES_ACCESS, &a), RA_WARN);
	CHECK_STR(a.text, "look");
	CHECK_INT(act("INFO look", RULES_ACCESS, &a), RA_WARN);
	CHECK_INT(act("DISCARD", RULES_ACCESS, &a), RA_DISCARD);
	CHECK_INT(act("PREPEND X-Perim: yes", RULES_ACCESS, &a), RA_PREPEND);
	CHECK_STR(a.text, "X-Perim: yes");
	CHECK_INT(act("PREPEND no header", RULES_ACCESS, &a), -1);
	CHECK_INT(act("HOLD", RULES_ACCESS, &a), -1);
	CHECK_INT(act("FILTER smtp:[x]", RULES_ACCESS, &a), -1);
	CHECK_INT(act("REDIRECT a@b", RULES_ACCESS, &a), -1);
	CHECK_INT(act("BCC a@b", RULES_ACCESS, &a), -1);
	CHECK_INT(act("OK then", RULES_ACCESS, &a), -1);
	CHECK_INT(act("250 fine", RULES_ACCESS, &a), -1);
	CHECK_INT(act("421 closing", RULES_ACCESS, &a), -1);
	CHECK_INT(act("permit_mynetworks", RULES_ACCESS, &a), -1);
	CHECK_INT(act("", RULES_ACCESS, &a), -1);
	CHECK_INT(act("IGNORE", RULES_ACCESS, &a), -1);
	CHECK_INT(act("IGNORE", RULES_HEADER, &a), RA_IGNORE);
	CHECK_INT(act("HOLD", RULES_HEADER, &a), -1);
	CHECK_INT(act("554 x", RULES_HEADER, &a), -1);
	CHECK_INT(act("REJECT bad header", RULES_HEADER, &a), RA_REFUSE);
	char why[300];
	CHECK_INT(rules_access_check("HOLD", why, sizeof why), -1);
	CHECK(strstr(why, "DEFER") != NULL);
}

TEST(addr_limits)
{
	char l64[65], l65[66], d255[256], d256[257];
	memset(l64, 'a', 64);
	l64[64] = 0;
	memset(l65, 'a', 65);
	l65[65] = 0;
	memset(d255, 'b', 255);
	d255[255] = 0;
	memset(d256, 'b', 256);
	d256[256] = 0;
	CHECK(policy_addr_check(l64, "example.com") == NULL);
	CHECK(policy_addr_check(l65, "example.com") != NULL);
	CHECK(policy_addr_check("a", d256) != NULL);
	CHECK(policy_addr_check("a", d255) != NULL);   /* path over 256 */
	CHECK(policy_addr_check("Postmaster", "") == NULL);
}

int main(void)
{
	snprintf(tmpdir, sizeof tmpdir, "/tmp/test_rules.XXXXXX");
	if (!mkdtemp(tmpdir))
		return 1;
	RUN(golden);
	RUN(access_actions);
	RUN(addr_limits);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	if (system(cmd) != 0)
		return 1;
	return t_done();
}
