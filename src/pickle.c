/* The pickle rewriter: tokenize, run a symbolic stack machine that only
 * knows strings, containers, globals and tensor rebuilds, find the state
 * dicts, plan key renames, and emit the pickle again with every memo slot
 * kept where it was (FORMATS.md §2.8). Nothing is ever executed. */
#include "pickle.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include "hash.h"

/* ---- opcodes ---------------------------------------------------------- */

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

/* ---- the symbolic machine's values ------------------------------------ */

enum kind { K_OTHER, K_STR, K_DICT, K_SEQ, K_GLOBAL, K_TENSOR };
enum { G_ODICT = 1, G_TENSOR = 2 }; /* what a K_GLOBAL names */
#define NONE_ID 0u                  /* object 0: "anything we do not track" */
#define NO_OP UINT32_MAX

struct obj {
	uint8_t kind, flags;
	uint32_t a, b; /* K_STR: offset, length in the input; K_DICT/K_SEQ: index */
};

struct item {
	uint32_t key, key_op, val;
	bool in_batch; /* part of a MARK ... SETITEMS batch */
};

struct dict {
	struct item *items;
	uint32_t n, cap;
	uint32_t meta;      /* the _metadata OrderedDict set by BUILD, or NONE_ID */
	bool odict;         /* reduced from collections.OrderedDict */
};

/* The elements of all lists and tuples, one array: a sequence chains its
 * own (a malloc per tuple cost more than parsing). Links are index + 1. */
struct kid {
	uint32_t obj, next;
};

struct seq {
	uint32_t first, last, n;
};

struct op {
	uint32_t pos, len;
	uint32_t aux;  /* string push: its object; memo get, DUP: the object; memo put: pushing op of the top */
	uint32_t memo; /* memo index of a get or put; DUP: the op that pushed what it copies */
};

struct slot { uint32_t obj; uint32_t op; }; /* stack entry: value and the op that pushed it */

struct machine {
	const uint8_t *in;
	size_t n;
	struct ck_err *e;
	struct op *ops;
	uint32_t nops, capops;
	struct obj *objs;
	uint32_t nobjs, capobjs;
	struct dict *dicts;
	uint32_t ndicts, capdicts;
	struct seq *seqs;
	uint32_t nseqs, capseqs;
	struct kid *kids;
	uint32_t nkids, capkids;
	struct slot *stack;
	uint32_t sp, capstack;
	uint32_t *marks;
	uint32_t nmarks, capmarks;
	uint32_t *memo;   /* memo index -> object + 1 (0: unset) */
	uint32_t nmemo, memo_set;
};

static int fail(struct machine *m, uint32_t op, const char *what)
{
	return ck_err_set(m->e, EIO, "pickle offset %u: %s", op < m->nops ? m->ops[op].pos : (uint32_t)m->n, what);
}

/* Grows *arr to hold one more element of size sz. */
/* Arrays from BIG_ARRAY bytes up get a mapping of their own, backed by huge
 * pages where the kernel has them: each fresh 4 KiB page costs a fault
 * (15-30 us on the VMs measured), and a 20000-tensor pickle needs 40 MB of
 * arrays, so faults, not parsing, made the first open of such a view slow. */
#define BIG_ARRAY ((size_t)1 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

static size_t big_len(size_t n)
{
	return (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
}

/* n zeroed bytes. */
static void *big_alloc(size_t n)
{
	void *p;

	if (n < BIG_ARRAY)
		return calloc(1, n ? n : 1);
	p = mmap(NULL, big_len(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	madvise(p, big_len(n), MADV_HUGEPAGE);
	return p;
}

static void big_free(void *p, size_t n)
{
	if (p && n < BIG_ARRAY)
		free(p);
	else if (p)
		munmap(p, big_len(n));
}

static void *big_resize(void *p, size_t old, size_t n)
{
	void *q;

	if (n < BIG_ARRAY)
		return realloc(p, n);
	if (old >= BIG_ARRAY && big_len(n) == big_len(old))
		return p;
	if (!(q = big_alloc(n)))
		return NULL;
	memcpy(q, p, old);
	big_free(p, old);
	return q;
}

static int grow(void **arr, uint32_t *cap, uint32_t n, size_t sz)
{
	void *p;
	uint32_t c;

	if (n < *cap)
		return 0;
	if (*cap > UINT32_MAX / 2)
		return -1;
	c = *cap ? *cap * 2 : 16;
	p = big_resize(*arr, (size_t)*cap * sz, (size_t)c * sz);
	if (!p)
		return -1;
	*arr = p;
	*cap = c;
	return 0;
}
#define GROW(m, arr, cap, n) grow((void **)&(m)->arr, &(m)->cap, (m)->n, sizeof(*(m)->arr))

/* ---- tokenizer ---------------------------------------------------------- */

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
static size_t scan(struct machine *m, bool record, bool *short_input)
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
			if (m->nops == CK_PICKLE_MAX_OPS) {
				ck_err_set(m->e, EFBIG, "pickle offset %zu: more than %u opcodes, the limit", p,
					   CK_PICKLE_MAX_OPS);
				return 0;
			}
			if (GROW(m, ops, capops, nops)) {
				ck_err_nomem(m->e);
				return 0;
			}
			m->ops[m->nops++] = (struct op){.pos = (uint32_t)p, .len = (uint32_t)len};
		}
		p += len;
		if (m->in[p - len] == '.')
			return p;
	}
}

