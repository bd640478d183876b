"""Python reference of the ckptfs views, and a deep structural comparison.

The reference works on *loaded* objects (what torch.load returns), never on
bytes, so it is independent of the daemon's pickle rewriter.

Rules (issue #2, with the lead's refinements in src/pickle.c marked *):
  * A state dict is an OrderedDict carrying a `_metadata` attribute (what
    Module.state_dict() returns) whose keys are all str, whatever its values
    (issue #10: quantized dtypes and packed-parameter tuples, `_extra_state`
    objects); or a non-empty dict/OrderedDict whose keys are all str and
    whose values are all tensors (Parameters included).
    * Without `_metadata`, every key must look like a parameter path:
      non-empty, no whitespace or control characters, no '/' or '\\'
      (Lightning's best_k_models maps checkpoint file paths to scores: not a
      state dict).
  * It is found by walking from the root through dicts, lists and tuples only
    (never into other objects' state).  A dict that is a value of a dict with
    any non-str key is never a state dict, but is walked into.
    * A dict with both "state" and "param_groups" keys (Optimizer.state_dict(),
      whose parameter ids may be strings) is not walked into.
  * plain: keys first lose every inner wrapper component wherever it stands
    (issue #10, INNER_WRAPPERS: FSDP, checkpoint_wrapper, torch.compile; a
    tensor key's last component stays), then every leading wrapper
    component, "module." (DDP, DP) and "_orig_mod." (torch.compile), in any
    order and repeated; `_metadata`
    keys likewise, where a wrapper component may also be the whole remaining
    name ("module" -> "", "module._orig_mod" -> "", "module.x" -> "x"),
    order kept; on collision the later value wins at the earlier position.
  * ddp: keys become "module." + plain(key); `_metadata` becomes
    [("", {"version": 1})] + [("module" if k == "" else "module." + k, v)
    for the plain metadata]; an empty `_metadata` names no module and stays.
  * A part already in the view's form is left alone: keys are idempotent under
    both rules; a ddp-shaped `_metadata` ('' first, 'module' second, every
    other key a fixed point of the ddp rule) is kept as it is in the ddp view.
  * Custom views (issue #3, `-o view=NAME:strip=P[:strip=P...][:add=P]`):
    the same rules with only the listed prefixes stripped and `add` (if any)
    in place of "module.", and no inner wrapper removed: plain is (WRAPPERS,
    None, clean=True), ddp (WRAPPERS, "module.", clean=True).  A view that adds a prefix inserts the wrapper's ("", ...)
    entry like ddp; one that strips only (Lightning `model.`, PEFT
    `base_model.model.`) treats `_metadata` like plain.  A key collision in
    any view makes the daemon refuse the file (EIO): KeyCollision here.
"""

import collections
import io
import math
import os
import pickle
import pickletools
import re

import torch

PREFIX = "module."
WRAPPERS = ("module.", "_orig_mod.")
INNER_WRAPPERS = ("_fsdp_wrapped_module", "_fpw_module", "_checkpoint_wrapped_module", "_orig_mod")
VIEWS = ("plain", "ddp")

MAX_CUSTOM_VIEWS = 13
MAX_STRIP = 8                   # CK_VIEW_MAX_STRIP in src/view.h
VIEW_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\Z")


# --------------------------------------------------------------------------
# views

class View(collections.namedtuple("View", "name strip add clean", defaults=(False,))):
    """A view: the top-level directory `name`, the wrapper prefixes it strips
    (each ending in "."; leading components, any order, repeated) and the
    prefix it adds afterwards (ending in ".", or None).  plain and ddp are
    View("plain", WRAPPERS, None) and View("ddp", WRAPPERS, "module.");
    `-o view=NAME:strip=P[:strip=P...][:add=P]` makes a custom one."""

    __slots__ = ()

    def option(self):
        """The `-o` argument that defines this view."""
        parts = [self.name] + ["strip=" + p for p in self.strip]
        if self.add is not None:
            parts.append("add=" + self.add)
        return "view=" + ":".join(parts)


PLAIN = View("plain", WRAPPERS, None, True)
DDP = View("ddp", WRAPPERS, PREFIX, True)
BUILTIN = {"plain": PLAIN, "ddp": DDP}


def _check_prefix(p, spec):
    if not p.endswith(".") or p == ".":
        raise ValueError("view %r: prefix %r must end with '.'" % (spec, p))


