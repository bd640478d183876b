/* ckptfs mount: the FUSE daemon's command line, start-up and serving loop;
 * also the form mount.fuse3 runs (fstab, mount -t fuse.ckptfs). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cli.h"
#include "commands.h"
#include "daemon.h"
#include "fuseio.h"
#include "fs.h"
#include "log.h"
#include "mountinfo.h"
#include "restart.h"
#include "sandbox.h"

/* Options every mount gets, after the user's so they win: a view never
 * changes its source, and the kernel checks permissions against the modes
 * the views show. */
#define FORCED_OPTIONS "ro,nodev,nosuid,default_permissions,subtype=" PACKAGE
/* Worker threads: enough for many concurrent readers (DDP ranks) of one
 * mount, and idle ones kept for the next burst. */
#define MAX_THREADS 64
#define MAX_IDLE_THREADS 16

struct mount_args {
	bool foreground, debug, nosandbox, direct_io;
	size_t cache_mb;
	struct cli_views views;
	char fuse_options[4096];  /* the user's -o options for libfuse, comma-separated */
	const char *source, *mountpoint;
	char *const *options;  /* as given, for a restart */
	size_t noptions;
	int takeover_fd, ready_fd;  /* --takeover=FD:EPOCH:READY_FD[:CONN] (restart.h); -1 if not */
	unsigned conn;
	uint32_t epoch;
};

static size_t parse_cache_mb(const char *value)
{
	unsigned long long mb;
	char *end;

	errno = 0;
	mb = strtoull(value, &end, 10);
	if (!*value || *value == '-' || *end || errno || mb > SIZE_MAX >> 20)
		cli_usage_error("mount", "cache_mb=%s: not a size in MiB", value);
	if (mb < CLI_MIN_CACHE_MB)
		cli_usage_error("mount", "cache_mb=%s: at least %d MiB", value, CLI_MIN_CACHE_MB);
	return (size_t)mb;
}

/* Options mount(8) and fstab pass to every helper: about mount(8) itself
 * (auto, user, _netdev, x-systemd.*...) or overruled by FORCED_OPTIONS. */
static bool is_generic_option(const char *opt)
{
	static const char *const generic[] = {"rw", "ro", "dev", "suid", "defaults", "auto", "noauto", "user",
					      "nouser", "users", "nofail", "_netdev", NULL};

	for (const char *const *g = generic; *g; g++)
		if (strcmp(opt, *g) == 0)
			return true;
	return strncmp(opt, "x-", 2) == 0 || strncmp(opt, "comment=", 8) == 0;
}

/* Takes ckptfs's own options out of one -o list; the rest is libfuse's.
 * The list stays as given: a restart passes it on (restart.h). */
static void parse_options(struct mount_args *a, const char *given)
{
	char *list = strdup(given), *next = NULL;

	if (!list)
		cli_fail("-o", strerror(ENOMEM));
	for (char *opt = strtok_r(list, ",", &next); opt; opt = strtok_r(NULL, ",", &next)) {
		size_t used = strlen(a->fuse_options);

		if (strncmp(opt, "cache_mb=", 9) == 0)
			a->cache_mb = parse_cache_mb(opt + 9);
		else if (strncmp(opt, "view=", 5) == 0)
			cli_views_add(&a->views, "mount", opt + 5);
		else if (strcmp(opt, "nosandbox") == 0)
			a->nosandbox = true;
		else if (strcmp(opt, "direct_io") == 0)
			a->direct_io = true;
		else if (is_generic_option(opt))
			continue;
		else if ((size_t)snprintf(a->fuse_options + used, sizeof(a->fuse_options) - used,
					  "%s%s", used ? "," : "", opt) >= sizeof(a->fuse_options) - used)
			cli_usage_error("mount", "-o: options too long");
	}
	free(list);
}

