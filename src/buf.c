#include "buf.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif
#define PREFAULT_MIN ((size_t)64 << 10)
#define PAGE ((uintptr_t)4096)

static int grow(struct ck_buf *b, size_t n)
{
	size_t cap;
	uint8_t *p;

	if (b->failed)
		return -1;
	if (n <= b->cap - b->len)
		return 0;
	if (n > SIZE_MAX / 2 - b->len)
		goto fail;
	cap = b->cap ? b->cap : 256;
	while (cap - b->len < n)
		cap *= 2;
	p = realloc(b->data, cap);
	if (!p)
		goto fail;
	b->data = p;
	b->cap = cap;
	return 0;
fail:
	b->failed = 1;
	return -1;
}

int ck_buf_reserve(struct ck_buf *b, size_t n)
{
	if (grow(b, n))
		return -1;
	ck_prefault(b->data + b->len, n);
	return 0;
}

void ck_buf_append(struct ck_buf *b, const void *p, size_t n)
{
	if (n == 0 || grow(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void ck_buf_fill(struct ck_buf *b, uint8_t byte, size_t n)
{
	if (n == 0 || grow(b, n))
		return;
	memset(b->data + b->len, byte, n);
	b->len += n;
}

void ck_buf_u8(struct ck_buf *b, uint8_t v)
{
	ck_buf_append(b, &v, 1);
}

void ck_buf_u16le(struct ck_buf *b, uint16_t v)
{
	uint8_t p[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
	ck_buf_append(b, p, sizeof(p));
}

void ck_buf_u32le(struct ck_buf *b, uint32_t v)
{
	uint8_t p[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
	ck_buf_append(b, p, sizeof(p));
}

void ck_buf_u64le(struct ck_buf *b, uint64_t v)
{
	ck_buf_u32le(b, (uint32_t)v);
	ck_buf_u32le(b, (uint32_t)(v >> 32));
}

void ck_buf_free(struct ck_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

void ck_prefault(void *p, size_t n)
{
	uintptr_t from = ((uintptr_t)p + PAGE - 1) & ~(PAGE - 1), to = ((uintptr_t)p + n) & ~(PAGE - 1);

	if (n >= PREFAULT_MIN && to > from)
		(void)madvise((void *)from, to - from, MADV_POPULATE_WRITE);
}
