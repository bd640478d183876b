/* What every ckptfs command shares: exit codes, how usage errors and
 * failures are told, and the views named on the command line. */
#ifndef CKPTFS_CLI_H
#define CKPTFS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include "view.h"

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };

/* Node ids keep 4 bits for the view; plain and ddp included. */
#define CLI_MAX_VIEWS 15

/* Memory for built views a mount keeps, in MiB (-o cache_mb=). */
#define CLI_DEFAULT_CACHE_MB 256
/* Below it hardly a small checkpoint could be built. */
#define CLI_MIN_CACHE_MB 16

/* "ckptfs: CMD: message (see 'ckptfs CMD --help')", exit 2. */
void cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Logs "what: why", exit 1. */
void cli_fail(const char *what, const char *why) __attribute__((noreturn));

/* The built-in views and those given with -o view=SPEC. */
struct cli_views {
	struct ck_view custom[CLI_MAX_VIEWS];
	const struct ck_view *list[CLI_MAX_VIEWS];
	size_t n;
};

void cli_views_init(struct cli_views *vs);
/* Adds a view=SPEC (a usage error if it is bad or its name is taken). */
void cli_views_add(struct cli_views *vs, const char *cmd, const char *spec);
/* The view named name, or, when name is a whole SPEC, that view added. */
const struct ck_view *cli_views_pick(struct cli_views *vs, const char *cmd, const char *name);
void cli_views_clear(struct cli_views *vs);

/* Prints the help of a command (NULL: the overview) to stdout. */
void cli_help(const char *cmd);
/* Handles -h/--help for cmd: prints its help and exits 0. */
void cli_help_exit(const char *cmd) __attribute__((noreturn));

#endif
