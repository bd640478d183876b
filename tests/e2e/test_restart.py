"""`ckptfs restart` and SIGHUP (issue #8): the daemon execs the binary again
and the new code takes over the FUSE connection, so the mount never goes
away. Files and directories open across the restart read on; a source
replaced meanwhile is never served as the new version to an old reader.
(NFS clients across a restart: test_nfs.py.)"""

import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import torch

from conftest import CKPTFS, force_unmount, mounted_at, read_bytes, run_cli, sha256

NAMES = ["entry-%03d-with-a-long-name-so-a-listing-needs-several-requests.txt" % i
         for i in range(300)]


def _source(tmp_path):
    src = tmp_path / "src"
    (src / "many").mkdir(parents=True)
    for n in NAMES:
        (src / "many" / n).write_text(n)
    torch.save({"module.w": torch.arange(300000.0)}, str(src / "a.pt"))
    torch.save({"module.v": torch.ones(1000)}, str(src / "b.pt"))
    return str(src)


def _drop(f):
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _restart(mnt):
    rc, out, err = run_cli(["restart", mnt])
    assert rc == 0, err


def _daemon_pids(mnt):
    pids = []
    for p in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                args = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if len(args) > 2 and args[1] == b"mount" and mnt.encode() in args:
            pids.append(int(p))
    return pids


def test_restart_keeps_open_files_and_listings(mount_factory, tmp_path):
    m = mount_factory(_source(tmp_path))
    want_a = read_bytes(m.path("plain", "a.pt"))
    with open(m.path("plain", "a.pt"), "rb") as f, os.scandir(m.path("ddp", "many")) as it:
        head = f.read(4096)
        first = [next(it).name for _ in range(3)]
        _restart(m.mnt)
        _drop(f)
        assert head + f.read() == want_a
        assert sorted(first + [e.name for e in it]) == NAMES
    assert "restarted: serving" in m.log()
    assert sha256(m.path("ddp", "b.pt")) == sha256(str(tmp_path / "src" / "b.pt"))


def test_restarts_under_concurrent_readers(mount_factory, tmp_path):
    """Requests in flight when the daemon restarts are answered by it or by
    its successor, none lost: readers see no error and no wrong byte."""
    src = _source(tmp_path)
    torch.save({"module.big": torch.randn(6 << 20)}, os.path.join(src, "big.pt"))
    m = mount_factory(src)
    want = {v: read_bytes(m.path(v, "big.pt")) for v in ("plain", "ddp")}
    stop, problems, reads = threading.Event(), [], [0]

    def reader(view):
        try:
            with open(m.path(view, "big.pt"), "rb") as f:
                while not stop.is_set():
                    _drop(f)
                    if os.pread(f.fileno(), len(want[view]) + 1, 0) != want[view]:
                        problems.append("%s: wrong bytes" % view)
                    reads[0] += 1
        except OSError as e:
            problems.append("%s: %s" % (view, e))

    threads = [threading.Thread(target=reader, args=(v,)) for v in ("plain", "ddp") * 2]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            time.sleep(0.2)
            _restart(m.mnt)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems
    assert reads[0] > 5


def test_file_replaced_during_restart_is_not_served_to_old_reader(mount_factory, tmp_path):
    src = _source(tmp_path)
    m = mount_factory(src)
    old = read_bytes(m.path("plain", "a.pt"))
    with open(m.path("plain", "a.pt"), "rb") as f:
        head = f.read(4096)
        tmp = os.path.join(src, "a.pt.tmp")
        torch.save({"module.w": torch.zeros(300000)}, tmp)
        os.rename(tmp, os.path.join(src, "a.pt"))
        _restart(m.mnt)
        _drop(f)
        try:
            got = head + f.read()
        except OSError as e:
            assert e.errno == 116, e      # ESTALE
        else:
            assert got == old
    time.sleep(1.5)                        # past the attribute timeout
    assert torch.load(m.path("plain", "a.pt"))["w"].sum().item() == 0


