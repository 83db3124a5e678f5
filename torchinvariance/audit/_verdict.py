"""The audit's verdict: one line per group and metric, read against the two reference points.

The rule (also in ``docs/audit.rst``, "Reading the verdict"). Every metric is turned into a *distance from
invariance* ``d``: DI as it is, ``1 - value`` for top-1 consistency and SI, and LI divided by the *spread of the
logits* (the mean of ``½‖f(x) - f(x')‖²`` over pairs of different inputs, LI's own units), so that LI on data and on
noise, whose logits differ in size, can be compared: ``d = 1`` means a transformation moves the logits as far as
swapping the input for another one.

1. Against the group-averaged model (exactly invariant when it averages over a whole finite group):
   *as invariant as the group-averaged model* when ``d_model <= d_averaged + tol`` (``tol``: 0 for consistency,
   1e-6 for DI and for LI's ``d``, 1e-3 for SI), else *less invariant than the group-averaged model*. For a
   continuous group (or listed elements) the averaged model is not exactly invariant: DI and LI are read against
   their interpolation floor instead (*at the interpolation floor* when ``d_model <= 1.25 d_floor + tol``, else
   *above the interpolation floor*), consistency and SI against the averaged model with the 1.25 rule below.
2. Against random inputs: *more invariant on data than on random inputs* when ``1.25 d_data < d_noise``, *less
   invariant on data than on random inputs* when ``d_data > 1.25 d_noise``, else *about as invariant on data as on
   random inputs*; *invariant on random inputs too* when both are within ``tol``. For top-1 consistency, random
   inputs tell nothing when the model gives 90% or more of them one class (its consistency there is high by
   default); the verdict then says so instead of comparing.

A metric that is not finite gets no verdict.

For an equivariant model (``--output-action``) the one measure is the equivariance error ``e`` (the maximum over
samples and outputs of ``|g^-1 · f(g x) - f(x)|``), read relative to the largest output ``|f(x)|`` of the same
inputs, ``d = e / scale``, with ``tol = 1e-6``: *as equivariant as the group-averaged model* when
``d_model <= d_averaged + tol`` for a finite group measured on every element; for a group that interpolates, *at the
interpolation floor* when ``e_model <= 1.25 floor + tol scale``, else *above the interpolation floor*; and *more*,
*about as* or *less equivariant on data than on random inputs* by the 1.25 rule, *equivariant on random inputs too*
when both are within ``tol``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CLEAR", "ONE_CLASS", "TOLERANCE", "equivariance_verdict", "verdicts"]

METRICS = {"consistency": "top-1 consistency", "di": "DI", "li": "LI", "si": "SI"}
TOLERANCE = {"consistency": 0.0, "di": 1e-6, "li": 1e-6, "si": 1e-3}
CLEAR = 1.25  # a factor between two distances from invariance that counts as a difference
ONE_CLASS = 0.9  # a majority-class share from which top-1 consistency is high by default


def _num(v: float | None) -> str:
    if v is None:
        return "–"
    if v == 0:
        return "0"
    return f"{v:.4g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.3e}"


def _order(a: float, b: float, tol: float) -> str:
    """``"more"`` (a is clearly closer to invariance), ``"less"`` or ``"as"``."""
    if abs(a - b) <= tol or (min(a, b) > 0 and max(a, b) <= CLEAR * min(a, b)):
        return "as"
    return "more" if a < b else "less"


def _against_noise(word: str, d_data: float, d_noise: float, tol: float) -> str:
    """The second half of a verdict: ``word`` ("invariant", "equivariant") on data against random inputs."""
    if d_data <= tol and d_noise <= tol:
        return f"{word} on random inputs too"
    how = {"more": "more {} on data than", "as": "about as {} on data as", "less": "less {} on data than"}
    return how[_order(d_data, d_noise, tol)].format(word) + " on random inputs"


def _distance(key: str, value: float | None, spread: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    if key == "li":
        if spread is None or not math.isfinite(spread):
            return None
        if spread == 0:
            return 0.0 if value == 0 else math.inf
        return value / spread
    return value if key == "di" else 1.0 - value


def verdicts(g: dict[str, Any]) -> dict[str, str]:
    """``{metric: one line}`` for a group entry of ``report.json`` (its ``summary``, ``predictions``, ...)."""
    return {key: _verdict(key, g) for key in METRICS if key in g.get("summary", {})}


def _verdict(key: str, g: dict[str, Any]) -> str:
    label, tol = METRICS[key], TOLERANCE[key]
    s, stats, bad = g["summary"], g.get("predictions", {}), g.get("not_finite", {})
    if key in bad.get("model", {}):
        return f"{label}: not finite for the model; no verdict."
    spread = {ref: stats.get(ref, {}).get("logit_spread") for ref in ("model", "random_inputs")}

    def d(ref: str, value_key: str = key) -> float | None:
        value = None if key in bad.get(ref, {}) else s.get(value_key, {}).get(ref)
        return _distance(key, value, spread["random_inputs" if ref == "random_inputs" else "model"])

    d_model, d_averaged, d_noise = d("model"), d("group_averaged"), d("random_inputs")
    if d_model is None:
        return f"{label}: no value for the model; no verdict."
    exact = g.get("elements", {}).get("how", "every element") == "every element"
    floor = d("model", f"{key}_floor") if f"{key}_floor" in s else None
    if exact and d_averaged is not None:
        first = (
            "as invariant as the group-averaged model"
            if d_model <= d_averaged + tol
            else "less invariant than the group-averaged model"
        )
    elif not exact and floor is not None:
        first = (
            "at the interpolation floor (as invariant as resampling lets one see)"
            if d_model <= CLEAR * floor + tol
            else "above the interpolation floor"
        )
    elif d_averaged is not None:
        first = {
            "as": "about as invariant as",
            "more": "more invariant than",
            "less": "less invariant than",
        }[
            _order(d_model, d_averaged, tol)
        ] + " the group-averaged model over the measured elements (not exactly invariant)"
    else:
        first = "no group-averaged value to compare with"

    majority = stats.get("random_inputs", {}).get("majority_share")
    if d_noise is None:
        second = "no value on random inputs"
    elif key == "consistency" and majority is not None and majority >= ONE_CLASS:
        cls = stats["random_inputs"]["majority_class"]
        second = (
            f"random inputs tell nothing here: the model gives {majority:.0%} of them class {cls}, so its consistency "
            "there is high by default"
        )
    else:
        second = _against_noise("invariant", d_model, d_noise, tol)

    values = f"model {_num(s[key]['model'])}, group-averaged {_num(s[key].get('group_averaged'))}"
    if floor is not None:
        values += f", floor {_num(s[f'{key}_floor']['model'])}"
    values += f", random inputs {_num(s[key].get('random_inputs'))}"
    if key == "li":
        values += (
            f"; relative to the spread of the logits between inputs {_num(d_model)} on data, "
            f"{_num(d_noise)} on random inputs"
        )
    line = f"{label}: {first}; {second} ({values})."
    data_majority = stats.get("model", {}).get("majority_share")
    if key == "consistency" and data_majority is not None and data_majority >= ONE_CLASS:
        line += (
            f" The model also gives {data_majority:.0%} of the data one class: its consistency on the data is high "
            "by default too."
        )
    return line


def equivariance_verdict(g: dict[str, Any]) -> dict[str, str]:
    """``{"error": one line}`` for an equivariance entry of ``report.json`` (its ``equivariance`` and ``summary``)."""
    eq, s = g["equivariance"], g["summary"]
    tol = TOLERANCE["di"]

    def rel(ref: str) -> float | None:
        e, scale = s["error"].get(ref), eq.get(ref, {}).get("output_scale")
        if e is None or scale is None or not math.isfinite(e) or not math.isfinite(scale):
            return None
        return 0.0 if e == 0 else (e / scale if scale > 0 else math.inf)

    d_model, d_averaged, d_noise = rel("model"), rel("group_averaged"), rel("random_inputs")
    if d_model is None:
        return {"error": "equivariance error: not finite for the model; no verdict."}
    floor = s.get("floor", {}).get("model")
    exact = g.get("elements", {}).get("how", "every element") == "every element" and floor is None
    if floor is not None and math.isfinite(floor):
        bound = CLEAR * floor + tol * eq["model"]["output_scale"]
        first = (
            "at the interpolation floor (as equivariant as resampling lets one see)"
            if s["error"]["model"] <= bound
            else "above the interpolation floor"
        )
    elif d_averaged is None:
        first = "no group-averaged reference to compare with"
    elif exact:
        first = (
            "as equivariant as the group-averaged model"
            if d_model <= d_averaged + tol
            else "less equivariant than the group-averaged model"
        )
    else:
        first = {"as": "about as equivariant as", "more": "more equivariant than", "less": "less equivariant than"}[
            _order(d_model, d_averaged, tol)
        ] + " the group-averaged model over the measured elements (not exactly equivariant)"
    if d_noise is None:
        second = "no value on random inputs"
    else:
        second = _against_noise("equivariant", d_model, d_noise, tol)
    values = f"model {_num(s['error']['model'])}, group-averaged {_num(s['error'].get('group_averaged'))}"
    if floor is not None:
        values += f", floor {_num(floor)}"
    values += f", random inputs {_num(s['error'].get('random_inputs'))}"
    values += f"; relative to the largest output {_num(d_model)} on data, {_num(d_noise)} on random inputs"
    return {"error": f"equivariance error: {first}; {second} ({values})."}
