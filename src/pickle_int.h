/* Private to the pickle rewriter (src/pickle*.c). The passes, one file
 * each: tokenize (pickle_tok.c) -> run the symbolic machine
 * (pickle_machine.c) -> find the state dicts (pickle_find.c) -> plan the
 * renames (pickle_plan.c) -> emit (pickle_emit.c); pickle.c holds the
 * whole and the one allocator. Every table is a VEC grown by pk_grow, and
 * every object and item is addressed by index: no pointer into a table is
 * kept across anything that may grow it. An op is named by its offset in
 * the input (which never moves); its length is read again from its bytes,
 * so no table holds anything per op. */
#ifndef CKPTFS_PICKLE_INT_H
#define CKPTFS_PICKLE_INT_H

#include "pickle.h"

/* ---- the one growable array ------------------------------------------- */

#define VEC(T) struct { T *v; uint32_t n, cap; }

/* Makes *cap >= want (doubling), the new tail zeroed when `zero`; -1 when
 * out of memory or past UINT32_MAX elements. Arrays of 1 MiB and up get a
 * mapping of their own, backed by huge pages where the kernel has them. */
int pk_grow(void **v, uint32_t *cap, uint64_t want, size_t sz, bool zero);
void pk_free(void *p, size_t bytes);

/* A table filled in order needs no zeroing (its tail is never read); one
 * indexed at random (memo slots, seen flags) takes VEC_RESERVE_ZEROED. */
#define VEC_RESERVE(x, want) \
	((uint64_t)(want) <= (x).cap ? 0 : pk_grow((void **)&(x).v, &(x).cap, (want), sizeof(*(x).v), false))
#define VEC_RESERVE_ZEROED(x, want) \
	((uint64_t)(want) <= (x).cap ? 0 : pk_grow((void **)&(x).v, &(x).cap, (want), sizeof(*(x).v), true))
#define VEC_FREE(x) pk_free((x).v, (size_t)(x).cap * sizeof(*(x).v))

/* ---- the symbolic machine's tables ------------------------------------- */

enum kind { K_OTHER, K_STR, K_DICT, K_SEQ, K_GLOBAL, K_TENSOR };
enum { G_ODICT = 1, G_TENSOR = 2 };                     /* what a K_GLOBAL names */
enum { F_SEEN_CAND = 4, F_SEEN_OTHER = 8, F_STATE_DICT = 16 }; /* set by the finder */
#define NONE_ID 0u /* object 0: "anything we do not track" */

struct obj {
	uint32_t a; /* K_STR: the op that pushes its bytes; K_DICT, K_SEQ: its index */
	uint8_t kind, flags;
};

/* Dict items and sequence elements live in one array each; a container
 * chains its own through `next` (index + 1, 0 ends). */
struct item {
	uint32_t key, val, next;
	uint32_t key_op : 31, in_batch : 1; /* in_batch: from a MARK ... SETITEMS/DICT */
};

/* k runs over a dict's items (index + 1); ITEM(m, k) is the item. */
#define FOR_ITEMS(m, d, k) for (uint32_t k = (d).first; k; k = (m)->items.v[k - 1].next)
#define ITEM(m, k) ((m)->items.v[(k) - 1])

struct dict {
	uint32_t first, last, n;
	uint32_t meta; /* the _metadata dict BUILD gave an OrderedDict, or NONE_ID */
	bool odict;    /* reduced from collections.OrderedDict */
};

/* Only the elements that are containers are kept (with their place): the
 * finder and describe walk nothing else. */
struct kid { uint32_t obj, next, index; };
struct seq { uint32_t first, last, n; };

/* What the emitter needs of an op beyond its bytes, kept only for FRAME and
 * for memo gets, puts and DUPs of strings (the only values a rename can
 * change): get: object, memo index; DUP: object, the op that pushed it;
 * put: the op that pushed the top, memo index. */
struct ref { uint32_t op, a, b; };

struct slot { uint32_t obj, op; }; /* stack entry: value and the op that pushed it */

