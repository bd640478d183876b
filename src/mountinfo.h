/* The mount table of this process (/proc/self/mountinfo): what is mounted
 * at a path, without touching the path itself (a dead FUSE mount, or one
 * whose daemon has not answered yet, would block or fail a stat). */
#ifndef CKPTFS_MOUNTINFO_H
#define CKPTFS_MOUNTINFO_H

#include <stdbool.h>

struct ck_mountinfo {
	char dev[32];      /* major:minor */
	char fstype[64];   /* e.g. fuse.ckptfs, tmpfs */
};

/* The topmost mount whose mount point is the absolute path mp; false when
 * there is none (or mountinfo cannot be read). */
bool ck_mountinfo_find(const char *mp, struct ck_mountinfo *out);

#endif
