/* Unit tests of the node table on a real temporary tree: ids deterministic
 * across tables (a restart), new ids for new versions, lookup counts and
 * forget, the tree search for forgotten ids and its budget, stale handles,
 * the self-mount check, trees deeper than PATH_MAX, out of memory. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "hash.h"
#include "nodes.h"
#include "tap.h"

/* uthash's allocator (hash.h), failing on demand. */
static atomic_bool hash_oom;

void *ck_hash_malloc(size_t n)
{
	return hash_oom ? NULL : malloc(n);
}

static char root[] = "/tmp/ck-nodes-XXXXXX";

static void put(const char *rel, const char *content)
{
	char p[PATH_MAX];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", root, rel);
	f = fopen(p, "w");
	fputs(content, f);
	fclose(f);
}

static void mk(const char *rel)
{
	char p[PATH_MAX];

	snprintf(p, sizeof(p), "%s/%s", root, rel);
	mkdir(p, 0755);
}

static void mv(const char *from, const char *to)
{
	char p[PATH_MAX], q[PATH_MAX];

	snprintf(p, sizeof(p), "%s/%s", root, from);
	snprintf(q, sizeof(q), "%s/%s", root, to);
	rename(p, q);
}

static struct ck_nodes *table(unsigned nviews)
{
	return ck_nodes_new(open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), nviews);
}

/* What a FUSE lookup does: find the child, reply its id, take a reference. */
static uint64_t lookup(struct ck_nodes *t, uint64_t parent, const char *name)
{
	struct ck_located loc;
	uint64_t id;

	if (ck_nodes_locate_child(t, parent, name, &loc))
		return 0;
	id = ck_nodes_id(t, &loc.st, loc.ident, loc.view);
	close(loc.fd);
	return ck_nodes_ref_child(t, id, parent, name, loc.ident, false) ? 0 : id;
}

/* Whether id is found, at path rel. */
static bool at(struct ck_nodes *t, uint64_t id, const char *rel)
{
	struct ck_located loc;
	bool same;

	if (ck_nodes_locate(t, id, &loc))
		return false;
	same = strcmp(loc.path, rel) == 0;
	close(loc.fd);
	return same;
}

/* Waits for the clock to pass the ctime of rel, so that a change to it
 * gets another ctime (timestamps are taken from a coarse clock). */
static void clock_past(const char *rel)
{
	char p[PATH_MAX];
	struct stat st;
	struct timespec now;

	snprintf(p, sizeof(p), "%s/%s", root, rel);
	stat(p, &st);
	do {
		nanosleep(&(struct timespec){0, 1000000}, NULL);
		clock_gettime(CLOCK_REALTIME_COARSE, &now);
	} while (now.tv_sec == st.st_ctim.tv_sec && now.tv_nsec == st.st_ctim.tv_nsec);
}

static void test_ids_and_restart(void)
{
	struct ck_nodes *t = table(2), *t2 = table(2);
	uint64_t v0 = ck_nodes_view_root(t, 0), v1 = ck_nodes_view_root(t, 1);
	uint64_t a, b, x, x1;

	ok(v0 != v1 && v0 != CK_NODES_ROOT_ID && v1 != CK_NODES_ROOT_ID, "each view root has its own id");
	ok(at(t, v0, ".") && at(t, v1, "."), "the view roots are the source root");
	a = lookup(t, v0, "a");
	b = lookup(t, a, "b");
	x = lookup(t, b, "x.pth");
	ok(x && at(t, x, "a/b/x.pth"), "a looked-up file is located at its path");
	x1 = lookup(t, lookup(t, lookup(t, v1, "a"), "b"), "x.pth");
	ok(x1 && x1 != x, "the same file has another id in another view");
	ok(lookup(t2, lookup(t2, lookup(t2, ck_nodes_view_root(t2, 0), "a"), "b"), "x.pth") == x,
	   "a second table (a restart) gives the same id");
	ck_nodes_free(t2);
	t2 = table(2);
	ok(ck_nodes_find_and_ref(t2, x) == 0 && at(t2, x, "a/b/x.pth"),
	   "a fresh table finds an id it never gave by searching the tree");
	ok(ck_nodes_parent(t2, x, &a) == 0 && at(t2, a, "a/b"), "and remembers the directories on the way");
	ck_nodes_free(t2);
	ck_nodes_free(t);
}

