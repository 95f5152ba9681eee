/*
 * version.c - perimd -V: one line of features, then one line per linked
 * library with its version, so an operator can tell a static noclamav
 * build (av_scanner = clamd only) from a full one without reading logs.
 */
#include "version.h"
#include "scanner.h"

#include <ares.h>
#include <mysql.h>
#include <sqlite3.h>
#ifndef PERIMD_NO_LDAP
#include <ldap.h>
#endif

/* version_print - see version.h. */
void version_print(FILE *f)
{
	const char *clam = scanner_version();
	fprintf(f, "perimd %s\n", PERIMD_VERSION);
	fprintf(f,
		"features: smtp pipelining 8bitmime smtputf8 dsn relay-pool starttls "
		"proxy-protocol sqlite mysql%s clamd%s\n",
#ifndef PERIMD_NO_LDAP
		" ldap",
#else
		"",
#endif
		clam ? " libclamav" : "");
#ifdef PERIMD_STATIC
	fprintf(f, "build: static (musl)\n");
#else
	fprintf(f, "build: dynamic\n");
#endif
	fprintf(f, "bearssl\nc-ares %s\nsqlite %s\nmariadb-connector-c %s\n", ares_version(NULL),
		sqlite3_libversion(), mysql_get_client_info());
#ifndef PERIMD_NO_LDAP
	{
		LDAPAPIInfo api = { .ldapai_info_version = LDAP_API_INFO_VERSION };
		if (ldap_get_option(NULL, LDAP_OPT_API_INFO, &api) == LDAP_OPT_SUCCESS) {
			/* vendor_version is major * 10000 + minor * 100 + patch. */
			int v = api.ldapai_vendor_version;
			fprintf(f, "libldap %d.%d.%d (%s; ldap: maps, ldaps:// and StartTLS)\n", v / 10000,
				v / 100 % 100, v % 100, api.ldapai_vendor_name);
			ldap_memfree(api.ldapai_vendor_name);
			if (api.ldapai_extensions) {
				for (int i = 0; api.ldapai_extensions[i]; i++)
					ldap_memfree(api.ldapai_extensions[i]);
				ldap_memfree(api.ldapai_extensions);
			}
		}
	}
#else
	fprintf(f, "libldap: not built in (ldap: maps refused)\n");
#endif
	if (clam)
		fprintf(f, "libclamav %s\n", clam);
	else
		fprintf(f, "libclamav: not built in (av_scanner = clamd only)\n");
}
