"""sparsify: 2:4 masks on the student's eligible Linear weights, then KD fine-tuning with
the masks fixed. Runs after distill (on the teacher itself when distill is off) and before
export and quantize, so every later model of the chain carries the same zeros.

Trains on the train split only (plus --unlabeled); dev only picks the best epoch.
"""

from __future__ import annotations

import json

import numpy as np

from kdeploy.data import load_task_data
from kdeploy.errors import StageError
from kdeploy.model_info import inspect_model
from kdeploy.profiles import Profile
from kdeploy.stages import StageContext, StageResult
from kdeploy.stages.distill import kd_fine_tune, remove_leftovers

CONSUMES = ("student_model|teacher_model", "teacher_model", "dataset", "unlabeled_text?")
PRODUCES = ("sparse_model",)
TOOLS = ("torch", "transformers", "safetensors", "nvidia-modelopt")
RESUMABLE = True
REPORT_FILE = "sparsity.json"


def enabled(profile: Profile) -> bool:
    return profile.sparsify.enabled


def config(profile: Profile) -> dict:
    return {
        "task": profile.task,
        "student": profile.student.model_dump(mode="json"),
        "sparsify": profile.sparsify.model_dump(mode="json"),
        "distill": profile.distill.model_dump(mode="json"),  # losses, batch, seed
    }


def student_key(ctx: StageContext) -> str:
    return "student_model" if "student_model" in ctx.inputs else "teacher_model"


def layer_map(ctx: StageContext, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer each student layer imitates in token-level losses: the profile's map,
    else the layers the distilled student inherited, else the identity (no distill)."""
    p = ctx.profile
    if p.distill.layer_map is not None:
        return list(p.distill.layer_map)
    if student_key(ctx) == "student_model":
        from kdeploy.train.student import select_layers

        return select_layers(teacher_layers, p.student.layers, p.student.strategy, p.student.keep)
    return list(range(student_layers))


def calibration_texts(ctx: StageContext, n: int) -> list[str]:
    """A seeded sample of train-split texts (never dev/test)."""
    texts = load_task_data(ctx.input("dataset")).splits["train"].texts()
    rng = np.random.default_rng(ctx.profile.distill.seed)
    n = min(n, len(texts))
    return [texts[i] for i in sorted(rng.choice(len(texts), size=n, replace=False))]


def run(ctx: StageContext) -> StageResult:
    import torch

    from kdeploy.train.distill import save_model_dir, tokenized_batches
    from kdeploy.train.loading import load_hf_model, load_tokenizer, pick_device
    from kdeploy.train.sparsify import (
        MASKS_FILE,
        apply_masks,
        check_masks,
        choose_layers,
        compute_masks,
        load_masks,
        load_weights,
        save_masks,
    )

    p = ctx.profile
    cfg = p.sparsify
    opts = dict(
        allow_pickle=ctx.options.allow_pickle, trust_remote_code=ctx.options.trust_remote_code
    )
    t_info = inspect_model(ctx.input("teacher_model"), task=p.task, **opts)
    s_info = inspect_model(ctx.input(student_key(ctx)), task=p.task, **opts)
    torch.manual_seed(p.distill.seed)
    student = load_hf_model(s_info, allow_pickle=ctx.options.allow_pickle)
    layers = choose_layers(student, cfg)
    sparse = [x for x in layers if x.sparse]
    if not sparse:
        raise StageError(
            "sparsify: no Linear layer of the student is eligible for 2:4 masks",
            where="sparsify.dense_layers / sparsify.min_features",
            fix="loosen sparsify.dense_layers or min_features, or set sparsify.enabled: false",
        )
    mask_path = ctx.work_dir / MASKS_FILE
    if mask_path.is_file():  # resuming: the masks chosen before the interruption
        masks, weights = load_masks(mask_path)
        ctx.log(f"reusing the 2:4 masks of {len(masks)} layers")
    else:
        batches = None
        if cfg.method == "sparsegpt":
            batches = tokenized_batches(
                load_tokenizer(s_info.path),
                calibration_texts(ctx, cfg.calibration_texts),
                min(p.distill.max_seq_length, s_info.max_seq_length),
                16,
                torch.device("cpu"),
            )
        masks, weights = compute_masks(student, layers, cfg, batches)
        save_masks(mask_path, masks, weights)
        ctx.log(f"2:4 masks ({cfg.method}) on {len(masks)} of {len(layers)} Linear layers")
    load_weights(student, weights)
    apply_masks(student, masks)
    record = kd_fine_tune(
        ctx,
        student,
        t_info,
        layer_map(ctx, t_info.num_layers, s_info.num_layers),
        cfg.fine_tune,
        after_step=lambda: apply_masks(student, masks),
        label="sparse fine-tune",
    )
    student.to(pick_device())
    apply_masks(student, masks)  # the best epoch's weights were saved masked; make sure
    bad = check_masks(student.cpu(), masks)
    if bad:
        raise StageError(
            f"sparsify: {len(bad)} layer(s) are not 2:4 after fine-tuning: {', '.join(bad[:3])}",
            fix="a kdeploy bug: please report it",
        )
    out = save_model_dir(
        student.cpu(), s_info, load_tokenizer(s_info.path), ctx.work_dir / "student"
    )
    total = sum(x.in_features * x.out_features for x in layers)
    pruned = sum(int((~m).sum()) for m in masks.values())
    report = {
        "pattern": cfg.pattern,
        "method": cfg.method,
        "layers": [x.__dict__ for x in layers],
        "sparse_layers": len(sparse),
        "dense_layers": {x.name: x.reason for x in layers if not x.sparse},
        "linear_weights_zero_fraction": round(pruned / total, 4),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1))
    remove_leftovers(ctx.work_dir, MASKS_FILE)
    ctx.log(
        f"2:4 on {len(sparse)}/{len(layers)} Linear layers, "
        f"{100 * report['linear_weights_zero_fraction']:.1f}% of Linear weights zero"
    )
    metrics = {k: v for k, v in report.items() if k != "layers"}
    metrics["fine_tune"] = record
    return StageResult(outputs={"sparse_model": out}, metrics=metrics)
