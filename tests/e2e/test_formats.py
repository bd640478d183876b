"""Issue #3: the formats and wrappers beyond the protocol-2 torch zip, made
here with torch 1.13 (and, for safetensors and a > 4 GiB zip, with writers
that follow the format specs, FORMATS.md §1.2-1.3 and §5).

* legacy (`_use_new_zipfile_serialization=False`) files: views equal the
  reference, only the object pickle changes, weights_only where the source
  loads with it, xattr `torch-legacy`;
* pickle protocols 4 and 5: FRAMEs dropped, MEMOIZE kept;
* `_orig_mod.` (torch.compile, emulated: 1.13 has no torch.compile) alone,
  DDP-of-compiled and compiled-of-DDP: plain/ is the bare model's
  state_dict() exactly, ddp/ DataParallel's;
* key collisions: EIO, a log line and `user.ckptfs.error` naming both keys;
* safetensors: names renamed, every other header byte kept, collisions and
  duplicate names EIO;
* zip64: a 4 GiB + 100 byte tensor record as a sparse hole, records after it
  past 4 GiB; an archive whose folder differs from its file name;
* custom views (`-o view=NAME:strip=P[:strip=P...][:add=P]`): Lightning,
  PEFT, several at once, bad syntax refused.
"""

import collections
import errno
import io
import json
import os
import pickle
import pickletools
import re
import struct
import time
import zipfile
import zlib

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
import stref
from conftest import mounted_at, need_binary, read_bytes, run_cli, sha256


def _dp(m):
    return nn.DataParallel(m).state_dict()


def _save(obj, path, **kw):
    torch.save(obj, path + ".tmp", **kw)
    os.rename(path + ".tmp", path)


def _legacy(build, proto=2):
    return lambda path: _save(build(), path, _use_new_zipfile_serialization=False,
                              pickle_protocol=proto)


def _proto(build, proto):
    return lambda path: _save(build(), path, pickle_protocol=proto)


def _zip(build):
    return lambda path: _save(build(), path)


def _orig_model():
    return ckmodels.make_model(20)


ORIG_WRAPS = {
    "compiled": lambda m: ckmodels.Compiled(m),
    "dp_of_compiled": lambda m: nn.DataParallel(ckmodels.Compiled(m)),
    "compiled_of_dp": lambda m: ckmodels.Compiled(nn.DataParallel(m)),
}

T = torch.arange(6, dtype=torch.float32).reshape(2, 3)

# name -> writer(path)
LEGACY_FILES = {
    "legacy_dp.pt": _legacy(lambda: _dp(ckmodels.make_model(0))),
    "legacy_training.pt": _legacy(ckmodels.training_checkpoint),
    "legacy_plain.pt": _legacy(lambda: ckmodels.make_model(1).state_dict()),
    "legacy_compiled_of_dp.pt": _legacy(lambda: ckmodels.Compiled(nn.DataParallel(_orig_model())).state_dict()),
    "legacy_shared_strings.pt": _legacy(ckmodels.shared_strings_checkpoint),
    # torch.save(..., _use_new_zipfile_serialization=False, pickle_protocol=N):
    # all five pickles in protocol N (FORMATS.md §3.3: detect by opcodes)
    "legacy_p3_dp.pt": _legacy(lambda: _dp(ckmodels.make_model(4)), 3),
    "legacy_p4_dp.pt": _legacy(lambda: _dp(ckmodels.make_model(4)), 4),
    "legacy_p5_big.pt": _legacy(lambda: _dp(ckmodels.big_model(600)), 5),
}
LEGACY_PROTO = {"legacy_p3_dp.pt": 3, "legacy_p4_dp.pt": 4, "legacy_p5_big.pt": 5}
PROTO_FILES = {
    "p4_dp.pt": (4, lambda: _dp(ckmodels.make_model(3))),
    "p5_dp.pt": (5, lambda: _dp(ckmodels.make_model(3))),
    "p4_big.pt": (4, lambda: _dp(ckmodels.big_model(600))),       # 1200 keys
    "p5_big.pt": (5, lambda: _dp(ckmodels.big_model(600))),
    "p5_training.pt": (5, ckmodels.training_checkpoint),
    "p4_compiled_of_dp.pt": (4, lambda: ckmodels.Compiled(nn.DataParallel(_orig_model())).state_dict()),
}
ORIG_FILES = {"%s.pt" % k: _zip(lambda w=w: w(_orig_model()).state_dict())
              for k, w in ORIG_WRAPS.items()}
COLLIDE_FILES = {
    "collide.pt": _zip(lambda: {"module.w": T.clone(), "w": T.clone() + 1}),
    "collide_orig.pt": _zip(lambda: collections.OrderedDict(
        [("_orig_mod.w", T.clone()), ("module.w", T.clone() + 1)])),
    "collide_legacy.pt": _legacy(lambda: {"module.w": T.clone(), "w": T.clone() + 1}),
}
COLLIDE_KEYS = {"collide.pt": ("module.w", "w"), "collide_orig.pt": ("_orig_mod.w", "module.w"),
                "collide_legacy.pt": ("module.w", "w")}


# --------------------------------------------------------------------------
# safetensors sources

