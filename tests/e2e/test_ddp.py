"""Real DistributedDataParallel (gloo, 2 processes on 127.0.0.1, spawned)
and DataParallel resuming from / exporting to checkpoints through the views."""

import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

import ckmodels
import ckref

WORLD = 2


@pytest.fixture(scope="module")
def ddp_run(module_src, mount_module, tmp_path_factory):
    """One 2-process DDP run doing (a) resume and (b) export; per-rank
    results land in files that the tests below read."""
    src = module_src
    single = ckmodels.make_model(seed=42)
    ckmodels.train_step(single, seed=3)
    torch.save(single.state_dict(), os.path.join(src, "single.pt"))
    m = mount_module(src)
    out = str(tmp_path_factory.mktemp("ddp_results"))
    mp.spawn(ckmodels.ddp_worker, args=(WORLD, ckmodels.free_port(), m.mnt, src, out),
             nprocs=WORLD, join=True)
    return m, out


def _check(out, name):
    for rank in range(WORLD):
        p = os.path.join(out, "rank%d_%s.txt" % (rank, name))
        assert os.path.exists(p), "rank %d produced no result for %s" % (rank, name)
        with open(p) as f:
            text = f.read()
        assert text.startswith("ok"), "rank %d:\n%s" % (rank, text)


def test_ddp_resume_from_plain_checkpoint_via_ddp_view(ddp_run):
    _check(ddp_run[1], "resume")


def test_ddp_export_loads_into_bare_model_via_plain_view(ddp_run):
    _check(ddp_run[1], "export")


@pytest.fixture(scope="module")
def dp_env(module_src, mount_module):
    src = os.path.join(module_src, "dp")
    os.makedirs(src)
    single = ckmodels.make_model(seed=5)
    ckmodels.train_step(single, seed=4)
    torch.save(single.state_dict(), os.path.join(src, "single.pt"))
    wrapped = nn.DataParallel(ckmodels.make_model(seed=6))
    ckmodels.train_step(wrapped, seed=8)
    torch.save(wrapped.state_dict(), os.path.join(src, "dp.pt"))
    return mount_module(src), single, wrapped


def test_dataparallel_resume_via_ddp_view(dp_env):
    m, single, _ = dp_env
    dp = nn.DataParallel(ckmodels.make_model(seed=99))
    view = ckref.load(m.path("ddp", "single.pt"), weights_only=True)
    dp.load_state_dict(view, strict=True)
    ckref.assert_same(view, dp.state_dict())
    ckref.assert_same(dp.module.state_dict(), single.state_dict())


def test_dataparallel_export_via_plain_view(dp_env):
    m, _, wrapped = dp_env
    bare = ckmodels.make_model(seed=98)
    view = ckref.load(m.path("plain", "dp.pt"), weights_only=True)
    bare.load_state_dict(view, strict=True)
    ckref.assert_same(view, bare.state_dict())
    ckref.assert_same(bare.state_dict(), wrapped.module.state_dict())
