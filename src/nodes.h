/* Node ids and the source objects they stand for.
 *
 * An id, with its generation, names one version of one source object
 * forever: it is derived from the object (its view, dev+ino, and its file
 * handle, which tells apart inodes that reuse a number) and, for a regular
 * file, its version (size, mtime, ctime), never from lookup order. So it is
 * the same after a remount (NFS file handles stay valid), a file changed in
 * place or replaced gets a new id (its own inode and page cache in the
 * kernel), and an old handle is ESTALE, never another file or version.
 * Directories keep their id while their entries change.
 * The table maps the ids the kernel holds to where the object was last
 * found (parent id + name); paths are resolved beneath the source root
 * without ever following a symlink, and checked against the id. */
#ifndef CKPTFS_NODES_H
#define CKPTFS_NODES_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* The mount root (FUSE_ROOT_ID); its children are the view directories. */
#define CK_NODES_ROOT_ID 1
/* Ids keep 4 bits for the view. */
#define CK_NODES_MAX_VIEWS 15

struct ck_nodes;

/* Takes ownership of root_fd (an O_PATH descriptor of the source root) on
 * success. NULL with errno set on failure. */
struct ck_nodes *ck_nodes_new(int root_fd, unsigned nviews);
void ck_nodes_free(struct ck_nodes *t);

int ck_nodes_root_fd(const struct ck_nodes *t);

/* The device of the mount serving the table: a directory of the source on
 * it (the mount itself, seen through an alias of the source) is never
 * entered. */
void ck_nodes_set_self_dev(struct ck_nodes *t, dev_t dev);

/* What tells a source object from another that reused its inode number: a
 * hash of its file handle (name_to_handle_at), 0 where the file system has
 * none. For an O_PATH descriptor, name "" and AT_EMPTY_PATH. */
uint64_t ck_nodes_ident(int dirfd, const char *name, int flags);

/* The id of a source object (at the version st shows) seen through a view,
 * and the generation that goes with it. */
uint64_t ck_nodes_id(const struct ck_nodes *t, const struct stat *st, uint64_t ident, unsigned view);
uint32_t ck_nodes_generation(const struct stat *st, uint64_t ident);
/* The inode number a listing shows for an entry: the id of a directory, an
 * advisory number for other entries (their id depends on their version). */
uint64_t ck_nodes_entry_ino(const struct ck_nodes *t, dev_t dev, ino_t ino, unsigned view);
/* The id of a view directory: the source root seen through that view. */
uint64_t ck_nodes_view_root(const struct ck_nodes *t, unsigned view);

/* What stands for the front of a path cut for a message: "…/". */
#define CK_NODES_CUT "\xe2\x80\xa6/"

/* A source object found for a node: an O_PATH descriptor (the caller
 * closes it) and what fstat said about it. */
struct ck_located {
	int fd;
	struct stat st;
	uint64_t ident;       /* ck_nodes_ident() */
	unsigned view;
	/* relative to the source root; "." for the root. For messages where
	 * cut: the object lies deeper than PATH_MAX, and this is CK_NODES_CUT
	 * and the last components of its path. */
	char path[PATH_MAX];
	bool cut;
};

/* Finds node id (not the mount root). -ESTALE when the id is unknown or no
 * longer names the object at its path. */
int ck_nodes_locate(struct ck_nodes *t, uint64_t id, struct ck_located *loc);
/* The same, except that where the node's path holds its regular file at
 * another version (changed in place), it returns CK_NODES_CHANGED with loc
 * filled and says whether the node was recorded as a pass-through file. */
#define CK_NODES_CHANGED 1
int ck_nodes_locate_latest(struct ck_nodes *t, uint64_t id, struct ck_located *loc, bool *passthrough);
/* Finds `name` (a single component, not "." or "..") in directory node
 * parent (not the mount root). */
int ck_nodes_locate_child(struct ck_nodes *t, uint64_t parent, const char *name,
			  struct ck_located *loc);
/* The same beneath a directory already located (a listing finds each of
 * its entries so). */
int ck_nodes_locate_in(struct ck_nodes *t, const struct ck_located *dir, const char *name,
		       struct ck_located *loc);

/* Lookup counts: every entry replied to the kernel takes one reference,
 * every forget drops some; a node leaves the table when the kernel holds
 * none and no remembered node lies beneath it. A pass-through node (a file
 * that was no checkpoint) may be served at its latest version. */
int ck_nodes_ref_child(struct ck_nodes *t, uint64_t id, uint64_t parent, const char *name,
		       uint64_t ident, bool passthrough);
int ck_nodes_ref(struct ck_nodes *t, uint64_t id);
/* The kernel was told of node id at now_ns (a monotonic clock) in a reply
 * that took a reference, and whether its source had no access ACL then.
 * It keeps what it was told for the entry timeout: until then, telling it
 * again only makes it drop what it cached (the ACL: ls -l asks for it), and
 * an ACL it asks for may be answered as it was then. */
void ck_nodes_told(struct ck_nodes *t, uint64_t id, uint64_t now_ns, bool no_acl);
/* Whether the kernel holds node id and was told of it at since_ns or later;
 * if so, *no_acl (when not NULL) as ck_nodes_told recorded it. */
bool ck_nodes_told_since(struct ck_nodes *t, uint64_t id, uint64_t since_ns, bool *no_acl);
/* For an id the table has forgotten that the kernel still has in a file
 * handle (NFS export): searches the source tree for it, remembers where,
 * and takes a reference. -ESTALE when no such object exists any more. */
int ck_nodes_find_and_ref(struct ck_nodes *t, uint64_t id);
/* How many directory entries one such search may read before it gives up
 * (ESTALE); a million unless set. Set before the table is shared. */
void ck_nodes_set_find_budget(struct ck_nodes *t, size_t entries);
void ck_nodes_forget(struct ck_nodes *t, uint64_t id, uint64_t nlookup);

/* The whole path of node id relative to the source root ("." for the root),
 * however long (allocated; the caller frees it). */
int ck_nodes_path(struct ck_nodes *t, uint64_t id, char **path);

/* The directory a node was found in; the mount root is its own parent. */
int ck_nodes_parent(struct ck_nodes *t, uint64_t id, uint64_t *parent);

#endif
