#include <config.h>
#include "fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <utlist.h>
#include "cache.h"
#include "handles.h"
#include "linkpath.h"
#include "log.h"
#include "nodes.h"
#include "view.h"

_Static_assert(CK_NODES_ROOT_ID == FUSE_ROOT_ID, "the node table's root is the mount root");


/* Names and attributes stay valid in the kernel this long; a name that does
 * not exist is never cached, so files added to the source show up at once. */
#define TIMEOUT 1.0
/* Ids are never reused for another object, so one generation does. */
#define GENERATION 1

/* Room for "ddp/" + a source path. */
#define VIEW_PATH_MAX (PATH_MAX + 32)

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
	struct source_file src;
	char name[VIEW_PATH_MAX];
	atomic_flag told_changed;
	struct open_file *prev, *next; /* in fs->open_files */
};

/* An open source directory; readdir continues where the last call ended. */
struct dir_handle {
	DIR *dp;
	dev_t dev;
	unsigned view;
	off_t offset;
	struct dirent *pending; /* read but not yet replied: it did not fit */
};

struct ck_fs *ck_fs_new(int root_fd, const struct ck_view *const *views, size_t nviews, size_t cache_bytes,
		       struct ck_err *e)
{
	struct ck_fs *fs;

	if (nviews > CK_NODES_MAX_VIEWS) {
		ck_err_set(e, EINVAL, "at most %d views", CK_NODES_MAX_VIEWS);
		return NULL;
	}
	if (!(fs = calloc(1, sizeof(*fs))) || !(fs->cache = ck_cache_new(cache_bytes)) ||
	    ck_fs_take_over(fs, 0)) {
		if (fs)
			ck_cache_free(fs->cache);
		free(fs);
		ck_err_nomem(e);
		return NULL;
	}
	fs->views = views;
	fs->nviews = nviews;
	pthread_mutex_init(&fs->open_lock, NULL);
	fs->nodes = ck_nodes_new(root_fd, (unsigned)nviews);
	if (!fs->nodes) {
		ck_err_set(e, errno, "%s", strerror(errno));
		ck_handles_free(fs->handles, NULL);
		ck_handles_free(fs->dirs, NULL);
		ck_cache_free(fs->cache);
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
	free(fs);
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

/* How messages name a view file: "plain/a/x.pth". */
static void view_path(const struct ck_fs *fs, const struct ck_located *loc, char *buf, size_t size)
{
	const struct ck_view *const *views = fs->views;

	if (strcmp(loc->path, ".") == 0)
		snprintf(buf, size, "%s", views[loc->view]->name);
	else
		snprintf(buf, size, "%s/%s", views[loc->view]->name, loc->path);
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

/* Opens a located regular file and gets its built view (building it the
 * first time this version of the file is seen). */
static int open_source(struct ck_fs *fs, const struct ck_located *loc, struct source_file *sf)
{
	char name[VIEW_PATH_MAX];
	struct ck_src src;
	struct ck_cache_key key;
	struct ck_err e;

	sf->fd = reopen(loc, O_RDONLY | O_NOCTTY);
	if (sf->fd < 0)
		return sf->fd;
	if (fstat(sf->fd, &sf->st)) {
		int err = -errno;
		close(sf->fd);
		return err;
	}
	view_path(fs, loc, name, sizeof(name));
	src = (struct ck_src){.fd = sf->fd, .size = (uint64_t)sf->st.st_size, .name = name};
	key = ck_cache_key_of(&sf->st, fs->views[loc->view]);
	sf->ent = ck_cache_get(fs->cache, &key, &src, &e);
	if (!sf->ent) {
		close(sf->fd);
		return ck_log_err(name, &e);
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

/* A regular file's view is built here, so its size is exact before the
 * first read. A file the daemon may not read, or whose view failed to
 * build, keeps its source size: it stays visible and open says why not. */
static int located_attr(struct ck_fs *fs, const struct ck_located *loc, uint64_t id, struct stat *attr)
{
	struct source_file sf;
	int err;

	if (!S_ISREG(loc->st.st_mode)) {
		view_attr(&loc->st, id, NULL, attr);
		return 0;
	}
	err = open_source(fs, loc, &sf);
	if (err == -EACCES || err == -EPERM) {
		view_attr(&loc->st, id, NULL, attr);
		return 0;
	}
	if (err)
		return err;
	view_attr(&sf.st, id, ck_cache_built(sf.ent), attr);
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

static int node_attr(struct ck_fs *fs, uint64_t id, struct stat *attr)
{
	struct ck_located loc;
	int err;

	if (id == FUSE_ROOT_ID)
		return root_attr(fs, attr);
	err = locate(fs, id, &loc);
	if (err)
		return err;
	err = located_attr(fs, &loc, id, attr);
	close(loc.fd);
	return err;
}

/* Takes a lookup reference on a node the table knows (or, may_find, one
 * it forgot) before reading its attributes, so a concurrent forget cannot
 * drop it in between. */
static int ref_node(struct ck_fs *fs, uint64_t id, bool may_find, struct stat *attr)
{
	int err = ck_nodes_ref(fs->nodes, id);

	if (err == -ESTALE && may_find)
		err = ck_nodes_find_and_ref(fs->nodes, id);
	if (err)
		return err;
	err = node_attr(fs, id, attr);
	if (err)
		ck_nodes_forget(fs->nodes, id, 1);
	return err;
}

static int lookup_child(struct ck_fs *fs, uint64_t parent, const char *name, struct stat *attr)
{
	struct ck_located loc;
	uint64_t id;
	int err;

	err = ck_nodes_locate_child(fs->nodes, parent, name, &loc);
	if (adopted(fs, parent, err))
		err = ck_nodes_locate_child(fs->nodes, parent, name, &loc);
	if (err)
		return err;
	id = ck_nodes_id(fs->nodes, &loc.st, loc.view);
	err = located_attr(fs, &loc, id, attr);
	close(loc.fd);
	return err ? err : ck_nodes_ref_child(fs->nodes, id, parent, name);
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
static int lookup(struct ck_fs *fs, uint64_t parent, const char *name, struct stat *attr)
{
	uint64_t up;
	int err, v;

	if (strcmp(name, ".") == 0)
		return ref_node(fs, parent, true, attr);
	if (strcmp(name, "..") == 0) {
		err = ck_nodes_parent(fs->nodes, parent, &up);
		if (adopted(fs, parent, err))
			err = ck_nodes_parent(fs->nodes, parent, &up);
		return err ? err : ref_node(fs, up, false, attr);
	}
	if (parent == FUSE_ROOT_ID) {
		v = view_named(fs, name);
		return v < 0 ? -ENOENT : ref_node(fs, ck_nodes_view_root(fs->nodes, (unsigned)v), false, attr);
	}
	return lookup_child(fs, parent, name, attr);
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct ck_fs *fs = fs_of(req);
	struct fuse_entry_param e = {
		.generation = GENERATION, .attr_timeout = TIMEOUT, .entry_timeout = TIMEOUT,
	};
	int err = lookup(fs, parent, name, &e.attr);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
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

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat attr;
	int err = node_attr(fs_of(req), ino, &attr);

	if (err)
		fuse_reply_err(req, -err);
	else
		fuse_reply_attr(req, &attr, TIMEOUT);
}

/* The daemon never follows a link, the reader's kernel does. A target
 * that is an absolute path into the source becomes the relative path to
 * the same file in the view (linkpath.h); others stay as written. */
static void fs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct ck_fs *fs = fs_of(req);
	char target[PATH_MAX], shown[PATH_MAX];
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
		if (ck_link_in_view(target, loc.path, (const char *const *)fs->roots, fs->nroots, shown,
				    sizeof(shown)) < 0)
			err = -ENAMETOOLONG;
	}
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	fuse_reply_readlink(req, shown);
}

static void close_view_file(struct ck_fs *fs, struct open_file *of)
{
	close_source(fs, &of->src);
	free(of);
}

static void release_view_file(struct ck_fs *fs, struct open_file *of)
{
	pthread_mutex_lock(&fs->open_lock);
	DL_DELETE(fs->open_files, of);
	pthread_mutex_unlock(&fs->open_lock);
	close_view_file(fs, of);
}

static int open_view_file(struct ck_fs *fs, uint64_t id, struct open_file **out, bool *keep_cache)
{
	const struct ck_cache_key *key;
	struct ck_node_version version;
	struct ck_located loc;
	struct open_file *of;
	int err;

	err = locate(fs, id, &loc);
	if (err)
		return err;
	if (!S_ISREG(loc.st.st_mode)) {
		close(loc.fd);
		return -EINVAL;
	}
	of = calloc(1, sizeof(*of));
	err = of ? open_source(fs, &loc, &of->src) : -ENOMEM;
	if (!err)
		view_path(fs, &loc, of->name, sizeof(of->name));
	close(loc.fd);
	if (err) {
		free(of);
		return err;
	}
	if (ck_cache_built(of->src.ent)->err.code) { /* logged when it was built */
		close_view_file(fs, of);
		return -EIO;
	}
	atomic_flag_clear(&of->told_changed);
	key = ck_cache_entry_key(of->src.ent);
	version = (struct ck_node_version){.size = key->size, .mtime_ns = key->mtime_ns};
	*keep_cache = ck_nodes_reopened_unchanged(fs->nodes, id, &version);
	*out = of;
	return 0;
}

/* No direct_io: pages the kernel caches are what mmap maps, and keep_cache
 * keeps them across opens while the source is unchanged. */
static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	struct open_file *of;
	bool keep_cache;
	int err;

	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	err = open_view_file(fs, ino, &of, &keep_cache);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	fi->keep_cache = keep_cache;
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
 * is opened again by its node id, once, and kept under the old handle. */
static int open_file_of(struct ck_fs *fs, uint64_t ino, uint64_t fh, struct open_file **out)
{
	struct open_file *of = ck_handles_get(fs->handles, fh), *won;
	bool keep_cache;
	int err;

	if (of || !fs->took_over) {
		*out = of;
		return of ? 0 : -EBADF;
	}
	err = open_view_file(fs, ino, &of, &keep_cache);
	if (err)
		return err;
	pthread_mutex_lock(&fs->open_lock);
	DL_APPEND(fs->open_files, of);
	pthread_mutex_unlock(&fs->open_lock);
	won = ck_handles_adopt(fs->handles, fh, of);
	if (won != of)
		release_view_file(fs, of);
	*out = won;
	return won ? 0 : -ENOMEM;
}

/* A source rewritten in place while open would turn the view into a mix of
 * old and new bytes at the old offsets: refuse to read instead. (A source
 * replaced by rename is fine: the descriptor keeps the old file.) */
static int check_source_unchanged(struct open_file *of)
{
	const struct ck_cache_key *was = ck_cache_entry_key(of->src.ent);
	struct ck_cache_key now;
	struct stat st;
	struct ck_err e;

	if (fstat(of->src.fd, &st))
		return -errno;
	now = ck_cache_key_of(&st, was->view);
	if (memcmp(&now, was, sizeof(now)) == 0)
		return 0;
	if (atomic_flag_test_and_set(&of->told_changed))
		return -EIO;
	ck_err_set(&e, EIO, "source changed while open; reopen to read the new version");
	return ck_log_err(of->name, &e);
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

/* Segments a read can take without allocating: a view is at most four
 * extents (records before data.pkl, data.pkl's record, the records after
 * it, the central directory), so a request spans at most that many. */
#define READ_SEGMENTS 4

/* One segment per extent that [off, off + size) touches: memory segments
 * point into the layout, source segments are spliced from the file. */
static int reply_view(fuse_req_t req, int fd, const struct ck_layout *l, size_t size, off_t off)
{
	uint64_t start = (uint64_t)off, end;
	size_t first, n;
	struct {
		struct fuse_bufvec bv;
		struct fuse_buf more[READ_SEGMENTS - 1];
	} local;
	struct fuse_bufvec *bv = &local.bv;

	if (start >= l->size || size == 0) {
		fuse_reply_buf(req, NULL, 0);
		return 0;
	}
	end = size < l->size - start ? start + size : l->size;
	first = ck_layout_find(l, start);
	n = ck_layout_find(l, end - 1) - first + 1;
	if (n > READ_SEGMENTS && !(bv = malloc(sizeof(*bv) + (n - 1) * sizeof(bv->buf[0]))))
		return -ENOMEM;
	memset(bv, 0, sizeof(*bv) + (n - 1) * sizeof(bv->buf[0]));
	bv->count = n;
	for (size_t i = 0; i < n; i++) {
		const struct ck_extent *x = &l->ext[first + i];
		uint64_t from = x->off > start ? x->off : start;
		uint64_t to = x->off + x->len < end ? x->off + x->len : end;
		struct fuse_buf *b = &bv->buf[i];

		b->size = (size_t)(to - from);
		if (x->kind == CK_EXTENT_MEM) {
			b->mem = l->mem + x->src_off + (from - x->off);
		} else {
			b->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
			b->fd = fd;
			b->pos = (off_t)(x->src_off + (from - x->off));
		}
	}
	fuse_reply_data(req, bv, FUSE_BUF_SPLICE_MOVE);
	if (bv != &local.bv)
		free(bv);
	return 0;
}

/* A checkpoint is read whole by a loader that trusts its offsets: one
 * rewritten in place while open must fail rather than mix versions, even
 * when its view is the source unchanged. Other files (logs being appended
 * to) read as the source does. */
static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct open_file *of;
	const struct ck_built *b;
	int err = open_file_of(fs_of(req), ino, fi->fh, &of);

	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	b = ck_cache_built(of->src.ent);
	err = b->format == CK_FORMAT_OTHER ? 0 : check_source_unchanged(of);
	if (!err && !b->layout)
		reply_source(req, of->src.fd, size, off);
	else if (!err)
		err = reply_view(req, of->src.fd, b->layout, size, off);
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

static void close_dir(struct dir_handle *d)
{
	closedir(d->dp);
	free(d);
}

static void drop_dir(void *d)
{
	close_dir(d);
}

/* The mount root's listing is made up; fh 0 stands for it. */
static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	struct dir_handle *d = NULL;
	int err = ino == FUSE_ROOT_ID ? 0 : open_dir(fs, ino, &d);

	if (!err && d && !(fi->fh = ck_handles_add(fs->dirs, d))) {
		close_dir(d);
		err = -ENOMEM;
	}
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	if (fuse_reply_open(req, fi) && d) /* interrupted: no releasedir will come */
		close_dir(ck_handles_take(fs->dirs, fi->fh));
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct dir_handle *d = fi->fh ? ck_handles_take(fs_of(req)->dirs, fi->fh) : NULL;

	if (d)
		close_dir(d);
	fuse_reply_err(req, 0);
}

/* A directory handle; like open_file_of for one opened before a take-over
 * (the offsets the kernel holds are the source directory's own cookies). */
static int dir_of(struct ck_fs *fs, uint64_t ino, uint64_t fh, struct dir_handle **out)
{
	struct dir_handle *d = ck_handles_get(fs->dirs, fh), *won;
	int err;

	if (d || !fs->took_over) {
		*out = d;
		return d ? 0 : -EBADF;
	}
	err = open_dir(fs, ino, &d);
	if (err)
		return err;
	won = ck_handles_adopt(fs->dirs, fh, d);
	if (won != d)
		close_dir(d);
	*out = won;
	return won ? 0 : -ENOMEM;
}

/* Adds one entry; false when it does not fit. */
static bool add_entry(fuse_req_t req, char *buf, size_t size, size_t *used, const char *name,
		      uint64_t ino, mode_t type, off_t next)
{
	struct stat st = {.st_ino = ino, .st_mode = type};
	size_t n = fuse_add_direntry(req, buf + *used, size - *used, name, &st, next);

	if (n > size - *used)
		return false;
	*used += n;
	return true;
}

static size_t fill_root(fuse_req_t req, struct ck_fs *fs, char *buf, size_t size, off_t off)
{
	size_t used = 0;

	for (size_t i = (size_t)off; i < 2 + fs->nviews; i++) {
		const char *name = i == 0 ? "." : i == 1 ? ".." : fs->views[i - 2]->name;
		uint64_t ino = i < 2 ? FUSE_ROOT_ID : ck_nodes_view_root(fs->nodes, (unsigned)(i - 2));

		if (!add_entry(req, buf, size, &used, name, ino, S_IFDIR, (off_t)i + 1))
			break;
	}
	return used;
}

/* Reads the real directory on every call: nothing is listed from memory.
 * Entry inode numbers are the ids the entries will have (taking the
 * directory's device; they are advisory, lookup gives the real ones). */
static int fill_dir(fuse_req_t req, struct ck_fs *fs, struct dir_handle *d, char *buf,
		    size_t size, off_t off, size_t *used)
{
	*used = 0;
	if (off != d->offset) {
		seekdir(d->dp, off);
		d->offset = off;
		d->pending = NULL;
	}
	for (;;) {
		struct stat where = {.st_dev = d->dev};

		if (!d->pending) {
			errno = 0;
			d->pending = readdir(d->dp);
			if (!d->pending)
				return -errno;
		}
		where.st_ino = d->pending->d_ino;
		if (!add_entry(req, buf, size, used, d->pending->d_name,
			       ck_nodes_id(fs->nodes, &where, d->view),
			       DTTOIF(d->pending->d_type), d->pending->d_off))
			return 0;
		d->offset = d->pending->d_off;
		d->pending = NULL;
	}
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct ck_fs *fs = fs_of(req);
	char *buf = malloc(size);
	size_t used = 0;
	int err = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (fi->fh) {
		struct dir_handle *d;

		err = dir_of(fs, ino, fi->fh, &d);
		if (!err)
			err = fill_dir(req, fs, d, buf, size, off, &used);
	} else
		used = fill_root(req, fs, buf, size, off);
	/* Entries already read are worth replying; the error comes back next call. */
	if (err && used == 0)
		fuse_reply_err(req, -err);
	else
		fuse_reply_buf(req, buf, used);
	free(buf);
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

static int file_xattrs(struct ck_fs *fs, const struct ck_located *loc, struct xattrs *xs)
{
	const struct ck_built *b;
	struct source_file sf;
	int err = open_source(fs, loc, &sf);

	if (err)
		return err;
	b = ck_cache_built(sf.ent);
	add_xattr(xs, "user.ckptfs.format", ck_format_name(b->format));
	if (b->err.code)
		add_xattr(xs, "user.ckptfs.error", b->err.msg);
	close_source(fs, &sf);
	return 0;
}

static int node_xattrs(struct ck_fs *fs, uint64_t id, struct xattrs *xs)
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
		err = file_xattrs(fs, &loc, xs);
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

	if (id == FUSE_ROOT_ID) {
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", ck_nodes_root_fd(fs->nodes));
	} else {
		int err = locate(fs, id, &loc);

		if (err)
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
	err = node_xattrs(fs_of(req), ino, &xs);

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
	int err = node_xattrs(fs_of(req), ino, &xs);

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
	/* Plain readdir: listing a directory must not build every file in it. */
	conn->want &= ~(unsigned)(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
	/* Many readers of one checkpoint (DDP ranks) read ahead at once. */
	conn->max_background = 64;
	conn->congestion_threshold = 48;
	/* Nothing is written through the mount: max_write only sets max_pages. */
	conn->max_write = CK_READ_PAGES * 4096;
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
