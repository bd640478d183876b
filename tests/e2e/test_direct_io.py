"""mount -o direct_io, for a mount an NFS server exports (issue #12): every
read reaches the daemon and the mount keeps no page cache (the server's
own reads would copy out of it once more); the bytes are those of a
default mount, private mmap works, and the option outlives ckptfs restart.
The page cache of a file is counted with cachestat(2), which, unlike
mincore, needs no mapping (mapping a direct-I/O file drops its cache)."""

import ctypes
import errno
import io
import mmap
import os

import pytest
import torch

from conftest import mounted_at, read_bytes, run_cli

SYS_CACHESTAT = 451         # x86_64 and every architecture's generic table


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [("nr_cache", ctypes.c_uint64), ("rest", ctypes.c_uint64 * 4)]


def _cached_pages(path):
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = _Stat()
        if libc.syscall(SYS_CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(st), 0):
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                pytest.skip("no cachestat(2) here (Linux >= 6.5)")
            raise OSError(err, os.strerror(err), path)
        return st.nr_cache
    finally:
        os.close(fd)


def _state_dict():
    torch.manual_seed(3)
    return {"layer.weight": torch.randn(512, 256), "layer.bias": torch.randn(512)}


def _source(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    torch.save({"module." + k: v for k, v in _state_dict().items()}, str(src / "sub" / "model.pt"))
    (src / "notes.txt").write_bytes(b"not a checkpoint\n" * 1000)
    return str(src)


FILES = [("plain", "sub", "model.pt"), ("ddp", "sub", "model.pt"), ("plain", "notes.txt")]


def test_reads_equal_and_leave_no_page_cache(mount_factory, tmp_path):
    src = _source(tmp_path)
    cached = mount_factory(src)
    direct = mount_factory(src, ["direct_io"])
    for rel in FILES:
        want = read_bytes(cached.path(*rel))
        assert _cached_pages(cached.path(*rel)) > 0, "the default mount keeps what it read"
        assert read_bytes(direct.path(*rel)) == want, rel
        assert _cached_pages(direct.path(*rel)) == 0, rel
    got = torch.load(io.BytesIO(read_bytes(direct.path("plain", "sub", "model.pt"))))
    want = _state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_private_mmap_reads_the_view(mount_factory, tmp_path):
    m = mount_factory(_source(tmp_path), ["direct_io"])
    path = m.path("ddp", "sub", "model.pt")
    want = read_bytes(path)
    with open(path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
            assert mm[:] == want


def test_kept_across_restart(mount_factory, tmp_path):
    m = mount_factory(_source(tmp_path), ["direct_io"])
    path = m.path("plain", "sub", "model.pt")
    want = read_bytes(path)
    rc, _out, err = run_cli(["restart", m.mnt])
    assert rc == 0, err
    assert m.proc.wait(timeout=20) == 0 and mounted_at(m.mnt), m.log()
    assert read_bytes(path) == want
    assert _cached_pages(path) == 0, "the restarted daemon dropped -o direct_io"
