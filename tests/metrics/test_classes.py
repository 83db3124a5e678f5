"""The accumulating metrics are torchmetrics Metrics: equal to the functional forms on concatenated data, in a
MetricCollection, through .to()/state_dict(), and synced over 2 gloo processes by torchmetrics."""

import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import Listed, OrbitAveraged, mlp
from torchmetrics import Metric, MetricCollection

import torchinvariance as ti

F64 = torch.float64
SI_OPTIONS = {"n_steps": 4}


def _data(sizes=(3, 5, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1, 6, 6, generator=g, dtype=F64) for b in sizes]


def _metrics(model, group, **kwargs):
    return [
        (ti.DistributionInvariance(model, group, **kwargs), ti.distribution_invariance, {}),
        (ti.LogitInvariance(model, group, **kwargs), ti.logit_invariance, {}),
        (ti.SaliencyInvariance(model, group, **SI_OPTIONS, **kwargs), ti.saliency_invariance, SI_OPTIONS),
    ]


def _reference(fn, model, group, x, options, include_identity):
    """Terms of the functional form (numpy), and the mean/std over samples of the averaged rows, in numpy."""
    with torch.no_grad():
        terms = fn(model, group, x, reduction="none", **options).numpy()
    rows = terms if include_identity else terms[1:]
    return terms, rows.mean(), rows.mean(0).std()


