"""Sources that change under the mount (issues #4, #8): atomic replacement,
overwriting in place, a checkpoint still being written, directories that
disappear, inode numbers reused.

An open view file never serves a mix of two versions of its source: it
serves the version it opened (replacement by rename keeps the old inode) or
fails with EIO (the same inode rewritten in place).  A new open sees the new
version at once, whatever the kernel's attribute/entry timeout (1 s).

chmod 000 on a source directory is not tested: the daemon runs as root,
and root's DAC override ignores mode bits, so it changes nothing for the
daemon.  Access by other users is tested in test_daemon.py (allow_other);
here a vanished directory is made by removing or renaming it.
"""

import ctypes
import errno
import hashlib
import io
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.nn as nn

import ckref
import stref
from conftest import read_bytes, sha256

NEW_TIMEOUT = 3.0           # s until stat() must show a name gone (entry timeout: 1 s)
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


def _new_at_once(m, view, rel, src_path):
    """Whether the next open shows the source as it is now, with no wait."""
    return _view_matches(m, view, rel, src_path)


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
    assert _new_at_once(m, view, "last.pt", path), \
        "a new open does not show the replaced checkpoint at once"


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
            assert e.errno == errno.EIO, e
            got = None
    if got is not None:
        assert got == old, ("the open view file served a mix of the old and the new "
                            "source (%d bytes; old view %d bytes; %s)"
                            % (len(got), len(old), "equal size" if len(got) == len(old)
                               else "sizes differ"))
    assert _new_at_once(m, view, "last.pt", path), \
        "a new open does not show the overwritten checkpoint at once"


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
    assert _new_at_once(m, view, "grow.pt", path), \
        "a new open does not show the finished checkpoint at once"


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


# --------------------------------------------------------------------------
# One version per reader (issue #8): what a reader sees when a checkpoint
# changes, across the attribute timeout and cache drops.

ATTR_WAIT = 1.6             # s: past the mount's attribute/entry timeout (1 s)


def _sd(seed, n=1 << 20):
    """A DDP state dict whose tensors all differ between seeds."""
    torch.manual_seed(seed)
    return {"module.w": torch.randn(n), "module.b": torch.randn(64)}


def _load_view(m, view, rel):
    return torch.load(m.path(view, rel), map_location="cpu")


def _assert_loads_as(m, view, rel, sd):
    got = _load_view(m, view, rel)
    want = ckref.transform(sd, view)
    assert ckref.same(got, want), "%s/%s does not load as the source now is" % (view, rel)


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_open_file_keeps_version_across_timeouts(mount_factory, src, view):
    """Issue #8.1: after an atomic replace, an open file serves the version it
    opened whole, also after the attribute timeout and a cache drop (the
    kernel then asks for its attributes: they come from its own fd)."""
    path = os.path.join(src, "a.pt")
    _write(path, _ckpt(0))
    m = mount_factory(src)
    old = read_bytes(m.path(view, "a.pt"))
    with open(m.path(view, "a.pt"), "rb") as f:
        head = f.read(4096)
        _replace(path, _ckpt(1, big=(1 << 20) + 1000))
        time.sleep(ATTR_WAIT)
        _drop_cache(f)
        assert os.fstat(f.fileno()).st_size == len(old)
        rest = f.read()
    assert head + rest == old, "the open file did not serve the version it opened whole"
    _assert_loads_as(m, view, "a.pt", torch.load(path))


