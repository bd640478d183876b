#include <config.h>
#include "nodes.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "hash.h"

/* Bounds the time one forgotten id can cost: a search stops after this many
 * directory entries and answers ESTALE. */
#define FIND_MAX_ENTRIES 1000000

struct node {
	uint64_t id;
	uint64_t parent;
	char *name;          /* where it was last found; NULL for the mount root and view roots */
	uint64_t nlookup;    /* references the kernel holds */
	uint64_t nchildren;  /* nodes in the table naming this one as parent */
	unsigned view;
	bool pinned;         /* the mount root and the view roots stay for the whole mount */
	bool passthrough;    /* a regular file that was no checkpoint */
	bool no_acl;         /* its source had no access ACL when the kernel was told of it */
	uint64_t told_ns;    /* when the kernel was last told of it (ck_nodes_told) */
	uint64_t ident;      /* of the object, when known */
	UT_hash_handle hh;
};

struct ck_nodes {
	pthread_mutex_t lock;
	struct node *table;
	int root_fd;
	dev_t root_dev;
	ino_t root_ino;
	unsigned nviews;
	size_t find_budget;     /* FIND_MAX_ENTRIES unless set */
	_Atomic dev_t self_dev; /* the mount's own device, once known; 0 before */
};

/* splitmix64's finalizer: every input bit reaches every output bit. */
static uint64_t mix64(uint64_t x)
{
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

uint64_t ck_nodes_ident(int dirfd, const char *name, int flags)
{
	union {
		struct file_handle fh;
		unsigned char raw[sizeof(struct file_handle) + MAX_HANDLE_SZ];
	} h;
	const unsigned char *bytes = h.raw + offsetof(struct file_handle, f_handle);
	uint64_t x;
	int mount_id;

	h.fh.handle_bytes = MAX_HANDLE_SZ;
	if (name_to_handle_at(dirfd, name, &h.fh, &mount_id, flags))
		return 0;
	x = mix64((uint64_t)(unsigned)h.fh.handle_type);
	for (unsigned i = 0; i < h.fh.handle_bytes && i < MAX_HANDLE_SZ; i++)
		x = mix64(x ^ bytes[i]);
	return x;
}

static uint64_t ns(const struct timespec *ts)
{
	return (uint64_t)ts->tv_sec * 1000000000u + (uint64_t)ts->tv_nsec;
}

/* Which object and, for a regular file, which version of it: ctime counts,
 * as no one can set it (a rewrite that restores mtime changes it). */
static uint64_t version_of(const struct stat *st, uint64_t ident)
{
	uint64_t h = mix64(ident ^ UINT64_C(0x9e3779b97f4a7c15));

	if (S_ISREG(st->st_mode)) {
		h = mix64(h ^ (uint64_t)st->st_size);
		h = mix64(h ^ ns(&st->st_mtim));
		h = mix64(h ^ ns(&st->st_ctim));
	}
	return h;
}

/* Bits of a regular file's version in a readable id. */
#define ID_VERSION_BITS 27

/* Readable ids (ino << 31 | version bits << 4 | view + 1, below 2^63) for
 * the source root's device; a hash with the top bit set, so the two never
 * meet, for objects on other devices (mounts beneath the source) or with
 * inode numbers of more than 32 bits. Version 0 for directories and the
 * rest: their id stays while their content changes. */
static uint64_t id_of(const struct ck_nodes *t, dev_t dev, ino_t ino, uint64_t version, unsigned view)
{
	if (dev == t->root_dev && (uint64_t)ino < UINT64_C(1) << 32)
		return (uint64_t)ino << 31 | (version & ((UINT64_C(1) << ID_VERSION_BITS) - 1)) << 4 |
		       (view + 1);
	return mix64(mix64(mix64((uint64_t)dev) ^ (uint64_t)ino) ^ version ^ view) | UINT64_C(1) << 63;
}

uint64_t ck_nodes_id(const struct ck_nodes *t, const struct stat *st, uint64_t ident, unsigned view)
{
	return id_of(t, st->st_dev, st->st_ino, S_ISREG(st->st_mode) ? version_of(st, ident) : 0, view);
}

/* The bits of the version an id does not carry: together, 59 bits tell
 * versions of one inode apart, and the generation alone tells objects that
 * reuse an inode number apart. */
uint32_t ck_nodes_generation(const struct stat *st, uint64_t ident)
{
	return (uint32_t)(version_of(st, ident) >> 32);
}

uint64_t ck_nodes_entry_ino(const struct ck_nodes *t, dev_t dev, ino_t ino, unsigned view)
{
	return id_of(t, dev, ino, 0, view);
}

uint64_t ck_nodes_view_root(const struct ck_nodes *t, unsigned view)
{
	return id_of(t, t->root_dev, t->root_ino, 0, view);
}

int ck_nodes_root_fd(const struct ck_nodes *t)
{
	return t->root_fd;
}

/* Called with the lock held (or before the table is shared). */
static struct node *find(struct ck_nodes *t, uint64_t id)
{
	struct node *n;

	HASH_FIND(hh, t->table, &id, sizeof(id), n);
	return n;
}

static struct node *insert(struct ck_nodes *t, uint64_t id, uint64_t parent, const char *name,
			   unsigned view)
{
	struct node *n = calloc(1, sizeof(*n));

	if (!n)
		return NULL;
	n->id = id;
	n->parent = parent;
	n->view = view;
	if (name && !(n->name = strdup(name))) {
		free(n);
		return NULL;
	}
	HASH_ADD(hh, t->table, id, sizeof(n->id), n);
	if (!n->hh.tbl) {
		free(n->name);
		free(n);
		return NULL;
	}
	return n;
}

static int insert_pinned(struct ck_nodes *t, uint64_t id, unsigned view)
{
	struct node *n = insert(t, id, CK_NODES_ROOT_ID, NULL, view);

	if (!n)
		return -1;
	n->pinned = true;
	return 0;
}

struct ck_nodes *ck_nodes_new(int root_fd, unsigned nviews)
{
	struct ck_nodes *t;
	struct stat st;

	if (nviews > CK_NODES_MAX_VIEWS) {
		errno = EINVAL;
		return NULL;
	}
	if (fstat(root_fd, &st) || !(t = calloc(1, sizeof(*t))))
		return NULL;
	pthread_mutex_init(&t->lock, NULL);
	t->root_dev = st.st_dev;
	t->root_ino = st.st_ino;
	t->nviews = nviews;
	t->find_budget = FIND_MAX_ENTRIES;
	/* The mount root belongs to no view: view index nviews. */
	if (insert_pinned(t, CK_NODES_ROOT_ID, nviews))
		goto fail;
	for (unsigned v = 0; v < nviews; v++)
		if (insert_pinned(t, ck_nodes_view_root(t, v), v))
			goto fail;
	t->root_fd = root_fd;
	return t;
fail:
	t->root_fd = -1;
	ck_nodes_free(t);
	errno = ENOMEM;
	return NULL;
}

void ck_nodes_free(struct ck_nodes *t)
{
	struct node *n, *tmp;

	if (!t)
		return;
	HASH_ITER(hh, t->table, n, tmp) {
		HASH_DEL(t->table, n);
		free(n->name);
		free(n);
	}
	if (t->root_fd >= 0)
		close(t->root_fd);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

/* Called with the lock held. Drops a node nothing refers to any more, and
 * then its parent if that was the last thing keeping it. */
static void drop_unused(struct ck_nodes *t, struct node *n)
{
	while (n && !n->pinned && n->nlookup == 0 && n->nchildren == 0) {
		struct node *parent = find(t, n->parent);

		HASH_DEL(t->table, n);
		free(n->name);
		free(n);
		if (parent)
			parent->nchildren--;
		n = parent;
	}
}

/* Called with the lock held. Whether node is ancestor or lies beneath it. */
static bool is_at_or_beneath(struct ck_nodes *t, const struct node *node, const struct node *ancestor)
{
	for (; node->name; node = find(t, node->parent))
		if (node == ancestor)
			return true;
	return node == ancestor;
}

/* Called with the lock held. The object was found under another name (a
 * hard link, or a rename in the source): remember the newest place, which
 * was just checked, unless that would loop through stale parents. */
static void move(struct ck_nodes *t, struct node *n, struct node *parent, const char *name)
{
	struct node *old_parent;
	char *copy;

	if (n->pinned || (n->parent == parent->id && strcmp(n->name, name) == 0) ||
	    is_at_or_beneath(t, parent, n) || !(copy = strdup(name)))
		return; /* out of memory: the old place is stale at worst, and is checked */
	old_parent = find(t, n->parent);
	free(n->name);
	n->name = copy;
	n->parent = parent->id;
	parent->nchildren++;
	old_parent->nchildren--;
	drop_unused(t, old_parent);
}

/* Called with the lock held. */
static int remember(struct ck_nodes *t, uint64_t id, uint64_t parent_id, const char *name,
		    uint64_t nlookup, uint64_t ident)
{
	struct node *parent = find(t, parent_id), *n;

	if (!parent)
		return -ESTALE;
	n = find(t, id);
	if (n) {
		move(t, n, parent, name);
	} else {
		if (!(n = insert(t, id, parent_id, name, parent->view)))
			return -ENOMEM;
		parent->nchildren++;
	}
	n->nlookup += nlookup;
	if (ident)
		n->ident = ident;
	return 0;
}

int ck_nodes_ref_child(struct ck_nodes *t, uint64_t id, uint64_t parent, const char *name,
		       uint64_t ident, bool passthrough)
{
	struct node *n;
	int err;

	pthread_mutex_lock(&t->lock);
	err = remember(t, id, parent, name, 1, ident);
	if (!err && (n = find(t, id)))
		n->passthrough = passthrough;
	pthread_mutex_unlock(&t->lock);
	return err;
}

void ck_nodes_told(struct ck_nodes *t, uint64_t id, uint64_t now_ns, bool no_acl)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = find(t, id);
	if (n) {
		n->told_ns = now_ns;
		n->no_acl = no_acl;
	}
	pthread_mutex_unlock(&t->lock);
}

bool ck_nodes_told_since(struct ck_nodes *t, uint64_t id, uint64_t since_ns, bool *no_acl)
{
	struct node *n;
	bool told;

	pthread_mutex_lock(&t->lock);
	n = find(t, id);
	told = n && n->nlookup && n->told_ns && n->told_ns >= since_ns;
	if (told && no_acl)
		*no_acl = n->no_acl;
	pthread_mutex_unlock(&t->lock);
	return told;
}

int ck_nodes_ref(struct ck_nodes *t, uint64_t id)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = find(t, id);
	if (n)
		n->nlookup++;
	pthread_mutex_unlock(&t->lock);
	return n ? 0 : -ESTALE;
}

