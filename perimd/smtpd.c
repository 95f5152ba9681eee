/*
 * smtpd.c - the SMTP server session (RFC 5321): the connection, greeting,
 * replies and error limits, the command table and dispatch, HELO/EHLO,
 * STARTTLS and the simple commands, accept and drain. The mail
 * transaction (MAIL, RCPT, DATA, scan and relay; struct txn) is
 * smtpd_txn.c's; smtpd_int.h is what the two share.
 *
 * The session as a state machine, in the manner of OpenSMTPD's
 * smtp_session.c:
 * - s->state says what the session does with input (ST_PROXY, ST_GREET,
 *   ST_CMD, ST_DATA, ST_BUSY, ST_CLOSING); smtpd_enter_state() is its
 *   only writer. smtpd_session_pause() / smtpd_session_resume() bracket
 *   every asynchronous step (ST_BUSY, reading paused).
 * - smtpd_phase() says where the SMTP dialogue is (PH_CONNECTED,
 *   PH_TLS_STARTED, PH_GREETED, PH_MAIL, PH_RCPT_NONE, PH_RCPT), read
 *   from HELO, STARTTLS and the transaction s->tx.
 * - smtpd_cmds[] has one row per command: the phases in which it runs,
 *   the reply (503 ...) where it does not, its flags (argument rules,
 *   smtpd_helo_required, allowed before TLS, ends a pipelined group,
 *   pauses reading) and its handler. smtpd_cmd_check() applies a row;
 *   the handlers check only their own syntax and policy. The table is
 *   tested as data by tests/unit/test_smtpd_table.c.
 * - The transaction is an object (struct txn): an accepted MAIL creates
 *   it, smtpd_txn_reset() frees it at its end.
 *
 * Invariants:
 * - A session lives on the loop that accepted it and is touched by that
 *   thread only. It owns its connection, policy reference, transaction,
 *   spool and in-flight relay request; session_free() cancels them all.
 * - Commands are taken from the input buffer one at a time, in order
 *   (RFC 2920 §3.2); replies are queued and leave together at the end of
 *   the loop iteration. While an asynchronous step runs (the relay after
 *   DATA, a tarpit delay) reading is paused, so no later command is
 *   processed before the earlier one has its reply.
 * - The session is freed only from the connection's error/EOF callback or
 *   the drain timer, never inside command processing: closing is
 *   conn_shutdown(), which flushes the last reply first.
 * - DATA is parsed by smtp_data_feed() (smtpd_txn.c): only CRLF.CRLF
 *   ends it; the stored body is canonical.
 */
#include "smtpd.h"
#include "smtpd_int.h"
#include "av.h"
#include "climit.h"
#include "conf.h"
#include "conn.h"
#include "crate.h"
#include "dnscheck.h"
#include "ev.h"
#include "log.h"
#include "net.h"
#include "proxy.h"
#include "smtp_proto.h"
#include "spool.h"
#include "stats.h"
#include "tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int sessions_total; /* atomic: all loops */
static int sessions_peak;  /* atomic: most open since the last smtpd_sessions_peak() */

/* smtpd_sessions_peak - the most sessions open at once since the last
 * call (then restarting from the current count): the graphs' per-minute
 * maximum sees a burst that came and went between two samples. */
int smtpd_sessions_peak(void)
{
	int now = __atomic_load_n(&sessions_total, __ATOMIC_RELAXED);
	int peak = __atomic_exchange_n(&sessions_peak, now, __ATOMIC_RELAXED);
	return peak > now ? peak : now;
}

/* smtpd_sessions - process-wide session count. */
int smtpd_sessions(void)
{
	return __atomic_load_n(&sessions_total, __ATOMIC_RELAXED);
}

/* smtpd_gen_id - a session id: seconds and a counter, base 31, always
 * SMTPD_ID_LEN characters (zero-padded), so no id is a prefix of another
 * and `grep ID` finds one session and its transactions (ID.NNN). */
void smtpd_gen_id(char out[16])
{
	static uint64_t ctr;
	static const char a[] = "0123456789BCDFGHJKLMNPQRSTVWXYZ";
	uint64_t n = __atomic_add_fetch(&ctr, 1, __ATOMIC_RELAXED);
	uint64_t v = ((uint64_t)time(NULL) << 24) ^ (n & 0xffffff) ^ ((n >> 24) << 40);
	for (int j = SMTPD_ID_LEN - 1; j >= 0; j--) {
		out[j] = a[v % 31];
		v /= 31;
	}
	out[SMTPD_ID_LEN] = 0;
}

/* ---- replies ---------------------------------------------------------- */

/* smtpd_reply - queue one reply line (text already has code and enhanced code). */
void smtpd_reply(struct session *s, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof buf - 3)
		n = (int)sizeof buf - 3;
	/* Replies are one line: never let a peer's text break the framing. */
	for (int i = 0; i < n; i++)
		if (buf[i] == '\r' || buf[i] == '\n')
			buf[i] = ' ';
	buf[n++] = '\r';
	buf[n++] = '\n';
	conn_write(s->conn, buf, (size_t)n);
}

static void session_close(struct session *s);
void smtpd_session_resume(struct session *s);
static void session_free(struct session *s);
static int starttls_offered(struct session *s);
void smtpd_rcpt_pending_free(struct rcpt_pending *rp);
static void proxy_input(struct session *s);
static void early_talker(struct session *s);

/* deadline_expired - a command (or DATA line) did not arrive whole within
 * smtpd_timeout. conn.c's idle timeout is re-armed by every byte, so a
 * client trickling one byte at a time (slowloris), or one that pipelines
 * and never reads our replies (reading paused, no idle timer), would hold
 * its session for ever; this deadline, as Postfix's
 * smtpd_per_request_deadline, ends both. Only while we wait for the
 * client: asynchronous steps (relay, scan, checks) have their own bounds. */