def parse_view(spec):
    """`NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]` (the value of
    `-o view=`) -> View; ValueError on anything the daemon must refuse."""
    if spec.startswith("view="):
        spec = spec[len("view="):]
    parts = spec.split(":")
    name, strip, add = parts[0], [], None
    if not VIEW_NAME_RE.match(name) or name in (".", ".."):
        raise ValueError("view %r: bad name %r" % (spec, name))
    if name in BUILTIN:
        raise ValueError("view %r: %r is a built-in view" % (spec, name))
    for part in parts[1:]:
        what, eq, p = part.partition("=")
        if not eq or what not in ("strip", "add"):
            raise ValueError("view %r: expected strip=PREFIX or add=PREFIX, got %r" % (spec, part))
        if add is not None:
            raise ValueError("view %r: add= must come last, once" % spec)
        _check_prefix(p, spec)
        if what == "strip":
            strip.append(p)
        else:
            add = p
    if not strip:
        raise ValueError("view %r: no strip=PREFIX" % spec)
    if len(strip) > MAX_STRIP:
        raise ValueError("view %r: more than %d strip= prefixes" % (spec, MAX_STRIP))
    return View(name, tuple(strip), add)


def custom_view(name, strip, add=None):
    """A custom view, validated as the daemon's option parser would."""
    if isinstance(strip, str):
        strip = (strip,)
    return parse_view(View(name, tuple(strip), add).option())


def view_of(view):
    """A View for "plain", "ddp", a View, or a custom `NAME:strip=...` spec."""
    if isinstance(view, View):
        return view
    if view in BUILTIN:
        return BUILTIN[view]
    if isinstance(view, str) and ":" in view:
        return parse_view(view)
    raise ValueError("unknown view %r" % (view,))


# --------------------------------------------------------------------------
# key rules

def _strip(key, meta, prefixes=WRAPPERS):
    while True:
        for w in prefixes:
            if key.startswith(w):
                key = key[len(w):]
                break
            if meta and key == w[:-1]:
                return ""
        else:
            return key


def clean_key(key, meta):
    """Without inner wrapper components (a tensor key keeps its last one);
    what torch's clean_tensor_name gives for names made of whole components."""
    parts = key.split(".")
    keep = [p for i, p in enumerate(parts)
            if p not in INNER_WRAPPERS or (not meta and i == len(parts) - 1)]
    return ".".join(keep)


def _rename(v, key, meta):
    return _strip(clean_key(key, meta) if v.clean else key, meta, v.strip)


def view_key(view, key):
    """A state-dict key in `view`: clean, strip, then add."""
    v = view_of(view)
    return (v.add or "") + _rename(v, key, False)


def view_meta_key(view, key):
    """A `_metadata` key (a module path, "" = root) in `view`."""
    v = view_of(view)
    key = _rename(v, key, True)
    if v.add is None:
        return key
    return v.add[:-1] if key == "" else v.add + key


def view_metadata(view, md):
    """`_metadata` in `view`: names stripped (on collision the later value
    wins at the earlier position, as unpickling assigns); a view that adds a
    prefix puts the wrapper's own ("", {"version": 1}) first and renames the
    rest; an empty `_metadata` names no module and stays."""
    v = view_of(view)
    stripped = collections.OrderedDict()
    for k, val in md.items():
        stripped[_rename(v, k, True)] = val   # re-assignment keeps the first position
    if v.add is None:
        return stripped
    if not md:
        return md
    out = collections.OrderedDict()
    out[""] = {"version": 1}
    for k, val in stripped.items():
        out[view_meta_key(v, k)] = val
    return out


def metadata_in_form(view, md):
    """A `_metadata` a view that adds a prefix leaves as it is: the wrapper's
    "" first, the wrapped root (add minus the dot) second, every other name
    a fixed point of the view's rule."""
    v = view_of(view)
    if v.add is None:
        return False
    keys = list(md.keys())
    return len(keys) >= 2 and keys[0] == "" and keys[1] == v.add[:-1] and \
        all(view_meta_key(v, k) == k for k in keys[1:])


def plain_key(key):
    return view_key(PLAIN, key)


def ddp_key(key):
    return view_key(DDP, key)


def plain_meta_key(key):
    return view_meta_key(PLAIN, key)


def ddp_meta_key(key):
    return view_meta_key(DDP, key)


