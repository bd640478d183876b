/* The emitter: copies the pickle, replacing what the plan says. It visits
 * only the ops that matter (FRAMEs, the planned ops, memo traffic of
 * strings) and copies the runs between them verbatim. Memo slots keep
 * their indices; a memo get whose slot now holds another string than the
 * one wanted at that place becomes a literal without a put. */
#include "pickle_int.h"

#include <errno.h>
#include <string.h>

struct emitter {
	struct machine *m;
	const struct plan *p;
	struct ck_buf *out;
	size_t from;               /* start of the pending verbatim run */
	uint32_t r;                /* plan entries done: a put's string is most often the last */
	VEC(uint32_t) slot;        /* memo index -> what it holds in the output: rename + 1, 0: as in the input */
};

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

/* Copies the input up to `to`, then skips the op at `to` (its bytes are
 * replaced) when `skip`. */
static void flush_to(struct emitter *em, uint32_t op, bool skip)
{
	const struct machine *m = em->m;

	ck_buf_append(em->out, m->in + em->from, op - em->from);
	em->from = skip ? op + pk_op_len(m, op) : op;
}

static struct ck_str ren_str(const struct plan *p, uint32_t r) /* r: rename + 1 */
{
	return pk_ren_name(p, &p->ren.v[r - 1]);
}

/* A memo get or DUP of a string: spelled out when the output holds another
 * string there than the one wanted (`want`: this op's rename + 1, or 0). */
static void emit_copy(struct emitter *em, const struct ref *f, uint32_t want_r)
{
	struct ck_str orig = pk_str(em->m, f->a);
	uint32_t held_r = OP_BYTE(em->m, f->op) == '2' ? pk_renamed(em->p, f->b, em->r) : em->slot.v[f->b];
	struct ck_str want = want_r ? ren_str(em->p, want_r) : orig;
	struct ck_str cur = held_r ? ren_str(em->p, held_r) : orig;

	if (want.len == cur.len && memcmp(want.s, cur.s, want.len) == 0)
		return;
	flush_to(em, f->op, true);
	emit_str(em->out, want.s, (uint32_t)want.len);
}

/* One op that matters: r is its plan entry, f its ref (either may be NULL). */
static void emit_op(struct emitter *em, uint32_t op, const struct ren *r, const struct ref *f)
{
	uint8_t c = OP_BYTE(em->m, op);

	if (r && r->ins) {
		flush_to(em, op, false);
		emit_wrapper_entry(em->out, r->ins);
	}
	switch (c) {
	case 0x95: /* FRAME: lengths change, so frames go; unpicklers accept none */
		flush_to(em, op, true);
		break;
	case 'h': case 'j': case 'g': case '2':
		if (f)
			emit_copy(em, f, r && r->named ? (uint32_t)(r - em->p->ren.v) + 1 : 0);
		break;
	case 'q': case 'r': case 'p': case 0x94:
		if (f)
			em->slot.v[f->b] = pk_renamed(em->p, f->a, em->r);
		break;
	default:
		if (r && r->named) { /* a renamed key literal */
			flush_to(em, op, true);
			emit_str(em->out, pk_ren_name(em->p, r).s, r->len);
		}
	}
}

int pk_emit(struct machine *m, const struct plan *p, struct ck_buf *out)
{
	struct emitter em = {.m = m, .p = p, .out = out};
	size_t base = out->len; /* the pickle is appended to what out holds */
	uint32_t f = 0;

	if (VEC_RESERVE_ZEROED(em.slot, m->memo.cap + 1ull))
		return ck_err_nomem(m->e);
	ck_buf_reserve(out, m->n + m->n / 8); /* renames change a pickle's size little */
	while ((em.r < p->ren.n || f < m->refs.n) && out->len - base <= p->max_out) {
		uint32_t op = em.r < p->ren.n ? p->ren.v[em.r].op : UINT32_MAX;
		const struct ren *rh = NULL;
		const struct ref *fh = NULL;

		if (f < m->refs.n && m->refs.v[f].op < op)
			op = m->refs.v[f].op;
		if (em.r < p->ren.n && p->ren.v[em.r].op == op)
			rh = &p->ren.v[em.r++];
		if (f < m->refs.n && m->refs.v[f].op == op)
			fh = &m->refs.v[f++];
		emit_op(&em, op, rh, fh);
	}
	if (out->len - base <= p->max_out) /* else stopped where it went past */
		ck_buf_append(out, m->in + em.from, m->n - em.from);
	VEC_FREE(em.slot);
	if (out->failed)
		return ck_err_nomem(m->e);
	if (out->len - base > p->max_out)
		return ck_err_set(m->e, EIO,
				  "pickle offset %zu: the view's pickle would be larger than %llu bytes (twice the "
				  "source's + 1 MiB + the renamed keys): a string copied over and over",
				  em.from, (unsigned long long)p->max_out);
	return 0;
}
