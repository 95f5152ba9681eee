/*
 * test_grey.c - greylisting: sender normalisation, netmask grouping, keys,
 * the store's state machine on SQLite :memory: with a fake clock (new,
 * early, pass, expired, retention, auto-whitelist with its interval and
 * expiry), the abuse bounds (the new-triplet quota per network, eviction
 * order under the size bound, a database file deleted under the store),
 * and the postgrey-format whitelists (whole and line by line).
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "grey.h"
#include "net.h"
#include "policyd.h"
#include "smtp_proto.h"
#include "t.h"

/* norm - normalise into a static buffer. */
static const char *norm(const char *s)
{
	static char out[512];
	grey_normalize_sender(s, out, sizeof out);
	return out;
}

/* test_normalize - lower case, BATV, SRS, +ext, VERP numbers. */
TEST(test_normalize)
{
	CHECK_STR(norm(""), "");
	CHECK_STR(norm("User@Example.COM"), "user@example.com");
	CHECK_STR(norm("prvs=1234abcdef=user@example.com"), "user@example.com");
	CHECK_STR(norm("PRVS=0123456789=User@Example.com"), "user@example.com");
	CHECK_STR(norm("msprvs1=18079Kz2tyOa=bounces@example.com"), "bounces@example.com");
	CHECK_STR(norm("btv1==0123456789==user@example.com"), "user@example.com");
	CHECK_STR(norm("SRS0=HHH=TT=orig.example=alice@forwarder.example"), "alice@orig.example");
	CHECK_STR(norm("SRS1=HHH=fwd1.example==HHH=TT=orig.example=bob@fwd2.example"),
		  "bob@orig.example");
	CHECK_STR(norm("srs0+hhh=tt=orig.example=carol@fwd.example"), "carol@orig.example");
	CHECK_STR(norm("user+list@example.com"), "user@example.com");
	CHECK_STR(norm("list-bounces+bob=example.org@lists.example.com"), "list-bounces@lists.example.com");
	CHECK_STR(norm("bounce-12345-678@example.com"), "bounce-#-#@example.com");
	CHECK_STR(norm("bounce.99@example.com"), "bounce.#@example.com");
	/* Digits inside a word are part of a name, not a tag. */
	CHECK_STR(norm("user2@example.com"), "user2@example.com");
	CHECK_STR(norm("123abc@example.com"), "123abc@example.com");
	CHECK_STR(norm("42@example.com"), "#@example.com");
	/* BATV around an SRS address, and an SRS address with a +tag. */
	CHECK_STR(norm("prvs=0123456789=SRS0=H=TT=orig.example=dave@fwd.example"), "dave@orig.example");
	/* Malformed forms stay as they are (lower case). */
	CHECK_STR(norm("prvs=@example.com"), "prvs=@example.com");
	CHECK_STR(norm("SRS0=broken@fwd.example"), "srs0=broken@fwd.example");
	CHECK_STR(norm("+@example.com"), "+@example.com");
	CHECK_STR(norm("no-at-sign"), "no-at-sign");
	/* Truncation keeps a terminated prefix. */
	char small[8];
	size_t n = grey_normalize_sender("someone@example.com", small, sizeof small);
	CHECK_INT(n, 7);
	CHECK_STR(small, "someone");
	/* Every prefix of a tricky address normalises without fault. */
	const char *tricky = "SRS1=a=b==c=d=e=f+g-1-2@h";
	char buf[64];
	for (size_t i = 0; i <= strlen(tricky); i++) {
		char part[64];
		memcpy(part, tricky, i);
		part[i] = 0;
		grey_normalize_sender(part, buf, sizeof buf);
		CHECK(strlen(buf) < sizeof buf);
	}
}

/* net - the network of addr with /24 and /64. */
static const char *net(const char *addr, int v4, int v6)
{
	static char out[64];
	if (grey_client_net(addr, v4, v6, out, sizeof out) < 0)
		return "ERR";
	return out;
}

/* test_netmask - grouping by prefix length, IPv4-mapped, bad input. */
TEST(test_netmask)
{
	CHECK_STR(net("192.0.2.77", 24, 64), "192.0.2.0/24");
	CHECK_STR(net("192.0.2.255", 24, 64), "192.0.2.0/24");
	CHECK_STR(net("192.0.3.1", 24, 64), "192.0.3.0/24");
	CHECK_STR(net("192.0.2.77", 32, 64), "192.0.2.77/32");
	CHECK_STR(net("192.0.2.77", 20, 64), "192.0.0.0/20");
	CHECK_STR(net("10.255.255.255", 8, 64), "10.0.0.0/8");
	CHECK_STR(net("2001:db8:1:2:3:4:5:6", 24, 64), "2001:db8:1:2::/64");
	CHECK_STR(net("2001:db8:1:2:3:4:5:6", 24, 48), "2001:db8:1::/48");
	CHECK_STR(net("2001:db8:1:2:3:4:5:6", 24, 60), "2001:db8:1::/60");
	CHECK_STR(net("2001:db8:1:12:3:4:5:6", 24, 60), "2001:db8:1:10::/60");
	CHECK_STR(net("::ffff:192.0.2.9", 24, 64), "192.0.2.0/24");
	CHECK_STR(net("not-an-ip", 24, 64), "ERR");
	CHECK_STR(net("", 24, 64), "ERR");
	CHECK_STR(net("192.0.2.1/24", 24, 64), "ERR");
}

