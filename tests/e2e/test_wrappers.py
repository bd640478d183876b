"""Issue #10: every state dict, every wrapper name.

* A state dict is recognised by its `_metadata` (what Module.state_dict()
  returns), whatever its values: a real dynamically quantized model (dtype
  values, packed-parameter tuples) and a module whose get_extra_state()
  returns a non-tensor, saved bare and wrapped, load with strict=True
  through both views, the values byte-exact.
* Wrapper names inside keys: keys laid out as FSDP and activation
  checkpointing write them (built directly: torch 1.13's checkpoint_wrapper
  strips its own name in state_dict(), and FSDP needs a process group), and
  as a compiled submodule names them, load through plain/ into the bare
  model with strict=True; the keys are torch's own clean_tensor_name of the
  source keys (without `_orig_mod` and the leading DDP `module.`), `_metadata`
  to match.

Each file is loaded from a second process (the view must hold after the
mount's 1 s attribute timeout, and not only from the daemon's cache).
"""

import collections
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref
from conftest import HERE


def quantized_model(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)


class WithExtra(nn.Module):
    """A module whose extra state is a plain Python dict (not a tensor)."""

    def __init__(self, step=0):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.step, self.name = step, "extra"

    def get_extra_state(self):
        return {"step": self.step, "name": self.name, "history": [1.5, 2.5]}

    def set_extra_state(self, state):
        self.step, self.name = state["step"], state["name"]


def extra_model(seed, step=0):
    torch.manual_seed(seed)
    return nn.Sequential(WithExtra(step), nn.Linear(2, 1))


def _dp(m):
    return nn.DataParallel(m).state_dict()


# --------------------------------------------------------------------------
# FSDP / activation-checkpointing layouts, built directly

# module path -> the wrapper names around it, outermost first
FSDP_CKPT = {"": ["_fsdp_wrapped_module"], "0": ["_checkpoint_wrapped_module"],
             "3": ["_fsdp_wrapped_module", "_checkpoint_wrapped_module"],
             "3.0": ["_fsdp_wrapped_module", "_fpw_module"]}
COMPILED_SUB = {"3": ["_orig_mod"]}


def _wrapped_path(path, wrap):
    """The module path as the wrapped model names it: each wrapped module's
    wrappers come right after its own name."""
    parts, out = path.split(".") if path else [], list(wrap.get("", []))
    for i, p in enumerate(parts):
        out.append(p)
        out += wrap.get(".".join(parts[:i + 1]), [])
    return out


def wrapped_state_dict(model, wrap, ddp):
    """model.state_dict() with keys and `_metadata` as a model wrapped per
    `wrap` (and in DDP when `ddp`) writes them: each wrapper level gets its
    own ("path", {"version": 1}) metadata entry before the module's own."""
    sd, lead = model.state_dict(), ["module"] if ddp else []
    out = collections.OrderedDict()
    for k, v in sd.items():
        mod, _, name = k.rpartition(".")
        out[".".join(lead + _wrapped_path(mod, wrap) + [name])] = v
    md = collections.OrderedDict()
    if ddp:
        md[""] = {"version": 1}
    for path, val in sd._metadata.items():
        parts = _wrapped_path(path, wrap)
        nwrap = len(wrap.get(path, [])) if path else len(wrap.get("", []))
        for i in range(nwrap):  # the wrappers around this module
            md[".".join(lead + parts[:len(parts) - nwrap + i])] = {"version": 1}
        md[".".join(lead + parts)] = val
    out._metadata = md
    return out


def _torch_clean_tensor_name():
    """torch's own clean_tensor_name, taken from its source: torch 1.13's
    torch.distributed.fsdp does not import under Python 3.11 (a dataclass
    with a mutable default), so the function and the constants it uses are
    read from the installed files and compiled here, unchanged."""
    import ast
    base = os.path.dirname(torch.distributed.__file__)
    env = {}
    for rel, names in (("fsdp/flatten_params_wrapper.py", {"FPW_MODULE"}),
                       ("algorithms/_checkpoint/checkpoint_wrapper.py", {"_CHECKPOINT_PREFIX"}),
                       ("fsdp/fully_sharded_data_parallel.py",
                        {"FSDP_WRAPPED_MODULE", "clean_tensor_name"})):
        with open(os.path.join(base, rel)) as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            found = {t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)}
            if getattr(node, "name", None) in names or found & names:
                exec(compile(ast.Module([node], []), rel, "exec"), env)
    return env["clean_tensor_name"]


clean_tensor_name = _torch_clean_tensor_name()


def canonical(key):
    """torch's own canonical name: clean_tensor_name (FSDP, checkpoint
    wrapper), without the `_orig_mod` components that torch 2's
    distributed-checkpoint FQNs (_get_fqns) skip for a compiled module (no
    torch.compile in 1.13), then without the DDP prefix."""
    key = ".".join(c for c in clean_tensor_name(key).split(".") if c != "_orig_mod")
    return key[len("module."):] if key.startswith("module.") else key


# --------------------------------------------------------------------------
# the checkpoints

