#define _GNU_SOURCE /* memmem */
/* Unit tests of the pickle rewriter: inputs and expected outputs are built
 * opcode by opcode, so each test states exactly which bytes must change. */
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <errno.h>
#include "hash.h"
#include "pickle.h"
#include "pk.h"
#include "tap.h"

enum { ODICT = 0, REBUILD = 3 }; /* memo slots of the two globals */

/* The hash tables' allocator (src/hash.c's is not linked in): fails on demand. */
static int hash_oom;
void *ck_hash_malloc(size_t n)
{
	return hash_oom ? NULL : malloc(n);
}

static enum ck_pickle_result rewrite(const struct ck_buf *in, const struct ck_view *v, struct ck_buf *out,
				     struct ck_err *e)
{
	memset(out, 0, sizeof(*out));
	memset(e, 0, sizeof(*e));
	return ck_pickle_rewrite(in->data, in->len, v, out, e);
}

static void expect_rewrite(const char *name, const struct ck_buf *in, const struct ck_view *v,
			   const struct ck_buf *want)
{
	struct ck_buf out;
	struct ck_err e;
	enum ck_pickle_result r = rewrite(in, v, &out, &e);

	ok(r == CK_PICKLE_REWRITTEN && out.len == want->len && memcmp(out.data, want->data, want->len) == 0,
	   "%s (result %d, %zu bytes, want %zu; %s)", name, r, out.len, want->len, e.msg);
	ck_buf_free(&out);
}

static void expect_unchanged(const char *name, const struct ck_buf *in, const struct ck_view *v)
{
	struct ck_buf out;
	struct ck_err e;
	enum ck_pickle_result r = rewrite(in, v, &out, &e);

	ok(r == CK_PICKLE_UNCHANGED && out.len == 0, "%s (result %d; %s)", name, r, e.msg);
	ck_buf_free(&out);
}

static void expect_error(const char *name, const struct ck_buf *in, const struct ck_view *v, const char *needle)
{
	struct ck_buf out;
	struct ck_err e;
	enum ck_pickle_result r = rewrite(in, v, &out, &e);

	ok(r == CK_PICKLE_ERROR && e.code != 0 && strstr(e.msg, needle), "%s (result %d, error '%s')", name, r,
	   e.msg);
	ck_buf_free(&out);
}

/* A Module.state_dict(): OrderedDict of keys[] with tensors, then its
 * _metadata of meta[] (versions all 1) in one MARK batch each. Memo slots
 * follow the pickler's numbering. `pairs_batched` 0 writes single SETITEMs. */
struct sd_spec {
	const char *keys[8];
	const char *meta[8];
	int setitem_meta; /* one metadata entry written as SETITEM, no MARK */
};

static unsigned put_sd(struct ck_buf *b, const struct sd_spec *s, unsigned slot, int first)
{
	unsigned version_slot = 0;

	pk_odict(b, ODICT, first);
	pk_put(b, slot++);
	pk_op(b, '(');
	for (int i = 0; s->keys[i]; i++) {
		pk_str(b, s->keys[i]);
		pk_put(b, slot++);
		pk_tensor(b, REBUILD, first && i == 0);
		if (first && i == 0)
			slot++;
		pk_put(b, slot++);
	}
	pk_op(b, 'u');
	pk_op(b, '}');
	pk_put(b, slot++);
	pk_str(b, "_metadata");
	pk_put(b, slot++);
	pk_odict(b, ODICT, 0);
	pk_put(b, slot++);
	if (!s->setitem_meta)
		pk_op(b, '(');
	for (int i = 0; s->meta[i]; i++) {
		pk_str(b, s->meta[i]);
		pk_put(b, slot++);
		pk_op(b, '}');
		pk_put(b, slot++);
		if (!version_slot) {
			pk_str(b, "version");
			pk_put(b, version_slot = slot++);
		} else {
			pk_get(b, version_slot);
		}
		pk_int(b, 1);
		pk_op(b, 's');
		if (s->setitem_meta)
			pk_op(b, 's');
	}
	if (!s->setitem_meta)
		pk_op(b, 'u');
	pk_op(b, 's');
	pk_op(b, 'b');
	return slot;
}

