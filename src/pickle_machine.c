/* The symbolic machine: runs the opcodes on a stack of object ids. It knows
 * strings, dicts, lists and tuples, globals and tensor rebuilds; every
 * other value is object 0. Each opcode family has its own function; none
 * holds a pointer into a table across a call that may grow it. */
#include "pickle_int.h"

#include <string.h>

/* ---- objects and containers --------------------------------------------- */

static inline uint32_t new_obj(struct machine *m, uint8_t kind, uint32_t a)
{
	if (VEC_RESERVE(m->objs, m->objs.n + 1ull))
		return NONE_ID;
	m->objs.v[m->objs.n] = (struct obj){.a = a, .kind = kind};
	return m->objs.n++;
}

/* A new dict (K_DICT) or list/tuple (K_SEQ), or NONE_ID out of memory. */
static uint32_t new_container(struct machine *m, uint8_t kind)
{
	uint32_t id;

	if (kind == K_DICT ? VEC_RESERVE(m->dicts, m->dicts.n + 1ull) : VEC_RESERVE(m->seqs, m->seqs.n + 1ull))
		return NONE_ID;
	if ((id = new_obj(m, kind, kind == K_DICT ? m->dicts.n : m->seqs.n)) == NONE_ID)
		return NONE_ID;
	if (kind == K_DICT)
		m->dicts.v[m->dicts.n++] = (struct dict){.meta = NONE_ID};
	else
		m->seqs.v[m->seqs.n++] = (struct seq){0};
	return id;
}

static inline int push(struct machine *m, uint32_t obj, uint32_t op)
{
	if (VEC_RESERVE(m->stack, m->stack.n + 1ull))
		return ck_err_nomem(m->e);
	m->stack.v[m->stack.n++] = (struct slot){obj, op};
	return 0;
}

static struct slot below(const struct machine *m, uint32_t k) /* k = 1: the top */
{
	return m->stack.v[m->stack.n - k];
}

static int add_item(struct machine *m, uint32_t dict_obj, struct slot key, struct slot val, bool in_batch)
{
	struct obj o = pk_obj(m, dict_obj);
	uint32_t at;

	if (o.kind != K_DICT)
		return 0; /* items of something we do not track (defaultdict, custom class) */
	if (VEC_RESERVE(m->items, m->items.n + 1ull))
		return ck_err_nomem(m->e);
	m->items.v[m->items.n++] = (struct item){.key = key.obj, .val = val.obj, .key_op = key.op, .in_batch = in_batch};
	at = m->items.n;
	if (m->dicts.v[o.a].last)
		m->items.v[m->dicts.v[o.a].last - 1].next = at;
	else
		m->dicts.v[o.a].first = at;
	m->dicts.v[o.a].last = at;
	m->dicts.v[o.a].n++;
	return 0;
}

static inline int add_kid(struct machine *m, uint32_t seq_obj, uint32_t kid)
{
	struct obj o = pk_obj(m, seq_obj);
	uint32_t at;

	if (o.kind != K_SEQ)
		return 0;
	if (pk_obj(m, kid).kind != K_DICT && pk_obj(m, kid).kind != K_SEQ) {
		m->seqs.v[o.a].n++;
		return 0;
	}
	if (VEC_RESERVE(m->kids, m->kids.n + 1ull))
		return ck_err_nomem(m->e);
	m->kids.v[m->kids.n++] = (struct kid){kid, 0, m->seqs.v[o.a].n};
	at = m->kids.n;
	if (m->seqs.v[o.a].last)
		m->kids.v[m->seqs.v[o.a].last - 1].next = at;
	else
		m->seqs.v[o.a].first = at;
	m->seqs.v[o.a].last = at;
	m->seqs.v[o.a].n++;
	return 0;
}

static inline int add_ref(struct machine *m, uint32_t op, uint32_t a, uint32_t b)
{
	if (VEC_RESERVE(m->refs, m->refs.n + 1ull))
		return ck_err_nomem(m->e);
	m->refs.v[m->refs.n++] = (struct ref){op, a, b};
	return 0;
}

/* ---- the stack and its MARKs -------------------------------------------- */

/* Whether n values are above the innermost MARK. */
static int need(struct machine *m, uint32_t op, uint32_t n)
{
	uint32_t base = m->marks.n ? m->marks.v[m->marks.n - 1] : 0;
	if (m->stack.n - base < n)
		return pk_fail(m, op, "stack underflow");
	return 0;
}

