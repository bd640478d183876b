#include <config.h>
#include "sandbox.h"

#include <dlfcn.h>
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include "log.h"

/* What the daemon's threads may do after the mount: every call the
 * serving paths make, with a reason; a condition narrows a call to the
 * argument values those paths use ((arg & mask) == value). */
enum verdict { ALLOW, KILL, NOSYS, DONE };
struct rule {
	const char *name;
	enum verdict verdict;
	int arg;  /* -1: whatever the arguments */
	uint64_t mask, value;
};

#define ANY(name) {name, ALLOW, -1, 0, 0}
#define IF(name, arg, mask, value) {name, ALLOW, arg, mask, value}
#define IS(name, arg, value) {name, ALLOW, arg, UINT64_MAX, value}
#define NEVER(name) {name, KILL, -1, 0, 0}
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Opens for reading only (O_RDWR stays: libfuse clones /dev/fuse per
 * thread): no file is created, truncated or written through a new fd. */
#define OPEN_WRITES (O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | (O_TMPFILE & ~O_DIRECTORY))

static const struct rule rules[] = {
	/* reading the source: by descriptor, by /proc/self/fd, by handle */
	IF("openat", 2, OPEN_WRITES, 0), IF("open", 1, OPEN_WRITES, 0),
	ANY("openat2"), /* answered ENOSYS by the first filter (fallbacks[]) */
	ANY("read"), ANY("pread64"), ANY("readv"), ANY("preadv"), ANY("preadv2"), ANY("lseek"),
	ANY("close"), ANY("close_range"), ANY("dup"), ANY("dup2"), ANY("dup3"), ANY("fcntl"),
	ANY("fstat"), ANY("newfstatat"), ANY("stat"), ANY("lstat"), ANY("statx"),
	ANY("statfs"), ANY("fstatfs"), ANY("getdents64"), ANY("getdents"),
	ANY("readlink"), ANY("readlinkat"), ANY("access"), ANY("faccessat"), ANY("faccessat2"),
	ANY("getxattr"), ANY("lgetxattr"), ANY("fgetxattr"),
	ANY("listxattr"), ANY("llistxattr"), ANY("flistxattr"),
	ANY("name_to_handle_at"), ANY("open_by_handle_at"), ANY("fadvise64"), ANY("readahead"),
	ANY("getcwd"), ANY("fchdir"), ANY("chdir"), ANY("umask"),
	/* changes of the source: watches */
	ANY("inotify_init1"), ANY("inotify_add_watch"), ANY("inotify_rm_watch"),
	ANY("fanotify_init"), ANY("fanotify_mark"),
	/* ioctls: clone of /dev/fuse per thread, file versions, isatty() of stdio */
	IS("ioctl", 1, FUSE_DEV_IOC_CLONE), IS("ioctl", 1, FS_IOC_GETVERSION),
	IS("ioctl", 1, FS_IOC_GETFLAGS), IS("ioctl", 1, FIONREAD), IS("ioctl", 1, TCGETS),
	IS("ioctl", 1, FIOCLEX), IS("ioctl", 1, FIONCLEX),
	/* replies and notifications to /dev/fuse, zero-copy through pipes, the log on stderr */
	ANY("write"), ANY("writev"), ANY("pwrite64"), ANY("pwritev"),
	ANY("splice"), ANY("vmsplice"), ANY("tee"), ANY("pipe"), ANY("pipe2"),
	ANY("poll"), ANY("ppoll"), ANY("select"), ANY("pselect6"), ANY("eventfd2"),
	ANY("epoll_create1"), ANY("epoll_ctl"), ANY("epoll_wait"), ANY("epoll_pwait"),
	ANY("epoll_pwait2"),
	/* unix sockets only: syslog, sd_notify, handing /dev/fuse to a restarted daemon */
	IS("socket", 0, AF_UNIX), IS("socketpair", 0, AF_UNIX), ANY("connect"), ANY("bind"),
	ANY("listen"), ANY("accept"), ANY("accept4"), ANY("sendto"), ANY("sendmsg"),
	ANY("recvfrom"), ANY("recvmsg"), ANY("shutdown"), ANY("getsockopt"), ANY("setsockopt"),
	ANY("getsockname"), ANY("getpeername"),
	/* memory, never executable: no new code can be mapped */
	IF("mmap", 2, PROT_EXEC, 0), IF("mprotect", 2, PROT_EXEC, 0),
	ANY("munmap"), ANY("mremap"), ANY("madvise"), ANY("brk"), ANY("membarrier"),
	/* threads (worker threads of the FUSE loop; clone only for threads:
	 * clone3's flags are out of the filter's reach, glibc falls back) */
	IF("clone", 0, CLONE_THREAD, CLONE_THREAD), ANY("clone3"),
	ANY("futex"), ANY("set_robust_list"), ANY("get_robust_list"), ANY("rseq"),
	ANY("set_tid_address"), ANY("gettid"), ANY("getpid"), ANY("getppid"), ANY("tgkill"),
	ANY("sched_yield"), ANY("sched_getaffinity"), ANY("exit"), ANY("exit_group"),
	ANY("wait4"), ANY("restart_syscall"),
	/* the end: answered 0 by the first filter (fallbacks[]), the unmounter unmounts */
	ANY("umount2"),
	IS("prctl", 0, PR_SET_NAME), IS("prctl", 0, PR_GET_NAME),
	/* signals: SIGTERM/SIGINT/SIGHUP end the loop */
	ANY("rt_sigaction"), ANY("rt_sigprocmask"), ANY("rt_sigreturn"), ANY("sigaltstack"),
	ANY("rt_sigtimedwait"),
	/* time, randomness, identity, limits (descriptors raised to the hard limit) */
	ANY("clock_gettime"), ANY("clock_getres"), ANY("gettimeofday"), ANY("time"),
	ANY("nanosleep"), ANY("clock_nanosleep"), ANY("getrandom"), ANY("uname"), ANY("sysinfo"),
	ANY("getuid"), ANY("geteuid"), ANY("getgid"), ANY("getegid"), ANY("getgroups"),
	ANY("getresuid"), ANY("getresgid"), ANY("capget"),
	ANY("getrlimit"), ANY("setrlimit"), ANY("prlimit64"), ANY("getrusage"),

	/* Never, and a try is proof of compromise: the process is killed. */
	NEVER("execve"), NEVER("execveat"),                 /* new code */
	NEVER("ptrace"), NEVER("process_vm_readv"), NEVER("process_vm_writev"),
	NEVER("mount"), NEVER("fsopen"), NEVER("fsmount"), NEVER("fsconfig"),
	NEVER("move_mount"), NEVER("open_tree"), NEVER("pivot_root"), NEVER("chroot"),
	NEVER("unshare"), NEVER("setns"),
	NEVER("kexec_load"), NEVER("kexec_file_load"), NEVER("init_module"),
	NEVER("finit_module"), NEVER("delete_module"), NEVER("bpf"), NEVER("perf_event_open"),
	NEVER("userfaultfd"), NEVER("iopl"), NEVER("ioperm"), NEVER("reboot"),
	NEVER("setuid"), NEVER("setgid"), NEVER("setreuid"), NEVER("setregid"),
	NEVER("setresuid"), NEVER("setresgid"), NEVER("setfsuid"), NEVER("setfsgid"),
	NEVER("setgroups"), NEVER("capset"),
	NEVER("keyctl"), NEVER("add_key"), NEVER("request_key"),
};

