#include "layout.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct ck_extent *push(struct ck_layout_builder *b, uint64_t len)
{
	struct ck_extent *x;

	if (b->failed || len == 0)
		return NULL;
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 8;
		x = realloc(b->ext, cap * sizeof(*x));
		if (!x) {
			b->failed = 1;
			return NULL;
		}
		b->ext = x;
		b->cap = cap;
	}
	x = &b->ext[b->n++];
	x->off = b->size;
	x->len = len;
	b->size += len;
	return x;
}

void ck_layout_add_mem_at(struct ck_layout_builder *b, size_t at, size_t n)
{
	struct ck_extent *x;

	if (b->mem.failed)
		b->failed = 1;
	if (b->failed || n == 0)
		return;
	/* Adjacent memory extents are one extent: fewer segments per read. */
	if (b->n && b->ext[b->n - 1].kind == CK_EXTENT_MEM && b->ext[b->n - 1].src_off + b->ext[b->n - 1].len == at) {
		b->ext[b->n - 1].len += n;
		b->size += n;
		return;
	}
	x = push(b, n);
	if (x) {
		x->kind = CK_EXTENT_MEM;
		x->src_off = at;
	}
}

void ck_layout_add_mem(struct ck_layout_builder *b, const void *p, size_t n)
{
	size_t at = b->mem.len;

	ck_buf_append(&b->mem, p, n);
	ck_layout_add_mem_at(b, at, n);
}

void ck_layout_add_src(struct ck_layout_builder *b, uint64_t src_off, uint64_t len)
{
	struct ck_extent *x;

	if (b->n && b->ext[b->n - 1].kind == CK_EXTENT_SRC &&
	    b->ext[b->n - 1].src_off + b->ext[b->n - 1].len == src_off) {
		b->ext[b->n - 1].len += len;
		b->size += len;
		return;
	}
	x = push(b, len);
	if (x) {
		x->kind = CK_EXTENT_SRC;
		x->src_off = src_off;
	}
}

void ck_layout_builder_free(struct ck_layout_builder *b)
{
	ck_buf_free(&b->mem);
	free(b->ext);
	memset(b, 0, sizeof(*b));
}

struct ck_layout *ck_layout_finish(struct ck_layout_builder *b, struct ck_err *e)
{
	struct ck_layout *l;
	uint8_t *shrunk;

	if (b->failed || b->mem.failed || !(l = calloc(1, sizeof(*l)))) {
		ck_layout_builder_free(b);
		ck_err_nomem(e);
		return NULL;
	}
	/* a writer that reserved more than it wrote gives the rest back */
	if (b->mem.cap - b->mem.len > 4096 && (shrunk = realloc(b->mem.data, b->mem.len ? b->mem.len : 1)))
		b->mem.data = shrunk;
	l->size = b->size;
	l->n = b->n;
	l->ext = b->ext;
	l->mem = b->mem.data;
	l->mem_len = b->mem.len;
	memset(b, 0, sizeof(*b));
	return l;
}

void ck_layout_free(struct ck_layout *l)
{
	if (!l)
		return;
	free(l->ext);
	free(l->mem);
	free(l);
}

size_t ck_layout_find(const struct ck_layout *l, uint64_t off)
{
	size_t lo = 0, hi = l->n;

	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (l->ext[mid].off <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

size_t ck_layout_footprint(const struct ck_layout *l)
{
	return sizeof(*l) + l->n * sizeof(*l->ext) + l->mem_len;
}

ssize_t ck_layout_pread(const struct ck_layout *l, int srcfd, void *buf, size_t n, uint64_t off)
{
	size_t done = 0;

	if (off >= l->size || n == 0)
		return 0;
	if (n > l->size - off)
		n = (size_t)(l->size - off);
	for (size_t i = ck_layout_find(l, off); done < n; i++) {
		const struct ck_extent *x = &l->ext[i];
		uint64_t in = off + done - x->off;
		size_t k = (size_t)(x->len - in < n - done ? x->len - in : n - done);

		if (x->kind == CK_EXTENT_MEM) {
			memcpy((char *)buf + done, l->mem + x->src_off + in, k);
		} else {
			size_t got = 0;
			while (got < k) {
				ssize_t r = pread(srcfd, (char *)buf + done + got, k - got,
						  (off_t)(x->src_off + in + got));
				if (r < 0 && errno == EINTR)
					continue;
				if (r < 0)
					return -1;
				if (r == 0) {
					errno = EIO; /* the source shrank under us */
					return -1;
				}
				got += (size_t)r;
			}
		}
		done += k;
	}
	return (ssize_t)done;
}
