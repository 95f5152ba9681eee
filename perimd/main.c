/*
 * main.c - command line, configuration, listening sockets, io threads and
 * signals.
 *
 * The main thread only loads the configuration, binds, starts the io
 * threads and then waits for signals with sigwait(): every other thread
 * has all signals blocked, so SIGHUP/SIGTERM/SIGINT are handled here, in
 * plain code, never in a signal handler. Reloads swap in a new policy
 * snapshot; SIGTERM asks every loop to drain and joins them.
 */
#include "admin.h"
#include "av.h"
#include "conf.h"
#include "ev.h"
#include "fleet.h"
#include "grey.h"
#include "jobs.h"
#include "log.h"
#include "milter.h"
#include "maps.h"
#include "net.h"
#include "policy.h"
#include "policyd.h"
#include "psvc.h"
#include "relay.h"
#include "scanner.h"
#include "smtpd.h"
#include "spool.h"
#include "stats.h"
#include "tls.h"
#include "verify.h"
#include "version.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_CONF "/etc/perimd/perimd.conf"

struct io_thread {
	pthread_t tid;
	struct ev_loop *loop;
	int *fds;
	int nfds;
};

static struct io_thread *threads;
static int nthreads;
static int stats_fd = -1;
static int policyd_fd = -1; /* policy_listen (policyd.h) */
/* Process-lifetime allocations of main() (reachable, never reported). */
static char **ov;
static struct sockaddr_storage *addrs;
static socklen_t *alens;

/* usage - the command line, to stderr; exit 1. */
static _Noreturn void usage(void)
{
	fprintf(stderr,
		"usage: perimd [-c FILE] [-o NAME=VALUE]... [-f] [-v]   run\n"
		"       perimd -t [-c FILE] [-o NAME=VALUE]...          check the configuration\n"
		"       perimd -n [-c FILE] [-o NAME=VALUE]... [NAME...] print non-default parameters\n"
		"       perimd -d [NAME...]                             print parameters' defaults\n"
		"       perimd -V                                       version and features\n"
		"       perimd stats [-c FILE]                          live counters of the running daemon\n"
		"       perimd stats ADDR...                            a fleet's totals: every box's "
		"/metrics summed\n"
		"       perimd healthcheck [-c FILE]                    exit 0 if it accepts mail, else 1\n");
	exit(1);
}

/* sig_unused - installed, never run (see main()'s sigwait set). */
static void sig_unused(int sig)
{
	(void)sig;
}

/* io_main - one io thread: run its loop until drained. */
static void *io_main(void *arg)
{
	struct io_thread *t = arg;
	smtpd_loop_start(t->loop, t->fds, t->nfds);
	if (ev_loop_index(t->loop) == 0) {
		admin_loop_start(t->loop, stats_fd, nthreads);
		policyd_loop_start(t->loop, policyd_fd);
	}
	ev_run(t->loop);
	admin_loop_finished(t->loop);
	relay_loop_shutdown(t->loop);
	psvc_loop_shutdown(t->loop);
	return NULL;
}

/* drain_loop - on an io thread: begin the SIGTERM drain. */
static void drain_loop(void *arg)
{
	struct io_thread *t = arg;
	struct policy *p = policy_acquire();
	policyd_drain(t->loop);
	smtpd_loop_drain(t->loop, (uint64_t)p->conf->shutdown_timeout);
	policy_release(p);
}

/* make_dir - create a state directory if missing. */
static int make_dir(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
				return -1;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0700) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

/* raise_nofile - file descriptors for max_sessions clients, the backend
 * connections and the rest (listeners, spool files, logs). */
static void raise_nofile(const struct conf *c)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	rlim_t want = (rlim_t)(c->max_sessions +
			       c->relay_destination_concurrency_limit * (c->relay_backends.n + 1) + 1024);
	if (rl.rlim_cur >= want)
		return;
	if (rl.rlim_max < want && geteuid() == 0)
		rl.rlim_max = want;
	rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		getrlimit(RLIMIT_NOFILE, &rl);
		rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < want)
		log_warn("file descriptor limit is %llu, below the %llu that max_sessions = %lld needs; "
			 "raise the hard limit (ulimit -Hn, LimitNOFILE=)",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)want, c->max_sessions);
}

/* owner_lookup - mail_owner by name, or numeric "UID" / "UID:GID" (a
 * scratch image or an empty chroot has no /etc/passwd; a lone UID uses
 * the group of the same number). Returns pw, *num or NULL. */
