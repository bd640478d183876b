/* The header is validated by jansson and renamed in place (jsonkeys.h):
 * only renamed names change and every other byte, the __metadata__ above
 * all, stays exactly as written. */
#include "safetensors.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "jsonkeys.h"

#define METADATA "__metadata__"

bool ck_safetensors_detect(const uint8_t *head, size_t n, uint64_t file_size)
{
	uint64_t len;

	size_t p = 8;

	if (n < 9)
		return false;
	len = ck_le64(head);
	if (len < 2 || len > CK_SAFETENSORS_MAX_HEADER || len > file_size - 8)
		return false;
	/* the reader's JSON parser skips leading whitespace; a header that is
	 * whitespace as far as the head goes is judged by parsing it whole */
	while (p < n && p - 8 < len && (head[p] == ' ' || head[p] == '\t' || head[p] == '\n' || head[p] == '\r'))
		p++;
	return p == n || (p - 8 < len && head[p] == '{');
}

/* ---- validation, as the reference reader does it ------------------------- */

struct span {
	uint64_t begin, end;
	size_t at; /* header offset of the tensor's name, for messages */
};

/* Bits per element; 0 for a dtype this table does not know (newer ones are
 * then not size-checked rather than refused). */
static unsigned dtype_bits(const char *d)
{
	static const struct { const char *name; unsigned bits; } t[] = {
		{"BOOL", 8}, {"U8", 8}, {"I8", 8}, {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8},
		{"I16", 16}, {"U16", 16}, {"F16", 16}, {"BF16", 16}, {"I32", 32}, {"U32", 32},
		{"F32", 32}, {"F64", 64}, {"I64", 64}, {"U64", 64}, {"C64", 64},
		{"F4", 4}, {"F6_E2M3", 6}, {"F6_E3M2", 6},
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcmp(d, t[i].name) == 0)
			return t[i].bits;
	return 0;
}

static int check_tensor(const char *name, json_t *t, size_t at, struct span *sp, struct ck_err *e)
{
	json_t *dtype = json_object_get(t, "dtype"), *shape = json_object_get(t, "shape"),
	       *offs = json_object_get(t, "data_offsets");
	uint64_t bits = dtype ? dtype_bits(json_string_value(dtype) ? json_string_value(dtype) : "") : 0;
	size_t i;
	json_t *dim;

	if (!json_is_object(t) || !json_is_string(dtype) || !json_is_array(shape) || !json_is_array(offs) ||
	    json_array_size(offs) != 2 || !json_is_integer(json_array_get(offs, 0)) ||
	    !json_is_integer(json_array_get(offs, 1)))
		return ck_err_set(e, EIO, "safetensors header offset %zu: tensor '%s' lacks dtype, shape or data_offsets",
				  at, name);
	json_int_t b = json_integer_value(json_array_get(offs, 0)), en = json_integer_value(json_array_get(offs, 1));
	if (b < 0 || en < b)
		return ck_err_set(e, EIO, "safetensors header offset %zu: tensor '%s' has data_offsets [%lld, %lld]", at,
				  name, (long long)b, (long long)en);
	*sp = (struct span){(uint64_t)b, (uint64_t)en, at};
	json_array_foreach(shape, i, dim) {
		if (!json_is_integer(dim) || json_integer_value(dim) < 0 ||
		    __builtin_mul_overflow(bits, (uint64_t)json_integer_value(dim), &bits))
			return ck_err_set(e, EIO, "safetensors header offset %zu: tensor '%s' has a bad shape", at, name);
	}
	if (dtype_bits(json_string_value(dtype)) && (bits % 8 || bits / 8 != sp->end - sp->begin))
		return ck_err_set(e, EIO, "safetensors header offset %zu: tensor '%s' holds %llu bytes, its shape %llu bits",
				  at, name, (unsigned long long)(sp->end - sp->begin), (unsigned long long)bits);
	return 0;
}

static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;
	return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* The tensors tile the data from its start to the end of the file. */
static int check_spans(struct span *sp, size_t n, uint64_t data_len, struct ck_err *e)
{
	uint64_t at = 0;

	qsort(sp, n, sizeof(*sp), cmp_span);
	for (size_t i = 0; i < n; i++) {
		if (sp[i].begin != at)
			return ck_err_set(e, EIO, "safetensors header offset %zu: tensor data at byte %llu, expected %llu",
					  sp[i].at, (unsigned long long)sp[i].begin, (unsigned long long)at);
		at = sp[i].end;
	}
	if (at != data_len)
		return ck_err_set(e, EIO, "safetensors data offset %llu: tensors end there, the file has %llu bytes of data",
				  (unsigned long long)at, (unsigned long long)data_len);
	return 0;
}

/* ---- names ---------------------------------------------------------------- */

struct checks {
	struct span *spans;
	size_t n;
};

