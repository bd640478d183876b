"""ckptfs run as a file system service (issue 11): fstab through
mount.fuse3, start-up failures reported by the command, umount of ckptfs
mounts only (and of dead ones), df, systemd readiness and units."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import CKPTFS, SRCDIR, Mount, force_unmount, mounted_at, need_binary, read_bytes, run_cli

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root")

# mount(8) runs helpers without PATH: /bin/sh then searches its default one.
SYSTEM_BIN = "/usr/local/bin/ckptfs"


def fstype_at(mnt):
    """The fs type of the topmost mount at mnt, from mountinfo."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].replace("\\040", " ") == os.path.realpath(mnt):
                found = fields[fields.index("-") + 1]
    return found


def daemons_at(mnt):
    pids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
            with open("/proc/%s/stat" % d) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        if mnt.encode() in argv and argv[0].endswith(b"ckptfs"):
            pids.append(int(d))
    return pids


def wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if os.path.exists("/proc/%d" % p) and
                open("/proc/%d/stat" % p).read().rsplit(")", 1)[1].split()[0] != "Z"]:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def system_ckptfs():
    """ckptfs where mount.fuse3's /bin/sh finds it, for this test only."""
    need_binary()
    if os.path.lexists(SYSTEM_BIN):
        if os.path.realpath(SYSTEM_BIN) != os.path.realpath(CKPTFS):
            pytest.skip("%s is another ckptfs; not replacing it" % SYSTEM_BIN)
        yield SYSTEM_BIN
        return
    os.symlink(os.path.realpath(CKPTFS), SYSTEM_BIN)
    try:
        yield SYSTEM_BIN
    finally:
        os.unlink(SYSTEM_BIN)


def _mount_cmd_and_umount(cmd, src, mnt):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        # mount(8) returned: the file system must answer already
        assert fstype_at(mnt) == "fuse.ckptfs"
        assert read_bytes(os.path.join(mnt, "plain", "hello.txt")) == b"hi\n"
        pids = daemons_at(mnt)
        assert pids, "no daemon serves %s" % mnt
        r = subprocess.run(["umount", mnt], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        assert not mounted_at(mnt)
        assert wait_gone(pids), "daemon still running after umount"
    finally:
        force_unmount(mnt)


@needs_root
def test_fstab_mount_through_mount_fuse3(dirs, system_ckptfs):
    """What an fstab line 'SRC MNT fuse.ckptfs OPTS' does: mount(8) runs
    mount.fuse3, which runs 'ckptfs SRC MNT -o OPTS', generic options
    included."""
    src, mnt = dirs
    _mount_cmd_and_umount(["mount", "-t", "fuse.ckptfs", src, mnt, "-o",
                           "rw,dev,suid,exec,noauto,nouser,_netdev,defaults,cache_mb=16"], src, mnt)


@needs_root
def test_fuse_type_with_helper_path(dirs):
    """The other fstab form: type fuse, source 'HELPER#SRC'."""
    need_binary()
    src, mnt = dirs
    _mount_cmd_and_umount(["mount", "-t", "fuse", "%s#%s" % (os.path.realpath(CKPTFS), src), mnt,
                           "-o", "ro,nodev,nosuid"], src, mnt)


def test_direct_fstab_form_ignores_generic_options(dirs):
    src, mnt = dirs
    rc, out, err = run_cli([src, mnt, "-o", "ro,dev,suid,auto,user,x-systemd.automount,comment=x"])
    try:
        assert rc == 0, err
        assert read_bytes(os.path.join(mnt, "ddp", "hello.txt")) == b"hi\n"
        opts = [ln.split()[3] for ln in open("/proc/mounts") if ln.split()[1] == os.path.realpath(mnt)]
        assert opts and "nosuid" in opts[0].split(",") and "nodev" in opts[0].split(",")
    finally:
        run_cli(["umount", mnt])
        force_unmount(mnt)


def test_failed_background_mount_exits_nonzero_with_reason(dirs):
    """max_read=65536 passes libfuse's option parsing and fails at INIT,
    after the command used to return 0."""
    src, mnt = dirs
    rc, out, err = run_cli(["mount", "-o", "max_read=65536", src, mnt], timeout=60)
    try:
        assert rc != 0, "exit 0 although nothing is mounted; stderr %r" % err
        assert "read size" in err or "max_read" in err, err
        assert not mounted_at(mnt)
    finally:
        force_unmount(mnt)


def test_background_mount_failure_before_mount_reported(dirs, tmp_path):
    src, mnt = dirs
    rc, out, err = run_cli(["mount", "-o", "no_such_option_xyz", src, mnt], timeout=60)
    assert rc != 0 and "no_such_option_xyz" in err, err
    assert not mounted_at(mnt)


@needs_root
def test_umount_refuses_tmpfs(tmp_path):
    need_binary()
    t = tmp_path / "tmpfs"
    t.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(t)], check=True)
    try:
        rc, out, err = run_cli(["umount", str(t)])
        assert rc == 1, err
        assert "not a ckptfs mount" in err and "tmpfs" in err, err
        assert mounted_at(str(t)) == 1
        rc, out, err = run_cli(["umount", "-l", str(t)])
        assert rc == 1 and mounted_at(str(t)) == 1, err
    finally:
        subprocess.run(["umount", str(t)])


