/*
 * admin.c - the operator's side of the counters, on top of every module:
 * the stats_listen HTTP endpoints (/metrics, /healthz, the status page and
 * its graphs), the gauges read on demand from smtpd, spool and av, the
 * history's clock and file, the 503 answerer while starting,
 * and the `perimd stats` / `perimd healthcheck` commands.
 *
 * Invariants:
 * - The history and the HTTP server live on io loop 0 only. The history
 *   file is written whole then renamed; a write never replaces a newer
 *   snapshot (sequence numbers), so the final save at exit wins over a
 *   periodic save still running on a worker.
 * - Nothing below calls up into admin.c: it reads the others' getters and
 *   registers its renderers with stats.c at admin_init().
 */
#include "admin.h"
#include "av.h"
#include "buf.h"
#include "conf.h"
#include "ev.h"
#include "graph.h"
#include "hash.h"
#include "history.h"
#include "http.h"
#include "jobs.h"
#include "log.h"
#include "net.h"
#include "scanner.h"
#include "smtpd.h"
#include "spool.h"
#include "stats.h"
#include "version.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define TICK_MS 5000  /* history sample period */
#define SAVE_TICKS 60 /* save every 5 minutes */

/* render_gauges - the gauges other modules keep, read now (/metrics). */
static void render_gauges(struct strbuf *out)
{
	stats_render_head(out, "perimd_sessions_active", "gauge", "SMTP sessions open");
	sb_printf(out, "perimd_sessions_active %d\n", smtpd_sessions());
	stats_render_head(out, "perimd_spool_bytes", "gauge", "message bodies held in memory and spool files");
	sb_printf(out, "perimd_spool_bytes %llu\n", (unsigned long long)spool_bytes_in_use());
	stats_render_head(out, "perimd_accepting_mail", "gauge", "1 while /healthz says 200");
	sb_printf(out, "perimd_accepting_mail %d\n", stats_healthy());
}

/* ---- build, process and configuration ----------------------------------
 * perimd_build_info, Prometheus' standard process_* metrics (read from
 * /proc/self on each scrape, as the client libraries do) and the
 * configuration fingerprint. */

static pthread_mutex_t fp_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t fp_value; /* under fp_mu; 0: none yet */

/* fp_map - a map item ("type:path") into the hash: its text, and the
 * bytes of the file it names when there is one (file:, cidr:, regexp:,
 * an ldap: or mysql: configuration file). */
static uint64_t fp_map(uint64_t h, const char *item)
{
	h = hash_more64(h, item, strlen(item) + 1);
	const char *colon = strchr(item, ':');
	FILE *f = colon ? fopen(colon + 1, "re") : NULL;
	if (!f)
		return h;
	char buf[8192];
	size_t n;
	while ((n = fread(buf, 1, sizeof buf, f)) > 0)
		h = hash_more64(h, buf, n);
	fclose(f);
	return h;
}

#define FP_BOOL(h, v)
#define FP_INT(h, v)
#define FP_TIME(h, v)
#define FP_SIZE(h, v)
#define FP_STR(h, v)
#define FP_ENUM(h, v)
#define FP_LIST(h, v)
#define FP_MAP(h, v) (h) = (v)[0] ? fp_map((h), (v)) : (h)
#define FP_MAPLIST(h, l) \
	for (int i_ = 0; i_ < (l).n; i_++) \
		if (strchr((l).v[i_], ':')) \
	(h) = fp_map((h), (l).v[i_])

/* admin_config_loaded - see admin.h. */
void admin_config_loaded(const struct conf *c)
{
	uint64_t h = HASH_FNV64_BASIS;
	char *text = NULL;
	size_t len = 0;
	FILE *m = open_memstream(&text, &len);
	if (m) {
		conf_dump(m, c, 1); /* every parameter, defaults too: the effective set */
		fclose(m);
		h = hash_more64(h, text, len);
		free(text);
	}
#define PARAM(type, name, def, min, max, choices, doc) FP_##type(h, c->name);
#include "conf_params.h"
#undef PARAM
	pthread_mutex_lock(&fp_mu);
	fp_value = h ? h : 1;
	pthread_mutex_unlock(&fp_mu);
}

