/*
 * grey_mysql.c - the greylist store on a MySQL/MariaDB server shared by a
 * fleet of MX boxes (Connector/C, blocking: runs on job workers only).
 *
 * Invariants: one connection per worker thread. Time comes from the
 * database (one clock for the whole fleet), fetched in the same round trip
 * as the decision. The engine hands the decisions waiting together to
 * my_check_batch (up to GREY_BATCH_MAX, each of another triplet):
 * one statement reads the clock (kept in @n), the row count, every row
 * and auto-whitelist count; only when a row changes, one transaction
 * (READ COMMITTED) writes: the guarded update of the rows that change
 * (MY_UPDATE_WHEN: a retry within the delay, or a passed triplet seen
 * again before its expiry needs to move, writes nothing), the multi-row
 * quota upsert and the insert of the new triplets within their quota,
 * with the row count. Its affected rows tell whether every write did what
 * the read said; if not (another box wrote meanwhile, a network over its
 * quota) the rows are read again. A new triplet the batch cannot insert
 * (the store nearly full) is decided alone (my_check: decide_sql, one
 * multi-statement query, then eviction). MySQL evaluates ON DUPLICATE KEY
 * UPDATE assignments left to right, each
 * seeing the columns already assigned; the order below relies on that
 * (prev first marks a restart, first last of the row's own fields). Keys
 * are written as hex literals we make ourselves; nothing a peer sends is
 * ever part of a statement. Expiry runs on one node at a time: a lease
 * row in grey_meta, taken by compare-and-swap (UPDATE ... WHERE until <=
 * now).
 *
 * Retries (a Galera cluster, or one server that restarts): a call (one
 * decision, one auto-whitelist count, one expiry round) is one attempt
 * with an attempt id, a random number written into every row the call
 * changes (column att). A statement that meets a write conflict (deadlock
 * 1213: Galera's certification failure; lock wait timeout 1205) is tried
 * again on the same connection after a bounded, jittered backoff; a node
 * that is unusable (the connection lost, server shutting down, "WSREP has
 * not yet prepared node" 1047) is left for the next host of the list, and
 * the call starts again there. Because the call's first try may have
 * committed before its answer was lost, every write skips a row that
 * already carries the call's attempt id: the retry reads what the first
 * try committed instead of counting a second sighting. The retries stop
 * after MY_TRIES or MY_RETRY_MS; when no host answers at all the call
 * fails at once, and greylist_fail_action applies (never a 5xx).
 *
 * Abuse bounds (grey.h): a triplet not in the table is inserted only
 * when the network's quota row (gnet) and the row count (grey_meta 'rows':
 * kept by the statements that insert and delete, and recounted by the
 * expiry lease holder each run) allow it, in the decision's round trip;
 * only a store found full takes more round trips (my_new: eviction, then
 * the insert). Two nodes racing may both let one more triplet in than
 * the bounds say, never a pass.
 *
 * The triplet count (grey_meta 'rows') is kept in MY_SHARDS rows ('rows',
 * 'rows1' ... ) summed when read: each connection adds to its own, so
 * boxes on different Galera nodes do not all write one hot row.
 *
 * The .cf file (Postfix mysql_table shape): hosts (tried in order from
 * the one last used, each "host" or "host:port"), port (3306), user,
 * password, dbname.
 */
#include "buf.h"
#include "clock.h"
#include "grey.h"
#include "log.h"
#include "stats.h"

#include <ctype.h>
#include <errno.h>
#include <mysql.h>
#include <errmsg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#define MY_EXPIRE_LEASE 50000 /* ms a node holds the expiry lease */
#define MY_EVICT_MAX 10000    /* rows evicted for one insert at most */
#define MY_TRIES 8            /* tries of one call at most */
#define MY_RETRY_MS 15000     /* and no new try after this long */
#define MY_BACKOFF_MS 10      /* first wait after a conflict; doubles */
#define MY_BACKOFF_MAX 1000   /* longest wait between tries */
#define MY_SHARDS 8           /* rows of the triplet count */
#define MY_AFFECTED 16        /* statements of a query whose affected rows are kept */

/* Why the last statement failed: what a retry may do about it. */
enum my_fail {
	MY_FAIL_NONE,
	MY_FAIL_HARD,     /* an error a retry cannot mend */
	MY_FAIL_DOWN,     /* no host could be reached: fail fast */
	MY_FAIL_NODE,     /* this node is unusable: the next host */
	MY_FAIL_CONFLICT, /* a write conflict: the same node, after a wait */
};

struct my_store {
	struct grey_store base;
	MYSQL *db;
	char hosts[512], user[128], password[128], dbname[128];
	int port;
	int nhosts;               /* entries of hosts */
	int host_at;              /* the next connect starts with this host */
	int host_cur;             /* the host of db */
	char shard[8];            /* this connection's row of the triplet count */
	enum my_fail fail;        /* the last statement's failure */
	int64_t att;              /* the attempt id of the call in progress */
	time_t retry_at;          /* no reconnect attempt before (after a failure) */
	int64_t lease_until;      /* db clock: this node runs expiry until then */
	int fleet_ready;          /* the fleet's tables exist */
	int64_t aff[MY_AFFECTED]; /* the last query's affected rows, by statement */
	int naff;
};

static const char *const my_schema[] = {
	"CREATE TABLE IF NOT EXISTS grey (k BINARY(16) NOT NULL PRIMARY KEY,"
	" first BIGINT NOT NULL, last BIGINT NOT NULL, prev BIGINT NOT NULL,"
	" passed TINYINT NOT NULL, expires BIGINT NOT NULL, net BINARY(16) NULL,"
	" att BIGINT NOT NULL DEFAULT 0, KEY grey_expires (expires), KEY grey_net (net)) ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS gnet (k BINARY(16) NOT NULL PRIMARY KEY,"
	" start BIGINT NOT NULL, cnt BIGINT NOT NULL, over_at BIGINT NOT NULL,"
	" expires BIGINT NOT NULL, att BIGINT NOT NULL DEFAULT 0, KEY gnet_expires (expires),"
	" KEY gnet_over (over_at)) ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS awl (k BINARY(16) NOT NULL PRIMARY KEY,"
	" cnt BIGINT NOT NULL, last BIGINT NOT NULL, expires BIGINT NOT NULL,"
	" att BIGINT NOT NULL DEFAULT 0, KEY awl_expires (expires)) ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS grey_meta (name VARCHAR(32) NOT NULL PRIMARY KEY,"
	" until BIGINT NOT NULL) ENGINE=InnoDB",
	"INSERT IGNORE INTO grey_meta VALUES ('expire', 0)",
	"INSERT IGNORE INTO grey_meta VALUES ('rows1', 0), ('rows2', 0), ('rows3', 0), ('rows4', 0),"
	" ('rows5', 0), ('rows6', 0), ('rows7', 0)",
};

/* Columns added to tables made by older versions: table, column, DDL. */
static const char *const my_columns[][3] = {
	{ "grey", "net", "ALTER TABLE grey ADD COLUMN net BINARY(16) NULL, ADD KEY grey_net (net)" },
	{ "grey", "att", "ALTER TABLE grey ADD COLUMN att BIGINT NOT NULL DEFAULT 0" },
	{ "gnet", "att", "ALTER TABLE gnet ADD COLUMN att BIGINT NOT NULL DEFAULT 0" },
	{ "awl", "att", "ALTER TABLE awl ADD COLUMN att BIGINT NOT NULL DEFAULT 0" },
};

/* The triplet count: the sum of its rows. */
#define MY_ROWS "(SELECT SUM(until) FROM grey_meta WHERE name LIKE 'rows%%')"

/* The database's clock, ms: one clock for the whole fleet. */
#define MY_CLOCK "CAST(ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)"
#define MY_NOW "SET @n = " MY_CLOCK ";"

static pthread_once_t my_once = PTHREAD_ONCE_INIT;

/* my_lib_init - mysql_library_init is not thread-safe: once. */
static void my_lib_init(void)
{
	mysql_library_init(0, NULL, NULL);
}

static int my_host(const struct my_store *s, int idx, char *host, size_t hostlen, int *port);

