/* Restarting a daemon without unmounting: the FUSE connection (the
 * /dev/fuse descriptor) outlives the daemon's code. On SIGHUP the daemon
 * finishes the requests it has, then execs the ckptfs binary again (an
 * upgraded one if it was replaced) with the descriptor kept open and
 * "--takeover=FD:EPOCH"; the new code asks nothing of the kernel, which
 * never learns that anything changed: an NFS server exporting the mount,
 * and every process with a file open on it, go on after a pause.
 * `ckptfs restart MOUNTPOINT` finds the daemon, signals it and waits until
 * its successor serves. */
#ifndef CKPTFS_RESTART_H
#define CKPTFS_RESTART_H

#include <stdbool.h>
#include <stdint.h>
#include "fs.h"

/* The path of the running binary, taken at start (before an upgrade can
 * replace the file). */
void ck_restart_remember_exe(void);

/* "FD:EPOCH" of --takeover; false if malformed. */
bool ck_restart_parse(const char *spec, int *fd, uint32_t *epoch);

/* The successor's first step: the kernel answered the predecessor's INIT
 * long ago, so libfuse is given one as the kernel would have sent it. */
void ck_restart_init(struct fuse_session *se);

/* Execs the binary again to serve se's connection: options are the nopts
 * mount options the daemon was started with, source_fd the source root it
 * serves, found at path source when mounted; paths absolute. Returns only
 * if that failed (logged); the caller serves on. */
void ck_restart_exec(struct fuse_session *se, uint32_t epoch, char *const *options, size_t nopts,
		     int source_fd, const char *source, const char *mountpoint);

/* A successor serves a mount libfuse does not know the mount point of:
 * it unmounts it (lazily) when it exits, also when it fails to start, so
 * that no dead mount is left behind ("Transport endpoint is not connected"). */
void ck_restart_unmount_at_exit(const char *mountpoint);

/* `ckptfs restart MOUNTPOINT`: exit status. */
int ck_restart_command(const char *mountpoint);

#endif