static void parse_mount_args(struct mount_args *a, int argc, char **argv)
{
	static const struct option longopts[] = {
		{"help", no_argument, NULL, 'h'}, {"takeover", required_argument, NULL, 'T'}, {0}};
	int c;

	*a = (struct mount_args){.cache_mb = CLI_DEFAULT_CACHE_MB, .takeover_fd = -1, .ready_fd = -1};
	cli_views_init(&a->views);
	opterr = 0; /* cli_usage_error says it in one line */
	while ((c = getopt_long(argc, argv, "fdo:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'f':
			a->foreground = true;
			break;
		case 'd':
			a->debug = a->foreground = true;
			break;
		case 'o':
			parse_options(a, optarg);
			break;
		case 'h':
			cli_help_exit("mount");
		case 'T': /* internal: a restart's successor */
			if (!ck_restart_parse(optarg, &a->takeover_fd, &a->epoch, &a->ready_fd, &a->conn))
				cli_usage_error("mount", "--takeover=%s: expected FD:EPOCH:READY_FD[:CONN]",
						optarg);
			break;
		default:
			if (optopt == 'o')
				cli_usage_error("mount", "-o needs an argument");
			if (optopt)
				cli_usage_error("mount", "-%c: unknown option", optopt);
			cli_usage_error("mount", "%s: unknown option", argv[optind - 1]);
		}
	}
	if (argc - optind != 2)
		cli_usage_error("mount", "expected SOURCE and MOUNTPOINT");
	a->source = argv[optind];
	a->mountpoint = argv[optind + 1];
	a->options = argv + 1; /* getopt moved the operands last */
	a->noptions = (size_t)optind - 1;
}

/* An O_PATH descriptor of the source root: every later access goes through
 * it, so the daemon serves this directory even if its path changes. */
static int open_source_root(const char *source)
{
	int fd = open(source, O_PATH | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || access(source, R_OK | X_OK))
		cli_fail(source, strerror(errno));
	return fd;
}

static bool is_beneath(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0' || n == 1);
}

/* Mounting on a mount point would stack a second mount on the first; inside
 * the source, the views would contain themselves. Gives the absolute path:
 * the daemon leaves its working directory before it unmounts. */
static void check_mountpoint(const char *mountpoint, const char *source_real, char *real)
{
	struct statx stx;

	if (statx(AT_FDCWD, mountpoint, 0, STATX_TYPE, &stx))
		cli_fail(mountpoint, strerror(errno));
	if (!S_ISDIR(stx.stx_mode))
		cli_fail(mountpoint, strerror(ENOTDIR));
	if (stx.stx_attributes_mask & stx.stx_attributes & STATX_ATTR_MOUNT_ROOT)
		cli_fail(mountpoint, "already a mount point");
	if (!realpath(mountpoint, real))
		cli_fail(mountpoint, strerror(errno));
	if (is_beneath(real, source_real))
		cli_fail(mountpoint, "inside the source directory");
}

/* libfuse splits -o lists at commas and unescapes backslashes. */
static void append_escaped(char *out, size_t size, const char *s)
{
	size_t n = strlen(out);

	for (; *s && n + 2 < size; s++) {
		if (*s == ',' || *s == '\\')
			out[n++] = '\\';
		out[n++] = *s;
	}
	out[n] = '\0';
}

/* fsname (the source) and subtype make the mount known in mountinfo as
 * "fuse.ckptfs SOURCE": ckptfs umount checks it. */
static struct fuse_session *new_session(const struct mount_args *a, const char *source_real,
					struct ck_fs *fs)
{
	char forced[PATH_MAX * 2 + sizeof(FORCED_OPTIONS) + 16] = FORCED_OPTIONS ",fsname=";
	char *argv[7] = {PACKAGE};
	struct fuse_args args = FUSE_ARGS_INIT(0, argv);
	struct fuse_session *se;

	append_escaped(forced, sizeof(forced), source_real);
	args.argc = 1;
	if (*a->fuse_options) {
		argv[args.argc++] = "-o";
		argv[args.argc++] = (char *)a->fuse_options;
	}
	argv[args.argc++] = "-o";
	argv[args.argc++] = forced;
	if (a->debug)
		argv[args.argc++] = "-d";
	se = fuse_session_new(&args, &ck_fs_ops, sizeof(ck_fs_ops), fs);
	fuse_opt_free_args(&args);
	return se;
}

/* libfuse's own messages ("fuse: unknown option(s): ...", debug output)
 * go through the same log. libfuse writes some lines in pieces, so pieces
 * are gathered per thread until the newline. */
static void log_fuse(enum fuse_log_level level, const char *fmt, va_list ap)
{
	static __thread char line[1024];
	size_t n = strlen(line);

	vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	n = strlen(line);
	if (n && line[n - 1] != '\n' && n + 1 < sizeof(line))
		return;
	while (n && line[n - 1] == '\n')
		line[--n] = '\0';
	ck_log((int)level, "%s", strncmp(line, "fuse: ", 6) == 0 ? line + 6 : line);
	line[0] = '\0';
}

/* Raises the mount's read-ahead (the kernel's default, 128 KiB, makes every
 * read request 128 KiB). Only root may; others keep the default. Done before
 * INIT is answered: the kernel keeps the lower of this and init's
 * max_readahead. The bdi is named by the mount's device, found in
 * mountinfo: a stat of the mount point would wait for the daemon. */
static void raise_read_ahead(const char *mountpoint)
{
	struct ck_mountinfo mi;
	char path[128];
	int fd;

	if (!ck_mountinfo_find(mountpoint, &mi))
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", mi.dev);
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) >= 0) {
		dprintf(fd, "%u\n", CK_READ_AHEAD_KB);
		close(fd);
	}
}

