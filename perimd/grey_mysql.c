/*
 * grey_mysql.c - the greylist store on a MySQL/MariaDB server shared by a
 * fleet of MX boxes (Connector/C, blocking: runs on job workers only).
 *
 * Invariants: one connection per worker thread. Time comes from the
 * database (one clock for the whole fleet), fetched in the same round trip
 * as the decision: SET @n, the upsert, and the SELECT of the new row with
 * the network's auto-whitelist count travel as one multi-statement query.
 * MySQL evaluates ON DUPLICATE KEY UPDATE assignments left to right, each
 * seeing the columns already assigned; the order below relies on that
 * (prev first marks a restart, first last of the row's own fields). Keys
 * are written as hex literals we make ourselves; nothing a peer sends is
 * ever part of a statement. A connection error closes the connection, and
 * the call is tried once more on a new one (the server restarted); while
 * the server stays down every call fails fast and greylist_fail_action
 * applies. Expiry runs on one node at a time: a lease row in grey_meta,
 * taken by compare-and-swap (UPDATE ... WHERE until <= now).
 *
 * Abuse bounds (grey.h): a triplet not in the table is inserted only
 * after the network's quota row (gnet) and the row count (grey_meta
 * 'rows': kept by the statements that insert and delete, and recounted by
 * the expiry lease holder each run) allow it. These take a few more round
 * trips, on the path of new triplets only; two nodes racing may both let
 * one more triplet in than the bounds say, never a pass.
 *
 * The .cf file (Postfix mysql_table shape): hosts (tried in order, each
 * "host" or "host:port"), port (3306), user, password, dbname.
 */
#include "grey.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <mysql.h>
#include <errmsg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MY_EXPIRE_LEASE 50000 /* ms a node holds the expiry lease */
#define MY_EVICT_MAX 10000    /* rows evicted for one insert at most */

struct my_store {
	struct grey_store base;
	MYSQL *db;
	char hosts[512], user[128], password[128], dbname[128];
	int port;
	time_t retry_at;     /* no reconnect attempt before (after a failure) */
	int64_t lease_until; /* db clock: this node runs expiry until then */
};

static const char *const my_schema[] = {
	"CREATE TABLE IF NOT EXISTS grey (k BINARY(16) NOT NULL PRIMARY KEY,"
	" first BIGINT NOT NULL, last BIGINT NOT NULL, prev BIGINT NOT NULL,"
	" passed TINYINT NOT NULL, expires BIGINT NOT NULL, net BINARY(16) NULL,"
	" KEY grey_expires (expires), KEY grey_net (net)) ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS gnet (k BINARY(16) NOT NULL PRIMARY KEY,"
	" start BIGINT NOT NULL, cnt BIGINT NOT NULL, over_at BIGINT NOT NULL,"
	" expires BIGINT NOT NULL, KEY gnet_expires (expires), KEY gnet_over (over_at))"
	" ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS awl (k BINARY(16) NOT NULL PRIMARY KEY,"
	" cnt BIGINT NOT NULL, last BIGINT NOT NULL, expires BIGINT NOT NULL,"
	" KEY awl_expires (expires)) ENGINE=InnoDB",
	"CREATE TABLE IF NOT EXISTS grey_meta (name VARCHAR(32) NOT NULL PRIMARY KEY,"
	" until BIGINT NOT NULL) ENGINE=InnoDB",
	"INSERT IGNORE INTO grey_meta VALUES ('expire', 0)",
};

#define MY_NOW "SET @n = CAST(ROUND(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED);"

static pthread_once_t my_once = PTHREAD_ONCE_INIT;

