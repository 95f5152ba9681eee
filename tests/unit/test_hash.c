/*
 * test_hash.c - FNV-1a (hash.h) against the published test vectors of the
 * FNV reference ("" and "a", "foobar" in 32 and 64 bits), the lower-case
 * fold of hash_lower32 and the agreement of the string and memory forms.
 */
#include <string.h>

#include "hash.h"
#include "t.h"

/* test_vectors - the reference values. */
TEST(test_vectors)
{
	CHECK(hash_str32("") == 0x811c9dc5u);
	CHECK(hash_str32("a") == 0xe40c292cu);
	CHECK(hash_str32("foobar") == 0xbf9cf968u);
	CHECK(hash_str64("") == 0xcbf29ce484222325ULL);
	CHECK(hash_str64("a") == 0xaf63dc4c8601ec8cULL);
	CHECK(hash_str64("foobar") == 0x85944171f73967e8ULL);
}

/* test_forms - the memory form equals the string form; the lower-case
 * form ignores ASCII case, equals the plain one on lower-case text and
 * hashes only its n bytes. */
TEST(test_forms)
{
	const char *s = "mail.example.org";
	CHECK(hash_mem64(s, strlen(s)) == hash_str64(s));
	CHECK(hash_lower32(s, strlen(s)) == hash_str32(s));
	CHECK(hash_lower32("MAIL.Example.ORG", 16) == hash_str32(s));
	CHECK(hash_lower32("foobarXYZ", 6) == hash_str32("foobar"));
	CHECK(hash_str32("ab") != hash_str32("ba"));
	CHECK(hash_lower32("\xc3\x89", 2) != hash_lower32("\xc3\xa9", 2));
}

int main(void)
{
	RUN(test_vectors);
	RUN(test_forms);
	return t_done();
}
