"""TensorRT end to end on a GPU: the tiny student's engine is built from the profile's plan,
runs the GEMMs the quantize stage made INT8 in INT8, is eligible for 2:4 sparse kernels,
computes what ONNX Runtime computes on real sentences, and is what verify measured.

The setup (the run's host stages) runs on every machine; the engine checks skip where there
is no GPU with TensorRT (``need_tensorrt``), right before their first CUDA call.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdeploy.config import load_profile
from kdeploy.config.settings import build_settings
from kdeploy.data import load_task_data
from kdeploy.engine.manifest import load_manifest
from kdeploy.onnxtools.layers import gemm_layers
from kdeploy.onnxtools.qdq_lint import lint_qdq
from kdeploy.runtime.build_plan import make_plan, onnx_inputs
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.layer_report import load_layer_info, parse_layers
from kdeploy.runtime.metrics import cosine_rows, spearman
from kdeploy.runtime.runners import OrtRunner, make_runner
from kdeploy.runtime.text import TextEncoder
from tests.conftest import centered_cosines, identity_margin, real_sentences
from tests.gpu.conftest import need_tensorrt

pytestmark = [pytest.mark.gpu, pytest.mark.trt]


def test_the_gpu_setup_reaches_the_engine_build(gpu_run):
    """Runs on the CPU too: the host stages finished, the student is 2:4 sparse and
    symmetric INT8 Q/DQ, and the plan the build stage will hand TensorRT accepts it."""
    run_dir, handoff = gpu_run
    m = load_manifest(run_dir)
    assert list(m.stages)[:4] == ["distill", "sparsify", "export", "quantize"]
    if handoff is not None:
        assert "stage build" in handoff.what and list(m.stages) == list(m.stages)[:4]
    assert m.stages["sparsify"].metrics["sparse_layers"] > 0
    onnx = run_dir / "quantize" / "student" / "model.onnx"
    layers = gemm_layers(onnx)
    assert layers and all(x.weight_bits == 8 and x.is_2to4 for x in layers)
    assert lint_qdq(onnx) == []
    profile = load_profile(run_dir / "profile.yaml").profile
    plan = make_plan(build_settings(profile), onnx_inputs(onnx), onnx="quantize/student/model.onnx")
    assert plan.flags == ("SPARSE_WEIGHTS",) and plan.network_typing == "strong"
    assert all(s.max[1] <= 128 for s in plan.shapes)  # the tiny BERT has 128 positions


def _engine_layers(run_dir):
    engine_dir = run_dir / "build" / "student"
    report = json.loads((engine_dir / "layer_report.json").read_text())
    return engine_dir, parse_layers(load_layer_info(engine_dir / "layers.json")), report


def test_quantized_gemms_run_int8_in_the_engine(gpu_run):
    """Every engine layer that holds one of the ONNX graph's Q/DQ GEMMs runs INT8: TensorRT
    falls back to FP16/FP32 silently, and the layer JSON is where it shows."""
    need_tensorrt()
    run_dir, _ = gpu_run
    engine_dir, layers, report = _engine_layers(run_dir)
    for name in ("model.plan", "timing.cache", "trtexec.sh", "kdeploy_model.json"):
        assert (engine_dir / name).is_file(), name
    assert report["summary"]["math_layers"] == sum(x["math"] for x in layers)
    int8_nodes = {x.node for x in gemm_layers(run_dir / "quantize" / "student" / "model.onnx")}
    holding = [x for x in layers if set(x["onnx_nodes"]) & int8_nodes]
    assert holding, "no engine layer names a quantized GEMM of the ONNX graph"
    assert [x["name"] for x in holding if x["precision"] != "INT8"] == []


def test_2to4_weights_are_eligible_for_sparse_kernels(gpu_run):
    """TensorRT's builder log says which layers had 2:4 weights it could run sparse; the
    report warns when none was picked (the tiny GEMMs may be too small to pay)."""
    need_tensorrt()
    run_dir, _ = gpu_run
    _, _, report = _engine_layers(run_dir)
    summary = report["summary"]
    assert summary["sparse_requested"]
    assert summary["sparse_log"]["eligible"], "TensorRT saw no 2:4 weights to run sparse"
    picked = summary["sparse_layers"] or summary["sparse_log"]["picked"]
    assert picked or any("picked no sparse kernel" in w for w in summary["warnings"])


def test_engine_matches_onnx_runtime_on_real_sentences(gpu_run):
    """32 real sentences: the engine's embedding of each is close to ONNX Runtime's of the
    same Q/DQ graph (centred cosine >= 0.98) and nearer it than any other sentence's."""
    need_tensorrt()
    run_dir, _ = gpu_run
    src = run_dir / "quantize" / "student"
    card = ModelCard.load(src)
    enc = TextEncoder(src / card.tokenizer_file, card.max_seq_length)
    feeds = enc.encode(real_sentences(32))
    with OrtRunner(src / card.model_file, outputs=[card.output]) as cpu:
        want = cpu.infer(feeds)[card.output]
    eng = run_dir / "build" / "student"
    with make_runner(eng, ModelCard.load(eng)) as trt:
        got = trt.infer(feeds)[card.output]
        on_device = trt.bench_fn(feeds)()  # the timed call: outputs stay on the GPU
    assert centered_cosines(got, want).min() >= 0.98
    assert identity_margin(got, want) > 0
    from polygraphy import cuda

    view = on_device[card.output]
    assert isinstance(view, cuda.DeviceView)  # not copied back to the host
    np.testing.assert_allclose(view.numpy(), got, atol=1e-3)


def test_verify_measured_the_engine(gpu_run, stsb_small):
    """verify's student_trt row is the engine's own metric: recomputed here from the
    engine's embeddings of the eval split, and within 1 point of the ONNX student's."""
    need_tensorrt()
    run_dir, _ = gpu_run
    verify = json.loads((run_dir / "verify" / "verify.json").read_text())
    assert verify["deploy"] == "student_trt"
    trt, onnx = verify["models"]["student_trt"], verify["models"]["student_int8"]
    split = load_task_data(stsb_small).eval_split()
    from kdeploy.runtime.model import Encoder

    eng = run_dir / "build" / "student"
    with Encoder(eng, batch_size=verify["batch_size"]) as e:
        a, b = e.embed(split.texts_a), e.embed(split.texts_b)
    mine = 100 * spearman(cosine_rows(a, b), np.asarray(split.labels))
    assert mine == pytest.approx(trt["value"], abs=1e-9)
    assert trt["examples"] == onnx["examples"] == len(split)
    assert abs(trt["value"] - onnx["value"]) <= 2.0  # 40 pairs: one flipped rank ~ 0.1-0.5
    bench = json.loads((run_dir / "bench" / "bench.json").read_text())
    assert bench["models"]["student_trt"]["latency"]