/* my_cf_parse - "name = value" lines of the .cf file. */
static int my_cf_parse(struct my_store *s, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "mysql: %s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	char line[1024];
	int ln = 0, rc = 0;
	s->port = 3306;
	while (fgets(line, sizeof line, f)) {
		ln++;
		char *p = line;
		while (isspace((unsigned char)*p))
			p++;
		if (!*p || *p == '#')
			continue;
		char *eq = strchr(p, '=');
		if (!eq) {
			snprintf(err, errlen, "mysql: %s:%d: expected name = value", path, ln);
			rc = -1;
			break;
		}
		char *ke = eq;
		while (ke > p && isspace((unsigned char)ke[-1]))
			ke--;
		*ke = 0;
		char *v = eq + 1;
		while (isspace((unsigned char)*v))
			v++;
		size_t vl = strlen(v);
		while (vl && isspace((unsigned char)v[vl - 1]))
			v[--vl] = 0;
		if (!strcmp(p, "hosts"))
			snprintf(s->hosts, sizeof s->hosts, "%s", v);
		else if (!strcmp(p, "port")) {
			char *end;
			long pt = strtol(v, &end, 10);
			if (!*v || *end || pt < 1 || pt > 65535) {
				snprintf(err, errlen, "mysql: %s:%d: port %s: expected 1-65535", path, ln, v);
				rc = -1;
				break;
			}
			s->port = (int)pt;
		} else if (!strcmp(p, "user"))
			snprintf(s->user, sizeof s->user, "%s", v);
		else if (!strcmp(p, "password"))
			snprintf(s->password, sizeof s->password, "%s", v);
		else if (!strcmp(p, "dbname"))
			snprintf(s->dbname, sizeof s->dbname, "%s", v);
		else {
			snprintf(err, errlen, "mysql: %s:%d: unknown name %s", path, ln, p);
			rc = -1;
			break;
		}
	}
	fclose(f);
	char host[256];
	int port;
	while (my_host(s, s->nhosts, host, sizeof host, &port) == 0)
		s->nhosts++;
	if (!rc && (!s->nhosts || !s->dbname[0])) {
		snprintf(err, errlen, "mysql: %s: hosts and dbname are required", path);
		rc = -1;
	}
	return rc;
}

/* my_exists - 1 when the query gives a row, 0 when not, -1 on error. */
static int my_exists(MYSQL *db, const char *q)
{
	if (mysql_query(db, q))
		return -1;
	MYSQL_RES *res = mysql_store_result(db);
	if (!res)
		return -1;
	int have = mysql_num_rows(res) > 0;
	mysql_free_result(res);
	return have;
}

/* is_conflict - a write conflict: Galera's certification failure and
 * InnoDB's deadlock (1213), a lock wait timeout (1205). */
static int is_conflict(unsigned e)
{
	return e == 1213 || e == 1205;
}

/* my_sleep_ms - wait ms milliseconds (a worker thread, between tries). */
static void my_sleep_ms(int64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* my_setup_query - a statement of the connection's setup; the boxes of a
 * fleet starting together on Galera may conflict: a few tries. */
static int my_setup_query(MYSQL *db, const char *q)
{
	for (int i = 0;; i++) {
		if (!mysql_query(db, q))
			return 0;
		if (i >= 4 || !is_conflict(mysql_errno(db)))
			return -1;
		my_sleep_ms(20LL << i);
	}
}

/* my_migrate - the columns of my_columns on tables made before them
 * (looked up first: an ALTER TABLE would wait for every open transaction
 * on the table), and the 'rows' row of grey_meta, counted once when
 * missing. */
static int my_migrate(MYSQL *db, char *err, size_t errlen)
{
	for (size_t i = 0; i < sizeof my_columns / sizeof my_columns[0]; i++) {
		char q[256];
		snprintf(q, sizeof q,
			 "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
			 " AND TABLE_NAME = '%s' AND COLUMN_NAME = '%s'",
			 my_columns[i][0], my_columns[i][1]);
		int col = my_exists(db, q);
		if (col < 0 || (!col && my_setup_query(db, my_columns[i][2]) && mysql_errno(db) != 1060))
			goto fail;
	}
	int rows = my_exists(db, "SELECT 1 FROM grey_meta WHERE name = 'rows'");
	if (rows < 0 ||
	    (!rows && my_setup_query(db, "INSERT IGNORE INTO grey_meta SELECT 'rows', COUNT(*) FROM grey")))
		goto fail;
	return 0;
fail:
	snprintf(err, errlen, "mysql: schema: %s", mysql_error(db));
	return -1;
}

/* my_disconnect - drop the connection. */
static void my_disconnect(struct my_store *s)
{
	if (s->db)
		mysql_close(s->db);
	s->db = NULL;
}

/* my_host - entry idx of the hosts list as host and port; 0, or -1 past
 * the end. */
static int my_host(const struct my_store *s, int idx, char *host, size_t hostlen, int *port)
{
	char hosts[512];
	snprintf(hosts, sizeof hosts, "%s", s->hosts);
	char *save = NULL;
	int i = 0;
	for (char *h = strtok_r(hosts, ", \t", &save); h; h = strtok_r(NULL, ", \t", &save), i++) {
		if (i != idx)
			continue;
		snprintf(host, hostlen, "%s", h);
		*port = s->port;
		char *colon = strrchr(host, ':');
		if (colon && !strchr(colon + 1, ']') && strchr(host, ':') == colon) {
			*colon = 0;
			*port = atoi(colon + 1);
		}
		return 0;
	}
	return -1;
}

/* my_open_host - connect to one host and set up the schema (unless probe:
 * perimd -t only looks); NULL with err. */
static MYSQL *my_open_host(struct my_store *s, const char *host, int port, int probe, char *err, size_t errlen)
{
	MYSQL *db = mysql_init(NULL);
	if (!db)
		fatal("out of memory");
	unsigned int ct = 2, rt = 5;
	mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
	mysql_options(db, MYSQL_OPT_READ_TIMEOUT, &rt);
	mysql_options(db, MYSQL_OPT_WRITE_TIMEOUT, &rt);
	if (!mysql_real_connect(db, host, s->user, s->password, s->dbname, (unsigned)port, NULL,
				CLIENT_MULTI_STATEMENTS)) {
		snprintf(err, errlen, "mysql: %s:%d: %s", host, port, mysql_error(db));
		mysql_close(db);
		return NULL;
	}
	for (size_t i = 0; !probe && i < sizeof my_schema / sizeof my_schema[0]; i++) {
		if (my_setup_query(db, my_schema[i])) {
			snprintf(err, errlen, "mysql: %s:%d: schema: %s", host, port, mysql_error(db));
			mysql_close(db);
			return NULL;
		}
	}
	/* Tables made before a column get it; the row count starts as the
	 * table's. A decision's transaction reads what others committed
	 * (READ COMMITTED): a triplet another box inserted meanwhile is seen. */
	if (!probe &&
	    (my_migrate(db, err, errlen) < 0 ||
	     my_setup_query(db, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"))) {
		mysql_close(db);
		return NULL;
	}
	return db;
}

/* my_connect_to - try each host once, from host_at on (wrapping). On
 * failure s->fail is MY_FAIL_DOWN and calls fail fast for a second. */
static int my_connect_to(struct my_store *s, int probe, char *err, size_t errlen)
{
	time_t now = time(NULL);
	s->fail = MY_FAIL_DOWN;
	if (now < s->retry_at) {
		snprintf(err, errlen, "mysql: server unreachable (retrying)");
		return -1;
	}
	/* err names every host's failure, in the order tried. */
	if (errlen)
		err[0] = 0;
	for (int i = 0; i < s->nhosts; i++) {
		int h = (s->host_at + i) % s->nhosts, port;
		char host[256], e[512];
		if (my_host(s, h, host, sizeof host, &port) < 0)
			continue;
		MYSQL *db = my_open_host(s, host, port, probe, e, sizeof e);
		if (!db) {
			size_t used = strlen(err);
			snprintf(err + used, errlen - used, "%s%s", used ? "; " : "", e);
			continue;
		}
		s->db = db;
		s->host_cur = s->host_at = h;
		s->fail = MY_FAIL_NONE;
		return 0;
	}
	s->retry_at = now + 1;
	return -1;
}

/* my_connect - connect for use. */
static int my_connect(struct my_store *s, char *err, size_t errlen)
{
	return my_connect_to(s, 0, err, errlen);
}

/* is_conn_error - a client-side error that means the connection is gone. */
static int is_conn_error(unsigned e)
{
	return e == CR_SERVER_GONE_ERROR || e == CR_SERVER_LOST || e == CR_CONNECTION_ERROR ||
	    e == CR_CONN_HOST_ERROR || e == CR_COMMANDS_OUT_OF_SYNC || e == 1927 /* ER_CONNECTION_KILLED */ ||
	    e == 1053 /* ER_SERVER_SHUTDOWN */;
}

/* my_classify - what a retry may do about error e. 1047 is Galera's
 * "WSREP has not yet prepared node for application use" (a node out of
 * the primary component, or still joining); 1180, an error during
 * COMMIT, is what a node says when replication failed under it. */
static enum my_fail my_classify(unsigned e)
{
	if (is_conflict(e))
		return MY_FAIL_CONFLICT;
	if (is_conn_error(e) || e == 1047 || e == 1180)
		return MY_FAIL_NODE;
	return MY_FAIL_HARD;
}

/* my_results - read every result set of the query just sent; rows go to
 * row(), the affected rows of each statement without rows to s->aff. 0,
 * or -1 when a statement failed. */
static int my_results(struct my_store *s, void (*row)(void *, MYSQL_ROW, unsigned), void *arg)
{
	MYSQL *db = s->db;
	int st;
	s->naff = 0;
	do {
		MYSQL_RES *res = mysql_store_result(db);
		if (res) {
			MYSQL_ROW r;
			unsigned nf = mysql_num_fields(res);
			while ((r = mysql_fetch_row(res)))
				if (row)
					row(arg, r, nf);
			mysql_free_result(res);
		} else if (mysql_field_count(db)) {
			return -1;
		} else if (s->naff < MY_AFFECTED) {
			s->aff[s->naff++] = (int64_t)mysql_affected_rows(db);
		}
		st = mysql_next_result(db);
	} while (st == 0);
	return st > 0 ? -1 : 0;
}

/* my_run - run a multi-statement query once; rows of its result sets go
 * to row(arg, row, nfields). Returns 0, or -1 with err and s->fail set.
 * After a conflict the connection is kept (its transaction rolled back);
 * after any other failure it is closed (results may be pending). */
static int my_run(struct my_store *s, const char *q, void (*row)(void *, MYSQL_ROW, unsigned), void *arg,
		  char *err, size_t errlen)
{
	s->fail = MY_FAIL_NONE;
	if (!s->db && my_connect(s, err, errlen) < 0)
		return -1;
	stats_inc(ST_grey_db_queries);
	if (!mysql_real_query(s->db, q, strlen(q)) && !my_results(s, row, arg))
		return 0;
	unsigned e = mysql_errno(s->db);
	snprintf(err, errlen, "mysql: %s", mysql_error(s->db));
	s->fail = my_classify(e);
	if (s->fail != MY_FAIL_CONFLICT || mysql_query(s->db, "ROLLBACK"))
		my_disconnect(s);
	return -1;
}

/* my_random - 63 random bits, never 0 (attempt ids, backoff jitter). */
static int64_t my_random(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof v, 0) != sizeof v) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		v = ((uint64_t)ts.tv_sec * 1000000007u) ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)&v;
	}
	v &= INT64_MAX;
	return v ? (int64_t)v : 1;
}