static void build_sd(struct ck_buf *b, const struct sd_spec *s)
{
	memset(b, 0, sizeof(*b));
	pk_proto(b, 2);
	put_sd(b, s, 1, 1);
	pk_op(b, '.');
}

/* The wrapper's entry as the ddp view inserts it. */
static void put_wrapper_entry(struct ck_buf *b, int setitem)
{
	pk_str(b, "");
	pk_op(b, '}');
	pk_str(b, "version");
	pk_int(b, 1);
	pk_op(b, 's');
	if (setitem)
		pk_op(b, 's');
}

static void test_plain_and_ddp(void)
{
	struct sd_spec ddp = {{"module.0.weight", "module.0.bias"}, {"", "module", "module.0"}, 0};
	struct sd_spec plain = {{"0.weight", "0.bias"}, {"", "", "0"}, 0};
	struct sd_spec bare = {{"0.weight", "0.bias"}, {"", "0"}, 0};
	struct sd_spec wrapped = {{"module.0.weight", "module.0.bias"}, {"module", "module.0"}, 0};
	struct ck_buf in, want;

	build_sd(&in, &ddp);
	build_sd(&want, &plain);
	expect_rewrite("plain: module. stripped, metadata 'module' -> '' and 'module.0' -> '0'", &in,
		       &ck_view_plain, &want);
	expect_unchanged("ddp view of a DDP state dict is the source", &in, &ck_view_ddp);
	ck_buf_free(&in);
	ck_buf_free(&want);

	/* ddp of a bare model: every key gains module., metadata '' -> module,
	 * and the wrapper's ('', {'version': 1}) comes first, inside the batch */
	build_sd(&in, &bare);
	build_sd(&want, &wrapped);
	{
		struct ck_buf w = {0};
		const uint8_t mod[] = {'(', 'X', 6, 0, 0, 0, 'm', 'o', 'd', 'u', 'l', 'e', 'q'};
		uint8_t *at = memmem(want.data, want.len, mod, sizeof(mod));
		ok(at != NULL, "expected ddp pickle has the metadata batch");
		if (at) {
			size_t cut = (size_t)(at - want.data) + 1;
			ck_buf_append(&w, want.data, cut);
			put_wrapper_entry(&w, 0);
			ck_buf_append(&w, want.data + cut, want.len - cut);
			expect_rewrite("ddp: module. added, wrapper metadata entry inserted first", &in, &ck_view_ddp, &w);
		}
		ck_buf_free(&w);
	}
	expect_unchanged("plain view of a bare state dict is the source", &in, &ck_view_plain);
	ck_buf_free(&in);
	ck_buf_free(&want);
}

static void test_setitem_metadata(void)
{
	struct sd_spec bare = {{"weight"}, {""}, 1};
	struct sd_spec wrapped = {{"module.weight"}, {"module"}, 1};
	struct ck_buf in, want, w = {0};
	const uint8_t mod[] = {'X', 6, 0, 0, 0, 'm', 'o', 'd', 'u', 'l', 'e', 'q'};
	uint8_t *at;

	build_sd(&in, &bare);
	build_sd(&want, &wrapped);
	at = memmem(want.data, want.len, mod, sizeof(mod));
	ck_buf_append(&w, want.data, (size_t)(at - want.data));
	put_wrapper_entry(&w, 1);
	ck_buf_append(&w, at, want.len - (size_t)(at - want.data));
	expect_rewrite("ddp: a one-entry metadata in SETITEM form gets its own SETITEM", &in, &ck_view_ddp, &w);
	ck_buf_free(&in);
	ck_buf_free(&want);
	ck_buf_free(&w);
}

/* A metadata without the root entry '' (crafted; found by fuzz_pickle):
 * the ddp view inserts the wrapper's entry and prefixes the rest, and the
 * ddp view of that is the same pickle. */
