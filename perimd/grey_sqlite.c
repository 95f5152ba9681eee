/*
 * grey_sqlite.c - the greylist store in SQLite, WAL mode.
 *
 * Invariants: one connection per worker thread (SQLITE_OPEN_NOMUTEX: it is
 * never shared), statements prepared once per connection. Readers never
 * block the writer in WAL mode; concurrent writers wait on busy_timeout.
 * A decision is one statement: an upsert whose RETURNING clause gives the
 * triplet's new state, computed from its old row (SQLite evaluates every
 * SET expression on the old values), plus one indexed read of the
 * network's auto-whitelist row. synchronous = NORMAL: in WAL mode a crash
 * of the machine may lose the last commits, never corrupt the file; losing
 * a greylist entry only greylists its triplet once more.
 *
 * Schema (times are milliseconds since the epoch):
 *   grey(k BLOB(16) key, first, last, prev, passed, expires)
 *     prev = 0 when the row (re)started at `first`; expires = first +
 *     max_age while waiting, last pass + retention once passed.
 *   awl(k BLOB(16) key, cnt, last, expires)
 * The grey table has no index on expires: every decision moves `last` and
 * often `expires`, and keeping a second b-tree in step cost a third of the
 * decision rate. Expiry instead sweeps the table in 256 key ranges (keys
 * are hashes, so each range is 1/256 of the rows), one short statement
 * each, so no sweep holds the write lock for long.
 */
