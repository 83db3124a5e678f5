r"""The paper's perceptron and its group-invariant weight-tying variant (paper §4.1 "Models").

Both networks share one layout so that they can be compared layer by layer: ``depth`` linear layers with ReLU
non-linearities, split into :attr:`features` (everything up to and including the last hidden ReLU) and :attr:`head`
(the last linear layer, producing the logits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from torchinvariance.groups import Group, ensure_group

__all__ = ["MLP", "PAPER_PARAMETER_COUNT", "GroupInvariantMLP", "Pool", "mlp_parameter_count"]

Pool = Literal["max", "mean"]
_POOLS = ("max", "mean")

#: Parameters of :class:`MLP` and :class:`GroupInvariantMLP` in the paper's setting (see :class:`MLP`).
PAPER_PARAMETER_COUNT = 216_713


# ---------------------------------------------------------------------------------------------------- validation
def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int >= minimum``, else raise :class:`ValueError` saying what arrived."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_in_shape(in_shape: object) -> tuple[int, ...]:
    """Validate the per-sample input shape (a non-empty sequence of positive ints)."""
    if (
        not isinstance(in_shape, Sequence)
        or len(in_shape) == 0
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in in_shape)
    ):
        raise ValueError(f"in_shape must be a non-empty sequence of positive ints, e.g. (1, 36, 36); got {in_shape!r}")
    return tuple(in_shape)


def check_batch(model: nn.Module, x: Tensor, in_shape: tuple[int, ...]) -> None:
    """Raise :class:`ValueError` unless ``x`` is a batch ``(B, *in_shape)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{type(model).__name__} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(in_shape) + 1 or tuple(x.shape[1:]) != in_shape:
        raise ValueError(
            f"{type(model).__name__} expects a batch of shape (B, {', '.join(map(str, in_shape))}); "
            f"got {tuple(x.shape)}"
        )


