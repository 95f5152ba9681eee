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
 *
 * Abuse bounds: a triplet seen for the first time is inserted only after
 * its client network's quota (gnet: new triplets counted per window of
 * new_interval; `over_at` = the last refusal over quota) and the size bound
 * (grey_meta 'rows', kept exact by triggers, also when someone deletes
 * rows by hand) allow it, all in one IMMEDIATE transaction. grey.net (the
 * network key, NULL in rows older than the column) is indexed: it never
 * changes after the insert, so the index costs nothing per decision. gnet
 * has no secondary index: every new triplet writes its row, and two more
 * b-trees made that path 1.6 times slower; its expiry and the eviction of
 * over-quota networks scan it instead (one row per network active within
 * an interval). Under
 * the size bound, eviction takes unpassed rows only: of over-quota
 * networks, then never retried ones, then any, from the new key onwards
 * (keys are hashes: an unbiased sample).
 *
 * A database file deleted or replaced under perimd: before use, at most
 * once a second, the path's st_dev/st_ino are compared with the file the
 * connection opened; on a change the connection is closed and the path
 * opened again (created when missing). The first connection to notice
 * removes the -wal and -shm files left at the path (they belong to the
 * old file; applied to a new one they would corrupt it); the others, and
 * the stale connections closing (with SQLITE_FCNTL_PERSIST_WAL, so their
 * close never deletes the new file's WAL by name), leave them alone.
 */
#include "grey.h"
#include "clock.h"
#include "conf.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SQ_STAT_PERIOD 1000 /* ms between checks of the path */
#define SQ_EVICT_MAX 10000  /* rows evicted for one insert at most */

struct sq_store {
	struct grey_store base;
	sqlite3 *db;
	char *path;
	sqlite3_stmt *begin, *commit, *rollback, *upd, *ins, *awl_get, *awl_pass, *del_grey, *del_awl,
	    *del_gnet, *q_up, *q_over, *rows, *ev_over, *ev_from, *ev_below;
	int sweep; /* next key range of the expiry sweep (0..255) */
	int watch; /* a file path: its identity is watched */
	dev_t dev;
	ino_t ino;
	int64_t stat_at; /* monotonic ms of the next look at the path */
};

/* The identity of the file last opened at a path, process-wide: a path
 * that no longer leads to it was deleted or replaced. */
static pthread_mutex_t sq_file_mu = PTHREAD_MUTEX_INITIALIZER;
static char sq_file_path[4096];
static dev_t sq_file_dev;
static ino_t sq_file_ino;

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS grey (k BLOB PRIMARY KEY, first INTEGER NOT NULL,"
    " last INTEGER NOT NULL, prev INTEGER NOT NULL, passed INTEGER NOT NULL,"
    " expires INTEGER NOT NULL, net BLOB) WITHOUT ROWID;"
    "DROP INDEX IF EXISTS grey_expires;"
    "CREATE TABLE IF NOT EXISTS awl (k BLOB PRIMARY KEY, cnt INTEGER NOT NULL,"
    " last INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS awl_expires ON awl(expires);"
    "CREATE TABLE IF NOT EXISTS gnet (k BLOB PRIMARY KEY, start INTEGER NOT NULL,"
    " cnt INTEGER NOT NULL, over_at INTEGER NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS grey_meta (name TEXT PRIMARY KEY, v INTEGER NOT NULL);";

/* After the net column exists (older files get it by ALTER TABLE). */
static const char schema2[] = "CREATE INDEX IF NOT EXISTS grey_net ON grey(net);"
			      "INSERT OR IGNORE INTO grey_meta SELECT 'rows', count(*) FROM grey;"
			      "CREATE TRIGGER IF NOT EXISTS grey_rows_ins AFTER INSERT ON grey BEGIN"
			      " UPDATE grey_meta SET v = v + 1 WHERE name = 'rows'; END;"
			      "CREATE TRIGGER IF NOT EXISTS grey_rows_del AFTER DELETE ON grey BEGIN"
			      " UPDATE grey_meta SET v = v - 1 WHERE name = 'rows'; END;";

/* ?1 key, ?2 now, ?3 delay, ?4 max_age, ?5 retention. A row past its
 * expiry starts over; a waiting row passes once delay has elapsed. */
static const char sql_upd[] =
    "UPDATE grey SET"
    " first = CASE WHEN expires <= ?2 THEN ?2 ELSE first END,"
    " prev = CASE WHEN expires <= ?2 THEN 0 ELSE last END,"
    " passed = CASE WHEN expires <= ?2 THEN 0 WHEN passed = 1 OR ?2 - first >= ?3 THEN 1 ELSE 0 END,"
    " expires = CASE WHEN expires <= ?2 THEN ?2 + ?4"
    "  WHEN passed = 1 OR ?2 - first >= ?3 THEN ?2 + ?5 ELSE expires END,"
    " last = ?2"
    " WHERE k = ?1 RETURNING first, prev, passed";
/* ?1 key, ?2 now, ?3 max_age, ?4 net. */
static const char sql_ins[] =
    "INSERT INTO grey (k, first, last, prev, passed, expires, net) VALUES (?1, ?2, ?2, 0, 0, ?2 + ?3, ?4)";
/* ?1 net, ?2 now, ?3 interval, ?4 max_age: count one new triplet in the
 * network's window (a window older than interval starts over). */
static const char sql_q_up[] =
    "INSERT INTO gnet (k, start, cnt, over_at, expires) VALUES (?1, ?2, 1, 0, ?2 + ?3)"
    " ON CONFLICT (k) DO UPDATE SET"
    " cnt = CASE WHEN ?2 - start >= ?3 THEN 1 ELSE cnt + 1 END,"
    " start = CASE WHEN ?2 - start >= ?3 THEN ?2 ELSE start END,"
    " expires = max(CASE WHEN ?2 - start >= ?3 THEN ?2 ELSE start END + ?3, over_at + ?4)"
    " RETURNING cnt";
/* ?1 net, ?2 now, ?3 max_age: the network went over its quota. */
static const char sql_q_over[] = "UPDATE gnet SET over_at = ?2, expires = max(expires, ?2 + ?3) WHERE k = ?1";
static const char sql_rows[] = "SELECT v FROM grey_meta WHERE name = 'rows'";
/* ?1 over quota since, ?2 limit. */
static const char sql_ev_over[] =
    "DELETE FROM grey WHERE k IN (SELECT g.k FROM gnet q JOIN grey g ON g.net = q.k"
    " WHERE q.over_at > 0 AND q.over_at > ?1 AND g.passed = 0 LIMIT ?2)";
/* ?1 start key, ?2 limit, ?3 1: any unpassed row, 0: never retried. */
static const char sql_ev_from[] =
    "DELETE FROM grey WHERE k IN (SELECT k FROM grey WHERE k >= ?1 AND passed = 0"
    " AND (?3 OR prev = 0) LIMIT ?2)";
static const char sql_ev_below[] =
    "DELETE FROM grey WHERE k IN (SELECT k FROM grey WHERE k < ?1 AND passed = 0"
    " AND (?3 OR prev = 0) LIMIT ?2)";
static const char sql_awl_get[] = "SELECT cnt FROM awl WHERE k = ?1 AND expires > ?2";
/* ?1 key, ?2 now, ?3 interval, ?4 retention. */
static const char sql_awl_pass[] =
    "INSERT INTO awl (k, cnt, last, expires) VALUES (?1, 1, ?2, ?2 + ?4)"
    " ON CONFLICT (k) DO UPDATE SET"
    " cnt = CASE WHEN expires <= ?2 THEN 1 WHEN ?2 - last >= ?3 THEN cnt + 1 ELSE cnt END,"
    " last = CASE WHEN expires <= ?2 OR ?2 - last >= ?3 THEN ?2 ELSE last END,"
    " expires = ?2 + ?4"
    " RETURNING cnt, MIN(last + ?3, expires) - ?2";
/* ?1 now, ?2 range start, ?3 range end (keys are 16-byte blobs). */
static const char sql_del_grey[] = "DELETE FROM grey WHERE k >= ?2 AND k < ?3 AND expires <= ?1";
static const char sql_del_awl[] = "DELETE FROM awl WHERE expires <= ?1 LIMIT ?2";
static const char sql_del_gnet[] = "DELETE FROM gnet WHERE expires <= ?1 LIMIT ?2";

/* sq_err - the connection's last error into err; returns -1. */
static int sq_err(struct sq_store *s, const char *what, char *err, size_t errlen)
{
	snprintf(err, errlen, "sqlite: %s: %s", what, s->db ? sqlite3_errmsg(s->db) : "not open");
	return -1;
}

/* run - step a statement to its end and reset it; SQLITE_DONE or the error. */
static int run(sqlite3_stmt *st)
{
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	sqlite3_reset(st);
	return rc;
}

/* first_int - step a statement, its first column of the first row into
 * *v (left alone when no row); reset. SQLITE_DONE or the error. */
static int first_int(sqlite3_stmt *st, int64_t *v)
{
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*v = sqlite3_column_int64(st, 0);
	while (rc == SQLITE_ROW)
		rc = sqlite3_step(st);
	sqlite3_reset(st);
	return rc;
}

/* sq_db_close - finalize the statements and close the connection. */
static void sq_db_close(struct sq_store *s)
{
	sqlite3_stmt **sts[] = { &s->begin,   &s->commit,   &s->rollback, &s->upd,
				 &s->ins,     &s->awl_get,  &s->awl_pass, &s->del_grey,
				 &s->del_awl, &s->del_gnet, &s->q_up,     &s->q_over,
				 &s->rows,    &s->ev_over,  &s->ev_from,  &s->ev_below };
	for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++) {
		sqlite3_finalize(*sts[i]);
		*sts[i] = NULL;
	}
	sqlite3_close(s->db);
	s->db = NULL;
}

/* has_net_column - 1 when grey has the net column (files made before it
 * do not), 0 when not, -1 on error. */
static int has_net_column(sqlite3 *db)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info('grey') WHERE name = 'net'", -1,
			       &st, NULL) != SQLITE_OK)
		return -1;
	int64_t n = -1;
	int rc = first_int(st, &n);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? n > 0 : -1;
}

