/*
 * tls.c - BearSSL contexts: PEM loading of the server's certificate chain
 * and RSA or EC key, the client's trust anchors, and per-connection
 * engines restricted to TLS 1.2 with ECDHE and AEAD suites.
 *
 * Invariants:
 * - struct tls_server / struct tls_client are never modified after they
 *   were loaded; the current pair is swapped under cur_mu, and each holder
 *   (a connection) keeps its own reference, so an old pair is freed when
 *   its last connection ends.
 * - A failed load changes nothing: tls_configure() builds everything
 *   first and installs only when all of it succeeded.
 * - An engine is seeded from getrandom() before its first use and never
 *   allocates; its buffer lives inside struct tls, allocated only for
 *   connections that start TLS.
 * - The session resumption cache is per loop (no lock): a session is
 *   resumed when the client comes back on the same io thread.
 */
#include "tls.h"
#include "conf.h"
#include "ev.h"
#include "log.h"
#include "stats.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PEM_FILE_MAX (1024 * 1024)
#define TLS_CACHE_BYTES (100 * 1000) /* 1000 sessions of 100 bytes per loop */

/* TLS 1.2, forward secrecy and AEAD only, server's order (RFC 7525 §4.2). */
static const uint16_t TLS_SUITES[] = {
	BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,       BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,       BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
};

static const struct {
	uint16_t id;
	const char *name;
} SUITE_NAMES[] = {
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ECDHE-ECDSA-AES128-GCM-SHA256" },
	{ BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "ECDHE-RSA-AES128-GCM-SHA256" },
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "ECDHE-ECDSA-AES256-GCM-SHA384" },
	{ BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "ECDHE-RSA-AES256-GCM-SHA384" },
	{ BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-ECDSA-CHACHA20-POLY1305" },
	{ BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-RSA-CHACHA20-POLY1305" },
};

struct tls_server {
	int refs;
	br_x509_certificate *chain;
	size_t nchain;
	int key_type;                 /* BR_KEYTYPE_RSA or BR_KEYTYPE_EC */
	int issuer_type;              /* key type of the certificate's signer */
	br_skey_decoder_context skey; /* holds the private key */
	int64_t not_after;            /* the first certificate's notAfter, Unix time */
};

struct tls_client {
	int refs;
	br_x509_trust_anchor *tas;
	size_t ntas;
};

/* An X.509 "engine" for encrypt/may: takes the server's key from its
 * certificate and checks nothing else (RFC 7435 opportunistic security). */
struct x509_any {
	const br_x509_class *vtable;
	br_x509_decoder_context dc;
	int ncert;
};

struct tls_x509 {
	union {
		br_x509_minimal_context min;
		struct x509_any any;
	} u;
};

struct tls {
	int is_server;
	struct tls_server *ts;
	struct tls_client *tc;
	struct tls_x509 *x; /* client only */
	union {
		br_ssl_server_context s;
		br_ssl_client_context c;
	} u;
	unsigned char buf[BR_SSL_BUFSIZE_BIDI];
};

struct tls_cache {
	br_ssl_session_cache_lru lru;
	unsigned char store[TLS_CACHE_BYTES];
};

static pthread_mutex_t cur_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t stats_once = PTHREAD_ONCE_INIT;

/* stats_declare - the TLS metric families (once). */
static void stats_declare(void)
{
	stats_family_declare("perimd_tls_sessions_total", "counter",
			     "TLS handshakes completed, by side (client: STARTTLS from SMTP clients)");
	stats_family_declare("perimd_tls_handshake_failures_total", "counter",
			     "failed TLS handshakes with SMTP clients, by reason");
	stats_family_declare("perimd_relay_tls_handshake_failures_total", "counter",
			     "failed TLS handshakes with backends, by reason");
	stats_family_declare("perimd_tls_memory_bytes", "gauge",
			     "memory held by TLS engines of open connections");
	stats_family_declare("perimd_tls_certificate_expiry_timestamp_seconds", "gauge",
			     "notAfter of the loaded server certificate (smtpd_tls_cert_file), Unix time");
}

/* tls_count - one handshake outcome into the statistics. */
void tls_count(int server, int ok, const char *reason)
{
	pthread_once(&stats_once, stats_declare);
	if (ok)
		stats_family_add("perimd_tls_sessions_total", "side", server ? "client" : "backend", 1);
	else
		stats_family_add(server ? "perimd_tls_handshake_failures_total"
					: "perimd_relay_tls_handshake_failures_total",
				 "reason", reason, 1);
}

/* tls_memory - account an engine's memory (+1 made, -1 freed). */
static void tls_memory(struct tls *t, int sign)
{
	int64_t n = (int64_t)sizeof *t + (t->x ? (int64_t)sizeof *t->x : 0);
	pthread_once(&stats_once, stats_declare);
	stats_family_add("perimd_tls_memory_bytes", "side", t->is_server ? "client" : "backend", sign * n);
}
static struct tls_server *cur_server;
static struct tls_client *cur_client;

/* ---- files and PEM ------------------------------------------------------ */

struct pem_obj {
	char name[128];
	unsigned char *data;
	size_t len, cap;
};

/* read_file - the whole (small) file, NUL-terminated; NULL with err. */
static unsigned char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size > PEM_FILE_MAX) {
		snprintf(err, errlen, "%s: %s", path, errno ? strerror(errno) : "file too large");
		close(fd);
		return NULL;
	}
	unsigned char *buf = xmalloc((size_t)st.st_size + 2);
	size_t n = 0;
	while (n < (size_t)st.st_size) {
		ssize_t k = read(fd, buf + n, (size_t)st.st_size - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			snprintf(err, errlen, "%s: %s", path, k < 0 ? strerror(errno) : "short read");
			close(fd);
			free(buf);
			return NULL;
		}
		n += (size_t)k;
	}
	close(fd);
	buf[n] = '\n'; /* BearSSL needs the END line terminated */
	buf[n + 1] = 0;
	*len = n + 1;
	return buf;
}

