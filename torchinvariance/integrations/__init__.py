"""Integrations with training frameworks, each behind its optional extra.

- :mod:`torchinvariance.integrations.lightning`: :class:`~torchinvariance.integrations.lightning.InvarianceMonitor`,
  a Lightning callback that logs DI, LI and SI on the validation data (``pip install "torchinvariance[lightning]"``).

Importing this package imports no framework; each submodule imports its own, with an error that names the extra.
"""

__all__: list[str] = []