/* test_keys - same triplet, same key; any part changed, another key. */
TEST(test_keys)
{
	struct grey_key a, b, c, d, n1, n2;
	grey_triplet_key("192.0.2.0/24", "a@x.example", "Rcpt@Example.com", &a);
	grey_triplet_key("192.0.2.0/24", "a@x.example", "rcpt@example.com", &b);
	CHECK(!memcmp(&a, &b, sizeof a));
	grey_triplet_key("192.0.3.0/24", "a@x.example", "rcpt@example.com", &c);
	CHECK(memcmp(&a, &c, sizeof a));
	/* The parts are separated: moving a character between them differs. */
	grey_triplet_key("192.0.2.0/24", "a@x.exampler", "cpt@example.com", &d);
	CHECK(memcmp(&a, &d, sizeof a));
	grey_net_key("192.0.2.0/24", &n1);
	grey_net_key("192.0.3.0/24", &n2);
	CHECK(memcmp(&n1, &n2, sizeof n1));
	CHECK(memcmp(&n1, &a, sizeof n1));
}

#define S 1000LL
#define DELAY (300 * S)
#define MAXAGE (2 * 86400 * S)
#define RETAIN (35 * 86400 * S)

/* check_at - one decision at fake time t. */
static enum grey_state check_at(struct grey_store *st, const char *trip, int64_t t,
				struct grey_answer *a)
{
	struct grey_query q = { .now = t, .delay = DELAY, .max_age = MAXAGE, .retention = RETAIN };
	char err[256];
	grey_triplet_key("192.0.2.0/24", "a@x.example", trip, &q.triplet);
	grey_net_key("192.0.2.0/24", &q.net);
	memset(a, 0, sizeof *a);
	CHECK_INT(st->ops->check(st, &q, a, err, sizeof err), 0);
	return a->state;
}

/* test_states - new, early, pass, remembered, expired, retention. */
TEST(test_states)
{
	char err[256];
	struct grey_store *st = grey_sqlite_open(":memory:", err, sizeof err);
	CHECK(st != NULL);
	if (!st)
		return;
	struct grey_answer a;
	int64_t t0 = 1700000000 * S;
	CHECK_INT(check_at(st, "r1@example.com", t0, &a), GREY_NEW);
	CHECK_INT(a.first, t0);
	CHECK_INT(a.now, t0);
	CHECK_INT(a.awl_count, 0);
	CHECK_INT(check_at(st, "r1@example.com", t0 + 1 * S, &a), GREY_EARLY);
	CHECK_INT(a.first, t0);
	CHECK_INT(check_at(st, "r1@example.com", t0 + DELAY - 1, &a), GREY_EARLY);
	CHECK_INT(check_at(st, "r1@example.com", t0 + DELAY, &a), GREY_PASS);
	CHECK_INT(check_at(st, "r1@example.com", t0 + DELAY + 10 * S, &a), GREY_PASS);
	/* Remembered for the retention after the last pass, not the first. */
	int64_t t1 = t0 + DELAY + 10 * S + RETAIN - 1;
	CHECK_INT(check_at(st, "r1@example.com", t1, &a), GREY_PASS);
	CHECK_INT(check_at(st, "r1@example.com", t1 + RETAIN, &a), GREY_NEW);
	CHECK_INT(a.first, t1 + RETAIN);
	/* Another recipient is its own triplet. */
	CHECK_INT(check_at(st, "r2@example.com", t0 + DELAY, &a), GREY_NEW);
	/* A retry after max_age starts over, then passes after the delay. */
	CHECK_INT(check_at(st, "r3@example.com", t0, &a), GREY_NEW);
	CHECK_INT(check_at(st, "r3@example.com", t0 + MAXAGE + 1, &a), GREY_NEW);
	CHECK_INT(a.first, t0 + MAXAGE + 1);
	CHECK_INT(check_at(st, "r3@example.com", t0 + MAXAGE + 2, &a), GREY_EARLY);
	CHECK_INT(check_at(st, "r3@example.com", t0 + MAXAGE + 1 + DELAY, &a), GREY_PASS);
	/* Expiry deletes only what has expired, bounded per call. */
	for (int i = 0; i < 5; i++) {
		char r[64];
		snprintf(r, sizeof r, "x%d@example.com", i);
		check_at(st, r, t0, &a);
	}
	CHECK_INT(st->ops->expire(st, t0 + MAXAGE, 3, err, sizeof err), 3);
	CHECK_INT(st->ops->expire(st, t0 + MAXAGE, 3, err, sizeof err), 2);
	CHECK_INT(st->ops->expire(st, t0 + MAXAGE, 3, err, sizeof err), 0);
	CHECK_INT(check_at(st, "r3@example.com", t0 + MAXAGE + 2 + DELAY, &a), GREY_PASS);
	st->ops->close(st);
}

