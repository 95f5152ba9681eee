/*
 * smtp_proto.c - pure SMTP parsers and formatters.
 *
 * Invariants: nothing here does I/O, allocates, or keeps global state. Every
 * parser either works on one complete unit the caller already delimited
 * (command line, path) or is resumable, and then gives the same result
 * whether fed whole, byte by byte or in any split: the DATA parser keeps its
 * whole state in struct smtp_data_parser; the line finder and the reply
 * parser rescan from the start of the caller's buffer, so they carry none.
 * Output buffers are bounded by the caller-provided sizes stated in
 * smtp_proto.h; nothing is written past them.
 *
 * The DATA parser is the one place where a mistake lets a message be split
 * in two (SMTP smuggling): only the literal bytes CRLF "." CRLF end DATA,
 * where the first CRLF may be the one that ended the DATA command.
 */
#include "smtp_proto.h"

#include <arpa/inet.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

/* ---- small character helpers ------------------------------------------ */

/* lower - ASCII tolower, locale independent */
static int lower(int c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* is_alpha - ASCII letter */
static int is_alpha(int c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

/* is_digit - ASCII digit */
static int is_digit(int c)
{
	return c >= '0' && c <= '9';
}

/* is_atext - RFC 5322 §3.2.3 atext (ASCII part), as used by RFC 5321 Atom */
static int is_atext(int c)
{
	return is_alpha(c) || is_digit(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c));
}

/* mem_ieq - compare n bytes case-insensitively (ASCII) */
static int mem_ieq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return 0;
	return 1;
}

/* utf8_seq - length of the well-formed UTF-8 sequence (RFC 3629 §4) of 2..4
 * bytes at s[0..n), or 0 if s does not start with one. Overlong forms,
 * surrogates and code points above U+10FFFF are ill-formed. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0], lo = 0x80, hi = 0xBF;
	size_t len;

	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c >= 0xE0 && c <= 0xEF)
		len = 3;
	else if (c >= 0xF0 && c <= 0xF4)
		len = 4;
	else
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return len;
}

/* utf8_valid - s[0..n) is well-formed UTF-8; *seen = 1 if it had any
 * non-ASCII character (left alone otherwise) */
static int utf8_valid(const unsigned char *s, size_t n, int *seen)
{
	for (size_t i = 0; i < n;) {
		size_t k = s[i] < 0x80 ? 1 : utf8_seq(s + i, n - i);

		if (!k)
			return 0;
		if (k > 1)
			*seen = 1;
		i += k;
	}
	return 1;
}

/* ---- command lines ---------------------------------------------------- */

/* smtp_line_find - find the end of the next command line (see header) */
enum parse_result smtp_line_find(const char *buf, size_t len, size_t limit, size_t *linelen, size_t *consumed)
{
	const char *lf = memchr(buf, '\n', len);

	if (lf) {
		size_t n = (size_t)(lf - buf);

		if (n > 0 && buf[n - 1] == '\r')
			n--;
		*consumed = (size_t)(lf - buf) + 1;
		if (n > limit) {
			*linelen = SIZE_MAX;
			return PARSE_TOO_LONG;
		}
		*linelen = n;
		return PARSE_OK;
	}
	/* A CR at the very end may be the first half of the terminator, so it
	 * does not count against the limit yet: a line of exactly `limit`
	 * bytes is accepted however its CRLF is split across reads. */
	if (len > limit + (len > 0 && buf[len - 1] == '\r')) {
		*consumed = len;
		*linelen = 0; /* not SIZE_MAX: the terminator is still to come */
		return PARSE_TOO_LONG;
	}
	*consumed = 0;
	*linelen = 0;
	return PARSE_AGAIN;
}

/* verb_names - the command words, by enum smtp_verb (RFC 5321 §4.1.1;
 * STARTTLS RFC 3207, BDAT RFC 3030, AUTH RFC 4954) */
static const char *const verb_names[SMTP_VERB_COUNT] = {
	[SMTP_HELO] = "HELO", [SMTP_EHLO] = "EHLO", [SMTP_MAIL] = "MAIL", [SMTP_RCPT] = "RCPT",
	[SMTP_DATA] = "DATA", [SMTP_RSET] = "RSET", [SMTP_NOOP] = "NOOP", [SMTP_QUIT] = "QUIT",
	[SMTP_VRFY] = "VRFY", [SMTP_EXPN] = "EXPN", [SMTP_HELP] = "HELP", [SMTP_STARTTLS] = "STARTTLS",
	[SMTP_BDAT] = "BDAT", [SMTP_AUTH] = "AUTH",
};

/* smtp_cmd_parse - split a command line into verb and arguments (RFC 5321
 * §4.1.1: verb, then SP and arguments, or nothing). */
