/*
 * smtpd.c - the SMTP server session (RFC 5321) as a state machine with one
 * table of commands, in the manner of OpenSMTPD's smtp_session.c.
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
 * - DATA is parsed by smtp_data_feed(): only CRLF.CRLF ends it; the stored
 *   body is canonical, so no stray CR or bare LF can reach a backend.
 */
#include "smtpd.h"
#include "av.h"
#include "climit.h"
#include "conf.h"
#include "conn.h"
#include "crate.h"
#include "dnscheck.h"
#include "ev.h"
#include "grey.h"
#include "log.h"
#include "net.h"
#include "policy.h"
#include "proxy.h"
#include "relay.h"
#include "smtp_proto.h"
#include "spool.h"
#include "stats.h"
#include "tls.h"
#include "verify.h"

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

#define DATA_CHUNK (64 * 1024)
#define WBACKLOG_MAX (64 * 1024)
#define RELAY_DEADLINE_MS (9 * 60 * 1000)   /* RFC 5321 §4.5.3.2.6 gives 10 */
#define MAX_RECEIVED 50
/* A command "line" that never ends is garbage, not a command: each further
 * SKIP_ERROR_BYTES of it counts as one more error, so the hard error limit
 * ends the session (legitimate over-long lines get exactly one reply). */
#define SKIP_ERROR_BYTES (64 * 1024)

enum sstate { ST_CMD, ST_DATA, ST_BUSY, ST_CLOSING, ST_PROXY, ST_GREET };
enum data_err { DE_NONE, DE_TOO_BIG, DE_SPOOL_FULL, DE_IO };

struct smtpd_loop;

struct listener {
	struct ev_io io;
	struct ev_timer retry;
	struct smtpd_loop *sl;
	int fd;
};

struct smtpd_loop {
	struct ev_loop *loop;
	struct listener *lis;
	int nlis;
	struct session *sessions;
	int nsessions;
	int draining;
	struct ev_timer drain_timer;
};

struct rcpt {
	char *addr;
	char *notify;
	char *orcpt;
};

/* A recipient between RCPT and its verdict (checks may be asynchronous). */
struct rcpt_pending {
	char *addr, *local, *domain, *notify, *orcpt, *route;
	struct policy_env env;
	struct policy_req *req;
};

struct session {
	struct session *next, *prev;
	struct smtpd_loop *sl;
	struct ev_loop *loop;
	struct conn *conn;
	struct policy *pol;
	const struct conf *cf;
	char id[16];
	char addr[INET6_ADDRSTRLEN];
	char *helo;
	unsigned esmtp : 1;
	unsigned skip_line : 1;     /* discarding an over-long command line */
	size_t skipped;             /* bytes of it discarded since its last error */
	unsigned wblocked : 1;      /* paused until replies drain */
	unsigned counted : 1;       /* in climit */
	unsigned tls : 1;           /* STARTTLS done (RFC 3207) */
	unsigned need_ehlo : 1;     /* after STARTTLS, until HELO/EHLO */
	enum sstate state;
	int errors;
	unsigned ncmds, nmsgs;
	struct ev_timer tarpit;
	char *pending;              /* error reply held by the tarpit */
	int pending_close;

	/* transaction */
	unsigned in_mail : 1;
	unsigned rcpt_tried : 1;    /* a RCPT was sent, accepted or not */
	unsigned body8 : 1;
	unsigned smtputf8 : 1;
	unsigned grey_pass : 1;     /* a recipient passed greylisting (grey.h) */
	char *sender;
	char *ret, *envid;
	struct rcpt *rcpts;
	int nrcpt, caprcpt;
	long long overshoot;        /* RCPTs refused for smtpd_recipient_limit */
	int route_set;
	char *route;                /* backend list text; NULL = relay_backends */
	struct rcpt_pending *rcpt_pending;

	/* DATA */
	struct spool *spool;
	struct smtp_data_parser dp;
	enum data_err data_err;
	char msgid[16];
	uint64_t t_data_end;

	/* relay */
	struct relay_req *relay;
	struct av_req *av;          /* content scan in flight */
	struct dnscheck *dns;       /* PTR/FCrDNS, DNSBL, sender domain lookups */
	struct policy_sess *ps;     /* delayed client/HELO/sender verdicts (rules.c) */
	struct ev_timer greet;      /* smtpd_greet_pause (state ST_GREET) */
	struct ev_timer deadline;   /* smtpd_timeout per command (request_deadline) */
	struct relay_msg msg;
	struct relay_rcpt *rr;
	struct conf_list backends;
};

static int sessions_total;  /* atomic: all loops */
static int sessions_peak;   /* atomic: most open since the last smtpd_sessions_peak() */

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

/* gen_id - a short unique id: seconds and a counter, base 32. */
static void gen_id(char out[16])
{
	static uint64_t ctr;
	static const char a[] = "0123456789BCDFGHJKLMNPQRSTVWXYZ";
	uint64_t n = __atomic_add_fetch(&ctr, 1, __ATOMIC_RELAXED);
	uint64_t v = ((uint64_t)time(NULL) << 24) ^ (n & 0xffffff) ^ ((n >> 24) << 40);
	int i = 0;
	char tmp[16];
	do {
		tmp[i++] = a[v % 31];
		v /= 31;
	} while (v && i < 15);
	for (int j = 0; j < i; j++)
		out[j] = tmp[i - 1 - j];
	out[i] = 0;
}

/* ---- replies ---------------------------------------------------------- */

