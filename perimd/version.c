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

/* version_print - see version.h. */
void version_print(FILE *f)
{
	const char *clam = scanner_version();
	fprintf(f, "perimd %s\n", PERIMD_VERSION);
	fprintf(f, "features: smtp pipelining 8bitmime smtputf8 dsn relay-pool starttls "
		   "proxy-protocol sqlite mysql clamd%s\n", clam ? " libclamav" : "");
#ifdef PERIMD_STATIC
	fprintf(f, "build: static (musl)\n");
#else
	fprintf(f, "build: dynamic\n");
#endif
	fprintf(f, "bearssl\nc-ares %s\nsqlite %s\nmariadb-connector-c %s\n", ares_version(NULL),
		sqlite3_libversion(), mysql_get_client_info());
	if (clam)
		fprintf(f, "libclamav %s\n", clam);
	else
		fprintf(f, "libclamav: not built in (av_scanner = clamd only)\n");
}