static int tokenize(struct machine *m)
{
	bool short_input;
	return scan(m, true, &short_input) ? 0 : -1;
}

size_t ck_pickle_span(const uint8_t *in, size_t n, bool *short_input, struct ck_err *e)
{
	struct machine m = {.in = in, .n = n, .e = e};
	return scan(&m, false, short_input);
}

/* ---- the symbolic machine ----------------------------------------------- */

static uint32_t new_obj(struct machine *m, uint8_t kind, uint32_t a, uint32_t b)
{
	if (GROW(m, objs, capobjs, nobjs))
		return NONE_ID;
	m->objs[m->nobjs] = (struct obj){.kind = kind, .a = a, .b = b};
	return m->nobjs++;
}

static uint32_t new_dict(struct machine *m)
{
	uint32_t id;

	if (GROW(m, dicts, capdicts, ndicts))
		return NONE_ID;
	id = new_obj(m, K_DICT, m->ndicts, 0);
	if (id != NONE_ID)
		m->dicts[m->ndicts++] = (struct dict){0};
	return id;
}

static uint32_t new_seq(struct machine *m)
{
	uint32_t id;

	if (GROW(m, seqs, capseqs, nseqs))
		return NONE_ID;
	id = new_obj(m, K_SEQ, m->nseqs, 0);
	if (id != NONE_ID)
		m->seqs[m->nseqs++] = (struct seq){0};
	return id;
}

static int push(struct machine *m, uint32_t obj, uint32_t op)
{
	if (GROW(m, stack, capstack, sp))
		return ck_err_nomem(m->e);
	m->stack[m->sp++] = (struct slot){obj, op};
	return 0;
}

/* The stack base of the innermost MARK, or -1 with an error. */
static int64_t mark_base(struct machine *m, uint32_t op)
{
	if (!m->nmarks)
		return fail(m, op, "no MARK on the stack");
	return m->marks[m->nmarks - 1];
}

static int add_item(struct machine *m, uint32_t dict_obj, struct slot key, struct slot val, bool in_batch)
{
	struct dict *d;

	if (m->objs[dict_obj].kind != K_DICT)
		return 0; /* items of something we do not track (defaultdict, custom class) */
	d = &m->dicts[m->objs[dict_obj].a];
	if (grow((void **)&d->items, &d->cap, d->n, sizeof(*d->items)))
		return ck_err_nomem(m->e);
	d->items[d->n++] = (struct item){.key = key.obj, .key_op = key.op, .val = val.obj, .in_batch = in_batch};
	return 0;
}

static int add_kid(struct machine *m, uint32_t seq_obj, uint32_t kid)
{
	struct seq *s;

	if (m->objs[seq_obj].kind != K_SEQ)
		return 0;
	if (GROW(m, kids, capkids, nkids))
		return ck_err_nomem(m->e);
	s = &m->seqs[m->objs[seq_obj].a];
	m->kids[m->nkids++] = (struct kid){kid, 0};
	if (s->last)
		m->kids[s->last - 1].next = m->nkids;
	else
		s->first = m->nkids;
	s->last = m->nkids;
	s->n++;
	return 0;
}

/* What a GLOBAL names: only OrderedDict and tensor rebuilds matter. */
static uint8_t classify_global(const uint8_t *mod, size_t ml, const uint8_t *name, size_t nl)
{
#define IS(s, l, lit) ((l) == sizeof(lit) - 1 && memcmp((s), (lit), (l)) == 0)
	if (IS(mod, ml, "collections") && IS(name, nl, "OrderedDict"))
		return G_ODICT;
	if (IS(mod, ml, "torch._utils") && nl > 9 && memcmp(name, "_rebuild_", 9) == 0)
		return G_TENSOR;
	if (IS(mod, ml, "torch._tensor") && IS(name, nl, "_rebuild_from_type_v2"))
		return G_TENSOR;
	return 0;
#undef IS
}

static bool parse_uint_line(const uint8_t *s, size_t n, uint32_t *v)
{
	uint64_t x = 0;
	size_t i = 0;

	while (n && (s[n - 1] == '\n' || s[n - 1] == '\r'))
		n--;
	if (n == 0)
		return false;
	for (; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || (x = x * 10 + (s[i] - '0')) > UINT32_MAX)
			return false;
	}
	*v = (uint32_t)x;
	return true;
}

static int memo_index(struct machine *m, uint32_t i, uint32_t *idx)
{
	const struct op *o = &m->ops[i];
	const uint8_t *a = m->in + o->pos + 1;

	switch (m->in[o->pos]) {
	case 'h': case 'q': *idx = a[0]; break;
	case 'j': case 'r': *idx = ck_le32(a); break;
	case 0x94: *idx = m->memo_set; break; /* MEMOIZE: the next index, len(memo) */
	default:
		if (!parse_uint_line(a, o->len - 1, idx))
			return fail(m, i, "memo index is not a number");
	}
	if (*idx >= m->nmemo)
		return fail(m, i, "memo index out of range");
	return 0;
}

static int do_get(struct machine *m, uint32_t i)
{
	uint32_t idx;

	if (memo_index(m, i, &idx))
		return -1;
	if (!m->memo[idx])
		return fail(m, i, "memo get of an unset index");
	m->ops[i].memo = idx;
	m->ops[i].aux = m->memo[idx] - 1;
	return push(m, m->memo[idx] - 1, i);
}