/* One call of the store, tried as a whole (see my_retry). */
typedef int my_call_fn(struct my_store *s, void *arg, char *err, size_t errlen);

/* my_retry - run call with a fresh attempt id; after a conflict run it
 * again on the same node after a jittered, doubling wait; after a node
 * failure at once on the next host (later ones wait too). At most
 * MY_TRIES tries within MY_RETRY_MS; no retry when no host answers. */
static int my_retry(struct my_store *s, my_call_fn *call, void *arg, char *err, size_t errlen)
{
	int64_t t0 = (int64_t)clock_ms(), wait = MY_BACKOFF_MS;
	s->att = my_random();
	for (int n = 1;; n++) {
		int rc = call(s, arg, err, errlen);
		if (rc >= 0 || (s->fail != MY_FAIL_NODE && s->fail != MY_FAIL_CONFLICT) || n >= MY_TRIES)
			return rc;
		if (s->fail == MY_FAIL_NODE) {
			char host[256] = "?";
			int port = 0;
			my_host(s, s->host_cur, host, sizeof host, &port);
			s->host_at = (s->host_cur + 1) % s->nhosts;
			stats_inc(ST_grey_db_retry_node);
			log_warn("greylist database %s:%d: %s (trying %s)", host, port, err,
				 s->nhosts > 1 ? "the next host" : "again");
			if (n == 1)
				continue;
		} else {
			stats_inc(ST_grey_db_retry_conflict);
		}
		int64_t d = wait / 2 + my_random() % (wait / 2 + 1);
		if ((int64_t)clock_ms() - t0 + d > MY_RETRY_MS)
			return rc;
		my_sleep_ms(d);
		wait = wait * 2 > MY_BACKOFF_MAX ? MY_BACKOFF_MAX : wait * 2;
	}
}

/* hex - 16 bytes as 32 hex digits. */
static void hex(const struct grey_key *k, char out[33])
{
	static const char d[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[2 * i] = d[k->b[i] >> 4];
		out[2 * i + 1] = d[k->b[i] & 15];
	}
	out[32] = 0;
}

/* check_row - first, prev, passed, now, awl count (first NULL: no row). */
static void check_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	struct grey_answer *a = arg;
	if (nf < 5 || !r[3])
		return;
	a->now = strtoll(r[3], NULL, 10);
	a->awl_count = r[4] ? strtoll(r[4], NULL, 10) : 0;
	if (!r[0] || !r[1] || !r[2]) {
		a->first = -1;
		return;
	}
	a->first = strtoll(r[0], NULL, 10);
	int64_t prev = strtoll(r[1], NULL, 10);
	int passed = atoi(r[2]);
	a->state = passed ? GREY_PASS : prev == 0 ? GREY_NEW : GREY_EARLY;
}

/* ints_row - up to four integers of one row (NULL as 0). */
static void ints_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	int64_t *v = arg;
	for (unsigned i = 0; i < nf && i < 4; i++)
		v[i] = r[i] ? strtoll(r[i], NULL, 10) : 0;
}

/* The triplet's row and the network's auto-whitelist count, one row
 * always (NULLs when the triplet is not there). */
#define MY_SELECT_ROW \
	"SELECT g.first, g.prev, g.passed, @n," \
	" (SELECT cnt FROM awl WHERE k = X'%s' AND expires > @n)" \
	" FROM (SELECT 1) AS one LEFT JOIN grey g ON g.k = X'%s'"

/* my_evict - make room for need rows: unpassed ones only, of over-quota
 * networks first, then never retried ones, then any (from key k on, then
 * below it); the row count follows. Returns how many went, or -1. */
static int64_t my_evict(struct my_store *s, const struct grey_query *q, const char *k, int64_t need,
			char *err, size_t errlen)
{
	char sql[1024];
	int64_t done = 0;
	for (int tier = 0; tier < 5 && done < need; tier++) {
		char where[256];
		if (tier == 0)
			snprintf(where, sizeof where,
				 "net IN (SELECT k FROM gnet WHERE over_at > 0 AND over_at > @n - %lld)",
				 (long long)q->max_age);
		else
			snprintf(where, sizeof where, "k %s X'%s'%s", tier % 2 ? ">=" : "<", k,
				 tier < 3 ? " AND prev = 0" : "");
		snprintf(sql, sizeof sql,
			 MY_NOW "DELETE FROM grey WHERE passed = 0 AND %s LIMIT %lld;"
				"SET @d = ROW_COUNT();"
				"UPDATE grey_meta SET until = until - GREATEST(@d, 0) WHERE name = '%s';"
				"SELECT @d",
			 where, (long long)(need - done), s->shard);
		int64_t v[4] = { 0 };
		if (my_run(s, sql, ints_row, v, err, errlen) < 0)
			return -1;
		done += v[0] > 0 ? v[0] : 0;
	}
	return done;
}