def _read_some(f, n):
    """Reads up to n bytes; returns (bytes, errno or None)."""
    out = b""
    while len(out) < n:
        try:
            chunk = f.read(min(1 << 20, n - len(out)))
        except OSError as e:
            return out, e.errno
        if not chunk:
            break
        out += chunk
    return out, None


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_in_place_save_never_mixes_with_second_reader(mount_factory, src, view):
    """Issue #8.2: reader A reads half; torch.save overwrites the source in
    place (same size, same inode); reader B opens and reads the whole new
    view; A reads on: only old bytes, then EIO, never new bytes."""
    path = os.path.join(src, "b.pt")
    old_sd, new_sd = _sd(0, 1 << 22), _sd(1, 1 << 22)
    torch.save(old_sd, path)
    m = mount_factory(src)
    old = read_bytes(m.path(view, "b.pt"))
    ino = os.stat(path).st_ino
    with open(m.path(view, "b.pt"), "rb") as a:
        first = a.read(len(old) // 2)
        assert first == old[:len(first)]
        torch.save(new_sd, path)
        assert os.stat(path).st_ino == ino and os.path.getsize(path) == len(read_bytes(path))
        got_b = read_bytes(m.path(view, "b.pt"))                     # reader B
        assert ckref.same(torch.load(io.BytesIO(got_b)), ckref.transform(new_sd, view)), \
            "a new open after an in-place save did not serve the new version"
        rest, err = _read_some(a, len(old))
    whole = first + rest
    assert whole == old[:len(whole)], "reader A got bytes of the new version"
    assert err == errno.EIO or len(whole) == len(old), \
        "reader A neither finished the old version nor got EIO (errno %s)" % err


@pytest.mark.parametrize("same_size", [True, False])
@pytest.mark.parametrize("view", ckref.VIEWS)
def test_in_place_save_loads_at_once(mount_factory, src, view, same_size):
    """Issue #8.3: torch.save over a checkpoint the kernel has just looked
    up; the next load through the mount serves the new version with its
    exact size, with no wait for the attribute timeout."""
    path = os.path.join(src, "latest.pt")
    torch.save(_sd(0), path)
    m = mount_factory(src)
    for i in range(1, 4):
        _load_view(m, view, "latest.pt")        # the kernel now holds its entry and size
        new = _sd(i, 1 << 20 if same_size else (1 << 20) + 4096 * i)
        torch.save(new, path)
        _assert_loads_as(m, view, "latest.pt", new)
        assert os.stat(m.path(view, "latest.pt")).st_size == \
            len(read_bytes(m.path(view, "latest.pt")))


def test_new_and_deleted_files_at_once(mount_factory, src):
    """Issue #8.3: a file added to the source opens at once; one deleted
    fails to open at once, even while the kernel still holds its entry."""
    torch.save(_sd(0, 16), os.path.join(src, "x.pt"))
    m = mount_factory(src)
    for view in ckref.VIEWS:
        _load_view(m, view, "x.pt")
    os.unlink(os.path.join(src, "x.pt"))
    torch.save(_sd(1, 16), os.path.join(src, "y.pt"))
    for view in ckref.VIEWS:
        with pytest.raises(FileNotFoundError):
            open(m.path(view, "x.pt"), "rb")
        _assert_loads_as(m, view, "y.pt", _sd(1, 16))


# -- inode reuse on a real ext4 ---------------------------------------------

class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]


_libc = ctypes.CDLL(None, use_errno=True)


def _name_to_handle(path):
    fh = _FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(-100, path.encode(), ctypes.byref(fh), ctypes.byref(mount_id), 0):
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return fh


def _open_by_handle(mount_fd, fh):
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), os.O_RDONLY)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def _drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


@pytest.fixture
def ext4_src(tmp_path):
    """A directory on a fresh ext4 image mounted by loop device (journal on:
    ext4 then reuses a freed inode number at once). Always unmounted."""
    if os.geteuid() != 0:
        pytest.skip("needs root for mount -o loop")
    img, mnt = tmp_path / "ext4.img", tmp_path / "ext4"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], stderr=subprocess.PIPE)
    if r.returncode:
        pytest.skip("cannot loop-mount ext4: %s" % r.stderr.decode().strip())
    try:
        os.mkdir(str(mnt / "src"))
        yield str(mnt / "src")
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode:
            subprocess.run(["umount", "-l", str(mnt)])


def test_stale_handle_never_opens_reused_inode(ext4_src, mount_factory):
    """Issue #8.4: a handle of plain/a.pth, taken before a.pth is replaced,
    is ESTALE once c.pth has taken the old inode number; it never opens
    c.pth."""
    src = ext4_src
    a, c = os.path.join(src, "a.pth"), os.path.join(src, "c.pth")
    torch.save(_sd(0, 1024), a)
    m = mount_factory(src)
    view_a = m.path("plain", "a.pth")
    fh = _name_to_handle(view_a)
    old_ino = os.stat(a).st_ino
    mount_fd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _open_by_handle(mount_fd, fh)                      # the handle works
        os.close(fd)
        torch.save(_sd(1, 1024), a + ".tmp")
        os.rename(a + ".tmp", a)
        _drop_caches()
        torch.save(_sd(2, 1024), c)
        assert os.stat(c).st_ino == old_ino, "ext4 did not reuse the inode number"
        _drop_caches()
        with pytest.raises(OSError) as ei:
            fd = _open_by_handle(mount_fd, fh)
            try:
                got = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
            pytest.fail("the old handle opened a file (%s)" % (
                "c.pth" if got == read_bytes(m.path("plain", "c.pth"))[:len(got)] else "?"))
        assert ei.value.errno == errno.ESTALE, ei.value
        _assert_loads_as(m, "plain", "c.pth", _sd(2, 1024))
    finally:
        os.close(mount_fd)


# -- a writer rewriting a checkpoint while readers load it -------------------

