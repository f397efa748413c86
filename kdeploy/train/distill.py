"""Knowledge distillation of a layer-dropped student (torch).

Pooled teacher targets (embeddings or logits) are computed once and cached in the stage's
work dir; token-level losses (hidden states, attention) run the teacher alongside the
student. Training checkpoints after every epoch (student, optimizer, schedule, best-so-far),
so an interrupted run resumes at the last finished epoch and, because every epoch reseeds
from (seed, epoch), ends with the same weights as an uninterrupted one.
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
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from kdeploy.config import DistillConfig, FineTune
from kdeploy.core.errors import ModelError
from kdeploy.core.fsutil import atomic_write_json, digest_json, replace_dir
from kdeploy.data import Split
from kdeploy.model_info import ModelInfo
from kdeploy.train.evaluate import pool, score
from kdeploy.train.kd import Outputs, applicable_losses, total_loss
from kdeploy.train.loading import load_hf_model, load_tokenizer, pick_device
from kdeploy.train.student import (
    cut_layers,
    slice_model,
    width_plan,
    write_sentence_transformers_layout,
)

# (text, paired text or None, gold label or None)
Item = tuple[str, str | None, int | None]


@dataclass
class DistillOutcome:
    student_dir: Path
    metrics: dict


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


def tokenized_batches(
    tokenizer, texts: Sequence[str], max_len: int, batch_size: int, device
) -> list[dict]:
    """Calibration batches: ``texts`` tokenized in order, ``batch_size`` at a time."""
    items = [(t, None, None) for t in texts]
    return [
        _tokenize(tokenizer, items[i : i + batch_size], max_len, device)
        for i in range(0, len(items), batch_size)
    ]


def forward_loop(batches: list[dict]) -> Callable[[torch.nn.Module], None]:
    """Run a model over calibration batches (what modelopt's calibration and SparseGPT's
    Hessian collection call)."""

    def loop(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for b in batches:
                model(**b)

    return loop


def fine_tune_config(cfg: DistillConfig, ft: FineTune) -> DistillConfig:
    """The distillation recipe (losses, batch, sequence length, seed) with the shorter
    schedule of a fine-tuning step (2:4 masks, QAT). Early stopping does not apply."""
    return cfg.model_copy(
        update={
            "epochs": ft.epochs,
            "learning_rate": ft.learning_rate,
            "warmup_ratio": ft.warmup_ratio,
            "select_best": ft.select_best,
            "early_stopping_patience": None,
        }
    )


def _forward(
    model, batch: dict, info: ModelInfo, *, hidden: bool = False, attentions: bool = False
) -> Outputs:
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


def _token_lengths(tokenizer, items: Sequence[Item], max_len: int) -> np.ndarray:
    enc = tokenizer(
        [x[0] for x in items],
        [x[1] for x in items] if any(x[1] is not None for x in items) else None,
        truncation=True,
        max_length=max_len,
    )
    return np.asarray([len(ids) for ids in enc["input_ids"]])


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
    """Pooled teacher outputs for every item, batched by length (no time lost on padding)."""
    order = np.argsort(_token_lengths(tokenizer, items, max_len), kind="stable")
    out: np.ndarray | None = None
    for start in tqdm(
        range(0, len(items), batch_size), desc="teacher targets", disable=not progress, unit="batch"
    ):
        idx = order[start : start + batch_size]
        y = (
            _forward(teacher, _tokenize(tokenizer, [items[i] for i in idx], max_len, device), info)
            .pooled.float()
            .cpu()
            .numpy()
        )
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


def _cached_targets(
    work_dir: Path, key: str, compute: Callable[[], np.ndarray], log: Callable[[str], None]
) -> np.ndarray:
    path = work_dir / "teacher_targets.npy"
    meta = work_dir / "teacher_targets.json"
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        log("reusing cached teacher targets")
        return np.load(path)
    t0 = time.perf_counter()
    targets = compute()
    tmp = work_dir / "teacher_targets.tmp.npy"
    np.save(tmp, targets)
    tmp.replace(path)
    atomic_write_json(meta, {"key": key})
    log(f"teacher targets for {len(targets)} texts in {time.perf_counter() - t0:.1f}s")
    return targets


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


def prepare_teacher(
    info: ModelInfo,
    cfg: DistillConfig,
    items: list[Item],
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
            fix="embedding teachers: embedding_mse/embedding_cosine; classifiers: logit_kd/"
            "hard_label; both: hidden_mse/attention_kl",
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
        lambda: teacher_targets(
            model, tokenizer, info, items, max_len, max(cfg.batch_size, 64), device, progress
        ),
        log,
    )
    params = sum(p.numel() for p in model.parameters())
    if not (keep_model or cfg.losses.needs_teacher_online()):
        model = None
    return Teacher(
        info=info, tokenizer=tokenizer, targets=targets, model=model, max_len=max_len, params=params
    )


def train_kd(
    student: torch.nn.Module,
    teacher: Teacher,
    cfg: DistillConfig,
    items: list[Item],
    work_dir: Path,
    *,
    layer_map: list[int],
    dev: Split | None = None,
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    label: str = "distill",
    student_dims: torch.Tensor | None = None,
) -> dict:
    """Train ``student`` to imitate ``teacher`` with the profile's losses.

    Checkpoints every epoch into ``work_dir/checkpoint`` and resumes from it; scores dev
    after each epoch when ``cfg.select_best`` and leaves the best epoch's weights loaded.
    ``after_step`` runs after every optimizer step (e.g. to re-apply sparsity masks).
    A student narrower than the teacher trains learned projections to the teacher's width
    (``make_projections``; ``student_dims`` initialises them), which are not part of it.
    Returns the training record (history, best epoch, steps, seconds).
    """
    device = pick_device()
    info = teacher.info
    tokenizer = teacher.tokenizer
    max_len = teacher.max_len
    online = cfg.losses.needs_teacher_online()
    if online and teacher.model is None:
        raise ValueError("token-level losses need the teacher model online")
    t_model = teacher.model.eval() if online and teacher.model is not None else None
    want_hidden = cfg.losses.hidden_mse > 0
    want_attn = cfg.losses.attention_kl > 0
    bad = [t for t in layer_map if not 0 <= t < info.num_layers]
    if bad:
        raise ModelError(
            f"distill.layer_map names teacher layers {bad}; the teacher has "
            f"layers 0..{info.num_layers - 1}"
        )
    student.to(device).train()
    if want_attn:
        # BERT returns attention probabilities *after* dropout; matching dropped-out rows
        # against the teacher's would put log(0) in the KL. Attention KD trains without it.
        for name, module in student.named_modules():
            if isinstance(module, torch.nn.Dropout) and name.endswith("attention.self.dropout"):
                module.p = 0.0
    projections = make_projections(
        student.config.hidden_size,
        info.hidden_size,
        hidden_layers=len(layer_map) if want_hidden else 0,
        embedding=info.kind == "embedding" and cfg.losses.uses_embedding(),
        student_dims=student_dims,
    )
    if projections is not None:
        projections.to(device)
    lengths = _token_lengths(tokenizer, items, max_len)
    labels_all = torch.tensor([-1 if x[2] is None else int(x[2]) for x in items])
    steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total_steps = max(1, round(steps_per_epoch * cfg.epochs))
    epochs = math.ceil(total_steps / steps_per_epoch)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if projections is not None:
        named += [(f"proj.{n}", p) for n, p in projections.named_parameters()]
    optim = torch.optim.AdamW(
        [
            {
                "params": [p for n, p in named if not n.endswith(no_decay)],
                "weight_decay": cfg.weight_decay,
            },
            {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
        ],
        lr=cfg.learning_rate,
    )
    sched = get_linear_schedule_with_warmup(optim, int(cfg.warmup_ratio * total_steps), total_steps)
    ckpt = work_dir / "checkpoint"
    state = {
        "epoch": 0,
        "step": 0,
        "history": [],
        "best_epoch": None,
        "best_score": None,
        "bad_epochs": 0,
        "stopped_early": False,
    }
    if (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        student.load_state_dict(load_file(str(ckpt / "student.safetensors")), strict=True)
        extra = torch.load(ckpt / "optim.pt", map_location=device, weights_only=True)
        optim.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        if projections is not None:
            projections.load_state_dict(extra["projections"])
        log(f"resuming {label} after epoch {state['epoch']} (step {state['step']}/{total_steps})")
    log(
        f"{label}: losses {', '.join(applicable_losses(cfg, info.kind))}"
        + (f"; layer map student->teacher {layer_map}" if online else "")
    )
    target_t = torch.from_numpy(teacher.targets)
    t_train = time.perf_counter()
    step = state["step"]
    for epoch in range(state["epoch"], epochs):
        if state["stopped_early"]:
            break
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 1000 + epoch)
        running: dict[str, float] = {}
        count = 0
        bar = tqdm(
            _batches(rng, lengths, cfg.batch_size),
            desc=f"{label} epoch {epoch + 1}/{epochs}",
            disable=not progress,
            unit="batch",
        )
        for idx in bar:
            if step >= total_steps:
                break
            batch = _tokenize(tokenizer, [items[i] for i in idx], max_len, device)
            t_out = None
            if t_model is not None:
                with torch.no_grad():
                    t_out = _forward(t_model, batch, info, hidden=want_hidden, attentions=want_attn)
            s_out = _forward(student, batch, info, hidden=want_hidden, attentions=want_attn)
            loss, parts = total_loss(
                s_out,
                info.kind,
                cfg,
                target=target_t[idx].to(device),
                teacher=t_out,
                mask=batch["attention_mask"],
                labels=labels_all[idx].to(device),
                layer_map=layer_map,
                projections=None if projections is None else projections["hidden"],
                embedding_projection=(None if projections is None else projections["embedding"]),
            )
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.max_grad_norm)
            optim.step()
            sched.step()
            if after_step is not None:
                after_step()
            step += 1
            count += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                running[k] = running.get(k, 0.0) + v
            bar.set_postfix(loss=f"{running['loss'] / count:.5f}")
        entry = {
            "epoch": epoch + 1,
            "step": step,
            **{k: v / max(count, 1) for k, v in running.items()},
        }
        if cfg.select_best and dev is not None:
            entry["dev_score"] = score(student, tokenizer, info, dev, max_len, device)
            if state["best_score"] is None or entry["dev_score"] > state["best_score"]:
                state["best_score"], state["best_epoch"] = entry["dev_score"], epoch + 1
                state["bad_epochs"] = 0
                _save_weights(work_dir / "best", student)
            else:
                state["bad_epochs"] += 1
            pat = cfg.early_stopping_patience
            state["stopped_early"] = bool(pat and state["bad_epochs"] >= pat)
        state["history"].append(entry)
        state["epoch"], state["step"] = epoch + 1, step
        _save_checkpoint(ckpt, student, optim, sched, projections, state)
        # logged once checkpointed: a Ctrl-C from here on resumes after this epoch
        log(
            f"epoch {epoch + 1}/{epochs}: loss {entry.get('loss', 0):.6f}"
            + (f", dev {entry['dev_score']:.2f}" if "dev_score" in entry else "")
            + (" (stopping early)" if state["stopped_early"] else "")
        )
    if state["best_epoch"] is not None:
        student.load_state_dict(load_file(str(work_dir / "best" / "student.safetensors")))
        log(f"keeping epoch {state['best_epoch']} (best dev score {state['best_score']:.2f})")
    student.eval()
    return {
        "losses": applicable_losses(cfg, info.kind),
        "layer_map": layer_map if online else None,
        "texts": len(items),
        "labelled_texts": int((labels_all >= 0).sum()),
        "epochs": cfg.epochs,
        "epochs_run": state["epoch"],
        "steps": step,
        "history": state["history"],
        "best_epoch": state["best_epoch"],
        "best_dev_score": state["best_score"],
        "stopped_early": state["stopped_early"],
        "final_loss": state["history"][-1].get("loss") if state["history"] else None,
        "train_seconds": round(time.perf_counter() - t_train, 2),
        "device": str(device),
    }


CALIBRATION_TEXTS = 1024


def calibration_batches(
    tokenizer,
    items: Sequence[Item],
    max_len: int,
    device,
    seed: int,
    n: int = CALIBRATION_TEXTS,
    batch_size: int = 64,
) -> list[dict]:
    """Model inputs for ``n`` training items drawn with ``seed``, batched by length: the
    text on which a narrower student's units are chosen (``student.measure_importance``)."""
    rng = np.random.default_rng([seed, 1])
    pick = rng.choice(len(items), size=min(n, len(items)), replace=False)
    chosen = [items[i] for i in pick]
    order = np.argsort(_token_lengths(tokenizer, chosen, max_len), kind="stable")
    return [
        _tokenize(tokenizer, [chosen[i] for i in order[s : s + batch_size]], max_len, device)
        for s in range(0, len(order), batch_size)
    ]


