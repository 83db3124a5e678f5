r"""Which symmetries has a model learned? The LieGG construction for the 2-D affine transformations of images.

LieGG (Moskalev et al., NeurIPS 2022, "LieGG: Studying Learned Lie Group Generators") reads the learned
infinitesimal invariances off a trained network: a model :math:`f` is invariant along a generator :math:`A` of the
affine group when its Lie derivative :math:`L_A f(x) = \tfrac{d}{dt} f(e^{tA} \cdot x)|_{t=0}` vanishes on the data.
That derivative is linear in the six entries of :math:`A`, so stacking it over samples and outputs gives a matrix
whose right singular vectors are candidate generators and whose singular values (the "symmetry variance") say how
far the model is from invariant along each of them.

The coordinates are centred and isotropic: :math:`u` runs along the width (the last dimension), :math:`v` along the
height (downwards), in units where the shorter side spans :math:`[-1, 1]`; pixel centres sit where
:func:`torch.nn.functional.affine_grid` puts them (``align_corners=False``), so for square images they are exactly
that function's coordinates.

This module stands on the orbit primitive's model handling only (:func:`~torchinvariance.orbit.measuring`,
:func:`~torchinvariance.orbit.model_output`); it knows nothing of losses or metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

import torchinvariance._mpl as _mpl
from torchinvariance._checks import check_model
from torchinvariance.orbit import measuring, model_output

__all__ = ["REFERENCE_GENERATORS", "SymmetrySpectrum", "affine_coordinates", "discover_symmetries"]

Stencil = Literal["central", "central4"]
_STENCILS = ("central", "central4")

_SQRT1_2 = 1.0 / math.sqrt(2.0)

#: The reference generators, each a unit-norm ``(2, 3)`` affine matrix ``[M | t]`` acting on ``(u, v, 1)``; the
#: distances of :class:`SymmetrySpectrum` are measured to them (``"translation"`` is the plane of both shifts).
REFERENCE_GENERATORS: dict[str, Tensor] = {
    "rotation": torch.tensor([[0.0, -_SQRT1_2, 0.0], [_SQRT1_2, 0.0, 0.0]], dtype=torch.float64),
    "scaling": torch.tensor([[_SQRT1_2, 0.0, 0.0], [0.0, _SQRT1_2, 0.0]], dtype=torch.float64),
    "translation_u": torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64),
    "translation_v": torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64),
}


@dataclass(frozen=True)
class SymmetrySpectrum:
    r"""What :func:`discover_symmetries` found: six candidate generators, from the most invariant one on.

    Attributes:
        singular_values: ``(6,)`` float64, ascending: the root mean square over samples and outputs of the Lie
            derivative along each (unit-norm) generator, the "symmetry variance"; small means the model is nearly
            invariant along that generator.
        generators: ``(6, 2, 3)`` float64, the unit-norm generators ``[M | t]`` (acting on ``(u, v, 1)``) in the
            order of ``singular_values``; each is defined up to its sign.
        distances: for each of ``"rotation"``, ``"scaling"``, ``"translation_u"``, ``"translation_v"`` and
            ``"translation"`` (the plane of both shifts), a ``(6,)`` float64 tensor: the Frobenius distance of each
            generator to the nearest unit-norm reference of that name, up to sign, in :math:`[0, \sqrt 2]`.
        lie_derivatives: ``(B, K, 6)`` float64, for each sample and output the Lie derivative along the six basis
            generators :math:`E_{ij}` (row-major entries of ``[M | t]``): the rows of the matrix that was decomposed.
    """

    singular_values: Tensor
    generators: Tensor
    distances: dict[str, Tensor]
    lie_derivatives: Tensor

    def nearest(self) -> list[tuple[str, float]]:
        """For each generator, the nearest of ``"rotation"``, ``"scaling"``, ``"translation"`` and its distance."""
        names = ("rotation", "scaling", "translation")
        table = torch.stack([self.distances[n] for n in names])
        best = table.argmin(0)
        return [(names[int(i)], float(table[int(i), k])) for k, i in enumerate(best)]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists (for JSON reports)."""
        return {
            "singular_values": self.singular_values.tolist(),
            "generators": self.generators.tolist(),
            "distances": {k: v.tolist() for k, v in self.distances.items()},
        }

    @classmethod
    def from_lie_derivatives(cls, lie: Tensor) -> SymmetrySpectrum:
        r"""The spectrum of stacked Lie derivative rows, e.g. the ``lie_derivatives`` of several batches.

        .. math::
            C = \begin{bmatrix} C^{(1)} \\ C^{(2)} \\ \vdots \end{bmatrix}, \qquad
            \frac{C}{\sqrt{\#\text{rows}}} = U\, \Sigma\, V^\top

        :func:`discover_symmetries` computes the rows of each sample alone, so the spectrum of batches
        concatenated here is that of one call on all of their samples.

        Args:
            lie: ``(B, K, 6)`` rows (``torch.cat`` of the ``lie_derivatives`` of several spectra along dim 0).

        Returns:
            The :class:`SymmetrySpectrum` of all rows.

        Raises:
            ValueError: ``lie`` is not a non-empty ``(B, K, 6)`` floating point tensor, or holds NaN or inf.

        Example:
            >>> import torch, torchinvariance as ti
            >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
            >>> x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
            >>> model = model.double()
            >>> parts = [ti.discover_symmetries(model, x[:2]), ti.discover_symmetries(model, x[2:])]
            >>> whole = ti.SymmetrySpectrum.from_lie_derivatives(torch.cat([p.lie_derivatives for p in parts]))
            >>> torch.allclose(whole.singular_values, ti.discover_symmetries(model, x).singular_values)
            True
        """
        if not isinstance(lie, Tensor) or lie.dim() != 3 or lie.shape[-1] != 6 or not lie.is_floating_point():
            got = f"shape {tuple(lie.shape)} {lie.dtype}" if isinstance(lie, Tensor) else type(lie).__name__
            raise ValueError(f"lie must be a floating point tensor of Lie derivative rows (B, K, 6); got {got}")
        if lie.shape[0] * lie.shape[1] == 0:
            raise ValueError(f"lie has no rows: shape {tuple(lie.shape)}")
        return _spectrum(lie.to(torch.float64))

    def plot(self, *, relative: bool = False, log: bool | None = None, ax: Any = None, title: str | None = None) -> Any:
        """A bar chart of the six singular values, labelled by the nearest named generator.

        The same as :func:`torchinvariance.plot.symmetry_spectrum` of this spectrum (see there for the options);
        needs matplotlib (``pip install "torchinvariance[plot]"``).

        Returns:
            A :class:`matplotlib.figure.Figure`.
        """
        return draw_spectrum(self, relative=relative, log=log, ax=ax, title=title)


