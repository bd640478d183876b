#include <config.h>
#include "fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <utlist.h>
#include "cache.h"
#include "fdquota.h"
#include "fuseio.h"
#include "handles.h"
#include "linkpath.h"
#include "log.h"
#include "mountinfo.h"
#include "nodes.h"
#include "view.h"

_Static_assert(CK_NODES_ROOT_ID == FUSE_ROOT_ID, "the node table's root is the mount root");


/* Names and attributes stay valid in the kernel this long; a name that does
 * not exist is never cached, so files added to the source show up at once.
 * An open of a name whose file changed since is answered ESTALE, and the
 * kernel looks the name up again: opens see the newest version at once. */
#define TIMEOUT 1.0

/* How long a build waits for its memory (cache.h) before its file fails
 * this time: long enough for a queue of large builds, short enough that a
 * stat of a hostile file does not hang its caller. */
#define CK_FS_CLAIM_WAIT_S 10

/* How long a name in a message may be: a log line has room for 1024 bytes,
 * the message too. */
#define VIEW_PATH_MAX 400

struct ck_fs {
	struct ck_nodes *nodes;
	struct ck_cache *cache;
	const struct ck_view *const *views; /* one top-level directory each */
	size_t nviews;
	char *roots[2];                     /* the source as link targets name it */
	size_t nroots;
	/* Files the kernel holds open: unmounting sends no release for them,
	 * so the daemon closes what is left when it ends. */
	pthread_mutex_t open_lock;
	struct open_file *open_files;
	/* fi->fh of open files and of open directories (handles.h); unmounting
	 * sends no releasedir for directories still open either */
	struct ck_handles *handles, *dirs;
	/* This daemon took the connection over (ckptfs restart): the kernel
	 * holds node ids and handles the predecessor gave it. */
	bool took_over;
	bool direct_io;         /* -o direct_io: no page cache (ck_fs_set_direct_io) */
	struct ck_fdquota *fdq; /* each user's share of the descriptors */
};

/* A regular source file open for reading, with its built view held. */
struct source_file {
	int fd;
	struct stat st;
	struct ck_cache_entry *ent;
};

/* An open view file. It keeps its own source descriptor: a source replaced
 * by rename keeps serving the version that was opened. */
struct open_file {
	struct source_file src;    /* src.st: the version opened */
	uint64_t id;
	uint32_t generation;       /* of the version opened */
	bool passthrough;          /* no checkpoint: read as the source is now */
	pthread_mutex_t lease_lock;
	unsigned leases;           /* reads in flight under the read lease */
	/* The kernel's reference, and one per read still holding the lease
	 * after its reply, when the release may already be running. */
	atomic_uint refs;
	char name[VIEW_PATH_MAX];
	atomic_flag told_changed;
	uid_t uid;                     /* who opened it: its descriptor counts against them */
	struct open_file *prev, *next; /* in fs->open_files */
};

/* What lookup and getattr answer for a node. */
struct node_attr {
	struct stat attr;          /* st_ino: the node id */
	uint32_t generation;
	bool passthrough;          /* a regular file that is no checkpoint */
};

/* An open source directory; readdir continues where the last call ended. */
struct dir_handle {
	DIR *dp;
	dev_t dev;
	unsigned view;
	off_t offset;
	struct dirent *pending; /* read but not yet replied: it did not fit */
	uid_t uid;              /* who opened it: its descriptor counts against them */
};

struct ck_fs *ck_fs_new(int root_fd, const struct ck_view *const *views, size_t nviews, size_t cache_bytes,
		       struct ck_err *e)
{
	struct ck_fs *fs;

	if (nviews > CK_NODES_MAX_VIEWS) {
		ck_err_set(e, EINVAL, "at most %d views", CK_NODES_MAX_VIEWS);
		return NULL;
	}
	if (!(fs = calloc(1, sizeof(*fs))) || !(fs->cache = ck_cache_new(cache_bytes, CK_FS_CLAIM_WAIT_S)) ||
	    ck_fs_take_over(fs, 0) || !(fs->fdq = ck_fdquota_new(ck_fdquota_raise_limit()))) {
		if (fs) {
			ck_cache_free(fs->cache);
			ck_handles_free(fs->handles, NULL);
			ck_handles_free(fs->dirs, NULL);
		}
		free(fs);
		ck_err_nomem(e);
		return NULL;
	}
	fs->views = views;
	fs->nviews = nviews;
	/* A writer opening a source in the instant being_written() holds its
	 * lease makes the kernel send SIGIO, which would end the daemon. */
	signal(SIGIO, SIG_IGN);
	pthread_mutex_init(&fs->open_lock, NULL);
	fs->nodes = ck_nodes_new(root_fd, (unsigned)nviews);
	if (!fs->nodes) {
		ck_err_set(e, errno, "%s", strerror(errno));
		ck_handles_free(fs->handles, NULL);
		ck_handles_free(fs->dirs, NULL);
		ck_cache_free(fs->cache);
		ck_fdquota_free(fs->fdq);
		free(fs);
		return NULL;
	}
	return fs;
}

static void close_view_file(struct ck_fs *fs, struct open_file *of);
static void drop_dir(void *d);

void ck_fs_free(struct ck_fs *fs)
{
	if (!fs)
		return;
	while (fs->open_files) {
		struct open_file *of = fs->open_files;
		DL_DELETE(fs->open_files, of);
		close_view_file(fs, of);
	}
	pthread_mutex_destroy(&fs->open_lock);
	for (size_t i = 0; i < fs->nroots; i++)
		free(fs->roots[i]);
	ck_handles_free(fs->handles, NULL); /* the files went with open_files */
	ck_handles_free(fs->dirs, drop_dir);
	ck_nodes_free(fs->nodes);
	ck_cache_free(fs->cache);
	ck_fdquota_free(fs->fdq);
	free(fs);
}

void ck_fs_set_direct_io(struct ck_fs *fs, bool on)
{
	fs->direct_io = on;
}

/* Also what a new mount does, with epoch 0 (no predecessor). */
int ck_fs_take_over(struct ck_fs *fs, uint32_t epoch)
{
	struct ck_handles *files = ck_handles_new(epoch), *dirs = ck_handles_new(epoch);

	if (!files || !dirs) {
		ck_handles_free(files, NULL);
		ck_handles_free(dirs, NULL);
		return -ENOMEM;
	}
	ck_handles_free(fs->handles, NULL);
	ck_handles_free(fs->dirs, NULL);
	fs->handles = files;
	fs->dirs = dirs;
	fs->took_over = epoch > 0;
	return 0;
}

void ck_fs_note_mount(struct ck_fs *fs, const char *mountpoint)
{
	struct ck_mountinfo mi;
	unsigned maj, min;

	if (ck_mountinfo_find(mountpoint, &mi) && sscanf(mi.dev, "%u:%u", &maj, &min) == 2)
		ck_nodes_set_self_dev(fs->nodes, makedev(maj, min));
	else
		ck_log(LOG_WARNING, "%s: not in /proc/self/mountinfo; a mount inside its own source is not detected",
		       mountpoint);
}

static struct ck_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

int ck_fs_add_source_path(struct ck_fs *fs, const char *path, struct ck_err *e)
{
	char cwd[PATH_MAX], *root;

	if (fs->nroots == sizeof(fs->roots) / sizeof(fs->roots[0]))
		return ck_err_set(e, EINVAL, "%s: at most %zu source paths", path, fs->nroots);
	if (path[0] != '/' && !getcwd(cwd, sizeof(cwd)))
		return ck_err_set(e, errno, "%s: %s", path, strerror(errno));
	if (!(root = ck_link_root(path, path[0] == '/' ? "/" : cwd)))
		return errno == ENOMEM ? ck_err_nomem(e) : 0; /* with "..": realpath's form covers it */
	for (size_t i = 0; i < fs->nroots; i++)
		if (strcmp(fs->roots[i], root) == 0) {
			free(root);
			return 0;
		}
	fs->roots[fs->nroots++] = root;
	return 0;
}

