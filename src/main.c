#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "fs.h"
#include "log.h"
#include "restart.h"

#define DEFAULT_CACHE_MB 256
#define STRINGIFY(x) #x
#define NUMBER_TEXT(x) STRINGIFY(x)
/* Options every mount gets, after the user's so they win: a view never
 * changes its source, and the kernel checks permissions against the modes
 * the views show. */
#define FORCED_OPTIONS "ro,default_permissions,subtype=" PACKAGE
/* Worker threads: enough for many concurrent readers (DDP ranks) of one
 * mount, and idle ones kept for the next burst. */
#define MAX_THREADS 64
#define MAX_IDLE_THREADS 16

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

static const char help_text[] =
	"Usage: " PACKAGE " mount [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT\n"
	"       " PACKAGE " umount MOUNTPOINT\n"
	"       " PACKAGE " restart MOUNTPOINT\n"
	"       " PACKAGE " --help | --version\n"
	"\n"
	"Shows every file under SOURCE twice (and once more per -o view=), read-only,\n"
	"at MOUNTPOINT:\n"
	"  plain/...  PyTorch checkpoints with state-dict keys as the bare model has\n"
	"             them (\"module.\" and \"_orig_mod.\" prefixes stripped)\n"
	"  ddp/...    the same keys as DistributedDataParallel has them (\"module.\" added)\n"
	"Other files, directories and symlinks look the same in every view. Files\n"
	"added to SOURCE appear at once.\n"
	"\n"
	"Commands:\n"
	"  mount     mount SOURCE at MOUNTPOINT (an existing directory that is not a\n"
	"            mount point); returns once the mount is up, the daemon stays\n"
	"  umount    unmount MOUNTPOINT (fusermount3 -u; umount2() when root)\n"
	"  restart   restart the daemon serving MOUNTPOINT without unmounting: it\n"
	"            execs the ckptfs binary again (an upgraded one too), which\n"
	"            takes over the FUSE connection; open files, and an NFS server\n"
	"            exporting the mount, go on after a pause. SIGHUP to the\n"
	"            daemon does the same\n"
	"\n"
	"Mount options:\n"
	"  -f              stay in the foreground and log to stderr (else: syslog)\n"
	"  -d              FUSE debug output on stderr (implies -f)\n"
	"  -o OPT[,OPT...] FUSE mount options, e.g. allow_other, allow_root;\n"
	"                  ro and default_permissions are always set\n"
	"  -o cache_mb=N   memory for parsed checkpoint layouts kept for later,\n"
	"                  in MiB (default " NUMBER_TEXT(DEFAULT_CACHE_MB) ")\n"
	"  -o view=NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]\n"
	"                  one more view, MOUNTPOINT/NAME: state-dict keys (and\n"
	"                  _metadata) lose every leading PREFIX listed, then gain the\n"
	"                  add= PREFIX; each PREFIX ends with '.'. Repeatable, up to\n"
	"                  13 views. E.g. view=bare:strip=model. (Lightning),\n"
	"                  view=peft:strip=base_model.model.\n"
	"\n"
	"Other options:\n"
	"  -h, --help      show this help and exit\n"
	"  -V, --version   show the version and exit\n"
	"\n"
	"Extended attributes (getfattr -d -m - PATH):\n"
	"  user.ckptfs.format  on files in a view: torch-zip, torch-legacy,\n"
	"                      safetensors, torchscript or other\n"
	"  user.ckptfs.error   on a checkpoint that cannot be served: why (opening it\n"
	"                      fails with EIO; it stays listed with its source size)\n"
	"  user.ckptfs.builds  on MOUNTPOINT: how many file views were built\n"
	"\n"
	"Exit status: 0 success, 1 error, 2 bad arguments.\n";

static void usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void usage_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, PACKAGE ": %s (see '" PACKAGE " --help')\n", msg);
	exit(EXIT_USAGE);
}

static void fail(const char *what, const char *why) __attribute__((noreturn));
static void fail(const char *what, const char *why)
{
	ck_log(LOG_ERR, "%s: %s", what, why);
	exit(EXIT_RUNTIME);
}

#define MAX_VIEWS 15 /* node ids keep 4 bits for the view */

struct mount_args {
	bool foreground, debug;
	size_t cache_mb;
	struct ck_view custom[MAX_VIEWS];  /* -o view=... */
	const struct ck_view *views[MAX_VIEWS];
	size_t nviews;
	char fuse_options[4096];  /* the user's -o options for libfuse, comma-separated */
	const char *source, *mountpoint;
	char *const *options;  /* as given, for a restart */
	size_t noptions;
	int takeover_fd;       /* --takeover=FD:EPOCH (restart.h); -1 for a new mount */
	uint32_t epoch;
};

