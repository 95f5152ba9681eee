/*
 * verify.c - the recipient verdict cache: a key (the recipient, or the
 * sender and the recipient, domains lower-cased) to a backend's code and enhanced
 * code, until an expiry time. What is kept under which key, and for how
 * long, is decided here (verify_learn); the reply given from an entry is
 * built here too (verify_format), never copied from the backend.
 *
 * Invariants: the table is a sharded cache (shcache.h) of VERIFY_SHARDS
 * shards, each with its own mutex, hash chains and an insertion-ordered
 * list; a shard never holds more than its share of max_entries (the
 * oldest entry is evicted first),
 * so memory is bounded whatever recipients the internet sends. Expired
 * entries are never returned and are dropped when met. Times come from
 * CLOCK_MONOTONIC, not from any loop, because every thread shares the
 * table. Nothing here blocks except on a shard mutex held for a few
 * pointer operations.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf.h"
#include "clock.h"
#include "log.h"
#include "shcache.h"
#include "verify.h"

#define VERIFY_SHARDS 64
#define VERIFY_DEFAULT_MAX 100000
/* Kind byte, sender (RFC 5321 §4.5.3.1: path 256 octets), separator,
 * recipient: a longer pair is not kept rather than truncated (two senders
 * cut to the same prefix must not share an entry). */
#define VERIFY_KEY_MAX 600
#define VERIFY_ENH_MAX 16

/* One verdict: the value of a cache entry (its key: verify_key). */
struct verdict {
	int code;                 /* 250 = verified, else the refusal */
	char enh[VERIFY_ENH_MAX]; /* its enhanced code, or "" */
	int once;                 /* answered once, then dropped */
};

static struct shcache *cache;
static pthread_once_t verify_once = PTHREAD_ONCE_INIT;

static uint64_t (*verify_clock)(void);
static void (*verify_publish)(const char *rcpt, int code, const char *enh, uint64_t ttl_ms);

/* verify_set_publish - see verify.h. */
void verify_set_publish(void (*fn)(const char *rcpt, int code, const char *enh, uint64_t ttl_ms))
{
	__atomic_store_n(&verify_publish, fn, __ATOMIC_RELEASE);
}

/* publish - tell the fleet about a per-recipient verdict. */
static void publish(const char *rcpt, int code, const char *enh, uint64_t ttl)
{
	void (*fn)(const char *, int, const char *, uint64_t) =
	    __atomic_load_n(&verify_publish, __ATOMIC_ACQUIRE);
	if (fn && ttl)
		fn(rcpt, code, enh, ttl);
}

/* verify_set_clock - see verify.h. */
void verify_set_clock(uint64_t (*now_ms)(void))
{
	verify_clock = now_ms;
}

/* verify_now - monotonic milliseconds (or the test clock). */
static uint64_t verify_now(void)
{
	if (verify_clock)
		return verify_clock();
	return clock_ms();
}

/* Key kinds: a recipient alone, or a (sender, recipient) pair. */
#define KIND_RCPT 'R'
#define KIND_PAIR 'P'

/* addr_copy - address a into key at *n: the domain (after the last '@')
 * lower-cased, the local part as it is. RFC 5321 §2.4: a local part MAY be
 * case-sensitive, and a backend that treats it so would otherwise let one
 * RCPT TO:<CEO@...> it refuses close ceo@ for everyone. */
static void addr_copy(const char *a, char *key, size_t *n)
{
	const char *at = strrchr(a, '@');

	for (const char *p = a; *p; p++)
		key[(*n)++] = at && p > at ? (char)tolower((unsigned char)*p) : *p;
}

/* verify_key - kind, then rcpt (and for KIND_PAIR '\001' and the sender),
 * into key (addr_copy); key is "" when it does not fit. */
