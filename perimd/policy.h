/*
 * policy.h - what the configuration decides about an envelope: the
 * current policy snapshot (relay control, routing) and the ordered RCPT
 * checks (policy.c's table of steps from rules.c, dnscheck.c and grey.c).
 *
 * A policy is built from one configuration snapshot (maps opened, backend
 * lists checked, smtpd_milters parsed) and is immutable afterwards;
 * sessions hold a reference for their lifetime, so a reload never changes
 * a session mid-way.
 */
#ifndef PERIMD_POLICY_H
#define PERIMD_POLICY_H

#include "policy_step.h"

#include <stddef.h>

struct conf;

/* policy_load - build from c (takes over the caller's reference to c).
 * NULL with err filled when a map cannot be opened or a backend is bad. */
struct policy *policy_load(struct conf *c, char *err, size_t errlen);
void policy_install(struct policy *p);
struct policy *policy_acquire(void);
void policy_release(struct policy *p);

/* policy_relay_domain - 1: domain is ours to relay, 0: not, -1: a map
 * lookup failed (451 4.3.0). Case-insensitive; ".example.com" entries
 * match subdomains. */
int policy_relay_domain(const struct policy *p, const char *domain);

/* policy_route - backend list text for a recipient domain: the
 * transport_maps value, or NULL for the relay_backends default. *route
 * stays valid while p lives. Returns 0, or -1 on lookup failure.
 * policy_relay_domain and policy_route answer at once, so with an
 * asynchronous relay_domains or transport_maps map (sqlite:, mysql:,
 * ldap:) they answer -1: RCPT uses policy_domain; a recipient a milter
 * adds is still checked with these two. */
int policy_route(const struct policy *p, const char *domain, const char **route);

/* policy_domain - relay control and routing for a recipient domain, with
 * maps of any type (relay_domains and transport_maps may be sqlite:,
 * mysql: or ldap: maps): res->relay as policy_relay_domain, and for a
 * domain we relay the transport_maps value (have_route; route_failed on a
 * lookup failure). Returns 1 when answered at once (*res filled, cb never
 * called), else 0: cb(arg, res) runs later on loop, unless
 * policy_domain_free(*dp) came first (which the caller calls after cb
 * too). p MUST outlive the request. */
struct ev_loop;
struct policy_dom;
struct policy_dom_result {
	int relay; /* 1 ours, 0 not, -1 a lookup failed */
	int have_route, route_failed;
	char route[1024];
};
typedef void policy_dom_fn(void *arg, const struct policy_dom_result *res);
int policy_domain(const struct policy *p, const char *domain, struct ev_loop *loop, policy_dom_fn *cb,
		  void *arg, struct policy_dom_result *res, struct policy_dom **dp);
void policy_domain_free(struct policy_dom *d);

/* policy_rcpt - run the ordered RCPT checks (in policy.c's table order:
 * verify cache, role accounts, recipient validation, client/HELO/sender
 * verdicts, DNSBL, greylisting). Returns 1 when decided at once (*v filled,
 * done() never called), or 0 when a check went asynchronous: done(arg, v)
 * then runs later on env->loop, unless policy_cancel(*req) came first.
 * env MUST stay valid until then. */
int policy_rcpt(const struct policy_env *env, struct policy_verdict *v, policy_done_fn *done, void *arg,
		struct policy_req **req);
void policy_cancel(struct policy_req *req);

#endif