enum parse_result smtp_cmd_parse(const char *line, size_t len, enum smtp_verb *verb, const char **args,
				 size_t *args_len)
{
	size_t vlen = 0, i;

	*verb = SMTP_UNKNOWN;
	*args = line;
	*args_len = len;
	/* A NUL would silently cut the argument once it is used as a C
	 * string, and a CR inside a line is a bare CR (RFC 5321 §2.3.8):
	 * neither belongs in a command. */
	if (memchr(line, '\0', len) || memchr(line, '\r', len))
		return PARSE_BAD;
	while (vlen < len && line[vlen] != ' ')
		vlen++;
	for (i = 1; i < SMTP_VERB_COUNT; i++)
		if (strlen(verb_names[i]) == vlen && mem_ieq(line, verb_names[i], vlen))
			break;
	if (i == SMTP_VERB_COUNT)
		return PARSE_OK;
	*verb = (enum smtp_verb)i;
	i = vlen;
	while (i < len && line[i] == ' ')
		i++;
	if (*verb == SMTP_MAIL || *verb == SMTP_RCPT) {
		/* RFC 5321 §4.1.1.2/§4.1.1.3: "MAIL FROM:" / "RCPT TO:"; a
		 * space after the colon is a common deviation we accept. */
		const char *kw = *verb == SMTP_MAIL ? "FROM:" : "TO:";
		size_t kwlen = strlen(kw);

		if (i == vlen || len - i < kwlen || !mem_ieq(line + i, kw, kwlen))
			return PARSE_BAD;
		i += kwlen;
		while (i < len && line[i] == ' ')
			i++;
	}
	while (len > i && (line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	*args = line + i;
	*args_len = len - i;
	return PARSE_OK;
}

/* ---- domains, xtext ---------------------------------------------------- */

/* addr_literal_valid - RFC 5321 §4.1.3 address literal "[...]", IPv4 or
 * "IPv6:" only (no other standardized tag exists). */
static int addr_literal_valid(const char *d, size_t len)
{
	char tmp[INET6_ADDRSTRLEN + 8];
	unsigned char bin[16];
	int af = AF_INET;

	if (len < 3 || d[0] != '[' || d[len - 1] != ']')
		return 0;
	d++;
	len -= 2;
	if (len > 5 && mem_ieq(d, "IPv6:", 5)) {
		af = AF_INET6;
		d += 5;
		len -= 5;
	}
	if (len >= sizeof(tmp) || memchr(d, '\0', len))
		return 0;
	memcpy(tmp, d, len);
	tmp[len] = '\0';
	return inet_pton(af, tmp, bin) == 1;
}

/* smtp_domain_valid - RFC 5321 §4.1.2 Domain: sub-domain = Let-dig
 * [Ldh-str], labels of 1..63 octets, at most 255 in all (RFC 1035 §2.3.4);
 * or an address literal. With allow_utf8, well-formed UTF-8 is allowed in
 * labels (RFC 6531 §3.3 U-labels). '_' is accepted like a letter: the RFC
 * has no room for it, but real host and mail domains carry it (Windows
 * host names, "mail_out.example.org"), and Postfix accepts it too, so an
 * MX refusing it would refuse real mail. */
int smtp_domain_valid(const char *d, size_t len, int allow_utf8)
{
	const unsigned char *s = (const unsigned char *)d;
	size_t i = 0, label = 0;

	if (len == 0 || len > 255)
		return 0;
	if (d[0] == '[')
		return addr_literal_valid(d, len);
	while (i < len) {
		unsigned char c = s[i];

		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return 0;
			label = 0;
			i++;
			continue;
		}
		if (c >= 0x80) {
			size_t n = allow_utf8 ? utf8_seq(s + i, len - i) : 0;

			if (n == 0)
				return 0;
			i += n;
			label += n;
		} else if (is_alpha(c) || is_digit(c) || c == '_' || (c == '-' && label > 0)) {
			i++;
			label++;
		} else {
			return 0;
		}
		if (label > 63)
			return 0;
	}
	return label > 0 && s[len - 1] != '-';
}

/* hex_upper - RFC 3461 §4 hexchar digit: 0-9 or A-F, uppercase only */
static int hex_upper(int c)
{
	return is_digit(c) || (c >= 'A' && c <= 'F');
}

/* smtp_xtext_valid - RFC 3461 §4: xtext = *( xchar / hexchar ), xchar =
 * "!".."~" except "+" and "=", hexchar = "+" 2HEXDIGIT (uppercase). */
int smtp_xtext_valid(const char *s)
{
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '+') {
			if (!hex_upper(s[1]) || !hex_upper(s[2]))
				return 0;
			s += 2;
		} else if (c < '!' || c > '~' || c == '=') {
			return 0;
		}
	}
	return 1;
}

/* ---- paths and ESMTP parameters ---------------------------------------- */

/* scan_dot_string - RFC 5321 §4.1.2 Dot-string = Atom *("." Atom), atext
 * extended by UTF8-non-ascii (RFC 6531 §3.3). Returns the length of the
 * longest valid Dot-string at s[0..n) ending where a non-atext byte starts,
 * 0 if invalid (empty, leading/trailing/double dot, bad UTF-8); *utf8 is set
 * to 1 when a non-ASCII character occurs, to -1 on ill-formed UTF-8. */
static size_t scan_dot_string(const unsigned char *s, size_t n, int *utf8)
{
	size_t i = 0;
	int prev_dot = 1;

	while (i < n) {
		if (s[i] == '.') {
			if (prev_dot)
				return 0;
			prev_dot = 1;
			i++;
		} else if (s[i] >= 0x80) {
			size_t k = utf8_seq(s + i, n - i);

			if (!k) {
				*utf8 = -1;
				return 0;
			}
			*utf8 = 1;
			prev_dot = 0;
			i += k;
		} else if (is_atext(s[i])) {
			prev_dot = 0;
			i++;
		} else {
			break;
		}
	}
	return prev_dot ? 0 : i;
}

/* scan_quoted - RFC 5321 §4.1.2 Quoted-string at s (s[0] == '"'), with
 * qtextSMTP extended by UTF8-non-ascii (RFC 6531 §3.3). Returns its length
 * including both quotes, or 0 if unterminated or invalid. */
static size_t scan_quoted(const unsigned char *s, size_t n, int *utf8)
{
	size_t i = 1;

	while (i < n) {
		unsigned char c = s[i];

		if (c == '"')
			return i + 1;
		if (c == '\\') {
			/* quoted-pairSMTP = "\" %d32-126 */
			if (i + 1 >= n || s[i + 1] < 32 || s[i + 1] > 126)
				return 0;
			i += 2;
		} else if (c >= 0x80) {
			size_t k = utf8_seq(s + i, n - i);

			if (!k) {
				*utf8 = -1;
				return 0;
			}
			*utf8 = 1;
			i += k;
		} else if (c >= 32 && c <= 126) {
			i++;
		} else {
			return 0;
		}
	}
	return 0;
}

/* unquote_if_atomic - RFC 5321 §4.1.2: a Quoted-string local part whose
 * content is a valid Dot-string means the same as that Dot-string; write
 * the plain form to out (room for n bytes) and return its length, or 0 when
 * the quotes are needed. */
