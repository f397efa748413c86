"""Parsing the engine inspector's layer JSON: which layers run sparse, in which precision.

No engine can be built here (no TensorRT), so the JSON below is written by hand, shaped like
real TensorRT output: the field names, the "Format/Datatype" strings, the Myelin layer types
("gemm", "kgen", "shape_call") and the "Metadata" separator come from files TensorRT wrote,
namely NVIDIA/TensorRT tools/experimental/trt-engine-explorer/examples/pytorch/resnet/A100/
qat-residual-qgap/resnet-qat-residual-qgap.onnx.engine.graph.json (TensorRT 8.x, Int8 Q/DQ,
"HasSparseWeights") and fuzzylabs/edge-vision-power-estimation desktop/torch_onnx_trtexec/
results/alexnet/alexnet_fp16.graph.json (TensorRT 10, Myelin "gemm" layers, "Half"). The
layer names are those of a BERT student's ONNX graph. The GPU test (tests/gpu) parses a
JSON the real build wrote.
"""

from __future__ import annotations

import json

import pytest

from kdeploy.core.errors import ModelError
from kdeploy.runtime.layer_report import (
    dtype_of,
    load_layer_info,
    parse_layers,
    report_lines,
    sparsity_from_log,
    summarize,
)


def tensor(name, dims, fmt, location=True):
    t = {"Name": name, "Dimensions": dims, "Format/Datatype": fmt}
    if location:  # cask layers carry Location, Myelin layers do not
        t = {"Name": name, "Location": "Device", "Dimensions": dims, "Format/Datatype": fmt}
    return t


def gemm(name, in_fmt, out_fmt, tactic, onnx_node):
    return {
        "Name": name,
        "LayerType": "gemm",
        "Inputs": [
            tensor(f"{name}_a", [-1, -1, 384], in_fmt, False),
            tensor(f"__mye_{name}_w", [384, 384], in_fmt, False),
        ],
        "Outputs": [tensor(f"{name}_out", [-1, -1, 384], out_fmt, False)],
        "TacticName": tactic,
        "StreamId": 0,
        "Metadata": f"[ONNX Layer: {onnx_node}]\u001f[ONNX Layer: {onnx_node}_DequantizeLinear]",
    }


ENGINE_JSON = {
    "Layers": [
        {
            "Name": "Reformatting CopyNode for Input Tensor 0 to /embeddings/Add",
            "LayerType": "Reformat",
            "Inputs": [tensor("/embeddings/Add_output_0", [-1, -1, 384], "Row major linear FP32")],
            "Outputs": [
                tensor("Reformatted Input Tensor 0", [-1, -1, 384], "Row major Int8 format")
            ],
            "ParameterType": "Reformat",
            "Origin": "QDQ",
            "TacticValue": "0x00000000000003ea",
            "StreamId": 0,
            "Metadata": "",
        },
        {
            "Name": "dummy_shape_call__mye1_0_myl0_0",
            "LayerType": "shape_call",
            "Inputs": [],
            "Outputs": [],
            "TacticName": "",
            "StreamId": 0,
            "Metadata": "",
        },
        gemm(
            "/encoder/layer.0/attention/self/query/MatMul_myl0_3",
            "Int8",
            "Half",
            "sm80_xmma_gemm_i8i8_i8i32_f32_tn_n_tilesize128x128x64_stage3_warpsize2x2x1",
            "/encoder/layer.0/attention/self/query/MatMul",
        ),
        gemm(
            "/encoder/layer.0/attention/self/MatMul_myl0_7",
            "Half",
            "Half",
            "sm80_xmma_gemm_f16f16_f16f32_f32_nn_n_tilesize64x64x64_stage4_warpsize2x2x1",
            "/encoder/layer.0/attention/self/MatMul",
        ),
        gemm(
            "/encoder/layer.0/intermediate/dense/MatMul_myl0_11",
            "Int8",
            "Int8",
            "sm80_xmma_sparse_gemm_i8i8_i8i32_f32_tn_n_tilesize128x128x128_stage3",
            "/encoder/layer.0/intermediate/dense/MatMul",
        ),
        {
            "Name": "/encoder/layer.0/output/LayerNorm_myl0_12",
            "LayerType": "kgen",
            "Inputs": [tensor("ln_in", [-1, -1, 384], "Half", False)],
            "Outputs": [tensor("ln_out", [-1, -1, 384], "Half", False)],
            "TacticName": "__myl_AddMeanSubMulMeanAddSqrtDivMulAdd_0x1",
            "StreamId": 0,
            "Metadata": "[ONNX Layer: /encoder/layer.0/output/LayerNorm]",
        },
        {
            "Name": "/pooler/dense/MatMul + /pooler/Tanh",
            "LayerType": "CaskGemmConvolution",
            "Inputs": [tensor("pool_in", [-1, 384, 1, 1], "Row major linear FP32")],
            "Outputs": [tensor("pool_out", [-1, 384, 1, 1], "Row major linear FP32")],
            "ParameterType": "Convolution",
            "Weights": {"Type": "Float", "Count": 147456},
            "HasSparseWeights": 1,
            "TacticName": "sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nhwc",
            "TacticValue": "0x0b2f184f333057c2",
            "StreamId": 0,
            "Metadata": "[ONNX Layer: /pooler/dense/MatMul]",
        },
        {
            "Name": "copied_squeeze_after_pool",
            "LayerType": "NoOp",
            "Inputs": [tensor("pool_out", [-1, 384, 1, 1], "Row major linear FP32")],
            "Outputs": [tensor("sentence_embedding", [-1, 384], "Row major linear FP32")],
            "TacticValue": "0x0000000000000000",
        },
    ],
    "Bindings": ["input_ids", "attention_mask", "token_type_ids", "sentence_embedding"],
}


