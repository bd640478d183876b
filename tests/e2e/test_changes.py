"""Sources that change under the mount (issue #4): atomic replacement,
overwriting in place, a checkpoint still being written, directories that
disappear.

An open view file never serves a mix of two versions of its source: it
serves the version it opened (replacement by rename keeps the old inode) or
fails with EIO/ESTALE (the same inode rewritten in place).  A new open sees
the new version once the kernel's attribute/entry timeout (1 s) has passed.

chmod 000 on a source directory is not tested: the daemon runs as root,
and root's DAC override ignores mode bits, so it changes nothing for the
daemon.  Access by other users is tested in test_daemon.py (allow_other);
here a vanished directory is made by removing or renaming it.
"""

import errno
import hashlib
import io
import os
import shutil
import time

import pytest
import torch
import torch.nn as nn

import ckref
from conftest import read_bytes, sha256

NEW_TIMEOUT = 3.0           # s until a new open must show a new version
OK_ERRNOS = (errno.EIO, errno.ESTALE)


def _ckpt(seed, big=1 << 20):
    """A DDP state dict (the plain view rewrites it, the ddp view serves it
    unchanged) with one tensor of `big` floats, so that reading the first
    page leaves most of the file for later reads."""
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    sd = nn.DataParallel(m).state_dict()
    sd["module.big"] = torch.randn(big)
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _replace(path, data):
    tmp = path + ".tmp"
    _write(tmp, data)
    os.rename(tmp, path)


def _drop_cache(f):
    """Drop the kernel's cached pages of an open view file, so that the
    reads that follow reach the daemon."""
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _view_matches(m, view, rel, src_path):
    """Whether a new open of the view shows the current source."""
    try:
        got = read_bytes(m.path(view, rel))
    except OSError:
        return False
    src = read_bytes(src_path)
    if got == src:
        return not ckref.changes(ckref.load(src_path), view)
    try:
        return ckref.same(torch.load(io.BytesIO(got), map_location="cpu"),
                          ckref.transform(ckref.load(src_path), view))
    except Exception:
        return False


