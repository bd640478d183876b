#include "jsonkeys.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "renames.h"

json_t *ck_json_parse_object(const char *text, size_t n, const char *what, struct ck_err *e)
{
	json_error_t jerr;
	json_t *root = json_loadb(text, n, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, &jerr);

	if (!root || !json_is_object(root)) {
		ck_err_set(e, EIO, "%s offset %d: %s", what, root ? 0 : jerr.position,
			   root ? "not a JSON object" : jerr.text);
		json_decref(root);
		return NULL;
	}
	for (size_t i = (size_t)jerr.position; i < n; i++)
		if (text[i] != ' ' && text[i] != '\n' && text[i] != '\t' && text[i] != '\r') {
			ck_err_set(e, EIO, "%s offset %zu: bytes after the JSON object", what, i);
			json_decref(root);
			return NULL;
		}
	return root;
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

/* Where one member stands: its name [key, key_end), its value at val. */
struct member_pos {
	size_t key, key_end, val;
};

/* p just inside the object or past a member's ','; returns the position
 * past the next member's ',' (or the closing '}'). */
static size_t next_member(const char *s, size_t n, size_t p, struct member_pos *m)
{
	m->key = skip_space(s, p, n);
	m->key_end = skip_string(s, m->key, n);
	m->val = skip_space(s, skip_space(s, m->key_end, n) + 1, n); /* past ':' */
	return skip_space(s, skip_value(s, m->val, n), n) + 1;
}

size_t ck_json_member_value(const char *text, size_t n, size_t obj_at, json_t *obj, const char *name)
{
	size_t p = obj_at + 1;
	struct member_pos m;

	for (void *it = json_object_iter(obj); it; it = json_object_iter_next(obj, it)) {
		p = next_member(text, n, p, &m);
		if (strcmp(json_object_iter_key(it), name) == 0)
			return m.val;
	}
	return (size_t)-1;
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

/* ---- renaming ------------------------------------------------------------- */

/* The member's new name (or its own), owned by the renamer when it differs. */
struct name {
	const char *s;
	size_t len;
	const char *orig;
};

/* The k-th member's new name into all[k], checked against the names given
 * so far and added to them. */
static int rename_one(const struct ck_json_rename *r, struct ck_renames *names, struct name *all, size_t k,
		      const char *key, size_t at, bool rename, struct ck_err *e)
{
	size_t klen = strlen(key), nl = klen, taken_by;
	char *nk = NULL;
	int rc;

	if (rename && !(nk = ck_view_key(r->view, key, klen, &nl)))
		return ck_err_nomem(e);
	all[k] = (struct name){.s = nk ? nk : key, .len = nl, .orig = key};
	if (nk && r->reserved && strcmp(nk, r->reserved) == 0)
		return ck_err_set(e, EIO, "%s offset %zu: tensor '%s' would be named '%s', which the format reserves",
				  r->what, at, key, r->reserved);
	if ((rc = ck_renames_add(names, all[k].s, nl, k, &taken_by, e)) == 1)
		return ck_err_set(e, EIO, "%s offset %zu: tensors '%s' and '%s' would both be named '%.*s'", r->what,
				  at, all[taken_by].orig, key, (int)nl, all[k].s);
	return rc;
}

int ck_json_rename_members(const struct ck_json_rename *r, const char *text, size_t n, size_t obj_at,
			   json_t *obj, struct ck_buf *out, size_t *from, bool *changed, struct ck_err *e)
{
	size_t count = json_object_size(obj), k = 0, p = obj_at + 1;
	struct name *all = calloc(count ? count : 1, sizeof(*all));
	struct ck_renames names;
	int rc = 0;

	*changed = false;
	if (!all)
		return ck_err_nomem(e);
	if (ck_renames_init(&names, count, e)) {
		free(all);
		return -1;
	}
	for (void *it = json_object_iter(obj); it && !rc; it = json_object_iter_next(obj, it), k++) {
		const char *key = json_object_iter_key(it);
		struct member_pos m;
		bool rename = true;

		p = next_member(text, n, p, &m);
		if (r->check && (rc = r->check(r->ctx, key, json_object_iter_value(it), m.key, &rename, e)))
			break;
		if ((rc = rename_one(r, &names, all, k, key, m.key, rename, e)))
			break;
		if (all[k].s != key && (all[k].len != strlen(key) || memcmp(all[k].s, key, all[k].len) != 0)) {
			ck_buf_append(out, text + *from, m.key - *from);
			put_json_string(out, all[k].s, all[k].len);
			*from = m.key_end;
			*changed = true;
		}
	}
	ck_renames_free(&names);
	for (size_t i = 0; i < count; i++)
		if (all[i].s && all[i].s != all[i].orig)
			free((char *)all[i].s);
	free(all);
	if (!rc && out->failed)
		rc = ck_err_nomem(e);
	return rc;
}
