"""Knowledge distillation training (torch): a student learns to imitate a ``Teacher``
with the profile's losses.

Training checkpoints after every epoch (student, optimizer, schedule, best-so-far),
so an interrupted run resumes at the last finished epoch and, because every epoch reseeds
from (seed, epoch), ends with the same weights as an uninterrupted one.

Under ``torchrun`` the student trains in DDP (``distributed``): every rank takes its slice of
the same global batches; rank 0 alone scores dev, writes checkpoints and shows progress, and
a resumed checkpoint reaches the other ranks from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kdeploy.config import DistillConfig
from kdeploy.core import ranks
from kdeploy.core.errors import ModelError
from kdeploy.data import Split, TrainItem
from kdeploy.train import checkpoint, distributed
from kdeploy.train.batching import shuffled_batches, token_lengths, tokenize
from kdeploy.train.checkpoint import TrainState
from kdeploy.train.evaluate import score
from kdeploy.train.kd import Outputs, applicable_losses, total_loss
from kdeploy.train.loading import pick_device
from kdeploy.train.optimization import Optimization, make_optimization, make_projections
from kdeploy.train.teacher import Teacher, model_outputs


@dataclass
class TrainRecord:
    """What a training run did; the stages' metrics hold it as JSON under these names."""

    losses: list[str]
    layer_map: list[int] | None  # teacher layer per student layer (token-level losses only)
    texts: int
    labelled_texts: int
    epochs: float  # as configured; the schedule runs round(epochs * steps per epoch) steps
    epochs_run: int
    steps: int
    history: list[dict]  # per epoch: epoch, step, mean of each loss [, dev_score]
    best_epoch: int | None
    best_dev_score: float | None
    stopped_early: bool
    final_loss: float | None
    train_seconds: float
    device: str


class _StudentForward(torch.nn.Module):
    """The student's forward pass as the losses read it (pooled output, hidden states,
    attentions), and nothing else: what DDP wraps, so that a part of the student no loss
    reaches (BERT's pooler) is an unused parameter to DDP, not a gradient it waits for."""

    def __init__(self, student: torch.nn.Module, info) -> None:
        super().__init__()
        self.student = student
        self.info = info

    def forward(self, batch: dict, hidden: bool, attentions: bool):
        out = model_outputs(self.student, batch, self.info, hidden=hidden, attentions=attentions)
        return out.pooled, out.hidden, out.attentions