/* reply - queue one reply line (text already has code and enhanced code). */
static void reply(struct session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void reply(struct session *s, const char *fmt, ...)
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
static void session_resume(struct session *s);
static void session_free(struct session *s);
static int starttls_offered(struct session *s);
static void rcpt_pending_free(struct rcpt_pending *rp);
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
		return;   /* re-armed when the step ends (session_resume) */
	log_info("%s: timeout after %u commands from [%s]%s", s->id, s->ncmds, s->addr,
		 s->wblocked ? " (client not reading replies)" : " (incomplete command)");
	reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cf->myhostname);
	stats_inc(ST_close_timeout);
	session_close(s);
}

/* deadline_arm - the client has smtpd_timeout from now for its next
 * complete command line (or the next DATA line). */
static void deadline_arm(struct session *s)
{
	if (s->cf->smtpd_timeout > 0)
		ev_timer_start(s->loop, &s->deadline, (uint64_t)s->cf->smtpd_timeout,
			       deadline_expired, s);
}

/* tarpit_fire - the delayed error reply goes out; input resumes. */
static void tarpit_fire(void *arg)
{
	struct session *s = arg;
	reply(s, "%s", s->pending);
	free(s->pending);
	s->pending = NULL;
	if (s->pending_close) {
		session_close(s);
		return;
	}
	s->state = ST_CMD;
	session_resume(s);
}

/* reply_error - an error reply; counts toward the soft/hard error limits
 * (slow down, then disconnect a client that keeps failing). */
static void reply_error(struct session *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void reply_error(struct session *s, const char *fmt, ...)
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
		reply(s, "%s", buf);
		reply(s, "421 4.7.0 %s Error: too many errors", cf->myhostname);
		stats_inc(ST_close_errors);
		session_close(s);
		return;
	}
	if (s->errors > cf->smtpd_soft_error_limit && cf->smtpd_error_sleep_time > 0) {
		s->pending = xstrdup(buf);
		s->state = ST_BUSY;
		conn_read_enable(s->conn, 0);
		ev_timer_start(s->loop, &s->tarpit, (uint64_t)cf->smtpd_error_sleep_time, tarpit_fire, s);
		return;
	}
	reply(s, "%s", buf);
}

/* ---- transaction state ------------------------------------------------ */

/* txn_reset - forget the envelope and body (RSET, HELO, after a message). */
static void txn_reset(struct session *s)
{
	free(s->sender);
	free(s->ret);
	free(s->envid);
	s->sender = s->ret = s->envid = NULL;
	for (int i = 0; i < s->nrcpt; i++) {
		free(s->rcpts[i].addr);
		free(s->rcpts[i].notify);
		free(s->rcpts[i].orcpt);
	}
	free(s->rcpts);
	s->rcpts = NULL;
	s->nrcpt = s->caprcpt = 0;
	free(s->route);
	s->route = NULL;
	s->route_set = 0;
	rcpt_pending_free(s->rcpt_pending);
	s->rcpt_pending = NULL;
	s->in_mail = s->rcpt_tried = s->body8 = s->smtputf8 = 0;
	s->overshoot = 0;
	s->grey_pass = 0;
	spool_free(s->spool);
	s->spool = NULL;
	s->data_err = DE_NONE;
	free(s->rr);
	s->rr = NULL;
	policy_list_free(&s->backends);
	if (s->t_data_end) {    /* the message in flight has its answer */
		stats_add(ST_inflight, -1);
		s->t_data_end = 0;
	}
}

/* log_reject - one Postfix-like line per refusal. */
static void log_reject(struct session *s, const char *stage, const char *what,
		       const char *to)
{
	log_info("%s: reject: %s from [%s]: %s; from=<%s>%s%s%s helo=<%s>", s->id, stage,
		 s->addr, what, s->sender ? s->sender : "", to ? " to=<" : "",
		 to ? to : "", to ? ">" : "", s->helo ? s->helo : "");
}

/* ---- commands --------------------------------------------------------- */

/* cmd_helo - HELO/EHLO (RFC 5321 §4.1.1.1); EHLO lists our extensions. */
static void cmd_helo(struct session *s, enum smtp_verb v, char *arg)
{
	while (*arg == ' ')
		arg++;
	char *e = arg + strlen(arg);
	while (e > arg && e[-1] == ' ')
		*--e = 0;
	if (!*arg) {
		reply_error(s, "501 5.5.4 Syntax: %s hostname", v == SMTP_EHLO ? "EHLO" : "HELO");
		return;
	}
	if (strlen(arg) > 255) {
		reply_error(s, "501 5.5.4 Syntax: hostname too long");
		return;
	}
	txn_reset(s);
	free(s->helo);
	s->helo = xstrdup(arg);
	policy_helo(s->ps, arg);   /* judged now, refused at RCPT */
	s->esmtp = v == SMTP_EHLO;
	s->need_ehlo = 0;
	const struct conf *cf = s->cf;
	if (!s->esmtp) {
		reply(s, "250 %s", cf->myhostname);
		return;
	}
	reply(s, "250-%s", cf->myhostname);
	reply(s, "250-PIPELINING");
	reply(s, "250-SIZE %lld", cf->message_size_limit);
	reply(s, "250-ENHANCEDSTATUSCODES");
	reply(s, "250-8BITMIME");
	reply(s, "250-DSN");
	if (!s->tls && starttls_offered(s))
		reply(s, "250-STARTTLS");
	reply(s, "250 SMTPUTF8");
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
		      (l == 7 && !strncasecmp(p, "FAILURE", 7)) ||
		      (l == 5 && !strncasecmp(p, "DELAY", 5))))
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

