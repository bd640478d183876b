/* Format detection by content (never by name) and the dispatch from a
 * source file to the format reader that lays out its view. */
#ifndef CKPTFS_FORMAT_H
#define CKPTFS_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
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

/* One format's reader, one row of format.c's table. A file is read in four
 * steps: detect (its first bytes name a candidate: first row to accept
 * wins), classify (what the reader reads tells which format the file is:
 * a zip a checkpoint, TorchScript or other, a JSON file an index or not),
 * then, only for a file of the row's own format, validate and lay out (or
 * describe) by that format's rules, on the state classify read: nothing is
 * read twice, and no format's rules refuse a file of another. */
struct ck_format_ops {
	enum ck_format fmt; /* the row's format; a file classify puts elsewhere passes through */
	bool (*detect)(const uint8_t *head, size_t n, uint64_t size);
	/* *fmt and *st (for the next steps; NULL: nothing kept), or -1 with e
	 * and nothing kept. NULL: detect decides, the file is fmt. */
	int (*classify)(const struct ck_src *src, void **st, enum ck_format *fmt, struct ck_err *e);
	/* *out NULL: the view is the source unchanged. */
	int (*layout)(const struct ck_src *src, void *st, const struct ck_view *v, struct ck_layout **out,
		      struct ck_err *e);
	/* Reports the state dicts to fn; *protocol as ck_format_describe. */
	int (*describe)(const struct ck_src *src, void *st, int *protocol, ck_found_fn fn, void *ctx,
			struct ck_err *e);
	void (*release)(void *st); /* NULL: classify keeps nothing */
	/* How many records readers of the file fetch one by one (a zip's
	 * entries); NULL: the format does not know. */
	uint64_t (*records)(void *st);
};

/* Lays out the view of src. Returns 0 with *out (NULL: serve the source
 * unchanged), *fmt and *records (NULL: not wanted; 0: not known; see
 * ck_format_ops), or -1 with e set (the file cannot be served). */
int ck_view_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
		   enum ck_format *fmt, uint64_t *records, struct ck_err *e);

/* As ck_view_layout, with the reader of format `as` whatever the first
 * bytes say (a reader's tests and fuzzer start there). */
int ck_format_layout_as(enum ck_format as, const struct ck_src *src, const struct ck_view *v,
			struct ck_layout **out, enum ck_format *fmt, struct ck_err *e);

/* Detects the format as ck_view_layout does and reports the state dicts
 * its reader finds to fn. *protocol: the pickle protocol, -1 when the
 * format has no pickle (safetensors, other). */
int ck_format_describe(const struct ck_src *src, enum ck_format *fmt, int *protocol, ck_found_fn fn, void *ctx,
		       struct ck_err *e);

#endif