/* pem_append - PEM decoder sink: grow the current object. */
static void pem_append(void *ctx, const void *data, size_t len)
{
	struct pem_obj *o = ctx;
	if (o->cap - o->len < len) {
		while (o->cap - o->len < len)
			o->cap = o->cap ? 2 * o->cap : 2048;
		o->data = xrealloc(o->data, o->cap);
	}
	memcpy(o->data + o->len, data, len);
	o->len += len;
}

/* pem_free - objects from pem_read. */
static void pem_free(struct pem_obj *objs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(objs[i].data);
	free(objs);
}

/* pem_read - every object of a PEM file; -1 with err. */
static int pem_read(const char *path, struct pem_obj **out, size_t *nout, char *err, size_t errlen)
{
	size_t len;
	unsigned char *buf = read_file(path, &len, err, errlen);
	if (!buf)
		return -1;
	br_pem_decoder_context pc;
	br_pem_decoder_init(&pc);
	struct pem_obj *objs = NULL;
	size_t n = 0, off = 0;
	int inobj = 0, rc = 0;
	while (off < len) {
		off += br_pem_decoder_push(&pc, buf + off, len - off);
		int ev = br_pem_decoder_event(&pc);
		if (ev == BR_PEM_BEGIN_OBJ) {
			objs = xrealloc(objs, (n + 1) * sizeof *objs);
			memset(&objs[n], 0, sizeof objs[n]);
			snprintf(objs[n].name, sizeof objs[n].name, "%s", br_pem_decoder_name(&pc));
			br_pem_decoder_setdest(&pc, pem_append, &objs[n]);
			n++;
			inobj = 1;
		} else if (ev == BR_PEM_END_OBJ) {
			inobj = 0;
		} else if (ev == BR_PEM_ERROR) {
			snprintf(err, errlen, "%s: not a valid PEM file", path);
			rc = -1;
			break;
		}
	}
	if (rc == 0 && inobj) {
		snprintf(err, errlen, "%s: unterminated PEM object", path);
		rc = -1;
	}
	if (rc == 0 && n == 0) {
		snprintf(err, errlen, "%s: no PEM object found", path);
		rc = -1;
	}
	free(buf);
	if (rc < 0) {
		pem_free(objs, n);
		return -1;
	}
	*out = objs;
	*nout = n;
	return 0;
}