static int serve(struct fuse_session *se)
{
	struct fuse_loop_config *cfg = fuse_loop_cfg_create();
	int rc;

	if (!cfg) {
		ck_log(LOG_ERR, "%s", strerror(ENOMEM));
		return -ENOMEM;
	}
	/* One /dev/fuse descriptor per thread: no contention on a single queue. */
	fuse_loop_cfg_set_clone_fd(cfg, 1);
	fuse_loop_cfg_set_max_threads(cfg, MAX_THREADS);
	fuse_loop_cfg_set_idle_threads(cfg, MAX_IDLE_THREADS);
	rc = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return ck_fuseio_drained() ? SIGHUP : rc;
}

/* The end: the unmounter of a confined daemon detaches the mount, or this
 * process does when libfuse does not know the mount point (taken over). */
static void unmount(struct fuse_session *se, struct ck_sandbox *sb, const char *taken_over)
{
	ck_sandbox_unmount(sb, fuse_session_fd(se), taken_over);
	fuse_session_unmount(se);
}

/* A start that failed: a new mount goes, a successor leaves the mount to
 * its predecessor, which serves on. */
static void fail_start(struct fuse_session *se, struct ck_sandbox *sb, bool takeover,
		       const char *what, const char *why) __attribute__((noreturn));
static void fail_start(struct fuse_session *se, struct ck_sandbox *sb, bool takeover,
		       const char *what, const char *why)
{
	if (takeover)
		ck_sandbox_leave(sb);
	else
		unmount(se, sb, NULL);
	cli_fail(what, why);
}

/* SIGHUP ended the loop: a successor takes the connection over (restart.h);
 * whether it serves now. If not, this daemon serves on. */
static bool hand_over(struct fuse_session *se, struct ck_sandbox *sb, int root_fd)
{
	int fd = fuse_session_fd(se);
	char why[256];

	unsigned conn = ck_fuseio_granted();

	if ((sb->unmounter > 0 ? ck_sandbox_restart(sb, fd, root_fd, conn, why, sizeof(why)) :
	     ck_restart_spawn(fd, root_fd, conn, why, sizeof(why))) == 0)
		return true;
	ck_log(LOG_ERR, "restart: cannot restart (%s); serving on", why);
	return false;
}

/* Before serving: a successor finds the connection open and answers an
 * INIT of its own making; a new mount mounts. */
static void connect_session(struct fuse_session *se, struct ck_fs *fs, const struct mount_args *a,
			    const char *mountpoint)
{
	char fuse_fd[32];

	snprintf(fuse_fd, sizeof(fuse_fd), "/dev/fd/%d", a->takeover_fd);
	if (fuse_set_signal_handlers(se) ||
	    fuse_session_mount(se, a->takeover_fd >= 0 ? fuse_fd : mountpoint) ||
	    ck_fuseio_attach(se, a->conn))
		exit(EXIT_RUNTIME);
	ck_fs_note_mount(fs, mountpoint);
	if (a->takeover_fd >= 0) {
		ck_restart_init(se);
		ck_log(LOG_NOTICE, "restarted: serving %s again", mountpoint);
	} else {
		raise_read_ahead(mountpoint);
	}
}