/* The first filter, not logged: what it answers is expected. Calls whose
 * flags are out of a filter's reach (in a struct in memory) are "not
 * implemented", and their callers fall back to calls whose flags are
 * checked: glibc from clone3 (every thread) to clone, nodes.c from openat2
 * to one openat per component. umount2 "succeeds" without effect: the
 * unmounter does it, and libfuse's own unmount at the end, which also
 * frees what it holds, then finds nothing more to do. */
static const struct rule fallbacks[] = {
	{"clone3", NOSYS, -1, 0, 0},
	{"openat2", NOSYS, -1, 0, 0},
	{"umount2", DONE, -1, 0, 0},
};

/* What sanitizer runtimes need besides, whatever the arguments (see
 * CK_SANDBOX_SANITIZED); their rules above give way. */
static const char *const sanitizer_calls[] = {"ptrace", "clone", "prctl", "kill"};

static bool for_sanitizer(const char *name)
{
	for (size_t i = 0; CK_SANDBOX_SANITIZED && i < COUNT(sanitizer_calls); i++)
		if (strcmp(sanitizer_calls[i], name) == 0)
			return true;
	return false;
}

static int add_rule(scmp_filter_ctx ctx, const struct rule *r, struct ck_err *e)
{
	int nr = seccomp_syscall_resolve_name(r->name);
	static const uint32_t actions[] = {[ALLOW] = SCMP_ACT_ALLOW, [KILL] = SCMP_ACT_KILL_PROCESS,
					   [NOSYS] = SCMP_ACT_ERRNO(ENOSYS), [DONE] = SCMP_ACT_ERRNO(0)};
	uint32_t action = actions[r->verdict];
	int rc;

	if (nr == __NR_SCMP_ERROR)
		return 0; /* not a system call of this architecture */
	if (r->arg < 0)
		rc = seccomp_rule_add(ctx, action, nr, 0);
	else
		rc = seccomp_rule_add(ctx, action, nr, 1,
				      SCMP_CMP((unsigned)r->arg, SCMP_CMP_MASKED_EQ, r->mask, r->value));
	return rc ? ck_err_set(e, -rc, "seccomp rule for %s: %s", r->name, strerror(-rc)) : 0;
}