static int do_put(struct machine *m, uint32_t i)
{
	uint32_t idx;

	if (!m->sp || (m->nmarks && m->marks[m->nmarks - 1] == m->sp))
		return fail(m, i, "memo put with an empty stack");
	if (memo_index(m, i, &idx))
		return -1;
	if (!m->memo[idx])
		m->memo_set++;
	m->memo[idx] = m->stack[m->sp - 1].obj + 1;
	m->ops[i].memo = idx;
	m->ops[i].aux = m->stack[m->sp - 1].op;
	return 0;
}

/* Pops n values (n <= what is above the innermost MARK). */
static int need(struct machine *m, uint32_t i, uint32_t n)
{
	uint32_t base = m->nmarks ? m->marks[m->nmarks - 1] : 0;
	if (m->sp - base < n)
		return fail(m, i, "stack underflow");
	return 0;
}

static int pop_mark(struct machine *m, uint32_t i, uint32_t *base)
{
	int64_t b = mark_base(m, i);
	if (b < 0)
		return -1;
	*base = (uint32_t)b;
	m->nmarks--;
	return 0;
}

static int step(struct machine *m, uint32_t i)
{
	const struct op *o = &m->ops[i];
	const uint8_t *a = m->in + o->pos + 1;
	uint8_t c = m->in[o->pos];
	uint32_t base, id;

	switch (c) {
	case 0x80: case 0x95: case 0x98: case '.':
		return 0; /* PROTO, FRAME, READONLY_BUFFER, STOP */
	case '(':
		if (GROW(m, marks, capmarks, nmarks))
			return ck_err_nomem(m->e);
		m->marks[m->nmarks++] = m->sp;
		return 0;
	case 'X': case 'T':
		id = new_obj(m, K_STR, o->pos + 5, o->len - 5);
		goto pushed_str;
	case 0x8c: case 'U':
		id = new_obj(m, K_STR, o->pos + 2, o->len - 2);
		goto pushed_str;
	case 0x8d:
		id = new_obj(m, K_STR, o->pos + 9, o->len - 9);
	pushed_str:
		if (id == NONE_ID)
			return ck_err_nomem(m->e);
		m->ops[i].aux = id;
		return push(m, id, i);
	case 'N': case 0x88: case 0x89: case 'I': case 'J': case 'K': case 'L': case 'M': case 'F': case 'G':
	case 0x8a: case 0x8b: case 'S': case 'V': case 'C': case 'B': case 0x8e: case 0x96: case 0x82:
	case 0x83: case 0x84: case 'P': case 0x8f: case 0x97:
		return push(m, NONE_ID, i); /* values we never look into */
	case 'c': {
		const uint8_t *nl = memchr(a, '\n', o->len - 1);
		size_t ml = (size_t)(nl - a), nlen = o->len - 1 - ml - 2;
		id = new_obj(m, K_GLOBAL, 0, 0);
		if (id == NONE_ID)
			return ck_err_nomem(m->e);
		m->objs[id].flags = classify_global(a, ml, nl + 1, nlen);
		return push(m, id, i);
	}
	case 0x93: { /* STACK_GLOBAL; copies, not pointers: new_obj() may move m->objs */
		struct obj mod, name;
		if (need(m, i, 2))
			return -1;
		mod = m->objs[m->stack[m->sp - 2].obj];
		name = m->objs[m->stack[m->sp - 1].obj];
		if (mod.kind != K_STR || name.kind != K_STR)
			return fail(m, i, "STACK_GLOBAL needs two strings");
		m->sp -= 2;
		id = new_obj(m, K_GLOBAL, 0, 0);
		if (id == NONE_ID)
			return ck_err_nomem(m->e);
		m->objs[id].flags = classify_global(m->in + mod.a, mod.b, m->in + name.a, name.b);
		return push(m, id, i);
	}
	case 'h': case 'j': case 'g':
		return do_get(m, i);
	case 'q': case 'r': case 'p': case 0x94:
		return do_put(m, i);
	case '0': /* POP: pops the MARK itself when nothing is above it */
		if (m->nmarks && m->marks[m->nmarks - 1] == m->sp) {
			m->nmarks--;
			return 0;
		}
		if (need(m, i, 1))
			return -1;
		m->sp--;
		return 0;
	case '1': /* POP_MARK */
		if (pop_mark(m, i, &base))
			return -1;
		m->sp = base;
		return 0;
	case '2': /* DUP: the emitter needs what it copies, which a rename may change */
		if (need(m, i, 1))
			return -1;
		m->ops[i].aux = m->stack[m->sp - 1].obj;
		m->ops[i].memo = m->stack[m->sp - 1].op;
		return push(m, m->stack[m->sp - 1].obj, i);
	case '}':
		if ((id = new_dict(m)) == NONE_ID)
			return ck_err_nomem(m->e);
		return push(m, id, i);
	case ']': case ')':
		if ((id = new_seq(m)) == NONE_ID)
			return ck_err_nomem(m->e);
		return push(m, id, i);
	case 'd': case 'l': case 't': { /* DICT, LIST, TUPLE from a MARK */
		if (pop_mark(m, i, &base))
			return -1;
		id = c == 'd' ? new_dict(m) : new_seq(m);
		if (id == NONE_ID)
			return ck_err_nomem(m->e);
		if (c == 'd' && (m->sp - base) % 2)
			return fail(m, i, "DICT with an odd number of items");
		for (uint32_t k = base; k < m->sp; k += c == 'd' ? 2 : 1) {
			int r = c == 'd' ? add_item(m, id, m->stack[k], m->stack[k + 1], true)
					 : add_kid(m, id, m->stack[k].obj);
			if (r)
				return -1;
		}
		m->sp = base;
		return push(m, id, i);
	}
	case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
		uint32_t n = (uint32_t)(c - 0x84);
		if (need(m, i, n))
			return -1;
		if ((id = new_seq(m)) == NONE_ID)
			return ck_err_nomem(m->e);
		for (uint32_t k = m->sp - n; k < m->sp; k++)
			if (add_kid(m, id, m->stack[k].obj))
				return -1;
		m->sp -= n;
		return push(m, id, i);
	}
	case 's': /* SETITEM */
		if (need(m, i, 3))
			return -1;
		if (add_item(m, m->stack[m->sp - 3].obj, m->stack[m->sp - 2], m->stack[m->sp - 1], false))
			return -1;
		m->sp -= 2;
		return 0;
	case 'u': /* SETITEMS */
		if (pop_mark(m, i, &base))
			return -1;
		if ((m->sp - base) % 2)
			return fail(m, i, "SETITEMS with an odd number of items");
		if (base == 0 || (m->nmarks && m->marks[m->nmarks - 1] == base))
			return fail(m, i, "SETITEMS without a dict below its MARK");
		for (uint32_t k = base; k < m->sp; k += 2)
			if (add_item(m, m->stack[base - 1].obj, m->stack[k], m->stack[k + 1], true))
				return -1;
		m->sp = base;
		return 0;
	case 'a': /* APPEND */
		if (need(m, i, 2))
			return -1;
		if (add_kid(m, m->stack[m->sp - 2].obj, m->stack[m->sp - 1].obj))
			return -1;
		m->sp--;
		return 0;
	case 'e': case 0x90: /* APPENDS, ADDITEMS */
		if (pop_mark(m, i, &base))
			return -1;
		if (base == 0 || (m->nmarks && m->marks[m->nmarks - 1] == base))
			return fail(m, i, "APPENDS without a container below its MARK");
		for (uint32_t k = base; c == 'e' && k < m->sp; k++)
			if (add_kid(m, m->stack[base - 1].obj, m->stack[k].obj))
				return -1;
		m->sp = base;
		return 0;
	case 0x91: case 'i': /* FROZENSET, INST: the marked items become one opaque value */
		if (pop_mark(m, i, &base))
			return -1;
		m->sp = base;
		return push(m, NONE_ID, i);
	case 'o': /* OBJ: class and args from the MARK */
		if (pop_mark(m, i, &base))
			return -1;
		if (m->sp == base)
			return fail(m, i, "OBJ without a class");
		m->sp = base;
		return push(m, NONE_ID, i);
	case 'Q': /* BINPERSID */
		if (need(m, i, 1))
			return -1;
		m->sp--;
		return push(m, NONE_ID, i);
	case 0x81: case 'R': { /* NEWOBJ, REDUCE: callable, args */
		struct obj fn, args; /* copies: new_obj() may move m->objs */
		if (need(m, i, 2))
			return -1;
		fn = m->objs[m->stack[m->sp - 2].obj];
		args = m->objs[m->stack[m->sp - 1].obj];
		m->sp -= 2;
		if (fn.kind == K_GLOBAL && (fn.flags & G_TENSOR) && c == 'R') {
			if ((id = new_obj(m, K_TENSOR, 0, 0)) == NONE_ID)
				return ck_err_nomem(m->e);
			return push(m, id, i);
		}
		if (fn.kind == K_GLOBAL && (fn.flags & G_ODICT) && args.kind == K_SEQ &&
		    m->seqs[args.a].n == 0) {
			if ((id = new_dict(m)) == NONE_ID)
				return ck_err_nomem(m->e);
			m->dicts[m->objs[id].a].odict = true;
			return push(m, id, i);
		}
		return push(m, NONE_ID, i);
	}
	case 0x92: /* NEWOBJ_EX: cls, args, kwargs */
		if (need(m, i, 3))
			return -1;
		m->sp -= 3;
		return push(m, NONE_ID, i);
	case 'b': { /* BUILD: the _metadata of a state dict arrives here */
		struct obj target, state;
		if (need(m, i, 2))
			return -1;
		state = m->objs[m->stack[m->sp - 1].obj];
		target = m->objs[m->stack[m->sp - 2].obj];
		m->sp--;
		if (target.kind == K_DICT && m->dicts[target.a].odict && state.kind == K_DICT) {
			const struct dict *s = &m->dicts[state.a];
			for (uint32_t k = 0; k < s->n; k++) {
				const struct obj *key = &m->objs[s->items[k].key];
				if (key->kind == K_STR && key->b == 9 && memcmp(m->in + key->a, "_metadata", 9) == 0 &&
				    m->objs[s->items[k].val].kind == K_DICT)
					m->dicts[target.a].meta = s->items[k].val;
			}
		}
		return 0;
	}
	}
	return fail(m, i, "opcode not handled");
}

