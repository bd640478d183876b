"""Real checkpoints from public repositories (shared/corpus, MANIFEST.tsv)
through both views.

* format `zip`: the view, loaded, equals the reference transform of the
  source, loaded; where the reference changes nothing, the view is
  byte-identical.  Files whose classes we cannot import (sklearn, dill,
  transformers, numpy 2 pickles) are loaded with stub classes for the missing
  globals (ckref.load_stub): a full structural check all the same, since the
  views never look inside such objects.
* format `zip/torchscript`: byte-identical, never loaded.
* legacy and safetensors: skipped here (issue #3).
* The corpus itself is never modified (sha256 against MANIFEST).
"""

import csv
import os
import zipfile

import pytest

import ckref
from conftest import CORPUS, read_bytes, sha256

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
OTHER = sorted(f for fmt, fs in BY_FORMAT.items() if fmt not in ("zip", "zip/torchscript")
               for f in fs)
LOADS_FULLY = {r["file"] for r in ROWS if r["torch_load_ok"].startswith("yes")}

pytestmark = pytest.mark.skipif(not ROWS, reason="no corpus at %s" % CORPUS)


def _pairs(files):
    return [(f, v) for f in files for v in ckref.VIEWS]


def _ids(pairs):
    return ["%s-%s" % (v, f) for f, v in pairs]


@pytest.fixture(scope="module")
def env(mount_module):
    m = mount_module(CORPUS)
    cache = {}

    def source(name):
        if name not in cache:
            cache[name] = _load(os.path.join(CORPUS, name), name)
        return cache[name]

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


@pytest.mark.parametrize("name", OTHER)
def test_corpus_legacy_and_safetensors(name):
    pytest.skip("legacy/safetensors views: issue 3")


def test_corpus_unmodified(env):
    m, _ = env
    for r in ROWS:
        assert sha256(os.path.join(CORPUS, r["file"])) == r["sha256"], r["file"]