static void verify_key(int kind, const char *sender, const char *rcpt, char *key, size_t keylen)
{
	size_t rl = strlen(rcpt), sl = kind == KIND_PAIR ? strlen(sender) + 1 : 0;
	size_t n = 0;

	if (1 + rl + sl + 1 > keylen) {
		key[0] = '\0';
		return;
	}
	key[n++] = (char)kind;
	addr_copy(rcpt, key, &n);
	if (kind == KIND_PAIR) {
		key[n++] = '\001';
		addr_copy(sender, key, &n);
	}
	key[n] = '\0';
}

/* verify_setup - a new, empty cache for max_entries in all: VERIFY_SHARDS
 * shards of max_entries / VERIFY_SHARDS entries (at least 1), each
 * evicting its oldest (by insertion) when full. */
static void verify_setup(size_t max_entries)
{
	size_t cap = max_entries / VERIFY_SHARDS, nb = 16;

	if (cap < 1)
		cap = 1;
	while (nb < cap && nb < ((size_t)1 << 20))
		nb <<= 1;
	const struct shcache_conf cf = { .shards = VERIFY_SHARDS,
					 .buckets = (unsigned)nb,
					 .valsize = sizeof(struct verdict),
					 .max = cap,
					 .evict = 1 };
	shcache_free(cache);
	cache = shcache_new(&cf);
}

/* verify_default_init - used when nobody called verify_init() first. */
static void verify_default_init(void)
{
	if (!cache)
		verify_setup(VERIFY_DEFAULT_MAX);
}

/* verify_init - (re)create an empty cache of at most max_entries; MUST NOT
 * run concurrently with other verify_* calls (start-up, tests). */
void verify_init(size_t max_entries)
{
	pthread_once(&verify_once, verify_default_init);
	verify_setup(max_entries);
}

/* What verify_store puts and verify_fetch takes. */
struct verify_arg {
	struct verdict v;
	uint64_t expires;
};

/* put - verify_store's callback: the entry gets the verdict (over an
 * older one). */
static enum shcache_act put(void *val, uint64_t *expires, int fresh, void *arg)
{
	const struct verify_arg *a = arg;
	(void)fresh;
	memcpy(val, &a->v, sizeof a->v);
	*expires = a->expires;
	return SHCACHE_KEEP;
}

/* take - verify_fetch's callback: copy the verdict; a once-only one goes. */
static enum shcache_act take(void *val, uint64_t *expires, int fresh, void *arg)
{
	struct verify_arg *a = arg;
	(void)expires;
	(void)fresh;
	memcpy(&a->v, val, sizeof a->v);
	return a->v.once ? SHCACHE_DROP : SHCACHE_KEEP;
}

/* verify_store - keep (code, enh) under the key for ttl_ms (0: nothing),
 * replacing what was there (as the newest entry of its shard). */
static void verify_store(int kind, const char *sender, const char *rcpt, int code, const char *enh, int once,
			 uint64_t ttl_ms)
{
	char key[VERIFY_KEY_MAX];
	struct verify_arg a = { .v = { .code = code, .once = once } };

	pthread_once(&verify_once, verify_default_init);
	if (ttl_ms == 0)
		return;
	verify_key(kind, sender, rcpt, key, sizeof(key));
	if (!key[0])
		return;
	snprintf(a.v.enh, sizeof(a.v.enh), "%s", enh ? enh : "");
	uint64_t now = verify_now();
	a.expires = now + ttl_ms;
	shcache_put(cache, key, now, put, &a);
}

/* verify_fetch - the live entry's code and enhanced code under the key; 1
 * found (a once-only entry is dropped as it is answered), 0 not. */
static int verify_fetch(int kind, const char *sender, const char *rcpt, int *code, char *enh, size_t enhlen)
{
	char key[VERIFY_KEY_MAX];
	struct verify_arg a;

	pthread_once(&verify_once, verify_default_init);
	verify_key(kind, sender, rcpt, key, sizeof(key));
	if (!key[0] || !shcache_update(cache, key, verify_now(), 0, take, &a))
		return 0;
	*code = a.v.code;
	snprintf(enh, enhlen, "%s", a.v.enh);
	return 1;
}

