/* Restarting a daemon without unmounting: the FUSE connection (the
 * /dev/fuse descriptor) outlives the daemon's code. On SIGHUP the daemon
 * finishes the requests it has and hands the descriptor to a new process
 * running the ckptfs binary again (an upgraded one if it was replaced) with
 * "--takeover=FD:EPOCH:READY_FD:CONN" (CONN: what the INIT granted beyond
 * libfuse, fuseio.h; absent from an older daemon, which asked for none of
 * it); the new code asks nothing of the kernel,
 * which never learns that anything changed: an NFS server exporting the
 * mount, and every process with a file open on it, go on after a pause.
 *
 * A confined daemon cannot exec (sandbox.h): its unmounter, unconfined,
 * starts the successor from the descriptors the daemon sends it. The
 * successor writes a byte to READY_FD once it serves; only then does the
 * old daemon go, without unmounting. If the successor fails before that,
 * the old daemon serves on. The successor is a new process: it tells
 * systemd MAINPID= (sd_notify) before the old one exits.
 * `ckptfs restart MOUNTPOINT` finds the daemon, signals it and waits until
 * its successor serves. */
#ifndef CKPTFS_RESTART_H
#define CKPTFS_RESTART_H

#include <stdbool.h>
#include <stdint.h>
#include "fs.h"

/* What a restart runs again: the daemon's epoch (0 for a fresh mount), the
 * nopts options it was started with, its source and mount point (absolute;
 * the strings must live on). Taken at start: the path of the binary is
 * read before an upgrade can replace the file. */
void ck_restart_prepare(uint32_t epoch, char *const *options, size_t nopts, const char *source,
			const char *mountpoint);

/* "FD:EPOCH:READY_FD[:CONN]" of --takeover; false if malformed. */
bool ck_restart_parse(const char *spec, int *fd, uint32_t *epoch, int *ready_fd, unsigned *conn);

/* The successor's first step: the kernel answered the predecessor's INIT
 * long ago, so libfuse is given one as the kernel would have sent it. */
void ck_restart_init(struct fuse_session *se);

/* Starts the successor (an unconfined process only: it forks and execs) on
 * the mount's /dev/fuse descriptor, the served source root and what the
 * connection was granted (conn); 0 once it serves, else -1 and why (the
 * binary does not run, it exited, ...). */
int ck_restart_spawn(int fuse_fd, int source_fd, unsigned conn, char *why, size_t size);

#endif
