/* ckptfs convert and ckptfs cat: a view written to a file or to stdout
 * without FUSE, built by the same code the daemon serves with. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cli.h"
#include "commands.h"
#include "export.h"
#include "format.h"
#include "log.h"

struct convert_args {
	const struct ck_view *view;
	bool force, recursive;
	struct cli_views views;
	const char *from, *to;
};

static void parse_args(struct convert_args *a, const char *cmd, int argc, char **argv)
{
	static const struct option longopts[] = {
		{"view", required_argument, NULL, 'v'}, {"force", no_argument, NULL, 'f'},
		{"recursive", no_argument, NULL, 'r'}, {"help", no_argument, NULL, 'h'}, {0}};
	bool convert = strcmp(cmd, "convert") == 0;
	const char *view = NULL;
	int c;

	*a = (struct convert_args){0};
	cli_views_init(&a->views);
	opterr = 0;
	while ((c = getopt_long(argc, argv, convert ? "frho:" : "ho:", longopts, NULL)) != -1) {
		if (c == 'v')
			view = optarg;
		else if (c == 'f' && convert)
			a->force = true;
		else if (c == 'r' && convert)
			a->recursive = true;
		else if (c == 'o' && strncmp(optarg, "view=", 5) == 0)
			cli_views_add(&a->views, cmd, optarg + 5);
		else if (c == 'o')
			cli_usage_error(cmd, "-o %s: only view= is known here", optarg);
		else if (c == 'h')
			cli_help_exit(cmd);
		else if (optopt)
			cli_usage_error(cmd, "-%c: unknown option or missing argument", optopt);
		else
			cli_usage_error(cmd, "%s: unknown option or missing argument", argv[optind - 1]);
	}
	if (!view)
		cli_usage_error(cmd, "--view VIEW is required");
	if (argc - optind != (convert ? 2 : 1))
		cli_usage_error(cmd, convert ? "expected SOURCE and DEST" : "expected FILE");
	a->view = cli_views_pick(&a->views, cmd, view);
	a->from = argv[optind];
	a->to = convert ? argv[optind + 1] : NULL;
}

/* A progress bar on a terminal, redrawn each whole percent. */
struct bar {
	const char *name;
	int last;
};

static void draw(void *ctx, uint64_t done, uint64_t total)
{
	struct bar *b = ctx;
	int pct = total ? (int)(done * 100 / total) : 100, width = 30, fill = pct * width / 100;

	if (pct == b->last)
		return;
	b->last = pct;
	fprintf(stderr, "\r%-40.40s [%.*s%*s] %3d%% %8.1f MiB", b->name, fill, "==============================",
		width - fill, "", pct, (double)total / (1 << 20));
	if (done == total)
		fputc('\n', stderr);
}

/* The view of the open file src (whose fstat is st) written to out. */
static int write_view(const struct ck_view *v, int fd, const struct stat *st, const char *name, int out, bool bar,
		      struct ck_err *e)
{
	struct ck_src src = {.fd = fd, .size = (uint64_t)st->st_size, .name = name};
	struct ck_layout *l = NULL;
	struct bar b = {.name = name, .last = -1};
	enum ck_format fmt;
	struct stat after;
	int rc;

	if (ck_view_layout(&src, v, &l, &fmt, NULL, e))
		return ck_err_context(e, "%s: ", name);
	rc = ck_export(l, &src, out, bar ? draw : NULL, &b, e);
	ck_layout_free(l);
	/* as the daemon does: never a mix of an old layout and new bytes */
	if (!rc && (fstat(fd, &after) || after.st_size != st->st_size || after.st_mtim.tv_sec != st->st_mtim.tv_sec ||
		    after.st_mtim.tv_nsec != st->st_mtim.tv_nsec))
		rc = ck_err_set(e, EIO, "%s: changed while it was converted", name);
	return rc;
}

/* DEST, or DEST/basename(SOURCE) when DEST is a directory (as cp does). */
static void target_path(const char *from, const char *to, char *out)
{
	struct stat st;
	char copy[PATH_MAX];

	snprintf(copy, sizeof(copy), "%s", from);
	if (stat(to, &st) == 0 && S_ISDIR(st.st_mode)) {
		if (snprintf(out, PATH_MAX, "%s/%s", to, basename(copy)) >= PATH_MAX)
			cli_fail(to, strerror(ENAMETOOLONG));
	} else {
		snprintf(out, PATH_MAX, "%s", to);
	}
}

/* Writes a temporary file beside to, syncs it, renames it into place
 * (never over an existing file without force), syncs the directory. */
