/* Unit tests of the legacy (pre-1.6) format: only the object pickle is
 * replaced, everything after it follows unchanged. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "format.h"
#include "legacy.h"
#include "pickle.h"
#include "tap.h"

#ifndef TEST_DATA
#define TEST_DATA "tests/data"
#endif

static uint8_t *slurp(const char *path, size_t *n)
{
	struct stat st;
	int fd = open(path, O_RDONLY);
	uint8_t *p;

	if (fd < 0 || fstat(fd, &st) || !(p = malloc((size_t)st.st_size)) || read(fd, p, (size_t)st.st_size) != st.st_size)
		exit(99);
	close(fd);
	*n = (size_t)st.st_size;
	return p;
}

/* The view of bytes p[0, n) written to a temp file: layout result and bytes. */
static int view_bytes(const uint8_t *p, size_t n, const struct ck_view *v, uint8_t **view, size_t *vlen,
		      enum ck_format *fmt, struct ck_err *e)
{
	char path[] = "/tmp/ckptfs-legacy-XXXXXX";
	int fd = mkstemp(path), rc;
	struct ck_layout *l = NULL;

	if (fd < 0 || write(fd, p, n) != (ssize_t)n)
		exit(99);
	unlink(path);
	struct ck_src s = {fd, n, "t"};
	memset(e, 0, sizeof(*e));
	rc = ck_view_layout(&s, v, &l, fmt, NULL, e);
	*view = NULL;
	*vlen = 0;
	if (l) {
		*view = malloc(l->size);
		*vlen = (size_t)ck_layout_pread(l, fd, *view, l->size, 0);
		ck_layout_free(l);
	}
	close(fd);
	return rc;
}

/* Offset and length of the object pickle (the fourth). */
static size_t object_pickle(const uint8_t *p, size_t n, size_t *len)
{
	size_t off = 0;
	bool short_input;
	struct ck_err e;

	for (int i = 0; i < 3; i++)
		off += ck_pickle_span(p + off, n - off, &short_input, &e);
	*len = ck_pickle_span(p + off, n - off, &short_input, &e);
	return off;
}

int main(void)
{
	size_t n, vlen, plen, vplen;
	uint8_t *src = slurp(TEST_DATA "/ddp-small-legacy.pth", &n), *view;
	enum ck_format fmt;
	struct ck_err e;
	struct ck_buf want = {0};

	ok(ck_legacy_detect(src, n), "the legacy magic pickle is recognised");
	{
		/* pickle.dumps(MAGIC_NUMBER, protocol=3) and protocol=4 (framed) */
		static const uint8_t p3[] = "\x80\x03\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
		static const uint8_t p4[] = "\x80\x04\x95\x0d\0\0\0\0\0\0\0\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";
		static const uint8_t other[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x18.";
		ok(ck_legacy_detect(p3, sizeof(p3) - 1), "protocol 3 magic recognised");
		ok(ck_legacy_detect(p4, sizeof(p4) - 1), "protocol 4 magic, framed, recognised");
		/* pickle.dumps(MAGIC_NUMBER, protocol=1): no PROTO, a text LONG;
		 * torch loads such files (issue 9) */
		static const uint8_t p1[] = "L119547037146038801333356L\n.";
		ok(ck_legacy_detect(p1, sizeof(p1) - 1), "protocol 1 magic, a text LONG, recognised");
		ok(!ck_legacy_detect(p4, sizeof(p4) - 2), "a cut magic is not");
		ok(!ck_legacy_detect(other, sizeof(other) - 1), "another number is not");
	}
	ok(view_bytes(src, n, &ck_view_plain, &view, &vlen, &fmt, &e) == 0 && view && fmt == CK_FORMAT_LEGACY,
	   "plain view of a legacy DDP checkpoint is rewritten (%s)", e.msg);

	size_t off = object_pickle(src, n, &plen), voff = object_pickle(view, vlen, &vplen);
	ck_pickle_rewrite(src + off, plen, &ck_view_plain, &want, &e);
	ok(voff == off && memcmp(view, src, off) == 0, "the pickles before the object are unchanged");
	ok(vplen == want.len && memcmp(view + voff, want.data, want.len) == 0, "the object pickle is the rewrite");
	ok(vlen - voff - vplen == n - off - plen && memcmp(view + voff + vplen, src + off + plen, n - off - plen) == 0,
	   "storage keys and raw storages follow unchanged (%zu bytes)", n - off - plen);
	free(view);

	ok(view_bytes(src, n, &ck_view_ddp, &view, &vlen, &fmt, &e) == 0 && !view,
	   "ddp view of a legacy DDP checkpoint is the source");

	/* Truncations: inside the pickles an error naming the offset; inside the
	 * raw storages (never read) the view still builds. */
	size_t bad = 0, storages = off + plen;
	for (size_t k = 16; k < n; k++) {
		int rc = view_bytes(src, k, &ck_view_plain, &view, &vlen, &fmt, &e);
		if (k < storages ? rc != -1 || !strstr(e.msg, "offset") : rc != 0)
			bad++;
		free(view);
	}
	ok(bad == 0, "every truncation is an error in the pickles, a view past them (%zu of %zu wrong)", bad, n - 16);
	ck_buf_free(&want);
	free(src);
	return tap_done();
}
