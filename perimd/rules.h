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

/* rules_access_action - parse an access map value: 1 OK, 0 DUNNO, 2
 * REJECT (text gets its text, "" when none), -1 not an action. */
int rules_access_action(const char *value, char *text, size_t textlen);

#endif
