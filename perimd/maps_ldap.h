/*
 * maps_ldap.h - the ldap: lookup back end of maps.c (private to maps.c,
 * maps_ldap.c and their tests).
 *
 * An ldap: map is a .cf file in the shape of Postfix's ldap_table(5) (same
 * parameter names and meanings; the differences are in perimd.conf(5)).
 * map_ldap_lookup() blocks and is called from worker threads only (the
 * map's own jobs.h pool of map_ldap_workers() threads), any number at once: each server_host URI has its own bounded pool of
 * persistent connections (connection_limit), taken in server_host order;
 * a server that failed is skipped for a growing back-off, then tried again
 * by the next lookup, so lookups resume by themselves.
 *
 * The parser, the RFC 4515 escaping and the %-expansions are pure (no I/O)
 * and fuzzed (tests/fuzz/fuzz_ldapcf.c, fuzz_ldapesc.c).
 */
#ifndef PERIMD_MAPS_LDAP_H
#define PERIMD_MAPS_LDAP_H

#include <stddef.h>

#define LDAP_CF_MAX_HOSTS 16
#define LDAP_CF_MAX_ATTRS 16
#define LDAP_CF_MAX_DOMAINS 64

enum ldap_cf_scope { LDAP_CF_SUB, LDAP_CF_BASE, LDAP_CF_ONE };

/* The settings of one .cf file, as parsed. */
struct ldap_cf {
	char *uris[LDAP_CF_MAX_HOSTS]; /* "ldap://host:port" / "ldaps://host:port" */
	int nuris;
	long long port; /* server_port: for hosts without one */
	char *search_base;
	enum ldap_cf_scope scope;
	char *query_filter;
	char *attrs[LDAP_CF_MAX_ATTRS + 1]; /* result_attribute, NULL-terminated */
	int nattrs;
	char *result_format;
	char *domains[LDAP_CF_MAX_DOMAINS];
	int ndomains;
	int bind; /* bind = yes: simple bind (anonymous without bind_dn) */
	char *bind_dn, *bind_pw;
	int version; /* 2 or 3 */
	long long timeout_ms;
	int start_tls;
	char *tls_ca_cert_file, *tls_ca_cert_dir;
	int tls_require_cert;
	long long size_limit;                          /* 0: no limit */
	int dereference;                               /* 0 never .. 3 always (LDAP_DEREF_*) */
	long long connection_limit;                    /* perimd: connections per server */
	long long cache_ttl_ms, negative_cache_ttl_ms; /* perimd */
	int filter_needs_domain; /* query_filter uses %d: keys without one are not looked up */
};

/* map_ldap_cf_parse - the n bytes of a .cf file named path into cf (which
 * it initialises: map_ldap_cf_free() it in every case); 0, or -1 with err
 * "PATH:LINE: reason" (a setting perimd does not support is an error, never
 * ignored). Pure: no I/O. */
int map_ldap_cf_parse(struct ldap_cf *cf, const char *path, const char *text, size_t n, char *err,
		      size_t errlen);
void map_ldap_cf_free(struct ldap_cf *cf);

/* map_ldap_escape - the n bytes at in as an RFC 4515 assertion value:
 * '*', '(', ')', '\\', NUL and every byte outside printable ASCII become
 * "\XX". Writes at most outlen bytes including a NUL; returns the length
 * written, or (size_t)-1 when it does not fit (out is then ""). */
size_t map_ldap_escape(const char *in, size_t n, char *out, size_t outlen);

/* map_ldap_expand - a query_filter (filter = 1: the expansions escaped) or
 * result_format (filter = 0; res is the attribute value) with Postfix's
 * expansions: %% a '%'; in a filter %s/%S the key, %u/%U its local part
 * (the whole key when it has no '@'), %d/%D its domain; in a result format
 * %s %u %d the same parts of res and %S %U %D those of the key. Returns 1,
 * 0 when the expansion is suppressed (%d of a key or value without a
 * domain, as Postfix), -1 when out is too small or the format is bad. */
int map_ldap_expand(const char *fmt, const char *key, const char *res, int filter, char *out, size_t outlen);

/* map_ldap_key_eligible - 1 when the key may be looked up at all: not
 * empty, and with `domain` set, "user@domain" with a local part and one
 * of those domains (Postfix: no "user", "@domain" or bare domain lookups). */
int map_ldap_key_eligible(const struct ldap_cf *cf, const char *key);

struct map_ldap;

/* map_ldap_open - read and check path; then connect to the servers once:
 * a refused bind (invalidCredentials and the like) is an error, a server
 * that cannot be reached only a warning (the map opens; lookups fail with
 * 451 until it answers). NULL with err on error. */
struct map_ldap *map_ldap_open(const char *path, char *err, size_t errlen);
/* map_ldap_lookup - one key: 1 found (value in val: the result values,
 * comma-separated, as Postfix), 0 not found, -1 the lookup failed (no
 * server answered, timeout, error) with err filled. */
int map_ldap_lookup(struct map_ldap *l, const char *key, size_t keylen, char *val, size_t vallen, char *err,
		    size_t errlen);
/* map_ldap_cache_ttl - how long an answer (1 found, 0 not found) may be
 * cached, in ms. */
long long map_ldap_cache_ttl(const struct map_ldap *l, int result);
/* map_ldap_workers - how many lookups may usefully run at once: the
 * threads of the map's own worker pool (maps.c), connection_limit. */
int map_ldap_workers(const struct map_ldap *l);
void map_ldap_free(struct map_ldap *l);

#endif
