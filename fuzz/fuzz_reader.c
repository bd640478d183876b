/* libFuzzer target for one reader, chosen at build time with -DREADER=:
 * format (detection, then any reader), torchzip, legacy, safetensors,
 * shardindex.
 * The input is written to a memfd and laid out through both built-in views;
 * each layout must tile its size exactly and read back whole. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sanitizer/asan_interface.h>
#include <sys/mman.h>
#include <unistd.h>
#include "format.h"
#include "legacy.h"
#include "safetensors.h"
#include "shardindex.h"
#include "torchzip.h"

#define format 1
#define torchzip 2
#define legacy 3
#define safetensors 4
#define shardindex 5

static int lay_out(const struct ck_src *src, const struct ck_view *v, struct ck_layout **l, struct ck_err *e)
{
#if READER == format
	enum ck_format fmt;
	return ck_view_layout(src, v, l, &fmt, NULL, e);
#elif READER == torchzip
	enum ck_format fmt;
	return ck_format_layout_as(CK_FORMAT_TORCHZIP, src, v, l, &fmt, e);
#elif READER == legacy
	return ck_legacy_layout(src, v, l, e);
#elif READER == safetensors
	return ck_safetensors_layout(src, v, l, e);
#elif READER == shardindex
	enum ck_format fmt;
	return ck_format_layout_as(CK_FORMAT_SHARDINDEX, src, v, l, &fmt, e);
#else
#error "READER must be format, torchzip, legacy, safetensors or shardindex"
#endif
}

/* One memfd and one read-back buffer for the whole run: creating them anew
 * cost a system call and a large ASan allocation per input. The buffer's
 * bytes past the layout's size are poisoned, so a read past it still fails. */
static int input_fd(const uint8_t *data, size_t size)
{
	static int fd = -1;

	if (fd < 0 && (fd = memfd_create("fuzz", 0)) < 0)
		abort();
	if (ftruncate(fd, 0) || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	return fd;
}

static uint8_t *read_buffer(size_t size)
{
	static uint8_t *buf;
	static size_t cap;

	if (size + 1 > cap) {
		free(buf);
		cap = size + 1 > 2 * cap ? size + 1 : 2 * cap;
		if (!(buf = malloc(cap)))
			abort();
	}
	ASAN_UNPOISON_MEMORY_REGION(buf, cap);
	ASAN_POISON_MEMORY_REGION(buf + size, cap - size);
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct ck_view *views[] = {&ck_view_plain, &ck_view_ddp};
	int fd = input_fd(data, size);

	for (size_t i = 0; i < 2; i++) {
		struct ck_src src = {fd, size, "fuzz"};
		struct ck_layout *l = NULL;
		struct ck_err e = {0};

		if (lay_out(&src, views[i], &l, &e) || !l)
			continue;
		uint64_t covered = 0;
		for (size_t k = 0; k < l->n; k++) {
			if (l->ext[k].off != covered || l->ext[k].len == 0 ||
			    (l->ext[k].kind == CK_EXTENT_SRC && l->ext[k].src_off + l->ext[k].len > size))
				abort();
			covered += l->ext[k].len;
		}
		if (covered != l->size ||
		    ck_layout_pread(l, fd, read_buffer(l->size), l->size, 0) != (ssize_t)l->size)
			abort();
		ck_layout_free(l);
	}
	return 0;
}