_WRITER = r"""
import os, sys, time, torch
path, mode, stop = sys.argv[1], sys.argv[2], sys.argv[3]
sds = [torch.load(p) for p in sys.argv[4:6]]
raw = [open(p, "rb").read() for p in sys.argv[4:6]]
i = 0
while not os.path.exists(stop):
    i += 1
    if mode == "save":
        torch.save(sds[i % 2], path)              # truncates, then writes
    else:
        fd = os.open(path, os.O_WRONLY)           # never truncates
        os.pwrite(fd, raw[i % 2], 0)
        os.close(fd)
    time.sleep(0.002)
"""

LOAD_SECONDS = 6.0


@pytest.mark.parametrize("mode", ["save", "pwrite"])
@pytest.mark.parametrize("view", ckref.VIEWS)
def test_rewrites_in_place_never_load_mixed(mount_factory, src, tmp_path, view, mode):
    """Issue #8.5 (torn reads): a writer rewrites a checkpoint in place with
    the same size in a loop (torch.save, or raw pwrite that never
    truncates) while a reader loads it through the mount: every load is
    exactly one version's weights or an error, never a mix."""
    path = os.path.join(src, "live.pt")
    versions = [_sd(0, 1 << 20), _sd(1, 1 << 20)]
    files = []
    for i, sd in enumerate(versions):
        p = str(tmp_path / ("v%d.pt" % i))
        torch.save(sd, p)
        files.append(p)
    assert os.path.getsize(files[0]) == os.path.getsize(files[1])
    shutil.copyfile(files[0], path)
    wants = [ckref.transform(sd, view) for sd in versions]
    m = mount_factory(src)
    stop = str(tmp_path / "stop")
    w = subprocess.Popen([sys.executable, "-c", _WRITER, path, mode, stop] + files)
    ok = failed = 0
    mixed = []
    try:
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline:
            try:
                got = _load_view(m, view, "live.pt")
            except Exception:
                failed += 1
                continue
            if any(ckref.same(got, want) for want in wants):
                ok += 1
            else:
                mixed.append(got)
    finally:
        open(stop, "w").close()
        try:
            w.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
    assert not mixed, "%d of %d loads mixed two versions (%d ok, %d failed)" % (
        len(mixed), ok + failed + len(mixed), ok, failed)
    assert ok > 0, "no load succeeded (%d failed)" % failed
    print("loads: %d ok, %d failed" % (ok, failed))
    assert w.returncode == 0


# -- files opened before they were checkpoints --------------------------------

