"""Argument checks shared by the layers above the groups (losses, metrics, models, testing)."""

from __future__ import annotations

from typing import Any


def check_model(model: Any) -> None:
    """Raise :class:`TypeError` unless ``model`` is callable (e.g. an ``nn.Module``), saying what arrived."""
    if not callable(model):
        raise TypeError(f"model must be callable (e.g. an nn.Module), got {type(model).__name__}")
