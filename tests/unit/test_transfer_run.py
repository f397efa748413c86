"""Verify's transfer checks in real runs of the tiny BERT: neighbour agreement, the --probe
linear probe, their budgets, the cross-domain text option and the record of which texts
were trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdeploy.core.errors import BudgetError, DataError, UsageError
from kdeploy.data import load_task_data, seen_count
from kdeploy.engine.manifest import load_manifest
from tests.unit.test_pipeline import run


def _verify(run_dir) -> dict:
    return json.loads((run_dir / "verify" / "verify.json").read_text())


def _distinct(texts) -> set[str]:
    return {t.strip() for t in texts if t.strip()}


def test_neighbours_are_measured_and_training_texts_recorded(tiny_run, stsb_small):
    t = _verify(tiny_run)["transfer"]
    assert t["applicable"] and t["probe"] is None  # no --probe: no probe figures
    models = t["models"]
    assert models["teacher_fp32"]["neighbour_recall"] == 1.0
    assert models["teacher_fp32"]["neighbour_rank_spearman"] == pytest.approx(1.0)
    for name in ("teacher_int8", "student_fp32", "student_int8"):
        assert 0 < models[name]["neighbour_recall"] < 1.0, name
        assert "probe_accuracy" not in models[name]
    data = load_task_data(stsb_small)
    pool = list(dict.fromkeys(data.splits["test"].texts()))
    assert t["neighbours"] == {"k": 10, "pool": len(pool), "split": "test"}
    # which evaluated texts the student was trained on, counted here independently
    seen = t["texts_seen"]
    train = _distinct(data.splits["train"].texts())
    test = _distinct(data.splits["test"].texts())
    assert seen["training_texts"] == len(train)
    assert seen["eval"] == {"split": "test", "texts": len(test), "seen": len(test & train)}
    report = (tiny_run / "package" / "report.md").read_text()
    assert "## Beyond the task metric" in report and "recall@10" in report


def test_probe_reruns_only_verify_and_budgets_can_fail(
    tiny_run_copy, tiny_bert, stsb_small, sst2_small
):
    result = run(tiny_bert, stsb_small, tiny_run_copy, probe=sst2_small)
    assert result.ran == ["verify", "package"]  # the probe changes no model
    t = _verify(tiny_run_copy)["transfer"]
    sst2 = load_task_data(sst2_small)
    assert t["probe"]["train_examples"] == len(sst2.splits["train"])
    assert t["probe"]["eval_split"] == "dev"
    for name, r in t["models"].items():
        assert 0 < r["probe_accuracy"] <= 100, name
    assert t["models"]["teacher_fp32"]["probe_retention"] == 1.0
    seen = t["texts_seen"]
    assert seen["probe_train"]["seen"] == 0 and seen["probe_eval"]["seen"] == 0
    assert load_manifest(tiny_run_copy).data["probe_digest"]

    # budgets the tiny student meets, then one it cannot: its recall of the teacher's own
    # neighbours is below 1, so an absolute floor of 1.0 fails verify (exit 8)
    run(
        tiny_bert,
        stsb_small,
        tiny_run_copy,
        [
            "verify.budgets.min_probe_retention=0.01",
            "verify.budgets.min_neighbour_recall={over: teacher_int8, ratio: 0.01}",
        ],
        probe=sst2_small,
    )
    rows = {b["name"]: b for b in _verify(tiny_run_copy)["budgets"]}
    assert rows["min_probe_retention"]["passed"] and rows["min_neighbour_recall"]["passed"]
    with pytest.raises(BudgetError):
        run(
            tiny_bert,
            stsb_small,
            tiny_run_copy,
            ["verify.budgets.min_neighbour_recall={over: teacher_fp32, ratio: 1.0}"],
            probe=sst2_small,
        )
    rows = {b["name"]: b for b in _verify(tiny_run_copy)["budgets"]}
    assert not rows["min_neighbour_recall"]["passed"]


def test_cross_domain_run_trains_on_the_other_corpus_only(
    tmp_path, tiny_bert, stsb_small, sst2_small
):
    out = tmp_path / "run"
    run(
        tiny_bert,
        stsb_small,
        out,
        ["distill.text_sources=[unlabeled]"],
        unlabeled=sst2_small,
        until_stage="verify",
    )
    m = load_manifest(out)
    assert m.stages["distill"].metrics["text_sources"] == ["unlabeled"]
    fp = np.load(out / "distill" / "kd_texts.npy")
    sst2_train = load_task_data(sst2_small).splits["train"].texts()
    stsb = load_task_data(stsb_small)
    assert seen_count(sst2_train, fp) == len(_distinct(sst2_train)) == len(fp)
    assert seen_count(stsb.splits["train"].texts(), fp) == 0
    seen = _verify(out)["transfer"]["texts_seen"]
    assert seen["eval"]["seen"] == 0 and seen["neighbour_pool"]["seen"] == 0


def test_transfer_inputs_are_checked_before_anything_runs(
    tmp_path, tiny_bert, tiny_classifier, stsb_small, sst2_small
):
    out = tmp_path / "run"
    with pytest.raises(UsageError, match="no --unlabeled"):
        run(tiny_bert, stsb_small, out, ["distill.text_sources=[unlabeled]"])
    with pytest.raises(UsageError, match="min_probe_retention"):
        run(tiny_bert, stsb_small, out, ["verify.budgets.min_probe_retention=0.99"])
    with pytest.raises(UsageError, match="classifier"):
        run(tiny_classifier, sst2_small, out, probe=sst2_small)
    with pytest.raises(UsageError, match="switched off"):
        run(tiny_bert, stsb_small, out, ["verify.transfer.probe=null"], probe=sst2_small)
    with pytest.raises(DataError, match="classification data"):
        run(tiny_bert, stsb_small, out, probe=stsb_small)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no train.tsv"):
        run(tiny_bert, stsb_small, out, probe=empty)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for split in ("train", "dev"):
        (pairs / f"{split}.tsv").write_text("sentence1\tsentence2\tlabel\na\tb\t0\nc\td\t1\n")
    with pytest.raises(DataError, match="single sentences"):
        run(tiny_bert, stsb_small, out, probe=pairs)
    assert not (out / "manifest.json").exists()
