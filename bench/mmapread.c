/* mmapread FILE: maps FILE read-only and reads all of it in order (a sum of
 * its 8-byte words, so every page is faulted in and every byte read).
 * Prints the seconds from open to the last page. Built by bench/run.
 *
 * faultcost: with argument "-faults", maps 64 MiB of anonymous memory and
 * prints the seconds per first-touch page fault (a property of the machine
 * the figures depend on). */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int faults(void)
{
	size_t n = 64u << 20;
	double t0 = now();
	volatile char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < n; i += 4096)
		p[i] = 1;
	printf("%.9f\n", (now() - t0) / (double)(n / 4096));
	return 0;
}

int main(int argc, char **argv)
{
	struct stat st;
	volatile uint64_t sink;
	uint64_t sum = 0;
	double t0;
	int fd;
	const uint8_t *p;

	if (argc != 2) {
		fprintf(stderr, "usage: mmapread FILE | mmapread -faults\n");
		return 2;
	}
	if (strcmp(argv[1], "-faults") == 0)
		return faults();
	t0 = now();
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || fstat(fd, &st)) {
		perror(argv[1]);
		return 1;
	}
	p = st.st_size ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0) : NULL;
	if (p == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	for (off_t i = 0; i + 8 <= st.st_size; i += 8) {
		uint64_t w;

		memcpy(&w, p + i, 8);
		sum += w;
	}
	sink = sum;
	(void)sink;
	printf("%.9f\n", now() - t0);
	return 0;
}
