/*
 * dnscheck.h - the checks that need DNS, per session: the client's PTR and
 * its forward confirmation (FCrDNS), DNSBL and DNSWL listings (started at
 * connect), the sender domain (started at MAIL). Lookups run in the
 * background; their verdicts are given at RCPT by the policy steps below
 * (DESIGN.md: verdicts delayed to RCPT), which wait, asynchronously, only
 * for a lookup still running.
 *
 * A struct dnscheck belongs to one session, on its loop; dnscheck_free()
 * cancels every lookup and a waiting step. c MUST outlive it.
 */
#ifndef PERIMD_DNSCHECK_H
#define PERIMD_DNSCHECK_H

#include "policy_step.h"

#include <stddef.h>

struct ev_loop;
struct conf;
struct dnscheck;

/* dnscheck_connect - start the client's lookups that c asks for. */
struct dnscheck *dnscheck_connect(struct ev_loop *loop, const struct conf *c, const char *client_addr);
/* dnscheck_mail - MAIL FROM: start the sender domain's lookup (sender ""
 * is the null sender: nothing to check). Replaces an earlier one. */
void dnscheck_mail(struct dnscheck *d, const char *sender);
void dnscheck_free(struct dnscheck *d);

/* dnscheck_client_name - the client's confirmed (FCrDNS) host name once
 * known, else NULL. */
const char *dnscheck_client_name(const struct dnscheck *d);
/* dnscheck_reverse_name - the client's PTR name (confirmed or not) once
 * known, else NULL. */
const char *dnscheck_reverse_name(const struct dnscheck *d);

/* dnscheck_wait_client_name - for a step that needs the client's name
 * (dnscheck_client_name) settled: STEP_PASS when it is (confirmed or not
 * to be had), else STEP_ASYNC (registered with policy_step_async): once it
 * is, resume(r) runs and the step goes on, ending with policy_step_done(). */
enum policy_step dnscheck_wait_client_name(struct policy_req *r, void (*resume)(struct policy_req *r));

/* The RCPT steps (policy.c's table; env->dns is the session's dnscheck).
 * Role accounts (r->exempt) pass all three. step_dnsbl sets r->dnswl for
 * a client on a dnswl_sites list (the greylist step skips it). */
enum policy_step dnscheck_step_client(struct policy_req *r, struct policy_verdict *v);
enum policy_step dnscheck_step_sender(struct policy_req *r, struct policy_verdict *v);
enum policy_step dnscheck_step_dnsbl(struct policy_req *r, struct policy_verdict *v);

/* A dnsbl_sites / dnswl_sites entry: zone[=a.b.c.d][*weight], each
 * octet of the filter a number, [lo..hi] or [x;y;z] (Postfix's syntax).
 * Without a filter, any 127.0.0.0/8 answer but 127.255.255.0/24 (the
 * lists' error codes) counts. */
struct dnsbl_site {
	char zone[256];
	unsigned char allow[4][32]; /* bitmap of allowed values per octet */
	int filtered;               /* a filter was given */
	int weight;
};
/* dnsbl_site_parse - pure; 0, or -1 with *why. */
int dnsbl_site_parse(const char *item, struct dnsbl_site *s, const char **why);
/* dnsbl_site_match - does an answer address (text) count? */
int dnsbl_site_match(const struct dnsbl_site *s, const char *addr);

/* dnscheck_conf_check - dnsbl_sites, dnswl_sites, dns_servers syntax. */
int dnscheck_conf_check(const struct conf *c, char *err, size_t errlen);

#endif