static int run(struct machine *m)
{
	m->nmemo = m->nops + 4096; /* a pickler's memo indices stay below its op count */
	m->memo = big_alloc((size_t)m->nmemo * sizeof(*m->memo));
	if (!m->memo || new_obj(m, K_OTHER, 0, 0) != NONE_ID)
		return ck_err_nomem(m->e);
	for (uint32_t i = 0; i < m->nops; i++)
		if (step(m, i))
			return -1;
	if (!m->sp || (m->nmarks && m->marks[m->nmarks - 1] == m->sp))
		return fail(m, m->nops - 1, "STOP with an empty stack");
	return 0;
}

/* ---- finding the state dicts -------------------------------------------- */

enum { F_SEEN_CAND = 4, F_SEEN_OTHER = 8, F_STATE_DICT = 16 };

/* A parameter path: module and parameter names joined by dots. File paths
 * (Lightning's best_k_models maps checkpoint paths to scores) are not. */
static bool is_param_path(const struct machine *m, const struct obj *key)
{
	if (key->kind != K_STR || key->b == 0)
		return false;
	for (uint32_t i = 0; i < key->b; i++) {
		uint8_t c = m->in[key->a + i];
		if (c <= ' ' || c == '/' || c == '\\' || c == 0x7f)
			return false;
	}
	return true;
}

