/* uthash as the daemon uses it: a failed allocation leaves the item out of
 * the table (CK_HASH_ADD_FAILED) and becomes an error for that one file;
 * uthash's default would exit() the whole daemon from a worker thread.
 * Include this, never <uthash.h> directly. */
#ifndef CKPTFS_HASH_H
#define CKPTFS_HASH_H

#include <stddef.h>

/* The allocator of the hash tables (uthash's, renames.c's); alone in
 * hash.c so a unit test can supply its own that fails on demand. */
void *ck_hash_malloc(size_t n);

#define HASH_NONFATAL_OOM 1
#define uthash_malloc(sz) ck_hash_malloc(sz)
#include <uthash.h>

/* Whether the HASH_ADD* just done on item failed for lack of memory. */
#define CK_HASH_ADD_FAILED(item) ((item)->hh.tbl == NULL)

#endif