def _tb(t):
    """Little-endian bytes of a tensor (bf16 through int16)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _st_tensors(names, seed=0):
    torch.manual_seed(seed)
    kinds = [("F32", lambda: torch.randn(3, 4)), ("I64", lambda: torch.arange(5)),
             ("F16", lambda: torch.randn(2, 2).half()), ("BF16", lambda: torch.randn(3).bfloat16()),
             ("F32", lambda: torch.zeros(0, 7)), ("F32", lambda: torch.tensor(2.5))]
    out = []
    for i, n in enumerate(names):
        dtype, make = kinds[i % len(kinds)]
        t = make()
        out.append((n, dtype, list(t.shape), _tb(t)))
    return out


# __metadata__ exactly as some writer put it: escapes, a "module." key and
# value that are data, not tensor names
META_RAW = (b'{"format":"pt","note":"a \\"quoted\\" \\\\ back\\/slash \\u00f1 \\ud83d\\ude00 \\n end",'
            b'"module.x":"module.y","":"empty"}')
DP_NAMES = ["module.fc1.weight", "module.fc1.bias", "module.bn.weight", "module.bn.bias",
            "module.empty", "module.scalar"]


def _st_write(path, tensors, **kw):
    stref.write(path, tensors, **kw)


def _st_pretty(path):
    """An indented header that is not padded to a multiple of 8."""
    tensors = _st_tensors(["module.a", "module.b.c"], 3)
    hdr, pos = {"__metadata__": {"format": "pt"}}, 0
    for n, dt, shape, data in tensors:
        hdr[n] = {"dtype": dt, "shape": shape, "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
    h = json.dumps(hdr, indent=1).encode()
    if len(h) % 8 == 0:
        h += b"\n"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors))


def _st_wide_pad(path):
    """Padded with 41 spaces (a multiple of 8 in all, but more than needed)."""
    tensors = _st_tensors(["module.p", "q"], 4)
    raw = stref.build(tensors, metadata={"format": "pt"}, pad=False)
    (n,) = struct.unpack_from("<Q", raw)
    h = raw[8:8 + n]
    extra = 41 + (8 - (n + 41) % 8) % 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n + extra) + h + b" " * extra + raw[8 + n:])


def _st_entries(path, names, meta_last=False, raw_names=None):
    tensors = _st_tensors(names, 5)
    entries, pos = [], 0
    for i, (n, dt, shape, data) in enumerate(tensors):
        e = stref.entry(n, dt, shape, pos)
        if raw_names:
            e = (raw_names[i], e[1])
        entries.append(e)
        pos += len(data)
    if meta_last:
        entries.append(("__metadata__", {"format": "pt"}))
    stref.write(path, tensors, entries=entries)


def _st_dup(path, name):
    """Two entries with the same name (a JSON object with a duplicate)."""
    tensors = _st_tensors(["a", "b"], 6)
    e0 = stref.entry(name, tensors[0][1], tensors[0][2], 0)
    e1 = stref.entry(name, tensors[1][1], tensors[1][2], len(tensors[0][3]))
    stref.write(path, tensors, entries=[e0, e1])


ST_FILES = {
    "st_dp.safetensors": lambda p: _st_write(p, _st_tensors(DP_NAMES, 1), metadata_raw=META_RAW),
    "st_orig.safetensors": lambda p: _st_write(p, _st_tensors(
        ["_orig_mod.module.a", "module._orig_mod.b", "_orig_mod.c", "d", "x.module.e"], 2)),
    "st_plain.safetensors": lambda p: _st_write(p, _st_tensors(["fc.weight", "fc.bias"], 7),
                                                metadata_raw=META_RAW),
    "st_ddp.safetensors": lambda p: _st_write(p, _st_tensors(["module.fc.weight"], 8),
                                              metadata={"format": "pt"}),
    "st_meta_last.safetensors": lambda p: _st_entries(p, ["module.a", "module.b"], meta_last=True),
    "st_escaped.safetensors": lambda p: _st_entries(
        p, ["module.\u00f1", "module.x", "module.q\"uote"],
        raw_names=[b'"module.\\u00f1"', b'"\\u006dodule.x"', b'"module.q\\"uote"']),
    "st_pretty.safetensors": _st_pretty,
    "st_wide_pad.safetensors": _st_wide_pad,
}
# a tensor whose plain name is the reserved "__metadata__"
ST_META_NAME = "st_meta_name.safetensors"
ST_BAD = {
    "st_collide.safetensors": (lambda p: _st_write(p, _st_tensors(["module.w", "w"], 9)),
                               ("module.w", "w")),
    "st_dup.safetensors": (lambda p: _st_dup(p, "module.w"), ("module.w",)),
    "st_dup_plain.safetensors": (lambda p: _st_dup(p, "w"), ("w",)),
}


def _renamed_archive(src):
    """torch.save to orig_name.pt, then renamed: the folder stays orig_name."""
    tmp = os.path.join(src, "orig_name.pt")
    torch.save(_dp(ckmodels.make_model(30)), tmp)
    os.rename(tmp, os.path.join(src, "renamed.pt"))


WRITERS = dict(LEGACY_FILES)
WRITERS.update({n: _proto(b, p) for n, (p, b) in PROTO_FILES.items()})
WRITERS.update(ORIG_FILES)
WRITERS.update(COLLIDE_FILES)
WRITERS.update(ST_FILES)
WRITERS.update({n: w for n, (w, _) in ST_BAD.items()})
WRITERS[ST_META_NAME] = lambda p: _st_write(p, _st_tensors(["module.__metadata__", "module.a"], 12))


@pytest.fixture(scope="module")
def env(module_src, mount_module):
    src = module_src
    for name, write in WRITERS.items():
        write(os.path.join(src, name))
    _renamed_archive(src)
    m = mount_module(src)
    source = ckref.loader(src)

    return m, src, source


def _pairs(names):
    return [(n, v) for n in names for v in ckref.VIEWS]


def _ids(pairs):
    return ["%s-%s" % (v, n) for n, v in pairs]


def _data_pkl(path):
    with zipfile.ZipFile(path) as z:
        name = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        return z.read(name)


def _ops(pkl):
    return [op.name for op, _, _ in pickletools.genops(pkl)]


# --------------------------------------------------------------------------
# legacy format

LEG = sorted(LEGACY_FILES)


@pytest.mark.parametrize("name,view", _pairs(LEG), ids=_ids(_pairs(LEG)))
def test_legacy_view_equals_reference(env, name, view):
    m, src, source = env
    ckref.assert_same(ckref.load(m.path(view, name)), ckref.transform(source(name), view))


@pytest.mark.parametrize("name,view", _pairs(LEG), ids=_ids(_pairs(LEG)))
def test_legacy_only_object_pickle_changes(env, name, view):
    m, src, source = env
    a, b = read_bytes(os.path.join(src, name)), read_bytes(m.path(view, name))
    assert os.stat(m.path(view, name)).st_size == len(b)
    if not ckref.changes(source(name), view):
        assert a == b
        return
    ea, eb = ckref.pickle_ends(a, 4), ckref.pickle_ends(b, 4)
    assert b[:eb[2]] == a[:ea[2]], "magic, protocol version or sys_info differ"
    assert b[eb[3]:] == a[ea[3]:], "storage keys or raw storages differ"
    assert b[eb[2]:eb[3]] != a[ea[2]:ea[3]]
    assert "FRAME" not in _ops(b[eb[2]:eb[3]])
    assert b[eb[2]:eb[2] + 2] == a[ea[2]:ea[2] + 2], "the object pickle's protocol changed"


@pytest.mark.parametrize("name,view", _pairs(LEG), ids=_ids(_pairs(LEG)))
def test_legacy_weights_only_where_source_loads(env, name, view):
    m, src, _ = env
    try:
        ckref.load(os.path.join(src, name), weights_only=True)
    except Exception as e:
        pytest.skip("source does not load with weights_only=True: %s" % str(e)[-60:])
    ckref.load(m.path(view, name), weights_only=True)


def test_legacy_dp_resume_and_export(env):
    """plain/ loads strict into the bare model, ddp/ is DataParallel's."""
    m, _, _ = env
    model = ckmodels.make_model(0)
    got = ckref.load(m.path("plain", "legacy_dp.pt"), weights_only=True)
    ckref.assert_same(got, model.state_dict())
    bare = ckmodels.make_model(99)
    bare.load_state_dict(got, strict=True)
    ckref.assert_same(bare.state_dict(), model.state_dict())
    got = ckref.load(m.path("ddp", "legacy_plain.pt"), weights_only=True)
    ckref.assert_same(got, _dp(ckmodels.make_model(1)))
    nn.DataParallel(ckmodels.make_model(98)).load_state_dict(got, strict=True)