/* Module.state_dict() is an OrderedDict carrying `_metadata`: that is a
 * state dict whatever its values (a quantized model's dtypes and packed
 * parameters, `_extra_state` objects); its keys need only be strings. A
 * dict without it is one when its keys are parameter paths and its values
 * all tensors (`{k: v for ...}` copies). */
static bool is_state_dict(const struct machine *m, const struct dict *d)
{
	if (d->meta != NONE_ID) {
		for (uint32_t k = 0; k < d->n; k++)
			if (m->objs[d->items[k].key].kind != K_STR)
				return false;
		return true;
	}
	if (d->n == 0)
		return false;
	for (uint32_t k = 0; k < d->n; k++)
		if (!is_param_path(m, &m->objs[d->items[k].key]) || m->objs[d->items[k].val].kind != K_TENSOR)
			return false;
	return true;
}

static bool has_key(const struct machine *m, const struct dict *d, const char *name)
{
	size_t n = strlen(name);
	for (uint32_t k = 0; k < d->n; k++) {
		const struct obj *key = &m->objs[d->items[k].key];
		if (key->kind == K_STR && key->b == n && memcmp(m->in + key->a, name, n) == 0)
			return true;
	}
	return false;
}

/* Optimizer.state_dict(): per-parameter state ({'exp_avg': tensor, ...})
 * under parameter ids, which may be strings too. Never walked into. */
static bool is_optimizer_state(const struct machine *m, const struct dict *d)
{
	return has_key(m, d, "state") && has_key(m, d, "param_groups");
}

/* Walks from the root through dicts, lists and tuples only (never into an
 * object's state), marking state dicts. A dict under a non-string key is
 * walked into but is no state dict. */
static int find_state_dicts(struct machine *m, uint32_t root)
{
	struct todo { uint32_t obj; bool cand; } *todo = NULL;
	uint32_t n = 0, cap = 0;
	int rc = 0;

#define TODO(o, c)                                                                 \
	do {                                                                       \
		if (grow((void **)&todo, &cap, n, sizeof(*todo))) {                \
			rc = ck_err_nomem(m->e);                                   \
			goto out;                                                  \
		}                                                                  \
		todo[n++] = (struct todo){(o), (c)};                               \
	} while (0)

	TODO(root, true);
	while (n) {
		struct todo t = todo[--n];
		struct obj *o = &m->objs[t.obj];
		uint8_t bit = t.cand ? F_SEEN_CAND : F_SEEN_OTHER;

		if (o->kind != K_DICT && o->kind != K_SEQ)
			continue;
		if (o->kind == K_SEQ)
			bit = F_SEEN_CAND;
		if (o->flags & bit)
			continue;
		o->flags |= bit;
		if (o->kind == K_SEQ) {
			for (uint32_t k = m->seqs[o->a].first; k; k = m->kids[k - 1].next)
				TODO(m->kids[k - 1].obj, true);
			continue;
		}
		const struct dict *d = &m->dicts[o->a];
		if (t.cand && is_state_dict(m, d)) {
			o->flags |= F_STATE_DICT;
			continue;
		}
		if (is_optimizer_state(m, d))
			continue;
		bool str_keys = true;
		for (uint32_t k = 0; k < d->n; k++)
			str_keys &= m->objs[d->items[k].key].kind == K_STR;
		for (uint32_t k = 0; k < d->n; k++)
			TODO(d->items[k].val, str_keys);
	}
out:
	free(todo);
	return rc;
#undef TODO
}

/* ---- planning the renames ----------------------------------------------- */

struct str { char *s; uint32_t len; };

enum { INS_NONE, INS_IN_BATCH, INS_SETITEM };

struct plan {
	struct str *val;  /* per op: the string it pushes in the output, when it differs */
	uint8_t *ins;     /* per op: insert the wrapper's ('', {'version': 1}) before it */
	bool any;
	uint64_t max_out; /* the output's bound (CK_PICKLE_GROWTH in pickle.h) */
};

struct seen_key {
	const char *s;
	uint32_t len;
	uint32_t orig; /* object of the original key */
	UT_hash_handle hh;
};

static bool key_op_rewritable(uint8_t c)
{
	return c == 'X' || c == 'T' || c == 'U' || c == 0x8c || c == 0x8d || c == 'h' || c == 'j' || c == 'g' ||
	       c == '2';
}

static bool same(const char *a, size_t al, const uint8_t *b, size_t bl)
{
	return al == bl && memcmp(a, b, al) == 0;
}

