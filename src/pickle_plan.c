/* The planner: new names for the keys of every state dict and of its
 * `_metadata`, checked for collisions, as a sparse list of the ops to
 * rewrite (sorted by op) for the emitter. */
#include "pickle_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "renames.h"

/* A dict's new key names, in item order: where each stands in plan.names. */
struct str { size_t at; uint32_t len; };
typedef VEC(struct str) names_vec;

static bool key_op_rewritable(uint8_t c)
{
	return c == 'X' || c == 'T' || c == 'U' || c == 0x8c || c == 0x8d || c == 'h' || c == 'j' || c == 'g' ||
	       c == '2';
}

/* A name's bytes; valid until the next name is added to the plan. */
static const char *name_at(const struct plan *p, struct str a)
{
	return (const char *)p->names.data + a.at;
}

static bool same(const struct plan *p, struct str a, struct ck_str b)
{
	return a.len == b.len && memcmp(name_at(p, a), b.s, a.len) == 0;
}

/* New names for the keys of a dict; *changed tells if any differs. */
static int rename_all(struct machine *m, struct plan *p, struct dict d, const struct ck_view *v, bool meta,
		      names_vec *out, bool *changed)
{
	if (VEC_RESERVE(*out, d.n + 1ull))
		return ck_err_nomem(m->e);
	FOR_ITEMS(m, d, k) {
		struct ck_str key = pk_str(m, ITEM(m, k).key);
		size_t at = p->names.len, nl = ck_view_rename_into(v, key.s, key.len, meta, &p->names);
		if (p->names.failed)
			return ck_err_nomem(m->e);
		if (nl > UINT32_MAX)
			return pk_fail(m, ITEM(m, k).key_op, "renamed key longer than 4 GiB");
		out->v[out->n++] = (struct str){at, (uint32_t)nl};
		if (!same(p, out->v[out->n - 1], key))
			*changed = true;
	}
	return 0;
}

/* The set holds pointers into p->names, which grows only between checks. */
static int check_collisions(struct machine *m, const struct plan *p, struct dict d, const names_vec *names)
{
	struct ck_renames set;
	uint32_t i = 0;
	size_t taken_by;
	int rc = ck_renames_init(&set, d.n, m->e);

	FOR_ITEMS(m, d, k) {
		struct str name = names->v[i++];
		if (rc)
			break;
		if ((rc = ck_renames_add(&set, name_at(p, name), name.len, ITEM(m, k).key, &taken_by, m->e)) == 1) {
			struct ck_str a = pk_str(m, (uint32_t)taken_by), b = pk_str(m, ITEM(m, k).key);
			rc = ck_err_set(m->e, EIO, "keys '%.*s' and '%.*s' would both become '%.*s'", (int)a.len, a.s,
					(int)b.len, b.s, (int)name.len, name_at(p, name));
		}
	}
	ck_renames_free(&set);
	return rc;
}

static int add_ren(struct machine *m, struct plan *p, struct ren r)
{
	if (VEC_RESERVE(p->ren, p->ren.n + 1ull))
		return ck_err_nomem(m->e);
	r.seq = p->ren.n;
	p->ren.v[p->ren.n++] = r;
	return 0;
}

/* Plans the keys whose name changes. */
static int assign(struct machine *m, struct plan *p, struct dict d, const names_vec *names)
{
	uint32_t i = 0;

	FOR_ITEMS(m, d, k) {
		struct item it = ITEM(m, k);
		struct str name = names->v[i++];
		if (same(p, name, pk_str(m, it.key)))
			continue;
		if (!key_op_rewritable(OP_BYTE(m, it.key_op)))
			return pk_fail(m, it.key_op, "state-dict key is neither a string nor a memo reference");
		if (add_ren(m, p, (struct ren){.op = it.key_op, .len = name.len, .at = name.at, .named = true}))
			return -1;
		p->max_out += name.len + 5u;
	}
	return 0;
}

/* New names for a `_metadata`; *in_form tells if it already has the view's
 * shape. A view that adds the wrapper wants the wrapper's own ('', ...)
 * entry first and every other name mapping to itself; renaming the whole
 * metadata maps that head '' to "module" too, and the root entry that also
 * becomes "module" then overwrites it in place, as unpickling assigns. A
 * metadata without the root entry '' (crafted) has no "module" after the
 * view: the view of the view must still find it in form. */
