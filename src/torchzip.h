/* The torch.save zip archive: parse the central directory and data.pkl,
 * and lay out a view whose data.pkl is rewritten while every other record
 * is served from the source at a shift that keeps its page alignment. */
#ifndef CKPTFS_TORCHZIP_H
#define CKPTFS_TORCHZIP_H

#include "describe.h"
#include "layout.h"
#include "source.h"
#include "view.h"

/* Limits on what a zip may claim before we allocate for it. */
#define CK_ZIP_MAX_CD_BYTES ((uint64_t)256 << 20)
#define CK_ZIP_MAX_PICKLE_BYTES ((uint64_t)1 << 30)

enum ck_zip_kind {
	CK_ZIP_NOT_TORCH = 0,   /* a zip, but no <dir>/data.pkl + <dir>/version: pass through */
	CK_ZIP_TORCHSCRIPT,     /* has constants.pkl: pass through, never parsed */
	CK_ZIP_CHECKPOINT,
};

/* Builds the view layout. Returns 0 and sets *out (NULL when the view is
 * the source unchanged) and *kind, or -1 with e set. */
int ck_torchzip_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
		       enum ck_zip_kind *kind, struct ck_err *e);

/* Reads the archive as ck_torchzip_layout does and, for a checkpoint,
 * reports data.pkl's state dicts to fn (ck_pickle_describe). */
int ck_torchzip_describe(const struct ck_src *src, enum ck_zip_kind *kind, int *protocol, ck_found_fn fn,
			 void *ctx, struct ck_err *e);

#endif
