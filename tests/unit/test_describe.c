/* The describe API (describe.h): the state dicts a pickle holds, each once,
 * with its path from the top object, as ckptfs inspect reports them. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "pickle.h"
#include "pk.h"
#include "tap.h"

enum { REBUILD = 9 };

struct seen {
	char paths[8][128];
	char keys[8][128];
	int n;
};

static int record(void *ctx, const struct ck_found_sd *sd, struct ck_err *e)
{
	struct seen *s = ctx;
	size_t p = 0;

	if (s->n == 8)
		return ck_err_set(e, EINVAL, "too many");
	for (size_t i = 0; i < sd->depth; i++) {
		const struct ck_path_step *st = &sd->path[i];
		p += (size_t)(st->index >= 0 ? snprintf(s->paths[s->n] + p, 128 - p, "[%lld]", (long long)st->index)
				      : snprintf(s->paths[s->n] + p, 128 - p, "['%.*s']", (int)st->key.len, st->key.s));
	}
	p = 0;
	for (size_t k = 0; k < sd->nkeys; k++)
		p += (size_t)snprintf(s->keys[s->n] + p, 128 - p, "%s%.*s%s", k ? "," : "", (int)sd->keys[k].len,
				      sd->keys[k].s, sd->has_metadata ? "+md" : "");
	s->n++;
	return 0;
}

/* {'runs': [{'w': T}, ({'model.a': T, 'model.b': T}, 5)], 'x': 1,
 *  'shared': <the first state dict again>} */
static void build(struct ck_buf *b)
{
	pk_proto(b, 2);
	pk_op(b, '}');
	pk_op(b, '(');
	pk_str(b, "runs");
	pk_op(b, ']');
	pk_op(b, '(');
	pk_op(b, '}');
	pk_put(b, 2);
	pk_str(b, "w");
	pk_tensor(b, REBUILD, 1);
	pk_op(b, 's');
	pk_op(b, '(');
	pk_op(b, '}');
	pk_op(b, '(');
	pk_str(b, "model.a");
	pk_tensor(b, REBUILD, 0);
	pk_str(b, "model.b");
	pk_tensor(b, REBUILD, 0);
	pk_op(b, 'u');
	pk_int(b, 5);
	pk_op(b, 't');
	pk_op(b, 'e');
	pk_str(b, "x");
	pk_int(b, 1);
	pk_str(b, "shared");
	pk_get(b, 2);
	pk_op(b, 'u');
	pk_op(b, '.');
}

int main(void)
{
	struct ck_buf b = {0};
	struct seen s = {0};
	struct ck_err e = {0};
	int protocol = -1, rc;

	build(&b);
	rc = ck_pickle_describe(b.data, b.len, &protocol, record, &s, &e);
	ok(rc == 0 && protocol == 2, "describes a nested checkpoint (rc %d, protocol %d, %s)", rc, protocol, e.msg);
	ok(s.n == 2, "two state dicts, the shared one reported once (%d)", s.n);
	ok(strcmp(s.paths[0], "['shared']") == 0 && strcmp(s.keys[0], "w") == 0,
	   "a state dict reached twice is named by its shortest path (%s: %s)", s.paths[0], s.keys[0]);
	ok(strcmp(s.paths[1], "['runs'][1][0]") == 0 && strcmp(s.keys[1], "model.a,model.b") == 0,
	   "list and tuple positions in the path, keys in order (%s: %s)", s.paths[1], s.keys[1]);

	memset(&s, 0, sizeof(s));
	rc = ck_pickle_describe(b.data, b.len - 3, &protocol, record, &s, &e);
	ok(rc == -1 && strstr(e.msg, "offset") && s.n == 0, "a cut pickle is an error naming an offset (%s)", e.msg);
	ck_buf_free(&b);
	return tap_done();
}
