/*
 * dnscache.h - the DNS answer cache shared by every loop: positive answers
 * for their TTL, negative ones (NXDOMAIN/NODATA) for the SOA minimum, both
 * clamped to [dns_cache_min_ttl, dns_cache_max_ttl]; at most
 * dns_cache_size entries, the least recently used evicted first. Sharded:
 * each shard has its own lock, LRU list and share of the size.
 *
 * Thread-safe. Temporary failures are never cached.
 */
#ifndef PERIMD_DNSCACHE_H
#define PERIMD_DNSCACHE_H

#include <stddef.h>
#include <stdint.h>

struct dns_result;

/* dnscache_configure - set the bounds (any thread, any time; the first
 * call creates the cache). size 0 turns caching off. */
void dnscache_configure(long long size, long long min_ttl_ms, long long max_ttl_ms);
/* dnscache_get - the cached answer (with a reference) or NULL; counts a
 * hit or a miss. */
const struct dns_result *dnscache_get(const char *key);
/* dnscache_put - remember res under key (takes its own reference). */
void dnscache_put(const char *key, const struct dns_result *res);
/* dnscache_count - entries held now. */
size_t dnscache_count(void);
/* dnscache_flush - drop every entry. */
void dnscache_flush(void);
/* dnscache_servers - the answers to come are those of servers (the
 * dns_servers CSV): when they differ from the last ones, the cache is
 * emptied (another server may answer otherwise: an NXDOMAIN of a wrong
 * resolver must not outlive the reload that replaced it). */
void dnscache_servers(const char *servers);
/* dnscache_shard - which shard holds key (tests pick keys sharing one). */
int dnscache_shard(const char *key);
/* dnscache_set_clock - tests: a fake monotonic clock in ms (NULL: real). */
void dnscache_set_clock(uint64_t (*now_ms)(void));

#endif