static void test_new_versions(void)
{
	struct ck_nodes *t = table(1);
	uint64_t v0 = ck_nodes_view_root(t, 0), b, x, x2, b2;
	struct ck_located loc;
	struct stat before, after;
	bool pt;
	char p[PATH_MAX];

	b = lookup(t, lookup(t, v0, "n"), "b");
	x = lookup(t, b, "x.pth");
	snprintf(p, sizeof(p), "%s/n/b/x.pth", root);
	stat(p, &before);
	clock_past("n/b/x.pth");
	put("n/b/x.pth", "checkpoint bytes v2....");
	utimensat(AT_FDCWD, p, (struct timespec[]){before.st_atim, before.st_mtim}, 0);
	stat(p, &after);
	ok(after.st_size == before.st_size && after.st_mtim.tv_sec == before.st_mtim.tv_sec &&
	   after.st_mtim.tv_nsec == before.st_mtim.tv_nsec, "rewritten with the same size and mtime");
	x2 = lookup(t, b, "x.pth");
	ok(x2 && x2 != x, "a same-size rewrite with the old mtime restored gets a new id (ctime)");
	ok(ck_nodes_locate(t, x, &loc) == -ESTALE, "its old id is stale");
	ok(ck_nodes_locate_latest(t, x, &loc, &pt) == CK_NODES_CHANGED, "locate_latest says changed in place");
	close(loc.fd);
	put("n/b/new", "n");
	ok(lookup(t, lookup(t, v0, "n"), "b") == b, "a directory keeps its id while its entries change");
	put("n/b/x.tmp", "renamed-over-content!!");
	mv("n/b/x.tmp", "n/b/x.pth");
	ok(ck_nodes_locate(t, x2, &loc) == -ESTALE, "after a replace by rename the old id is stale");
	x = lookup(t, b, "x.pth");
	ok(x && x != x2, "and the new file has another id");
	/* a directory renamed in the source: found again under its new name */
	mv("n/b", "n/c");
	ok(ck_nodes_locate(t, b, &loc) == -ESTALE, "a renamed directory is stale at its old path");
	b2 = lookup(t, lookup(t, v0, "n"), "c");
	ok(b2 == b && at(t, b, "n/c"), "looked up under its new name it keeps its id and moves");
	ok(at(t, x, "n/c/x.pth"), "and the files beneath it follow");
	ck_nodes_free(t);
}

static void test_counts_and_forget(void)
{
	struct ck_nodes *t = table(1);
	uint64_t v0 = ck_nodes_view_root(t, 0), a, b, x, parent;

	a = lookup(t, v0, "f");
	b = lookup(t, a, "b");
	ck_nodes_forget(t, a, 1);
	ck_nodes_forget(t, b, 1);
	ok(ck_nodes_parent(t, b, &parent) == -ESTALE && ck_nodes_parent(t, a, &parent) == -ESTALE,
	   "directories forgotten to zero leave the table");
	b = lookup(t, lookup(t, v0, "f"), "b");
	ck_nodes_forget(t, a, 1); /* held by its child only now */
	x = lookup(t, b, "x.pth");
	ck_nodes_forget(t, b, 1);
	ok(lookup(t, b, "x.pth") == x, "a second lookup gives the same id");
	ck_nodes_forget(t, x, 1);
	ok(at(t, x, "f/b/x.pth"), "one forget of two lookups: still there");
	ok(ck_nodes_parent(t, a, &parent) == 0 && parent == v0, "and so are its parents, held by it");
	ck_nodes_forget(t, x, 1);
	ok(ck_nodes_locate(t, x, &(struct ck_located){0}) == -ESTALE, "forgotten to zero: gone");
	ok(ck_nodes_parent(t, b, &parent) == -ESTALE && ck_nodes_parent(t, a, &parent) == -ESTALE,
	   "and the directories kept only for it went with it");
	ok(ck_nodes_find_and_ref(t, x) == 0 && at(t, x, "f/b/x.pth"),
	   "the tree search finds the forgotten id again");
	ck_nodes_forget(t, x, 5);
	ok(ck_nodes_ref(t, x) == -ESTALE, "a forget of more than held drops to zero, not below");
	ck_nodes_forget(t, v0, 10);
	ck_nodes_forget(t, CK_NODES_ROOT_ID, 10);
	ok(at(t, v0, ".") && ck_nodes_ref(t, CK_NODES_ROOT_ID) == 0, "the mount root and view roots stay");
	ck_nodes_free(t);
}

