"""ckptfs exported over NFS (issue #8): nfs-ganesha (FSAL VFS) serves ckptfs
mounts to libnfs clients, NFSv3 and NFSv4, all on loopback in a network
namespace the test creates.

Layout of one test:
  * tmp_path is bind-mounted on itself and made a shared mount, so FUSE
    mounts made below it later (daemon restarts, second mounts) propagate
    into the server's mount namespace;
  * nfsserver.Server runs rpcbind and ganesha.nfsd in a network namespace
    with only `lo`; the clients (nfs-ls, nfs-cat, tests/e2e/nfsclient.c)
    run in it too;
  * everything is stopped by pid, unmounted and removed at teardown, also
    when the test fails.

nfsclient.c keeps NFS file handles across a change on the server and reads
through them when told to: what a client holding files open sees.
"""

import hashlib
import io
import itertools
import os
import re
import subprocess
import time

import pytest
import torch
import torch.nn as nn

import nfsserver
from conftest import HERE, force_unmount, mounted_at, read_bytes, run_cli, sha256
from nfsserver import CLIENT_TIMEOUT, missing_tools, netns_problem, run as _run

CAT_TIMEOUT = 5            # s for nfs-cat while a file may be failing
SETTLE = 10.0               # s a fresh lookup may take to see a new version

_names = itertools.count()


def _require():
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: FUSE is not available on this machine")
    problem = netns_problem()
    if problem:
        pytest.skip("no network namespaces here (%s)" % problem)
    missing = missing_tools(("cc", "pkg-config"))
    if missing:
        pytest.fail("missing: %s (./setup.sh installs nfs-ganesha, nfs-ganesha-vfs, rpcbind, "
                    "libnfs-utils, libnfs-dev)" % ", ".join(missing))


@pytest.fixture(scope="module")
def nfsclient(tmp_path_factory):
    _require()
    out = str(tmp_path_factory.mktemp("nfsclient") / "nfsclient")
    flags = _run(["pkg-config", "--cflags", "--libs", "libnfs"]).stdout.decode().split()
    _run(["cc", "-O1", "-Wall", "-o", out, os.path.join(HERE, "nfsclient.c")] + flags)
    return out


# --------------------------------------------------------------------------
# the server (nfsserver.py) and a client holding files open

class Server(nfsserver.Server):
    def cat(self, path, version, check=True):
        return super().cat(path, version, timeout=CLIENT_TIMEOUT if check else CAT_TIMEOUT,
                           check=check)

    def holder_client(self, nfsclient, export, version, files):
        return HeldFiles(self.enter(True) + [nfsclient, self.url(export, version)] + files,
                         self.base)


class HeldFiles:
    """A running nfsclient: files looked up once, read through the same
    handles on every read()."""

    def __init__(self, args, base):
        self.prefix = os.path.join(base, "held%d" % next(_names))
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.opened = self._until("ready")
        assert all(" ok" in ln for ln in self.opened), self.opened

    def _until(self, last):
        lines = []
        while True:
            ln = self.p.stdout.readline().decode(errors="replace").rstrip("\n")
            if not ln and self.p.poll() is not None:
                pytest.fail("nfsclient exited (%s): %s" % (self.p.returncode, lines))
            if ln == last:
                return lines
            lines.append(ln)

    def read(self):
        """Per file: ("ok", bytes) or ("err", message)."""
        n = next(_names)
        self.p.stdin.write(b"read %s.%d\n" % (self.prefix.encode(), n))
        self.p.stdin.flush()
        out = []
        for ln in self._until("done"):
            _, i, status, rest = (ln.split(" ", 3) + [""])[:4]
            if status == "ok":
                out.append(("ok", read_bytes("%s.%d.%s" % (self.prefix, n, i))))
            else:
                out.append(("err", rest))
        return out

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.write(b"quit\n")
                self.p.stdin.close()
                self.p.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()
        self.p.stdout.close()


@pytest.fixture
def shared_tmp(tmp_path):
    """tmp_path as a shared mount: mounts below it reach the server later."""
    base = str(tmp_path)
    _require()
    nfsserver.shared_dir(base)
    try:
        yield base
    finally:
        for mp in reversed(_mounts_below(base)):
            force_unmount(mp)
        nfsserver.unshare_dir(base)


def _mounts_below(base):
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            mp = line.split()[1].replace("\\040", " ")
            if mp.startswith(base + "/"):
                out.append(mp)
    return out


@pytest.fixture
def server(shared_tmp, mount_factory):
    """Created after mount_factory, so it stops before the mounts go."""
    s = Server(shared_tmp)
    clients = []
    s.clients = clients
    try:
        s.create()
        yield s
    finally:
        for c in clients:
            c.close()
        s.destroy()


