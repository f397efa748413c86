"""TensorRT end to end on a GPU: build the tiny student's engine, read its real layer JSON,
and check the engine computes what ONNX Runtime computes, through the same verify code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kdeploy.api import RunRequest, run_pipeline
from kdeploy.config import load_profile
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.layer_report import load_layer_info, parse_layers
from kdeploy.runtime.runners import OrtRunner, make_runner
from kdeploy.runtime.text import TextEncoder
from kdeploy.stages import RunOptions
from tests.conftest import TINY_OVERRIDES

pytestmark = [pytest.mark.gpu, pytest.mark.trt]

# ONNX models on ONNX Runtime's CPU EP (no onnxruntime-gpu needed), the engine on the GPU
GPU_TINY = [
    *TINY_OVERRIDES,
    "quantize.calibration_texts=64",
    "target.ort_providers=[cpu]",
    "target.timing_cache=null",
]


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory, tiny_bert, stsb_small):
    out = tmp_path_factory.mktemp("gpu") / "run"
    run_pipeline(
        RunRequest(
            profile=load_profile("h100-int8", GPU_TINY),
            model_dir=tiny_bert,
            data_dir=stsb_small,
            out_dir=out,
            options=RunOptions(progress=False),
        ),
        log=print,
    )
    return out


def test_engine_and_real_layer_json(gpu_run):
    engine_dir = gpu_run / "build" / "student"
    for name in (
        "model.plan",
        "timing.cache",
        "layers.json",
        "layer_report.json",
        "trtexec.sh",
        "kdeploy_model.json",
        "tokenizer.json",
    ):
        assert (engine_dir / name).is_file(), name
    layers = parse_layers(load_layer_info(engine_dir / "layers.json"))
    assert any(x["math"] for x in layers)
    report = json.loads((engine_dir / "layer_report.json").read_text())
    assert report["summary"]["math_layers"] == sum(x["math"] for x in layers)


def test_engine_matches_onnx_runtime(gpu_run):
    src = gpu_run / "quantize" / "student"
    card = ModelCard.load(src)
    enc = TextEncoder(src / card.tokenizer_file, card.max_seq_length)
    feeds = enc.encode(["a man is playing a guitar", "the cat sits on the mat", "hello"])
    with OrtRunner(src / card.model_file, outputs=[card.output]) as cpu:
        want = cpu.infer(feeds)[card.output]
    eng = gpu_run / "build" / "student"
    with make_runner(eng, ModelCard.load(eng)) as trt:
        got = trt.infer(feeds)[card.output]
        trt.bench_fn(feeds)()  # device-resident timing call runs
    cos = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.99, cos


def test_verify_measures_the_engine(gpu_run):
    verify = json.loads((gpu_run / "verify" / "verify.json").read_text())
    assert verify["deploy"] == "student_trt"
    trt, onnx = verify["models"]["student_trt"], verify["models"]["student_int8"]
    assert trt["metric"] == onnx["metric"] == "spearman"
    assert trt["examples"] == onnx["examples"]
    assert abs(trt["value"] - onnx["value"]) < 5.0
    bench = json.loads((gpu_run / "bench" / "bench.json").read_text())
    assert bench["models"]["student_trt"]["io"] == "device"
