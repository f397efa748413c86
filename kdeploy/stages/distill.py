"""distill: cut a student out of the teacher and train it to imitate the teacher.

Trains on the texts of the train split only (plus an optional --unlabeled file);
dev and test are never seen.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from kdeploy.data import load_task_data, read_unlabeled
from kdeploy.model_info import ModelInfo, inspect_model
from kdeploy.profiles import FineTune, Profile
from kdeploy.stages import StageContext, StageResult

CONSUMES = ("teacher_model", "dataset", "unlabeled_text?")
PRODUCES = ("student_model",)
TOOLS = ("torch", "transformers", "safetensors")
RESUMABLE = True


def enabled(profile: Profile) -> bool:
    return profile.distill.enabled


def config(profile: Profile) -> dict:
    return {
        "task": profile.task,
        "student": profile.student.model_dump(mode="json"),
        "distill": profile.distill.model_dump(mode="json"),
    }


def training_items(ctx: StageContext, kind: str) -> list[tuple[str, str | None, int | None]]:
    """Distinct training texts: every text column of the train split (+ unlabeled file).

    Classifier rows keep their gold label (for the hard-label loss); texts from the
    --unlabeled file and, for embedding teachers, every text has none.
    """
    data = load_task_data(ctx.input("dataset"))
    train = data.splits["train"]
    items: list[tuple[str, str | None, int | None]]
    if kind == "classification":
        labels = train.labels or [None] * len(train)
        pairs = train.texts_b or [None] * len(train)
        items = [
            (a, b, None if y is None else int(y))
            for a, b, y in zip(train.texts_a, pairs, labels, strict=True)
        ]
    else:
        items = [(t, None, None) for t in train.texts()]
    if "unlabeled_text" in ctx.inputs:
        items += [(t, None, None) for t in read_unlabeled(ctx.input("unlabeled_text"))]
    seen: set = set()
    unique = []
    for it in items:
        if it[:2] not in seen and it[0].strip():
            seen.add(it[:2])
            unique.append(it)
    cap = ctx.profile.distill.max_train_texts
    if cap is not None and cap < len(unique):
        rng = np.random.default_rng(ctx.profile.distill.seed)
        pick = np.sort(rng.choice(len(unique), size=cap, replace=False))
        unique = [unique[i] for i in pick]
    return unique


TRAINING_LEFTOVERS = ("checkpoint", "best", "teacher_targets.npy", "teacher_targets.json")


def remove_leftovers(work_dir: Path, *extra: str) -> None:
    """Checkpoints and cached targets a finished training stage no longer needs."""
    for leftover in (*TRAINING_LEFTOVERS, *extra):
        path = work_dir / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def dev_split(ctx: StageContext, select_best: bool):
    """The labelled dev split that picks the best epoch, or None."""
    if not select_best:
        return None
    dev = load_task_data(ctx.input("dataset")).splits.get("dev")
    return dev if dev is not None and dev.labels is not None else None


def kd_fine_tune(
    ctx: StageContext,
    student,
    teacher_info: ModelInfo,
    layer_map: list[int],
    ft: FineTune,
    *,
    after_step=None,
    label: str,
) -> dict:
    """KD fine-tuning after a structural change (2:4 masks, fake quantizers): the
    profile's distillation losses and batch on the same training texts, ``ft``'s schedule,
    checkpointed in the stage's work dir (an interrupted stage resumes there)."""
    from kdeploy.train.distill import fine_tune_config, prepare_teacher, train_kd

    cfg = fine_tune_config(ctx.profile.distill, ft)
    if cfg.epochs <= 0:
        return {"steps": 0, "epochs_run": 0}
    items = training_items(ctx, teacher_info.kind)
    teacher = prepare_teacher(
        teacher_info,
        cfg,
        items,
        ctx.work_dir,
        allow_pickle=ctx.options.allow_pickle,
        progress=ctx.options.progress,
        log=ctx.log,
    )
    return train_kd(
        student,
        teacher,
        cfg,
        items,
        ctx.work_dir,
        layer_map=layer_map,
        dev=dev_split(ctx, cfg.select_best),
        after_step=after_step,
        progress=ctx.options.progress,
        log=ctx.log,
        label=label,
    )


def run(ctx: StageContext) -> StageResult:
    from kdeploy.train.distill import distill
    from kdeploy.train.student import select_layers

    p = ctx.profile
    info = inspect_model(
        ctx.input("teacher_model"),
        allow_pickle=ctx.options.allow_pickle,
        trust_remote_code=ctx.options.trust_remote_code,
        task=p.task,
    )
    keep = select_layers(info.num_layers, p.student.layers, p.student.strategy, p.student.keep)
    items = training_items(ctx, info.kind)
    dev = dev_split(ctx, p.distill.select_best)
    ctx.log(
        f"student keeps teacher layers {keep} of {info.num_layers}; "
        f"{len(items)} distinct training texts"
        + (f"; best epoch chosen on dev ({len(dev)} examples)" if dev is not None else "")
    )
    outcome = distill(
        info,
        p.distill,
        keep,
        items,
        ctx.work_dir,
        dev=dev,
        hidden_size=p.student.hidden_size,
        intermediate_size=p.student.ffn_width(info.intermediate_size),
        allow_pickle=ctx.options.allow_pickle,
        progress=ctx.options.progress,
        log=ctx.log,
    )
    remove_leftovers(ctx.work_dir)
    return StageResult(outputs={"student_model": outcome.student_dir}, metrics=outcome.metrics)
