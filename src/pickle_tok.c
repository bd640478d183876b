/* The tokenizer: the length of every opcode, checked against the input's
 * end. It keeps nothing per op: the passes after it walk the ops again,
 * each op named by its offset. */
#include "pickle_int.h"

#include <errno.h>
#include <string.h>

/* Each opcode's argument, one byte per possible opcode byte. */
const uint8_t pk_op_arg[256] = {
	['K'] = A_U8, ['h'] = A_U8, ['q'] = A_U8, [0x80] = A_U8, [0x82] = A_U8,
	['M'] = A_U16, [0x83] = A_U16,
	['J'] = A_U32, ['j'] = A_U32, ['r'] = A_U32, [0x84] = A_U32,
	[0x95] = A_U64,
	['G'] = A_F8,
	['U'] = A_STR1, ['C'] = A_STR1, [0x8c] = A_STR1, [0x8a] = A_STR1,
	['T'] = A_STR4, ['B'] = A_STR4, ['X'] = A_STR4, [0x8b] = A_STR4,
	[0x8d] = A_STR8, [0x8e] = A_STR8, [0x96] = A_STR8,
	['I'] = A_LINE, ['L'] = A_LINE, ['F'] = A_LINE, ['S'] = A_LINE, ['V'] = A_LINE, ['g'] = A_LINE,
	['p'] = A_LINE, ['P'] = A_LINE,
	['c'] = A_LINE2, ['i'] = A_LINE2,
	['('] = A_NONE, ['.'] = A_NONE, ['0'] = A_NONE, ['1'] = A_NONE, ['2'] = A_NONE, ['N'] = A_NONE,
	[0x88] = A_NONE, [0x89] = A_NONE, ['R'] = A_NONE, ['b'] = A_NONE, ['a'] = A_NONE, ['e'] = A_NONE,
	['s'] = A_NONE, ['u'] = A_NONE, ['d'] = A_NONE, ['}'] = A_NONE, ['l'] = A_NONE, [']'] = A_NONE,
	['t'] = A_NONE, [')'] = A_NONE, [0x85] = A_NONE, [0x86] = A_NONE, [0x87] = A_NONE, ['o'] = A_NONE,
	[0x81] = A_NONE, [0x92] = A_NONE, ['Q'] = A_NONE, [0x8f] = A_NONE, [0x90] = A_NONE, [0x91] = A_NONE,
	[0x93] = A_NONE, [0x94] = A_NONE, [0x97] = A_NONE, [0x98] = A_NONE,
};

/* Length of the opcode at p (opcode byte included), or 0 if it is unknown
 * or runs past the end. */
static size_t op_length(const uint8_t *in, size_t n, size_t p, bool *known)
{
	enum pk_arg a = pk_op_arg[in[p]];
	size_t q = p + 1, rest = n - q;
	uint64_t len = 0;
	const uint8_t *nl;

	if (!(*known = a != A_UNKNOWN))
		return 0;
	switch (a) {
	case A_UNKNOWN: case A_NONE: break;
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

/* The length of the op at p when its opcode says it without a search: a
 * fixed size or a length prefix (0: a line op or unknown, for op_length).
 * The ops of a state dict are nearly all of these. */
static inline uint64_t quick_length(const uint8_t *in, size_t n, size_t p)
{
	static const uint8_t fixed[] = {[A_NONE] = 1, [A_U8] = 2, [A_U16] = 3, [A_U32] = 5, [A_U64] = 9, [A_F8] = 9};
	uint8_t a = pk_op_arg[in[p]];

	if (a != A_UNKNOWN && a <= A_F8)
		return fixed[a];
	if (a == A_STR1 && n - p >= 2)
		return 2u + (uint64_t)in[p + 1];
	if (a == A_STR4 && n - p >= 5)
		return 5u + (uint64_t)ck_le32(in + p + 1);
	return 0;
}

/* Walks the opcodes to STOP, counting them when `count`. Returns the
 * pickle's length, or 0 with e set; *short_input tells the input ended
 * before STOP (a caller reading a prefix of a file may read more). */
size_t pk_scan(struct machine *m, bool count, bool *short_input)
{
	const uint8_t *in = m->in;
	size_t n = m->n, p = 0;
	uint32_t nops = m->nops;

	*short_input = false;
	if (n > CK_PICKLE_MAX_BYTES) {
		ck_err_set(m->e, EFBIG, "pickle of %zu bytes exceeds the %zu-byte limit", n, CK_PICKLE_MAX_BYTES);
		return 0;
	}
	while (p < n) {
		uint8_t c = in[p];
		uint64_t len = quick_length(in, n, p);
		bool known = true;

		if (!len)
			len = op_length(in, n, p, &known);
		else if (len > n - p)
			len = 0;
		if (!known) {
			ck_err_set(m->e, EIO, "pickle offset %zu: unknown opcode 0x%02x", p, c);
			return 0;
		}
		if (!len) {
			*short_input = true;
			ck_err_set(m->e, EIO, "pickle offset %zu: opcode 0x%02x runs past the end (%zu bytes)", p, c, n);
			return 0;
		}
		if (count && nops++ == CK_PICKLE_MAX_OPS) {
			ck_err_set(m->e, EFBIG, "pickle offset %zu: more than %u opcodes, the limit", p,
				   CK_PICKLE_MAX_OPS);
			return 0;
		}
		p += (size_t)len;
		if (c == '.') {
			m->nops = nops;
			return p;
		}
	}
	*short_input = true;
	ck_err_set(m->e, EIO, "pickle offset %zu: ends without STOP", p);
	return 0;
}

uint32_t pk_op_len_slow(const struct machine *m, uint32_t op)
{
	bool known;
	return (uint32_t)op_length(m->in, m->n, op, &known);
}
