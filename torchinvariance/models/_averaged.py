r"""Symmetrization: make any model invariant by averaging its outputs over the orbit of the input."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from torchinvariance._checks import check_model
from torchinvariance.groups import Group, ensure_group
from torchinvariance.orbit import orbit_forward

__all__ = ["GroupAveraged"]


class GroupAveraged(nn.Module):
    r"""Average a model's outputs over the orbit of the input (group averaging, symmetrization).

    .. math::
        \bar f(x) = \frac{1}{|G|} \sum_{g \in G} f(g \cdot x)

    :math:`\bar f(h \cdot x) = \bar f(x)` for every :math:`h \in G`, since :math:`g h` runs over :math:`G` when
    :math:`g` does: exact invariance without any change to the architecture of ``model``, at :math:`|G|` times the
    cost. The whole orbit goes through ``model`` in one batched forward pass of ``|G| * B`` samples.

    Args:
        model: any module mapping ``(N, ...)`` to outputs ``(N, ...)``.
        group: the :class:`~torchinvariance.groups.Group` to average over.
        elements: average over these elements instead of the whole group
            (required for a continuous group, e.g. 24 angles of ``so2``: the
            average is then invariant to the finite subgroup they form, up to
            interpolation).

    Example:
        >>> import torch, torchinvariance as ti
        >>> flip = ti.get_group("flip", axis="x")
        >>> model = ti.GroupAveraged(ti.MLP(in_shape=(1, 4, 4), num_classes=3, hidden=8), flip)
        >>> x = torch.randn(2, 1, 4, 4)
        >>> torch.allclose(model(x), model(x.flip(-1)), atol=1e-6)
        True
    """

    def __init__(self, model: nn.Module, group: Group, elements: Sequence | None = None) -> None:
        super().__init__()
        ensure_group(group)
        check_model(model)
        if elements is None and not group.is_finite:
            raise ValueError(f"{group!r} is continuous: pass the elements to average over (e.g. 24 angles)")
        self.model = model
        self.group = group
        self.elements = None if elements is None else [group.check_element(g) for g in elements]

    def forward(self, x: Tensor) -> Tensor:
        """The orbit-averaged output of a batch ``x`` of shape ``(B, ...)``."""
        return orbit_forward(self.model, self.group, x, self.elements).mean(0)

    def extra_repr(self) -> str:
        return f"group={self.group!r}"