static int convert_file(const struct convert_args *a, const char *from, const char *to, struct ck_err *e)
{
	char dir_buf[PATH_MAX], base_buf[PATH_MAX], tmp[PATH_MAX * 2];
	const char *dir;
	int fd, out = -1, dfd = -1, rc = -1;
	struct stat st;

	e->code = 0;
	snprintf(dir_buf, sizeof(dir_buf), "%s", to);
	snprintf(base_buf, sizeof(base_buf), "%s", to);
	dir = dirname(dir_buf);
	if (snprintf(tmp, sizeof(tmp), "%s/.%s.ckptfs-XXXXXX", dir, basename(base_buf)) >= (int)sizeof(tmp))
		return ck_err_set(e, ENAMETOOLONG, "%s: %s", to, strerror(ENAMETOOLONG));
	if (!a->force && access(to, F_OK) == 0)
		return ck_err_set(e, EEXIST, "%s: exists (-f replaces it)", to);
	if ((fd = open(from, O_RDONLY | O_CLOEXEC)) < 0)
		return ck_err_set(e, errno, "%s: %s", from, strerror(errno));
	if (fstat(fd, &st)) {
		ck_err_set(e, errno, "%s: %s", from, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ck_err_set(e, EINVAL, "%s: not a regular file", from);
		goto out;
	}
	if ((out = mkostemp(tmp, O_CLOEXEC)) < 0) {
		ck_err_set(e, errno, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	if (fchmod(out, st.st_mode & 0777) || write_view(a->view, fd, &st, from, out, isatty(STDERR_FILENO), e) ||
	    fsync(out))
		goto fail;
	if ((a->force ? rename(tmp, to) : renameat2(AT_FDCWD, tmp, AT_FDCWD, to, RENAME_NOREPLACE))) {
		ck_err_set(e, errno, "%s: %s", to, errno == EEXIST ? "exists (-f replaces it)" : strerror(errno));
		goto fail;
	}
	if ((dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0)
		fsync(dfd);
	rc = 0;
	goto out;
fail:
	if (!e->code)
		ck_err_set(e, errno, "%s: %s", tmp, strerror(errno));
	unlink(tmp);
out:
	if (dfd >= 0)
		close(dfd);
	if (out >= 0)
		close(out);
	close(fd);
	return rc;
}

/* -r: nftw gives no context pointer, so the walk's lives here. */
static struct {
	const struct convert_args *a;
	size_t from_len;
	int failures;
} walk;

static void walk_error(const struct ck_err *e)
{
	ck_log(LOG_ERR, "%s", e->msg);
	walk.failures++;
}

/* Mirrors one entry of SOURCE beneath DEST: directories made, regular
 * files converted, symlinks copied; anything else is left out, said so. */
static int convert_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	char to[PATH_MAX], link[PATH_MAX];
	struct ck_err e = {0};
	ssize_t n;

	if (snprintf(to, sizeof(to), "%s%s", walk.a->to, path + walk.from_len) >= (int)sizeof(to)) {
		ck_err_set(&e, ENAMETOOLONG, "%s: %s", path, strerror(ENAMETOOLONG));
	} else if (type == FTW_D) {
		if (mkdir(to, st->st_mode & 0777) && errno != EEXIST)
			ck_err_set(&e, errno, "%s: %s", to, strerror(errno));
	} else if (type == FTW_F && S_ISREG(st->st_mode)) {
		convert_file(walk.a, path, to, &e);
	} else if (type == FTW_SL) {
		if ((n = readlink(path, link, sizeof(link) - 1)) < 0)
			ck_err_set(&e, errno, "%s: %s", path, strerror(errno));
		else if (link[n] = '\0', walk.a->force && unlink(to) && errno != ENOENT)
			ck_err_set(&e, errno, "%s: %s", to, strerror(errno));
		else if (symlink(link, to))
			ck_err_set(&e, errno, "%s: %s", to, errno == EEXIST ? "exists (-f replaces it)" : strerror(errno));
	} else {
		ck_err_set(&e, EINVAL, "%s: %s", path, type == FTW_DNR || type == FTW_NS ? strerror(EACCES)
									 : "not a file, directory or symlink; left out");
	}
	if (e.code)
		walk_error(&e);
	return 0;
}

static int convert_tree(const struct convert_args *a)
{
	char from_real[PATH_MAX], to_real[PATH_MAX];
	struct stat st;
	size_t n;

	if (stat(a->from, &st) || !S_ISDIR(st.st_mode))
		cli_fail(a->from, "-r: not a directory");
	if (mkdir(a->to, st.st_mode & 0777) && errno != EEXIST)
		cli_fail(a->to, strerror(errno));
	if (!realpath(a->from, from_real) || !realpath(a->to, to_real))
		cli_fail(a->to, strerror(errno));
	n = strlen(from_real);
	if (strncmp(to_real, from_real, n) == 0 && (to_real[n] == '/' || to_real[n] == '\0'))
		cli_fail(a->to, "inside the source directory");
	walk.a = a;
	walk.from_len = strlen(a->from);
	if (nftw(a->from, convert_entry, 64, FTW_PHYS))
		cli_fail(a->from, strerror(errno));
	return walk.failures ? EXIT_RUNTIME : 0;
}

int cmd_convert(int argc, char **argv)
{
	struct convert_args a;
	struct ck_err e = {0};
	char to[PATH_MAX];
	int rc;

	parse_args(&a, "convert", argc, argv);
	if (a.recursive) {
		rc = convert_tree(&a);
	} else {
		target_path(a.from, a.to, to);
		rc = convert_file(&a, a.from, to, &e) ? (ck_log(LOG_ERR, "%s", e.msg), EXIT_RUNTIME) : 0;
	}
	cli_views_clear(&a.views);
	return rc;
}

int cmd_cat(int argc, char **argv)
{
	struct convert_args a;
	struct ck_err e = {0};
	struct stat st;
	int fd, rc = 0;

	parse_args(&a, "cat", argc, argv);
	if ((fd = open(a.from, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &st))
		cli_fail(a.from, strerror(errno));
	if (!S_ISREG(st.st_mode))
		cli_fail(a.from, "not a regular file");
	if (write_view(a.view, fd, &st, a.from, STDOUT_FILENO, false, &e)) {
		ck_log(LOG_ERR, "%s", e.msg);
		rc = EXIT_RUNTIME;
	}
	close(fd);
	cli_views_clear(&a.views);
	return rc;
}
