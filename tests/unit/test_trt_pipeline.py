"""A TensorRT profile on a host without TensorRT: compress runs the host stages, then hands
off (exit 11); the quantized student is what TensorRT needs; the device commands say what
to install instead of falling back."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from kdeploy.api import RunRequest, run_pipeline
from kdeploy.cli import cli
from kdeploy.config import load_profile
from kdeploy.config.settings import build_settings
from kdeploy.core.errors import HandOff
from kdeploy.engine.manifest import load_manifest
from kdeploy.runtime.build_plan import make_plan, onnx_inputs, trtexec_argv
from kdeploy.stages import RunOptions
from tests.conftest import TRT_TINY

A100_TINY = TRT_TINY

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("tensorrt") is not None,
    reason="TensorRT is installed here: the hand-off path does not apply",
)


@pytest.fixture(scope="module")
def a100_run(tmp_path_factory, tiny_bert, stsb_small):
    out = tmp_path_factory.mktemp("a100") / "run"
    req = RunRequest(
        profile=load_profile("a100-int8", A100_TINY),
        model_dir=tiny_bert,
        data_dir=stsb_small,
        out_dir=out,
        options=RunOptions(progress=False),
    )
    with pytest.raises(HandOff) as err:
        run_pipeline(req, log=lambda m: None)
    return out, err.value


def test_compress_stops_before_build_with_a_hand_off(a100_run):
    run_dir, err = a100_run
    assert err.exit_code == 11
    assert "stage build" in err.what and "no TensorRT" in err.what
    assert f"kdeploy build {run_dir} --until package" in err.fix
    m = load_manifest(run_dir)
    assert list(m.stages) == ["distill", "sparsify", "export", "quantize"]
    assert not list(run_dir.glob("*.tmp"))


def test_quantized_student_has_symmetric_int8_qdq(a100_run):
    """What TensorRT needs from the host: int8 Q/DQ with zero points of 0 on both inputs of
    every weight GEMM, the 2:4 zeros kept, nothing quantized outside the GEMMs."""
    import onnx
    from onnx import numpy_helper

    from kdeploy.onnxtools.layers import gemm_layers
    from kdeploy.onnxtools.qdq_lint import lint_qdq

    run_dir, _ = a100_run
    path = run_dir / "quantize" / "student" / "model.onnx"
    model = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 10
    assert not [
        n
        for n in model.graph.node
        if n.op_type in ("MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear")
    ]
    for node in qdq:
        assert len(node.input) == 3, node.name
        zp = consts[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), node.name
    layers = gemm_layers(path)
    assert layers and all(x.weight_bits == 8 and x.activation_bits == 8 for x in layers)
    assert all(x.is_2to4 for x in layers)  # every encoder GEMM of the tiny BERT is eligible
    assert lint_qdq(path) == []
    dq_out = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    assert not [
        n for n in model.graph.node if n.op_type == "LayerNormalization" and set(n.input) & dq_out
    ]


def test_quantize_writes_the_fp16_graph_a_strongly_typed_engine_runs(a100_run):
    """TensorRT 11 runs the graph's types: the GEMMs INT8 with FP16 activations, the
    LayerNorms, Softmax and pooling FP32 by rule, FP32 model I/O; the FP32 Q/DQ graph is
    kept beside it; the CPU reference run matched the torch model and the dev metric."""
    import onnx

    from kdeploy.evaluation.cast_check import gemm_share
    from kdeploy.onnxtools.precision import tensor_types

    run_dir, _ = a100_run
    q = load_manifest(run_dir).stages["quantize"].metrics
    path = run_dir / "quantize" / "student" / "model.onnx"
    model = onnx.load(str(path))
    types = tensor_types(model)
    f16, f32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    assert {types[o.name] for o in model.graph.output} == {f32}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(types[n.input[0]] == f16 for n in matmuls)
    norms = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert norms and all(types[n.output[0]] == f32 for n in norms)
    assert set(q["qdq_lint"]["fp32_kept"]) == {"layernorm", "softmax", "head"}
    assert len(q["qdq_lint"]["fp32_kept"]["layernorm"]) == 5  # embeddings + 2 per layer
    assert q["qdq_lint"]["findings"] == []
    check = q["fp16_check"]
    assert check["passed"] and check["min_cosine"] > 0.9999 and check["texts"] > 10
    assert abs(check["retention"] - 1) < 0.01
    share = q["fp16"]["gemm_share"]
    assert share == gemm_share(path).to_json()
    # the 4 weight GEMMs per layer INT8, the 2 attention BMMs FP16: nothing runs FP32
    assert share["flops"]["int8"] > 0 and share["flops"]["fp16"] > 0
    assert share["flops"]["fp32"] == 0
    fp32 = run_dir / "quantize" / "student_fp32" / "model.onnx"
    assert f16 not in tensor_types(onnx.load(str(fp32))).values()


def test_cast_check_fails_a_graph_past_the_budget(a100_run, stsb_small):
    """The budget is a real gate: the same FP16 graph against outputs that are not its
    source's, or with a retention floor above what it keeps, fails with what to do."""
    from kdeploy.core.errors import ExportError
    from kdeploy.data import load_task_data
    from kdeploy.evaluation.cast_check import check_cast
    from kdeploy.runtime.model import open_model

    run_dir, _ = a100_run
    fp16, fp32 = run_dir / "quantize" / "student", run_dir / "quantize" / "student_fp32"
    split = load_task_data(stsb_small, need_train=False).eval_split("auto")
    texts = split.texts_a[:8]
    with open_model(fp32) as m:
        ref = m.outputs(texts)
    kw = dict(limit=40, batch_size=8, min_cosine=0.999, min_retention=0.995)
    ok = check_cast(fp16, fp32, texts, ref, split, **kw)
    assert ok.passed and ok.min_cosine > 0.9999
    shuffled = ref[::-1].copy()  # another text's outputs
    with pytest.raises(ExportError, match="min cosine") as err:
        check_cast(fp16, fp32, texts, shuffled, split, **kw)
    assert "quantize.keep_fp32" in err.value.fix
    with pytest.raises(ExportError, match="loses more than quantize.cast_budget"):
        check_cast(fp16, fp32, texts, ref, split, **{**kw, "min_retention": 1.2})


