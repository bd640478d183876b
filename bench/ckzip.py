"""Test checkpoints for the benchmark.

Real torch.save files for everything that is timed through torch, and one
torch-layout zip written here for the memory test: the same records, header
fields, "FB" alignment padding, data descriptors and zip64 records as torch
1.13's writer produces, but the tensor bytes (all zeros) are a sparse hole,
so a 4 GiB checkpoint costs no disk and no time to make.  The pickle is made
by torch's own serializer (torch.serialization._save) with a recording
stand-in for the zip writer, so it is exactly what torch.save would write.
"""

import os
import pickle
import struct
import zlib

import torch
import torch.serialization

U32 = 0xFFFFFFFF
SIG_LOCAL, SIG_CENTRAL, SIG_DESC = 0x04034B50, 0x02014B50, 0x08074B50
SIG_EOCD, SIG_EOCD64, SIG_LOC64 = 0x06054B50, 0x06064B50, 0x07064B50
ALIGN = 64


def save_state_dict(path, n, numel, prefix="module.", fill=True):
    """torch.save of an n-tensor float32 state dict, numel floats each."""
    sd = {}
    for i in range(n):
        t = torch.empty(numel)
        if fill:
            t.fill_(float(i % 251))
        sd[f"{prefix}layers.{i}.weight"] = t
    torch.save(sd, path)
    return os.path.getsize(path)


class _Recorder:
    """Stands in for PyTorchFileWriter in torch.serialization._save."""

    def __init__(self):
        self.records = []

    def write_record(self, name, data, size):
        self.records.append((name, data if isinstance(data, bytes) else None, size))


def _z64_extra(sizes, usize, csize, off, lho):
    body = (struct.pack("<QQ", usize, csize) if sizes else b"") + (struct.pack("<Q", lho) if off else b"")
    return struct.pack("<HH", 1, len(body)) + body if body else b""


def _crc_zeros(n, _chunk=bytes(1 << 20)):
    crc = 0
    while n:
        k = min(n, len(_chunk))
        crc = zlib.crc32(_chunk[:k] if k < len(_chunk) else _chunk, crc)
        n -= k
    return crc


def write_sparse_checkpoint(path, n_tensors, tensor_bytes, prefix="module."):
    """A torch.save-identical zip of n_tensors zero float32 tensors whose
    data records are holes. Returns the file size."""
    numel = tensor_bytes // 4
    # torch.empty of a big size is an untouched mapping: nothing is allocated.
    sd = {f"{prefix}blocks.{i}.weight": torch.empty(numel) for i in range(n_tensors)}
    rec = _Recorder()
    torch.serialization._save(sd, rec, pickle, 2)
    del sd
    archive = os.path.splitext(os.path.basename(path))[0]
    records = [(f"{archive}/{name}", data, size) for name, data, size in rec.records]
    records.append((f"{archive}/version", b"3\n", 2))
    central = []
    with open(path, "wb") as f:
        for name, data, size in records:
            lho = f.tell()
            bname = name.encode()
            sizes, off = size >= U32, lho >= U32
            z64 = sizes or off
            zx = _z64_extra(sizes, size, 0, off, lho)
            pad = (-(lho + 30 + len(bname) + len(zx) + 4)) % ALIGN
            f.write(struct.pack("<IHHHHHIIIHH", SIG_LOCAL, 45 if z64 else 0, 0x0808, 0, 0, 0, 0, 0, 0,
                                len(bname), len(zx) + 4 + pad))
            f.write(bname + zx + struct.pack("<HH", 0x4246, pad) + b"Z" * pad)
            if data is not None:
                f.write(data)
                crc = zlib.crc32(data)
            else:
                f.seek(size, os.SEEK_CUR)  # the hole: zeros without blocks
                crc = _crc_zeros(size)
            f.write(struct.pack("<II", SIG_DESC, crc))
            f.write(struct.pack("<QQ", size, size) if z64 else struct.pack("<II", size, size))
            central.append((bname, crc, size, lho))
        cd_off = f.tell()
        for bname, crc, size, lho in central:
            sizes, off = size >= U32, lho >= U32
            zx = _z64_extra(sizes, size, size, off, lho)
            f.write(struct.pack("<IHHHHHHIIIHHHHHII", SIG_CENTRAL, 0, 45 if sizes or off else 0, 0x0808, 0,
                                0, 0, crc, U32 if sizes else size, U32 if sizes else size, len(bname),
                                len(zx), 0, 0, 0, 0, U32 if off else lho))
            f.write(bname + zx)
        cd_size = f.tell() - cd_off
        eocd64 = f.tell()
        n = len(central)
        f.write(struct.pack("<IQHHIIQQQQ", SIG_EOCD64, 44, 0x031E, 0x002D, 0, 0, n, n, cd_size, cd_off))
        f.write(struct.pack("<IIQI", SIG_LOC64, 0, eocd64, 1))
        f.write(struct.pack("<IHHHHIIH", SIG_EOCD, 0, 0, min(n, 0xFFFF), min(n, 0xFFFF),
                            min(cd_size, U32), min(cd_off, U32), 0))
        return f.tell()


def check_sparse_writer(tmpdir):
    """The sparse writer's output loads in torch like torch.save's own."""
    path = os.path.join(tmpdir, "sparse_check.pth")
    write_sparse_checkpoint(path, 3, 1 << 20)
    sd = torch.load(path)
    ok = (list(sd) == [f"module.blocks.{i}.weight" for i in range(3)]
          and all(v.numel() == (1 << 18) and not v.any() for v in sd.values()))
    os.unlink(path)
    return ok


def make_many_small(dirpath, count, template):
    """count copies of one small checkpoint (each its own inode)."""
    os.makedirs(dirpath, exist_ok=True)
    with open(template, "rb") as f:
        data = f.read()
    for i in range(count):
        with open(os.path.join(dirpath, f"ckpt_{i:05d}.pth"), "wb") as f:
            f.write(data)


def data_pkl_extent(path):
    """(offset, length) of data.pkl's bytes in a torch zip (stored)."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("/data.pkl"))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        h = f.read(30)
    nl, el = struct.unpack("<HH", h[26:30])
    return info.header_offset + 30 + nl + el, info.file_size