def _eventually_new(m, view, rel, src_path):
    deadline = time.monotonic() + NEW_TIMEOUT
    while not _view_matches(m, view, rel, src_path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    return str(d)


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_atomic_replace_keeps_old_version_open(mount_factory, src, view):
    path = os.path.join(src, "last.pt")
    _write(path, _ckpt(0))
    ref = mount_factory(src, name="ref")       # what the old view is
    old = sha256(ref.path(view, "last.pt"))
    m = mount_factory(src, name="m")
    with open(m.path(view, "last.pt"), "rb") as f:
        head = f.read(4096)
        _replace(path, _ckpt(1, big=(1 << 20) + 1000))
        _drop_cache(f)
        rest = f.read()
    assert hashlib.sha256(head + rest).hexdigest() == old, \
        "the reader holding the file did not read the old version whole"
    assert _eventually_new(m, view, "last.pt", path), \
        "a new open does not show the replaced checkpoint after %ss" % NEW_TIMEOUT


@pytest.mark.parametrize("size", ["same_size", "other_size"])
@pytest.mark.parametrize("view", ckref.VIEWS)
def test_overwrite_in_place_never_mixes(mount_factory, src, view, size):
    path = os.path.join(src, "last.pt")
    _write(path, _ckpt(0))
    ref = mount_factory(src, name="ref")
    old = read_bytes(ref.path(view, "last.pt"))
    new = _ckpt(1) if size == "same_size" else _ckpt(1, big=(1 << 20) - 5000)
    assert (len(new) == len(read_bytes(path))) == (size == "same_size")
    m = mount_factory(src, name="m")
    with open(m.path(view, "last.pt"), "rb") as f:
        head = f.read(4096)
        ino = os.stat(path).st_ino
        with open(path, "r+b") as w:        # the same inode, like torch.save(path)
            w.write(new)
            w.truncate(len(new))
        assert os.stat(path).st_ino == ino
        _drop_cache(f)
        try:
            got = head + f.read()
        except OSError as e:
            assert e.errno in OK_ERRNOS, e
            got = None
    if got is not None:
        assert got == old, ("the open view file served a mix of the old and the new "
                            "source (%d bytes; old view %d bytes; %s)"
                            % (len(got), len(old), "equal size" if len(got) == len(old)
                               else "sizes differ"))
    assert _eventually_new(m, view, "last.pt", path), \
        "a new open does not show the overwritten checkpoint after %ss" % NEW_TIMEOUT


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_checkpoint_being_written(mount_factory, src, view):
    path = os.path.join(src, "grow.pt")
    data = _ckpt(2)
    half = data[:len(data) // 2]
    _write(path, half)
    m = mount_factory(src)
    f = None
    try:
        f = open(m.path(view, "grow.pt"), "rb")
        first = f.read()
    except OSError as e:
        assert e.errno in OK_ERRNOS, e
        first = None
    if first is not None:
        # a consistent snapshot of what was there: the half, unchanged
        assert first == half, "a half-written checkpoint served as %d other bytes" % len(first)
    with open(path, "ab") as w:
        w.write(data[len(half):])
    if f is not None:
        with f:
            _drop_cache(f)
            f.seek(0)
            try:
                again = f.read()
            except OSError as e:
                assert e.errno in OK_ERRNOS, e
            else:
                assert again == first, "an open file changed its content"
    assert m.proc.poll() is None
    assert _eventually_new(m, view, "grow.pt", path), \
        "a new open does not show the finished checkpoint after %ss" % NEW_TIMEOUT


def _gone(p):
    """Poll until `p` (a path in the mount) no longer exists; the kernel may
    keep a name it has looked up for the entry timeout."""
    deadline = time.monotonic() + NEW_TIMEOUT
    while True:
        try:
            os.stat(p)
        except OSError as e:
            assert e.errno in (errno.ENOENT, errno.ESTALE), e
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_source_dirs_vanish(mount_factory, tmp_path):
    base = tmp_path / "b"
    base.mkdir()
    src = str(base / "src")
    for d in ("sub", "keep", "moved"):
        os.makedirs(os.path.join(src, d))
    for d in ("sub", "keep", "moved"):
        _write(os.path.join(src, d, "x.pt"), _ckpt(3, big=16))
    m = mount_factory(src)
    for d in ("sub", "keep", "moved"):
        for view in ckref.VIEWS:
            assert _view_matches(m, view, os.path.join(d, "x.pt"), os.path.join(src, d, "x.pt"))
    held = open(m.path("plain", "sub", "x.pt"), "rb")

    # a directory removed: errors for it, the rest works
    shutil.rmtree(os.path.join(src, "sub"))
    for view in ckref.VIEWS:
        assert _gone(m.path(view, "sub", "x.pt")), "removed file still there"
        assert _gone(m.path(view, "sub")), "removed directory still there"
        assert sorted(os.listdir(m.path(view))) == ["keep", "moved"]
    with held:
        try:
            held.read()
        except OSError as e:
            assert e.errno in OK_ERRNOS + (errno.ENOENT,), e

    # a directory renamed: the old name goes, the new one works
    os.rename(os.path.join(src, "moved"), os.path.join(src, "moved2"))
    for view in ckref.VIEWS:
        assert _gone(m.path(view, "moved", "x.pt"))
        assert _view_matches(m, view, "moved2/x.pt", os.path.join(src, "moved2", "x.pt"))

    # the source root renamed: served all the same (the daemon holds it)
    os.rename(src, str(base / "src2"))
    src = str(base / "src2")
    assert _view_matches(m, "ddp", "keep/x.pt", os.path.join(src, "keep", "x.pt"))

    # the source root removed entirely: errors or empty views, a live mount
    shutil.rmtree(src)
    assert sorted(os.listdir(m.mnt)) == ["ddp", "plain"]
    for view in ckref.VIEWS:
        assert _gone(m.path(view, "keep", "x.pt"))
        try:
            assert os.listdir(m.path(view)) == []
        except OSError as e:
            assert e.errno in (errno.ENOENT, errno.ESTALE), e
    os.statvfs(m.mnt)
    assert m.proc.poll() is None, m.log()