/* my_lib_init - mysql_library_init is not thread-safe: once. */
static void my_lib_init(void)
{
	mysql_library_init(0, NULL, NULL);
}

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
	if (!rc && (!s->hosts[0] || !s->dbname[0])) {
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

/* my_migrate - the net column on a grey table made before it (looked up
 * first: an ALTER TABLE would wait for every open transaction on grey),
 * and the 'rows' row of grey_meta, counted once when missing. */
static int my_migrate(MYSQL *db, char *err, size_t errlen)
{
	int col = my_exists(db,
			    "SELECT 1 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA ="
			    " DATABASE() AND TABLE_NAME = 'grey' AND COLUMN_NAME = 'net'");
	if (col < 0 ||
	    (!col && mysql_query(db, "ALTER TABLE grey ADD COLUMN net BINARY(16) NULL, ADD KEY grey_net (net)") &&
	     mysql_errno(db) != 1060))
		goto fail;
	int rows = my_exists(db, "SELECT 1 FROM grey_meta WHERE name = 'rows'");
	if (rows < 0 ||
	    (!rows && mysql_query(db, "INSERT IGNORE INTO grey_meta SELECT 'rows', COUNT(*) FROM grey")))
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

/* my_connect - try each host in order; create the schema (unless
 * probe: perimd -t only looks). */
static int my_connect_to(struct my_store *s, int probe, char *err, size_t errlen)
{
	time_t now = time(NULL);
	if (now < s->retry_at) {
		snprintf(err, errlen, "mysql: server unreachable (retrying)");
		return -1;
	}
	char hosts[512];
	snprintf(hosts, sizeof hosts, "%s", s->hosts);
	char *save = NULL;
	for (char *h = strtok_r(hosts, ", \t", &save); h; h = strtok_r(NULL, ", \t", &save)) {
		char host[256];
		int port = s->port;
		snprintf(host, sizeof host, "%s", h);
		char *colon = strrchr(host, ':');
		if (colon && !strchr(colon + 1, ']') && strchr(host, ':') == colon) {
			*colon = 0;
			port = atoi(colon + 1);
		}
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
			continue;
		}
		for (size_t i = 0; !probe && i < sizeof my_schema / sizeof my_schema[0]; i++) {
			if (mysql_query(db, my_schema[i])) {
				snprintf(err, errlen, "mysql: schema: %s", mysql_error(db));
				mysql_close(db);
				db = NULL;
				break;
			}
		}
		/* Tables made before the net column get it; the row count
		 * starts as the table's. */
		if (db && !probe && my_migrate(db, err, errlen) < 0) {
			mysql_close(db);
			db = NULL;
		}
		if (!db)
			continue;
		s->db = db;
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

/* my_run - run a multi-statement query; rows of its result sets go to
 * row(arg, row, nfields). Reconnects and tries once more on a lost
 * connection. Returns 0 or -1 with err. */
static int my_run(struct my_store *s, const char *q, void (*row)(void *, MYSQL_ROW, unsigned), void *arg,
		  char *err, size_t errlen)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		if (!s->db && my_connect(s, err, errlen) < 0)
			return -1;
		int failed = 0;
		if (mysql_real_query(s->db, q, strlen(q))) {
			failed = 1;
		} else {
			int st;
			do {
				MYSQL_RES *res = mysql_store_result(s->db);
				if (res) {
					MYSQL_ROW r;
					unsigned nf = mysql_num_fields(res);
					while ((r = mysql_fetch_row(res)))
						if (row)
							row(arg, r, nf);
					mysql_free_result(res);
				} else if (mysql_field_count(s->db)) {
					failed = 1;
					break;
				}
				st = mysql_next_result(s->db);
			} while (st == 0);
			if (st > 0)
				failed = 1;
		}
		if (!failed)
			return 0;
		unsigned e = mysql_errno(s->db);
		snprintf(err, errlen, "mysql: %s", mysql_error(s->db));
		/* Any failure may leave results pending: start afresh. */
		my_disconnect(s);
		if (!is_conn_error(e))
			return -1;
	}
	return -1;
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
				"UPDATE grey_meta SET until = until - GREATEST(@d, 0) WHERE name = 'rows';"
				"SELECT @d",
			 where, (long long)(need - done));
		int64_t v[4] = { 0 };
		if (my_run(s, sql, ints_row, v, err, errlen) < 0)
			return -1;
		done += v[0] > 0 ? v[0] : 0;
	}
	return done;
}

/* my_new - a triplet not in the table: the network's quota, the size
 * bound, then the insert. */
