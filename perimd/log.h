/*
 * log.h - logging to syslog or stderr, Postfix-like lines.
 *
 * Thread-safe. Lines about a session start with its id ("4XkQ2f1a: ...").
 */
#ifndef PERIMD_LOG_H
#define PERIMD_LOG_H

#include <stdarg.h>
#include <stddef.h>

enum log_level { LOG_LVL_ERR, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* log_open - to_stderr: 1 = stderr, 0 = syslog (facility mail). */
void log_open(const char *ident, int to_stderr, int verbose);
int log_verbose(void);
/* log_set_json - 1: each line one JSON object (log_format = json; see
 * perimd(8) LOGGING), 0: text lines. Any thread, any time. */
void log_set_json(int on);
/* log_json_line - the JSON object (no newline, not terminated) of a
 * message at a level into out (cap >= 512); returns its length <= cap - 1.
 * What log_format = json writes; exported for the fuzz target. */
size_t log_json_line(char *out, size_t cap, enum log_level lvl, const char *msg);

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_err(...) log_msg(LOG_LVL_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) \
	do { \
		if (log_verbose()) \
			log_msg(LOG_LVL_DEBUG, __VA_ARGS__); \
	} while (0)

/* fatal - log and exit(1): out of memory, impossible states. */
_Noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* xmalloc & co: fatal() on out-of-memory. */
#include <stddef.h>
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t sz);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* log_err_add - append a line to the error text in err (lines joined by
 * '\n'), so one check can report every error it found. The first line is
 * cut at errlen; a later one that does not fit is not cut: a last line
 * "... more errors not shown: fix these and check again" says so. */
void log_err_add(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