static void deadline_expired(void *arg)
{
	struct session *s = arg;
	if (s->state != ST_CMD && s->state != ST_DATA)
		return; /* re-armed when the step ends (session_resume) */
	log_info("%s: timeout after %u commands from [%s]%s", s->id, s->ncmds, s->addr,
		 s->wblocked ? " (client not reading replies)" : " (incomplete command)");
	smtpd_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cf->myhostname);
	stats_inc(ST_close_timeout);
	session_close(s);
}

/* smtpd_deadline_arm - the client has smtpd_timeout from now for its next
 * complete command line (or the next DATA line). */
void smtpd_deadline_arm(struct session *s)
{
	if (s->cf->smtpd_timeout > 0)
		ev_timer_start(s->loop, &s->deadline, (uint64_t)s->cf->smtpd_timeout, deadline_expired, s);
}

/* tarpit_fire - the delayed error reply goes out; input resumes. */
static void tarpit_fire(void *arg)
{
	struct session *s = arg;
	smtpd_reply(s, "%s", s->pending);
	free(s->pending);
	s->pending = NULL;
	if (s->pending_close) {
		session_close(s);
		return;
	}
	smtpd_session_resume(s);
}

/* smtpd_reply_error - an error reply; counts toward the soft/hard error limits
 * (slow down, then disconnect a client that keeps failing). */
void smtpd_reply_error(struct session *s, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	s->errors++;
	stats_inc(ST_smtp_errors);
	const struct conf *cf = s->cf;
	if (s->errors >= cf->smtpd_hard_error_limit) {
		log_info("%s: too many errors from [%s] after %u commands", s->id, s->addr, s->ncmds);
		smtpd_reply(s, "%s", buf);
		smtpd_reply(s, "421 4.7.0 %s Error: too many errors", cf->myhostname);
		stats_inc(ST_close_errors);
		session_close(s);
		return;
	}
	if (s->errors > cf->smtpd_soft_error_limit && cf->smtpd_error_sleep_time > 0) {
		s->pending = xstrdup(buf);
		smtpd_session_pause(s);
		ev_timer_start(s->loop, &s->tarpit, (uint64_t)cf->smtpd_error_sleep_time, tarpit_fire, s);
		return;
	}
	smtpd_reply(s, "%s", buf);
}

/* smtpd_log_reject - one Postfix-like line per refusal, with the
 * transaction's id inside one (it begins with the session's). */
void smtpd_log_reject(struct session *s, const char *stage, const char *what, const char *to)
{
	log_info("%s: reject: %s from [%s]: %s; from=<%s>%s%s%s helo=<%s>", s->tx ? s->tx->msgid : s->id,
		 stage, s->addr, what, s->tx && s->tx->sender ? s->tx->sender : "", to ? " to=<" : "",
		 to ? to : "", to ? ">" : "", s->helo ? s->helo : "");
}

/* ---- commands --------------------------------------------------------- */

/* helo_ehlo - HELO/EHLO (RFC 5321 §4.1.1.1); EHLO lists our extensions. */
static void helo_ehlo(struct session *s, enum smtp_verb v, char *arg)
{
	while (*arg == ' ')
		arg++;
	char *e = arg + strlen(arg);
	while (e > arg && e[-1] == ' ')
		*--e = 0;
	if (!*arg) {
		smtpd_reply_error(s, "501 5.5.4 Syntax: %s hostname", v == SMTP_EHLO ? "EHLO" : "HELO");
		return;
	}
	if (strlen(arg) > 255) {
		smtpd_reply_error(s, "501 5.5.4 Syntax: hostname too long");
		return;
	}
	smtpd_txn_reset(s);
	smtpd_milter_close(s); /* connect and HELO again with the next MAIL */
	free(s->helo);
	s->helo = xstrdup(arg);
	policy_helo(s->ps, arg); /* judged now, refused at RCPT */
	s->esmtp = v == SMTP_EHLO;
	s->need_ehlo = 0;
	log_info("%s: %s=<%s> from [%s]", s->id, s->esmtp ? "ehlo" : "helo", arg, s->addr);
	const struct conf *cf = s->cf;
	if (!s->esmtp) {
		smtpd_reply(s, "250 %s", cf->myhostname);
		return;
	}
	smtpd_reply(s, "250-%s", cf->myhostname);
	smtpd_reply(s, "250-PIPELINING");
	smtpd_reply(s, "250-SIZE %lld", cf->message_size_limit);
	smtpd_reply(s, "250-ENHANCEDSTATUSCODES");
	smtpd_reply(s, "250-8BITMIME");
	smtpd_reply(s, "250-DSN");
	if (!s->tls && starttls_offered(s))
		smtpd_reply(s, "250-STARTTLS");
	smtpd_reply(s, "250 SMTPUTF8");
}

/* starttls_offered - STARTTLS is advertised and accepted when the level
 * is "may" and a certificate and key are loaded. */
static int starttls_offered(struct session *s)
{
	return s->cf->smtpd_tls_security_level_e == SMTPD_TLS_MAY && tls_server_available();
}

