/*
 * fuzz_ldapcf.c - libFuzzer target for the ldap: map .cf parser
 * (map_ldap_cf_parse): any bytes as a .cf file. Checks: a parse either
 * fails with a "t.cf:" message or gives settings that hold together (at
 * least one normalised ldap:// or ldaps:// URI, a query_filter that
 * expands for a hostile key, in range numbers), and the parser frees
 * everything (the ASan build finds leaks).
 */
#include "maps_ldap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ldap_cf cf;
	char err[512];
	err[0] = 0;
	int rc = map_ldap_cf_parse(&cf, "t.cf", (const char *)data, size, err, sizeof err);
	if (rc < 0) {
		if (strncmp(err, "t.cf", 4) != 0)
			abort();
	} else {
		if (rc != 0 || cf.nuris < 1 || cf.nuris > LDAP_CF_MAX_HOSTS || cf.nattrs < 1 ||
		    cf.version < 2 || cf.version > 3 || cf.timeout_ms <= 0 || cf.connection_limit < 1 ||
		    cf.dereference < 0 || cf.dereference > 3 || !cf.query_filter || !cf.result_format)
			abort();
		for (int i = 0; i < cf.nuris; i++)
			if (strncmp(cf.uris[i], "ldap://", 7) && strncmp(cf.uris[i], "ldaps://", 8))
				abort();
		char out[4096];
		const char *keys[] = { "user@example.com", "*)(uid=*", "a\\b@(c)", "x@", "" };
		for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
			int x = map_ldap_expand(cf.query_filter, keys[k], NULL, 1, out, sizeof out);
			/* A parsed filter expands (suppressed for %d of a key
			 * without a domain) unless the keys make it too long. */
			if (x < 0 && strlen(cf.query_filter) < 128)
				abort();
			(void)map_ldap_key_eligible(&cf, keys[k]);
			(void)map_ldap_expand(cf.result_format, keys[k], "v@d", 0, out, sizeof out);
		}
	}
	map_ldap_cf_free(&cf);
	return 0;
}
