"""Table 1 and the claims in the paper's averaging convention (means over the non-identity group elements)."""

import pytest

from benchmarks.paper import report


def _metrics(model, group="rotation", si=(1.0, 0.1, 0.2, 0.21), li=(0.0, 2.0, 4.0, 6.0), identity=0, acc=90.0):
    return {
        "spec": {"dataset": "mnist", "group": group, "model": model, "seed": 0, "nu": None},
        "eval": {
            "test_acc": acc,
            "identity_index": identity,
            "invariance": {
                "li": {"mean": sum(li) / len(li), "per_element": list(li)},
                "di": {"mean": sum(li) / len(li) / 10, "per_element": [v / 10 for v in li]},
            },
            "saliency": {"si": {"mean": sum(si) / len(si), "per_element": list(si)}},
            "sigma_max": {"mean": 2.0},
        },
    }


def test_paper_mean_leaves_out_the_identity_wherever_it_is():
    assert report.paper_mean([1.0, 0.1, 0.2, 0.3]) == pytest.approx(0.2)
    assert report.paper_mean([0.1, 1.0, 0.3], identity=1) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="only the identity"):
        report.paper_mean([1.0])


def test_table1_and_claims_use_the_paper_convention():
    """DA's SI of 0.17 in the paper is only possible without the identity: with it, the mean is >= 1/4."""
    n = report.run_numbers(_metrics("DA"))
    assert n["si"] == pytest.approx(0.17) and n["li"] == pytest.approx(4.0) and n["di"] == pytest.approx(0.4)
    with_identity = sum((1.0, 0.1, 0.2, 0.21)) / 4
    assert with_identity >= 0.25 and n["si"] < 0.25
    agg = report.aggregate({"a": _metrics("DA"), "b": _metrics("IR-l2", si=(1.0, 0.95, 0.96, 0.97))})
    assert agg["rotation"]["IR-l2"]["si"]["mean"] == pytest.approx(0.96)
    table = report.table1(agg)
    assert report.CONVENTION in table and "| 0.17 | 0.17 ± 0.04 |" in table  # one seed: no "± 0.00"
    two_seeds = report.aggregate({"a": _metrics("DA"), "b": {**_metrics("DA", si=(1.0, 0.2, 0.3, 0.31))}})
    assert "| 0.22 ± 0.05 | 0.17 ± 0.04 |" in report.table1(two_seeds)  # the spread of 0.17 and 0.27
    claims = {c["claim"]: c for c in report.check_claims(agg, {})}
    si_claim = claims["R^2_4: IR's SI ≥ 0.95 and above DA's"]
    assert si_claim["status"] == "PASS" and "SI IR=0.960, DA=0.170" in si_claim["detail"]


def test_a_group_not_run_or_a_model_left_out_is_not_a_fail():
    """Issue 22 item 13: `run --groups rotation` wrote the translation claims as FAIL with nan values."""
    agg = report.aggregate({"a": _metrics("DA"), "b": _metrics("IR-l2", si=(1.0, 0.95, 0.96, 0.97))})
    claims = report.check_claims(agg, {})
    by_status = {}
    for c in claims:
        by_status.setdefault(c["status"], []).append(c["claim"])
    assert len(claims) == 2 * len(report.CLAIMS)
    assert sorted(by_status["NOT RUN"]) == sorted(f"T^2_3: {c}" for c in report.CLAIMS)
    assert all("nan" not in c["detail"] for c in claims if c["status"] == "NOT RUN")
    # WT was not trained on R^2_4: its claim is not measured; the SI claim, which needs only DA and IR, is
    assert "R^2_4: WT has LI ≈ 0 and SI ≈ 1" in by_status["NOT MEASURED"]
    assert "R^2_4: IR's SI ≥ 0.95 and above DA's" in by_status["PASS"]
    assert "- **NOT RUN** T^2_3:" in report.claims_markdown(claims)


def test_published_tables_are_rendered_from_their_results_json_and_the_readme_copies_them():
    """Every number of a published Table 1 / Figure 5 table comes from its results.json, and so does the README's."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    published = [d for d in sorted((root / "docs" / "results").iterdir()) if (d / "results.json").exists()]
    rendered = {}
    for folder in published:
        agg = json.loads((folder / "results.json").read_text())["table1"]
        if not all("sigma_max" in cell for per in agg.values() for cell in per.values()):
            continue  # results from before Figure 5 was part of the table
        for name, text in (("table1.md", report.table1(agg)), ("figure5_spectral.md", report.spectral_table(agg))):
            if (folder / name).exists() and folder.name in ("paper", "full"):
                assert (folder / name).read_text().endswith(text), f"{folder.name}/{name} is not its results.json"
                rendered[(folder.name, name)] = text
    assert ("paper", "table1.md") in rendered
    readme = (root / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith(("| R^2_4 |", "| T^2_3 |"))]
    assert rows, "the README has no Table 1"
    tables = "\n".join(rendered.values())
    missing = [row for row in rows if row not in tables]
    assert not missing, f"README rows not in any published table: {missing}"
