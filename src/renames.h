/* The new names given to the keys of one map (a state dict, a safetensors
 * header, an index's weight_map), so that two keys that would get one name
 * are caught and named: the view would otherwise lose one of them. */
#ifndef CKPTFS_RENAMES_H
#define CKPTFS_RENAMES_H

#include <stddef.h>
#include <stdint.h>
#include "err.h"

struct ck_renamed;

struct ck_renames {
	struct ck_renamed *all; /* room for cap names */
	uint32_t *slot;         /* the hash table: index + 1 into all, 0 free */
	size_t n, cap, mask;
	uint64_t seed;
};

/* Room for cap names (the only allocation), or -1 with e set. */
int ck_renames_init(struct ck_renames *r, size_t cap, struct ck_err *e);

/* Gives name[0, len) to the key the caller knows as orig. 0: the name is
 * new; 1: an earlier key already has it, *taken_by tells which; -1 with e
 * set: more names than the room made. The name's bytes must stay until
 * ck_renames_free. */
int ck_renames_add(struct ck_renames *r, const char *name, size_t len, size_t orig, size_t *taken_by,
		   struct ck_err *e);

void ck_renames_free(struct ck_renames *r);

#endif