void ck_nodes_forget(struct ck_nodes *t, uint64_t id, uint64_t nlookup)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = find(t, id);
	if (n) {
		n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
		drop_unused(t, n);
	}
	pthread_mutex_unlock(&t->lock);
}

int ck_nodes_parent(struct ck_nodes *t, uint64_t id, uint64_t *parent)
{
	struct node *n;

	pthread_mutex_lock(&t->lock);
	n = find(t, id);
	if (n)
		*parent = n->parent;
	pthread_mutex_unlock(&t->lock);
	return n ? 0 : -ESTALE;
}

/* Called with the lock held. The node's path relative to the source root
 * (malloc'd, of any length), by walking up to its view root. */
static int path_of(struct ck_nodes *t, uint64_t id, char **path, unsigned *view, uint64_t *ident,
		   bool *passthrough)
{
	struct node *n = find(t, id);
	size_t len = 0, at;
	char *buf;

	if (!n || n->id == CK_NODES_ROOT_ID)
		return -ESTALE;
	*view = n->view;
	*ident = n->ident;
	*passthrough = n->passthrough;
	for (const struct node *p = n; p->name; p = find(t, p->parent))
		len += strlen(p->name) + 1;
	if (!(*path = buf = malloc(len ? len : 2)))
		return -ENOMEM;
	if (len == 0) {
		strcpy(buf, ".");
		return 0;
	}
	at = len - 1;
	buf[at] = '\0';
	for (const struct node *p = n; p->name; p = find(t, p->parent)) {
		size_t l = strlen(p->name);

		at -= l;
		memcpy(buf + at, p->name, l);
		if (at)
			buf[--at] = '/';
	}
	return 0;
}