/* is_cert_name - a PEM label of a certificate. */
static int is_cert_name(const char *name)
{
	return !strcmp(name, "CERTIFICATE") || !strcmp(name, "X509 CERTIFICATE");
}

/* ---- server credentials ------------------------------------------------- */

/* server_free - drop a tls_server (refs reached 0). */
static void server_free(struct tls_server *ts)
{
	if (!ts)
		return;
	for (size_t i = 0; i < ts->nchain; i++)
		free(ts->chain[i].data);
	free(ts->chain);
	free(ts);
}

/* strip0 - skip leading zero bytes of a big-endian integer. */
static const unsigned char *strip0(const unsigned char *p, size_t *len)
{
	while (*len > 0 && *p == 0) {
		p++;
		(*len)--;
	}
	return p;
}

/* key_matches - does the private key belong to the certificate's public key? */
static int key_matches(struct tls_server *ts, const br_x509_pkey *pk)
{
	if (pk->key_type != ts->key_type)
		return 0;
	if (ts->key_type == BR_KEYTYPE_RSA) {
		const br_rsa_private_key *sk = br_skey_decoder_get_rsa(&ts->skey);
		br_rsa_compute_modulus cm = br_rsa_compute_modulus_get_default();
		unsigned char n[1024];
		size_t nlen = cm(NULL, sk);
		if (nlen == 0 || nlen > sizeof n || cm(n, sk) != nlen)
			return 0;
		size_t l1 = nlen, l2 = pk->key.rsa.nlen;
		const unsigned char *a = strip0(n, &l1), *b = strip0(pk->key.rsa.n, &l2);
		return l1 == l2 && !memcmp(a, b, l1);
	}
	const br_ec_private_key *sk = br_skey_decoder_get_ec(&ts->skey);
	unsigned char q[BR_EC_KBUF_PUB_MAX_SIZE];
	br_ec_public_key pub;
	size_t ql = br_ec_compute_pub(br_ec_get_default(), &pub, q, sk);
	return ql && sk->curve == pk->key.ec.curve && ql == pk->key.ec.qlen && !memcmp(q, pk->key.ec.q, ql);
}

/* err_param - prefix an error with the parameter that named the file, so
 * `perimd -t` and a refused reload say which setting to fix. */
static void err_param(char *err, size_t errlen, const char *param)
{
	char tmp[1024];
	snprintf(tmp, sizeof tmp, "%s", err);
	snprintf(err, errlen, "%s: %s", param, tmp);
}

