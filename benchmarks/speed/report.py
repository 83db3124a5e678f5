"""The issue's targets checked from the measured ratios, and the Markdown tables of the report."""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.speed.timing import Ratios


def targets(results: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """The issue's targets, checked from the measured ratios (PASS/FAIL, never adjusted).

    The status is that of the median over the rounds; ``min`` and ``max`` are the extremes of the per-round
    ratios (timed ratios only), and the note says when that range reaches the other side of the limit.
    """
    out = []

    def add(section: str, key: str, name: str, op: str, limit: float, note: str = "") -> None:
        sec = results.get(section, {})
        value = sec.get("ratios", {}).get(key)
        if value is None:
            return
        ok = {"<=": lambda v: v <= limit, ">=": lambda v: v >= limit, ">": lambda v: v > limit}[op]
        lo, hi = sec.get("ratio_ranges", {}).get(key, (None, None))
        notes = [note] if note else []
        if lo is not None and ok(lo) != ok(hi):
            notes.append("the per-round range crosses the limit")
        out.append(
            {
                "target": name,
                "value": value,
                "min": lo,
                "max": hi,
                "op": op,
                "limit": limit,
                "status": "PASS" if ok(value) else "FAIL",
                "note": "; ".join(notes),
            }
        )

    cpu_note = "" if device.type == "cpu" else "target is stated for CPU"
    add("training", "ir/bound", "ir / bound", "<=", 1.03, cpu_note)
    add("training", "naive/ir", "naive / ir", ">=", 1.2, cpu_note)
    add("training", "ir_k1/floor_k1", "ir(elements=[g]) / floor at 2B", "<=", 1.05)
    add("training", "saved ir/bound", "saved memory ir / bound", "<=", 1.15)
    add(
        "scaling",
        "chunk_size=1 saved memory max/min over orders 2, 4, 8",
        "chunk_size=1 saved memory, max/min over orders 2, 4, 8",
        "<=",
        1.15,
    )
    add("metrics", "SI/floor", "SI / SI floor", "<=", 1.25)
    add("metrics", "SI captum per element/SI", "SI captum per element / SI", ">", 1.0)
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


def target_table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    """The targets as a Markdown table, measured values with 3 decimals (a 1.052 must not read as 1.05)."""
    shown = [
        {k: f"{v:.3f}" if k in ("value", "min", "max") and v is not None else v for k, v in r.items()} for r in rows
    ]
    return table(shown, cols)


def ratio_table(ratios: dict[str, float], ranges: dict[str, list[float]] | None = None) -> list[str]:
    """A Markdown table of named ratios: the median over the rounds, and the per-round min and max if timed."""
    ranges = ranges or {}
    rows = [
        {"ratio": k, "median": v, "min": ranges.get(k, (None,))[0], "max": ranges.get(k, (None, None))[1]}
        for k, v in ratios.items()
    ]
    return table(rows, ["ratio", "min", "median", "max"])


def print_rows(rows: list[dict[str, Any]], ratios: Ratios) -> None:
    """Print a section's rows and ratios as they are measured."""
    cols = [c for c in rows[0] if c != "blocks"]
    print("\n".join(table(rows, cols)))
    if ratios.values:
        print("\n".join(ratio_table(ratios.values, ratios.ranges)))


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
        *(
            [
                f"- machine load average (1, 5, 15 min; the benchmark itself adds up to 1): {meta['load_start']} "
                f"at the start, {meta['load_end']} at the end"
            ]
            if meta.get("load_start")
            else []
        ),
        f"- torch {meta['torch']}, python {meta['python']}, torchinvariance {meta['torchinvariance']}"
        + (f", commit {meta['git_commit'][:10]}" if meta.get("git_commit") else ""),
        f"- date (UTC): {meta['date']}; profile `{meta['profile']}`: {meta['config']['rounds']} interleaved "
        f"rounds of `Timer.blocked_autorange`, {meta['config']['min_run_time']} s of timed blocks per case; "
        "a time is the median over all blocks, a ratio the median over the rounds of the per-round ratio "
        "(min and max: the extremes of the per-round ratios)",
        "- `iqr_rel` is the interquartile range of the blocks relative to the median: the noise of each time; "
        "ratios are not more precise than that. In section 3 each `rounds` group is timed in its own rounds.",
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
            lines += ["", *ratio_table(sec["ratios"], sec.get("ratio_ranges"))]
        lines.append("")
    lines += ["## Targets", ""]
    lines += target_table(report["targets"], ["target", "value", "min", "max", "op", "limit", "status", "note"])
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in report["notes"]]]
    return "\n".join(lines) + "\n"