/* sq_db_open - open (creating) the file, WAL mode, the schema, the
 * statements; 0 or -1 with err. Called with sq_file_mu held for a file. */
static int sq_db_open(struct sq_store *s, char *err, size_t errlen)
{
	const char *path = s->path;
	int rc = sqlite3_open_v2(path, &s->db,
				 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		snprintf(err, errlen, "sqlite: %s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
		sqlite3_close(s->db);
		s->db = NULL;
		return -1;
	}
	sqlite3_busy_timeout(s->db, 5000);
	int hn = -1;
	if (sqlite3_exec(s->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;", NULL, NULL, NULL) !=
		SQLITE_OK ||
	    sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	if (sqlite3_exec(s->db, schema, NULL, NULL, NULL) != SQLITE_OK || (hn = has_net_column(s->db)) < 0 ||
	    (!hn && sqlite3_exec(s->db, "ALTER TABLE grey ADD COLUMN net BLOB", NULL, NULL, NULL) != SQLITE_OK) ||
	    sqlite3_exec(s->db, schema2, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "sqlite: %s: %s", path, sqlite3_errmsg(s->db));
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		sq_db_close(s);
		return -1;
	}
	struct {
		sqlite3_stmt **st;
		const char *sql;
	} const stmts[] = {
		{ &s->begin, "BEGIN IMMEDIATE" },
		{ &s->commit, "COMMIT" },
		{ &s->rollback, "ROLLBACK" },
		{ &s->upd, sql_upd },
		{ &s->ins, sql_ins },
		{ &s->awl_get, sql_awl_get },
		{ &s->awl_pass, sql_awl_pass },
		{ &s->del_grey, sql_del_grey },
		{ &s->del_awl, sql_del_awl },
		{ &s->del_gnet, sql_del_gnet },
		{ &s->q_up, sql_q_up },
		{ &s->q_over, sql_q_over },
		{ &s->rows, sql_rows },
		{ &s->ev_over, sql_ev_over },
		{ &s->ev_from, sql_ev_from },
		{ &s->ev_below, sql_ev_below },
	};
	for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
		if (sqlite3_prepare_v3(s->db, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT, stmts[i].st,
				       NULL) != SQLITE_OK)
			goto fail;
	return 0;
fail:
	snprintf(err, errlen, "sqlite: %s: %s", path, sqlite3_errmsg(s->db));
	sq_db_close(s);
	return -1;
}

/* sq_file_open - open the file at s->path, noting its identity; when the
 * path no longer leads to the file this process had open there, first
 * remove the old file's -wal and -shm. Returns 0, or -1 with err. */
static int sq_file_open(struct sq_store *s, int *replaced, char *err, size_t errlen)
{
	struct stat sb;
	char side[4200];
	*replaced = 0;
	pthread_mutex_lock(&sq_file_mu);
	int have = stat(s->path, &sb) == 0;
	if (sq_file_path[0] && !strcmp(sq_file_path, s->path) &&
	    (!have || sb.st_dev != sq_file_dev || sb.st_ino != sq_file_ino)) {
		*replaced = 1;
		snprintf(side, sizeof side, "%s-wal", s->path);
		unlink(side);
		snprintf(side, sizeof side, "%s-shm", s->path);
		unlink(side);
	}
	int rc = sq_db_open(s, err, errlen);
	if (!rc && stat(s->path, &sb) == 0) {
		s->dev = sb.st_dev;
		s->ino = sb.st_ino;
		snprintf(sq_file_path, sizeof sq_file_path, "%s", s->path);
		sq_file_dev = sb.st_dev;
		sq_file_ino = sb.st_ino;
	}
	pthread_mutex_unlock(&sq_file_mu);
	s->stat_at = clock_ms() + SQ_STAT_PERIOD;
	return rc;
}

/* sq_fresh - before use: reopen when the file was deleted or replaced
 * (looked at once a second at most), or when an earlier reopen failed. */
static int sq_fresh(struct sq_store *s, char *err, size_t errlen)
{
	if (!s->watch)
		return s->db ? 0 : sq_err(s, "open", err, errlen);
	int64_t now = clock_ms();
	if (now < s->stat_at)
		return s->db ? 0 : sq_err(s, s->path, err, errlen);
	s->stat_at = now + SQ_STAT_PERIOD;
	struct stat sb;
	if (s->db && stat(s->path, &sb) == 0 && sb.st_dev == s->dev && sb.st_ino == s->ino)
		return 0;
	if (s->db) {
		/* Its close must not delete the WAL at the path by name: that
		 * may be the new file's by now. */
		int one = 1;
		sqlite3_file_control(s->db, "main", SQLITE_FCNTL_PERSIST_WAL, &one);
		sq_db_close(s);
	}
	int replaced;
	if (sq_file_open(s, &replaced, err, errlen) < 0)
		return -1;
	if (replaced)
		log_warn("greylist database %s was deleted or replaced: opened it anew", s->path);
	return 0;
}

/* evict - make room for need rows: unpassed ones only, of over-quota
 * networks first, then never retried ones, then any; returns how many went,
 * or -1. */
static int64_t evict(struct sq_store *s, const struct grey_query *q, int64_t need)
{
	int64_t done = 0;
	sqlite3_bind_int64(s->ev_over, 1, q->now - q->max_age);
	sqlite3_bind_int64(s->ev_over, 2, need);
	if (run(s->ev_over) != SQLITE_DONE)
		return -1;
	done += sqlite3_changes(s->db);
	for (int any = 0; any < 2 && done < need; any++) {
		sqlite3_stmt *sts[2] = { s->ev_from, s->ev_below };
		for (int i = 0; i < 2 && done < need; i++) {
			sqlite3_bind_blob(sts[i], 1, q->triplet.b, sizeof q->triplet.b, SQLITE_STATIC);
			sqlite3_bind_int64(sts[i], 2, need - done);
			sqlite3_bind_int(sts[i], 3, any);
			if (run(sts[i]) != SQLITE_DONE)
				return -1;
			done += sqlite3_changes(s->db);
		}
	}
	return done;
}

/* sq_new - a triplet not in the store: the network's quota, the size
 * bound, then the insert. In the caller's transaction. */
static int sq_new(struct sq_store *s, const struct grey_query *q, struct grey_answer *a, char *err,
		  size_t errlen)
{
	a->first = q->now;
	if (q->new_limit > 0) {
		int64_t cnt = 0;
		sqlite3_bind_blob(s->q_up, 1, q->net.b, sizeof q->net.b, SQLITE_STATIC);
		sqlite3_bind_int64(s->q_up, 2, q->now);
		sqlite3_bind_int64(s->q_up, 3, q->new_interval);
		sqlite3_bind_int64(s->q_up, 4, q->max_age);
		if (first_int(s->q_up, &cnt) != SQLITE_DONE)
			return sq_err(s, "quota", err, errlen);
		if (cnt > q->new_limit) {
			sqlite3_bind_blob(s->q_over, 1, q->net.b, sizeof q->net.b, SQLITE_STATIC);
			sqlite3_bind_int64(s->q_over, 2, q->now);
			sqlite3_bind_int64(s->q_over, 3, q->max_age);
			if (run(s->q_over) != SQLITE_DONE)
				return sq_err(s, "quota", err, errlen);
			a->state = GREY_OVER_QUOTA;
			return 0;
		}
	}
	if (q->max_entries > 0) {
		int64_t rows = 0;
		if (first_int(s->rows, &rows) != SQLITE_DONE)
			return sq_err(s, "row count", err, errlen);
		if (rows >= q->max_entries) {
			/* Room for this one and a hundredth more: evictions come
			 * in batches, not one per new triplet. */
			int64_t need = rows - q->max_entries + 1 + q->max_entries / 100;
			if (need > SQ_EVICT_MAX)
				need = SQ_EVICT_MAX;
			int64_t n = evict(s, q, need);
			if (n < 0)
				return sq_err(s, "evict", err, errlen);
			a->evicted = n;
			if (rows - n >= q->max_entries) {
				a->state = GREY_FULL;
				return 0;
			}
		}
	}
	sqlite3_bind_blob(s->ins, 1, q->triplet.b, sizeof q->triplet.b, SQLITE_STATIC);
	sqlite3_bind_int64(s->ins, 2, q->now);
	sqlite3_bind_int64(s->ins, 3, q->max_age);
	sqlite3_bind_blob(s->ins, 4, q->net.b, sizeof q->net.b, SQLITE_STATIC);
	if (run(s->ins) != SQLITE_DONE)
		return sq_err(s, "insert", err, errlen);
	a->state = GREY_NEW;
	return 0;
}

/* sq_check - the decision (one IMMEDIATE transaction) and the
 * auto-whitelist read. */
static int sq_check(struct grey_store *gs, const struct grey_query *q, struct grey_answer *a, char *err,
		    size_t errlen)
{
	struct sq_store *s = (struct sq_store *)gs;
	if (sq_fresh(s, err, errlen) < 0)
		return -1;
	memset(a, 0, sizeof *a);
	a->now = q->now;
	if (run(s->begin) != SQLITE_DONE)
		return sq_err(s, "begin", err, errlen);
	sqlite3_stmt *st = s->upd;
	sqlite3_bind_blob(st, 1, q->triplet.b, sizeof q->triplet.b, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, q->now);
	sqlite3_bind_int64(st, 3, q->delay);
	sqlite3_bind_int64(st, 4, q->max_age);
	sqlite3_bind_int64(st, 5, q->retention);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		a->first = sqlite3_column_int64(st, 0);
		int64_t prev = sqlite3_column_int64(st, 1);
		int passed = sqlite3_column_int(st, 2);
		a->state = passed ? GREY_PASS : prev == 0 ? GREY_NEW : GREY_EARLY;
		rc = run(st);
	} else {
		sqlite3_reset(st);
		if (rc == SQLITE_DONE && sq_new(s, q, a, err, errlen) < 0)
			goto fail;
	}
	if (rc != SQLITE_DONE) {
		sq_err(s, "update", err, errlen);
		goto fail;
	}
	st = s->awl_get;
	sqlite3_bind_blob(st, 1, q->net.b, sizeof q->net.b, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, q->now);
	if (first_int(st, &a->awl_count) != SQLITE_DONE) {
		sq_err(s, "awl read", err, errlen);
		goto fail;
	}
	if (run(s->commit) != SQLITE_DONE) {
		sq_err(s, "commit", err, errlen);
		goto fail;
	}
	return 0;
fail:
	run(s->rollback);
	return -1;
}

/* sq_awl_pass - count one accepted message from a network. */
static int sq_awl_pass(struct grey_store *gs, const struct grey_key *net, int64_t now, int64_t interval,
		       int64_t retention, int64_t *count, int64_t *wait, char *err, size_t errlen)
{
	struct sq_store *s = (struct sq_store *)gs;
	*count = 0;
	*wait = 0;
	if (sq_fresh(s, err, errlen) < 0)
		return -1;
	sqlite3_stmt *st = s->awl_pass;
	sqlite3_bind_blob(st, 1, net->b, sizeof net->b, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now);
	sqlite3_bind_int64(st, 3, interval);
	sqlite3_bind_int64(st, 4, retention);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*count = sqlite3_column_int64(st, 0);
		*wait = sqlite3_column_int64(st, 1);
	}
	while (rc == SQLITE_ROW)
		rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return sq_err(s, "awl upsert", err, errlen);
	return 0;
}

/* sq_expire - expire key ranges of grey, in turn, until `limit` rows went
 * or every range was visited once; then one bounded round over awl and
 * one over gnet. */
static int sq_expire(struct grey_store *gs, int64_t now, int limit, char *err, size_t errlen)
{
	struct sq_store *s = (struct sq_store *)gs;
	if (sq_fresh(s, err, errlen) < 0)
		return -1;
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
		if (run(st) != SQLITE_DONE)
			return sq_err(s, "expire", err, errlen);
		total += sqlite3_changes(s->db);
	}
	int n = 0;
	sqlite3_stmt *sts[2] = { s->del_awl, s->del_gnet };
	for (int i = 0; i < 2; i++) {
		sqlite3_bind_int64(sts[i], 1, now);
		sqlite3_bind_int(sts[i], 2, limit);
		if (run(sts[i]) != SQLITE_DONE)
			return sq_err(s, "expire", err, errlen);
		if (sqlite3_changes(s->db) > n)
			n = sqlite3_changes(s->db);
	}
	return n > total ? n : total;
}