/* test_awl - counted passes, at most one per interval, and expiry. */
TEST(test_awl)
{
	char err[256];
	struct grey_store *st = grey_sqlite_open(":memory:", err, sizeof err);
	CHECK(st != NULL);
	if (!st)
		return;
	struct grey_key n;
	grey_net_key("192.0.2.0/24", &n);
	int64_t t0 = 1700000000 * S, cnt = -1, wait = -1, hour = 3600 * S;
	CHECK_INT(st->ops->awl_pass(st, &n, t0, hour, RETAIN, &cnt, &wait, err, sizeof err), 0);
	CHECK_INT(cnt, 1);
	CHECK_INT(wait, hour); /* counts again an interval after its last count */
	CHECK_INT(st->ops->awl_pass(st, &n, t0 + 10 * S, hour, RETAIN, &cnt, &wait, err, sizeof err), 0);
	CHECK_INT(cnt, 1);  /* within the interval: not counted */
	CHECK_INT(wait, hour - 10 * S); /* timed from the last count, not this call */
	CHECK_INT(st->ops->awl_pass(st, &n, t0 + hour, hour, RETAIN, &cnt, &wait, err, sizeof err), 0);
	CHECK_INT(cnt, 2);
	/* The decision reads the count of the client's network. */
	struct grey_answer a;
	check_at(st, "r@example.com", t0 + hour, &a);
	CHECK_INT(a.awl_count, 2);
	/* Interval 0: every accepted message counts. */
	for (int i = 0; i < 3; i++)
		st->ops->awl_pass(st, &n, t0 + hour + i, 0, RETAIN, &cnt, &wait, err, sizeof err);
	CHECK_INT(cnt, 5);
	CHECK_INT(wait, 0);
	/* After the retention without a pass the network starts over. */
	int64_t late = t0 + hour + 2 + RETAIN + 1;
	check_at(st, "r@example.com", late, &a);
	CHECK_INT(a.awl_count, 0);
	CHECK_INT(st->ops->awl_pass(st, &n, late, hour, RETAIN, &cnt, &wait, err, sizeof err), 0);
	CHECK_INT(cnt, 1);
	st->ops->close(st);
}

/* test_wal - a file database is in WAL mode. */
TEST(test_wal)
{
	char path[] = "/tmp/test_grey_XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0);
	close(fd);
	char err[256];
	struct grey_store *st = grey_sqlite_open(path, err, sizeof err);
	CHECK(st != NULL);
	if (st) {
		struct grey_answer a;
		CHECK_INT(check_at(st, "w@example.com", 1000, &a), GREY_NEW);
		st->ops->close(st);
	}
	FILE *f = fopen(path, "rb");
	unsigned char hdr[20] = { 0 };
	CHECK(f && fread(hdr, 1, sizeof hdr, f) == sizeof hdr);
	if (f)
		fclose(f);
	/* File format bytes 18 and 19 are 2 in WAL mode. */
	CHECK_INT(hdr[18], 2);
	CHECK_INT(hdr[19], 2);
	unlink(path);
	char p2[300];
	snprintf(p2, sizeof p2, "%s-wal", path);
	unlink(p2);
	snprintf(p2, sizeof p2, "%s-shm", path);
	unlink(p2);
	CHECK(grey_sqlite_open("/nonexistent-dir/x.db", err, sizeof err) == NULL);
	CHECK(grey_store_open("postgres:x", err, sizeof err) == NULL);
}

/* qcheck - one decision from net at fake time t with the abuse bounds. */
static enum grey_state qcheck(struct grey_store *st, const char *netname, const char *rcpt, int64_t t,
			      int64_t limit, int64_t max, struct grey_answer *a)
{
	struct grey_query q = { .now = t, .delay = DELAY, .max_age = MAXAGE, .retention = RETAIN,
				.new_limit = limit, .new_interval = 3600 * S, .max_entries = max };
	char err[256];
	grey_triplet_key(netname, "a@x.example", rcpt, &q.triplet);
	grey_net_key(netname, &q.net);
	memset(a, 0, sizeof *a);
	CHECK_INT(st->ops->check(st, &q, a, err, sizeof err), 0);
	return a->state;
}

/* db_count - one count(*) over the file (a second connection). */
static int64_t db_count(const char *path, const char *sql)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	int64_t n = -1;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			n = sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	sqlite3_close(db);
	return n;
}

/* temp_db - a fresh path for a database file (none there yet). */
static void temp_db(char *path, size_t len, const char *name)
{
	snprintf(path, len, "/tmp/test_grey_%s_%d.db", name, (int)getpid());
	unlink(path);
}

/* rm_db - the file and its WAL companions. */
static void rm_db(const char *path)
{
	char p[300];
	unlink(path);
	snprintf(p, sizeof p, "%s-wal", path);
	unlink(p);
	snprintf(p, sizeof p, "%s-shm", path);
	unlink(p);
}

/* test_quota - new triplets per network per interval; known triplets and
 * other networks are not affected; nothing is stored past the quota. */
