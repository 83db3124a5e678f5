r"""The orbit primitive: a batch and its transformed copies through a model in one batched forward.

.. math::
    \texttt{orbit\_forward}(f, G, x, (g_1..g_n))_{ib} = f(g_i \cdot x_b)

Every place where an orbit goes through a model (the losses, the metrics,
:mod:`torchinvariance.testing`, :class:`~torchinvariance.GroupAveraged`) calls
:func:`orbit_forward`, so the output checks, chunking and the handling of the
model's mode and buffers (:func:`measuring`, :func:`frozen_buffers`) live here
once. This module sits between the groups and the layers that use models; it
knows nothing of losses or metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchinvariance._checks import check_model
from torchinvariance.actions import OutputAction, OutputActionLike, resolve_output_action
from torchinvariance.groups import Group, ensure_group, listed_elements

__all__ = [
    "RandomState",
    "check_batch",
    "frozen_buffers",
    "measuring",
    "model_output",
    "orbit_forward",
    "resolve_elements",
]


class RandomState:
    """The state of torch's random generators a forward on ``device`` draws from, to replay it.

    It holds the CPU generator's state and, for a CUDA ``device``, that device's; :meth:`restore` sets them back.
    :func:`orbit_forward` with ``shared_randomness`` starts the forward of every orbit copy from one such state,
    so random layers (dropout) draw the same numbers for every copy.

    Example:
        >>> import torch, torchinvariance as ti
        >>> state = ti.orbit.RandomState(torch.device("cpu"))
        >>> a = torch.rand(3)
        >>> state.restore()
        >>> torch.equal(torch.rand(3), a)
        True
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def restore(self) -> None:
        """Set the generators back to this state."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@contextlib.contextmanager
def frozen_buffers(model: Any) -> Iterator[None]:
    """Leave every buffer of ``model`` (e.g. BatchNorm running statistics) as it was on entry.

    Inside the block the model runs normally, in its own mode (a BatchNorm in
    train mode still normalizes with the batch statistics), but on copies of
    its buffers; on exit, also on an exception, the original buffer tensors
    are put back untouched. Nothing is written in place, so autograd graphs
    built inside the block (which may save those copies) stay valid. A model
    that is not an ``nn.Module`` or has no buffers costs nothing.

    Example:
        >>> import torch, torchinvariance as ti
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with ti.orbit.frozen_buffers(bn):
        ...     _ = bn(torch.randn(8, 3) + 5)
        >>> bn.running_mean
        tensor([0., 0., 0.])
    """
    if not isinstance(model, nn.Module):
        yield
        return
    originals = [(m, name, b) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    try:
        for m, name, b in originals:
            m._buffers[name] = b.clone()
        yield
    finally:
        for m, name, b in originals:
            m._buffers[name] = b


@contextlib.contextmanager
def measuring(model: Any, eval_mode: bool = True) -> Iterator[None]:
    """The mode a measurement runs in: ``eval()`` by default, and no buffer changed.

    With ``eval_mode=True`` every submodule is put in eval mode (BatchNorm uses
    its running statistics, dropout is off); with ``eval_mode=False`` the model
    keeps its current modes (the opt-out for measuring in train mode). Either
    way the training flag of every submodule and every buffer are restored on
    exit, also on an exception, so a measurement never changes the model.

    Example:
        >>> import torch, torchinvariance as ti
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).train()
        >>> with ti.orbit.measuring(model):
        ...     model[1].training
        False
        >>> model[1].training
        True
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    try:
        with frozen_buffers(model):
            if eval_mode:
                model.eval()
            yield
    finally:
        for m, training in modes:
            m.training = training


