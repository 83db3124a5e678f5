"""Weight-tying baselines and reference models (built on :mod:`torchinvariance.groups`).

- :class:`MLP`: the paper's 5-layer ReLU perceptron.
- :class:`GroupInvariantMLP`: its first layer tied over any finite group and pooled (exactly invariant).
- :class:`EscnnInvariantMLP`: the same idea with an escnn steerable layer (optional ``escnn`` extra).
- :class:`GroupAveraged`: wrap any model and average its outputs over the orbit (exactly invariant).
- :func:`describe`: parameter counts and forward FLOPs, to compare baselines fairly.
"""

from torchinvariance.models._averaged import GroupAveraged
from torchinvariance.models._describe import ModelDescription, describe
from torchinvariance.models._escnn import EscnnInvariantMLP
from torchinvariance.models._mlp import MLP, PAPER_PARAMETER_COUNT, GroupInvariantMLP, mlp_parameter_count

__all__ = [
    "MLP",
    "PAPER_PARAMETER_COUNT",
    "EscnnInvariantMLP",
    "GroupAveraged",
    "GroupInvariantMLP",
    "ModelDescription",
    "describe",
    "mlp_parameter_count",
]
