"""Knowledge distillation of a layer-dropped student (torch): the student is cut out of
the teacher (``layers``; narrowed by ``width``), trained to imitate it (``trainer``, on the
teacher's cached targets from ``teacher``) and saved as a loadable model dir.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kdeploy.config import DistillConfig
from kdeploy.data import Split, TrainItem
from kdeploy.families import Family, is_global
from kdeploy.model_info import ModelInfo
from kdeploy.train.batching import calibration_batches
from kdeploy.train.loading import pick_device
from kdeploy.train.model_dir import save_model_dir
from kdeploy.train.student import cut_student
from kdeploy.train.teacher import Teacher, prepare_teacher
from kdeploy.train.trainer import TrainRecord, train_kd
from kdeploy.train.width import WidthPlan


@dataclass
class DistillOutcome:
    """The saved student and how it was made."""

    student_dir: Path
    record: TrainRecord
    kept_layers: list[int]  # teacher layers the student inherited
    hidden_size: int
    intermediate_size: int
    student_params: int
    teacher_params: int
    # families that alternate global and local attention (ModernBERT): which student layers
    # attend globally, and the teacher layers they came from
    global_layers: list[int] | None = None

    def metrics(self) -> dict:
        """The distill stage's metrics (JSON): the widths, the training record, the sizes."""
        return {
            "kept_layers": self.kept_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            **asdict(self.record),
            "student_params": self.student_params,
            "teacher_params": self.teacher_params,
            **({"global_attention_layers": self.global_layers} if self.global_layers else {}),
        }


def save_student(student: torch.nn.Module, teacher: Teacher, out_dir: Path) -> Path:
    """A loadable HF model dir (safetensors + tokenizer [+ sentence-transformers modules])."""
    return save_model_dir(student, teacher.info, teacher.tokenizer, out_dir)


def _cut_student(
    teacher: Teacher,
    keep: list[int],
    items: list[TrainItem],
    seed: int,
    hidden_size: int | None,
    intermediate_size: int | None,
    log: Callable[[str], None],
) -> tuple[torch.nn.Module, WidthPlan | None]:
    """The teacher's layers ``keep``, sliced to the widths when given (the units kept
    chosen on calibration text drawn from ``items``); the plan that sliced it."""
    assert teacher.model is not None
    if hidden_size is None and intermediate_size is None:
        return cut_student(teacher.model, keep)
    batches = calibration_batches(teacher.tokenizer, items, teacher.max_len, pick_device(), seed)
    student, plan = cut_student(
        teacher.model,
        keep,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        batches=batches,
    )
    assert plan is not None
    log(
        f"student sliced to hidden {plan.hidden_size} ({len(plan.heads[0])} heads), "
        f"feed-forward {plan.intermediate_size}"
    )
    return student, plan


def distill(
    info: ModelInfo,
    cfg: DistillConfig,
    keep: list[int],
    items: list[TrainItem],
    work_dir: Path,
    *,
    dev: Split | None = None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    cache_dir: Path | None = None,
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
        cache_dir=cache_dir,
    )
    student, plan = _cut_student(
        teacher, keep, items, cfg.seed, hidden_size, intermediate_size, log
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
    global_layers = attention_roles(student.config, info.family)
    if global_layers is not None:
        log(
            f"{info.family.name} student: layers {global_layers} attend globally (teacher "
            f"layers {[keep[i] for i in global_layers]}), the others through the sliding window"
        )
    return DistillOutcome(
        student_dir=save_student(student, teacher, work_dir / "student"),
        record=record,
        kept_layers=keep,
        hidden_size=student.config.hidden_size,
        intermediate_size=int(getattr(student.config, info.family.keys.ffn)),
        student_params=sum(p.numel() for p in student.parameters()),
        teacher_params=teacher.params,
        global_layers=global_layers,
    )


def attention_roles(config, family: Family) -> list[int] | None:
    """The layers of a model with this config that attend globally, for families that
    alternate global and sliding-window attention (None for the others)."""
    if family.pattern is None:
        return None
    every = int(getattr(config, family.pattern.config_key))
    return [i for i in range(config.num_hidden_layers) if is_global(i, every)]
