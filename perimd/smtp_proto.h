/*
 * smtp_proto.h - pure SMTP parsers and formatters: command lines, paths and
 * ESMTP parameters, the DATA stream, backend replies, EHLO capabilities,
 * dot-stuffing. No I/O, no allocation unless stated, no globals: every
 * parser can be fed whole or byte by byte (resumable state is explicit).
 */
#ifndef PERIMD_SMTP_PROTO_H
#define PERIMD_SMTP_PROTO_H

#include <stddef.h>
#include <stdint.h>

enum parse_result { PARSE_OK, PARSE_AGAIN, PARSE_BAD, PARSE_TOO_LONG };

/* ---- command lines ---------------------------------------------------- */

/* smtp_line_find - find the end of the next command line in buf[0..len).
 * A line ends in CRLF or bare LF (RFC 5321 §2.3.8 wants CRLF; clients that
 * send LF are common and harmless outside DATA).
 * PARSE_OK: *linelen = length without the terminator, *consumed = with it.
 * PARSE_AGAIN: no terminator yet and len <= limit (a CR as the last byte
 *   does not count: it may be the first half of the CRLF).
 * PARSE_TOO_LONG: more than `limit` bytes without a terminator; the caller
 *   discards input up to and including the next LF, then replies 500 5.5.2.
 *   *consumed = bytes that may be dropped now (all of buf, or through the
 *   terminator when it is in buf, with *linelen = SIZE_MAX in that case;
 *   *linelen = 0 when the terminator is still to come). */
enum parse_result smtp_line_find(const char *buf, size_t len, size_t limit, size_t *linelen, size_t *consumed);

enum smtp_verb {
	SMTP_UNKNOWN = 0,
	SMTP_HELO,
	SMTP_EHLO,
	SMTP_MAIL,
	SMTP_RCPT,
	SMTP_DATA,
	SMTP_RSET,
	SMTP_NOOP,
	SMTP_QUIT,
	SMTP_VRFY,
	SMTP_EXPN,
	SMTP_HELP,
	SMTP_STARTTLS,
	SMTP_BDAT,
	SMTP_AUTH,
	SMTP_VERB_COUNT
};

/* smtp_cmd_parse - split a command line (without CRLF) into its verb and
 * the argument text after the verb and its separating spaces. For MAIL and
 * RCPT the verb includes "FROM:" / "TO:" (case-insensitive, optional space
 * before '<' allowed); *args then points after the colon, at the path.
 * Trailing spaces and tabs are not part of *args.
 * PARSE_BAD: MAIL/RCPT without FROM:/TO:, or a line holding a NUL or a CR
 * (*verb is SMTP_UNKNOWN for the latter). Unknown verbs, and verbs not
 * followed by SP or the end ("NOOPX"), give PARSE_OK with SMTP_UNKNOWN. */
enum parse_result smtp_cmd_parse(const char *line, size_t len, enum smtp_verb *verb, const char **args,
				 size_t *args_len);

#define SMTP_MAX_PARAMS 16
#define SMTP_PATH_MAX 512 /* bytes of an address, well over RFC 5321 §4.5.3.1 */

struct smtp_param {
	const char *key;   /* NUL-terminated, as sent (compare case-insensitively) */
	const char *value; /* NUL-terminated; NULL when the parameter has no '=' */
};

struct smtp_path {
	const char *addr;   /* NUL-terminated "local@domain", "" for <>,
			       "Postmaster" without a domain; source route dropped */
	const char *local;  /* NUL-terminated local part (in buf below) */
	const char *domain; /* NUL-terminated domain or address literal, "" if none */
	int utf8;           /* non-ASCII in the address (needs SMTPUTF8) */
	int nparams;
	struct smtp_param params[SMTP_MAX_PARAMS];
	char buf[2 * SMTP_PATH_MAX + 8]; /* private storage */
};

/* smtp_path_parse - parse "<addr> [SP param[=value]]..." (RFC 5321 §4.1.2,
 * §3.3). args is modified in place (params point into it); it must be
 * NUL-terminated. strict: the address MUST be in angle brackets.
 * PARSE_BAD with *why set to a short static reason on a syntax error
 * (bad address, missing brackets, too many params, > SMTP_PATH_MAX,
 * ill-formed UTF-8); a reason about the ESMTP parameters rather than the
 * address contains the word "parameter". A source route is checked and dropped; "<Postmaster>"
 * (any case) gives addr = local = "Postmaster"; a quoted local part whose
 * content is a plain Dot-string is unquoted ("\"joe\"@x" -> "joe@x"),
 * any other is kept as sent, quotes included. */
