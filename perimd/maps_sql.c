/*
 * maps_sql.c - sqlite: and mysql: maps: a .cf file of settings (Postfix
 * sqlite_table(5) / mysql_table(5) shape), a pool of connections per map,
 * each with its prepared statement.
 *
 * Invariants: the key only ever reaches the database as a bound parameter
 * ('%s', '%u', '%d' in the query, quoted or not, become '?'), never as SQL
 * text. A connection is used by one thread at a time: it is taken from the
 * pool under the mutex and given back after a good lookup; after an error
 * it is closed, and a failed lookup on a pooled connection is retried once
 * on a fresh one (the server may have closed an idle connection). Every
 * wait on the server is bounded by `timeout`.
 */
#include "maps_sql.h"
#include "conf.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <mysql.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SQL_MAX_PARAMS 8
#define SQL_POOL_MAX 8

enum sql_type { SQL_SQLITE, SQL_MYSQL };

struct sql_conn {
	struct sql_conn *next;
	sqlite3 *lite;
	sqlite3_stmt *lst;
	MYSQL *my;
	MYSQL_STMT *mst;
};

struct map_sql {
	enum sql_type type;
	char *path;
	char *dbpath, *hosts, *user, *password, *dbname, *query;
	long long port, timeout_ms, cache_ttl_ms;
	char *sql;                   /* the query with '?' */
	char params[SQL_MAX_PARAMS]; /* 's', 'u' or 'd' per '?' */
	int nparams;
	pthread_mutex_t mu;
	struct sql_conn *idle;
	int nidle;
};

/* cf_set - one "name = value" setting; 0 or -1 for an unknown name. */
static int cf_set(struct map_sql *s, const char *name, const char *value)
{
	char **str = NULL;
	long long *num = NULL;
	int is_time = 0;
	if (!strcmp(name, "dbpath"))
		str = &s->dbpath;
	else if (!strcmp(name, "hosts"))
		str = &s->hosts;
	else if (!strcmp(name, "user"))
		str = &s->user;
	else if (!strcmp(name, "password"))
		str = &s->password;
	else if (!strcmp(name, "dbname"))
		str = &s->dbname;
	else if (!strcmp(name, "query"))
		str = &s->query;
	else if (!strcmp(name, "port"))
		num = &s->port;
	else if (!strcmp(name, "timeout"))
		num = &s->timeout_ms, is_time = 1;
	else if (!strcmp(name, "cache_ttl"))
		num = &s->cache_ttl_ms, is_time = 1;
	else
		return -1;
	if (str) {
		free(*str);
		*str = xstrdup(value);
		return 0;
	}
	if (is_time)
		return conf_parse_time(value, num);
	char *end;
	errno = 0;
	*num = strtoll(value, &end, 10);
	return (*value && !*end && !errno && *num >= 0) ? 0 : -1;
}

/* cf_load - read the .cf file; 0 or -1 with err "PATH:LINE: reason". */
static int cf_load(struct map_sql *s, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	char *line = NULL;
	size_t cap = 0;
	int lineno = 0, rc = 0;
	while (getline(&line, &cap, f) >= 0) {
		lineno++;
		char *t = line + strspn(line, " \t");
		size_t n = strcspn(t, "\r\n");
		t[n] = 0;
		while (n > 0 && isspace((unsigned char)t[n - 1]))
			t[--n] = 0;
		if (!*t || *t == '#')
			continue;
		char *eq = strchr(t, '=');
		if (!eq) {
			snprintf(err, errlen, "%s:%d: expected \"name = value\"", path, lineno);
			rc = -1;
			break;
		}
		char *ne = eq;
		while (ne > t && isspace((unsigned char)ne[-1]))
			ne--;
		*ne = 0;
		char *v = eq + 1 + strspn(eq + 1, " \t");
		if (cf_set(s, t, v) < 0) {
			snprintf(err, errlen, "%s:%d: %s: unknown setting or bad value", path, lineno, t);
			rc = -1;
			break;
		}
	}
	free(line);
	fclose(f);
	return rc;
}

