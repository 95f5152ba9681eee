/*
 * policy.h - what the configuration decides about an envelope: relay
 * control and routing (this file grows into the ordered checks of DESIGN.md).
 *
 * A policy is built from one configuration snapshot (maps opened, backend
 * lists checked) and is immutable afterwards; sessions hold a reference
 * for their lifetime, so a reload never changes a session mid-way.
 */
#ifndef PERIMD_POLICY_H
#define PERIMD_POLICY_H

#include <stddef.h>

struct conf;
struct conf_list;

struct policy {
	struct conf *conf;     /* the snapshot this policy was built from */
	/* private */
	struct map **relay_maps;
	int nrelay_maps;
	struct map *transport;
	int refs;
};

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
 * stays valid while p lives. Returns 0, or -1 on lookup failure. */
int policy_route(const struct policy *p, const char *domain, const char **route);

/* policy_split_list - split "a, b c" into l (free with policy_list_free). */
void policy_split_list(const char *s, struct conf_list *l);
void policy_list_free(struct conf_list *l);

#endif
