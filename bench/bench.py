"""ckptfs benchmark suite: ckptfs against the physical limit and the best FUSE
passthrough, side by side, on the same files, in one run.  Run it as
`make bench` or `bench/run` (root, /dev/fuse, torch).  It prints numbers and
never fails on them; it writes bench/results/latest.md and latest.json.

Environment:
  CKPTFS       the daemon binary (default ./ckptfs)
  PYTHON3      used by bench/run (default /usr/bin/python3, it needs torch)
  BENCH_TMP    where the test files go (default /var/tmp); needs ~5 GB free
  BENCH_REPS   repetitions of each figure (default 5; slow ones use fewer)
  BENCH_OUT    the results directory (default bench/results next to this)
  BENCH_KEEP   1: keep the generated files (for repeated runs, see BENCH_FILES)
  BENCH_FILES  a directory of files a kept run generated: reuse them

Every figure is the median of repetitions, with min and max.  "cold" means a
fresh mount (the FUSE page cache and the daemon's layout cache are empty)
with the source in the page cache; "disk-cold" also drops all caches
(echo 3 > /proc/sys/vm/drop_caches) first; "warm" is a re-read on the same
mount.
"""

import atexit
import contextlib
import datetime
import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "tests", "e2e"))  # nfsserver.py, shared with test_nfs.py
import ckzip  # noqa: E402
import nfsserver  # noqa: E402

import torch  # noqa: E402

CKPTFS = os.path.abspath(os.environ.get("CKPTFS", "./ckptfs"))
REPS = max(1, int(os.environ.get("BENCH_REPS", "5")))
SLOW_REPS = max(1, min(REPS, 3))
OUT = os.environ.get("BENCH_OUT") or os.path.join(HERE, "results")
EXAMPLES = "/usr/share/doc/libfuse3-dev/examples"

BIG_TENSORS, BIG_BYTES = 200, 1536 << 20          # ~1.5 GB, 200 tensors
MANY_TENSORS, MANY_NUMEL = 20000, 256             # 20,000 tensors of 1 KiB
HUGE_TENSORS, HUGE_TENSOR_BYTES = 16, 256 << 20   # 4 GiB, sparse
SMALL_FILES = 10000
ATTR_TIMEOUT_S = 1.2    # past ckptfs's 1 s attribute and entry timeouts

WORK = None
CHILDREN = []
RAW = {"figures": {}, "notes": []}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# statistics and results

def summary(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "all": xs}


def record(key, unit, xs, what):
    RAW["figures"][key] = dict(summary(xs), unit=unit, what=what)
    s = RAW["figures"][key]
    log(f"  {key:34s} {fmt(s['median'], unit):>12s}  [{fmt(s['min'], unit)} .. {fmt(s['max'], unit)}]  n={s['n']}")
    return s


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "GB/s":
        return f"{v:.2f} GB/s"
    if unit == "s":
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    return f"{v:.3g} {unit}"


# --------------------------------------------------------------------------
# processes, mounts, caches

def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm(path):
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


def mount_entry(mnt):
    """(major:minor, fstype) of the mount at mnt, from mountinfo (no access to it)."""
    mnt = os.path.realpath(mnt)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mp = parts[4].replace("\\040", " ").replace("\\134", "\\")
            if mp == mnt:
                sep = parts.index("-")
                return parts[2], parts[sep + 1]
    return None


