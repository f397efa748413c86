"""Strongly typed graphs: the FP32 rules name the right nodes, the FP16 cast (modelopt
AutoCast) writes them, the reference evaluator runs the result in its own types, the lint
finds FP32 islands between INT8 GEMMs and the GEMM FLOPs are counted by precision.

Small hand-built graphs (a BERT layer's shape: INT8 GEMM -> residual LayerNorm -> INT8
GEMM -> LayerNorm -> mean pooling) so that every expected number is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("modelopt.onnx.autocast")

from kdeploy.core.errors import ExportError  # noqa: E402
from kdeploy.evaluation.cast_check import gemm_share  # noqa: E402
from kdeploy.onnxtools.precision import cast_fp16, fp32_nodes, tensor_types  # noqa: E402
from kdeploy.onnxtools.qdq_lint import fp32_kept, lint_qdq  # noqa: E402
from kdeploy.runtime.reference import ReferenceRunner  # noqa: E402

H = 16  # hidden size


def _qdq_gemm(name: str, x: str, w: np.ndarray, inits: list, nodes: list) -> str:
    """x -> Q/DQ (per tensor) -> MatMul with a per-channel Q/DQ weight stored [out, in]."""
    inits += [
        numpy_helper.from_array(np.float32(0.05), f"{name}_sx"),
        numpy_helper.from_array(np.int8(0), f"{name}_zx"),
        numpy_helper.from_array(w.T.copy(), f"{name}_W"),
        numpy_helper.from_array(np.abs(w).max(0).astype(np.float32) / 127, f"{name}_sw"),
        numpy_helper.from_array(np.zeros(w.shape[1], np.int8), f"{name}_zw"),
    ]
    nodes += [
        helper.make_node("QuantizeLinear", [x, f"{name}_sx", f"{name}_zx"], [f"{name}_xq"],
                         name=f"{name}_qx"),
        helper.make_node("DequantizeLinear", [f"{name}_xq", f"{name}_sx", f"{name}_zx"],
                         [f"{name}_xd"], name=f"{name}_dqx"),
        helper.make_node("QuantizeLinear", [f"{name}_W", f"{name}_sw", f"{name}_zw"],
                         [f"{name}_wq"], axis=0, name=f"{name}_qw"),
        helper.make_node("DequantizeLinear", [f"{name}_wq", f"{name}_sw", f"{name}_zw"],
                         [f"{name}_wd"], axis=0, name=f"{name}_dqw"),
        helper.make_node("Transpose", [f"{name}_wd"], [f"{name}_wt"], perm=[1, 0],
                         name=f"{name}_t"),
        helper.make_node("MatMul", [f"{name}_xd", f"{name}_wt"], [f"{name}_mm"], name=name),
    ]  # fmt: skip
    return f"{name}_mm"


def _layernorm(name: str, x: str, inits: list, nodes: list, beta: float = 0.0) -> str:
    inits += [
        numpy_helper.from_array(np.ones(H, np.float32), f"{name}_g"),
        numpy_helper.from_array(np.full(H, beta, np.float32), f"{name}_b"),
    ]
    nodes.append(
        helper.make_node(
            "LayerNormalization", [x, f"{name}_g", f"{name}_b"], [f"{name}_y"], axis=-1, name=name
        )
    )
    return f"{name}_y"


def layer_graph(tmp_path: Path, *, head_beta: float = 0.0, fp32_relu: bool = False) -> Path:
    """(batch, seq, H) input -> INT8 GEMM -> +x -> LayerNorm -> INT8 GEMM -> LayerNorm ->
    mean over the sequence (the head). ``head_beta`` shifts the last LayerNorm's output:
    300 makes the pooled sum over 256 tokens (76,800) overflow FP16 (max 65,504)."""
    rng = np.random.default_rng(0)
    inits: list = []
    nodes: list = []
    y = _qdq_gemm("gemm1", "x", rng.normal(size=(H, H)).astype(np.float32), inits, nodes)
    nodes.append(helper.make_node("Add", [y, "x"], ["res"], name="residual"))
    y = _layernorm("ln1", "res", inits, nodes)
    if fp32_relu:  # an op no rule keeps FP32, forced FP32 by the Casts around it
        nodes += [
            helper.make_node("Relu", [y], ["relu"], name="relu"),
        ]
        y = "relu"
    y = _qdq_gemm("gemm2", y, rng.normal(size=(H, H)).astype(np.float32), inits, nodes)
    y = _layernorm("ln2", y, inits, nodes, beta=head_beta)
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes"))
    nodes += [
        helper.make_node("ReduceSum", [y, "axes"], ["pooled_sum"], keepdims=0, name="pool_sum"),
        helper.make_node("Shape", ["x"], ["shape"], name="pool_shape"),
        helper.make_node("Gather", ["shape", "one"], ["seq_len"], axis=0, name="pool_len"),
        helper.make_node("Cast", ["seq_len"], ["seq_f"], to=TensorProto.FLOAT, name="pool_cast"),
        helper.make_node("Div", ["pooled_sum", "seq_f"], ["pooled"], name="pool_div"),
    ]
    inits.append(numpy_helper.from_array(np.int64(1), "one"))
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", H])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", H])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = tmp_path / "layer.onnx"
    onnx.save(model, str(path))
    return path


def _with_fp32_island(path: Path) -> Path:
    """Force the ``relu`` node of a cast graph to FP32 with Casts, as a careless tool would."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.name == "relu")
    relu = nodes[i]
    src, dst = relu.input[0], relu.output[0]
    relu.input[0], relu.output[0] = "relu_in32", "relu_out32"
    up = helper.make_node("Cast", [src], ["relu_in32"], to=TensorProto.FLOAT, name="up")
    down = helper.make_node("Cast", ["relu_out32"], [dst], to=TensorProto.FLOAT16, name="down")
    del model.graph.node[:]
    model.graph.node.extend([*nodes[:i], up, relu, down, *nodes[i + 1 :]])
    out = path.with_name("island.onnx")
    onnx.save(model, str(out))
    return out