TEST(test_quota)
{
	char err[256], path[128];
	temp_db(path, sizeof path, "quota");
	struct grey_store *st = grey_sqlite_open(path, err, sizeof err);
	CHECK(st != NULL);
	if (!st)
		return;
	struct grey_answer a;
	int64_t t0 = 1700000000 * S, hour = 3600 * S;
	const char *A = "192.0.2.0/24", *B = "198.51.100.0/24";
	CHECK_INT(qcheck(st, A, "r1@example.com", t0, 3, 0, &a), GREY_NEW);
	CHECK_INT(qcheck(st, A, "r2@example.com", t0 + 1, 3, 0, &a), GREY_NEW);
	CHECK_INT(qcheck(st, A, "r3@example.com", t0 + 2, 3, 0, &a), GREY_NEW);
	CHECK_INT(qcheck(st, A, "r4@example.com", t0 + 3, 3, 0, &a), GREY_OVER_QUOTA);
	CHECK_INT(qcheck(st, A, "r5@example.com", t0 + 4, 3, 0, &a), GREY_OVER_QUOTA);
	/* Refused triplets were not stored: still refused, not "early". */
	CHECK_INT(qcheck(st, A, "r4@example.com", t0 + 5, 3, 0, &a), GREY_OVER_QUOTA);
	CHECK_INT(db_count(path, "SELECT count(*) FROM grey"), 3);
	CHECK_INT(db_count(path, "SELECT v FROM grey_meta WHERE name = 'rows'"), 3);
	/* Known triplets go on as before: early, then pass. */
	CHECK_INT(qcheck(st, A, "r1@example.com", t0 + 10 * S, 3, 0, &a), GREY_EARLY);
	CHECK_INT(qcheck(st, A, "r1@example.com", t0 + DELAY, 3, 0, &a), GREY_PASS);
	/* Another network has its own quota. */
	CHECK_INT(qcheck(st, B, "r4@example.com", t0 + 6, 3, 0, &a), GREY_NEW);
	/* Next window: three more. */
	CHECK_INT(qcheck(st, A, "r4@example.com", t0 + hour - 1, 3, 0, &a), GREY_OVER_QUOTA);
	CHECK_INT(qcheck(st, A, "r4@example.com", t0 + hour, 3, 0, &a), GREY_NEW);
	CHECK_INT(qcheck(st, A, "r5@example.com", t0 + hour + 1, 3, 0, &a), GREY_NEW);
	/* Limit 0: no quota. */
	for (int i = 0; i < 10; i++) {
		char r[64];
		snprintf(r, sizeof r, "many%d@example.com", i);
		CHECK_INT(qcheck(st, B, r, t0 + 7 + i, 0, 0, &a), GREY_NEW);
	}
	/* Expiry removes the quota rows with the rest. */
	CHECK(db_count(path, "SELECT count(*) FROM gnet") >= 2);
	CHECK(st->ops->expire(st, t0 + 10 * MAXAGE, 1000, err, sizeof err) >= 0);
	CHECK_INT(db_count(path, "SELECT count(*) FROM gnet"), 0);
	CHECK_INT(db_count(path, "SELECT v FROM grey_meta WHERE name = 'rows'"),
		  db_count(path, "SELECT count(*) FROM grey"));
	st->ops->close(st);
	rm_db(path);
}

/* test_evict - under the size bound: over-quota networks' unpassed rows
 * first, then never retried ones, then any unpassed; never a passed
 * triplet or an auto-whitelist row; full when only those are left. */
