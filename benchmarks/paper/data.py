"""Transforming-MNIST / Transforming-FMNIST exactly as in the paper's §4.1.

- MNIST without the digit 9, Fashion-MNIST without its last class ("Ankle boot"): 9 classes;
- 28x28 zero-padded to 36x36;
- the official train+test images pooled, shuffled with a fixed seed and split 10k train / 50k test / 2k val;
- normalized to zero mean and unit std with the train split's statistics;
- every sample transformed by a group element drawn uniformly: re-drawn every epoch for training (see
  :func:`epoch_draws`), fixed per sample (seeded) for validation and test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import torchinvariance as ti

DATASETS = {"mnist": "MNIST", "fmnist": "FashionMNIST"}
NUM_CLASSES = 9
N_RAW_CLASSES = 10  # classes in the official files, before the last one is dropped
PAD = 4  # 28 + 2 * 4 = 36
SPLIT_SEED = 0  # the fixed seed of the shuffle/split and of the fixed val/test transforms
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataUnavailableError(RuntimeError):
    """The dataset files are missing and could not be downloaded."""


def default_data_root() -> Path:
    """``$TORCHINVARIANCE_DATA``, else the user cache dir (``~/.cache/torchinvariance/data``)."""
    env = os.environ.get("TORCHINVARIANCE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "torchinvariance" / "data"


def load_raw(name: str, root: Path) -> tuple[Tensor, Tensor]:
    """All 70k official images (uint8, 28x28) and labels of ``name``, train then test."""
    import torchvision

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    cls = getattr(torchvision.datasets, DATASETS[name])
    raw_dir = Path(root) / DATASETS[name] / "raw"
    have = all((raw_dir / f).exists() or (raw_dir / (f + ".gz")).exists() for f in RAW_FILES)
    if have:
        for f in RAW_FILES:
            check_idx(raw_dir / f if (raw_dir / f).exists() else raw_dir / (f + ".gz"))
    try:
        parts = [cls(root=str(root), train=train, download=not have) for train in (True, False)]
    except Exception as exc:  # network errors come in many types
        raise DataUnavailableError(
            f"could not find or download {DATASETS[name]} under {root}: {type(exc).__name__}: {exc}\n"
            f"Put the four files {', '.join(RAW_FILES)} (optionally .gz) into {raw_dir}/ "
            "(torchvision's layout), or point --data-root / TORCHINVARIANCE_DATA at a folder that has "
            f"{DATASETS[name]}/raw/."
        ) from exc
    for part, f in zip(parts, (RAW_FILES[1], RAW_FILES[3])):
        targets = torch.as_tensor(part.targets)
        bad = targets[(targets < 0) | (targets >= N_RAW_CLASSES)]
        if bad.numel():
            raise DataUnavailableError(
                f"{raw_dir / f} holds label {int(bad[0])}, outside the {N_RAW_CLASSES} classes 0..{N_RAW_CLASSES - 1} "
                f"of {DATASETS[name]}: the file is corrupt; replace it with the official one"
            )
    images = torch.cat([p.data for p in parts])
    labels = torch.cat([torch.as_tensor(p.targets) for p in parts])
    return images, labels


_IDX_DTYPES = {0x08: 1}  # unsigned byte, the only type of the MNIST / Fashion-MNIST files


def check_idx(path: Path) -> None:
    """Raise :class:`DataUnavailableError` naming ``path`` if it is not a complete IDX file.

    Checks the magic number (two zero bytes, the type code, the number of dimensions) and that the file holds
    exactly the bytes its header announces; ``.gz`` files are decompressed first.
    """
    import gzip
    import struct

    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataUnavailableError(f"{path} cannot be read ({type(exc).__name__}: {exc}): the file is corrupt") from exc
    problem = None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or not 1 <= raw[3] <= 3:
        problem = f"its first bytes {raw[:4].hex()} are not an IDX header of unsigned bytes"
    else:
        ndim = raw[3]
        if len(raw) < 4 + 4 * ndim:
            problem = f"it ends inside its header ({len(raw)} bytes)"
        else:
            dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
            expected = 4 + 4 * ndim + _IDX_DTYPES[raw[2]] * int(torch.tensor(dims).prod())
            if len(raw) != expected:
                problem = f"its header announces {dims} ({expected} bytes) but it holds {len(raw)} bytes"
    if problem:
        raise DataUnavailableError(
            f"{path} is corrupt: {problem}. Replace it with the official file (torchvision's layout)"
        )


@dataclass
class Split:
    """One split: normalized 36x36 images ``(N, 1, 36, 36)``, labels and the fixed group elements."""

    x: Tensor
    y: Tensor
    elements: Tensor | None = None  # fixed transform of each sample (val/test); None = untransformed

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(self.x[:n], self.y[:n], None if self.elements is None else self.elements[:n])


@dataclass
class TransformingDataset:
    """The three splits of a Transforming-(F)MNIST dataset for one group."""

    name: str
    group: ti.Group
    train: Split
    val: Split
    test: Split
    mean: float
    std: float
    raw_test_images: Tensor  # uint8 28x28 test images, before padding/normalizing/transforming
    test_index: Tensor  # indices of test samples in the pooled 70k set


def pad_and_scale(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 36, 36) in [0, 1], zero-padded."""
    x = images.float().div_(255.0).unsqueeze(1)
    return torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))


