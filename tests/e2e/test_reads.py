"""How views are read: a checkpoint of big records straight from the
source's page cache (direct reads, no page cache of its own), one of many
small records through the view's page cache; either way every view maps
shared (FUSE_DIRECT_IO_ALLOW_MMAP, asked for past libfuse 3.14), also after
a restart, and reads the same bytes through read() and mmap."""

import mmap
import os

import pytest
import torch

import ckref
import stref
from conftest import cached_pages, read_bytes, run_cli

def _sources(src):
    big = {"module.w%d" % i: torch.randn(1 << 19) for i in range(4)}       # 2 MiB records
    many = {"module.t%d" % i: torch.randn(16) for i in range(3000)}        # 64-byte records
    torch.save(big, os.path.join(src, "big.pt"))
    torch.save(many, os.path.join(src, "many.pt"))
    torch.save(big, os.path.join(src, "legacy.pt"), _use_new_zipfile_serialization=False)
    stref.write(os.path.join(src, "big.safetensors"),
                [(k, "F32", list(v.shape), v.numpy().tobytes()) for k, v in big.items()])
    return {"big.pt": big, "many.pt": many, "legacy.pt": big}


def _drop(path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)


def _mapped(path):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:  # MAP_SHARED
        return bytes(m)


@pytest.fixture
def mounted(mount_factory, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    sds = _sources(str(src))
    return mount_factory(str(src)), sds


@pytest.mark.parametrize("name", ["big.pt", "legacy.pt"])
@pytest.mark.parametrize("view", ckref.VIEWS)
def test_big_records_read_past_the_page_cache(mounted, view, name):
    m, sds = mounted
    path = m.path(view, name)
    got = read_bytes(path)
    assert cached_pages(path) == 0, "a view of big records keeps a page cache of its own"
    assert len(got) == os.stat(path).st_size
    assert ckref.same(torch.load(path), ckref.transform(sds[name], view))


@pytest.mark.parametrize("name", ["many.pt", "big.safetensors"])
@pytest.mark.parametrize("view", ckref.VIEWS)
def test_small_records_and_mapped_formats_are_cached(mounted, view, name):
    """torch reads a record with two calls: many small ones are cheaper from
    the cache; safetensors readers map the file, which a direct read would
    keep dropping."""
    m, _ = mounted
    path = m.path(view, name)
    read_bytes(path)
    assert cached_pages(path) > 0


@pytest.mark.parametrize("name", ["big.pt", "many.pt", "legacy.pt", "big.safetensors"])
@pytest.mark.parametrize("view", ckref.VIEWS)
def test_every_view_maps_shared(mounted, view, name):
    m, _ = mounted
    path = m.path(view, name)
    want = read_bytes(path)
    assert _mapped(path) == want
    assert read_bytes(path) == want                  # and reads after the mapping


def test_maps_shared_after_restart(mounted):
    """The successor never sees the INIT: what it granted comes with the
    restart, and a direct read stays mappable."""
    m, _ = mounted
    want = {v: read_bytes(m.path(v, "big.pt")) for v in ckref.VIEWS}
    for _ in range(2):
        rc, out, err = run_cli(["restart", m.mnt])
        assert rc == 0, err
        for v in ckref.VIEWS:
            path = m.path(v, "big.pt")
            _drop(path)                              # what the last mapping left
            assert read_bytes(path) == want[v]
            assert cached_pages(path) == 0, "the successor stopped reading directly"
            assert _mapped(path) == want[v]
