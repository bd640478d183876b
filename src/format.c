#include "format.h"

#include <errno.h>
#include <string.h>
#include "legacy.h"
#include "safetensors.h"
#include "shardindex.h"
#include "torchzip.h"

const char *ck_format_name(enum ck_format f)
{
	switch (f) {
	case CK_FORMAT_TORCHZIP: return "torch-zip";
	case CK_FORMAT_TORCHSCRIPT: return "torchscript";
	case CK_FORMAT_LEGACY: return "torch-legacy";
	case CK_FORMAT_SAFETENSORS: return "safetensors";
	case CK_FORMAT_SHARDINDEX: return "shard-index";
	default: return "other";
	}
}

/* The format the first bytes announce; a zip is told apart (checkpoint,
 * TorchScript or other) only by its reader. */
enum head_kind { HEAD_OTHER, HEAD_LEGACY, HEAD_SAFETENSORS, HEAD_SHARDINDEX, HEAD_ZIP };

static int read_head(const struct ck_src *src, enum head_kind *kind, struct ck_err *e)
{
	uint8_t head[4096]; /* one page: a safetensors header may begin with whitespace */
	size_t n = src->size < sizeof(head) ? (size_t)src->size : sizeof(head);

	*kind = HEAD_OTHER;
	if (ck_src_read(src, head, n, 0, e))
		return -1;
	if (ck_legacy_detect(head, n))
		*kind = HEAD_LEGACY;
	else if (ck_safetensors_detect(head, n, src->size))
		*kind = HEAD_SAFETENSORS;
	else if (ck_shardindex_candidate(head, n, src->size))
		*kind = HEAD_SHARDINDEX;
	else if (n >= 4 && memcmp(head, "PK\3\4", 4) == 0)
		*kind = HEAD_ZIP;
	return 0;
}

static enum ck_format zip_format(enum ck_zip_kind kind)
{
	return kind == CK_ZIP_CHECKPOINT ? CK_FORMAT_TORCHZIP
	       : kind == CK_ZIP_TORCHSCRIPT ? CK_FORMAT_TORCHSCRIPT : CK_FORMAT_OTHER;
}

/* A JSON candidate is an index only if its reader says so. */
static int shard_index(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
		       enum ck_format *fmt, struct ck_err *e)
{
	bool is_index;
	int rc = ck_shardindex_layout(src, v, out, &is_index, e);

	if (is_index)
		*fmt = CK_FORMAT_SHARDINDEX;
	return rc;
}

int ck_view_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
		   enum ck_format *fmt, struct ck_err *e)
{
	enum head_kind head;
	enum ck_zip_kind kind;

	*out = NULL;
	*fmt = CK_FORMAT_OTHER;
	if (read_head(src, &head, e))
		return -1;
	switch (head) {
	case HEAD_LEGACY:
		*fmt = CK_FORMAT_LEGACY;
		return ck_legacy_layout(src, v, out, e);
	case HEAD_SAFETENSORS:
		*fmt = CK_FORMAT_SAFETENSORS;
		return ck_safetensors_layout(src, v, out, e);
	case HEAD_SHARDINDEX:
		return shard_index(src, v, out, fmt, e);
	case HEAD_ZIP:
		if (ck_torchzip_layout(src, v, out, &kind, e))
			return -1;
		*fmt = zip_format(kind);
		return 0;
	default:
		return 0;
	}
}

int ck_format_describe(const struct ck_src *src, enum ck_format *fmt, int *protocol, ck_found_fn fn, void *ctx,
		       struct ck_err *e)
{
	enum head_kind head;
	enum ck_zip_kind kind;

	*fmt = CK_FORMAT_OTHER;
	*protocol = -1;
	if (read_head(src, &head, e))
		return -1;
	switch (head) {
	case HEAD_LEGACY:
		*fmt = CK_FORMAT_LEGACY;
		return ck_legacy_describe(src, protocol, fn, ctx, e);
	case HEAD_SAFETENSORS:
		*fmt = CK_FORMAT_SAFETENSORS;
		return ck_safetensors_describe(src, fn, ctx, e);
	case HEAD_SHARDINDEX: { /* no state dict in it: only its format */
		struct ck_layout *l = NULL;
		int rc = shard_index(src, &ck_view_plain, &l, fmt, e);

		ck_layout_free(l);
		return rc;
	}
	case HEAD_ZIP:
		if (ck_torchzip_describe(src, &kind, protocol, fn, ctx, e))
			return -1;
		*fmt = zip_format(kind);
		return 0;
	default:
		return 0;
	}
}
