"""The TensorRT Q/DQ lint: a clean graph passes, each broken rule is named, and ONNX
Runtime's static QDQ placement for BERT is caught where it breaks TensorRT's fusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kdeploy.onnxtools.qdq_lint import RULES, lint_qdq, summary

K, N = 8, 4


def _graph(
    tmp_path: Path,
    *,
    opset: int = 18,
    zp_dtype=np.int8,
    zp_value: int = 0,
    act_scale: float = 0.1,
    weight_axis: int = 0,
    weight_layout: str = "out_in",  # stored [out, in] + Transpose (modelopt), or [in, out]
    quantize_activation: bool = True,
    dq_scale: float | None = None,
    dq_into_add: bool = False,
    quantize_output: bool = False,
) -> Path:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(N, K)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.float32(act_scale), "s_x"),
        numpy_helper.from_array(np.float32(dq_scale or act_scale), "s_x_dq"),
        numpy_helper.from_array(np.array(zp_value, dtype=zp_dtype), "zp_x"),
        numpy_helper.from_array(np.zeros(N, dtype=np.float32), "bias"),
    ]
    nodes = []
    x = "x"
    if quantize_activation:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s_x", "zp_x"], ["xq"], name="q_x"),
            helper.make_node(
                "DequantizeLinear",
                ["xq", "s_x_dq" if dq_scale else "s_x", "zp_x"],
                ["xd"],
                name="dq_x",
            ),
        ]
        x = "xd"
    stored = w if weight_layout == "out_in" else w.T
    channels = stored.shape[weight_axis]
    inits += [
        numpy_helper.from_array(stored, "W"),
        numpy_helper.from_array(np.full(channels, 0.01, dtype=np.float32), "s_w"),
        numpy_helper.from_array(np.zeros(channels, dtype=np.int8), "zp_w"),
    ]
    nodes += [
        helper.make_node(
            "QuantizeLinear", ["W", "s_w", "zp_w"], ["wq"], axis=weight_axis, name="q_w"
        ),
        helper.make_node(
            "DequantizeLinear", ["wq", "s_w", "zp_w"], ["wd"], axis=weight_axis, name="dq_w"
        ),
    ]
    wname = "wd"
    if weight_layout == "out_in":
        nodes.append(helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0], name="t_w"))
        wname = "wt"
    nodes.append(helper.make_node("MatMul", [x, wname], ["mm"], name="gemm"))
    mm = "mm"
    if quantize_output:
        inits.append(numpy_helper.from_array(np.float32(0.2), "s_y"))
        nodes += [
            helper.make_node("QuantizeLinear", ["mm", "s_y", "zp_x"], ["yq"], name="q_y"),
            helper.make_node("DequantizeLinear", ["yq", "s_y", "zp_x"], ["yd"], name="dq_y"),
            helper.make_node("MatMul", ["yd", "wt"], ["mm2"], name="gemm2")
            if weight_layout == "out_in"
            else helper.make_node("Identity", ["yd"], ["mm2"]),
        ]
        mm = "yd"
    nodes.append(helper.make_node("Add", [mm, "bias"], ["y"], name="bias_add"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])]
    if dq_into_add:  # a residual Add reading the dequantized tensor
        nodes.append(helper.make_node("Add", ["xd", "x"], ["r"], name="residual"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["b", K]))
    if quantize_output:
        outputs.append(helper.make_tensor_value_info("mm2", TensorProto.FLOAT, ["b", N]))
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
        outputs,
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def rules(path: Path) -> set[str]:
    return {f.rule for f in lint_qdq(path)}


def test_clean_graph_passes(tmp_path):
    assert lint_qdq(_graph(tmp_path)) == []
    assert lint_qdq(_graph(tmp_path, weight_layout="in_out", weight_axis=1)) == []
    assert summary([]) == "clean: no TensorRT Q/DQ rule broken"


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"opset": 12}, "opset"),
        ({"zp_dtype": np.uint8, "zp_value": 128}, "int8"),
        ({"zp_value": 3}, "zero-point"),
        ({"act_scale": -0.1}, "scale"),
        ({"act_scale": float("inf")}, "scale"),
        ({"weight_axis": 1}, "weight-axis"),  # [out, in] quantized along the input
        ({"weight_layout": "in_out", "weight_axis": 0}, "weight-axis"),
        ({"quantize_activation": False}, "gemm-inputs"),
        ({"dq_scale": 0.3}, "pair"),
        ({"dq_into_add": True}, "placement"),
        ({"quantize_output": True}, "placement"),
    ],
)
def test_each_rule_is_named(tmp_path, kwargs, rule):
    found = lint_qdq(_graph(tmp_path, **kwargs))
    assert rule in {f.rule for f in found}, found
    f = next(f for f in found if f.rule == rule)
    assert f.source == RULES[rule][1] and f.source.startswith("[")
    assert rule in summary(found)


def test_graph_without_qdq_has_nothing_to_lint(tmp_path, tiny_run):
    assert lint_qdq(tiny_run / "export" / "student" / "model.onnx") == []


def test_ort_static_qdq_of_bert_breaks_the_residual_fusion(tiny_run, tmp_path):
    """ONNX Runtime's static QDQ quantizes the embedding LayerNorm output that also feeds the
    residual Add, and MatMul outputs that feed attention: the lint names both."""
    from kdeploy.config import QuantizeConfig
    from kdeploy.train.quantize import quantize_student

    cfg = QuantizeConfig(method="static", format="qdq", activation_type="int8", op_types=["MatMul"])
    texts = ["a man is playing a guitar", "two dogs run on the beach"] * 8
    quantize_student(tiny_run / "export" / "student", tmp_path / "q", cfg, texts)
    found = lint_qdq(tmp_path / "q" / "model.onnx")
    assert "placement" in {f.rule for f in found}
    messages = " ".join(f.message for f in found)
    assert "feeds Add" in messages and "quantizes the output of MatMul" in messages
