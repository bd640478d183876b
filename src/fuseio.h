/* The daemon's own reads and writes on /dev/fuse (libfuse's custom io), to
 * ask the kernel for what libfuse 3.14 cannot name: it speaks protocol
 * 7.38, and FUSE_DIRECT_IO_ALLOW_MMAP came with 7.39 (Linux 6.6). With it
 * a file opened for direct reads (fs.c) can still be mapped shared; without
 * it such a mapping fails with ENODEV, so the daemon reads directly only
 * where the kernel granted it. */
#ifndef CKPTFS_FUSEIO_H
#define CKPTFS_FUSEIO_H

#include <stdbool.h>

#include "fs.h" /* FUSE_USE_VERSION */

/* What the connection was granted beyond libfuse's protocol, as bits a
 * restart hands to its successor (which never sees the INIT). */
#define CK_CONN_DIRECT_MMAP 1u

/* Before the session serves, after libfuse's signal handlers: its
 * descriptor is read and written here, and SIGHUP (a restart) drains the
 * loop: no request is read any more, those read are answered, then the
 * loop ends; the rest wait in the kernel for whoever serves next.
 * inherited: what the predecessor's INIT granted (restart), else 0. */
int ck_fuseio_attach(struct fuse_session *se, unsigned inherited);

/* After the loop ended: whether a SIGHUP drained it (then the next loop
 * may serve again). */
bool ck_fuseio_drained(void);

/* The CK_CONN_* the connection has (0 before INIT). */
unsigned ck_fuseio_granted(void);

#endif