/* Loads a filter of rules over a default action; logged: the kernel logs
 * every call it does not allow. TSYNC: threads started before are covered.
 * Of two filters, the stricter answer wins: the one loaded last must allow
 * what the first answers. */
static int load(uint32_t default_action, bool logged, const struct rule *r, size_t n, struct ck_err *e)
{
	scmp_filter_ctx ctx = seccomp_init(default_action);
	size_t i;
	int rc = 0;

	if (!ctx)
		return ck_err_set(e, ENOMEM, "seccomp: %s", strerror(ENOMEM));
	if ((rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, logged)) ||
	    (rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1))) {
		seccomp_release(ctx);
		return ck_err_set(e, -rc, "seccomp attributes: %s", strerror(-rc));
	}
	for (i = 0; logged && CK_SANDBOX_SANITIZED && !rc && i < COUNT(sanitizer_calls); i++)
		rc = add_rule(ctx, &(struct rule)ANY(sanitizer_calls[i]), e);
	for (i = 0; !rc && i < n; i++)
		if (!for_sanitizer(r[i].name))
			rc = add_rule(ctx, &r[i], e);
	if (!rc && (rc = seccomp_load(ctx)))
		ck_err_set(e, -rc, "seccomp: loading the filter: %s", strerror(-rc));
	seccomp_release(ctx);
	return rc ? -1 : 0;
}

/* Anything the table does not list fails with EPERM: a call some path was
 * not known to need degrades that path, with an error, not the mount. */
static int load_filters(struct ck_err *e)
{
	return load(SCMP_ACT_ALLOW, false, fallbacks, COUNT(fallbacks), e) ||
	       load(SCMP_ACT_ERRNO(EPERM), true, rules, COUNT(rules), e) ? -1 : 0;
}

/* The capabilities serving needs; the rest leave every set, bounding and
 * ambient ones included, so not even an exec could get them back. */