def make_projections(
    d_student: int,
    d_teacher: int,
    *,
    hidden_layers: int,
    embedding: bool,
    student_dims: torch.Tensor | None = None,
) -> torch.nn.ModuleDict | None:
    """Learned maps from the student's width to the teacher's, when they differ: one per
    hidden-state KD layer ("hidden") and one for the pooled embedding ("embedding"; the
    embedding losses compare ``proj(student)`` with the teacher's vector). They train with
    the student and are dropped afterwards: the exported student keeps its own width.

    ``student_dims[i]`` is the teacher dim that student dim i was sliced from; the maps then
    start as that embedding (identity on the kept dims, zero elsewhere), else at random.
    """
    if d_student == d_teacher or not (hidden_layers or embedding):
        return None

    def linear() -> torch.nn.Linear:
        lin = torch.nn.Linear(d_student, d_teacher, bias=False)
        if student_dims is not None:
            with torch.no_grad():
                lin.weight.zero_()
                lin.weight[student_dims, torch.arange(d_student)] = 1.0
        return lin

    return torch.nn.ModuleDict(
        {
            "hidden": torch.nn.ModuleList([linear() for _ in range(hidden_layers)])
            if hidden_layers
            else None,
            "embedding": linear() if embedding else None,
        }
    )


def save_student(student: torch.nn.Module, teacher: Teacher, out_dir: Path) -> Path:
    """A loadable HF model dir (safetensors + tokenizer [+ sentence-transformers modules])."""
    return save_model_dir(student, teacher.info, teacher.tokenizer, out_dir)