static size_t unquote_if_atomic(const unsigned char *q, size_t n, char *out)
{
	size_t o = 0;
	int dummy = 0;

	for (size_t i = 1; i + 1 < n; i++) {
		if (q[i] == '\\')
			i++;
		out[o++] = (char)q[i];
	}
	if (o == 0 || scan_dot_string((unsigned char *)out, o, &dummy) != o)
		return 0;
	return o;
}

/* bad - set *why (when wanted) and return PARSE_BAD */
static enum parse_result bad(const char **why, const char *reason)
{
	if (why)
		*why = reason;
	return PARSE_BAD;
}

/* scan_domain_end - length of the domain at s: up to '>' inside brackets,
 * or up to SP / end for a bare address; a route domain also stops at ','
 * and ':'. */
static size_t scan_domain_end(const char *s, int bracket, int route)
{
	size_t i = 0;

	while (s[i] && s[i] != ' ' && !(bracket && s[i] == '>') && !(route && (s[i] == ',' || s[i] == ':')))
		i++;
	return i;
}

/* parse_params - RFC 5321 §4.1.2 Mail-parameters: esmtp-param *(SP
 * esmtp-param); esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-");
 * esmtp-value = 1*(%d33-60 / %d62-126), extended by UTF8-non-ascii in RFC
 * 6531 §3.3. Keys and values are NUL-terminated in place. */
static enum parse_result parse_params(char *s, struct smtp_path *p, const char **why)
{
	for (;;) {
		char *key, *value = NULL;

		while (*s == ' ')
			s++;
		if (!*s)
			return PARSE_OK;
		if (p->nparams == SMTP_MAX_PARAMS)
			return bad(why, "too many parameters");
		key = s;
		if (!is_alpha(*s) && !is_digit(*s))
			return bad(why, "bad parameter name");
		while (is_alpha(*s) || is_digit(*s) || *s == '-')
			s++;
		if (*s == '=') {
			*s++ = '\0';
			value = s;
			while (*s && *s != ' ') {
				unsigned char c = (unsigned char)*s;
				size_t k = 1;

				/* n = 4 is safe on a C string: the NUL
				 * stops utf8_seq before it reads past it */
				if (c >= 0x80)
					k = utf8_seq((unsigned char *)s, 4);
				else if (c < 33 || c > 126 || c == '=')
					k = 0;
				if (!k)
					return bad(why, "bad parameter value");
				s += k;
			}
			if (s == value)
				return bad(why, "empty parameter value");
		} else if (*s && *s != ' ') {
			return bad(why, "bad parameter name");
		}
		if (*s)
			*s++ = '\0';
		p->params[p->nparams].key = key;
		p->params[p->nparams].value = value;
		p->nparams++;
	}
}

/* parse_route - skip an RFC 5321 §4.1.2 A-d-l source route "@a,@b:" at
 * *sp (which starts with '@'); it is checked and dropped (§C, §3.3: relays
 * MUST accept and SHOULD ignore it). */
static enum parse_result parse_route(char **sp, int bracket, const char **why)
{
	char *s = *sp;

	for (;;) {
		size_t dl;

		if (*s != '@')
			return bad(why, "bad source route");
		s++;
		dl = scan_domain_end(s, bracket, 1);
		if (!smtp_domain_valid(s, dl, 1))
			return bad(why, "bad source route");
		s += dl;
		if (*s == ':')
			break;
		if (*s != ',')
			return bad(why, "bad source route");
		s++;
	}
	*sp = s + 1;
	return PARSE_OK;
}

/* smtp_path_parse - parse "<addr> [SP param[=value]]..." (see header) */
enum parse_result smtp_path_parse(char *args, int strict, struct smtp_path *p, const char **why)
{
	char *s = args, *local, *dom = NULL;
	size_t llen, dlen = 0, plain_len = 0, alen, n;
	int bracket = 0, quoted = 0, utf8 = 0;
	char plain[SMTP_PATH_MAX + 1];

	memset(p, 0, offsetof(struct smtp_path, buf));
	p->buf[0] = '\0';
	p->addr = p->local = p->domain = p->buf;
	if (why)
		*why = NULL;

	while (*s == ' ')
		s++;
	if (*s == '<') {
		bracket = 1;
		s++;
	} else if (strict) {
		return bad(why, "missing <");
	} else if (!*s) {
		return bad(why, "missing address");
	}

	if (bracket && *s == '>') {
		/* RFC 5321 §4.5.5 null reverse-path "<>"; the caller decides
		 * where it is allowed. */
		s++;
		if (*s && *s != ' ')
			return bad(why, "junk after address");
		return parse_params(s, p, why);
	}
	if (*s == '@' && parse_route(&s, bracket, why) != PARSE_OK)
		return PARSE_BAD;

	local = s;
	n = strlen(s);
	if (*s == '"') {
		llen = scan_quoted((unsigned char *)s, n, &utf8);
		quoted = 1;
	} else {
		llen = scan_dot_string((unsigned char *)s, n, &utf8);
	}
	if (llen == 0)
		return bad(why, utf8 < 0 ? "invalid UTF-8" : "bad local part");
	s += llen;
	if (*s == '@') {
		dom = ++s;
		dlen = scan_domain_end(s, bracket, 0);
		s += dlen;
		if (!utf8_valid((unsigned char *)dom, dlen, &utf8))
			return bad(why, "invalid UTF-8");
		if (!smtp_domain_valid(dom, dlen, 1))
			return bad(why, "bad domain");
	} else if (quoted || llen != 10 || !mem_ieq(local, "Postmaster", 10)) {
		/* RFC 5321 §4.1.1.3: only "<Postmaster>" may lack a domain */
		if (*s && *s != ' ' && *s != '>')
			return bad(why, "bad local part");
		return bad(why, "missing domain");
	}
	if (bracket) {
		if (*s != '>')
			return bad(why, *s ? "bad address" : "missing >");
		s++;
	}
	if (*s && *s != ' ')
		return bad(why, "junk after address");

