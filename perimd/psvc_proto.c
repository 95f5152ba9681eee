/*
 * psvc_proto.c - the policy-service client's pure half (psvc.h): Postfix
 * attribute lines, answers and what their actions mean, and the
 * configuration of the services (smtpd_policy_services, per-service { }
 * settings). No loop, no connection: fuzzed by tests/fuzz/fuzz_psvc.c.
 */
#include "psvc.h"
#include "net.h"
#include "buf.h"
#include "conf.h"
#include "log.h"
#include "smtp_proto.h"
#include "stats.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#define PSVC_MAX_HEADER 998 /* RFC 5322 §2.1.1 */

/* ---- the protocol (pure) ------------------------------------------------ */

/* copy_value - an attribute value into out (alen >= 2), blanks trimmed,
 * tabs as spaces, other control characters as '?', truncated to fit. */
static void copy_value(const char *v, size_t vl, char *out, size_t alen)
{
	while (vl && (*v == ' ' || *v == '\t'))
		v++, vl--;
	while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
		vl--;
	size_t n = vl < alen - 1 ? vl : alen - 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)v[i];
		out[i] = ch == '\t' ? ' ' : (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
	}
	out[n] = 0;
}

/* psvc_attr_next - see psvc.h. */
int psvc_attr_next(const char *buf, size_t len, size_t *pos, size_t limit, const char **name, size_t *nlen,
		   const char **value, size_t *vlen)
{
	const char *nl = memchr(buf + *pos, '\n', len - *pos);
	if (!nl)
		return len > limit ? PARSE_TOO_LONG : PARSE_AGAIN;
	size_t end = (size_t)(nl - buf);
	if (end + 1 > limit)
		return PARSE_TOO_LONG;
	size_t ll = end - *pos;
	if (ll && buf[end - 1] == '\r')
		ll--;
	const char *line = buf + *pos;
	*pos = end + 1;
	*nlen = *vlen = 0;
	if (ll == 0)
		return PARSE_OK;
	const char *eq = memchr(line, '=', ll);
	if (memchr(line, 0, ll) || !eq || eq == line)
		return PARSE_BAD;
	*name = line;
	*nlen = (size_t)(eq - line);
	*value = eq + 1;
	*vlen = ll - *nlen - 1;
	return PARSE_OK;
}

/* psvc_reply_parse - see psvc.h. */
int psvc_reply_parse(const char *buf, size_t len, char *action, size_t alen, size_t *used)
{
	size_t pos = 0, nl, vl;
	const char *n, *v;
	int have = 0, rc;
	action[0] = 0;
	while ((rc = psvc_attr_next(buf, len, &pos, PSVC_MAX_REPLY, &n, &nl, &v, &vl)) == PARSE_OK) {
		if (nl == 0) { /* the empty line */
			*used = pos;
			return have ? PARSE_OK : PARSE_BAD;
		}
		if (nl == 6 && !memcmp(n, "action", 6)) {
			copy_value(v, vl, action, alen);
			have = 1;
		}
	}
	return rc;
}

/* What a policy answer's action means when it leaves something out: as in
 * Postfix, whose smtpd checks an answer as it checks an access map's
 * (REJECT is access_map_reject_code, 554; DEFER access_map_defer_code,
 * 450; "Access denied" and "Service unavailable"); a 421 is given as 450. */
static const struct smtp_act_defaults psvc_defaults = {
	.reject_code = 554,
	.code_421 = 450,
	.refuse_text = "Access denied",
	.defer_if_text = "Service unavailable",
	.enh_any_class = 1,
	.header_max = PSVC_MAX_HEADER,
	.header_8bit = 1,
};

/* set_reply - a refusal: "CODE X.Y.Z <rcpt>: Recipient address rejected:
 * TEXT" from the parsed action p. */
static void set_reply(struct psvc_action *a, const struct smtp_action *p, const char *rcpt)
{
	char text[600];
	copy_value(p->text, strlen(p->text), text, sizeof text);
	a->code = p->code;
	struct strbuf sb = { 0 };
	sb_printf(&sb, "%d %s <%s>: Recipient address rejected: %s", p->code, p->enh, rcpt, text);
	size_t n = sb.len < sizeof a->reply - 1 ? sb.len : sizeof a->reply - 1;
	memcpy(a->reply, sb_str(&sb), n); /* truncated to a reply line's room */
	a->reply[n] = 0;
	sb_free(&sb);
}

