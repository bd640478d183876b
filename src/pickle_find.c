/* The state-dict finder: walks from the top object through dicts, lists
 * and tuples and marks the state dicts (F_STATE_DICT); and, for tools
 * (ckptfs inspect), reports each with its path from the top. */
#include "pickle_int.h"

#include <string.h>

/* A parameter path: module and parameter names joined by dots. File paths
 * (Lightning's best_k_models maps checkpoint paths to scores) are not. */
static bool is_param_path(const struct machine *m, uint32_t key)
{
	struct ck_str s;

	if (pk_obj(m, key).kind != K_STR || !(s = pk_str(m, key)).len)
		return false;
	for (size_t i = 0; i < s.len; i++) {
		uint8_t c = (uint8_t)s.s[i];
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
static bool is_state_dict(const struct machine *m, struct dict d)
{
	if (d.meta != NONE_ID) {
		FOR_ITEMS(m, d, k)
			if (pk_obj(m, ITEM(m, k).key).kind != K_STR)
				return false;
		return true;
	}
	if (d.n == 0)
		return false;
	FOR_ITEMS(m, d, k)
		if (!is_param_path(m, ITEM(m, k).key) || pk_obj(m, ITEM(m, k).val).kind != K_TENSOR)
			return false;
	return true;
}

static bool has_key(const struct machine *m, struct dict d, const char *name)
{
	size_t n = strlen(name);

	FOR_ITEMS(m, d, k) {
		uint32_t key = ITEM(m, k).key;
		if (pk_obj(m, key).kind == K_STR && pk_str(m, key).len == n && memcmp(pk_str(m, key).s, name, n) == 0)
			return true;
	}
	return false;
}

/* Optimizer.state_dict(): per-parameter state ({'exp_avg': tensor, ...})
 * under parameter ids, which may be strings too. Never walked into. */
static bool is_optimizer_state(const struct machine *m, struct dict d)
{
	return has_key(m, d, "state") && has_key(m, d, "param_groups");
}

struct todo { uint32_t obj; bool cand; };
typedef VEC(struct todo) todo_vec;

static int todo_push(struct machine *m, todo_vec *t, uint32_t obj, bool cand)
{
	if (VEC_RESERVE(*t, t->n + 1ull))
		return ck_err_nomem(m->e);
	t->v[t->n++] = (struct todo){obj, cand};
	return 0;
}

/* Queues what a container holds; a dict's values are candidates only when
 * all its keys are strings. */
static int todo_children(struct machine *m, todo_vec *todo, struct obj o)
{
	bool str_keys = true;
	int rc = 0;

	if (o.kind == K_SEQ) {
		for (uint32_t k = m->seqs.v[o.a].first; k && !rc; k = m->kids.v[k - 1].next)
			rc = todo_push(m, todo, m->kids.v[k - 1].obj, true);
		return rc;
	}
	FOR_ITEMS(m, m->dicts.v[o.a], k)
		str_keys &= pk_obj(m, ITEM(m, k).key).kind == K_STR;
	FOR_ITEMS(m, m->dicts.v[o.a], k)
		if ((rc = todo_push(m, todo, ITEM(m, k).val, str_keys)))
			break;
	return rc;
}

/* Walks from the root through dicts, lists and tuples only (never into an
 * object's state), marking state dicts. A dict under a non-string key is
 * walked into but is no state dict. */
int pk_find_state_dicts(struct machine *m, uint32_t root)
{
	todo_vec todo = {0};
	int rc = todo_push(m, &todo, root, true);

	while (!rc && todo.n) {
		struct todo t = todo.v[--todo.n];
		struct obj o = pk_obj(m, t.obj);
		uint8_t bit = t.cand || o.kind == K_SEQ ? F_SEEN_CAND : F_SEEN_OTHER;

		if ((o.kind != K_DICT && o.kind != K_SEQ) || (o.flags & bit))
			continue;
		m->objs.v[t.obj].flags |= bit;
		if (o.kind == K_DICT && t.cand && is_state_dict(m, m->dicts.v[o.a])) {
			m->objs.v[t.obj].flags |= F_STATE_DICT;
			continue;
		}
		if (o.kind == K_DICT && is_optimizer_state(m, m->dicts.v[o.a]))
			continue;
		rc = todo_children(m, &todo, o);
	}
	VEC_FREE(todo);
	return rc;
}

/* ---- describing (for tools: ckptfs inspect) ------------------------------ */

/* A breadth-first walk from the top object; each node knows its parent, so
 * a state dict's path is read back from it. */
struct walk_node {
	uint32_t obj, parent;
	struct ck_path_step step;
};

struct walk {
	VEC(struct walk_node) nodes;
	VEC(uint8_t) seen;
};

static int report_state_dict(struct machine *m, const struct walk *w, uint32_t at, ck_found_fn fn, void *ctx)
{
	struct dict d = m->dicts.v[pk_obj(m, w->nodes.v[at].obj).a];
	VEC(struct ck_str) keys = {0};
	VEC(struct ck_path_step) path = {0};
	uint32_t depth = 0, i = 0;
	int rc;

	for (uint32_t k = at; k != 0; k = w->nodes.v[k].parent)
		depth++;
	if (VEC_RESERVE_ZEROED(keys, d.n + 1ull) || VEC_RESERVE(path, depth + 1ull)) {
		rc = ck_err_nomem(m->e);
		goto out;
	}
	for (uint32_t k = at, j = depth; k != 0; k = w->nodes.v[k].parent)
		path.v[--j] = w->nodes.v[k].step;
	FOR_ITEMS(m, d, k) {
		if (pk_obj(m, ITEM(m, k).key).kind == K_STR)
			keys.v[i] = pk_str(m, ITEM(m, k).key);
		i++;
	}
	rc = fn(ctx, &(struct ck_found_sd){.path = path.v, .depth = depth, .keys = keys.v, .nkeys = d.n,
					   .has_metadata = d.meta != NONE_ID}, m->e);
out:
	VEC_FREE(keys);
	VEC_FREE(path);
	return rc;
}

static int walk_to(struct machine *m, struct walk *w, uint32_t obj, uint32_t parent, struct ck_path_step step)
{
	if (w->seen.v[obj])
		return 0;
	w->seen.v[obj] = 1;
	if (VEC_RESERVE(w->nodes, w->nodes.n + 1ull))
		return ck_err_nomem(m->e);
	w->nodes.v[w->nodes.n++] = (struct walk_node){obj, parent, step};
	return 0;
}

static int walk_children(struct machine *m, struct walk *w, uint32_t at)
{
	struct obj o = pk_obj(m, w->nodes.v[at].obj);
	int rc = 0;

	if (o.kind == K_SEQ) {
		for (uint32_t k = m->seqs.v[o.a].first; k && !rc; k = m->kids.v[k - 1].next)
			rc = walk_to(m, w, m->kids.v[k - 1].obj, at,
				     (struct ck_path_step){.index = m->kids.v[k - 1].index});
		return rc;
	}
	FOR_ITEMS(m, m->dicts.v[o.a], k) {
		struct ck_path_step step = {.index = -1};
		if (pk_obj(m, ITEM(m, k).key).kind == K_STR)
			step.key = pk_str(m, ITEM(m, k).key);
		if ((rc = walk_to(m, w, ITEM(m, k).val, at, step)))
			break;
	}
	return rc;
}

int pk_report_state_dicts(struct machine *m, uint32_t root, ck_found_fn fn, void *ctx)
{
	struct walk w = {0};
	int rc = VEC_RESERVE_ZEROED(w.seen, m->objs.n + 1ull) ? ck_err_nomem(m->e)
						   : walk_to(m, &w, root, UINT32_MAX, (struct ck_path_step){.index = -1});

	for (uint32_t at = 0; at < w.nodes.n && !rc; at++) {
		struct obj o = pk_obj(m, w.nodes.v[at].obj);

		if (o.kind == K_DICT && (o.flags & F_STATE_DICT))
			rc = report_state_dict(m, &w, at, fn, ctx);
		else if (o.kind == K_SEQ || o.kind == K_DICT)
			rc = walk_children(m, &w, at);
	}
	VEC_FREE(w.seen);
	VEC_FREE(w.nodes);
	return rc;
}