def check_batch(group: Group, x: Any, who: str = "x") -> Tensor:
    """Return ``x`` if it is a non-empty batch ``(B, ...)`` that ``group`` can act on, else raise.

    Raises:
        TypeError: ``x`` is not a tensor.
        ValueError: an empty batch, or one with fewer than ``group.event_ndim``
            dimensions after the batch dimension, or one the group rejects.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} needs a torch.Tensor batch (B, ...), got {type(x).__name__}")
    if x.dim() < group.event_ndim + 1 or x.shape[0] == 0:
        raise ValueError(
            f"{who} needs a non-empty batch (B, ...) with at least {group.event_ndim} dims after the batch "
            f"dim for {group!r} to act on; got shape {tuple(x.shape)}"
        )
    group.check_input(x)
    return x


def model_output(out: Any, rows: int) -> Tensor:
    """The output tensor of a model called on ``rows`` inputs, checked once for every caller.

    A ``dict``/``Mapping`` or an object with a ``logits`` entry or attribute
    (e.g. a Hugging Face ``ModelOutput``) gives its logits.

    Raises:
        ValueError: the output is not a tensor with ``rows`` entries in dim 0.
    """
    if not isinstance(out, Tensor):
        if isinstance(out, Mapping) and isinstance(out.get("logits"), Tensor):
            out = out["logits"]
        elif isinstance(getattr(out, "logits", None), Tensor):
            out = out.logits
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != rows:
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
        hint = ""
        if isinstance(out, (Mapping, tuple, list)):
            hint = (
                "; the model returned a container: return the logits tensor, or a dict with a 'logits' key, "
                "or wrap it, e.g. `lambda x: model(x)[0]`"
            )
        raise ValueError(
            f"the model must return one output per sample, a tensor with one row per input in dim 0 "
            f"(fed {rows} inputs); got {got}{hint}"
        )
    return out


def orbit_forward(
    model: Callable[[Tensor], Any],
    group: Group,
    x: Tensor,
    elements: Sequence[int] | None = None,
    *,
    chunk_size: int | None = None,
    output_action: OutputActionLike | None = None,
    shared_randomness: bool | RandomState = False,
) -> Tensor:
    r"""Model outputs on transformed copies of a batch: ``out[i, b] = model(g_i · x_b)``.

    The copies of all requested elements are stacked into one batch of
    ``n * B`` inputs and go through ``model`` in ONE forward (or one forward
    per ``chunk_size`` elements, which bounds the peak memory of the
    activations).

    Args:
        model: any callable mapping ``(N, ...)`` to ``(N, ...)`` outputs (a
            ``Mapping`` or object with ``logits`` gives its logits).
        group: the group acting on ``x``.
        x: a non-empty batch ``(B, ...)`` the group can act on.
        elements: the elements ``g_1 .. g_n`` in output order; default every
            element (identity first). Include the identity to get ``f(x)`` in
            the same forward.
        chunk_size: at most this many elements per forward; ``None`` for one.
        output_action: how elements act on the output
            (:func:`~torchinvariance.actions.resolve_output_action`); when given
            and not trivial, each row is brought back to the frame of ``x``:
            ``out[i] = g_i^{-1} · model(g_i · x)``, so an equivariant model gives
            ``f(x)`` in every row.
        shared_randomness: ``False`` (default): one batched forward, in which
            a random layer draws independently for every row, so in train mode
            each copy of a sample gets its own dropout mask. ``True``: one
            forward per element, each started from the random state at the
            call, so every copy of sample ``b`` gets the same mask (costs ``n``
            forwards of ``B`` inputs instead of one of ``n * B``; ``chunk_size``
            is then moot); afterwards the generators are where the first of these
            forwards left them, as if the model had run once. A
            :class:`~torchinvariance.orbit.RandomState` instead of ``True`` replays that state (to share
            the randomness with a forward made before).

    Returns:
        ``(n, B, ...)`` outputs; row ``i`` belongs to ``elements[i]``.

    Raises:
        ValueError: an empty element list, bad ``chunk_size``, a batch the
            group cannot act on, a model output without one row per input,
            or an output action that does not fit the outputs or changes their
            shape.

    Example:
        >>> import torch, torchinvariance as ti
        >>> rot = ti.get_group("rotation", order=4)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        >>> x = torch.randn(5, 1, 4, 4)
        >>> out = ti.orbit_forward(model, rot, x)
        >>> out.shape
        torch.Size([4, 5, 3])
        >>> torch.allclose(out[1], model(rot.act(1, x)), atol=1e-6)  # one batched forward vs one per element
        True
    """
    check_model(model)
    ensure_group(group)
    check_batch(group, x)
    els = resolve_elements(group, elements)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    action = resolve_output_action(output_action, group)
    if (
        shared_randomness is not False
        and shared_randomness is not True
        and not isinstance(shared_randomness, RandomState)
    ):
        raise TypeError(f"shared_randomness must be a bool or a RandomState, got {type(shared_randomness).__name__}")
    if shared_randomness is not False:
        parts = _replayed(model, group, x, els, shared_randomness)
    else:
        step = len(els) if chunk_size is None else chunk_size
        parts = [_forward(model, group, x, els[i : i + step]) for i in range(0, len(els), step)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    if action.trivial:
        return out
    return torch.stack([_act_on_output(action, group, g, out[i]) for i, g in enumerate(els)])


def _act_on_output(action: OutputAction, group: Group, g: Any, y: Tensor) -> Tensor:
    """``g^{-1} · y`` for the outputs ``y`` ``(B, ...)`` of ``g · x``, checked to keep ``y``'s shape."""
    back = action(group.inverse(g), y)
    if not isinstance(back, Tensor) or back.shape != y.shape:
        got = f"a tensor of shape {tuple(back.shape)}" if isinstance(back, Tensor) else type(back).__name__
        raise ValueError(
            f"the output action {action.name!r} must return a tensor of the output's shape {tuple(y.shape)} "
            f"(B, ...), one transformed output per sample; for element {group.element_name(group.inverse(g))} it "
            f"returned {got}"
        )
    return back


