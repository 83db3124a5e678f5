r"""How a group element acts on a model's OUTPUT: the bridge from invariance to equivariance.

A model is equivariant when transforming the input transforms the output by
the same element: :math:`f(g \cdot x) = g \cdot f(x)`, or, written the way the
losses compare, :math:`g^{-1} \cdot f(g \cdot x) = f(x)`. An
:class:`OutputAction` says what :math:`g \cdot y` is for an output :math:`y`:

- ``"trivial"``: :math:`g \cdot y = y` (invariance, the default everywhere);
- ``"same"``: the output is acted on like the input (a mask, a feature map):
  :math:`g \cdot y` = ``group.act(g, y)``;
- a permutation of the output channels or classes per element,
  :meth:`OutputAction.permutation`: :math:`(g \cdot y)_{:, i} = y_{:, \pi_g(i)}`;
- a representation, :meth:`OutputAction.representation`:
  :math:`g \cdot y = y \rho(g)^\top` for vector outputs ``(B, d)``;
- any callable ``(g, y) -> y'``.

This module sits beside :mod:`torchinvariance.orbit` and knows only the groups.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor

from torchinvariance.groups import Group

__all__ = [
    "OutputAction",
    "OutputActionLike",
    "OutputMask",
    "output_disk",
    "resolve_output_action",
    "resolve_output_mask",
]


class OutputAction:
    r"""An action of a group on model outputs ``(B, ...)``: ``action(g, y)`` returns :math:`g \cdot y`.

    Build one with the class methods or pass any of the accepted forms to
    :func:`~torchinvariance.actions.resolve_output_action` (every loss and check does). Actions are
    plain objects (picklable when their callables are).

    Example:
        >>> import torch, torchinvariance as ti
        >>> flip = ti.get_group("flip")
        >>> swap = ti.OutputAction.permutation({0: [0, 1], 1: [1, 0]})  # the flip swaps two classes
        >>> swap(1, torch.tensor([[1.0, 2.0]]))
        tensor([[2., 1.]])
    """

    name = "trivial"
    trivial = True

    def __call__(self, g: Any, y: Tensor) -> Tensor:
        return y

    def __repr__(self) -> str:
        return f"OutputAction({self.name})"

    @classmethod
    def invariant(cls) -> OutputAction:
        r"""The trivial action :math:`g \cdot y = y` (invariance)."""
        return OutputAction()

    @classmethod
    def same(cls, group: Group) -> OutputAction:
        r"""The output transforms like the input: :math:`g \cdot y` = ``group.act(g, y)``.

        The outputs ``(B, ...)`` need at least ``group.event_ndim`` dims after the batch dim (for the image groups
        ``(B, H, W)`` or ``(B, C, H, W)``); a ``(B, C)`` output raises :class:`ValueError` when applied instead of
        being transformed across the batch.
        """
        return _Same(group)

    @classmethod
    def permutation(cls, perms: Mapping[Any, Sequence[int]] | Sequence[Sequence[int]], dim: int = 1) -> OutputAction:
        """Element ``g`` permutes dimension ``dim`` of the output: ``y.index_select(dim, perms[g])``.

        Args:
            perms: ``{g: permutation}`` or a sequence indexed by the (integer)
                elements; each permutation lists, for output position ``i``,
                the input position it takes its value from.
            dim: the output dimension permuted (1: classes or channels).

        Raises:
            ValueError: an entry that is not a permutation of ``0..n-1``.
        """
        return _Permutation(perms, dim)

    @classmethod
    def representation(cls, rho: Callable[[Any], Tensor]) -> OutputAction:
        r"""Vector outputs ``(B, d)`` transform by a matrix: :math:`g \cdot y = y \rho(g)^\top`.

        Only outputs of exactly two dims ``(B, d)`` are accepted: on a feature map the matrix would mix pixels of
        the last dim. For outputs such as vector fields, write a callable ``(g, y) -> g · y``.

        Args:
            rho: ``rho(g)`` returns a ``(d, d)`` matrix; ``rho`` should be a
                representation (:math:`\rho(gh) = \rho(g)\rho(h)`).

        Raises:
            ValueError: (when applied) an output that is not ``(B, d)`` or a matrix that is not ``(d, d)``.
        """
        return _Representation(rho)

    @classmethod
    def from_callable(cls, fn: Callable[[Any, Tensor], Tensor]) -> OutputAction:
        """Any callable ``fn(g, y) -> g · y``."""
        return _Callable(fn)


class _Same(OutputAction):
    name, trivial = "same", False

    def __init__(self, group: Group) -> None:
        self.group = group

    def __call__(self, g: Any, y: Tensor) -> Tensor:
        # y is a batch of outputs (B, ...): the group acts on its last event_ndim dims, which must come AFTER the
        # batch dim. A (B, C) logits matrix would otherwise be rotated/flipped across samples as if it were an image.
        nd = self.group.event_ndim
        if not isinstance(y, Tensor) or y.dim() < nd + 1:
            got = f"shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"output_action='same' acts on each output like {self.group!r} acts on the input, on its last {nd} "
                f"dims, so it needs outputs (B, ...) with at least {nd} dims after the batch dim (e.g. feature maps "
                f"or masks (B, C, H, W)); got outputs of {got}. For class logits or vectors (B, C) use 'trivial', a "
                "permutation of the classes or a representation rho(g)"
            )
        return self.group.act(g, y)


class _Permutation(OutputAction):
    name, trivial = "permutation", False

    def __init__(self, perms: Mapping[Any, Sequence[int]] | Sequence[Sequence[int]], dim: int) -> None:
        table = dict(perms) if isinstance(perms, Mapping) else dict(enumerate(perms))
        self.table: dict[Any, Tensor] = {}
        for g, perm in table.items():
            p = torch.as_tensor(list(perm), dtype=torch.long)
            if p.dim() != 1 or sorted(p.tolist()) != list(range(len(p))):
                raise ValueError(f"the output permutation of element {g!r} must be a permutation of 0..n-1, got {perm}")
            self.table[g] = p
        self.dim = dim

    def __call__(self, g: Any, y: Tensor) -> Tensor:
        key = int(g) if isinstance(g, Tensor) else g
        if key not in self.table:
            raise ValueError(f"no output permutation given for element {g!r}; known elements: {sorted(self.table)}")
        p = self.table[key]
        if y.shape[self.dim] != len(p):
            raise ValueError(
                f"the output permutation of element {g!r} has {len(p)} entries but the output has "
                f"{y.shape[self.dim]} entries along dim {self.dim} (shape {tuple(y.shape)})"
            )
        return y.index_select(self.dim, p.to(y.device))


class _Representation(OutputAction):
    name, trivial = "representation", False

    def __init__(self, rho: Callable[[Any], Tensor]) -> None:
        self.rho = rho

    def __call__(self, g: Any, y: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.dim() != 2:
            got = f"shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(
                f"a representation rho(g) acts on vector outputs (B, d); got outputs of {got}. For feature maps "
                "(e.g. a vector field (B, d, H, W), whose positions move too) pass a callable (g, y) -> g · y that "
                "does both, e.g. `lambda g, y: torch.einsum('ij,bj...->bi...', rho(g), group.act(g, y))`"
            )
        m = torch.as_tensor(self.rho(g), dtype=y.dtype, device=y.device)
        if m.dim() != 2 or m.shape[0] != m.shape[1] or y.shape[1] != m.shape[1]:
            raise ValueError(
                f"rho({g!r}) must be a square (d, d) matrix with d = {y.shape[1]}, the size of the vector outputs "
                f"(B, d) of shape {tuple(y.shape)}; got a matrix of shape {tuple(m.shape)}. A one-argument "
                "callable is read as the representation g -> rho(g); to act on the outputs yourself pass a "
                "callable of two arguments (g, y) -> g · y"
            )
        return y @ m.transpose(0, 1)


class _Callable(OutputAction):
    trivial = False

    def __init__(self, fn: Callable[[Any, Tensor], Tensor]) -> None:
        self.fn = fn
        self.name = getattr(fn, "__name__", "callable")

    def __call__(self, g: Any, y: Tensor) -> Tensor:
        return self.fn(g, y)


OutputActionLike = Union[str, OutputAction, Callable[..., Tensor], Mapping[Any, Sequence[int]], Sequence[Sequence[int]]]


def resolve_output_action(spec: OutputActionLike | None, group: Group) -> OutputAction:
    """Turn the accepted forms into an :class:`OutputAction`.

    ``None``/``"trivial"``; ``"same"``; an :class:`OutputAction`; a mapping or
    sequence of permutations (:meth:`OutputAction.permutation`); a callable of
    ONE argument ``rho(g) -> (d, d)`` (:meth:`OutputAction.representation`);
    a callable of TWO arguments ``(g, y) -> y'``.

    Raises:
        ValueError: an unknown string, or a callable with another number of parameters.
    """
    if spec is None or (isinstance(spec, str) and spec == "trivial"):
        return OutputAction.invariant()
    if isinstance(spec, OutputAction):
        return spec
    if isinstance(spec, str):
        if spec == "same":
            return OutputAction.same(group)
        raise ValueError(
            f"output_action must be 'trivial', 'same', an OutputAction, permutations, rho(g) or a callable (g, y); "
            f"got {spec!r}"
        )
    if isinstance(spec, Mapping) or (isinstance(spec, Sequence) and not isinstance(spec, (bytes, Tensor))):
        return OutputAction.permutation(spec)
    if callable(spec):
        try:
            params = [
                p
                for p in inspect.signature(spec).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            ]
        except (TypeError, ValueError):
            params = []
        if len(params) == 1:
            return OutputAction.representation(spec)
        if len(params) == 2:
            return OutputAction.from_callable(spec)
        raise ValueError(
            "a callable output_action takes one argument (rho(g) -> matrix) or two ((g, y) -> g · y); "
            f"{getattr(spec, '__name__', spec)!r} takes {len(params)}. Wrap it in OutputAction.from_callable"
        )
    raise TypeError(f"output_action: unsupported type {type(spec).__name__}")


OutputMask = Literal["auto", "circle"]
_MASKS = ("auto", "circle", None)


def resolve_output_mask(mask: OutputMask | None, group: Group, action: OutputAction) -> bool:
    r"""Whether outputs are compared on the inscribed disk only (``mask="circle"``, or ``"auto"`` resolved).

    ``"auto"`` is the disk exactly when the group zeroes everything outside it (``so2`` with ``mask="circle"``)
    and the outputs transform like the input (``"same"``): :math:`g^{-1} \cdot f(g x)` is 0 there whatever the
    model does, so only the disk holds information. Used by the equivariance checks and
    :class:`~torchinvariance.EquivarianceLoss`.

    Raises:
        ValueError: ``mask`` is not ``"auto"``, ``"circle"`` or ``None``.
    """
    if mask not in _MASKS:
        raise ValueError(f"mask must be one of {_MASKS}, got {mask!r}")
    if mask == "auto":
        return action.name == "same" and getattr(group, "mask", None) == "circle"
    return mask == "circle"


def output_disk(y: Tensor) -> Tensor:
    """The ``(H, W)`` mask, in ``y``'s dtype, of the pixels of outputs ``y`` ``(B, ..., H, W)`` inside the inscribed
    disk: the pixels :meth:`SO2.mask_input <torchinvariance.SO2.mask_input>` keeps.

    Raises:
        ValueError: ``y`` is not a batch of square images.
    """
    if y.dim() < 3 or y.shape[-1] != y.shape[-2]:
        raise ValueError(
            "mask='circle' compares image outputs (B, ..., H, W) with H == W on the disk inscribed in them; got "
            f"outputs of shape {tuple(y.shape)}. Pass mask=None for other outputs"
        )
    c = (torch.arange(y.shape[-1], device=y.device, dtype=torch.float64) + 0.5) / y.shape[-1] * 2 - 1
    return ((c[:, None] ** 2 + c[None, :] ** 2) <= 1.0).to(y.dtype)
