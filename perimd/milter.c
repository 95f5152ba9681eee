/*
 * milter.c - the milter protocol client (see milter.h): connections,
 * negotiation, the stages, the replies. The blocking conversation runs on
 * the worker pool; milter_edit.c applies header and body changes.
 *
 * Wire format (Sendmail's libmilter protocol, version 6): each packet is
 * a 32-bit big-endian length (the command byte included), a command byte
 * and its data; strings are NUL-terminated.
 */
#include "milter.h"
#include "milter_int.h"
#include "buf.h"
#include "conf.h"
#include "jobs.h"
#include "log.h"
#include "spool.h"
#include "stats.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Commands (MTA to milter). */
#define SMFIC_ABORT 'A'
#define SMFIC_BODY 'B'
#define SMFIC_CONNECT 'C'
#define SMFIC_MACRO 'D'
#define SMFIC_BODYEOB 'E'
#define SMFIC_HELO 'H'
#define SMFIC_HEADER 'L'
#define SMFIC_MAIL 'M'
#define SMFIC_EOH 'N'
#define SMFIC_OPTNEG 'O'
#define SMFIC_QUIT 'Q'
#define SMFIC_RCPT 'R'
#define SMFIC_DATA 'T'

/* Protocol flags (SMFIP_*). */
#define SMFIP_NOCONNECT 0x1u
#define SMFIP_NOHELO 0x2u
#define SMFIP_NOMAIL 0x4u
#define SMFIP_NORCPT 0x8u
#define SMFIP_NOBODY 0x10u
#define SMFIP_NOHDRS 0x20u
#define SMFIP_NOEOH 0x40u
#define SMFIP_NR_HDR 0x80u
#define SMFIP_NOUNKNOWN 0x100u
#define SMFIP_NODATA 0x200u
#define SMFIP_SKIP 0x400u
#define SMFIP_NR_CONN 0x1000u
#define SMFIP_NR_HELO 0x2000u
#define SMFIP_NR_MAIL 0x4000u
#define SMFIP_NR_RCPT 0x8000u
#define SMFIP_NR_DATA 0x10000u
#define SMFIP_NR_UNKN 0x20000u
#define SMFIP_NR_EOH 0x40000u
#define SMFIP_NR_BODY 0x80000u

/* What perimd offers to skip or not answer, by protocol version. */
#define PFLAGS_V2 0x7fu
#define PFLAGS_V4 (PFLAGS_V2 | SMFIP_NR_HDR | SMFIP_NOUNKNOWN | SMFIP_NODATA)
#define PFLAGS_V6 \
	(PFLAGS_V4 | SMFIP_SKIP | SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | \
	 SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_EOH | SMFIP_NR_BODY)

/* Actions perimd honours (SMFIF_*): add/change headers, body, add and
 * delete recipients, change sender, add recipient with args, and
 * quarantine, which perimd (no queue to hold a message in) answers as a
 * refusal, 554 5.7.1 (milter_edit.c); libmilter drops the connection of
 * a filter registered for an action the MTA does not offer, and
 * clamav-milter registers for quarantine. Not SETSYMLIST: the macros
 * sent are the milter_*_macros parameters'. */
#define SMFIF_ADDHDRS 0x1u
#define SMFIF_CHGBODY 0x2u
#define SMFIF_ADDRCPT 0x4u
#define SMFIF_DELRCPT 0x8u
#define SMFIF_CHGHDRS 0x10u
#define SMFIF_QUARANTINE 0x20u
#define SMFIF_CHGFROM 0x40u
#define SMFIF_ADDRCPT_PAR 0x80u
#define ACTIONS_HONOURED \
	(SMFIF_ADDHDRS | SMFIF_CHGBODY | SMFIF_ADDRCPT | SMFIF_DELRCPT | SMFIF_CHGHDRS | SMFIF_CHGFROM | \
	 SMFIF_ADDRCPT_PAR | SMFIF_QUARANTINE)

#define BODY_CHUNK 65535

/* ---- the packet parser (pure) ------------------------------------------ */

/* str_at - a NUL-terminated string at p[*off] within n; advances *off. */
static const char *str_at(const char *p, size_t n, size_t *off)
{
	if (*off >= n)
		return NULL;
	const char *z = memchr(p + *off, 0, n - *off);
	if (!z)
		return NULL;
	const char *s = p + *off;
	*off = (size_t)(z - p) + 1;
	return s;
}

/* get32 - a big-endian 32-bit word. */
static uint32_t get32(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* field_name_ok - a header field name a milter may add or change:
 * printable ASCII without colon or space (RFC 5322 §2.2); anything else
 * would write other header lines, or the body, into the message. */
static int field_name_ok(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s <= 32 || *s >= 127 || *s == ':')
			return 0;
	return 1;
}

