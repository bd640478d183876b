"""Issue #10: sharded checkpoints, as Hugging Face writes big models.

A DataParallel model's state dict is split over two shards, once as torch
`.bin` files (plain dicts of tensors, as transformers saves shards) and once
as `.safetensors`, each with its index written the way transformers writes
it: json.dumps(index, indent=2, sort_keys=True) + "\\n".  Through plain/
every name in the index's weight_map is found in the shard it names, and a
reader that follows the index (open each shard the weight_map names, take
the names it lists) gets the bare model's state dict and loads it with
strict=True.  The index changes only in its weight_map names; `metadata`
and every other byte stay.  An index whose names collide is refused (EIO),
both names in the log.
"""

import errno
import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
import stref
from conftest import HERE, read_bytes, sha256

ST_DTYPE = {torch.float32: "F32", torch.int64: "I64"}


def _dp_state_dict():
    model = ckmodels.make_model(21)
    ckmodels.train_step(model)
    return nn.DataParallel(model).state_dict(), model


def _write_index(path, weight_map, total):
    index = {"metadata": {"total_size": total, "format": "module.kept"}, "weight_map": weight_map}
    with open(path, "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_sharded(directory, sd, kind):
    """Two shards and their index, as transformers' save_pretrained does."""
    keys = list(sd)
    halves = [keys[:len(keys) // 2], keys[len(keys) // 2:]]
    base = {"bin": "pytorch_model", "safetensors": "model"}[kind]
    weight_map, total = {}, 0
    for i, names in enumerate(halves):
        fname = "%s-%05d-of-%05d.%s" % (base, i + 1, len(halves), kind)
        if kind == "bin":
            torch.save({k: sd[k].contiguous() for k in names}, os.path.join(directory, fname))
        else:
            stref.write(os.path.join(directory, fname),
                        [(k, ST_DTYPE[sd[k].dtype], tuple(sd[k].shape), sd[k].numpy().tobytes())
                         for k in names], metadata={"format": "pt"})
        for k in names:
            weight_map[k] = fname
            total += sd[k].numel() * sd[k].element_size()
    index = "%s.%s.index.json" % (base, kind)
    _write_index(os.path.join(directory, index), weight_map, total)
    return index


def shard_names(path):
    """The tensor names a shard holds (read as a loader reads it)."""
    if path.endswith(".safetensors"):
        return list(stref.read(path).tensors)
    return list(torch.load(path, weights_only=True))


def follow_index(view_dir, index):
    """What a loader that follows the index gets: each shard the weight_map
    names, each of the names the index lists for it."""
    with open(os.path.join(view_dir, index)) as f:
        weight_map = json.load(f)["weight_map"]
    out = {}
    for shard in sorted(set(weight_map.values())):
        path = os.path.join(view_dir, shard)
        if shard.endswith(".safetensors"):
            f = stref.read(path)
            loaded = {n: _st_tensor(f, n) for n in f.tensors}
        else:
            loaded = torch.load(path, weights_only=True)
        for name in [n for n, s in weight_map.items() if s == shard]:
            assert name in loaded, "index names %r in %s, which lacks it" % (name, shard)
            out[name] = loaded[name]
    return out


def _st_tensor(f, name):
    t = f.tensors[name]
    dtype = {v: k for k, v in ST_DTYPE.items()}[t.dtype]
    return torch.frombuffer(bytearray(f.tensor_bytes(name)), dtype=dtype).reshape(t.shape)


@pytest.fixture(scope="module")
def env(tmp_path_factory, mount_module):
    src = str(tmp_path_factory.mktemp("sharded"))
    sd, model = _dp_state_dict()
    indexes = {}
    for kind in ("bin", "safetensors"):
        os.makedirs(os.path.join(src, kind))
        indexes[kind] = os.path.join(kind, save_sharded(os.path.join(src, kind), sd, kind))
    os.makedirs(os.path.join(src, "collide"))
    _write_index(os.path.join(src, "collide", "model.safetensors.index.json"),
                 {"module.fc.weight": "a.safetensors", "fc.weight": "b.safetensors"}, 8)
    m = mount_module(src)
    time.sleep(1.1)  # past the attribute timeout
    return m, src, indexes, model


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_every_index_name_is_in_its_shard(env, kind):
    m, _, indexes, _ = env
    index = indexes[kind]
    view_dir = os.path.dirname(m.path("plain", index))
    with open(m.path("plain", index)) as f:
        weight_map = json.load(f)["weight_map"]
    assert all(not k.startswith("module.") for k in weight_map)
    for shard in set(weight_map.values()):
        have = set(shard_names(os.path.join(view_dir, shard)))
        missing = [k for k, s in weight_map.items() if s == shard and k not in have]
        assert not missing, "%s lacks %s" % (shard, missing[:3])


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_reader_following_index_gets_bare_model(env, kind):
    m, _, indexes, model = env
    index = indexes[kind]
    # in a second process, as a fresh loader would
    code = ("import sys, torch, test_sharded as t; "
            "torch.save(t.follow_index(sys.argv[1], sys.argv[2]), sys.argv[3])")
    out = os.path.join(os.path.dirname(m.log_path), "followed-%s.pt" % kind)
    subprocess.run([sys.executable, "-c", code, os.path.dirname(m.path("plain", index)),
                    os.path.basename(index), out], check=True, cwd=HERE, timeout=120)
    got = torch.load(out)
    want = model.state_dict()
    assert sorted(got) == sorted(want)
    bare = ckmodels.make_model(60)
    bare.load_state_dict(got, strict=True)
    for k in want:
        ckref.assert_same(bare.state_dict()[k], want[k])
    # ddp/ is the wrapped form: the index and shards as saved
    ddp_got = follow_index(os.path.dirname(m.path("ddp", index)), os.path.basename(index))
    nn.DataParallel(ckmodels.make_model(61)).load_state_dict(ddp_got, strict=True)


@pytest.mark.parametrize("kind", ["bin", "safetensors"])
def test_index_changes_only_its_weight_map_names(env, kind):
    m, src, indexes, _ = env
    index = indexes[kind]
    raw = read_bytes(os.path.join(src, index))
    view = read_bytes(m.path("plain", index))
    assert os.stat(m.path("plain", index)).st_size == len(view)
    # every weight_map name written as "module.X" becomes "X", nothing else
    lines = raw.decode().split("\n")
    at = lines.index('  "weight_map": {')
    want = lines[:at + 1] + [ln.replace('    "module.', '    "', 1) for ln in lines[at + 1:]]
    assert view.decode() == "\n".join(want)
    assert json.loads(view)["metadata"] == json.loads(raw)["metadata"]
    assert sha256(m.path("ddp", index)) == sha256(os.path.join(src, index))
    assert os.getxattr(m.path("plain", index), "user.ckptfs.format").rstrip(b"\0") == b"shard-index"


def test_colliding_index_is_refused(env):
    m, _, _, _ = env
    for view in ckref.VIEWS:
        with pytest.raises(OSError) as ei:
            with open(m.path(view, "collide", "model.safetensors.index.json"), "rb") as f:
                f.read()
        assert ei.value.errno == errno.EIO
    log = [ln for ln in m.log().splitlines() if "model.safetensors.index.json" in ln]
    assert any("'module.fc.weight'" in ln and "'fc.weight'" in ln for ln in log), log