/* An id the table does not know, in a request other than lookup("."),
 * after a take-over: the predecessor gave it to the kernel. Finds it in the
 * source tree and holds it for the kernel, which counted its references
 * with the predecessor; its forget drops it. */
static bool adopted(struct ck_fs *fs, uint64_t id, int err)
{
	return err == -ESTALE && fs->took_over && ck_nodes_find_and_ref(fs->nodes, id) == 0;
}

static int locate(struct ck_fs *fs, uint64_t id, struct ck_located *loc)
{
	int err = ck_nodes_locate(fs->nodes, id, loc);

	return adopted(fs, id, err) ? ck_nodes_locate(fs->nodes, id, loc) : err;
}

static int locate_latest(struct ck_fs *fs, uint64_t id, struct ck_located *loc, bool *passthrough)
{
	int err = ck_nodes_locate_latest(fs->nodes, id, loc, passthrough);

	return adopted(fs, id, err) ? ck_nodes_locate_latest(fs->nodes, id, loc, passthrough) : err;
}

/* How messages name a view file: "plain/a/x.pth"; a longer name than a
 * message has room for keeps its end: "plain/…/b/x.pth". */
static void view_path(const struct ck_fs *fs, const struct ck_located *loc, char *buf, size_t size)
{
	const char *view = fs->views[loc->view]->name, *tail = loc->path;
	size_t cut = strlen(CK_NODES_CUT), len = strlen(tail), room = size - strlen(view) - cut - 2;

	if (strcmp(tail, ".") == 0) {
		snprintf(buf, size, "%s", view);
		return;
	}
	if (strncmp(tail, CK_NODES_CUT, cut) != 0 && snprintf(buf, size, "%s/%s", view, tail) < (int)size)
		return;
	if (strncmp(tail, CK_NODES_CUT, cut) == 0) {
		tail += cut;
		len -= cut;
	}
	if (len > room) {
		tail += len - room;
		if (tail[-1] != '/' && strchr(tail, '/'))
			tail = strchr(tail, '/') + 1; /* whole names only */
	}
	snprintf(buf, size, "%s/%s%.*s", view, CK_NODES_CUT, (int)(room < len ? room : len), tail);
}

/* Opens a located object for real. Only through its O_PATH descriptor:
 * opening the path again could reach another file, and opening a FIFO or
 * device found at the path could block or have effects. */
