"""nfs-ganesha (FSAL VFS) and rpcbind serving FUSE mounts on loopback, in a
network namespace of their own: used by tests/e2e/test_nfs.py and by the
benchmark (bench/bench.py). No pytest here: failures raise NfsError.

  * `ip netns add` makes a namespace with only `lo`; a holder process in it
    gets a private mount namespace with a tmpfs on /run (rpcbind's socket and
    lock live there and would otherwise be shared with the host's);
  * rpcbind and ganesha.nfsd run in both namespaces (nsenter -t HOLDER);
    the clients (nfs-ls, nfs-cat, ...) in the network one;
  * the holder's mounts are slaves of the host's: a FUSE mount made later
    reaches ganesha only below a shared mount (see shared_dir());
  * destroy() stops everything by pid and removes the namespace.

Namespaces are named ckptfs-nfs-PID-N: tests/e2e/run removes those whose
process is gone.
"""

import itertools
import os
import re
import shutil
import signal
import subprocess
import time

SERVER = "127.0.0.1"
READY_TIMEOUT = 15          # s for rpcbind and ganesha to serve
CLIENT_TIMEOUT = 60         # s for one client command
TOOLS = ("ganesha.nfsd", "rpcbind", "nfs-ls", "nfs-cat", "nsenter", "unshare", "setpriv", "ip")

# Every server-side process dies with the process that started it, even
# when that one is killed before it can clean up.
ORPHAN_KILL = ["setpriv", "--pdeathsig", "KILL", "--"]

_names = itertools.count()


class NfsError(Exception):
    pass


def run(args, timeout=CLIENT_TIMEOUT, check=True, **kw):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    if check and r.returncode != 0:
        raise NfsError("%s: exit %d\n%s" % (" ".join(args), r.returncode,
                                            r.stderr.decode(errors="replace")))
    return r


def missing_tools(extra=()):
    path = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    return [p for p in TOOLS + tuple(extra) if not shutil.which(p, path=path)]


def netns_problem():
    """Why no network namespace can be made here, or None."""
    probe = "ckptfs-probe-%d" % os.getpid()
    r = subprocess.run(["ip", "netns", "add", probe], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if r.returncode != 0:
        return "ip netns add: %s" % r.stdout.decode(errors="replace").strip()
    subprocess.run(["ip", "netns", "del", probe])
    return None


def shared_dir(path):
    """Makes path a shared mount (bound on itself), so that FUSE mounts made
    below it later reach the server's mount namespace. Undo with
    unshare_dir(path) once the mounts below it are gone."""
    run(["mount", "--bind", path, path])
    run(["mount", "--make-shared", path])


def unshare_dir(path):
    if subprocess.run(["umount", path], stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL)


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
        self.netns = "ckptfs-nfs-%d-%d" % (os.getpid(), next(_names))
        self.exports = []       # (path, pseudo, fsid_type)
        self.holder = self.rpcbind = self.ganesha = None
        self.netns_made = False
        self.procs = []
        self.log = os.path.join(base, "ganesha.log")
        self.conf = os.path.join(base, "ganesha.conf")
        self.export_conf = os.path.join(base, "exports.conf")

    # -- namespaces
    def create(self):
        run(["ip", "netns", "add", self.netns])
        self.netns_made = True
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        links = run(["ip", "-n", self.netns, "-o", "link", "show"]).stdout.decode()
        if [ln.split(":")[1].strip() for ln in links.splitlines()] != ["lo"]:
            raise NfsError("the namespace has other links than lo:\n" + links)
        self.holder = subprocess.Popen(
            ORPHAN_KILL + ["nsenter", "--net=/run/netns/" + self.netns, "unshare", "--mount",
             "--propagation", "slave", "--", "sh", "-c",
             "mount -t tmpfs -o mode=0755 tmpfs /run && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(self.holder)
        if self.holder.stdout.readline().strip() != b"ready":
            raise NfsError("could not make the server's mount namespace")

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
            raise NfsError("ganesha refused an export:\n" + "\n".join(errors))

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
        self.procs = []
        self.rpcbind = self.holder = None
        if self.netns_made:
            subprocess.run(["ip", "netns", "del", self.netns])
            self.netns_made = False

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
                raise NfsError("%s not ready after %ss" % (what, READY_TIMEOUT))
            time.sleep(0.05)

    def _wait_log(self, cond, what):
        def ready():
            if self.ganesha.poll() is not None:
                bad = [ln for ln in self._lines() if re.search(r"CRIT|FATAL|MAJ", ln)]
                raise NfsError("ganesha exited (%s) during %s:\n%s"
                               % (self.ganesha.returncode, what, "\n".join(bad[-20:])))
            return cond()
        self._wait(ready, "ganesha " + what)

    # -- clients
    def url(self, path, version):
        return "nfs://%s%s%s" % (SERVER, path, "?version=4" if version == 4 else "")

    def ls(self, path, version):
        """Relative paths below `path`, recursively, from nfs-ls -R."""
        r = run(self.enter(True) + ["nfs-ls", "-R", self.url(path, version)])
        return sorted(ln.split(None, 5)[5] for ln in r.stdout.decode().splitlines() if ln.strip())

    def cat(self, path, version, timeout=CLIENT_TIMEOUT, check=True):
        """The bytes of a fresh lookup and read by nfs-cat; (rc, bytes) if
        not check (rc -1: a timeout, as nfs-cat retries a failing READ
        without end)."""
        if check:
            return run(self.enter(True) + ["nfs-cat", self.url(path, version)],
                       timeout=timeout).stdout
        try:
            r = run(self.enter(True) + ["nfs-cat", self.url(path, version)], check=False,
                    timeout=timeout)
        except subprocess.TimeoutExpired:
            return (-1, b"")
        return (r.returncode, r.stdout)
