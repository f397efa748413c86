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
