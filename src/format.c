#include "format.h"

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

/* ---- the readers whose first bytes decide: adapters to the table ------- */

static bool legacy_detect(const uint8_t *head, size_t n, uint64_t size)
{
	return ck_legacy_detect(head, n);
}

static int legacy_layout(const struct ck_src *src, void *st, const struct ck_view *v, struct ck_layout **out,
			 struct ck_err *e)
{
	return ck_legacy_layout(src, v, out, e);
}

static int legacy_describe(const struct ck_src *src, void *st, int *protocol, ck_found_fn fn, void *ctx,
			   struct ck_err *e)
{
	return ck_legacy_describe(src, protocol, fn, ctx, e);
}

static int safetensors_layout(const struct ck_src *src, void *st, const struct ck_view *v,
			      struct ck_layout **out, struct ck_err *e)
{
	return ck_safetensors_layout(src, v, out, e);
}

static int safetensors_describe(const struct ck_src *src, void *st, int *protocol, ck_found_fn fn, void *ctx,
				struct ck_err *e)
{
	return ck_safetensors_describe(src, fn, ctx, e);
}

/* Every format, in the order detection tries them: the first whose detect
 * accepts the head is the file's reader. */
static const struct ck_format_ops formats[] = {
	{CK_FORMAT_LEGACY, legacy_detect, NULL, legacy_layout, legacy_describe, NULL, NULL},
	{CK_FORMAT_SAFETENSORS, ck_safetensors_detect, NULL, safetensors_layout, safetensors_describe, NULL, NULL},
	{CK_FORMAT_SHARDINDEX, ck_shardindex_candidate, ck_shardindex_classify, ck_shardindex_layout,
	 ck_shardindex_describe, ck_shardindex_release, NULL},
	{CK_FORMAT_TORCHZIP, ck_torchzip_detect, ck_torchzip_classify, ck_torchzip_layout, ck_torchzip_describe,
	 ck_torchzip_release, ck_torchzip_records},
};
#define N_FORMATS (sizeof(formats) / sizeof(formats[0]))

/* The reader the first bytes name, or NULL: the file is no checkpoint. */
static int detect(const struct ck_src *src, const struct ck_format_ops **f, struct ck_err *e)
{
	uint8_t head[4096]; /* one page: a safetensors header may begin with whitespace */
	size_t n = src->size < sizeof(head) ? (size_t)src->size : sizeof(head);

	*f = NULL;
	if (ck_src_read(src, head, n, 0, e))
		return -1;
	for (size_t i = 0; i < N_FORMATS && !*f; i++)
		if (formats[i].detect(head, n, src->size))
			*f = &formats[i];
	return 0;
}

/* Classifies src with reader f: 1 with *st when the file is f's format
 * (its rules apply), 0 when it passes through, -1 with e. */
static int classify(const struct ck_format_ops *f, const struct ck_src *src, void **st, enum ck_format *fmt,
		    struct ck_err *e)
{
	*st = NULL;
	*fmt = f->fmt;
	if (f->classify && f->classify(src, st, fmt, e))
		return -1;
	if (*fmt == f->fmt)
		return 1;
	if (f->release)
		f->release(*st);
	return 0;
}

static int layout_with(const struct ck_format_ops *f, const struct ck_src *src, const struct ck_view *v,
		       struct ck_layout **out, enum ck_format *fmt, uint64_t *records, struct ck_err *e)
{
	void *st;
	int rc;

	*out = NULL;
	*fmt = CK_FORMAT_OTHER;
	if (records)
		*records = 0;
	if (!f || (rc = classify(f, src, &st, fmt, e)) <= 0)
		return f ? rc : 0;
	if (records && f->records)
		*records = f->records(st);
	rc = f->layout(src, st, v, out, e);
	if (f->release)
		f->release(st);
	return rc;
}

int ck_view_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
		   enum ck_format *fmt, uint64_t *records, struct ck_err *e)
{
	const struct ck_format_ops *f;

	*out = NULL;
	*fmt = CK_FORMAT_OTHER;
	if (records)
		*records = 0;
	if (detect(src, &f, e))
		return -1;
	return layout_with(f, src, v, out, fmt, records, e);
}

int ck_format_layout_as(enum ck_format as, const struct ck_src *src, const struct ck_view *v,
			struct ck_layout **out, enum ck_format *fmt, struct ck_err *e)
{
	const struct ck_format_ops *f = NULL;

	for (size_t i = 0; i < N_FORMATS && !f; i++)
		if (formats[i].fmt == as)
			f = &formats[i];
	return layout_with(f, src, v, out, fmt, NULL, e);
}

int ck_format_describe(const struct ck_src *src, enum ck_format *fmt, int *protocol, ck_found_fn fn, void *ctx,
		       struct ck_err *e)
{
	const struct ck_format_ops *f;
	void *st;
	int rc;

	*fmt = CK_FORMAT_OTHER;
	*protocol = -1;
	if (detect(src, &f, e))
		return -1;
	if (!f || (rc = classify(f, src, &st, fmt, e)) <= 0)
		return f ? rc : 0;
	rc = f->describe(src, st, protocol, fn, ctx, e);
	if (f->release)
		f->release(st);
	return rc;
}