#include "grey.h"
#include "log.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sq_store {
	struct grey_store base;
	sqlite3 *db;
	sqlite3_stmt *upsert, *awl_get, *awl_pass, *del_grey, *del_awl;
	int sweep;     /* next key range of the expiry sweep (0..255) */
};

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS grey (k BLOB PRIMARY KEY, first INTEGER NOT NULL,"
	" last INTEGER NOT NULL, prev INTEGER NOT NULL, passed INTEGER NOT NULL,"
	" expires INTEGER NOT NULL) WITHOUT ROWID;"
	"DROP INDEX IF EXISTS grey_expires;"
	"CREATE TABLE IF NOT EXISTS awl (k BLOB PRIMARY KEY, cnt INTEGER NOT NULL,"
	" last INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;"
	"CREATE INDEX IF NOT EXISTS awl_expires ON awl(expires);";

/* ?1 key, ?2 now, ?3 delay, ?4 max_age, ?5 retention. A row past its
 * expiry starts over; a waiting row passes once delay has elapsed. */
static const char sql_upsert[] =
	"INSERT INTO grey (k, first, last, prev, passed, expires) VALUES (?1, ?2, ?2, 0, 0, ?2 + ?4)"
	" ON CONFLICT (k) DO UPDATE SET"
	" first = CASE WHEN expires <= ?2 THEN ?2 ELSE first END,"
	" prev = CASE WHEN expires <= ?2 THEN 0 ELSE last END,"
	" passed = CASE WHEN expires <= ?2 THEN 0 WHEN passed = 1 OR ?2 - first >= ?3 THEN 1 ELSE 0 END,"
	" expires = CASE WHEN expires <= ?2 THEN ?2 + ?4"
	"  WHEN passed = 1 OR ?2 - first >= ?3 THEN ?2 + ?5 ELSE expires END,"
	" last = ?2"
	" RETURNING first, prev, passed";
static const char sql_awl_get[] = "SELECT cnt FROM awl WHERE k = ?1 AND expires > ?2";
/* ?1 key, ?2 now, ?3 interval, ?4 retention. */
static const char sql_awl_pass[] =
	"INSERT INTO awl (k, cnt, last, expires) VALUES (?1, 1, ?2, ?2 + ?4)"
	" ON CONFLICT (k) DO UPDATE SET"
	" cnt = CASE WHEN expires <= ?2 THEN 1 WHEN ?2 - last >= ?3 THEN cnt + 1 ELSE cnt END,"
	" last = CASE WHEN expires <= ?2 OR ?2 - last >= ?3 THEN ?2 ELSE last END,"
	" expires = ?2 + ?4"
	" RETURNING cnt";
/* ?1 now, ?2 range start, ?3 range end (keys are 16-byte blobs). */
static const char sql_del_grey[] = "DELETE FROM grey WHERE k >= ?2 AND k < ?3 AND expires <= ?1";
static const char sql_del_awl[] = "DELETE FROM awl WHERE expires <= ?1 LIMIT ?2";

/* sq_err - the connection's last error into err; returns -1. */
static int sq_err(struct sq_store *s, const char *what, char *err, size_t errlen)
{
	snprintf(err, errlen, "sqlite: %s: %s", what, sqlite3_errmsg(s->db));
	return -1;
}

/* sq_check - the decision statement and the auto-whitelist read. */
static int sq_check(struct grey_store *gs, const struct grey_query *q, struct grey_answer *a,
		    char *err, size_t errlen)
{
	struct sq_store *s = (struct sq_store *)gs;
	sqlite3_stmt *st = s->upsert;
	sqlite3_bind_blob(st, 1, q->triplet.b, sizeof q->triplet.b, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, q->now);
	sqlite3_bind_int64(st, 3, q->delay);
	sqlite3_bind_int64(st, 4, q->max_age);
	sqlite3_bind_int64(st, 5, q->retention);
	int rc = sqlite3_step(st);
	if (rc != SQLITE_ROW) {
		sqlite3_reset(st);
		return sq_err(s, "upsert", err, errlen);
	}
	a->first = sqlite3_column_int64(st, 0);
	int64_t prev = sqlite3_column_int64(st, 1);
	int passed = sqlite3_column_int(st, 2);
	a->now = q->now;
	a->state = passed ? GREY_PASS : prev == 0 ? GREY_NEW : GREY_EARLY;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return sq_err(s, "upsert", err, errlen);
	st = s->awl_get;
	sqlite3_bind_blob(st, 1, q->net.b, sizeof q->net.b, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, q->now);
	rc = sqlite3_step(st);
	a->awl_count = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return sq_err(s, "awl read", err, errlen);
	return 0;
}

/* sq_awl_pass - count one accepted message from a network. */
static int sq_awl_pass(struct grey_store *gs, const struct grey_key *net, int64_t now,
		       int64_t interval, int64_t retention, int64_t *count, char *err, size_t errlen)
{
	struct sq_store *s = (struct sq_store *)gs;
	sqlite3_stmt *st = s->awl_pass;
	sqlite3_bind_blob(st, 1, net->b, sizeof net->b, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int64(st, 3, interval);
	sqlite3_bind_int64(st, 4, retention);
	int rc = sqlite3_step(st);
	*count = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	while (rc == SQLITE_ROW)
		rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return sq_err(s, "awl upsert", err, errlen);
	return 0;
}

/* sq_expire - expire key ranges of grey, in turn, until `limit` rows went
 * or every range was visited once; then one bounded round over awl. */
static int sq_expire(struct grey_store *gs, int64_t now, int limit, char *err, size_t errlen)
{
	struct sq_store *s = (struct sq_store *)gs;
	int total = 0;
	for (int i = 0; i < 256 && total < limit; i++) {
		unsigned char lo[1] = { (unsigned char)s->sweep }, hi[17];
		/* The end of range b is b+1; after 0xff, a blob above every key. */
		size_t hl = 1;
		if (s->sweep == 255) {
			memset(hi, 0xff, sizeof hi);
			hl = sizeof hi;
		} else {
			hi[0] = (unsigned char)(s->sweep + 1);
		}
		s->sweep = (s->sweep + 1) % 256;
		sqlite3_stmt *st = s->del_grey;
		sqlite3_bind_int64(st, 1, now);
		sqlite3_bind_blob(st, 2, lo, 1, SQLITE_TRANSIENT);
		sqlite3_bind_blob(st, 3, hi, (int)hl, SQLITE_TRANSIENT);
		int rc = sqlite3_step(st);
		sqlite3_reset(st);
		if (rc != SQLITE_DONE)
			return sq_err(s, "expire", err, errlen);
		total += sqlite3_changes(s->db);
	}
	sqlite3_bind_int64(s->del_awl, 1, now);
	sqlite3_bind_int(s->del_awl, 2, limit);
	int rc = sqlite3_step(s->del_awl);
	sqlite3_reset(s->del_awl);
	if (rc != SQLITE_DONE)
		return sq_err(s, "expire", err, errlen);
	int n = sqlite3_changes(s->db);
	return n > total ? n : total;
}

/* sq_close - finalize and close. */
static void sq_close(struct grey_store *gs)
{
	struct sq_store *s = (struct sq_store *)gs;
	sqlite3_finalize(s->upsert);
	sqlite3_finalize(s->awl_get);
	sqlite3_finalize(s->awl_pass);
	sqlite3_finalize(s->del_grey);
	sqlite3_finalize(s->del_awl);
	sqlite3_close(s->db);
	free(s);
}

static const struct grey_store_ops sq_ops = {
	.check = sq_check, .awl_pass = sq_awl_pass, .expire = sq_expire, .close = sq_close,
};

/* grey_sqlite_open - open (creating) the database in WAL mode. */
struct grey_store *grey_sqlite_open(const char *path, char *err, size_t errlen)
{
	struct sq_store *s = xcalloc(1, sizeof *s);
	s->base.ops = &sq_ops;
	int rc = sqlite3_open_v2(path, &s->db,
				 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "sqlite: %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
		sqlite3_close(s->db);
		free(s);
		return NULL;
	}
	sqlite3_busy_timeout(s->db, 5000);
	if (sqlite3_exec(s->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;", NULL, NULL,
			 NULL) != SQLITE_OK ||
	    sqlite3_exec(s->db, schema, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v3(s->db, sql_upsert, -1, SQLITE_PREPARE_PERSISTENT, &s->upsert, NULL) ||
	    sqlite3_prepare_v3(s->db, sql_awl_get, -1, SQLITE_PREPARE_PERSISTENT, &s->awl_get, NULL) ||
	    sqlite3_prepare_v3(s->db, sql_awl_pass, -1, SQLITE_PREPARE_PERSISTENT, &s->awl_pass, NULL) ||
	    sqlite3_prepare_v3(s->db, sql_del_grey, -1, SQLITE_PREPARE_PERSISTENT, &s->del_grey, NULL) ||
	    sqlite3_prepare_v3(s->db, sql_del_awl, -1, SQLITE_PREPARE_PERSISTENT, &s->del_awl, NULL)) {
		snprintf(err, errlen, "sqlite: %s: %s", path, sqlite3_errmsg(s->db));
		sq_close(&s->base);
		return NULL;
	}
	return &s->base;
}
