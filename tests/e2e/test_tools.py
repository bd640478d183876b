"""ckptfs inspect, convert and cat: the core without FUSE (issue 11).

* inspect --json is checked against torch's own view of every corpus file:
  the state dicts the reference walk (ckref.state_dicts) finds in what
  torch.load returns, their paths, key names in order, key counts; the
  pickle protocol and format against MANIFEST.tsv; the view effects against
  the reference key rules; view sizes against the mounted views.
* convert and cat write exactly the bytes of the mounted view, for every
  corpus file and view; a converted checkpoint loads with strict=True.
"""

import json
import os
import pty
import subprocess

import pytest
import torch

import ckmodels
import ckref
import stref
from conftest import CKPTFS, CORPUS, need_binary, read_bytes, run_cli, sha256
from test_corpus import FORMAT, LEGACY, ROWS, SAFETENSORS, SCRIPT, ZIP, _load

FILES = sorted(ZIP + LEGACY + SAFETENSORS + SCRIPT)
PICKLED = set(ZIP + LEGACY)
FORMATS = {"zip": "torch-zip", "legacy": "torch-legacy", "safetensors": "safetensors",
           "zip/torchscript": "torchscript"}
PROTOCOL = {r["file"]: r["pickle_protocol"] for r in ROWS}
VIEWS = ("plain", "ddp")

pytestmark = pytest.mark.skipif(not ROWS, reason="no corpus at %s" % CORPUS)


def inspect_json(*paths, opts=()):
    rc, out, err = run_cli(["inspect", "--json"] + list(opts) + list(paths), timeout=120)
    docs = [json.loads(line) for line in out.splitlines()]
    return rc, docs, err


def path_text(steps):
    return "".join("[%d]" % s if type(s) is int else "[%r]" % (s,) for s in steps)


@pytest.fixture(scope="module")
def source():
    return ckref.loader(CORPUS, _load)


@pytest.fixture(scope="module")
def corpus_mount(mount_module):
    return mount_module(CORPUS)


@pytest.mark.parametrize("name", FILES)
def test_inspect_json_matches_torch(name, source):
    need_binary()
    rc, docs, err = inspect_json(os.path.join(CORPUS, name))
    assert rc == 0, err
    (doc,) = docs
    assert doc["format"] == FORMATS[FORMAT[name]]
    assert doc["size"] == os.path.getsize(os.path.join(CORPUS, name))
    if name in PICKLED:
        assert doc["pickle_protocol"] == int(PROTOCOL[name])
        want = [(p, list(sd.keys())) for p, sd in ckref.state_dicts(source(name))]
    elif FORMAT[name] == "safetensors":
        assert doc["pickle_protocol"] is None
        f = stref.read(os.path.join(CORPUS, name))
        want = [("", [n for n in f.names if n != "__metadata__"])]
    else:  # TorchScript: never parsed
        want = []
    got = [(path_text(sd["path"]), sd["keys"]) for sd in doc["state_dicts"]]
    assert sorted(got) == sorted(want)
    for sd in doc["state_dicts"]:
        keys = sd["keys"]
        assert sd["key_count"] == len(keys)
        assert sd["examples"] == keys[:3]
        for w in ("module.", "_orig_mod.", "model.", "base_model.model."):
            assert sd["wrapper_prefixes"].get(w, 0) == sum(k.startswith(w) for k in keys), w
        effects = {e["view"]: e for e in sd["views"]}
        assert sorted(effects) == sorted(VIEWS)
        for v in VIEWS:
            renamed = [(k, ckref.view_key(v, k)) for k in keys if ckref.view_key(v, k) != k]
            assert effects[v]["renamed"] == len(renamed), v
            assert effects[v]["example"] == (list(renamed[0]) if renamed else None), v


def test_inspect_prefixes_and_suggestions_match_manifest():
    """MANIFEST's prefixes column ('where:prefix=n/total'), written by whoever
    built the corpus, against inspect's wrapper prefixes; a view= suggested
    where every key carries model. or base_model.model."""
    need_binary()
    rows = [r for r in ROWS if "=" in r["prefixes"]]
    assert rows
    rc, docs, err = inspect_json(*[os.path.join(CORPUS, r["file"]) for r in rows])
    assert rc == 0, err
    for r, doc in zip(rows, docs):
        where, claim = r["prefixes"].split(":", 1)
        prefix, counts = claim.split("=")
        n, total = map(int, counts.split("/"))
        (sd,) = [s for s in doc["state_dicts"] if path_text(s["path"]) == ("" if where == "<root>" else "[%r]" % where)]
        assert sd["wrapper_prefixes"].get(prefix) == n and sd["key_count"] == total, r["file"]
        want = {"model.": "bare:strip=model.", "base_model.model.": "peft:strip=base_model.model."}.get(prefix)
        assert sd["suggested_view"] == (want if n == total else None), r["file"]


def test_inspect_custom_view_and_text(tmp_path):
    need_binary()
    name = "peft-bin__adapter_model.bin"
    path = os.path.join(CORPUS, name)
    rc, docs, err = inspect_json(path, opts=["-o", "view=peft:strip=base_model.model."])
    assert rc == 0, err
    (sd,) = docs[0]["state_dicts"]
    effect = {e["view"]: e for e in sd["views"]}["peft"]
    assert effect["renamed"] == sd["key_count"] == 49
    assert effect["example"][1] == effect["example"][0][len("base_model.model."):]
    assert [v["view"] for v in docs[0]["views"]] == ["plain", "ddp", "peft"]
    rc, out, err = run_cli(["inspect", "-o", "view=peft:strip=base_model.model.", path])
    assert rc == 0, err
    for text in ("torch-zip", "pickle protocol 2", "49 keys", "base_model.model. on 49 of 49",
                 "view peft: renames 49 keys", "suggested: -o view=peft:strip=base_model.model.", "peft/:"):
        assert text in out, (text, out)