/* my_quota - count the new triplet against its network's quota (once per
 * attempt) and read the store's row count: v[0] the network's count, v[1]
 * the rows. */
static int my_quota(struct my_store *s, const struct grey_query *q, const char *n, int64_t v[4], char *err,
		    size_t errlen)
{
	char quota[1024] = "", sql[2048];
	long long att = (long long)s->att, iv = (long long)q->new_interval;
	if (q->new_limit > 0)
		snprintf(quota, sizeof quota,
			 "INSERT INTO gnet (k, start, cnt, over_at, expires, att)"
			 " VALUES (X'%s', @n, 1, 0, @n + %lld, %lld) ON DUPLICATE KEY UPDATE"
			 " cnt = IF(att = %lld, cnt, IF(@n - start >= %lld, 1, cnt + 1)),"
			 " start = IF(att = %lld, start, IF(@n - start >= %lld, @n, start)),"
			 " expires = GREATEST(start + %lld, over_at + %lld), att = %lld;"
			 "UPDATE gnet SET over_at = @n, expires = GREATEST(expires, @n + %lld)"
			 " WHERE k = X'%s' AND cnt > %lld;",
			 n, iv, att, att, iv, att, iv, iv, (long long)q->max_age, att, (long long)q->max_age,
			 n, (long long)q->new_limit);
	snprintf(sql, sizeof sql, MY_NOW "%sSELECT (SELECT cnt FROM gnet WHERE k = X'%s'), " MY_ROWS, quota, n);
	return my_run(s, sql, ints_row, v, err, errlen);
}

/* my_new - a triplet not in the table: the network's quota, the size
 * bound, then the insert (with its count, one transaction). */
static int my_new(struct my_store *s, const struct grey_query *q, struct grey_answer *a, const char *k,
		  const char *n, char *err, size_t errlen)
{
	char sql[2048];
	int64_t v[4] = { 0 };
	if (q->new_limit > 0 || q->max_entries > 0) {
		if (my_quota(s, q, n, v, err, errlen) < 0)
			return -1;
		if (q->new_limit > 0 && v[0] > q->new_limit) {
			a->state = GREY_OVER_QUOTA;
			return 0;
		}
		int64_t rows = v[1];
		if (q->max_entries > 0 && rows >= q->max_entries) {
			int64_t need = rows - q->max_entries + 1 + q->max_entries / 100;
			if (need > MY_EVICT_MAX)
				need = MY_EVICT_MAX;
			int64_t gone = my_evict(s, q, k, need, err, errlen);
			if (gone < 0)
				return -1;
			a->evicted = gone;
			if (rows - gone >= q->max_entries) {
				a->state = GREY_FULL;
				return 0;
			}
		}
	}
	snprintf(sql, sizeof sql,
		 MY_NOW "START TRANSACTION;"
			"INSERT IGNORE INTO grey (k, first, last, prev, passed, expires, net, att)"
			" VALUES (X'%s', @n, @n, 0, 0, @n + %lld, X'%s', %lld);"
			"SET @i = ROW_COUNT();"
			"UPDATE grey_meta SET until = until + GREATEST(@i, 0) WHERE name = '%s';"
			"COMMIT;" MY_SELECT_ROW,
		 k, (long long)q->max_age, n, (long long)s->att, s->shard, n, k);
	int64_t evicted = a->evicted;
	memset(a, 0, sizeof *a);
	a->now = -1;
	a->evicted = evicted;
	if (my_run(s, sql, check_row, a, err, errlen) < 0)
		return -1;
	if (a->now < 0 || a->first < 0) {
		snprintf(err, errlen, "mysql: no row after insert");
		return -1;
	}
	return 0;
}

/* A decision: what my_retry passes to check_call, and what the round
 * trip said about a new triplet (found, its network's count, the rows). */
struct my_decision {
	const struct grey_query *q;
	struct grey_answer *a;
	int64_t found, quota, rows;
};

/* decide_row - the triplet's row (check_row) and the new-triplet facts. */
static void decide_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	struct my_decision *d = arg;
	check_row(d->a, r, nf);
	if (nf >= 8) {
		d->found = r[5] ? strtoll(r[5], NULL, 10) : 0;
		d->quota = r[6] ? strtoll(r[6], NULL, 10) : 0;
		d->rows = r[7] ? strtoll(r[7], NULL, 10) : 0;
	}
}

/* The update of a triplet seen again (decide_sql, batch_sql): parameters
 * delay, max_age, the passed triplet's new lifetime, attempt id. prev
 * first marks a restart (expired: a new triplet again); first is last of
 * the row's own fields. */
#define MY_UPDATE \
	"UPDATE grey SET prev = IF(expires <= @n, 0, last)," \
	" passed = IF(prev = 0, 0, IF(passed = 1 OR @n - first >= %lld, 1, 0))," \
	" expires = IF(prev = 0, @n + %lld, IF(passed = 1, @n + %lld, expires))," \
	" first = IF(prev = 0, @n, first), last = @n, att = %lld"

/* Which rows the update writes (parameters: attempt id, delay,
 * retention): not one this attempt wrote, and only when the sighting
 * changes what the row decides: an expired row restarts, a first
 * sighting's retry becomes early or passes, an early one whose delay is
 * over passes, a passed one whose expiry is less than greylist_retention
 * away is kept longer (my_refresh more, so the next sightings until then
 * write nothing). An early retry within the delay, and a passed triplet
 * seen again soon, only read. */
#define MY_UPDATE_WHEN \
	" AND att <> %lld AND (expires <= @n OR prev = 0 OR (passed = 0 AND @n - first >= %lld)" \
	" OR (passed = 1 AND expires < @n + %lld))"

/* my_refresh - how much longer than greylist_retention a passed
 * triplet's expiry is set when it is written: a sixteenth of it, at most
 * an hour (so it is written once per that long, whatever its traffic). */
static int64_t my_refresh(const struct grey_query *q)
{
	int64_t r = q->retention / 16;
	return r > 3600000 ? 3600000 : r;
}

/* decide_sql - the whole decision as one transaction in one round trip:
 * the update of a known triplet; for a new one (@f = 0) the network's
 * quota, the size bound and the insert with its count, each statement
 * doing nothing when it does not apply; then the row. A row that already
 * carries this attempt's id is not changed again: an earlier try
 * committed it, and the row tells what that try decided. */
static void decide_sql(struct strbuf *b, const struct my_store *s, const struct grey_query *q, const char *k,
		       const char *n)
{
	long long att = (long long)s->att, iv = (long long)q->new_interval;
	sb_printf(b, MY_NOW "START TRANSACTION;" MY_UPDATE " WHERE k = X'%s'" MY_UPDATE_WHEN ";",
		  (long long)q->delay, (long long)q->max_age, (long long)(q->retention + my_refresh(q)), att,
		  k, att, (long long)q->delay, (long long)q->retention);
	sb_printf(b, "SET @f = (SELECT COUNT(*) FROM grey WHERE k = X'%s');", k);
	if (q->new_limit > 0)
		sb_printf(
		    b,
		    "INSERT INTO gnet (k, start, cnt, over_at, expires, att)"
		    " SELECT X'%s', @n, 1, 0, @n + %lld, %lld FROM DUAL WHERE @f = 0 ON DUPLICATE KEY UPDATE"
		    " cnt = IF(att = %lld, cnt, IF(@n - start >= %lld, 1, cnt + 1)),"
		    " start = IF(att = %lld, start, IF(@n - start >= %lld, @n, start)),"
		    " expires = GREATEST(start + %lld, over_at + %lld), att = %lld;"
		    "UPDATE gnet SET over_at = @n, expires = GREATEST(expires, @n + %lld)"
		    " WHERE @f = 0 AND k = X'%s' AND cnt > %lld;"
		    "SET @q = IF(@f = 0, (SELECT cnt FROM gnet WHERE k = X'%s'), 0);",
		    n, iv, att, att, iv, att, iv, iv, (long long)q->max_age, att, (long long)q->max_age, n,
		    (long long)q->new_limit, n);
	else
		sb_printf(b, "SET @q = 0;");
	if (q->max_entries > 0)
		sb_printf(b, "SET @r = IF(@f = 0, " MY_ROWS ", 0);");
	else
		sb_printf(b, "SET @r = 0;");
	sb_printf(
	    b,
	    "INSERT IGNORE INTO grey (k, first, last, prev, passed, expires, net, att)"
	    " SELECT X'%s', @n, @n, 0, 0, @n + %lld, X'%s', %lld FROM DUAL"
	    " WHERE @f = 0 AND (%lld = 0 OR @q <= %lld) AND (%lld = 0 OR @r < %lld);"
	    "SET @i = ROW_COUNT();"
	    "UPDATE grey_meta SET until = until + @i WHERE @i > 0 AND name = '%s';"
	    "COMMIT;"
	    "SELECT g.first, g.prev, g.passed, @n, (SELECT cnt FROM awl WHERE k = X'%s' AND expires > @n),"
	    " @f, @q, @r FROM (SELECT 1) AS one LEFT JOIN grey g ON g.k = X'%s'",
	    k, (long long)q->max_age, n, att, (long long)q->new_limit, (long long)q->new_limit,
	    (long long)q->max_entries, (long long)q->max_entries, s->shard, n, k);
}