def test_legacy_source_is_legacy(env):
    _, src, _ = env
    for name in LEG:
        raw = read_bytes(os.path.join(src, name))
        assert raw[:2] == bytes([0x80, LEGACY_PROTO.get(name, 2)])
        assert not zipfile.is_zipfile(os.path.join(src, name))
    assert "FRAME" in _ops(read_bytes(os.path.join(src, "legacy_p5_big.pt")))


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("name", LEG)
def test_legacy_format_xattr(env, name, view):
    m, _, _ = env
    assert os.getxattr(m.path(view, name), "user.ckptfs.format").rstrip(b"\0") == b"torch-legacy"


def test_legacy_mmap_refused_like_source(env):
    """torch refuses mmap for legacy files; a view must not claim to be a zip."""
    m, _, _ = env
    assert not zipfile.is_zipfile(m.path("plain", "legacy_dp.pt"))


# --------------------------------------------------------------------------
# pickle protocols 4 and 5

PROTO = sorted(PROTO_FILES)


@pytest.mark.parametrize("name,view", _pairs(PROTO), ids=_ids(_pairs(PROTO)))
def test_proto_view_equals_reference(env, name, view):
    m, _, source = env
    ckref.assert_same(ckref.load(m.path(view, name)), ckref.transform(source(name), view))


@pytest.mark.parametrize("name,view", _pairs(PROTO), ids=_ids(_pairs(PROTO)))
def test_proto_frames_dropped_memo_kept(env, name, view):
    m, src, source = env
    a = _data_pkl(os.path.join(src, name))
    ops_a = _ops(a)
    assert a[:2] == bytes([0x80, PROTO_FILES[name][0]])
    assert "FRAME" in ops_a and "MEMOIZE" in ops_a
    if name.endswith("big.pt"):
        assert len(a) > 65536 and ops_a.count("FRAME") >= 2, "want several frames"
    if not ckref.changes(source(name), view):
        assert sha256(m.path(view, name)) == sha256(os.path.join(src, name))
        return
    b = _data_pkl(m.path(view, name))
    ops_b = _ops(b)
    assert "FRAME" not in ops_b
    assert ops_b.count("MEMOIZE") == ops_a.count("MEMOIZE")
    assert b[:2] == a[:2], "protocol changed"
    # the pure-Python unpickler (whose _Unframer is strict) reads it as the C one
    assert _same_shape(_inspect(b, pure=True), _inspect(b))


@pytest.mark.parametrize("name", PROTO)
def test_proto_view_is_valid_zip(env, name):
    m, src, _ = env
    for view in ckref.VIEWS:
        with zipfile.ZipFile(m.path(view, name)) as z:
            assert z.testzip() is None
            names = z.namelist()
        with zipfile.ZipFile(os.path.join(src, name)) as z:
            assert names == z.namelist()


def test_proto_big_keys(env):
    m, _, _ = env
    got = ckref.load(m.path("plain", "p4_big.pt"))
    assert len(got) == 1200 and list(got)[0] == "0.weight" and list(got)[-1] == "599.bias"
    ckref.assert_same(got, ckmodels.big_model(600).state_dict())


# --------------------------------------------------------------------------
# _orig_mod. (torch.compile)

ORIG = sorted(ORIG_FILES)


def test_orig_mod_sources_have_the_prefixes(env):
    _, src, source = env
    assert list(source("compiled.pt"))[0] == "_orig_mod.0.weight"
    assert list(source("dp_of_compiled.pt"))[0] == "module._orig_mod.0.weight"
    assert list(source("compiled_of_dp.pt"))[0] == "_orig_mod.module.0.weight"
    md = list(source("compiled_of_dp.pt")._metadata)
    assert md[:4] == ["", "_orig_mod", "_orig_mod.module", "_orig_mod.module.0"]


@pytest.mark.parametrize("name", ORIG + ["legacy_compiled_of_dp.pt", "p4_compiled_of_dp.pt"])
def test_orig_mod_plain_is_bare_model(env, name):
    m, _, _ = env
    model = _orig_model()
    wo = not name.startswith("p4")
    got = ckref.load(m.path("plain", name), weights_only=wo)
    ckref.assert_same(got, model.state_dict())          # keys, order, _metadata
    bare = ckmodels.make_model(97)
    bare.load_state_dict(got, strict=True)
    ckref.assert_same(bare.state_dict(), model.state_dict())