def plain_metadata(md):
    return view_metadata(PLAIN, md)


def ddp_metadata(md):
    return view_metadata(DDP, md)


def metadata_in_ddp_form(md):
    return metadata_in_form(DDP, md)


KEY_RULES = {"plain": plain_key, "ddp": ddp_key}
META_RULES = {"plain": plain_metadata, "ddp": ddp_metadata}


# --------------------------------------------------------------------------
# the walk

def _is_dict(obj):
    return type(obj) in (dict, collections.OrderedDict)


def is_param_path(key):
    return type(key) is str and key != "" and not any(
        c <= " " or c in "/\\\x7f" for c in key)


def is_optimizer_state(obj):
    return _is_dict(obj) and "state" in obj and "param_groups" in obj


def is_state_dict(obj):
    if not _is_dict(obj):
        return False
    if type(obj) is collections.OrderedDict and hasattr(obj, "_metadata"):
        return all(type(k) is str for k in obj.keys())
    if not all(is_param_path(k) for k in obj.keys()):
        return False
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        return False
    if len(obj) > 0:
        return True
    return type(obj) is collections.OrderedDict and hasattr(obj, "_metadata")


class KeyCollision(ValueError):
    """Two keys of one state dict would get the same name: the daemon
    refuses the file (EIO)."""


def _rename_state_dict(sd, view):
    new = type(sd)()
    for k, v in sd.items():
        nk = view_key(view, k)
        if nk in new:
            raise KeyCollision("key collision in %s view: %r" % (view.name, nk))
        new[nk] = v
    # carry attributes (an OrderedDict's pickled state), transforming _metadata
    for attr, val in getattr(sd, "__dict__", {}).items():
        if attr == "_metadata" and isinstance(val, dict) and \
                all(type(k) is str for k in val) and \
                not metadata_in_form(view, val):
            val = view_metadata(view, val)
        setattr(new, attr, val)
    return new


def transform(obj, view):
    """The object a view presents for a source object `obj` (loaded).
    `view`: "plain", "ddp", a View, or a custom spec "NAME:strip=P[:add=P]".
    Raises KeyCollision where the daemon must refuse the file."""
    view = view_of(view)
    memo = {}

    def walk(o, may_be_sd):
        key = (id(o), may_be_sd)
        if key in memo:
            return memo[key]
        if _is_dict(o):
            if may_be_sd and is_state_dict(o):
                res = _rename_state_dict(o, view)
            elif is_optimizer_state(o):
                res = o
            else:
                children_may = all(type(k) is str for k in o.keys())
                res = type(o)()
                for k, v in o.items():
                    res[k] = walk(v, children_may)
                for attr, val in getattr(o, "__dict__", {}).items():
                    setattr(res, attr, val)
        elif type(o) is list:
            res = [walk(v, True) for v in o]
        elif type(o) is tuple:
            res = tuple(walk(v, True) for v in o)
        else:
            res = o
        memo[key] = res
        return res

    return walk(obj, True)


def changes(obj, view):
    """Whether the view of `obj` differs from `obj` (else: byte identity)."""
    try:
        assert_same(transform(obj, view), obj)
    except AssertionError:
        return True
    return False


def state_dicts(obj):
    """All state dicts found by the walk, as (path, dict) pairs."""
    out = []

    def walk(o, may_be_sd, path):
        if _is_dict(o):
            if may_be_sd and is_state_dict(o):
                out.append((path, o))
                return
            if is_optimizer_state(o):
                return
            children_may = all(type(k) is str for k in o.keys())
            for k, v in o.items():
                walk(v, children_may, path + "[%r]" % (k,))
        elif type(o) in (list, tuple):
            for i, v in enumerate(o):
                walk(v, True, path + "[%d]" % i)

    walk(obj, True, "")
    return out


# --------------------------------------------------------------------------
# deep comparison

