/*
 * verify.c - the recipient verdict cache: a key (the recipient, or the
 * sender and the recipient, domains lower-cased) to a backend's code and enhanced
 * code, until an expiry time. What is kept under which key, and for how
 * long, is decided here (verify_learn); the reply given from an entry is
 * built here too (verify_format), never copied from the backend.
 *
 * Invariants: the table is split into VERIFY_SHARDS shards, each with its
 * own mutex, hash chains and an insertion-ordered list; a shard never holds
 * more than its share of max_entries (the oldest entry is evicted first),
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
#include "log.h"
#include "verify.h"

#define VERIFY_SHARDS 64
#define VERIFY_DEFAULT_MAX 100000
/* Kind byte, sender (RFC 5321 §4.5.3.1: path 256 octets), separator,
 * recipient: a longer pair is not kept rather than truncated (two senders
 * cut to the same prefix must not share an entry). */
#define VERIFY_KEY_MAX 600
#define VERIFY_ENH_MAX 16

struct ventry {
	struct ventry *chain;         /* hash bucket chain */
	struct ventry *older, *newer; /* insertion order within the shard */
	uint64_t hash;
	uint64_t expires;         /* monotonic ms */
	int code;                 /* 250 = verified, else the refusal */
	char enh[VERIFY_ENH_MAX]; /* its enhanced code, or "" */
	int once;                 /* answered once, then dropped */
	char key[];               /* kind, address(es) (verify_key) */
};

struct vshard {
	pthread_mutex_t mu;
	struct ventry **buckets;
	size_t nbuckets; /* power of two */
	size_t count, cap;
	struct ventry *oldest, *newest;
};

static struct vshard shards[VERIFY_SHARDS];
static int verify_ready;
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
	struct timespec ts;

	if (verify_clock)
		return verify_clock();
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
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
 * into key (addr_copy); its hash, or 0 with key "" when it does not fit. */
static uint64_t verify_key(int kind, const char *sender, const char *rcpt, char *key, size_t keylen)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	size_t rl = strlen(rcpt), sl = kind == KIND_PAIR ? strlen(sender) + 1 : 0;
	size_t i, n = 0;

	if (1 + rl + sl + 1 > keylen) {
		key[0] = '\0';
		return 0;
	}
	key[n++] = (char)kind;
	addr_copy(rcpt, key, &n);
	if (kind == KIND_PAIR) {
		key[n++] = '\001';
		addr_copy(sender, key, &n);
	}
	key[n] = '\0';
	for (i = 0; i < n; i++) {
		h ^= (unsigned char)key[i];
		h *= 1099511628211ULL;
	}
	return h ? h : 1;
}

/* ventry_unlink - remove e from its shard's chain and order list, free it. */
static void ventry_unlink(struct vshard *s, struct ventry *e)
{
	struct ventry **pp = &s->buckets[(e->hash >> 6) & (s->nbuckets - 1)];

	while (*pp != e)
		pp = &(*pp)->chain;
	*pp = e->chain;
	if (e->older)
		e->older->newer = e->newer;
	else
		s->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		s->newest = e->older;
	s->count--;
	free(e);
}

/* verify_clear - drop every entry of every shard (init / re-init only). */
static void verify_clear(void)
{
	for (int i = 0; i < VERIFY_SHARDS; i++) {
		struct vshard *s = &shards[i];

		while (s->oldest)
			ventry_unlink(s, s->oldest);
	}
}

/* verify_setup - size the shards for max_entries in all. */
static void verify_setup(size_t max_entries)
{
	size_t cap = max_entries / VERIFY_SHARDS;

	if (cap < 1)
		cap = 1;
	for (int i = 0; i < VERIFY_SHARDS; i++) {
		struct vshard *s = &shards[i];
		size_t nb = 16;

		if (!verify_ready)
			pthread_mutex_init(&s->mu, NULL);
		while (nb < cap && nb < ((size_t)1 << 20))
			nb <<= 1;
		free(s->buckets);
		s->buckets = xcalloc(nb, sizeof(*s->buckets));
		s->nbuckets = nb;
		s->cap = cap;
	}
	verify_ready = 1;
}