/* check_call - one try of a decision: one round trip (decide_sql); only
 * a new triplet that finds the store full goes on to my_new's eviction
 * (its quota already counted by this attempt: not counted again). */
static int check_call(struct my_store *s, void *arg, char *err, size_t errlen)
{
	struct my_decision *d = arg;
	const struct grey_query *q = d->q;
	struct grey_answer *a = d->a;
	char k[33], n[33];
	hex(&q->triplet, k);
	hex(&q->net, n);
	struct strbuf b = { 0 };
	decide_sql(&b, s, q, k, n);
	memset(a, 0, sizeof *a);
	a->now = -1;
	d->found = d->quota = d->rows = 0;
	int rc = my_run(s, sb_str(&b), decide_row, d, err, errlen);
	sb_free(&b);
	if (rc < 0)
		return -1;
	if (a->now < 0) {
		snprintf(err, errlen, "mysql: no answer to the decision");
		s->fail = MY_FAIL_HARD;
		return -1;
	}
	if (a->first >= 0)
		return 0;
	a->first = a->now;
	if (q->new_limit > 0 && d->quota > q->new_limit) {
		a->state = GREY_OVER_QUOTA;
		return 0;
	}
	if (q->max_entries > 0 && d->rows >= q->max_entries)
		return my_new(s, q, a, k, n, err, errlen);
	snprintf(err, errlen, "mysql: no row after insert");
	s->fail = MY_FAIL_CONFLICT; /* deleted under us: try again */
	return -1;
}

/* my_check - a decision, tried as a whole (my_retry). */
static int my_check(struct grey_store *gs, const struct grey_query *q, struct grey_answer *a, char *err,
		    size_t errlen)
{
	struct my_decision d = { q, a, 0, 0, 0 };
	return my_retry((struct my_store *)gs, check_call, &d, err, errlen);
}

/* A batch of decisions (my_check_batch): the calls, their keys as hex,
 * the rows read, and what the batch does and answers for each. */
struct my_batch {
	struct grey_call *calls;
	int n;
	int64_t att;
	char k[GREY_BATCH_MAX][33], net[GREY_BATCH_MAX][33];
	int found[GREY_BATCH_MAX]; /* the triplet has a row (r_*) */
	int64_t r_first[GREY_BATCH_MAX], r_prev[GREY_BATCH_MAX], r_passed[GREY_BATCH_MAX];
	int64_t r_expires[GREY_BATCH_MAX], r_att[GREY_BATCH_MAX];
	int write[GREY_BATCH_MAX];     /* its row changes with this sighting */
	int fresh[GREY_BATCH_MAX];     /* not in the table: inserted by the batch */
	int alone[GREY_BATCH_MAX];     /* decided alone afterwards (my_check) */
	int64_t quota[GREY_BATCH_MAX]; /* its network's count, counted by this attempt */
	int64_t now, rows;
};

/* batch_keys - the listed calls' keys (nets: network keys) as hex
 * literals; only calls with sel[i] set when sel is not NULL. */
static void batch_keys(struct strbuf *b, const struct my_batch *m, const int *sel, int nets)
{
	int first = 1;
	for (int i = 0; i < m->n; i++) {
		if (sel && !sel[i])
			continue;
		sb_printf(b, "%sX'%s'", first ? "" : ", ", nets ? m->net[i] : m->k[i]);
		first = 0;
	}
}

/* batch_read_sql - the first round trip: the database clock (kept in @n
 * for the writes that follow on this connection), the row count, every
 * triplet's row and network's auto-whitelist count. It changes nothing. */
static void batch_read_sql(struct strbuf *b, const struct my_batch *m)
{
	const struct grey_query *q = m->calls[0].q;
	sb_printf(b, "SELECT 'n', @n := " MY_CLOCK ", %s, 0, 0, 0, 0", q->max_entries > 0 ? MY_ROWS : "0");
	sb_printf(b, " UNION ALL SELECT 't', HEX(k), first, prev, passed, expires, att FROM grey WHERE k IN (");
	batch_keys(b, m, NULL, 0);
	sb_printf(b, ")");
	if (q->awl) {
		sb_printf(b, " UNION ALL SELECT 'a', HEX(k), cnt, expires, 0, 0, 0 FROM awl WHERE k IN (");
		batch_keys(b, m, NULL, 1);
		sb_printf(b, ")");
	}
}

/* batch_reread_sql - the rows as they are after the writes (when the
 * writes did not all do what the first read said they would: another box
 * wrote meanwhile, a network over its quota), with this attempt's quota
 * counts. */
static void batch_reread_sql(struct strbuf *b, const struct my_batch *m)
{
	sb_printf(b, "SELECT 't', HEX(k), first, prev, passed, expires, att FROM grey WHERE k IN (");
	batch_keys(b, m, NULL, 0);
	sb_printf(b, ") UNION ALL SELECT 'q', HEX(k), cnt, att, 0, 0, 0 FROM gnet WHERE k IN (");
	batch_keys(b, m, NULL, 1);
	sb_printf(b, ")");
}

/* batch_find - the first call from `from` on whose key (nets: network
 * key) is hex h, or -1. */
static int batch_find(const struct my_batch *m, const char *h, int nets, int from)
{
	for (int i = from; i < m->n; i++)
		if (!strcasecmp(nets ? m->net[i] : m->k[i], h))
			return i;
	return -1;
}

/* batch_net_row - a network's row: its auto-whitelist count ('a': cnt,
 * expires) for every call of the network, or its quota count ('q': cnt,
 * att) when this attempt counted it. */
static void batch_net_row(struct my_batch *m, char tag, const char *h, const int64_t *v)
{
	for (int i = batch_find(m, h, 1, 0); i >= 0; i = batch_find(m, h, 1, i + 1)) {
		if (tag == 'a' && v[1] > m->now)
			m->calls[i].a->awl_count = v[0];
		else if (tag == 'q' && v[1] == m->att)
			m->quota[i] = v[0];
	}
}

/* batch_row - a row of a batch's reads: the clock and row count ('n'),
 * a triplet's row ('t'), a network's row (batch_net_row). */
static void batch_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	struct my_batch *m = arg;
	if (nf < 7 || !r[0] || !r[1])
		return;
	int64_t v[5];
	for (int j = 0; j < 5; j++)
		v[j] = r[j + 2] ? strtoll(r[j + 2], NULL, 10) : 0;
	int i;
	switch (r[0][0]) {
	case 'n':
		m->now = strtoll(r[1], NULL, 10);
		m->rows = v[0];
		break;
	case 't':
		if ((i = batch_find(m, r[1], 0, 0)) >= 0) {
			m->found[i] = 1;
			m->r_first[i] = v[0];
			m->r_prev[i] = v[1];
			m->r_passed[i] = v[2];
			m->r_expires[i] = v[3];
			m->r_att[i] = v[4];
		}
		break;
	case 'a':
	case 'q': batch_net_row(m, r[0][0], r[1], v); break;
	}
}

