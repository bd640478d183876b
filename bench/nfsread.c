/* Reads one file over NFS to stdout the way a kernel NFS client reads ahead:
 * DEPTH READs of CHUNK bytes in flight at once (libnfs's nfs-cat has one,
 * so it measures round trips more than the server). Output is in order.
 *
 *   nfsread URL [DEPTH]      URL: nfs://SERVER/EXPORT/FILE[?version=4]
 *
 * Prints "BYTES SECONDS" on stderr (from the first READ sent to the last
 * byte written); exits 1 on any error. Built by bench/bench.py with
 * `cc nfsread.c $(pkg-config --cflags --libs libnfs)` (libnfs 4.0 API: the
 * read callback lends its data). */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h> /* libnfs.h needs struct timeval */
#include <nfsc/libnfs.h>

#define MAX_DEPTH 64
#define MAX_CHUNK (1u << 20)

struct slot {
	uint64_t off, len, got;
	int busy;
	char *buf;
};

static struct nfs_context *nfs;
static struct nfsfh *fh;
static struct slot slots[MAX_DEPTH];
static uint64_t size, next_off, written;
static int failed;

static void on_read(int n, struct nfs_context *ctx, void *data, void *priv);

static void issue(struct slot *s)
{
	if (nfs_pread_async(nfs, fh, s->off + s->got, s->len - s->got, on_read, s)) {
		fprintf(stderr, "nfsread: READ at %llu: %s\n", (unsigned long long)(s->off + s->got),
			nfs_get_error(nfs));
		failed = 1;
	}
}

static void on_read(int n, struct nfs_context *ctx, void *data, void *priv)
{
	struct slot *s = priv;

	(void)ctx;
	if (n < 0 || (n == 0 && s->got < s->len) || (uint64_t)n > s->len - s->got) {
		fprintf(stderr, "nfsread: READ at %llu: %s\n", (unsigned long long)(s->off + s->got),
			n < 0 ? (char *)data : "short file");
		failed = 1;
		return;
	}
	memcpy(s->buf + s->got, data, (size_t)n);
	s->got += (uint64_t)n;
	if (s->got < s->len)
		issue(s); /* a short READ: ask for the rest */
}

/* Writes finished slots in file order and gives each the next chunk. */
static int drain(struct slot *ring, int depth, int *head, uint64_t chunk)
{
	while (ring[*head].busy && ring[*head].got == ring[*head].len) {
		struct slot *s = &ring[*head];

		for (uint64_t w = 0; w < s->len;) {
			ssize_t k = write(1, s->buf + w, (size_t)(s->len - w));

			if (k < 0) {
				if (errno == EINTR)
					continue;
				perror("nfsread: write");
				return -1;
			}
			w += (uint64_t)k;
		}
		written += s->len;
		s->busy = 0;
		if (next_off < size) {
			s->off = next_off;
			s->len = size - next_off < chunk ? size - next_off : chunk;
			s->got = 0;
			s->busy = 1;
			next_off += s->len;
			issue(s);
		}
		*head = (*head + 1) % depth;
	}
	return 0;
}

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int run(int depth)
{
	uint64_t chunk = nfs_get_readmax(nfs);
	int head = 0;

	if (chunk == 0 || chunk > MAX_CHUNK)
		chunk = MAX_CHUNK;
	for (int i = 0; i < depth; i++) {
		if (!(slots[i].buf = malloc(chunk))) {
			perror("nfsread: malloc");
			return -1;
		}
		if (next_off < size) {
			slots[i] = (struct slot){ .off = next_off, .busy = 1, .buf = slots[i].buf,
						  .len = size - next_off < chunk ? size - next_off : chunk };
			next_off += slots[i].len;
			issue(&slots[i]);
		}
	}
	while (!failed && written < size) {
		struct pollfd p = { .fd = nfs_get_fd(nfs), .events = (short)nfs_which_events(nfs) };

		if (poll(&p, 1, 1000) < 0 && errno != EINTR) {
			perror("nfsread: poll");
			return -1;
		}
		if (nfs_service(nfs, p.revents) < 0) {
			fprintf(stderr, "nfsread: %s\n", nfs_get_error(nfs));
			return -1;
		}
		if (drain(slots, depth, &head, chunk) < 0)
			return -1;
	}
	return failed ? -1 : 0;
}

int main(int argc, char **argv)
{
	struct nfs_stat_64 st;
	struct nfs_url *url;
	int depth = argc > 2 ? atoi(argv[2]) : 8;
	double t0;

	if (argc < 2 || argc > 3 || depth < 1 || depth > MAX_DEPTH) {
		fprintf(stderr, "usage: nfsread URL [DEPTH (1-%d, default 8)]\n", MAX_DEPTH);
		return 2;
	}
	if (!(nfs = nfs_init_context()) || !(url = nfs_parse_url_full(nfs, argv[1]))) {
		fprintf(stderr, "nfsread: %s\n", nfs ? nfs_get_error(nfs) : "no context");
		return 1;
	}
	if (nfs_mount(nfs, url->server, url->path) || nfs_open(nfs, url->file, 0, &fh) ||
	    nfs_fstat64(nfs, fh, &st)) {
		fprintf(stderr, "nfsread: %s: %s\n", argv[1], nfs_get_error(nfs));
		return 1;
	}
	size = st.nfs_size;
	t0 = now();
	if (run(depth) < 0)
		return 1;
	fprintf(stderr, "%llu %.6f\n", (unsigned long long)written, now() - t0);
	nfs_close(nfs, fh);
	nfs_destroy_url(url);
	nfs_destroy_context(nfs);
	return 0;
}