/* verify_enh - see verify.h. RFC 3463 §2: class "." subject "." detail,
 * subject and detail 1 to 3 digits; the class MUST be the reply's. */
void verify_enh(const char *reply, char *enh, size_t enhlen)
{
	const char *p = reply;
	size_t n;
	int parts = 0, digits = 0;

	if (enhlen)
		enh[0] = '\0';
	if (!reply || !isdigit((unsigned char)p[0]) || !isdigit((unsigned char)p[1]) ||
	    !isdigit((unsigned char)p[2]) || (p[3] != ' ' && p[3] != '-'))
		return;
	p += 4;
	if ((p[0] != '2' && p[0] != '4' && p[0] != '5') || p[0] != reply[0] || p[1] != '.')
		return;
	for (n = 2;; n++) {
		unsigned char c = (unsigned char)p[n];

		if (isdigit(c)) {
			if (++digits > 3)
				return;
			continue;
		}
		if (digits == 0)
			return;
		parts++;
		digits = 0;
		if (c == '.' && parts == 1)
			continue;
		if (parts == 2 && (c == '\0' || c == ' ' || c == '\r' || c == '\n'))
			break;
		return;
	}
	if (n < enhlen) {
		memcpy(enh, p, n);
		enh[n] = '\0';
	}
}

/* The allow-list: enhanced codes that say the mailbox itself is the reason,
 * whoever sends (RFC 3463 §3.2, RFC 7505 §4.2 for X.1.10), with perimd's
 * text for them. 5.1.0 (other address status), 5.1.7 and 5.1.8 (the
 * SENDER's address: Postfix's reject_unknown_sender_domain answers 550 5.1.8
 * at RCPT), 5.7.x (policy: per sender, client or content), 4.5.3 (too many
 * recipients: this transaction) and 4.7.x (a backend's own greylisting)
 * are deliberately absent, as is any reply without an enhanced code. */
static const struct {
	const char *enh;
	const char *text;
} mailbox_codes[] = {
	{ "5.1.1", "recipient unknown" },
	{ "5.1.2", "recipient domain unknown" },
	{ "5.1.3", "bad recipient address syntax" },
	{ "5.1.6", "recipient has moved, no forwarding address" },
	{ "5.1.10", "recipient domain accepts no mail (null MX)" },
	{ "4.2.2", "mailbox full, try again later" },
};
#define NMAILBOX ((int)(sizeof mailbox_codes / sizeof mailbox_codes[0]))

/* mailbox_text - the allow-list entry's text for (code, enh), or NULL. */
static const char *mailbox_text(int code, const char *enh)
{
	if (!enh || enh[0] != '0' + code / 100)
		return NULL;
	for (int i = 0; i < NMAILBOX; i++)
		if (!strcmp(mailbox_codes[i].enh, enh))
			return mailbox_codes[i].text;
	return NULL;
}

/* verify_mailbox_code - see verify.h. */
int verify_mailbox_code(int code, const char *enh)
{
	return mailbox_text(code, enh) != NULL;
}

/* verify_format - see verify.h. */
void verify_format(int code, const char *enh, const char *rcpt, char *out, size_t outlen)
{
	const char *text = mailbox_text(code, enh);
	char def[16];

	if (!enh || !enh[0] || enh[0] != '0' + code / 100) {
		snprintf(def, sizeof(def), "%d.0.0", code / 100);
		enh = def;
	}
	if (!text)
		text = code >= 500 ? "recipient refused by the backend"
				   : "recipient deferred by the backend, try again later";
	snprintf(out, outlen, "%d %.15s <%.300s>: %s", code, enh, rcpt, text);
}

/* ttl_ms - a TIME parameter's value as a lifetime. */
static uint64_t ttl_ms(long long v)
{
	return v > 0 ? (uint64_t)v : 0;
}