TEST(test_evict)
{
	char err[256], path[128];
	temp_db(path, sizeof path, "evict");
	struct grey_store *st = grey_sqlite_open(path, err, sizeof err);
	CHECK(st != NULL);
	if (!st)
		return;
	struct grey_answer a;
	int64_t t0 = 1700000000 * S, cnt = 0, wait = 0;
	const char *P = "203.0.113.0/24", *A = "192.0.2.0/24", *B = "198.51.100.0/24",
		   *C = "10.1.0.0/24", *D = "10.2.0.0/24";
	const int64_t L = 3, M = 6;
	/* P: a passed triplet and an auto-whitelist row. */
	CHECK_INT(qcheck(st, P, "p@example.com", t0, L, M, &a), GREY_NEW);
	CHECK_INT(qcheck(st, P, "p@example.com", t0 + DELAY, L, M, &a), GREY_PASS);
	struct grey_key pn;
	grey_net_key(P, &pn);
	CHECK_INT(st->ops->awl_pass(st, &pn, t0 + DELAY, 0, RETAIN, &cnt, &wait, err, sizeof err), 0);
	/* A: over its quota (three rows stored). */
	for (int i = 0; i < 4; i++) {
		char r[64];
		snprintf(r, sizeof r, "a%d@example.com", i);
		CHECK_INT(qcheck(st, A, r, t0 + 1 + i, L, M, &a), i < 3 ? GREY_NEW : GREY_OVER_QUOTA);
	}
	/* B: one retried (early), one never retried. */
	CHECK_INT(qcheck(st, B, "b1@example.com", t0 + 10, L, M, &a), GREY_NEW);
	CHECK_INT(qcheck(st, B, "b1@example.com", t0 + 20, L, M, &a), GREY_EARLY);
	CHECK_INT(qcheck(st, B, "b2@example.com", t0 + 30, L, M, &a), GREY_NEW);
	CHECK_INT(db_count(path, "SELECT count(*) FROM grey"), 6);
	/* Full: each new triplet of C evicts one of A's rows, none else. */
	for (int i = 0; i < 3; i++) {
		char r[64];
		snprintf(r, sizeof r, "c%d@example.com", i);
		CHECK_INT(qcheck(st, C, r, t0 + 40 + i, L, M, &a), GREY_NEW);
		CHECK_INT(a.evicted, 1);
		CHECK_INT(db_count(path, "SELECT count(*) FROM grey"), 6);
		CHECK_INT(db_count(path, "SELECT count(*) FROM grey WHERE prev = 0 AND passed = 0 AND"
					 " net = (SELECT net FROM grey WHERE prev > 0 AND passed = 0)"), 1);
	}
	char sql[256];
	struct grey_key an;
	grey_net_key(A, &an);
	snprintf(sql, sizeof sql, "SELECT count(*) FROM grey WHERE hex(net) = '");
	for (int i = 0; i < 16; i++)
		snprintf(sql + strlen(sql), sizeof sql - strlen(sql), "%02X", an.b[i]);
	strcat(sql, "'");
	CHECK_INT(db_count(path, sql), 0);
	/* Then the never retried ones (b2, c0..c2), not b1 (retried). */
	for (int i = 0; i < 4; i++) {
		char r[64];
		snprintf(r, sizeof r, "d%d@example.com", i);
		CHECK_INT(qcheck(st, i < 2 ? D : P, r, t0 + 50 + i, L, M, &a), GREY_NEW);
		CHECK_INT(a.evicted, 1);
		/* b1 and the passed triplet stay while never-retried rows remain. */
		CHECK_INT(db_count(path, "SELECT count(*) FROM grey WHERE prev > 0"), 2);
	}
	/* Only b1 is unpassed and retried among the old rows; next, rows
	 * never retried are the new ones (d0..d3): they go before b1. */
	CHECK_INT(db_count(path, "SELECT count(*) FROM grey WHERE passed = 1"), 1);
	/* With the bound at 1, every unpassed row goes, the passed one and
	 * the auto-whitelist row stay, and the new triplet finds it full. */
	CHECK_INT(qcheck(st, D, "last@example.com", t0 + 60, 0, 1, &a), GREY_FULL);
	CHECK_INT(a.evicted, 5);
	CHECK_INT(db_count(path, "SELECT count(*) FROM grey"), 1);
	CHECK_INT(db_count(path, "SELECT count(*) FROM grey WHERE passed = 1"), 1);
	CHECK_INT(db_count(path, "SELECT count(*) FROM awl"), 1);
	CHECK_INT(qcheck(st, D, "last@example.com", t0 + 61, 0, 1, &a), GREY_FULL);
	CHECK_INT(a.evicted, 0);
	CHECK_INT(qcheck(st, P, "p@example.com", t0 + 62, 0, 1, &a), GREY_PASS);
	CHECK_INT(a.awl_count, 1);
	/* The row count follows deletions made by hand (triggers). */
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "DELETE FROM grey", NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
	CHECK_INT(db_count(path, "SELECT v FROM grey_meta WHERE name = 'rows'"), 0);
	CHECK_INT(qcheck(st, D, "last@example.com", t0 + 63, 0, 1, &a), GREY_NEW);
	st->ops->close(st);
	rm_db(path);
}

/* test_reopen - a database file deleted under an open store is noticed
 * (within a second) and created anew; one made by an older perimd gets
 * the new column. */