/* tls_done - the handshake after STARTTLS ended. */
static void tls_done(void *arg, int ok, const char *why)
{
	struct session *s = arg;
	if (!ok) {
		int err = conn_tls_error(s->conn);
		log_info("%s: TLS handshake failed from [%s]: reason=%s (%s)", s->id, s->addr,
			 err ? tls_error_class(err) : "io", why);
		tls_count(1, 0, err ? tls_error_class(err) : "io");
		stats_inc(ST_close_protocol);
		log_info("%s: disconnect from [%s] commands=%u messages=%u errors=%d", s->id, s->addr,
			 s->ncmds, s->nmsgs, s->errors);
		session_free(s);
		return;
	}
	char desc[128];
	conn_tls_describe(s->conn, desc, sizeof desc);
	log_info("%s: TLS established from [%s]: %s", s->id, s->addr, desc);
	tls_count(1, 1, NULL);
	s->tls = 1;
	smtpd_session_resume(s);
}

/* cmd_starttls - STARTTLS (RFC 3207 §4): 220, then the handshake; the
 * SMTP state is forgotten and any pipelined input thrown away (§4.2).
 * The table refuses an argument and a second STARTTLS. */
static void cmd_starttls(struct session *s, char *arg)
{
	struct tls_server *ts = starttls_offered(s) ? tls_server_acquire() : NULL;
	if (!ts) {
		smtpd_reply_error(s, "502 5.5.1 Error: command not implemented");
		return;
	}
	smtpd_reply(s, "220 2.0.0 Ready to start TLS");
	/* CVE-2011-0411: what came after the STARTTLS line is never run. */
	conn_discard_input(s->conn);
	smtpd_txn_reset(s);
	smtpd_milter_close(s);
	free(s->helo);
	s->helo = NULL;
	s->esmtp = 0;
	s->need_ehlo = 1;
	smtpd_session_pause(s);
	if (conn_starttls(s->conn, tls_new_server(s->loop, ts), tls_done) < 0)
		session_close(s);
	tls_server_release(ts);
}

/* cmd_helo - HELO. */
static void cmd_helo(struct session *s, char *arg)
{
	helo_ehlo(s, SMTP_HELO, arg);
}

/* cmd_ehlo - EHLO. */
static void cmd_ehlo(struct session *s, char *arg)
{
	helo_ehlo(s, SMTP_EHLO, arg);
}

/* cmd_rset - RSET (RFC 5321 §4.1.1.5; the table refuses an argument). */
static void cmd_rset(struct session *s, char *arg)
{
	smtpd_txn_reset(s);
	smtpd_reply(s, "250 2.0.0 Ok");
}

/* cmd_noop - NOOP (RFC 5321 §4.1.1.9). */
static void cmd_noop(struct session *s, char *arg)
{
	smtpd_reply(s, "250 2.0.0 Ok");
}

/* cmd_vrfy - VRFY (RFC 5321 §3.5.3): 252 when we will not verify but
 * will try. */
static void cmd_vrfy(struct session *s, char *arg)
{
	smtpd_reply(s, "252 2.0.0 Cannot VRFY user; send some mail and we will try");
}

/* cmd_expn - EXPN: we expand no lists. */
static void cmd_expn(struct session *s, char *arg)
{
	smtpd_reply_error(s, "502 5.5.1 Error: EXPN not supported");
}

/* cmd_help - HELP. */
static void cmd_help(struct session *s, char *arg)
{
	smtpd_reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
}

/* cmd_quit - QUIT: 221, then close. */
static void cmd_quit(struct session *s, char *arg)
{
	smtpd_reply(s, "221 2.0.0 Bye");
	stats_inc(ST_close_quit);
	session_close(s);
}

/* cmd_not_implemented - BDAT, AUTH: known verbs we do not offer. */
static void cmd_not_implemented(struct session *s, char *arg)
{
	smtpd_reply_error(s, "502 5.5.1 Error: command not implemented");
}

/* ---- the command table ------------------------------------------------ */

#define R_HELO_FIRST "503 5.5.1 Error: send HELO/EHLO first"
#define R_NESTED_MAIL "503 5.5.1 Error: nested MAIL command"
#define R_NEED_MAIL "503 5.5.1 Error: need MAIL command"
#define R_NEED_RCPT "503 5.5.1 Error: need RCPT command"
/* With PIPELINING all RCPTs may have failed (RFC 2920 §3.1). */
#define R_NO_RCPT "554 5.5.1 Error: no valid recipients"

/* The commands: where each may run, its flags, its handler. The checks
 * here (argument, sequence, TLS) run before the handler, in that order;
 * the handler does the rest (syntax of its argument, policy). HELO/EHLO
 * end a transaction; STARTTLS ends it and wants a new EHLO (RFC 3207
 * §4.2); MAIL starts one. */
