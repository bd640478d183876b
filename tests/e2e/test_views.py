"""What plain/ and ddp/ present for checkpoints made here with torch 1.13.

Each checkpoint file is built once (module fixture), the source directory is
mounted once, and every (file, view) pair is checked against the Python
reference transform of torch.load(source).  CASES also states, for each file,
whether each view must change it; where it must not, the view is
byte-identical to the source.
"""

import copy
import os
import zipfile

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
from conftest import sha256

T = torch.arange(6, dtype=torch.float32).reshape(2, 3)


def _dp(m):
    return nn.DataParallel(m).state_dict()


def _tied():
    torch.manual_seed(9)
    m = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    m[1].weight = m[0].weight
    return _dp(m)


def _keys_as_data():
    sd = _dp(ckmodels.make_model(4))
    return {"sd": sd, "keys": list(sd.keys()), "meta_keys": list(sd._metadata.keys())}


def _lists():
    a = ckmodels.make_model(5).state_dict()
    b = _dp(ckmodels.make_model(6))
    return {"models": [a, b], "pair": (copy.deepcopy(a),), "n": [1, 2]}


def _nonstr_walk():
    return {"per_rank": {0: {"inner": _dp(ckmodels.make_model(7)), "module.v": T.clone()},
                         1: {"module.w": T.clone()}},
            "groups": [{"params": [0, 1], "lr": 0.1}]}


def _optimizer_str_ids():
    """Optimizer state under string ids (burn's checkpoint.pt)."""
    return {"model": ckmodels.make_model(8).state_dict(),
            "optimizer": {"state": {"0": {"momentum_buffer": T.clone()}},
                          "param_groups": [{"params": ["0"], "momentum": 1}]}}


def _file_path_keys():
    """Lightning: best_k_models maps checkpoint paths to scores."""
    return {"state_dict": _dp(ckmodels.make_model(9)),
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {
                "best_k_models": {"/ckpt/module.x/epoch=2.ckpt": torch.tensor(0.5)},
                "best_model_path": "/ckpt/module.x/epoch=2.ckpt"}}}


def _odict_1001():
    items = [("module.k%d" % i, torch.tensor([float(i)])) for i in range(1001)]
    return ckmodels.odict(items, [("", {"version": 1})])


def _optimizer():
    m = ckmodels.make_model(8)
    return ckmodels.train_step(m).state_dict()


# name -> (builder, save kwargs, plain view changes it, ddp view changes it)
CASES = {
    "training.pt": (ckmodels.training_checkpoint, {}, True, True),
    "shared_strings.pt": (ckmodels.shared_strings_checkpoint, {}, False, True),
    "big_plain.pt": (lambda: ckmodels.big_model().state_dict(), {}, False, True),
    "big_ddp.pt": (lambda: _dp(ckmodels.big_model()), {}, True, False),
    "dict_2000.pt": (lambda: {"module.t%d" % i: torch.tensor([i]) for i in range(2000)},
                     {}, True, False),
    "odict_1001.pt": (_odict_1001, {}, True, True),
    "unicode_model_plain.pt": (lambda: ckmodels.unicode_model().state_dict(), {}, False, True),
    "unicode_model_ddp.pt": (lambda: _dp(ckmodels.unicode_model()), {}, True, False),
    "unicode_dict.pt": (lambda: {"module.ñ.weight": T.clone(), "module.层.bias": T.clone(),
                                 "module.😀": T.clone(), "ñ.module.x": T.clone()},
                        {}, True, True),
    "inner_module.pt": (lambda: {"encoder.module.weight": T.clone(),
                                 "module.encoder.module.bias": T.clone()}, {}, True, True),
    "lists.pt": (_lists, {}, True, True),
    "plain_dict.pt": (lambda: ckmodels.plain_dict(_dp(ckmodels.make_model(1))), {}, True, False),
    "keep_vars.pt": (lambda: nn.DataParallel(ckmodels.make_model(2)).state_dict(keep_vars=True),
                     {}, True, False),
    "keys_as_data.pt": (_keys_as_data, {}, True, False),
    "tied.pt": (_tied, {}, True, False),
    "nonstr_walk.pt": (_nonstr_walk, {}, True, False),
    "optimizer_str_ids.pt": (_optimizer_str_ids, {}, False, True),
    "file_path_keys.pt": (_file_path_keys, {}, True, False),
    "relu.pt": (lambda: nn.ReLU().state_dict(), {}, False, True),
    "relu_ddp.pt": (lambda: _dp(nn.ReLU()), {}, True, False),
    "proto4.pt": (lambda: _dp(ckmodels.make_model(3)), {"pickle_protocol": 4}, True, False),
    # nothing to change in either view
    "optimizer.pt": (_optimizer, {}, False, False),
    "whole_model.pt": (lambda: nn.DataParallel(ckmodels.make_model(0)), {}, False, False),
    "mixed_values.pt": (lambda: {"module.a": T.clone(), "module.b": 3}, {}, False, False),
    "tensor.pt": (lambda: T.clone(), {}, False, False),
    "empty_dict.pt": (lambda: {}, {}, False, False),
    # in the view's form already
    "plain_model.pt": (lambda: ckmodels.make_model(0).state_dict(), {}, False, True),
    "ddp_model.pt": (lambda: _dp(ckmodels.make_model(0)), {}, True, False),
}

