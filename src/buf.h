/* A growable byte buffer for everything ckptfs synthesizes: pickles,
 * zip headers, central directories. */
#ifndef CKPTFS_BUF_H
#define CKPTFS_BUF_H

#include <stddef.h>
#include <stdint.h>

struct ck_buf {
	uint8_t *data;
	size_t len, cap;
	int failed; /* an allocation failed; later appends are no-ops */
};

void ck_buf_append(struct ck_buf *b, const void *p, size_t n);
void ck_buf_u8(struct ck_buf *b, uint8_t v);
void ck_buf_u16le(struct ck_buf *b, uint16_t v);
void ck_buf_u32le(struct ck_buf *b, uint32_t v);
void ck_buf_u64le(struct ck_buf *b, uint64_t v);
void ck_buf_fill(struct ck_buf *b, uint8_t byte, size_t n);
/* Room for n more bytes that a writer is about to fill, so that it copies
 * nothing when it grows, the room's pages made present at once
 * (ck_prefault); 0, or -1 (and failed set) when out of memory. */
int ck_buf_reserve(struct ck_buf *b, size_t n);
void ck_buf_free(struct ck_buf *b);

/* Makes the pages inside [p, p + n) present at once, for memory about to be
 * filled: one system call instead of a page fault per 4 KiB, which made
 * the fresh buffers of a first build cost more than the parsing. Only a
 * hint: nothing is done for small n or on kernels without it. */
void ck_prefault(void *p, size_t n);

/* Little-endian loads from untrusted bytes; callers bound-check first. */
static inline uint16_t ck_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t ck_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t ck_le64(const uint8_t *p)
{
	return (uint64_t)ck_le32(p) | (uint64_t)ck_le32(p + 4) << 32;
}

#endif
