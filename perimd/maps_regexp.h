/*
 * maps_regexp.h - the regexp: map type of maps.h, in the shape of
 * Postfix's regexp_table(5):
 *
 *   /pattern/flags result     the first pattern matching the whole lookup
 *                             key gives result; $1..$9 (or ${1}) in it are
 *                             the pattern's groups, $$ is '$'
 *   !/pattern/flags result    result when the pattern does NOT match
 *   if /pattern/flags         the lines up to the matching endif are tried
 *   ...                       only when the pattern matches (if !/.../:
 *   endif                     when it does not); nested up to 32 deep
 *
 * Patterns are POSIX extended regexes, case-insensitive unless the flag
 * 'i' toggles it; 'm' is REG_NEWLINE. '/' is the only delimiter ("\/" in a
 * pattern). '#' comments, blank lines, and continuation lines (starting
 * with white space) as in file: maps. Each pattern, and the patterns of a
 * file together, are held to the cost limits of recost.h; a bad line
 * (syntax, cost, a result the map's user cannot act on) refuses the file,
 * every bad line named "PATH:LINE: why".
 */
#ifndef PERIMD_MAPS_REGEXP_H
#define PERIMD_MAPS_REGEXP_H

#include <stddef.h>

/* the check of each result (maps.h's map_value_check_fn) */
typedef int map_regexp_check_fn(const char *value, char *why, size_t whylen);

struct map_regexp;

/* map_regexp_parse - a table from len bytes of text (name is the file name
 * in errors); each result checked by check (NULL: none). NULL with err. */
struct map_regexp *map_regexp_parse(const char *text, size_t len, const char *name,
				    map_regexp_check_fn *check, char *err, size_t errlen);
/* map_regexp_open - the same from a file. */
struct map_regexp *map_regexp_open(const char *path, map_regexp_check_fn *check, char *err, size_t errlen);
/* map_regexp_lookup - 1 with the (expanded) result in val, or 0. */
int map_regexp_lookup(const struct map_regexp *t, const char *key, char *val, size_t vallen);
void map_regexp_free(struct map_regexp *t);

#endif
