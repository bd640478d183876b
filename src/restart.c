#include <config.h>
#include "restart.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fuse.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "log.h"

#define TAKEOVER_OPT "--takeover"
/* How long `ckptfs restart` waits for the successor to serve. */
#define RESTART_TIMEOUT_MS 30000

extern char **environ;

static char exe[PATH_MAX];

void ck_restart_remember_exe(void)
{
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

	exe[n > 0 ? n : 0] = '\0';
}

bool ck_restart_parse(const char *spec, int *fd, uint32_t *epoch)
{
	unsigned long e;
	long f;
	char *end;

	errno = 0;
	f = strtol(spec, &end, 10);
	if (end == spec || *end != ':' || f < 0 || f > INT_MAX || errno)
		return false;
	spec = end + 1;
	e = strtoul(spec, &end, 10);
	if (end == spec || *end || !isdigit((unsigned char)*spec) || e >= UINT32_MAX || errno)
		return false;
	*fd = (int)f;
	*epoch = (uint32_t)e;
	return true;
}

/* What a Linux kernel offers in its INIT: libfuse keeps what the file
 * system's init() wants of it (splice, export support, max_pages, ...).
 * The reply goes to the kernel with an id it never issued: it drops it
 * (ENOENT, which libfuse ignores). */
void ck_restart_init(struct fuse_session *se)
{
	struct {
		struct fuse_in_header h;
		struct fuse_init_in in;
	} msg = {
		.h = {.len = sizeof(msg), .opcode = FUSE_INIT, .unique = UINT64_MAX - 1},
		.in = {
			.major = FUSE_KERNEL_VERSION,
			.minor = FUSE_KERNEL_MINOR_VERSION,
			.max_readahead = 16 << 20,
			.flags = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_EXPORT_SUPPORT |
				 FUSE_SPLICE_WRITE | FUSE_SPLICE_MOVE | FUSE_SPLICE_READ |
				 FUSE_AUTO_INVAL_DATA | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS |
				 FUSE_MAX_PAGES | FUSE_INIT_EXT,
		},
	};
	struct fuse_buf buf = {.size = sizeof(msg), .mem = &msg};

	fuse_session_process_buf(se, &buf);
}

/* Runs argv with stdout and stderr to /dev/null; whether it exited 0. */
static bool run_quietly(char *const argv[])
{
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int status, err;

	if (posix_spawn_file_actions_init(&fa))
		return false;
	posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
	err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	return !err && waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* Whether the binary runs at all (an upgrade may have left it broken):
 * after the exec there is no way back, the connection dies with it. */
static bool runs(const char *path)
{
	char *argv[] = {(char *)path, "--version", NULL};

	return run_quietly(argv);
}

static bool is_takeover(const char *opt)
{
	size_t n = strlen(TAKEOVER_OPT);

	return strncmp(opt, TAKEOVER_OPT, n) == 0 && (opt[n] == '\0' || opt[n] == '=');
}

/* The source as the successor is to open it: its path or, if that names
 * another directory now (renamed since the mount), the descriptor itself,
 * kept open across the exec. */
static const char *source_arg(int fd, const char *path, char *buf, size_t size)
{
	struct stat now, served;

	if (stat(path, &now) == 0 && fstat(fd, &served) == 0 && now.st_dev == served.st_dev &&
	    now.st_ino == served.st_ino)
		return path;
	if (fcntl(fd, F_SETFD, 0))
		return path;
	snprintf(buf, size, "/proc/self/fd/%d", fd);
	return buf;
}

void ck_restart_exec(struct fuse_session *se, uint32_t epoch, char *const *options, size_t nopts,
		     int source_fd, const char *source, const char *mountpoint)
{
	int fd = fuse_session_fd(se), n = 0;
	char takeover[64], source_fd_path[64];
	char **argv;

	argv = calloc(nopts + 6, sizeof(*argv));
	if (!argv || !*exe || epoch == UINT32_MAX - 1 || !runs(exe)) {
		ck_log(LOG_ERR, "restart: cannot restart (%s); serving on", !argv ? strerror(ENOMEM) :
		       !*exe ? "the binary's path is unknown" : epoch == UINT32_MAX - 1 ?
		       "too many restarts" : "the binary does not run");
		free(argv);
		return;
	}
	snprintf(takeover, sizeof(takeover), TAKEOVER_OPT "=%d:%u", fd, epoch + 1);
	argv[n++] = PACKAGE;
	argv[n++] = "mount";
	argv[n++] = takeover;
	for (size_t i = 0; i < nopts; i++) {
		if (strcmp(options[i], TAKEOVER_OPT) == 0)
			i++; /* and its argument */
		else if (!is_takeover(options[i]))
			argv[n++] = options[i];
	}
	argv[n++] = (char *)source_arg(source_fd, source, source_fd_path, sizeof(source_fd_path));
	argv[n++] = (char *)mountpoint;
	ck_log(LOG_NOTICE, "restarting: %s takes over %s", exe, mountpoint);
	if (fcntl(fd, F_SETFD, 0) == 0)
		execve(exe, argv, environ);
	ck_log(LOG_ERR, "restart: %s: %s; serving on", exe, strerror(errno));
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	fcntl(source_fd, F_SETFD, FD_CLOEXEC);
	free(argv);
}

static char unmount_at_exit[PATH_MAX];

static void unmount_now(void)
{
	char *argv[] = {"fusermount3", "-u", "-z", "--", unmount_at_exit, NULL};

	if (geteuid() != 0) /* only fusermount3 may, for a user */
		run_quietly(argv);
	else
		umount2(unmount_at_exit, MNT_DETACH); /* EINVAL once unmounted already */
}

void ck_restart_unmount_at_exit(const char *mountpoint)
{
	snprintf(unmount_at_exit, sizeof(unmount_at_exit), "%s", mountpoint);
	atexit(unmount_now);
}

/* ---- ckptfs restart MOUNTPOINT */

/* /proc/self/mountinfo escapes blanks, tabs, newlines and backslashes as \ooo. */
static void unescape(char *s)
{
	char *out = s;

	for (; *s; out++) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' &&
		    s[3] >= '0' && s[3] <= '7') {
			*out = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 4;
		} else {
			*out = *s++;
		}
	}
	*out = '\0';
}