/* Sets loc->path to dir/name (dir "." for the root, name "" for none): the
 * whole path where it fits, else CK_NODES_CUT and its last components. */
static void show_path(struct ck_located *loc, const char *dir, const char *name, bool cut)
{
	size_t room = sizeof(loc->path) - sizeof(CK_NODES_CUT);
	char *full = NULL, *tail;
	int n;

	if (strcmp(dir, ".") == 0 && *name)
		dir = "";
	loc->cut = false;
	if (!cut && snprintf(loc->path, sizeof(loc->path), "%s%s%s", dir, *dir && *name ? "/" : "", name) <
			    (int)sizeof(loc->path))
		return; /* the usual case: no copy */
	loc->cut = true;
	n = asprintf(&full, "%s%s%s", dir, *dir && *name ? "/" : "", name);
	if (n < 0) {
		snprintf(loc->path, sizeof(loc->path), "%s", CK_NODES_CUT);
		return;
	}
	tail = (size_t)n > room ? full + n - room : full;
	if (tail > full && tail[-1] != '/' && strchr(tail, '/'))
		tail = strchr(tail, '/') + 1; /* whole names only */
	if (strncmp(tail, CK_NODES_CUT, sizeof(CK_NODES_CUT) - 1) == 0)
		tail += sizeof(CK_NODES_CUT) - 1;
	snprintf(loc->path, sizeof(loc->path), "%s%s", CK_NODES_CUT, tail);
	free(full);
}