/* verify_default_init - used when nobody called verify_init() first. */
static void verify_default_init(void)
{
	if (!verify_ready)
		verify_setup(VERIFY_DEFAULT_MAX);
}

/* verify_init - (re)create an empty cache of at most max_entries; MUST NOT
 * run concurrently with other verify_* calls (start-up, tests). */
void verify_init(size_t max_entries)
{
	pthread_once(&verify_once, verify_default_init);
	verify_clear();
	verify_setup(max_entries);
}

/* verify_find - the live entry for key in s, dropping an expired one. */
static struct ventry *verify_find(struct vshard *s, const char *key, uint64_t h, uint64_t now)
{
	struct ventry *e = s->buckets[(h >> 6) & (s->nbuckets - 1)];

	for (; e; e = e->chain) {
		if (e->hash == h && strcmp(e->key, key) == 0)
			break;
	}
	if (e && e->expires <= now) {
		ventry_unlink(s, e);
		e = NULL;
	}
	return e;
}


/* verify_store - keep (code, enh) under the key for ttl_ms (0: nothing),
 * replacing what was there. */
static void verify_store(int kind, const char *sender, const char *rcpt, int code, const char *enh, int once,
			 uint64_t ttl_ms)
{
	char key[VERIFY_KEY_MAX];
	uint64_t h, now;
	struct vshard *s;
	struct ventry *e;
	size_t klen;

	pthread_once(&verify_once, verify_default_init);
	if (ttl_ms == 0)
		return;
	h = verify_key(kind, sender, rcpt, key, sizeof(key));
	if (!key[0])
		return;
	now = verify_now();
	klen = strlen(key);
	s = &shards[h % VERIFY_SHARDS];
	pthread_mutex_lock(&s->mu);
	e = verify_find(s, key, h, now);
	if (e)
		ventry_unlink(s, e);
	/* Bounded: evict the oldest entries (expired or not) to make room. */
	while (s->count >= s->cap && s->oldest)
		ventry_unlink(s, s->oldest);
	e = xmalloc(sizeof(*e) + klen + 1);
	memcpy(e->key, key, klen + 1);
	e->hash = h;
	e->expires = now + ttl_ms;
	e->code = code;
	snprintf(e->enh, sizeof(e->enh), "%s", enh ? enh : "");
	e->once = once;
	e->chain = s->buckets[(h >> 6) & (s->nbuckets - 1)];
	s->buckets[(h >> 6) & (s->nbuckets - 1)] = e;
	e->newer = NULL;
	e->older = s->newest;
	if (s->newest)
		s->newest->newer = e;
	else
		s->oldest = e;
	s->newest = e;
	s->count++;
	pthread_mutex_unlock(&s->mu);
}

/* verify_fetch - the live entry's code and enhanced code under the key; 1
 * found (a once-only entry is dropped as it is answered), 0 not. */
static int verify_fetch(int kind, const char *sender, const char *rcpt, int *code, char *enh, size_t enhlen)
{
	char key[VERIFY_KEY_MAX];
	uint64_t h, now;
	struct vshard *s;
	struct ventry *e;
	int found = 0;

	pthread_once(&verify_once, verify_default_init);
	h = verify_key(kind, sender, rcpt, key, sizeof(key));
	if (!key[0])
		return 0;
	now = verify_now();
	s = &shards[h % VERIFY_SHARDS];
	pthread_mutex_lock(&s->mu);
	e = verify_find(s, key, h, now);
	if (e) {
		found = 1;
		*code = e->code;
		snprintf(enh, enhlen, "%s", e->enh);
		if (e->once)
			ventry_unlink(s, e);
	}
	pthread_mutex_unlock(&s->mu);
	return found;
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