/* New names for the keys of a dict; *changed tells if any differs. */
static int rename_all(struct machine *m, const struct dict *d, const struct ck_view *v, bool meta,
		      struct str *out, bool *changed)
{
	for (uint32_t k = 0; k < d->n; k++) {
		const struct obj *key = &m->objs[d->items[k].key];
		size_t nl;
		char *s = meta ? ck_view_meta_key(v, (const char *)m->in + key->a, key->b, &nl)
			       : ck_view_key(v, (const char *)m->in + key->a, key->b, &nl);
		if (!s)
			return ck_err_nomem(m->e);
		out[k] = (struct str){s, (uint32_t)nl};
		if (!same(s, nl, m->in + key->a, key->b))
			*changed = true;
	}
	return 0;
}

static int check_collisions(struct machine *m, const struct dict *d, const struct str *names)
{
	struct seen_key *set = NULL, *all, *x, *tmp;
	int rc = 0;

	all = calloc(d->n ? d->n : 1, sizeof(*all));
	if (!all)
		return ck_err_nomem(m->e);
	for (uint32_t k = 0; k < d->n && !rc; k++) {
		HASH_FIND(hh, set, names[k].s, names[k].len, x);
		if (x) {
			const struct obj *a = &m->objs[x->orig], *b = &m->objs[d->items[k].key];
			rc = ck_err_set(m->e, EIO, "keys '%.*s' and '%.*s' would both become '%.*s'", (int)a->b,
					(const char *)m->in + a->a, (int)b->b, (const char *)m->in + b->a,
					(int)names[k].len, names[k].s);
			break;
		}
		all[k] = (struct seen_key){.s = names[k].s, .len = names[k].len, .orig = d->items[k].key};
		HASH_ADD_KEYPTR(hh, set, all[k].s, all[k].len, &all[k]);
		if (CK_HASH_ADD_FAILED(&all[k]))
			rc = ck_err_nomem(m->e);
	}
	HASH_ITER(hh, set, x, tmp) HASH_DEL(set, x);
	free(all);
	return rc;
}

static int assign(struct machine *m, struct plan *p, const struct dict *d, struct str *names)
{
	for (uint32_t k = 0; k < d->n; k++) {
		const struct item *it = &d->items[k];
		const struct obj *key = &m->objs[it->key];
		if (same(names[k].s, names[k].len, m->in + key->a, key->b))
			continue;
		if (!key_op_rewritable(m->in[m->ops[it->key_op].pos]))
			return fail(m, it->key_op, "state-dict key is neither a string nor a memo reference");
		free(p->val[it->key_op].s);
		p->max_out += names[k].len + 5u;
		p->val[it->key_op] = names[k];
		names[k].s = NULL;
		p->any = true;
	}
	return 0;
}

static void free_names(struct str *names, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		free(names[k].s);
	free(names);
}

/* New names for a `_metadata`; *in_form tells if it already has the view's
 * shape. A view that adds the wrapper wants the wrapper's own ('', ...)
 * entry first and every other name mapping to itself; renaming the whole
 * metadata maps that head '' to "module" too, and the root entry that also
 * becomes "module" then overwrites it in place, as unpickling assigns. */
static int rename_meta(struct machine *m, const struct dict *md, const struct ck_view *v, struct str *out,
		       bool *in_form)
{
	bool changed = false;

	if (rename_all(m, md, v, true, out, &changed))
		return -1;
	if (!ck_view_adds_wrapper(v)) {
		*in_form = !changed;
		return 0;
	}
	/* the wrapper's entry '' first, then the wrapped root ("module") */
	*in_form = md->n >= 2 && m->objs[md->items[0].key].b == 0 && out[1].len == strlen(v->add) - 1;
	for (uint32_t k = 1; k < md->n && *in_form; k++) {
		const struct obj *key = &m->objs[md->items[k].key];
		*in_form = same(out[k].s, out[k].len, m->in + key->a, key->b);
	}
	return 0;
}

static bool all_str_keys(const struct machine *m, const struct dict *d)
{
	for (uint32_t k = 0; k < d->n; k++)
		if (m->objs[d->items[k].key].kind != K_STR)
			return false;
	return true;
}

/* Plans one state dict: its keys, and its `_metadata` separately; a part
 * already in the view's form is left alone. */
static int plan_dict(struct machine *m, struct plan *p, const struct dict *d, const struct ck_view *v)
{
	const struct dict *md = d->meta != NONE_ID ? &m->dicts[m->objs[d->meta].a] : NULL;
	struct str *names = calloc(d->n ? d->n : 1, sizeof(*names)), *mnames = NULL;
	bool changed = false, in_form = true;
	int rc;

	if (!names)
		return ck_err_nomem(m->e);
	rc = rename_all(m, d, v, false, names, &changed);
	if (!rc && changed && !(rc = check_collisions(m, d, names)))
		rc = assign(m, p, d, names);
	if (rc || !md || !all_str_keys(m, md))
		goto out;
	if (!(mnames = calloc(md->n ? md->n : 1, sizeof(*mnames)))) {
		rc = ck_err_nomem(m->e);
		goto out;
	}
	if ((rc = rename_meta(m, md, v, mnames, &in_form)) || in_form)
		goto out;
	if ((rc = assign(m, p, md, mnames)))
		goto out;
	/* An empty metadata names no module, so there is nothing to wrap. */
	if (ck_view_adds_wrapper(v) && md->n) {
		p->ins[md->items[0].key_op] = md->items[0].in_batch ? INS_IN_BATCH : INS_SETITEM;
		p->any = true;
	}
out:
	free_names(names, d->n);
	if (mnames)
		free_names(mnames, md->n);
	return rc;
}