@pytest.mark.parametrize("name", ORIG + ["legacy_compiled_of_dp.pt", "p4_compiled_of_dp.pt"])
def test_orig_mod_ddp_is_dataparallel(env, name):
    m, _, _ = env
    wo = not name.startswith("p4")
    got = ckref.load(m.path("ddp", name), weights_only=wo)
    ckref.assert_same(got, _dp(_orig_model()))
    nn.DataParallel(ckmodels.make_model(96)).load_state_dict(got, strict=True)


@pytest.mark.parametrize("name,view", _pairs(ORIG), ids=_ids(_pairs(ORIG)))
def test_orig_mod_view_equals_reference(env, name, view):
    m, _, source = env
    ckref.assert_same(ckref.load(m.path(view, name)), ckref.transform(source(name), view))


# --------------------------------------------------------------------------
# key collisions

def _eio(path):
    with pytest.raises(OSError) as ei:
        with open(path, "rb") as f:
            f.read()
    assert ei.value.errno == errno.EIO, ei.value


def _names_both(text, a, b):
    """`text` names key a and key b (b may be a suffix of a: 'module.w', 'w')."""
    tok = r"(?<![\w.]){}(?![\w.])"
    rest = re.sub(tok.format(re.escape(a)), " ", text)
    return re.search(tok.format(re.escape(a)), text) and re.search(tok.format(re.escape(b)), rest)


def _log_lines(m, name, a, b):
    deadline = time.monotonic() + 3
    while True:
        hits = [ln for ln in m.log().splitlines() if name in ln and _names_both(ln, a, b)]
        if hits or time.monotonic() > deadline:
            return hits
        time.sleep(0.1)


@pytest.mark.parametrize("name,view", _pairs(sorted(COLLIDE_FILES)),
                         ids=_ids(_pairs(sorted(COLLIDE_FILES))))
def test_collision_eio(env, name, view):
    """{'module.w', 'w'}: both become 'w' in plain/ and 'module.w' in ddp/
    (ddp = 'module.' + plain): neither view can serve the file."""
    m, src, source = env
    with pytest.raises(ckref.KeyCollision):
        ckref.transform(source(name), view)
    _eio(m.path(view, name))
    a, b = COLLIDE_KEYS[name]
    assert _log_lines(m, name, a, b), "no log line naming %s, %r and %r:\n%s" % (name, a, b, m.log())
    val = os.getxattr(m.path(view, name), "user.ckptfs.error").rstrip(b"\0").decode()
    assert _names_both(val, a, b), val
    # still listed, with its source size; the mount keeps working
    assert os.stat(m.path(view, name)).st_size == os.stat(os.path.join(src, name)).st_size
    ckref.assert_same(ckref.load(m.path(view, "compiled.pt")),
                      ckref.transform(source("compiled.pt"), view))


# --------------------------------------------------------------------------
# safetensors

ST = sorted(ST_FILES)


@pytest.mark.parametrize("name", ST + sorted(n for n in ST_BAD if n != "st_dup.safetensors"
                                             and n != "st_dup_plain.safetensors"))
def test_st_sources_are_valid(env, name):
    """Our writer follows the spec: the reader accepts what it wrote."""
    _, src, _ = env
    f = stref.read(os.path.join(src, name))
    assert f.tensors


def test_st_reader_rejects_duplicates(env):
    _, src, _ = env
    for name in ("st_dup.safetensors", "st_dup_plain.safetensors"):
        with pytest.raises(stref.Invalid, match="duplicate"):
            stref.read(os.path.join(src, name))


def test_st_reader_validates():
    good = stref.build(_st_tensors(["a", "b"]), metadata={"format": "pt"})
    stref.File(good)
    with pytest.raises(stref.Invalid, match="MetadataIncompleteBuffer"):
        stref.File(good + b"\0")
    with pytest.raises(stref.Invalid, match="HeaderTooLarge"):
        stref.File(struct.pack("<Q", 10 ** 8 + 1) + good[8:])
    bad = stref.build(_st_tensors(["a", "b"]), entries=[
        stref.entry("a", "F32", [3, 4], 0), stref.entry("b", "I64", [5], 56)])
    with pytest.raises(stref.Invalid, match="InvalidOffset"):
        stref.File(bad)
    bad = stref.build(_st_tensors(["a", "b"]), entries=[
        stref.entry("a", "F32", [3, 4], 0), ("b", {"dtype": "I64", "shape": [4],
                                                   "data_offsets": [48, 88]})])
    with pytest.raises(stref.Invalid, match="TensorInvalidInfo"):
        stref.File(bad)


@pytest.mark.parametrize("name,view", _pairs(ST), ids=_ids(_pairs(ST)))
def test_st_view(env, name, view):
    m, src, _ = env
    p = m.path(view, name)
    got = read_bytes(p)
    assert os.stat(p).st_size == len(got)
    f = stref.assert_view(got, read_bytes(os.path.join(src, name)),
                          lambda k: ckref.view_key(view, k))
    if f.metadata is not None and name != "st_meta_last.safetensors":
        assert f.names[0] == "__metadata__"


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_st_metadata_bytes_kept(env, view):
    m, _, _ = env
    f = stref.read(m.path(view, "st_dp.safetensors"))
    assert f.raw_entry("__metadata__") == META_RAW
    assert f.metadata["module.x"] == "module.y"
    assert f.names[0] == "__metadata__"


