"""OpenVINO as a CPU engine: the runner, the NNCF / Q/DQ INT8 model, the engine picked by
measurement, the Triton OpenVINO backend config, and the profile rules.

Real OpenVINO and NNCF on the tiny BERT run of the cpu-int8 profile (which lists both
engines), real STS-B sentences; nothing mocked but the bench figures in the pick tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="kdeploy[openvino] is not installed")

from kdeploy.config import load_profile  # noqa: E402
from kdeploy.core.errors import ModelError, ProfileError  # noqa: E402
from kdeploy.evaluation.variants import deploy_candidates, models_of  # noqa: E402
from kdeploy.evaluation.verify import EngineChoice, pick_engine, verify_models  # noqa: E402
from kdeploy.runtime.card import ModelCard  # noqa: E402
from kdeploy.runtime.model import Encoder  # noqa: E402
from kdeploy.runtime.openvino_runner import OpenVinoOptions, OpenVinoRunner  # noqa: E402
from kdeploy.runtime.runners import OrtRunner, open_model_file  # noqa: E402
from kdeploy.runtime.text import TextEncoder  # noqa: E402
from tests.conftest import TINY_OVERRIDES, real_sentences  # noqa: E402


def _feeds(model_dir: Path, texts: list[str]) -> dict:
    card = ModelCard.load(model_dir)
    return TextEncoder(model_dir / card.tokenizer_file, card.max_seq_length).encode(texts)


def test_openvino_runner_reads_onnx_like_onnx_runtime(tiny_ov_run):
    """fp32 ONNX through OpenVINO and through ONNX Runtime: the same numbers (to OpenVINO's
    CPU kernels' own rounding: ~1e-4 on outputs of ~1)."""
    src = tiny_ov_run / "export" / "student"
    feeds = _feeds(src, real_sentences(16))
    out = "sentence_embedding"
    with OrtRunner(src / "model.onnx", outputs=[out]) as a:
        ref = a.infer(feeds)[out]
    for options in (OpenVinoOptions(), OpenVinoOptions(bounded_shapes=True, max_batch=64)):
        with OpenVinoRunner(src / "model.onnx", threads=1, options=options, outputs=[out]) as b:
            got = b.infer(feeds)[out]
            assert b.input_names == a.input_names
        np.testing.assert_allclose(got, ref, atol=5e-4)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.99999


def test_openvino_runner_errors_name_the_file(tiny_ov_run, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        OpenVinoRunner(tmp_path / "model.xml").__enter__()
    broken = tmp_path / "model.xml"
    broken.write_text("<net>not a model")
    with pytest.raises(ModelError, match="OpenVINO cannot load"):
        OpenVinoRunner(broken).__enter__()
    ov_dir = tiny_ov_run / "quantize" / "openvino"
    with pytest.raises(ModelError, match="has no output"):
        OpenVinoRunner(ov_dir / "model.xml", outputs=["logits"]).__enter__()
    with pytest.raises(ModelError, match="performance hint"):
        OpenVinoOptions(performance_hint="FAST").compile_config(2)


def test_compile_config_uses_openvino_property_names():
    import openvino.properties as props
    import openvino.properties.hint as hints

    cfg = OpenVinoOptions(performance_hint="THROUGHPUT", cache_dir="/tmp/x").compile_config(3)
    assert set(cfg) == {
        hints.performance_mode(),
        props.inference_num_threads(),
        props.cache_dir(),
    }
    assert cfg[props.inference_num_threads()] == "3"


def test_nncf_int8_model_dir_runs_in_the_runtime(tiny_ov_run):
    """The quantize stage's OpenVINO model: IR + card, FakeQuantize on the GEMMs, close to
    the fp32 student, opened by kdeploy.runtime's Encoder through the card."""
    import openvino as ov

    ov_dir = tiny_ov_run / "quantize" / "openvino"
    card = ModelCard.load(ov_dir)
    assert card.model_file == "model.xml" and card.precision == "int8"
    assert card.extra["engine"] == "openvino" and card.extra["int8"] == "nncf"
    assert (ov_dir / "model.bin").is_file()
    ops = [op.get_type_name() for op in ov.Core().read_model(str(ov_dir / "model.xml")).get_ops()]
    assert ops.count("FakeQuantize") >= 8  # 2 layers x (Q, K, V, out, FFN in, FFN out) inputs
    metrics = json.loads((tiny_ov_run / "manifest.json").read_text())["stages"]["quantize"]
    record = metrics["metrics"]["openvino"]
    assert record["method"] == "nncf" and record["calibration_texts"] > 0
    assert record["mean_centred_cosine"] > 0.9
    texts = real_sentences(8)
    with Encoder(ov_dir) as enc, Encoder(tiny_ov_run / "export" / "student") as ref:
        got, want = enc.embed(texts), ref.embed(texts)
    assert got.shape == want.shape
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.95


def test_qdq_graph_read_by_openvino(tiny_ov_run, tmp_path):
    """int8 'qdq': OpenVINO takes an existing Q/DQ graph as is (each Q/DQ pair becomes a
    FakeQuantize) instead of quantizing the fp32 one."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from kdeploy.train.openvino_int8 import openvino_int8
    from kdeploy.train.quantize import _TextCalibration

    src = tiny_ov_run / "export" / "student"
    qdq = tmp_path / "qdq.onnx"
    names = [i.name for i in onnx.load(str(src / "model.onnx")).graph.input]
    quantize_static(
        str(src / "model.onnx"),
        str(qdq),
        _TextCalibration(src, real_sentences(32), names),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )
    n_q = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(qdq)).graph.node)
    record = openvino_int8(
        src,
        tmp_path / "ov",
        method="qdq",
        calibration_texts=[],
        validation_texts=real_sentences(16),
        qdq_onnx=qdq,
    )
    assert record.method == "qdq" and record.calibration_texts == 0
    assert 0 < record.fake_quantize_nodes <= n_q
    assert record.min_cosine > 0.9
    with pytest.raises(Exception, match="Q/DQ graph"):
        openvino_int8(
            src, tmp_path / "ov2", method="qdq", calibration_texts=[], validation_texts=[]
        )


def test_runner_factory_picks_openvino_for_ir_files(tiny_ov_run):
    runner = open_model_file(tiny_ov_run / "quantize" / "openvino" / "model.xml")
    assert isinstance(runner, OpenVinoRunner)


# ------------------------------------------------------------------ picked by measurement


def _row(name: str, passed: bool) -> dict:
    return {"name": name, "limit": 1, "value": 1, "passed": passed, "detail": ""}


def _choice(model: str, sps: float, *passed: bool) -> EngineChoice:
    bench = {"models": {model: {"throughput": {"sentences_per_s": sps}}}}
    return EngineChoice.of(model, [_row(f"b{i}", p) for i, p in enumerate(passed)], bench)


def test_the_fastest_engine_within_budgets_wins():
    ort, ov = _choice("student_int8", 1200, True, True), _choice("student_openvino", 1500, True)
    assert pick_engine([ort, ov]) is ov and ov.engine == "openvino"
    assert "1.25x student_int8 (ort)" in ov.reason([ort, ov])
    # faster but over a budget: the slower one that meets them all is deployed
    ov_bad = _choice("student_openvino", 3000, True, False)
    assert pick_engine([ort, ov_bad]) is ort
    # none meets them all: the most budgets met, then speed (its misses fail the run)
    ort_bad = _choice("student_int8", 1200, False, False)
    win = pick_engine([ort_bad, ov_bad])
    assert win is ov_bad and not win.passed
    assert "no engine meets every budget" in win.reason([ort_bad, ov_bad])


def test_candidates_follow_the_profile_engines(tiny_ov_run):
    from kdeploy.engine.rundir import open_run

    models = open_run(tiny_ov_run).models
    assert deploy_candidates(models, ["ort", "openvino"]) == ["student_int8", "student_openvino"]
    assert deploy_candidates(models, ["ort"]) == ["student_int8"]
    assert deploy_candidates(models, ["openvino"]) == ["student_openvino"]
    assert deploy_candidates(models, ["trt"]) == ["student_int8"]  # engine not built yet


def test_verify_deploys_what_bench_measured_fastest(tiny_ov_run, stsb_small):
    """Real models and metrics; the bench figures decide: swap which engine is faster and
    the deployed model follows."""
    from kdeploy.engine.rundir import open_run

    models = open_run(tiny_ov_run).models
    profile = load_profile("cpu-int8", [*TINY_OVERRIDES, "target.engines=[ort, openvino]"]).profile
    bench = json.loads((tiny_ov_run / "bench" / "bench.json").read_text())
    for fast, slow in (("student_openvino", "student_int8"), ("student_int8", "student_openvino")):
        bench["models"][fast]["throughput"]["sentences_per_s"] = 2000.0
        bench["models"][slow]["throughput"]["sentences_per_s"] = 1000.0
        v = verify_models(models, stsb_small, profile, bench, log=lambda m: None)
        assert v["deploy"] == fast, v["deploy_reason"]
        assert [e["model"] for e in v["engines"]] == ["student_int8", "student_openvino"]
        assert "2.00x" in v["deploy_reason"]


def test_the_run_records_and_packages_its_choice(tiny_ov_run):
    verify = json.loads((tiny_ov_run / "verify" / "verify.json").read_text())
    assert {e["engine"] for e in verify["engines"]} == {"ort", "openvino"}
    deployed = verify["deploy"]
    src = models_of({"student_int8": Path("a"), "student_openvino": Path("b")})
    assert deployed in src
    card = ModelCard.load(tiny_ov_run / "package" / "deploy")
    assert card.model_file == ("model.xml" if deployed == "student_openvino" else "model.onnx")
    md = (tiny_ov_run / "package" / "report.md").read_text()
    assert "## Engines (picked by measurement)" in md
    assert verify["deploy_reason"] in md
    # beside the chain, not after it; its size counts model.bin
    assert (
        "Chain: teacher_fp32 -> student_fp32 -> student_int8; other engine: student_openvino" in md
    )
    report = json.loads((tiny_ov_run / "package" / "report.json").read_text())
    row = next(r for r in report["chain"] if r["model"] == "student_openvino")
    bin_mb = (tiny_ov_run / "quantize" / "openvino" / "model.bin").stat().st_size / 1e6
    assert row["kind"] == "engine" and row["size_mb"] >= round(bin_mb, 2)


# ------------------------------------------------------------------ Triton


def test_triton_repository_for_an_openvino_model(tiny_ov_run, tmp_path):
    from kdeploy.packaging.triton import write_model_repository
    from kdeploy.packaging.triton_check import check_config, load_config

    profile = load_profile("cpu-int8", [*TINY_OVERRIDES, "target.engines=[ort, openvino]"]).profile
    repo = tmp_path / "repo"
    info = write_model_repository(repo, tiny_ov_run / "quantize" / "openvino", profile, name="m")
    assert info["platform"] == "openvino"
    cfg = load_config(repo / "m" / "config.pbtxt")
    assert cfg.backend == "openvino" and cfg.platform == ""
    assert cfg.default_model_filename == "model.xml"
    assert cfg.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
    assert cfg.parameters["INFERENCE_NUM_THREADS"].string_value == "2"
    assert {"model.xml", "model.bin"} <= {p.name for p in (repo / "m" / "1").iterdir()}
    assert check_config(cfg, repo / "m") == []
    (repo / "m" / "1" / "model.bin").unlink()
    assert any("model.bin" in p or ".bin" in p for p in check_config(cfg, repo / "m"))
    cfg.platform, cfg.backend = "openvino", ""
    assert any("goes in `backend`" in p for p in check_config(cfg, repo / "m"))


# ------------------------------------------------------------------ profile rules


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["target.engines=[ort, ort]"], "twice"),
        (["target.engines=[openvino]"], "must be one of engines"),
        (["quantize.enabled=false", "target.precision=fp32"], "needs quantize.enabled"),
        (["target.openvino.int8=qdq"], "quantize.format: qdq"),
    ],
)
def test_profile_rules_for_engines(overrides, message):
    with pytest.raises(ProfileError, match=message):
        load_profile("cpu-int8", overrides)


def test_openvino_is_refused_on_gpu_targets():
    with pytest.raises(ProfileError, match="cpu device"):
        load_profile("a100-int8", ["target.runtime=openvino"])
    with pytest.raises(ProfileError, match="cpu device"):
        load_profile("a100-int8", ["target.engines=[ort]"])


def test_a_cpu_profile_with_only_openvino():
    profile = load_profile("cpu-int8", ["target.runtime=openvino", "target.engines=null"])
    assert profile.profile.target.engine_list() == ["openvino"]


def test_an_openvino_only_profile_deploys_and_serve_checks_the_openvino_model(
    tiny_ov_run, tiny_bert, stsb_small, tmp_path
):
    """runtime openvino alone: the same run re-verified deploys the OpenVINO model (verify's
    key holds the engines), the package ships model.xml, its Triton repository uses the
    OpenVINO backend, and serve-check replays the reference through both."""
    from kdeploy.api import RunRequest, run_pipeline, serve_check
    from kdeploy.engine.manifest import load_manifest
    from kdeploy.stages import RunOptions

    run = tmp_path / "run"
    shutil.copytree(tiny_ov_run, run)
    logs: list[str] = []
    run_pipeline(
        RunRequest(
            profile=load_profile(
                "cpu-int8", [*TINY_OVERRIDES, "target.runtime=openvino", "target.engines=null"]
            ),
            model_dir=tiny_bert,
            data_dir=stsb_small,
            out_dir=run,
            options=RunOptions(progress=False),
        ),
        log=logs.append,
    )
    assert any("[quantize] up to date" in line for line in logs), logs
    assert any(line.startswith("[verify] running") for line in logs), logs
    verify = json.loads((run / "verify" / "verify.json").read_text())
    assert verify["deploy"] == "student_openvino" and len(verify["engines"]) == 1
    assert ModelCard.load(run / "package" / "deploy").model_file == "model.xml"
    assert load_manifest(run).stages["package"].metrics["deploy_from"] == "student_openvino"
    triton = next((run / "package" / "triton").iterdir())
    assert (triton / "1" / "model.xml").is_file() and (triton / "1" / "model.bin").is_file()
    result = serve_check(run, log=lambda m: None)
    assert result["passed"], result
