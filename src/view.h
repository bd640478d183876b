/* View rules: how a view renames state-dict keys. A pure string function;
 * it knows nothing of pickles or files. */
#ifndef CKPTFS_VIEW_H
#define CKPTFS_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include "buf.h"
#include "err.h"

#define CK_VIEW_MAX_STRIP 8

struct ck_view {
	const char *name;                       /* top-level directory name */
	const char *strip[CK_VIEW_MAX_STRIP];   /* wrapper prefixes, each ending in '.' */
	size_t nstrip;
	const char *add;                        /* prefix to add after stripping, ending in '.', or NULL */
	bool clean;                             /* drop inner wrapper components first (built-ins) */
};

/* The built-in views. plain gives PyTorch's canonical names: the wrapper
 * components torch itself drops wherever they stand (_fsdp_wrapped_module,
 * _fpw_module, _checkpoint_wrapped_module, _orig_mod) go first, then every
 * leading "module." and "_orig_mod."; ddp is plain, then "module." added.
 * A custom view strips only its listed leading prefixes. */
extern const struct ck_view ck_view_plain;
extern const struct ck_view ck_view_ddp;

/* The new name of a state-dict key: with `clean`, every inner wrapper
 * component is removed (never the last one, the tensor's own name); then
 * every leading wrapper prefix is stripped (repeatedly, in any order), then
 * `add` is prepended. Returns a
 * malloc'ed string of *outlen bytes, or NULL on allocation failure. */
char *ck_view_key(const struct ck_view *v, const char *key, size_t len, size_t *outlen);

/* The same for a `_metadata` key, whose names are module paths without the
 * trailing dot: "module" means the wrapper's child, "" the root. */
char *ck_view_meta_key(const struct ck_view *v, const char *key, size_t len, size_t *outlen);

/* ck_view_key (meta: ck_view_meta_key) with the new name appended to out,
 * no allocation a key: returns its length (not counting the NUL written
 * after it, which out->len leaves out); out->failed tells out of memory. */
size_t ck_view_rename_into(const struct ck_view *v, const char *key, size_t len, bool meta, struct ck_buf *out);

/* A user-defined view from a mount option:
 *   NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]
 * NAME is [A-Za-z0-9_.-]+ (not "." or ".."), each PREFIX ends with '.'.
 * Fills *v with strings it owns (ck_view_clear frees them), or -1 with e. */
int ck_view_parse(const char *spec, struct ck_view *v, struct ck_err *e);
void ck_view_clear(struct ck_view *v);

/* Whether the view inserts the wrapper's own ('', {'version': 1}) entry
 * at the head of `_metadata` (views that add a prefix do). */
static inline bool ck_view_adds_wrapper(const struct ck_view *v) { return v->add != NULL; }

#endif