static int reopen(const struct ck_located *loc, int flags)
{
	char proc[32];
	int fd;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", loc->fd);
	fd = open(proc, flags | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Whether a process has the source open for writing. A write changes ctime
 * when it starts, not when it ends: a version sampled while one runs is not
 * settled, and its bytes may be half old, half new. A read lease is refused
 * exactly then; it is taken and dropped at once. Where no lease can be taken
 * (a daemon without CAP_LEASE reading another user's file, a file system
 * without leases) nothing can be told: the file counts as settled. */
static bool being_written(int fd)
{
	if (fcntl(fd, F_SETLEASE, F_RDLCK) == 0) {
		(void)fcntl(fd, F_SETLEASE, F_UNLCK);
		return false;
	}
	return errno == EAGAIN;
}

/* A source open for writing has no settled version: its node is not the
 * one it will have when the writer closes it, and its view is not built. */
#define UNSETTLED UINT64_C(0x5e771ed0b5e771ed)

static void close_source(struct ck_fs *fs, struct source_file *sf);

/* Files that are no checkpoints are served as they are. */
static bool is_passthrough(const struct ck_built *b)
{
	return b->format == CK_FORMAT_OTHER && !b->err.code;
}

/* Opens a located regular file and gets its built view (building it the
 * first time this version of the file is seen). -EBUSY (sf->st filled,
 * nothing held) for a checkpoint a process has open for writing; a file
 * that is none (a log) is served while it is written. */
static int open_source(struct ck_fs *fs, const struct ck_located *loc, struct source_file *sf)
{
	char name[VIEW_PATH_MAX];
	struct ck_src src;
	struct ck_cache_key key;
	struct ck_err e;

	/* O_NONBLOCK: a lease on the source (any owner may take one) makes
	 * the open fail at once instead of stalling this thread and every
	 * lookup in its directory until the lease breaks */
	view_path(fs, loc, name, sizeof(name));
	sf->fd = reopen(loc, O_RDONLY | O_NOCTTY | O_NONBLOCK);
	if (sf->fd == -EWOULDBLOCK) {
		ck_log(LOG_WARNING, "%s: the source is under a lease; not read until it is released", name);
		return sf->fd;
	}
	if (sf->fd < 0)
		return sf->fd;
	if (fcntl(sf->fd, F_SETFL, 0) /* blocking reads again */ || fstat(sf->fd, &sf->st)) {
		int err = -errno;
		close(sf->fd);
		return err;
	}
	src = (struct ck_src){.fd = sf->fd, .size = (uint64_t)sf->st.st_size, .name = name};
	key = ck_cache_key_of(&sf->st, fs->views[loc->view]);
	key.unsettled = being_written(sf->fd);
	sf->ent = ck_cache_get(fs->cache, &key, &src, &e);
	if (!sf->ent) {
		close(sf->fd);
		return ck_log_err(name, &e);
	}
	if (key.unsettled && !is_passthrough(ck_cache_built(sf->ent))) {
		close_source(fs, sf);
		return -EBUSY;
	}
	return 0;
}

static void close_source(struct ck_fs *fs, struct source_file *sf)
{
	ck_cache_put(fs->cache, sf->ent);
	close(sf->fd);
}

/* What a view shows of a source object: its attributes without write
 * permission, the node id as inode number and, for a file with a layout,
 * the size of the view. */
static void view_attr(const struct stat *src, uint64_t id, const struct ck_built *b, struct stat *out)
{
	*out = *src;
	out->st_ino = id;
	out->st_mode &= ~(mode_t)(S_IWUSR | S_IWGRP | S_IWOTH);
	if (b && b->layout)
		out->st_size = (off_t)b->layout->size;
}

/* The node a located object is at the version st shows. */
static void located_node(struct ck_fs *fs, const struct ck_located *loc, const struct stat *st,
			 uint64_t ident, const struct ck_built *b, struct node_attr *na)
{
	view_attr(st, ck_nodes_id(fs->nodes, st, ident, loc->view), b, &na->attr);
	na->generation = ck_nodes_generation(st, ident);
	na->passthrough = b && is_passthrough(b);
}

/* A version of a file whose view is built answers from the cache, without
 * opening the file: the cache key is what fstat of the O_PATH descriptor
 * says (size, mtime, ctime), and a view is kept only when the file held
 * that version throughout its build. A writer that opened the file since
 * but wrote nothing yet changes no byte; an open checks for one itself. */
static bool built_attr(struct ck_fs *fs, const struct ck_located *loc, struct node_attr *na)
{
	struct ck_cache_key key = ck_cache_key_of(&loc->st, fs->views[loc->view]);
	struct ck_cache_entry *ent = ck_cache_find(fs->cache, &key);

	if (!ent)
		return false;
	located_node(fs, loc, &loc->st, loc->ident, ck_cache_built(ent), na);
	ck_cache_put(fs->cache, ent);
	return true;
}

/* A regular file's view is built here, so its size is exact before the
 * first read; its id is of the version the view was built from. A file the
 * daemon may not read, or whose view failed to build, keeps its source
 * size: it stays visible and open says why not. */
static int located_attr(struct ck_fs *fs, const struct ck_located *loc, struct node_attr *na)
{
	struct source_file sf;
	int err;

	if (!S_ISREG(loc->st.st_mode)) {
		located_node(fs, loc, &loc->st, loc->ident, NULL, na);
		return 0;
	}
	if (built_attr(fs, loc, na))
		return 0;
	err = open_source(fs, loc, &sf);
	if (err == -EACCES || err == -EPERM || err == -EWOULDBLOCK || err == -EBUSY) {
		located_node(fs, loc, err == -EBUSY ? &sf.st : &loc->st,
			     err == -EBUSY ? loc->ident ^ UNSETTLED : loc->ident, NULL, na);
		return 0;
	}
	if (err)
		return err;
	located_node(fs, loc, &sf.st, loc->ident, ck_cache_built(sf.ent), na);
	close_source(fs, &sf);
	return 0;
}

/* The mount root shows the source root's owner and times. */
static int root_attr(struct ck_fs *fs, struct stat *attr)
{
	struct stat st;

	if (fstat(ck_nodes_root_fd(fs->nodes), &st))
		return -errno;
	view_attr(&st, FUSE_ROOT_ID, NULL, attr);
	attr->st_nlink = 2 + fs->nviews;
	return 0;
}

static int open_version_attr(struct ck_fs *fs, uint64_t id, struct node_attr *na);

/* A node at another version than its source now is answered from a file
 * open at that version (the source was replaced), or as the source is now
 * when both are no checkpoints (a log appended to); else it is stale. */
static int node_attr(struct ck_fs *fs, uint64_t id, struct node_attr *na)
{
	struct ck_located loc;
	bool passthrough;
	int err;

	if (id == FUSE_ROOT_ID) {
		na->generation = 0;
		return root_attr(fs, &na->attr);
	}
	err = locate_latest(fs, id, &loc, &passthrough);
	if (err < 0)
		return err == -ESTALE ? open_version_attr(fs, id, na) : err;
	err = located_attr(fs, &loc, na);
	close(loc.fd);
	if (err || na->attr.st_ino == id)
		return err;
	if (passthrough && na->passthrough) {
		na->attr.st_ino = id;
		return 0;
	}
	return open_version_attr(fs, id, na);
}

/* Takes a lookup reference on a node the table knows (or, may_find, one
 * it forgot) before reading its attributes, so a concurrent forget cannot
 * drop it in between. */
static int ref_node(struct ck_fs *fs, uint64_t id, bool may_find, struct node_attr *na)
{
	int err = ck_nodes_ref(fs->nodes, id);

	if (err == -ESTALE && may_find)
		err = ck_nodes_find_and_ref(fs->nodes, id);
	if (err)
		return err;
	err = node_attr(fs, id, na);
	if (err)
		ck_nodes_forget(fs->nodes, id, 1);
	return err;
}

/* READDIRPLUS: beside each name, what a lookup of it answers, where that is
 * cheap, and a lookup reference the kernel takes with it. */
struct plus {
	uint64_t parent;       /* the directory's node id */
	struct ck_located dir; /* located for this call; fd -1: names alone */
	bool build;            /* views not built yet may be built */
	uint64_t *ids;         /* the references taken for this reply */
	size_t n;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Since when what the kernel was told still holds there (a reply's time
 * is taken before it is sent, so the kernel's own timeout ends later). */
static uint64_t told_window(uint64_t now)
{
	uint64_t t = (uint64_t)(TIMEOUT * 1e9);

	return now > t ? now - t : 0;
}

static const char *const acl_names[];

/* Whether a located source object has no access ACL (a symlink has none).
 * By its O_PATH descriptor: no open, no lease to break. */
static bool has_no_acl(const struct ck_located *loc)
{
	char proc[32];

	if (S_ISLNK(loc->st.st_mode))
		return true;
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", loc->fd);
	return getxattr(proc, acl_names[0], NULL, 0) < 0 && (errno == ENODATA || errno == EOPNOTSUPP);
}

/* What lookup answers for a child found (and closed here), with a lookup
 * reference on its node; the kernel is told of it (ck_nodes_told), and its
 * ACL is asked then, as ls -l asks for it next. For a listing, a regular
 * file whose view it may not build is -EAGAIN, and a node the kernel was
 * told of within the timeout -EALREADY: both are left to lookups. */
static int child_entry(struct ck_fs *fs, uint64_t parent, const char *name, struct ck_located *loc,
		       const struct plus *listing, struct node_attr *na)
{
	uint64_t now = now_ns();
	bool no_acl = false;
	int err;

	if (!listing || listing->build || !S_ISREG(loc->st.st_mode))
		err = located_attr(fs, loc, na);
	else
		err = built_attr(fs, loc, na) ? 0 : -EAGAIN;
	if (!err && listing && ck_nodes_told_since(fs->nodes, na->attr.st_ino, told_window(now), NULL))
		err = -EALREADY;
	if (!err)
		no_acl = has_no_acl(loc);
	close(loc->fd);
	if (!err)
		err = ck_nodes_ref_child(fs->nodes, na->attr.st_ino, parent, name, loc->ident,
					 na->passthrough);
	if (!err)
		ck_nodes_told(fs->nodes, na->attr.st_ino, now, no_acl);
	return err;
}

static int lookup_child(struct ck_fs *fs, uint64_t parent, const char *name, struct node_attr *na)
{
	struct ck_located loc;
	int err;

	err = ck_nodes_locate_child(fs->nodes, parent, name, &loc);
	if (adopted(fs, parent, err))
		err = ck_nodes_locate_child(fs->nodes, parent, name, &loc);
	return err ? err : child_entry(fs, parent, name, &loc, NULL, na);
}

static int view_named(const struct ck_fs *fs, const char *name)
{
	for (size_t v = 0; v < fs->nviews; v++)
		if (strcmp(name, fs->views[v]->name) == 0)
			return (int)v;
	return -1;
}

/* "." and ".." are for NFS export: the kernel asks for "." of any node
 * (files too) whose inode it evicted while a file handle still names it,
 * and for ".." of a directory to connect a handle to the tree. */
static int lookup(struct ck_fs *fs, uint64_t parent, const char *name, struct node_attr *na)
{
	uint64_t up;
	int err, v;

	if (strcmp(name, ".") == 0)
		return ref_node(fs, parent, true, na);
	if (strcmp(name, "..") == 0) {
		err = ck_nodes_parent(fs->nodes, parent, &up);
		if (adopted(fs, parent, err))
			err = ck_nodes_parent(fs->nodes, parent, &up);
		return err ? err : ref_node(fs, up, false, na);
	}
	if (parent == FUSE_ROOT_ID) {
		v = view_named(fs, name);
		return v < 0 ? -ENOENT : ref_node(fs, ck_nodes_view_root(fs->nodes, (unsigned)v), false, na);
	}
	return lookup_child(fs, parent, name, na);
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ck_fs *fs = fs_of(req);
	struct fuse_entry_param e = {.attr_timeout = TIMEOUT, .entry_timeout = TIMEOUT};
	struct node_attr na;
	int err = lookup(fs, parent, name, &na);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	e.attr = na.attr;
	e.generation = na.generation;
	e.ino = e.attr.st_ino;
	if (fuse_reply_entry(req, &e)) /* interrupted: the kernel took no reference */
		ck_nodes_forget(fs->nodes, e.ino, 1);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	ck_nodes_forget(fs_of(req)->nodes, ino, nlookup);
	fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		ck_nodes_forget(fs_of(req)->nodes, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static int open_file_attr(struct ck_fs *fs, struct open_file *of, struct stat *attr);
static int open_file_of(struct ck_fs *fs, fuse_req_t req, uint64_t ino, uint64_t fh,
			struct open_file **out);

/* An open file answers from its own descriptor (the kernel passes it only
 * for regular files): the version it opened keeps serving. */
static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	struct open_file *of = NULL;
	struct node_attr na;
	int err = fi ? open_file_of(fs, req, ino, fi->fh, &of) : 0;

	if (!err)
		err = of ? open_file_attr(fs, of, &na.attr) : node_attr(fs, ino, &na);

	if (err)
		fuse_reply_err(req, -err);
	else
		fuse_reply_attr(req, &na.attr, TIMEOUT);
}

/* The daemon never follows a link, the reader's kernel does. A target
 * that is an absolute path into the source becomes the relative path to
 * the same file in the view (linkpath.h); others stay as written. A link
 * deeper than PATH_MAX takes its whole path from the node table. */
static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct ck_fs *fs = fs_of(req);
	char target[PATH_MAX], shown[PATH_MAX], *whole = NULL;
	struct ck_located loc;
	ssize_t n = -1;
	int err = locate(fs, ino, &loc);

	if (!err) {
		n = readlinkat(loc.fd, "", target, sizeof(target));
		err = n < 0 ? -errno : (size_t)n == sizeof(target) ? -ENAMETOOLONG : 0;
		close(loc.fd);
	}
	if (!err) {
		target[n] = '\0';
		if (loc.cut && target[0] == '/')
			err = ck_nodes_path(fs->nodes, ino, &whole);
	}
	/* a relative form longer than any link can be ("../" for each level
	 * up) has no way through FUSE; the raw target would lead out of the view */
	if (!err && ck_link_in_view(target, whole ? whole : loc.path, (const char *const *)fs->roots, fs->nroots,
				    shown, sizeof(shown)) < 0)
		err = -ENAMETOOLONG;
	free(whole);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	fuse_reply_readlink(req, shown);
}

static void close_view_file(struct ck_fs *fs, struct open_file *of)
{
	close_source(fs, &of->src);
	pthread_mutex_destroy(&of->lease_lock);
	free(of);
}

static void put_view_file(struct ck_fs *fs, struct open_file *of)
{
	if (atomic_fetch_sub(&of->refs, 1) == 1)
		close_view_file(fs, of);
}

static void release_view_file(struct ck_fs *fs, struct open_file *of)
{
	pthread_mutex_lock(&fs->open_lock);
	DL_DELETE(fs->open_files, of);
	pthread_mutex_unlock(&fs->open_lock);
	ck_fdquota_give(fs->fdq, of->uid);
	put_view_file(fs, of);
}

/* Whether the bytes of a file may have changed since st was taken. Its own
 * rename or a chmod change ctime too, and cannot be told from a rewrite that
 * restored mtime; a changed link count (the file replaced by rename, or
 * unlinked) is not a rewrite. */
static bool version_changed(const struct stat *was, const struct stat *now)
{
	return was->st_size != now->st_size || was->st_mtim.tv_sec != now->st_mtim.tv_sec ||
	       was->st_mtim.tv_nsec != now->st_mtim.tv_nsec ||
	       ((was->st_ctim.tv_sec != now->st_ctim.tv_sec ||
		 was->st_ctim.tv_nsec != now->st_ctim.tv_nsec) && was->st_nlink == now->st_nlink);
}

/* EIO for an open file whose version is gone, logged once per open. */
static int changed_while_open(struct open_file *of, const char *why)
{
	struct ck_err e;

	if (atomic_flag_test_and_set(&of->told_changed))
		return -EIO;
	ck_err_set(&e, EIO, "%s; reopen to read the new version", why);
	return ck_log_err(of->name, &e);
}

/* A file that was no checkpoint when opened reads as the source does (a log
 * appended to), until the source becomes a checkpoint (once its writer has
 * closed it): its raw bytes are then neither the source's view nor what
 * was opened. */
static int check_passthrough(struct ck_fs *fs, struct open_file *of, const struct stat *now)
{
	const struct ck_cache_key *was = ck_cache_entry_key(of->src.ent);
	struct ck_src src = {.fd = of->src.fd, .size = (uint64_t)now->st_size, .name = of->name};
	struct ck_cache_key key;
	struct ck_cache_entry *ent;
	struct ck_err e;
	bool other;

	if (!version_changed(&of->src.st, now) || being_written(of->src.fd))
		return 0;
	key = ck_cache_key_of(now, was->view);
	ent = ck_cache_get(fs->cache, &key, &src, &e);
	if (!ent)
		return ck_log_err(of->name, &e);
	other = is_passthrough(ck_cache_built(ent));
	ck_cache_put(fs->cache, ent);
	return other ? 0 : changed_while_open(of, "became a checkpoint while open");
}

/* The attributes of an open file: of the version it opened, or for a
 * pass-through file, of the source now (a log grows). */
static int open_file_attr(struct ck_fs *fs, struct open_file *of, struct stat *attr)
{
	struct stat now;
	int err;

	if (!of->passthrough) {
		view_attr(&of->src.st, of->id, ck_cache_built(of->src.ent), attr);
		return 0;
	}
	if (fstat(of->src.fd, &now))
		return -errno;
	err = check_passthrough(fs, of, &now);
	if (!err)
		view_attr(&now, of->id, NULL, attr);
	return err;
}

/* A node no name leads to any more is answered from a file open at its
 * version whose bytes are still that version (the source was replaced by
 * rename or unlinked), or from a pass-through file as it is now; a
 * checkpoint changed in place is stale. (The kernel asks without the file
 * for fstat(2) too.) */
static int open_version_attr(struct ck_fs *fs, uint64_t id, struct node_attr *na)
{
	struct open_file *of;
	struct stat now;
	int err = -ESTALE;

	pthread_mutex_lock(&fs->open_lock);
	DL_FOREACH(fs->open_files, of) {
		if (of->id != id || fstat(of->src.fd, &now))
			continue;
		if (of->passthrough || !version_changed(&of->src.st, &now)) {
			view_attr(of->passthrough ? &now : &of->src.st, id,
				  of->passthrough ? NULL : ck_cache_built(of->src.ent), &na->attr);
			na->generation = of->generation;
			na->passthrough = of->passthrough;
			err = 0;
			break;
		}
	}
	pthread_mutex_unlock(&fs->open_lock);
	return err;
}

/* Readers polling a file being written would fill the log: one line per
 * version (the last one logged). */
static int log_being_written(struct ck_fs *fs, const struct ck_located *loc, uint64_t id)
{
	static _Atomic uint64_t last_logged;
	char name[VIEW_PATH_MAX];
	struct ck_err e;

	if (atomic_exchange(&last_logged, id) == id)
		return -EIO;
	view_path(fs, loc, name, sizeof(name));
	ck_err_set(&e, EIO, "open for writing; it opens once its writer closes it");
	return ck_log_err(name, &e);
}

/* Opens the version of the file node id names. When the source changed
 * since the kernel looked it up, ESTALE makes the kernel look the name up
 * again (the new version is a new node) and retry. A file that is no
 * checkpoint, then and now, is opened as it is now (*moved: the kernel's
 * size of it is old), so a log appended to all the time never fails. */
static int open_view_file(struct ck_fs *fs, uint64_t id, struct open_file **out, bool *moved)
{
	const struct ck_built *b;
	struct ck_located loc;
	struct open_file *of;
	bool passthrough;
	int err;

	err = locate_latest(fs, id, &loc, &passthrough);
	if (err < 0)
		return err;
	if (!S_ISREG(loc.st.st_mode)) {
		close(loc.fd);
		return -EINVAL;
	}
	of = calloc(1, sizeof(*of));
	err = of ? open_source(fs, &loc, &of->src) : -ENOMEM;
	if (!err)
		view_path(fs, &loc, of->name, sizeof(of->name));
	else if (err == -EBUSY)
		err = log_being_written(fs, &loc, id);
	if (err) {
		close(loc.fd);
		free(of);
		return err == -EWOULDBLOCK ? -EIO : err;
	}
	b = ck_cache_built(of->src.ent);
	pthread_mutex_init(&of->lease_lock, NULL);
	of->id = id;
	of->generation = ck_nodes_generation(&of->src.st, loc.ident);
	of->passthrough = is_passthrough(b);
	if (b->err.code) /* logged when it was built */
		err = -EIO;
	*moved = ck_nodes_id(fs->nodes, &of->src.st, loc.ident, loc.view) != id;
	if (*moved ? !(passthrough && of->passthrough) : passthrough && !of->passthrough)
		err = -ESTALE; /* a new node, or a view's size the kernel has not been told */
	close(loc.fd);
	if (err) {
		close_view_file(fs, of);
		return err;
	}
	atomic_flag_clear(&of->told_changed);
	atomic_init(&of->refs, 1);
	*out = of;
	return 0;
}

/* The smallest mean record (zip entry) of a file read directly. */
#define DIRECT_MIN_RECORD (256u << 10)

/* Whether reads of an open view go past the kernel's page cache
 * (direct_io). The page cache of a FUSE file holds 4 KiB pages only (Linux
 * 6.18): each is allocated and filled by a copy from the source's, then
 * copied again to the reader. A direct read copies the source's pages once,
 * straight into the reader's buffer, and the pieces of one big read go to
 * several daemon threads at once; but each read is a round trip to the
 * daemon, where a cached one is not, and every mmap of the file (and every
 * direct read of a mapped range) drops the pages mappings share. So only
 * what torch.load reads with read() goes direct, and only in big pieces
 * (records of DIRECT_MIN_RECORD and more on average: torch reads each
 * record with two calls); safetensors files, which readers map, and other
 * files stay cached. Only where the kernel still maps such a file shared
 * (fuseio.h). */
static bool read_direct(const struct open_file *of)
{
	const struct ck_built *b = ck_cache_built(of->src.ent);
	uint64_t size = b->layout ? b->layout->size : (uint64_t)of->src.st.st_size;

	return (ck_fuseio_granted() & CK_CONN_DIRECT_MMAP) &&
	       (b->format == CK_FORMAT_TORCHZIP || b->format == CK_FORMAT_LEGACY) &&
	       size / (b->records ? b->records : 1) >= DIRECT_MIN_RECORD;
}

/* keep_cache keeps the pages the kernel caches (what mmap maps, and what
 * reads that are not direct hit) across opens: a node names one version,
 * so they stay good. Direct: see read_direct; every file of a mount asked
 * for direct_io (an NFS export: ganesha copies out of the page cache
 * again, direct reads halve the copies); and a file that is no checkpoint
 * opened at a newer version than its node, read past the kernel's cache
 * and its old size. */
static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	struct open_file *of;
	bool moved;
	int err;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	err = ck_fdquota_take(fs->fdq, fuse_req_ctx(req)->uid);
	if (!err && (err = open_view_file(fs, ino, &of, &moved)))
		ck_fdquota_give(fs->fdq, fuse_req_ctx(req)->uid);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	of->uid = fuse_req_ctx(req)->uid;
	fi->keep_cache = !moved;
	fi->direct_io = moved || fs->direct_io || read_direct(of);
	pthread_mutex_lock(&fs->open_lock);
	DL_APPEND(fs->open_files, of);
	pthread_mutex_unlock(&fs->open_lock);
	fi->fh = ck_handles_add(fs->handles, of);
	if (!fi->fh) {
		release_view_file(fs, of);
		fuse_reply_err(req, ENOMEM);
	} else if (fuse_reply_open(req, fi)) { /* interrupted: no release will come */
		release_view_file(fs, ck_handles_take(fs->handles, fi->fh));
	}
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	struct open_file *of = ck_handles_take(fs->handles, fi->fh);

	if (of) /* else opened before a restart and never read since */
		release_view_file(fs, of);
	fuse_reply_err(req, 0);
}

/* The file a read names. One opened before a take-over (ckptfs restart)
 * is opened again by its node id, once, and kept under the old handle: a
 * node names one version, so a source changed since is ESTALE (or, never
 * a checkpoint, read as it is now, as for any open). The reader's uid
 * holds its descriptor. */
static int open_file_of(struct ck_fs *fs, fuse_req_t req, uint64_t ino, uint64_t fh,
			struct open_file **out)
{
	struct open_file *of = ck_handles_get(fs->handles, fh), *won;
	uid_t uid = fuse_req_ctx(req)->uid;
	bool moved;
	int err;

	if (of || !fs->took_over) {
		*out = of;
		return of ? 0 : -EBADF;
	}
	err = ck_fdquota_take(fs->fdq, uid);
	if (!err && (err = open_view_file(fs, ino, &of, &moved)))
		ck_fdquota_give(fs->fdq, uid);
	if (err)
		return err;
	of->uid = uid;
	pthread_mutex_lock(&fs->open_lock);
	DL_APPEND(fs->open_files, of);
	pthread_mutex_unlock(&fs->open_lock);
	won = ck_handles_adopt(fs->handles, fh, of);
	if (won != of)
		release_view_file(fs, of);
	*out = won;
	return won ? 0 : -ENOMEM;
}

/* Source bytes go by splice from the source's page cache to the reader's:
 * the daemon never copies them. */
static void reply_source(fuse_req_t req, int fd, size_t size, off_t off)
{
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);

	bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	bv.buf[0].fd = fd;
	bv.buf[0].pos = off;
	fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
}

/* Where a thread copies source bytes: grown to the largest request, freed
 * when the thread ends. */
static pthread_key_t copy_key;
static pthread_once_t copy_once = PTHREAD_ONCE_INIT;

struct copy_buf {
	size_t cap;
	char bytes[];
};

static void make_copy_key(void)
{
	(void)pthread_key_create(&copy_key, free);
}

static char *copy_buffer(size_t size)
{
	struct copy_buf *cb;

	pthread_once(&copy_once, make_copy_key);
	cb = pthread_getspecific(copy_key);
	if (cb && cb->cap >= size)
		return cb->bytes;
	free(cb);
	cb = malloc(sizeof(*cb) + size);
	if (cb)
		cb->cap = size;
	(void)pthread_setspecific(copy_key, cb);
	return cb ? cb->bytes : NULL;
}

static int pread_all(int fd, char *buf, size_t n, off_t off)
{
	while (n) {
		ssize_t r = pread(fd, buf, n, off);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EIO; /* shorter than its view: changed */
		buf += r;
		n -= (size_t)r;
		off += r;
	}
	return 0;
}

/* Segments a read can take without allocating: a view is at most four
 * extents (records before data.pkl, data.pkl's record, the records after
 * it, the central directory), so a request spans at most that many. */
#define READ_SEGMENTS 4

/* Segment ext of a read of [start, end): its length, and where its bytes
 * are: *mem in the layout's memory, or else at *src_off in the source. */
static size_t segment(const struct ck_layout *l, size_t ext, uint64_t start, uint64_t end,
		      const uint8_t **mem, off_t *src_off)
{
	const struct ck_extent *x = &l->ext[ext];
	uint64_t from = x->off > start ? x->off : start;
	uint64_t to = x->off + x->len < end ? x->off + x->len : end;

	*mem = x->kind == CK_EXTENT_MEM ? l->mem + x->src_off + (from - x->off) : NULL;
	*src_off = (off_t)(x->src_off + (from - x->off));
	return (size_t)(to - from);
}

/* The version an open checkpoint still has, or EIO. */
static int check_version(struct open_file *of)
{
	struct stat now;

	if (fstat(of->src.fd, &now))
		return -errno;
	return version_changed(&of->src.st, &now) ? changed_while_open(of, "source changed while open") : 0;
}

/* Copies the source bytes, then checks the version: a write changes mtime
 * or ctime before it changes bytes, so the same version after the copy
 * means the copy is of that version. */
static int reply_copied(fuse_req_t req, struct open_file *of, const struct ck_layout *l,
			uint64_t start, uint64_t end, size_t first, size_t n)
{
	struct iovec local[READ_SEGMENTS], *iov = local;
	char *buf = copy_buffer((size_t)(end - start));
	int err = 0;

	if (!buf || (n > READ_SEGMENTS && !(iov = malloc(n * sizeof(*iov)))))
		return -ENOMEM;
	for (size_t i = 0; i < n && !err; i++) {
		const uint8_t *mem;
		off_t src_off;

		iov[i].iov_len = segment(l, first + i, start, end, &mem, &src_off);
		iov[i].iov_base = mem ? (void *)mem : buf;
		if (!mem) {
			err = pread_all(of->src.fd, buf, iov[i].iov_len, src_off);
			buf += iov[i].iov_len;
		}
	}
	if (!err)
		err = check_version(of);
	if (!err)
		fuse_reply_iov(req, iov, (int)n);
	if (iov != local)
		free(iov);
	return err;
}

/* Splices the source bytes: the reader gets the source's pages themselves,
 * moved or copied once the reply is written. Only under a read lease can
 * no write change them meanwhile. */
static int reply_spliced(fuse_req_t req, struct open_file *of, const struct ck_layout *l,
			 uint64_t start, uint64_t end, size_t first, size_t n)
{
	struct {
		struct fuse_bufvec bv;
		struct fuse_buf more[READ_SEGMENTS - 1];
	} local;
	struct fuse_bufvec *bv = &local.bv;
	int err = check_version(of);

	if (err)
		return err;
	if (n > READ_SEGMENTS && !(bv = malloc(sizeof(*bv) + (n - 1) * sizeof(bv->buf[0]))))
		return -ENOMEM;
	memset(bv, 0, sizeof(*bv) + (n - 1) * sizeof(bv->buf[0]));
	bv->count = n;
	for (size_t i = 0; i < n; i++) {
		struct fuse_buf *b = &bv->buf[i];
		const uint8_t *mem;

		b->size = segment(l, first + i, start, end, &mem, &b->pos);
		if (mem) {
			b->mem = (void *)mem;
		} else {
			b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
			b->fd = of->src.fd;
		}
	}
	fuse_reply_data(req, bv, FUSE_BUF_SPLICE_MOVE);
	if (bv != &local.bv)
		free(bv);
	return 0;
}

/* A read lease on the source, shared by the threads reading one open file:
 * none can be taken while a process has the file open for writing, and
 * while it is held an open for writing waits. Not taken again once the
 * kernel is breaking it for a writer, so that writer waits for the reads
 * in flight only. */
static bool lease_take(struct open_file *of)
{
	bool held;

	pthread_mutex_lock(&of->lease_lock);
	held = of->leases ? fcntl(of->src.fd, F_GETLEASE) == F_RDLCK
			  : fcntl(of->src.fd, F_SETLEASE, F_RDLCK) == 0;
	if (held)
		of->leases++;
	pthread_mutex_unlock(&of->lease_lock);
	return held;
}

static void lease_drop(struct open_file *of)
{
	pthread_mutex_lock(&of->lease_lock);
	if (--of->leases == 0)
		(void)fcntl(of->src.fd, F_SETLEASE, F_UNLCK);
	pthread_mutex_unlock(&of->lease_lock);
}

/* A checkpoint's reply is never assembled across a change: spliced under a
 * read lease (no write can happen), else copied and then checked. */
static int reply_view(fuse_req_t req, struct ck_fs *fs, struct open_file *of, const struct ck_layout *l,
		      size_t size, off_t off)
{
	uint64_t start = (uint64_t)off, end;
	size_t first, n;
	int err;

	if (start >= l->size || size == 0) {
		fuse_reply_buf(req, NULL, 0);
		return 0;
	}
	end = size < l->size - start ? start + size : l->size;
	first = ck_layout_find(l, start);
	n = ck_layout_find(l, end - 1) - first + 1;
	if (!lease_take(of))
		return reply_copied(req, of, l, start, end, first, n);
	atomic_fetch_add(&of->refs, 1);
	err = reply_spliced(req, of, l, start, end, first, n);
	lease_drop(of);
	put_view_file(fs, of);
	return err;
}

/* A checkpoint is read whole by a loader that trusts its offsets: one
 * rewritten in place while open fails rather than mix versions, even when
 * its view is the source unchanged. Other files (logs being appended to)
 * read as the source does. */
static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct open_file *of;
	const struct ck_built *b;
	struct ck_extent whole;
	struct ck_layout unchanged;
	struct stat now;
	int err = open_file_of(fs_of(req), req, ino, fi->fh, &of);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	b = ck_cache_built(of->src.ent);
	whole = (struct ck_extent){.len = (uint64_t)of->src.st.st_size, .kind = CK_EXTENT_SRC};
	unchanged = (struct ck_layout){.size = whole.len, .n = 1, .ext = &whole};
	if (of->passthrough) {
		err = fstat(of->src.fd, &now) ? -errno : check_passthrough(fs_of(req), of, &now);
		if (!err)
			reply_source(req, of->src.fd, size, off);
	} else {
		err = reply_view(req, fs_of(req), of, b->layout ? b->layout : &unchanged, size, off);
	}
	if (err)
		fuse_reply_err(req, -err);
}

static int open_dir(struct ck_fs *fs, uint64_t id, struct dir_handle **out)
{
	struct ck_located loc;
	struct dir_handle *d;
	int err, fd;

	err = locate(fs, id, &loc);
	if (err)
		return err;
	fd = S_ISDIR(loc.st.st_mode) ? reopen(&loc, O_RDONLY | O_DIRECTORY) : -ENOTDIR;
	close(loc.fd);
	if (fd < 0)
		return fd;
	d = calloc(1, sizeof(*d));
	if (!d || !(d->dp = fdopendir(fd))) {
		err = d ? -errno : -ENOMEM;
		free(d);
		close(fd);
		return err;
	}
	d->dev = loc.st.st_dev;
	d->view = loc.view;
	*out = d;
	return 0;
}

/* What the daemon's end closes (ck_fs_free): no share to give back then. */
static void drop_dir(void *obj)
{
	struct dir_handle *d = obj;

	closedir(d->dp);
	free(d);
}

static void close_dir(struct ck_fs *fs, struct dir_handle *d)
{
	ck_fdquota_give(fs->fdq, d->uid);
	drop_dir(d);
}

/* The mount root's listing is made up; fh 0 stands for it. */
static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	struct dir_handle *d = NULL;
	uid_t uid = fuse_req_ctx(req)->uid;
	int err = ino == FUSE_ROOT_ID ? 0 : ck_fdquota_take(fs->fdq, uid);

	if (!err && ino != FUSE_ROOT_ID && (err = open_dir(fs, ino, &d)))
		ck_fdquota_give(fs->fdq, uid);
	if (d)
		d->uid = uid;
	if (!err && d && !(fi->fh = ck_handles_add(fs->dirs, d))) {
		close_dir(fs, d);
		err = -ENOMEM;
	}
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	if (fuse_reply_open(req, fi) && d) /* interrupted: no releasedir will come */
		close_dir(fs, ck_handles_take(fs->dirs, fi->fh));
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	struct dir_handle *d = fi->fh ? ck_handles_take(fs->dirs, fi->fh) : NULL;

	if (d)
		close_dir(fs, d);
	fuse_reply_err(req, 0);
}

