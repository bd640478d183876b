/* The one place that logs. Messages go to stderr while the daemon runs in
 * the foreground and to syslog once it has detached from the terminal. */
#ifndef CKPTFS_LOG_H
#define CKPTFS_LOG_H

#include <stdarg.h>
#include <stddef.h>
#include <syslog.h> /* LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG: the levels ck_log takes */
#include "err.h"

/* From now on, log to syslog (stderr is /dev/null after daemonizing). */
void ck_log_to_syslog(void);

/* in with every control character as \xNN and '\' as '\\', so that no
 * name can forge or hide part of a log line; ck_vlog applies it to every
 * line. out holds size bytes; 4 x strlen(in) + 1 always suffice. */
void ck_log_escape(char *out, size_t size, const char *in);

void ck_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ck_vlog(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Logs "what: message" at LOG_ERR and returns -e->code, the negated errno
 * to reply with. */
int ck_log_err(const char *what, const struct ck_err *e);

#endif
