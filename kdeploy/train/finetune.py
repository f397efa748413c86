"""KD fine-tuning after a structural change (2:4 masks, fake quantizers), and the cleanup
of what a finished training stage no longer needs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from kdeploy.config import DistillConfig, FineTune, StudentConfig
from kdeploy.data import Split, TrainItem
from kdeploy.model_info import ModelInfo
from kdeploy.train.layers import student_layers as kept_layers
from kdeploy.train.teacher import prepare_teacher
from kdeploy.train.trainer import TrainRecord, train_kd

TRAINING_LEFTOVERS = ("checkpoint", "best", "teacher_targets.npy", "teacher_targets.json")


def remove_leftovers(work_dir: Path, *extra: str) -> None:
    """Checkpoints and cached targets a finished training stage no longer needs."""
    for leftover in (*TRAINING_LEFTOVERS, *extra):
        path = work_dir / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def fine_tune_layer_map(
    distill: DistillConfig,
    student: StudentConfig,
    *,
    distilled: bool,
    teacher: ModelInfo,
    student_layers: int,
) -> list[int]:
    """Teacher layer each student layer imitates in token-level losses: the profile's map,
    else the layers the distilled student inherited, else the identity (no distill)."""
    if distill.layer_map is not None:
        return list(distill.layer_map)
    if distilled:
        return kept_layers(teacher, student.layers, student.strategy, student.keep)
    return list(range(student_layers))


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


def kd_fine_tune(
    student: torch.nn.Module,
    teacher_info: ModelInfo,
    distill: DistillConfig,
    ft: FineTune,
    items: list[TrainItem],
    work_dir: Path,
    *,
    layer_map: list[int],
    dev: Split | None,
    after_step: Callable[[], None] | None = None,
    label: str,
    allow_pickle: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
) -> TrainRecord | None:
    """The profile's distillation losses and batch on the same training texts, ``ft``'s
    schedule, checkpointed in ``work_dir`` (an interrupted stage resumes there).
    ``after_step`` runs after every optimizer step (e.g. re-applying 2:4 masks).
    None when ``ft`` has no epochs (nothing trained)."""
    cfg = fine_tune_config(distill, ft)
    if cfg.epochs <= 0:
        return None
    teacher = prepare_teacher(
        teacher_info,
        cfg,
        items,
        work_dir,
        allow_pickle=allow_pickle,
        progress=progress,
        log=log,
        cache_dir=cache_dir,
    )
    return train_kd(
        student,
        teacher,
        cfg,
        items,
        work_dir,
        layer_map=layer_map,
        dev=dev if cfg.select_best else None,
        after_step=after_step,
        progress=progress,
        log=log,
        label=label,
    )


def fine_tune_metrics(record: TrainRecord | None) -> dict:
    """A stage's ``fine_tune`` metrics (JSON): ``kd_fine_tune``'s record, or no steps."""
    return {"steps": 0, "epochs_run": 0} if record is None else asdict(record)