static void test_headless_metadata(void)
{
	struct sd_spec headless = {{"0.weight"}, {"0", "1"}, 0};
	struct ck_buf in, out = {0}, again = {0};
	struct ck_err e;

	build_sd(&in, &headless);
	ok(rewrite(&in, &ck_view_ddp, &out, &e) == CK_PICKLE_REWRITTEN, "ddp of a headless metadata (%s)", e.msg);
	ok(memmem(out.data, out.len, "module.1", 8) != NULL, "its names gain module.");
	expect_unchanged("the ddp view of that view is itself", &out, &ck_view_ddp);
	ok(rewrite(&out, &ck_view_plain, &again, &e) == CK_PICKLE_REWRITTEN, "plain of it (%s)", e.msg);
	expect_unchanged("the plain view of that view is itself", &again, &ck_view_plain);
	ck_buf_free(&in);
	ck_buf_free(&out);
	ck_buf_free(&again);
}

/* A key string used again as data must keep its value: the memo get in
 * the data position becomes a literal of the original string. */
static void test_memo_sharing(void)
{
	struct sd_spec ddp = {{"module.w"}, {"", "module"}, 0};
	struct sd_spec plain = {{"w"}, {"", ""}, 0};
	struct ck_buf in = {0}, want = {0};
	unsigned slot;

	/* {'sd': <state dict>, 'note': [<'module.w' via memo>, 'x']} */
	pk_proto(&in, 2);
	pk_op(&in, '}');
	pk_put(&in, 0);
	pk_op(&in, '(');
	pk_str(&in, "sd");
	pk_put(&in, 100);
	slot = put_sd(&in, &ddp, 1, 1);
	pk_str(&in, "note");
	pk_put(&in, slot);
	pk_op(&in, ']');
	pk_put(&in, slot + 1);
	pk_op(&in, '(');
	pk_get(&in, 2); /* slot 2 holds 'module.w', the key */
	pk_str(&in, "x");
	pk_op(&in, 'e');
	pk_op(&in, 'u');
	pk_op(&in, '.');

	pk_proto(&want, 2);
	pk_op(&want, '}');
	pk_put(&want, 0);
	pk_op(&want, '(');
	pk_str(&want, "sd");
	pk_put(&want, 100);
	put_sd(&want, &plain, 1, 1);
	pk_str(&want, "note");
	pk_put(&want, slot);
	pk_op(&want, ']');
	pk_put(&want, slot + 1);
	pk_op(&want, '(');
	pk_str(&want, "module.w"); /* the data keeps its value */
	pk_str(&want, "x");
	pk_op(&want, 'e');
	pk_op(&want, 'u');
	pk_op(&want, '.');
	expect_rewrite("a key string shared with data keeps its value in the data", &in, &ck_view_plain, &want);
	ck_buf_free(&in);
	ck_buf_free(&want);
}

/* Two state dicts sharing a key string through the memo: both renamed,
 * the second keeps its memo get since the slot now holds the new name. */
static void test_shared_keys(void)
{
	struct ck_buf in = {0}, want = {0};
	const char *from[2] = {"module.a", "a"};

	for (int pass = 0; pass < 2; pass++) {
		struct ck_buf *b = pass ? &want : &in;
		pk_proto(b, 2);
		pk_op(b, ']');
		pk_put(b, 0);
		pk_op(b, '(');
		pk_op(b, '}');
		pk_put(b, 1);
		pk_str(b, from[pass]);
		pk_put(b, 2);
		pk_tensor(b, REBUILD, 1);
		pk_op(b, 's');
		pk_op(b, '}');
		pk_put(b, 4);
		pk_get(b, 2);
		pk_tensor(b, REBUILD, 0);
		pk_op(b, 's');
		pk_op(b, 'e');
		pk_op(b, '.');
	}
	expect_rewrite("two state dicts in a list share a key through the memo", &in, &ck_view_plain, &want);
	ck_buf_free(&in);
	ck_buf_free(&want);
}

