"""File-system behaviour: mirroring, symlinks, live updates, read-only,
broken checkpoints, xattrs, node ids, and the command line."""

import errno
import io
import os
import re
import stat
import struct
import time
import zipfile

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
from conftest import (Mount, force_unmount, mounted_at, need_binary, read_bytes,
                      run_cli, sha256)

BAD = ("bad_truncated.pt", "bad_garbage.pt")


def _torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _truncated_pickle_zip(path):
    """A torch zip whose data.pkl is cut in half (rebuilt with zipfile)."""
    good = zipfile.ZipFile(io.BytesIO(_torch_bytes(nn.DataParallel(nn.Linear(2, 2)).state_dict())))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info in good.infolist():
            data = good.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = data[:len(data) // 2]
            z.writestr(info.filename, data)


def _garbage_pickle_zip(path):
    """A torch.save zip whose data.pkl bytes after PROTO are 0xFF (no opcode)."""
    raw = bytearray(_torch_bytes(nn.DataParallel(nn.Linear(2, 2)).state_dict()))
    nlen, xlen = struct.unpack("<HH", raw[26:30])
    assert raw[30:30 + nlen].endswith(b"/data.pkl")
    start = 30 + nlen + xlen
    size = zipfile.ZipFile(io.BytesIO(bytes(raw))).getinfo(
        raw[30:30 + nlen].decode()).file_size
    raw[start + 2:start + size] = b"\xff" * (size - 2)
    with open(path, "wb") as f:
        f.write(raw)


@pytest.fixture(scope="module")
def env(module_src, mount_module):
    src = module_src
    os.makedirs(os.path.join(src, "sub", "deeper"))
    os.makedirs(os.path.join(src, "empty_dir"))
    torch.save(nn.DataParallel(ckmodels.make_model(0)).state_dict(), os.path.join(src, "a.pt"))
    torch.save(ckmodels.make_model(1).state_dict(), os.path.join(src, "sub", "b.pt"))
    with open(os.path.join(src, "readme.txt"), "w") as f:
        f.write("hello\n")
    with open(os.path.join(src, "sub", "deeper", "c.txt"), "w") as f:
        f.write("deep\n")
    os.symlink("sub/b.pt", os.path.join(src, "link_rel"))
    os.symlink("/nonexistent/ckptfs/target", os.path.join(src, "link_dangling"))
    os.symlink("sub", os.path.join(src, "link_dir"))
    _truncated_pickle_zip(os.path.join(src, BAD[0]))
    _garbage_pickle_zip(os.path.join(src, BAD[1]))
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), os.path.join(src, "scripted.pt"))
    shas = {}
    for d, _, files in os.walk(src):
        for n in files:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                shas[os.path.relpath(p, src)] = sha256(p)
    m = mount_module(src)
    yield m, src, shas
    for rel, h in shas.items():
        assert sha256(os.path.join(src, rel)) == h, "source %s modified" % rel


