/*
 * milter_edit.c - the end-of-message stage (milter.h): each milter in
 * turn gets the headers, end of headers, the body in chunks of at
 * most 65535 bytes and end of message, then answers with changes and a
 * verdict. Header and body changes make a new stored copy that the next
 * milter sees; envelope changes are collected for the session. Every
 * change is logged. Runs on a worker thread.
 */
#include "milter_int.h"
#include "conf.h"
#include "log.h"
#include "spool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* A header field of the stored copy. */
struct hdr {
	char *name;
	char *raw; /* after the colon up to the final CRLF, folding kept */
	int deleted;
};

/* The stored copy being worked on. */
struct msg {
	struct spool *sp; /* the current copy */
	int owned;        /* sp is ours (a copy made here) */
	struct hdr *h;
	int nh, caph;
	uint64_t body_off;     /* where the body begins in sp */
	int has_sep;           /* an empty line separates headers and body */
	struct spool *newbody; /* a replaced body (SMFIR_REPLBODY) */
	int newbody_cr;        /* canonicalizing: a CR is pending */
	int changed;
	int quarantined;       /* SMFIR_QUARANTINE: refused (no queue) */
	int too_big;           /* a replaced body past message_size_limit: refused */
	uint64_t change_bytes; /* of the current milter's other changes */
};

/* hdr_add - insert a header at position pos (nh: append). */
static void hdr_add(struct msg *g, int pos, const char *name, char *raw)
{
	if (g->nh == g->caph) {
		g->caph = g->caph ? 2 * g->caph : 16;
		g->h = xrealloc(g->h, (size_t)g->caph * sizeof *g->h);
	}
	if (pos < 0 || pos > g->nh)
		pos = g->nh;
	memmove(g->h + pos + 1, g->h + pos, (size_t)(g->nh - pos) * sizeof *g->h);
	g->h[pos] = (struct hdr){ .name = xstrdup(name), .raw = raw };
	g->nh++;
}

/* field_name_len - the length of a header line's field name (printable,
 * no colon, RFC 5322 §2.2), 0 when the line is not a header. */
static size_t field_name_len(const char *l, size_t n)
{
	size_t i = 0;
	while (i < n && l[i] > 32 && l[i] < 127 && l[i] != ':')
		i++;
	return i > 0 && i < n && l[i] == ':' ? i : 0;
}

/* line_len - the length of the line at l (n bytes left) without its
 * CRLF; n when there is no CRLF. */
static size_t line_len(const char *l, size_t n)
{
	const char *e = memmem(l, n, "\r\n", 2);
	return e ? (size_t)(e - l) : n;
}

/* msg_load - read the header section of sp into g. */
static int msg_load(struct msg *g, struct spool *sp)
{
	g->sp = sp;
	uint64_t size = spool_size(sp), off = 0;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	const char *end = NULL;
	while (off < size) { /* up to the empty line */
		if (cap - len < 65536) {
			cap = cap ? 2 * cap : 65536 * 2;
			buf = xrealloc(buf, cap + 1);
		}
		ssize_t r = spool_read(sp, off, buf + len, 65536);
		if (r <= 0) {
			free(buf);
			return -1;
		}
		size_t from = len > 3 ? len - 3 : 0; /* the end may straddle two reads */
		len += (size_t)r;
		off += (uint64_t)r;
		buf[len] = 0;
		if ((len >= 2 && !memcmp(buf, "\r\n", 2)) ||
		    (end = memmem(buf + from, len - from, "\r\n\r\n", 4)))
			break;
	}
	size_t p = 0;
	g->body_off = size;
	while (p < len) {
		const char *l = buf + p;
		size_t ln = line_len(l, len - p), nl;
		if (ln == 0) {
			g->has_sep = 1;
			g->body_off = p + 2;
			break;
		}
		if (!(nl = field_name_len(l, ln))) { /* not a header: the body begins here */
			g->body_off = p;
			break;
		}
		/* The field with its continuation lines, folding kept. */
		size_t fend = p + ln, q = p + ln + 2;
		while (q < len && (buf[q] == ' ' || buf[q] == '\t')) {
			size_t cl = line_len(buf + q, len - q);
			fend = q + cl;
			q += cl + 2;
		}
		char name[1024];
		snprintf(name, sizeof name, "%.*s", (int)(nl < 1000 ? nl : 1000), l);
		size_t rl = fend - (p + nl + 1);
		char *raw = xmalloc(rl + 1);
		memcpy(raw, l + nl + 1, rl);
		raw[rl] = 0;
		hdr_add(g, g->nh, name, raw);
		p = q;
	}
	free(buf);
	return 0;
}

