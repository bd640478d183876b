#include "err.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int ck_err_set(struct ck_err *e, int code, const char *fmt, ...)
{
	va_list ap;

	e->code = code ? code : EIO;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return -1;
}

int ck_err_context(struct ck_err *e, const char *fmt, ...)
{
	char old[sizeof(e->msg)];
	size_t hl;
	va_list ap;

	memcpy(old, e->msg, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	hl = strlen(e->msg);
	/* the callee's message follows, cut to fit */
	memcpy(e->msg + hl, old, strnlen(old, sizeof(e->msg) - 1 - hl));
	e->msg[hl + strnlen(old, sizeof(e->msg) - 1 - hl)] = 0;
	return -1;
}

int ck_err_nomem(struct ck_err *e)
{
	return ck_err_set(e, ENOMEM, "out of memory");
}
