/*
 * verify.h - recipient verdict cache, shared by all threads: recipients a
 * backend refused during replay (and, later, callout results), so that the
 * client's retry is refused at RCPT. Bounded size, sharded locks.
 */
#ifndef PERIMD_VERIFY_H
#define PERIMD_VERIFY_H

#include <stddef.h>
#include <stdint.h>

void verify_init(size_t max_entries);
/* verify_put - remember `reply` ("550 5.1.1 ...") for rcpt until now+ttl. */
void verify_put(const char *rcpt, int code, const char *reply, uint64_t ttl_ms);
/* verify_get - 1 and the cached reply if a live entry exists, else 0. */
int verify_get(const char *rcpt, int *code, char *reply, size_t replylen);

#endif
