#include <config.h>
#include "export.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK ((size_t)1 << 20)  /* a read/write buffer; copy_file_range calls are 1 GiB */

struct sink {
	int fd;
	bool cfr;        /* copy_file_range still worth trying */
	uint8_t *buf;    /* for the read/write fallback, allocated on first use */
	uint64_t done, total;
	ck_progress_fn progress;
	void *ctx;
	struct ck_err *e;
};

static int write_all(struct sink *s, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(s->fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return ck_err_set(s->e, errno, "write at offset %llu: %s", (unsigned long long)s->done,
					  strerror(errno));
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void advance(struct sink *s, uint64_t n)
{
	s->done += n;
	if (s->progress)
		s->progress(s->ctx, s->done, s->total);
}

/* One piece of a source range: copy_file_range, or read then write. */
static ssize_t copy_piece(struct sink *s, const struct ck_src *src, uint64_t off, uint64_t len)
{
	if (s->cfr) {
		loff_t in = (loff_t)off;
		ssize_t n = copy_file_range(src->fd, &in, s->fd, NULL, len < ((size_t)1 << 30) ? len : (size_t)1 << 30, 0);
		if (n >= 0 || (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP &&
			       errno != EBADF))
			return n;
		s->cfr = false; /* a pipe, an O_APPEND file, or no kernel support */
	}
	if (!s->buf && !(s->buf = malloc(CHUNK)))
		return ck_err_nomem(s->e), -2;
	ssize_t n = pread(src->fd, s->buf, len < CHUNK ? len : CHUNK, (off_t)off);
	if (n > 0 && write_all(s, s->buf, (size_t)n))
		return -2;
	return n;
}

static int copy_range(struct sink *s, const struct ck_src *src, uint64_t off, uint64_t len)
{
	while (len) {
		ssize_t n = copy_piece(s, src, off, len);
		if (n == -2)
			return -1;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ck_err_set(s->e, errno, "%s: reading offset %llu: %s", src->name, (unsigned long long)off,
					  strerror(errno));
		if (n == 0)
			return ck_err_set(s->e, EIO, "%s: ends at offset %llu, expected %llu bytes: changed while read",
					  src->name, (unsigned long long)off, (unsigned long long)(off + len));
		off += (uint64_t)n;
		len -= (uint64_t)n;
		advance(s, (uint64_t)n);
	}
	return 0;
}

int ck_export(const struct ck_layout *l, const struct ck_src *src, int out, ck_progress_fn progress, void *ctx,
	      struct ck_err *e)
{
	struct sink s = {.fd = out, .cfr = true, .total = l ? l->size : src->size, .progress = progress, .ctx = ctx,
			 .e = e};
	int rc = 0;

	if (!l)
		rc = copy_range(&s, src, 0, src->size);
	for (size_t i = 0; l && i < l->n && !rc; i++) {
		const struct ck_extent *x = &l->ext[i];
		if (x->kind == CK_EXTENT_MEM) {
			if (!(rc = write_all(&s, l->mem + x->src_off, x->len)))
				advance(&s, x->len);
		} else
			rc = copy_range(&s, src, x->src_off, x->len);
	}
	free(s.buf);
	return rc;
}
