"""Views are valid zips and valid checkpoints for every reader."""

import mmap
import os
import re
import struct
import subprocess
import zipfile

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
from conftest import read_bytes, sha256


def _many():
    torch.manual_seed(11)
    d = {"module.big": torch.randn(300000), "module.zero": torch.empty(0),
         "module.half": torch.randn(7, 3).half(), "module.noncontig": torch.randn(4, 5).t(),
         "module.long": torch.arange(10)}
    for i in range(12):
        d["module.t%d" % i] = torch.randn(i + 1)
    return d


def _wo_friendly():
    """Training-like, without floats (1.13's weights_only refuses BINFLOAT)."""
    model = ckmodels.make_model(0)
    torch.manual_seed(1)
    return {"model": nn.DataParallel(model).state_dict(), "ema": model.state_dict(),
            "epoch": 3, "note": ["0", "bias", ""],
            "optimizer": {"state": {0: {"step": torch.tensor(1), "exp_avg": torch.randn(8, 6)}},
                          "param_groups": [{"params": [0], "amsgrad": False}]}}


FILES = {
    "train.pt": ckmodels.training_checkpoint,                         # both views rewrite
    "train_wo.pt": _wo_friendly,                                      # both, weights_only ok
    "many.pt": _many,                                                 # >10 storages, 1.2 MB, size 0
    "plain.pt": lambda: ckmodels.make_model(0).state_dict(),          # ddp rewrites
}
# read by nothing before test_size_exact_before_read: (file, view that rewrites it)
PROBES = {"probe_ddp_form.pt": "plain", "probe_plain_form.pt": "ddp"}

PAIRS = [(f, v) for f in FILES for v in ckref.VIEWS]
IDS = ["%s-%s" % (v, f) for f, v in PAIRS]
TENSOR_RECORD = re.compile(r"^[^/]+/data/[^/]+$")


@pytest.fixture(scope="module")
def env(module_src, mount_module):
    src = module_src
    for name, build in FILES.items():
        torch.save(build(), os.path.join(src, name))
    torch.save(nn.DataParallel(ckmodels.make_model(3)).state_dict(),
               os.path.join(src, "probe_ddp_form.pt"))
    torch.save(ckmodels.make_model(3).state_dict(), os.path.join(src, "probe_plain_form.pt"))
    shas = {n: sha256(os.path.join(src, n)) for n in os.listdir(src)}
    m = mount_module(src)
    yield m, src, shas
    for n, h in shas.items():
        assert sha256(os.path.join(src, n)) == h, "source %s modified" % n


def records(path):
    """[(name, local header offset, data offset, size)] in central-directory order."""
    out = []
    with open(path, "rb") as f, zipfile.ZipFile(path) as z:
        for info in z.infolist():
            f.seek(info.header_offset)
            hdr = f.read(30)
            assert hdr[:4] == b"PK\x03\x04", "no local header for %s" % info.filename
            nlen, xlen = struct.unpack("<HH", hdr[26:30])
            out.append((info.filename, info.header_offset,
                        info.header_offset + 30 + nlen + xlen, info.file_size))
    return out


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_testzip(env, name, view):
    m, _, _ = env
    with zipfile.ZipFile(m.path(view, name)) as z:
        assert z.testzip() is None


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_unzip_t(env, name, view):
    m, _, _ = env
    r = subprocess.run(["unzip", "-t", m.path(view, name)], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout.decode(errors="replace")


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_zip64_end_records(env, name, view):
    m, _, _ = env
    data = read_bytes(m.path(view, name))
    eocd = data.rfind(b"PK\x05\x06")
    assert eocd >= 0 and eocd + 22 == len(data), "EOCD not at the end"
    loc = eocd - 20
    assert data[loc:loc + 4] == b"PK\x06\x07", "no zip64 locator before EOCD"
    z64 = struct.unpack("<Q", data[loc + 8:loc + 16])[0]
    assert data[z64:z64 + 4] == b"PK\x06\x06", "zip64 EOCD not where the locator says"
    n1, n2, cd_size, cd_off = struct.unpack("<QQQQ", data[z64 + 24:z64 + 56])
    with zipfile.ZipFile(m.path(view, name)) as z:
        n = len(z.infolist())
    assert n1 == n2 == n
    assert cd_off + cd_size == z64
    assert data[cd_off:cd_off + 4] == b"PK\x01\x02"


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_record_names_and_order_kept(env, name, view):
    m, src, _ = env
    assert [r[0] for r in records(m.path(view, name))] == \
        [r[0] for r in records(os.path.join(src, name))]


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_tensor_data_alignment(env, name, view):
    m, src, _ = env
    srcrec = {r[0]: r for r in records(os.path.join(src, name))}
    checked = 0
    for rname, _, off, size in records(m.path(view, name)):
        if not TENSOR_RECORD.match(rname):
            continue
        soff = srcrec[rname][2]
        assert off % 4096 == soff % 4096, "%s at %d, source at %d" % (rname, off, soff)
        if soff % 64 == 0:
            assert off % 64 == 0, rname
        assert size == srcrec[rname][3]
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_tensor_bytes_kept(env, name, view):
    m, src, _ = env
    with zipfile.ZipFile(m.path(view, name)) as zv, zipfile.ZipFile(os.path.join(src, name)) as zs:
        for info in zs.infolist():
            if TENSOR_RECORD.match(info.filename) or info.filename.endswith("/version"):
                assert zv.read(info.filename) == zs.read(info.filename), info.filename


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_size_matches_read(env, name, view):
    m, _, _ = env
    p = m.path(view, name)
    st = os.stat(p)
    with open(p, "rb") as f:
        data = f.read()
        assert os.fstat(f.fileno()).st_size == st.st_size
    assert len(data) == st.st_size


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_mmap_equals_read(env, name, view):
    m, _, _ = env
    p = m.path(view, name)
    data = read_bytes(p)
    with open(p, "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
            assert len(mm) == len(data)
            assert mm[:] == data


@pytest.mark.parametrize("name,view", PAIRS, ids=IDS)
def test_weights_only_load(env, name, view):
    m, src, _ = env
    try:
        ckref.load(os.path.join(src, name), weights_only=True)
    except Exception as e:
        pytest.skip("source does not load with weights_only=True in this torch: %s"
                    % str(e).split("error: ")[-1][:60])
    got = ckref.load(m.path(view, name), weights_only=True)
    # (what it must contain is test_views' business; here: both unpicklers agree)
    ckref.assert_same(got, ckref.load(m.path(view, name)))


@pytest.mark.parametrize("name,view", sorted(PROBES.items()), ids=sorted(PROBES))
def test_size_exact_before_read(env, name, view):
    m, src, _ = env
    p = m.path(view, name)
    size = os.stat(p).st_size          # first access to this view file
    data = read_bytes(p)
    assert len(data) == size
    assert data != read_bytes(os.path.join(src, name)), "view was expected to be rewritten"


def test_sources_unchanged(env):
    m, src, shas = env
    for v in ckref.VIEWS:           # read everything once more
        for n in shas:
            read_bytes(m.path(v, n))
    for n, h in shas.items():
        assert sha256(os.path.join(src, n)) == h, n
