/*
 * test_maps_ldap.c - maps_ldap.c without a directory: the .cf parser
 * (defaults, Postfix syntax, every refusal with its line), the RFC 4515
 * escaping, the %-expansions of query_filter and result_format, which keys
 * are looked up at all (domain, %d), and map_open("ldap:...") errors.
 * (The lookups themselves run against slapd in tests/integration/test_ldap.py.)
 */
#include "maps.h"
#include "maps_ldap.h"
#include "t.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char err[512];

/* parse - map_ldap_cf_parse on text; its return value (cf is freed by the caller). */
static int parse(struct ldap_cf *cf, const char *text)
{
	err[0] = 0;
	return map_ldap_cf_parse(cf, "t.cf", text, strlen(text), err, sizeof err);
}

TEST(defaults)
{
	struct ldap_cf cf;
	CHECK_INT(parse(&cf, "# nothing but a comment\n\n"), 0);
	CHECK_INT(cf.nuris, 1);
	CHECK_STR(cf.uris[0], "ldap://localhost:389");
	CHECK_STR(cf.search_base, "");
	CHECK_STR(cf.query_filter, "(mailacceptinggeneralid=%s)");
	CHECK_STR(cf.result_format, "%s");
	CHECK_INT(cf.nattrs, 1);
	CHECK_STR(cf.attrs[0], "maildrop");
	CHECK_INT(cf.scope, LDAP_CF_SUB);
	CHECK_INT(cf.bind, 1);
	CHECK_INT(cf.version, 3);    /* Postfix: 2 */
	CHECK_INT(cf.timeout_ms, 10000);
	CHECK_INT(cf.tls_require_cert, 1);
	CHECK_INT(cf.start_tls, 0);
	CHECK_INT(cf.size_limit, 0);
	CHECK_INT(cf.dereference, 0);
	CHECK_INT(cf.connection_limit, 8);
	CHECK_INT(cf.cache_ttl_ms, 60000);
	CHECK_INT(cf.negative_cache_ttl_ms, 10000);
	map_ldap_cf_free(&cf);
}

TEST(full_file)
{
	struct ldap_cf cf;
	CHECK_INT(parse(&cf,
			"server_host = ldap://dc1.example.com, ldaps://dc2.example.com:3269/\n"
			"   dc3.example.com:3268 [2001:db8::1]\n"
			"server_port = 3268\n"
			"search_base = dc=example,dc=com\n"
			"scope = one\n"
			"query_filter = (&(objectClass=user)(proxyAddresses=smtp:%s))\n"
			"result_attribute = mail, userPrincipalName\n"
			"result_format = OK %u\n"
			"domain = example.com example.org\n"
			"bind_dn = cn=svc,dc=example,dc=com\n"
			"bind_pw = pa ss=word # not a comment\n"
			"version = 3\n"
			"timeout = 500ms\n"
			"tls_ca_cert_file = /etc/ssl/ca.pem\n"
			"tls_require_cert = no\n"
			"size_limit = 5\n"
			"dereference = 3\n"
			"connection_limit = 16\n"
			"cache_ttl = 5m\n"
			"negative_cache_ttl = 0\n"), 0);
	CHECK_STR(err, "");
	CHECK_INT(cf.nuris, 4);
	CHECK_STR(cf.uris[0], "ldap://dc1.example.com:3268");
	CHECK_STR(cf.uris[1], "ldaps://dc2.example.com:3269");
	CHECK_STR(cf.uris[2], "ldap://dc3.example.com:3268");
	CHECK_STR(cf.uris[3], "ldap://[2001:db8::1]:3268");
	CHECK_STR(cf.search_base, "dc=example,dc=com");
	CHECK_INT(cf.scope, LDAP_CF_ONE);
	CHECK_INT(cf.nattrs, 2);
	CHECK_STR(cf.attrs[1], "userPrincipalName");
	CHECK_STR(cf.result_format, "OK %u");
	CHECK_INT(cf.ndomains, 2);
	CHECK_STR(cf.bind_pw, "pa ss=word # not a comment");
	CHECK_INT(cf.timeout_ms, 500);
	CHECK_INT(cf.tls_require_cert, 0);
	CHECK_INT(cf.size_limit, 5);
	CHECK_INT(cf.dereference, 3);
	CHECK_INT(cf.connection_limit, 16);
	CHECK_INT(cf.cache_ttl_ms, 300000);
	CHECK_INT(cf.negative_cache_ttl_ms, 0);
	CHECK_INT(cf.filter_needs_domain, 0);
	map_ldap_cf_free(&cf);
	/* ldaps:// without a port: 636, not server_port. */
	CHECK_INT(parse(&cf, "server_host = ldaps://dc\nserver_port = 1389\n"), 0);
	CHECK_STR(cf.uris[0], "ldaps://dc:636");
	map_ldap_cf_free(&cf);
}