	if (quoted && llen <= SMTP_PATH_MAX + 2)
		plain_len = unquote_if_atomic((unsigned char *)local, llen, plain);
	if (plain_len) {
		local = plain;
		llen = plain_len;
	}
	p->utf8 = utf8 > 0;
	alen = llen + (dom ? 1 + dlen : 0);
	if (alen > SMTP_PATH_MAX)
		return bad(why, "address too long");

	/* buf: addr NUL local NUL domain NUL; fits since alen <= PATH_MAX */
	if (!dom) {
		memcpy(p->buf, "Postmaster", 11);
		p->local = p->buf;
		p->domain = p->buf + 10;
	} else {
		char *b = p->buf;

		memcpy(b, local, llen);
		b[llen] = '@';
		memcpy(b + llen + 1, dom, dlen);
		b[alen] = '\0';
		b += alen + 1;
		memcpy(b, local, llen);
		b[llen] = '\0';
		p->local = b;
		b += llen + 1;
		memcpy(b, dom, dlen);
		b[dlen] = '\0';
		p->domain = b;
	}
	return parse_params(s, p, why);
}

/* ---- DATA --------------------------------------------------------------- */

/* Line states of the DATA parser: at a line start (no content byte yet),
 * after a first '.', inside a line's content, and after the end of DATA. */
enum { DS_START, DS_DOT, DS_TEXT, DS_DONE };

/* Progress of matching "Received" SP* ":" at the start of a header line:
 * 0..8 = letters matched, then RCV_COLON (in optional spaces), RCV_NO. */
#define RCV_COLON 8
#define RCV_NO 9

/* smtp_data_init - start parsing a message, right after the DATA command's
 * CRLF (which counts as the CRLF before a possible immediate ".") */
void smtp_data_init(struct smtp_data_parser *p, enum smtp_bare_mode mode)
{
	memset(p, 0, sizeof(*p));
	p->state = DS_START;
	p->line_real = 1;
	p->line_empty = 1;
	p->in_headers = 1;
	p->mode = (int)mode;
}

/* data_emit - append one canonical content byte, and follow the header
 * section to count Received fields (RFC 5321 §6.3 loop detection) */
static void data_emit(struct smtp_data_parser *p, char *out, size_t *o, char c)
{
	out[(*o)++] = c;
	p->bytes++;
	if (p->in_headers && p->rcv_match != RCV_NO) {
		if (p->rcv_match < RCV_COLON)
			p->rcv_match =
			    lower((unsigned char)c) == "received"[p->rcv_match] ? p->rcv_match + 1 : RCV_NO;
		else if (c == ':')
			p->received_count++, p->rcv_match = RCV_NO;
		else if (c != ' ' && c != '\t')
			p->rcv_match = RCV_NO;
	}
	p->line_empty = 0;
}

/* data_eol - a line ended: real says it was CRLF, not a bare LF. Returns 1
 * when it ended DATA. */
static int data_eol(struct smtp_data_parser *p, char *out, size_t *o, int real)
{
	if (p->state == DS_DOT) {
		/* RFC 5321 §4.1.1.4: only the exact bytes CRLF "." CRLF end
		 * the mail data. A "." line that ends or follows a bare LF, or
		 * that held a stray CR or NUL, is content; the backend gets
		 * it re-stuffed as "..", so it cannot end a message there. */
		if (real && p->line_real && !p->line_junk) {
			p->state = DS_DONE;
			return 1;
		}
		data_emit(p, out, o, '.');
	}
	if (p->line_empty)
		p->in_headers = 0; /* RFC 5322 §2.1: empty line ends headers */
	out[(*o)++] = '\r';
	out[(*o)++] = '\n';
	p->bytes += 2;
	p->state = DS_START;
	p->line_real = real;
	p->line_junk = 0;
	p->line_empty = 1;
	p->rcv_match = 0;
	return 0;
}

/* HAS_BYTE - a 64-bit word holds a byte equal to b (exact as a yes/no;
 * the bit positions past the first match are not used). */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
#define HAS_ZERO(v) (((v)-ONES) & ~(v)&HIGHS)
#define HAS_BYTE(v, b) HAS_ZERO((v) ^ (ONES * (unsigned char)(b)))

/* plain_span - how many bytes from s on are ordinary line content: no CR,
 * LF or NUL. *high is set when one of them has the top bit set. Eight
 * bytes at a time: a 100 KB body is mostly such runs. */
static size_t plain_span(const unsigned char *s, size_t n, int *high)
{
	size_t i = 0;
	uint64_t acc = 0;

	while (i + 8 <= n) {
		uint64_t w;
		memcpy(&w, s + i, 8);
		if (HAS_ZERO(w) | HAS_BYTE(w, '\r') | HAS_BYTE(w, '\n'))
			break;
		acc |= w;
		i += 8;
	}
	while (i < n && s[i] != '\r' && s[i] != '\n' && s[i] != 0)
		acc |= s[i++];
	if (acc & HIGHS)
		*high = 1;
	return i;
}

/* smtp_data_feed - raw DATA bytes to canonical lines (see header). A CR is
 * held back until the next byte shows whether it starts a CRLF; a '.' at a
 * line start is held back until the line shows whether it is the end,
 * a lone "." content line, or a stuffing dot (RFC 5321 §4.5.2) to drop.
 * Inside a line, once the Received: match is settled, runs of ordinary
 * bytes are copied whole (plain_span) instead of one data_emit each. */