enum parse_result smtp_path_parse(char *args, int strict, struct smtp_path *p, const char **why);

/* smtp_domain_valid - RFC 5321 domain (LDH labels, dots) or address
 * literal ([1.2.3.4], [IPv6:...]); allow_utf8 permits U-labels. */
int smtp_domain_valid(const char *d, size_t len, int allow_utf8);

/* smtp_xtext_valid - RFC 3461 §4 xtext (for ENVID / ORCPT). */
int smtp_xtext_valid(const char *s);

/* ---- DATA ------------------------------------------------------------ */

enum smtp_bare_mode { SMTP_BARE_NORMALIZE, SMTP_BARE_REJECT };

/* Flags collected while parsing DATA. */
#define SMTP_DATA_BARE_LF 0x01u /* a line ended in LF without CR */
#define SMTP_DATA_BARE_CR 0x02u /* a CR not followed by LF (removed) */
#define SMTP_DATA_NUL 0x04u     /* a NUL byte (removed) */
#define SMTP_DATA_8BIT 0x08u    /* a byte >= 0x80 */

struct smtp_data_parser {
	/* private */
	int state;      /* line start, after a first '.', in a line, done */
	int cr_pending; /* last byte was a CR, not yet known to start CRLF */
	int line_real;  /* this line began at DATA start or after a CRLF */
	int line_junk;  /* this line held a stray CR or NUL (removed) */
	int line_empty; /* no content byte emitted for this line yet */
	int in_headers; /* still in the header section */
	int rcv_match;  /* progress matching "Received" SP* ":" */
	int mode;
	/* public, read after any feed */
	unsigned flags;
	unsigned received_count; /* "Received:" header fields in the header */
	uint64_t bytes;          /* canonical bytes produced so far */
};

void smtp_data_init(struct smtp_data_parser *p, enum smtp_bare_mode mode);

/* smtp_data_feed - consume raw DATA bytes from the client, producing the
 * canonical message into out (capacity MUST be >= 2 * len + 2): every line
 * ends in CRLF, dot-unstuffed; bare LF becomes CRLF, stray CR and NUL are
 * removed (flags record them; in REJECT mode the caller refuses the
 * message at the end). Only CRLF "." CRLF ends DATA: then PARSE_OK and
 * *consumed counts input through that final CRLF, the rest is the next
 * command. Else PARSE_AGAIN with *consumed = len. *outlen = bytes written.
 * A "." line that ends in or follows a bare LF, or held a stray CR or NUL,
 * does not end DATA: it is the content line "." (smuggling defence). The
 * output never holds a bare CR, a bare LF or a NUL. Feeding after PARSE_OK
 * returns PARSE_OK with nothing consumed. */
enum parse_result smtp_data_feed(struct smtp_data_parser *p, const char *in, size_t len, size_t *consumed,
				 char *out, size_t *outlen);

/* smtp_dot_stuff - canonical message bytes to the wire (RFC 5321 §4.5.2):
 * a '.' at a line start is doubled. *at_line_start carries state between
 * calls (start at 1). out MUST hold 2 * len bytes. Returns bytes written. */
size_t smtp_dot_stuff(const char *in, size_t len, int *at_line_start, char *out);

/* State of smtp_dot_stuff_fold() between calls: start with
 * { .at_line_start = 1 }. */
struct smtp_stuff {
	int at_line_start; /* the next byte starts a line */
	int folded;        /* the current wire line began with an inserted SP */
	size_t col;        /* octets on the current wire line, CRLF and a
			       doubled dot not counted */
	int nodot;         /* BDAT chunks (RFC 3030 §2): fold only, a dot
			       at a line start is not doubled */
};

/* smtp_dot_stuff_fold - smtp_dot_stuff() that also breaks lines longer
 * than `limit` octets (0 = never) by inserting CR LF SP, as Postfix's
 * smtp_line_length_limit does, in header and body alike: the SP counts
 * toward the next wire line, and a wire line holds at least one octet of
 * the message after the SP, so any limit ends. Consumes input while at
 * least 5 bytes of out (capacity outcap) are free; *used = input bytes
 * consumed (all of them when outcap >= 5 * len). Returns bytes written.
 * The input is canonical (every CR is part of a CRLF). */
size_t smtp_dot_stuff_fold(const char *in, size_t len, size_t *used, struct smtp_stuff *st, size_t limit,
			   char *out, size_t outcap);

/* ---- replies (backend side) ------------------------------------------ */

#define SMTP_REPLY_TEXT_MAX 1024
#define SMTP_REPLY_LINE_MAX 4096   /* octets of one reply line, CRLF not counted */
#define SMTP_REPLY_MAX (64 * 1024) /* octets of one reply, all its lines */

