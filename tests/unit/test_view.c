/* Unit tests of the view rules: pure string functions. */
#include <stdlib.h>
#include <string.h>
#include "tap.h"
#include "view.h"

static void check(const struct ck_view *v, int meta, const char *in, const char *want)
{
	size_t n;
	char *got = meta ? ck_view_meta_key(v, in, strlen(in), &n) : ck_view_key(v, in, strlen(in), &n);

	ok(got && n == strlen(want) && strcmp(got, want) == 0, "%s %s '%s' -> '%s' (got '%s')", v->name,
	   meta ? "metadata" : "key", in, want, got ? got : "(null)");
	free(got);
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
	check(&ck_view_plain, 0, "fc._orig_mod.weight", "fc._orig_mod.weight");
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
		check(&peft, 0, "base_model.model.h.0.attn.lora_A.weight", "h.0.attn.lora_A.weight");
	}
	return tap_done();
}
