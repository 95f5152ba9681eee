/*
 * milter_spec.c - one smtpd_milters item: an address, or Postfix 3.0's
 * "{ inet:host:port, command_timeout=10s, default_action=accept }" with
 * settings of that milter's own (MILTER_README, "Different settings for
 * different Milter applications"); what a milter does not set is the
 * milter_* parameters'. Pure: no I/O (tests/fuzz/fuzz_milterspec.c).
 */
#include "milter.h"
#include "conf.h"
#include "conf_enum.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define SPEC_SEPS ", \t\r\n"
#define SPEC_TIME_MIN 100LL    /* ms, as milter_*_timeout */
#define SPEC_TIME_MAX 540000LL /* ms, as milter_*_timeout */

/* The settings, in Postfix's names. */
static const char *const spec_keys[] = { "connect_timeout", "command_timeout", "content_timeout",
					 "default_action", "protocol" };
#define SPEC_NKEYS ((int)(sizeof spec_keys / sizeof spec_keys[0]))

/* milter_spec_defaults - see milter.h. */
void milter_spec_defaults(const struct conf *cf, struct milter_spec *sp)
{
	memset(sp, 0, sizeof *sp);
	sp->connect_timeout = cf->milter_connect_timeout;
	sp->command_timeout = cf->milter_command_timeout;
	sp->content_timeout = cf->milter_content_timeout;
	sp->default_action = cf->milter_default_action_e;
	sp->protocol = (int)cf->milter_protocol;
}

/* addr_ok - "inet:HOST:PORT" (port 1-65535) or "unix:/path" that fits a
 * socket address. */
static int addr_ok(const char *v)
{
	const char *colon = strrchr(v, ':');
	if (!strncmp(v, "unix:", 5))
		return v[5] == '/' && strlen(v + 5) < sizeof(struct sockaddr_un){ 0 }.sun_path;
	if (strncmp(v, "inet:", 5) || colon <= v + 5)
		return 0;
	size_t pl = strlen(colon + 1);
	return pl && pl <= 5 && strspn(colon + 1, "0123456789") == pl && atoi(colon + 1) > 0 &&
	    atoi(colon + 1) < 65536;
}

/* set_time - a timeout setting's value; NULL, or why not. */
static const char *set_time(const char *v, long long *dst)
{
	long long t;
	if (conf_parse_time(v, &t) < 0)
		return "not a time (\"10s\", \"500ms\", \"2m\")";
	if (t < SPEC_TIME_MIN)
		return "below the minimum 100ms";
	if (t > SPEC_TIME_MAX)
		return "above the maximum 540s";
	*dst = t;
	return NULL;
}

/* milter_action_names - see milter.h. */
const char *const milter_action_names[MILTER_DEFAULT_REJECT + 1] = {
	[MILTER_DEFAULT_TEMPFAIL] = "tempfail", [MILTER_DEFAULT_ACCEPT] = "accept", [MILTER_DEFAULT_REJECT] = "reject"
};

/* set_action - default_action's value; NULL, or why not. */
static const char *set_action(const char *v, int *dst)
{
	for (int i = 0; i <= MILTER_DEFAULT_REJECT; i++)
		if (!strcmp(v, milter_action_names[i])) {
			*dst = i;
			return NULL;
		}
	if (!strcmp(v, "quarantine"))
		return "quarantine is refused (perimd has no queue to hold a message in): tempfail, "
		       "accept or reject";
	return "not tempfail, accept or reject";
}

/* set_one - setting k to v; NULL, or why not. */
static const char *set_one(struct milter_spec *sp, int k, const char *v)
{
	switch (k) {
	case 0: return set_time(v, &sp->connect_timeout);
	case 1: return set_time(v, &sp->command_timeout);
	case 2: return set_time(v, &sp->content_timeout);
	case 3: return set_action(v, &sp->default_action);
	default:
		if (strlen(v) != 1 || v[0] < '2' || v[0] > '6')
			return "not a protocol version from 2 to 6";
		sp->protocol = v[0] - '0';
		return NULL;
	}
}

/* next_setting - the "name=value" (blanks allowed around '=') at *p:
 * its key index and value (copied into val), *p past it; -1 with why. */
static int next_setting(const char **p, char *val, size_t vl, const char **why, char *name, size_t nl)
{
	const char *s = *p;
	size_t n = strcspn(s, "=" SPEC_SEPS);
	snprintf(name, nl, "%.*s", (int)(n < 64 ? n : 64), s);
	const char *q = s + n;
	q += strspn(q, " \t\r\n");
	if (*q != '=') {
		*why = "expected name=value";
		return -1;
	}
	q++;
	q += strspn(q, " \t\r\n");
	size_t m = strcspn(q, SPEC_SEPS);
	snprintf(val, vl, "%.*s", (int)m, q);
	*p = q + m;
	if (m >= vl) {
		*why = "value too long";
		return -1;
	}
	for (int k = 0; k < SPEC_NKEYS; k++)
		if (strlen(spec_keys[k]) == n && !strncmp(s, spec_keys[k], n))
			return k;
	*why = "unknown setting (connect_timeout, command_timeout, content_timeout, default_action, "
	       "protocol)";
	return -1;
}

/* parse_settings - the settings after the address in the group's inside
 * (braces removed); 0, or -1 with err naming the item. */
static int parse_settings(const char *item, const char *p, struct milter_spec *sp, char *err, size_t errlen)
{
	for (;;) {
		p += strspn(p, SPEC_SEPS);
		if (!*p)
			return 0;
		char val[128], name[72];
		const char *why = NULL;
		int k = next_setting(&p, val, sizeof val, &why, name, sizeof name);
		if (k >= 0)
			why = set_one(sp, k, val);
		if (why) {
			snprintf(err, errlen, "\"%s\": %s%s%s: %s", item, name, k >= 0 ? "=" : "",
				 k >= 0 ? val : "", why);
			return -1;
		}
	}
}

/* milter_spec_parse - see milter.h. */
int milter_spec_parse(const char *item, struct milter_spec *sp, char *err, size_t errlen)
{
	if (item[0] != '{') {
		if (strlen(item) >= sizeof sp->addr || !addr_ok(item)) {
			snprintf(err, errlen, "\"%s\" is not inet:HOST:PORT or unix:/path", item);
			return -1;
		}
		snprintf(sp->addr, sizeof sp->addr, "%s", item);
		return 0;
	}
	size_t len = strlen(item);
	if (len < 2 || item[len - 1] != '}') {
		snprintf(err, errlen, "\"%s\": \"{\" without \"}\"", item);
		return -1;
	}
	char *in = xstrndup(item + 1, len - 2);
	const char *p = in + strspn(in, SPEC_SEPS);
	size_t al = strcspn(p, SPEC_SEPS);
	int rc = -1;
	if (al && al < sizeof sp->addr) {
		memcpy(sp->addr, p, al);
		sp->addr[al] = 0;
	}
	if (!al)
		snprintf(err, errlen, "\"%s\": names no milter (\"{ inet:HOST:PORT, name=value ... }\")", item);
	else if (al >= sizeof sp->addr || !addr_ok(sp->addr))
		snprintf(err, errlen, "\"%s\": \"%.*s\" is not inet:HOST:PORT or unix:/path", item,
			 (int)(al < 300 ? al : 300), p);
	else
		rc = parse_settings(item, p + al, sp, err, errlen);
	free(in);
	return rc;
}