/* milter_pkt_parse - see milter.h. */
int milter_pkt_parse(const char *p, size_t n, struct milter_pkt *out)
{
	memset(out, 0, sizeof *out);
	if (n < 1 || n > MILTER_PKT_MAX)
		return -1;
	out->cmd = p[0];
	p++, n--;
	size_t off = 0;
	switch (out->cmd) {
	case 'a':
	case 'c':
	case 'd':
	case 'r':
	case 't':
	case 'p':
	case 's':
	case 'f':
	case '4': return 0; /* accept, continue, discard, reject, tempfail, progress, skip, ... */
	case 'O':
		if (n < 12)
			return -1;
		out->idx = get32(p);
		out->actions = get32(p + 4);
		out->pflags = get32(p + 8);
		out->data = p + 12; /* the macro lists asked for (ignored) */
		out->datalen = n - 12;
		return 0;
	case 'b':
		out->data = p;
		out->datalen = n;
		return 0;
	case 'y':
	case 'q':
	case '+':
	case '-': out->s1 = str_at(p, n, &off); return out->s1 ? 0 : -1;
	case '2':
	case 'e':
		out->s1 = str_at(p, n, &off);
		if (!out->s1)
			return -1;
		out->s2 = off < n ? str_at(p, n, &off) : NULL;
		return off < n && !out->s2 ? -1 : 0;
	case 'h':
		out->s1 = str_at(p, n, &off);
		out->s2 = out->s1 ? str_at(p, n, &off) : NULL;
		return out->s2 && field_name_ok(out->s1) ? 0 : -1;
	case 'i':
	case 'm':
		if (n < 4)
			return -1;
		out->idx = get32(p);
		off = 4;
		out->s1 = str_at(p, n, &off);
		out->s2 = out->s1 ? str_at(p, n, &off) : NULL;
		return out->s2 && field_name_ok(out->s1) ? 0 : -1;
	default: return -1;
	}
}

/* reply_line_ok - "NNN" of class cls and a separator, printable text. */
static int reply_line_ok(const char *l, size_t n, char cls, const char *code)
{
	if (n < 3 || l[0] != cls || l[1] < '0' || l[1] > '9' || l[2] < '0' || l[2] > '9')
		return 0;
	if (code && memcmp(l, code, 3))
		return 0;
	if (n > 3 && l[3] != ' ' && l[3] != '-')
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)l[i] < 32 && l[i] != '\t')
			return 0;
	return 1;
}

/* enh_valid - text begins with an enhanced status code of class cls
 * (RFC 3463: class.subject.detail, 1-3 digits each) ending in a space
 * or the end of the line. */
static int enh_valid(const char *t, size_t n, char cls)
{
	if (n < 5 || t[0] != cls || t[1] != '.')
		return 0;
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (i < n && t[i] >= '0' && t[i] <= '9' && d < 4)
			i++, d++;
		if (d < 1 || d > 3)
			return 0;
		if (part == 0 && (i >= n || t[i++] != '.'))
			return 0;
	}
	return i == n || t[i] == ' ';
}

/* reply_cut - a reply longer than its room ends with the last line that
 * fit (or the first line, cut short): that line made the last one. The
 * new length. */
static size_t reply_cut(char *out, size_t o, size_t prev)
{
	if (o == 0) /* the first line alone is too long: snprintf cut it */
		o = strlen(out);
	while (o > prev + 3 && (out[o - 1] == '\r' || out[o - 1] == '\n'))
		o--;
	out[o] = 0;
	out[prev + 3] = ' ';
	return o;
}

/* milter_reply_text - see milter.h. */
int milter_reply_text(const char *in, char *out, size_t outlen)
{
	char cls = in[0];
	if ((cls != '4' && cls != '5') || outlen < 64)
		return -1;
	size_t o = 0, prev = 0; /* prev: where the last line kept begins */
	int full = 0;
	const char *l = in;
	while (*l) {
		const char *e = l + strcspn(l, "\r\n");
		size_t n = (size_t)(e - l);
		if (!reply_line_ok(l, n, cls, in))
			return -1;
		const char *text = n > 4 ? l + 4 : "";
		size_t tn = n > 4 ? n - 4 : 0;
		const char *next = e;
		if (*next == '\r')
			next++;
		if (*next == '\n')
			next++;
		int last = !*next;
		int has_enh = enh_valid(text, tn, cls);
		int w = full ? 0
			     : snprintf(out + o, outlen - o, "%.3s%c%s%.*s%s", in, last ? ' ' : '-',
					has_enh ? "" : (cls == '4' ? "4.7.1 " : "5.7.1 "), (int)tn, text,
					last ? "" : "\r\n");
		if (w < 0 || (size_t)w >= outlen - o)
			full = 1; /* the rest is checked, not kept */
		else if (!full)
			prev = o, o += (size_t)w;
		l = next;
	}
	if (full)
		o = reply_cut(out, o, prev);
	return o ? cls - '0' : -1;
}

/* ---- blocking I/O with deadlines (worker threads only) ------------------- */

static int stopping; /* milter_stop(): conversations end at once */

/* milter_stop - see milter.h. */
void milter_stop(void)
{
	__atomic_store_n(&stopping, 1, __ATOMIC_RELAXED);
}

/* wait_fd - poll fd for ev until deadline (ms, CLOCK_MONOTONIC); 0 or -1.
 * Waits in slices of 200 ms so that milter_stop() is seen. */
static int wait_fd(int fd, short ev, uint64_t deadline)
{
	for (;;) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		uint64_t now = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
		if (now >= deadline || __atomic_load_n(&stopping, __ATOMIC_RELAXED)) {
			errno = ETIMEDOUT;
			return -1;
		}
		struct pollfd pf = { .fd = fd, .events = ev };
		int r = poll(&pf, 1, deadline - now > 200 ? 200 : (int)(deadline - now));
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -1;
	}
}