static const struct smtpd_cmd smtpd_cmds[SMTP_VERB_COUNT] = {
	[SMTP_HELO] = { "HELO", PH_ANY, CMD_F_LAST, NULL, { 0 }, NULL, cmd_helo },
	[SMTP_EHLO] = { "EHLO", PH_ANY, CMD_F_PRE_TLS | CMD_F_LAST, NULL, { 0 }, NULL, cmd_ehlo },
	[SMTP_MAIL] = { "MAIL",
			PH_BIT(PH_CONNECTED) | PH_BIT(PH_GREETED),
			CMD_F_HELO_REQ | CMD_F_PAUSES, /* milters (milter.h) answer asynchronously */
			NULL,
			{ [PH_CONNECTED] = R_HELO_FIRST,
			  [PH_TLS_STARTED] = R_HELO_FIRST,
			  [PH_MAIL] = R_NESTED_MAIL,
			  [PH_RCPT_NONE] = R_NESTED_MAIL,
			  [PH_RCPT] = R_NESTED_MAIL },
			NULL,
			smtpd_cmd_mail },
	[SMTP_RCPT] = { "RCPT",
			PH_TXN,
			CMD_F_PAUSES,
			NULL,
			{ [PH_CONNECTED] = R_NEED_MAIL, [PH_TLS_STARTED] = R_NEED_MAIL, [PH_GREETED] = R_NEED_MAIL },
			NULL,
			smtpd_cmd_rcpt },
	/* DATA pauses at its final dot, for the scan and the relay. */
	[SMTP_DATA] = { "DATA",
			PH_BIT(PH_RCPT),
			CMD_F_NOARG | CMD_F_LAST | CMD_F_PAUSES,
			"501 5.5.4 Syntax: DATA takes no argument",
			{ [PH_CONNECTED] = R_NEED_MAIL,
			  [PH_TLS_STARTED] = R_NEED_MAIL,
			  [PH_GREETED] = R_NEED_MAIL,
			  [PH_MAIL] = R_NEED_RCPT,
			  [PH_RCPT_NONE] = R_NO_RCPT },
			NULL,
			smtpd_cmd_data },
	[SMTP_RSET] = { "RSET", PH_ANY, CMD_F_NOARG, "501 5.5.4 Syntax: RSET", { 0 }, NULL, cmd_rset },
	[SMTP_NOOP] = { "NOOP", PH_ANY, CMD_F_PRE_TLS | CMD_F_LAST, NULL, { 0 }, NULL, cmd_noop },
	[SMTP_QUIT] = { "QUIT", PH_ANY, CMD_F_PRE_TLS | CMD_F_LAST, NULL, { 0 }, NULL, cmd_quit },
	[SMTP_VRFY] = { "VRFY",
			PH_ANY,
			CMD_F_NEEDARG | CMD_F_LAST,
			"501 5.5.4 Syntax: VRFY address",
			{ 0 },
			NULL,
			cmd_vrfy },
	[SMTP_EXPN] = { "EXPN", PH_ANY, CMD_F_LAST, NULL, { 0 }, NULL, cmd_expn },
	[SMTP_HELP] = { "HELP", PH_ANY, 0, NULL, { 0 }, NULL, cmd_help },
	[SMTP_STARTTLS] = { "STARTTLS",
			    PH_ANY,
			    CMD_F_NOARG | CMD_F_PRE_TLS | CMD_F_LAST | CMD_F_PAUSES,
			    "501 5.5.4 Syntax: STARTTLS takes no argument",
			    { 0 },
			    "503 5.5.1 Error: TLS already active",
			    cmd_starttls },
	[SMTP_BDAT] = { "BDAT", PH_ANY, 0, NULL, { 0 }, NULL, cmd_not_implemented },
	[SMTP_AUTH] = { "AUTH", PH_ANY, 0, NULL, { 0 }, NULL, cmd_not_implemented },
};

/* smtpd_cmd_find - the table's row for v. */
const struct smtpd_cmd *smtpd_cmd_find(enum smtp_verb v)
{
	if ((unsigned)v >= SMTP_VERB_COUNT || !smtpd_cmds[v].name)
		return NULL;
	return &smtpd_cmds[v];
}

/* smtpd_cmd_check - the table's rules, in order: the argument, the
 * sequence (the phase; smtpd_helo_required), TLS. */
enum smtpd_check smtpd_cmd_check(const struct smtpd_cmd *c, enum smtpd_phase ph, unsigned ctx,
				 const char *arg, const char **reply)
{
	if (((c->flags & CMD_F_NOARG) && *arg) || ((c->flags & CMD_F_NEEDARG) && !*arg)) {
		*reply = c->arg_refusal;
		return CMD_BAD_ARG;
	}
	if (!(c->phases & PH_BIT(ph))) {
		*reply = c->refusal[ph];
		return CMD_BAD_PHASE;
	}
	if (ph == PH_CONNECTED && (c->flags & CMD_F_HELO_REQ) && (ctx & CMD_CTX_HELO_REQUIRED)) {
		*reply = c->refusal[ph];
		return CMD_HELO_REQUIRED;
	}
	if (c->tls_refusal && (ctx & CMD_CTX_TLS)) {
		*reply = c->tls_refusal;
		return CMD_TLS_ACTIVE;
	}
	return CMD_OK;
}

/* smtpd_phase - where the session is: a transaction (s->tx) and its
 * recipients, else STARTTLS awaiting EHLO, else HELO given or not. */
enum smtpd_phase smtpd_phase(const struct session *s)
{
	if (s->tx)
		return s->tx->nrcpt ? PH_RCPT : s->tx->rcpt_tried ? PH_RCPT_NONE : PH_MAIL;
	if (s->need_ehlo)
		return PH_TLS_STARTED;
	return s->helo ? PH_GREETED : PH_CONNECTED;
}

/* command_run - a known command: the table's checks, then its handler. */
static void command_run(struct session *s, const struct smtpd_cmd *c, char *arg)
{
	unsigned ctx = (s->tls ? CMD_CTX_TLS : 0) | (s->cf->smtpd_helo_required ? CMD_CTX_HELO_REQUIRED : 0);
	const char *reply = NULL;
	switch (smtpd_cmd_check(c, smtpd_phase(s), ctx, arg, &reply)) {
	case CMD_OK: c->run(s, arg); return;
	case CMD_HELO_REQUIRED:
		/* A policy refusal, logged as one (Postfix's smtpd_helo_required). */
		stats_inc(strcmp(c->name, "RCPT") ? ST_rej_rfc : ST_rej_rcpt_rfc);
		smtpd_log_reject(s, c->name, reply, NULL);
		break;
	default: break;
	}
	smtpd_reply_error(s, "%s", reply);
}