static void test_not_state_dicts(void)
{
	struct ck_buf b = {0};

	/* {'module.a': 1}: values are not tensors */
	pk_proto(&b, 2);
	pk_op(&b, '}');
	pk_str(&b, "module.a");
	pk_int(&b, 1);
	pk_op(&b, 's');
	pk_op(&b, '.');
	expect_unchanged("a dict of non-tensors keeps its keys", &b, &ck_view_plain);
	ck_buf_free(&b);

	/* {'state': {0: {'module.x': tensor}}}: optimizer per-parameter state */
	pk_proto(&b, 2);
	pk_op(&b, '}');
	pk_str(&b, "state");
	pk_op(&b, '}');
	pk_int(&b, 0);
	pk_op(&b, '}');
	pk_str(&b, "exp_avg");
	pk_tensor(&b, REBUILD, 1);
	pk_op(&b, 's');
	pk_op(&b, 's');
	pk_op(&b, 's');
	pk_op(&b, '.');
	expect_unchanged("optimizer state under integer keys is no state dict", &b, &ck_view_ddp);
	ck_buf_free(&b);

	/* {'state': {'0': {'module.x': t}}, 'param_groups': []}: string parameter ids */
	pk_proto(&b, 2);
	pk_op(&b, '}');
	pk_op(&b, '(');
	pk_str(&b, "state");
	pk_op(&b, '}');
	pk_str(&b, "0");
	pk_op(&b, '}');
	pk_str(&b, "module.x");
	pk_tensor(&b, REBUILD, 1);
	pk_op(&b, 's');
	pk_op(&b, 's');
	pk_str(&b, "param_groups");
	pk_op(&b, ']');
	pk_op(&b, 'u');
	pk_op(&b, '.');
	expect_unchanged("an optimizer state dict is never walked into", &b, &ck_view_plain);
	ck_buf_free(&b);

	/* Lightning's best_k_models: checkpoint paths mapped to scores */
	pk_proto(&b, 2);
	pk_op(&b, '}');
	pk_str(&b, "/ckpts/epoch=3.ckpt");
	pk_tensor(&b, REBUILD, 1);
	pk_op(&b, 's');
	pk_op(&b, '.');
	expect_unchanged("a dict keyed by file paths is no state dict", &b, &ck_view_ddp);
	ck_buf_free(&b);

	/* a whole nn.Module: its _parameters live in object state, never walked */
	pk_proto(&b, 2);
	pk_global(&b, "torch.nn.modules.linear", "Linear");
	pk_op(&b, ')');
	ck_buf_u8(&b, 0x81); /* NEWOBJ */
	pk_op(&b, '}');
	pk_str(&b, "_parameters");
	pk_odict(&b, ODICT, 1);
	pk_str(&b, "module.weight");
	pk_tensor(&b, REBUILD, 1);
	pk_op(&b, 's');
	pk_op(&b, 's');
	pk_op(&b, 'b');
	pk_op(&b, '.');
	expect_unchanged("a pickled module's parameters are not renamed", &b, &ck_view_plain);
	ck_buf_free(&b);

	/* the classic payload: never executed, nothing to rename */
	pk_proto(&b, 2);
	pk_global(&b, "os", "system");
	pk_op(&b, '(');
	pk_str(&b, "touch /tmp/ckptfs-pwned");
	pk_op(&b, 't');
	pk_op(&b, 'R');
	pk_op(&b, '.');
	expect_unchanged("an os.system REDUCE is read, not run", &b, &ck_view_plain);
	ok(access("/tmp/ckptfs-pwned", F_OK) != 0, "the payload did not run");
	ck_buf_free(&b);
}

/* A quantized model's state dict: {key: dtype global, key: (tensor, tensor)}
 * in `dict_op` ('R': an OrderedDict, '}': a plain dict), with a BUILD
 * setting `_metadata` {'module': {}}; `key` is written as a string. */
static void build_quantized(struct ck_buf *b, char dict_op, const char *k1, const char *k2, const char *mk)
{
	memset(b, 0, sizeof(*b));
	pk_proto(b, 2);
	if (dict_op == 'R')
		pk_odict(b, ODICT, 1);
	else
		pk_op(b, '}');
	pk_op(b, '(');
	pk_str(b, k1);
	pk_global(b, "torch", "qint8");
	pk_str(b, k2);
	pk_tensor(b, REBUILD, 1);
	pk_tensor(b, REBUILD, 0);
	ck_buf_u8(b, 0x86); /* TUPLE2 */
	pk_op(b, 'u');
	pk_op(b, '}');
	pk_str(b, "_metadata");
	pk_odict(b, ODICT, dict_op != 'R');
	pk_str(b, mk);
	pk_op(b, '}');
	pk_op(b, 's');
	pk_op(b, 's');
	pk_op(b, 'b');
	pk_op(b, '.');
}