/* ---- emitting ------------------------------------------------------------ */

static void emit_str(struct ck_buf *out, const char *s, uint32_t len)
{
	ck_buf_u8(out, 'X');
	ck_buf_u32le(out, len);
	ck_buf_append(out, s, len);
}

/* The wrapper's own metadata entry ('', {'version': 1}); in SETITEM form the
 * pair needs its own SETITEM on the metadata dict. Protocol-2 opcodes only,
 * so weights_only loads it. */
static void emit_wrapper_entry(struct ck_buf *out, uint8_t ins)
{
	emit_str(out, "", 0);
	ck_buf_u8(out, '}');
	emit_str(out, "version", 7);
	ck_buf_append(out, "K\x01s", 3);
	if (ins == INS_SETITEM)
		ck_buf_u8(out, 's');
}

/* Copies the pickle, replacing what the plan says. Memo slots keep their
 * indices; a memo get whose slot now holds another string than the one
 * wanted at that place becomes a literal without a put. */
static int emit(struct machine *m, struct plan *p, struct ck_buf *out)
{
	/* what each slot holds in the output, if changed */
	struct str *slot = big_alloc((size_t)m->nmemo * sizeof(*slot));
	size_t from = 0;                                     /* start of the pending verbatim run */

	if (!slot)
		return ck_err_nomem(m->e);
#define FLUSH_TO(end)                                                  \
	do {                                                           \
		ck_buf_append(out, m->in + from, (end) - from);        \
	} while (0)
	for (uint32_t i = 0; i < m->nops && out->len <= p->max_out; i++) {
		const struct op *o = &m->ops[i];
		uint8_t c = m->in[o->pos];

		if (p->ins[i]) {
			FLUSH_TO(o->pos);
			from = o->pos;
			emit_wrapper_entry(out, p->ins[i]);
		}
		switch (c) {
		case 0x95: /* FRAME: lengths change, so frames go; unpicklers accept none */
			FLUSH_TO(o->pos);
			from = o->pos + o->len;
			break;
		case 'h': case 'j': case 'g': case '2': {
			/* a copy (from the memo, or DUP of the op below) of a string
			 * that the output now holds in another form than wanted here */
			const struct obj *s = &m->objs[o->aux];
			struct str orig = {(char *)m->in + s->a, s->b};
			struct str want = p->val[i].s ? p->val[i] : orig;
			struct str held = c == '2' ? p->val[o->memo] : slot[o->memo];
			struct str cur = held.s ? held : orig;

			if (s->kind != K_STR)
				break;
			if (same(want.s, want.len, (const uint8_t *)cur.s, cur.len))
				break;
			FLUSH_TO(o->pos);
			emit_str(out, want.s, want.len);
			from = o->pos + o->len;
			break;
		}
		case 'q': case 'r': case 'p': case 0x94:
			slot[o->memo] = p->val[o->aux];
			break;
		default:
			if (p->val[i].s) { /* a renamed key literal */
				FLUSH_TO(o->pos);
				emit_str(out, p->val[i].s, p->val[i].len);
				from = o->pos + o->len;
			}
		}
	}
	if (out->len <= p->max_out) /* else stopped where it went past */
		FLUSH_TO(m->n);
#undef FLUSH_TO
	big_free(slot, (size_t)m->nmemo * sizeof(*slot));
	if (out->failed)
		return ck_err_nomem(m->e);
	if (out->len > p->max_out)
		return ck_err_set(m->e, EIO,
				  "pickle offset %zu: the view's pickle would be larger than %llu bytes (twice the "
				  "source's + 1 MiB + the renamed keys): a string copied over and over",
				  from, (unsigned long long)p->max_out);
	return 0;
}

/* ---- the whole ------------------------------------------------------------ */

static void machine_free(struct machine *m)
{
	for (uint32_t k = 0; k < m->ndicts; k++)
		big_free(m->dicts[k].items, (size_t)m->dicts[k].cap * sizeof(*m->dicts[k].items));
	big_free(m->dicts, (size_t)m->capdicts * sizeof(*m->dicts));
	big_free(m->seqs, (size_t)m->capseqs * sizeof(*m->seqs));
	big_free(m->kids, (size_t)m->capkids * sizeof(*m->kids));
	big_free(m->objs, (size_t)m->capobjs * sizeof(*m->objs));
	big_free(m->ops, (size_t)m->capops * sizeof(*m->ops));
	big_free(m->stack, (size_t)m->capstack * sizeof(*m->stack));
	big_free(m->marks, (size_t)m->capmarks * sizeof(*m->marks));
	big_free(m->memo, (size_t)m->nmemo * sizeof(*m->memo));
}

enum ck_pickle_result ck_pickle_rewrite(const uint8_t *in, size_t n, const struct ck_view *v,
					struct ck_buf *out, struct ck_err *e)
{
	struct machine m = {.in = in, .n = n, .e = e};
	struct plan p = {.max_out = 2 * (uint64_t)n + CK_PICKLE_GROWTH};
	enum ck_pickle_result r = CK_PICKLE_ERROR;