def resolve_elements(group: Group, elements: Sequence | None) -> list:
    """The checked list of elements to use: ``elements``, or every element of a finite group when ``None``.

    Raises:
        ValueError: ``None`` for a continuous group (it cannot list its elements) or for a finite group whose
            ``elements()`` is not a valid listing (:func:`~torchinvariance.groups.listed_elements`), an empty list,
            or an entry that is not an element.
        TypeError: ``elements`` is not a sequence.

    Example:
        >>> import torchinvariance as ti
        >>> ti.orbit.resolve_elements(ti.get_group("rotation", order=4), None)
        [0, 1, 2, 3]
        >>> ti.orbit.resolve_elements(ti.get_group("so2"), [-90])
        [270.0]
    """
    if elements is None:
        if not group.is_finite:
            raise ValueError(f"{group!r} is continuous: pass elements= (e.g. group.sample(8) or a list of angles)")
        return listed_elements(group)
    if isinstance(elements, (str, bytes)) or not isinstance(elements, Sequence):
        raise TypeError(
            f"elements must be a sequence of group elements (e.g. [1, 2]) or None; got {type(elements).__name__}"
        )
    els = [group.check_element(g) for g in elements]
    if not els:
        raise ValueError("elements must not be empty")
    return els


def _replayed(
    model: Callable[[Tensor], Any], group: Group, x: Tensor, els: list, state: bool | RandomState
) -> list[Tensor]:
    """One forward per element, each from the same random state; the generators end as the first forward left them."""
    start = RandomState(x.device) if state is True else state
    parts, after = [], None
    for g in els:
        start.restore()
        parts.append(_forward(model, group, x, [g]))
        if after is None:
            after = RandomState(x.device)
    after.restore()
    return parts


def _forward(model: Callable[[Tensor], Any], group: Group, x: Tensor, els: list[int]) -> Tensor:
    n, b = len(els), x.shape[0]
    # one element: its transform as is (stacking would copy the batch once more)
    rows = group.transform(els[0], x) if n == 1 else group.orbit(x, els).reshape(n * b, *x.shape[1:])
    out = model_output(model(rows), n * b)
    return out.reshape(n, b, *out.shape[1:])
