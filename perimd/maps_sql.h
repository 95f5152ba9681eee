/*
 * maps_sql.h - the sqlite: and mysql: lookup back ends of maps.c (private
 * to maps.c and maps_sql.c).
 *
 * A struct map_sql holds the parsed .cf settings and a pool of open
 * connections (each with its prepared statement); map_sql_lookup() blocks
 * and is called from worker threads only, any number at once.
 */
#ifndef PERIMD_MAPS_SQL_H
#define PERIMD_MAPS_SQL_H

#include <stddef.h>

struct map_sql;

/* map_sql_open - type "sqlite" or "mysql", path of the database or .cf
 * file; NULL with err ("PATH:LINE: reason") on a bad configuration. */
struct map_sql *map_sql_open(const char *type, const char *path, char *err, size_t errlen);
/* map_sql_lookup - one key: 1 found (value in val), 0 not found, -1 the
 * lookup failed (database down, query error) with err filled. */
int map_sql_lookup(struct map_sql *s, const char *key, size_t keylen, char *val, size_t vallen, char *err,
		   size_t errlen);
/* map_sql_cache_ttl - how long answers may be cached, in ms. */
long long map_sql_cache_ttl(const struct map_sql *s);
void map_sql_free(struct map_sql *s);

#endif