static int rename_meta(struct machine *m, struct plan *p, struct dict md, const struct ck_view *v, names_vec *out,
		       bool *in_form)
{
	bool changed = false;
	uint32_t i = 0;

	if (rename_all(m, p, md, v, true, out, &changed))
		return -1;
	if (!ck_view_adds_wrapper(v)) {
		*in_form = !changed;
		return 0;
	}
	/* the wrapper's entry '' first, then the wrapped root ("module") */
	*in_form = md.n >= 2 && pk_str(m, ITEM(m, md.first).key).len == 0;
	FOR_ITEMS(m, md, k) {
		if (!*in_form)
			break;
		if (i++ >= 1)
			*in_form = same(p, out->v[i - 1], pk_str(m, ITEM(m, k).key));
	}
	return 0;
}

static bool all_str_keys(const struct machine *m, struct dict d)
{
	FOR_ITEMS(m, d, k)
		if (pk_obj(m, ITEM(m, k).key).kind != K_STR)
			return false;
	return true;
}

/* Plans a state dict's `_metadata` unless already in the view's form; a
 * view that adds the wrapper also inserts the wrapper's own entry. An
 * empty metadata names no module, so there is nothing to wrap. */
static int plan_meta(struct machine *m, struct plan *p, struct dict md, const struct ck_view *v)
{
	names_vec names = {0};
	bool in_form = true;
	size_t mark = p->names.len;
	int rc;

	if ((rc = rename_meta(m, p, md, v, &names, &in_form)) || in_form || (rc = assign(m, p, md, &names))) {
		p->names.len = mark; /* no name of it is planned */
		goto out;
	}
	if (ck_view_adds_wrapper(v) && md.n) {
		struct item head = ITEM(m, md.first);
		rc = add_ren(m, p, (struct ren){.op = head.key_op, .ins = head.in_batch ? INS_IN_BATCH : INS_SETITEM});
	}
out:
	VEC_FREE(names);
	return rc;
}

/* Plans one state dict: its keys, and its `_metadata` separately; a part
 * already in the view's form is left alone. */
static int plan_dict(struct machine *m, struct plan *p, struct dict d, const struct ck_view *v)
{
	names_vec names = {0};
	bool changed = false;
	size_t mark = p->names.len;
	int rc = rename_all(m, p, d, v, false, &names, &changed);

	if (!rc && changed && !(rc = check_collisions(m, p, d, &names)))
		rc = assign(m, p, d, &names);
	if (!changed)
		p->names.len = mark; /* the names a state dict already has take no room */
	VEC_FREE(names);
	if (rc || d.meta == NONE_ID || !all_str_keys(m, m->dicts.v[pk_obj(m, d.meta).a]))
		return rc;
	return plan_meta(m, p, m->dicts.v[pk_obj(m, d.meta).a], v);
}

static int by_op(const void *a, const void *b)
{
	const struct ren *x = a, *y = b;
	if (x->op != y->op)
		return x->op < y->op ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Sorts the plan by op and merges the plans of one op (a `_metadata` shared
 * by two state dicts is planned twice): the later name and insert hold. */
static void sort_plan(struct plan *p)
{
	uint32_t w = 0;

	bool sorted = true;

	for (uint32_t r = 1; r < p->ren.n && sorted; r++)
		sorted = p->ren.v[r - 1].op < p->ren.v[r].op;
	if (!sorted) /* planned in object order: usually op order already */
		qsort(p->ren.v, p->ren.n, sizeof(*p->ren.v), by_op);
	for (uint32_t r = 0; r < p->ren.n; r++) {
		struct ren x = p->ren.v[r];
		if (w && p->ren.v[w - 1].op == x.op) {
			struct ren *y = &p->ren.v[w - 1];
			if (x.named) {
				y->at = x.at;
				y->len = x.len;
				y->named = true;
			}
			if (x.ins)
				y->ins = x.ins;
			continue;
		}
		p->ren.v[w++] = x;
	}
	p->ren.n = w;
}

int pk_plan(struct machine *m, struct plan *p, const struct ck_view *v)
{
	for (uint32_t k = 0; k < m->objs.n; k++) {
		struct obj o = pk_obj(m, k);
		if (o.kind == K_DICT && (o.flags & F_STATE_DICT) && plan_dict(m, p, m->dicts.v[o.a], v))
			return -1;
	}
	sort_plan(p);
	return 0;
}

void pk_plan_free(struct plan *p)
{
	ck_buf_free(&p->names);
	VEC_FREE(p->ren);
}

uint32_t pk_renamed(const struct plan *p, uint32_t op, uint32_t hint)
{
	uint32_t lo = 0, hi = hint;

	if (!hint || p->ren.v[hint - 1].op < op)
		return 0;
	if (p->ren.v[hint - 1].op == op) /* the most common: the op just planned */
		return p->ren.v[hint - 1].named ? hint : 0;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (p->ren.v[mid].op < op)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < hint && p->ren.v[lo].op == op && p->ren.v[lo].named ? lo + 1 : 0;
}