@pytest.fixture
def layer_file(tmp_path):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(ENGINE_JSON))
    return path


@pytest.mark.parametrize(
    "fmt, want",
    [
        ("Row major linear FP32", "FP32"),
        ("Thirty-two wide channel vectorized row major Int8 format", "INT8"),
        ("Channel major FP16 format where channel % 8 == 0", "FP16"),
        ("Half", "FP16"),
        ("Float", "FP32"),
        ("Int8", "INT8"),
        ("Row major linear UInt8 format", "UINT8"),
        ("Row major linear BFloat16 format", "BF16"),
        ("Row major linear FP8 format", "FP8"),
        ("Row major linear Int64 format", "INT64"),
        ("Unknown format", "?"),
    ],
)
def test_dtype_words(fmt, want):
    assert dtype_of(fmt) == want


def test_layers_precision_and_sparsity(layer_file):
    layers = parse_layers(load_layer_info(layer_file))
    names = [x["name"] for x in layers]
    assert "dummy_shape_call__mye1_0_myl0_0" not in names  # bookkeeping layers are dropped
    assert "copied_squeeze_after_pool" not in names
    by = {x["name"]: x for x in layers}
    q = by["/encoder/layer.0/attention/self/query/MatMul_myl0_3"]
    assert (q["precision"], q["output_precision"], q["math"], q["sparse"]) == (
        "INT8",
        "FP16",
        True,
        False,
    )
    assert q["onnx_nodes"][0] == "/encoder/layer.0/attention/self/query/MatMul"
    assert by["/encoder/layer.0/intermediate/dense/MatMul_myl0_11"]["sparse"]  # sparse tactic
    assert by["/pooler/dense/MatMul + /pooler/Tanh"]["sparse"]  # HasSparseWeights: 1
    assert not by["/encoder/layer.0/output/LayerNorm_myl0_12"]["math"]


def test_summary_names_the_fallbacks(layer_file):
    layers = parse_layers(load_layer_info(layer_file))
    s = summarize(layers, precision="int8", sparse_requested=True)
    assert s["math_layers"] == 4
    assert s["math_precision"] == {"FP16": 1, "FP32": 1, "INT8": 2}
    assert [f["name"] for f in s["fallback_layers"]] == [
        "/encoder/layer.0/attention/self/MatMul_myl0_7",
        "/pooler/dense/MatMul + /pooler/Tanh",
    ]
    assert s["sparse_layers"] == [
        "/encoder/layer.0/intermediate/dense/MatMul_myl0_11",
        "/pooler/dense/MatMul + /pooler/Tanh",
    ]
    assert s["type_conversions"] == ["Reformatting CopyNode for Input Tensor 0 to /embeddings/Add"]
    assert (
        len(s["warnings"]) == 1
        and "2 of 4 GEMM/convolution layers do not run INT8" in (s["warnings"][0])
    )
    text = "\n".join(report_lines(s))
    assert "INT8 2" in text and "sparse kernels: 2 layer(s)" in text


