/* A view file is a layout: an ordered list of extents, each either bytes in
 * memory or a range of the source file. Immutable once built, so any number
 * of readers share it without locks. */
#ifndef CKPTFS_LAYOUT_H
#define CKPTFS_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "buf.h"
#include "err.h"

enum ck_extent_kind { CK_EXTENT_MEM, CK_EXTENT_SRC };

struct ck_extent {
	uint64_t off;       /* offset in the view */
	uint64_t len;
	uint64_t src_off;   /* CK_EXTENT_SRC: offset in the source; CK_EXTENT_MEM: offset in mem */
	enum ck_extent_kind kind;
};

struct ck_layout {
	uint64_t size;             /* exact size of the view */
	size_t n;
	struct ck_extent *ext;
	uint8_t *mem;              /* backing bytes of every MEM extent */
	size_t mem_len;
};

/* Building: append extents in view order; MEM bytes are copied in. */
struct ck_layout_builder {
	struct ck_buf mem;
	struct ck_extent *ext;
	size_t n, cap;
	uint64_t size;
	int failed;
};

void ck_layout_add_mem(struct ck_layout_builder *b, const void *p, size_t n);
/* An extent over the bytes [at, at + n) of b->mem, which a writer put there
 * itself (building a record in place saves a copy of it). */
void ck_layout_add_mem_at(struct ck_layout_builder *b, size_t at, size_t n);
void ck_layout_add_src(struct ck_layout_builder *b, uint64_t src_off, uint64_t len);
/* Finishes the layout (merging nothing: extents stay as added); NULL + ENOMEM on failure. */
struct ck_layout *ck_layout_finish(struct ck_layout_builder *b, struct ck_err *e);
void ck_layout_builder_free(struct ck_layout_builder *b);

void ck_layout_free(struct ck_layout *l);

/* Index of the extent holding view offset off (off < size). */
size_t ck_layout_find(const struct ck_layout *l, uint64_t off);

/* Bytes of memory the layout holds (for the cache's bound). */
size_t ck_layout_footprint(const struct ck_layout *l);

/* Copies view bytes [off, off+n) into buf, reading SRC extents from srcfd.
 * Returns bytes read (short only at end of view) or -1 with errno set. Used
 * by tests and tools; the FUSE read path splices instead. */
ssize_t ck_layout_pread(const struct ck_layout *l, int srcfd, void *buf, size_t n, uint64_t off);

#endif
