"""The element averaging (include_identity) and the update/compute shared by the functions and the classes."""

import numpy as np
import pytest
import torch

import torchinvariance as ti
from torchinvariance.metrics._reduction import averaged_rows, orbit_compute, orbit_std, orbit_update, reduce_terms


def test_averaged_rows():
    rot = ti.get_group("rotation", order=4)
    assert averaged_rows(rot, None, include_identity=False) == [False, True, True, True]
    assert averaged_rows(rot, None, include_identity=True) == [True] * 4
    assert averaged_rows(rot, [2, 0, 1], include_identity=False) == [True, False, True]
    so2 = ti.get_group("so2")
    assert averaged_rows(so2, [30.0, 360.0, 0.0], include_identity=False) == [True, False, False]  # 360 = identity
    with pytest.raises(ValueError, match="only the identity"):
        averaged_rows(rot, [0], include_identity=False)
    assert averaged_rows(rot, [0], include_identity=True) == [True]
    with pytest.raises(TypeError, match="include_identity"):
        averaged_rows(rot, None, include_identity=1)


def test_update_compute_against_numpy():
    g = torch.Generator().manual_seed(0)
    terms = torch.rand(4, 7, generator=g, dtype=torch.float64)
    t = terms.numpy()
    for rows, kept in (([False, True, True, True], t[1:]), ([True] * 4, t)):
        s, sq, n = orbit_update(terms, rows)
        np.testing.assert_allclose(orbit_compute(s, n, rows).item(), kept.mean(), rtol=1e-14)
        np.testing.assert_allclose(orbit_std(s, sq, n, rows).item(), kept.mean(0).std(), rtol=1e-12)
        np.testing.assert_allclose(reduce_terms(terms, "mean", rows).item(), kept.mean(), rtol=1e-14)
        np.testing.assert_allclose(reduce_terms(terms, "sum", rows).item(), kept.sum(), rtol=1e-14)
        assert reduce_terms(terms, "none", rows) is terms
    # two batches add up to the concatenation
    a, b = terms[:, :3], terms[:, 3:]
    rows = [False, True, True, True]
    sums = [x + y for x, y in zip(orbit_update(a, rows), orbit_update(b, rows))]
    np.testing.assert_allclose(orbit_compute(sums[0], sums[2], rows).item(), t[1:].mean(), rtol=1e-14)
    np.testing.assert_allclose(orbit_std(*sums, rows).item(), t[1:].mean(0).std(), rtol=1e-12)


def test_mean_keeps_the_autograd_graph():
    terms = torch.rand(3, 5, dtype=torch.float64, requires_grad=True)
    rows = [False, True, True]
    reduce_terms(terms, "mean", rows).backward()
    expected = torch.zeros(3, 5, dtype=torch.float64)
    expected[1:] = 1 / 10
    torch.testing.assert_close(terms.grad, expected)
