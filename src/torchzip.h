/* The torch.save zip archive: parse the central directory and data.pkl,
 * and lay out a view whose data.pkl is rewritten while every other record
 * is served from the source at a shift that keeps its page alignment. */
#ifndef CKPTFS_TORCHZIP_H
#define CKPTFS_TORCHZIP_H

#include "describe.h"
#include "format.h"
#include "layout.h"
#include "source.h"
#include "view.h"

/* Limits on what a zip may claim before we allocate for it. */
#define CK_ZIP_MAX_CD_BYTES ((uint64_t)256 << 20)
#define CK_ZIP_MAX_PICKLE_BYTES ((uint64_t)1 << 30)

/* The steps of format.h's ck_format_ops. Classifying reads the end records
 * and the entry names only: a zip is a checkpoint (CK_FORMAT_TORCHZIP,
 * <dir>/data.pkl + <dir>/version), TorchScript (has constants.pkl: passes
 * through, never parsed) or other. Only a checkpoint is then held to
 * torch's rules (layout, describe): an ordinary zip never fails. */
bool ck_torchzip_detect(const uint8_t *head, size_t n, uint64_t size);
int ck_torchzip_classify(const struct ck_src *src, void **st, enum ck_format *fmt, struct ck_err *e);
int ck_torchzip_layout(const struct ck_src *src, void *st, const struct ck_view *v, struct ck_layout **out,
		       struct ck_err *e);
/* Reports data.pkl's state dicts to fn (ck_pickle_describe). */
int ck_torchzip_describe(const struct ck_src *src, void *st, int *protocol, ck_found_fn fn, void *ctx,
			 struct ck_err *e);
void ck_torchzip_release(void *st);
uint64_t ck_torchzip_records(void *st);

#endif