static const int kept_caps[] = {
	CAP_DAC_READ_SEARCH, /* read every source file and directory, open_by_handle_at */
	CAP_SYS_RESOURCE,    /* pipes for splice beyond the per-user pipe budget */
	CAP_LEASE,           /* read leases on any user's source: a file open for writing is
				seen, a reply is spliced only while no writer can start */
	/* not CAP_SYS_ADMIN: unmounting is the unmounter's; a fanotify mark of
	 * a whole mount or file system would need it back */
};

static bool kept(int cap)
{
	for (size_t i = 0; i < COUNT(kept_caps); i++)
		if (kept_caps[i] == cap)
			return true;
	return false;
}

/* Root's files (and root group's) are no longer the daemon's own: it acts
 * as the kernel's overflow user, its real and saved ids stay root so that
 * user's processes may not signal or trace it. Set before its capabilities
 * go, and they are raised again after: the change clears the effective set. */
#define SANDBOX_UID 65534
#define SANDBOX_GID 65534

static int leave_root(struct ck_err *e)
{
	gid_t gid = SANDBOX_GID;

	if (setgroups(1, &gid) || setresgid((gid_t)-1, gid, (gid_t)-1) ||
	    setresuid((uid_t)-1, SANDBOX_UID, (uid_t)-1))
		return ck_err_set(e, errno, "leaving uid 0: %s", strerror(errno));
	return 0;
}

static int drop_capabilities(bool as_nobody, struct ck_err *e)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];
	int last = CAP_LAST_CAP;

	if (syscall(SYS_capget, &h, d))
		return ck_err_set(e, errno, "capget: %s", strerror(errno));
	/* the running kernel may know more than these headers */
	while (prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0)
		last++;
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	for (int cap = 0; cap <= last; cap++) {
		if (kept(cap))
			continue;
		/* needs CAP_SETPCAP: a daemon without it has nothing to drop here */
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) && errno != EPERM && errno != EINVAL)
			return ck_err_set(e, errno, "dropping capability %d: %s", cap, strerror(errno));
		if (cap < 64) {
			d[cap / 32].permitted &= ~(1u << (cap % 32));
			d[cap / 32].inheritable &= ~(1u << (cap % 32));
		}
	}
	if (as_nobody && geteuid() == 0 && leave_root(e))
		return -1;
	d[0].effective = d[0].permitted;
	d[1].effective = d[1].permitted;
	if (syscall(SYS_capset, &h, d))
		return ck_err_set(e, errno, "capset: %s", strerror(errno));
	return 0;
}

int ck_sandbox_confine(bool as_nobody, struct ck_err *e)
{
	/* glibc loads the unwinder when libfuse cancels its worker threads at
	 * the end: mapping its code must happen now */
	if (!dlopen("libgcc_s.so.1", RTLD_NOW))
		return ck_err_set(e, ELIBACC, "sandbox: %s", dlerror());
	if (drop_capabilities(as_nobody, e))
		return -1;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
		return ck_err_set(e, errno, "no_new_privs: %s", strerror(errno));
	return load_filters(e);
}

/* The daemon's requests to the unmounter, one datagram each. */
#define REQ_UNMOUNT 'u'
#define REQ_RESTART 'r' /* with the /dev/fuse and source root descriptors */
#define REPLY_SERVES 'R'
#define REPLY_CLOSED 'C' /* the unmounter's first word */

/* Receives a request (an op and a byte of argument) with the descriptors
 * it carries (close-on-exec); 0 at the daemon's end (EOF: "do not
 * unmount"). */
