/* Unit tests of the symlink targets a view shows: pure string functions. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "linkpath.h"
#include "tap.h"

static const char *const roots[] = {"/srv/runs", "/data/exp runs"};

static void check(const char *link, const char *target, const char *want)
{
	char out[64];
	ssize_t n = ck_link_in_view(target, link, roots, 2, out, sizeof(out));

	ok(n >= 0 && (size_t)n == strlen(want) && strcmp(out, want) == 0, "%s -> %s shows as '%s' (got '%s')", link,
	   target, want, n >= 0 ? out : "(too long)");
}

static void check_root(const char *path, const char *cwd, const char *want)
{
	char *got = ck_link_root(path, cwd);

	ok(want ? got && strcmp(got, want) == 0 : !got && errno == EINVAL, "root '%s' in '%s' is '%s' (got '%s')",
	   path, cwd, want ? want : "(unusable)", got ? got : "(null)");
	free(got);
}

int main(void)
{
	/* absolute into the source: relative within the view */
	check("last.pth", "/srv/runs/epoch9.pth", "epoch9.pth");
	check("a/b/last.pth", "/srv/runs/epoch9.pth", "../../epoch9.pth");
	check("a/last.pth", "/srv/runs/a/c/./e.pth", "c/e.pth");
	check("a/last.pth", "/data/exp runs//x.pth", "../x.pth");
	check("a/b/top", "/srv/runs", "../..");
	check("top", "/srv/runs/", ".");
	check("a/d", "/srv/runs/sub/", "../sub/");
	/* up only to the directory they share */
	check("a/b/c/l", "/srv/runs/a/b/x.pth", "../x.pth");
	check("a/b/l", "/srv/runs/a/b/c/x.pth", "c/x.pth");
	check("a/b/l", "/srv/runs/a/b", ".");
	check("a/b/l", "/srv/runs/a", "..");
	check("a/b/l", "/srv/runs/a/bb/x", "../bb/x");
	check("ab/l", "/srv/runs/a/x", "../a/x");
	/* leaving the source, or maybe leaving it: as written */
	check("last.pth", "/srv/runs2/x.pth", "/srv/runs2/x.pth");
	check("last.pth", "/srv/run", "/srv/run");
	check("last.pth", "/srv/runs/../other/x.pth", "/srv/runs/../other/x.pth");
	check("last.pth", "/etc/passwd", "/etc/passwd");
	/* relative: as written */
	check("a/last.pth", "../b/x.pth", "../b/x.pth");
	check("last.pth", "srv/runs/x", "srv/runs/x");
	{
		char small[8];
		ok(ck_link_in_view("/srv/runs/a-long-name.pth", "x", roots, 2, small, sizeof(small)) == -1,
		   "a target that does not fit is refused");
	}
	check_root("/srv//runs/", "/", "/srv/runs");
	check_root("runs/./x", "/home/u", "/home/u/runs/x");
	check_root(".", "/home/u", "/home/u");
	check_root("/", "/x", "");
	check_root("../runs", "/home/u", NULL);
	{
		const char *const slash[] = {""};
		char out[64];
		ok(ck_link_in_view("/a/b", "x/y", slash, 1, out, sizeof(out)) == 6 && strcmp(out, "../a/b") == 0,
		   "under the root '/' (got '%s')", out);
	}
	return tap_done();
}