/* A directory handle; like open_file_of for one opened before a take-over
 * (the offsets the kernel holds are the source directory's own cookies). */
static int dir_of(struct ck_fs *fs, fuse_req_t req, uint64_t ino, uint64_t fh,
		  struct dir_handle **out)
{
	struct dir_handle *d = ck_handles_get(fs->dirs, fh), *won;
	uid_t uid = fuse_req_ctx(req)->uid;
	int err;

	if (d || !fs->took_over) {
		*out = d;
		return d ? 0 : -EBADF;
	}
	err = ck_fdquota_take(fs->fdq, uid);
	if (!err && (err = open_dir(fs, ino, &d)))
		ck_fdquota_give(fs->fdq, uid);
	if (err)
		return err;
	d->uid = uid;
	won = ck_handles_adopt(fs->dirs, fh, d);
	if (won != d)
		close_dir(fs, d);
	*out = won;
	return won ? 0 : -ENOMEM;
}

/* Adds one entry (e->ino 0: the name alone); false when it does not fit. */
static bool add_entry(fuse_req_t req, bool plus, char *buf, size_t size, size_t *used, const char *name,
		      const struct fuse_entry_param *e, off_t next)
{
	size_t n = plus ? fuse_add_direntry_plus(req, buf + *used, size - *used, name, e, next)
			: fuse_add_direntry(req, buf + *used, size - *used, name, &e->attr, next);

	if (n > size - *used)
		return false;
	*used += n;
	return true;
}

