/* What the format readers find in a checkpoint, told to tools that are not
 * the file system (ckptfs inspect): each state dict, where it sits and its
 * keys. The readers report while they parse; nothing is parsed twice. */
#ifndef CKPTFS_DESCRIBE_H
#define CKPTFS_DESCRIBE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "err.h"

/* Bytes borrowed from the parser for the length of a callback. */
struct ck_str {
	const char *s;
	size_t len;
};

/* One step from the checkpoint's top object to a state dict: a dict key
 * (key.s NULL when the key is not a string) or a list/tuple position. */
struct ck_path_step {
	struct ck_str key;
	int64_t index; /* -1 for a dict key */
};

struct ck_found_sd {
	const struct ck_path_step *path;
	size_t depth;          /* 0: the top object itself */
	const struct ck_str *keys;
	size_t nkeys;
	bool has_metadata;     /* the OrderedDict's _metadata attribute */
};

/* Called once per state dict, in the order found; non-zero stops (e set). */
typedef int (*ck_found_fn)(void *ctx, const struct ck_found_sd *sd, struct ck_err *e);

#endif