def test_rules_name_the_nodes(tmp_path):
    g = onnx.load(str(layer_graph(tmp_path))).graph
    kept = fp32_nodes(g, ["layernorm", "softmax", "head"])
    assert kept["layernorm"] == ["ln1", "ln2"]
    assert kept["softmax"] == []
    # after the last LayerNorm: the pooling, not the shape ops that read only the input
    assert kept["head"] == ["pool_sum", "pool_div"]
    with pytest.raises(ExportError, match="unknown FP32 rule"):
        fp32_nodes(g, ["gelu"])


def test_cast_writes_fp16_but_the_kept_ops_and_the_model_io(tmp_path):
    src = layer_graph(tmp_path)
    res = cast_fp16(src, tmp_path / "fp16.onnx")
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    types = tensor_types(model)
    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    assert types["x"] == f32 and types["pooled"] == f32  # FP32 inputs and outputs
    for gemm in ("gemm1", "gemm2"):
        node = next(n for n in model.graph.node if n.name == gemm)
        assert [types[i] for i in node.input] == [f16, f16], gemm  # INT8 GEMM, FP16 I/O
    assert types["res"] == f16  # the residual Add
    assert types["ln1_y"] == types["ln2_y"] == f32  # kept by the layernorm rule
    assert types["pooled_sum"] == f32  # kept by the head rule
    assert res.opset == 19 and res.fp32_nodes["layernorm"] == ["ln1", "ln2"]
    assert res.tool.startswith("modelopt.onnx.autocast")
    # Q/DQ scales became FP16 (opset 19), zero points stay int8
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == 8
    assert {types[n.input[1]] for n in qdq} == {f16}
    assert {types[n.input[2]] for n in qdq} == {TensorProto.INT8}
    assert lint_qdq(tmp_path / "fp16.onnx") == []
    assert fp32_kept(tmp_path / "fp16.onnx")["head"] == ["pool_sum", "pool_div"]
    assert fp32_kept(src) == {}  # an FP32 graph: no rule at work


