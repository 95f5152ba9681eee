/*
 * log.c - logging to syslog (facility mail) or stderr, and the allocation
 * wrappers that turn out-of-memory into fatal().
 *
 * Thread-safe: each line is formatted into a local buffer and written with
 * one write(2) (stderr) or one syslog(3) call, so lines never interleave.
 */
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static int log_stderr = 1;
static int log_verb;
static const char *log_ident = "perimd";

/* log_open - choose the destination and verbosity. */
void log_open(const char *ident, int to_stderr, int verbose)
{
	log_ident = ident;
	log_stderr = to_stderr;
	log_verb = verbose;
	if (!to_stderr)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

/* log_verbose - whether debug lines are wanted. */
int log_verbose(void)
{
	return log_verb;
}

static const char *const lvl_name[] = { "error: ", "warning: ", "", "debug: " };
static const int lvl_syslog[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

/* log_vmsg - format and emit one line. */
static void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
{
	char buf[2048];
	size_t n = 0;

	if (log_stderr) {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = strftime(buf, sizeof buf, "%b %e %H:%M:%S ", &tm);
		n += (size_t)snprintf(buf + n, sizeof buf - n, "%s[%d]: ", log_ident, (int)getpid());
	}
	n += (size_t)snprintf(buf + n, sizeof buf - n, "%s", lvl_name[lvl]);
	if (n < sizeof buf) {
		int k = vsnprintf(buf + n, sizeof buf - n, fmt, ap);
		if (k > 0)
			n += (size_t)k;
	}
	if (n >= sizeof buf - 1)
		n = sizeof buf - 2;
	/* Never let a peer's bytes forge log lines. */
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)buf[i] < 0x20 && buf[i] != '\t')
			buf[i] = '?';
	if (log_stderr) {
		buf[n++] = '\n';
		ssize_t w = write(2, buf, n);
		(void)w;
	} else {
		buf[n] = 0;
		syslog(lvl_syslog[lvl], "%s", buf);
	}
}

/* log_msg - log one line at a level. */
void log_msg(enum log_level lvl, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(lvl, fmt, ap);
	va_end(ap);
}

/* fatal - log and exit. */
void fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(LOG_LVL_ERR, fmt, ap);
	va_end(ap);
	exit(1);
}

/* xmalloc - malloc or die. */
void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		fatal("out of memory (%zu bytes)", n);
	return p;
}

/* xcalloc - calloc or die. */
void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n ? n : 1, sz ? sz : 1);
	if (!p)
		fatal("out of memory (%zu x %zu bytes)", n, sz);
	return p;
}

/* xrealloc - realloc or die. */
void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q)
		fatal("out of memory (%zu bytes)", n);
	return q;
}

/* xstrdup - strdup or die. */
char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

/* xstrndup - strndup or die. */
char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

/* log_err_add - see log.h: append one line to an error buffer. */
void log_err_add(char *err, size_t errlen, const char *fmt, ...)
{
	if (!errlen)
		return;
	size_t n = strnlen(err, errlen);
	if (n >= errlen - 1)
		return;
	if (n > 0) {
		err[n++] = '\n';
		err[n] = 0;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - n, fmt, ap);
	va_end(ap);
}
