/* The daemon's confinement (sandbox.h), each check in a child process that
 * confines itself and then tries one thing: what serving needs works, the
 * rest fails with EPERM, and the dangerous classes kill the process. */
#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "sandbox.h"
#include "tap.h"

static char tmpdir[] = "/tmp/ckptfs-sandbox-XXXXXX";

/* Runs fn in a child, confined first if asked; its wait status. */
static int in_child(int (*fn)(void), int confine)
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		struct ck_err e;

		if (confine && ck_sandbox_confine(true, &e)) {
			fprintf(stderr, "# %s\n", e.msg);
			_exit(99);
		}
		_exit(fn());
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return status;
}

static int exited(int status, int code)
{
	return WIFEXITED(status) && WEXITSTATUS(status) == code;
}

static int killed_by_sigsys(int status)
{
	return WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS;
}

static int eperm(long rc)
{
	return rc < 0 && errno == EPERM ? 0 : 1;
}

static int status_says_confined(void)
{
	char buf[8192];
	int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);

	if (n <= 0)
		return 1;
	buf[n] = '\0';
	close(fd);
	return strstr(buf, "\nSeccomp:\t2\n") && strstr(buf, "\nNoNewPrivs:\t1\n") ? 0 : 2;
}

static int reads_a_file(void)
{
	char c;
	int fd = open("/etc/passwd", O_RDONLY | O_CLOEXEC);

	return fd >= 0 && pread(fd, &c, 1, 0) == 1 && close(fd) == 0 ? 0 : 1;
}

/* Root's own files: readable (CAP_DAC_READ_SEARCH), no longer writable. */
static int reads_a_private_file(void)
{
	char path[64], c;
	int fd;

	snprintf(path, sizeof(path), "%s/private", tmpdir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd >= 0 && read(fd, &c, 1) == 1 ? 0 : 1;
}

static int writes_a_root_file(void)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "%s/private", tmpdir);
	fd = open(path, O_RDWR | O_CLOEXEC);
	return fd < 0 && errno == EACCES ? 0 : 1;
}

static int ids(void)
{
	uid_t r, e, s;

	return getresuid(&r, &e, &s) == 0 && r == 0 && e == 65534 && s == 0 && getegid() == 65534 ? 0 : 1;
}

static int lists_a_directory(void)
{
	DIR *d = opendir("/etc");

	return d && readdir(d) && closedir(d) == 0 ? 0 : 1;
}

/* Flags out of the filter's reach: "not implemented", so callers fall back. */
static int unreachable_flags(void)
{
	struct {
		unsigned long long flags, mode, resolve;
	} how = {O_PATH, 0, 0};

	errno = 0;
	return syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof(how)) < 0 && errno == ENOSYS &&
	       syscall(SYS_clone3, NULL, 0) < 0 && errno == ENOSYS ? 0 : 1;
}

static int creates_a_file(void)
{
	char path[64];

	snprintf(path, sizeof(path), "%s/new", tmpdir);
	return eperm(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
}

static int opens_for_writing(void)
{
	return eperm(open("/dev/null", O_WRONLY | O_CLOEXEC));
}

static int unlinks(void)
{
	return eperm(rmdir(tmpdir));
}

static int inet_socket(void)
{
	return eperm(socket(AF_INET, SOCK_STREAM, 0));
}

static int unix_socket(void)
{
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	return fd >= 0 && close(fd) == 0 ? 0 : 1;
}

static int maps_code(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? eperm(-1) : 1;
}

static void *thread_main(void *arg)
{
	return arg;
}

static int starts_a_thread(void)
{
	pthread_t t;
	void *ret = NULL;

	return pthread_create(&t, NULL, thread_main, (void *)7) == 0 && pthread_join(t, &ret) == 0 &&
	       ret == (void *)7 ? 0 : 1;
}

static int forks(void)
{
	pid_t pid = fork();

	if (pid == 0)
		_exit(0);
	return eperm(pid);
}

static int executes(void)
{
	char *argv[] = {"true", NULL}, *envp[] = {NULL};

	execve("/bin/true", argv, envp);
	return 3;
}

static int traces(void)
{
	ptrace(PTRACE_TRACEME, 0, NULL, NULL);
	return 3;
}

/* umount2 does nothing and says it did (the unmounter does it) */
static int unmounts(void)
{
	return umount2(tmpdir, MNT_DETACH) == 0 ? 0 : 1;
}

static int mounts(void)
{
	mount("none", tmpdir, "tmpfs", 0, NULL);
	return 3;
}

static int sets_uid(void)
{
	setuid(65534);
	return 3;
}

/* Only the capabilities kept for serving remain (as root). */
static int keeps_few_capabilities(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2];
	unsigned long long want = 1ULL << CAP_DAC_READ_SEARCH | 1ULL << CAP_SYS_RESOURCE | 1ULL << CAP_LEASE;
	unsigned long long eff, perm;

	if (syscall(SYS_capget, &h, d))
		return 1;
	eff = d[0].effective | (unsigned long long)d[1].effective << 32;
	perm = d[0].permitted | (unsigned long long)d[1].permitted << 32;
	return (eff & ~want) == 0 && (perm & ~want) == 0 && d[0].inheritable == 0 ? 0 : 2;
}