/* proc_stat - utime + stime (clock ticks), start time (ticks after boot)
 * and virtual size (bytes) from /proc/self/stat; -1 when unreadable. */
static int proc_stat(unsigned long long *cpu, unsigned long long *start, unsigned long long *vsize)
{
	char buf[1024];
	FILE *f = fopen("/proc/self/stat", "re");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
	unsigned long long ut, st;
	if (!p ||
	    sscanf(p + 2,
		   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d %llu %llu",
		   &ut, &st, start, vsize) != 4)
		return -1;
	*cpu = ut + st;
	return 0;
}

/* boot_time - the btime line of /proc/stat (seconds), 0 when unknown. */
static unsigned long long boot_time(void)
{
	char line[256];
	unsigned long long bt = 0;
	FILE *f = fopen("/proc/stat", "re");
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "btime %llu", &bt) == 1)
			break;
	fclose(f);
	return bt;
}

/* open_fds - the entries of /proc/self/fd (but the one reading it). */
static long open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	long n = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;
}

/* render_process - build info, process_*, configuration fingerprint. */
static void render_process(struct strbuf *out)
{
	const char *clam = scanner_version();
	stats_render_head(out, "perimd_build_info", "gauge",
			  "1, labelled with the version and build of this binary");
	sb_printf(out, "perimd_build_info{version=\"%s\",build=\"%s\",libclamav=\"%s\"} 1\n", PERIMD_VERSION,
#ifdef PERIMD_STATIC
		  "static",
#else
		  "dynamic",
#endif
		  clam ? clam : "none");
	pthread_mutex_lock(&fp_mu);
	uint64_t fp = fp_value;
	pthread_mutex_unlock(&fp_mu);
	if (fp) {
		stats_render_head(
		    out, "perimd_config_fingerprint", "gauge",
		    "hash of the effective configuration and the map files it names, as of the last "
		    "(re)load; the value is its low 53 bits");
		sb_printf(out, "perimd_config_fingerprint{fingerprint=\"%016llx\"} %llu\n",
			  (unsigned long long)fp, (unsigned long long)(fp & ((1ull << 53) - 1)));
	}
	unsigned long long cpu, start, vsize;
	long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	if (tck > 0 && proc_stat(&cpu, &start, &vsize) == 0) {
		stats_render_head(out, "process_cpu_seconds_total", "counter",
				  "user and system CPU time spent, seconds");
		sb_printf(out, "process_cpu_seconds_total %.2f\n", (double)cpu / (double)tck);
		unsigned long long bt = boot_time();
		if (bt) {
			stats_render_head(out, "process_start_time_seconds", "gauge",
					  "start time of the process since the Unix epoch, seconds");
			sb_printf(out, "process_start_time_seconds %.2f\n",
				  (double)bt + (double)start / (double)tck);
		}
		stats_render_head(out, "process_virtual_memory_bytes", "gauge", "virtual memory size, bytes");
		sb_printf(out, "process_virtual_memory_bytes %llu\n", vsize);
	}
	FILE *f = fopen("/proc/self/statm", "re");
	unsigned long long size, rss;
	if (f && page > 0 && fscanf(f, "%llu %llu", &size, &rss) == 2) {
		stats_render_head(out, "process_resident_memory_bytes", "gauge", "resident memory size, bytes");
		sb_printf(out, "process_resident_memory_bytes %llu\n", rss * (unsigned long long)page);
	}
	if (f)
		fclose(f);
	long fds = open_fds();
	if (fds >= 0) {
		stats_render_head(out, "process_open_fds", "gauge", "open file descriptors");
		sb_printf(out, "process_open_fds %ld\n", fds);
	}
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		stats_render_head(out, "process_max_fds", "gauge", "the most open file descriptors allowed");
		sb_printf(out, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
	}
}

/* ---- while starting ----------------------------------------------------- *
 * Until the io loops run (the virus engine may take minutes to load), a
 * small thread answers every request on the stats listener with 503, so a
 * load balancer's health check gets a clear "not yet" instead of a hang. */

static pthread_t starting_tid;
static int starting_fd = -1;
static int starting_stop; /* atomic */

