/*
 * test_smtpd_table.c - the SMTP session's command table (smtpd.c): each
 * command's phases and flags, and the sequence rules (503 and the rest)
 * as smtpd_cmd_check() draws them from the table, with the reply texts
 * clients see. smtpd_phase() is checked on sessions built by hand.
 */
#include "smtpd_int.h"
#include "t.h"

#include <string.h>

#define ALL_CTX (CMD_CTX_TLS | CMD_CTX_HELO_REQUIRED)

/* check - smtpd_cmd_check() for verb v; *reply is NULL when it may run. */
static enum smtpd_check check(enum smtp_verb v, enum smtpd_phase ph, unsigned ctx,
			      const char *arg, const char **reply)
{
	const struct smtpd_cmd *c = smtpd_cmd_find(v);
	*reply = NULL;
	if (!c)
		return (enum smtpd_check)-1;
	return smtpd_cmd_check(c, ph, ctx, arg, reply);
}

TEST(every_verb_has_its_row)
{
	static const struct {
		enum smtp_verb v;
		const char *name;
	} want[] = {
		{SMTP_HELO, "HELO"}, {SMTP_EHLO, "EHLO"}, {SMTP_MAIL, "MAIL"},
		{SMTP_RCPT, "RCPT"}, {SMTP_DATA, "DATA"}, {SMTP_RSET, "RSET"},
		{SMTP_NOOP, "NOOP"}, {SMTP_QUIT, "QUIT"}, {SMTP_VRFY, "VRFY"},
		{SMTP_EXPN, "EXPN"}, {SMTP_HELP, "HELP"}, {SMTP_STARTTLS, "STARTTLS"},
		{SMTP_BDAT, "BDAT"}, {SMTP_AUTH, "AUTH"},
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		const struct smtpd_cmd *c = smtpd_cmd_find(want[i].v);
		CHECK(c != NULL);
		if (!c)
			continue;
		CHECK_STR(c->name, want[i].name);
		CHECK(c->run != NULL);
	}
	CHECK(smtpd_cmd_find(SMTP_UNKNOWN) == NULL);   /* 500, not in the table */
	CHECK(smtpd_cmd_find(SMTP_VERB_COUNT) == NULL);
	CHECK(smtpd_cmd_find((enum smtp_verb)-1) == NULL);
}

/* Where a row refuses, it says what; where it runs, it has nothing to say
 * (except MAIL's smtpd_helo_required refusal in PH_CONNECTED). */
TEST(refusals_match_phases)
{
	for (int v = 0; v < SMTP_VERB_COUNT; v++) {
		const struct smtpd_cmd *c = smtpd_cmd_find((enum smtp_verb)v);
		if (!c)
			continue;
		CHECK((c->phases & ~PH_ANY) == 0);
		for (int ph = 0; ph < PH_COUNT; ph++) {
			const char *r = c->refusal[ph];
			if (c->phases & PH_BIT(ph)) {
				if (ph == PH_CONNECTED && (c->flags & CMD_F_HELO_REQ))
					CHECK(r && !strncmp(r, "503 5.5.1 ", 10));
				else
					CHECK(r == NULL);
			} else {
				CHECK(r && (!strncmp(r, "503 5.5.1 ", 10) || !strncmp(r, "554 5.5.1 ", 10)));
			}
		}
		int argrule = (c->flags & (CMD_F_NOARG | CMD_F_NEEDARG)) != 0;
		CHECK((c->flags & CMD_F_NOARG) == 0 || (c->flags & CMD_F_NEEDARG) == 0);
		CHECK(argrule == (c->arg_refusal != NULL));
		if (c->arg_refusal)
			CHECK(!strncmp(c->arg_refusal, "501 5.5.4 Syntax: ", 18));
	}
}

