/* The commands of the ckptfs command line; each parses its own arguments
 * (argv[0] is the command's name) and returns the exit status. */
#ifndef CKPTFS_COMMANDS_H
#define CKPTFS_COMMANDS_H

int cmd_mount(int argc, char **argv);
int cmd_umount(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_cat(int argc, char **argv);
int cmd_restart(int argc, char **argv);

#endif