/* refused - text is refused with exactly this message. */
static void refused(const char *text, const char *want)
{
	struct ldap_cf cf;
	int rc = parse(&cf, text);
	CHECK_INT(rc, -1);
	if (strcmp(err, want))
		fprintf(stderr, "for %s", text);
	CHECK_STR(err, want);
	map_ldap_cf_free(&cf);
}

TEST(refusals)
{
	refused("bind = sasl\n", "t.cf:1: bind: SASL binds are not supported (bind = yes: a simple bind)");
	refused("\nchase_referrals = yes\n", "t.cf:2: chase_referrals: not supported by perimd");
	refused("special_result_attribute = member\n", "t.cf:1: special_result_attribute: not supported by perimd");
	refused("tls_cert = /x\n", "t.cf:1: tls_cert: not supported by perimd");
	refused("tls_frobnicate = 1\n", "t.cf:1: tls_frobnicate: not supported by perimd");
	refused("sasl_mechs = GSSAPI\n", "t.cf:1: sasl_mechs: not supported by perimd");
	refused("querry_filter = (mail=%s)\n", "t.cf:1: querry_filter: unknown setting");
	refused("scope = children\n", "t.cf:1: scope: expected sub, base or one");
	refused("version = 4\n", "t.cf:1: version: expected 2 or 3");
	refused("timeout = soon\n", "t.cf:1: timeout: expected a time (\"10\" seconds, \"500ms\", \"1m\")");
	refused("timeout = 0\n", "t.cf:1: timeout: must be more than 0");
	refused("dereference = 4\n", "t.cf:1: dereference: expected 0 (never), 1 (searching), 2 (finding) or 3 (always)");
	refused("connection_limit = 0\n", "t.cf:1: connection_limit: expected 1 to 1000");
	refused("server_port = 70000\n", "t.cf:1: server_port: expected a port number");
	refused("start_tls = maybe\n", "t.cf:1: start_tls: expected yes or no");
	refused("no equals sign\n", "t.cf:1: expected \"name = value\"");
	refused(" indented = first\n", "t.cf:1: continuation line without a setting before it");
	refused("= value\n", "t.cf:1: expected \"name = value\"");
	refused("domain = hash:/etc/domains\n", "t.cf:1: domain: only domain names are supported (no files or tables)");
	refused("result_attribute = mail)(x\n", "t.cf:1: result_attribute: not an attribute name");
	refused("server_host = ldapi:///var/run/slapd\n", "t.cf:1: server_host: only ldap:// and ldaps:// URIs are supported");
	refused("x=1\nserver_host = ldap://h/dc=x\n", "t.cf:1: x: unknown setting");
	refused("server_host = ldap://h/dc=x\n", "t.cf:1: server_host: a DN or options in the URI are not supported");
	refused("server_host = ldap://h:0\n", "t.cf:1: server_host: bad port");
	refused("server_host = ldap://bad host!\n", "t.cf:1: server_host: bad host name");
	refused("server_host = ,\n", "t.cf:1: server_host: no server");
	refused("query_filter = (mail=%s\n", "t.cf:1: query_filter: not a filter with %s, %u, %d (and %% for a %)");
	refused("query_filter = (mail=%x)\n", "t.cf:1: query_filter: not a filter with %s, %u, %d (and %% for a %)");
	refused("query_filter = (mail=%1)\n", "t.cf:1: query_filter: not a filter with %s, %u, %d (and %% for a %)");
	refused("query_filter = (objectClass=*)\n", "t.cf:1: query_filter: no %s, %u or %d: every key would give the same answer");
	refused("result_format = %[1]\n", "t.cf:1: result_format: only %s %u %d %S %U %D and %% are supported");
	refused("version = 2\nstart_tls = yes\n", "t.cf:2: start_tls needs version = 3");
	refused("server_host = ldaps://h\nstart_tls = yes\n", "t.cf:2: start_tls with an ldaps:// server (TLS twice)");
	refused("bind = no\nbind_dn = cn=x\n", "t.cf:1: bind = no, but bind_dn or bind_pw is set");
	refused("bind_pw = x\n", "t.cf: bind_pw without bind_dn");
	refused("a = b\0c\n", "t.cf:1: a: unknown setting");
}

