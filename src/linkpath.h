/* Symlinks in a view: a link whose target is an absolute path into the
 * source directory would lead a reader out of the view, to the raw file.
 * The view shows it as the relative path to the same place, which the
 * reader's kernel then resolves inside the view. Pure string functions. */
#ifndef CKPTFS_LINKPATH_H
#define CKPTFS_LINKPATH_H

#include <stddef.h>
#include <sys/types.h>

/* A source root as link targets name it: `path` made absolute against cwd
 * (when relative), "." components and repeated or trailing slashes
 * removed. NULL when it has a ".." component (lexically it may name
 * another place) or on allocation failure (errno ENOMEM). */
char *ck_link_root(const char *path, const char *cwd);

/* The target a view shows for the link at `link` (its path relative to the
 * source root, "a/b/last.pth") whose target is `target`: when `target` is
 * absolute and lies beneath one of roots (from ck_link_root) without a
 * ".." component, the relative path from the link's directory to the same
 * place ("../../runs/epoch9.pth", "." for the root itself); else `target`
 * unchanged. Returns the length written to out, or -1 if it does not fit
 * in size bytes with its NUL. */
ssize_t ck_link_in_view(const char *target, const char *link, const char *const *roots, size_t nroots, char *out,
			size_t size);

#endif
