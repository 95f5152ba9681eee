/*
 * dnsmx.h - a backend written as a host name ("example.com",
 * "mx.example.com:2525") turned into the addresses to try, in order:
 * its MX hosts by preference, each host's A then AAAA addresses; a name
 * without MX records is its own mail host (RFC 5321 §5.1). Addresses that
 * are perimd's own listening addresses are left out (relaying to them
 * would loop: a relay domain's public MX is perimd itself).
 *
 * done() runs later on the same loop, exactly once, unless
 * dnsmx_cancel() came first; the list it gets is the caller's to free.
 */
#ifndef PERIMD_DNSMX_H
#define PERIMD_DNSMX_H

#include <stddef.h>

struct ev_loop;
struct conf;

struct dnsmx_list {
	int n;
	char **v;      /* "[192.0.2.1]:25", "[2001:db8::1]:25" */
	int temp;      /* n == 0 because a lookup failed for now */
	char why[300]; /* n == 0: the reason; else what was left out */
};

typedef void dnsmx_done_fn(void *arg, struct dnsmx_list *l);
struct dnsmx_req;

/* dnsmx_target_host - is target a host name entry? Fills host (lower
 * case) and port (25 by default); 0 = yes, -1 = not a valid host name. */
int dnsmx_target_host(const char *target, char *host, size_t hostlen, int *port);

/* dnsmx_resolve - mx: by MX then A/AAAA; 0: the host's own A/AAAA only
 * (a backend written "[host]", as Postfix's no-MX form). */
struct dnsmx_req *dnsmx_resolve(struct ev_loop *loop, const struct conf *c, const char *host, int port,
				int mx, dnsmx_done_fn *done, void *arg);
void dnsmx_cancel(struct dnsmx_req *q);
void dnsmx_list_free(struct dnsmx_list *l);

#endif
