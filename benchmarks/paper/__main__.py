"""``python -m benchmarks.paper``: see :mod:`benchmarks.paper.cli`."""

from benchmarks.paper.cli import main

raise SystemExit(main())
