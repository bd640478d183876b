"""Fixtures for the ckptfs end-to-end tests: paths, source dirs, real mounts.

Every mount is started in the foreground (`ckptfs mount -f SRC MNT`) as a
child process with its log in a file, is waited for until `MNT/plain`
appears, and is always unmounted (`fusermount3 -u`, then `-uz`) and reaped,
even when a test fails or hangs: a per-test watchdog kills the daemons of a
test that overruns, which makes any syscall stuck on the mount fail.
"""

import faulthandler
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRCDIR = os.environ.get("CKPTFS_SRCDIR") or os.path.normpath(os.path.join(HERE, "..", ".."))
CKPTFS = os.environ.get("CKPTFS") or os.path.join(SRCDIR, "ckptfs")
CORPUS = os.environ.get("CKPTFS_CORPUS") or os.path.normpath(
    os.path.join(SRCDIR, "..", "shared", "corpus"))

MOUNT_TIMEOUT = 20          # s until MNT/plain must appear
TEST_TIMEOUT = float(os.environ.get("CKPTFS_E2E_TEST_TIMEOUT", "150"))


# --------------------------------------------------------------------------
# helpers

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SYS_CACHESTAT = 451         # x86_64 and every architecture's generic table


def cached_pages(path):
    """Pages of path's own page cache, counted with cachestat(2), which unlike
    mincore needs no mapping (mapping a directly read file drops its cache)."""
    import ctypes
    import errno

    class Range(ctypes.Structure):
        _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]

    class Stat(ctypes.Structure):
        _fields_ = [("nr_cache", ctypes.c_uint64), ("rest", ctypes.c_uint64 * 4)]

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        st = Stat()
        if libc.syscall(SYS_CACHESTAT, fd, ctypes.byref(Range(0, 0)), ctypes.byref(st), 0):
            err = ctypes.get_errno()
            if err == errno.ENOSYS:
                pytest.skip("no cachestat(2) here (Linux >= 6.5)")
            raise OSError(err, os.strerror(err), path)
        return st.nr_cache
    finally:
        os.close(fd)


def _threads_of(pid):
    """Each thread of process pid with where the kernel has it waiting (root
    reads the kernel stack): what a daemon that does not exit is stuck on."""
    out = []
    for tid in sorted(os.listdir("/proc/%d/task" % pid), key=int):
        t = "/proc/%d/task/%s/" % (pid, tid)
        try:
            with open(t + "comm") as f, open(t + "wchan") as w:
                line = "%s %s %s" % (tid, f.read().strip(), w.read().strip())
            with open(t + "stack") as f:
                line += " | " + " < ".join(x.split()[-1] for x in f.read().splitlines()[:6])
        except OSError:
            pass
        out.append(line)
    return "\n".join(out)


def sanitized_build():
    """Whether the daemon under test is built with AddressSanitizer (its
    shadow memory and quarantine make RSS figures meaningless)."""
    r = subprocess.run(["ldd", CKPTFS], capture_output=True, text=True)
    return "libasan" in r.stdout


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def mounted_at(path):
    """Number of mounts whose mountpoint is `path` (from /proc/mounts)."""
    path = os.path.realpath(path)
    n = 0
    with open("/proc/mounts") as f:
        for line in f:
            mp = line.split()[1]
            mp = mp.replace("\\040", " ").replace("\\011", "\t").replace(
                "\\012", "\n").replace("\\134", "\\")
            if mp == path:
                n += 1
    return n


def mounts_below(path):
    path = os.path.realpath(path).rstrip("/") + "/"
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            mp = line.split()[1].replace("\\040", " ")
            if mp.startswith(path):
                out.append(mp)
    return out