class Mount:
    """A FUSE daemon in the foreground on mnt, unmounted and reaped on exit."""

    def __init__(self, argv, mnt, ready, read_ahead_kb=None):
        self.mnt = mnt
        self.logf = open(os.path.join(WORK, "daemon.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=self.logf, start_new_session=True)
        CHILDREN.append(self)
        deadline = time.time() + 20
        while not mount_entry(mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mount failed: {' '.join(argv)} (see {WORK}/daemon.log)")
            time.sleep(0.005)
        while not os.path.exists(os.path.join(mnt, ready)):
            time.sleep(0.005)
        if read_ahead_kb:
            with open(f"/sys/class/bdi/{mount_entry(mnt)[0]}/read_ahead_kb", "w") as f:
                f.write(f"{read_ahead_kb}\n")

    @property
    def pid(self):
        return self.proc.pid

    def read_ahead_kb(self):
        with open(f"/sys/class/bdi/{mount_entry(self.mnt)[0]}/read_ahead_kb") as f:
            return int(f.read())

    def close(self):
        if self.proc is None:
            return
        for args in (["-u"], ["-uz"]):
            if not mount_entry(self.mnt):
                break
            subprocess.run(["fusermount3", *args, self.mnt], stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.logf.close()
        CHILDREN.remove(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def ckptfs(src, mnt, read_ahead_kb=None, opts=None):
    return Mount([BIN["ckptfs"], "mount", "-f", *(["-o", opts] if opts else []), src, mnt], mnt, "plain",
                 read_ahead_kb)


def passthrough(binary, src, mnt, opts="", read_ahead_kb=None):
    o = f"source={src}" + (f",{opts}" if opts else "")
    return Mount([binary, "-f", "-o", o, mnt], mnt, os.path.basename(FILES["big"]), read_ahead_kb)


def cleanup():
    for m in list(CHILDREN):
        try:
            m.close()
        except Exception as e:  # keep cleaning up
            log(f"cleanup: {e}")
    if WORK and os.path.isdir(WORK):
        with open("/proc/self/mountinfo") as f:
            left = [l.split()[4] for l in f if l.split()[4].startswith(WORK + "/")]
        for mp in left:  # FUSE mounts, and the NFS section's shared bind mount
            if subprocess.run(["fusermount3", "-uz", mp], stderr=subprocess.DEVNULL).returncode:
                subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
        if os.environ.get("BENCH_KEEP") == "1":
            log(f"kept {WORK}")
        else:
            shutil.rmtree(WORK, ignore_errors=True)


def on_signal(signum, frame):
    cleanup()
    sys.exit(128 + signum)


# --------------------------------------------------------------------------
# primitives that time one thing

def dd(path):
    """Seconds for a sequential read with 1 MiB blocks, as dd reports it."""
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True, text=True,
                       env=dict(os.environ, LC_ALL="C"), check=True)
    m = re.search(r"copied, ([0-9.e+-]+) s", r.stderr)
    return float(m.group(1))


def timed(fn, *a):
    t = time.perf_counter()
    fn(*a)
    return time.perf_counter() - t


def mmap_read(path):
    r = run([BIN["mmapread"], path], capture_output=True, text=True)
    return float(r.stdout)


def rss_kb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def gbps(size, seconds):
    return [size / s / 1e9 for s in seconds]


# --------------------------------------------------------------------------
# setup: tools and files

BIN = {}
FILES = {}


def build_tools():
    """passthrough_ll from Debian's libfuse3-dev examples, as shipped and with
    one added line that asks for splice (3.14's example never does: it does
    not set FUSE_CAP_SPLICE_WRITE and has no option for it)."""
    d = os.path.join(WORK, "tools")
    os.makedirs(d)
    shutil.copy(os.path.join(EXAMPLES, "passthrough_helpers.h"), d)
    with open(os.path.join(EXAMPLES, "passthrough_ll.c")) as f:
        stock = f.read()
    anchor = "\tif(conn->capable & FUSE_CAP_EXPORT_SUPPORT)"
    if anchor not in stock:
        raise RuntimeError("passthrough_ll.c: lo_init not as expected")
    spliced = stock.replace(anchor, "\tconn->want |= conn->capable & (FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);\n"
                            + anchor, 1)
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True,
                           check=True).stdout.split()
    for name, text in (("passthrough_ll", stock), ("passthrough_ll_splice", spliced)):
        c = os.path.join(d, name + ".c")
        with open(c, "w") as f:
            f.write(text)
        BIN[name] = os.path.join(d, name)
        run(["cc", "-O2", "-o", BIN[name], c, *flags])
    # A copy: a rebuild of ./ckptfs during the run does not mix two versions.
    BIN["ckptfs"] = os.path.join(d, "ckptfs")
    shutil.copy(CKPTFS, BIN["ckptfs"])
    BIN["mmapread"] = os.path.join(d, "mmapread")
    run(["cc", "-O2", "-o", BIN["mmapread"], os.path.join(HERE, "mmapread.c")])


def make_files(src):
    FILES["big"] = os.path.join(src, "big.pth")
    FILES["many"] = os.path.join(src, "many.pth")
    FILES["huge"] = os.path.join(src, "huge", "huge.pth")
    FILES["small"] = os.path.join(src, "small")
    if os.path.exists(os.path.join(src, ".complete")):
        log(f"reusing files in {src}")
        return
    os.makedirs(os.path.join(src, "huge"), exist_ok=True)
    t = time.time()
    ckzip.save_state_dict(FILES["big"], BIG_TENSORS, BIG_BYTES // BIG_TENSORS // 4)
    ckzip.save_state_dict(FILES["many"], MANY_TENSORS, MANY_NUMEL)
    if not ckzip.check_sparse_writer(WORK):
        raise RuntimeError("the sparse torch-zip writer does not load in torch")
    ckzip.write_sparse_checkpoint(FILES["huge"], HUGE_TENSORS, HUGE_TENSOR_BYTES)
    template = os.path.join(WORK, "small_template.pth")
    ckzip.save_state_dict(template, 4, 64)
    ckzip.make_many_small(FILES["small"], SMALL_FILES, template)
    open(os.path.join(src, ".complete"), "w").close()
    log(f"generated test files in {time.time() - t:.1f} s")


def machine():
    def first(path, pat):
        try:
            with open(path) as f:
                for line in f:
                    if re.match(pat, line):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "?"

    fault = float(run([BIN["mmapread"], "-faults"], capture_output=True, text=True).stdout)
    df = subprocess.run(["df", "-T", WORK], capture_output=True, text=True).stdout.splitlines()[-1].split()
    return {
        "cpu": first("/proc/cpuinfo", r"model name"),
        "cores": os.cpu_count(),
        "memory": f"{int(first('/proc/meminfo', r'MemTotal').split()[0]) / 2**20:.0f} GiB",
        "kernel": platform.release(),
        "libfuse": subprocess.run(["pkg-config", "--modversion", "fuse3"], capture_output=True,
                                  text=True).stdout.strip(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "filesystem": f"{df[1]} on {df[0]}",
        "pipe_max_size": open("/proc/sys/fs/pipe-max-size").read().strip(),
        "page_fault_us": round(fault * 1e6, 1),
        "loadavg_start": open("/proc/loadavg").read().split()[0],
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


# --------------------------------------------------------------------------
# the measurements

def seq_reads(src, mnt):
    log("1-3. sequential reads (dd bs=1M)")
    big = FILES["big"]
    size = os.path.getsize(big)
    name = os.path.basename(big)
    warm(big)
    for _ in range(2):
        dd(big)
    record("pagecache", "GB/s", gbps(size, [dd(big) for _ in range(REPS)]), "dd of the source from the page cache")

    # Round robin: every repetition reads through each setting once, so a
    # change in the machine's load affects them all alike.
    view = os.path.join(mnt, "plain", name)
    variants = [("pll", lambda: passthrough(BIN["passthrough_ll"], src, mnt), name, SLOW_REPS,
                 "passthrough_ll as shipped (no splice), fresh mount"),
                ("pll_splice", lambda: passthrough(BIN["passthrough_ll_splice"], src, mnt), name, REPS,
                 "passthrough_ll + splice, fresh mount"),
                ("pll_splice_ra512", lambda: passthrough(BIN["passthrough_ll_splice"], src, mnt, "", 512), name,
                 REPS, "passthrough_ll + splice, read_ahead_kb=512 (largest request that splices), fresh mount"),
                ("view", lambda: ckptfs(src, mnt), os.path.join("plain", name), REPS,
                 "ckptfs plain/ view, fresh mount"),
                ("view_ra512", lambda: ckptfs(src, mnt, 512), os.path.join("plain", name), REPS,
                 "ckptfs plain/ view, read_ahead_kb=512 set by the bench, fresh mount")]
    cold = {key: [] for key, *_ in variants}
    for i in range(REPS):
        for key, mk, rel, reps, what in variants:
            if i < reps:
                with mk() as m:
                    cold[key].append(dd(os.path.join(mnt, rel)))
                    if key == "view" and i == 0:
                        RAW["ckptfs_read_ahead_kb"] = m.read_ahead_kb()
    for key, mk, rel, reps, what in variants:
        record(key + "_cold", "GB/s", gbps(size, cold[key]), what)
    with passthrough(BIN["passthrough_ll_splice"], src, mnt, "cache=always"):
        dd(os.path.join(mnt, name))
        record("pll_warm", "GB/s", gbps(size, [dd(os.path.join(mnt, name)) for _ in range(REPS)]),
               "passthrough_ll + splice -o cache=always, re-read")
    with ckptfs(src, mnt):
        dd(view)
        record("view_warm", "GB/s", gbps(size, [dd(view) for _ in range(REPS)]),
               "ckptfs plain/ view, re-read on the same mount")

    log("   disk-cold (drop_caches before each read)")
    xs, ps, vs = [], [], []
    for _ in range(SLOW_REPS):
        drop_caches()
        xs.append(dd(big))
        with passthrough(BIN["passthrough_ll_splice"], src, mnt):
            drop_caches()
            ps.append(dd(os.path.join(mnt, name)))
        with ckptfs(src, mnt):
            os.stat(view)
            drop_caches()
            vs.append(dd(view))
    record("disk_source", "GB/s", gbps(size, xs), "dd of the source, caches dropped")
    record("disk_pll_splice", "GB/s", gbps(size, ps), "passthrough_ll + splice, caches dropped")
    record("disk_view", "GB/s", gbps(size, vs), "ckptfs view, caches dropped (layout built before)")
    warm(big)


def mmap_reads(src, mnt):
    log("4. mmap reads")
    big = FILES["big"]
    size = os.path.getsize(big)
    view = os.path.join(mnt, "plain", os.path.basename(big))
    warm(big)
    mmap_read(big)
    record("mmap_source", "GB/s", gbps(size, [mmap_read(big) for _ in range(REPS)]), "mmap read of the source")
    xs, ws = [], []
    for i in range(REPS):
        with ckptfs(src, mnt):
            xs.append(mmap_read(view))
            if i == 0:
                ws = [mmap_read(view) for _ in range(REPS)]
    record("mmap_view_cold", "GB/s", gbps(size, xs), "mmap read of the view, fresh mount")
    record("mmap_view_warm", "GB/s", gbps(size, ws), "mmap read of the view, again on the same mount")
    ps = []
    for _ in range(REPS):
        with passthrough(BIN["passthrough_ll_splice"], src, mnt):
            ps.append(mmap_read(os.path.join(mnt, os.path.basename(big))))
    record("mmap_pll", "GB/s", gbps(size, ps), "mmap read through passthrough_ll + splice, fresh mount")


def strip_module(sd):
    """What users write today (torch.nn.modules.utils.consume_prefix_in_state_dict_if_present)."""
    return type(sd)((k[7:] if k.startswith("module.") else k, v) for k, v in sd.items())


def load_in_fresh_process(mode, *paths):
    """Seconds of one torch operation in a new interpreter (bench/loadone.py)."""
    r = run([sys.executable, os.path.join(HERE, "loadone.py"), mode, *paths], capture_output=True, text=True)
    return float(r.stdout)


def torch_loads(src, mnt):
    log("5. torch.load (each in a fresh process)")
    for key, reps in (("big", SLOW_REPS), ("many", REPS)):
        path = FILES[key]
        view = os.path.join(mnt, "plain", os.path.basename(path))
        warm(path)
        expected = list(strip_module(torch.load(path)))
        xs, rs, vs, ws = [], [], [], []
        for i in range(reps):  # round robin, as for the reads
            xs.append(load_in_fresh_process("load", path))
            rs.append(load_in_fresh_process("rename", path))
            with ckptfs(src, mnt):
                vs.append(load_in_fresh_process("load", view))
                if i == 0:
                    if list(torch.load(view)) != expected:
                        RAW["notes"].append(f"WRONG KEYS through the view of {key}.pth")
                    ws = [load_in_fresh_process("load", view) for _ in range(reps)]
        record(f"load_{key}_source", "s", xs, f"torch.load of the source ({key})")
        record(f"load_{key}_rename", "s", rs, f"torch.load of the source + key renaming in Python ({key})")
        record(f"load_{key}_view_cold", "s", vs, f"torch.load through the view, fresh mount ({key})")
        record(f"load_{key}_view_warm", "s", ws, f"torch.load through the view, same mount ({key})")
    if "mmap" in inspect.signature(torch.load).parameters:
        path = FILES["big"]
        view = os.path.join(mnt, "plain", os.path.basename(path))
        xs, vs = [], []
        for _ in range(SLOW_REPS):
            xs.append(load_in_fresh_process("mmap", path))
            with ckptfs(src, mnt):
                vs.append(load_in_fresh_process("mmap", view))
        record("load_big_mmap_source", "s", xs, "torch.load(mmap=True) of the source, every byte touched")
        record("load_big_mmap_view_cold", "s", vs, "torch.load(mmap=True) through the view, fresh mount")


def first_byte(src, mnt):
    log("6. first byte of a 20,000-tensor view")
    path = FILES["many"]
    view = os.path.join(mnt, "plain", os.path.basename(path))
    off, length = ckzip.data_pkl_extent(path)
    warm(path)

    def torch_reader():
        torch._C.PyTorchFileReader(path).get_record("data.pkl")

    def raw_pkl():
        fd = os.open(path, os.O_RDONLY)
        os.pread(fd, length, off)
        os.close(fd)

    def open_read():
        fd = os.open(view, os.O_RDONLY)
        os.read(fd, 4096)
        os.close(fd)

    torch_reader()
    record("pkl_torch", "s", [timed(torch_reader) for _ in range(REPS)],
           "torch's reader: open the source zip, read data.pkl")
    record("pkl_raw", "s", [timed(raw_pkl) for _ in range(REPS)], "open the source, pread data.pkl's bytes")
    xs, ws = [], []
    for i in range(REPS):
        with ckptfs(src, mnt):
            xs.append(timed(open_read))
            if i == 0:
                ws = [timed(open_read) for _ in range(REPS)]
    record("first_byte_cold", "s", xs, "open + read 4 KiB of the view, fresh mount")
    record("first_byte_warm", "s", ws, "open + read 4 KiB of the view again")
    RAW["data_pkl_bytes"] = length


def daemon_memory(src, mnt):
    log("7. daemon memory serving a 4 GiB checkpoint")
    huge = FILES["huge"]
    rel = os.path.relpath(huge, src)
    warm(huge)
    out = {}
    for key, mk, path in (("ckptfs", lambda: ckptfs(src, mnt), os.path.join(mnt, "plain", rel)),
                          ("pll", lambda: passthrough(BIN["passthrough_ll_splice"], src, mnt),
                           os.path.join(mnt, rel))):
        growth, peak = [], []
        for _ in range(SLOW_REPS):
            with mk() as m:
                before = rss_kb(m.pid)
                dd(path)
                growth.append((rss_kb(m.pid) - before) / 1024)
                peak.append(rss_kb(m.pid, "VmHWM") / 1024)
        out[key] = (growth, peak)
    record("rss_growth_view", "MiB", out["ckptfs"][0], "ckptfs RSS after - before reading 4 GiB through plain/")
    record("rss_peak_view", "MiB", out["ckptfs"][1], "ckptfs peak RSS (VmHWM)")
    record("rss_growth_pll", "MiB", out["pll"][0], "passthrough_ll + splice RSS growth, same file")
    RAW["huge_bytes"] = os.path.getsize(huge)


def many_files(src, mnt):
    log("8. ls -l and stat of 10,000 small checkpoints")
    small = FILES["small"]
    rel = os.path.relpath(small, src)
    names = sorted(os.listdir(small))

    def ls(d):
        run(["ls", "-l", d], stdout=subprocess.DEVNULL)

    def stat_all(d):
        for n in names:
            os.stat(os.path.join(d, n))

    ls(small)
    record("ls_source", "s", [timed(ls, small) for _ in range(REPS)], "ls -l of the source directory")
    record("stat_source", "s", [timed(stat_all, small) for _ in range(REPS)], "stat of each source file")
    for key, mk, d in (("view", lambda: ckptfs(src, mnt), os.path.join(mnt, "plain", rel)),
                       ("pll", lambda: passthrough(BIN["passthrough_ll_splice"], src, mnt),
                        os.path.join(mnt, rel)),
                       ("pllx", lambda: passthrough(BIN["passthrough_ll_splice"], src, mnt, "xattr"),
                        os.path.join(mnt, rel))):
        lc, lw, lt, sc, st = [], [], [], [], []
        for _ in range(SLOW_REPS):
            with mk():
                lc.append(timed(ls, d))
                lw.append(timed(ls, d))
                time.sleep(ATTR_TIMEOUT_S)  # past the attribute and entry timeouts: all asked again
                lt.append(timed(ls, d))
            with mk():
                sc.append(timed(stat_all, d))
                time.sleep(ATTR_TIMEOUT_S)
                st.append(timed(stat_all, d))
        record(f"ls_{key}_cold", "s", lc, f"ls -l, fresh mount ({key})")
        record(f"ls_{key}_warm", "s", lw, f"ls -l again right away ({key})")
        record(f"ls_{key}_timeout", "s", lt, f"ls -l again past the 1 s timeouts ({key})")
        record(f"stat_{key}_cold", "s", sc, f"stat of each file, fresh mount ({key})")
        record(f"stat_{key}_timeout", "s", st, f"stat of each file again, past the 1 s timeouts ({key})")


def converter(src, mnt):
    log("9. the offline converter (torch.load, rename, torch.save; a fresh process)")
    big = FILES["big"]
    out = os.path.join(WORK, "converted.pth")
    warm(big)
    xs, disk = [], []
    for _ in range(SLOW_REPS):
        xs.append(load_in_fresh_process("convert", big, out))
        disk.append(os.stat(out).st_blocks * 512 / 2**20)
        os.unlink(out)
    record("convert", "s", xs, "torch.load + rename + torch.save of the 1.5 GB checkpoint (no fsync)")
    record("convert_disk", "MiB", disk, "extra disk the converted copy takes")


NFS_DEPTH = 8    # READs in flight: what a kernel client's read-ahead keeps going (nfs-cat has 1)


class NfsServer:
    """tests/e2e/nfsserver.py's ganesha + rpcbind, stopped by cleanup()."""

    def __init__(self, base):
        self.server = nfsserver.Server(base)
        CHILDREN.insert(0, self)  # before the mounts it serves

    def close(self):  # again after cleanup() on a signal: a no-op
        self.server.destroy()
        if self in CHILDREN:
            CHILDREN.remove(self)


def nfs_problem():
    missing = nfsserver.missing_tools(("cc", "pkg-config"))
    if missing:
        return (f"missing {', '.join(missing)} (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind "
                "libnfs-utils libnfs-dev)")
    if subprocess.run(["pkg-config", "--exists", "libnfs"]).returncode:
        return "no libnfs-dev"
    return nfsserver.netns_problem()


def nfs_read(server, url, size, cat=False):
    """Seconds to read url whole: nfsread's own clock (first READ to last byte, as dd's), or
    nfs-cat's run (one READ in flight; its mount and lookup, ~0.06 s, included)."""
    args = ["nfs-cat", url] if cat else [BIN["nfsread"], url, str(NFS_DEPTH)]
    t = time.perf_counter()
    r = subprocess.run(server.enter(True) + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=600)
    t = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    if cat:
        return t
    got, secs = r.stderr.split()
    if int(got) != size:
        raise RuntimeError(f"{url}: {got} bytes, expected {size}")
    return float(secs)


def nfs_check(server, url, want):
    """The bytes over NFS are the view's (sha256 of nfsread's output)."""
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen(server.enter(True) + [BIN["nfsread"], url, str(NFS_DEPTH)], stdout=subprocess.PIPE,
                             stderr=err)
        h = hashlib.sha256()
        while chunk := p.stdout.read(8 << 20):
            h.update(chunk)
        p.stdout.close()
        if p.wait():
            err.seek(0)
            raise RuntimeError(f"nfsread {url}: exit {p.returncode}: {err.read().decode(errors='replace').strip()}")
    if h.hexdigest() != want:
        RAW["notes"].append(f"WRONG BYTES over NFS: {url}")


def nfs_variants(s, src, nmnt, big):
    """(key, function timing one read, what) of section 10, each read cold: a fresh mount (or none,
    for the source exported itself) and ganesha started for it alone."""
    size = os.path.getsize(big)
    rel = os.path.join("plain", os.path.basename(big))
    view = {v: s.url("/ckpt/" + rel, v) for v in (3, 4)}
    source = {v: s.url("/source/" + os.path.basename(big), v) for v in (3, 4)}

    def over_nfs(opts, url, cat=False):
        def one():
            with ckptfs(src, nmnt, opts=opts) if opts is not None else contextlib.nullcontext():
                s.start()
                try:
                    return nfs_read(s, url, size, cat)
                finally:
                    s.stop_ganesha()
        return one

    def local():
        with ckptfs(src, nmnt):
            return dd(os.path.join(nmnt, rel))

    flight = f"{NFS_DEPTH} READs in flight"
    return [("nfs_local_read", local, "dd of the view, fresh mount (the NFS figures' baseline)"),
            ("nfs3_read", over_nfs("direct_io", view[3]), f"NFSv3 read of the view, {flight}, -o direct_io"),
            ("nfs4_read", over_nfs("direct_io", view[4]), f"NFSv4 read of the view, {flight}, -o direct_io"),
            ("nfs3_read_cached", over_nfs("", view[3]), f"NFSv3 read of the view, {flight}, default mount"),
            ("nfs3_cat", over_nfs("direct_io", view[3], cat=True),
             "NFSv3 nfs-cat of the view (one READ at a time), -o direct_io"),
            ("nfs3_cat_cached", over_nfs("", view[3], cat=True), "NFSv3 nfs-cat of the view, default mount"),
            ("nfs3_source_read", over_nfs(None, source[3]),
             f"NFSv3 read of the source exported by ganesha itself (no FUSE), {flight}"),
            ("nfs4_source_read", over_nfs(None, source[4]), f"NFSv4 read of the source itself, {flight}")]


def nfs_reads(src, mnt):
    """A cold view read through nfs-ganesha (FSAL VFS) on loopback in a network namespace
    (tests/e2e/nfsserver.py), against dd of the view and ganesha exporting the source itself.
    mnt is not used: the exported mount must be below a shared mount (nfsserver.shared_dir)."""
    log("10. reads over NFS (nfs-ganesha on loopback, libnfs clients)")
    problem = nfs_problem()
    if problem:
        RAW["notes"].append(f"NFS figures skipped: {problem}")
        log(f"   skipped: {problem}")
        return
    BIN["nfsread"] = os.path.join(WORK, "tools", "nfsread")
    flags = run(["pkg-config", "--cflags", "--libs", "libnfs"], capture_output=True, text=True).stdout.split()
    run(["cc", "-O2", "-o", BIN["nfsread"], os.path.join(HERE, "nfsread.c"), *flags])
    big = FILES["big"]
    base = os.path.join(WORK, "nfs")
    nmnt = os.path.join(base, "mnt")
    os.makedirs(nmnt)
    nfsserver.shared_dir(base)
    ns = NfsServer(base)
    s = ns.server
    s.add_export(nmnt, "/ckpt")
    s.add_export(os.path.dirname(big), "/source", None)
    variants = nfs_variants(s, src, nmnt, big)
    xs = {key: [] for key, *_ in variants}
    warm(big)
    try:
        s.create()
        with ckptfs(src, nmnt, opts="direct_io"):
            s.start()
            try:
                want = sha256_file(os.path.join(nmnt, "plain", os.path.basename(big)))
                for v in (3, 4):
                    nfs_check(s, s.url("/ckpt/plain/" + os.path.basename(big), v), want)
            finally:
                s.stop_ganesha()
        for _ in range(REPS):  # round robin, as for the local reads
            for key, fn, _what in variants:
                xs[key].append(fn())
    except (nfsserver.NfsError, RuntimeError, subprocess.SubprocessError) as e:
        RAW["notes"].append(f"NFS figures failed: {e}")
        log(f"   failed: {e}")
        return
    finally:
        ns.close()
        nfsserver.unshare_dir(base)
    for key, _fn, what in variants:
        record(key, "GB/s", gbps(os.path.getsize(big), xs[key]), what)
    # each repetition read locally and over NFS within seconds: its own ratio is steadier under load
    for key in ("nfs3_read", "nfs4_read", "nfs3_cat"):
        record(key + "_vs_local", "×", [loc / t for loc, t in zip(xs["nfs_local_read"], xs[key])],
               f"{key} ÷ nfs_local_read of the same repetition")


# --------------------------------------------------------------------------
# the table

def med(key):
    f = RAW["figures"].get(key)
    return f["median"] if f else None


def rng(key):
    f = RAW["figures"][key]
    return f"{fmt(f['median'], f['unit'])} [{fmt(f['min'], f['unit'])}–{fmt(f['max'], f['unit'])}]"


def nfs_rows(row):
    """NFS against a local read of the view, and against ganesha exporting
    the ext4 source itself: what ganesha, loopback and the client allow."""
    for v, tgt in (("3", 0.8), ("4", None)):
        x = med(f"nfs{v}_read_vs_local")
        row(f"NFSv{v} read of a view (8 READs in flight, -o direct_io) vs a local read of it",
            f"nfs{v}_read", "nfs_local_read", f"{x:.2f}×", f"≥ {tgt}×" if tgt else "", x >= tgt if tgt else None)
        x = med(f"nfs{v}_read") / med(f"nfs{v}_source_read")
        row(f"NFSv{v} read of a view (-o direct_io) vs ganesha exporting the ext4 source (its own bound)",
            f"nfs{v}_read", f"nfs{v}_source_read", f"{x:.2f}×", "", None)
    x = med("nfs3_read_cached") / med("nfs3_source_read")
    row("NFSv3 read of a view, default mount, vs ganesha exporting the ext4 source", "nfs3_read_cached",
        "nfs3_source_read", f"{x:.2f}×", "", None)
    x = med("nfs3_cat_vs_local")
    row("NFSv3 nfs-cat (one READ at a time, -o direct_io) vs a local read of the view", "nfs3_cat",
        "nfs_local_read", f"{x:.2f}×", "", None)


def table():
    best_pll = max(("pll_cold", "pll_splice_cold", "pll_splice_ra512_cold"), key=med)
    rows = []

    def row(what, ck, base, ratio, target, ok):
        rows.append((what, rng(ck), rng(base) if base in RAW["figures"] else base, ratio, target,
                     "" if ok is None else ("yes" if ok else "**no**")))

    def r_thr(ck, base):  # throughput: ckptfs / baseline, higher is better
        return med(ck) / med(base)

    def r_time(ck, base):  # time: ckptfs / baseline, lower is better
        return med(ck) / med(base)

    x = r_thr("view_cold", best_pll)
    row(f"cold sequential read vs best passthrough_ll ({best_pll[:-5]})", "view_cold", best_pll,
        f"{x:.2f}×", "≥ 1.0× (moonshot 1.5×)", x >= 1.0)
    x = r_thr("view_ra512_cold", best_pll)
    row(f"cold read, view with read_ahead_kb=512 set by the bench (as for passthrough_ll) vs {best_pll[:-5]}",
        "view_ra512_cold", best_pll, f"{x:.2f}×", "", None)
    for b in ("pll_cold", "pll_splice_cold", "pll_splice_ra512_cold"):
        if b != best_pll:
            row(f"cold sequential read vs {b[:-5]}", "view_cold", b, f"{r_thr('view_cold', b):.2f}×", "", None)
    x = r_thr("view_cold", "pagecache")
    row("cold sequential read vs page-cache dd", "view_cold", "pagecache", f"{x:.2f}×", "report", None)
    x = r_thr("view_warm", "pagecache")
    row("warm re-read vs page-cache dd", "view_warm", "pagecache", f"{x:.2f}×", "≥ 0.9×", x >= 0.9)
    x = r_thr("view_warm", "pll_warm")
    row("warm re-read vs passthrough_ll cache=always", "view_warm", "pll_warm", f"{x:.2f}×", "", None)
    x = r_thr("disk_view", "disk_pll_splice")
    row("disk-cold read vs passthrough_ll + splice", "disk_view", "disk_pll_splice", f"{x:.2f}×", "", None)
    x = r_thr("disk_view", "disk_source")
    row("disk-cold read vs dd of the source", "disk_view", "disk_source", f"{x:.2f}×", "", None)
    x = r_thr("mmap_view_cold", "mmap_source")
    row("mmap read, cold view vs source", "mmap_view_cold", "mmap_source", f"{x:.2f}×", "", None)
    x = r_thr("mmap_view_warm", "mmap_source")
    row("mmap read, warm view vs source", "mmap_view_warm", "mmap_source", f"{x:.2f}×", "", None)
    x = r_thr("mmap_view_cold", "view_cold")
    row("mmap read of a view vs a cold read() of it", "mmap_view_cold", "view_cold", f"{x:.2f}×", "≥ 0.5×",
        x >= 0.5)
    x = r_thr("mmap_view_cold", "mmap_pll")
    row("mmap read, cold view vs passthrough_ll (FUSE's own bound)", "mmap_view_cold", "mmap_pll", f"{x:.2f}×",
        "", None)
    if "load_big_mmap_view_cold" in RAW["figures"]:
        x = r_time("load_big_mmap_view_cold", "load_big_mmap_source")
        row("torch.load(mmap=True) 1.5 GB, view (cold) vs source", "load_big_mmap_view_cold",
            "load_big_mmap_source", f"{x:.2f}×", "≤ 1.1×", x <= 1.1)
    else:
        rows.append(("torch.load(mmap=True) 1.5 GB, view (cold) vs source", "-", "-",
                     f"not measured: torch {torch.__version__} has no mmap=True", "≤ 1.1×", ""))
    for key, label, tgt in (("big", "1.5 GB, 200 tensors", 1.05), ("many", "20,000 tensors", 1.2)):
        for v in ("cold", "warm"):
            x = r_time(f"load_{key}_view_{v}", f"load_{key}_source")
            row(f"torch.load {label}: view ({v}) vs source", f"load_{key}_view_{v}", f"load_{key}_source",
                f"{x:.2f}×", f"≤ {tgt}×", x <= tgt)
        x = r_time(f"load_{key}_view_cold", f"load_{key}_rename")
        row(f"torch.load {label}: view (cold) vs source + Python rename", f"load_{key}_view_cold",
            f"load_{key}_rename", f"{x:.2f}×", "", None)
    x = r_time("first_byte_cold", "pkl_torch")
    row("first byte (open + read), 20k-tensor view vs torch reading data.pkl", "first_byte_cold", "pkl_torch",
        f"{x:.2f}×", "≤ 2×", x <= 2)
    x = r_time("first_byte_cold", "pkl_raw")
    row("first byte, 20k-tensor view vs pread of data.pkl's bytes", "first_byte_cold", "pkl_raw",
        f"{x:.1f}×", "", None)
    g = med("rss_growth_view")
    row(f"daemon RSS growth serving {RAW['huge_bytes'] / 2**30:.1f} GiB (vs passthrough_ll)", "rss_growth_view",
        "rss_growth_pll", f"{g:.1f} MiB growth", "< 16 MiB", g < 16)
    for op, tgt in (("ls", 2.0), ("stat", 1.2)):
        what = "ls -l" if op == "ls" else "stat"
        for v, when in (("cold", "fresh mount"), ("timeout", "again on the same mount, past the 1 s timeouts")):
            x = r_time(f"{op}_view_{v}", f"{op}_pll_{v}")
            row(f"{what} of 10,000 checkpoints, {when}, vs passthrough_ll", f"{op}_view_{v}", f"{op}_pll_{v}",
                f"{x:.2f}×", f"≤ {tgt}×", x <= tgt)
        row(f"{what} of 10,000 checkpoints, fresh mount, vs the source", f"{op}_view_cold", f"{op}_source",
            f"{r_time(f'{op}_view_cold', f'{op}_source'):.1f}×", "", None)
    for v, when in (("cold", "fresh mount"), ("timeout", "again past the timeouts")):
        x = r_time(f"ls_view_{v}", f"ls_pllx_{v}")
        row(f"ls -l of 10,000 checkpoints, {when}, vs passthrough_ll -o xattr (ls asks each file for two "
            "extended attributes: a round trip each)", f"ls_view_{v}", f"ls_pllx_{v}", f"{x:.2f}×", "", None)
    row("ls -l of 10,000 checkpoints again right away (the kernel's cache) vs passthrough_ll", "ls_view_warm",
        "ls_pll_warm", f"{r_time('ls_view_warm', 'ls_pll_warm'):.2f}×", "", None)
    if "nfs3_read" in RAW["figures"]:
        nfs_rows(row)
    x = med("convert") / (os.path.getsize(FILES["big"]) / med("view_cold") / 1e9)
    view_read = f"{os.path.getsize(FILES['big']) / med('view_cold') / 1e9 * 1e3:.0f} ms (view read, cold)"
    row(f"converter (+{med('convert_disk'):.0f} MiB disk) vs reading the view (0 extra disk)", "convert",
        view_read, f"{x:.1f}× slower", "≥ 20×", x >= 20)
    x = med("convert") / med("load_big_view_cold")
    row("converter vs torch.load through the view (cold)", "convert", "load_big_view_cold",
        f"{x:.1f}× slower", "", None)
    return rows


def write_results(rows, m, elapsed):
    head = ("| measurement | ckptfs | baseline | ratio (ckptfs ÷ baseline) | target | met |\n"
            "|---|---|---|---|---|---|\n")
    body = "".join("| " + " | ".join(r) + " |\n" for r in rows)
    mach = (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM; Linux {m['kernel']}; "
            f"libfuse {m['libfuse']}; torch {m['torch']}; Python {m['python']}; files on {m['filesystem']}; "
            f"pipe-max-size {m['pipe_max_size']}; first-touch page fault {m['page_fault_us']} µs; "
            f"{m['date']}; `make bench` took {elapsed / 60:.1f} min; ckptfs binary {CKPTFS}.\n")
    legend = (
        f"Each figure: median of {REPS} repetitions ({SLOW_REPS} for slow ones) [min–max]. Files: "
        f"{os.path.getsize(FILES['big']) / 1e9:.2f} GB torch.save checkpoint of {BIG_TENSORS} tensors, "
        f"{MANY_TENSORS:,}-tensor checkpoint ({os.path.getsize(FILES['many']) / 1e6:.0f} MB, data.pkl "
        f"{RAW['data_pkl_bytes'] / 1e6:.1f} MB), a {RAW['huge_bytes'] / 2**30:.1f} GiB sparse torch-layout zip, "
        f"{SMALL_FILES:,} small checkpoints; all keys start with `module.`, read through `plain/`. "
        "torch.load and the converter run in a fresh process each (imports not timed). "
        "Sequential reads: dd bs=1M. cold = fresh mount, source in the page cache; disk-cold = caches "
        "dropped; warm = re-read on the same mount. passthrough_ll: libfuse's example built from "
        f"{EXAMPLES}/passthrough_ll.c as shipped (it never splices: 3.14's example does not ask for "
        "FUSE_CAP_SPLICE_WRITE) and with one added line asking for splice; ra512 = the bench raised the "
        "mount's read_ahead_kb to 512. Throughput ratios: higher is better; time ratios: lower is better. "
        f"ckptfs's mount had read_ahead_kb={RAW.get('ckptfs_read_ahead_kb')}.\n")
    notes = "".join(f"\nNOTE: {n}\n" for n in RAW["notes"])
    md = f"# ckptfs benchmark\n\n{mach}\n{legend}\n{head}{body}{notes}"
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "latest.md"), "w") as f:
        f.write(md)
    with open(os.path.join(OUT, "latest.json"), "w") as f:
        json.dump(dict(RAW, machine=m, reps=REPS, slow_reps=SLOW_REPS, table=rows, seconds=elapsed), f, indent=1)
    print(md)
    log(f"wrote {OUT}/latest.md and latest.json")


def preflight():
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (drop_caches, read_ahead_kb)")
    if not os.access(CKPTFS, os.X_OK):
        problems.append(f"no ckptfs binary at {CKPTFS} (set CKPTFS)")
    if not os.path.exists(os.path.join(EXAMPLES, "passthrough_ll.c")):
        problems.append(f"no {EXAMPLES}/passthrough_ll.c (apt-get install libfuse3-dev)")
    for tool in ("cc", "pkg-config", "fusermount3", "dd", "ls"):
        if not shutil.which(tool):
            problems.append(f"no {tool}")
    if problems:
        sys.exit("bench: " + "; ".join(problems))


def main():
    global WORK
    preflight()
    base = os.environ.get("BENCH_TMP", "/var/tmp")
    free = shutil.disk_usage(base).free
    if free < 6 << 30:
        sys.exit(f"bench: {base} has {free / 2**30:.1f} GiB free, needs 6 GiB (set BENCH_TMP)")
    WORK = tempfile.mkdtemp(prefix="ckptfs-bench.", dir=base)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.time()
    src = os.environ.get("BENCH_FILES") or os.path.join(WORK, "src")
    mnt = os.path.join(WORK, "mnt")
    os.makedirs(mnt)
    build_tools()
    make_files(src)
    m = machine()
    log(f"ckptfs {CKPTFS}; work dir {WORK}")
    for step in (seq_reads, mmap_reads, torch_loads, first_byte, daemon_memory, many_files, converter, nfs_reads):
        step(src, mnt)
    m["loadavg_end"] = open("/proc/loadavg").read().split()[0]
    if max(float(m["loadavg_start"]), float(m["loadavg_end"])) > 0.5:
        RAW["notes"].append(f"other processes were running (load average {m['loadavg_start']} at the start, "
                            f"{m['loadavg_end']} at the end): figures are noisier than on an idle machine")
    write_results(table(), m, time.time() - t0)


if __name__ == "__main__":
    main()
