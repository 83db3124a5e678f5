"""EscnnInvariantMLP. Tests marked escnn run in the escnn environment (`pytest -m escnn tests`); the others (lazy
import, install hint, argument checks) run everywhere."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import train_non_invariant
from torch import nn

import torchinvariance as ti

ROOT = Path(__file__).resolve().parents[2]
ROT4 = ti.get_group("rotation", order=4)
ROT2 = ti.get_group("rotation", order=2)
D4 = ti.get_group("dihedral")
FLIPX = ti.get_group("flip", axis="x")
FLIPY = ti.get_group("flip", axis="y")


# ------------------------------------------------------------------------------------- everywhere (no escnn needed)
def test_importing_torchinvariance_never_imports_escnn():
    code = (
        "import sys, torch, torchinvariance as ti\n"
        "ti.MLP(); ti.GroupInvariantMLP(ti.get_group('rotation', order=4)); ti.models.EscnnInvariantMLP\n"
        "assert 'escnn' not in sys.modules, sorted(m for m in sys.modules if m.startswith('escnn'))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=120)


def test_missing_escnn_raises_import_error_with_install_hint(monkeypatch):
    for name in ("escnn", "escnn.nn", "escnn.gspaces", "escnn.group", "escnn.group._numerical"):
        monkeypatch.setitem(sys.modules, name, None)  # `import escnn` now raises ImportError
    with pytest.raises(ImportError) as info:
        ti.EscnnInvariantMLP(order=4)
    message = str(info.value)
    assert 'pip install "torchinvariance[escnn]"' in message
    assert "py3nj" in message and "gfortran" in message
    assert isinstance(info.value.__cause__, ImportError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": 3}, r"order must be one of \(2, 4\)"),
        ({"order": 8}, r"order must be one of \(2, 4\)"),
        ({"dihedral": 1}, "dihedral must be a bool"),
        ({"in_shape": (1, 12, 10)}, r"in_shape must be \(C, S, S\)"),
        ({"in_shape": (12, 12)}, r"in_shape must be \(C, S, S\)"),
        ({"in_shape": (1, 2, 2)}, "S >= 3"),
        ({"depth": 1}, "depth must be an int >= 2"),
    ],
)
def test_bad_arguments_before_importing_escnn(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ti.EscnnInvariantMLP(**kwargs)


# ------------------------------------------------------------------------------------------- escnn environment
def build(order=4, dihedral=False, size=10, channels=1, seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"num_classes": 5, "hidden": 12, "depth": 3, **kw}
    return ti.EscnnInvariantMLP(order, dihedral, in_shape=(channels, size, size), **kw)


@pytest.mark.escnn
@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
def test_rotation_invariant_at_init_and_after_training(size):
    model = build(size=size, channels=2)
    x = torch.randn(6, 2, size, size)
    for _ in range(2):
        for group in (ROT4, ROT2):
            ti.assert_invariant(model, group, x)
            ti.assert_invariant(model, group, x, dtype=torch.float64)  # rtol 1e-10
        train_non_invariant(model, ROT4, x, classes=5)
    with pytest.raises(AssertionError, match="worst element 'flip"):
        ti.assert_invariant(model, FLIPX, x)  # only rotations are built in


@pytest.mark.escnn
@pytest.mark.parametrize("size", [9, 10], ids=["odd", "even"])
def test_dihedral_invariant_at_init_and_after_training(size):
    model = build(dihedral=True, size=size)
    x = torch.randn(6, 1, size, size)
    for _ in range(2):
        for group in (D4, ROT4, FLIPX, FLIPY):
            ti.assert_invariant(model, group, x)
            ti.assert_invariant(model, group, x, dtype=torch.float64)
        train_non_invariant(model, D4, x, classes=5)


@pytest.mark.escnn
def test_order_two():
    x = torch.randn(4, 1, 9, 9)
    model = build(order=2, size=9)
    ti.assert_invariant(model, ROT2, x, dtype=torch.float64)
    with pytest.raises(AssertionError, match=r"worst element 'rot(90|270)'"):
        ti.assert_invariant(model, ROT4, x)
    dihedral = build(order=2, dihedral=True, size=9)  # 180 degrees and both mirrors
    for group in (ROT2, FLIPX, FLIPY):
        ti.assert_invariant(dihedral, group, x, dtype=torch.float64)


@pytest.mark.escnn
def test_raw_escnn_filter_is_only_approximately_invariant():
    """Why the projection exists: escnn's float32 basis sampling leaves ~1e-6 errors; the projection removes them."""
    model = build(size=10, exact=False)
    x = torch.randn(6, 1, 10, 10)
    raw = ti.invariance_error(model, ROT4, x, relative=True, dtype=torch.float64).max()
    assert 1e-12 < raw < 1e-4
    layer = model.features[0]
    with torch.no_grad():
        w, _ = layer.conv.expand_parameters()
        projected = layer._project(w)
        assert ((w - projected).norm() / w.norm()) < 1e-4  # a tiny correction of escnn's own filter
        torch.testing.assert_close(layer._project(projected), projected, rtol=1e-6, atol=1e-7)  # idempotent
    layer.exact = True
    assert ti.invariance_error(model, ROT4, x, relative=True, dtype=torch.float64).max() < 1e-12