/* server_load - certificate chain and key; NULL with err. */
static struct tls_server *server_load(const char *certf, const char *keyf, char *err, size_t errlen)
{
	struct pem_obj *objs;
	size_t n;
	const char *param = "smtpd_tls_cert_file";
	if (pem_read(certf, &objs, &n, err, errlen) < 0) {
		err_param(err, errlen, param);
		return NULL;
	}
	struct tls_server *ts = xcalloc(1, sizeof *ts);
	ts->refs = 1;
	for (size_t i = 0; i < n; i++) {
		if (!is_cert_name(objs[i].name))
			continue;
		ts->chain = xrealloc(ts->chain, (ts->nchain + 1) * sizeof *ts->chain);
		ts->chain[ts->nchain].data = objs[i].data;
		ts->chain[ts->nchain].data_len = objs[i].len;
		ts->nchain++;
		objs[i].data = NULL;
	}
	pem_free(objs, n);
	if (ts->nchain == 0) {
		snprintf(err, errlen, "%s: no CERTIFICATE in the file", certf);
		goto fail;
	}
	param = "smtpd_tls_key_file";
	if (pem_read(keyf, &objs, &n, err, errlen) < 0)
		goto fail;
	int found = 0;
	for (size_t i = 0; i < n && !found; i++) {
		if (strcmp(objs[i].name, "RSA PRIVATE KEY") && strcmp(objs[i].name, "EC PRIVATE KEY") &&
		    strcmp(objs[i].name, "PRIVATE KEY"))
			continue;
		found = 1;
		br_skey_decoder_init(&ts->skey);
		br_skey_decoder_push(&ts->skey, objs[i].data, objs[i].len);
		int e = br_skey_decoder_last_error(&ts->skey);
		if (e) {
			snprintf(err, errlen,
				 "%s: cannot decode the private key (error %d; RSA or EC keys only)", keyf, e);
			pem_free(objs, n);
			goto fail;
		}
		ts->key_type = br_skey_decoder_key_type(&ts->skey);
	}
	pem_free(objs, n);
	if (!found) {
		snprintf(err, errlen, "%s: no RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY in the file",
			 keyf);
		goto fail;
	}
	/* The first certificate is ours: its key must match, and its signer's
	 * key type selects BearSSL's static-ECDH variants. */
	br_x509_decoder_context *dc = xmalloc(sizeof *dc);
	br_x509_decoder_init(dc, NULL, NULL);
	br_x509_decoder_push(dc, ts->chain[0].data, ts->chain[0].data_len);
	const br_x509_pkey *pk = br_x509_decoder_get_pkey(dc);
	if (!pk) {
		param = "smtpd_tls_cert_file";
		snprintf(err, errlen, "%s: cannot decode the first certificate (error %d)", certf,
			 br_x509_decoder_last_error(dc));
		free(dc);
		goto fail;
	}
	if (!key_matches(ts, pk)) {
		snprintf(err, errlen, "%s does not match the certificate in %s", keyf, certf);
		free(dc);
		goto fail;
	}
	ts->issuer_type = br_x509_decoder_get_signer_key_type(dc);
	if (ts->issuer_type != BR_KEYTYPE_RSA && ts->issuer_type != BR_KEYTYPE_EC)
		ts->issuer_type = ts->key_type;
	/* BearSSL counts days from 1 January of year 0; 719528 of them end
	 * on 1 January 1970 (as its own x509_minimal.c converts time()). */
	ts->not_after = ((int64_t)dc->notafter_days - 719528) * 86400 + (int64_t)dc->notafter_seconds;
	free(dc);
	return ts;
fail:
	err_param(err, errlen, param);
	server_free(ts);
	return NULL;
}

/* ---- client trust anchors ----------------------------------------------- */

/* client_free - drop a tls_client. */
static void client_free(struct tls_client *tc)
{
	if (!tc)
		return;
	for (size_t i = 0; i < tc->ntas; i++) {
		br_x509_trust_anchor *ta = &tc->tas[i];
		free(ta->dn.data);
		if (ta->pkey.key_type == BR_KEYTYPE_RSA) {
			free(ta->pkey.key.rsa.n);
			free(ta->pkey.key.rsa.e);
		} else {
			free(ta->pkey.key.ec.q);
		}
	}
	free(tc->tas);
	free(tc);
}

/* dup_bytes - a malloc'd copy. */
static unsigned char *dup_bytes(const unsigned char *p, size_t n)
{
	unsigned char *d = xmalloc(n ? n : 1);
	memcpy(d, p, n);
	return d;
}

