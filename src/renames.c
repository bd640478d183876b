#include "renames.h"

#include <errno.h>
#include <stdlib.h>
#include "hash.h"

struct ck_renamed {
	const char *s;
	size_t len;
	size_t orig;
	UT_hash_handle hh;
};

int ck_renames_init(struct ck_renames *r, size_t cap, struct ck_err *e)
{
	*r = (struct ck_renames){.cap = cap};
	/* one block, never moved: the table points into it */
	if (!(r->all = calloc(cap ? cap : 1, sizeof(*r->all))))
		return ck_err_nomem(e);
	return 0;
}

int ck_renames_add(struct ck_renames *r, const char *name, size_t len, size_t orig, size_t *taken_by,
		   struct ck_err *e)
{
	struct ck_renamed *x;

	HASH_FIND(hh, r->set, name, len, x);
	if (x) {
		*taken_by = x->orig;
		return 1;
	}
	if (r->n == r->cap)
		return ck_err_set(e, EOVERFLOW, "more than the %zu names announced", r->cap);
	x = &r->all[r->n];
	*x = (struct ck_renamed){.s = name, .len = len, .orig = orig};
	HASH_ADD_KEYPTR(hh, r->set, x->s, x->len, x);
	if (CK_HASH_ADD_FAILED(x))
		return ck_err_nomem(e);
	r->n++;
	return 0;
}

void ck_renames_free(struct ck_renames *r)
{
	HASH_CLEAR(hh, r->set);
	free(r->all);
	*r = (struct ck_renames){0};
}
