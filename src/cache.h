/* Built views, keyed by the identity and version of their source file.
 * Building a view parses the file, so it happens once per key however many
 * requests ask at the same time; results (layouts, "serve the source
 * unchanged", errors) stay cached in an LRU. One bound in bytes covers all
 * the cache holds: built views, held or idle, and the memory builds in
 * progress claim (through ck_src_claim) before they allocate. Thread-safe. */
#ifndef CKPTFS_CACHE_H
#define CKPTFS_CACHE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include "err.h"
#include "format.h"
#include "layout.h"
#include "source.h"
#include "view.h"

/* A source file changed in place gets a new key (size, mtime or ctime
 * differ: a rewrite that restores mtime, as `cp -p` or `rsync -t` do, still
 * changes ctime); its old entries age out of the LRU. Compared as bytes:
 * build it with ck_cache_key_of(), which zeroes any padding. */
struct ck_cache_key {
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
	const struct ck_view *view;
	/* Built while a process had the file open for writing: what it shows
	 * is not the version those times will name once the writer is done. */
	bool unsettled;
};

struct ck_cache_key ck_cache_key_of(const struct stat *st, const struct ck_view *v);

/* What building a view produced; immutable once an entry is handed out. */
struct ck_built {
	struct ck_layout *layout;  /* NULL: serve the source unchanged */
	enum ck_format format;
	uint64_t records;          /* ck_view_layout's: 0 when not known */
	struct ck_err err;         /* err.code != 0: the view cannot be served */
};

struct ck_cache;
struct ck_cache_entry;

/* max_bytes bounds the memory of built entries plus the claims of builds
 * in progress. A build that cannot have its claim waits up to claim_wait_s
 * for others to end or let go (EIO-worthy ENOMEM after, not kept: the next
 * request tries again); one whose claims alone exceed max_bytes fails with
 * EFBIG, kept. */
struct ck_cache *ck_cache_new(size_t max_bytes, unsigned claim_wait_s);
/* Frees the cache and every entry; no entry may still be held. */
void ck_cache_free(struct ck_cache *c);

/* Returns a held entry for key, building it from src (an fd whose fstat
 * gave key) when no entry exists; requests for a key being built wait for
 * that build. A failed build is an entry too (err set, logged once as
 * "src->name: message"). A file that changed while its view was built gets
 * an EIO entry that is not kept. Returns NULL with e set only when out of
 * memory. */
struct ck_cache_entry *ck_cache_get(struct ck_cache *c, const struct ck_cache_key *key,
				    const struct ck_src *src, struct ck_err *e);
/* The entry for key, held, when one is built or being built (then waits
 * for it); NULL when there is none: nothing is read or built. */
struct ck_cache_entry *ck_cache_find(struct ck_cache *c, const struct ck_cache_key *key);
void ck_cache_put(struct ck_cache *c, struct ck_cache_entry *ent);

const struct ck_built *ck_cache_built(const struct ck_cache_entry *ent);
const struct ck_cache_key *ck_cache_entry_key(const struct ck_cache_entry *ent);

/* How many views were built since the cache was made (for tests). */
uint64_t ck_cache_builds(struct ck_cache *c);

#endif
