"""The GEMM layers of an ONNX graph as a deployment engineer reads them: which weight feeds
each matrix multiply, whether it is exactly 2:4 sparse, and at how many bits it runs.

Needs the ``onnx`` package. export and quantize use it to prove that the exported weights are
exactly 2:4; the report builds its per-layer table (dense/2:4, bits) from it.

2:4 is checked the way sparse tensor cores read it (NVIDIA, "Accelerating Sparse Deep
Neural Networks", arXiv:2104.08378, and TensorRT's ``SPARSE_WEIGHTS`` docs): for every
output channel, every group of 4 consecutive weights along the *input* (reduction)
dimension holds at most 2 non-zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# ops whose second input is a weight matrix; value: the layout of that input
_GEMMS = {
    "MatMul": "KN",
    "Gemm": "KN",  # transB=1 flips it to NK, read from the attribute
    "MatMulInteger": "KN",
    "DynamicQuantizeMatMul": "KN",
    "QLinearMatMul": "KN",
    "MatMulIntegerToFloat": "KN",
    "Attention": "KN",  # ONNX Runtime's fused attention: packed [hidden, 3 * hidden] QKV
    "QAttention": "KN",
}
# single-tensor ops a weight passes through on its way to the GEMM
_PASS = {"Transpose", "DequantizeLinear", "QuantizeLinear", "Cast", "Identity"}
_WEIGHT_INPUT = {"QLinearMatMul": 3}  # (a, a_scale, a_zp, b, ...): b is input 3
# integer GEMMs (ONNX Runtime's QOperator format): input index of the weight's zero point
_INTEGER_ZP = {
    "MatMulInteger": 3,
    "DynamicQuantizeMatMul": 3,
    "QLinearMatMul": 5,
    "MatMulIntegerToFloat": 5,
    "QAttention": 7,
}


@dataclass
class GemmLayer:
    """One weight GEMM: its name, [in, out] shape, precision and sparsity."""

    node: str
    weight: str
    in_features: int
    out_features: int
    weight_bits: int
    activation_bits: int
    zero_fraction: float
    is_2to4: bool

    @property
    def sparsity(self) -> str:
        return "2:4" if self.is_2to4 else "dense"


def is_2to4(w_kn: np.ndarray, zero: Any = 0) -> bool:
    """Every group of 4 consecutive weights along K (rows of a [K, N] matrix) has <= 2
    non-zero entries, for every column. K must be a multiple of 4."""
    k, n = w_kn.shape
    if k % 4:
        return False
    groups = (w_kn != zero).reshape(k // 4, 4, n)
    return bool((groups.sum(axis=1) <= 2).all())


def max_nonzeros_per_group(w_kn: np.ndarray, zero: Any = 0) -> int:
    k, n = w_kn.shape
    groups = (w_kn[: k - k % 4] != zero).reshape(k // 4, 4, n)
    return int(groups.sum(axis=1).max()) if groups.size else 0


def _attr(node, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _bits(dtype: int) -> int:
    import onnx

    return {
        onnx.TensorProto.INT8: 8,
        onnx.TensorProto.UINT8: 8,
        onnx.TensorProto.FLOAT16: 16,
        onnx.TensorProto.BFLOAT16: 16,
        onnx.TensorProto.FLOAT: 32,
    }.get(dtype, 32)


class _Graph:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:  # Constant nodes hold weights in some exporters' graphs
            if n.op_type == "Constant" and n.output:
                t = _attr(n, "value")
                if t is not None:
                    self.arrays[n.output[0]] = numpy_helper.to_array(t)
        self.dtypes = {i.name: i.data_type for i in g.initializer}

    def weight(self, name: str) -> tuple[np.ndarray, str, int, Any] | None:
        """Follow ``name`` back through pass-through ops to a constant: (array in the GEMM's
        orientation, constant name, bits it runs at, its zero value)."""
        perm_stack: list[list[int]] = []
        bits = None
        zero: Any = 0
        cur = name
        for _ in range(16):
            if cur in self.arrays:
                arr = self.arrays[cur]
                if arr.ndim != 2:
                    return None
                for perm in reversed(perm_stack):
                    arr = arr.transpose(perm)
                return arr, cur, bits or _bits(self.dtypes.get(cur, 1)), zero
            node = self.producer.get(cur)
            if node is None or node.op_type not in _PASS:
                return None
            if node.op_type == "Transpose":
                perm_stack.append(list(_attr(node, "perm", [1, 0])))
            elif node.op_type in ("DequantizeLinear", "QuantizeLinear"):
                bits = 8
                if node.op_type == "DequantizeLinear" and len(node.input) > 2:
                    zp = self.arrays.get(node.input[2])
                    if zp is not None and zp.size == 1:
                        zero = zp.reshape(()).item()
            cur = node.input[0]
        return None

    def activation_bits(self, name: str) -> int:
        node = self.producer.get(name)
        if node is not None and node.op_type == "DequantizeLinear":
            return 8
        return 32


def gemm_layers(path: Path) -> list[GemmLayer]:
    """Every GEMM of the graph whose second operand is a constant weight."""
    import onnx

    model = onnx.load(str(path))
    graph = _Graph(model)
    layers = []
    for node in model.graph.node:
        if node.op_type not in _GEMMS:
            continue
        idx = _WEIGHT_INPUT.get(node.op_type, 1)
        if len(node.input) <= idx:
            continue
        found = graph.weight(node.input[idx])
        if found is None:
            continue
        arr, wname, bits, zero = found
        if node.op_type == "Gemm" and _attr(node, "transB", 0):
            arr = arr.T
        if node.op_type in _INTEGER_ZP:
            bits, act_bits = 8, 8
            zp_idx = _INTEGER_ZP[node.op_type]
            zp = graph.arrays.get(node.input[zp_idx]) if len(node.input) > zp_idx else None
            if zp is not None and zp.size == 1:
                zero = zp.reshape(()).item()
        else:
            act_bits = graph.activation_bits(node.input[0])
        k, n = arr.shape
        layers.append(
            GemmLayer(
                node=node.name or wname,
                weight=wname,
                in_features=int(k),
                out_features=int(n),
                weight_bits=int(bits),
                activation_bits=int(act_bits),
                zero_fraction=round(float((arr == zero).mean()), 4),
                is_2to4=is_2to4(arr, zero),
            )
        )
    return layers


def module_of(node_name: str) -> str:
    """The torch module a GEMM node was exported from, as a dotted name
    (optimum: ``/0/encoder/layer.0/attention/self/query/MatMul`` ->
    ``encoder.layer.0.attention.self.query``)."""
    parts = [p for p in node_name.split("/") if p]
    if parts and parts[-1].split("_")[0] in _GEMMS:
        parts = parts[:-1]
    if parts and parts[0].isdigit():  # sentence-transformers module index
        parts = parts[1:]
    return ".".join(parts)


def summarize(layers: list[GemmLayer]) -> dict:
    sparse = [x for x in layers if x.is_2to4]
    return {
        "gemms": len(layers),
        "sparse_2to4": len(sparse),
        "int8": sum(1 for x in layers if x.weight_bits == 8),
        "dense": [x.node for x in layers if not x.is_2to4],
    }


def sparsity_problems(layers: list[GemmLayer], expected: set[str]) -> list[str]:
    """What is wrong with ``layers`` if every module in ``expected`` (dotted torch names)
    must be a GEMM with an exactly 2:4 weight: missing layers and dense ones."""
    by_module = {module_of(x.node): x for x in layers}

    def find(name: str) -> GemmLayer | None:
        return next((x for m, x in by_module.items() if m.endswith(name)), None)

    problems = []
    for name in sorted(expected):
        hit = find(name)
        if hit is None:
            problems.append(f"{name}: no GEMM in the graph")
        elif not hit.is_2to4:
            problems.append(f"{name}: not 2:4 ({hit.zero_fraction:.0%} zeros)")
    return problems