enum parse_result smtp_data_feed(struct smtp_data_parser *p, const char *in, size_t len, size_t *consumed,
				 char *out, size_t *outlen)
{
	size_t o = 0, i = 0;

	if (p->state == DS_DONE) {
		*consumed = 0;
		*outlen = 0;
		return PARSE_OK;
	}
	while (i < len) {
		if (p->state == DS_TEXT && !p->cr_pending && (!p->in_headers || p->rcv_match == RCV_NO)) {
			int high = 0;
			size_t n = plain_span((const unsigned char *)in + i, len - i, &high);

			if (n) {
				memcpy(out + o, in + i, n);
				o += n;
				i += n;
				p->bytes += n;
				p->line_empty = 0;
				if (high)
					p->flags |= SMTP_DATA_8BIT;
				if (i == len)
					break;
			}
		}
		unsigned char c = (unsigned char)in[i++];

		if (p->cr_pending) {
			p->cr_pending = 0;
			if (c == '\n') {
				if (data_eol(p, out, &o, 1)) {
					*consumed = i;
					*outlen = o;
					return PARSE_OK;
				}
				continue;
			}
			/* RFC 5321 §2.3.8: a CR not followed by LF is not a
			 * line end; it is dropped so no backend sees one. */
			p->flags |= SMTP_DATA_BARE_CR;
			p->line_junk = 1;
		}
		if (c == '\r') {
			p->cr_pending = 1;
		} else if (c == '\n') {
			p->flags |= SMTP_DATA_BARE_LF;
			data_eol(p, out, &o, 0);
		} else if (c == '\0') {
			p->flags |= SMTP_DATA_NUL;
			p->line_junk = 1;
		} else {
			if (c >= 0x80)
				p->flags |= SMTP_DATA_8BIT;
			if (p->state == DS_START && c == '.') {
				p->state = DS_DOT;
			} else {
				p->state = DS_TEXT;
				data_emit(p, out, &o, (char)c);
			}
		}
	}
	*consumed = len;
	*outlen = o;
	return PARSE_AGAIN;
}

/* smtp_dot_stuff - double a '.' at each line start (RFC 5321 §4.5.2);
 * whole lines are copied, found with memchr. */
size_t smtp_dot_stuff(const char *in, size_t len, int *at_line_start, char *out)
{
	size_t o = 0, i = 0;
	int ls = *at_line_start;

	while (i < len) {
		if (ls && in[i] == '.')
			out[o++] = '.';
		const char *nl = memchr(in + i, '\n', len - i);
		size_t end = nl ? (size_t)(nl - in) + 1 : len;

		memcpy(out + o, in + i, end - i);
		o += end - i;
		i = end;
		ls = nl != NULL;
	}
	*at_line_start = ls;
	return o;
}

/* fold_byte - smtp_dot_stuff_fold() for one byte c (at most 5 out). */
static size_t fold_byte(char c, struct smtp_stuff *st, size_t limit, char *out)
{
	size_t o = 0;

	if (c == '\n') {
		out[o++] = c;
		st->at_line_start = 1;
		st->folded = 0;
		st->col = 0;
		return o;
	}
	if (c == '\r') {
		out[o++] = c;
		return o;
	}
	if (limit && st->col >= limit && !(st->folded && st->col == 1)) {
		out[o++] = '\r';
		out[o++] = '\n';
		out[o++] = ' ';
		st->folded = 1;
		st->col = 1;
	}
	if (st->at_line_start && c == '.' && !st->nodot)
		out[o++] = '.'; /* not counted, RFC 5321 §4.5.3.1.6 */
	st->at_line_start = 0;
	out[o++] = c;
	st->col++;
	return o;
}

/* fold_span - the fast path: the n bytes at in up to and including the
 * next LF (or the end), copied whole when no fold falls inside them and
 * they fit in out; returns the bytes written, or 0 (nothing consumed) to
 * go byte by byte. */
static size_t fold_span(const char *in, size_t n, struct smtp_stuff *st, size_t limit, char *out, size_t room)
{
	size_t m = n, o = 0;
	int lf = in[n - 1] == '\n';

	for (const char *cr = in; (cr = memchr(cr, '\r', (size_t)(in + n - cr))); cr++)
		m--; /* octets that count toward the line (and the LF) */
	if ((limit && st->col + m - lf > limit) || n + 1 + 5 > room || (st->at_line_start && in[0] == '\r'))
		return 0;
	if (st->at_line_start && in[0] == '.' && !st->nodot)
		out[o++] = '.'; /* not counted, RFC 5321 §4.5.3.1.6 */
	memcpy(out + o, in, n);
	o += n;
	if (lf) {
		st->at_line_start = 1;
		st->folded = 0;
		st->col = 0;
	} else if (m) {
		st->at_line_start = 0;
		st->col += m;
	}
	return o;
}

/* smtp_dot_stuff_fold - dot-stuffing and line folding, see smtp_proto.h.
 * Postfix's smtp_line_length_limit (default 998, RFC 5321 §4.5.3.1.6 and
 * RFC 5322 §2.1.1) breaks a long line by inserting CR LF SP, which keeps a
 * header line a folded header (RFC 5322 §2.2.3) and does the least damage
 * to a body line; the same is done here, header and body alike. A line
 * that needs no fold is copied whole (fold_span, memchr and memcpy, as
 * smtp_dot_stuff); the rest goes byte by byte (fold_byte): the output is
 * the same. */
size_t smtp_dot_stuff_fold(const char *in, size_t len, size_t *used, struct smtp_stuff *st, size_t limit,
			   char *out, size_t outcap)
{
	size_t o = 0, i = 0;

	while (i < len && outcap - o >= 5) {
		const char *nl = memchr(in + i, '\n', len - i);
		size_t n = nl ? (size_t)(nl - in) + 1 - i : len - i, w;

		if ((w = fold_span(in + i, n, st, limit, out + o, outcap - o))) {
			o += w;
			i += n;
			continue;
		}
		for (size_t end = i + n; i < end && outcap - o >= 5;)
			o += fold_byte(in[i++], st, limit, out + o);
	}
	*used = i;
	return o;
}

/* ---- replies ------------------------------------------------------------ */


static unsigned ehlo_line_caps(const char *t, size_t n, uint64_t *size, unsigned *xf, unsigned *xc);

/* smtp_reply_init - an empty reply */
void smtp_reply_init(struct smtp_reply *r)
{
	memset(r, 0, sizeof(*r));
}

