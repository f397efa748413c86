"""The teacher side of distillation: the model loaded once, its pooled outputs (embeddings
or logits) for the training items computed once and cached in the stage's work dir.
Token-level losses (hidden states, attention) keep the model to run it beside the student.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

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
    """Pooled teacher outputs for every item, batched by length (no time lost on padding)."""
    order = np.argsort(token_lengths(tokenizer, items, max_len), kind="stable")
    out: np.ndarray | None = None
    for start in tqdm(
        range(0, len(items), batch_size), desc="teacher targets", disable=not progress, unit="batch"
    ):
        idx = order[start : start + batch_size]
        batch = tokenize(tokenizer, [items[i] for i in idx], max_len, device)
        y = model_outputs(teacher, batch, info).pooled.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(items), y.shape[1]), dtype=np.float32)
        out[idx] = y
    assert out is not None
    return out


def _cached_targets(
    work_dir: Path, key: str, compute: Callable[[], np.ndarray], log: Callable[[str], None]
) -> np.ndarray:
    """``compute()``'s targets, saved in ``work_dir`` under ``key``; a rerun (a resumed
    stage) with the same key loads them instead. Under torchrun rank 0's cache decides and
    only rank 0 writes it."""
    path = work_dir / "teacher_targets.npy"
    meta = work_dir / "teacher_targets.json"
    hit = path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key
    if distributed.broadcast_object(hit):
        log("reusing cached teacher targets")
        return distributed.broadcast_array(np.load(path) if hit else None)
    t0 = time.perf_counter()
    targets = compute()
    if not distributed.active() or ranks.is_main():
        _save_targets(work_dir, key, targets)
    log(f"teacher targets for {len(targets)} texts in {time.perf_counter() - t0:.1f}s")
    return targets


def _save_targets(work_dir: Path, key: str, targets: np.ndarray) -> None:
    path = work_dir / "teacher_targets.npy"
    meta = work_dir / "teacher_targets.json"
    tmp = work_dir / "teacher_targets.tmp.npy"
    np.save(tmp, targets)
    tmp.replace(path)
    atomic_write_json(meta, {"key": key})


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
) -> Teacher:
    """Load the teacher and compute (or reuse) its targets for ``items``.

    The model is kept when ``keep_model`` or when the profile's losses need it online.
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
    key = digest_json({"items": items, "max_len": max_len, "kind": info.kind})
    targets = _cached_targets(
        work_dir,
        key,
        lambda: distributed.sharded(  # each rank its shard, gathered (one process: all)
            lambda part: teacher_targets(
                model, tokenizer, info, part, max_len, max(cfg.batch_size, 64), device, progress
            ),
            items,
        ),
        log,
    )
    params = sum(p.numel() for p in model.parameters())
    if not (keep_model or cfg.losses.needs_teacher_online()):
        model = None
    return Teacher(
        info=info, tokenizer=tokenizer, targets=targets, model=model, max_len=max_len, params=params
    )