TEST(phases_of_each_command)
{
	unsigned no_txn = PH_BIT(PH_CONNECTED) | PH_BIT(PH_TLS_STARTED) | PH_BIT(PH_GREETED);
	CHECK_INT(smtpd_cmd_find(SMTP_MAIL)->phases, PH_BIT(PH_CONNECTED) | PH_BIT(PH_GREETED));
	CHECK_INT(smtpd_cmd_find(SMTP_RCPT)->phases, PH_TXN);
	CHECK_INT(smtpd_cmd_find(SMTP_RCPT)->phases & no_txn, 0);
	CHECK_INT(smtpd_cmd_find(SMTP_DATA)->phases, PH_BIT(PH_RCPT));
	static const enum smtp_verb anywhere[] = {
		SMTP_HELO, SMTP_EHLO, SMTP_RSET, SMTP_NOOP, SMTP_QUIT, SMTP_VRFY,
		SMTP_EXPN, SMTP_HELP, SMTP_STARTTLS, SMTP_BDAT, SMTP_AUTH,
	};
	for (size_t i = 0; i < sizeof anywhere / sizeof anywhere[0]; i++)
		CHECK_INT(smtpd_cmd_find(anywhere[i])->phases, PH_ANY);
}

TEST(flags_of_each_command)
{
	static const struct {
		enum smtp_verb v;
		unsigned flags;
	} want[] = {
		{SMTP_HELO, CMD_F_LAST},
		{SMTP_EHLO, CMD_F_PRE_TLS | CMD_F_LAST},
		{SMTP_MAIL, CMD_F_HELO_REQ | CMD_F_PAUSES},
		{SMTP_RCPT, CMD_F_PAUSES},
		{SMTP_DATA, CMD_F_NOARG | CMD_F_LAST | CMD_F_PAUSES},
		{SMTP_RSET, CMD_F_NOARG},
		{SMTP_NOOP, CMD_F_PRE_TLS | CMD_F_LAST},
		{SMTP_QUIT, CMD_F_PRE_TLS | CMD_F_LAST},
		{SMTP_VRFY, CMD_F_NEEDARG | CMD_F_LAST},
		{SMTP_EXPN, CMD_F_LAST},
		{SMTP_HELP, 0},
		{SMTP_STARTTLS, CMD_F_NOARG | CMD_F_PRE_TLS | CMD_F_LAST | CMD_F_PAUSES},
		{SMTP_BDAT, 0},
		{SMTP_AUTH, 0},
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		CHECK_INT(smtpd_cmd_find(want[i].v)->flags, want[i].flags);
	/* RFC 2920 §3.1: EHLO, DATA, VRFY, EXPN, QUIT and NOOP end a group;
	 * RFC 3207 §4: so does STARTTLS. MAIL and RCPT may be pipelined. */
	CHECK(!(smtpd_cmd_find(SMTP_MAIL)->flags & CMD_F_LAST));
	CHECK(!(smtpd_cmd_find(SMTP_RCPT)->flags & CMD_F_LAST));
	/* Only STARTTLS is refused once TLS is active. */
	for (int v = 0; v < SMTP_VERB_COUNT; v++) {
		const struct smtpd_cmd *c = smtpd_cmd_find((enum smtp_verb)v);
		if (c)
			CHECK((c->tls_refusal != NULL) == (v == SMTP_STARTTLS));
	}
}

TEST(rcpt_before_mail)
{
	const char *r;
	enum smtpd_phase before[] = {PH_CONNECTED, PH_TLS_STARTED, PH_GREETED};
	for (int i = 0; i < 3; i++) {
		CHECK_INT(check(SMTP_RCPT, before[i], 0, "TO:<a@b>", &r), CMD_BAD_PHASE);
		CHECK_STR(r, "503 5.5.1 Error: need MAIL command");
	}
	CHECK_INT(check(SMTP_RCPT, PH_MAIL, ALL_CTX, "TO:<a@b>", &r), CMD_OK);
	CHECK_INT(check(SMTP_RCPT, PH_RCPT_NONE, 0, "TO:<a@b>", &r), CMD_OK);
	CHECK_INT(check(SMTP_RCPT, PH_RCPT, 0, "TO:<a@b>", &r), CMD_OK);
	CHECK(r == NULL);
}

TEST(data_sequence)
{
	const char *r;
	CHECK_INT(check(SMTP_DATA, PH_GREETED, 0, "", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "503 5.5.1 Error: need MAIL command");
	CHECK_INT(check(SMTP_DATA, PH_CONNECTED, 0, "", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "503 5.5.1 Error: need MAIL command");
	CHECK_INT(check(SMTP_DATA, PH_MAIL, 0, "", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "503 5.5.1 Error: need RCPT command");
	/* RFC 2920 §3.1: every pipelined RCPT was refused. */
	CHECK_INT(check(SMTP_DATA, PH_RCPT_NONE, 0, "", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "554 5.5.1 Error: no valid recipients");
	CHECK_INT(check(SMTP_DATA, PH_RCPT, ALL_CTX, "", &r), CMD_OK);
	/* The argument is judged before the sequence. */
	CHECK_INT(check(SMTP_DATA, PH_GREETED, 0, "x", &r), CMD_BAD_ARG);
	CHECK_STR(r, "501 5.5.4 Syntax: DATA takes no argument");
	CHECK_INT(check(SMTP_DATA, PH_RCPT, 0, "x", &r), CMD_BAD_ARG);
}

TEST(mail_sequence)
{
	const char *r;
	enum smtpd_phase inside[] = {PH_MAIL, PH_RCPT_NONE, PH_RCPT};
	for (int i = 0; i < 3; i++) {
		CHECK_INT(check(SMTP_MAIL, inside[i], 0, "FROM:<>", &r), CMD_BAD_PHASE);
		CHECK_STR(r, "503 5.5.1 Error: nested MAIL command");
	}
	CHECK_INT(check(SMTP_MAIL, PH_GREETED, ALL_CTX, "FROM:<>", &r), CMD_OK);
	/* smtpd_helo_required decides MAIL before HELO/EHLO. */
	CHECK_INT(check(SMTP_MAIL, PH_CONNECTED, 0, "FROM:<>", &r), CMD_OK);
	CHECK_INT(check(SMTP_MAIL, PH_CONNECTED, CMD_CTX_HELO_REQUIRED, "FROM:<>", &r),
		  CMD_HELO_REQUIRED);
	CHECK_STR(r, "503 5.5.1 Error: send HELO/EHLO first");
}

/* RFC 3207 §4.2: after STARTTLS the client starts over with EHLO. */
TEST(after_starttls_before_ehlo)
{
	const char *r;
	CHECK_INT(check(SMTP_MAIL, PH_TLS_STARTED, CMD_CTX_TLS, "FROM:<>", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "503 5.5.1 Error: send HELO/EHLO first");
	CHECK_INT(check(SMTP_MAIL, PH_TLS_STARTED, ALL_CTX, "FROM:<>", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "503 5.5.1 Error: send HELO/EHLO first");
	CHECK_INT(check(SMTP_RCPT, PH_TLS_STARTED, CMD_CTX_TLS, "TO:<a@b>", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "503 5.5.1 Error: need MAIL command");
	CHECK_INT(check(SMTP_DATA, PH_TLS_STARTED, CMD_CTX_TLS, "", &r), CMD_BAD_PHASE);
	CHECK_STR(r, "503 5.5.1 Error: need MAIL command");
	CHECK_INT(check(SMTP_EHLO, PH_TLS_STARTED, CMD_CTX_TLS, "x", &r), CMD_OK);
	CHECK_INT(check(SMTP_HELO, PH_TLS_STARTED, CMD_CTX_TLS, "x", &r), CMD_OK);
	CHECK_INT(check(SMTP_NOOP, PH_TLS_STARTED, CMD_CTX_TLS, "", &r), CMD_OK);
	CHECK_INT(check(SMTP_RSET, PH_TLS_STARTED, CMD_CTX_TLS, "", &r), CMD_OK);
	CHECK_INT(check(SMTP_QUIT, PH_TLS_STARTED, CMD_CTX_TLS, "", &r), CMD_OK);
	/* STARTTLS once more: refused; its argument is judged first. */
	CHECK_INT(check(SMTP_STARTTLS, PH_TLS_STARTED, CMD_CTX_TLS, "", &r), CMD_TLS_ACTIVE);
	CHECK_STR(r, "503 5.5.1 Error: TLS already active");
	CHECK_INT(check(SMTP_STARTTLS, PH_GREETED, CMD_CTX_TLS, "", &r), CMD_TLS_ACTIVE);
	CHECK_INT(check(SMTP_STARTTLS, PH_GREETED, CMD_CTX_TLS, "x", &r), CMD_BAD_ARG);
	CHECK_STR(r, "501 5.5.4 Syntax: STARTTLS takes no argument");
	CHECK_INT(check(SMTP_STARTTLS, PH_RCPT, 0, "", &r), CMD_OK);
}

TEST(argument_rules)
{
	const char *r;
	for (int ph = 0; ph < PH_COUNT; ph++) {
		CHECK_INT(check(SMTP_RSET, (enum smtpd_phase)ph, 0, "", &r), CMD_OK);
		CHECK_INT(check(SMTP_RSET, (enum smtpd_phase)ph, 0, "x", &r), CMD_BAD_ARG);
		CHECK_STR(r, "501 5.5.4 Syntax: RSET");
		CHECK_INT(check(SMTP_VRFY, (enum smtpd_phase)ph, 0, "", &r), CMD_BAD_ARG);
		CHECK_STR(r, "501 5.5.4 Syntax: VRFY address");
		CHECK_INT(check(SMTP_VRFY, (enum smtpd_phase)ph, 0, "a", &r), CMD_OK);
		CHECK_INT(check(SMTP_NOOP, (enum smtpd_phase)ph, ALL_CTX, "anything", &r), CMD_OK);
		CHECK_INT(check(SMTP_QUIT, (enum smtpd_phase)ph, ALL_CTX, "anything", &r), CMD_OK);
		CHECK_INT(check(SMTP_HELP, (enum smtpd_phase)ph, ALL_CTX, "x", &r), CMD_OK);
		/* HELO/EHLO judge their hostname themselves (501 hostname). */
		CHECK_INT(check(SMTP_EHLO, (enum smtpd_phase)ph, ALL_CTX, "", &r), CMD_OK);
	}
}

TEST(phase_of_a_session)
{
	struct session s;
	struct txn t;
	memset(&s, 0, sizeof s);
	memset(&t, 0, sizeof t);
	CHECK_INT(smtpd_phase(&s), PH_CONNECTED);
	char helo[] = "client.example";
	s.helo = helo;
	CHECK_INT(smtpd_phase(&s), PH_GREETED);
	s.helo = NULL;               /* STARTTLS forgets HELO ... */
	s.need_ehlo = 1;             /* ... and wants EHLO again */
	CHECK_INT(smtpd_phase(&s), PH_TLS_STARTED);
	s.need_ehlo = 0;
	s.helo = helo;
	s.tx = &t;
	CHECK_INT(smtpd_phase(&s), PH_MAIL);
	t.rcpt_tried = 1;
	CHECK_INT(smtpd_phase(&s), PH_RCPT_NONE);
	t.nrcpt = 1;
	CHECK_INT(smtpd_phase(&s), PH_RCPT);
	s.helo = NULL;               /* MAIL without HELO (smtpd_helo_required = no) */
	CHECK_INT(smtpd_phase(&s), PH_RCPT);
}

int main(void)
{
	RUN(every_verb_has_its_row);
	RUN(refusals_match_phases);
	RUN(phases_of_each_command);
	RUN(flags_of_each_command);
	RUN(rcpt_before_mail);
	RUN(data_sequence);
	RUN(mail_sequence);
	RUN(after_starttls_before_ehlo);
	RUN(argument_rules);
	RUN(phase_of_a_session);
	return t_done();
}
