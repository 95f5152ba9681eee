/*
 * smtpd_txn.c - the mail transaction of a session: MAIL FROM, RCPT TO with
 * its asynchronous policy verdicts (answered in order, RFC 2920), DATA
 * parsed into the spool, then the scan and the relay while the client
 * waits for its reply to the final dot. The session itself (connection,
 * replies, other commands) is smtpd.c's; smtpd_int.h is what they share.
 *
 * Invariants (see also smtpd.c):
 * - The client hears 250 for a message only after a backend said 250 for
 *   it; the relay runs under a deadline of 9 minutes from the final dot.
 * - DATA is parsed by smtp_data_feed(): only CRLF.CRLF ends it; the stored
 *   body is canonical, so no stray CR or bare LF can reach a backend.
 */
#include "smtpd.h"
#include "smtpd_int.h"
#include "rules.h"
#include "relay.h"
#include "av.h"
#include "buf.h"
#include "conn.h"
#include "dnscheck.h"
#include "grey.h"
#include "log.h"
#include "milter.h"
#include "psvc.h"
#include "spool.h"
#include "stats.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the transaction object ------------------------------------------- */

/* txn_new - the transaction an accepted MAIL begins. */
static struct txn *txn_new(void)
{
	return xcalloc(1, sizeof(struct txn));
}

/* milter_idle_expired - no MAIL within the milters' command_timeout:
 * their connections are not held longer. */
static void milter_idle_expired(void *arg)
{
	smtpd_milter_close(arg);
}

/* milter_park - t's milter connections kept for the session's next MAIL
 * (milter.h), at most for their command_timeout. */
static void milter_park(struct session *s, struct txn *t)
{
	s->milter_idle = milter_txn_park(t->milter, t->spool);
	long long ms = s->milter_idle ? milter_txn_idle_ms(s->milter_idle) : 0;
	if (ms > 0)
		ev_timer_start(s->loop, &s->milter_timer, (uint64_t)ms, milter_idle_expired, s);
}

/* smtpd_txn_reset - end the transaction, if any: forget the envelope and
 * body (RSET, HELO, STARTTLS, after a message, end of session). */
void smtpd_txn_reset(struct session *s)
{
	struct txn *t = s->tx;
	if (!t)
		return;
	smtpd_stream_drop(s, 0); /* never ends with a stream unfinished */
	s->tx = NULL;
	free(t->scan_refusal);
	free(t->early);
	free(t->sender);
	free(t->ret);
	free(t->envid);
	for (int i = 0; i < t->nrcpt; i++) {
		free(t->rcpts[i].addr);
		free(t->rcpts[i].notify);
		free(t->rcpts[i].orcpt);
	}
	free(t->rcpts);
	free(t->route);
	free(t->prepend);
	smtpd_rcpt_pending_free(t->rcpt_pending);
	psvc_txn_free(t->psvc);
	/* It had its turn at DATA and ended without a scan: its room in the
	 * backlog goes to the next waiting DATA. */
	if (t->spool && !t->scanned)
		smtpd_flow_kick();
	if (t->milter) /* kept for the next MAIL; a stage in flight may still read the spool */
		milter_park(s, t);
	else
		spool_free(t->spool);
	free(t->rr);
	policy_list_free(&t->backends);
	if (t->t_data_end) /* the message in flight has its answer */
		stats_add(ST_inflight, -1);
	free(t);
}

/* smtpd_milter_close - see smtpd_int.h. */
void smtpd_milter_close(struct session *s)
{
	ev_timer_stop(s->loop, &s->milter_timer);
	milter_txn_free(s->milter_idle, NULL);
	s->milter_idle = NULL;
}

/* dsn_notify_valid - NEVER, or a list of SUCCESS/FAILURE/DELAY (RFC 3461 §4.1). */
static int dsn_notify_valid(const char *v)
{
	if (!strcasecmp(v, "NEVER"))
		return 1;
	const char *p = v;
	while (*p) {
		const char *c = strchr(p, ',');
		size_t l = c ? (size_t)(c - p) : strlen(p);
		if (!((l == 7 && !strncasecmp(p, "SUCCESS", 7)) ||
		      (l == 7 && !strncasecmp(p, "FAILURE", 7)) || (l == 5 && !strncasecmp(p, "DELAY", 5))))
			return 0;
		p += l;
		if (*p == ',')
			p++;
		if (c && !*p)
			return 0;
	}
	return *v != 0;
}

/* why_is_param - smtp_path_parse() refused the ESMTP parameters, not the
 * address: that is 5.5.4 (RFC 3463), not a bad mailbox (5.1.7 / 5.1.3). */
static int why_is_param(const char *why)
{
	return why && strstr(why, "parameter") != NULL;
}

/* path_parse - the path of MAIL or RCPT and its parameters; on an error
 * the 501 is sent (5.5.4 for a parameter, else "<who> address syntax":
 * "5.1.7 Bad sender", "5.1.3 Bad recipient") and -1 returned. */
static int path_parse(struct session *s, char *arg, struct smtp_path *p, const char *who)
{
	const char *why = "syntax error";
	if (smtp_path_parse(arg, s->cf->strict_rfc821_envelopes, p, &why) == PARSE_OK &&
	    (why = policy_addr_check(p->local, p->domain)) == NULL)
		return 0;
	stats_inc(strstr(who, "recipient") ? ST_rej_rcpt_rfc : ST_rej_rfc);
	if (why_is_param(why))
		smtpd_reply_error(s, "501 5.5.4 Syntax error in parameters: %s", why);
	else
		smtpd_reply_error(s, "501 %s address syntax: %s", who, why);
	return -1;
}

/* reply_lines - a reply of one or more CRLF-separated lines (a milter's);
 * the last one counts as an error when err. A 421 closes the session
 * (RFC 5321 §3.8), as Postfix does after a milter's 421. */
static void reply_lines(struct session *s, const char *text, int err)
{
	const char *l = text;
	for (;;) {
		const char *e = strstr(l, "\r\n");
		if (!e)
			break;
		smtpd_reply(s, "%.*s", (int)(e - l), l);
		l = e + 2;
	}
	if (err)
		smtpd_reply_error(s, "%s", l);
	else
		smtpd_reply(s, "%s", l);
	if (!strncmp(text, "421", 3)) {
		log_info("%s: milter reply 421: session closed", s->id);
		smtpd_session_close(s);
	}
}

/* milter_refused - a milter's reject or tempfail: logged, counted. */
static void milter_refused(struct session *s, const char *stage, const struct milter_result *r, const char *to)
{
	char what[1200];
	snprintf(what, sizeof what, "%s (milter %s)", r->reply, r->which);
	for (char *c = what; *c; c++)
		if (*c == '\r' || *c == '\n')
			*c = ' ';
	smtpd_log_reject(s, stage, what, to);
}

/* stage_refused - the milters' verdict on MAIL or DATA: a refusal ends
 * the transaction (1); a discard marks it, to be answered 250 and
 * dropped at its end (0, as continue). */
static int stage_refused(struct session *s, const char *stage, const struct milter_result *r)
{
	if (r->act == MILTER_REJECT || r->act == MILTER_TEMPFAIL) {
		stats_refusal(r->reply);
		milter_refused(s, stage, r, NULL);
		reply_lines(s, r->reply, 1);
		smtpd_txn_reset(s);
		return 1;
	}
	if (r->act == MILTER_DISCARD) {
		log_info("%s: milter %s: discard at %s", s->tx->msgid, r->which, stage);
		s->tx->discard = 1;
	}
	return 0;
}

