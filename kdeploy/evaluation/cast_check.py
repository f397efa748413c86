"""CPU check of the FP16 (+ INT8) graph a strongly typed TensorRT engine will run.

No GPU runs here, so the graph TensorRT gets is executed op by op on CPU by ONNX's
reference evaluator (``kdeploy.runtime.reference``: every tensor in the graph's own type,
GEMMs accumulating in FP32 as TensorRT's do) and compared twice:

- per text, with the model it was made from (the fake-quantized torch model, or the FP32
  student for a pure FP16 graph): cosine of the outputs on real validation sentences;
- on the task: the dev-split metric of the FP16 graph over that of the FP32 graph it was
  cast from (run by ONNX Runtime), the retention.

Either below the profile's ``quantize.cast_budget`` fails the quantize stage. Also here:
the share of the graph's GEMM FLOPs that runs in INT8, FP16 and FP32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kdeploy.core.errors import ExportError
from kdeploy.data import Split
from kdeploy.evaluation.verify import evaluate
from kdeploy.onnxtools.qdq_lint import dequantized
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.metrics import cosine_rows
from kdeploy.runtime.model import open_model
from kdeploy.runtime.runners import RunnerSettings

REFERENCE = RunnerSettings(providers=("reference",))
GEMM_OPS = ("MatMul", "Gemm")
_DTYPE_NAME = {np.dtype(np.float16): "fp16", np.dtype(np.float32): "fp32"}


@dataclass
class GemmShare:
    """GEMM FLOPs of one forward pass by the precision they run in (int8: both inputs
    dequantized INT8; otherwise the type of the first input)."""

    batch: int
    sequence: int
    flops: dict[str, int]
    share: dict[str, float]
    gemms: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def gemm_share(
    onnx_path: Path,
    *,
    batch: int = 1,
    sequence: int = 128,
    feeds: dict[str, np.ndarray] | None = None,
) -> GemmShare:
    """Run the graph once on a (batch, sequence) input of token ids (all tokens attended;
    ``feeds``: other inputs) and count each MatMul/Gemm's FLOPs (2 x output elements x
    inner dimension)."""
    import onnx

    from kdeploy.runtime.reference import ReferenceRunner

    model = onnx.load(str(onnx_path), load_external_data=False)
    producer = {o: n for n in model.graph.node for o in n.output}
    if feeds is None:
        feeds = {
            i.name: np.full((batch, sequence), int(i.name != "token_type_ids"), np.int64)
            for i in model.graph.input
        }
    with ReferenceRunner(onnx_path) as r:
        values = r.intermediates(feeds)
    flops = {"int8": 0, "fp16": 0, "fp32": 0}
    gemms = []
    for n in model.graph.node:
        if n.op_type not in GEMM_OPS:
            continue
        a, out = values[n.input[0]], values[n.output[0]]
        f = 2 * int(out.size) * int(a.shape[-1])
        if all(dequantized(i, producer) for i in n.input[:2]):
            prec = "int8"
        else:
            prec = _DTYPE_NAME.get(np.dtype(a.dtype), str(a.dtype))
        flops[prec] = flops.get(prec, 0) + f
        gemms.append({"node": n.name, "precision": prec, "flops": f})
    total = sum(flops.values()) or 1
    return GemmShare(batch, sequence, flops, {k: v / total for k, v in flops.items()}, gemms)


@dataclass
class CastCheck:
    """The FP16 graph against its source: per-text cosine and dev-split retention."""

    texts: int
    min_cosine: float
    median_cosine: float
    metric: str
    split: str
    examples: int
    fp16_value: float
    fp32_value: float
    retention: float
    budget_min_cosine: float
    budget_min_retention: float
    runner: str = "onnx.reference (CPU, the graph's types; GEMMs accumulate in FP32)"

    @property
    def passed(self) -> bool:
        """Cosine within budget and the metric lost at most (1 - min_retention) of the FP32
        graph's magnitude: the retention ratio for a positive metric, and still sound when
        the FP32 graph's metric is zero or negative (an untrained model's Spearman), where
        a higher FP16 value would read as a ratio under 1."""
        allowed = (1 - self.budget_min_retention) * abs(self.fp32_value)
        return (
            self.min_cosine >= self.budget_min_cosine
            and self.fp32_value - self.fp16_value <= allowed
        )

    def to_json(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_cast(
    fp16_dir: Path,
    fp32_dir: Path,
    texts: list[str],
    reference: np.ndarray,
    split: Split,
    *,
    limit: int,
    batch_size: int,
    min_cosine: float,
    min_retention: float,
    threads: int | None = None,
) -> CastCheck:
    """Compare the FP16 graph in ``fp16_dir`` with ``reference`` (the source model's outputs
    on ``texts``) and with the FP32 graph in ``fp32_dir`` on ``split``; raise ExportError
    when it misses the budget."""
    with open_model(fp16_dir, batch_size=batch_size, settings=REFERENCE) as m:
        got = m.outputs(texts)
    if got.shape != reference.shape:
        raise ExportError(
            f"the FP16 graph's outputs have shape {got.shape}, its source's {reference.shape}",
            where=str(fp16_dir),
        )
    cos = cosine_rows(reference.astype(np.float32), got.astype(np.float32))
    fp16 = evaluate(fp16_dir, split, threads=None, batch_size=batch_size, limit=limit,
                    settings=REFERENCE)  # fmt: skip
    fp32 = evaluate(fp32_dir, split, threads=threads, batch_size=batch_size, limit=limit)
    result = CastCheck(
        texts=len(texts),
        min_cosine=float(cos.min()),
        median_cosine=float(np.median(cos)),
        metric=fp16["metric"],
        split=split.name,
        examples=fp16["examples"],
        fp16_value=float(fp16["value"]),
        fp32_value=float(fp32["value"]),
        retention=float(fp16["value"] / fp32["value"]) if fp32["value"] else 0.0,
        budget_min_cosine=min_cosine,
        budget_min_retention=min_retention,
    )
    if not result.passed:
        card = ModelCard.load(fp16_dir)
        raise ExportError(
            f"the FP16 graph loses more than quantize.cast_budget allows: min cosine "
            f"{result.min_cosine:.5f} vs its source (budget {min_cosine}), "
            f"{result.metric} {result.fp16_value:.2f} vs {result.fp32_value:.2f} of the FP32 "
            f"graph on {split.name} = {result.retention:.4f} (budget {min_retention})",
            where=str(fp16_dir / card.model_file),
            fix="keep more ops in FP32 (quantize.keep_fp32: [layernorm, softmax, head]), "
            "or set quantize.high_precision: fp32 (slower engine)",
        )
    return result