struct smtp_reply {
	int code;                       /* 100..599 */
	char enh[16];                   /* "2.1.0" when the reply had one, else "" */
	char text[SMTP_REPLY_TEXT_MAX]; /* lines joined by '\n', without code,
				         enhanced code and CRLF; truncated:
				         the first line may be cut, later
				         lines are kept whole or dropped */
	int nlines;
	unsigned caps;     /* SMTP_CAP_* of every line after the
					 first, truncated text or not */
	uint64_t size;     /* the SIZE keyword's value, 0 if none */
	unsigned xforward; /* SMTP_XF_BIT()s the XFORWARD keyword lists */
	unsigned xclient;  /* SMTP_XF_BIT()s the XCLIENT keyword lists */
	/* private: multi-line accumulation state */
	size_t text_len;
	int first_code;
	int text_full; /* a line did not fit: later lines are dropped */
};

void smtp_reply_init(struct smtp_reply *r);
/* smtp_reply_feed - parse one complete reply from buf. PARSE_OK: *consumed
 * bytes used (all its lines); PARSE_AGAIN: incomplete (feed again later with
 * the same buffer start: the parser restarts from the reply's first line);
 * PARSE_BAD: not an SMTP reply (bad code, first digit not 1-5, codes differ
 * between lines, a line over SMTP_REPLY_LINE_MAX); PARSE_TOO_LONG: the
 * reply's lines so far exceed SMTP_REPLY_MAX octets (an EHLO reply listing
 * hundreds of keywords is still well within it). Control characters in the
 * text become '?'. The enhanced code is taken from the first line having
 * one (its class MUST equal the reply's first digit, 2, 4 or 5) and
 * stripped from every line's text. The EHLO keywords of every line are
 * collected in caps and size whatever the reply code (RFC 5321 §4.1.1.1:
 * the first line is the greeting); smtp_ehlo_caps() gives them for a 250. */
enum parse_result smtp_reply_feed(struct smtp_reply *r, const char *buf, size_t len, size_t *consumed);

/* EHLO capabilities (from the text of a 250 reply to EHLO). */
#define SMTP_CAP_PIPELINING 0x0001u
#define SMTP_CAP_8BITMIME 0x0002u
#define SMTP_CAP_SMTPUTF8 0x0004u
#define SMTP_CAP_DSN 0x0008u
#define SMTP_CAP_SIZE 0x0010u
#define SMTP_CAP_STARTTLS 0x0020u
#define SMTP_CAP_ENHANCEDSTATUSCODES 0x0040u
#define SMTP_CAP_CHUNKING 0x0080u
#define SMTP_CAP_XFORWARD 0x0100u /* Postfix XFORWARD_README */
#define SMTP_CAP_XCLIENT 0x0200u  /* Postfix XCLIENT_README */

/* smtp_ehlo_caps - capability flags of a 250 reply (0 for any other);
 * *size = SIZE value (0 = none given). */
unsigned smtp_ehlo_caps(const struct smtp_reply *r, uint64_t *size);
/* smtp_ehlo_caps_text - the same from a reply text (lines joined by '\n',
 * the first one the greeting); only sound on an untruncated text (the fuzz
 * target compares the two). */
unsigned smtp_ehlo_caps_text(const char *text, uint64_t *size);

/* smtp_header_value - the value of the first header field `name` (no
 * colon, case-insensitive) in the header section of a message (RFC 5322
 * §2.2: lines up to the first empty line; hdr need not hold the whole
 * message, a field cut by its end is not found). Folded lines are joined
 * with one space, leading and trailing white space dropped, control
 * characters turned into '?'; the value is cut to outlen - 1 bytes and
 * NUL-terminated (outlen >= 1). Returns 1 when found, else 0 (out = ""). */
int smtp_header_value(const char *hdr, size_t len, const char *name, char *out, size_t outlen);

/* ---- XFORWARD and XCLIENT (Postfix's XFORWARD_README, XCLIENT_README) -- */

/* The attributes, in the order they are sent (XCLIENT has no IDENT and no
 * SOURCE: a server never lists them for it). */
enum smtp_xf_attr {
	SMTP_XF_NAME,   /* the client's host name */
	SMTP_XF_ADDR,   /* its address, "IPv6:" before an IPv6 one */
	SMTP_XF_PORT,   /* its TCP port */
	SMTP_XF_PROTO,  /* SMTP or ESMTP */
	SMTP_XF_HELO,   /* the name it gave in HELO/EHLO */
	SMTP_XF_IDENT,  /* the message's id here */
	SMTP_XF_SOURCE, /* LOCAL or REMOTE */
	SMTP_XF_COUNT
};
#define SMTP_XF_BIT(a) (1u << (a))
#define SMTP_XFORWARD_VALUE_MAX 255 /* octets of one encoded value */
#define SMTP_XFORWARD_LINE_MAX 512  /* octets of one command, CRLF included */
#define SMTP_XFORWARD_BUF 2048      /* holds the commands for every attribute */