/* enh_len - length of an RFC 3463 §2 enhanced status code "class.subject.
 * detail" at the start of t[0..n) (class 2, 4 or 5 equal to cls, any of
 * them when cls is 0; subject and detail 1..3 digits), followed by the end
 * or one of the bytes in ends; 0 if there is none. */
static size_t enh_len(const char *t, size_t n, char cls, const char *ends)
{
	size_t i = 2;

	if (n < 5 || (cls && t[0] != cls) || (t[0] != '2' && t[0] != '4' && t[0] != '5') || t[1] != '.')
		return 0;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;

		while (i < n && is_digit(t[i]) && d < 4)
			i++, d++;
		if (d < 1 || d > 3)
			return 0;
		if (part == 0) {
			if (i >= n || t[i] != '.')
				return 0;
			i++;
		}
	}
	return i == n || (t[i] && strchr(ends, t[i])) ? i : 0;
}

/* reply_text_add - append one line's text to r->text. Control characters
 * are replaced so a backend cannot inject line breaks into the reply we
 * pass on (RFC 5321 §4.2 textstring is HT and %d32-126, plus UTF-8 under
 * RFC 6531 §3.7.4). Only the first line may be cut short; a later line
 * that does not fit is dropped with all after it, so that a cut can never
 * turn "SIZE 10240000" into "SIZE 102" for smtp_ehlo_caps(). */
static void reply_text_add(struct smtp_reply *r, const char *t, size_t n)
{
	const size_t room = SMTP_REPLY_TEXT_MAX - 1;

	if (r->text_full)
		return;
	if (r->nlines > 1) {
		if (r->text_len + 1 + n > room) {
			r->text_full = 1;
			return;
		}
		r->text[r->text_len++] = '\n';
	}
	for (size_t i = 0; i < n && r->text_len < room; i++) {
		unsigned char c = (unsigned char)t[i];

		r->text[r->text_len++] = (c < 32 && c != '\t') || c == 127 ? '?' : (char)c;
	}
	r->text[r->text_len] = '\0';
}

/* smtp_reply_feed - parse one complete (possibly multi-line) reply, RFC
 * 5321 §4.2: Reply-line = *( Reply-code "-" [ textstring ] CRLF )
 * Reply-code [ SP textstring ] CRLF. Rescans from buf[0] on each call. */
enum parse_result smtp_reply_feed(struct smtp_reply *r, const char *buf, size_t len, size_t *consumed)
{
	size_t pos = 0;

	smtp_reply_init(r);
	*consumed = 0;
	for (;;) {
		const char *line = buf + pos, *lf;
		size_t avail = len - pos, n, k, tlen;
		int code = 0, last;

		/* Validate what is there even when the line is incomplete,
		 * so that a prefix of a bad reply is already PARSE_BAD. */
		/* RFC 5321 §4.2.1: the first digit is 1 to 5; a 1yz or 3yz
		 * where none is due is the relay's to judge, not the parser's. */
		for (k = 0; k < 3 && k < avail; k++)
			if (!is_digit(line[k]) || (k == 0 && (line[0] < '1' || line[0] > '5')))
				return PARSE_BAD;
		if (avail > 3 && line[3] != ' ' && line[3] != '-' && line[3] != '\r' && line[3] != '\n')
			return PARSE_BAD;
		if (avail > 4 && line[3] == '\r' && line[4] != '\n')
			return PARSE_BAD; /* "250\rx": a CR is no separator */
		if (avail >= 3) {
			code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
			if (r->first_code && code != r->first_code)
				return PARSE_BAD;
		}
		lf = memchr(line, '\n', avail);
		if (!lf) {
			n = avail - (avail > 0 && line[avail - 1] == '\r');
			if (n > SMTP_REPLY_LINE_MAX)
				return PARSE_BAD;
			return pos + n > SMTP_REPLY_MAX ? PARSE_TOO_LONG : PARSE_AGAIN;
		}
		n = (size_t)(lf - line);
		if (n > 0 && line[n - 1] == '\r')
			n--;
		if (n < 3 || n > SMTP_REPLY_LINE_MAX)
			return PARSE_BAD;
		if (pos + n > SMTP_REPLY_MAX)
			return PARSE_TOO_LONG;
		r->first_code = code;
		r->code = code;
		r->nlines++;
		last = n == 3 || line[3] == ' ';
		tlen = n > 4 ? n - 4 : 0;
		k = enh_len(line + 4, tlen, line[0], " ");
		if (k) {
			if (!r->enh[0]) {
				memcpy(r->enh, line + 4, k);
				r->enh[k] = '\0';
			}
			while (k < tlen && line[4 + k] == ' ')
				k++;
		}
		reply_text_add(r, line + 4 + k, tlen - k);
		if (r->nlines > 1)
			r->caps |= ehlo_line_caps(line + 4 + k, tlen - k, &r->size, &r->xforward, &r->xclient);
		pos = (size_t)(lf - buf) + 1;
		if (last) {
			*consumed = pos;
			return PARSE_OK;
		}
	}
}

/* ehlo_line_caps - the capability flag of one ehlo-line t[0..n) (RFC 5321
 * §4.1.1.1: an ehlo-keyword and its parameters; keywords are
 * case-insensitive); a valid SIZE value goes to *size, XFORWARD's
 * attributes to *xf, XCLIENT's to *xc. */