static bool at_mark(const struct machine *m, uint32_t sp)
{
	return m->marks.n && m->marks.v[m->marks.n - 1] == sp;
}

static int pop_mark(struct machine *m, uint32_t op, uint32_t *base)
{
	if (!m->marks.n)
		return pk_fail(m, op, "no MARK on the stack");
	*base = m->marks.v[--m->marks.n];
	return 0;
}

static int op_mark(struct machine *m, uint32_t op)
{
	if (VEC_RESERVE(m->marks, m->marks.n + 1ull))
		return ck_err_nomem(m->e);
	m->marks.v[m->marks.n++] = m->stack.n;
	return 0;
}

/* POP pops the MARK itself when nothing is above it; POP_MARK pops to it. */
static int op_pop(struct machine *m, uint32_t op, uint8_t c)
{
	uint32_t base = 0;

	if (c == '1') {
		if (pop_mark(m, op, &base))
			return -1;
		m->stack.n = base;
		return 0;
	}
	if (at_mark(m, m->stack.n)) {
		m->marks.n--;
		return 0;
	}
	if (need(m, op, 1))
		return -1;
	m->stack.n--;
	return 0;
}

/* ---- strings, globals, the memo ----------------------------------------- */

static int op_str(struct machine *m, uint32_t op)
{
	uint32_t id = new_obj(m, K_STR, op);
	return id == NONE_ID ? ck_err_nomem(m->e) : push(m, id, op);
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

static int push_global(struct machine *m, uint32_t op, uint8_t what)
{
	uint32_t id = new_obj(m, K_GLOBAL, 0);

	if (id == NONE_ID)
		return ck_err_nomem(m->e);
	m->objs.v[id].flags = what;
	return push(m, id, op);
}

/* GLOBAL (module and name on two lines) and STACK_GLOBAL (two strings). */
static int op_global(struct machine *m, uint32_t op, uint8_t c)
{
	struct ck_str mod, name;

	if (c == 'c') {
		const uint8_t *a = m->in + op + 1, *nl = memchr(a, '\n', pk_op_len(m, op) - 1);
		size_t ml = (size_t)(nl - a);
		return push_global(m, op, classify_global(a, ml, nl + 1, pk_op_len(m, op) - 1 - ml - 2));
	}
	if (need(m, op, 2))
		return -1;
	if (pk_obj(m, below(m, 2).obj).kind != K_STR || pk_obj(m, below(m, 1).obj).kind != K_STR)
		return pk_fail(m, op, "STACK_GLOBAL needs two strings");
	mod = pk_str(m, below(m, 2).obj);
	name = pk_str(m, below(m, 1).obj);
	m->stack.n -= 2;
	return push_global(m, op,
			   classify_global((const uint8_t *)mod.s, mod.len, (const uint8_t *)name.s, name.len));
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

/* A pickler's memo indices stay below its op count. */
static inline int memo_index(struct machine *m, uint32_t op, uint32_t *idx)
{
	const uint8_t *a = m->in + op + 1;

	switch (OP_BYTE(m, op)) {
	case 'h': case 'q': *idx = a[0]; break;
	case 'j': case 'r': *idx = ck_le32(a); break;
	case 0x94: *idx = m->memo_set; break; /* MEMOIZE: the next index, len(memo) */
	default:
		if (!parse_uint_line(a, pk_op_len(m, op) - 1, idx))
			return pk_fail(m, op, "memo index is not a number");
	}
	if (*idx >= (uint64_t)m->nops + 4096)
		return pk_fail(m, op, "memo index out of range");
	return 0;
}

static int op_get(struct machine *m, uint32_t op)
{
	uint32_t idx, obj;

	if (memo_index(m, op, &idx))
		return -1;
	if (idx >= m->memo.cap || !m->memo.v[idx])
		return pk_fail(m, op, "memo get of an unset index");
	obj = m->memo.v[idx] - 1;
	if (pk_obj(m, obj).kind == K_STR && add_ref(m, op, obj, idx))
		return -1;
	return push(m, obj, op);
}

static int op_put(struct machine *m, uint32_t op)
{
	uint32_t idx;
	struct slot top;

	if (!m->stack.n || at_mark(m, m->stack.n))
		return pk_fail(m, op, "memo put with an empty stack");
	if (memo_index(m, op, &idx))
		return -1;
	if (VEC_RESERVE_ZEROED(m->memo, idx + 1ull))
		return ck_err_nomem(m->e);
	top = below(m, 1);
	if (!m->memo.v[idx])
		m->memo_set++;
	m->memo.v[idx] = top.obj + 1;
	return pk_obj(m, top.obj).kind == K_STR ? add_ref(m, op, top.op, idx) : 0;
}

/* DUP: the emitter needs what it copies, which a rename may change. */
static int op_dup(struct machine *m, uint32_t op)
{
	struct slot top;

	if (need(m, op, 1))
		return -1;
	top = below(m, 1);
	if (pk_obj(m, top.obj).kind == K_STR && add_ref(m, op, top.obj, top.op))
		return -1;
	return push(m, top.obj, op);
}

/* ---- containers ----------------------------------------------------------- */

/* EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE */
static int op_empty(struct machine *m, uint32_t op, uint8_t c)
{
	uint32_t id = new_container(m, c == '}' ? K_DICT : K_SEQ);
	return id == NONE_ID ? ck_err_nomem(m->e) : push(m, id, op);
}

/* DICT, LIST, TUPLE from a MARK; TUPLE1..3 from the top values. */
static int op_build_container(struct machine *m, uint32_t op, uint8_t c)
{
	bool dict = c == 'd';
	uint32_t base = 0, id;

	if (c >= 0x85 && c <= 0x87) {
		if (need(m, op, c - 0x84u))
			return -1;
		base = m->stack.n - (c - 0x84u);
	} else if (pop_mark(m, op, &base)) {
		return -1;
	}
	if ((id = new_container(m, dict ? K_DICT : K_SEQ)) == NONE_ID)
		return ck_err_nomem(m->e);
	if (dict && (m->stack.n - base) % 2)
		return pk_fail(m, op, "DICT with an odd number of items");
	for (uint32_t k = base; k < m->stack.n; k += dict ? 2 : 1) {
		int r = dict ? add_item(m, id, m->stack.v[k], m->stack.v[k + 1], true)
			     : add_kid(m, id, m->stack.v[k].obj);
		if (r)
			return -1;
	}
	m->stack.n = base;
	return push(m, id, op);
}

static int op_setitem(struct machine *m, uint32_t op)
{
	if (need(m, op, 3))
		return -1;
	if (add_item(m, below(m, 3).obj, below(m, 2), below(m, 1), false))
		return -1;
	m->stack.n -= 2;
	return 0;
}

/* SETITEMS, APPENDS, ADDITEMS: the items above a MARK into the container
 * below it (a set's are dropped). */
static int op_extend(struct machine *m, uint32_t op, uint8_t c)
{
	uint32_t base = 0, target;

	if (pop_mark(m, op, &base))
		return -1;
	if (c == 'u' && (m->stack.n - base) % 2)
		return pk_fail(m, op, "SETITEMS with an odd number of items");
	if (base == 0 || at_mark(m, base))
		return pk_fail(m, op, c == 'u' ? "SETITEMS without a dict below its MARK"
					      : "APPENDS without a container below its MARK");
	target = m->stack.v[base - 1].obj;
	for (uint32_t k = base; c != 0x90 && k < m->stack.n; k += c == 'u' ? 2 : 1) {
		int r = c == 'u' ? add_item(m, target, m->stack.v[k], m->stack.v[k + 1], true)
				 : add_kid(m, target, m->stack.v[k].obj);
		if (r)
			return -1;
	}
	m->stack.n = base;
	return 0;
}

static int op_append(struct machine *m, uint32_t op)
{
	if (need(m, op, 2))
		return -1;
	if (add_kid(m, below(m, 2).obj, below(m, 1).obj))
		return -1;
	m->stack.n--;
	return 0;
}

/* ---- calls: all opaque but tensor rebuilds and OrderedDict() ------------- */

/* FROZENSET, INST, OBJ: the marked items become one opaque value. */
static int op_marked_opaque(struct machine *m, uint32_t op, uint8_t c)
{
	uint32_t base = 0;

	if (pop_mark(m, op, &base))
		return -1;
	if (c == 'o' && m->stack.n == base)
		return pk_fail(m, op, "OBJ without a class");
	m->stack.n = base;
	return push(m, NONE_ID, op);
}

/* BINPERSID, NEWOBJ_EX: n values become one opaque value. */
static int op_opaque_call(struct machine *m, uint32_t op, uint32_t n)
{
	if (need(m, op, n))
		return -1;
	m->stack.n -= n;
	return push(m, NONE_ID, op);
}

/* NEWOBJ, REDUCE: callable, args. */
static int op_reduce(struct machine *m, uint32_t op, uint8_t c)
{
	struct obj fn, args;
	uint32_t id;

	if (need(m, op, 2))
		return -1;
	fn = pk_obj(m, below(m, 2).obj);
	args = pk_obj(m, below(m, 1).obj);
	m->stack.n -= 2;
	if (fn.kind == K_GLOBAL && (fn.flags & G_TENSOR) && c == 'R') {
		if ((id = new_obj(m, K_TENSOR, 0)) == NONE_ID)
			return ck_err_nomem(m->e);
		return push(m, id, op);
	}
	if (fn.kind == K_GLOBAL && (fn.flags & G_ODICT) && args.kind == K_SEQ && m->seqs.v[args.a].n == 0) {
		if ((id = new_container(m, K_DICT)) == NONE_ID)
			return ck_err_nomem(m->e);
		m->dicts.v[pk_obj(m, id).a].odict = true;
		return push(m, id, op);
	}
	return push(m, NONE_ID, op);
}

/* BUILD: the _metadata of a state dict arrives here. */
static int op_build(struct machine *m, uint32_t op)
{
	struct obj target, state;

	if (need(m, op, 2))
		return -1;
	state = pk_obj(m, below(m, 1).obj);
	target = pk_obj(m, below(m, 2).obj);
	m->stack.n--;
	if (target.kind != K_DICT || !m->dicts.v[target.a].odict || state.kind != K_DICT)
		return 0;
	for (uint32_t k = m->dicts.v[state.a].first; k; k = m->items.v[k - 1].next) {
		struct item it = m->items.v[k - 1];
		struct ck_str key = pk_obj(m, it.key).kind == K_STR ? pk_str(m, it.key) : (struct ck_str){0};
		if (key.len == 9 && memcmp(key.s, "_metadata", 9) == 0 && pk_obj(m, it.val).kind == K_DICT)
			m->dicts.v[target.a].meta = it.val;
	}
	return 0;
}

/* ---- the run ---------------------------------------------------------------- */

static int step(struct machine *m, uint32_t op)
{
	uint8_t c = OP_BYTE(m, op);

	switch (c) {
	case 0x80: case 0x98: case '.':
		return 0; /* PROTO, READONLY_BUFFER, STOP */
	case 0x95: /* FRAME: the emitter drops frames (lengths change) */
		return add_ref(m, op, 0, 0);
	case '(': return op_mark(m, op);
	case '0': case '1': return op_pop(m, op, c);
	case 'X': case 'T': case 0x8c: case 'U': case 0x8d: return op_str(m, op);
	case 'N': case 0x88: case 0x89: case 'I': case 'J': case 'K': case 'L': case 'M': case 'F': case 'G':
	case 0x8a: case 0x8b: case 'S': case 'V': case 'C': case 'B': case 0x8e: case 0x96: case 0x82:
	case 0x83: case 0x84: case 'P': case 0x8f: case 0x97:
		return push(m, NONE_ID, op); /* values we never look into */
	case 'c': case 0x93: return op_global(m, op, c);
	case 'h': case 'j': case 'g': return op_get(m, op);
	case 'q': case 'r': case 'p': case 0x94: return op_put(m, op);
	case '2': return op_dup(m, op);
	case '}': case ']': case ')': return op_empty(m, op, c);
	case 'd': case 'l': case 't': case 0x85: case 0x86: case 0x87: return op_build_container(m, op, c);
	case 's': return op_setitem(m, op);
	case 'u': case 'e': case 0x90: return op_extend(m, op, c);
	case 'a': return op_append(m, op);
	case 0x91: case 'i': case 'o': return op_marked_opaque(m, op, c);
	case 'Q': return op_opaque_call(m, op, 1);
	case 0x92: return op_opaque_call(m, op, 3);
	case 0x81: case 'R': return op_reduce(m, op, c);
	case 'b': return op_build(m, op);
	}
	return pk_fail(m, op, "opcode not handled");
}

int pk_run(struct machine *m)
{
	if (new_obj(m, K_OTHER, 0) != NONE_ID)
		return ck_err_nomem(m->e);
	for (uint32_t op = 0;; op += pk_op_len(m, op)) {
		if (step(m, op))
			return -1;
		if (OP_BYTE(m, op) != '.')
			continue;
		if (!m->stack.n || at_mark(m, m->stack.n))
			return pk_fail(m, op, "STOP with an empty stack");
		return 0;
	}
	return 0;
}
