r"""Parameter counts and forward cost of a model, for comparing baselines fairly."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchinvariance.orbit import frozen_buffers

__all__ = ["ModelDescription", "describe"]


class ModelDescription(dict):
    """The result of :func:`describe`: a plain ``dict`` whose ``str()`` is a small table.

    Keys: ``"model"`` (class name), ``"parameters"``, ``"trainable_parameters"``, ``"input_shape"`` (``None`` if not
    given), ``"flops"`` (``None`` without ``input_shape``) and ``"flops_by_operator"`` (``{aten op name: FLOPs}``).
    """

    def __str__(self) -> str:
        lines = [
            f"{self['model']}",
            f"  parameters      {self['parameters']:>15,}",
            f"  trainable       {self['trainable_parameters']:>15,}",
        ]
        if self["flops"] is not None:
            lines.append(f"  input shape     {tuple(self['input_shape'])!s:>15}")
            lines.append(f"  forward FLOPs   {self['flops']:>15,}")
            for op, count in sorted(self["flops_by_operator"].items()):
                lines.append(f"    {op:<13} {count:>15,}")
        return "\n".join(lines)


def describe(model: nn.Module, input_shape: Sequence[int] | None = None) -> ModelDescription:
    r"""Count the parameters of ``model`` and, given an input shape, the FLOPs of one forward pass.

    FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a zero input of shape ``input_shape``
    (including the batch dimension), with the model in its current train/eval mode; its buffers (BatchNorm running
    statistics) are left as they were, so describing a model in train mode does not change it. A
    matrix product of an :math:`m \times k` by a :math:`k \times n` matrix counts

    .. math:: \text{FLOPs} = 2 m k n

    (one multiply and one add per term); bias additions, activations, pooling and data movement (e.g. the group
    action) are not counted.

    Args:
        model: the module to describe.
        input_shape: full input shape ``(B, ...)``; ``None`` skips the FLOP count.

    Returns:
        :class:`ModelDescription`, a ``dict`` that prints as a table.

    Example:
        >>> import torchinvariance as ti
        >>> d = ti.models.describe(ti.MLP(), input_shape=(1, 1, 36, 36))
        >>> d["parameters"], d["flops"]
        (216713, 432384)
        >>> print(d)  # doctest: +NORMALIZE_WHITESPACE
        MLP
          parameters              216,713
          trainable               216,713
          input shape      (1, 1, 36, 36)
          forward FLOPs           432,384
            aten.addmm            432,384
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"describe() expects a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    desc = ModelDescription(
        model=type(model).__name__,
        parameters=sum(p.numel() for p in params),
        trainable_parameters=sum(p.numel() for p in params if p.requires_grad),
        input_shape=None,
        flops=None,
        flops_by_operator={},
    )
    if input_shape is None:
        return desc
    if (
        not isinstance(input_shape, Sequence)
        or len(input_shape) == 0
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_shape)
    ):
        raise ValueError(f"input_shape must be a full input shape (B, ...) of positive ints; got {input_shape!r}")
    ref = params[0] if params else next(iter(model.buffers()), None)
    floating = ref is not None and ref.is_floating_point()
    x = torch.zeros(
        tuple(input_shape),
        dtype=ref.dtype if floating else torch.get_default_dtype(),
        device=ref.device if ref is not None else None,
    )
    # not under torch.no_grad(): FlopCounterMode's module tracker fails on modules that receive a parameter as input
    # (e.g. escnn's basis expansion) when autograd is disabled. The graph of one forward pass is simply discarded.
    with frozen_buffers(model), FlopCounterMode(display=False) as counter:
        model(x)
    desc["input_shape"] = tuple(input_shape)
    desc["flops"] = int(counter.get_total_flops())
    desc["flops_by_operator"] = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return desc
