"""``python -m torchinvariance COMMAND``: the command-line tools (``audit``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m torchinvariance COMMAND [options]

commands:
  audit   measure how invariant a trained classifier is (python -m torchinvariance audit --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a command; print the usage for none or an unknown one."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    if args[0] == "audit":
        from torchinvariance.audit import main as audit_main

        return audit_main(args[1:])
    print(f"unknown command {args[0]!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