@pytest.mark.escnn
def test_parameter_count_paper_setting():
    model = ti.EscnnInvariantMLP(order=4)
    n = sum(p.numel() for p in model.parameters())
    conv = model.features[0].conv
    mlp_part = 3 * (128 * 128 + 128) + (128 * 9 + 9)
    assert n == conv.basisexpansion.dimension() + 128 + mlp_part == 195_977
    assert "195,977" in ti.EscnnInvariantMLP.__doc__
    assert conv.kernel_size == 36 and conv.padding == 0  # the kernel covers the whole (unpadded) image
    assert isinstance(model.features[-1], nn.ReLU) and model.head.out_features == 9
    assert model.features(torch.zeros(2, 1, 36, 36)).shape == (2, 128)


@pytest.mark.escnn
@pytest.mark.slow
def test_parameter_count_paper_setting_dihedral():
    model = ti.EscnnInvariantMLP(order=4, dihedral=True)
    assert sum(p.numel() for p in model.parameters()) == 195_977


@pytest.mark.escnn
def test_escnn_svd_workaround_is_scoped_to_construction():
    import escnn.group._numerical as numerical

    before = numerical.randomized_svd
    build(dihedral=True, size=7, hidden=2)  # flipRot2dOnR2 bases are what escnn issue #112 breaks
    assert numerical.randomized_svd is before


@pytest.mark.escnn
def test_models_do_not_share_escnn_buffers():
    a, b = build(size=9, seed=0), build(size=9, seed=1)
    a.double()
    x = torch.randn(2, 1, 9, 9)
    assert b(x).dtype == torch.float32  # escnn's basis cache would have cast b's basis to float64 too
    ti.assert_invariant(a, ROT4, x.double())


@pytest.mark.escnn
def test_eval_mode_caches_the_filter_and_notices_updates():
    model = build(size=9)
    x = torch.randn(3, 1, 9, 9)
    train_out = model(x)
    model.eval()
    torch.testing.assert_close(model(x), train_out)
    with torch.no_grad():
        model.features[0].conv.weights.mul_(2.0)  # in-place update while in eval mode
    model.train()
    expected = model(x)
    model.eval()
    with torch.no_grad():
        model.features[0].conv.weights.mul_(0.5)
        model.features[0].conv.weights.mul_(2.0)  # same values, new version: re-expanded, still right
    torch.testing.assert_close(model(x), expected)
    ti.assert_invariant(model.double(), ROT4, x.double())


@pytest.mark.escnn
def test_state_dict_keys_do_not_depend_on_the_mode():
    model = build(size=9)
    keys = set(model.state_dict())
    assert keys == set(model.train().state_dict()) == set(model.eval().state_dict())
    assert not any(k.endswith((".filter", ".expanded_bias")) for k in keys)
    x = torch.randn(3, 1, 9, 9)
    saved = build(size=9, seed=5).train().state_dict()  # saved in training mode ...
    model.load_state_dict(saved)  # ... loads into a model in eval mode
    torch.testing.assert_close(model(x), build(size=9, seed=5)(x))


@pytest.mark.escnn
def test_describe_counts_the_expansion_only_in_training_mode():
    size, hidden, depth, classes, group_order = 9, 12, 3, 5, 4
    model = build(size=size)
    linear_part = 2 * (size * size * hidden * group_order + (depth - 2) * hidden * hidden + hidden * classes)
    assert ti.models.describe(model.eval(), input_shape=(1, 1, size, size))["flops"] == linear_part
    train_flops = ti.models.describe(model.train(), input_shape=(1, 1, size, size))["flops"]
    basis_dim = model.features[0].conv.basisexpansion.dimension()
    assert train_flops > linear_part
    assert math.isclose(train_flops - linear_part, 2 * basis_dim * group_order * size * size, rel_tol=0.05)
