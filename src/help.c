/* The help of every command, in one place: README.md and man/ckptfs.1 say
 * the same (tests/e2e/test_docs.py fails when they disagree). */
#include <config.h>
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STRINGIFY(x) #x
#define NUMBER_TEXT(x) STRINGIFY(x)

static const char overview[] =
	"Usage: " PACKAGE " COMMAND [ARGS...]\n"
	"       " PACKAGE " SOURCE MOUNTPOINT [-o OPT[,OPT...]]\n"
	"       " PACKAGE " --help | --version\n"
	"\n"
	"Shows every file under SOURCE twice (and once more per -o view=), read-only,\n"
	"at MOUNTPOINT:\n"
	"  plain/...  PyTorch checkpoints with state-dict keys as the bare model has\n"
	"             them (\"module.\" and \"_orig_mod.\" prefixes stripped)\n"
	"  ddp/...    the same keys as DistributedDataParallel has them (\"module.\" added)\n"
	"Other files, directories and symlinks look the same in every view. Files\n"
	"added to SOURCE appear at once. Without FUSE, inspect, convert and cat use\n"
	"the same code on single files.\n"
	"\n"
	"Commands:\n"
	"  mount     mount SOURCE at MOUNTPOINT; returns once the file system answers\n"
	"  umount    unmount a ckptfs file system\n"
	"  restart   restart the daemon of a mount (an upgraded binary) without\n"
	"            unmounting\n"
	"  inspect   tell what checkpoints hold and what each view changes\n"
	"  convert   write a view of a checkpoint to a new file\n"
	"  cat       write a view of a checkpoint to standard output\n"
	"  help      show the help of a command\n"
	"'" PACKAGE " SOURCE MOUNTPOINT -o OPTS' is 'mount' as mount.fuse3 runs it (fstab,\n"
	"mount -t fuse.ckptfs, systemd .mount units).\n"
	"\n"
	"Options:\n"
	"  -h, --help      show this help and exit ('" PACKAGE " help COMMAND': a command's)\n"
	"  -V, --version   show the version and exit\n"
	"\n"
	"Exit status: 0 success, 1 error, 2 bad arguments.\n";

static const char mount_help[] =
	"Usage: " PACKAGE " mount [-f] [-d] [-o OPT[,OPT...]] SOURCE MOUNTPOINT\n"
	"       " PACKAGE " SOURCE MOUNTPOINT [-o OPT[,OPT...]]\n"
	"\n"
	"Mounts SOURCE (a directory) at MOUNTPOINT (an existing directory that is not\n"
	"a mount point and not inside SOURCE). Returns once the file system answers,\n"
	"the daemon staying in the background, or exits 1 with the reason on stderr.\n"
	"\n"
	"Options:\n"
	"  -f              stay in the foreground and log to stderr (else: syslog);\n"
	"                  tells systemd READY=1 (sd_notify) once the mount answers\n"
	"  -d              FUSE debug output on stderr (implies -f)\n"
	"  -o OPT[,OPT...]\n"
	"                  FUSE mount options, e.g. allow_other, allow_root (see\n"
	"                  mount.fuse3(8)); ro, nodev, nosuid and default_permissions\n"
	"                  are always set (the kernel checks the source's modes and\n"
	"                  POSIX ACLs); rw, dev, suid, defaults, auto, noauto,\n"
	"                  user, nouser, users, nofail, _netdev, comment=... and x-...\n"
	"                  (mount(8)'s own) are ignored\n"
	"  -o cache_mb=N   all the memory for views, in MiB: parsed checkpoint\n"
	"                  layouts kept or in use and those being built; a file\n"
	"                  whose build alone needs more fails with EIO (at least\n"
	"                  " NUMBER_TEXT(CLI_MIN_CACHE_MB) ", default " NUMBER_TEXT(CLI_DEFAULT_CACHE_MB) ")\n"
	"  -o view=NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]\n"
	"                  one more view, MOUNTPOINT/NAME: state-dict keys (and\n"
	"                  _metadata) lose every leading PREFIX listed, then gain the\n"
	"                  add= PREFIX; each PREFIX ends with '.'. Repeatable, up to\n"
	"                  13 views. E.g. view=bare:strip=model. (Lightning),\n"
	"                  view=peft:strip=base_model.model.\n"
	"  -o direct_io    no page cache on the mount: every read reaches the daemon,\n"
	"                  which splices the source's pages into the reader's buffer;\n"
	"                  for a mount an NFS server exports (its reads then copy\n"
	"                  once, not twice); shared mmap needs Linux 6.6 (ENODEV\n"
	"                  before)\n"
	"  -o nosandbox    serve without the confinement the daemon enters once the\n"
	"                  mount is up (a system-call filter, capabilities dropped);\n"
	"                  for debugging (gdb, strace -f)\n"
	"  -h, --help      show this help and exit\n"
	"\n"
	"Extended attributes (getfattr -d -m - PATH):\n"
	"  user.ckptfs.format  on files in a view: torch-zip, torch-legacy,\n"
	"                      safetensors, shard-index, torchscript or other\n"
	"  user.ckptfs.error   on a checkpoint that cannot be served: why (opening it\n"
	"                      fails with EIO; it stays listed with its source size)\n"
	"  user.ckptfs.builds  on MOUNTPOINT: how many file views were built\n";