/* Every entry is a tensor but __metadata__, a map of strings kept as is. */
static int check_entry(void *ctx, const char *name, json_t *val, size_t at, bool *rename, struct ck_err *e)
{
	struct checks *c = ctx;
	const char *mk;
	json_t *x;
	bool strings = json_is_object(val);

	if (strcmp(name, METADATA) != 0)
		return check_tensor(name, val, at, &c->spans[c->n++], e);
	*rename = false;
	json_object_foreach(val, mk, x) strings &= json_is_string(x);
	if (!strings)
		return ck_err_set(e, EIO, "safetensors header offset %zu: " METADATA " is not a map of strings", at);
	return 0;
}

/* Checks every entry and renames the tensors; *changed tells if any name
 * changed. data_len: the bytes after the header. */
static int rename_header(const char *hdr, size_t n, json_t *root, uint64_t data_len, const struct ck_view *v,
			 struct ck_buf *out, bool *changed, struct ck_err *e)
{
	struct checks c = {calloc(json_object_size(root) + 1, sizeof(*c.spans)), 0};
	struct ck_json_rename r = {v, "safetensors header", METADATA, check_entry, &c};
	size_t from = 0, end = n;
	int rc;

	if (!c.spans)
		return ck_err_nomem(e);
	rc = ck_json_rename_members(&r, hdr, n, strspn(hdr, " \t\n\r"), root, out, &from, changed, e);
	if (!rc)
		rc = check_spans(c.spans, c.n, data_len, e);
	free(c.spans);
	/* the closing brace, without the old padding */
	while (end > from && hdr[end - 1] == ' ')
		end--;
	ck_buf_append(out, hdr + from, end - from);
	if (!rc && out->failed)
		rc = ck_err_nomem(e);
	return rc;
}

/* Reads and parses the header: *text (n bytes, owned by the caller) and its
 * JSON object *root. */
static int load_header(const struct ck_src *src, char **text, uint64_t *n, json_t **root, struct ck_err *e)
{
	uint8_t len8[8];

	*text = NULL;
	*root = NULL;
	if (ck_src_read(src, len8, sizeof(len8), 0, e))
		return -1;
	*n = ck_le64(len8);
	if (*n > CK_SAFETENSORS_MAX_HEADER || *n > src->size - 8)
		return ck_err_set(e, EIO, "safetensors offset 0: header length %llu does not fit the file",
				  (unsigned long long)*n);
	if (!(*text = malloc(*n + 1)))
		return ck_err_nomem(e);
	if (ck_src_read(src, *text, *n, 8, e))
		return -1;
	(*text)[*n] = 0;
	return (*root = ck_json_parse_object(*text, *n, "safetensors header", e)) ? 0 : -1;
}

int ck_safetensors_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
			  struct ck_err *e)
{
	struct ck_layout_builder lb = {0};
	struct ck_buf hdr = {0};
	uint64_t n = 0;
	char *text = NULL;
	json_t *root = NULL;
	bool changed;
	int rc = -1;

	*out = NULL;
	if (load_header(src, &text, &n, &root, e))
		goto out;
	ck_buf_u64le(&hdr, 0); /* length, set below */
	if (rename_header(text, n, root, src->size - 8 - n, v, &hdr, &changed, e))
		goto out;
	rc = 0;
	if (!changed)
		goto out;
	ck_buf_fill(&hdr, ' ', (8 - (hdr.len - 8) % 8) % 8);
	if (hdr.failed) {
		rc = ck_err_nomem(e);
		goto out;
	}
	for (int i = 0; i < 8; i++)
		hdr.data[i] = (uint8_t)((hdr.len - 8) >> (8 * i));
	ck_layout_add_mem(&lb, hdr.data, hdr.len);
	ck_layout_add_src(&lb, 8 + n, src->size - 8 - n);
	*out = ck_layout_finish(&lb, e);
	rc = *out ? 0 : -1;
out:
	json_decref(root);
	free(text);
	ck_buf_free(&hdr);
	return rc;
}

int ck_safetensors_describe(const struct ck_src *src, ck_found_fn fn, void *ctx, struct ck_err *e)
{
	uint64_t n = 0;
	char *text = NULL;
	json_t *root = NULL, *val;
	struct ck_str *keys = NULL;
	size_t nkeys = 0;
	const char *key;
	int rc = load_header(src, &text, &n, &root, e);

	if (!rc && !(keys = calloc(json_object_size(root) + 1, sizeof(*keys))))
		rc = ck_err_nomem(e);
	if (!rc) {
		json_object_foreach(root, key, val)
			if (strcmp(key, METADATA) != 0)
				keys[nkeys++] = (struct ck_str){key, strlen(key)};
		rc = fn(ctx, &(struct ck_found_sd){.keys = keys, .nkeys = nkeys}, e);
	}
	free(keys);
	json_decref(root);
	free(text);
	return rc;
}