static void test_stale_and_refused(void)
{
	struct ck_nodes *t = table(1);
	uint64_t v0 = ck_nodes_view_root(t, 0), d, x, y;
	struct ck_located loc;
	struct stat st;
	char p[PATH_MAX], q[PATH_MAX];

	d = lookup(t, v0, "s");
	x = lookup(t, d, "x.pth");
	y = lookup(t, lookup(t, d, "sub"), "y.pth");
	snprintf(p, sizeof(p), "%s/s/x.pth", root);
	unlink(p);
	ok(ck_nodes_locate(t, x, &loc) == -ESTALE, "a removed file: ESTALE");
	ck_nodes_forget(t, x, 1);
	ok(ck_nodes_find_and_ref(t, x) == -ESTALE, "and the tree search does not find it");
	mv("s/sub", "s/real");
	snprintf(p, sizeof(p), "%s/s/sub", root);
	symlink("real", p);
	ok(ck_nodes_locate(t, y, &loc) == -ESTALE, "a symlink on the way is never followed: ESTALE");
	ok(ck_nodes_locate_child(t, d, "sub", &loc) == 0 && S_ISLNK(loc.st.st_mode),
	   "a symlink as the last component is opened itself");
	close(loc.fd);
	snprintf(q, sizeof(q), "%s/s", root);
	stat(q, &st);
	ck_nodes_set_self_dev(t, st.st_dev);
	ok(ck_nodes_locate(t, d, &loc) == -ESTALE && ck_nodes_locate_child(t, d, "real", &loc) == -ESTALE,
	   "a directory on the mount's own device is never entered");
	ck_nodes_set_self_dev(t, st.st_dev + 1);
	ok(ck_nodes_locate(t, d, &loc) == 0, "other devices are");
	close(loc.fd);
	ck_nodes_free(t);
}

static void test_search_budget(void)
{
	struct ck_nodes *t = table(1);
	uint64_t v0 = ck_nodes_view_root(t, 0), x;
	char name[64];

	for (int i = 0; i < 50; i++) {
		snprintf(name, sizeof(name), "w/%02d", i);
		put(name, "");
	}
	x = lookup(t, lookup(t, v0, "w"), "49");
	ck_nodes_forget(t, x, 1);
	ck_nodes_free(t);
	t = table(1);
	ck_nodes_set_find_budget(t, 5);
	ok(ck_nodes_find_and_ref(t, x) == -ESTALE, "a search past its budget gives up: ESTALE");
	ck_nodes_set_find_budget(t, 100000);
	ok(ck_nodes_find_and_ref(t, x) == 0 && at(t, x, "w/49"), "with budget enough it finds the file");
	ck_nodes_free(t);
}

static void test_out_of_memory(void)
{
	int fd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
	struct ck_nodes *t;

	hash_oom = true;
	errno = 0;
	t = ck_nodes_new(fd, 1);
	hash_oom = false;
	ok(t == NULL && errno == ENOMEM, "out of memory in the table: ck_nodes_new fails with ENOMEM");
	ok(fcntl(fd, F_GETFD) >= 0, "and leaves the root descriptor to its caller");
	t = ck_nodes_new(fd, 1);
	ok(t && lookup(t, ck_nodes_view_root(t, 0), "a"), "then a table is made as usual");
	ck_nodes_free(t);
}

/* 40 directories of 120-byte names: a path of 4840 bytes, past PATH_MAX. */
#define DEEP_LEVELS 40

static void deep_name(char *name, int level)
{
	memset(name, 'd', 120);
	snprintf(name + 117, 4, "%03d", level);
}

