/* The ckptfs command line: finds the command; each lives in its own file. */
#include <config.h>

#include <stdio.h>
#include <string.h>
#include "cli.h"
#include "commands.h"

static int cmd_help(int argc, char **argv)
{
	if (argc > 1 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0))
		cli_help_exit("help");
	if (argc > 2)
		cli_usage_error("help", "expected at most one COMMAND");
	cli_help(argc == 2 ? argv[1] : NULL);
	return 0;
}

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
} commands[] = {
	{"mount", cmd_mount}, {"umount", cmd_umount}, {"restart", cmd_restart},
	{"inspect", cmd_inspect}, {"convert", cmd_convert}, {"cat", cmd_cat}, {"help", cmd_help},
};

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";

	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(cmd, commands[i].name) == 0)
			return commands[i].run(argc - 1, argv + 1);
	if (argc == 2 && (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0))
		cli_help_exit(NULL);
	if (argc == 2 && (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0)) {
		printf(PACKAGE " " PACKAGE_VERSION "\n");
		return 0;
	}
	if (!*cmd)
		cli_usage_error(NULL, "expected a command");
	/* mount.fuse3 runs "ckptfs SOURCE MOUNTPOINT -o OPTS" (fstab, mount -t) */
	if (argc >= 3 && cmd[0] != '-')
		return cmd_mount(argc, argv);
	cli_usage_error(NULL, "%s: unknown command", cmd);
}