/* batch_as_is - answer call i with its row as read. */
static void batch_as_is(struct my_batch *m, int i)
{
	struct grey_answer *a = m->calls[i].a;
	a->first = m->r_first[i];
	a->state = m->r_passed[i] ? GREY_PASS : m->r_prev[i] == 0 ? GREY_NEW : GREY_EARLY;
}

/* batch_plan - from the first read: what each call writes and answers
 * (a call decided alone later is left for my_check_batch).
 * The answer of a row the batch updates is the update's result (MY_UPDATE
 * on the row read); a row this attempt wrote already is answered as it
 * is (an earlier try committed it). A triplet without a row is inserted
 * unless the store has no room for the batch's (then it is decided
 * alone, with eviction). */
static void batch_plan(struct my_batch *m, int *nwrite, int *nfresh)
{
	const struct grey_query *q = m->calls[0].q;
	int64_t n = m->now;
	*nwrite = *nfresh = 0;
	for (int i = 0; i < m->n; i++) {
		struct grey_answer *a = m->calls[i].a;
		a->now = n;
		if (!m->found[i]) {
			/* One new triplet per network (its quota row): the
			 * others of the batch are decided alone, after it. */
			for (int j = 0; q->new_limit > 0 && j < i && !m->alone[i]; j++)
				if (m->fresh[j] && !strcmp(m->net[j], m->net[i]))
					m->alone[i] = 1;
			if (m->alone[i])
				continue;
			m->fresh[i] = 1;
			++*nfresh;
			a->first = n;
			a->state = GREY_NEW;
			continue;
		}
		int64_t first = m->r_first[i], prev = m->r_prev[i], passed = m->r_passed[i],
			exp = m->r_expires[i];
		if (m->r_att[i] == m->att ||
		    !(exp <= n || prev == 0 || (!passed && n - first >= q->delay) ||
		      (passed && exp < n + q->retention))) {
			batch_as_is(m, i);
			continue;
		}
		m->write[i] = 1;
		++*nwrite;
		if (exp <= n) {
			a->first = n;
			a->state = GREY_NEW;
		} else {
			a->first = first;
			a->state = passed || n - first >= q->delay ? GREY_PASS : GREY_EARLY;
		}
	}
	if (*nfresh && q->max_entries > 0 && m->rows + *nfresh > q->max_entries) {
		for (int i = 0; i < m->n; i++)
			if (m->fresh[i]) {
				m->fresh[i] = 0;
				m->alone[i] = 1;
			}
		*nfresh = 0;
	}
}

/* batch_write_sql - the second round trip, one transaction: the update
 * of the rows that change (guarded as in decide_sql, so a row another box
 * changed meanwhile is not written from a stale read), the quota of the
 * new triplets' networks (one each: a quota row this attempt counted is
 * its one new triplet's), their insert (those within the quota) with the
 * row count (only updates: one statement without a transaction of its
 * own making). at[0], at[1]: the statements whose affected rows tell
 * whether all went as planned (-1: none). */
static void batch_write_sql(struct strbuf *b, const struct my_store *s, const struct my_batch *m, int nwrite,
			    int nfresh, int at[2])
{
	const struct grey_query *q = m->calls[0].q;
	long long att = (long long)s->att, iv = (long long)q->new_interval, lim = (long long)q->new_limit;
	int stmt = 0;
	at[0] = at[1] = -1;
	/* Only updates: one statement, its own transaction. */
	if (nfresh) {
		sb_printf(b, "START TRANSACTION;");
		stmt++;
	}
	if (nwrite) {
		sb_printf(b, MY_UPDATE " WHERE k IN (", (long long)q->delay, (long long)q->max_age,
			  (long long)(q->retention + my_refresh(q)), att);
		batch_keys(b, m, m->write, 0);
		sb_printf(b, ")" MY_UPDATE_WHEN, att, (long long)q->delay, (long long)q->retention);
		at[0] = stmt++;
		if (!nfresh)
			return;
		sb_printf(b, ";");
	}
	if (nfresh && lim > 0) {
		sb_printf(b, "INSERT INTO gnet (k, start, cnt, over_at, expires, att) VALUES ");
		int first = 1;
		for (int i = 0; i < m->n; i++)
			if (m->fresh[i]) {
				sb_printf(b, "%s(X'%s', @n, 1, 0, @n + %lld, %lld)", first ? "" : ", ",
					  m->net[i], iv, att);
				first = 0;
			}
		sb_printf(
		    b,
		    " ON DUPLICATE KEY UPDATE cnt = IF(att = %lld, cnt, IF(@n - start >= %lld, 1, cnt + 1)),"
		    " start = IF(att = %lld, start, IF(@n - start >= %lld, @n, start)),"
		    " over_at = IF(att <> %lld AND cnt > %lld, @n, over_at),"
		    " expires = GREATEST(start + %lld, over_at + %lld), att = %lld;",
		    att, iv, att, iv, att, lim, iv, (long long)q->max_age, att);
		stmt++;
		sb_printf(
		    b, "INSERT IGNORE INTO grey (k, first, last, prev, passed, expires, net, att) SELECT CASE k");
		for (int i = 0; i < m->n; i++)
			if (m->fresh[i])
				sb_printf(b, " WHEN X'%s' THEN X'%s'", m->net[i], m->k[i]);
		sb_printf(b, " END, @n, @n, 0, 0, @n + %lld, k, %lld FROM gnet WHERE k IN (",
			  (long long)q->max_age, att);
		batch_keys(b, m, m->fresh, 1);
		sb_printf(b, ") AND att = %lld AND cnt <= %lld;", att, lim);
		at[1] = stmt++;
	} else if (nfresh) {
		sb_printf(
		    b, "INSERT IGNORE INTO grey (k, first, last, prev, passed, expires, net, att) VALUES ");
		int first = 1;
		for (int i = 0; i < m->n; i++)
			if (m->fresh[i]) {
				sb_printf(b, "%s(X'%s', @n, @n, 0, 0, @n + %lld, X'%s', %lld)",
					  first ? "" : ", ", m->k[i], (long long)q->max_age, m->net[i], att);
				first = 0;
			}
		sb_printf(b, ";");
		at[1] = stmt++;
	}
	if (nfresh)
		sb_printf(
		    b,
		    "UPDATE grey_meta SET until = until + ROW_COUNT() WHERE name = '%s' AND ROW_COUNT() > 0;",
		    s->shard);
	sb_printf(b, "COMMIT");
}

/* batch_reread - answer every call from the rows as they are now: a new
 * triplet without a row was over its network's quota, or is decided
 * alone. */
static void batch_reread(struct my_batch *m)
{
	const struct grey_query *q = m->calls[0].q;
	for (int i = 0; i < m->n; i++) {
		struct grey_answer *a = m->calls[i].a;
		if (m->alone[i])
			continue;
		if (m->found[i]) {
			batch_as_is(m, i);
		} else if (q->new_limit > 0 && m->quota[i] > q->new_limit) {
			a->first = m->now;
			a->state = GREY_OVER_QUOTA;
		} else {
			m->alone[i] = 1;
		}
	}
}

/* batch_call - one try of a batch (my_retry): read, write what changes,
 * read again only when the writes did not go as the first read said. */
static int batch_call(struct my_store *s, void *arg, char *err, size_t errlen)
{
	struct my_batch *m = arg;
	m->att = s->att;
	m->now = -1;
	for (int i = 0; i < m->n; i++) {
		memset(m->calls[i].a, 0, sizeof *m->calls[i].a);
		m->found[i] = m->write[i] = m->fresh[i] = m->alone[i] = 0;
		m->quota[i] = 0;
	}
	struct strbuf b = { 0 };
	batch_read_sql(&b, m);
	int rc = my_run(s, sb_str(&b), batch_row, m, err, errlen);
	sb_free(&b);
	if (rc < 0)
		return -1;
	if (m->now < 0) {
		snprintf(err, errlen, "mysql: no answer to the decisions");
		s->fail = MY_FAIL_HARD;
		return -1;
	}
	int nwrite, nfresh, at[2];
	batch_plan(m, &nwrite, &nfresh);
	if (!nwrite && !nfresh)
		return 0;
	struct strbuf w = { 0 };
	batch_write_sql(&w, s, m, nwrite, nfresh, at);
	s->naff = 0;
	rc = my_run(s, sb_str(&w), NULL, NULL, err, errlen);
	sb_free(&w);
	if (rc < 0)
		return -1;
	if ((at[0] < 0 || (at[0] < s->naff && s->aff[at[0]] == nwrite)) &&
	    (at[1] < 0 || (at[1] < s->naff && s->aff[at[1]] == nfresh)))
		return 0;
	for (int i = 0; i < m->n; i++)
		m->found[i] = 0;
	struct strbuf r = { 0 };
	batch_reread_sql(&r, m);
	rc = my_run(s, sb_str(&r), batch_row, m, err, errlen);
	sb_free(&r);
	if (rc == 0)
		batch_reread(m);
	return rc;
}

