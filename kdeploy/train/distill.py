"""Knowledge distillation of a layer-dropped student (torch).

Teacher targets are computed once and cached in the stage's work dir; training checkpoints
after every epoch, so an interrupted run resumes at the last finished epoch and, because
every epoch reseeds from (seed, epoch), ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from kdeploy.fsutil import atomic_write_json, digest_json, replace_dir
from kdeploy.model_info import ModelInfo
from kdeploy.profiles import DistillConfig
from kdeploy.train.loading import load_hf_model, load_tokenizer, pick_device
from kdeploy.train.student import make_student, write_sentence_transformers_layout

Item = tuple[str, str | None]


@dataclass
class DistillOutcome:
    student_dir: Path
    metrics: dict


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def _forward(model, batch: dict, info: ModelInfo) -> torch.Tensor:
    """The model's task output: pooled embedding or logits."""
    out = model(**batch)
    if info.kind == "classification":
        return out.logits
    hidden = out.last_hidden_state
    if info.pooling == "cls":
        return hidden[:, 0]
    return mean_pool(hidden, batch["attention_mask"])


def _tokenize(tokenizer, items: Sequence[Item], max_len: int, device) -> dict:
    a = [x[0] for x in items]
    b = [x[1] for x in items]
    enc = tokenizer(
        a,
        b if any(x is not None for x in b) else None,
        padding=True,
        truncation=True,
        max_length=max_len,
        return_tensors="pt",
    )
    return {k: v.to(device) for k, v in enc.items()}


def _length_order(tokenizer, items: Sequence[Item], max_len: int) -> np.ndarray:
    lens = [
        len(t)
        for t in tokenizer([x[0] for x in items], truncation=True, max_length=max_len)["input_ids"]
    ]
    return np.argsort(np.asarray(lens), kind="stable")


@torch.inference_mode()
def teacher_targets(
    teacher,
    tokenizer,
    info: ModelInfo,
    items: Sequence[Item],
    max_len: int,
    batch_size: int,
    device,
    progress: bool,
) -> np.ndarray:
    """Teacher outputs for every item, batched by length to waste no time on padding."""
    order = _length_order(tokenizer, items, max_len)
    out: np.ndarray | None = None
    for start in tqdm(
        range(0, len(items), batch_size), desc="teacher targets", disable=not progress, unit="batch"
    ):
        idx = order[start : start + batch_size]
        batch = _tokenize(tokenizer, [items[i] for i in idx], max_len, device)
        y = _forward(teacher, batch, info).float().cpu().numpy()
        if out is None:
            out = np.zeros((len(items), y.shape[1]), dtype=np.float32)
        out[idx] = y
    assert out is not None
    return out


