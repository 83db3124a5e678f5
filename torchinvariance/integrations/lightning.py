r"""Lightning integration: log the invariance metrics of a model on its validation data.

Needs Lightning 2 (``pip install "torchinvariance[lightning]"``). The metric classes themselves need nothing of this
module: they are :class:`torchmetrics.Metric` subclasses, so a LightningModule can also hold one and log it with
``self.log("li", self.li)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from torchinvariance.groups import Group, ensure_group
from torchinvariance.metrics import DistributionInvariance, LogitInvariance, SaliencyConfig, SaliencyInvariance

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
    from lightning.pytorch.trainer.states import TrainerFn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'torchinvariance.integrations.lightning needs Lightning 2: pip install "torchinvariance[lightning]"'
    ) from exc

__all__ = ["InvarianceMonitor"]

METRICS = ("di", "li", "si")
_CLASSES = {"di": DistributionInvariance, "li": LogitInvariance, "si": SaliencyInvariance}


def _unbound(x: Tensor) -> Tensor:
    """The stand-in model of the metrics built when the monitor is: they are rebuilt on the LightningModule."""
    raise RuntimeError("InvarianceMonitor: the metrics are not bound to a LightningModule yet")


def default_input(batch: Any) -> Tensor:
    """The input of a validation batch: the batch itself if it is a tensor, else its first item."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        f"InvarianceMonitor cannot find the input in a batch of type {type(batch).__name__}: the default reads a "
        "tensor or the first item of a tuple/list; pass get_input=lambda batch: ... (e.g. batch['image'])"
    )