/* cmd_mail - MAIL FROM (RFC 5321 §4.1.1.2) with SIZE, BODY, SMTPUTF8, RET,
 * ENVID (RFC 1870, 6152, 6531, 3461). */
static void cmd_mail(struct session *s, char *arg)
{
	const struct conf *cf = s->cf;
	if (s->in_mail) {
		reply_error(s, "503 5.5.1 Error: nested MAIL command");
		return;
	}
	if (s->need_ehlo) {
		/* RFC 3207 §4.2: the client starts over with EHLO. */
		reply_error(s, "503 5.5.1 Error: send HELO/EHLO first");
		return;
	}
	if (!s->helo && cf->smtpd_helo_required) {
		stats_inc(ST_rej_rfc);
		log_reject(s, "MAIL", "503 5.5.1 Error: send HELO/EHLO first", NULL);
		reply_error(s, "503 5.5.1 Error: send HELO/EHLO first");
		return;
	}
	struct smtp_path *p = xmalloc(sizeof *p);
	const char *why = "syntax error";
	if (smtp_path_parse(arg, cf->strict_rfc821_envelopes, p, &why) != PARSE_OK ||
	    (why = policy_addr_check(p->local, p->domain)) != NULL) {
		stats_inc(ST_rej_rfc);
		if (why_is_param(why))
			reply_error(s, "501 5.5.4 Syntax error in parameters: %s", why);
		else
			reply_error(s, "501 5.1.7 Bad sender address syntax: %s", why);
		goto out;
	}
	int body8 = 0, utf8 = 0;
	const char *ret = NULL, *envid = NULL;
	for (int i = 0; i < p->nparams; i++) {
		const char *k = p->params[i].key, *v = p->params[i].value;
		if (!strcasecmp(k, "SIZE")) {
			if (!v || !*v || strspn(v, "0123456789") != strlen(v) || strlen(v) > 19) {
				reply_error(s, "501 5.5.4 Bad SIZE parameter");
				goto out;
			}
			unsigned long long sz = strtoull(v, NULL, 10);
			if (sz > (unsigned long long)cf->message_size_limit) {
				stats_inc(ST_rej_size);
				log_reject(s, "MAIL", "552 5.3.4 Message size exceeds fixed limit", NULL);
				reply(s, "552 5.3.4 Message size exceeds fixed limit");
				goto out;
			}
		} else if (!strcasecmp(k, "BODY")) {
			if (v && !strcasecmp(v, "8BITMIME"))
				body8 = 1;
			else if (!v || strcasecmp(v, "7BIT")) {
				reply_error(s, "501 5.5.4 Unsupported BODY type");
				goto out;
			}
		} else if (!strcasecmp(k, "SMTPUTF8")) {
			if (v) {
				reply_error(s, "501 5.5.4 SMTPUTF8 takes no value");
				goto out;
			}
			utf8 = 1;
		} else if (!strcasecmp(k, "RET")) {
			if (!v || (strcasecmp(v, "FULL") && strcasecmp(v, "HDRS")) || ret) {
				reply_error(s, "501 5.5.4 Bad RET parameter");
				goto out;
			}
			ret = v;
		} else if (!strcasecmp(k, "ENVID")) {
			if (!v || strlen(v) > 100 || !smtp_xtext_valid(v) || envid) {
				reply_error(s, "501 5.5.4 Bad ENVID parameter");
				goto out;
			}
			envid = v;
		} else {
			reply_error(s, "555 5.5.4 Unsupported option: %s", k);
			goto out;
		}
	}
	if (p->utf8 && !utf8) {
		reply_error(s, "553 5.6.7 Non-ASCII sender address needs SMTPUTF8");
		goto out;
	}
	s->sender = xstrdup(p->addr);
	policy_mail(s->ps, s->sender);
	s->body8 = body8;
	s->smtputf8 = utf8;
	s->ret = ret ? xstrdup(ret) : NULL;
	s->envid = envid ? xstrdup(envid) : NULL;
	s->in_mail = 1;
	dnscheck_mail(s->dns, s->sender);   /* looked up now, refused at RCPT */
	reply(s, "250 2.1.0 Ok");
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
	log_reject(s, "RCPT", buf, to);
	reply_error(s, "%s", buf);
}

/* rcpt_pending_free - a recipient whose checks ended. */
static void rcpt_pending_free(struct rcpt_pending *rp)
{
	if (!rp)
		return;
	if (rp->req)
		policy_cancel(rp->req);
	free(rp->addr);
	free(rp->local);
	free(rp->domain);
	free(rp->notify);
	free(rp->orcpt);
	free(rp->route);
	free(rp);
}

/* rcpt_finish - the verdict on the pending recipient: add it or refuse. */
static void rcpt_finish(struct session *s, const struct policy_verdict *v)
{
	struct rcpt_pending *rp = s->rcpt_pending;
	rp->req = NULL;
	s->rcpt_pending = NULL;
	if (v->code) {
		stats_reject_rule(v->rule);
		log_reject(s, "RCPT", v->reply, rp->addr);
		reply_error(s, "%s", v->reply);
		rcpt_pending_free(rp);
		return;
	}
	if (v->rule && !strcmp(v->rule, GREY_RULE_PASS))
		s->grey_pass = 1;
	if (!s->route_set) {
		s->route_set = 1;
		s->route = rp->route;
		rp->route = NULL;
	}
	if (s->nrcpt == s->caprcpt) {
		s->caprcpt = s->caprcpt ? 2 * s->caprcpt : 4;
		s->rcpts = xrealloc(s->rcpts, (size_t)s->caprcpt * sizeof *s->rcpts);
	}
	struct rcpt *r = &s->rcpts[s->nrcpt++];
	r->addr = rp->addr;
	r->notify = rp->notify;
	r->orcpt = rp->orcpt;
	rp->addr = rp->notify = rp->orcpt = NULL;
	rcpt_pending_free(rp);
	reply(s, "250 2.1.5 Ok");
}

