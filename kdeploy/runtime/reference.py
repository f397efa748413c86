"""Run the exact graph a strongly typed TensorRT engine gets, on CPU: ONNX's reference
evaluator (``onnx.reference``) executes every op in numpy, in the dtype the graph gives
its tensors, so an FP16 + INT8 graph computes its FP16 elementwise ops, LayerNorm inputs,
Q/DQ scales and rounding as written. ONNX Runtime's CPU provider lacks FP16 kernels for
much of such a graph (it inserts its own FP32 casts, so it would not test the FP16 ops).

One deliberate difference from plain numpy: MatMul and Gemm accumulate in FP32 and round
the result to the output type, as TensorRT's FP16 and INT8 (dequantized) GEMMs do (FP32 /
INT32 accumulators); numpy's own FP16 matmul is slow and has no BLAS behind it. Erf is
vectorised (within 1.2e-7 of math.erf) for speed.

Host side: needs the ``onnx`` package (``kdeploy[train]``); torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.deps import require
from kdeploy.core.errors import ModelError

# erfc(z) ~ t * exp(-z^2 + sum_i c_i t^i), t = 1 / (1 + z/2): Numerical Recipes' erfcc
_ERFC_COEFFS = (
    -1.26551223,
    1.00002368,
    0.37409196,
    0.09678418,
    -0.18628806,
    0.27886807,
    -1.13520398,
    1.48851587,
    -0.82215223,
    0.17087277,
)


def _fp32_accumulating_ops() -> list[type]:
    from onnx.reference.op_run import OpRun

    class MatMul(OpRun):
        def _run(self, a, b):  # noqa: D102 - onnx's op interface
            a32, b32 = a.astype(np.float32), b.astype(np.float32)
            if b32.ndim == 2 and a32.ndim > 2:  # (..., K) @ (K, N): one BLAS call
                out = (a32.reshape(-1, a32.shape[-1]) @ b32).reshape(*a32.shape[:-1], -1)
            else:
                out = np.matmul(a32, b32)
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

    class Erf(OpRun):
        """erf in float64, vectorised (onnx's own loops over math.erf in Python): the
        Chebyshev fit of erfc (Numerical Recipes, |error| < 1.2e-7, far below FP16's and
        near FP32's resolution), rounded to the input type."""

        def _run(self, x):  # noqa: D102 - onnx's op interface
            z = np.abs(x.astype(np.float64))
            t = 1.0 / (1.0 + 0.5 * z)
            poly = np.zeros_like(z)
            for c in _ERFC_COEFFS[::-1]:
                poly = poly * t + c
            poly -= z * z
            erf = 1.0 - t * np.exp(poly)
            return (np.where(x < 0, -erf, erf).astype(x.dtype),)

    return [MatMul, Gemm, Erf]


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
