/* The FUSE front end: the mount root holds one directory per view, each
 * mirroring the source tree read-only, regular files served through their
 * built view (cache.h). It knows nothing of checkpoint formats. */
#ifndef CKPTFS_FS_H
#define CKPTFS_FS_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "err.h"
#include "view.h"

struct ck_fs;

/* Serves the tree beneath root_fd (an O_PATH descriptor of the source
 * directory; owned by the result on success) through each of the views
 * (kept by reference: they must outlive the result). cache_bytes bounds
 * all the memory of views: built, kept and being built. */
struct ck_fs *ck_fs_new(int root_fd, const struct ck_view *const *views, size_t nviews, size_t cache_bytes,
		       struct ck_err *e);
void ck_fs_free(struct ck_fs *fs);

/* Every file opened from now on is read with direct I/O: no page cache of
 * the mount, each read reaches the daemon, which splices the source's pages
 * into the reader's buffer. One copy instead of two for a reader that has
 * its own cache or sends the bytes on (an NFS server); off by default. */
void ck_fs_set_direct_io(struct ck_fs *fs, bool on);

/* A path of the source directory (as given, relative to the working
 * directory, or its realpath): symlinks whose absolute target lies beneath
 * it are shown relative, inside the view. Up to two; a path with ".." is
 * ignored (lexically it may name another place). */
int ck_fs_add_source_path(struct ck_fs *fs, const char *path, struct ck_err *e);

/* Before serving: this daemon takes over a FUSE connection another one
 * served (ckptfs restart). Node ids the kernel got from it are found again
 * in the source tree, handles it gave out are opened again by node id;
 * epoch must exceed the predecessor's (whose first is 0). */
int ck_fs_take_over(struct ck_fs *fs, uint32_t epoch);

/* Once mounted at mountpoint (an absolute, resolved path): learns the
 * mount's device from /proc/self/mountinfo (asking the mount itself would
 * wait on this daemon), so that the mount is never entered as part of its
 * own source. */
void ck_fs_note_mount(struct ck_fs *fs, const char *mountpoint);

/* Pages a read request holds at most: libfuse 3.14 splices a reply only if
 * its per-thread pipe holds it with the header and a page per segment, and
 * without CAP_SYS_RESOURCE a pipe grows only to pipe-max-size (1 MiB): a
 * 256-page (1 MiB) request then falls back to copying, so 248. With it,
 * 256, the kernel's most: a 1 MiB read is one request, not two. */
unsigned ck_fs_read_pages(void);

/* The read-ahead the daemon gives its mount (root): four requests. */
#define CK_READ_AHEAD_KB (4 * ck_fs_read_pages() * 4)

/* The operations; their userdata is the struct ck_fs. */
extern const struct fuse_lowlevel_ops ck_fs_ops;

#endif