def hidden_layers(hidden: int, n: int) -> list[nn.Module]:
    """``n`` blocks ``Linear(hidden, hidden), ReLU()``."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    return layers


def mlp_parameter_count(in_features: int, num_classes: int, hidden: int, depth: int) -> int:
    r"""Number of parameters of :class:`MLP` (and of :class:`GroupInvariantMLP`).

    .. math::
        P = (D + 1) h + (L - 2)(h + 1) h + (h + 1) K

    with :math:`D` input features, :math:`h` = ``hidden``, :math:`L` = ``depth`` and :math:`K` = ``num_classes``.

    Example:
        >>> mlp_parameter_count(36 * 36, 9, 128, 5)
        216713
    """
    return (in_features + 1) * hidden + (depth - 2) * (hidden + 1) * hidden + (hidden + 1) * num_classes


# ---------------------------------------------------------------------------------------------------- models
class MLP(nn.Module):
    r"""The paper's perceptron: ``depth`` linear layers with ReLU non-linearities.

    .. math::
        f(x) = W_L\,\sigma\bigl(W_{L-1} \cdots \sigma(W_1 \operatorname{vec}(x) + b_1) \cdots + b_{L-1}\bigr) + b_L,
        \qquad \sigma = \operatorname{ReLU},\; L = \text{depth}

    It has :math:`P = (D + 1) h + (L - 2)(h + 1) h + (h + 1) K` parameters (:func:`mlp_parameter_count`). In the
    paper's setting (``in_shape=(1, 36, 36)``, ``num_classes=9``, ``hidden=128``, ``depth=5``) that is exactly
    **216,713** parameters: 166,016 in the first layer, 3 × 16,512 in the hidden layers and 1,161 in the head. The
    paper rounds its count to "230k"; five linear layers of width 128 on 36 × 36 inputs give 216,713 (six would give
    233,225), and we follow the paper's "5-layer perceptron" literally.

    Args:
        in_shape: shape of one input sample, e.g. ``(1, 36, 36)``; inputs are ``(B, *in_shape)``.
        num_classes: number of logits.
        hidden: width of the hidden layers.
        depth: number of linear layers, ``>= 2``.

    Attributes:
        features: :class:`~torch.nn.Sequential` from the input up to and including the last hidden ReLU,
            ``(B, *in_shape) -> (B, hidden)``.
        head: the last :class:`~torch.nn.Linear` layer, ``(B, hidden) -> (B, num_classes)``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = ti.MLP()
        >>> sum(p.numel() for p in model.parameters())
        216713
        >>> model(torch.zeros(2, 1, 36, 36)).shape
        torch.Size([2, 9])
        >>> torch.equal(model.head(model.features(torch.ones(1, 1, 36, 36))), model(torch.ones(1, 1, 36, 36)))
        True
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 36, 36),
        num_classes: int = 9,
        hidden: int = 128,
        depth: int = 5,
    ) -> None:
        super().__init__()
        self.in_shape = check_in_shape(in_shape)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.hidden = check_positive_int("hidden", hidden)
        self.depth = check_positive_int("depth", depth, minimum=2)
        in_features = math.prod(self.in_shape)
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), *hidden_layers(hidden, depth - 2)
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of a batch ``(B, *in_shape)``."""
        check_batch(self, x, self.in_shape)
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, num_classes={self.num_classes}, hidden={self.hidden}, depth={self.depth}"


class OrbitPooledLinear(nn.Module):
    r"""A linear layer tied over a group: applied to every transform of the input, then pooled over the group.

    .. math::
        \phi(x) = \operatorname{pool}_{g \in G}\, \sigma\bigl(W \operatorname{vec}(g \cdot x) + b\bigr)

    The orbit ``(|G|, B, *in_shape)`` comes from :meth:`Group.orbit` and goes through one batched matrix product. For
    any :math:`h \in G`, the orbit of :math:`h \cdot x` is the orbit of :math:`x` with its rows permuted
    (:math:`g h` runs over :math:`G`), so max- and mean-pooling give the same result: :math:`\phi(h \cdot x) = \phi(x)`.
    The ReLU comes before the pooling: mean-pooling a linear map would only see the orbit average of the input.

    Args:
        group: any finite :class:`~torchinvariance.groups.Group` that can act on ``(B, *in_shape)``.
        in_shape: shape of one input sample.
        out_features: width of the layer.
        pool: ``"max"`` or ``"mean"`` over the group dimension.
    """

    def __init__(self, group: Group, in_shape: tuple[int, ...], out_features: int, pool: Pool = "max") -> None:
        super().__init__()
        self.group = group
        self.in_shape = in_shape
        self.pool = pool
        self.linear = nn.Linear(math.prod(in_shape), out_features)

    def forward(self, x: Tensor) -> Tensor:
        orbit = self.group.orbit(x)  # (|G|, B, *in_shape)
        z = torch.relu(self.linear(orbit.flatten(2)))  # one batched matmul: (|G|, B, D) @ (D, h)
        return z.amax(0) if self.pool == "max" else z.mean(0)

    def extra_repr(self) -> str:
        return f"group={self.group!r}, pool={self.pool!r}"


class GroupInvariantMLP(nn.Module):
    r"""The paper's weight-tying baseline: an :class:`MLP` whose first layer is tied over a finite group.

    The first linear layer is applied to every transform :math:`g \cdot x` of the input (one batched matrix product
    over the stacked orbit), followed by a ReLU and a pooling over the group; the remaining ``depth - 1`` layers are an
    ordinary MLP (paper §4.1: "group weight-tying with a pooling over a group ... only for the first layer"):

    .. math::
        f(x) = \operatorname{MLP}_{2..L}\Bigl(\operatorname{pool}_{g \in G}\,
               \sigma\bigl(W_1 \operatorname{vec}(g \cdot x) + b_1\bigr)\Bigr)

    The pooled features are invariant because the orbit of :math:`h \cdot x` is a permutation of the orbit of
    :math:`x`; ``pool="max"`` is invariant bit for bit, ``pool="mean"`` up to the rounding of a re-ordered sum. This
    holds for any finite :class:`~torchinvariance.groups.Group` whose action is a group action on the inputs (all
    built-in groups and plugin groups such as 1-D signal groups with ``in_shape=(T,)``). The parameter count equals the
    :class:`MLP`'s (216,713 in the paper's setting); the first layer costs :math:`|G|` times the MLP's.

    Args:
        group: the finite group to be invariant to (e.g. ``ti.get_group("rotation", order=4)``).
        in_shape: shape of one input sample; the group must be able to act on ``(B, *in_shape)``.
        num_classes: number of logits.
        hidden: width of the hidden layers.
        depth: number of linear layers, ``>= 2``.
        pool: ``"max"`` (the paper's choice) or ``"mean"`` over the group dimension.

    Attributes:
        features: :class:`~torch.nn.Sequential` up to and including the last hidden ReLU; its first module is the
            tied, pooled layer (with the linear map at ``features[0].linear``).
        head: the last :class:`~torch.nn.Linear` layer.

    Raises:
        ValueError: an unknown ``pool``, or a group that cannot act on inputs of shape ``in_shape``.

    Example:
        >>> import torch, torchinvariance as ti
        >>> rot = ti.get_group("rotation", order=4)
        >>> model = ti.GroupInvariantMLP(rot, in_shape=(1, 36, 36), num_classes=9, pool="max")
        >>> sum(p.numel() for p in model.parameters())
        216713
        >>> x = torch.randn(3, 1, 36, 36)
        >>> torch.allclose(model(x), model(torch.rot90(x, 1, dims=(-2, -1))), atol=1e-6)
        True
    """

    def __init__(
        self,
        group: Group,
        *,
        in_shape: Sequence[int] = (1, 36, 36),
        num_classes: int = 9,
        hidden: int = 128,
        depth: int = 5,
        pool: Pool = "max",
    ) -> None:
        super().__init__()
        ensure_group(group)
        if not group.is_finite:  # the tied layer runs over every element: it failed in the first forward
            raise ValueError(
                f"GroupInvariantMLP ties its first layer over every element of a finite group; {group!r} is "
                "continuous. Use a finite group (e.g. ti.get_group('rotation', order=4)) or average a model over a "
                "list of elements: ti.GroupAveraged(model, group, elements=[...])"
            )
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        self.group = group
        self.in_shape = check_in_shape(in_shape)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.hidden = check_positive_int("hidden", hidden)
        self.depth = check_positive_int("depth", depth, minimum=2)
        self.pool = pool
        try:
            group.check_input(torch.empty((1, *self.in_shape), device="meta"))
        except ValueError as exc:
            raise ValueError(f"{group!r} cannot act on inputs of shape (B, *{self.in_shape}): {exc}") from None
        self.features = nn.Sequential(
            OrbitPooledLinear(group, self.in_shape, hidden, pool), *hidden_layers(hidden, depth - 2)
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of a batch ``(B, *in_shape)``; invariant to ``group``."""
        check_batch(self, x, self.in_shape)
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return (
            f"group={self.group!r}, in_shape={self.in_shape}, num_classes={self.num_classes}, "
            f"hidden={self.hidden}, depth={self.depth}, pool={self.pool!r}"
        )
