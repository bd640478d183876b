/* The daemon's confinement once its mount is up: a parser bug in a hostile
 * checkpoint must not become code execution as root. It keeps only the
 * capabilities serving needs (and, as root, leaves uid 0 where it can),
 * sets no_new_privs, and installs a seccomp
 * filter that allows the system calls of reading and serving and kills
 * the process on any of the classes that lead to more (exec, ptrace,
 * mount, modules, setuid...); any other call fails with EPERM, and the
 * kernel logs what was refused (audit, type=SECCOMP).
 *
 * Unmounting at the end needs umount2() or an exec of fusermount3, both
 * out of reach inside: a small process forked before the confinement
 * does it when the daemon asks. It also starts the successor of a restart
 * (restart.h): the exec of a binary, out of reach inside as well. */
#ifndef CKPTFS_SANDBOX_H
#define CKPTFS_SANDBOX_H

#include <stdbool.h>
#include <sys/types.h>
#include "err.h"

/* Sanitizer runtimes stop the world with ptrace from a clone()d tracer
 * (LeakSanitizer at exit) and tune themselves with prctl: built with them,
 * the filter allows those calls whatever their arguments. */
#if defined(__SANITIZE_ADDRESS__)
#define CK_SANDBOX_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CK_SANDBOX_SANITIZED 1
#endif
#endif
#ifndef CK_SANDBOX_SANITIZED
#define CK_SANDBOX_SANITIZED 0
#endif

struct ck_sandbox {
	pid_t unmounter;   /* > 0 once forked: from then on it unmounts */
	int to_unmounter;  /* a unix socket: a request a datagram, EOF "do not unmount" */
};

/* How the unmounter starts the successor of a restart (ck_restart_spawn):
 * 0 once it serves, else -1 and why. conn: what the connection was granted
 * beyond libfuse (fuseio.h). */
typedef int ck_sandbox_spawn_fn(int fuse_fd, int source_fd, unsigned conn, char *why, size_t size);

/* Forks the unmounter for mountpoint (an absolute path), then confines the
 * calling process and all its threads. Unless foreground, the unmounter
 * logs to syslog and keeps none of the caller's standard streams. On failure the process may be
 * partly confined; if sb->unmounter > 0, ck_sandbox_unmount still works. */
int ck_sandbox_enter(struct ck_sandbox *sb, const char *mountpoint, bool foreground,
		     ck_sandbox_spawn_fn *spawn, struct ck_err *e);

/* The end of a daemon, before fuse_session_unmount() (whose umount2 the
 * filter turns into a no-op): has the unmounter detach the mount, unless
 * fuse_fd (the session's) says the connection is gone (unmounted from
 * outside: the path may hold another mount by now), and waits for it.
 * taken_over: the mount point of a connection this daemon took over, which
 * libfuse cannot unmount; without an unmounter (-o nosandbox) this process
 * detaches it. Nothing to do otherwise. */
void ck_sandbox_unmount(struct ck_sandbox *sb, int fuse_fd, const char *taken_over);

/* The end without unmounting: the mount was handed to a successor, or this
 * daemon is a successor that failed before it served. */
void ck_sandbox_leave(struct ck_sandbox *sb);

/* A restart (restart.h): sends the /dev/fuse and source root descriptors
 * and conn (as for ck_sandbox_spawn_fn) to the unmounter, which starts the
 * successor; 0 once that serves, else -1 and why. Only with an unmounter. */
int ck_sandbox_restart(struct ck_sandbox *sb, int fuse_fd, int source_fd, unsigned conn, char *why,
		       size_t size);

/* The confinement alone (capabilities, no_new_privs, the filter), applied
 * to the calling process and its threads; for ck_sandbox_enter and tests.
 * as_nobody: a root caller also leaves uid 0 for 65534 (effective; the
 * real and saved ids stay 0), so root's own files are not its own any
 * more; it keeps reading all with CAP_DAC_READ_SEARCH. */
int ck_sandbox_confine(bool as_nobody, struct ck_err *e);

#endif