/* sq_close - finalize and close. */
static void sq_close(struct grey_store *gs)
{
	struct sq_store *s = (struct sq_store *)gs;
	sq_db_close(s);
	free(s->path);
	free(s);
}

static const struct grey_store_ops sq_ops = {
	.check = sq_check,
	.awl_pass = sq_awl_pass,
	.expire = sq_expire,
	.close = sq_close,
};

/* grey_sqlite_open - open (creating) the database in WAL mode. */
struct grey_store *grey_sqlite_open(const char *path, char *err, size_t errlen)
{
	struct sq_store *s = xcalloc(1, sizeof *s);
	s->base.ops = &sq_ops;
	s->path = xstrdup(path);
	/* ":memory:", "" (a temporary file) and URIs have no file to watch. */
	s->watch = path[0] && strcmp(path, ":memory:") && strncmp(path, "file:", 5);
	int replaced = 0, rc;
	if (s->watch)
		rc = sq_file_open(s, &replaced, err, errlen);
	else
		rc = sq_db_open(s, err, errlen);
	if (rc < 0) {
		free(s->path);
		free(s);
		return NULL;
	}
	if (replaced)
		log_warn("greylist database %s was deleted or replaced: opened it anew", s->path);
	return &s->base;
}

/* grey_sqlite_check - the file opens as a database, or can be created:
 * looked at, never written (-t may run as another user, before the
 * data directory exists). made_dir: the directory perimd creates at start
 * (data_directory), which need not exist yet. */