TEST(nul_and_continuation)
{
	struct ldap_cf cf;
	const char text[] = "search_base = dc=x\nbind_dn = a\0b\n";
	CHECK_INT(map_ldap_cf_parse(&cf, "t.cf", text, sizeof text - 1, err, sizeof err), -1);
	CHECK_STR(err, "t.cf:2: NUL byte in line");
	map_ldap_cf_free(&cf);
	CHECK_INT(parse(&cf, "query_filter = (|(mail=%s)\n\t(proxyAddresses=smtp:%s))\n"
			"# comment\nscope = base"), 0);
	CHECK_STR(cf.query_filter, "(|(mail=%s) (proxyAddresses=smtp:%s))");
	CHECK_INT(cf.scope, LDAP_CF_BASE);
	map_ldap_cf_free(&cf);
}

TEST(escape)
{
	char out[64];
	CHECK_INT(map_ldap_escape("a*b(c)d\\e", 9, out, sizeof out), 17);
	CHECK_STR(out, "a\\2ab\\28c\\29d\\5ce");
	CHECK_INT(map_ldap_escape("x\0y", 3, out, sizeof out), 5);
	CHECK_STR(out, "x\\00y");
	CHECK_INT(map_ldap_escape("\xc3\xa9\n", 3, out, sizeof out), 9);
	CHECK_STR(out, "\\c3\\a9\\0a");
	CHECK_INT(map_ldap_escape("plain@example.com", 17, out, sizeof out), 17);
	CHECK_STR(out, "plain@example.com");
	/* Exactly fitting, and one byte short (out is then ""). */
	CHECK_INT(map_ldap_escape("***", 3, out, 10), 9);
	CHECK_INT((long long)map_ldap_escape("***", 3, out, 9), -1);
	CHECK_STR(out, "");
	CHECK_INT((long long)map_ldap_escape("a", 1, out, 0), -1);
}

