/* The whole index is read (it is small), checked by jansson and renamed in
 * place by jsonkeys.h; the view is the rewritten text, served from memory. */
#define _GNU_SOURCE /* memmem */
#include "shardindex.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "jsonkeys.h"

#define WEIGHT_MAP "weight_map"
#define JSON_SPACE " \t\n\r"

bool ck_shardindex_candidate(const uint8_t *head, size_t n, uint64_t file_size)
{
	size_t i = 0;

	if (file_size < 2 || file_size > CK_SHARDINDEX_MAX)
		return false;
	while (i < n && strchr(JSON_SPACE, head[i]) && head[i])
		i++;
	return i < n && head[i] == '{';
}

/* A map from tensor names to shard file names. */
static bool is_weight_map(json_t *wm)
{
	const char *k;
	json_t *x;

	if (!json_is_object(wm))
		return false;
	json_object_foreach(wm, k, x) if (!json_is_string(x)) return false;
	return true;
}

/* The view of the index text[0, n) into out; *changed tells if it differs. */
static int rename_index(const char *text, size_t n, json_t *root, const struct ck_view *v, struct ck_buf *out,
			bool *changed, struct ck_err *e)
{
	const struct ck_json_rename r = {.view = v, .what = "index"};
	size_t from = 0, at = ck_json_member_value(text, n, strspn(text, JSON_SPACE), root, WEIGHT_MAP);

	if (at == (size_t)-1) /* jansson found it, so the scanner must too */
		return ck_err_set(e, EIO, "index: '" WEIGHT_MAP "' not found in the text");
	if (ck_json_rename_members(&r, text, n, at, json_object_get(root, WEIGHT_MAP), out, &from, changed, e))
		return -1;
	ck_buf_append(out, text + from, n - from);
	return out->failed ? ck_err_nomem(e) : 0;
}

/* What classifying read: the text and its parse, kept for the layout. */
struct index_state {
	char *text;
	size_t n;
	json_t *root;
};

void ck_shardindex_release(void *st)
{
	struct index_state *x = st;

	if (x) {
		json_decref(x->root);
		free(x->text);
	}
	free(x);
}

/* Reads the candidate; *fmt tells whether it is an index. */
int ck_shardindex_classify(const struct ck_src *src, void **st, enum ck_format *fmt, struct ck_err *e)
{
	struct ck_err not_json = {0};
	struct index_state *x;
	size_t n = (size_t)src->size;

	*st = NULL;
	*fmt = CK_FORMAT_OTHER;
	if (src->size > CK_SHARDINDEX_MAX)
		return 0;
	if (ck_src_claim(src, n + 1, e))
		return ck_err_context(e, "index offset 0: %zu bytes: ", n);
	if (!(x = calloc(1, sizeof(*x))) || !(x->text = malloc(n + 1))) {
		free(x);
		return ck_err_nomem(e);
	}
	x->n = n;
	if (ck_src_read(src, x->text, n, 0, e))
		goto fail;
	x->text[n] = 0;
	/* most JSON files (configs, tokenizers) are no index: skip the parse */
	if (!memmem(x->text, n, "\"" WEIGHT_MAP "\"", sizeof(WEIGHT_MAP) + 1))
		goto other;
	if (ck_src_claim(src, (n + 1) * CK_JSON_MEMORY_PER_BYTE, e)) {
		ck_err_context(e, "index offset 0: %zu bytes: ", n);
		goto fail;
	}
	x->root = ck_json_parse_object(x->text, n, "index", &not_json);
	if (!x->root || !is_weight_map(json_object_get(x->root, WEIGHT_MAP)))
		goto other;
	*fmt = CK_FORMAT_SHARDINDEX;
	*st = x;
	return 0;
other:
	ck_shardindex_release(x);
	return 0;
fail:
	ck_shardindex_release(x);
	return -1;
}

int ck_shardindex_layout(const struct ck_src *src, void *st, const struct ck_view *v, struct ck_layout **out,
			 struct ck_err *e)
{
	struct index_state *x = st;
	struct ck_layout_builder lb = {0};
	struct ck_buf view = {0};
	bool changed = false;
	int rc;

	*out = NULL;
	if (!(rc = rename_index(x->text, x->n, x->root, v, &view, &changed, e)) && changed) {
		ck_layout_add_mem(&lb, view.data, view.len);
		*out = ck_layout_finish(&lb, e);
		rc = *out ? 0 : -1;
	}
	ck_buf_free(&view);
	return rc;
}

int ck_shardindex_describe(const struct ck_src *src, void *st, int *protocol, ck_found_fn fn, void *ctx,
			   struct ck_err *e)
{
	struct ck_layout *l = NULL;
	int rc = ck_shardindex_layout(src, st, &ck_view_plain, &l, e);

	ck_layout_free(l);
	return rc;
}