static struct passwd *owner_lookup(const char *s, struct passwd *num)
{
	char *end;
	errno = 0;
	unsigned long u = strtoul(s, &end, 10), g = u;
	if (end != s && *s >= '0' && *s <= '9' && errno == 0 && u <= 0x7fffffff) {
		if (*end == ':') {
			const char *gs = end + 1;
			g = strtoul(gs, &end, 10);
			if (end == gs || *gs < '0' || *gs > '9' || g > 0x7fffffff)
				return NULL;
		}
		if (*end)
			return NULL;
		memset(num, 0, sizeof *num);
		num->pw_uid = (uid_t)u;
		num->pw_gid = (gid_t)g;
		return num;
	}
	return getpwnam(s);
}

/* owner_read_check - which files mail_owner could not open: after the
 * privilege drop every SIGHUP reloads the TLS files and the configuration
 * file as mail_owner, and a file only root can read makes each reload
 * fail (the old certificate stays until it expires; a configuration file
 * only root reads refuses every reload): warnings. The greylist SQLite
 * files (the database, its -wal and -shm, when they exist) are opened for
 * writing by mail_owner, and one a root run left behind would fail every
 * greylisting decision: an error (the caller refuses -t and the start, as
 * grey_check's own checks do, which run as root). A child process becomes
 * mail_owner (as drop_privileges() does) and opens each file, so modes,
 * owners, groups and ACLs all count as they will. Only when started as
 * root with another mail_owner; before any thread starts. say() gets each
 * message. Returns the number of errors. */
static int owner_read_check(const struct conf *c, void (*say)(const char *))
{
	enum { NT = 4, NF = 7 };
	char grey[3][4200] = { "", "", "" };
	if (c->greylist && !strncmp(c->greylist_database, "sqlite:", 7) && c->greylist_database[7] &&
	    strcmp(c->greylist_database + 7, ":memory:") && strncmp(c->greylist_database + 7, "file:", 5)) {
		snprintf(grey[0], sizeof grey[0], "%s", c->greylist_database + 7);
		snprintf(grey[1], sizeof grey[1], "%s-wal", c->greylist_database + 7);
		snprintf(grey[2], sizeof grey[2], "%s-shm", c->greylist_database + 7);
	}
	const char *names[NF] = { "smtpd_tls_cert_file",    "smtpd_tls_key_file", "relay_tls_CAfile",
				  "the configuration file", "greylist_database",  "greylist_database",
				  "greylist_database" };
	const char *files[NF] = { c->smtpd_tls_cert_file,
				  c->smtpd_tls_key_file,
				  c->relay_tls_CAfile,
				  c->path,
				  grey[0],
				  grey[1],
				  grey[2] };
	int errs[NF] = { 0 }, any = 0, bad = 0;
	for (int i = 0; i < NF; i++)
		any |= files[i][0] != 0;
	if (geteuid() != 0 || !any)
		return 0;
	struct passwd pwnum, *pw = owner_lookup(c->mail_owner, &pwnum);
	if (!pw || pw->pw_uid == 0)
		return 0; /* an unknown owner is drop_privileges()'s fatal error */
	uid_t uid = pw->pw_uid;
	gid_t gid = pw->pw_gid;
	int pfd[2];
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return 0;
	pid_t pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return 0;
	}
	if (pid == 0) {
		close(pfd[0]);
		if (setgroups(1, &gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
			_exit(2);
		for (int i = 0; i < NF; i++) {
			if (!files[i][0])
				continue;
			int fd = open(files[i], (i < NT ? O_RDONLY : O_RDWR) | O_CLOEXEC);
			if (fd < 0 && !(i >= NT && errno == ENOENT))
				errs[i] = errno;
			else if (fd >= 0)
				close(fd);
		}
		ssize_t w = write(pfd[1], errs, sizeof errs);
		_exit(w == (ssize_t)sizeof errs ? 0 : 2);
	}
	close(pfd[1]);
	ssize_t got = read(pfd[0], errs, sizeof errs);
	close(pfd[0]);
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (got != (ssize_t)sizeof errs)
		return 0;
	for (int i = 0; i < NF; i++) {
		if (!errs[i])
			continue;
		char msg[5400];
		if (i < NT)
			snprintf(msg, sizeof msg,
				 "warning: mail_owner %s cannot read %s %s: %s; %s: give %s read access",
				 c->mail_owner, names[i], files[i], strerror(errs[i]),
				 i == 3 ? "every SIGHUP will be refused"
					: "a SIGHUP will not reload it (the old one stays until it expires)",
				 c->mail_owner);
		else
			snprintf(msg, sizeof msg,
				 "mail_owner %s cannot open %s file %s for writing: %s; every greylisting "
				 "decision would fail: give it to %s (chown)",
				 c->mail_owner, names[i], files[i], strerror(errs[i]), c->mail_owner);
		say(msg);
		bad += i >= NT;
	}
	return bad;
}

/* say_stderr, say_log - where owner_read_check() warns (-t, start). */
static void say_stderr(const char *msg)
{
	fprintf(stderr, "perimd: %s\n", msg);
}

static void say_log(const char *msg)
{
	if (!strncmp(msg, "warning: ", 9))
		log_warn("%s", msg + 9);
	else
		log_err("%s", msg);
}

/* probe_addr - refuse to start when another process listens on a
 * param's address (net_bind_probe()); empty: none. */
static void probe_addr(const char *param, const char *text, int default_port)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	const char *why;
	char err[256];
	if (!text[0] || net_parse_addr(text, default_port, &ss, &sl, &why) < 0)
		return; /* checked, with its message, where it is bound */
	if (net_bind_probe((struct sockaddr *)&ss, sl, err, sizeof err) < 0)
		fatal("%s %s: cannot listen on %s; not starting", param, text, err);
}