/* my_check_batch - up to GREY_BATCH_MAX decisions of one configuration,
 * each of another triplet, as one call tried as a whole (my_retry): a
 * read, and when any row changes one transaction of writes. A new triplet
 * the batch could not insert (a second of its network in the batch, the
 * store nearly full, its row gone meanwhile) is then decided alone
 * (my_check). */
static void my_check_batch(struct grey_store *gs, struct grey_call *calls, int n)
{
	struct my_store *s = (struct my_store *)gs;
	struct my_batch *m = xcalloc(1, sizeof *m);
	m->calls = calls;
	m->n = n > GREY_BATCH_MAX ? GREY_BATCH_MAX : n;
	for (int i = 0; i < m->n; i++) {
		hex(&calls[i].q->triplet, m->k[i]);
		hex(&calls[i].q->net, m->net[i]);
	}
	int rc = my_retry(s, batch_call, m, calls[0].err, calls[0].errlen);
	for (int i = 0; i < n; i++) {
		struct grey_call *c = &calls[i];
		c->rc = rc;
		if (rc < 0 && i)
			snprintf(c->err, c->errlen, "%s", calls[0].err);
		if (rc == 0 && (i >= m->n || m->alone[i]))
			c->rc = my_check(gs, c->q, c->a, c->err, c->errlen);
	}
	free(m);
}

/* An accepted message: what my_retry passes to awl_call. */
struct my_awl {
	const struct grey_key *net;
	int64_t interval, retention, *count, *wait;
};

/* count_row - the auto-whitelist count and the wait for the next one. */
static void count_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	struct my_awl *w = arg;
	if (nf >= 2 && r[0] && r[1]) {
		*w->count = strtoll(r[0], NULL, 10);
		*w->wait = strtoll(r[1], NULL, 10);
	}
}

/* awl_call - one try of counting an accepted message (database clock);
 * a row this attempt already counted is left as it is. */
static int awl_call(struct my_store *s, void *arg, char *err, size_t errlen)
{
	struct my_awl *w = arg;
	char n[33], sql[1024];
	long long att = (long long)s->att, iv = (long long)w->interval, rt = (long long)w->retention;
	hex(w->net, n);
	snprintf(sql, sizeof sql,
		 MY_NOW
		 "INSERT INTO awl (k, cnt, last, expires, att) VALUES (X'%s', 1, @n, @n + %lld, %lld)"
		 " ON DUPLICATE KEY UPDATE"
		 " cnt = IF(att = %lld, cnt, IF(expires <= @n, 1, IF(@n - last >= %lld, cnt + 1, cnt))),"
		 " last = IF(att = %lld, last, IF(expires <= @n OR @n - last >= %lld, @n, last)),"
		 " expires = IF(att = %lld, expires, @n + %lld), att = %lld;"
		 "SELECT cnt, LEAST(last + %lld, expires) - @n FROM awl WHERE k = X'%s'",
		 n, rt, att, att, iv, att, iv, att, rt, att, iv, n);
	*w->count = 0;
	*w->wait = 0;
	return my_run(s, sql, count_row, w, err, errlen);
}

/* my_awl_pass - count an accepted message, tried as a whole. */
static int my_awl_pass(struct grey_store *gs, const struct grey_key *net, int64_t now, int64_t interval,
		       int64_t retention, int64_t *count, int64_t *wait, char *err, size_t errlen)
{
	(void)now;
	struct my_awl w = { net, interval, retention, count, wait };
	return my_retry((struct my_store *)gs, awl_call, &w, err, errlen);
}

/* lease_row - the lease query's answer: taken (1/0) and the db clock. */
static void lease_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	int64_t *v = arg;
	if (nf >= 2 && r[0] && r[1]) {
		v[0] = strtoll(r[0], NULL, 10);
		v[1] = strtoll(r[1], NULL, 10);
	}
}

/* expire_call - take the fleet's expiry lease if free, then delete (a
 * retry after a lost answer finds the lease taken: it does nothing). */
static int expire_call(struct my_store *s, void *arg, char *err, size_t errlen)
{
	int limit = *(int *)arg;
	char sql[512];
	int64_t v[2] = { 0, 0 };
	/* ROW_COUNT() is read right after the UPDATE (1: the lease is ours). */
	snprintf(sql, sizeof sql,
		 MY_NOW "UPDATE grey_meta SET until = @n + %d WHERE name = 'expire' AND until <= @n;"
			"SELECT ROW_COUNT() INTO @won; SELECT @won, @n",
		 MY_EXPIRE_LEASE);
	if (my_run(s, sql, lease_row, v, err, errlen) < 0)
		return -1;
	if (v[0] == 1)
		s->lease_until = v[1] + MY_EXPIRE_LEASE;
	if (v[1] >= s->lease_until)
		return 0; /* another node holds the lease */
	/* The lease was taken now: once a run, the row count is made
	 * exact again (a delete by hand, a race between nodes). */
	if (v[0] == 1 &&
	    my_run(s,
		   "UPDATE grey_meta SET until = IF(name = 'rows', (SELECT COUNT(*) FROM grey), 0)"
		   " WHERE name LIKE 'rows%'",
		   NULL, NULL, err, errlen) < 0)
		return -1;
	int total = 0;
	const char *tables[3] = { "grey", "awl", "gnet" };
	for (int i = 0; i < 3; i++) {
		int64_t d[4] = { 0 };
		char count[128] = "";
		if (i == 0)
			snprintf(count, sizeof count,
				 " UPDATE grey_meta SET until = until - GREATEST(@d, 0) WHERE name = '%s';",
				 s->shard);
		snprintf(sql, sizeof sql,
			 "DELETE FROM %s WHERE expires <= %lld LIMIT %d; SET @d = ROW_COUNT();%s SELECT @d",
			 tables[i], (long long)v[1], limit, count);
		if (my_run(s, sql, ints_row, d, err, errlen) < 0)
			return -1;
		if (d[0] > total)
			total = (int)d[0];
	}
	return total;
}

/* my_expire - one expiry round, tried as a whole. */
static int my_expire(struct grey_store *gs, int64_t now, int limit, char *err, size_t errlen)
{
	(void)now;
	return my_retry((struct my_store *)gs, expire_call, &limit, err, errlen);
}

/* The fleet's tables (made at a box's first sync, so a site that shares
 * nothing never has them): per-recipient verdicts, the boxes' heartbeats,
 * their session counts and their sessions per minute. */
static const char *const my_fleet_schema[] = {
	"CREATE TABLE IF NOT EXISTS fleet_rcpt (k VARBINARY(320) NOT NULL PRIMARY KEY, code INT NOT NULL,"
	" enh VARCHAR(16) NOT NULL, expires BIGINT NOT NULL, updated BIGINT NOT NULL, box BINARY(8) NOT NULL,"
	" KEY fleet_rcpt_updated (updated), KEY fleet_rcpt_expires (expires)) ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS fleet_box (box BINARY(8) NOT NULL PRIMARY KEY, updated BIGINT NOT NULL)"
	" ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS fleet_conn (box BINARY(8) NOT NULL, addr VARBINARY(64) NOT NULL,"
	" n INT NOT NULL, PRIMARY KEY (box, addr)) ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS fleet_rate (box BINARY(8) NOT NULL, addr VARBINARY(64) NOT NULL,"
	" minute BIGINT NOT NULL, n INT NOT NULL, PRIMARY KEY (box, addr, minute), KEY fleet_rate_minute"
	" (minute)) ENGINE=InnoDB",
};