def _read_after_change(f):
    """Reads an open file again from the start, past the attribute timeout
    and with its cached pages dropped: its bytes, or None for EIO."""
    time.sleep(ATTR_WAIT)
    _drop_cache(f)
    f.seek(0)
    try:
        return f.read()
    except OSError as e:
        assert e.errno == errno.EIO, e
        return None


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_empty_file_completed_as_checkpoint(mount_factory, src, view):
    """Issue #8.6: a file opened while empty (as torch.save has just created
    it) does not serve the raw bytes of the checkpoint later saved into the
    same inode: EIO (or still nothing); a new open loads the checkpoint."""
    path = os.path.join(src, "new.pt")
    open(path, "wb").close()
    m = mount_factory(src)
    sd = _sd(3)
    with open(m.path(view, "new.pt"), "rb") as f:
        assert f.read() == b""
        ino = os.stat(path).st_ino
        torch.save(sd, path)
        assert os.stat(path).st_ino == ino
        got = _read_after_change(f)
    assert got is None or got == b"", "the file opened empty served %d other bytes" % len(got)
    _assert_loads_as(m, view, "new.pt", sd)


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_safetensors_header_completed_in_place(mount_factory, src, view):
    """Issue #8.6: a safetensors file opened while its header is not all
    written reads as the raw bytes it had, or EIO, once the writer completes
    it; a new open serves its view."""
    path = os.path.join(src, "m.safetensors")
    torch.manual_seed(4)
    data = {n: torch.randn(256).numpy().tobytes() for n in ("module.w", "module.b")}
    raw = stref.build([(n, "F32", [256], d) for n, d in data.items()])
    with open(path, "wb") as w:
        w.write(raw[:40])                               # the length and part of the header
    m = mount_factory(src)
    with open(m.path(view, "m.safetensors"), "rb") as f:
        first = f.read()
        assert first == raw[:40]
        with open(path, "ab") as w:
            w.write(raw[40:])
        got = _read_after_change(f)
    assert got is None or got == first, \
        "the file opened half-written served %d other bytes" % len(got)
    v = stref.read(m.path(view, "m.safetensors"))
    want = {ckref.view_key(ckref.view_of(view), n): d for n, d in data.items()}
    assert sorted(v.tensors) == sorted(want)
    for n, d in want.items():
        t = v.tensors[n]
        assert v.data[t.begin:t.end] == d


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("owner", [0, 65534], ids=["root-owned", "user-owned"])
def test_checkpoint_open_for_writing_then_closed(mount_factory, src, view, owner):
    """Issue #8.6: while a writer holds a checkpoint open with half of it
    written, opening its view fails with EIO; the moment the writer closes
    it, a new open loads it, exact size included. The same for a file of
    another user than the daemon's (training jobs run as users): the
    confined daemon keeps the capability to take leases on it."""
    path = os.path.join(src, "w.pt")
    sd = _sd(5)
    buf = io.BytesIO()
    torch.save(sd, buf)
    data = buf.getvalue()
    m = mount_factory(src)
    with open(path, "wb") as w:
        os.fchown(w.fileno(), owner, owner)
        w.write(data[:len(data) // 2])
        w.flush()
        for _ in range(2):
            with pytest.raises(OSError) as ei:
                open(m.path(view, "w.pt"), "rb").close()
            assert ei.value.errno == errno.EIO
        w.write(data[len(data) // 2:])
    _assert_loads_as(m, view, "w.pt", sd)
    assert os.stat(m.path(view, "w.pt")).st_size == len(read_bytes(m.path(view, "w.pt")))


# -- a rewrite that restores mtime -----------------------------------------

@pytest.mark.parametrize("view", ckref.VIEWS)
def test_rewrite_with_restored_mtime_is_a_new_version(mount_factory, src, view):
    """Issue #8.7: a same-size rewrite whose mtime is restored (cp -p,
    rsync --inplace -t, touch -r) is a new version: its ctime changed. The
    view is rebuilt (never the old pickle over the new tensors)."""
    path = os.path.join(src, "r.pt")
    torch.manual_seed(6)
    t = [torch.randn(4096) for _ in range(2)]
    first = {"module.wa": t[0], "module.wb": t[1]}
    second = {"module.wb": t[0] + 1, "module.wa": t[1] + 1}     # the other order: another pickle
    raws = []
    for sd in (first, second):
        b = io.BytesIO()
        torch.save(sd, b)
        raws.append(b.getvalue())
    assert len(raws[0]) == len(raws[1]) and raws[0] != raws[1]
    _write(path, raws[0])
    m = mount_factory(src)
    _assert_loads_as(m, view, "r.pt", first)
    st = os.stat(path)
    with open(path, "r+b") as w:
        w.write(raws[1])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(path)
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    _assert_loads_as(m, view, "r.pt", second)
    time.sleep(ATTR_WAIT)
    _assert_loads_as(m, view, "r.pt", second)


def test_handle_names_one_version_across_restart(mount_factory, src):
    """A file handle of a view file (what an NFS server hands out) opens the
    same version after the daemon restarts, and is ESTALE once the source
    is saved in place: it never reads the new bytes as if they were the
    version it named."""
    os.mkdir(os.path.join(src, "sub"))
    path = os.path.join(src, "sub", "a.pt")
    torch.save(_sd(7, 4096), path)
    m = mount_factory(src, name="m")
    fh = _name_to_handle(m.path("plain", "sub", "a.pt"))
    want = read_bytes(m.path("plain", "sub", "a.pt"))
    assert m.stop() == []
    m = mount_factory(src, name="m")                        # a new daemon, the same mountpoint
    mount_fd = os.open(m.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = _open_by_handle(mount_fd, fh)
        try:
            assert os.read(fd, len(want) + 1) == want
        finally:
            os.close(fd)
        torch.save(_sd(8, 4096), path)                      # the same size, the same inode
        _drop_caches()
        with pytest.raises(OSError) as ei:
            os.close(_open_by_handle(mount_fd, fh))
        assert ei.value.errno == errno.ESTALE, ei.value
    finally:
        os.close(mount_fd)
    _assert_loads_as(m, "plain", "sub/a.pt", _sd(8, 4096))


def test_log_appended_reads_as_source(mount_factory, src):
    """A file that is no checkpoint (a training log) reads as the source
    does while it grows, whether its writer closes it between appends or
    keeps it open; its new lines show in a file already open and in new
    opens."""
    path = os.path.join(src, "train.log")
    _write(path, b"epoch 0\n")
    m = mount_factory(src)
    view = m.path("plain", "train.log")
    with open(view, "rb") as f:
        assert f.read() == b"epoch 0\n"
        with open(path, "ab") as w:
            w.write(b"epoch 1\n")
        time.sleep(ATTR_WAIT)
        assert os.fstat(f.fileno()).st_size == 16
        assert f.read() == b"epoch 1\n"
        with open(path, "ab") as w:                         # a writer that stays
            for i in range(2, 5):
                w.write(b"epoch %d\n" % i)
                w.flush()
                assert read_bytes(view) == read_bytes(path)
            time.sleep(ATTR_WAIT)
            assert f.read() == b"epoch 2\nepoch 3\nepoch 4\n"
