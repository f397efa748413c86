"""Static lint of a Q/DQ ONNX graph against TensorRT's explicit-quantization rules.

TensorRT builds an INT8 engine from an explicitly quantized graph by fusing each
QuantizeLinear/DequantizeLinear pair into the layer that consumes it. When the graph breaks
one of its rules the parser refuses it, or worse, the builder silently runs the layer in
FP16/FP32 (the most common complaint against Q/DQ tools: "INT8 slower than FP16"). Each rule
below names where it comes from; run it on the host, before an engine build on a device
nobody can watch.

Sources (short names used by the rules):
- [TRT-EQ] TensorRT Developer Guide, "Working with Quantized Types" -> "Explicit
  Quantization" and "Q/DQ Layer-Placement Recommendations" (TensorRT 10.x).
- [ONNX-Q] ONNX operator spec, QuantizeLinear / DequantizeLinear (``axis`` since opset 13).
- [TF2ONNX-1713] onnx/tensorflow-onnx#1713: the TensorRT parser's assertion
  "TRT only supports symmetric quantization - zeroPt must be all zeros".
- [TRT-1604] NVIDIA/TensorRT#1604: a Transpose between "initializer + Q/DQ" and MatMul is
  folded at build time (weights may be stored [out, in] and transposed).
- [TRT-3197] NVIDIA/TensorRT#3197, [TRT-1144] NVIDIA/TensorRT#1144, [MO-80]
  NVIDIA/Model-Optimizer#80: engines slower than FP16 because Q/DQ sat where no INT8
  kernel could absorb it, leaving layers "fp32-in-fp32-out" with reformats around them.
- [TRT-ST] TensorRT Developer Guide, "Strongly Typed Networks" (10.12+; the only mode of
  TensorRT 11, see the 10.x -> 11.x migration guide): every tensor runs in the type the
  graph gives it, so an FP32 tensor between two INT8 GEMMs of an FP16 graph is an FP32
  layer with FP16<->FP32 reformats around it; the builder cannot choose otherwise.

Strongly typed rules apply to mixed FP16 graphs (``kdeploy.onnxtools.precision``): the
ops a ``keep_fp32`` rule names may run FP32 (with their Casts); any other FP32 compute
between INT8 GEMMs is an island (``fp32-island``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.onnxtools.precision import DEFAULT_KEEP, downstream, fp32_nodes, tensor_types

GEMM_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose"}
# ops that only move a quantized weight into place before its GEMM ([TRT-1604])
_LAYOUT_OPS = {"Transpose", "Reshape", "Identity"}
# ops that read a tensor's shape, not its values: no precision boundary
_SHAPE_ONLY = {"Shape", "Size"}


@dataclass
class Finding:
    rule: str
    node: str
    message: str
    source: str


RULES: dict[str, tuple[str, str]] = {
    "opset": ("Q/DQ graphs need ONNX opset >= 13 (per-channel `axis`)", "[ONNX-Q], [TRT-EQ]"),
    "int8": ("Q/DQ are INT8, not UINT8 (TensorRT has no UINT8 Q/DQ for GEMMs)", "[TRT-EQ]"),
    "zero-point": ("zero points are all 0 (symmetric quantization)", "[TF2ONNX-1713], [TRT-EQ]"),
    "scale": ("scales are finite and > 0", "[TRT-EQ]"),
    "weight-axis": (
        "weight scales are per output channel (axis 0 of an [out, in] weight, axis 1 of a "
        "MatMul's [in, out] weight); activation scales are per tensor",
        "[TRT-EQ], [TRT-1604]",
    ),
    "pair": (
        "every DequantizeLinear of an activation follows a QuantizeLinear with the same "
        "scale and zero point",
        "[TRT-EQ]",
    ),
    "gemm-inputs": (
        "a quantized GEMM has Q/DQ on both inputs (activation and weight); a GEMM with only "
        "one runs in float",
        "[TRT-EQ], [TRT-3197]",
    ),
    "placement": (
        "DequantizeLinear outputs feed only GEMMs (directly or through a weight Transpose): "
        "Q/DQ on a GEMM's output, its bias Add or a residual Add/LayerNorm/Softmax "
        "breaks the GEMM+bias(+residual) fusion and leaves float layers with reformats",
        "[TRT-EQ], [TRT-3197], [TRT-1144], [MO-80]",
    ),
    "fp32-island": (
        "in an FP16 graph, nothing between two INT8 GEMMs computes in FP32 except the ops a "
        "keep_fp32 rule keeps there (and their Casts)",
        "[TRT-ST], [TRT-3197]",
    ),
}


def _attr(node, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@dataclass
class _GraphIndex:
    """What the rules look up in a graph: constant values (initializers and Constant
    nodes), the node producing each tensor and the nodes consuming it."""

    consts: dict[str, np.ndarray]
    producer: dict[str, Any]
    consumers: dict[str, list]

    @classmethod
    def of(cls, g: Any) -> _GraphIndex:
        from onnx import numpy_helper

        consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.output and _attr(n, "value") is not None:
                consts[n.output[0]] = numpy_helper.to_array(_attr(n, "value"))
        consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        return cls(consts, {o: n for n in g.node for o in n.output}, consumers)

    def const_input(self, node: Any, i: int) -> np.ndarray | None:
        """The constant value of a node's ``i``-th input (None: absent or computed)."""
        return self.consts.get(node.input[i]) if len(node.input) > i else None

    def is_weight(self, name: str) -> bool:
        """``name`` comes from a constant through Q/DQ / layout ops only."""
        for _ in range(8):
            if name in self.consts:
                return True
            node = self.producer.get(name)
            if node is None or node.op_type not in _LAYOUT_OPS | {
                "QuantizeLinear",
                "DequantizeLinear",
                "Cast",
            }:
                return False
            name = node.input[0]
        return False

    def const_behind(self, name: str) -> np.ndarray | None:
        """The constant a tensor is computed from, following first inputs upstream."""
        w = self.consts.get(name)
        while w is None and name in self.producer:
            name = self.producer[name].input[0]
            w = self.consts.get(name)
        return w


