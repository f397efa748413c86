"""distill: cut a student out of the teacher and train it to imitate the teacher.

Trains on the texts of the train split only (plus an optional --unlabeled file);
dev and test are never seen.
"""

from __future__ import annotations

import shutil

import numpy as np

from kdeploy.data import load_task_data, read_unlabeled
from kdeploy.model_info import inspect_model
from kdeploy.profiles import Profile
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


def training_items(ctx: StageContext, kind: str) -> list[tuple[str, str | None]]:
    """Distinct training texts: every text column of the train split (+ unlabeled file)."""
    data = load_task_data(ctx.input("dataset"))
    train = data.splits["train"]
    if kind == "classification" and train.texts_b is not None:
        items = list(zip(train.texts_a, train.texts_b, strict=True))
    else:
        items = [(t, None) for t in train.texts()]
    if "unlabeled_text" in ctx.inputs:
        items += [(t, None) for t in read_unlabeled(ctx.input("unlabeled_text"))]
    seen: set = set()
    unique = []
    for it in items:
        if it not in seen and it[0].strip():
            seen.add(it)
            unique.append(it)
    cap = ctx.profile.distill.max_train_texts
    if cap is not None and cap < len(unique):
        rng = np.random.default_rng(ctx.profile.distill.seed)
        pick = np.sort(rng.choice(len(unique), size=cap, replace=False))
        unique = [unique[i] for i in pick]
    return unique


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
    ctx.log(
        f"student keeps teacher layers {keep} of {info.num_layers}; "
        f"{len(items)} distinct training texts"
    )
    outcome = distill(
        info,
        p.distill,
        keep,
        items,
        ctx.work_dir,
        allow_pickle=ctx.options.allow_pickle,
        progress=ctx.options.progress,
        log=ctx.log,
    )
    for leftover in ("checkpoint", "teacher_targets.npy", "teacher_targets.json"):
        path = ctx.work_dir / leftover
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return StageResult(outputs={"student_model": outcome.student_dir}, metrics=outcome.metrics)
