/* Writing a view without FUSE (ckptfs convert, cat): the layout the daemon
 * serves, its source ranges copied by copy_file_range where the kernel can
 * (a reflink on file systems that share extents), else read and written. */
#ifndef CKPTFS_EXPORT_H
#define CKPTFS_EXPORT_H

#include <stdint.h>
#include "err.h"
#include "layout.h"
#include "source.h"

/* Told after each piece written: bytes done of total. */
typedef void (*ck_progress_fn)(void *ctx, uint64_t done, uint64_t total);

/* Writes the view (l; NULL: the source unchanged) of src to out at its
 * current position: a file or a pipe. 0, or -1 with e set. */
int ck_export(const struct ck_layout *l, const struct ck_src *src, int out, ck_progress_fn progress, void *ctx,
	      struct ck_err *e);

#endif