def test_st_expected_names(env):
    m, _, _ = env
    assert stref.read(m.path("plain", "st_orig.safetensors")).names == ["a", "b", "c", "d", "x.module.e"]
    assert stref.read(m.path("ddp", "st_orig.safetensors")).names == \
        ["module.a", "module.b", "module.c", "module.d", "module.x.module.e"]
    assert stref.read(m.path("plain", "st_escaped.safetensors")).names == ["\u00f1", "x", "q\"uote"]
    assert stref.read(m.path("plain", "st_meta_last.safetensors")).names == ["a", "b", "__metadata__"]


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_st_tensors_load_with_torch(env, view):
    """The renamed tensors, read back through the view, are the originals."""
    m, src, _ = env
    f, s = stref.read(m.path(view, "st_dp.safetensors")), stref.read(os.path.join(src, "st_dp.safetensors"))
    for (name, t) in s.tensors.items():
        g = f.tensors[ckref.view_key(view, name)]
        assert (g.dtype, g.shape, g.begin, g.end) == (t.dtype, t.shape, t.begin, t.end)
        if t.dtype == "F32" and t.end > t.begin:
            x = torch.frombuffer(bytearray(f.tensor_bytes(g.name)), dtype=torch.float32)
            y = torch.frombuffer(bytearray(s.tensor_bytes(name)), dtype=torch.float32)
            assert torch.equal(x, y)


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("name", sorted(ST_BAD))
def test_st_bad_eio(env, name, view):
    m, src, _ = env
    _eio(m.path(view, name))
    names = ST_BAD[name][1]
    val = os.getxattr(m.path(view, name), "user.ckptfs.error").rstrip(b"\0").decode()
    if len(names) == 2:
        assert _names_both(val, *names), val
        assert _log_lines(m, name, *names), m.log()
    else:
        assert val.strip()


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_st_tensor_never_named_metadata(env, view):
    """'module.__metadata__' -> '__metadata__' would turn a tensor entry into
    the metadata map: the view must refuse the file (EIO) or stay valid."""
    m, src, _ = env
    p = m.path(view, ST_META_NAME)
    try:
        raw = read_bytes(p)
    except OSError as e:
        assert e.errno == errno.EIO
        return
    f = stref.File(raw)         # valid: __metadata__, if any, is a str -> str map
    assert len(f.tensors) == 2


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("name", ST)
def test_st_format_xattr(env, name, view):
    m, _, _ = env
    assert os.getxattr(m.path(view, name), "user.ckptfs.format").rstrip(b"\0") == b"safetensors"


# --------------------------------------------------------------------------
# an archive whose folder is not its file name

@pytest.mark.parametrize("view", ckref.VIEWS)
def test_renamed_archive(env, view):
    m, src, source = env
    with zipfile.ZipFile(os.path.join(src, "renamed.pt")) as z:
        names = z.namelist()
    assert all(n.startswith("orig_name/") for n in names)
    p = m.path(view, "renamed.pt")
    with zipfile.ZipFile(p) as z:
        assert z.testzip() is None
        assert z.namelist() == names
    got = ckref.load(p, weights_only=True)
    ckref.assert_same(got, ckref.transform(source("renamed.pt"), view))
    assert list(got)[0] == ("0.weight" if view == "plain" else "module.0.weight")


# --------------------------------------------------------------------------
# zip64: a > 4 GiB checkpoint whose big record is a sparse hole

U32 = 0xFFFFFFFF
HUGE = (1 << 32) + 100


def _gf2_times(mat, vec):
    s, i = 0, 0
    while vec:
        if vec & 1:
            s ^= mat[i]
        vec >>= 1
        i += 1
    return s


def _gf2_square(mat):
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def crc32_combine(crc1, crc2, len2):
    """zlib's crc32_combine: CRC-32 of A+B from crc(A), crc(B) and len(B)."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = _gf2_square(odd)
    odd = _gf2_square(even)
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def crc32_zeros(n):
    """CRC-32 of n zero bytes, by doubling."""
    result, block, blen = 0, zlib.crc32(b"\0"), 1
    while n:
        if n & 1:
            result = crc32_combine(result, block, blen)
        block = crc32_combine(block, block, blen)
        blen *= 2
        n >>= 1
    return result


class Hole:
    """A record of `size` zero bytes, left as a sparse hole."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


def _zip64_extra(big_size, size, comp, big_off, off):
    body = (struct.pack("<QQ", size, comp) if big_size else b"") + \
        (struct.pack("<Q", off) if big_off else b"")
    return struct.pack("<HH", 1, len(body)) + body if body else b""


def write_torch_zip(f, archive, records, align=64):
    """Writes [(record name, bytes | Hole)] as torch's PyTorchStreamWriter
    with miniz does (FORMATS.md §1.2-1.3); returns [(name, header offset)]."""
    cursor, cd = 0, []
    for rec, data in records:
        name = ("%s/%s" % (archive, rec)).encode()
        size = len(data)
        big_size, big_off = size >= U32, cursor >= U32
        zlen = (4 + (16 if big_size else 0) + (8 if big_off else 0)) if big_size or big_off else 0
        pad = (align - (cursor + 30 + len(name) + 4 + zlen) % align) % align
        flags = 0x0808 if size else 0x0800
        extra = _zip64_extra(big_size, size, 0, big_off, cursor) + \
            struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        f.seek(cursor)
        f.write(struct.pack("<IHHHHHIIIHH", 0x04034b50, 0, flags, 0, 0, 0, 0, 0, 0,
                            len(name), len(extra)) + name + extra)
        if isinstance(data, Hole):
            crc = crc32_zeros(size)
            f.seek(size, os.SEEK_CUR)
        else:
            crc = zlib.crc32(data)
            f.write(data)
        if size:
            if zlen:
                f.write(struct.pack("<IIQQ", 0x08074b50, crc, size, size))
            else:
                f.write(struct.pack("<IIII", 0x08074b50, crc, size, size))
        cd.append((name, flags, crc, size, cursor))
        cursor = f.tell()
    cd_off = cursor
    for name, flags, crc, size, lho in cd:
        extra = _zip64_extra(size >= U32, size, size, lho >= U32, lho)
        f.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 0, 0, flags, 0, 0, 0, crc,
                            min(size, U32), min(size, U32), len(name), len(extra), 0, 0, 0, 0,
                            min(lho, U32)) + name + extra)
    cd_end = f.tell()
    n, cd_size = len(cd), cd_end - cd_off
    f.write(struct.pack("<IQHHIIQQQQ", 0x06064b50, 44, 0x031E, 0x002D, 0, 0, n, n, cd_size, cd_off))
    f.write(struct.pack("<IIQI", 0x07064b50, 0, cd_end, 1))
    f.write(struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                        min(cd_size, U32), min(cd_off, U32), 0))
    return [(c[0].decode(), c[4]) for c in cd]