/* The FUSE connection number (the mount's minor device number) of the
 * topmost mount at path, if that mount is a ckptfs one; -1 otherwise. */
static long ckptfs_connection(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char *line = NULL;
	size_t cap = 0;
	long conn = -1;

	if (!f)
		return -1;
	while (getline(&line, &cap, f) > 0) {
		unsigned major, minor;
		char *mp = NULL, *type = NULL, *dash = strstr(line, " - ");

		if (!dash || sscanf(line, "%*s %*s %u:%u %*s %ms", &major, &minor, &mp) != 3 ||
		    sscanf(dash + 3, "%ms", &type) != 1) {
			free(mp);
			continue;
		}
		unescape(mp);
		if (strcmp(mp, path) == 0) /* a later line is a mount stacked on top */
			conn = strcmp(type, "fuse." PACKAGE) == 0 && major == 0 ? (long)minor : -1;
		free(mp);
		free(type);
	}
	free(line);
	fclose(f);
	return conn;
}

/* What descriptor fd of process pid is: /dev/fuse of connection conn, of
 * another one, of one the kernel does not name (fdinfo shows
 * fuse_connection since Linux 6.x), or something else. */
enum fuse_fd { NOT_FUSE, OTHER_CONN, THIS_CONN, UNNAMED_CONN };

static enum fuse_fd fuse_fd_of(const char *pid, const char *fd, long conn)
{
	char path[PATH_MAX], target[32], line[128];
	enum fuse_fd kind = UNNAMED_CONN;
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%s/fd/%s", pid, fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n != (ssize_t)strlen("/dev/fuse") || memcmp(target, "/dev/fuse", (size_t)n) != 0)
		return NOT_FUSE;
	snprintf(path, sizeof(path), "/proc/%s/fdinfo/%s", pid, fd);
	if (!(f = fopen(path, "r")))
		return NOT_FUSE;
	while (kind == UNNAMED_CONN && fgets(line, sizeof(line), f)) {
		long c;

		if (sscanf(line, "fuse_connection: %ld", &c) == 1)
			kind = c == conn ? THIS_CONN : OTHER_CONN;
	}
	fclose(f);
	return kind;
}