/* psvc_action_parse - see psvc.h. */
void psvc_action_parse(const char *action, const char *rcpt, struct psvc_action *a)
{
	struct smtp_action p;
	memset(a, 0, sizeof *a);
	smtp_action_parse(action, &psvc_defaults, &p);
	switch (p.act) {
	case SMTP_ACT_DUNNO: a->kind = PSVC_DUNNO, a->name = "dunno"; return;
	case SMTP_ACT_OK:
	case SMTP_ACT_NUMBER: a->kind = PSVC_OK, a->name = "ok"; return; /* all-numeric: OK, as Postfix */
	case SMTP_ACT_REJECT:
	case SMTP_ACT_DEFER:
	case SMTP_ACT_NNN:
		a->kind = PSVC_REFUSE, a->name = p.code >= 500 ? "reject" : "defer";
		set_reply(a, &p, rcpt);
		return;
	case SMTP_ACT_DEFER_IF_PERMIT:
		a->kind = PSVC_DEFER_IF_PERMIT, a->name = "defer_if_permit";
		set_reply(a, &p, rcpt);
		return;
	case SMTP_ACT_DEFER_IF_REJECT:
		a->kind = PSVC_DEFER_IF_REJECT, a->name = "defer_if_reject";
		set_reply(a, &p, rcpt);
		return;
	case SMTP_ACT_WARN:
	case SMTP_ACT_INFO:
		a->kind = p.act == SMTP_ACT_WARN ? PSVC_WARN : PSVC_INFO;
		a->name = a->kind == PSVC_WARN ? "warn" : "info";
		copy_value(p.text, strlen(p.text), a->text, sizeof a->text);
		return;
	case SMTP_ACT_PREPEND:
		if (p.header_ok) {
			a->kind = PSVC_PREPEND, a->name = "prepend";
			snprintf(a->text, sizeof a->text, "%s", p.text);
			return;
		}
		/* fall through - a malformed header is logged */
	case SMTP_ACT_FILTER:
	case SMTP_ACT_HOLD:
	case SMTP_ACT_DISCARD:
	case SMTP_ACT_REDIRECT:
	case SMTP_ACT_BCC:
		/* Actions that need a queue or a content filter perimd does not
		 * have: logged. */
		a->kind = PSVC_UNSUPPORTED, a->name = "unsupported";
		copy_value(p.word, strlen(p.word), a->text, sizeof a->text);
		return;
	default:
		a->kind = PSVC_INVALID, a->name = "invalid";
		a->code = 451;
		snprintf(a->reply, sizeof a->reply, "451 4.3.5 Server configuration error");
		copy_value(p.word, strlen(p.word), a->text, sizeof a->text);
		return;
	}
}

/* ---- configuration ------------------------------------------------------- */

