/* Unit tests of the view rules: pure string functions. */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "view.h"

/* Each case both ways: a name of its own, and appended to a buffer that
 * holds bytes already (as the pickle planner collects every new name). */
static void check(const struct ck_view *v, int meta, const char *in, const char *want)
{
	size_t n, m;
	char *got = meta ? ck_view_meta_key(v, in, strlen(in), &n) : ck_view_key(v, in, strlen(in), &n);
	struct ck_buf all = {0};

	ok(got && n == strlen(want) && strcmp(got, want) == 0, "%s %s '%s' -> '%s' (got '%s')", v->name,
	   meta ? "metadata" : "key", in, want, got ? got : "(null)");
	ck_buf_append(&all, "before", 6);
	m = ck_view_rename_into(v, in, strlen(in), meta, &all);
	ok(!all.failed && m == strlen(want) && all.len == 6 + m && memcmp(all.data, "before", 6) == 0 &&
	   memcmp(all.data + 6, want, m) == 0,
	   "%s %s '%s' appended after other bytes", v->name, meta ? "metadata" : "key", in);
	free(got);
	ck_buf_free(&all);
}

int main(void)
{
	check(&ck_view_plain, 0, "module.conv1.weight", "conv1.weight");
	check(&ck_view_plain, 0, "conv1.weight", "conv1.weight");
	check(&ck_view_plain, 0, "module.module.fc.bias", "fc.bias");
	check(&ck_view_plain, 0, "encoder.module.weight", "encoder.module.weight");
	check(&ck_view_plain, 0, "modules.0.weight", "modules.0.weight");
	check(&ck_view_plain, 0, "module", "module");
	check(&ck_view_plain, 0, "module.层.ñ", "层.ñ");
	check(&ck_view_plain, 0, "_orig_mod.fc.weight", "fc.weight");
	check(&ck_view_plain, 0, "module._orig_mod.fc.weight", "fc.weight");
	check(&ck_view_plain, 0, "_orig_mod.module.fc.weight", "fc.weight");
	/* inner wrapper components go wherever they stand, as torch's own
	 * clean_tensor_name; the tensor's own name and a real `module` stay */
	check(&ck_view_plain, 0, "fc._orig_mod.weight", "fc.weight");
	check(&ck_view_plain, 0, "module._fsdp_wrapped_module.1._checkpoint_wrapped_module.0.weight", "1.0.weight");
	check(&ck_view_ddp, 0, "module._fsdp_wrapped_module.1._checkpoint_wrapped_module.0.weight",
	      "module.1.0.weight");
	check(&ck_view_plain, 0, "_fsdp_wrapped_module._fpw_module.layer.weight", "layer.weight");
	check(&ck_view_plain, 0, "encoder._orig_mod.module.weight", "encoder.module.weight");
	check(&ck_view_plain, 0, "_fsdp_wrapped_module.module.x", "x");
	check(&ck_view_plain, 0, "a._checkpoint_wrapped_module", "a._checkpoint_wrapped_module");
	check(&ck_view_plain, 0, "x_fsdp_wrapped_module.w", "x_fsdp_wrapped_module.w");
	check(&ck_view_plain, 0, "_orig_mod_x.w", "_orig_mod_x.w");
	check(&ck_view_plain, 0, ".a._orig_mod..b", ".a..b");
	check(&ck_view_plain, 0, "_orig_mod", "_orig_mod");
	check(&ck_view_plain, 1, "module._fsdp_wrapped_module", "");
	check(&ck_view_plain, 1, "module._fsdp_wrapped_module.1._checkpoint_wrapped_module", "1");
	check(&ck_view_plain, 1, "encoder._orig_mod", "encoder");
	check(&ck_view_ddp, 1, "module._fsdp_wrapped_module", "module");
	check(&ck_view_ddp, 1, "_fsdp_wrapped_module.0", "module.0");
	check(&ck_view_ddp, 0, "_orig_mod.module.fc.weight", "module.fc.weight");
	check(&ck_view_plain, 1, "_orig_mod", "");
	check(&ck_view_plain, 1, "module._orig_mod", "");
	check(&ck_view_plain, 1, "module._orig_mod.fc", "fc");
	check(&ck_view_ddp, 0, "conv1.weight", "module.conv1.weight");
	check(&ck_view_ddp, 0, "module.conv1.weight", "module.conv1.weight");
	check(&ck_view_ddp, 0, "module.module.x", "module.x");
	check(&ck_view_plain, 1, "", "");
	check(&ck_view_plain, 1, "module", "");
	check(&ck_view_plain, 1, "module.0", "0");
	check(&ck_view_plain, 1, "modules", "modules");
	check(&ck_view_ddp, 1, "", "module");
	check(&ck_view_ddp, 1, "0", "module.0");
	check(&ck_view_ddp, 1, "module", "module");
	check(&ck_view_ddp, 1, "module.0", "module.0");
	{
		const struct ck_view bare = {.name = "bare", .strip = {"model."}, .nstrip = 1};
		const struct ck_view peft = {.name = "peft", .strip = {"base_model.model."}, .nstrip = 1};
		check(&bare, 0, "model.layer.0.weight", "layer.0.weight");
		check(&bare, 0, "module.layer.0.weight", "module.layer.0.weight");
		check(&bare, 1, "model", "");
		/* a custom view strips only what it lists */
		check(&bare, 0, "model._fsdp_wrapped_module.fc.weight", "_fsdp_wrapped_module.fc.weight");
		check(&peft, 0, "base_model.model.h.0.attn.lora_A.weight", "h.0.attn.lora_A.weight");
	}
	{
		struct ck_view v;
		struct ck_err e;
		ok(ck_view_parse("bare:strip=model.", &v, &e) == 0 && strcmp(v.name, "bare") == 0 && v.nstrip == 1 &&
			   strcmp(v.strip[0], "model.") == 0 && !v.add,
		   "view=bare:strip=model. parses");
		check(&v, 0, "model.fc.weight", "fc.weight");
		ck_view_clear(&v);
		ok(ck_view_parse("lit:strip=model.:strip=module.:add=net.", &v, &e) == 0 && v.nstrip == 2 &&
			   strcmp(v.add, "net.") == 0,
		   "two strips and an add parse");
		check(&v, 0, "module.model.fc.weight", "net.fc.weight");
		check(&v, 1, "model", "net");
		ck_view_clear(&v);
		const char *bad[] = {"x", "x:", "x:strip=", "x:strip=model", "x:add=a.:add=b.", "x:keep=a.",
				     "a/b:strip=m.", "..:strip=m.", ":strip=m."};
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			memset(&e, 0, sizeof(e));
			ok(ck_view_parse(bad[i], &v, &e) == -1 && strstr(e.msg, "view=") && !v.name,
			   "view=%s is refused (%s)", bad[i], e.msg);
		}
	}
	return tap_done();
}
