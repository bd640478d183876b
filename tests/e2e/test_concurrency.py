"""Concurrency (issue #4): many reader processes over every corpus file in
both views give the bytes a lone reader gets; many opens of one cold file
build its view once."""

import collections
import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import ckref
from conftest import CORPUS, sha256

READERS = 16
ROUNDS = 3
OPENERS = 32

# A reader process: no torch, starts fast.  Reads every path ROUNDS times in
# its own random order with random read sizes, dropping the file's cached
# pages first half of the time so that reads reach the daemon.
WORKER = r"""
import hashlib, json, os, random, sys
cfg = json.load(sys.stdin)
rnd = random.Random(cfg["seed"])
sizes = (1, 7, 100, 4095, 4096, 4097, 65536, 131072, 1 << 20)
out = {"hashes": {}, "errors": [], "reads": 0}
for _ in range(cfg["rounds"]):
    paths = list(cfg["paths"])
    rnd.shuffle(paths)
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
            try:
                if rnd.random() < 0.5:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                h = hashlib.sha256()
                while True:
                    n = rnd.choice(sizes) if rnd.random() < 0.7 else rnd.randint(1, 300000)
                    b = os.read(fd, n)
                    out["reads"] += 1
                    if not b:
                        break
                    h.update(b)
            finally:
                os.close(fd)
            out["hashes"].setdefault(p, []).append(h.hexdigest())
        except OSError as e:
            out["errors"].append([p, e.errno, e.strerror])
json.dump(out, sys.stdout)
"""


def _corpus_files():
    if not os.path.isdir(CORPUS):
        return []
    return sorted(n for n in os.listdir(CORPUS)
                  if n not in ("MANIFEST.tsv", "README.md") and
                  os.path.isfile(os.path.join(CORPUS, n)))


@pytest.mark.skipif(not _corpus_files(), reason="no corpus at %s" % CORPUS)
def test_parallel_readers_see_serial_bytes(mount_factory):
    m = mount_factory(CORPUS)
    names = _corpus_files()
    paths = [m.path(v, n) for n in names for v in ckref.VIEWS]
    # the serial truth, before any concurrency
    serial, serial_errors = {}, []
    for p in paths:
        try:
            serial[p] = sha256(p)
        except OSError as e:
            serial_errors.append((p, e.errno))
    assert not serial_errors, "serial reads failed: %s" % serial_errors
    # a fresh mount: the readers race to build every view, too
    m2 = mount_factory(CORPUS, name="fresh")
    paths2 = [m2.path(v, n) for n in names for v in ckref.VIEWS]
    to_serial = dict(zip(paths2, paths))
    procs = []
    for i in range(READERS):
        p = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(p)
    outs = []
    # feed all first, then collect: the readers start together
    for i, p in enumerate(procs):
        p.stdin.write(json.dumps({"seed": 1000 + i, "rounds": ROUNDS, "paths": paths2}).encode())
        p.stdin.close()
    for p in procs:
        out, err = p.stdout.read(), p.stderr.read()
        assert p.wait(timeout=120) == 0, err.decode(errors="replace")
        outs.append(json.loads(out))
    checked, reads, mismatches, errors = 0, 0, [], []
    for o in outs:
        reads += o["reads"]
        errors += o["errors"]
        for p, hs in o["hashes"].items():
            for h in hs:
                checked += 1
                if h != serial[to_serial[p]]:
                    mismatches.append(p)
    nbytes = sum(os.path.getsize(p) for p in paths) * READERS * ROUNDS
    print("# %d readers x %d rounds x %d view files: %d whole-file reads checked "
          "(%d read calls, %.1f GiB), %d mismatches, %d errors"
          % (READERS, ROUNDS, len(paths2), checked, reads, nbytes / 2.0 ** 30,
             len(mismatches), len(errors)))
    assert not errors, "errors: %s" % errors[:10]
    assert not mismatches, "mismatching sha256: %s" % collections.Counter(mismatches)
    assert checked == READERS * ROUNDS * len(paths2)
    assert m.proc.poll() is None and m2.proc.poll() is None


# --------------------------------------------------------------------------
# one build for many cold opens

def _builds(m):
    return int(os.getxattr(m.mnt, "user.ckptfs.builds").rstrip(b"\0"))


def _big_ddp_state_dict(n=3000):
    """Many keys: a pickle of some 200 KiB, whose view takes a while to
    build, so that concurrent requests overlap the build."""
    return collections.OrderedDict(
        ("module.block%d.weight" % i, torch.full((2,), float(i))) for i in range(n))


def _burst(paths):
    """Opens paths[i] from thread i, all released by one barrier; reads a
    byte from each and returns what each saw."""
    barrier = threading.Barrier(len(paths))
    res = [None] * len(paths)

    def go(i):
        barrier.wait()
        try:
            with open(paths[i], "rb") as f:
                res[i] = f.read(1)
        except OSError as e:
            res[i] = e

    ts = [threading.Thread(target=go, args=(i,)) for i in range(len(paths))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "opens hung"
    return res


@pytest.fixture
def cold_src(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    torch.save(_big_ddp_state_dict(), str(src / "x.pt"))
    # hard links: different names, one source file, one cache key: the
    # kernel looks the names up in parallel (it serializes lookups of one
    # name only), so the daemon itself must build once
    for i in range(OPENERS):
        os.link(str(src / "x.pt"), str(src / ("link%02d.pt" % i)))
    return str(src)


@pytest.mark.parametrize("names", ["same_name", "hard_links"])
def test_cold_file_built_once(mount_factory, cold_src, names):
    m = mount_factory(cold_src)
    counts = {}
    for view in ckref.VIEWS:
        if names == "same_name":
            paths = [m.path(view, "x.pt")] * OPENERS
        else:
            paths = [m.path(view, "link%02d.pt" % i) for i in range(OPENERS)]
        before = _builds(m)
        res = _burst(paths)
        assert all(r == b"\x80" or r == b"P" for r in res), res
        counts[view] = _builds(m) - before
    print("# %d concurrent cold opens (%s): builds per view %s" % (OPENERS, names, counts))
    assert counts == {v: 1 for v in ckref.VIEWS}