def force_unmount(mnt):
    """Unmount everything stacked on `mnt`; True if nothing is left."""
    for _ in range(20):
        if not mounted_at(mnt):
            return True
        r = subprocess.run(["fusermount3", "-u", mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
        if r.returncode != 0:
            subprocess.run(["fusermount3", "-uz", mnt], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
            if mounted_at(mnt):
                subprocess.run(["umount", "-l", mnt], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30)
        time.sleep(0.05)
    return not mounted_at(mnt)


def need_binary():
    if not (os.path.isfile(CKPTFS) and os.access(CKPTFS, os.X_OK)):
        pytest.skip("ckptfs binary not built: %s" % CKPTFS)


def run_cli(args, timeout=30):
    """Run `ckptfs ARGS` with output to files (a daemon that keeps a pipe open
    must not hang us); returns (returncode, stdout, stderr)."""
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([CKPTFS] + list(args), stdin=subprocess.DEVNULL,
                             stdout=out, stderr=err, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise
        out.seek(0)
        err.seek(0)
        return rc, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")


# --------------------------------------------------------------------------
# mounts

_live = []              # Mount objects not yet stopped
_live_lock = threading.Lock()


class Mount:
    """A foreground ckptfs daemon serving `src` at `mnt`."""

    def __init__(self, src, mnt, log, opts=(), flags=()):
        self.src, self.mnt, self.log_path, self.opts = src, mnt, log, list(opts)
        self.flags = list(flags)  # e.g. ["-d"]: libfuse logs every request
        self.proc = None

    def start(self):
        need_binary()
        os.makedirs(self.mnt, exist_ok=True)
        self.logf = open(self.log_path, "ab")
        args = [CKPTFS, "mount", "-f"] + self.flags
        for o in self.opts:
            args += ["-o", o]
        args += [self.src, self.mnt]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        with _live_lock:
            _live.append(self)
        # a daemon that hangs in getattr would hang the isdir() below
        guard = threading.Timer(MOUNT_TIMEOUT + 10, self.kill)
        guard.daemon = True
        guard.start()
        try:
            return self._wait_ready()
        finally:
            guard.cancel()

    def _wait_ready(self):
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.stop()
                pytest.fail("ckptfs exited (%s) before the mount was ready:\n%s"
                            % (rc, self.log()))
            if mounted_at(self.mnt) and os.path.isdir(os.path.join(self.mnt, "plain")):
                return self
            time.sleep(0.02)
        self.stop()
        pytest.fail("mount not ready after %ss:\n%s" % (MOUNT_TIMEOUT, self.log()))

    def path(self, view, *rel):
        return os.path.join(self.mnt, view, *rel)

    def log(self):
        try:
            if not self.logf.closed:
                self.logf.flush()
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self):
        """Watchdog: kill the daemon so syscalls stuck on the mount return."""
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self):
        """Unmount, reap the daemon; returns the list of problems seen."""
        problems = []
        if self.proc is None:
            return problems
        for attempt in range(4):  # another process walking a path through the mount makes it busy a moment
            if not mounted_at(self.mnt):
                break
            r = subprocess.run(["fusermount3", "-u", self.mnt], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=30)
            if r.returncode == 0:
                break
            if attempt == 3 or b"busy" not in r.stdout:
                problems.append("fusermount3 -u: %s" % r.stdout.decode(errors="replace").strip())
                break
            time.sleep(0.5)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            problems.append("daemon did not exit after unmount; killed; its threads:\n"
                            + _threads_of(self.proc.pid))
            self.proc.kill()
            self.proc.wait()
        if not force_unmount(self.mnt):
            problems.append("mount left in /proc/mounts: %s" % self.mnt)
        # an ASan/UBSan build of the daemon reports here (setup.sh check runs one)
        for line in self.log().splitlines():
            if "Sanitizer" in line or ": runtime error: " in line:
                problems.append("daemon: %s" % line.strip())
                break
        with _live_lock:
            if self in _live:
                _live.remove(self)
        try:
            self.logf.close()
        except Exception:
            pass
        self.returncode = self.proc.returncode
        return problems


def _mount_fixture(src, mnt, log, opts=()):
    m = Mount(src, mnt, log, opts)
    try:
        m.start()
        yield m
    finally:
        problems = m.stop()
        if problems:
            pytest.fail("teardown of %s: %s\n%s" % (mnt, "; ".join(problems), m.log()))


def _stop_all(mounts):
    problems = []
    for m in mounts:
        seen = m.stop()
        if seen:
            problems.append("%s\n%s" % ("; ".join(seen), m.log()[-4000:]))
    if problems:
        pytest.fail("mount teardown: " + "\n".join(problems))


@pytest.fixture
def mount_factory(tmp_path):
    """mount_factory(src, opts=()) -> started Mount; all stopped at teardown."""
    made = []

    def make(src, opts=(), name=None):
        name = name or "mnt%d" % len(made)
        m = Mount(src, str(tmp_path / name), str(tmp_path / (name + ".log")), opts)
        made.append(m)
        return m.start()

    yield make
    _stop_all(made)


@pytest.fixture
def dirs(tmp_path):
    """(src, mnt) for tests that run the CLI themselves; src holds hello.txt.
    Whatever they mount there must be gone at the end."""
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "hello.txt").write_text("hi\n")
    yield str(src), str(mnt)
    assert force_unmount(str(mnt)), "mount left at %s" % mnt


@pytest.fixture(scope="module")
def module_src(tmp_path_factory):
    return str(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def mount_module(request, tmp_path_factory):
    """Module-scoped: call with a prepared source dir: m = mount_module(src)."""
    made = []

    def make(src, opts=()):
        base = tmp_path_factory.mktemp("mnt")
        m = Mount(src, str(base / "m"), str(base / "ckptfs.log"), opts)
        made.append(m)
        return m.start()

    yield make
    _stop_all(made)


# --------------------------------------------------------------------------
# watchdog and final cleanup

_overran = set()


def _fire(nodeid):
    _overran.add(nodeid)
    sys.stderr.write("\n# e2e watchdog: %s ran over %ss; killing daemons\n"
                     % (nodeid, TEST_TIMEOUT))
    with _live_lock:
        for m in list(_live):
            m.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Covers setup (module fixtures too), call and teardown of each test."""
    t = threading.Timer(TEST_TIMEOUT, _fire, args=(item.nodeid,))
    t.daemon = True
    t.start()
    # last resort if even that does not unblock us: dump stacks and exit;
    # tests/e2e/run then unmounts whatever is left
    faulthandler.dump_traceback_later(TEST_TIMEOUT + 60, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        t.cancel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if item.nodeid in _overran and rep.passed:
        _overran.discard(item.nodeid)
        rep.outcome = "failed"
        rep.longrepr = "test exceeded %ss: the watchdog killed the daemons" % TEST_TIMEOUT


def pytest_sessionfinish(session, exitstatus):
    with _live_lock:
        left = list(_live)
    for m in left:
        m.stop()
    base = os.environ.get("CKPTFS_E2E_TMP")
    if base:
        for mp in mounts_below(base):
            force_unmount(mp)