def test_reference_runner_runs_the_graph_in_its_types(tmp_path):
    """The FP16 graph's output is close to the FP32 one (ONNX Runtime) but not equal: the
    reference evaluator really computes in FP16. And the head rule is what keeps a pooled
    sum above FP16's range finite."""
    import onnxruntime as ort

    x = np.random.default_rng(1).normal(size=(2, 256, H)).astype(np.float32)
    src = layer_graph(tmp_path)
    cast_fp16(src, tmp_path / "fp16.onnx")
    want = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    with ReferenceRunner(tmp_path / "fp16.onnx") as r:
        got = r.infer({"x": x})["pooled"]
        assert r.input_names == ["x"] and r.output_names == ["pooled"]
    assert got.dtype == np.float32
    err = np.abs(got - want).max()
    assert 0 < err < 5e-2, err

    (tmp_path / "big").mkdir()
    big = layer_graph(tmp_path / "big", head_beta=300.0)
    cast_fp16(big, tmp_path / "kept.onnx")
    cast_fp16(big, tmp_path / "unkept.onnx", keep=["layernorm"])
    with ReferenceRunner(tmp_path / "kept.onnx") as r:
        kept = r.infer({"x": x})["pooled"]
    with ReferenceRunner(tmp_path / "unkept.onnx") as r:
        unkept = r.infer({"x": x})["pooled"]
    assert np.isfinite(kept).all() and np.allclose(kept, 300, atol=1)
    assert not np.isfinite(unkept).all()  # 256 x 300 overflowed in FP16


def test_lint_finds_fp32_islands_between_int8_gemms(tmp_path):
    cast = tmp_path / "fp16.onnx"
    cast_fp16(layer_graph(tmp_path, fp32_relu=True), cast)
    assert lint_qdq(cast) == []
    # LayerNorm kept FP32 by no rule: the lint names it and the Cast into it, between the
    # two INT8 GEMMs (ln2 is after the last one)
    found = lint_qdq(cast, keep_fp32=["head"])
    assert {f.node for f in found} == {"ln1", "res_cast_to_fp32"}
    assert {f.rule for f in found} == {"fp32-island"}
    # a Relu forced to FP32 by Casts is an island whatever the rules (ln2 is not between)
    found = lint_qdq(_with_fp32_island(cast))
    assert {(f.rule, f.node) for f in found} == {("fp32-island", "relu"), ("fp32-island", "up")}


def test_gemm_flops_by_precision(tmp_path):
    """Two INT8 GEMMs of H x H per token, nothing else: at batch 2 x 8 tokens, 2 x 2*16*H*H
    FLOPs all INT8. Casting does not move a Q/DQ GEMM out of INT8."""
    cast = tmp_path / "fp16.onnx"
    cast_fp16(layer_graph(tmp_path), cast)
    x = np.random.default_rng(2).normal(size=(2, 8, H)).astype(np.float32)
    share = gemm_share(cast, batch=2, sequence=8, feeds={"x": x})
    assert share.flops == {"int8": 2 * 2 * 16 * H * H, "fp16": 0, "fp32": 0}
    assert share.share["int8"] == 1.0
    assert [g["node"] for g in share.gemms] == ["gemm1", "gemm2"]


def test_reference_erf_and_matmul_match_onnx_semantics(tmp_path):
    """The two ops the reference runner replaces: Erf within 2e-7 of math.erf in FP32 and
    exact to FP16 rounding; MatMul of a 3-D by a 2-D operand equal to numpy's matmul."""
    import math

    x = np.linspace(-6, 6, 4001, dtype=np.float32)
    nodes = [
        helper.make_node("Erf", ["x"], ["e"], name="erf"),
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="c"),
        helper.make_node("Erf", ["x16"], ["e16"], name="erf16"),
        helper.make_node("MatMul", ["a", "w"], ["mm"], name="mm"),
    ]
    w = np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "ops",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 8]),
        ],
        [
            helper.make_tensor_value_info("e", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("e16", TensorProto.FLOAT16, [None]),
            helper.make_tensor_value_info("mm", TensorProto.FLOAT, [2, 3, 5]),
        ],
        [numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "ops.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    a = np.random.default_rng(4).normal(size=(2, 3, 8)).astype(np.float32)
    with ReferenceRunner(path) as r:
        out = r.infer({"x": x, "a": a})
    exact = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(out["e"] - exact).max() < 2e-7
    assert out["e16"].dtype == np.float16
    exact16 = np.array([math.erf(v) for v in x.astype(np.float16).astype(np.float64)])
    assert np.abs(out["e16"].astype(np.float64) - exact16.astype(np.float16)).max() <= 2**-11
    np.testing.assert_allclose(out["mm"], a @ w, rtol=1e-5, atol=1e-6)
