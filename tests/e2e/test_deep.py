"""A source tree deeper than PATH_MAX: every level is listed, and the
checkpoint at the bottom is served like any other. The full paths (in the
source and in the mount) are longer than the kernel takes, so the test
walks both with descriptors relative to the directory before."""
import errno
import io
import os
import time
import zipfile

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref

LEVELS = 40                                   # 40 names of 120 bytes: 4840 > PATH_MAX
NAMES = ["%s%03d" % ("d" * 117, i) for i in range(LEVELS)]


def _torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _truncated(raw):
    """The same torch zip with its data.pkl cut in half: a broken checkpoint."""
    good, out = zipfile.ZipFile(io.BytesIO(raw)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info in good.infolist():
            data = good.read(info.filename)
            z.writestr(info.filename, data[:len(data) // 2] if info.filename.endswith("/data.pkl") else data)
    return out.getvalue()


def _write_at(dir_fd, name, data):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _read_at(dir_fd, name):
    fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    try:
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def _descend(top, mkdir=False, beside=()):
    """The descriptor of the bottom directory, opened level by level; the
    top also holds the names `beside`."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in NAMES:
            if mkdir:
                os.mkdir(name, dir_fd=fd)
            else:
                assert sorted(os.listdir(fd)) == sorted([name, *beside])
                beside = ()
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)   # an open descriptor would keep the mount busy
        raise
    return fd


@pytest.fixture
def deep(tmp_path, mount_factory):
    src = tmp_path / "src"
    src.mkdir()
    sd = nn.DataParallel(ckmodels.make_model(0)).state_dict()
    raw = _torch_bytes(sd)
    fd = _descend(str(src), mkdir=True)
    try:
        _write_at(fd, "x.pth", raw)
        _write_at(fd, "bad.pth", _truncated(raw))
        _write_at(fd, "notes.txt", b"deep\n")
    finally:
        os.close(fd)
    return mount_factory(str(src)), sd


def test_deeper_than_path_max_served(deep):
    m, sd = deep
    for view in ckref.VIEWS:
        fd = _descend(m.path(view))
        try:
            assert sorted(os.listdir(fd)) == ["bad.pth", "notes.txt", "x.pth"]
            st = os.stat("x.pth", dir_fd=fd)
            data = _read_at(fd, "x.pth")
            assert st.st_size == len(data)
            got = torch.load(io.BytesIO(data), weights_only=True)
            keys = list(got)
            if view == "plain":
                assert keys == [k[len("module."):] for k in sd]
            else:
                assert keys == list(sd)
            for k, v in zip(sd, got.values()):
                assert torch.equal(sd[k], v)
            assert _read_at(fd, "notes.txt") == b"deep\n"
            with pytest.raises(OSError) as ei:
                _read_at(fd, "bad.pth")
            assert ei.value.errno == errno.EIO
        finally:
            os.close(fd)


def test_deeper_than_path_max_logged_cut(deep):
    """Messages name such a file by the end of its path after an ellipsis."""
    m, _ = deep
    fd = _descend(m.path("plain"))
    try:
        with pytest.raises(OSError):
            _read_at(fd, "bad.pth")
    finally:
        os.close(fd)
    deadline = time.monotonic() + 3
    while True:
        lines = [ln for ln in m.log().splitlines() if "bad.pth" in ln]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lines, m.log()
    # the name keeps its end, and the message after it has room
    assert any("plain/\u2026/" in ln and NAMES[-1] + "/bad.pth: " in ln and
               len(ln.split("bad.pth: ", 1)[1]) > 10 for ln in lines), lines


def test_deeper_than_path_max_symlinks(deep):
    """A link at the bottom reads as the source has it, but that an absolute
    target into the source reads as the relative path to the same place in
    the view, as everywhere else: the reader's kernel resolves it there."""
    m, sd = deep
    _write_at(None, os.path.join(m.src, "top.pth"), _torch_bytes(sd))
    links = {
        "to_top": m.src + "/top.pth",                 # absolute, into the source
        "to_level1": m.src + "/" + NAMES[0] + "/",    # absolute, a directory in it
        "elsewhere": "/nonexistent/" + "e" * 200,     # absolute, out of the source
        "beside": "x.pth",                            # relative
    }
    fd = _descend(m.src, beside=["top.pth"])
    try:
        for name, target in links.items():
            os.symlink(target, name, dir_fd=fd)
        as_in_source = {name: os.readlink(name, dir_fd=fd) for name in links}
    finally:
        os.close(fd)
    assert as_in_source == links
    up = "../" * LEVELS
    shown = dict(links, to_top=up + "top.pth", to_level1=up[3:-1])    # "../" 39 times, as for any directory above
    for view in ckref.VIEWS:
        fd = _descend(m.path(view), beside=["top.pth"])
        try:
            assert {name: os.readlink(name, dir_fd=fd) for name in links} == shown
            # each leads to the view's own file, not the raw source
            want = [k[len("module."):] for k in sd] if view == "plain" else list(sd)
            for name in ("to_top", "beside"):
                got = torch.load(io.BytesIO(_read_at(fd, name)), weights_only=True)
                assert list(got) == want, name
            level1 = os.open("to_level1", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                assert os.fstat(level1).st_dev == os.stat(m.path(view)).st_dev
                assert os.listdir(level1) == [NAMES[1]]
            finally:
                os.close(level1)
        finally:
            os.close(fd)