/* say_errors - each line of err on stderr, "perimd: " before it, and
 * where c set the parameter it names (conf_blame; c may be NULL). */
static void say_errors(const struct conf *c, const char *err)
{
	while (*err) {
		size_t n = strcspn(err, "\n");
		const char *at = c ? conf_blame(c, err) : NULL;
		fprintf(stderr, "perimd: %s%s%.*s\n", at ? at : "", at ? ": " : "", (int)n, err);
		err += n + (err[n] == '\n');
	}
}

/* log_errors - each line of err as an error log line, after prefix and
 * where c set the parameter it names (c may be NULL). */
static void log_errors(const struct conf *c, const char *prefix, const char *err)
{
	while (*err) {
		size_t n = strcspn(err, "\n");
		const char *at = c ? conf_blame(c, err) : NULL;
		log_err("%s%s%s%.*s", prefix, at ? at : "", at ? ": " : "", (int)n, err);
		err += n + (err[n] == '\n');
	}
}

/* give_state_dirs - started as root with another mail_owner: the state
 * directories are mail_owner's from the start, before owner_read_check()
 * looks at the greylist files in them as mail_owner (perimd made them
 * 0700 as root). An unknown owner is drop_privileges()'s fatal error. */
static void give_state_dirs(const struct conf *c)
{
	struct passwd pwnum, *pw = owner_lookup(c->mail_owner, &pwnum);
	if (geteuid() != 0 || !pw || pw->pw_uid == 0)
		return;
	if (chown(c->data_directory, pw->pw_uid, pw->pw_gid) < 0 ||
	    chown(c->body_spool_directory, pw->pw_uid, pw->pw_gid) < 0)
		fatal("cannot give the state directories to %s: %s", c->mail_owner, strerror(errno));
}

/* drop_privileges - after binding: become mail_owner (only when started
 * as root; mail_owner = root keeps root, with a warning). */