int grey_sqlite_check(const char *path, const char *made_dir, char *err, size_t errlen)
{
	if (!path[0] || !strcmp(path, ":memory:") || !strncmp(path, "file:", 5))
		return 0;
	struct stat sb;
	if (stat(path, &sb) == 0) {
		if (!S_ISREG(sb.st_mode)) {
			snprintf(err, errlen, "greylist_database: %s: not a regular file", path);
			return -1;
		}
		FILE *f = fopen(path, "r+b");
		if (!f) {
			snprintf(err, errlen, "greylist_database: %s: cannot open for writing: %s", path,
				 strerror(errno));
			return -1;
		}
		char hdr[16];
		size_t n = fread(hdr, 1, sizeof hdr, f);
		fclose(f);
		/* An empty file is a new database to SQLite. */
		if (n != 0 && (n != sizeof hdr || memcmp(hdr, "SQLite format 3", 16))) {
			snprintf(err, errlen, "greylist_database: %s: not an SQLite database", path);
			return -1;
		}
		return 0;
	}
	if (errno != ENOENT) {
		snprintf(err, errlen, "greylist_database: %s: %s", path, strerror(errno));
		return -1;
	}
	/* Missing: its directory must let us create it. perimd makes
	 * data_directory (and what leads to it) at start, nothing else. */
	char dir[4096], made[4096];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, sizeof dir, ".");
	else if (slash == dir)
		dir[1] = 0;
	else
		*slash = 0;
	snprintf(made, sizeof made, "%s", made_dir ? made_dir : "");
	for (size_t l = strlen(made); l > 1 && made[l - 1] == '/'; l--)
		made[l - 1] = 0;
	int creatable = made[0] && !strcmp(dir, made);
	while (stat(dir, &sb) < 0) {
		if (errno != ENOENT || !creatable) {
			snprintf(err, errlen, "greylist_database: %s: cannot be created: %s: %s", path, dir,
				 strerror(errno));
			return -1;
		}
		slash = strrchr(dir, '/');
		if (!slash)
			snprintf(dir, sizeof dir, ".");
		else if (slash == dir)
			dir[1] = 0;
		else
			*slash = 0;
	}
	if (!S_ISDIR(sb.st_mode)) {
		snprintf(err, errlen, "greylist_database: %s: cannot be created: %s is not a directory", path,
			 dir);
		return -1;
	}
	if (access(dir, W_OK | X_OK) < 0) {
		snprintf(err, errlen, "greylist_database: %s: cannot be created in %s: %s", path, dir,
			 strerror(errno));
		return -1;
	}
	return 0;
}