/* The node of a listed name as a lookup finds it (the kernel ignores "."
 * and ".."; a name that changed since it was read is left to a lookup). */
static void plus_entry(struct ck_fs *fs, struct plus *p, const char *name, struct fuse_entry_param *e)
{
	struct ck_located loc;
	struct node_attr na;

	if (p->dir.fd < 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
	    ck_nodes_locate_in(fs->nodes, &p->dir, name, &loc) ||
	    child_entry(fs, p->parent, name, &loc, p, &na))
		return;
	e->attr = na.attr;
	e->generation = na.generation;
	e->ino = na.attr.st_ino;
	e->attr_timeout = e->entry_timeout = TIMEOUT;
	p->ids[p->n++] = e->ino;
}

static size_t fill_root(fuse_req_t req, struct ck_fs *fs, bool plus, char *buf, size_t size, off_t off)
{
	size_t used = 0;

	for (size_t i = (size_t)off; i < 2 + fs->nviews; i++) {
		const char *name = i == 0 ? "." : i == 1 ? ".." : fs->views[i - 2]->name;
		uint64_t ino = i < 2 ? FUSE_ROOT_ID : ck_nodes_view_root(fs->nodes, (unsigned)(i - 2));
		struct fuse_entry_param e = {.attr = {.st_ino = ino, .st_mode = S_IFDIR}};

		if (!add_entry(req, plus, buf, size, &used, name, &e, (off_t)i + 1))
			break;
	}
	return used;
}