class _FakeStorage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _FakeTensor:
    """Pickles as a uint8 tensor over a storage that is never allocated."""

    def __init__(self, storage):
        self.storage = storage

    def __reduce_ex__(self, proto):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, (self.storage.numel,), tuple([1]), False,
                 collections.OrderedDict()))


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return ("storage", getattr(torch, "UInt8Storage", torch.ByteStorage), obj.key, "cpu",
                    obj.numel)
        return None


def torch_pickle(items, metadata):
    """data.pkl as torch.save (protocol 2) writes an OrderedDict state dict of
    uint8 tensors [(key, numel)], one storage each, keys "0", "1", ..."""
    sd = collections.OrderedDict((k, _FakeTensor(_FakeStorage(str(i), n)))
                                 for i, (k, n) in enumerate(items))
    sd._metadata = collections.OrderedDict(metadata)
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(sd)
    return buf.getvalue()


def _inspect(pkl, pure=False):
    """Unpickles data.pkl without torch: a torch global becomes its name, a
    call of one ("module.name", args), a storage its persistent id."""

    class Inspect(pickle._Unpickler if pure else pickle.Unpickler):
        def persistent_load(self, pid):
            return pid

        def find_class(self, module, name):
            if module.split(".")[0] == "torch":
                return _TorchGlobal(module + "." + name)
            return super().find_class(module, name)

    return Inspect(io.BytesIO(pkl)).load()


class _TorchGlobal(str):
    def __call__(self, *args):
        return (str(self), args)


def _same_shape(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same_shape(a[k], b[k]) for k in a) and \
            (type(a) is dict or _same_shape(dict(vars(a)), dict(vars(b))))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_shape(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b or (a != a and b != b)
    return a == b


SMALL0 = bytes(range(200)) * 3
SMALL2 = b"tail record past 4 GiB" * 5
ZIP64_ITEMS = [("module.small0", len(SMALL0)), ("module.huge", HUGE), ("module.small2", len(SMALL2))]
ZIP64_META = [("", {"version": 1}), ("module", {"version": 1})]


def test_zip_writer_matches_torch_save():
    """The writer reproduces torch.save byte for byte (so the big file below
    is what torch would write), and torch_pickle is torch's data.pkl."""
    items = [("module.a", 5), ("module.b", 7), ("module.c", 0)]
    sd = collections.OrderedDict((k, torch.arange(n, dtype=torch.uint8)) for k, n in items)
    sd._metadata = collections.OrderedDict(ZIP64_META)
    for obj in (sd, {str(i): torch.tensor([i]) for i in range(13)}):
        buf = io.BytesIO()
        torch.save(obj, buf)
        raw = buf.getvalue()
        z = zipfile.ZipFile(io.BytesIO(raw))
        arch = z.namelist()[0].split("/")[0]
        recs = [(i.filename[len(arch) + 1:], z.read(i)) for i in z.infolist()]
        out = io.BytesIO()
        write_torch_zip(out, arch, recs)
        assert out.getvalue() == raw
    with zipfile.ZipFile(_saved(sd)) as z:
        assert torch_pickle(items, ZIP64_META) == z.read("archive/data.pkl")
    for n in (0, 1, 3, 100, 4097, 70000):
        assert crc32_zeros(n) == zlib.crc32(bytes(n))


def _saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def zip64_env(tmp_path_factory, mount_module):
    src = str(tmp_path_factory.mktemp("zip64src"))
    path = os.path.join(src, "big.pt")
    pkl = torch_pickle(ZIP64_ITEMS, ZIP64_META)
    with open(path, "wb") as f:
        offsets = dict(write_torch_zip(f, "big", [
            ("data.pkl", pkl), ("data/0", SMALL0), ("data/1", Hole(HUGE)),
            ("data/2", SMALL2), ("version", b"3\n")]))
    st = os.stat(path)
    try:
        m = mount_module(src)
        yield m, path, offsets
    finally:
        os.remove(path)
    assert st.st_blocks * 512 < (64 << 20), "the source was not sparse"


def test_zip64_source(zip64_env):
    _, path, offsets = zip64_env
    assert os.path.getsize(path) > HUGE
    assert offsets["big/data/2"] >= U32 and offsets["big/version"] >= U32
    with zipfile.ZipFile(path) as z:
        assert z.getinfo("big/data/1").file_size == HUGE
        assert z.read("big/data/2") == SMALL2


def _local_data_start(f, lho):
    f.seek(lho)
    h = f.read(30)
    assert h[:4] == b"PK\x03\x04"
    nl, xl = struct.unpack("<HH", h[26:30])
    return lho + 30 + nl + xl


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_zip64_view(zip64_env, view):
    m, path, offsets = zip64_env
    p = m.path(view, "big.pt")
    with zipfile.ZipFile(path) as z:
        src_infos = {i.filename: i for i in z.infolist()}
        names = z.namelist()
    with zipfile.ZipFile(p) as z:
        assert z.namelist() == names
        infos = {i.filename: i for i in z.infolist()}
        assert infos["big/data/1"].file_size == HUGE
        assert infos["big/data/1"].CRC == src_infos["big/data/1"].CRC
        # every record after data.pkl keeps its page offset
        for n in names[1:]:
            assert infos[n].header_offset % 4096 == src_infos[n].header_offset % 4096, n
        assert infos["big/data/2"].header_offset >= U32
        # small records read back, CRC checked by zipfile
        assert z.read("big/data/0") == SMALL0
        assert z.read("big/data/2") == SMALL2
        assert z.read("big/version") == b"3\n"
        pkl = z.read("big/data.pkl")
    sd = _inspect(pkl)
    want = [ckref.view_key(view, k) for k, _ in ZIP64_ITEMS]
    assert list(sd) == want
    assert {v[0] for v in sd.values()} == {"torch._utils._rebuild_tensor_v2"}
    assert [v[1][0][2] for v in sd.values()] == ["0", "1", "2"]          # storage keys
    assert [v[1][0][4] for v in sd.values()] == [n for _, n in ZIP64_ITEMS]
    assert [v[1][2] for v in sd.values()] == [(n,) for _, n in ZIP64_ITEMS]
    assert list(sd._metadata) == (["", "module"] if view == "ddp" else [""])
    assert os.stat(p).st_size - os.stat(path).st_size == \
        infos["big/data/2"].header_offset - src_infos["big/data/2"].header_offset
    # the hole: the record's last bytes are zeros, then a 24-byte descriptor
    with open(p, "rb") as f:
        start = _local_data_start(f, infos["big/data/1"].header_offset)
        f.seek(start + HUGE - 100)
        assert f.read(100) == bytes(100)
        desc = f.read(24)
        assert desc[:4] == b"PK\x07\x08"
        assert struct.unpack("<IQQ", desc[4:]) == (src_infos["big/data/1"].CRC, HUGE, HUGE)
        assert start % 64 == 0


def test_zip64_plain_changes_ddp_keeps(zip64_env):
    m, path, _ = zip64_env
    with open(path, "rb") as a, open(m.path("ddp", "big.pt"), "rb") as b:
        assert a.read(1 << 16) == b.read(1 << 16)
        a.seek(-(1 << 16), os.SEEK_END)
        b.seek(-(1 << 16), os.SEEK_END)
        assert a.read() == b.read()
    assert os.path.getsize(m.path("ddp", "big.pt")) == os.path.getsize(path)
    assert _data_pkl(m.path("plain", "big.pt")) != _data_pkl(path)


@pytest.mark.skipif(not os.environ.get("CKPTFS_E2E_HUGE"),
                    reason="set CKPTFS_E2E_HUGE=1 to torch.load the 4 GiB view")
def test_zip64_torch_load(zip64_env):
    m, _, _ = zip64_env
    sd = ckref.load(m.path("plain", "big.pt"), weights_only=True)
    assert list(sd) == ["small0", "huge", "small2"]
    assert sd["huge"].shape == (HUGE,) and sd["huge"].dtype == torch.uint8
    assert bytes(sd["small2"].numpy()) == SMALL2
    assert int(sd["huge"][-100:].sum()) == 0


# --------------------------------------------------------------------------
# custom views (-o view=...)

BARE = ckref.custom_view("bare", "model.")
PEFT = ckref.custom_view("peft", "base_model.model.")
TOLIT = ckref.custom_view("tolit", ("module.", "model."), "model.")
CUSTOM = (BARE, PEFT, TOLIT)


def _lightning():
    torch.manual_seed(40)
    m = ckmodels.make_model(40)
    opt = ckmodels.train_step(m)
    lit = ckmodels.Lit(m)
    return {
        "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.0",
        "state_dict": lit.state_dict(),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "monitor": "val_loss", "best_model_score": torch.tensor(0.5),
            "best_model_path": "/tmp/a.ckpt", "best_k_models": {"/tmp/a.ckpt": torch.tensor(0.5)},
            "kth_best_model_path": "/tmp/a.ckpt"}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"lr": 0.01, "model": "model.layer"},
    }