def affine_coordinates(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    r"""The centred pixel coordinates ``(u, v)``, each ``(height, width)``, that :func:`discover_symmetries` uses.

    .. math::
        u_j = \frac{2}{\min(H, W)}\Bigl(j + \tfrac12 - \tfrac W2\Bigr), \qquad
        v_i = \frac{2}{\min(H, W)}\Bigl(i + \tfrac12 - \tfrac H2\Bigr)

    Example:
        >>> import torchinvariance as ti
        >>> u, v = ti.symmetry.affine_coordinates(2, 4)
        >>> u[0].tolist(), v[:, 0].tolist()
        ([-1.5, -0.5, 0.5, 1.5], [-0.5, 0.5])
    """
    step = 2.0 / min(height, width)
    u = (torch.arange(width, device=device, dtype=torch.float64) + 0.5 - width / 2) * step
    v = (torch.arange(height, device=device, dtype=torch.float64) + 0.5 - height / 2) * step
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return uu.to(dtype), vv.to(dtype)


def _derivative(x: Tensor, step: float, dim: int, stencil: str) -> Tensor:
    """``dx/d(coordinate)`` along ``dim``: central differences inside, one-sided at the border."""
    d = torch.gradient(x, spacing=step, dim=dim, edge_order=1)[0]
    if stencil == "central4" and x.shape[dim] >= 5:
        n = x.shape[dim]

        def part(lo: int) -> Tensor:
            return x.narrow(dim, lo, n - 4)

        inner = (-part(4) + 8 * part(3) - 8 * part(1) + part(0)) / (12 * step)
        d = d.clone()
        d.narrow(dim, 2, n - 4).copy_(inner)
    return d


def _check_args(model: Any, x: Any, stencil: str, image_gradients: Any) -> None:
    check_model(model)
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor batch of images (B, ..., H, W), got {type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 3 or x.shape[0] == 0 or min(x.shape[-2:]) < 2:
        raise ValueError(
            f"x must be a non-empty floating point batch of images (B, ..., H, W) with H, W >= 2; got shape "
            f"{tuple(x.shape)} and dtype {x.dtype}"
        )
    if stencil not in _STENCILS:
        raise ValueError(f"stencil must be one of {_STENCILS}, got {stencil!r}")
    if image_gradients is not None:
        if (
            not isinstance(image_gradients, (tuple, list))
            or len(image_gradients) != 2
            or not all(isinstance(g, Tensor) and g.shape == x.shape for g in image_gradients)
        ):
            raise ValueError(f"image_gradients must be a pair (du, dv) of tensors of x's shape {tuple(x.shape)}")


def discover_symmetries(
    model: Callable[[Tensor], Any],
    x: Tensor,
    *,
    stencil: Stencil = "central",
    image_gradients: tuple[Tensor, Tensor] | None = None,
    eval_mode: bool = True,
) -> SymmetrySpectrum:
    r"""The affine generators a model is (nearly) invariant along, with their symmetry variance (LieGG).

    An affine generator :math:`A = [M \mid t]` moves the coordinates :math:`p = (u, v)` along :math:`Ap + t`, and
    the image along :math:`(e^{sA} \cdot x)(p) = x(e^{-sA} p)`. For each sample :math:`b` and output :math:`k`,
    the Lie derivative of the model along :math:`A` is linear in the six entries :math:`A_{ij}` of ``[M | t]``:

    .. math::
        L_A f_k(x_b) = \frac{d}{ds} f_k(e^{sA} \cdot x_b)\Big|_{s=0}
        = \sum_{ij} A_{ij}\, C_{bk,ij}, \qquad
        C_{bk,ij} = -\sum_{\text{pixels } p} \frac{\partial f_k}{\partial x_b(p)}\,
        \frac{\partial x_b}{\partial p_i}(p)\; \tilde p_j,

    with :math:`\tilde p = (u, v, 1)` and a sum over the channels too. The rows :math:`C_{bk}` over all samples and
    outputs form the matrix :math:`C` (``(B K, 6)``); the singular value decomposition of :math:`C / \sqrt{B K}`
    gives the generators (right singular vectors, as ``(2, 3)`` matrices) and their singular values, the root mean
    square of :math:`L_A f` for unit-norm :math:`A`. A zero singular value is an exact infinitesimal invariance on
    these inputs.

    The input gradients :math:`\partial f_k / \partial x` come from autograd, in the dtype of ``x`` (pass a float64
    model and ``x`` for an analysis that is exact in float64); the image gradients (finite differences in the
    coordinates of :func:`~torchinvariance.symmetry.affine_coordinates`), the products, sums and the decomposition
    are in float64. Inputs that are smooth and fall to zero towards the border give the most faithful image
    gradients; the discretization error of the default 3-point stencil falls as the square of the pixel size, that
    of ``"central4"`` as its fourth power.

    Args:
        model: a callable mapping ``(B, ..., H, W)`` to ``(B, ...)`` outputs (logits); every output is a row.
        x: a batch of images ``(B, H, W)`` or ``(B, C, H, W)`` (any dims between the batch and the image).
        stencil: the finite-difference image gradient: ``"central"`` (3 points) or ``"central4"`` (5 points,
            fourth order inside, 3 points next to the border); one-sided at the border either way.
        image_gradients: the exact ``(dx/du, dx/dv)``, each of ``x``'s shape, for inputs known analytically;
            replaces the finite differences.
        eval_mode: measure in eval mode (default), as every metric does; ``False`` keeps the model's modes.

    Returns:
        The :class:`SymmetrySpectrum`: singular values (ascending), generators, their distances to the rotation,
        scaling and translation generators of
        :data:`~torchinvariance.symmetry.REFERENCE_GENERATORS`, and the per-sample rows.

    Raises:
        TypeError: ``model`` is not callable or ``x`` is not a tensor.
        ValueError: ``x`` is not a non-empty floating point batch of images, a bad ``stencil`` or
            ``image_gradients``, a model output without one row per sample, not floating point, not finite or
            not depending on ``x`` through autograd, or a non-finite ``x``.

    Example:
        A model that sees only the mean intensity of rings around the centre is invariant to rotations; its most
        invariant generator is the rotation generator:

        >>> import torch, torchinvariance as ti
        >>> u, v = ti.symmetry.affine_coordinates(32, 32)
        >>> r = (u**2 + v**2).sqrt()
        >>> rings = torch.stack([torch.exp(-((r - c) ** 2) / 0.02) for c in (0.2, 0.4, 0.6)]) / 256
        >>> model = lambda x: torch.tanh((x[:, None] * rings).sum((-2, -1)))
        >>> centres = [(0.2, 0.1), (-0.3, 0.2), (0.0, -0.4)]
        >>> x = torch.stack([torch.exp(-((u - a) ** 2 + (v - b) ** 2) / 0.05) for a, b in centres])
        >>> spectrum = ti.discover_symmetries(model, x)
        >>> spectrum.nearest()[0][0], round(spectrum.distances["rotation"][0].item(), 3)
        ('rotation', 0.01)
        >>> round(ti.discover_symmetries(model, x, stencil="central4").distances["rotation"][0].item(), 3)
        0.001
    """
    _check_args(model, x, stencil, image_gradients)
    height, width = x.shape[-2:]
    u, v = affine_coordinates(height, width, device=x.device)
    step = 2.0 / min(height, width)
    x64 = x.detach().to(torch.float64)
    if image_gradients is None:
        du, dv = _derivative(x64, step, -1, stencil), _derivative(x64, step, -2, stencil)
    else:
        du, dv = (g.detach().to(device=x.device, dtype=torch.float64) for g in image_gradients)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or inf values: the image gradients and the Lie derivatives need finite inputs")
    inp = x.detach().clone().requires_grad_(True)
    with measuring(model, eval_mode), torch.enable_grad():
        out = model_output(model(inp), x.shape[0])
        out = out.reshape(x.shape[0], -1)
        _check_differentiable(out)
        rows = []
        for k in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, k].sum(), inp, retain_graph=k + 1 < out.shape[1], allow_unused=True)
            if grad is None:  # this output has a graph, but not through x: it does not change with x at all
                grad = torch.zeros_like(inp)
            g = grad.to(torch.float64)
            gu = (g * du).flatten(1, -3).sum(1) if x.dim() > 3 else g * du  # (B, H, W), channels summed
            gv = (g * dv).flatten(1, -3).sum(1) if x.dim() > 3 else g * dv
            comps = [gu * u, gu * v, gu, gv * u, gv * v, gv]
            rows.append(-torch.stack([c.sum((-2, -1)) for c in comps], dim=-1))
    lie = torch.stack(rows, dim=1)  # (B, K, 6)
    return _spectrum(lie)


