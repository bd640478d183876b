/* The tokenizer: the length of every opcode, checked against the input's
 * end, and the offset where each starts (4 bytes an op: an op's length is
 * the distance to the next). */
#include "pickle_int.h"

#include <errno.h>
#include <string.h>

enum arg {
	A_NONE, A_U8, A_U16, A_U32, A_U64, A_F8, /* fixed-size arguments */
	A_STR1, A_STR4, A_STR8,                   /* length-prefixed bytes */
	A_LINE, A_LINE2,                          /* newline-terminated text */
};

static enum arg op_arg(uint8_t c, bool *known)
{
	*known = true;
	switch (c) {
	case 'K': case 'h': case 'q': case 0x80: case 0x82: return A_U8;
	case 'M': case 0x83: return A_U16;
	case 'J': case 'j': case 'r': case 0x84: return A_U32;
	case 0x95: return A_U64;
	case 'G': return A_F8;
	case 'U': case 'C': case 0x8c: case 0x8a: return A_STR1;
	case 'T': case 'B': case 'X': case 0x8b: return A_STR4;
	case 0x8d: case 0x8e: case 0x96: return A_STR8;
	case 'I': case 'L': case 'F': case 'S': case 'V': case 'g': case 'p': case 'P': return A_LINE;
	case 'c': case 'i': return A_LINE2;
	case '(': case '.': case '0': case '1': case '2': case 'N': case 0x88: case 0x89:
	case 'R': case 'b': case 'a': case 'e': case 's': case 'u': case 'd': case '}':
	case 'l': case ']': case 't': case ')': case 0x85: case 0x86: case 0x87: case 'o':
	case 0x81: case 0x92: case 'Q': case 0x8f: case 0x90: case 0x91: case 0x93: case 0x94:
	case 0x97: case 0x98:
		return A_NONE;
	}
	*known = false;
	return A_NONE;
}


/* Length of the opcode at p (opcode byte included), or 0 if it is unknown
 * or runs past the end. */
static size_t op_length(const uint8_t *in, size_t n, size_t p, bool *known)
{
	enum arg a = op_arg(in[p], known);
	size_t q = p + 1, rest = n - q;
	uint64_t len = 0;
	const uint8_t *nl;

	if (!*known)
		return 0;
	switch (a) {
	case A_NONE: break;
	case A_U8: len = 1; break;
	case A_U16: len = 2; break;
	case A_U32: len = 4; break;
	case A_U64: case A_F8: len = 8; break;
	case A_STR1:
		if (rest < 1)
			return 0;
		len = 1 + (uint64_t)in[q];
		break;
	case A_STR4:
		if (rest < 4)
			return 0;
		len = 4 + (uint64_t)ck_le32(in + q);
		break;
	case A_STR8:
		if (rest < 8 || ck_le64(in + q) > rest - 8)
			return 0;
		len = 8 + ck_le64(in + q);
		break;
	case A_LINE2:
		if (!(nl = memchr(in + q, '\n', rest)))
			return 0;
		len = (uint64_t)(nl - (in + q)) + 1;
		/* fall through: the second line */
		if (!(nl = memchr(in + q + len, '\n', rest - len)))
			return 0;
		len = (uint64_t)(nl - (in + q)) + 1;
		break;
	case A_LINE:
		if (!(nl = memchr(in + q, '\n', rest)))
			return 0;
		len = (uint64_t)(nl - (in + q)) + 1;
		break;
	}
	if (len > rest)
		return 0;
	return 1 + (size_t)len;
}

/* Walks the opcodes to STOP, recording them when `record`. Returns the
 * pickle's length, or 0 with e set; *short_input tells the input ended
 * before STOP (a caller reading a prefix of a file may read more). */
size_t pk_scan(struct machine *m, bool record, bool *short_input)
{
	size_t p = 0;

	*short_input = false;
	if (m->n > CK_PICKLE_MAX_BYTES) {
		ck_err_set(m->e, EFBIG, "pickle of %zu bytes exceeds the %zu-byte limit", m->n, CK_PICKLE_MAX_BYTES);
		return 0;
	}
	for (;;) {
		bool known;
		size_t len;

		if (p >= m->n) {
			*short_input = true;
			ck_err_set(m->e, EIO, "pickle offset %zu: ends without STOP", p);
			return 0;
		}
		len = op_length(m->in, m->n, p, &known);
		if (!known) {
			ck_err_set(m->e, EIO, "pickle offset %zu: unknown opcode 0x%02x", p, m->in[p]);
			return 0;
		}
		if (!len) {
			*short_input = true;
			ck_err_set(m->e, EIO, "pickle offset %zu: opcode 0x%02x runs past the end (%zu bytes)", p,
				   m->in[p], m->n);
			return 0;
		}
		if (record) {
			if (NOPS(m) == CK_PICKLE_MAX_OPS) {
				ck_err_set(m->e, EFBIG, "pickle offset %zu: more than %u opcodes, the limit", p,
					   CK_PICKLE_MAX_OPS);
				return 0;
			}
			if (VEC_RESERVE(m->pos, NOPS(m) + 2ull)) { /* + 2: this op and the end */
				ck_err_nomem(m->e);
				return 0;
			}
			m->pos.v[m->pos.n++] = (uint32_t)p;
		}
		p += len;
		if (m->in[p - len] == '.') {
			if (record)
				m->pos.v[m->pos.n] = (uint32_t)p;
			return p;
		}
	}
}

