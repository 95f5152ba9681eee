/*
 * test_conf_enum.c - the parameter table's columns beside the value:
 * ENUM parameters parsed once into conf_enum.h's enums (any case in, the
 * canonical text and the enum out, anything else refused with the list),
 * each enum as long as its choices; the RESTART column (a change of a
 * restart-only parameter is reported by name, a reloadable one is not).
 */
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "t.h"

static char err[512];

/* load - defaults plus overrides, or NULL with err. */
static struct conf *load(char **ov, int n)
{
	return conf_load(NULL, 0, ov, n, err, sizeof err);
}

/* test_parse - the choice helpers. */
TEST(test_parse)
{
	char t[32];
	CHECK_INT(conf_enum_parse("none|may|encrypt|verify", "ENCRYPT"), 2);
	CHECK_INT(conf_enum_parse("none|may", "mays"), -1);
	CHECK_INT(conf_enum_parse("|haproxy", ""), 0);
	CHECK_INT(conf_enum_parse("|haproxy", "haproxy"), 1);
	CHECK_INT(conf_enum_count("|haproxy"), 2);
	CHECK_INT(conf_enum_count("no|archive|document|yes"), 4);
	CHECK_STR(conf_enum_text("no|archive|document|yes", 2, t, sizeof t), "document");
	CHECK_STR(conf_enum_text("|haproxy", 0, t, sizeof t), "");
	CHECK_INT(conf_enum_check(err, sizeof err), 0);
}

/* test_enum_fields - defaults and overrides set text and enum. */
TEST(test_enum_fields)
{
	struct conf *c = load(NULL, 0);
	CHECK(c != NULL);
	CHECK_INT(c->log_to_e, LOG_TO_SYSLOG);
	CHECK_INT(c->relay_tls_security_level_e, RELAY_TLS_MAY);
	CHECK_INT(c->smtpd_upstream_proxy_protocol_e, UPSTREAM_PROXY_NONE);
	CHECK_INT(c->av_alert_encrypted_e, AV_ENC_ARCHIVE);
	conf_release(c);
	char *ov[] = { "av_oversize_action=TempFail",     "smtpd_upstream_proxy_protocol=haproxy",
		       "relay_tls_security_level=verify", "relay_tls_CAfile=/x",
		       "greylist_fail_action=tempfail",   "smtpd_forbid_bare_newline=reject" };
	c = load(ov, 6);
	CHECK(c != NULL);
	if (!c)
		return;
	CHECK_STR(c->av_oversize_action, "tempfail");
	CHECK_INT(c->av_oversize_action_e, AV_OVERSIZE_TEMPFAIL);
	CHECK_INT(c->smtpd_upstream_proxy_protocol_e, UPSTREAM_PROXY_HAPROXY);
	CHECK_INT(c->relay_tls_security_level_e, RELAY_TLS_VERIFY);
	CHECK_INT(c->greylist_fail_action_e, GREY_FAIL_TEMPFAIL);
	CHECK_INT(c->smtpd_forbid_bare_newline_e, BARE_NEWLINE_REJECT);
	CHECK(c->gen != 0);
	conf_release(c);
	char *bad[] = { "av_fail_action=reject" };
	CHECK(load(bad, 1) == NULL);
	CHECK(strstr(err, "\"reject\" is not one of tempfail|accept") != NULL);
}

static char seen[512];

/* note - collect the names reported. */
static void note(const char *name)
{
	strcat(seen, name);
	strcat(seen, " ");
}

/* test_restart - the RESTART column. */
TEST(test_restart)
{
	CHECK_INT(conf_is_restart("body_spool_limit"), 1);
	CHECK_INT(conf_is_restart("smtpd_listen"), 1);
	CHECK_INT(conf_is_restart("io_threads"), 1);
	CHECK_INT(conf_is_restart("max_sessions"), 0);
	CHECK_INT(conf_is_restart("no_such"), 0);
	char *a_ov[] = { "body_spool_limit=1g", "max_sessions=10", "smtpd_listen=127.0.0.1:25" };
	char *b_ov[] = { "body_spool_limit=2g", "max_sessions=20", "smtpd_listen=127.0.0.1:25" };
	char *c_ov[] = { "body_spool_limit=1024m", "max_sessions=30", "smtpd_listen=127.0.0.1:26" };
	struct conf *a = load(a_ov, 3), *b = load(b_ov, 3), *c = load(c_ov, 3);
	CHECK(a && b && c);
	if (!a || !b || !c)
		return;
	CHECK(b->gen != a->gen);
	seen[0] = 0;
	CHECK_INT(conf_restart_changes(a, b, note), 1);
	CHECK_STR(seen, "body_spool_limit ");
	seen[0] = 0;
	CHECK_INT(conf_restart_changes(a, c, note), 1); /* 1024m == 1g */
	CHECK_STR(seen, "smtpd_listen ");
	seen[0] = 0;
	CHECK_INT(conf_restart_changes(a, a, note), 0);
	conf_release(a);
	conf_release(b);
	conf_release(c);
}

int main(void)
{
	RUN(test_parse);
	RUN(test_enum_fields);
	RUN(test_restart);
	return t_done();
}
