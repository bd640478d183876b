"""`ckptfs restart` and SIGHUP (issue #8): a new daemon runs the binary
again and takes over the FUSE connection, so the mount never goes away. The
confined daemon cannot exec: its unconfined helper starts the new one, a
new process, and the old one exits 0 once the new one serves. Files and directories open across the restart read on; a source
replaced meanwhile is never served as the new version to an old reader.
(NFS clients across a restart: test_nfs.py.)"""

import os
import shutil
import signal
import socket
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


def _holds_fuse(pid):
    try:
        return any(os.readlink("/proc/%s/fd/%s" % (pid, fd)) == "/dev/fuse"
                   for fd in os.listdir("/proc/%s/fd" % pid))
    except OSError:
        return False


def _daemon_pids(mnt):
    """The ckptfs processes serving mnt: those holding /dev/fuse (not the
    unmounter, a fork with the same command line)."""
    pids = []
    for p in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                args = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if len(args) > 2 and args[1] == b"mount" and mnt.encode() in args and _holds_fuse(p):
            pids.append(int(p))
    return pids


def _successor(mnt, old_pid):
    """The one daemon serving mnt after a restart: not old_pid."""
    pids = _daemon_pids(mnt)
    assert len(pids) == 1 and pids[0] != old_pid, pids
    return pids[0]