static char receive(int sock, int fds[2], unsigned char *arg)
{
	char buf[CMSG_SPACE(2 * sizeof(int))], req[2] = {0};
	struct iovec iov = {.iov_base = req, .iov_len = sizeof(req)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf,
			     .msg_controllen = sizeof(buf)};
	struct cmsghdr *c;
	ssize_t n;

	fds[0] = fds[1] = -1;
	while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
		;
	if (n < 1)
		return 0;
	c = CMSG_FIRSTHDR(&msg);
	if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
	    c->cmsg_len == CMSG_LEN(2 * sizeof(int)))
		memcpy(fds, CMSG_DATA(c), 2 * sizeof(int));
	*arg = n == 2 ? (unsigned char)req[1] : 0;
	return req[0];
}

extern char **environ;

/* Detaches the mount lazily, as libfuse does (a reader may hold a file
 * open): umount2 as root, else fusermount3. Unconfined only. */
static void detach(const char *mountpoint)
{
	char *argv[] = {"fusermount3", "-u", "-q", "-z", "--", (char *)mountpoint, NULL};
	pid_t pid;
	int status, err;

	if (geteuid() == 0) {
		if (umount2(mountpoint, MNT_DETACH | UMOUNT_NOFOLLOW) && errno != EINVAL)
			ck_log(LOG_ERR, "%s: unmounting: %s", mountpoint, strerror(errno));
		return;
	}
	if ((err = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ)))
		ck_log(LOG_ERR, "fusermount3: %s", strerror(err));
	else
		while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
			;
}

/* Starts the successor; replies 'R' once it serves, else why not. */
static void restart(int sock, const int fds[2], unsigned conn, ck_sandbox_spawn_fn *spawn)
{
	char reply[256] = {'!'};

	if (fds[0] < 0 || fds[1] < 0)
		snprintf(reply + 1, sizeof(reply) - 1, "no descriptors came with the request");
	else if (spawn(fds[0], fds[1], conn, reply + 1, sizeof(reply) - 1) == 0)
		reply[0] = REPLY_SERVES;
	for (int i = 0; i < 2; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	(void)!send(sock, reply, reply[0] == REPLY_SERVES ? 1 : 1 + strlen(reply + 1), MSG_NOSIGNAL);
}

/* The unmounter: waits, unconfined, for the daemon's word; it also starts
 * the successor of a restart (restart.h), which a confined daemon cannot.
 * The mount's /dev/fuse descriptor must not stay open here: a daemon that
 * dies would leave a mount that hangs instead of failing. Nor may the
 * caller's stdout or stderr: whoever started a background mount reads them
 * to the end. */
static void unmounter(int from_daemon, const char *mountpoint, bool foreground,
		      ck_sandbox_spawn_fn *spawn)
{
	int null = open("/dev/null", O_RDWR), fds[2];
	unsigned char conn;
	char op;

	prctl(PR_SET_NAME, PACKAGE "-umount", 0, 0, 0);
	signal(SIGINT, SIG_IGN); /* ^C reaches the whole process group */
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	if (null < 0 || dup2(null, STDIN_FILENO) < 0 || dup2(null, STDOUT_FILENO) < 0)
		_exit(1);
	if (!foreground) {
		ck_log_to_syslog();
		dup2(null, STDERR_FILENO);
	}
	/* not for a successor it starts */
	if (dup2(from_daemon, STDERR_FILENO + 1) < 0 || fcntl(STDERR_FILENO + 1, F_SETFD, FD_CLOEXEC))
		_exit(1);
	close_range(STDERR_FILENO + 2, ~0U, 0);
	/* the /dev/fuse descriptor is closed here: the daemon may go on */
	if (send(STDERR_FILENO + 1, (char[]){REPLY_CLOSED}, 1, MSG_NOSIGNAL) != 1)
		_exit(1);
	while ((op = receive(STDERR_FILENO + 1, fds, &conn)) == REQ_RESTART)
		restart(STDERR_FILENO + 1, fds, conn, spawn);
	if (op == REQ_UNMOUNT)
		detach(mountpoint);
	_exit(0);
}

/* libfuse opens /dev/fuse again for each worker thread (clone_fd); where
 * it is not open to all (Debian's is, mode 0666; some containers keep it
 * 0600), the daemon must stay uid 0 to do so. */
static bool fuse_open_to_all(void)
{
	struct stat st;

	if (stat("/dev/fuse", &st) == 0 && (st.st_mode & 0006) == 0006)
		return true;
	ck_log(LOG_NOTICE, "/dev/fuse is not open to all: the daemon stays uid 0 (capabilities dropped)");
	return false;
}

int ck_sandbox_enter(struct ck_sandbox *sb, const char *mountpoint, bool foreground,
		     ck_sandbox_spawn_fn *spawn, struct ck_err *e)
{
	char reply;
	ssize_t n;
	int p[2];

	*sb = (struct ck_sandbox){.unmounter = -1, .to_unmounter = -1};
	/* no unmounter yet: the caller unmounts itself if this fails */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p))
		return ck_err_set(e, errno, "sandbox: socketpair: %s", strerror(errno));
	sb->unmounter = fork();
	if (sb->unmounter < 0) {
		close(p[0]);
		close(p[1]);
		return ck_err_set(e, errno, "sandbox: fork: %s", strerror(errno));
	}
	if (sb->unmounter == 0)
		unmounter(p[0], mountpoint, foreground, spawn);
	close(p[0]);
	sb->to_unmounter = p[1];
	/* Until the unmounter closed its copy of the /dev/fuse descriptor it
	 * looks like a second daemon of the mount (ckptfs restart). */
	while ((n = recv(p[1], &reply, 1, 0)) < 0 && errno == EINTR)
		;
	if (n != 1 || reply != REPLY_CLOSED)
		return ck_err_set(e, ECHILD, "sandbox: the unmounter did not start");
	/* from here on (failure included: partly confined) the unmounter unmounts */
	return ck_sandbox_confine(fuse_open_to_all(), e);
}