/* Reads the real directory on every call: nothing is listed from memory.
 * Entry inode numbers are advisory (taking the directory's device): a
 * directory's id, a file's id without its version; lookup gives the real
 * ones, as READDIRPLUS does where it answers for a name. */
static int fill_dir(fuse_req_t req, struct ck_fs *fs, struct dir_handle *d, struct plus *p, char *buf,
		    size_t size, off_t off, size_t *used)
{
	*used = 0;
	if (off != d->offset) {
		seekdir(d->dp, off);
		d->offset = off;
		d->pending = NULL;
	}
	for (;;) {
		struct fuse_entry_param e = {.attr.st_ino = 0};

		if (!d->pending) {
			errno = 0;
			d->pending = readdir(d->dp);
			if (!d->pending)
				return -errno;
		}
		e.attr.st_ino = ck_nodes_entry_ino(fs->nodes, d->dev, d->pending->d_ino, d->view);
		e.attr.st_mode = DTTOIF(d->pending->d_type);
		if (p) {
			/* room first: a reference taken is a reference replied */
			if (fuse_add_direntry_plus(req, NULL, 0, d->pending->d_name, NULL, 0) > size - *used)
				return 0;
			plus_entry(fs, p, d->pending->d_name, &e);
		}
		if (!add_entry(req, p != NULL, buf, size, used, d->pending->d_name, &e, d->pending->d_off))
			return 0;
		d->offset = d->pending->d_off;
		d->pending = NULL;
	}
}