/* starting_main - accept, read a little, answer 503, close; until told. */
static void *starting_main(void *arg)
{
	(void)arg;
	struct strbuf ans = { 0 };
	http_response(&ans, 503, "text/plain", "starting\n", strlen("starting\n"), 0);
	while (!__atomic_load_n(&starting_stop, __ATOMIC_SEQ_CST)) {
		struct pollfd pf = { .fd = starting_fd, .events = POLLIN };
		if (poll(&pf, 1, 100) <= 0)
			continue;
		int c = accept4(starting_fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0)
			continue;
		/* The request is not parsed: every answer is the same. */
		struct pollfd cf = { .fd = c, .events = POLLIN };
		char buf[2048];
		if (poll(&cf, 1, 1000) > 0) {
			ssize_t n = recv(c, buf, sizeof buf, MSG_DONTWAIT);
			(void)n;
		}
		ssize_t w = send(c, ans.p, ans.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)w;
		close(c);
	}
	sb_free(&ans);
	return NULL;
}

/* admin_starting_begin - see admin.h. */
void admin_starting_begin(int listen_fd)
{
	if (listen_fd < 0)
		return;
	starting_fd = listen_fd;
	if (pthread_create(&starting_tid, NULL, starting_main, NULL) != 0)
		starting_fd = -1;
}

