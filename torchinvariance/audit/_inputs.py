"""The audit's inputs: the model (factory, checkpoint), the device and the data, with errors that name the fix."""

from __future__ import annotations

import gzip
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchinvariance.audit._config import AuditConfig, AuditError, parse_normalize

__all__ = ["AuditData", "build_model", "describe_tensor", "load_data", "pick_device", "random_like"]

_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fmnist": "FashionMNIST"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


# ---------------------------------------------------------------------------- device
def pick_device(name: str) -> torch.device:
    """``auto``: CUDA if available, else MPS if available, else the CPU; or the device named."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise AuditError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AuditError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    return device


# ---------------------------------------------------------------------------- model
def _exception(exc: BaseException) -> str:
    """``TypeName: first line of the message``, for error messages that name what went wrong."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AuditError(f"--model {spec!r}: expected MODULE:FACTORY, e.g. torchvision.models:resnet18")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AuditError(
            f"--model {spec!r}: cannot import module {module_name!r} ({exc}); install the package that provides it "
            "or put the folder holding it on PYTHONPATH"
        ) from exc
    except Exception as exc:  # the module's own code failed while it was imported (SyntaxError, RuntimeError, ...)
        raise AuditError(
            f"--model {spec!r}: importing module {module_name!r} raised {_exception(exc)}; fix the module"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            options = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))[:12]
            raise AuditError(
                f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}; callables there include {options}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise AuditError(f"--model {spec!r}: {attr!r} is not callable (a class or a function building the model)")
    return obj