CASES = {
    "q8_bare.pt": lambda: quantized_model(0).state_dict(),
    "q8_ddp.pt": lambda: _dp(quantized_model(0)),
    "extra_bare.pt": lambda: extra_model(1, step=41).state_dict(),
    "extra_ddp.pt": lambda: _dp(extra_model(1, step=41)),
    "extra_training.pt": lambda: {"model": _dp(extra_model(1, step=41)), "epoch": 2},
    "fsdp_ckpt_ddp.pt": lambda: wrapped_state_dict(ckmodels.make_model(2), FSDP_CKPT, True),
    "fsdp_ckpt.pt": lambda: wrapped_state_dict(ckmodels.make_model(2), FSDP_CKPT, False),
    "compiled_sub.pt": lambda: wrapped_state_dict(ckmodels.make_model(3), COMPILED_SUB, False),
    "compiled_sub_ddp.pt": lambda: _dp(_compiled_sub(3)),
}


def _compiled_sub(seed):
    m = ckmodels.make_model(seed)
    m[3] = ckmodels.Compiled(m[3])
    return m


@pytest.fixture(scope="module")
def env(module_src, mount_module):
    for name, build in CASES.items():
        torch.save(build(), os.path.join(module_src, name))
    m = mount_module(module_src)
    time.sleep(1.1)  # past the attribute timeout: what follows is fresh
    return m, ckref.loader(module_src)


@pytest.fixture
def load_elsewhere(tmp_path):
    """torch.load of a view file in a second process (a fresh open of the
    view, not this process's pages); returns what it loaded."""
    def load(path):
        out = str(tmp_path / "loaded.pt")
        code = "import sys, torch; torch.save(torch.load(sys.argv[1]), sys.argv[2])"
        subprocess.run([sys.executable, "-c", code, path, out], check=True, cwd=HERE, timeout=120)
        return torch.load(out)
    return load


@pytest.mark.parametrize("name", ["q8_bare.pt", "q8_ddp.pt"])
def test_quantized_loads_strict_through_both_views(env, name):
    m, source = env
    want = quantized_model(0)
    for view in ckref.VIEWS:
        got = ckref.load(m.path(view, name))
        ckref.assert_same(got, ckref.transform(source(name), view))
        target = quantized_model(7)   # other weights until loaded
        (target if view == "plain" else nn.DataParallel(target)).load_state_dict(got, strict=True)
        ckref.assert_same(target.state_dict(), want.state_dict())
    # the renamed dict is the model's own: metadata and all
    ckref.assert_same(ckref.load(m.path("plain", name)), want.state_dict())
    ckref.assert_same(ckref.load(m.path("ddp", name)), _dp(want))


@pytest.mark.parametrize("name", ["extra_bare.pt", "extra_ddp.pt", "extra_training.pt"])
def test_extra_state_loads_strict_through_both_views(env, name, load_elsewhere):
    m, source = env
    for view in ckref.VIEWS:
        got = load_elsewhere(m.path(view, name))
        sd = got["model"] if name == "extra_training.pt" else got
        target = extra_model(9)
        (target if view == "plain" else nn.DataParallel(target)).load_state_dict(sd, strict=True)
        assert (target[0].step, target[0].name) == (41, "extra")
        ckref.assert_same(target.state_dict(), extra_model(1, step=41).state_dict())
        ckref.assert_same(got, ckref.transform(source(name), view))
    ckref.assert_same(ckref.load(m.path("plain", "extra_bare.pt")), extra_model(1, 41).state_dict())


@pytest.mark.parametrize("name,seed", [("fsdp_ckpt_ddp.pt", 2), ("fsdp_ckpt.pt", 2),
                                       ("compiled_sub.pt", 3), ("compiled_sub_ddp.pt", 3)])
def test_inner_wrappers_load_into_bare_model(env, name, seed, load_elsewhere):
    m, source = env
    src = source(name)
    got = load_elsewhere(m.path("plain", name))
    assert list(got) == [canonical(k) for k in src], "plain keys are torch's canonical names"
    bare = ckmodels.make_model(50)
    bare.load_state_dict(got, strict=True)
    want = ckmodels.make_model(seed).state_dict()
    ckref.assert_same(bare.state_dict(), want)
    ckref.assert_same(got, want)            # _metadata included: BN keeps its version 2
    ddp = ckref.load(m.path("ddp", name))
    wrapped = nn.DataParallel(ckmodels.make_model(51))
    wrapped.load_state_dict(ddp, strict=True)
    ckref.assert_same(ddp, wrapped.state_dict())
    ckref.assert_same(ddp, nn.DataParallel(ckmodels.make_model(seed)).state_dict())


def test_fsdp_layout_is_what_the_issue_names(env):
    """The built layout holds the issue's example key, so the test above
    covers it, and torch's clean_tensor_name really removes those names."""
    _, source = env
    keys = list(source("fsdp_ckpt_ddp.pt"))
    assert "module._fsdp_wrapped_module.3._fsdp_wrapped_module._checkpoint_wrapped_module" \
           ".0._fsdp_wrapped_module._fpw_module.weight" in keys
    assert "module._fsdp_wrapped_module.0._checkpoint_wrapped_module.weight" in keys
    assert "3._orig_mod.0.weight" in list(source("compiled_sub.pt"))
    assert clean_tensor_name(keys[0]) == "module.0.weight"
