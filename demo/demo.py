#!/usr/bin/python3
"""ckptfs demo: one model, two checkpoints, two views, four loads.

Saves a plain checkpoint and a DataParallel one (keys with `module.`), mounts
them with `ckptfs mount -f`, loads every view file with
`load_state_dict(strict=True)` into the model it is meant for (bare for
plain/, DataParallel-wrapped for ddp/), prints what changed and unmounts.
Exits 0 only if every view is exactly what PyTorch itself produces.

    /usr/bin/python3 demo/demo.py --ckptfs ./ckptfs
"""

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import torch
import torch.nn as nn

MOUNT_TIMEOUT = 15.0


def make_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    )


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def getxattr(path, name):
    try:
        return os.getxattr(path, name).decode("utf-8", "replace")
    except OSError:
        return "-"


def meta_head(sd, n=3):
    meta = getattr(sd, "_metadata", None)
    if meta is None:
        return "(none)"
    keys = [repr(k) for k in list(meta)[:n]]
    return ", ".join(keys) + (", ..." if len(meta) > n else "")


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            # /proc/mounts escapes space, tab, newline and backslash as octal.
            mnt = fields[1].encode().decode("unicode_escape")
            if mnt == path:
                return True
    return False


class Mount:
    """`ckptfs mount -f SOURCE MOUNTPOINT` in the background; always unmounted on exit."""

    def __init__(self, ckptfs, source, mountpoint, logpath):
        self.ckptfs = ckptfs
        self.mountpoint = mountpoint
        self.logpath = logpath
        self.log = open(logpath, "wb")
        self.proc = subprocess.Popen(
            [ckptfs, "mount", "-f", source, mountpoint],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not is_mounted(mountpoint):
                if self.proc.poll() is not None:
                    raise RuntimeError("ckptfs mount exited with status %d before mounting:\n%s"
                                       % (self.proc.returncode, self.daemon_log()))
                if time.monotonic() > deadline:
                    raise RuntimeError("%s not mounted after %.0f s:\n%s"
                                       % (mountpoint, MOUNT_TIMEOUT, self.daemon_log()))
                time.sleep(0.05)
        except BaseException:
            if self.proc.poll() is None and not is_mounted(mountpoint):
                self.proc.terminate()
            self.close()
            raise

    def daemon_log(self):
        with open(self.logpath, "rb") as f:
            text = f.read().decode("utf-8", "replace").rstrip()
        return text or "(ckptfs printed nothing)"

    def close(self):
        """Unmounts with `ckptfs umount`, falling back to fusermount3; reaps the daemon."""
        if is_mounted(self.mountpoint):
            r = subprocess.run([self.ckptfs, "umount", self.mountpoint],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                print("demo: `ckptfs umount` failed (%d): %s"
                      % (r.returncode, r.stdout.decode(errors="replace").strip()), file=sys.stderr)
                for cmd in (["fusermount3", "-u"], ["umount"], ["fusermount3", "-u", "-z"]):
                    if not is_mounted(self.mountpoint):
                        break
                    subprocess.run(cmd + [self.mountpoint], stderr=subprocess.DEVNULL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            print("demo: ckptfs did not exit after unmount; killing it", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        if is_mounted(self.mountpoint):
            raise RuntimeError("could not unmount " + self.mountpoint)


def check_view(mnt, src_dir, view, name, expect, wrap):
    """Loads MOUNTPOINT/view/name and compares it with `expect`, the state dict
    PyTorch itself gives for that view. Returns (row, problems)."""
    src = os.path.join(src_dir, name)
    path = os.path.join(mnt, view, name)
    problems = []
    rel = "%s/%s" % (view, name)

    src_sd = torch.load(src, map_location="cpu")
    st_size = os.stat(path).st_size
    data = file_bytes(path)
    if len(data) != st_size:
        problems.append("%s: st_size %d but %d bytes read" % (rel, st_size, len(data)))
    identical = data == file_bytes(src)
    if zipfile.ZipFile(path).testzip() is not None:
        problems.append("%s: zip CRC check failed" % rel)

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if list(sd) != list(expect):
        first = next(iter(sd), None)
        want = next(iter(expect), None)
        if identical and list(sd) == list(src_sd):
            problems.append("%s: served unchanged (first key %r, want %r): this ckptfs build "
                            "does not rewrite state-dict keys yet" % (rel, first, want))
        else:
            problems.append("%s: keys differ from PyTorch's (first key %r, want %r)"
                            % (rel, first, want))
    elif list(sd._metadata.items()) != list(expect._metadata.items()):
        problems.append("%s: _metadata differs: %s, want %s"
                        % (rel, meta_head(sd), meta_head(expect)))
    elif any(not torch.equal(a, b) for a, b in zip(sd.values(), expect.values())):
        problems.append("%s: tensor values differ from the source" % rel)

    model = make_model()
    target = nn.DataParallel(model) if wrap else model
    try:
        target.load_state_dict(sd, strict=True)
        loaded = "ok"
    except RuntimeError as e:
        loaded = "FAILED"
        msg = str(e).splitlines()
        problems.append("%s: %s.load_state_dict(strict=True): %s"
                        % (rel, "DataParallel(model)" if wrap else "model",
                           " ".join(line.strip() for line in msg[:2])))

    row = [
        rel,
        "%d -> %d" % (os.path.getsize(src), st_size),
        "%s -> %s" % (next(iter(src_sd), "-"), next(iter(sd), "-")),
        meta_head(sd),
        "identical" if identical else "rewritten",
        getxattr(path, "user.ckptfs.format"),
        "%s (%s)" % (loaded, "DataParallel" if wrap else "bare model"),
    ]
    return row, problems, identical


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def run(ckptfs, work):
    src_dir = os.path.join(work, "src")
    mnt = os.path.join(work, "mnt")
    os.mkdir(src_dir)
    os.mkdir(mnt)

    torch.manual_seed(0)
    model = make_model()
    model(torch.randn(2, 3, 8, 8))  # give BatchNorm non-trivial running stats
    plain_sd = model.state_dict()
    ddp_sd = nn.DataParallel(model).state_dict()
    torch.save(plain_sd, os.path.join(src_dir, "plain.pth"))
    torch.save(ddp_sd, os.path.join(src_dir, "ddp.pth"))
    with open(os.path.join(src_dir, "notes.txt"), "w") as f:
        f.write("not a checkpoint: served unchanged in both views\n")

    print("source %s:" % src_dir)
    print("  plain.pth  model.state_dict()                %d keys, first %r"
          % (len(plain_sd), next(iter(plain_sd))))
    print("  ddp.pth    DataParallel(model).state_dict()  %d keys, first %r"
          % (len(ddp_sd), next(iter(ddp_sd))))
    print("  notes.txt  a text file")
    print("$ %s mount -f %s %s" % (ckptfs, src_dir, mnt))
    print()

    problems = []
    mount = Mount(ckptfs, src_dir, mnt, os.path.join(work, "ckptfs.log"))
    try:
        top = sorted(os.listdir(mnt))
        if top != ["ddp", "plain"]:
            problems.append("mount root lists %r, want ['ddp', 'plain']" % top)

        rows = []
        for view, wrap, expect in (("plain", False, plain_sd), ("ddp", True, ddp_sd)):
            for name, identity in (("plain.pth", view == "plain"), ("ddp.pth", view == "ddp")):
                row, p, identical = check_view(mnt, src_dir, view, name, expect, wrap)
                rows.append(row)
                problems += p
                if identity and not identical:
                    problems.append("%s/%s: nothing to change, but the bytes differ from the "
                                    "source" % (view, name))
            notes = os.path.join(mnt, view, "notes.txt")
            same = sha256(notes) == sha256(os.path.join(src_dir, "notes.txt"))
            if not same:
                problems.append("%s/notes.txt: not a checkpoint, but the bytes differ" % view)
            rows.append(["%s/notes.txt" % view,
                         "%d -> %d" % (os.path.getsize(os.path.join(src_dir, "notes.txt")),
                                       os.stat(notes).st_size),
                         "-", "-", "identical" if same else "DIFFERENT",
                         getxattr(notes, "user.ckptfs.format"), "-"])

        print_table(["VIEW FILE", "SIZE (src -> view)", "FIRST KEY (src -> view)",
                     "_metadata HEAD (view)", "BYTES", "FORMAT", "strict load"],
                    rows)
        print()
        print("BYTES identical: sha256 of the view file equals the source's.  FORMAT: the "
              "user.ckptfs.format xattr.\nstrict load: load_state_dict(strict=True) into a bare "
              "model (plain/) or a DataParallel-wrapped one (ddp/).")
    except BaseException:
        print("ckptfs log:\n" + mount.daemon_log(), file=sys.stderr)
        raise
    finally:
        mount.close()
        print("$ %s umount %s" % (ckptfs, mnt))

    if problems:
        print("ckptfs log:\n" + mount.daemon_log(), file=sys.stderr)
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    default = os.path.join(here, "ckptfs")
    if not os.access(default, os.X_OK):
        default = shutil.which("ckptfs") or default
    ap.add_argument("--ckptfs", default=default, metavar="PATH",
                    help="the ckptfs binary (default: %(default)s)")
    args = ap.parse_args()
    ckptfs = os.path.abspath(args.ckptfs)
    if not os.access(ckptfs, os.X_OK):
        print("demo: %s is not an executable ckptfs binary (build it, or pass --ckptfs PATH)"
              % ckptfs, file=sys.stderr)
        return 2
    if not os.path.exists("/dev/fuse"):
        print("demo: /dev/fuse is missing: FUSE is not available here (in a container, "
              "run it with --device /dev/fuse --cap-add SYS_ADMIN)", file=sys.stderr)
        return 1

    # SIGTERM/SIGHUP unwind through the finally blocks too, so nothing stays mounted.
    def bail(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, bail)
    signal.signal(signal.SIGHUP, bail)

    work = tempfile.mkdtemp(prefix="ckptfs-demo.")
    try:
        problems = run(ckptfs, work)
    except RuntimeError as e:  # mounting or unmounting failed; the message says how
        problems = [str(e)]
    finally:
        if is_mounted(os.path.join(work, "mnt")):
            print("demo: %s/mnt is still mounted; leaving %s in place" % (work, work),
                  file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    if problems:
        print("\nFAILED: %d problem(s):" % len(problems))
        for p in problems:
            print("  - " + p)
        return 1
    print("OK: every view loads with strict=True and matches what PyTorch itself produces")
    return 0


if __name__ == "__main__":
    sys.exit(main())
