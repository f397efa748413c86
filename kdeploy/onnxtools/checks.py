"""Structural checks on exported graphs: a numeric comparison passes a graph that lost its
2:4 zeros or its quantizers as long as the outputs stay close, so these look at the weights.
Each raises ExportError naming the first layers that fail."""

from __future__ import annotations

from pathlib import Path

from kdeploy.core.errors import ExportError
from kdeploy.onnxtools.layers import gemm_layers, module_of, sparsity_problems, summarize


def check_sparse_export(onnx_path: Path, sparse_layers: set[str]) -> dict:
    """Every layer sparsify masked must reach the ONNX graph exactly 2:4."""
    layers = gemm_layers(onnx_path)
    problems = sparsity_problems(layers, sparse_layers)
    if problems:
        raise ExportError(
            f"the exported sparse student lost its 2:4 pattern: {'; '.join(problems[:3])}",
            where=str(onnx_path.parent),
            fix="a kdeploy bug (the exporter changed the weights): please report it",
        )
    return summarize(layers)


def check_sparsity_kept(sparse_onnx: Path, int8_onnx: Path) -> dict:
    """The INT8 student must keep every 2:4 weight of the sparse fp32 one."""
    before = {module_of(x.node) for x in gemm_layers(sparse_onnx) if x.is_2to4}
    after = gemm_layers(int8_onnx)
    problems = sparsity_problems(after, before)
    if problems:
        raise ExportError(
            f"quantization broke the 2:4 pattern: {'; '.join(problems[:3])}",
            where=str(int8_onnx),
            fix="use symmetric int8 weights (quantize.weight_type: int8), whose zero stays 0",
        )
    return summarize(after)


def expect_int8(onnx_path: Path, quantized: list[str]) -> None:
    """Each Linear modelopt quantized must be a Q/DQ GEMM in the exported graph: an
    exporter that drops the quantizers would otherwise pass every numeric check."""
    int8 = {module_of(x.node) for x in gemm_layers(onnx_path) if x.weight_bits == 8}
    lost = [n for n in quantized if not any(m.endswith(n) for m in int8)]
    if lost:
        raise ExportError(
            f"{len(lost)} of {len(quantized)} quantized layers reached the ONNX graph without "
            f"Q/DQ (e.g. {lost[0]})",
            where=str(onnx_path),
            fix="a kdeploy bug (the exporter lost modelopt's quantizers): please report it",
        )
