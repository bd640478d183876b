#include <config.h>
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include "cli.h"
#include "log.h"

/* One daemon per process. */
static int report_fd = -1; /* the child's end of the pipe to the waiting parent */
static bool background_mode, successor;
static atomic_bool ready, stopping;
static char watched[PATH_MAX];

/* The parent: exits 0 once the child reports ready, else with its status. */
static void wait_for_child(pid_t pid, int fd) __attribute__((noreturn));
static void wait_for_child(pid_t pid, int fd)
{
	char c;
	ssize_t r;
	int status = 0;

	do
		r = read(fd, &c, 1);
	while (r < 0 && errno == EINTR);
	if (r == 1)
		exit(0);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(status) && WEXITSTATUS(status))
		exit(WEXITSTATUS(status));
	fprintf(stderr, PACKAGE ": the daemon ended before the file system answered\n");
	exit(EXIT_RUNTIME);
}

void ck_daemon_start(bool background)
{
	int fds[2];
	pid_t pid;

	if (!(background_mode = background))
		return;
	if (pipe2(fds, O_CLOEXEC))
		cli_fail("pipe", strerror(errno));
	pid = fork();
	if (pid < 0)
		cli_fail("fork", strerror(errno));
	if (pid > 0) {
		close(fds[1]);
		wait_for_child(pid, fds[0]);
	}
	close(fds[0]);
	report_fd = fds[1];
	setsid();
	if (chdir("/"))
		cli_fail("/", strerror(errno));
}

void ck_daemon_take_over(int ready_fd, bool background)
{
	report_fd = ready_fd;
	successor = true;
	/* stdio came from the unmounter: /dev/null in the background */
	if ((background_mode = background))
		ck_log_to_syslog();
}

/* Leaves the terminal: from now on nobody reads our stderr. */
static void detach(void)
{
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	ck_log_to_syslog();
	if (null >= 0) {
		dup2(null, STDIN_FILENO);
		dup2(null, STDOUT_FILENO);
		dup2(null, STDERR_FILENO);
		close(null);
	}
}

static void *watch(void *arg)
{
	struct statfs st;

	/* The kernel sends STATFS only after INIT and caches nothing of it, so
	 * an answer comes from the daemon (a stat may be answered from the root
	 * inode's start-up attributes). */
	if (statfs(watched, &st)) {
		/* INIT refused: libfuse ends the loop, cmd_mount unmounts, exit 1 */
		ck_log(LOG_ERR, "%s: the file system does not answer: %s", watched, strerror(errno));
		return NULL;
	}
	/* set before the unmount: an answer after it came from the directory below */
	if (atomic_load(&stopping))
		return NULL;
	atomic_store(&ready, true);
	/* a successor is a new process: systemd must know it as the main one
	 * before its predecessor, told below, exits (NotifyAccess=all) */
	if (successor) {
		sd_notifyf(0, "MAINPID=%d\nREADY=1", (int)getpid());
		sd_notify_barrier(0, 5 * 1000000ULL);
	} else {
		sd_notify(0, "READY=1");
	}
	if (report_fd >= 0) {
		(void)!write(report_fd, "R", 1);
		close(report_fd);
		report_fd = -1;
		if (background_mode && !successor)
			detach();
	}
	return NULL;
}

int ck_daemon_watch(const char *mountpoint)
{
	pthread_t t;
	int rc;

	snprintf(watched, sizeof(watched), "%s", mountpoint);
	if ((rc = pthread_create(&t, NULL, watch, NULL)))
		return rc;
	pthread_detach(t);
	return 0;
}

bool ck_daemon_was_ready(void)
{
	return atomic_load(&ready);
}

void ck_daemon_stopping(void)
{
	atomic_store(&stopping, true);
	sd_notify(0, "STOPPING=1");
}
