/* libFuzzer target: the pickle rewriter, through both built-in views. Every
 * rewritten output must itself parse and be a fixed point of the view. The
 * describe API reads the same input; ASan checks every byte it hands out. */
#include <stdlib.h>
#include "pickle.h"

static int touch(void *ctx, const struct ck_found_sd *sd, struct ck_err *e)
{
	volatile uint8_t sum = 0;

	for (size_t i = 0; i < sd->depth; i++)
		for (size_t k = 0; sd->path[i].key.s && k < sd->path[i].key.len; k++)
			sum += (uint8_t)sd->path[i].key.s[k];
	for (size_t i = 0; i < sd->nkeys; i++)
		for (size_t k = 0; k < sd->keys[i].len; k++)
			sum += (uint8_t)sd->keys[i].s[k];
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct ck_view *views[] = {&ck_view_plain, &ck_view_ddp};
	struct ck_err de = {0};
	int protocol;

	ck_pickle_describe(data, size, &protocol, touch, NULL, &de);
	for (size_t i = 0; i < 2; i++) {
		struct ck_buf out = {0}, again = {0};
		struct ck_err e = {0};

		if (ck_pickle_rewrite(data, size, views[i], &out, &e) == CK_PICKLE_REWRITTEN &&
		    ck_pickle_rewrite(out.data, out.len, views[i], &again, &e) != CK_PICKLE_UNCHANGED)
			abort(); /* a view of a view must need no change */
		ck_buf_free(&out);
		ck_buf_free(&again);
	}
	return 0;
}
