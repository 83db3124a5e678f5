"""The result of :func:`~torchinvariance.evaluate_invariance`: :class:`InvarianceReport` (table, dict, pandas, plot)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torchinvariance._mpl as _mpl
from torchinvariance.robustness import FlipResult, WorstCaseResult, draw_flips
from torchinvariance.symmetry import SymmetrySpectrum, draw_spectrum

__all__ = ["METRICS", "ROBUSTNESS", "InvarianceReport"]

METRICS = ("accuracy", "consistency", "di", "li", "si")
#: the metrics of the whole dataset rather than of each element: worst-of-k accuracy, smallest flip, LieGG spectrum
ROBUSTNESS = ("worst", "flip", "discover")
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

    For a continuous group (``so2``, ``scale``) the elements are those that
    :func:`evaluate_invariance` was asked for (``elements=``, a list or ``k``
    drawn with a seed), and ``element_values`` holds them as numbers (angles
    in degrees, scale factors), the x-axis of :meth:`plot`. For a group that
    interpolates, DI and LI also carry ``"floor": {"mean", "per_element"}``,
    the interpolation floor of each element (:func:`~torchinvariance.interpolation_floor`:
    the metric of the round trip :math:`g^{-1}(g x_b)`, what resampling alone
    explains), printed beside the metric.

    Three more results, asked for with ``metrics=(..., "worst", "flip", "discover")``, are kept as the result
    objects of the robustness tools, over all samples: ``worst_case`` (:class:`~torchinvariance.WorstCaseResult`,
    every measured element), ``flips`` (:class:`~torchinvariance.FlipResult`) and ``spectrum``
    (:class:`~torchinvariance.SymmetrySpectrum`); :meth:`to_dict` has their summaries under ``"worst"``,
    ``"flip"`` and ``"discover"``, the text a line each, and :meth:`plot` a panel for the spectrum and the flips.

    Attributes:
        group: ``repr`` of the group.
        n_samples: number of samples evaluated.
        elements: names of the measured group elements (every element of a
            finite group, identity first, unless a list was asked for).
        results: ``{metric: {"mean": float, "std": float, "per_element": [float]}}``,
            plus ``"floor": {"mean": float, "per_element": [float]}`` for DI
            and LI of interpolating groups.
        include_identity: whether the means of the invariance metrics include
            the identity element.
        element_values: the measured elements as numbers, for continuous
            groups; ``None`` for finite ones.
        averaged: for each element, whether the means of the invariance
            metrics include it; ``None``: all but the first (the identity of
            a finite group) or all with ``include_identity``, and all elements
            of a continuous group.
        worst_case: the worst-of-k result over the measured elements
            (``"worst"``), or ``None``.
        flips: the smallest flip of every sample (``"flip"``), or ``None``.
        spectrum: the LieGG symmetry spectrum of all samples
            (``"discover"``), or ``None``.

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
        (means over the 1 non-identity element)
        >>> so2 = InvarianceReport("SO2()", 10, ["rot30", "rot90"],
        ...                        {"li": {"mean": 0.5, "std": 0.1, "per_element": [0.6, 0.4],
        ...                                "floor": {"mean": 0.3, "per_element": [0.35, 0.25]}}},
        ...                        element_values=[30.0, 90.0])
        >>> print(so2)  # doctest: +NORMALIZE_WHITESPACE
        Invariance report: SO2(), 10 samples
        element          LI  LI floor
        rot30        0.6000    0.3500
        rot90        0.4000    0.2500
        mean         0.5000    0.3000
        std          0.1000         -
        (means over the 2 non-identity elements)
        (floor: the metric of the round trip g^-1 (g x), what resampling alone explains)
    """

    group: str
    n_samples: int
    elements: list[str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    include_identity: bool = False
    element_values: list[float] | None = None
    averaged: list[bool] | None = None
    worst_case: WorstCaseResult | None = None
    flips: FlipResult | None = None
    spectrum: SymmetrySpectrum | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: ``{"group", "n_samples", "elements", "include_identity", <metric>: {...}, ...}``.

        The robustness results, where measured: ``"worst": {"accuracy", "worst_case_accuracy", "per_element"}``
        (the clean accuracy, the share of samples correct under every measured element, the accuracy under each),
        ``"flip"`` (:meth:`FlipResult.to_dict <torchinvariance.FlipResult.to_dict>`) and ``"discover"``
        (:meth:`SymmetrySpectrum.to_dict <torchinvariance.SymmetrySpectrum.to_dict>` and ``"nearest"``: for each
        generator the nearest named one and its distance).
        """
        out: dict[str, Any] = {
            "group": str(self.group),
            "n_samples": int(self.n_samples),
            "elements": [str(e) for e in self.elements],
        }
        if self.element_values is not None:
            out["element_values"] = [float(v) for v in self.element_values]
        out["include_identity"] = bool(self.include_identity)
        if self.averaged is not None and self._averaged() != self._default_averaged():
            out["averaged"] = self._averaged()
        for name, res in self.results.items():
            entry: dict[str, Any] = {"mean": float(res["mean"])}
            if "std" in res:
                entry["std"] = float(res["std"])
            if "orbit" in res:
                entry["orbit"] = float(res["orbit"])
            entry["per_element"] = [float(v) for v in res["per_element"]]
            if "floor" in res:
                entry["floor"] = {
                    "mean": float(res["floor"]["mean"]),
                    "per_element": [float(v) for v in res["floor"]["per_element"]],
                }
            out[name] = entry
        out.update(self._robustness_dict())
        return out

    def _robustness_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.worst_case is not None:
            w = self.worst_case
            out["worst"] = {
                "accuracy": float(w.accuracy),
                "worst_case_accuracy": float(w.worst_case_accuracy),
                "per_element": [float(v) for v in w.element_accuracy.tolist()],
            }
        if self.flips is not None:
            out["flip"] = self.flips.to_dict()
        if self.spectrum is not None:
            out["discover"] = {
                **self.spectrum.to_dict(),
                "nearest": [[name, float(d)] for name, d in self.spectrum.nearest()],
            }
        return out

    def to_pandas(self) -> Any:
        """The per-element values as a :class:`pandas.DataFrame`: one row per element, one column per metric.

        A metric with an interpolation floor adds the column ``"<metric>_floor"`` beside it; a continuous group's
        ``element_values`` come first, as the column ``"value"``. The frame's ``attrs`` hold ``group``,
        ``n_samples``, ``include_identity`` and the summaries ``mean`` and ``std`` (``{metric: value}``). Needs
        pandas (``pip install pandas``).

        Raises:
            ImportError: pandas is not installed.
        """
        pd = _mpl.require("pandas", "InvarianceReport.to_pandas()", extra="pandas")
        columns: dict[str, list[float]] = {}
        if self.element_values is not None:
            columns["value"] = [float(v) for v in self.element_values]
        for name, res in self.results.items():
            columns[name] = [float(v) for v in res["per_element"]]
            if "floor" in res:
                columns[f"{name}_floor"] = [float(v) for v in res["floor"]["per_element"]]
        frame = pd.DataFrame(columns, index=pd.Index([str(e) for e in self.elements], name="element"))
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
        """Each metric per element, one panel per metric, with the mean as a dashed line.

        A finite group gets bars, one per element; elements left out of the mean (the identity, unless
        ``include_identity``) are hatched. A continuous group (``element_values``) gets the curve of the metric
        against the element (the rotation angle, the scale factor), with the interpolation floor as a dashed grey
        curve where the report has one, and the elements left out of the mean as hollow markers
        (:func:`torchinvariance.plot.metric_vs_element` draws one such panel, several models on one axes).
        ``references`` adds the same metrics of other reports beside this one's (e.g. ``{"group-averaged":
        ...}``), for the metrics and elements they share. Needs matplotlib (``pip install
        "torchinvariance[plot]"``); the figure is made without :mod:`matplotlib.pyplot` and without changing the
        backend.

        Args:
            metrics: the metrics to draw, default every metric of the report except accuracy when there are
                invariance metrics (DI, LI, SI first), then the spectrum (``"discover"``,
                :func:`~torchinvariance.plot.symmetry_spectrum`) and the flips (``"flip"``,
                :func:`~torchinvariance.plot.flip_histogram`) where measured. The worst-of-k accuracy is a
                number of the text and :meth:`to_dict`, not a panel.
            references: other reports to draw beside this one, by label.
            title: the figure's title (default: the group and the sample count).

        Returns:
            A :class:`matplotlib.figure.Figure`.

        Raises:
            ImportError: matplotlib is not installed.
            ValueError: a metric that is not in the report.
        """
        order = ["di", "li", "si", "consistency", "accuracy"]
        drawable = {"discover": self.spectrum, "flip": self.flips}
        present = [k for k, v in drawable.items() if v is not None]
        if metrics is None:
            names = [m for m in order if m in self.results]
            names = [m for m in names if m != "accuracy"] or names
            extra = present
        else:
            asked = [metrics] if isinstance(metrics, str) else list(metrics)
            names = [m for m in asked if m not in drawable]
            extra = [m for m in asked if m in drawable]
            bad = [m for m in names if m not in self.results] + [m for m in extra if m not in present]
            if bad or not asked:
                raise ValueError(f"metrics must be a non-empty selection of {[*self.results, *present]}; got {asked!r}")
        if not names and not extra:
            raise ValueError("the report has nothing to draw (no per-element metric, no spectrum, no flips)")
        refs = dict(references or {})
        panels = len(names) + len(extra)
        if self.element_values is not None:
            width = 4.4
        else:
            width = max(3.2, 0.55 * len(self.elements) + 1.6)
        if extra:
            width = max(width, 5.0)
        height = 3.6 if extra else 3.3 if self.element_values is not None else 3.2
        fig, axes = _mpl.new_figure(1, panels, figsize=(width * panels, height))
        for ax, name in zip(axes[0][len(names) :], extra):
            if name == "discover":
                draw_spectrum(self.spectrum, ax=ax)
            else:
                draw_flips(self.flips, ax=ax)
        if self.element_values is not None:
            for ax, name in zip(axes[0], names):
                curve_panel(ax, {"model": self, **refs}, name)
            fig.suptitle(title or f"{self.group}, {self.n_samples} samples")
            return fig
        for ax, name in zip(axes[0], names):
            res = self.results[name]
            series = {"model": res["per_element"]}
            for label, other in refs.items():
                if name in other.results and list(other.elements) == list(self.elements):
                    series[label] = other.results[name]["per_element"]
            left_out = [False] * len(self.elements)
            if name != "accuracy":
                left_out = [not a for a in self._averaged()]
            handles = _mpl.grouped_bars(ax, self.elements, series, hatched=left_out)
            mean = ax.axhline(res["mean"], color="black", linestyle="--", linewidth=1, label=f"mean {res['mean']:.3g}")
            ax.set_title(_LABELS.get(name, name))
            ax.set_xlabel("group element")
            ax.legend(handles=[*handles, mean], fontsize=7)
        fig.suptitle(title or f"{self.group}, {self.n_samples} samples")
        return fig

    def _averaged(self) -> list[bool]:
        """Which elements the means of the invariance metrics run over (all, or the non-identity ones)."""
        if self.averaged is not None:
            return [bool(a) for a in self.averaged]
        return self._default_averaged()

    def _default_averaged(self) -> list[bool]:
        if self.element_values is not None:  # elements asked for: the identity is not among them unless listed
            return [True] * len(self.elements)
        return [self.include_identity or i > 0 for i in range(len(self.elements))]  # identity first

    def __str__(self) -> str:
        names = list(self.results)
        # one column per metric, and one for its floor beside it: (metric, "value" | "floor")
        columns = [(n, k) for n in names for k in ("value", "floor") if k == "value" or "floor" in self.results[n]]
        labels = [_LABELS.get(n, n) + (" floor" if k == "floor" else "") for n, k in columns]
        width = max([7, *(len(e) for e in self.elements)]) + 2
        cols = max([10, *(len(label) + 1 for label in labels)])

        def cell(name: str, value: float | None) -> str:
            if value is None:
                return f"{'-':>{cols}}"
            if name in _NO_STD or value == 0 or abs(value) >= 1e-3:
                return f"{value:>{cols}.4f}"
            return f"{value:>{cols}.3e}"

        def source(name: str, kind: str) -> dict[str, Any]:
            return self.results[name] if kind == "value" else self.results[name]["floor"]

        def row(label: str, key: str, index: int | None = None) -> str:
            values = []
            for n, k in columns:
                entry = source(n, k).get(key)
                values.append(cell(n, entry if index is None or entry is None else entry[index]))
            return label.ljust(width) + "".join(values)

        lines = [f"Invariance report: {self.group}, {self.n_samples} samples"]
        if not names:
            return "\n".join(lines + self._robustness_lines())
        lines.append("element".ljust(width) + "".join(f"{label:>{cols}}" for label in labels))
        for i, e in enumerate(self.elements):
            lines.append(row(e, "per_element", i))
        lines.append(row("mean", "mean"))
        if any("std" in self.results[n] for n in names):
            lines.append(row("std", "std"))
        if any("orbit" in self.results[n] for n in names):
            lines.append(row("orbit", "orbit"))
        n, averaged = len(self.elements), sum(self._averaged())
        if self.include_identity:
            lines.append("(means over the 1 element)" if n == 1 else f"(means over all {n} elements)")
        else:
            note = f"(means over the {averaged} non-identity element{'' if averaged == 1 else 's'}"
            every = "the 1 element" if n == 1 else f"all {n}"
            lines.append(note + (f"; accuracy over {every})" if "accuracy" in names else ")"))
        if any(k == "floor" for _, k in columns):
            lines.append("(floor: the metric of the round trip g^-1 (g x), what resampling alone explains)")
        return "\n".join(lines + self._robustness_lines())

    def _robustness_lines(self) -> list[str]:
        lines = []
        if self.worst_case is not None:
            w = self.worst_case
            n = len(w.elements)
            every = "the 1 measured element" if n == 1 else f"{'both' if n == 2 else f'all {n}'} measured elements"
            lines.append(
                f"worst-of-k accuracy: {w.worst_case_accuracy:.4f} (clean {w.accuracy:.4f}): the share of samples "
                f"classified correctly under {every}"
            )
        if self.flips is not None:
            d = self.flips.to_dict()
            unit = {"degrees": "degrees", "log-scale": "|ln factor|", "steps": "steps"}[d["unit"]]
            flipped = d["n_samples"] - d["never"]
            text = f"smallest flip ({unit}, searched to {d['max_magnitude']:g}): {flipped} of {d['n_samples']} flip"
            if d["median"] is not None:
                text += f", median {d['median']:.4g} (10%-90%: {d['q10']:.4g}-{d['q90']:.4g})"
            lines.append(text + f"; {d['never']} never")
        if self.spectrum is not None:
            values = " ".join(f"{v:.3g}" for v in self.spectrum.singular_values.tolist())
            name, dist = self.spectrum.nearest()[0]
            lines.append(f"symmetry spectrum (LieGG, most invariant first): {values}")
            lines.append(f"most invariant generator: nearest {name} (distance {dist:.3f} of at most 1.414)")
        return lines


def _axis_label(group: str) -> str:
    """The x-axis label of a continuous group's curve, from the report's group ``repr``."""
    if group.startswith("SO2("):
        return "rotation angle (degrees)"
    if group.startswith("Scale("):
        return "scale factor"
    return "group element"


def curve_panel(ax: Any, reports: dict[str, InvarianceReport], metric: str, *, floor: bool = True) -> list:
    """Draw ``metric`` against the element values of each report into ``ax``; return the legend handles.

    The first report's interpolation floor (if it has one and ``floor``) is a dashed grey curve, its mean a dotted
    line; elements left out of the means are hollow markers. Reports without ``element_values`` or without the
    metric raise :class:`ValueError`.
    """
    if not reports:
        raise ValueError("no report to draw")
    for label, report in reports.items():
        if report.element_values is None:
            raise ValueError(
                f"report {label!r} ({report.group}) has no element values: curves need a continuous group's "
                "report (evaluate_invariance(..., elements=...)); use InvarianceReport.plot() for bars"
            )
        if metric not in report.results:
            raise ValueError(f"report {label!r} has no metric {metric!r}; it has {list(report.results)}")
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:red"]
    handles = []
    first = next(iter(reports.values()))
    for k, (label, report) in enumerate(reports.items()):
        color = palette[k % len(palette)]
        res = report.results[metric]
        kept = report._averaged() if metric != "accuracy" else [True] * len(report.elements)
        handles += _mpl.curve(
            ax, report.element_values, res["per_element"], label=label, color=color, hollow=[not a for a in kept]
        )
        if report is first:
            handles.append(
                ax.axhline(res["mean"], color=color, linestyle=":", linewidth=1, label=f"mean {res['mean']:.3g}")
            )
        if floor and "floor" in res and report is first:
            handles += _mpl.curve(
                ax,
                report.element_values,
                res["floor"]["per_element"],
                label="interpolation floor" + (f" ({label})" if len(reports) > 1 else ""),
                color="tab:gray",
                linestyle="--",
                marker=".",
            )
    ax.set_title(_LABELS.get(metric, metric))
    ax.set_xlabel(_axis_label(first.group))
    if first.group.startswith("SO2(") and all(0.0 <= v < 360.0 for v in first.element_values or []):
        ax.set_xlim(-5, 365)
        ax.set_xticks(range(0, 361, 45))
    ax.legend(handles=handles, fontsize=7)
    return handles
