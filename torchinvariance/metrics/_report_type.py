"""The result of :func:`~torchinvariance.evaluate_invariance`: :class:`InvarianceReport` (table, dict, pandas, plot)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torchinvariance._mpl as _mpl

__all__ = ["METRICS", "InvarianceReport"]

METRICS = ("accuracy", "consistency", "di", "li", "si")
_LABELS = {"accuracy": "accuracy", "consistency": "top-1 cons.", "di": "DI", "li": "LI", "si": "SI"}
_NO_STD = ("accuracy", "consistency")  # 0/1 terms: reported without a std over samples


@dataclass(frozen=True)
class InvarianceReport:
    r"""Accuracy and invariance metrics of a model on every element of a group orbit.

    Built by :func:`evaluate_invariance`. ``results`` maps each requested
    metric to ``{"mean", "std", "per_element"}`` (accuracy and top-1
    consistency have no ``"std"``; consistency adds ``"orbit"``):

    .. math::
        \text{per\_element}_g = \frac1N \sum_{b=1}^N d_g(x_b), \qquad
        \text{mean} = \frac1{|A|} \sum_{g \in A} \text{per\_element}_g, \qquad
        \text{std} = \operatorname{std}_b \Big(\frac1{|A|} \sum_{g \in A} d_g(x_b)\Big)

    where :math:`d_g(x_b)` is the metric's term for element :math:`g` and
    sample :math:`x_b` and :math:`A` the averaged elements: the non-identity
    elements (``include_identity=False``, the default) or all of them. The
    per-element values always list every element, identity first. Accuracy
    (:math:`[\arg\max f(g x_b) = y_b]`) is averaged over all elements whatever
    ``include_identity`` says: its mean is the accuracy on uniformly
    transformed data. The std is over samples (ddof=0).

    Attributes:
        group: ``repr`` of the group.
        n_samples: number of samples evaluated.
        elements: names of the group elements, identity first.
        results: ``{metric: {"mean": float, "std": float, "per_element": [float]}}``.
        include_identity: whether the means of the invariance metrics include
            the identity element.

    Example:
        >>> from torchinvariance import InvarianceReport
        >>> r = InvarianceReport("Flip(axis='x')", 10, ["id", "flipx"],
        ...                      {"li": {"mean": 1.0, "std": 0.1, "per_element": [0.0, 1.0]}})
        >>> r.to_dict()["li"]["per_element"]
        [0.0, 1.0]
        >>> print(r)  # doctest: +NORMALIZE_WHITESPACE
        Invariance report: Flip(axis='x'), 10 samples
        element        LI
        id         0.0000
        flipx      1.0000
        mean       1.0000
        std        0.1000
        (means over the 1 non-identity elements)
    """

    group: str
    n_samples: int
    elements: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    include_identity: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: ``{"group", "n_samples", "elements", "include_identity", <metric>: {...}, ...}``."""
        out: dict[str, Any] = {
            "group": str(self.group),
            "n_samples": int(self.n_samples),
            "elements": [str(e) for e in self.elements],
            "include_identity": bool(self.include_identity),
        }
        for name, res in self.results.items():
            entry: dict[str, Any] = {"mean": float(res["mean"])}
            if "std" in res:
                entry["std"] = float(res["std"])
            if "orbit" in res:
                entry["orbit"] = float(res["orbit"])
            entry["per_element"] = [float(v) for v in res["per_element"]]
            out[name] = entry
        return out

    def to_pandas(self) -> Any:
        """The per-element values as a :class:`pandas.DataFrame`: one row per element, one column per metric.

        The frame's ``attrs`` hold ``group``, ``n_samples``, ``include_identity`` and the summaries ``mean`` and
        ``std`` (``{metric: value}``). Needs pandas (``pip install pandas``).

        Raises:
            ImportError: pandas is not installed.
        """
        pd = _mpl.require("pandas", "InvarianceReport.to_pandas()", extra="pandas")
        frame = pd.DataFrame(
            {name: [float(v) for v in res["per_element"]] for name, res in self.results.items()},
            index=pd.Index([str(e) for e in self.elements], name="element"),
        )
        frame.attrs.update(
            group=str(self.group),
            n_samples=int(self.n_samples),
            include_identity=bool(self.include_identity),
            mean={name: float(res["mean"]) for name, res in self.results.items()},
            std={name: float(res["std"]) for name, res in self.results.items() if "std" in res},
        )
        return frame

    def plot(
        self,
        metrics: Sequence[str] | None = None,
        *,
        references: dict[str, InvarianceReport] | None = None,
        title: str | None = None,
    ) -> Any:
        """Per-element bars of each metric, one panel per metric, with the mean as a dashed line.

        Elements left out of the mean (the identity, unless ``include_identity``) are hatched. ``references`` adds
        the same metrics of other reports as bars beside this one's (e.g. ``{"group-averaged": ...}``), for the
        metrics and elements they share. Needs matplotlib (``pip install "torchinvariance[plot]"``); the figure
        is made without :mod:`matplotlib.pyplot` and without changing the backend.

        Args:
            metrics: the metrics to draw, default every metric of the report except accuracy when there are
                invariance metrics (DI, LI, SI first).
            references: other reports to draw beside this one, by label.
            title: the figure's title (default: the group and the sample count).

        Returns:
            A :class:`matplotlib.figure.Figure`.

        Raises:
            ImportError: matplotlib is not installed.
            ValueError: a metric that is not in the report.
        """
        order = ["di", "li", "si", "consistency", "accuracy"]
        if metrics is None:
            names = [m for m in order if m in self.results]
            names = [m for m in names if m != "accuracy"] or names
        else:
            names = [metrics] if isinstance(metrics, str) else list(metrics)
            bad = [m for m in names if m not in self.results]
            if bad or not names:
                raise ValueError(f"metrics must be a non-empty selection of {list(self.results)}; got {names!r}")
        refs = dict(references or {})
        fig, axes = _mpl.new_figure(
            1, len(names), figsize=(max(3.2, 0.55 * len(self.elements) + 1.6) * len(names), 3.2)
        )
        for ax, name in zip(axes[0], names):
            res = self.results[name]
            series = {"model": res["per_element"]}
            for label, other in refs.items():
                if name in other.results and list(other.elements) == list(self.elements):
                    series[label] = other.results[name]["per_element"]
            left_out = [False] * len(self.elements)
            if name != "accuracy" and not self.include_identity and self.elements:
                left_out[0] = True
            handles = _mpl.grouped_bars(ax, self.elements, series, hatched=left_out)
            mean = ax.axhline(res["mean"], color="black", linestyle="--", linewidth=1, label=f"mean {res['mean']:.3g}")
            ax.set_title(_LABELS.get(name, name))
            ax.set_xlabel("group element")
            ax.legend(handles=[*handles, mean], fontsize=7)
        fig.suptitle(title or f"{self.group}, {self.n_samples} samples")
        return fig

    def __str__(self) -> str:
        names = list(self.results)
        width = max([7, *(len(e) for e in self.elements)]) + 2
        cols = max([10, *(len(_LABELS.get(n, n)) + 1 for n in names)])

        def cell(name: str, value: float | None) -> str:
            if value is None:
                return f"{'-':>{cols}}"
            if name in _NO_STD or value == 0 or abs(value) >= 1e-3:
                return f"{value:>{cols}.4f}"
            return f"{value:>{cols}.3e}"

        lines = [
            f"Invariance report: {self.group}, {self.n_samples} samples",
            "element".ljust(width) + "".join(f"{_LABELS.get(n, n):>{cols}}" for n in names),
        ]
        for i, e in enumerate(self.elements):
            lines.append(e.ljust(width) + "".join(cell(n, self.results[n]["per_element"][i]) for n in names))
        lines.append("mean".ljust(width) + "".join(cell(n, self.results[n]["mean"]) for n in names))
        if any("std" in self.results[n] for n in names):
            lines.append("std".ljust(width) + "".join(cell(n, self.results[n].get("std")) for n in names))
        if any("orbit" in self.results[n] for n in names):
            lines.append("orbit".ljust(width) + "".join(cell(n, self.results[n].get("orbit")) for n in names))
        n = len(self.elements)
        if self.include_identity:
            lines.append(f"(means over all {n} elements)")
        else:
            note = f"(means over the {n - 1} non-identity elements"
            lines.append(note + (f"; accuracy over all {n})" if "accuracy" in names else ")"))
        return "\n".join(lines)
