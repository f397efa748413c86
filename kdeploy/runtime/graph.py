"""What an ONNX graph takes and returns, read with ONNX Runtime (no ``onnx`` package on the
device). The one reader of graph I/O: the build plan, the Triton config and bench use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdeploy.core.errors import ModelError


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: a dim is an int, a symbolic name or None (dynamic)."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str = "tensor(int64)"  # ONNX Runtime's type string, e.g. tensor(float)


def onnx_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) an ONNX file declares, read with ONNX Runtime, graph unoptimised."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(
            f"cannot read the inputs and outputs of {path}: ONNX Runtime cannot load it "
            f"({str(exc).splitlines()[0]})",
            where=str(path),
        ) from None

    def specs(args) -> list[TensorSpec]:
        return [TensorSpec(a.name, tuple(a.shape), a.type) for a in args]

    return specs(sess.get_inputs()), specs(sess.get_outputs())


def onnx_inputs(path: Path) -> list[TensorSpec]:
    """The inputs an ONNX file declares."""
    return onnx_io(path)[0]