def save_model_dir(model: torch.nn.Module, layout: ModelInfo, tokenizer, out_dir: Path) -> Path:
    """``model`` + ``tokenizer`` saved as a HF model dir, with the sentence-transformers
    modules (pooling, normalisation) of ``layout`` for embedding models."""
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if layout.kind == "embedding":
        write_sentence_transformers_layout(
            layout, tmp, layout.max_seq_length, model.config.hidden_size
        )
    replace_dir(tmp, out_dir)
    return out_dir


def distill(
    info: ModelInfo,
    cfg: DistillConfig,
    keep: list[int],
    items: list[Item],
    work_dir: Path,
    *,
    dev: Split | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> DistillOutcome:
    """Student = teacher layers ``keep`` (weights inherited), sliced to ``hidden_size`` /
    ``intermediate_size`` when given, trained with KD."""
    torch.manual_seed(cfg.seed)
    teacher = prepare_teacher(
        info,
        cfg,
        items,
        work_dir,
        keep_model=True,
        allow_pickle=allow_pickle,
        progress=progress,
        log=log,
    )
    assert teacher.model is not None
    student = cut_layers(teacher.model, keep)
    plan = None
    if hidden_size is not None or intermediate_size is not None:
        batches = calibration_batches(
            teacher.tokenizer, items, teacher.max_len, pick_device(), cfg.seed
        )
        plan = width_plan(student, hidden_size, intermediate_size, batches)
        student = slice_model(student, plan)
        log(
            f"student sliced to hidden {plan.hidden_size} ({len(plan.heads[0])} heads), "
            f"feed-forward {plan.intermediate_size}"
        )
    if not cfg.losses.needs_teacher_online():
        teacher.model = None
    layer_map = list(cfg.layer_map) if cfg.layer_map is not None else list(keep)
    record = train_kd(
        student,
        teacher,
        cfg,
        items,
        work_dir,
        layer_map=layer_map,
        dev=dev,
        progress=progress,
        log=log,
        student_dims=None if plan is None else plan.hidden,
    )
    out_dir = save_student(student, teacher, work_dir / "student")
    return DistillOutcome(
        student_dir=out_dir,
        metrics={
            "kept_layers": keep,
            "hidden_size": student.config.hidden_size,
            "intermediate_size": student.config.intermediate_size,
            **record,
            "student_params": sum(p.numel() for p in student.parameters()),
            "teacher_params": teacher.params,
        },
    )


def _save_weights(directory: Path, model) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "student.safetensors"))
    replace_dir(tmp, directory)


def _save_checkpoint(ckpt: Path, student, optim, sched, projections, state: dict) -> None:
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    save_file(weights, str(tmp / "student.safetensors"))
    extra = {"optimizer": optim.state_dict(), "scheduler": sched.state_dict()}
    if projections is not None:
        extra["projections"] = projections.state_dict()
    torch.save(extra, tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    replace_dir(tmp, ckpt)