static void test_deeper_than_path_max(void)
{
	struct ck_nodes *t = table(1);
	uint64_t ids[DEEP_LEVELS + 1], x;
	struct ck_located loc;
	char name[121];
	int fd = open(root, O_PATH | O_DIRECTORY), next;
	size_t len;

	for (int i = 0; i < DEEP_LEVELS; i++) {
		deep_name(name, i);
		mkdirat(fd, name, 0755);
		next = openat(fd, name, O_PATH | O_DIRECTORY);
		close(fd);
		fd = next;
	}
	next = openat(fd, "x.pth", O_WRONLY | O_CREAT, 0644);
	close(next);
	close(fd);
	ids[0] = ck_nodes_view_root(t, 0);
	for (int i = 0; i < DEEP_LEVELS; i++) {
		deep_name(name, i);
		ids[i + 1] = lookup(t, ids[i], name);
	}
	x = lookup(t, ids[DEEP_LEVELS], "x.pth");
	ok(x != 0, "a file deeper than PATH_MAX is looked up");
	ok(ck_nodes_locate(t, x, &loc) == 0 && S_ISREG(loc.st.st_mode), "and located by its id");
	len = strlen(loc.path);
	ok(loc.cut && strncmp(loc.path, "\xe2\x80\xa6/", 4) == 0 && len < PATH_MAX &&
	   strcmp(loc.path + len - 9, "039/x.pth") == 0,
	   "its shown path is cut at the front with an ellipsis: %.20s...%s", loc.path, loc.path + len - 20);
	close(loc.fd);
	{
		char *whole = NULL;
		deep_name(name, 0);
		ok(ck_nodes_path(t, x, &whole) == 0 && strlen(whole) == DEEP_LEVELS * 121 + 5 &&
		   strncmp(whole, name, 120) == 0 && strcmp(whole + DEEP_LEVELS * 121 - 4, "039/x.pth") == 0,
		   "its whole path, for a link's target, has every level (%zu bytes)", whole ? strlen(whole) : 0);
		free(whole);
	}
	ck_nodes_forget(t, x, 1);
	for (int i = DEEP_LEVELS; i > 0; i--)
		ck_nodes_forget(t, ids[i], 1);
	ok(ck_nodes_locate(t, x, &loc) == -ESTALE, "forgotten, it is gone from the table");
	ok(ck_nodes_find_and_ref(t, x) == 0 && ck_nodes_locate(t, x, &loc) == 0 && loc.cut,
	   "and the tree search finds it again");
	close(loc.fd);
	ck_nodes_free(t);
}

/* Removes name beneath dirfd, relative to each directory: the tree is
 * deeper than any path nftw could build. */
static void rm_at(int at_fd, const char *name)
{
	int fd = openat(at_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;

	if (!d) {
		if (fd >= 0)
			close(fd);
		unlinkat(at_fd, name, 0);
		return;
	}
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			rm_at(dirfd(d), de->d_name);
	closedir(d);
	unlinkat(at_fd, name, AT_REMOVEDIR);
}

/* What the kernel was told of a node, and when, holds while it holds the node. */
static void test_told(void)
{
	struct ck_nodes *t = table(1);
	uint64_t v0 = ck_nodes_view_root(t, 0), a, x;
	bool no_acl = false;

	a = lookup(t, v0, "f");
	x = lookup(t, a, "x.pth");
	ok(!ck_nodes_told_since(t, x, 0, &no_acl), "a node the kernel was never told of");
	ck_nodes_told(t, x, 1000, true);
	ok(ck_nodes_told_since(t, x, 1000, &no_acl) && no_acl, "told at 1000, with no ACL");
	ok(!ck_nodes_told_since(t, x, 1001, &no_acl), "not since 1001");
	ck_nodes_told(t, x, 2000, false);
	ok(ck_nodes_told_since(t, x, 1500, &no_acl) && !no_acl, "told again: the newest counts");
	ck_nodes_forget(t, x, 1);
	ok(!ck_nodes_told_since(t, x, 0, NULL), "forgotten: the kernel holds nothing of it");
	ok(lookup(t, a, "x.pth") == x && !ck_nodes_told_since(t, x, 0, NULL),
	   "looked up again: a new entry, never told");
	ck_nodes_forget(t, x, 1);
	ck_nodes_forget(t, a, 1);
	ck_nodes_free(t);
}

int main(void)
{
	if (!mkdtemp(root))
		return 1;
	mk("a");
	mk("a/b");
	put("a/b/x.pth", "checkpoint bytes v1....");
	mk("n");
	mk("n/b");
	put("n/b/x.pth", "checkpoint bytes v1....");
	test_ids_and_restart();
	test_new_versions();
	mk("f");
	mk("f/b");
	put("f/b/x.pth", "x");
	test_counts_and_forget();
	put("f/x.pth", "x");
	test_told();
	mk("s");
	mk("s/sub");
	put("s/x.pth", "x");
	put("s/sub/y.pth", "y");
	test_stale_and_refused();
	mk("w");
	test_search_budget();
	test_out_of_memory();
	test_deeper_than_path_max();
	rm_at(AT_FDCWD, root);
	return tap_done();
}
