"""The Python reference (ckref) checked against real torch; no mount needed."""

import collections
import copy
import datetime

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
from ckref import assert_same, same, transform


@pytest.fixture(scope="module")
def ddp_sd():
    """DistributedDataParallel(model).state_dict(), gloo, world size 1, plus
    the model's own state dict."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    port = ckmodels.free_port()
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=30))
    try:
        model = ckmodels.make_model(0)
        out = DDP(model).state_dict(), model.state_dict()
    finally:
        dist.destroy_process_group()
    return out


def test_ref_ddp_equals_real_ddp(ddp_sd):
    wrapped, bare = ddp_sd
    assert_same(transform(bare, "ddp"), wrapped)


def test_ref_plain_equals_real_model(ddp_sd):
    wrapped, bare = ddp_sd
    assert_same(transform(wrapped, "plain"), bare)


def test_ref_ddp_equals_dataparallel():
    m = ckmodels.make_model(1)
    assert_same(transform(m.state_dict(), "ddp"), nn.DataParallel(m).state_dict())


def test_ref_plain_equals_dataparallel_unwrapped():
    m = ckmodels.make_model(1)
    assert_same(transform(nn.DataParallel(m).state_dict(), "plain"), m.state_dict())


def test_ref_plain_matches_modern_consume_prefix():
    # modern consume_prefix (order kept when all keys carry the prefix;
    # 'module' overwrites '' in place); written out here, 1.13 has the old one
    m = ckmodels.make_model(2)
    sd = nn.DataParallel(m).state_dict()
    exp = collections.OrderedDict((k[len("module."):], v) for k, v in sd.items())
    md = copy.copy(sd._metadata)
    for k in list(md.keys()):
        if k == "":
            continue
        if k == "module" or k.startswith("module."):
            md[k[len("module."):]] = md.pop(k)
    exp._metadata = md
    assert_same(transform(sd, "plain"), exp)


def test_ref_empty_module_metadata():
    relu = nn.ReLU()
    assert_same(transform(relu.state_dict(), "ddp"), nn.DataParallel(relu).state_dict())
    assert_same(transform(nn.DataParallel(relu).state_dict(), "plain"), relu.state_dict())


def test_ref_unicode_model():
    m = ckmodels.unicode_model()
    assert_same(transform(m.state_dict(), "ddp"), nn.DataParallel(m).state_dict())
    assert_same(transform(nn.DataParallel(m).state_dict(), "plain"), m.state_dict())


def test_ref_identity_on_view_form():
    m = ckmodels.make_model(3)
    assert not ckref.changes(m.state_dict(), "plain")
    assert not ckref.changes(nn.DataParallel(m).state_dict(), "ddp")
    assert ckref.changes(m.state_dict(), "ddp")
    assert ckref.changes(nn.DataParallel(m).state_dict(), "plain")


def test_ref_ddp_form_left_alone():
    # keys already prefixed stay; a metadata not in ddp form still gets the formula
    sd = ckmodels.odict([("module.a", torch.zeros(1))], [("", {"version": 1})])
    out = transform(sd, "ddp")
    assert list(out) == ["module.a"]
    assert list(out._metadata.items()) == [("", {"version": 1}), ("module", {"version": 1})]
    # a ddp-shaped metadata is kept as it is, even with an unusual wrapper entry
    md = [("", {"version": 1, "assign_to_params_buffers": False}), ("module", {"version": 1})]
    sd = ckmodels.odict([("module.a", torch.zeros(1))], md)
    assert not ckref.changes(sd, "ddp")
    # an empty state dict gets the wrapper metadata
    out = transform(nn.ReLU().state_dict(), "ddp")
    assert list(out._metadata) == ["", "module"]


def test_ref_file_path_keys_not_a_state_dict():
    # Lightning's best_k_models: {checkpoint path: score tensor}
    obj = {"best_k_models": {"/ckpt/epoch=2.ckpt": torch.tensor(0.5)},
           "ws": {"module.a b": torch.zeros(1)}, "empty": {"": torch.zeros(1)}}
    for view in ckref.VIEWS:
        assert not ckref.changes(obj, view)


def test_ref_optimizer_with_string_ids_untouched():
    # burn's checkpoint.pt: {'state': {'0': {'momentum_buffer': t}}, 'param_groups': [...]}
    opt = {"state": {"0": {"momentum_buffer": torch.zeros(2)}},
           "param_groups": [{"params": ["0"]}]}
    for view in ckref.VIEWS:
        assert not ckref.changes({"optimizer_state_dict": opt}, view)


def test_ref_roundtrip():
    sd = ckmodels.make_model(4).state_dict()
    assert_same(transform(transform(sd, "ddp"), "plain"), sd)


def test_ref_repeated_prefix():
    t = torch.zeros(1)
    sd = {"module.module.a": t, "b": t}
    assert list(transform(sd, "plain")) == ["a", "b"]
    assert list(transform(sd, "ddp")) == ["module.a", "module.b"]


def test_ref_inner_module_kept():
    t = torch.zeros(1)
    sd = {"encoder.module.weight": t, "module.encoder.module.bias": t}
    assert list(transform(sd, "plain")) == ["encoder.module.weight", "encoder.module.bias"]


def test_ref_metadata_collision_later_wins_in_place():
    a, b, c = {"version": 1}, {"version": 7}, {"version": 2}
    sd = ckmodels.odict([("module.x", torch.ones(1))],
                        [("", a), ("module", b), ("module.0", c)])
    out = transform(sd, "plain")
    assert list(out._metadata.items()) == [("", b), ("0", c)]
    out = transform(sd, "ddp")
    assert list(out._metadata.items()) == [("", {"version": 1}), ("module", b), ("module.0", c)]


def test_ref_data_strings_untouched():
    ck = ckmodels.shared_strings_checkpoint()
    for view in ckref.VIEWS:
        out = transform(ck, view)
        assert out["note"] == ["0", "bias", ""]
    out = transform(ck, "ddp")
    for name in ("model", "ema", "lin", "lin2"):
        assert all(k.startswith("module.") for k in out[name])


def test_ref_optimizer_state_not_a_state_dict():
    ck = ckmodels.training_checkpoint()
    opt = ck["optimizer"]
    assert isinstance(next(iter(opt["state"])), int)
    for view in ckref.VIEWS:
        assert not ckref.changes(opt, view)


def test_ref_walks_into_nonstr_dict_values():
    t = torch.zeros(1)
    obj = {"per_rank": {0: {"inner": {"module.w": t}, "module.v": t}}}
    out = transform(obj, "plain")
    assert list(out["per_rank"][0]) == ["inner", "module.v"]
    assert list(out["per_rank"][0]["inner"]) == ["w"]


def test_ref_mixed_values_not_a_state_dict():
    obj = {"module.a": torch.zeros(1), "module.b": 3}
    for view in ckref.VIEWS:
        assert not ckref.changes(obj, view)


def test_ref_lists_and_tuples_walked():
    sd = ckmodels.make_model(5).state_dict()
    obj = {"models": [sd, (sd,)]}
    out = transform(obj, "ddp")
    assert list(out["models"][0])[0] == "module.0.weight"
    assert type(out["models"][1]) is tuple
    assert list(out["models"][1][0])[0] == "module.0.weight"


def test_ref_objects_not_walked():
    m = nn.DataParallel(ckmodels.make_model(6))
    assert transform(m, "plain") is m
    assert not ckref.changes({"model": m}, "plain")


def test_ref_plain_dict_gets_no_metadata():
    sd = ckmodels.plain_dict(nn.DataParallel(ckmodels.make_model(7)).state_dict())
    out = transform(sd, "plain")
    assert type(out) is dict and not hasattr(out, "_metadata")


# -- the comparison helper must be able to fail -----------------------------

def test_cmp_dict_order():
    t = torch.zeros(1)
    assert not same({"a": t, "b": t}, {"b": t, "a": t})


def test_cmp_dict_vs_ordereddict():
    assert not same({"a": 1}, collections.OrderedDict(a=1))


def test_cmp_metadata():
    a = ckmodels.odict([("x", torch.zeros(1))], [("", {"version": 1}), ("0", {"version": 1})])
    b = ckmodels.odict([("x", torch.zeros(1))], [("0", {"version": 1}), ("", {"version": 1})])
    c = ckmodels.odict([("x", torch.zeros(1))], [("", {"version": 1}), ("0", {"version": 2})])
    d = ckmodels.odict([("x", torch.zeros(1))])
    assert same(a, copy.deepcopy(a))
    assert not same(a, b) and not same(a, c) and not same(a, d)


def test_cmp_tensors():
    x = torch.tensor([1.0, float("nan")])
    assert same(x, x.clone())
    assert not same(x, torch.tensor([1.0, 2.0]))
    assert not same(x, x.double())
    assert not same(torch.zeros(2, 3), torch.zeros(3, 2).t())      # stride
    assert not same(torch.zeros(6), torch.zeros(2, 3))
    assert not same(torch.zeros(1), nn.Parameter(torch.zeros(1)))
    assert same(torch.zeros(0, 5), torch.zeros(0, 5))


def test_cmp_lists_and_objects():
    assert not same([1, 2], (1, 2))
    assert not same(["0"], ["module.0"])
    assert same(ckmodels.make_model(0), ckmodels.make_model(0))
    assert not same(ckmodels.make_model(0), ckmodels.make_model(1))


# -- _orig_mod. (torch.compile) and custom views (issue #3) --------------------

BARE = ckref.custom_view("bare", "model.")
PEFT = ckref.custom_view("peft", "base_model.model.")


def test_ref_orig_mod_metadata_shape():
    m = ckmodels.make_model(10)
    sd = ckmodels.Compiled(m).state_dict()
    assert list(sd)[0] == "_orig_mod.0.weight"
    assert list(sd._metadata)[:3] == ["", "_orig_mod", "_orig_mod.0"]


@pytest.mark.parametrize("wrap", ["compiled", "dp_of_compiled", "compiled_of_dp",
                                  "compiled_compiled_dp"])
def test_ref_orig_mod_wrappers(wrap):
    m = ckmodels.make_model(11)
    w = {"compiled": lambda: ckmodels.Compiled(m),
         "dp_of_compiled": lambda: nn.DataParallel(ckmodels.Compiled(m)),
         "compiled_of_dp": lambda: ckmodels.Compiled(nn.DataParallel(m)),
         "compiled_compiled_dp": lambda: ckmodels.Compiled(ckmodels.Compiled(nn.DataParallel(m)))}[wrap]()
    sd = w.state_dict()
    assert_same(transform(sd, "plain"), m.state_dict())
    assert_same(transform(sd, "ddp"), nn.DataParallel(m).state_dict())
    bare = ckmodels.make_model(12)
    bare.load_state_dict(transform(sd, "plain"), strict=True)


def test_ref_builtin_views_are_views():
    assert ckref.view_of("plain") == ckref.View("plain", ("module.", "_orig_mod."), None, True)
    assert ckref.view_of("ddp") == ckref.View("ddp", ("module.", "_orig_mod."), "module.", True)
    sd = nn.DataParallel(ckmodels.Compiled(ckmodels.make_model(13))).state_dict()
    for name in ckref.VIEWS:
        assert_same(transform(sd, ckref.view_of(name)), transform(sd, name))
    # the same rules spelled as a custom view give the same result
    for add in (None, "module."):
        v = ckref.custom_view("again", ("module.", "_orig_mod."), add)
        assert_same(transform(sd, v), transform(sd, "ddp" if add else "plain"))


@pytest.mark.parametrize("spec,exp", [
    ("bare:strip=model.", ckref.View("bare", ("model.",), None)),
    ("view=peft:strip=base_model.model.", ckref.View("peft", ("base_model.model.",), None)),
    ("a.b-c_1:strip=x.:strip=_orig_mod.:add=net.",
     ckref.View("a.b-c_1", ("x.", "_orig_mod."), "net.")),
])
def test_ref_parse_view(spec, exp):
    v = ckref.parse_view(spec)
    assert v == exp
    assert ckref.parse_view(v.option()) == v


@pytest.mark.parametrize("spec", [
    "x", "x:", "plain:strip=a.", "ddp:strip=a.", "x:strip=a", "x:strip=", "x:strip=.",
    "x:add=a.", "x:strip=a.:add=b", "x:strip=a.:add=b.:strip=c.", "x:drop=a.",
    "x y:strip=a.", "x/y:strip=a.", ":strip=a.", "..:strip=a.", ".:strip=a.",
    "x:" + ":".join("strip=p%d." % i for i in range(ckref.MAX_STRIP + 1)),
])
def test_ref_parse_view_rejects(spec):
    with pytest.raises(ValueError):
        ckref.parse_view(spec)


def test_ref_custom_strip_lightning():
    m = ckmodels.make_model(14)
    sd = ckmodels.Lit(m).state_dict()
    assert list(sd)[0] == "model.0.weight"
    assert_same(transform(sd, BARE), m.state_dict())
    ck = {"state_dict": sd, "epoch": 3,
          "callbacks": {"ModelCheckpoint": {"best_k_models": {"/tmp/a.ckpt": torch.tensor(0.5)}}}}
    out = transform(ck, BARE)
    assert_same(out["state_dict"], m.state_dict())
    assert_same(out["callbacks"], ck["callbacks"])
    # built-in views leave model. alone
    assert not ckref.changes(ck, "plain")


def test_ref_custom_view_strips_only_listed():
    t = torch.zeros(1)
    sd = {"module.model.a": t, "_orig_mod.model.b": t, "model.module.c": t}
    assert list(transform(sd, BARE)) == ["module.model.a", "_orig_mod.model.b", "module.c"]
    v = ckref.custom_view("both", ("module.", "model."))
    assert list(transform(sd, v)) == ["a", "_orig_mod.model.b", "c"]
    # order of the listed prefixes does not matter, repeats are stripped
    sd = {"model.module.model.x": t, "module.module.y": t}
    for strip in (("module.", "model."), ("model.", "module.")):
        assert list(transform(sd, ckref.custom_view("v", strip))) == ["x", "y"]


def test_ref_custom_add():
    m = ckmodels.make_model(15)
    lit = ckmodels.Lit(m)
    v = ckref.custom_view("lit", ("module.", "model."), "model.")   # DP(m) -> Lightning
    assert_same(transform(nn.DataParallel(m).state_dict(), v), lit.state_dict())
    assert not ckref.changes(lit.state_dict(), v)          # already in form
    # an added prefix that is not also stripped is added again: no fixed point
    u = ckref.custom_view("lit2", "module.", "model.")
    assert list(transform(lit.state_dict(), u))[0] == "model.model.0.weight"
    w = ckref.custom_view("dp", "model.", "module.")       # Lightning -> DP(m)
    assert_same(transform(lit.state_dict(), w), nn.DataParallel(m).state_dict())
    assert ckref.metadata_in_form(v, lit.state_dict()._metadata)
    assert not ckref.metadata_in_form(v, m.state_dict()._metadata)
    assert not ckref.metadata_in_form(BARE, m.state_dict()._metadata)


def test_ref_custom_peft_keys_and_metadata():
    m = ckmodels.make_model(16)
    sd = ckmodels.Peft(m).state_dict()
    md = list(sd._metadata.items())
    assert [k for k, _ in md][:4] == ["", "base_model", "base_model.model", "base_model.model.0"]
    out = transform(sd, PEFT)
    assert list(out) == list(m.state_dict())
    # 'base_model' is not a listed prefix: it stays; the inner root replaces
    # '' in place (later wins at the earlier position)
    exp = [("", md[2][1]), ("base_model", md[1][1])] + \
        [(k[len("base_model.model."):], v) for k, v in md[3:]]
    assert list(out._metadata.items()) == exp
    assert ckref.view_meta_key(PEFT, "base_model.model") == ""
    assert ckref.view_meta_key(PEFT, "base_model") == "base_model"


def test_ref_custom_collision():
    t = torch.zeros(1)
    with pytest.raises(ckref.KeyCollision):
        transform({"model.w": t, "w": t}, BARE)
    with pytest.raises(ckref.KeyCollision):
        transform({"module.w": t, "w": t}, "plain")
    # ddp: "module.w" and "w" both become "module.w" as well
    with pytest.raises(ckref.KeyCollision):
        transform({"module.w": t, "w": t}, "ddp")
    assert list(transform({"module.w": t, "w": t}, BARE)) == ["module.w", "w"]
