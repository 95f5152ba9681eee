/*
 * grey.h - greylisting: the triplet (client network, sender, recipient),
 * its states (new, early retry, pass, expired = new again), the auto-
 * whitelist of client networks, and the stores behind a small vtable
 * (grey_sqlite.c, grey_mysql.c).
 *
 * The engine is used by the RCPT chain (grey_step(), the last step of
 * policy.c) and by the Postfix policy listener (policyd.c) alike, through
 * grey_decide(). Store calls block: they run on the job pool (jobs.h),
 * one DB connection per worker thread; results come back on the loop
 * that asked. A small in-process cache remembers passed triplets and
 * whitelisted networks, so repeat senders cost no round trip.
 */
#ifndef PERIMD_GREY_H
#define PERIMD_GREY_H

#include "policy_step.h"

#include <stddef.h>
#include <stdint.h>

struct conf;
struct ev_loop;

/* The version of the normalisation below; part of every key, so a change
 * of the rules starts over with fresh keys instead of mixing them. */
#define GREY_NORM_VERSION 1

/* Rule names of verdicts (stats count refusals by the "greylist" prefix).
 * GREY_RULE_PASS marks a recipient that passed greylisting proper: its
 * message, once accepted by a backend, counts toward the auto-whitelist. */
#define GREY_RULE_PASS "greylist_pass"

struct grey_key {
	unsigned char b[16];
};

/* ---- pure helpers (tests/unit/test_grey.c) ---------------------------- */

/* grey_normalize_sender - the sender as the key sees it: lower case; BATV
 * "prvs=TAG=user" (and "btv1==TAG==user"), SRS0/SRS1 rewriting ("SRS0=HH=
 * TT=domain=user@fwd" gives user@domain), "+extension" and VERP-style
 * numeric tags ("bounce-12345-...", "user-1234@") stripped. "" stays "".
 * Writes at most outlen bytes (NUL included); returns the length. */
size_t grey_normalize_sender(const char *in, char *out, size_t outlen);

/* grey_client_net - the network a client is grouped in, as text
 * ("192.0.2.0/24", "2001:db8::/64"). Returns 0, or -1 when addr is not a
 * numeric address. */
int grey_client_net(const char *addr, int v4bits, int v6bits, char *out, size_t outlen);

/* grey_triplet_key / grey_net_key - the 16-byte keys (SHA-256 prefix of
 * the version and the normalised parts). rcpt is lower-cased here. */
void grey_triplet_key(const char *net, const char *nsender, const char *rcpt, struct grey_key *k);
void grey_net_key(const char *net, struct grey_key *k);

/* ---- stores ------------------------------------------------------------ */

/* GREY_OVER_QUOTA: the triplet is new and its client network already
 * created new_limit new triplets this new_interval (nothing was stored);
 * GREY_FULL: the store holds max_entries triplets and none could be evicted
 * (nothing was stored). Both are answered 451, never a pass. */
enum grey_state { GREY_NEW, GREY_EARLY, GREY_PASS, GREY_OVER_QUOTA, GREY_FULL };

/* One decision: what the store is told and what it answers. Times are
 * milliseconds since the epoch; `now` is the caller's clock (a store with its own clock, such
 * as a shared MySQL, ignores it and reports its own in a->now). */
struct grey_query {
	struct grey_key triplet, net;
	int64_t now, delay, max_age, retention;
	/* Abuse bounds (0: none): new triplets per network per new_interval
	 * ms, and triplets in the store. When a new triplet finds the store
	 * full, unpassed entries are evicted: first those of networks that
	 * went over their quota within max_age, then those never retried,
	 * then any unpassed one; never a passed triplet or an awl row. */
	int64_t new_limit, new_interval, max_entries;
	int awl; /* read the network's auto-whitelist count */
};
struct grey_answer {
	enum grey_state state;
	int64_t first, now; /* first sight of the triplet, store's clock */
	int64_t awl_count;  /* the network's counted passes (0: none) */
	int64_t evicted;    /* entries evicted to make room */
};

