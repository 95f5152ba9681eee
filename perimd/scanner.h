/*
 * scanner.h - the scanner process: dispatches the message file
 * descriptors the io loops pass it to its worker processes, which scan
 * them with the libclamav engine of their generation (scanner.c,
 * scanner_gen.c); and its wire protocol.
 *
 * The process is perimd itself, re-executed (never a bare fork of the
 * threaded parent) as `perimd --scanner ARGS` with its sockets at fixed
 * descriptors: SCANNER_CTL_FD is the control socket to the supervisor
 * (av.c), SCANNER_LOOP_FD + i the request socket of io loop i. All are
 * AF_UNIX SOCK_SEQPACKET, so every message arrives whole or not at all.
 *
 * Requests: a struct scanner_req with exactly one descriptor attached
 * (SCM_RIGHTS), read-only use, any file offset (the scanner reads with
 * pread). Answers: one struct scanner_ans per request, on the socket the
 * request came from, in completion order (match them by id).
 *
 * Control, text messages: the scanner sends "ready N MS WORKERS" (N
 * signatures loaded in MS ms) once its first engine is compiled and its
 * WORKERS scanning processes run, or "error
 * TEXT" and exits; "log TEXT" is a line for perimd's log (the scanner does
 * not log itself, so its lines go wherever perimd's go). The supervisor
 * sends "ping" (answered "pong AGE INFLIGHT": AGE = ms the oldest running
 * scan has taken, 0 when idle) and "reload LIMITS" (answered "reloaded N"
 * or "reload-failed TEXT"; the scanner also reloads on its own when the
 * database directory changes, and reports the same way). LIMITS, also the
 * last argument at start, is "RECURSION FILES SCAN_SIZE FILE_SIZE
 * SCAN_TIME_MS ENCRYPTED MAX_SIZE INPLACE HANG_MS" in decimal (struct
 * scanner_limits); an engine is built with the limits last received,
 * HANG_MS applies at once. A scan running HANG_MS (av_timeout plus a
 * grace) has its worker process killed and is answered SCANNER_ERROR;
 * the scanner says "hung PID LOOP ID MS" (the worker, the request, how
 * long it ran) and replaces the worker: the other scans go on.
 * INPLACE 1 (av_reload_mode = inplace): a reload first frees the old
 * engine (after the scans on it end) and says "loading"; scans that come
 * meanwhile wait for the new one. If it fails, scans are answered
 * SCANNER_ERROR until a reload succeeds.
 *
 * A scan that stopped at a limit is answered SCANNER_VIRUS with a name
 * starting SCANNER_LIMIT_PREFIX (libclamav's CL_SCAN_HEURISTIC_EXCEEDS_MAX
 * names, also given to the limit errors CL_ETIMEOUT, CL_EMAXREC, ...);
 * av.c turns those into "not fully scanned", never clean.
 */
#ifndef PERIMD_SCANNER_H
#define PERIMD_SCANNER_H

#include <stdint.h>

#define SCANNER_ARG "--scanner"
#define SCANNER_CTL_FD 3
#define SCANNER_LOOP_FD 4
#define SCANNER_NAME_MAX 160

enum scanner_status { SCANNER_CLEAN = 0, SCANNER_VIRUS = 1, SCANNER_ERROR = 2 };

#define SCANNER_LIMIT_PREFIX "Heuristics.Limits.Exceeded."
#define SCANNER_ENC_ARCHIVE 1 /* CL_SCAN_HEURISTIC_ENCRYPTED_ARCHIVE */
#define SCANNER_ENC_DOC 2     /* CL_SCAN_HEURISTIC_ENCRYPTED_DOC */

/* The engine's limits, named after clamd.conf (av_max_* parameters). */
struct scanner_limits {
	uint32_t recursion; /* MaxRecursion */
	uint32_t files;     /* MaxFiles */
	uint64_t scan_size; /* MaxScanSize, bytes */
	uint64_t file_size; /* MaxFileSize, bytes */
	uint32_t scan_time; /* MaxScanTime, ms (below av_timeout) */
	unsigned encrypted; /* SCANNER_ENC_* */
	uint64_t max_size;  /* av_max_size: bounds temporary files */
	unsigned inplace;   /* av_reload_mode = inplace */
	uint32_t hang;      /* ms a scan may run before its worker is killed */
};

struct scanner_req {
	uint64_t id;
};

struct scanner_ans {
	uint64_t id;
	int32_t status;              /* enum scanner_status */
	uint32_t us;                 /* time spent scanning, microseconds */
	char name[SCANNER_NAME_MAX]; /* virus name or error text, NUL-terminated */
};

/* scanner_main - the hidden mode: argv is
 *   perimd --scanner DBDIR TMPDIR WORKERS NLOOPS LIMITS (WORKERS: av_threads,
 *   0 resolved to the CPUs by the supervisor)
 * Never returns to the caller's code: exits the process. */
int scanner_main(int argc, char **argv);

/* scanner_version - the libclamav version linked in; NULL in a build
 * without libclamav (scanner_none.c). */
const char *scanner_version(void);

#endif