/* admin_starting_end - see admin.h. */
void admin_starting_end(void)
{
	if (starting_fd < 0)
		return;
	__atomic_store_n(&starting_stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(starting_tid, NULL);
	starting_fd = -1;
}

/* ---- history, on loop 0 ------------------------------------------------- */

static struct history *hist;
static double hist_last[HS__COUNT];
static char *hist_path;
static pthread_mutex_t save_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t save_seq, saved_seq;
static int loops_running;
static struct ev_loop *loop0;
static struct ev_timer tick_timer;
static int ticks;

/* current - the values the history samples now. */
static void current(double cur[HS__COUNT])
{
	int64_t rej = 0;
	for (int i = ST_rej_relay_denied; i <= ST_rej_backend_tempfail; i++)
		rej += stats_value((enum stats_id)i);
	cur[HS_RECEIVED] = (double)stats_value(ST_msg_received);
	cur[HS_GREYLISTED] = (double)stats_value(ST_rej_greylist);
	cur[HS_REJECTED] = (double)rej;
	cur[HS_VIRUSES] = (double)stats_value(ST_rej_virus);
	cur[HS_SESSIONS] = smtpd_sessions_peak(); /* bursts between samples too */
	cur[HS_INFLIGHT] = (double)stats_value(ST_inflight);
	cur[HS_LDAP_LOOKUPS] =
	    (double)(stats_value(ST_ldap_found) + stats_value(ST_ldap_notfound) + stats_value(ST_ldap_error));
	cur[HS_LDAP_CONNS] = (double)stats_value(ST_ldap_conns);
}

/* sample_now - fold the counts since the last sample into this minute. */
static void sample_now(void)
{
	if (!hist)
		return;
	double cur[HS__COUNT];
	current(cur);
	history_sample(hist, ev_wallclock() / 60, cur, hist_last);
}

struct save {
	uint64_t seq;
	struct strbuf text;
};

/* save_write - write a snapshot (tmp + rename) unless a newer one was. */
static void save_write(void *arg)
{
	struct save *s = arg;
	pthread_mutex_lock(&save_mu);
	if (s->seq > saved_seq) {
		char tmp[4200];
		snprintf(tmp, sizeof tmp, "%s.tmp", hist_path);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (fd < 0) {
			log_warn("statistics history %s: %s", tmp, strerror(errno));
		} else {
			size_t off = 0;
			while (off < s->text.len) {
				ssize_t w = write(fd, s->text.p + off, s->text.len - off);
				if (w <= 0)
					break;
				off += (size_t)w;
			}
			if (close(fd) < 0 || off != s->text.len || rename(tmp, hist_path) < 0)
				log_warn("statistics history %s: cannot write: %s", hist_path, strerror(errno));
			else
				saved_seq = s->seq;
		}
	}
	pthread_mutex_unlock(&save_mu);
}

/* save_done - the snapshot's memory goes. */
static void save_done(void *arg, int cancelled)
{
	(void)cancelled;
	struct save *s = arg;
	sb_free(&s->text);
	free(s);
}

/* snapshot - the history as text, numbered. */
static struct save *snapshot(void)
{
	struct save *s = xcalloc(1, sizeof *s);
	s->seq = ++save_seq;
	history_serialize(hist, &s->text);
	return s;
}

/* tick - sample; every few minutes, save on a worker. */
static void tick(void *arg)
{
	(void)arg;
	sample_now();
	if (++ticks % SAVE_TICKS == 0)
		jobs_submit(loop0, save_write, save_done, snapshot());
	ev_timer_start(loop0, &tick_timer, TICK_MS, tick, NULL);
}

/* ---- HTTP --------------------------------------------------------------- */

/* handle - the stats_listen pages. */
static int handle(const struct http_req *rq, struct strbuf *body, const char **ctype)
{
	if (!strcmp(rq->path, "/metrics")) {
		*ctype = "text/plain; version=0.0.4; charset=utf-8";
		stats_render_metrics(body);
		return 200;
	}
	if (!strcmp(rq->path, "/healthz")) {
		if (stats_healthy()) {
			sb_printf(body, "ok\n");
			return 200;
		}
		sb_printf(body, "%s\n", stats_health_get() == STATS_DRAINING ? "draining" : "starting");
		return 503;
	}
	uint64_t now_min = ev_wallclock() / 60;
	if (!strcmp(rq->path, "/") && hist) {
		sample_now();
		*ctype = "text/html; charset=utf-8";
		graph_page(body, hist, now_min, stats_healthy());
		return 200;
	}
	char which[32], period[32];
	if (hist && sscanf(rq->path, "/graph/%31[a-z]-%31[a-z].sv%*[g]", which, period) == 2 &&
	    strlen(rq->path) == 7 + strlen(which) + 1 + strlen(period) + 4) {
		sample_now();
		if (graph_svg(body, hist, now_min, which, period) == 0) {
			*ctype = "image/svg+xml";
			return 200;
		}
		sb_free(body);
	}
	sb_printf(body, "not found\n");
	return 404;
}

/* ---- life cycle --------------------------------------------------------- */

/* admin_check - see admin.h. */
int admin_check(const struct conf *c, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	if (c->stats_listen[0] && net_parse_addr(c->stats_listen, 9125, &ss, &sl, &why) < 0) {
		snprintf(err, errlen, "stats_listen: %s: %s", c->stats_listen, why);
		return -1;
	}
	return 0;
}

/* admin_init - see admin.h. */
void admin_init(const struct conf *c, int nloops)
{
	stats_family_declare("perimd_backend_up", "gauge",
			     "1 after a successful connection to the backend, 0 after a failed one");
	stats_render_register(STATS_AFTER_FIXED, render_gauges);
	stats_render_register(STATS_AFTER_HISTOGRAMS, av_render_metrics); /* av.c owns those */
	stats_render_register(STATS_AFTER_HISTOGRAMS, render_process);
	loops_running = nloops;
	hist = xcalloc(1, sizeof *hist);
	size_t n = strlen(c->data_directory) + 16;
	hist_path = xmalloc(n);
	snprintf(hist_path, n, "%s/stats.history", c->data_directory);
	FILE *f = fopen(hist_path, "re");
	if (!f)
		return;
	struct strbuf text = { 0 };
	char buf[65536];
	size_t r;
	while ((r = fread(buf, 1, sizeof buf, f)) > 0 && text.len < (64u << 20))
		sb_add(&text, buf, r);
	fclose(f);
	if (history_parse(hist, text.p ? text.p : "", text.len) < 0)
		log_warn("statistics history %s: unreadable, starting afresh", hist_path);
	sb_free(&text);
}

/* admin_listen_open - see admin.h. */
int admin_listen_open(const struct conf *c)
{
	if (!c->stats_listen[0])
		return -1;
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	if (net_parse_addr(c->stats_listen, 9125, &ss, &sl, &why) < 0)
		fatal("stats_listen %s: %s", c->stats_listen, why);
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 64) < 0)
		fatal("stats_listen %s: %s", c->stats_listen, strerror(errno));
	return fd;
}

