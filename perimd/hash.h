/*
 * hash.h - FNV-1a, the one string hash of perimd (the shard and bucket
 * index of every table keyed by text: climit, crate, dnscache, maps,
 * verify, shcache). Ground floor: it includes nothing of perimd.
 *
 * The functions are C99 inline (hash.c holds the one external copy), so a
 * caller's hot loop pays no call. The constants are FNV's published offset
 * bases and primes; the values equal the loops they replaced, byte for byte.
 */
#ifndef PERIMD_HASH_H
#define PERIMD_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_FNV32_BASIS 2166136261u
#define HASH_FNV32_PRIME 16777619u
#define HASH_FNV64_BASIS 14695981039346656037ULL
#define HASH_FNV64_PRIME 1099511628211ULL

/* hash_str32 - 32-bit FNV-1a of the NUL-terminated s. */
inline uint32_t hash_str32(const char *s)
{
	uint32_t h = HASH_FNV32_BASIS;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * HASH_FNV32_PRIME;
	return h;
}

/* hash_lower32 - 32-bit FNV-1a of n bytes folded to ASCII lower case
 * (a key compared without case hashes the same in any case). */
inline uint32_t hash_lower32(const char *p, size_t n)
{
	uint32_t h = HASH_FNV32_BASIS;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c >= 'A' && c <= 'Z')
			c = (unsigned char)(c + ('a' - 'A'));
		h = (h ^ c) * HASH_FNV32_PRIME;
	}
	return h;
}

/* hash_mem64 - 64-bit FNV-1a of n bytes. */
inline uint64_t hash_mem64(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t h = HASH_FNV64_BASIS;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * HASH_FNV64_PRIME;
	return h;
}

/* hash_str64 - 64-bit FNV-1a of the NUL-terminated s. */
inline uint64_t hash_str64(const char *s)
{
	uint64_t h = HASH_FNV64_BASIS;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * HASH_FNV64_PRIME;
	return h;
}

#endif
