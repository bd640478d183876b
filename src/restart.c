#include <config.h>
#include "restart.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fuse.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "cli.h"
#include "commands.h"
#include "log.h"
#include "mountinfo.h"

#define TAKEOVER_OPT "--takeover"
/* How long the old daemon waits for its successor to serve (the mount is
 * served by neither meanwhile), and `ckptfs restart` for the old one to go. */
#define SUCCESSOR_TIMEOUT_MS 20000
#define RESTART_TIMEOUT_MS 30000

extern char **environ;

/* What a restart runs again, taken before the daemon confines itself: the
 * process that starts the successor is a fork of it (sandbox.h). */
static struct {
	char exe[PATH_MAX];
	uint32_t next_epoch;
	char *const *options;
	size_t nopts;
	const char *source, *mountpoint;
} again;

void ck_restart_prepare(uint32_t epoch, char *const *options, size_t nopts, const char *source,
			const char *mountpoint)
{
	ssize_t n = readlink("/proc/self/exe", again.exe, sizeof(again.exe) - 1);

	again.exe[n > 0 ? n : 0] = '\0';
	again.next_epoch = epoch + 1;
	again.options = options;
	again.nopts = nopts;
	again.source = source;
	again.mountpoint = mountpoint;
}

bool ck_restart_parse(const char *spec, int *fd, uint32_t *epoch, int *ready_fd, unsigned *conn)
{
	unsigned long e, c = 0;
	long f, r;
	char *end;

	errno = 0;
	f = strtol(spec, &end, 10);
	if (end == spec || *end != ':' || f < 0 || f > INT_MAX || errno)
		return false;
	spec = end + 1;
	e = strtoul(spec, &end, 10);
	if (end == spec || *end != ':' || !isdigit((unsigned char)*spec) || e >= UINT32_MAX || errno)
		return false;
	spec = end + 1;
	r = strtol(spec, &end, 10);
	if (end == spec || (*end && *end != ':') || r < 0 || r > INT_MAX || errno)
		return false;
	if (*end) {
		spec = end + 1;
		c = strtoul(spec, &end, 10);
		if (end == spec || *end || !isdigit((unsigned char)*spec) || c > UINT_MAX || errno)
			return false;
	}
	*fd = (int)f;
	*epoch = (uint32_t)e;
	*ready_fd = (int)r;
	*conn = (unsigned)c;
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
				 FUSE_MAX_PAGES | FUSE_INIT_EXT | FUSE_POSIX_ACL | FUSE_DO_READDIRPLUS |
				 FUSE_READDIRPLUS_AUTO,
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

/* Whether the binary runs at all (an upgrade may have left it broken). */
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
 * inherited. */
static const char *source_arg(int fd, const char *path, char *buf, size_t size)
{
	struct stat now, served;

	if (stat(path, &now) == 0 && fstat(fd, &served) == 0 && now.st_dev == served.st_dev &&
	    now.st_ino == served.st_ino)
		return path;
	snprintf(buf, size, "/proc/self/fd/%d", fd);
	return buf;
}

/* The successor's command line: the daemon's own, its --takeover replaced. */
static char **successor_args(char *takeover, char *source)
{
	char **argv = calloc(again.nopts + 6, sizeof(*argv));
	int n = 0;

	if (!argv)
		return NULL;
	argv[n++] = PACKAGE;
	argv[n++] = "mount";
	argv[n++] = takeover;
	for (size_t i = 0; i < again.nopts; i++) {
		if (strcmp(again.options[i], TAKEOVER_OPT) == 0)
			i++; /* and its argument */
		else if (!is_takeover(again.options[i]))
			argv[n++] = again.options[i];
	}
	argv[n++] = source;
	argv[n++] = (char *)again.mountpoint;
	return argv;
}

/* The child: the descriptors it names stay open across the exec (the
 * source's only if it is named by descriptor); signals the unmounter
 * ignores are the successor's to handle. */
static void exec_successor(char **argv, int fuse_fd, int source_fd, int ready_fd)
{
	signal(SIGHUP, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	if (fcntl(fuse_fd, F_SETFD, 0) == 0 && fcntl(ready_fd, F_SETFD, 0) == 0 &&
	    (source_fd < 0 || fcntl(source_fd, F_SETFD, 0) == 0))
		execve(again.exe, argv, environ);
	ck_log(LOG_ERR, "restart: %s: %s", again.exe, strerror(errno));
	_exit(127);
}

/* Waits for the successor's word that it serves; if it ends first, or
 * hangs (nobody serves the mount meanwhile), says how. */
static int await_successor(pid_t pid, int ready_fd, char *why, size_t size)
{
	struct pollfd pfd = {.fd = ready_fd, .events = POLLIN};
	ssize_t n = -1;
	int status, ready;
	char c;

	while ((ready = poll(&pfd, 1, SUCCESSOR_TIMEOUT_MS)) < 0 && errno == EINTR)
		;
	if (ready == 1)
		while ((n = read(ready_fd, &c, 1)) < 0 && errno == EINTR)
			;
	close(ready_fd);
	if (n == 1)
		return 0;
	if (ready == 0)
		kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (ready == 0)
		snprintf(why, size, "the new daemon did not answer within %d s", SUCCESSOR_TIMEOUT_MS / 1000);
	else if (WIFSIGNALED(status))
		snprintf(why, size, "the new daemon was killed by signal %d", WTERMSIG(status));
	else
		snprintf(why, size, "the new daemon exited with status %d", WEXITSTATUS(status));
	return -1;
}

int ck_restart_spawn(int fuse_fd, int source_fd, unsigned conn, char *why, size_t size)
{
	char takeover[112], source_fd_path[64];
	const char *source;
	char **argv = NULL;
	int ready[2];
	pid_t pid;

	if (!*again.exe || again.next_epoch == UINT32_MAX)
		return snprintf(why, size, "%s", !*again.exe ? "the binary's path is unknown" :
				"too many restarts"), -1;
	if (!runs(again.exe))
		return snprintf(why, size, "the binary does not run"), -1;
	if (pipe2(ready, O_CLOEXEC))
		return snprintf(why, size, "pipe: %s", strerror(errno)), -1;
	snprintf(takeover, sizeof(takeover), TAKEOVER_OPT "=%d:%u:%d:%u", fuse_fd, again.next_epoch++,
		 ready[1], conn);
	source = source_arg(source_fd, again.source, source_fd_path, sizeof(source_fd_path));
	argv = successor_args(takeover, (char *)source);
	ck_log(LOG_NOTICE, "restarting: %s takes over %s", again.exe, again.mountpoint);
	pid = argv ? fork() : -1;
	if (pid == 0)
		exec_successor(argv, fuse_fd, source == again.source ? -1 : source_fd, ready[1]);
	if (pid < 0)
		snprintf(why, size, "fork: %s", strerror(argv ? errno : ENOMEM));
	free(argv);
	close(ready[1]);
	if (pid < 0) {
		close(ready[0]);
		return -1;
	}
	return await_successor(pid, ready[0], why, size);
}

/* ---- ckptfs restart MOUNTPOINT */

/* The FUSE connection number (the mount's minor device number) of the
 * topmost mount at path, if that mount is a ckptfs one; -1 otherwise. */
static long ckptfs_connection(const char *path)
{
	struct ck_mountinfo mi;
	unsigned major, minor;

	if (!ck_mountinfo_find(path, &mi) || strcmp(mi.fstype, "fuse." PACKAGE) != 0 ||
	    sscanf(mi.dev, "%u:%u", &major, &minor) != 2 || major != 0)
		return -1;
	return (long)minor;
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
 * the process is gone or is not a ckptfs daemon: "ckptfs mount ...", or
 * "ckptfs SOURCE MOUNTPOINT ..." as mount.fuse3 runs it (fstab). */
static long daemon_epoch(pid_t pid)
{
	char args[8192];
	size_t n = read_cmdline(pid, args, sizeof(args));
	char *cmd = args + strlen(args) + 1, *base = strrchr(args, '/');
	long epoch = 0;

	if (!n || cmd >= args + n || strcmp(base ? base + 1 : args, PACKAGE) != 0 ||
	    cmd[0] == '-')
		return -1;
	for (char *a = cmd; a < args + n; a += strlen(a) + 1) {
		int f, r;
		uint32_t e;
		unsigned c;

		if (is_takeover(a) && ck_restart_parse(a + strlen(TAKEOVER_OPT "="), &f, &e, &r, &c))
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

/* Signals the daemon, then waits until it has handed the connection over
 * and gone, and its successor serves. */
static int restart_daemon(pid_t pid, long conn, const char *mountpoint)
{
	long epoch = daemon_epoch(pid);
	struct statvfs sv;
	pid_t successor;

	if (epoch < 0 || kill(pid, SIGHUP)) {
		fprintf(stderr, PACKAGE ": %s: the daemon (pid %d) went away\n", mountpoint, (int)pid);
		return 1;
	}
	for (int waited = 0; alive(pid) && waited < RESTART_TIMEOUT_MS; waited += 20)
		sleep_ms(20);
	if (alive(pid)) {
		fprintf(stderr, PACKAGE ": %s: the daemon did not restart within %d s (see its log)\n",
			mountpoint, RESTART_TIMEOUT_MS / 1000);
		return 1;
	}
	successor = find_daemon(conn, mountpoint);
	if (successor <= 0 || daemon_epoch(successor) <= epoch) {
		fprintf(stderr, PACKAGE ": %s: the daemon exited while restarting\n", mountpoint);
		return 1;
	}
	/* answered by the successor once it serves */
	if (statvfs(mountpoint, &sv)) {
		fprintf(stderr, PACKAGE ": %s: after the restart: %s\n", mountpoint, strerror(errno));
		return 1;
	}
	return 0;
}

int cmd_restart(int argc, char **argv)
{
	char real[PATH_MAX];
	const char *mountpoint;
	long conn;
	pid_t pid;

	if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))
		cli_help_exit("restart");
	if (argc != 2 || argv[1][0] == '-')
		cli_usage_error("restart", "expected MOUNTPOINT");
	mountpoint = argv[1];
	if (!realpath(mountpoint, real))
		cli_fail(mountpoint, strerror(errno));
	if ((conn = ckptfs_connection(real)) < 0)
		cli_fail(mountpoint, "not a ckptfs mount");
	pid = find_daemon(conn, real);
	if (pid > 0)
		return restart_daemon(pid, conn, real);
	cli_fail(mountpoint, pid < 0 ? "more than one ckptfs process serves it" :
		 "cannot find the daemon that serves it; send it SIGHUP");
}
