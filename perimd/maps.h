/*
 * maps.h - lookup tables named "type:path" (Postfix style).
 *
 * Types:
 *   file:PATH    a text file of "key value" lines (# comments, blank lines,
 *                keys case-insensitive), loaded into a hash table; keys that
 *                are CIDR blocks ("192.0.2.0/24", "2001:db8::/32") go to a
 *                list searched by map_query(MAP_CLIENT). Answers at once.
 *   regexp:PATH  Postfix's regexp_table(5): "/pattern/flags result" lines
 *                tried in order against the whole key (maps_regexp.h).
 *   sqlite:PATH  a SQLite database (table "map", columns "key", "value"),
 *                or a ".cf" file naming one (dbpath, query).
 *   mysql:PATH   a ".cf" file: hosts, port, user, password, dbname, query,
 *                timeout, cache_ttl (MariaDB Connector/C).
 *   ldap:PATH    a ".cf" file in the shape of Postfix's ldap_table(5)
 *                (maps_ldap.h; OpenLDAP's libldap), asynchronous like
 *                mysql:, with positive and negative cache TTLs.
 * sqlite:, mysql: and ldap: maps are asynchronous (map_is_async): their lookups
 * run on jobs.h workers, over a small pool of connections per map, and the
 * answers are cached for cache_ttl. Queries take the key as bound
 * parameters: '%s' (the key), '%u' (its local part), '%d' (its domain).
 *
 * A map is immutable once opened, reference-counted and safe to read from
 * any thread. Opening a spec that is already open returns the same map when
 * its file did not change; when the file changed and no longer loads, the
 * previous table is kept (the error is logged with file and line), so a
 * SIGHUP with a broken map never loses the working one.
 */
#ifndef PERIMD_MAPS_H
#define PERIMD_MAPS_H

#include <stddef.h>

struct map;
struct ev_loop;

/* map_open - NULL on error with err filled ("PATH:LINE: reason"). Each
 * successful open MUST be matched by one map_free(). */
struct map *map_open(const char *spec, char *err, size_t errlen);
/* map_value_check_fn - 0 when value is one the map's user can act on, else
 * -1 with why ("... (write X instead)"). */
typedef int map_value_check_fn(const char *value, char *why, size_t whylen);
/* map_open_checked - map_open, and every value of a file: (or regexp:)
 * map is checked when it is loaded (at -t, start and each reload): a
 * file with a bad value does not load, and err names each bad line
 * ("PATH:LINE: key: why", one per line). Values of database and
 * directory maps are checked by the caller at lookup. */
struct map *map_open_checked(const char *spec, map_value_check_fn *check, char *err, size_t errlen);
/* map_lookup - 1 found (*value set, valid while the map lives; "" when
 * the line had a key only), 0 not found, -1 lookup failure. For
 * synchronous maps only (-1 on an asynchronous one). */
int map_lookup(const struct map *m, const char *key, const char **value);
/* map_lookup_domain - key, then its parent domains (".example.com" style
 * entries match subdomains as Postfix's parent_domain_matches_subdomains),
 * returns as map_lookup. */
int map_lookup_domain(const struct map *m, const char *domain, const char **value);
void map_free(struct map *m);
/* maps_changed - 1 when a file: map's file changed since it was loaded
 * (or since the last call reported it): the caller reloads. */
int maps_changed(void);
const char *map_spec(const struct map *m);
/* map_is_async - lookups must go through map_query_async(). */
int map_is_async(const struct map *m);

/* What a query looks for, and so which keys it tries, in order (the first
 * one found wins):
 *   MAP_KEY          the key as given
 *   MAP_DOMAIN       domain, then ".parent" domains (map_lookup_domain)
 *   MAP_ADDR         user@domain, domain, user@ (Postfix access(5) order)
 *   MAP_ADDR_PARENT  user@domain, domain, its ".parent" domains, user@
 *   MAP_CLIENT       an IP address: itself, the CIDR entries (longest
 *                    prefix first), then IPv4 "a.b.c", "a.b", "a"
 *   MAP_RCPT         user@domain, then "@domain" (the catch-all of a
 *                    domain): Postfix's order for relay_recipient_maps
 *                    and virtual(5) tables */
enum map_kind { MAP_KEY, MAP_DOMAIN, MAP_ADDR, MAP_ADDR_PARENT, MAP_CLIENT, MAP_RCPT };

/* map_query - a synchronous lookup of kind: returns as map_lookup; the
 * value (up to vallen - 1 bytes) is copied to val. On an asynchronous map
 * it blocks: worker threads and tests only. err gets a reason on -1. */
int map_query(const struct map *m, enum map_kind kind, const char *key, char *val, size_t vallen, char *err,
	      size_t errlen);

/* map_query_async - the same on a worker thread (or from the cache); cb
 * runs later on loop, never inside this call, with result 1/0/-1 and the
 * value (valid during the call), unless map_cancel() came first. The map
 * is kept alive by the request. */
struct map_req;
typedef void map_done_fn(void *arg, int result, const char *value);
struct map_req *map_query_async(const struct map *m, enum map_kind kind, const char *key,
				struct ev_loop *loop, map_done_fn *cb, void *arg);
/* map_cancel - from loop's thread, before cb ran. */
void map_cancel(struct map_req *q);

/* map_cidr_parse - "addr/len" into a 16-byte address (IPv4 mapped) and a
 * prefix length over those 128 bits; 0, or -1 when it is no CIDR block. */
int map_cidr_parse(const char *text, size_t n, unsigned char addr[16], int *bits);

#endif
