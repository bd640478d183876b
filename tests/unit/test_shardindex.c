/* Unit tests of the sharded-checkpoint index: detection by content, the
 * weight_map renamed in place, every other byte kept. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "format.h"
#include "tap.h"

/* The view of a file holding `text`: 0 with *got (NULL: the source as is)
 * and *fmt, or -1 with e. */
static int view_of(const char *text, const struct ck_view *v, char **got, enum ck_format *fmt, struct ck_err *e)
{
	char path[] = "/tmp/ckptfs-idx-XXXXXX";
	int fd = mkstemp(path), rc;
	size_t n = strlen(text);
	struct ck_layout *l = NULL;

	if (fd < 0 || write(fd, text, n) != (ssize_t)n)
		exit(99);
	unlink(path);
	struct ck_src s = {fd, n, "model.safetensors.index.json"};
	memset(e, 0, sizeof(*e));
	rc = ck_view_layout(&s, v, &l, fmt, NULL, e);
	*got = NULL;
	if (l) {
		*got = calloc(1, l->size + 1);
		if (ck_layout_pread(l, fd, *got, l->size, 0) != (ssize_t)l->size)
			exit(99);
		ck_layout_free(l);
	}
	close(fd);
	return rc;
}

static void expect(const char *name, const char *in, const struct ck_view *v, const char *want)
{
	char *got;
	enum ck_format fmt;
	struct ck_err e;
	int rc = view_of(in, v, &got, &fmt, &e);

	ok(rc == 0 && fmt == CK_FORMAT_SHARDINDEX && (want ? got && strcmp(got, want) == 0 : !got),
	   "%s (rc %d, format %s, got '%s'; %s)", name, rc, ck_format_name(fmt), got ? got : "(the source)", e.msg);
	free(got);
}

static void expect_other(const char *name, const char *in)
{
	char *got;
	enum ck_format fmt;
	struct ck_err e;
	int rc = view_of(in, &ck_view_plain, &got, &fmt, &e);

	ok(rc == 0 && fmt == CK_FORMAT_OTHER && !got, "%s passes through (rc %d, format %s; %s)", name, rc,
	   ck_format_name(fmt), e.msg);
	free(got);
}

/* As transformers writes it: json.dumps(index, indent=2, sort_keys=True) + "\n". */
#define HEAD "{\n  \"metadata\": {\n    \"module.note\": \"module.0.weight\",\n    \"total_size\": 96\n  },\n" \
	     "  \"weight_map\": {\n"
#define TAIL "\n  }\n}\n"

int main(void)
{
	char *got;
	enum ck_format fmt;
	struct ck_err e;

	expect("plain: weight_map names lose module., metadata and layout kept",
	       HEAD "    \"module.0.bias\": \"model-00001-of-00002.safetensors\",\n"
		    "    \"module.0.weight\": \"model-00002-of-00002.safetensors\"" TAIL,
	       &ck_view_plain,
	       HEAD "    \"0.bias\": \"model-00001-of-00002.safetensors\",\n"
		    "    \"0.weight\": \"model-00002-of-00002.safetensors\"" TAIL);
	expect("ddp: module. added; shard names (values) never change",
	       HEAD "    \"0.bias\": \"module.0.bias\",\n    \"0.weight\": \"x.bin\"" TAIL, &ck_view_ddp,
	       HEAD "    \"module.0.bias\": \"module.0.bias\",\n    \"module.0.weight\": \"x.bin\"" TAIL);
	expect("FSDP and compile wrapper names go as in the shards",
	       "{\"weight_map\":{\"module._fsdp_wrapped_module.1._checkpoint_wrapped_module.0.weight\":\"a\","
	       "\"enc._orig_mod.w\":\"b\"}}",
	       &ck_view_plain, "{\"weight_map\":{\"1.0.weight\":\"a\",\"enc.w\":\"b\"}}");
	expect("members after weight_map, whitespace before '{', escapes elsewhere kept",
	       " \n{\"weight_map\" : { \"module.\\u00e9\" :\"s\\/1\" } ,\"x\":[1,{\"module.a\":2}],\"y\":\"\\u00e9\"}\n\n",
	       &ck_view_plain,
	       " \n{\"weight_map\" : { \"\xc3\xa9\" :\"s\\/1\" } ,\"x\":[1,{\"module.a\":2}],\"y\":\"\\u00e9\"}\n\n");
	expect("an index already in the view's form is the source", HEAD "    \"0.bias\": \"a\"" TAIL, &ck_view_plain,
	       NULL);
	expect("an empty weight_map is an index with nothing to rename", "{\"weight_map\": {}}", &ck_view_ddp, NULL);

	ok(view_of("{\"weight_map\":{\"module.a\":\"s1\",\"a\":\"s2\"}}", &ck_view_plain, &got, &fmt, &e) == -1 &&
		   e.code != 0 && strstr(e.msg, "'module.a' and 'a' would both be named 'a'") &&
		   fmt == CK_FORMAT_SHARDINDEX,
	   "names that collide are refused, both named (%s)", e.msg);
	free(got);

	expect_other("a JSON config", "{\"hidden_size\": 8, \"architectures\": [\"Bert\"]}\n");
	expect_other("weight_map not at the top", "{\"x\": {\"weight_map\": {\"module.a\": \"s\"}}}");
	expect_other("a weight_map that is not a map of strings", "{\"weight_map\": {\"module.a\": 1}}");
	expect_other("a weight_map that is a list", "{\"weight_map\": [\"module.a\"]}");
	expect_other("broken JSON", "{\"weight_map\": {\"module.a\": \"s\",}}");
	expect_other("JSON with bytes after it", "{\"weight_map\": {\"module.a\": \"s\"}} x");
	expect_other("duplicate names", "{\"weight_map\": {\"module.a\": \"s\"}, \"weight_map\": {}}");
	expect_other("a JSON list", "[{\"weight_map\": {\"module.a\": \"s\"}}]");
	expect_other("text", "weight_map: module.a\n");
	return tap_done();
}
