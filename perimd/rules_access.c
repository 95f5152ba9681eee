/*
 * rules_access.c - the actions of Postfix's access(5) and header_checks(5)
 * tables, parsed into what perimd does with them (rules.h). Pure: no map,
 * no session; the RCPT rules (rules.c) and the header checks use it, and
 * map loading calls it on every value (rules_access_check), so a value
 * that passes `perimd -t` is one perimd acts on at RCPT or after DATA.
 *
 * What there is no queue for (HOLD), and what would send mail elsewhere
 * (FILTER, REDIRECT, BCC), is refused with what to write instead.
 */
#include "rules.h"
#include "log.h"
#include "smtp_proto.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* copy_text - reply or log text: printable ASCII only, at most 400 bytes. */
static void copy_text(char *dst, size_t dstlen, const char *src)
{
	size_t j = 0;
	for (; *src && j + 1 < dstlen && j < 400; src++)
		dst[j++] = (*src >= ' ' && *src < 127) ? *src : '?';
	if (dstlen)
		dst[j] = 0;
}

/* The defaults of access(5) and header_checks(5) values in perimd: REJECT
 * is 550 (Postfix: access_map_reject_code, 554), a 421 is refused, an
 * enhanced code only of the reply's class, no default text (the caller's). */
static const struct smtp_act_defaults rules_defaults = {
	.reject_code = 550,
	.code_421 = 0,
	.refuse_text = "",
	.defer_if_text = "",
	.enh_any_class = 0,
	.header_max = 899,
	.header_8bit = 0,
};

/* refused_action - why perimd cannot take action act, with what to write. */
static const char *refused_action(enum smtp_act act)
{
	switch (act) {
	case SMTP_ACT_HOLD:
		return "HOLD: perimd has no queue to hold mail in; write DEFER text (the sender retries), "
		       "DISCARD or REJECT text";
	case SMTP_ACT_FILTER:
	case SMTP_ACT_REDIRECT:
	case SMTP_ACT_BCC:
		return "FILTER, REDIRECT and BCC are not supported: perimd relays each message to its "
		       "recipients' backends only; route with transport_maps";
	case SMTP_ACT_REPLACE:
	case SMTP_ACT_STRIP:
		return "REPLACE and STRIP are not supported: write IGNORE (delete the header) or PREPEND";
	default: return NULL;
	}
}

/* access_act - what action p means in a table of kind; -1 when none. */
static int access_act(const struct smtp_action *p, int kind)
{
	int acc = kind == RULES_ACCESS;
	switch (p->act) {
	case SMTP_ACT_DUNNO: return RA_DUNNO;
	case SMTP_ACT_OK: return acc ? RA_OK : RA_DUNNO;
	case SMTP_ACT_PERMIT: return acc ? RA_OK : -1;
	case SMTP_ACT_REJECT: return RA_REFUSE;
	case SMTP_ACT_DEFER:
	case SMTP_ACT_NNN: return acc ? RA_REFUSE : -1;
	case SMTP_ACT_DEFER_IF_PERMIT: return acc ? RA_DEFER_IF_PERMIT : -1;
	case SMTP_ACT_DEFER_IF_REJECT: return acc ? RA_DEFER_IF_REJECT : -1;
	case SMTP_ACT_WARN:
	case SMTP_ACT_INFO: return RA_WARN;
	case SMTP_ACT_DISCARD: return RA_DISCARD;
	case SMTP_ACT_PREPEND: return RA_PREPEND;
	case SMTP_ACT_IGNORE: return acc ? -1 : RA_IGNORE;
	default: return -1;
	}
}

/* rules_action_parse - see rules.h. */
int rules_action_parse(const char *value, int kind, struct rules_action *a, char *why, size_t whylen)
{
	struct smtp_action p;
	const char *no;
	memset(a, 0, sizeof *a);
	if (why && whylen)
		why[0] = 0;
	smtp_action_parse(value, &rules_defaults, &p);
	if ((no = refused_action(p.act))) {
		snprintf(why, whylen, "%s", no);
		return -1;
	}
	int act = access_act(&p, kind);
	if (act < 0) {
		snprintf(why, whylen,
			 kind == RULES_ACCESS
			     ? "\"%.40s\" is no action perimd takes; write OK, PERMIT, DUNNO, REJECT "
			       "[text], DEFER [text], DEFER_IF_PERMIT [text], DEFER_IF_REJECT [text], "
			       "4NN text, 5NN text, WARN text, DISCARD [text] or PREPEND header: value"
			     : "\"%.40s\" is no action perimd takes; write REJECT [text], WARN text, "
			       "IGNORE, PREPEND header: value, DISCARD [text] or DUNNO",
			 p.word);
		return -1;
	}
	a->act = (enum rules_act)act;
	if (p.act == SMTP_ACT_NNN && p.code == 421) {
		snprintf(why, whylen, "421 closes the session, which an access map cannot: write 450 text");
		return -1;
	}
	if (p.act == SMTP_ACT_PREPEND && !p.header_ok) {
		snprintf(why, whylen, "PREPEND needs a header, \"PREPEND Name: value\"");
		return -1;
	}
	if ((act == RA_OK || act == RA_DUNNO || act == RA_IGNORE) && *p.text) {
		snprintf(why, whylen, "%.*s takes no text", (int)p.wlen, p.word);
		return -1;
	}
	a->code = p.code;
	snprintf(a->enh, sizeof a->enh, "%s", p.enh);
	if (act == RA_PREPEND)
		snprintf(a->text, sizeof a->text, "%s", p.text);
	else
		copy_text(a->text, sizeof a->text, p.text);
	return 0;
}

/* rules_access_check - see rules.h. */
int rules_access_check(const char *value, char *why, size_t whylen)
{
	struct rules_action a;
	return rules_action_parse(value, RULES_ACCESS, &a, why, whylen);
}

/* rules_header_check - see rules.h. */
int rules_header_check(const char *value, char *why, size_t whylen)
{
	struct rules_action a;
	return rules_action_parse(value, RULES_HEADER, &a, why, whylen);
}
