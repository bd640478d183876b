"""Issue #10: symlinks through every view (plain/, ddp/ and a custom one).

Training scripts often write `last.pth -> /srv/runs/epoch9.pth`. A link
whose target is an absolute path into the source directory (as the mount
was given it, or its real path) is shown as the relative path to the same
file inside the view, so the reader's kernel follows it to the view's
file, not the raw one. Relative links and links that leave the source
(or might, by "..") are shown as written.
"""

import os
import time

import pytest
import torch
import torch.nn as nn

import ckmodels
import ckref

# every view: the built-in ones and a custom one
BARE = ckref.custom_view("bare", "model.")
VIEWS = [ckref.view_of(v) for v in ckref.VIEWS] + [BARE]


@pytest.fixture(scope="module")
def env(tmp_path_factory, mount_module):
    base = str(tmp_path_factory.mktemp("links"))
    real, alias, outside = (os.path.join(base, n) for n in ("real-src", "alias", "outside"))
    for d in (real, os.path.join(real, "sub"), outside):
        os.makedirs(d)
    os.symlink(real, alias)         # the mount is given this path
    torch.save(nn.DataParallel(ckmodels.make_model(31)).state_dict(), os.path.join(real, "epoch9.pth"))
    torch.save(ckmodels.make_model(32).state_dict(), os.path.join(real, "sub", "bare.pth"))
    torch.save(nn.DataParallel(ckmodels.make_model(33)).state_dict(), os.path.join(outside, "other.pth"))
    links = {
        # name: (target, what the view shows)
        "last.pth": (os.path.join(alias, "epoch9.pth"), "epoch9.pth"),
        "last_real.pth": (os.path.join(real, "epoch9.pth"), "epoch9.pth"),
        "sub/best.pth": (os.path.join(real, "epoch9.pth"), "../epoch9.pth"),
        "sub/also.pth": (os.path.join(alias, ".", "sub", "bare.pth"), "bare.pth"),
        "sub/up.pth": (os.path.join(real, "sub"), "."),
        "rundir": (os.path.join(real, "sub") + "/", "sub/"),
        "root": (alias, "."),
        "sub/rel.pth": ("../epoch9.pth", "../epoch9.pth"),
        "out.pth": (os.path.join(outside, "other.pth"), None),
        "dotdot.pth": (os.path.join(real, "sub", "..", "epoch9.pth"), None),
        "prefix_only.pth": (real + "-not/epoch9.pth", None),
    }
    for name, (target, _) in links.items():
        os.symlink(target, os.path.join(real, name))
    m = mount_module(alias, opts=[BARE.option()])
    time.sleep(1.1)  # past the entry timeout
    return m, real, links, ckref.loader(real)


def test_readlink_in_every_view(env):
    m, _, links, _ = env
    for view in VIEWS:
        for name, (target, shown) in links.items():
            assert os.readlink(m.path(view.name, name)) == (shown or target), (view.name, name)


@pytest.mark.parametrize("name,file", [("last.pth", "epoch9.pth"), ("last_real.pth", "epoch9.pth"),
                                       ("sub/best.pth", "epoch9.pth"), ("sub/rel.pth", "epoch9.pth"),
                                       ("sub/also.pth", "sub/bare.pth"),
                                       ("rundir/bare.pth", "sub/bare.pth"),
                                       ("root/sub/bare.pth", "sub/bare.pth")])
def test_links_into_the_source_stay_in_the_view(env, name, file):
    m, _, _, source = env
    for view in VIEWS:
        p = m.path(view.name, name)
        assert os.path.realpath(p) == os.path.realpath(m.path(view.name, file))
        ckref.assert_same(ckref.load(p, weights_only=True), ckref.transform(source(file), view))


def test_links_that_leave_the_source_stay_as_written(env):
    m, real, links, _ = env
    raw = torch.load(links["out.pth"][0])
    for view in VIEWS:
        ckref.assert_same(ckref.load(m.path(view.name, "out.pth")), raw)
        assert os.path.realpath(m.path(view.name, "dotdot.pth")) == os.path.join(real, "epoch9.pth")
        assert not os.path.exists(m.path(view.name, "prefix_only.pth"))
