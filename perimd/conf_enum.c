/*
 * conf_enum.c - the choices of ENUM parameters: parsed once at load into
 * conf_enum.h's enums (conf.c calls conf_enum_parse), and the check that
 * each enum matches its choices column.
 */
#include "conf_enum.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* conf_enum_parse - see conf_enum.h. */
int conf_enum_parse(const char *choices, const char *s)
{
	size_t n = strlen(s);
	int i = 0;
	for (const char *c = choices; c; i++) {
		size_t k = strcspn(c, "|");
		if (k == n && strncasecmp(c, s, n) == 0)
			return i;
		c = c[k] ? c + k + 1 : NULL;
	}
	return -1;
}

/* conf_enum_count - see conf_enum.h. */
int conf_enum_count(const char *choices)
{
	int n = 1;
	for (const char *c = choices; *c; c++)
		n += *c == '|';
	return n;
}

/* conf_enum_text - see conf_enum.h. */
const char *conf_enum_text(const char *choices, int i, char *out, size_t outlen)
{
	const char *c = choices;
	for (; i > 0 && c; i--)
		c = strchr(c, '|') ? strchr(c, '|') + 1 : NULL;
	if (!c)
		c = "";
	snprintf(out, outlen, "%.*s", (int)strcspn(c, "|"), c);
	return out;
}

/* The number of enumerators of each enum of conf_enum.h. */
static const struct {
	const char *name;
	int n;
} enum_sizes[] = {
	{ "smtpd_forbid_bare_newline", BARE_NEWLINE_REJECT + 1 },
	{ "smtpd_upstream_proxy_protocol", UPSTREAM_PROXY_HAPROXY + 1 },
	{ "smtpd_tls_security_level", SMTPD_TLS_MAY + 1 },
	{ "relay_tls_security_level", RELAY_TLS_VERIFY + 1 },
	{ "av_oversize_action", AV_OVERSIZE_ACCEPT + 1 },
	{ "av_fail_action", AV_FAIL_ACCEPT + 1 },
	{ "av_alert_encrypted", AV_ENC_YES + 1 },
	{ "av_reload_mode", AV_RELOAD_INPLACE + 1 },
	{ "greylist_fail_action", GREY_FAIL_TEMPFAIL + 1 },
	{ "log_to", LOG_TO_STDERR + 1 },
	{ "log_format", LOG_FORMAT_JSON + 1 },
	{ "milter_default_action", MILTER_DEFAULT_REJECT + 1 },
};

/* conf_enum_size - see conf_enum.h. */
int conf_enum_size(const char *name)
{
	for (size_t k = 0; k < sizeof enum_sizes / sizeof enum_sizes[0]; k++)
		if (!strcmp(enum_sizes[k].name, name))
			return enum_sizes[k].n;
	return -1;
}