def test_umount_of_a_plain_directory_refused(dirs):
    src, _ = dirs
    rc, out, err = run_cli(["umount", src])
    assert rc == 1 and "not a mount point" in err, err


def test_umount_lazy_with_a_file_open(dirs, tmp_path):
    src, mnt = dirs
    m = Mount(src, mnt, str(tmp_path / "log")).start()
    try:
        with open(os.path.join(mnt, "plain", "hello.txt"), "rb") as f:
            rc, out, err = run_cli(["umount", "--lazy", mnt])
            assert rc == 0, err
            assert not mounted_at(mnt)
            assert f.read() == b"hi\n"     # an open file keeps working
        assert m.proc.wait(timeout=15) == 0, m.log()
    finally:
        m.stop()


def test_umount_of_a_dead_mount_detaches_it(dirs, tmp_path):
    """The daemon killed while a reader holds a file open: the mount is dead
    (ENOTCONN); umount detaches it and says so."""
    src, mnt = dirs
    m = Mount(src, mnt, str(tmp_path / "log")).start()
    try:
        f = open(os.path.join(mnt, "plain", "hello.txt"), "rb")
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(timeout=15)
        with pytest.raises(OSError) as e:
            os.statvfs(mnt)
        assert e.value.errno == 107  # ENOTCONN
        rc, out, err = run_cli(["umount", mnt])
        assert rc == 0, err
        assert "gone" in err and "detach" in err, err
        assert not mounted_at(mnt)
        with pytest.raises(OSError):
            f.close()  # the flush of a file on a dead mount
    finally:
        m.stop()


def test_df_reports_the_source(dirs, tmp_path):
    src, mnt = dirs
    m = Mount(src, mnt, str(tmp_path / "log")).start()
    try:
        before = os.statvfs(src)
        got = os.statvfs(mnt)
        after = os.statvfs(src)
    finally:
        m.stop()
    for field in ("f_bsize", "f_frsize", "f_blocks", "f_files"):
        assert getattr(got, field) == getattr(before, field) == getattr(after, field), field
    # free figures: between the source's before and after (others write too)
    for field in ("f_bfree", "f_bavail", "f_ffree", "f_favail"):
        lo, hi = sorted((getattr(before, field), getattr(after, field)))
        assert lo <= getattr(got, field) <= hi, (field, getattr(got, field), lo, hi)
    assert got.f_bfree > 0


def test_sd_notify_ready_once_the_mount_answers(dirs, tmp_path):
    """Type=notify: READY=1 on NOTIFY_SOCKET once the file system answers;
    STOPPING=1 when it stops."""
    need_binary()
    src, mnt = dirs
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    log = open(str(tmp_path / "log"), "wb")
    p = subprocess.Popen([CKPTFS, "mount", "-f", src, mnt], env=env, stdin=subprocess.DEVNULL,
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg.split("\n"), msg
        # ready means usable, with no waiting
        assert mounted_at(mnt) == 1
        assert read_bytes(os.path.join(mnt, "plain", "hello.txt")) == b"hi\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=15) == 0
        assert "STOPPING=1" in sock.recv(4096).decode().split("\n")
        assert not mounted_at(mnt)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        force_unmount(mnt)
        sock.close()
        log.close()


@pytest.mark.parametrize("unit", ["ckptfs@.service", "mnt-ckpt.mount"])
def test_systemd_unit_verifies(unit, tmp_path):
    """systemd-analyze verify: no warning, with ExecStart pointing at this
    build (verify checks that the command exists)."""
    need_binary()
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    with open(os.path.join(SRCDIR, "contrib", unit)) as f:
        text = f.read().replace("/usr/local/bin/ckptfs", os.path.realpath(CKPTFS))
    name = unit.replace("@.", "@mnt-ckpt.")
    (tmp_path / name).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
                       capture_output=True, text=True, cwd=str(tmp_path), timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert "Before=nfs-server.service nfs-ganesha.service" in text
    if unit.endswith(".service"):
        assert "Type=notify" in text and "mount -f" in text