static void test_metadata_signature(void)
{
	struct ck_buf in, want;

	build_quantized(&in, 'R', "module.0._packed_params.dtype", "module.0._packed_params._packed_params", "module");
	build_quantized(&want, 'R', "0._packed_params.dtype", "0._packed_params._packed_params", "");
	expect_rewrite("an OrderedDict with _metadata is a state dict whatever its values", &in, &ck_view_plain,
		       &want);
	ck_buf_free(&in);
	ck_buf_free(&want);

	build_quantized(&in, '}', "module.0._packed_params.dtype", "module.0._packed_params._packed_params", "module");
	expect_unchanged("a plain dict of non-tensors is none, even with a BUILD", &in, &ck_view_plain);
	ck_buf_free(&in);
}

static void test_collision(void)
{
	struct ck_buf b = {0};

	pk_proto(&b, 2);
	pk_op(&b, '}');
	pk_op(&b, '(');
	pk_str(&b, "module.w");
	pk_tensor(&b, REBUILD, 1);
	pk_str(&b, "w");
	pk_tensor(&b, REBUILD, 0);
	pk_op(&b, 'u');
	pk_op(&b, '.');
	expect_error("a rename that would merge two keys is refused, naming both", &b, &ck_view_plain,
		     "keys 'module.w' and 'w' would both become 'w'");
	ck_buf_free(&b);
}

static void test_protocol4(void)
{
	struct ck_buf in = {0}, want = {0};
	const char *keys[2] = {"module.w", "w"};

	for (int pass = 0; pass < 2; pass++) {
		struct ck_buf *b = pass ? &want : &in;
		struct ck_buf body = {0};
		pk_short_str(&body, "collections");
		ck_buf_u8(&body, 0x94);
		pk_short_str(&body, "OrderedDict");
		ck_buf_u8(&body, 0x94);
		ck_buf_u8(&body, 0x93);
		ck_buf_u8(&body, 0x94);
		pk_op(&body, ')');
		pk_op(&body, 'R');
		ck_buf_u8(&body, 0x94);
		if (pass)
			pk_str(&body, keys[1]); /* renamed literals are written as BINUNICODE */
		else
			pk_short_str(&body, keys[0]);
		ck_buf_u8(&body, 0x94);
		pk_tensor(&body, 5, 1);
		pk_op(&body, 's');
		pk_op(&body, '.');
		pk_proto(b, 4);
		if (!pass) { /* the rewrite drops frames: their lengths would be wrong */
			ck_buf_u8(b, 0x95);
			ck_buf_u64le(b, body.len);
		}
		ck_buf_append(b, body.data, body.len);
		ck_buf_free(&body);
	}
	expect_rewrite("protocol 4: FRAME dropped, MEMOIZE kept in place", &in, &ck_view_plain, &want);
	ck_buf_free(&in);
	ck_buf_free(&want);
}

/* 1200 keys: SETITEMS batches of 1000 and memo indices past 255. */
static void test_many_keys(void)
{
	struct ck_buf in = {0}, want = {0};
	char key[64];

	for (int pass = 0; pass < 2; pass++) {
		struct ck_buf *b = pass ? &want : &in;
		unsigned slot = 1;
		pk_proto(b, 2);
		pk_op(b, '}');
		pk_put(b, 0);
		for (int i = 0; i < 1200; i++) {
			if (i % 1000 == 0)
				pk_op(b, '(');
			snprintf(key, sizeof(key), "%slayers.%d.weight", pass ? "" : "module.", i);
			pk_str(b, key);
			pk_put(b, slot++);
			pk_tensor(b, 3000, i == 0); /* a LONG_BINPUT slot */
			pk_put(b, slot++);
			if (i % 1000 == 999 || i == 1199)
				pk_op(b, 'u');
		}
		pk_op(b, '.');
	}
	expect_rewrite("1200 keys over two SETITEMS batches, memo past 255", &in, &ck_view_plain, &want);
	ck_buf_free(&in);
	ck_buf_free(&want);
}