def _peft_bin():
    sd = ckmodels.Peft(ckmodels.make_model(41)).state_dict()
    return {k: v for k, v in sd.items()}


CUSTOM_WRITERS = {
    "lightning.ckpt": _zip(_lightning),
    "lightning_legacy.ckpt": _legacy(_lightning),
    "adapter_model.bin": _zip(_peft_bin),
    "peft_model.pt": _zip(lambda: ckmodels.Peft(ckmodels.make_model(41)).state_dict()),
    "dp.pt": _zip(lambda: _dp(ckmodels.make_model(42))),
    "collide_model.pt": _zip(lambda: {"model.w": T.clone(), "w": T.clone() + 1}),
    "adapter_model.safetensors": lambda p: _st_write(
        p, _st_tensors(["base_model.model.0.lora_A.weight", "base_model.model.0.lora_B.weight",
                        "base_model.model.3.lora_A.weight"], 11), metadata={"format": "pt"}),
}
CUSTOM_NAMES = sorted(CUSTOM_WRITERS)


def _has_custom_views():
    rc, out, err = run_cli(["--help"])
    return "view=" in out + err


@pytest.fixture(scope="module")
def custom_env(tmp_path_factory, mount_module):
    if not _has_custom_views():
        pytest.fail("ckptfs --help names no -o view= (custom views, issue #3, not in this binary)")
    src = str(tmp_path_factory.mktemp("customsrc"))
    for name, write in CUSTOM_WRITERS.items():
        write(os.path.join(src, name))
    m = mount_module(src, opts=[v.option() for v in CUSTOM])
    source = ckref.loader(src)

    return m, src, source


def test_custom_views_are_top_level_dirs(custom_env):
    m, src, _ = custom_env
    assert sorted(os.listdir(m.mnt)) == sorted(["plain", "ddp"] + [v.name for v in CUSTOM])
    for v in CUSTOM:
        assert os.path.isdir(os.path.join(m.mnt, v.name))
        assert sorted(os.listdir(os.path.join(m.mnt, v.name))) == sorted(os.listdir(src))


ALL_CUSTOM_PAIRS = [(n, v) for n in CUSTOM_NAMES if n.endswith((".pt", ".ckpt", ".bin"))
                    and n != "collide_model.pt" for v in CUSTOM + tuple(ckref.VIEWS)]


@pytest.mark.parametrize("name,view", ALL_CUSTOM_PAIRS,
                         ids=["%s-%s" % (getattr(v, "name", v), n) for n, v in ALL_CUSTOM_PAIRS])
def test_custom_view_equals_reference(custom_env, name, view):
    m, src, source = custom_env
    vname = getattr(view, "name", view)
    p = m.path(vname, name)
    ckref.assert_same(ckref.load(p), ckref.transform(source(name), view))
    if not ckref.changes(source(name), view):
        assert sha256(p) == sha256(os.path.join(src, name))


@pytest.mark.parametrize("name", ["lightning.ckpt", "lightning_legacy.ckpt"])
def test_custom_lightning_bare(custom_env, name):
    m, _, source = custom_env
    got = ckref.load(m.path("bare", name))
    src = source(name)
    model = ckmodels.make_model(40)
    ckmodels.train_step(model)
    ckref.assert_same(got["state_dict"], model.state_dict())       # _metadata included
    bare = ckmodels.make_model(95)
    bare.load_state_dict(got["state_dict"], strict=True)
    ckref.assert_same(got["callbacks"], src["callbacks"])
    cb = list(got["callbacks"].values())[0]
    assert list(cb["best_k_models"]) == ["/tmp/a.ckpt"]
    for k in src:
        if k != "state_dict":
            ckref.assert_same(got[k], src[k])
    # the built-in views leave model. keys alone (ddp adds module. in front)
    assert list(ckref.load(m.path("plain", name))["state_dict"])[0] == "model.0.weight"