TEST(expand)
{
	char out[256];
	CHECK_INT(map_ldap_expand("(mail=%s)", "al*ce@example.com", NULL, 1, out, sizeof out), 1);
	CHECK_STR(out, "(mail=al\\2ace@example.com)");
	CHECK_INT(map_ldap_expand("(&(uid=%u)(dom=%d)(x=100%%))", "a(b@c)d", NULL, 1, out, sizeof out), 1);
	CHECK_STR(out, "(&(uid=a\\28b)(dom=c\\29d)(x=100%))");
	/* %u of a key without '@' is the whole key; %d of it suppresses. */
	CHECK_INT(map_ldap_expand("(uid=%u)", "bob", NULL, 1, out, sizeof out), 1);
	CHECK_STR(out, "(uid=bob)");
	CHECK_INT(map_ldap_expand("(d=%d)", "bob", NULL, 1, out, sizeof out), 0);
	CHECK_INT(map_ldap_expand("(d=%d)", "bob@", NULL, 1, out, sizeof out), 0);
	CHECK_INT(map_ldap_expand("(u=%u)", "bob@", NULL, 1, out, sizeof out), 1);
	CHECK_STR(out, "(u=bob)");
	/* Upper case in a filter: the same as lower case. */
	CHECK_INT(map_ldap_expand("(m=%S)(u=%U)(d=%D)", "a@b", NULL, 1, out, sizeof out), 1);
	CHECK_STR(out, "(m=a@b)(u=a)(d=b)");
	/* result_format: lower case from the value, upper case from the key, not escaped. */
	CHECK_INT(map_ldap_expand("%s %u %d / %S %U %D", "k*@kd", "v(@vd", 0, out, sizeof out), 1);
	CHECK_STR(out, "v(@vd v( vd / k*@kd k* kd");
	CHECK_INT(map_ldap_expand("smtp:[%d]", "k@kd", "novalue", 0, out, sizeof out), 0);
	/* Bad formats and short buffers. */
	CHECK_INT(map_ldap_expand("(m=%)", "k", NULL, 1, out, sizeof out), -1);
	CHECK_INT(map_ldap_expand("(m=%s", "k", NULL, 1, out, sizeof out), 1);
	CHECK_INT(map_ldap_expand("%", "k", NULL, 1, out, sizeof out), -1);
	CHECK_INT(map_ldap_expand("(mail=%s)", "abcdef", NULL, 1, out, 10), -1);
	CHECK_INT(map_ldap_expand("(mail=%s)", "abc", NULL, 1, out, 11), 1);
	CHECK_INT(map_ldap_expand("%s", "k", NULL, 0, out, sizeof out), -1);
}

TEST(eligible)
{
	struct ldap_cf cf;
	CHECK_INT(parse(&cf, "query_filter = (mail=%s)\n"), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, ""), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob"), 1);
	CHECK_INT(map_ldap_key_eligible(&cf, "example.com"), 1);
	map_ldap_cf_free(&cf);
	CHECK_INT(parse(&cf, "query_filter = (mail=%s)\ndomain = example.com, Example.ORG\n"), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob@example.com"), 1);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob@EXAMPLE.org"), 1);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob@example.net"), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob@sub.example.com"), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob@"), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, "@example.com"), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, "example.com"), 0);
	map_ldap_cf_free(&cf);
	CHECK_INT(parse(&cf, "query_filter = (&(uid=%u)(dc=%d))\n"), 0);
	CHECK_INT(cf.filter_needs_domain, 1);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob@example.com"), 1);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob@"), 0);
	CHECK_INT(map_ldap_key_eligible(&cf, "bob"), 0);
	map_ldap_cf_free(&cf);
}

TEST(open_errors)
{
	char path[] = "/tmp/test_maps_ldap.XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	const char *text = "server_host = ldap://127.0.0.1:1\nbogus = 1\n";
	CHECK(write(fd, text, strlen(text)) == (ssize_t)strlen(text));
	close(fd);
	char spec[128];
	snprintf(spec, sizeof spec, "ldap:%s", path);
	struct map *m = map_open(spec, err, sizeof err);
	CHECK(m == NULL);
	char want[256];
#ifdef PERIMD_NO_LDAP
	snprintf(want, sizeof want, "%s: ldap: maps are not built into this perimd "
		 "(a build without libldap; see perimd -V)", path);
#else
	snprintf(want, sizeof want, "%s:2: bogus: unknown setting", path);
#endif
	CHECK_STR(err, want);
	m = map_open("ldap:/nonexistent/x.cf", err, sizeof err);
	CHECK(m == NULL);
	unlink(path);
}

int main(void)
{
	RUN(defaults);
	RUN(full_file);
	RUN(refusals);
	RUN(nul_and_continuation);
	RUN(escape);
	RUN(expand);
	RUN(eligible);
	RUN(open_errors);
	return t_done();
}
