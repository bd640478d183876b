"""Real checkpoints from public repositories (shared/corpus, MANIFEST.tsv)
through both views.

* format `zip`: the view, loaded, equals the reference transform of the
  source, loaded; where the reference changes nothing, the view is
  byte-identical.  Files whose classes we cannot import (sklearn, dill,
  transformers, numpy 2 pickles) are loaded with stub classes for the missing
  globals (ckref.load_stub): a full structural check all the same, since the
  views never look inside such objects.
* format `zip/torchscript`: byte-identical, never loaded.
* format `legacy`: the view, loaded, equals the reference transform of the
  source, loaded (stubs where needed), weights_only where the source loads
  with it; only the object pickle (#4 of 5) differs from the source, else
  byte identity.
* format `safetensors`: read with stref (a spec-following reader that
  validates like the Rust one): names renamed in header order,
  `__metadata__` and every other header byte kept, tensor bytes identical,
  header space-padded to a multiple of 8; byte identity where no name
  changes.
* custom views (`-o view=bare:strip=model.`, `-o view=peft:strip=
  base_model.model.`) over the Lightning and PEFT files and those with such
  prefixes.
* The corpus itself is never modified (sha256 against MANIFEST).
"""

import csv
import os
import zipfile

import pytest

import ckref
import stref
from conftest import CORPUS, read_bytes, run_cli, sha256

MANIFEST = os.path.join(CORPUS, "MANIFEST.tsv")