@pytest.mark.parametrize("include_identity", [False, True])
def test_accumulated_equals_functional_on_concatenated_data(include_identity):
    group = ti.get_group("rotation", order=4)
    model = mlp(36, classes=4, dtype=F64, seed=1)
    batches = _data()
    full = torch.cat(batches)
    for metric, fn, options in _metrics(model, group, include_identity=include_identity):
        assert isinstance(metric, Metric)
        metric.set_dtype(F64)  # float64 results (the states are float64 anyway)
        for i, x in enumerate(batches):
            metric.update(x, y=torch.zeros(len(x), dtype=torch.long) if i else None)  # y is ignored
        terms, mean, std = _reference(fn, model, group, full, options, include_identity)
        assert metric.n_samples == 10 and metric.compute_count() == 10
        assert metric.compute().dtype == F64
        np.testing.assert_allclose(metric.compute().item(), mean, rtol=1e-12)
        with torch.no_grad():
            functional = fn(model, group, full, include_identity=include_identity, **options).item()
        np.testing.assert_allclose(metric.compute().item(), functional, rtol=1e-12)
        # per element: every element, identity included, whatever include_identity says
        np.testing.assert_allclose(metric.compute_per_element().numpy(), terms.mean(1), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(metric.compute_std().item(), std, rtol=1e-9)
        np.testing.assert_allclose(metric.compute().item(), mean, rtol=1e-12)  # compute() keeps the states
    # the two conventions differ exactly by the identity's term (0 for DI/LI)
    assert metric.element_names == ["rot0", "rot90", "rot180", "rot270"]


def test_results_are_float32_by_default_sums_float64():
    group = ti.get_group("flip")
    model = mlp(36, classes=4, seed=2)
    batches = [x.float() for x in _data(sizes=(4, 4, 4, 4))]
    metric = ti.LogitInvariance(model, group)
    for x in batches:
        metric.update(x)
    with torch.no_grad():
        # reference: the float32 outputs, their differences in float64 (as li_terms takes them), element by element
        ref = np.concatenate(
            [
                np.stack(
                    [
                        0.5 * ((model(group.act(g, x)).double() - model(x).double()) ** 2).sum(1).numpy()
                        for g in group.elements()
                    ]
                )
                for x in batches
            ],
            1,
        )
    assert metric.compute().dtype == torch.float32 and metric.compute_per_element().dtype == torch.float32
    assert all(v.dtype == F64 for v in metric.metric_state.values())
    np.testing.assert_allclose(metric.compute().item(), ref[1:].mean(), rtol=1e-6)
    assert metric.set_dtype(F64).compute().dtype == F64  # the same sums, float64 results
    np.testing.assert_allclose(metric.compute().item(), ref[1:].mean(), rtol=1e-12)


def test_reset_and_compute_before_update():
    group = ti.get_group("translation", order=3)
    model = mlp(36, dtype=F64)
    a, b = _data(sizes=(4, 3))
    for metric, fn, options in _metrics(model, group):
        metric.update(a)
        metric.reset()
        assert metric.n_samples == 0
        with pytest.raises(RuntimeError, match="before any update"), pytest.warns(UserWarning, match="before"):
            metric.compute()
        metric.update(b)
        with torch.no_grad():
            ref = fn(model, group, b, **options)
        np.testing.assert_allclose(metric.set_dtype(F64).compute().item(), ref.item(), rtol=1e-12)


def test_compute_count_is_zero_before_any_update_and_other_computes_name_themselves():
    """compute_count() counts samples: 0 before any update (it raised 'compute() called before any update()')."""
    group = ti.get_group("rotation", order=4)
    for metric, _, _ in _metrics(mlp(36, dtype=F64), group):
        assert metric.compute_count() == 0
        metric.update(torch.zeros(0, 1, 6, 6, dtype=F64))  # an empty selection adds nothing
        assert metric.compute_count() == 0
        for method in ("compute_per_element", "compute_std"):
            with pytest.raises(RuntimeError, match=rf"\.{method}\(\) called before any update"):
                getattr(metric, method)()
        metric.update(_data(sizes=(3,))[0])
        assert metric.compute_count() == 3


def test_update_from_outputs_equals_update_and_validates():
    group = ti.get_group("rotation", order=4)
    model = mlp(36, classes=4, dtype=F64, seed=3)
    x = _data(sizes=(6,))[0]
    for cls in (ti.DistributionInvariance, ti.LogitInvariance):
        bound, outputs = cls(model, group).set_dtype(F64), cls(model, group).set_dtype(F64)
        bound.update(x)
        bound.compute()  # cached ...
        bound.update(x)  # ... and invalidated by the next update
        with torch.no_grad():
            out = ti.orbit_forward(model, group, x)
        outputs.update_from_outputs(out[0], out)
        assert outputs.compute().item() > 0  # cached ...
        outputs.update_from_outputs(out[0], out)  # ... and invalidated by update_from_outputs too
        torch.testing.assert_close(outputs.compute(), bound.compute(), rtol=1e-12, atol=0)
        assert outputs.update_count == 2
        with pytest.raises(ValueError, match="one row per measured element"):
            outputs.update_from_outputs(out[0], out[:2])
    with pytest.raises(TypeError, match="gradients"):
        ti.SaliencyInvariance(model, group).update_from_outputs(out[0], out)


def test_forward_returns_the_batch_value_and_accumulates():
    group = ti.get_group("rotation", order=2)
    model = mlp(36, classes=4, dtype=F64, seed=4)
    a, b = _data(sizes=(3, 5), seed=2)
    metric = ti.LogitInvariance(model, group).set_dtype(F64)
    with torch.no_grad():
        batch_value = ti.logit_invariance(model, group, a)
        full = ti.logit_invariance(model, group, torch.cat([a, b]))
    torch.testing.assert_close(metric(a), batch_value, rtol=1e-12, atol=0)
    metric(b)
    torch.testing.assert_close(metric.compute(), full, rtol=1e-12, atol=0)


def test_metric_collection_keeps_metrics_apart_even_when_their_states_agree():
    # an exactly invariant model: DI and LI are both 0 after the first batch; torchmetrics' compute groups would
    # merge two metrics with equal states of the same names (our states are named per metric)
    group = ti.get_group("rotation", order=4)
    invariant = OrbitAveraged(mlp(36, classes=4, dtype=F64, seed=5), group)
    plain = mlp(36, classes=4, dtype=F64, seed=6)
    batches = _data(sizes=(3, 4), seed=1)
    collection = MetricCollection(
        {
            "di": ti.DistributionInvariance(invariant, group),
            "li": ti.LogitInvariance(invariant, group),
            "si": ti.SaliencyInvariance(invariant, group, **SI_OPTIONS),
            "li_plain": ti.LogitInvariance(plain, group),
        },
        compute_groups=True,
    )
    for x in batches:
        collection.update(x)
    values = collection.compute()
    assert set(values) == {"di", "li", "si", "li_plain"}
    assert values["di"].item() <= 1e-6 and values["li"].item() <= 1e-6
    assert values["si"].item() >= 1 - 1e-5
    with torch.no_grad():
        ref = ti.logit_invariance(plain, group, torch.cat(batches)).item()
    np.testing.assert_allclose(values["li_plain"].item(), ref, rtol=1e-6)
    assert all(m.n_samples == 7 for m in collection.values())  # every metric saw every batch


def test_to_and_state_dict_hold_the_states_not_the_model():
    group = ti.get_group("rotation", order=4)
    model = mlp(36, classes=4, seed=7)  # float32
    x = _data(sizes=(5,))[0].float()
    metric = ti.LogitInvariance(model, group)
    metric.update(x)
    # .to(dtype) / .to(device): the sums stay float64, the model is not touched
    assert metric.to(torch.float64) is metric and metric.to("cpu") is metric
    assert metric.li_element_sum.dtype == F64 and metric.compute().dtype == F64
    metric.to(torch.float16)
    assert metric.li_element_sum.dtype == F64 and metric.compute().dtype == torch.float16
    metric.set_dtype(torch.float32)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    state = metric.state_dict()
    assert set(state) == {"li_element_sum", "li_sample_sumsq", "li_count"}  # no model weights
    assert state["li_count"].item() == 5 and state["li_element_sum"].shape == (4,)
    restored = ti.LogitInvariance(model, group)
    restored.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compute before update" warning: the restored states hold samples
        torch.testing.assert_close(restored.compute(), metric.compute())
    # inside a parent module the model's weights appear once, under the model, not under the metric
    parent = torch.nn.Module()
    parent.model, parent.metric = model, metric
    keys = set(parent.state_dict())
    assert {"metric.li_count", "model.1.weight"} <= keys and not any(k.startswith("metric.model") for k in keys)
    assert "model" not in dict(metric.named_children())


def test_load_state_dict_of_other_elements_raises_and_keeps_the_states():
    """A checkpoint of a 4-element metric loaded into one over 2 angles: 'All keys matched successfully', then
    compute() failed with '2 averaged-row flags for terms with 4 rows'. Now a size mismatch, as torch reports one."""
    model = mlp(36, classes=4, seed=7)
    four = ti.LogitInvariance(model, ti.get_group("rotation", order=4))
    four.update(_data(sizes=(5,))[0].float())
    two = ti.LogitInvariance(model, ti.get_group("so2"), elements=[0.0, 90.0])
    expected = r"size mismatch for li_element_sum: .* shape \(4,\) from the checkpoint.*rot0', 'rot90'\] is \(2,\)"
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=expected):
            two.load_state_dict(four.state_dict(), strict=strict)
        assert two.li_element_sum.shape == (2,) and two.n_samples == 0  # nothing was loaded
    same = ti.LogitInvariance(model, ti.get_group("rotation", order=4))
    same.load_state_dict(four.state_dict())
    torch.testing.assert_close(same.compute(), four.compute())