/* query_compile - '%s' / %s / "%s" (and %u, %d) into '?', in order. */
static int query_compile(struct map_sql *s, char *err, size_t errlen)
{
	const char *q = s->query;
	size_t n = strlen(q);
	char *out = xmalloc(n + 1), *o = out;
	s->nparams = 0;
	for (size_t i = 0; i < n; i++) {
		int quoted = (q[i] == '\'' || q[i] == '"') && i + 3 < n + 0 && q[i + 1] == '%' &&
		    strchr("sud", q[i + 2]) && q[i + 3] == q[i];
		if (q[i] != '%' && !quoted) {
			*o++ = q[i];
			continue;
		}
		if (!quoted && q[i + 1] == '%') {
			*o++ = '%';
			i++;
			continue;
		}
		char kind = quoted ? q[i + 2] : q[i + 1];
		if (!kind || !strchr("sud", kind)) {
			snprintf(err, errlen, "%s: query: unknown expansion %%%c", s->path, kind ? kind : ' ');
			free(out);
			return -1;
		}
		if (s->nparams == SQL_MAX_PARAMS) {
			snprintf(err, errlen, "%s: query: too many expansions", s->path);
			free(out);
			return -1;
		}
		s->params[s->nparams++] = kind;
		*o++ = '?';
		i += quoted ? 3 : 1;
	}
	*o = 0;
	s->sql = out;
	if (s->nparams == 0) {
		snprintf(err, errlen, "%s: query: no %%s in the query", s->path);
		return -1;
	}
	return 0;
}

/* param_text - the part of key a parameter binds: whole, local or domain. */
static void param_text(char kind, const char *key, size_t keylen, const char **p, size_t *n)
{
	const char *at = memchr(key, '@', keylen);
	if (kind == 'u') {
		*p = key;
		*n = at ? (size_t)(at - key) : keylen;
	} else if (kind == 'd') {
		*p = at ? at + 1 : key + keylen;
		*n = at ? keylen - (size_t)(at + 1 - key) : 0;
	} else {
		*p = key;
		*n = keylen;
	}
}

/* conn_close - close one connection. */
static void conn_close(struct sql_conn *c)
{
	if (c->lst)
		sqlite3_finalize(c->lst);
	if (c->lite)
		sqlite3_close(c->lite);
	if (c->mst)
		mysql_stmt_close(c->mst);
	if (c->my)
		mysql_close(c->my);
	free(c);
}

static pthread_once_t my_once = PTHREAD_ONCE_INIT;

/* my_init - the client library, once per process. */
static void my_init(void)
{
	mysql_library_init(0, NULL, NULL);
}

/* conn_open - a new connection with the statement prepared; NULL + err. */
static struct sql_conn *conn_open(struct map_sql *s, char *err, size_t errlen)
{
	struct sql_conn *c = xcalloc(1, sizeof *c);
	if (s->type == SQL_SQLITE) {
		if (sqlite3_open_v2(s->dbpath, &c->lite, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL) !=
			SQLITE_OK ||
		    sqlite3_prepare_v2(c->lite, s->sql, -1, &c->lst, NULL) != SQLITE_OK) {
			snprintf(err, errlen, "%s: %s", s->dbpath,
				 c->lite ? sqlite3_errmsg(c->lite) : "cannot open");
			conn_close(c);
			return NULL;
		}
		sqlite3_busy_timeout(c->lite, (int)s->timeout_ms);
		if (sqlite3_bind_parameter_count(c->lst) != s->nparams) {
			/* e.g. '%u@%d' inside one literal: no parameters at all */
			snprintf(err, errlen,
				 "%s: query: %%s, %%u and %%d must each stand alone "
				 "(quoted or not)",
				 s->path);
			conn_close(c);
			return NULL;
		}
		return c;
	}
	pthread_once(&my_once, my_init);
	char hosts[512];
	snprintf(hosts, sizeof hosts, "%s", s->hosts);
	unsigned tmo = (unsigned)((s->timeout_ms + 999) / 1000);
	snprintf(err, errlen, "%s: no hosts", s->path);
	for (char *save = NULL, *h = strtok_r(hosts, " ,\t", &save); h; h = strtok_r(NULL, " ,\t", &save)) {
		c->my = mysql_init(NULL);
		if (!c->my)
			fatal("out of memory");
		mysql_options(c->my, MYSQL_OPT_CONNECT_TIMEOUT, &tmo);
		mysql_options(c->my, MYSQL_OPT_READ_TIMEOUT, &tmo);
		mysql_options(c->my, MYSQL_OPT_WRITE_TIMEOUT, &tmo);
		const char *host = h, *sock = NULL;
		unsigned port = (unsigned)s->port;
		char hbuf[256];
		if (!strncmp(h, "unix:", 5)) {
			sock = h + 5;
			host = "localhost";
		} else {
			snprintf(hbuf, sizeof hbuf, "%s", h);
			char *colon = strrchr(hbuf, ':');
			if (colon && !strchr(hbuf, ']') && strchr(hbuf, ':') == colon) {
				*colon = 0;
				port = (unsigned)atoi(colon + 1);
			}
			host = hbuf;
		}
		if (mysql_real_connect(c->my, host, s->user, s->password, s->dbname, port, sock, 0) &&
		    (c->mst = mysql_stmt_init(c->my)) &&
		    mysql_stmt_prepare(c->mst, s->sql, strlen(s->sql)) == 0 &&
		    mysql_stmt_param_count(c->mst) == (unsigned long)s->nparams)
			return c;
		snprintf(err, errlen, "mysql %s: %s", h,
			 c->mst ? mysql_stmt_error(c->mst) : mysql_error(c->my));
		if (c->mst)
			mysql_stmt_close(c->mst);
		c->mst = NULL;
		mysql_close(c->my);
		c->my = NULL;
	}
	free(c);
	return NULL;
}

