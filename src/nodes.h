/* Node ids and the source objects they stand for.
 *
 * An id is derived from the object (its view and source dev+ino), never
 * from lookup order, so it is the same after a remount and never reused
 * for another object while that one exists: NFS file handles stay valid.
 * The table maps the ids the kernel holds to where the object was last
 * found (parent id + name); paths are resolved beneath the source root
 * without ever following a symlink, and checked against the id. */
#ifndef CKPTFS_NODES_H
#define CKPTFS_NODES_H

#include <limits.h>
#include <stdbool.h>
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

/* The id of a source object seen through a view. */
uint64_t ck_nodes_id(const struct ck_nodes *t, const struct stat *st, unsigned view);
/* The id of a view directory: the source root seen through that view. */
uint64_t ck_nodes_view_root(const struct ck_nodes *t, unsigned view);

/* A source object found for a node: an O_PATH descriptor (the caller
 * closes it) and what fstat said about it. */
struct ck_located {
	int fd;
	struct stat st;
	unsigned view;
	char path[PATH_MAX];  /* relative to the source root; "." for the root */
};

/* Finds node id (not the mount root). -ESTALE when the id is unknown or no
 * longer names the object at its path. */
int ck_nodes_locate(struct ck_nodes *t, uint64_t id, struct ck_located *loc);
/* Finds `name` (a single component, not "." or "..") in directory node
 * parent (not the mount root). */
int ck_nodes_locate_child(struct ck_nodes *t, uint64_t parent, const char *name,
			  struct ck_located *loc);

/* Lookup counts: every entry replied to the kernel takes one reference,
 * every forget drops some; a node leaves the table when the kernel holds
 * none and no remembered node lies beneath it. */
int ck_nodes_ref_child(struct ck_nodes *t, uint64_t id, uint64_t parent, const char *name);
int ck_nodes_ref(struct ck_nodes *t, uint64_t id);
/* For an id the table has forgotten that the kernel still has in a file
 * handle (NFS export): searches the source tree for it, remembers where,
 * and takes a reference. -ESTALE when no such object exists any more. */
int ck_nodes_find_and_ref(struct ck_nodes *t, uint64_t id);
void ck_nodes_forget(struct ck_nodes *t, uint64_t id, uint64_t nlookup);

/* The directory a node was found in; the mount root is its own parent. */
int ck_nodes_parent(struct ck_nodes *t, uint64_t id, uint64_t *parent);

/* Records that a node was opened at this version of its source; returns
 * whether it is the version of the previous open, i.e. whether pages the
 * kernel cached then are still good. */
struct ck_node_version {
	uint64_t size;
	int64_t mtime_ns;
};
bool ck_nodes_reopened_unchanged(struct ck_nodes *t, uint64_t id, const struct ck_node_version *v);

#endif
