/* The torch format before 1.6 (_use_new_zipfile_serialization=False): a run
 * of pickles (magic, protocol version, sys_info, the object, storage keys)
 * then raw storages. Only the object pickle changes; everything after it is
 * served from the source at a shifted offset, which the reader finds by
 * reading on, never by position. */
#ifndef CKPTFS_LEGACY_H
#define CKPTFS_LEGACY_H

#include <stdbool.h>
#include "describe.h"
#include "layout.h"
#include "source.h"
#include "view.h"

/* Whether the first n bytes open a legacy checkpoint (24 bytes suffice). */
bool ck_legacy_detect(const uint8_t *head, size_t n);

/* Builds the view layout (*out NULL: the source unchanged), or -1 with e set. */
int ck_legacy_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out, struct ck_err *e);

/* Reports the object pickle's state dicts to fn (ck_pickle_describe). */
int ck_legacy_describe(const struct ck_src *src, int *protocol, ck_found_fn fn, void *ctx, struct ck_err *e);

#endif
