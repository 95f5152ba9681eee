/*
 * rules.h - the client, HELO, sender and recipient rules of the RCPT chain
 * (policy.c's table calls these steps; see policy_step.h for the step contract)
 * and the maps they use.
 */
#ifndef PERIMD_RULES_H
#define PERIMD_RULES_H

#include "policy_step.h"

#include <stddef.h>

/* rules_load - open the maps of p->conf; 0, or -1 with err. */
int rules_load(struct policy *p, char *err, size_t errlen);
/* rules_free - close them. */
void rules_free(struct policy *p);

/* rules_step_role - a role account (role_accounts) is marked exempt. */
enum policy_step rules_step_role(struct policy_req *r, struct policy_verdict *v);
/* rules_step_recipient - relay_recipient_maps, then the callout. */
enum policy_step rules_step_recipient(struct policy_req *r, struct policy_verdict *v);
/* rules_step_delayed - recipient_access_maps, then the delayed client,
 * HELO and sender verdicts (client_access_maps, reject_invalid_helo_hostname,
 * sender_access_maps); skipped for exempt recipients. */
enum policy_step rules_step_delayed(struct policy_req *r, struct policy_verdict *v);

/* ---- actions of access(5) and header_checks(5) tables (rules_access.c) ---- */

enum rules_act {
	RA_DUNNO,           /* no decision (also WARN after logging) */
	RA_OK,              /* OK, PERMIT: accepted, exempt as a role account */
	RA_REFUSE,          /* REJECT, DEFER, 4NN, 5NN: code, enh, text */
	RA_DEFER_IF_PERMIT, /* 450 unless a later check refuses */
	RA_DEFER_IF_REJECT, /* a later 5xx refusal becomes this 450 */
	RA_WARN,            /* WARN, INFO: logged, then as DUNNO */
	RA_DISCARD,         /* 250 to the client, not relayed */
	RA_PREPEND,         /* text is a header to add to the relayed copy */
	RA_IGNORE,          /* header_checks only: delete the header */
};
enum { RULES_ACCESS, RULES_HEADER };

struct rules_action {
	enum rules_act act;
	int code;       /* RA_REFUSE, RA_DEFER_IF_*: 4xx or 5xx */
	char enh[16];   /* its enhanced code, given or the class's x.7.1 */
	char text[420]; /* reply text (may be ""), log text or header */
};

/* ---- header_checks (rules_header.c) ---- */

struct map;
struct spool;

enum { RULES_HC_PASS, RULES_HC_REFUSE, RULES_HC_DISCARD };
struct rules_hc {
	int verdict;             /* RULES_HC_* */
	char reply[512];         /* RULES_HC_REFUSE: "550 5.7.1 text" */
	struct spool *rewritten; /* IGNORE/PREPEND changed the headers: the
				  * message to relay instead (the caller's
				  * to free); NULL when unchanged */
};

/* rules_header_checks - header_checks table m (a regexp: map) on each
 * logical header of the finished spool sp: the first REJECT or DISCARD
 * decides; WARN is logged; IGNORE drops the header, PREPEND adds one
 * above it. 0, or -1 when the spool cannot be read or rewritten. */
int rules_header_checks(const struct map *m, struct spool *sp, const char *msgid, struct rules_hc *out);

/* rules_action_parse - one table value of kind RULES_ACCESS or
 * RULES_HEADER into a; 0, or -1 with why saying what to write instead
 * (HOLD, FILTER, REDIRECT, BCC, unknown words, OK with text ...). */
int rules_action_parse(const char *value, int kind, struct rules_action *a, char *why, size_t whylen);
/* rules_access_check, rules_header_check - map_value_check_fn (maps.h)
 * for access maps and header_checks tables. */
int rules_access_check(const char *value, char *why, size_t whylen);
int rules_header_check(const char *value, char *why, size_t whylen);

#endif
