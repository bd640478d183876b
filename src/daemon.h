/* Start-up of the mount daemon. In the background the command forks before
 * mounting: the child mounts and serves, the parent waits until the child
 * says the file system answers (exit 0) or until the child is gone (exit
 * with its status; the child told why on the stderr they share). Readiness
 * is also told to systemd (sd_notify READY=1) for Type=notify units. */
#ifndef CKPTFS_DAEMON_H
#define CKPTFS_DAEMON_H

#include <stdbool.h>

/* background: forks; only the child returns. Either way the process that
 * returns is the daemon. */
void ck_daemon_start(bool background);

/* Instead of ck_daemon_start in a successor of a restart (restart.h): the
 * readiness is reported on ready_fd, to the process that started it. */
void ck_daemon_take_over(int ready_fd, bool background);

/* Starts a thread that asks mountpoint for statfs (an absolute path, mounted) and,
 * once the file system answers, reports ready; in the background it then
 * leaves the terminal (stdio to /dev/null, log to syslog). 0 or an errno. */
int ck_daemon_watch(const char *mountpoint);

/* Whether the file system answered; a daemon that ends before that failed. */
bool ck_daemon_was_ready(void);

/* The loop has ended, the unmount follows: never ready from now on; tells
 * systemd the daemon is stopping. */
void ck_daemon_stopping(void);

#endif