def test_pure_fp16_engine_profile(a100_run, tiny_bert, stsb_small, tmp_path):
    """target.precision fp16 on TensorRT: quantize.method fp16 writes an FP16 graph with no
    INT8 (distill, sparsify and export are reused); without it the profile is refused,
    since a strongly typed engine of the FP32 graph would run FP32."""
    import onnx

    from kdeploy.core.errors import ProfileError
    from kdeploy.evaluation.cast_check import gemm_share

    run_dir, _ = a100_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    with pytest.raises(ProfileError, match="quantize.method: fp16"):
        load_profile("a100-int8", [*A100_TINY, "target.precision=fp16", "quantize.enabled=false"])
    fp16 = [*A100_TINY, "target.precision=fp16", "quantize.method=fp16"]
    req = RunRequest(
        profile=load_profile("a100-int8", fp16),
        model_dir=tiny_bert,
        data_dir=stsb_small,
        out_dir=copy,
        options=RunOptions(progress=False),
    )
    lines: list[str] = []
    with pytest.raises(HandOff):
        run_pipeline(req, log=lines.append)
    assert any("[distill] up to date, reused" in m for m in lines), lines
    q = load_manifest(copy).stages["quantize"].metrics
    path = copy / "quantize" / "student" / "model.onnx"
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "QuantizeLinear" not in ops and "Cast" in ops
    assert q["fp16_check"]["passed"] and q["fp16_check"]["min_cosine"] > 0.9999
    share = gemm_share(path)
    assert share.flops["int8"] == 0 and share.flops["fp32"] == 0 and share.flops["fp16"] > 0
    plan = make_plan(build_settings(req.profile.profile), onnx_inputs(path), onnx="m.onnx")
    assert plan.precision == "fp16" and plan.flags == ("SPARSE_WEIGHTS",)


