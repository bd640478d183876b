"""`ckptfs restart` and SIGHUP (issue #8): the daemon execs the binary again
and the new code takes over the FUSE connection, so the mount never goes
away. Files and directories open across the restart read on; a source
replaced meanwhile is never served as the new version to an old reader.
(NFS clients across a restart: test_nfs.py.)"""

import os
import shutil
import signal
import subprocess
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


def test_sighup_restarts_in_place(mount_factory, tmp_path):
    m = mount_factory(_source(tmp_path))
    m.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "restarted: serving" not in m.log():
        assert time.monotonic() < deadline, m.log()
        time.sleep(0.05)
    assert m.proc.poll() is None and mounted_at(m.mnt)
    assert sorted(os.listdir(m.path("plain", "many"))) == NAMES


def test_restart_runs_the_replaced_binary(dirs, tmp_path):
    """An upgrade: the binary's file is replaced, restart runs the new one."""
    src, mnt = dirs
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = str(bindir / "ckptfs")
    shutil.copy2(CKPTFS, exe)
    log = open(str(tmp_path / "daemon.log"), "wb")
    p = subprocess.Popen([exe, "mount", "-f", src, mnt], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (mounted_at(mnt) and os.path.isdir(os.path.join(mnt, "plain"))):
            assert p.poll() is None and time.monotonic() < deadline, "mount failed"
            time.sleep(0.02)
        shutil.copy2(CKPTFS, exe + ".new")
        os.rename(exe + ".new", exe)          # what a package upgrade does
        assert os.readlink("/proc/%d/exe" % p.pid).endswith("(deleted)")
        _restart(mnt)
        assert os.stat("/proc/%d/exe" % p.pid).st_ino == os.stat(exe).st_ino
        assert read_bytes(os.path.join(mnt, "plain", "hello.txt")) == b"hi\n"
    finally:
        force_unmount(mnt)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


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