def _rows():
    if not os.path.exists(MANIFEST):
        return []
    with open(MANIFEST, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


ROWS = _rows()
BY_FORMAT = {}
for _r in ROWS:
    BY_FORMAT.setdefault(_r["format"], []).append(_r["file"])
ZIP = sorted(BY_FORMAT.get("zip", []))
SCRIPT = sorted(BY_FORMAT.get("zip/torchscript", []))
LEGACY = sorted(BY_FORMAT.get("legacy", []))
SAFETENSORS = sorted(BY_FORMAT.get("safetensors", []))
OTHER = sorted(f for fmt, fs in BY_FORMAT.items()
               if fmt not in ("zip", "zip/torchscript", "legacy", "safetensors") for f in fs)
FORMAT = {r["file"]: r["format"] for r in ROWS}
_PREFIXES = {r["file"]: r["prefixes"] for r in ROWS}
LOADS_FULLY = {r["file"] for r in ROWS if r["torch_load_ok"].startswith("yes")}

pytestmark = pytest.mark.skipif(not ROWS, reason="no corpus at %s" % CORPUS)


def _pairs(files):
    return [(f, v) for f in files for v in ckref.VIEWS]


def _ids(pairs):
    return ["%s-%s" % (v, f) for f, v in pairs]


@pytest.fixture(scope="module")
def env(mount_module):
    m = mount_module(CORPUS)
    source = ckref.loader(CORPUS, _load)

    return m, source


def _load(path, name):
    if name in LOADS_FULLY:
        return ckref.load(path)
    return ckref.load_stub(path)


@pytest.mark.parametrize("name,view", _pairs(ZIP), ids=_ids(_pairs(ZIP)))
def test_corpus_view_equals_reference(env, name, view):
    m, source = env
    src = source(name)
    got = _load(m.path(view, name), name)
    ckref.assert_same(got, ckref.transform(src, view))


@pytest.mark.parametrize("name,view", _pairs(ZIP), ids=_ids(_pairs(ZIP)))
def test_corpus_unchanged_view_is_byte_identical(env, name, view):
    m, source = env
    if ckref.changes(source(name), view):
        pytest.skip("the %s view rewrites this file" % view)
    assert sha256(m.path(view, name)) == sha256(os.path.join(CORPUS, name))


@pytest.mark.parametrize("name,view", _pairs(ZIP), ids=_ids(_pairs(ZIP)))
def test_corpus_view_is_valid_zip(env, name, view):
    m, _ = env
    p = m.path(view, name)
    with zipfile.ZipFile(p) as z:
        assert z.testzip() is None
        names = z.namelist()
    with zipfile.ZipFile(os.path.join(CORPUS, name)) as z:
        assert names == z.namelist()
    assert os.stat(p).st_size == len(read_bytes(p))


@pytest.mark.parametrize("name,view", _pairs(ZIP), ids=_ids(_pairs(ZIP)))
def test_corpus_weights_only_where_source_loads(env, name, view):
    m, _ = env
    try:
        ckref.load(os.path.join(CORPUS, name), weights_only=True)
    except Exception as e:
        why = [w for w in str(e).split("error: ")[1:]] or [type(e).__name__]
        pytest.skip("source does not load with weights_only=True: %s" % why[-1][:80])
    ckref.load(m.path(view, name), weights_only=True)


@pytest.mark.parametrize("name,view", _pairs(SCRIPT), ids=_ids(_pairs(SCRIPT)))
def test_corpus_torchscript_byte_identical(env, name, view):
    m, _ = env
    assert sha256(m.path(view, name)) == sha256(os.path.join(CORPUS, name))


@pytest.mark.parametrize("name,view", _pairs(LEGACY), ids=_ids(_pairs(LEGACY)))
def test_corpus_legacy_view_equals_reference(env, name, view):
    m, source = env
    got = _load(m.path(view, name), name)
    ckref.assert_same(got, ckref.transform(source(name), view))


@pytest.mark.parametrize("name,view", _pairs(LEGACY), ids=_ids(_pairs(LEGACY)))
def test_corpus_legacy_layout(env, name, view):
    """Only pickle #4 (the object) may change: magic, protocol version,
    sys_info, the storage key list and the raw storages are the source's;
    where the reference changes nothing the view is the source."""
    m, source = env
    src, got = read_bytes(os.path.join(CORPUS, name)), read_bytes(m.path(view, name))
    assert os.stat(m.path(view, name)).st_size == len(got)
    if not ckref.changes(source(name), view):
        assert got == src
        return
    se, ge = ckref.pickle_ends(src, 4), ckref.pickle_ends(got, 4)
    assert got[:ge[2]] == src[:se[2]], "pickles #1-#3 differ"
    assert got[ge[3]:] == src[se[3]:], "storage keys or raw storages differ"
    assert got[ge[2]:ge[3]] != src[se[2]:se[3]]


@pytest.mark.parametrize("name,view", _pairs(LEGACY), ids=_ids(_pairs(LEGACY)))
def test_corpus_legacy_weights_only_where_source_loads(env, name, view):
    m, _ = env
    try:
        ckref.load(os.path.join(CORPUS, name), weights_only=True)
    except Exception as e:
        pytest.skip("source does not load with weights_only=True: %s" % str(e)[-60:])
    ckref.load(m.path(view, name), weights_only=True)


@pytest.mark.parametrize("name,view", _pairs(SAFETENSORS), ids=_ids(_pairs(SAFETENSORS)))
def test_corpus_safetensors_view(env, name, view):
    m, _ = env
    src = read_bytes(os.path.join(CORPUS, name))
    got = read_bytes(m.path(view, name))
    assert os.stat(m.path(view, name)).st_size == len(got)
    stref.assert_view(got, src, lambda k: ckref.view_key(view, k))


@pytest.mark.parametrize("name,view", _pairs(LEGACY + SAFETENSORS),
                         ids=_ids(_pairs(LEGACY + SAFETENSORS)))
def test_corpus_format_xattr(env, name, view):
    m, _ = env
    fmt = {"legacy": b"torch-legacy", "safetensors": b"safetensors"}[FORMAT[name]]
    assert os.getxattr(m.path(view, name), "user.ckptfs.format").rstrip(b"\0") == fmt


QUANTIZED_SD = "q8demo-sd__model_int8.pth"


@pytest.mark.skipif(QUANTIZED_SD not in FORMAT, reason="not in this corpus")
def test_corpus_quantized_state_dict_gets_module_prefix(env):
    """A quantized model's state_dict() (qint8 tensors, dtype values) is a
    state dict by its `_metadata` (issue #10): ddp/ gives what
    DataParallel(model).state_dict() holds, its keys checked with torch's
    own inverse, consume_prefix_in_state_dict_if_present (whose 1.13
    version leaves `_metadata` alone); plain/ is the file."""
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
    m, source = env
    src = source(QUANTIZED_SD)
    ddp = ckref.load(m.path("ddp", QUANTIZED_SD))
    assert list(ddp) == ["module." + k for k in src]
    # DataParallel's metadata: its own entry, then the model's under "module"
    assert list(ddp._metadata.items()) == [("", {"version": 1})] + [
        ("module" + ("." + k if k else ""), v) for k, v in src._metadata.items()]
    consume_prefix_in_state_dict_if_present(ddp, "module.")
    # torch's function re-inserts keys in sorted order: compare by name
    assert sorted(ddp) == sorted(src)
    for k in src:
        ckref.assert_same(ddp[k], src[k])
    assert sha256(m.path("plain", QUANTIZED_SD)) == sha256(os.path.join(CORPUS, QUANTIZED_SD))


@pytest.mark.parametrize("name", OTHER)
def test_corpus_other_formats(name):
    pytest.skip("no view rules for format %r yet" % FORMAT[name])


# -- custom views over real files (issue #3) -----------------------------------

CUSTOM = (ckref.custom_view("bare", "model."), ckref.custom_view("peft", "base_model.model."))
CUSTOM_FILES = sorted(f for f in LEGACY + ZIP + SAFETENSORS
                      if any(p in _PREFIXES.get(f, "") for p in ("model.", "base_model.model."))
                      or "lightning" in f or f.startswith(("pl-", "peft-")))


@pytest.fixture(scope="module")
def custom_env(mount_module):
    rc, out, err = run_cli(["--help"])
    if "view=" not in out + err:
        pytest.fail("ckptfs --help names no -o view= (custom views, issue #3)")
    return mount_module(CORPUS, opts=[v.option() for v in CUSTOM])


@pytest.mark.parametrize("name,view", [(f, v) for f in CUSTOM_FILES for v in CUSTOM],
                         ids=["%s-%s" % (v.name, f) for f in CUSTOM_FILES for v in CUSTOM])
def test_corpus_custom_view(env, custom_env, name, view):
    _, source = env
    m = custom_env
    p = m.path(view.name, name)
    if FORMAT[name] == "safetensors":
        stref.assert_view(read_bytes(p), read_bytes(os.path.join(CORPUS, name)),
                          lambda k: ckref.view_key(view, k))
        return
    src = source(name)
    ckref.assert_same(_load(p, name), ckref.transform(src, view))
    if not ckref.changes(src, view):
        assert sha256(p) == sha256(os.path.join(CORPUS, name))


def test_corpus_unmodified(env):
    m, _ = env
    for r in ROWS:
        assert sha256(os.path.join(CORPUS, r["file"])) == r["sha256"], r["file"]
