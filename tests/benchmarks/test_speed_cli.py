"""The speed benchmark package (benchmarks/speed/) in-process, on the hidden tiny profile."""

import math
import sys

import pytest
import torch

from benchmarks.speed import cli, report, sections
from benchmarks.speed.timing import PROFILES, Stats, measure, ratio
from benchmarks.speed.workloads import Bench

CAPTUM_ROWS = {"SI captum per element", "SI backend=captum"}


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
    assert set(rows) == {"LI", "DI", "SI", "SI floor"}  # only the captum comparison rows are skipped
    assert all(r["median_ms"] > 0 and r["samples_per_s"] > 0 for r in rows.values())
    assert set(bench.results["metrics"]["ratios"]) == {"SI/floor"}
    assert len(bench.notes) == 1 and "captum is not installed" in bench.notes[0]
    names = {t["target"] for t in report.targets(bench.results, torch.device("cpu"))}
    assert "SI / SI floor" in names and "SI captum per element / SI" not in names


def test_captum_rows_when_captum_is_installed(monkeypatch):
    pytest.importorskip("captum")
    bench = _metrics(monkeypatch, captum=True)
    assert {r["case"] for r in bench.results["metrics"]["rows"]} == {"LI", "DI", "SI", "SI floor"} | CAPTUM_ROWS
    ratios = bench.results["metrics"]["ratios"]
    assert set(ratios) == {"SI/floor", "SI captum per element/SI", "SI backend=captum/floor"}
    assert all(math.isfinite(v) and v > 0 for v in ratios.values()) and bench.notes == []


def test_ratio_pairs_rounds():
    a = Stats(2.0, 1.0, 3.0, 3, [1.0, 10.0, 4.0])
    b = Stats(1.0, 1.0, 1.0, 3, [1.0, 5.0, 1.0])
    assert ratio(a, b) == 2.0  # median of the per-round ratios 1, 2, 4 (not 2.0 / 1.0 by accident)
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
