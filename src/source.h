/* A source file opened for building a view: bounded, exact reads. */
#ifndef CKPTFS_SOURCE_H
#define CKPTFS_SOURCE_H

#include <stddef.h>
#include <stdint.h>
#include "err.h"

struct ck_src {
	int fd;
	uint64_t size;    /* size at the time the view is built */
	const char *name; /* for messages: path relative to the source root */
	/* The memory budget of the build (NULL: unbounded, as in the tools):
	 * asked for bytes before each allocation whose size the file decides,
	 * held until the build ends. Fails with e set when they cannot be had. */
	int (*claim)(void *ctx, uint64_t bytes, struct ck_err *e);
	void *claim_ctx;
};

/* Reads exactly n bytes at off, or fails with EIO naming the offset. */
int ck_src_read(const struct ck_src *s, void *buf, size_t n, uint64_t off, struct ck_err *e);

/* Claims bytes of the build's budget through s->claim; 0 when unbounded. */
int ck_src_claim(const struct ck_src *s, uint64_t bytes, struct ck_err *e);

#endif
