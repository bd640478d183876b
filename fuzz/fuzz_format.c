/* libFuzzer target: format detection and every reader (torch zip, legacy,
 * safetensors) on a file, through both built-in views; each layout must
 * cover its size exactly and read back whole. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct ck_view *views[] = {&ck_view_plain, &ck_view_ddp};
	int fd = memfd_create("fuzz", 0);

	if (fd < 0 || write(fd, data, size) != (ssize_t)size)
		abort();
	for (size_t i = 0; i < 2; i++) {
		struct ck_src src = {fd, size, "fuzz"};
		struct ck_layout *l = NULL;
		struct ck_err e = {0};
		enum ck_format fmt;

		if (ck_view_layout(&src, views[i], &l, &fmt, &e) || !l)
			continue;
		uint64_t covered = 0;
		for (size_t k = 0; k < l->n; k++) {
			if (l->ext[k].off != covered || l->ext[k].len == 0 ||
			    (l->ext[k].kind == CK_EXTENT_SRC && l->ext[k].src_off + l->ext[k].len > size))
				abort();
			covered += l->ext[k].len;
		}
		uint8_t *buf = malloc(l->size + 1);
		if (covered != l->size || ck_layout_pread(l, fd, buf, l->size, 0) != (ssize_t)l->size)
			abort();
		free(buf);
		ck_layout_free(l);
	}
	close(fd);
	return 0;
}