def _hold(server, nfsclient, export, version, files):
    c = server.holder_client(nfsclient, export, version, files)
    server.clients.append(c)
    return c


# --------------------------------------------------------------------------
# checkpoints

def _state_dict(seed, n=64):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(n, n), nn.BatchNorm1d(n), nn.Linear(n, 3))
    return m.state_dict()


def _ddp_bytes(sd, legacy=False):
    buf = io.BytesIO()
    torch.save({"module." + k: v for k, v in sd.items()}, buf,
               _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _replace(path, data):
    _write(path + ".tmp", data)
    os.rename(path + ".tmp", path)


def _make_source(tmp, name="src", seed=0):
    src = os.path.join(tmp, name)
    os.makedirs(os.path.join(src, "runs", "r1"))
    _write(os.path.join(src, "model.pt"), _ddp_bytes(_state_dict(seed)))
    _write(os.path.join(src, "runs", "r1", "legacy.pth"), _ddp_bytes(_state_dict(seed + 1), True))
    _write(os.path.join(src, "notes.txt"), b"not a checkpoint\n")
    return src


def _local_tree(root):
    out = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            out.append(os.path.relpath(os.path.join(d, n), root))
    return sorted(out)


def _assert_state_dict(got, want):
    assert list(got) == list(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


# --------------------------------------------------------------------------
# tests

@pytest.mark.parametrize("opts", [(), ("direct_io",)], ids=["cached", "direct_io"])
@pytest.mark.parametrize("version", [3, 4])
def test_listing_and_sha256(server, mount_factory, version, opts):
    m = mount_factory(_make_source(server.base), opts)
    server.add_export(m.mnt, "/ckpt")
    server.start()
    tree = _local_tree(m.mnt)
    assert server.ls("/ckpt", version) == tree
    files = [p for p in tree if os.path.isfile(os.path.join(m.mnt, p))]
    assert len(files) == 6
    for p in files:
        got = server.cat("/ckpt/" + p, version)
        assert hashlib.sha256(got).hexdigest() == sha256(os.path.join(m.mnt, p)), p


@pytest.mark.parametrize("version", [3, 4])
def test_torch_load_of_a_copy(server, mount_factory, version):
    m = mount_factory(_make_source(server.base, seed=5))
    server.add_export(m.mnt, "/ckpt")
    server.start()
    want = _state_dict(5)
    for view, prefix in (("plain", ""), ("ddp", "module.")):
        out = os.path.join(server.base, "copy-%s.pt" % view)
        _write(out, server.cat("/ckpt/%s/model.pt" % view, version))
        got = torch.load(out, map_location="cpu")
        _assert_state_dict(got, {prefix + k: v for k, v in want.items()})


def test_ganesha_restart_keeps_v3_handles(server, mount_factory, nfsclient):
    m = mount_factory(_make_source(server.base))
    server.add_export(m.mnt, "/ckpt")
    server.start()
    files = ["plain/model.pt", "ddp/runs/r1/legacy.pth", "plain/notes.txt"]
    want = [read_bytes(os.path.join(m.mnt, f)) for f in files]
    held = _hold(server, nfsclient, "/ckpt", 3, files)
    assert held.read() == [("ok", w) for w in want]
    server.restart_ganesha()
    _drop_caches(m.mnt, files)              # ganesha reopens by handle
    assert held.read() == [("ok", w) for w in want]
    assert server.cat("/ckpt/plain/model.pt", 4) == want[0]


def _drop_caches(mnt, files):
    """Evicts the files' pages from the FUSE mount and unused inodes and
    dentries, so that ganesha's reads reach the daemon."""
    for f in files:
        with open(os.path.join(mnt, f), "rb") as fd:
            os.posix_fadvise(fd.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def _one_version(result, old):
    """A held handle of a changed file reads the old version whole or fails
    with a stale handle; never the new bytes, never a mix."""
    status, data = result
    if status == "ok":
        assert data == old, "a held handle served bytes of another version"
    else:
        assert re.search(r"STALE|stale", data), "held handle: %s" % data


def _eventually(fetch, want):
    deadline = time.monotonic() + SETTLE
    while True:
        got = fetch()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.parametrize("version", [3, 4])
def test_atomic_replace_seen_by_clients(server, mount_factory, nfsclient, version):
    src = _make_source(server.base)
    m = mount_factory(src)
    server.add_export(m.mnt, "/ckpt")
    server.start()
    old = read_bytes(m.path("plain", "model.pt"))
    held = _hold(server, nfsclient, "/ckpt", version, ["plain/model.pt"])
    assert held.read() == [("ok", old)]
    new_sd = _state_dict(9, n=80)
    _replace(os.path.join(src, "model.pt"), _ddp_bytes(new_sd))
    time.sleep(1.5)                      # past the mount's attribute timeout
    new = read_bytes(m.path("plain", "model.pt"))
    assert new != old
    got = _eventually(lambda: server.cat("/ckpt/plain/model.pt", version, check=False),
                      (0, new))
    assert got == (0, new), "a fresh lookup over NFS does not read the new version"
    _assert_state_dict(torch.load(io.BytesIO(got[1]), map_location="cpu"), new_sd)
    _one_version(held.read()[0], old)


@pytest.mark.parametrize("version", [3, 4])
def test_in_place_save_seen_as_new_version(server, mount_factory, nfsclient, version):
    """Issue #8 item 5: ganesha keeps its fd, so an in-place save was
    NFS3ERR_IO for as long as ganesha kept it (minutes)."""
    src = _make_source(server.base)
    m = mount_factory(src)
    server.add_export(m.mnt, "/ckpt")
    server.start()
    old = read_bytes(m.path("plain", "model.pt"))
    held = _hold(server, nfsclient, "/ckpt", version, ["plain/model.pt"])
    assert held.read() == [("ok", old)]
    path = os.path.join(src, "model.pt")
    ino = os.stat(path).st_ino
    new_sd = _state_dict(11)             # same shapes: the same size, in place
    torch.save({"module." + k: v for k, v in new_sd.items()}, path)
    assert os.stat(path).st_ino == ino
    time.sleep(1.5)
    new = read_bytes(m.path("plain", "model.pt"))
    assert new != old
    got = _eventually(lambda: server.cat("/ckpt/plain/model.pt", version, check=False),
                      (0, new))
    assert got == (0, new), ("a fresh lookup over NFS does not read the version saved in "
                             "place (rc %d, %d bytes)" % (got[0], len(got[1])))
    _one_version(held.read()[0], old)


def test_two_mounts_one_ganesha(server, mount_factory, nfsclient):
    """Issue #8 item 8: every FUSE mount has major device number 0, so two
    exports with fsid_type = Major64 collide; one keeps Major64, the other
    takes the default (major and minor)."""
    a = mount_factory(_make_source(server.base, "src-a", seed=1))
    b = mount_factory(_make_source(server.base, "src-b", seed=2))
    server.add_export(a.mnt, "/a", "Major64")
    server.add_export(b.mnt, "/b", None)
    server.start()
    held = {}
    for name, m in (("a", a), ("b", b)):
        for version in (3, 4):
            assert server.ls("/" + name, version) == _local_tree(m.mnt)
            assert server.cat("/%s/ddp/model.pt" % name, version) == \
                read_bytes(m.path("ddp", "model.pt"))
        held[name] = _hold(server, nfsclient, "/" + name, 3, ["plain/model.pt"])
    assert read_bytes(a.path("plain", "model.pt")) != read_bytes(b.path("plain", "model.pt"))
    server.restart_ganesha()
    for name, m in (("a", a), ("b", b)):
        assert held[name].read() == [("ok", read_bytes(m.path("plain", "model.pt")))]


def test_daemon_restart_keeps_held_handles(server, mount_factory, nfsclient):
    """Issue #8 item 8: `ckptfs restart` hands the FUSE connection to a new
    daemon; ganesha never notices, held handles and open files read on."""
    m = mount_factory(_make_source(server.base))
    server.add_export(m.mnt, "/ckpt")
    server.start()
    files = ["plain/model.pt", "ddp/runs/r1/legacy.pth", "plain/notes.txt"]
    want = [read_bytes(os.path.join(m.mnt, f)) for f in files]
    held = {v: _hold(server, nfsclient, "/ckpt", v, files) for v in (3, 4)}
    for v in (3, 4):
        assert held[v].read() == [("ok", w) for w in want]
    with open(m.path("plain", "model.pt"), "rb") as local:
        head = local.read(100)
        rc, out, err = run_cli(["restart", m.mnt])
        assert rc == 0, err
        # a new process serves; the old one handed over and exited 0
        assert m.proc.wait(timeout=20) == 0 and mounted_at(m.mnt), m.log()
        os.posix_fadvise(local.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert head + local.read() == want[0], "a file open across the restart"
    assert "restarted" in m.log()
    _drop_caches(m.mnt, files)              # the reads below reach the new daemon
    for v in (3, 4):
        assert held[v].read() == [("ok", w) for w in want], "NFSv%d held handles" % v
    assert server.cat("/ckpt/ddp/runs/r1/legacy.pth", 3) == want[1]
    assert sorted(os.listdir(m.path("plain"))) == ["model.pt", "notes.txt", "runs"]

