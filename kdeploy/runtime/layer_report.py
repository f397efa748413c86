"""Which layers of a TensorRT engine run sparse, and in which precision.

TensorRT silently falls back: a layer asked to run INT8 may run FP16 or FP32, and a layer
with 2:4-sparse weights may get a dense kernel. The engine inspector's JSON (built with
``ProfilingVerbosity.DETAILED``; ``IEngineInspector.get_engine_information(
LayerInformationFormat.JSON)`` or ``trtexec --exportLayerInfo``) says what was picked.

Format, as TensorRT 10 writes it and as NVIDIA's TensorRT Engine Explorer (trex,
``trex/parser.py``, ``trex/layer.py``, ``trex/activations.py``) reads it::

    {"Layers": [{"Name": ..., "LayerType": "CaskConvolution" | "gemm" | "Reformat" | ...,
                 "Inputs": [{"Name": ..., "Dimensions": [...],
                             "Format/Datatype": "Row major Int8 format" | "Half" | ...}],
                 "Outputs": [...], "ParameterType": ..., "HasSparseWeights": 0 | 1,
                 "TacticName": ..., "Metadata": "[ONNX Layer: ...]"}, ...],
     "Bindings": ["input_ids", ...]}

As in trex, a layer's precision is the data type of its first input. A layer runs sparse
when the inspector reports ``HasSparseWeights: 1`` or its kernel (tactic) is a sparse one.
The builder's INFO log adds the two lines the TensorRT developer guide documents for
sparsity ("(Sparsity) Layers eligible for sparse math: ..." and "(Sparsity) TRT inference
plan picked sparse implementation for layers: ..."), parsed by ``sparsity_from_log``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from kdeploy.core.errors import ModelError

# Data-type words in "Format/Datatype" strings (long forms like "Thirty-two wide channel
# vectorized row major Int8 format" and TensorRT 10's Myelin short forms like "Half").
_DTYPES = [
    ("BFloat16", "BF16"),
    ("UInt8", "UINT8"),
    ("Int8", "INT8"),
    ("INT8", "INT8"),
    ("FP8", "FP8"),
    ("FP16", "FP16"),
    ("Half", "FP16"),
    ("FP32", "FP32"),
    ("Float", "FP32"),
    ("Int32", "INT32"),
    ("INT32", "INT32"),
    ("Int64", "INT64"),
    ("BOOL", "BOOL"),
    ("Bool", "BOOL"),
]
_DTYPE_RE = re.compile(r"\b(" + "|".join(w for w, _ in _DTYPES) + r")\b")
_DTYPE_MAP = dict(_DTYPES)
_MATH_RE = re.compile(r"gemm|matrixmultiply|convolution|fullyconnected", re.IGNORECASE)
_SKIP_TYPES = {"NoOp", "shape_call", "signal", "wait"}

_ELIGIBLE = "(Sparsity) Layers eligible for sparse math:"
_PICKED = "(Sparsity) TRT inference plan picked sparse implementation for layers:"


def dtype_of(fmt: str) -> str:
    """'Row major linear FP32' -> 'FP32'; 'Half' -> 'FP16'; unknown -> '?'."""
    m = _DTYPE_RE.search(fmt or "")
    return _DTYPE_MAP[m.group(1)] if m else "?"


def load_layer_info(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read TensorRT layer information {path}: {exc}") from None
    return data


def parse_layers(data: dict[str, Any], where: str = "layer JSON") -> list[dict[str, Any]]:
    """One record per engine layer: name, type, precision, output precision, sparse, tactic."""
    layers = data.get("Layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise ModelError(f"{where} has no 'Layers' list: not TensorRT engine-inspector JSON")
    if layers and not isinstance(layers[0], dict):
        raise ModelError(
            f"{where} holds layer names only: the engine was built without detailed "
            "profiling verbosity",
            fix="rebuild with ProfilingVerbosity.DETAILED (trtexec --profilingVerbosity=detailed)",
        )
    out = []
    for raw in layers:
        ltype = str(raw.get("LayerType", ""))
        if ltype in _SKIP_TYPES:
            continue
        ptype = str(raw.get("ParameterType", ""))
        ins = raw.get("Inputs") or []
        outs = raw.get("Outputs") or []
        tactic = str(raw.get("TacticName", ""))
        out.append(
            {
                "name": str(raw.get("Name", "")),
                "type": ltype,
                "parameter_type": ptype or None,
                "precision": dtype_of(ins[0].get("Format/Datatype", "")) if ins else None,
                "output_precision": (
                    dtype_of(outs[0].get("Format/Datatype", "")) if outs else None
                ),
                "math": bool(_MATH_RE.search(ltype) or _MATH_RE.search(ptype)),
                # older TensorRT lists a Myelin-compiled subgraph as one opaque layer
                "opaque": ltype == "Myelin" or str(raw.get("Name", "")).startswith("{Foreign"),
                "sparse": raw.get("HasSparseWeights") == 1 or "sparse" in tactic.lower(),
                "tactic": tactic or None,
                "onnx_nodes": re.findall(r"\[ONNX Layer: ([^\]]+)\]", str(raw.get("Metadata", ""))),
            }
        )
    return out


def sparsity_from_log(lines: list[str]) -> dict[str, list[str]]:
    """The builder's own sparsity report (INFO severity) as two lists of layer names."""
    found = {"eligible": [], "picked": []}
    for line in lines:
        for key, marker in (("eligible", _ELIGIBLE), ("picked", _PICKED)):
            if marker in line:
                rest = line.split(marker, 1)[1].strip()
                found[key] += [n.strip() for n in rest.split(", ") if n.strip()]
    return found