/* lite_lookup - one key on a SQLite connection: 1, 0 or -1. */
static int lite_lookup(struct map_sql *s, struct sql_conn *c, const char *key, size_t keylen, char *val,
		       size_t vallen, char *err, size_t errlen)
{
	sqlite3_reset(c->lst);
	sqlite3_clear_bindings(c->lst);
	for (int i = 0; i < s->nparams; i++) {
		const char *p;
		size_t n;
		param_text(s->params[i], key, keylen, &p, &n);
		sqlite3_bind_text(c->lst, i + 1, p, (int)n, SQLITE_TRANSIENT);
	}
	int rc = sqlite3_step(c->lst);
	if (rc == SQLITE_ROW) {
		const unsigned char *v = sqlite3_column_text(c->lst, 0);
		snprintf(val, vallen, "%s", v ? (const char *)v : "");
		sqlite3_reset(c->lst);
		return 1;
	}
	if (rc == SQLITE_DONE) {
		sqlite3_reset(c->lst);
		return 0;
	}
	snprintf(err, errlen, "%s: %s", s->dbpath, sqlite3_errmsg(c->lite));
	sqlite3_reset(c->lst);
	return -1;
}

/* my_lookup - one key on a MariaDB connection: 1, 0 or -1. */
static int my_lookup(struct map_sql *s, struct sql_conn *c, const char *key, size_t keylen, char *val,
		     size_t vallen, char *err, size_t errlen)
{
	MYSQL_BIND in[SQL_MAX_PARAMS], out;
	unsigned long inlen[SQL_MAX_PARAMS], outlen = 0;
	my_bool isnull = 0;
	memset(in, 0, sizeof in);
	memset(&out, 0, sizeof out);
	for (int i = 0; i < s->nparams; i++) {
		const char *p;
		size_t n;
		param_text(s->params[i], key, keylen, &p, &n);
		inlen[i] = (unsigned long)n;
		in[i].buffer_type = MYSQL_TYPE_STRING;
		in[i].buffer = (void *)p;
		in[i].buffer_length = (unsigned long)n;
		in[i].length = &inlen[i];
	}
	out.buffer_type = MYSQL_TYPE_STRING;
	out.buffer = val;
	out.buffer_length = (unsigned long)vallen;
	out.length = &outlen;
	out.is_null = &isnull;
	if (mysql_stmt_bind_param(c->mst, in) || mysql_stmt_execute(c->mst) ||
	    mysql_stmt_bind_result(c->mst, &out)) {
		snprintf(err, errlen, "mysql: %s", mysql_stmt_error(c->mst));
		return -1;
	}
	int rc = mysql_stmt_fetch(c->mst);
	int result;
	if (rc == 0 || rc == MYSQL_DATA_TRUNCATED) {
		size_t n = outlen < vallen ? outlen : vallen - 1;
		val[isnull ? 0 : n] = 0;
		result = 1;
	} else if (rc == MYSQL_NO_DATA) {
		val[0] = 0;
		result = 0;
	} else {
		snprintf(err, errlen, "mysql: %s", mysql_stmt_error(c->mst));
		return -1;
	}
	mysql_stmt_free_result(c->mst);
	while (result == 1 && mysql_stmt_fetch(c->mst) == 0)
		;
	mysql_stmt_reset(c->mst);
	return result;
}