/* State a fleet shares through a MySQL store (fleet.c): one round trip
 * per sync writes this box's news and reads the other boxes'. Addresses
 * and recipients travel hex-encoded; nothing is ever part of a statement. */
struct grey_fleet_rcpt {
	char rcpt[320];
	int code; /* 250: a callout's acceptance; else a mailbox refusal */
	char enh[16];
	int64_t ttl; /* ms */
};
struct grey_fleet_count {
	char addr[64];
	int n;
};
struct grey_fleet_sync {
	/* in */
	char box[17];                        /* this box's id (hex) */
	const struct grey_fleet_rcpt *rcpts; /* verdicts learned here */
	int nrcpts;
	const struct grey_fleet_count *conns; /* this box's session counts */
	int nconns;
	const struct grey_fleet_count *rates; /* this box's sessions in minute */
	int nrates;
	int64_t minute;     /* wall clock / 60 s */
	int64_t rcpt_since; /* db ms: read verdicts written after this */
	int want_rcpts, want_limits;
	int64_t stale; /* ms: a box silent this long holds no sessions */
	/* out: rows of the other boxes, as they arrive */
	void (*rcpt_in)(void *arg, const char *rcpt, int code, const char *enh, int64_t ttl);
	void (*conn_in)(void *arg, const char *addr, int n);
	void (*rate_in)(void *arg, const char *addr, int n);
	void *arg;
	int64_t now; /* the database clock, ms */
};

/* Decisions in one store call (check_batch) at most. */
#define GREY_BATCH_MAX 64

/* One decision of a batch (check_batch): rc 0, or -1 with err. */
struct grey_call {
	const struct grey_query *q;
	struct grey_answer *a;
	int rc;
	char *err;
	size_t errlen;
};

struct grey_store;
struct grey_store_ops {
	/* check - one round trip: upsert the triplet (new / early / pass /
	 * expired → new) and read the network's auto-whitelist count. */
	int (*check)(struct grey_store *s, const struct grey_query *q, struct grey_answer *a, char *err,
		     size_t errlen);
	/* check_batch - n decisions of one configuration (equal parameters),
	 * each of another triplet, together: a read, then one transaction of
	 * the writes when a row changes (NULL: check is called n times). */
	void (*check_batch)(struct grey_store *s, struct grey_call *calls, int n);
	/* awl_pass - count an accepted message from net (at most once per
	 * interval ms); *count gets the network's count, *wait the ms from
	 * the store's now until it would count one again (its last count
	 * plus interval; <= 0: the next one counts). */
	int (*awl_pass)(struct grey_store *s, const struct grey_key *net, int64_t now, int64_t interval,
			int64_t retention, int64_t *count, int64_t *wait, char *err, size_t errlen);
	/* expire - delete up to `limit` expired rows; returns how many, or -1.
	 * A shared store runs it on one node at a time (returns 0 elsewhere). */
	int (*expire)(struct grey_store *s, int64_t now, int limit, char *err, size_t errlen);
	void (*close)(struct grey_store *s);
	/* fleet_sync - one sync of the fleet's shared state (NULL: this
	 * store cannot share, SQLite). */
	int (*fleet_sync)(struct grey_store *s, struct grey_fleet_sync *fs, char *err, size_t errlen);
};
struct grey_store {
	const struct grey_store_ops *ops;
};

/* grey_store_open - "sqlite:PATH" (":memory:" allowed) or "mysql:FILE".
 * NULL with err filled on failure. Blocking: call it on a worker. */
struct grey_store *grey_store_open(const char *spec, char *err, size_t errlen);
struct grey_store *grey_sqlite_open(const char *path, char *err, size_t errlen);
struct grey_store *grey_mysql_open(const char *cf_path, char *err, size_t errlen);

/* grey_check - for -t and start: 0 when the store named by c can work
 * (an SQLite file that can be opened or created, a well-formed mysql .cf),
 * else -1 with err. Changes nothing on disk. A MySQL server that does not
 * answer is only a warning (logged): an outage must not stop a restart. */