def _stop(pid):
    """Ends a successor (not the test's child) the way systemd would."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while os.path.exists("/proc/%d" % pid):
        assert time.monotonic() < deadline, "the daemon stayed after SIGTERM"
        time.sleep(0.05)


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
                    got = os.pread(f.fileno(), len(want[view]) + 1, 0)
                    if got != want[view]:
                        at = next((i for i, (a, b) in enumerate(zip(got, want[view])) if a != b),
                                  min(len(got), len(want[view])))
                        problems.append("%s: wrong bytes: %d read of %d, first difference at %d"
                                        % (view, len(got), len(want[view]), at))
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


def test_file_saved_in_place_during_restart_is_not_served_to_old_reader(mount_factory, tmp_path):
    """The successor finds the reader's node by its id, which names one
    version: a source rewritten in place (same inode) meanwhile is ESTALE
    or EIO to the old reader, never the new bytes; a new open reads them."""
    src = _source(tmp_path)
    m = mount_factory(src)
    path = os.path.join(src, "a.pt")
    old = read_bytes(m.path("plain", "a.pt"))
    ino = os.stat(path).st_ino
    with open(m.path("plain", "a.pt"), "rb") as f:
        head = f.read(4096)
        torch.save({"module.w": torch.zeros(300000)}, path)
        assert os.stat(path).st_ino == ino
        _restart(m.mnt)
        _drop(f)
        try:
            got = head + f.read()
        except OSError as e:
            assert e.errno in (5, 116), e      # EIO, ESTALE
        else:
            assert got == old
    time.sleep(1.5)                            # past the attribute timeout
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


def test_sighup_restarts(mount_factory, tmp_path):
    """The old daemon exits 0 once its successor serves; the successor is
    confined as the first daemon was, with an unmounter of its own."""
    m = mount_factory(_source(tmp_path))
    m.proc.send_signal(signal.SIGHUP)
    assert m.proc.wait(timeout=20) == 0, m.log()
    assert "restarted: serving" in m.log() and mounted_at(m.mnt)
    assert sorted(os.listdir(m.path("plain", "many"))) == NAMES
    new = _successor(m.mnt, m.proc.pid)
    with open("/proc/%d/status" % new) as f:
        assert "Seccomp:\t2" in f.read()
    with open("/proc/%d/task/%d/children" % (new, new)) as f:
        assert len(f.read().split()) == 1        # its unmounter
    _stop(new)                                   # SIGTERM: unmounts, as the first one would
    assert not mounted_at(m.mnt)


def test_restart_without_sandbox(mount_factory, tmp_path):
    """-o nosandbox: no helper; the daemon starts its successor itself."""
    m = mount_factory(_source(tmp_path), opts=["nosandbox"])
    want = read_bytes(m.path("ddp", "a.pt"))
    _restart(m.mnt)
    assert m.proc.wait(timeout=20) == 0, m.log()
    new = _successor(m.mnt, m.proc.pid)
    with open("/proc/%d/status" % new) as f:
        assert "Seccomp:\t0" in f.read()
    assert read_bytes(m.path("ddp", "a.pt")) == want
    _restart(m.mnt)                              # and again, from the successor
    _stop(_successor(m.mnt, new))
    assert not mounted_at(m.mnt)


def test_restart_tells_systemd_the_new_main_pid(dirs, tmp_path):
    """Type=notify: the successor sends MAINPID= with READY=1 before the old
    daemon exits, and the handover sends no STOPPING=1."""
    src, mnt = dirs
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    with open(str(tmp_path / "log"), "wb") as log:
        p = subprocess.Popen([CKPTFS, "mount", "-f", src, mnt], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=dict(os.environ, NOTIFY_SOCKET=path))
    try:
        assert sock.recv(4096).decode().split("\n") == ["READY=1"]
        p.send_signal(signal.SIGHUP)
        got = sock.recv(4096).decode().split("\n")
        assert sock.recv(4096).decode() == "BARRIER=1"   # its fd closed as recv drops it
        assert p.wait(timeout=20) == 0
        new = _successor(mnt, p.pid)
        assert got == ["MAINPID=%d" % new, "READY=1"], got
        sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            sock.recv(4096)                              # no STOPPING=1 from the old one
        _stop(new)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        sock.close()


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
    new = _successor(d.mnt, d.p.pid)
    assert os.stat("/proc/%d/exe" % new).st_ino == os.stat(d.exe).st_ino
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


def test_restart_gives_up_on_a_successor_that_hangs(copied_daemon):
    """A new binary that runs but never serves: the old daemon kills it
    after a while and serves on (nobody served the mount meanwhile)."""
    d = copied_daemon
    d.replace(b'#!/bin/sh\n[ "$1" = --version ] && exit 0\nexec sleep 1000\n')
    d.p.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while "did not answer within" not in d.log():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.1)
    assert "serving on" in d.log() and d.p.poll() is None
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
        assert len(_daemon_pids(mnt)) == 1 and _daemon_pids(mnt) != pids
        rc, out, err = run_cli(["umount", mnt])
        assert rc == 0, err
        deadline = time.monotonic() + 15
        while _daemon_pids(mnt):
            assert time.monotonic() < deadline, "the daemon stayed after umount"
            time.sleep(0.05)
    finally:
        force_unmount(mnt)


def test_restart_of_an_fstab_form_mount(dirs):
    """mount.fuse3 runs "ckptfs SOURCE MOUNTPOINT -o OPTS": restart finds
    that daemon too, and the successor keeps the options."""
    src, mnt = dirs
    rc, out, err = run_cli([src, mnt, "-o", "cache_mb=64,auto"])
    assert rc == 0, err
    try:
        _restart(mnt)
        (new,) = _daemon_pids(mnt)
        with open("/proc/%d/cmdline" % new, "rb") as f:
            args = f.read().split(b"\0")
        assert args[1] == b"mount" and b"cache_mb=64,auto" in args, args
        assert read_bytes(os.path.join(mnt, "ddp", "hello.txt")) == b"hi\n"
    finally:
        run_cli(["umount", mnt])


@pytest.mark.parametrize("args", [[], ["a", "b"], ["-x"]])
def test_restart_usage(args):
    rc, out, err = run_cli(["restart"] + args)
    assert rc == 2 and "restart: expected MOUNTPOINT" in err, err


def test_restart_refuses_what_is_not_a_ckptfs_mount(tmp_path):
    rc, out, err = run_cli(["restart", str(tmp_path)])
    assert rc == 1 and "not a ckptfs mount" in err, err
