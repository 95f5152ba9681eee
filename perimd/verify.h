/*
 * verify.h - recipient verdict cache, shared by all threads: what a backend
 * answered for a recipient (during replay, or to a callout), so that the
 * client's retry meets it at RCPT. Bounded size, sharded locks.
 *
 * Two kinds of entries (README "The recipient verdict cache"):
 *  - per recipient, answered to every sender: a callout's acceptance, and
 *    only those refusals whose enhanced status code says the MAILBOX is the
 *    reason (verify_mailbox_code(): 5.1.1 5.1.2 5.1.3 5.1.6 5.1.10, and
 *    4.2.2 mailbox full); never answered to a role account;
 *  - per (sender, recipient): every other refusal, answered only to the same
 *    sender, for longer than a sending MTA's retry interval, so that "451
 *    for the message now, the refusal at RCPT on the retry" cannot loop.
 * A cached reply is rebuilt from the code and enhanced code with perimd's
 * own text: it never repeats the backend's text, which may name the sender
 * or client of another transaction.
 */
#ifndef PERIMD_VERIFY_H
#define PERIMD_VERIFY_H

#include <stddef.h>
#include <stdint.h>

struct conf;

void verify_init(size_t max_entries);
/* verify_set_clock - milliseconds source (tests); NULL = CLOCK_MONOTONIC. */
void verify_set_clock(uint64_t (*now_ms)(void));

/* verify_enh - the enhanced status code of a reply line ("550 5.1.1 text")
 * into enh when it has one of the reply's class (RFC 3463), else "". */
void verify_enh(const char *reply, char *enh, size_t enhlen);
/* verify_mailbox_code - 1 when a refusal with this code and enhanced code
 * is about the mailbox for every sender (the allow-list), else 0. */
int verify_mailbox_code(int code, const char *enh);
/* verify_format - the reply perimd gives for a refusal (code, enhanced
 * code or "") of rcpt: "550 5.1.1 <rcpt>: recipient unknown" for mailbox
 * codes, a neutral text naming nobody else for the rest. */
void verify_format(int code, const char *enh, const char *rcpt, char *out, size_t outlen);

/* Flags of verify_learn(). */
#define VERIFY_OTHERS_ACCEPTED 0x1u /* replay: the backend took co-recipients */
#define VERIFY_CALLOUT 0x2u         /* a callout's answer (MAIL FROM:<>) */

enum verify_kept { VERIFY_NOT_KEPT, VERIFY_KEPT_RCPT, VERIFY_KEPT_PAIR };

/* verify_learn - a backend refused rcpt (code, raw reply line) in a
 * transaction from sender ("" = <>). Kept per recipient (mailbox codes)
 * and per pair (everything else 5xx; 4xx only with VERIFY_OTHERS_ACCEPTED,
 * answered once); a callout's non-mailbox refusal, 421 and non-refusals are
 * not kept. Lifetimes from cf's relay_verify_*_ttl. */
enum verify_kept verify_learn(const char *sender, const char *rcpt, int code, const char *reply,
			      unsigned flags, const struct conf *cf);
/* verify_accepted - a callout's 2xx: rcpt exists (relay_verify_positive_ttl). */
void verify_accepted(const char *rcpt, const struct conf *cf);

enum verify_verdict { VERIFY_NONE, VERIFY_REFUSED, VERIFY_VERIFIED };
/* verify_lookup - the cached verdict for RCPT rcpt from sender: REFUSED
 * with *code and reply (verify_format) filled, VERIFIED (a callout accepted
 * it), or NONE. is_role: only entries this sender filled count. */
enum verify_verdict verify_lookup(const char *sender, const char *rcpt, int is_role, int *code, char *reply,
				  size_t replylen);

/* The fleet (fleet.c) shares the per-recipient verdicts through the
 * database. verify_set_publish - fn(rcpt, code, enh, ttl_ms) is called
 * (on the learning thread, no lock held) for every per-recipient verdict
 * learned here (a callout's acceptance: 250 "2.1.5"); NULL stops it.
 * verify_remote - a verdict another box learned: kept per recipient for
 * ttl_ms when it is an acceptance or a mailbox code, never published. */
void verify_set_publish(void (*fn)(const char *rcpt, int code, const char *enh, uint64_t ttl_ms));
void verify_remote(const char *rcpt, int code, const char *enh, uint64_t ttl_ms);

#endif