/* The kernel refuses any symlink on the way and any step out of dirfd. */
static int openat2_beneath(int dirfd, const char *path)
{
	struct open_how how = {
		.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
	};
	long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));

	return fd < 0 ? -errno : (int)fd;
}

/* The same walk where openat2 is missing (kernels before 5.6, seccomp
 * filters that predate it, valgrind): one component at a time, none
 * followed if it is a symlink (the next step then fails with ENOTDIR).
 * Paths built here never hold "..". */
static int open_each_component(int dirfd, const char *path)
{
	char copy[PATH_MAX], *rest = copy, *name;
	int fd;

	if (!strchr(path, '/')) { /* one name (a lookup's): nothing to copy or walk */
		fd = openat(dirfd, path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		return fd < 0 ? -errno : fd;
	}
	if (snprintf(copy, sizeof(copy), "%s", path) >= (int)sizeof(copy))
		return -ENAMETOOLONG;
	fd = openat(dirfd, ".", O_PATH | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while (fd >= 0 && (name = strsep(&rest, "/"))) {
		int next = openat(fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		int err = errno;

		close(fd);
		fd = next < 0 ? -err : next;
	}
	return fd;
}

void ck_nodes_set_find_budget(struct ck_nodes *t, size_t entries)
{
	t->find_budget = entries;
}

void ck_nodes_set_self_dev(struct ck_nodes *t, dev_t dev)
{
	atomic_store(&t->self_dev, dev);
}

/* Whether dev is this mount's own: seen in the source through a bind
 * mount with shared propagation, entering it would have the daemon wait
 * on itself, one thread more at each level, until none is left. */
static bool is_self(struct ck_nodes *t, dev_t dev)
{
	dev_t self = atomic_load(&t->self_dev);
	return self != 0 && dev == self;
}

/* The device of an open object without asking its file system (for our own
 * mount that would be a request to ourselves). */
static dev_t dev_of(int fd)
{
	struct statx stx;

	if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, 0, &stx))
		return 0;
	return makedev(stx.stx_dev_major, stx.stx_dev_minor);
}

/* One piece of a path (shorter than PATH_MAX) beneath dirfd. */
static int open_piece(int dirfd, const char *piece)
{
	static atomic_bool no_openat2;
	int fd = -ENOSYS;

	if (!atomic_load_explicit(&no_openat2, memory_order_relaxed))
		fd = openat2_beneath(dirfd, piece);
	if (fd == -ENOSYS) {
		atomic_store_explicit(&no_openat2, true, memory_order_relaxed);
		fd = open_each_component(dirfd, piece);
	}
	return fd;
}

/* A path longer than the kernel takes (a source tree deeper than PATH_MAX)
 * is opened in pieces, each beneath the last. */
static int open_pieces(int dirfd, const char *path)
{
	char piece[PATH_MAX];
	int fd = dirfd;

	do {
		size_t n = strlen(path);
		const char *slash;
		int next;

		if (n >= sizeof(piece)) {
			slash = memrchr(path, '/', sizeof(piece) - 1);
			n = slash ? (size_t)(slash - path) : 0;
		}
		memcpy(piece, path, n);
		piece[n] = '\0';
		next = n ? open_piece(fd, piece) : -ENAMETOOLONG;
		if (fd != dirfd)
			close(fd);
		if (next < 0)
			return next;
		fd = next;
		path += n + (path[n] == '/');
	} while (*path);
	return fd;
}

/* Opens path beneath dirfd as an O_PATH descriptor, never following a
 * symlink, so a source tree changing under us cannot lead the daemon
 * elsewhere. A symlink as the last component is opened itself; this
 * mount itself (in the source through an alias) is refused: ELOOP. */
static int open_beneath(struct ck_nodes *t, int dirfd, const char *path, struct ck_located *loc)
{
	int fd = open_pieces(dirfd, path);

	if (fd < 0)
		return fd;
	if (is_self(t, dev_of(fd))) {
		close(fd);
		return -ELOOP;
	}
	if (fstat(fd, &loc->st)) {
		int err = -errno;
		close(fd);
		return err;
	}
	loc->ident = ck_nodes_ident(fd, "", AT_EMPTY_PATH);
	loc->fd = fd;
	return 0;
}

/* A node whose path no longer leads to it (renamed, deleted, replaced by a
 * symlink) is a stale handle, not a missing name. */
static int stale_if_moved(int err)
{
	return err == -ENOENT || err == -ENOTDIR || err == -ELOOP || err == -EXDEV ? -ESTALE : err;
}

int ck_nodes_locate_latest(struct ck_nodes *t, uint64_t id, struct ck_located *loc, bool *passthrough)
{
	uint64_t ident;
	char *path;
	int err;

	pthread_mutex_lock(&t->lock);
	err = path_of(t, id, &path, &loc->view, &ident, passthrough);
	pthread_mutex_unlock(&t->lock);
	if (err)
		return err;
	err = open_beneath(t, t->root_fd, path, loc);
	if (!err)
		show_path(loc, path, "", false);
	free(path);
	if (err)
		return stale_if_moved(err);
	if (ck_nodes_id(t, &loc->st, loc->ident, loc->view) == id)
		return 0;
	/* the same file (its number on a readable id, its handle) at another version */
	if (S_ISREG(loc->st.st_mode) && loc->ident == ident &&
	    (id >> 63 || (uint64_t)loc->st.st_ino == id >> 31))
		return CK_NODES_CHANGED;
	close(loc->fd);
	return -ESTALE;
}

int ck_nodes_path(struct ck_nodes *t, uint64_t id, char **path)
{
	uint64_t ident;
	unsigned view;
	bool passthrough;
	int err;

	pthread_mutex_lock(&t->lock);
	err = path_of(t, id, path, &view, &ident, &passthrough);
	pthread_mutex_unlock(&t->lock);
	return err;
}

int ck_nodes_locate(struct ck_nodes *t, uint64_t id, struct ck_located *loc)
{
	bool passthrough;
	int err = ck_nodes_locate_latest(t, id, loc, &passthrough);

	if (err == CK_NODES_CHANGED) {
		close(loc->fd);
		return -ESTALE;
	}
	return err;
}

int ck_nodes_locate_child(struct ck_nodes *t, uint64_t parent, const char *name,
			  struct ck_located *loc)
{
	struct ck_located dir;
	int err;

	err = ck_nodes_locate(t, parent, &dir);
	if (err)
		return err;
	err = ck_nodes_locate_in(t, &dir, name, loc);
	close(dir.fd);
	return err;
}

int ck_nodes_locate_in(struct ck_nodes *t, const struct ck_located *dir, const char *name,
		       struct ck_located *loc)
{
	int err = open_beneath(t, dir->fd, name, loc);

	if (err)
		return err;
	loc->view = dir->view;
	show_path(loc, dir->path, name, dir->cut);
	return 0;
}

/* A depth-first search of the source tree for the object a forgotten id
 * names. Ids say which inode, not where it is. */
struct search {
	struct ck_nodes *t;
	uint64_t id;
	size_t budget;                        /* entries still allowed */
	char *path;                           /* the current place, relative to the root */
	size_t room;                          /* allocated for path */
	struct { dev_t dev; ino_t ino; } at[PATH_MAX / 2]; /* each component of path */
	size_t depth;
	unsigned view;                        /* of the match */
	uint64_t ident;                       /* of the match */
};

static bool matches(struct search *s, int dirfd, const char *name, const struct stat *st)
{
	uint64_t ident = ck_nodes_ident(dirfd, name, 0);

	for (unsigned v = 0; v < s->t->nviews; v++) {
		if (ck_nodes_id(s->t, st, ident, v) == s->id) {
			s->view = v;
			s->ident = ident;
			return true;
		}
	}
	return false;
}

/* Readable ids carry the inode number, so most entries need no stat. */
static bool worth_a_stat(const struct search *s, const struct dirent *de)
{
	bool hashed = s->id >> 63;

	return hashed || de->d_type == DT_DIR || de->d_type == DT_UNKNOWN || de->d_ino == s->id >> 31;
}

static bool search_dir(struct search *s, int fd, size_t len);

/* Spares a file handle for directories passed on the way. */
static bool hashed_or_same_ino(const struct search *s, const struct stat *st)
{
	return s->id >> 63 || (uint64_t)st->st_ino == s->id >> 31;
}

/* Makes room in s->path for size bytes: paths may be longer than PATH_MAX. */
static bool path_room(struct search *s, size_t size)
{
	char *p;

	if (size <= s->room)
		return true;
	if (!(p = realloc(s->path, size > 2 * s->room ? size : 2 * s->room)))
		return false;
	s->room = size > 2 * s->room ? size : 2 * s->room;
	s->path = p;
	return true;
}

/* Visits one entry of the directory at s->path (len bytes). */
static bool search_entry(struct search *s, int dirfd, const char *name, size_t len)
{
	size_t nl = strlen(name), sub_len = len ? len + 1 + nl : nl;
	struct stat st;
	int fd;

	if (!path_room(s, sub_len + 1) || s->depth == sizeof(s->at) / sizeof(s->at[0]) ||
	    fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW))
		return false;
	if (len)
		s->path[len] = '/';
	memcpy(s->path + sub_len - nl, name, nl + 1);
	s->at[s->depth].dev = st.st_dev;
	s->at[s->depth].ino = st.st_ino;
	s->depth++;
	if ((hashed_or_same_ino(s, &st)) && matches(s, dirfd, name, &st))
		return true;
	if (S_ISDIR(st.st_mode) && !is_self(s->t, st.st_dev) &&
	    (fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) >= 0 &&
	    search_dir(s, fd, sub_len))
		return true;
	s->depth--;
	s->path[len] = '\0';
	return false;
}

