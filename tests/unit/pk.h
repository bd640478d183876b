/* Builds pickles opcode by opcode, so tests state inputs and expected
 * outputs in the same terms the rewriter works in. */
#ifndef CKPTFS_TEST_PK_H
#define CKPTFS_TEST_PK_H

#include <string.h>
#include "buf.h"

static inline void pk_op(struct ck_buf *b, char op) { ck_buf_u8(b, (uint8_t)op); }
static inline void pk_proto(struct ck_buf *b, int v) { ck_buf_u8(b, 0x80); ck_buf_u8(b, (uint8_t)v); }
static inline void pk_str(struct ck_buf *b, const char *s)
{
	ck_buf_u8(b, 'X');
	ck_buf_u32le(b, (uint32_t)strlen(s));
	ck_buf_append(b, s, strlen(s));
}
static inline void pk_short_str(struct ck_buf *b, const char *s) /* protocol 4 */
{
	ck_buf_u8(b, 0x8c);
	ck_buf_u8(b, (uint8_t)strlen(s));
	ck_buf_append(b, s, strlen(s));
}
static inline void pk_put(struct ck_buf *b, unsigned n)
{
	if (n < 256) {
		ck_buf_u8(b, 'q');
		ck_buf_u8(b, (uint8_t)n);
	} else {
		ck_buf_u8(b, 'r');
		ck_buf_u32le(b, n);
	}
}
static inline void pk_get(struct ck_buf *b, unsigned n)
{
	if (n < 256) {
		ck_buf_u8(b, 'h');
		ck_buf_u8(b, (uint8_t)n);
	} else {
		ck_buf_u8(b, 'j');
		ck_buf_u32le(b, n);
	}
}
static inline void pk_int(struct ck_buf *b, uint8_t v) { ck_buf_u8(b, 'K'); ck_buf_u8(b, v); }
static inline void pk_global(struct ck_buf *b, const char *mod, const char *name)
{
	ck_buf_u8(b, 'c');
	ck_buf_append(b, mod, strlen(mod));
	ck_buf_u8(b, '\n');
	ck_buf_append(b, name, strlen(name));
	ck_buf_u8(b, '\n');
}
/* A tensor value as torch writes one (the storage is an opaque tuple here):
 * the rewriter only needs to see the rebuild call. memo: slot for the global
 * the first time (then reused with a get). */
static inline void pk_tensor(struct ck_buf *b, unsigned rebuild_slot, int first)
{
	if (first) {
		pk_global(b, "torch._utils", "_rebuild_tensor_v2");
		pk_put(b, rebuild_slot);
	} else {
		pk_get(b, rebuild_slot);
	}
	pk_op(b, '(');
	pk_op(b, 'N'); /* storage stand-in: a persistent id is opaque to the rewriter */
	pk_int(b, 0);
	pk_op(b, ')');
	pk_op(b, ')');
	ck_buf_u8(b, 0x89); /* NEWFALSE: requires_grad */
	pk_op(b, 't');
	pk_op(b, 'R');
}
static inline void pk_odict(struct ck_buf *b, unsigned odict_slot, int first)
{
	if (first) {
		pk_global(b, "collections", "OrderedDict");
		pk_put(b, odict_slot);
	} else {
		pk_get(b, odict_slot);
	}
	pk_op(b, ')');
	pk_op(b, 'R');
}

#endif