/* command - parse one command line and run it. */
static void command(struct session *s, char *line, size_t len)
{
	enum smtp_verb v;
	const char *args;
	size_t alen;
	s->ncmds++;
	if (memchr(line, 0, len)) {
		smtpd_reply_error(s, "500 5.5.2 Error: NUL in command");
		return;
	}
	if (smtp_cmd_parse(line, len, &v, &args, &alen) != PARSE_OK) {
		smtpd_reply_error(s, "501 5.5.4 Syntax error in parameters");
		return;
	}
	char *arg = (char *)args;
	arg[alen] = 0;
	if (v == SMTP_UNKNOWN && s->cf->smtpd_upstream_proxy_protocol_e == UPSTREAM_PROXY_HAPROXY &&
	    !strncmp(line, "PROXY ", 6)) {
		log_warn("%s: PROXY header from [%s], which is not in smtpd_upstream_proxy_clients; "
			 "disconnecting",
			 s->id, s->addr);
		stats_inc(ST_close_protocol);
		session_close(s);
		return;
	}
	const struct smtpd_cmd *c = smtpd_cmd_find(v);
	if (!c) {
		smtpd_reply_error(s, "500 5.5.2 Error: command not recognized");
		return;
	}
	command_run(s, c, arg);
}

/* session_process - run the buffered commands, in order, until input is
 * exhausted or an asynchronous step pauses us. */
static void session_process(struct session *s)
{
	const struct conf *cf = s->cf;
	while (s->state == ST_CMD || s->state == ST_DATA) {
		if (conn_wpending(s->conn) > WBACKLOG_MAX) {
			/* The client pipelines without reading replies. */
			s->wblocked = 1;
			conn_read_enable(s->conn, 0);
			return;
		}
		size_t len;
		const char *buf = conn_rbuf(s->conn, &len);
		if (!len)
			return;
		if (s->state == ST_DATA) {
			smtpd_data_input(s, buf, len);
			continue;
		}
		if (s->skip_line) {
			const char *nl = memchr(buf, '\n', len);
			size_t n = nl ? (size_t)(nl - buf) + 1 : len;
			conn_consume(s->conn, n);
			if (nl) {
				s->skip_line = 0; /* its 500 went out when it began */
				continue;
			}
			s->skipped += n;
			/* One read may bring many times SKIP_ERROR_BYTES; stop at a
			 * tarpit or the close (the state leaves ST_CMD). */
			while (s->skipped >= SKIP_ERROR_BYTES && s->state == ST_CMD) {
				s->skipped -= SKIP_ERROR_BYTES;
				smtpd_reply_error(s, "500 5.5.2 Error: line too long");
			}
			continue;
		}
		size_t linelen, consumed;
		enum parse_result r =
		    smtp_line_find(buf, len, (size_t)cf->smtpd_command_line_limit, &linelen, &consumed);
		if (r == PARSE_AGAIN)
			return;
		if (r == PARSE_TOO_LONG) {
			conn_consume(s->conn, consumed);
			if (linelen != SIZE_MAX) {
				/* Answered now, not at its end: the end may never come. */
				s->skip_line = 1;
				s->skipped = 0;
			}
			smtpd_reply_error(s, "500 5.5.2 Error: line too long");
			continue;
		}
		char *line = xmalloc(linelen + 1);
		memcpy(line, buf, linelen);
		line[linelen] = 0;
		conn_consume(s->conn, consumed);
		command(s, line, linelen);
		free(line);
		if (s->state != ST_CLOSING)
			smtpd_deadline_arm(s);
	}
}

/* smtpd_enter_state - the one place that changes s->state. The states:
 * ST_PROXY (waiting for the load balancer's PROXY header), ST_GREET
 * (smtpd_greet_pause), ST_CMD (reading commands), ST_DATA (reading the
 * body), ST_BUSY (an asynchronous step runs; input is not read),
 * ST_CLOSING (the last reply is flushed, then the connection ends; final).
 * Where the session is inside its SMTP dialogue (HELO, MAIL, RCPT) is
 * smtpd_phase()'s, not this state's. */
void smtpd_enter_state(struct session *s, enum sstate st)
{
	s->state = st;
}

/* smtpd_session_pause - an asynchronous step begins (a recipient check,
 * the tarpit, the TLS handshake, the scan, the relay): ST_BUSY and no
 * reading, so no later pipelined command runs before this one has its
 * reply (RFC 2920 §3.2). smtpd_session_resume() ends it. */
void smtpd_session_pause(struct session *s)
{
	smtpd_enter_state(s, ST_BUSY);
	conn_read_enable(s->conn, 0);
}

/* smtpd_session_resume - accept input again after an asynchronous step
 * (ST_BUSY becomes ST_CMD) or once our replies drained (the state stays):
 * a new deadline for the next command. Never once closing. */
void smtpd_session_resume(struct session *s)
{
	if (s->state == ST_CLOSING)
		return;
	if (s->sl->drain_cut) {
		smtpd_reply(s, "421 4.3.2 %s Service shutting down", s->cf->myhostname);
		stats_inc(ST_close_shutdown);
		session_close(s);
		return;
	}
	if (s->state == ST_BUSY)
		smtpd_enter_state(s, ST_CMD);
	smtpd_deadline_arm(s);
	conn_read_enable(s->conn, 1);
}

/* on_read - input arrived. */
static void on_read(void *arg)
{
	struct session *s = arg;
	if (s->state == ST_PROXY)
		proxy_input(s);
	else if (s->state == ST_GREET)
		early_talker(s);
	else
		session_process(s);
}

/* on_drain - replies left; resume a client that out-pipelined us. */
static void on_drain(void *arg)
{
	struct session *s = arg;
	if (s->wblocked) {
		s->wblocked = 0;
		smtpd_session_resume(s);
	}
}

/* log_cut - the summary line of a message that ended without a backend's
 * answer (relay_done() logs the others), so that every message's outcome
 * is found under its id. */
