"""The teacher's KD targets computed by ONNX Runtime fp32 instead of torch.

ONNX Runtime runs the MiniLM teacher about 2.4x faster than torch on this CPU at the same
fp32 precision; the targets are what distillation, sparse fine-tuning and QAT all read, so
the teacher forward pass over 77k texts was the largest single cost of the default job.

The graph: the teacher exported once (optimum, as the export stage does) and, for embedding
models, cut at its token outputs (``kdeploy.onnxtools.hidden``), so that the pooling is the
same numpy code as torch's ``pool`` (mean over the mask, or CLS) and a sentence-transformers
Dense or Normalize module after it stays out of the targets, exactly as in the torch path.
Before the ONNX targets are used, one batch (the longest texts) is computed by both engines;
a difference above ``MAX_ABS_DIFF`` makes the caller compute in torch and say why.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kdeploy.core.fsutil import digest_json
from kdeploy.data import TrainItem
from kdeploy.model_info import ModelInfo

# fp32 engines reorder sums differently: 1e-7..1e-6 apart on MiniLM; a wrong graph (another
# pooling, a missing layer) is off by 1e-2 or more
MAX_ABS_DIFF = 1e-4


@dataclass(frozen=True)
class TeacherGraph:
    """The teacher's ONNX graph that computes KD targets, and what it outputs."""

    path: Path
    output: str  # "last_hidden_state" (pooled in numpy) or "logits"
    inputs: tuple[str, ...]


def model_fingerprint(info: ModelInfo) -> str:
    """A cheap identity of the teacher's files (names, sizes, mtimes): the cache key's
    teacher part, so a run dir reused with other weights never reads stale targets."""
    files = sorted(p for p in Path(info.path).rglob("*") if p.is_file())
    return digest_json(
        [[str(p.relative_to(info.path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    )


def teacher_graph(
    info: ModelInfo, cache_dir: Path, *, allow_pickle: bool, log: Callable[[str], None]
) -> TeacherGraph:
    """The teacher exported (once per teacher, in ``cache_dir``) for target computation."""
    from kdeploy.onnxtools.hidden import HIDDEN_OUTPUT, cut_to_hidden_state
    from kdeploy.runtime.graph import onnx_inputs
    from kdeploy.train.export import export_onnx

    out = cache_dir / f"teacher-onnx-{model_fingerprint(info)[:16]}"
    name = "hidden.onnx" if info.kind == "embedding" else "model.onnx"
    if not (out / name).is_file():
        tmp = out.with_name(out.name + ".tmp")
        scratch = (tmp, tmp.with_name(tmp.name + ".export"))  # + the exporter's own
        try:
            export_onnx(info, tmp, opset=17, role="teacher", allow_pickle=allow_pickle)
            if info.kind == "embedding":
                cut_to_hidden_state(tmp / "model.onnx", tmp / "hidden.onnx")
                (tmp / "model.onnx").unlink()
            if out.exists():
                shutil.rmtree(out)
            tmp.replace(out)
        finally:  # an error or Ctrl-C leaves no half-written graph behind
            for d in scratch:
                shutil.rmtree(d, ignore_errors=True)
        log(f"teacher exported to ONNX for its KD targets ({out.name})")
    output = HIDDEN_OUTPUT if info.kind == "embedding" else "logits"
    inputs = tuple(i.name for i in onnx_inputs(out / name))
    return TeacherGraph(out / name, output, inputs)


def pool_numpy(hidden: np.ndarray, mask: np.ndarray, pooling: str) -> np.ndarray:
    """``kdeploy.train.evaluate.pool`` in numpy (same order of operations)."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(hidden.dtype)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


class OnnxTargets:
    """Pooled teacher outputs by ONNX Runtime, fed by the torch path's own tokenizer."""

    def __init__(self, graph: TeacherGraph, info: ModelInfo, tokenizer, max_len: int):
        from kdeploy.runtime.runners import OrtRunner

        self.graph, self.info, self.tokenizer, self.max_len = graph, info, tokenizer, max_len
        self.runner = OrtRunner(graph.path, outputs=[graph.output]).__enter__()

    def __call__(self, items: Sequence[TrainItem]) -> np.ndarray:
        a = [x[0] for x in items]
        b = [x[1] for x in items]
        enc = self.tokenizer(
            a,
            b if any(x is not None for x in b) else None,
            padding=True,
            truncation=True,
            max_length=self.max_len,
            return_tensors="np",
        )
        feeds = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
        if "token_type_ids" in self.graph.inputs and "token_type_ids" not in feeds:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        y = self.runner.infer(feeds)[self.graph.output]
        if self.info.kind == "embedding":
            y = pool_numpy(y, feeds["attention_mask"], self.info.pooling)
        return np.asarray(y, dtype=np.float32)


def batched_targets(
    compute: Callable[[Sequence[TrainItem]], np.ndarray],
    items: Sequence[TrainItem],
    order: np.ndarray,
    batch_size: int,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """``compute`` over ``items`` in ``order`` (by length), ``batch_size`` at a time."""
    out: np.ndarray | None = None
    for start in tqdm(
        range(0, len(items), batch_size), desc=desc, disable=not progress, unit="batch"
    ):
        idx = order[start : start + batch_size]
        y = compute([items[i] for i in idx])
        if out is None:
            out = np.zeros((len(items), y.shape[1]), dtype=np.float32)
        out[idx] = y
    assert out is not None
    return out