static int my_new(struct my_store *s, const struct grey_query *q, struct grey_answer *a, const char *k,
		  const char *n, char *err, size_t errlen)
{
	char sql[2048];
	int64_t v[4] = { 0 };
	if (q->new_limit > 0 || q->max_entries > 0) {
		char quota[1024] = "";
		if (q->new_limit > 0)
			snprintf(quota, sizeof quota,
				 "INSERT INTO gnet (k, start, cnt, over_at, expires)"
				 " VALUES (X'%s', @n, 1, 0, @n + %lld) ON DUPLICATE KEY UPDATE"
				 " cnt = IF(@n - start >= %lld, 1, cnt + 1),"
				 " start = IF(@n - start >= %lld, @n, start),"
				 " expires = GREATEST(start + %lld, over_at + %lld);"
				 "UPDATE gnet SET over_at = @n, expires = GREATEST(expires, @n + %lld)"
				 " WHERE k = X'%s' AND cnt > %lld;",
				 n, (long long)q->new_interval, (long long)q->new_interval,
				 (long long)q->new_interval, (long long)q->new_interval,
				 (long long)q->max_age, (long long)q->max_age, n, (long long)q->new_limit);
		snprintf(sql, sizeof sql,
			 MY_NOW "%sSELECT (SELECT cnt FROM gnet WHERE k = X'%s'),"
				" (SELECT until FROM grey_meta WHERE name = 'rows')",
			 quota, n);
		if (my_run(s, sql, ints_row, v, err, errlen) < 0)
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
		 MY_NOW
		 "INSERT IGNORE INTO grey (k, first, last, prev, passed, expires, net)"
		 " VALUES (X'%s', @n, @n, 0, 0, @n + %lld, X'%s');"
		 "SET @i = ROW_COUNT();"
		 "UPDATE grey_meta SET until = until + GREATEST(@i, 0) WHERE name = 'rows';" MY_SELECT_ROW,
		 k, (long long)q->max_age, n, n, k);
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

/* my_check - one round trip for a known triplet (the clock, the update,
 * the row); a new one goes on to my_new. */
static int my_check(struct grey_store *gs, const struct grey_query *q, struct grey_answer *a, char *err,
		    size_t errlen)
{
	struct my_store *s = (struct my_store *)gs;
	char k[33], n[33], sql[2048];
	hex(&q->triplet, k);
	hex(&q->net, n);
	snprintf(sql, sizeof sql,
		 MY_NOW "UPDATE grey SET"
			" prev = IF(expires <= @n, 0, last),"
			" passed = IF(prev = 0, 0, IF(passed = 1 OR @n - first >= %lld, 1, 0)),"
			" expires = IF(prev = 0, @n + %lld, IF(passed = 1, @n + %lld, expires)),"
			" first = IF(prev = 0, @n, first),"
			" last = @n WHERE k = X'%s';" MY_SELECT_ROW,
		 (long long)q->delay, (long long)q->max_age, (long long)q->retention, k, n, k);
	memset(a, 0, sizeof *a);
	a->now = -1;
	if (my_run(s, sql, check_row, a, err, errlen) < 0)
		return -1;
	if (a->now < 0) {
		snprintf(err, errlen, "mysql: no answer to the decision");
		return -1;
	}
	if (a->first >= 0)
		return 0;
	a->first = a->now;
	return my_new(s, q, a, k, n, err, errlen);
}

/* count_row - the auto-whitelist count. */
static void count_row(void *arg, MYSQL_ROW r, unsigned nf)
{
	if (nf >= 1 && r[0])
		*(int64_t *)arg = strtoll(r[0], NULL, 10);
}

/* my_awl_pass - count an accepted message (database clock). */
static int my_awl_pass(struct grey_store *gs, const struct grey_key *net, int64_t now, int64_t interval,
		       int64_t retention, int64_t *count, char *err, size_t errlen)
{
	(void)now;
	struct my_store *s = (struct my_store *)gs;
	char n[33], sql[1024];
	hex(net, n);
	snprintf(sql, sizeof sql,
		 MY_NOW "INSERT INTO awl (k, cnt, last, expires) VALUES (X'%s', 1, @n, @n + %lld)"
			" ON DUPLICATE KEY UPDATE"
			" cnt = IF(expires <= @n, 1, IF(@n - last >= %lld, cnt + 1, cnt)),"
			" last = IF(expires <= @n OR @n - last >= %lld, @n, last),"
			" expires = @n + %lld;"
			"SELECT cnt FROM awl WHERE k = X'%s'",
		 n, (long long)retention, (long long)interval, (long long)interval, (long long)retention, n);
	*count = 0;
	return my_run(s, sql, count_row, count, err, errlen);
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

/* my_expire - take the fleet's expiry lease if free, then delete. */
static int my_expire(struct grey_store *gs, int64_t now, int limit, char *err, size_t errlen)
{
	(void)now;
	struct my_store *s = (struct my_store *)gs;
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
	    my_run(s, "UPDATE grey_meta SET until = (SELECT COUNT(*) FROM grey) WHERE name = 'rows'", NULL,
		   NULL, err, errlen) < 0)
		return -1;
	int total = 0;
	const char *tables[3] = { "grey", "awl", "gnet" };
	for (int i = 0; i < 3; i++) {
		int64_t d[4] = { 0 };
		snprintf(sql, sizeof sql,
			 "DELETE FROM %s WHERE expires <= %lld LIMIT %d; SET @d = ROW_COUNT();%s SELECT @d",
			 tables[i], (long long)v[1], limit,
			 i == 0 ? " UPDATE grey_meta SET until = until - GREATEST(@d, 0) WHERE name = 'rows';"
				: "");
		if (my_run(s, sql, ints_row, d, err, errlen) < 0)
			return -1;
		if (d[0] > total)
			total = (int)d[0];
	}
	return total;
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
	.awl_pass = my_awl_pass,
	.expire = my_expire,
	.close = my_close,
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
	char e[256];
	if (my_connect(s, e, sizeof e) < 0)
		log_warn("greylist database: %s", e);
	return &s->base;
}
