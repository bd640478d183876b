/* ckptfs umount: unmounts ckptfs file systems and nothing else; detaches
 * a mount whose daemon is gone. */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include "cli.h"
#include "commands.h"
#include "log.h"
#include "mountinfo.h"

#define FSTYPE "fuse." PACKAGE

/* The absolute path of mountpoint, resolving only its parent: the mount
 * itself may be dead, and a stat of it would fail. */
static void absolute_path(const char *mountpoint, char *out)
{
	char dir[PATH_MAX], base[PATH_MAX], parent[PATH_MAX];
	size_t n;

	if (realpath(mountpoint, out))
		return;
	if (errno != ENOTCONN && errno != EIO)
		cli_fail(mountpoint, strerror(errno));
	snprintf(dir, sizeof(dir), "%s", mountpoint);
	snprintf(base, sizeof(base), "%s", mountpoint);
	if (!realpath(dirname(dir), parent))
		cli_fail(mountpoint, strerror(errno));
	n = strlen(parent);
	if (snprintf(out, PATH_MAX, "%s%s%s", parent, parent[n - 1] == '/' ? "" : "/", basename(base)) >= PATH_MAX)
		cli_fail(mountpoint, strerror(ENAMETOOLONG));
}

/* Runs fusermount3 -u [-z]; quiet when umount2() will get a second try. */
static bool fusermount_u(const char *mountpoint, bool lazy, bool quiet)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return false;
	if (pid == 0) {
		int null = quiet ? open("/dev/null", O_WRONLY) : -1;

		if (null >= 0)
			dup2(null, STDERR_FILENO);
		execlp("fusermount3", "fusermount3", lazy ? "-uz" : "-u", "--", mountpoint, (char *)NULL);
		ck_log(LOG_ERR, "fusermount3: %s", strerror(errno));
		_exit(127);
	}
	return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static bool parse_lazy(int argc, char **argv)
{
	static const struct option longopts[] = {{"lazy", no_argument, NULL, 'l'}, {"help", no_argument, NULL, 'h'},
						 {0}};
	bool lazy = false;
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "lh", longopts, NULL)) != -1) {
		if (c == 'l')
			lazy = true;
		else if (c == 'h')
			cli_help_exit("umount");
		else if (optopt)
			cli_usage_error("umount", "-%c: unknown option", optopt);
		else
			cli_usage_error("umount", "%s: unknown option", argv[optind - 1]);
	}
	if (argc - optind != 1)
		cli_usage_error("umount", "expected MOUNTPOINT");
	return lazy;
}

int cmd_umount(int argc, char **argv)
{
	bool lazy = parse_lazy(argc, argv), root = geteuid() == 0;
	const char *mountpoint = argv[optind];
	char path[PATH_MAX];
	struct ck_mountinfo mi;
	struct statfs sf;

	absolute_path(mountpoint, path);
	if (!ck_mountinfo_find(path, &mi))
		cli_fail(mountpoint, "not a mount point");
	if (strcmp(mi.fstype, FSTYPE) != 0) {
		char why[128];
		snprintf(why, sizeof(why), "not a ckptfs mount (a %s file system); refused", mi.fstype);
		cli_fail(mountpoint, why);
	}
	/* statfs always reaches the daemon: no cache answers it */
	if (statfs(path, &sf) && errno == ENOTCONN) {
		ck_log(LOG_WARNING, "%s: the daemon of this mount is gone; detaching it (files still open on it "
				    "fail with ENOTCONN until closed)", mountpoint);
		lazy = true;
	}
	if (fusermount_u(path, lazy, root))
		return 0;
	if (!root)
		return EXIT_RUNTIME; /* fusermount3 said why */
	if (umount2(path, UMOUNT_NOFOLLOW | (lazy ? MNT_DETACH : 0)) == 0)
		return 0;
	cli_fail(mountpoint, strerror(errno));
}