/* rcpt_verdict - an asynchronous check finished: answer, read on. */
static void rcpt_verdict(void *arg, const struct policy_verdict *v)
{
	struct session *s = arg;
	s->state = ST_CMD;
	rcpt_finish(s, v);
	if (s->state == ST_CMD)
		session_resume(s);
}

/* cmd_rcpt - RCPT TO (RFC 5321 §4.1.1.3): relay control, verdict cache,
 * routing (one backend list per transaction), limits. */
static void cmd_rcpt(struct session *s, char *arg)
{
	const struct conf *cf = s->cf;
	if (!s->in_mail) {
		reply_error(s, "503 5.5.1 Error: need MAIL command");
		return;
	}
	s->rcpt_tried = 1;
	struct smtp_path *p = xmalloc(sizeof *p);
	const char *why = "syntax error";
	if (smtp_path_parse(arg, cf->strict_rfc821_envelopes, p, &why) != PARSE_OK ||
	    (why = policy_addr_check(p->local, p->domain)) != NULL) {
		stats_inc(ST_rej_rfc);
		if (why_is_param(why))
			reply_error(s, "501 5.5.4 Syntax error in parameters: %s", why);
		else
			reply_error(s, "501 5.1.3 Bad recipient address syntax: %s", why);
		goto out;
	}
	if (!p->addr[0]) {
		reply_error(s, "501 5.1.3 Bad recipient address syntax: null recipient");
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
				reply_error(s, "501 5.5.4 Bad ORCPT parameter");
				goto out;
			}
			orcpt = v;
		} else if (!strcasecmp(k, "NOTIFY") || !strcasecmp(k, "ORCPT")) {
			reply_error(s, "501 5.5.4 Bad %s parameter", k);
			goto out;
		} else {
			reply_error(s, "555 5.5.4 Unsupported option: %s", k);
			goto out;
		}
	}
	if (p->utf8 && !s->smtputf8) {
		reply_error(s, "553 5.6.7 Non-ASCII recipient address needs SMTPUTF8");
		goto out;
	}
	if (s->nrcpt >= cf->smtpd_recipient_limit) {
		log_reject(s, "RCPT", "452 4.5.3 Error: too many recipients", p->addr);
		/* As Postfix's smtpd_recipient_overshoot_limit: a client that
		 * keeps sending far past the limit (the overshoot is as large
		 * as the limit itself) is an error each time, so it ends. */
		if (++s->overshoot > cf->smtpd_recipient_limit)
			reply_error(s, "452 4.5.3 Error: too many recipients");
		else
			reply(s, "452 4.5.3 Error: too many recipients");
		goto out;
	}
	/* RFC 5321 §4.5.1: <Postmaster> without a domain is always ours. */
	int bare_postmaster = !p->domain[0];
	if (!bare_postmaster) {
		int r = policy_relay_domain(s->pol, p->domain);
		if (r < 0) {
			rcpt_refuse(s, p->addr, "451 4.3.0 <%s>: temporary lookup failure", p->addr);
			goto out;
		}
		/* Sender-specified routing (user%remote@ours, remote!user@ours,
		 * "user@remote"@ours): a backend that honours the percent hack
		 * or a bang path would relay it on, making the site an open
		 * relay through us. Refused as relaying, as Postfix does by
		 * default (allow_untrusted_routing = no). */
		if (r == 0 || strpbrk(p->local, "@%!")) {
			stats_inc(ST_rej_relay_denied);
			rcpt_refuse(s, p->addr, "550 5.7.1 <%s>: relay access denied", p->addr);
			goto out;
		}
	}
	const char *route = NULL;
	if (!bare_postmaster && policy_route(s->pol, p->domain, &route) < 0) {
		rcpt_refuse(s, p->addr, "451 4.3.0 <%s>: temporary lookup failure", p->addr);
		goto out;
	}
	if (!route && cf->relay_backends.n == 0) {
		rcpt_refuse(s, p->addr, "451 4.3.5 <%s>: no backend configured", p->addr);
		goto out;
	}
	if (s->route_set) {
		int same = (!route && !s->route) || (route && s->route && !strcmp(route, s->route));
		if (!same) {
			log_reject(s, "RCPT", "452 4.5.3 Error: too many recipients (other backend)", p->addr);
			reply(s, "452 4.5.3 Error: too many recipients for this transaction; send in a new one");
			goto out;
		}
	}
	/* The recipient passed the envelope checks: now the verdict chain. */
	struct rcpt_pending *rp = xcalloc(1, sizeof *rp);
	rp->addr = xstrdup(p->addr);
	rp->local = xstrdup(p->local);
	rp->domain = xstrdup(p->domain);
	for (char *d = rp->domain; *d; d++)
		*d = (char)tolower((unsigned char)*d);
	rp->notify = notify ? xstrdup(notify) : NULL;
	rp->orcpt = orcpt ? xstrdup(orcpt) : NULL;
	rp->route = route ? xstrdup(route) : NULL;
	rp->env = (struct policy_env){
		.loop = s->loop, .pol = s->pol, .session_id = s->id, .client_addr = s->addr,
		.helo = s->helo ? s->helo : "", .sender = s->sender, .rcpt = rp->addr,
		.rcpt_local = rp->local, .rcpt_domain = rp->domain, .dns = s->dns,
		.sess = s->ps, .route = rp->route,
	};
	s->rcpt_pending = rp;
	struct policy_verdict v;
	if (policy_rcpt(&rp->env, &v, rcpt_verdict, s, &rp->req)) {
		rcpt_finish(s, &v);
	} else {
		s->state = ST_BUSY;
		conn_read_enable(s->conn, 0);
	}
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
	const char *proto = s->smtputf8 ? (s->esmtp ? (s->tls ? "UTF8SMTPS" : "UTF8SMTP") : "UTF8SMTP")
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
	int n = snprintf(buf, sizeof buf,
			 "Received: from %s (unknown [%s%s])%s\r\n\tby %s (perimd) with %s id %s",
			 helo, strchr(s->addr, ':') ? "IPv6:" : "", s->addr, tls,
			 s->cf->myhostname, proto, s->msgid);
	if (s->nrcpt == 1 && strlen(s->rcpts[0].addr) < 300)
		n += snprintf(buf + n, sizeof buf - (size_t)n, "\r\n\tfor <%s>", s->rcpts[0].addr);
	n += snprintf(buf + n, sizeof buf - (size_t)n, "; %s\r\n", date);
	if (spool_append(s->spool, buf, (size_t)n) < 0)
		s->data_err = errno == ENOSPC ? DE_SPOOL_FULL : DE_IO;
}

