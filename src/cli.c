#include <config.h>
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "log.h"

void cli_usage_error(const char *cmd, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (cmd)
		fprintf(stderr, PACKAGE ": %s: %s (see '" PACKAGE " %s --help')\n", cmd, msg, cmd);
	else
		fprintf(stderr, PACKAGE ": %s (see '" PACKAGE " --help')\n", msg);
	exit(EXIT_USAGE);
}

void cli_fail(const char *what, const char *why)
{
	ck_log(LOG_ERR, "%s: %s", what, why);
	exit(EXIT_RUNTIME);
}

void cli_views_init(struct cli_views *vs)
{
	*vs = (struct cli_views){.list = {&ck_view_plain, &ck_view_ddp}, .n = 2};
}

void cli_views_add(struct cli_views *vs, const char *cmd, const char *spec)
{
	struct ck_view *v = &vs->custom[vs->n];
	struct ck_err e;

	if (vs->n == CLI_MAX_VIEWS)
		cli_usage_error(cmd, "view=%s: at most %d views, plain and ddp included", spec, CLI_MAX_VIEWS);
	if (ck_view_parse(spec, v, &e))
		cli_usage_error(cmd, "%s", e.msg);
	for (size_t i = 0; i < vs->n; i++)
		if (strcmp(vs->list[i]->name, v->name) == 0)
			cli_usage_error(cmd, "view=%s: there is a view named %s already", spec, v->name);
	vs->list[vs->n++] = v;
}

const struct ck_view *cli_views_pick(struct cli_views *vs, const char *cmd, const char *name)
{
	if (strchr(name, ':')) {
		cli_views_add(vs, cmd, name);
		return vs->list[vs->n - 1];
	}
	for (size_t i = 0; i < vs->n; i++)
		if (strcmp(vs->list[i]->name, name) == 0)
			return vs->list[i];
	cli_usage_error(cmd, "--view %s: no such view (plain, ddp, or one given with -o view=%s:...)", name, name);
}

void cli_views_clear(struct cli_views *vs)
{
	for (size_t i = 0; i < CLI_MAX_VIEWS; i++)
		ck_view_clear(&vs->custom[i]);
}