def build_model(cfg: AuditConfig) -> nn.Module:
    """The model ``FACTORY(**model_kwargs)`` with the checkpoint's weights, in ``eval()`` mode on the CPU."""
    factory = _factory(cfg.model)
    try:
        model = factory(**cfg.model_kwargs)
    except TypeError as exc:
        raise AuditError(
            f"--model {cfg.model!r} could not be built with --model-kwargs {cfg.model_kwargs}: {exc}; check the "
            "factory's arguments"
        ) from exc
    except Exception as exc:  # anything the factory itself raises (RuntimeError, ValueError, an OSError, ...)
        raise AuditError(
            f"--model {cfg.model!r}: the factory raised {_exception(exc)} when called with --model-kwargs "
            f"{cfg.model_kwargs}; fix the factory or its arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise AuditError(f"--model {cfg.model!r} returned {type(model).__name__}, not a torch.nn.Module")
    if cfg.checkpoint is not None:
        _load_checkpoint(model, cfg)
    return model.eval()


def _load_checkpoint(model: nn.Module, cfg: AuditConfig) -> None:
    path = Path(cfg.checkpoint)  # type: ignore[arg-type]
    if not path.is_file():
        raise AuditError(f"--checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch.save file (a text file raises KeyError), pickled objects, truncated
        raise AuditError(
            f"--checkpoint {path} cannot be loaded with weights_only=True ({_exception(exc)}); it must be a file "
            "written by torch.save holding a plain state_dict: torch.save(model.state_dict(), PATH)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a checkpoint that wraps the state_dict (e.g. Lightning's)
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise AuditError(
            f"--checkpoint {path} holds a {type(state).__name__}, not a state_dict; save it with "
            "torch.save(model.state_dict(), PATH)"
        )
    own = model.state_dict()
    not_tensors = [f"{k}: {type(v).__name__}" for k, v in state.items() if k in own and not isinstance(v, Tensor)]
    if not_tensors:
        raise AuditError(
            f"--checkpoint {path}: {len(not_tensors)} entries hold something else than a tensor (e.g. "
            f"{not_tensors[:3]}); a state_dict maps each parameter and buffer name to a tensor: save it with "
            "torch.save(model.state_dict(), PATH)"
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if isinstance(state[k], Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise AuditError(
            f"--checkpoint {path} does not match the model built by {cfg.model}(**{cfg.model_kwargs}): "
            f"{'; '.join(parts)}. Check --model and --model-kwargs (e.g. num_classes, in_shape) against the "
            "model the checkpoint was saved from"
        )
    try:
        model.load_state_dict(state)
    except Exception as exc:  # what the model's own load hooks reject
        raise AuditError(
            f"--checkpoint {path} does not load into the model built by {cfg.model}(**{cfg.model_kwargs}): "
            f"{_exception(exc)}"
        ) from exc


# ---------------------------------------------------------------------------- data
@dataclass(frozen=True)
class AuditData:
    """The audited inputs ``x`` ``(N, C, H, W)``, labels ``y`` (or ``None``) and where they came from."""

    x: Tensor
    y: Tensor | None
    source: str
    skipped: int = 0  # samples left out because their label is not a class of the model
    normalized: str = "none"  # the --normalize that was applied ("none" for random inputs, whatever was asked)


def _read_idx(path: Path) -> Tensor:
    """An IDX file (MNIST's format), gzip or not, as a uint8 tensor."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise AuditError(f"{path} is not an IDX file of unsigned bytes; replace it with the official file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    n = 1
    for d in dims:
        n *= d
    if len(raw) - offset != n:
        raise AuditError(f"{path} is truncated or corrupt ({len(raw) - offset} bytes of data, {n} expected)")
    return torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8).reshape(dims)


def _mnist(cfg: AuditConfig) -> tuple[Tensor, Tensor]:
    folder = _TORCHVISION_FOLDERS[cfg.data]
    if cfg.data_root is None:
        raise AuditError(
            f"--data {cfg.data} reads {folder}/raw/ under $TORCHINVARIANCE_DATA or --data-root (nothing is "
            "downloaded); set one of them to the folder that holds it"
        )
    raw = Path(cfg.data_root) / folder / "raw"
    files = []
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        path = next((p for p in (raw / name, raw / f"{name}.gz") if p.is_file()), None)
        if path is None:
            raise AuditError(
                f"--data {cfg.data}: {raw / name}[.gz] not found (nothing is downloaded). Put the official test "
                f"files into {raw}/ (torchvision's layout) or point --data-root / $TORCHINVARIANCE_DATA at a folder "
                f"that has {folder}/raw/"
            )
        files.append(path)
    images, labels = _read_idx(files[0]), _read_idx(files[1])
    return images.unsqueeze(1).float() / 255.0, labels.long()


def _folder(cfg: AuditConfig) -> tuple[Tensor, Tensor | None]:
    root = Path(cfg.data[len("folder:") :]).expanduser()
    if not root.is_dir():
        raise AuditError(f"--data {cfg.data}: {root} is not a folder")
    try:
        from PIL import Image
    except ImportError as exc:
        raise AuditError("--data folder:PATH reads images with Pillow: pip install pillow") from exc
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if classes:  # ImageFolder layout: one subfolder per class, labels by sorted folder name
        items = [
            (p, i)
            for i, c in enumerate(classes)
            for p in sorted((root / c).iterdir())
            if p.suffix.lower() in _IMAGE_SUFFIXES
        ]
    else:
        items = [(p, None) for p in sorted(root.iterdir()) if p.suffix.lower() in _IMAGE_SUFFIXES]
    if not items:
        raise AuditError(f"--data {cfg.data}: no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) in {root}")
    c, h, w = cfg.input_shape
    if c not in (1, 3):
        raise AuditError(f"--data folder: images are read as 1 (grayscale) or 3 (RGB) channels, not {c}")
    xs, ys = [], []
    for path, label in items[: cfg.samples]:
        try:
            with Image.open(path) as img:
                pixels = img.convert("L" if c == 1 else "RGB")  # decodes the file: a truncated one fails here
                arr = torch.frombuffer(bytearray(pixels.tobytes()), dtype=torch.uint8)
                size = img.size
        except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError (broken PNG), ...
            raise AuditError(
                f"--data {cfg.data}: cannot read the image {path} ({_exception(exc)}); remove or replace that file "
                "(the audit does not skip unreadable images: the samples would no longer be the first --samples)"
            ) from exc
        t = arr.reshape(size[1], size[0], c).permute(2, 0, 1).float().unsqueeze(0) / 255.0
        xs.append(F.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0])
        ys.append(label)
    y = None if classes == [] else torch.tensor(ys, dtype=torch.long)
    return torch.stack(xs), y


def _fit(x: Tensor, shape: tuple[int, int, int], source: str) -> Tensor:
    """Images ``(N, c, h, w)`` -> ``(N, C, H, W)``: grayscale repeated to C channels, centred zero-padding or crop."""
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] != 1:
            raise AuditError(f"--data {source} has {x.shape[1]} channels, the model wants {c} (--input-shape)")
        x = x.expand(-1, c, -1, -1)
    for dim, size in ((2, h), (3, w)):
        have = x.shape[dim]
        if have < size:  # centred zero padding, like the paper's 28 -> 36
            before = (size - have) // 2
            pad = [0, 0, 0, 0]
            pad[2 * (3 - dim)] = before
            pad[2 * (3 - dim) + 1] = size - have - before
            x = F.pad(x, pad)
        elif have > size:
            start = (have - size) // 2
            x = x.narrow(dim, start, size)
    return x.contiguous()


def _normalize(x: Tensor, spec: str) -> Tensor:
    if spec == "none":
        return x
    if spec == "standardize":
        dims = (0, 2, 3)
        return (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True).clamp_min(1e-12)
    means, stds = parse_normalize(spec, x.shape[1])  # type: ignore[misc]
    mean, std = torch.tensor(means, dtype=x.dtype), torch.tensor(stds, dtype=x.dtype)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def load_data(cfg: AuditConfig, n_classes: int | None) -> AuditData:
    """The first ``cfg.samples`` inputs of ``cfg.data``, fitted to ``cfg.input_shape`` and normalized.

    Samples whose label is not a class of the model (``label >= n_classes``, e.g. MNIST's 9 for the paper's
    9-class models) are left out and counted in ``skipped``.
    """
    if cfg.data == "random":  # drawn in the model's input space: --normalize is checked but not applied
        parse_normalize(cfg.normalize, cfg.input_shape[0])
        g = torch.Generator().manual_seed(cfg.seed)
        return AuditData(torch.randn(cfg.samples, *cfg.input_shape, generator=g), None, "random N(0, 1)")
    if cfg.data in _TORCHVISION_FOLDERS:
        x, y = _mnist(cfg)
    else:
        x, y = _folder(cfg)
    skipped = 0
    if y is not None and n_classes is not None:
        keep = y < n_classes
        idx = torch.nonzero(keep).flatten()[: cfg.samples]
        if idx.numel() == 0:
            raise AuditError(f"--data {cfg.data}: no sample has a label below the model's {n_classes} classes")
        read = keep if idx.numel() < cfg.samples else keep[: int(idx[-1]) + 1]  # fewer kept than asked: all read
        skipped = int((~read).sum())  # left out among the samples read
        x, y = x[idx], y[idx]
    else:
        x, y = x[: cfg.samples], (None if y is None else y[: cfg.samples])
    x = _normalize(_fit(x, cfg.input_shape, cfg.data), cfg.normalize)
    return AuditData(x, y, cfg.data, skipped, normalized=cfg.normalize)


def random_like(x: Tensor, seed: int) -> Tensor:
    """Gaussian noise with the per-channel mean and std of ``x`` ``(N, C, H, W)``: the random-input reference."""
    g = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
    mean, std = x.mean((0, 2, 3), keepdim=True), x.std((0, 2, 3), keepdim=True)
    return noise * std + mean


def describe_tensor(x: Tensor) -> dict[str, list[float]]:
    """Per-channel mean and std, for the report."""
    return {"mean": x.mean((0, 2, 3)).tolist(), "std": x.std((0, 2, 3)).tolist()}
