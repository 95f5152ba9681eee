/*
 * policyd.h - the Postfix policy delegation protocol (Postfix's
 * SMTPD_POLICY_README) on policy_listen, answered by the greylisting
 * engine and store of grey.h: a site points its existing Postfix
 * (check_policy_service inet:127.0.0.1:2525) at perimd before it swaps
 * the front end.
 *
 * A request is "name=value" lines ending in an empty line; the answer is
 * one "action=..." line and an empty line; the connection stays open for
 * further requests. RCPT-state requests are greylisted
 * (action=DEFER_IF_PERMIT ... or action=PREPEND X-Greylist: ...);
 * anything else gets action=DUNNO.
 */
#ifndef PERIMD_POLICYD_H
#define PERIMD_POLICYD_H

#include <stddef.h>

struct conf;
struct ev_loop;
struct grey_result;

#define POLICYD_MAX_REQUEST 16384

/* The attributes perimd uses; others are ignored. */
struct policyd_req {
	char request[64];
	char protocol_state[32];
	char client_address[64];
	char client_name[256];
	char sender[512];
	char recipient[512];
};

/* policyd_parse - one request from buf[0..len): PARSE_OK (*req filled,
 * *used = bytes through the empty line), PARSE_AGAIN (incomplete),
 * PARSE_TOO_LONG (no end within POLICYD_MAX_REQUEST bytes) or PARSE_BAD
 * (a line without '=', or a NUL). Lines end in LF or CRLF. Pure. */
int policyd_parse(const char *buf, size_t len, struct policyd_req *req, size_t *used);

/* policyd_action - the answer line (without "\n\n") for a result on
 * recipient rcpt. */
void policyd_action(const struct grey_result *res, const char *rcpt, char *out, size_t outlen);

/* policyd_check - policy_listen is one of its forms: "inet:host:port"
 * (Postfix's check_policy_service form), "host:port", "[addr]:port",
 * "unix:/path". 0, or -1 with err. */
int policyd_check(const struct conf *c, char *err, size_t errlen);
/* policyd_listen_open - bind policy_listen (before dropping privileges).
 * -1 when it is empty; fatal() when it cannot be bound. */
int policyd_listen_open(const struct conf *c);
/* policyd_loop_start - serve fd on loop (io loop 0); fd -1: nothing. */
void policyd_loop_start(struct ev_loop *loop, int fd);
/* policyd_drain - SIGTERM: close the listener and the connections of
 * loop (answers in flight are dropped; Postfix retries its request). */
void policyd_drain(struct ev_loop *loop);

#endif