def test_sparsity_requested_but_not_picked(layer_file):
    data = json.loads(layer_file.read_text())
    for layer in data["Layers"]:
        layer.pop("HasSparseWeights", None)
        if "TacticName" in layer:
            layer["TacticName"] = layer["TacticName"].replace("sparse_", "")
    log = sparsity_from_log(["[I] (Sparsity) Layers eligible for sparse math: a, b"])
    s = summarize(parse_layers(data), precision="int8", sparse_requested=True, log_sparsity=log)
    assert s["sparse_layers"] == []
    assert any("picked no sparse kernel; 2 layer(s) were eligible" in w for w in s["warnings"])


def test_builder_log_sparsity_lines():
    # the two INFO lines the TensorRT developer guide documents for structured sparsity
    lines = [
        "[03/23/2021-00:14:05] [I] [TRT] (Sparsity) Layers eligible for sparse math: "
        "conv1, conv2, conv3",
        "[03/23/2021-00:14:05] [I] [TRT] (Sparsity) TRT inference plan picked sparse "
        "implementation for layers: conv2, conv3",
        "unrelated line",
    ]
    assert sparsity_from_log(lines) == {
        "eligible": ["conv1", "conv2", "conv3"],
        "picked": ["conv2", "conv3"],
    }


def test_opaque_myelin_nodes_are_reported():
    data = {
        "Layers": [
            {
                "Name": "{ForeignNode[/embeddings/Add.../pooler/Tanh]}",
                "LayerType": "Myelin",
                "Inputs": [tensor("input_ids", [-1, -1], "Row major linear Int64 format")],
                "Outputs": [tensor("out", [-1, 384], "Row major linear FP32")],
            }
        ]
    }
    s = summarize(parse_layers(data), precision="int8", sparse_requested=False)
    assert any("opaque" in w for w in s["warnings"])
    assert any("no GEMM/convolution layer" in w for w in s["warnings"])


def test_names_only_json_asks_for_detailed_verbosity():
    with pytest.raises(ModelError) as err:
        parse_layers({"Layers": ["layer a", "layer b"], "Bindings": []})
    assert "DETAILED" in err.value.fix


def test_not_inspector_json(tmp_path):
    with pytest.raises(ModelError, match="no 'Layers' list"):
        parse_layers({"something": 1})
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read TensorRT layer information"):
        load_layer_info(bad)


def test_report_section_shows_the_plan_the_layers_and_the_trtexec_line():
    from kdeploy.config import load_profile
    from kdeploy.config.settings import build_settings
    from kdeploy.report.markdown import build_lines
    from kdeploy.runtime.build_plan import make_plan, trtexec_command
    from tests.unit.test_build_plan import BERT_INPUTS

    a100 = build_settings(load_profile("a100-int8").profile)
    plan = make_plan(a100, BERT_INPUTS, onnx="q/model.onnx")
    summary = summarize(parse_layers(ENGINE_JSON), precision="int8", sparse_requested=False)
    text = "\n".join(
        build_lines(
            {
                "plan": plan.to_json(),
                "trtexec": trtexec_command(plan),
                "layers": summary,
                "tensorrt": "10.9.0",
                "build_seconds": 12.5,
            }
        )
    )
    assert "## TensorRT engine" in text and "TensorRT 10.9.0 for a100 (SM 8.0)" in text
    # strongly typed: no precision flags, the 2:4 profile's SPARSE_WEIGHTS only
    assert "builder flags SPARSE_WEIGHTS," in text and "built in 12.5s" in text
    assert "INT8, FP16" not in text
    assert trtexec_command(plan) in text
    assert "do not run INT8" in text