/* cmd_data - DATA (RFC 5321 §4.1.1.4): start storing the body. */
static void cmd_data(struct session *s, char *arg)
{
	if (*arg) {
		reply_error(s, "501 5.5.4 Syntax: DATA takes no argument");
		return;
	}
	if (!s->in_mail) {
		reply_error(s, "503 5.5.1 Error: need MAIL command");
		return;
	}
	if (!s->nrcpt) {
		/* With PIPELINING all RCPTs may have failed (RFC 2920 §3.1). */
		if (s->rcpt_tried)
			reply_error(s, "554 5.5.1 Error: no valid recipients");
		else
			reply_error(s, "503 5.5.1 Error: need RCPT command");
		return;
	}
	gen_id(s->msgid);
	s->spool = spool_new();
	s->data_err = DE_NONE;
	received_header(s);
	if (s->data_err == DE_SPOOL_FULL) {
		stats_inc(ST_rej_spool_full);
		log_reject(s, "DATA", "452 4.3.1 insufficient system storage", NULL);
		reply(s, "452 4.3.1 Insufficient system storage");
		txn_reset(s);
		return;
	}
	smtp_data_init(&s->dp, strcmp(s->cf->smtpd_forbid_bare_newline, "reject") ? SMTP_BARE_NORMALIZE
										     : SMTP_BARE_REJECT);
	s->state = ST_DATA;
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* relay_done - the backend's verdict: the client hears it now. */
static void relay_done(void *arg, const struct relay_result *r)
{
	struct session *s = arg;
	s->relay = NULL;
	uint64_t ms = ev_now(s->loop) - s->t_data_end;
	stats_message_done(r->code, ms);
	/* A greylisting pass counts toward the auto-whitelist once its
	 * message is accepted. */
	if (r->code < 300 && s->grey_pass)
		grey_accepted(s->loop, s->pol, s->addr, s->sender);
	const char *status = r->code < 300 ? "sent" : r->code < 500 ? "deferred" : "bounced";
	for (int i = 0; i < s->nrcpt; i++) {
		const struct relay_rcpt *rr = &s->rr[i];
		log_info("%s: to=<%s>, relay=%s, delay=%.3f, status=%s (%s)", s->msgid, rr->addr,
			 r->backend[0] ? r->backend : "none", (double)ms / 1000.0,
			 rr->code && rr->code >= 400 ? (rr->code < 500 ? "deferred" : "bounced") : status,
			 rr->code >= 400 ? rr->reply : r->backend_reply[0] ? r->backend_reply : r->text);
	}
	log_info("%s: from=<%s>, size=%llu, nrcpt=%d, client=[%s], helo=<%s>, backend=%s, backend_id=%s, "
		 "result=%d %s %s, delay=%.3f",
		 s->msgid, s->sender, (unsigned long long)spool_size(s->spool), s->nrcpt, s->addr,
		 s->helo ? s->helo : "", r->backend[0] ? r->backend : "none",
		 r->queue_id[0] ? r->queue_id : "-", r->code, r->enh, r->text, (double)ms / 1000.0);
	if (r->enh[0])
		reply(s, "%d %s %s", r->code, r->enh, r->text);
	else
		reply(s, "%d %s", r->code, r->text);
	if (r->code < 300)
		s->nmsgs++;
	txn_reset(s);
	s->state = ST_CMD;
	session_resume(s);
}

static void data_relay(struct session *s);

/* av_done - the content scanner's verdict (refusal NULL: pass it on). */
static void av_done(void *arg, const char *refusal)
{
	struct session *s = arg;
	s->av = NULL;
	if (!refusal) {
		data_relay(s);
		return;
	}
	stats_refusal(refusal);
	log_reject(s, "END-OF-MESSAGE", refusal, NULL);
	reply(s, "%s", refusal);
	txn_reset(s);
	s->state = ST_CMD;
	session_resume(s);
}

/* data_end - the final dot: refuse, or scan and hand the stored message on. */
static void data_end(struct session *s)
{
	const struct conf *cf = s->cf;
	s->state = ST_CMD;
	spool_finish(s->spool);
	stats_inc(ST_msg_received);
	const char *refusal = NULL;
	if (s->data_err == DE_TOO_BIG)
		refusal = "552 5.3.4 Message size exceeds fixed limit";
	else if (s->data_err == DE_SPOOL_FULL)
		refusal = "452 4.3.1 Insufficient system storage";
	else if (s->data_err == DE_IO)
		refusal = "451 4.3.0 Error: queue file write error";
	else if ((s->dp.flags & (SMTP_DATA_BARE_LF | SMTP_DATA_BARE_CR | SMTP_DATA_NUL)) &&
		 !strcmp(cf->smtpd_forbid_bare_newline, "reject"))
		refusal = "550 5.5.2 Error: bare LF / CR not allowed";
	else if (s->dp.received_count > MAX_RECEIVED)
		refusal = "554 5.4.6 Too many hops";
	if (refusal) {
		stats_refusal(refusal);
		log_reject(s, "END-OF-MESSAGE", refusal, NULL);
		reply(s, "%s", refusal);
		txn_reset(s);
		return;
	}
	s->t_data_end = ev_now(s->loop);
	stats_inc(ST_inflight);
	if (av_enabled(cf)) {
		/* Store, scan, replay: nothing reaches a backend unscanned. */
		s->state = ST_BUSY;
		conn_read_enable(s->conn, 0);
		s->av = av_scan(s->loop, cf, s->spool, s->msgid, av_done, s);
		return;
	}
	data_relay(s);
}

/* data_relay - hand the stored (and scanned) message to a backend. */
static void data_relay(struct session *s)
{
	const struct conf *cf = s->cf;
	/* Store, then replay: the message goes to a backend only now. */
	if (s->route)
		policy_split_list(s->route, &s->backends);
	s->rr = xcalloc((size_t)s->nrcpt, sizeof *s->rr);
	for (int i = 0; i < s->nrcpt; i++) {
		s->rr[i].addr = s->rcpts[i].addr;
		s->rr[i].notify = s->rcpts[i].notify;
		s->rr[i].orcpt = s->rcpts[i].orcpt;
	}
	struct relay_msg *m = &s->msg;
	memset(m, 0, sizeof *m);
	m->id = s->msgid;
	m->sender = s->sender;
	m->size = spool_size(s->spool);
	m->body_8bit = s->body8 || (s->dp.flags & SMTP_DATA_8BIT);
	m->smtputf8 = s->smtputf8;
	m->ret = s->ret;
	m->envid = s->envid;
	m->nrcpt = s->nrcpt;
	m->rcpts = s->rr;
	m->body = s->spool;
	m->backends = s->route ? &s->backends : &cf->relay_backends;
	m->deadline = s->t_data_end + RELAY_DEADLINE_MS;
	m->conf = cf;
	s->state = ST_BUSY;
	conn_read_enable(s->conn, 0);
	s->relay = relay_send(s->loop, m, relay_done, s);
}

/* data_input - feed DATA bytes through the parser into the spool. */
static void data_input(struct session *s, const char *buf, size_t len)
{
	static __thread char out[2 * DATA_CHUNK + 2];
	size_t chunk = len > DATA_CHUNK ? DATA_CHUNK : len, consumed = 0, outlen = 0;
	enum parse_result r = smtp_data_feed(&s->dp, buf, chunk, &consumed, out, &outlen);
	if (outlen && s->data_err == DE_NONE) {
		if (spool_size(s->spool) + outlen > (uint64_t)s->cf->message_size_limit + 4096 ||
		    s->dp.bytes > (uint64_t)s->cf->message_size_limit)
			s->data_err = DE_TOO_BIG;
		else if (spool_append(s->spool, out, outlen) < 0)
			s->data_err = errno == ENOSPC ? DE_SPOOL_FULL : DE_IO;
	}
	conn_consume(s->conn, consumed);
	if (outlen)
		deadline_arm(s);   /* a whole line came: the client makes progress */
	if (r == PARSE_OK)
		data_end(s);
}

/* starttls_offered - STARTTLS is advertised and accepted when the level
 * is "may" and a certificate and key are loaded. */
static int starttls_offered(struct session *s)
{
	return !strcmp(s->cf->smtpd_tls_security_level, "may") && tls_server_available();
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
	s->state = ST_CMD;
	session_resume(s);
}

/* cmd_starttls - STARTTLS (RFC 3207 §4): 220, then the handshake; the
 * SMTP state is forgotten and any pipelined input thrown away (§4.2). */
static void cmd_starttls(struct session *s, char *arg)
{
	if (*arg) {
		reply_error(s, "501 5.5.4 Syntax: STARTTLS takes no argument");
		return;
	}
	if (s->tls) {
		reply_error(s, "503 5.5.1 Error: TLS already active");
		return;
	}
	struct tls_server *ts = starttls_offered(s) ? tls_server_acquire() : NULL;
	if (!ts) {
		reply_error(s, "502 5.5.1 Error: command not implemented");
		return;
	}
	reply(s, "220 2.0.0 Ready to start TLS");
	/* CVE-2011-0411: what came after the STARTTLS line is never run. */
	conn_discard_input(s->conn);
	txn_reset(s);
	free(s->helo);
	s->helo = NULL;
	s->esmtp = 0;
	s->need_ehlo = 1;
	s->state = ST_BUSY;
	conn_read_enable(s->conn, 0);
	if (conn_starttls(s->conn, tls_new_server(s->loop, ts), tls_done) < 0)
		session_close(s);
	tls_server_release(ts);
}

/* cmd_simple - RSET, NOOP, VRFY, HELP, QUIT and the unsupported ones. */
static void cmd_simple(struct session *s, enum smtp_verb v, char *arg)
{
	switch (v) {
	case SMTP_RSET:
		txn_reset(s);
		reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_NOOP:
		reply(s, "250 2.0.0 Ok");
		break;
	case SMTP_VRFY:
		/* RFC 5321 §3.5.3: 252 when we will not verify but will try. */
		if (!*arg)
			reply_error(s, "501 5.5.4 Syntax: VRFY address");
		else
			reply(s, "252 2.0.0 Cannot VRFY user; send some mail and we will try");
		break;
	case SMTP_EXPN:
		reply_error(s, "502 5.5.1 Error: EXPN not supported");
		break;
	case SMTP_HELP:
		reply(s, "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP");
		break;
	case SMTP_QUIT:
		reply(s, "221 2.0.0 Bye");
		stats_inc(ST_close_quit);
		session_close(s);
		break;
	case SMTP_STARTTLS:
		cmd_starttls(s, arg);
		break;
	case SMTP_BDAT:
	case SMTP_AUTH:
		reply_error(s, "502 5.5.1 Error: command not implemented");
		break;
	default:
		reply_error(s, "500 5.5.2 Error: command not recognized");
		break;
	}
}

/* command - parse one command line and run it. */
static void command(struct session *s, char *line, size_t len)
{
	enum smtp_verb v;
	const char *args;
	size_t alen;
	s->ncmds++;
	if (memchr(line, 0, len)) {
		reply_error(s, "500 5.5.2 Error: NUL in command");
		return;
	}
	if (smtp_cmd_parse(line, len, &v, &args, &alen) != PARSE_OK) {
		reply_error(s, "501 5.5.4 Syntax error in parameters");
		return;
	}
	char *arg = (char *)args;
	arg[alen] = 0;
	if (v == SMTP_UNKNOWN && s->cf->smtpd_upstream_proxy_protocol[0] && !strncmp(line, "PROXY ", 6)) {
		log_warn("%s: PROXY header from [%s], which is not in smtpd_upstream_proxy_clients; "
			 "disconnecting", s->id, s->addr);
		stats_inc(ST_close_protocol);
		session_close(s);
		return;
	}
	switch (v) {
	case SMTP_HELO:
	case SMTP_EHLO:
		cmd_helo(s, v, arg);
		break;
	case SMTP_MAIL:
		cmd_mail(s, arg);
		break;
	case SMTP_RCPT:
		cmd_rcpt(s, arg);
		break;
	case SMTP_DATA:
		cmd_data(s, arg);
		break;
	default:
		cmd_simple(s, v, arg);
		break;
	}
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
			data_input(s, buf, len);
			continue;
		}
		if (s->skip_line) {
			const char *nl = memchr(buf, '\n', len);
			size_t n = nl ? (size_t)(nl - buf) + 1 : len;
			conn_consume(s->conn, n);
			if (nl) {
				s->skip_line = 0;   /* its 500 went out when it began */
				continue;
			}
			s->skipped += n;
			/* One read may bring many times SKIP_ERROR_BYTES; stop at a
			 * tarpit or the close (the state leaves ST_CMD). */
			while (s->skipped >= SKIP_ERROR_BYTES && s->state == ST_CMD) {
				s->skipped -= SKIP_ERROR_BYTES;
				reply_error(s, "500 5.5.2 Error: line too long");
			}
			continue;
		}
		size_t linelen, consumed;
		enum parse_result r = smtp_line_find(buf, len, (size_t)cf->smtpd_command_line_limit,
						     &linelen, &consumed);
		if (r == PARSE_AGAIN)
			return;
		if (r == PARSE_TOO_LONG) {
			conn_consume(s->conn, consumed);
			if (linelen != SIZE_MAX) {
				/* Answered now, not at its end: the end may never come. */
				s->skip_line = 1;
				s->skipped = 0;
			}
			reply_error(s, "500 5.5.2 Error: line too long");
			continue;
		}
		char *line = xmalloc(linelen + 1);
		memcpy(line, buf, linelen);
		line[linelen] = 0;
		conn_consume(s->conn, consumed);
		command(s, line, linelen);
		free(line);
		if (s->state != ST_CLOSING)
			deadline_arm(s);
	}
}

