/* Renaming the members of a JSON object in place: jansson validates the
 * text (strict JSON, duplicate names refused) and a scanner over the
 * validated text finds each member's name, so that only renamed names
 * change and every other byte stays exactly as written. Used by the
 * safetensors header and the sharded-checkpoint index. */
#ifndef CKPTFS_JSONKEYS_H
#define CKPTFS_JSONKEYS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"
#include "err.h"
#include "view.h"

/* Parses text[0, n) as one JSON object followed by nothing but JSON
 * whitespace. NULL with e set (EIO, "WHAT offset N: why") otherwise. */
/* What a parse may hold per byte of text: jansson takes 77 bytes a byte
 * for an array of empty objects (the densest text), 10-30 for real ones. */
#define CK_JSON_MEMORY_PER_BYTE ((uint64_t)96)
json_t *ck_json_parse_object(const char *text, size_t n, const char *what, struct ck_err *e);

/* The text position of the value of member `name` of `obj`, the object
 * jansson parsed from the text starting at obj_at; (size_t)-1 if absent. */
size_t ck_json_member_value(const char *text, size_t n, size_t obj_at, json_t *obj, const char *name);

/* Decides for one member (name, value, text position of its name) whether
 * its name follows the view (*rename), or refuses the file (-1 with e). */
typedef int (*ck_json_check)(void *ctx, const char *name, json_t *val, size_t at, bool *rename,
			     struct ck_err *e);

struct ck_json_rename {
	const struct ck_view *view;
	const char *what;      /* for messages: "safetensors header", "index" */
	const char *reserved;  /* a name no renamed member may get, or NULL */
	ck_json_check check;   /* NULL: every member is renamed */
	void *ctx;
};

/* Renames the members of `obj` (parsed from the text whose '{' is at
 * obj_at): appends text[*from, name) and the new name for every name that
 * changes, moving *from past the old one; the caller appends the rest.
 * Two names that would become one, or a renamed name equal to `reserved`,
 * fail with EIO naming both. *changed tells if any name changed. */
int ck_json_rename_members(const struct ck_json_rename *r, const char *text, size_t n, size_t obj_at,
			   json_t *obj, struct ck_buf *out, size_t *from, bool *changed, struct ck_err *e);

#endif
