"""The pipeline on a tiny random BERT: stages, manifest, resume, Ctrl-C, budgets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdeploy.api import RunRequest, run_pipeline
from kdeploy.config import load_profile
from kdeploy.core.errors import BudgetError, Interrupted, RunDirError, UsageError
from kdeploy.engine.manifest import load_manifest
from kdeploy.stages import ORDER, RunOptions
from tests.conftest import TINY_OVERRIDES

CPU_STAGES = [s for s in ORDER if s not in ("build", "sparsify")]  # off in cpu-int8


def run(model, data, out, extra=(), profile="cpu-int8", **kw):
    req = RunRequest(
        profile=load_profile(profile, [*TINY_OVERRIDES, *extra]),
        model_dir=model,
        data_dir=data,
        out_dir=out,
        options=RunOptions(progress=False),
        **kw,
    )
    return run_pipeline(req, log=lambda m: None)


def test_finished_run_has_every_stage_and_artifact(tiny_run):
    m = load_manifest(tiny_run)
    assert list(m.stages) == CPU_STAGES and m.skipped == ["sparsify", "build"]
    for rec in m.stages.values():
        for art in rec.outputs.values():
            assert art.check(tiny_run) == []
    assert (tiny_run / "package" / "report.md").is_file()
    report = json.loads((tiny_run / "package" / "report.json").read_text())
    assert report["passed"] is True
    names = [row["model"] for row in report["summary"]]
    assert names == ["teacher_fp32", "teacher_int8", "student_fp32", "student_int8"]
    for row in report["summary"]:
        assert row["value"] is not None and row["sentences_per_s"] > 0
    deploy = tiny_run / "package" / "deploy"
    assert {"model.onnx", "tokenizer.json", "kdeploy_model.json"} <= {
        p.name for p in deploy.iterdir()
    }
    card = json.loads((deploy / "kdeploy_model.json").read_text())
    assert card["precision"] == "int8" and card["task"] == "embedding"
    # the distilled student really has the profile's depth and the teacher's kept layers
    assert m.stages["distill"].metrics["kept_layers"] == [0, 3]
    assert m.stages["export"].metrics["student"]["layers"] == 2
    assert m.stages["export"].metrics["student"]["validation"]["max_abs_diff"] < 1e-4
    # no temp dirs left behind
    assert not list(tiny_run.glob("*.tmp"))


def test_rerun_reuses_everything(tiny_run_copy, tiny_bert, stsb_small):
    result = run(tiny_bert, stsb_small, tiny_run_copy)
    assert result.ran == []
    assert result.reused == CPU_STAGES and result.skipped == ["sparsify", "build"]


def test_changing_a_late_section_reruns_only_downstream(tiny_run_copy, tiny_bert, stsb_small):
    result = run(tiny_bert, stsb_small, tiny_run_copy, ["bench.iterations=4"])
    assert result.ran == ["bench", "verify", "package"]
    assert result.reused == ["distill", "export", "quantize"]


def test_from_and_until(tiny_run_copy, tiny_bert, stsb_small):
    result = run(tiny_bert, stsb_small, tiny_run_copy, from_stage="quantize", until_stage="bench")
    assert result.ran == ["quantize", "bench"]
    assert result.reused == ["distill", "export"]


def test_from_needs_finished_earlier_stages(tmp_path, tiny_bert, stsb_small):
    with pytest.raises(RunDirError, match="comes before --from export"):
        run(tiny_bert, stsb_small, tmp_path / "r", from_stage="export")


def test_bad_stage_names_and_order(tmp_path, tiny_bert, stsb_small):
    with pytest.raises(UsageError, match="no such stage"):
        run(tiny_bert, stsb_small, tmp_path / "r", from_stage="compile")
    with pytest.raises(UsageError, match="comes after --until"):
        run(tiny_bert, stsb_small, tmp_path / "r", from_stage="bench", until_stage="export")


def test_damaged_artifact_is_rebuilt(tiny_run_copy, tiny_bert, stsb_small):
    model = tiny_run_copy / "quantize" / "student" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10])
    result = run(tiny_bert, stsb_small, tiny_run_copy)
    assert result.ran[0] == "quantize"
    assert (
        load_manifest(tiny_run_copy).stages["quantize"].outputs["student_int8"].check(tiny_run_copy)
        == []
    )


def test_other_profile_run_dir_is_refused_unless_forced(
    tiny_run_copy, tiny_bert, stsb_small, tmp_path
):
    other = tmp_path / "other.yaml"
    other.write_text("name: other\nextends: cpu-int8\n")
    with pytest.raises(RunDirError, match="holds a run of profile 'cpu-int8'"):
        run(tiny_bert, stsb_small, tiny_run_copy, profile=str(other))
    result = run(tiny_bert, stsb_small, tiny_run_copy, profile=str(other), force=True)
    assert result.ran == CPU_STAGES


def test_ctrl_c_in_a_stage_keeps_earlier_stages(tmp_path, tiny_bert, stsb_small, monkeypatch):
    from kdeploy.stages.bench import Bench

    def interrupted(self, inputs, out_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(Bench, "run", interrupted)
    out = tmp_path / "r"
    with pytest.raises(Interrupted, match="stopped during stage bench"):
        run(tiny_bert, stsb_small, out)
    m = load_manifest(out)
    assert list(m.stages) == ["distill", "export", "quantize"]
    assert not (out / "bench").exists() and not (out / "bench.tmp").exists()
    monkeypatch.undo()
    result = run(tiny_bert, stsb_small, out)
    assert result.reused == ["distill", "export", "quantize"]
    assert result.ran == ["bench", "verify", "package"]


@pytest.mark.parametrize(
    "narrow",
    [
        [],
        # a sliced student resumes its learned projections too (embedding and hidden states)
        [
            "student.hidden_size=16",
            "student.intermediate_size=24",
            "distill.losses={embedding_mse: 1.0, hidden_mse: 1.0}",
        ],
    ],
    ids=["full-width", "narrow"],
)
def test_distill_resumes_mid_training_to_identical_weights(
    tmp_path, tiny_bert, stsb_small, monkeypatch, narrow
):
    from safetensors.numpy import load_file

    from kdeploy.train import checkpoint

    extra = ["distill.epochs=2", *narrow]
    clean = tmp_path / "clean"
    run(tiny_bert, stsb_small, clean, extra, until_stage="distill")

    real_save = checkpoint.save

    def save_then_stop(ckpt, *args):
        real_save(ckpt, *args)
        raise KeyboardInterrupt  # Ctrl-C right after epoch 1 was checkpointed

    monkeypatch.setattr(checkpoint, "save", save_then_stop)
    resumed = tmp_path / "resumed"
    with pytest.raises(Interrupted, match="resumes from its checkpoint"):
        run(tiny_bert, stsb_small, resumed, extra, until_stage="distill")
    assert (resumed / "distill.tmp" / "checkpoint" / "state.json").is_file()
    monkeypatch.setattr(checkpoint, "save", real_save)
    run(tiny_bert, stsb_small, resumed, extra, until_stage="distill")
    a = load_file(str(clean / "distill" / "student" / "model.safetensors"))
    b = load_file(str(resumed / "distill" / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ma = load_manifest(clean).stages["distill"].metrics["history"]
    mb = load_manifest(resumed).stages["distill"].metrics["history"]
    assert ma == mb


def test_missed_budget_fails_after_writing_the_report(tiny_run_copy, tiny_bert, stsb_small):
    with pytest.raises(BudgetError, match="max_latency_p50") as e:
        run(tiny_bert, stsb_small, tiny_run_copy, ["verify.budgets.max_latency.p50_ms=0.0001"])
    assert e.value.exit_code == 8
    report = json.loads((tiny_run_copy / "package" / "report.json").read_text())
    assert report["passed"] is False
    assert "**FAILED**" in (tiny_run_copy / "package" / "report.md").read_text()


def test_task_mismatch_is_refused(tmp_path, tiny_bert, sst2_small):
    from kdeploy.core.errors import DataError

    with pytest.raises(DataError, match="classification data but the teacher is an embedding"):
        run(tiny_bert, sst2_small, tmp_path / "r")


def test_classifier_teacher_runs_end_to_end(tmp_path, tiny_classifier, sst2_small):
    out = tmp_path / "clf"
    run(tiny_classifier, sst2_small, out)
    report = json.loads((out / "package" / "report.json").read_text())
    assert report["verify"]["task"] == "classification"
    assert report["verify"]["split"] == "dev"
    assert {row["metric"] for row in report["summary"]} == {"accuracy"}


def test_device_stages_reuse_and_rerun_a_host_run(tiny_run_copy, stsb_small):
    """`kdeploy build RUN_DIR --until package` computes the same stage keys as compress."""
    from click.testing import CliRunner

    from kdeploy.api import run_device_stages
    from kdeploy.cli import cli

    res = run_device_stages(tiny_run_copy, until="package", log=lambda m: None)
    assert (res.ran, res.reused, res.skipped) == ([], ["bench", "verify", "package"], ["build"])
    res = run_device_stages(
        tiny_run_copy, until="verify", force=True, data_dir=stsb_small, log=lambda m: None
    )
    assert res.ran == ["bench", "verify"]
    out = CliRunner().invoke(cli, ["build", str(tiny_run_copy)], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert "has no TensorRT build (runtime is not trt)" in out.output


def test_device_stages_refuse_other_data(tiny_run_copy, sst2_small):
    from kdeploy.api import run_device_stages
    from kdeploy.core.errors import DataError

    with pytest.raises(DataError, match="does not hold the data the run was started with"):
        run_device_stages(tiny_run_copy, until="bench", data_dir=sst2_small, log=lambda m: None)


def test_unlabeled_folder_widens_distillation_and_is_fingerprinted(
    tiny_run_copy, tiny_bert, stsb_small, sst2_small, tmp_path
):
    import shutil

    from kdeploy.data import load_task_data

    extra = tmp_path / "extra"
    shutil.copytree(sst2_small, extra)
    before = load_manifest(tiny_run_copy).stages["distill"].metrics["texts"]
    result = run(tiny_bert, stsb_small, tiny_run_copy, unlabeled=extra)
    assert result.ran[0] == "distill"  # a new corpus is a new student
    texts = load_manifest(tiny_run_copy).stages["distill"].metrics["texts"]
    sst2_train = set(load_task_data(sst2_small).splits["train"].texts())
    assert before < texts <= before + len(sst2_train)
    assert run(tiny_bert, stsb_small, tiny_run_copy, unlabeled=extra).ran == []
    (extra / "dev.tsv").write_text("sentence\tlabel\nnot training text\t1\n")
    assert run(tiny_bert, stsb_small, tiny_run_copy, unlabeled=extra).ran == []  # dev unused
    with (extra / "train.tsv").open("a") as f:
        f.write("one more training sentence\t1\n")
    assert run(tiny_bert, stsb_small, tiny_run_copy, unlabeled=extra).ran[0] == "distill"


def test_engine_shapes_must_fit_the_teachers_positions(tiny_bert, stsb_small, tmp_path):
    """A TensorRT profile whose export.shapes allow longer inputs than the teacher has
    positions is refused before anything is written (the engine would accept them)."""
    from kdeploy.core.errors import ProfileError

    out = tmp_path / "run"
    overrides = ["quantize.calibration_texts=64", "sparsify.min_features=8"]
    with pytest.raises(ProfileError) as err:
        run(tiny_bert, stsb_small, out, overrides, profile="a100-int8")
    assert "export.shapes.sequence.max=256" in err.value.what
    assert "128 positions" in err.value.what and "a100-int8.yaml" in err.value.where
    assert "max: 128" in err.value.fix
    assert not out.exists()
