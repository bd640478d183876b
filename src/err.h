/* Errors that carry their context (which file, which offset, what was
 * expected) up to the one place that logs them and maps them to errno. */
#ifndef CKPTFS_ERR_H
#define CKPTFS_ERR_H

#include <stdarg.h>

struct ck_err {
	int code;       /* errno to report, 0 when no error */
	char msg[512];  /* human-readable, outermost context first */
};

/* Sets the error (replacing any earlier one); returns -1 for tail calls. */
int ck_err_set(struct ck_err *e, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prepends context ("data.pkl: ") to an error already set by a callee. */
int ck_err_context(struct ck_err *e, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Out of memory: the one message every allocation failure uses. */
int ck_err_nomem(struct ck_err *e);

#endif