@dataclass
class _Training:
    """What every epoch of one ``train_kd`` call works with."""

    student: torch.nn.Module
    model: torch.nn.Module  # the student's forward (_StudentForward), in DDP when distributed
    teacher: Teacher
    online: torch.nn.Module | None  # the teacher model, run beside the student
    cfg: DistillConfig
    items: list[TrainItem]
    layer_map: list[int]
    projections: torch.nn.ModuleDict | None
    lengths: np.ndarray  # tokens per item
    labels: torch.Tensor  # gold label per item, -1 for none
    targets: torch.Tensor  # the teacher's pooled output per item
    total_steps: int
    epochs: int
    opt: Optimization
    device: torch.device
    after_step: Callable[[], None] | None

    def batch_loss(self, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted KD loss of the items ``idx`` and the value of each part."""
        t, cfg = self.teacher, self.cfg
        idx, weight = distributed.rank_part(idx)  # this rank's slice of the global batch
        batch = tokenize(t.tokenizer, [self.items[i] for i in idx], t.max_len, self.device)
        want = {"hidden": cfg.losses.hidden_mse > 0, "attentions": cfg.losses.attention_kl > 0}
        t_out = None
        if self.online is not None:
            with torch.no_grad():
                t_out = model_outputs(self.online, batch, t.info, **want)
        s_out = Outputs(*self.model(batch, **want))
        proj = self.projections
        loss, parts = total_loss(
            s_out,
            t.info.kind,
            cfg,
            target=self.targets[idx].to(self.device),
            teacher=t_out,
            mask=batch["attention_mask"],
            labels=self.labels[idx].to(self.device),
            layer_map=self.layer_map,
            projections=None if proj is None else proj["hidden"],
            embedding_projection=None if proj is None else proj["embedding"],
        )
        if weight == 1.0:
            return loss, parts
        return loss * weight, {k: v * weight for k, v in parts.items()}

    def run_epoch(self, epoch: int, step: int, *, progress: bool, label: str) -> dict:
        """One pass over the items in batches shuffled with (seed, epoch), ending early at
        the schedule's last step; returns the history entry (epoch, step, mean losses)."""
        rng = np.random.default_rng([self.cfg.seed, epoch])  # the same batches on every rank
        # dropout: rank 0 draws as one process does, the other ranks their own masks
        torch.manual_seed(self.cfg.seed * 1000 + epoch + 1_000_003 * ranks.current().rank)
        running: dict[str, float] = {}
        count = 0
        bar = tqdm(
            shuffled_batches(rng, self.lengths, self.cfg.batch_size),
            desc=f"{label} epoch {epoch + 1}/{self.epochs}",
            disable=not (progress and ranks.is_main()),
            unit="batch",
        )
        for idx in bar:
            if step >= self.total_steps:
                break
            loss, parts = self.batch_loss(idx)
            self.opt.step(loss, self.cfg.max_grad_norm)
            if self.after_step is not None:
                self.after_step()
            step += 1
            count += 1
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                running[k] = running.get(k, 0.0) + v
            bar.set_postfix(loss=f"{running['loss'] / count:.5f}")
        return {"epoch": epoch + 1, "step": step, **distributed.mean_over_ranks(running, count)}


def _online_teacher(
    teacher: Teacher, cfg: DistillConfig, layer_map: list[int]
) -> torch.nn.Module | None:
    """The teacher model (in eval mode) when token-level losses run it beside the student."""
    online = cfg.losses.needs_teacher_online()
    if online and teacher.model is None:
        raise ValueError("token-level losses need the teacher model online")
    model = teacher.model.eval() if online and teacher.model is not None else None
    info = teacher.info
    bad = [t for t in layer_map if not 0 <= t < info.num_layers]
    if bad:
        raise ModelError(
            f"distill.layer_map names teacher layers {bad}; the teacher has "
            f"layers 0..{info.num_layers - 1}"
        )
    return model


def _setup(
    student: torch.nn.Module,
    teacher: Teacher,
    cfg: DistillConfig,
    items: list[TrainItem],
    layer_map: list[int],
    after_step: Callable[[], None] | None,
    student_dims: torch.Tensor | None,
) -> _Training:
    """The student on the device in training mode, its projections, the schedule's length
    and the optimizer (created in this order: the projections draw from torch's RNG)."""
    device = pick_device()
    online = _online_teacher(teacher, cfg, layer_map)
    student.to(device).train()
    if cfg.losses.attention_kl > 0:
        # BERT returns attention probabilities *after* dropout; matching dropped-out rows
        # against the teacher's would put log(0) in the KL. Attention KD trains without it.
        for name, module in student.named_modules():
            if isinstance(module, torch.nn.Dropout) and name.endswith("attention.self.dropout"):
                module.p = 0.0
    projections = make_projections(
        student.config.hidden_size,
        teacher.info.hidden_size,
        hidden_layers=len(layer_map) if cfg.losses.hidden_mse > 0 else 0,
        embedding=teacher.info.kind == "embedding" and cfg.losses.uses_embedding(),
        student_dims=student_dims,
    )
    if projections is not None:
        projections.to(device)
    steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
    total_steps = max(1, round(steps_per_epoch * cfg.epochs))
    opt = make_optimization(student, projections, cfg, total_steps)
    opt.sync = distributed.grad_averager(projections)
    return _Training(
        student=student,
        model=_StudentForward(student, teacher.info),  # in DDP once resumed (``train_kd``)
        teacher=teacher,
        online=online,
        cfg=cfg,
        items=items,
        layer_map=layer_map,
        projections=projections,
        lengths=token_lengths(teacher.tokenizer, items, teacher.max_len),
        labels=torch.tensor([-1 if x[2] is None else int(x[2]) for x in items]),
        targets=torch.from_numpy(teacher.targets),
        total_steps=total_steps,
        epochs=math.ceil(total_steps / steps_per_epoch),
        opt=opt,
        device=device,
        after_step=after_step,
    )


def _judge_epoch(run: _Training, state: TrainState, entry: dict, dev: Split, best: Path) -> None:
    """Score dev into ``entry``; a new best score saves the weights to ``best``, and
    ``early_stopping_patience`` epochs in a row without one stop the training."""
    t = run.teacher
    entry["dev_score"] = score(run.student, t.tokenizer, t.info, dev, t.max_len, run.device)
    if state.best_score is None or entry["dev_score"] > state.best_score:
        state.best_score, state.best_epoch = entry["dev_score"], entry["epoch"]
        state.bad_epochs = 0
        checkpoint.save_weights(best, run.student)
    else:
        state.bad_epochs += 1
    pat = run.cfg.early_stopping_patience
    state.stopped_early = bool(pat and state.bad_epochs >= pat)


def _judge_on_main(run: _Training, state: TrainState, entry: dict, dev: Split, best: Path) -> None:
    """``_judge_epoch`` on rank 0, its verdict sent to the other ranks (they wait)."""
    if ranks.is_main():
        _judge_epoch(run, state, entry, dev, best)
    verdict = distributed.broadcast_object(
        (entry.get("dev_score"), state.best_score, state.best_epoch, state.bad_epochs,
         state.stopped_early)
    )  # fmt: skip
    entry["dev_score"] = verdict[0]
    state.best_score, state.best_epoch, state.bad_epochs, state.stopped_early = verdict[1:]


def _resume(run: _Training, ckpt: Path) -> TrainState | None:
    """The checkpoint's progress, loaded on rank 0 and sent to the other ranks with the
    optimizer, schedule and projections (the student's weights follow when DDP wraps it):
    a checkpoint does not depend on how many processes wrote or read it."""
    main = ranks.is_main()
    proj, opt = run.projections, run.opt
    state = checkpoint.load(ckpt, run.student, opt, proj, run.device) if main else None
    if not distributed.active():
        return state
    cpu = distributed.cpu_tree
    blob = distributed.broadcast_object(
        {
            "state": None if state is None else asdict(state),
            "optimizer": None if state is None else cpu(opt.optimizer.state_dict()),
            "scheduler": None if state is None else opt.scheduler.state_dict(),
            "projections": None if proj is None else cpu(proj.state_dict()),
        }
        if main
        else None
    )
    if main:
        return state
    if proj is not None:
        proj.load_state_dict(blob["projections"])
    if blob["state"] is None:
        return None
    opt.optimizer.load_state_dict(blob["optimizer"])
    opt.scheduler.load_state_dict(blob["scheduler"])
    return TrainState(**blob["state"])


def _record(run: _Training, state: TrainState, seconds: float) -> TrainRecord:
    return TrainRecord(
        losses=applicable_losses(run.cfg, run.teacher.info.kind),
        layer_map=run.layer_map if run.online is not None else None,
        texts=len(run.items),
        labelled_texts=int((run.labels >= 0).sum()),
        epochs=run.cfg.epochs,
        epochs_run=state.epoch,
        steps=state.step,
        history=state.history,
        best_epoch=state.best_epoch,
        best_dev_score=state.best_score,
        stopped_early=state.stopped_early,
        final_loss=state.history[-1].get("loss") if state.history else None,
        train_seconds=round(seconds, 2),
        device=str(run.device),
    )


def train_kd(
    student: torch.nn.Module,
    teacher: Teacher,
    cfg: DistillConfig,
    items: list[TrainItem],
    work_dir: Path,
    *,
    layer_map: list[int],
    dev: Split | None = None,
    after_step: Callable[[], None] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    label: str = "distill",
    student_dims: torch.Tensor | None = None,
) -> TrainRecord:
    """Train ``student`` to imitate ``teacher`` with the profile's losses.

    Checkpoints every epoch into ``work_dir/checkpoint`` and resumes from it; scores dev
    after each epoch when ``cfg.select_best`` and leaves the best epoch's weights loaded.
    ``after_step`` runs after every optimizer step (e.g. to re-apply sparsity masks).
    A student narrower than the teacher trains learned projections to the teacher's width
    (``make_projections``; ``student_dims`` initialises them), which are not part of it.
    Under torchrun, ranks other than 0 end with ``distributed.WorkerDone`` once trained.
    """
    run = _setup(student, teacher, cfg, items, layer_map, after_step, student_dims)
    ckpt = work_dir / "checkpoint"
    state = _resume(run, ckpt)
    run.model = distributed.wrap(run.model, run.device)
    if state is None:
        state = TrainState()
    else:
        log(f"resuming {label} after epoch {state.epoch} (step {state.step}/{run.total_steps})")
    log(
        f"{label}: losses {', '.join(applicable_losses(cfg, teacher.info.kind))}"
        + (f"; layer map student->teacher {layer_map}" if run.online is not None else "")
    )
    t_train = time.perf_counter()
    for epoch in range(state.epoch, run.epochs):
        if state.stopped_early:
            break
        entry = run.run_epoch(epoch, state.step, progress=progress, label=label)
        if cfg.select_best and dev is not None:
            _judge_on_main(run, state, entry, dev, work_dir / "best")
        state.history.append(entry)
        state.epoch, state.step = entry["epoch"], entry["step"]
        if ranks.is_main():
            checkpoint.save(ckpt, student, run.opt, run.projections, state)
        # logged once checkpointed: a Ctrl-C from here on resumes after this epoch
        log(
            f"epoch {state.epoch}/{run.epochs}: loss {entry.get('loss', 0):.6f}"
            + (f", dev {entry['dev_score']:.2f}" if "dev_score" in entry else "")
            + (" (stopping early)" if state.stopped_early else "")
        )
    if not ranks.is_main():
        raise distributed.WorkerDone  # saving the student is rank 0's
    if state.best_epoch is not None:
        checkpoint.load_weights(work_dir / "best", student)
        log(f"keeping epoch {state.best_epoch} (best dev score {state.best_score:.2f})")
    student.eval()
    return _record(run, state, time.perf_counter() - t_train)