/* admin_loop_start - see admin.h. */
void admin_loop_start(struct ev_loop *loop, int listen_fd, int nloops)
{
	(void)nloops;
	__atomic_store_n(&loop0, loop, __ATOMIC_SEQ_CST);
	if (listen_fd >= 0)
		http_server_start(loop, listen_fd, handle);
	ev_timer_start(loop, &tick_timer, TICK_MS, tick, NULL);
}

/* stop_loop0 - posted by the last io loop to drain. */
static void stop_loop0(void *arg)
{
	ev_stop(arg);
}

/* admin_loop_finished - see admin.h. */
void admin_loop_finished(struct ev_loop *loop)
{
	int left = __atomic_sub_fetch(&loops_running, 1, __ATOMIC_SEQ_CST);
	if (ev_loop_index(loop) != 0) {
		if (left == 0)
			ev_post(__atomic_load_n(&loop0, __ATOMIC_SEQ_CST), stop_loop0, loop0);
		return;
	}
	if (left > 0)
		ev_run(loop); /* /healthz keeps saying 503 until all have drained */
	http_server_stop(loop);
	ev_timer_stop(loop, &tick_timer);
	if (hist) {
		sample_now();
		struct save *s = snapshot();
		save_write(s);
		save_done(s, 0);
	}
}

/* ---- the command line --------------------------------------------------- */

/* series_add - add value to the series name (kept in first-seen order). */
static void series_add(struct admin_series **v, int *n, const char *name, double value)
{
	for (int i = 0; i < *n; i++)
		if (!strcmp((*v)[i].name, name)) {
			(*v)[i].sum += value;
			return;
		}
	*v = xrealloc(*v, (size_t)(*n + 1) * sizeof **v);
	(*v)[*n].name = xstrdup(name);
	(*v)[(*n)++].sum = value;
}

