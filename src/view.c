#include "view.h"

#include <stdlib.h>
#include <string.h>

/* The wrappers: DataParallel and DistributedDataParallel hold the model as
 * `module`, torch.compile's OptimizedModule as `_orig_mod`. */
const struct ck_view ck_view_plain = {.name = "plain", .strip = {"module.", "_orig_mod."}, .nstrip = 2};
const struct ck_view ck_view_ddp = {
	.name = "ddp", .strip = {"module.", "_orig_mod."}, .nstrip = 2, .add = "module."};

/* Strips leading wrapper components. In a metadata key a component may also
 * be the whole remaining name ("module" is the wrapped root). */
static size_t strip(const struct ck_view *v, const char *key, size_t len, int meta)
{
	size_t at = 0;
	int again = 1;

	while (again) {
		again = 0;
		for (size_t i = 0; i < v->nstrip; i++) {
			size_t pl = strlen(v->strip[i]);
			if (len - at >= pl && memcmp(key + at, v->strip[i], pl) == 0) {
				at += pl;
				again = 1;
			} else if (meta && len - at == pl - 1 && memcmp(key + at, v->strip[i], pl - 1) == 0) {
				return len;
			}
		}
	}
	return at;
}

static char *join(const struct ck_view *v, const char *rest, size_t rl, int meta, size_t *outlen)
{
	size_t al = v->add ? strlen(v->add) : 0;
	char *s;

	/* In metadata the root is "", so adding "module." to it gives "module". */
	if (meta && al && rl == 0)
		al--;
	s = malloc(al + rl + 1);
	if (!s)
		return NULL;
	memcpy(s, v->add ? v->add : "", al);
	memcpy(s + al, rest, rl);
	s[al + rl] = 0;
	*outlen = al + rl;
	return s;
}

char *ck_view_key(const struct ck_view *v, const char *key, size_t len, size_t *outlen)
{
	size_t at = strip(v, key, len, 0);
	return join(v, key + at, len - at, 0, outlen);
}

char *ck_view_meta_key(const struct ck_view *v, const char *key, size_t len, size_t *outlen)
{
	size_t at = strip(v, key, len, 1);
	return join(v, key + at, len - at, 1, outlen);
}
