#include "legacy.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "pickle.h"

/* torch's MAGIC_NUMBER 0x1950a86a20f9469cfc6c as a pickle LONG1 */
static const uint8_t magic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};

/* pickles before the object: magic, protocol version, sys_info */
#define PICKLES_BEFORE_OBJECT 3
#define FIRST_WINDOW ((size_t)64 << 10)

/* ... and as protocol 1 writes it (no PROTO): a text LONG. Protocol 0
 * files torch itself cannot load. */
static const char magic_text[] = "L119547037146038801333356L\n.";

/* The first pickle is the magic number alone: PROTO (torch.save's
 * pickle_protocol, 2 to 5), a FRAME from protocol 4 on, LONG1, STOP. */
bool ck_legacy_detect(const uint8_t *head, size_t n)
{
	size_t p = 2;

	if (n >= sizeof(magic_text) - 1 && memcmp(head, magic_text, sizeof(magic_text) - 1) == 0)
		return true;
	if (n < 2 || head[0] != 0x80 || head[1] < 2 || head[1] > 5)
		return false;
	if (n > p && head[p] == 0x95)
		p += 9;
	return n >= p + sizeof(magic) + 1 && memcmp(head + p, magic, sizeof(magic)) == 0 &&
	       head[p + sizeof(magic)] == '.';
}

/* Reads the pickle starting at off into *buf, growing the window until its
 * STOP is in it. */
static int read_pickle(const struct ck_src *s, uint64_t off, uint8_t **buf, size_t *len, struct ck_err *e)
{
	size_t w = FIRST_WINDOW;

	*buf = NULL;
	for (;;) {
		bool short_input;
		uint8_t *p;
		size_t got = s->size - off < w ? (size_t)(s->size - off) : w;

		if (ck_src_claim(s, got, e)) /* each window anew: realloc may copy */
			return ck_err_context(e, "pickle at file offset %llu: ", (unsigned long long)off);
		if (!(p = realloc(*buf, got ? got : 1)))
			return ck_err_nomem(e);
		*buf = p;
		if (ck_src_read(s, p, got, off, e))
			return -1;
		if ((*len = ck_pickle_span(p, got, &short_input, e)))
			return 0;
		if (!short_input || got < w || w >= CK_PICKLE_MAX_BYTES)
			return ck_err_context(e, "pickle at file offset %llu: ", (unsigned long long)off);
		w *= 4;
	}
}

/* Skips the pickles before the object's; reads the object pickle at *off. */
static int object_pickle(const struct ck_src *src, uint64_t *off, uint8_t **buf, size_t *len, struct ck_err *e)
{
	*off = 0;
	for (int i = 0; i < PICKLES_BEFORE_OBJECT; i++) {
		if (read_pickle(src, *off, buf, len, e))
			return -1;
		free(*buf);
		*buf = NULL;
		*off += *len;
	}
	return read_pickle(src, *off, buf, len, e);
}

int ck_legacy_layout(const struct ck_src *src, const struct ck_view *v, struct ck_layout **out, struct ck_err *e)
{
	struct ck_layout_builder lb = {0};
	uint64_t off = 0;
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = -1;

	*out = NULL;
	if (object_pickle(src, &off, &buf, &len, e))
		goto out;
	/* written where the view's memory holds it: no copy */
	switch (ck_pickle_rewrite_src(src, buf, len, v, &lb.mem, e)) {
	case CK_PICKLE_ERROR:
		ck_err_context(e, "object pickle at file offset %llu: ", (unsigned long long)off);
		goto out;
	case CK_PICKLE_UNCHANGED:
		rc = 0;
		goto out;
	case CK_PICKLE_REWRITTEN:
		break;
	}
	ck_layout_add_src(&lb, 0, off);
	ck_layout_add_mem_at(&lb, 0, lb.mem.len);
	ck_layout_add_src(&lb, off + len, src->size - off - len);
	*out = ck_layout_finish(&lb, e);
	rc = *out ? 0 : -1;
out:
	free(buf);
	ck_layout_builder_free(&lb);
	return rc;
}

int ck_legacy_describe(const struct ck_src *src, int *protocol, ck_found_fn fn, void *ctx, struct ck_err *e)
{
	uint64_t off = 0;
	uint8_t *buf = NULL;
	size_t len = 0;
	int rc = object_pickle(src, &off, &buf, &len, e);

	if (!rc && (rc = ck_pickle_describe(buf, len, protocol, fn, ctx, e)))
		ck_err_context(e, "object pickle at file offset %llu: ", (unsigned long long)off);
	free(buf);
	return rc;
}
