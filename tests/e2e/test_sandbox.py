"""The daemon confines itself once the mount is up (issue #9): a seccomp
filter, no_new_privs, only the capabilities serving needs; an unconfined
helper process unmounts at the end. `-o nosandbox` turns it off. What the
filter allows and refuses is tested call by call in tests/unit/test_sandbox."""

import os
import signal

import pytest
import torch

import ckref
from conftest import mounted_at, read_bytes
from test_daemon import _src_with_ckpt

CAP_DAC_READ_SEARCH, CAP_SYS_RESOURCE, CAP_LEASE = 2, 24, 28
KEPT = 1 << CAP_DAC_READ_SEARCH | 1 << CAP_SYS_RESOURCE | 1 << CAP_LEASE


def _status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def _children(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        return [int(c) for c in f.read().split()]


def _serves(m, src):
    want = ckref.load(os.path.join(src, "a.pt"))
    for view in ckref.VIEWS:
        ckref.assert_same(ckref.load(m.path(view, "a.pt")), ckref.transform(want, view))
        assert read_bytes(m.path(view, "t.txt")) == b"text\n"
        assert sorted(os.listdir(m.path(view))) == ["a.pt", "t.txt"]


def test_daemon_is_confined_and_still_serves(tmp_path, mount_factory):
    src = _src_with_ckpt(str(tmp_path / "src"))
    m = mount_factory(src)
    _serves(m, src)
    st = _status(m.proc.pid)
    assert st["Seccomp"] == "2", st["Seccomp"]          # filter mode
    assert int(st["Seccomp_filters"]) >= 1
    assert st["NoNewPrivs"] == "1"
    if os.geteuid() == 0:
        eff, bnd = int(st["CapEff"], 16), int(st["CapBnd"], 16)
        assert eff & ~KEPT == 0 and bnd & ~KEPT == 0, (st["CapEff"], st["CapBnd"])
        assert eff & 1 << CAP_DAC_READ_SEARCH
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
    # the unmounter: unconfined, and it holds no /dev/fuse descriptor (a
    # killed daemon must leave a mount that fails, not one that hangs)
    (helper,) = _children(m.proc.pid)
    assert _status(helper)["Seccomp"] == "0"
    for fd in os.listdir("/proc/%d/fd" % helper):
        assert os.readlink("/proc/%d/fd/%s" % (helper, fd)) != "/dev/fuse"
    # a clean stop still unmounts: SIGTERM, then the helper does it
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=30) == 0, m.log()
    assert mounted_at(m.mnt) == 0, "still mounted after SIGTERM"
    assert not os.path.exists("/proc/%d" % helper) or _status(helper)["State"].startswith("Z")


def test_nosandbox_turns_it_off(tmp_path, mount_factory):
    src = _src_with_ckpt(str(tmp_path / "src"))
    m = mount_factory(src, opts=["nosandbox"])
    _serves(m, src)
    st = _status(m.proc.pid)
    assert st["Seccomp"] == "0" and st["NoNewPrivs"] == "0", (st["Seccomp"], st["NoNewPrivs"])
    assert _children(m.proc.pid) == []
    if os.geteuid() == 0:
        assert int(st["CapEff"], 16) & ~KEPT, "capabilities dropped without the sandbox"