static void log_cut(struct session *s, const char *backend, const char *result, const char *why)
{
	const struct txn *tx = s->tx;
	if (!tx)
		return;
	uint64_t ms = tx->t_data_end ? ev_now(s->loop) - tx->t_data_end : 0;
	log_info("%s: from=<%s>, size=%llu, nrcpt=%d, client=[%s], helo=<%s>, backend=%s, "
		 "backend_id=-, result=%s (%s), delay=%.3f",
		 tx->msgid, tx->sender ? tx->sender : "", (unsigned long long)spool_size(tx->spool),
		 tx->nrcpt, s->addr, s->helo ? s->helo : "", backend, result, why, (double)ms / 1000.0);
}

/* session_free - end of session: cancel and release everything. */
static void session_free(struct session *s)
{
	struct smtpd_loop *sl = s->sl;
	if (s->relay && s->tx && s->tx->stream && !s->tx->stream_go) {
		/* relay_while_receiving: the stream is abandoned unfinished */
		smtpd_stream_drop(s, 1);
		log_info("%s: client [%s] gone while its message %s was being received and streamed; "
			 "the backend's transaction was abandoned unfinished",
			 s->id, s->addr, s->tx->msgid);
	}
	if (s->relay && s->av) { /* relay_scan_overlap: no backend completed it */
		relay_cancel(s->relay);
		smtpd_scan_cancel(s);
		s->relay = NULL;
		log_info("%s: client [%s] gone while its message %s was being scanned and relayed", s->id,
			 s->addr, s->tx->msgid);
		log_cut(s, "none", "none", "client gone during the scan; the relay was abandoned unfinished");
	}
	if (s->relay) {
		relay_cancel(s->relay);
		s->relay = NULL;
		log_info("%s: client [%s] gone while its message %s was being relayed", s->id, s->addr,
			 s->tx->msgid);
		log_cut(
		    s, "unknown",
		    "none", "client gone during the relay; cancelled, a backend may have it if the final dot went out");
	}
	if (s->av) {
		smtpd_scan_cancel(s);
		log_info("%s: client [%s] gone while its message %s was being scanned", s->id, s->addr,
			 s->tx->msgid);
		log_cut(s, "none", "none", "client gone during the scan; not relayed");
	} else if (s->state == ST_DATA) {
		log_cut(s, "none", "none", "client gone during DATA; not relayed");
	}
	smtpd_flow_leave(s);
	ev_timer_stop(s->loop, &s->tarpit);
	ev_timer_stop(s->loop, &s->greet);
	ev_timer_stop(s->loop, &s->deadline);
	free(s->pending);
	smtpd_txn_reset(s);
	smtpd_milter_close(s);
	dnscheck_free(s->dns);
	policy_session_free(s->ps); /* after txn_reset cancelled any chain */
	free(s->helo);
	conn_free(s->conn);
	if (s->counted)
		climit_leave(s->addr);
	policy_release(s->pol);
	if (s->prev)
		s->prev->next = s->next;
	else
		sl->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	sl->nsessions--;
	__atomic_sub_fetch(&sessions_total, 1, __ATOMIC_RELAXED);
	free(s);
	if (sl->draining && sl->nsessions == 0) {
		ev_timer_stop(sl->loop, &sl->drain_timer);
		ev_stop(sl->loop);
	}
}

/* on_error - EOF, socket error, or idle timeout. */
static void on_error(void *arg, int err)
{
	struct session *s = arg;
	if (err == ETIMEDOUT && s->state == ST_PROXY) {
		log_warn("%s: no PROXY header from [%s] in time; disconnecting", s->id, s->addr);
		stats_inc(ST_close_timeout);
		session_free(s);
		return;
	}
	if (err == ETIMEDOUT && s->state != ST_CLOSING) {
		log_info("%s: timeout after %u commands from [%s]", s->id, s->ncmds, s->addr);
		smtpd_reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cf->myhostname);
		stats_inc(ST_close_timeout);
		session_close(s);
		return;
	}
	if (s->state != ST_CLOSING) /* EOF or error before we chose to close */
		stats_inc(ST_close_eof);
	if (err && err != ETIMEDOUT)
		log_info("%s: lost connection from [%s]: %s", s->id, s->addr, strerror(err));
	log_info("%s: disconnect from [%s] commands=%u messages=%u errors=%d", s->id, s->addr, s->ncmds,
		 s->nmsgs, s->errors);
	session_free(s);
}

static const struct conn_ops session_ops = {
	.on_read = on_read,
	.on_drain = on_drain,
	.on_error = on_error,
};

/* session_close - flush the last reply, then disconnect. */
static void session_close(struct session *s)
{
	if (s->state == ST_CLOSING)
		return;
	smtpd_enter_state(s, ST_CLOSING);
	ev_timer_stop(s->loop, &s->deadline);
	/* The client is done with us: it may connect again at once. */
	if (s->counted) {
		climit_leave(s->addr);
		s->counted = 0;
	}
	conn_shutdown(s->conn);
}

/* smtpd_session_close - see smtpd_int.h. */
void smtpd_session_close(struct session *s)
{
	session_close(s);
}