struct machine {
	const uint8_t *in;
	size_t n;
	struct ck_err *e;
	uint32_t nops; /* counted by the tokenizer */
	VEC(struct obj) objs;
	VEC(struct dict) dicts;
	VEC(struct item) items;
	VEC(struct seq) seqs;
	VEC(struct kid) kids;
	VEC(struct ref) refs; /* in op order */
	VEC(struct slot) stack;
	VEC(uint32_t) marks;
	VEC(uint32_t) memo; /* memo index -> object + 1 (0: unset), grown as puts come */
	uint32_t memo_set;  /* how many memo indices are set (MEMOIZE's next index) */
};

#define OP_BYTE(m, op) ((m)->in[op])

enum pk_arg {
	A_UNKNOWN,                                /* not an opcode */
	A_NONE, A_U8, A_U16, A_U32, A_U64, A_F8, /* fixed-size arguments */
	A_STR1, A_STR4, A_STR8,                   /* length-prefixed bytes */
	A_LINE, A_LINE2,                          /* newline-terminated text */
};
extern const uint8_t pk_op_arg[256]; /* each opcode byte's argument */

uint32_t pk_op_len_slow(const struct machine *m, uint32_t op);

/* The length of the op at offset `op`, which the tokenizer has checked. */
static inline uint32_t pk_op_len(const struct machine *m, uint32_t op)
{
	static const uint8_t fixed[] = {[A_NONE] = 1, [A_U8] = 2, [A_U16] = 3, [A_U32] = 5, [A_U64] = 9, [A_F8] = 9};
	uint8_t a = pk_op_arg[m->in[op]];

	if (a <= A_F8)
		return fixed[a];
	if (a == A_STR1)
		return 2u + m->in[op + 1];
	if (a == A_STR4)
		return 5u + ck_le32(m->in + op + 1);
	return pk_op_len_slow(m, op);
}

static inline struct obj pk_obj(const struct machine *m, uint32_t id) { return m->objs.v[id]; }

/* The bytes of a K_STR object, inside the input (which never moves). */
struct ck_str pk_str(const struct machine *m, uint32_t obj);

int pk_fail(const struct machine *m, uint32_t op, const char *what);
void pk_machine_free(struct machine *m);

/* ---- the passes --------------------------------------------------------- */

/* Walks the opcodes to STOP, counting them in m->nops when `count`. */
size_t pk_scan(struct machine *m, bool count, bool *short_input);
int pk_run(struct machine *m);
int pk_find_state_dicts(struct machine *m, uint32_t root);
int pk_report_state_dicts(struct machine *m, uint32_t root, ck_found_fn fn, void *ctx);

/* A renamed key op, or the op before which the wrapper's own `_metadata`
 * entry goes (s NULL): sparse, sorted by op once planned. */
enum { INS_NONE, INS_IN_BATCH, INS_SETITEM };
struct ren {
	uint32_t op, len;
	size_t at;    /* the new name: plan.names.data + at, len bytes, if named */
	uint32_t seq; /* order planned: of two plans for one op, the later holds */
	uint8_t ins;
	bool named;
};

struct plan {
	VEC(struct ren) ren;
	struct ck_buf names; /* every new name, one after another: no allocation a key */
	uint64_t max_out;    /* the output's bound (CK_PICKLE_GROWTH in pickle.h) */
};

static inline struct ck_str pk_ren_name(const struct plan *p, const struct ren *r)
{
	return (struct ck_str){(const char *)p->names.data + r->at, r->len};
}

int pk_plan(struct machine *m, struct plan *p, const struct ck_view *v);
void pk_plan_free(struct plan *p);
/* The index + 1 of op's rename with a string, 0 if none, looked up among
 * the first `hint` entries: the emitter's, all at or before where it is
 * (a put's string was most often pushed by the op just before). */
uint32_t pk_renamed(const struct plan *p, uint32_t op, uint32_t hint);
int pk_emit(struct machine *m, const struct plan *p, struct ck_buf *out);

#endif