def test_build_plan_from_the_real_quantized_model(a100_run):
    run_dir, _ = a100_run
    p = load_profile(run_dir / "profile.yaml").profile
    onnx = run_dir / "quantize" / "student" / "model.onnx"
    plan = make_plan(build_settings(p), onnx_inputs(onnx), onnx="quantize/student/model.onnx")
    assert {s.name for s in plan.shapes} <= {"input_ids", "attention_mask", "token_type_ids"}
    assert "input_ids" in {s.name for s in plan.shapes}
    argv = trtexec_argv(plan)
    assert "--stronglyTyped" in argv and "--int8" not in argv and "--fp16" not in argv


def test_compress_cli_exit_code_on_rerun(a100_run, tiny_bert, stsb_small, tmp_path):
    run_dir, _ = a100_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    args = [
        "compress",
        "--profile",
        "a100-int8",
        "--model",
        str(tiny_bert),
        "--data",
        str(stsb_small),
        "--out",
        str(copy),
        "--no-progress",
    ]
    for o in A100_TINY:
        args += ["--set", o]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 11, res.output
    assert "stopped before: stage build" in res.output
    assert "[quantize] up to date, reused" in res.output
    assert "Traceback" not in res.output


def test_device_commands_need_their_extras(a100_run, tmp_path):
    run_dir, _ = a100_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    res = CliRunner().invoke(cli, ["build", str(copy)], catch_exceptions=False)
    assert res.exit_code == 9, res.output
    assert "needs the Python package 'tensorrt'" in res.output
    assert "pip install 'kdeploy[trt]'" in res.output
    assert not list(copy.glob("*.tmp"))
    # bench of a GPU run on a machine without CUDA: an error, not CPU numbers
    res = CliRunner().invoke(cli, ["bench", str(copy)], catch_exceptions=False)
    assert res.exit_code == 9, res.output
    assert "CUDAExecutionProvider" in res.output and "kdeploy[gpu]" in res.output


def test_build_command_without_torch(a100_run, tmp_path):
    """kdeploy build is device side: it gets to the TensorRT import without torch."""
    from tests.deps.test_device_side_without_torch import run_blocked

    run_dir, _ = a100_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    res = run_blocked(
        f"""
        from kdeploy.cli import main
        try:
            main(["build", {str(copy)!r}])
        except SystemExit as e:
            assert e.code == 9, e.code
        """
    )
    assert res.returncode == 0, res.stderr
    assert "NO-HOST-MODULES" in res.stdout and "kdeploy[trt]" in res.stderr


def test_report_names_the_fp32_kept_ops(a100_run):
    """The run report has the strongly typed graph's own section: the lint, the nodes each
    rule kept FP32 (named), the FLOP shares and the CPU check; the generic quantization
    lines do not dump those metrics."""
    from kdeploy.report.markdown import quantize_lines

    run_dir, _ = a100_run
    q = load_manifest(run_dir).stages["quantize"].metrics
    text = "\n".join(quantize_lines(q))
    assert "## TensorRT graph (strongly typed" in text
    first_ln = q["qdq_lint"]["fp32_kept"]["layernorm"][0]
    assert f"kept FP32 by rule `layernorm`: 5 node(s): {first_ln}" in text
    assert "kept FP32 by rule `softmax`: 2 node(s)" in text
    assert "GEMM FLOPs at batch 1 x 128: INT8 " in text and "retention 1.0000" in text
    # the per-GEMM list and the rule -> nodes map stay in the metrics, not in the report
    assert "passed" in text and "fp32_nodes" not in text and "'precision': " not in text