def split_indices(n_total: int, sizes: tuple[int, int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Shuffle ``range(n_total)`` with the fixed seed; return train / test / val indices."""
    n_train, n_test, n_val = sizes
    if n_train + n_test + n_val > n_total:
        raise ValueError(f"split sizes {sizes} need {sum(sizes)} samples, only {n_total} available")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return perm[:n_train], perm[n_train : n_train + n_test], perm[n_train + n_test : n_train + n_test + n_val]


def fixed_elements(group: ti.Group, n: int, salt: int) -> Tensor:
    """One seeded group element per sample, for the fixed val/test transforms."""
    gen = torch.Generator().manual_seed(SPLIT_SEED * 1000 + salt)
    return torch.as_tensor(group.sample(n, generator=gen), dtype=torch.long)


def build(
    name: str,
    group: ti.Group,
    root: Path,
    sizes: tuple[int, int, int] = (10_000, 50_000, 2_000),
) -> TransformingDataset:
    """Build Transforming-``name`` for ``group`` (see the module docstring)."""
    images, labels = load_raw(name, root)
    keep = labels != NUM_CLASSES  # drop digit 9 / "Ankle boot" (class index 9)
    images, labels = images[keep], labels[keep]
    tr, te, va = split_indices(len(labels), sizes)
    x_train = pad_and_scale(images[tr])
    mean, std = x_train.mean().item(), x_train.std().item()

    def make(idx: Tensor, salt: int | None) -> Split:
        x = (pad_and_scale(images[idx]) - mean) / std
        y = labels[idx].long()
        if salt is None:
            return Split(x, y)
        els = fixed_elements(group, len(idx), salt)
        return Split(group.act_per_sample(els, x), y, els)

    return TransformingDataset(
        name=name,
        group=group,
        train=make(tr, None),
        val=make(va, 1),
        test=make(te, 2),
        mean=mean,
        std=std,
        raw_test_images=images[te],
        test_index=te,
    )


def epoch_draws(n: int, order: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One epoch's random draws of one run, made at once on the generator's device: ``(order, elements)``.

    ``order`` is the permutation of the ``n`` training samples (the data order) and ``elements[i]`` the group
    element that augments the ``i``-th sample of that order, drawn uniformly. The training step then gathers
    ``orbit[elements[j], order[j]]`` from the precomputed orbit of the training split, with no host sync.
    """
    perm = torch.randperm(n, generator=generator, device=generator.device)
    els = torch.randint(order, (n,), generator=generator, device=generator.device)
    return perm, els


def drifted_test(
    source: TransformingDataset,
    target_images: Tensor,
    target_labels: Tensor,
    beta: float,
    n: int | None = None,
) -> Split:
    r"""The drifted test set :math:`D(\beta) = (1-\beta) D_{MNIST} + \beta D_{FMNIST}` (paper §4.3).

    Pixel-wise interpolation of each source test image with a target image of the SAME class index (the
    k-th source image of class c is paired with the k-th target image of class c, cycling), then the
    source's padding, normalization and fixed group transform. Labels stay the source labels.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    src = source.raw_test_images
    y = source.test.y
    if n is not None:
        src, y = src[:n], y[:n]
    partner = torch.empty(len(y), dtype=torch.long)
    for c in range(NUM_CLASSES):
        idx_src = (y == c).nonzero().squeeze(1)
        idx_tgt = (target_labels == c).nonzero().squeeze(1)
        if len(idx_tgt) == 0:
            raise ValueError(f"target dataset has no images of class {c}")
        partner[idx_src] = idx_tgt[torch.arange(len(idx_src)) % len(idx_tgt)]
    mixed = (1.0 - beta) * pad_and_scale(src) + beta * pad_and_scale(target_images[partner])
    x = (mixed - source.mean) / source.std
    els = source.test.elements if n is None else source.test.elements[:n]
    return Split(source.group.act_per_sample(els, x), y, els)
