"""Weights of an ONNX graph: parameter count, share of zeros, GEMM layers (needs ``onnx``)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from kdeploy.core.deps import require
from kdeploy.onnxtools.layers import gemm_layers


def onnx_weight_stats(path: Path) -> dict:
    """Weights = float or 8-bit initializers, without quantization scales / zero points."""
    onnx = require("onnx", feature="parameter counts in the report")
    from onnx import numpy_helper

    weight_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.INT8,
        onnx.TensorProto.UINT8,
    }
    model = onnx.load(str(path))
    params = zeros = matrix = 0
    for t in model.graph.initializer:
        if t.data_type not in weight_types or t.name.endswith(("_scale", "_zero_point")):
            continue
        numel = int(np.prod(t.dims)) if t.dims else 1
        params += numel
        if len(t.dims) >= 2:
            matrix += numel
            zeros += int((numpy_helper.to_array(t) == 0).sum())
    return {
        "params": params,
        "zero_weights": zeros / matrix if matrix else None,
        "gemm_layers": [asdict(x) for x in gemm_layers(path)],
    }
