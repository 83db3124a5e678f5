"""The issue's targets checked from the measured ratios, and the Markdown tables of the report."""

from __future__ import annotations

from typing import Any

import torch


def targets(results: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """The issue's targets, checked from the measured ratios (PASS/FAIL, never adjusted)."""
    out = []

    def add(name: str, value: float | None, op: str, limit: float, note: str = "") -> None:
        if value is None:
            return
        ok = {"<=": value <= limit, ">=": value >= limit, ">": value > limit}[op]
        out.append(
            {"target": name, "value": value, "op": op, "limit": limit, "status": "PASS" if ok else "FAIL", "note": note}
        )

    tr = results.get("training", {}).get("ratios", {})
    cpu_note = "" if device.type == "cpu" else "target is stated for CPU"
    add("ir / bound", tr.get("ir/bound"), "<=", 1.03, cpu_note)
    add("naive / ir", tr.get("naive/ir"), ">=", 1.2, cpu_note)
    add("ir(elements=[g]) / floor at 2B", tr.get("ir_k1/floor_k1"), "<=", 1.05)
    add("saved memory ir / bound", tr.get("saved ir/bound"), "<=", 1.15)
    sc = results.get("scaling", {}).get("ratios", {})
    add(
        "chunk_size=1 saved memory, max/min over orders 2, 4, 8",
        sc.get("chunk_size=1 saved memory max/min over orders 2, 4, 8"),
        "<=",
        1.15,
    )
    me = results.get("metrics", {}).get("ratios", {})
    add("SI / SI floor", me.get("SI/floor"), "<=", 1.25)
    add("SI captum per element / SI", me.get("SI captum per element/SI"), ">", 1.0)
    return out


def fmt(v: Any) -> str:
    """A table cell: ``-`` for missing, floats with a precision that fits their size."""
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3f}"
    return str(v)


def table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    """A Markdown table of ``rows`` with the columns ``cols``, one line per list item."""
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in cols) + " |")
    return lines


def ratio_table(ratios: dict[str, float]) -> list[str]:
    """A two-column Markdown table of named ratios."""
    return table([{"ratio": k, "value": v} for k, v in ratios.items()], ["ratio", "value"])


def print_rows(rows: list[dict[str, Any]], ratios: dict[str, float]) -> None:
    """Print a section's rows and ratios as they are measured."""
    cols = [c for c in rows[0] if c != "blocks"]
    print("\n".join(table(rows, cols)))
    if ratios:
        print("\n".join(ratio_table(ratios)))


TITLES = {
    "training": "1. Training step (paper MLP, batch {batch}, rotations of order 4)",
    "scaling": "2. Scaling (batch {batch})",
    "metrics": "3. Metrics throughput (rotations of order 4, SI with {n_steps}-step Integrated Gradients)",
    "weight_tying": "4. Weight-tying cost (forward + backward, batch {batch})",
}


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: machine, command, one table per section, the targets."""
    meta = report["meta"]
    lines = [
        "# torchinvariance speed benchmark",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['cpu']} ({meta['cpu_count']} logical CPUs visible, {meta['threads']} torch threads), "
        f"device `{meta['device']}`" + (f" ({meta['gpu']})" if meta.get("gpu") else ""),
        f"- torch {meta['torch']}, python {meta['python']}, torchinvariance {meta['torchinvariance']}"
        + (f", commit {meta['git_commit'][:10]}" if meta.get("git_commit") else ""),
        f"- date (UTC): {meta['date']}; profile `{meta['profile']}`: {meta['config']['rounds']} interleaved "
        f"rounds of `Timer.blocked_autorange`, {meta['config']['min_run_time']} s of timed blocks per case; "
        "a time is the median over all blocks, a ratio the median over the rounds of the per-round ratio",
        "- `iqr_rel` is the interquartile range of the blocks relative to the median: the noise of each time; "
        "ratios are not more precise than that.",
        "",
    ]
    for key, title in TITLES.items():
        sec = report["results"].get(key)
        if not sec:
            continue
        lines += [f"## {title.format(**sec)}", ""]
        cols = [c for c in sec["rows"][0] if c != "blocks" and any(r.get(c) is not None for r in sec["rows"])]
        lines += table(sec["rows"], cols)
        if sec.get("compiled"):
            comp = sec["compiled"]
            lines += [
                "",
                f"Under `torch.compile`: bound {fmt(comp['bound_ms'])} ms, ir {fmt(comp['ir_ms'])} ms.",
            ]
        if sec.get("ratios"):
            lines += ["", *ratio_table(sec["ratios"])]
        lines.append("")
    lines += ["## Targets", ""]
    lines += table(report["targets"], ["target", "value", "op", "limit", "status", "note"])
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"