/* client_load - trust anchors from a PEM file ("" = none); NULL with err. */
static struct tls_client *client_load(const char *cafile, char *err, size_t errlen)
{
	struct tls_client *tc = xcalloc(1, sizeof *tc);
	tc->refs = 1;
	if (!cafile[0])
		return tc;
	struct pem_obj *objs;
	size_t n;
	if (pem_read(cafile, &objs, &n, err, errlen) < 0) {
		client_free(tc);
		return NULL;
	}
	br_x509_decoder_context *dc = xmalloc(sizeof *dc);
	for (size_t i = 0; i < n; i++) {
		if (!is_cert_name(objs[i].name))
			continue;
		struct pem_obj dn = { .name = "" };
		br_x509_decoder_init(dc, pem_append, &dn);
		br_x509_decoder_push(dc, objs[i].data, objs[i].len);
		const br_x509_pkey *pk = br_x509_decoder_get_pkey(dc);
		if (!pk) {
			snprintf(err, errlen, "%s: certificate %zu cannot be decoded (error %d)", cafile,
				 tc->ntas + 1, br_x509_decoder_last_error(dc));
			free(dn.data);
			free(dc);
			pem_free(objs, n);
			client_free(tc);
			return NULL;
		}
		tc->tas = xrealloc(tc->tas, (tc->ntas + 1) * sizeof *tc->tas);
		br_x509_trust_anchor *ta = &tc->tas[tc->ntas++];
		memset(ta, 0, sizeof *ta);
		ta->dn.data = dn.data ? dn.data : xmalloc(1);
		ta->dn.len = dn.len;
		ta->flags = br_x509_decoder_isCA(dc) ? BR_X509_TA_CA : 0;
		ta->pkey.key_type = pk->key_type;
		if (pk->key_type == BR_KEYTYPE_RSA) {
			ta->pkey.key.rsa.n = dup_bytes(pk->key.rsa.n, pk->key.rsa.nlen);
			ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
			ta->pkey.key.rsa.e = dup_bytes(pk->key.rsa.e, pk->key.rsa.elen);
			ta->pkey.key.rsa.elen = pk->key.rsa.elen;
		} else {
			ta->pkey.key.ec.curve = pk->key.ec.curve;
			ta->pkey.key.ec.q = dup_bytes(pk->key.ec.q, pk->key.ec.qlen);
			ta->pkey.key.ec.qlen = pk->key.ec.qlen;
		}
	}
	free(dc);
	pem_free(objs, n);
	if (tc->ntas == 0) {
		snprintf(err, errlen, "%s: no CERTIFICATE in the file", cafile);
		client_free(tc);
		return NULL;
	}
	return tc;
}

/* ---- current credentials ------------------------------------------------ */

static int configure(const struct conf *c, char *err, size_t errlen);

/* tls_configure - load and install, or keep the old on any error; the
 * time and result of the attempt go to the statistics. */
int tls_configure(const struct conf *c, char *err, size_t errlen)
{
	int r = configure(c, err, errlen);
	stats_gauge_set(ST_tls_reload_time, (int64_t)time(NULL));
	stats_gauge_set(ST_tls_reload_ok, r == 0);
	return r;
}

/* configure - tls_configure()'s work. */
static int configure(const struct conf *c, char *err, size_t errlen)
{
	struct tls_server *ts = NULL;
	int want_server = c->smtpd_tls_security_level_e != SMTPD_TLS_NONE;
	if (want_server && (c->smtpd_tls_cert_file[0] || c->smtpd_tls_key_file[0])) {
		if (!c->smtpd_tls_cert_file[0] || !c->smtpd_tls_key_file[0]) {
			snprintf(err, errlen, "smtpd_tls_cert_file and smtpd_tls_key_file must both be set");
			return -1;
		}
		ts = server_load(c->smtpd_tls_cert_file, c->smtpd_tls_key_file, err, errlen);
		if (!ts)
			return -1;
	}
	if (c->relay_tls_security_level_e == RELAY_TLS_VERIFY && !c->relay_tls_CAfile[0]) {
		snprintf(err, errlen, "relay_tls_security_level = verify needs relay_tls_CAfile");
		server_free(ts);
		return -1;
	}
	struct tls_client *tc = client_load(c->relay_tls_CAfile, err, errlen);
	if (!tc) {
		err_param(err, errlen, "relay_tls_CAfile");
		server_free(ts);
		return -1;
	}
	if (ts) {
		pthread_once(&stats_once, stats_declare);
		stats_family_set("perimd_tls_certificate_expiry_timestamp_seconds", "file",
				 c->smtpd_tls_cert_file, ts->not_after);
	}
	pthread_mutex_lock(&cur_mu);
	struct tls_server *ots = cur_server;
	struct tls_client *otc = cur_client;
	cur_server = ts;
	cur_client = tc;
	pthread_mutex_unlock(&cur_mu);
	tls_server_release(ots);
	tls_client_release(otc);
	return 0;
}