/* mail_done - the milters' answer to connect, HELO and MAIL. */
static void mail_done(void *arg, struct milter_result *r)
{
	struct session *s = arg;
	smtpd_enter_state(s, ST_CMD);
	if (!stage_refused(s, "MAIL", r))
		smtpd_reply(s, "250 2.1.0 Ok");
	milter_result_free(r);
	if (s->state == ST_CMD)
		smtpd_session_resume(s);
}

/* mail_milters - a transaction with milters: connect lazily, then
 * connect, HELO and MAIL (with its ESMTP arguments) to each. */
static void mail_milters(struct session *s, const struct smtp_path *p)
{
	struct txn *t = s->tx;
	const struct conf *cf = s->cf;
	/* t->msgid, given at MAIL, is the milters' i as the policy services'
	 * queue_id. */
	/* The last transaction's connections when parked (milter.h); else
	 * new ones of the set parsed at load, kept by t across a reload. */
	t->milter = s->milter_idle ? s->milter_idle : milter_txn_new(s->pol->milters);
	if (s->milter_idle)
		milter_txn_reuse(t->milter);
	s->milter_idle = NULL;
	ev_timer_stop(s->loop, &s->milter_timer);
	char port[16], client[300];
	snprintf(port, sizeof port, "%d", s->port);
	const char *name = dnscheck_client_name(s->dns);
	snprintf(client, sizeof client, "%s [%s]", name && *name ? name : "unknown", s->addr);
	milter_connect_info(t->milter, name, s->addr, s->port, s->helo);
	milter_macro(t->milter, "j", cf->myhostname);
	milter_macro(t->milter, "v", "perimd");
	milter_macro(t->milter, "daemon_name", "perimd");
	if (s->srv_addr[0]) /* the address the client connected to (PROXY: its dst) */
		milter_macro(t->milter, "daemon_addr", s->srv_addr);
	milter_macro(t->milter, "_", client);
	milter_macro(t->milter, "client_addr", s->addr);
	milter_macro(t->milter, "client_port", port);
	milter_macro(t->milter, "client_name", name && *name ? name : "unknown");
	milter_macro(t->milter, "i", t->msgid);
	milter_macro(t->milter, "mail_addr", t->sender);
	if (s->tls) {
		char desc[128];
		conn_tls_describe(s->conn, desc, sizeof desc);
		char *w = strstr(desc, " with cipher ");
		if (w) {
			milter_macro(t->milter, "cipher", w + 13);
			*w = 0;
		}
		milter_macro(t->milter, "tls_version", desc);
	}
	struct strbuf esmtp = { 0 };
	for (int i = 0; i < p->nparams; i++)
		sb_printf(&esmtp, "%s%s%s%s", i ? " " : "", p->params[i].key, p->params[i].value ? "=" : "",
			  p->params[i].value ? p->params[i].value : "");
	smtpd_session_pause(s);
	milter_mail(s->loop, t->milter, t->sender, sb_str(&esmtp), mail_done, s);
	sb_free(&esmtp);
}

/* tls_split - "TLSv1.2 with cipher X" (conn_tls_describe) into the
 * protocol, the cipher and its key size in bits. */
static void tls_split(const char *desc, struct psvc_txn *t)
{
	const char *w = strstr(desc, " with cipher ");
	if (!w)
		return;
	snprintf(t->tls_protocol, sizeof t->tls_protocol, "%.*s", (int)(w - desc), desc);
	snprintf(t->tls_cipher, sizeof t->tls_cipher, "%s", w + 13);
	t->tls_bits = strstr(t->tls_cipher, "128")                              ? 128
	    : strstr(t->tls_cipher, "256") || strstr(t->tls_cipher, "CHACHA20") ? 256
										: 0;
}

/* psvc_begin - what the policy services' requests of this transaction
 * carry (smtpd_policy_services); the queue id is the message id. */
static void psvc_begin(struct session *s, unsigned long long size)
{
	if (!s->pol->psvc || !s->pol->psvc->n)
		return;
	struct psvc_txn *t = xcalloc(1, sizeof *t);
	/* The transaction's id (given at MAIL) is both: unique, and what
	 * perimd's log lines of the message carry. */
	snprintf(t->queue_id, sizeof t->queue_id, "%s", s->tx->msgid);
	snprintf(t->instance, sizeof t->instance, "%s", s->tx->msgid);
	t->protocol_name = s->esmtp ? "ESMTP" : "SMTP";
	t->client_port = s->port;
	snprintf(t->server_address, sizeof t->server_address, "%s", s->srv_addr);
	t->server_port = s->srv_port;
	t->size = size;
	if (s->tls) {
		char desc[128];
		conn_tls_describe(s->conn, desc, sizeof desc);
		tls_split(desc, t);
	}
	s->tx->psvc = t;
}

/* smtpd_cmd_mail - MAIL FROM (RFC 5321 §4.1.1.2) with SIZE, BODY, SMTPUTF8, RET,
 * ENVID (RFC 1870, 6152, 6531, 3461); the transaction begins. Its place
 * in the sequence (no transaction yet, HELO/EHLO first) is the command
 * table's (smtpd.c). */
void smtpd_cmd_mail(struct session *s, char *arg)
{
	const struct conf *cf = s->cf;
	struct smtp_path *p = xmalloc(sizeof *p);
	if (path_parse(s, arg, p, "5.1.7 Bad sender") < 0)
		goto out;
	int body8 = 0, utf8 = 0;
	unsigned long long size = 0;
	const char *ret = NULL, *envid = NULL;
	for (int i = 0; i < p->nparams; i++) {
		const char *k = p->params[i].key, *v = p->params[i].value;
		if (!strcasecmp(k, "SIZE")) {
			if (!v || !*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 19) {
				smtpd_reply_error(s, "501 5.5.4 Bad SIZE parameter");
				goto out;
			}
			unsigned long long sz = strtoull(v, NULL, 10);
			size = sz;
			if (sz > (unsigned long long)cf->message_size_limit) {
				stats_inc(ST_rej_size);
				smtpd_log_reject(s, "MAIL", "552 5.3.4 Message size exceeds fixed limit", NULL);
				smtpd_reply(s, "552 5.3.4 Message size exceeds fixed limit");
				goto out;
			}
		} else if (!strcasecmp(k, "BODY")) {
			if (v && !strcasecmp(v, "8BITMIME"))
				body8 = 1;
			else if (!v || strcasecmp(v, "7BIT")) {
				smtpd_reply_error(s, "501 5.5.4 Unsupported BODY type");
				goto out;
			}
		} else if (!strcasecmp(k, "SMTPUTF8")) {
			if (v) {
				smtpd_reply_error(s, "501 5.5.4 SMTPUTF8 takes no value");
				goto out;
			}
			utf8 = 1;
		} else if (!strcasecmp(k, "RET")) {
			if (!v || (strcasecmp(v, "FULL") && strcasecmp(v, "HDRS")) || ret) {
				smtpd_reply_error(s, "501 5.5.4 Bad RET parameter");
				goto out;
			}
			ret = v;
		} else if (!strcasecmp(k, "ENVID")) {
			if (!v || strlen(v) > 100 || !smtp_xtext_valid(v) || envid) {
				smtpd_reply_error(s, "501 5.5.4 Bad ENVID parameter");
				goto out;
			}
			envid = v;
		} else {
			smtpd_reply_error(s, "555 5.5.4 Unsupported option: %s", k);
			goto out;
		}
	}
	if (p->utf8 && !utf8) {
		smtpd_reply_error(s, "553 5.6.7 Non-ASCII sender address needs SMTPUTF8");
		goto out;
	}
	s->tx = txn_new();
	snprintf(s->tx->msgid, sizeof s->tx->msgid, "%s.%04u", s->id, ++s->ntx % 10000);
	s->tx->sender = xstrdup(p->addr);
	policy_mail(s->ps, s->tx->sender);
	s->tx->body8 = body8;
	s->tx->smtputf8 = utf8;
	s->tx->ret = ret ? xstrdup(ret) : NULL;
	s->tx->envid = envid ? xstrdup(envid) : NULL;
	psvc_begin(s, size);
	dnscheck_mail(s->dns, s->tx->sender); /* looked up now, refused at RCPT */
	/* The transaction's first line, as Postfix's "QUEUEID: client=". */
	log_info("%s: client=[%s], helo=<%s>, from=<%s>", s->tx->msgid, s->addr, s->helo ? s->helo : "",
		 s->tx->sender);
	if (milter_enabled(cf))
		mail_milters(s, p);
	else
		smtpd_reply(s, "250 2.1.0 Ok");
out:
	free(p);
}

