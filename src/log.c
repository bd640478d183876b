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

void ck_log_escape(char *out, size_t size, const char *in)
{
	size_t o = 0;

	for (; *in && o + 5 <= size; in++) {
		unsigned char c = (unsigned char)*in;
		if (c < 0x20 || c == 0x7f)
			o += (size_t)snprintf(out + o, size - o, "\\x%02x", c);
		else if (c == '\\')
			o += (size_t)snprintf(out + o, size - o, "\\\\");
		else
			out[o++] = (char)c;
	}
	out[o < size ? o : size - 1] = 0;
}

void ck_vlog(int level, const char *fmt, va_list ap)
{
	char line[1024], safe[4 * sizeof(line)];

	vsnprintf(line, sizeof(line), fmt, ap);
	/* names (of files, of keys) come from whoever writes the source: a
	 * newline in one must not forge a log line */
	ck_log_escape(safe, sizeof(safe), line);
	if (use_syslog)
		syslog(level, "%s", safe);
	else
		fprintf(stderr, PACKAGE ": %s\n", safe); /* one call: lines from threads never interleave */
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
