"""The teacher side of distillation: the model loaded once, its pooled outputs (embeddings
or logits) for the training items computed once, by the fastest exact engine (ONNX Runtime
fp32 on a CPU, ``teacher_onnx``), and cached in the run's cache dir, where every training
stage of the run (distill, sparse fine-tuning, QAT) finds them. Token-level losses (hidden
states, attention) keep the model to run it beside the student.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdeploy.config import DistillConfig
from kdeploy.core import ranks
from kdeploy.core.errors import ModelError
from kdeploy.core.fsutil import atomic_write_json, digest_json
from kdeploy.data import TrainItem
from kdeploy.model_info import ModelInfo
from kdeploy.train import distributed
from kdeploy.train.batching import token_lengths, tokenize
from kdeploy.train.evaluate import pool
from kdeploy.train.kd import Outputs, applicable_losses
from kdeploy.train.loading import load_hf_model, load_tokenizer, pick_device
from kdeploy.train.teacher_onnx import batched_targets


@dataclass
class Teacher:
    """The teacher side of distillation: its description, tokenizer, cached pooled outputs
    for the training items, and the torch model when token-level losses need it online."""

    info: ModelInfo
    tokenizer: object
    targets: np.ndarray
    model: torch.nn.Module | None
    max_len: int
    params: int


def model_outputs(
    model, batch: dict, info: ModelInfo, *, hidden: bool = False, attentions: bool = False
) -> Outputs:
    """One forward pass of teacher or student, pooled as the teacher's task reads it
    (a classifier's logits, an embedding model's pooled vector)."""
    out = model(**batch, output_hidden_states=hidden, output_attentions=attentions)
    if info.kind == "classification":
        pooled = out.logits
    else:
        pooled = pool(out.last_hidden_state, batch["attention_mask"], info.pooling)
    return Outputs(
        pooled=pooled,
        hidden=out.hidden_states if hidden else None,
        attentions=out.attentions if attentions else None,
    )


@torch.inference_mode()
def teacher_targets(
    teacher,
    tokenizer,
    info: ModelInfo,
    items: Sequence[TrainItem],
    max_len: int,
    batch_size: int,
    device,
    progress: bool,
) -> np.ndarray:
    """Pooled teacher outputs for every item in torch, batched by length (no time lost on
    padding)."""
    order = np.argsort(token_lengths(tokenizer, items, max_len), kind="stable")
    return batched_targets(
        _torch_compute(teacher, tokenizer, info, max_len, device),
        items,
        order,
        batch_size,
        progress,
        "teacher targets (torch)",
    )


def _torch_compute(teacher, tokenizer, info: ModelInfo, max_len: int, device):
    @torch.inference_mode()
    def compute(batch_items: Sequence[TrainItem]) -> np.ndarray:
        batch = tokenize(tokenizer, batch_items, max_len, device)
        return model_outputs(teacher, batch, info).pooled.float().cpu().numpy()

    return compute


@dataclass(frozen=True)
class TargetsRecord:
    """Which engine computed the targets, and how close it came to torch on one batch."""

    engine: str  # "onnxruntime" or "torch"
    seconds: float
    check_max_abs_diff: float | None = None
    reason: str = ""

    def describe(self) -> str:
        check = (
            f", one batch vs torch: max |diff| {self.check_max_abs_diff:.1e}"
            if self.check_max_abs_diff is not None
            else ""
        )
        return f"teacher targets by {self.engine} in {self.seconds:.1f}s{check}"


def fastest_exact_targets(
    teacher,
    tokenizer,
    info: ModelInfo,
    items: Sequence[TrainItem],
    max_len: int,
    batch_size: int,
    device,
    *,
    cache_dir: Path,
    allow_pickle: bool,
    progress: bool,
    log: Callable[[str], None],
) -> tuple[np.ndarray, TargetsRecord]:
    """The targets by ONNX Runtime fp32 on a CPU (about 2.4x torch there), by torch on a
    GPU; ONNX Runtime is used only after one batch of the longest texts matched torch's
    (``teacher_onnx.MAX_ABS_DIFF``), else torch computes them and the log says why."""
    from kdeploy.train.teacher_onnx import MAX_ABS_DIFF, OnnxTargets, teacher_graph

    t0 = time.perf_counter()
    order = np.argsort(token_lengths(tokenizer, items, max_len), kind="stable")
    torch_fn = _torch_compute(teacher, tokenizer, info, max_len, device)
    if device.type != "cpu":
        out = batched_targets(torch_fn, items, order, batch_size, progress, "teacher targets")
        return out, TargetsRecord("torch", time.perf_counter() - t0, reason="on a GPU")
    graph = teacher_graph(info, cache_dir, allow_pickle=allow_pickle, log=log)
    ort_fn = OnnxTargets(graph, info, tokenizer, max_len)
    probe = [items[i] for i in order[-min(len(items), 16) :]]
    diff = float(np.abs(ort_fn(probe) - torch_fn(probe)).max())
    if diff > MAX_ABS_DIFF:
        log(
            f"ONNX Runtime's teacher targets differ from torch's by {diff:.1e} (> "
            f"{MAX_ABS_DIFF:.0e}) on the longest texts: computing them in torch"
        )
        out = batched_targets(torch_fn, items, order, batch_size, progress, "teacher targets")
        return out, TargetsRecord("torch", time.perf_counter() - t0, diff, "onnxruntime differed")
    out = batched_targets(
        ort_fn, items, order, batch_size, progress, "teacher targets (onnxruntime)"
    )
    return out, TargetsRecord("onnxruntime", time.perf_counter() - t0, diff)


def _cached_targets(
    cache_dir: Path, key: str, compute: Callable[[], np.ndarray], log: Callable[[str], None]
) -> np.ndarray:
    """``compute()``'s targets, saved in ``cache_dir`` under ``key``; a rerun (a resumed
    stage, or a later training stage of the same run on the same texts) loads them.
    Under torchrun rank 0's cache decides and only rank 0 writes it."""
    path = cache_dir / f"teacher_targets-{key[:16]}.npy"
    meta = cache_dir / f"teacher_targets-{key[:16]}.json"
    hit = path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key
    if distributed.broadcast_object(hit):
        log(f"reusing cached teacher targets ({path.name})")
        return distributed.broadcast_array(np.load(path) if hit else None)
    cache_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    targets = compute()
    if not ranks.is_main():
        return targets
    tmp = cache_dir / f"teacher_targets-{key[:16]}.tmp.npy"
    try:
        np.save(tmp, targets)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(meta, {"key": key})
    log(f"teacher targets for {len(targets)} texts in {time.perf_counter() - t0:.1f}s")
    return targets


