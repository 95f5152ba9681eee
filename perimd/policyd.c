/*
 * policyd.c - the Postfix policy delegation listener on the event loop.
 *
 * Invariants: it runs on io loop 0 only. A connection answers one request
 * at a time: while its greylisting decision is in flight, reading is off
 * (Postfix waits for each answer anyway), and the decision holds a
 * reference to the policy it was started with. A connection closed while
 * its decision runs cancels it (grey_cancel); the operation is then freed
 * by grey.c and never calls back. Every connection is on a list so drain
 * and exit find them. Nothing a client sends crashes the listener: an
 * over-long or malformed request closes that connection with a log line.
 */
#include "policyd.h"
#include "conf.h"
#include "conn.h"
#include "ev.h"
#include "grey.h"
#include "log.h"
#include "net.h"
#include "policy.h"
#include "psvc.h"
#include "smtp_proto.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct pconn {
	struct pconn *next, *prev;
	struct conn *conn;
	struct policy *pol; /* held while a decision runs */
	struct grey_op *op;
	int shadow; /* greylist is in shadow_checks for this request */
	char rcpt[512];
};

struct pd_listener {
	struct ev_loop *loop;
	struct ev_io io;
	int fd;
	struct pconn *conns;
};

static struct pd_listener *pd_lis; /* loop 0's listener (or NULL) */

/* set_attr - copy a value into a fixed field; -1 when it does not fit. */
static int set_attr(char *dst, size_t dlen, const char *v, size_t vl)
{
	if (vl >= dlen)
		return -1;
	memcpy(dst, v, vl);
	dst[vl] = 0;
	return 0;
}

/* policyd_parse - see policyd.h. */
int policyd_parse(const char *buf, size_t len, struct policyd_req *req, size_t *used)
{
	static const struct {
		const char *name;
		size_t off, size;
	} attrs[] = {
		{ "request", offsetof(struct policyd_req, request), sizeof req->request },
		{ "protocol_state", offsetof(struct policyd_req, protocol_state), sizeof req->protocol_state },
		{ "client_address", offsetof(struct policyd_req, client_address), sizeof req->client_address },
		{ "client_name", offsetof(struct policyd_req, client_name), sizeof req->client_name },
		{ "sender", offsetof(struct policyd_req, sender), sizeof req->sender },
		{ "recipient", offsetof(struct policyd_req, recipient), sizeof req->recipient },
	};
	memset(req, 0, sizeof *req);
	size_t pos = 0, kl, vl;
	const char *k, *v;
	int rc;
	while ((rc = psvc_attr_next(buf, len, &pos, POLICYD_MAX_REQUEST, &k, &kl, &v, &vl)) == PARSE_OK) {
		if (kl == 0) { /* the empty line */
			*used = pos;
			return PARSE_OK;
		}
		for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
			if (strlen(attrs[i].name) == kl && !memcmp(attrs[i].name, k, kl)) {
				if (set_attr((char *)req + attrs[i].off, attrs[i].size, v, vl) < 0)
					return PARSE_BAD;
				break;
			}
		}
	}
	return rc;
}

/* policyd_action - the action for a greylisting result. */
void policyd_action(const struct grey_result *res, const char *rcpt, char *out, size_t outlen)
{
	switch (res->outcome) {
	case GREY_DEFER:
		snprintf(out, outlen,
			 "action=DEFER_IF_PERMIT 4.7.1 <%s>: greylisted, try again in %lld seconds", rcpt,
			 (long long)res->wait);
		break;
	case GREY_PASSED:
		snprintf(out, outlen, "action=PREPEND X-Greylist: passed greylisting (perimd)");
		break;
	case GREY_LIMIT:
		snprintf(out, outlen, "action=DEFER_IF_PERMIT 4.7.1 <%s>: %s, try again later", rcpt,
			 res->full ? "greylisting cannot take new entries now"
				   : "too many new greylisting entries from your network");
		break;
	case GREY_FAIL:
		if (res->tempfail) {
			snprintf(out, outlen,
				 "action=DEFER_IF_PERMIT 4.3.0 greylisting temporarily unavailable");
			break;
		}
		/* fall through */
	default: snprintf(out, outlen, "action=DUNNO"); break;
	}
}