/* tls_shutdown - release the current credentials. */
void tls_shutdown(void)
{
	pthread_mutex_lock(&cur_mu);
	struct tls_server *ts = cur_server;
	struct tls_client *tc = cur_client;
	cur_server = NULL;
	cur_client = NULL;
	pthread_mutex_unlock(&cur_mu);
	tls_server_release(ts);
	tls_client_release(tc);
}

/* tls_server_acquire - current server credentials, referenced. */
struct tls_server *tls_server_acquire(void)
{
	pthread_mutex_lock(&cur_mu);
	struct tls_server *ts = cur_server;
	if (ts)
		__atomic_add_fetch(&ts->refs, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&cur_mu);
	return ts;
}

/* tls_server_release - drop a reference. */
void tls_server_release(struct tls_server *ts)
{
	if (ts && __atomic_sub_fetch(&ts->refs, 1, __ATOMIC_ACQ_REL) == 0)
		server_free(ts);
}

/* tls_server_available - is STARTTLS possible now? */
int tls_server_available(void)
{
	pthread_mutex_lock(&cur_mu);
	int r = cur_server != NULL;
	pthread_mutex_unlock(&cur_mu);
	return r;
}

/* tls_client_acquire - current trust anchors, referenced. */
struct tls_client *tls_client_acquire(void)
{
	pthread_mutex_lock(&cur_mu);
	struct tls_client *tc = cur_client;
	if (tc)
		__atomic_add_fetch(&tc->refs, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&cur_mu);
	return tc;
}

/* tls_client_release - drop a reference. */
void tls_client_release(struct tls_client *tc)
{
	if (tc && __atomic_sub_fetch(&tc->refs, 1, __ATOMIC_ACQ_REL) == 0)
		client_free(tc);
}

/* tls_level_of - relay_tls_security_level as a tls_level. */
enum tls_level tls_level_of(enum conf_relay_tls_security_level v)
{
	switch (v) {
	case RELAY_TLS_VERIFY: return TLS_VERIFY;
	case RELAY_TLS_ENCRYPT: return TLS_ENCRYPT;
	case RELAY_TLS_MAY: return TLS_MAY;
	default: return TLS_NONE;
	}
}

/* ---- engines ------------------------------------------------------------ */

/* seed - fresh entropy for an engine (BearSSL refuses to run without). */
static void seed(br_ssl_engine_context *eng)
{
	unsigned char rnd[32];
	size_t n = 0;
	while (n < sizeof rnd) {
		ssize_t k = getrandom(rnd + n, sizeof rnd - n, 0);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			fatal("getrandom: %s", strerror(errno));
		n += (size_t)k;
	}
	br_ssl_engine_inject_entropy(eng, rnd, sizeof rnd);
}

/* engine_common - versions, suites, buffer, entropy. */
static void engine_common(struct tls *t, br_ssl_engine_context *eng)
{
	br_ssl_engine_set_versions(eng, BR_TLS12, BR_TLS12);
	br_ssl_engine_set_suites(eng, TLS_SUITES, sizeof TLS_SUITES / sizeof TLS_SUITES[0]);
	br_ssl_engine_add_flags(eng, BR_OPT_NO_RENEGOTIATION | BR_OPT_ENFORCE_SERVER_PREFERENCES);
	br_ssl_engine_set_buffer(eng, t->buf, sizeof t->buf, 1);
	seed(eng);
}

/* loop_cache - this loop's session cache, made on first use. */
static br_ssl_session_cache_lru *loop_cache(struct ev_loop *loop)
{
	void **slot = ev_slot(loop, EV_SLOT_TLS);
	if (!*slot) {
		struct tls_cache *tc = xmalloc(sizeof *tc);
		br_ssl_session_cache_lru_init(&tc->lru, tc->store, sizeof tc->store);
		*slot = tc;
	}
	return &((struct tls_cache *)*slot)->lru;
}