/* map_sql_lookup - see maps_sql.h. */
int map_sql_lookup(struct map_sql *s, const char *key, size_t keylen, char *val, size_t vallen, char *err,
		   size_t errlen)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		pthread_mutex_lock(&s->mu);
		struct sql_conn *c = s->idle;
		if (c) {
			s->idle = c->next;
			s->nidle--;
		}
		pthread_mutex_unlock(&s->mu);
		int pooled = c != NULL;
		if (!c && !(c = conn_open(s, err, errlen)))
			return -1;
		int r = s->type == SQL_SQLITE ? lite_lookup(s, c, key, keylen, val, vallen, err, errlen)
					      : my_lookup(s, c, key, keylen, val, vallen, err, errlen);
		if (r >= 0) {
			pthread_mutex_lock(&s->mu);
			if (s->nidle < SQL_POOL_MAX) {
				c->next = s->idle;
				s->idle = c;
				s->nidle++;
				c = NULL;
			}
			pthread_mutex_unlock(&s->mu);
			if (c)
				conn_close(c);
			return r;
		}
		conn_close(c);
		if (!pooled)
			return -1;
	}
	return -1;
}

/* map_sql_open - see maps_sql.h. */
struct map_sql *map_sql_open(const char *type, const char *path, char *err, size_t errlen)
{
	struct map_sql *s = xcalloc(1, sizeof *s);
	s->type = !strcmp(type, "mysql") ? SQL_MYSQL : SQL_SQLITE;
	s->path = xstrdup(path);
	s->port = 3306;
	s->timeout_ms = 5000;
	s->cache_ttl_ms = s->type == SQL_MYSQL ? 60000 : 0;
	pthread_mutex_init(&s->mu, NULL);
	size_t pl = strlen(path);
	int is_cf = pl > 3 && !strcmp(path + pl - 3, ".cf");
	if (s->type == SQL_MYSQL && !is_cf) {
		snprintf(err, errlen, "%s: a mysql: map is a .cf file", path);
		goto fail;
	}
	if (is_cf) {
		if (cf_load(s, path, err, errlen) < 0)
			goto fail;
	} else {
		s->dbpath = xstrdup(path);
	}
	if (!s->query)
		s->query = xstrdup("SELECT value FROM map WHERE key = '%s'");
	if (s->type == SQL_SQLITE && !s->dbpath) {
		snprintf(err, errlen, "%s: dbpath is not set", path);
		goto fail;
	}
	if (s->type == SQL_MYSQL && (!s->hosts || !s->dbname)) {
		snprintf(err, errlen, "%s: hosts and dbname must be set", path);
		goto fail;
	}
	if (query_compile(s, err, errlen) < 0)
		goto fail;
	if (s->type == SQL_SQLITE) {
		/* A local file: check it opens and the query compiles now. */
		struct sql_conn *c = conn_open(s, err, errlen);
		if (!c)
			goto fail;
		s->idle = c;
		s->nidle = 1;
	}
	return s;
fail:
	map_sql_free(s);
	return NULL;
}

/* map_sql_cache_ttl - see maps_sql.h. */
long long map_sql_cache_ttl(const struct map_sql *s)
{
	return s->cache_ttl_ms;
}

/* map_sql_free - close the pool, free the settings. */
void map_sql_free(struct map_sql *s)
{
	if (!s)
		return;
	while (s->idle) {
		struct sql_conn *c = s->idle;
		s->idle = c->next;
		conn_close(c);
	}
	pthread_mutex_destroy(&s->mu);
	free(s->path);
	free(s->dbpath);
	free(s->hosts);
	free(s->user);
	free(s->password);
	free(s->dbname);
	free(s->query);
	free(s->sql);
	free(s);
}