static void pc_read(void *arg);

/* pc_free - close a connection; cancels its decision. */
static void pc_free(struct pconn *pc)
{
	if (pc->op)
		grey_cancel(pc->op);
	if (pc->pol)
		policy_release(pc->pol);
	conn_free(pc->conn);
	if (pc->prev)
		pc->prev->next = pc->next;
	else if (pd_lis)
		pd_lis->conns = pc->next;
	if (pc->next)
		pc->next->prev = pc->prev;
	free(pc);
}

/* pc_answer - send one answer and read the next request. With greylist
 * in shadow_checks a deferral is only logged and counted: DUNNO. */
static void pc_answer(struct pconn *pc, const char *action)
{
	if (pc->shadow && !strncmp(action, "action=DEFER_IF_PERMIT ", 23)) {
		policy_shadow_count("greylist");
		log_info("policy client %s: shadow: greylist would refuse <%s>: %s", conn_peer(pc->conn),
			 pc->rcpt, action + 23);
		action = "action=DUNNO";
	}
	pc->shadow = 0;
	conn_printf(pc->conn, "%s\n\n", action);
	conn_read_enable(pc->conn, 1);
}

/* pc_decided - the engine's verdict arrived. */
static void pc_decided(void *arg, const struct grey_result *res)
{
	struct pconn *pc = arg;
	char action[700];
	pc->op = NULL;
	policy_release(pc->pol);
	pc->pol = NULL;
	policyd_action(res, pc->rcpt, action, sizeof action);
	pc_answer(pc, action);
}

/* pc_request - one parsed request. */
static void pc_request(struct pconn *pc, const struct policyd_req *req)
{
	if (strcmp(req->request, "smtpd_access_policy") || strcasecmp(req->protocol_state, "RCPT") ||
	    !req->recipient[0] || !req->client_address[0]) {
		pc_answer(pc, "action=DUNNO");
		return;
	}
	struct policy *pol = policy_acquire();
	struct grey_result res;
	snprintf(pc->rcpt, sizeof pc->rcpt, "%s", req->recipient);
	pc->shadow = policy_shadow_on(pol, "greylist");
	const char *name = req->client_name[0] && strcmp(req->client_name, "unknown") ? req->client_name : NULL;
	conn_read_enable(pc->conn, 0);
	if (grey_decide(pd_lis->loop, pol, req->client_address, name, req->sender, req->recipient, &res,
			pc_decided, pc, &pc->op)) {
		policy_release(pol);
		char action[700];
		policyd_action(&res, pc->rcpt, action, sizeof action);
		pc_answer(pc, action);
		return;
	}
	pc->pol = pol;
}

/* pc_read - parse what arrived; one request at a time. */
static void pc_read(void *arg)
{
	struct pconn *pc = arg;
	if (pc->op)
		return;
	size_t len, used;
	const char *buf = conn_rbuf(pc->conn, &len);
	struct policyd_req req;
	int r = policyd_parse(buf, len, &req, &used);
	if (r == PARSE_AGAIN)
		return;
	if (r != PARSE_OK) {
		log_warn("policy client %s: %s request, closing", conn_peer(pc->conn),
			 r == PARSE_TOO_LONG ? "over-long" : "malformed");
		pc_free(pc);
		return;
	}
	conn_consume(pc->conn, used);
	pc_request(pc, &req);
}

/* pc_error - EOF or error: the client is gone. */
static void pc_error(void *arg, int err)
{
	(void)err;
	pc_free(arg);
}

static const struct conn_ops pc_ops = {
	.on_read = pc_read,
	.on_error = pc_error,
};

