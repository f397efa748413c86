"""Run the exact graph a strongly typed TensorRT engine gets, on CPU: ONNX's reference
evaluator (``onnx.reference``) executes every op in numpy, in the dtype the graph gives
its tensors, so an FP16 + INT8 graph computes its FP16 elementwise ops, LayerNorm inputs,
Q/DQ scales and rounding as written. ONNX Runtime's CPU provider lacks FP16 kernels for
much of such a graph (it inserts its own FP32 casts, so it would not test the FP16 ops).

One deliberate difference from plain numpy: MatMul and Gemm accumulate in FP32 and round
the result to the output type, as TensorRT's FP16 and INT8 (dequantized) GEMMs do (FP32 /
INT32 accumulators); numpy's own FP16 matmul is slow and has no BLAS behind it.

Host side: needs the ``onnx`` package (``kdeploy[train]``); torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.deps import require
from kdeploy.core.errors import ModelError


def _fp32_accumulating_ops() -> list[type]:
    from onnx.reference.op_run import OpRun

    class MatMul(OpRun):
        def _run(self, a, b):  # noqa: D102 - onnx's op interface
            out = np.matmul(a.astype(np.float32), b.astype(np.float32))
            return (out.astype(np.result_type(a.dtype, b.dtype)),)

    class Gemm(OpRun):
        def _run(self, a, b, c=None, alpha=None, beta=None, transA=None, transB=None):  # noqa: N803
            dtype = np.result_type(a.dtype, b.dtype)
            a32, b32 = a.astype(np.float32), b.astype(np.float32)
            if transA:
                a32 = a32.T
            if transB:
                b32 = b32.T
            out = (alpha if alpha is not None else 1.0) * (a32 @ b32)
            if c is not None:
                out = out + (beta if beta is not None else 1.0) * c.astype(np.float32)
            return (out.astype(dtype),)

    return [MatMul, Gemm]


class ReferenceRunner:
    """The Runner shape (``kdeploy.runtime.runners``) over ONNX's reference evaluator."""

    def __init__(
        self,
        model_path: Path | str,
        *,
        outputs: list[str] | None = None,
        name: str | None = None,
    ):
        self.model_path = Path(model_path)
        self.name = name or self.model_path.parent.name
        self._outputs = outputs
        self._ev: Any = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    def __enter__(self) -> ReferenceRunner:
        require("onnx", feature="running a graph with ONNX's reference evaluator")
        from onnx.reference import ReferenceEvaluator

        try:
            self._ev = ReferenceEvaluator(str(self.model_path), new_ops=_fp32_accumulating_ops())
        except Exception as exc:  # the evaluator has no kernel for an op or opset
            raise ModelError(
                f"ONNX's reference evaluator cannot run {self.model_path}: {exc}",
                where=str(self.model_path),
                fix="the reference run is for opset >= 19 graphs of standard ONNX ops "
                "(the FP16 graphs the quantize stage writes)",
            ) from exc
        self.input_names = list(self._ev.input_names)
        self.output_names = list(self._outputs or self._ev.output_names)
        return self

    def __exit__(self, *exc: object) -> None:
        self._ev = None

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._ev is None:
            raise ModelError("ReferenceRunner.infer outside its `with` block")
        fed = {k: v for k, v in feeds.items() if k in self.input_names}
        values = self._ev.run(self.output_names, fed)
        return dict(zip(self.output_names, values, strict=True))

    def intermediates(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every tensor of one run (inputs, initializers, node outputs) by name."""
        if self._ev is None:
            raise ModelError("ReferenceRunner.intermediates outside its `with` block")
        fed = {k: v for k, v in feeds.items() if k in self.input_names}
        return self._ev.run(None, fed, intermediate=True)

    def bench_fn(self, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
        raise ModelError(
            "the reference evaluator is a correctness check, not a runtime: it is not timed",
            fix="bench the ONNX model with ONNX Runtime, or the engine with TensorRT",
        )