/* Searches the directory open as fd (closed here), at s->path (len bytes). */
static bool search_dir(struct search *s, int fd, size_t len)
{
	DIR *d = fdopendir(fd);
	struct dirent *de;
	bool found = false;

	if (!d) {
		close(fd);
		return false;
	}
	while (!found && s->budget && (de = readdir(d))) {
		s->budget--;
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && worth_a_stat(s, de))
			found = search_entry(s, dirfd(d), de->d_name, len);
	}
	closedir(d);
	return found;
}

/* Called with the lock held. Remembers every directory on the way to the
 * match (held by their children only) and takes one reference on it. */
static int remember_found(struct ck_nodes *t, struct search *s)
{
	uint64_t parent = ck_nodes_view_root(t, s->view);
	char *name = s->path;

	for (size_t i = 0; i < s->depth; i++) {
		char *slash = strchr(name, '/');
		bool last = i + 1 == s->depth;
		uint64_t id = last ? s->id : id_of(t, s->at[i].dev, s->at[i].ino, 0, s->view);
		int err;

		if (slash)
			*slash = '\0';
		err = remember(t, id, parent, name, last, last ? s->ident : 0);
		if (err) {
			drop_unused(t, find(t, parent));
			return err;
		}
		parent = id;
		if (slash)
			name = slash + 1;
	}
	return 0;
}

int ck_nodes_find_and_ref(struct ck_nodes *t, uint64_t id)
{
	struct search *s = calloc(1, sizeof(*s));
	int fd, err = -ESTALE;

	if (!s)
		return -ENOMEM;
	s->t = t;
	s->id = id;
	s->budget = t->find_budget;
	fd = openat(t->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0 && search_dir(s, fd, 0)) {
		pthread_mutex_lock(&t->lock);
		err = remember_found(t, s);
		pthread_mutex_unlock(&t->lock);
	}
	free(s->path);
	free(s);
	return err;
}