def test_compute_after_load_state_dict_or_merge_state_reads_the_new_states():
    """compute() cached before load_state_dict()/merge_state() returned the old value (0.54 instead of 11.4)."""
    model = mlp(36, classes=4, seed=7, dtype=F64)
    group = ti.get_group("rotation", order=4)
    small, large = _data(sizes=(4,))[0], 5 * _data(sizes=(4,), seed=1)[0]
    with torch.no_grad():
        ref_large = ti.logit_invariance(model, group, large).item()
        ref_both = ti.logit_invariance(model, group, torch.cat([small, large])).item()
    other = ti.LogitInvariance(model, group).set_dtype(F64)
    other.update(large)
    loaded, merged = (ti.LogitInvariance(model, group).set_dtype(F64) for _ in range(2))
    for metric in (loaded, merged):
        metric.update(small)
        assert abs(metric.compute().item() - ref_large) > 1.0  # cached: a stale value would differ
    loaded.load_state_dict(other.state_dict())
    np.testing.assert_allclose(loaded.compute().item(), ref_large, rtol=1e-12)
    merged.merge_state(other)
    np.testing.assert_allclose(merged.compute().item(), ref_both, rtol=1e-12)


def test_continuous_group_with_explicit_elements():
    so2 = ti.get_group("so2")
    model = mlp(64, classes=4, dtype=F64, seed=8)
    x = so2.mask_input(torch.randn(4, 1, 8, 8, dtype=F64))
    angles = [0.0, 30.0, 90.0]
    metric = ti.LogitInvariance(model, so2, elements=angles).set_dtype(F64)
    metric.update(x)
    with torch.no_grad():
        terms = ti.logit_invariance(model, so2, x, elements=angles, reduction="none")
    assert metric.element_names == [so2.element_name(a) for a in angles]
    np.testing.assert_allclose(metric.compute_per_element().numpy(), terms.mean(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(metric.compute().item(), terms[1:].mean().item(), rtol=1e-12)  # 0 deg = identity
    with pytest.raises(ValueError, match="continuous"):
        ti.LogitInvariance(model, so2)


def test_validation():
    metric = ti.LogitInvariance(mlp(36, dtype=F64), ti.get_group("rotation", order=4))
    with pytest.raises(ValueError, match="square"):
        metric.update(torch.randn(2, 1, 6, 4, dtype=F64))
    with pytest.raises(TypeError, match="Group"):
        ti.DistributionInvariance(mlp(36), "rotation")
    with pytest.raises(ValueError, match="threshold"):
        ti.SaliencyInvariance(mlp(36), ti.get_group("flip"), threshold=2.0)
    with pytest.raises(TypeError, match="include_identity"):
        ti.LogitInvariance(mlp(36), ti.get_group("flip"), include_identity="yes")
    with pytest.raises(ValueError, match="only the identity"):
        ti.LogitInvariance(mlp(36), ti.get_group("flip"), elements=[0])
    with pytest.raises(ValueError, match="Unexpected keyword"):
        ti.LogitInvariance(mlp(36), ti.get_group("flip"), sync_dist=False)  # torchmetrics' sync_on_compute instead
    with pytest.raises(ValueError, match=r"shaped \(4, batch\)"):
        metric.update_terms(torch.zeros(3, 2))
    assert "n_samples=0" in repr(metric)


# ----------------------------------------------------------------------------- DDP through torchmetrics
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, batches, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = mlp(36, classes=4, dtype=F64, seed=1)
        group = ti.get_group("rotation", order=4)
        res = {}
        for metric, _, options in _metrics(model, group):
            metric.set_dtype(F64)
            for x in batches[rank::world]:
                metric.update(x)
            res[type(metric).__name__] = (
                metric.n_samples,
                metric.compute().item(),
                metric.compute_per_element().tolist(),
                metric.compute_std().item(),
                metric.compute_count(),
                metric.compute().item(),  # twice: no double counting
                metric.n_samples,  # the local states are back after the sync
            )
            local = type(metric)(model, group, sync_on_compute=False, **options).set_dtype(F64)
            for x in batches[rank::world]:
                local.update(x)
            res[type(metric).__name__ + "-local"] = local.compute().item()
        out[rank] = res
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_gloo_synced_by_torchmetrics():
    batches = _data(sizes=(3, 5, 2, 4), seed=3)
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), batches, out), nprocs=2, join=True)
    model = mlp(36, classes=4, dtype=F64, seed=1)
    group = ti.get_group("rotation", order=4)
    full = torch.cat(batches)
    rank0 = torch.cat(batches[0::2])
    for metric, fn, options in _metrics(model, group):
        name = type(metric).__name__
        terms, mean, std = _reference(fn, model, group, full, options, include_identity=False)
        with torch.no_grad():
            local = fn(model, group, rank0, **options).item()
        for rank in (0, 1):
            n, value, per_element, sd, count, again, n_after = out[rank][name]
            assert n == n_after == (5 if rank == 0 else 9)  # n_samples is this process's count
            assert count == 14
            np.testing.assert_allclose(value, mean, rtol=1e-12)
            np.testing.assert_allclose(again, value, rtol=0)
            np.testing.assert_allclose(per_element, terms.mean(1), rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(sd, std, rtol=1e-9)
        np.testing.assert_allclose(out[0][name + "-local"], local, rtol=1e-12)


# ----------------------------------------------------------------------------- the reference row (issue 22 item 2)
@pytest.mark.parametrize("cls", [ti.DistributionInvariance, ti.LogitInvariance, ti.SaliencyInvariance])
def test_a_group_listing_the_identity_elsewhere_is_rejected_by_the_classes(cls):
    with pytest.raises(ValueError, match=r"must list the identity g0 first .*; it starts with g1"):
        cls(mlp(16), Listed([1, 2, 3, 0]))
    metric = cls(mlp(16), Listed([1, 2, 3, 0]), elements=[1, 2, 3, 0])  # explicit elements: f(x) is the reference
    metric.update(torch.randn(2, 1, 4, 4))
    assert metric.element_names == ["g1", "g2", "g3", "g0"]
    assert float(metric.compute_per_element()[3]) == pytest.approx(
        1.0 if cls is ti.SaliencyInvariance else 0.0, abs=1e-6
    )


# ----------------------------------------------------------------------------- merge_state (issue 22 item 5)
@pytest.mark.parametrize("cls", [ti.DistributionInvariance, ti.LogitInvariance])
def test_merge_state_needs_the_same_group_and_elements(cls):
    model = mlp(16, dtype=F64)
    rot, flip = ti.get_group("rotation", order=4), ti.get_group("flip")
    x1, x2 = torch.randn(3, 1, 4, 4, dtype=F64), torch.randn(5, 1, 4, 4, dtype=F64)
    a = cls(model, rot, elements=[0, 1])
    a.update(x1)
    others = {
        "flip": cls(model, flip),  # two elements too: the states have the same shapes
        "flip y": cls(model, ti.get_group("flip", axis="y")),
        "other elements": cls(model, rot, elements=[0, 3]),
        "include_identity": cls(model, rot, elements=[0, 1], include_identity=True),
        "rotation order 2": cls(model, ti.get_group("rotation", order=2)),
    }
    for what, other in others.items():
        other.update(x2)
        with pytest.raises(ValueError, match=r"cannot merge .* over .* with one over "):
            a.merge_state(other)
        assert a.n_samples == 3, what  # nothing was added
    with pytest.raises(ValueError, match=r"Rotation\(order=4\) elements \['rot0', 'rot90'\].*Flip\(axis='x'\)"):
        a.merge_state(others["flip"])
    with pytest.raises(ValueError, match=r"the incoming state '.*_element_sum' has shape \(4,\), expected \(2,\)"):
        a.merge_state({f"{a._prefix}_element_sum": torch.zeros(4, dtype=F64)})
    # the same group (another instance) and elements merge, and equal one metric over both batches
    b = cls(model, ti.get_group("rotation", order=4), elements=[0, 1])
    b.update(x2)
    a.merge_state(b)
    both = cls(model, rot, elements=[0, 1])
    both.update(torch.cat([x1, x2]))
    assert a.n_samples == 8
    torch.testing.assert_close(a.compute_per_element(), both.compute_per_element(), rtol=1e-12, atol=1e-15)


def test_merge_state_of_saliency_needs_the_same_options():
    model, rot = mlp(16), ti.get_group("rotation", order=2)
    a, b = ti.SaliencyInvariance(model, rot, n_steps=4), ti.SaliencyInvariance(model, rot, n_steps=8)
    with pytest.raises(ValueError, match="same options"):
        a.merge_state(b)
    a.merge_state(ti.SaliencyInvariance(model, rot, n_steps=4))


# ----------------------------------------------------------------------------- empty batches (issue 22 item 20)
@pytest.mark.parametrize("cls", [ti.DistributionInvariance, ti.LogitInvariance, ti.SaliencyInvariance])
def test_update_on_an_empty_selection_adds_nothing_like_update_terms(cls):
    model, rot = mlp(16, dtype=F64), ti.get_group("rotation", order=4)
    x = torch.randn(6, 1, 4, 4, dtype=F64)
    keep = torch.tensor([True, False, True, False, False, True])
    options = {"n_steps": 4} if cls is ti.SaliencyInvariance else {}
    metric = cls(model, rot, **options)
    metric.update_terms(torch.zeros(4, 0, dtype=F64))  # the reference behaviour: an empty batch of terms
    metric.update(x[torch.zeros(6, dtype=torch.bool)])  # an empty selection: a no-op too
    assert metric.n_samples == 0
    metric.update(x[keep])
    metric.update(x[torch.zeros(6, dtype=torch.bool)])
    reference = cls(model, rot, **options)
    reference.update(x[keep])
    assert metric.n_samples == 3
    torch.testing.assert_close(metric.compute_per_element(), reference.compute_per_element(), rtol=0, atol=0)
    # an empty tensor of the wrong shape is still an error
    with pytest.raises(ValueError):
        metric.update(torch.zeros(0, 1, 4, 5, dtype=F64))
    with pytest.raises(ValueError):
        metric.update(torch.zeros(0))


def test_logit_invariance_of_logits_near_1e20_is_finite_in_float64():
    """Issue 22 item 10: the terms were squared in float32 before reaching the float64 states: inf."""
    flip = ti.get_group("flip")
    x = torch.zeros(4, 1, 4, 4)
    x[..., 0] = 1.0
    model = lambda z: 1e20 * (z[:, 0, :, :1] - z[:, 0, :, -1:]).sum(1)  # noqa: E731  float32, sign flips
    metric = ti.LogitInvariance(model, flip).set_dtype(F64)
    metric.update(x)
    metric.update_from_outputs(model(x), torch.stack([model(x), model(flip.act(1, x))]))
    # reference, per element and sample in float64: 0.5 * (4e20)^2 for the flip, 0 for the identity
    ref = 0.5 * (float(model(x)[0, 0]) - float(model(flip.act(1, x))[0, 0])) ** 2
    assert metric.compute().dtype == F64
    np.testing.assert_allclose(metric.compute().item(), ref, rtol=1e-12)
    np.testing.assert_allclose(metric.compute_per_element().numpy(), [0.0, ref], rtol=1e-12)
    assert torch.isinf(ti.LogitInvariance(model, flip).forward(x))  # float32 results: beyond float32's range


# ----------------------------------------------------------------------------- elements=k / lists (issue 20 items 1, 4)
def _loop_terms(model, group, x, elements):
    """An explicit per-element, per-sample loop in float64: the LI and DI terms of every element (n, B)."""
    li, di = [], []
    with torch.no_grad():
        fx = model(x)
        for g in elements:
            fgx = model(group.act(g, x))
            li.append([0.5 * float(((fx[b] - fgx[b]) ** 2).sum()) for b in range(x.shape[0])])
            p, q = torch.softmax(fx, -1), torch.softmax(fgx, -1)
            di.append([float((p[b] * (p[b].log() - q[b].log())).sum()) for b in range(x.shape[0])])
    return np.array(li), np.array(di)


@pytest.mark.parametrize("spec", [("so2", {}), ("scale", {}), ("rotation", {"order": 4}), ("dihedral", {})])
def test_elements_k_draws_once_with_the_seed_and_matches_a_per_element_loop(spec):
    group = ti.get_group(spec[0], **spec[1])
    model = mlp(36, classes=4, dtype=F64, seed=3)
    k = 2
    li = ti.LogitInvariance(model, group, elements=k, seed=5)
    di = ti.DistributionInvariance(model, group, elements=k, seed=5)
    els = li.elements
    assert len(els) == k and di.elements == els  # the same (k, seed): the same elements
    assert ti.LogitInvariance(model, group, elements=k, seed=6).elements != els
    if group.is_finite:  # k distinct non-identity elements, in the listing's order
        listing = list(group.elements())
        assert len(set(els)) == k and group.identity not in els and els == sorted(els, key=listing.index)
    else:  # group.sample(k) of a generator seeded with the seed, sorted by value
        assert els == sorted(group.sample(k, generator=torch.Generator().manual_seed(5)))
    assert li.element_names == [group.element_name(g) for g in els]
    batches = _data()
    for x in batches:
        li.update(x)
        di.update(x)
    x = torch.cat(batches)
    li_ref, di_ref = _loop_terms(model, group, x, els)
    for metric, ref in ((li, li_ref), (di, di_ref)):
        np.testing.assert_allclose(metric.set_dtype(F64).compute_per_element().numpy(), ref.mean(1), rtol=1e-10)
        np.testing.assert_allclose(metric.compute().item(), ref.mean(), rtol=1e-10)  # no identity drawn: all rows
    assert li_ref.min() > 1e-8  # the model is not invariant: a wrong row would be seen


def test_explicit_continuous_elements_match_a_per_element_loop_with_the_identity_left_out_of_the_mean():
    so2 = ti.get_group("so2")
    model = mlp(36, classes=4, dtype=F64, seed=1)
    angles = [0.0, 30.0, 45.0, 90.0, 200.0]
    metric = ti.LogitInvariance(model, so2, elements=angles).set_dtype(F64)
    x = torch.cat(_data())
    metric.update(x)
    ref, _ = _loop_terms(model, so2, x, angles)
    np.testing.assert_allclose(metric.compute_per_element().numpy(), ref.mean(1), rtol=1e-10, atol=1e-300)
    assert ref[0].max() == 0.0
    np.testing.assert_allclose(metric.compute().item(), ref[1:].mean(), rtol=1e-10)
    assert ref[1:].min() > 1e-8  # the model is not invariant: a wrong row would be seen


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
        ({"chunk_size": True}, ValueError, "chunk_size must be a positive int"),
        ({"eval_mode": "no"}, TypeError, "eval_mode must be True"),
        ({"elements": 0}, ValueError, "needs k >= 1"),
        ({"elements": 1.5}, TypeError, "elements must be None"),
        ({"elements": True}, TypeError, "elements must be None"),
        ({"elements": 4}, ValueError, "only 3"),  # rotation order 4: 3 non-identity elements
        ({"elements": [7]}, ValueError, "elements 0..3"),
        ({"elements": 2, "seed": -1}, ValueError, "seed must be an int"),
        ({"elements": 2, "seed": "0"}, ValueError, "seed must be an int"),
    ],
)
@pytest.mark.parametrize("cls", [ti.DistributionInvariance, ti.LogitInvariance, ti.SaliencyInvariance])
def test_metric_classes_reject_bad_arguments_when_built(cls, kwargs, error, match):
    model = mlp(36)
    with pytest.raises(error, match=match):
        cls(model, ti.get_group("rotation", order=4), **kwargs)


def test_metric_classes_reject_continuous_groups_without_elements_and_bad_configs_when_built():
    model = mlp(36)
    for cls in (ti.DistributionInvariance, ti.LogitInvariance, ti.SaliencyInvariance):
        with pytest.raises(ValueError, match="continuous: pass elements="):
            cls(model, ti.get_group("so2"))
        with pytest.raises(ValueError, match="real-number elements"):
            cls(model, ti.get_group("so2"), elements=[float("nan")])
    with pytest.raises(TypeError, match="config must be a SaliencyConfig"):
        ti.SaliencyInvariance(model, ti.get_group("flip"), config={"n_steps": 4})