def _batches(rng: np.random.Generator, lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Length-grouped shuffling: sort chunks of 50 batches by length, shuffle the batches."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(perm), chunk):
        part = perm[s : s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def kd_loss(
    student_out: torch.Tensor, target: torch.Tensor, cfg: DistillConfig, kind: str
) -> torch.Tensor:
    w = cfg.losses
    loss = student_out.new_zeros(())
    if kind == "classification":
        # Logit distillation (soft cross-entropy at temperature T, Hinton et al. 2015).
        t = 2.0
        loss = (
            loss
            + F.kl_div(
                F.log_softmax(student_out / t, dim=-1),
                F.softmax(target / t, dim=-1),
                reduction="batchmean",
            )
            * t
            * t
        )
        return loss
    if w.embedding_mse > 0:
        loss = loss + w.embedding_mse * F.mse_loss(student_out, target)
    if w.embedding_cosine > 0:
        cos = F.cosine_similarity(student_out, target, dim=-1)
        loss = loss + w.embedding_cosine * (1 - cos).mean()
    return loss


def distill(
    info: ModelInfo,
    cfg: DistillConfig,
    keep: list[int],
    items: list[Item],
    work_dir: Path,
    *,
    allow_pickle: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DistillOutcome:
    device = pick_device()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(info.path)
    teacher = load_hf_model(info, allow_pickle=allow_pickle).to(device)
    max_len = min(cfg.max_seq_length, info.max_seq_length)

    targets_path = work_dir / "teacher_targets.npy"
    targets_key = digest_json({"items": items, "max_len": max_len, "kind": info.kind})
    meta_path = work_dir / "teacher_targets.json"
    if (
        targets_path.is_file()
        and meta_path.is_file()
        and json.loads(meta_path.read_text()).get("key") == targets_key
    ):
        targets = np.load(targets_path)
        log(f"reusing cached teacher targets for {len(items)} texts")
    else:
        t0 = time.perf_counter()
        targets = teacher_targets(
            teacher, tokenizer, info, items, max_len, max(cfg.batch_size, 64), device, progress
        )
        np.save(work_dir / "teacher_targets.tmp.npy", targets)
        (work_dir / "teacher_targets.tmp.npy").replace(targets_path)
        atomic_write_json(meta_path, {"key": targets_key})
        log(f"teacher targets for {len(items)} texts in {time.perf_counter() - t0:.1f}s")

    student = make_student(teacher, keep).to(device)
    del teacher
    student.train()
    lengths = np.asarray(
        [
            len(t)
            for t in tokenizer([x[0] for x in items], truncation=True, max_length=max_len)[
                "input_ids"
            ]
        ]
    )
    steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total_steps = max(1, round(steps_per_epoch * cfg.epochs))
    epochs = math.ceil(total_steps / steps_per_epoch)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    params = [
        {
            "params": [p for n, p in student.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": [p for n, p in student.named_parameters() if n.endswith(no_decay)],
            "weight_decay": 0.0,
        },
    ]
    optim = torch.optim.AdamW(params, lr=cfg.learning_rate)
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup_ratio * total_steps), total_steps)
    ckpt = work_dir / "checkpoint"
    start_epoch, step = 0, 0
    history: list[dict] = []
    if (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        student.load_state_dict(load_file(str(ckpt / "student.safetensors")), strict=True)
        opt_state = torch.load(ckpt / "optim.pt", map_location=device, weights_only=True)
        optim.load_state_dict(opt_state["optimizer"])
        sched.load_state_dict(opt_state["scheduler"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
        log(f"resuming distillation after epoch {start_epoch} (step {step}/{total_steps})")

    t_train = time.perf_counter()
    target_t = torch.from_numpy(targets)
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 1000 + epoch)
        batches = _batches(rng, lengths, cfg.batch_size)
        running, count = 0.0, 0
        bar = tqdm(
            batches, desc=f"distill epoch {epoch + 1}/{epochs}", disable=not progress, unit="batch"
        )
        for idx in bar:
            if step >= total_steps:
                break
            batch = _tokenize(tokenizer, [items[i] for i in idx], max_len, device)
            out = _forward(student, batch, info)
            loss = kd_loss(out, target_t[idx].to(device), cfg, info.kind)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
            optim.step()
            sched.step()
            step += 1
            running += float(loss.detach())
            count += 1
            bar.set_postfix(loss=f"{running / count:.5f}")
        history.append({"epoch": epoch + 1, "loss": running / max(count, 1), "step": step})
        _save_checkpoint(ckpt, student, optim, sched, epoch + 1, step, history)
        # logged once checkpointed: a Ctrl-C from here on resumes after this epoch
        log(f"epoch {epoch + 1}/{epochs}: mean loss {running / max(count, 1):.6f}")

    train_seconds = time.perf_counter() - t_train
    student.eval()
    out_dir = work_dir / "student"
    tmp = work_dir / "student.tmp"
    tmp.mkdir(exist_ok=True)
    student.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if info.kind == "embedding":
        write_sentence_transformers_layout(info, tmp, info.max_seq_length)
    replace_dir(tmp, out_dir)
    n_params = sum(p.numel() for p in student.parameters())
    return DistillOutcome(
        student_dir=out_dir,
        metrics={
            "kept_layers": keep,
            "texts": len(items),
            "epochs": cfg.epochs,
            "steps": step,
            "history": history,
            "final_loss": history[-1]["loss"] if history else None,
            "train_seconds": round(train_seconds, 2),
            "student_params": n_params,
            "device": str(device),
        },
    )


def _save_checkpoint(
    ckpt: Path, student, optim, sched, epoch: int, step: int, history: list[dict]
) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    save_file(state, str(tmp / "student.safetensors"))
    torch.save({"optimizer": optim.state_dict(), "scheduler": sched.state_dict()}, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps({"epoch": epoch, "step": step, "history": history}))
    replace_dir(tmp, ckpt)
