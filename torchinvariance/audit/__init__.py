r"""``python -m torchinvariance audit``: measure how invariant an existing trained classifier is.

.. code-block:: console

   $ python -m torchinvariance audit --model torchvision.models:resnet18 --model-kwargs '{"num_classes": 10}' \
         --group rotation:order=4 --input-shape 3,32,32 --samples 8 --out audit-resnet18

For every named group the audit measures, per group element and overall, accuracy (where the data have labels),
top-1 consistency across the orbit, DI, LI and (``--metrics di,li,si``) SI, each beside two reference points: the
same metric for the group-averaged model (:class:`~torchinvariance.GroupAveraged`, invariant by construction) and
on random inputs with the data's per-channel statistics. It writes ``report.json``, ``report.md`` and PNG figures
to ``--out``; nothing is downloaded. :func:`run_audit` does the same from Python with an :class:`AuditConfig`.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

from torchinvariance.audit._config import AuditConfig, AuditError, GroupSpec, build_parser, parse_args
from torchinvariance.audit._run import markdown, run_audit

__all__ = ["AuditConfig", "AuditError", "GroupSpec", "build_parser", "main", "markdown", "parse_args", "run_audit"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``audit`` command: parse ``argv``, run, print where the report is; 2 and a message on bad input."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(args)
        result = run_audit(cfg, command="python -m torchinvariance audit " + shlex.join(args))
    except AuditError as exc:
        print(f"audit: error: {exc}", file=sys.stderr)
        return 2
    d = result["data"]
    if d["samples"] < d.get("samples_requested", d["samples"]):
        print(f"audit: warning: --samples {d['samples_requested']}, but {cfg.data} has {d['samples']} usable samples")
    for g in result["groups"]:
        s = g["summary"]
        labels = {"di": "DI", "li": "LI", "si": "SI", "error": "equivariance error"}

        bad = g.get("not_finite", {})

        def ref(k, where, bad=bad, s=s):
            if k in bad.get(where, {}):
                return "not finite"
            return "none" if s[k][where] is None else f"{s[k][where]:.4g}"

        shown = {k: label for k, label in labels.items() if k in s}
        if not shown and "consistency" in s:  # --metrics worst,flip,discover only: no DI, LI, SI to show
            shown = {"consistency": "top-1 consistency"}
        parts = [f"{label} {ref(k, 'model')} (group-averaged {ref(k, 'group_averaged')})" for k, label in shown.items()]
        print(f"{g['group']}: " + ", ".join(parts))
        for where, metrics in bad.items():
            names = ", ".join(labels.get(k, k) for k in metrics)
            print(f"audit: warning: {g['group']}: {names} of {where.replace('_', ' ')} not finite (see report.md)")
    n_figures = sum(len(g["figures"]) for g in result["groups"]) + int("figure" in result.get("discover", {}))
    figures = f"{n_figures} figure{'' if n_figures == 1 else 's'}"
    print(f"wrote report.json, report.md and {figures} to {cfg.out} in {result['seconds']:.1f} s")
    return 0
