/* A long-lived NFS client for test_nfs.py: it looks files up once, keeps
 * their NFS file handles, and reads through those same handles whenever
 * told to, the way a client that holds files open across a server-side
 * change does (nfs-cat looks everything up afresh).
 *
 *   nfsclient URL FILE...    URL: nfs://SERVER/EXPORT[?version=4&...]
 *
 * Opens every FILE (a path below the export), prints "open I ok" or
 * "open I err MESSAGE" per file, then "ready". Then, per stdin line:
 *   read PREFIX   reads each open file whole through its held handle into
 *                 PREFIX.I; prints "read I ok SIZE" or "read I err MESSAGE;
 *                 getattr: MESSAGE" (a GETATTR through the same handle)
 *   quit          exits
 * Every command's output ends with "done". Built by the test with
 * `cc nfsclient.c $(pkg-config --cflags --libs libnfs)`. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h> /* libnfs.h needs struct timeval */
#include <nfsc/libnfs.h>

#define CHUNK (1 << 20)
#define MAX_FILES 16

static int read_whole(struct nfs_context *nfs, struct nfsfh *fh, const char *out, uint64_t *size)
{
	static char buf[CHUNK];
	FILE *f = fopen(out, "wb");
	int n = 0;

	if (!f)
		return -1;
	*size = 0;
	while ((n = nfs_pread(nfs, fh, *size, CHUNK, buf)) > 0) {
		fwrite(buf, 1, (size_t)n, f);
		*size += (uint64_t)n;
	}
	fclose(f);
	return n;
}

static void read_all(struct nfs_context *nfs, struct nfsfh **fhs, int nfiles, const char *prefix)
{
	for (int i = 0; i < nfiles; i++) {
		char out[4096];
		uint64_t size;

		if (!fhs[i]) {
			printf("read %d err not open\n", i);
			continue;
		}
		snprintf(out, sizeof(out), "%s.%d", prefix, i);
		if (read_whole(nfs, fhs[i], out, &size) < 0) {
			/* libnfs 4.0 garbles the message of a failed v3 READ:
			 * a GETATTR through the same handle says what is wrong */
			struct nfs_stat_64 st;
			char msg[1024];

			snprintf(msg, sizeof(msg), "%s", nfs_get_error(nfs));
			if (nfs_fstat64(nfs, fhs[i], &st))
				printf("read %d err %s; getattr: %s\n", i, msg, nfs_get_error(nfs));
			else
				printf("read %d err %s; getattr: ok\n", i, msg);
		} else
			printf("read %d ok %llu\n", i, (unsigned long long)size);
	}
}

int main(int argc, char **argv)
{
	struct nfsfh *fhs[MAX_FILES] = {0};
	struct nfs_context *nfs;
	struct nfs_url *url;
	char line[4096];
	int nfiles = argc - 2;

	if (argc < 3 || nfiles > MAX_FILES) {
		fprintf(stderr, "usage: nfsclient URL FILE... (at most %d files)\n", MAX_FILES);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	nfs = nfs_init_context();
	if (!nfs || !(url = nfs_parse_url_dir(nfs, argv[1]))) {
		fprintf(stderr, "nfsclient: %s: %s\n", argv[1], nfs ? nfs_get_error(nfs) : "no memory");
		return 1;
	}
	if (nfs_mount(nfs, url->server, url->path)) {
		fprintf(stderr, "nfsclient: mount %s:%s: %s\n", url->server, url->path, nfs_get_error(nfs));
		return 1;
	}
	for (int i = 0; i < nfiles; i++) {
		if (nfs_open(nfs, argv[i + 2], O_RDONLY, &fhs[i]))
			printf("open %d err %s\n", i, nfs_get_error(nfs));
		else
			printf("open %d ok\n", i);
	}
	printf("ready\n");
	while (fgets(line, sizeof(line), stdin)) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "read ", 5) == 0)
			read_all(nfs, fhs, nfiles, line + 5);
		else if (strcmp(line, "quit") == 0)
			break;
		else
			printf("unknown command\n");
		printf("done\n");
	}
	for (int i = 0; i < nfiles; i++)
		if (fhs[i])
			nfs_close(nfs, fhs[i]);
	nfs_destroy_url(url);
	nfs_destroy_context(nfs);
	return 0;
}