OTHER = {
    "readme.txt": b"plain text, not a checkpoint\nmodule.0.weight\n",
    "config.yaml": b"model:\n  prefix: module.\n  layers: [1, 2]\n",
}

PAIRS = [(n, v) for n in CASES for v in ckref.VIEWS]
IDENTITY = [(n, v) for n, (_, _, cp, cd) in CASES.items() for v in ckref.VIEWS
            if not {"plain": cp, "ddp": cd}[v]]


def _ids(pairs):
    return ["%s-%s" % (v, n) for n, v in pairs]


@pytest.fixture(scope="module")
def env(module_src, mount_module):
    src = module_src
    for name, (build, kw, _, _) in CASES.items():
        torch.save(build(), os.path.join(src, name), **kw)
    for name, data in OTHER.items():
        with open(os.path.join(src, name), "wb") as f:
            f.write(data)
    with zipfile.ZipFile(os.path.join(src, "archive.zip"), "w") as z:
        z.writestr("archive/readme.txt", "a zip that is not a checkpoint")
        z.writestr("archive/data/0", b"\0" * 16)
    torch.manual_seed(0)
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    torch.jit.save(scripted, os.path.join(src, "scripted.pt"))
    shas = {n: sha256(os.path.join(src, n)) for n in os.listdir(src)}
    m = mount_module(src)
    source = ckref.loader(src)

    yield m, source, shas
    for n, h in shas.items():
        assert sha256(os.path.join(src, n)) == h, "source %s modified" % n


@pytest.mark.parametrize("name,view", PAIRS, ids=_ids(PAIRS))
def test_view_equals_reference(env, name, view):
    m, source, _ = env
    got = ckref.load(m.path(view, name))
    ckref.assert_same(got, ckref.transform(source(name), view))


@pytest.mark.parametrize("name,view", PAIRS, ids=_ids(PAIRS))
def test_declared_expectation_matches_reference(env, name, view):
    # guards the CASES table (and thus the identity list) against the reference
    _, source, _ = env
    declared = {"plain": CASES[name][2], "ddp": CASES[name][3]}[view]
    assert ckref.changes(source(name), view) == declared