def _finding(rule: str, node: Any, msg: str) -> Finding:
    return Finding(rule, node.name or node.op_type, msg, RULES[rule][1])


def lint_qdq(path: Path, keep_fp32: tuple[str, ...] | list[str] = DEFAULT_KEEP) -> list[Finding]:
    """Every violation of RULES in the ONNX model at ``path`` (an empty list = clean);
    ``keep_fp32``: the precision rules whose ops an FP16 graph may keep in FP32."""
    import onnx

    model = onnx.load(str(path))
    idx = _GraphIndex.of(model.graph)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return []
    findings: list[Finding] = []
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        findings.append(Finding("opset", "(model)", f"opset {opset} < 13", RULES["opset"][1]))
    for n in qdq:
        scale, zp = idx.const_input(n, 1), idx.const_input(n, 2)
        weight = idx.is_weight(n.input[0])
        findings += _scale_rule(n, scale)
        findings += _zero_point_rules(n, zp)
        findings += _weight_axis_rule(idx, n, scale, weight)
        findings += _pair_rule(idx, n, weight)
        findings += _placement_rule(idx, n)
    findings += _gemm_inputs_rule(idx, model.graph.node)
    findings += _island_rule(model, idx, keep_fp32)
    return findings


def _int8_gemms(idx: _GraphIndex, nodes: Any) -> list:
    return [
        n
        for n in nodes
        if n.op_type in GEMM_OPS
        and len(n.input) >= 2
        and all(dequantized(i, idx.producer) for i in n.input[:2])
    ]


def _upstream(nodes: list, start: set[str]) -> set[str]:
    """Names of the nodes whose outputs reach, directly or not, a tensor in ``start``."""
    reached, needed = set(), set(start)
    for n in reversed(nodes):
        if set(n.output) & needed:
            reached.add(n.name)
            needed |= set(n.input)
    return reached