/* verify_learn - see verify.h. Per recipient only what the allow-list
 * names; the same verdict is also kept for the pair, so that a role account
 * (never refused from a per-recipient entry) meets it on its own sender's
 * retry. A 4xx other than 4.2.2 matters only when the backend took the
 * other recipients (else the backend's reply reached the client whole and
 * its retry goes to the backend again): kept for the pair and answered once,
 * which is what lets the co-recipients through on the client's next try. */
enum verify_kept verify_learn(const char *sender, const char *rcpt, int code, const char *reply,
			      unsigned flags, const struct conf *cf)
{
	char enh[VERIFY_ENH_MAX];
	int callout = (flags & VERIFY_CALLOUT) != 0;
	int mailbox;

	if (code < 400 || code > 599 || code == 421 || !rcpt)
		return VERIFY_NOT_KEPT;
	if (!sender || callout)
		sender = "";
	verify_enh(reply, enh, sizeof(enh));
	mailbox = verify_mailbox_code(code, enh);
	if (mailbox) {
		uint64_t life =
		    ttl_ms(code >= 500 ? cf->relay_verify_negative_ttl : cf->relay_verify_defer_ttl);

		verify_store(KIND_RCPT, "", rcpt, code, enh, 0, life);
		publish(rcpt, code, enh, life);
		if (!callout)
			verify_store(
			    KIND_PAIR, sender, rcpt, code, enh, 0,
			    ttl_ms(code >= 500 ? cf->relay_verify_pair_ttl : cf->relay_verify_defer_ttl));
		return VERIFY_KEPT_RCPT;
	}
	/* A callout asked as <>: its other refusals say nothing about the
	 * real sender, and are left to the replay. */
	if (callout)
		return VERIFY_NOT_KEPT;
	if (code >= 500) {
		verify_store(KIND_PAIR, sender, rcpt, code, enh, 0, ttl_ms(cf->relay_verify_pair_ttl));
		return VERIFY_KEPT_PAIR;
	}
	if (flags & VERIFY_OTHERS_ACCEPTED) {
		verify_store(KIND_PAIR, sender, rcpt, code, enh, 1, ttl_ms(cf->relay_verify_defer_ttl));
		return VERIFY_KEPT_PAIR;
	}
	return VERIFY_NOT_KEPT;
}

/* verify_accepted - see verify.h. */
void verify_accepted(const char *rcpt, const struct conf *cf)
{
	verify_store(KIND_RCPT, "", rcpt, 250, "2.1.5", 0, ttl_ms(cf->relay_verify_positive_ttl));
	publish(rcpt, 250, "2.1.5", ttl_ms(cf->relay_verify_positive_ttl));
}

/* verify_remote - see verify.h. */
void verify_remote(const char *rcpt, int code, const char *enh, uint64_t ttl_ms)
{
	if (code == 250 ? strcmp(enh, "2.1.5") != 0 : !verify_mailbox_code(code, enh))
		return;
	verify_store(KIND_RCPT, "", rcpt, code, enh, 0, ttl_ms);
}

/* verify_lookup - see verify.h. The pair first: it is this sender's own. */
enum verify_verdict verify_lookup(const char *sender, const char *rcpt, int is_role, int *code, char *reply,
				  size_t replylen)
{
	char enh[VERIFY_ENH_MAX];
	int c = 0;

	if (!verify_fetch(KIND_PAIR, sender ? sender : "", rcpt, &c, enh, sizeof(enh))) {
		if (is_role || !verify_fetch(KIND_RCPT, "", rcpt, &c, enh, sizeof(enh)))
			return VERIFY_NONE;
		if (c < 400)
			return VERIFY_VERIFIED;
	}
	if (code)
		*code = c;
	if (reply && replylen)
		verify_format(c, enh, rcpt, reply, replylen);
	return VERIFY_REFUSED;
}