/* sb_hex - s as a hex literal X'...' ("" as X''). */
static void sb_hex(struct strbuf *b, const char *s)
{
	static const char d[] = "0123456789abcdef";
	sb_add(b, "X'", 2);
	for (; *s; s++) {
		char x[2] = { d[(unsigned char)*s >> 4], d[(unsigned char)*s & 15] };
		sb_add(b, x, 2);
	}
	sb_add(b, "'", 1);
}

/* enh_ok - an enhanced status code: digits and dots only. */
static int enh_ok(const char *e)
{
	return strspn(e, "0123456789.") == strlen(e) && strlen(e) < 16;
}

/* fleet_writes - this box's news as statements: its heartbeat, verdicts
 * and counts (absolute values: a retry writes the same again). */
static void fleet_writes(struct strbuf *b, const struct grey_fleet_sync *fs)
{
	sb_printf(b, "INSERT INTO fleet_box VALUES (X'%s', @n) ON DUPLICATE KEY UPDATE updated = @n;", fs->box);
	int rows = 0;
	for (int i = 0; i < fs->nrcpts; i++) {
		const struct grey_fleet_rcpt *r = &fs->rcpts[i];
		if (!enh_ok(r->enh))
			continue;
		sb_printf(b, rows++ ? ", (" : "INSERT INTO fleet_rcpt VALUES (");
		sb_hex(b, r->rcpt);
		sb_printf(b, ", %d, '%s', @n + %lld, @n, X'%s')", r->code, r->enh, (long long)r->ttl, fs->box);
	}
	if (rows)
		sb_printf(b,
			  " ON DUPLICATE KEY UPDATE code = VALUES(code), enh = VALUES(enh),"
			  " expires = VALUES(expires), updated = @n, box = VALUES(box);");
	for (int i = 0; i < fs->nconns; i++) {
		sb_printf(b, i ? ", (X'%s', " : "INSERT INTO fleet_conn VALUES (X'%s', ", fs->box);
		sb_hex(b, fs->conns[i].addr);
		sb_printf(b, ", %d)", fs->conns[i].n);
		if (i == fs->nconns - 1)
			sb_printf(b,
				  " ON DUPLICATE KEY UPDATE n = VALUES(n);"
				  "DELETE FROM fleet_conn WHERE box = X'%s' AND n = 0;",
				  fs->box);
	}
	for (int i = 0; i < fs->nrates; i++) {
		sb_printf(b, i ? ", (X'%s', " : "INSERT INTO fleet_rate VALUES (X'%s', ", fs->box);
		sb_hex(b, fs->rates[i].addr);
		sb_printf(b, ", %lld, %d)", (long long)fs->minute, fs->rates[i].n);
		if (i == fs->nrates - 1)
			sb_printf(b, " ON DUPLICATE KEY UPDATE n = GREATEST(n, VALUES(n));");
	}
	/* Each box clears its own old minutes; expired verdicts go too. */
	sb_printf(b,
		  "DELETE FROM fleet_rate WHERE box = X'%s' AND minute < %lld;"
		  "DELETE FROM fleet_rcpt WHERE expires <= @n LIMIT 1000;",
		  fs->box, (long long)fs->minute - 1);
}

/* fleet_row - one row of the reads: a tag, then its fields. */
static void fleet_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	struct grey_fleet_sync *fs = arg;
	if (nf < 5 || !r[0] || !r[1])
		return;
	switch (r[0][0]) {
	case 'n': fs->now = strtoll(r[1], NULL, 10); break;
	case 'r':
		if (r[2] && r[3] && r[4] && fs->rcpt_in)
			fs->rcpt_in(fs->arg, r[1], atoi(r[2]), r[3], strtoll(r[4], NULL, 10));
		break;
	case 'c':
		if (r[2] && fs->conn_in)
			fs->conn_in(fs->arg, r[1], atoi(r[2]));
		break;
	case 'm':
		if (r[2] && fs->rate_in)
			fs->rate_in(fs->arg, r[1], atoi(r[2]));
		break;
	}
}

/* fleet_call - one try of a sync: the writes, then what the other boxes
 * wrote, in one multi-statement round trip. */
static int fleet_call(struct my_store *s, void *arg, char *err, size_t errlen)
{
	struct grey_fleet_sync *fs = arg;
	if (!s->fleet_ready) {
		if (!s->db && my_connect(s, err, errlen) < 0)
			return -1;
		for (size_t i = 0; i < sizeof my_fleet_schema / sizeof my_fleet_schema[0]; i++)
			if (my_setup_query(s->db, my_fleet_schema[i])) {
				snprintf(err, errlen, "mysql: fleet schema: %s", mysql_error(s->db));
				s->fail = my_classify(mysql_errno(s->db));
				my_disconnect(s);
				return -1;
			}
		s->fleet_ready = 1;
	}
	struct strbuf b = { 0 };
	sb_printf(&b, MY_NOW);
	fleet_writes(&b, fs);
	if (fs->want_rcpts)
		sb_printf(&b,
			  "SELECT 'r', k, code, enh, expires - @n FROM fleet_rcpt WHERE updated > %lld"
			  " AND expires > @n AND box <> X'%s';",
			  (long long)fs->rcpt_since, fs->box);
	if (fs->want_limits)
		sb_printf(
		    &b,
		    "SELECT 'c', c.addr, SUM(c.n), 0, 0 FROM fleet_conn c JOIN fleet_box x ON x.box = c.box"
		    " WHERE c.box <> X'%s' AND x.updated > @n - %lld AND c.n > 0 GROUP BY c.addr;"
		    "SELECT 'm', addr, SUM(n), 0, 0 FROM fleet_rate WHERE minute = %lld AND box <> X'%s'"
		    " GROUP BY addr;",
		    fs->box, (long long)fs->stale, (long long)fs->minute, fs->box);
	sb_printf(&b, "SELECT 'n', @n, 0, 0, 0");
	int rc = my_run(s, sb_str(&b), fleet_row, fs, err, errlen);
	sb_free(&b);
	return rc;
}

/* my_fleet_sync - a sync, tried as a whole. */
static int my_fleet_sync(struct grey_store *gs, struct grey_fleet_sync *fs, char *err, size_t errlen)
{
	return my_retry((struct my_store *)gs, fleet_call, fs, err, errlen);
}

/* my_close - close the connection. */
static void my_close(struct grey_store *gs)
{
	struct my_store *s = (struct my_store *)gs;
	my_disconnect(s);
	free(s);
}

static const struct grey_store_ops my_ops = {
	.check = my_check,
	.check_batch = my_check_batch,
	.awl_pass = my_awl_pass,
	.expire = my_expire,
	.close = my_close,
	.fleet_sync = my_fleet_sync,
};

/* grey_mysql_check - the .cf file parses; a server that does not answer
 * is only a warning (an outage must not stop a box from restarting). */
int grey_mysql_check(const char *cf_path, char *err, size_t errlen)
{
	pthread_once(&my_once, my_lib_init);
	struct my_store *s = xcalloc(1, sizeof *s);
	int rc = my_cf_parse(s, cf_path, err, errlen);
	if (!rc) {
		char e[256];
		if (my_connect_to(s, 1, e, sizeof e) < 0)
			log_warn("greylist database %s: %s (perimd starts anyway; greylist_fail_action "
				 "applies until it answers)",
				 cf_path, e);
		my_disconnect(s);
	}
	free(s);
	return rc;
}

/* grey_mysql_open - read the .cf file and connect (a server that is down
 * now is no error: every call reconnects until it is back). */
struct grey_store *grey_mysql_open(const char *cf_path, char *err, size_t errlen)
{
	pthread_once(&my_once, my_lib_init);
	struct my_store *s = xcalloc(1, sizeof *s);
	s->base.ops = &my_ops;
	if (my_cf_parse(s, cf_path, err, errlen) < 0) {
		free(s);
		return NULL;
	}
	int shard = (int)(my_random() % MY_SHARDS);
	if (shard)
		snprintf(s->shard, sizeof s->shard, "rows%d", shard);
	else
		snprintf(s->shard, sizeof s->shard, "rows");
	char e[256];
	if (my_connect(s, e, sizeof e) < 0)
		log_warn("greylist database: %s", e);
	return &s->base;
}