def prepare_teacher(
    info: ModelInfo,
    cfg: DistillConfig,
    items: list[TrainItem],
    work_dir: Path,
    *,
    keep_model: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
) -> Teacher:
    """Load the teacher and compute (or reuse) its targets for ``items``.

    The model is kept when ``keep_model`` or when the profile's losses need it online.
    ``cache_dir``: where the targets (and the teacher's ONNX graph that computes them) are
    kept across the run's training stages (default: ``work_dir``, this stage only).
    """
    device = pick_device()
    if not applicable_losses(cfg, info.kind):
        raise ModelError(
            f"none of the enabled distillation losses applies to a {info.kind} teacher",
            fix="embedding teachers: embedding_mse/embedding_cosine/similarity_mse/contrastive; "
            "classifiers: logit_kd/hard_label; both: hidden_mse/attention_kl",
        )
    want_attn = cfg.losses.attention_kl > 0
    tokenizer = load_tokenizer(info.path)
    model = load_hf_model(
        info, allow_pickle=allow_pickle, attn_implementation="eager" if want_attn else None
    ).to(device)
    max_len = min(cfg.max_seq_length, info.max_seq_length)
    from kdeploy.train.teacher_onnx import model_fingerprint

    cache = cache_dir or work_dir
    records: list[TargetsRecord] = []
    key = digest_json(
        {
            "items": items,
            "max_len": max_len,
            "kind": info.kind,
            "pooling": info.pooling,
            "teacher": model_fingerprint(info),
        }
    )

    def on_shard(part: list[TrainItem]) -> np.ndarray:
        targets, record = fastest_exact_targets(
            model,
            tokenizer,
            info,
            part,
            max_len,
            max(cfg.batch_size, 64),
            device,
            cache_dir=cache,
            allow_pickle=allow_pickle,
            progress=progress,
            log=log,
        )
        records.append(record)
        return targets

    def compute() -> np.ndarray:
        records.clear()
        targets = distributed.sharded(on_shard, items)  # each rank its shard, gathered
        log(records[-1].describe())  # this rank's (rank 0's is the one logged)
        return targets

    targets = _cached_targets(cache, key, compute, log)
    params = sum(p.numel() for p in model.parameters())
    if not (keep_model or cfg.losses.needs_teacher_online()):
        model = None
    return Teacher(
        info=info, tokenizer=tokenizer, targets=targets, model=model, max_len=max_len, params=params
    )
