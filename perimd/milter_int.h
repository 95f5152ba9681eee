/*
 * milter_int.h - what milter.c (connections, negotiation, envelope
 * stages) and milter_edit.c (the end-of-message stage and the changes to
 * the stored copy) share. Internal to those two files.
 */
#ifndef PERIMD_MILTER_INT_H
#define PERIMD_MILTER_INT_H

#include "milter.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct conf;
struct conf_list;

#define MILTER_MACROS_MAX 32

/* One smtpd_milters item, parsed once per configuration (milter_set_load). */
struct milter_def {
	struct milter_spec spec;    /* address and settings */
	struct sockaddr_storage ss; /* unix:/path, or an inet: address in digits */
	socklen_t sslen;            /* 0: a host name, looked up at each connect */
};

/* smtpd_milters of one configuration (milter.h): immutable once built,
 * shared by the transactions started under it. */
struct milter_set {
	struct conf *cf; /* a reference: the milter_*_macros lists */
	struct milter_def *d;
	int n;
	int refs;
};

/* One milter of smtpd_milters within a transaction. */
struct milter {
	const struct milter_def *def; /* in the transaction's set */
	const char *name;             /* def's "inet:host:port" / "unix:/path" */
	int fd;                       /* -1: not connected */
	unsigned started : 1;         /* connect was tried */
	unsigned done : 1;            /* accepted, or left out: not asked again */
	unsigned broken : 1;          /* failed (its default_action applied) */
	unsigned skip_body : 1;
	unsigned tcp : 1;          /* inet: (TCP_NODELAY, TCP_QUICKACK) */
	unsigned in_msg : 1;       /* MAIL sent, no end-of-message verdict yet */
	unsigned conn_accept : 1;  /* accepted at connect/HELO: skipped for the session */
	unsigned conn_refused : 1; /* refused at connect/HELO: not kept */
	uint32_t actions, pflags;  /* negotiated */
	int version;               /* negotiated: the lower of the two */
	char *rbuf;                /* the last packet read */
	char ra[512];              /* read ahead: ra[ra_pos..ra_len) not yet parsed */
	uint16_t ra_pos, ra_len;
	uint32_t rcap;
	char err[160];
};

struct milter_txn {
	struct milter_set *set; /* a reference, dropped by milter_txn_free */
	const struct conf *cf;  /* set's */
	struct milter *m;
	int n;
	struct milter_req *busy;    /* the stage in flight */
	int orphan;                 /* freed by the loop while busy */
	struct spool *orphan_spool; /* to free with it */
	struct {
		char *name, *value;
	} mac[MILTER_MACROS_MAX];
	int nmac;
	char client_name[256], client_addr[64], helo[256];
	int client_port;
	char msgid_or_sess[24]; /* for the log */
	uint64_t parked_at;     /* milter_txn_park: when (ms, monotonic) */
};

const char *milter_macro_get(const struct milter_txn *mt, const char *name);
int milter_send(struct milter *m, struct milter_txn *mt, char cmd, const struct conf_list *macros,
		const void *data, size_t len);
int milter_cmd(struct milter *m, struct milter_txn *mt, char cmd, const struct conf_list *macros,
	       const void *data, size_t len, uint32_t nr, struct milter_result *res);
int milter_verdict(struct milter *m, const struct milter_pkt *pk, struct milter_result *res);
int milter_fail(struct milter *m, struct milter_txn *mt, struct milter_result *res);
int milter_failed(struct milter *m, struct milter_txn *mt, struct milter_result *res);
int milter_recv(struct milter *m, uint64_t timeout_ms, struct milter_pkt *pk);
/* milter_stage_eom - the end-of-message stage on a worker thread. */
void milter_stage_eom(struct milter_txn *mt, struct spool *sp, struct milter_result *res);

#endif
