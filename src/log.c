#include <config.h>
#include "log.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>

/* Set once; a daemon in the background sets it from the thread that sees
 * the mount answer, while others may log. */
static atomic_bool use_syslog;

void ck_log_to_syslog(void)
{
	openlog(PACKAGE, LOG_PID, LOG_DAEMON);
	use_syslog = true;
}

void ck_vlog(int level, const char *fmt, va_list ap)
{
	char line[1024];

	vsnprintf(line, sizeof(line), fmt, ap);
	if (use_syslog)
		syslog(level, "%s", line);
	else
		fprintf(stderr, PACKAGE ": %s\n", line); /* one call: lines from threads never interleave */
}

void ck_log(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	ck_vlog(level, fmt, ap);
	va_end(ap);
}

int ck_log_err(const char *what, const struct ck_err *e)
{
	ck_log(LOG_ERR, "%s: %s", what, e->msg);
	return -e->code;
}