static unsigned ehlo_line_caps(const char *t, size_t n, uint64_t *size, unsigned *xf, unsigned *xc)
{
	static const struct {
		const char *name;
		unsigned flag;
	} caps[] = {
		{ "PIPELINING", SMTP_CAP_PIPELINING },                   /* RFC 2920 */
		{ "8BITMIME", SMTP_CAP_8BITMIME },                       /* RFC 6152 */
		{ "SMTPUTF8", SMTP_CAP_SMTPUTF8 },                       /* RFC 6531 */
		{ "DSN", SMTP_CAP_DSN },                                 /* RFC 3461 */
		{ "SIZE", SMTP_CAP_SIZE },                               /* RFC 1870 */
		{ "STARTTLS", SMTP_CAP_STARTTLS },                       /* RFC 3207 */
		{ "ENHANCEDSTATUSCODES", SMTP_CAP_ENHANCEDSTATUSCODES }, /* 2034 */
		{ "CHUNKING", SMTP_CAP_CHUNKING },                       /* RFC 3030 */
		{ "XFORWARD", SMTP_CAP_XFORWARD },                       /* Postfix */
		{ "XCLIENT", SMTP_CAP_XCLIENT },                         /* Postfix */
	};
	size_t kw = 0;

	while (kw < n && t[kw] != ' ')
		kw++;
	for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
		if (strlen(caps[i].name) != kw || !mem_ieq(t, caps[i].name, kw))
			continue;
		if (caps[i].flag == SMTP_CAP_SIZE && kw < n) {
			/* RFC 1870 §4: "SIZE" [SP number], 0 = no limit */
			uint64_t v = 0;
			size_t d = kw + 1;

			while (d < n && is_digit(t[d]) && v <= (UINT64_MAX - 9) / 10)
				v = v * 10 + (uint64_t)(t[d++] - '0');
			if (d > kw + 1 && (d == n || t[d] == ' '))
				*size = v;
		}
		if (caps[i].flag == SMTP_CAP_XFORWARD && kw < n)
			*xf |= smtp_xforward_attrs(t + kw + 1, n - kw - 1);
		if (caps[i].flag == SMTP_CAP_XCLIENT && kw < n)
			*xc |= smtp_xforward_attrs(t + kw + 1, n - kw - 1);
		return caps[i].flag;
	}
	return 0;
}

/* smtp_ehlo_caps - capability flags of a 250 reply, collected line by line
 * by smtp_reply_feed() (so a text cut at SMTP_REPLY_TEXT_MAX loses none) */
unsigned smtp_ehlo_caps(const struct smtp_reply *r, uint64_t *size)
{
	*size = 0;
	if (r->code != 250)
		return 0;
	*size = r->size;
	return r->caps;
}

/* smtp_ehlo_caps_text - the same from a reply text, lines joined by '\n' */
unsigned smtp_ehlo_caps_text(const char *text, uint64_t *size)
{
	const char *t = text, *nl;
	unsigned flags = 0, xf = 0, xc = 0;

	*size = 0;
	while ((nl = strchr(t, '\n')) != NULL) {
		t = nl + 1;
		flags |= ehlo_line_caps(t, strcspn(t, "\n"), size, &xf, &xc);
	}
	return flags;
}

/* header_copy - append a field body's bytes to out: controls become '?',
 * runs of white space one space (leading ones dropped). */
static void header_copy(const char *p, const char *end, char *out, size_t outlen, size_t *n)
{
	for (; p < end && *n + 1 < outlen; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == ' ' || c == '\t') {
			if (*n && out[*n - 1] != ' ')
				out[(*n)++] = ' ';
		} else {
			out[(*n)++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
		}
	}
}

/* smtp_header_value - see smtp_proto.h. */
int smtp_header_value(const char *hdr, size_t len, const char *name, char *out, size_t outlen)
{
	size_t nl = strlen(name), n = 0;
	const char *p = hdr, *end = hdr + len;
	int found = 0;
	out[0] = 0;
	while (p < end) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		if (!eol) {
			out[0] = 0; /* a line cut by the end of what we have */
			return 0;
		}
		const char *le = eol > p && eol[-1] == '\r' ? eol - 1 : eol;
		if (le == p)
			break; /* the empty line: end of the header section */
		int cont = *p == ' ' || *p == '\t';
		if (found && !cont)
			break;
		if (found)
			header_copy(p, le, out, outlen, &n);
		else if (!cont && (size_t)(le - p) > nl && !strncasecmp(p, name, nl)) {
			const char *c = p + nl;
			while (c < le && (*c == ' ' || *c == '\t'))
				c++;
			if (c < le && *c == ':') {
				found = 1;
				header_copy(c + 1, le, out, outlen, &n);
			}
		}
		p = eol + 1;
	}
	while (n && out[n - 1] == ' ')
		n--;
	out[n] = 0;
	return found;
}

/* ---- XFORWARD ----------------------------------------------------------- */

static const char *const xf_names[SMTP_XF_COUNT] = { "NAME", "ADDR",  "PORT",  "PROTO",
						     "HELO", "IDENT", "SOURCE" };

/* smtp_xforward_attrs - the attributes listed after the XFORWARD keyword. */
unsigned smtp_xforward_attrs(const char *params, size_t n)
{
	unsigned mask = 0;
	size_t i = 0;

	while (i < n) {
		size_t w;

		while (i < n && params[i] == ' ')
			i++;
		for (w = 0; i + w < n && params[i + w] != ' ';)
			w++;
		for (int a = 0; a < SMTP_XF_COUNT && w; a++)
			if (strlen(xf_names[a]) == w && mem_ieq(params + i, xf_names[a], w))
				mask |= SMTP_XF_BIT(a);
		i += w;
	}
	return mask;
}

/* xf_encode - one attribute's value, neutered and xtext-encoded, into
 * out[0..SMTP_XFORWARD_VALUE_MAX]; "[UNAVAILABLE]" for NULL or too long.
 * Returns its length. */
static size_t xf_encode(const char *v, char *out)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;

	for (; v && *v; v++) {
		unsigned char c = (unsigned char)*v;

		/* XFORWARD_README note 1: nothing special in a header. */
		if (c <= ' ' || c >= 127 || strchr("<>()\\\";@", c))
			c = '?';
		if (n + 3 > SMTP_XFORWARD_VALUE_MAX) {
			v = NULL;
			break;
		}
		if (c == '+' || c == '=') {
			out[n++] = '+';
			out[n++] = hex[c >> 4];
			out[n++] = hex[c & 15];
		} else {
			out[n++] = (char)c;
		}
	}
	if (!v || n == 0) {
		memcpy(out, "[UNAVAILABLE]", 14);
		return 13;
	}
	out[n] = '\0';
	return n;
}

