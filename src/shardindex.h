/* The index of a sharded checkpoint (Hugging Face's
 * pytorch_model.bin.index.json, model.safetensors.index.json): a JSON
 * object whose "weight_map" maps each tensor name to the shard file that
 * holds it. The view renames the weight_map's names with the rule of the
 * shards, so a loader that follows the index finds every name it asks for;
 * every other byte, "metadata" above all, stays as written. */
#ifndef CKPTFS_SHARDINDEX_H
#define CKPTFS_SHARDINDEX_H

#include <stdbool.h>
#include "describe.h"
#include "format.h"
#include "layout.h"
#include "source.h"
#include "view.h"

/* Bigger JSON files are never taken for an index (an index of 200000
 * tensors is some 20 MB). */
#define CK_SHARDINDEX_MAX ((uint64_t)64 << 20)

/* Whether a file of file_size bytes opening with head[0, n) may be an
 * index: JSON whitespace, then '{'. Only a candidate: the layout decides. */
bool ck_shardindex_candidate(const uint8_t *head, size_t n, uint64_t file_size);

/* The steps of format.h's ck_format_ops. A candidate is an index
 * (CK_FORMAT_SHARDINDEX) if it is a JSON object (strict, no duplicate
 * names) with a member "weight_map" whose value is an object of strings;
 * anything else is other and passes through. Names of an index that would
 * collide fail the layout (EIO); describing an index reports no state
 * dict, only whether its plain view can be laid out. */
int ck_shardindex_classify(const struct ck_src *src, void **st, enum ck_format *fmt, struct ck_err *e);
int ck_shardindex_layout(const struct ck_src *src, void *st, const struct ck_view *v, struct ck_layout **out,
			 struct ck_err *e);
int ck_shardindex_describe(const struct ck_src *src, void *st, int *protocol, ck_found_fn fn, void *ctx,
			   struct ck_err *e);
void ck_shardindex_release(void *st);

#endif