/* session_resume - accept input again after an asynchronous step. */
static void session_resume(struct session *s)
{
	if (s->state == ST_CLOSING)
		return;
	deadline_arm(s);
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
		session_resume(s);
	}
}

/* session_free - end of session: cancel and release everything. */
static void session_free(struct session *s)
{
	struct smtpd_loop *sl = s->sl;
	if (s->relay) {
		relay_cancel(s->relay);
		s->relay = NULL;
		log_info("%s: client [%s] gone while its message %s was being relayed", s->id, s->addr, s->msgid);
	}
	if (s->av) {
		av_cancel(s->av);
		s->av = NULL;
		log_info("%s: client [%s] gone while its message %s was being scanned", s->id, s->addr, s->msgid);
	}
	ev_timer_stop(s->loop, &s->tarpit);
	ev_timer_stop(s->loop, &s->greet);
	ev_timer_stop(s->loop, &s->deadline);
	free(s->pending);
	txn_reset(s);
	dnscheck_free(s->dns);
	policy_session_free(s->ps);   /* after txn_reset cancelled any chain */
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
		reply(s, "421 4.4.2 %s Error: timeout exceeded", s->cf->myhostname);
		stats_inc(ST_close_timeout);
		session_close(s);
		return;
	}
	if (s->state != ST_CLOSING)   /* EOF or error before we chose to close */
		stats_inc(ST_close_eof);
	if (err && err != ETIMEDOUT)
		log_info("%s: lost connection from [%s]: %s", s->id, s->addr, strerror(err));
	log_info("%s: disconnect from [%s] commands=%u messages=%u errors=%d", s->id, s->addr,
		 s->ncmds, s->nmsgs, s->errors);
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
	s->state = ST_CLOSING;
	ev_timer_stop(s->loop, &s->deadline);
	/* The client is done with us: it may connect again at once. */
	if (s->counted) {
		climit_leave(s->addr);
		s->counted = 0;
	}
	conn_shutdown(s->conn);
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
	s->state = ST_CMD;
	reply(s, "220 %s", s->cf->smtpd_banner);
}