def _island_rule(model: Any, idx: _GraphIndex, keep: tuple[str, ...] | list[str]) -> list:
    """[TRT-ST]: FP32 compute between INT8 GEMMs of a mixed FP16 graph, not kept by a rule."""
    import onnx

    types = tensor_types(model)
    if onnx.TensorProto.FLOAT16 not in types.values():
        return []  # an FP32 graph: the engine runs FP32 outside the INT8 GEMMs by design
    nodes = list(model.graph.node)
    gemms = _int8_gemms(idx, nodes)
    between = downstream(nodes, {o for g in gemms for o in g.output}) & _upstream(
        nodes, {i for g in gemms for i in g.input}
    )
    kept = {name for group in fp32_nodes(model.graph, keep).values() for name in group}
    found = []
    for n in nodes:
        if n.name not in between or n.name in kept or n.op_type in _SHAPE_ONLY:
            continue
        if types.get(n.output[0]) != onnx.TensorProto.FLOAT:
            continue
        users = idx.consumers.get(n.output[0], [])
        if n.op_type == "Cast" and users and all(u.name in kept for u in users):
            continue  # the Cast into a kept op
        found.append(
            _finding(
                "fp32-island",
                n,
                f"{n.op_type} computes in FP32 between INT8 GEMMs, kept by no rule: TensorRT "
                "runs it FP32 with reformats around it",
            )
        )
    return found


def fp32_kept(path: Path, keep: tuple[str, ...] | list[str] = DEFAULT_KEEP) -> dict[str, list]:
    """rule -> the nodes of the graph at ``path`` that run FP32 because of it (empty when
    the graph has no FP16 tensor: then everything is FP32 and no rule is at work)."""
    import onnx

    model = onnx.load(str(path))
    types = tensor_types(model)
    if onnx.TensorProto.FLOAT16 not in types.values():
        return {}
    out = {}
    for rule, names in fp32_nodes(model.graph, keep).items():
        wanted = set(names)
        out[rule] = [
            n.name
            for n in model.graph.node
            if n.name in wanted and types.get(n.output[0]) == onnx.TensorProto.FLOAT
        ]
    return out


def _scale_rule(n: Any, scale: np.ndarray | None) -> list[Finding]:
    if scale is None:
        return [_finding("scale", n, "scale is not a constant")]
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        msg = f"scale has non-finite or non-positive values ({scale.min()!r})"
        return [_finding("scale", n, msg)]
    return []


def _zero_point_rules(n: Any, zp: np.ndarray | None) -> list[Finding]:
    """The int8 and zero-point rules: a zero point is int8 and all 0."""
    if zp is None:
        return []
    found = []
    if zp.dtype != np.int8:
        found.append(_finding("int8", n, f"zero point dtype is {zp.dtype}, not int8"))
    if np.any(zp != 0):
        found.append(_finding("zero-point", n, f"non-zero zero point(s), e.g. {zp.flat[0]!r}"))
    return found


def _weight_axis_rule(
    idx: _GraphIndex, n: Any, scale: np.ndarray | None, weight: bool
) -> list[Finding]:
    if scale is None or scale.size <= 1:  # per tensor
        return []
    if not weight:
        return [_finding("weight-axis", n, "an activation is quantized per channel")]
    w = idx.const_behind(n.input[0])
    axis = _attr(n, "axis", 1)
    if w is not None and w.ndim == 2 and not _output_axis_ok(n, axis, idx.consumers):
        return [_finding("weight-axis", n, f"per-channel axis {axis} is not the output channel")]
    return []