def test_inspect_error_names_file_and_offset(tmp_path):
    need_binary()
    raw = read_bytes(os.path.join(CORPUS, "cifar-t7-dp__ckpt.t7"))
    bad = tmp_path / "cut.t7"
    bad.write_bytes(raw[:5000])
    good = os.path.join(CORPUS, "melgpt__ckpt.pt")
    rc, docs, err = inspect_json(str(bad), good)
    assert rc == 1
    assert str(bad) in err and "offset" in err, err
    assert "offset" in docs[0]["error"] and "error" not in docs[1]
    assert docs[1]["state_dicts"][0]["key_count"] == 4


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("name", FILES)
def test_convert_and_cat_equal_the_mounted_view(name, view, corpus_mount, tmp_path):
    mounted = corpus_mount.path(view, name)
    out = str(tmp_path / name)
    rc, _, err = run_cli(["convert", "--view", view, os.path.join(CORPUS, name), out], timeout=120)
    assert rc == 0, err
    assert sha256(out) == sha256(mounted)
    assert os.stat(out).st_mode & 0o777 == os.stat(os.path.join(CORPUS, name)).st_mode & 0o777
    cat = subprocess.run([CKPTFS, "cat", "--view", view, os.path.join(CORPUS, name)],
                         capture_output=True, timeout=120)
    assert cat.returncode == 0 and cat.stdout == read_bytes(mounted)
    rc, docs, err = inspect_json(os.path.join(CORPUS, name))
    size = {v["view"]: v["size"] for v in docs[0]["views"]}
    assert size[view] == os.stat(mounted).st_size
    assert os.listdir(str(tmp_path)) == [name]  # no temporary file left


def test_convert_recursive_equals_the_mounted_tree(corpus_mount, tmp_path):
    out = tmp_path / "out"
    rc, _, err = run_cli(["convert", "-r", "--view", "plain", CORPUS, str(out)], timeout=600)
    assert rc == 0, err
    assert sorted(os.listdir(str(out))) == sorted(os.listdir(corpus_mount.path("plain")))
    for name in os.listdir(str(out)):
        assert sha256(str(out / name)) == sha256(corpus_mount.path("plain", name)), name


def _save(obj, path):
    torch.save(obj, str(path))
    return str(path)


def test_converted_file_loads_strict(tmp_path):
    """A DDP checkpoint converted to plain loads into the bare model, and a
    plain one converted to ddp into the wrapped model, with strict=True."""
    need_binary()
    model = ckmodels.make_model(seed=3)
    wrapped = torch.nn.DataParallel(ckmodels.make_model(seed=4))
    ddp_ck = _save({"epoch": 3, "model": torch.nn.DataParallel(model).state_dict()}, tmp_path / "ddp.pth")
    plain_ck = _save({"model": model.state_dict()}, tmp_path / "plain.pth")
    for src, view, target in ((ddp_ck, "plain", ckmodels.make_model(seed=5)), (plain_ck, "ddp", wrapped)):
        out = str(tmp_path / ("out-" + view + ".pth"))
        rc, _, err = run_cli(["convert", "--view", view, src, out])
        assert rc == 0, err
        target.load_state_dict(torch.load(out)["model"], strict=True)
        got = target.module.state_dict() if view == "ddp" else target.state_dict()
        for k, v in model.state_dict().items():
            assert torch.equal(got[k], v), k


def test_convert_never_overwrites_without_force(tmp_path):
    need_binary()
    src = os.path.join(CORPUS, "lenet-dp__ckpt.pth")
    out = tmp_path / "x.pth"
    out.write_bytes(b"keep me")
    rc, _, err = run_cli(["convert", "--view", "plain", src, str(out)])
    assert rc == 1 and "exists" in err and "-f" in err, err
    assert out.read_bytes() == b"keep me"
    rc, _, err = run_cli(["convert", "-f", "--view", "plain", src, str(out)])
    assert rc == 0, err
    assert out.read_bytes() == subprocess.run([CKPTFS, "cat", "--view", "plain", src],
                                              capture_output=True, check=True).stdout
    assert sorted(os.listdir(str(tmp_path))) == ["x.pth"]


def test_convert_of_a_broken_checkpoint_leaves_nothing(tmp_path):
    need_binary()
    bad = tmp_path / "cut.pth"
    bad.write_bytes(read_bytes(os.path.join(CORPUS, "lenet-dp__ckpt.pth"))[:3000])
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run_cli(["convert", "--view", "plain", str(bad), str(out / "x.pth")])
    assert rc == 1 and str(bad) in err, err
    assert os.listdir(str(out)) == []


def test_convert_needs_a_view():
    need_binary()
    rc, _, err = run_cli(["convert", "a", "b"])
    assert rc == 2 and "--view" in err
    rc, _, err = run_cli(["cat", "--view", "nosuch", "a"])
    assert rc == 2 and "nosuch" in err


def test_convert_progress_bar_on_a_terminal(tmp_path):
    need_binary()
    master, slave = pty.openpty()
    out = str(tmp_path / "x.t7")
    p = subprocess.Popen([CKPTFS, "convert", "--view", "plain", os.path.join(CORPUS, "cifar-t7-dp__ckpt.t7"), out],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    text = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        text += chunk
    assert p.wait(timeout=60) == 0
    os.close(master)
    assert b"100%" in text and b"\r" in text, text
    rc, _, err = run_cli(["convert", "--view", "plain", os.path.join(CORPUS, "cifar-t7-dp__ckpt.t7"),
                          str(tmp_path / "y.t7")])
    assert rc == 0 and "%" not in err  # not a terminal: no bar
