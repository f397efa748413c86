"""Reference outputs: a few real dev sentences run through the deployable model with the
runtime (``kdeploy.runtime``); texts, batch layout and outputs are stored in
``package/reference/`` for ``kdeploy serve-check`` to replay (``servecheck.py``).

Tolerances: each comparison replays the batch layout its reference was computed with, so on
the same host and ONNX Runtime both are bit-identical. The tolerance is for other hosts
(other CPU kernels): dynamic-INT8 outputs can move with the batch (activation scales are
picked per batch at run time; on MiniLM's INT8 student another batch layout alone gives
cosine 0.9938 at worst, ``benchmarks/runtime_overhead.py``): cosine >= 0.99 for embeddings
and |delta probability| <= 0.05 for classifiers (fp32: 0.9999 and 1e-3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kdeploy.core.errors import ModelError
from kdeploy.data import Split
from kdeploy.runtime.card import ModelCard
from kdeploy.runtime.metrics import cosine_rows
from kdeploy.runtime.model import open_model, softmax_predict

REFERENCE_JSON = "reference.json"
REFERENCE_NPY = "outputs.npy"
SINGLE_NPY = "outputs_single.npy"


def tolerance_for(card: ModelCard) -> dict[str, float]:
    if card.precision == "fp32":
        return {"min_cosine": 0.9999, "max_prob_diff": 1e-3}
    return {"min_cosine": 0.99, "max_prob_diff": 0.05}


def pick_reference(split: Split, n: int, *, pairs: bool) -> tuple[list[str], list[str] | None]:
    """``n`` texts (or pairs) spread over the length range of the split, in split order.
    Embedding models take one text at a time (both sides of STS pairs are texts);
    classifiers of sentence pairs take the pair."""
    if pairs and split.texts_b is not None:
        items = list(dict.fromkeys(zip(split.texts_a, split.texts_b, strict=True)))
        size = [len(a) + len(b) for a, b in items]
    else:
        items = list(dict.fromkeys(split.texts()))
        size = [len(t) for t in items]
    if not items:
        raise ModelError(f"{split.path} has no texts for reference outputs", where=str(split.path))
    by_len = sorted(range(len(items)), key=lambda i: (size[i], i))
    n = min(n, len(items))
    picks = sorted({by_len[round(k * (len(items) - 1) / max(n - 1, 1))] for k in range(n)})
    chosen = [items[i] for i in picks]
    if chosen and isinstance(chosen[0], tuple):
        return [a for a, _ in chosen], [b for _, b in chosen]
    return list(chosen), None


def write_reference(
    out_dir: Path, model_dir: Path, split: Split, *, n: int, threads: int | None, batch_size: int
) -> dict[str, Any]:
    from kdeploy.core.deps import version_of
    from kdeploy.core.fsutil import atomic_write_json
    from kdeploy.core.host import host_info

    out_dir.mkdir(parents=True, exist_ok=True)
    with open_model(model_dir, threads=threads, batch_size=batch_size) as model:
        card = model.card
        texts, pairs = pick_reference(split, n, pairs=card.task == "classification")
        outputs = model.outputs(texts, pairs)
        bucketing = model.bucketing
        # one request per sentence: what a Triton client sends (see serve_check)
        single = np.concatenate(
            [
                model.outputs(texts[i : i + 1], None if pairs is None else pairs[i : i + 1])
                for i in range(len(texts))
            ]
        )
    np.save(out_dir / REFERENCE_NPY, outputs)
    np.save(out_dir / SINGLE_NPY, single)
    ref = {
        "task": card.task,
        "output": card.output,
        "precision": card.precision,
        "texts": texts,
        "pairs": pairs,
        "batch_size": batch_size,
        "bucketing": bucketing,
        "threads": threads,
        "split": split.name,
        "outputs_file": REFERENCE_NPY,
        "single_outputs_file": SINGLE_NPY,
        "shape": list(outputs.shape),
        "tolerance": tolerance_for(card),
        "onnxruntime": version_of("onnxruntime"),
        "host": host_info(),
    }
    if card.task == "classification":
        labels, probs = softmax_predict(outputs)
        ref["labels"] = labels.tolist()
        ref["probabilities"] = probs.round(6).tolist()
    atomic_write_json(out_dir / REFERENCE_JSON, ref)
    return ref


def compare(task: str, got: np.ndarray, want: np.ndarray, tol: dict[str, float]) -> dict:
    if got.shape != want.shape:
        return {
            "passed": False,
            "detail": f"shape {list(got.shape)} != reference {list(want.shape)}",
        }
    res: dict[str, Any] = {
        "identical": bool(np.array_equal(got, want)),
        "max_abs_diff": float(np.abs(got.astype(np.float64) - want).max()) if got.size else 0.0,
    }
    if task == "embedding":
        res["min_cosine"] = float(cosine_rows(got, want).min()) if len(got) else 1.0
        res["passed"] = res["min_cosine"] >= tol["min_cosine"]
        res["detail"] = f"min cosine {res['min_cosine']:.6f} (>= {tol['min_cosine']})"
    else:
        g_lab, g_p = softmax_predict(got)
        w_lab, w_p = softmax_predict(want)
        res["max_prob_diff"] = float(np.abs(g_p - w_p).max()) if len(got) else 0.0
        res["label_agreement"] = float((g_lab == w_lab).mean()) if len(got) else 1.0
        res["passed"] = res["max_prob_diff"] <= tol["max_prob_diff"]
        res["detail"] = (
            f"max |delta p| {res['max_prob_diff']:.2e} (<= {tol['max_prob_diff']}), "
            f"labels agree {100 * res['label_agreement']:.0f}%"
        )
    return res