class _Cmp:
    def __init__(self):
        self.seen = set()
        self.storages = {}      # storage id in a -> in b (sharing must match)

    def fail(self, path, msg):
        __tracebackhide__ = True
        raise AssertionError("%s: %s" % (path or "<root>", msg))

    def same(self, a, b, path):
        __tracebackhide__ = True
        ta, tb = type(a), type(b)
        if _type_name(ta) != _type_name(tb):
            self.fail(path, "type %s != %s" % (_type_name(ta), _type_name(tb)))
        if isinstance(a, torch.Tensor):
            return self.tensor(a, b, path)
        if a is None or ta in (bool, int, str, bytes, bytearray, complex):
            if a != b:
                self.fail(path, "%r != %r" % (a, b))
            return
        if ta is float:
            if not (a == b or (math.isnan(a) and math.isnan(b))):
                self.fail(path, "%r != %r" % (a, b))
            return
        if isinstance(a, (torch.dtype, torch.device, torch.layout, torch.memory_format,
                          torch.qscheme)):
            if a != b:
                self.fail(path, "%r != %r" % (a, b))
            return
        pair = (id(a), id(b))
        if pair in self.seen:
            return
        self.seen.add(pair)
        if isinstance(a, dict):
            ka, kb = list(a.keys()), list(b.keys())
            if ka != kb:
                self.fail(path, "keys differ (order counts):\n  %s\n  %s"
                          % (_short(ka), _short(kb)))
            for k in ka:
                self.same(a[k], b[k], "%s[%r]" % (path, k))
            self.attrs(a, b, path)
            return
        if isinstance(a, (list, tuple)):
            if len(a) != len(b):
                self.fail(path, "length %d != %d" % (len(a), len(b)))
            for i, (x, y) in enumerate(zip(a, b)):
                self.same(x, y, "%s[%d]" % (path, i))
            if ta not in (list, tuple):         # namedtuple & co
                self.attrs(a, b, path)
            return
        if _type_name(ta).startswith("numpy.") and hasattr(a, "dtype") and hasattr(a, "shape"):
            import numpy
            if a.dtype != b.dtype or a.shape != b.shape:
                self.fail(path, "numpy %s%s != %s%s" % (a.dtype, a.shape, b.dtype, b.shape))
            eq_nan = a.dtype.kind in "fc"
            if not numpy.array_equal(a, b, equal_nan=eq_nan):
                self.fail(path, "numpy values differ")
            return
        if isinstance(a, (set, frozenset)):
            if a != b:
                self.fail(path, "%r != %r" % (a, b))
            return
        if hasattr(a, "__dict__") or hasattr(b, "__dict__"):
            self.same(getattr(a, "__dict__", None), getattr(b, "__dict__", None),
                      path + ".__dict__")
            return
        if repr(a) != repr(b):
            self.fail(path, "%r != %r" % (a, b))

    def attrs(self, a, b, path):
        __tracebackhide__ = True
        da, db = getattr(a, "__dict__", {}), getattr(b, "__dict__", {})
        if sorted(da) != sorted(db):
            self.fail(path, "attributes %s != %s" % (sorted(da), sorted(db)))
        for k in sorted(da):
            self.same(da[k], db[k], "%s.%s" % (path, k))

    def tensor(self, a, b, path):
        __tracebackhide__ = True
        for what in ("dtype", "layout", "device", "requires_grad", "is_quantized"):
            if getattr(a, what) != getattr(b, what):
                self.fail(path, "%s %r != %r" % (what, getattr(a, what), getattr(b, what)))
        if a.shape != b.shape:
            self.fail(path, "shape %s != %s" % (tuple(a.shape), tuple(b.shape)))
        if a.layout != torch.strided:
            ad, bd = a.to_dense(), b.to_dense()
            return self.values(ad, bd, path)
        if a.stride() != b.stride():
            self.fail(path, "stride %s != %s" % (a.stride(), b.stride()))
        if a.storage_offset() != b.storage_offset():
            self.fail(path, "storage_offset %d != %d" % (a.storage_offset(), b.storage_offset()))
        self.sharing(a, b, path)
        if a.is_quantized:
            if a.qscheme() != b.qscheme():
                self.fail(path, "qscheme differs")
            if a.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                if (a.q_scale(), a.q_zero_point()) != (b.q_scale(), b.q_zero_point()):
                    self.fail(path, "qparams differ")
            else:
                self.values(a.q_per_channel_scales(), b.q_per_channel_scales(), path + "<scales>")
                self.values(a.q_per_channel_zero_points(), b.q_per_channel_zero_points(),
                            path + "<zero_points>")
                if a.q_per_channel_axis() != b.q_per_channel_axis():
                    self.fail(path, "axis differs")
            return self.values(a.int_repr(), b.int_repr(), path)
        self.values(a, b, path)
        if type(a) is not torch.Tensor and type(a) is not torch.nn.Parameter:
            self.attrs(a, b, path)

    def sharing(self, a, b, path):
        __tracebackhide__ = True
        try:
            sa, sb = a.storage(), b.storage()
            ka, kb = (sa.data_ptr(), sa.nbytes()), (sb.data_ptr(), sb.nbytes())
        except Exception:
            return
        if ka[0] == 0 or ka[1] == 0:
            return
        if ka in self.storages:
            if self.storages[ka] != kb:
                self.fail(path, "storage sharing differs")
        else:
            if kb in self.storages.values():
                self.fail(path, "storage sharing differs")
            self.storages[ka] = kb

    def values(self, a, b, path):
        __tracebackhide__ = True
        a, b = a.detach(), b.detach()
        if a.numel() == 0:
            return
        if a.dtype.is_floating_point or a.dtype.is_complex:
            af, bf = a.to(torch.complex128 if a.dtype.is_complex else torch.float64), \
                b.to(torch.complex128 if b.dtype.is_complex else torch.float64)
            eq = (af == bf) | (torch.isnan(af) & torch.isnan(bf))
            ok = bool(eq.all())
        else:
            ok = torch.equal(a, b)
        if not ok:
            self.fail(path, "tensor values differ")