static size_t parse_cache_mb(const char *value)
{
	unsigned long long mb;
	char *end;

	errno = 0;
	mb = strtoull(value, &end, 10);
	if (!*value || *value == '-' || *end || errno || mb > SIZE_MAX >> 20)
		usage_error("cache_mb=%s: not a size in MiB", value);
	return (size_t)mb;
}

/* A custom view: its own top-level directory, named uniquely. */
static void add_view(struct mount_args *a, const char *spec)
{
	struct ck_view *v = &a->custom[a->nviews];
	struct ck_err e;

	if (a->nviews == MAX_VIEWS)
		usage_error("view=%s: at most %d views, plain and ddp included", spec, MAX_VIEWS);
	if (ck_view_parse(spec, v, &e))
		usage_error("%s", e.msg);
	for (size_t i = 0; i < a->nviews; i++)
		if (strcmp(a->views[i]->name, v->name) == 0)
			usage_error("view=%s: there is a view named %s already", spec, v->name);
	a->views[a->nviews++] = v;
}

/* Takes ckptfs's own options out of one -o list; the rest is libfuse's. */
static void parse_options(struct mount_args *a, char *list)
{
	for (char *opt = strtok(list, ","); opt; opt = strtok(NULL, ",")) {
		size_t used = strlen(a->fuse_options);

		if (strncmp(opt, "cache_mb=", 9) == 0)
			a->cache_mb = parse_cache_mb(opt + 9);
		else if (strncmp(opt, "view=", 5) == 0)
			add_view(a, opt + 5);
		else if ((size_t)snprintf(a->fuse_options + used, sizeof(a->fuse_options) - used,
					  "%s%s", used ? "," : "", opt) >= sizeof(a->fuse_options) - used)
			usage_error("-o: options too long");
	}
}

static void parse_mount_args(struct mount_args *a, int argc, char **argv)
{
	static const struct option longopts[] = {
		{"help", no_argument, NULL, 'h'}, {"takeover", required_argument, NULL, 'T'}, {0}};
	int c;

	*a = (struct mount_args){.cache_mb = DEFAULT_CACHE_MB, .views = {&ck_view_plain, &ck_view_ddp}, .nviews = 2,
				 .takeover_fd = -1};
	opterr = 0; /* usage_error says it in one line */
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
			fputs(help_text, stdout);
			exit(0);
		case 'T':
			if (!ck_restart_parse(optarg, &a->takeover_fd, &a->epoch))
				usage_error("mount: --takeover=%s: expected FD:EPOCH", optarg);
			break;
		default:
			if (optopt == 'o')
				usage_error("mount: -o needs an argument");
			if (optopt)
				usage_error("mount: -%c: unknown option", optopt);
			usage_error("mount: %s: unknown option", argv[optind - 1]);
		}
	}
	if (argc - optind != 2)
		usage_error("mount: expected SOURCE and MOUNTPOINT");
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
		fail(source, strerror(errno));
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
		fail(mountpoint, strerror(errno));
	if (!S_ISDIR(stx.stx_mode))
		fail(mountpoint, strerror(ENOTDIR));
	if (stx.stx_attributes_mask & stx.stx_attributes & STATX_ATTR_MOUNT_ROOT)
		fail(mountpoint, "already a mount point");
	if (!realpath(mountpoint, real))
		fail(mountpoint, strerror(errno));
	if (is_beneath(real, source_real))
		fail(mountpoint, "inside the source directory");
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
	char line[PATH_MAX * 2 + 512], path[128];
	FILE *f = fopen("/proc/self/mountinfo", "r");
	bool found = false;

	if (!f)
		return;
	while (!found && fgets(line, sizeof(line), f)) {
		char dev[64], mp[PATH_MAX * 2], real[PATH_MAX];
		size_t j = 0;

		if (sscanf(line, "%*s %*s %63s %*s %8191s", dev, mp) != 2)
			continue;
		for (size_t i = 0; mp[i] && j + 1 < sizeof(real); j++) { /* \040 etc. */
			if (mp[i] == '\\' && mp[i + 1] >= '0' && mp[i + 1] <= '3') {
				real[j] = (char)((mp[i + 1] - '0') * 64 + (mp[i + 2] - '0') * 8 + (mp[i + 3] - '0'));
				i += 4;
			} else {
				real[j] = mp[i++];
			}
		}
		real[j] = '\0';
		if (strcmp(real, mountpoint) == 0) {
			snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
			found = true;
		}
	}
	fclose(f);
	if (found) {
		int fd = open(path, O_WRONLY | O_CLOEXEC);

		if (fd >= 0) {
			dprintf(fd, "%d\n", CK_READ_AHEAD_KB);
			close(fd);
		}
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
	return rc;
}

/* Mounts, detaches from the terminal once the mount is up (the parent's
 * exit tells the caller it can use it), and serves until unmounted or
 * signalled. */
