r"""Symmetrization: make any model invariant (or equivariant) by averaging its outputs over the orbit of the input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from torchinvariance._checks import check_model
from torchinvariance.actions import OutputAction, OutputActionLike, resolve_output_action
from torchinvariance.groups import Group, ensure_group, listed_elements
from torchinvariance.orbit import orbit_forward, resolve_elements

__all__ = ["GroupAveraged"]


class GroupAveraged(nn.Module):
    r"""Average a model's outputs over the orbit of the input (group averaging, symmetrization).

    .. math::
        \bar f(x) = \frac{1}{|G|} \sum_{g \in G} \rho_{\text{out}}(g)^{-1} f(g \cdot x)

    with :math:`\rho_{\text{out}}` the ``output_action`` (trivial by default, which gives the invariant average
    :math:`\frac{1}{|G|} \sum_g f(g \cdot x)`). Since :math:`g h` runs over :math:`G` when :math:`g` does,

    .. math::
        \bar f(h \cdot x) = \frac{1}{|G|} \sum_{g} \rho_{\text{out}}(g)^{-1} f(g h \cdot x)
        = \rho_{\text{out}}(h) \frac{1}{|G|} \sum_{k} \rho_{\text{out}}(k)^{-1} f(k \cdot x)
        = \rho_{\text{out}}(h)\, \bar f(x)

    for every :math:`h \in G` (:math:`k = g h`): exact invariance, or exact equivariance with ``output_action=``
    (``"same"`` for a segmentation net or feature maps, a permutation of the classes, a representation), without any
    change to the architecture of ``model``, at :math:`|G|` times the cost. It is the symmetrized reference of a
    model: what the model would be if it were made invariant or equivariant by averaging. The whole orbit goes
    through ``model`` in one batched forward pass of ``|G| * B`` samples.

    Args:
        model: any module mapping ``(N, ...)`` to outputs ``(N, ...)``.
        group: the :class:`~torchinvariance.groups.Group` to average over.
        elements: average over these elements instead of the whole group
            (required for a continuous group, e.g. 24 angles of ``so2``: the
            average is then invariant to the finite subgroup they form, up to
            interpolation). They should form a subgroup: the argument above
            needs :math:`g h` to run over them.
        output_action: how an element acts on the outputs
            (:func:`~torchinvariance.actions.resolve_output_action`): ``None``
            or ``"trivial"`` for invariance, ``"same"``, permutations,
            ``rho(g)`` or a callable ``(g, y)``. It should be an action of the
            group (for a representation, :math:`\rho(gh) = \rho(g)\rho(h)`).

    Raises:
        ValueError: (when built) a continuous group without ``elements``, an
            unknown output action, or a permutation action without a
            permutation for the inverse of every element averaged over.

    Example:
        >>> import torch, torchinvariance as ti
        >>> flip = ti.get_group("flip", axis="x")
        >>> model = ti.GroupAveraged(ti.MLP(in_shape=(1, 4, 4), num_classes=3, hidden=8), flip)
        >>> x = torch.randn(2, 1, 4, 4)
        >>> torch.allclose(model(x), model(x.flip(-1)), atol=1e-6)
        True
        >>> rot = ti.get_group("rotation", order=4)
        >>> conv = ti.GroupAveraged(torch.nn.Conv2d(1, 2, 3, padding=1), rot, output_action="same")
        >>> torch.allclose(conv(rot.act(1, x)), rot.act(1, conv(x)), atol=1e-6)  # a segmentation-style output
        True
    """

    def __init__(
        self,
        model: nn.Module,
        group: Group,
        elements: Sequence | None = None,
        output_action: OutputActionLike | None = None,
    ) -> None:
        super().__init__()
        ensure_group(group)
        check_model(model)
        if elements is None and not group.is_finite:
            raise ValueError(f"{group!r} is continuous: pass the elements to average over (e.g. 24 angles)")
        if isinstance(elements, int) and not isinstance(elements, bool):
            # the metrics' elements=k draws k elements; an average needs elements that form a subgroup, not a draw
            raise TypeError(
                f"GroupAveraged averages over a list of elements that form a subgroup (e.g. [0, 90, 180, 270] for "
                f"so2), not a number of elements to draw; got elements={elements!r}"
            )
        self.model = model
        self.group = group
        self.elements = None if elements is None else resolve_elements(group, elements)
        self.output_action = resolve_output_action(output_action, group)
        _check_permutations(self.output_action, group, listed_elements(group) if elements is None else self.elements)

    def forward(self, x: Tensor) -> Tensor:
        """The orbit-averaged output of a batch ``x`` of shape ``(B, ...)``, each row brought back by ``g^{-1}``.

        Integer or bool outputs (scores, votes) are averaged as float64: the mean of integers is not an integer.
        """
        out = orbit_forward(self.model, self.group, x, self.elements, output_action=self.output_action)
        if not (out.is_floating_point() or out.is_complex()):
            out = out.to(torch.float64)
        return out.mean(0)

    def extra_repr(self) -> str:
        action = "" if self.output_action.trivial else f", output_action={self.output_action.name!r}"
        return f"group={self.group!r}{action}"


def _check_permutations(action: OutputAction, group: Group, used: list) -> None:
    """A permutation action needs a permutation for the inverse of every element averaged over: checked when built."""
    table = getattr(action, "table", None)
    if action.name != "permutation" or not isinstance(table, dict):
        return
    missing = [group.element_name(g) for g in used if group.inverse(g) not in table]
    if missing:
        raise ValueError(
            "GroupAveraged brings the output of g x back with g^-1, so a permutation output action needs a "
            f"permutation for the inverse of every element averaged over; none is given for the inverses of "
            f"{missing} (it has permutations for elements {sorted(table)})"
        )