/* now_ms - the monotonic clock in ms. */
static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* io_all - write or read exactly n bytes before the deadline; a write
 * with more set is held (MSG_MORE) to go out with the next one. */
static int io_all(int fd, void *buf, size_t n, int wr, int more, uint64_t deadline)
{
	char *p = buf;
	while (n) { /* the socket is non-blocking: try first, poll when it would block */
		ssize_t r = wr ? send(fd, p, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0)) : recv(fd, p, n, 0);
		if (r == 0 && !wr) {
			errno = ECONNRESET;
			return -1;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN || wait_fd(fd, wr ? POLLOUT : POLLIN, deadline) < 0)
				return -1;
			continue;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* send_pkt - one packet: length, command, data, in one segment where it
 * fits (MSG_MORE; with more, held for the packet that follows: a
 * command's macros). */
static int send_pkt(struct milter *m, char cmd, const void *data, size_t len, int more)
{
	char hdr[5];
	uint32_t l = htonl((uint32_t)len + 1);
	memcpy(hdr, &l, 4);
	hdr[4] = cmd;
	uint64_t dl = now_ms() + (uint64_t)m->def->spec.command_timeout;
	if (io_all(m->fd, hdr, 5, 1, len || more, dl) < 0 ||
	    (len && io_all(m->fd, (void *)data, len, 1, more, dl) < 0)) {
		snprintf(m->err, sizeof m->err, "write: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* read_all - n bytes of the milter's stream into dst before the
 * deadline: what an earlier read took past its packet first; a part
 * shorter than m->ra is read ahead into it (one recv for a small
 * packet's length and body, and for the verdict that follows a change). */
static int read_all(struct milter *m, char *dst, size_t n, uint64_t deadline)
{
	while (n) {
		if (m->ra_pos < m->ra_len) {
			size_t k = (size_t)(m->ra_len - m->ra_pos);
			if (k > n)
				k = n;
			memcpy(dst, m->ra + m->ra_pos, k);
			m->ra_pos += (uint16_t)k;
			dst += k;
			n -= k;
			continue;
		}
		if (n >= sizeof m->ra)
			return io_all(m->fd, dst, n, 0, 0, deadline);
		ssize_t r = recv(m->fd, m->ra, sizeof m->ra, 0);
		if (r > 0) {
			m->ra_pos = 0;
			m->ra_len = (uint16_t)r;
		} else if (r == 0) {
			errno = ECONNRESET;
			return -1;
		} else if (errno != EINTR && (errno != EAGAIN || wait_fd(m->fd, POLLIN, deadline) < 0)) {
			return -1;
		}
	}
	return 0;
}

/* milter_recv - one packet into m->rbuf, parsed into *pk; waits up to
 * timeout_ms (a progress packet starts the wait again). */
int milter_recv(struct milter *m, uint64_t timeout_ms, struct milter_pkt *pk)
{
	for (;;) {
		uint64_t dl = now_ms() + timeout_ms;
		char lb[4];
		if (read_all(m, lb, 4, dl) < 0) {
			snprintf(m->err, sizeof m->err, "read: %s",
				 errno == ETIMEDOUT ? "timeout" : strerror(errno));
			return -1;
		}
		uint32_t len = get32(lb);
		if (len < 1 || len > MILTER_PKT_MAX) {
			snprintf(m->err, sizeof m->err, "bad packet length %u", len);
			return -1;
		}
		if (len > m->rcap) {
			m->rbuf = xrealloc(m->rbuf, len);
			m->rcap = len;
		}
		if (read_all(m, m->rbuf, len, dl) < 0) {
			snprintf(m->err, sizeof m->err, "read: %s",
				 errno == ETIMEDOUT ? "timeout" : strerror(errno));
			return -1;
		}
		if (milter_pkt_parse(m->rbuf, len, pk) < 0) {
			snprintf(m->err, sizeof m->err, "malformed packet (command 0x%02x, %u bytes)",
				 (unsigned char)m->rbuf[0], len);
			return -1;
		}
		/* A change or a progress report: another packet follows, which
		 * the milter's Nagle holds until ours ACKs this one (a delayed
		 * ACK: 40 ms per change). ACK now. */
		if (m->tcp && strchr("hibm+-2eqp", pk->cmd))
			(void)setsockopt(m->fd, IPPROTO_TCP, TCP_QUICKACK, &(int){ 1 }, sizeof(int));
		if (pk->cmd != 'p')
			return 0;
	}
}

/* ---- connecting and negotiating ------------------------------------------ */

/* addr_resolve - the socket address of "inet:host:port" (host a name,
 * an IPv4 address or [IPv6]) or "unix:/path"; with numeric, only what
 * needs no lookup (1 otherwise: a host name, left to each connect, which
 * reports what is wrong with it). 0, or -1 with err. */
static int addr_resolve(const char *spec, int numeric, struct sockaddr_storage *ss, socklen_t *len, char *err,
			size_t errlen)
{
	memset(ss, 0, sizeof *ss);
	if (!strncmp(spec, "unix:", 5)) {
		struct sockaddr_un *sun = (struct sockaddr_un *)ss;
		if (strlen(spec + 5) >= sizeof sun->sun_path) {
			snprintf(err, errlen, "socket path too long");
			return -1;
		}
		sun->sun_family = AF_UNIX;
		strcpy(sun->sun_path, spec + 5);
		*len = sizeof *sun;
		return 0;
	}
	const char *hp = !strncmp(spec, "inet:", 5) ? spec + 5 : spec;
	const char *colon = strrchr(hp, ':');
	char host[256];
	if (!colon || (size_t)(colon - hp) >= sizeof host) {
		snprintf(err, errlen, "bad milter address");
		return -1;
	}
	snprintf(host, sizeof host, "%.*s", (int)(colon - hp), hp);
	char *h = host;
	if (h[0] == '[' && h[strlen(h) - 1] == ']') {
		h[strlen(h) - 1] = 0;
		h++;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM,
				  .ai_flags = numeric ? AI_NUMERICHOST | AI_NUMERICSERV : 0 },
			*ai = NULL;
	int rc = getaddrinfo(h, colon + 1, &hints, &ai); /* a worker thread may block */
	if (rc && numeric)
		return 1;
	if (rc) {
		snprintf(err, errlen, "resolve: %s", gai_strerror(rc));
		return -1;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

/* milter_open - a socket to the milter, connected within the connect
 * timeout; -1 with m->err. */
static int milter_open(struct milter *m)
{
	struct sockaddr_storage ss = m->def->ss;
	socklen_t len = m->def->sslen; /* 0: a host name, looked up now */
	if (!len && addr_resolve(m->name, 0, &ss, &len, m->err, sizeof m->err) < 0)
		return -1;
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(m->err, sizeof m->err, "socket: %s", strerror(errno));
		return -1;
	}
	int soerr = 0;
	socklen_t sl = sizeof soerr;
	if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno != EINPROGRESS && errno != EAGAIN)
		soerr = errno;
	else if (wait_fd(fd, POLLOUT, now_ms() + (uint64_t)m->def->spec.connect_timeout) < 0 ||
		 getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		soerr = errno;
	if (soerr) {
		snprintf(m->err, sizeof m->err, "connect: %s",
			 soerr == ETIMEDOUT ? "timeout" : strerror(soerr));
		close(fd);
		return -1;
	}
	/* Each packet is written whole (send_pkt) and then waited on: no
	 * Nagle delay behind the previous one's delayed ACK (40 ms each). */
	m->tcp = ss.ss_family != AF_UNIX;
	if (m->tcp)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 }, sizeof(int));
	m->fd = fd;
	m->ra_pos = m->ra_len = 0; /* nothing read ahead from an earlier connection */
	return 0;
}

/* put32 - append a big-endian word. */
static void put32(char *p, uint32_t v)
{
	v = htonl(v);
	memcpy(p, &v, 4);
}

/* negotiate - SMFIC_OPTNEG: our version, the actions we honour, the
 * stages a milter may skip; its answer must ask for no more. */
static int negotiate(struct milter *m, int version)
{
	uint32_t offer = version >= 6 ? PFLAGS_V6 : version >= 4 ? PFLAGS_V4 : PFLAGS_V2;
	char b[12];
	put32(b, (uint32_t)version);
	put32(b + 4, ACTIONS_HONOURED);
	put32(b + 8, offer);
	struct milter_pkt pk;
	if (send_pkt(m, SMFIC_OPTNEG, b, sizeof b, 0) < 0 ||
	    milter_recv(m, (uint64_t)m->def->spec.command_timeout, &pk) < 0)
		return -1;
	if (pk.cmd != 'O' || pk.idx < 2 || pk.idx > 6) {
		snprintf(m->err, sizeof m->err, "bad negotiation reply (command %c, version %u)", pk.cmd,
			 pk.idx);
		return -1;
	}
	if (pk.pflags & ~offer) {
		snprintf(m->err, sizeof m->err, "asks for protocol flags 0x%x perimd does not offer",
			 pk.pflags & ~offer);
		return -1;
	}
	if (pk.actions & ~ACTIONS_HONOURED)
		log_info("milter %s: asked for actions 0x%x perimd does not grant (symbol lists)", m->name,
			 pk.actions & ~ACTIONS_HONOURED);
	m->actions = pk.actions & ACTIONS_HONOURED;
	m->pflags = pk.pflags;
	m->version = pk.idx < (uint32_t)version ? (int)pk.idx : version;
	if (m->version < 4) /* SMFIC_DATA came with version 4 */
		m->pflags |= SMFIP_NODATA;
	return 0;
}

/* ---- macros --------------------------------------------------------------- */

/* send_macros - SMFIC_MACRO for stage cmd with the names in list (the
 * milter_*_macros parameter) that have a value. */
static int send_macros(struct milter *m, struct milter_txn *mt, char cmd, const struct conf_list *list)
{
	char buf[4096];
	size_t n = 0;
	buf[n++] = cmd;
	for (int i = 0; i < list->n; i++) {
		const char *v = milter_macro_get(mt, list->v[i]);
		if (!v)
			continue;
		size_t kl = strlen(list->v[i]), vl = strlen(v);
		if (n + kl + vl + 2 > sizeof buf)
			break;
		memcpy(buf + n, list->v[i], kl + 1);
		n += kl + 1;
		memcpy(buf + n, v, vl + 1);
		n += vl + 1;
	}
	return n > 1 ? send_pkt(m, SMFIC_MACRO, buf, n, 1) : 0;
}

/* ---- one stage, one milter ----------------------------------------------- */

/* milter_verdict - the answer to a stage: 0 continue, 1 this milter accepted,
 * 2 a verdict for the transaction (in res), -1 broken (m->err). */
int milter_verdict(struct milter *m, const struct milter_pkt *pk, struct milter_result *res)
{
	switch (pk->cmd) {
	case 'c': return 0;
	case 's': return 0; /* skip: the caller stops sending body */
	case 'a': m->done = 1; return 1;
	case 'r':
		res->act = MILTER_REJECT;
		snprintf(res->reply, sizeof res->reply, "550 5.7.1 Command rejected");
		break;
	case 't':
		res->act = MILTER_TEMPFAIL;
		snprintf(res->reply, sizeof res->reply, "451 4.7.1 Service unavailable - try again later");
		break;
	case 'd':
		res->act = MILTER_DISCARD;
		res->reply[0] = 0;
		break;
	case 'y': {
		int cls = milter_reply_text(pk->s1, res->reply, sizeof res->reply);
		if (cls < 0) {
			snprintf(m->err, sizeof m->err, "invalid reply code \"%.60s\"", pk->s1);
			return -1;
		}
		res->act = cls == 4 ? MILTER_TEMPFAIL : MILTER_REJECT;
		break;
	}
	default: snprintf(m->err, sizeof m->err, "unexpected reply '%c'", pk->cmd); return -1;
	}
	snprintf(res->which, sizeof res->which, "%.127s", m->name);
	return 2;
}

/* milter_send - a command after its macros, no reply read. */
int milter_send(struct milter *m, struct milter_txn *mt, char cmd, const struct conf_list *macros,
		const void *data, size_t len)
{
	if (macros && send_macros(m, mt, cmd, macros) < 0)
		return -1;
	return send_pkt(m, cmd, data, len, 0);
}

/* milter_cmd - send a command (after its macros) and, unless the milter
 * said it needs no reply (nr flag), read its verdict. */
int milter_cmd(struct milter *m, struct milter_txn *mt, char cmd, const struct conf_list *macros,
	       const void *data, size_t len, uint32_t nr, struct milter_result *res)
{
	if (milter_send(m, mt, cmd, macros, data, len) < 0)
		return -1;
	if (m->pflags & nr)
		return 0;
	struct milter_pkt pk;
	const struct milter_spec *sp = &m->def->spec;
	uint64_t to =
	    (uint64_t)(cmd == SMFIC_BODY || cmd == SMFIC_BODYEOB ? sp->content_timeout : sp->command_timeout);
	if (milter_recv(m, to, &pk) < 0)
		return -1;
	int r = milter_verdict(m, &pk, res);
	if (r == 0 && pk.cmd == 's')
		m->skip_body = 1;
	return r;
}

/* milter_fail - m broke: its default_action for the transaction
 * (tempfail, reject), or it is left out (accept). 2 or 1, as verdict(). */
int milter_fail(struct milter *m, struct milter_txn *mt, struct milter_result *res)
{
	log_warn("%s: milter %s: %s; default_action = %s", mt->msgid_or_sess, m->name, m->err,
		 milter_action_names[m->def->spec.default_action]);
	stats_inc(ST_milter_errors);
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
	m->done = 1;
	m->broken = 1;
	return milter_failed(m, mt, res);
}

/* milter_failed - the verdict of a milter that broke earlier in the
 * transaction, at each later stage: milter_default_action again (so a
 * failure at one RCPT does not let the message pass unfiltered), or 1
 * (left out) for accept. */
int milter_failed(struct milter *m, struct milter_txn *mt, struct milter_result *res)
{
	if (m->def->spec.default_action == MILTER_DEFAULT_ACCEPT)
		return 1;
	snprintf(res->which, sizeof res->which, "%.127s", m->name);
	if (m->def->spec.default_action == MILTER_DEFAULT_REJECT) {
		res->act = MILTER_REJECT;
		snprintf(res->reply, sizeof res->reply, "550 5.5.0 Service unavailable");
	} else {
		res->act = MILTER_TEMPFAIL;
		snprintf(res->reply, sizeof res->reply, "451 4.3.5 Server configuration problem");
	}
	return 2;
}

/* conn_verdict - r, the answer to connect or HELO, remembered for
 * milter_txn_park: an accept holds for the session, a refusal is asked
 * again on a new connection by the next transaction. */
static int conn_verdict(struct milter *m, int r)
{
	m->conn_accept = r == 1;
	m->conn_refused = r == 2;
	return r;
}

/* session_start - first stage of a transaction: connect, negotiate,
 * then SMFIC_CONNECT and SMFIC_HELO with their macros. */
static int session_start(struct milter *m, struct milter_txn *mt, struct milter_result *res)
{
	const struct conf *cf = mt->cf;
	m->started = 1;
	if (milter_open(m) < 0 || negotiate(m, m->def->spec.protocol) < 0)
		return -1;
	if (!(m->pflags & SMFIP_NOCONNECT)) {
		char b[1024];
		size_t n = 0;
		const char *host = mt->client_name[0] ? mt->client_name : "unknown";
		n += (size_t)snprintf(b, sizeof b - 64, "%s", host) + 1;
		int v6 = strchr(mt->client_addr, ':') != NULL;
		b[n++] = v6 ? '6' : '4';
		uint16_t port = htons((uint16_t)mt->client_port);
		memcpy(b + n, &port, 2);
		n += 2;
		n += (size_t)snprintf(b + n, sizeof b - n, "%s", mt->client_addr) + 1;
		int r = milter_cmd(m, mt, SMFIC_CONNECT, &cf->milter_connect_macros, b, n, SMFIP_NR_CONN, res);
		if (r)
			return conn_verdict(m, r);
	}
	if (!(m->pflags & SMFIP_NOHELO) && mt->helo[0])
		return conn_verdict(m,
				    milter_cmd(m, mt, SMFIC_HELO, &cf->milter_helo_macros, mt->helo,
					       strlen(mt->helo) + 1, SMFIP_NR_HELO, res));
	return 0;
}

/* ---- the jobs ------------------------------------------------------------- */

struct milter_req {
	struct milter_txn *mt;
	struct job *job;
	char stage; /* 'M', 'R', 'T', 'E' */
	char *arg;  /* MAIL, RCPT: "<address>\0" and each ESMTP argument "\0"-ended */
	size_t arglen;
	struct spool *sp;
	milter_done_fn *done;
	void *done_arg;
	struct milter_result res;
};

/* stage_envelope - MAIL, RCPT or DATA for each milter still in the transaction:
 * the first stage connects. A verdict of one milter ends the stage. */
static void stage_envelope(struct milter_req *rq)
{
	struct milter_txn *mt = rq->mt;
	const struct conf *cf = mt->cf;
	for (int i = 0; i < mt->n; i++) {
		struct milter *m = &mt->m[i];
		if (m->broken && milter_failed(m, mt, &rq->res) == 2)
			return;
		if (m->done)
			continue;
		int r = 0;
		if (!m->started)
			r = session_start(m, mt, &rq->res);
		if (r == 0 && !m->done) {
			const char *b = rq->arg;
			size_t n = rq->arglen;
			m->in_msg = 1; /* from MAIL on: SMFIC_ABORT if the transaction ends early */
			if (rq->stage == 'M' && !(m->pflags & SMFIP_NOMAIL))
				r = milter_cmd(m, mt, SMFIC_MAIL, &cf->milter_mail_macros, b, n,
					       SMFIP_NR_MAIL, &rq->res);
			else if (rq->stage == 'R' && !(m->pflags & SMFIP_NORCPT))
				r = milter_cmd(m, mt, SMFIC_RCPT, &cf->milter_rcpt_macros, b, n,
					       SMFIP_NR_RCPT, &rq->res);
			else if (rq->stage == 'T' && !(m->pflags & SMFIP_NODATA))
				r = milter_cmd(m, mt, SMFIC_DATA, &cf->milter_data_macros, NULL, 0,
					       SMFIP_NR_DATA, &rq->res);
		}
		if (r < 0)
			r = milter_fail(m, mt, &rq->res);
		if (r == 2)
			return;
	}
}

/* job_work - the stage, on a worker thread. */
static void job_work(void *arg)
{
	struct milter_req *rq = arg;
	if (rq->stage == 'E')
		milter_stage_eom(rq->mt, rq->sp, &rq->res);
	else
		stage_envelope(rq);
}

/* job_done - back on the loop: report, unless the transaction went. */
static void job_done(void *arg, int cancelled)
{
	struct milter_req *rq = arg;
	struct milter_txn *mt = rq->mt;
	mt->busy = NULL;
	if (cancelled || mt->orphan) {
		milter_result_free(&rq->res);
		if (mt->orphan)
			milter_txn_free(mt, mt->orphan_spool);
	} else {
		rq->done(rq->done_arg, &rq->res);
	}
	free(rq->arg);
	free(rq);
}

/* submit - start a stage on the worker pool. */
static struct milter_req *submit(struct ev_loop *loop, struct milter_txn *mt, char stage, const char *a,
				 const char *esmtp, struct spool *sp, milter_done_fn *done, void *arg)
{
	struct milter_req *rq = xcalloc(1, sizeof *rq);
	rq->mt = mt;
	rq->stage = stage;
	if (a) { /* "<address>", then the ESMTP arguments, each NUL-ended */
		size_t al = strlen(a), el = esmtp ? strlen(esmtp) : 0;
		rq->arg = xmalloc(al + el + 4);
		rq->arglen = (size_t)sprintf(rq->arg, "<%s>", a) + 1;
		for (const char *e = esmtp; e && *e;) {
			size_t tl = strcspn(e, " ");
			if (tl) {
				memcpy(rq->arg + rq->arglen, e, tl);
				rq->arglen += tl;
				rq->arg[rq->arglen++] = 0;
			}
			e += tl + (e[tl] == ' ');
		}
	}
	rq->sp = sp;
	rq->done = done;
	rq->done_arg = arg;
	mt->busy = rq;
	rq->job = jobs_submit(loop, job_work, job_done, rq);
	return rq;
}

/* milter_mail - see milter.h. */
struct milter_req *milter_mail(struct ev_loop *loop, struct milter_txn *mt, const char *sender,
			       const char *esmtp, milter_done_fn *done, void *arg)
{
	return submit(loop, mt, 'M', sender, esmtp, NULL, done, arg);
}

/* milter_rcpt - see milter.h. */
struct milter_req *milter_rcpt(struct ev_loop *loop, struct milter_txn *mt, const char *rcpt,
			       const char *esmtp, milter_done_fn *done, void *arg)
{
	return submit(loop, mt, 'R', rcpt, esmtp, NULL, done, arg);
}

/* milter_data - see milter.h. */
struct milter_req *milter_data(struct ev_loop *loop, struct milter_txn *mt, milter_done_fn *done, void *arg)
{
	return submit(loop, mt, 'T', NULL, NULL, NULL, done, arg);
}

/* milter_eom - see milter.h. */
struct milter_req *milter_eom(struct ev_loop *loop, struct milter_txn *mt, struct spool *sp,
			      milter_done_fn *done, void *arg)
{
	return submit(loop, mt, 'E', NULL, NULL, sp, done, arg);
}

/* ---- the transaction ------------------------------------------------------- */

/* milter_enabled - see milter.h. */
int milter_enabled(const struct conf *cf)
{
	return cf->smtpd_milters.n > 0;
}

/* unclosed - a '{' without '}' was split as text (conf_list_split):
 * err names the items from it on, as written. */
static void unclosed(const struct conf *cf, int i, char *err, size_t errlen)
{
	const struct conf_list *l = &cf->smtpd_milters;
	const char *v = l->v[i];
	if (v[strlen(v) - 1] == '}')
		return;
	struct strbuf b = { 0 };
	for (int k = i; k < l->n; k++) {
		if (k > i)
			sb_add(&b, " ", 1);
		sb_add(&b, l->v[k], strlen(l->v[k]));
	}
	snprintf(err, errlen, "smtpd_milters: \"%.300s\": \"{\" without \"}\" (perimd.conf(5))", sb_str(&b));
	sb_free(&b);
}

/* set_free - a set and its conf reference. */
static void set_free(struct milter_set *ms)
{
	conf_release(ms->cf);
	free(ms->d);
	free(ms);
}

/* def_load - item i of smtpd_milters into d: its settings over the
 * milter_* parameters, its socket address when it needs no lookup; 0,
 * or -1 with err naming the item. */
static int def_load(const struct conf *cf, int i, struct milter_def *d, char *err, size_t errlen)
{
	char e[768];
	milter_spec_defaults(cf, &d->spec);
	if (milter_spec_parse(cf->smtpd_milters.v[i], &d->spec, e, sizeof e) < 0) {
		snprintf(err, errlen, "smtpd_milters: %s (perimd.conf(5))", e);
		if (cf->smtpd_milters.v[i][0] == '{')
			unclosed(cf, i, err, errlen);
		return -1;
	}
	if (addr_resolve(d->spec.addr, 1, &d->ss, &d->sslen, e, sizeof e) != 0)
		d->sslen = 0; /* a host name (or the connect will tell) */
	return 0;
}

/* milter_set_load - see milter.h. */
struct milter_set *milter_set_load(struct conf *c, char *err, size_t errlen)
{
	struct milter_set *ms = xcalloc(1, sizeof *ms);
	conf_ref(c);
	ms->cf = c;
	ms->refs = 1;
	ms->n = c->smtpd_milters.n;
	ms->d = xcalloc((size_t)ms->n + 1, sizeof *ms->d);
	for (int i = 0; i < ms->n; i++)
		if (def_load(c, i, &ms->d[i], err, errlen) < 0) {
			set_free(ms);
			return NULL;
		}
	return ms;
}

/* milter_set_release - see milter.h. */
void milter_set_release(struct milter_set *ms)
{
	if (ms && __atomic_sub_fetch(&ms->refs, 1, __ATOMIC_ACQ_REL) == 0)
		set_free(ms);
}

/* milter_txn_new - see milter.h. */
struct milter_txn *milter_txn_new(struct milter_set *ms)
{
	struct milter_txn *mt = xcalloc(1, sizeof *mt);
	__atomic_add_fetch(&ms->refs, 1, __ATOMIC_RELAXED);
	mt->set = ms;
	mt->cf = ms->cf;
	mt->n = ms->n;
	mt->m = xcalloc((size_t)mt->n + 1, sizeof *mt->m);
	for (int i = 0; i < mt->n; i++) {
		mt->m[i].def = &ms->d[i];
		mt->m[i].name = ms->d[i].spec.addr;
		mt->m[i].fd = -1;
	}
	snprintf(mt->msgid_or_sess, sizeof mt->msgid_or_sess, "-");
	return mt;
}

/* milter_connect_info - see milter.h. */
void milter_connect_info(struct milter_txn *mt, const char *client_name, const char *addr, int port,
			 const char *helo)
{
	snprintf(mt->client_name, sizeof mt->client_name, "%s", client_name ? client_name : "");
	snprintf(mt->client_addr, sizeof mt->client_addr, "%s", addr);
	snprintf(mt->helo, sizeof mt->helo, "%s", helo ? helo : "");
	mt->client_port = port;
}

/* milter_macro - see milter.h. */
void milter_macro(struct milter_txn *mt, const char *name, const char *value)
{
	if (!strcmp(name, "i"))
		snprintf(mt->msgid_or_sess, sizeof mt->msgid_or_sess, "%s", value ? value : "-");
	for (int i = 0; i < mt->nmac; i++)
		if (!strcmp(mt->mac[i].name, name)) {
			free(mt->mac[i].value);
			mt->mac[i].value = value ? xstrdup(value) : NULL;
			return;
		}
	if (!value || mt->nmac == MILTER_MACROS_MAX)
		return;
	mt->mac[mt->nmac].name = xstrdup(name);
	mt->mac[mt->nmac++].value = xstrdup(value);
}

/* milter_macro_get - the value of a macro named as in the parameters
 * ("{client_addr}" or "j"), NULL when unset. */
const char *milter_macro_get(const struct milter_txn *mt, const char *name)
{
	size_t l = strlen(name);
	if (l > 2 && name[0] == '{' && name[l - 1] == '}') {
		name++;
		l -= 2;
	}
	for (int i = 0; i < mt->nmac; i++)
		if (strlen(mt->mac[i].name) == l && !strncmp(mt->mac[i].name, name, l))
			return mt->mac[i].value;
	return NULL;
}

/* milter_result_free - see milter.h. */
void milter_result_free(struct milter_result *r)
{
	if (r->spool)
		spool_free(r->spool);
	r->spool = NULL;
	for (int i = 0; i < r->nmods; i++) {
		free(r->mods[i].addr);
		free(r->mods[i].which);
	}
	free(r->mods);
	r->mods = NULL;
	r->nmods = 0;
}

/* quit_close - SMFIC_QUIT, without waiting (a socket buffer takes 5
 * bytes), and close. */
static void quit_close(struct milter *m)
{
	static const char quit[5] = { 0, 0, 0, 1, SMFIC_QUIT };
	(void)!send(m->fd, quit, sizeof quit, MSG_NOSIGNAL | MSG_DONTWAIT);
	close(m->fd);
	m->fd = -1;
}

/* park_one - m at the end of a transaction: kept for the next (an
 * SMFIC_ABORT if it is in the middle of a message), or closed. */
static void park_one(struct milter *m)
{
	static const char abort_pkt[5] = { 0, 0, 0, 1, SMFIC_ABORT };
	if (m->fd >= 0 &&
	    (m->conn_accept || m->conn_refused || m->ra_pos < m->ra_len ||
	     (m->in_msg &&
	      send(m->fd, abort_pkt, sizeof abort_pkt, MSG_NOSIGNAL | MSG_DONTWAIT) !=
		  (ssize_t)sizeof abort_pkt)))
		quit_close(m);
	m->in_msg = 0;
	m->skip_body = 0;
	if (m->conn_accept) /* done, not asked again in this session */
		return;
	m->done = 0;
	m->broken = 0;
	m->conn_refused = 0;
	m->started = m->fd >= 0; /* closed: connected again at the next MAIL */
}

/* milter_txn_park - see milter.h. */
struct milter_txn *milter_txn_park(struct milter_txn *mt, struct spool *sp)
{
	if (!mt || mt->busy) {
		milter_txn_free(mt, sp);
		return NULL;
	}
	spool_free(sp);
	for (int i = 0; i < mt->n; i++)
		park_one(&mt->m[i]);
	mt->parked_at = now_ms();
	return mt;
}

/* milter_txn_idle_ms - see milter.h. */
long long milter_txn_idle_ms(const struct milter_txn *mt)
{
	long long ms = 0;
	for (int i = 0; i < mt->n; i++) {
		long long t = mt->m[i].def->spec.command_timeout;
		if (mt->m[i].fd >= 0 && (!ms || t < ms))
			ms = t;
	}
	return ms;
}

/* milter_txn_reuse - see milter.h. */
void milter_txn_reuse(struct milter_txn *mt)
{
	uint64_t idle = now_ms() - mt->parked_at;
	for (int i = 0; i < mt->n; i++) {
		struct milter *m = &mt->m[i];
		if (m->fd < 0)
			continue;
		char c;
		ssize_t r = recv(m->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
		if (idle > (uint64_t)m->def->spec.command_timeout || r >= 0 ||
		    (errno != EAGAIN && errno != EWOULDBLOCK)) {
			quit_close(m);
			m->started = 0;
		}
	}
}

/* milter_txn_free - see milter.h. */
void milter_txn_free(struct milter_txn *mt, struct spool *sp)
{
	if (!mt)
		return;
	if (mt->busy) { /* the worker still talks: freed when it ends */
		mt->orphan = 1;
		mt->orphan_spool = sp;
		jobs_cancel(mt->busy->job);
		return;
	}
	spool_free(sp);
	for (int i = 0; i < mt->n; i++) {
		if (mt->m[i].fd >= 0)
			quit_close(&mt->m[i]);
		free(mt->m[i].rbuf);
	}
	for (int i = 0; i < mt->nmac; i++) {
		free(mt->mac[i].name);
		free(mt->mac[i].value);
	}
	free(mt->m);
	milter_set_release(mt->set);
	free(mt);
}
