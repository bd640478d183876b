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
};

/* Reads exactly n bytes at off, or fails with EIO naming the offset. */
int ck_src_read(const struct ck_src *s, void *buf, size_t n, uint64_t off, struct ck_err *e);

#endif
