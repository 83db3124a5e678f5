"""The :class:`Group` base class: a finite group acting on tensors.

This layer knows nothing about models, losses or metrics.
"""

from __future__ import annotations

import abc
import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CyclicGroup", "Group", "ensure_group"]


class Group(abc.ABC):
    r"""A finite group acting on tensors shaped ``(..., H, W)`` (or ``(..., T)``).

    Elements are the integers ``0 .. order - 1``; ``0`` is the identity. A
    subclass provides the Cayley table through :meth:`compose` and
    :meth:`inverse` and the action through :meth:`transform`, the one hook a
    plugin author implements (:meth:`act` validates, then calls it). The
    action is a left action: acting with ``compose(g, h)`` equals acting with
    ``h``, then ``g``:

    .. math::
        (g h) \cdot x = g \cdot (h \cdot x), \qquad e \cdot x = x .

    Attributes:
        name: the name the group was built under: :func:`~torchinvariance.get_group`
            sets it to the registry name; a directly constructed group keeps its
            class default (e.g. ``"rotation"``).
        exact: ``True`` when the action permutes pixels exactly (no
            interpolation), so that the axioms hold bit for bit. ``False``
            (interpolating groups such as ``so2``) makes the checks add the
            interpolation floor to their tolerances.
        event_ndim: number of trailing dimensions the group acts on.
        is_finite: ``True`` for groups that can list their elements
            (:meth:`elements`, :attr:`order`); continuous groups
            (:class:`~torchinvariance.groups.ContinuousGroup`) are ``False``.
        spatial: ``True`` when the action moves pixels, so that a saliency
            map of :math:`g x` is brought back by :math:`g^{-1}`
            (:meth:`transform_map`); ``False`` for groups that act on values
            only (e.g. contrast inversion), whose saliency maps stay in place.

    Example:
        >>> import torch, torchinvariance as ti
        >>> g = ti.get_group("rotation", order=4)
        >>> x = torch.arange(4.0).reshape(1, 2, 2)
        >>> g.orbit(x).shape
        torch.Size([4, 1, 2, 2])
        >>> torch.equal(g.act(g.compose(1, 3), x), x)
        True
    """

    name: str = "group"
    exact: bool = True
    event_ndim: int = 2
    is_finite: bool = True
    spatial: bool = True

    # ------------------------------------------------------------------ algebra
    @property
    @abc.abstractmethod
    def order(self) -> int:
        """Number of elements of the group."""

    @abc.abstractmethod
    def compose(self, g: int, h: int) -> int:
        """The product ``g h`` (act with ``h`` first, then ``g``)."""

    @abc.abstractmethod
    def inverse(self, g: int) -> int:
        """The inverse element ``g^{-1}``."""

    @property
    def identity(self) -> int:
        """The identity element (always ``0``)."""
        return 0

    def elements(self) -> tuple[int, ...]:
        """All elements, identity first.

        An override must keep both: :func:`~torchinvariance.check_group` fails, and every measurement of the whole
        group (``elements=None``) raises, on a listing that is not ``order`` distinct elements with the identity
        first (the identity's row is the reference :math:`f(x)`).
        """
        return tuple(range(self.order))

    def element_name(self, g: int) -> str:
        """A human-readable name of element ``g`` (used in reports and errors)."""
        return f"g{self.check_element(g)}"

    def sample(self, k: int, generator: torch.Generator | None = None) -> list[int]:
        """Draw ``k`` elements uniformly at random (with replacement).

        Args:
            k: number of elements, ``k >= 0``.
            generator: optional :class:`torch.Generator` for reproducibility.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"sample() expects a non-negative int k, got {k!r}")
        return torch.randint(self.order, (k,), generator=generator).tolist()

    # ------------------------------------------------------------------ action
    @abc.abstractmethod
    def transform(self, g: int, x: Tensor) -> Tensor:
        """Act with element ``g`` on ``x``: the hook a group implements.

        Called by :meth:`act`, :meth:`orbit` and :meth:`act_per_sample` after
        :meth:`check_element` and :meth:`check_input` have validated ``g`` and
        ``x``, so an implementation only computes. It must be differentiable
        and keep ``x``'s device and dtype.
        """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # groups written against 0.1 implemented the hook as ``_act``: keep them working
        legacy = cls.__dict__.get("_act")
        if legacy is not None and "transform" not in cls.__dict__:
            warnings.warn(
                f"{cls.__qualname__} implements the group action as '_act', which is now called 'transform'; "
                "rename the method (the old name keeps working for now)",
                DeprecationWarning,
                stacklevel=3,  # __init_subclass__ <- ABCMeta.__new__ <- the class statement
            )
            cls.transform = legacy  # type: ignore[method-assign]

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`ValueError` if the group cannot act on ``x``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self!r} acts on torch.Tensor, got {type(x).__name__}")
        if x.dim() < self.event_ndim:
            raise ValueError(
                f"{self!r} acts on the last {self.event_ndim} dimensions, so it needs "
                f"a tensor with at least {self.event_ndim} dims; got shape {tuple(x.shape)}"
            )

    def act(self, g: int, x: Tensor) -> Tensor:
        """Act with ``g`` on ``x``; differentiable, device- and dtype-preserving."""
        g = self.check_element(g)
        self.check_input(x)
        return self.transform(g, x)

    def act_per_sample(self, gs: Sequence[int] | Tensor, x: Tensor) -> Tensor:
        """Act with a different element on each sample along dim 0.

        Args:
            gs: ``len(x)`` elements, one per sample.
            x: batch of shape ``(B, ...)``.

        Returns:
            tensor of ``x``'s shape with ``out[i] = act(gs[i], x[i])``.
        """
        self.check_input(x)
        if not self.is_finite:  # real-number elements: one transform per sample
            gs_list = gs.reshape(-1).tolist() if isinstance(gs, Tensor) else list(gs)
            if len(gs_list) != x.shape[0]:
                raise ValueError(
                    f"act_per_sample needs one element per sample: got {len(gs_list)} elements for a batch of "
                    f"{x.shape[0]}"
                )
            if not gs_list:  # an empty batch, as for a finite group
                return x.clone()
            return torch.cat([self.transform(self.check_element(g), x[i : i + 1]) for i, g in enumerate(gs_list)])
        if isinstance(gs, Tensor):
            if gs.is_floating_point() or gs.is_complex() or gs.dtype == torch.bool:
                raise ValueError(
                    f"{self!r} has elements 0..{self.order - 1} (integers); got a tensor of dtype {gs.dtype}"
                )
            gs_t = gs.to(device=x.device, dtype=torch.long).reshape(-1)
        else:
            gs_t = torch.tensor([self.check_element(g) for g in gs], dtype=torch.long, device=x.device)
        if gs_t.numel() != x.shape[0]:
            raise ValueError(
                f"act_per_sample needs one element per sample: got {gs_t.numel()} elements for a batch of {x.shape[0]}"
            )
        out = torch.empty_like(x)
        for g in torch.unique(gs_t).tolist():
            idx = (gs_t == g).nonzero().squeeze(1)
            out[idx] = self.transform(self.check_element(g), x[idx])
        return out

    def orbit(self, x: Tensor, elements: Sequence[int] | None = None) -> Tensor:
        """All transforms of ``x`` stacked in one tensor.

        Args:
            x: input tensor.
            elements: the elements to use, default all (identity first).

        Returns:
            tensor of shape ``(len(elements), *x.shape)``.
        """
        self.check_input(x)
        els = self.elements() if elements is None else [self.check_element(g) for g in elements]
        if len(els) == 0:
            return x.new_empty((0, *x.shape))
        return torch.stack([self.transform(g, x) for g in els])

    # ------------------------------------------------------------------ helpers
    def check_element(self, g: int) -> int:
        """Return ``g`` as a Python int if it is an element of the group, else raise :class:`ValueError`.

        Accepts Python ints, integer NumPy scalars and 0-d / one-element integer
        tensors. Floats (even integral ones such as ``1.0``), bools and values
        outside ``0 .. order - 1`` are rejected rather than truncated.

        Example:
            >>> import torch, torchinvariance as ti
            >>> ti.get_group("rotation", order=4).check_element(torch.tensor(3))
            3
        """
        if isinstance(g, Tensor):
            if g.numel() != 1 or g.is_floating_point() or g.is_complex() or g.dtype == torch.bool:
                raise ValueError(
                    f"{self!r} has elements 0..{self.order - 1} (integers); got a tensor of dtype {g.dtype} "
                    f"and shape {tuple(g.shape)}"
                )
            g = int(g.item())
        elif isinstance(g, numbers.Integral) and not isinstance(g, bool):
            g = int(g)
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < self.order:
            raise ValueError(f"{self!r} has elements 0..{self.order - 1} (integers); got {g!r}")
        return g

    def same_element(self, g: object, h: object) -> bool:
        """Whether ``g`` and ``h`` are the same element (``==`` for integer elements)."""
        return self.check_element(g) == self.check_element(h)

    def transform_map(self, g: int, maps: Tensor) -> Tensor:
        """Act with ``g`` on saliency maps ``(..., H, W)``: where the pixels of ``g x`` come from.

        The default moves the maps like the input (:meth:`transform`) for a
        ``spatial`` group and leaves them in place otherwise. A group that
        both moves pixels and changes values (flip and invert) overrides this
        with the pixel-moving part alone.
        """
        return self.transform(self.check_element(g), maps) if self.spatial else maps

    def cayley_table(self) -> list[list[int]]:
        """The multiplication table ``table[g][h] = compose(g, h)``."""
        return [[self.compose(g, h) for h in self.elements()] for g in self.elements()]

    def __len__(self) -> int:
        return self.order

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CyclicGroup(Group):
    """A cyclic group ``Z_n``: element ``k`` is the generator applied ``k`` times.

    Subclasses implement :meth:`transform`.
    """

    def __init__(self, order: int) -> None:
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be a positive int, got {order!r}")
        self._order = order

    @property
    def order(self) -> int:
        return self._order

    def compose(self, g: int, h: int) -> int:
        return (self.check_element(g) + self.check_element(h)) % self._order

    def inverse(self, g: int) -> int:
        return (-self.check_element(g)) % self._order

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self._order})"


def ensure_group(group: object) -> Group:
    """Return ``group`` if it is a :class:`Group`, else raise :class:`TypeError` saying what arrived."""
    if isinstance(group, str):
        raise TypeError(
            f"group must be a torchinvariance Group, got the string {group!r}; "
            f"build the group first: ti.get_group({group!r})"
        )
    if not isinstance(group, Group):
        raise TypeError(f"group must be a torchinvariance Group, got {type(group).__name__}")
    return group