@pytest.mark.parametrize("name,view", IDENTITY, ids=_ids(IDENTITY))
def test_nothing_to_change_is_byte_identical(env, name, view):
    m, _, shas = env
    assert sha256(m.path(view, name)) == shas[name]


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("name", sorted(OTHER) + ["archive.zip", "scripted.pt"])
def test_non_checkpoint_is_byte_identical(env, name, view):
    m, _, shas = env
    assert sha256(m.path(view, name)) == shas[name]


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_training_checkpoint_parts(env, view):
    m, source, _ = env
    got = ckref.load(m.path(view, "training.pt"))
    src = source("training.pt")
    assert list(got) == ["model", "optimizer", "epoch", "ema", "note"]
    assert got["epoch"] == 3
    assert got["note"] == ["0", "bias", ""]
    ckref.assert_same(got["optimizer"], src["optimizer"])
    assert len(got["optimizer"]["state"]) > 0 and 0 in got["optimizer"]["state"]
    model = ckmodels.make_model()
    if view == "plain":
        assert list(got["model"]) == list(model.state_dict())
        assert list(got["ema"]) == list(model.state_dict())
        assert list(got["model"]._metadata) == list(model.state_dict()._metadata)
    else:
        want = list(nn.DataParallel(model).state_dict())
        assert list(got["model"]) == want and list(got["ema"]) == want
        assert list(got["ema"]._metadata) == list(nn.DataParallel(model).state_dict()._metadata)


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_shared_key_strings_used_as_data_stay(env, view):
    m, _, _ = env
    got = ckref.load(m.path(view, "shared_strings.pt"))
    assert got["note"] == ["0", "bias", ""]
    want = "module." if view == "ddp" else ""
    assert list(got["lin2"]) == [want + "weight", want + "bias"]
    assert list(got["ema"]._metadata)[:2] == (["", "module"] if view == "ddp" else ["", "0"])


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_key_list_stored_as_data_stays(env, view):
    m, source, _ = env
    got = ckref.load(m.path(view, "keys_as_data.pt"))
    src = source("keys_as_data.pt")
    assert got["keys"] == src["keys"] and all(k.startswith("module.") for k in got["keys"])
    assert got["meta_keys"] == src["meta_keys"]


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_many_keys(env, view):
    m, _, _ = env
    got = ckref.load(m.path(view, "big_ddp.pt" if view == "plain" else "big_plain.pt"))
    want = ckmodels.big_model()
    if view == "ddp":
        want = nn.DataParallel(want)
    ckref.assert_same(got, want.state_dict())
    assert len(got) == 1200


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_unicode_keys(env, view):
    m, _, _ = env
    got = ckref.load(m.path(view, "unicode_dict.pt"))
    p = "module." if view == "ddp" else ""
    assert list(got) == [p + "ñ.weight", p + "层.bias", p + "😀", p + "ñ.module.x"]


def test_module_inside_key_kept(env):
    m, _, _ = env
    assert list(ckref.load(m.path("plain", "inner_module.pt"))) == \
        ["encoder.module.weight", "encoder.module.bias"]
    assert list(ckref.load(m.path("ddp", "inner_module.pt"))) == \
        ["module.encoder.module.weight", "module.encoder.module.bias"]


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_plain_dict_gets_no_metadata(env, view):
    m, _, _ = env
    got = ckref.load(m.path(view, "plain_dict.pt"))
    assert type(got) is dict and not hasattr(got, "_metadata")


def test_state_dicts_in_lists(env):
    m, _, _ = env
    got = ckref.load(m.path("ddp", "lists.pt"))
    assert list(got["models"][0])[0] == "module.0.weight"
    assert list(got["models"][1])[0] == "module.0.weight"
    assert type(got["pair"]) is tuple and list(got["pair"][0])[0] == "module.0.weight"


def test_optimizer_like_inner_dicts_untouched(env):
    m, _, _ = env
    got = ckref.load(m.path("plain", "nonstr_walk.pt"))
    assert list(got["per_rank"][0]) == ["inner", "module.v"]
    assert list(got["per_rank"][1]) == ["module.w"]
    assert list(got["per_rank"][0]["inner"])[0] == "0.weight"


def test_optimizer_state_with_string_ids_untouched(env):
    m, source, _ = env
    got = ckref.load(m.path("ddp", "optimizer_str_ids.pt"))
    ckref.assert_same(got["optimizer"], source("optimizer_str_ids.pt")["optimizer"])
    assert list(got["model"])[0] == "module.0.weight"


def test_file_path_keys_untouched(env):
    m, _, _ = env
    got = ckref.load(m.path("plain", "file_path_keys.pt"))
    cb = got["callbacks"]["ModelCheckpoint{'monitor': 'val_loss'}"]
    assert list(cb["best_k_models"]) == ["/ckpt/module.x/epoch=2.ckpt"]
    assert list(got["state_dict"])[0] == "0.weight"


def test_empty_module_ddp_metadata(env):
    m, _, _ = env
    got = ckref.load(m.path("ddp", "relu.pt"))
    ckref.assert_same(got, nn.DataParallel(nn.ReLU()).state_dict())
