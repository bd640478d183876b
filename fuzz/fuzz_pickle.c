/* libFuzzer target: the pickle rewriter, through both built-in views. Every
 * rewritten output must itself parse and be a fixed point of the view. */
#include <stdlib.h>
#include "pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct ck_view *views[] = {&ck_view_plain, &ck_view_ddp};

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
