/*
 * tls.h - TLS with BearSSL: the server credentials and the client trust
 * anchors (loaded from PEM files, swapped on reload), and one engine per
 * TLS connection. conn.c drives the engine; everything else only asks for
 * a context and reads back what was negotiated.
 *
 * Protocol: TLS 1.2 only (BearSSL has no TLS 1.3), ECDHE key exchange with
 * AEAD ciphers only (see TLS_SUITES in tls.c and perimd.conf(5)).
 *
 * Credentials (struct tls_server, struct tls_client) are immutable and
 * reference counted: a connection holds a reference for its whole life,
 * so a reload never changes a handshake under way. The current ones are
 * process-wide; tls_configure() replaces them only when everything loaded,
 * else the old ones stay and the error says why.
 *
 * A struct tls (one per TLS connection) holds the engine and its
 * full-duplex buffer (BR_SSL_BUFSIZE_BIDI, about 33 KB) and is allocated
 * only when a connection starts TLS; it MUST be used on one thread.
 */
#ifndef PERIMD_TLS_H
#define PERIMD_TLS_H

#include "conf_enum.h"

#include <stddef.h>

#include <bearssl.h>

struct conf;
struct ev_loop;
struct tls_server;
struct tls_client;
struct tls;

/* Client verification levels (relay_tls_security_level). */
enum tls_level { TLS_NONE, TLS_MAY, TLS_ENCRYPT, TLS_VERIFY };

/* tls_configure - load smtpd_tls_cert_file/smtpd_tls_key_file and
 * relay_tls_CAfile from c and make them current. Returns 0, or -1 with err
 * filled; on error nothing changes (the old credentials stay). Called at
 * start (as root) and on SIGHUP (as mail_owner). Thread-safe. */
int tls_configure(const struct conf *c, char *err, size_t errlen);
/* tls_shutdown - drop the current credentials (at exit). */
void tls_shutdown(void);

/* tls_server_acquire - the current server credentials with a reference,
 * or NULL when none are configured. */
struct tls_server *tls_server_acquire(void);
void tls_server_release(struct tls_server *ts);
/* tls_server_available - are server credentials loaded (STARTTLS offered)? */
int tls_server_available(void);
/* tls_client_acquire - the current trust anchors with a reference (never
 * NULL once tls_configure() succeeded: possibly zero anchors). */
struct tls_client *tls_client_acquire(void);
void tls_client_release(struct tls_client *tc);

/* tls_level_of - relay_tls_security_level (parsed at load) as a level. */
enum tls_level tls_level_of(enum conf_relay_tls_security_level v);

/* tls_new_server - an engine for one accepted connection; takes its own
 * reference to ts. loop gives the per-loop session resumption cache (may
 * be NULL: no resumption). Entropy comes from getrandom(). */
struct tls *tls_new_server(struct ev_loop *loop, struct tls_server *ts);
/* tls_new_client - an engine for one backend connection. level TLS_VERIFY
 * checks the chain against tc's anchors and the certificate against
 * verify_name (MUST then be non-empty); lower levels take any certificate.
 * Takes its own reference to tc. */
struct tls *tls_new_client(struct tls_client *tc, enum tls_level level, const char *verify_name);
void tls_free(struct tls *t);

/* tls_engine - the BearSSL engine, for conn.c's pump. */
br_ssl_engine_context *tls_engine(struct tls *t);

/* tls_describe - "TLSv1.2 with cipher ECDHE-RSA-AES128-GCM-SHA256". */
void tls_describe(struct tls *t, char *buf, size_t len);
/* tls_error_text - a BearSSL error code as a short reason
 * ("certificate not trusted", "peer sent alert 40", ...). */
const char *tls_error_text(int err, char *buf, size_t len);
/* tls_error_class - the reason class a failure is counted under:
 * "protocol", "version", "cipher", "certificate", "alert", "other". */
const char *tls_error_class(int err);

/* tls_count - count a handshake outcome (server: with an SMTP client;
 * else with a backend); reason is tls_error_class() or "io". */
void tls_count(int server, int ok, const char *reason);

#endif
