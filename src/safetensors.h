/* safetensors: u64 header length, a JSON header naming every tensor, then
 * the tensor bytes at offsets relative to the header's end. The view renames
 * tensors in the header, re-pads it to a multiple of 8 and serves the
 * tensor bytes from the source; offsets never change. */
#ifndef CKPTFS_SAFETENSORS_H
#define CKPTFS_SAFETENSORS_H

#include <stdbool.h>
#include "describe.h"
#include "layout.h"
#include "source.h"
#include "view.h"

/* The reference reader's bound on the header. */
#define CK_SAFETENSORS_MAX_HEADER ((uint64_t)100000000)

/* Whether head, the file's first n bytes (9 to a page), opens a
 * safetensors file of file_size bytes. */
bool ck_safetensors_detect(const uint8_t *head, size_t n, uint64_t file_size);

int ck_safetensors_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
			  struct ck_err *e);

/* Reports the tensor names, in header order, as one state dict at the top. */
int ck_safetensors_describe(const struct ck_src *src, ck_found_fn fn, void *ctx, struct ck_err *e);

#endif