/* tls_new_server - a server engine for one connection. */
struct tls *tls_new_server(struct ev_loop *loop, struct tls_server *ts)
{
	struct tls *t = xcalloc(1, sizeof *t);
	t->is_server = 1;
	t->ts = ts;
	__atomic_add_fetch(&ts->refs, 1, __ATOMIC_RELAXED);
	br_ssl_server_context *sc = &t->u.s;
	if (ts->key_type == BR_KEYTYPE_RSA)
		br_ssl_server_init_full_rsa(sc, ts->chain, ts->nchain, br_skey_decoder_get_rsa(&ts->skey));
	else
		br_ssl_server_init_full_ec(sc, ts->chain, ts->nchain, (unsigned)ts->issuer_type,
					   br_skey_decoder_get_ec(&ts->skey));
	engine_common(t, &sc->eng);
	if (loop)
		br_ssl_server_set_cache(sc, &loop_cache(loop)->vtable);
	if (!br_ssl_server_reset(sc))
		fatal("br_ssl_server_reset failed: %d", br_ssl_engine_last_error(&sc->eng));
	tls_memory(t, 1);
	return t;
}

/* any_start_chain - x509_any: a new chain. */
static void any_start_chain(const br_x509_class **ctx, const char *server_name)
{
	struct x509_any *a = (struct x509_any *)(void *)ctx;
	(void)server_name;
	a->ncert = 0;
}

/* any_start_cert - x509_any: decode only the first (end-entity) one. */
static void any_start_cert(const br_x509_class **ctx, uint32_t length)
{
	struct x509_any *a = (struct x509_any *)(void *)ctx;
	(void)length;
	if (a->ncert == 0)
		br_x509_decoder_init(&a->dc, NULL, NULL);
}

/* any_append - x509_any: certificate bytes. */
static void any_append(const br_x509_class **ctx, const unsigned char *buf, size_t len)
{
	struct x509_any *a = (struct x509_any *)(void *)ctx;
	if (a->ncert == 0)
		br_x509_decoder_push(&a->dc, buf, len);
}

/* any_end_cert - x509_any: one certificate done. */
static void any_end_cert(const br_x509_class **ctx)
{
	((struct x509_any *)(void *)ctx)->ncert++;
}

/* any_end_chain - x509_any: fine if the server's key could be read. */
static unsigned any_end_chain(const br_x509_class **ctx)
{
	struct x509_any *a = (struct x509_any *)(void *)ctx;
	if (a->ncert == 0)
		return BR_ERR_X509_EMPTY_CHAIN;
	if (!br_x509_decoder_get_pkey(&a->dc))
		return (unsigned)br_x509_decoder_last_error(&a->dc);
	return 0;
}

/* any_get_pkey - x509_any: the end-entity key. */
static const br_x509_pkey *any_get_pkey(const br_x509_class *const *ctx, unsigned *usages)
{
	struct x509_any *a = (struct x509_any *)(void *)ctx;
	if (usages)
		*usages = BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN;
	return br_x509_decoder_get_pkey(&a->dc);
}

static const br_x509_class x509_any_vtable = {
	sizeof(struct x509_any), any_start_chain, any_start_cert, any_append, any_end_cert,
	any_end_chain,           any_get_pkey,
};

/* tls_new_client - a client engine for one backend connection. */
struct tls *tls_new_client(struct tls_client *tc, enum tls_level level, const char *verify_name)
{
	struct tls *t = xcalloc(1, sizeof *t);
	t->tc = tc;
	__atomic_add_fetch(&tc->refs, 1, __ATOMIC_RELAXED);
	t->x = xcalloc(1, sizeof *t->x);
	br_ssl_client_context *cc = &t->u.c;
	br_ssl_client_init_full(cc, &t->x->u.min, tc->tas, tc->ntas);
	if (level != TLS_VERIFY) {
		t->x->u.any.vtable = &x509_any_vtable;
		br_ssl_engine_set_x509(&cc->eng, &t->x->u.any.vtable);
	}
	engine_common(t, &cc->eng);
	if (!br_ssl_client_reset(cc, level == TLS_VERIFY ? verify_name : NULL, 0))
		fatal("br_ssl_client_reset failed: %d", br_ssl_engine_last_error(&cc->eng));
	tls_memory(t, 1);
	return t;
}

/* tls_free - release an engine and its references. */
void tls_free(struct tls *t)
{
	if (!t)
		return;
	tls_memory(t, -1);
	if (t->ts)
		tls_server_release(t->ts);
	if (t->tc)
		tls_client_release(t->tc);
	free(t->x);
	free(t);
}