/* READDIRPLUS asks for a listing's first batch whoever lists it, and for
 * the next ones only when the reader looked up a name since the last (ls
 * -l, a stat of each entry): views are built for those, never for a
 * listing alone. Elsewhere, names whose view is not built are left to
 * lookups. */
static void list_dir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi,
		     bool plus)
{
	struct ck_fs *fs = fs_of(req);
	struct plus p = {.parent = ino, .dir.fd = -1, .build = off != 0};
	char *buf = malloc(size);
	size_t used = 0;
	int err = 0;

	if (plus && buf && fi->fh)
		p.ids = malloc(size / fuse_add_direntry_plus(req, NULL, 0, "", NULL, 0) * sizeof(*p.ids));
	if (!buf || (plus && fi->fh && !p.ids)) {
		fuse_reply_err(req, ENOMEM);
		free(buf);
		return;
	}
	if (fi->fh) {
		struct dir_handle *d;

		err = dir_of(fs, req, ino, fi->fh, &d);
		if (!err && plus && locate(fs, ino, &p.dir))
			p.dir.fd = -1;
		if (!err)
			err = fill_dir(req, fs, d, plus ? &p : NULL, buf, size, off, &used);
		if (p.dir.fd >= 0)
			close(p.dir.fd);
	} else
		used = fill_root(req, fs, plus, buf, size, off);
	/* Entries already read are worth replying; the error comes back next call. */
	if ((err && used == 0 ? fuse_reply_err(req, -err) : fuse_reply_buf(req, buf, used)))
		for (size_t i = 0; i < p.n; i++) /* interrupted: the kernel took no reference */
			ck_nodes_forget(fs->nodes, p.ids[i], 1);
	free(p.ids);
	free(buf);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	list_dir(req, ino, size, off, fi, false);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	list_dir(req, ino, size, off, fi, true);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	if (fstatvfs(ck_nodes_root_fd(fs_of(req)->nodes), &sv)) {
		fuse_reply_err(req, errno);
		return;
	}
	/* df shows the source's figures: the views take no space of their own */
	fuse_reply_statfs(req, &sv);
}

/* The extended attributes a node has: the format and, if its view cannot
 * be built, why, on regular files; the build count on the mount root (for
 * tests: it shows whether a layout was built once or again). */
struct xattrs {
	size_t n;
	struct {
		const char *name;
		char value[sizeof(((struct ck_err *)0)->msg)];
	} x[2];
};

static void add_xattr(struct xattrs *xs, const char *name, const char *value)
{
	xs->x[xs->n].name = name;
	snprintf(xs->x[xs->n].value, sizeof(xs->x[0].value), "%s", value);
	xs->n++;
}

/* Whether the requester may read a source file by its mode bits, as
 * default_permissions decides for the view. */
static bool may_read(fuse_req_t req, const struct stat *st)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	gid_t groups[64];
	int n;

	if (ctx->uid == 0 || ctx->uid == st->st_uid)
		return ctx->uid == 0 || (st->st_mode & S_IRUSR);
	if (ctx->gid == st->st_gid)
		return st->st_mode & S_IRGRP;
	n = fuse_req_getgroups(req, (int)(sizeof(groups) / sizeof(groups[0])), groups);
	for (int i = 0; i < n && i < (int)(sizeof(groups) / sizeof(groups[0])); i++)
		if (groups[i] == st->st_gid)
			return st->st_mode & S_IRGRP;
	return st->st_mode & S_IROTH;
}

/* The error of a file says what is inside it: only for who may read it. */
static int file_xattrs(struct ck_fs *fs, fuse_req_t req, const struct ck_located *loc, struct xattrs *xs)
{
	const struct ck_built *b;
	struct source_file sf;
	int err = open_source(fs, loc, &sf);

	if (err)
		return err;
	b = ck_cache_built(sf.ent);
	add_xattr(xs, "user.ckptfs.format", ck_format_name(b->format));
	if (b->err.code && may_read(req, &sf.st))
		add_xattr(xs, "user.ckptfs.error", b->err.msg);
	close_source(fs, &sf);
	return 0;
}

static int node_xattrs(struct ck_fs *fs, fuse_req_t req, uint64_t id, struct xattrs *xs)
{
	struct ck_located loc;
	char builds[32];
	int err;

	xs->n = 0;
	if (id == FUSE_ROOT_ID) {
		snprintf(builds, sizeof(builds), "%llu", (unsigned long long)ck_cache_builds(fs->cache));
		add_xattr(xs, "user.ckptfs.builds", builds);
		return 0;
	}
	err = locate(fs, id, &loc);
	if (err)
		return err;
	if (S_ISREG(loc.st.st_mode))
		err = file_xattrs(fs, req, &loc, xs);
	close(loc.fd);
	return err;
}

/* The POSIX ACLs: the kernel (FUSE_CAP_POSIX_ACL) asks for these and
 * enforces them, so a view grants exactly what its source grants. The
 * mount root shows the source root's, as it shows its owner and mode. */
static const char *const acl_names[] = {"system.posix_acl_access", "system.posix_acl_default"};