static void test_hostile(void)
{
	struct sd_spec ddp = {{"module.0.weight", "module.0.bias"}, {"", "module", "module.0"}, 0};
	struct ck_buf good, b = {0};
	size_t failures = 0;

	build_sd(&good, &ddp);
	for (size_t n = 0; n < good.len; n++) {
		struct ck_buf out;
		struct ck_err e;
		struct ck_buf cut = {good.data, n, n, 0};
		if (rewrite(&cut, &ck_view_plain, &out, &e) != CK_PICKLE_ERROR || !strstr(e.msg, "offset"))
			failures++;
		ck_buf_free(&out);
	}
	ok(failures == 0, "every truncation of a state dict pickle is an error naming an offset (%zu of %zu not)",
	   failures, good.len);
	ck_buf_free(&good);

	const struct {
		const char *name, *bytes, *needle;
		size_t len;
	} cases[] = {
		{"unknown opcode", "\x80\x02\xff.", "unknown opcode 0xff", 4},
		{"stack underflow", "\x80\x02}s.", "stack underflow", 5},
		{"memo get of an unset slot", "\x80\x02h\x05.", "unset", 5},
		{"memo index far out of range", "\x80\x02j\xff\xff\xff\xff.", "out of range", 8},
		{"SETITEMS without MARK", "\x80\x02}u.", "no MARK", 5},
		{"empty stack at STOP", "\x80\x02(.", "empty stack", 4},
		{"huge BINUNICODE length", "\x80\x02X\xff\xff\xff\x7f", "runs past the end", 8},
		{"huge BINUNICODE8 length", "\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff", "runs past the end", 11},
		{"GLOBAL without newline", "\x80\x02" "cos", "runs past the end", 5},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct ck_buf c = {(uint8_t *)cases[i].bytes, cases[i].len, cases[i].len, 0};
		expect_error(cases[i].name, &c, &ck_view_plain, cases[i].needle);
	}

	/* a million MARKs: bounded work, a clean error */
	pk_proto(&b, 2);
	ck_buf_fill(&b, '(', 1000000);
	pk_op(&b, '.');
	expect_error("a million MARKs", &b, &ck_view_plain, "empty stack");
	ck_buf_free(&b);

	/* past the opcode limit: refused before memory grows with it */
	pk_proto(&b, 2);
	ck_buf_fill(&b, 'N', CK_PICKLE_MAX_OPS);
	pk_op(&b, '.');
	expect_error("more opcodes than the limit", &b, &ck_view_plain, "the limit");
	ck_buf_free(&b);

	/* 200000 nested lists: no recursion to overflow */
	pk_proto(&b, 2);
	for (int i = 0; i < 200000; i++)
		pk_op(&b, ']');
	for (int i = 0; i < 199999; i++)
		pk_op(&b, 'a');
	pk_op(&b, '.');
	expect_unchanged("200000 nested lists", &b, &ck_view_plain);
	ck_buf_free(&b);

	/* a list that contains itself */
	pk_proto(&b, 2);
	pk_op(&b, ']');
	pk_put(&b, 0);
	pk_get(&b, 0);
	pk_op(&b, 'a');
	pk_op(&b, '.');
	expect_unchanged("a list that contains itself", &b, &ck_view_plain);
	ck_buf_free(&b);
}

/* STACK_GLOBAL right where the object array must grow: the module and name
 * strings must not be read from the array's old place (issue 9). Every
 * capacity up to 2^17, so the one that moves to its own mapping is hit. */