def _tree(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            kind = "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else \
                "file" if stat.S_ISREG(st.st_mode) else "other"
            out[os.path.relpath(p, root)] = kind
    return out


def test_top_level_has_views(env):
    m, _, _ = env
    assert sorted(os.listdir(m.mnt)) == ["ddp", "plain"]


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_tree_mirrored_recursively(env, view):
    m, src, _ = env
    assert _tree(m.path(view)) == _tree(src)


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_symlinks_shown_raw(env, view):
    m, src, _ = env
    for name in ("link_rel", "link_dangling", "link_dir"):
        p = m.path(view, name)
        assert stat.S_ISLNK(os.lstat(p).st_mode), name
        assert os.readlink(p) == os.readlink(os.path.join(src, name))


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_symlink_resolves_inside_view(env, view):
    m, _, _ = env
    assert read_bytes(m.path(view, "link_rel")) == read_bytes(m.path(view, "sub", "b.pt"))
    assert sorted(os.listdir(m.path(view, "link_dir"))) == ["b.pt", "deeper"]


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_text_in_subdir_served(env, view):
    m, _, _ = env
    assert read_bytes(m.path(view, "sub", "deeper", "c.txt")) == b"deep\n"


def test_new_source_file_appears_at_once(env):
    m, src, _ = env
    os.listdir(m.path("plain"))                   # let the kernel cache the dir
    os.listdir(m.path("ddp", "sub"))
    with pytest.raises(FileNotFoundError):
        os.stat(m.path("plain", "new.txt"))       # a negative lookup, too
    with open(os.path.join(src, "new.txt"), "w") as f:
        f.write("new\n")
    with open(os.path.join(src, "sub", "new2.txt"), "w") as f:
        f.write("new2\n")
    assert "new.txt" in os.listdir(m.path("plain"))
    assert "new2.txt" in os.listdir(m.path("ddp", "sub"))
    assert read_bytes(m.path("plain", "new.txt")) == b"new\n"
    assert read_bytes(m.path("ddp", "sub", "new2.txt")) == b"new2\n"


def test_new_source_checkpoint_served_as_view(env):
    m, src, _ = env
    os.listdir(m.path("plain"))
    torch.save(nn.DataParallel(ckmodels.make_model(2)).state_dict(), os.path.join(src, "new.pt"))
    torch.save(ckmodels.make_model(2).state_dict(), os.path.join(src, "sub", "new2.pt"))
    got = ckref.load(m.path("plain", "new.pt"))
    assert list(got) == list(ckmodels.make_model(2).state_dict())
    got = ckref.load(m.path("ddp", "sub", "new2.pt"))
    assert list(got) == list(nn.DataParallel(ckmodels.make_model(2)).state_dict())


def test_new_source_dir_appears_at_once(env):
    m, src, _ = env
    os.listdir(m.path("ddp"))
    os.makedirs(os.path.join(src, "later", "x"))
    with open(os.path.join(src, "later", "x", "t.txt"), "w") as f:
        f.write("later\n")
    assert read_bytes(m.path("ddp", "later", "x", "t.txt")) == b"later\n"
    assert "later" in os.listdir(m.path("ddp"))


def test_same_file_same_inode(env):
    m, _, _ = env
    for view in ckref.VIEWS:
        a = os.stat(m.path(view, "a.pt")).st_ino
        b = os.stat(m.path(view, "a.pt")).st_ino
        assert a == b
    assert os.stat(m.path("plain", "a.pt")).st_ino != os.stat(m.path("ddp", "a.pt")).st_ino


# -- read-only ---------------------------------------------------------------

def _op_open_write(m, v):
    os.close(os.open(m.path(v, "a.pt"), os.O_WRONLY))


def _op_open_rdwr(m, v):
    os.close(os.open(m.path(v, "readme.txt"), os.O_RDWR))


def _op_open_trunc(m, v):
    os.close(os.open(m.path(v, "readme.txt"), os.O_WRONLY | os.O_TRUNC))


def _op_create(m, v):
    os.close(os.open(m.path(v, "created.txt"), os.O_WRONLY | os.O_CREAT, 0o644))


def _op_create_at_root(m, v):
    os.close(os.open(os.path.join(m.mnt, "created.txt"), os.O_WRONLY | os.O_CREAT, 0o644))


def _op_touch(m, v):
    os.utime(m.path(v, "readme.txt"))


def _op_truncate(m, v):
    os.truncate(m.path(v, "readme.txt"), 0)


def _op_mkdir(m, v):
    os.mkdir(m.path(v, "newdir"))


def _op_mkdir_at_root(m, v):
    os.mkdir(os.path.join(m.mnt, "newdir"))


def _op_rmdir(m, v):
    os.rmdir(m.path(v, "empty_dir"))


def _op_rm(m, v):
    os.unlink(m.path(v, "readme.txt"))


def _op_rm_link(m, v):
    os.unlink(m.path(v, "link_rel"))


def _op_rename(m, v):
    os.rename(m.path(v, "readme.txt"), m.path(v, "renamed.txt"))


def _op_rename_across_views(m, v):
    os.rename(m.path(v, "readme.txt"), m.path("ddp" if v == "plain" else "plain", "x.txt"))


def _op_chmod(m, v):
    os.chmod(m.path(v, "a.pt"), 0o600)


def _op_chown(m, v):
    os.chown(m.path(v, "a.pt"), 1, 1)


def _op_setxattr(m, v):
    os.setxattr(m.path(v, "a.pt"), "user.test", b"1")


def _op_symlink(m, v):
    os.symlink("a.pt", m.path(v, "newlink"))


def _op_link(m, v):
    os.link(m.path(v, "a.pt"), m.path(v, "hardlink"))


WRITE_OPS = {n[4:]: f for n, f in globals().items() if n.startswith("_op_")}


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("op", sorted(WRITE_OPS))
def test_write_op_fails_erofs(env, op, view):
    m, src, shas = env
    before = _tree(src)
    with pytest.raises(OSError) as ei:
        WRITE_OPS[op](m, view)
    assert ei.value.errno == errno.EROFS, "%s gave %s" % (op, ei.value)
    assert _tree(src) == before
    assert sha256(os.path.join(src, "a.pt")) == shas["a.pt"]
    assert sha256(os.path.join(src, "readme.txt")) == shas["readme.txt"]


# -- broken checkpoints and xattrs ---------------------------------------------

@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("name", BAD)
def test_bad_checkpoint_open_eio(env, name, view):
    m, _, _ = env
    with pytest.raises(OSError) as ei:
        with open(m.path(view, name), "rb") as f:
            f.read()
    assert ei.value.errno == errno.EIO, ei.value


OFFSET_RE = re.compile(r"(?i)(offset|at|@|byte|pos(ition)?)\s*[:=]?\s*(0x[0-9a-f]+|\d+)")


@pytest.mark.parametrize("name", BAD)
def test_bad_checkpoint_logged_with_offset(env, name):
    m, _, _ = env
    for view in ckref.VIEWS:
        try:
            open(m.path(view, name), "rb").close()
        except OSError:
            pass
    deadline = time.monotonic() + 3
    while True:
        lines = [ln for ln in m.log().splitlines() if name in ln]
        hits = [ln for ln in lines if OFFSET_RE.search(ln.replace(name, ""))]
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert hits, "no log line naming %s with an offset; log:\n%s" % (name, m.log())


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("name", BAD)
def test_bad_checkpoint_error_xattr(env, name, view):
    m, _, _ = env
    val = os.getxattr(m.path(view, name), "user.ckptfs.error").rstrip(b"\0")
    assert len(val.strip()) > 0
    val.decode("utf-8")


@pytest.mark.parametrize("view", ckref.VIEWS)
def test_mount_works_after_bad_checkpoint(env, view):
    m, src, _ = env
    for name in BAD:
        try:
            open(m.path(view, name), "rb").close()
        except OSError:
            pass
    got = ckref.load(m.path(view, "a.pt"))
    ckref.assert_same(got, ckref.transform(ckref.load(os.path.join(src, "a.pt")), view))
    assert read_bytes(m.path(view, "readme.txt")) == b"hello\n"


@pytest.mark.parametrize("view", ckref.VIEWS)
@pytest.mark.parametrize("name,fmt", [("a.pt", "torch-zip"), ("sub/b.pt", "torch-zip"),
                                      ("scripted.pt", "torchscript"), ("readme.txt", "other")])
def test_format_xattr(env, name, fmt, view):
    m, _, _ = env
    assert os.getxattr(m.path(view, name), "user.ckptfs.format").rstrip(b"\0") == fmt.encode()


# -- command line ----------------------------------------------------------------

def _one_line(text):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return len(lines) == 1




def test_cli_missing_source(dirs):
    need_binary()
    _, mnt = dirs
    rc, out, err = run_cli(["mount", "-f", "/nonexistent/ckptfs-src", mnt], timeout=20)
    assert rc != 0
    assert _one_line(err), "stderr: %r" % err
    assert "nonexistent" in err or "No such" in err or "exist" in err, err
    assert not mounted_at(mnt)


def test_cli_bad_option(dirs):
    need_binary()
    src, mnt = dirs
    rc, out, err = run_cli(["mount", "-f", "-o", "no_such_option_xyz", src, mnt], timeout=20)
    assert rc != 0
    assert err.strip(), "no message"
    assert not mounted_at(mnt)


def test_cli_unknown_command():
    need_binary()
    rc, out, err = run_cli(["frobnicate"], timeout=20)
    assert rc != 0 and err.strip()


def test_cli_busy_mountpoint(dirs, mount_factory, tmp_path):
    src, _ = dirs
    m = mount_factory(src, name="busy")
    rc, out, err = run_cli(["mount", "-f", src, m.mnt], timeout=20)
    assert rc != 0
    assert err.strip(), "no message"
    assert mounted_at(m.mnt) == 1
    assert read_bytes(m.path("plain", "hello.txt")) == b"hi\n"


def test_cli_umount(dirs, tmp_path):
    src, mnt = dirs
    m = Mount(src, mnt, str(tmp_path / "log")).start()
    try:
        rc, out, err = run_cli(["umount", mnt], timeout=30)
        assert rc == 0, err
        assert not mounted_at(mnt)
        assert m.proc.wait(timeout=10) == 0, m.log()
    finally:
        m.stop()


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _daemons_for(mnt):
    """Live ckptfs processes whose command line names `mnt`."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if mnt.encode() in argv and argv[0].endswith(b"ckptfs") and _alive(int(d)):
            pids.append(int(d))
    return pids


def test_daemonized_mount_ready_on_return(dirs):
    need_binary()
    src, mnt = dirs
    try:
        rc, out, err = run_cli(["mount", src, mnt], timeout=30)
        assert rc == 0, err
        # no polling: the mount must be usable when the command returns
        assert mounted_at(mnt) == 1
        assert os.path.isdir(os.path.join(mnt, "plain"))
        assert read_bytes(os.path.join(mnt, "ddp", "hello.txt")) == b"hi\n"
        pids = _daemons_for(mnt)
        rc, out, err = run_cli(["umount", mnt], timeout=30)
        assert rc == 0, err
        assert not mounted_at(mnt)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in pids if _alive(p)], "daemon still running"
    finally:
        force_unmount(mnt)
        for p in _daemons_for(mnt):        # our own daemon, if it survived
            try:
                os.kill(p, 9)
            except ProcessLookupError:
                pass
