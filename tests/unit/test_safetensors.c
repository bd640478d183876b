/* Unit tests of the safetensors header rewrite. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "format.h"
#include "tap.h"

/* A file: u64 length, the header as given, then `data` bytes of tensors. */
static int view_of(const char *header, size_t data, const struct ck_view *v, char **hdr_out, size_t *data_out,
		   struct ck_err *e)
{
	char path[] = "/tmp/ckptfs-st-XXXXXX";
	int fd = mkstemp(path), rc;
	uint64_t n = strlen(header);
	uint8_t len8[8];
	struct ck_layout *l = NULL;
	enum ck_format fmt;

	for (int i = 0; i < 8; i++)
		len8[i] = (uint8_t)(n >> (8 * i));
	if (fd < 0 || write(fd, len8, 8) != 8 || write(fd, header, n) != (ssize_t)n)
		exit(99);
	for (size_t i = 0; i < data; i++)
		if (write(fd, "\xab", 1) != 1)
			exit(99);
	unlink(path);
	struct ck_src s = {fd, 8 + n + data, "t.safetensors"};
	memset(e, 0, sizeof(*e));
	rc = ck_view_layout(&s, v, &l, &fmt, NULL, e);
	*hdr_out = NULL;
	if (rc == 0 && fmt != CK_FORMAT_SAFETENSORS)
		rc = -2;
	if (l) {
		uint8_t *all = malloc(l->size);
		ck_layout_pread(l, fd, all, l->size, 0);
		uint64_t hn = ck_le64(all);
		*hdr_out = strndup((char *)all + 8, hn);
		*data_out = (size_t)(l->size - 8 - hn);
		for (size_t i = 8 + hn; i < l->size; i++)
			if (all[i] != 0xab)
				*data_out = 0;
		free(all);
		ck_layout_free(l);
	}
	close(fd);
	return rc;
}

/* Headers here describe 16 bytes of data: F32 [2] tensors at [0,8] and [8,16]. */
#define DATA 16

static void expect(const char *name, const char *in, const struct ck_view *v, const char *want)
{
	char *got;
	size_t data = 0;
	struct ck_err e;
	int rc = view_of(in, DATA, v, &got, &data, &e);
	size_t wl = strlen(want), pad = got ? strlen(got) - wl : 0;

	ok(rc == 0 && got && strncmp(got, want, wl) == 0 && strlen(got) % 8 == 0 && strspn(got + wl, " ") == pad &&
		   data == DATA,
	   "%s (got '%s'; %s)", name, got ? got : "(unchanged)", e.msg);
	free(got);
}

static void expect_error(const char *name, const char *in, const struct ck_view *v, const char *needle)
{
	char *got;
	size_t data;
	struct ck_err e;
	int rc = view_of(in, DATA, v, &got, &data, &e);

	ok(rc == -1 && strstr(e.msg, needle), "%s (%s)", name, e.msg);
	free(got);
}

#define T(n) "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[" n "]}"

int main(void)
{
	char *got;
	size_t data;
	struct ck_err e;

	expect("tensors gain module.; __metadata__ stays byte for byte",
	       "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\\u00e9 \\/x\"},\"a.w\":" T("0,8") ",\"b\":" T("8,16") "}",
	       &ck_view_ddp,
	       "{\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\\u00e9 \\/x\"},\"module.a.w\":" T("0,8")
	       ",\"module.b\":" T("8,16") "}");
	expect("plain strips wrappers; whitespace and order kept",
	       "{ \"module.b\" : " T("8,16") " ,\n \"_orig_mod.a\":" T("0,8") "}   ", &ck_view_plain,
	       "{ \"b\" : " T("8,16") " ,\n \"a\":" T("0,8") "}");
	expect("a header that starts with whitespace, as the reader's JSON parser allows",
	       " \n\t {\"module.b\":" T("8,16") ",\"a\":" T("0,8") "}", &ck_view_plain,
	       " \n\t {\"b\":" T("8,16") ",\"a\":" T("0,8") "}");
	expect("escaped names are decoded before renaming",
	       "{\"module.\\u00e9\":" T("0,8") ",\"b\":" T("8,16") "}", &ck_view_plain,
	       "{\"\xc3\xa9\":" T("0,8") ",\"b\":" T("8,16") "}");
	ok(view_of("{\"a\":" T("0,8") ",\"b\":" T("8,16") "}      ", DATA, &ck_view_plain, &got, &data, &e) == 0 &&
		   !got,
	   "nothing to rename: the source (%s)", e.msg);
	expect_error("a rename that merges two tensors is refused",
		     "{\"module.a\":" T("0,8") ",\"a\":" T("8,16") "}", &ck_view_plain, "would both be named 'a'");
	expect_error("no tensor may be renamed to the reserved __metadata__",
		     "{\"module.__metadata__\":" T("0,8") ",\"module.a\":" T("8,16") "}", &ck_view_plain, "reserves");
	expect_error("duplicate names are refused", "{\"a\":" T("0,8") ",\"a\":" T("8,16") "}", &ck_view_ddp,
		     "duplicate");
	expect_error("tensors that stop short of the file's end are refused (truncation the other way round)",
		     "{\"a\":" T("0,8") "}", &ck_view_ddp, "tensors end there");
	expect_error("a gap between tensors is refused", "{\"a\":" T("0,8") ",\"b\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[12,20]}}", &ck_view_ddp,
		     "expected 8");
	expect_error("a size that does not match the shape is refused",
		     "{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":" T("8,16") "}",
		     &ck_view_ddp, "holds 8 bytes");
	expect_error("a __metadata__ that is not a map of strings is refused",
		     "{\"__metadata__\":{\"n\":1},\"a\":" T("0,8") ",\"b\":" T("8,16") "}", &ck_view_ddp,
		     "map of strings");
	expect_error("broken JSON names its offset", "{\"a\":" T("0,8") ",}", &ck_view_ddp, "header offset");
	expect_error("bytes after the object are refused", "{\"a\":" T("0,8") "}xx", &ck_view_ddp, "after the JSON");
	return tap_done();
}
