"""The one place for the names and labels of the paper benchmark: groups, divergences, models.

The divergence names are the library's own (:data:`torchinvariance.losses.DIVERGENCES`), so an IR model
exists for every built-in divergence and for nothing else.
"""

from __future__ import annotations

from torchinvariance.losses import DIVERGENCES as _LIBRARY_DIVERGENCES

GROUP_LABELS = {"rotation": "R^2_4", "translation": "T^2_3"}  # the paper's notation

DIVERGENCES: tuple[str, ...] = tuple(_LIBRARY_DIVERGENCES)  # l2, kl, normalized_l2
DIVERGENCE_LABELS = {"l2": "L2", "kl": "KL", "normalized_l2": "norm. L2"}

IR_MODELS = {f"IR-{d}": d for d in DIVERGENCES}  # model kind -> its regularizer's divergence
MODELS = ("WT", "WT-escnn", "DA", *IR_MODELS)

# labels in the figures' legends and titles
MODEL_LABELS = {
    "DA": "DA",
    "WT": "WT",
    "WT-escnn": "WT (escnn)",
    **{m: f"IR ({DIVERGENCE_LABELS.get(d, d)})" for m, d in IR_MODELS.items()},
}

# rows of Table 1 and their labels; the label's first word names the paper's row beside it
TABLE_MODELS = {"WT": "WT", "WT-escnn": "WT (escnn)", "DA": "DA", "IR-l2": "IR"}


def group_label(name: str) -> str:
    """The paper's notation for group ``name`` (the name itself for a group outside the paper)."""
    return GROUP_LABELS.get(name, name)