static void test_stack_global_at_growth(void)
{
	size_t failures = 0, tried = 0;

	for (unsigned cap = 16; cap <= (1u << 17); cap *= 2, tried++) {
		struct ck_buf in = {0}, want = {0};
		for (int pass = 0; pass < 2; pass++) {
			struct ck_buf *b = pass ? &want : &in;
			pk_proto(b, 4);
			pk_op(b, '(');
			for (unsigned k = 0; k < cap - 3; k++) /* object 0, then cap - 3 strings, then 2 more */
				pk_short_str(b, "a");
			pk_op(b, '1');
			pk_short_str(b, "collections");
			pk_short_str(b, "OrderedDict");
			ck_buf_u8(b, 0x93);
			pk_op(b, ')');
			pk_op(b, 'R');
			if (pass)
				pk_str(b, "w");
			else
				pk_short_str(b, "module.w");
			pk_tensor(b, 5, 1);
			pk_op(b, 's');
			pk_op(b, '.');
		}
		struct ck_buf out;
		struct ck_err e;
		enum ck_pickle_result r = rewrite(&in, &ck_view_plain, &out, &e);
		if (r != CK_PICKLE_REWRITTEN || out.len != want.len || memcmp(out.data, want.data, want.len)) {
			printf("# capacity %u: result %d, %s\n", cap, r, e.msg);
			failures++;
		}
		ck_buf_free(&out);
		ck_buf_free(&in);
		ck_buf_free(&want);
	}
	ok(failures == 0, "STACK_GLOBAL at each object-array growth names its global (%zu of %zu wrong)",
	   failures, tried);
}

/* [{'w': T}, 'w'] where the key was DUPed into a memo slot the data later
 * reads: the data keeps 'w' although the key becomes 'module.w'. */
static void test_dup_memo(void)
{
	struct ck_buf in = {0}, want = {0};

	for (int pass = 0; pass < 2; pass++) {
		struct ck_buf *b = pass ? &want : &in;
		pk_proto(b, 2);
		pk_op(b, ']');
		pk_put(b, 0);
		pk_op(b, '(');
		pk_op(b, '}');
		pk_put(b, 1);
		pk_str(b, pass ? "module.w" : "w");
		if (pass)
			pk_str(b, "w"); /* the DUP would copy the renamed key */
		else
			pk_op(b, '2');
		pk_put(b, 2);
		pk_op(b, '0');
		pk_tensor(b, 3, 1);
		pk_op(b, 's');
		pk_get(b, 2);
		pk_op(b, 'e');
		pk_op(b, '.');
	}
	expect_rewrite("a DUPed key in a memo slot: data read from the slot keeps its value", &in, &ck_view_ddp,
		       &want);
	ck_buf_free(&in);
	ck_buf_free(&want);
}

/* A 1 MiB key string fetched 64 times as data: each fetch would become a
 * 1 MiB literal in the view. Past twice the source + 1 MiB + the keys, the
 * file fails instead; one fetch is fine. */
static void test_amplification(void)
{
	char *key = malloc((1 << 20) + 8);

	memcpy(key, "module.", 7);
	memset(key + 7, 'a', 1 << 20);
	key[(1 << 20) + 7] = 0;
	for (int copies = 1; copies <= 64; copies += 63) {
		struct ck_buf in = {0}, out;
		struct ck_err e;
		pk_proto(&in, 2);
		pk_op(&in, ']');
		pk_op(&in, '(');
		pk_op(&in, '}');
		pk_str(&in, key);
		pk_put(&in, 1);
		pk_tensor(&in, 3, 1);
		pk_op(&in, 's');
		for (int k = 0; k < copies; k++)
			pk_get(&in, 1);
		pk_op(&in, 'e');
		pk_op(&in, '.');
		enum ck_pickle_result r = rewrite(&in, &ck_view_plain, &out, &e);
		if (copies == 1)
			ok(r == CK_PICKLE_REWRITTEN && out.len < 2 * in.len,
			   "one copy of a 1 MiB key as data: rewritten (%zu bytes from %zu; %s)", out.len, in.len, e.msg);
		else
			ok(r == CK_PICKLE_ERROR && strstr(e.msg, "larger than") && strstr(e.msg, "offset"),
			   "64 copies of a 1 MiB key as data: refused (%d, %s)", r, e.msg);
		ck_buf_free(&in);
		ck_buf_free(&out);
	}
	free(key);
}

struct claims { int calls; uint64_t bytes; int refuse; };