def test_custom_peft(custom_env):
    m, _, _ = custom_env
    model = ckmodels.make_model(41)
    got = ckref.load(m.path("peft", "adapter_model.bin"), weights_only=True)
    ckref.assert_same(got, {k: v for k, v in model.state_dict().items()})
    model.load_state_dict(got, strict=True)


def test_custom_add_prefix(custom_env):
    m, _, _ = custom_env
    model = ckmodels.make_model(42)
    got = ckref.load(m.path("tolit", "dp.pt"), weights_only=True)
    ckref.assert_same(got, ckmodels.Lit(model).state_dict())                 # incl. ('', ...) first
    ckmodels.Lit(ckmodels.make_model(94)).load_state_dict(got, strict=True)


def test_custom_views_leave_other_prefixes(custom_env):
    """Two custom views at once, each strips only its own prefixes."""
    m, src, _ = custom_env
    for view, name in (("bare", "dp.pt"), ("peft", "dp.pt"), ("peft", "lightning.ckpt"),
                       ("bare", "adapter_model.bin"), ("bare", "adapter_model.safetensors")):
        assert sha256(m.path(view, name)) == sha256(os.path.join(src, name)), (view, name)


@pytest.mark.parametrize("view", CUSTOM + tuple(ckref.VIEWS), ids=lambda v: getattr(v, "name", v))
def test_custom_safetensors(custom_env, view):
    m, src, _ = custom_env
    name = "adapter_model.safetensors"
    vname = getattr(view, "name", view)
    f = stref.assert_view(read_bytes(m.path(vname, name)), read_bytes(os.path.join(src, name)),
                          lambda k: ckref.view_key(view, k))
    if vname == "peft":
        assert f.names == ["__metadata__", "0.lora_A.weight", "0.lora_B.weight", "3.lora_A.weight"]


def test_custom_collision(custom_env):
    m, src, _ = custom_env
    name = "collide_model.pt"
    _eio(m.path("bare", name))
    val = os.getxattr(m.path("bare", name), "user.ckptfs.error").rstrip(b"\0").decode()
    assert _names_both(val, "model.w", "w"), val
    assert _log_lines(m, name, "model.w", "w"), m.log()
    # the other views have no collision
    assert sha256(m.path("plain", name)) == sha256(os.path.join(src, name))
    assert list(ckref.load(m.path("ddp", name))) == ["module.model.w", "module.w"]
    assert list(ckref.load(m.path("peft", name))) == ["model.w", "w"]


@pytest.mark.parametrize("view", CUSTOM, ids=lambda v: v.name)
def test_custom_format_xattr(custom_env, view):
    m, _, _ = custom_env
    for name, fmt in (("dp.pt", b"torch-zip"), ("lightning_legacy.ckpt", b"torch-legacy"),
                      ("adapter_model.safetensors", b"safetensors")):
        assert os.getxattr(m.path(view.name, name), "user.ckptfs.format").rstrip(b"\0") == fmt


# -- the option's syntax ---------------------------------------------------------

def _mount_opts(opts, src, mnt):
    """`ckptfs mount` (daemonizing: returns once up) with -o options."""
    args = ["mount"]
    for o in opts:
        args += ["-o", o]
    return run_cli(args + [src, mnt], timeout=30)


BAD_VIEW_OPTS = {
    "no_rule": ["view=x"],
    "builtin_plain": ["view=plain:strip=a."],
    "builtin_ddp": ["view=ddp:strip=module."],
    "no_dot": ["view=x:strip=model"],
    "add_no_dot": ["view=x:strip=model.:add=module"],
    "empty_prefix": ["view=x:strip="],
    "unknown_rule": ["view=x:drop=model."],
    "bad_name": ["view=a/b:strip=model."],
    "dotdot_name": ["view=..:strip=model."],
    "empty_name": ["view=:strip=model."],
    "same_name_twice": ["view=x:strip=a.", "view=x:strip=b."],
    "fourteen_views": ["view=v%d:strip=p%d." % (i, i) for i in range(14)],
}


@pytest.mark.parametrize("case", sorted(BAD_VIEW_OPTS))
def test_view_option_refused(dirs, case):
    need_binary()
    src, mnt = dirs
    opts = BAD_VIEW_OPTS[case]
    for o in opts:
        if case not in ("same_name_twice", "fourteen_views"):
            with pytest.raises(ValueError):
                ckref.parse_view(o)
    rc, out, err = _mount_opts(opts, src, mnt)
    assert not mounted_at(mnt), "mounted with %r" % opts
    assert rc == 2, "exit %d for %r: %s" % (rc, opts, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, "want one line, got: %r" % err


def test_view_option_thirteen_views(dirs):
    need_binary()
    src, mnt = dirs
    views = [ckref.custom_view("v%d" % i, "p%d." % i) for i in range(ckref.MAX_CUSTOM_VIEWS)]
    rc, out, err = _mount_opts([v.option() for v in views], src, mnt)
    assert rc == 0, err
    try:
        assert sorted(os.listdir(mnt)) == sorted(["plain", "ddp"] + [v.name for v in views])
        assert read_bytes(os.path.join(mnt, "v12", "hello.txt")) == b"hi\n"
    finally:
        run_cli(["umount", mnt], timeout=30)


def test_view_option_comma_list(dirs):
    """Several views in one -o, as mount(8) style comma lists go."""
    need_binary()
    src, mnt = dirs
    rc, out, err = _mount_opts([BARE.option() + "," + PEFT.option()], src, mnt)
    assert rc == 0, err
    try:
        assert sorted(os.listdir(mnt)) == ["bare", "ddp", "peft", "plain"]
    finally:
        run_cli(["umount", mnt], timeout=30)