/* early_talker - input before the banner: a client that does not wait
 * for the greeting is no SMTP client (RFC 5321 §3.1, §4.3.1). */
static void early_talker(struct session *s)
{
	ev_timer_stop(s->loop, &s->greet);
	s->state = ST_CMD;
	stats_inc(ST_conn_refused_early);
	log_info("%s: reject: CONNECT from [%s]: 554 5.5.1 early talker (data before the greeting)",
		 s->id, s->addr);
	reply(s, "554 5.5.1 %s Error: talking before the greeting", s->cf->myhostname);
	session_close(s);
}

/* session_greet - the client is known (directly or through PROXY): its
 * limits, then the greeting. */
static void session_greet(struct session *s)
{
	const struct conf *cf = s->cf;
	if (climit_enter(s->addr, (int)cf->smtpd_client_connection_count_limit) < 0) {
		log_warn("%s: refused connection from [%s]: too many connections from this client",
			 s->id, s->addr);
		stats_inc(ST_conn_refused_client);
		reply(s, "421 4.7.0 %s Error: too many connections from %s", cf->myhostname, s->addr);
		session_close(s);
		return;
	}
	s->counted = 1;
	if (cf->smtpd_client_connection_rate_limit > 0 &&
	    crate_hit(s->addr, (int)cf->smtpd_client_connection_rate_limit, ev_wallclock() / 60) < 0) {
		log_warn("%s: refused connection from [%s]: more than %lld connections per minute",
			 s->id, s->addr, cf->smtpd_client_connection_rate_limit);
		stats_inc(ST_conn_refused_rate);
		reply(s, "421 4.7.0 %s Error: too many connections from %s", cf->myhostname, s->addr);
		session_close(s);
		return;
	}
	s->state = ST_CMD;
	conn_set_timeout(s->conn, (uint64_t)cf->smtpd_timeout);
	deadline_arm(s);
	/* DNS checks start now, in the background: the banner does not wait. */
	s->dns = dnscheck_connect(s->loop, cf, s->addr);
	if (cf->smtpd_greet_pause > 0) {
		/* Legitimate clients wait for the banner (RFC 5321 §3.1). */
		s->state = ST_GREET;
		ev_timer_start(s->loop, &s->greet, (uint64_t)cf->smtpd_greet_pause, greet_fire, s);
		return;
	}
	reply(s, "220 %s", cf->smtpd_banner);
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
		s->state = ST_CLOSING;
		conn_shutdown(s->conn);
		return;
	}
	conn_consume(s->conn, used);
	if (h.local) {
		log_info("%s: PROXY v%d LOCAL from [%s]", s->id, h.version, s->addr);
	} else {
		log_info("%s: PROXY v%d from [%s]: client [%s]:%d", s->id, h.version, s->addr, h.src,
			 h.sport);
		snprintf(s->addr, sizeof s->addr, "%s", h.src);
	}
	session_greet(s);
	/* What followed the header in the same read is the client's. */
	if (s->state == ST_CMD)
		session_process(s);
}