static int record_claim(void *ctx, uint64_t bytes, struct ck_err *e)
{
	struct claims *c = ctx;

	c->calls++;
	c->bytes += bytes;
	return c->refuse ? ck_err_set(e, ENOMEM, "budget of the test refused %llu bytes", (unsigned long long)bytes)
			 : 0;
}

/* A rewrite from a source claims its bound from the source's budget once,
 * before it writes anything; refused, nothing is written. The new pickle is
 * appended to what the buffer holds. */
static void test_claim(void)
{
	struct sd_spec ddp = {{"module.0.weight", "module.0.bias"}, {"", "module", "module.0"}, 0};
	struct claims c = {.refuse = 1};
	struct ck_src src = {.fd = -1, .claim = record_claim, .claim_ctx = &c};
	struct ck_buf in, want, out = {0};
	struct ck_err e = {0};
	enum ck_pickle_result r;

	build_sd(&in, &ddp);
	rewrite(&in, &ck_view_plain, &want, &e);
	ck_buf_append(&out, "head", 4);
	r = ck_pickle_rewrite_src(&src, in.data, in.len, &ck_view_plain, &out, &e);
	ok(r == CK_PICKLE_ERROR && c.calls == 1 && c.bytes > 0 && strstr(e.msg, "refused") && out.len == 4,
	   "a refused claim fails the rewrite before it writes (%d, %d claims, %s)", r, c.calls, e.msg);
	c = (struct claims){0};
	r = ck_pickle_rewrite_src(&src, in.data, in.len, &ck_view_plain, &out, &e);
	ok(r == CK_PICKLE_REWRITTEN && c.calls == 1 && c.bytes >= out.len && out.len == 4 + want.len &&
	   memcmp(out.data, "head", 4) == 0 && memcmp(out.data + 4, want.data, want.len) == 0,
	   "a granted claim (%llu bytes) bounds the output, appended after what the buffer held",
	   (unsigned long long)c.bytes);
	ck_buf_free(&in);
	ck_buf_free(&want);
	ck_buf_free(&out);
}

/* The key table out of memory: an error for this pickle, not exit() (issue 9). */
static void test_hash_oom(void)
{
	struct sd_spec ddp = {{"module.0.weight", "module.0.bias"}, {"", "module", "module.0"}, 0};
	struct ck_buf in, out;
	struct ck_err e;

	build_sd(&in, &ddp);
	hash_oom = 1;
	enum ck_pickle_result r = rewrite(&in, &ck_view_plain, &out, &e);
	hash_oom = 0;
	ok(r == CK_PICKLE_ERROR && e.code == ENOMEM, "the key table out of memory fails the pickle (%d, %s)", r,
	   e.msg);
	ck_buf_free(&in);
	ck_buf_free(&out);
}

/* A list of 200,000 values beside a state dict (a training history, a
 * dataset index): the tables of the walk outgrow 1 MiB, where they get a
 * mapping of their own, and must be released as such. */
static void test_wide_list(void)
{
	struct ck_buf in = {0}, want = {0};

	for (int pass = 0; pass < 2; pass++) {
		struct ck_buf *b = pass ? &want : &in;
		pk_proto(b, 2);
		pk_op(b, ']');
		pk_op(b, '(');
		pk_op(b, '}');
		pk_str(b, pass ? "w" : "module.w");
		pk_tensor(b, 1, 1);
		pk_op(b, 's');
		for (int k = 0; k < 200000; k++)
			pk_op(b, k % 2 ? '}' : ']');
		pk_op(b, 'e');
		pk_op(b, '.');
	}
	expect_rewrite("a state dict beside 200,000 empty containers in a list", &in, &ck_view_plain, &want);
	ck_buf_free(&in);
	ck_buf_free(&want);
}

int main(void)
{
	test_plain_and_ddp();
	test_setitem_metadata();
	test_headless_metadata();
	test_memo_sharing();
	test_shared_keys();
	test_not_state_dicts();
	test_metadata_signature();
	test_collision();
	test_protocol4();
	test_many_keys();
	test_hostile();
	test_stack_global_at_growth();
	test_dup_memo();
	test_amplification();
	test_hash_oom();
	test_claim();
	test_wide_list();
	return tap_done();
}
