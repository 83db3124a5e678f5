"""Testing helpers: is a model invariant or equivariant, and is a group a group.

- :func:`invariance_error` / :func:`assert_invariant` and :func:`equivariance_error` /
  :func:`assert_equivariant`: measure, then decide, on every element of the group;
- :func:`check_group`: the group axioms and the action on an input (also at
  :func:`torchinvariance.groups.check_group`).
"""

from torchinvariance.groups import check_group
from torchinvariance.testing._checks import (
    DEFAULT_TOLERANCES,
    assert_equivariant,
    assert_invariant,
    equivariance_error,
    invariance_error,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "assert_equivariant",
    "assert_invariant",
    "check_group",
    "equivariance_error",
    "invariance_error",
]
