/*
 * log.c - logging to syslog (facility mail) or stderr, and the allocation
 * wrappers that turn out-of-memory into fatal().
 *
 * Thread-safe: each line is formatted into a local buffer and written with
 * one write(2) (stderr) or one syslog(3) call, so lines never interleave.
 * log_format = json (log_set_json) makes each line one JSON object: time,
 * level, ident, pid, the id the message begins with, the message, and its
 * key=value pairs as fields; always whole and valid, whatever the bytes.
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
static pid_t log_pid; /* from log_open(): a system call per line less */

/* log_getpid - this process's pid for the line prefix. The daemon never
 * forks a process that logs (helpers are spawned and exec'd); the
 * scanner, whose generations and workers are forks, never calls
 * log_open(), so its log_pid stays 0 and each line asks getpid(). */
static int log_getpid(void)
{
	return (int)(log_pid ? log_pid : getpid());
}

/* log_open - choose the destination and verbosity. */
void log_open(const char *ident, int to_stderr, int verbose)
{
	log_pid = getpid();
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
static const char *const lvl_word[] = { "error", "warning", "info", "debug" };
static const int lvl_syslog[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
static int log_json; /* atomic: log_format = json */

/* log_set_json - one JSON object per line (1) or text lines (0). */
void log_set_json(int on)
{
	__atomic_store_n(&log_json, on, __ATOMIC_RELAXED);
}

/* utf8_len - the length of a valid UTF-8 sequence at p (at most n bytes
 * there), or 0 when it is not one (RFC 3629 §4: no overlongs, no
 * surrogates, nothing past U+10FFFF). */
static size_t utf8_len(const unsigned char *p, size_t n)
{
	size_t len = p[0] >= 0xf0 ? 4 : p[0] >= 0xe0 ? 3 : 2;
	if (p[0] < 0xc2 || p[0] > 0xf4 || n < len)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	if ((p[0] == 0xe0 && p[1] < 0xa0) || (p[0] == 0xed && p[1] > 0x9f) || (p[0] == 0xf0 && p[1] < 0x90) ||
	    (p[0] == 0xf4 && p[1] > 0x8f))
		return 0;
	return len;
}

struct jbuf {
	char *p;
	size_t n, cap; /* cap keeps room for "}\n" */
};

/* jb_raw - append bytes as they are (cut at the capacity). */
static void jb_raw(struct jbuf *j, const char *s, size_t len)
{
	if (len > j->cap - j->n)
		len = j->cap - j->n;
	memcpy(j->p + j->n, s, len);
	j->n += len;
}

/* jb_str - append len bytes as a JSON string (RFC 8259 §7): quotes,
 * backslashes and control characters escaped, invalid UTF-8 as U+FFFD;
 * a string never ends cut inside an escape. */
static void jb_str(struct jbuf *j, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	jb_raw(j, "\"", 1);
	for (size_t i = 0; i < len && j->n + 10 < j->cap;) {
		char esc[8];
		if (u[i] == '"' || u[i] == '\\') {
			esc[0] = '\\', esc[1] = (char)u[i];
			jb_raw(j, esc, 2);
			i++;
		} else if (u[i] < 0x20 || u[i] == 0x7f) {
			snprintf(esc, sizeof esc, "\\u%04x", u[i]);
			jb_raw(j, esc, 6);
			i++;
		} else if (u[i] < 0x80) {
			jb_raw(j, s + i, 1);
			i++;
		} else {
			size_t l = utf8_len(u + i, len - i);
			if (l)
				jb_raw(j, s + i, l);
			else
				jb_raw(j, "\\ufffd", 6);
			i += l ? l : 1;
		}
	}
	jb_raw(j, "\"", 1);
}

/* jb_field - ,"key":"value" */
static void jb_field(struct jbuf *j, const char *key, const char *v, size_t len)
{
	if (j->cap - j->n < strlen(key) + 16)
		return; /* full: the object stays whole */
	jb_raw(j, ",", 1);
	jb_str(j, key, strlen(key));
	jb_raw(j, ":", 1);
	jb_str(j, v, len);
}

/* msg_id - the length of the session or transaction id a message begins
 * with ("15RTLHP78DHS: ", "15RTLHP78DHS.0001: "), or 0. */
static size_t msg_id(const char *m)
{
	size_t k = strspn(m, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.");
	return k >= 12 && m[k] == ':' && m[k + 1] == ' ' ? k : 0;
}

/* kv_value - the end of the value starting at v: <...> and [...] whole,
 * else up to a space, a comma or a semicolon. */
static const char *kv_value(const char *v)
{
	if (*v == '<' || *v == '[') {
		const char *e = strchr(v, *v == '<' ? '>' : ']');
		if (e)
			return e + 1;
	}
	return v + strcspn(v, " ,;");
}

/* jb_kv - the key=value pairs of a message as fields (the first of each
 * key; a value in <> or [] without its brackets; "status=sent (text)"
 * also gives "status_detail"). */
static void jb_kv(struct jbuf *j, const char *m)
{
	static const char *const reserved[] = { "time", "level", "ident", "pid", "id", "msg" };
	char seen[24][24];
	int nseen = 0;
	for (const char *p = m; *p; p++) {
		if (p != m && p[-1] != ' ' && p[-1] != ',' && p[-1] != ';')
			continue;
		size_t kl = strspn(p, "abcdefghijklmnopqrstuvwxyz_-");
		if (!kl || kl >= sizeof seen[0] || p[kl] != '=')
			continue;
		char key[24];
		memcpy(key, p, kl);
		key[kl] = 0;
		int dup = 0;
		for (size_t r = 0; r < sizeof reserved / sizeof reserved[0]; r++)
			dup |= !strcmp(key, reserved[r]);
		for (int k = 0; k < nseen; k++)
			dup |= !strcmp(key, seen[k]);
		const char *v = p + kl + 1, *e = kv_value(v);
		if (!dup && nseen < 24) {
			memcpy(seen[nseen++], key, kl + 1);
			int br = (*v == '<' || *v == '[') && e > v + 1 && (e[-1] == '>' || e[-1] == ']');
			jb_field(j, key, v + br, (size_t)(e - v) - 2 * (size_t)br);
			if (!strcmp(key, "status") && e[0] == ' ' && e[1] == '(') {
				const char *d = e + 2, *de = strrchr(d, ')');
				if (de)
					jb_field(j, "status_detail", d, (size_t)(de - d));
			}
		}
		p = e > p ? e - 1 : p;
	}
}

/* log_json_line - see log.h. */
size_t log_json_line(char *out, size_t cap, enum log_level lvl, const char *m)
{
	struct jbuf j = { out, 0, cap - 2 };
	struct timespec ts;
	struct tm tm;
	char t[48];
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t tl = strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(t + tl, sizeof t - tl, ".%03ldZ", ts.tv_nsec / 1000000);
	jb_raw(&j, "{\"time\":", 8);
	jb_str(&j, t, strlen(t));
	jb_field(&j, "level", lvl_word[lvl], strlen(lvl_word[lvl]));
	jb_field(&j, "ident", log_ident, strlen(log_ident));
	char pid[24];
	int pl = snprintf(pid, sizeof pid, ",\"pid\":%d", log_getpid());
	jb_raw(&j, pid, (size_t)pl);
	size_t idl = msg_id(m);
	if (idl) {
		jb_field(&j, "id", m, idl);
		m += idl + 2;
	}
	jb_field(&j, "msg", m, strlen(m));
	jb_kv(&j, m);
	out[j.n++] = '}';
	return j.n;
}

/* emit - write one formatted line of n bytes (buf has room for one more):
 * one write(2) on stderr, or one syslog(3) call. */
static void emit(enum log_level lvl, char *buf, size_t n)
{
	if (log_stderr) {
		buf[n++] = '\n';
		ssize_t w = write(2, buf, n);
		(void)w;
	} else {
		buf[n] = 0;
		syslog(lvl_syslog[lvl], "%s", buf);
	}
}

/* log_vmsg - format and emit one line. */
static void log_vmsg(enum log_level lvl, const char *fmt, va_list ap)
{
	char buf[2048];
	size_t n = 0;

	if (__atomic_load_n(&log_json, __ATOMIC_RELAXED)) {
		char m[2048], out[16384];
		vsnprintf(m, sizeof m, fmt, ap);
		emit(lvl, out, log_json_line(out, sizeof out, lvl, m));
		return;
	}
	if (log_stderr) {
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		n = strftime(buf, sizeof buf, "%b %e %H:%M:%S ", &tm);
		n += (size_t)snprintf(buf + n, sizeof buf - n, "%s[%d]: ", log_ident, log_getpid());
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
	emit(lvl, buf, n);
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

/* The last line of an error buffer that had no room for more. */
static const char err_more[] = "... more errors not shown: fix these and check again";

/* log_err_add - see log.h: append one line to an error buffer. A line
 * that does not fit whole after the first is not cut: err_more ends the
 * text instead (room for it is kept), so no line is lost unseen. */
void log_err_add(char *err, size_t errlen, const char *fmt, ...)
{
	if (!errlen)
		return;
	size_t n = strnlen(err, errlen), m = sizeof err_more - 1;
	if (n >= errlen - 1 || (n >= m && !strcmp(err + n - m, err_more)))
		return;
	va_list ap;
	va_start(ap, fmt);
	if (n == 0) {
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
		return;
	}
	char *line = NULL;
	int k = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (k < 0)
		return;
	if (n + 1 + (size_t)k + 1 + m + 1 <= errlen)
		snprintf(err + n, errlen - n, "\n%s", line);
	else if (n + 1 + m + 1 <= errlen)
		snprintf(err + n, errlen - n, "\n%s", err_more);
	free(line);
}