	if (tokenize(&m) || run(&m) || find_state_dicts(&m, m.stack[m.sp - 1].obj))
		goto out;
	p.val = big_alloc((size_t)m.nops * sizeof(*p.val));
	p.ins = big_alloc(m.nops);
	if (!p.val || !p.ins) {
		ck_err_nomem(e);
		goto out;
	}
	for (uint32_t k = 0; k < m.nobjs; k++) {
		const struct obj *o = &m.objs[k];
		if (o->kind == K_DICT && (o->flags & F_STATE_DICT) && plan_dict(&m, &p, &m.dicts[o->a], v))
			goto out;
	}
	if (!p.any) {
		r = CK_PICKLE_UNCHANGED;
		goto out;
	}
	if (!emit(&m, &p, out))
		r = CK_PICKLE_REWRITTEN;
out:
	if (p.val) {
		for (uint32_t k = 0; k < m.nops; k++)
			free(p.val[k].s);
	}
	big_free(p.val, (size_t)m.nops * sizeof(*p.val));
	big_free(p.ins, m.nops);
	machine_free(&m);
	return r;
}

/* ---- describing (for tools: ckptfs inspect) ------------------------------ */

/* A breadth-first walk from the top object; each node knows its parent, so
 * a state dict's path is read back from it. */
struct walk_node {
	uint32_t obj, parent;
	struct ck_path_step step;
};

static int report_state_dict(struct machine *m, const struct walk_node *nodes, uint32_t at, ck_found_fn fn,
			     void *ctx)
{
	const struct dict *d = &m->dicts[m->objs[nodes[at].obj].a];
	struct ck_str *keys = calloc(d->n ? d->n : 1, sizeof(*keys));
	struct ck_path_step *path = NULL;
	size_t depth = 0;
	int rc;

	for (uint32_t k = at; k != 0; k = nodes[k].parent)
		depth++;
	path = calloc(depth ? depth : 1, sizeof(*path));
	if (!keys || !path) {
		rc = ck_err_nomem(m->e);
		goto out;
	}
	for (uint32_t k = at, i = (uint32_t)depth; k != 0; k = nodes[k].parent)
		path[--i] = nodes[k].step;
	for (uint32_t k = 0; k < d->n; k++) {
		const struct obj *key = &m->objs[d->items[k].key];
		if (key->kind == K_STR)
			keys[k] = (struct ck_str){(const char *)m->in + key->a, key->b};
	}
	rc = fn(ctx, &(struct ck_found_sd){.path = path, .depth = depth, .keys = keys, .nkeys = d->n,
					   .has_metadata = d->meta != NONE_ID}, m->e);
out:
	free(keys);
	free(path);
	return rc;
}

static int walk_to(struct machine *m, struct walk_node **nodes, uint32_t *n, uint32_t *cap, uint8_t *seen,
		   uint32_t obj, uint32_t parent, struct ck_path_step step)
{
	if (seen[obj])
		return 0;
	seen[obj] = 1;
	if (grow((void **)nodes, cap, *n, sizeof(**nodes)))
		return ck_err_nomem(m->e);
	(*nodes)[(*n)++] = (struct walk_node){obj, parent, step};
	return 0;
}

static int report_state_dicts(struct machine *m, uint32_t root, ck_found_fn fn, void *ctx)
{
	struct walk_node *nodes = NULL;
	uint32_t n = 0, cap = 0;
	uint8_t *seen = calloc(m->nobjs ? m->nobjs : 1, 1);
	int rc = seen ? walk_to(m, &nodes, &n, &cap, seen, root, UINT32_MAX, (struct ck_path_step){.index = -1})
		      : ck_err_nomem(m->e);

	for (uint32_t at = 0; at < n && !rc; at++) {
		const struct obj *o = &m->objs[nodes[at].obj];

		if (o->kind == K_DICT && (o->flags & F_STATE_DICT)) {
			rc = report_state_dict(m, nodes, at, fn, ctx);
		} else if (o->kind == K_SEQ) {
			int64_t i = 0;
			for (uint32_t k = m->seqs[o->a].first; k && !rc; k = m->kids[k - 1].next)
				rc = walk_to(m, &nodes, &n, &cap, seen, m->kids[k - 1].obj, at,
					     (struct ck_path_step){.index = i++});
		} else if (o->kind == K_DICT) {
			const struct dict *d = &m->dicts[o->a];
			for (uint32_t k = 0; k < d->n && !rc; k++) {
				const struct obj *key = &m->objs[d->items[k].key];
				struct ck_path_step step = {.index = -1};
				if (key->kind == K_STR)
					step.key = (struct ck_str){(const char *)m->in + key->a, key->b};
				rc = walk_to(m, &nodes, &n, &cap, seen, d->items[k].val, at, step);
			}
		}
	}
	free(seen);
	big_free(nodes, (size_t)cap * sizeof(*nodes));
	return rc;
}

int ck_pickle_describe(const uint8_t *in, size_t n, int *protocol, ck_found_fn fn, void *ctx,
		       struct ck_err *e)
{
	struct machine m = {.in = in, .n = n, .e = e};
	int rc = -1;

	*protocol = n >= 2 && in[0] == 0x80 ? in[1] : 0;
	if (!tokenize(&m) && !run(&m) && !find_state_dicts(&m, m.stack[m.sp - 1].obj))
		rc = report_state_dicts(&m, m.stack[m.sp - 1].obj, fn, ctx);
	machine_free(&m);
	return rc;
}