/* msg_clear - forget the parsed headers and a replaced body. */
static void msg_clear(struct msg *g)
{
	for (int i = 0; i < g->nh; i++) {
		free(g->h[i].name);
		free(g->h[i].raw);
	}
	free(g->h);
	g->h = NULL;
	g->nh = g->caph = 0;
	if (g->newbody)
		spool_free(g->newbody);
	g->newbody = NULL;
	g->newbody_cr = 0;
	g->has_sep = 0;
	g->changed = 0;
}

/* canon_append - append data with every line end made CRLF; *cr keeps a
 * CR seen last. */
static int canon_append(struct spool *sp, const char *d, size_t n, int *cr)
{
	char out[8192];
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (o + 4 > sizeof out) {
			if (spool_append(sp, out, o) < 0)
				return -1;
			o = 0;
		}
		char c = d[i];
		if (*cr) {
			out[o++] = '\r';
			out[o++] = '\n';
			*cr = 0;
			if (c == '\n')
				continue;
		}
		if (c == '\r')
			*cr = 1;
		else if (c == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
		} else
			out[o++] = c;
	}
	return o ? spool_append(sp, out, o) : 0;
}

/* canon_value - a milter's header value as stored: a leading space, line
 * ends CRLF, and every line after the first a continuation of the field:
 * folded lines keep their own leading white space, a line without gets a
 * space, and empty lines go (a line break must never start another
 * header, nor end the header section). */
static char *canon_value(const char *v)
{
	size_t n = strlen(v);
	char *out = xmalloc(3 * n + 2), *o = out;
	if (*v != ' ' && *v != '\t')
		*o++ = ' ';
	for (const char *p = v; *p; p++) {
		if (*p == '\r')
			continue;
		if (*p != '\n') {
			*o++ = *p;
			continue;
		}
		const char *q = p + 1;
		while (*q == '\r' || *q == '\n')
			q++;
		if (!*q)
			break;
		*o++ = '\r';
		*o++ = '\n';
		if (*q != ' ' && *q != '\t')
			*o++ = ' ';
		p = q - 1;
	}
	*o = 0;
	return out;
}

/* copy_body - the body part of g (replaced or original) into out. */
static int copy_body(struct msg *g, struct spool *out)
{
	struct spool *src = g->newbody ? g->newbody : g->sp;
	uint64_t off = g->newbody ? 0 : g->body_off, size = spool_size(src);
	char buf[65536];
	char last[2] = { '\r', '\n' };
	while (off < size) {
		ssize_t r = spool_read(src, off, buf, sizeof buf);
		if (r <= 0)
			return -1;
		if (spool_append(out, buf, (size_t)r) < 0)
			return -1;
		if (r >= 2)
			memcpy(last, buf + r - 2, 2);
		else
			last[0] = last[1], last[1] = buf[0];
		off += (uint64_t)r;
	}
	if (size && memcmp(last, "\r\n", 2)) /* a replaced body ends its last line */
		return spool_append(out, "\r\n", 2);
	return 0;
}

/* msg_rebuild - write the changed copy to a new spool; g now reads it. */
static int msg_rebuild(struct msg *g)
{
	if (g->newbody && g->newbody_cr) {
		if (spool_append(g->newbody, "\r\n", 2) < 0)
			return -1;
		g->newbody_cr = 0;
	}
	struct spool *out = spool_new();
	for (int i = 0; i < g->nh; i++) {
		if (g->h[i].deleted)
			continue;
		if (spool_append(out, g->h[i].name, strlen(g->h[i].name)) < 0 ||
		    spool_append(out, ":", 1) < 0 || spool_append(out, g->h[i].raw, strlen(g->h[i].raw)) < 0 ||
		    spool_append(out, "\r\n", 2) < 0)
			goto fail;
	}
	struct spool *src = g->newbody ? g->newbody : g->sp;
	uint64_t blen = spool_size(src) - (g->newbody ? 0 : g->body_off);
	if ((g->has_sep || blen) && spool_append(out, "\r\n", 2) < 0)
		goto fail;
	if (copy_body(g, out) < 0)
		goto fail;
	spool_finish(out);
	struct spool *old = g->owned ? g->sp : NULL;
	msg_clear(g);
	if (msg_load(g, out) < 0) {
		spool_free(out);
		return -1;
	}
	g->owned = 1;
	if (old)
		spool_free(old);
	return 0;
fail:
	spool_free(out);
	return -1;
}