/* refuse_now - a one-line refusal on a socket we will not serve. */
static void refuse_now(int fd, const char *msg)
{
	ssize_t w = send(fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w;
	shutdown(fd, SHUT_WR);
	close(fd);
}

/* greet_fire - smtpd_greet_pause is over and the client kept quiet. */
static void greet_fire(void *arg)
{
	struct session *s = arg;
	smtpd_enter_state(s, ST_CMD);
	smtpd_reply(s, "220 %s", s->cf->smtpd_banner);
}

/* early_talker - input before the banner: a client that does not wait
 * for the greeting is no SMTP client (RFC 5321 §3.1, §4.3.1). */
static void early_talker(struct session *s)
{
	ev_timer_stop(s->loop, &s->greet);
	smtpd_enter_state(s, ST_CMD);
	stats_inc(ST_conn_refused_early);
	log_info("%s: reject: CONNECT from [%s]: 554 5.5.1 early talker (data before the greeting)", s->id,
		 s->addr);
	smtpd_reply(s, "554 5.5.1 %s Error: talking before the greeting", s->cf->myhostname);
	session_close(s);
}

/* session_greet - the client is known (directly or through PROXY): its
 * limits, then the greeting. */
static void session_greet(struct session *s)
{
	const struct conf *cf = s->cf;
	if (climit_enter(s->addr, (int)cf->smtpd_client_connection_count_limit) < 0) {
		log_warn("%s: refused connection from [%s]: too many connections from this client", s->id,
			 s->addr);
		stats_inc(ST_conn_refused_client);
		smtpd_reply(s, "421 4.7.0 %s Error: too many connections from %s", cf->myhostname, s->addr);
		session_close(s);
		return;
	}
	s->counted = 1;
	if (cf->smtpd_client_connection_rate_limit > 0 &&
	    crate_hit(s->addr, (int)cf->smtpd_client_connection_rate_limit, ev_wallclock() / 60) < 0) {
		log_warn("%s: refused connection from [%s]: more than %lld connections per minute", s->id,
			 s->addr, cf->smtpd_client_connection_rate_limit);
		stats_inc(ST_conn_refused_rate);
		smtpd_reply(s, "421 4.7.0 %s Error: too many connections from %s", cf->myhostname, s->addr);
		session_close(s);
		return;
	}
	smtpd_enter_state(s, ST_CMD);
	conn_set_timeout(s->conn, (uint64_t)cf->smtpd_timeout);
	smtpd_deadline_arm(s);
	/* DNS checks start now, in the background: the banner does not wait. */
	s->dns = dnscheck_connect(s->loop, cf, s->addr);
	if (cf->smtpd_greet_pause > 0) {
		/* Legitimate clients wait for the banner (RFC 5321 §3.1). */
		smtpd_enter_state(s, ST_GREET);
		ev_timer_start(s->loop, &s->greet, (uint64_t)cf->smtpd_greet_pause, greet_fire, s);
		return;
	}
	smtpd_reply(s, "220 %s", cf->smtpd_banner);
}

/* proxy_input - the PROXY header from the load balancer names the client. */
static void proxy_input(struct session *s)
{
	size_t len, used;
	const char *buf = conn_rbuf(s->conn, &len);
	struct proxy_hdr h;
	enum parse_result r = proxy_parse((const unsigned char *)buf, len, &h, &used);
	if (r == PARSE_AGAIN)
		return;
	if (r != PARSE_OK) {
		log_warn("%s: bad PROXY header from [%s]; disconnecting", s->id, s->addr);
		stats_inc(ST_close_protocol);
		smtpd_enter_state(s, ST_CLOSING);
		conn_shutdown(s->conn);
		return;
	}
	conn_consume(s->conn, used);
	if (h.local) {
		log_info("%s: PROXY v%d LOCAL from [%s]", s->id, h.version, s->addr);
	} else {
		log_info("%s: PROXY v%d from [%s]: client [%s]:%d", s->id, h.version, s->addr, h.src, h.sport);
		snprintf(s->addr, sizeof s->addr, "%s", h.src);
		s->port = h.sport;
		snprintf(s->srv_addr, sizeof s->srv_addr, "%s", h.dst);
		s->srv_port = h.dport;
	}
	session_greet(s);
	/* What followed the header in the same read is the client's. */
	if (s->state == ST_CMD)
		session_process(s);
}

/* proxy_expected - does this peer have to start with a PROXY header? */
static int proxy_expected(const struct conf *cf, const char *peer)
{
	if (cf->smtpd_upstream_proxy_protocol_e == UPSTREAM_PROXY_NONE)
		return 0;
	for (int i = 0; i < cf->smtpd_upstream_proxy_clients.n; i++)
		if (net_addr_match(peer, cf->smtpd_upstream_proxy_clients.v[i]))
			return 1;
	return 0;
}

/* session_start - a new connection: the global limit, then the greeting
 * (or first the PROXY header when it comes from the load balancer). */
static void session_start(struct smtpd_loop *sl, int fd, const struct sockaddr *sa)
{
	char addr[INET6_ADDRSTRLEN];
	net_ntop(sa, addr, sizeof addr);
	struct policy *pol = policy_acquire();
	const struct conf *cf = pol->conf;
	char msg[512];
	int open_now = __atomic_add_fetch(&sessions_total, 1, __ATOMIC_RELAXED);
	if (open_now > cf->max_sessions) {
		__atomic_sub_fetch(&sessions_total, 1, __ATOMIC_RELAXED);
		char id[16];
		smtpd_gen_id(id); /* a session of one line, but an id as every other */
		log_warn("%s: refused connection from [%s]: max_sessions (%lld) reached", id, addr,
			 cf->max_sessions);
		stats_inc(ST_conn_refused_max);
		snprintf(msg, sizeof msg,
			 "421 4.3.2 %s Service temporarily unavailable, too many sessions\r\n", cf->myhostname);
		refuse_now(fd, msg);
		policy_release(pol);
		return;
	}
	int peak = __atomic_load_n(&sessions_peak, __ATOMIC_RELAXED);
	while (open_now > peak &&
	       !__atomic_compare_exchange_n(&sessions_peak, &peak, open_now, 1, __ATOMIC_RELAXED,
					    __ATOMIC_RELAXED))
		;
	struct session *s = xcalloc(1, sizeof *s);
	s->sl = sl;
	s->loop = sl->loop;
	s->pol = pol;
	s->cf = cf;
	memcpy(s->addr, addr, sizeof addr);
	s->port = net_port(sa);
	struct sockaddr_storage local;
	socklen_t llen = sizeof local;
	if (getsockname(fd, (struct sockaddr *)&local, &llen) == 0) {
		net_ntop((struct sockaddr *)&local, s->srv_addr, sizeof s->srv_addr);
		s->srv_port = net_port((struct sockaddr *)&local);
	}
	smtpd_gen_id(s->id);
	s->ps = policy_session_new(pol, s->id, s->addr);
	s->conn = conn_new(sl->loop, fd, &session_ops, s);
	s->next = sl->sessions;
	if (s->next)
		s->next->prev = s;
	sl->sessions = s;
	sl->nsessions++;
	log_info("%s: connect from [%s]:%d", s->id, addr, net_port(sa));
	stats_inc(ST_conn_accepted);
	if (proxy_expected(cf, addr)) {
		smtpd_enter_state(s, ST_PROXY);
		conn_set_timeout(s->conn, (uint64_t)cf->smtpd_upstream_proxy_timeout);
		return;
	}
	session_greet(s);
}

/* listener_retry - accept again after running out of descriptors. */
static void listener_retry(void *arg)
{
	struct listener *l = arg;
	if (!l->sl->draining)
		ev_io_set(l->sl->loop, &l->io, EV_READ);
}

/* on_accept - take every pending connection (until EAGAIN, bounded). */
static void on_accept(void *arg, unsigned events)
{
	struct listener *l = arg;
	(void)events;
	for (int i = 0; i < 256; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
				log_warn("accept: %s; pausing for 100 ms", strerror(errno));
				ev_io_set(l->sl->loop, &l->io, 0);
				ev_timer_start(l->sl->loop, &l->retry, 100, listener_retry, l);
			}
			return;
		}
		session_start(l->sl, fd, (struct sockaddr *)&ss);
	}
}

