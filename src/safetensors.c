/* The header is validated by jansson (strict JSON, duplicate names
 * refused); a scanner over the validated text then finds each top-level
 * name so that only renamed names change and every other byte, the
 * __metadata__ above all, stays exactly as written. */
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include "hash.h"

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

/* ---- scanning text that jansson has already accepted -------------------- */

static size_t skip_space(const char *s, size_t p, size_t n)
{
	while (p < n && (s[p] == ' ' || s[p] == '\t' || s[p] == '\n' || s[p] == '\r'))
		p++;
	return p;
}

/* p at an opening quote; returns the position after the closing one. */
static size_t skip_string(const char *s, size_t p, size_t n)
{
	for (p++; p < n && s[p] != '"'; p++)
		if (s[p] == '\\')
			p++;
	return p + 1;
}

/* p at a value; returns the position after it. */
static size_t skip_value(const char *s, size_t p, size_t n)
{
	int depth = 0;

	if (s[p] == '"')
		return skip_string(s, p, n);
	if (s[p] != '{' && s[p] != '[') { /* number, true, false, null */
		while (p < n && !strchr(",}] \t\n\r", s[p]))
			p++;
		return p;
	}
	while (p < n) {
		if (s[p] == '"') {
			p = skip_string(s, p, n);
			continue;
		}
		if (s[p] == '{' || s[p] == '[')
			depth++;
		else if (s[p] == '}' || s[p] == ']')
			depth--;
		p++;
		if (depth == 0)
			break;
	}
	return p;
}

static void put_json_string(struct ck_buf *b, const char *s, size_t n)
{
	ck_buf_u8(b, '"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			ck_buf_u8(b, '\\');
			ck_buf_u8(b, c);
		} else if (c < 0x20) {
			char esc[8];
			snprintf(esc, sizeof(esc), "\\u%04x", c);
			ck_buf_append(b, esc, 6);
		} else {
			ck_buf_u8(b, c);
		}
	}
	ck_buf_u8(b, '"');
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

struct name {
	const char *s;
	size_t len;
	const char *orig;
	UT_hash_handle hh;
};

/* Checks every entry and renames the tensors; *changed tells if any name
 * changed. data_len: the bytes after the header. */
static int rename_header(const char *hdr, size_t n, json_t *root, uint64_t data_len, const struct ck_view *v,
			 struct ck_buf *out, bool *changed, struct ck_err *e)
{
	struct name *names = NULL, *all, *x, *tmp;
	size_t count = json_object_size(root), k = 0, p = skip_space(hdr, 0, n) + 1, from = 0, nspans = 0;
	void *it = json_object_iter(root);
	struct span *spans;
	int rc = 0;

	*changed = false;
	all = calloc(count ? count : 1, sizeof(*all));
	spans = calloc(count ? count : 1, sizeof(*spans));
	if (!all || !spans) {
		free(all);
		free(spans);
		return ck_err_nomem(e);
	}
	for (; it && !rc; it = json_object_iter_next(root, it), k++) {
		const char *key = json_object_iter_key(it);
		size_t klen = strlen(key), nl = klen;
		char *nk = NULL;

		p = skip_space(hdr, p, n);
		size_t kstart = p, kend = skip_string(hdr, p, n);
		p = skip_space(hdr, kend, n) + 1;                 /* past ':' */
		p = skip_space(hdr, skip_value(hdr, skip_space(hdr, p, n), n), n) + 1; /* past ',' or '}' */
		if (strcmp(key, METADATA) == 0) {
			json_t *md = json_object_iter_value(it), *val;
			const char *mk;
			bool strings = json_is_object(md);
			json_object_foreach(md, mk, val) strings &= json_is_string(val);
			if (!strings) {
				rc = ck_err_set(e, EIO, "safetensors header offset %zu: " METADATA
						" is not a map of strings", kstart);
				break;
			}
		} else if ((rc = check_tensor(key, json_object_iter_value(it), kstart, &spans[nspans++], e))) {
			break;
		} else if (!(nk = ck_view_key(v, key, klen, &nl))) {
			rc = ck_err_nomem(e);
			break;
		}
		all[k] = (struct name){.s = nk ? nk : key, .len = nl, .orig = key};
		if (nk && strcmp(nk, METADATA) == 0) {
			rc = ck_err_set(e, EIO, "safetensors header offset %zu: tensor '%s' would be named '" METADATA
					"', which safetensors reserves", kstart, key);
			break;
		}
		HASH_FIND(hh, names, all[k].s, nl, x);
		if (x) {
			rc = ck_err_set(e, EIO, "safetensors header offset %zu: tensors '%s' and '%s' would both be named '%.*s'",
					kstart, x->orig, key, (int)nl, all[k].s);
			break;
		}
		HASH_ADD_KEYPTR(hh, names, all[k].s, nl, &all[k]);
		if (CK_HASH_ADD_FAILED(&all[k])) {
			rc = ck_err_nomem(e);
			break;
		}
		if (nk && (nl != klen || memcmp(nk, key, nl) != 0)) {
			ck_buf_append(out, hdr + from, kstart - from);
			put_json_string(out, nk, nl);
			from = kend;
			*changed = true;
		}
	}
	if (!rc)
		rc = check_spans(spans, nspans, data_len, e);
	free(spans);
	/* the closing brace, without the old padding */
	size_t end = n;
	while (end > from && hdr[end - 1] == ' ')
		end--;
	ck_buf_append(out, hdr + from, end - from);
	HASH_ITER(hh, names, x, tmp) HASH_DEL(names, x);
	for (size_t i = 0; i < count; i++)
		if (all[i].s != all[i].orig)
			free((char *)all[i].s);
	free(all);
	if (!rc && out->failed)
		rc = ck_err_nomem(e);
	return rc;
}

int ck_safetensors_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out,
			  struct ck_err *e)
{
	struct ck_layout_builder lb = {0};
	struct ck_buf hdr = {0};
	uint8_t len8[8];
	uint64_t n;
	char *text = NULL;
	json_t *root = NULL;
	json_error_t jerr;
	bool changed;
	int rc = -1;

	*out = NULL;
	if (ck_src_read(src, len8, sizeof(len8), 0, e))
		return -1;
	n = ck_le64(len8);
	if (n > CK_SAFETENSORS_MAX_HEADER || n > src->size - 8)
		return ck_err_set(e, EIO, "safetensors offset 0: header length %llu does not fit the file",
				  (unsigned long long)n);
	if (!(text = malloc(n + 1)))
		return ck_err_nomem(e);
	if (ck_src_read(src, text, n, 8, e))
		goto out;
	text[n] = 0;
	root = json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, &jerr);
	if (!root || !json_is_object(root)) {
		rc = ck_err_set(e, EIO, "safetensors header offset %d: %s", root ? 0 : jerr.position,
				root ? "not a JSON object" : jerr.text);
		goto out;
	}
	/* past the object only the padding may follow */
	for (size_t i = (size_t)jerr.position; i < n; i++)
		if (text[i] != ' ' && text[i] != '\n' && text[i] != '\t' && text[i] != '\r') {
			rc = ck_err_set(e, EIO, "safetensors header offset %zu: bytes after the JSON object", i);
			goto out;
		}
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