static int cmd_mount(int argc, char **argv)
{
	struct mount_args a;
	char source_real[PATH_MAX], mountpoint_real[PATH_MAX];
	struct fuse_session *se;
	struct ck_fs *fs;
	struct ck_err e;
	char fuse_fd[32];
	bool takeover;
	int root_fd, rc;

	ck_restart_remember_exe();
	parse_mount_args(&a, argc, argv);
	takeover = a.takeover_fd >= 0;
	root_fd = open_source_root(a.source);
	if (!realpath(a.source, source_real))
		fail(a.source, strerror(errno));
	if (!takeover)
		check_mountpoint(a.mountpoint, source_real, mountpoint_real);
	else if (realpath(a.mountpoint, mountpoint_real))
		ck_restart_unmount_at_exit(mountpoint_real);
	else
		fail(a.mountpoint, strerror(errno));
	fs = ck_fs_new(root_fd, a.views, a.nviews, a.cache_mb << 20, &e);
	if (!fs || (takeover && ck_fs_take_over(fs, a.epoch)))
		fail(a.source, fs ? strerror(ENOMEM) : e.msg);
	fuse_set_log_func(log_fuse);
	se = new_session(&a, source_real, fs);
	if (!se)
		exit(EXIT_USAGE); /* bad -o option; libfuse said which */
	snprintf(fuse_fd, sizeof(fuse_fd), "/dev/fd/%d", a.takeover_fd);
	if (fuse_set_signal_handlers(se) || fuse_session_mount(se, takeover ? fuse_fd : mountpoint_real))
		exit(EXIT_RUNTIME);
	if (takeover) {
		/* this process detached before it was restarted */
		if (!a.foreground)
			ck_log_to_syslog();
		ck_restart_init(se);
		ck_log(LOG_NOTICE, "restarted: serving %s again", mountpoint_real);
	} else {
		raise_read_ahead(mountpoint_real);
		if (fuse_daemonize(a.foreground)) {
			fuse_session_unmount(se);
			exit(EXIT_RUNTIME);
		}
		if (!a.foreground)
			ck_log_to_syslog();
	}
	/* SIGHUP: hand the connection to the binary run again (restart.h) */
	while ((rc = serve(se)) == SIGHUP)
		ck_restart_exec(se, a.epoch, a.options, a.noptions, root_fd, source_real, mountpoint_real);
	fuse_remove_signal_handlers(se);
	fuse_session_unmount(se); /* nothing after a takeover: done at exit */
	fuse_session_destroy(se);
	ck_fs_free(fs);
	for (size_t i = 0; i < MAX_VIEWS; i++)
		ck_view_clear(&a.custom[i]);
	/* A signal (SIGTERM, ^C) is the ordinary way to stop: rc is its number. */
	return rc < 0 ? EXIT_RUNTIME : 0;
}

/* Runs fusermount3 -u; quiet when umount2() will get a second try. */
static bool fusermount_u(const char *mountpoint, bool quiet)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return false;
	if (pid == 0) {
		int null = quiet ? open("/dev/null", O_WRONLY) : -1;

		if (null >= 0)
			dup2(null, STDERR_FILENO);
		execlp("fusermount3", "fusermount3", "-u", "--", mountpoint, (char *)NULL);
		ck_log(LOG_ERR, "fusermount3: %s", strerror(errno));
		_exit(127);
	}
	return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int cmd_umount(int argc, char **argv)
{
	const char *mountpoint;
	bool root = geteuid() == 0;

	if (argc != 2 || argv[1][0] == '-')
		usage_error("umount: expected MOUNTPOINT");
	mountpoint = argv[1];
	if (fusermount_u(mountpoint, root))
		return 0;
	if (!root)
		return EXIT_RUNTIME; /* fusermount3 said why */
	if (umount2(mountpoint, UMOUNT_NOFOLLOW) == 0)
		return 0;
	fail(mountpoint, errno == EINVAL ? "not a mount point" : strerror(errno));
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";

	if (strcmp(cmd, "mount") == 0)
		return cmd_mount(argc - 1, argv + 1);
	if (strcmp(cmd, "umount") == 0)
		return cmd_umount(argc - 1, argv + 1);
	if (strcmp(cmd, "restart") == 0) {
		if (argc != 3 || argv[2][0] == '-')
			usage_error("restart: expected MOUNTPOINT");
		return ck_restart_command(argv[2]);
	}
	if (argc == 2 && (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0)) {
		fputs(help_text, stdout);
		return 0;
	}
	if (argc == 2 && (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0)) {
		printf(PACKAGE " " PACKAGE_VERSION "\n");
		return 0;
	}
	if (!*cmd)
		usage_error("expected a command");
	usage_error("%s: unknown command", cmd);
}