/* ---- streaming the copy to one milter ----------------------------------- */

/* send_header - SMFIC_HEADER: name, value without leading white space,
 * folded lines joined by LF (as Postfix sends them). */
static int send_header(struct milter *m, struct milter_txn *mt, const struct hdr *h, struct milter_result *res)
{
	size_t nl = strlen(h->name);
	const char *v = h->raw;
	while (*v == ' ' || *v == '\t')
		v++;
	char *b = xmalloc(nl + strlen(v) + 2);
	memcpy(b, h->name, nl + 1);
	size_t o = nl + 1;
	for (; *v; v++)
		if (*v != '\r')
			b[o++] = *v;
	b[o++] = 0;
	int r = milter_cmd(m, mt, 'L', NULL, b, o, 0x80u /* SMFIP_NR_HDR */, res);
	free(b);
	return r;
}

/* send_body - SMFIC_BODY chunks until the end or the milter says skip. */
static int send_body(struct milter *m, struct milter_txn *mt, struct msg *g, struct milter_result *res)
{
	uint64_t off = g->body_off, size = spool_size(g->sp);
	char buf[65535];
	while (off < size && !m->skip_body) {
		ssize_t n = spool_read(g->sp, off, buf, sizeof buf);
		if (n <= 0) {
			snprintf(m->err, sizeof m->err, "spool read error");
			return -1;
		}
		int r = milter_cmd(m, mt, 'B', NULL, buf, (size_t)n, 0x80000u /* SMFIP_NR_BODY */, res);
		if (r)
			return r;
		off += (uint64_t)n;
	}
	return 0;
}

/* stream - headers, EOH and body for one milter, as negotiated. */
static int stream(struct milter *m, struct milter_txn *mt, struct msg *g, struct milter_result *res)
{
	const struct conf *cf = mt->cf;
	int r = 0; /* DATA itself was sent at the DATA command (milter_data) */
	for (int i = 0; !r && i < g->nh && !(m->pflags & 0x20u /* NOHDRS */); i++)
		if (!g->h[i].deleted)
			r = send_header(m, mt, &g->h[i], res);
	if (!r && !(m->pflags & 0x40u /* NOEOH */))
		r = milter_cmd(m, mt, 'N', &cf->milter_end_of_header_macros, NULL, 0, 0x40000u, res);
	if (!r && !(m->pflags & 0x10u /* NOBODY */))
		r = send_body(m, mt, g, res);
	return r;
}

/* ---- the changes ----------------------------------------------------------- */

/* nth_header - the index of the n-th (1-based) live header called name. */
static int nth_header(struct msg *g, const char *name, uint32_t n)
{
	if (n == 0)
		n = 1;
	for (int i = 0; i < g->nh; i++)
		if (!g->h[i].deleted && !strcasecmp(g->h[i].name, name) && --n == 0)
			return i;
	return -1;
}

/* live_pos - the array position before the idx-th live header. */
static int live_pos(struct msg *g, uint32_t idx)
{
	for (int i = 0; i < g->nh; i++)
		if (!g->h[i].deleted && idx-- == 0)
			return i;
	return g->nh;
}

/* env_mod - an envelope change for the session. */
static void env_mod(struct milter_result *res, char op, const char *addr, const char *which)
{
	size_t l = strlen(addr);
	if (l >= 2 && addr[0] == '<' && addr[l - 1] == '>') {
		addr++;
		l -= 2;
	}
	res->mods = xrealloc(res->mods, (size_t)(res->nmods + 1) * sizeof *res->mods);
	struct milter_env_mod *e = &res->mods[res->nmods++];
	e->op = op;
	e->addr = xmalloc(l + 1);
	memcpy(e->addr, addr, l);
	e->addr[l] = 0;
	e->which = xstrdup(which);
}

/* needs - the action flag a change needs. */
static uint32_t needs(char cmd)
{
	switch (cmd) {
	case 'h': return 0x1u;
	case 'i':
	case 'm': return 0x10u | 0x1u; /* CHGHDRS (insheader: ADDHDRS suffices) */
	case 'b': return 0x2u;
	case '+': return 0x4u;
	case '2': return 0x80u;
	case '-': return 0x8u;
	case 'e': return 0x40u;
	case 'q': return 0x20u;
	default: return 0;
	}
}