/* service_addr - "inet:HOST:PORT", "HOST:PORT" or "unix:/path" into s. */
static int service_addr(const char *item, struct psvc_service *s, char *err, size_t errlen)
{
	memset(&s->sa, 0, sizeof s->sa);
	if (!strncasecmp(item, "unix:", 5)) {
		const char *why;
		if (net_parse_unix(item + 5, &s->sa, &s->salen, &why) < 0) {
			snprintf(err, errlen, "%s: %s", item, why);
			return -1;
		}
		return 0;
	}
	const char *hp = !strncasecmp(item, "inet:", 5) ? item + 5 : item;
	const char *colon = strrchr(hp, ':');
	if (!colon || colon == hp || !colon[1] || strchr(item, '{') || strchr(item, '}')) {
		snprintf(err, errlen, "%s: not inet:HOST:PORT, HOST:PORT or unix:/path", item);
		return -1;
	}
	char host[256];
	size_t hl = (size_t)(colon - hp);
	if (hp[0] == '[' && colon[-1] == ']')
		hp++, hl -= 2;
	if (hl >= sizeof host) {
		snprintf(err, errlen, "%s: host name too long", item);
		return -1;
	}
	memcpy(host, hp, hl);
	host[hl] = 0;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	int rc = getaddrinfo(host, colon + 1, &hints, &res);
	if (rc != 0 || !res) {
		snprintf(err, errlen, "%s: %s", item, rc ? gai_strerror(rc) : "no address");
		return -1;
	}
	memcpy(&s->sa, res->ai_addr, res->ai_addrlen);
	s->salen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* default_action_valid - an action a default may be: NULL, or why not. */
static const char *default_action_valid(const char *v)
{
	struct psvc_action a;
	psvc_action_parse(v, "recipient", &a);
	if (a.kind != PSVC_DUNNO && a.kind != PSVC_OK && a.kind != PSVC_REFUSE)
		return "not DUNNO, OK, REJECT, DEFER or a 4NN/5NN reply";
	return NULL;
}

/* Postfix's per-service settings, and where they go. */
static const char *const setting_names[] = { "timeout",       "default_action", "max_idle",  "max_ttl",
					     "request_limit", "retry_delay",    "try_limit", "policy_context" };
#define NSETTINGS ((int)(sizeof setting_names / sizeof setting_names[0]))

/* setting_at - the setting named at s ("name =" or "name="): its index,
 * *val just past the '='; -1 when s starts no setting. */
static int setting_at(const char *s, const char **val)
{
	for (int k = 0; k < NSETTINGS; k++) {
		size_t n = strlen(setting_names[k]);
		if (strncasecmp(s, setting_names[k], n))
			continue;
		const char *p = s + n;
		while (*p == ' ')
			p++;
		if (*p == '=') {
			*val = p + 1;
			return k;
		}
	}
	return -1;
}

/* setting_set - one "name = value" of a service's { } settings. */
static int setting_set(struct psvc_service *s, int k, const char *v, char *err, size_t errlen)
{
	long long t = 0;
	const char *why = NULL;
	char *end = NULL;
	if (k == 1) {
		why = default_action_valid(v);
		if (!why) {
			free(s->default_action);
			s->default_action = xstrdup(v);
		}
	} else if (k == 7) {
		free(s->policy_context);
		s->policy_context = xstrdup(v);
	} else if (k == 4 || k == 6) {
		t = strtoll(v, &end, 10);
		if (!*v || *end || t < (k == 6 ? 1 : 0) || t > 1000000000)
			why = k == 6 ? "not a number from 1" : "not a number from 0";
		else
			*(k == 4 ? &s->request_limit : &s->try_limit) = t;
	} else if (conf_parse_time(v, &t) < 0 || t < (k == 5 ? 0 : 100)) {
		why = "not a time (\"10s\", \"500ms\")";
	} else {
		long long *f[] = { &s->timeout, NULL, &s->max_idle, &s->max_ttl, NULL, &s->retry_delay };
		*f[k] = t;
	}
	if (why)
		snprintf(err, errlen, "%s: %s = %s: %s", s->name, setting_names[k], v, why);
	return why ? -1 : 0;
}

/* psvc_settings_parse - see psvc.h. */
int psvc_settings_parse(struct psvc_service *s, const char *text, char *err, size_t errlen)
{
	const char *p = text, *val;
	while (*p == ' ')
		p++;
	if (!*p)
		return 0;
	int k = setting_at(p, &val);
	if (k < 0) {
		snprintf(err, errlen,
			 "%s: unknown setting \"%s\" (timeout, default_action, max_idle, max_ttl, "
			 "request_limit, retry_delay, try_limit, policy_context)",
			 s->name, p);
		return -1;
	}
	for (;;) {
		while (*val == ' ')
			val++;
		const char *e = val, *nval = NULL;
		int nk = -1;
		while (*e && (nk = (e[-1] == ' ' ? setting_at(e, &nval) : -1)) < 0)
			e++;
		size_t vl = (size_t)(e - val);
		while (vl && val[vl - 1] == ' ')
			vl--;
		char *v = xstrndup(val, vl);
		int rc = setting_set(s, k, v, err, errlen);
		free(v);
		if (rc < 0 || nk < 0)
			return rc;
		k = nk;
		val = nval;
	}
}

/* service_add - one service and its settings (settings may be NULL). */
static int service_add(const struct conf *c, struct psvc_conf *pc, const char *item, const char *settings,
		       char *err, size_t errlen)
{
	struct psvc_service s = { 0 };
	if (service_addr(item, &s, err, errlen) < 0)
		return -1;
	s.name = xstrdup(item);
	s.timeout = c->smtpd_policy_service_timeout;
	s.max_idle = c->smtpd_policy_service_max_idle;
	s.max_ttl = c->smtpd_policy_service_max_ttl;
	s.retry_delay = c->smtpd_policy_service_retry_delay;
	s.request_limit = c->smtpd_policy_service_request_limit;
	s.try_limit = c->smtpd_policy_service_try_limit;
	s.default_action = xstrdup(c->smtpd_policy_service_default_action);
	s.policy_context = xstrdup(c->smtpd_policy_service_policy_context);
	pc->v = xrealloc(pc->v, (size_t)(pc->n + 1) * sizeof *pc->v);
	pc->v[pc->n++] = s;
	return settings ? psvc_settings_parse(&pc->v[pc->n - 1], settings, err, errlen) : 0;
}

/* braced - the service and settings of an item "{ SERVICE, settings }"
 * (one item of the list, conf_list_split): the settings joined by
 * spaces. -1 when the '{' has no '}'. */
static int braced(const char *item, char **svc, struct strbuf *settings)
{
	struct conf_list in;
	*svc = NULL;
	if (conf_brace_items(item, &in) < 0)
		return -1;
	for (int k = 0; k < in.n; k++) {
		if (!k) {
			*svc = xstrdup(in.v[k]);
			continue;
		}
		sb_add(settings, " ", 1);
		sb_add(settings, in.v[k], strlen(in.v[k]));
	}
	conf_list_free(&in);
	return 0;
}

/* psvc_load - see psvc.h. */
int psvc_load(const struct conf *c, struct psvc_conf *pc, char *err, size_t errlen)
{
	memset(pc, 0, sizeof *pc);
	stats_family_declare(
	    "perimd_policy_service_requests_total", "counter",
	    "policy service answers by service and result (failed: no answer, the default action)");
	stats_family_declare("perimd_policy_service_failed_tries_total", "counter",
			     "policy service tries without an answer, by service and why");
	const char *why = default_action_valid(c->smtpd_policy_service_default_action);
	if (why) {
		snprintf(err, errlen, "smtpd_policy_service_default_action: %s: %s",
			 c->smtpd_policy_service_default_action, why);
		return -1;
	}
	const struct conf_list *l = &c->smtpd_policy_services;
	char e2[512];
	for (int i = 0; i < l->n; i++) {
		/* The keyword is optional, but one must name a service, as in
		 * Postfix: alone, last or doubled, a line lost its service. */
		int kw = !strcasecmp(l->v[i], "check_policy_service");
		if (kw && (i + 1 == l->n || !strcasecmp(l->v[i + 1], "check_policy_service"))) {
			snprintf(err, errlen,
				 "smtpd_policy_services: check_policy_service without a service after it");
			psvc_conf_free(pc);
			return -1;
		}
		if (kw)
			continue;
		int rc;
		if (l->v[i][0] == '{') {
			char *svc;
			struct strbuf set = { 0 };
			rc = braced(l->v[i], &svc, &set);
			if (rc < 0 || !svc)
				snprintf(e2, sizeof e2, "%s",
					 rc < 0 ? "\"{\" without \"}\"" : "\"{ }\" names no service");
			else
				rc = service_add(c, pc, svc, sb_str(&set), e2, sizeof e2);
			if (!svc)
				rc = -1;
			free(svc);
			sb_free(&set);
		} else {
			rc = service_add(c, pc, l->v[i], NULL, e2, sizeof e2);
		}
		if (rc < 0) {
			snprintf(err, errlen, "smtpd_policy_services: %s", e2);
			psvc_conf_free(pc);
			return -1;
		}
	}
	return 0;
}

/* psvc_conf_free - forget the services. */
void psvc_conf_free(struct psvc_conf *pc)
{
	for (int i = 0; i < pc->n; i++) {
		free(pc->v[i].name);
		free(pc->v[i].default_action);
		free(pc->v[i].policy_context);
	}
	free(pc->v);
	pc->v = NULL;
	pc->n = 0;
}