int grey_check(const struct conf *c, char *err, size_t errlen);
int grey_sqlite_check(const char *path, const char *made_dir, char *err, size_t errlen);
int grey_mysql_check(const char *cf_path, char *err, size_t errlen);

/* grey_fleet_sync - run fs on the store named by spec, with the calling
 * thread's own connection (blocking). 0, or -1 with err. */
int grey_fleet_sync(const char *spec, struct grey_fleet_sync *fs, char *err, size_t errlen);

/* grey_announce - log, at start, the store and the fail action in force. */
void grey_announce(const struct conf *c);

/* ---- the engine -------------------------------------------------------- */

enum grey_outcome {
	GREY_OFF,         /* greylisting is off, or the recipient is exempt */
	GREY_WHITELISTED, /* whitelist file (client or recipient) */
	GREY_AWL,         /* auto-whitelisted client network */
	GREY_PASSED,      /* triplet passed (now, or remembered) */
	GREY_DEFER,       /* new or early: wait `wait` more seconds */
	GREY_FAIL,        /* store failed; greylist_fail_action applies */
	GREY_LIMIT,       /* over the network's new-triplet quota, or the
			    * store full: 451 4.7.1, never a pass */
};

struct grey_result {
	enum grey_outcome outcome;
	int64_t wait; /* GREY_DEFER: seconds until a retry passes (>= 1) */
	int first;    /* GREY_DEFER: first sight (else an early retry) */
	int tempfail; /* GREY_FAIL: greylist_fail_action = tempfail */
	int full;     /* GREY_LIMIT: the store is full (else the quota) */
};

typedef void grey_done_fn(void *arg, const struct grey_result *res);
struct grey_op;

/* grey_decide - the verdict on one (client, sender, recipient). Returns 1
 * when decided at once (*res filled, done never called), else 0: done(arg,
 * res) runs later on loop unless grey_cancel(*op) came first. client_name
 * (a verified host name, for the whitelist; may be NULL). The strings
 * need not outlive the call. pol MUST outlive the operation. */
int grey_decide(struct ev_loop *loop, const struct policy *pol, const char *client_addr,
		const char *client_name, const char *sender, const char *rcpt, struct grey_result *res,
		grey_done_fn *done, void *arg, struct grey_op **op);
void grey_cancel(struct grey_op *op);

/* grey_step - the RCPT chain step (policy.c): skips exempt recipients. */
enum policy_step grey_step(struct policy_req *r, struct policy_verdict *v);

/* grey_accepted - a backend accepted a message from client_addr holding
 * a recipient that passed greylisting (GREY_RULE_PASS): count it toward
 * the auto-whitelist (never for the null sender). Asynchronous, no reply. */
void grey_accepted(struct ev_loop *loop, const struct policy *pol, const char *client_addr, const char *sender);

/* Whitelists of the postgrey format (greywl.c), part of the policy
 * snapshot (loaded by policy_load, so SIGHUP reloads them). */
struct greywl;
struct greywl *greywl_load(const char *path, char *err, size_t errlen);
/* greywl_parse - the same from text (tests). */
struct greywl *greywl_parse(const char *text, size_t len, char *err, size_t errlen);
void greywl_free(struct greywl *w);
/* greywl_client - 1 when addr (numeric) or name (may be NULL) is listed. */
int greywl_client(const struct greywl *w, const char *addr, const char *name);
/* greywl_rcpt - 1 when the recipient ("user@domain") is listed. */
int greywl_rcpt(const struct greywl *w, const char *rcpt);

/* grey_policy_load - the whitelists named by c; 0, or -1 with err. */
struct grey_policy {
	struct greywl *clients, *rcpts;
};
int grey_policy_load(const struct conf *c, struct grey_policy *gp, char *err, size_t errlen);
void grey_policy_free(struct grey_policy *gp);

#endif
