"""A small safetensors reader and writer that follow the format's spec
(huggingface/safetensors README and `safetensors/src/tensor.rs`, see
FORMATS.md §5), for checking what ckptfs presents; and the expected view.

File: u64le N, N bytes of UTF-8 JSON (an object; MAY be trailing-padded with
spaces), then the byte buffer.  Each entry other than `__metadata__` (an
optional str -> str map) is {"dtype", "shape", "data_offsets": [BEGIN, END]}
with offsets relative to the buffer start.  The reader validates like the
Rust reader: N <= 1e8, 8 + N within the file, valid JSON, no duplicate names,
entries sorted by offset each starting where the previous ended (the first
at 0), END - BEGIN == prod(shape) * dtype size, last END + 8 + N == file size.
"""

import json
import math
import os
import struct

MAX_HEADER = 100_000_000
METADATA = "__metadata__"

DTYPE_SIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


class Invalid(ValueError):
    """The file is not valid safetensors."""


class Tensor:
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name, dtype, shape, begin, end):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end

    def __repr__(self):
        return "Tensor(%r, %s, %s, [%d, %d])" % (self.name, self.dtype, self.shape,
                                                 self.begin, self.end)


class File:
    """A parsed, validated safetensors file.

    n         header length N
    header    the N header bytes as stored (padding included)
    entries   [(name, raw value bytes)] in header order, `__metadata__` included
    names     the names in header order, `__metadata__` included
    metadata  the `__metadata__` dict or None
    tensors   {name: Tensor}
    data      the byte buffer (everything after the header)
    """

    def __init__(self, raw):
        self.raw = raw
        if len(raw) < 8:
            raise Invalid("shorter than 8 bytes")
        (n,) = struct.unpack_from("<Q", raw)
        if n > MAX_HEADER:
            raise Invalid("HeaderTooLarge: N = %d" % n)
        if 8 + n > len(raw):
            raise Invalid("InvalidHeaderLength: N = %d, file %d bytes" % (n, len(raw)))
        self.n = n
        self.header = raw[8:8 + n]
        self.data = raw[8 + n:]
        try:
            text = self.header.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Invalid("header is not UTF-8: %s" % e)
        self.entries, self.keys_raw, self.skeleton = _top_level(text)
        obj = _loads_unique(text)
        if not isinstance(obj, dict):
            raise Invalid("header is not a JSON object")
        self.names = [k for k, _ in self.entries]
        if self.names != list(obj.keys()):
            raise Invalid("scanner and JSON parser disagree")
        self.metadata = obj.get(METADATA)
        if self.metadata is not None:
            if not isinstance(self.metadata, dict) or \
                    not all(isinstance(v, str) for v in self.metadata.values()):
                raise Invalid("__metadata__ is not a str -> str map")
        self.tensors = {}
        for name, info in obj.items():
            if name == METADATA:
                continue
            self.tensors[name] = _tensor(name, info)
        pos = 0
        for t in sorted(self.tensors.values(), key=lambda t: (t.begin, t.end)):
            if t.begin != pos:
                raise Invalid("InvalidOffset: %r starts at %d, expected %d" % (t.name, t.begin, pos))
            pos = t.end
        if pos + 8 + n != len(raw):
            raise Invalid("MetadataIncompleteBuffer: last END %d + 8 + N %d != %d"
                          % (pos, n, len(raw)))

    def tensor_bytes(self, name):
        t = self.tensors[name]
        return self.data[t.begin:t.end]

    def raw_entry(self, name):
        return dict(self.entries)[name]

    def header_text(self):
        """The header without its trailing space padding."""
        return self.header.rstrip(b" ")


def _tensor(name, info):
    if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"} or \
            not {"dtype", "shape", "data_offsets"} <= set(info):
        raise Invalid("%r: not a tensor entry: %r" % (name, info))
    dtype, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_SIZE:
        raise Invalid("%r: unknown dtype %r" % (name, dtype))
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise Invalid("%r: bad shape %r" % (name, shape))
    if not isinstance(offs, list) or len(offs) != 2 or \
            not all(type(o) is int and o >= 0 for o in offs):
        raise Invalid("%r: bad data_offsets %r" % (name, offs))
    begin, end = offs
    if end < begin:
        raise Invalid("InvalidOffset: %r END < BEGIN" % name)
    if end - begin != math.prod(shape) * DTYPE_SIZE[dtype]:
        raise Invalid("TensorInvalidInfo: %r %s%s has %d bytes" % (name, dtype, shape, end - begin))
    return Tensor(name, dtype, shape, begin, end)


