"""Listings with attributes (READDIRPLUS): what ls -l of a directory of
checkpoints shows, against what reading each file gives, on a fresh mount,
again on the same mount, past the attribute timeout (1 s) and across
changes of the source; and that a listing alone builds no view."""

import collections
import os
import re
import subprocess
import time

import torch

from conftest import Mount

N = 1000  # names: several of the kernel's READDIRPLUS batches (about 190 each)
TIMEOUT = 1.1


def _ckpt_bytes(path, n):
    torch.save({"module.w%d" % i: torch.full((4,), float(i)) for i in range(n)}, path)
    with open(path, "rb") as f:
        return f.read()


def _source(tmp_path):
    src = tmp_path / "src"
    d = src / "d"
    os.makedirs(d / "sub")
    data = _ckpt_bytes(str(tmp_path / "t.pt"), 3)
    for i in range(N):
        with open(d / ("ckpt_%03d.pt" % i), "wb") as f:
            f.write(data)
    with open(d / "notes.txt", "w") as f:
        f.write("not a checkpoint\n")
    os.symlink("ckpt_000.pt", d / "link")
    return str(src)


def _requests(m, since):
    """How many requests of each kind the daemon logged past offset since."""
    return collections.Counter(re.findall(r"opcode: ([A-Z_]+)", m.log()[since:]))


def _builds(m):
    return int(os.getxattr(m.mnt, "user.ckptfs.builds").rstrip(b"\0"))


def _ls_l(d):
    """name -> (size, inode) as ls -l shows them."""
    out = subprocess.run(["ls", "-lni", "--time-style=+", d], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    got = {}
    for line in out.splitlines()[1:]:
        f = line.split()
        got[f[-1] if not f[1].startswith("l") else f[-3]] = (int(f[5]), int(f[0]))
    return got


def _check(d, got):
    """Each regular file's size is its bytes' length, its inode a stat's."""
    names = sorted(os.listdir(d))
    assert sorted(got) == names
    for n in names:
        p = os.path.join(d, n)
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, "rb") as f:
                assert got[n][0] == len(f.read()), n
        assert got[n][1] == os.lstat(p).st_ino, n


def test_ls_l_takes_attributes_from_the_listing(tmp_path):
    m = Mount(_source(tmp_path), str(tmp_path / "mnt"), str(tmp_path / "ckptfs.log"), flags=["-d"])
    m.start()
    try:
        d = m.path("plain", "d")
        names = os.listdir(d)
        assert len(names) == N + 3
        assert _builds(m) == 0, "a listing alone built views"
        at = len(m.log())
        fresh = _ls_l(d)
        asked = _requests(m, at)
        assert asked["READDIRPLUS"] > 1
        # the first batch is looked up name by name, the rest came with it
        assert asked["LOOKUP"] < N // 2, asked
        files = N + 1  # notes.txt too: read to tell it is no checkpoint
        assert _builds(m) == files
        time.sleep(TIMEOUT)
        at = len(m.log())
        again = _ls_l(d)
        assert _requests(m, at)["LOOKUP"] < 10, _requests(m, at)
        assert again == fresh
        _check(d, again)
        assert _builds(m) == files, "a view was built again"
    finally:
        problems = m.stop()
    assert not problems, problems


def test_listing_shows_new_versions(tmp_path):
    src = _source(tmp_path)
    m = Mount(src, str(tmp_path / "mnt"), str(tmp_path / "ckptfs.log"))
    m.start()
    try:
        d = m.path("plain", "d")
        before = _ls_l(d)
        _check(d, before)
        # replaced by rename, saved in place (bigger), made a checkpoint
        tmp = os.path.join(src, "d", ".tmp.pt")
        _ckpt_bytes(tmp, 5)
        os.replace(tmp, os.path.join(src, "d", "ckpt_001.pt"))
        _ckpt_bytes(os.path.join(src, "d", "ckpt_002.pt"), 7)
        _ckpt_bytes(os.path.join(src, "d", "notes.txt"), 1)
        time.sleep(TIMEOUT)
        after = _ls_l(d)
        _check(d, after)
        for n in ("ckpt_001.pt", "ckpt_002.pt", "notes.txt"):
            assert after[n] != before[n], n
        assert after["ckpt_003.pt"] == before["ckpt_003.pt"]
    finally:
        problems = m.stop()
    assert not problems, problems