int main(void)
{
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	/* the checks below could fail: unconfined, these work */
	ok(exited(in_child(executes, 0), 0), "unconfined: execve works (control)");
	ok(exited(in_child(creates_a_file, 0), 1), "unconfined: a file can be created (control)");
	ok(exited(in_child(status_says_confined, 0), 2), "unconfined: /proc says so (control)");

	ok(exited(in_child(status_says_confined, 1), 0), "/proc/self/status: Seccomp 2, NoNewPrivs 1");
	ok(exited(in_child(reads_a_file, 1), 0), "reading a file works");
	ok(exited(in_child(lists_a_directory, 1), 0), "listing a directory works");
	ok(exited(in_child(starts_a_thread, 1), 0), "threads start");
	ok(exited(in_child(unix_socket, 1), 0), "unix sockets work");
	ok(exited(in_child(unreachable_flags, 1), 0), "openat2, clone3: ENOSYS");
	ok(exited(in_child(creates_a_file, 1), 0), "creating a file: EPERM");
	ok(exited(in_child(opens_for_writing, 1), 0), "opening for writing: EPERM");
	ok(exited(in_child(unlinks, 1), 0), "removing: EPERM");
	ok(exited(in_child(inet_socket, 1), 0), "an inet socket: EPERM");
	ok(exited(in_child(maps_code, 1), 0), "executable memory: EPERM");
	if (!CK_SANDBOX_SANITIZED)
		ok(exited(in_child(forks, 1), 0), "fork: EPERM");
	ok(killed_by_sigsys(in_child(executes, 1)), "execve: killed (SIGSYS)");
	ok(killed_by_sigsys(in_child(mounts, 1)), "mount: killed (SIGSYS)");
	ok(exited(in_child(unmounts, 0), 1), "unconfined: umount2 of a directory fails (control)");
	ok(exited(in_child(unmounts, 1), 0), "umount2: a no-op that succeeds");
	ok(killed_by_sigsys(in_child(sets_uid, 1)), "setuid: killed (SIGSYS)");
	if (!CK_SANDBOX_SANITIZED)
		ok(killed_by_sigsys(in_child(traces, 1)), "ptrace: killed (SIGSYS)");
	if (geteuid() == 0) {
		char path[64];
		int fd;

		snprintf(path, sizeof(path), "%s/private", tmpdir);
		fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
		ok(fd >= 0 && write(fd, "x", 1) == 1 && close(fd) == 0, "a root file, mode 0600");
		ok(exited(in_child(writes_a_root_file, 0), 1), "unconfined: root may write it (control)");
		ok(exited(in_child(keeps_few_capabilities, 1), 0), "capabilities: only those serving needs");
		ok(exited(in_child(ids, 1), 0), "effective uid and gid 65534, real and saved uid 0");
		ok(exited(in_child(reads_a_private_file, 1), 0), "a root file, mode 0600, is read");
		ok(exited(in_child(writes_a_root_file, 1), 0), "... but not opened for writing: EACCES");
		unlink(path);
	}
	rmdir(tmpdir);
	return tap_done();
}
