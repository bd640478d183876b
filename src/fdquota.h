/* The daemon's descriptors, shared fairly: each open view file and open
 * directory holds a source descriptor, so one user holding many could
 * leave none for anyone else. The soft RLIMIT_NOFILE is raised to the hard
 * one, and each user (uid) may hold at most a quarter of what is left after
 * a reserve for lookups and builds. */
#ifndef CKPTFS_FDQUOTA_H
#define CKPTFS_FDQUOTA_H

#include <sys/types.h>

/* Descriptors kept back for the daemon's own work. */
#define CK_FDQUOTA_RESERVE 256u
/* The least a user may hold, however low the limit. */
#define CK_FDQUOTA_MIN 16u

struct ck_fdquota;

/* Raises the soft descriptor limit to the hard one and returns the share
 * of one user: max(CK_FDQUOTA_MIN, (limit - CK_FDQUOTA_RESERVE) / 4). */
unsigned ck_fdquota_raise_limit(void);

struct ck_fdquota *ck_fdquota_new(unsigned per_user);
void ck_fdquota_free(struct ck_fdquota *q);

/* Takes one descriptor for uid: 0, -EMFILE when uid holds its share
 * already, or -ENOMEM. */
int ck_fdquota_take(struct ck_fdquota *q, uid_t uid);
void ck_fdquota_give(struct ck_fdquota *q, uid_t uid);

#endif
