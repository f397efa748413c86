"""The precision of a strongly typed graph: which ops stay FP32, and the FP16 cast itself.

TensorRT 10.12+ / 11.x builds strongly typed networks: every tensor runs in the type the
ONNX graph gives it (TensorRT 11 removed the FP16/INT8 builder flags). So the graph must
carry the precision: INT8 Q/DQ on the GEMMs (the quantize stage), FP16 everywhere else it
is safe, and FP32 where FP16 overflows or loses accuracy. The FP16 cast is NVIDIA's
maintained tool for it, modelopt's ONNX AutoCast (``modelopt.onnx.autocast``, the converter
behind ``modelopt.onnx.quantization``'s ``high_precision_dtype="fp16"``): it converts
initializers (Q/DQ scales included, opset 19), inserts the Casts around the nodes kept in
high precision and keeps the model's inputs and outputs FP32. kdeploy only decides *which*
nodes stay FP32, by the rules below (measured on all-MiniLM-L6-v2's 3-layer student,
``benchmarks/strongly_typed.py``; benchmarks/RESULTS.md):

- ``layernorm``: LayerNormalization. Its mean/variance reductions over the hidden size
  overflow or lose bits in FP16 (TensorRT itself warns that FP16 LayerNorm after attention
  may overflow and suggests forcing it to FP32).
- ``softmax``: the attention Softmax (its exp-sum reduction over the sequence).
- ``head``: every node after the encoder's last LayerNorm: mean pooling sums up to
  ``sequence`` token vectors, the L2 normalisation squares and sums ``hidden`` values, a
  classifier reads one vector; O(hidden) work per sentence, FP32 costs nothing there.

Host side: needs ``onnx`` (and ``nvidia-modelopt``'s ONNX module for the cast).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kdeploy.core.errors import DependencyError, ExportError

KEEP_RULES: dict[str, str] = {
    "layernorm": "LayerNormalization (mean/variance reductions over the hidden size)",
    "softmax": "attention Softmax (exp-sum over the sequence)",
    "head": "after the encoder's last LayerNorm (pooling, L2 normalisation, classifier)",
}
DEFAULT_KEEP = ("layernorm", "softmax", "head")
_OP_RULES = {"layernorm": "LayerNormalization", "softmax": "Softmax"}
# the FP16 cast needs opset 19: the first where Q/DQ scales may be FP16
FP16_OPSET = 19


@dataclass
class CastResult:
    """What the FP16 cast did (the stage's metrics)."""

    tool: str
    keep_fp32: list[str]
    fp32_nodes: dict[str, list[str]]  # rule -> node names kept FP32
    nodes: int
    fp16_nodes: int
    casts: int  # Cast nodes in the result (AutoCast also removes redundant ones)
    opset: int
    bytes_before: int
    bytes_after: int

    def to_json(self) -> dict:
        return asdict(self)


def downstream(nodes: list[Any], start: set[str]) -> set[str]:
    """Names of the nodes that read, directly or not, one of the tensors in ``start``."""
    reached, tensors = set(), set(start)
    for n in nodes:  # ONNX graphs are topologically sorted
        if set(n.input) & tensors:
            reached.add(n.name)
            tensors |= set(n.output)
    return reached


def fp32_nodes(
    graph: Any, keep: tuple[str, ...] | list[str] = DEFAULT_KEEP
) -> dict[str, list[str]]:
    """rule -> the names of the graph's nodes that rule keeps in FP32."""
    unknown = set(keep) - set(KEEP_RULES)
    if unknown:
        raise ExportError(
            f"unknown FP32 rule(s) {sorted(unknown)}",
            fix=f"quantize.keep_fp32 takes {', '.join(KEEP_RULES)}",
        )
    nodes = list(graph.node)
    unnamed = [i for i, n in enumerate(nodes) if not n.name]
    if unnamed:
        raise ExportError(
            f"{len(unnamed)} node(s) of the graph have no name; the FP32 rules name nodes",
            fix="export with torch.onnx / optimum (every node is named)",
        )
    out: dict[str, list[str]] = {}
    for rule in keep:
        if rule in _OP_RULES:
            out[rule] = [n.name for n in nodes if n.op_type == _OP_RULES[rule]]
        else:  # head
            norms = [n for n in nodes if n.op_type == "LayerNormalization"]
            tail = downstream(nodes, set(norms[-1].output)) if norms else set()
            out[rule] = [n.name for n in nodes if n.name in tail]
    return out


def cast_fp16(src: Path, dst: Path, keep: tuple[str, ...] | list[str] = DEFAULT_KEEP) -> CastResult:
    """``src`` (FP32, with or without INT8 Q/DQ) as a mixed FP16/FP32 graph at ``dst``:
    FP16 initializers and tensors, the ``keep`` rules' nodes in FP32 behind Casts, FP32
    model inputs and outputs. ``dst`` may be ``src``."""
    import numpy as np
    import onnx

    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as exc:
        raise DependencyError(
            f"the FP16 cast needs modelopt's ONNX AutoCast ({exc})",
            fix="pip install 'kdeploy[train]' (nvidia-modelopt with onnx-graphsurgeon, "
            "onnxslim, onnxscript, lief)",
        ) from exc

    model = onnx.load(str(src))
    kept = fp32_nodes(model.graph, keep)
    names = sorted({n for group in kept.values() for n in group})
    before = src.stat().st_size
    # AutoCast logs every node it visits at INFO; the result is recorded in CastResult
    logger = logging.getLogger("modelopt.onnx.autocast")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            out = convert_to_mixed_precision(
                str(src),
                low_precision_type="fp16",
                nodes_to_exclude=[f"^{re.escape(n)}$" for n in names],
                # no reference run: the rules decide, and the stage measures the result
                data_max=np.inf,
                init_max=float(np.finfo(np.float16).max),
                keep_io_types=True,
                opset=max(FP16_OPSET, _opset(model)),
            )
    finally:
        logger.setLevel(level)
    onnx.save(out, str(dst))
    fp16 = _fp16_node_count(out)
    casts = sum(n.op_type == "Cast" for n in out.graph.node)
    return CastResult(
        tool="modelopt.onnx.autocast.convert_to_mixed_precision",
        keep_fp32=list(keep),
        fp32_nodes=kept,
        nodes=len(out.graph.node),
        fp16_nodes=fp16,
        casts=casts,
        opset=_opset(out),
        bytes_before=before,
        bytes_after=dst.stat().st_size,
    )


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def tensor_types(model: Any) -> dict[str, int]:
    """Element type (onnx.TensorProto enum) of every typed tensor: inputs, outputs,
    initializers, Constant outputs and what shape inference can type."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*g.input, *g.output, *g.value_info)
        if v.type.HasField("tensor_type")
    }
    types.update({i.name: i.data_type for i in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
    return types


def _fp16_node_count(model: Any) -> int:
    import onnx

    types = tensor_types(model)
    return sum(
        1
        for n in model.graph.node
        if n.op_type not in ("Constant", "Cast")
        and any(types.get(o) == onnx.TensorProto.FLOAT16 for o in n.output)
    )