void ck_sandbox_leave(struct ck_sandbox *sb)
{
	if (sb->unmounter <= 0)
		return;
	close(sb->to_unmounter);
	while (waitpid(sb->unmounter, NULL, 0) < 0 && errno == EINTR)
		;
	sb->unmounter = -1;
}

void ck_sandbox_unmount(struct ck_sandbox *sb, int fuse_fd, const char *taken_over)
{
	struct pollfd pfd = {.fd = fuse_fd};

	if (sb->unmounter <= 0 && !taken_over)
		return;
	/* POLLERR: unmounted or aborted from outside already */
	if (poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLERR))
		ck_sandbox_leave(sb);
	else if (sb->unmounter <= 0)
		detach(taken_over);
	else {
		while (send(sb->to_unmounter, (char[]){REQ_UNMOUNT}, 1, MSG_NOSIGNAL) < 0 && errno == EINTR)
			;
		ck_sandbox_leave(sb);
	}
}

int ck_sandbox_restart(struct ck_sandbox *sb, int fuse_fd, int source_fd, unsigned conn, char *why,
		       size_t size)
{
	char buf[CMSG_SPACE(2 * sizeof(int))] = {0}, reply[256], req[2] = {REQ_RESTART, (char)conn};
	struct iovec iov = {.iov_base = req, .iov_len = sizeof(req)};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = buf,
			     .msg_controllen = sizeof(buf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	ssize_t n;

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(2 * sizeof(int));
	memcpy(CMSG_DATA(c), (int[]){fuse_fd, source_fd}, 2 * sizeof(int));
	while ((n = sendmsg(sb->to_unmounter, &msg, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	if (n == sizeof(req))
		while ((n = recv(sb->to_unmounter, reply, sizeof(reply) - 1, 0)) < 0 && errno == EINTR)
			;
	if (n <= 0)
		return snprintf(why, size, "the unmounter is gone"), -1;
	reply[n] = '\0';
	if (reply[0] == REPLY_SERVES)
		return 0;
	snprintf(why, size, "%s", reply + 1);
	return -1;
}