/* smtp_xforward_format - the verb's commands for the offered attributes. */
int smtp_xforward_format(const char *verb, const char *const val[SMTP_XF_COUNT], unsigned offered, char *out,
			 size_t outlen)
{
	size_t vlen = strlen(verb);

	char enc[SMTP_XFORWARD_VALUE_MAX + 1];
	size_t pos = 0, line = 0; /* start of the command being built */
	int ncmd = 0;

	if (outlen < 1)
		return -1;
	out[0] = '\0';
	for (int a = 0; a < SMTP_XF_COUNT; a++) {
		if (!(offered & SMTP_XF_BIT(a)))
			continue;
		size_t vl = xf_encode(val[a], enc);
		size_t need = 1 + strlen(xf_names[a]) + 1 + vl; /* " NAME=value" */

		/* the verb, the attributes and CRLF within the command limit */
		if (ncmd == 0 || (pos - line) + need + 2 > SMTP_XFORWARD_LINE_MAX) {
			if (ncmd > 0) {
				if (pos + 2 >= outlen)
					return -1;
				memcpy(out + pos, "\r\n", 2);
				pos += 2;
			}
			if (pos + vlen >= outlen)
				return -1;
			line = pos;
			memcpy(out + pos, verb, vlen);
			pos += vlen;
			ncmd++;
		}
		if (pos + need >= outlen)
			return -1;
		out[pos++] = ' ';
		memcpy(out + pos, xf_names[a], strlen(xf_names[a]));
		pos += strlen(xf_names[a]);
		out[pos++] = '=';
		memcpy(out + pos, enc, vl);
		pos += vl;
		out[pos] = '\0';
	}
	if (ncmd > 0) {
		if (pos + 2 >= outlen)
			return -1;
		memcpy(out + pos, "\r\n", 3);
	}
	return ncmd;
}

/* ---- Postfix actions ---------------------------------------------------- */

/* The words, in enum smtp_act's order from SMTP_ACT_OK (NUMBER and NNN
 * are no words: NULL). */
static const char *const act_words[] = {
	NULL,
	"OK",
	"PERMIT",
	NULL,
	"DUNNO",
	"REJECT",
	"DEFER",
	NULL,
	"DEFER_IF_PERMIT",
	"DEFER_IF_REJECT",
	"WARN",
	"INFO",
	"DISCARD",
	"PREPEND",
	"IGNORE",
	"HOLD",
	"FILTER",
	"REDIRECT",
	"BCC",
	"REPLACE",
	"STRIP",
};

/* act_word - the action named by the n bytes at w (any case). */
static enum smtp_act act_word(const char *w, size_t n)
{
	for (size_t i = 0; i < sizeof act_words / sizeof act_words[0]; i++)
		if (act_words[i] && strlen(act_words[i]) == n && !strncasecmp(w, act_words[i], n))
			return (enum smtp_act)i;
	return SMTP_ACT_UNKNOWN;
}

/* act_header_ok - h is "Name: value" (RFC 5322 §2.2): a field name of
 * printable ASCII but ':', a colon, a value without controls but tab (with
 * bytes from 0x7f when d allows them), at most d->header_max bytes. */
static int act_header_ok(const char *h, const struct smtp_act_defaults *d)
{
	size_t n = 0;
	while (h[n] > ' ' && h[n] < 127 && h[n] != ':')
		n++;
	if (n == 0 || h[n] != ':')
		return 0;
	for (const unsigned char *p = (const unsigned char *)h + n; *p; p++)
		if ((*p < ' ' && *p != '\t') || (*p >= 127 && !d->header_8bit))
			return 0;
	return strlen(h) <= d->header_max;
}

/* act_refusal - code, enhanced code and text of a refusal at rest. */
static void act_refusal(struct smtp_action *a, int code, const char *rest, const char *dflt,
			const struct smtp_act_defaults *d)
{
	char cls = (char)('0' + code / 100);
	size_t e = enh_len(rest, strlen(rest), d->enh_any_class ? 0 : cls, " \t");
	a->code = code;
	if (e) {
		memcpy(a->enh, rest, e);
		a->enh[e] = 0;
		a->enh[0] = cls;
		rest += e;
		rest += strspn(rest, " \t");
	} else {
		a->enh[0] = cls;
		memcpy(a->enh + 1, ".7.1", 5);
	}
	a->text = *rest ? rest : dflt;
}

/* smtp_action_parse - see smtp_proto.h. */
void smtp_action_parse(const char *value, const struct smtp_act_defaults *d, struct smtp_action *a)
{
	const char *v = value + strspn(value, " \t");
	size_t n = strcspn(v, " \t");
	const char *rest = v + n + strspn(v + n, " \t");
	memset(a, 0, sizeof *a);
	a->word = v, a->wlen = n, a->text = rest;
	a->act = act_word(v, n);
	int digits = n > 0 && strspn(v, "0123456789") == n;
	if (digits && n == 3 && (v[0] == '4' || v[0] == '5'))
		a->act = SMTP_ACT_NNN;
	else if (digits && !v[n])
		a->act = SMTP_ACT_NUMBER;
	switch (a->act) {
	case SMTP_ACT_REJECT: act_refusal(a, d->reject_code, rest, d->refuse_text, d); break;
	case SMTP_ACT_DEFER: act_refusal(a, 450, rest, d->refuse_text, d); break;
	case SMTP_ACT_NNN: {
		int code = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
		act_refusal(a, code == 421 && d->code_421 ? d->code_421 : code, rest, d->refuse_text, d);
		break;
	}
	case SMTP_ACT_DEFER_IF_PERMIT:
	case SMTP_ACT_DEFER_IF_REJECT: act_refusal(a, 450, rest, d->defer_if_text, d); break;
	case SMTP_ACT_PREPEND: a->header_ok = act_header_ok(rest, d); break;
	default: break;
	}
}
