"""The daemon as a process, and who may see what (issue #4): SIGKILL then
`ckptfs umount`, SIGTERM, permissions for another user under allow_other,
symlinks that point out of the source."""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
from conftest import Mount, mounted_at, read_bytes, run_cli, sha256

NOBODY = 65534


def _src_with_ckpt(d):
    os.makedirs(d, exist_ok=True)
    torch.save(nn.DataParallel(ckmodels.make_model(0)).state_dict(), os.path.join(d, "a.pt"))
    with open(os.path.join(d, "t.txt"), "w") as f:
        f.write("text\n")
    return d


def _check_reads(m, src):
    want = ckref.load(os.path.join(src, "a.pt"))
    for view in ckref.VIEWS:
        ckref.assert_same(ckref.load(m.path(view, "a.pt")), ckref.transform(want, view))
    assert read_bytes(m.path("plain", "t.txt")) == b"text\n"


# --------------------------------------------------------------------------
# signals

def test_sigkill_then_umount_and_remount(tmp_path):
    src = _src_with_ckpt(str(tmp_path / "src"))
    mnt = str(tmp_path / "mnt")
    m = Mount(src, mnt, str(tmp_path / "log1")).start()
    m2 = None
    try:
        _check_reads(m, src)
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=10)
        # a dead FUSE mount stays until someone unmounts it
        assert mounted_at(mnt) == 1
        with pytest.raises(OSError) as ei:
            os.listdir(mnt)
        assert ei.value.errno == errno.ENOTCONN, ei.value
        rc, out, err = run_cli(["umount", mnt], timeout=30)
        assert rc == 0, err
        assert mounted_at(mnt) == 0
        m2 = Mount(src, mnt, str(tmp_path / "log2")).start()
        _check_reads(m2, src)
    finally:
        problems = m.stop()
        if m2:
            problems += m2.stop()
    assert not problems, problems
    assert m2.returncode == 0, m2.log()


@pytest.mark.parametrize("busy", [False, True], ids=["idle", "file_open"])
def test_sigterm_unmounts_and_exits_0(tmp_path, busy):
    src = _src_with_ckpt(str(tmp_path / "src"))
    mnt = str(tmp_path / "mnt")
    m = Mount(src, mnt, str(tmp_path / "log")).start()
    held = None
    try:
        _check_reads(m, src)
        if busy:
            held = open(m.path("plain", "a.pt"), "rb")
            held.read(100)
        m.proc.send_signal(signal.SIGTERM)
        rc = m.proc.wait(timeout=15)
        assert rc == 0, "daemon exited %s after SIGTERM:\n%s" % (rc, m.log())
        assert mounted_at(mnt) == 0, "still mounted after SIGTERM"
    finally:
        if held:
            held.close()
        m.stop()


# --------------------------------------------------------------------------
# permissions for another user (allow_other; the kernel checks the modes the
# views show: default_permissions)

# Run as nobody: what each path gives, as JSON.
PROBE = r"""
import hashlib, json, os, sys
out = {}
for p in json.load(sys.stdin):
    r = {}
    try:
        st = os.lstat(p)
        r["stat"] = [st.st_mode, st.st_uid, st.st_gid]
    except OSError as e:
        r["stat"] = e.errno
    try:
        r["list"] = sorted(os.listdir(p))
    except OSError as e:
        r["list"] = e.errno
    try:
        with open(p, "rb") as f:
            r["read"] = hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        r["read"] = e.errno
    out[p] = r
json.dump(out, sys.stdout)
"""


def _as_nobody(paths):
    r = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY,
                        "--clear-groups", sys.executable, "-c", PROBE],
                       input=json.dumps(paths).encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, cwd="/", timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return json.loads(r.stdout)


@pytest.fixture
def public_tmp():
    """A directory other users can traverse (pytest's are 0700)."""
    d = tempfile.mkdtemp(prefix="ckptfs-perm-")
    os.chmod(d, 0o755)
    yield d
    for mp in (os.path.join(d, "mnt"),):
        if mounted_at(mp):
            subprocess.run(["fusermount3", "-uz", mp])
    shutil.rmtree(d, ignore_errors=True)