/* apply - one change packet at end of message; 0, or -1 (m->err). */
static int apply(struct milter *m, struct milter_txn *mt, struct msg *g, const struct milter_pkt *pk,
		 struct milter_result *res)
{
	const char *id = mt->msgid_or_sess;
	uint32_t need = needs(pk->cmd);
	if (!(m->actions & need)) {
		snprintf(m->err, sizeof m->err, "change '%c' without the negotiated action", pk->cmd);
		return -1;
	}
	if (pk->cmd != 'b') { /* bounded as the message is: a flood of changes breaks the protocol */
		g->change_bytes += 8 + (pk->s1 ? strlen(pk->s1) : 0) + (pk->s2 ? strlen(pk->s2) : 0);
		if (g->change_bytes > (uint64_t)mt->cf->message_size_limit) {
			snprintf(m->err, sizeof m->err, "changes past message_size_limit bytes");
			return -1;
		}
	}
	g->changed |= pk->cmd == 'h' || pk->cmd == 'i' || pk->cmd == 'm' || pk->cmd == 'b';
	switch (pk->cmd) {
	case 'h':
		log_info("%s: milter %s: add header %s:%s", id, m->name, pk->s1, pk->s2);
		hdr_add(g, g->nh, pk->s1, canon_value(pk->s2));
		return 0;
	case 'i':
		log_info("%s: milter %s: insert header %u %s:%s", id, m->name, pk->idx, pk->s1, pk->s2);
		hdr_add(g, live_pos(g, pk->idx), pk->s1, canon_value(pk->s2));
		return 0;
	case 'm': {
		int i = nth_header(g, pk->s1, pk->idx);
		if (!pk->s2[0]) {
			log_info("%s: milter %s: delete header %u %s%s", id, m->name, pk->idx, pk->s1,
				 i < 0 ? " (none such)" : "");
			if (i >= 0)
				g->h[i].deleted = 1;
		} else if (i < 0) {
			log_info("%s: milter %s: change header %u %s (none such): add %s:%s", id, m->name,
				 pk->idx, pk->s1, pk->s1, pk->s2);
			hdr_add(g, g->nh, pk->s1, canon_value(pk->s2));
		} else {
			log_info("%s: milter %s: change header %u %s:%s", id, m->name, pk->idx, pk->s1, pk->s2);
			free(g->h[i].raw);
			g->h[i].raw = canon_value(pk->s2);
		}
		return 0;
	}
	case 'b':
		if (!g->newbody) {
			log_info("%s: milter %s: replace body", id, m->name);
			g->newbody = spool_new();
		}
		if (g->too_big || spool_size(g->newbody) + pk->datalen > (uint64_t)mt->cf->message_size_limit) {
			g->too_big = 1; /* the rest is not stored: the message is refused */
			return 0;
		}
		if (canon_append(g->newbody, pk->data, pk->datalen, &g->newbody_cr) < 0) {
			snprintf(m->err, sizeof m->err, "replaced body: %s", strerror(errno));
			return -1;
		}
		return 0;
	case '+':
	case '2':
		log_info("%s: milter %s: add recipient %s%s%s", id, m->name, pk->s1, pk->s2 ? " " : "",
			 pk->s2 ? pk->s2 : "");
		env_mod(res, '+', pk->s1, m->name);
		return 0;
	case '-':
		log_info("%s: milter %s: delete recipient %s", id, m->name, pk->s1);
		env_mod(res, '-', pk->s1, m->name);
		return 0;
	case 'e':
		log_info("%s: milter %s: change sender %s%s%s", id, m->name, pk->s1, pk->s2 ? " " : "",
			 pk->s2 ? pk->s2 : "");
		env_mod(res, 'e', pk->s1, m->name);
		return 0;
	case 'q': /* no queue to hold it in: refused once the milter is done */
		log_info("%s: milter %s: quarantine \"%.200s\": refused (perimd has no queue)", id, m->name,
			 pk->s1);
		g->quarantined = 1;
		return 0;
	default: snprintf(m->err, sizeof m->err, "change '%c' not supported", pk->cmd); return -1;
	}
}

/* grown_too_big - m's changes made the message larger than
 * message_size_limit (and than it came): refused, 552 5.3.4, as a
 * message that grows beyond it in DATA. 1 when refused. */