static const char umount_help[] =
	"Usage: " PACKAGE " umount [-l] MOUNTPOINT\n"
	"\n"
	"Unmounts the ckptfs file system at MOUNTPOINT (fusermount3 -u; umount2()\n"
	"when root). Anything that is not a ckptfs mount is refused. A mount whose\n"
	"daemon is gone (\"Transport endpoint is not connected\") is detached, as\n"
	"with -l, and the command says so.\n"
	"\n"
	"Options:\n"
	"  -l, --lazy      detach at once, even while files on it are open; it goes\n"
	"                  away when the last is closed\n"
	"  -h, --help      show this help and exit\n";

static const char restart_help[] =
	"Usage: " PACKAGE " restart MOUNTPOINT\n"
	"\n"
	"Restarts the daemon serving the ckptfs mount at MOUNTPOINT without\n"
	"unmounting: it answers every request it has read (the rest wait in the\n"
	"kernel), and a new daemon running the\n"
	"ckptfs binary again (an upgraded one too) takes over the FUSE connection.\n"
	"Open files, directory listings and an NFS server exporting the mount go on\n"
	"after a pause. The new daemon is a new process (it tells systemd MAINPID=);\n"
	"the old one exits 0 once the new one serves. If the new one fails to start\n"
	"(a binary that does not run) or does not answer within 20 s, the old one\n"
	"serves on and says why in its log. SIGHUP to the daemon does the same.\n"
	"The new daemon's command line carries --takeover=FD:EPOCH:READY_FD:CONN, which\n"
	"is for this use only. Returns once the new daemon answers, or exits 1\n"
	"after 30 s.\n"
	"\n"
	"Options:\n"
	"  -h, --help      show this help and exit\n";

static const char inspect_help[] =
	"Usage: " PACKAGE " inspect [--json] [-o view=SPEC]... FILE...\n"
	"\n"
	"Tells, per FILE: its format and pickle protocol; each state dict found (where\n"
	"it sits in the checkpoint, its key count, the prefixes its keys carry, a few\n"
	"keys); what each view changes and the size of the file in it; a view= to add\n"
	"when the keys share a prefix such as model. or base_model.model.. Errors name\n"
	"the file, the offset and why; the status is then 1.\n"
	"\n"
	"Options:\n"
	"  --json          one JSON document per file, one per line\n"
	"  -o view=NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]\n"
	"                  a view to show besides plain and ddp (as for mount)\n"
	"  -h, --help      show this help and exit\n";

static const char convert_help[] =
	"Usage: " PACKAGE " convert --view VIEW [-f] [-r] [-o view=SPEC]... SOURCE DEST\n"
	"\n"
	"Writes what MOUNTPOINT/VIEW/SOURCE would hold to DEST, without FUSE: the\n"
	"same bytes. Unchanged ranges are copied with copy_file_range (a reflink\n"
	"where the file system has them); DEST is written to a temporary file in\n"
	"its directory, synced and renamed into place. A progress bar is shown\n"
	"when stderr is a terminal.\n"
	"\n"
	"Options:\n"
	"  --view VIEW     plain, ddp, the NAME of an -o view=, or a whole\n"
	"                  NAME:strip=PREFIX... view (required)\n"
	"  -f, --force     replace DEST if it exists (else: refused)\n"
	"  -r, --recursive\n"
	"                  SOURCE and DEST are directories: convert every file\n"
	"                  beneath SOURCE (others copied, symlinks kept)\n"
	"  -o view=NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]\n"
	"                  define a view (as for mount)\n"
	"  -h, --help      show this help and exit\n";

static const char cat_help[] =
	"Usage: " PACKAGE " cat --view VIEW [-o view=SPEC]... FILE\n"
	"\n"
	"Writes the view of FILE to standard output: the bytes MOUNTPOINT/VIEW/FILE\n"
	"would hold.\n"
	"\n"
	"Options:\n"
	"  --view VIEW     plain, ddp, the NAME of an -o view=, or a whole\n"
	"                  NAME:strip=PREFIX... view (required)\n"
	"  -o view=NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]\n"
	"                  define a view (as for mount)\n"
	"  -h, --help      show this help and exit\n";

static const char help_help[] =
	"Usage: " PACKAGE " help [COMMAND]\n"
	"\n"
	"Shows the help of COMMAND, or the overview.\n"
	"\n"
	"Options:\n"
	"  -h, --help      show this help and exit\n";

static const struct {
	const char *cmd, *text;
} helps[] = {
	{"mount", mount_help}, {"umount", umount_help}, {"restart", restart_help},
	{"inspect", inspect_help}, {"convert", convert_help}, {"cat", cat_help}, {"help", help_help},
};

void cli_help(const char *cmd)
{
	if (!cmd) {
		fputs(overview, stdout);
		return;
	}
	for (size_t i = 0; i < sizeof(helps) / sizeof(helps[0]); i++)
		if (strcmp(helps[i].cmd, cmd) == 0) {
			fputs(helps[i].text, stdout);
			return;
		}
	cli_usage_error("help", "%s: unknown command", cmd);
}

void cli_help_exit(const char *cmd)
{
	cli_help(cmd);
	exit(0);
}