def _mk(path, mode, uid=0, gid=0, data=None):
    if data is None:
        os.makedirs(path)
    else:
        with open(path, "wb") as f:
            f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def test_other_user_sees_what_the_source_allows(public_tmp, tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    src = os.path.join(public_tmp, "src")
    _mk(src, 0o755)
    ck = read_bytes(os.path.join(_src_with_ckpt(str(tmp_path / "ck")), "a.pt"))
    layout = [
        ("root600.pt", 0o600, 0, 0, ck),
        ("root644.pt", 0o644, 0, 0, ck),
        ("root640_group_nogroup.pt", 0o640, 0, NOBODY, ck),
        ("nobody600.pt", 0o600, NOBODY, NOBODY, ck),
        ("root604.txt", 0o604, 0, 0, b"other may read\n"),
        ("root000.txt", 0o000, 0, 0, b"nobody may read\n"),
        ("d700", 0o700, 0, 0, None),
        ("d700/inner.pt", 0o644, 0, 0, ck),
        ("d711", 0o711, 0, 0, None),
        ("d711/inner.pt", 0o644, 0, 0, ck),
        ("d711/inner600.pt", 0o600, 0, 0, ck),
        ("d755", 0o755, 0, 0, None),
        ("d755/inner.pt", 0o644, 0, 0, ck),
        ("d755_nobody700", 0o700, NOBODY, NOBODY, None),
        ("d755_nobody700/x.pt", 0o600, NOBODY, NOBODY, ck),
    ]
    for rel, mode, uid, gid, data in layout:
        _mk(os.path.join(src, rel), mode, uid, gid, data)
    mnt = os.path.join(public_tmp, "mnt")
    m = Mount(src, mnt, str(tmp_path / "log"), opts=["allow_other"]).start()
    try:
        rels = [rel for rel, *_ in layout]
        # ownership and modes mirrored, write bits cleared (seen as root)
        for rel in rels:
            s = os.lstat(os.path.join(src, rel))
            for view in ckref.VIEWS:
                v = os.lstat(m.path(view, rel))
                assert (v.st_uid, v.st_gid) == (s.st_uid, s.st_gid), rel
                assert v.st_mode == s.st_mode & ~0o222, \
                    "%s: %o != %o" % (rel, v.st_mode, s.st_mode & ~0o222)
        srcp = {rel: os.path.join(src, rel) for rel in rels}
        viewp = {(view, rel): m.path(view, rel) for view in ckref.VIEWS for rel in rels}
        got = _as_nobody(list(srcp.values()) + list(viewp.values()))
        allowed = denied = 0
        for (view, rel), p in viewp.items():
            s, v = got[srcp[rel]], got[p]
            # the same outcome for each operation: errno for errno
            for op in ("stat", "list", "read"):
                if isinstance(s[op], int) or isinstance(v[op], int):
                    assert s[op] == v[op], "%s %s: source %s, view %s" % (
                        view, rel, _show(s[op]), _show(v[op]))
            if isinstance(v["stat"], list):
                assert v["stat"][1:] == s["stat"][1:], (view, rel)
                assert v["stat"][0] == s["stat"][0] & ~0o222, (view, rel)
            if isinstance(v["list"], list):
                assert v["list"] == s["list"], (view, rel)
            if isinstance(v["read"], str):
                # the view's own bytes, as root reads them
                assert v["read"] == sha256(p), (view, rel)
                allowed += 1
            elif v["read"] == errno.EACCES:
                denied += 1
        print("# as uid %d: %d view reads allowed, %d denied (EACCES), all as on the source"
              % (NOBODY, allowed, denied))
        assert allowed and denied
    finally:
        problems = m.stop()
    assert not problems, problems


def _show(x):
    return errno.errorcode.get(x, x) if isinstance(x, int) else "ok"


# --------------------------------------------------------------------------
# symlinks never lead out of the source through the daemon

def test_symlinks_do_not_escape(tmp_path, mount_factory):
    base = tmp_path / "b"
    src, outside = base / "src", base / "outside"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    os.symlink("../outside", str(src / "esc"))
    os.symlink("../../outside", str(src / "sub" / "esc2"))
    os.symlink("../outside/secret.txt", str(src / "esc_file"))
    os.symlink("/etc", str(src / "abs"))
    # a directory that will turn into a symlink to /etc under the kernel's
    # cached name; it has a file where /etc has one
    (src / "swap").mkdir()
    (src / "swap" / "passwd").write_text("fake\n")
    m = mount_factory(str(src))
    dev = os.stat(m.path("plain")).st_dev
    for view in ckref.VIEWS:
        # relative links: the kernel resolves them inside the mount, where
        # MNT/outside does not exist
        assert os.readlink(m.path(view, "esc")) == "../outside"
        for p in (m.path(view, "esc"), m.path(view, "sub", "esc2")):
            with pytest.raises(FileNotFoundError):
                os.listdir(p)
            assert not os.path.exists(os.path.join(p, "secret.txt"))
        with pytest.raises(FileNotFoundError):
            read_bytes(m.path(view, "esc_file"))
        # an absolute link: shown raw; the kernel follows it out of the
        # mount, to the real /etc (another file system), never the daemon
        assert os.readlink(m.path(view, "abs")) == "/etc"
        assert stat.S_ISLNK(os.lstat(m.path(view, "abs")).st_mode)
        assert os.stat(m.path(view, "abs", "passwd")).st_dev != dev
        # the directory's name cached by the kernel
        assert read_bytes(m.path(view, "swap", "passwd")) == b"fake\n"
    os.rename(str(src / "swap"), str(src / "swap_old"))
    os.symlink("/etc", str(src / "swap"))
    for view in ckref.VIEWS:
        for name in ("passwd", "group", "hostname"):
            p = m.path(view, "swap", name)
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError as e:
                assert e.errno in (errno.ENOENT, errno.ESTALE), e
                continue
            try:
                st = os.fstat(fd)       # what was opened, not what a path gives now
                data = os.read(fd, 1 << 16)
            finally:
                os.close(fd)
            # the old directory's own file, found again, is fine; /etc's
            # files are fine only if the kernel reached them itself
            assert data == b"fake\n" or st.st_dev != dev, \
                "%s: the daemon served /etc/%s through a symlinked directory" % (p, name)
