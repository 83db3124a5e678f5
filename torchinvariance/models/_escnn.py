r"""The weight-tying baseline built with escnn (optional extra ``torchinvariance[escnn]``).

escnn is imported only when :class:`EscnnInvariantMLP` is constructed: ``import torchinvariance`` never imports it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchinvariance.models._mlp import check_batch, check_in_shape, check_positive_int, hidden_layers

__all__ = ["ESCNN_INSTALL_HINT", "EscnnInvariantMLP"]

ESCNN_INSTALL_HINT = (
    'EscnnInvariantMLP needs the optional escnn extra: pip install "torchinvariance[escnn]". '
    "Note: escnn depends on py3nj, which is compiled with a Fortran compiler (install gfortran first, e.g. "
    "`apt-get install gfortran`), and on lie-learn, which pins numpy<2."
)
_ORDERS = (2, 4)


def _import_escnn() -> tuple[Any, Any, ModuleType]:
    """Import escnn lazily; raise :class:`ImportError` with the install hint when it is missing."""
    try:
        import escnn.group._numerical as numerical
        from escnn import gspaces
        from escnn import nn as enn
    except ImportError as exc:
        raise ImportError(f"{ESCNN_INSTALL_HINT} (import failed: {exc})") from exc
    return gspaces, enn, numerical


@contextlib.contextmanager
def _dense_svd(numerical: ModuleType) -> Iterator[None]:
    """Make escnn use SciPy's dense SVD while it builds kernel bases.

    escnn 1.0.x passes an ``np.matrix`` to scikit-learn's ``randomized_svd`` when scikit-learn is importable, which
    scikit-learn >= 1.2 rejects with ``TypeError: np.matrix is not supported`` (escnn issue #112); this breaks every
    ``flipRot2dOnR2`` basis. escnn falls back to ``scipy.linalg.svd`` (exact, what it uses without scikit-learn)
    when ``randomized_svd`` is ``None``, so we set it to ``None`` during construction and restore it afterwards.
    """
    if not hasattr(numerical, "randomized_svd"):
        yield
        return
    saved = numerical.randomized_svd
    numerical.randomized_svd = None
    try:
        yield
    finally:
        numerical.randomized_svd = saved


class _SteerableTiedLayer(nn.Module):
    r"""escnn ``R2Conv`` with a whole-image kernel (a fully connected layer), ReLU and group pooling.

    Input ``(B, C, S, S)`` (``C`` trivial fields), output ``(B, fields)`` invariant features.
    """

    def __init__(self, order: int, dihedral: bool, in_shape: tuple[int, int, int], fields: int, exact: bool) -> None:
        super().__init__()
        gspaces, enn, numerical = _import_escnn()
        channels, size = in_shape[0], in_shape[-1]
        with _dense_svd(numerical):
            gspace = gspaces.flipRot2dOnR2(N=order) if dihedral else gspaces.rot2dOnR2(N=order)
            in_type = enn.FieldType(gspace, channels * [gspace.trivial_repr])
            out_type = enn.FieldType(gspace, fields * [gspace.regular_repr])
            # rings of radius 0, 1, ... up to the corners of the square, so that the kernel covers the whole image
            # (escnn's default rings stop at the inscribed circle and would ignore the corners).
            rings = [float(r) for r in range(math.floor((size - 1) / math.sqrt(2)) + 1)]
            # recompute=True: by default escnn shares one sampled basis module between all R2Conv layers with the same
            # configuration, so that model.double() or .to(device) on one model would change every other model's basis.
            self.conv = enn.R2Conv(in_type, out_type, kernel_size=size, padding=0, rings=rings, recompute=True)
        # We expand the filter ourselves (see forward) and never call R2Conv.forward. R2Conv keeps its own filter cache
        # in buffers that it deletes in train() and re-registers in eval(), so that the keys of the state dict would
        # depend on the mode (a checkpoint saved in one mode would not load in the other). Drop them for good.
        for name in ("filter", "expanded_bias"):
            if hasattr(self.conv, name):
                delattr(self.conv, name)
        self.group_order = gspace.fibergroup.order()
        self.exact = exact
        self._cache: tuple[tuple, Tensor, Tensor | None] | None = None
        self.register_buffer("reynolds_index", self._reynolds_index(gspace, size), persistent=False)
        with torch.no_grad():
            raw, _ = self.conv.expand_parameters()
            proj = self._project(raw)
        deviation = ((raw - proj).norm() / raw.norm()).item()
        if not deviation < 1e-3:  # escnn's filter is equivariant up to its float32 basis sampling (~1e-6)
            raise RuntimeError(
                f"escnn's filter is not equivariant under the grid permutations of its own gspace "
                f"(relative deviation {deviation:.2e}); the grid conventions of this escnn version differ from "
                "the ones EscnnInvariantMLP was written for"
            )

    @staticmethod
    def _reynolds_index(gspace: Any, size: int) -> Tensor:
        r"""Gather indices ``(|G|, |G| * S * S)`` of the Reynolds projection onto exactly equivariant filters.

        A filter ``W`` of one regular field maps the pixel ``p`` to ``W(p)`` in :math:`\mathbb{R}^{|G|}`; it is
        equivariant when :math:`W(g p) = \rho(g) W(p)`. The projection
        :math:`\bar W(p) = \frac{1}{|G|} \sum_g \rho(g)^{-1} W(g p)` reads, for each ``g``, channel
        :math:`\sigma_g(i)` (with :math:`\rho(g)_{\sigma_g(i), i} = 1`) at pixel :math:`g p`.
        """
        o = (size - 1) / 2
        rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        # escnn's filter grid: column b is x = b - o, row a is y = o - a (y points up); flat pixel index a * S + b
        xy = np.stack([cols.ravel() - o, o - rows.ravel()])
        n_pix = size * size
        index = []
        for g in gspace.fibergroup.elements:
            gx, gy = np.asarray(gspace.basespace_action(g), dtype=np.float64) @ xy
            col, row = gx + o, o - gy
            col_i, row_i = np.rint(col).astype(np.int64), np.rint(row).astype(np.int64)
            if (
                np.abs(col - col_i).max() > 1e-6
                or np.abs(row - row_i).max() > 1e-6
                or col_i.min() < 0
                or row_i.min() < 0
                or max(col_i.max(), row_i.max()) >= size
            ):
                raise RuntimeError(f"the escnn group element {g} does not map the {size}x{size} pixel grid onto itself")
            pixel = row_i * size + col_i
            rho = np.asarray(gspace.regular_repr(g), dtype=np.float64)
            sigma = rho.argmax(axis=0)
            perm = np.zeros_like(rho)
            perm[sigma, np.arange(len(rho))] = 1.0
            if not np.allclose(rho, perm, atol=1e-6):
                raise RuntimeError(f"escnn's regular representation of {g} is not a permutation matrix")
            index.append((sigma[:, None] * n_pix + pixel[None, :]).ravel())
        return torch.as_tensor(np.stack(index), dtype=torch.long)

    def _project(self, w: Tensor) -> Tensor:
        """Reynolds projection of a filter ``(fields * |G|, C, S, S)`` onto exactly equivariant filters."""
        n = self.group_order
        fields, channels = w.shape[0] // n, w.shape[1]
        flat = w.reshape(fields, n, channels, -1).transpose(1, 2).reshape(fields, channels, -1)  # (F, C, |G| * P)
        avg = flat[:, :, self.reynolds_index].mean(2)  # gather (F, C, |G|, |G| * P), average over g
        return avg.reshape(fields, channels, n, -1).transpose(1, 2).reshape(w.shape)

    def _expand(self) -> tuple[Tensor, Tensor | None]:
        w, b = self.conv.expand_parameters()  # escnn's steerable basis expansion
        if self.exact:
            w = self._project(w)
            if b is not None:  # the bias of a regular field is constant over its |G| channels (up to rounding)
                b = b.reshape(-1, self.group_order).mean(1).repeat_interleave(self.group_order)
        return w, b

    def _cache_key(self) -> tuple:
        return tuple(
            (p._version, p.data_ptr(), p.dtype, p.device, self.exact)
            for p in (self.conv.weights, self.conv.bias)
            if p is not None
        )

    def _expanded(self) -> tuple[Tensor, Tensor | None]:
        """The filter and bias: expanded on every call in training mode, cached in eval mode."""
        if self.training:
            return self._expand()
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:  # weights updated in place, moved or cast since eval()
            with torch.no_grad():
                w, b = self._expand()
            self._cache = (key, w, b)
        return self._cache[1], self._cache[2]

    def train(self, mode: bool = True) -> _SteerableTiedLayer:
        # not nn.Module.train: it would call R2Conv.train, which re-registers the filter buffers dropped in __init__
        for module in self.modules():
            module.training = mode
        self._cache = None
        if not mode:
            self._expanded()  # expand once now, so that evaluation costs only the matrix products
        return self

    def forward(self, x: Tensor) -> Tensor:
        w, b = self._expanded()
        # the kernel covers the whole image and padding is 0: the convolution is a single dot product per channel
        z = torch.relu(F.linear(x.flatten(1), w.flatten(1), b))  # (B, fields * |G|)
        # group pooling: max over the |G| channels of each regular field. Equivalent to escnn's GroupPooling, which
        # however allocates its output in float32 and would silently downcast float64 models.
        return z.unflatten(1, (-1, self.group_order)).amax(2)

    def extra_repr(self) -> str:
        return f"exact={self.exact}"


class EscnnInvariantMLP(nn.Module):
    r"""The weight-tying baseline built with `escnn <https://github.com/QUVA-Lab/escnn>`_.

    The first layer is a group-equivariant layer of escnn on the gspace ``rot2dOnR2(N=order)`` (or
    ``flipRot2dOnR2(N=order)`` when ``dihedral=True``): an ``R2Conv`` from ``C`` trivial fields to ``hidden`` regular
    fields whose kernel covers the whole image (``kernel_size`` = image size, no padding), so that it acts as a fully
    connected layer with steerable, group-tied weights. It is followed by a ReLU, group pooling (max over the
    :math:`|G|` channels of each regular field, as escnn's ``GroupPooling`` does; computed inline because escnn's
    ``GroupPooling`` returns float32 whatever the input dtype) and an ordinary MLP with ``depth - 1`` linear layers:

    .. math::
        f(x) = \operatorname{MLP}_{2..L}\Bigl(\max_{g \in G}\,
               \sigma\bigl(\langle \kappa_{k, g}, x \rangle + b_k\bigr)_{k=1..h}\Bigr),
        \qquad \kappa_{k, g}(p) = \kappa_{k, e}(g^{-1} p)

    This mirrors :class:`GroupInvariantMLP` (one tied first layer of ``hidden`` units, pooled over the group), but the
    filters are expanded in escnn's band-limited steerable basis instead of being free per pixel. The basis is
    sampled on rings of radius 0, 1, ... up to the corners of the image (escnn's default rings stop at the inscribed
    circle), with escnn's default widths and frequency cut-off.

    **Exactness.** The model is invariant to the 90° rotations of the pixel grid (and to its reflections when
    ``dihedral=True``) up to floating-point rounding, for odd and even image sizes alike: escnn centres its sampling
    grid at :math:`((S - 1)/2, (S - 1)/2)`, the centre about which :func:`torch.rot90` and flips act, and that grid
    is closed under the group, so **no padding** is needed (a 36 × 36 image uses a 36 × 36 kernel). escnn samples its
    basis in float32, which leaves its filters rotation-symmetric only up to about 1e-6 relative error (more at high
    angular frequencies). With ``exact=True`` (default) the expanded filter is therefore projected onto the exactly
    equivariant filters on the grid (the Reynolds operator
    :math:`\bar W(p) = \frac{1}{|G|}\sum_g \rho(g)^{-1} W(g p)` over the group's pixel permutations, which leaves
    exactly equivariant filters unchanged), and invariance then holds to rounding in the compute dtype (about 1e-15
    in float64). ``exact=False`` runs escnn's filter as is.

    **Parameters.** Each regular field has one steerable filter (``C`` × 1,134 basis coefficients for a 36 × 36
    image) and one bias. In the paper's setting (``in_shape=(1, 36, 36)``, ``num_classes=9``, ``hidden=128``,
    ``depth=5``) the model has exactly **195,977** parameters for ``order=4`` with or without ``dihedral``: 145,280 in
    the first layer (145,152 basis coefficients + 128 biases) and 50,697 in the MLP, against 216,713 for
    :class:`MLP` and :class:`GroupInvariantMLP`. We keep ``hidden`` fields, so that the architecture matches
    :class:`GroupInvariantMLP` unit for unit, rather than tuning the field count to match the parameter count.

    **Cost.** As in escnn's ``R2Conv``, the filter is expanded from the basis on every forward pass in training mode
    (about 1.5 GFLOPs in the paper's setting, independent of the batch size; see
    :func:`~torchinvariance.models.describe`), and expanded once and cached in eval mode (re-expanded when the
    weights are updated in place, moved or cast; in eval mode no gradient reaches the weights, as in escnn).

    **escnn versions.** Written for escnn 1.0.x. escnn builds ``flipRot2dOnR2`` bases with scikit-learn's
    ``randomized_svd`` when scikit-learn is installed, which fails on scikit-learn >= 1.2 (escnn issue #112); during
    construction we make escnn use its SciPy SVD fallback instead.

    Args:
        order: rotation order :math:`N` of the gspace, 4 (90°, the paper's :math:`\mathbb{R}^2_4`) or 2 (180°);
            other orders are not symmetries of the pixel grid.
        dihedral: also be invariant to reflections (gspace ``flipRot2dOnR2``; the dihedral group of order ``2 N``).
        in_shape: ``(C, S, S)``, square images with ``S >= 3``.
        num_classes: number of logits.
        hidden: number of regular fields of the first layer, and width of the hidden layers.
        depth: number of layers (the escnn layer plus ``depth - 1`` linear layers), ``>= 2``.
        exact: project the filter onto exactly equivariant grid filters (see above).

    Attributes:
        features: :class:`~torch.nn.Sequential` up to and including the last hidden ReLU; ``features[0].conv`` is
            the escnn ``R2Conv``.
        head: the last :class:`~torch.nn.Linear` layer.

    Raises:
        ImportError: escnn is not installed (the message says how to install it).
        ValueError: an unsupported ``order`` or ``in_shape``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> # skipped: the doctests run in the core environment, which does not install the optional escnn extra
        >>> model = ti.EscnnInvariantMLP(order=4)  # doctest: +SKIP
        >>> sum(p.numel() for p in model.parameters())  # doctest: +SKIP
        195977
        >>> x = torch.randn(2, 1, 36, 36)
        >>> ti.assert_invariant(model, ti.get_group("rotation", order=4), x, dtype=torch.float64)  # doctest: +SKIP
    """

    def __init__(
        self,
        order: int = 4,
        dihedral: bool = False,
        *,
        in_shape: Sequence[int] = (1, 36, 36),
        num_classes: int = 9,
        hidden: int = 128,
        depth: int = 5,
        exact: bool = True,
    ) -> None:
        super().__init__()
        if order not in _ORDERS or isinstance(order, bool):
            raise ValueError(f"order must be one of {_ORDERS} (symmetries of the pixel grid), got {order!r}")
        if not isinstance(dihedral, bool):
            raise ValueError(f"dihedral must be a bool, got {dihedral!r}")
        self.in_shape = check_in_shape(in_shape)
        if len(self.in_shape) != 3 or self.in_shape[1] != self.in_shape[2] or self.in_shape[1] < 3:
            raise ValueError(f"in_shape must be (C, S, S) with square images of size S >= 3; got {in_shape!r}")
        self.order = order
        self.dihedral = dihedral
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.hidden = check_positive_int("hidden", hidden)
        self.depth = check_positive_int("depth", depth, minimum=2)
        self.features = nn.Sequential(
            _SteerableTiedLayer(order, dihedral, self.in_shape, hidden, bool(exact)),  # type: ignore[arg-type]
            *hidden_layers(hidden, depth - 2),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of a batch ``(B, C, S, S)``."""
        check_batch(self, x, self.in_shape)
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return (
            f"order={self.order}, dihedral={self.dihedral}, in_shape={self.in_shape}, "
            f"num_classes={self.num_classes}, hidden={self.hidden}, depth={self.depth}"
        )
