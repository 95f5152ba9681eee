/*
 * conf_enum.h - the C enum of every ENUM parameter of conf_params.h,
 * parsed once when the configuration loads: struct conf holds the choice
 * as written canonically (NAME, for logs and dumps) and as this enum
 * (NAME_e, for code: compare it, never the text).
 *
 * The enumerators follow the order of the parameter's choices column in
 * conf_params.h exactly (conf_enum.c's table checks the count at load); a
 * new ENUM parameter needs its `enum conf_NAME` here, or conf.h does not
 * compile. Plumbing floor, with conf.
 */
#ifndef PERIMD_CONF_ENUM_H
#define PERIMD_CONF_ENUM_H

#include <stddef.h>

/* smtpd_forbid_bare_newline: normalize|reject */
enum conf_smtpd_forbid_bare_newline { BARE_NEWLINE_NORMALIZE, BARE_NEWLINE_REJECT };
/* smtpd_upstream_proxy_protocol: |haproxy */
enum conf_smtpd_upstream_proxy_protocol { UPSTREAM_PROXY_NONE, UPSTREAM_PROXY_HAPROXY };
/* smtpd_tls_security_level: none|may */
enum conf_smtpd_tls_security_level { SMTPD_TLS_NONE, SMTPD_TLS_MAY };
/* relay_tls_security_level: none|may|encrypt|verify (tls.h's enum tls_level order) */
enum conf_relay_tls_security_level { RELAY_TLS_NONE, RELAY_TLS_MAY, RELAY_TLS_ENCRYPT, RELAY_TLS_VERIFY };
/* av_oversize_action: reject|tempfail|accept */
enum conf_av_oversize_action { AV_OVERSIZE_REJECT, AV_OVERSIZE_TEMPFAIL, AV_OVERSIZE_ACCEPT };
/* av_fail_action: tempfail|accept */
enum conf_av_fail_action { AV_FAIL_TEMPFAIL, AV_FAIL_ACCEPT };
/* av_alert_encrypted: no|archive|document|yes */
enum conf_av_alert_encrypted { AV_ENC_NO, AV_ENC_ARCHIVE, AV_ENC_DOCUMENT, AV_ENC_YES };
/* av_reload_mode: swap|inplace */
enum conf_av_reload_mode { AV_RELOAD_SWAP, AV_RELOAD_INPLACE };
/* greylist_fail_action: accept|tempfail */
enum conf_greylist_fail_action { GREY_FAIL_ACCEPT, GREY_FAIL_TEMPFAIL };
/* log_to: syslog|stderr */
enum conf_log_to { LOG_TO_SYSLOG, LOG_TO_STDERR };
/* log_format: text|json */
enum conf_log_format { LOG_FORMAT_TEXT, LOG_FORMAT_JSON };
/* milter_default_action: tempfail|accept|reject */
enum conf_milter_default_action { MILTER_DEFAULT_TEMPFAIL, MILTER_DEFAULT_ACCEPT, MILTER_DEFAULT_REJECT };

/* conf_enum_parse - the index of s (any case) among choices ("a|b|c";
 * an empty choice matches ""), or -1. */
int conf_enum_parse(const char *choices, const char *s);
/* conf_enum_count - how many choices "a|b|c" has. */
int conf_enum_count(const char *choices);
/* conf_enum_text - choice number i of choices, into out; returns out. */
const char *conf_enum_text(const char *choices, int i, char *out, size_t outlen);
/* conf_enum_size - the number of enumerators of enum conf_NAME, or -1
 * when there is none (conf.h's conf_enum_check compares it with the
 * choices column). */
int conf_enum_size(const char *name);

#endif
