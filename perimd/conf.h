/*
 * conf.h - the configuration: parsing `name = value` files (Postfix main.cf
 * shape), -o overrides, validation, and dumps for -n / -d.
 *
 * Every parameter is declared once in conf_params.h. A loaded configuration
 * is an immutable, reference-counted snapshot: readers take it with
 * conf_acquire() and drop it with conf_release(); a reload builds a new one
 * and swaps it in with conf_install(). Times are stored in milliseconds,
 * sizes in bytes.
 */
#ifndef PERIMD_CONF_H
#define PERIMD_CONF_H

#include "conf_enum.h"

#include <stdio.h>

/* A list value ("a, b c"): n items, v[n] == NULL. */
struct conf_list {
	int n;
	char **v;
};

#define CONF_CTYPE_BOOL int
#define CONF_CTYPE_INT long long
#define CONF_CTYPE_TIME long long /* milliseconds */
#define CONF_CTYPE_SIZE long long /* bytes */
#define CONF_CTYPE_STR char *     /* never NULL ("" when empty) */
#define CONF_CTYPE_ENUM char *    /* one of the listed choices, and NAME_e */
#define CONF_CTYPE_LIST struct conf_list
#define CONF_CTYPE_MAP char *               /* "type:path" or "" */
#define CONF_CTYPE_MAPLIST struct conf_list /* list items, or one "type:path" */

/* The fields of one parameter: its value; an ENUM also its choice as the
 * C enum of conf_enum.h (NAME_e), which code compares. */
#define CONF_FIELD_BOOL(name) CONF_CTYPE_BOOL name;
#define CONF_FIELD_INT(name) CONF_CTYPE_INT name;
#define CONF_FIELD_TIME(name) CONF_CTYPE_TIME name;
#define CONF_FIELD_SIZE(name) CONF_CTYPE_SIZE name;
#define CONF_FIELD_STR(name) CONF_CTYPE_STR name;
#define CONF_FIELD_ENUM(name) \
	CONF_CTYPE_ENUM name; \
	enum conf_##name name##_e;
#define CONF_FIELD_LIST(name) CONF_CTYPE_LIST name;
#define CONF_FIELD_MAP(name) CONF_CTYPE_MAP name;
#define CONF_FIELD_MAPLIST(name) CONF_CTYPE_MAPLIST name;

struct conf {
#define PARAM(type, name, def, min, max, choices, doc) CONF_FIELD_##type(name)
#include "conf_params.h"
#undef PARAM
	unsigned long long gen; /* unique per conf_load(): a key for what
				 * code derives from a conf once (av.c) */
	char *path;             /* file it was read from ("" = defaults only) */
	int refs;               /* private */
	char **raw;             /* private: each parameter's text before $name
			  * expansion, in table order, for conf_dump() */
	char **where;           /* private: where each was set, for conf_blame() */
};

/* conf_load - defaults, then the file (path may be NULL: defaults only; a
 * missing file is an error unless missing_ok), then overrides ("name=value"
 * strings, as from -o). $name references are expanded after all is read.
 * Returns NULL and fills err ("FILE:LINE: NAME: reason") on error. */
struct conf *conf_load(const char *path, int missing_ok, char **overrides, int n_overrides, char *err,
		       size_t errlen);

/* conf_dump - print parameters as a readable config file: all of them
 * (defaults_too = 1, for -d on a default conf) or only those whose value
 * differs from the default (-n). Values are printed as written, before
 * $name expansion (lists joined with ", "), as Postfix's postconf does.
 * The output reads back to the same conf. */
void conf_dump(FILE *out, const struct conf *c, int defaults_too);
/* conf_dump_names - the same for the parameters named (postconf -d NAME,
 * -n NAME): -1, with a line on stderr for each, when a name is unknown
 * (then nothing is printed). */
int conf_dump_names(FILE *out, const struct conf *c, int defaults_too, char *const *names, int n);

/* conf_install - make c the current configuration (takes the caller's
 * reference). */
void conf_install(struct conf *c);
/* conf_ref - one more reference on c (dropped with conf_release). */
void conf_ref(struct conf *c);
/* conf_acquire - the current configuration, with a reference. */
struct conf *conf_acquire(void);
void conf_release(struct conf *c);

/* conf_restart_changes - call fn with the name of each restart-only
 * parameter (RESTART in conf_params.h) whose value differs between old
 * and c (after expansion); returns how many. A reload warns with it. */
int conf_restart_changes(const struct conf *old, const struct conf *c, void (*fn)(const char *name));
/* conf_enum_check - each ENUM parameter's choices column has as many
 * entries as its C enum (conf_enum.h): 0, or -1 naming the first that
 * does not in err. */
int conf_enum_check(char *err, size_t errlen);
/* conf_value_of - the value of one parameter (after $name expansion and
 * its own check) as the file at path sets it, even when other lines of
 * the file are wrong: for the commands that only need stats_listen
 * (perimd healthcheck must not call a running daemon unhealthy because
 * the file was edited with a typo since). NULL with err filled when the
 * file cannot be read or that parameter is wrong; the caller frees. */
char *conf_value_of(const char *path, int missing_ok, const char *name, char *err, size_t errlen);

/* conf_blame - where the parameter an error line of a later check is
 * about was set: the line starts with a parameter's name (then ':', '='
 * or a blank), as "relay_recipient_maps: ..." does; returns "FILE:LINE"
 * or "-o NAME=VALUE", or NULL (no name, a default, or a conf made without
 * a file). perimd -t and a refused reload put it before the line. */
const char *conf_blame(const struct conf *c, const char *line);

/* conf_is_restart - whether the parameter named is restart-only. */
int conf_is_restart(const char *name);

/* conf_list_split - a list value's items: split at commas and blanks,
 * empty items dropped; a group "{ ... }" that starts an item is one item,
 * braces and all, up to its matching '}' when a separator or the end
 * follows (else, and for an unclosed '{', it is split as any text).
 * conf_list_free frees the items. */
struct conf_list conf_list_split(const char *s);
void conf_list_free(struct conf_list *l);

/* conf_brace_items - the items inside an item "{ ... }" (as
 * conf_list_split splits them) into *l; -1 when item is not one group. */
int conf_brace_items(const char *item, struct conf_list *l);

/* conf_list_has - case-insensitive membership. */
int conf_list_has(const struct conf_list *l, const char *s);

/* conf_param_names - NULL-terminated array of every parameter name. */
const char *const *conf_param_names(void);

/* The value syntaxes of the file, for other files that use them (and for
 * tests of types no parameter has yet). Each returns 0 with *v set, or -1;
 * the time and size parsers return -2 for a well-formed value too large
 * to hold (a long long of milliseconds or bytes).
 * conf_parse_bool - yes/no/true/false/1/0, any case.
 * conf_parse_time - "300" (seconds), "300s", "5m", "2h", "2d", "1w",
 *                   "500ms", into milliseconds.
 * conf_parse_size - "1000" (bytes), "10k", "25m", "1g" (1024 multiples),
 *                   into bytes. */
int conf_parse_bool(const char *s, int *v);
int conf_parse_time(const char *s, long long *v);
int conf_parse_size(const char *s, long long *v);
/* conf_per_cpu - a count where 0 means one per CPU (io_threads,
 * av_threads): n, or the CPUs online (at least 1). */
int conf_per_cpu(long long n);

#endif