/* Mounts; in the background the command returns once the file system
 * answers (daemon.h); serves until unmounted or signalled. A successor of
 * a restart (--takeover) serves the mount of its predecessor instead;
 * until it answers, failing leaves the mount to the predecessor. */
int cmd_mount(int argc, char **argv)
{
	struct mount_args a;
	char source_real[PATH_MAX], mountpoint_real[PATH_MAX];
	struct fuse_session *se;
	struct ck_sandbox sb = {0};
	struct ck_fs *fs;
	struct ck_err e;
	bool takeover, handed = false, ours;
	int root_fd, rc;

	parse_mount_args(&a, argc, argv);
	takeover = a.takeover_fd >= 0;
	/* what a successor inherited is not for what it runs (fusermount3, a successor) */
	if (takeover)
		close_range(STDERR_FILENO + 1, ~0U, CLOSE_RANGE_CLOEXEC);
	root_fd = open_source_root(a.source);
	if (!realpath(a.source, source_real))
		cli_fail(a.source, strerror(errno));
	if (!takeover)
		check_mountpoint(a.mountpoint, source_real, mountpoint_real);
	else if (!realpath(a.mountpoint, mountpoint_real))
		cli_fail(a.mountpoint, strerror(errno));
	ck_restart_prepare(a.epoch, a.options, a.noptions, source_real, mountpoint_real);
	if (takeover)
		ck_daemon_take_over(a.ready_fd, !a.foreground);
	else
		ck_daemon_start(!a.foreground);
	fs = ck_fs_new(root_fd, a.views.list, a.views.n, a.cache_mb << 20, &e);
	if (!fs || (takeover && ck_fs_take_over(fs, a.epoch)))
		cli_fail(a.source, fs ? strerror(ENOMEM) : e.msg);
	ck_fs_set_direct_io(fs, a.direct_io);
	/* symlinks into the source by absolute path name it either way */
	if (ck_fs_add_source_path(fs, source_real, &e) || ck_fs_add_source_path(fs, a.source, &e))
		cli_fail(a.source, e.msg);
	fuse_set_log_func(log_fuse);
	se = new_session(&a, source_real, fs);
	if (!se)
		exit(EXIT_USAGE); /* bad -o option; libfuse said which */
	connect_session(se, fs, &a, mountpoint_real);
	/* before any thread starts: capabilities are dropped per thread */
	if (!a.nosandbox && ck_sandbox_enter(&sb, mountpoint_real, a.foreground, ck_restart_spawn, &e))
		fail_start(se, &sb, takeover, a.source, e.msg);
	if ((rc = ck_daemon_watch(mountpoint_real)))
		fail_start(se, &sb, takeover, "pthread_create", strerror(rc));
	while ((rc = serve(se)) == SIGHUP && !(handed = hand_over(se, &sb, root_fd)))
		;
	/* a successor that never answered leaves the mount to its predecessor */
	ours = !handed && (!takeover || ck_daemon_was_ready());
	if (ours)
		ck_daemon_stopping();
	fuse_remove_signal_handlers(se);
	if (ours)
		unmount(se, &sb, takeover ? mountpoint_real : NULL);
	else /* the mount lives on (libfuse keeps its copy of the path: tests/lsan.supp) */
		ck_sandbox_leave(&sb);
	fuse_session_destroy(se);
	ck_fs_free(fs);
	cli_views_clear(&a.views);
	if (handed)
		return 0;
	/* A signal (SIGTERM, ^C) is the ordinary way to stop: rc is its number.
	 * So is the end of the connection: when the last file of a lazily
	 * unmounted mount closes, a worker may read ECONNABORTED where the
	 * others read ENODEV (which libfuse takes for an unmount). */
	if (rc == -ECONNABORTED)
		rc = 0;
	return rc < 0 || !ck_daemon_was_ready() ? EXIT_RUNTIME : 0;
}
