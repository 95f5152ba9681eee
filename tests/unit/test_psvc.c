/*
 * test_psvc.c - the policy-service client's protocol (psvc.h): answers
 * read from a stream, each action's meaning and reply as Postfix's
 * access(5) gives it, and a service's { } settings.
 */
#include "psvc.h"
#include "smtp_proto.h"
#include "t.h"

#include <stdlib.h>

/* reply_of - the reply line an action gives for bob@example.com. */
static const char *reply_of(const char *action, enum psvc_kind kind)
{
	static struct psvc_action a;
	psvc_action_parse(action, "bob@example.com", &a);
	CHECK_INT(a.kind, kind);
	return a.reply;
}

TEST(answers)
{
	const char in[] = "action=DUNNO\n\nfoo=bar\r\naction=  REJECT spam  \r\n\r\naction=OK";
	char act[256];
	size_t used, pos = 0;
	CHECK(psvc_reply_parse(in, sizeof in - 1, act, sizeof act, &used) == PARSE_OK);
	CHECK_STR(act, "DUNNO");
	pos += used;
	CHECK(psvc_reply_parse(in + pos, sizeof in - 1 - pos, act, sizeof act, &used) == PARSE_OK);
	CHECK_STR(act, "REJECT spam");
	pos += used;
	CHECK(psvc_reply_parse(in + pos, sizeof in - 1 - pos, act, sizeof act, &used) == PARSE_AGAIN);
	CHECK(psvc_reply_parse("\n\n", 2, act, sizeof act, &used) == PARSE_BAD); /* no action */
	CHECK(psvc_reply_parse("action\n\n", 8, act, sizeof act, &used) == PARSE_BAD);
	CHECK(psvc_reply_parse("=x\n\n", 4, act, sizeof act, &used) == PARSE_BAD);
	char big[PSVC_MAX_REPLY + 10];
	memset(big, 'a', sizeof big);
	CHECK(psvc_reply_parse(big, sizeof big, act, sizeof act, &used) == PARSE_TOO_LONG);
	/* a control character in the value does not reach a reply */
	CHECK(psvc_reply_parse("action=REJECT a\033b\n\n", 19, act, sizeof act, &used) == PARSE_OK);
	CHECK_STR(act, "REJECT a?b");
}

TEST(actions)
{
	CHECK_STR(reply_of("REJECT", PSVC_REFUSE),
		  "554 5.7.1 <bob@example.com>: Recipient address rejected: Access denied");
	CHECK_STR(reply_of("reject 5.7.26 DMARC", PSVC_REFUSE),
		  "554 5.7.26 <bob@example.com>: Recipient address rejected: DMARC");
	CHECK_STR(reply_of("DEFER", PSVC_REFUSE),
		  "450 4.7.1 <bob@example.com>: Recipient address rejected: Access denied");
	CHECK_STR(reply_of("550 5.7.23 SPF fail", PSVC_REFUSE),
		  "550 5.7.23 <bob@example.com>: Recipient address rejected: SPF fail");
	CHECK_STR(reply_of("451 5.1.1 class", PSVC_REFUSE),
		  "451 4.1.1 <bob@example.com>: Recipient address rejected: class");
	CHECK_STR(reply_of("421 closing", PSVC_REFUSE), /* the session stays: 450 */
		  "450 4.7.1 <bob@example.com>: Recipient address rejected: closing");
	CHECK_STR(reply_of("550 6.1.1 not a code", PSVC_REFUSE),
		  "550 5.7.1 <bob@example.com>: Recipient address rejected: 6.1.1 not a code");
	CHECK_STR(reply_of("550", PSVC_REFUSE),
		  "550 5.7.1 <bob@example.com>: Recipient address rejected: Access denied");
	CHECK_STR(reply_of("DEFER_IF_PERMIT Greylisted", PSVC_DEFER_IF_PERMIT),
		  "450 4.7.1 <bob@example.com>: Recipient address rejected: Greylisted");
	CHECK_STR(reply_of("DEFER_IF_REJECT", PSVC_DEFER_IF_REJECT),
		  "450 4.7.1 <bob@example.com>: Recipient address rejected: Service unavailable");
	CHECK_STR(reply_of("FROB", PSVC_INVALID), "451 4.3.5 Server configuration error");
	CHECK_STR(reply_of("350 no", PSVC_INVALID), "451 4.3.5 Server configuration error");
	reply_of("OK", PSVC_OK);
	reply_of("12345", PSVC_OK); /* all-numeric: OK, as Postfix */
	reply_of("dunno", PSVC_DUNNO);
	reply_of("WARN x", PSVC_WARN);
	reply_of("INFO x", PSVC_INFO);
	reply_of("HOLD", PSVC_UNSUPPORTED);
	reply_of("DISCARD spam", PSVC_UNSUPPORTED);
	reply_of("REDIRECT a@b", PSVC_UNSUPPORTED);
	reply_of("PREPEND no colon", PSVC_UNSUPPORTED);
	reply_of("PREPEND : empty name", PSVC_UNSUPPORTED);
	struct psvc_action a;
	psvc_action_parse("PREPEND X-Greylist: delayed 2 seconds", "bob@example.com", &a);
	CHECK_INT(a.kind, PSVC_PREPEND);
	CHECK_STR(a.text, "X-Greylist: delayed 2 seconds");
}

TEST(settings)
{
	struct psvc_service s = { .name = "inet:127.0.0.1:9", .timeout = 100000, .try_limit = 2 };
	s.default_action = strdup("451 4.3.5 x");
	s.policy_context = strdup("");
	char err[512];
	CHECK_INT(psvc_settings_parse(&s,
				      " timeout = 10s default_action=450 4.7.0 Try later try_limit=1 "
				      "policy_context = edge mx",
				      err, sizeof err),
		  0);
	CHECK_INT(s.timeout, 10000);
	CHECK_INT(s.try_limit, 1);
	CHECK_STR(s.default_action, "450 4.7.0 Try later");
	CHECK_STR(s.policy_context, "edge mx");
	CHECK(psvc_settings_parse(&s, "frob = 1", err, sizeof err) < 0);
	CHECK(psvc_settings_parse(&s, "timeout = soon", err, sizeof err) < 0);
	CHECK(psvc_settings_parse(&s, "default_action = HOLD", err, sizeof err) < 0);
	CHECK(psvc_settings_parse(&s, "try_limit = 0", err, sizeof err) < 0);
	CHECK_STR(s.default_action, "450 4.7.0 Try later");
	free(s.default_action);
	free(s.policy_context);
}

int main(void)
{
	RUN(answers);
	RUN(actions);
	RUN(settings);
	return t_done();
}
