/* Format detection by content (never by name) and the dispatch from a
 * source file to the format reader that lays out its view. */
#ifndef CKPTFS_FORMAT_H
#define CKPTFS_FORMAT_H

#include "describe.h"
#include "layout.h"
#include "source.h"
#include "view.h"

enum ck_format {
	CK_FORMAT_OTHER = 0,    /* not a checkpoint: passes through */
	CK_FORMAT_TORCHZIP,
	CK_FORMAT_TORCHSCRIPT,  /* passes through, never parsed */
	CK_FORMAT_LEGACY,       /* torch before 1.6 */
	CK_FORMAT_SAFETENSORS,
	CK_FORMAT_SHARDINDEX,   /* index of a sharded checkpoint (JSON weight_map) */
};

const char *ck_format_name(enum ck_format f);

/* Lays out the view of src. Returns 0 with *out (NULL: serve the source
 * unchanged) and *fmt, or -1 with e set (the file cannot be served). */
int ck_view_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
		   enum ck_format *fmt, struct ck_err *e);

/* Detects the format as ck_view_layout does and reports the state dicts
 * its reader finds to fn. *protocol: the pickle protocol, -1 when the
 * format has no pickle (safetensors, other). */
int ck_format_describe(const struct ck_src *src, enum ck_format *fmt, int *protocol, ck_found_fn fn, void *ctx,
		       struct ck_err *e);

#endif