/* proxy_expected - does this peer have to start with a PROXY header? */
static int proxy_expected(const struct conf *cf, const char *peer)
{
	if (!cf->smtpd_upstream_proxy_protocol[0])
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
		log_warn("refused connection from [%s]: max_sessions (%lld) reached", addr, cf->max_sessions);
		stats_inc(ST_conn_refused_max);
		snprintf(msg, sizeof msg, "421 4.3.2 %s Service temporarily unavailable, too many sessions\r\n",
			 cf->myhostname);
		refuse_now(fd, msg);
		policy_release(pol);
		return;
	}
	int peak = __atomic_load_n(&sessions_peak, __ATOMIC_RELAXED);
	while (open_now > peak && !__atomic_compare_exchange_n(&sessions_peak, &peak, open_now, 1,
							       __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	struct session *s = xcalloc(1, sizeof *s);
	s->sl = sl;
	s->loop = sl->loop;
	s->pol = pol;
	s->cf = cf;
	memcpy(s->addr, addr, sizeof addr);
	gen_id(s->id);
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
		s->state = ST_PROXY;
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

/* drain_expired - shutdown_timeout passed: close what is left. */
static void drain_expired(void *arg)
{
	struct smtpd_loop *sl = arg;
	struct session *s = sl->sessions;
	while (s) {
		struct session *next = s->next;
		if (s->state != ST_CLOSING) {
			if (s->relay) {
				relay_cancel(s->relay);
				s->relay = NULL;
			}
			if (s->av) {
				av_cancel(s->av);
				s->av = NULL;
			}
			ev_timer_stop(s->loop, &s->tarpit);
			s->state = ST_CMD;
			reply(s, "421 4.3.2 %s Service shutting down", s->cf->myhostname);
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