def _unique_pairs(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise Invalid("duplicate name %r" % k)
        seen.add(k)
    return dict(pairs)


def _loads_unique(text):
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except Invalid:
        raise
    except ValueError as e:
        raise Invalid("header is not valid JSON: %s" % e)


_WS = " \t\n\r"


def _top_level(text):
    """([(name, raw value bytes)], [raw name token bytes], skeleton) of the
    top-level object, in text order; the skeleton is the text up to the
    closing brace with every top-level name token replaced by a NUL."""
    dec = json.JSONDecoder()
    scan = json.decoder.scanstring
    p = 0
    while p < len(text) and text[p] in _WS:
        p += 1
    if p >= len(text) or text[p] != "{":
        raise Invalid("header does not start with '{'")
    p += 1
    out, keys, skel, last = [], [], [], 0

    def ws(p):
        while p < len(text) and text[p] in _WS:
            p += 1
        return p

    p = ws(p)
    if p < len(text) and text[p] == "}":
        p += 1
    else:
        while True:
            if p >= len(text) or text[p] != '"':
                raise Invalid("expected a name at %d" % p)
            try:
                start = p
                name, p = scan(text, p + 1)
                keys.append(text[start:p].encode("utf-8"))
                skel.append(text[last:start])
                last = p
                p = ws(p)
                if text[p] != ":":
                    raise Invalid("expected ':' at %d" % p)
                p = ws(p + 1)
                _, end = dec.raw_decode(text, p)
            except (ValueError, IndexError) as e:
                raise Invalid("header is not valid JSON: %s" % e)
            out.append((name, text[p:end].encode("utf-8")))
            p = ws(end)
            if p < len(text) and text[p] == ",":
                p = ws(p + 1)
                continue
            if p < len(text) and text[p] == "}":
                p += 1
                break
            raise Invalid("expected ',' or '}' at %d" % p)
    if text[p:].strip(_WS):
        raise Invalid("bytes after the JSON object")
    skel.append(text[last:p])
    return out, keys, "\0".join(skel).encode("utf-8")


def read(path):
    with open(path, "rb") as f:
        return File(f.read())


# --------------------------------------------------------------------------
# writing (for tests: the caller chooses names, order and metadata)

def header_bytes(entries, pad=True):
    """A header from [(name, value)] pairs as given (duplicates allowed);
    a name or value that is bytes is used as raw JSON text (a name then
    includes its quotes)."""
    parts = []
    for name, val in entries:
        raw = val if isinstance(val, bytes) else \
            json.dumps(val, separators=(",", ":"), ensure_ascii=False).encode()
        key = name if isinstance(name, bytes) else json.dumps(name, ensure_ascii=False).encode()
        parts.append(key + b":" + raw)
    h = b"{" + b",".join(parts) + b"}"
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return h


def build(tensors, metadata=None, metadata_raw=None, entries=None, pad=True):
    """Bytes of a safetensors file.

    tensors: [(name, dtype, shape, data bytes)], packed in this order, listed
    in the header in this order after `__metadata__` (given as a dict, or as
    raw JSON text in metadata_raw).  `entries`, if given, lists the header
    pairs instead (for duplicate names, odd orders)."""
    buf, hdr, pos = [], [], 0
    for name, dtype, shape, data in tensors:
        assert len(data) == math.prod(shape) * DTYPE_SIZE[dtype], name
        hdr.append((name, {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + len(data)]}))
        buf.append(data)
        pos += len(data)
    if metadata_raw is not None:
        hdr.insert(0, (METADATA, metadata_raw))
    elif metadata is not None:
        hdr.insert(0, (METADATA, metadata))
    if entries is not None:
        hdr = entries
    h = header_bytes(hdr, pad)
    return struct.pack("<Q", len(h)) + h + b"".join(buf)


def write(path, *args, **kwargs):
    data = build(*args, **kwargs)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)
    return data


def entry(name, dtype, shape, begin):
    """A header entry for a tensor starting at `begin`."""
    n = math.prod(shape) * DTYPE_SIZE[dtype]
    return (name, {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, begin + n]})


# --------------------------------------------------------------------------
# the expected view

def assert_view(view_raw, src_raw, rename):
    """Check a view of a safetensors file against its source.

    `rename(name) -> new name` is the view's key rule.  Names are renamed in
    header order, `__metadata__` keeps its place and its exact bytes, every
    tensor's entry (dtype, shape, offsets) and bytes are unchanged, the
    buffer is identical; a rewritten header is space-padded to a multiple of
    8; where no name changes the view is the source, byte for byte."""
    __tracebackhide__ = True
    src, got = File(src_raw), File(view_raw)
    want = [n if n == METADATA else rename(n) for n in src.names]
    if want == src.names:
        assert view_raw == src_raw, "nothing to rename, but the view differs from the source"
        return got
    assert got.n % 8 == 0, "view header length %d is not a multiple of 8" % got.n
    assert got.header.startswith(b"{"), "view header does not start with '{'"
    assert got.names == want, "names: %r != %r" % (got.names[:8], want[:8])
    for (sn, sraw), (gn, graw) in zip(src.entries, got.entries):
        assert sraw == graw, "entry %r -> %r: value bytes differ" % (sn, gn)
    # every byte but the renamed names is kept: values, separators, spacing
    assert got.skeleton == src.skeleton, "header bytes besides the names differ:\n%r\n%r" % (
        got.skeleton[:200], src.skeleton[:200])
    for sn, gn, sk, gk in zip(src.names, got.names, src.keys_raw, got.keys_raw):
        if sn == gn:
            assert sk == gk, "unrenamed name %r is written differently: %r != %r" % (sn, gk, sk)
    if METADATA in src.names:
        assert got.metadata == src.metadata
    assert got.data == src.data, "byte buffer differs"
    for sn, gn in zip(src.names, got.names):
        if sn != METADATA:
            assert got.tensor_bytes(gn) == src.tensor_bytes(sn)
    return got
