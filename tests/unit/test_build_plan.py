"""Profile -> BuildPlan -> TensorRT settings / trtexec line / ONNX Runtime TensorRT-EP options.

All three are rendered from the same plan; these tests check the renderings and that no
setting kind is left out of any of them (agreement by construction).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest

from kdeploy.config import load_profile
from kdeploy.config.settings import build_settings
from kdeploy.core.errors import ModelError
from kdeploy.runtime.build_plan import (
    BUILDER_FLAGS,
    ORT_TRT_RENDER,
    SETTING_KINDS,
    TRTEXEC_RENDER,
    BuildPlan,
    Setting,
    TensorSpec,
    make_plan,
    onnx_inputs,
    ort_trt_options,
    shape_spec,
    trtexec_argv,
    trtexec_command,
)
from kdeploy.runtime.trt_build import TRT_APPLY

BERT_INPUTS = [
    TensorSpec("input_ids", ("batch_size", "sequence_length")),
    TensorSpec("attention_mask", ("batch_size", "sequence_length")),
    TensorSpec("token_type_ids", ("batch_size", "sequence_length")),
]


def plan_for(profile: str, overrides=(), inputs=BERT_INPUTS) -> BuildPlan:
    p = load_profile(profile, list(overrides)).profile
    return make_plan(build_settings(p), inputs, onnx="quantize/student/model.onnx")


def write_onnx(path: Path, dims: list) -> Path:
    """A small real ONNX model with BERT-style (batch, sequence) int64 inputs."""
    import onnx
    from onnx import TensorProto, helper

    names = ["input_ids", "attention_mask"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in names]
    nodes = [
        helper.make_node("Add", names, ["sum"]),
        helper.make_node("Cast", ["sum"], ["logits"], to=TensorProto.FLOAT),
    ]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, dims)
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, [out]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a100_plan():
    plan = plan_for("a100-int8")
    # strongly typed: no precision flag, only 2:4 (the profile asks for it)
    assert plan.flags == ("SPARSE_WEIGHTS",) and plan.network_typing == "strong"
    assert plan.settings()[0] == Setting("typing", "strong")
    assert plan.compute_capability == "SM 8.0" and plan.workspace_mb == 4096
    assert [s.name for s in plan.shapes] == ["input_ids", "attention_mask", "token_type_ids"]
    s = plan.shapes[0]
    assert (s.min, s.opt, s.max) == ((1, 1), (32, 128), (128, 256))
    assert plan.dla_core is None and plan.sparse_requested
    assert not plan_for("a100-int8", ["sparsify.enabled=false"]).sparse_requested
    assert plan.engine == "build/student/model.plan"


def test_sparsity_dla_and_no_precision_flags():
    """TensorRT 11 removed the weak-typing flags (FP16, INT8, BF16): no plan sets one,
    whatever its precision; the precision is in the graph."""
    assert plan_for("h100-int8", ["sparsify.enabled=true"]).flags == ("SPARSE_WEIGHTS",)
    orin = plan_for("orin-int8", ["target.dla_core=1", "sparsify.enabled=false"])
    assert orin.flags == ("GPU_FALLBACK",) and orin.dla_core == 1
    assert orin.workspace_mb == 1024
    assert (
        "GPU_FALLBACK"
        not in plan_for("orin-int8", ["target.dla_core=0", "target.gpu_fallback=false"]).flags
    )
    fp16 = plan_for("t4-int8", ["target.precision=fp16", "quantize.method=fp16"])
    assert fp16.flags == () and fp16.precision == "fp16"
    for plan in (fp16, orin, plan_for("a100-int8")):
        assert set(plan.flags) <= set(BUILDER_FLAGS)


def test_trtexec_command_for_a100():
    plan = plan_for("a100-int8", ["target.builder_optimization_level=4"])
    assert trtexec_argv(plan) == [
        "trtexec",
        "--onnx=quantize/student/model.onnx",
        "--saveEngine=build/student/model.plan",
        "--stronglyTyped",
        "--sparsity=enable",
        "--memPoolSize=workspace:4096",
        "--builderOptimizationLevel=4",
        "--profilingVerbosity=detailed",
        "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1",
        "--optShapes=input_ids:32x128,attention_mask:32x128,token_type_ids:32x128",
        "--maxShapes=input_ids:128x256,attention_mask:128x256,token_type_ids:128x256",
        "--timingCacheFile=build/student/timing.cache",
        "--exportLayerInfo=build/student/layers.json",
        "--skipInference",
    ]
    assert shlex.split(trtexec_command(plan)) == trtexec_argv(plan)
    # the flags TensorRT 11's trtexec removed are never written, whatever the precision
    for p in (plan, plan_for("t4-int8", ["target.precision=fp16", "quantize.method=fp16"])):
        assert not {"--fp16", "--int8", "--best", "--bf16"} & set(trtexec_argv(p))


def test_orin_dla_and_sparsity_on_the_command_line():
    argv = trtexec_argv(plan_for("orin-int8", ["target.dla_core=0", "sparsify.enabled=true"]))
    assert {
        "--useDLACore=0",
        "--allowGPUFallback",
        "--sparsity=enable",
        "--memPoolSize=workspace:1024",
    } <= set(argv)
    assert "--maxShapes=input_ids:32x256,attention_mask:32x256,token_type_ids:32x256" in argv


def _every_setting_plan() -> BuildPlan:
    return plan_for("orin-int8", ["target.dla_core=0", "sparsify.enabled=true"])


def test_every_setting_kind_has_a_renderer_in_each_consumer():
    kinds = set(SETTING_KINDS)
    assert set(TRT_APPLY) == kinds  # the TensorRT API calls
    assert set(TRTEXEC_RENDER) == kinds  # the trtexec line
    assert set(ORT_TRT_RENDER) == kinds  # ONNX Runtime's TensorRT EP
    assert {s.kind for s in _every_setting_plan().settings()} == kinds


def test_flags_round_trip_through_trtexec():
    """Each builder flag of a plan shows up as exactly its trtexec flag, and nothing else."""
    from kdeploy.runtime.build_plan import _TRTEXEC_FLAG

    plan = _every_setting_plan()
    argv = trtexec_argv(plan)
    back = {f for f, opt in _TRTEXEC_FLAG.items() if opt in argv}
    assert back == set(plan.flags)


def test_ort_trt_ep_options_match_the_trtexec_shapes(tmp_path):
    plan = _every_setting_plan()
    opts = ort_trt_options(plan, tmp_path)
    argv = trtexec_argv(plan)
    for which in ("min", "opt", "max"):
        assert opts[f"trt_profile_{which}_shapes"] == shape_spec(plan.shapes, which)
        assert f"--{which}Shapes={opts[f'trt_profile_{which}_shapes']}" in argv
    # both weak-typing options off: the EP then builds a strongly typed network
    assert opts["trt_int8_enable"] == opts["trt_fp16_enable"] == "0"
    assert opts["trt_sparsity_enable"] == "1"
    assert opts["trt_max_workspace_size"] == str(1024 * 1024 * 1024)
    assert opts["trt_dla_enable"] == "1" and opts["trt_dla_core"] == "0"
    assert opts["trt_engine_cache_enable"] == "1"
    assert opts["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert opts["trt_builder_optimization_level"] == "3"
    assert all(isinstance(v, str) for v in opts.values())


def test_plan_json_round_trip():
    plan = _every_setting_plan()
    assert BuildPlan.from_json(plan.to_json()) == plan


def test_onnx_inputs_read_with_onnx_runtime(tmp_path):
    path = write_onnx(tmp_path / "m.onnx", ["batch", "sequence"])
    specs = onnx_inputs(path)
    assert [(s.name, s.shape, s.dtype) for s in specs] == [
        ("input_ids", ("batch", "sequence"), "tensor(int64)"),
        ("attention_mask", ("batch", "sequence"), "tensor(int64)"),
    ]
    plan = make_plan(build_settings(load_profile("a100-int8").profile), specs, onnx="m.onnx")
    assert shape_spec(plan.shapes, "max") == "input_ids:128x256,attention_mask:128x256"


def test_static_dimension_must_match_the_profile(tmp_path):
    specs = onnx_inputs(write_onnx(tmp_path / "m.onnx", ["batch", 128]))
    with pytest.raises(ModelError, match="static sequence dimension 128") as err:
        make_plan(build_settings(load_profile("a100-int8").profile), specs, onnx="m.onnx")
    assert "export.shapes.sequence" in err.value.fix
    pinned = load_profile(
        "a100-int8",
        [
            "export.shapes.sequence={min: 128, opt: 128, max: 128}",
            "bench.sequence_lengths=[128]",
            "verify.budgets.max_latency.sequence=128",
        ],
    ).profile
    plan = make_plan(build_settings(pinned), specs, onnx="m.onnx")
    assert plan.shapes[0].min == (1, 128) and plan.shapes[0].max == (128, 128)


def test_inputs_must_be_batch_by_sequence():
    with pytest.raises(ModelError, match="TensorRT profiles are built for"):
        plan_for("a100-int8", inputs=[TensorSpec("pixel_values", ("b", 3, 224, 224))])
    with pytest.raises(ModelError, match="declares no inputs"):
        plan_for("a100-int8", inputs=[])


def test_unreadable_onnx_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.arange(10, dtype=np.int64).tobytes())
    with pytest.raises(ModelError, match="cannot read the inputs"):
        onnx_inputs(bad)
