/*
 * fuzz_session.c - libFuzzer target that runs a whole SMTP server session
 * on the fuzzer's input: the real smtpd.c/conn.c/policy/relay code on a
 * real event loop, fed by a loopback TCP client whose bytes are the input.
 *
 * Once per process: the default configuration with every check that would
 * need DNS or a database off, no tarpit delay, one io loop with smtpd
 * listening on 127.0.0.1 (an ephemeral port), and a backend address whose
 * port is bound but not listening, so a message that reaches the end of
 * DATA is relayed, refused at connect, and answered 451 at once.
 *
 * Per input: connect, write the input (as fast as the server takes it,
 * reading and discarding every reply so the server never blocks on us),
 * half-close, and run the loop until the server closes the connection.
 * A session that does not end within SESSION_LIMIT_MS after our last byte
 * is a wedge: abort(), so libFuzzer keeps the input. Sanitizers catch the
 * rest. Nothing leaves the loopback interface.
 */
#include "conf.h"
#include "ev.h"
#include "jobs.h"
#include "log.h"
#include "net.h"
#include "policy.h"
#include "smtpd.h"
#include "spool.h"
#include "verify.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SESSION_LIMIT_MS 20000
#define INPUT_MAX (1024 * 1024)

static struct ev_loop *loop;
static struct sockaddr_in srv;
static int show;

struct client {
	struct ev_io io;
	struct ev_timer guard;
	const uint8_t *data;
	size_t len, off;
	int fd;
	int shut;
};

/* bound_port - a loopback socket bound to an ephemeral port; listening or
 * not (a bound, non-listening port refuses connections). */
static int bound_port(int listening, struct sockaddr_in *out)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	char err[256];
	int fd;
	if (listening) {
		fd = net_listen((struct sockaddr *)&a, sizeof a, 128, err, sizeof err);
		if (fd < 0) {
			fprintf(stderr, "fuzz_session: listen: %s\n", err);
			abort();
		}
	} else {
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
			abort();
	}
	socklen_t l = sizeof *out;
	if (getsockname(fd, (struct sockaddr *)out, &l) < 0)
		abort();
	return fd;
}

/* setup - configuration, policy, loop and listener, once. */
static void setup(void)
{
	static char dir[] = "/tmp/perimd-fuzz-session.XXXXXX";
	if (!mkdtemp(dir))
		abort();
	struct sockaddr_in dead;
	(void)bound_port(0, &dead);   /* kept bound for the process's life */
	char backend[64], spooldir[96], datadir[96];
	snprintf(backend, sizeof backend, "relay_backends=[127.0.0.1]:%d", ntohs(dead.sin_port));
	snprintf(spooldir, sizeof spooldir, "body_spool_directory=%s", dir);
	snprintf(datadir, sizeof datadir, "data_directory=%s", dir);
	char *ov[] = {
		backend, spooldir, datadir,
		"relay_domains=example.com",
		"myhostname=fuzz.test",
		"io_threads=1",
		"stats_listen=",
		"greylist=no",
		"reject_unknown_sender_domain=no",
		"smtpd_error_sleep_time=0",
		"smtpd_timeout=1s",
		"relay_connect_timeout=1s",
		"relay_pool_wait=1s",
		"smtpd_client_connection_count_limit=0",
		"message_size_limit=200k",
		"smtpd_recipient_limit=20",
	};
	char err[1024];
	struct conf *c = conf_load(NULL, 1, ov, (int)(sizeof ov / sizeof ov[0]), err, sizeof err);
	if (!c) {
		fprintf(stderr, "fuzz_session: %s\n", err);
		abort();
	}
	/* Logs go to syslog (usually nowhere here): stderr is libFuzzer's. */
	log_open("perimd-fuzz", 0, 0);
	spool_global_init(dir, (uint64_t)c->body_memory_limit, (uint64_t)c->body_spool_limit);
	verify_init(1000);
	struct policy *pol = policy_load(c, err, sizeof err);
	if (!pol) {
		fprintf(stderr, "fuzz_session: %s\n", err);
		abort();
	}
	policy_install(pol);
	jobs_start(1);
	show = getenv("FUZZ_SESSION_SHOW") != NULL;
	loop = ev_loop_new(0);
	int lfd = bound_port(1, &srv);
	smtpd_loop_start(loop, &lfd, 1);
}

/* guard_fire - the session outlived its bound: a wedge. */
static void guard_fire(void *arg)
{
	(void)arg;
	fprintf(stderr, "fuzz_session: session still open %d ms after the input ended\n",
		SESSION_LIMIT_MS);
	abort();
}

/* client_io - write what is left of the input, read and drop replies;
 * the server's close ends the run. */
static void client_io(void *arg, unsigned events)
{
	struct client *cl = arg;
	if ((events & EV_WRITE) && !cl->shut) {
		while (cl->off < cl->len) {
			ssize_t n = send(cl->fd, cl->data + cl->off, cl->len - cl->off,
					 MSG_NOSIGNAL | MSG_DONTWAIT);
			if (n > 0) {
				cl->off += (size_t)n;
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN)
				break;
			cl->off = cl->len;   /* the server closed: stop sending */
		}
		if (cl->off == cl->len) {
			shutdown(cl->fd, SHUT_WR);
			cl->shut = 1;
			ev_io_set(loop, &cl->io, EV_READ);
			ev_timer_start(loop, &cl->guard, SESSION_LIMIT_MS, guard_fire, cl);
		}
	}
	if (events & EV_READ) {
		char buf[65536];
		for (;;) {
			ssize_t n = recv(cl->fd, buf, sizeof buf, MSG_DONTWAIT);
			if (n > 0) {
				if (show)   /* FUZZ_SESSION_SHOW=1: see the replies */
					fwrite(buf, 1, (size_t)n, stderr);
				continue;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0 && errno == EAGAIN)
				return;
			/* EOF or reset: the server ended the session. */
			ev_io_stop(loop, &cl->io);
			ev_timer_stop(loop, &cl->guard);
			ev_stop(loop);
			return;
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!loop)
		setup();
	if (size > INPUT_MAX)
		return 0;
	struct client cl = {.data = data, .len = size};
	/* Non-blocking: libFuzzer's timer signal would interrupt a blocking
	 * connect (EINTR); the loop waits for writability anyway. */
	cl.fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (cl.fd < 0 || (connect(cl.fd, (struct sockaddr *)&srv, sizeof srv) < 0 &&
			  errno != EINPROGRESS && errno != EINTR)) {
		perror("fuzz_session: connect");
		abort();
	}
	ev_io_init(&cl.io, cl.fd, client_io, &cl);
	ev_io_set(loop, &cl.io, EV_READ | EV_WRITE);
	ev_run(loop);
	close(cl.fd);
	/* The server frees a session as it closes it: none may be left. */
	if (smtpd_sessions() != 0) {
		fprintf(stderr, "fuzz_session: %d sessions left after the close\n", smtpd_sessions());
		abort();
	}
	return 0;
}