class InvarianceMonitor(Callback):
    r"""Log DI, LI and/or SI of the LightningModule on its validation data, every ``every_n_epochs`` epochs.

    The metrics (:class:`~torchinvariance.DistributionInvariance`, :class:`~torchinvariance.LogitInvariance`,
    :class:`~torchinvariance.SaliencyInvariance`) are bound to the LightningModule and fed from the validation
    loop itself: after each validation batch, its input goes through the orbit of ``group`` (no second pass over the
    data), up to ``max_samples`` samples in all. The model is measured in ``eval()`` mode with every buffer left as
    it was. At the end of the validation epoch the values are logged as ``<prefix><metric>``, e.g.
    ``"invariance/li"`` (and, with ``per_element=True``, ``"invariance/li/rot90"`` per group element), so they
    reach the logger, the progress bar (``prog_bar=True``) and ``trainer.callback_metrics`` for a
    ``ModelCheckpoint(monitor="invariance/li")``.

    **Distributed.** Under DDP every process measures its own share of the validation data (the
    ``DistributedSampler`` Lightning adds) and torchmetrics sums the states over the processes before the values are
    computed, so every process logs the metric of all measured samples. ``max_samples`` is split evenly over the
    processes. As for any metric under DDP, the sampler may repeat a few samples to give every process the same
    number of batches.

    **Several validation dataloaders.** Each dataloader is measured on its own (up to ``max_samples`` samples
    each) and logged with Lightning's suffix, ``"invariance/li/dataloader_idx_0"``, ``".../dataloader_idx_1"``, as
    Lightning names ``val_loss``; with one dataloader the names have no suffix.

    **One monitor, several models.** The metrics are bound to the LightningModule of the current ``fit`` or
    ``validate``: a monitor reused with another model (a sweep, a second Trainer) measures that model, on the same
    elements.

    **Errors when built.** Every argument is checked in the constructor, with the metrics' own checks (a continuous
    group without ``elements``, an element the group rejects, ``chunk_size=0``, ...), so a mistake fails before
    ``trainer.fit`` starts, not after the first training epoch.

    The means follow the library's element averaging (non-identity elements unless ``include_identity=True``).
    SI needs gradients: its update runs outside Lightning's ``inference_mode`` (on a copy of the input). It costs
    ``n_steps`` forward and backward passes of the orbit per sample, so cap it with ``max_samples``.

    Args:
        group: the group to measure.
        metrics: any selection of ``("di", "li", "si")``; default ``("li", "di")``.
        every_n_epochs: measure in the validation of epochs ``n, 2n, ...`` (counted from 1) during ``fit``;
            ``trainer.validate()`` always measures.
        max_samples: at most this many validation samples in all, per validation dataloader (``None``: every
            sample).
        prefix: prepended to the logged names.
        include_identity: the element averaging of the means.
        elements: the elements to measure: ``None`` (every element of a finite group), a list (e.g. angles in
            degrees for ``so2``), or an int ``k``: ``k`` elements drawn once, when the monitor is built, with a
            generator seeded by ``seed`` (see :class:`~torchinvariance.LogitInvariance`), the same in every
            epoch, model and process. A continuous group needs a list or ``k``.
        seed: the seed of the draw for ``elements=k`` (default 0).
        per_element: also log one value per group element.
        prog_bar: show the values in the progress bar.
        get_input: ``batch -> x``; default: the batch itself or its first item.
        chunk_size: at most this many group elements per forward (DI, LI).
        saliency: the :class:`~torchinvariance.SaliencyConfig` of SI (default: the paper's recipe).

    Example:
        >>> import torchinvariance as ti
        >>> from torchinvariance.integrations.lightning import InvarianceMonitor
        >>> monitor = InvarianceMonitor(ti.get_group("rotation", order=4), metrics=("li", "di"), max_samples=512)
        >>> monitor.metric_names
        ['invariance/li', 'invariance/di']
        >>> InvarianceMonitor(ti.get_group("so2"), elements=[0.0, 45.0, 90.0]).element_names
        ['rot0', 'rot45', 'rot90']
        >>> InvarianceMonitor(ti.get_group("so2"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: SO2(...) is continuous: pass elements= (e.g. group.sample(8) or a list of angles)
    """

    def __init__(
        self,
        group: Group,
        metrics: Sequence[str] = ("li", "di"),
        every_n_epochs: int = 1,
        max_samples: int | None = None,
        *,
        prefix: str = "invariance/",
        include_identity: bool = False,
        elements: Sequence | int | None = None,
        seed: int = 0,
        per_element: bool = False,
        prog_bar: bool = False,
        get_input: Callable[[Any], Tensor] = default_input,
        chunk_size: int | None = None,
        saliency: SaliencyConfig | None = None,
    ) -> None:
        super().__init__()
        self.group = ensure_group(group)
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        if not names or len(set(names)) != len(names) or any(m not in METRICS for m in names):
            raise ValueError(f"metrics must be a non-empty selection without repeats of {METRICS}; got {metrics!r}")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}")
        if max_samples is not None and (
            isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
        ):
            raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
        if not isinstance(prefix, str):  # str(None) logged "Noneli"
            raise TypeError(f"prefix must be a str prepended to the logged names (e.g. 'invariance/'); got {prefix!r}")
        if not isinstance(include_identity, bool):
            raise TypeError(f"include_identity must be a bool, got {include_identity!r}")
        if not callable(get_input):
            raise TypeError(f"get_input must be a callable batch -> x, got {get_input!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"chunk_size must be a positive int (group elements per forward) or None; got {chunk_size!r}"
            )
        if saliency is not None and not isinstance(saliency, SaliencyConfig):
            raise TypeError(f"saliency must be a SaliencyConfig (the SI recipe) or None; got {type(saliency).__name__}")
        self.metrics = names
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self.prefix = prefix
        self.include_identity = include_identity
        self.per_element = bool(per_element)
        self.prog_bar = bool(prog_bar)
        self.get_input = get_input
        self.chunk_size = chunk_size
        self.saliency = saliency or SaliencyConfig()
        self.seed = seed
        # built now on a stand-in model, so that the metrics' checks of group, elements and seed run here; the
        # resolved elements (a drawn k included) are kept, and every later build binds a model to the same ones
        self._meters: dict[str, Any] = self._make(_unbound, elements)
        self.elements = next(iter(self._meters.values())).elements  # None: the whole finite group
        self._bound: Any = None  # the LightningModule the metrics measure
        self._active = False
        # one set of metrics and one sample budget per validation dataloader (the first set is self._meters)
        self._loader_meters: list[dict[str, Any]] = [self._meters]
        self._left: list[int | None] = [None]

    @property
    def metric_names(self) -> list[str]:
        """The names the metric values are logged under."""
        return [f"{self.prefix}{m}" for m in self.metrics]

    @property
    def element_names(self) -> list[str]:
        """The names of the measured elements (the suffixes of the per-element values)."""
        return list(next(iter(self._meters.values())).element_names)

    def _make(self, model: Callable[[Tensor], Any], elements: Sequence | int | None) -> dict[str, Any]:
        options: dict[str, Any] = {"elements": elements, "seed": self.seed, "include_identity": self.include_identity}
        meters: dict[str, Any] = {}
        for name in self.metrics:
            if name == "si":
                meters[name] = SaliencyInvariance(model, self.group, config=self.saliency, **options)
            else:
                meters[name] = _CLASSES[name](model, self.group, chunk_size=self.chunk_size, **options)
        return meters

    def _bind(self, pl_module: LightningModule) -> None:
        """Measure ``pl_module``: new metrics when it is not the module they measure (another model, a sweep)."""
        if self._bound is not pl_module:
            self._meters = self._make(pl_module, self.elements)
            self._loader_meters = [self._meters]
            self._bound = pl_module

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._bind(pl_module)

    def _should_measure(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = self._should_measure(trainer)
        if not self._active:
            return
        self._bind(pl_module)
        n_loaders = max(len(trainer.num_val_batches), 1)
        while len(self._loader_meters) < n_loaders:
            self._loader_meters.append(self._make(pl_module, self.elements))
        for meters in self._loader_meters:
            for meter in meters.values():
                meter.reset()
                meter.to(pl_module.device)
        if self.max_samples is None:
            left = None
        else:  # an even split over the processes, the remainder to the first ones: max_samples in all
            world, rank = max(trainer.world_size, 1), trainer.global_rank
            left = self.max_samples // world + (1 if rank < self.max_samples % world else 0)
        self._left = [left] * n_loaders

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._active or dataloader_idx >= len(self._left):
            return
        left = self._left[dataloader_idx]
        if left is not None and left <= 0:
            return
        x = self.get_input(batch)
        if left is not None:
            x = x[:left]
            self._left[dataloader_idx] = left - x.shape[0]
        # out of Lightning's inference mode: the states stay ordinary tensors, and SI can take gradients
        with torch.inference_mode(False):
            x = x.clone()
            for meter in self._loader_meters[dataloader_idx].values():
                meter.update(x)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._active:
            return
        self._active = False
        n_loaders = len(self._left)
        for idx, meters in enumerate(self._loader_meters[:n_loaders]):
            # several validation dataloaders: one value each, with Lightning's own suffix (as val_loss gets)
            suffix = f"/dataloader_idx_{idx}" if n_loaders > 1 else ""
            for name, meter in meters.items():
                if meter.compute_count() == 0:  # synced: the same answer on every process
                    continue
                value = meter.compute()
                # every process holds the same, already synced value: sync_dist=True averages identical numbers
                # (and keeps Lightning from warning about unsynced epoch-level values)
                log = {"sync_dist": True, "add_dataloader_idx": False}
                pl_module.log(f"{self.prefix}{name}{suffix}", value, prog_bar=self.prog_bar, **log)
                if self.per_element:
                    for element, v in zip(meter.element_names, meter.compute_per_element()):
                        pl_module.log(f"{self.prefix}{name}/{element}{suffix}", v, **log)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(group={self.group!r}, metrics={tuple(self.metrics)}, "
            f"every_n_epochs={self.every_n_epochs}, max_samples={self.max_samples})"
        )