/* tls_engine - the engine. */
br_ssl_engine_context *tls_engine(struct tls *t)
{
	return t->is_server ? &t->u.s.eng : &t->u.c.eng;
}

/* tls_describe - negotiated version and suite. */
void tls_describe(struct tls *t, char *buf, size_t len)
{
	br_ssl_engine_context *eng = tls_engine(t);
	br_ssl_session_parameters sp;
	br_ssl_engine_get_session_parameters(eng, &sp);
	const char *cipher = "unknown";
	for (size_t i = 0; i < sizeof SUITE_NAMES / sizeof SUITE_NAMES[0]; i++)
		if (SUITE_NAMES[i].id == sp.cipher_suite)
			cipher = SUITE_NAMES[i].name;
	unsigned v = br_ssl_engine_get_version(eng);
	snprintf(buf, len, "TLSv1.%u with cipher %s", v >= BR_TLS10 ? v - BR_TLS10 : 0, cipher);
}

/* tls_error_text - a reason for a BearSSL error code. */
const char *tls_error_text(int err, char *buf, size_t len)
{
	const char *s = NULL;
	switch (err) {
	case BR_ERR_OK: s = "no error"; break;
	case BR_ERR_UNSUPPORTED_VERSION:
	case BR_ERR_BAD_VERSION: s = "unsupported protocol version (TLS 1.2 only)"; break;
	case BR_ERR_BAD_LENGTH:
	case BR_ERR_TOO_LARGE:
	case BR_ERR_UNKNOWN_TYPE:
	case BR_ERR_BAD_FRAGLEN: s = "not a TLS record"; break;
	case BR_ERR_BAD_MAC: s = "bad record MAC"; break;
	case BR_ERR_BAD_CIPHER_SUITE: s = "no shared cipher suite"; break;
	case BR_ERR_BAD_HANDSHAKE:
	case BR_ERR_UNEXPECTED: s = "handshake protocol error"; break;
	case BR_ERR_BAD_SIGNATURE: s = "bad signature"; break;
	case BR_ERR_X509_NOT_TRUSTED: s = "certificate not trusted"; break;
	case BR_ERR_X509_BAD_SERVER_NAME: s = "certificate name mismatch"; break;
	case BR_ERR_X509_EXPIRED: s = "certificate expired or not yet valid"; break;
	case BR_ERR_X509_NOT_CA: s = "certificate issuer is not a CA"; break;
	case BR_ERR_X509_WEAK_PUBLIC_KEY: s = "certificate key too weak"; break;
	case BR_ERR_X509_EMPTY_CHAIN: s = "no certificate sent"; break;
	default: break;
	}
	if (s)
		return s;
	if (err >= BR_ERR_SEND_FATAL_ALERT)
		snprintf(buf, len, "sent alert %d", err - BR_ERR_SEND_FATAL_ALERT);
	else if (err >= BR_ERR_RECV_FATAL_ALERT)
		snprintf(buf, len, "peer sent alert %d", err - BR_ERR_RECV_FATAL_ALERT);
	else if (err >= BR_ERR_X509_OK)
		snprintf(buf, len, "certificate error %d", err);
	else
		snprintf(buf, len, "TLS error %d", err);
	return buf;
}

/* tls_error_class - the counter a failure goes to. */
const char *tls_error_class(int err)
{
	switch (err) {
	case BR_ERR_UNSUPPORTED_VERSION:
	case BR_ERR_BAD_VERSION: return "version";
	case BR_ERR_BAD_CIPHER_SUITE: return "cipher";
	case BR_ERR_BAD_LENGTH:
	case BR_ERR_TOO_LARGE:
	case BR_ERR_UNKNOWN_TYPE:
	case BR_ERR_BAD_FRAGLEN: return "protocol";
	default: break;
	}
	if (err >= BR_ERR_RECV_FATAL_ALERT)
		return "alert";
	if (err >= BR_ERR_X509_OK)
		return "certificate";
	if (err > 0)
		return "protocol";
	return "other";
}
