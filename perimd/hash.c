/*
 * hash.c - the one external definition of each inline FNV-1a function of
 * hash.h (C99: a call the compiler does not inline links to these).
 */
#include "hash.h"

extern inline uint32_t hash_str32(const char *s);
extern inline uint32_t hash_lower32(const char *p, size_t n);
extern inline uint64_t hash_mem64(const void *p, size_t n);
extern inline uint64_t hash_str64(const char *s);