def test_restart_after_the_source_was_renamed(mount_factory, tmp_path):
    """The daemon serves the directory it mounted, wherever it went: so
    does its successor."""
    src = _source(tmp_path)
    m = mount_factory(src)
    want = read_bytes(m.path("plain", "a.pt"))
    os.rename(src, src + ".moved")
    try:
        _restart(m.mnt)
        assert read_bytes(m.path("plain", "a.pt")) == want
        _restart(m.mnt)                  # and once more, from the successor
        assert sorted(os.listdir(m.path("ddp", "many"))) == NAMES
    finally:
        os.rename(src + ".moved", src)


def test_sighup_restarts_in_place(mount_factory, tmp_path):
    m = mount_factory(_source(tmp_path))
    m.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "restarted: serving" not in m.log():
        assert time.monotonic() < deadline, m.log()
        time.sleep(0.05)
    assert m.proc.poll() is None and mounted_at(m.mnt)
    assert sorted(os.listdir(m.path("plain", "many"))) == NAMES


class CopiedDaemon:
    """A foreground daemon run from a copy of the binary, so that the test
    can replace the copy as an upgrade would."""

    def __init__(self, tmp_path, src, mnt):
        bindir = tmp_path / "bin"
        bindir.mkdir()
        self.exe, self.mnt = str(bindir / "ckptfs"), mnt
        self.log_path = str(tmp_path / "daemon.log")
        shutil.copy2(CKPTFS, self.exe)
        with open(self.log_path, "wb") as log:
            self.p = subprocess.Popen([self.exe, "mount", "-f", src, mnt], stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + 20
        while not (mounted_at(mnt) and os.path.isdir(os.path.join(mnt, "plain"))):
            assert self.p.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.02)

    def replace(self, data):
        with open(self.exe + ".new", "wb") as f:
            f.write(data)
        os.chmod(self.exe + ".new", 0o755)
        os.rename(self.exe + ".new", self.exe)   # what a package upgrade does

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        force_unmount(self.mnt)
        try:
            self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def copied_daemon(dirs, tmp_path):
    d = CopiedDaemon(tmp_path, *dirs)
    yield d
    d.stop()


def test_restart_runs_the_replaced_binary(copied_daemon):
    d = copied_daemon
    d.replace(read_bytes(CKPTFS))
    assert os.readlink("/proc/%d/exe" % d.p.pid).endswith("(deleted)")
    _restart(d.mnt)
    assert os.stat("/proc/%d/exe" % d.p.pid).st_ino == os.stat(d.exe).st_ino
    assert read_bytes(os.path.join(d.mnt, "plain", "hello.txt")) == b"hi\n"


def test_restart_keeps_serving_when_the_new_binary_does_not_run(copied_daemon):
    d = copied_daemon
    d.replace(b"#!/bin/sh\nexit 1\n")
    d.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "cannot restart (the binary does not run); serving on" not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    assert d.p.poll() is None
    assert read_bytes(os.path.join(d.mnt, "ddp", "hello.txt")) == b"hi\n"


def test_restart_of_a_background_daemon(dirs):
    src, mnt = dirs
    rc, out, err = run_cli(["mount", src, mnt])
    assert rc == 0, err
    try:
        pids = _daemon_pids(mnt)
        assert len(pids) == 1
        with open(os.path.join(mnt, "ddp", "hello.txt"), "rb") as f:
            _restart(mnt)
            _restart(mnt)
            _drop(f)
            assert f.read() == b"hi\n"
        assert _daemon_pids(mnt) == pids
        rc, out, err = run_cli(["umount", mnt])
        assert rc == 0, err
        deadline = time.monotonic() + 15
        while _daemon_pids(mnt):
            assert time.monotonic() < deadline, "the daemon stayed after umount"
            time.sleep(0.05)
    finally:
        force_unmount(mnt)


@pytest.mark.parametrize("args", [[], ["a", "b"], ["-x"]])
def test_restart_usage(args):
    rc, out, err = run_cli(["restart"] + args)
    assert rc == 2 and "restart: expected MOUNTPOINT" in err, err


def test_restart_refuses_what_is_not_a_ckptfs_mount(tmp_path):
    rc, out, err = run_cli(["restart", str(tmp_path)])
    assert rc == 1 and "not a ckptfs mount" in err, err