/* admin_metrics_sum - see admin.h. */
void admin_metrics_sum(char *body, struct admin_series **v, int *n)
{
	char *save = NULL;
	for (char *ln = strtok_r(body, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
		char *sp = strrchr(ln, ' '), *end;
		if (ln[0] == '#' || !sp || sp == ln)
			continue;
		*sp = 0;
		double value = strtod(sp + 1, &end);
		if (end != sp + 1 && (!*end || (*end == '\r' && !end[1])))
			series_add(v, n, ln, value);
	}
}

/* admin_series_free - see admin.h. */
void admin_series_free(struct admin_series *v, int n)
{
	for (int i = 0; i < n; i++)
		free(v[i].name);
	free(v);
}

/* box_get - GET /metrics of one box, addr "host:port" with host an
 * address or a name: each address of the name is tried in order until
 * one answers (localhost may be ::1, then 127.0.0.1). As http_get. */
static int box_get(const char *addr, int *status, struct strbuf *body, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	if (net_parse_addr(addr, 9125, &ss, &sl, &why) == 0 || addr[0] == '[')
		return http_get(addr, "/metrics", 5000, status, body, err, errlen);
	const char *colon = strrchr(addr, ':');
	char host[256];
	snprintf(host, sizeof host, "%.*s", colon ? (int)(colon - addr) : (int)strlen(addr), addr);
	const char *port = colon ? colon + 1 : "9125";
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV }, *res;
	int e = getaddrinfo(host, port, &hints, &res);
	if (e) {
		snprintf(err, errlen, "%s: %s", addr, e == EAI_SERVICE ? "bad port" : gai_strerror(e));
		return -1;
	}
	int rc = -1;
	for (struct addrinfo *ai = res; ai && rc < 0; ai = ai->ai_next) {
		char ip[INET6_ADDRSTRLEN], one[INET6_ADDRSTRLEN + 16];
		if (getnameinfo(ai->ai_addr, ai->ai_addrlen, ip, sizeof ip, NULL, 0, NI_NUMERICHOST))
			continue;
		snprintf(one, sizeof one, ai->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", ip, port);
		sb_free(body);
		rc = http_get(one, "/metrics", 5000, status, body, err, errlen);
		size_t l = strlen(err);
		if (rc < 0 && l + strlen(host) + 4 < errlen)
			snprintf(err + l, errlen - l, " (%s)", host);
	}
	freeaddrinfo(res);
	return rc;
}

/* fleet_stats - perimd stats ADDR...: every box's /metrics (ADDR as
 * "host:port" or "http://host:port/..."), each series summed over the
 * boxes that answered. 0, or 1 when one did not (the others' totals are
 * printed all the same). */
static int fleet_stats(int naddr, char **addrs)
{
	struct admin_series *v = NULL;
	int n = 0, answered = 0, rc = 0;
	for (int i = 0; i < naddr; i++) {
		char addr[256], err[512];
		const char *a = strncmp(addrs[i], "http://", 7) ? addrs[i] : addrs[i] + 7;
		snprintf(addr, sizeof addr, "%.*s", (int)strcspn(a, "/"), a);
		int status = 0;
		struct strbuf body = { 0 };
		if (!strncmp(addrs[i], "https://", 8) || !addr[0]) {
			snprintf(err, sizeof err, "%s: %s", addrs[i],
				 addr[0]
				     ? "stats_listen speaks plain HTTP: write http://host:port or host:port"
				     : "no address: write host:port or http://host:port");
			fprintf(stderr, "perimd: %s\n", err);
			rc = 1;
		} else if (box_get(addr, &status, &body, err, sizeof err) < 0 || status != 200) {
			/* err names the box already */
			if (status && status != 200)
				snprintf(err, sizeof err, "%s: /metrics answered %d", addr, status);
			fprintf(stderr, "perimd: %s\n", err);
			rc = 1;
		} else {
			admin_metrics_sum(body.p ? body.p : (char *)"", &v, &n);
			answered++;
		}
		sb_free(&body);
	}
	printf("# %d of %d boxes answered; each series summed over them\n", answered, naddr);
	for (int i = 0; i < n; i++)
		printf("%-64s %.15g\n", v[i].name, v[i].sum);
	admin_series_free(v, n);
	return answered ? rc : 1;
}

/* admin_command - see admin.h. */
int admin_command(int argc, char **argv, const char *default_conf)
{
	const char *path = NULL;
	int hc = !strcmp(argv[0], "healthcheck");
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-c") && i + 1 < argc) {
			path = argv[++i];
		} else if (!hc && argv[i][0] != '-' && !path) {
			return fleet_stats(argc - i, argv + i);
		} else {
			/* 1, as perimd's own usage: a health check's 2 is
			 * reserved (Docker HEALTHCHECK), perimd(8) says 0 or 1. */
			fprintf(stderr, "usage: perimd %s [-c FILE]%s\n", argv[0],
				hc ? "" : " | perimd stats ADDR...");
			return 1;
		}
	}
	/* Only stats_listen is needed: a file edited with a typo since the
	 * daemon read it must not make a running daemon look unhealthy (a
	 * container would be restarted into the broken file). */
	char err[1024];
	char *listen = conf_value_of(path ? path : default_conf, path == NULL, "stats_listen", err, sizeof err);
	if (!listen) {
		fprintf(stderr, "perimd: %s\n", err);
		return 1;
	}
	if (!listen[0]) {
		fprintf(stderr, "perimd: stats_listen is empty: no statistics to ask for\n");
		free(listen);
		return 1;
	}
	int status = 0;
	struct strbuf body = { 0 };
	int r = http_get(listen, hc ? "/healthz" : "/metrics", 5000, &status, &body, err, sizeof err);
	free(listen);
	int rc = 1;
	if (r < 0) {
		fprintf(stderr, "perimd: %s\n", err);
	} else if (hc) {
		printf("%s", body.p ? body.p : "");
		rc = status == 200 ? 0 : 1;
	} else if (status != 200) {
		fprintf(stderr, "perimd: /metrics answered %d\n", status);
	} else {
		/* The table: one line per series, the name padded to a column. */
		char *save = NULL;
		for (char *ln = strtok_r(body.p, "\n", &save); ln; ln = strtok_r(NULL, "\n", &save)) {
			if (ln[0] == '#' || !ln[0])
				continue;
			char *sp = strrchr(ln, ' ');
			if (!sp)
				continue;
			*sp = 0;
			printf("%-64s %s\n", ln, sp + 1);
		}
		rc = 0;
	}
	sb_free(&body);
	return rc;
}
