"""mount -o direct_io, for a mount an NFS server exports (issue #12): every
read reaches the daemon and the mount keeps no page cache (the server's
own reads would copy out of it once more); the bytes are those of a
default mount, private mmap works, and the option outlives ckptfs restart.
The page cache of a file is counted with cachestat(2), which, unlike
mincore, needs no mapping (mapping a direct-I/O file drops its cache)."""

import io
import mmap
import random
import os

import torch

from conftest import cached_pages, mounted_at, read_bytes, run_cli

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
        assert cached_pages(cached.path(*rel)) > 0, "the default mount keeps what it read"
        assert read_bytes(direct.path(*rel)) == want, rel
        assert cached_pages(direct.path(*rel)) == 0, rel
    got = torch.load(io.BytesIO(read_bytes(direct.path("plain", "sub", "model.pt"))))
    want = _state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_mmap_reads_the_view(mount_factory, tmp_path):
    """Private and shared mappings read the view: the daemon asks for
    FUSE_DIRECT_IO_ALLOW_MMAP, which libfuse 3.14 cannot name (Linux 6.6)."""
    m = mount_factory(_source(tmp_path), ["direct_io"])
    path = m.path("ddp", "sub", "model.pt")
    want = read_bytes(path)
    with open(path, "rb") as f:
        for flags in (mmap.MAP_PRIVATE, mmap.MAP_SHARED):
            with mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ) as mm:
                assert mm[:] == want


def test_kept_across_restart(mount_factory, tmp_path):
    m = mount_factory(_source(tmp_path), ["direct_io"])
    path = m.path("plain", "sub", "model.pt")
    want = read_bytes(path)
    rc, _out, err = run_cli(["restart", m.mnt])
    assert rc == 0, err
    assert m.proc.wait(timeout=20) == 0 and mounted_at(m.mnt), m.log()
    assert read_bytes(path) == want
    assert cached_pages(path) == 0, "the restarted daemon dropped -o direct_io"


def test_unaligned_reads_anywhere(mount_factory, tmp_path):
    """Direct I/O passes the reader's offsets and sizes through unrounded
    (the page cache asks whole pages): reads across the rewritten pickle,
    the zip headers and the spliced tensor bytes, and past the end."""
    src = _source(tmp_path)
    torch.manual_seed(4)
    torch.save({"module.a": torch.randn(1024, 512), "module.b": torch.randn(3),
                "module.c": torch.randn(700, 300)}, os.path.join(src, "three.pt"))
    cached = mount_factory(src)
    direct = mount_factory(src, ["direct_io"])
    rng = random.Random(12)
    for rel in FILES[:2] + [("plain", "three.pt")]:
        want = read_bytes(cached.path(*rel))
        fd = os.open(direct.path(*rel), os.O_RDONLY)
        try:
            spots = [(0, 1), (1, 4095), (4095, 2), (len(want) - 1, 10), (len(want), 5),
                     (len(want) + 4096, 1)]
            spots += [(rng.randrange(len(want)), rng.choice([1, 7, 4096, 4097, 65537, 300000, (1 << 20) + 13, 3 << 20]))
                      for _ in range(200)]
            for off, n in spots:
                assert os.pread(fd, n, off) == want[off:off + n], (rel, off, n)
        finally:
            os.close(fd)
