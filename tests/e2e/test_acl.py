"""POSIX ACLs of the source hold in every view (issue #9): with allow_other,
another user gets through the mount exactly what the source's ACLs give
them, not what the mode bits alone would. The daemon answers the ACL xattrs
with the source's and the kernel enforces them (FUSE_CAP_POSIX_ACL)."""

import errno
import os
import shutil
import subprocess
import time

import pytest

import ckref
from conftest import Mount, read_bytes, sha256
from test_daemon import NOBODY, _as_nobody, _mk, _show, _src_with_ckpt, public_tmp  # noqa: F401

ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"


def _setfacl(path, *args):
    subprocess.run(["setfacl"] + list(args) + [path], check=True)


def _need_acls(public_tmp):
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("setfacl"):
        pytest.skip("needs root, setpriv and setfacl (package acl)")
    probe = os.path.join(public_tmp, "probe")
    _mk(probe, 0o644, data=b"")
    r = subprocess.run(["setfacl", "-m", "u:%d:r" % NOBODY, probe], stderr=subprocess.PIPE)
    os.unlink(probe)
    if r.returncode:
        pytest.skip("the source file system has no POSIX ACLs: %s" % r.stderr.decode().strip())


# (path, mode, data or None for a directory, ACL given to setfacl -m, what
# nobody may do: "read" a file / "list" a directory, or None)
LAYOUT = [
    ("denied644.pt", 0o644, "ck", "u:nobody:---", None),
    ("denied644.txt", 0o644, b"mode says yes\n", "u:nobody:---", None),
    ("granted600.pt", 0o600, "ck", "u:nobody:r", "read"),
    ("granted600_masked.txt", 0o600, b"mask says no\n", "u:nobody:r,m::---", None),
    ("dnotrav", 0o755, None, "u:nobody:---", None),
    ("dnotrav/inner.pt", 0o644, "ck", None, None),
    ("dgranted", 0o700, None, "u:nobody:rx", "list"),
    ("dgranted/inner.pt", 0o644, "ck", None, "read"),
    ("dgranted/inner600.pt", 0o600, "ck", None, None),
    ("ddefault", 0o755, None, "d:u:nobody:r", "list"),
    ("ddefault/plain.txt", 0o644, b"written before the default ACL\n", None, "read"),
]


def _build(public_tmp, tmp_path):
    """The source: its root mode 0750 owned by root, opened to nobody only
    by an ACL (so the mount root and the view directories need it too)."""
    src = os.path.join(public_tmp, "src")
    _mk(src, 0o750)
    _setfacl(src, "-m", "u:nobody:rx")
    ck = read_bytes(os.path.join(_src_with_ckpt(str(tmp_path / "ck")), "a.pt"))
    for rel, mode, data, acl, _ in LAYOUT:
        p = os.path.join(src, rel)
        _mk(p, mode, data=ck if data == "ck" else data)
        if acl:
            _setfacl(p, "-m", acl)
    return src


def test_source_acls_hold_in_every_view(public_tmp, tmp_path):
    _need_acls(public_tmp)
    src = _build(public_tmp, tmp_path)
    m = Mount(src, os.path.join(public_tmp, "mnt"), str(tmp_path / "log"),
              opts=["allow_other", "view=bare:strip=model."]).start()
    every_view = list(ckref.VIEWS) + ["bare"]
    try:
        # root sees the source's ACLs as attributes of the views (getfacl)
        for view in every_view:
            for rel, _, data, acl, _ in LAYOUT:
                s, v = os.path.join(src, rel), m.path(view, rel)
                for name in (ACCESS, DEFAULT):
                    want = os.getxattr(s, name) if name in os.listxattr(s) else None
                    got = os.getxattr(v, name) if name in os.listxattr(v) else None
                    assert got == want, (view, rel, name)
        assert os.getxattr(m.mnt, ACCESS) == os.getxattr(src, ACCESS)

        tops = [m.mnt] + [m.path(view) for view in every_view]
        views = {(view, rel): m.path(view, rel) for view in every_view for rel, *_ in LAYOUT}
        srcs = {rel: os.path.join(src, rel) for rel, *_ in LAYOUT}
        got = _as_nobody(tops + list(srcs.values()) + list(views.values()))
        # the root and the view directories: open to nobody by the ACL only
        for p in tops:
            assert isinstance(got[p]["list"], list), (p, _show(got[p]["list"]))
        for (view, rel), p in views.items():
            may = next(w for r, _, _, _, w in LAYOUT if r == rel)
            s, v = got[srcs[rel]], got[p]
            for op in ("stat", "list", "read"):
                if isinstance(s[op], int) or isinstance(v[op], int):
                    assert s[op] == v[op], "%s %s %s: source %s, view %s" % (
                        view, rel, op, _show(s[op]), _show(v[op]))
            if may == "read":
                assert v["read"] == sha256(p), (view, rel)
            elif may == "list":
                assert v["list"] == s["list"] and v["list"], (view, rel)
            elif os.path.isdir(srcs[rel]):
                assert v["list"] == errno.EACCES, (view, rel)
            else:
                assert v["read"] == errno.EACCES, (view, rel)

        # a changed ACL holds once the attribute timeout (1 s) has passed
        for rel in ("granted600.pt", "dgranted"):
            _setfacl(os.path.join(src, rel), "-m", "u:nobody:---")
        _setfacl(os.path.join(src, "denied644.pt"), "-x", "u:nobody")
        time.sleep(1.5)
        paths = [m.path(view, rel) for view in every_view
                 for rel in ("granted600.pt", "dgranted", "dgranted/inner.pt", "denied644.pt")]
        got = _as_nobody(paths)
        for view in every_view:
            assert got[m.path(view, "granted600.pt")]["read"] == errno.EACCES, view
            assert got[m.path(view, "dgranted")]["list"] == errno.EACCES, view
            assert got[m.path(view, "dgranted/inner.pt")]["stat"] == errno.EACCES, view
            p = m.path(view, "denied644.pt")
            assert got[p]["read"] == sha256(p), view
    finally:
        problems = m.stop()
    assert not problems, problems