/* pd_accept - take every pending connection. */
static void pd_accept(void *arg, unsigned events)
{
	struct pd_listener *l = arg;
	(void)events;
	for (int i = 0; i < 64; i++) {
		int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		struct pconn *pc = xcalloc(1, sizeof *pc);
		pc->conn = conn_new(l->loop, fd, &pc_ops, pc);
		conn_set_timeout(pc->conn, 3600 * 1000);
		pc->next = l->conns;
		if (l->conns)
			l->conns->prev = pc;
		l->conns = pc;
	}
}

/* listen_addr - policy_listen as a socket address: "inet:host:port" (the
 * form of Postfix's check_policy_service), "host:port", "[addr]:port" or
 * "unix:/absolute/path". 0, or -1 with why. */
static int listen_addr(const char *text, struct sockaddr_storage *ss, socklen_t *sl, const char **why)
{
	if (!strncmp(text, "unix:", 5))
		return net_parse_unix(text + 5, ss, sl, why);
	if (!strncmp(text, "inet:", 5))
		text += 5;
	if (net_parse_addr(text, -1, ss, sl, why) < 0) {
		if (!strcmp(*why, "port missing"))
			*why = "port missing: write inet:127.0.0.1:2525, 127.0.0.1:2525 or unix:/path";
		return -1;
	}
	return 0;
}

/* policyd_check - see policyd.h. */
int policyd_check(const struct conf *c, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	if (c->policy_listen[0] && listen_addr(c->policy_listen, &ss, &sl, &why) < 0) {
		snprintf(err, errlen, "policy_listen = %s: %s", c->policy_listen, why);
		return -1;
	}
	return 0;
}

/* unix_listen - a listening socket at su's path: a stale socket there is
 * replaced; the socket is mode 0666 (the directory guards it), so the
 * Postfix smtpd that asks can connect after perimd drops privileges. */
static int unix_listen(const struct sockaddr_un *su, socklen_t sl, char *err, size_t errlen)
{
	struct stat st;
	if (lstat(su->sun_path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(su->sun_path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0 || bind(fd, (const struct sockaddr *)su, sl) < 0 || chmod(su->sun_path, 0666) < 0 ||
	    listen(fd, 512) < 0) {
		snprintf(err, errlen, "%s: %s", su->sun_path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* policyd_listen_open - bind policy_listen. */
int policyd_listen_open(const struct conf *c)
{
	if (!c->policy_listen[0])
		return -1;
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	char err[256];
	if (listen_addr(c->policy_listen, &ss, &sl, &why) < 0)
		fatal("policy_listen %s: %s", c->policy_listen, why);
	int fd = ss.ss_family == AF_UNIX ? unix_listen((struct sockaddr_un *)&ss, sl, err, sizeof err)
					 : net_listen((struct sockaddr *)&ss, sl, 512, err, sizeof err);
	if (fd < 0)
		fatal("policy_listen %s: %s", c->policy_listen, err);
	log_info("policy service listening on %s", c->policy_listen);
	return fd;
}

/* policyd_loop_start - watch the listener on loop. */
void policyd_loop_start(struct ev_loop *loop, int fd)
{
	if (fd < 0)
		return;
	pd_lis = xcalloc(1, sizeof *pd_lis);
	pd_lis->loop = loop;
	pd_lis->fd = fd;
	ev_io_init(&pd_lis->io, fd, pd_accept, pd_lis);
	ev_io_set(loop, &pd_lis->io, EV_READ);
	log_info("policy service listening on fd %d", fd);
}

/* policyd_drain - stop listening, close the connections. */
void policyd_drain(struct ev_loop *loop)
{
	if (!pd_lis || pd_lis->loop != loop)
		return;
	while (pd_lis->conns)
		pc_free(pd_lis->conns);
	ev_io_stop(loop, &pd_lis->io);
	close(pd_lis->fd);
	free(pd_lis);
	pd_lis = NULL;
}