/* smtpd_loop_start - listen on this loop. */
void smtpd_loop_start(struct ev_loop *loop, const int *fds, int nfds)
{
	struct smtpd_loop *sl = xcalloc(1, sizeof *sl);
	sl->loop = loop;
	sl->nlis = nfds;
	sl->lis = xcalloc((size_t)nfds, sizeof *sl->lis);
	for (int i = 0; i < nfds; i++) {
		struct listener *l = &sl->lis[i];
		l->sl = sl;
		l->fd = fds[i];
		ev_io_init(&l->io, fds[i], on_accept, l);
		ev_io_set(loop, &l->io, EV_READ);
	}
	*ev_slot(loop, EV_SLOT_SMTPD) = sl;
}

/* smtpd_drain_deadline - the latest a relay may end once the drain limit
 * passed: relay_data_done_timeout after it, else UINT64_MAX. */
uint64_t smtpd_drain_deadline(const struct session *s)
{
	if (!s->sl->drain_cut)
		return UINT64_MAX;
	return s->sl->cut_at + (uint64_t)s->cf->relay_data_done_timeout;
}

/* drain_expired - shutdown_timeout passed: close what is left. A session
 * whose message is being scanned or relayed keeps it: after the final dot
 * the backend may already have it, so a 421 now could make the client send
 * a delivered message again, and nothing would log its outcome. The scan
 * ends by av_timeout; the relay by its own deadline, lowered here to
 * relay_data_done_timeout from now (the relay reads msg.deadline at every
 * stage; data_relay() applies it to a relay that starts later). The
 * outcome goes to the client, then smtpd_session_resume() closes. */
static void drain_expired(void *arg)
{
	struct smtpd_loop *sl = arg;
	struct session *s = sl->sessions;
	sl->drain_cut = 1;
	sl->cut_at = ev_now(sl->loop);
	while (s) {
		struct session *next = s->next;
		if (s->state != ST_CLOSING && s->state != ST_DATA && (s->relay || s->av)) {
			if (s->relay && s->tx->msg.deadline > smtpd_drain_deadline(s))
				s->tx->msg.deadline = smtpd_drain_deadline(s);
			log_info("%s: shutdown: message of client [%s] still being %s; "
				 "waiting for its outcome",
				 s->tx->msgid, s->addr, s->relay ? "relayed" : "scanned");
		} else if (s->state != ST_CLOSING) {
			if (s->state == ST_DATA) {
				log_cut(s, "none", "421 4.3.2 Service shutting down", "DATA cut at shutdown");
			}
			ev_timer_stop(s->loop, &s->tarpit);
			smtpd_enter_state(s, ST_CMD);
			smtpd_reply(s, "421 4.3.2 %s Service shutting down", s->cf->myhostname);
			stats_inc(ST_close_shutdown);
			session_close(s);
		}
		s = next;
	}
}

/* smtpd_loop_drain - stop accepting; finish sessions; then stop the loop. */
void smtpd_loop_drain(struct ev_loop *loop, uint64_t timeout_ms)
{
	struct smtpd_loop *sl = *ev_slot(loop, EV_SLOT_SMTPD);
	if (!sl || sl->draining)
		return;
	sl->draining = 1;
	for (int i = 0; i < sl->nlis; i++) {
		ev_io_stop(loop, &sl->lis[i].io);
		ev_timer_stop(loop, &sl->lis[i].retry);
	}
	if (sl->nsessions == 0) {
		ev_stop(loop);
		return;
	}
	ev_timer_start(loop, &sl->drain_timer, timeout_ms, drain_expired, sl);
}