def test_acl_holds_while_a_checkpoint_or_log_changes(public_tmp, tmp_path):
    """An ACL is the file's, whatever its version: a checkpoint being written
    (whose node no settled file answers to) and a log appended to since it
    was looked up stay denied to a user the ACL denies, before and after the
    change settles, past the attribute timeout and from another process."""
    _need_acls(public_tmp)
    src = os.path.join(public_tmp, "src")
    _mk(src, 0o755)
    ck = read_bytes(os.path.join(_src_with_ckpt(str(tmp_path / "ck")), "a.pt"))
    log = os.path.join(src, "train.log")
    _mk(log, 0o644, data=b"epoch 1\n")
    _setfacl(log, "-m", "u:nobody:---")
    m = Mount(src, os.path.join(public_tmp, "mnt"), str(tmp_path / "log"),
              opts=["allow_other"]).start()
    try:
        views = [m.path(v, n) for v in ckref.VIEWS for n in ("w.pt", "train.log")]
        path = os.path.join(src, "w.pt")
        with open(path, "wb") as w:
            os.fchmod(w.fileno(), 0o644)
            _setfacl(path, "-m", "u:nobody:---")
            w.write(ck[:len(ck) // 2])
            w.flush()
            for v in ckref.VIEWS:                          # looked up, then appended to
                os.stat(m.path(v, "train.log"))
            with open(log, "ab") as f:
                f.write(b"epoch 2\n")
            # at once (the kernel still holds the old version's node) and
            # past the attribute timeout (a new lookup)
            for wait in (0, 1.5):
                time.sleep(wait)
                got = _as_nobody(views)
                for p in views:
                    assert isinstance(got[p]["read"], int), (p, wait, "read while denied")
            w.write(ck[len(ck) // 2:])
        time.sleep(1.5)
        got = _as_nobody(views)
        for p in views:
            assert got[p]["read"] == errno.EACCES, (p, _show(got[p]["read"]))
        assert read_bytes(m.path("plain", "train.log")) == b"epoch 1\nepoch 2\n"
    finally:
        problems = m.stop()
    assert not problems, problems


def test_acl_added_after_ls_l_holds_past_the_timeout(public_tmp, tmp_path):
    """ls -l (READDIRPLUS) records that a file had no ACL and answers the
    ACL ls asks next from that; an ACL added afterwards must still hold
    for another user once the 1 s timeout has passed."""
    _need_acls(public_tmp)
    src = os.path.join(public_tmp, "src")
    _mk(src, 0o755)
    ck = read_bytes(os.path.join(_src_with_ckpt(str(tmp_path / "ck")), "a.pt"))
    for i in range(40):  # more than one listing batch
        _mk(os.path.join(src, "f%02d.pt" % i), 0o644, data=ck)
    m = Mount(src, os.path.join(public_tmp, "mnt"), str(tmp_path / "log"), opts=["allow_other"]).start()
    try:
        d = m.path("plain")
        names = ["f%02d.pt" % i for i in range(40)]
        for _ in range(2):  # the second ls -l answers ACLs from what the listing recorded
            r = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                                "ls", "-l", d], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert r.returncode == 0 and "+" not in r.stdout.decode().split("\n", 1)[1], r
        got = _as_nobody([os.path.join(d, n) for n in names])
        assert all(isinstance(got[os.path.join(d, n)]["read"], str) for n in names)
        for n in names[::2]:
            _setfacl(os.path.join(src, n), "-m", "u:nobody:---")
        time.sleep(1.5)
        got = _as_nobody([os.path.join(d, n) for n in names])
        for i, n in enumerate(names):
            want_denied = i % 2 == 0
            assert (got[os.path.join(d, n)]["read"] == errno.EACCES) == want_denied, (n, got[os.path.join(d, n)])
        r = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                            "ls", "-l", d], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        plus = {ln.split()[-1] for ln in r.stdout.decode().splitlines()[1:] if ln.split()[0].endswith("+")}
        assert plus == set(names[::2]), plus
    finally:
        problems = m.stop()
    assert not problems, problems
