#include <config.h>
#include "mountinfo.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

/* mountinfo escapes blanks, newlines and backslashes as \ooo. */
static void unescape(const char *in, char *out, size_t size)
{
	size_t j = 0;

	for (size_t i = 0; in[i] && j + 1 < size; j++) {
		if (in[i] == '\\' && in[i + 1] >= '0' && in[i + 1] <= '3' && in[i + 2] >= '0' && in[i + 2] <= '7' &&
		    in[i + 3] >= '0' && in[i + 3] <= '7') {
			out[j] = (char)((in[i + 1] - '0') * 64 + (in[i + 2] - '0') * 8 + (in[i + 3] - '0'));
			i += 4;
		} else {
			out[j] = in[i++];
		}
	}
	out[j] = '\0';
}

/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - FSTYPE SOURCE SUPER" */
static bool parse_line(const char *line, char *mp, size_t mpsize, struct ck_mountinfo *mi)
{
	char raw[PATH_MAX * 4];
	const char *sep = strstr(line, " - ");

	if (!sep || sscanf(line, "%*s %*s %31s %*s %16383s", mi->dev, raw) != 2 ||
	    sscanf(sep + 3, "%63s", mi->fstype) != 1)
		return false;
	unescape(raw, mp, mpsize);
	return true;
}

bool ck_mountinfo_find(const char *mp, struct ck_mountinfo *out)
{
	char line[PATH_MAX * 4 + 1024], path[PATH_MAX];
	FILE *f = fopen("/proc/self/mountinfo", "re");
	bool found = false;

	if (!f)
		return false;
	/* later lines are mounts stacked on earlier ones: the last match is on top */
	while (fgets(line, sizeof(line), f)) {
		struct ck_mountinfo mi;
		if (parse_line(line, path, sizeof(path), &mi) && strcmp(path, mp) == 0) {
			*out = mi;
			found = true;
		}
	}
	fclose(f);
	return found;
}