/* smtp_xforward_attrs - the attributes an EHLO line's XFORWARD (or
 * XCLIENT) keyword offers: params[0..n) is what follows the keyword ("NAME
 * ADDR PROTO HELO"), names case-insensitive, unknown ones ignored. */
unsigned smtp_xforward_attrs(const char *params, size_t n);

/* smtp_xforward_format - the `verb` ("XFORWARD" or "XCLIENT") commands
 * carrying val[] (indexed by enum smtp_xf_attr; NULL = [UNAVAILABLE]) for
 * the attributes in `offered`, into out (NUL-terminated, each command
 * ending in CRLF).
 * Values are neutered as XFORWARD_README asks (a control, non-ASCII,
 * space or one of <>()\";@ becomes '?') and xtext-encoded (RFC 3461 §4);
 * one longer than SMTP_XFORWARD_VALUE_MAX encoded is sent as
 * [UNAVAILABLE]. Attributes are packed into as few commands as fit in
 * SMTP_XFORWARD_LINE_MAX. Returns the number of commands (0: nothing
 * offered), or -1 when outlen is too small (SMTP_XFORWARD_BUF never is). */
int smtp_xforward_format(const char *verb, const char *const val[SMTP_XF_COUNT], unsigned offered, char *out,
			 size_t outlen);

/* ---- Postfix actions (access(5), header_checks(5), SMTPD_POLICY_README) */

/* The action words; what each means is the caller's (rules_access.c for
 * access maps and header_checks, psvc_proto.c for policy answers). */
enum smtp_act {
	SMTP_ACT_UNKNOWN, /* no word Postfix knows */
	SMTP_ACT_OK,
	SMTP_ACT_PERMIT,
	SMTP_ACT_NUMBER, /* a number alone, not 4NN/5NN (Postfix: OK) */
	SMTP_ACT_DUNNO,
	SMTP_ACT_REJECT,
	SMTP_ACT_DEFER,
	SMTP_ACT_NNN, /* "4NN text", "5NN text" */
	SMTP_ACT_DEFER_IF_PERMIT,
	SMTP_ACT_DEFER_IF_REJECT,
	SMTP_ACT_WARN,
	SMTP_ACT_INFO,
	SMTP_ACT_DISCARD,
	SMTP_ACT_PREPEND,
	SMTP_ACT_IGNORE,
	SMTP_ACT_HOLD,
	SMTP_ACT_FILTER,
	SMTP_ACT_REDIRECT,
	SMTP_ACT_BCC,
	SMTP_ACT_REPLACE,
	SMTP_ACT_STRIP,
};

/* What the callers differ in: one table each. */
struct smtp_act_defaults {
	int reject_code;           /* REJECT without a code: 550 perimd's access
				    * maps, 554 a policy answer (Postfix's
				    * access_map_reject_code) */
	int code_421;              /* what "421 text" becomes (it would close the
				    * session); 0: stays 421, the caller refuses it */
	const char *refuse_text;   /* REJECT, DEFER, 4NN/5NN without text */
	const char *defer_if_text; /* DEFER_IF_PERMIT, DEFER_IF_REJECT without text */
	int enh_any_class;         /* 1: an enhanced code of any class (2, 4, 5) is
				    * taken and given the reply's class; 0: only
				    * one of the reply's class, else it is text */
	size_t header_max;         /* PREPEND: the longest header */
	int header_8bit;           /* PREPEND: bytes 0x7f and up allowed in the value */
};

struct smtp_action {
	enum smtp_act act;
	const char *word; /* the action word in value (what follows it too) */
	size_t wlen;      /* its length */
	int code;         /* REJECT, DEFER, NNN, DEFER_IF_*: 4xx or 5xx */
	char enh[16];     /* and its enhanced code: given, or the class's x.7.1 */
	const char *text; /* what follows the word, blanks skipped (for those
			    * refusals after the enhanced code; their default
			    * text when empty); in value or static */
	int header_ok;    /* PREPEND: text is a "Name: value" within d's limits */
};

/* smtp_action_parse - split the action value (word, code, enhanced code,
 * text) as table d wants it into a; pure, a points into value. */
void smtp_action_parse(const char *value, const struct smtp_act_defaults *d, struct smtp_action *a);

#endif