def _pair_rule(idx: _GraphIndex, n: Any, weight: bool) -> list[Finding]:
    if n.op_type != "DequantizeLinear" or weight:
        return []
    q = idx.producer.get(n.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        msg = "DequantizeLinear of an activation without its QuantizeLinear"
        return [_finding("pair", n, msg)]
    if (q.input[1:] != n.input[1:]) and not _same_values(q, n, idx.consts):
        return [_finding("pair", n, "Q and DQ of a pair differ in scale or zero point")]
    return []


def _placement_rule(idx: _GraphIndex, n: Any) -> list[Finding]:
    """A DequantizeLinear feeds only GEMMs; a QuantizeLinear does not quantize a GEMM's
    output."""
    if n.op_type == "DequantizeLinear":
        return [
            _finding("placement", n, f"dequantized tensor feeds {c.op_type} '{c.name}', not a GEMM")
            for c in _effective_consumers(n.output[0], idx.consumers)
            if c.op_type not in GEMM_OPS | _SHAPE_ONLY
        ]
    src = idx.producer.get(n.input[0])
    if src is not None and src.op_type in GEMM_OPS:
        return [_finding("placement", n, f"quantizes the output of {src.op_type} '{src.name}'")]
    return []


def _gemm_inputs_rule(idx: _GraphIndex, nodes: Any) -> list[Finding]:
    found = []
    for n in nodes:
        if n.op_type not in GEMM_OPS or len(n.input) < 2:
            continue
        fed = [dequantized(i, idx.producer) for i in n.input[:2]]
        if any(fed) and not all(fed):
            which = "weight" if fed[0] else "activation"
            found.append(
                _finding("gemm-inputs", n, f"has Q/DQ on one input only (its {which} is float)")
            )
    return found


def _same_values(q, dq, consts: dict[str, np.ndarray]) -> bool:
    for a, b in zip(q.input[1:], dq.input[1:], strict=False):
        va, vb = consts.get(a), consts.get(b)
        if va is None or vb is None or va.shape != vb.shape or not np.array_equal(va, vb):
            return False
    return True


def _effective_consumers(name: str, consumers: dict[str, list]) -> list:
    """Consumers of a tensor, looking through layout ops (a weight's Transpose)."""
    out = []
    for c in consumers.get(name, []):
        if c.op_type in _LAYOUT_OPS:
            out += _effective_consumers(c.output[0], consumers)
        else:
            out.append(c)
    return out


def dequantized(name: str, producer: dict) -> bool:
    """``name`` is a DequantizeLinear output, directly or through layout ops."""
    for _ in range(4):
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type == "DequantizeLinear":
            return True
        if node.op_type not in _LAYOUT_OPS:
            return False
        name = node.input[0]
    return False


def _output_axis_ok(dq_or_q, axis: int, consumers: dict[str, list]) -> bool:
    """Is ``axis`` of this weight the output-channel axis of the GEMM it feeds?

    A weight reaches MatMul as [in, out] (output axis 1); an odd number of 2-D Transposes
    on the way means it is stored [out, in] (output axis 0). Gemm with transB=1 reads
    [out, in]. Conv weights are [out, in, kh, kw] (axis 0).
    """
    name = dq_or_q.output[0]
    flips = 0
    for _ in range(8):
        nxt = consumers.get(name, [])
        if not nxt:
            return True  # not consumed: nothing to check
        c = nxt[0]
        if c.op_type in ("QuantizeLinear", "DequantizeLinear", "Identity", "Cast"):
            name = c.output[0]
            continue
        if c.op_type == "Transpose":
            flips += 1
            name = c.output[0]
            continue
        if c.op_type == "MatMul":
            return axis % 2 == (0 if flips % 2 else 1)
        if c.op_type == "Gemm":
            trans_b = bool(_attr(c, "transB", 0)) ^ bool(flips % 2)
            return axis % 2 == (0 if trans_b else 1)
        if c.op_type in ("Conv", "ConvTranspose"):
            return axis == (1 if c.op_type == "ConvTranspose" else 0)
        return True
    return True


def findings_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]


def summary(findings: list[Finding]) -> str:
    if not findings:
        return "clean: no TensorRT Q/DQ rule broken"
    by_rule: dict[str, int] = {}
    for f in findings:
        by_rule[f.rule] = by_rule.get(f.rule, 0) + 1
    return ", ".join(f"{k}: {v}" for k, v in sorted(by_rule.items()))
