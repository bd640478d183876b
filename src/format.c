#include "format.h"

#include <errno.h>
#include <string.h>
#include "legacy.h"
#include "safetensors.h"
#include "torchzip.h"

const char *ck_format_name(enum ck_format f)
{
	switch (f) {
	case CK_FORMAT_TORCHZIP: return "torch-zip";
	case CK_FORMAT_TORCHSCRIPT: return "torchscript";
	case CK_FORMAT_LEGACY: return "torch-legacy";
	case CK_FORMAT_SAFETENSORS: return "safetensors";
	default: return "other";
	}
}

int ck_view_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
		   enum ck_format *fmt, struct ck_err *e)
{
	uint8_t head[4096]; /* one page: a safetensors header may begin with whitespace */
	size_t n = src->size < sizeof(head) ? (size_t)src->size : sizeof(head);
	enum ck_zip_kind kind;

	*out = NULL;
	*fmt = CK_FORMAT_OTHER;
	if (ck_src_read(src, head, n, 0, e))
		return -1;
	if (ck_legacy_detect(head, n)) {
		*fmt = CK_FORMAT_LEGACY;
		return ck_legacy_layout(src, v, out, e);
	}
	if (ck_safetensors_detect(head, n, src->size)) {
		*fmt = CK_FORMAT_SAFETENSORS;
		return ck_safetensors_layout(src, v, out, e);
	}
	if (n < 4 || memcmp(head, "PK\3\4", 4) != 0)
		return 0;
	if (ck_torchzip_layout(src, v, out, &kind, e))
		return -1;
	if (kind == CK_ZIP_CHECKPOINT)
		*fmt = CK_FORMAT_TORCHZIP;
	else if (kind == CK_ZIP_TORCHSCRIPT)
		*fmt = CK_FORMAT_TORCHSCRIPT;
	return 0;
}
