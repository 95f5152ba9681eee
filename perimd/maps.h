/*
 * maps.h - lookup tables named "type:path" (Postfix style).
 *
 * Types: file: a text file of "key value" lines (# comments, blank lines,
 * keys case-insensitive), loaded into a hash table. A map is immutable once
 * opened and safe to read from any thread; reload by opening anew.
 */
#ifndef PERIMD_MAPS_H
#define PERIMD_MAPS_H

#include <stddef.h>

struct map;

/* map_open - NULL on error with err filled ("PATH:LINE: reason"). */
struct map *map_open(const char *spec, char *err, size_t errlen);
/* map_lookup - 1 found (*value set, valid while the map lives; "" when
 * the line had a key only), 0 not found, -1 lookup failure. */
int map_lookup(const struct map *m, const char *key, const char **value);
/* map_lookup_domain - key, then its parent domains (".example.com" style
 * entries match subdomains as Postfix's parent_domain_matches_subdomains),
 * returns as map_lookup. */
int map_lookup_domain(const struct map *m, const char *domain, const char **value);
void map_free(struct map *m);
const char *map_spec(const struct map *m);

#endif