static void drop_privileges(const struct conf *c)
{
	if (geteuid() != 0)
		return;
	struct passwd pwnum, *pw = owner_lookup(c->mail_owner, &pwnum);
	if (!pw)
		fatal("mail_owner %s: no such user (in a chroot or scratch image without "
		      "/etc/passwd, give a numeric uid[:gid])",
		      c->mail_owner);
	if (pw->pw_uid == 0) {
		log_warn("mail_owner = %s: running as root", c->mail_owner);
		return;
	}
	if (setgroups(1, &pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0)
		fatal("cannot become %s: %s", c->mail_owner, strerror(errno));
	if (setuid(0) == 0)
		fatal("could regain root after dropping to %s", c->mail_owner);
	log_info("running as %s (uid %d)", c->mail_owner, (int)pw->pw_uid);
}

/* warn_restart - a reload changed a restart-only parameter. */
static void warn_restart(const char *name)
{
	log_warn("reload: %s: changed value takes effect after restart", name);
}

/* grey_changed_check - a new greylist database that cannot work refuses
 * the reload as it refuses the start (a missing directory, not an SQLite
 * file, a bad MySQL file): else a typo would turn greylisting into
 * greylist_fail_action for every recipient. Checked only when
 * greylist_database changed or greylisting was turned on (the check of
 * a MySQL store connects to it). 0 or -1 with err. */
static int grey_changed_check(const struct conf *c, char *err, size_t errlen)
{
	struct policy *old = policy_acquire();
	int changed =
	    !old || !old->conf->greylist || strcmp(old->conf->greylist_database, c->greylist_database) != 0;
	if (old)
		policy_release(old);
	return changed ? grey_check(c, err, errlen) : 0;
}

/* reload_refused - a reload that keeps the running configuration: its
 * errors logged (where c set what they name; c may be NULL), and
 * perimd_config_reload_success 0. */
static void reload_refused(const struct conf *c, const char *err)
{
	log_errors(c, "reload refused, keeping the running configuration: ", err);
	stats_gauge_set(ST_config_reload_ok, 0);
}

/* reload - SIGHUP (full: certificates and signatures too) or a changed map
 * file: a new configuration and policy, or keep the old. */
static void reload(const char *path, int nov, int full)
{
	char err[8192];
	struct conf *c = conf_load(path, 0, ov, nov, err, sizeof err);
	stats_gauge_set(ST_config_reload_time, (int64_t)time(NULL));
	if (!c) {
		reload_refused(NULL, err);
		return;
	}
	stats_gauge_set(ST_config_reload_ok, 1);
	if (grey_changed_check(c, err, sizeof err) < 0) {
		reload_refused(c, err);
		conf_release(c);
		return;
	}
	/* policy_load takes one reference, even on failure: ours keeps c for
	 * naming the lines at fault. smtpd_milters is parsed there. */
	conf_ref(c);
	struct policy *p = policy_load(c, err, sizeof err);
	if (!p)
		reload_refused(c, err);
	conf_release(c);
	if (!p)
		return;
	/* Certificates: the old ones stay unless the new ones all load (after
	 * the privilege drop, the key must be readable by mail_owner). When
	 * only a map file changed (!full), certificates and signatures stay. */
	if (full) {
		if (tls_configure(c, err, sizeof err) < 0)
			log_err("reload: TLS certificates and keys not reloaded, keeping the old ones: %s",
				err);
		else if (c->smtpd_tls_cert_file[0] || c->relay_tls_CAfile[0])
			log_info("reload: TLS certificates and keys reloaded");
	}
	struct policy *old = policy_acquire();
	if (old) {
		conf_restart_changes(old->conf, c, warn_restart);
		policy_release(old);
	}
	policy_install(p);
	admin_config_loaded(c);
	log_set_json(c->log_format_e == LOG_FORMAT_JSON);
	if (full)
		av_reload(c);
	log_info("configuration reloaded from %s", path);
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	int nov = 0, fg = 0, verbose = 0, check = 0, dump_n = 0, dump_d = 0, version = 0;
	int opt;

	/* The scanner process is perimd re-executed (av.c, scanner.h). */
	if (argc > 1 && !strcmp(argv[1], SCANNER_ARG))
		return scanner_main(argc, argv);
	if (argc > 1 && (!strcmp(argv[1], "stats") || !strcmp(argv[1], "healthcheck")))
		return admin_command(argc - 1, argv + 1, DEFAULT_CONF);
	while ((opt = getopt(argc, argv, "c:o:fvtndV")) != -1) {
		switch (opt) {
		case 'c': path = optarg; break;
		case 'o':
			ov = xrealloc(ov, (size_t)(nov + 1) * sizeof *ov);
			ov[nov++] = optarg;
			break;
		case 'f': fg = 1; break;
		case 'v': verbose = 1; break;
		case 't': check = 1; break;
		case 'n': dump_n = 1; break;
		case 'd': dump_d = 1; break;
		case 'V': version = 1; break;
		default: usage();
		}
	}
	if (version) {
		if (optind != argc)
			usage();
		version_print(stdout);
		return 0;
	}
	/* Names after -d or -n: those parameters only, as postconf does. */
	if (optind != argc && !dump_d && !dump_n)
		usage();
	char *const *names = argv + optind;
	int nnames = argc - optind;

	char err[16384];
	if (dump_d) {
		struct conf *c = conf_load(NULL, 1, NULL, 0, err, sizeof err);
		if (!c) {
			fprintf(stderr, "perimd: %s\n", err);
			return 1;
		}
		int rc = nnames ? conf_dump_names(stdout, c, 1, names, nnames) : (conf_dump(stdout, c, 1), 0);
		conf_release(c);
		return rc < 0 ? 1 : 0;
	}
	/* The default file must exist: running on the built-in defaults
	 * because a file went missing would be a silent surprise (-d shows
	 * them; -c /dev/null or an empty file runs on them on purpose). */
	int explicit = path != NULL;
	if (!path)
		path = DEFAULT_CONF;
	struct conf *c = conf_load(path, 0, ov, nov, err, sizeof err);
	if (!c) {
		if (!explicit && access(path, F_OK) < 0 && errno == ENOENT)
			fprintf(stderr,
				"perimd: the default configuration file %s does not exist; "
				"give one with -c FILE (an empty file runs on the built-in defaults, "
				"which perimd -d prints)\n",
				path);
		else
			say_errors(c, err);
		return 1;
	}
	if (dump_n) {
		int rc = nnames ? conf_dump_names(stdout, c, 0, names, nnames) : (conf_dump(stdout, c, 0), 0);
		conf_release(c);
		return rc < 0 ? 1 : 0;
	}
	/* Every check runs, and every error is printed (a line each), so one
	 * `perimd -t` shows all that is wrong. */
	int bad = 0;
	conf_ref(c); /* policy_load takes one reference, even on failure */
	struct policy *pol = policy_load(c, err, sizeof err);
	if (!pol) {
		say_errors(c, err);
		bad = 1;
	}
	if (tls_configure(c, err, sizeof err) < 0) {
		say_errors(c, err);
		bad = 1;
	}
	/* Listening addresses are checked by -t too. */
	addrs = xcalloc((size_t)c->smtpd_listen.n + 1, sizeof *addrs);
	alens = xcalloc((size_t)c->smtpd_listen.n + 1, sizeof *alens);
	for (int i = 0; i < c->smtpd_listen.n; i++) {
		const char *why;
		if (net_parse_addr(c->smtpd_listen.v[i], 25, &addrs[i], &alens[i], &why) < 0) {
			const char *at = conf_blame(c, "smtpd_listen:");
			fprintf(stderr, "perimd: %s: smtpd_listen: %s: %s\n", at ? at : c->path,
				c->smtpd_listen.v[i], why);
			bad = 1;
		}
	}
	if (policyd_check(c, err, sizeof err) < 0) {
		say_errors(c, err);
		bad = 1;
	}
	int (*const checks[])(const struct conf *, char *, size_t) = { admin_check, av_check, grey_check,
								       fleet_check };
	for (size_t k = 0; k < sizeof checks / sizeof checks[0]; k++)
		if (checks[k](c, err, sizeof err) < 0) {
			say_errors(c, err);
			bad = 1;
		}
	if (bad) {
		policy_release(pol);
		conf_release(c);
		return 1;
	}
	conf_release(c);
	if (check) {
		/* As root, the user to become must exist here, or the start
		 * fails: a warning, as -t may run on another machine. */
		struct passwd pwnum;
		if (geteuid() == 0 && !owner_lookup(c->mail_owner, &pwnum)) {
			const char *at = conf_blame(c, "mail_owner:");
			fprintf(stderr,
				"perimd: warning: %s%smail_owner: %s: no such user here: started as root, "
				"perimd would stop (in a chroot or scratch image without /etc/passwd, give a "
				"numeric uid[:gid])\n",
				at ? at : "", at ? ": " : "", c->mail_owner);
		}
		int owner_bad = owner_read_check(c, say_stderr);
		policy_release(pol);
		return owner_bad ? 1 : 0;
	}

	log_open("perimd", fg || c->log_to_e == LOG_TO_STDERR, verbose);
	log_set_json(c->log_format_e == LOG_FORMAT_JSON);
	/* Spooled bodies, databases and statistics hold other people's mail:
	 * nothing perimd creates is readable by group or others. */
	umask(077);
	if (make_dir(c->data_directory) < 0)
		fatal("data_directory %s: %s", c->data_directory, strerror(errno));
	if (make_dir(c->body_spool_directory) < 0)
		fatal("body_spool_directory %s: %s", c->body_spool_directory, strerror(errno));
	spool_global_init(c->body_spool_directory, (uint64_t)c->body_memory_limit,
			  (uint64_t)c->body_spool_limit);
	verify_init(100000);
	raise_nofile(c);
	give_state_dirs(c);
	if (owner_read_check(c, say_log))
		fatal("greylist_database %s: not usable by mail_owner %s", c->greylist_database, c->mail_owner);

	nthreads = conf_per_cpu(c->io_threads);
	/* Another daemon on one of our addresses: refuse, naming it, before
	 * SO_REUSEPORT would let us share its clients. */
	for (int i = 0; i < c->smtpd_listen.n; i++)
		probe_addr("smtpd_listen", c->smtpd_listen.v[i], 25);
	probe_addr("stats_listen", c->stats_listen, 9125);
	probe_addr("policy_listen", c->policy_listen + (strncmp(c->policy_listen, "inet:", 5) ? 0 : 5), -1);
	/* Bind everything before anything runs: one socket per address per
	 * io thread (SO_REUSEPORT spreads connections over them). */
	threads = xcalloc((size_t)nthreads, sizeof *threads);
	for (int t = 0; t < nthreads; t++) {
		threads[t].loop = ev_loop_new(t);
		threads[t].fds = xcalloc((size_t)c->smtpd_listen.n + 1, sizeof(int));
		for (int i = 0; i < c->smtpd_listen.n; i++) {
			int fd = net_listen((struct sockaddr *)&addrs[i], alens[i], 4096, err, sizeof err);
			if (fd < 0)
				fatal("smtpd_listen %s: %s", c->smtpd_listen.v[i], err);
			threads[t].fds[threads[t].nfds++] = fd;
		}
	}
	admin_init(c, nthreads);
	admin_config_loaded(c);
	stats_gauge_set(ST_config_reload_time, (int64_t)time(NULL));
	stats_gauge_set(ST_config_reload_ok, 1);
	stats_fd = admin_listen_open(c);
	policyd_fd = policyd_listen_open(c);
	policy_install(pol);
	drop_privileges(c);

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	/* As PID 1 of a container (or of unshare -p), the kernel discards
	 * every signal whose action is the default, even a blocked one that
	 * sigwait() would take: `podman stop` would never drain. A handler
	 * (never run: the signals stay blocked) makes them deliverable. */
	{
		struct sigaction sa = { .sa_handler = sig_unused };
		sigaction(SIGHUP, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		sigaction(SIGINT, &sa, NULL);
	}

	jobs_start(milter_enabled(c) ? 64 : 2); /* a milter conversation holds a worker */
	fleet_start();
	admin_starting_begin(stats_fd); /* /healthz: 503 until the loops run */
	{
		/* No mail before the virus scanner has its engine loaded. */
		struct ev_loop **loops = xcalloc((size_t)nthreads, sizeof *loops);
		for (int t = 0; t < nthreads; t++)
			loops[t] = threads[t].loop;
		if (av_start(c, loops, nthreads, err, sizeof err) < 0)
			fatal("%s", err);
		free(loops);
	}
	admin_starting_end();
	for (int t = 0; t < nthreads; t++)
		if (pthread_create(&threads[t].tid, NULL, io_main, &threads[t]) != 0)
			fatal("cannot start io thread");
	log_info("perimd %s started: %d io threads, listening on %d address(es)", PERIMD_VERSION, nthreads,
		 c->smtpd_listen.n);
	grey_announce(c);
	stats_health_set(STATS_UP);

	for (;;) {
		/* Every 2 s without a signal, look for changed map files: an
		 * admin who edits a map does not need to send SIGHUP. */
		struct timespec tick = { 2, 0 };
		int sig = sigtimedwait(&set, NULL, &tick);
		if (sig < 0) {
			if (errno == EAGAIN && maps_changed()) {
				log_info("a map file changed: reloading");
				reload(path, nov, 0);
			}
			continue;
		}
		if (sig == SIGHUP) {
			reload(path, nov, 1);
		} else if (sig == SIGTERM || sig == SIGINT) {
			log_info("stopping: draining sessions");
			stats_health_set(STATS_DRAINING);
			for (int t = 0; t < nthreads; t++)
				ev_post(threads[t].loop, drain_loop, &threads[t]);
			break;
		}
	}
	for (int t = 0; t < nthreads; t++)
		pthread_join(threads[t].tid, NULL);
	milter_stop();
	fleet_stop();
	jobs_stop();
	av_stop();
	tls_shutdown();
	log_info("stopped");
	return 0;
}