/* rcpt_refuse - a refused recipient: logged, counted as an error. */
static void rcpt_refuse(struct session *s, const char *to, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rcpt_refuse(struct session *s, const char *to, const char *fmt, ...)
{
	char buf[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	smtpd_log_reject(s, "RCPT", buf, to);
	smtpd_reply_error(s, "%s", buf);
}

/* smtpd_rcpt_pending_free - a recipient whose checks ended. */
void smtpd_rcpt_pending_free(struct rcpt_pending *rp)
{
	if (!rp)
		return;
	if (rp->req)
		policy_cancel(rp->req);
	policy_domain_free(rp->dom);
	free(rp->addr);
	free(rp->local);
	free(rp->domain);
	free(rp->notify);
	free(rp->orcpt);
	free(rp->route);
	free(rp);
}

/* prepend_add - PREPEND header lines of a verdict, each once per message. */
static void prepend_add(struct txn *t, const char *lines)
{
	while (*lines) {
		const char *e = strstr(lines, "\r\n");
		size_t n = e ? (size_t)(e - lines) + 2 : strlen(lines);
		size_t have = t->prepend ? strlen(t->prepend) : 0;
		int dup = 0;
		for (const char *p = t->prepend; p && *p && !dup;) {
			const char *pe = strstr(p, "\r\n");
			size_t pn = pe ? (size_t)(pe - p) + 2 : strlen(p);
			dup = pn == n && !memcmp(p, lines, n);
			p += pn;
		}
		if (!dup && have + n < 8192) {
			t->prepend = xrealloc(t->prepend, have + n + 1);
			memcpy(t->prepend + have, lines, n);
			t->prepend[have + n] = 0;
		}
		lines += n;
	}
}

/* rcpt_add - the pending recipient passed every check: add it. */
static void rcpt_add(struct session *s)
{
	struct rcpt_pending *rp = s->tx->rcpt_pending;
	s->tx->rcpt_pending = NULL;
	if (!s->tx->route_set) {
		s->tx->route_set = 1;
		s->tx->route = rp->route;
		rp->route = NULL;
	}
	if (s->tx->nrcpt == s->tx->caprcpt) {
		s->tx->caprcpt = s->tx->caprcpt ? 2 * s->tx->caprcpt : 4;
		s->tx->rcpts = xrealloc(s->tx->rcpts, (size_t)s->tx->caprcpt * sizeof *s->tx->rcpts);
	}
	struct rcpt *r = &s->tx->rcpts[s->tx->nrcpt++];
	r->addr = rp->addr;
	r->notify = rp->notify;
	r->orcpt = rp->orcpt;
	r->discard = rp->discard;
	rp->addr = rp->notify = rp->orcpt = NULL;
	smtpd_rcpt_pending_free(rp);
	smtpd_reply(s, "250 2.1.5 Ok");
}

/* rcpt_milter_done - the milters' verdict on the pending recipient; a
 * role account (RFC 2142) is exempt from their refusals, as from the
 * client and sender checks. */
static void rcpt_milter_done(void *arg, struct milter_result *r)
{
	struct session *s = arg;
	struct rcpt_pending *rp = s->tx->rcpt_pending;
	smtpd_enter_state(s, ST_CMD);
	if ((r->act == MILTER_REJECT || r->act == MILTER_TEMPFAIL) && policy_is_role(s->pol, rp->local)) {
		log_info("%s: milter %s refused role account <%s> (%s): accepted", s->tx->msgid, r->which,
			 rp->addr, r->reply);
	} else if (r->act == MILTER_REJECT || r->act == MILTER_TEMPFAIL) {
		s->tx->rcpt_pending = NULL;
		stats_reject_rule(r->reply[0] == '4' ? "tempfail_milter" : "milter"); /* a recipient */
		milter_refused(s, "RCPT", r, rp->addr);
		reply_lines(s, r->reply, 1);
		smtpd_rcpt_pending_free(rp);
		goto out;
	} else if (r->act == MILTER_DISCARD) {
		log_info("%s: milter %s: discard at RCPT <%s>", s->tx->msgid, r->which, rp->addr);
		s->tx->discard = 1;
	}
	rcpt_add(s);
out:
	milter_result_free(r);
	if (s->state == ST_CMD)
		smtpd_session_resume(s);
}

/* rcpt_finish - the verdict on the pending recipient: refuse it, ask the
 * milters, or add it. Returns 1 while the milters are asked. */
static int rcpt_finish(struct session *s, const struct policy_verdict *v)
{
	struct rcpt_pending *rp = s->tx->rcpt_pending;
	rp->req = NULL;
	if (v->code) {
		s->tx->rcpt_pending = NULL;
		stats_reject_rule(v->rule);
		smtpd_log_reject(s, "RCPT", v->reply, rp->addr);
		smtpd_reply_error(s, "%s", v->reply);
		smtpd_rcpt_pending_free(rp);
		return 0;
	}
	if (v->rule && !strcmp(v->rule, GREY_RULE_PASS))
		s->tx->grey_pass = 1;
	if (v->discard || rp->discard)
		log_info("%s: discard: RCPT from [%s]: <%s>: %s", s->tx->msgid, s->addr, rp->addr,
			 rp->discard   ? "transport_maps"
			     : v->rule ? v->rule
				       : "access");
	rp->discard = rp->discard || v->discard;
	prepend_add(s->tx, v->prepend);
	if (s->tx->milter && !s->tx->discard) {
		milter_macro(s->tx->milter, "rcpt_addr", rp->addr);
		char esmtp[1100];
		snprintf(esmtp, sizeof esmtp, "%s%s%s%s", rp->notify ? "NOTIFY=" : "",
			 rp->notify ? rp->notify : "", rp->orcpt ? (rp->notify ? " ORCPT=" : "ORCPT=") : "",
			 rp->orcpt ? rp->orcpt : "");
		milter_rcpt(s->loop, s->tx->milter, rp->addr, esmtp, rcpt_milter_done, s);
		return 1;
	}
	rcpt_add(s);
	return 0;
}

/* rcpt_verdict - an asynchronous check finished: answer, read on. */
static void rcpt_verdict(void *arg, const struct policy_verdict *v)
{
	struct session *s = arg;
	smtpd_enter_state(s, ST_CMD);
	if (rcpt_finish(s, v))
		smtpd_session_pause(s);
	else if (s->state == ST_CMD)
		smtpd_session_resume(s);
}

/* rcpt_routed - relay control and routing answered (res) for the pending
 * recipient: refuse it, or run the verdict chain. 1 when it is decided
 * (the reply given), 0 when the chain or the milters went asynchronous. */
static int rcpt_routed(struct session *s, const struct policy_dom_result *res)
{
	const struct conf *cf = s->cf;
	struct rcpt_pending *rp = s->tx->rcpt_pending;
	/* RFC 5321 §4.5.1: <Postmaster> without a domain is always ours. */
	if (rp->domain[0]) {
		if (res->relay < 0 || (res->relay > 0 && res->route_failed)) {
			rcpt_refuse(s, rp->addr, "451 4.3.0 <%s>: temporary lookup failure", rp->addr);
			goto drop;
		}
		/* Sender-specified routing (user%remote@ours, remote!user@ours,
		 * "user@remote"@ours): a backend that honours the percent hack
		 * or a bang path would relay it on, making the site an open
		 * relay through us. Refused as relaying, as Postfix does by
		 * default (allow_untrusted_routing = no). */
		if (res->relay == 0 || strpbrk(rp->local, "@%!")) {
			stats_inc(ST_rej_relay_denied);
			rcpt_refuse(s, rp->addr, "550 5.7.1 <%s>: relay access denied", rp->addr);
			goto drop;
		}
	}
	const char *route = res->have_route ? res->route : NULL;
	int rcode;
	char renh[16], rtext[320];
	if (route && relay_route_refusal(route, &rcode, renh, sizeof renh, rtext, sizeof rtext)) {
		/* transport_maps error: / retry:, as Postfix's error(8), but
		 * refused now: perimd never bounces. */
		stats_reject_rule("access_transport");
		rcpt_refuse(s, rp->addr, "%d %s <%s>: %s", rcode, renh, rp->addr, rtext);
		goto drop;
	}
	if (!route && cf->relay_backends.n == 0) {
		rcpt_refuse(s, rp->addr, "451 4.3.5 <%s>: no backend configured", rp->addr);
		goto drop;
	}
	if (s->tx->route_set) {
		int same = (!route && !s->tx->route) || (route && s->tx->route && !strcmp(route, s->tx->route));
		if (!same) {
			smtpd_log_reject(s, "RCPT", "452 4.5.3 Error: too many recipients (other backend)",
					 rp->addr);
			smtpd_reply(
			    s, "452 4.5.3 Error: too many recipients for this transaction; send in a new one");
			goto drop;
		}
	}
	rp->route = route ? xstrdup(route) : NULL;
	rp->discard = route && relay_route_discard(route);
	rp->env = (struct policy_env){
		.loop = s->loop,
		.pol = s->pol,
		.session_id = s->tx->msgid, /* its lines carry the transaction id */
		.client_addr = s->addr,
		.helo = s->helo ? s->helo : "",
		.sender = s->tx->sender,
		.rcpt = rp->addr,
		.rcpt_local = rp->local,
		.rcpt_domain = rp->domain,
		.dns = s->dns,
		.sess = s->ps,
		.route = rp->route,
		.psvc = s->tx->psvc,
	};
	struct policy_verdict v;
	if (!policy_rcpt(&rp->env, &v, rcpt_verdict, s, &rp->req))
		return 0;
	return !rcpt_finish(s, &v); /* 1 while the milters are asked */
drop:
	s->tx->rcpt_pending = NULL;
	smtpd_rcpt_pending_free(rp);
	return 1;
}

/* rcpt_domain_done - an asynchronous relay_domains or transport_maps
 * lookup answered: go on with the recipient, read on once it is decided. */
static void rcpt_domain_done(void *arg, const struct policy_dom_result *res)
{
	struct session *s = arg;
	struct rcpt_pending *rp = s->tx->rcpt_pending;
	struct policy_dom_result r = *res;
	policy_domain_free(rp->dom); /* res pointed into it */
	rp->dom = NULL;
	smtpd_enter_state(s, ST_CMD);
	if (!rcpt_routed(s, &r))
		smtpd_session_pause(s);
	else if (s->state == ST_CMD)
		smtpd_session_resume(s);
}

/* smtpd_cmd_rcpt - RCPT TO (RFC 5321 §4.1.1.3): relay control, verdict cache,
 * routing (one backend list per transaction), limits. The command table
 * runs it only inside a transaction. */
void smtpd_cmd_rcpt(struct session *s, char *arg)
{
	const struct conf *cf = s->cf;
	s->tx->rcpt_tried = 1;
	struct smtp_path *p = xmalloc(sizeof *p);
	if (path_parse(s, arg, p, "5.1.3 Bad recipient") < 0)
		goto out;
	if (!p->addr[0]) {
		smtpd_reply_error(s, "501 5.1.3 Bad recipient address syntax: null recipient");
		goto out;
	}
	const char *notify = NULL, *orcpt = NULL;
	for (int i = 0; i < p->nparams; i++) {
		const char *k = p->params[i].key, *v = p->params[i].value;
		if (!strcasecmp(k, "NOTIFY") && v && !notify && dsn_notify_valid(v)) {
			notify = v;
		} else if (!strcasecmp(k, "ORCPT") && v && !orcpt) {
			const char *semi = strchr(v, ';');
			if (!semi || semi == v || !smtp_xtext_valid(semi + 1) || strlen(v) > 500) {
				smtpd_reply_error(s, "501 5.5.4 Bad ORCPT parameter");
				goto out;
			}
			orcpt = v;
		} else if (!strcasecmp(k, "NOTIFY") || !strcasecmp(k, "ORCPT")) {
			smtpd_reply_error(s, "501 5.5.4 Bad %s parameter", k);
			goto out;
		} else {
			smtpd_reply_error(s, "555 5.5.4 Unsupported option: %s", k);
			goto out;
		}
	}
	if (p->utf8 && !s->tx->smtputf8) {
		smtpd_reply_error(s, "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8");
		goto out;
	}
	if (s->tx->nrcpt >= cf->smtpd_recipient_limit) {
		smtpd_log_reject(s, "RCPT", "452 4.5.3 Error: too many recipients", p->addr);
		/* As Postfix's smtpd_recipient_overshoot_limit: a client that
		 * keeps sending far past the limit (the overshoot is as large
		 * as the limit itself) is an error each time, so it ends. */
		if (++s->tx->overshoot > cf->smtpd_recipient_limit)
			smtpd_reply_error(s, "452 4.5.3 Error: too many recipients");
		else
			smtpd_reply(s, "452 4.5.3 Error: too many recipients");
		goto out;
	}
	/* The recipient passed the syntax checks: relay control and routing
	 * (maps of any type: asynchronous ones pause the session), then the
	 * verdict chain. */
	struct rcpt_pending *rp = xcalloc(1, sizeof *rp);
	rp->addr = xstrdup(p->addr);
	rp->local = xstrdup(p->local);
	rp->domain = xstrdup(p->domain);
	for (char *d = rp->domain; *d; d++)
		*d = (char)tolower((unsigned char)*d);
	rp->notify = notify ? xstrdup(notify) : NULL;
	rp->orcpt = orcpt ? xstrdup(orcpt) : NULL;
	s->tx->rcpt_pending = rp;
	struct policy_dom_result res;
	if (!policy_domain(s->pol, rp->domain, s->loop, rcpt_domain_done, s, &res, &rp->dom) ||
	    !rcpt_routed(s, &res))
		smtpd_session_pause(s);
out:
	free(p);
}

/* received_header - perimd's trace field (RFC 5321 §4.4). */
static void received_header(struct session *s)
{
	char date[64], buf[1536];
	time_t now = time(NULL);
	struct tm tm;
	localtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
	/* RFC 3848 §2 / RFC 6531 §3.7.3: the S says TLS was used. */
	const char *proto = s->tx->smtputf8 ? (s->esmtp ? (s->tls ? "UTF8SMTPS" : "UTF8SMTP") : "UTF8SMTP")
					    : (s->esmtp ? (s->tls ? "ESMTPS" : "ESMTP") : "SMTP");
	char helo[256];
	size_t j = 0;
	for (const char *h = s->helo ? s->helo : "unknown"; *h && j < sizeof helo - 1; h++)
		helo[j++] = (*h > ' ' && *h < 127 && *h != '(' && *h != ')') ? *h : '_';
	helo[j] = 0;
	char tls[160] = "";
	if (s->tls) {
		char desc[128];
		conn_tls_describe(s->conn, desc, sizeof desc);
		snprintf(tls, sizeof tls, "\r\n\t(using %s)", desc);
	}
	int n = snprintf(
	    buf, sizeof buf, "Received: from %s (unknown [%s%s])%s\r\n\tby %s (perimd) with %s id %s", helo,
	    strchr(s->addr, ':') ? "IPv6:" : "", s->addr, tls, s->cf->myhostname, proto, s->tx->msgid);
	if (s->tx->nrcpt == 1 && strlen(s->tx->rcpts[0].addr) < 300)
		n += snprintf(buf + n, sizeof buf - (size_t)n, "\r\n\tfor <%s>", s->tx->rcpts[0].addr);
	n += snprintf(buf + n, sizeof buf - (size_t)n, "; %s\r\n", date);
	if (spool_append(s->tx->spool, buf, (size_t)n) < 0)
		s->tx->data_err = errno == ENOSPC ? DE_SPOOL_FULL : DE_IO;
}

/* prepend_headers - the PREPEND answers of the policy services and the
 * access maps, above perimd's Received: field, as Postfix's smtpd writes
 * them. */
static void prepend_headers(struct session *s)
{
	const struct psvc_txn *t = s->tx->psvc;
	for (int i = 0; t && i < t->nprepend && s->tx->data_err == DE_NONE; i++) {
		log_info("%s: prepend: header %s; from=<%s>", s->tx->msgid, t->prepend[i], s->tx->sender);
		if (spool_append(s->tx->spool, t->prepend[i], strlen(t->prepend[i])) < 0 ||
		    spool_append(s->tx->spool, "\r\n", 2) < 0)
			s->tx->data_err = errno == ENOSPC ? DE_SPOOL_FULL : DE_IO;
	}
	if (s->tx->prepend && s->tx->data_err == DE_NONE &&
	    spool_append(s->tx->spool, s->tx->prepend, strlen(s->tx->prepend)) < 0)
		s->tx->data_err = errno == ENOSPC ? DE_SPOOL_FULL : DE_IO;
}

static struct relay_msg *msg_prepare(struct session *s);
static void stream_done(void *arg, const struct relay_result *r);
static int all_discarded(const struct session *s);

/* stream_usable - relay_while_receiving applies: the message cannot change
 * after its header section (no milter, no header_checks: overlap_usable's
 * rule) and some recipient is to be relayed. */
static int stream_usable(const struct session *s)
{
	return s->cf->relay_while_receiving && !milter_enabled(s->cf) && !s->tx->milter &&
	    !s->pol->header_checks && !s->tx->discard && !all_discarded(s);
}

/* stream_start - at the 354: relay the body while it arrives, when an
 * idle pooled connection to the backend is there now (relay_stream());
 * otherwise the message takes the usual path after the final dot. */
static void stream_start(struct session *s)
{
	if (!stream_usable(s))
		return;
	struct relay_msg *m = msg_prepare(s);
	m->stream = 1;
	m->growing = 1;
	m->size = 0; /* not known yet: no SIZE= */
	m->deadline = ev_now(s->loop) + RELAY_DEADLINE_MS;
	s->relay = relay_stream(s->loop, m, stream_done, s);
	if (!s->relay) {
		stats_inc(ST_stream_unavailable);
		return;
	}
	s->tx->stream = 1;
}

/* smtpd_stream_drop - the streamed message will not be completed (refused,
 * or the client gone): the backend's transaction is abandoned, counted. */
void smtpd_stream_drop(struct session *s, int gone)
{
	if (!s->tx || !s->tx->stream || !s->relay)
		return;
	relay_stream_drop(s->relay);
	s->relay = NULL;
	s->tx->stream = 0;
	stats_inc(gone ? ST_stream_ab_gone : ST_stream_ab_refused);
}

/* data_begin - the 354: start storing the body. */
static void data_begin(struct session *s)
{
	s->tx->spool = spool_new();
	s->tx->data_err = DE_NONE;
	prepend_headers(s);
	received_header(s);
	if (s->tx->data_err == DE_SPOOL_FULL) {
		stats_inc(ST_rej_spool_full);
		smtpd_log_reject(s, "DATA", "452 4.3.1 insufficient system storage", NULL);
		smtpd_reply(s, "452 4.3.1 Insufficient system storage");
		smtpd_txn_reset(s);
		return;
	}
	smtp_data_init(&s->tx->dp,
		       s->cf->smtpd_forbid_bare_newline_e == BARE_NEWLINE_REJECT ? SMTP_BARE_REJECT
										 : SMTP_BARE_NORMALIZE);
	smtpd_enter_state(s, ST_DATA);
	smtpd_reply(s, "354 End data with <CR><LF>.<CR><LF>");
	stream_start(s);
}

/* data_milter_done - the milters' answer to DATA. */
static void data_milter_done(void *arg, struct milter_result *r)
{
	struct session *s = arg;
	smtpd_enter_state(s, ST_CMD);
	if (!stage_refused(s, "DATA", r))
		data_begin(s);
	milter_result_free(r);
	smtpd_session_resume(s);
}

/* data_go - DATA may begin: the milters are asked, then the body is stored. */
static void data_go(struct session *s)
{
	if (s->tx->milter && !s->tx->discard) {
		smtpd_session_pause(s);
		milter_data(s->loop, s->tx->milter, data_milter_done, s);
		return;
	}
	data_begin(s);
}

/* flow_go - a DATA that waited for the scanner's backlog goes on. */
static void flow_go(void *arg)
{
	struct session *s = arg;
	smtpd_enter_state(s, ST_CMD);
	data_go(s);
	if (s->state != ST_BUSY)
		smtpd_session_resume(s);
}

/* smtpd_scan_cancel - see smtpd_int.h. */
void smtpd_scan_cancel(struct session *s)
{
	if (!s->av)
		return;
	av_cancel(s->av);
	s->av = NULL;
	smtpd_flow_scan_end(s->cf);
}

/* smtpd_cmd_data - DATA (RFC 5321 §4.1.1.4): in_flow_delay, the milters,
 * then the body is stored. The command table runs it only once a
 * recipient was accepted. */
void smtpd_cmd_data(struct session *s, char *arg)
{
	if (!s->tx->discard && !all_discarded(s) && smtpd_flow_wait(s, flow_go))
		return;
	data_go(s);
}

static void scan_refused(struct session *s, const char *refusal);

/* relay_done - the backend's verdict: the client hears it now. */
static void relay_done(void *arg, const struct relay_result *r)
{
	struct session *s = arg;
	s->relay = NULL;
	if (s->tx->overlap && s->av) { /* the scan decides first */
		s->tx->early = xmalloc(sizeof *r);
		*s->tx->early = *r;
		return;
	}
	if (s->tx->overlap && s->tx->scan_refusal) { /* abandoned unfinished */
		scan_refused(s, s->tx->scan_refusal);
		return;
	}
	uint64_t ms = ev_now(s->loop) - s->tx->t_data_end;
	/* Where the time went: scan, wait for a backend connection, the rest. */
	uint64_t scan_ms = s->tx->t_scanned > s->tx->t_data_end ? s->tx->t_scanned - s->tx->t_data_end : 0;
	if (scan_ms > ms)
		scan_ms = ms;
	stats_message_done(r->code, ms);
	/* A greylisting pass counts toward the auto-whitelist once its
	 * message is accepted. */
	if (r->code < 300 && s->tx->grey_pass)
		grey_accepted(s->loop, s->pol, s->addr, s->tx->sender);
	/* perimd never bounces: a 5xx is the client's to bounce ("rejected"),
	 * a 4xx the client's to retry ("deferred"). */
	for (int i = 0; i < s->tx->msg.nrcpt; i++) {
		const struct relay_rcpt *rr = &s->tx->rr[i];
		int code = rr->code >= 400 ? rr->code : r->code;
		log_info("%s: to=<%s>, relay=%s, delay=%.3f, status=%s (%s)", s->tx->msgid, rr->addr,
			 r->backend[0] ? r->backend : "none", (double)ms / 1000.0,
			 code < 300       ? "sent"
			     : code < 500 ? "deferred"
					  : "rejected",
			 rr->code >= 400           ? rr->reply
			     : r->backend_reply[0] ? r->backend_reply
						   : r->text);
	}
	log_info("%s: from=<%s>, size=%llu, nrcpt=%d, client=[%s], helo=<%s>, backend=%s, backend_id=%s, "
		 "result=%d %s %s, delay=%.3f, delays=%.3f/%.3f/%.3f",
		 s->tx->msgid, s->tx->sender, (unsigned long long)spool_size(s->tx->spool), s->tx->nrcpt,
		 s->addr, s->helo ? s->helo : "", r->backend[0] ? r->backend : "none",
		 r->queue_id[0] ? r->queue_id : "-", r->code, r->enh, r->text, (double)ms / 1000.0,
		 (double)scan_ms / 1000.0, (double)r->waited_ms / 1000.0,
		 (double)(ms - scan_ms - (r->waited_ms < ms - scan_ms ? r->waited_ms : ms - scan_ms)) / 1000.0);
	if (r->enh[0])
		smtpd_reply(s, "%d %s %s", r->code, r->enh, r->text);
	else
		smtpd_reply(s, "%d %s", r->code, r->text);
	if (r->code < 300)
		s->nmsgs++;
	smtpd_txn_reset(s);
	smtpd_session_resume(s);
}

static void data_relay(struct session *s);
static void scan_or_relay(struct session *s);

/* stream_done - the outcome of a stream (relay_while_receiving): once the
 * final dot went out, the backend's verdict for the client; else (code 0)
 * the stream was given up and the message takes the usual path: at once
 * when every verdict was already clean, else after the final dot or the
 * scan. */
static void stream_done(void *arg, const struct relay_result *r)
{
	struct session *s = arg;
	s->relay = NULL;
	s->tx->stream = 0;
	if (r->code) {
		stats_inc(ST_stream_done);
		relay_done(arg, r);
		return;
	}
	if (s->tx->stream_go)
		data_relay(s);
}

/* scan_refused - the scan refused the message: the client hears why. */
static void scan_refused(struct session *s, const char *refusal)
{
	stats_refusal(refusal);
	smtpd_log_reject(s, "END-OF-MESSAGE", refusal, NULL);
	smtpd_reply(s, "%s", refusal);
	smtpd_txn_reset(s);
	smtpd_session_resume(s);
}

/* overlap_verdict - the scan's verdict on a message relayed meanwhile
 * (relay_scan_overlap): the relay ends the backend's transaction only on
 * a clean verdict and abandons it on a refusal; when the relay already
 * ended (it can only have failed: the end waits for this verdict), the
 * refusal, else the relay's outcome, is the reply. */
static void overlap_verdict(struct session *s, const char *refusal)
{
	struct txn *t = s->tx;
	if (refusal)
		t->scan_refusal = xstrdup(refusal);
	if (s->relay) {
		relay_release(s->relay, !refusal);
		return;
	}
	struct relay_result *early = t->early;
	t->early = NULL;
	if (refusal || !early)
		scan_refused(s, refusal ? refusal : "451 4.3.0 Error: internal error");
	else
		relay_done(s, early);
	free(early);
}

/* stream_release - every verdict on a streamed message is clean: the
 * backend's transaction is completed (relay_release()). */
static void stream_release(struct session *s)
{
	s->tx->stream_go = 1;
	smtpd_session_pause(s);
	relay_release(s->relay, 1);
}

/* av_done - the content scanner's verdict (refusal NULL: pass it on). */
static void av_done(void *arg, const char *refusal)
{
	struct session *s = arg;
	s->av = NULL;
	smtpd_flow_scan_end(s->cf);
	s->tx->t_scanned = ev_now(s->loop);
	if (s->tx->stream) { /* the stream waits for this verdict */
		if (refusal) {
			smtpd_stream_drop(s, 0);
			scan_refused(s, refusal);
			return;
		}
		stream_release(s);
		return;
	}
	if (s->tx->overlap) {
		overlap_verdict(s, refusal);
		return;
	}
	if (!refusal) {
		data_relay(s);
		return;
	}
	scan_refused(s, refusal);
}

/* log_message_id - the message's Message-ID header field, logged as
 * Postfix's cleanup does ("message-id=<>" when it has none); only the
 * first MSGID_SCAN bytes are read. */
#define MSGID_SCAN (32 * 1024)
static void log_message_id(struct session *s)
{
	char *head = xmalloc(MSGID_SCAN), mid[256];
	ssize_t n = spool_read(s->tx->spool, 0, head, MSGID_SCAN);
	smtp_header_value(head, n > 0 ? (size_t)n : 0, "Message-ID", mid, sizeof mid);
	free(head);
	size_t l = strlen(mid);
	int bracketed = l >= 2 && mid[0] == '<' && mid[l - 1] == '>';
	log_info("%s: message-id=%s%s%s", s->tx->msgid, bracketed ? "" : "<", mid, bracketed ? "" : ">");
}

/* message_discard - DISCARD (a milter, an access map, header_checks):
 * the client hears 250 and nothing is relayed (the one exception to
 * "250 only after a backend's 250"; logged and counted). */
static void message_discard(struct session *s, const char *why)
{
	stats_inc(ST_msg_discarded);
	log_info("%s: discarded: from=<%s>, nrcpt=%d, client=[%s], size=%llu: discarded by %s", s->tx->msgid,
		 s->tx->sender, s->tx->nrcpt, s->addr, (unsigned long long)spool_size(s->tx->spool), why);
	smtpd_reply(s, "250 2.0.0 Ok: queued as %s", s->tx->msgid);
	s->nmsgs++;
	smtpd_txn_reset(s);
	smtpd_session_resume(s);
}

/* all_discarded - no recipient of the transaction is to be relayed. */
static int all_discarded(const struct session *s)
{
	for (int i = 0; i < s->tx->nrcpt; i++)
		if (!s->tx->rcpts[i].discard)
			return 0;
	return 1;
}

/* header_checks - header_checks on the stored message, before the scan:
 * 1 go on (the message maybe rewritten), 0 answered (refused or
 * discarded; the transaction is over). */
static int header_checks(struct session *s)
{
	struct rules_hc hc;
	const char *refusal = NULL;
	if (rules_header_checks(s->pol->header_checks, s->tx->spool, s->tx->msgid, &hc) < 0)
		refusal = "451 4.3.0 Error: queue file write error";
	else if (hc.verdict == RULES_HC_REFUSE)
		refusal = hc.reply;
	if (refusal) {
		stats_add(ST_inflight, -1);
		s->tx->t_data_end = 0;
		stats_refusal(refusal);
		smtpd_log_reject(s, "END-OF-MESSAGE", refusal, NULL);
		smtpd_reply(s, "%s", refusal);
		smtpd_txn_reset(s);
		return 0;
	}
	if (hc.verdict == RULES_HC_DISCARD) {
		message_discard(s, "header_checks DISCARD");
		return 0;
	}
	if (hc.rewritten) {
		spool_free(s->tx->spool);
		s->tx->spool = hc.rewritten;
	}
	return 1;
}

/* milter_addr - an address a milter gives (a new sender, an added
 * recipient), checked as a client's in brackets would be: one address,
 * no spaces, line breaks or ESMTP arguments in it. The address as
 * parsed (allocated), or NULL with *why. */
static char *milter_addr(const char *addr, const char **why)
{
	char buf[1100];
	struct smtp_path *p = xmalloc(sizeof *p);
	char *out = NULL;
	if (strlen(addr) > sizeof buf - 3)
		*why = "address too long";
	else if (snprintf(buf, sizeof buf, "<%s>", addr), smtp_path_parse(buf, 1, p, why) != PARSE_OK)
		;
	else if (p->nparams)
		*why = "not one address";
	else
		out = xstrdup(p->addr);
	free(p);
	return out;
}

/* added_rcpt - a recipient a milter added: relay control and routing as
 * for the client's own. 0 added, 1 dropped (not ours, or not an address:
 * logged), -1 the message is refused (reply in refusal). */
static int added_rcpt(struct session *s, const struct milter_env_mod *e, char *refusal, size_t rl)
{
	struct txn *t = s->tx;
	const char *why;
	char *valid = milter_addr(e->addr, &why);
	if (!valid) {
		log_warn("%s: milter %s: added recipient <%s> refused: %s", t->msgid, e->which, e->addr, why);
		return 1;
	}
	free(valid);
	const char *at = strrchr(e->addr, '@');
	const char *domain = at ? at + 1 : "";
	int ours = at && at != e->addr ? policy_relay_domain(s->pol, domain) : 0;
	if (ours <= 0 || strpbrk(e->addr, "%!") || strchr(e->addr, '@') != at) {
		stats_inc(ST_rej_relay_denied);
		log_warn("%s: milter %s: added recipient <%s> refused: relay access denied", t->msgid,
			 e->which, e->addr);
		return 1;
	}
	const char *route = NULL;
	if (policy_route(s->pol, domain, &route) < 0 ||
	    !((!route && !t->route) || (route && t->route && !strcmp(route, t->route)))) {
		snprintf(refusal, rl, "451 4.3.5 Recipient <%s> added by a milter routes to another backend",
			 e->addr);
		return -1;
	}
	for (int i = 0; i < t->nrcpt; i++)
		if (!strcasecmp(t->rcpts[i].addr, e->addr))
			return 0;
	if (t->nrcpt == t->caprcpt) {
		t->caprcpt = t->caprcpt ? 2 * t->caprcpt : 4;
		t->rcpts = xrealloc(t->rcpts, (size_t)t->caprcpt * sizeof *t->rcpts);
	}
	t->rcpts[t->nrcpt++] = (struct rcpt){ .addr = xstrdup(e->addr) };
	return 0;
}

/* env_mods - the milters' envelope changes, in order; 0, or -1 with the
 * refusal of the message. */
static int env_mods(struct session *s, const struct milter_result *r, char *refusal, size_t rl)
{
	struct txn *t = s->tx;
	int over = 0; /* added past smtpd_recipient_limit */
	for (int k = 0; k < r->nmods; k++) {
		const struct milter_env_mod *e = &r->mods[k];
		if (e->op == '+' && t->nrcpt >= s->cf->smtpd_recipient_limit && !over++)
			log_warn("%s: milter %s: added recipients past smtpd_recipient_limit (%lld) dropped, "
				 "<%s> the first",
				 t->msgid, e->which, s->cf->smtpd_recipient_limit, e->addr);
		if (e->op == '+' && t->nrcpt < s->cf->smtpd_recipient_limit && added_rcpt(s, e, refusal, rl) < 0)
			return -1;
		if (e->op == '-')
			for (int i = 0; i < t->nrcpt; i++)
				if (!strcasecmp(t->rcpts[i].addr, e->addr)) {
					free(t->rcpts[i].addr);
					free(t->rcpts[i].notify);
					free(t->rcpts[i].orcpt);
					t->rcpts[i--] = t->rcpts[--t->nrcpt];
				}
		if (e->op == 'e') {
			const char *why;
			char *sender = milter_addr(e->addr, &why);
			if (!sender) {
				log_warn("%s: milter %s: sender <%s> refused: %s", t->msgid, e->which,
					 e->addr, why);
			} else {
				free(t->sender);
				t->sender = sender;
			}
		}
	}
	return 0;
}

/* eom_done - the milters' verdict on the message, their changed copy. */
static void eom_done(void *arg, struct milter_result *r)
{
	struct session *s = arg;
	char refusal[256];
	smtpd_enter_state(s, ST_CMD);
	if (r->act == MILTER_DISCARD) {
		char why[160];
		snprintf(why, sizeof why, "milter %s", r->which);
		milter_result_free(r);
		message_discard(s, why);
		return;
	}
	if (r->act == MILTER_REJECT || r->act == MILTER_TEMPFAIL) {
		stats_refusal(r->reply);
		milter_refused(s, "END-OF-MESSAGE", r, NULL);
		reply_lines(s, r->reply, 0);
		goto refused;
	}
	if (r->spool) { /* the changed copy is the one scanned and relayed */
		spool_free(s->tx->spool);
		s->tx->spool = r->spool;
		r->spool = NULL;
	}
	if (env_mods(s, r, refusal, sizeof refusal) < 0) {
		stats_refusal(refusal);
		smtpd_log_reject(s, "END-OF-MESSAGE", refusal, NULL);
		smtpd_reply(s, "%s", refusal);
		goto refused;
	}
	milter_result_free(r);
	if (all_discarded(s)) {
		message_discard(s, "milters (every recipient deleted or DISCARDed)");
		return;
	}
	scan_or_relay(s);
	return;
refused:
	milter_result_free(r);
	smtpd_txn_reset(s);
	smtpd_session_resume(s);
}

/* data_end - the final dot: refuse, or scan and hand the stored message on. */
static void data_end(struct session *s)
{
	const struct conf *cf = s->cf;
	smtpd_enter_state(s, ST_CMD);
	spool_finish(s->tx->spool);
	log_message_id(s);
	stats_inc(ST_msg_received);
	const char *refusal = NULL;
	if (s->tx->data_err == DE_TOO_BIG)
		refusal = "552 5.3.4 Message size exceeds fixed limit";
	else if (s->tx->data_err == DE_SPOOL_FULL)
		refusal = "452 4.3.1 Insufficient system storage";
	else if (s->tx->data_err == DE_IO)
		refusal = "451 4.3.0 Error: queue file write error";
	else if ((s->tx->dp.flags & (SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR | SMTP_DATA_NUL)) &&
		 cf->smtpd_forbid_bare_newline_e == BARE_NEWLINE_REJECT)
		refusal = "550 5.5.2 Error: bare LF / CR not allowed";
	else if (s->tx->dp.received_count > MAX_RECEIVED)
		refusal = "554 5.4.6 Too many hops";
	if (refusal)
		smtpd_stream_drop(s, 0);
	/* 8-bit content the client did not declare: the stream went without
	 * BODY=8BITMIME, which the replay will send. */
	if ((s->tx->dp.flags & SMTP_DATA_8BIT) && !s->tx->body8)
		smtpd_stream_drop(s, 0);
	if (refusal) {
		stats_refusal(refusal);
		smtpd_log_reject(s, "END-OF-MESSAGE", refusal, NULL);
		smtpd_reply(s, "%s", refusal);
		smtpd_txn_reset(s);
		return;
	}
	s->tx->t_data_end = ev_now(s->loop);
	stats_inc(ST_inflight);
	if (s->tx->stream) { /* the body is whole: the relay sends the rest */
		struct relay_msg *m = &s->tx->msg;
		m->growing = 0;
		m->size = spool_size(s->tx->spool);
		m->deadline = s->tx->t_data_end + RELAY_DEADLINE_MS;
		if (m->deadline > smtpd_drain_deadline(s))
			m->deadline = smtpd_drain_deadline(s);
		relay_stream_more(s->relay);
	}
	if (s->tx->discard) {
		message_discard(s, "a milter at MAIL or RCPT");
		return;
	}
	if (all_discarded(s)) {
		message_discard(s, "an access map or transport (every recipient DISCARDed)");
		return;
	}
	/* header_checks, then the milters; the scan sees what both made. */
	if (s->pol->header_checks && !header_checks(s))
		return;
	if (s->tx->milter) { /* milters first; the scan sees their copy */
		smtpd_session_pause(s);
		milter_eom(s->loop, s->tx->milter, s->tx->spool, eom_done, s);
		return;
	}
	scan_or_relay(s);
}

/* overlap_usable - relay_scan_overlap applies: the message is final at
 * the final dot. Never with milters or header_checks, which may change it
 * (the copy to relay is known only when they end). */
static int overlap_usable(const struct session *s)
{
	return s->cf->relay_scan_overlap && !milter_enabled(s->cf) && !s->tx->milter && !s->pol->header_checks;
}

/* scan_or_relay - the message as stored (and changed by the milters):
 * scanned, then relayed; or, with relay_scan_overlap, relayed while it is
 * scanned, the backend's transaction ended only on a clean verdict. */
static void scan_or_relay(struct session *s)
{
	const struct conf *cf = s->cf;
	if (s->tx->stream && !av_enabled(cf)) {
		stream_release(s);
		return;
	}
	if (av_enabled(cf)) {
		/* Store, scan, replay: no backend completes an unscanned message. */
		smtpd_session_pause(s);
		if (!s->tx->stream && overlap_usable(s)) {
			s->tx->overlap = 1;
			data_relay(s);
		}
		smtpd_flow_scan_begin();
		s->tx->scanned = 1;
		s->av = av_scan(s->loop, cf, s->tx->spool, s->tx->msgid, av_done, s);
		return;
	}
	data_relay(s);
}

/* msg_prepare - the relay's view of the transaction (s->tx->msg): the
 * envelope, the stored body, the backends, the deadline. */
static struct relay_msg *msg_prepare(struct session *s)
{
	const struct conf *cf = s->cf;
	policy_list_free(&s->tx->backends); /* again after a stream gave up */
	if (s->tx->route)
		policy_split_list(s->tx->route, &s->tx->backends);
	free(s->tx->rr);
	s->tx->rr = xcalloc((size_t)s->tx->nrcpt, sizeof *s->tx->rr);
	int n = 0;
	for (int i = 0; i < s->tx->nrcpt; i++) {
		if (s->tx->rcpts[i].discard)
			continue; /* DISCARD: accepted, relayed to nobody */
		s->tx->rr[n].addr = s->tx->rcpts[i].addr;
		s->tx->rr[n].notify = s->tx->rcpts[i].notify;
		s->tx->rr[n].orcpt = s->tx->rcpts[i].orcpt;
		n++;
	}
	struct relay_msg *m = &s->tx->msg;
	memset(m, 0, sizeof *m);
	m->id = s->tx->msgid;
	m->sender = s->tx->sender;
	m->size = spool_size(s->tx->spool);
	m->body_8bit = s->tx->body8 || (s->tx->dp.flags & SMTP_DATA_8BIT);
	m->smtputf8 = s->tx->smtputf8;
	m->ret = s->tx->ret;
	m->envid = s->tx->envid;
	m->nrcpt = n;
	m->rcpts = s->tx->rr;
	m->body = s->tx->spool;
	m->backends = s->tx->route ? &s->tx->backends : &cf->relay_backends;
	m->deadline = s->tx->t_data_end + RELAY_DEADLINE_MS;
	if (m->deadline > smtpd_drain_deadline(s)) /* scanned past the drain limit */
		m->deadline = smtpd_drain_deadline(s);
	m->conf = cf;
	const char *name = s->dns ? dnscheck_client_name(s->dns) : NULL;
	s->tx->client = (struct relay_client){
		.name = name ? name : "unknown",
		.addr = s->addr,
		.port = s->port,
		.helo = s->helo,
		.esmtp = s->esmtp,
	};
	m->client = &s->tx->client;
	m->hold = s->tx->overlap;
	return m;
}

/* data_relay - hand the stored (and scanned) message to a backend. */
static void data_relay(struct session *s)
{
	/* Store, then replay: the message goes to a backend only now. */
	struct relay_msg *m = msg_prepare(s);
	smtpd_session_pause(s);
	s->relay = relay_send(s->loop, m, relay_done, s);
}

/* smtpd_data_input - feed DATA bytes through the parser into the spool. */
void smtpd_data_input(struct session *s, const char *buf, size_t len)
{
	static __thread char out[2 * DATA_CHUNK + 2];
	size_t chunk = len > DATA_CHUNK ? DATA_CHUNK : len, consumed = 0, outlen = 0;
	enum parse_result r = smtp_data_feed(&s->tx->dp, buf, chunk, &consumed, out, &outlen);
	if (outlen && s->tx->data_err == DE_NONE) {
		if (spool_size(s->tx->spool) + outlen > (uint64_t)s->cf->message_size_limit + 4096 ||
		    s->tx->dp.bytes > (uint64_t)s->cf->message_size_limit)
			s->tx->data_err = DE_TOO_BIG;
		else if (spool_append(s->tx->spool, out, outlen) < 0)
			s->tx->data_err = errno == ENOSPC ? DE_SPOOL_FULL : DE_IO;
	}
	conn_consume(s->conn, consumed);
	if (s->tx->stream && s->tx->data_err != DE_NONE) /* refused at the dot anyway */
		smtpd_stream_drop(s, 0);
	else if (s->tx->stream && outlen)
		relay_stream_more(s->relay);
	if (outlen)
		smtpd_deadline_arm(s); /* a whole line came: the client makes progress */
	if (r == PARSE_OK)
		data_end(s);
}