TEST(test_reopen)
{
	char err[256], path[128];
	temp_db(path, sizeof path, "reopen");
	struct grey_store *st = grey_sqlite_open(path, err, sizeof err);
	CHECK(st != NULL);
	if (!st)
		return;
	struct grey_answer a;
	CHECK_INT(check_at(st, "r@example.com", 1000, &a), GREY_NEW);
	CHECK_INT(check_at(st, "r@example.com", 2000, &a), GREY_EARLY);
	rm_db(path);
	/* The path is looked at once a second at most. */
	usleep(1100 * 1000);
	CHECK_INT(check_at(st, "r@example.com", 3000, &a), GREY_NEW);
	struct stat sb;
	CHECK(stat(path, &sb) == 0);
	CHECK_INT(db_count(path, "SELECT count(*) FROM grey"), 1);
	st->ops->close(st);
	rm_db(path);
	/* A file of the old schema (no net column, no row count). */
	sqlite3 *db;
	CHECK(sqlite3_open(path, &db) == SQLITE_OK);
	CHECK(sqlite3_exec(db, "CREATE TABLE grey (k BLOB PRIMARY KEY, first INTEGER NOT NULL,"
			       " last INTEGER NOT NULL, prev INTEGER NOT NULL, passed INTEGER NOT NULL,"
			       " expires INTEGER NOT NULL) WITHOUT ROWID;"
			       "INSERT INTO grey VALUES (x'00', 1, 1, 0, 1, 9e15), (x'01', 1, 1, 0, 0, 9e15);",
			       NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
	st = grey_sqlite_open(path, err, sizeof err);
	CHECK(st != NULL);
	if (st) {
		CHECK_INT(db_count(path, "SELECT v FROM grey_meta WHERE name = 'rows'"), 2);
		CHECK_INT(qcheck(st, "192.0.2.0/24", "n@example.com", 5000, 10, 2, &a), GREY_NEW);
		CHECK_INT(a.evicted, 1);
		CHECK_INT(db_count(path, "SELECT count(*) FROM grey WHERE k = x'00'"), 1);
		st->ops->close(st);
	}
	rm_db(path);
	/* -t: looked at, never written. */
	CHECK_INT(grey_sqlite_check("/nonexistent-dir/x.db", NULL, err, sizeof err), -1);
	CHECK(strstr(err, "cannot be created: /nonexistent-dir") != NULL);
	CHECK_INT(grey_sqlite_check("/nonexistent-dir/x.db", "/nonexistent-dir", err, sizeof err), 0);
	CHECK_INT(grey_sqlite_check("/tmp", NULL, err, sizeof err), -1);
	CHECK(strstr(err, "not a regular file") != NULL);
	CHECK_INT(grey_sqlite_check(path, NULL, err, sizeof err), 0);
	CHECK(stat(path, &sb) < 0);   /* not created by the check */
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	if (f) {
		fputs("this is not a database at all\n", f);
		fclose(f);
	}
	CHECK_INT(grey_sqlite_check(path, NULL, err, sizeof err), -1);
	CHECK(strstr(err, "not an SQLite database") != NULL);
	rm_db(path);
}

static const char wl_text[] =
	"# comment\n"
	"\n"
	"mail.example.net\n"
	"/^mx[0-9]+\\.bulk\\.example$/\n"
	"192.0.2.0/24   # trailing comment\n"
	"2001:db8::/32\n"
	"198.51.100.7\n"
	"10.1.\n"
	"postmaster@\n"
	"abuse@Example.org\n"
	"lists.example.com\n"
	"/^noreply-[a-z]+@/\n";

/* check_wl - the assertions shared by whole and line-by-line parsing. */
static void check_wl(const struct greywl *w)
{
	CHECK(w != NULL);
	if (!w)
		return;
	CHECK_INT(greywl_client(w, "203.0.113.5", "mail.example.net"), 1);
	CHECK_INT(greywl_client(w, "203.0.113.5", "out.MAIL.example.net"), 1);
	CHECK_INT(greywl_client(w, "203.0.113.5", "evilmail.example.net"), 0);
	CHECK_INT(greywl_client(w, "203.0.113.5", "example.net"), 0);
	CHECK_INT(greywl_client(w, "203.0.113.5", NULL), 0);
	CHECK_INT(greywl_client(w, "203.0.113.5", "mx12.bulk.example"), 1);
	CHECK_INT(greywl_client(w, "203.0.113.5", "mx12.bulk.example.evil"), 0);
	CHECK_INT(greywl_client(w, "192.0.2.200", NULL), 1);
	CHECK_INT(greywl_client(w, "192.0.3.1", NULL), 0);
	CHECK_INT(greywl_client(w, "2001:db8:ffff::1", NULL), 1);
	CHECK_INT(greywl_client(w, "2001:db9::1", NULL), 0);
	CHECK_INT(greywl_client(w, "198.51.100.7", NULL), 1);
	CHECK_INT(greywl_client(w, "198.51.100.8", NULL), 0);
	CHECK_INT(greywl_client(w, "10.1.2.3", NULL), 1);
	CHECK_INT(greywl_client(w, "10.10.2.3", NULL), 0);
	CHECK_INT(greywl_rcpt(w, "Postmaster@any.example"), 1);
	CHECK_INT(greywl_rcpt(w, "postmasterx@any.example"), 0);
	CHECK_INT(greywl_rcpt(w, "abuse@example.org"), 1);
	CHECK_INT(greywl_rcpt(w, "abuse@example.com"), 0);
	CHECK_INT(greywl_rcpt(w, "anyone@lists.example.com"), 1);
	CHECK_INT(greywl_rcpt(w, "anyone@sub.lists.example.com"), 1);
	CHECK_INT(greywl_rcpt(w, "anyone@otherlists.example.com"), 0);
	CHECK_INT(greywl_rcpt(w, "noreply-abc@x.example"), 1);
	CHECK_INT(greywl_rcpt(w, "user@x.example"), 0);
}

/* test_whitelist - postgrey format, whole and as it grows line by line. */
TEST(test_whitelist)
{
	char err[256];
	struct greywl *w = greywl_parse(wl_text, strlen(wl_text), err, sizeof err);
	check_wl(w);
	greywl_free(w);
	/* Every prefix parses (a truncated file is no crash), and byte by
	 * byte growth ends in the same list. */
	for (size_t i = 0; i <= strlen(wl_text); i++) {
		w = greywl_parse(wl_text, i, err, sizeof err);
		greywl_free(w);
	}
	w = greywl_parse(wl_text, strlen(wl_text), err, sizeof err);
	check_wl(w);
	greywl_free(w);
	/* Errors name the line. */
	CHECK(greywl_parse("ok.example\n/unterminated\n", 25, err, sizeof err) == NULL);
	CHECK(strstr(err, "line 2") != NULL);
	CHECK(greywl_parse("/([/\n", 5, err, sizeof err) == NULL);
	CHECK(strstr(err, "line 1") != NULL);
	CHECK(greywl_client(NULL, "192.0.2.1", NULL) == 0);
	CHECK(greywl_load("/nonexistent/file", err, sizeof err) == NULL);
	/* A network whose /bits is no prefix length is refused: "10.0.0.0/"
	 * used to whitelist every IPv4 client (strtol read "" as /0), and
	 * "/99" matched nothing (found by fuzz_greywl). */
	static const char *const bad_nets[] = {
		"10.0.0.0/\n", "10.0.0.0/99\n", "10.0.0.0/ 8\n", "10.0.0.0/+8\n",
		"10.0.0.0/-0\n", "2001:db8::/129\n", "10.0.0.0/0008\n",
	};
	for (size_t i = 0; i < sizeof bad_nets / sizeof bad_nets[0]; i++) {
		w = greywl_parse(bad_nets[i], strlen(bad_nets[i]), err, sizeof err);
		CHECK(w == NULL);
		greywl_free(w);
		if (!w)
			CHECK(strstr(err, "line 1: bad network") != NULL);
	}
	w = greywl_parse("10.0.0.0/8\n::/0\n", 16, err, sizeof err);
	CHECK(w != NULL);
	CHECK_INT(greywl_client(w, "10.9.9.9", NULL), 1);
	CHECK_INT(greywl_client(w, "192.0.2.1", NULL), 0);
	CHECK_INT(greywl_client(w, "2001:db8::1", NULL), 1);
	greywl_free(w);
	/* A regex whose compiled tree would blow up is refused before
	 * regcomp(), which took gigabytes and crashed on the first (found by
	 * fuzz_greywl); ordinary repetitions still load. */
	static const char *const costly[] = {
		"/a++++++++++++++++++++++/\n",
		"/((((((((((((((((((((a+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+)+/\n",
		"/((a{100}){100}){100}/\n",
		"/a{99999999999999999999}/\n",
		/* stacked intervals: the '}' was counted as a new atom, so
		 * each interval repeated one node, not what came before */
		"/a{100}{100}{100}{10}/\n",
		"/a{255}{255}{255}/\n",
		/* {,n} is glibc's {0,n}: it was not counted at all */
		"/a{,32767}{,32767}/\n",
		"/(((a{,20}){,20}){,20}){,20}/\n",
		/* empty-matching nodes: regcomp's closures are quadratic in
		 * them (the first, found by fuzz_greywl, a 10 s timeout) */
		"/a++*+++++++++++/\n",
		"/a*+*+*+*+*+*+*+*+*+*+*+/\n",
		"/(){9000}/\n",
		"/(\\b){9000}/\n",
		/* a star over an anchor: exponential time in regcomp */
		"/(($)*){25}/\n",
		"/((a|^)+){25}/\n",
		"/x\\b{2,}/\n",
		/* nested or stacked repetitions are refused outright (the
		 * first, found by CI's smoke run, is exponential in regcomp) */
		"/($()*){25}/\n",
		"/(a?){2}/\n",
		"/(x+)*/\n",
		"/y{2}{3}/\n",
		"/a*?/\n",
	};
	for (size_t i = 0; i < sizeof costly / sizeof costly[0]; i++) {
		w = greywl_parse(costly[i], strlen(costly[i]), err, sizeof err);
		CHECK(w == NULL);
		greywl_free(w);
		if (!w)
			CHECK(strstr(err, "line 1: regex too complex") != NULL);
	}
	static const char ok_re[] = "/^mx[0-9]{1,3}\\.(a|b)+[]{}+]\\+{2}x{5,}$/\n";
	w = greywl_parse(ok_re, strlen(ok_re), err, sizeof err);
	CHECK(w != NULL);
	CHECK_INT(greywl_client(w, "192.0.2.1", "mx12.ab}++xxxxx"), 1);
	greywl_free(w);
	/* back-references: regexec backtracks on them without bound */
	static const char backref[] = "/(x*)(\\1){4000}/\n";
	w = greywl_parse(backref, strlen(backref), err, sizeof err);
	CHECK(w == NULL);
	if (!w)
		CHECK(strstr(err, "line 1: regex back-references are not supported") != NULL);
	greywl_free(w);
	static const char no_backref[] = "/[\\1]\\\\1(^|\\.)?a{0,40}$/\n";
	w = greywl_parse(no_backref, strlen(no_backref), err, sizeof err);
	CHECK(w != NULL);
	CHECK_INT(greywl_rcpt(w, "1\\1"), 1);
	greywl_free(w);
	static const char ok_re2[] = "/^x{,3}y{6}z{1,4}[{]{2}$/\n";
	w = greywl_parse(ok_re2, strlen(ok_re2), err, sizeof err);
	CHECK(w != NULL);
	CHECK_INT(greywl_rcpt(w, "xxyyyyyyzz{{"), 1);
	CHECK_INT(greywl_rcpt(w, "xxxxyyyyyyzz{{"), 0);
	greywl_free(w);
	/* The regexes of a file add up: six of the costliest one allowed
	 * alone ((\b){900}: ~40 MB compiled) are refused at the sixth. */
	{
		char many[256] = "";
		for (int i = 0; i < 6; i++)
			strcat(many, "/x(\\b){900}/\n");
		w = greywl_parse(many, strlen(many), err, sizeof err);
		CHECK(w == NULL);
		greywl_free(w);
		if (!w)
			CHECK(strstr(err, "line 6: regex too complex, with the regexes before it") != NULL);
		w = greywl_parse(many, strlen(many) / 6 * 5, err, sizeof err);
		CHECK(w != NULL);
		greywl_free(w);
	}
	/* A line with a NUL is ignored, not cut short at the NUL. */
	w = greywl_parse("10.0.0.1\0junk\n", 14, err, sizeof err);
	CHECK(w != NULL);
	CHECK_INT(greywl_client(w, "10.0.0.1", NULL), 0);
	greywl_free(w);
	/* net_addr_match (also smtpd_upstream_proxy_clients): digits only. */
	CHECK_INT(net_addr_match("192.0.2.1", "10.0.0.0/"), 0);
	CHECK_INT(net_addr_match("192.0.2.1", "10.0.0.0/ 0"), 0);
	CHECK_INT(net_addr_match("192.0.2.1", "10.0.0.0/+0"), 0);
	CHECK_INT(net_addr_match("192.0.2.1", "0.0.0.0/0"), 1);
	CHECK_INT(net_addr_match("192.0.2.1", "192.0.2.0/24"), 1);
	CHECK_INT(net_addr_match("192.0.2.1", "192.0.2.0/33"), 0);
	CHECK_INT(net_addr_match("2001:db8::1", "2001:db8::/32"), 1);
	CHECK_INT(net_addr_match("2001:db8::1", "2001:db8::/"), 0);
}

static const char pd_req[] =
	"request=smtpd_access_policy\r\n"
	"protocol_state=RCPT\n"
	"client_address=192.0.2.1\n"
	"client_name=mx.example.net\n"
	"sender=\n"
	"recipient=bob@example.com\n"
	"unknown_attr=x=y\n"
	"\n"
	"request=next\n";

/* test_policyd_parse - whole, byte by byte, and refusals. */
TEST(test_policyd_parse)
{
	struct policyd_req r;
	size_t used = 0, len = strlen(pd_req);
	size_t end = strstr(pd_req, "\n\n") - pd_req + 2;
	CHECK_INT(policyd_parse(pd_req, len, &r, &used), PARSE_OK);
	CHECK_INT(used, end);
	CHECK_STR(r.request, "smtpd_access_policy");
	CHECK_STR(r.protocol_state, "RCPT");
	CHECK_STR(r.client_address, "192.0.2.1");
	CHECK_STR(r.client_name, "mx.example.net");
	CHECK_STR(r.sender, "");
	CHECK_STR(r.recipient, "bob@example.com");
	for (size_t i = 0; i < end; i++)
		CHECK_INT(policyd_parse(pd_req, i, &r, &used), PARSE_AGAIN);
	CHECK_INT(policyd_parse("novalue\n\n", 10, &r, &used), PARSE_BAD);
	CHECK_INT(policyd_parse("=x\n\n", 4, &r, &used), PARSE_BAD);
	CHECK_INT(policyd_parse("a=b\0c\n\n", 7, &r, &used), PARSE_BAD);
	char big[POLICYD_MAX_REQUEST + 10];
	memset(big, 'a', sizeof big);
	CHECK_INT(policyd_parse(big, sizeof big, &r, &used), PARSE_TOO_LONG);
	big[0] = 's';
	memcpy(big, "sender=", 7);
	big[700] = '\n';
	big[701] = '\n';
	CHECK_INT(policyd_parse(big, 702, &r, &used), PARSE_BAD);  /* value too long */
	/* Answers. */
	char out[600];
	struct grey_result g = { .outcome = GREY_DEFER, .wait = 42 };
	policyd_action(&g, "b@example.com", out, sizeof out);
	CHECK_STR(out, "action=DEFER_IF_PERMIT 4.7.1 <b@example.com>: greylisted, try again in 42 seconds");
	g.outcome = GREY_WHITELISTED;
	policyd_action(&g, "b@example.com", out, sizeof out);
	CHECK_STR(out, "action=DUNNO");
	g.outcome = GREY_FAIL;
	policyd_action(&g, "b@example.com", out, sizeof out);
	CHECK_STR(out, "action=DUNNO");
	g.tempfail = 1;
	policyd_action(&g, "b@example.com", out, sizeof out);
	CHECK(!strncmp(out, "action=DEFER_IF_PERMIT 4.3.0", 28));
	/* Over quota or full: deferred, never DUNNO. */
	struct grey_result q = { .outcome = GREY_LIMIT };
	policyd_action(&q, "b@example.com", out, sizeof out);
	CHECK_STR(out, "action=DEFER_IF_PERMIT 4.7.1 <b@example.com>: too many new greylisting entries "
		       "from your network, try again later");
	q.full = 1;
	policyd_action(&q, "b@example.com", out, sizeof out);
	CHECK(!strncmp(out, "action=DEFER_IF_PERMIT 4.7.1", 28));
}

int main(void)
{
	RUN(test_normalize);
	RUN(test_netmask);
	RUN(test_keys);
	RUN(test_states);
	RUN(test_awl);
	RUN(test_wal);
	RUN(test_quota);
	RUN(test_evict);
	RUN(test_reopen);
	RUN(test_whitelist);
	RUN(test_policyd_parse);
	return t_done();
}
