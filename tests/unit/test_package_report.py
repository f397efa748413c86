"""package: the chain report (every model with params, size, metric, speed, budgets), the
PNG plots, and plots skipped (not failed) without matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from kdeploy.report.plots import pareto_front
from tests.conftest import TINY_OVERRIDES
from tests.unit.test_pipeline import run


def _report(run_dir) -> dict:
    return json.loads((run_dir / "package" / "report.json").read_text())


def test_chain_rows_cover_every_model(tiny_run):
    r = _report(tiny_run)
    rows = {x["model"]: x for x in r["chain"]}
    assert list(rows) == ["teacher_fp32", "teacher_int8", "student_fp32", "student_int8"]
    assert rows["teacher_fp32"]["kind"] == "reference"
    assert rows["teacher_int8"]["kind"] == "baseline"
    assert rows["student_int8"]["deploy"] and rows["student_int8"]["made_by"] == "quantize"
    assert rows["student_fp32"]["made_by"] == "distill+export"
    # the 2-layer student has fewer weights than the 4-layer teacher; INT8 is smaller
    assert rows["student_fp32"]["params"] < rows["teacher_fp32"]["params"]
    assert rows["student_int8"]["params"] == rows["student_fp32"]["params"]
    assert rows["student_int8"]["size_mb"] < rows["student_fp32"]["size_mb"]
    for x in rows.values():
        assert x["value"] is not None and x["sentences_per_s"] > 0
        assert x["p50_ms"] > 0 and x["p99_ms"] >= x["p50_ms"]
        assert x["latency_cell"] == [1, 64]  # the latency budget's cell
    assert rows["teacher_fp32"]["speedup"] == 1.0 and rows["teacher_fp32"]["passed"] is None
    deploy = rows["student_int8"]
    assert deploy["budgets"] == {b["name"]: b["passed"] for b in r["verify"]["budgets"]}
    md = (tiny_run / "package" / "report.md").read_text()
    assert "## Compression chain" in md and "**student_int8** (deployed)" in md
    assert "## Serving: Triton model repository" in md and "serve-check" in md


def test_plots_are_real_pngs(tiny_run):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg

    r = _report(tiny_run)
    assert set(r["plots"]["files"]) == {"pareto", "latency"}
    md = (tiny_run / "package" / "report.md").read_text()
    for rel in r["plots"]["files"].values():
        img = mpimg.imread(tiny_run / "package" / rel)
        assert img.shape[0] > 300 and img.shape[1] > 600
        assert img[..., :3].std() > 0.05  # something is drawn
        assert f"]({rel})" in md


def test_pareto_front():
    pts = [(100, 82.0), (200, 81.0), (150, 80.0), (400, 80.5), (400, 79.0)]
    assert pareto_front(pts) == [0, 1, 3]


def test_disabled_stages_are_listed_and_the_chain_follows_the_models(
    tiny_run_copy, tiny_bert, stsb_small
):
    run(
        tiny_bert,
        stsb_small,
        tiny_run_copy,
        extra=["target.precision=fp32", "quantize.enabled=false", "package.plots=false"],
    )
    r = _report(tiny_run_copy)
    assert [x["model"] for x in r["chain"]] == ["teacher_fp32", "student_fp32"]
    assert r["chain"][1]["deploy"]
    assert "quantize" in r["not_in_profile"]
    assert r["plots"] == {"skipped": "package.plots is false in the profile"}
    md = (tiny_run_copy / "package" / "report.md").read_text()
    assert "Not part of this profile (disabled): sparsify, quantize" in md
    assert "Plots skipped: package.plots is false" in md


def test_missing_matplotlib_skips_plots_and_says_why(tiny_run_copy, tiny_bert, stsb_small):
    code = textwrap.dedent(
        f"""
        import sys

        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "matplotlib":
                    raise ImportError("blocked import of matplotlib")

        sys.meta_path.insert(0, _Block())
        from kdeploy.cli import main
        args = ["compress", "--model", {str(tiny_bert)!r}, "--data", {str(stsb_small)!r},
                "--out", {str(tiny_run_copy)!r}, "--from", "package", "--no-progress"]
        for o in {TINY_OVERRIDES!r}:
            args += ["--set", o]
        main(args)
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    r = _report(tiny_run_copy)
    assert "matplotlib" in r["plots"]["skipped"] and "kdeploy[plots]" in r["plots"]["skipped"]
    md = (tiny_run_copy / "package" / "report.md").read_text()
    assert "Plots skipped:" in md and "![" not in md


def test_speedup_budget_is_not_checked_against_its_own_reference():
    """With min_speedup over teacher_int8, the baseline's report row has no speed-up budget
    (it would always be 1.0x); the deployed student's has."""
    from kdeploy.config import load_profile
    from kdeploy.evaluation.budgets import check_budgets

    budgets = load_profile("cpu-int8").profile.verify.budgets
    assert budgets.min_speedup.over == "teacher_int8"
    results = {m: {"retention": 0.995} for m in ("teacher_int8", "student_int8")}
    speed = {"teacher_int8": 500.0, "student_int8": 1000.0}
    bench = {"models": {m: {"throughput": {"sentences_per_s": s}} for m, s in speed.items()}}
    mine = {r["name"]: r for r in check_budgets(budgets, results, bench, "student_int8")}
    assert mine["min_speedup"]["value"] == 2.0 and mine["min_speedup"]["passed"]
    base = {r["name"] for r in check_budgets(budgets, results, bench, "teacher_int8")}
    assert "min_speedup" not in base and "min_retention" in base


def test_chain_budgets_include_the_transfer_figures(tiny_run):
    """The chain table checks each model's transfer budgets against verify's transfer
    block, as verify does for the deployed model (not 'not measured' for every model)."""
    from kdeploy.config import load_profile
    from kdeploy.report.build import chain_rows

    r = _report(tiny_run)
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    bench = json.loads((tiny_run / "bench" / "bench.json").read_text())
    verify = json.loads((tiny_run / "verify" / "verify.json").read_text())
    names = ["teacher_fp32", "teacher_int8", "student_fp32", "student_int8"]
    recall = dict(zip(names, [1.0, 0.8, 0.7, 0.6], strict=True))
    verify["transfer"] = {
        "applicable": True,
        "models": {n: {"neighbour_recall": recall[n], "probe_retention": 0.99} for n in names},
    }
    budgets = load_profile(
        "cpu-int8", ["verify.budgets.min_neighbour_recall={over: teacher_fp32, ratio: 0.65}"]
    ).profile.verify.budgets
    rows = {x["model"]: x for x in chain_rows(manifest, bench, verify, budgets, {})}
    assert rows["student_fp32"]["budgets"]["min_neighbour_recall"] is True
    assert rows["student_int8"]["budgets"]["min_neighbour_recall"] is False  # 0.6 < 0.65
    assert rows["student_int8"]["budgets"]["min_probe_retention"] is True
    assert r["chain"]  # the fixture's own report is there too
