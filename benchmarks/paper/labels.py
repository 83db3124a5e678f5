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
# IR variants outside the paper (issue 10, item 8): model kind -> (library divergence, its keyword options)
DETACHED = "IR-normalized_l2_detached"
IR_VARIANTS = {DETACHED: ("normalized_l2", {"detach_denominator": True})}
MODELS = ("WT", "WT-escnn", "DA", *IR_MODELS, *IR_VARIANTS)

# labels in the figures' legends and titles
MODEL_LABELS = {
    "DA": "DA",
    "WT": "WT",
    "WT-escnn": "WT (escnn)",
    **{m: f"IR ({DIVERGENCE_LABELS.get(d, d)})" for m, d in IR_MODELS.items()},
    DETACHED: "IR (norm. L2, detached denominator; not in the paper)",
}

# rows of Table 1 and their labels; the label's first word names the paper's row beside it
TABLE_MODELS = {"WT": "WT", "WT-escnn": "WT (escnn)", "DA": "DA", "IR-l2": "IR"}


def is_ir(model: str) -> bool:
    """Whether the model kind ``model`` is trained with an invariance regularizer (and so needs a tuned nu)."""
    return model in IR_MODELS or model in IR_VARIANTS


def group_label(name: str) -> str:
    """The paper's notation for group ``name`` (the name itself for a group outside the paper)."""
    return GROUP_LABELS.get(name, name)