static int grown_too_big(const struct msg *g, const struct milter_txn *mt, const struct milter *m,
			 uint64_t size0, struct milter_result *res)
{
	uint64_t size = spool_size(g->sp), limit = (uint64_t)mt->cf->message_size_limit;
	if (!g->too_big && (size <= limit || size <= size0))
		return 0;
	log_info("%s: milter %s: the changed message exceeds message_size_limit (%llu bytes)",
		 mt->msgid_or_sess, m->name, (unsigned long long)limit);
	res->act = MILTER_REJECT;
	snprintf(res->reply, sizeof res->reply, "552 5.3.4 Message size exceeds fixed limit");
	snprintf(res->which, sizeof res->which, "%.127s", m->name);
	return 1;
}

/* eom_one - the content stages for one milter, then its changes and
 * verdict. As verdict(): 0/1 go on, 2 a verdict, -1 broken. */
static int eom_one(struct milter *m, struct milter_txn *mt, struct msg *g, struct milter_result *res)
{
	g->change_bytes = 0;
	int r = stream(m, mt, g, res);
	if (r)
		return r;
	if (milter_send(m, mt, 'E', &mt->cf->milter_end_of_data_macros, NULL, 0) < 0)
		return -1;
	for (;;) {
		struct milter_pkt pk;
		if (milter_recv(m, (uint64_t)m->def->spec.content_timeout, &pk) < 0)
			return -1;
		if (needs(pk.cmd)) {
			if (apply(m, mt, g, &pk, res) < 0)
				return -1;
			if (g->too_big) { /* no verdict awaited: what follows is more body */
				close(m->fd);
				m->fd = -1;
				m->done = 1;
				m->in_msg = 0;
				grown_too_big(g, mt, m, 0, res);
				return 2;
			}
			continue;
		}
		r = milter_verdict(m, &pk, res);
		m->in_msg = 0; /* the message's end: ready for the next MAIL */
		if (r != 2)
			m->done = 1; /* the message is past this milter */
		if (r >= 0 && r != 2 && g->quarantined) {
			res->act = MILTER_REJECT;
			snprintf(res->reply, sizeof res->reply,
				 "554 5.7.1 Message quarantined by a content filter");
			snprintf(res->which, sizeof res->which, "%.127s", m->name);
			return 2;
		}
		return r == 2 || r < 0 ? r : 0;
	}
}

/* changes_drop - a milter broke before its verdict: what it changed so
 * far is not the message's (with default_action = accept the message goes
 * on as the milter before it left it; a body cut short by a crash must
 * never be relayed). g is read again from its stored copy, the envelope
 * changes made after the first nmods0 go. 0, or -1 (read error). */
static int changes_drop(struct msg *g, struct milter_result *res, int nmods0)
{
	for (int i = nmods0; i < res->nmods; i++) {
		free(res->mods[i].addr);
		free(res->mods[i].which);
	}
	res->nmods = nmods0;
	g->quarantined = 0;
	g->too_big = 0;
	if (!g->changed && !g->newbody)
		return 0;
	msg_clear(g);
	return msg_load(g, g->sp);
}

/* milter_stage_eom - see milter_int.h. */
void milter_stage_eom(struct milter_txn *mt, struct spool *sp, struct milter_result *res)
{
	struct msg g = { 0 };
	uint64_t size0 = spool_size(sp);
	if (msg_load(&g, sp) < 0) {
		res->act = MILTER_TEMPFAIL;
		snprintf(res->reply, sizeof res->reply, "451 4.3.0 Error: queue file read error");
		return;
	}
	for (int i = 0; i < mt->n; i++) {
		struct milter *m = &mt->m[i];
		if (m->broken && milter_failed(m, mt, res) == 2)
			break;
		if (m->done || m->fd < 0)
			continue;
		int nmods0 = res->nmods;
		int r = eom_one(m, mt, &g, res);
		if (r < 0 && changes_drop(&g, res, nmods0) < 0) {
			res->act = MILTER_TEMPFAIL;
			snprintf(res->reply, sizeof res->reply, "451 4.3.0 Error: queue file read error");
			break;
		}
		if (r < 0)
			r = milter_fail(m, mt, res);
		if (r == 2)
			break;
		if (!g.too_big && (g.changed || g.newbody) && msg_rebuild(&g) < 0) {
			res->act = MILTER_TEMPFAIL;
			snprintf(res->reply, sizeof res->reply, "451 4.3.0 Error: queue file write error");
			break;
		}
		if (grown_too_big(&g, mt, m, size0, res))
			break;
	}
	if (res->act == MILTER_CONTINUE && g.owned) {
		res->spool = g.sp;
		g.owned = 0;
	}
	if (g.owned)
		spool_free(g.sp);
	msg_clear(&g);
}
