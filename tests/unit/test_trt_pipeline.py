"""A TensorRT profile on a host without TensorRT: compress runs the host stages, then hands
off (exit 11); the quantized student is what TensorRT needs; the device commands say what
to install instead of falling back."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from kdeploy.cli import cli
from kdeploy.errors import HandOff
from kdeploy.manifest import load_manifest
from kdeploy.pipeline import RunRequest, run_pipeline
from kdeploy.profiles import load_profile
from kdeploy.runtime.build_plan import make_plan, onnx_inputs, trtexec_argv
from kdeploy.stages import RunOptions
from tests.conftest import TINY_OVERRIDES

A100_TINY = [*TINY_OVERRIDES, "quantize.calibration_texts=64"]

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
    assert list(m.stages) == ["distill", "export", "quantize"]
    assert not list(run_dir.glob("*.tmp"))


def test_quantized_student_has_symmetric_int8_qdq(a100_run):
    """TensorRT's ONNX parser takes only int8 Q/DQ with zero points of 0."""
    import onnx
    from onnx import numpy_helper

    run_dir, _ = a100_run
    model = onnx.load(str(run_dir / "quantize" / "student" / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 10
    assert not [
        n
        for n in model.graph.node
        if n.op_type in ("MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear")
    ]
    for node in qdq:
        assert len(node.input) == 3, node.name
        zp = inits[node.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].dtype == np.int8, node.name  # no INT32 biases
    # every GEMM reads dequantized int8 on both inputs: TensorRT fuses them into INT8 GEMMs
    dq_out = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(set(n.input) <= dq_out for n in matmuls)
    assert not [
        n for n in model.graph.node if n.op_type == "LayerNormalization" and set(n.input) & dq_out
    ]


def test_build_plan_from_the_real_quantized_model(a100_run):
    run_dir, _ = a100_run
    p = load_profile(run_dir / "profile.yaml").profile
    onnx = run_dir / "quantize" / "student" / "model.onnx"
    plan = make_plan(p, onnx_inputs(onnx), onnx="quantize/student/model.onnx")
    assert {s.name for s in plan.shapes} <= {"input_ids", "attention_mask", "token_type_ids"}
    assert "input_ids" in {s.name for s in plan.shapes}
    assert "--int8" in trtexec_argv(plan)


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
