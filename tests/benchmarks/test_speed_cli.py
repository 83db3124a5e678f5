"""The speed benchmark package (benchmarks/speed/) in-process, on the hidden tiny profile."""

import math
import sys

import pytest
import torch

from benchmarks.speed import cli, report, sections
from benchmarks.speed.timing import PROFILES, Stats, measure, ratio, ratio_range
from benchmarks.speed.workloads import Bench

SI_ROWS = {"LI", "DI", "SI", "SI floor", "floor, one pass", "floor, 1 pass per step"}
CAPTUM_ROWS = {"SI, captum rounds", "SI captum per element", "SI backend=captum"}
SI_RATIOS = {"SI/floor", "floor one pass/1 pass per step"}


def _metrics(monkeypatch, captum: bool):
    if not captum:
        monkeypatch.setitem(sys.modules, "captum", None)  # `import captum` raises ImportError
    bench = Bench(PROFILES["tiny"], torch.device("cpu"), threads=1)
    sections.section_metrics(bench)
    return bench


def test_si_rows_run_without_captum(monkeypatch):
    bench = _metrics(monkeypatch, captum=False)
    assert not sections.have_captum()
    rows = {r["case"]: r for r in bench.results["metrics"]["rows"]}
    assert set(rows) == SI_ROWS  # only the captum comparison rows are skipped
    assert all(r["median_ms"] > 0 and r["samples_per_s"] > 0 for r in rows.values())
    assert set(bench.results["metrics"]["ratios"]) == SI_RATIOS
    assert len(bench.notes) == 1 and "captum is not installed" in bench.notes[0]
    names = {t["target"] for t in report.targets(bench.results, torch.device("cpu"))}
    assert "SI / SI floor" in names and "SI captum per element / SI" not in names


def test_captum_rows_when_captum_is_installed(monkeypatch):
    pytest.importorskip("captum")
    bench = _metrics(monkeypatch, captum=True)
    metrics = bench.results["metrics"]
    assert {r["case"] for r in metrics["rows"]} == SI_ROWS | CAPTUM_ROWS
    ratios = metrics["ratios"]
    assert set(ratios) == SI_RATIOS | {"SI captum per element/SI", "SI backend=captum/SI"}
    assert all(math.isfinite(v) and v > 0 for v in ratios.values()) and bench.notes == []
    assert set(metrics["ratio_ranges"]) == set(ratios)  # every metrics ratio is timed: min and max
    assert all(lo <= ratios[k] <= hi for k, (lo, hi) in metrics["ratio_ranges"].items())


def test_si_is_timed_apart_from_the_other_cases(monkeypatch):
    """SI shares its rounds with its floor only; LI/DI, the floor shapes and captum have rounds of their own."""
    groups = []

    def record(cases, cfg, threads):
        groups.append(sorted(cases))
        return measure(cases, cfg, threads)

    monkeypatch.setattr(sections, "measure", record)
    _metrics(monkeypatch, captum=sections.have_captum())
    assert sorted(["LI", "DI"]) in groups
    assert sorted(["SI", "SI floor"]) in groups
    assert sorted(["floor, one pass", "floor, 1 pass per step"]) in groups
    if sections.have_captum():
        assert sorted(CAPTUM_ROWS) in groups


def test_si_floor_sends_sis_rows_in_sis_batch_shapes(monkeypatch):
    """The floor runs the same rows through the model as SI, in the same passes (SI's default chunking)."""
    bench = Bench(PROFILES["tiny"], torch.device("cpu"), threads=1)
    calls = {}
    real_mlp = bench.mlp

    def counted_mlp(seed=0):
        model = real_mlp(seed)
        model.register_forward_hook(lambda m, inp, out: calls.setdefault(current[0], []).append(inp[0].shape[0]))
        return model

    current = ["setup"]
    real_measure = sections.measure

    def once(cases, cfg, threads):  # call every case once, labelled, then time as usual
        for name, fn in cases.items():
            current[0] = name
            fn()
        current[0] = "timing"
        return real_measure(cases, cfg, threads)

    monkeypatch.setattr(bench, "mlp", counted_mlp)
    monkeypatch.setattr(sections, "measure", once)
    monkeypatch.setitem(sys.modules, "captum", None)
    sections.section_metrics(bench)
    b, n, steps = bench.cfg.si_batch, 4, bench.cfg.n_steps
    # SI: one forward of x to check the target, then every step of the orbit in one pass
    assert calls["SI"] == [b, steps * n * b]
    assert calls["SI floor"] == [steps * n * b]
    assert calls["floor, one pass"] == calls["SI floor"]
    assert calls["floor, 1 pass per step"] == [n * b] * steps


def test_ratio_pairs_rounds():
    a = Stats(2.0, 1.0, 3.0, 3, [1.0, 10.0, 4.0])
    b = Stats(1.0, 1.0, 1.0, 3, [1.0, 5.0, 1.0])
    assert ratio(a, b) == 2.0  # median of the per-round ratios 1, 2, 4 (not 2.0 / 1.0 by accident)
    assert ratio_range(a, b) == (1.0, 2.0, 4.0)
    b2 = Stats(1.0, 1.0, 1.0, 3, [0.5, 5.0, 1.0])
    assert ratio(a, b2) == 2.0 and ratio(b2, a) == 0.5


def test_measure_runs_every_case_each_round():
    calls = {"a": 0, "b": 0}
    cfg = PROFILES["tiny"]

    def case(name):
        def fn():
            calls[name] += 1

        return fn

    stats = measure({"a": case("a"), "b": case("b")}, cfg, threads=1)
    assert calls["a"] == calls["b"] >= cfg.warmup + cfg.rounds  # Timer adds its own warm-up calls
    assert all(len(s.round_medians) == cfg.rounds and s.median > 0 for s in stats.values())


def test_cli_options(capsys):
    with pytest.raises(SystemExit) as err:
        cli.run(["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--device", "--quick", "--out", "--threads", "--sections", "--no-compile"):
        assert flag in out
    assert "--tiny" not in out  # hidden smoke-test profile
    with pytest.raises(SystemExit) as err:
        cli.run(["--sections", "training,bogus"])
    assert err.value.code == 2 and "unknown sections ['bogus']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.run(["--device", "tpu"])


def test_cuda_requested_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="is_available"):
        cli.run(["--device", "cuda", "--tiny", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_run_writes_the_report_in_process(tmp_path):
    rep = cli.run(["--tiny", "--device", "cpu", "--sections", "weight_tying", "--out", str(tmp_path)])
    assert (
        rep["meta"]["command"]
        == f"python -m benchmarks.speed --tiny --device cpu --sections weight_tying --out {tmp_path}"
    )
    assert rep["meta"]["threads"] == 1 and rep["meta"]["profile"] == "tiny" and rep["meta"]["cpu"]
    assert set(rep["results"]) == {"weight_tying"}
    md = (tmp_path / "speed.md").read_text()
    assert md == report.markdown(rep) and "## 4. Weight-tying cost" in md and "## 1." not in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["speed.json", "speed.md"]
