"""``python -m benchmarks.speed``: see :mod:`benchmarks.speed.cli`."""

from benchmarks.speed.cli import main

main()