def _check_differentiable(out: Tensor) -> None:
    """Raise unless the outputs are finite floating point values that autograd can differentiate with respect to x."""
    if not out.is_floating_point():
        raise ValueError(
            f"discover_symmetries differentiates the model's outputs with respect to x, so they must be floating "
            f"point; got {out.dtype} outputs"
        )
    if not out.requires_grad:
        raise ValueError(
            "the model's output does not depend on x through autograd (it has no grad_fn): discover_symmetries "
            "needs the input gradients d f / d x. Is the model run under torch.no_grad(), does it detach its input "
            "or compute outside torch (numpy)? A model whose output does not depend on its input at all is invariant "
            "along every generator"
        )
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        rows = int(bad.any(1).sum())
        raise ValueError(
            f"the model returned NaN or inf outputs on {rows} of the {out.shape[0]} samples of x: their Lie "
            "derivatives cannot be taken. Check the model and the inputs"
        )


def _spectrum(lie: Tensor) -> SymmetrySpectrum:
    if not bool(torch.isfinite(lie).all()):
        bad = int((~torch.isfinite(lie)).flatten(1).any(1).sum())
        raise ValueError(
            f"the Lie derivative rows of {bad} of the {lie.shape[0]} samples hold NaN or inf values (non-finite input "
            "gradients of the model, or non-finite image_gradients): the spectrum needs finite rows"
        )
    mat = lie.reshape(-1, 6)
    n = mat.shape[0]
    _, s, vh = torch.linalg.svd(mat / math.sqrt(n), full_matrices=True)
    s = torch.cat([s, s.new_zeros(6 - s.numel())])  # fewer rows than 6: the rest of the basis is exactly invariant
    order = torch.arange(5, -1, -1, device=s.device)  # svd sorts descending; most invariant first
    s, vh = s[order], vh[order]
    refs = {k: r.to(vh.device).reshape(6) for k, r in REFERENCE_GENERATORS.items()}

    def dist(cos: Tensor) -> Tensor:
        return (2.0 - 2.0 * cos.abs().clamp(max=1.0)).clamp_min(0.0).sqrt()

    distances = {k: dist(vh @ r) for k, r in refs.items()}
    plane = torch.stack([refs["translation_u"], refs["translation_v"]])  # orthonormal rows
    distances["translation"] = dist((vh @ plane.T).norm(dim=1))
    return SymmetrySpectrum(singular_values=s, generators=vh.reshape(6, 2, 3), distances=distances, lie_derivatives=lie)


