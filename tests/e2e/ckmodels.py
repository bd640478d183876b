"""Small models and checkpoint builders shared by the end-to-end tests, and
the worker of the 2-process DistributedDataParallel run (it must live in an
importable module for torch.multiprocessing.spawn)."""

import collections
import copy
import datetime
import os
import socket
import traceback

import torch
import torch.nn as nn


def make_model(seed=0):
    """Nested modules, a BatchNorm (metadata version 2), a parameter-less
    ReLU (metadata without keys), a buffer."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Sequential(nn.Linear(8, 4), nn.Tanh(), nn.Linear(4, 3)),
    )


def train_step(model, opt=None, seed=1):
    torch.manual_seed(seed)
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 6), torch.randn(16, 3)
    loss = ((model(x) - y) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return opt


def unicode_model(seed=0):
    torch.manual_seed(seed)
    m = nn.Module()
    m.add_module("ñandú", nn.Linear(2, 2))
    inner = nn.Module()
    inner.add_module("层", nn.Linear(2, 1))
    inner.add_module("😀", nn.BatchNorm1d(1))
    m.add_module("Ωmega", inner)
    return m


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# DDP worker

def _result(outdir, rank, name, fn):
    path = os.path.join(outdir, "rank%d_%s.txt" % (rank, name))
    try:
        fn()
        msg = "ok\n"
    except BaseException:
        msg = "FAIL\n" + traceback.format_exc()
    with open(path + ".tmp", "w") as f:
        f.write(msg)
    os.rename(path + ".tmp", path)


def ddp_worker(rank, world, port, mnt, src, outdir):
    """Runs in each of `world` processes.

    (a) resume: <src>/single.pt holds a single-process model.state_dict();
        every rank loads <mnt>/ddp/single.pt into DDP(model) with strict=True
        and the view must equal DDP(model).state_dict() exactly.
    (b) export: rank 0 saves ddp.state_dict() (after a training step) to
        <src>/ddp_run.pt; every rank loads <mnt>/plain/ddp_run.pt into a bare
        model with strict=True; the view must equal model.state_dict().
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    import ckref

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port,
                            rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        model = make_model(seed=100 + rank)   # differs from the checkpoint
        ddp = DDP(model)

        def resume():
            view = ckref.load(os.path.join(mnt, "ddp", "single.pt"), weights_only=True)
            ddp.load_state_dict(view, strict=True)
            ckref.assert_same(view, ddp.state_dict())
            src_sd = ckref.load(os.path.join(src, "single.pt"))
            ckref.assert_same(src_sd, ddp.module.state_dict())

        _result(outdir, rank, "resume", resume)
        dist.barrier()

        train_step(ddp, seed=7)
        if rank == 0:
            torch.save(ddp.state_dict(), os.path.join(src, "ddp_run.pt.tmp"))
            os.rename(os.path.join(src, "ddp_run.pt.tmp"), os.path.join(src, "ddp_run.pt"))
        dist.barrier()

        def export():
            bare = make_model(seed=200)
            view = ckref.load(os.path.join(mnt, "plain", "ddp_run.pt"), weights_only=True)
            bare.load_state_dict(view, strict=True)
            ckref.assert_same(view, bare.state_dict())
            ckref.assert_same(bare.state_dict(), ddp.module.state_dict())

        _result(outdir, rank, "export", export)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------
# checkpoint builders

def training_checkpoint():
    """{'model': DP-style sd (module. keys), 'optimizer': Adam after a step,
    'epoch': 3, 'ema': plain sd of a deepcopy}."""
    model = make_model(0)
    opt = train_step(model)
    ema = copy.deepcopy(model)
    return {
        "model": nn.DataParallel(model).state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "ema": ema.state_dict(),
        "note": ["0", "bias", ""],
    }


def shared_strings_checkpoint():
    """FORMATS.md §2.4: key strings shared across two state dicts and data."""
    torch.manual_seed(3)
    seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    lin = nn.Linear(3, 3)
    return {
        "model": seq.state_dict(),
        "ema": copy.deepcopy(seq).state_dict(),
        "lin": lin.state_dict(),
        "lin2": copy.deepcopy(lin).state_dict(),
        "note": ["0", "bias", ""],
    }


def big_model(n=600):
    torch.manual_seed(5)
    return nn.Sequential(*[nn.Linear(1, 1) for _ in range(n)])


def plain_dict(sd):
    return {k: v for k, v in sd.items()}


def odict(items, metadata=None):
    d = collections.OrderedDict(items)
    if metadata is not None:
        d._metadata = collections.OrderedDict(metadata)
    return d


# --------------------------------------------------------------------------
# wrappers that put other prefixes before the model's keys

class Compiled(nn.Module):
    """Stands for torch.compile's OptimizedModule (not in torch 1.13): the
    model is the attribute `_orig_mod`, so keys get "_orig_mod." and the
    metadata '', '_orig_mod', '_orig_mod.0', ..."""

    def __init__(self, mod):
        super().__init__()
        self._orig_mod = mod

    def forward(self, *a):
        return self._orig_mod(*a)


class Lit(nn.Module):
    """A LightningModule holding its network as `model`."""

    def __init__(self, mod):
        super().__init__()
        self.model = mod


class Peft(nn.Module):
    """A PeftModel: `base_model` (LoraModel) holds the network as `model`."""

    def __init__(self, mod):
        super().__init__()
        self.base_model = nn.Module()
        self.base_model.model = mod