/* A process's arguments, NUL-separated; their length, 0 if it is gone. */
static size_t read_cmdline(pid_t pid, char *args, size_t size)
{
	char path[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return 0;
	n = read(fd, args, size - 1);
	close(fd);
	if (n <= 0)
		return 0;
	args[n] = '\0';
	return (size_t)n;
}

/* The epoch a daemon runs in: that of its --takeover, 0 without one; -1 if
 * the process is gone or is not a ckptfs daemon ("... mount ..."). */
static long daemon_epoch(pid_t pid)
{
	char args[8192];
	size_t n = read_cmdline(pid, args, sizeof(args));
	char *cmd = args + strlen(args) + 1;
	long epoch = 0;

	if (!n || cmd >= args + n || strcmp(cmd, "mount") != 0)
		return -1;
	for (char *a = cmd; a < args + n; a += strlen(a) + 1) {
		int f;
		uint32_t e;

		if (is_takeover(a) && ck_restart_parse(a + strlen(TAKEOVER_OPT "="), &f, &e))
			epoch = e;
	}
	return epoch;
}

/* Whether a daemon's last argument, its mount point, is path (a relative
 * one is taken from its working directory). */
static bool names_mountpoint(pid_t pid, const char *path)
{
	char args[8192], where[sizeof(args) + 64], real[PATH_MAX];
	size_t n = read_cmdline(pid, args, sizeof(args));
	char *last = args + n - 1;

	if (n < 2)
		return false;
	while (last > args && last[-1])
		last--;
	if (*last == '/')
		snprintf(where, sizeof(where), "%s", last);
	else
		snprintf(where, sizeof(where), "/proc/%d/cwd/%s", (int)pid, last);
	return realpath(where, real) && strcmp(real, path) == 0;
}

/* Whether process pid serves connection conn, mounted at mountpoint. */
static bool serves(const char *pid, long conn, const char *mountpoint)
{
	char path[PATH_MAX];
	enum fuse_fd kind = NOT_FUSE;
	struct dirent *fd;
	DIR *fds;

	snprintf(path, sizeof(path), "/proc/%s/fd", pid);
	if (!(fds = opendir(path)))
		return false;
	while ((kind == NOT_FUSE || kind == UNNAMED_CONN) && (fd = readdir(fds))) {
		enum fuse_fd k = fuse_fd_of(pid, fd->d_name, conn);

		if (k != NOT_FUSE)
			kind = k;
	}
	closedir(fds);
	return kind == THIS_CONN || (kind == UNNAMED_CONN && names_mountpoint(atoi(pid), mountpoint));
}

/* The ckptfs daemon serving connection conn: 0 if none, -1 if several. */
static pid_t find_daemon(long conn, const char *mountpoint)
{
	DIR *proc = opendir("/proc");
	struct dirent *p;
	pid_t found = 0;

	while (proc && (p = readdir(proc))) {
		pid_t pid = (pid_t)atoi(p->d_name);

		if (pid > 0 && daemon_epoch(pid) >= 0 && serves(p->d_name, conn, mountpoint))
			found = found ? -1 : pid;
	}
	if (proc)
		closedir(proc);
	return found;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

/* Running, not a zombie its parent has yet to reap. */
static bool alive(pid_t pid)
{
	char path[64], stat[512], *end;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return false;
	n = read(fd, stat, sizeof(stat) - 1);
	close(fd);
	stat[n > 0 ? n : 0] = '\0';
	end = strrchr(stat, ')'); /* the command name may hold anything */
	return end && end[1] == ' ' && end[2] != 'Z' && end[2] != 'X';
}

/* Signals the daemon, then waits for its successor to exec and serve. */
static int restart_daemon(pid_t pid, const char *mountpoint)
{
	long epoch = daemon_epoch(pid), now = epoch;
	struct statvfs sv;

	if (epoch < 0 || kill(pid, SIGHUP)) {
		fprintf(stderr, PACKAGE ": %s: the daemon (pid %d) went away\n", mountpoint, (int)pid);
		return 1;
	}
	for (int waited = 0; now == epoch && waited < RESTART_TIMEOUT_MS; waited += 20) {
		sleep_ms(20);
		now = daemon_epoch(pid);
		if (now < 0 && alive(pid))
			now = epoch; /* its cmdline reads empty while it execs */
	}
	if (now < 0 || now == epoch) {
		fprintf(stderr, PACKAGE ": %s: %s (see the daemon's log)\n", mountpoint,
			now < 0 ? "the daemon exited while restarting" : "the daemon did not restart");
		return 1;
	}
	/* answered by the successor once it serves */
	if (statvfs(mountpoint, &sv)) {
		fprintf(stderr, PACKAGE ": %s: after the restart: %s\n", mountpoint, strerror(errno));
		return 1;
	}
	return 0;
}

int ck_restart_command(const char *mountpoint)
{
	char real[PATH_MAX];
	long conn;
	pid_t pid;

	if (!realpath(mountpoint, real)) {
		fprintf(stderr, PACKAGE ": %s: %s\n", mountpoint, strerror(errno));
		return 1;
	}
	if ((conn = ckptfs_connection(real)) < 0) {
		fprintf(stderr, PACKAGE ": %s: not a ckptfs mount\n", mountpoint);
		return 1;
	}
	pid = find_daemon(conn, real);
	if (pid > 0)
		return restart_daemon(pid, real);
	if (pid < 0)
		fprintf(stderr, PACKAGE ": %s: more than one ckptfs process serves it\n", mountpoint);
	else
		fprintf(stderr, PACKAGE ": %s: cannot find the daemon that serves it; send it SIGHUP\n",
			mountpoint);
	return 1;
}