_SHORT = {"rotation": "rotation", "scaling": "scaling", "translation": "shift"}


def draw_spectrum(
    spectra: Any, *, relative: bool = False, log: bool | None = None, ax: Any = None, title: str | None = None
) -> Any:
    """Bars of the singular values of one spectrum or ``{label: spectrum}`` (see ``plot.symmetry_spectrum``)."""
    if isinstance(spectra, SymmetrySpectrum):
        named, single = {"": spectra}, True
    elif isinstance(spectra, Mapping) and spectra:
        named, single = dict(spectra), False
        bad = {str(k): type(v).__name__ for k, v in named.items() if not isinstance(v, SymmetrySpectrum)}
        if bad:
            raise TypeError(
                "symmetry_spectrum draws SymmetrySpectrum results (ti.discover_symmetries), one or "
                f"{{label: spectrum}}; got {bad}"
            )
    else:
        what = "an empty mapping" if isinstance(spectra, Mapping) else type(spectra).__name__
        raise TypeError(
            "symmetry_spectrum draws a SymmetrySpectrum (ti.discover_symmetries) or a non-empty "
            f"{{label: SymmetrySpectrum}}; got {what}"
        )
    if not isinstance(relative, bool) or (log is not None and not isinstance(log, bool)):
        raise TypeError(f"relative must be a bool and log a bool or None; got {relative!r} and {log!r}")
    values = {}
    for label, spec in named.items():
        s = spec.singular_values.detach().to(torch.float64).cpu()
        top = float(s.max())
        values[label] = (s / top if relative and top > 0 else s).tolist()
    flat = [v for vs in values.values() for v in vs]
    use_log = all(v > 0 for v in flat) if log is None else log
    if use_log and not all(v > 0 for v in flat):
        raise ValueError(
            "log=True needs positive singular values; got "
            f"{min(flat):.3g} (an exactly invariant direction is 0: pass log=None or False)"
        )
    if ax is None:
        _, axes = _mpl.new_figure(1, 1, figsize=(6.0, 3.8 + (0.18 * len(named) if not single else 0.3)))
        ax = axes[0, 0]
    n = len(named)
    width = 0.8 / n
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:gray", "tab:olive"]
    for k, (label, spec) in enumerate(named.items()):
        near = spec.nearest()
        name, dist = near[0]
        legend = f"{label}: s1 ~ {_SHORT[name]} (d={dist:.2f})" if not single else None
        ax.bar(
            [i - 0.4 + width * (k + 0.5) for i in range(6)],
            values[label],
            width=width,
            color=palette[k % len(palette)],
            label=legend,
        )
    if single:
        near = next(iter(named.values())).nearest()
        ticks = [f"s{i + 1}\n{_SHORT[nm]}\nd={d:.2f}" for i, (nm, d) in enumerate(near)]
        ax.set_xlabel("generator, most invariant first: nearest named one and its distance d")
    else:
        ticks = [f"s{i + 1}" for i in range(6)]
        ax.set_xlabel("generator, most invariant first")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(n, 2), frameon=False)
    ax.set_xticks(range(6), ticks, fontsize=8)
    if use_log:
        ax.set_yscale("log")
        _mpl.plain_log_ticks(ax.yaxis)
    ax.set_ylabel("symmetry variance / largest" if relative else "symmetry variance (rms Lie derivative)")
    ax.set_title(title or "LieGG symmetry spectrum (small = invariant)", fontsize=10)
    return ax.figure