static bool is_acl_name(const char *name)
{
	return strcmp(name, acl_names[0]) == 0 || strcmp(name, acl_names[1]) == 0;
}

/* getxattr(2) of the node's source object, by its O_PATH descriptor
 * (no open: no lease to break, no FIFO to block on): the value in the
 * kernel's own xattr form, its length, or -errno. A symlink has no ACL. */
static ssize_t source_acl(struct ck_fs *fs, uint64_t id, const char *name, void *buf, size_t size)
{
	struct ck_located loc = {.fd = -1};
	char proc[32];
	ssize_t n;
	bool none;

	/* ls -l asks right after the lookup, which found none */
	if (strcmp(name, acl_names[0]) == 0 &&
	    ck_nodes_told_since(fs->nodes, id, told_window(now_ns()), &none) && none)
		return -ENODATA;
	if (id == FUSE_ROOT_ID) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", ck_nodes_root_fd(fs->nodes));
	} else {
		bool passthrough;
		int err = locate_latest(fs, id, &loc, &passthrough);

		/* An ACL is the file's, whatever its version. A node no file
		 * answers to any more (replaced, or still being written) serves
		 * no bytes: its open fails whatever the ACL says, so its mode
		 * bits alone are checked. */
		if (err == -ESTALE)
			return -ENODATA;
		if (err < 0)
			return err;
		if (S_ISLNK(loc.st.st_mode)) {
			close(loc.fd);
			return -ENODATA;
		}
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", loc.fd);
	}
	n = getxattr(proc, name, buf, size);
	if (n < 0)
		n = -errno;
	if (loc.fd >= 0)
		close(loc.fd);
	/* a source without ACL support has none; EOPNOTSUPP would make the
	 * kernel stop asking for any attribute of this mount */
	return n == -EOPNOTSUPP ? -ENODATA : n;
}

static void reply_acl(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	char *buf = size ? malloc(size) : NULL;
	ssize_t n;

	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = source_acl(fs_of(req), ino, name, buf, size);
	if (n < 0)
		fuse_reply_err(req, (int)-n);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else
		fuse_reply_buf(req, buf, (size_t)n);
	free(buf);
}

/* size 0 asks how big the value is. */
static void reply_xattr_value(fuse_req_t req, const char *data, size_t len, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (len > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, data, len);
}

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct xattrs xs;
	int err;

	if (is_acl_name(name)) {
		reply_acl(req, ino, name, size);
		return;
	}
	/* ls -l asks every file for security.selinux: answer it without
	 * finding the file */
	if (strncmp(name, "user.ckptfs.", 12) != 0) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	err = node_xattrs(fs_of(req), req, ino, &xs);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	for (size_t i = 0; i < xs.n; i++) {
		if (strcmp(name, xs.x[i].name) == 0) {
			reply_xattr_value(req, xs.x[i].value, strlen(xs.x[i].value), size);
			return;
		}
	}
	fuse_reply_err(req, ENODATA);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char names[256];
	size_t len = 0;
	struct xattrs xs;
	int err = node_xattrs(fs_of(req), req, ino, &xs);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	for (size_t i = 0; i < xs.n; i++) {
		size_t n = strlen(xs.x[i].name) + 1;

		memcpy(names + len, xs.x[i].name, n);
		len += n;
	}
	for (size_t i = 0; i < sizeof(acl_names) / sizeof(acl_names[0]); i++) {
		ssize_t got = source_acl(fs_of(req), ino, acl_names[i], NULL, 0);
		size_t n = strlen(acl_names[i]) + 1;

		if (got > 0) {
			memcpy(names + len, acl_names[i], n);
			len += n;
		}
	}
	reply_xattr_value(req, names, len, size);
}

/* The mount is read-only (the kernel already refuses most of these on an
 * "ro" mount); everything that would change it fails the same way. */
#define READ_ONLY_OP(op, ...) \
	static void fs_##op(fuse_req_t req, __VA_ARGS__) { fuse_reply_err(req, EROFS); }

READ_ONLY_OP(setattr, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
READ_ONLY_OP(mknod, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
READ_ONLY_OP(mkdir, fuse_ino_t parent, const char *name, mode_t mode)
READ_ONLY_OP(unlink, fuse_ino_t parent, const char *name)
READ_ONLY_OP(rmdir, fuse_ino_t parent, const char *name)
READ_ONLY_OP(symlink, const char *link, fuse_ino_t parent, const char *name)
READ_ONLY_OP(rename, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
	     const char *newname, unsigned int flags)
READ_ONLY_OP(link, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
READ_ONLY_OP(create, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
READ_ONLY_OP(write, fuse_ino_t ino, const char *buf, size_t size, off_t off,
	     struct fuse_file_info *fi)
READ_ONLY_OP(setxattr, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags)
READ_ONLY_OP(removexattr, fuse_ino_t ino, const char *name)
READ_ONLY_OP(fallocate, fuse_ino_t ino, int mode, off_t offset, off_t length,
	     struct fuse_file_info *fi)
READ_ONLY_OP(copy_file_range, fuse_ino_t ino_in, off_t off_in, struct fuse_file_info *fi_in,
	     fuse_ino_t ino_out, off_t off_out, struct fuse_file_info *fi_out, size_t len, int flags)

static unsigned read_pages = 248;

static void probe_pipe_growth(void)
{
	int p[2];

	if (pipe2(p, O_CLOEXEC))
		return;
	if (fcntl(p[0], F_SETPIPE_SZ, 2 << 20) >= 2 << 20) /* past pipe-max-size: CAP_SYS_RESOURCE */
		read_pages = 256;
	close(p[0]);
	close(p[1]);
}

unsigned ck_fs_read_pages(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	pthread_once(&once, probe_pipe_growth);
	return read_pages;
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	/* Export support: for a file handle whose inode it evicted, the kernel
	 * asks "." instead of failing with ESTALE. Splice: source bytes move
	 * from page cache to page cache without a copy through the daemon. */
	conn->want |= conn->capable &
		      (FUSE_CAP_EXPORT_SUPPORT | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
	/* The kernel enforces the source's POSIX ACLs (asked for with
	 * getxattr; it requires default_permissions, which every mount has). */
	if (conn->capable & FUSE_CAP_POSIX_ACL)
		conn->want |= FUSE_CAP_POSIX_ACL;
	else
		ck_log(LOG_WARNING, "the kernel cannot enforce POSIX ACLs: views check mode bits only");
	/* READDIRPLUS only as the kernel sees fit (list_dir): a listing alone
	 * must not build every file in it. */
	if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO)
		conn->want |= conn->capable & (FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
	else
		conn->want &= ~(unsigned)(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
	/* Many readers of one checkpoint (DDP ranks) read ahead at once. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	/* Nothing is written through the mount: max_write only sets max_pages. */
	conn->max_write = ck_fs_read_pages() * 4096;
	conn->max_readahead = CK_READ_AHEAD_KB << 10;
}

const struct fuse_lowlevel_ops ck_fs_ops = {
	.init = fs_init,
	.lookup = fs_lookup,
	.forget = fs_forget,
	.forget_multi = fs_forget_multi,
	.getattr = fs_getattr,
	.readlink = fs_readlink,
	.open = fs_open,
	.read = fs_read,
	.release = fs_release,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.readdirplus = fs_readdirplus,
	.releasedir = fs_releasedir,
	.statfs = fs_statfs,
	.getxattr = fs_getxattr,
	.listxattr = fs_listxattr,
	.setattr = fs_setattr,
	.mknod = fs_mknod,
	.mkdir = fs_mkdir,
	.unlink = fs_unlink,
	.rmdir = fs_rmdir,
	.symlink = fs_symlink,
	.rename = fs_rename,
	.link = fs_link,
	.create = fs_create,
	.write = fs_write,
	.setxattr = fs_setxattr,
	.removexattr = fs_removexattr,
	.fallocate = fs_fallocate,
	.copy_file_range = fs_copy_file_range,
};
