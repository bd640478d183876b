"""ckptfs exported over NFS (issue #8): nfs-ganesha (FSAL VFS) serves ckptfs
mounts to libnfs clients, NFSv3 and NFSv4, all on loopback in a network
namespace the test creates.

Layout of one test:
  * tmp_path is bind-mounted on itself and made a shared mount, so FUSE
    mounts made below it later (daemon restarts, second mounts) propagate
    into the server's mount namespace;
  * `ip netns add` makes a namespace with only `lo`; a holder process in it
    gets a private mount namespace with a tmpfs on /run (rpcbind's socket and
    lock live there and would otherwise be shared with the host's);
  * rpcbind and ganesha.nfsd run in both namespaces (nsenter -t HOLDER);
    the clients (nfs-ls, nfs-cat, tests/e2e/nfsclient.c) in the network one;
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
import signal
import subprocess
import time

import pytest
import torch
import torch.nn as nn

from conftest import HERE, force_unmount, mounted_at, read_bytes, run_cli, sha256

SERVER = "127.0.0.1"
READY_TIMEOUT = 15          # s for ganesha to serve
CLIENT_TIMEOUT = 60         # s for one client command
CAT_TIMEOUT = 5            # s for nfs-cat while a file may be failing
SETTLE = 10.0               # s a fresh lookup may take to see a new version

# Every server-side process dies with the test process, even when it is
# killed before its fixtures can clean up (tests/e2e/run removes the
# namespaces such a run leaves).
ORPHAN_KILL = ["setpriv", "--pdeathsig", "KILL", "--"]

_names = itertools.count()


def _run(args, timeout=CLIENT_TIMEOUT, check=True, **kw):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    if check and r.returncode != 0:
        pytest.fail("%s: exit %d\n%s" % (" ".join(args), r.returncode,
                                         r.stderr.decode(errors="replace")))
    return r


def _require():
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse: FUSE is not available on this machine")
    probe = "ckptfs-probe-%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", probe], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if r.returncode != 0:
        pytest.skip("no network namespaces here (ip netns add: %s)"
                    % r.stdout.decode(errors="replace").strip())
    subprocess.run(["ip", "netns", "del", probe])
    missing = [p for p in ("ganesha.nfsd", "rpcbind", "nfs-ls", "nfs-cat", "nsenter", "cc",
                           "pkg-config") if not _which(p)]
    if missing:
        pytest.fail("missing: %s (./setup.sh installs nfs-ganesha, nfs-ganesha-vfs, rpcbind, "
                    "libnfs-utils, libnfs-dev)" % ", ".join(missing))


def _which(prog):
    for d in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":") + ["/usr/sbin",
                                                                               "/sbin"]:
        if os.access(os.path.join(d, prog), os.X_OK):
            return True
    return False


@pytest.fixture(scope="module")
def nfsclient(tmp_path_factory):
    _require()
    out = str(tmp_path_factory.mktemp("nfsclient") / "nfsclient")
    flags = _run(["pkg-config", "--cflags", "--libs", "libnfs"]).stdout.decode().split()
    _run(["cc", "-O1", "-Wall", "-o", out, os.path.join(HERE, "nfsclient.c")] + flags)
    return out


# --------------------------------------------------------------------------
# the server

CORE_CONF = """\
NFS_CORE_PARAM {{
    NFS_Port = 2049;
    MNT_Port = 20048;
    Protocols = 3, 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    mount_path_pseudo = true;
}}
NFS_KRB5 {{ Active_krb5 = false; }}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = {recov};
    Only_Numeric_Owners = true;
}}
LOG {{ Default_Log_Level = EVENT; }}
%include "{exports}"
"""

# Attr_Expiration_Time = 0, as README.md says: ganesha otherwise trusts what
# it cached of a directory and of a replaced file's old version (which
# still answers while open, as on a local file system) for 60 s, and a
# fresh NFSv3 lookup gets the old version.
EXPORT_CONF = """\
EXPORT {{
    Export_Id = {id};
    Path = {path};
    Pseudo = {pseudo};
    Filesystem_id = {id}.{id};
    Access_Type = RO;
    Squash = None;
    SecType = sys;
    Protocols = 3, 4;
    Transports = TCP;
    Attr_Expiration_Time = 0;
    FSAL {{ Name = VFS;{fsid} }}
}}
"""


class Server:
    """rpcbind + ganesha in a network namespace of their own (loopback only)."""

    def __init__(self, base):
        self.base = base
        # tests/e2e/run removes those of processes that are gone
        self.netns = "ckptfs-nfs-%d-%d" % (os.getpid(), next(_names))
        self.exports = []       # (path, pseudo, fsid_type)
        self.holder = self.rpcbind = self.ganesha = None
        self.procs = []
        self.log = os.path.join(base, "ganesha.log")
        self.conf = os.path.join(base, "ganesha.conf")
        self.export_conf = os.path.join(base, "exports.conf")

    # -- namespaces
    def create(self):
        _run(["ip", "netns", "add", self.netns])
        self.netns_made = True
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        links = _run(["ip", "-n", self.netns, "-o", "link", "show"]).stdout.decode()
        assert [ln.split(":")[1].strip() for ln in links.splitlines()] == ["lo"], links
        self.holder = subprocess.Popen(
            ORPHAN_KILL + ["nsenter", "--net=/run/netns/" + self.netns, "unshare", "--mount",
             "--propagation", "slave", "--", "sh", "-c",
             "mount -t tmpfs -o mode=0755 tmpfs /run && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(self.holder)
        if self.holder.stdout.readline().strip() != b"ready":
            pytest.fail("could not make the server's mount namespace")

    def enter(self, net_only=False):
        ns = ["--net"] if net_only else ["--net", "--mount"]
        return ORPHAN_KILL + ["nsenter", "-t", str(self.holder.pid)] + ns

    # -- exports
    def add_export(self, path, pseudo, fsid_type="Major64"):
        self.exports.append((path, pseudo, fsid_type))

    def _write_exports(self, exports):
        with open(self.export_conf, "w") as f:
            for i, (path, pseudo, fsid) in enumerate(exports, 1):
                f.write(EXPORT_CONF.format(id=i, path=path, pseudo=pseudo,
                                           fsid=" fsid_type = %s;" % fsid if fsid else ""))

    def reexport(self):
        """Drop every export and add it again (SIGHUP twice): what the
        administrator does by hand after an old-style daemon restart."""
        for exports in ([], self.exports):
            self._write_exports(exports)
            n = self._count("Reread exports complete")
            self.ganesha.send_signal(signal.SIGHUP)
            self._wait_log(lambda: self._count("Reread exports complete") > n, "reload")

    # -- processes
    def start(self):
        if not self.rpcbind:
            sock = "/proc/%d/root/run/rpcbind.sock" % self.holder.pid
            self.rpcbind = self._spawn(self.enter() + ["rpcbind", "-f"], "rpcbind.log")
            self._wait(lambda: os.path.exists(sock), "rpcbind")
        os.makedirs(os.path.join(self.base, "recov"), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(CORE_CONF.format(recov=os.path.join(self.base, "recov"),
                                     exports=self.export_conf))
        self._write_exports(self.exports)
        self.starts = self._count("NFS SERVER INITIALIZED")
        self.ganesha = self._spawn(self.enter() + [
            "ganesha.nfsd", "-F", "-f", self.conf, "-L", self.log,
            "-p", os.path.join(self.base, "ganesha.pid")], "ganesha.out")
        self._wait_log(lambda: self._count("NFS SERVER INITIALIZED") > self.starts, "start")
        errors = [ln for ln in self._lines() if re.search(r"Could not create export|"
                                                         r"Errors processing block", ln)]
        if errors:
            pytest.fail("ganesha refused an export:\n" + "\n".join(errors))

    def stop_ganesha(self):
        if self.ganesha and self.ganesha.poll() is None:
            self.ganesha.terminate()
            try:
                self.ganesha.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.ganesha.kill()
                self.ganesha.wait()
        self.ganesha = None

    def restart_ganesha(self):
        self.stop_ganesha()
        self.start()

    def destroy(self):
        self.stop_ganesha()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p.stdout:
                p.stdout.close()
        if getattr(self, "netns_made", False):
            subprocess.run(["ip", "netns", "del", self.netns])

    def _spawn(self, args, logname):
        out = open(os.path.join(self.base, logname), "ab")
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs.append(p)
        return p

    def _lines(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def _count(self, what):
        return sum(what in ln for ln in self._lines())

    def _wait(self, cond, what):
        deadline = time.monotonic() + READY_TIMEOUT
        while not cond():
            if time.monotonic() > deadline:
                pytest.fail("%s not ready after %ss" % (what, READY_TIMEOUT))
            time.sleep(0.05)

    def _wait_log(self, cond, what):
        def ready():
            if self.ganesha.poll() is not None:
                bad = [ln for ln in self._lines() if re.search(r"CRIT|FATAL|MAJ", ln)]
                pytest.fail("ganesha exited (%s) during %s:\n%s"
                            % (self.ganesha.returncode, what, "\n".join(bad[-20:])))
            return cond()
        self._wait(ready, "ganesha " + what)

    # -- clients
    def url(self, path, version):
        return "nfs://%s%s%s" % (SERVER, path, "?version=4" if version == 4 else "")

    def ls(self, path, version):
        """Relative paths below `path`, recursively, from nfs-ls -R."""
        r = _run(self.enter(True) + ["nfs-ls", "-R", self.url(path, version)])
        return sorted(ln.split(None, 5)[5] for ln in r.stdout.decode().splitlines() if ln.strip())

    def cat(self, path, version, check=True):
        """The bytes of a fresh lookup and read by nfs-cat; (rc, bytes) if
        not check. nfs-cat retries a failing READ without end: rc -1 is
        a timeout."""
        if check:
            return _run(self.enter(True) + ["nfs-cat", self.url(path, version)]).stdout
        try:
            r = _run(self.enter(True) + ["nfs-cat", self.url(path, version)], check=False,
                     timeout=CAT_TIMEOUT)
        except subprocess.TimeoutExpired:
            return (-1, b"")
        return (r.returncode, r.stdout)

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
    _run(["mount", "--bind", base, base])
    try:
        _run(["mount", "--make-shared", base])
        yield base
    finally:
        for mp in reversed(_mounts_below(base)):
            force_unmount(mp)
        subprocess.run(["umount", base])
        if mounted_at(base):
            subprocess.run(["umount", "-l", base])


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

@pytest.mark.parametrize("version", [3, 4])
def test_listing_and_sha256(server, mount_factory, version):
    m = mount_factory(_make_source(server.base))
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