def summarize(
    layers: list[dict[str, Any]],
    *,
    precision: str,
    sparse_requested: bool,
    log_sparsity: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Counts, the layers that fell back, and warnings in plain words."""
    want = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8", "fp8": "FP8"}[precision]
    math = [x for x in layers if x["math"]]
    by_prec = Counter(x["precision"] or "?" for x in math)
    fallback = [x for x in math if x["precision"] != want]
    sparse = [x["name"] for x in layers if x["sparse"]]
    conversions = [
        x["name"]
        for x in layers
        if x["type"] == "Reformat" and x["precision"] != x["output_precision"]
    ]
    warnings = []
    if math and fallback and precision != "fp32":
        names = ", ".join(x["name"] for x in fallback[:5]) + (" ..." if len(fallback) > 5 else "")
        warnings.append(
            f"{len(fallback)} of {len(math)} GEMM/convolution layers do not run {want}: {names}"
        )
    opaque = [x["name"] for x in layers if x["opaque"]]
    if opaque:
        warnings.append(
            f"{len(opaque)} Myelin subgraph(s) are opaque: the precision inside them is not "
            "reported"
        )
    if not math:
        warnings.append("the engine information lists no GEMM/convolution layer")
    log_sparsity = log_sparsity or {"eligible": [], "picked": []}
    if sparse_requested and not sparse and not log_sparsity["picked"]:
        warnings.append(
            "2:4 sparsity was requested (SPARSE_WEIGHTS) but TensorRT picked no sparse kernel"
            + (
                f"; {len(log_sparsity['eligible'])} layer(s) were eligible"
                if log_sparsity["eligible"]
                else "; no layer had eligible 2:4 weights"
            )
        )
    return {
        "layers": len(layers),
        "math_layers": len(math),
        "math_precision": dict(sorted(by_prec.items())),
        "requested_precision": want,
        "fallback_layers": [{"name": x["name"], "precision": x["precision"]} for x in fallback],
        "sparse_requested": sparse_requested,
        "sparse_layers": sparse,
        "sparse_log": log_sparsity,
        "type_conversions": conversions,
        "layer_types": dict(Counter(x["type"] for x in layers).most_common()),
        "warnings": warnings,
    }


def report_lines(summary: dict[str, Any]) -> list[str]:
    """Markdown lines for report.md."""
    prec = ", ".join(f"{k} {v}" for k, v in summary["math_precision"].items()) or "-"
    out = [
        f"- {summary['layers']} engine layers, {summary['math_layers']} GEMM/convolution; "
        f"their precision: {prec} (asked for {summary['requested_precision']})",
        f"- sparse kernels: {len(summary['sparse_layers'])} layer(s)"
        + (f" ({', '.join(summary['sparse_layers'][:8])})" if summary["sparse_layers"] else "")
        + ("" if summary["sparse_requested"] else " (2:4 sparsity not requested)"),
        f"- data-type conversions (Reformat): {len(summary['type_conversions'])}",
    ]
    out += [f"- **warning**: {w}" for w in summary["warnings"]]
    return out