def _type_name(t):
    return "%s.%s" % (getattr(t, "__module__", "?"), getattr(t, "__qualname__", t.__name__))


def _short(seq, n=8):
    seq = list(seq)
    if len(seq) <= n:
        return repr(seq)
    return repr(seq[:n])[:-1] + ", ... (%d)]" % len(seq)


def assert_same(a, b):
    """Raise AssertionError naming the first difference between a and b.

    Dicts: same type (dict vs OrderedDict), same keys in the same order, same
    attributes (`_metadata` and its order included).  Tensors: type, dtype,
    shape, stride, offset, storage sharing, requires_grad, values (NaN == NaN).
    Lists/tuples elementwise; other objects by type and __dict__ (else repr).
    """
    __tracebackhide__ = True
    _Cmp().same(a, b, "")


def same(a, b):
    try:
        assert_same(a, b)
    except AssertionError:
        return False
    return True


# --------------------------------------------------------------------------
# loading

def load(path, weights_only=False):
    return torch.load(path, map_location="cpu", weights_only=weights_only)


class Stub:
    """Stands for a class we cannot import; holds what the pickle gave it."""

    def __init__(self, *args, **kwargs):
        self.stub_args = args
        if kwargs:
            self.stub_kwargs = kwargs

    def __setstate__(self, state):
        self.stub_state = state

    def __call__(self, *args, **kwargs):     # a stub used as a function
        return _stub_class(type(self).__module__, type(self).__qualname__ + "()")(*args, **kwargs)


_stub_classes = {}


def _stub_class(module, name):
    key = (module, name)
    if key not in _stub_classes:
        cls = type(name.rsplit(".", 1)[-1], (Stub,), {})
        cls.__module__ = "stub:" + module
        cls.__qualname__ = name
        _stub_classes[key] = cls
    return _stub_classes[key]


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except Exception:
            return _stub_class(module, name)


class _StubPickle:
    """A stand-in for the pickle module whose Unpickler makes stubs."""
    __name__ = "stub_pickle"

    def __getattr__(self, name):
        return getattr(pickle, name)

    Unpickler = _StubUnpickler


def load_stub(path):
    """torch.load(path) with unimportable globals replaced by Stub classes.

    Debian's torch 1.13 ignores load(pickle_module=...) unless weights_only,
    so torch.serialization's `pickle` is swapped for the duration."""
    import torch.serialization as ser
    saved = ser.pickle
    ser.pickle = _StubPickle()
    try:
        return torch.load(path, map_location="cpu")
    finally:
        ser.pickle = saved


def pickle_ends(raw, count):
    """End offsets of the first `count` pickles of a legacy file."""
    f, ends = io.BytesIO(raw), []
    for _ in range(count):
        for op, _, _ in pickletools.genops(f):
            if op.name == "STOP":
                break
        ends.append(f.tell())
    return ends


def loader(directory, load_file=None):
    """name -> the loaded file directory/name, each loaded once.
    load_file(path, name) defaults to load(path)."""
    cache = {}

    def source(name):
        if name not in cache:
            path = os.path.join(directory, name)
            cache[name] = load_file(path, name) if load_file else load(path)
        return cache[name]

    return source
